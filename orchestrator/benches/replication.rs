//! Replicated writes through three managers in one process, over real gRPC on loopback, each
//! with its own redb file fsynced on every write (the production write path: JSON-encoded
//! commands, `Cluster::propose_all`, the gRPC raft transport, forwarding from followers).
//!
//! Run: `cargo bench -p shoal-orchestrator --bench replication`
//! Quick run: `REPLICATION_BENCH_SCALE=0.1 cargo bench -p shoal-orchestrator --bench replication`

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_orchestrator::manager::server::{bind, Replication};
use shoal_orchestrator::manager::{Cluster, Manager, ManagerConfig};
use shoal_orchestrator::store::command::Command;
use shoal_orchestrator::store::raft::Bootstrap;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>, total: Duration, writes: usize) {
    samples.sort_unstable();
    println!(
        "{name:<58} p50 {:>8.3} ms  p99 {:>8.3} ms  {:>9.0} writes/s",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        writes as f64 / total.as_secs_f64()
    );
}

/// A command that changes nothing: the measurement is the replicated log, not the state.
fn noop() -> Command {
    Command::ForgetTasks { tasks: Vec::new() }
}

async fn start_three(dir: &Path) -> Vec<Manager> {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(bind("127.0.0.1:0").await.expect("bind"));
    }
    let addresses: Vec<(u64, String)> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().expect("address").to_string()))
        .collect();
    let mut managers = Vec::new();
    for (listener, (id, address)) in listeners.into_iter().zip(addresses.clone()) {
        let state_dir = dir.join(format!("m{id}"));
        let mut config = ManagerConfig::new(&state_dir, address.clone(), "bench");
        config.raft.id = id;
        config.raft.bootstrap = Bootstrap::Voters(vec![1, 2, 3]);
        config.replication = Some(Replication {
            name: format!("m{id}"),
            advertise: address,
            seed_peers: addresses.clone(),
            contact_window: Duration::from_secs(2),
        });
        managers.push(Manager::start_on(listener, config).await.expect("manager"));
    }
    managers
}

async fn sequential(cluster: &Cluster, n: usize) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        cluster.propose(noop()).await.expect("write");
        samples.push(t.elapsed());
    }
    (samples, started.elapsed())
}

/// `in_flight` concurrent proposers, each sending `batches` batches of `size` commands.
async fn batched(cluster: &Cluster, batches: usize, size: usize, in_flight: usize) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(batches);
            for _ in 0..batches {
                let t = Instant::now();
                cluster.propose_all((0..size).map(|_| noop()).collect()).await.expect("batch");
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("proposer"));
    }
    (samples, started.elapsed())
}

fn main() {
    let scale: f64 = std::env::var("REPLICATION_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir");
    println!(
        "replicated writes: 3 managers in one process, gRPC over loopback, fsync per write; {}",
        base.path().display()
    );
    runtime.block_on(async {
        let managers = start_three(base.path()).await;
        let leader = managers[0]
            .cluster
            .raft()
            .wait_for(Duration::from_secs(30), |s| s.leader.is_some())
            .await
            .expect("a leader")
            .leader
            .expect("leader id");
        let on_leader = managers.iter().find(|m| m.cluster.raft().id() == leader).expect("leader").cluster.clone();
        let on_follower = managers.iter().find(|m| m.cluster.raft().id() != leader).expect("follower").cluster.clone();
        on_leader.raft().wait_for(Duration::from_secs(30), |s| s.is_leader()).await.expect("leader ready");
        let _ = sequential(&on_leader, n(100)).await;
        let (s, t) = sequential(&on_leader, n(1000)).await;
        report("single write on the leader (1 client)", s, t, n(1000));
        let (s, t) = sequential(&on_follower, n(1000)).await;
        report("single write via a follower (forwarded)", s, t, n(1000));
        let (s, t) = batched(&on_leader, n(50), 1000, 4).await;
        report("batches of 1000 on the leader, 4 in flight (per batch)", s, t, n(50) * 4 * 1000);
        let (s, t) = batched(&on_follower, n(50), 1000, 4).await;
        report("batches of 1000 via a follower, 4 in flight (per batch)", s, t, n(50) * 4 * 1000);
        let status = on_leader.raft().status();
        println!(
            "  (applied {} entries; snapshot at {}, log starts at {})",
            status.applied_index, status.snapshot_index, status.first_index
        );
        for manager in managers {
            manager.shutdown().await;
        }
    });
}
