//! `shoal sim`: many hollow nodes in one process, for scale tests of the control plane.
//!
//! Each simulated node is the real agent (`shoal_agent::session::run_agent`: registration, its own
//! node id, heartbeats, the assignment stream, status reports) running its tasks on its own
//! in-memory engine (`MockEngine`) instead of Docker. The managers cannot tell them from real
//! nodes and treat them no differently. What the simulation changes is only what a node costs the
//! process: the sessions share a few HTTP/2 connections per manager (`ChannelPool`), each mock
//! engine keeps a small event buffer, node ids live in memory only, and nodes join in a ramp.
//!
//! It prints progress (nodes registered and ready; tasks assigned and acknowledged running) every
//! `--progress-every`, optionally also as CSV (`--csv`) for `scripts/sim`'s curves, and stops
//! cleanly on Ctrl-C or SIGTERM.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use shoal_agent::engine::mock::{MockBehavior, MockEngine};
use shoal_agent::engine::EngineInfo;
use shoal_agent::session::{run_agent, AgentConfig, AgentError, ChannelPool, SessionObserver};
use shoal_proto::v1 as pb;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::server::{parse_labels, wait_for_signal};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Manager addresses (comma-separated); the nodes follow the leader among them
    #[arg(long, value_delimiter = ',', required = true, value_name = "ADDR")]
    pub managers: Vec<String>,
    /// The worker join token (`shoal cluster join-token worker`)
    #[arg(long, env = "SHOAL_TOKEN", value_name = "TOKEN")]
    pub token: String,
    /// How many nodes to simulate
    #[arg(long, value_name = "N")]
    pub nodes: usize,
    /// CPUs each node reports
    #[arg(long, default_value_t = 4.0, value_name = "C")]
    pub cpus: f64,
    /// Memory each node reports (bytes, or with a unit: 512MiB, 8GiB, 16G)
    #[arg(long, default_value = "8GiB", value_parser = parse_bytes, value_name = "M")]
    pub memory: u64,
    /// How long a container takes to start
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, value_name = "D")]
    pub start_latency: Duration,
    /// The share of container starts that fail (0 to 1)
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate, value_name = "R")]
    pub failure_rate: f64,
    /// Node label, KEY=VALUE, on every node (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Also spread the nodes over this many zones: label `zone=z<i>` (0: no zone label)
    #[arg(long, default_value_t = 0, value_name = "Z")]
    pub zones: usize,
    /// Node names are PREFIX-1 … PREFIX-N (give two simulations different prefixes)
    #[arg(long, default_value = "sim", value_name = "PREFIX")]
    pub name_prefix: String,
    /// Nodes that start joining per second (a ramp, rather than all at once)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub ramp: usize,
    /// Nodes sharing one HTTP/2 connection to a manager (each holds a stream on it)
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub nodes_per_connection: usize,
    /// How often to print progress
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, value_name = "D")]
    pub progress_every: Duration,
    /// Also append the progress to this CSV file:
    /// unix_ms,elapsed_ms,registered,ready,assigned,running,current,heartbeat_max_ms,heartbeats_failed
    /// (the slowest heartbeat answer since the line before; failed heartbeats in all)
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
}

/// `512MiB`, `8GiB`, `16G`, `1048576`: binary units, case-insensitive, optional `B`/`iB`.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 512MiB, 8GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use KiB, MiB, GiB or TiB)")),
    };
    Ok((number * (1u64 << shift) as f64) as u64)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a rate between 0 and 1")),
    }
}

/// What the simulated nodes have done so far. Sets, not counters: a reconnecting session
/// receives its complete set and re-reports its statuses again, which must not count twice.
#[derive(Debug, Default)]
struct Tally {
    state: Mutex<TallyState>,
    /// The slowest heartbeat answer (ms) since the last progress line, and heartbeats that
    /// failed (timed out or refused) in all: a manager that hears no heartbeat marks the node
    /// down. Atomics, not the state's lock: 10,000 nodes heartbeat, and a heartbeat waiting
    /// for the lock while a large assignment is counted would itself be late.
    heartbeat_max_ms: AtomicU64,
    heartbeats_failed: AtomicUsize,
}

#[derive(Debug, Default)]
struct TallyState {
    registered: HashSet<String>,
    ready: HashSet<String>,
    /// Tasks a node was told to run.
    assigned: HashSet<u64>,
    /// Tasks whose `running` report the manager acknowledged.
    running: HashSet<u64>,
    /// Each node's tasks that it is told to run now, and their total.
    holding: HashMap<String, HashSet<u64>>,
    held: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    registered: usize,
    ready: usize,
    assigned: usize,
    running: usize,
    /// Tasks the nodes are told to run now (rescheduled ones count where they are now).
    current: usize,
    heartbeat_max: Duration,
    heartbeats_failed: usize,
}

impl Tally {
    fn lock(&self) -> MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counts so far; starts the next interval of the slowest heartbeat.
    fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            registered: st.registered.len(),
            ready: st.ready.len(),
            assigned: st.assigned.len(),
            running: st.running.len(),
            current: st.held,
            heartbeat_max: Duration::from_millis(self.heartbeat_max_ms.swap(0, Ordering::Relaxed)),
            heartbeats_failed: self.heartbeats_failed.load(Ordering::Relaxed),
        }
    }
}

impl SessionObserver for Tally {
    fn registered(&self, node: &str) {
        let mut st = self.lock();
        if !st.registered.contains(node) {
            st.registered.insert(node.to_string());
        }
    }

    fn assignments(&self, node: &str, message: &pb::Assignments) {
        let running = pb::DesiredState::Running as i32;
        let mut st = self.lock();
        if message.complete && !st.ready.contains(node) {
            st.ready.insert(node.to_string());
        }
        st.assigned.extend(message.changed.iter().filter(|a| a.desired == running).map(|a| a.task));
        let st = &mut *st;
        let holding = st.holding.entry(node.to_string()).or_default();
        let before = holding.len();
        if message.complete {
            holding.clear();
        }
        for a in &message.changed {
            if a.desired == running {
                holding.insert(a.task);
            } else {
                holding.remove(&a.task);
            }
        }
        for task in &message.removed {
            holding.remove(task);
        }
        st.held = st.held + holding.len() - before;
    }

    fn acknowledged(&self, _node: &str, statuses: &[pb::TaskStatus]) {
        let running = pb::TaskState::Running as i32;
        let mut st = self.lock();
        st.running.extend(statuses.iter().filter(|s| s.state == running).map(|s| s.task));
    }

    fn heartbeat(&self, _node: &str, round_trip: Option<Duration>) {
        match round_trip {
            Some(took) => {
                let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                self.heartbeat_max_ms.fetch_max(ms, Ordering::Relaxed);
            }
            None => {
                self.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes progress lines to stdout and, with `--csv`, to the CSV file.
struct Progress {
    started: Instant,
    csv: Option<tokio::fs::File>,
    nodes: usize,
}

impl Progress {
    async fn report(&mut self, counts: Counts, last: bool) -> anyhow::Result<()> {
        let elapsed = self.started.elapsed();
        println!(
            "sim: {:>7.1}s  nodes registered {}/{}, ready {}  tasks assigned {}, running {}, held now {}  heartbeats: slowest {} ms, failed {}{}",
            elapsed.as_secs_f64(),
            counts.registered,
            self.nodes,
            counts.ready,
            counts.assigned,
            counts.running,
            counts.current,
            counts.heartbeat_max.as_millis(),
            counts.heartbeats_failed,
            if last { "  (final)" } else { "" }
        );
        if let Some(csv) = &mut self.csv {
            let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
            let line = format!(
                "{unix_ms},{},{},{},{},{},{},{},{}\n",
                elapsed.as_millis(),
                counts.registered,
                counts.ready,
                counts.assigned,
                counts.running,
                counts.current,
                counts.heartbeat_max.as_millis(),
                counts.heartbeats_failed
            );
            // Flushed, so that `scripts/sim` reads every line as soon as it is written.
            csv.write_all(line.as_bytes()).await.context("writing the progress CSV")?;
            csv.flush().await.context("writing the progress CSV")?;
        }
        Ok(())
    }
}

pub async fn run(args: &SimArgs) -> anyhow::Result<i32> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if args.token.trim().is_empty() {
        bail!("--token is empty: get one with `shoal -H MANAGER cluster join-token worker`");
    }
    if args.ramp == 0 || args.nodes_per_connection == 0 {
        bail!("--ramp and --nodes-per-connection must be at least 1");
    }
    let mut labels = parse_labels(&args.labels)?;
    labels.sort();
    let csv = match &args.csv {
        Some(path) => {
            let mut file =
                tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(
                b"unix_ms,elapsed_ms,registered,ready,assigned,running,current,heartbeat_max_ms,heartbeats_failed\n",
            )
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
            Some(file)
        }
        None => None,
    };
    // Every session holds one stream on its connection; leave room for its unary calls below
    // the server's 200 concurrent streams per connection.
    let connections = args.nodes.div_ceil(args.nodes_per_connection.min(150));
    let pool = Arc::new(ChannelPool::new(connections, Duration::from_secs(3)));
    let tally = Arc::new(Tally::default());
    let behavior =
        MockBehavior { start_latency: args.start_latency, start_failure_rate: args.failure_rate, ..Default::default() };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let mut progress = Progress { started: Instant::now(), csv, nodes: args.nodes };
    println!(
        "sim: {} nodes ({} CPUs, {} bytes each) joining {} at {}/s over {connections} connection(s) per manager",
        args.nodes,
        args.cpus,
        args.memory,
        args.managers.join(","),
        args.ramp
    );

    let mut agents: JoinSet<Result<(), AgentError>> = JoinSet::new();
    let mut ramp = tokio::time::interval(Duration::from_millis(100));
    let per_tick = args.ramp.div_ceil(10);
    let mut every = tokio::time::interval(args.progress_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = 0;
    let mut failures: HashMap<String, usize> = HashMap::new();
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            result = &mut signal => {
                result?;
                eprintln!("sim: stopping");
                break;
            }
            _ = ramp.tick(), if started < args.nodes => {
                for _ in 0..per_tick.min(args.nodes - started) {
                    started += 1;
                    let name = format!("{}-{started}", args.name_prefix);
                    let mut node_labels: std::collections::BTreeMap<String, String> = labels.iter().cloned().collect();
                    if args.zones > 0 {
                        node_labels.insert("zone".into(), format!("z{}", started % args.zones));
                    }
                    let engine = MockEngine::with_event_capacity(64);
                    engine.set_info(EngineInfo {
                        hostname: name.clone(),
                        nano_cpus: (args.cpus * 1e9) as u64,
                        memory_bytes: args.memory,
                        engine_version: "shoal-sim".into(),
                        ..EngineInfo::default()
                    });
                    engine.behave_by_default(behavior.clone());
                    let mut config = AgentConfig::new(args.managers.clone(), args.token.clone());
                    config.name = Some(name);
                    config.labels = node_labels;
                    config.channels = Some(pool.clone());
                    config.observer = Some(tally.clone());
                    agents.spawn(run_agent(config, Arc::new(engine), shutdown.clone()));
                }
            }
            _ = every.tick() => progress.report(tally.counts(), false).await?,
            Some(ended) = agents.join_next() => {
                // An agent ends on its own only on a fatal error (a refused token, a bad address).
                let reason = match ended {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("the node's task failed: {e}"),
                };
                let seen = failures.entry(reason.clone()).or_default();
                if *seen == 0 {
                    eprintln!("sim: a node stopped: {reason}");
                }
                *seen += 1;
                if agents.is_empty() && started == args.nodes {
                    eprintln!("sim: every node stopped");
                    progress.report(tally.counts(), true).await?;
                    return Ok(1);
                }
            }
        }
    }
    shutdown_tx.send_replace(true);
    // Sessions end at once on the signal; containers are in memory and go with the process.
    let drain = async { while agents.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
        eprintln!("sim: some nodes did not stop within 10s");
    }
    progress.report(tally.counts(), true).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates_parse() {
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("512mib"), Ok(512 << 20));
        assert_eq!(parse_bytes("16G"), Ok(16 << 30));
        assert_eq!(parse_bytes("1024"), Ok(1024));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert_eq!(parse_rate("0.01"), Ok(0.01));
        assert!(parse_rate("1.5").is_err());
    }

    #[test]
    fn the_tally_counts_each_node_and_task_once() {
        let tally = Tally::default();
        tally.registered("a");
        tally.registered("a");
        let assignment = |task, desired: pb::DesiredState| pb::Assignment {
            task,
            desired: desired as i32,
            ..pb::Assignment::default()
        };
        let first = pb::Assignments {
            sequence: 1,
            complete: true,
            changed: vec![assignment(1, pb::DesiredState::Running), assignment(2, pb::DesiredState::Shutdown)],
            ..pb::Assignments::default()
        };
        tally.assignments("a", &first);
        // A reconnect: the complete set again.
        tally.assignments("a", &first);
        let status = |task, state: pb::TaskState| pb::TaskStatus { task, state: state as i32, ..Default::default() };
        tally.acknowledged("a", &[status(1, pb::TaskState::Starting)]);
        tally.acknowledged("a", &[status(1, pb::TaskState::Running)]);
        tally.acknowledged("a", &[status(1, pb::TaskState::Running)]);
        tally.heartbeat("a", Some(Duration::from_millis(30)));
        tally.heartbeat("a", Some(Duration::from_millis(1200)));
        tally.heartbeat("a", None);
        let quiet = |counts: Counts| Counts { heartbeat_max: Duration::ZERO, heartbeats_failed: 0, ..counts };
        let counts = tally.counts();
        assert_eq!((counts.heartbeat_max, counts.heartbeats_failed), (Duration::from_millis(1200), 1));
        assert_eq!(
            quiet(counts),
            Counts { registered: 1, ready: 1, assigned: 1, running: 1, current: 1, ..quiet(counts) }
        );
        // Task 1 moves away, task 3 arrives, and task 4 comes and goes.
        let diff = pb::Assignments {
            sequence: 2,
            complete: false,
            changed: vec![
                assignment(1, pb::DesiredState::Shutdown),
                assignment(3, pb::DesiredState::Running),
                assignment(4, pb::DesiredState::Running),
            ],
            removed: vec![4],
            more: false,
        };
        tally.assignments("a", &diff);
        tally.assignments("b", &pb::Assignments { sequence: 1, complete: true, ..diff.clone() });
        let counts = tally.counts();
        // The slowest heartbeat is per line; failures add up.
        assert_eq!((counts.heartbeat_max, counts.heartbeats_failed), (Duration::ZERO, 1));
        assert_eq!(
            quiet(counts),
            Counts { registered: 1, ready: 2, assigned: 3, running: 1, current: 2, ..quiet(counts) }
        );
    }
}
