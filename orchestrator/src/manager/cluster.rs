//! [`Cluster`]: how the manager's services (control API, dispatcher, orchestration loop) use the
//! store — read the local state, propose commands, and wait for changes.
//!
//! On a manager of a replicated cluster, writes made on a follower are forwarded to the leader
//! and answered once the follower has applied them too (so the caller reads its own writes), and
//! a manager that cannot reach a majority of the voters refuses writes and linearizable reads at
//! once ("no quorum") rather than letting them hang.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::machine::{decode, encode, ClusterMachine};
use super::peers::forward::{ForwardError, Forwarder};
use crate::store::command::{Command, CommandResult};
use crate::store::raft::{ProposeError, RaftHandle, RaftStatus, StateReader};
use crate::store::state::{ClusterState, Millis};

/// How often a waiting request re-checks that a majority is still reachable.
const QUORUM_RECHECK: Duration = Duration::from_millis(100);
/// Pause between attempts while the leadership is changing.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Propose(#[from] ProposeError),
    #[error("{0}")]
    Rejected(String),
    #[error("the store answered with an unreadable result: {0}")]
    Corrupt(String),
    #[error(
        "no quorum: {reachable} of {total} managers reachable; writes are refused until a majority is back \
         (running containers are not affected)"
    )]
    NoQuorum { reachable: usize, total: usize },
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// A cheap-to-clone handle on this manager's replica of the cluster state.
#[derive(Clone)]
pub struct Cluster {
    raft: RaftHandle,
    state: StateReader<ClusterMachine>,
    changes: watch::Receiver<u64>,
    peers: Option<Arc<Forwarder>>,
}

impl Cluster {
    /// A group of one: every write is proposed locally.
    pub fn new(raft: RaftHandle, state: StateReader<ClusterMachine>, changes: watch::Receiver<u64>) -> Self {
        Cluster { raft, state, changes, peers: None }
    }

    /// A member of a replicated group: writes on a follower go to the leader through `peers`.
    pub fn replicated(
        raft: RaftHandle,
        state: StateReader<ClusterMachine>,
        changes: watch::Receiver<u64>,
        peers: Arc<Forwarder>,
    ) -> Self {
        Cluster { raft, state, changes, peers: Some(peers) }
    }

    pub fn peers(&self) -> Option<&Arc<Forwarder>> {
        self.peers.as_ref()
    }

    /// Proposes one command and waits until it is applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, ClusterError> {
        let mut results = self.propose_all(vec![command]).await?;
        let result = results.pop().ok_or_else(|| ClusterError::Corrupt("no answer for the command".into()))?;
        match result.error {
            Some(error) => Err(ClusterError::Rejected(error)),
            None => Ok(result),
        }
    }

    /// Proposes several commands as one batch (one fsync). The first command that could not be
    /// applied is returned as the error; commands the state rejected carry their `error`.
    pub async fn propose_all(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, ClusterError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = commands.iter().map(encode).collect();
        let mut results = Vec::new();
        for outcome in self.submit(encoded).await? {
            let result: CommandResult = decode(&outcome?).map_err(ClusterError::Corrupt)?;
            results.push(result);
        }
        Ok(results)
    }

    /// Proposes encoded commands here if this manager leads, or forwards them to the leader.
    async fn submit(&self, commands: Vec<Vec<u8>>) -> Result<Vec<Result<Vec<u8>, ProposeError>>, ClusterError> {
        let Some(peers) = &self.peers else { return Ok(self.raft.propose_batch(commands).await) };
        let deadline = Instant::now() + self.raft.request_timeout();
        loop {
            let status = self.raft.status();
            self.check_quorum(&status)?;
            let leader = match status.leader {
                Some(_) if status.is_leader() => {
                    return self.until_quorum_lost(self.raft.propose_batch(commands)).await;
                }
                Some(leader) => leader,
                None => {
                    self.wait_for_leader(deadline).await?;
                    continue;
                }
            };
            // Bounded by the deadline too: a leader that became unreachable mid-request would
            // otherwise hold the call until the connection's keep-alive gives up (~10 s).
            let forward = self.until_quorum_lost(peers.forward(leader, commands.clone()));
            let Ok(forwarded) = tokio::time::timeout_at(deadline, forward).await else {
                self.check_quorum(&self.raft.status())?;
                return Err(ProposeError::Timeout(self.raft.request_timeout()).into());
            };
            let forwarded = forwarded?;
            match forwarded {
                Ok(response) => {
                    self.wait_applied(response.applied_index, deadline).await;
                    return Ok(response.results.into_iter().map(forwarded_outcome).collect());
                }
                Err(e) if e.retryable() && Instant::now() < deadline => {
                    tracing::debug!("forwarding to the leader failed, retrying: {e}");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs `request`, but answers "no quorum" as soon as this manager notices it cannot reach a
    /// majority any more, instead of letting the request wait out its timeout. (A proposal
    /// already in the log may still be applied if the majority comes back; writes carry request
    /// ids or are idempotent, so a client's retry is safe.)
    async fn until_quorum_lost<T>(&self, request: impl std::future::Future<Output = T>) -> Result<T, ClusterError> {
        let watch_quorum = async {
            let mut every = tokio::time::interval(QUORUM_RECHECK);
            loop {
                every.tick().await;
                if let Err(e) = self.check_quorum(&self.raft.status()) {
                    return e;
                }
            }
        };
        tokio::select! {
            outcome = request => Ok(outcome),
            lost = watch_quorum => Err(lost),
        }
    }

    /// Refuses at once when this manager cannot reach a majority of the voters.
    fn check_quorum(&self, status: &RaftStatus) -> Result<(), ClusterError> {
        let Some(peers) = &self.peers else { return Ok(()) };
        let voters = &status.membership.voters;
        // Just (re)started, this manager has not heard from its peers yet, which says nothing
        // about them: the request goes its normal way (to the leader, or waits for one).
        if voters.len() <= 1 || !peers.book().settled() {
            return Ok(());
        }
        let reachable = peers.book().reachable_count(voters);
        if reachable * 2 <= voters.len() {
            return Err(ClusterError::NoQuorum { reachable, total: voters.len() });
        }
        Ok(())
    }

    /// Waits for an election to produce a leader; "no quorum" if none does in time.
    async fn wait_for_leader(&self, deadline: Instant) -> Result<(), ClusterError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.raft.wait_for(left, |s| s.leader.is_some()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let status = self.raft.status();
                let voters = &status.membership.voters;
                let reachable = self.peers.as_ref().map_or(1, |p| p.book().reachable_count(voters));
                Err(ClusterError::NoQuorum { reachable, total: voters.len().max(1) })
            }
        }
    }

    /// Waits (bounded) until this replica has applied `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) {
        let mut changes = self.changes.clone();
        let reached = async {
            while *changes.borrow_and_update() < index {
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, reached).await;
    }

    /// Asks the leader to admit a joining manager (this manager is a follower).
    pub async fn forward_join(&self, request: pb::JoinRequest) -> Result<pb::JoinResponse, ClusterError> {
        let peers = self.peers.as_ref().ok_or(ProposeError::NotLeader { leader_hint: None })?;
        let deadline = Instant::now() + self.raft.request_timeout();
        let leader = match self.raft.status().leader {
            Some(leader) => leader,
            None => {
                self.wait_for_leader(deadline).await?;
                self.raft.status().leader.ok_or(ProposeError::NotLeader { leader_hint: None })?
            }
        };
        Ok(peers.join(leader, request).await?)
    }

    /// Reads the local replica (possibly stale on a follower). Keep `f` short.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        self.state.read(|m| f(&m.state))
    }

    /// Reads after a ReadIndex barrier: sees every write acknowledged before the call.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> Result<R, ClusterError> {
        self.check_quorum(&self.raft.status())?;
        Ok(self.state.read_linearizable(|m| f(&m.state)).await?)
    }

    /// A linearizable read, or with `stale` a read of this replica as it is.
    pub async fn read_consistent<R>(&self, stale: bool, f: impl FnOnce(&ClusterState) -> R) -> Result<R, ClusterError> {
        if stale {
            Ok(self.read(f))
        } else {
            self.read_linearizable(f).await
        }
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

    /// The state machine's full serialized state (as snapshots and backups hold it).
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        self.state.read(crate::store::raft::StateMachine::snapshot)
    }
}

fn forwarded_outcome(result: pb::ForwardResult) -> Result<Vec<u8>, ProposeError> {
    match result.outcome {
        Some(pb::forward_result::Outcome::Response(bytes)) => Ok(bytes),
        Some(pb::forward_result::Outcome::Error(_)) if result.retryable => Err(ProposeError::LeadershipLost),
        Some(pb::forward_result::Outcome::Error(message)) => Err(ProposeError::Remote(message)),
        None => Err(ProposeError::Remote("the leader sent an empty answer".into())),
    }
}

/// Wall-clock milliseconds, stamped into commands by the proposer (never read while applying).
pub fn now() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}
