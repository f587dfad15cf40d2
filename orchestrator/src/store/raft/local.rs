//! An in-process [`Transport`]: drivers in one process deliver messages straight into each other's
//! queues. For tests and simulations; members can be cut off to model crashes and partitions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use super::{RaftHandle, Transport};

/// Routes messages between registered drivers.
#[derive(Default)]
pub struct LocalNetwork {
    peers: RwLock<HashMap<u64, RaftHandle>>,
    isolated: RwLock<HashSet<u64>>,
}

impl LocalNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(LocalNetwork::default())
    }

    /// The transport for member `from`, to give to [`super::start`].
    pub fn transport(self: &Arc<Self>, from: u64) -> Arc<dyn Transport> {
        Arc::new(LocalTransport { from, network: self.clone() })
    }

    /// Makes `handle` reachable under its id (replacing an earlier registration).
    pub fn register(&self, handle: RaftHandle) {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).insert(handle.id(), handle);
    }

    pub fn unregister(&self, id: u64) {
        self.peers.write().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// Drops every message to and from `id` until [`LocalNetwork::heal`].
    pub fn isolate(&self, id: u64) {
        self.isolated.write().unwrap_or_else(PoisonError::into_inner).insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.isolated.write().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    fn deliver(&self, from: u64, to: u64, message: Vec<u8>) {
        {
            let isolated = self.isolated.read().unwrap_or_else(PoisonError::into_inner);
            if isolated.contains(&from) || isolated.contains(&to) {
                return;
            }
        }
        let peer = self.peers.read().unwrap_or_else(PoisonError::into_inner).get(&to).cloned();
        if let Some(peer) = peer {
            if let Err(e) = peer.step(&message) {
                tracing::debug!(target: "shoal::raft", "local transport {from} -> {to}: {e}");
            }
        }
    }
}

struct LocalTransport {
    from: u64,
    network: Arc<LocalNetwork>,
}

impl Transport for LocalTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        self.network.deliver(self.from, to, message);
    }
}
