//! [`Cluster`]: how the manager's services (control API, dispatcher, orchestration loop) use the
//! store — read the local state, propose commands, and wait for changes.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::machine::{decode, encode, ClusterMachine};
use crate::store::command::{Command, CommandResult};
use crate::store::raft::{ProposeError, RaftHandle, StateReader};
use crate::store::state::{ClusterState, Millis};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("{0}")]
    Rejected(String),
    #[error("the store answered with an unreadable result: {0}")]
    Corrupt(String),
}

/// A cheap-to-clone handle on this manager's replica of the cluster state.
#[derive(Clone)]
pub struct Cluster {
    raft: RaftHandle,
    state: StateReader<ClusterMachine>,
    changes: watch::Receiver<u64>,
}

impl Cluster {
    pub fn new(raft: RaftHandle, state: StateReader<ClusterMachine>, changes: watch::Receiver<u64>) -> Self {
        Cluster { raft, state, changes }
    }

    /// Proposes one command and waits until it is applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ClusterError> {
        let bytes = self.raft.propose(encode(&command)).await?;
        let result: CommandResult = decode(&bytes).map_err(ClusterError::Corrupt)?;
        match result.error {
            Some(error) => Err(ClusterError::Rejected(error)),
            None => Ok(result),
        }
    }

    /// Proposes several commands as one batch (one fsync); the first failure is returned.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, ClusterError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = commands.iter().map(encode).collect();
        let mut results = Vec::new();
        for outcome in self.raft.propose_batch(encoded).await {
            let result: CommandResult = decode(&outcome?).map_err(ClusterError::Corrupt)?;
            results.push(result);
        }
        Ok(results)
    }

    /// Reads the local replica (possibly stale on a follower). Keep `f` short.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.state.read(|m| f(&m.state))
    }

    /// Reads after a ReadIndex barrier: sees every write acknowledged before the call.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> Result<R, ClusterError> {
        Ok(self.state.read_linearizable(|m| f(&m.state)).await?)
    }

    /// Wakes on every applied change (the value is the applied index).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.status().is_leader()
    }

    pub fn raft(&self) -> &RaftHandle {
        &self.raft
    }
}

/// Wall-clock milliseconds, stamped into commands by the proposer (never read while applying).
pub fn now() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
