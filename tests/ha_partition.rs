//! Network partitions of a cluster of three managers, each in its own container on a private
//! Docker network (`support/netcluster.rs`): the manager cut off from the others refuses writes
//! and says why ("no quorum"), the majority side elects a leader (if it lost it) and keeps
//! writing, and once the network heals every manager agrees on the leader, the log position and
//! the stacks — those the majority wrote during the partition, and none of the writes attempted
//! on the minority side (not even the one a cut-off leader had already put in its log).

use std::time::{Duration, Instant};

use shoal_tests::netcluster::{poll, NetCluster, Status};
use shoal_tests::stack::error_lines;
use shoal_tests::Run;

/// Longest wait for an election on the majority side, and for all managers to agree again.
const CONVERGE: Duration = Duration::from_secs(30);
/// A write attempted at the moment of the cut, while the manager still counts the others as
/// reachable, is refused once its request gives up: the raft request timeout of `shoal server`
/// (5 s) for the proposal of a cut-off leader and for the forward of a cut-off follower. Both
/// measure about 5.2 s here.
const FIRST_REFUSAL: Duration = Duration::from_secs(12);
/// Once the cut-off manager has noticed, refusals are immediate.
const FAST_REFUSAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    Leader,
    Follower,
}

fn assert_ok(out: &Run, what: &str) {
    assert_eq!(out.code, 0, "{what} exited {}:\nstdout:\n{}\nstderr:\n{}", out.code, out.stdout, out.stderr);
}

/// A refusal for lack of quorum: non-zero exit, and the error says so first.
fn assert_no_quorum(out: &Run, what: &str) {
    assert_ne!(out.code, 0, "{what} succeeded on the cut-off manager:\n{}", out.stdout);
    let errors = error_lines(&out.stderr);
    assert!(
        errors.first().is_some_and(|e| e.starts_with("error: no quorum:") && e.contains("of 3 managers reachable")),
        "{what} did not say \"no quorum\":\nstderr:\n{}",
        out.stderr
    );
}

fn names(list: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

fn partition_and_heal(cut: Cut) {
    let started = Instant::now();
    let cluster = NetCluster::start(3);
    eprintln!("formed in {:.1?}", started.elapsed());

    // A write every manager has applied before the cut.
    let formed = cluster.status(0, false).expect("a linearizable status from m1");
    let old_leader = formed.leader;
    let leader_name = formed.leader_name().expect("the leader is a listed manager").to_string();
    assert_ok(&cluster.up(0, "before"), "up of `before` through m1");
    poll("every manager to apply `before`", CONVERGE, || {
        let all: Vec<_> = (0..3).map(|i| cluster.stack_names(i)).collect();
        if all.iter().all(|s| s.as_deref() == Some(&["before".to_string()][..])) {
            Ok(())
        } else {
            Err(format!("{all:?}"))
        }
    });

    let isolated = match cut {
        Cut::Leader => cluster.index(&leader_name),
        Cut::Follower => (0..3).find(|&i| cluster.managers[i].name != leader_name).expect("a follower"),
    };
    let majority: Vec<usize> = (0..3).filter(|&i| i != isolated).collect();
    let isolated_name = cluster.managers[isolated].name.clone();
    eprintln!("cutting off {isolated_name} ({cut:?}; leader {leader_name})");

    // The minority. A write at the moment of the cut is refused once its request gives up (see
    // FIRST_REFUSAL); `scale` is a write with no linearizable read before it, unlike `up` ...
    cluster.disconnect(isolated);
    let cut_at = Instant::now();
    let refused = cluster.scale(isolated, "before", 2);
    let first_refusal = cut_at.elapsed();
    assert_no_quorum(&refused, "scale on the cut-off manager right after the cut");
    assert!(first_refusal < FIRST_REFUSAL, "the first refusal took {first_refusal:?}");
    if cut == Cut::Leader {
        // The old leader appended it to its log; it must never be committed.
        let status = cluster.status(isolated, true).expect("the cut-off manager's status");
        assert!(
            status.last_log_index > status.commit_index,
            "the refused write is not in the old leader's log: {status:?}"
        );
    }
    // ... and once it sees the others unreachable, every write or linearizable read at once.
    poll("the cut-off manager to see the others unreachable", CONVERGE, || {
        let status = cluster.status(isolated, true).ok_or("no status")?;
        let others_down = status.managers.iter().filter(|m| m.name != isolated_name).all(|m| !m.reachable);
        if others_down {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    });
    let mut fast_refusals = Vec::new();
    let attempts: [(&str, &dyn Fn() -> Run); 3] = [
        ("up", &|| cluster.up(isolated, "minority")),
        ("scale", &|| cluster.scale(isolated, "before", 3)),
        ("linearizable ls", &|| cluster.shoal(isolated, &["ls"])),
    ];
    for (what, attempt) in attempts {
        let t = Instant::now();
        let refused = attempt();
        let took = t.elapsed();
        assert_no_quorum(&refused, &format!("{what} on the cut-off manager"));
        assert!(refused.stderr.contains("no quorum: 1 of 3 managers reachable"), "{what}: {}", refused.stderr);
        assert!(took < FAST_REFUSAL, "the cut-off manager took {took:?} to refuse {what}");
        fast_refusals.push(format!("{what} {took:.1?}"));
    }
    eprintln!("refusals on the minority side: first after {first_refusal:.1?}, then {}", fast_refusals.join(", "));

    // The majority: a leader among them (the same one if only a follower was cut off), and writes
    // through each of them (through a follower, forwarded to the leader).
    let t = Instant::now();
    let majority_view: Status = poll("a leader on the majority side", CONVERGE, || {
        let views: Vec<Status> =
            majority.iter().map(|&i| cluster.status(i, true)).collect::<Option<_>>().ok_or("no status")?;
        let leader = views[0].leader;
        let agreed = views.iter().all(|v| v.leader == leader)
            && majority.iter().any(|&i| views[0].leader_name() == Some(cluster.managers[i].name.as_str()));
        if agreed {
            Ok(views[0].clone())
        } else {
            Err(format!("{views:?}"))
        }
    });
    match cut {
        Cut::Leader => assert_ne!(majority_view.leader, old_leader, "the cut-off leader still leads the majority"),
        Cut::Follower => assert_eq!(majority_view.leader, old_leader, "losing a follower changed the leader"),
    }
    eprintln!(
        "majority leader {} (term {}) after {:.1?}",
        majority_view.leader_name().unwrap_or("?"),
        majority_view.term,
        t.elapsed()
    );
    let mut expected = vec!["before"];
    let during: Vec<String> = majority.iter().map(|&i| format!("during-{}", cluster.managers[i].name)).collect();
    for (&i, project) in majority.iter().zip(&during) {
        assert_ok(&cluster.up(i, project), &format!("up of `{project}` on the majority side"));
        expected.push(project);
    }
    let expected = names(&expected);
    for &i in &majority {
        // A write is answered once the manager that took it has applied it; the other catches up.
        poll("the majority to apply its writes", CONVERGE, || match cluster.stack_names(i) {
            Some(stacks) if stacks == expected => Ok(()),
            other => Err(format!("{} lists {other:?}", cluster.managers[i].name)),
        });
    }
    assert_eq!(
        cluster.stack_names(isolated),
        Some(names(&["before"])),
        "the cut-off manager's own copy changed during the partition"
    );

    // Heal: everyone agrees on the leader, the log (no divergent tail left anywhere) and the
    // stacks; the minority's writes are gone (no `minority` stack, no tasks from its scale).
    cluster.connect(isolated);
    let healed_at = Instant::now();
    let agreed = poll("all managers to agree after healing", CONVERGE, || {
        let all = cluster.all_statuses().ok_or("a manager did not answer")?;
        let first = &all[0];
        let same = all.iter().all(|s| {
            s.leader != 0
                && s.leader == first.leader
                && s.term == first.term
                && s.commit_index == first.commit_index
                && s.applied_index == first.commit_index
                && s.last_log_index == first.commit_index
                && s.tasks == 0
                && s.voters() == 3
                && s.managers.iter().all(|m| m.reachable)
        });
        if !same {
            return Err(format!("statuses differ: {all:?}"));
        }
        let stacks: Vec<_> = (0..3).map(|i| cluster.stack_names(i)).collect();
        if stacks.iter().all(|s| s.as_ref() == Some(&expected)) {
            Ok(first.clone())
        } else {
            Err(format!("stacks differ: {stacks:?}"))
        }
    });
    eprintln!(
        "healed in {:.1?}: leader {} term {} commit {}",
        healed_at.elapsed(),
        agreed.leader_name().unwrap_or("?"),
        agreed.term,
        agreed.commit_index
    );
    for i in 0..3 {
        let stacks = cluster.stack_names(i).expect("stacks");
        assert!(
            !stacks.iter().any(|s| s == "minority"),
            "{} lists the minority's write: {stacks:?}",
            cluster.managers[i].name
        );
    }

    // The formerly cut-off manager takes writes again, and every manager sees them.
    assert_ok(&cluster.up(isolated, "after"), "up on the healed manager");
    let mut expected = expected;
    expected.push("after".into());
    expected.sort();
    poll("every manager to apply `after`", CONVERGE, || {
        let stacks: Vec<_> = (0..3).map(|i| cluster.stack_names(i)).collect();
        if stacks.iter().all(|s| s.as_ref() == Some(&expected)) {
            Ok(())
        } else {
            Err(format!("{stacks:?}"))
        }
    });
    eprintln!("done in {:.1?}", started.elapsed());
}

#[test]
fn minority_partition_cannot_write_and_says_so_the_majority_can_and_after_healing_all_agree() {
    partition_and_heal(Cut::Leader);
}

#[test]
fn a_cut_off_follower_cannot_write_the_leader_stays_and_the_follower_catches_up() {
    partition_and_heal(Cut::Follower);
}
