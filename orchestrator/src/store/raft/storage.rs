//! Durable raft log in redb, implementing raft-rs's [`Storage`] trait.
//!
//! Layout of `raft.redb` (one file under the state dir):
//! - table `raft_entries`: log index (u64) → protobuf-encoded `Entry`, for every index in
//!   `(truncated_index, last_index]`;
//! - table `raft_meta`: `hard_state`, `snapshot` (protobuf `Snapshot`: metadata with the conf state
//!   at its index; the state machine's serialized state is in the snapshot file of that index,
//!   see [`super::snapfile`] — state dirs written before kept it here, and are still read),
//!   `truncated` (index and term of the last compacted entry, 16 bytes big-endian), `node_id` (8
//!   bytes) and `format` (8 bytes).
//!
//! The hard state, the latest snapshot's metadata, every live entry's term and size, and the
//! newest entries up to [`MIRROR_BYTES`] are also kept in memory, so the `Storage` trait methods
//! that raft-rs calls while stepping touch the disk only to read entries older than that (for a
//! follower that lags far behind, or entries applied long after they were written); the
//! explicit write methods below each write one redb transaction committed with
//! `Durability::Immediate` (fsync) before it returns. The log itself stays bounded because the
//! driver compacts it every `snapshot_every` applied entries or `snapshot_bytes` of payload; the
//! mirror's bound keeps the memory far below that (at 100,000 tasks the log between two
//! snapshots held ≈100 MiB, all of it in memory before).
//!
//! The conf state is only persisted as part of a snapshot: on restart raft-rs starts from the
//! snapshot's conf state with `applied = snapshot index`, and the conf changes committed after it
//! are re-applied from the log, exactly like ordinary commands.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError as RaftStorageError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{snapfile, StoreError};

/// redb's page cache (see `open`).
const CACHE_BYTES: usize = 32 << 20;
/// Payload bytes of the newest log entries kept in memory (see the module docs). Raft reads the
/// entries it sends to followers and the ones it applies soon after they were written, so a few
/// megabytes serve nearly every read.
const MIRROR_BYTES: u64 = 8 << 20;
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_HARD_STATE: &str = "hard_state";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_TRUNCATED: &str = "truncated";
const KEY_NODE_ID: &str = "node_id";
const KEY_FORMAT: &str = "format";
const FORMAT_VERSION: u64 = 1;

/// Name of the database file under the state dir.
pub const DB_FILE: &str = "raft.redb";

/// redb-backed raft storage with an in-memory mirror of the live log (see the module docs).
pub(crate) struct RedbStorage {
    db: Database,
    path: PathBuf,
    /// The state dir (where the snapshot files are).
    dir: PathBuf,
    hard_state: HardState,
    /// Latest snapshot: its metadata, and its data only until the driver has restored it at
    /// startup (see [`RedbStorage::forget_snapshot_data`]); when the data is needed later (to send
    /// it to a member) it is read back from the database. Index 0 means "none yet" (a node waiting to join).
    snapshot: Snapshot,
    /// The latest snapshot with its data once read back to be sent, so that sending it to
    /// several members (or again) shares one copy; dropped when a newer snapshot replaces it.
    loaded: std::sync::Mutex<Option<Snapshot>>,
    truncated_index: u64,
    truncated_term: u64,
    /// Every live entry's term and size: `log[i]` is entry `truncated_index + 1 + i`.
    log: Vec<EntryMeta>,
    /// Payload bytes of the live log (see [`entry_bytes`]): snapshots are also taken by size.
    entries_bytes: u64,
    /// The newest entries (a suffix of the log), within `mirror_bytes` of payload.
    tail: VecDeque<Entry>,
    tail_bytes: u64,
    mirror_bytes: u64,
    /// Set when raft asked for a snapshot newer than the stored one; the driver then takes one.
    snapshot_wanted: std::sync::atomic::AtomicBool,
}

/// What is kept in memory of every live log entry: raft asks for the term of any of them, and
/// snapshots and retention count their bytes.
#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    term: u64,
    bytes: u64,
}

impl EntryMeta {
    fn of(entry: &Entry) -> Self {
        EntryMeta { term: entry.term, bytes: entry_bytes(entry) }
    }
}

/// Raft's size limit for one message, applied while reading entries (as raft's `limit_size`
/// would after): the first entry always, then as many as fit. A lagging follower must not make us
/// copy or read the whole log per message.
struct SizeLimit {
    max: u64,
    size: u64,
    taken: usize,
}

impl SizeLimit {
    fn new(max: Option<u64>) -> Self {
        SizeLimit { max: max.filter(|&m| m != raft::NO_LIMIT).unwrap_or(u64::MAX), size: 0, taken: 0 }
    }

    fn admits(&mut self, entry: &Entry) -> bool {
        self.size = self.size.saturating_add(u64::from(protobuf::Message::compute_size(entry)));
        self.taken += 1;
        self.taken == 1 || self.size <= self.max
    }
}

/// What `open` found on disk.
pub(crate) enum Opened {
    /// No raft state yet (new state dir or a node waiting to join).
    Empty(RedbStorage),
    /// Existing state: recover from it.
    Existing(RedbStorage),
}

/// An entry's payload size, as counted for snapshots and log retention.
fn entry_bytes(entry: &Entry) -> u64 {
    (entry.data.len() + entry.context.len()) as u64
}

/// A snapshot's metadata without its data.
fn metadata_only(snapshot: &Snapshot) -> Snapshot {
    let mut meta = Snapshot::default();
    meta.set_metadata(snapshot.get_metadata().clone());
    meta
}

/// A log entry read back must be the one its key names, with no gap before it.
fn check_index(expected: u64, key: u64, entry: &Entry) -> Result<(), StoreError> {
    if key != expected || entry.index != expected {
        return Err(StoreError::Corrupt(format!(
            "raft log has a gap: expected entry {expected}, found key {key} holding entry {}",
            entry.index
        )));
    }
    Ok(())
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db { path: path.to_path_buf(), source: Box::new(e.into()) }
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("cannot decode {what}: {e}")))
}

fn encode<M: protobuf::Message>(what: &str, m: &M) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes().map_err(|e| StoreError::Corrupt(format!("cannot encode {what}: {e}")))
}

fn u64_pair(bytes: &[u8]) -> Result<(u64, u64), StoreError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt("bad `truncated` record".into()))?;
    let (a, b) = arr.split_at(8);
    let a: [u8; 8] = a.try_into().map_err(|_| StoreError::Corrupt("bad `truncated` record".into()))?;
    let b: [u8; 8] = b.try_into().map_err(|_| StoreError::Corrupt("bad `truncated` record".into()))?;
    Ok((u64::from_be_bytes(a), u64::from_be_bytes(b)))
}

fn pair_bytes(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn u64_value(what: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt(format!("bad `{what}` record")))?;
    Ok(u64::from_be_bytes(arr))
}

impl RedbStorage {
    /// Opens (creating if needed) `state_dir/raft.redb` and loads it into memory.
    pub(crate) fn open(state_dir: &Path, node_id: u64) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StoreError::StateDir { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join(DB_FILE);
        // redb's default cache may grow to 1 GiB; the newest entries are kept in memory (the
        // log's tail), older ones are read back rarely (a lagging follower), and the snapshot
        // lives in a file of its own.
        let db = match Database::builder().set_cache_size(CACHE_BYTES).create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked { path }),
            Err(e) => return Err(db_err(&path, e)),
        };

        // Make sure both tables exist so that read transactions can open them.
        {
            let txn = db.begin_write().map_err(|e| db_err(&path, e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| db_err(&path, e))?;
                txn.open_table(ENTRIES).map_err(|e| db_err(&path, e))?;
                let format = meta.get(KEY_FORMAT).map_err(|e| db_err(&path, e))?.map(|v| v.value().to_vec());
                match format {
                    None => {
                        meta.insert(KEY_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice())
                            .map_err(|e| db_err(&path, e))?;
                    }
                    Some(v) if u64_value(KEY_FORMAT, &v)? == FORMAT_VERSION => {}
                    Some(v) => {
                        return Err(StoreError::Corrupt(format!(
                            "{} has storage format {}, this build reads format {FORMAT_VERSION}",
                            path.display(),
                            u64_value(KEY_FORMAT, &v)?
                        )))
                    }
                }
                let stored_id = meta.get(KEY_NODE_ID).map_err(|e| db_err(&path, e))?.map(|v| v.value().to_vec());
                match stored_id {
                    None => {
                        meta.insert(KEY_NODE_ID, node_id.to_be_bytes().as_slice()).map_err(|e| db_err(&path, e))?;
                    }
                    Some(v) => {
                        let found = u64_value(KEY_NODE_ID, &v)?;
                        if found != node_id {
                            return Err(StoreError::IdMismatch { path, found, expected: node_id });
                        }
                    }
                }
            }
            txn.commit().map_err(|e| db_err(&path, e))?;
        }

        let txn = db.begin_read().map_err(|e| db_err(&path, e))?;
        let meta = txn.open_table(META).map_err(|e| db_err(&path, e))?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            Ok(meta.get(key).map_err(|e| db_err(&path, e))?.map(|v| v.value().to_vec()))
        };
        let hard_state: HardState = match get(KEY_HARD_STATE)? {
            Some(b) => decode("hard state", &b)?,
            None => HardState::default(),
        };
        let snapshot: Snapshot = match get(KEY_SNAPSHOT)? {
            Some(b) => decode("snapshot", &b)?,
            None => Snapshot::default(),
        };
        let (truncated_index, truncated_term) = match get(KEY_TRUNCATED)? {
            Some(b) => u64_pair(&b)?,
            None => (0, 0),
        };
        let table = txn.open_table(ENTRIES).map_err(|e| db_err(&path, e))?;
        let mut entries = Vec::new();
        for item in table.range((truncated_index + 1)..).map_err(|e| db_err(&path, e))? {
            let (k, v) = item.map_err(|e| db_err(&path, e))?;
            let entry: Entry = decode("log entry", v.value())?;
            let expected = truncated_index + 1 + entries.len() as u64;
            check_index(expected, k.value(), &entry)?;
            entries.push(entry);
        }
        drop(table);
        drop(meta);
        drop(txn);

        let snap_index = snapshot.get_metadata().index;
        if snap_index < truncated_index {
            return Err(StoreError::Corrupt(format!(
                "snapshot at {snap_index} is older than the compacted log (truncated at {truncated_index})"
            )));
        }
        snapfile::remove_all_but(state_dir, snap_index);
        let mut storage = RedbStorage {
            db,
            path,
            dir: state_dir.to_path_buf(),
            hard_state,
            snapshot,
            truncated_index,
            truncated_term,
            loaded: std::sync::Mutex::new(None),
            log: Vec::new(),
            entries_bytes: 0,
            tail: VecDeque::new(),
            tail_bytes: 0,
            mirror_bytes: MIRROR_BYTES,
            snapshot_wanted: std::sync::atomic::AtomicBool::new(false),
        };
        storage.append(entries);
        if snap_index == 0 && storage.log.is_empty() && storage.hard_state == HardState::default() {
            Ok(Opened::Empty(storage))
        } else {
            Ok(Opened::Existing(storage))
        }
    }

    /// Payload bytes of the log held (behind and after the latest snapshot).
    pub(crate) fn log_bytes(&self) -> u64 {
        self.entries_bytes
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The data of the latest snapshot is not kept in memory once restored (at 100,000 tasks it
    /// is tens of megabytes); raft reads it back when a member needs it.
    pub(crate) fn forget_snapshot_data(&mut self) {
        self.snapshot = metadata_only(&self.snapshot);
    }

    fn forget_loaded(&self) {
        *self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The latest snapshot with its data (which clones share).
    pub(crate) fn full_snapshot(&self) -> Result<Snapshot, StoreError> {
        if !self.snapshot.data.is_empty() || self.snapshot_index() == 0 {
            return Ok(self.snapshot.clone());
        }
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(snapshot) = loaded.as_ref() {
            return Ok(snapshot.clone());
        }
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
        let mut snapshot: Snapshot = match meta.get(KEY_SNAPSHOT).map_err(|e| db_err(path, e))? {
            Some(bytes) => decode("snapshot", bytes.value())?,
            None => Snapshot::default(),
        };
        if snapshot.data.is_empty() {
            snapshot.data = snapfile::read(&self.dir, snapshot.get_metadata().index)?.into();
        }
        *loaded = Some(snapshot.clone());
        Ok(snapshot)
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The state dir, where [`snapfile`] keeps the snapshots' data.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn first_index_(&self) -> u64 {
        self.truncated_index + 1
    }

    pub(crate) fn last_index_(&self) -> u64 {
        self.truncated_index + self.log.len() as u64
    }

    /// The index of the oldest entry kept in memory (`last_index_ + 1` when none is).
    fn tail_first(&self) -> u64 {
        self.last_index_() + 1 - self.tail.len() as u64
    }

    /// Appends durable entries that follow the last one, to the log and its in-memory tail.
    fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for entry in entries {
            let meta = EntryMeta::of(&entry);
            self.log.push(meta);
            self.entries_bytes += meta.bytes;
            self.tail.push_back(entry);
            self.tail_bytes += meta.bytes;
        }
        // The oldest entries go until the tail is within its bound.
        while self.tail_bytes > self.mirror_bytes {
            let Some(oldest) = self.tail.pop_front() else { break };
            self.tail_bytes -= entry_bytes(&oldest);
        }
    }

    /// Drops the log's entries from `index` on (a new leader overwrites them).
    fn truncate_from(&mut self, index: u64) {
        let keep = (index.saturating_sub(self.truncated_index + 1) as usize).min(self.log.len());
        let replaced: u64 = self.log.drain(keep..).map(|m| m.bytes).sum();
        self.entries_bytes -= replaced;
        while self.tail.back().is_some_and(|e| e.index >= index) {
            if let Some(dropped) = self.tail.pop_back() {
                self.tail_bytes -= entry_bytes(&dropped);
            }
        }
    }

    /// Drops the log's entries up to `index` (compaction).
    fn compact_to(&mut self, index: u64) {
        let drop_n = (index.saturating_sub(self.truncated_index) as usize).min(self.log.len());
        let dropped: u64 = self.log.drain(..drop_n).map(|m| m.bytes).sum();
        self.entries_bytes -= dropped;
        while self.tail.front().is_some_and(|e| e.index <= index) {
            if let Some(dropped) = self.tail.pop_front() {
                self.tail_bytes -= entry_bytes(&dropped);
            }
        }
    }

    /// Entries `[low, high)` within the size limit, read back from the database (they are older
    /// than the in-memory tail).
    fn read_entries(&self, low: u64, high: u64, limit: &mut SizeLimit) -> Result<Vec<Entry>, StoreError> {
        let path = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(path, e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| db_err(path, e))?;
        let mut out = Vec::new();
        for item in table.range(low..high).map_err(|e| db_err(path, e))? {
            let (k, v) = item.map_err(|e| db_err(path, e))?;
            let entry: Entry = decode("log entry", v.value())?;
            check_index(low + out.len() as u64, k.value(), &entry)?;
            if !limit.admits(&entry) {
                break;
            }
            out.push(entry);
        }
        if out.is_empty() && low < high {
            return Err(StoreError::Corrupt(format!("raft log entry {low} is missing from {}", path.display())));
        }
        Ok(out)
    }

    /// Whether raft asked for a snapshot newer than the stored one (cleared by the call).
    pub(crate) fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    fn term_of(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        let snap = self.snapshot.get_metadata();
        if idx == snap.index && idx != 0 {
            return Ok(snap.term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index_() {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(self.log[(idx - self.truncated_index - 1) as usize].term)
    }

    /// Persists what one `Ready` asks for — an incoming snapshot, new log entries (replacing any
    /// conflicting suffix) and the hard state — in one transaction, fsynced before returning.
    pub(crate) fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        if snapshot.is_none() && entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        // Compute the new in-memory state first, validating, then write it.
        let mut new_hs = hard_state.cloned().unwrap_or_else(|| self.hard_state.clone());
        let mut truncated = (self.truncated_index, self.truncated_term);
        let mut last = self.last_index_();
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            if meta.index < self.snapshot_index() {
                return Err(StoreError::Corrupt(format!(
                    "incoming snapshot at {} is older than the local one at {}",
                    meta.index,
                    self.snapshot_index()
                )));
            }
            new_hs.term = new_hs.term.max(meta.term);
            new_hs.commit = new_hs.commit.max(meta.index);
            truncated = (meta.index, meta.term);
            last = meta.index;
        }
        if let Some(first) = entries.first() {
            if first.index <= truncated.0 {
                return Err(StoreError::Corrupt(format!(
                    "raft asked to overwrite compacted entry {} (log compacted up to {})",
                    first.index, truncated.0
                )));
            }
            if first.index > last + 1 {
                return Err(StoreError::Corrupt(format!(
                    "raft asked to append entry {} after last entry {last}: the log would have a gap",
                    first.index
                )));
            }
        }

        if let Some(snap) = snapshot {
            // The data first, under its own name: the record below is what makes it current.
            snapfile::write(&self.dir, snap.get_metadata().index, &snap.data)?;
        }
        let path = self.path.clone();
        let mut txn = self.db.begin_write().map_err(|e| db_err(&path, e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| db_err(&path, e))?;
        if snapshot.is_some() {
            // The snapshot replaces the whole log. Dropping the table is far cheaper than
            // deleting its keys one by one.
            txn.delete_table(ENTRIES).map_err(|e| db_err(&path, e))?;
        }
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| db_err(&path, e))?;
            let mut meta = txn.open_table(META).map_err(|e| db_err(&path, e))?;
            if let Some(snap) = snapshot {
                meta.insert(KEY_SNAPSHOT, encode("snapshot", &metadata_only(snap))?.as_slice())
                    .map_err(|e| db_err(&path, e))?;
                meta.insert(KEY_TRUNCATED, pair_bytes(truncated.0, truncated.1).as_slice())
                    .map_err(|e| db_err(&path, e))?;
            }
            if let Some(first) = entries.first() {
                // A new leader overwrites a conflicting suffix. (Removing known keys one by one is
                // an order of magnitude faster in redb 3 than `retain_in` over the range.)
                for index in first.index..=last {
                    table.remove(index).map_err(|e| db_err(&path, e))?;
                }
                for e in entries {
                    table.insert(e.index, encode("log entry", e)?.as_slice()).map_err(|e| db_err(&path, e))?;
                }
            }
            meta.insert(KEY_HARD_STATE, encode("hard state", &new_hs)?.as_slice()).map_err(|e| db_err(&path, e))?;
        }
        txn.commit().map_err(|e| db_err(&path, e))?;

        // Durable: mirror it in memory.
        if let Some(snap) = snapshot {
            self.snapshot = metadata_only(snap);
            self.forget_loaded();
            snapfile::remove_all_but(&self.dir, snap.get_metadata().index);
            // The snapshot replaces the whole log.
            self.truncate_from(self.truncated_index + 1);
            self.truncated_index = truncated.0;
            self.truncated_term = truncated.1;
        }
        if let Some(first) = entries.first() {
            self.truncate_from(first.index);
            self.append(entries.iter().cloned());
        }
        self.hard_state = new_hs;
        Ok(())
    }

    /// Records a commit index learnt from a light ready. Kept in memory only: it is written with the
    /// next transaction, and a lost commit index is re-learnt from the leader (or re-established by
    /// a single-node leader) after a restart.
    pub(crate) fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = self.hard_state.commit.max(commit);
    }

    /// Writes the snapshot file, then records it (see [`RedbStorage::record_snapshot`]).
    #[cfg(test)]
    pub(crate) fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
        retain: u64,
        retain_bytes: u64,
    ) -> Result<(), StoreError> {
        snapfile::write(&self.dir, index, &data)?;
        self.record_snapshot(index, conf_state, retain, retain_bytes)
    }

    /// Makes the snapshot whose data [`snapfile::write`] wrote for `index` (applied, hence
    /// persisted) the current one, and compacts the log up to `index - retain`. One fsynced
    /// transaction. A snapshot no newer than the current one (a member received a newer one
    /// from the leader meanwhile) is dropped.
    pub(crate) fn record_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        retain: u64,
        retain_bytes: u64,
    ) -> Result<(), StoreError> {
        if index <= self.snapshot_index() {
            snapfile::remove_all_but(&self.dir, self.snapshot_index());
            return Ok(());
        }
        let term =
            self.term_of(index).map_err(|e| StoreError::Corrupt(format!("no term for snapshot index {index}: {e}")))?;
        let mut snap = Snapshot::default();
        {
            let meta = snap.mut_metadata();
            meta.index = index;
            meta.term = term;
            meta.set_conf_state(conf_state);
        }
        let mut compact_to = index.saturating_sub(retain).max(self.truncated_index);
        // The entries kept behind the snapshot also stay within `retain_bytes`: a few large
        // entries (status batches of thousands of tasks) must not pin gigabytes in memory.
        let mut kept = 0;
        for i in ((compact_to + 1)..=index).rev() {
            kept += self.log.get((i - self.truncated_index - 1) as usize).map_or(0, |m| m.bytes);
            if kept > retain_bytes {
                compact_to = i;
                break;
            }
        }
        let compact_term = self
            .term_of(compact_to)
            .map_err(|e| StoreError::Corrupt(format!("no term for compaction index {compact_to}: {e}")))?;
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(index);

        let path = self.path.clone();
        let mut txn = self.db.begin_write().map_err(|e| db_err(&path, e))?;
        txn.set_durability(Durability::Immediate).map_err(|e| db_err(&path, e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| db_err(&path, e))?;
            let mut meta = txn.open_table(META).map_err(|e| db_err(&path, e))?;
            meta.insert(KEY_SNAPSHOT, encode("snapshot", &snap)?.as_slice()).map_err(|e| db_err(&path, e))?;
            meta.insert(KEY_HARD_STATE, encode("hard state", &hs)?.as_slice()).map_err(|e| db_err(&path, e))?;
            if compact_to > self.truncated_index {
                for index in (self.truncated_index + 1)..=compact_to {
                    table.remove(index).map_err(|e| db_err(&path, e))?;
                }
                meta.insert(KEY_TRUNCATED, pair_bytes(compact_to, compact_term).as_slice())
                    .map_err(|e| db_err(&path, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(&path, e))?;

        self.compact_to(compact_to);
        self.truncated_index = compact_to;
        self.truncated_term = compact_term;
        self.snapshot = snap;
        self.forget_loaded();
        self.hard_state = hs;
        snapfile::remove_all_but(&self.dir, index);
        Ok(())
    }

    /// Bootstraps a new group: an initial snapshot at index 1, term 1 with the given voters and
    /// the initial state machine data. Every founding member writes the same one, and a member that
    /// joins later receives a snapshot first (the log never starts at index 1), so every node learns
    /// the membership from a snapshot's conf state.
    pub(crate) fn bootstrap(&mut self, voters: &[u64], data: Vec<u8>) -> Result<(), StoreError> {
        let mut snap = Snapshot { data: data.into(), ..Snapshot::default() };
        {
            let meta = snap.mut_metadata();
            meta.index = 1;
            meta.term = 1;
            meta.set_conf_state(ConfState::from((voters.to_vec(), Vec::<u64>::new())));
        }
        let hs = HardState { term: 1, commit: 1, ..HardState::default() };
        self.persist(Some(&snap), &[], Some(&hs))
    }
}

impl Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.snapshot.get_metadata().get_conf_state().clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index_() + 1 || low > high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let mut limit = SizeLimit::new(max_size.into());
        let tail_first = self.tail_first();
        if low < tail_first {
            let read = self.read_entries(low, high, &mut limit);
            return read.map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))));
        }
        let skip = (low - tail_first) as usize;
        let wanted = self.tail.range(skip..).take((high - low) as usize);
        Ok(wanted.take_while(|e| limit.admits(e)).cloned().collect())
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A member refuses a snapshot whose conf state does not include it, so a member added
        // after the latest snapshot needs a fresh one: ask the driver to take it (raft-rs retries).
        let cs = self.snapshot.get_metadata().get_conf_state();
        let includes_to = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).any(|&id| id == to);
        if self.snapshot_index() == 0 || self.snapshot_index() < request_index || !includes_to {
            self.snapshot_wanted.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        }
        self.full_snapshot().map_err(|e| raft::Error::Store(RaftStorageError::Other(Box::new(e))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: format!("e{index}t{term}").into_bytes().into(), ..Entry::default() }
    }

    fn open(dir: &Path) -> RedbStorage {
        match RedbStorage::open(dir, 7) {
            Ok(Opened::Existing(s)) | Ok(Opened::Empty(s)) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn terms(s: &RedbStorage) -> Vec<(u64, u64)> {
        (s.first_index_()..=s.last_index_()).map(|i| (i, s.term_of(i).unwrap())).collect()
    }

    #[test]
    fn log_survives_reopen_through_overwrite_compaction_and_snapshot_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        assert!(matches!(RedbStorage::open(dir.path(), 7), Err(StoreError::Locked { .. })));
        s.bootstrap(&[7], b"init".to_vec()).unwrap();
        let ents: Vec<Entry> = (2..=10).map(|i| entry(i, 1)).collect();
        let hs = HardState { term: 1, vote: 7, commit: 4, ..HardState::default() };
        s.persist(None, &ents, Some(&hs)).unwrap();
        // A new leader overwrites the uncommitted suffix 6..=10 with 6..=7 of term 2.
        s.persist(None, &[entry(6, 2), entry(7, 2)], None).unwrap();
        assert_eq!(s.last_index_(), 7);
        drop(s);

        let mut s = open(dir.path());
        assert_eq!(s.hard_state().commit, 4);
        assert_eq!(terms(&s), vec![(2, 1), (3, 1), (4, 1), (5, 1), (6, 2), (7, 2)]);
        let got = s.entries(6, 8, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got[0].data.as_ref(), b"e6t2");
        assert!(s.entries(1, 3, None, GetEntriesContext::empty(false)).is_err(), "index 1 is compacted");

        // Snapshot at 6, keeping one entry behind it.
        s.create_snapshot(6, ConfState::from((vec![7], vec![])), b"state@6".to_vec(), 1, u64::MAX).unwrap();
        assert_eq!((s.first_index_(), s.last_index_(), s.snapshot_index()), (6, 7, 6));
        assert_eq!(s.term_of(5).unwrap(), 1, "term of the last compacted entry is kept");
        drop(s);

        let mut s = open(dir.path());
        assert_eq!((s.first_index_(), s.last_index_(), s.snapshot_index()), (6, 7, 6));
        assert_eq!(s.snapshot(0, 7).unwrap().data.as_ref(), b"state@6");
        assert!(s.snapshot(0, 8).is_err(), "node 8 is not in the snapshot's conf state");
        assert!(s.take_snapshot_wanted());

        // An incoming snapshot from a leader replaces the whole log.
        let mut snap = Snapshot { data: b"leader@20".to_vec().into(), ..Snapshot::default() };
        snap.mut_metadata().index = 20;
        snap.mut_metadata().term = 3;
        snap.mut_metadata().set_conf_state(ConfState::from((vec![7, 8], vec![])));
        s.persist(Some(&snap), &[entry(21, 3)], None).unwrap();
        drop(s);

        let s = open(dir.path());
        assert_eq!((s.first_index_(), s.last_index_(), s.snapshot_index()), (21, 21, 20));
        assert_eq!(s.hard_state().commit, 20);
        assert_eq!(s.hard_state().term, 3);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![7, 8]);
        drop(s);
        assert!(matches!(RedbStorage::open(dir.path(), 9), Err(StoreError::IdMismatch { found: 7, .. })));
    }

    fn big(index: u64, bytes: usize) -> Entry {
        Entry { index, term: 1, data: vec![b'x'; bytes].into(), ..Entry::default() }
    }

    #[test]
    fn the_log_is_counted_in_bytes_and_large_entries_are_neither_retained_nor_copied_beyond_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.bootstrap(&[7], b"init".to_vec()).unwrap();
        let ents: Vec<Entry> = (2..=11).map(|i| big(i, 1000)).collect();
        s.persist(None, &ents, Some(&HardState { term: 1, vote: 7, commit: 11, ..HardState::default() })).unwrap();
        assert_eq!(s.log_bytes(), 10_000);
        // Overwriting a suffix replaces its bytes.
        s.persist(None, &[big(10, 10)], None).unwrap();
        assert_eq!((s.last_index_(), s.log_bytes()), (10, 8_010));
        drop(s);
        let mut s = open(dir.path());
        assert_eq!(s.log_bytes(), 8_010, "counted again on reopen");

        // A message's size limit applies before copying: at least one entry, then what fits.
        let got = s.entries(2, 11, Some(2_500), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len(), 2);
        let got = s.entries(2, 11, Some(10), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len(), 1);

        // Up to 5 entries may stay behind the snapshot by count, but only 2,500 bytes: 2 of them.
        s.create_snapshot(9, ConfState::from((vec![7], vec![])), b"state@9".to_vec(), 5, 2_500).unwrap();
        assert_eq!((s.first_index_(), s.last_index_()), (8, 10));
        assert_eq!(s.log_bytes(), 2_010);
    }

    #[test]
    fn entries_older_than_the_memory_tail_are_read_back_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.mirror_bytes = 2_500;
        s.bootstrap(&[7], b"init".to_vec()).unwrap();
        let ents: Vec<Entry> = (2..=11).map(|i| big(i, 1000)).collect();
        s.persist(None, &ents, Some(&HardState { term: 1, vote: 7, commit: 11, ..HardState::default() })).unwrap();
        assert_eq!(
            (s.tail.len(), s.tail_bytes, s.log_bytes()),
            (2, 2_000, 10_000),
            "only the newest within 2,500 bytes"
        );
        let indexes = |got: Vec<Entry>| got.iter().map(|e| e.index).collect::<Vec<_>>();
        let ctx = || GetEntriesContext::empty(false);
        assert_eq!(indexes(s.entries(2, 12, None, ctx()).unwrap()), (2..=11).collect::<Vec<_>>());
        assert_eq!(indexes(s.entries(10, 12, None, ctx()).unwrap()), vec![10, 11], "from memory");
        assert_eq!(indexes(s.entries(3, 6, Some(2_500), ctx()).unwrap()), vec![3, 4], "the size limit holds on disk");
        assert_eq!(indexes(s.entries(3, 6, Some(10), ctx()).unwrap()), vec![3], "at least one entry");
        assert_eq!(s.entries(4, 5, None, ctx()).unwrap()[0].data.as_ref(), &[b'x'; 1000][..]);

        // A new leader overwrites entries from 9 on: the tail ends with the new ones.
        s.persist(None, &[Entry { index: 9, term: 2, data: b"new9".to_vec().into(), ..Entry::default() }], None)
            .unwrap();
        assert_eq!((s.last_index_(), s.term_of(9).unwrap(), s.term_of(8).unwrap()), (9, 2, 1));
        assert_eq!(indexes(s.entries(7, 10, None, ctx()).unwrap()), vec![7, 8, 9]);
        assert_eq!(s.entries(9, 10, None, ctx()).unwrap()[0].data.as_ref(), b"new9");

        // Compaction drops the tail's entries it covers; terms stay known from the snapshot on.
        s.create_snapshot(9, ConfState::from((vec![7], vec![])), b"state@9".to_vec(), 1, u64::MAX).unwrap();
        assert_eq!((s.first_index_(), s.last_index_()), (9, 9));
        assert!(s.entries(8, 10, None, ctx()).is_err(), "8 is compacted");
        assert_eq!(s.entries(9, 10, None, ctx()).unwrap()[0].data.as_ref(), b"new9");
        drop(s);

        // Reopened with the default mirror, the whole live log is back in memory and agrees.
        let s = open(dir.path());
        assert_eq!((s.tail.len(), s.log_bytes()), (1, 4));
        assert_eq!(s.entries(9, 10, None, ctx()).unwrap()[0].data.as_ref(), b"new9");
    }
}
