//! Session messages cut into pieces of a bounded size.
//!
//! tonic encodes a stream's messages into one buffer that keeps the size of the largest message
//! it ever held, for as long as the stream is open. A manager holds one session stream per node,
//! so a burst of assignments to every node (a deploy, a failover's complete sets) left each
//! stream a buffer that size for good: ≈73 MiB at 10,000 nodes and 100,000 tasks (a jemalloc
//! heap profile of the leader, docs/benchmarks.md). Sent in pieces of at most [`PIECE_BYTES`]
//! (and at least one assignment), one at a time, a stream's buffer stays about one piece.

use prost::Message;
use shoal_proto::v1 as pb;

use crate::store::state::TaskId;

/// Most encoded bytes of assignments in one piece (a piece has at least one assignment).
pub const PIECE_BYTES: usize = 2 * 1024;

/// One session message (`complete` set or diff) as pieces numbered from `sequence`, in order.
/// A diff's pieces are diffs of their own, each applicable alone; a complete set's pieces say
/// `more` up to the last, and go out in pieces only to an agent that reassembles them
/// (`split_complete`). There is always at least one piece, even for nothing.
pub fn pieces(
    sequence: u64,
    complete: bool,
    changed: Vec<pb::Assignment>,
    removed: Vec<TaskId>,
    split_complete: bool,
) -> Vec<pb::Assignments> {
    let groups = if complete && !split_complete { vec![changed] } else { groups(changed) };
    let last = groups.len() - 1;
    let mut pieces: Vec<pb::Assignments> = groups
        .into_iter()
        .enumerate()
        .map(|(i, changed)| pb::Assignments {
            sequence: sequence + i as u64,
            complete,
            changed,
            removed: Vec::new(),
            more: complete && i < last,
        })
        .collect();
    // Ids are 8 bytes each: they ride with the last piece, after the changes.
    if let Some(piece) = pieces.last_mut() {
        piece.removed = removed;
    }
    pieces
}

/// The assignments in consecutive groups of at most [`PIECE_BYTES`] (or one assignment); one
/// empty group for none.
fn groups(changed: Vec<pb::Assignment>) -> Vec<Vec<pb::Assignment>> {
    let mut groups: Vec<Vec<pb::Assignment>> = vec![Vec::new()];
    let mut bytes = 0;
    for assignment in changed {
        let size = assignment.encoded_len();
        if let Some(group) = groups.last_mut().filter(|g| g.is_empty() || bytes + size <= PIECE_BYTES) {
            group.push(assignment);
            bytes += size;
        } else {
            groups.push(vec![assignment]);
            bytes = size;
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(task: u64, spec_bytes: usize) -> pb::Assignment {
        pb::Assignment { task, spec: vec![b'x'; spec_bytes].into(), ..Default::default() }
    }

    fn tasks(pieces: &[pb::Assignments]) -> Vec<Vec<u64>> {
        pieces.iter().map(|p| p.changed.iter().map(|a| a.task).collect()).collect()
    }

    #[test]
    fn a_large_diff_goes_in_numbered_pieces_each_a_diff_within_the_size() {
        let changed: Vec<_> = (1..=10).map(|t| assignment(t, 700)).collect();
        let pieces = pieces(7, false, changed, vec![41, 42], true);
        assert_eq!(tasks(&pieces), vec![vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8], vec![9, 10]]);
        assert_eq!(pieces.iter().map(|p| p.sequence).collect::<Vec<_>>(), vec![7, 8, 9, 10, 11]);
        assert!(pieces.iter().all(|p| !p.complete && !p.more), "a diff's pieces are diffs");
        assert!(pieces.iter().all(|p| p.changed.iter().map(Message::encoded_len).sum::<usize>() <= PIECE_BYTES));
        assert_eq!(pieces.iter().map(|p| p.removed.clone()).collect::<Vec<_>>()[4], vec![41, 42]);
        assert!(pieces[..4].iter().all(|p| p.removed.is_empty()), "removals ride with the last piece");
    }

    #[test]
    fn a_complete_set_in_pieces_says_more_up_to_its_last_piece() {
        let changed: Vec<_> = (1..=3).map(|t| assignment(t, 1500)).collect();
        let split = pieces(1, true, changed.clone(), Vec::new(), true);
        assert_eq!(tasks(&split), vec![vec![1], vec![2], vec![3]]);
        assert_eq!(
            split.iter().map(|p| (p.complete, p.more)).collect::<Vec<_>>(),
            [(true, true), (true, true), (true, false)]
        );

        let whole = pieces(1, true, changed, Vec::new(), false);
        assert_eq!(tasks(&whole), vec![vec![1, 2, 3]], "an agent that does not reassemble gets it whole");
        assert!(!whole[0].more);
    }

    #[test]
    fn an_assignment_larger_than_a_piece_is_a_piece_of_its_own_and_nothing_is_one_piece() {
        let changed = vec![assignment(1, 100), assignment(2, 5000), assignment(3, 100)];
        assert_eq!(tasks(&pieces(1, false, changed, Vec::new(), true)), vec![vec![1], vec![2], vec![3]]);

        let empty = pieces(1, true, Vec::new(), Vec::new(), true);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].complete && !empty[0].more && empty[0].changed.is_empty());
    }
}
