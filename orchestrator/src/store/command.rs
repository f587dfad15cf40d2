//! Commands: the only way the cluster state changes. Each is proposed to Raft, and applied in
//! log order by every manager. Application is deterministic: no clocks, no randomness, no I/O —
//! timestamps travel in the command (`at`), ids come from counters in the state.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::state::{
    Availability, ClusterState, DesiredState, Health, JoinTokens, ManagerInfo, Millis, Node, NodeId, NodeLabels,
    NodeStatus, ServiceId, ServiceMode, ServiceRecord, Stack, Task, TaskId, TaskState,
};
use crate::compose::model::Service;

/// A service as `up` asks for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceDeployment {
    pub name: String,
    pub spec: Service,
    pub config_hash: String,
    pub mode: ServiceMode,
    pub replicas: u64,
}

/// How `up` treats services whose containers already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecreatePolicy {
    /// Replace only services whose configuration changed.
    #[default]
    Changed,
    /// `--force-recreate`: replace all.
    Force,
    /// `--no-recreate`: keep existing containers even if their configuration changed.
    Never,
}

/// What an agent observed about one of its tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub task: TaskId,
    /// The node reporting; a report from a node the task is not on is ignored.
    pub node: NodeId,
    pub state: TaskState,
    pub container_id: Option<String>,
    pub exit_code: Option<i64>,
    pub health: Option<Health>,
    pub message: String,
    /// Published ports as bound (`0.0.0.0:8080->80/tcp`).
    #[serde(default)]
    pub ports: Vec<String>,
    /// With `Removed`: what the agent could not clean up after the container.
    #[serde(default)]
    pub cleanup_errors: Vec<String>,
    /// The container's name, when the agent had to give it another than the task's (a name
    /// held by another node's container on a shared engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// The agent's order of its reports (0: unordered, always applied): a report older than the
    /// last one applied for the task is ignored.
    #[serde(default, skip_serializing_if = "super::state::is_zero")]
    pub sequence: u64,
}

impl StatusUpdate {
    /// `node` reports `task` in `state`, with nothing else to tell.
    pub fn new(task: TaskId, node: impl Into<NodeId>, state: TaskState) -> StatusUpdate {
        StatusUpdate {
            task,
            node: node.into(),
            state,
            container_id: None,
            exit_code: None,
            health: None,
            message: String::new(),
            ports: Vec::new(),
            cleanup_errors: Vec::new(),
            container_name: None,
            sequence: 0,
        }
    }
}

/// A task the reconciler wants created (ids are assigned when applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub service: ServiceId,
    pub slot: u64,
    /// Pinned to a node (global services), or `None` for the scheduler to choose.
    pub node: Option<NodeId>,
    pub restarts: u32,
    pub not_before: Millis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// `up`: create or update a stack and its services.
    DeployStack {
        stack: String,
        project: Box<crate::compose::model::Project>,
        services: Vec<ServiceDeployment>,
        /// Services of the stack that `up` did not name are removed (`--remove-orphans`).
        remove_orphans: bool,
        /// Only these services are (re)deployed (`up web`); empty means all.
        only: Vec<String>,
        recreate: RecreatePolicy,
        at: Millis,
        /// Unique per client request; a repeat of the last applied one changes nothing.
        #[serde(default)]
        request_id: String,
    },
    /// `down`: remove every service of the stack; the stack goes once its tasks are gone.
    RemoveStack {
        stack: String,
        remove_volumes: bool,
        /// `down -t`: overrides every container's stop grace period.
        #[serde(default)]
        stop_timeout: Option<u32>,
        at: Millis,
    },
    ScaleService {
        service: ServiceId,
        replicas: u64,
        at: Millis,
    },
    /// `service rebalance`: spread the service's running tasks over the nodes again. Sets the
    /// service's `rebalance_requested`; the leader then moves one task at a time, start-first,
    /// until the spread is even (`scheduler/rebalance.rs`). Only replicated services.
    RebalanceService {
        service: ServiceId,
        at: Millis,
    },
    /// `cluster update --rebalance-on-join`: whether a node that becomes ready (or active again)
    /// gets a share of the running replicated services: every one is asked to rebalance.
    SetRebalanceOnJoin {
        enabled: bool,
    },
    /// A rebalancing move (issued by the leader): start a replacement of running `task` on
    /// `node`, in a new slot; the old task is removed once the replacement runs.
    MoveTask {
        task: TaskId,
        node: NodeId,
        at: Millis,
    },
    /// The service is balanced (issued by the leader): clears its `rebalance_requested`, unless
    /// it was asked again since the leader saw `requests` requests.
    RebalanceFinished {
        service: ServiceId,
        requests: u64,
    },
    /// Drop records whose tasks are all gone (issued by the reconciler).
    ForgetServices {
        services: Vec<ServiceId>,
    },
    ForgetStacks {
        stacks: Vec<String>,
    },
    /// A node joined, or re-registered with new facts (resources, labels, engine).
    RegisterNode {
        node: Box<Node>,
    },
    SetNodeStatus {
        node: NodeId,
        status: NodeStatus,
        message: String,
        at: Millis,
    },
    SetNodeAvailability {
        node: NodeId,
        availability: Availability,
        at: Millis,
    },
    /// `node update --label-add/--label-rm`: operator labels, which win over the agent's and
    /// outlive its re-registrations (see `NodeLabels`). Removals apply first, then additions.
    UpdateNodeLabels {
        node: NodeId,
        add: BTreeMap<String, String>,
        remove: Vec<String>,
        at: Millis,
    },
    CreateTasks {
        tasks: Vec<NewTask>,
        at: Millis,
    },
    AssignTasks {
        assignments: Vec<(TaskId, NodeId)>,
        at: Millis,
    },
    /// Reasons for tasks that stay where they are (pending: why not placed). Those in
    /// `unplaceable` wait because no node fits them; the others wait for something else.
    SetTaskMessages {
        messages: Vec<(TaskId, String)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unplaceable: Vec<TaskId>,
        at: Millis,
    },
    SetDesiredState {
        tasks: Vec<(TaskId, DesiredState)>,
        at: Millis,
    },
    /// Tasks whose node is gone: they will not report again.
    OrphanTasks {
        tasks: Vec<TaskId>,
        message: String,
        at: Millis,
    },
    /// Batched agent reports.
    ReportStatus {
        updates: Vec<StatusUpdate>,
        at: Millis,
    },
    ForgetTasks {
        tasks: Vec<TaskId>,
    },
    /// A manager's address, name or wanted role (raft membership changes add and remove them).
    SetManager {
        manager: ManagerInfo,
    },
    /// Managers that are no longer raft members.
    ForgetManagers {
        ids: Vec<u64>,
    },
    /// The join tokens; applied only while none are set, so racing first leaders agree.
    InitTokens {
        tokens: JoinTokens,
    },
}

/// What applying a command tells its proposer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Ids of tasks created by the command.
    pub created_tasks: Vec<TaskId>,
    /// Something the proposer should tell the user (e.g. "no such service").
    pub error: Option<String>,
}

/// Most tasks (or status updates) one proposed command carries (see [`Command::split`]): about
/// 0.2–0.5 MB of log entry, so a raft message to a follower stays within its 1 MiB size limit.
pub const MAX_TASKS_PER_COMMAND: usize = 2_000;

impl Command {
    /// The command as commands of at most `max` tasks (or status updates) each, in order, with
    /// the same effect applied one after the other: a round that creates or places 100,000 tasks
    /// becomes many log entries, between which applying lets readers in, instead of one that
    /// holds the state's lock for a second. No entry is larger than a raft message should be:
    /// a 10 MB one went to each follower whole, and the stream that carried it kept a buffer
    /// that size for good. Commands about other things stay whole.
    pub fn split(self, max: usize) -> Vec<Command> {
        fn chunks<T>(items: Vec<T>, max: usize) -> Vec<Vec<T>> {
            let mut out = Vec::with_capacity(items.len().div_ceil(max));
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                out.push(items.by_ref().take(max).collect());
            }
            out
        }
        let max = max.max(1);
        match self {
            Command::CreateTasks { tasks, at } if tasks.len() > max => {
                chunks(tasks, max).into_iter().map(|tasks| Command::CreateTasks { tasks, at }).collect()
            }
            Command::AssignTasks { assignments, at } if assignments.len() > max => chunks(assignments, max)
                .into_iter()
                .map(|assignments| Command::AssignTasks { assignments, at })
                .collect(),
            Command::SetDesiredState { tasks, at } if tasks.len() > max => {
                chunks(tasks, max).into_iter().map(|tasks| Command::SetDesiredState { tasks, at }).collect()
            }
            Command::OrphanTasks { tasks, message, at } if tasks.len() > max => chunks(tasks, max)
                .into_iter()
                .map(|tasks| Command::OrphanTasks { tasks, message: message.clone(), at })
                .collect(),
            Command::ForgetTasks { tasks } if tasks.len() > max => {
                chunks(tasks, max).into_iter().map(|tasks| Command::ForgetTasks { tasks }).collect()
            }
            Command::ReportStatus { updates, at } if updates.len() > max => {
                chunks(updates, max).into_iter().map(|updates| Command::ReportStatus { updates, at }).collect()
            }
            other => vec![other],
        }
    }
}

impl CommandResult {
    pub(super) fn error(message: impl Into<String>) -> Self {
        CommandResult { error: Some(message.into()), ..CommandResult::default() }
    }
}

impl ClusterState {
    /// Applies one command. Invalid references are answered with an error and change nothing.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        match command {
            Command::DeployStack { stack, project, services, remove_orphans, only, recreate, at, request_id } => {
                let repeated = !request_id.is_empty()
                    && self.stacks.get(&stack).is_some_and(|s| s.last_request == request_id && !s.removing);
                if repeated {
                    return CommandResult::default();
                }
                let result = self.deploy_stack(stack.clone(), *project, services, remove_orphans, &only, recreate, at);
                if let Some(record) = self.stacks.get_mut(&stack) {
                    record.revision += 1;
                    record.last_request = request_id;
                }
                result
            }
            Command::SetManager { manager } => {
                self.managers.insert(manager.id, manager);
                CommandResult::default()
            }
            Command::ForgetManagers { ids } => {
                for id in ids {
                    self.managers.remove(&id);
                }
                CommandResult::default()
            }
            Command::InitTokens { tokens } => {
                if self.tokens.is_none() {
                    self.tokens = Some(tokens);
                }
                CommandResult::default()
            }
            Command::RemoveStack { stack, remove_volumes, stop_timeout, at } => {
                self.remove_stack(&stack, remove_volumes, stop_timeout, at)
            }
            Command::ScaleService { service, replicas, at } => match self.services.get_mut(&service) {
                Some(record) if !record.removing => {
                    record.replicas = replicas;
                    record.updated_at = at;
                    CommandResult::default()
                }
                _ => CommandResult::error(format!("no such service: {service}")),
            },
            Command::RebalanceService { service, at: _ } => self.request_rebalance(&service),
            Command::SetRebalanceOnJoin { enabled } => {
                self.settings.rebalance_on_join = enabled;
                CommandResult::default()
            }
            Command::MoveTask { task, node, at } => self.move_task(task, node, at),
            Command::RebalanceFinished { service, requests } => self.finish_rebalance(&service, requests),
            Command::ForgetServices { services } => {
                for id in services {
                    let has_tasks = self.tasks.values().any(|t| t.service == id);
                    if !has_tasks && self.services.get(&id).is_some_and(|s| s.removing) {
                        self.services.remove(&id);
                    }
                }
                CommandResult::default()
            }
            Command::ForgetStacks { stacks } => {
                for name in stacks {
                    let has_services = self.services.keys().any(|s| s.stack == name);
                    if !has_services && self.stacks.get(&name).is_some_and(|s| s.removing) {
                        self.stacks.remove(&name);
                    }
                }
                CommandResult::default()
            }
            Command::RegisterNode { node } => {
                let mut node = *node;
                let (id, took) = (node.id.clone(), self.takes_tasks(&node.id));
                // The agent's labels, with the operator's changes (if any) applied over them.
                if let Some(labels) = self.node_labels.get_mut(&node.id) {
                    labels.agent = std::mem::take(&mut node.labels);
                    node.labels = labels.effective();
                }
                match self.node_mut(&node.id) {
                    // A returning node keeps the availability an operator set.
                    Some(existing) => {
                        let availability = existing.availability;
                        *existing = Node { availability, ..node };
                    }
                    None => {
                        self.nodes.insert(node.id.clone(), node);
                    }
                }
                self.node_changed(&id, took);
                CommandResult::default()
            }
            Command::UpdateNodeLabels { node, add, remove, at } => {
                self.nodes_revision.bump();
                let Some(existing) = self.nodes.get_mut(&node) else {
                    return CommandResult::error(format!("no such node: {node}"));
                };
                // Before the first change, the node's labels are all its agent's.
                let labels = self
                    .node_labels
                    .entry(node)
                    .or_insert_with(|| NodeLabels { agent: existing.labels.clone(), ..NodeLabels::default() });
                for key in remove {
                    labels.added.remove(&key);
                    labels.removed.insert(key);
                }
                for (key, value) in add {
                    labels.removed.remove(&key);
                    labels.added.insert(key, value);
                }
                existing.labels = labels.effective();
                existing.updated_at = at;
                CommandResult::default()
            }
            Command::SetNodeStatus { node, status, message, at } => {
                let took = self.takes_tasks(&node);
                let result = self.with_node(&node, |n| {
                    n.status = status;
                    n.status_message = message;
                    n.updated_at = at;
                });
                self.node_changed(&node, took);
                result
            }
            Command::SetNodeAvailability { node, availability, at } => {
                let took = self.takes_tasks(&node);
                let result = self.with_node(&node, |n| {
                    n.availability = availability;
                    n.updated_at = at;
                });
                self.node_changed(&node, took);
                result
            }
            Command::CreateTasks { tasks, at } => self.create_tasks(tasks, at),
            Command::AssignTasks { assignments, at } => {
                for (id, node) in assignments {
                    if let Some(task) = self.tasks.get_mut(&id) {
                        // Only a still-pending task can be placed, and a pinned one only on its
                        // node; a decision made on stale state is dropped.
                        let pinned_elsewhere = task.node.as_ref().is_some_and(|n| *n != node);
                        if task.state == TaskState::Pending
                            && task.desired == DesiredState::Running
                            && !pinned_elsewhere
                        {
                            task.node = Some(node);
                            task.state = TaskState::Assigned;
                            task.message = String::new();
                            task.unplaceable = false;
                            task.updated_at = at;
                        }
                    }
                }
                CommandResult::default()
            }
            Command::SetTaskMessages { messages, unplaceable, at } => {
                let unplaceable: HashSet<TaskId> = unplaceable.into_iter().collect();
                for (id, message) in messages {
                    if let Some(task) = self.tasks.get_mut(&id) {
                        task.message = message;
                        task.unplaceable = unplaceable.contains(&id);
                        task.updated_at = at;
                    }
                }
                CommandResult::default()
            }
            Command::SetDesiredState { tasks, at } => {
                for (id, desired) in tasks {
                    if let Some(task) = self.tasks.get_mut(&id) {
                        // Desired state only moves forward: Running → Shutdown → Remove.
                        if desired > task.desired {
                            task.desired = desired;
                            task.updated_at = at;
                        }
                    }
                }
                CommandResult::default()
            }
            Command::OrphanTasks { tasks, message, at } => {
                for id in tasks {
                    if let Some(task) = self.tasks.get_mut(&id) {
                        if !task.state.is_terminal() {
                            task.state = TaskState::Orphaned;
                            task.message = message.clone();
                            task.updated_at = at;
                        }
                    }
                }
                CommandResult::default()
            }
            Command::ReportStatus { updates, at } => {
                for update in updates {
                    self.report_status(update, at);
                }
                CommandResult::default()
            }
            Command::ForgetTasks { tasks } => {
                for id in tasks {
                    self.tasks.remove(&id);
                }
                CommandResult::default()
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deploy_stack(
        &mut self,
        name: String,
        project: crate::compose::model::Project,
        services: Vec<ServiceDeployment>,
        remove_orphans: bool,
        only: &[String],
        recreate: RecreatePolicy,
        at: Millis,
    ) -> CommandResult {
        let stack = self.stacks.entry(name.clone()).or_insert_with(|| Stack {
            name: name.clone(),
            project: project.clone(),
            created_at: at,
            updated_at: at,
            removing: false,
            remove_volumes: false,
            stop_timeout: None,
            revision: 0,
            last_request: String::new(),
        });
        stack.project = project;
        stack.updated_at = at;
        stack.removing = false;
        let deployed: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        for deployment in services {
            if !only.is_empty() && !only.contains(&deployment.name) {
                continue;
            }
            let id = ServiceId::new(name.clone(), deployment.name.clone());
            match self.services.get_mut(&id) {
                None => {
                    self.services.insert(
                        id.clone(),
                        ServiceRecord {
                            id,
                            spec: deployment.spec,
                            config_hash: deployment.config_hash,
                            mode: deployment.mode,
                            replicas: deployment.replicas,
                            version: 1,
                            force_recreate_below: 0,
                            removing: false,
                            created_at: at,
                            updated_at: at,
                            rebalance_requested: false,
                            rebalance_requests: 0,
                        },
                    );
                }
                Some(record) => {
                    let changed = record.config_hash != deployment.config_hash || record.removing;
                    record.replicas = deployment.replicas;
                    record.mode = deployment.mode;
                    record.removing = false;
                    record.updated_at = at;
                    match recreate {
                        RecreatePolicy::Never => {}
                        RecreatePolicy::Changed if !changed => {}
                        RecreatePolicy::Changed | RecreatePolicy::Force => {
                            record.version += 1;
                            record.spec = deployment.spec;
                            record.config_hash = deployment.config_hash;
                            if recreate == RecreatePolicy::Force {
                                record.force_recreate_below = record.version;
                            }
                        }
                    }
                }
            }
        }
        if remove_orphans {
            for record in self.services.values_mut().filter(|s| s.id.stack == name && !deployed.contains(&s.id.service))
            {
                record.removing = true;
                record.updated_at = at;
            }
        }
        CommandResult::default()
    }

    fn remove_stack(
        &mut self,
        name: &str,
        remove_volumes: bool,
        stop_timeout: Option<u32>,
        at: Millis,
    ) -> CommandResult {
        let Some(stack) = self.stacks.get_mut(name) else {
            return CommandResult::error(format!("no such stack: {name}"));
        };
        stack.removing = true;
        stack.remove_volumes = remove_volumes;
        stack.stop_timeout = stop_timeout;
        stack.updated_at = at;
        for record in self.services.values_mut().filter(|s| s.id.stack == name) {
            record.removing = true;
            record.updated_at = at;
        }
        CommandResult::default()
    }

    fn with_node(&mut self, id: &str, change: impl FnOnce(&mut Node)) -> CommandResult {
        match self.node_mut(id) {
            Some(node) => {
                change(node);
                CommandResult::default()
            }
            None => CommandResult::error(format!("no such node: {id}")),
        }
    }

    fn create_tasks(&mut self, tasks: Vec<NewTask>, at: Millis) -> CommandResult {
        // Never two live tasks in one slot: a reconciler decision made on stale state is
        // dropped rather than doubling a replica. One pass over the tasks finds the slots this
        // command asks for that are taken: a set of those, not a scan per new task, and not a
        // set of every live slot (this runs under the state's write lock, once per piece of a
        // large deploy; at 100,000 tasks that set cost a tenth of a second each time).
        let slot_of = |service: &ServiceId, slot: u64, node: &Option<NodeId>| {
            (service.clone(), slot, if slot == 0 { node.clone() } else { None })
        };
        let wanted: std::collections::HashSet<(ServiceId, u64, Option<NodeId>)> =
            tasks.iter().map(|t| slot_of(&t.service, t.slot, &t.node)).collect();
        let services: std::collections::HashSet<&ServiceId> = tasks.iter().map(|t| &t.service).collect();
        let mut occupied: std::collections::HashSet<(ServiceId, u64, Option<NodeId>)> = self
            .tasks
            .values()
            .filter(|t| t.desired == DesiredState::Running && !t.state.is_terminal() && services.contains(&t.service))
            .map(|t| slot_of(&t.service, t.slot, &t.node))
            .filter(|slot| wanted.contains(slot))
            .collect();
        let mut created = Vec::new();
        for new in tasks {
            let slot = (new.service.clone(), new.slot, if new.slot == 0 { new.node.clone() } else { None });
            if occupied.contains(&slot) {
                continue;
            }
            if let Some(id) = self.insert_task(new, None, at) {
                occupied.insert(slot);
                created.push(id);
            }
        }
        CommandResult { created_tasks: created, error: None }
    }

    /// A new pending task made from its service's current spec; `None` if the service is gone
    /// or being removed.
    pub(super) fn insert_task(&mut self, new: NewTask, replaces: Option<TaskId>, at: Millis) -> Option<TaskId> {
        let service = self.services.get(&new.service).filter(|s| !s.removing)?;
        let (config_hash, service_version) = (service.config_hash.clone(), service.version);
        self.next_task_id += 1;
        let id = self.next_task_id;
        // Even a pinned task (global service) starts pending: the scheduler still checks its
        // dependencies and the node's fit before it runs.
        let task = Task {
            node: new.node,
            restarts: new.restarts,
            not_before: new.not_before,
            replaces,
            ..Task::pending(id, new.service, new.slot, config_hash, service_version, at)
        };
        self.tasks.insert(id, task);
        Some(id)
    }

    fn report_status(&mut self, update: StatusUpdate, at: Millis) {
        let Some(task) = self.tasks.get_mut(&update.task) else { return };
        if task.node.as_deref() != Some(update.node.as_str()) {
            return;
        }
        // A terminal state is final; late or reordered reports cannot revive a task.
        if task.state.is_terminal() && update.state != TaskState::Removed {
            return;
        }
        // A late report (its call timed out on the agent, which reported on) must not take the
        // task back to an earlier state: seen at 100,000 tasks, tasks left `preparing` for good.
        if update.sequence != 0 {
            if update.sequence <= task.status_sequence {
                return;
            }
            task.status_sequence = update.sequence;
        }
        task.state = update.state;
        if update.container_id.is_some() {
            task.container_id = update.container_id;
        }
        if update.exit_code.is_some() {
            task.exit_code = update.exit_code;
        }
        task.health = update.health;
        task.message = update.message;
        task.cleanup_errors = update.cleanup_errors;
        if update.container_name.is_some() {
            task.renamed = update.container_name;
        }
        if !update.ports.is_empty() || task.state.is_terminal() {
            task.ports = update.ports;
        }
        task.updated_at = at;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(request_id: &str, at: Millis) -> Command {
        Command::DeployStack {
            stack: "shop".into(),
            project: Box::default(),
            services: Vec::new(),
            remove_orphans: false,
            only: Vec::new(),
            recreate: RecreatePolicy::Changed,
            at,
            request_id: request_id.into(),
        }
    }

    #[test]
    fn a_split_command_applied_piece_by_piece_does_what_the_whole_does() {
        use crate::reconciler::reconcile;
        use crate::scheduler::schedule;
        use crate::scheduler::tests::state_with;
        let fresh = state_with(&["a", "b", "c"], &[("web", "image: x", 7)]);
        let (mut whole, mut pieces) = (fresh.clone(), fresh);
        for (decide, kind) in [(reconcile as fn(&ClusterState, Millis) -> Vec<Command>, "create"), (schedule, "place")]
        {
            for command in decide(&whole, 0) {
                let split = command.clone().split(3);
                assert!(split.len() > 1, "7 tasks to {kind} in pieces of 3: {split:?}");
                whole.apply(command);
                for piece in split {
                    pieces.apply(piece);
                }
            }
        }
        assert_eq!(whole.tasks.len(), 7);
        assert!(whole.tasks.values().all(|t| t.node.is_some()), "all placed");
        assert_eq!(pieces, whole);

        let report = |t: &Task| {
            let node = t.node.clone().unwrap_or_default();
            StatusUpdate {
                container_id: Some(format!("c{}", t.id)),
                ..StatusUpdate::new(t.id, node, TaskState::Running)
            }
        };
        let updates: Vec<StatusUpdate> = whole.tasks.values().map(report).collect();
        let command = Command::ReportStatus { updates, at: 5 };
        let split = command.clone().split(3);
        assert_eq!(split.len(), 3, "7 reports in pieces of 3: {split:?}");
        whole.apply(command);
        for piece in split {
            pieces.apply(piece);
        }
        assert!(whole.tasks.values().all(|t| t.state == TaskState::Running), "all running");
        assert_eq!(pieces, whole);
        let other = Command::SetRebalanceOnJoin { enabled: true };
        assert_eq!(other.clone().split(1), vec![other], "commands without a task list stay whole");
    }

    #[test]
    fn a_late_status_report_does_not_take_a_task_back() {
        use crate::scheduler::tests::{converge, state_with};
        let mut state = state_with(&["n1"], &[("web", "image: x", 1)]);
        converge(&mut state, 0);
        let Some(id) = state.tasks.values().next().map(|t| t.id) else { panic!("no task") };
        let report = |state: &mut ClusterState, task_state: TaskState, sequence: u64| {
            let update = StatusUpdate { sequence, ..StatusUpdate::new(id, "n1", task_state) };
            state.apply(Command::ReportStatus { updates: vec![update], at: 1 });
            state.tasks.get(&id).map(|t| t.state)
        };
        assert_eq!(report(&mut state, TaskState::Preparing, 10), Some(TaskState::Preparing));
        assert_eq!(report(&mut state, TaskState::Running, 12), Some(TaskState::Running));
        assert_eq!(report(&mut state, TaskState::Preparing, 10), Some(TaskState::Running), "older: ignored");
        assert_eq!(report(&mut state, TaskState::Starting, 12), Some(TaskState::Running), "the same one again");
        assert_eq!(report(&mut state, TaskState::Starting, 13), Some(TaskState::Starting), "newer: applied");
        assert_eq!(report(&mut state, TaskState::Running, 0), Some(TaskState::Running), "unordered: applied");
        assert_eq!(report(&mut state, TaskState::Preparing, 11), Some(TaskState::Running), "order kept after it");
    }

    #[test]
    fn a_repeated_deploy_request_is_applied_once() {
        let mut state = ClusterState::default();
        assert_eq!(state.apply(deploy("r1", 1)).error, None);
        assert_eq!(state.apply(deploy("r1", 2)).error, None, "a retry succeeds");
        let stack = &state.stacks["shop"];
        assert_eq!((stack.revision, stack.updated_at), (1, 1), "but changes nothing");
        state.apply(deploy("r2", 3));
        assert_eq!(state.stacks["shop"].revision, 2, "a new request is a new deploy");
        state.apply(deploy("", 4));
        state.apply(deploy("", 5));
        assert_eq!(state.stacks["shop"].revision, 4, "requests without an id are never deduplicated");
    }

    #[test]
    fn join_tokens_are_set_once_and_managers_come_and_go() {
        let mut state = ClusterState::default();
        let first = JoinTokens { worker: "w1".into(), manager: "m1".into() };
        state.apply(Command::InitTokens { tokens: first.clone() });
        state.apply(Command::InitTokens { tokens: JoinTokens { worker: "w2".into(), manager: "m2".into() } });
        assert_eq!(state.tokens, Some(first), "a second leader's tokens do not replace the first");
        let manager = ManagerInfo { id: 7, name: "m".into(), address: "a:1".into(), voter: true };
        state.apply(Command::SetManager { manager: manager.clone() });
        assert_eq!(state.managers.get(&7), Some(&manager));
        state.apply(Command::ForgetManagers { ids: vec![7] });
        assert!(state.managers.is_empty());
    }

    fn agent_node(labels: &[(&str, &str)]) -> Box<Node> {
        Box::new(Node {
            id: "n1".into(),
            hostname: "n1".into(),
            role: super::super::state::NodeRole::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            nano_cpus: 0,
            memory_bytes: 0,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            os: String::new(),
            arch: String::new(),
            engine_version: String::new(),
            address: None,
            status_message: String::new(),
            updated_at: 0,
        })
    }

    fn labels_of(state: &ClusterState) -> Vec<(String, String)> {
        state.nodes["n1"].labels.clone().into_iter().collect()
    }

    fn pairs(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn operator_labels_win_over_the_agents_and_outlive_re_registration() {
        let mut state = ClusterState::default();
        state.apply(Command::RegisterNode { node: agent_node(&[("zone", "east"), ("disk", "hdd"), ("gpu", "no")]) });
        let add = BTreeMap::from([("disk".to_string(), "ssd".to_string()), ("rack".to_string(), "r1".to_string())]);
        let result =
            state.apply(Command::UpdateNodeLabels { node: "n1".into(), add, remove: vec!["gpu".into()], at: 1 });
        assert_eq!(result.error, None);
        assert_eq!(labels_of(&state), pairs(&[("disk", "ssd"), ("rack", "r1"), ("zone", "east")]));
        // The agent comes back with other labels of its own: the operator's changes still apply.
        state.apply(Command::RegisterNode { node: agent_node(&[("zone", "west"), ("disk", "hdd"), ("gpu", "yes")]) });
        assert_eq!(labels_of(&state), pairs(&[("disk", "ssd"), ("rack", "r1"), ("zone", "west")]));
        // Removing an added label hides it for good (even the agent's value); adding it back wins.
        state.apply(Command::UpdateNodeLabels {
            node: "n1".into(),
            add: BTreeMap::from([("gpu".to_string(), "maybe".to_string())]),
            remove: vec!["disk".into()],
            at: 2,
        });
        assert_eq!(labels_of(&state), pairs(&[("gpu", "maybe"), ("rack", "r1"), ("zone", "west")]));
        let kept = &state.node_labels["n1"];
        assert_eq!(kept.agent.get("disk").map(String::as_str), Some("hdd"), "the agent's own labels are kept apart");
        let unknown = Command::UpdateNodeLabels { node: "nope".into(), add: BTreeMap::new(), remove: vec![], at: 3 };
        assert!(state.apply(unknown).error.is_some());
    }

    #[test]
    fn a_node_without_operator_labels_has_its_agents() {
        let mut state = ClusterState::default();
        state.apply(Command::RegisterNode { node: agent_node(&[("zone", "east")]) });
        state.apply(Command::RegisterNode { node: agent_node(&[("zone", "west")]) });
        assert_eq!(labels_of(&state), pairs(&[("zone", "west")]));
        assert!(state.node_labels.is_empty());
    }
}
