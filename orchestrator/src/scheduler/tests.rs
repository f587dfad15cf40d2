//! Scheduler and shared test fixtures (also used by the reconciler's tests).

use std::collections::BTreeMap;

use super::*;
use crate::compose::model::Service;
use crate::store::command::{Command, NewTask, ServiceDeployment};
use crate::store::state::{
    Availability, ClusterState, Health, Node, NodeRole, NodeStatus, ServiceId, ServiceMode, TaskState,
};

pub fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        hostname: format!("host-{id}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        nano_cpus: 4_000_000_000,
        memory_bytes: 8 << 30,
        labels: Default::default(),
        os: "linux".into(),
        arch: "x86_64".into(),
        engine_version: "20.10".into(),
        address: None,
        status_message: String::new(),
        updated_at: 0,
    }
}

pub fn spec(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test spec {yaml}: {e}"))
}

/// A state with `nodes` and a stack `p` of the given services (name, spec YAML, replicas).
pub fn state_with(nodes: &[&str], services: &[(&str, &str, u64)]) -> ClusterState {
    let mut state = ClusterState::default();
    for n in nodes {
        state.apply(Command::RegisterNode { node: Box::new(node(n)) });
    }
    deploy(&mut state, services);
    state
}

pub fn deploy(state: &mut ClusterState, services: &[(&str, &str, u64)]) {
    let services = services
        .iter()
        .map(|(name, yaml, replicas)| {
            let spec = spec(yaml);
            let mode = match spec.deploy.as_ref().and_then(|d| d.mode.as_deref()) {
                Some("global") => ServiceMode::Global,
                _ => ServiceMode::Replicated,
            };
            ServiceDeployment { name: name.to_string(), config_hash: yaml.to_string(), spec, mode, replicas: *replicas }
        })
        .collect();
    let result = state.apply(Command::DeployStack {
        stack: "p".into(),
        project: Box::default(),
        services,
        remove_orphans: false,
        only: vec![],
        recreate: Default::default(),
        at: 0,
        request_id: String::new(),
    });
    assert_eq!(result.error, None);
}

/// Runs reconciler and scheduler until nothing changes, applying their commands.
pub fn converge(state: &mut ClusterState, now: u64) {
    for _ in 0..20 {
        let mut commands = crate::reconciler::reconcile(state, now);
        for c in commands.drain(..) {
            state.apply(c);
        }
        let commands = schedule(state, now);
        if commands.is_empty() && crate::reconciler::reconcile(state, now).is_empty() {
            return;
        }
        for c in commands {
            state.apply(c);
        }
    }
    panic!("did not converge: {state:#?}");
}

/// Pretends the agents ran every assigned task: it is now running (and healthy if it has a
/// healthcheck), or removed if it was asked to go.
pub fn agents_run_everything(state: &mut ClusterState) {
    let updates = state
        .tasks
        .values()
        // Agents remove the container of any task asked to go, finished or not.
        .filter(|t| {
            t.node.is_some()
                && t.state != TaskState::Pending
                && t.state != TaskState::Removed
                && (!t.state.is_terminal() || t.desired != DesiredState::Running)
        })
        .map(|t| {
            let spec = &state.services[&t.service].spec;
            let removing = t.desired != DesiredState::Running;
            crate::store::command::StatusUpdate {
                task: t.id,
                node: t.node.clone().unwrap(),
                state: if removing { TaskState::Removed } else { TaskState::Running },
                container_id: Some(format!("c{}", t.id)),
                exit_code: None,
                health: spec.healthcheck.as_ref().map(|_| Health::Healthy),
                message: String::new(),
                ports: Vec::new(),
                cleanup_errors: Vec::new(),
                container_name: None,
                sequence: 0,
            }
        })
        .collect();
    state.apply(Command::ReportStatus { updates, at: 0 });
}

fn tasks_of<'a>(state: &'a ClusterState, service: &str) -> Vec<&'a crate::store::state::Task> {
    let id = ServiceId::new("p", service);
    state.tasks.values().filter(|t| t.service == id && t.desired == DesiredState::Running).collect()
}

fn per_node(state: &ClusterState, service: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in tasks_of(state, service) {
        *counts.entry(t.node.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

#[test]
fn spreads_replicas_evenly() {
    let mut state = state_with(&["a", "b", "c"], &[("web", "image: x", 6)]);
    converge(&mut state, 0);
    let counts: Vec<usize> = per_node(&state, "web").into_values().collect();
    assert_eq!(counts, [2, 2, 2]);
    assert!(tasks_of(&state, "web").iter().all(|t| t.state == TaskState::Assigned));
}

#[test]
fn is_deterministic() {
    let build = || {
        let mut s = state_with(&["c", "a", "b"], &[("web", "image: x", 5), ("api", "image: y", 4)]);
        converge(&mut s, 0);
        s
    };
    assert_eq!(build(), build());
}

#[test]
fn dependencies_gate_placement_with_a_reason() {
    let mut state = state_with(
        &["n1"],
        &[
            ("web", "{image: x, depends_on: {api: {condition: service_healthy}}}", 1),
            ("api", "{image: y, healthcheck: {test: [CMD, 'true']}}", 1),
        ],
    );
    converge(&mut state, 0);
    let web = tasks_of(&state, "web")[0];
    assert_eq!(web.state, TaskState::Pending);
    assert_eq!(web.message, "waiting for api to be healthy (0 of 1 healthy)");
    assert!(!web.unplaceable, "waiting for a dependency is not a placement failure");
    assert_eq!(tasks_of(&state, "api")[0].state, TaskState::Assigned, "independent service starts at once");
    agents_run_everything(&mut state);
    converge(&mut state, 0);
    assert_eq!(tasks_of(&state, "web")[0].state, TaskState::Assigned);
}

#[test]
fn healthy_condition_without_healthcheck_says_so() {
    let mut state = state_with(
        &["n1"],
        &[("web", "{image: x, depends_on: {api: {condition: service_healthy}}}", 1), ("api", "image: y", 1)],
    );
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    converge(&mut state, 0);
    assert!(tasks_of(&state, "web")[0].message.contains("api has no healthcheck"));
}

#[test]
fn completed_successfully_gates_on_exit_code() {
    let mut state = state_with(
        &["n1"],
        &[
            ("app", "{image: x, depends_on: {migrate: {condition: service_completed_successfully}}}", 1),
            ("migrate", "image: m", 1),
        ],
    );
    converge(&mut state, 0);
    let migrate = tasks_of(&state, "migrate")[0].clone();
    let report = |state: &mut ClusterState, code: i64| {
        state.apply(Command::ReportStatus {
            updates: vec![crate::store::command::StatusUpdate {
                task: migrate.id,
                node: "n1".into(),
                state: if code == 0 { TaskState::Complete } else { TaskState::Failed },
                container_id: None,
                exit_code: Some(code),
                health: None,
                message: format!("exited with code {code}"),
                ports: Vec::new(),
                cleanup_errors: Vec::new(),
                container_name: None,
                sequence: 0,
            }],
            at: 1,
        });
    };
    let mut failed = state.clone();
    report(&mut failed, 3);
    converge(&mut failed, 1);
    assert_eq!(tasks_of(&failed, "app")[0].message, "migrate did not complete successfully: it exited with code 3");
    report(&mut state, 0);
    converge(&mut state, 1);
    assert_eq!(tasks_of(&state, "app")[0].state, TaskState::Assigned);
}

#[test]
fn reports_why_no_node_fits() {
    let mut state = state_with(
        &["a", "b", "c"],
        &[(
            "db",
            "{image: x, deploy: {resources: {reservations: {memory: 6g}}, placement: {constraints: ['node.labels.zone==east']}}}",
            2,
        )],
    );
    state.nodes.get_mut("a").unwrap().labels.insert("zone".into(), "east".into());
    state.nodes.get_mut("b").unwrap().labels.insert("zone".into(), "east".into());
    converge(&mut state, 0);
    let tasks = tasks_of(&state, "db");
    let placed: Vec<_> = tasks.iter().filter(|t| t.state == TaskState::Assigned).collect();
    assert_eq!(placed.len(), 2, "one on a, one on b");
    // A third replica finds a and b full and c outside the constraint.
    state.apply(Command::ScaleService { service: ServiceId::new("p", "db"), replicas: 3, at: 0 });
    converge(&mut state, 0);
    let pending: Vec<_> = tasks_of(&state, "db").into_iter().filter(|t| t.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].message, "0 of 3 nodes fit: 2 lack 6GiB memory, 1 fails constraint node.labels.zone==east");
}

#[test]
fn host_ports_and_availability_filter_nodes() {
    let mut state = state_with(&["a", "b"], &[("web", "{image: x, ports: [{target: 80, published: '8080'}]}", 3)]);
    state.apply(Command::SetNodeAvailability { node: "b".into(), availability: Availability::Drain, at: 0 });
    converge(&mut state, 0);
    let pending: Vec<_> = tasks_of(&state, "web").into_iter().filter(|t| t.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 2);
    assert_eq!(pending[0].message, "0 of 2 nodes fit: 1 is drained, 1 has port 8080/tcp in use");
}

#[test]
fn max_replicas_per_node() {
    let mut state = state_with(&["a", "b"], &[("w", "{image: x, deploy: {placement: {max_replicas_per_node: 1}}}", 3)]);
    converge(&mut state, 0);
    let pending: Vec<_> = tasks_of(&state, "w").into_iter().filter(|t| t.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].message.contains("2 already run the maximum of 1 per node"), "{}", pending[0].message);
}

#[test]
fn no_nodes_is_a_reason_too() {
    let mut state = state_with(&[], &[("web", "image: x", 1)]);
    converge(&mut state, 0);
    assert_eq!(tasks_of(&state, "web")[0].message, "no nodes are available");
    assert!(tasks_of(&state, "web")[0].unplaceable);
}

#[test]
fn a_task_no_node_fits_is_marked_unplaceable_until_one_does() {
    let mut state = state_with(&["a"], &[("db", "{image: x, deploy: {resources: {reservations: {memory: 16g}}}}", 1)]);
    converge(&mut state, 0);
    let db = tasks_of(&state, "db")[0].clone();
    assert_eq!((db.state, db.unplaceable), (TaskState::Pending, true));
    assert_eq!(db.message, "0 of 1 nodes fit: 1 lacks 16GiB memory");
    // Same reason, same flag: nothing to write again.
    assert!(schedule(&state, 0).is_empty());

    // A flag lost (a state from before it existed) is written again though the message is equal.
    state.tasks.get_mut(&db.id).unwrap().unplaceable = false;
    let commands = schedule(&state, 0);
    assert!(
        matches!(&commands[..], [Command::SetTaskMessages { unplaceable, .. }] if unplaceable == &[db.id]),
        "{commands:?}"
    );

    // A node that fits joins: the task is placed and the flag goes.
    let mut big = node("big");
    big.memory_bytes = 32 << 30;
    state.apply(Command::RegisterNode { node: Box::new(big) });
    converge(&mut state, 0);
    let db = tasks_of(&state, "db")[0].clone();
    assert_eq!((db.state, db.unplaceable, db.message.as_str()), (TaskState::Assigned, false, ""));
}

#[test]
fn a_container_its_agent_had_to_rename_is_shown_by_its_actual_name() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 1)]);
    converge(&mut state, 0);
    let task = tasks_of(&state, "web")[0].clone();
    let report = |state: &mut ClusterState, name: Option<&str>| {
        state.apply(Command::ReportStatus {
            updates: vec![crate::store::command::StatusUpdate {
                task: task.id,
                node: "n1".into(),
                state: TaskState::Running,
                container_id: Some("c1".into()),
                exit_code: None,
                health: None,
                message: String::new(),
                ports: Vec::new(),
                cleanup_errors: Vec::new(),
                container_name: name.map(str::to_string),
                sequence: 0,
            }],
            at: 1,
        });
    };
    report(&mut state, None);
    assert_eq!(crate::controlapi::task_view(&state, &state.tasks[&task.id]).container_name, "p-web-1");
    let renamed = format!("p-web-1-t{}", task.id);
    report(&mut state, Some(&renamed));
    assert_eq!(state.tasks[&task.id].renamed.as_deref(), Some(renamed.as_str()));
    // Later reports without a name keep it.
    report(&mut state, None);
    assert_eq!(crate::controlapi::task_view(&state, &state.tasks[&task.id]).container_name, renamed);
}

#[test]
fn a_replaced_replica_waits_for_the_old_container() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 1)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    deploy(&mut state, &[("web", "image: x2", 1)]);
    converge(&mut state, 0);
    let all: Vec<_> = state.tasks.values().collect();
    assert_eq!(all.len(), 2);
    let new = all.iter().find(|t| t.desired == DesiredState::Running).unwrap();
    assert_eq!(new.state, TaskState::Pending);
    assert!(new.message.starts_with("waiting for the previous container"), "{}", new.message);
    assert!(!new.unplaceable);
    agents_run_everything(&mut state); // the old one is removed
    converge(&mut state, 0);
    let all: Vec<_> = state.tasks.values().collect();
    assert_eq!(all.len(), 1, "the removed task is forgotten");
    assert_eq!(all[0].state, TaskState::Assigned);
}

#[test]
fn pending_new_task_helper_keeps_slots_unique() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 1)]);
    converge(&mut state, 0);
    let again = state.apply(Command::CreateTasks {
        tasks: vec![NewTask { service: ServiceId::new("p", "web"), slot: 1, node: None, restarts: 0, not_before: 0 }],
        at: 0,
    });
    assert!(again.created_tasks.is_empty(), "a slot holds one live task");
}

mod placement;
mod properties;
