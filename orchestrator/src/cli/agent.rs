//! `shoal agent`: runs this machine as a node of a cluster — registers it with the managers and
//! runs the tasks they assign on the local Docker engine, until interrupted (containers keep
//! running; a restarted agent adopts them).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use shoal_agent::engine::docker::DockerEngine;

use super::server::{advertise, parse_labels, wait_for_signal};
use crate::local_agent::{LocalAgent, LocalAgentConfig};

/// Where the agent keeps the node id the managers assigned, so that a restart is the same node.
const NODE_ID_FILE: &str = "node-id";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Manager addresses (comma-separated); the agent follows the leader among them
    #[arg(long, value_delimiter = ',', required = true, value_name = "ADDR")]
    pub join: Vec<String>,
    /// The worker join token (`shoal cluster join-token worker`)
    #[arg(long, env = "SHOAL_TOKEN", value_name = "TOKEN")]
    pub token: String,
    /// The node's name (default: the engine host's name)
    #[arg(long, value_name = "NODE")]
    pub name: Option<String>,
    /// Node label, for placement constraints and preferences (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The Docker engine to run containers on (default: DOCKER_HOST, else the local socket)
    #[arg(long, value_name = "DOCKER_HOST")]
    pub engine: Option<String>,
    /// Where managers reach this agent (for logs): HOST or HOST:PORT (default: the address this
    /// machine uses to reach the first manager, any free port)
    #[arg(long, value_name = "ADDR")]
    pub advertise_addr: Option<String>,
}

pub async fn run(state_dir: &Path, args: &AgentArgs) -> anyhow::Result<i32> {
    let labels = parse_labels(&args.labels)?;
    if args.token.trim().is_empty() {
        bail!("--token is empty: get one with `shoal -H MANAGER cluster join-token worker`");
    }
    tokio::fs::create_dir_all(state_dir)
        .await
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let engine = match &args.engine {
        Some(host) => DockerEngine::connect_to(host).await?,
        None => DockerEngine::connect().await?,
    };
    // The logs endpoint listens on every interface, on the advertised port if one is given.
    let port = args.advertise_addr.as_deref().and_then(|a| a.rsplit_once(':')).map_or("0", |(_, p)| p);
    let logs_listen = format!("0.0.0.0:{port}");
    let unspecified: SocketAddr =
        logs_listen.parse().with_context(|| format!("invalid --advertise-addr port {port:?}"))?;
    let advertised = advertise(unspecified, args.advertise_addr.as_deref(), &args.join);
    let advertise_host = advertised.rsplit_once(':').map(|(h, _)| h.to_string());
    let config = LocalAgentConfig {
        managers: args.join.clone(),
        token: args.token.clone(),
        node_id: None,
        node_id_file: Some(state_dir.join(NODE_ID_FILE)),
        name: args.name.clone(),
        role: "worker".into(),
        logs_listen,
        advertise_host,
        labels,
    };
    let mut agent = LocalAgent::start(Arc::new(engine), config).await.context("cannot start the agent")?;
    eprintln!("shoal agent: joining {}", args.join.join(","));
    tokio::select! {
        stopped = agent.stopped() => {
            stopped?;
            Ok(0)
        }
        signal = wait_for_signal() => {
            signal?;
            eprintln!("shoal agent: stopping (containers keep running)");
            agent.shutdown().await;
            Ok(0)
        }
    }
}
