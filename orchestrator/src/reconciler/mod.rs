//! The reconciler: desired services → the task set that realizes them.
//!
//! A pure function over a snapshot of the state: [`reconcile`] returns the commands that move
//! the state one step towards what the services ask for, and nothing once it is there. It runs
//! on the leader after every change; applying its output and running it again converges.
//!
//! Rules, per service:
//! - replicated: `replicas` slots each hold one task that should run — normally `1..=replicas`;
//!   scaling down removes the highest slots, scaling up fills the lowest free ones (after a
//!   rebalancing move, a replica lives in the slot its start-first replacement took);
//! - global: one task per eligible node (ready and active), pinned to it; a paused node keeps
//!   the task it has;
//! - a replica on a drained node moves: it is removed and its slot's new task placed elsewhere;
//! - a task made from an older configuration (hash changed, or `--force-recreate`) is removed
//!   and a new one created in its slot — the scheduler starts it once the old container is gone;
//! - a finished task is replaced per the restart policy; a task whose node went down always is;
//! - services and stacks being removed lose their tasks, then are forgotten.

pub mod restart;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::store::command::{Command, NewTask};
use crate::store::state::{
    Availability, ClusterState, DesiredState, Millis, NodeStatus, ServiceId, ServiceMode, ServiceRecord, Task, TaskId,
    TaskState,
};

use restart::RestartPolicy;

/// The commands that bring `state` one step closer to the desired state. Empty when converged.
pub fn reconcile(state: &ClusterState, now: Millis) -> Vec<Command> {
    let mut plan = Plan::default();
    let tasks = TasksByService::new(state);
    // Usually no node is drained: then no slot needs its node looked up. (Once per round, not
    // per service: 100 services × 10,000 nodes was a fortieth of a busy leader's CPU.)
    let any_drained = state.nodes.values().any(|n| n.availability == Availability::Drain);
    orphan_tasks_of_down_nodes(state, &mut plan);
    for service in state.services.values() {
        if service.removing {
            remove_all(state, &tasks, service, &mut plan);
            continue;
        }
        match service.mode {
            ServiceMode::Replicated | ServiceMode::ReplicatedJob => {
                reconcile_replicated(state, &tasks, service, any_drained, &mut plan)
            }
            ServiceMode::Global | ServiceMode::GlobalJob => reconcile_global(state, &tasks, service, &mut plan),
        }
    }
    forget_finished(state, now, &mut plan);
    plan.into_commands(now)
}

/// Every service's tasks, in id order, grouped in one pass: asking the state for each service's
/// tasks scans all tasks per service, which made a round O(services × tasks) (1,000 services of
/// 1,000 replicas: a billion comparisons per round).
struct TasksByService<'a> {
    tasks: HashMap<&'a ServiceId, Vec<&'a Task>>,
}

impl<'a> TasksByService<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut tasks: HashMap<&ServiceId, Vec<&Task>> = HashMap::with_capacity(state.services.len());
        // Tasks of one service mostly follow each other (a deploy creates them together): a run
        // of them is collected before it is filed, one hash lookup per run instead of per task.
        let mut run: Vec<&Task> = Vec::new();
        for task in state.tasks.values() {
            if run.first().is_some_and(|first| first.service != task.service) {
                let first = run[0];
                tasks.entry(&first.service).or_default().append(&mut run);
            }
            run.push(task);
        }
        if let Some(first) = run.first().copied() {
            tasks.entry(&first.service).or_default().append(&mut run);
        }
        TasksByService { tasks }
    }

    fn of(&self, service: &ServiceId) -> impl Iterator<Item = &'a Task> + '_ {
        self.tasks.get(service).into_iter().flatten().copied()
    }
}

/// How long a removed task whose cleanup failed is kept before it is forgotten. Watchers (`down`)
/// read the state after changes, not every change: one that reads only after the forget would
/// never learn what could not be removed.
pub const CLEANUP_ERRORS_KEPT: Millis = 2_000;

#[derive(Default)]
struct Plan {
    orphans: Vec<TaskId>,
    remove: BTreeSet<TaskId>,
    create: Vec<NewTask>,
    forget_tasks: Vec<TaskId>,
    forget_services: Vec<crate::store::state::ServiceId>,
    forget_stacks: Vec<String>,
}

impl Plan {
    /// Commands in an order that keeps each one valid: removals before the creations that
    /// reuse their slots.
    fn into_commands(self, now: Millis) -> Vec<Command> {
        let mut commands = Vec::new();
        if !self.orphans.is_empty() {
            commands.push(Command::OrphanTasks { tasks: self.orphans, message: "its node is down".into(), at: now });
        }
        if !self.remove.is_empty() {
            let tasks = self.remove.into_iter().map(|id| (id, DesiredState::Remove)).collect();
            commands.push(Command::SetDesiredState { tasks, at: now });
        }
        if !self.create.is_empty() {
            commands.push(Command::CreateTasks { tasks: self.create, at: now });
        }
        if !self.forget_tasks.is_empty() {
            commands.push(Command::ForgetTasks { tasks: self.forget_tasks });
        }
        if !self.forget_services.is_empty() {
            commands.push(Command::ForgetServices { services: self.forget_services });
        }
        if !self.forget_stacks.is_empty() {
            commands.push(Command::ForgetStacks { stacks: self.forget_stacks });
        }
        commands
    }
}

/// Tasks placed on a node that is down will never report again.
fn orphan_tasks_of_down_nodes(state: &ClusterState, plan: &mut Plan) {
    // Usually no node is down: then no task needs its node looked up. Once some are (lost
    // nodes stay down until removed), every round looks up each active task's node: in a set of
    // the down ones, which at 10,000 nodes is several times quicker than the state's map.
    let down: HashSet<&str> =
        state.nodes.values().filter(|n| n.status == NodeStatus::Down).map(|n| n.id.as_str()).collect();
    if down.is_empty() {
        return;
    }
    for task in state.tasks.values().filter(|t| t.state.is_active()) {
        if task.node.as_deref().is_some_and(|n| down.contains(n)) {
            plan.orphans.push(task.id);
        }
    }
}

/// The task a slot's replacement logic looks at: the newest one that should run.
fn is_wanted(task: &Task) -> bool {
    task.desired == DesiredState::Running
}

fn is_outdated(task: &Task, service: &ServiceRecord) -> bool {
    task.config_hash != service.config_hash || task.service_version < service.force_recreate_below
}

fn reconcile_replicated(
    state: &ClusterState,
    all: &TasksByService,
    service: &ServiceRecord,
    any_drained: bool,
    plan: &mut Plan,
) {
    // Start-first replacements (rebalancing moves) are extra containers of replicas that still
    // run: not counted, not restarted here; `scheduler::rebalance` sees them through.
    let mut surge_slots: BTreeSet<u64> = BTreeSet::new();
    let mut wanted_tasks: Vec<&Task> = Vec::new();
    for task in all.of(&service.id).filter(|t| is_wanted(t)) {
        if state.is_surge(task) {
            surge_slots.insert(task.slot);
        } else {
            wanted_tasks.push(task);
        }
    }
    // The tasks grouped by slot, slots ascending, each slot's tasks in id order: one sort
    // instead of a map of vectors (at 1,000,000 tasks, a million small allocations per round).
    wanted_tasks.sort_by_key(|t| (t.slot, t.id));
    let mut slots: Vec<(u64, &[&Task])> =
        wanted_tasks.chunk_by(|a, b| a.slot == b.slot).map(|g| (g[0].slot, g)).collect();
    // Slot 0 is left over from global mode.
    if slots.first().is_some_and(|(slot, _)| *slot == 0) {
        plan.remove.extend(slots.remove(0).1.iter().map(|t| t.id));
    }
    // Scaling down removes the highest slots first. Slots need not be 1..=replicas: a finished
    // move leaves its replica in the slot its replacement took.
    let wanted = usize::try_from(service.replicas).unwrap_or(usize::MAX);
    while slots.len() > wanted {
        if let Some((_, tasks)) = slots.pop() {
            plan.remove.extend(tasks.iter().map(|t| t.id));
        }
    }
    let policy = RestartPolicy::of(&service.spec);
    for (slot, tasks) in &slots {
        if let Some(task) = any_drained.then(|| on_drained_node(state, tasks)).flatten() {
            // Drain: the replica moves. Its replacement keeps the slot (and so the container
            // name): the scheduler places it once this container is gone.
            plan.remove.extend(tasks.iter().map(|t| t.id));
            plan.create.push(NewTask {
                service: service.id.clone(),
                slot: *slot,
                node: None,
                restarts: task.restarts,
                not_before: 0,
            });
            continue;
        }
        reconcile_slot(service, &policy, *slot, None, tasks, plan);
    }
    // Scaling up fills the lowest free slots.
    let taken = |s: &u64| slots.binary_search_by_key(s, |(slot, _)| *slot).is_ok();
    let free = (1..).filter(|s| !taken(s) && !surge_slots.contains(s));
    for slot in free.take(wanted.saturating_sub(slots.len())) {
        reconcile_slot(service, &policy, slot, None, &[], plan);
    }
}

/// The slot's newest task, if it holds (or is about to hold) a container on a drained node and
/// no rebalancing move is already taking it elsewhere.
fn on_drained_node<'a>(state: &ClusterState, tasks: &[&'a Task]) -> Option<&'a Task> {
    let newest = *tasks.iter().max_by_key(|t| t.id)?;
    let node = state.nodes.get(newest.node.as_deref()?)?;
    let drained = node.availability == Availability::Drain && newest.state.is_active();
    let moving = || state.tasks.values().any(|t| t.replaces == Some(newest.id) && is_wanted(t));
    (drained && !moving()).then_some(newest)
}

fn reconcile_global(state: &ClusterState, all: &TasksByService, service: &ServiceRecord, plan: &mut Plan) {
    // Malformed constraints match no node; the loader reports them before they get here.
    let constraints = crate::scheduler::constraints::constraints_of(&service.spec).ok();
    let fits = |n: &&crate::store::state::Node| {
        n.status == NodeStatus::Ready && constraints.as_ref().is_some_and(|c| c.iter().all(|c| c.matches(n)))
    };
    let eligible: BTreeSet<&str> = state
        .nodes
        .values()
        .filter(fits)
        .filter(|n| n.availability == Availability::Active)
        .map(|n| n.id.as_str())
        .collect();
    // A paused node keeps the task it has, but gets none it does not have.
    let paused: BTreeSet<&str> = state
        .nodes
        .values()
        .filter(fits)
        .filter(|n| n.availability == Availability::Pause)
        .map(|n| n.id.as_str())
        .collect();
    let mut by_node: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for task in all.of(&service.id).filter(|t| is_wanted(t)) {
        match task.node.as_deref() {
            Some(node) if (eligible.contains(node) || paused.contains(node)) && task.slot == 0 => {
                by_node.entry(node).or_default().push(task)
            }
            // Its node was drained, went down or no longer fits: the task goes.
            _ => {
                plan.remove.insert(task.id);
            }
        }
    }
    let policy = RestartPolicy::of(&service.spec);
    for node in eligible {
        let tasks = by_node.remove(node).unwrap_or_default();
        reconcile_slot(service, &policy, 0, Some(node), &tasks, plan);
    }
    for (node, tasks) in by_node {
        reconcile_slot(service, &policy, 0, Some(node), &tasks, plan);
    }
}

/// Makes one slot (or one node of a global service) hold exactly one suitable task.
fn reconcile_slot(
    service: &ServiceRecord,
    policy: &RestartPolicy,
    slot: u64,
    node: Option<&str>,
    tasks: &[&Task],
    plan: &mut Plan,
) {
    let new_task = |restarts: u32, not_before: Millis| NewTask {
        service: service.id.clone(),
        slot,
        node: node.map(str::to_string),
        restarts,
        not_before,
    };
    let Some(newest) = tasks.iter().max_by_key(|t| t.id) else {
        plan.create.push(new_task(0, 0));
        return;
    };
    // Duplicates (possible only after a manager failover mid-decision) keep the newest.
    for older in tasks.iter().filter(|t| t.id != newest.id) {
        plan.remove.insert(older.id);
    }
    if is_outdated(newest, service) {
        plan.remove.insert(newest.id);
        plan.create.push(new_task(0, 0));
        return;
    }
    if newest.state == TaskState::Orphaned {
        plan.remove.insert(newest.id);
        plan.create.push(new_task(newest.restarts, 0));
        return;
    }
    if newest.state.is_terminal() && policy.should_restart(newest) {
        plan.remove.insert(newest.id);
        plan.create.push(new_task(newest.restarts + 1, policy.next_start(newest)));
    }
}

/// Services of the same stack that depend on `service` and still have tasks: removal goes in
/// reverse dependency order, so `service` waits for them (services of one level go together).
fn has_live_dependents(state: &ClusterState, all: &TasksByService, service: &ServiceRecord) -> bool {
    let name = service.id.service.as_str();
    state.stack_services(&service.id.stack).any(|other| {
        let depends = other.spec.depends_on.contains_key(name)
            || other.spec.network_mode.as_deref().and_then(|m| m.strip_prefix("service:")) == Some(name);
        other.removing && depends && all.of(&other.id).next().is_some()
    })
}

fn remove_all(state: &ClusterState, all: &TasksByService, service: &ServiceRecord, plan: &mut Plan) {
    if has_live_dependents(state, all, service) {
        return;
    }
    let mut any = false;
    for task in all.of(&service.id) {
        any = true;
        if task.desired != DesiredState::Remove {
            plan.remove.insert(task.id);
        }
    }
    if !any {
        plan.forget_services.push(service.id.clone());
    }
}

/// Forgets tasks whose containers are gone, and stacks whose services are gone.
fn forget_finished(state: &ClusterState, now: Millis, plan: &mut Plan) {
    for task in state.tasks.values() {
        if task.desired != DesiredState::Remove {
            continue;
        }
        let node_down =
            task.node.as_ref().and_then(|n| state.nodes.get(n)).is_none_or(|n| n.status == NodeStatus::Down);
        let never_placed = task.node.is_none() || task.state == TaskState::Pending;
        let removed = task.state == TaskState::Removed
            && (task.cleanup_errors.is_empty() || now >= task.updated_at.saturating_add(CLEANUP_ERRORS_KEPT));
        if removed || never_placed || (node_down && task.state.is_terminal()) {
            plan.forget_tasks.push(task.id);
        }
    }
    for stack in state.stacks.values().filter(|s| s.removing) {
        if state.stack_services(&stack.name).next().is_none() {
            plan.forget_stacks.push(stack.name.clone());
        }
    }
}

#[cfg(test)]
mod tests;
