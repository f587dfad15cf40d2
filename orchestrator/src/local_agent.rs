//! An agent run by this process: `shoal agent` (a node of a cluster) and the agent `shoal server`
//! runs for its own machine. The task runner works on the local Docker engine, a logs endpoint
//! serves container output to the managers, and the node joins through the Dispatcher API like
//! any other agent.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_agent::engine::docker::DockerEngine;
use shoal_agent::logs::AgentService;
use shoal_agent::session::{run_agent, AgentConfig, AgentError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// How long the logs endpoint may take to end.
const LOGS_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct LocalAgent {
    shutdown: watch::Sender<bool>,
    agent: JoinHandle<Result<(), AgentError>>,
    logs: JoinHandle<()>,
}

/// Who the agent is and where it reports.
pub struct LocalAgentConfig {
    pub managers: Vec<String>,
    pub token: String,
    /// The node id, when fixed (a manager's own agent); otherwise kept in `node_id_file`, or
    /// assigned by the manager at the first registration.
    pub node_id: Option<String>,
    pub node_id_file: Option<PathBuf>,
    /// The node's name (default: the engine host's name).
    pub name: Option<String>,
    /// `manager` or `worker`.
    pub role: String,
    /// Where the logs endpoint listens (`host:0` picks a port).
    pub logs_listen: String,
    /// The host managers reach the logs endpoint at (default: the listen host).
    pub advertise_host: Option<String>,
    pub labels: Vec<(String, String)>,
}

impl LocalAgent {
    pub async fn start(engine: Arc<DockerEngine>, config: LocalAgentConfig) -> std::io::Result<LocalAgent> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = TcpListener::bind(&config.logs_listen).await?;
        let bound = listener.local_addr()?;
        let logs_address = match &config.advertise_host {
            Some(host) => format!("{host}:{}", bound.port()),
            None => bound.to_string(),
        };
        let mut agent_config = AgentConfig::new(config.managers, config.token);
        let service =
            AgentService::new(engine.clone()).for_registered(agent_config.registered_id.clone()).into_server();
        let mut stop = shutdown_rx.clone();
        let logs = tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
            {
                tracing::error!("agent logs endpoint stopped: {e}");
            }
        });
        agent_config.node_id = config.node_id;
        agent_config.node_id_file = config.node_id_file;
        agent_config.name = config.name;
        agent_config.role = config.role;
        agent_config.advertise_addr = Some(logs_address);
        agent_config.labels = config.labels.into_iter().collect();
        let agent = tokio::spawn(run_agent(agent_config, engine, shutdown_rx));
        Ok(LocalAgent { shutdown, agent, logs })
    }

    /// Resolves when the agent stops on its own: a refused registration, an unusable address.
    pub async fn stopped(&mut self) -> Result<(), AgentError> {
        match (&mut self.agent).await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!("the agent task failed: {e}");
                Ok(())
            }
        }
    }

    /// Stops the agent; its containers keep running.
    pub async fn shutdown(self) {
        self.shutdown.send_replace(true);
        if let Ok(Err(e)) = self.agent.await {
            tracing::error!("local agent stopped: {e}");
        }
        // The endpoint's graceful end waits for open log streams (a `logs -f` through a
        // manager), which never end by themselves: past the grace it ends with the process.
        let _ = tokio::time::timeout(LOGS_GRACE, self.logs).await;
    }
}
