//! Where the CLI's requests go: a cluster named by `--host`/`SHOAL_HOST`, or the embedded
//! single-node cluster that runs inside this process on the local Docker engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Reads may come from the answering manager's copy as it is (`--stale`), without the
    /// round to the leader that makes them linearizable.
    pub stale: bool,
}

impl Target {
    pub fn new(host: Option<&str>, state_dir: Option<PathBuf>) -> Target {
        let hosts = host
            .map(|h| h.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        Target { hosts, state_dir: state_dir.unwrap_or_else(default_state_dir), stale: false }
    }
}

/// A request id unique to this invocation: a write retried after a failover is applied once.
pub fn request_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}-{:x}", std::process::id(), nanos, crate::manager::peers::service::rand_id())
}

/// `$XDG_DATA_HOME/shoal`, else `~/.local/share/shoal`.
pub fn default_state_dir() -> PathBuf {
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("shoal");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/shoal")
}

/// How many times in a row to look for the state dir's holder again when the one found exits
/// before it could be dialed.
const MAX_REDIALS: usize = 10;

/// A connection to a manager; keeps the embedded cluster alive while it lives.
pub struct Connection {
    pub control: ControlClient<Channel>,
    embedded: Option<Embedded>,
    /// The `--host` addresses and which one `control` talks to.
    hosts: Vec<String>,
    current: usize,
}

/// How long a request keeps trying other managers while the cluster fails over.
pub const FAILOVER_WINDOW: Duration = Duration::from_secs(15);

/// Whether a failed call may succeed on another manager (or the same one a moment later).
pub fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        && !status.message().starts_with("no quorum")
}

impl Connection {
    /// Calls `call` until it succeeds, fails for good, or [`FAILOVER_WINDOW`] passes; between
    /// attempts it moves on to the next `--host` address, or to the embedded cluster's new
    /// holder (see [`Connection::recover`]). The call must be safe to repeat (reads, and writes
    /// that carry a request id).
    pub async fn with_failover<T, F, Fut>(&mut self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut(ControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + FAILOVER_WINDOW;
        let mut pause = Duration::from_millis(50);
        loop {
            match call(self.control.clone()).await {
                Err(status) if retryable(&status) && tokio::time::Instant::now() < deadline => {
                    tracing::debug!("request failed ({}); trying again", status.message());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                    if self.embedded.is_some() {
                        self.recover().await.map_err(|e| tonic::Status::unavailable(format!("{e:#}")))?;
                    } else {
                        self.next_host().await;
                    }
                }
                other => return other,
            }
        }
    }

    /// After a call or a stream failed (or a stream ended early): if the manager `control`
    /// talks to has gone away, moves on to one that serves — the next `--host` address that
    /// answers; or, when this process was the guest of another `shoal` process on the state dir
    /// and that one exited, the state dir's new holder: usually this process, which takes the
    /// state dir over. True when `control` now talks to another manager: reopen streams, repeat
    /// calls (those safe to repeat). False when the manager is still there, or there is none
    /// to move to.
    pub async fn recover(&mut self) -> anyhow::Result<bool> {
        let Some(embedded) = &self.embedded else {
            let before = self.current;
            if self.hosts.is_empty() || dial(&self.hosts[before]).await.is_ok() {
                return Ok(false);
            }
            self.next_host().await;
            return Ok(self.current != before);
        };
        if !embedded.host_went_away().await {
            return Ok(false);
        }
        let state_dir = embedded.state_dir().to_path_buf();
        tracing::debug!("the shoal process serving {} exited; taking over", state_dir.display());
        let (embedded, control) = join_embedded(&state_dir).await?;
        self.embedded = Some(embedded);
        self.control = control;
        Ok(true)
    }

    /// Talks to the next `--host` address that answers (no-op for the embedded cluster).
    async fn next_host(&mut self) {
        for _ in 0..self.hosts.len() {
            self.current = (self.current + 1) % self.hosts.len();
            if let Ok(control) = dial(&self.hosts[self.current]).await {
                self.control = control;
                return;
            }
        }
    }

    /// Stops the embedded cluster, if this process runs one; containers keep running.
    pub async fn close(self) {
        if let Some(embedded) = self.embedded {
            embedded.shutdown().await;
        }
    }
}

pub async fn connect(target: &Target) -> anyhow::Result<Connection> {
    if target.hosts.is_empty() {
        return connect_embedded(target).await;
    }
    let mut last_error = None;
    for (current, host) in target.hosts.iter().enumerate() {
        match dial(host).await {
            Ok(control) => return Ok(Connection { control, embedded: None, hosts: target.hosts.clone(), current }),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no manager address given")))
}

/// The embedded cluster: this process's own, or that of the process holding the state dir.
async fn connect_embedded(target: &Target) -> anyhow::Result<Connection> {
    let (embedded, control) = join_embedded(&target.state_dir).await?;
    Ok(Connection { control, embedded: Some(embedded), hosts: Vec::new(), current: 0 })
}

/// Starts the embedded cluster on the state dir, or finds the process that serves it, and dials
/// its manager.
async fn join_embedded(state_dir: &Path) -> anyhow::Result<(Embedded, ControlClient<Channel>)> {
    let mut redials = 0;
    loop {
        let embedded = Embedded::start(state_dir).await.map_err(|e| one_message(&e))?;
        match dial(&embedded.control_address()).await {
            Ok(control) => return Ok((embedded, control)),
            // The holder exited between being found and being dialed: look again.
            Err(_) if redials < MAX_REDIALS && embedded.host_went_away().await => redials += 1,
            Err(e) => {
                embedded.shutdown().await;
                return Err(e);
            }
        }
    }
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
