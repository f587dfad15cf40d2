//! The task table: the cluster's tasks by id, plus a journal of which tasks changed.
//!
//! Readers that keep a derived view of the tasks (the dispatcher's per-node assignments, a
//! client's `watch` stream) would otherwise have to walk every task after every applied command
//! to find the few that changed — at 100,000 tasks and hundreds of commands a second, that walk
//! is what the managers spend their time on. With the journal they ask which tasks changed since
//! the revision they last saw and update only those.
//!
//! The journal is bookkeeping of this process, not replicated state: it is not serialized,
//! ignored by equality, and starts afresh (a new epoch) whenever a table is created or restored,
//! so a reader's cursor from before a restore is recognized as stale and the reader rebuilds.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::shared::SharedMap;
use super::state::{Task, TaskId};

/// Changes the journal keeps at least, whatever the table's size.
const JOURNAL_MIN: usize = 4096;

/// Where a reader got to: the journal's epoch and revision when it last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    epoch: u64,
    revision: u64,
}

/// What changed since a [`Cursor`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These tasks were inserted, changed or removed (each once; look them up to tell which).
    Tasks(HashSet<TaskId>),
    /// The journal no longer reaches back that far (or the table was replaced): start over from
    /// every task.
    Everything,
}

/// Tasks by id. Reads go through `Deref` to the map; every write names the task it changes, and
/// is journaled.
///
/// Each task is shared ([`SharedMap`]), so a copy of the table costs a map of pointers, not the
/// tasks: the leader's orchestration round and the snapshot thread work on such a copy, without
/// holding the state's lock that applying needs.
#[derive(Clone, Default)]
pub struct TaskTable {
    tasks: SharedMap<TaskId, Task>,
    journal: Journal,
}

#[derive(Clone)]
struct Journal {
    /// Tells tables apart: a cursor from another table (before a restore) is stale.
    epoch: u64,
    /// Bumped on every write.
    revision: u64,
    /// `(revision, task)` of recent writes, oldest first; trimmed to about twice the table's size.
    entries: VecDeque<(u64, TaskId)>,
}

fn next_epoch() -> u64 {
    static EPOCHS: AtomicU64 = AtomicU64::new(1);
    EPOCHS.fetch_add(1, Ordering::Relaxed)
}

impl Default for Journal {
    fn default() -> Self {
        Journal { epoch: next_epoch(), revision: 0, entries: VecDeque::new() }
    }
}

impl TaskTable {
    /// The tasks in id order. (Shadows the map's own, which yields the shared pointers.)
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &Task> + Clone + '_ {
        self.tasks.values()
    }

    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.tasks.get(id)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&TaskId, &Task)> + Clone + '_ {
        self.tasks.iter()
    }

    /// The task, for changing it.
    pub fn get_mut(&mut self, id: &TaskId) -> Option<&mut Task> {
        let len = self.tasks.len();
        let task = self.tasks.get_mut(id)?;
        Self::record(&mut self.journal, len, *id);
        Some(task)
    }

    pub fn insert(&mut self, id: TaskId, task: Task) -> Option<Arc<Task>> {
        let old = self.tasks.insert(id, task);
        let len = self.tasks.len();
        Self::record(&mut self.journal, len, id);
        old
    }

    pub fn remove(&mut self, id: &TaskId) -> Option<Arc<Task>> {
        let old = self.tasks.remove(id)?;
        let len = self.tasks.len();
        Self::record(&mut self.journal, len, *id);
        Some(old)
    }

    /// Where the table is now; pass it to [`TaskTable::changes_since`] later.
    pub fn cursor(&self) -> Cursor {
        Cursor { epoch: self.journal.epoch, revision: self.journal.revision }
    }

    /// Where in the journal the writes since `cursor` start; `None` when the journal cannot
    /// tell (another table's cursor, or it no longer reaches back that far).
    fn journal_since(&self, cursor: Cursor) -> Option<usize> {
        let journal = &self.journal;
        if cursor.epoch != journal.epoch || cursor.revision > journal.revision {
            return None;
        }
        if cursor.revision == journal.revision {
            return Some(journal.entries.len());
        }
        // The oldest kept entry must be the one right after the cursor, or nothing is missing.
        match journal.entries.front() {
            Some(&(oldest, _)) if oldest <= cursor.revision + 1 => {}
            _ => return None,
        }
        Some(journal.entries.partition_point(|&(revision, _)| revision <= cursor.revision))
    }

    /// How many writes since `cursor` (a task written twice counts twice), without listing
    /// them; `None` when [`TaskTable::changes_since`] would say [`Changes::Everything`].
    pub fn writes_since(&self, cursor: Cursor) -> Option<usize> {
        self.journal_since(cursor).map(|start| self.journal.entries.len() - start)
    }

    /// The tasks written since `cursor`.
    pub fn changes_since(&self, cursor: Cursor) -> Changes {
        match self.journal_since(cursor) {
            Some(start) => Changes::Tasks(self.journal.entries.range(start..).map(|&(_, id)| id).collect()),
            None => Changes::Everything,
        }
    }

    fn record(journal: &mut Journal, len: usize, id: TaskId) {
        journal.revision += 1;
        journal.entries.push_back((journal.revision, id));
        let keep = JOURNAL_MIN.max(len.saturating_mul(2));
        while journal.entries.len() > keep {
            journal.entries.pop_front();
        }
    }
}

impl Deref for TaskTable {
    type Target = BTreeMap<TaskId, Arc<Task>>;

    fn deref(&self) -> &Self::Target {
        &self.tasks
    }
}

impl FromIterator<(TaskId, Task)> for TaskTable {
    fn from_iter<I: IntoIterator<Item = (TaskId, Task)>>(iter: I) -> Self {
        TaskTable { tasks: iter.into_iter().collect(), journal: Journal::default() }
    }
}

/// Equal when the tasks are: the journal is this process's bookkeeping.
impl PartialEq for TaskTable {
    fn eq(&self, other: &Self) -> bool {
        self.tasks == other.tasks
    }
}

impl fmt::Debug for TaskTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.tasks.fmt(f)
    }
}

impl Serialize for TaskTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.tasks.serialize(s)
    }
}

impl<'de> Deserialize<'de> for TaskTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(TaskTable { tasks: SharedMap::deserialize(d)?, journal: Journal::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::ServiceId;

    fn task(id: TaskId) -> Task {
        Task::pending(id, ServiceId::new("s", "web"), id, String::new(), 1, 0)
    }

    fn ids(changes: Changes) -> Vec<TaskId> {
        match changes {
            Changes::Tasks(set) => {
                let mut ids: Vec<TaskId> = set.into_iter().collect();
                ids.sort();
                ids
            }
            Changes::Everything => panic!("expected a list of tasks, got everything"),
        }
    }

    #[test]
    fn inserts_changes_and_removals_since_a_cursor_are_listed_once_each() {
        let mut table = TaskTable::default();
        table.insert(1, task(1));
        table.insert(2, task(2));
        let cursor = table.cursor();
        assert_eq!(ids(table.changes_since(cursor)), Vec::<TaskId>::new());
        table.get_mut(&2).expect("task 2").message = "x".into();
        table.insert(3, task(3));
        table.remove(&1);
        table.get_mut(&2).expect("task 2").message = "y".into();
        assert!(table.get_mut(&9).is_none(), "a missing task is not a change");
        assert_eq!(ids(table.changes_since(cursor)), vec![1, 2, 3]);
        assert_eq!(table.writes_since(cursor), Some(4), "task 2 was written twice");
        assert_eq!(ids(table.changes_since(table.cursor())), Vec::<TaskId>::new());
    }

    #[test]
    fn a_cursor_the_journal_no_longer_reaches_or_from_another_table_means_everything() {
        let mut table = TaskTable::default();
        let start = table.cursor();
        for round in 0..(JOURNAL_MIN as u64 + 10) {
            table.insert(round % 3, task(round % 3));
        }
        assert_eq!(table.changes_since(start), Changes::Everything);
        assert_eq!(table.writes_since(start), None);
        let restored: TaskTable =
            serde_json::from_str(&serde_json::to_string(&table).expect("encodes")).expect("decodes");
        assert_eq!(restored, table, "the journal is not part of the table's value");
        assert_eq!(restored.changes_since(table.cursor()), Changes::Everything);
    }
}
