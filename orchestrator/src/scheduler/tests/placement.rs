//! Spread preferences, constraints on every attribute, and the wording of pending reasons.

use super::*;
use crate::store::state::NodeRole;

fn label(state: &mut ClusterState, node: &str, key: &str, value: &str) {
    if let Some(n) = state.nodes.get_mut(node) {
        n.labels.insert(key.into(), value.into());
    }
}

fn pending_messages(state: &ClusterState, service: &str) -> Vec<String> {
    tasks_of(state, service).into_iter().filter(|t| t.state == TaskState::Pending).map(|t| t.message.clone()).collect()
}

const SPREAD_ZONE: &str = "{image: x, deploy: {placement: {preferences: [{spread: node.labels.zone}]}}}";

#[test]
fn spread_goes_over_the_label_values_first() {
    let mut state = state_with(&["a", "b", "c"], &[("web", SPREAD_ZONE, 4)]);
    label(&mut state, "a", "zone", "east");
    label(&mut state, "b", "zone", "east");
    label(&mut state, "c", "zone", "west");
    converge(&mut state, 0);
    let counts = per_node(&state, "web");
    assert_eq!(counts, BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 2)]), "east 2, west 2");
    // Without the preference the nodes share evenly.
    let mut plain = state_with(&["a", "b", "c"], &[("web", "image: x", 4)]);
    converge(&mut plain, 0);
    assert_eq!(per_node(&plain, "web").into_values().collect::<Vec<_>>(), [2, 1, 1]);
}

#[test]
fn nodes_missing_the_label_form_their_own_group() {
    let mut state = state_with(&["a", "b", "c"], &[("web", SPREAD_ZONE, 4)]);
    label(&mut state, "a", "zone", "east");
    converge(&mut state, 0);
    let counts = per_node(&state, "web");
    assert_eq!(counts, BTreeMap::from([("a".into(), 2), ("b".into(), 1), ("c".into(), 1)]), "east 2, no zone 2");
}

#[test]
fn the_second_preference_spreads_within_the_first() {
    let yaml =
        "{image: x, deploy: {placement: {preferences: [{spread: node.labels.zone}, {spread: node.labels.rack}]}}}";
    let mut state = state_with(&["a", "b", "c", "d"], &[("web", yaml, 8)]);
    for (node, zone, rack) in [("a", "east", "r1"), ("b", "east", "r1"), ("c", "east", "r2"), ("d", "west", "r1")] {
        label(&mut state, node, "zone", zone);
        label(&mut state, node, "rack", rack);
    }
    converge(&mut state, 0);
    let counts = per_node(&state, "web");
    // east 4 (rack r1: 2 over a and b, rack r2: 2 on c), west 4.
    assert_eq!(counts, BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 2), ("d".into(), 4)]));
}

#[test]
fn a_full_group_leaves_the_rest_to_the_others() {
    let yaml = "{image: x, deploy: {resources: {reservations: {memory: 1g}}, placement: {preferences: [{spread: node.labels.zone}]}}}";
    let mut state = state_with(&["a", "b", "c"], &[("web", yaml, 6)]);
    label(&mut state, "a", "zone", "east");
    label(&mut state, "b", "zone", "east");
    label(&mut state, "c", "zone", "west");
    if let Some(c) = state.nodes.get_mut("c") {
        c.memory_bytes = 1 << 30;
    }
    converge(&mut state, 0);
    let counts = per_node(&state, "web");
    assert_eq!(counts, BTreeMap::from([("a".into(), 3), ("b".into(), 2), ("c".into(), 1)]));
    assert!(tasks_of(&state, "web").iter().all(|t| t.state == TaskState::Assigned));
}

#[test]
fn constraints_on_every_attribute_place_tasks() {
    let mut state = state_with(&["a", "b"], &[]);
    label(&mut state, "b", "zone", "east");
    if let Some(b) = state.nodes.get_mut("b") {
        b.role = NodeRole::Manager;
        b.os = "windows".into();
        b.arch = "arm64".into();
    }
    let cases = [
        ("node.id==b", "b"),
        ("node.id!=b", "a"),
        ("node.hostname==host-b", "b"),
        ("node.hostname!=host-b", "a"),
        ("node.role==manager", "b"),
        ("node.role!=manager", "a"),
        ("node.labels.zone==east", "b"),
        ("node.labels.zone!=east", "a"),
        ("node.platform.os==windows", "b"),
        ("node.platform.os!=windows", "a"),
        ("node.platform.arch==aarch64", "b"),
        ("node.platform.arch!=arm64", "a"),
    ];
    for (i, (constraint, expected)) in cases.iter().enumerate() {
        let name = format!("s{i}");
        let yaml = format!("{{image: x, deploy: {{placement: {{constraints: ['{constraint}']}}}}}}");
        deploy(&mut state, &[(name.as_str(), yaml.as_str(), 2)]);
        converge(&mut state, 0);
        let nodes: Vec<String> = tasks_of(&state, &name).iter().map(|t| t.node.clone().unwrap_or_default()).collect();
        assert_eq!(nodes, [*expected, *expected], "{constraint}");
    }
}

#[test]
fn a_malformed_constraint_is_the_pending_reason() {
    let yaml = "{image: x, deploy: {placement: {constraints: ['node.labels.zone=east']}}}";
    let mut state = state_with(&["a"], &[("web", yaml, 2)]);
    converge(&mut state, 0);
    let expected = "invalid placement constraint \"node.labels.zone=east\": expected <attribute>==<value> or \
                    <attribute>!=<value> (did you mean node.labels.zone==east?)";
    assert_eq!(pending_messages(&state, "web"), [expected, expected]);
}

#[test]
fn an_unknown_spread_attribute_is_the_pending_reason() {
    let yaml = "{image: x, deploy: {placement: {preferences: [{spread: zone}]}}}";
    let mut state = state_with(&["a"], &[("web", yaml, 1)]);
    converge(&mut state, 0);
    let messages = pending_messages(&state, "web");
    assert!(
        messages[0].starts_with("invalid placement preference \"spread: zone\": unknown attribute"),
        "{messages:?}"
    );
}

#[test]
fn mixed_reasons_read_most_common_first() {
    let yaml = "{image: x, deploy: {resources: {reservations: {memory: 512m}}, placement: {constraints: ['node.labels.zone==east']}}}";
    let mut state = state_with(&["a", "b", "c"], &[("db", yaml, 1)]);
    for (node, zone) in [("a", "east"), ("b", "east"), ("c", "west")] {
        label(&mut state, node, "zone", zone);
    }
    for node in ["a", "b"] {
        if let Some(n) = state.nodes.get_mut(node) {
            n.memory_bytes = 256 << 20;
        }
    }
    converge(&mut state, 0);
    assert_eq!(
        pending_messages(&state, "db"),
        ["0 of 3 nodes fit: 2 lack 512MiB memory, 1 fails constraint node.labels.zone==east"]
    );
}

#[test]
fn every_kind_of_reason_in_one_message() {
    // (Host ports are left out: a node running a replica has its port taken, so "has port in
    // use" always wins over "already runs the maximum"; see `host_ports_and_availability_...`.)
    let yaml = "{image: x, deploy: {resources: {reservations: {cpus: '2', memory: 1g}}, placement: {max_replicas_per_node: 1, constraints: ['node.role==worker']}}}";
    let nodes = ["down", "paused", "drained", "manager", "small-cpu", "small-mem", "full", "free"];
    let mut state = state_with(&nodes, &[("web", yaml, 3)]);
    state.apply(Command::SetNodeStatus {
        node: "down".into(),
        status: NodeStatus::Down,
        message: String::new(),
        at: 0,
    });
    state.apply(Command::SetNodeAvailability { node: "paused".into(), availability: Availability::Pause, at: 0 });
    state.apply(Command::SetNodeAvailability { node: "drained".into(), availability: Availability::Drain, at: 0 });
    if let Some(n) = state.nodes.get_mut("manager") {
        n.role = NodeRole::Manager;
    }
    if let Some(n) = state.nodes.get_mut("small-cpu") {
        n.nano_cpus = 1_000_000_000;
    }
    if let Some(n) = state.nodes.get_mut("small-mem") {
        n.memory_bytes = 512 << 20;
    }
    converge(&mut state, 0);
    assert_eq!(per_node(&state, "web"), BTreeMap::from([("".into(), 1), ("free".into(), 1), ("full".into(), 1)]));
    assert_eq!(
        pending_messages(&state, "web"),
        ["0 of 8 nodes fit: 2 already run the maximum of 1 per node, 1 is down, 1 is drained, 1 is paused, \
          1 fails constraint node.role==worker, 1 lacks 2 CPUs, 1 lacks 1GiB memory"]
    );
}

#[test]
fn a_pinned_task_says_why_its_node_does_not_fit() {
    let mut state = state_with(&["a"], &[("web", "{image: x, deploy: {resources: {reservations: {memory: 16g}}}}", 0)]);
    let created = state.apply(Command::CreateTasks {
        tasks: vec![NewTask {
            service: ServiceId::new("p", "web"),
            slot: 1,
            node: Some("a".into()),
            restarts: 0,
            not_before: 0,
        }],
        at: 0,
    });
    assert_eq!(created.created_tasks.len(), 1);
    for c in schedule(&state, 0) {
        state.apply(c);
    }
    assert_eq!(pending_messages(&state, "web"), ["0 of 1 nodes fit: 1 lacks 16GiB memory"]);
    let gone = state.apply(Command::CreateTasks {
        tasks: vec![NewTask {
            service: ServiceId::new("p", "web"),
            slot: 2,
            node: Some("z".into()),
            restarts: 0,
            not_before: 0,
        }],
        at: 0,
    });
    assert_eq!(gone.created_tasks.len(), 1);
    for c in schedule(&state, 0) {
        state.apply(c);
    }
    assert!(pending_messages(&state, "web").contains(&"its node z is gone".to_string()));
}
