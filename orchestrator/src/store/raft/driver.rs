//! The raft loop: one thread owns the `RawNode`, its redb storage and the state machine.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ::raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, MessageType, Snapshot,
};
use ::raft::{RawNode, ReadState, SnapshotStatus, StateRole};
use protobuf::Message as _;
use tokio::sync::{oneshot, watch};

use super::reads::Reads;
use super::snapfile;
use super::storage::{Opened, RedbStorage};
use super::{
    logger, Bootstrap, MemberChange, Membership, PeerProgress, ProposeError, RaftConfig, RaftStatus, Reply, Request,
    Role, StateMachine, StoreError, Transport,
};

/// How long applying holds the state's write lock before it lets readers in (between entries).
const MAX_WRITE_HOLD: std::time::Duration = std::time::Duration::from_millis(5);

/// Ticks between sweeps that forget requests whose caller gave up (timed out).
const SWEEP_EVERY_TICKS: u64 = 50;

enum Waiter {
    Command(Reply<Vec<u8>>),
    Membership(Reply<Membership>),
}

impl Waiter {
    fn fail(self, e: ProposeError) {
        match self {
            Waiter::Command(tx) => drop(tx.send(Err(e))),
            Waiter::Membership(tx) => drop(tx.send(Err(e))),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Waiter::Command(tx) => tx.is_closed(),
            Waiter::Membership(tx) => tx.is_closed(),
        }
    }
}

/// A proposal appended to the leader's log at a known index, waiting for that index to be applied.
struct Pending {
    seq: u64,
    waiter: Waiter,
}

/// A snapshot being serialized and written by a thread of its own (see
/// [`Driver::maybe_snapshot`]): the raft thread goes on ticking, stepping and applying meanwhile.
struct SnapshotJob {
    index: u64,
    conf_state: ConfState,
    /// Ends with the data's size once its file is written.
    thread: std::thread::JoinHandle<Result<u64, StoreError>>,
}

/// What applying one entry produced, for its proposer.
enum Outcome {
    Command(Vec<u8>),
    Membership(Result<Membership, String>),
    Noop,
}

struct Driver<S: StateMachine> {
    id: u64,
    cfg: RaftConfig,
    raw: RawNode<RedbStorage>,
    sm: Arc<RwLock<S>>,
    transport: Arc<dyn Transport>,
    status_tx: watch::Sender<RaftStatus>,
    /// Next request sequence number; starts from the clock so that contexts of a restarted member
    /// never collide with its entries from a previous run still in the log.
    seq: u64,
    /// Proposals by log index.
    proposals: BTreeMap<u64, Pending>,
    reads: Reads,
    applied: u64,
    conf_state: ConfState,
    ticks: u64,
    snapshot_job: Option<SnapshotJob>,
}

fn context(id: u64, seq: u64) -> [u8; 16] {
    let mut ctx = [0u8; 16];
    ctx[..8].copy_from_slice(&id.to_be_bytes());
    ctx[8..].copy_from_slice(&seq.to_be_bytes());
    ctx
}

fn parse_context(id: u64, ctx: &[u8]) -> Option<u64> {
    let ctx: &[u8; 16] = ctx.try_into().ok()?;
    let (node, seq) = ctx.split_at(8);
    let node = u64::from_be_bytes(node.try_into().ok()?);
    (node == id).then_some(u64::from_be_bytes(seq.try_into().ok()?))
}

fn membership_of(cs: &ConfState) -> Membership {
    let sorted = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    Membership {
        voters: sorted(&cs.voters),
        learners: sorted(&cs.learners),
        outgoing_voters: sorted(&cs.voters_outgoing),
    }
}

fn raft_err(e: ::raft::Error) -> StoreError {
    StoreError::Raft(e.to_string())
}

/// Opens the storage, recovers or bootstraps, then runs the loop until shutdown or a fatal error.
pub(super) fn run<S: StateMachine>(
    cfg: RaftConfig,
    sm: Arc<RwLock<S>>,
    transport: Arc<dyn Transport>,
    rx: mpsc::Receiver<Request>,
    status_tx: watch::Sender<RaftStatus>,
    ready: oneshot::Sender<()>,
) -> Result<(), StoreError> {
    let mut driver = match Driver::open(cfg, sm, transport, status_tx.clone()) {
        Ok(d) => d,
        Err(e) => {
            status_tx.send_modify(|s| s.running = false);
            return Err(e);
        }
    };
    driver.publish_status();
    let _ = ready.send(());
    let result = driver.run_loop(&rx);
    driver.stop(&rx);
    // Close the database before saying so: `shutdown()` callers may reopen the state dir at once.
    drop(driver);
    status_tx.send_modify(|s| s.running = false);
    result
}

impl<S: StateMachine> Driver<S> {
    fn open(
        cfg: RaftConfig,
        sm: Arc<RwLock<S>>,
        transport: Arc<dyn Transport>,
        status_tx: watch::Sender<RaftStatus>,
    ) -> Result<Self, StoreError> {
        let id = cfg.id;
        let mut storage = match RedbStorage::open(&cfg.state_dir, id)? {
            Opened::Existing(storage) => storage,
            Opened::Empty(mut storage) => {
                let voters = match &cfg.bootstrap {
                    Bootstrap::SingleNode => Some(vec![id]),
                    Bootstrap::Voters(v) => Some(v.clone()),
                    Bootstrap::Join => None,
                };
                if let Some(voters) = voters {
                    let data = sm.read().unwrap_or_else(PoisonError::into_inner).snapshot();
                    storage.bootstrap(&voters, data)?;
                    tracing::info!(target: "shoal::raft", "bootstrapped a new raft group with voters {voters:?} in {}", storage.path().display());
                }
                storage
            }
        };

        // Recover: the state machine starts from the latest snapshot; raft-rs re-delivers the
        // committed entries after it as committed entries of the first readies.
        let snapshot = storage.full_snapshot()?;
        let applied = snapshot.get_metadata().index;
        if applied > 0 {
            sm.write().unwrap_or_else(PoisonError::into_inner).restore(&snapshot.data).map_err(StoreError::Restore)?;
        }
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        storage.forget_snapshot_data();
        if storage.hard_state().commit < applied {
            // Cannot happen with files written by this module (the snapshot write persists a commit
            // index at least as high); guard raft-rs's assertion anyway.
            storage.set_commit(applied);
        }

        let raft_cfg = ::raft::Config {
            id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            // No coalescing of appends: raft-rs merges every append pending for a follower into
            // one message whatever its size, so a deploy's burst of commands went out as one
            // ~20 MB message per follower, and the stream's encode buffer kept that size for good
            // (heaptrack of a leader at 100,000 tasks: 2 x 19.6 MB). Separate messages stay
            // within `max_size_per_msg`.
            batch_append: false,
            ..::raft::Config::default()
        };
        raft_cfg.validate().map_err(|e| StoreError::Config(e.to_string()))?;
        let logger = logger::logger(id);
        let mut raw = RawNode::new(&raft_cfg, storage, &logger).map_err(raft_err)?;

        // The only voter need not wait for an election timeout.
        if conf_state.voters == [id] && conf_state.voters_outgoing.is_empty() {
            raw.campaign().map_err(raft_err)?;
        }

        let seq = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Ok(Driver {
            id,
            cfg,
            raw,
            sm,
            transport,
            status_tx,
            seq,
            proposals: BTreeMap::new(),
            reads: Reads::default(),
            applied,
            conf_state,
            ticks: 0,
            snapshot_job: None,
        })
    }

    fn run_loop(&mut self, rx: &mpsc::Receiver<Request>) -> Result<(), StoreError> {
        let tick = self.cfg.tick_interval;
        let mut next_tick = Instant::now() + tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(request) => {
                    // Take whatever else queued up meanwhile: it shares the next fsync, and
                    // proposals are stepped into raft as one message (one append per follower).
                    let mut proposals = Vec::new();
                    let mut next = Some(request);
                    let mut handled = 0;
                    while let Some(request) = next.take() {
                        handled += 1;
                        match request {
                            Request::Propose { commands, replies } => {
                                proposals.extend(commands.into_iter().zip(replies))
                            }
                            other => {
                                self.propose_all(std::mem::take(&mut proposals));
                                if !self.handle(other) {
                                    return Ok(());
                                }
                            }
                        }
                        if handled < self.cfg.max_requests_per_ready {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.propose_all(proposals);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // Every handle is gone: nobody can talk to us any more.
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.on_tick();
                next_tick += tick;
                if next_tick < now {
                    // Fell behind (a long fsync or snapshot): do not fire a burst of ticks.
                    next_tick = now + tick;
                }
            }
            self.on_ready()?;
            self.maybe_snapshot()?;
            self.publish_status();
        }
    }

    /// Fails everything still waiting and marks the driver stopped.
    fn stop(&mut self, rx: &mpsc::Receiver<Request>) {
        // Its file is complete or not written (and then removed at the next start), never half.
        if let Some(job) = self.snapshot_job.take() {
            let _ = job.thread.join();
        }
        // Already in the log: the rest of the group may still commit them.
        for (_, p) in std::mem::take(&mut self.proposals) {
            p.waiter.fail(ProposeError::Indeterminate);
        }
        self.reads.fail_all(&ProposeError::Stopped);
        while let Ok(request) = rx.try_recv() {
            match request {
                Request::Propose { replies, .. } => {
                    for tx in replies {
                        let _ = tx.send(Err(ProposeError::Stopped));
                    }
                }
                Request::ChangeMembership { reply, .. } => drop(reply.send(Err(ProposeError::Stopped))),
                Request::ReadIndex { reply } => drop(reply.send(Err(ProposeError::Stopped))),
                _ => {}
            }
        }
        self.publish_status();
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    fn leader_hint(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != ::raft::INVALID_ID && leader != self.id).then_some(leader)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Handles one request; returns false on shutdown.
    fn handle(&mut self, request: Request) -> bool {
        match request {
            Request::Propose { commands, replies } => self.propose_all(commands.into_iter().zip(replies).collect()),
            Request::ChangeMembership { changes, context, reply } => self.propose_membership(changes, context, reply),
            Request::ReadIndex { reply } => {
                if !self.is_leader() && self.leader_hint().is_none() {
                    let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: None }));
                } else {
                    self.reads.ask(reply);
                    self.issue_read();
                }
            }
            Request::Step(message) => {
                if let Err(e) = self.raw.step(*message) {
                    tracing::debug!(target: "shoal::raft", "ignored a peer message: {e}");
                }
            }
            Request::ReportUnreachable(id) => self.raw.report_unreachable(id),
            Request::ReportSnapshot { id, success } => {
                self.raw.report_snapshot(id, if success { SnapshotStatus::Finish } else { SnapshotStatus::Failure })
            }
            Request::TransferLeader(to) => self.raw.transfer_leader(to),
            Request::Shutdown => return false,
        }
        true
    }

    /// Appends commands to the log in one raft message; each is answered when applied.
    fn propose_all(&mut self, proposals: Vec<(Vec<u8>, Reply<Vec<u8>>)>) {
        if proposals.is_empty() {
            return;
        }
        if !self.is_leader() {
            let hint = self.leader_hint();
            for (_, reply) in proposals {
                let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: hint }));
            }
            return;
        }
        let mut entries = Vec::with_capacity(proposals.len());
        let mut waiters = Vec::with_capacity(proposals.len());
        for (command, reply) in proposals {
            let seq = self.next_seq();
            entries.push(Entry {
                data: command.into(),
                context: context(self.id, seq).to_vec().into(),
                ..Entry::default()
            });
            waiters.push((seq, reply));
        }
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.id;
        m.set_entries(entries.into());
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.step(m) {
            Ok(()) => {
                let last = self.raw.raft.raft_log.last_index();
                debug_assert_eq!(last - before, waiters.len() as u64);
                let first = last + 1 - waiters.len() as u64;
                for (i, (seq, reply)) in waiters.into_iter().enumerate() {
                    self.proposals.insert(first + i as u64, Pending { seq, waiter: Waiter::Command(reply) });
                }
            }
            Err(e) => {
                for (_, reply) in waiters {
                    let _ = reply.send(Err(ProposeError::Refused(e.to_string())));
                }
            }
        }
    }

    fn propose_membership(&mut self, changes: Vec<MemberChange>, context_bytes: Vec<u8>, reply: Reply<Membership>) {
        if !self.is_leader() {
            let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: self.leader_hint() }));
            return;
        }
        // raft-rs would silently turn these into no-op entries; refuse them up front instead.
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(ProposeError::Refused("another membership change is still being applied".into())));
            return;
        }
        if !self.conf_state.voters_outgoing.is_empty() {
            let _ = reply.send(Err(ProposeError::Refused(
                "the group is still leaving a joint configuration; retry shortly".into(),
            )));
            return;
        }
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(
            changes
                .iter()
                .map(|c| {
                    let (ty, id) = match *c {
                        MemberChange::AddVoter(id) => (ConfChangeType::AddNode, id),
                        MemberChange::AddLearner(id) => (ConfChangeType::AddLearnerNode, id),
                        MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id),
                    };
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(ty);
                    single.node_id = id;
                    single
                })
                .collect::<Vec<_>>()
                .into(),
        );
        cc.context = context_bytes.into();
        let seq = self.next_seq();
        match self.raw.propose_conf_change(context(self.id, seq).to_vec(), cc) {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.proposals.insert(index, Pending { seq, waiter: Waiter::Membership(reply) });
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Refused(e.to_string())));
            }
        }
    }

    /// Issues a ReadIndex for the readers waiting, unless one is in flight (see [`Reads`]).
    fn issue_read(&mut self) {
        if self.reads.start_next(self.seq.wrapping_add(1), self.ticks) {
            let seq = self.next_seq();
            self.raw.read_index(context(self.id, seq).to_vec());
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        // raft-rs drops ReadIndex requests it cannot serve yet (no leader known, or a new leader
        // that has not committed an entry in its term): issue one still without an index again.
        let reissue_after = self.cfg.heartbeat_tick.max(1) as u64 * 2;
        if self.is_leader() || self.leader_hint().is_some() {
            if let Some(seq) = self.reads.due_again(self.ticks, reissue_after) {
                self.raw.read_index(context(self.id, seq).to_vec());
            }
        }
        if self.ticks % SWEEP_EVERY_TICKS == 0 {
            self.proposals.retain(|_, p| !p.waiter.is_closed());
            self.reads.sweep();
            self.issue_read();
        }
    }

    fn send_messages(&self, messages: Vec<Message>) {
        for m in messages {
            match m.write_to_bytes() {
                Ok(bytes) if m.get_msg_type() == MessageType::MsgSnapshot => self.transport.send_snapshot(m.to, bytes),
                Ok(bytes) => self.transport.send(m.to, bytes),
                Err(e) => tracing::error!(target: "shoal::raft", "cannot encode a raft message: {e}"),
            }
        }
    }

    /// Processes readies until raft has nothing more to do.
    fn on_ready(&mut self) -> Result<(), StoreError> {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            // Leader messages can go out before the local fsync (raft thesis 10.2.1).
            self.send_messages(ready.take_messages());

            let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
            self.raw.mut_store().persist(snapshot.as_ref(), ready.entries(), ready.hs())?;
            if let Some(snapshot) = snapshot {
                self.install_snapshot(&snapshot)?;
            }
            for rs in ready.take_read_states() {
                self.on_read_state(rs);
            }
            self.apply(ready.take_committed_entries())?;
            // Votes and append responses promise durable state: only after the fsync above.
            self.send_messages(ready.take_persisted_messages());

            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().set_commit(commit);
            }
            self.send_messages(light.take_messages());
            self.apply(light.take_committed_entries())?;
            self.raw.advance_apply();
            self.answer_reads();
            // The readers that asked while a ReadIndex was in flight get the next one at once
            // (after `advance`: a follower's ReadIndex is a message, which raft-rs allows only
            // between readies).
            self.issue_read();
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        self.sm.write().unwrap_or_else(PoisonError::into_inner).restore(&snapshot.data).map_err(StoreError::Restore)?;
        self.applied = meta.index;
        self.conf_state = meta.get_conf_state().clone();
        tracing::debug!(target: "shoal::raft", "installed a snapshot at index {} (term {})", meta.index, meta.term);
        // Proposals at or below the snapshot may or may not be in it.
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > meta.index {
                break;
            }
            entry.remove().waiter.fail(ProposeError::Indeterminate);
        }
        Ok(())
    }

    fn on_read_state(&mut self, rs: ReadState) {
        if let Some(seq) = parse_context(self.id, &rs.request_ctx) {
            self.reads.granted(seq, rs.index);
        }
    }

    fn answer_reads(&mut self) {
        self.reads.answer(self.applied);
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // Commands are decoded before the lock is taken: readers wait only for the applying.
        let decoded: Vec<Option<S::Command>> = entries
            .iter()
            .map(|entry| {
                let command = entry.get_entry_type() == EntryType::EntryNormal
                    && entry.index > self.applied
                    && !(entry.data.is_empty() && entry.context.is_empty());
                command.then(|| S::decode(&entry.data))
            })
            .collect();
        let state = self.sm.clone();
        let mut sm = state.write().unwrap_or_else(PoisonError::into_inner);
        let mut locked_at = Instant::now();
        for (entry, command) in entries.into_iter().zip(decoded) {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            if locked_at.elapsed() >= MAX_WRITE_HOLD {
                // Readers (gRPC handlers on the runtime's few workers) get in between entries.
                drop(sm);
                std::thread::yield_now();
                sm = state.write().unwrap_or_else(PoisonError::into_inner);
                locked_at = Instant::now();
            }
            let outcome = match (entry.get_entry_type(), command) {
                (EntryType::EntryNormal, Some(command)) => Outcome::Command(sm.apply(index, command)),
                (EntryType::EntryNormal, None) => Outcome::Noop,
                (EntryType::EntryConfChange, _) => {
                    // Legacy (v1) conf changes are never proposed by this driver; accept them anyway.
                    let v1 = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|e| StoreError::Corrupt(format!("undecodable conf change at {index}: {e}")))?;
                    let mut single = ConfChangeSingle::default();
                    single.set_change_type(v1.get_change_type());
                    single.node_id = v1.node_id;
                    let mut cc = ConfChangeV2::default();
                    cc.mut_changes().push(single);
                    cc.context = v1.context.clone();
                    let context = cc.context.clone();
                    Outcome::Membership(self.apply_conf_change(&cc, index, &context, &mut *sm))
                }
                (EntryType::EntryConfChangeV2, _) => {
                    let cc = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|e| StoreError::Corrupt(format!("undecodable conf change at {index}: {e}")))?;
                    let context = cc.context.clone();
                    Outcome::Membership(self.apply_conf_change(&cc, index, &context, &mut *sm))
                }
            };
            self.applied = index;
            self.resolve(index, &entry.context, outcome);
        }
        Ok(())
    }

    fn apply_conf_change(
        &mut self,
        cc: &ConfChangeV2,
        index: u64,
        context: &[u8],
        sm: &mut S,
    ) -> Result<Membership, String> {
        match self.raw.apply_conf_change(cc) {
            Ok(cs) => {
                let membership = membership_of(&cs);
                self.conf_state = cs;
                sm.apply_membership(index, &membership, context);
                tracing::info!(target: "shoal::raft", "raft membership at index {index}: {membership:?}");
                Ok(membership)
            }
            // Every member rejects the same invalid change deterministically.
            Err(e) => {
                tracing::warn!(target: "shoal::raft", "rejected a membership change at index {index}: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Answers the proposer of the entry applied at `index`, if it is waiting here.
    fn resolve(&mut self, index: u64, ctx: &[u8], outcome: Outcome) {
        let mut outcome = Some(outcome);
        while let Some(entry) = self.proposals.first_entry() {
            let at = *entry.key();
            if at > index {
                break;
            }
            let pending = entry.remove();
            let ours = at == index && parse_context(self.id, ctx) == Some(pending.seq);
            let outcome = if ours { outcome.take() } else { None };
            match (pending.waiter, outcome) {
                (Waiter::Command(tx), Some(Outcome::Command(response))) => drop(tx.send(Ok(response))),
                (Waiter::Membership(tx), Some(Outcome::Membership(result))) => {
                    drop(tx.send(result.map_err(ProposeError::Refused)))
                }
                // Another entry took that slot: ours was dropped with our leadership.
                (waiter, None) => waiter.fail(ProposeError::LeadershipLost),
                // raft-rs replaced the proposal (e.g. a membership change while another was pending).
                (waiter, Some(_)) => {
                    waiter.fail(ProposeError::Refused("raft replaced the proposal with a no-op".into()))
                }
            }
        }
    }

    /// Takes a snapshot when one is due (or raft wants one to send): the state is copied under
    /// the read lock here; a thread of its own serializes the copy and writes the snapshot file;
    /// once it is done, a later call records the snapshot and compacts the log. One at a time.
    fn maybe_snapshot(&mut self) -> Result<(), StoreError> {
        if let Some(job) = &self.snapshot_job {
            if !job.thread.is_finished() {
                return Ok(());
            }
            let Some(job) = self.snapshot_job.take() else { return Ok(()) };
            match job.thread.join().unwrap_or(Err(StoreError::Panicked)) {
                Ok(size) => {
                    let (retain, retain_bytes) = (self.cfg.log_retain, self.cfg.log_retain_bytes);
                    self.raw.mut_store().record_snapshot(job.index, job.conf_state, retain, retain_bytes)?;
                    tracing::debug!(target: "shoal::raft", "snapshot at index {} ({size} bytes); log compacted", job.index);
                }
                // The log stays as it is; the next call tries again.
                Err(e) => tracing::warn!(target: "shoal::raft", "the snapshot at index {} failed: {e}", job.index),
            }
            return Ok(());
        }
        let store = self.raw.store();
        let snapshot_index = store.snapshot_index();
        if self.applied <= snapshot_index {
            return Ok(());
        }
        let due =
            self.applied - snapshot_index >= self.cfg.snapshot_every || store.log_bytes() >= self.cfg.snapshot_bytes;
        let wanted = store.take_snapshot_wanted();
        if !wanted && !due {
            return Ok(());
        }
        let serialize = self.sm.read().unwrap_or_else(PoisonError::into_inner).snapshot_later();
        let (index, dir) = (self.applied, store.dir().to_path_buf());
        let thread = std::thread::Builder::new()
            .name(format!("raft-snapshot-{}", self.id))
            .spawn(move || snapfile::write_with(&dir, index, serialize));
        match thread {
            Ok(thread) => self.snapshot_job = Some(SnapshotJob { index, conf_state: self.conf_state.clone(), thread }),
            Err(e) => tracing::warn!(target: "shoal::raft", "cannot start a snapshot thread: {e}"),
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        let store = self.raw.store();
        let role = match raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        };
        let progress = if role == Role::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| {
                    (
                        *id,
                        PeerProgress {
                            matched: pr.matched,
                            next_index: pr.next_idx,
                            state: format!("{:?}", pr.state),
                            recent_active: pr.recent_active,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = RaftStatus {
            id: self.id,
            role,
            leader: (raft.leader_id != ::raft::INVALID_ID).then_some(raft.leader_id),
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_index: store.first_index_(),
            last_index: raft.raft_log.last_index(),
            snapshot_index: store.snapshot_index(),
            membership: membership_of(&self.conf_state),
            progress,
            running: true,
        };
        self.status_tx.send_if_modified(|current| {
            if *current == status {
                false
            } else {
                *current = status;
                true
            }
        });
    }
}
