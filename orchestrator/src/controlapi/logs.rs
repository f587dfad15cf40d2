//! `Logs`: container output comes from the agents that run the containers. The tasks of the
//! stack are grouped by node, each node's agent is asked for its share, and the streams are
//! merged as chunks arrive.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::BoxStream;
use crate::manager::Cluster;
use crate::store::state::{DesiredState, NodeId, TaskId};

pub async fn logs(cluster: &Cluster, request: pb::LogsRequest) -> Result<BoxStream<pb::LogChunk>, Status> {
    let by_node: BTreeMap<NodeId, (String, Vec<TaskId>)> = cluster.read(|state| {
        let mut by_node: BTreeMap<NodeId, (String, Vec<TaskId>)> = BTreeMap::new();
        for task in state.tasks.values() {
            let wanted = task.service.stack == request.stack
                && (request.services.is_empty() || request.services.contains(&task.service.service))
                && task.desired == DesiredState::Running
                && task.container_id.is_some();
            let (true, Some(node)) = (wanted, task.node.as_ref()) else { continue };
            let address = state.nodes.get(node).and_then(|n| n.address.clone()).unwrap_or_default();
            by_node.entry(node.clone()).or_insert_with(|| (address, Vec::new())).1.push(task.id);
        }
        by_node
    });
    let (tx, rx) = mpsc::channel(256);
    for (node, (address, tasks)) in by_node {
        let tx = tx.clone();
        let agent_request =
            pb::AgentLogsRequest { tasks, follow: request.follow, tail: request.tail, timestamps: request.timestamps };
        tokio::spawn(async move {
            if let Err(status) = forward(&address, agent_request, &tx).await {
                let message = format!("cannot read logs from node {node} at {address}: {}", status.message());
                let _ = tx.send(Err(Status::unavailable(message))).await;
            }
        });
    }
    Ok(Box::pin(ReceiverStream::new(rx)))
}

async fn forward(
    address: &str,
    request: pb::AgentLogsRequest,
    tx: &mpsc::Sender<Result<pb::LogChunk, Status>>,
) -> Result<(), Status> {
    if address.is_empty() {
        return Err(Status::unavailable("the node advertises no address"));
    }
    let endpoint = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let mut client =
        pb::agent_client::AgentClient::connect(endpoint).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let mut stream = client.logs(request).await?.into_inner();
    while let Some(chunk) = stream.next().await {
        if tx.send(chunk).await.is_err() {
            return Ok(()); // the client went away
        }
    }
    Ok(())
}
