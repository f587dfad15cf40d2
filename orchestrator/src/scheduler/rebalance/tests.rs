use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::reconciler::reconcile;
use crate::scheduler::schedule;
use crate::scheduler::tests::{agents_run_everything, node, state_with};
use crate::store::command::StatusUpdate;
use crate::store::state::{Availability, NodeStatus};

fn web() -> ServiceId {
    ServiceId::new("p", "web")
}

/// Running tasks per node (the old and the new task of a move both count).
fn spread(state: &ClusterState) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for task in state.service_tasks(&web()).filter(|t| t.state == TaskState::Running) {
        *counts.entry(task.node.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

fn running(state: &ClusterState) -> usize {
    state.service_tasks(&web()).filter(|t| t.state == TaskState::Running).count()
}

fn moving(state: &ClusterState) -> Vec<&Task> {
    state
        .tasks
        .values()
        .filter(|t| t.service == web())
        .filter(|t| t.desired == DesiredState::Running && state.is_surge(t))
        .collect()
}

fn requested(state: &ClusterState) -> bool {
    state.services[&web()].rebalance_requested
}

/// One round of the leader's loop: reconcile, schedule and rebalance over one snapshot, then
/// their commands applied.
fn round(state: &mut ClusterState) -> Vec<Command> {
    let mut commands = reconcile(state, 0);
    commands.extend(schedule(state, 0));
    commands.extend(rebalance_all(state, 0));
    for c in commands.clone() {
        state.apply(c);
    }
    commands
}

/// Leader rounds and agents in turn until nothing changes; `invariant` is checked after every
/// step. Returns how many moves were started.
fn run(state: &mut ClusterState, invariant: impl Fn(&ClusterState)) -> usize {
    let mut moves = 0;
    for _ in 0..200 {
        let commands = round(state);
        invariant(state);
        moves += commands.iter().filter(|c| matches!(c, Command::MoveTask { .. })).count();
        let before = state.clone();
        agents_run_everything(state);
        invariant(state);
        if commands.is_empty() && *state == before {
            return moves;
        }
    }
    panic!("did not settle: {state:#?}");
}

fn settle(state: &mut ClusterState) {
    run(state, |_| {});
}

fn join(state: &mut ClusterState, id: &str, labels: &[(&str, &str)]) {
    let mut n = node(id);
    n.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    state.apply(Command::RegisterNode { node: Box::new(n) });
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn a_joining_node_gets_its_share_one_move_at_a_time() {
    let mut state = state_with(&["a", "b"], &[("web", "image: x", 6)]);
    settle(&mut state);
    assert_eq!(spread(&state), counts(&[("a", 3), ("b", 3)]));
    join(&mut state, "c", &[]);

    let mut unasked = state.clone();
    assert_eq!(run(&mut unasked, |_| {}), 0, "without a request nothing moves");
    assert_eq!(spread(&unasked), counts(&[("a", 3), ("b", 3)]));

    state.apply(Command::RebalanceService { service: web(), at: 1 });
    let moves = run(&mut state, |s| {
        assert!(running(s) >= 6, "a replica stopped before its replacement ran: {:?}", spread(s));
        assert!(running(s) <= 7, "more than one move at a time: {:?}", spread(s));
        assert!(moving(s).len() <= 1);
    });
    assert_eq!(moves, 2);
    assert_eq!(spread(&state), counts(&[("a", 2), ("b", 2), ("c", 2)]));
    assert!(!requested(&state), "the request is cleared once balanced");
    let mut slots: Vec<u64> = state.service_tasks(&web()).map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, [1, 2, 3, 4, 6, 7], "moved replicas live in the lowest slots that were free");
    assert!(state.service_tasks(&web()).all(|t| t.desired == DesiredState::Running && t.state == TaskState::Running));
}

#[test]
fn rebalance_on_join_asks_every_replicated_service() {
    let mut state =
        state_with(&["a", "b"], &[("web", "image: x", 6), ("agent", "{image: y, deploy: {mode: global}}", 0)]);
    settle(&mut state);
    join(&mut state, "c", &[]);
    assert!(!requested(&state), "off by default");
    settle(&mut state);
    state.apply(Command::SetNodeStatus { node: "c".into(), status: NodeStatus::Down, message: String::new(), at: 1 });
    settle(&mut state);

    state.apply(Command::SetRebalanceOnJoin { enabled: true });
    state.apply(Command::SetNodeStatus { node: "c".into(), status: NodeStatus::Ready, message: String::new(), at: 2 });
    assert!(requested(&state), "a node that comes back counts as joining");
    assert!(!state.services[&ServiceId::new("p", "agent")].rebalance_requested, "global services have no spread");
    settle(&mut state);
    assert_eq!(spread(&state), counts(&[("a", 2), ("b", 2), ("c", 2)]));
    assert!(!requested(&state));

    join(&mut state, "c", &[]);
    assert!(!requested(&state), "a ready node registering again is no join");
    state.apply(Command::SetNodeAvailability { node: "c".into(), availability: Availability::Pause, at: 3 });
    state.apply(Command::SetNodeAvailability { node: "c".into(), availability: Availability::Active, at: 4 });
    assert!(requested(&state), "a node active again takes tasks again");
    join(&mut state, "d", &[]);
    settle(&mut state);
    let spread = spread(&state);
    assert_eq!(spread.values().sum::<usize>(), 6);
    assert!(spread.values().all(|c| (1..=2).contains(c)), "{spread:?}");
}

#[test]
fn spread_preferences_decide_what_is_even() {
    let yaml = "{image: x, deploy: {placement: {preferences: [{spread: node.labels.zone}]}}}";
    let mut state = state_with(&[], &[("web", yaml, 6)]);
    join(&mut state, "a", &[("zone", "east")]);
    join(&mut state, "c", &[("zone", "west")]);
    settle(&mut state);
    assert_eq!(spread(&state), counts(&[("a", 3), ("c", 3)]));
    join(&mut state, "b", &[("zone", "east")]);
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    let moves = run(&mut state, |s| assert!(running(s) >= 6));
    assert_eq!(moves, 1, "zones were even already: only east's nodes even out");
    assert_eq!(spread(&state), counts(&[("a", 2), ("b", 1), ("c", 3)]));
}

#[test]
fn constraints_and_limits_bound_the_targets() {
    let yaml = "{image: x, deploy: {placement: {max_replicas_per_node: 3, constraints: ['node.labels.pool!=batch']}}}";
    let mut state = state_with(&["a", "b"], &[("web", yaml, 6)]);
    settle(&mut state);
    join(&mut state, "batch", &[("pool", "batch")]);
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    assert_eq!(run(&mut state, |_| {}), 0, "the only new node is outside the constraints");
    assert!(!requested(&state), "nothing to do is balanced");
    assert_eq!(spread(&state), counts(&[("a", 3), ("b", 3)]));
}

#[test]
fn replicas_that_fit_nowhere_do_not_hold_rebalancing_up() {
    let yaml = "{image: x, deploy: {placement: {max_replicas_per_node: 2}}}";
    let mut state = state_with(&["a"], &[("web", yaml, 5)]);
    settle(&mut state);
    join(&mut state, "b", &[]);
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    assert_eq!(run(&mut state, |_| {}), 0, "the scheduler fills b; nothing is left to move");
    assert_eq!(spread(&state), counts(&[("a", 2), ("b", 2)]));
    assert!(!requested(&state), "one replica still fits nowhere, and that is balanced");
    assert_eq!(state.service_tasks(&web()).filter(|t| t.state == TaskState::Pending).count(), 1);
}

/// Starts a move of `web` onto `c` and lets the scheduler place the replacement.
fn start_move(state: &mut ClusterState) -> Task {
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    let commands = round(state);
    assert!(commands.iter().any(|c| matches!(c, Command::MoveTask { .. })), "{commands:?}");
    round(state);
    let replacement = moving(state).first().map(|t| (*t).clone()).expect("a move under way");
    assert_eq!((replacement.state, replacement.node.as_deref()), (TaskState::Assigned, Some("c")));
    replacement
}

fn three_three_and_an_empty_c() -> ClusterState {
    let mut state = state_with(&["a", "b"], &[("web", "image: x", 6)]);
    settle(&mut state);
    join(&mut state, "c", &[]);
    state
}

#[test]
fn a_failed_replacement_is_given_up_with_the_request() {
    let mut state = three_three_and_an_empty_c();
    let replacement = start_move(&mut state);
    state.apply(Command::ReportStatus {
        updates: vec![StatusUpdate {
            task: replacement.id,
            node: "c".into(),
            state: TaskState::Failed,
            container_id: None,
            exit_code: Some(1),
            health: None,
            message: "image not found".into(),
            ports: Vec::new(),
            cleanup_errors: Vec::new(),
            container_name: None,
            sequence: 0,
        }],
        at: 2,
    });
    assert_eq!(
        rebalance(&state, &web(), 3),
        [
            Command::SetDesiredState { tasks: vec![(replacement.id, DesiredState::Remove)], at: 3 },
            Command::RebalanceFinished { service: web(), requests: 1 },
        ]
    );
    settle(&mut state);
    assert_eq!(spread(&state), counts(&[("a", 3), ("b", 3)]), "the old tasks kept running");
    assert!(!requested(&state));
}

#[test]
fn a_replacement_whose_node_is_drained_is_given_up() {
    let mut state = three_three_and_an_empty_c();
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    round(&mut state);
    let replacement = moving(&state)[0].clone();
    assert_eq!(replacement.state, TaskState::Pending);
    state.apply(Command::SetNodeAvailability { node: "c".into(), availability: Availability::Drain, at: 2 });
    assert_eq!(
        rebalance(&state, &web(), 3),
        [Command::SetDesiredState { tasks: vec![(replacement.id, DesiredState::Remove)], at: 3 }]
    );
    settle(&mut state);
    assert_eq!(spread(&state), counts(&[("a", 3), ("b", 3)]));
    assert!(!requested(&state), "with c drained, a and b are even");
}

#[test]
fn a_placed_replacement_whose_node_is_drained_or_lost_is_given_up_but_not_the_request() {
    let mut drained = three_three_and_an_empty_c();
    let replacement = start_move(&mut drained);
    drained.apply(Command::SetNodeAvailability { node: "c".into(), availability: Availability::Drain, at: 2 });
    let remove = vec![Command::SetDesiredState { tasks: vec![(replacement.id, DesiredState::Remove)], at: 3 }];
    assert_eq!(rebalance(&drained, &web(), 3), remove);

    let mut lost = three_three_and_an_empty_c();
    start_move(&mut lost);
    lost.apply(Command::SetNodeStatus { node: "c".into(), status: NodeStatus::Down, message: String::new(), at: 2 });
    for c in reconcile(&lost, 2) {
        lost.apply(c);
    }
    assert_eq!(lost.tasks[&replacement.id].state, TaskState::Orphaned);
    assert_eq!(rebalance(&lost, &web(), 3), remove, "the request stays: another node may do");
    settle(&mut lost);
    assert_eq!(spread(&lost), counts(&[("a", 3), ("b", 3)]));
    assert!(!requested(&lost));
}

#[test]
fn the_old_task_waits_for_a_healthy_replacement() {
    let yaml = "{image: x, healthcheck: {test: [CMD, 'true']}}";
    let mut state = state_with(&["a", "b"], &[("web", yaml, 6)]);
    settle(&mut state);
    join(&mut state, "c", &[]);
    let replacement = start_move(&mut state);
    let report = |state: &mut ClusterState, health| {
        state.apply(Command::ReportStatus {
            updates: vec![StatusUpdate {
                task: replacement.id,
                node: "c".into(),
                state: TaskState::Running,
                container_id: None,
                exit_code: None,
                health: Some(health),
                message: String::new(),
                ports: Vec::new(),
                cleanup_errors: Vec::new(),
                container_name: None,
                sequence: 0,
            }],
            at: 2,
        })
    };
    report(&mut state, Health::Starting);
    assert_eq!(rebalance(&state, &web(), 3), []);
    report(&mut state, Health::Healthy);
    let old = replacement.replaces.expect("a replacement names its predecessor");
    assert_eq!(
        rebalance(&state, &web(), 3),
        [Command::SetDesiredState { tasks: vec![(old, DesiredState::Remove)], at: 3 }]
    );
}

#[test]
fn a_deploy_or_a_scale_during_a_move_wins() {
    let mut deployed = three_three_and_an_empty_c();
    start_move(&mut deployed);
    crate::scheduler::tests::deploy(&mut deployed, &[("web", "image: x2", 6)]);
    settle(&mut deployed);
    let id = web();
    let tasks: Vec<&Task> = deployed.service_tasks(&id).collect();
    assert_eq!(tasks.len(), 6);
    assert!(tasks.iter().all(|t| t.config_hash == "image: x2" && t.state == TaskState::Running));
    assert_eq!(spread(&deployed), counts(&[("a", 2), ("b", 2), ("c", 2)]), "then rebalancing carries on");

    let mut scaled = three_three_and_an_empty_c();
    start_move(&mut scaled);
    scaled.apply(Command::ScaleService { service: web(), replicas: 4, at: 2 });
    settle(&mut scaled);
    let spread = spread(&scaled);
    assert_eq!(spread.values().sum::<usize>(), 4);
    assert!(spread.values().max().unwrap_or(&0) - spread.values().min().unwrap_or(&0) <= 1, "{spread:?}");
    assert_eq!(scaled.service_tasks(&web()).count(), 4);
}

#[test]
fn slots_left_by_moves_scale_like_any_others() {
    let mut state = three_three_and_an_empty_c();
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    settle(&mut state);
    let slots = |state: &ClusterState| {
        let mut slots: Vec<u64> = state.service_tasks(&web()).map(|t| t.slot).collect();
        slots.sort();
        slots
    };
    assert_eq!(slots(&state), [1, 2, 3, 4, 6, 7]);
    state.apply(Command::ScaleService { service: web(), replicas: 4, at: 2 });
    settle(&mut state);
    assert_eq!(slots(&state), [1, 2, 3, 4], "the highest slots go first");
    state.apply(Command::ScaleService { service: web(), replicas: 6, at: 3 });
    settle(&mut state);
    assert_eq!(slots(&state), [1, 2, 3, 4, 5, 6], "the lowest free slots are filled");
}

#[test]
fn a_request_made_while_the_leader_decided_is_kept() {
    let mut state = state_with(&["a", "b"], &[("web", "image: x", 2)]);
    settle(&mut state);
    state.apply(Command::RebalanceService { service: web(), at: 1 });
    let decided = rebalance(&state, &web(), 2);
    assert_eq!(decided, [Command::RebalanceFinished { service: web(), requests: 1 }]);
    state.apply(Command::RebalanceService { service: web(), at: 3 });
    for c in decided {
        state.apply(c);
    }
    assert!(requested(&state), "the second request was not seen yet");
    for c in rebalance(&state, &web(), 4) {
        state.apply(c);
    }
    assert!(!requested(&state));
}

#[test]
fn commands_check_what_they_are_given() {
    let mut state = three_three_and_an_empty_c();
    crate::scheduler::tests::deploy(
        &mut state,
        &[("web", "image: x", 6), ("agent", "{image: y, deploy: {mode: global}}", 0)],
    );
    settle(&mut state);
    let error = |state: &mut ClusterState, c: Command| state.apply(c).error.unwrap_or_default();
    assert_eq!(
        error(&mut state, Command::RebalanceService { service: ServiceId::new("p", "agent"), at: 1 }),
        "p/agent is a global service: only replicated services can be rebalanced"
    );
    assert_eq!(
        error(&mut state, Command::RebalanceService { service: ServiceId::new("p", "nope"), at: 1 }),
        "no such service: p/nope"
    );
    let on_a = state.service_tasks(&web()).find(|t| t.node.as_deref() == Some("a")).map(|t| t.id).unwrap_or_default();
    assert_eq!(
        error(&mut state, Command::MoveTask { task: on_a, node: "a".into(), at: 1 }),
        format!("task {on_a} already runs on a")
    );
    assert_eq!(error(&mut state, Command::MoveTask { task: on_a, node: "z".into(), at: 1 }), "no such node: z");
    let moved = state.apply(Command::MoveTask { task: on_a, node: "c".into(), at: 1 });
    assert_eq!((moved.error, moved.created_tasks.len()), (None, 1));
    assert_eq!(
        error(&mut state, Command::MoveTask { task: on_a, node: "c".into(), at: 1 }),
        "a task of p/web is already moving"
    );
    let replacement = moved.created_tasks[0];
    assert_eq!(
        error(&mut state, Command::MoveTask { task: replacement, node: "b".into(), at: 1 }),
        format!("task {replacement} is not running")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever the cluster, rebalancing ends balanced (by the scheduler's own measure), never
    /// with fewer tasks running than before it started, and never breaking a filter.
    #[test]
    fn rebalancing_converges_without_losing_replicas(
        before in 1usize..4,
        joining in 1usize..4,
        replicas in 0u64..12,
        zones in proptest::collection::vec(proptest::option::weighted(0.8, 0u8..3), 7),
        spread_zones in any::<bool>(),
        max_per_node in proptest::option::weighted(0.3, 2u64..5),
    ) {
        let preferences = if spread_zones { "[{spread: node.labels.zone}]" } else { "[]" };
        let max = max_per_node.map(|m| format!(", max_replicas_per_node: {m}")).unwrap_or_default();
        let yaml = format!("{{image: x, deploy: {{placement: {{preferences: {preferences}{max}}}}}}}");
        let mut state = state_with(&[], &[("web", yaml.as_str(), replicas)]);
        let labels = |i: usize| zones[i].map(|z| vec![("zone", ["z0", "z1", "z2"][usize::from(z)])]).unwrap_or_default();
        for i in 0..before {
            join(&mut state, &format!("n{i}"), &labels(i));
        }
        settle(&mut state);
        for i in before..before + joining {
            join(&mut state, &format!("n{i}"), &labels(i));
        }
        let floor = running(&state);
        state.apply(Command::RebalanceService { service: web(), at: 1 });
        run(&mut state, |s| {
            assert!(running(s) >= floor, "{} running, {floor} before", running(s));
            assert!(moving(s).len() <= 1);
        });
        prop_assert!(!requested(&state));
        let view = View::new(&state);
        let candidates = Candidates::new(&view, &state.services[&web()], Check::Eagerly).map_err(TestCaseError::fail)?;
        prop_assert_eq!(candidates.imbalance(), None);
        let wanted = state.service_tasks(&web()).filter(|t| t.desired == DesiredState::Running).count() as u64;
        prop_assert_eq!(wanted, replicas);
        if let Some(max) = max_per_node {
            prop_assert!(spread(&state).values().all(|c| *c as u64 <= max));
        }
    }
}
