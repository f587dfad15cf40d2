//! The assignment views: for every node, the tasks it should run with their specs.
//!
//! [`ViewBuilder`] keeps them in step with the cluster state, rebuilding only the tasks the task
//! table's journal names as changed since its last build (the whole state only after a restore,
//! when a service or stack changes, or when the journal no longer reaches back). [`Views`]
//! publishes them per node, so a change wakes only the sessions of the nodes it concerns — at
//! 10,000 nodes, one placement wakes one session, not 10,000.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use shoal_proto::v1 as pb;
use tokio::sync::watch;

use super::server::{SHARED_SPEC_FORMAT, SPEC_ERROR_FORMAT, SPEC_FORMAT};
use super::taskspec::{config_hash, shared_task_spec, task_spec_hashed, TaskSpecOptions};
use crate::store::state::{
    ClusterState, DesiredState, Millis, NodeId, NodeStatus, NodesRevision, ServiceId, Stack, Task, TaskId, TaskState,
};
use crate::store::tasks::{Changes, Cursor};
use crate::wire;
use shoal_agent::spec::TaskSpec;

/// One node's assignments. An unchanged assignment keeps its pointer, so sessions tell changes
/// by pointer.
pub type NodeAssignments = BTreeMap<TaskId, Arc<pb::Assignment>>;

/// The published views: one watch per node, and the applied index they are built from.
pub struct Views {
    index: watch::Sender<u64>,
    nodes: Mutex<HashMap<NodeId, watch::Sender<Arc<NodeAssignments>>>>,
}

impl Default for Views {
    fn default() -> Self {
        Views { index: watch::Sender::new(0), nodes: Mutex::new(HashMap::new()) }
    }
}

impl Views {
    /// The applied index the views are built from (sessions wait for their registration's).
    pub fn index(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// The node's assignments, now and after every change.
    pub fn node(&self, node: &str) -> watch::Receiver<Arc<NodeAssignments>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        match nodes.get(node) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = watch::channel(Arc::default());
                nodes.insert(node.to_string(), sender);
                receiver
            }
        }
    }

    /// Forgets every node's assignments (leadership was lost: a later build starts from scratch,
    /// and must not leave a node the assignments of an earlier term).
    pub fn clear(&self) {
        let nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in nodes.values() {
            sender.send_if_modified(|current| !std::mem::take(current).is_empty());
        }
        self.index.send_replace(0);
    }

    /// Publishes the nodes whose assignments changed, then the index: a session that sees the
    /// index sees every node's assignments as of it.
    pub fn publish(&self, changed: Vec<(NodeId, Arc<NodeAssignments>)>, index: u64) {
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
            for (node, assignments) in changed {
                match nodes.get(&node) {
                    Some(sender) => {
                        sender.send_if_modified(|current| {
                            let modified = !Arc::ptr_eq(current, &assignments);
                            *current = assignments;
                            modified
                        });
                    }
                    None => {
                        nodes.insert(node, watch::Sender::new(assignments));
                    }
                }
            }
        }
        self.index.send_if_modified(|current| std::mem::replace(current, index) != index);
    }
}

/// What a task's spec is built from: when either changes, the spec is built again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SpecKey {
    service_version: u64,
    stack_updated_at: Millis,
}

/// What of a service and its stack goes into its tasks' assignments; a change rebuilds them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServiceKey {
    spec: SpecKey,
    stack_removing: bool,
    remove_volumes: bool,
    stop_timeout: Option<u32>,
}

fn service_key(state: &ClusterState, service: &ServiceId) -> Option<ServiceKey> {
    let record = state.services.get(service)?;
    let stack = state.stacks.get(&service.stack)?;
    Some(ServiceKey {
        spec: SpecKey { service_version: record.version, stack_updated_at: stack.updated_at },
        stack_removing: stack.removing,
        remove_volumes: stack.remove_volumes,
        stop_timeout: stack.stop_timeout,
    })
}

/// A task's current assignment and what it was built from.
struct Built {
    node: NodeId,
    /// `None`: built without a service or stack (an empty spec).
    key: Option<SpecKey>,
    /// The spec may be reused while the key holds (it is not an error that may resolve later).
    cached: bool,
    assignment: Arc<pb::Assignment>,
}

/// Keeps every node's assignments in step with the state, task by changed task.
pub struct ViewBuilder {
    options: TaskSpecOptions,
    /// Where the task journal was at the last build; `None` before the first.
    cursor: Option<Cursor>,
    services: HashMap<ServiceId, ServiceKey>,
    built: HashMap<TaskId, Built>,
    nodes: HashMap<NodeId, Arc<NodeAssignments>>,
    /// What each service's specs are made from, for the spec key it was worked out for.
    specs: HashMap<ServiceId, ServiceSpecs>,
    /// Tasks whose spec could not be built: tried again at every build (a `service:x` network
    /// mode resolves once x has a task).
    retry: HashSet<TaskId>,
}

/// What a service's task specs are made from, worked out once per spec key.
struct ServiceSpecs {
    key: SpecKey,
    /// The service's config hash (a JSON rendering and a SHA-256 of the whole service).
    hash: Arc<str>,
    /// The spec its replicas share ([`SHARED_SPEC_FORMAT`]): one per service version, kept and
    /// sent by reference instead of one per task (100,000 tasks: ≈60 MiB of specs, and as many
    /// JSON encodings). `None`: built per task (they depend on the node, as `network_mode:
    /// service:x` does, or they do not build and each task says why).
    shared: Option<Bytes>,
}

impl ViewBuilder {
    pub fn new(options: TaskSpecOptions) -> Self {
        ViewBuilder {
            options,
            cursor: None,
            services: HashMap::new(),
            built: HashMap::new(),
            nodes: HashMap::new(),
            specs: HashMap::new(),
            retry: HashSet::new(),
        }
    }

    /// Whether the next build over `state` looks at more than about `tasks` tasks (writes are
    /// counted, not listed: this runs before every build): then the caller builds from a copy
    /// of the state rather than under its lock (a deploy of 100,000 tasks takes seconds to
    /// build, in which the raft thread could not apply).
    pub fn is_larger_than(&self, state: &ClusterState, tasks: usize) -> bool {
        match self.cursor_for(state).and_then(|cursor| state.tasks.writes_since(cursor)) {
            None => state.tasks.len() > tasks,
            Some(writes) => writes + self.retry.len() > tasks,
        }
    }

    /// Where to follow the task journal from, unless the next build must look at every task
    /// (the first build, or a service or stack changed).
    fn cursor_for(&self, state: &ClusterState) -> Option<Cursor> {
        self.cursor.filter(|_| self.services_unchanged(state))
    }

    /// Brings the views up to `state`; returns the nodes whose assignments changed.
    pub fn build(&mut self, state: &ClusterState) -> Vec<(NodeId, Arc<NodeAssignments>)> {
        let changes = match self.cursor_for(state) {
            Some(cursor) => state.tasks.changes_since(cursor),
            None => Changes::Everything,
        };
        self.cursor = Some(state.tasks.cursor());
        let mut touched = HashSet::new();
        match changes {
            Changes::Everything => {
                self.services =
                    state.services.keys().filter_map(|id| Some((id.clone(), service_key(state, id)?))).collect();
                self.specs.retain(|id, _| state.services.contains_key(id));
                let ids: BTreeSet<TaskId> = state.tasks.keys().chain(self.built.keys()).copied().collect();
                for id in ids {
                    self.update(state, id, &mut touched);
                }
            }
            Changes::Tasks(mut ids) => {
                ids.extend(self.retry.iter().copied());
                for id in ids {
                    self.update(state, id, &mut touched);
                }
            }
        }
        touched
            .into_iter()
            .map(|node| {
                let assignments = self.nodes.get(&node).cloned().unwrap_or_default();
                (node, assignments)
            })
            .collect()
    }

    /// Every service and stack is as at the last build (as far as assignments are concerned).
    fn services_unchanged(&self, state: &ClusterState) -> bool {
        state.services.len() == self.services.len()
            && state.services.keys().all(|id| self.services.get(id).copied() == service_key(state, id))
    }

    fn update(&mut self, state: &ClusterState, id: TaskId, touched: &mut HashSet<NodeId>) {
        let old = self.built.remove(&id);
        let wanted = state.tasks.get(&id).and_then(|task| {
            let node = task.node.as_ref()?;
            // Pending tasks (even pinned ones) wait for the scheduler; Removed ones are done.
            if matches!(task.state, TaskState::Pending | TaskState::Removed) {
                return None;
            }
            Some(self.assignment(state, task, node, old.as_ref()))
        });
        let moved = match (&old, &wanted) {
            (Some(old), Some(new)) => old.node != new.node,
            _ => true,
        };
        if let Some(old) = &old {
            if moved {
                self.remove_from(&old.node, id);
                touched.insert(old.node.clone());
            }
        }
        let Some(new) = wanted else {
            self.retry.remove(&id);
            return;
        };
        if new.cached {
            self.retry.remove(&id);
        } else {
            self.retry.insert(id);
        }
        let changed = old.as_ref().is_none_or(|old| moved || !Arc::ptr_eq(&old.assignment, &new.assignment));
        if changed {
            let node = Arc::make_mut(self.nodes.entry(new.node.clone()).or_default());
            node.insert(id, new.assignment.clone());
            touched.insert(new.node.clone());
        }
        self.built.insert(id, new);
    }

    fn remove_from(&mut self, node: &str, id: TaskId) {
        if let Some(assignments) = self.nodes.get_mut(node) {
            Arc::make_mut(assignments).remove(&id);
            if assignments.is_empty() {
                self.nodes.remove(node);
            }
        }
    }

    fn assignment(&mut self, state: &ClusterState, task: &Task, node: &str, old: Option<&Built>) -> Built {
        let key = service_key(state, &task.service).map(|k| k.spec);
        let (format, spec, cached) = match old.filter(|o| o.cached && o.key == key && o.node == node) {
            Some(old) => (old.assignment.spec_format.as_str(), old.assignment.spec.clone(), true),
            None => self.spec(state, task, node),
        };
        let desired = wire::desired_state(task.desired) as i32;
        let remove_volumes = task.desired == DesiredState::Remove
            && state.stacks.get(&task.service.stack).is_some_and(|s| s.removing && s.remove_volumes);
        // Same desired state and spec: the same assignment (by pointer), so no diff is sent.
        let reuse = old.filter(|o| {
            let a = &o.assignment;
            o.node == node
                && a.desired == desired
                && a.remove_volumes == remove_volumes
                && a.spec_format == format
                && a.spec == spec
        });
        let assignment = match reuse {
            Some(o) => o.assignment.clone(),
            None => Arc::new(pb::Assignment {
                task: task.id,
                service: Some(wire::service_ref(&task.service)),
                slot: task.slot,
                desired,
                spec_format: format.to_string(),
                spec,
                remove_volumes,
            }),
        };
        Built { node: node.to_string(), key, cached, assignment }
    }

    /// The task's spec (JSON), or why it cannot be built, and whether it may be reused while its
    /// key holds. Built for every task, so that the agent knows the networks and volumes of what
    /// it removes even after a restart; errors are not reused.
    fn spec(&mut self, state: &ClusterState, task: &Task, node: &str) -> (&'static str, Bytes, bool) {
        let (Some(service), Some(stack)) = (state.services.get(&task.service), state.stacks.get(&task.service.stack))
        else {
            return ("", Bytes::new(), true);
        };
        let key = SpecKey { service_version: service.version, stack_updated_at: stack.updated_at };
        if self.specs.get(&task.service).is_none_or(|specs| specs.key != key) {
            let hash: Arc<str> = config_hash(&stack.project, &task.service.service, &service.spec).into();
            let shared =
                shared_task_spec(&stack.project, &task.service.service, &service.spec, &hash, task, self.options)
                    .and_then(|spec| serde_json::to_vec(&with_stop_timeout(stack, spec)).ok())
                    .map(|json| Bytes::from(json.into_boxed_slice()));
            self.specs.insert(task.service.clone(), ServiceSpecs { key, hash, shared });
        }
        let Some(specs) = self.specs.get(&task.service) else {
            return ("", Bytes::new(), true);
        };
        if let Some(json) = specs.shared.as_ref().filter(|_| task.slot != 0) {
            return (SHARED_SPEC_FORMAT, json.clone(), true);
        }
        let hash = specs.hash.clone();
        let resolve = |name: &str| resolve_service_container(state, &task.service.stack, name, node);
        let built = task_spec_hashed(
            &stack.project,
            &task.service.service,
            &service.spec,
            &hash,
            task,
            node,
            &resolve,
            self.options,
        )
        .map_err(|e| e.to_string())
        .map(|spec| with_stop_timeout(stack, spec))
        .and_then(|spec| serde_json::to_vec(&spec).map_err(|e| format!("cannot encode the container spec: {e}")));
        match built {
            // Exactly as long as the spec: the encoder's spare capacity would stay with it.
            Ok(bytes) => (SPEC_FORMAT, Bytes::from(bytes.into_boxed_slice()), true),
            // A task being stopped or removed needs no spec to run (its networks and volumes are
            // only cleaned up best effort).
            Err(_) if task.desired != DesiredState::Running => ("", Bytes::new(), false),
            Err(reason) => {
                (SPEC_ERROR_FORMAT, Bytes::from(format!("cannot build the container spec: {reason}")), false)
            }
        }
    }
}

/// A stopping stack's `down -t`: the stop timeout given for the removal wins.
fn with_stop_timeout(stack: &Stack, mut spec: TaskSpec) -> TaskSpec {
    if let (true, Some(seconds)) = (stack.removing, stack.stop_timeout) {
        spec.container.stop_grace_period = Some(std::time::Duration::from_secs(seconds.into()));
    }
    spec
}

/// `network_mode: service:x` → the container of x's task on the same node, else of its slot 1.
fn resolve_service_container(state: &ClusterState, stack: &str, name: &str, node: &str) -> Option<String> {
    let id = ServiceId::new(stack, name);
    let record = state.services.get(&id)?;
    let live: Vec<&Task> = state.service_tasks(&id).filter(|t| t.desired == DesiredState::Running).collect();
    let pick = live
        .iter()
        .filter(|t| t.node.as_deref() == Some(node))
        .min_by_key(|t| (t.slot.max(1), std::cmp::Reverse(t.id)))
        .or_else(|| live.iter().filter(|t| t.slot <= 1).max_by_key(|t| t.id))?;
    Some(pick.actual_name(&record.spec))
}

/// Every node's status, unless the nodes did not change since `seen` (heartbeats read this copy
/// instead of taking the state's lock; this runs after every applied change, so it must not
/// cost a pass over 10,000 nodes each time).
pub fn node_statuses_if_changed(
    state: &ClusterState,
    seen: Option<NodesRevision>,
) -> Option<(NodesRevision, HashMap<NodeId, NodeStatus>)> {
    (!state.nodes_revision.is(seen))
        .then(|| (state.nodes_revision, state.nodes.values().map(|n| (n.id.clone(), n.status)).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatcher::taskspec::RestartOwner;
    use crate::scheduler::tests::{agents_run_everything, converge, state_with};
    use crate::store::command::{Command, StatusUpdate};

    const OPTIONS: TaskSpecOptions = TaskSpecOptions { restart: RestartOwner::ControlPlane };

    /// Every node's assignments by value.
    fn contents(builder: &ViewBuilder) -> BTreeMap<NodeId, BTreeMap<TaskId, pb::Assignment>> {
        builder
            .nodes
            .iter()
            .map(|(node, tasks)| (node.clone(), tasks.iter().map(|(id, a)| (*id, a.as_ref().clone())).collect()))
            .collect()
    }

    /// The incremental builder agrees with one that builds everything from scratch.
    fn assert_same_as_fresh(builder: &ViewBuilder, state: &ClusterState) {
        let mut fresh = ViewBuilder::new(OPTIONS);
        fresh.build(state);
        assert_eq!(contents(builder), contents(&fresh));
    }

    fn nodes_of(changed: &[(NodeId, Arc<NodeAssignments>)]) -> Vec<&str> {
        let mut nodes: Vec<&str> = changed.iter().map(|(n, _)| n.as_str()).collect();
        nodes.sort();
        nodes
    }

    #[test]
    fn node_statuses_are_taken_again_only_after_a_node_changed() {
        let mut state = state_with(&["a", "b"], &[("web", "image: x", 4)]);
        let (seen, statuses) = node_statuses_if_changed(&state, None).expect("nothing seen yet");
        assert_eq!(statuses.len(), 2);
        assert!(node_statuses_if_changed(&state, Some(seen)).is_none(), "no node changed");

        // Tasks changing is not a node changing.
        converge(&mut state, 0);
        agents_run_everything(&mut state);
        assert!(node_statuses_if_changed(&state, Some(seen)).is_none());

        state.apply(Command::SetNodeStatus {
            node: "b".into(),
            status: NodeStatus::Down,
            message: String::new(),
            at: 1,
        });
        let (seen, statuses) = node_statuses_if_changed(&state, Some(seen)).expect("a node went down");
        assert_eq!(statuses.get("b"), Some(&NodeStatus::Down));

        // A copy is the same nodes; a state restored from a snapshot is not known to be.
        let copy = state.clone();
        assert!(node_statuses_if_changed(&copy, Some(seen)).is_none());
        let restored: ClusterState =
            serde_json::from_slice(&serde_json::to_vec(&state).expect("encode")).expect("decode");
        assert!(node_statuses_if_changed(&restored, Some(seen)).is_some());
    }

    #[test]
    fn incremental_builds_match_a_full_build_and_name_only_the_nodes_that_changed() {
        let mut state = state_with(&["a", "b", "c"], &[("web", "image: x", 6), ("db", "image: y", 1)]);
        converge(&mut state, 0);
        let mut builder = ViewBuilder::new(OPTIONS);
        let first = builder.build(&state);
        assert_eq!(nodes_of(&first), vec!["a", "b", "c"]);
        assert_eq!(builder.nodes.values().map(|n| n.len()).sum::<usize>(), 7);
        assert_same_as_fresh(&builder, &state);
        assert!(builder.build(&state).is_empty(), "nothing changed, nothing to publish");

        // Running reports change no assignment: no node is woken.
        agents_run_everything(&mut state);
        assert!(builder.build(&state).is_empty());
        assert_same_as_fresh(&builder, &state);

        // One task asked to stop: only its node changes, and only that task's assignment.
        let (task, node) = state.tasks.values().find_map(|t| Some((t.id, t.node.clone()?))).expect("a placed task");
        let before = builder.nodes[&node].clone();
        state.apply(Command::SetDesiredState { tasks: vec![(task, DesiredState::Shutdown)], at: 1 });
        let changed = builder.build(&state);
        assert_eq!(nodes_of(&changed), vec![node.as_str()]);
        let after = &changed[0].1;
        for (id, assignment) in after.iter() {
            assert_eq!(Arc::ptr_eq(assignment, &before[id]), *id != task, "task {id}");
        }
        assert_same_as_fresh(&builder, &state);

        // Scaling down, the agents removing what went, the records forgotten: still the same.
        state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 2, at: 2 });
        converge(&mut state, 2);
        builder.build(&state);
        assert_same_as_fresh(&builder, &state);
        agents_run_everything(&mut state);
        converge(&mut state, 3);
        builder.build(&state);
        assert_same_as_fresh(&builder, &state);
        let removed: Vec<TaskId> =
            state.tasks.values().filter(|t| t.state == TaskState::Removed).map(|t| t.id).collect();
        assert!(!removed.is_empty());
        state.apply(Command::ForgetTasks { tasks: removed });
        builder.build(&state);
        assert_same_as_fresh(&builder, &state);
    }

    #[test]
    fn a_stack_change_or_a_restored_state_rebuilds_every_task() {
        let mut state = state_with(&["a", "b"], &[("web", "image: x", 2)]);
        converge(&mut state, 0);
        let mut builder = ViewBuilder::new(OPTIONS);
        builder.build(&state);
        // `down -v`: the stack is removing with its volumes, which every task's assignment says.
        state.apply(Command::RemoveStack { stack: "p".into(), remove_volumes: true, stop_timeout: Some(3), at: 5 });
        converge(&mut state, 5);
        builder.build(&state);
        assert_same_as_fresh(&builder, &state);
        assert!(builder.nodes.values().flat_map(|n| n.values()).all(|a| a.remove_volumes));

        // A snapshot restored: a new table whose journal the builder's cursor does not belong to.
        let mut restored: ClusterState =
            serde_json::from_slice(&serde_json::to_vec(&state).expect("encodes")).expect("decodes");
        let running = restored.tasks.values().find(|t| t.node.is_some()).map(|t| t.id).expect("a placed task");
        let node = restored.tasks[&running].node.clone().expect("placed");
        restored.apply(Command::ReportStatus {
            updates: vec![StatusUpdate::new(running, node, TaskState::Removed)],
            at: 6,
        });
        builder.build(&restored);
        assert_same_as_fresh(&builder, &restored);
    }

    #[test]
    fn replicas_share_one_spec_and_a_new_service_version_gets_a_new_one() {
        let mut state = state_with(&["a", "b", "c"], &[("web", "image: x", 6)]);
        converge(&mut state, 0);
        let mut builder = ViewBuilder::new(OPTIONS);
        builder.build(&state);
        let specs: Vec<Arc<pb::Assignment>> = builder.nodes.values().flat_map(|n| n.values()).cloned().collect();
        assert_eq!(specs.len(), 6);
        assert!(specs.iter().all(|a| a.spec_format == SHARED_SPEC_FORMAT));
        assert!(specs.iter().all(|a| a.spec.as_ptr() == specs[0].spec.as_ptr()), "one spec, kept once");

        // A changed service: its replacements get a spec of the new version.
        deploy_changed(&mut state);
        converge(&mut state, 1);
        builder.build(&state);
        assert_same_as_fresh(&builder, &state);
        let versions: BTreeSet<*const u8> =
            builder.nodes.values().flat_map(|n| n.values()).map(|a| a.spec.as_ptr()).collect();
        assert!(versions.len() <= 2, "at most one spec per service version: {versions:?}");
        let new = builder.nodes.values().flat_map(|n| n.values()).find(|a| a.spec.as_ptr() != specs[0].spec.as_ptr());
        let new = new.expect("the replacements have the new version's spec");
        assert!(String::from_utf8_lossy(&new.spec).contains("\"y"), "{:?}", new.spec);
    }

    fn deploy_changed(state: &mut ClusterState) {
        crate::scheduler::tests::deploy(state, &[("web", "image: y", 6)]);
    }
}
