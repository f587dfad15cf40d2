//! Node administration over Control: availability and operator labels (`shoal node update`).

use std::collections::BTreeMap;

use shoal_proto::v1 as pb;
use tonic::Status;

use super::status_of;
use crate::manager::Cluster;
use crate::store::command::Command;
use crate::store::state::{Availability, ClusterState, NodeId};
use crate::wire;

/// A node by id, or by hostname when exactly one node has it.
pub fn find_node(state: &ClusterState, name: &str) -> Result<NodeId, Status> {
    if state.nodes.contains_key(name) {
        return Ok(name.to_string());
    }
    let by_host: Vec<&str> = state.nodes.values().filter(|n| n.hostname == name).map(|n| n.id.as_str()).collect();
    match by_host.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(Status::not_found(format!("no node named {name:?}; `shoal node ls` lists them"))),
        many => Err(Status::failed_precondition(format!(
            "{} nodes have the hostname {name:?} ({}): name one by its id",
            many.len(),
            many.join(", ")
        ))),
    }
}

pub fn parse_availability(text: &str) -> Result<Availability, Status> {
    match text {
        "active" => Ok(Availability::Active),
        "pause" => Ok(Availability::Pause),
        "drain" => Ok(Availability::Drain),
        other => Err(Status::invalid_argument(format!("invalid availability {other:?}: active, pause or drain"))),
    }
}

/// Validates the label changes: non-empty keys, none both added and removed.
fn check_labels(add: &BTreeMap<String, String>, remove: &[String]) -> Result<(), Status> {
    if let Some(key) = add.keys().chain(remove).find(|k| k.trim().is_empty() || k.trim() != k.as_str()) {
        return Err(Status::invalid_argument(format!("invalid label key {key:?}")));
    }
    if let Some(key) = remove.iter().find(|k| add.contains_key(*k)) {
        return Err(Status::invalid_argument(format!("label {key:?} is both added and removed")));
    }
    Ok(())
}

pub async fn update_node(cluster: &Cluster, request: pb::UpdateNodeRequest) -> Result<pb::Node, Status> {
    let availability =
        if request.availability.is_empty() { None } else { Some(parse_availability(&request.availability)?) };
    let add: BTreeMap<String, String> = request.label_add.into_iter().collect();
    let remove = request.label_rm;
    check_labels(&add, &remove)?;
    let node = cluster.read_linearizable(|s| find_node(s, &request.node)).await.map_err(status_of)??;
    let at = crate::manager::cluster::now();
    let mut commands = Vec::new();
    if let Some(availability) = availability {
        commands.push(Command::SetNodeAvailability { node: node.clone(), availability, at });
    }
    if !add.is_empty() || !remove.is_empty() {
        commands.push(Command::UpdateNodeLabels { node: node.clone(), add, remove, at });
    }
    for result in cluster.propose_all(commands).await.map_err(status_of)? {
        if let Some(error) = result.error {
            return Err(Status::failed_precondition(error));
        }
    }
    cluster
        .read(|s| s.nodes.get(&node).map(|n| wire::node(s, n)))
        .ok_or_else(|| Status::not_found(format!("node {node} is gone")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_are_checked() {
        let add = BTreeMap::from([("zone".to_string(), "east".to_string())]);
        assert!(check_labels(&add, &["disk".into()]).is_ok());
        assert!(check_labels(&add, &["zone".into()]).is_err(), "added and removed");
        assert!(check_labels(&BTreeMap::new(), &[" ".into()]).is_err(), "empty key");
        assert!(parse_availability("drain").is_ok());
        assert!(parse_availability("paused").is_err());
    }
}
