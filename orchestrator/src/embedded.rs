//! The embedded single-node cluster: with no `--host`, the CLI runs a manager (a Raft group of
//! one, state in the state dir) and an agent on the local Docker engine inside its own process,
//! talking gRPC over loopback — the same code path as a real cluster, not a second
//! implementation. Containers outlive the process; the next invocation adopts them.
//!
//! Two processes on one state dir: the first holds the store's lock and writes its Control
//! address to `manager.addr`; a second one finds the lock taken and talks to the first instead
//! (it is the first one's *guest*). The first one may exit while its guest is mid-request: it
//! removes `manager.addr` before it stops serving, so the guest can tell (see
//! [`Embedded::host_went_away`]) and start over — usually holding the lock itself by then.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal_agent::engine::docker::DockerEngine;

use crate::local_agent::{LocalAgent, LocalAgentConfig};
use crate::manager::{Manager, ManagerConfig, ManagerError};
use crate::store::raft::StoreError;
use crate::store::state::NodeStatus;

const ADDRESS_FILE: &str = "manager.addr";
const TOKEN_FILE: &str = "join-token";
/// The embedded node's id, made once per state dir. Each agent manages only containers labelled
/// with its node id, so two state dirs on one engine must never share one.
const NODE_ID_FILE: &str = "node-id";
/// How long to wait for a process that holds the state dir without serving it — it is starting,
/// or exiting — before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// The pause between attempts to take the state dir: the first, doubling up to the second.
const LOCK_RETRY: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(200));
/// How long the address of another process's manager may take to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot use the state directory {}: {source}", path.display())]
    StateDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("{0}")]
    Engine(#[from] shoal_agent::engine::EngineError),
    #[error("cannot listen for the agent on loopback: {0}")]
    Listen(std::io::Error),
    #[error("the local agent did not join the embedded cluster within {0:?}; see the logs with SHOAL_LOG=debug")]
    AgentTimeout(Duration),
    #[error(
        "another shoal process has held the state directory {} for {wait:?} without serving it; \
         if none is running, it may be stuck: stop it and retry",
        path.display()
    )]
    Busy { path: PathBuf, wait: Duration },
}

/// A running embedded cluster, or a connection to another process's.
pub struct Embedded {
    address: String,
    state_dir: PathBuf,
    /// `None`: a guest of the process that holds the state dir.
    running: Option<Running>,
}

struct Running {
    manager: Manager,
    agent: LocalAgent,
    node_id: String,
}

impl Embedded {
    pub async fn start(state_dir: &Path) -> Result<Embedded, EmbeddedError> {
        let dir_error = |source| EmbeddedError::StateDir { path: state_dir.to_path_buf(), source };
        tokio::fs::create_dir_all(state_dir).await.map_err(dir_error)?;
        // Reach the engine first: without it nothing can run, and the error says so plainly.
        let engine = Arc::new(DockerEngine::connect().await?);
        let token = secret_file(state_dir, TOKEN_FILE, "SHOAL-", 16).await.map_err(dir_error)?;
        let node_id = secret_file(state_dir, NODE_ID_FILE, "local-", 4).await.map_err(dir_error)?;

        let mut config = ManagerConfig::new(state_dir, "127.0.0.1:0", token.clone());
        // Nothing watches the containers between invocations: let the engine restart them.
        config.dispatcher.engine_restarts = true;
        let manager = match take_state_dir(state_dir, config).await? {
            Holder::This(manager) => manager,
            Holder::Other(address) => {
                return Ok(Embedded { address, state_dir: state_dir.to_path_buf(), running: None })
            }
        };
        let address = manager.address.to_string();
        write_address(state_dir, &address).await.map_err(dir_error)?;

        let agent_config = LocalAgentConfig {
            managers: vec![address.clone()],
            token,
            node_id: Some(node_id.clone()),
            node_id_file: None,
            name: None,
            role: "manager".into(),
            logs_listen: "127.0.0.1:0".into(),
            advertise_host: None,
            labels: Vec::new(),
        };
        let agent = LocalAgent::start(engine, agent_config).await.map_err(EmbeddedError::Listen)?;
        let running = Running { manager, agent, node_id };
        let embedded = Embedded { address, state_dir: state_dir.to_path_buf(), running: Some(running) };
        embedded.wait_for_agent(Duration::from_secs(15)).await?;
        Ok(embedded)
    }

    /// The Control API address to dial.
    pub fn control_address(&self) -> String {
        self.address.clone()
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Whether this is a guest of another process's cluster whose host has gone away (or is
    /// going): its address file is gone or names another manager, or nothing answers there. A
    /// request that failed then may succeed when run again on a fresh connection.
    pub async fn host_went_away(&self) -> bool {
        if self.running.is_some() {
            return false;
        }
        match read_address(&self.state_dir).await {
            Some(address) if address == self.address => !answers(&address).await,
            _ => true,
        }
    }

    /// Waits until the local agent is registered and has reported the containers it adopted,
    /// so that the first request sees what happened while no shoal process ran.
    async fn wait_for_agent(&self, timeout: Duration) -> Result<(), EmbeddedError> {
        let Some(running) = &self.running else { return Ok(()) };
        let cluster = &running.manager.cluster;
        let mut changes = cluster.subscribe();
        let node = running.node_id.as_str();
        let ready = async {
            loop {
                if cluster.read(|s| s.nodes.get(node).is_some_and(|n| n.status == NodeStatus::Ready)) {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let started = tokio::time::Instant::now();
        tokio::time::timeout(timeout, ready).await.map_err(|_| EmbeddedError::AgentTimeout(timeout))?;
        let left = timeout.saturating_sub(started.elapsed());
        if running.manager.dispatcher.wait_synced(node, left).await {
            Ok(())
        } else {
            Err(EmbeddedError::AgentTimeout(timeout))
        }
    }

    /// Stops the agent (containers keep running) and the manager (state stays on disk).
    pub async fn shutdown(self) {
        let Some(running) = self.running else { return };
        // First, so that a guest whose request fails from here on knows why (`host_went_away`),
        // and new processes wait for the lock instead of dialing a manager about to go.
        let _ = tokio::fs::remove_file(self.state_dir.join(ADDRESS_FILE)).await;
        running.agent.shutdown().await;
        running.manager.shutdown().await;
    }
}

/// Who serves the state dir.
enum Holder {
    /// This process: its manager holds the store.
    This(Manager),
    /// Another process, whose manager answers at this address.
    Other(String),
}

/// Starts the manager on the state dir, or finds the process that holds it. A holder that does
/// not serve yet (starting) or any more (exiting) is waited for, up to [`LOCK_WAIT`].
async fn take_state_dir(state_dir: &Path, config: ManagerConfig) -> Result<Holder, EmbeddedError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut pause = LOCK_RETRY.0;
    loop {
        match Manager::start(config.clone()).await {
            Ok(manager) => return Ok(Holder::This(manager)),
            Err(ManagerError::Store(StoreError::Locked { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        if let Some(address) = read_address(state_dir).await {
            // A file left by a process that was killed names a manager nobody serves.
            if answers(&address).await {
                return Ok(Holder::Other(address));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(EmbeddedError::Busy { path: state_dir.to_path_buf(), wait: LOCK_WAIT });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LOCK_RETRY.1);
    }
}

/// The address in `manager.addr`, if there is one.
async fn read_address(state_dir: &Path) -> Option<String> {
    let text = tokio::fs::read_to_string(state_dir.join(ADDRESS_FILE)).await.ok()?;
    Some(text.trim().to_string()).filter(|a| !a.is_empty())
}

/// Writes `manager.addr` whole (a temporary file renamed), so a reader never sees half of it.
async fn write_address(state_dir: &Path, address: &str) -> std::io::Result<()> {
    let temporary = state_dir.join(format!("{ADDRESS_FILE}.{}", std::process::id()));
    tokio::fs::write(&temporary, address).await?;
    tokio::fs::rename(&temporary, state_dir.join(ADDRESS_FILE)).await
}

/// Whether something accepts connections at `address`.
async fn answers(address: &str) -> bool {
    matches!(tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await, Ok(Ok(_)))
}

/// A random value made once per state dir (`<prefix><2×bytes hex digits>`) and kept in `file`.
async fn secret_file(state_dir: &Path, file: &str, prefix: &str, bytes: usize) -> std::io::Result<String> {
    let path = state_dir.join(file);
    match tokio::fs::read_to_string(&path).await {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // /dev/urandom never ends: read a fixed amount.
    let bytes = random_bytes(bytes).await?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let token = format!("{prefix}{token}");
    tokio::fs::write(&path, &token).await?;
    Ok(token)
}

async fn random_bytes(count: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open("/dev/urandom").await?;
    let mut bytes = vec![0u8; count];
    file.read_exact(&mut bytes).await?;
    Ok(bytes)
}
