//! `Watch`: the tasks of a stack, then every change to them, until the client goes away.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
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
    /// Each task's view as last sent, encoded: a tenth of the decoded message's memory (a
    /// `shoal up` of 100,000 tasks held ≈100 MiB of views on the manager it watched through).
    sent: BTreeMap<TaskId, Box<[u8]>>,
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
                    let encoded = view.encode_to_vec().into_boxed_slice();
                    if self.sent.get(&id) != Some(&encoded) {
                        events.push(pb::WatchEvent { task: Some(view), snapshot_done: false });
                        self.sent.insert(id, encoded);
                    }
                }
                // Forgotten tasks are reported once more as removed, as last seen.
                None => {
                    let last = self.sent.remove(&id).and_then(|sent| pb::Task::decode(&*sent).ok());
                    if let Some(mut gone) = last {
                        gone.state = pb::TaskState::Removed as i32;
                        events.push(pb::WatchEvent { task: Some(gone), snapshot_done: false });
                    }
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{converge, state_with};
    use crate::store::command::{Command, StatusUpdate};
    use crate::store::state::TaskState;

    fn watched() -> Watched {
        Watched { stack: "p".into(), sent: BTreeMap::new(), cursor: None, services: Vec::new() }
    }

    fn ids(events: &[pb::WatchEvent]) -> Vec<(u64, i32)> {
        events.iter().filter_map(|e| e.task.as_ref()).map(|t| (t.id, t.state)).collect()
    }

    #[test]
    fn a_stream_sends_every_task_once_then_only_what_changed() {
        let mut state = state_with(&["a", "b"], &[("web", "image: x", 3)]);
        converge(&mut state, 0);
        let mut watch = watched();
        assert_eq!(watch.events(&state).len(), 3);
        assert!(watch.events(&state).is_empty(), "nothing changed");

        let task = state.tasks.values().next().expect("a task").clone();
        let node = task.node.clone().expect("placed");
        let report = |state: TaskState| StatusUpdate::new(task.id, node.clone(), state);
        state.apply(Command::ReportStatus { updates: vec![report(TaskState::Running)], at: 1 });
        assert_eq!(ids(&watch.events(&state)), vec![(task.id, pb::TaskState::Running as i32)]);

        state.apply(Command::ReportStatus { updates: vec![report(TaskState::Removed)], at: 2 });
        watch.events(&state);
        let state_before_forget = state.clone();
        state.apply(Command::ForgetTasks { tasks: vec![task.id] });
        let gone = watch.events(&state);
        assert_eq!(ids(&gone), vec![(task.id, pb::TaskState::Removed as i32)], "reported gone once");
        let last_seen = pb::Task {
            state: pb::TaskState::Removed as i32,
            ..task_view(&state_before_forget, &state_before_forget.tasks[&task.id])
        };
        assert_eq!(gone[0].task.as_ref(), Some(&last_seen), "as last seen, but removed");
        assert!(!last_seen.container_name.is_empty());
        assert!(watch.events(&state).is_empty());

        // A restored state (a new table): everything is compared again, nothing unchanged is sent.
        let restored: ClusterState =
            serde_json::from_slice(&serde_json::to_vec(&state).expect("encodes")).expect("decodes");
        assert!(watch.events(&restored).is_empty());
    }
}
