//! Starting and stopping a manager: the Raft store with the cluster state machine, the
//! orchestration loop, the dispatcher's background tasks, and the gRPC server (Control,
//! Dispatcher and, for a replicated cluster, Raft) on one listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::cluster::Cluster;
use super::machine::ClusterMachine;
use super::peers::book::PeerBook;
use super::peers::forward::Forwarder;
use super::peers::service::RaftService;
use super::peers::transport::GrpcTransport;
use super::{members, orchestrate};
use crate::controlapi::ControlService;
use crate::dispatcher::server::{DispatcherConfig, DispatcherConfigError, DispatcherService, DispatcherTasks};
use crate::store::raft::{self, NoopTransport, RaftConfig, RaftTask, StoreError, Transport};
use crate::store::state::{ClusterState, ManagerInfo};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("invalid dispatcher settings: {0}")]
    Dispatcher(#[from] DispatcherConfigError),
}

/// How a manager of a replicated cluster is known to the others.
#[derive(Debug, Clone)]
pub struct Replication {
    /// Unique among the managers (also its local agent's node id).
    pub name: String,
    /// Where the other managers, agents and clients reach it.
    pub advertise: String,
    /// Addresses known before the replicated state has them (a joining manager's join answer).
    pub seed_peers: Vec<(u64, String)>,
    /// A manager not heard from for longer counts as unreachable.
    pub contact_window: Duration,
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_dir: PathBuf,
    /// Where Control and Dispatcher listen (`127.0.0.1:0` picks a free port).
    pub listen: String,
    pub raft: RaftConfig,
    pub dispatcher: DispatcherConfig,
    /// `None`: a group of one that talks to nobody (the embedded cluster).
    pub replication: Option<Replication>,
    /// The state a new group starts from (a restored backup); ignored when the state dir has one.
    pub initial_state: Option<ClusterState>,
}

impl ManagerConfig {
    /// A single-member manager with default timings.
    pub fn new(state_dir: impl Into<PathBuf>, listen: impl Into<String>, join_token: impl Into<String>) -> Self {
        let state_dir = state_dir.into();
        ManagerConfig {
            raft: RaftConfig::new(1, state_dir.clone()),
            state_dir,
            listen: listen.into(),
            dispatcher: DispatcherConfig::new(join_token),
            replication: None,
            initial_state: None,
        }
    }
}

/// A running manager.
pub struct Manager {
    pub address: SocketAddr,
    pub cluster: Cluster,
    pub dispatcher: DispatcherService,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    dispatcher_tasks: DispatcherTasks,
    raft: RaftTask,
}

impl Manager {
    pub async fn start(config: ManagerConfig) -> Result<Manager, ManagerError> {
        let listener = bind(&config.listen).await?;
        Manager::start_on(listener, config).await
    }

    /// Starts on a listener bound beforehand (a joining manager must tell its address first).
    pub async fn start_on(listener: TcpListener, config: ManagerConfig) -> Result<Manager, ManagerError> {
        let address =
            listener.local_addr().map_err(|source| ManagerError::Listen { address: config.listen.clone(), source })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (machine, changes) = match config.initial_state.clone() {
            Some(state) => ClusterMachine::with_state(state),
            None => ClusterMachine::new(),
        };
        let mut background = Vec::new();
        let (cluster, raft_task, raft_service) = match &config.replication {
            None => {
                let node = raft::start(config.raft.clone(), machine, Arc::new(NoopTransport)).await?;
                (Cluster::new(node.handle.clone(), node.state.clone(), changes), node.task, None)
            }
            Some(replication) => {
                let book = Arc::new(PeerBook::new(config.raft.id, replication.contact_window));
                book.set_addresses(replication.seed_peers.iter().cloned());
                let transport = GrpcTransport::new(book.clone(), shutdown_rx.clone());
                let dyn_transport: Arc<dyn Transport> = transport.clone();
                let node = raft::start(config.raft.clone(), machine, dyn_transport).await?;
                transport.attach(node.handle.clone());
                let forwarder = Arc::new(Forwarder::new(book.clone()));
                let cluster = Cluster::replicated(node.handle.clone(), node.state.clone(), changes, forwarder);
                let own = ManagerInfo {
                    id: config.raft.id,
                    name: replication.name.clone(),
                    address: replication.advertise.clone(),
                    voter: true,
                };
                background.push(tokio::spawn(sync_peers(
                    cluster.clone(),
                    book.clone(),
                    transport,
                    shutdown_rx.clone(),
                )));
                background.push(tokio::spawn(members::run(cluster.clone(), own, shutdown_rx.clone())));
                let service = RaftService::new(cluster.clone(), book);
                (cluster, node.task, Some(service))
            }
        };
        // A group of one elects itself within an election timeout; serve once it has. (A member
        // of a larger group serves at once: it may be the one whose vote is missing.)
        if config.replication.is_none() {
            let _ = cluster.raft().wait_for(config.raft.request_timeout, |s| s.is_leader()).await;
        }

        let (dispatcher, dispatcher_tasks) =
            DispatcherService::start(cluster.clone(), config.dispatcher.clone(), shutdown_rx.clone())
                .map_err(ManagerError::Dispatcher)?;
        background.push(tokio::spawn(orchestrate::run(cluster.clone(), shutdown_rx.clone())));
        let control = ControlService::new(cluster.clone());
        let mut stop = shutdown_rx.clone();
        let router = tonic::transport::Server::builder()
            // Agents cancel calls that time out; h2's default (20 such streams pending per
            // connection) would then close the connection — and with it every session that
            // shares it — just when the manager is busiest.
            .http2_max_pending_accept_reset_streams(Some(PENDING_RESETS_PER_CONNECTION))
            .add_service(control.into_server())
            .add_service(dispatcher.clone().into_server())
            .add_optional_service(raft_service.map(RaftService::into_server));
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal).await {
                tracing::error!("manager gRPC server stopped: {e}");
            }
        });
        Ok(Manager { address, cluster, dispatcher, shutdown, server, background, dispatcher_tasks, raft: raft_task })
    }

    /// Stops serving, then stops the store (its state is on disk). Calls in flight get
    /// [`SERVE_GRACE`] to finish; a client's open stream (a watch, `logs -f`) must not keep the
    /// manager up — the client sees its connection end and goes elsewhere.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = tokio::time::timeout(SERVE_GRACE, self.server).await;
        for task in self.background {
            let _ = task.await;
        }
        self.dispatcher_tasks.join().await;
        self.cluster.raft().clone().shutdown().await;
        let _ = self.raft.join().await;
    }

    /// Resolves when the store stops on its own (a fatal storage error, or removal).
    pub fn raft_running(&self) -> watch::Receiver<crate::store::raft::RaftStatus> {
        self.cluster.raft().status_watch()
    }
}

/// How long a stopping manager waits for the calls in flight.
/// Cancelled calls tolerated per connection before it is closed (h2's limit, see `start`).
const PENDING_RESETS_PER_CONNECTION: usize = 10_000;

pub const SERVE_GRACE: Duration = Duration::from_secs(1);

pub async fn bind(listen: &str) -> Result<TcpListener, ManagerError> {
    TcpListener::bind(listen).await.map_err(|source| ManagerError::Listen { address: listen.to_string(), source })
}

/// Keeps the address book and the per-peer probes in step with the replicated list of managers.
async fn sync_peers(
    cluster: Cluster,
    book: Arc<PeerBook>,
    transport: Arc<GrpcTransport>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cluster.subscribe();
    loop {
        let managers = cluster.read(|s| s.managers.values().map(|m| (m.id, m.address.clone())).collect::<Vec<_>>());
        for (id, _) in &managers {
            if *id != book.id() {
                transport.watch_peer(*id);
            }
        }
        book.set_addresses(managers);
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
