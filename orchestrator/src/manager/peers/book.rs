//! What a manager knows about its peers: where each one listens, and when it last heard from it.
//! Addresses come from the replicated state (and, for a manager still joining, from the join
//! answer); contact times come from incoming raft traffic and from the probes.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

#[derive(Debug)]
pub struct PeerBook {
    id: u64,
    addresses: RwLock<HashMap<u64, String>>,
    contact: RwLock<HashMap<u64, Instant>>,
    /// Bumped whenever an address changes, so senders waiting for one wake up.
    changed: watch::Sender<u64>,
    /// A peer not heard from for longer counts as unreachable.
    pub contact_window: Duration,
    /// When this book was made (the manager started).
    started: Instant,
}

impl PeerBook {
    pub fn new(id: u64, contact_window: Duration) -> Self {
        PeerBook {
            id,
            addresses: RwLock::default(),
            contact: RwLock::default(),
            changed: watch::channel(0).0,
            contact_window,
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn address(&self, id: u64) -> Option<String> {
        self.addresses.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Records addresses (those of other members; our own is never dialled).
    pub fn set_addresses(&self, addresses: impl IntoIterator<Item = (u64, String)>) {
        let mut changed = false;
        {
            let mut map = self.addresses.write().unwrap_or_else(PoisonError::into_inner);
            for (id, address) in addresses {
                if id != self.id && !address.is_empty() && map.get(&id) != Some(&address) {
                    map.insert(id, address);
                    changed = true;
                }
            }
        }
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// We heard from `id` just now.
    pub fn touch(&self, id: u64) {
        if id != 0 && id != self.id {
            self.contact.write().unwrap_or_else(PoisonError::into_inner).insert(id, Instant::now());
        }
    }

    /// How long ago we last heard from `id` (`None`: never since this process started).
    pub fn since_contact(&self, id: u64) -> Option<Duration> {
        if id == self.id {
            return Some(Duration::ZERO);
        }
        self.contact.read().unwrap_or_else(PoisonError::into_inner).get(&id).map(Instant::elapsed)
    }

    pub fn reachable(&self, id: u64) -> bool {
        self.since_contact(id).is_some_and(|d| d <= self.contact_window)
    }

    /// Whether this manager has run for a contact window. Before that, a peer not heard from yet
    /// is unknown rather than unreachable: a manager just (re)started has not asked anyone.
    pub fn settled(&self) -> bool {
        self.started.elapsed() >= self.contact_window
    }

    /// How many of `voters` are reachable from here (this manager included).
    pub fn reachable_count(&self, voters: &[u64]) -> usize {
        voters.iter().filter(|v| self.reachable(**v)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_counts_as_reachable_only_after_contact_and_within_the_window() {
        let book = PeerBook::new(1, Duration::from_secs(60));
        assert_eq!(book.reachable_count(&[1, 2, 3]), 1, "only this manager before any contact");
        book.touch(2);
        assert_eq!(book.reachable_count(&[1, 2, 3]), 2);
        assert!(!book.settled(), "a manager just started does not judge yet");
        let strict = PeerBook::new(1, Duration::ZERO);
        assert!(strict.settled());
        strict.touch(2);
        std::thread::sleep(Duration::from_millis(2));
        assert!(!strict.reachable(2), "contact older than the window does not count");
    }

    #[test]
    fn own_address_is_never_recorded_and_changes_are_announced() {
        let book = PeerBook::new(1, Duration::from_secs(1));
        let rx = book.subscribe();
        book.set_addresses([(1, "me:1".to_string()), (2, "peer:2".to_string())]);
        assert_eq!(book.address(1), None);
        assert_eq!(book.address(2).as_deref(), Some("peer:2"));
        assert!(rx.has_changed().unwrap_or(false));
    }
}
