//! Followers hand client writes to the leader: encoded commands go over `Raft.Forward`, the
//! leader proposes them and answers once they are applied there.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use shoal_proto::v1 as pb;
use shoal_proto::v1::raft_client::RaftClient;
use tonic::transport::Channel;

use super::book::PeerBook;
use super::transport::endpoint;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("the leader (manager {0}) has no known address yet")]
    NoAddress(u64),
    #[error("cannot reach the leader (manager {leader} at {address}): {reason}")]
    Unreachable { leader: u64, address: String, reason: String },
    /// The leader answered with an error status (e.g. it is no longer the leader).
    #[error("{0}")]
    Refused(String),
}

impl ForwardError {
    /// Worth retrying against whoever leads next.
    pub fn retryable(&self) -> bool {
        !matches!(self, ForwardError::Refused(_))
    }
}

pub struct Forwarder {
    book: Arc<PeerBook>,
    clients: Mutex<HashMap<u64, (String, RaftClient<Channel>)>>,
}

impl Forwarder {
    pub fn new(book: Arc<PeerBook>) -> Self {
        Forwarder { book, clients: Mutex::default() }
    }

    pub fn book(&self) -> &Arc<PeerBook> {
        &self.book
    }

    /// A client for manager `id` (connections are made lazily and reused).
    pub fn client(&self, id: u64) -> Result<RaftClient<Channel>, ForwardError> {
        let address = self.book.address(id).ok_or(ForwardError::NoAddress(id))?;
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((known, client)) = clients.get(&id) {
            if *known == address {
                return Ok(client.clone());
            }
        }
        let channel = endpoint(&address)
            .map_err(|e| ForwardError::Unreachable { leader: id, address: address.clone(), reason: e.to_string() })?
            .connect_lazy();
        let client = RaftClient::new(channel).max_decoding_message_size(usize::MAX);
        clients.insert(id, (address, client.clone()));
        Ok(client)
    }

    fn failed(&self, leader: u64, status: tonic::Status) -> ForwardError {
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => {
                self.clients.lock().unwrap_or_else(PoisonError::into_inner).remove(&leader);
                ForwardError::Unreachable {
                    leader,
                    address: self.book.address(leader).unwrap_or_default(),
                    reason: status.message().to_string(),
                }
            }
            _ => ForwardError::Refused(status.message().to_string()),
        }
    }

    pub async fn forward(&self, leader: u64, commands: Vec<Vec<u8>>) -> Result<pb::ForwardResponse, ForwardError> {
        let mut client = self.client(leader)?;
        client
            .forward(pb::ForwardRequest { commands })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| self.failed(leader, s))
    }

    pub async fn join(&self, leader: u64, request: pb::JoinRequest) -> Result<pb::JoinResponse, ForwardError> {
        let mut client = self.client(leader)?;
        client.join(request).await.map(|r| r.into_inner()).map_err(|s| self.failed(leader, s))
    }
}
