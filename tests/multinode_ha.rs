//! Three managers and three agents: a highly-available control plane (`shoal server --no-agent`
//! ×3, Raft over gRPC on loopback) and three `shoal agent` nodes joined with the worker token and
//! given every manager's address, all on the one local Docker engine. One story, in order:
//! spread and a pinned service; the leader crashes (`kill -9`) and nothing on the nodes notices
//! but the new address; a node's machine is lost and its tasks run elsewhere; it comes back and
//! duplicates nothing; a node is drained.
//!
//! The `Stack` is declared before the `Nodes`, so that the agents are gone before the stack's
//! objects are removed (see `support/multinode.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use shoal_tests::managers::{poll, SETTLE};
use shoal_tests::multinode::Nodes;
use shoal_tests::stack::{docker, docker_ok, inspect, Stack, IMAGE};

/// node2 is the only node with an SSD: the pinned service's constraint.
const THREE: [(&str, &[&str]); 3] =
    [("node1", &["zone=a"]), ("node2", &["zone=b", "disk=ssd"]), ("node3", &["zone=c"])];

/// `shoal server`'s default `--node-down-after`: a ready node not heard from for this long is
/// marked down (heartbeats every 2 s).
const DOWN_AFTER: Duration = Duration::from_secs(6);

/// How long a lost node may take to be noticed and its tasks to run elsewhere: [`DOWN_AFTER`],
/// the monitor's check period (0.5 s), placing and starting the replacements; the rest is margin
/// for a loaded machine.
const DOWN_WINDOW: Duration = Duration::from_secs(25);

fn compose() -> String {
    let service = |name: &str, deploy: &str| {
        format!(
            "  {name}:\n    image: {IMAGE}\n    init: true\n    command: [sleep, '600']\n    stop_grace_period: 1s\n    deploy: {deploy}\n"
        )
    };
    format!(
        "services:\n{}{}networks:\n  default: {{}}\n",
        service("web", "{replicas: 6}"),
        service("pinned", "{replicas: 2, placement: {constraints: ['node.labels.disk==ssd']}}"),
    )
}

/// What the engine says of one container: enough to tell that it was never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Engine {
    name: String,
    running: bool,
    started_at: String,
    restarts: u64,
}

/// The stack's containers on the engine, by id.
fn engine_view(stack: &Stack) -> BTreeMap<String, Engine> {
    stack
        .container_ids()
        .into_iter()
        .map(|id| {
            let c = inspect(&id);
            let view = Engine {
                name: c["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string(),
                running: c["State"]["Running"] == true,
                started_at: c["State"]["StartedAt"].as_str().unwrap_or_default().to_string(),
                restarts: c["RestartCount"].as_u64().unwrap_or(0),
            };
            (id, view)
        })
        .collect()
}

/// Names of the stack's running containers of `service`, per the engine.
fn running_on_engine(stack: &Stack, service: &str) -> Vec<String> {
    let project = format!("label=com.docker.compose.project={}", stack.name);
    let service = format!("label=com.docker.compose.service={service}");
    let out = docker_ok(&["ps", "--filter", &project, "--filter", &service, "--format", "{{.Names}}"]);
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

/// Checks `check` every 100 ms for `period`; panics on the first failure, with what it said.
fn hold(what: &str, period: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + period;
    while Instant::now() < until {
        if let Err(e) = check() {
            panic!("{what} stopped holding: {e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `name@node:state slot reason` of each listed container, for failure messages.
fn summary(ps: &[Json], names: &BTreeMap<String, String>) -> String {
    ps.iter()
        .map(|c| {
            let node = c["Node"].as_str().unwrap_or_default();
            let node = names.get(node).map_or(node, String::as_str);
            format!(
                "{}@{node}:{} slot {} {}",
                c["Name"].as_str().unwrap_or_default(),
                c["State"],
                c["Slot"],
                c["Reason"]
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until `service` runs `total` containers, all on nodes of `on` (agent names), each of
/// its slots 1..=total exactly once in `ps`, and the engine runs exactly `total` of its
/// containers (no slot doubled anywhere), within `timeout`; returns the running count per node.
fn wait_for_slots(
    nodes: &Nodes,
    stack: &Stack,
    service: &str,
    total: u64,
    on: &[&str],
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let names = nodes.names();
    let wanted: BTreeSet<u64> = (1..=total).collect();
    poll(&format!("{service}'s {total} slots to run once each on {on:?}"), timeout, || {
        let ps: Vec<Json> = nodes.ps(stack).into_iter().filter(|c| c["Service"] == service).collect();
        let placement = nodes.placement(stack, service);
        let slots: Vec<u64> = ps.iter().filter_map(|c| c["Slot"].as_u64()).collect();
        let distinct: BTreeSet<u64> = slots.iter().copied().collect();
        let running = placement.values().sum::<usize>() as u64;
        let elsewhere: Vec<&String> = placement.keys().filter(|n| !on.contains(&n.as_str())).collect();
        let engine = running_on_engine(stack, service);
        let settled = running == total
            && ps.len() as u64 == total
            && distinct == wanted
            && slots.len() == distinct.len()
            && elsewhere.is_empty()
            && engine.len() as u64 == total;
        if settled {
            return Ok(placement);
        }
        // What the tasks that should run but do not say (`service ps -a`: with their reasons).
        let tasks = nodes.run(stack, &["service", "ps", service, "-a", "--format", "json"]);
        let waiting = match serde_json::from_str::<Json>(&tasks.stdout) {
            Ok(Json::Array(all)) => {
                let waiting: Vec<Json> =
                    all.into_iter().filter(|t| t["DesiredState"] == "running" && t["State"] != "running").collect();
                summary(&waiting, &names)
            }
            _ => format!("(service ps exited {}: {}{})", tasks.code, tasks.stdout, tasks.stderr),
        };
        Err(format!(
            "running per node {placement:?}; slots in ps {slots:?}; the engine runs {} ({engine:?}); ps: {}; \
             tasks not running: {waiting}",
            engine.len(),
            summary(&ps, &names),
        ))
    })
}

/// How many times agent `i` registered with the manager listening on `port`.
fn registrations_with(nodes: &Nodes, i: usize, port: u16) -> usize {
    let at = format!(":{port}");
    nodes
        .log(i)
        .lines()
        .filter(|l| {
            l.contains("registered") && l.split_whitespace().any(|w| w.starts_with("manager=") && w.ends_with(&at))
        })
        .count()
}

#[test]
fn three_managers_and_three_agents_ride_out_a_leader_crash_a_lost_node_and_a_drain() {
    let stack = Stack::new("ha-nodes");
    stack.compose(&compose());
    let mut nodes = Nodes::start_ha(3, &THREE);
    let all_hosts = nodes.managers.hosts();
    assert_eq!(all_hosts.split(',').count(), 3);

    // The pinned service runs on the one node its constraint fits; then web spreads 2/2/2. (The
    // pinned service goes first so that one agent creates the stack's network. Agents sharing an
    // engine that create it at once leave duplicates for a moment; an engine in swarm mode (as
    // while `scripts/bench up` runs) then fails a container's start with "Could not attach to
    // network ...: NotFound" instead of "ambiguous", which the agent does not retry. That race
    // is the multinode tests' business, not this one's.)
    nodes.ok(&stack, &["up", "-d", "pinned"]);
    nodes.wait_for_placement(&stack, "pinned", &[("node2", 2)]);
    nodes.ok(&stack, &["up", "-d"]);
    nodes.wait_for_placement(&stack, "web", &[("node1", 2), ("node2", 2), ("node3", 2)]);
    nodes.wait_for_placement(&stack, "pinned", &[("node2", 2)]);

    // ---- The leader crashes. The agents' containers must not notice.
    let before = engine_view(&stack);
    assert_eq!(before.len(), 8, "{before:?}");
    assert!(before.values().all(|c| c.running), "{before:?}");
    let untouched = |when: &str| -> Result<(), String> {
        let now = engine_view(&stack);
        if now == before {
            Ok(())
        } else {
            Err(format!("{when}: the containers changed:\nbefore {before:#?}\nnow {now:#?}"))
        }
    };
    let leader = nodes.managers.wait_for_leader(&[0, 1, 2]);
    let old_id = nodes.managers.list[leader].id;
    nodes.managers.kill(leader);
    let survivors = nodes.managers.running();
    let new_leader = nodes.managers.wait_for_leader(&survivors);
    let elected = Instant::now();
    assert_ne!(nodes.managers.list[new_leader].id, old_id, "the killed manager still leads");

    // Every agent follows it: it registers with the new leader and keeps its node ready.
    let port = nodes.managers.list[new_leader].port;
    for i in 0..nodes.agents.len() {
        let name = nodes.agents[i].name.clone();
        poll(&format!("{name} to register with the new leader (port {port})"), SETTLE, || {
            match registrations_with(&nodes, i, port) {
                0 => Err(nodes.log_tail(i, 10)),
                _ => Ok(()),
            }
        });
    }
    for (name, _) in THREE {
        nodes.wait_for_node(name, "ready", |n| n["Status"] == "ready");
    }
    untouched("after the agents followed the new leader").unwrap_or_else(|e| panic!("{e}"));

    // The CLI, given all three addresses (one of them dead), scales across the agents.
    let out = stack.run(&["-H", &all_hosts, "scale", "web=9"]);
    assert_eq!(out.code, 0, "scale web=9 through {all_hosts} exited {}:\n{}", out.code, out.stderr);
    nodes.wait_for_placement(&stack, "web", &[("node1", 3), ("node2", 3), ("node3", 3)]);
    nodes.wait_for_placement(&stack, "pinned", &[("node2", 2)]);

    // Past the new leader's down window (its monitor starts every node's grace period when it
    // takes over, checking every 0.5 s), the nodes are still ready and the first containers
    // still the same: the agents heartbeat the new leader.
    let names = ["node1", "node2", "node3"];
    let mut inspect_args = vec!["node", "inspect"];
    inspect_args.extend(names);
    inspect_args.extend(["--format", "json"]);
    let remaining = (elected + DOWN_AFTER + Duration::from_secs(2)).saturating_duration_since(Instant::now());
    hold("every node ready under the new leader", remaining, || {
        let out = nodes.run(&stack, &inspect_args);
        if out.code != 0 {
            return Err(format!("node inspect exited {}: {}", out.code, out.stderr));
        }
        let all: Json = serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {}", out.stdout))?;
        let statuses: Vec<(&str, &str)> = all
            .as_array()
            .map(|a| {
                a.iter().map(|n| (n["Hostname"].as_str().unwrap_or("?"), n["Status"].as_str().unwrap_or("?"))).collect()
            })
            .unwrap_or_default();
        if statuses.len() == 3 && statuses.iter().all(|(_, s)| *s == "ready") {
            Ok(())
        } else {
            Err(format!("{statuses:?}"))
        }
    });
    let after: BTreeMap<String, Engine> =
        engine_view(&stack).into_iter().filter(|(id, _)| before.contains_key(id)).collect();
    assert_eq!(after, before, "the first 8 containers were touched across the leader crash");

    // ---- node3's machine is lost: its agent dies and its containers stop.
    let node3 = nodes.agent("node3");
    let node3_id = nodes.agents[node3].id.clone();
    let lost = nodes.containers_of(node3);
    assert_eq!(lost.len(), 3, "node3 runs 3 web containers: {lost:?}");
    let killed = Instant::now();
    nodes.kill_agent(node3);
    for id in &lost {
        docker_ok(&["stop", "-t", "1", id]);
    }
    // Its slots run on node1 and node2, once each. (On one shared engine the lost containers
    // keep their names, which the replacements reuse: this needs the replacements not to
    // collide with a stopped container of another node.)
    let placement = wait_for_slots(&nodes, &stack, "web", 9, &["node1", "node2"], DOWN_WINDOW);
    let since_kill = killed.elapsed();
    assert!(since_kill < DOWN_WINDOW, "the lost node's tasks ran elsewhere only {since_kill:?} after it was lost");
    eprintln!("node3's tasks ran on node1/node2 ({placement:?}) {since_kill:?} after it was lost");
    let inspected = nodes.inspect(&stack, "node3");
    assert_eq!(inspected["Status"], "down", "{inspected}");
    nodes.wait_for_placement(&stack, "pinned", &[("node2", 2)]);

    // ---- It comes back (same state dir, same node): its stale containers go, nothing doubles.
    nodes.restart_agent(node3);
    poll("the returning node to remove its stale containers", Duration::from_secs(30), || {
        let left = nodes.containers_of(node3);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}\n{}", nodes.log_tail(node3, 10)))
        }
    });
    for id in &lost {
        assert_ne!(docker(&["inspect", id]).code, 0, "stale container {id} was removed");
    }
    let settled = wait_for_slots(&nodes, &stack, "web", 9, &["node1", "node2"], SETTLE);
    assert_eq!(settled, placement, "the return moved nothing");
    let history = nodes.json(&stack, &["service", "ps", "web", "-a", "--format", "json"]);
    let on_node3: Vec<&Json> =
        history.as_array().map(|a| a.iter().filter(|t| t["Node"] == node3_id.as_str()).collect()).unwrap_or_default();
    assert!(on_node3.is_empty(), "the lost node's tasks are forgotten: {on_node3:?}");

    // ---- node1 is drained: its tasks move to node2 and the returned node3.
    let node1 = nodes.agent("node1");
    nodes.ok(&stack, &["node", "update", "node1", "--availability", "drain"]);
    let drained = wait_for_slots(&nodes, &stack, "web", 9, &["node2", "node3"], Duration::from_secs(60));
    assert!(drained.get("node3").is_some_and(|n| *n > 0), "the returned node takes tasks again: {drained:?}");
    poll("the drained node's containers to be removed", Duration::from_secs(30), || {
        let left = nodes.containers_of(node1);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    nodes.wait_for_placement(&stack, "pinned", &[("node2", 2)]);
    assert_eq!(running_on_engine(&stack, "web").len(), 9);
    assert_eq!(nodes.inspect(&stack, "node1")["Availability"], "drain");
}
