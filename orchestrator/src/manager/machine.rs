//! The cluster state as a Raft state machine: commands arrive as bytes, are decoded and applied
//! to [`ClusterState`]; every apply bumps a watch so that the orchestration loop, the dispatcher
//! and watchers wake up. The encoding lives here alone (JSON today), so changing it is local.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::store::command::{Command, CommandResult};
use crate::store::raft::{Membership, StateMachine};
use crate::store::state::{ClusterState, ManagerInfo};

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The state machine the Raft driver applies commands to.
pub struct ClusterMachine {
    pub state: ClusterState,
    changes: watch::Sender<u64>,
    /// Bytes of the last snapshot, to size the next one's buffer (shared with the threads that
    /// serialize snapshots).
    snapshot_size: Arc<AtomicUsize>,
}

impl ClusterMachine {
    /// A machine and the receiver that sees the applied index after every change.
    pub fn new() -> (ClusterMachine, watch::Receiver<u64>) {
        let (changes, rx) = watch::channel(0);
        (ClusterMachine { state: ClusterState::default(), changes, snapshot_size: Arc::default() }, rx)
    }

    /// A machine starting from a given state (a restored backup, a recovered cluster).
    pub fn with_state(state: ClusterState) -> (ClusterMachine, watch::Receiver<u64>) {
        let (mut machine, rx) = ClusterMachine::new();
        machine.state = state;
        (machine, rx)
    }

    fn notify(&self) {
        self.changes.send_replace(self.state.applied_index);
    }
}

/// The state as snapshot bytes, in a buffer sized like the last snapshot (plus room to grow): a
/// large state is not copied over and over while its buffer doubles, nor left with twice the
/// room it needs.
fn serialize(state: &ClusterState, last_size: &AtomicUsize) -> Vec<u8> {
    let hint = last_size.load(Ordering::Relaxed);
    let mut bytes = Vec::with_capacity(hint + hint / 8);
    // Serializing our own plain data types to JSON cannot fail (see `encode`).
    let _ = serde_json::to_writer(&mut bytes, state);
    last_size.store(bytes.len(), Ordering::Relaxed);
    bytes
}

impl StateMachine for ClusterMachine {
    type Command = Result<Command, String>;

    fn decode(command: &[u8]) -> Self::Command {
        decode::<Command>(command)
    }

    fn apply(&mut self, index: u64, command: Self::Command) -> Vec<u8> {
        let result = match command {
            Ok(command) => self.state.apply(command),
            // A command this version cannot read changes nothing, on every member alike.
            Err(e) => CommandResult { error: Some(format!("unreadable command: {e}")), ..CommandResult::default() },
        };
        self.state.applied_index = index;
        self.notify();
        encode(&result)
    }

    fn snapshot(&self) -> Vec<u8> {
        serialize(&self.state, &self.snapshot_size)
    }

    /// A copy of the state (at 100,000 tasks tens of milliseconds, against a second or more to
    /// serialize it).
    fn snapshot_later(&self) -> Box<dyn FnOnce() -> Vec<u8> + Send> {
        let (state, size) = (self.state.clone(), self.snapshot_size.clone());
        Box::new(move || serialize(&state, &size))
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.state = decode(data)?;
        self.notify();
        Ok(())
    }

    /// A change's context names the manager it adds (see the Raft service's join); members that
    /// left are forgotten. Deterministic, like every apply.
    fn apply_membership(&mut self, index: u64, membership: &Membership, context: &[u8]) {
        if let Ok(manager) = decode::<ManagerInfo>(context) {
            if membership.contains(manager.id) {
                self.state.managers.insert(manager.id, manager);
            }
        }
        self.state.managers.retain(|id, _| membership.contains(*id));
        self.state.applied_index = index;
        self.notify();
    }
}
