//! Linearizable reads, batched: one raft ReadIndex at a time serves every reader that asked
//! before it was issued (as etcd does). raft-rs handles each ReadIndex with a heartbeat round of
//! its own and keeps it, with its acknowledgements, until a quorum answers: one per reader made
//! 10,000 agents opening sessions at once cost 20,000 messages — and a retry storm of them, the
//! leader's memory. The pending reads' bookkeeping lives here, free of the raft node, so that it
//! is tested on its own; the driver issues what [`Reads::start_next`] returns.

use super::{ProposeError, Reply};

/// The ReadIndex in flight.
struct Inflight {
    /// Its context's sequence number.
    seq: u64,
    readers: Vec<Reply<u64>>,
    /// The tick it was (re-)issued at.
    issued_at: u64,
}

#[derive(Default)]
pub(super) struct Reads {
    /// Asked since the ReadIndex in flight was issued.
    waiting: Vec<Reply<u64>>,
    inflight: Option<Inflight>,
    /// Granted a read index, waiting for it to be applied.
    granted: Vec<(u64, Vec<Reply<u64>>)>,
}

impl Reads {
    pub fn ask(&mut self, reply: Reply<u64>) {
        self.waiting.push(reply);
    }

    /// When no ReadIndex is in flight and readers wait: makes them the next one's, with context
    /// `seq`; true when the caller is to issue it.
    pub fn start_next(&mut self, seq: u64, tick: u64) -> bool {
        if self.inflight.is_some() || self.waiting.is_empty() {
            return false;
        }
        self.inflight = Some(Inflight { seq, readers: std::mem::take(&mut self.waiting), issued_at: tick });
        true
    }

    /// The context to issue again when the one in flight has had no answer for `after` ticks:
    /// raft-rs drops requests it cannot serve yet (no leader known, or a new leader that has
    /// not committed in its term).
    pub fn due_again(&mut self, tick: u64, after: u64) -> Option<u64> {
        let inflight = self.inflight.as_mut()?;
        (tick >= inflight.issued_at + after).then(|| {
            inflight.issued_at = tick;
            inflight.seq
        })
    }

    /// Raft granted read index `index` to the request with context `seq`.
    pub fn granted(&mut self, seq: u64, index: u64) {
        if self.inflight.as_ref().is_some_and(|i| i.seq == seq) {
            if let Some(inflight) = self.inflight.take() {
                self.granted.push((index, inflight.readers));
            }
        }
    }

    /// Answers the readers whose index is applied.
    pub fn answer(&mut self, applied: u64) {
        if self.granted.iter().all(|(index, _)| *index > applied) {
            return;
        }
        let (done, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.granted).into_iter().partition(|(i, _)| *i <= applied);
        self.granted = rest;
        for (index, readers) in done {
            for reply in readers {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// Forgets readers that gave up (timed out).
    pub fn sweep(&mut self) {
        self.waiting.retain(|r| !r.is_closed());
        for (_, readers) in &mut self.granted {
            readers.retain(|r| !r.is_closed());
        }
        self.granted.retain(|(_, readers)| !readers.is_empty());
        let abandoned = self.inflight.as_mut().is_some_and(|inflight| {
            inflight.readers.retain(|r| !r.is_closed());
            inflight.readers.is_empty()
        });
        if abandoned {
            self.inflight = None;
        }
    }

    /// Fails every reader.
    pub fn fail_all(&mut self, error: &ProposeError) {
        let inflight = self.inflight.take().map(|i| i.readers).unwrap_or_default();
        let granted = std::mem::take(&mut self.granted).into_iter().flat_map(|(_, readers)| readers);
        for reply in std::mem::take(&mut self.waiting).into_iter().chain(inflight).chain(granted) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    /// How many readers wait, in all.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
            + self.inflight.as_ref().map_or(0, |i| i.readers.len())
            + self.granted.iter().map(|(_, r)| r.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    type Answer = oneshot::Receiver<Result<u64, ProposeError>>;

    fn reader(reads: &mut Reads) -> Answer {
        let (tx, rx) = oneshot::channel();
        reads.ask(tx);
        rx
    }

    fn answer(rx: &mut Answer) -> Option<Result<u64, ProposeError>> {
        rx.try_recv().ok()
    }

    #[test]
    fn readers_that_asked_together_share_one_read_index() {
        let mut reads = Reads::default();
        let mut first: Vec<Answer> = (0..1000).map(|_| reader(&mut reads)).collect();
        assert!(reads.start_next(7, 0), "one ReadIndex for the first thousand");
        // Asked after it was issued: it cannot be served by that one (the leader may have
        // committed more since), so it waits for the next.
        let mut late = reader(&mut reads);
        assert!(!reads.start_next(8, 0), "one in flight at a time");
        reads.granted(7, 42);
        reads.answer(41);
        assert!(answer(&mut first[0]).is_none(), "index 42 is not applied yet");
        reads.answer(42);
        assert!(first.iter_mut().all(|rx| matches!(answer(rx), Some(Ok(42)))));
        assert!(answer(&mut late).is_none());
        assert!(reads.start_next(8, 1), "the late reader gets a ReadIndex of its own");
        reads.granted(8, 50);
        reads.answer(60);
        assert!(matches!(answer(&mut late), Some(Ok(50))));
        assert_eq!(reads.len(), 0);
    }

    #[test]
    fn an_unanswered_read_index_is_issued_again_with_the_same_context() {
        let mut reads = Reads::default();
        let _rx = reader(&mut reads);
        assert_eq!(reads.due_again(100, 4), None, "nothing in flight");
        assert!(reads.start_next(3, 10));
        assert_eq!(reads.due_again(13, 4), None);
        assert_eq!(reads.due_again(14, 4), Some(3));
        assert_eq!(reads.due_again(15, 4), None, "counted from the reissue");
        reads.granted(99, 5);
        assert_eq!(reads.len(), 1, "an answer to another context is not ours");
    }

    #[test]
    fn readers_that_gave_up_are_forgotten_and_the_rest_fail_on_stop() {
        let mut reads = Reads::default();
        drop(reader(&mut reads));
        assert!(reads.start_next(1, 0));
        reads.sweep();
        assert_eq!(reads.len(), 0);
        assert_eq!(reads.due_again(100, 1), None, "an abandoned ReadIndex is not issued again");

        let mut kept = reader(&mut reads);
        assert!(reads.start_next(2, 0));
        let mut waiting = reader(&mut reads);
        reads.fail_all(&ProposeError::Stopped);
        assert!(matches!(answer(&mut kept), Some(Err(ProposeError::Stopped))));
        assert!(matches!(answer(&mut waiting), Some(Err(ProposeError::Stopped))));
    }
}
