//! Opt-in rebalancing: moving a replicated service's running tasks until their spread is even.
//!
//! The scheduler only places new tasks, so a node that joins stays empty until something
//! restarts. Asked to (`RebalanceService`, or every replicated service when a node joins with
//! `rebalance_on_join`), the leader moves one task at a time from the fullest node to the
//! emptiest one — by the same filters and ranking as placement, spread preferences first — until
//! no level of the spread differs by more than one task, then clears the request.
//!
//! It lives in the scheduler rather than the reconciler because a move is a placement decision:
//! were "even" judged by other rules than placement's, the two would disagree and tasks could
//! move back and forth. The reconciler only learns not to count a move's extra container as a
//! replica ([`ClusterState::is_surge`]).
//!
//! A move is start-first, so the service never runs fewer replicas than asked:
//! 1. `MoveTask` creates a replacement of a running task, pinned to the target node, in a new
//!    slot (the lowest one no task of the service uses). It cannot share the old task's slot: a
//!    slot holds at most one container, whose name (`<project>-<service>-<slot>`) it reuses.
//! 2. The scheduler places it, the agent starts it.
//! 3. Once it runs (and is healthy, if it has a healthcheck), the old task gets desired state
//!    `Remove`: stopped within its grace period, its container removed, the task forgotten.
//!    (`Shutdown` would leave a stopped container holding its slot's name for good.) The
//!    replica now lives in the new slot; the reconciler keeps counting `replicas` slots.
//! 4. A replacement that fails, whose node goes down or no longer fits it, or that a deploy made
//!    outdated is removed and the old task stays. One that failed (or turned unhealthy) also ends
//!    the request, so that a node that cannot run the service is not tried over and over.
//!
//! A move starts only when the service is settled: every replica runs (or is pending, fitting
//! nowhere) and is up to date, and no container of it is still going away — so a deploy, a
//! scale or a restart finishes first.

use std::collections::BTreeSet;

use crate::store::command::Command;
use crate::store::state::{
    ClusterState, DesiredState, Health, Millis, ServiceId, ServiceMode, ServiceRecord, Task, TaskState,
};

use super::candidates::{Candidates, Check};
use super::view::View;

/// Rebalancing steps for every service that asked for it or has a move under way.
pub fn rebalance_all(state: &ClusterState, now: Millis) -> Vec<Command> {
    let mut services: BTreeSet<&ServiceId> =
        state.services.values().filter(|s| s.rebalance_requested).map(|s| &s.id).collect();
    services.extend(
        state.tasks.values().filter(|t| t.desired == DesiredState::Running && state.is_surge(t)).map(|t| &t.service),
    );
    services.into_iter().flat_map(|service| rebalance(state, service, now)).collect()
}

/// The next step of rebalancing `service`: see a move under way through, or start one, or
/// declare the service balanced. Nothing while the service is not settled, or not asked to.
pub fn rebalance(state: &ClusterState, service: &ServiceId, now: Millis) -> Vec<Command> {
    let Some(record) = state.services.get(service) else { return Vec::new() };
    let tasks: Vec<&Task> = state.service_tasks(service).collect();
    let moving: Vec<&Task> =
        tasks.iter().copied().filter(|t| t.desired == DesiredState::Running && state.is_surge(t)).collect();
    if !moving.is_empty() {
        return moving.into_iter().flat_map(|replacement| follow_move(state, record, replacement, now)).collect();
    }
    if !record.rebalance_requested {
        return Vec::new();
    }
    let finished = Command::RebalanceFinished { service: service.clone(), requests: record.rebalance_requests };
    if record.removing || record.mode != ServiceMode::Replicated {
        return vec![finished];
    }
    if !settled(record, &tasks) {
        return Vec::new();
    }
    let view = View::new(state);
    // Invalid placement settings: nothing can be placed, so nothing can move.
    let Ok(candidates) = Candidates::new(&view, record, Check::Eagerly) else { return vec![finished] };
    let Some((from, to)) = candidates.imbalance() else { return vec![finished] };
    // A node has room, so the scheduler places the pending replicas first (onto the emptiest
    // nodes); what is still uneven after that is for moves.
    if tasks.iter().any(|t| t.desired == DesiredState::Running && t.state == TaskState::Pending) {
        return Vec::new();
    }
    let from = view.nodes[from].id.as_str();
    // Any replica of the fullest node would do; the highest slot keeps the choice stable.
    let task = tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Running && t.node.as_deref() == Some(from))
        .max_by_key(|t| (t.slot, t.id));
    match task {
        Some(task) => vec![Command::MoveTask { task: task.id, node: view.nodes[to].id.clone(), at: now }],
        None => vec![finished],
    }
}

/// Every replica runs or is pending (it may fit nowhere), all are up to date, and no container
/// of the service is going away.
fn settled(record: &ServiceRecord, tasks: &[&Task]) -> bool {
    let wanted = tasks.iter().filter(|t| t.desired == DesiredState::Running);
    let steady = |t: &Task| matches!(t.state, TaskState::Running | TaskState::Pending) && !outdated(record, t);
    wanted.clone().count() as u64 == record.replicas
        && wanted.clone().all(|t| steady(t))
        && tasks.iter().all(|t| t.desired == DesiredState::Running || !t.state.is_active())
}

fn outdated(record: &ServiceRecord, task: &Task) -> bool {
    task.config_hash != record.config_hash || task.service_version < record.force_recreate_below
}

/// One move under way: hand over once the replacement runs, or give it up.
fn follow_move(state: &ClusterState, record: &ServiceRecord, replacement: &Task, now: Millis) -> Vec<Command> {
    let Some(old) = replacement.replaces.and_then(|id| state.tasks.get(&id)) else { return Vec::new() };
    let remove = |task: &Task| Command::SetDesiredState { tasks: vec![(task.id, DesiredState::Remove)], at: now };
    let give_up = || Command::RebalanceFinished { service: record.id.clone(), requests: record.rebalance_requests };
    // A deploy replaces both anyway.
    if outdated(record, replacement) || outdated(record, old) {
        return vec![remove(replacement)];
    }
    match (replacement.state, replacement.health) {
        (TaskState::Pending, _) if !target_fits(state, record, replacement, true) => vec![remove(replacement)],
        (TaskState::Pending, _) => Vec::new(),
        // Its node went down: another node may do.
        (TaskState::Orphaned, _) => vec![remove(replacement)],
        (ended, _) if ended.is_terminal() => vec![remove(replacement), give_up()],
        // Placed on a node since drained, paused or relabelled: the old task stays where it is.
        _ if !target_fits(state, record, replacement, false) => vec![remove(replacement)],
        (TaskState::Running, None | Some(Health::Healthy)) => vec![remove(old)],
        (TaskState::Running, Some(Health::Unhealthy)) => vec![remove(replacement), give_up()],
        // Assigned, preparing, starting, or running with its health still starting: wait.
        _ => Vec::new(),
    }
}

/// Is the replacement's node still one the service may run on (ready, active, within the
/// constraints) — and, while it is not placed yet (`placing`), with room for it? Pinned, it would
/// otherwise wait there forever.
fn target_fits(state: &ClusterState, record: &ServiceRecord, replacement: &Task, placing: bool) -> bool {
    let view = View::new(state);
    let Some(&position) = replacement.node.as_deref().and_then(|n| view.position.get(n)) else { return false };
    let Ok(candidates) = Candidates::new(&view, record, Check::Lazily) else { return false };
    if placing {
        candidates.check(&view, position).is_ok()
    } else {
        candidates.eligible(position)
    }
}

#[cfg(test)]
mod tests;
