//! Which silent nodes the leader marks down — pure decisions over heartbeat times, so they are
//! unit-tested without a cluster; the dispatcher's monitor applies them.
//!
//! A node is down once it has been silent for `down_after`, with two exceptions, both for
//! silence that says more about this manager than about the nodes:
//! - a **stall**: the monitor itself ran late (its runtime busy, the machine overloaded), so it
//!   could not have taken heartbeats either; that time is not counted ([`forgive_stall`]);
//! - a **mass silence**: in a cluster of [`MassSilence::min_nodes`] or more, more than
//!   [`MassSilence::percent`] of the nodes miss heartbeats at once. Nodes rarely fail together
//!   like that; an overloaded manager or a network fault between it and them does. Marking them
//!   down would move thousands of tasks that are still running onto the few nodes left (and
//!   load the manager further), so until the silence ends a node is marked down only after
//!   [`MassSilence::hold`] without a heartbeat. Kubernetes' node lifecycle controller stops
//!   evicting pods from a zone for the same reason ("full disruption", 55 % of its nodes).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::store::state::NodeId;

/// A check that comes late (more than two periods after the last) means this manager was
/// stalled — its runtime's workers busy or blocked, the machine overloaded: it could not take
/// heartbeats either, so that time does not count against the nodes. Moves every last heartbeat
/// later by the stall (never past `at`); returns the stall.
pub fn forgive_stall(
    seen: &mut HashMap<NodeId, Instant>,
    last_check: Instant,
    at: Instant,
    every: Duration,
) -> Duration {
    let stalled = at.saturating_duration_since(last_check).saturating_sub(every * 2);
    if !stalled.is_zero() {
        for last in seen.values_mut() {
            *last = (*last + stalled).min(at);
        }
    }
    stalled
}

/// When many nodes going silent together is taken for a fault of the manager or the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MassSilence {
    /// Smaller clusters never hold: with a handful of nodes, half of them failing is plausible
    /// and the survivors should take over at once.
    pub min_nodes: usize,
    /// More than this share of the nodes (in percent) missing heartbeats at once is a mass silence.
    pub percent: usize,
    /// How long a node may stay silent during a mass silence before it is marked down. Zero (or
    /// not longer than the down window): never hold.
    pub hold: Duration,
}

impl Default for MassSilence {
    fn default() -> Self {
        // Kubernetes' large-cluster size (50) and unhealthy-zone threshold (55 %).
        MassSilence { min_nodes: 50, percent: 55, hold: Duration::from_secs(30) }
    }
}

/// What one check decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Nodes counted as missing heartbeats (silent for half the down window, heard only after
    /// such a gap, or marked down within the window), of how many.
    pub missing: usize,
    pub population: usize,
    /// Nodes to mark down, with how long each has been silent.
    pub down: Vec<(NodeId, Duration)>,
    /// Nodes silent past the down window but held because of a mass silence.
    pub held: usize,
    /// A mass silence began with this check: how many of how many nodes were missing.
    pub began: Option<(usize, usize)>,
    /// The mass silence that was on ended with this check (no node is held any more).
    pub ended: bool,
}

/// The leader's judge of node silence; keeps what it needs between checks (the mass silence
/// under way, the nodes it recently marked down). A new leader starts a new one.
#[derive(Debug)]
pub struct Liveness {
    down_after: Duration,
    mass: MassSilence,
    /// When the mass silence under way began.
    silence: Option<Instant>,
    /// Nodes marked down by recent checks (when, how many): a wave of silence spread over
    /// several checks counts as one.
    recent_downs: VecDeque<(Instant, usize)>,
    /// Heartbeats heard after a gap of half the down window (when, how many): nodes that were
    /// missing and came back late. An overloaded manager hears many of those while the silence
    /// grows; after nodes really failed, the others keep their pace.
    recent_late: VecDeque<(Instant, usize)>,
}

/// Drops what is older than `window` from a list of (when, count); the sum of the rest.
fn count_recent(list: &mut VecDeque<(Instant, usize)>, at: Instant, window: Duration) -> usize {
    while list.front().is_some_and(|(when, _)| at.saturating_duration_since(*when) > window) {
        list.pop_front();
    }
    list.iter().map(|(_, n)| n).sum()
}

impl Liveness {
    pub fn new(down_after: Duration, mass: MassSilence) -> Self {
        Liveness { down_after, mass, silence: None, recent_downs: VecDeque::new(), recent_late: VecDeque::new() }
    }

    /// The gap after which a node counts as missing (and a heartbeat after it as late).
    pub fn late_after(down_after: Duration) -> Duration {
        down_after / 2
    }

    /// Judges the Ready nodes, each with how long it has been silent, at `at`; `heard_late`:
    /// heartbeats heard since the last check after a gap of [`Liveness::late_after`].
    pub fn judge(&mut self, at: Instant, quiet: &[(NodeId, Duration)], heard_late: usize) -> Verdict {
        if heard_late > 0 {
            self.recent_late.push_back((at, heard_late));
        }
        let recently_down = count_recent(&mut self.recent_downs, at, self.down_after);
        let recently_late = count_recent(&mut self.recent_late, at, self.down_after);
        // A node that missed a heartbeat or so is "missing" already: a mass silence shows in
        // these before the first node reaches the down window, so the whole wave is judged as one.
        let late_after = Self::late_after(self.down_after);
        let silent_now = quiet.iter().filter(|(_, q)| *q > late_after).count();
        let population = quiet.len() + recently_down;
        let missing = (silent_now + recently_down + recently_late).min(population);
        let holds = self.mass.hold > self.down_after;
        let mass = holds && population >= self.mass.min_nodes && missing * 100 > population * self.mass.percent;

        let mut verdict = Verdict { missing, population, ..Verdict::default() };
        if mass && self.silence.is_none() {
            self.silence = Some(at);
            verdict.began = Some((missing, population));
        }
        let window = if self.silence.is_some() { self.mass.hold } else { self.down_after };
        for (id, q) in quiet {
            if *q > window {
                verdict.down.push((id.clone(), *q));
            } else if *q > self.down_after {
                verdict.held += 1;
            }
        }
        // Over once no node is held: every silent node has spoken again or been marked down.
        if self.silence.is_some() && !mass && verdict.held == 0 {
            self.silence = None;
            verdict.ended = true;
        }
        if !verdict.down.is_empty() {
            self.recent_downs.push_back((at, verdict.down.len()));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Duration = Duration::from_secs(6);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// `n` nodes named `{prefix}{i}`, each silent for `quiet`.
    fn nodes(prefix: &str, n: usize, quiet: Duration) -> Vec<(NodeId, Duration)> {
        (0..n).map(|i| (format!("{prefix}{i}"), quiet)).collect()
    }

    fn judge(l: &mut Liveness, at: Instant, groups: &[Vec<(NodeId, Duration)>]) -> Verdict {
        l.judge(at, &groups.concat(), 0)
    }

    #[test]
    fn a_stalled_manager_does_not_count_its_stall_against_the_nodes() {
        let every = Duration::from_millis(500);
        let start = Instant::now();
        let mut seen: HashMap<NodeId, Instant> =
            [("quiet".to_string(), start), ("recent".to_string(), start + secs(3))].into();
        // On time (within two periods): nothing changes.
        let at = start + secs(4);
        assert_eq!(forgive_stall(&mut seen, at - every, at, every), Duration::ZERO);
        assert_eq!(seen["quiet"], start);
        // Ten seconds without a check: 9 s of it was a stall, which no node is blamed for.
        let late = at + secs(10);
        assert_eq!(forgive_stall(&mut seen, at, late, every), secs(9));
        assert_eq!(seen["quiet"], start + secs(9));
        assert_eq!(seen["recent"], start + secs(12));
        assert!(seen.values().all(|last| *last <= late), "never later than now");
    }

    #[test]
    fn a_node_silent_past_the_window_is_down_when_most_nodes_are_heard() {
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let at = Instant::now();
        // 1,000 of 10,000 nodes lost at once (the scale scenario): marked down at once.
        let v = judge(&mut l, at, &[nodes("lost", 1_000, secs(7)), nodes("ok", 9_000, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.began), (1_000, 0, None));
        assert!(v.down.iter().all(|(id, q)| id.starts_with("lost") && *q == secs(7)));
        // Not yet past the window: nothing.
        let v = judge(&mut l, at, &[nodes("late", 10, secs(6)), nodes("ok", 8_990, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.began), (0, 0, None));
    }

    #[test]
    fn most_nodes_silent_at_once_are_held_until_the_hold_or_until_they_speak() {
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let t0 = Instant::now();
        // 7,500 of 10,000 miss heartbeats together (an overloaded manager); none past the window yet.
        let v = judge(&mut l, t0, &[nodes("s", 7_500, secs(4)), nodes("ok", 2_500, secs(1))]);
        assert_eq!(v.began, Some((7_500, 10_000)));
        assert!(v.down.is_empty());
        // Past the down window: held, not down.
        let v = judge(&mut l, t0 + secs(5), &[nodes("s", 7_500, secs(9)), nodes("ok", 2_500, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.began, v.ended), (0, 7_500, None, false));
        // Most speak again; the silence is no longer mass, yet the rest keep their hold (they
        // were part of it) rather than all being marked down the moment the share drops.
        let v = judge(&mut l, t0 + secs(10), &[nodes("s", 500, secs(14)), nodes("ok", 9_500, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.ended), (0, 500, false));
        // Past the hold: down after all, and the silence is over.
        let v = judge(&mut l, t0 + secs(27), &[nodes("s", 500, secs(31)), nodes("ok", 9_500, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.ended), (500, 0, true));
        // Back to the normal window.
        let v = judge(&mut l, t0 + secs(28), &[nodes("x", 3, secs(7)), nodes("ok", 9_500, secs(1))]);
        assert_eq!(v.down.len(), 3);
    }

    #[test]
    fn nodes_heard_only_after_a_gap_count_toward_a_mass_silence() {
        let t0 = Instant::now();
        // An overloaded manager: heartbeats come late, some nodes are silent now, others were
        // and have just been heard. Together most of the cluster.
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let v = l.judge(t0, &[nodes("s", 3_000, secs(7)), nodes("ok", 7_000, secs(1))].concat(), 3_000);
        assert_eq!((v.missing, v.population, v.began), (6_000, 10_000, Some((6_000, 10_000))));
        assert_eq!((v.down.len(), v.held), (0, 3_000));
        // Late heartbeats count for one down window only.
        let v = l.judge(t0 + secs(7), &[nodes("ok", 10_000, secs(1))].concat(), 0);
        assert_eq!((v.missing, v.ended), (0, true));
        // Nodes that really failed: the others keep their pace, a few late ones change nothing.
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let v = l.judge(t0, &[nodes("lost", 1_000, secs(7)), nodes("ok", 9_000, secs(1))].concat(), 50);
        assert_eq!((v.missing, v.down.len(), v.began), (1_050, 1_000, None));
    }

    #[test]
    fn a_silence_that_lasts_still_marks_each_node_down_after_the_hold() {
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let t0 = Instant::now();
        assert!(judge(&mut l, t0, &[nodes("s", 80, secs(20)), nodes("ok", 20, secs(1))]).began.is_some());
        let v = judge(&mut l, t0 + secs(11), &[nodes("s", 80, secs(31)), nodes("ok", 20, secs(1))]);
        assert_eq!(v.down.len(), 80, "a mass silence delays marking down, never forever");
    }

    #[test]
    fn a_wave_marked_down_over_several_checks_counts_as_one_silence() {
        let mut l = Liveness::new(DOWN, MassSilence::default());
        let t0 = Instant::now();
        // 40 of 100 silent: not mass, marked down.
        let v = judge(&mut l, t0, &[nodes("a", 40, secs(7)), nodes("ok", 60, secs(1))]);
        assert_eq!((v.down.len(), v.began), (40, None));
        // A moment later 20 more of the 60 still Ready: with the 40 just marked, 60 of 100.
        let v = judge(&mut l, t0 + secs(1), &[nodes("b", 20, secs(4)), nodes("ok", 40, secs(1))]);
        assert_eq!(v.began, Some((60, 100)));
        let v = judge(&mut l, t0 + secs(4), &[nodes("b", 20, secs(7)), nodes("ok", 40, secs(1))]);
        assert_eq!((v.down.len(), v.held), (0, 20));
        // The held ones speak again: over.
        let v = judge(&mut l, t0 + secs(5), &[nodes("ok", 60, secs(1))]);
        assert!(v.ended);
        // The earlier wave no longer counts once the down window has passed since.
        let v = judge(&mut l, t0 + secs(8), &[nodes("c", 1, secs(7)), nodes("ok", 59, secs(1))]);
        assert_eq!((v.down.len(), v.held, v.began), (1, 0, None));
    }

    #[test]
    fn small_clusters_and_a_zero_hold_never_hold() {
        let t0 = Instant::now();
        let mut small = Liveness::new(DOWN, MassSilence::default());
        let v = judge(&mut small, t0, &[nodes("s", 40, secs(7)), nodes("ok", 9, secs(1))]);
        assert_eq!((v.down.len(), v.began), (40, None), "49 nodes: below min_nodes");
        let mut off = Liveness::new(DOWN, MassSilence { hold: Duration::ZERO, ..MassSilence::default() });
        let v = judge(&mut off, t0, &[nodes("s", 900, secs(7)), nodes("ok", 100, secs(1))]);
        assert_eq!((v.down.len(), v.began), (900, None));
    }

    #[test]
    fn exactly_the_share_is_not_mass() {
        let mut l = Liveness::new(DOWN, MassSilence { percent: 50, ..MassSilence::default() });
        // Half of 200 lost (the quick scale profile's shape): more than the share is needed.
        let v = judge(&mut l, Instant::now(), &[nodes("lost", 100, secs(7)), nodes("ok", 100, secs(1))]);
        assert_eq!((v.down.len(), v.began), (100, None));
    }
}
