//! Starting and stopping a manager: the Raft store with the cluster state machine, the
//! orchestration loop, the dispatcher's background tasks, and the gRPC server (Control and
//! Dispatcher) on one listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::cluster::Cluster;
use super::machine::ClusterMachine;
use super::orchestrate;
use crate::controlapi::ControlService;
use crate::dispatcher::server::{DispatcherConfig, DispatcherService, DispatcherTasks};
use crate::store::raft::{self, NoopTransport, RaftConfig, RaftTask, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("invalid dispatcher settings: {0}")]
    Dispatcher(String),
}

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub state_dir: PathBuf,
    /// Where Control and Dispatcher listen (`127.0.0.1:0` picks a free port).
    pub listen: String,
    pub raft: RaftConfig,
    pub dispatcher: DispatcherConfig,
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
    orchestrator: JoinHandle<()>,
    dispatcher_tasks: DispatcherTasks,
    raft: RaftTask,
}

impl Manager {
    pub async fn start(config: ManagerConfig) -> Result<Manager, ManagerError> {
        let (machine, changes) = ClusterMachine::new();
        let node = raft::start(config.raft.clone(), machine, Arc::new(NoopTransport)).await?;
        let cluster = Cluster::new(node.handle.clone(), node.state.clone(), changes);
        // A group of one elects itself within an election timeout; serve once it has.
        let _ = node.handle.wait_for(config.raft.request_timeout, |s| s.is_leader()).await;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ManagerError::Listen { address: config.listen.clone(), source })?;
        let address =
            listener.local_addr().map_err(|source| ManagerError::Listen { address: config.listen.clone(), source })?;

        let (dispatcher, dispatcher_tasks) =
            DispatcherService::start(cluster.clone(), config.dispatcher.clone(), shutdown_rx.clone())
                .map_err(ManagerError::Dispatcher)?;
        let orchestrator = tokio::spawn(orchestrate::run(cluster.clone(), shutdown_rx.clone()));
        let control = ControlService::new(cluster.clone());
        let mut stop = shutdown_rx.clone();
        let router = tonic::transport::Server::builder()
            .add_service(control.into_server())
            .add_service(dispatcher.clone().into_server());
        let server = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal).await {
                tracing::error!("manager gRPC server stopped: {e}");
            }
        });
        Ok(Manager { address, cluster, dispatcher, shutdown, server, orchestrator, dispatcher_tasks, raft: node.task })
    }

    /// Stops serving, then stops the store (its state is on disk).
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        let _ = self.server.await;
        let _ = self.orchestrator.await;
        self.dispatcher_tasks.join().await;
        self.cluster.raft().clone().shutdown().await;
        let _ = self.raft.join().await;
    }
}
