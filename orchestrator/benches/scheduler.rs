//! Scheduler micro-benchmark (no framework): placements per second for 10,000 pending tasks of
//! one service onto 1,000 and onto 10,000 nodes. The service reserves CPU and memory, has a
//! constraint (`node.labels.pool!=batch`, which one node in ten fails) and spreads over ten
//! zones (`spread: node.labels.zone`); every node is ready and active with room for all.
//!
//! Each case times `schedule()` over the same snapshot (it is pure): one warm-up, then
//! `SHOAL_BENCH_ITERS` (default 5) timed runs; prints the median and placements per second.
//!
//! The steady case times what the leader does over and over once a large deploy is placed: a
//! whole orchestration round (reconcile, schedule, rebalance) over 100,000 placed tasks on 10,000
//! nodes with nothing to decide, and a copy of that state (what a round works on, so that it
//! does not hold the state's lock, which the raft thread needs to apply). Then a tenth of the
//! nodes go down, and it times the scheduler placing their tasks' replacements.
//!
//! Run with `cargo bench -p shoal-orchestrator --bench scheduler`. Without `--bench` on the
//! command line (as `cargo test --all-targets` runs it) it schedules a small cluster once.

use std::time::{Duration, Instant};

use shoal_orchestrator::reconciler::reconcile;
use shoal_orchestrator::scheduler::rebalance::rebalance_all;
use shoal_orchestrator::scheduler::schedule;
use shoal_orchestrator::store::command::{Command, ServiceDeployment};
use shoal_orchestrator::store::state::{Availability, ClusterState, Node, NodeRole, NodeStatus, ServiceMode};

const SPEC: &str = "{image: app, deploy: {resources: {reservations: {cpus: '0.01', memory: 16m}}, \
                    placement: {constraints: ['node.labels.pool!=batch'], preferences: [{spread: node.labels.zone}]}}}";
const ZONES: usize = 10;

fn node(i: usize) -> Node {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("zone".to_string(), format!("zone-{}", i % ZONES));
    // One node in ten is a batch node, and every zone has some.
    let pool = if (i + i / 10) % 10 == 7 { "batch" } else { "app" };
    labels.insert("pool".to_string(), pool.to_string());
    Node {
        id: format!("node-{i:05}"),
        hostname: format!("host-{i:05}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        nano_cpus: 64_000_000_000,
        memory_bytes: 256 << 30,
        labels,
        os: "linux".into(),
        arch: "amd64".into(),
        engine_version: "27.0".into(),
        address: None,
        status_message: String::new(),
        updated_at: 0,
    }
}

/// `nodes` nodes and `services` services whose `tasks` replicas (in all) are all pending.
fn cluster(nodes: usize, tasks: u64, services: u64) -> Result<ClusterState, String> {
    let mut state = ClusterState::default();
    for i in 0..nodes {
        state.apply(Command::RegisterNode { node: Box::new(node(i)) });
    }
    let spec: shoal_orchestrator::compose::model::Service =
        serde_yaml::from_str(SPEC).map_err(|e| format!("bad spec: {e}"))?;
    let deployments = (0..services)
        .map(|i| ServiceDeployment {
            name: if services == 1 { "web".into() } else { format!("web{i:03}") },
            spec: spec.clone(),
            config_hash: format!("h{i}"),
            mode: ServiceMode::Replicated,
            replicas: tasks / services + u64::from(i < tasks % services),
        })
        .collect();
    let result = state.apply(Command::DeployStack {
        stack: "bench".into(),
        project: Box::default(),
        services: deployments,
        remove_orphans: false,
        only: Vec::new(),
        recreate: Default::default(),
        at: 0,
        request_id: String::new(),
    });
    if let Some(error) = result.error {
        return Err(error);
    }
    for command in reconcile(&state, 0) {
        state.apply(command);
    }
    Ok(state)
}

/// One `schedule()`: its duration and how many tasks it placed.
fn run_once(state: &ClusterState) -> (Duration, usize) {
    let started = Instant::now();
    let commands = schedule(state, 0);
    let elapsed = started.elapsed();
    let placed = commands
        .iter()
        .map(|c| match c {
            Command::AssignTasks { assignments, .. } => assignments.len(),
            _ => 0,
        })
        .sum();
    (elapsed, placed)
}

fn case(nodes: usize, tasks: u64, iterations: usize) -> Result<(), String> {
    let state = cluster(nodes, tasks, 1)?;
    let (_, placed) = run_once(&state);
    if placed as u64 != tasks {
        return Err(format!("{nodes} nodes: placed {placed} of {tasks} tasks"));
    }
    let mut times: Vec<Duration> = (0..iterations).map(|_| run_once(&state).0).collect();
    times.sort();
    let median = times[times.len() / 2];
    let per_second = placed as f64 / median.as_secs_f64();
    println!(
        "  {tasks:>6} tasks onto {nodes:>6} nodes: median {:>8.1} ms (min {:.1}, max {:.1})   {:>10.0} placements/s",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        per_second
    );
    Ok(())
}

/// The median of `iterations` timed runs of `f` (after one warm-up).
fn median_of<T>(iterations: usize, mut f: impl FnMut() -> T) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(f());
            started.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// What the leader's orchestration loop decides in one round over `state`.
fn round_over(state: &ClusterState) -> impl FnMut() -> Vec<Command> + '_ {
    || {
        let mut commands = reconcile(state, 1);
        commands.extend(schedule(state, 1));
        commands.extend(rebalance_all(state, 1));
        commands
    }
}

/// A round and a copy of the state, once `tasks` of `services` are placed on `nodes` (see the
/// module docs).
fn steady(nodes: usize, tasks: u64, services: u64, iterations: usize) -> Result<(), String> {
    let mut state = cluster(nodes, tasks, services)?;
    for command in schedule(&state, 0) {
        state.apply(command);
    }
    let mut round = round_over(&state);
    let left = round().len();
    if left != 0 {
        return Err(format!("a settled state still has {left} commands to propose"));
    }
    let round = median_of(iterations, round);
    let copy = median_of(iterations, || state.clone());
    println!(
        "  steady: {tasks} placed tasks of {services} service(s) on {nodes} nodes: a round {:.1} ms, a copy of the state {:.1} ms",
        round.as_secs_f64() * 1e3,
        copy.as_secs_f64() * 1e3
    );
    // A tenth of the nodes lost: the round that places their tasks' replacements elsewhere.
    let lost: Vec<String> = state.nodes.keys().take(nodes / 10).cloned().collect();
    for node in &lost {
        state.apply(Command::SetNodeStatus {
            node: node.clone(),
            status: NodeStatus::Down,
            message: String::new(),
            at: 1,
        });
    }
    for _ in 0..2 {
        // Orphaned first, replaced in the next round.
        for command in reconcile(&state, 1) {
            state.apply(command);
        }
    }
    let pending = state.tasks.values().filter(|t| t.node.is_none()).count();
    let placing = median_of(iterations, || schedule(&state, 1));
    println!(
        "  {} of {nodes} nodes lost: placing their {pending} tasks elsewhere takes {:.1} ms",
        lost.len(),
        placing.as_secs_f64() * 1e3
    );
    // Settled again, the lost nodes still down (as they stay until removed): what every round
    // costs from then on, and the copy it works on.
    for _ in 0..5 {
        let commands = round_over(&state)();
        if commands.is_empty() {
            break;
        }
        for command in commands {
            state.apply(command);
        }
    }
    let round = median_of(iterations, round_over(&state));
    let copy = median_of(iterations, || state.clone());
    println!(
        "  settled again with them down: a round {:.1} ms, a copy of the state {:.1} ms",
        round.as_secs_f64() * 1e3,
        copy.as_secs_f64() * 1e3
    );
    Ok(())
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let iterations: usize = std::env::var("SHOAL_BENCH_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1);
    let cases: &[(usize, u64)] = if bench_mode { &[(1_000, 10_000), (10_000, 10_000)] } else { &[(100, 300)] };
    println!("scheduler: one service, constraint node.labels.pool!=batch, spread over {ZONES} zones, reservations");
    for (nodes, tasks) in cases {
        if let Err(e) = case(*nodes, *tasks, if bench_mode { iterations } else { 1 }) {
            eprintln!("scheduler bench failed: {e}");
            std::process::exit(1);
        }
    }
    // SHOAL_BENCH_STEADY_TASKS: the steady state's size (default 100,000), e.g. 1,000,000 to see
    // what a round costs at the 1,000,000-task target.
    let steady_tasks = std::env::var("SHOAL_BENCH_STEADY_TASKS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let (nodes, tasks) = if bench_mode { (10_000, steady_tasks) } else { (100, 1_000) };
    // One service, and as many as `scripts/sim` deploys at 100,000 tasks (a round's work per
    // service shows only with many).
    for services in [1, 100] {
        if let Err(e) = steady(nodes, tasks, services, if bench_mode { iterations } else { 1 }) {
            eprintln!("scheduler bench failed: {e}");
            std::process::exit(1);
        }
    }
    if !bench_mode {
        println!("scheduler bench: smoke run ok (pass --bench to measure)");
    }
}
