use super::*;
use crate::scheduler::tests::{agents_run_everything, converge, deploy, state_with};
use crate::store::command::StatusUpdate;
use crate::store::state::{ServiceId, TaskState};

fn live(state: &ClusterState, service: &str) -> Vec<Task> {
    let id = ServiceId::new("p", service);
    let mut tasks: Vec<Task> =
        state.service_tasks(&id).filter(|t| t.desired == DesiredState::Running).cloned().collect();
    tasks.sort_by_key(|t| t.slot);
    tasks
}

#[test]
fn creates_one_task_per_slot_and_is_idempotent() {
    let state = state_with(&["n1"], &[("web", "image: x", 3)]);
    let commands = reconcile(&state, 5);
    assert_eq!(commands.len(), 1);
    let Command::CreateTasks { tasks, .. } = &commands[0] else { panic!("{commands:?}") };
    assert_eq!(tasks.iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2, 3]);
    let mut state = state;
    for c in commands {
        state.apply(c);
    }
    assert!(reconcile(&state, 5).is_empty(), "converged state yields nothing");
}

#[test]
fn scales_down_from_the_highest_slots() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 4)]);
    converge(&mut state, 0);
    state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 2, at: 1 });
    converge(&mut state, 1);
    assert_eq!(live(&state, "web").iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2]);
    state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 0, at: 1 });
    converge(&mut state, 1);
    assert!(live(&state, "web").is_empty());
    state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 2, at: 1 });
    converge(&mut state, 1);
    assert_eq!(live(&state, "web").len(), 2, "scaling back up from 0");
}

#[test]
fn only_changed_services_are_replaced() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 1), ("db", "image: d", 1)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    let before_db = live(&state, "db")[0].id;
    let before_web = live(&state, "web")[0].id;
    deploy(&mut state, &[("web", "image: x:2", 1), ("db", "image: d", 1)]);
    converge(&mut state, 0);
    assert_eq!(live(&state, "db")[0].id, before_db, "unchanged service keeps its task");
    assert_ne!(live(&state, "web")[0].id, before_web, "changed service gets a new task");
}

#[test]
fn force_recreate_replaces_unchanged_services() {
    let mut state = state_with(&["n1"], &[("db", "image: d", 1)]);
    converge(&mut state, 0);
    let before = live(&state, "db")[0].id;
    state.apply(Command::DeployStack {
        stack: "p".into(),
        project: Box::default(),
        services: vec![crate::store::command::ServiceDeployment {
            name: "db".into(),
            spec: crate::scheduler::tests::spec("image: d"),
            config_hash: "image: d".into(),
            mode: ServiceMode::Replicated,
            replicas: 1,
        }],
        remove_orphans: false,
        only: vec![],
        recreate: crate::store::command::RecreatePolicy::Force,
        at: 1,
        request_id: String::new(),
    });
    converge(&mut state, 1);
    assert_ne!(live(&state, "db")[0].id, before);
}

fn finish(state: &mut ClusterState, task: &Task, code: i64, at: u64) {
    state.apply(Command::ReportStatus {
        updates: vec![StatusUpdate {
            task: task.id,
            node: task.node.clone().unwrap(),
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
        at,
    });
}

#[test]
fn restarts_failed_tasks_per_policy_with_a_delay() {
    let mut state = state_with(&["n1"], &[("w", "{image: x, restart: 'on-failure:2'}", 1)]);
    converge(&mut state, 0);
    let first = live(&state, "w")[0].clone();
    finish(&mut state, &first, 1, 1_000);
    converge(&mut state, 1_000);
    let second = live(&state, "w")[0].clone();
    assert_ne!(second.id, first.id);
    assert_eq!(second.restarts, 1);
    assert_eq!(second.not_before, 1_100, "docker-like backoff");
    assert_eq!(second.state, TaskState::Pending, "held until the old container is gone and the delay passed");
    agents_run_everything(&mut state);
    converge(&mut state, 2_000);
    let second = live(&state, "w")[0].clone();
    assert_eq!(second.state, TaskState::Assigned, "{second:#?}\n{:#?}", state.tasks);
    finish(&mut state, &second, 1, 3_000);
    converge(&mut state, 3_000);
    let third = live(&state, "w")[0].clone();
    assert_eq!(third.restarts, 2);
    agents_run_everything(&mut state);
    converge(&mut state, 9_000);
    let third = live(&state, "w")[0].clone();
    finish(&mut state, &third, 1, 10_000);
    converge(&mut state, 10_000);
    let last = live(&state, "w")[0].clone();
    assert_eq!((last.id, last.state), (third.id, TaskState::Failed), "max attempts reached: stays failed");
}

#[test]
fn successful_one_shot_task_stays_complete() {
    let mut state = state_with(&["n1"], &[("migrate", "image: m", 1)]);
    converge(&mut state, 0);
    let task = live(&state, "migrate")[0].clone();
    finish(&mut state, &task, 0, 1);
    converge(&mut state, 1);
    assert_eq!(live(&state, "migrate")[0].id, task.id);
    assert!(reconcile(&state, 1).is_empty());
}

#[test]
fn tasks_of_a_down_node_are_replaced_elsewhere() {
    let mut state = state_with(&["a", "b"], &[("web", "image: x", 2)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    state.apply(Command::SetNodeStatus {
        node: "a".into(),
        status: NodeStatus::Down,
        message: "missed heartbeats".into(),
        at: 1,
    });
    converge(&mut state, 1);
    let tasks = live(&state, "web");
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.node.as_deref() == Some("b")), "{tasks:#?}");
    assert!(state.tasks.values().all(|t| t.node.as_deref() != Some("a")), "orphans of the dead node are forgotten");
}

#[test]
fn global_services_follow_nodes() {
    let mut state = state_with(&["a", "b"], &[("agent", "{image: x, deploy: {mode: global}}", 0)]);
    converge(&mut state, 0);
    assert_eq!(live(&state, "agent").len(), 2);
    state.apply(Command::RegisterNode { node: Box::new(crate::scheduler::tests::node("c")) });
    converge(&mut state, 0);
    assert_eq!(live(&state, "agent").len(), 3, "a joining node gets one");
    state.apply(Command::SetNodeAvailability { node: "a".into(), availability: Availability::Drain, at: 0 });
    converge(&mut state, 0);
    let nodes: Vec<_> = live(&state, "agent").iter().map(|t| t.node.clone().unwrap()).collect();
    assert_eq!(nodes, ["b", "c"]);
}

fn nodes_of(state: &ClusterState, service: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in live(state, service) {
        *counts.entry(t.node.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

#[test]
fn replicas_on_a_drained_node_move_once_their_containers_are_gone() {
    let mut state = state_with(&["a", "b", "c"], &[("web", "image: x", 6)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    let on_a: Vec<(u64, u64)> =
        live(&state, "web").iter().filter(|t| t.node.as_deref() == Some("a")).map(|t| (t.id, t.slot)).collect();
    assert_eq!(on_a.len(), 2);
    state.apply(Command::SetNodeAvailability { node: "a".into(), availability: Availability::Drain, at: 1 });
    converge(&mut state, 1);
    for (id, slot) in &on_a {
        assert_eq!(state.tasks[id].desired, DesiredState::Remove, "the drained node's task goes");
        let replacement = live(&state, "web").into_iter().find(|t| t.slot == *slot).expect("a replacement");
        assert_eq!(replacement.state, TaskState::Pending, "placed only once the old container is gone");
        assert!(replacement.message.contains("previous container"), "{}", replacement.message);
    }
    // The agent removes the drained node's containers; the replacements go to the other nodes.
    agents_run_everything(&mut state);
    converge(&mut state, 2);
    agents_run_everything(&mut state);
    converge(&mut state, 2);
    assert_eq!(nodes_of(&state, "web"), BTreeMap::from([("b".to_string(), 3), ("c".to_string(), 3)]));
    assert!(live(&state, "web").iter().all(|t| t.state == TaskState::Running));
    assert!(state.node_tasks("a").next().is_none(), "nothing is left on the drained node");
    // Active again: it takes new tasks (existing ones stay where they are).
    state.apply(Command::SetNodeAvailability { node: "a".into(), availability: Availability::Active, at: 3 });
    state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 8, at: 3 });
    converge(&mut state, 3);
    assert_eq!(nodes_of(&state, "web").get("a"), Some(&2));
}

#[test]
fn a_paused_node_keeps_its_tasks_and_takes_no_new_ones() {
    let mut state =
        state_with(&["a", "b"], &[("web", "image: x", 2), ("agent", "{image: x, deploy: {mode: global}}", 0)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    let before: Vec<u64> = state.node_tasks("a").map(|t| t.id).collect();
    assert_eq!(before.len(), 2, "one replica and the global task");
    state.apply(Command::SetNodeAvailability { node: "a".into(), availability: Availability::Pause, at: 1 });
    converge(&mut state, 1);
    let kept: Vec<u64> = state.node_tasks("a").filter(|t| t.desired == DesiredState::Running).map(|t| t.id).collect();
    assert_eq!(kept, before, "the paused node keeps its tasks, the global one included");
    state.apply(Command::ScaleService { service: ServiceId::new("p", "web"), replicas: 4, at: 2 });
    converge(&mut state, 2);
    assert_eq!(nodes_of(&state, "web"), BTreeMap::from([("a".to_string(), 1), ("b".to_string(), 3)]));
    state.apply(Command::RegisterNode { node: Box::new(crate::scheduler::tests::node("c")) });
    state.apply(Command::SetNodeAvailability { node: "c".into(), availability: Availability::Pause, at: 3 });
    converge(&mut state, 3);
    assert!(state.node_tasks("c").next().is_none(), "a paused node gets no global task it did not have");
}

#[test]
fn removing_a_stack_removes_everything_then_forgets_it() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 2), ("db", "image: d", 1)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    state.apply(Command::RemoveStack { stack: "p".into(), remove_volumes: false, stop_timeout: None, at: 1 });
    converge(&mut state, 1);
    assert!(state.tasks.values().all(|t| t.desired == DesiredState::Remove));
    agents_run_everything(&mut state);
    converge(&mut state, 2);
    assert!(state.tasks.is_empty());
    assert!(state.services.is_empty());
    assert!(state.stacks.is_empty());
}

#[test]
fn a_removed_task_whose_cleanup_failed_is_kept_a_moment_for_watchers() {
    let mut state = state_with(&["n1"], &[("web", "image: x", 1)]);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    state.apply(Command::RemoveStack { stack: "p".into(), remove_volumes: false, stop_timeout: None, at: 1 });
    converge(&mut state, 1);
    let task = state.tasks.values().next().cloned().expect("the web task");
    let error = "network p_default: network has active endpoints".to_string();
    state.apply(Command::ReportStatus {
        updates: vec![StatusUpdate {
            task: task.id,
            node: "n1".into(),
            state: TaskState::Removed,
            container_id: None,
            exit_code: None,
            health: None,
            message: "removed".into(),
            ports: Vec::new(),
            cleanup_errors: vec![error.clone()],
            container_name: None,
            sequence: 0,
        }],
        at: 10,
    });
    converge(&mut state, 10 + CLEANUP_ERRORS_KEPT - 1);
    assert_eq!(state.tasks[&task.id].cleanup_errors, [error], "forgotten before a watcher could see why");
    converge(&mut state, 10 + CLEANUP_ERRORS_KEPT);
    assert!(state.tasks.is_empty());
    assert!(state.stacks.is_empty());
}

#[test]
fn removal_goes_in_reverse_dependency_order() {
    let mut state = state_with(
        &["n1"],
        &[
            ("web", "{image: x, depends_on: {api: {condition: service_started}}}", 1),
            ("api", "{image: y, depends_on: {db: {condition: service_started}}}", 1),
            ("db", "image: d", 1),
        ],
    );
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    converge(&mut state, 0);
    agents_run_everything(&mut state);
    state.apply(Command::RemoveStack { stack: "p".into(), remove_volumes: false, stop_timeout: None, at: 1 });
    let removing = |state: &ClusterState| -> Vec<String> {
        let mut names: Vec<String> = state
            .tasks
            .values()
            .filter(|t| t.desired == DesiredState::Remove)
            .map(|t| t.service.service.clone())
            .collect();
        names.sort();
        names
    };
    converge(&mut state, 1);
    assert_eq!(removing(&state), ["web"], "dependents go first");
    agents_run_everything(&mut state);
    converge(&mut state, 1);
    assert_eq!(removing(&state), ["api"]);
    agents_run_everything(&mut state);
    converge(&mut state, 1);
    assert_eq!(removing(&state), ["db"]);
    agents_run_everything(&mut state);
    converge(&mut state, 1);
    assert!(state.stacks.is_empty());
}

#[test]
fn services_whose_tasks_interleave_are_each_reconciled_on_their_own() {
    // Scaled alternately, so the task ids of the two services interleave in the state.
    let mut state = state_with(&["n1", "n2"], &[("web", "image: x", 1), ("db", "image: d", 1)]);
    converge(&mut state, 0);
    for replicas in 2..=5 {
        for service in ["web", "db"] {
            state.apply(Command::ScaleService { service: ServiceId::new("p", service), replicas, at: 1 });
            converge(&mut state, 1);
        }
    }
    assert_eq!(live(&state, "web").iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(live(&state, "db").iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(reconcile(&state, 1).is_empty(), "converged");
    state.apply(Command::ScaleService { service: ServiceId::new("p", "db"), replicas: 2, at: 2 });
    converge(&mut state, 2);
    assert_eq!(live(&state, "web").len(), 5, "the other service keeps its tasks");
    assert_eq!(live(&state, "db").iter().map(|t| t.slot).collect::<Vec<_>>(), [1, 2]);
}
