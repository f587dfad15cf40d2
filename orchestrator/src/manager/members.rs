//! Keeps the raft membership in line with what operators asked for, on the leader: a joined
//! manager is promoted from learner to voter once it has caught up, a demoted one becomes a
//! learner, the leader's own entry (name, address) is registered, and managers that left the
//! group are forgotten. [`plan`] decides (a pure function); [`run`] carries it out, one membership
//! change at a time (raft refuses overlapping ones).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use super::cluster::Cluster;
use crate::store::command::Command;
use crate::store::raft::RaftStatus;
use crate::store::state::ManagerInfo;

/// How often the leader looks (besides every applied change).
const EVERY: Duration = Duration::from_millis(200);
/// A learner this close to the commit index counts as caught up.
const CATCH_UP_SLACK: u64 = 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberAction {
    Register(ManagerInfo),
    Forget(Vec<u64>),
    Promote(u64),
    Demote(u64),
}

/// What the leader should do next. `own` is this manager as it runs (its `voter` is ignored:
/// the replicated entry's wish wins). `state_applied` is the index the `managers` list reflects:
/// a status older than that may not show a member the list already has.
pub fn plan(
    status: &RaftStatus,
    managers: &BTreeMap<u64, ManagerInfo>,
    state_applied: u64,
    own: &ManagerInfo,
) -> Vec<MemberAction> {
    if !status.is_leader() {
        return Vec::new();
    }
    let mut actions = Vec::new();
    match managers.get(&own.id) {
        Some(known) if known.name == own.name && known.address == own.address => {}
        known => {
            let voter = known.is_none_or(|k| k.voter);
            actions.push(MemberAction::Register(ManagerInfo { voter, ..own.clone() }));
        }
    }
    let membership = &status.membership;
    let gone: Vec<u64> = managers.keys().copied().filter(|id| !membership.contains(*id)).collect();
    if !gone.is_empty() && status.applied_index >= state_applied {
        actions.push(MemberAction::Forget(gone));
    }
    if membership.is_joint() {
        return actions;
    }
    let caught_up =
        |id: u64| status.progress.get(&id).is_some_and(|p| p.matched + CATCH_UP_SLACK >= status.commit_index);
    let promote =
        membership.learners.iter().copied().find(|id| managers.get(id).is_some_and(|m| m.voter) && caught_up(*id));
    if let Some(id) = promote {
        actions.push(MemberAction::Promote(id));
        return actions;
    }
    let demote = membership
        .voters
        .iter()
        .copied()
        .find(|id| *id != own.id && managers.get(id).is_some_and(|m| !m.voter) && membership.voters.len() > 1);
    if let Some(id) = demote {
        actions.push(MemberAction::Demote(id));
    }
    actions
}

/// Runs on every manager; acts only while it leads.
pub async fn run(cluster: Cluster, own: ManagerInfo, mut shutdown: watch::Receiver<bool>) {
    let mut changes = cluster.subscribe();
    let mut status = cluster.raft().status_watch();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = changes.changed() => {}
            _ = status.changed() => {}
            _ = tokio::time::sleep(EVERY) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let raft = cluster.raft().status();
        let actions = cluster.read(|s| plan(&raft, &s.managers, s.applied_index, &own));
        for action in actions {
            if let Err(e) = carry_out(&cluster, action.clone()).await {
                tracing::debug!("membership step {action:?} not done: {e}");
                break;
            }
        }
    }
}

async fn carry_out(cluster: &Cluster, action: MemberAction) -> Result<(), String> {
    let raft = cluster.raft();
    match action {
        MemberAction::Register(manager) => {
            cluster.propose(Command::SetManager { manager }).await.map(drop).map_err(|e| e.to_string())
        }
        MemberAction::Forget(ids) => {
            cluster.propose(Command::ForgetManagers { ids }).await.map(drop).map_err(|e| e.to_string())
        }
        MemberAction::Promote(id) => {
            raft.promote(id).await.map_err(|e| e.to_string())?;
            tracing::info!(id, "manager promoted to voter");
            Ok(())
        }
        MemberAction::Demote(id) => {
            raft.add_learner(id, Vec::new()).await.map_err(|e| e.to_string())?;
            tracing::info!(id, "manager demoted to learner");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::raft::{Membership, PeerProgress, Role};

    fn manager(id: u64, voter: bool) -> ManagerInfo {
        ManagerInfo { id, name: format!("m{id}"), address: format!("a:{id}"), voter }
    }

    fn leader(voters: &[u64], learners: &[u64], matched: &[(u64, u64)], commit: u64) -> RaftStatus {
        RaftStatus {
            id: 1,
            role: Role::Leader,
            leader: Some(1),
            commit_index: commit,
            membership: Membership { voters: voters.to_vec(), learners: learners.to_vec(), ..Membership::default() },
            progress: matched
                .iter()
                .map(|(id, m)| {
                    (
                        *id,
                        PeerProgress { matched: *m, next_index: m + 1, state: "Replicate".into(), recent_active: true },
                    )
                })
                .collect(),
            running: true,
            ..RaftStatus::default()
        }
    }

    fn known(list: &[ManagerInfo]) -> BTreeMap<u64, ManagerInfo> {
        list.iter().map(|m| (m.id, m.clone())).collect()
    }

    #[test]
    fn followers_do_nothing() {
        let mut status = leader(&[1], &[], &[], 5);
        status.role = Role::Follower;
        assert!(plan(&status, &BTreeMap::new(), 0, &manager(1, true)).is_empty());
    }

    #[test]
    fn the_leader_registers_itself_first() {
        let status = leader(&[1], &[], &[], 5);
        assert_eq!(
            plan(&status, &BTreeMap::new(), 0, &manager(1, true)),
            vec![MemberAction::Register(manager(1, true))]
        );
        assert!(plan(&status, &known(&[manager(1, true)]), 0, &manager(1, true)).is_empty());
    }

    #[test]
    fn a_learner_is_promoted_only_once_caught_up() {
        let managers = known(&[manager(1, true), manager(2, true)]);
        let behind = leader(&[1], &[2], &[(2, 100)], 1000);
        assert!(plan(&behind, &managers, 0, &manager(1, true)).is_empty());
        let caught_up = leader(&[1], &[2], &[(2, 995)], 1000);
        assert_eq!(plan(&caught_up, &managers, 0, &manager(1, true)), vec![MemberAction::Promote(2)]);
    }

    #[test]
    fn a_demoted_voter_becomes_a_learner_but_never_the_leader_itself() {
        let managers = known(&[manager(1, false), manager(2, false), manager(3, true)]);
        let status = leader(&[1, 2, 3], &[], &[(2, 10), (3, 10)], 10);
        assert_eq!(plan(&status, &managers, 0, &manager(1, true)), vec![MemberAction::Demote(2)]);
    }

    #[test]
    fn managers_that_left_the_group_are_forgotten() {
        let managers = known(&[manager(1, true), manager(2, true), manager(3, true)]);
        let mut status = leader(&[1, 3], &[], &[(3, 10)], 10);
        status.applied_index = 10;
        assert_eq!(plan(&status, &managers, 10, &manager(1, true)), vec![MemberAction::Forget(vec![2])]);
        // The list is newer than the status: the member may just have been added.
        assert!(plan(&status, &managers, 11, &manager(1, true)).is_empty());
    }
}
