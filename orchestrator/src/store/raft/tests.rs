//! Driver tests with a toy key-value state machine: single node (durability, recovery, snapshots,
//! concurrency) and 3–4 drivers in one process over [`LocalNetwork`] (election, replication,
//! failover, snapshot catch-up, membership changes). All waits are on conditions, with timeouts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::local::LocalNetwork;
use super::*;

const WAIT: Duration = Duration::from_secs(30);

/// Commands are `key=value`. The state counts how often a key was written again, so that a
/// command applied twice is caught.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Kv {
    map: BTreeMap<String, String>,
    rewrites: u64,
    last_index: u64,
    /// Every applied membership change.
    memberships: Vec<MembershipEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MembershipEvent {
    index: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    context: Vec<u8>,
}

impl StateMachine for Kv {
    type Command = String;

    fn decode(command: &[u8]) -> String {
        String::from_utf8_lossy(command).into_owned()
    }

    fn apply(&mut self, index: u64, text: String) -> Vec<u8> {
        assert!(index > self.last_index, "index {index} applied after {}", self.last_index);
        self.last_index = index;
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        if self.map.insert(k.to_string(), v.to_string()).is_some() {
            self.rewrites += 1;
        }
        format!("{index}:{k}").into_bytes()
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn apply_membership(&mut self, index: u64, membership: &Membership, context: &[u8]) {
        self.last_index = index;
        self.memberships.push(MembershipEvent {
            index,
            voters: membership.voters.clone(),
            learners: membership.learners.clone(),
            context: context.to_vec(),
        });
    }
}

fn config(id: u64, dir: &Path) -> RaftConfig {
    RaftConfig {
        tick_interval: Duration::from_millis(10),
        election_tick: 10,
        heartbeat_tick: 2,
        request_timeout: Duration::from_secs(20),
        ..RaftConfig::new(id, dir.join(format!("node-{id}")))
    }
}

async fn start_single(cfg: RaftConfig) -> RaftNode<Kv> {
    match start(cfg, Kv::default(), Arc::new(NoopTransport)).await {
        Ok(node) => node,
        Err(e) => panic!("start failed: {e}"),
    }
}

fn cmd(k: &str, v: &str) -> Vec<u8> {
    format!("{k}={v}").into_bytes()
}

fn index_of(response: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(response);
    text.split(':').next().and_then(|i| i.parse().ok()).unwrap_or(0)
}

async fn stop(node: RaftNode<Kv>) {
    node.handle.shutdown().await;
    node.task.join().await.expect("driver stopped cleanly");
}

#[tokio::test]
async fn single_node_applies_each_proposal_once_and_answers_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(config(1, dir.path())).await;
    let mut last = 0;
    for i in 0..20 {
        let response = node.handle.propose(cmd(&format!("k{i}"), "v")).await.expect("proposal applied");
        let index = index_of(&response);
        assert!(index > last, "indexes increase");
        assert_eq!(String::from_utf8_lossy(&response), format!("{index}:k{i}"));
        last = index;
    }
    let kv = node.state.read(Kv::clone);
    assert_eq!(kv.map.len(), 20);
    assert_eq!(kv.rewrites, 0);
    // The status is published after the loop iteration that answered the proposals.
    let status = node.handle.wait_for(WAIT, |s| s.applied_index >= last).await.unwrap();
    assert!(status.is_leader());
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.applied_index, last);
    assert_eq!(status.membership.voters, vec![1]);
    // A read barrier on the leader resolves at (at least) the last write.
    let read = node.handle.read_index().await.expect("read index");
    assert!(read >= last);
    let value = node.state.read_linearizable(|kv| kv.map.get("k19").cloned()).await.unwrap();
    assert_eq!(value.as_deref(), Some("v"));
    stop(node).await;
}

#[tokio::test]
async fn empty_command_is_applied_like_any_other() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(config(1, dir.path())).await;
    let response = node.handle.propose(Vec::new()).await.expect("applied");
    assert!(index_of(&response) > 0);
    assert_eq!(node.state.read(|kv| kv.map.get("").cloned()), Some(String::new()));
    stop(node).await;
}

async fn restart_recovers(snapshot_every: u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RaftConfig { snapshot_every, log_retain: 2, ..config(1, dir.path()) };
    let node = start_single(cfg.clone()).await;
    for i in 0..60 {
        node.handle.propose(cmd(&format!("k{i}"), &i.to_string())).await.unwrap();
    }
    let batch = node.handle.propose_batch((60..100).map(|i| cmd(&format!("k{i}"), &i.to_string())).collect()).await;
    assert!(batch.iter().all(Result::is_ok));
    let before = node.state.read(Kv::clone);
    let status = node.handle.wait_for(WAIT, |s| s.applied_index >= before.last_index).await.unwrap();
    if snapshot_every < 100 {
        assert!(status.snapshot_index > 1, "a snapshot was taken: {status:?}");
        assert!(status.first_index > 2, "the log was compacted: {status:?}");
    } else {
        assert_eq!(status.snapshot_index, 1, "only the bootstrap snapshot: {status:?}");
    }
    stop(node).await;

    let node = start_single(cfg.clone()).await;
    let status = node.handle.wait_for(WAIT, |s| s.applied_index >= before.last_index).await.unwrap();
    assert!(status.is_leader());
    let after = node.state.read(Kv::clone);
    assert_eq!(after, before, "same state after restart");
    assert_eq!(after.rewrites, 0, "nothing applied twice");
    // And it keeps going.
    let response = node.handle.propose(cmd("after", "restart")).await.unwrap();
    assert!(index_of(&response) > before.last_index);
    stop(node).await;

    // A second restart, after new writes on top of the recovered state.
    let node = start_single(cfg).await;
    node.handle.read_index().await.unwrap();
    let again = node.state.read(Kv::clone);
    assert_eq!(again.map.len(), 101);
    assert_eq!(again.map.get("after").map(String::as_str), Some("restart"));
    assert_eq!(again.rewrites, 0);
    stop(node).await;
}

#[tokio::test]
async fn restart_recovers_from_the_log() {
    restart_recovers(10_000).await;
}

#[tokio::test]
async fn restart_recovers_from_snapshot_and_compacted_log() {
    restart_recovers(7).await;
}

#[tokio::test]
async fn a_thousand_concurrent_proposals_are_all_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(RaftConfig { snapshot_every: 150, ..config(1, dir.path()) }).await;
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let handle = node.handle.clone();
        tasks.push(tokio::spawn(async move { handle.propose(cmd(&format!("c{i}"), "x")).await }));
    }
    let mut indexes = Vec::new();
    for task in tasks {
        indexes.push(index_of(&task.await.unwrap().expect("proposal answered")));
    }
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), 1000, "every proposal got its own log index");
    let kv = node.state.read(Kv::clone);
    assert_eq!(kv.map.len(), 1000);
    assert_eq!(kv.rewrites, 0);
    node.handle.wait_for(WAIT, |s| s.snapshot_index > 1).await.expect("snapshots were taken");
    stop(node).await;
}

#[tokio::test]
async fn a_batch_gets_consecutive_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(config(1, dir.path())).await;
    let results = node.handle.propose_batch((0..50).map(|i| cmd(&format!("b{i}"), "1")).collect()).await;
    let indexes: Vec<u64> = results.into_iter().map(|r| index_of(&r.unwrap())).collect();
    assert!(indexes.windows(2).all(|w| w[1] == w[0] + 1), "{indexes:?}");
    stop(node).await;
}

#[tokio::test]
async fn a_second_driver_on_the_same_state_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(config(1, dir.path())).await;
    let second = start(config(1, dir.path()), Kv::default(), Arc::new(NoopTransport)).await;
    assert!(matches!(second, Err(StoreError::Locked { .. })), "{:?}", second.err());
    // Once `shutdown` returns, the dir can be reopened at once, but only by the same id.
    node.handle.shutdown().await;
    let other = start(config(1, dir.path()), Kv::default(), Arc::new(NoopTransport)).await.unwrap();
    stop(other).await;
    let wrong = RaftConfig { id: 2, ..config(1, dir.path()) };
    let result = start(wrong, Kv::default(), Arc::new(NoopTransport)).await;
    assert!(matches!(result, Err(StoreError::IdMismatch { found: 1, expected: 2, .. })), "{:?}", result.err());
}

#[tokio::test]
async fn invalid_config_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        RaftConfig { id: 0, ..config(1, dir.path()) },
        RaftConfig { heartbeat_tick: 10, election_tick: 10, ..config(1, dir.path()) },
        RaftConfig { bootstrap: Bootstrap::Voters(vec![2, 3]), ..config(1, dir.path()) },
    ] {
        let result = start(cfg, Kv::default(), Arc::new(NoopTransport)).await;
        assert!(matches!(result, Err(StoreError::Config(_))), "{:?}", result.err());
    }
}

#[tokio::test]
async fn garbage_peer_messages_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_single(config(1, dir.path())).await;
    assert!(matches!(node.handle.step(&[0xff, 0xff, 0xff]), Err(ProposeError::Invalid(_))));
    stop(node).await;
}

// ---- multi-member groups over the in-process transport ----

struct Cluster {
    dir: tempfile::TempDir,
    net: Arc<LocalNetwork>,
    nodes: BTreeMap<u64, RaftNode<Kv>>,
    snapshot_every: u64,
}

impl Cluster {
    async fn new(ids: &[u64], snapshot_every: u64) -> Cluster {
        let mut cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
            net: LocalNetwork::new(),
            nodes: BTreeMap::new(),
            snapshot_every,
        };
        for &id in ids {
            cluster.start(id, Bootstrap::Voters(ids.to_vec())).await;
        }
        cluster
    }

    fn config(&self, id: u64, bootstrap: Bootstrap) -> RaftConfig {
        RaftConfig { bootstrap, snapshot_every: self.snapshot_every, log_retain: 0, ..config(id, self.dir.path()) }
    }

    async fn start(&mut self, id: u64, bootstrap: Bootstrap) {
        let node = start(self.config(id, bootstrap), Kv::default(), self.net.transport(id)).await.unwrap();
        self.net.register(node.handle.clone());
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        self.net.isolate(id);
        self.net.unregister(id);
        if let Some(node) = self.nodes.remove(&id) {
            stop(node).await;
        }
        self.net.heal(id);
    }

    fn handle(&self, id: u64) -> &RaftHandle {
        &self.nodes[&id].handle
    }

    fn state(&self, id: u64) -> Kv {
        self.nodes[&id].state.read(Kv::clone)
    }

    /// Waits until every running member agrees on one leader, and returns it.
    async fn leader(&self) -> u64 {
        let first = *self.nodes.keys().next().unwrap();
        let mut leader = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        'outer: while tokio::time::Instant::now() < deadline {
            let s = self.handle(first).wait_for(WAIT, |s| s.leader.is_some()).await.unwrap();
            let candidate = s.leader.unwrap();
            if !self.nodes.contains_key(&candidate) {
                // A stale view of a stopped leader: wait for the next change.
                let mut rx = self.handle(first).status_watch();
                let _ = tokio::time::timeout(WAIT, rx.changed()).await;
                continue;
            }
            let term = self.handle(candidate).wait_for(WAIT, |s| s.is_leader()).await.map(|s| s.term);
            let Ok(term) = term else { continue };
            for handle in self.nodes.values().map(|n| &n.handle) {
                let agreed =
                    handle.wait_for(Duration::from_secs(5), |s| s.leader == Some(candidate) && s.term == term).await;
                if agreed.is_err() {
                    continue 'outer;
                }
            }
            leader = candidate;
            break;
        }
        assert_ne!(leader, 0, "no leader elected");
        leader
    }

    async fn all_applied(&self, index: u64) {
        for node in self.nodes.values() {
            node.handle
                .wait_for(WAIT, |s| s.applied_index >= index)
                .await
                .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", node.handle.id()));
        }
    }
}

#[tokio::test]
async fn three_nodes_elect_replicate_and_refuse_writes_on_followers() {
    let cluster = Cluster::new(&[1, 2, 3], 1000).await;
    let leader = cluster.leader().await;
    let mut last = 0;
    for i in 0..30 {
        last = index_of(&cluster.handle(leader).propose(cmd(&format!("k{i}"), "v")).await.unwrap());
    }
    cluster.all_applied(last).await;
    let expected = cluster.state(leader);
    assert_eq!(expected.map.len(), 30);
    for &id in cluster.nodes.keys() {
        assert_eq!(cluster.state(id).map, expected.map, "node {id} has the same state");
    }

    let follower = *cluster.nodes.keys().find(|&&id| id != leader).unwrap();
    let refused = cluster.handle(follower).propose(cmd("x", "y")).await;
    assert_eq!(refused, Err(ProposeError::NotLeader { leader_hint: Some(leader) }));
    let refused = cluster.handle(follower).promote(9).await;
    assert_eq!(refused, Err(ProposeError::NotLeader { leader_hint: Some(leader) }));

    // Linearizable read on a follower: after the barrier it sees the leader's latest write.
    let index = index_of(&cluster.handle(leader).propose(cmd("fresh", "1")).await.unwrap());
    let read = cluster.handle(follower).read_index().await.unwrap();
    assert!(read >= index);
    assert_eq!(cluster.state(follower).map.get("fresh").map(String::as_str), Some("1"));

    // Thousands of concurrent reads (agents opening sessions at once) share ReadIndex rounds,
    // and each still sees what was written before it asked.
    for id in [leader, follower] {
        let index = index_of(&cluster.handle(leader).propose(cmd("burst", &id.to_string())).await.unwrap());
        let handle = cluster.handle(id).clone();
        let reads = (0..5000).map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.read_index().await })
        });
        for read in futures_util::future::join_all(reads).await {
            let read = read.expect("the read task").expect("every read is answered");
            assert!(read >= index, "a read on {id} at {read} missed the write at {index}");
        }
    }

    let status = cluster.handle(leader).wait_for(WAIT, |s| s.applied_index >= index).await.unwrap();
    assert_eq!(status.membership.voters, vec![1, 2, 3]);
    assert_eq!(status.progress.len(), 3);
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}

#[tokio::test]
async fn leader_loss_elects_a_new_leader_and_loses_no_acknowledged_write() {
    let mut cluster = Cluster::new(&[1, 2, 3], 1000).await;
    let old = cluster.leader().await;
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let key = format!("before{i}");
        cluster.handle(old).propose(cmd(&key, "v")).await.unwrap();
        acknowledged.push(key);
    }
    cluster.stop(old).await;

    let new = cluster.leader().await;
    assert_ne!(new, old);
    let mut last = 0;
    for i in 0..40 {
        let key = format!("after{i}");
        last = index_of(&cluster.handle(new).propose(cmd(&key, "v")).await.unwrap());
        acknowledged.push(key);
    }
    cluster.all_applied(last).await;
    for &id in cluster.nodes.keys() {
        let state = cluster.state(id);
        for key in &acknowledged {
            assert!(state.map.contains_key(key), "node {id} lost acknowledged write {key}");
        }
        assert_eq!(state.rewrites, 0);
    }

    // The old leader comes back as a follower and catches up.
    cluster.start(old, Bootstrap::Voters(vec![1, 2, 3])).await;
    cluster.all_applied(last).await;
    assert_eq!(cluster.state(old).map, cluster.state(new).map);
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}

#[tokio::test]
async fn a_lagging_follower_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::new(&[1, 2, 3], 10).await;
    let leader = cluster.leader().await;
    let mut last = 0;
    for i in 0..5 {
        last = index_of(&cluster.handle(leader).propose(cmd(&format!("early{i}"), "v")).await.unwrap());
    }
    cluster.all_applied(last).await;
    let lagging = *cluster.nodes.keys().find(|&&id| id != leader).unwrap();
    let lagging_last = cluster.handle(lagging).status().last_index;
    cluster.stop(lagging).await;

    for i in 0..60 {
        last = index_of(&cluster.handle(leader).propose(cmd(&format!("late{i}"), "v")).await.unwrap());
    }
    // The leader compacted past the lagging follower's log: only a snapshot can bring it back.
    cluster
        .handle(leader)
        .wait_for(WAIT, |s| s.applied_index >= last && s.first_index > lagging_last + 1)
        .await
        .expect("leader compacted its log");

    cluster.start(lagging, Bootstrap::Voters(vec![1, 2, 3])).await;
    cluster.all_applied(last).await;
    let status = cluster.handle(lagging).status();
    assert!(status.snapshot_index > lagging_last, "installed a snapshot: {status:?}");
    assert_eq!(cluster.state(lagging).map, cluster.state(leader).map);
    assert_eq!(cluster.state(lagging).map.len(), 65);

    // The follower's recovered state survives its own restart too.
    cluster.stop(lagging).await;
    cluster.start(lagging, Bootstrap::Voters(vec![1, 2, 3])).await;
    cluster.all_applied(last).await;
    assert_eq!(cluster.state(lagging).map.len(), 65);
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}

#[tokio::test]
async fn members_join_as_learners_are_promoted_and_removed() {
    let mut cluster = Cluster::new(&[1, 2, 3], 20).await;
    let leader = cluster.leader().await;
    let mut last = 0;
    for i in 0..30 {
        last = index_of(&cluster.handle(leader).propose(cmd(&format!("k{i}"), "v")).await.unwrap());
    }

    // Node 4 starts empty and waits to be added.
    cluster.start(4, Bootstrap::Join).await;
    assert_eq!(cluster.handle(4).status().membership, Membership::default());
    let membership = cluster.handle(leader).add_learner(4, b"10.0.0.4:7000".to_vec()).await.unwrap();
    assert_eq!(membership.learners, vec![4]);
    assert_eq!(membership.voters, vec![1, 2, 3]);
    cluster.all_applied(last).await;
    assert_eq!(cluster.state(4).map.len(), 30, "the learner received the state");
    // Learners never vote, so a leader exists and writes still need only 2 of 3.
    let commit = cluster.handle(leader).status().commit_index;
    cluster
        .handle(leader)
        .wait_for(WAIT, |s| s.progress.get(&4).is_some_and(|p| p.matched >= commit))
        .await
        .expect("learner caught up");

    let membership = cluster.handle(leader).promote(4).await.unwrap();
    assert_eq!(membership.voters, vec![1, 2, 3, 4]);
    assert!(membership.learners.is_empty());

    // Remove a follower other than node 4.
    let victim = *cluster.nodes.keys().find(|&&id| id != leader && id != 4).unwrap();
    let membership = cluster.handle(leader).remove(victim).await.unwrap();
    assert!(!membership.contains(victim));
    assert_eq!(membership.voters.len(), 3);
    cluster.stop(victim).await;

    // Joint consensus: replace a voter and add a learner in one change.
    let other = *cluster.nodes.keys().find(|&&id| id != leader && id != 4).unwrap();
    cluster.start(5, Bootstrap::Join).await;
    let membership = cluster
        .handle(leader)
        .change_membership(vec![MemberChange::AddVoter(5), MemberChange::Remove(other)], Vec::new())
        .await
        .unwrap();
    assert!(membership.is_joint(), "{membership:?}");
    let status = cluster
        .handle(leader)
        .wait_for(WAIT, |s| !s.membership.is_joint() && s.membership.voters.contains(&5))
        .await
        .unwrap();
    let mut expected = vec![leader, 4, 5];
    expected.sort_unstable();
    assert_eq!(status.membership.voters, expected);
    cluster.stop(other).await;

    // The group still writes, and every member saw the same membership history.
    let last = index_of(&cluster.handle(leader).propose(cmd("after", "changes")).await.unwrap());
    cluster.all_applied(last).await;
    let history = cluster.state(leader).memberships;
    assert_eq!(history.first().map(|m| m.context.as_slice()), Some(b"10.0.0.4:7000".as_slice()));
    for &id in cluster.nodes.keys() {
        let state = cluster.state(id);
        assert_eq!(state.map, cluster.state(leader).map, "node {id}");
        assert_eq!(state.rewrites, 0);
    }
    // Node 5 joined after the learner change: it got the history through a snapshot or the log.
    assert_eq!(cluster.state(5).memberships.last(), history.last());
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}

#[tokio::test]
async fn a_minority_cannot_write() {
    let cluster = Cluster::new(&[1, 2, 3], 1000).await;
    let leader = cluster.leader().await;
    cluster.handle(leader).propose(cmd("a", "1")).await.unwrap();
    // Cut the leader off: with check_quorum it steps down within an election timeout.
    cluster.net.isolate(leader);
    let status = cluster.handle(leader).wait_for(WAIT, |s| !s.is_leader()).await.unwrap();
    assert!(!status.is_leader());
    let refused = cluster.handle(leader).propose(cmd("b", "2")).await;
    assert!(matches!(refused, Err(ProposeError::NotLeader { .. })), "{refused:?}");
    cluster.net.heal(leader);
    let leader = cluster.leader().await;
    cluster.handle(leader).propose(cmd("c", "3")).await.unwrap();
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}

/// 1,000 proposals from 20 concurrent clients while the leader is stopped and restarted three
/// times: every acknowledged write is on every member, and nothing is applied twice. Clients retry
/// only after errors that guarantee the proposal was not applied (`NotLeader`, `LeadershipLost`,
/// `Refused`), so a duplicate would show up as a rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_survive_repeated_leader_loss_exactly_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::RwLock as StdRwLock;

    let mut cluster = Cluster::new(&[1, 2, 3], 50).await;
    cluster.leader().await;
    let handles: Arc<StdRwLock<BTreeMap<u64, RaftHandle>>> =
        Arc::new(StdRwLock::new(cluster.nodes.iter().map(|(id, n)| (*id, n.handle.clone())).collect()));
    let acked = Arc::new(AtomicUsize::new(0));

    let mut workers = Vec::new();
    for w in 0..20 {
        let handles = handles.clone();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut ambiguous = 0;
            let mut target = 1;
            for i in 0..50 {
                let key = format!("w{w}-{i}");
                let deadline = tokio::time::Instant::now() + WAIT;
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "{key}: no progress");
                    let handle = {
                        let map = handles.read().unwrap();
                        map.get(&target).or_else(|| map.values().next()).cloned()
                    };
                    let Some(handle) = handle else { continue };
                    match handle.propose(cmd(&key, "v")).await {
                        Ok(_) => {
                            acknowledged.push(key);
                            acked.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(ProposeError::NotLeader { leader_hint: Some(leader) }) if leader != target => {
                            target = leader;
                        }
                        Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Stopped) => {
                            // No (other) leader known here yet: wait for this member's view to change.
                            let mut rx = handle.status_watch();
                            let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
                            target = handle.status().leader.unwrap_or(target % 3 + 1);
                        }
                        Err(ProposeError::LeadershipLost) | Err(ProposeError::Refused(_)) => {}
                        Err(ProposeError::Indeterminate) | Err(ProposeError::Timeout(_)) => {
                            ambiguous += 1;
                            break;
                        }
                        Err(e) => panic!("{key}: {e}"),
                    }
                }
            }
            (acknowledged, ambiguous)
        }));
    }

    for round in 0..3 {
        let goal = (round + 1) * 200;
        let deadline = tokio::time::Instant::now() + WAIT;
        while acked.load(Ordering::Relaxed) < goal {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: writes stalled");
            let any = handles.read().unwrap().values().next().cloned().unwrap();
            let mut rx = any.status_watch();
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
        let leader = cluster.leader().await;
        handles.write().unwrap().remove(&leader);
        cluster.stop(leader).await;
        cluster.leader().await;
        cluster.start(leader, Bootstrap::Voters(vec![1, 2, 3])).await;
        handles.write().unwrap().insert(leader, cluster.handle(leader).clone());
    }

    let mut acknowledged = Vec::new();
    let mut ambiguous = 0;
    for worker in workers {
        let (keys, amb) = worker.await.unwrap();
        acknowledged.extend(keys);
        ambiguous += amb;
    }
    assert!(acknowledged.len() >= 900, "{} acknowledged, {ambiguous} ambiguous", acknowledged.len());

    let leader = cluster.leader().await;
    let last = index_of(&cluster.handle(leader).propose(cmd("final", "v")).await.unwrap());
    cluster.all_applied(last).await;
    let reference = cluster.state(leader);
    for &id in cluster.nodes.keys() {
        let state = cluster.state(id);
        assert_eq!(state.rewrites, 0, "node {id} applied a command twice");
        assert_eq!(state.map, reference.map, "node {id} diverged");
        for key in &acknowledged {
            assert!(state.map.contains_key(key), "node {id} lost acknowledged write {key}");
        }
    }
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        cluster.nodes[&id].handle.clone().shutdown().await;
    }
}
