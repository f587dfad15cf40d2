//! The replicated log under the cluster store: a [raft-rs] `RawNode` driver with durable storage in
//! redb, generic over a [`StateMachine`].
//!
//! ```text
//!  RaftHandle (cheap clone, async) ──requests──▶  raft thread (owns RawNode + redb + state machine)
//!    propose / propose_batch / read_index            recv (≤ tick) → tick → Ready: send msgs,
//!    step (peer msgs) / membership changes           persist snapshot+entries+hard state (fsync),
//!  StateReader<S> ◀── RwLock<S> ── apply ──          send persisted msgs, apply, advance, light ready
//!  Transport::send ◀── raft messages (opaque bytes)
//! ```
//!
//! - [`start`] bootstraps a new group when the state dir holds no raft state ([`Bootstrap`]), and
//!   otherwise recovers: the latest snapshot is restored into the state machine and the committed
//!   log after it is re-applied.
//! - A proposal is answered when its entry is applied locally, with the state machine's response,
//!   or with an error that says whether it may still be applied ([`ProposeError`]).
//! - Snapshot + log compaction every [`RaftConfig::snapshot_every`] applied entries, or once the
//!   log holds [`RaftConfig::snapshot_bytes`]. The raft thread only copies the state
//!   ([`StateMachine::snapshot_later`]); a thread of its own serializes the copy straight into
//!   the snapshot file (`snapfile`), then the raft thread records it and compacts the log. At 100,000
//!   tasks serializing takes seconds, in which a raft thread that did it itself neither ticked
//!   nor answered: leaders stepped down, nodes were marked down.
//! - Linearizable reads are batched: one ReadIndex in flight serves every reader that asked
//!   before it was issued (`reads`).
//! - raft-rs's messages (protobuf 2) never leave this module: peers exchange opaque bytes through
//!   [`Transport`] and [`RaftHandle::step`].
//!
//! # Threading
//! The raft loop runs on a dedicated OS thread rather than a tokio task. Every `Ready` must be
//! fsynced before the loop may go on (acknowledging, sending persisted messages, advancing), so the
//! loop is inherently sequential around disk I/O; running it on its own thread keeps redb's blocking
//! calls off the async runtime without a `spawn_blocking` hop (and a thread switch) per `Ready`, and
//! ticks stay on time even when the runtime is busy. Callers talk to it through a channel and get
//! answers through oneshot channels, so every [`RaftHandle`] method is non-blocking.
//!
//! # Durability
//! Entries, the hard state and incoming snapshots of one `Ready` are written in one redb
//! transaction committed with `Durability::Immediate` before any message that depends on them is
//! sent and before any entry is applied, so an acknowledged proposal is on disk on a majority.
//! Requests arriving while the disk is busy are drained together, so their entries share one fsync
//! (group commit).
//!
//! [raft-rs]: https://github.com/tikv/raft-rs

mod driver;
pub mod local;
mod logger;
mod reads;
mod snapfile;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

pub use snapfile::DIR as SNAPSHOT_DIR;
pub use storage::DB_FILE;

/// Writes a snapshot's data, as [`StateMachine::snapshot`] would return it, into a file (see
/// [`StateMachine::snapshot_later`]): at 100,000 tasks the data is tens of megabytes, which a
/// buffer in memory would add to the manager's peak. `'a`: what the writer borrows.
pub type SnapshotFill<'a> = Box<dyn FnOnce(&mut dyn std::io::Write) -> std::io::Result<()> + Send + 'a>;

/// A [`SnapshotFill`] that owns what it writes (a copy of the state), for another thread.
pub type SnapshotWriter = SnapshotFill<'static>;

/// The replicated state machine the log drives. Implementations must be deterministic: applying
/// the same commands in the same order to the same snapshot must give the same state and responses
/// on every member.
pub trait StateMachine: Send + Sync + 'static {
    /// A command as [`StateMachine::apply`] takes it.
    type Command: Send;

    /// Decodes a committed command's bytes. Called without the state's lock, so that readers
    /// are not held up while a large command (thousands of tasks) is parsed. Must not panic: an
    /// undecodable command is for `apply` to answer (with an error, changing nothing).
    fn decode(command: &[u8]) -> Self::Command;

    /// Applies one committed command and returns the response for the proposer. `index` is the
    /// command's raft log index (strictly increasing). Must not panic: a panic stops the driver.
    fn apply(&mut self, index: u64, command: Self::Command) -> Vec<u8>;

    /// Serializes the full state (taken every `snapshot_every` entries and sent to lagging members).
    fn snapshot(&self) -> Vec<u8>;

    /// [`StateMachine::snapshot`] in two steps, so that the raft thread holds the state only for
    /// the first: what this returns (a copy taken under the read lock) is serialized on another
    /// thread, straight into the snapshot file, while entries go on being applied. The default
    /// serializes at once.
    fn snapshot_later(&self) -> SnapshotWriter {
        let data = self.snapshot();
        Box::new(move |out| out.write_all(&data))
    }

    /// Replaces the full state with a serialized one from [`StateMachine::snapshot`].
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;

    /// Called when a membership change is applied at `index`, with the new membership and the
    /// context given to the change (e.g. the new member's address). The default does nothing.
    fn apply_membership(&mut self, index: u64, membership: &Membership, context: &[u8]) {
        let _ = (index, membership, context);
    }
}

/// Sends raft messages to peers. `message` is an encoded raft message (opaque to the caller).
/// `send` is called from the raft thread and must not block: queue the message (e.g. one bounded
/// queue and sending task per peer) and drop it when the queue is full — raft retransmits. A
/// transport that cannot reach a peer may tell the driver with [`RaftHandle::report_unreachable`],
/// and should report failed snapshot sends with [`RaftHandle::report_snapshot`].
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: u64, message: Vec<u8>);

    /// A snapshot message: report its delivery with [`RaftHandle::report_snapshot`] (until then
    /// the leader sends that member nothing else).
    fn send_snapshot(&self, to: u64, message: Vec<u8>) {
        self.send(to, message);
    }
}

/// Transport for a group of one: there is nobody to talk to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTransport;

impl Transport for NoopTransport {
    fn send(&self, _to: u64, _message: Vec<u8>) {}
}

/// How a node starts when its state dir holds no raft state yet. Ignored when it does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// A new group with this node as its only voter (the embedded single-node cluster).
    #[default]
    SingleNode,
    /// A new group whose founding voters are these ids (every founder is started with the same list).
    Voters(Vec<u64>),
    /// Wait to be added by an existing group's leader (`add_learner`), which sends a snapshot.
    Join,
}

/// Driver configuration. [`RaftConfig::new`] gives sensible defaults: a 100 ms tick, elections after
/// 1–2 s without a leader, heartbeats every 200 ms, a snapshot every 10,000 entries (or 64 MiB).
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This member's id; non-zero, unique in the group, and stable for the life of the state dir.
    pub id: u64,
    /// Directory holding `raft.redb`. Created if missing.
    pub state_dir: PathBuf,
    pub bootstrap: Bootstrap,
    pub tick_interval: Duration,
    /// Ticks without hearing from a leader before a follower campaigns (randomized in
    /// `[election_tick, 2 * election_tick)`).
    pub election_tick: usize,
    /// Ticks between leader heartbeats. Must be smaller than `election_tick`.
    pub heartbeat_tick: usize,
    /// Applied entries between two snapshots (each followed by log compaction).
    pub snapshot_every: u64,
    /// Log payload bytes held in memory (and on disk) that also trigger a snapshot, however few
    /// the entries: at 100,000 tasks, a handful of status batches is tens of megabytes.
    pub snapshot_bytes: u64,
    /// Entries kept in the log behind a snapshot, so that a briefly lagging follower catches up
    /// from the log instead of receiving a full snapshot.
    pub log_retain: u64,
    /// ... but no more payload bytes than this.
    pub log_retain_bytes: u64,
    /// How long `propose`, `read_index` and membership changes wait for their outcome.
    pub request_timeout: Duration,
    /// Leaders step down when they lose contact with a quorum for an election timeout, so that
    /// a partitioned minority stops accepting writes.
    pub check_quorum: bool,
    /// Pre-vote (raft thesis 9.6): a rejoining partitioned member does not disrupt the leader.
    pub pre_vote: bool,
    /// Largest append message in bytes (0: one entry per message).
    pub max_size_per_msg: u64,
    /// In-flight append messages per follower during optimistic replication.
    pub max_inflight_msgs: usize,
    /// Requests handled per loop iteration before the driver writes a `Ready`; bounds how many
    /// proposals share one fsync and keeps ticks on time under load.
    pub max_requests_per_ready: usize,
}

impl RaftConfig {
    pub fn new(id: u64, state_dir: impl Into<PathBuf>) -> Self {
        RaftConfig {
            id,
            state_dir: state_dir.into(),
            bootstrap: Bootstrap::SingleNode,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every: 10_000,
            snapshot_bytes: 64 << 20,
            log_retain: 1_000,
            log_retain_bytes: 16 << 20,
            request_timeout: Duration::from_secs(10),
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_requests_per_ready: 4096,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::Config(m));
        if self.id == 0 {
            return bad("raft node id must not be 0".into());
        }
        if self.tick_interval.is_zero() {
            return bad("tick_interval must be positive".into());
        }
        if self.heartbeat_tick == 0 || self.election_tick <= self.heartbeat_tick {
            return bad(format!(
                "need 0 < heartbeat_tick < election_tick, got heartbeat_tick={} election_tick={}",
                self.heartbeat_tick, self.election_tick
            ));
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every must be at least 1".into());
        }
        if self.max_requests_per_ready == 0 {
            return bad("max_requests_per_ready must be at least 1".into());
        }
        if let Bootstrap::Voters(voters) = &self.bootstrap {
            if !voters.contains(&self.id) {
                return bad(format!("bootstrap voters {voters:?} do not include this node ({})", self.id));
            }
            if voters.contains(&0) {
                return bad("bootstrap voters must not include id 0".into());
            }
        }
        Ok(())
    }
}

/// Errors that stop (or prevent starting) the driver.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot create the state dir {}: {source}", path.display())]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error("the raft state {} is in use by another process (is another `shoal` running on this state dir?)", path.display())]
    Locked { path: PathBuf },
    #[error("raft storage {}: {source}", path.display())]
    Db { path: PathBuf, source: Box<redb::Error> },
    #[error("snapshot file {}: {source}", path.display())]
    SnapshotFile { path: PathBuf, source: std::io::Error },
    #[error("{} belongs to raft node {found}, not to node {expected}", path.display())]
    IdMismatch { path: PathBuf, found: u64, expected: u64 },
    #[error("corrupt raft state: {0}")]
    Corrupt(String),
    #[error("cannot restore the state machine from a snapshot: {0}")]
    Restore(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("the raft driver thread could not start: {0}")]
    Spawn(std::io::Error),
    #[error("the raft driver thread panicked")]
    Panicked,
}

/// Why a request was not answered with a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This member is not the leader; nothing was proposed. Retry on `leader_hint` if known.
    #[error("not the leader{}", match leader_hint { Some(id) => format!(" (the leader is node {id})"), None => " (no leader is known)".to_string() })]
    NotLeader { leader_hint: Option<u64> },
    /// The leader lost its leadership and the entry was replaced in the log: it was not applied.
    #[error("leadership changed before the proposal was committed; it was not applied")]
    LeadershipLost,
    /// The proposal was in the log but its outcome cannot be known here any more (this member
    /// stopped, or installed a snapshot past it): it may or may not be applied.
    #[error("the outcome of the proposal is unknown; it may have been applied")]
    Indeterminate,
    /// No outcome within the request timeout; a proposal may still be applied later.
    #[error("timed out after {0:?} waiting for the raft group (no quorum?)")]
    Timeout(Duration),
    /// Raft refused the request up front; nothing was applied.
    #[error("refused: {0}")]
    Refused(String),
    /// The leader, reached through another manager, answered with this error.
    #[error("the leader answered: {0}")]
    Remote(String),
    /// Malformed input (e.g. an undecodable peer message).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The driver has stopped (shut down, or a fatal storage error) before taking the request.
    /// (Should the driver thread panic, proposals already in the log also get `Stopped`.)
    #[error("the raft driver has stopped")]
    Stopped,
}

/// Membership of the group. While a joint-consensus change is in progress `outgoing_voters` holds
/// the previous voter set (both majorities are needed), and it is left automatically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub outgoing_voters: Vec<u64>,
}

impl Membership {
    pub fn is_joint(&self) -> bool {
        !self.outgoing_voters.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id) || self.outgoing_voters.contains(&id)
    }
}

/// One step of a membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Add a voter, or promote a learner.
    AddVoter(u64),
    /// Add a learner (receives the log, does not vote), or demote a voter.
    AddLearner(u64),
    Remove(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Replication progress of one member, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest log index known to be on that member.
    pub matched: u64,
    pub next_index: u64,
    /// `Probe`, `Replicate` or `Snapshot`.
    pub state: String,
    /// Whether the leader heard from it during the last election timeout (needs `check_quorum`).
    pub recent_active: bool,
}

/// A point-in-time view of the driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub role: Role,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// First and last index in the local log (`first > last` when the log is empty).
    pub first_index: u64,
    pub last_index: u64,
    /// Index of the latest local snapshot.
    pub snapshot_index: u64,
    /// Applied membership.
    pub membership: Membership,
    /// Per-member progress; only filled on the leader.
    pub progress: BTreeMap<u64, PeerProgress>,
    /// False once the driver has stopped.
    pub running: bool,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

pub(crate) enum Request {
    Propose { commands: Vec<Vec<u8>>, replies: Vec<Reply<Vec<u8>>> },
    ChangeMembership { changes: Vec<MemberChange>, context: Vec<u8>, reply: Reply<Membership> },
    ReadIndex { reply: Reply<u64> },
    Step(Box<::raft::prelude::Message>),
    ReportUnreachable(u64),
    ReportSnapshot { id: u64, success: bool },
    TransferLeader(u64),
    Shutdown,
}

struct HandleInner {
    id: u64,
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<RaftStatus>,
    timeout: Duration,
}

/// Talks to a running driver. Cheap to clone; every method is non-blocking.
#[derive(Clone)]
pub struct RaftHandle {
    inner: Arc<HandleInner>,
}

impl std::fmt::Debug for RaftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftHandle").field("id", &self.inner.id).finish_non_exhaustive()
    }
}

impl RaftHandle {
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// How long requests wait for their outcome ([`RaftConfig::request_timeout`]).
    pub fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    fn send(&self, request: Request) -> Result<(), ProposeError> {
        self.inner.tx.send(request).map_err(|_| ProposeError::Stopped)
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, ProposeError>>) -> Result<T, ProposeError> {
        match tokio::time::timeout(self.inner.timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Err(_) => Err(ProposeError::Timeout(self.inner.timeout)),
        }
    }

    /// Proposes one command; resolves with the state machine's response once the command is
    /// committed and applied on this member. Only the leader accepts proposals.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::Propose { commands: vec![command], replies: vec![tx] })?;
        self.wait(rx).await
    }

    /// Proposes several commands at once: they get consecutive log indexes, share one fsync, and
    /// are answered individually, in order.
    pub async fn propose_batch(&self, commands: Vec<Vec<u8>>) -> Vec<Result<Vec<u8>, ProposeError>> {
        let (replies, receivers): (Vec<_>, Vec<_>) = commands.iter().map(|_| oneshot::channel()).unzip();
        let n = commands.len();
        if self.send(Request::Propose { commands, replies }).is_err() {
            return vec![Err(ProposeError::Stopped); n];
        }
        let deadline = tokio::time::Instant::now() + self.inner.timeout;
        let mut out = Vec::with_capacity(n);
        for rx in receivers {
            out.push(match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ProposeError::Stopped),
                Err(_) => Err(ProposeError::Timeout(self.inner.timeout)),
            });
        }
        out
    }

    /// Linearizable read barrier (raft ReadIndex): resolves, with the read index, once this member
    /// has applied everything committed when the call was made — after that, reading the local
    /// state machine observes every write acknowledged before the call. Works on followers too
    /// (the leader confirms its leadership with a heartbeat round).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (tx, rx) = oneshot::channel();
        self.send(Request::ReadIndex { reply: tx })?;
        self.wait(rx).await
    }

    /// Delivers a message from a peer (the bytes its [`Transport`] was given).
    pub fn step(&self, message: &[u8]) -> Result<(), ProposeError> {
        use protobuf::Message as _;
        let msg = ::raft::prelude::Message::parse_from_bytes(message)
            .map_err(|e| ProposeError::Invalid(format!("undecodable raft message: {e}")))?;
        self.send(Request::Step(Box::new(msg)))
    }

    /// Applies a membership change through the log (leader only); resolves with the new membership
    /// once applied here. One change is applied directly; several at once go through joint
    /// consensus, left automatically (the result then still shows `outgoing_voters`).
    pub async fn change_membership(
        &self,
        changes: Vec<MemberChange>,
        context: Vec<u8>,
    ) -> Result<Membership, ProposeError> {
        if changes.is_empty() {
            return Err(ProposeError::Invalid("empty membership change".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.send(Request::ChangeMembership { changes, context, reply: tx })?;
        self.wait(rx).await
    }

    /// Adds a learner: it receives the log (a snapshot first) but does not vote. `context` reaches
    /// [`StateMachine::apply_membership`] on every member (e.g. the new member's address).
    pub async fn add_learner(&self, id: u64, context: Vec<u8>) -> Result<Membership, ProposeError> {
        self.change_membership(vec![MemberChange::AddLearner(id)], context).await
    }

    /// Makes a learner (or a new member) a voter. Promote a learner once it has caught up
    /// (see [`RaftStatus::progress`] on the leader), or the group may stall while it catches up.
    pub async fn promote(&self, id: u64) -> Result<Membership, ProposeError> {
        self.change_membership(vec![MemberChange::AddVoter(id)], Vec::new()).await
    }

    /// Removes a member (voter or learner).
    pub async fn remove(&self, id: u64) -> Result<Membership, ProposeError> {
        self.change_membership(vec![MemberChange::Remove(id)], Vec::new()).await
    }

    /// Asks the leader to hand leadership to `to` (best effort; watch [`RaftHandle::status`]).
    pub fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.send(Request::TransferLeader(to))
    }

    /// For transports: the last message to `id` could not be delivered.
    pub fn report_unreachable(&self, id: u64) -> Result<(), ProposeError> {
        self.send(Request::ReportUnreachable(id))
    }

    /// For transports: whether a snapshot message to `id` was delivered.
    pub fn report_snapshot(&self, id: u64, success: bool) -> Result<(), ProposeError> {
        self.send(Request::ReportSnapshot { id, success })
    }

    /// The latest status (updated after every loop iteration).
    pub fn status(&self) -> RaftStatus {
        self.inner.status.borrow().clone()
    }

    /// A receiver that is notified on every status change.
    pub fn status_watch(&self) -> watch::Receiver<RaftStatus> {
        self.inner.status.clone()
    }

    /// Waits until `condition` holds for the status, or `timeout` passes.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&RaftStatus) -> bool,
    ) -> Result<RaftStatus, ProposeError> {
        let mut rx = self.inner.status.clone();
        let result = tokio::time::timeout(timeout, rx.wait_for(|s| condition(s) || !s.running)).await;
        match result {
            Err(_) => Err(ProposeError::Timeout(timeout)),
            Ok(Err(_)) => Err(ProposeError::Stopped),
            Ok(Ok(s)) if condition(&s) => Ok(s.clone()),
            Ok(Ok(_)) => Err(ProposeError::Stopped),
        }
    }

    /// Stops the driver and waits until it has stopped and closed its database (the state dir can
    /// be reopened at once). Proposals already in the log fail with `Indeterminate`, other pending
    /// requests with `Stopped`.
    pub async fn shutdown(self) {
        let _ = self.send(Request::Shutdown);
        let mut rx = self.inner.status.clone();
        // Resolves when the driver publishes `running: false` or drops the status sender.
        let _ = rx.wait_for(|s| !s.running).await;
    }
}

/// Read access to the state machine. Cheap to clone.
pub struct StateReader<S> {
    state: Arc<RwLock<S>>,
    handle: RaftHandle,
}

impl<S> Clone for StateReader<S> {
    fn clone(&self) -> Self {
        StateReader { state: self.state.clone(), handle: self.handle.clone() }
    }
}

impl<S: StateMachine> StateReader<S> {
    /// Reads the local state as applied so far (may be stale on a follower or a deposed leader).
    /// Keep `f` short: the raft thread waits for it before applying further entries.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Linearizable read: a ReadIndex barrier, then a local read.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, ProposeError> {
        self.handle.read_index().await?;
        Ok(self.read(f))
    }
}

/// Completion of the driver thread.
pub struct RaftTask {
    done: oneshot::Receiver<Result<(), StoreError>>,
}

impl RaftTask {
    /// Waits for the driver to stop; `Err` if it stopped on a fatal error.
    pub async fn join(self) -> Result<(), StoreError> {
        self.done.await.unwrap_or(Err(StoreError::Panicked))
    }
}

/// A started driver.
pub struct RaftNode<S> {
    pub handle: RaftHandle,
    pub state: StateReader<S>,
    pub task: RaftTask,
}

/// Starts a driver: opens (or creates) `state_dir/raft.redb`, bootstraps a new group if it holds no
/// raft state (per [`RaftConfig::bootstrap`]) or recovers from it, and runs the raft loop on a
/// dedicated thread. Resolves once the driver is ready to take requests. All disk I/O happens on
/// the driver thread.
pub async fn start<S: StateMachine>(
    config: RaftConfig,
    state_machine: S,
    transport: Arc<dyn Transport>,
) -> Result<RaftNode<S>, StoreError> {
    config.validate()?;
    let (tx, rx) = mpsc::channel();
    let (status_tx, status_rx) = watch::channel(RaftStatus { id: config.id, running: true, ..RaftStatus::default() });
    let state = Arc::new(RwLock::new(state_machine));
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let handle = RaftHandle {
        inner: Arc::new(HandleInner { id: config.id, tx, status: status_rx, timeout: config.request_timeout }),
    };
    let thread_state = state.clone();
    std::thread::Builder::new()
        .name(format!("raft-{}", config.id))
        .spawn(move || {
            let result = driver::run(config, thread_state, transport, rx, status_tx, ready_tx);
            match &result {
                // A lock held by another process is an expected start-up outcome (the caller
                // talks to that process instead), not a failure worth an error line.
                Err(e @ StoreError::Locked { .. }) => tracing::debug!(target: "shoal::raft", "{e}"),
                Err(e) => tracing::error!(target: "shoal::raft", "raft driver stopped: {e}"),
                Ok(()) => {}
            }
            let _ = done_tx.send(result);
        })
        .map_err(StoreError::Spawn)?;
    if ready_rx.await.is_err() {
        // The thread ended without reporting readiness: it failed during start-up.
        return Err(match done_rx.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) | Err(_) => StoreError::Panicked,
        });
    }
    Ok(RaftNode { handle: handle.clone(), state: StateReader { state, handle }, task: RaftTask { done: done_rx } })
}
