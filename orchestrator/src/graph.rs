//! The service dependency graph: which services must be up before which.
//!
//! Edges point from a dependent to its dependency (`web → db` when `web` depends on `db`). They
//! come from `depends_on` and, as in compose-go (which turns these into implicit `depends_on`
//! entries), from `links`, `network_mode`/`ipc`/`pid: service:<name>` and `volumes_from`: a
//! container cannot join another container's namespace, link to it or mount its volumes before
//! that container exists.
//!
//! Building the graph validates it: unknown services, self-references and cycles are reported as
//! [`PathError`]s at the key path that introduced them, so the loader can point at the line.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::compose::canonical::PathWarning;
use crate::compose::model::{DependencyCondition, Project, Service};
use crate::compose::{did_you_mean, KeyPath, PathError};

/// The service attribute an edge was declared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeSource {
    DependsOn,
    Links,
    NetworkMode,
    Ipc,
    Pid,
    VolumesFrom,
}

impl EdgeSource {
    /// The attribute's key in a service, for error paths.
    pub fn key(self) -> &'static str {
        match self {
            EdgeSource::DependsOn => "depends_on",
            EdgeSource::Links => "links",
            EdgeSource::NetworkMode => "network_mode",
            EdgeSource::Ipc => "ipc",
            EdgeSource::Pid => "pid",
            EdgeSource::VolumesFrom => "volumes_from",
        }
    }

    /// How messages phrase "`a` <relation> `b`".
    fn relation(self) -> &'static str {
        match self {
            EdgeSource::DependsOn => "depends on",
            EdgeSource::Links => "links to",
            EdgeSource::NetworkMode => "uses the network stack of",
            EdgeSource::Ipc => "shares the IPC namespace of",
            EdgeSource::Pid => "shares the PID namespace of",
            EdgeSource::VolumesFrom => "mounts volumes from",
        }
    }

    /// What to do about a reference to a service that does not exist, when no name is close.
    fn unknown_hint(self, target: &str) -> String {
        match self {
            EdgeSource::DependsOn => format!(
                "define a service named `{target}`, or set `required: false` on this dependency \
                 if it is optional (for example, enabled only by a profile)"
            ),
            EdgeSource::Links => format!(
                "define a service named `{target}`; links to containers outside the project \
                 belong in `external_links`"
            ),
            EdgeSource::NetworkMode | EdgeSource::Ipc | EdgeSource::Pid | EdgeSource::VolumesFrom => format!(
                "define a service named `{target}`, or write `container:{target}` to use a \
                 container outside this project"
            ),
        }
    }
}

/// One dependency of a service on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// What the dependency must reach before the dependent starts.
    pub condition: DependencyCondition,
    /// When false, a dependency that fails to start does not stop the dependent from starting.
    pub required: bool,
    /// Restart the dependent when the dependency is restarted by a compose operation.
    pub restart: bool,
    pub source: EdgeSource,
}

impl Edge {
    /// The dependency compose-go adds for a `links`/namespace/`volumes_from` reference.
    fn implicit(source: EdgeSource) -> Self {
        Edge {
            condition: DependencyCondition::ServiceStarted,
            required: true,
            // compose-go restarts a dependent sharing a namespace or link (the old namespace or
            // address is gone once the target restarts), but not one that only copied mounts.
            restart: source != EdgeSource::VolumesFrom,
            source,
        }
    }
}

/// The validated, acyclic dependency graph of a project's services.
#[derive(Debug, Clone)]
pub struct ServiceGraph {
    graph: DiGraph<String, Edge>,
    nodes: BTreeMap<String, NodeIndex>,
    /// Computed once at build time: building already needs them to detect cycles.
    levels: Vec<Vec<String>>,
    warnings: Vec<PathWarning>,
}

impl ServiceGraph {
    /// Builds and validates the graph of `project`'s services.
    ///
    /// Errors on a reference to an unknown service (except an optional `depends_on` entry, which
    /// is skipped with a warning), on a service referencing itself, and on a dependency cycle.
    /// Reference errors come first, the first in service-name order; a cycle is looked for only
    /// once every reference is valid.
    pub fn build(project: &Project) -> Result<ServiceGraph, PathError> {
        let known: BTreeSet<&str> = project.services.keys().map(String::as_str).collect();
        let mut graph = DiGraph::new();
        let nodes: BTreeMap<String, NodeIndex> =
            project.services.keys().map(|name| (name.clone(), graph.add_node(name.clone()))).collect();
        let mut warnings = Vec::new();
        for (name, service) in &project.services {
            let resolver = Resolver::new(name, &known, &mut warnings);
            for (target, edge) in resolver.resolve(service)? {
                if let (Some(&from), Some(&to)) = (nodes.get(name), nodes.get(&target)) {
                    graph.add_edge(from, to, edge);
                }
            }
        }
        let Some(levels) = layer(&graph) else {
            return Err(cycle_error(&graph));
        };
        Ok(ServiceGraph { graph, nodes, levels, warnings })
    }

    /// Problems that did not prevent building the graph (skipped optional dependencies).
    pub fn warnings(&self) -> &[PathWarning] {
        &self.warnings
    }

    /// Every service, sorted by name.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    pub fn contains(&self, service: &str) -> bool {
        self.nodes.contains_key(service)
    }

    /// Services grouped so each group can start in parallel: level 0 has no dependencies, and
    /// every service depends only on services of earlier levels. Names are sorted per level.
    pub fn start_levels(&self) -> Vec<Vec<String>> {
        self.levels.clone()
    }

    /// The start levels in reverse: dependents stop before what they depend on.
    pub fn stop_levels(&self) -> Vec<Vec<String>> {
        self.levels.iter().rev().cloned().collect()
    }

    /// The direct dependencies of `service`, sorted by name; empty for an unknown service.
    pub fn dependencies(&self, service: &str) -> Vec<(String, Edge)> {
        let Some(&node) = self.nodes.get(service) else {
            return Vec::new();
        };
        let mut deps: Vec<(String, Edge)> = self
            .graph
            .edges_directed(node, Direction::Outgoing)
            .map(|e| (name_of(&self.graph, e.target()).to_owned(), *e.weight()))
            .collect();
        deps.sort_by(|a, b| a.0.cmp(&b.0));
        deps
    }

    /// The services that directly depend on `service`, sorted; empty for an unknown service.
    pub fn dependents(&self, service: &str) -> Vec<String> {
        let Some(&node) = self.nodes.get(service) else {
            return Vec::new();
        };
        sorted_names(&self.graph, self.graph.neighbors_directed(node, Direction::Incoming))
    }

    /// `services` plus everything they transitively depend on: what `up <services>` starts.
    /// Optional dependencies are included: compose starts them when they are in the project.
    /// Unknown names are ignored; callers check them with [`ServiceGraph::contains`].
    pub fn subgraph_with_dependencies(&self, services: &[String]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<NodeIndex> = services.iter().filter_map(|s| self.nodes.get(s).copied()).collect();
        while let Some(node) = stack.pop() {
            if seen.insert(node) {
                stack.extend(self.graph.neighbors_directed(node, Direction::Outgoing));
            }
        }
        seen.into_iter().map(|n| name_of(&self.graph, n).to_owned()).collect()
    }
}

/// Collects one service's dependencies, validating each reference.
struct Resolver<'a> {
    service: &'a str,
    known: &'a BTreeSet<&'a str>,
    warnings: &'a mut Vec<PathWarning>,
    /// Keyed by target: one edge per pair of services, the first declaration winning.
    deps: BTreeMap<String, Edge>,
}

impl<'a> Resolver<'a> {
    fn new(service: &'a str, known: &'a BTreeSet<&'a str>, warnings: &'a mut Vec<PathWarning>) -> Self {
        Resolver { service, known, warnings, deps: BTreeMap::new() }
    }

    /// Explicit `depends_on` entries go first so that, as in compose-go, their condition and
    /// flags win over the implicit dependency another attribute would add for the same target.
    fn resolve(mut self, service: &Service) -> Result<BTreeMap<String, Edge>, PathError> {
        self.depends_on(service)?;
        self.links(service)?;
        self.namespace(EdgeSource::NetworkMode, service.network_mode.as_deref())?;
        self.namespace(EdgeSource::Ipc, service.ipc.as_deref())?;
        self.namespace(EdgeSource::Pid, service.pid.as_deref())?;
        self.volumes_from(service)?;
        Ok(self.deps)
    }

    fn path(&self, source: EdgeSource) -> KeyPath {
        KeyPath::root().key("services").key(self.service).key(source.key())
    }

    fn depends_on(&mut self, service: &Service) -> Result<(), PathError> {
        for (target, dep) in &service.depends_on {
            let path = self.path(EdgeSource::DependsOn).key(target.as_str());
            // compose-go skips an optional dependency on a service that is not in the project
            // (typically disabled by a profile) instead of failing the whole project.
            if !dep.required && !self.known.contains(target.as_str()) && target != self.service {
                self.skip_optional(target, path);
                continue;
            }
            let edge = Edge {
                condition: dep.condition,
                required: dep.required,
                restart: dep.restart.unwrap_or(false),
                source: EdgeSource::DependsOn,
            };
            self.add(target, edge, path)?;
        }
        Ok(())
    }

    fn skip_optional(&mut self, target: &str, path: KeyPath) {
        let message = format!(
            "service `{}` depends on `{target}`, which is not in the project (disabled by a \
             profile?); ignored because the dependency is `required: false`",
            self.service
        );
        self.warnings.push(PathWarning { path, message });
    }

    /// `links: [db, "cache:alias"]`: the target is the part before the alias.
    fn links(&mut self, service: &Service) -> Result<(), PathError> {
        for (i, link) in service.links.iter().enumerate() {
            let path = self.path(EdgeSource::Links).index(i);
            let target = link.split_once(':').map_or(link.as_str(), |(name, _)| name);
            if target.is_empty() {
                return Err(PathError::new(
                    path,
                    format!("expected a service name, optionally followed by `:alias`, got {link:?}"),
                ));
            }
            self.add(target, Edge::implicit(EdgeSource::Links), path)?;
        }
        Ok(())
    }

    /// `network_mode`/`ipc`/`pid`: only `service:<name>` names a service; `host`,
    /// `container:<name>` and the like need nothing started first.
    fn namespace(&mut self, source: EdgeSource, value: Option<&str>) -> Result<(), PathError> {
        let Some(target) = value.and_then(|v| v.strip_prefix("service:")) else {
            return Ok(());
        };
        let path = self.path(source);
        if target.is_empty() {
            return Err(PathError::new(path, "expected a service name after `service:`")
                .with_hint(format!("write `{}: service:<name>`", source.key())));
        }
        self.add(target, Edge::implicit(source), path)
    }

    fn volumes_from(&mut self, service: &Service) -> Result<(), PathError> {
        for (i, entry) in service.volumes_from.iter().enumerate() {
            let path = self.path(EdgeSource::VolumesFrom).index(i);
            if let Some(target) = volumes_from_service(entry, &path)? {
                self.add(target, Edge::implicit(EdgeSource::VolumesFrom), path)?;
            }
        }
        Ok(())
    }

    /// Records an edge to `target` after checking the reference is valid.
    fn add(&mut self, target: &str, edge: Edge, path: KeyPath) -> Result<(), PathError> {
        if target == self.service {
            return Err(self.self_reference(edge.source, path));
        }
        if !self.known.contains(target) {
            return Err(self.unknown(target, edge.source, path));
        }
        self.deps.entry(target.to_owned()).or_insert(edge);
        Ok(())
    }

    fn self_reference(&self, source: EdgeSource, path: KeyPath) -> PathError {
        let name = self.service;
        PathError::new(
            path,
            format!("service `{name}` {} itself (dependency cycle: {name} -> {name})", source.relation()),
        )
        .with_hint(format!("remove `{name}` from its own `{}`; a service cannot wait for itself", source.key()))
    }

    fn unknown(&self, target: &str, source: EdgeSource, path: KeyPath) -> PathError {
        // The service itself is no useful suggestion: choosing it would be a self-reference.
        let others = self.known.iter().copied().filter(|k| *k != self.service);
        let hint = did_you_mean(target, others).unwrap_or_else(|| source.unknown_hint(target));
        PathError::new(path, format!("service `{}` {} undefined service `{target}`", self.service, source.relation()))
            .with_hint(hint)
    }
}

/// The service a `volumes_from` entry names: `<name>[:ro|:rw]` or `service:<name>[:ro|:rw]`;
/// `None` for `container:<name>[:mode]`, which names a container outside the project.
fn volumes_from_service<'e>(entry: &'e str, path: &KeyPath) -> Result<Option<&'e str>, PathError> {
    if entry.starts_with("container:") {
        return Ok(None);
    }
    let spec = entry.strip_prefix("service:").unwrap_or(entry);
    let (name, mode) = match spec.split_once(':') {
        Some((name, mode)) => (name, Some(mode)),
        None => (spec, None),
    };
    let valid_mode = matches!(mode, None | Some("ro") | Some("rw"));
    if name.is_empty() || !valid_mode {
        return Err(PathError::new(
            path.clone(),
            format!("expected `<service>[:ro|:rw]` or `container:<name>[:ro|:rw]`, got {entry:?}"),
        )
        .with_hint("the access mode is `ro` (read-only) or `rw` (read-write, the default)"));
    }
    Ok(Some(name))
}

/// Groups nodes into start levels (Kahn's algorithm, one level per round); `None` when some
/// nodes can never be placed, which means the graph has a cycle.
fn layer(graph: &DiGraph<String, Edge>) -> Option<Vec<Vec<String>>> {
    // How many dependencies of each node are not placed yet.
    let mut pending: BTreeMap<NodeIndex, usize> =
        graph.node_indices().map(|n| (n, graph.edges_directed(n, Direction::Outgoing).count())).collect();
    let mut current: Vec<NodeIndex> = pending.iter().filter(|(_, count)| **count == 0).map(|(node, _)| *node).collect();
    let mut levels = Vec::new();
    let mut placed = 0;
    while !current.is_empty() {
        placed += current.len();
        let next = release_dependents(graph, &current, &mut pending);
        levels.push(sorted_names(graph, current));
        current = next;
    }
    (placed == graph.node_count()).then_some(levels)
}

/// Marks `placed` as started and returns the dependents that now have every dependency placed.
fn release_dependents(
    graph: &DiGraph<String, Edge>,
    placed: &[NodeIndex],
    pending: &mut BTreeMap<NodeIndex, usize>,
) -> Vec<NodeIndex> {
    let mut ready = Vec::new();
    for &node in placed {
        for edge in graph.edges_directed(node, Direction::Incoming) {
            if let Some(count) = pending.get_mut(&edge.source()) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    ready.push(edge.source());
                }
            }
        }
    }
    ready
}

/// Reports one cycle, chosen and written deterministically: the strongly connected component
/// holding the alphabetically first cyclic service, and the shortest cycle starting from it.
fn cycle_error(graph: &DiGraph<String, Edge>) -> PathError {
    let start = tarjan_scc(graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .filter_map(|component| min_by_name(graph, component))
        .min_by(|a, b| name_of(graph, *a).cmp(name_of(graph, *b)));
    let Some(start) = start else {
        // Unreachable for a graph `layer` rejected; still an error rather than a panic.
        return PathError::new(KeyPath::root().key("services"), "dependency cycle");
    };
    let cycle = shortest_cycle_from(graph, start);
    let source = cycle
        .get(1)
        .and_then(|&next| graph.find_edge(start, next))
        .and_then(|e| graph.edge_weight(e))
        .map_or(EdgeSource::DependsOn, |e| e.source);
    let names: Vec<&str> = cycle.iter().map(|&n| name_of(graph, n)).collect();
    let path = KeyPath::root().key("services").key(name_of(graph, start)).key(source.key());
    PathError::new(path, format!("dependency cycle: {}", names.join(" -> ")))
        .with_hint("services cannot wait for each other; remove one of these dependencies")
}

fn min_by_name(graph: &DiGraph<String, Edge>, nodes: Vec<NodeIndex>) -> Option<NodeIndex> {
    nodes.into_iter().min_by(|a, b| name_of(graph, *a).cmp(name_of(graph, *b)))
}

/// Breadth-first search from `start` back to itself, visiting dependencies in name order so
/// the same graph always yields the same cycle. Returns `[start, ..., start]`.
fn shortest_cycle_from(graph: &DiGraph<String, Edge>, start: NodeIndex) -> Vec<NodeIndex> {
    let mut parent: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in sorted_successors(graph, node) {
            if next == start {
                return cycle_path(&parent, start, node);
            }
            if let std::collections::btree_map::Entry::Vacant(slot) = parent.entry(next) {
                slot.insert(node);
                queue.push_back(next);
            }
        }
    }
    vec![start, start]
}

/// `start -> ... -> last -> start`, following the BFS tree back from `last`.
fn cycle_path(parent: &BTreeMap<NodeIndex, NodeIndex>, start: NodeIndex, last: NodeIndex) -> Vec<NodeIndex> {
    let mut cycle = vec![last];
    let mut node = last;
    // `start` has no parent (the search never re-enters it), so the walk ends there.
    while let Some(&up) = parent.get(&node) {
        cycle.push(up);
        node = up;
    }
    cycle.reverse();
    if cycle.first() != Some(&start) {
        cycle.insert(0, start);
    }
    cycle.push(start);
    cycle
}

fn sorted_successors(graph: &DiGraph<String, Edge>, node: NodeIndex) -> Vec<NodeIndex> {
    let mut next: Vec<NodeIndex> = graph.neighbors_directed(node, Direction::Outgoing).collect();
    next.sort_by(|a, b| name_of(graph, *a).cmp(name_of(graph, *b)));
    next.dedup();
    next
}

fn sorted_names(graph: &DiGraph<String, Edge>, nodes: impl IntoIterator<Item = NodeIndex>) -> Vec<String> {
    let mut names: Vec<String> = nodes.into_iter().map(|n| name_of(graph, n).to_owned()).collect();
    names.sort();
    names.dedup();
    names
}

fn name_of(graph: &DiGraph<String, Edge>, node: NodeIndex) -> &str {
    graph.node_weight(node).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::model::Dependency;
    use proptest::prelude::*;

    fn dep(condition: DependencyCondition, required: bool) -> Dependency {
        Dependency { condition, restart: None, required }
    }

    fn started() -> Dependency {
        dep(DependencyCondition::ServiceStarted, true)
    }

    /// A service depending (required, service_started) on `deps`.
    fn needs(deps: &[&str]) -> Service {
        Service { depends_on: deps.iter().map(|d| (d.to_string(), started())).collect(), ..Service::default() }
    }

    fn project(services: Vec<(&str, Service)>) -> Project {
        Project {
            name: "test".into(),
            services: services.into_iter().map(|(name, s)| (name.to_string(), s)).collect(),
            ..Project::default()
        }
    }

    fn levels(graph: &ServiceGraph) -> Vec<Vec<&str>> {
        graph.levels.iter().map(|level| level.iter().map(String::as_str).collect()).collect()
    }

    fn build_err(project: &Project) -> PathError {
        match ServiceGraph::build(project) {
            Ok(graph) => panic!("expected an error, got levels {:?}", graph.start_levels()),
            Err(e) => e,
        }
    }

    fn build_ok(project: &Project) -> ServiceGraph {
        match ServiceGraph::build(project) {
            Ok(graph) => graph,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn dependency_names(graph: &ServiceGraph, service: &str) -> Vec<String> {
        graph.dependencies(service).into_iter().map(|(name, _)| name).collect()
    }

    #[test]
    fn diamond_levels() {
        let p = project(vec![
            ("app", needs(&["cache", "api"])),
            ("api", needs(&["db"])),
            ("cache", needs(&["db"])),
            ("db", Service::default()),
        ]);
        let g = build_ok(&p);
        assert_eq!(levels(&g), vec![vec!["db"], vec!["api", "cache"], vec!["app"]]);
        assert_eq!(
            g.stop_levels(),
            vec![vec!["app".to_string()], vec!["api".into(), "cache".into()], vec!["db".into()]]
        );
        assert!(g.warnings().is_empty());
    }

    #[test]
    fn chain_levels_and_independent_services() {
        let p = project(vec![
            ("a", needs(&["b"])),
            ("b", needs(&["c"])),
            ("c", needs(&["d"])),
            ("d", Service::default()),
            ("z", Service::default()),
        ]);
        let g = build_ok(&p);
        assert_eq!(levels(&g), vec![vec!["d", "z"], vec!["c"], vec!["b"], vec!["a"]]);
    }

    #[test]
    fn a_service_is_placed_after_its_deepest_dependency() {
        // `app` needs both `db` (level 0) and `api` (level 1): it must wait for level 1.
        let p = project(vec![("app", needs(&["db", "api"])), ("api", needs(&["db"])), ("db", Service::default())]);
        assert_eq!(levels(&build_ok(&p)), vec![vec!["db"], vec!["api"], vec!["app"]]);
    }

    #[test]
    fn empty_project_has_no_levels() {
        let g = build_ok(&Project::default());
        assert!(g.start_levels().is_empty());
        assert!(g.stop_levels().is_empty());
        assert!(g.subgraph_with_dependencies(&["web".into()]).is_empty());
    }

    #[test]
    fn self_dependency_is_a_cycle_of_one() {
        let e = build_err(&project(vec![("a", needs(&["a"]))]));
        assert_eq!(e.path.to_string(), "services.a.depends_on.a");
        assert_eq!(e.message, "service `a` depends on itself (dependency cycle: a -> a)");
        assert!(e.hint.is_some());
    }

    #[test]
    fn optional_self_dependency_is_still_an_error() {
        let mut a = Service::default();
        a.depends_on.insert("a".into(), dep(DependencyCondition::ServiceStarted, false));
        let e = build_err(&project(vec![("a", a)]));
        assert_eq!(e.path.to_string(), "services.a.depends_on.a");
    }

    #[test]
    fn cycle_of_two() {
        let e = build_err(&project(vec![("b", needs(&["a"])), ("a", needs(&["b"]))]));
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        assert_eq!(e.path.to_string(), "services.a.depends_on");
        assert!(e.hint.is_some());
    }

    #[test]
    fn cycle_of_three() {
        let e = build_err(&project(vec![("c", needs(&["a"])), ("a", needs(&["b"])), ("b", needs(&["c"]))]));
        assert_eq!(e.message, "dependency cycle: a -> b -> c -> a");
        assert_eq!(e.path.to_string(), "services.a.depends_on");
    }

    #[test]
    fn cycle_starts_from_its_first_member_not_the_first_service() {
        // `api` sorts first but only depends on the cycle; the cycle is reported from `db`,
        // and in dependency order (db -> worker -> queue), not name order.
        let e = build_err(&project(vec![
            ("api", needs(&["db"])),
            ("db", needs(&["worker"])),
            ("queue", needs(&["db"])),
            ("worker", needs(&["queue"])),
        ]));
        assert_eq!(e.message, "dependency cycle: db -> worker -> queue -> db");
        assert_eq!(e.path.to_string(), "services.db.depends_on");
    }

    #[test]
    fn the_shortest_cycle_is_reported() {
        // a -> b -> a and a -> c -> d -> a: both go through `a`; the shorter one wins.
        let e = build_err(&project(vec![
            ("a", needs(&["c", "b"])),
            ("b", needs(&["a"])),
            ("c", needs(&["d"])),
            ("d", needs(&["a"])),
        ]));
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
    }

    #[test]
    fn cycle_through_an_implicit_edge_points_at_its_attribute() {
        let a = Service { network_mode: Some("service:b".into()), ..Service::default() };
        let e = build_err(&project(vec![("a", a), ("b", needs(&["a"]))]));
        assert_eq!(e.message, "dependency cycle: a -> b -> a");
        assert_eq!(e.path.to_string(), "services.a.network_mode");
    }

    #[test]
    fn unknown_dependency_with_suggestion() {
        let e = build_err(&project(vec![("web", needs(&["dbb"])), ("db", Service::default())]));
        assert_eq!(e.path.to_string(), "services.web.depends_on.dbb");
        assert_eq!(e.message, "service `web` depends on undefined service `dbb`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `db`?"));
    }

    #[test]
    fn unknown_dependency_without_close_name_suggests_required_false() {
        let e = build_err(&project(vec![("web", needs(&["postgres"])), ("db", Service::default())]));
        assert_eq!(e.path.to_string(), "services.web.depends_on.postgres");
        let hint = e.hint.unwrap_or_default();
        assert!(hint.contains("required: false"), "{hint}");
    }

    #[test]
    fn a_service_is_not_suggested_to_itself() {
        let e = build_err(&project(vec![("web", needs(&["webb"]))]));
        assert_eq!(e.path.to_string(), "services.web.depends_on.webb");
        assert!(!e.hint.unwrap_or_default().contains("did you mean"));
    }

    #[test]
    fn optional_dependency_on_a_missing_service_is_skipped_with_a_warning() {
        let mut web = needs(&["db"]);
        web.depends_on.insert("metrics".into(), dep(DependencyCondition::ServiceHealthy, false));
        let g = build_ok(&project(vec![("web", web), ("db", Service::default())]));
        assert_eq!(dependency_names(&g, "web"), vec!["db"]);
        assert_eq!(levels(&g), vec![vec!["db"], vec!["web"]]);
        assert_eq!(g.warnings().len(), 1);
        assert_eq!(g.warnings()[0].path.to_string(), "services.web.depends_on.metrics");
        assert!(g.warnings()[0].message.contains("required: false"));
    }

    #[test]
    fn optional_dependency_on_a_present_service_is_kept() {
        let mut web = Service::default();
        web.depends_on.insert(
            "db".into(),
            Dependency {
                condition: DependencyCondition::ServiceCompletedSuccessfully,
                restart: Some(true),
                required: false,
            },
        );
        let g = build_ok(&project(vec![("web", web), ("db", Service::default())]));
        let expected = Edge {
            condition: DependencyCondition::ServiceCompletedSuccessfully,
            required: false,
            restart: true,
            source: EdgeSource::DependsOn,
        };
        assert_eq!(g.dependencies("web"), vec![("db".to_string(), expected)]);
        assert!(g.warnings().is_empty());
    }

    #[test]
    fn network_mode_service_adds_a_started_required_edge() {
        let web = Service { network_mode: Some("service:vpn".into()), ..Service::default() };
        let g = build_ok(&project(vec![("web", web), ("vpn", Service::default())]));
        let deps = g.dependencies("web");
        assert_eq!(deps.len(), 1);
        let (name, edge) = &deps[0];
        assert_eq!(name, "vpn");
        assert_eq!(edge.condition, DependencyCondition::ServiceStarted);
        assert!(edge.required);
        assert_eq!(edge.source, EdgeSource::NetworkMode);
        assert_eq!(levels(&g), vec![vec!["vpn"], vec!["web"]]);
        assert_eq!(g.dependents("vpn"), vec!["web"]);
    }

    #[test]
    fn other_network_modes_add_no_edge() {
        for mode in ["host", "bridge", "none", "container:vpn"] {
            let web = Service { network_mode: Some(mode.into()), ..Service::default() };
            let g = build_ok(&project(vec![("web", web), ("vpn", Service::default())]));
            assert!(g.dependencies("web").is_empty(), "{mode}");
        }
    }

    #[test]
    fn network_mode_errors() {
        let mut web = Service { network_mode: Some("service:vpnn".into()), ..Service::default() };
        let e = build_err(&project(vec![("web", web.clone()), ("vpn", Service::default())]));
        assert_eq!(e.path.to_string(), "services.web.network_mode");
        assert_eq!(e.message, "service `web` uses the network stack of undefined service `vpnn`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `vpn`?"));

        web.network_mode = Some("service:web".into());
        let e = build_err(&project(vec![("web", web.clone())]));
        assert_eq!(e.path.to_string(), "services.web.network_mode");

        web.network_mode = Some("service:".into());
        let e = build_err(&project(vec![("web", web)]));
        assert_eq!(e.path.to_string(), "services.web.network_mode");
    }

    #[test]
    fn ipc_and_pid_service_add_edges() {
        let mut web = Service { ipc: Some("service:shm".into()), ..Service::default() };
        web.pid = Some("service:debug".into());
        let p = project(vec![("web", web), ("shm", Service::default()), ("debug", Service::default())]);
        let deps = build_ok(&p).dependencies("web");
        let sources: Vec<(&str, EdgeSource)> = deps.iter().map(|(n, e)| (n.as_str(), e.source)).collect();
        assert_eq!(sources, vec![("debug", EdgeSource::Pid), ("shm", EdgeSource::Ipc)]);
    }

    #[test]
    fn volumes_from_adds_edges_for_services_only() {
        let web = Service {
            volumes_from: vec![
                "db".into(),
                "cache:ro".into(),
                "service:logs:rw".into(),
                "container:legacy".into(),
                "container:legacy:ro".into(),
            ],
            ..Service::default()
        };
        let p = project(vec![
            ("web", web),
            ("db", Service::default()),
            ("cache", Service::default()),
            ("logs", Service::default()),
        ]);
        let g = build_ok(&p);
        assert_eq!(dependency_names(&g, "web"), vec!["cache", "db", "logs"]);
        for (_, edge) in g.dependencies("web") {
            assert_eq!(edge.source, EdgeSource::VolumesFrom);
            assert_eq!(edge.condition, DependencyCondition::ServiceStarted);
            assert!(edge.required);
            assert!(!edge.restart);
        }
    }

    #[test]
    fn volumes_from_errors() {
        let mut web = Service { volumes_from: vec!["db".into(), "dbb:ro".into()], ..Service::default() };
        let e = build_err(&project(vec![("web", web.clone()), ("db", Service::default())]));
        assert_eq!(e.path.to_string(), "services.web.volumes_from[1]");
        assert_eq!(e.message, "service `web` mounts volumes from undefined service `dbb`");
        assert_eq!(e.hint.as_deref(), Some("did you mean `db`?"));

        web.volumes_from = vec!["legacy".into()];
        let e = build_err(&project(vec![("web", web.clone()), ("db", Service::default())]));
        assert!(e.hint.unwrap_or_default().contains("container:legacy"));

        for bad in ["db:xx", ":ro", "service:", "service::rw"] {
            web.volumes_from = vec![bad.into()];
            let e = build_err(&project(vec![("web", web.clone()), ("db", Service::default())]));
            assert_eq!(e.path.to_string(), "services.web.volumes_from[0]", "{bad}");
        }

        web.volumes_from = vec!["service:web".into()];
        let e = build_err(&project(vec![("web", web)]));
        assert_eq!(e.message, "service `web` mounts volumes from itself (dependency cycle: web -> web)");
    }

    #[test]
    fn links_add_edges_and_are_checked() {
        let mut web = Service { links: vec!["db:database".into(), "cache".into()], ..Service::default() };
        let p = project(vec![("web", web.clone()), ("db", Service::default()), ("cache", Service::default())]);
        assert_eq!(dependency_names(&build_ok(&p), "web"), vec!["cache", "db"]);

        web.links = vec!["db".into(), "cahce".into()];
        let e = build_err(&project(vec![("web", web), ("db", Service::default()), ("cache", Service::default())]));
        assert_eq!(e.path.to_string(), "services.web.links[1]");
        assert_eq!(e.hint.as_deref(), Some("did you mean `cache`?"));
    }

    #[test]
    fn explicit_depends_on_wins_over_an_implicit_edge() {
        let mut web = Service::default();
        web.depends_on.insert("db".into(), dep(DependencyCondition::ServiceHealthy, true));
        web.volumes_from = vec!["db".into()];
        web.network_mode = Some("service:db".into());
        let g = build_ok(&project(vec![("web", web), ("db", Service::default())]));
        let deps = g.dependencies("web");
        assert_eq!(deps.len(), 1);
        assert_eq!(deps[0].1.condition, DependencyCondition::ServiceHealthy);
        assert_eq!(deps[0].1.source, EdgeSource::DependsOn);
    }

    #[test]
    fn implicit_edge_still_checks_the_target_when_depends_on_is_optional() {
        // The optional dependency is skipped, but network_mode cannot work without `vpn`.
        let mut web = Service::default();
        web.depends_on.insert("vpn".into(), dep(DependencyCondition::ServiceStarted, false));
        web.network_mode = Some("service:vpn".into());
        let e = build_err(&project(vec![("web", web)]));
        assert_eq!(e.path.to_string(), "services.web.network_mode");
    }

    #[test]
    fn dependents_and_subgraph() {
        let p = project(vec![
            ("web", needs(&["api"])),
            ("api", needs(&["db"])),
            ("worker", needs(&["db", "queue"])),
            ("db", Service::default()),
            ("queue", Service::default()),
            ("docs", Service::default()),
        ]);
        let g = build_ok(&p);
        assert_eq!(g.dependents("db"), vec!["api", "worker"]);
        assert!(g.dependents("web").is_empty());
        assert!(g.dependents("nope").is_empty());
        assert_eq!(dependency_names(&g, "worker"), vec!["db", "queue"]);
        assert!(g.dependencies("nope").is_empty());

        let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };
        assert_eq!(g.subgraph_with_dependencies(&["web".into()]), set(&["api", "db", "web"]));
        assert_eq!(
            g.subgraph_with_dependencies(&["api".into(), "worker".into(), "nope".into()]),
            set(&["api", "db", "queue", "worker"])
        );
        assert!(g.contains("docs") && !g.contains("nope"));
        assert_eq!(g.services().collect::<Vec<_>>(), vec!["api", "db", "docs", "queue", "web", "worker"]);
    }

    #[test]
    fn long_form_yaml_project() {
        let yaml = r#"
name: shop
services:
  web:
    image: nginx
    depends_on:
      api: {condition: service_healthy, restart: true, required: true}
      metrics: {condition: service_started, required: false}
  api:
    image: api
    depends_on:
      db: {condition: service_completed_successfully, required: true}
    volumes_from: ["container:seed", "db:ro"]
  db:
    image: postgres
"#;
        let p: Project = match serde_yaml::from_str(yaml) {
            Ok(p) => p,
            Err(e) => panic!("bad test yaml: {e}"),
        };
        let g = build_ok(&p);
        assert_eq!(levels(&g), vec![vec!["db"], vec!["api"], vec!["web"]]);
        let web = g.dependencies("web");
        assert_eq!(web.len(), 1);
        assert!(web[0].1.restart);
        assert_eq!(g.warnings().len(), 1);
        // depends_on and volumes_from both name `db`: one edge, from depends_on.
        assert_eq!(g.dependencies("api")[0].1.condition, DependencyCondition::ServiceCompletedSuccessfully);
    }

    #[test]
    fn results_are_deterministic() {
        let p = project(vec![
            ("e", needs(&["a", "b"])),
            ("d", needs(&["c"])),
            ("c", Service::default()),
            ("b", Service::default()),
            ("a", Service::default()),
        ]);
        let first = build_ok(&p).start_levels();
        for _ in 0..20 {
            assert_eq!(build_ok(&p).start_levels(), first);
        }
        assert_eq!(first, vec![vec!["a", "b", "c"], vec!["d", "e"]]);

        // Two disjoint cycles: always the one holding the alphabetically first service.
        let cyclic =
            project(vec![("y", needs(&["x"])), ("x", needs(&["y"])), ("m", needs(&["b"])), ("b", needs(&["m"]))]);
        for _ in 0..20 {
            assert_eq!(build_err(&cyclic).message, "dependency cycle: b -> m -> b");
        }
    }

    /// A random DAG: `(service count, edges as (dependent, dependency) index pairs with the
    /// dependent's index higher, a shuffled naming so name order is unrelated to edge order)`.
    fn random_dag() -> impl Strategy<Value = (usize, Vec<(usize, usize)>, Vec<usize>)> {
        (1usize..12).prop_flat_map(|n| {
            let edges = prop::collection::vec((0..n, 0..n), 0..n * 3).prop_map(|pairs| {
                pairs.into_iter().filter(|(a, b)| a != b).map(|(a, b)| (a.max(b), a.min(b))).collect::<Vec<_>>()
            });
            let names = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (Just(n), edges, names)
        })
    }

    fn dag_project(n: usize, edges: &[(usize, usize)], names: &[usize]) -> Project {
        let name = |i: usize| format!("s{}", names[i]);
        let mut services: BTreeMap<String, Service> = (0..n).map(|i| (name(i), Service::default())).collect();
        for &(from, to) in edges {
            if let Some(s) = services.get_mut(&name(from)) {
                s.depends_on.insert(name(to), started());
            }
        }
        Project { services, ..Project::default() }
    }

    proptest! {
        #[test]
        fn levels_respect_every_edge((n, edges, names) in random_dag()) {
            let p = dag_project(n, &edges, &names);
            let g = ServiceGraph::build(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let start = g.start_levels();

            let mut level_of = BTreeMap::new();
            for (i, level) in start.iter().enumerate() {
                prop_assert!(!level.is_empty());
                prop_assert!(level.windows(2).all(|w| w[0] < w[1]), "level not sorted: {:?}", level);
                for s in level {
                    prop_assert!(level_of.insert(s.clone(), i).is_none(), "{} placed twice", s);
                }
            }
            prop_assert_eq!(level_of.len(), n);
            prop_assert!(p.services.keys().all(|s| level_of.contains_key(s)));

            for (dependent, service) in &p.services {
                for dependency in service.depends_on.keys() {
                    prop_assert!(level_of[dependent] > level_of[dependency],
                        "{} (level {}) depends on {} (level {})",
                        dependent, level_of[dependent], dependency, level_of[dependency]);
                }
                // Levels are tight: a service sits right after its deepest dependency.
                let expected = service.depends_on.keys().map(|d| level_of[d] + 1).max().unwrap_or(0);
                prop_assert_eq!(level_of[dependent], expected);
            }

            let mut reversed = start.clone();
            reversed.reverse();
            prop_assert_eq!(g.stop_levels(), reversed);
        }

        #[test]
        fn a_reversed_edge_is_reported_as_a_real_cycle(
            (n, edges, names) in random_dag(),
            pick in any::<prop::sample::Index>(),
        ) {
            prop_assume!(!edges.is_empty());
            let mut p = dag_project(n, &edges, &names);
            let (from, to) = edges[pick.index(edges.len())];
            let (from, to) = (format!("s{}", names[from]), format!("s{}", names[to]));
            if let Some(s) = p.services.get_mut(&to) {
                s.depends_on.insert(from, started());
            }
            let e = match ServiceGraph::build(&p) {
                Ok(_) => return Err(TestCaseError::fail("cycle not detected")),
                Err(e) => e,
            };
            let Some(listed) = e.message.strip_prefix("dependency cycle: ") else {
                return Err(TestCaseError::fail(e.message));
            };
            let cycle: Vec<&str> = listed.split(" -> ").collect();
            prop_assert!(cycle.len() >= 3);
            prop_assert_eq!(cycle.first(), cycle.last());
            prop_assert!(cycle.iter().all(|s| s >= &cycle[0]), "not started from the first: {}", listed);
            for pair in cycle.windows(2) {
                let declared = p.services.get(pair[0]).is_some_and(|s| s.depends_on.contains_key(pair[1]));
                prop_assert!(declared, "{} does not depend on {}", pair[0], pair[1]);
            }
            prop_assert_eq!(e.path.to_string(), format!("services.{}.depends_on", cycle[0]));
        }
    }
}
