//! The scheduler: pending tasks × nodes → placements.
//!
//! A pure, deterministic function over a snapshot of the state. For each pending task, in
//! (service, slot, id) order: hold it while its dependencies are unmet, its restart delay runs
//! or the previous container of its slot still exists; otherwise filter the nodes (ready,
//! active, constraints, reservations, host ports, max replicas per node) and rank the survivors
//! (fewest tasks of this service, then fewest tasks in total, then most free memory, then id).
//! Placements within one call see each other, so a batch spreads. A task that stays pending
//! gets a reason: "0 of 3 nodes fit: 2 lack 512MiB memory, 1 fails constraint ...".

pub mod constraints;
pub mod dependencies;
mod fit;

use std::collections::BTreeMap;

use crate::store::command::Command;
use crate::store::state::{ClusterState, DesiredState, Millis, NodeId, ServiceId, Task, TaskId, TaskState};

use fit::{NodeLoad, Rejection};

/// Assignments for the tasks that can be placed now, and updated reasons for those that cannot.
pub fn schedule(state: &ClusterState, now: Millis) -> Vec<Command> {
    let mut loads = fit::current_loads(state);
    let mut assignments: Vec<(TaskId, NodeId)> = Vec::new();
    let mut messages: Vec<(TaskId, String)> = Vec::new();
    let mut blocked_services: BTreeMap<&ServiceId, Option<String>> = BTreeMap::new();

    let mut pending: Vec<&Task> =
        state.tasks.values().filter(|t| t.state == TaskState::Pending && t.desired == DesiredState::Running).collect();
    pending.sort_by(|a, b| (&a.service, a.slot, a.id).cmp(&(&b.service, b.slot, b.id)));

    for task in pending {
        let Some(service) = state.services.get(&task.service) else { continue };
        let waiting =
            blocked_services.entry(&task.service).or_insert_with(|| dependencies::waiting_for(state, service)).clone();
        let reason = if let Some(reason) = waiting {
            Some(reason)
        } else if task.not_before > now {
            Some(format!("restarting (attempt {}) after a delay", task.restarts))
        } else if let Some(previous) = previous_container(state, task) {
            Some(format!("waiting for the previous container of this replica (task {previous}) to be removed"))
        } else {
            match place(state, service, task, &loads) {
                Ok(node) => {
                    loads.entry(node.clone()).or_default().add(&task.service, &service.spec);
                    assignments.push((task.id, node));
                    None
                }
                Err(reason) => Some(reason),
            }
        };
        if let Some(reason) = reason {
            if reason != task.message {
                messages.push((task.id, reason));
            }
        }
    }

    let mut commands = Vec::new();
    if !assignments.is_empty() {
        commands.push(Command::AssignTasks { assignments, at: now });
    }
    if !messages.is_empty() {
        commands.push(Command::SetTaskMessages { messages, at: now });
    }
    commands
}

/// A container of the same replica (or, for global services, the same node) that has not been
/// removed yet: it holds the container name the new task needs.
fn previous_container(state: &ClusterState, task: &Task) -> Option<TaskId> {
    state
        .service_tasks(&task.service)
        .find(|other| {
            other.id != task.id
                && other.slot == task.slot
                && (task.slot != 0 || other.node == task.node)
                && other.node.is_some()
                && !matches!(other.state, TaskState::Pending | TaskState::Removed | TaskState::Orphaned)
        })
        .map(|t| t.id)
}

/// The best node for `task`, or the reason no node fits.
fn place(
    state: &ClusterState,
    service: &crate::store::state::ServiceRecord,
    task: &Task,
    loads: &BTreeMap<NodeId, NodeLoad>,
) -> Result<NodeId, String> {
    let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
    let mut best: Option<(fit::Rank, &NodeId)> = None;
    let candidates: Vec<_> = match &task.node {
        Some(pinned) => state.nodes.get(pinned).into_iter().collect(),
        None => state.nodes.values().collect(),
    };
    if candidates.is_empty() {
        return Err(match &task.node {
            Some(pinned) => format!("its node {pinned} is gone"),
            None => "no nodes are available".to_string(),
        });
    }
    for node in &candidates {
        let empty = NodeLoad::default();
        let load = loads.get(&node.id).unwrap_or(&empty);
        match fit::check(node, load, service) {
            Err(rejection) => *rejections.entry(rejection).or_default() += 1,
            Ok(()) => {
                let rank = fit::rank(node, load, &task.service);
                if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                    best = Some((rank, &node.id));
                }
            }
        }
    }
    match best {
        Some((_, node)) => Ok(node.clone()),
        None => {
            let parts: Vec<String> = rejections.iter().map(|(r, n)| format!("{n} {}", r.describe(*n))).collect();
            Err(format!("0 of {} nodes fit: {}", candidates.len(), parts.join(", ")))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
