//! Raft messages to other managers over gRPC. Each peer gets one outbound task with a bounded
//! queue: the raft thread only enqueues (never blocks), and a full queue drops messages, which
//! raft retransmits. Ordinary messages flow over one long-lived client stream per peer; snapshots
//! go as single calls so that their delivery can be reported to raft. A second small task per
//! peer probes it, which keeps reachability and last-contact times current for `cluster status`
//! and for the fast "no quorum" answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::raft_client::RaftClient;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::book::PeerBook;
use crate::store::raft::{RaftHandle, Transport};

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
const PROBE_EVERY: Duration = Duration::from_millis(300);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

enum Outbound {
    Message(Vec<u8>),
    Snapshot(Vec<u8>),
}

/// The [`Transport`] a manager gives its raft driver.
pub struct GrpcTransport {
    book: Arc<PeerBook>,
    runtime: Handle,
    queues: Mutex<HashMap<u64, mpsc::Sender<Outbound>>>,
    raft: Arc<OnceLock<RaftHandle>>,
    shutdown: watch::Receiver<bool>,
}

impl GrpcTransport {
    /// Must be called inside the tokio runtime that will run the per-peer tasks.
    pub fn new(book: Arc<PeerBook>, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(GrpcTransport {
            book,
            runtime: Handle::current(),
            queues: Mutex::default(),
            raft: Arc::new(OnceLock::new()),
            shutdown,
        })
    }

    /// Gives the transport the driver it reports delivery failures to (once it is started).
    pub fn attach(&self, raft: RaftHandle) {
        let _ = self.raft.set(raft);
    }

    /// Starts probing `id` now, before raft has anything to tell it (a quiet follower).
    pub fn watch_peer(&self, id: u64) {
        let _ = self.queue(id);
    }

    fn queue(&self, to: u64) -> mpsc::Sender<Outbound> {
        let mut queues = self.queues.lock().unwrap_or_else(PoisonError::into_inner);
        queues
            .entry(to)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let peer = Peer { to, book: self.book.clone(), raft: self.raft.clone() };
                self.runtime.spawn(peer.clone().probe(self.shutdown.clone()));
                self.runtime.spawn(peer.send_loop(rx, self.shutdown.clone()));
                tx
            })
            .clone()
    }

    fn enqueue(&self, to: u64, message: Outbound) {
        if to == self.book.id() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue(to).try_send(message) {
            tracing::debug!(target: "shoal::raft", peer = to, "outbound queue full; message dropped (raft retransmits)");
        }
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        self.enqueue(to, Outbound::Message(message));
    }

    fn send_snapshot(&self, to: u64, message: Vec<u8>) {
        self.enqueue(to, Outbound::Snapshot(message));
    }
}

#[derive(Clone)]
struct Peer {
    to: u64,
    book: Arc<PeerBook>,
    raft: Arc<OnceLock<RaftHandle>>,
}

impl Peer {
    fn from(&self) -> u64 {
        self.book.id()
    }

    fn report_unreachable(&self) {
        if let Some(raft) = self.raft.get() {
            let _ = raft.report_unreachable(self.to);
        }
    }

    /// Waits until the peer's address is known; `None` when shutting down.
    async fn address(&self, shutdown: &mut watch::Receiver<bool>) -> Option<String> {
        let mut changes = self.book.subscribe();
        loop {
            if *shutdown.borrow() {
                return None;
            }
            if let Some(address) = self.book.address(self.to) {
                return Some(address);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn connect(&self, address: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let channel = endpoint(address)?.connect().await?;
        // Snapshots carry the whole state.
        Ok(RaftClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX))
    }

    async fn send_loop(self, mut queue: mpsc::Receiver<Outbound>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let Some(address) = self.address(&mut shutdown).await else { return };
            let client = match self.connect(&address).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::debug!(target: "shoal::raft", peer = self.to, %address, "cannot connect: {e}");
                    self.report_unreachable();
                    // Whatever waited is stale by the time the peer is back; raft resends.
                    while let Ok(message) = queue.try_recv() {
                        if let Outbound::Snapshot(_) = message {
                            self.report_snapshot(false);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            let (stream_tx, stream_rx) = mpsc::channel(QUEUE);
            let mut stream_client = client.clone();
            let mut call = tokio::spawn(async move { stream_client.stream(ReceiverStream::new(stream_rx)).await });
            loop {
                tokio::select! {
                    message = queue.recv() => match message {
                        None => return,
                        Some(Outbound::Message(message)) => {
                            let message = pb::RaftMessage { message, from: self.from() };
                            if stream_tx.send(message).await.is_err() {
                                break;
                            }
                        }
                        Some(Outbound::Snapshot(message)) => {
                            let message = pb::RaftMessage { message, from: self.from() };
                            let delivered = client.clone().step(message).await.is_ok();
                            self.report_snapshot(delivered);
                        }
                    },
                    ended = &mut call => {
                        if let Ok(Err(status)) = ended {
                            tracing::debug!(target: "shoal::raft", peer = self.to, "raft stream ended: {}", status.message());
                        }
                        break;
                    }
                    _ = shutdown.changed() => if *shutdown.borrow() { call.abort(); return },
                }
            }
            call.abort();
            self.report_unreachable();
        }
    }

    fn report_snapshot(&self, delivered: bool) {
        if let Some(raft) = self.raft.get() {
            let _ = raft.report_snapshot(self.to, delivered);
        }
    }

    /// Pings the peer every [`PROBE_EVERY`]; a successful answer counts as contact.
    async fn probe(self, mut shutdown: watch::Receiver<bool>) {
        let mut client: Option<(String, RaftClient<Channel>)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            let Some(address) = self.book.address(self.to) else { continue };
            if client.as_ref().is_none_or(|(a, _)| *a != address) {
                client = self.connect(&address).await.ok().map(|c| (address.clone(), c));
            }
            let Some((_, c)) = client.as_mut() else { continue };
            let ping = c.ping(pb::PingRequest { from: self.from() });
            match tokio::time::timeout(PROBE_EVERY * 3, ping).await {
                Ok(Ok(_)) => self.book.touch(self.to),
                _ => client = None,
            }
        }
    }
}

/// A gRPC endpoint for a manager address (`host:port` or a URL).
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}
