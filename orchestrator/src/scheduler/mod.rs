//! The scheduler: pending tasks × nodes → placements.
//!
//! A pure, deterministic function over a snapshot of the state. For each pending task, in
//! (service, slot, id) order: hold it while its dependencies are unmet, its restart delay runs
//! or the previous container of its slot still exists; otherwise filter the nodes (ready,
//! active, constraints, reservations, host ports, max replicas per node) and rank the survivors:
//! spread over the values of each placement preference in turn (the group with the fewest of
//! the service's tasks first), then fewest tasks of this service, then fewest tasks in total,
//! then most free memory, then id. Placements within one call see each other, so a batch
//! spreads. A task that stays pending gets a reason: "0 of 3 nodes fit: 2 lack 512MiB memory,
//! 1 fails constraint node.labels.zone==east".
//!
//! The work per service is O((tasks + nodes) × log nodes), see `candidates.rs`.

mod candidates;
pub mod constraints;
pub mod dependencies;
mod fit;
pub mod preferences;
pub mod rebalance;
mod tree;
mod view;

use std::collections::HashMap;

use crate::store::command::Command;
use crate::store::state::{
    ClusterState, DesiredState, Millis, NodeId, ServiceId, ServiceRecord, Task, TaskId, TaskState,
};

use candidates::{Candidates, Check};
use view::View;

/// Assignments for the tasks that can be placed now, and updated reasons for those that cannot.
pub fn schedule(state: &ClusterState, now: Millis) -> Vec<Command> {
    let mut pending: Vec<&Task> =
        state.tasks.values().filter(|t| t.state == TaskState::Pending && t.desired == DesiredState::Running).collect();
    // Nothing to place (the usual round once a cluster has settled): the nodes' loads and the
    // containers' holders are not worked out — at 1,000,000 tasks they are most of a round.
    if pending.is_empty() {
        return Vec::new();
    }
    pending.sort_by(|a, b| (&a.service, a.slot, a.id).cmp(&(&b.service, b.slot, b.id)));
    let mut view = View::new(state);
    let holders = ContainerHolders::new(state, &pending);
    let mut assignments: Vec<(TaskId, NodeId)> = Vec::new();
    let mut messages: Vec<(TaskId, String)> = Vec::new();
    let mut unplaceable: Vec<TaskId> = Vec::new();

    // Pending tasks come grouped by service: what is worked out for a service is kept until the
    // next one starts.
    let mut pass: Option<ServicePass> = None;
    for task in pending {
        let Some(service) = state.services.get(&task.service) else { continue };
        let pass = match &mut pass {
            Some(p) if p.service.id == task.service => p,
            other => other.insert(ServicePass {
                service,
                waiting: dependencies::waiting_for(state, service),
                candidates: None,
            }),
        };
        // The reason it stays pending, and whether it is that no node fits it.
        let reason = if let Some(reason) = &pass.waiting {
            Some((reason.clone(), false))
        } else if task.not_before > now {
            Some((format!("restarting (attempt {}) after a delay", task.restarts), false))
        } else if let Some(previous) = holders.previous(task) {
            Some((format!("waiting for the previous container of this replica (task {previous}) to be removed"), false))
        } else {
            match pass.place(&mut view, task) {
                Ok(position) => {
                    assignments.push((task.id, view.nodes[position].id.clone()));
                    None
                }
                Err(reason) => Some((reason, true)),
            }
        };
        if let Some((reason, no_fit)) = reason {
            if reason != task.message || no_fit != task.unplaceable {
                if no_fit {
                    unplaceable.push(task.id);
                }
                messages.push((task.id, reason));
            }
        }
    }

    let mut commands = Vec::new();
    if !assignments.is_empty() {
        commands.push(Command::AssignTasks { assignments, at: now });
    }
    if !messages.is_empty() {
        commands.push(Command::SetTaskMessages { messages, unplaceable, at: now });
    }
    commands
}

/// What the scheduler works out once per service.
struct ServicePass<'a> {
    service: &'a ServiceRecord,
    /// Why its tasks cannot start yet (dependencies).
    waiting: Option<String>,
    /// Built when the first task reaches placement; `Err` if its placement settings are invalid.
    candidates: Option<Result<Candidates, String>>,
}

impl ServicePass<'_> {
    /// Places `task` and records it in `view`: the node's position, or why no node fits.
    fn place(&mut self, view: &mut View, task: &Task) -> Result<usize, String> {
        let pinned = match task.node.as_deref() {
            Some(node) => Some(*view.position.get(node).ok_or_else(|| format!("its node {node} is gone"))?),
            None if view.nodes.is_empty() => return Err("no nodes are available".to_string()),
            None => None,
        };
        let candidates = self.candidates.get_or_insert_with(|| Candidates::new(view, self.service, Check::Lazily));
        let candidates = candidates.as_mut().map_err(|reason| reason.clone())?;
        let position = match pinned {
            Some(position) => {
                let rejection = candidates.check(view, position).err();
                if let Some(rejection) = rejection {
                    return Err(fit::summarize(1, &[(rejection, 1)].into_iter().collect()));
                }
                position
            }
            None => candidates.next(view)?,
        };
        view.add(position, candidates.service, &candidates.requirements);
        candidates.placed(view, position);
        Ok(position)
    }
}

/// Tasks that hold a container (placed, not yet removed), by service and slot — only for the
/// slots of the pending tasks (at 100,000 tasks, filing every slot's holders was most of a
/// round that placed a lost node's few).
struct ContainerHolders<'a>(HashMap<(&'a ServiceId, u64), Vec<&'a Task>>);

impl<'a> ContainerHolders<'a> {
    fn new(state: &'a ClusterState, pending: &[&'a Task]) -> Self {
        let mut holders: HashMap<(&ServiceId, u64), Vec<&Task>> =
            pending.iter().map(|t| ((&t.service, t.slot), Vec::new())).collect();
        let holding = |t: &&Task| {
            t.node.is_some() && !matches!(t.state, TaskState::Pending | TaskState::Removed | TaskState::Orphaned)
        };
        for task in state.tasks.values().filter(holding) {
            if let Some(same_slot) = holders.get_mut(&(&task.service, task.slot)) {
                same_slot.push(task);
            }
        }
        ContainerHolders(holders)
    }

    /// A container of the same replica (or, for global services, the same node) that has not
    /// been removed yet: it holds the container name the new task needs.
    fn previous(&self, task: &Task) -> Option<TaskId> {
        let same_slot = self.0.get(&(&task.service, task.slot))?;
        same_slot.iter().find(|other| other.id != task.id && (task.slot != 0 || other.node == task.node)).map(|t| t.id)
    }
}

#[cfg(test)]
pub(crate) mod tests;
