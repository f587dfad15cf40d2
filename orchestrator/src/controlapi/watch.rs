//! `Watch`: the tasks of a stack, then every change to them, until the client goes away.

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{task_view, BoxStream};
use crate::manager::Cluster;
use crate::store::state::{ClusterState, ServiceId, TaskId};
use crate::store::tasks::{Changes, Cursor};

pub fn watch(cluster: Cluster, stack: String) -> BoxStream<pb::WatchEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut changes = cluster.subscribe();
        let mut watched = Watched { stack, sent: BTreeMap::new(), cursor: None, services: Vec::new() };
        let mut first = true;
        loop {
            let mut events = cluster.read(|state| watched.events(state));
            if first {
                events.push(pb::WatchEvent { task: None, snapshot_done: true });
                first = false;
            }
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return; // the client went away
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// One stream's stack and what it has sent of it.
struct Watched {
    stack: String,
    sent: BTreeMap<TaskId, pb::Task>,
    /// Where the task journal was when the stream last looked.
    cursor: Option<Cursor>,
    /// The stack's services and versions then (a task's view includes its service's names).
    services: Vec<(ServiceId, u64)>,
}

impl Watched {
    /// Events for the stack's tasks that changed since the last call: only the tasks the journal
    /// names, unless the stack's services changed or the journal does not reach back.
    fn events(&mut self, state: &ClusterState) -> Vec<pb::WatchEvent> {
        let services: Vec<(ServiceId, u64)> =
            state.stack_services(&self.stack).map(|s| (s.id.clone(), s.version)).collect();
        let changes = match self.cursor {
            Some(cursor) if services == self.services => state.tasks.changes_since(cursor),
            _ => Changes::Everything,
        };
        self.cursor = Some(state.tasks.cursor());
        self.services = services;
        let ids: BTreeSet<TaskId> = match changes {
            Changes::Tasks(ids) => ids.into_iter().collect(),
            Changes::Everything => state
                .tasks
                .values()
                .filter(|t| t.service.stack == self.stack)
                .map(|t| t.id)
                .chain(self.sent.keys().copied())
                .collect(),
        };
        let mut events = Vec::new();
        for id in ids {
            match state.tasks.get(&id).filter(|t| t.service.stack == self.stack) {
                Some(task) => {
                    let view = task_view(state, task);
                    if self.sent.get(&id) != Some(&view) {
                        events.push(pb::WatchEvent { task: Some(view.clone()), snapshot_done: false });
                        self.sent.insert(id, view);
                    }
                }
                // Forgotten tasks are reported once more as removed.
                None => {
                    if let Some(mut gone) = self.sent.remove(&id) {
                        gone.state = pb::TaskState::Removed as i32;
                        events.push(pb::WatchEvent { task: Some(gone), snapshot_done: false });
                    }
                }
            }
        }
        events
    }
}
