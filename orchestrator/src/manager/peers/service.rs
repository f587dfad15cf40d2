//! The Raft gRPC service a manager serves to the others: raft messages in, liveness probes, joins
//! of new managers, and writes forwarded by followers.

use std::pin::Pin;

use futures_util::Stream;
use shoal_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::book::PeerBook;
use crate::manager::cluster::{Cluster, ClusterError};
use crate::manager::machine::encode;
use crate::store::raft::ProposeError;
use crate::store::state::ManagerInfo;

pub type Incoming = Pin<Box<dyn Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

#[derive(Clone)]
pub struct RaftService {
    cluster: Cluster,
    book: std::sync::Arc<PeerBook>,
}

impl RaftService {
    pub fn new(cluster: Cluster, book: std::sync::Arc<PeerBook>) -> Self {
        RaftService { cluster, book }
    }

    pub fn into_server(self) -> pb::raft_server::RaftServer<Self> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    fn step(&self, message: pb::RaftMessage) -> Result<(), Status> {
        self.book.touch(message.from);
        match self.cluster.raft().step(&message.message) {
            Ok(()) => Ok(()),
            Err(ProposeError::Invalid(e)) => Err(Status::invalid_argument(e)),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

/// A unique name and a fresh raft id for a joining manager, or why it cannot join.
pub fn admit(
    managers: &std::collections::BTreeMap<u64, ManagerInfo>,
    members: &crate::store::raft::Membership,
    name: &str,
    address: &str,
    random: u64,
) -> Result<ManagerInfo, Status> {
    if name.trim().is_empty() {
        return Err(Status::invalid_argument("the joining manager has no name"));
    }
    if address.trim().is_empty() {
        return Err(Status::invalid_argument("the joining manager gave no address to reach it at"));
    }
    if let Some(other) = managers.values().find(|m| m.name == name && m.address != address) {
        return Err(Status::already_exists(format!(
            "a manager named {name:?} already exists (at {}); give the new one another --name",
            other.address
        )));
    }
    // The same name and address again: a join whose answer was lost. Hand out the same id.
    if let Some(same) = managers.values().find(|m| m.name == name && m.address == address) {
        return Ok(same.clone());
    }
    let mut id = random.max(1);
    while members.contains(id) || managers.contains_key(&id) {
        id = id.wrapping_add(1).max(1);
    }
    Ok(ManagerInfo { id, name: name.to_string(), address: address.to_string(), voter: true })
}

fn status_of(error: ClusterError) -> Status {
    crate::controlapi::status_of(error)
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn stream(&self, request: Request<Streaming<pb::RaftMessage>>) -> Result<Response<pb::StepResponse>, Status> {
        let mut incoming = request.into_inner();
        while let Some(message) = incoming.message().await? {
            if let Err(status) = self.step(message) {
                if status.code() == tonic::Code::Unavailable {
                    return Err(status);
                }
                tracing::warn!(target: "shoal::raft", "dropped a raft message: {}", status.message());
            }
        }
        Ok(Response::new(pb::StepResponse {}))
    }

    async fn step(&self, request: Request<pb::RaftMessage>) -> Result<Response<pb::StepResponse>, Status> {
        RaftService::step(self, request.into_inner())?;
        Ok(Response::new(pb::StepResponse {}))
    }

    async fn ping(&self, request: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        self.book.touch(request.into_inner().from);
        let status = self.cluster.raft().status();
        Ok(Response::new(pb::PingResponse { id: status.id, term: status.term, leader: status.leader.unwrap_or(0) }))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinResponse>, Status> {
        let request = request.into_inner();
        let expected = self.cluster.read(|s| s.tokens.clone());
        match expected {
            Some(tokens) if super::token_matches(&request.token, &tokens.manager) => {}
            Some(tokens) if super::token_matches(&request.token, &tokens.worker) => {
                return Err(Status::permission_denied(
                    "that is the worker token: managers join with the manager token (`shoal cluster join-token manager`)",
                ))
            }
            Some(_) => return Err(Status::unauthenticated("invalid join token")),
            None => return Err(Status::unavailable("the cluster has no join tokens yet; retry shortly")),
        }
        let status = self.cluster.raft().status();
        if !status.is_leader() {
            return self.cluster.forward_join(request).await.map(Response::new).map_err(status_of);
        }
        let info = self
            .cluster
            .read(|s| admit(&s.managers, &status.membership, &request.name, &request.address, rand_id()))?;
        if !status.membership.contains(info.id) {
            self.cluster.raft().add_learner(info.id, encode(&info)).await.map_err(|e| status_of(e.into()))?;
            tracing::info!(target: "shoal::raft", id = info.id, name = %info.name, address = %info.address, "a manager joined as a learner");
        }
        let peers = self.cluster.read(|s| {
            s.managers.values().map(|m| pb::Peer { id: m.id, address: m.address.clone() }).collect::<Vec<_>>()
        });
        Ok(Response::new(pb::JoinResponse { id: info.id, peers }))
    }

    async fn forward(&self, request: Request<pb::ForwardRequest>) -> Result<Response<pb::ForwardResponse>, Status> {
        let raft = self.cluster.raft();
        let status = raft.status();
        if !status.is_leader() {
            return Err(Status::unavailable(ProposeError::NotLeader { leader_hint: status.leader }.to_string()));
        }
        let outcomes = raft.propose_batch(request.into_inner().commands).await;
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(response) => pb::ForwardResult {
                    outcome: Some(pb::forward_result::Outcome::Response(response)),
                    retryable: false,
                },
                Err(e) => pb::ForwardResult {
                    retryable: matches!(e, ProposeError::NotLeader { .. } | ProposeError::LeadershipLost),
                    outcome: Some(pb::forward_result::Outcome::Error(e.to_string())),
                },
            })
            .collect();
        Ok(Response::new(pb::ForwardResponse { results, applied_index: raft.status().applied_index }))
    }
}

/// A random non-zero id (the clock's nanoseconds mixed; unique enough, and checked against the
/// current members anyway).
pub fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    // Ids show up in `cluster status`: keep them short enough to read.
    (hasher.finish() & 0xffff_ffff).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::raft::Membership;

    fn manager(id: u64, name: &str, address: &str) -> ManagerInfo {
        ManagerInfo { id, name: name.into(), address: address.into(), voter: true }
    }

    #[test]
    fn a_new_manager_gets_a_fresh_id_and_a_taken_name_is_refused() {
        let managers = BTreeMap::from([(7, manager(7, "m1", "a:1"))]);
        let members = Membership { voters: vec![7], ..Membership::default() };
        let joined = admit(&managers, &members, "m2", "b:2", 7).expect("admitted");
        assert_ne!(joined.id, 7, "an id in use is never handed out again");
        let refused = admit(&managers, &members, "m1", "c:3", 9).expect_err("name taken");
        assert_eq!(refused.code(), tonic::Code::AlreadyExists);
        assert!(refused.message().contains("--name"), "{}", refused.message());
        let again = admit(&managers, &members, "m1", "a:1", 9).expect("a repeated join");
        assert_eq!(again.id, 7);
    }
}
