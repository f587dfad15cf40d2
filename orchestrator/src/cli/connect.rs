//! Where the CLI's requests go: a cluster named by `--host`/`SHOAL_HOST`, or the embedded
//! single-node cluster that runs inside this process on the local Docker engine.

use std::path::PathBuf;

use anyhow::Context;
use shoal_proto::v1::control_client::ControlClient;
use tonic::transport::Channel;

use crate::embedded::Embedded;

/// The `--host` / state-dir choice.
#[derive(Debug, Clone)]
pub struct Target {
    /// Manager addresses, tried in order.
    pub hosts: Vec<String>,
    pub state_dir: PathBuf,
}

impl Target {
    pub fn new(host: Option<&str>, state_dir: Option<PathBuf>) -> Target {
        let hosts = host
            .map(|h| h.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        Target { hosts, state_dir: state_dir.unwrap_or_else(default_state_dir) }
    }
}

/// `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`.
pub fn default_state_dir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("shoal");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/shoal")
}

/// A connection to a manager; keeps the embedded cluster alive while it lives.
pub struct Connection {
    pub control: ControlClient<Channel>,
    embedded: Option<Embedded>,
}

impl Connection {
    /// Stops the embedded cluster, if this process runs one; containers keep running.
    pub async fn close(self) {
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
        }
    }
}

pub async fn connect(target: &Target) -> anyhow::Result<Connection> {
    if target.hosts.is_empty() {
        let embedded = Embedded::start(&target.state_dir).await.map_err(|e| one_message(&e))?;
        let control = dial(&embedded.control_address()).await?;
        return Ok(Connection { control, embedded: Some(embedded) });
    }
    let mut last_error = None;
    for host in &target.hosts {
        match dial(host).await {
            Ok(control) => return Ok(Connection { control, embedded: None }),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no manager address given")))
}

pub async fn dial(address: &str) -> anyhow::Result<ControlClient<Channel>> {
    let endpoint = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    ControlClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("cannot reach the Shoal manager at {address}: is `shoal server` running there?"))
}

/// The error and its causes as one message, each cause once: wrappers such as
/// `#[error("{0}")]` already repeat their source's text, which `{:#}` would print twice.
fn one_message(error: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    anyhow::anyhow!(text)
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot reach the engine")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("{0}")]
        Repeats(#[from] Inner),
        #[error("starting failed")]
        Adds(#[source] Inner),
    }

    #[test]
    fn each_cause_is_told_once() {
        assert_eq!(super::one_message(&Outer::Repeats(Inner)).to_string(), "cannot reach the engine");
        assert_eq!(super::one_message(&Outer::Adds(Inner)).to_string(), "starting failed: cannot reach the engine");
    }
}
