//! Properties over random clusters: placements never break a filter, spread is even, and the
//! tree-based scheduler picks exactly what a plain scan over every node would.

use proptest::prelude::*;

use super::*;
use crate::scheduler::constraints::constraints_of;
use crate::scheduler::fit::{self, NodeLoad, Rejection, Requirements};
use crate::scheduler::preferences::{path_of, spread_of};
use crate::store::state::{Node, NodeRole};

#[derive(Debug, Clone)]
struct NodeGen {
    zone: Option<u8>,
    rack: Option<u8>,
    memory_gib: u64,
    cpus: u64,
    status: u8,
    availability: u8,
    manager: bool,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        proptest::option::weighted(0.8, 0u8..3),
        proptest::option::weighted(0.7, 0u8..2),
        0u64..6,
        0u64..4,
        0u8..10,
        0u8..10,
        any::<bool>(),
    )
        .prop_map(|(zone, rack, memory_gib, cpus, status, availability, manager)| NodeGen {
            zone,
            rack,
            memory_gib,
            cpus,
            status,
            availability,
            manager,
        })
}

#[derive(Debug, Clone)]
struct ServiceGen {
    replicas: u64,
    memory_mib: Option<u64>,
    cpus_tenths: Option<u64>,
    constraint: Option<u8>,
    spread: u8,
    max_per_node: Option<u64>,
    port: Option<u16>,
}

fn service_gen() -> impl Strategy<Value = ServiceGen> {
    (
        0u64..10,
        proptest::option::of(256u64..3000),
        proptest::option::of(1u64..25),
        proptest::option::of(0u8..5),
        0u8..3,
        proptest::option::weighted(0.3, 1u64..3),
        proptest::option::weighted(0.2, 80u16..82),
    )
        .prop_map(|(replicas, memory_mib, cpus_tenths, constraint, spread, max_per_node, port)| ServiceGen {
            replicas,
            memory_mib,
            cpus_tenths,
            constraint,
            spread,
            max_per_node,
            port,
        })
}

impl ServiceGen {
    fn yaml(&self) -> String {
        let mut reservations = Vec::new();
        if let Some(m) = self.memory_mib {
            reservations.push(format!("memory: {m}m"));
        }
        if let Some(c) = self.cpus_tenths {
            reservations.push(format!("cpus: '{}.{}'", c / 10, c % 10));
        }
        let constraint = match self.constraint {
            Some(0) => "'node.labels.zone==z0'",
            Some(1) => "'node.labels.zone!=z1'",
            Some(2) => "'node.role==worker'",
            Some(3) => "'node.labels.rack==r0'",
            Some(_) => "'node.platform.arch==x86_64'",
            None => "",
        };
        let spread = match self.spread {
            1 => "{spread: node.labels.zone}",
            2 => "{spread: node.labels.zone}, {spread: node.labels.rack}",
            _ => "",
        };
        let max = self.max_per_node.map(|m| format!(", max_replicas_per_node: {m}")).unwrap_or_default();
        let ports = self.port.map(|p| format!(", ports: [{{target: 80, published: '{p}'}}]")).unwrap_or_default();
        format!(
            "{{image: x{ports}, deploy: {{resources: {{reservations: {{{}}}}}, placement: {{constraints: [{constraint}], preferences: [{spread}]{max}}}}}}}",
            reservations.join(", ")
        )
    }
}

fn cluster(nodes: &[NodeGen], services: &[ServiceGen]) -> ClusterState {
    let ids: Vec<String> = (0..nodes.len()).map(|i| format!("n{i:02}")).collect();
    let names: Vec<String> = (0..services.len()).map(|i| format!("s{i}")).collect();
    let yamls: Vec<String> = services.iter().map(ServiceGen::yaml).collect();
    let specs: Vec<(&str, &str, u64)> =
        services.iter().enumerate().map(|(i, s)| (names[i].as_str(), yamls[i].as_str(), s.replicas)).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut state = state_with(&id_refs, &specs);
    for (id, generated) in ids.iter().zip(nodes) {
        let Some(node) = state.nodes.get_mut(id) else { continue };
        if let Some(z) = generated.zone {
            node.labels.insert("zone".into(), format!("z{z}"));
        }
        if let Some(r) = generated.rack {
            node.labels.insert("rack".into(), format!("r{r}"));
        }
        node.memory_bytes = generated.memory_gib << 30;
        node.nano_cpus = generated.cpus * 1_000_000_000;
        node.status = if generated.status == 0 { NodeStatus::Down } else { NodeStatus::Ready };
        node.availability = match generated.availability {
            0 => Availability::Pause,
            1 => Availability::Drain,
            _ => Availability::Active,
        };
        node.role = if generated.manager { NodeRole::Manager } else { NodeRole::Worker };
    }
    for c in crate::reconciler::reconcile(&state, 0) {
        state.apply(c);
    }
    state
}

/// The scheduler's rules as a plain scan over every node for every task.
fn reference(state: &ClusterState) -> Vec<Command> {
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let mut loads: Vec<NodeLoad> = vec![NodeLoad::default(); nodes.len()];
    for task in state.tasks.values().filter(|t| t.state.is_active()) {
        let Some(at) = nodes.iter().position(|n| Some(&n.id) == task.node.as_ref()) else { continue };
        loads[at].add(&task.service, &Requirements::of(&state.services[&task.service].spec));
    }
    let mut pending: Vec<&Task> =
        state.tasks.values().filter(|t| t.state == TaskState::Pending && t.desired == DesiredState::Running).collect();
    pending.sort_by(|a, b| (&a.service, a.slot, a.id).cmp(&(&b.service, b.slot, b.id)));
    let (mut assignments, mut messages) = (Vec::new(), Vec::new());
    for task in pending {
        let service = &state.services[&task.service];
        let (Ok(constraints), Ok(spread)) = (constraints_of(&service.spec), spread_of(&service.spec)) else {
            continue;
        };
        let requirements = Requirements::of(&service.spec);
        let eligible: Vec<bool> = nodes.iter().map(|n| fit::check_node(n, &constraints).is_ok()).collect();
        let paths: Vec<Vec<Option<String>>> = nodes.iter().map(|n| path_of(&spread, n)).collect();
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        let mut best: Option<(Vec<u64>, usize)> = None;
        for (i, node) in nodes.iter().enumerate() {
            let fits =
                fit::check_node(node, &constraints).and_then(|()| requirements.check(node, &loads[i], &service.id));
            if let Err(rejection) = fits {
                *rejections.entry(rejection).or_default() += 1;
                continue;
            }
            let mut key: Vec<u64> = (1..=spread.len())
                .map(|level| {
                    (0..nodes.len())
                        .filter(|j| eligible[*j] && paths[*j][..level] == paths[i][..level])
                        .map(|j| loads[j].of(&service.id))
                        .sum()
                })
                .collect();
            key.extend(fit::rank(node, &loads[i], &service.id, i));
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, i));
            }
        }
        match best {
            Some((_, i)) => {
                loads[i].add(&service.id, &requirements);
                assignments.push((task.id, nodes[i].id.clone()));
            }
            None if nodes.is_empty() => messages.push((task.id, "no nodes are available".to_string())),
            None => messages.push((task.id, fit::summarize(nodes.len(), &rejections))),
        }
    }
    // Every reason here is a placement failure: these tasks are unplaceable.
    let messages: Vec<(TaskId, String)> = messages
        .into_iter()
        .filter(|(id, m)| state.tasks.get(id).is_some_and(|t| &t.message != m || !t.unplaceable))
        .collect();
    let unplaceable: Vec<TaskId> = messages.iter().map(|(id, _)| *id).collect();
    let mut commands = Vec::new();
    if !assignments.is_empty() {
        commands.push(Command::AssignTasks { assignments, at: 0 });
    }
    if !messages.is_empty() {
        commands.push(Command::SetTaskMessages { messages, unplaceable, at: 0 });
    }
    commands
}

/// Every active task's node passes the static filters it was placed by, and no node carries
/// more than it has, more than a service's maximum, or a host port twice.
fn check_placements(state: &ClusterState) -> Result<(), TestCaseError> {
    for node in state.nodes.values() {
        let mut load = NodeLoad::default();
        for task in state.node_tasks(&node.id).filter(|t| t.state == TaskState::Assigned) {
            let service = &state.services[&task.service];
            let requirements = Requirements::of(&service.spec);
            let constraints = constraints_of(&service.spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(fit::check_node(node, &constraints).is_ok(), "task {} on unfit node {}", task.id, node.id);
            prop_assert!(requirements.check(node, &load, &service.id).is_ok(), "node {} over its limits", node.id);
            load.add(&service.id, &requirements);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn placements_never_violate_filters_and_match_a_plain_scan(
        nodes in proptest::collection::vec(node_gen(), 0..9),
        services in proptest::collection::vec(service_gen(), 1..4),
        more in 0u64..6,
    ) {
        let mut state = cluster(&nodes, &services);
        let commands = schedule(&state, 0);
        prop_assert_eq!(&commands, &reference(&state));
        for c in commands {
            state.apply(c);
        }
        check_placements(&state)?;
        // A second round on a loaded cluster: more replicas of every service.
        for i in 0..services.len() {
            let id = ServiceId::new("p", format!("s{i}"));
            let replicas = state.services[&id].replicas + more;
            state.apply(Command::ScaleService { service: id, replicas, at: 0 });
        }
        for c in crate::reconciler::reconcile(&state, 0) {
            state.apply(c);
        }
        let commands = schedule(&state, 0);
        prop_assert_eq!(&commands, &reference(&state));
        for c in commands {
            state.apply(c);
        }
        check_placements(&state)?;
        // Every reason accounts for every node.
        for task in state.tasks.values().filter(|t| t.state == TaskState::Pending) {
            if let Some(reasons) = task.message.strip_prefix(&format!("0 of {} nodes fit: ", nodes.len())) {
                let total: usize = reasons.split(", ").filter_map(|r| r.split(' ').next()?.parse::<usize>().ok()).sum();
                prop_assert_eq!(total, nodes.len(), "{}", task.message);
            }
        }
    }

    #[test]
    fn spread_is_within_one_across_equal_nodes(nodes in 1usize..9, zones in 1u8..4, replicas in 0u64..40, spread in any::<bool>()) {
        let ids: Vec<String> = (0..nodes).map(|i| format!("n{i}")).collect();
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let yaml = if spread { SPREAD } else { "image: x" };
        let mut state = state_with(&id_refs, &[("web", yaml, replicas)]);
        for (i, id) in ids.iter().enumerate() {
            if let Some(node) = state.nodes.get_mut(id) {
                node.labels.insert("zone".into(), format!("z{}", i % usize::from(zones)));
            }
        }
        converge(&mut state, 0);
        let counts: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 0)).chain(per_node(&state, "web")).collect();
        prop_assert_eq!(counts.values().sum::<usize>() as u64, replicas);
        let within_one = |values: Vec<usize>| values.iter().max().unwrap_or(&0) - values.iter().min().unwrap_or(&0) <= 1;
        if spread {
            let mut by_zone: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (id, count) in &counts {
                by_zone.entry(state.nodes[id].labels["zone"].clone()).or_default().push(*count);
            }
            prop_assert!(within_one(by_zone.values().map(|c| c.iter().sum()).collect()), "zones: {by_zone:?}");
            for (zone, nodes) in &by_zone {
                prop_assert!(within_one(nodes.clone()), "in {zone}: {nodes:?}");
            }
        } else {
            prop_assert!(within_one(counts.values().copied().collect()), "{counts:?}");
        }
    }
}

const SPREAD: &str = "{image: x, deploy: {placement: {preferences: [{spread: node.labels.zone}]}}}";
