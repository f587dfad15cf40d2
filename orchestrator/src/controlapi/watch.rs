//! `Watch`: the tasks of a stack, then every change to them, until the client goes away.

use std::collections::BTreeMap;

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{task_view, BoxStream};
use crate::manager::Cluster;
use crate::store::state::TaskId;

pub fn watch(cluster: Cluster, stack: String) -> BoxStream<pb::WatchEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut changes = cluster.subscribe();
        let mut sent: BTreeMap<TaskId, pb::Task> = BTreeMap::new();
        let mut first = true;
        loop {
            let current: BTreeMap<TaskId, pb::Task> = cluster.read(|state| {
                state.tasks.values().filter(|t| t.service.stack == stack).map(|t| (t.id, task_view(state, t))).collect()
            });
            let mut events: Vec<pb::WatchEvent> = current
                .iter()
                .filter(|(id, task)| sent.get(id) != Some(task))
                .map(|(_, task)| pb::WatchEvent { task: Some(task.clone()), snapshot_done: false })
                .collect();
            // Forgotten tasks are reported once more as removed.
            for (id, task) in &sent {
                if !current.contains_key(id) {
                    let mut gone = task.clone();
                    gone.state = pb::TaskState::Removed as i32;
                    events.push(pb::WatchEvent { task: Some(gone), snapshot_done: false });
                }
            }
            if first {
                events.push(pb::WatchEvent { task: None, snapshot_done: true });
                first = false;
            }
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            sent = current;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
