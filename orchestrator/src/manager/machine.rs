//! The cluster state as a Raft state machine: commands arrive as bytes, are decoded and applied
//! to [`ClusterState`]; every apply bumps a watch so that the orchestration loop, the dispatcher
//! and watchers wake up. The encoding lives here alone (JSON today), so changing it is local.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::store::command::{Command, CommandResult};
use crate::store::raft::{Membership, SnapshotWriter, StateMachine};
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
}

impl ClusterMachine {
    /// A machine and the receiver that sees the applied index after every change.
    pub fn new() -> (ClusterMachine, watch::Receiver<u64>) {
        let (changes, rx) = watch::channel(0);
        (ClusterMachine { state: ClusterState::default(), changes }, rx)
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
        encode(&self.state)
    }

    /// A copy of the state (at 100,000 tasks tens of milliseconds, against a second or more to
    /// serialize it), serialized later straight into the snapshot file.
    fn snapshot_later(&self) -> SnapshotWriter {
        let state = self.state.clone();
        Box::new(move |out| serde_json::to_writer(out, &state).map_err(std::io::Error::from))
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
