//! End to end on several nodes: one manager (`shoal server --no-agent`) and agents (`shoal
//! agent`) on this machine, all on the one local Docker engine, each agent running the
//! containers placed on its node. Spreading, constraints, reservations that fit nowhere, drain
//! and pause, a node lost (`kill -9`) and back, global services on a node that joins later, and
//! scaling across the nodes; `up --wait` through a connection reset.
//!
//! Each test has its own cluster and stack. The `Stack` is declared before the `Nodes`, so that
//! the agents are gone before the stack's objects are removed (see `support/multinode.rs`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::managers::poll;
use shoal_tests::multinode::Nodes;
use shoal_tests::relay::Relay;
use shoal_tests::stack::{docker, docker_ok, Stack, IMAGE};

/// Three nodes: node1 in zone east, node2 and node3 in zone west.
const THREE: [(&str, &[&str]); 3] =
    [("node1", &["zone=east"]), ("node2", &["zone=west"]), ("node3", &["zone=west", "disk=hdd"])];

/// How long a lost node may take to be noticed and its tasks to run elsewhere: the dispatcher
/// marks a node down after 6 s without a heartbeat (`shoal server --node-down-after`'s default),
/// then the tasks are placed at once; the rest is margin for a loaded machine.
const DOWN_WINDOW: Duration = Duration::from_secs(25);

/// A service of long-running containers that stop at once.
fn service(name: &str, deploy: &str) -> String {
    format!(
        "  {name}:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    stop_grace_period: 1s\n    deploy: {deploy}\n"
    )
}

/// A compose file of these services; the default network is declared so it carries the test label.
fn compose(services: &[String]) -> String {
    format!("services:\n{}networks:\n  default: {{}}\n", services.concat())
}

fn json_list(value: &Json) -> &Vec<Json> {
    value.as_array().unwrap_or_else(|| panic!("not a JSON array: {value}"))
}

/// `service ps SERVICE --format json` entries.
fn service_ps(nodes: &Nodes, stack: &Stack, service: &str, all: bool) -> Vec<Json> {
    let mut args = vec!["service", "ps", service, "--format", "json"];
    if all {
        args.push("-a");
    }
    json_list(&nodes.json(stack, &args)).clone()
}

/// The stack's containers on the engine that are running, by name.
fn running_containers(stack: &Stack) -> Vec<String> {
    let filter = format!("label=com.docker.compose.project={}", stack.name);
    let mut names: Vec<String> =
        docker_ok(&["ps", "--filter", &filter, "--format", "{{.Names}}"]).lines().map(str::to_string).collect();
    names.sort();
    names
}

#[test]
fn replicas_spread_over_the_nodes_and_scale_across_them() {
    let stack = Stack::new("spread");
    stack.compose(&compose(&[service("web", "{replicas: 6}")]));
    let nodes = Nodes::start(&THREE);
    nodes.ok(&stack, &["up", "-d"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 2), ("node2", 2), ("node3", 2)]);

    let services = nodes.json(&stack, &["service", "ls", "--format", "json"]);
    let web = json_list(&services).iter().find(|s| s["Service"] == "web").expect("service ls lists web");
    assert_eq!(web["Name"], format!("{}/web", stack.name));
    assert_eq!(
        (web["Mode"].as_str(), web["Desired"].as_u64(), web["Running"].as_u64()),
        (Some("replicated"), Some(6), Some(6))
    );
    assert_eq!(web["Image"], IMAGE);
    let table = nodes.ok(&stack, &["service", "ls"]).stdout;
    assert!(table.lines().any(|l| l.contains("/web") && l.contains("6/6") && l.contains(IMAGE)), "{table}");

    // The nodes as a list: every agent, ready and active, with its labels.
    let listed = nodes.json(&stack, &["node", "ls", "--format", "json"]);
    let ids: BTreeSet<&str> = json_list(&listed).iter().filter_map(|n| n["ID"].as_str()).collect();
    assert_eq!(ids, nodes.agents.iter().map(|a| a.id.as_str()).collect::<BTreeSet<_>>(), "{listed}");
    for node in json_list(&listed) {
        assert_eq!((node["Status"].as_str(), node["Availability"].as_str()), (Some("ready"), Some("active")), "{node}");
        assert_eq!((node["Role"].as_str(), node["ManagerStatus"].as_str()), (Some("worker"), Some("")), "{node}");
    }
    let node1 = json_list(&listed).iter().find(|n| n["Hostname"] == "node1").expect("node ls lists node1");
    assert_eq!(node1["Labels"]["zone"], "east");

    // A node in detail: what it is and what it runs.
    let node1 = nodes.inspect(&stack, "node1");
    assert_eq!(node1["Hostname"], "node1");
    assert_eq!((node1["Role"].as_str(), node1["Availability"].as_str()), (Some("worker"), Some("active")));
    assert_eq!(node1["Status"], "ready");
    assert_eq!(node1["Labels"]["zone"], "east");
    assert!(node1["Resources"]["MemoryBytes"].as_u64().unwrap_or(0) > 0, "{node1}");
    assert!(node1["Resources"]["Memory"].as_str().is_some_and(|m| m.ends_with("iB")), "{node1}");
    assert!(!node1["EngineVersion"].as_str().unwrap_or_default().is_empty(), "{node1}");
    assert_eq!(json_list(&node1["Tasks"]).len(), 2, "{node1}");
    let pretty = nodes.ok(&stack, &["node", "inspect", "node1"]).stdout;
    assert!(pretty.contains("zone=east") && pretty.contains(&format!("{}-web-", stack.name)), "{pretty}");

    // Scaling up spreads the new replicas too (4/3/3), scaling down removes the highest slots.
    nodes.ok(&stack, &["scale", "web=10"]);
    poll("10 replicas spread over the three nodes", Duration::from_secs(60), || {
        let placement = nodes.placement(&stack, "web");
        let mut per_node: Vec<usize> = placement.values().copied().collect();
        per_node.sort();
        if placement.len() == 3 && per_node == [3, 3, 4] {
            Ok(())
        } else {
            Err(format!("{placement:?}"))
        }
    });
    assert_eq!(running_containers(&stack).len(), 10);
    nodes.ok(&stack, &["scale", "web=0"]);
    poll("no web containers", Duration::from_secs(60), || {
        let (ps, left) = (nodes.ps(&stack), stack.container_ids());
        if ps.is_empty() && left.is_empty() {
            Ok(())
        } else {
            Err(format!("ps lists {}, the engine has {}", ps.len(), left.len()))
        }
    });
    nodes.ok(&stack, &["scale", "web=3"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 1), ("node2", 1), ("node3", 1)]);
    let slots: BTreeSet<u64> = nodes.ps(&stack).iter().filter_map(|c| c["Slot"].as_u64()).collect();
    assert_eq!(slots, BTreeSet::from([1, 2, 3]));
}

#[test]
fn constraints_pin_tasks_and_a_reservation_no_node_has_leaves_them_pending_with_the_reason() {
    let stack = Stack::new("place");
    stack.compose(&compose(&[
        service("east", "{replicas: 2, placement: {constraints: ['node.labels.zone==east']}}"),
        service("big", "{replicas: 2, resources: {reservations: {memory: 64000G}}}"),
    ]));
    let mut nodes = Nodes::start(&THREE);
    nodes.ok(&stack, &["up", "-d", "east"]);
    nodes.wait_for_placement(&stack, "east", &[("node1", 2)]);

    // Nothing fits: `up -d` accepts the deployment and warns with the scheduler's reason (no
    // --timeout: it must return by itself), `up --wait` fails with it, and `service ps` shows the
    // reason per task.
    let out = nodes.ok(&stack, &["up", "-d", "big"]);
    let warning = "warning: service big: 2 of 2 tasks cannot be placed: 0 of 3 nodes fit: 3 lack 62.5";
    assert!(out.stderr.contains(warning), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("`shoal service ps {}/big`", stack.name)), "{}", out.stderr);
    let out = nodes.run(&stack, &["up", "--wait", "--timeout", "60", "big"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let failure = "error: service big: 2 of 2 tasks cannot be placed: 0 of 3 nodes fit: 3 lack 62.5";
    assert!(out.stderr.contains(failure) && !out.stderr.contains("gave up"), "{}", out.stderr);
    let tasks = poll("big's tasks to say why they wait", Duration::from_secs(30), || {
        let tasks = service_ps(&nodes, &stack, "big", false);
        let explained = tasks.iter().all(|t| t["Reason"].as_str().is_some_and(|r| r.contains("0 of 3 nodes fit")));
        if tasks.len() == 2 && explained {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    for task in &tasks {
        assert_eq!((task["State"].as_str(), task["DesiredState"].as_str()), (Some("pending"), Some("running")));
        let reason = task["Reason"].as_str().unwrap_or_default();
        assert!(reason.contains("3 lack 62.5") && reason.contains("TiB memory"), "{task}");
        assert_eq!(task["Node"], "");
    }
    let table = nodes.ok(&stack, &["service", "ps", &format!("{}/big", stack.name)]).stdout;
    assert!(table.contains("pending") && table.contains("0 of 3 nodes fit: 3 lack 62.5"), "{table}");
    // `scale` returns too, with the same warning.
    let out = nodes.ok(&stack, &["scale", "big=3"]);
    assert!(out.stderr.contains("warning: service big: 3 of 3 tasks cannot be placed"), "{}", out.stderr);

    // An operator label: node2 joins zone east, so the constraint now fits it too.
    nodes.ok(&stack, &["node", "update", "node2", "--label-add", "zone=east", "--label-rm", "disk"]);
    nodes.ok(&stack, &["scale", "east=4"]);
    nodes.wait_for_placement(&stack, "east", &[("node1", 2), ("node2", 2)]);

    // node2's agent comes back with its own labels (zone=west): the operator's label wins.
    let node2 = nodes.agent("node2");
    nodes.stop_agent(node2);
    nodes.restart_agent(node2);
    let inspected = nodes.inspect(&stack, "node2");
    assert_eq!(inspected["Labels"]["zone"], "east", "{inspected}");
    assert_eq!(inspected["AgentLabels"]["zone"], "west", "{inspected}");
    // Removing it from node1 (an agent label): the tasks stay (constraints place, they do not
    // evict), new ones only go where the constraint holds.
    nodes.ok(&stack, &["node", "update", "node1", "--label-rm", "zone"]);
    let node1 = nodes.inspect(&stack, "node1");
    assert!(node1["Labels"].get("zone").is_none(), "{node1}");
    nodes.ok(&stack, &["scale", "east=5"]);
    nodes.wait_for_placement(&stack, "east", &[("node1", 2), ("node2", 3)]);
}

#[test]
fn draining_a_node_moves_its_tasks_and_a_paused_node_takes_no_new_ones() {
    let stack = Stack::new("drain");
    stack.compose(&compose(&[service("web", "{replicas: 6}")]));
    let nodes = Nodes::start(&THREE);
    nodes.ok(&stack, &["up", "-d"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 2), ("node2", 2), ("node3", 2)]);

    nodes.ok(&stack, &["node", "update", "node3", "--availability", "drain"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 3), ("node2", 3)]);
    let node3 = nodes.agent("node3");
    poll("the drained node's containers to be removed", Duration::from_secs(30), || {
        let left = nodes.containers_of(node3);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    let inspected = nodes.inspect(&stack, "node3");
    assert_eq!(inspected["Availability"], "drain");
    assert!(json_list(&inspected["Tasks"]).is_empty(), "{inspected}");
    assert_eq!(running_containers(&stack).len(), 6);

    // Paused: node2 keeps its tasks but gets none of the new ones.
    let names = nodes.names();
    let on_node2 = |nodes: &Nodes| -> BTreeSet<u64> {
        let ps = nodes.ps(&stack);
        ps.iter()
            .filter(|c| names.get(c["Node"].as_str().unwrap_or_default()).is_some_and(|n| n == "node2"))
            .filter_map(|c| c["Task"].as_u64())
            .collect()
    };
    let before = on_node2(&nodes);
    nodes.ok(&stack, &["node", "update", "node2", "--availability", "pause"]);
    nodes.ok(&stack, &["node", "update", "node3", "--availability", "active"]);
    nodes.ok(&stack, &["scale", "web=9"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 3), ("node2", 3), ("node3", 3)]);
    assert_eq!(on_node2(&nodes), before, "the paused node kept its tasks and took no new one");
}

#[test]
fn a_lost_node_tasks_run_elsewhere_and_its_return_duplicates_nothing() {
    let stack = Stack::new("lost");
    stack.compose(&compose(&[service("web", "{replicas: 6}")]));
    let mut nodes = Nodes::start(&THREE);
    nodes.ok(&stack, &["up", "-d"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 2), ("node2", 2), ("node3", 2)]);

    // The machine of node3 is lost: its agent dies, its containers stop. On this one shared
    // engine they keep their names, which the replacements on the other nodes would take (on
    // separate machines, names never meet): those are created under names of their own.
    let node3 = nodes.agent("node3");
    let lost = nodes.containers_of(node3);
    assert_eq!(lost.len(), 2);
    let lost_names: BTreeSet<String> = lost
        .iter()
        .map(|id| docker_ok(&["inspect", "-f", "{{.Name}}", id]).trim().trim_start_matches('/').to_string())
        .collect();
    let killed = Instant::now();
    nodes.kill_agent(node3);
    for id in &lost {
        docker_ok(&["stop", "-t", "1", id]);
    }
    let took = nodes.wait_for_placement(&stack, "web", &[("node1", 3), ("node2", 3)]);
    let since_kill = killed.elapsed();
    assert!(since_kill < DOWN_WINDOW, "rescheduled only {since_kill:?} after the node was lost (waited {took:?})");
    let inspected = nodes.inspect(&stack, "node3");
    assert_eq!(inspected["Status"], "down", "{inspected}");
    let listed = nodes.json(&stack, &["node", "ls", "--format", "json"]);
    let down = json_list(&listed).iter().find(|n| n["Hostname"] == "node3").expect("node ls lists node3");
    assert_eq!(down["Status"], "down", "{down}");
    assert!(down["StatusMessage"].as_str().is_some_and(|m| m.starts_with("no heartbeat for")), "{down}");
    // `ps` names the replacements as the engine does: `<name>-t<task>` for a lost slot's name.
    let ps = nodes.ps(&stack);
    let engine_names = running_containers(&stack);
    for c in &ps {
        let name = c["Name"].as_str().unwrap_or_default();
        assert!(engine_names.iter().any(|n| n == name), "ps lists {name}, the engine runs {engine_names:?}");
    }
    for lost_name in &lost_names {
        let replacement =
            ps.iter().filter_map(|c| c["Name"].as_str()).find(|n| n.starts_with(&format!("{lost_name}-t")));
        assert!(replacement.is_some(), "no replacement named after {lost_name}: {ps:?}");
    }
    eprintln!("the lost node's tasks ran elsewhere {since_kill:?} after it was lost");

    // It comes back (same state dir, same node): its stale containers go, nothing doubles.
    nodes.restart_agent(node3);
    poll("the returning node to remove its stale containers", Duration::from_secs(30), || {
        let left: Vec<String> = nodes.containers_of(node3);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    nodes.wait_for_placement(&stack, "web", &[("node1", 3), ("node2", 3)]);
    let ps = nodes.ps(&stack);
    let slots: Vec<u64> = ps.iter().filter_map(|c| c["Slot"].as_u64()).collect();
    assert_eq!(slots.iter().copied().collect::<BTreeSet<u64>>().len(), 6, "one task per slot: {slots:?}");
    assert_eq!(running_containers(&stack).len(), 6);
    let all = service_ps(&nodes, &stack, "web", true);
    assert!(all.iter().all(|t| t["Node"] != nodes.agents[node3].id.as_str()), "the lost tasks are forgotten: {all:?}");
    for id in &lost {
        assert_ne!(docker(&["inspect", id]).code, 0, "stale container {id} was removed");
    }
}

#[test]
fn a_global_service_follows_a_node_that_joins_later() {
    let stack = Stack::new("global");
    stack.compose(&compose(&[service("monitor", "{mode: global}")]));
    let mut nodes = Nodes::start(&THREE);
    nodes.ok(&stack, &["up", "-d"]);
    nodes.wait_for_placement(&stack, "monitor", &[("node1", 1), ("node2", 1), ("node3", 1)]);
    nodes.add_agent("node4", &["zone=north"]);
    nodes.wait_for_placement(&stack, "monitor", &[("node1", 1), ("node2", 1), ("node3", 1), ("node4", 1)]);
    let services = nodes.json(&stack, &["service", "ls", "--format", "json"]);
    let monitor = &json_list(&services)[0];
    assert_eq!((monitor["Mode"].as_str(), monitor["Desired"].as_u64()), (Some("global"), Some(4)));
    let out = nodes.run(&stack, &["scale", "monitor=2"]);
    assert_eq!(out.code, 1, "a global service cannot be scaled");
    // Drained, the node loses its task; active again, it gets one back.
    nodes.ok(&stack, &["node", "update", "node4", "--availability", "drain"]);
    nodes.wait_for_placement(&stack, "monitor", &[("node1", 1), ("node2", 1), ("node3", 1)]);
    nodes.ok(&stack, &["node", "update", "node4", "--availability", "active"]);
    nodes.wait_for_placement(&stack, "monitor", &[("node1", 1), ("node2", 1), ("node3", 1), ("node4", 1)]);
}

/// `logs -f` follows on through a connection reset while its manager stays (it used to end there).
#[test]
fn logs_follow_on_through_a_connection_reset_while_its_manager_stays() {
    use std::io::BufRead;
    let stack = Stack::new("mn-logs-reset");
    let nodes = Nodes::start(&THREE[..1]);
    stack.compose(&format!(
        "services:\n  ticker:\n    image: {IMAGE}\n    init: true\n    command: [sh, -c, 'while true; do echo tick; sleep 0.2; done']\n    stop_grace_period: 1s\nnetworks:\n  default: {{}}\n"
    ));
    let up = stack.run(&["-H", &nodes.addr(), "up", "-d", "--wait", "--timeout", "90"]);
    assert_eq!(up.code, 0, "up failed:\n{}", up.stderr);
    let relay = Relay::start(&nodes.addr());
    let mut follower = stack
        .shoal()
        .args(["-H", relay.address(), "logs", "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    let stdout = follower.stdout.take().expect("its stdout");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // On a missing line, what logs -f said (it ends when it gives up).
    let mut next_tick = |what: &str| match received.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => assert!(line.contains("tick"), "{what}: {line}"),
        Err(e) => {
            let _ = follower.kill();
            let stderr = follower.stderr.take().map(std::io::read_to_string);
            let status = follower.wait();
            let ps = stack.run(&["-H", &nodes.addr(), "ps", "-a"]);
            panic!(
                "{what}: no line from logs -f ({e}); it ended with {status:?}, stderr:\n{stderr:?}\nps -a:\n{}{}",
                ps.stdout, ps.stderr
            );
        }
    };
    next_tick("before the reset");
    assert!(relay.cut() >= 1, "logs -f holds a connection through the relay");
    // A line or two may have been on the way when the connection was cut; ten more (two
    // seconds of the ticker) come only from a stream opened again.
    for n in 0..10 {
        next_tick(&format!("line {n} after the reset"));
    }
    let still_following = follower.try_wait().expect("logs -f's status").is_none();
    let _ = follower.kill();
    let stopped = follower.wait_with_output().expect("logs -f's output");
    let _ = reader.join();
    assert!(still_following, "logs -f ended after the reset:\n{}", String::from_utf8_lossy(&stopped.stderr));
}

#[test]
fn up_waits_on_through_a_connection_reset_while_its_manager_stays() {
    let stack = Stack::new("mn-reset");
    let nodes = Nodes::start(&THREE[..1]);
    // Healthy only once the test says so: `up --wait` is still watching when the connection
    // is reset.
    stack.compose(&format!(
        "services:\n  web:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    stop_grace_period: 1s\n    healthcheck: {{test: [CMD, test, -f, /tmp/ready], interval: 300ms, retries: 1000}}\nnetworks:\n  default: {{}}\n"
    ));
    let relay = Relay::start(&nodes.addr());
    let up = std::thread::scope(|s| {
        let up = s.spawn(|| stack.run(&["-H", relay.address(), "up", "--wait", "--timeout", "90"]));
        let container = poll("web's container to run", Duration::from_secs(60), || {
            running_containers(&stack).pop().ok_or_else(|| "none yet".to_string())
        });
        assert!(relay.cut() >= 1, "the CLI holds a connection through the relay");
        docker_ok(&["exec", &container, "touch", "/tmp/ready"]);
        up.join().expect("the up thread")
    });
    assert_eq!(up.code, 0, "up --wait failed after the connection reset:\n{}", up.stderr);
}
