//! Raft store micro-benchmark (no criterion): single-node propose latency and throughput with
//! fsync, plus a 3-member in-process group. State dirs live under cargo's target tmp dir (on disk).
//!
//! Run: `cargo bench -p shoal-orchestrator --bench raft`
//! Quick run: `RAFT_BENCH_SCALE=0.1 cargo bench -p shoal-orchestrator --bench raft`

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_orchestrator::store::raft::local::LocalNetwork;
use shoal_orchestrator::store::raft::{
    start, Bootstrap, NoopTransport, RaftConfig, RaftHandle, RaftNode, StateMachine, Transport,
};

/// Sums command lengths; snapshot is 16 bytes. Keeps the measurement on the log, not the state.
#[derive(Default)]
struct Counter {
    commands: u64,
    bytes: u64,
}

impl StateMachine for Counter {
    /// The command's length: all this machine keeps of it.
    type Command = usize;

    fn decode(command: &[u8]) -> usize {
        command.len()
    }

    fn apply(&mut self, _index: u64, command: usize) -> Vec<u8> {
        self.commands += 1;
        self.bytes += command as u64;
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.commands.to_be_bytes().to_vec();
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let (a, b) = data.split_at_checked(8).ok_or("short snapshot")?;
        self.commands = u64::from_be_bytes(a.try_into().map_err(|_| "bad snapshot")?);
        self.bytes = u64::from_be_bytes(b.try_into().map_err(|_| "bad snapshot")?);
        Ok(())
    }
}

const PAYLOAD: usize = 128;

fn payload(i: usize) -> Vec<u8> {
    let mut v = format!("{i:016}").into_bytes();
    v.resize(PAYLOAD, b'x');
    v
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_latencies(name: &str, mut samples: Vec<Duration>, total: Duration, writes: usize) {
    samples.sort_unstable();
    println!(
        "{name:<58} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  | {:>9.0} writes/s ({writes} writes in {:.2} s)",
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        writes as f64 / total.as_secs_f64(),
        total.as_secs_f64(),
    );
}

fn config(id: u64, dir: &Path) -> RaftConfig {
    RaftConfig { tick_interval: Duration::from_millis(50), ..RaftConfig::new(id, dir.join(format!("node-{id}"))) }
}

async fn start_node(cfg: RaftConfig, transport: Arc<dyn Transport>) -> RaftNode<Counter> {
    match start(cfg, Counter::default(), transport).await {
        Ok(node) => node,
        Err(e) => panic!("cannot start raft: {e}"),
    }
}

async fn wait_leader(handle: &RaftHandle) -> u64 {
    let status = handle.wait_for(Duration::from_secs(30), |s| s.leader.is_some()).await.expect("a leader");
    status.leader.unwrap_or(0)
}

/// Sequential proposals: each waits for its own fsync.
async fn sequential(handle: &RaftHandle, n: usize) -> (Vec<Duration>, Duration) {
    let mut samples = Vec::with_capacity(n);
    let begin = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        handle.propose(payload(i)).await.expect("proposal");
        samples.push(t.elapsed());
    }
    (samples, begin.elapsed())
}

/// `clients` concurrent proposers, `per_client` proposals each: proposals share fsyncs.
async fn concurrent(handle: &RaftHandle, clients: usize, per_client: usize) -> (Vec<Duration>, Duration) {
    let begin = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                handle.propose(payload(c * per_client + i)).await.expect("proposal");
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("client task"));
    }
    (samples, begin.elapsed())
}

/// `batches` calls of `propose_batch` with `size` commands each, `in_flight` batches at a time.
async fn batched(handle: &RaftHandle, batches: usize, size: usize, in_flight: usize) -> (Vec<Duration>, Duration) {
    let begin = Instant::now();
    let mut tasks = Vec::new();
    let per_task = batches.div_ceil(in_flight);
    for c in 0..in_flight {
        let handle = handle.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            for b in 0..per_task {
                let commands = (0..size).map(|i| payload((c * per_task + b) * size + i)).collect();
                let t = Instant::now();
                for r in handle.propose_batch(commands).await {
                    r.expect("batched proposal");
                }
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("batch task"));
    }
    (samples, begin.elapsed())
}

fn fsync_baseline(dir: &Path, n: usize) -> Vec<Duration> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).expect("probe file");
    let block = vec![b'x'; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    samples
}

fn main() {
    let scale: f64 = std::env::var("RAFT_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n = |x: usize| ((x as f64 * scale).round() as usize).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("bench dir");
    println!(
        "raft store benchmark: {PAYLOAD}-byte commands, redb with Durability::Immediate, dir {}",
        base.path().display()
    );

    let mut probe = fsync_baseline(base.path(), n(500));
    probe.sort_unstable();
    println!(
        "{:<58} p50 {:>8.3} ms  p99 {:>8.3} ms",
        "disk: 4 KiB write + fdatasync (baseline)",
        percentile(&probe, 0.5).as_secs_f64() * 1e3,
        percentile(&probe, 0.99).as_secs_f64() * 1e3
    );

    runtime.block_on(async {
        // ---- one member ----
        let dir = base.path().join("single");
        let node = start_node(config(1, &dir), Arc::new(NoopTransport)).await;
        wait_leader(&node.handle).await;
        let _ = sequential(&node.handle, n(100)).await; // warm-up
        let (s, t) = sequential(&node.handle, n(3000)).await;
        report_latencies("1 member: sequential propose (1 client)", s, t, n(3000));
        let (s, t) = concurrent(&node.handle, 64, n(300)).await;
        report_latencies("1 member: 64 concurrent clients (group commit)", s, t, 64 * n(300));
        let (s, t) = batched(&node.handle, n(200), 1000, 1).await;
        report_latencies("1 member: propose_batch x1000 (latency per batch)", s, t, n(200) * 1000);
        let (s, t) = batched(&node.handle, n(200), 1000, 4).await;
        report_latencies("1 member: propose_batch x1000, 4 in flight (per batch)", s, t, n(200) * 1000);
        let status = node.handle.status();
        println!(
            "  (applied {} entries; snapshots every 10,000 -> last snapshot at {}, log starts at {})",
            status.applied_index, status.snapshot_index, status.first_index
        );
        node.handle.shutdown().await;

        // Recovery time: reopen the state dir and wait until everything is re-applied.
        let t = Instant::now();
        let node = start_node(config(1, &dir), Arc::new(NoopTransport)).await;
        node.handle.read_index().await.expect("read barrier after restart");
        println!(
            "{:<58} {:>8.1} ms (applied index {})",
            "1 member: restart + recovery (snapshot + log replay)",
            t.elapsed().as_secs_f64() * 1e3,
            node.handle.status().applied_index
        );
        node.handle.shutdown().await;

        // ---- three members in one process (LocalNetwork: no gRPC, no serialization cost
        // beyond protobuf encoding; every member fsyncs to the same disk) ----
        let dir = base.path().join("three");
        let net = LocalNetwork::new();
        let mut nodes = Vec::new();
        for id in 1..=3 {
            let cfg = RaftConfig { bootstrap: Bootstrap::Voters(vec![1, 2, 3]), ..config(id, &dir) };
            let node = start_node(cfg, net.transport(id)).await;
            net.register(node.handle.clone());
            nodes.push(node);
        }
        let leader = wait_leader(&nodes[0].handle).await;
        let handle = nodes.iter().find(|n| n.handle.id() == leader).map(|n| n.handle.clone()).expect("leader handle");
        handle.wait_for(Duration::from_secs(30), |s| s.is_leader()).await.expect("leader ready");
        let _ = sequential(&handle, n(100)).await;
        let (s, t) = sequential(&handle, n(2000)).await;
        report_latencies("3 members in-process: sequential propose", s, t, n(2000));
        let (s, t) = concurrent(&handle, 64, n(200)).await;
        report_latencies("3 members in-process: 64 concurrent clients", s, t, 64 * n(200));
        let (s, t) = batched(&handle, n(100), 1000, 4).await;
        report_latencies("3 members in-process: propose_batch x1000, 4 in flight", s, t, n(100) * 1000);
        for node in nodes {
            node.handle.shutdown().await;
        }
    });
}
