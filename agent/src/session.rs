//! The agent's side of the Dispatcher protocol: register the node, hold a session with a manager,
//! apply its assignments with the [`TaskRunner`], and report what the containers do.
//!
//! ```text
//!  run_agent ── register ─▶ manager          (node facts from the engine, join token)
//!     │   ◀── Session stream: complete set, then diffs with sequence numbers
//!     │── per task: a worker converging on the desired state (prepare+run / stop / stop+remove)
//!     │── runner statuses → latest per task → UpdateTaskStatus batches
//!     └── heartbeats (with jitter)
//! ```
//!
//! Failures of the control plane never touch the containers: on any RPC or stream error the
//! session is dropped, containers keep running, and the agent reconnects with exponential backoff,
//! trying the managers in order. After reconnecting it re-reports the latest status of every task
//! (the new leader may have missed some) and converges on the new complete set, removing
//! containers of tasks the manager no longer gives it (e.g. rescheduled during a partition).
//! On start, with a known node id, the agent adopts its containers (labelled
//! `io.shoal.node=<id>`) before it reaches any manager.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::{mpsc, watch, Notify};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::engine::docker::error_chain;
use crate::engine::{Engine, EngineError};
use crate::labels;
use crate::runner::{self, RunnerError, TaskRunner};
use crate::spec::{RestartPolicy, TaskSpec};

type Client = pb::dispatcher_client::DispatcherClient<Channel>;

/// How an agent finds and talks to its managers.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Manager addresses (`host:port` or `http://host:port`), tried in order; on failure the
    /// agent moves to the next one.
    pub managers: Vec<String>,
    /// The cluster's join token.
    pub token: String,
    /// This node's id, when known (embedded mode, tests). Otherwise it is read from
    /// `node_id_file`, or assigned by the manager at the first registration.
    pub node_id: Option<String>,
    /// Where the assigned node id is kept, so that a restarted agent is the same node and adopts
    /// its containers.
    pub node_id_file: Option<PathBuf>,
    /// The node's name (`--name`); default: the engine host's name.
    pub name: Option<String>,
    /// `manager` or `worker`.
    pub role: String,
    pub labels: BTreeMap<String, String>,
    /// Where managers reach this agent's [`crate::logs`] endpoint.
    pub advertise_addr: Option<String>,
    /// Heartbeats are sent every `period × (1 − jitter × r)`, `r` uniform in [0, 1), so that
    /// agents that started together spread out and no heartbeat is ever late.
    pub heartbeat_jitter: f64,
    /// Backoff between connection attempts doubles from `min_backoff` up to this.
    pub max_backoff: Duration,
    pub min_backoff: Duration,
    pub connect_timeout: Duration,
    /// Deadline of unary calls (register, heartbeat, status updates).
    pub rpc_timeout: Duration,
    /// Most statuses in one UpdateTaskStatus call. There is no batching window: a status is
    /// sent at once when no call is in flight; those that arrive during a call go in the next.
    pub status_batch_max: usize,
    /// Channels shared with other agents of this process (`shoal sim`: thousands of nodes over a
    /// few HTTP/2 connections). Without it, each session opens a connection of its own.
    pub channels: Option<Arc<ChannelPool>>,
    /// Told what the session does (registered, assignments received, statuses acknowledged).
    pub observer: Option<Arc<dyn SessionObserver>>,
    /// Set to the node's id once it is known (given, or assigned at registration), for the
    /// logs endpoint: see [`crate::logs::AgentService::for_registered`].
    pub registered_id: RegisteredId,
}

/// The id a node registered with, shared between its session and its logs endpoint.
#[derive(Debug, Clone, Default)]
pub struct RegisteredId(Arc<Mutex<Option<String>>>);

impl RegisteredId {
    pub fn set(&self, id: &str) {
        *lock(&self.0) = Some(id.to_string());
    }

    pub fn get(&self) -> Option<String> {
        lock(&self.0).clone()
    }
}

impl AgentConfig {
    pub fn new(managers: Vec<String>, token: impl Into<String>) -> Self {
        AgentConfig {
            managers,
            token: token.into(),
            node_id: None,
            node_id_file: None,
            name: None,
            role: "worker".into(),
            labels: BTreeMap::new(),
            advertise_addr: None,
            heartbeat_jitter: 0.2,
            max_backoff: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(10),
            status_batch_max: 1000,
            channels: None,
            observer: None,
            registered_id: RegisteredId::default(),
        }
    }
}

/// What an agent's session tells whoever watches it (the simulator counts nodes and tasks with
/// it). Called on the session's own task: implementations must be quick and must not block.
pub trait SessionObserver: Send + Sync + std::fmt::Debug + 'static {
    /// The manager registered the node (every session starts so).
    fn registered(&self, _node: &str) {}
    /// An assignments message was received (the first of a session is the complete set).
    fn assignments(&self, _node: &str, _message: &pb::Assignments) {}
    /// The manager applied these statuses (the UpdateTaskStatus call returned OK).
    fn acknowledged(&self, _node: &str, _statuses: &[pb::TaskStatus]) {}
    /// A heartbeat was answered after `round_trip`, or (`None`) failed or timed out.
    fn heartbeat(&self, _node: &str, _round_trip: Option<Duration>) {}
}

/// gRPC channels shared by the agents of one process, a few per manager address. A channel is
/// one HTTP/2 connection, and each session holds one stream on it for its whole life (the
/// assignment stream) plus short unary calls, so the pool spreads sessions over `per_address`
/// connections to stay below the server's limit of concurrent streams per connection (hyper's
/// default is 200). Channels connect lazily and reconnect by themselves after a failure.
#[derive(Debug)]
pub struct ChannelPool {
    per_address: usize,
    connect_timeout: Duration,
    channels: Mutex<HashMap<String, Vec<Channel>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl ChannelPool {
    pub fn new(per_address: usize, connect_timeout: Duration) -> Self {
        ChannelPool {
            per_address: per_address.max(1),
            connect_timeout,
            channels: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// One of `address`'s channels, round robin.
    pub fn channel(&self, address: &str) -> Result<Channel, AgentError> {
        let turn = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut channels = lock(&self.channels);
        if let Some(list) = channels.get(address) {
            return Ok(list[turn % list.len()].clone());
        }
        let endpoint = endpoint_with(address, self.connect_timeout)?;
        let list: Vec<Channel> = (0..self.per_address).map(|_| endpoint.connect_lazy()).collect();
        let channel = list[turn % list.len()].clone();
        channels.insert(address.to_string(), list);
        Ok(channel)
    }
}

/// Why an agent stopped (transient manager failures are retried, never returned).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no manager address to join")]
    NoManagers,
    #[error("invalid manager address {address:?}: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("the manager at {manager} refused to register this node: {message}")]
    Refused { manager: String, message: String },
    #[error("the manager at {manager} registered this node as {assigned}, but it is {ours}")]
    IdMismatch { manager: String, assigned: String, ours: String },
    #[error("cannot prepare the engine: {0}")]
    Engine(#[from] EngineError),
    #[error("node id file {}: {source}", path.display())]
    NodeIdFile { path: PathBuf, source: std::io::Error },
}

/// A failure of one session; the agent reconnects.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{call}: {status}")]
    Rpc { call: &'static str, status: String },
    /// The manager is not the leader and says where the leader is.
    #[error("{call}: not the leader; the leader is at {leader}")]
    Redirect { call: &'static str, leader: String },
    #[error("{0}")]
    Protocol(String),
    #[error("reading the engine's facts: {0}")]
    Engine(EngineError),
    #[error(transparent)]
    Fatal(#[from] AgentError),
}

/// gRPC metadata key with which a manager that is not the leader names the leader's address.
pub const LEADER_ADDRESS_METADATA: &str = "shoal-leader-address";

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> SessionError {
    move |s| {
        let leader = s.metadata().get(LEADER_ADDRESS_METADATA).and_then(|v| v.to_str().ok()).map(str::to_string);
        match leader {
            Some(leader) if s.code() == tonic::Code::Unavailable && !leader.is_empty() => {
                SessionError::Redirect { call, leader }
            }
            _ => SessionError::Rpc { call, status: format!("{} ({:?})", s.message(), s.code()) },
        }
    }
}

/// Runs the agent until `shutdown` turns true (containers are left running), or a fatal error:
/// a refused registration (wrong token), an unusable address, or an engine that cannot be
/// watched at all.
pub async fn run_agent<E: Engine>(
    config: AgentConfig,
    engine: Arc<E>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    if config.managers.is_empty() {
        return Err(AgentError::NoManagers);
    }
    let mut endpoints =
        config.managers.iter().map(|m| endpoint(m, &config).map(|e| (m.clone(), e))).collect::<Result<Vec<_>, _>>()?;
    let mut node_id = match &config.node_id {
        Some(id) => Some(id.clone()),
        None => read_node_id(&config).await?,
    };
    let mut agent = Agent { config, engine, core: None };
    if let Some(id) = &node_id {
        agent.start_core(id).await?;
    }
    let mut index = 0;
    let mut backoff = agent.config.min_backoff;
    let result = loop {
        if *shutdown.borrow() {
            break Ok(());
        }
        let (address, channel) = endpoints[index].clone();
        let mut established = false;
        let outcome = tokio::select! {
            outcome = agent.session(&address, &channel, &mut node_id, &mut established) => outcome,
            _ = shutdown.changed() => break Ok(()),
        };
        match outcome {
            Ok(()) => break Ok(()),
            Err(SessionError::Fatal(e)) => break Err(e),
            Err(SessionError::Redirect { leader, .. }) => {
                // Straight to the leader (a manager that joined later may not be in the list).
                index = match endpoints.iter().position(|(a, _)| *a == leader) {
                    Some(i) => i,
                    None => match endpoint(&leader, &agent.config) {
                        Ok(e) => {
                            endpoints.push((leader.clone(), e));
                            endpoints.len() - 1
                        }
                        Err(_) => (index + 1) % endpoints.len(),
                    },
                };
                tracing::debug!(leader = %leader, "following the leader");
                backoff = agent.config.min_backoff;
            }
            Err(e) => {
                tracing::warn!(manager = %address, error = %e, "dispatcher session ended; containers keep running");
                if established {
                    // A working session broke: retry the same manager first, from a short backoff.
                    backoff = agent.config.min_backoff;
                } else {
                    index = (index + 1) % endpoints.len();
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => break Ok(()),
        }
        backoff = (backoff * 2).min(agent.config.max_backoff);
    };
    if let Some(core) = agent.core.take() {
        core.stop();
    }
    result
}

fn endpoint(address: &str, config: &AgentConfig) -> Result<Endpoint, AgentError> {
    endpoint_with(address, config.connect_timeout)
}

fn endpoint_with(address: &str, connect_timeout: Duration) -> Result<Endpoint, AgentError> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let bad = |reason: String| AgentError::BadAddress { address: address.to_string(), reason };
    Ok(Endpoint::from_shared(url)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10)))
}

async fn read_node_id(config: &AgentConfig) -> Result<Option<String>, AgentError> {
    let Some(path) = &config.node_id_file else { return Ok(None) };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|id| !id.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::NodeIdFile { path: path.clone(), source }),
    }
}

async fn write_node_id(config: &AgentConfig, id: &str) -> Result<(), AgentError> {
    let Some(path) = &config.node_id_file else { return Ok(()) };
    let err = |source| AgentError::NodeIdFile { path: path.clone(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.map_err(err)?;
    }
    tokio::fs::write(path, format!("{id}\n")).await.map_err(err)
}

struct Agent<E: Engine> {
    config: AgentConfig,
    engine: Arc<E>,
    core: Option<Arc<Core<E>>>,
}

impl<E: Engine> Agent<E> {
    /// Starts the runner for `node_id` and adopts the node's containers.
    async fn start_core(&mut self, node_id: &str) -> Result<Arc<Core<E>>, AgentError> {
        if let Some(core) = &self.core {
            return Ok(core.clone());
        }
        let core = Core::start(self.engine.clone(), node_id).await?;
        self.core = Some(core.clone());
        Ok(core)
    }

    /// One session: register, open the assignment stream, then heartbeat, report and apply
    /// assignments until something fails.
    async fn session(
        &mut self,
        address: &str,
        endpoint: &Endpoint,
        node_id: &mut Option<String>,
        established: &mut bool,
    ) -> Result<(), SessionError> {
        let channel = match &self.config.channels {
            Some(pool) => pool.channel(address)?,
            None => endpoint.connect().await.map_err(|e| SessionError::Connect(error_chain(&e)))?,
        };
        let mut client = Client::new(channel).max_decoding_message_size(256 << 20);
        // An engine that is briefly unreachable delays the registration; it is not fatal.
        let info = self.engine.info().await.map_err(SessionError::Engine)?;
        let node = pb::Node {
            id: node_id.clone().unwrap_or_default(),
            hostname: self.config.name.clone().unwrap_or(info.hostname),
            role: self.config.role.clone(),
            nano_cpus: info.nano_cpus,
            memory_bytes: info.memory_bytes,
            labels: self.config.labels.clone().into_iter().collect(),
            os: info.os,
            arch: info.arch,
            engine_version: info.engine_version,
            address: self.config.advertise_addr.clone().unwrap_or_default(),
            ..pb::Node::default()
        };
        let mut request =
            tonic::Request::new(pb::RegisterRequest { token: self.config.token.clone(), node: Some(node) });
        request.set_timeout(self.config.rpc_timeout);
        let registered = match client.register(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), Code::Unauthenticated | Code::InvalidArgument | Code::PermissionDenied) => {
                return Err(
                    AgentError::Refused { manager: address.to_string(), message: s.message().to_string() }.into()
                )
            }
            Err(s) => return Err(rpc("register")(s)),
        };
        let id = registered.node_id;
        match node_id {
            Some(ours) if *ours != id => {
                return Err(AgentError::IdMismatch { manager: address.into(), assigned: id, ours: ours.clone() }.into())
            }
            Some(_) => {}
            None => {
                write_node_id(&self.config, &id).await?;
                *node_id = Some(id.clone());
            }
        }
        self.config.registered_id.set(&id);
        let core = self.start_core(&id).await?;
        let period = Duration::from_millis(registered.heartbeat_period_ms.max(100));
        tracing::info!(manager = %address, node = %id, "registered");
        let observer = self.config.observer.as_deref();
        if let Some(observer) = observer {
            observer.registered(&id);
        }

        let mut stream = client
            .session(pb::SessionRequest { node_id: id.clone(), accepts_pieces: true })
            .await
            .map_err(rpc("session"))?
            .into_inner();
        // Whatever the previous manager heard, this one hears everything again.
        core.reports.resend_all();
        let config = &self.config;
        let (complete_tx, complete_rx) = watch::channel(false);
        let assignments = async {
            let mut expected: Option<u64> = None;
            let mut set = CompleteSet::default();
            loop {
                let Some(message) = stream.message().await.map_err(rpc("session stream"))? else {
                    return Err(SessionError::Protocol("the manager closed the session".into()));
                };
                match expected {
                    None if !message.complete => {
                        return Err(SessionError::Protocol(
                            "the session did not start with the complete task set".into(),
                        ))
                    }
                    Some(seq) if message.sequence != seq => {
                        return Err(SessionError::Protocol(format!(
                            "assignment sequence gap: expected {seq}, got {}",
                            message.sequence
                        )))
                    }
                    _ => {}
                }
                expected = Some(message.sequence + 1);
                let Some(message) = set.add(message)? else { continue };
                *established = true;
                if let Some(observer) = observer {
                    observer.assignments(&id, &message);
                }
                core.apply(message);
                complete_tx.send_replace(true);
            }
        };
        tokio::select! {
            r = assignments => r,
            r = heartbeat(client.clone(), &id, period, config) => r,
            r = flush(client.clone(), &id, &core, complete_rx, config) => r,
        }
    }
}

/// A complete set the manager sends in pieces (`Assignments.more`), put back together: applied
/// piece by piece, the first would make the agent remove every task of the others.
#[derive(Debug, Default)]
struct CompleteSet(Option<pb::Assignments>);

impl CompleteSet {
    /// The message to apply: a diff, or a complete set once its last piece is here; `None` while
    /// pieces of a set are still to come.
    fn add(&mut self, piece: pb::Assignments) -> Result<Option<pb::Assignments>, SessionError> {
        match self.0.take() {
            None if !piece.more => Ok(Some(piece)),
            None if piece.complete => {
                self.0 = Some(piece);
                Ok(None)
            }
            None => Err(SessionError::Protocol("a diff said more pieces follow".into())),
            Some(mut set) if piece.complete => {
                set.sequence = piece.sequence;
                set.more = piece.more;
                set.changed.extend(piece.changed);
                set.removed.extend(piece.removed);
                if set.more {
                    self.0 = Some(set);
                    return Ok(None);
                }
                Ok(Some(set))
            }
            Some(_) => Err(SessionError::Protocol("a diff came before the complete set's last piece".into())),
        }
    }
}

/// Heartbeats in a row that may time out before the session is given up.
const HEARTBEAT_TIMEOUTS_TOLERATED: u32 = 2;

/// Times in a row a status report may time out before the session is given up.
const STATUS_TIMEOUTS_TOLERATED: u32 = 2;

/// The call ran out of time (our deadline, or the manager's).
fn timed_out(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

/// Most heartbeats awaiting an answer at once (with the deadline at two periods there are at
/// most about two; a bound all the same).
const MAX_HEARTBEATS_IN_FLIGHT: usize = 3;

/// Heartbeats go out on their own schedule, a period (less jitter) after the one before was
/// sent, not after it was answered: the manager judges a node by when its heartbeats arrive, and
/// a busy manager answers late (in the 100,000-task simulation answers took up to 15 s).
/// Waiting for each answer stretched the interval to answer + period, past
/// the manager's down-after, and it marked live nodes down by the thousand. Each call's deadline
/// is kept here too: the grpc-timeout header alone lets a client wait as long as the answer takes.
async fn heartbeat(
    client: Client,
    node_id: &str,
    mut period: Duration,
    config: &AgentConfig,
) -> Result<(), SessionError> {
    type Answer = (tokio::time::Instant, Result<pb::HeartbeatResponse, tonic::Status>);
    let jittered = |period: Duration| period.mul_f64(1.0 - config.heartbeat_jitter.clamp(0.0, 1.0) * random_unit());
    let mut calls: tokio::task::JoinSet<Answer> = tokio::task::JoinSet::new();
    let mut timeouts = 0;
    let mut next = tokio::time::Instant::now() + jittered(period);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next), if calls.len() < MAX_HEARTBEATS_IN_FLIGHT => {
                let deadline = config.rpc_timeout.min(period * 2);
                let (mut client, node) = (client.clone(), node_id.to_string());
                calls.spawn(async move {
                    let sent = tokio::time::Instant::now();
                    let mut request = tonic::Request::new(pb::HeartbeatRequest { node_id: node });
                    request.set_timeout(deadline);
                    let answer = match tokio::time::timeout(deadline, client.heartbeat(request)).await {
                        Ok(answer) => answer.map(tonic::Response::into_inner),
                        Err(_) => Err(tonic::Status::deadline_exceeded("no heartbeat answer in time")),
                    };
                    (sent, answer)
                });
                next = tokio::time::Instant::now() + jittered(period);
            }
            Some(done) = calls.join_next() => {
                let (sent, answer) = done.unwrap_or_else(|e| {
                    (tokio::time::Instant::now(), Err(tonic::Status::internal(format!("heartbeat call failed: {e}"))))
                });
                if let Some(observer) = config.observer.as_deref() {
                    observer.heartbeat(node_id, answer.is_ok().then(|| sent.elapsed()));
                }
                match answer {
                    Ok(response) => {
                        timeouts = 0;
                        if response.heartbeat_period_ms > 0 {
                            period = Duration::from_millis(response.heartbeat_period_ms.max(100));
                        }
                    }
                    // A busy manager answers late: carry on rather than end the session, which
                    // would cost it a registration and a new session on top (the stream tells
                    // when it is gone).
                    Err(status) if timeouts < HEARTBEAT_TIMEOUTS_TOLERATED && timed_out(&status) => {
                        timeouts += 1;
                        tracing::debug!(node = node_id, "heartbeat timed out ({timeouts} in a row)");
                    }
                    Err(status) => return Err(rpc("heartbeat")(status)),
                }
            }
        }
    }
}

/// Sends status reports, group-commit style (see [`send_pending`]). The first call of a session
/// is the sync report: sent once the complete set is applied and the adopted containers' states
/// are in (or after 5 s), even when empty, so the manager knows its view of this node is current
/// (`DispatcherService::wait_synced`).
async fn flush<E: Engine>(
    client: Client,
    node_id: &str,
    core: &Core<E>,
    mut complete: watch::Receiver<bool>,
    config: &AgentConfig,
) -> Result<(), SessionError> {
    let reports = &core.reports;
    if complete.wait_for(|c| *c).await.is_err() {
        return Err(SessionError::Protocol("the session ended before its first message".into()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let waiting: Vec<u64> = lock(&core.adopted).iter().copied().collect();
        if reports.has_all(&waiting) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let max = config.status_batch_max.max(1);
    let observer = config.observer.as_deref();
    let send = |updates: Vec<pb::TaskStatus>| {
        let mut client = client.clone();
        async move {
            // A busy manager answers late: a report is safe to send again (it states where a
            // task is), so a timed-out one is repeated rather than the session ended — which
            // would cost a registration and a new session on top, when the manager is busiest.
            let mut timeouts = 0;
            let acknowledged = loop {
                let report = pb::UpdateTaskStatusRequest { node_id: node_id.to_string(), updates: updates.clone() };
                let mut request = tonic::Request::new(report);
                request.set_timeout(config.rpc_timeout);
                match client.update_task_status(request).await {
                    Err(status) if timeouts < STATUS_TIMEOUTS_TOLERATED && timed_out(&status) => {
                        timeouts += 1;
                        tracing::debug!(
                            node = node_id,
                            "status report timed out ({timeouts} in a row); sending it again"
                        );
                    }
                    outcome => break outcome.map(drop).map_err(rpc("update task status")),
                }
            };
            if let (Ok(()), Some(observer)) = (&acknowledged, observer) {
                observer.acknowledged(node_id, &updates);
            }
            acknowledged
        }
    };
    // The sync report goes out even when there is nothing to report.
    send_pending(reports, max, true, send).await?;
    loop {
        reports.wait().await;
        send_pending(reports, max, false, send).await?;
    }
}

/// Sends every pending status now, in calls of at most `max`, one call in flight at a time:
/// statuses that arrive while a call is in flight gather and go together in the next one (group
/// commit). A lone status thus pays no batching delay, and a burst (a whole stack starting)
/// still shares calls. `force` sends one call even when nothing is pending. A failed call puts
/// its statuses back, unless newer ones replaced them meanwhile.
async fn send_pending<F, Fut>(reports: &Reports, max: usize, mut force: bool, mut send: F) -> Result<(), SessionError>
where
    F: FnMut(Vec<pb::TaskStatus>) -> Fut,
    Fut: std::future::Future<Output = Result<(), SessionError>>,
{
    loop {
        let batch = reports.take(max);
        if batch.is_empty() && !force {
            return Ok(());
        }
        force = false;
        match send(batch.clone()).await {
            Ok(()) => reports.acked(&batch),
            Err(e) => {
                reports.restore(batch);
                return Err(e);
            }
        }
    }
}

/// A number in [0, 1) that differs between agents and calls (std's per-instance random hash keys).
fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the manager wants of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Running,
    Shutdown,
    Remove,
}

#[derive(Debug, Clone)]
struct Wanted {
    desired: Desired,
    spec: Option<Arc<TaskSpec>>,
    /// Why there is no spec (the manager could not build it, or it did not decode).
    spec_error: Option<String>,
    /// Whether the manager wants to hear about it (false for containers of tasks it no longer
    /// gives this node: they are removed silently).
    report: bool,
    /// `down -v`: remove the container's anonymous volumes and, once the stack has no container
    /// left here, its named volumes.
    remove_volumes: bool,
}

impl Wanted {
    /// A container of a task the manager no longer gives this node: removed without a report.
    fn stale() -> Wanted {
        Wanted { desired: Desired::Remove, spec: None, spec_error: None, report: false, remove_volumes: false }
    }
}

struct TaskSlot {
    wanted: watch::Sender<Wanted>,
    /// The latest state the runner reported for the task's container (none yet: not created).
    observed: watch::Sender<Option<runner::TaskState>>,
}

struct Core<E: Engine> {
    engine: Arc<E>,
    runner: TaskRunner<E>,
    tasks: Mutex<HashMap<u64, Arc<TaskSlot>>>,
    reports: Reports,
    /// Serializes network and volume creation: concurrent creates of one name can give the
    /// engine two networks with that name.
    network_lock: tokio::sync::Mutex<()>,
    /// One build/pull per image reference at a time.
    image_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Tasks whose containers were adopted at start and are still assigned here: the first
    /// status report of a session waits (briefly) for their states, so the manager's view is
    /// complete once it has heard from the agent (see the sync report in `flush`).
    adopted: Mutex<HashSet<u64>>,
    /// The runner's latest status of each task with a container, kept to translate it again
    /// when what is wanted of the task changes (see [`Core::retranslate`]).
    observed: Mutex<HashMap<u64, runner::TaskStatus>>,
}

impl<E: Engine> Core<E> {
    /// Starts the runner for `node_id` and adopts the node's containers.
    async fn start(engine: Arc<E>, node_id: &str) -> Result<Arc<Self>, AgentError> {
        let (status_tx, status_rx) = mpsc::channel(1024);
        let runner = TaskRunner::start(engine.clone(), node_id, status_tx).await?;
        let core = Arc::new(Core {
            engine,
            runner,
            tasks: Mutex::new(HashMap::new()),
            reports: Reports::default(),
            network_lock: tokio::sync::Mutex::new(()),
            image_locks: Mutex::new(HashMap::new()),
            pump: Mutex::new(None),
            adopted: Mutex::new(HashSet::new()),
            observed: Mutex::new(HashMap::new()),
        });
        let pump = tokio::spawn(pump_statuses(Arc::downgrade(&core), status_rx));
        *lock(&core.pump) = Some(pump);
        let adopted = core.runner.adopt().await?;
        *lock(&core.adopted) = adopted.iter().filter_map(|id| id.parse().ok()).collect();
        if !adopted.is_empty() {
            tracing::info!(count = adopted.len(), "adopted this node's containers");
        }
        Ok(core)
    }

    /// Ends the agent's work: workers finish their current step and stop; containers stay.
    fn stop(&self) {
        lock(&self.tasks).clear();
        if let Some(pump) = lock(&self.pump).take() {
            pump.abort();
        }
    }

    fn apply(self: &Arc<Self>, message: pb::Assignments) {
        if message.complete {
            let keep: HashSet<u64> = message.changed.iter().map(|a| a.task).collect();
            let known: Vec<u64> = lock(&self.tasks).keys().copied().collect();
            let mut stale: Vec<u64> = known.into_iter().filter(|id| !keep.contains(id)).collect();
            for key in self.runner.tasks() {
                match key.parse::<u64>() {
                    Ok(id) if keep.contains(&id) => {}
                    Ok(id) => stale.push(id),
                    Err(_) => {
                        let runner = self.runner.clone();
                        tokio::spawn(async move {
                            let _ = runner.stop(&key).await;
                            if let Err(e) = runner.remove(&key, false).await {
                                tracing::warn!(task = %key, error = %e, "removing a stray container failed");
                            }
                        });
                    }
                }
            }
            stale.sort_unstable();
            stale.dedup();
            for id in stale {
                tracing::info!(task = id, "removing a container the manager no longer assigns to this node");
                self.set(id, Wanted::stale());
            }
            self.reports.retain(|id| keep.contains(&id));
            lock(&self.adopted).retain(|id| keep.contains(id));
            lock(&self.observed).retain(|id, _| keep.contains(id));
        }
        for a in message.changed {
            let desired = match pb::DesiredState::try_from(a.desired) {
                Ok(pb::DesiredState::Running) => Desired::Running,
                Ok(pb::DesiredState::Shutdown) => Desired::Shutdown,
                Ok(pb::DesiredState::Remove) => Desired::Remove,
                Ok(pb::DesiredState::Unspecified) | Err(_) => {
                    tracing::warn!(task = a.task, desired = a.desired, "assignment with an unknown desired state");
                    continue;
                }
            };
            let (spec, spec_error) = decode_spec(&a, self.runner.node_id());
            self.set(a.task, Wanted { desired, spec, spec_error, report: true, remove_volumes: a.remove_volumes });
        }
        for id in message.removed {
            self.set(id, Wanted::stale());
        }
    }

    /// Updates (or starts) the task's worker.
    fn set(self: &Arc<Self>, id: u64, wanted: Wanted) {
        if self.update_worker(id, wanted) {
            self.retranslate(id);
        }
    }

    /// [`Core::set`]'s work; true when the task's spec arrived just now.
    fn update_worker(self: &Arc<Self>, id: u64, wanted: Wanted) -> bool {
        let mut tasks = lock(&self.tasks);
        if let Some(slot) = tasks.get(&id) {
            let mut spec_arrived = false;
            slot.wanted.send_if_modified(|current| {
                let desired_changed = current.desired != wanted.desired;
                let gains_spec = current.spec.is_none() && wanted.spec.is_some();
                spec_arrived = gains_spec;
                let silenced = current.report && !wanted.report;
                let volumes = wanted.remove_volumes && !current.remove_volumes;
                if !(desired_changed || gains_spec || silenced || volumes) {
                    return false;
                }
                current.desired = wanted.desired;
                current.report &= wanted.report;
                current.remove_volumes |= wanted.remove_volumes;
                // A removal carries no spec; keep the one we have (health mapping uses it).
                if wanted.spec.is_some() {
                    current.spec = wanted.spec.clone();
                    current.spec_error = None;
                } else if current.spec.is_none() && wanted.spec_error.is_some() {
                    current.spec_error = wanted.spec_error.clone();
                }
                true
            });
            return spec_arrived;
        }
        if wanted.desired == Desired::Remove && !wanted.report && !self.runner.tasks().contains(&id.to_string()) {
            // Nothing here to remove.
            return false;
        }
        let spec_arrived = wanted.spec.is_some();
        let (wanted_tx, wanted_rx) = watch::channel(wanted);
        let (observed, _) = watch::channel(None);
        let slot = Arc::new(TaskSlot { wanted: wanted_tx, observed });
        tasks.insert(id, slot.clone());
        drop(tasks);
        tokio::spawn(work(self.clone(), id, slot, wanted_rx));
        spec_arrived
    }

    /// Reports the task's latest observed status again, translated with what is wanted of it
    /// now, if that reads differently. A status can arrive before its spec — an adopted
    /// container is seen before the manager's first assignments — and then misses what only the
    /// spec tells: that a running container's healthcheck is still starting, or that the
    /// engine restarts an exited one.
    fn retranslate(&self, id: u64) {
        let observed = lock(&self.observed);
        let Some(status) = observed.get(&id) else { return };
        let Some(wanted) = self.slot(id).map(|s| s.wanted.borrow().clone()) else { return };
        if wanted.report {
            // Under the `observed` lock, so that a newer status cannot be pushed in between.
            self.reports.push_if_changed(translate(id, status.clone(), Some(&wanted)));
        }
    }

    fn slot(&self, id: u64) -> Option<Arc<TaskSlot>> {
        lock(&self.tasks).get(&id).cloned()
    }

    fn report(&self, task: u64, state: pb::TaskState, message: impl Into<String>) {
        self.reports.push(pb::TaskStatus {
            task,
            state: state as i32,
            message: message.into(),
            container_id: self.runner.container_id(&task.to_string()).unwrap_or_default(),
            ..pb::TaskStatus::default()
        });
    }

    /// The task's container is gone; `cleanup_errors`: what the engine refused to remove after it.
    fn report_removed(&self, task: u64, cleanup_errors: Vec<String>) {
        self.reports.push(pb::TaskStatus {
            task,
            state: pb::TaskState::Removed as i32,
            message: "removed".into(),
            cleanup_errors,
            ..pb::TaskStatus::default()
        });
    }

    /// Networks, volumes and the image, then the container.
    async fn prepare_and_run(&self, id: u64, spec: &TaskSpec) -> Result<(), String> {
        self.report(id, pb::TaskState::Preparing, format!("preparing: image {}", spec.image.reference()));
        {
            let _guard = self.network_lock.lock().await;
            for network in &spec.networks {
                self.engine.ensure_network(network).await.map_err(|e| e.to_string())?;
            }
            for volume in &spec.volumes {
                self.engine.ensure_volume(volume).await.map_err(|e| e.to_string())?;
            }
        }
        let reference = spec.image.reference();
        let image_lock = lock(&self.image_locks).entry(reference.clone()).or_default().clone();
        {
            let _guard = image_lock.lock().await;
            self.engine.ensure_image(&spec.image, None).await.map_err(|e| e.to_string())?;
        }
        self.runner.run(spec.container.clone());
        Ok(())
    }

    /// After a task's container is gone: when no container of its project is left on this
    /// engine and no task of the project is about to start here, removes the project's networks
    /// (and, for `down -v`, its named volumes). External ones are never touched. Returns what
    /// the engine refused to remove (a network another container still uses), one line each
    /// with the engine's reason; the rest is removed regardless.
    async fn clean_up_project(&self, spec: &TaskSpec, volumes: bool) -> Vec<String> {
        let project = spec.container.identity.project.as_str();
        if project.is_empty() || self.project_busy(project) {
            return Vec::new();
        }
        let _guard = self.network_lock.lock().await;
        match self.engine.list(&[(labels::PROJECT, project)]).await {
            Ok(left) if left.is_empty() => {}
            Ok(_) => return Vec::new(),
            Err(e) => {
                return vec![format!(
                    "cannot tell whether project {project} has containers left, so its networks stay: {e}"
                )]
            }
        }
        let mut errors = Vec::new();
        for network in spec.networks.iter().filter(|n| !n.external) {
            if let Err(e) = self.engine.remove_network(&network.name).await {
                errors.push(format!("network {} was not removed: {}", network.name, engine_reason(&e)));
            }
        }
        if volumes {
            for volume in spec.volumes.iter().filter(|v| !v.external) {
                if let Err(e) = self.engine.remove_volume(&volume.name).await {
                    errors.push(format!("volume {} was not removed: {}", volume.name, engine_reason(&e)));
                }
            }
        }
        errors
    }

    /// Whether a task of the project is meant to keep (or start) a container here.
    fn project_busy(&self, project: &str) -> bool {
        lock(&self.tasks).values().any(|slot| {
            let w = slot.wanted.borrow();
            w.desired != Desired::Remove && w.spec.as_ref().is_some_and(|s| s.container.identity.project == project)
        })
    }

    /// Stops the task's container if it has one; false when there is none.
    async fn stop_task(&self, id: u64) -> bool {
        let grace = self
            .slot(id)
            .and_then(|slot| slot.wanted.borrow().spec.as_ref().and_then(|s| s.container.stop_grace_period));
        match self.runner.stop_with(&id.to_string(), grace).await {
            Ok(_) => true,
            Err(RunnerError::UnknownTask(_) | RunnerError::NoContainer(_)) => false,
            Err(RunnerError::Engine(EngineError::ContainerNotFound(_))) => false,
            Err(e) => {
                tracing::warn!(task = id, error = %e, "stopping the container failed");
                true
            }
        }
    }

    fn on_runner_status(&self, status: runner::TaskStatus) {
        let Ok(id) = status.task_id.parse::<u64>() else { return };
        // Held until the report is pushed: see `retranslate`.
        let mut observed = lock(&self.observed);
        observed.insert(id, status.clone());
        let slot = self.slot(id);
        if let Some(slot) = &slot {
            slot.observed.send_replace(Some(status.state.clone()));
        }
        let wanted = slot.map(|s| s.wanted.borrow().clone());
        if wanted.as_ref().is_some_and(|w| !w.report) {
            return;
        }
        self.reports.push(translate(id, status, wanted.as_ref()));
    }
}

/// One task's worker: converges the container on the desired state, one step at a time, until
/// the task is removed or the agent stops.
async fn work<E: Engine>(core: Arc<Core<E>>, id: u64, slot: Arc<TaskSlot>, mut wanted: watch::Receiver<Wanted>) {
    let key = id.to_string();
    let mut started = false;
    let mut retry = Duration::from_secs(1);
    loop {
        let current = wanted.borrow_and_update().clone();
        match current.desired {
            Desired::Running if !started => {
                started = true;
                if core.runner.tasks().contains(&key) {
                    // Adopted: a container that was never started starts now that the manager,
                    // which gates dependencies, wants the task running.
                    core.runner.start_adopted(&key).await;
                } else {
                    match (&current.spec, &current.spec_error) {
                        (Some(spec), _) => match core.prepare_and_run(id, spec).await {
                            // Wait for the container to exist, so that a stop that follows finds it.
                            Ok(()) => {
                                let mut observed = slot.observed.subscribe();
                                let _ =
                                    tokio::time::timeout(Duration::from_secs(120), observed.wait_for(|s| s.is_some()))
                                        .await;
                            }
                            Err(reason) => core.report(id, pb::TaskState::Failed, reason),
                        },
                        (None, error) => core.report(
                            id,
                            pb::TaskState::Failed,
                            error.clone().unwrap_or_else(|| "the manager sent no container spec".into()),
                        ),
                    }
                }
            }
            Desired::Running => {}
            Desired::Shutdown => {
                if !core.stop_task(id).await && current.report {
                    core.report(id, pb::TaskState::Shutdown, "shut down before a container was created");
                }
            }
            Desired::Remove => {
                core.stop_task(id).await;
                match core.runner.remove(&key, current.remove_volumes).await {
                    Ok(()) | Err(RunnerError::UnknownTask(_)) => {
                        // Before the report: once every task is reported removed, `down` is
                        // done, and the process may end.
                        let cleanup_errors = match &current.spec {
                            Some(spec) => core.clean_up_project(spec, current.report && current.remove_volumes).await,
                            None => Vec::new(),
                        };
                        if current.report {
                            core.report_removed(id, cleanup_errors);
                        } else {
                            for error in &cleanup_errors {
                                tracing::warn!(task = id, "{error}");
                            }
                        }
                        let mut tasks = lock(&core.tasks);
                        if tasks.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                            tasks.remove(&id);
                            drop(tasks);
                            // Not under the tasks lock: `on_runner_status` takes them the other way round.
                            lock(&core.observed).remove(&id);
                        }
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(task = id, error = %e, "removing the container failed; retrying");
                        if current.report {
                            core.report(id, pb::TaskState::Failed, format!("removing the container failed: {e}"));
                        }
                        // Retry, sooner if the assignment changes.
                        let delay = retry;
                        retry = (retry * 2).min(Duration::from_secs(30));
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => continue,
                            changed = wanted.changed() => if changed.is_err() { return } else { continue },
                        }
                    }
                }
            }
        }
        if wanted.changed().await.is_err() {
            return;
        }
    }
}

/// The engine's own words for a refusal, without our context (the caller names the object).
fn engine_reason(e: &EngineError) -> String {
    match e {
        EngineError::Api { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

fn decode_spec(a: &pb::Assignment, node_id: &str) -> (Option<Arc<TaskSpec>>, Option<String>) {
    let decode = || {
        serde_json::from_slice::<TaskSpec>(&a.spec)
            .map_err(|e| format!("the task's container spec does not decode: {e}"))
    };
    let decoded = if a.spec_format == TaskSpec::FORMAT {
        decode()
    } else if a.spec_format == TaskSpec::SHARED_FORMAT {
        decode().and_then(|spec| spec.for_task(a.task, a.slot, node_id))
    } else if a.spec_format == SPEC_ERROR_FORMAT {
        Err(String::from_utf8_lossy(&a.spec).into_owned())
    } else if a.spec_format.is_empty() {
        return (None, None);
    } else {
        Err(format!("this agent cannot read container specs in format {:?}", a.spec_format))
    };
    match decoded {
        Ok(spec) => (Some(Arc::new(spec)), None),
        Err(reason) => (None, Some(reason)),
    }
}

/// `Assignment.spec_format` of an assignment whose spec the manager could not build: `spec` holds
/// the reason (UTF-8), which the agent reports as the task's failure.
pub const SPEC_ERROR_FORMAT: &str = "shoal.taskspec-error.v1+text";

fn has_healthcheck(spec: Option<&TaskSpec>) -> bool {
    spec.and_then(|s| s.container.healthcheck.as_ref())
        .is_some_and(|h| !h.disable && h.test.first().map(String::as_str) != Some("NONE"))
}

/// Whether the engine restarts the container after this exit (only when the spec gives it a
/// restart policy: embedded mode). `on-failure` with a retry limit is left to the manager, since
/// the agent cannot tell when the engine gives up.
fn engine_restarts(spec: Option<&TaskSpec>, exit_code: Option<i64>) -> bool {
    let Some(code) = exit_code else { return false };
    match spec.and_then(|s| s.container.restart) {
        Some(RestartPolicy::Always | RestartPolicy::UnlessStopped) => true,
        Some(RestartPolicy::OnFailure { max_retries: None }) => code != 0,
        Some(RestartPolicy::OnFailure { max_retries: Some(_) } | RestartPolicy::No) | None => false,
    }
}

/// The runner's view of a container, as the protocol's task status.
fn translate(task: u64, status: runner::TaskStatus, wanted: Option<&Wanted>) -> pb::TaskStatus {
    use runner::TaskState as S;
    let desired = wanted.map_or(Desired::Running, |w| w.desired);
    let spec = wanted.and_then(|w| w.spec.as_deref());
    let mut out = pb::TaskStatus {
        task,
        container_id: status.container_id.unwrap_or_default(),
        message: status.message,
        ports: status.ports,
        container_name: status.container_name.unwrap_or_default(),
        ..pb::TaskStatus::default()
    };
    let (state, health) = match status.state {
        S::Created | S::Starting => (pb::TaskState::Starting, pb::Health::Unspecified),
        S::Running if has_healthcheck(spec) => (pb::TaskState::Running, pb::Health::Starting),
        S::Running => (pb::TaskState::Running, pb::Health::Unspecified),
        S::Healthy => (pb::TaskState::Running, pb::Health::Healthy),
        S::Unhealthy => (pb::TaskState::Running, pb::Health::Unhealthy),
        S::Exited { code } => {
            out.exit_code = Some(code);
            (if code == 0 { pb::TaskState::Complete } else { pb::TaskState::Failed }, pb::Health::Unspecified)
        }
        S::Failed { .. } => (pb::TaskState::Failed, pb::Health::Unspecified),
    };
    let ended = matches!(state, pb::TaskState::Complete | pb::TaskState::Failed);
    let state = if ended && desired != Desired::Running {
        // An exit the manager asked for is a shutdown, not a failure.
        out.message = format!("shut down ({})", out.message);
        pb::TaskState::Shutdown
    } else if ended && engine_restarts(spec, out.exit_code) {
        // Embedded mode: the engine's restart policy brings the container back; the task lives on.
        out.message = format!("restarting ({})", out.message);
        pb::TaskState::Starting
    } else {
        state
    };
    out.state = state as i32;
    out.health = health as i32;
    out
}

/// Forwards the runner's statuses into the report queue, for the agent's lifetime.
async fn pump_statuses<E: Engine>(core: std::sync::Weak<Core<E>>, mut rx: mpsc::Receiver<runner::TaskStatus>) {
    while let Some(status) = rx.recv().await {
        let Some(core) = core.upgrade() else { return };
        core.on_runner_status(status);
    }
}

/// Task statuses waiting to be sent: only the latest per task matters, so a burst of changes
/// collapses into one update per task. Each status sent carries a sequence number in the order
/// the statuses were made, so that the manager can ignore one that arrives late (a call that
/// timed out here, or one of an ended session, may still be applied after a newer one).
struct Reports {
    state: Mutex<ReportState>,
    wake: Notify,
    /// The next sequence number: starts from the clock in microseconds, so that an agent that
    /// restarts numbers its reports after its previous life's.
    next: std::sync::atomic::AtomicU64,
}

impl Default for Reports {
    fn default() -> Self {
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros());
        Reports {
            state: Mutex::default(),
            wake: Notify::new(),
            next: std::sync::atomic::AtomicU64::new(u64::try_from(start).unwrap_or(u64::MAX / 2).max(1)),
        }
    }
}

#[derive(Default)]
struct ReportState {
    pending: BTreeMap<u64, pb::TaskStatus>,
    /// The last status of every task, re-sent after reconnecting.
    latest: HashMap<u64, pb::TaskStatus>,
}

fn is_removed(s: &pb::TaskStatus) -> bool {
    s.state == pb::TaskState::Removed as i32
}

impl Reports {
    fn push(&self, status: pb::TaskStatus) {
        let mut st = lock(&self.state);
        // Removed is final: a late status from the container's last moments must not replace it.
        if st.latest.get(&status.task).is_some_and(is_removed) {
            return;
        }
        st.latest.insert(status.task, status.clone());
        st.pending.insert(status.task, self.stamped(status));
        drop(st);
        self.wake.notify_one();
    }

    /// The status with the next sequence number (`latest` keeps them unnumbered, to compare).
    fn stamped(&self, mut status: pb::TaskStatus) -> pb::TaskStatus {
        status.sequence = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        status
    }

    /// Pushes the status unless it is what was last pushed for its task.
    fn push_if_changed(&self, status: pb::TaskStatus) {
        if lock(&self.state).latest.get(&status.task) != Some(&status) {
            self.push(status);
        }
    }

    async fn wait(&self) {
        if lock(&self.state).pending.is_empty() {
            self.wake.notified().await;
        }
    }

    /// Whether a status of each of these tasks has been seen.
    fn has_all(&self, tasks: &[u64]) -> bool {
        let st = lock(&self.state);
        tasks.iter().all(|id| st.latest.contains_key(id))
    }

    fn take(&self, max: usize) -> Vec<pb::TaskStatus> {
        let mut st = lock(&self.state);
        let ids: Vec<u64> = st.pending.keys().take(max).copied().collect();
        ids.iter().filter_map(|id| st.pending.remove(id)).collect()
    }

    /// A batch that did not get through goes back, unless a newer status replaced it meanwhile.
    fn restore(&self, batch: Vec<pb::TaskStatus>) {
        let mut st = lock(&self.state);
        for s in batch {
            st.pending.entry(s.task).or_insert(s);
        }
    }

    /// The manager has these; a removed task needs no re-sending.
    fn acked(&self, batch: &[pb::TaskStatus]) {
        let mut st = lock(&self.state);
        for s in batch.iter().filter(|s| is_removed(s)) {
            if !st.pending.contains_key(&s.task) {
                st.latest.remove(&s.task);
            }
        }
    }

    fn resend_all(&self) {
        let mut st = lock(&self.state);
        let latest: Vec<pb::TaskStatus> = st.latest.values().cloned().collect();
        for s in latest {
            // Numbered anew: it is the newest status of its task, also against the copy of it
            // that may still be on its way from the ended session.
            st.pending.entry(s.task).or_insert_with(|| self.stamped(s));
        }
        let any = !st.pending.is_empty();
        drop(st);
        if any {
            self.wake.notify_one();
        }
    }

    /// Forgets tasks the manager no longer assigns here.
    fn retain(&self, keep: impl Fn(u64) -> bool) {
        let mut st = lock(&self.state);
        st.latest.retain(|id, _| keep(*id));
        st.pending.retain(|id, _| keep(*id));
    }
}

#[cfg(test)]
mod core_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_set_in_pieces_is_applied_once_whole_and_diffs_pass_through() {
        let piece = |sequence, complete, more, tasks: &[u64]| pb::Assignments {
            sequence,
            complete,
            more,
            changed: tasks.iter().map(|&task| pb::Assignment { task, ..Default::default() }).collect(),
            removed: Vec::new(),
        };
        let mut set = CompleteSet::default();
        assert_eq!(set.add(piece(1, true, true, &[1, 2])).expect("first piece"), None);
        assert_eq!(set.add(piece(2, true, true, &[3])).expect("second piece"), None);
        let whole = set.add(piece(3, true, false, &[4])).expect("last piece").expect("the whole set");
        assert_eq!(whole, piece(3, true, false, &[1, 2, 3, 4]));
        let diff = piece(4, false, false, &[5]);
        assert_eq!(set.add(diff.clone()).expect("a diff"), Some(diff));
        let alone = piece(5, true, false, &[6]);
        assert_eq!(set.add(alone.clone()).expect("a set in one message"), Some(alone));

        assert_eq!(set.add(piece(6, true, true, &[7])).expect("a piece"), None);
        assert!(set.add(piece(7, false, false, &[8])).is_err(), "a diff inside a set breaks the protocol");
        assert!(CompleteSet::default().add(piece(1, false, true, &[1])).is_err(), "only sets come in pieces");
    }

    #[test]
    fn a_shared_spec_is_made_the_tasks_own_and_a_plain_one_is_taken_as_it_is() {
        use crate::spec::{ContainerSpec, NetworkSpec, TaskIdentity};
        let identity = TaskIdentity { project: "p".into(), service: "web".into(), ..TaskIdentity::default() };
        let shared = TaskSpec {
            networks: vec![NetworkSpec { name: "p_default".into(), ..NetworkSpec::default() }],
            container: ContainerSpec::new(identity, "x"),
            ..TaskSpec::default()
        };
        let json = serde_json::to_vec(&shared).expect("encodes");
        let assignment = |format: &str| pb::Assignment {
            task: 7,
            slot: 3,
            spec_format: format.into(),
            spec: json.clone().into(),
            ..pb::Assignment::default()
        };
        let (spec, error) = decode_spec(&assignment(TaskSpec::SHARED_FORMAT), "n1");
        assert_eq!(error, None);
        let spec = spec.expect("decoded");
        let id = &spec.container.identity;
        assert_eq!((id.task_id.as_str(), id.container_number, id.node_id.as_str()), ("7", 3, "n1"));
        assert_eq!(spec.networks[0].node_id, "n1");

        let (plain, _) = decode_spec(&assignment(TaskSpec::FORMAT), "n1");
        assert_eq!(plain.expect("decoded").container.identity.task_id, "", "a full spec is not touched");
        let (none, error) = decode_spec(&assignment("shoal.taskspec.v9"), "n1");
        assert!(none.is_none() && error.is_some_and(|e| e.contains("cannot read container specs")));
    }

    fn wanted(desired: Desired) -> Wanted {
        Wanted { desired, spec: None, spec_error: None, report: true, remove_volumes: false }
    }

    fn status(state: runner::TaskState) -> runner::TaskStatus {
        runner::TaskStatus {
            task_id: "7".into(),
            container_id: Some("c".into()),
            state,
            message: "m".into(),
            ports: Vec::new(),
            container_name: None,
        }
    }

    #[test]
    fn exits_map_to_complete_failed_or_shutdown() {
        let running = wanted(Desired::Running);
        let s = translate(7, status(runner::TaskState::Exited { code: 0 }), Some(&running));
        assert_eq!((s.state, s.exit_code), (pb::TaskState::Complete as i32, Some(0)));
        let s = translate(7, status(runner::TaskState::Exited { code: 3 }), Some(&running));
        assert_eq!((s.state, s.exit_code), (pb::TaskState::Failed as i32, Some(3)));
        let s = translate(7, status(runner::TaskState::Failed { reason: "no such image".into() }), None);
        assert_eq!(s.state, pb::TaskState::Failed as i32);
        let stopping = wanted(Desired::Shutdown);
        let s = translate(7, status(runner::TaskState::Exited { code: 143 }), Some(&stopping));
        assert_eq!((s.state, s.exit_code), (pb::TaskState::Shutdown as i32, Some(143)));
    }

    #[test]
    fn exits_the_engine_restarts_are_not_terminal() {
        let mut spec = TaskSpec::default();
        spec.container.restart = Some(RestartPolicy::Always);
        let w = Wanted { spec: Some(Arc::new(spec)), ..wanted(Desired::Running) };
        let s = translate(7, status(runner::TaskState::Exited { code: 1 }), Some(&w));
        assert_eq!((s.state, s.exit_code), (pb::TaskState::Starting as i32, Some(1)));
        let mut spec = TaskSpec::default();
        spec.container.restart = Some(RestartPolicy::No);
        let w = Wanted { spec: Some(Arc::new(spec)), ..wanted(Desired::Running) };
        let s = translate(7, status(runner::TaskState::Exited { code: 1 }), Some(&w));
        assert_eq!(s.state, pb::TaskState::Failed as i32);
    }

    #[test]
    fn running_carries_health() {
        let mut w = wanted(Desired::Running);
        let s = translate(7, status(runner::TaskState::Running), Some(&w));
        assert_eq!((s.state, s.health), (pb::TaskState::Running as i32, pb::Health::Unspecified as i32));
        let mut spec = TaskSpec::default();
        spec.container.healthcheck =
            Some(crate::spec::HealthcheckSpec { test: vec!["CMD".into(), "true".into()], ..Default::default() });
        w.spec = Some(Arc::new(spec));
        let s = translate(7, status(runner::TaskState::Running), Some(&w));
        assert_eq!(s.health, pb::Health::Starting as i32);
        let s = translate(7, status(runner::TaskState::Healthy), Some(&w));
        assert_eq!((s.state, s.health), (pb::TaskState::Running as i32, pb::Health::Healthy as i32));
        let s = translate(7, status(runner::TaskState::Created), Some(&w));
        assert_eq!(s.state, pb::TaskState::Starting as i32);
    }

    #[test]
    fn reports_keep_the_latest_and_never_replace_removed() {
        let reports = Reports::default();
        reports.push(st(1, pb::TaskState::Starting));
        reports.push(st(1, pb::TaskState::Running));
        reports.push(st(2, pb::TaskState::Removed));
        reports.push(st(2, pb::TaskState::Failed));
        let batch = reports.take(10);
        assert_eq!(unnumbered(&batch), vec![st(1, pb::TaskState::Running), st(2, pb::TaskState::Removed)]);
        assert!(batch[0].sequence > 0 && batch[0].sequence < batch[1].sequence, "numbered as made: {batch:?}");
        reports.restore(batch.clone());
        let first = reports.take(1);
        assert_eq!(first, batch[..1], "put back as it was, number included");
        assert_eq!(unnumbered(&reports.take(10)), vec![st(2, pb::TaskState::Removed)]);
        reports.acked(&batch);
        reports.resend_all();
        // Task 2 was acknowledged as removed: only task 1 is re-sent, numbered after all before
        // (a copy of its earlier report may still be on its way).
        let resent = reports.take(10);
        assert_eq!(unnumbered(&resent), vec![st(1, pb::TaskState::Running)]);
        assert!(resent[0].sequence > batch[1].sequence);
    }

    fn st(task: u64, state: pb::TaskState) -> pb::TaskStatus {
        pb::TaskStatus { task, state: state as i32, ..Default::default() }
    }

    /// The statuses without their sequence numbers.
    fn unnumbered(statuses: &[pb::TaskStatus]) -> Vec<pb::TaskStatus> {
        statuses.iter().map(|s| pb::TaskStatus { sequence: 0, ..s.clone() }).collect()
    }

    type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SessionError>> + Send>>;

    /// A fake UpdateTaskStatus: hands each call's statuses to the test, then waits until the
    /// test lets the call finish (with the given result).
    struct FakeCalls {
        sent: mpsc::UnboundedReceiver<Vec<pb::TaskStatus>>,
        finish: mpsc::UnboundedSender<Result<(), SessionError>>,
    }

    fn fake_calls() -> (FakeCalls, impl FnMut(Vec<pb::TaskStatus>) -> Call) {
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let (finish, finish_rx) = mpsc::unbounded_channel::<Result<(), SessionError>>();
        let finish_rx = Arc::new(tokio::sync::Mutex::new(finish_rx));
        let send = move |batch: Vec<pb::TaskStatus>| {
            let _ = sent_tx.send(batch);
            let finish_rx = finish_rx.clone();
            Box::pin(async move {
                let outcome = finish_rx.lock().await.recv().await;
                outcome.unwrap_or_else(|| Err(SessionError::Protocol("the test ended".into())))
            }) as Call
        };
        (FakeCalls { sent, finish }, send)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_status_is_sent_at_once_and_a_burst_during_a_call_shares_the_next() {
        let reports = Arc::new(Reports::default());
        let (mut calls, send) = fake_calls();
        reports.push(st(1, pb::TaskState::Running));
        let started = tokio::time::Instant::now();
        let sender = tokio::spawn({
            let reports = reports.clone();
            async move { send_pending(&reports, 10, false, send).await }
        });
        // Sent alone, without waiting for company (the clock is paused: any timer would show).
        assert_eq!(calls.sent.recv().await.map(|b| unnumbered(&b)), Some(vec![st(1, pb::TaskState::Running)]));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // While that call is in flight, a burst gathers (only the latest per task counts).
        reports.push(st(2, pb::TaskState::Starting));
        reports.push(st(3, pb::TaskState::Starting));
        reports.push(st(2, pb::TaskState::Running));
        calls.finish.send(Ok(())).ok();
        let burst = calls.sent.recv().await.map(|b| unnumbered(&b));
        assert_eq!(burst, Some(vec![st(2, pb::TaskState::Running), st(3, pb::TaskState::Starting)]));
        calls.finish.send(Ok(())).ok();
        // Nothing left: the sender returns (and would wait for the next status).
        assert!(sender.await.expect("sender").is_ok());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn batches_respect_the_maximum_and_only_force_sends_empty() {
        let reports = Arc::new(Reports::default());
        let (mut calls, send) = fake_calls();
        for task in 1..=5 {
            reports.push(st(task, pb::TaskState::Running));
        }
        let sender = tokio::spawn({
            let reports = reports.clone();
            async move { send_pending(&reports, 2, false, send).await }
        });
        let mut sizes = Vec::new();
        for _ in 0..3 {
            sizes.push(calls.sent.recv().await.map(|b| b.len()));
            calls.finish.send(Ok(())).ok();
        }
        assert_eq!(sizes, [Some(2), Some(2), Some(1)]);
        assert!(sender.await.expect("sender").is_ok());

        let (mut calls, send) = fake_calls();
        calls.finish.send(Ok(())).ok();
        assert!(send_pending(&reports, 2, true, send).await.is_ok());
        assert_eq!(calls.sent.recv().await, Some(Vec::new()), "the sync report goes out empty");
        let (mut calls, send) = fake_calls();
        assert!(send_pending(&reports, 2, false, send).await.is_ok());
        assert!(calls.sent.try_recv().is_err(), "nothing pending, nothing forced: no call");
    }

    #[tokio::test]
    async fn a_failed_call_puts_its_statuses_back() {
        let reports = Reports::default();
        let (calls, send) = fake_calls();
        reports.push(st(1, pb::TaskState::Running));
        calls.finish.send(Err(SessionError::Protocol("broken".into()))).ok();
        assert!(send_pending(&reports, 10, false, send).await.is_err());
        assert_eq!(unnumbered(&reports.take(10)), vec![st(1, pb::TaskState::Running)]);
    }

    /// A dispatcher whose heartbeat answers wait until the next heartbeat has arrived (or 10 s).
    #[derive(Default)]
    struct SlowToAnswer {
        arrived: std::sync::atomic::AtomicUsize,
        next_arrived: Notify,
        answered_after_next: tokio::sync::Mutex<Vec<bool>>,
    }

    #[tonic::async_trait]
    impl pb::dispatcher_server::Dispatcher for SlowToAnswer {
        type SessionStream = futures_util::stream::Empty<Result<pb::Assignments, tonic::Status>>;

        async fn register(
            &self,
            _: tonic::Request<pb::RegisterRequest>,
        ) -> Result<tonic::Response<pb::RegisterResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("register"))
        }

        async fn session(
            &self,
            _: tonic::Request<pb::SessionRequest>,
        ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
            Err(tonic::Status::unimplemented("session"))
        }

        async fn heartbeat(
            &self,
            _: tonic::Request<pb::HeartbeatRequest>,
        ) -> Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status> {
            let this = self.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            self.next_arrived.notify_waiters();
            let next = async {
                while self.arrived.load(std::sync::atomic::Ordering::SeqCst) <= this {
                    let notified = self.next_arrived.notified();
                    if self.arrived.load(std::sync::atomic::Ordering::SeqCst) > this {
                        break;
                    }
                    notified.await;
                }
            };
            let came = tokio::time::timeout(Duration::from_secs(10), next).await.is_ok();
            self.answered_after_next.lock().await.push(came);
            Ok(tonic::Response::new(pb::HeartbeatResponse { heartbeat_period_ms: 0 }))
        }

        async fn update_task_status(
            &self,
            _: tonic::Request<pb::UpdateTaskStatusRequest>,
        ) -> Result<tonic::Response<pb::UpdateTaskStatusResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("update_task_status"))
        }
    }

    #[tokio::test]
    async fn heartbeats_keep_their_schedule_while_the_manager_answers_late() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let manager = Arc::new(SlowToAnswer::default());
        let server = tonic::transport::Server::builder()
            .add_service(pb::dispatcher_server::DispatcherServer::from_arc(manager.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);
        let channel = Endpoint::from_shared(format!("http://{address}")).expect("an endpoint").connect_lazy();
        let mut config = AgentConfig::new(vec![address.to_string()], "token");
        config.heartbeat_jitter = 0.0;
        config.rpc_timeout = Duration::from_secs(30);
        let beating = heartbeat(Client::new(channel), "n1", Duration::from_millis(100), &config);
        // Two answers, each given only once the heartbeat after it had arrived: a client that
        // waited for each answer before the next heartbeat would leave the first unanswered for
        // 10 s, and that answer would say so.
        let answered = async {
            loop {
                let answers = manager.answered_after_next.lock().await.clone();
                if answers.len() >= 2 {
                    return answers;
                }
                manager.next_arrived.notified().await;
            }
        };
        let answers = tokio::select! {
            ended = beating => panic!("the heartbeats ended: {ended:?}"),
            answers = tokio::time::timeout(Duration::from_secs(30), answered) => answers.expect("two answers within 30 s"),
        };
        assert!(answers.iter().take(2).all(|came| *came), "heartbeats waited for answers: {answers:?}");
        server.abort();
    }
}
