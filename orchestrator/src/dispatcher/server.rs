//! The manager's side of the Dispatcher protocol: agents register, hold an assignment session,
//! heartbeat, and report task statuses.
//!
//! ```text
//!            ┌ view builder: changed tasks → per-node assignments (views.rs; specs cached per task)
//!  Cluster ──┤ monitor (leader): Ready nodes silent for `down_after` → Down
//!            └ batcher: status reports of all agents → ReportStatus (group commit)
//!  Session(node) ── first message: the node's complete set; then diffs of its view, seq + 1
//! ```
//!
//! Only the leader serves agents (the others answer UNAVAILABLE naming the leader). Everything
//! the dispatcher keeps in memory (last heartbeat per node, the assignment view) is derived from
//! the replicated state or rebuilt on a new leader, which gives every node a fresh grace period.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::Stream;
use shoal_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::liveness::{forgive_stall, Liveness, MassSilence, Verdict};
use super::pieces::pieces;
use super::taskspec::{RestartOwner, TaskSpec, TaskSpecOptions};
use super::views::{node_statuses_if_changed, NodeAssignments, ViewBuilder, Views};
use crate::manager::cluster::now;
use crate::manager::tokens::admits_agent;
use crate::manager::{Cluster, ClusterError};
use crate::store::command::{Command, StatusUpdate, MAX_TASKS_PER_COMMAND};
use crate::store::raft::ProposeError;
use crate::store::state::{ClusterState, Node, NodeId, NodeLabels, NodeRole, NodeStatus, TaskId};
use crate::wire;

/// `Assignment.spec_format` of a JSON [`TaskSpec`].
pub const SPEC_FORMAT: &str = TaskSpec::FORMAT;
/// `Assignment.spec_format` of a JSON [`TaskSpec`] shared by a service's replicas: the agent
/// fills in the task's id, replica number and node ([`TaskSpec::for_task`]).
pub const SHARED_SPEC_FORMAT: &str = TaskSpec::SHARED_FORMAT;
/// `Assignment.spec_format` when the manager could not build the spec: `spec` is the reason, which
/// the agent reports as the task's failure.
pub const SPEC_ERROR_FORMAT: &str = shoal_agent::session::SPEC_ERROR_FORMAT;

/// gRPC metadata key naming the leader in UNAVAILABLE answers of non-leaders.
pub const LEADER_METADATA: &str = "shoal-leader";

/// The shortest heartbeat period: agents never heartbeat more often than this.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// Timings [`DispatcherConfig::validate`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatcherConfigError {
    #[error("the heartbeat period ({}) is shorter than {}", humantime::format_duration(*period), humantime::format_duration(MIN_HEARTBEAT))]
    HeartbeatTooShort { period: Duration },
    #[error(
        "the down window ({}) must be longer than the heartbeat period ({})",
        humantime::format_duration(*down_after),
        humantime::format_duration(*heartbeat)
    )]
    DownTooSoon { down_after: Duration, heartbeat: Duration },
}

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Agents may present this to register (besides the cluster's tokens, if it has any; empty:
    /// only those).
    pub join_token: String,
    /// How often agents heartbeat.
    pub heartbeat_period: Duration,
    /// A Ready node not heard from for this long is marked Down (its tasks are rescheduled).
    pub down_after: Duration,
    /// When most nodes go silent at once, a longer window before they are marked down (see
    /// [`MassSilence`]).
    pub mass_silence: MassSilence,
    /// Embedded mode: containers get the service's restart policy, so the engine keeps them up
    /// while no manager runs. Otherwise the control plane owns restarts (engine policy `no`).
    pub engine_restarts: bool,
    /// Most status updates in one store write. There is no batching window: a report is
    /// proposed at once when no write is in flight; reports (from all agents) that arrive during
    /// a write become the next one.
    pub status_batch_max: usize,
}

impl DispatcherConfig {
    /// Heartbeats every 2 s, Down after 3 missed periods (6 s; detection within ~6.5 s).
    pub fn new(join_token: impl Into<String>) -> Self {
        DispatcherConfig {
            join_token: join_token.into(),
            heartbeat_period: Duration::from_secs(2),
            down_after: Duration::from_secs(6),
            mass_silence: MassSilence::default(),
            engine_restarts: false,
            // Large enough that a big deploy's reports (thousands of agents, several reports per
            // task) do not queue behind one another for many rounds of the raft log.
            status_batch_max: 20_000,
        }
    }

    /// `down_after` as `periods` heartbeat periods.
    pub fn with_heartbeat(mut self, period: Duration, periods: u32) -> Self {
        self.heartbeat_period = period;
        self.down_after = period * periods;
        self
    }

    /// Checks the timings: agents heartbeat at least every [`MIN_HEARTBEAT`] (they never go
    /// faster), and a node is marked down only after more than one heartbeat period.
    pub fn validate(&self) -> Result<(), DispatcherConfigError> {
        if self.heartbeat_period < MIN_HEARTBEAT {
            return Err(DispatcherConfigError::HeartbeatTooShort { period: self.heartbeat_period });
        }
        if self.down_after <= self.heartbeat_period {
            return Err(DispatcherConfigError::DownTooSoon {
                down_after: self.down_after,
                heartbeat: self.heartbeat_period,
            });
        }
        Ok(())
    }

    fn check_every(&self) -> Duration {
        (self.heartbeat_period / 4).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
struct Counters {
    status_proposals: AtomicU64,
    status_updates: AtomicU64,
    sessions_opened: AtomicU64,
    nodes_marked_down: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DispatcherStats {
    /// ReportStatus commands proposed.
    pub status_proposals: u64,
    /// Task status updates they carried.
    pub status_updates: u64,
    pub sessions_opened: u64,
    pub nodes_marked_down: u64,
}

struct Batch {
    updates: Vec<StatusUpdate>,
    reply: oneshot::Sender<Result<(), Status>>,
}

struct Inner {
    cluster: Cluster,
    config: DispatcherConfig,
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// Nodes heard since the monitor's last check after a long gap (see [`Liveness::judge`]).
    heard_late: AtomicUsize,
    /// Every node's status as of the last assignment view, for heartbeats: they must not wait
    /// for the state's lock, which the raft thread and long readers (an orchestration round
    /// over a large state) can hold for a while — a late heartbeat ends a session.
    statuses: Mutex<Arc<HashMap<NodeId, NodeStatus>>>,
    batches: mpsc::Sender<Batch>,
    /// Every node's assignments, which its session diffs against.
    views: Views,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    counters: Counters,
    /// Each node's open session (its id) and whether it has sent its first status report (see
    /// `wait_synced`).
    sessions: watch::Sender<HashMap<NodeId, (u64, bool)>>,
}

/// The Dispatcher gRPC service. Cheap to clone.
#[derive(Clone)]
pub struct DispatcherService {
    inner: Arc<Inner>,
}

/// The dispatcher's background tasks (view builder, heartbeat monitor, status batcher).
pub struct DispatcherTasks {
    handles: Vec<JoinHandle<()>>,
}

impl DispatcherTasks {
    /// Waits for the tasks to end (they end when the shutdown signal turns true).
    pub async fn join(self) {
        for handle in self.handles {
            let _ = handle.await;
        }
    }
}

impl DispatcherService {
    /// The service and its background tasks, which run until `shutdown` turns true. Open
    /// sessions end then too (with UNAVAILABLE), so a graceful server shutdown completes.
    pub fn start(
        cluster: Cluster,
        config: DispatcherConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(DispatcherService, DispatcherTasks), DispatcherConfigError> {
        config.validate()?;
        let (batch_tx, batch_rx) = mpsc::channel(4096);
        let (leader_tx, leader_rx) = watch::channel(cluster.is_leader());
        let inner = Arc::new(Inner {
            cluster,
            config,
            last_seen: Mutex::new(HashMap::new()),
            heard_late: AtomicUsize::new(0),
            statuses: Mutex::new(Arc::new(HashMap::new())),
            batches: batch_tx,
            views: Views::default(),
            leader: leader_rx,
            shutdown,
            counters: Counters::default(),
            sessions: watch::Sender::new(HashMap::new()),
        });
        let handles = vec![
            tokio::spawn(build_views(inner.clone(), leader_tx)),
            tokio::spawn(monitor(inner.clone())),
            tokio::spawn(batch_statuses(inner.clone(), batch_rx)),
        ];
        Ok((DispatcherService { inner }, DispatcherTasks { handles }))
    }

    pub fn into_server(self) -> pb::dispatcher_server::DispatcherServer<Self> {
        pb::dispatcher_server::DispatcherServer::new(self).max_encoding_message_size(256 << 20)
    }

    /// Waits until `node`'s agent is in session and its first status report is applied: its
    /// adopted containers' states are then in the store (so a new process answers `ps` with
    /// what happened while none ran). False after `timeout`.
    pub async fn wait_synced(&self, node: &str, timeout: Duration) -> bool {
        let mut sessions = self.inner.sessions.subscribe();
        let synced = sessions.wait_for(|s| s.get(node).is_some_and(|(_, synced)| *synced));
        tokio::time::timeout(timeout, synced).await.is_ok_and(|r| r.is_ok())
    }

    pub fn stats(&self) -> DispatcherStats {
        let c = &self.inner.counters;
        DispatcherStats {
            status_proposals: c.status_proposals.load(Ordering::Relaxed),
            status_updates: c.status_updates.load(Ordering::Relaxed),
            sessions_opened: c.sessions_opened.load(Ordering::Relaxed),
            nodes_marked_down: c.nodes_marked_down.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn require_leader(&self) -> Result<(), Status> {
        let status = self.cluster.raft().status();
        if status.is_leader() {
            return Ok(());
        }
        let mut refusal = not_leader(status.leader);
        self.name_leader(&mut refusal, status.leader);
        Err(refusal)
    }

    fn touch(&self, node: &str) {
        let at = Instant::now();
        let mut seen = lock(&self.last_seen);
        // A node heard before (nearly every heartbeat) keeps its key: no allocation per call.
        let previous = match seen.get_mut(node) {
            Some(last) => Some(std::mem::replace(last, at)),
            None => seen.insert(node.to_string(), at),
        };
        drop(seen);
        if previous.is_some_and(|p| at.saturating_duration_since(p) > Liveness::late_after(self.config.down_after)) {
            self.heard_late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The node's status as of the last view, else (a node that registered since) as applied.
    fn recent_node_status(&self, node: &str) -> Option<NodeStatus> {
        let statuses = lock(&self.statuses).clone();
        statuses.get(node).copied().or_else(|| self.node_status(node))
    }

    fn node_status(&self, node: &str) -> Option<NodeStatus> {
        self.cluster.read(|s| s.nodes.get(node).map(|n| n.status))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Adds the leader's address, so that the agent goes there directly.
    fn name_leader(&self, status: &mut Status, leader: Option<u64>) {
        let address = leader.and_then(|id| self.cluster.read(|s| s.managers.get(&id).map(|m| m.address.clone())));
        if let Some(value) = address.and_then(|a| a.parse().ok()) {
            status.metadata_mut().insert(shoal_agent::session::LEADER_ADDRESS_METADATA, value);
        }
    }
}

fn not_leader(leader: Option<u64>) -> Status {
    let mut status = Status::unavailable(match leader {
        Some(id) if id != 0 => format!("this manager is not the leader; the leader is manager {id}"),
        _ => "this manager is not the leader, and no leader is elected yet".to_string(),
    });
    if let Some(id) = leader.filter(|id| *id != 0) {
        if let Ok(value) = id.to_string().parse() {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
    }
    status
}

fn cluster_status(error: ClusterError) -> Status {
    match error {
        ClusterError::Propose(ProposeError::NotLeader { leader_hint }) => not_leader(leader_hint),
        ClusterError::Propose(e) => Status::unavailable(e.to_string()),
        ClusterError::Rejected(message) => Status::failed_precondition(message),
        ClusterError::Corrupt(message) => Status::internal(message),
        e @ (ClusterError::NoQuorum { .. } | ClusterError::Forward(_)) => Status::unavailable(e.to_string()),
    }
}

/// Whether registering `node` would change nothing of the `known` record: it is ready and the
/// agent tells the same facts. What registration does not set (availability, the operator's
/// labels, timestamps, status message) is taken from `known`; the agent's labels are compared
/// with what it gave last.
fn same_registration(known: &Node, labels: Option<&NodeLabels>, node: &Node) -> bool {
    let agent_labels = labels.map_or(&known.labels, |l| &l.agent);
    let as_registered = Node {
        availability: known.availability,
        labels: known.labels.clone(),
        status_message: known.status_message.clone(),
        updated_at: known.updated_at,
        ..node.clone()
    };
    known.status == NodeStatus::Ready && as_registered == *known && *agent_labels == node.labels
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A fresh node id: 12 lowercase letters and digits.
fn new_node_id(taken: impl Fn(&str) -> bool) -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        let mut bits = hasher.finish();
        let id: String = (0..12)
            .map(|_| {
                let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
                bits /= ALPHABET.len() as u64;
                c
            })
            .collect();
        if !taken(&id) {
            return id;
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::Assignments, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let inner = &self.inner;
        let request = request.into_inner();
        let cluster_tokens = inner.cluster.read(|s| s.tokens.clone());
        if !admits_agent(&request.token, &inner.config.join_token, cluster_tokens.as_ref()) {
            return Err(Status::unauthenticated("invalid join token"));
        }
        inner.require_leader()?;
        let facts = request.node.ok_or_else(|| Status::invalid_argument("the request describes no node"))?;
        let id = if facts.id.is_empty() {
            inner.cluster.read(|s| new_node_id(|id| s.nodes.contains_key(id)))
        } else if valid_node_id(&facts.id) {
            facts.id.clone()
        } else {
            return Err(Status::invalid_argument(format!(
                "invalid node id {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                facts.id
            )));
        };
        let role = match facts.role.as_str() {
            "" | "worker" => NodeRole::Worker,
            "manager" => NodeRole::Manager,
            other => return Err(Status::invalid_argument(format!("invalid node role {other:?}: manager or worker"))),
        };
        if let Some(key) = facts.labels.keys().find(|k| k.trim().is_empty()) {
            return Err(Status::invalid_argument(format!("invalid node label key {key:?}")));
        }
        let node = Node {
            id: id.clone(),
            hostname: if facts.hostname.is_empty() { id.clone() } else { facts.hostname },
            role,
            // The store keeps the availability an operator set for a returning node.
            availability: crate::store::state::Availability::Active,
            status: NodeStatus::Ready,
            nano_cpus: facts.nano_cpus,
            memory_bytes: facts.memory_bytes,
            labels: facts.labels.into_iter().collect(),
            os: facts.os,
            arch: facts.arch,
            engine_version: facts.engine_version,
            address: Some(facts.address).filter(|a| !a.is_empty()),
            status_message: String::new(),
            updated_at: now(),
        };
        inner.touch(&id);
        // A ready node that registers again unchanged (its session ended: a restart, a timeout)
        // needs no write: after a hiccup, thousands of nodes do so at once.
        let unchanged = inner
            .cluster
            .read(|s| s.nodes.get(&id).is_some_and(|known| same_registration(known, s.node_labels.get(&id), &node)));
        if !unchanged {
            inner.cluster.propose(Command::RegisterNode { node: Box::new(node) }).await.map_err(cluster_status)?;
        }
        tracing::info!(node = %id, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            node_id: id,
            heartbeat_period_ms: inner.config.heartbeat_period.as_millis() as u64,
        }))
    }

    type SessionStream = SessionStream;

    async fn session(&self, request: Request<pb::SessionRequest>) -> Result<Response<SessionStream>, Status> {
        let inner = &self.inner;
        inner.require_leader()?;
        let pb::SessionRequest { node_id: node, accepts_pieces } = request.into_inner();
        if inner.node_status(&node).is_none() {
            return Err(Status::not_found(format!("node {node} is not registered: register it first")));
        }
        // Everything committed before this point is applied here, and in the view before the
        // first message: a complete set missing a task would make the agent remove its container.
        let index = inner.cluster.read_linearizable(|s| s.applied_index).await.map_err(cluster_status)?;
        inner.touch(&node);
        let session = inner.counters.sessions_opened.fetch_add(1, Ordering::Relaxed) + 1;
        inner.sessions.send_modify(|sessions| {
            sessions.insert(node.clone(), (session, false));
        });
        let feed = SessionFeed::new(self.inner.clone(), node, session, index, accepts_pieces);
        Ok(Response::new(Box::pin(futures_util::stream::unfold(feed, |mut feed| async move {
            let message = feed.next().await?;
            Some((message, feed))
        }))))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let inner = &self.inner;
        inner.require_leader()?;
        let node = request.into_inner().node_id;
        // Recent is enough: a node that was just marked down and heartbeats now is brought back by
        // its next heartbeat.
        let status = inner.recent_node_status(&node);
        let Some(status) = status else {
            return Err(Status::not_found(format!("node {node} is not registered: register it again")));
        };
        inner.touch(&node);
        if status == NodeStatus::Down {
            let command = Command::SetNodeStatus {
                node: node.clone(),
                status: NodeStatus::Ready,
                message: String::new(),
                at: now(),
            };
            inner.cluster.propose(command).await.map_err(cluster_status)?;
            tracing::info!(node = %node, "node is back");
        }
        Ok(Response::new(pb::HeartbeatResponse {
            heartbeat_period_ms: inner.config.heartbeat_period.as_millis() as u64,
        }))
    }

    async fn update_task_status(
        &self,
        request: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let inner = &self.inner;
        inner.require_leader()?;
        let request = request.into_inner();
        let node = request.node_id;
        let updates = request
            .updates
            .into_iter()
            .map(|u| status_update(&node, u))
            .collect::<Result<Vec<StatusUpdate>, Status>>()?;
        if !updates.is_empty() {
            let (reply, answer) = oneshot::channel();
            let shutting_down = || Status::unavailable("the manager is shutting down");
            inner.batches.send(Batch { updates, reply }).await.map_err(|_| shutting_down())?;
            answer.await.map_err(|_| shutting_down())??;
        }
        // Everything this node reported is applied: after its session's first report, the
        // state shows what its containers are doing.
        inner.sessions.send_if_modified(|sessions| match sessions.get_mut(&node) {
            Some((_, synced)) if !*synced => {
                *synced = true;
                true
            }
            _ => false,
        });
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }
}

fn status_update(node: &str, u: pb::TaskStatus) -> Result<StatusUpdate, Status> {
    let state = wire::task_state_from(u.state)
        .ok_or_else(|| Status::invalid_argument(format!("task {}: unknown task state {}", u.task, u.state)))?;
    Ok(StatusUpdate {
        task: u.task,
        node: node.to_string(),
        state,
        container_id: Some(u.container_id).filter(|c| !c.is_empty()),
        exit_code: u.exit_code,
        health: wire::health_from(u.health),
        message: u.message,
        ports: u.ports,
        cleanup_errors: u.cleanup_errors,
        container_name: Some(u.container_name).filter(|n| !n.is_empty()),
        sequence: u.sequence,
    })
}

/// One agent session's messages: the node's complete set, then a diff after every change of its
/// assignments. Each is made when the stream is asked for the next one: no task and
/// no queue of its own per session (10,000 sessions kept ≈3 KiB each in those), and an agent that
/// reads slowly gets one diff of everything that changed meanwhile instead of a queue of them.
/// A large message goes in pieces ([`pieces`]). Dropping it (the agent went away, the server
/// stops) ends the session.
struct SessionFeed {
    inner: Arc<Inner>,
    node: NodeId,
    session: u64,
    /// The applied index the first message must include.
    index: u64,
    /// The node's view; `None` until the first message is made.
    view: Option<watch::Receiver<Arc<NodeAssignments>>>,
    /// What the agent was last sent.
    current: Arc<NodeAssignments>,
    /// The last sequence number sent.
    sequence: u64,
    /// Pieces of the last message made (see [`pieces`]) not sent yet.
    queued: VecDeque<pb::Assignments>,
    /// The agent reassembles complete sets sent in pieces.
    accepts_pieces: bool,
    leader: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    /// An error was sent: the stream ends after it.
    ended: bool,
}

/// A session message before it is numbered and cut into pieces: complete, changed, removed.
type Message = (bool, Vec<pb::Assignment>, Vec<TaskId>);

impl SessionFeed {
    fn new(inner: Arc<Inner>, node: NodeId, session: u64, index: u64, accepts_pieces: bool) -> Self {
        let (leader, shutdown) = (inner.leader.clone(), inner.shutdown.clone());
        SessionFeed {
            inner,
            node,
            session,
            index,
            view: None,
            current: Arc::default(),
            sequence: 0,
            queued: VecDeque::new(),
            accepts_pieces,
            leader,
            shutdown,
            ended: false,
        }
    }

    /// The next message: the complete set first, then each diff, in pieces; `None` once the
    /// session is over.
    async fn next(&mut self) -> Option<Result<pb::Assignments, Status>> {
        if self.ended {
            return None;
        }
        if let Some(piece) = self.queued.pop_front() {
            // Pending once: tonic then sends the previous piece before it encodes this one, so
            // its buffer holds one piece at a time (see `pieces`).
            tokio::task::yield_now().await;
            return Some(Ok(piece));
        }
        let message = match self.view.is_some() {
            false => self.first().await,
            true => self.diff().await,
        };
        let Ok((complete, changed, removed)) = message else {
            self.ended = true;
            return message.err().map(Err);
        };
        self.queued = pieces(self.sequence + 1, complete, changed, removed, self.accepts_pieces).into();
        self.sequence += self.queued.len() as u64;
        self.queued.pop_front().map(Ok)
    }

    async fn first(&mut self) -> Result<Message, Status> {
        let mut built = self.inner.views.index();
        let index = self.index;
        let caught_up = tokio::time::timeout(Duration::from_secs(10), built.wait_for(|built| *built >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        if !caught_up {
            return Err(Status::unavailable("the manager's assignments are not up to date; retry"));
        }
        let mut view = self.inner.views.node(&self.node);
        self.current = view.borrow_and_update().clone();
        self.view = Some(view);
        Ok((true, self.current.values().map(|a| a.as_ref().clone()).collect(), Vec::new()))
    }

    async fn diff(&mut self) -> Result<Message, Status> {
        let Some(view) = self.view.as_mut() else {
            return Err(Status::internal("the session has no view"));
        };
        loop {
            tokio::select! {
                changed = view.changed() => if changed.is_err() {
                    return Err(Status::unavailable("the manager is shutting down"));
                },
                changed = self.leader.changed() => {
                    if changed.is_err() || !*self.leader.borrow_and_update() {
                        let leader = self.inner.cluster.raft().status().leader;
                        let mut refusal = not_leader(leader);
                        self.inner.name_leader(&mut refusal, leader);
                        return Err(refusal);
                    }
                    continue;
                }
                _ = self.shutdown.changed() => return Err(Status::unavailable("the manager is shutting down")),
            }
            let next = view.borrow_and_update().clone();
            if Arc::ptr_eq(&next, &self.current) {
                continue;
            }
            let current = std::mem::replace(&mut self.current, next);
            let next = &self.current;
            let changed: Vec<pb::Assignment> = next
                .iter()
                .filter(|(id, a)| current.get(id).is_none_or(|old| !Arc::ptr_eq(old, a)))
                .map(|(_, a)| a.as_ref().clone())
                .collect();
            let removed: Vec<TaskId> = current.keys().filter(|id| !next.contains_key(id)).copied().collect();
            if changed.is_empty() && removed.is_empty() {
                continue;
            }
            return Ok((false, changed, removed));
        }
    }
}

impl Drop for SessionFeed {
    fn drop(&mut self) {
        let (node, session) = (&self.node, self.session);
        self.inner.sessions.send_if_modified(|sessions| {
            let ours = sessions.get(node).is_some_and(|(id, _)| *id == session);
            ours && sessions.remove(node).is_some()
        });
    }
}

async fn build_views(inner: Arc<Inner>, leader: watch::Sender<bool>) {
    let options = TaskSpecOptions {
        restart: if inner.config.engine_restarts { RestartOwner::Engine } else { RestartOwner::ControlPlane },
    };
    let mut builder = ViewBuilder::new(options);
    // The nodes' revision the published statuses were taken at.
    let mut statuses_seen = None;
    let mut changes = inner.cluster.subscribe();
    let mut raft = inner.cluster.raft().status_watch();
    let mut shutdown = inner.shutdown.clone();
    changes.mark_changed();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Only the leader serves sessions; a new leader builds from scratch.
                if !*leader.borrow() {
                    continue;
                }
                // Usually a few tasks, but the first build (and one after a restore) covers every
                // task: on a blocking thread, so the runtime's workers keep serving meanwhile.
                let cluster = inner.cluster.clone();
                let mut taken = std::mem::replace(&mut builder, ViewBuilder::new(options));
                let started = Instant::now();
                let built = tokio::task::spawn_blocking(move || {
                    let large = cluster.read(|state| taken.is_larger_than(state, LARGE_BUILD));
                    let mut build = |state: &ClusterState| {
                        (taken.build(state), state.applied_index, node_statuses_if_changed(state, statuses_seen))
                    };
                    let (changed, index, statuses) =
                        if large { build(&cluster.read(ClusterState::clone)) } else { cluster.read(build) };
                    (taken, changed, index, statuses)
                })
                .await;
                match built {
                    Ok((used, changed, index, statuses)) => {
                        builder = used;
                        if let Some((revision, statuses)) = statuses {
                            statuses_seen = Some(revision);
                            *lock(&inner.statuses) = Arc::new(statuses);
                        }
                        tracing::debug!(
                            build_ms = started.elapsed().as_millis() as u64,
                            nodes = changed.len(),
                            index,
                            "assignment views built"
                        );
                        inner.views.publish(changed, index);
                    }
                    // The builder's caches went with the failed thread; the next change rebuilds.
                    Err(e) => tracing::error!("building the assignment view failed: {e}"),
                }
            }
            changed = raft.changed() => {
                if changed.is_err() {
                    return;
                }
                let is_leader = raft.borrow_and_update().is_leader();
                if leader.send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader) {
                    if is_leader {
                        changes.mark_changed();
                    } else {
                        builder = ViewBuilder::new(options);
                        inner.views.clear();
                    }
                }
            }
        }
    }
}

/// Tasks above which the view builder works on a copy of the state instead of under its lock:
/// a copy costs tens of milliseconds at 100,000 tasks, building that many specs seconds.
const LARGE_BUILD: usize = 5_000;

/// On the leader: marks Ready nodes whose last heartbeat is older than `down_after` as Down
/// (longer in a mass silence; see [`Liveness`]).
async fn monitor(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.check_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = inner.shutdown.clone();
    let mut was_leader = false;
    let mut last_check = Instant::now();
    let new_liveness = || Liveness::new(inner.config.down_after, inner.config.mass_silence);
    let mut liveness = new_liveness();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        if !inner.cluster.is_leader() {
            was_leader = false;
            last_check = Instant::now();
            continue;
        }
        let at = Instant::now();
        if !was_leader {
            // A new leader has no heartbeat history: every node starts a fresh grace period.
            was_leader = true;
            lock(&inner.last_seen).clear();
            liveness = new_liveness();
        }
        let stalled = forgive_stall(&mut lock(&inner.last_seen), last_check, at, inner.config.check_every());
        last_check = at;
        if !stalled.is_zero() {
            // Info, not a warning: in the embedded cluster it would print into `shoal up`'s output.
            tracing::info!(
                "this manager was stalled for {stalled:.1?} (the node monitor ran late); no node is blamed for it"
            );
        }
        let ready: Vec<NodeId> = inner
            .cluster
            .read(|s| s.nodes.values().filter(|n| n.status == NodeStatus::Ready).map(|n| n.id.clone()).collect());
        let quiet: Vec<(NodeId, Duration)> = {
            let mut seen = lock(&inner.last_seen);
            ready
                .into_iter()
                .map(|id| {
                    // Looked up before inserting: a node heard before keeps its key, no copy of the id.
                    let last = match seen.get(&id) {
                        Some(&last) => last,
                        None => {
                            seen.insert(id.clone(), at);
                            at
                        }
                    };
                    (id, at.saturating_duration_since(last))
                })
                .collect()
        };
        let verdict = liveness.judge(at, &quiet, inner.heard_late.swap(0, Ordering::Relaxed));
        if verdict.missing > 0 {
            tracing::debug!(
                missing = verdict.missing,
                of = verdict.population,
                held = verdict.held,
                down = verdict.down.len(),
                "nodes missing heartbeats"
            );
        }
        report_mass_silence(&verdict, &inner.config);
        let silent = verdict.down;
        if silent.is_empty() {
            continue;
        }
        let stamp = now();
        let commands = silent
            .iter()
            .map(|(id, quiet)| Command::SetNodeStatus {
                node: id.clone(),
                status: NodeStatus::Down,
                message: format!("no heartbeat for {:.1}s", quiet.as_secs_f64()),
                at: stamp,
            })
            .collect();
        for (id, quiet) in &silent {
            tracing::warn!(node = %id, "node is down: no heartbeat for {quiet:?}");
        }
        match inner.cluster.propose_all(commands).await {
            Ok(_) => {
                inner.counters.nodes_marked_down.fetch_add(silent.len() as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!("marking nodes down was not applied: {e}"),
        }
    }
}

/// Says when a mass silence begins and ends: while it lasts, nodes are marked down later than
/// configured, which an operator must be able to see.
fn report_mass_silence(verdict: &Verdict, config: &DispatcherConfig) {
    if let Some((missing, of)) = verdict.began {
        tracing::warn!(
            "{missing} of {of} nodes missed heartbeats at once: more likely this manager or its network than the \
             nodes; until they are heard again, a node is marked down after {} without a heartbeat instead of {}",
            humantime::format_duration(config.mass_silence.hold),
            humantime::format_duration(config.down_after)
        );
    }
    if verdict.ended {
        tracing::warn!(
            "the mass silence is over: nodes are marked down after {} without a heartbeat again",
            humantime::format_duration(config.down_after)
        );
    }
}

/// Proposes agents' status reports as ReportStatus commands, one write in flight at a time, and
/// answers each caller once its write is applied (see [`group_commit`]). A write of many reports
/// is several commands of [`MAX_TASKS_PER_COMMAND`] (one fsync still), so no log entry outgrows
/// a raft message.
async fn batch_statuses(inner: Arc<Inner>, batches: mpsc::Receiver<Batch>) {
    let max = inner.config.status_batch_max.max(1);
    let commit = |updates: Vec<StatusUpdate>| {
        let inner = inner.clone();
        async move {
            let n = updates.len() as u64;
            let commands = Command::ReportStatus { updates, at: now() }.split(MAX_TASKS_PER_COMMAND);
            let result = inner.cluster.propose_all(commands).await;
            inner.counters.status_proposals.fetch_add(1, Ordering::Relaxed);
            inner.counters.status_updates.fetch_add(n, Ordering::Relaxed);
            result.map(drop).map_err(cluster_status)
        }
    };
    group_commit(batches, inner.shutdown.clone(), max, commit).await;
}

/// Group commit: waits for a report, then commits it together with every report already queued
/// (up to `max` updates) — those arrived while the previous write was in flight. A lone report
/// is thus written at once, with no batching delay, and under load many share one write. Ends on
/// shutdown or when every sender is gone.
async fn group_commit<F, Fut>(
    mut batches: mpsc::Receiver<Batch>,
    mut shutdown: watch::Receiver<bool>,
    max: usize,
    mut commit: F,
) where
    F: FnMut(Vec<StatusUpdate>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => return,
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        let mut waiting = take_queued(first, &mut batches, max);
        let updates: Vec<StatusUpdate> = waiting.iter_mut().flat_map(|b| std::mem::take(&mut b.updates)).collect();
        let answer = commit(updates).await;
        for batch in waiting {
            let _ = batch.reply.send(answer.clone());
        }
    }
}

/// `first` plus the batches queued behind it, without waiting, until they hold `max` updates.
fn take_queued(first: Batch, batches: &mut mpsc::Receiver<Batch>, max: usize) -> Vec<Batch> {
    let mut count = first.updates.len();
    let mut taken = vec![first];
    while count < max {
        let Ok(batch) = batches.try_recv() else { break };
        count += batch.updates.len();
        taken.push(batch);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::TaskState;

    #[test]
    fn only_a_ready_node_telling_the_same_facts_registers_without_a_write() {
        let known = crate::scheduler::tests::node("a");
        let again = Node { updated_at: 99, ..known.clone() };
        assert!(same_registration(&known, None, &again));
        // An operator's availability and labels are the store's, not the agent's to repeat.
        let drained = Node { availability: crate::store::state::Availability::Drain, ..known.clone() };
        assert!(same_registration(&drained, None, &again));
        let operator = NodeLabels {
            agent: known.labels.clone(),
            added: [("zone".into(), "x".into())].into(),
            ..NodeLabels::default()
        };
        let labelled = Node { labels: operator.effective(), ..known.clone() };
        assert!(same_registration(&labelled, Some(&operator), &again));

        assert!(!same_registration(&Node { status: NodeStatus::Down, ..known.clone() }, None, &again));
        assert!(!same_registration(&known, None, &Node { memory_bytes: 1, ..again.clone() }));
        let relabelled = Node { labels: [("gpu".into(), "1".into())].into(), ..again.clone() };
        assert!(!same_registration(&known, None, &relabelled));
        assert!(!same_registration(&labelled, Some(&operator), &relabelled));
    }

    #[test]
    fn node_ids() {
        let id = new_node_id(|_| false);
        assert_eq!(id.len(), 12);
        assert!(valid_node_id(&id));
        assert!(!valid_node_id("has space"));
        assert!(!valid_node_id(""));
    }

    #[test]
    fn config_defaults_detect_within_ten_seconds() {
        let config = DispatcherConfig::new("t");
        config.validate().unwrap();
        assert!(config.down_after + config.check_every() <= Duration::from_secs(10));
        assert_eq!(
            DispatcherConfig::new("t").with_heartbeat(Duration::from_secs(1), 1).validate(),
            Err(DispatcherConfigError::DownTooSoon {
                down_after: Duration::from_secs(1),
                heartbeat: Duration::from_secs(1)
            })
        );
        let too_fast = DispatcherConfig::new("t").with_heartbeat(Duration::from_millis(50), 4);
        assert_eq!(
            too_fast.validate(),
            Err(DispatcherConfigError::HeartbeatTooShort { period: Duration::from_millis(50) })
        );
    }

    fn update(task: TaskId) -> StatusUpdate {
        StatusUpdate::new(task, "n", TaskState::Running)
    }

    /// Queues a report of `tasks`; the receiver gets the caller's answer.
    async fn report(
        batches: &mpsc::Sender<Batch>,
        tasks: impl IntoIterator<Item = TaskId>,
    ) -> oneshot::Receiver<Result<(), Status>> {
        let (reply, answer) = oneshot::channel();
        let updates = tasks.into_iter().map(update).collect();
        batches.send(Batch { updates, reply }).await.expect("the batcher runs");
        answer
    }

    /// A running [`group_commit`] whose writes the test sees (their task ids, in `written`) and
    /// completes one by one (`finish`).
    struct TestBatcher {
        batches: mpsc::Sender<Batch>,
        written: mpsc::UnboundedReceiver<Vec<TaskId>>,
        finish: mpsc::UnboundedSender<Result<(), Status>>,
    }

    fn batcher(max: usize) -> TestBatcher {
        let (batches, batch_rx) = mpsc::channel(64);
        let (written_tx, written) = mpsc::unbounded_channel();
        let (finish, finish_rx) = mpsc::unbounded_channel::<Result<(), Status>>();
        let finish_rx = Arc::new(tokio::sync::Mutex::new(finish_rx));
        let commit = move |updates: Vec<StatusUpdate>| {
            let _ = written_tx.send(updates.iter().map(|u| u.task).collect());
            let finish_rx = finish_rx.clone();
            async move { finish_rx.lock().await.recv().await.unwrap_or_else(|| Err(Status::cancelled("test over"))) }
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            let _keep_open = shutdown_tx;
            group_commit(batch_rx, shutdown, max, commit).await
        });
        TestBatcher { batches, written, finish }
    }

    /// What the batcher has written so far, after letting it run (one thread: no wall-clock
    /// timing involved, so a batching delay would show as "nothing written yet").
    async fn written_now(written: &mut mpsc::UnboundedReceiver<Vec<TaskId>>) -> Option<Vec<TaskId>> {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        written.try_recv().ok()
    }

    fn code(answer: Result<Result<(), Status>, oneshot::error::RecvError>) -> Result<(), tonic::Code> {
        answer.expect("every caller is answered").map_err(|s| s.code())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_report_is_written_at_once_and_reports_during_a_write_share_the_next() {
        let TestBatcher { batches, mut written, finish } = batcher(1000);
        let first = report(&batches, [1]).await;
        assert_eq!(written_now(&mut written).await, Some(vec![1]), "written alone, without waiting for company");
        // The first write is in flight: three reports queue up behind it.
        let rest = [report(&batches, [2]).await, report(&batches, [3, 4]).await, report(&batches, [5]).await];
        assert_eq!(written_now(&mut written).await, None, "one write in flight at a time");
        finish.send(Ok(())).ok();
        assert_eq!(code(first.await), Ok(()));
        assert_eq!(written_now(&mut written).await, Some(vec![2, 3, 4, 5]), "one write for everything that queued");
        finish.send(Err(Status::unavailable("lost leadership"))).ok();
        for answer in rest {
            assert_eq!(code(answer.await), Err(tonic::Code::Unavailable), "every caller hears its write's outcome");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_write_holds_at_most_max_updates_give_or_take_the_last_report() {
        let TestBatcher { batches, mut written, finish } = batcher(3);
        let first = report(&batches, [1]).await;
        assert_eq!(written.recv().await, Some(vec![1]));
        let queued = [report(&batches, [2, 3]).await, report(&batches, [4, 5]).await, report(&batches, [6]).await];
        for _ in 0..3 {
            finish.send(Ok(())).ok();
        }
        // A report is never split: the write that reaches `max` takes the whole report.
        assert_eq!(written.recv().await, Some(vec![2, 3, 4, 5]));
        assert_eq!(written.recv().await, Some(vec![6]));
        assert_eq!(code(first.await), Ok(()));
        for answer in queued {
            assert_eq!(code(answer.await), Ok(()));
        }
    }
}
