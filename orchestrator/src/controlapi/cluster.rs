//! Cluster administration over Control: status, join tokens, backups and manager membership.

use shoal_proto::v1 as pb;
use shoal_proto::v1::control_client::ControlClient;
use shoal_proto::v1::update_manager_request::Action;
use tonic::Status;

use super::status_of;
use crate::manager::Cluster;
use crate::store::command::Command;
use crate::store::raft::{ProposeError, RaftStatus, Role};
use crate::store::state::{ClusterState, ManagerInfo};

pub async fn status(cluster: &Cluster, stale: bool) -> Result<pb::ClusterStatusResponse, Status> {
    let counts = |s: &ClusterState| {
        let counts = (s.nodes.len() as u32, s.services.len() as u32, s.tasks.len() as u32, s.stacks.len() as u32);
        (counts, s.managers.clone(), s.settings.rebalance_on_join)
    };
    let ((nodes, services, tasks, stacks), known, rebalance_on_join) =
        cluster.read_consistent(stale, counts).await.map_err(status_of)?;
    let raft = cluster.raft().status();
    let mut ids: Vec<u64> = raft.membership.voters.iter().chain(&raft.membership.learners).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        ids.push(raft.id);
    }
    let managers = ids.iter().map(|id| manager_status(cluster, &raft, known.get(id), *id)).collect();
    Ok(pb::ClusterStatusResponse {
        leader: raft.leader.unwrap_or(0),
        term: raft.term,
        commit_index: raft.commit_index,
        applied_index: raft.applied_index,
        managers,
        nodes,
        services,
        tasks,
        answered_by: raft.id,
        stacks,
        snapshot_index: raft.snapshot_index,
        first_log_index: raft.first_index,
        last_log_index: raft.last_index,
        rebalance_on_join,
    })
}

fn manager_status(cluster: &Cluster, raft: &RaftStatus, info: Option<&ManagerInfo>, id: u64) -> pb::ManagerStatus {
    let voter = raft.membership.voters.contains(&id);
    let role = if raft.leader == Some(id) {
        "leader"
    } else if !voter {
        "learner"
    } else if id == raft.id && matches!(raft.role, Role::Candidate | Role::PreCandidate) {
        "candidate"
    } else {
        "follower"
    };
    let since = match cluster.peers() {
        Some(peers) => peers.book().since_contact(id),
        None => Some(std::time::Duration::ZERO),
    };
    let reachable = cluster.peers().is_none_or(|p| p.book().reachable(id));
    pb::ManagerStatus {
        id,
        address: info.map(|m| m.address.clone()).unwrap_or_default(),
        role: role.to_string(),
        reachable,
        last_contact_ms: since.map(|d| d.as_millis() as u64),
        name: info.map(|m| m.name.clone()).unwrap_or_default(),
        voter,
        matched_index: if id == raft.id && raft.is_leader() {
            Some(raft.last_index)
        } else {
            raft.progress.get(&id).map(|p| p.matched)
        },
    }
}

pub async fn join_token(cluster: &Cluster, role: &str) -> Result<pb::JoinTokenResponse, Status> {
    let (tokens, managers) = cluster
        .read_linearizable(|s| (s.tokens.clone(), s.managers.values().map(|m| m.address.clone()).collect::<Vec<_>>()))
        .await
        .map_err(status_of)?;
    let tokens = tokens.ok_or_else(|| {
        Status::failed_precondition(
            "this cluster has no join tokens: it is the embedded single-node cluster; run `shoal server` for a cluster others can join",
        )
    })?;
    let token = match role {
        "manager" => tokens.manager,
        "worker" => tokens.worker,
        other => return Err(Status::invalid_argument(format!("unknown role {other:?}: manager or worker"))),
    };
    Ok(pb::JoinTokenResponse { token, managers })
}

pub async fn backup(cluster: &Cluster) -> Result<pb::BackupResponse, Status> {
    // The barrier makes the copy include every write acknowledged before the request.
    cluster.read_linearizable(|_| ()).await.map_err(status_of)?;
    let state = cluster.snapshot_bytes();
    let applied_index = cluster.read(|s| s.applied_index);
    Ok(pb::BackupResponse { state, applied_index })
}

/// Finds a manager by name or raft id.
fn find<'a>(state: &'a ClusterState, node: &str) -> Option<&'a ManagerInfo> {
    state.managers.values().find(|m| m.name == node || m.id.to_string() == node)
}

pub async fn update_manager(cluster: &Cluster, request: pb::UpdateManagerRequest) -> Result<String, Status> {
    let raft = cluster.raft().status();
    if !raft.is_leader() {
        return forward_to_leader(cluster, &raft, request).await;
    }
    let found = cluster.read(|s| find(s, &request.node).cloned());
    let manager = found.ok_or_else(|| {
        Status::not_found(format!("no manager named {:?}; `shoal cluster status` lists them", request.node))
    })?;
    let voters = &raft.membership.voters;
    let is_voter = voters.contains(&manager.id);
    let action = Action::try_from(request.action).unwrap_or(Action::Unspecified);
    match action {
        Action::Promote => {
            if is_voter {
                return Ok(format!("{} is already a voting manager", manager.name));
            }
            let manager = ManagerInfo { voter: true, ..manager };
            let name = manager.name.clone();
            cluster.propose(Command::SetManager { manager }).await.map_err(status_of)?;
            Ok(format!("{name} will be promoted to a voting manager once it has caught up"))
        }
        Action::Demote => {
            if is_voter && voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "{} is the last voting manager: demoting it would leave the cluster without a control plane",
                    manager.name
                )));
            }
            if manager.id == raft.id {
                transfer_away(cluster, &raft).await?;
                return Err(Status::unavailable(format!(
                    "{} was the leader: leadership is being handed over; repeat the command",
                    manager.name
                )));
            }
            let name = manager.name.clone();
            cluster
                .propose(Command::SetManager { manager: ManagerInfo { voter: false, ..manager } })
                .await
                .map_err(status_of)?;
            Ok(format!("{name} is demoted: it keeps a copy of the state but no longer votes"))
        }
        Action::Remove => {
            let reachable = cluster.peers().is_some_and(|p| p.book().reachable(manager.id));
            if manager.id == raft.id || (reachable && !request.force) {
                return Err(Status::failed_precondition(format!(
                    "{} is running and reachable: stop it first, or pass --force to remove it anyway",
                    manager.name
                )));
            }
            if is_voter && voters.len() == 1 {
                return Err(Status::failed_precondition(format!("{} is the last voting manager", manager.name)));
            }
            cluster.raft().remove(manager.id).await.map_err(|e| status_of(e.into()))?;
            Ok(format!("manager {} ({}) removed from the cluster", manager.name, manager.id))
        }
        Action::Unspecified => Err(Status::invalid_argument("no action given: promote, demote or remove")),
    }
}

/// Hands leadership to the most up-to-date other voter (before the leader demotes itself).
async fn transfer_away(cluster: &Cluster, raft: &RaftStatus) -> Result<(), Status> {
    let target = raft
        .progress
        .iter()
        .filter(|(id, _)| **id != raft.id && raft.membership.voters.contains(id))
        .max_by_key(|(_, p)| p.matched)
        .map(|(id, _)| *id)
        .ok_or_else(|| Status::failed_precondition("no other voting manager to hand the leadership to"))?;
    cluster.raft().transfer_leader(target).map_err(|e| status_of(e.into()))
}

/// Membership changes are the leader's: hand the whole request over.
async fn forward_to_leader(
    cluster: &Cluster,
    raft: &RaftStatus,
    request: pb::UpdateManagerRequest,
) -> Result<String, Status> {
    let leader = raft.leader.ok_or_else(|| status_of(ProposeError::NotLeader { leader_hint: None }.into()))?;
    let address = cluster
        .read(|s| s.managers.get(&leader).map(|m| m.address.clone()))
        .ok_or_else(|| Status::unavailable(format!("the leader (manager {leader}) has no known address yet")))?;
    let endpoint = crate::manager::peers::transport::endpoint(&address)
        .map_err(|e| Status::unavailable(format!("cannot reach the leader at {address}: {e}")))?;
    let mut client = ControlClient::new(endpoint.connect_lazy());
    Ok(client.update_manager(request).await?.into_inner().message)
}
