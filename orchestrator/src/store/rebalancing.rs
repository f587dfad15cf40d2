//! Applying the rebalancing commands: requests (per service, or for all when a node joins with
//! `rebalance_on_join`), start-first moves, and the leader's "balanced". The decisions are the
//! scheduler's (`scheduler/rebalance.rs`); this is only their deterministic effect on the state.

use std::collections::BTreeSet;

use super::command::{CommandResult, NewTask};
use super::state::{
    Availability, ClusterState, DesiredState, Millis, NodeId, NodeStatus, ServiceId, ServiceMode, TaskId, TaskState,
};

impl ClusterState {
    /// `RebalanceService`: only replicated services have a spread to even out.
    pub(super) fn request_rebalance(&mut self, id: &ServiceId) -> CommandResult {
        let Some(record) = self.services.get_mut(id).filter(|r| !r.removing) else {
            return CommandResult::error(format!("no such service: {id}"));
        };
        let mode = match record.mode {
            ServiceMode::Replicated => {
                record.rebalance_requested = true;
                record.rebalance_requests += 1;
                return CommandResult::default();
            }
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        };
        CommandResult::error(format!("{id} is a {mode} service: only replicated services can be rebalanced"))
    }

    /// `RebalanceFinished`: cleared only if no request came after the one the leader saw.
    pub(super) fn finish_rebalance(&mut self, id: &ServiceId, requests: u64) -> CommandResult {
        if let Some(record) = self.services.get_mut(id) {
            if record.rebalance_requests == requests {
                record.rebalance_requested = false;
            }
        }
        CommandResult::default()
    }

    /// Can the node take new tasks (ready and active)?
    pub(super) fn takes_tasks(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|n| n.status == NodeStatus::Ready && n.availability == Availability::Active)
    }

    /// After a change to `node` that could not take tasks before (`took`): if now it can and
    /// the cluster rebalances on join, every replicated service is asked to.
    pub(super) fn node_changed(&mut self, node: &str, took: bool) {
        if took || !self.takes_tasks(node) || !self.settings.rebalance_on_join {
            return;
        }
        for record in self.services.values_mut().filter(|s| s.mode == ServiceMode::Replicated && !s.removing) {
            record.rebalance_requested = true;
            record.rebalance_requests += 1;
        }
    }

    /// `MoveTask`: a start-first replacement of a running task, pinned to `node`, in the lowest
    /// slot no task of the service uses (each slot has its own container name, and the old
    /// container keeps its name until it is removed). The old task keeps running; the leader
    /// removes it once the replacement runs.
    pub(super) fn move_task(&mut self, task: TaskId, node: NodeId, at: Millis) -> CommandResult {
        let Some(old) = self.tasks.get(&task) else {
            return CommandResult::error(format!("no such task: {task}"));
        };
        if old.desired != DesiredState::Running || old.state != TaskState::Running {
            return CommandResult::error(format!("task {task} is not running"));
        }
        if old.node.as_deref() == Some(node.as_str()) {
            return CommandResult::error(format!("task {task} already runs on {node}"));
        }
        if !self.nodes.contains_key(&node) {
            return CommandResult::error(format!("no such node: {node}"));
        }
        let service = old.service.clone();
        if !self.services.get(&service).is_some_and(|s| !s.removing && s.mode == ServiceMode::Replicated) {
            return CommandResult::error(format!("{service} is not a replicated service"));
        }
        // One move per service at a time; a repeated decision (a new leader's) is dropped.
        if self.service_tasks(&service).any(|t| self.is_surge(t)) {
            return CommandResult::error(format!("a task of {service} is already moving"));
        }
        let used: BTreeSet<u64> = self.service_tasks(&service).map(|t| t.slot).collect();
        let mut slot = 1;
        while used.contains(&slot) {
            slot += 1;
        }
        let new = NewTask { service, slot, node: Some(node), restarts: 0, not_before: 0 };
        let created = self.insert_task(new, Some(task), at).into_iter().collect();
        CommandResult { created_tasks: created, error: None }
    }
}
