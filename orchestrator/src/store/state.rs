//! The cluster state the Raft log replicates: stacks, services, tasks and nodes.
//!
//! Everything here is plain data. It changes only by applying a [`Command`] (see `command.rs`),
//! deterministically: commands carry their own timestamps, so every manager that applies the
//! same log reaches the same state.
//!
//! [`Command`]: super::command::Command

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::shared::SharedMap;
use super::tasks::TaskTable;
use crate::compose::model::{Project, Service};

/// Milliseconds since the Unix epoch, as stamped by the leader into a command.
pub type Millis = u64;

/// `<stack>/<service>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceId {
    pub stack: String,
    pub service: String,
}

impl ServiceId {
    pub fn new(stack: impl Into<String>, service: impl Into<String>) -> Self {
        ServiceId { stack: stack.into(), service: service.into() }
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stack, self.service)
    }
}

/// Task ids are assigned by the state machine from a counter, so they are the same everywhere.
pub type TaskId = u64;
pub type NodeId = String;

/// A deployed compose project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub name: String,
    /// The normalized project as loaded (services included; their live records are in
    /// [`ClusterState::services`]).
    pub project: Project,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// True once `down` asked for removal; the stack disappears when its tasks are gone.
    pub removing: bool,
    /// `down -v`: remove named volumes with the stack.
    pub remove_volumes: bool,
    /// `down -t`: seconds each container gets to stop, instead of its stop_grace_period.
    #[serde(default)]
    pub stop_timeout: Option<u32>,
    /// How many deploys changed this stack (1 after the first `up`).
    #[serde(default)]
    pub revision: u64,
    /// The request id of the last applied deploy: a client retrying after a failover sends the
    /// same id, and the retry is not applied a second time.
    #[serde(default)]
    pub last_request: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    Replicated,
    Global,
    /// Runs its replicas to completion once (`replicated-job`, or a service gated on by
    /// `service_completed_successfully`).
    ReplicatedJob,
    GlobalJob,
}

/// A service as the cluster runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: ServiceId,
    pub spec: Service,
    /// Hash of everything in the spec that, when changed, requires new containers.
    pub config_hash: String,
    pub mode: ServiceMode,
    /// Desired replicas (replicated modes).
    pub replicas: u64,
    /// Bumped on every spec change; tasks record the version they were made from.
    pub version: u64,
    /// `up --force-recreate`: replace tasks made before this version even if the hash matches.
    pub force_recreate_below: u64,
    /// Being removed (`down`, or an orphan with `--remove-orphans`): its tasks go, then it.
    pub removing: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Rebalancing was asked for (`shoal service rebalance`, or a node joined with
    /// `rebalance_on_join` set): the leader moves its tasks, one at a time, until their spread is
    /// even, then clears this.
    #[serde(default)]
    pub rebalance_requested: bool,
    /// How many times rebalancing was asked for. The leader's "balanced" carries the number it
    /// saw, so a request that arrives meanwhile is not cleared with it.
    #[serde(default)]
    pub rebalance_requests: u64,
}

/// What the orchestrator wants a task to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    /// Stop the container but keep the task record (it is being replaced or scaled away).
    Shutdown,
    /// Stop and remove the container, then forget the task.
    Remove,
}

/// What the agent last reported (or the scheduler decided, before an agent has the task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created by the reconciler; not placed yet.
    Pending,
    /// Placed on a node; the agent has not reported yet.
    Assigned,
    /// The agent is pulling/building the image or creating the container.
    Preparing,
    Starting,
    Running,
    /// Exited with code 0.
    Complete,
    /// Exited non-zero, or could not be started.
    Failed,
    /// Stopped because it was asked to.
    Shutdown,
    /// Its node went down; the task is lost from the orchestrator's point of view.
    Orphaned,
    /// The container is gone (after `Remove`).
    Removed,
}

impl TaskState {
    /// The task has ended and will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete | TaskState::Failed | TaskState::Shutdown | TaskState::Orphaned | TaskState::Removed
        )
    }

    /// The task holds (or is about to hold) a container on a node.
    pub fn is_active(self) -> bool {
        !self.is_terminal() && self != TaskState::Pending
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

/// One container of a service: a replica slot, or one node of a global service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub service: ServiceId,
    /// Replica number, 1-based (`<project>-<service>-<slot>`). Global tasks use 0.
    pub slot: u64,
    pub desired: DesiredState,
    pub state: TaskState,
    pub node: Option<NodeId>,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub health: Option<Health>,
    /// Published ports as the engine bound them (`0.0.0.0:8080->80/tcp`), once running.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Why the task is in its state, in words a user understands ("waiting for db to be
    /// healthy", "0 of 3 nodes fit: ...", "exited with code 1").
    pub message: String,
    /// Pending because no node fits it (the scheduler's last try; `message` says why), as
    /// opposed to waiting for something that will happen by itself (a dependency, a restart
    /// delay, the previous container of its slot). Cleared when it is placed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unplaceable: bool,
    /// Once removed: what the agent could not clean up after the container (a stack network
    /// another container still uses), each naming the object and the engine's reason.
    #[serde(default)]
    pub cleanup_errors: Vec<String>,
    pub config_hash: String,
    pub service_version: u64,
    /// How many times this slot has been restarted (carried over to the replacement task).
    pub restarts: u32,
    /// Not placed before this time (restart delay).
    pub not_before: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// A start-first replacement (a rebalancing move): the task this one replaces, which keeps
    /// running until this one runs. See [`ClusterState::is_surge`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<TaskId>,
    /// The container's name when its agent had to give it another than [`Task::container_name`]
    /// (on an engine several nodes share, another node's container held that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed: Option<String>,
    /// The sequence of the last ordered status report applied (see `StatusUpdate::sequence`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status_sequence: u64,
}

/// For `skip_serializing_if`: a zero counter is left out of the state and the log.
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Task {
    /// A new task in `slot`, pending, made from the service's config at `service_version`.
    pub fn pending(
        id: TaskId,
        service: ServiceId,
        slot: u64,
        config_hash: String,
        service_version: u64,
        at: Millis,
    ) -> Task {
        Task {
            id,
            service,
            slot,
            desired: DesiredState::Running,
            state: TaskState::Pending,
            node: None,
            container_id: None,
            exit_code: None,
            health: None,
            ports: Vec::new(),
            message: String::new(),
            unplaceable: false,
            cleanup_errors: Vec::new(),
            config_hash,
            service_version,
            restarts: 0,
            not_before: 0,
            created_at: at,
            updated_at: at,
            replaces: None,
            renamed: None,
            status_sequence: 0,
        }
    }

    /// `<project>-<service>-<slot>` (or the service's container_name). A global service's task
    /// (slot 0) is `<project>-<service>-<node id>`: one per node, so names stay unique across the
    /// cluster (in `ps`, and on an engine that several nodes share).
    pub fn container_name(&self, spec: &Service) -> String {
        match (&spec.container_name, self.slot, &self.node) {
            (Some(name), _, _) => name.clone(),
            (None, 0, Some(node)) => format!("{}-{}-{node}", self.service.stack, self.service.service),
            (None, slot, _) => format!("{}-{}-{}", self.service.stack, self.service.service, slot.max(1)),
        }
    }

    /// The name its container has: [`Task::container_name`] unless the agent had to rename it.
    pub fn actual_name(&self, spec: &Service) -> String {
        self.renamed.clone().unwrap_or_else(|| self.container_name(spec))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Manager,
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Takes new tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move elsewhere.
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub hostname: String,
    pub role: NodeRole,
    pub availability: Availability,
    pub status: NodeStatus,
    /// CPUs in nano-CPUs (1e9 = one CPU) and memory in bytes, as the engine reports.
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    /// The labels constraints see: the agent's, with an operator's changes applied (see
    /// [`NodeLabels`]).
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub arch: String,
    pub engine_version: String,
    /// Where the agent can be reached (for logs), if it advertises one.
    pub address: Option<String>,
    pub status_message: String,
    pub updated_at: Millis,
}

/// Where a node's labels come from. The agent gives its own (`shoal agent --label`) at every
/// registration; an operator adds and removes labels with `shoal node update`. The operator's
/// changes win and outlive re-registrations: an added label keeps its value whatever the agent
/// says, a removed one stays removed even if the agent gives it again. [`Node::labels`] holds
/// the result (what constraints match against).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLabels {
    /// What the node's agent gave at its last registration.
    pub agent: BTreeMap<String, String>,
    /// Set by `node update --label-add`.
    pub added: BTreeMap<String, String>,
    /// Removed by `node update --label-rm` (never also in `added`).
    pub removed: BTreeSet<String>,
}

impl NodeLabels {
    /// The agent's labels with the operator's changes applied.
    pub fn effective(&self) -> BTreeMap<String, String> {
        let mut labels: BTreeMap<String, String> = self
            .agent
            .iter()
            .filter(|(k, _)| !self.removed.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.extend(self.added.iter().map(|(k, v)| (k.clone(), v.clone())));
        labels
    }

    /// No operator changes: the labels are the agent's.
    pub fn is_agent_only(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// One manager of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub id: u64,
    /// Unique among managers; also the node id of the manager's own agent.
    pub name: String,
    /// Where managers, agents and clients reach it (gRPC).
    pub address: String,
    /// True: it should be a voter (it is promoted once caught up); false: a non-voting learner.
    pub voter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// When a node becomes ready (joins or comes back) or active again, every replicated service
    /// is asked to rebalance onto it.
    #[serde(default)]
    pub rebalance_on_join: bool,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub stacks: BTreeMap<String, Stack>,
    #[serde(with = "services_by_name")]
    pub services: BTreeMap<ServiceId, ServiceRecord>,
    pub tasks: TaskTable,
    pub nodes: SharedMap<NodeId, Node>,
    /// The managers (raft members) by raft id: where they are reached and whether an operator
    /// wants them voting. Kept in step with the raft membership by its changes' context.
    #[serde(default)]
    pub managers: BTreeMap<u64, ManagerInfo>,
    /// Operator label changes per node (`node update`), kept apart from what agents report; see
    /// [`NodeLabels`]. A node without an entry has only its agent's labels.
    #[serde(default)]
    pub node_labels: BTreeMap<NodeId, NodeLabels>,
    /// Secrets that admit new agents and managers; set once by the cluster's first leader.
    #[serde(default)]
    pub tokens: Option<JoinTokens>,
    /// Cluster-wide settings an operator changes.
    #[serde(default)]
    pub settings: ClusterSettings,
    /// The next task id to hand out.
    pub next_task_id: TaskId,
    /// Raft index of the last applied command (0 before any).
    pub applied_index: u64,
    /// Changes whenever a node does (see [`NodesRevision`]).
    #[serde(skip)]
    pub nodes_revision: NodesRevision,
}

/// A service's tasks, counted (see [`ClusterState::task_counts`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TaskCounts {
    /// Every task the store keeps, whatever its state.
    pub total: u64,
    pub running: u64,
    /// Tasks meant to run (desired state running).
    pub wanted: u64,
}

/// A number that changes whenever any node changes, so that readers which keep something
/// derived from every node (the dispatcher's copy of node statuses, read by heartbeats) can tell
/// in O(1) whether to derive it again. Numbers come from one counter per process, so two states
/// (a restored one, a fresh one) never share one unless one is a copy of the other. Not part of
/// the replicated state: not serialized, and equal for any two states.
#[derive(Debug, Clone, Copy, Eq)]
pub struct NodesRevision(u64);

impl NodesRevision {
    fn next() -> NodesRevision {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NodesRevision(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    pub fn bump(&mut self) {
        *self = NodesRevision::next();
    }

    /// Is this the revision `seen` was taken at?
    pub fn is(&self, seen: Option<NodesRevision>) -> bool {
        seen.is_some_and(|seen| seen.0 == self.0)
    }
}

impl Default for NodesRevision {
    fn default() -> Self {
        NodesRevision::next()
    }
}

impl PartialEq for NodesRevision {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl ClusterState {
    /// A node to change; counts as a change of the nodes (see [`NodesRevision`]) whether or not
    /// it exists, so a caller that inserts the node when it is missing needs no bump of its own.
    pub fn node_mut(&mut self, id: &str) -> Option<&mut Node> {
        self.nodes_revision.bump();
        self.nodes.get_mut(id)
    }

    /// Every service's tasks counted in one pass: listing services (or stacks) must not walk
    /// every task once per service (100 services × 100,000 tasks under the state's lock).
    pub fn task_counts(&self) -> std::collections::HashMap<&ServiceId, TaskCounts> {
        let mut counts: std::collections::HashMap<&ServiceId, TaskCounts> = std::collections::HashMap::new();
        for task in self.tasks.values() {
            let count = counts.entry(&task.service).or_default();
            count.total += 1;
            count.running += u64::from(task.state == TaskState::Running);
            count.wanted += u64::from(task.desired == DesiredState::Running);
        }
        counts
    }

    pub fn service_tasks<'a>(&'a self, service: &'a ServiceId) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| &t.service == service)
    }

    pub fn stack_services<'a>(&'a self, stack: &'a str) -> impl Iterator<Item = &'a ServiceRecord> + 'a {
        self.services.values().filter(move |s| s.id.stack == stack)
    }

    /// Is `task` a start-first replacement whose predecessor still should run? Then it is an
    /// extra container of an existing replica, in a slot of its own (a slot's container name
    /// cannot be shared), not a replica: the reconciler neither counts nor restarts it.
    pub fn is_surge(&self, task: &Task) -> bool {
        task.replaces
            .and_then(|id| self.tasks.get(&id))
            .is_some_and(|replaced| replaced.service == task.service && replaced.desired == DesiredState::Running)
    }

    pub fn node_tasks<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.node.as_deref() == Some(node))
    }
}

/// JSON map keys must be strings: the services are stored keyed by `<stack>/<service>`, and read
/// back keyed by each record's own id.
mod services_by_name {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ServiceId, ServiceRecord};

    pub fn serialize<S: Serializer>(services: &BTreeMap<ServiceId, ServiceRecord>, s: S) -> Result<S::Ok, S::Error> {
        services.iter().map(|(id, record)| (id.to_string(), record)).collect::<BTreeMap<_, _>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<ServiceId, ServiceRecord>, D::Error> {
        let by_name = BTreeMap::<String, ServiceRecord>::deserialize(d)?;
        Ok(by_name.into_values().map(|record| (record.id.clone(), record)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_counts_match_counting_each_service_on_its_own() {
        use crate::scheduler::tests::{agents_run_everything, converge, state_with};
        let mut state = state_with(&["a", "b"], &[("web", "image: x", 3), ("db", "image: y", 1)]);
        converge(&mut state, 0);
        agents_run_everything(&mut state);
        // One more replica of web, not running yet.
        let web = ServiceId::new("p", "web");
        if let Some(record) = state.services.get_mut(&web) {
            record.replicas = 4;
        }
        converge(&mut state, 1);
        let counts = state.task_counts();
        assert_eq!(counts.len(), state.services.len());
        for id in state.services.keys() {
            let tasks: Vec<&Task> = state.service_tasks(id).collect();
            let expected = TaskCounts {
                total: tasks.len() as u64,
                running: tasks.iter().filter(|t| t.state == TaskState::Running).count() as u64,
                wanted: tasks.iter().filter(|t| t.desired == DesiredState::Running).count() as u64,
            };
            assert_eq!(counts[id], expected, "{id:?}");
        }
        assert!(counts.values().any(|c| c.wanted > c.running), "the new replica is wanted, not running");
    }

    #[test]
    fn a_state_with_services_round_trips_through_json() {
        let id = ServiceId::new("shop", "web");
        let record = ServiceRecord {
            id: id.clone(),
            spec: Service::default(),
            config_hash: "h".into(),
            mode: ServiceMode::Replicated,
            replicas: 2,
            version: 1,
            force_recreate_below: 0,
            removing: false,
            created_at: 1,
            updated_at: 1,
            rebalance_requested: false,
            rebalance_requests: 0,
        };
        let mut state = ClusterState::default();
        state.services.insert(id, record);
        let json = serde_json::to_string(&state).expect("a state serializes (snapshots, backups)");
        assert!(json.contains(r#""services":{"shop/web":"#), "{json}");
        let back: ClusterState = serde_json::from_str(&json).expect("and reads back");
        assert_eq!(back, state);
    }
}
