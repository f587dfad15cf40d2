//! The highly-available control plane: 3 and 5 `shoal server` managers replicating the state
//! with Raft over gRPC, as separate processes on loopback. Leader crashes, a follower catching up
//! from a snapshot, full restarts, a stress of concurrent writes across repeated leader crashes,
//! quorum loss and recovery, membership changes, backup/restore and `--force-new-cluster`.
//! Writes are `up -d` of a stack with no replicas (no containers, no Docker).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use shoal_tests::managers::{alone, manager_entry, poll, share, Managers, SETTLE};
use shoal_tests::Run;

/// Sets the flag when dropped: background writers stop even when the test fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What background writers did: the stacks whose `up -d` exited 0, and the failed runs.
#[derive(Default)]
struct Writes {
    acked: Mutex<Vec<String>>,
    failed: Mutex<Vec<(String, Run)>>,
}

impl Writes {
    fn record(&self, stack: String, out: Run) {
        if out.code == 0 {
            self.acked.lock().unwrap_or_else(PoisonError::into_inner).push(stack);
        } else {
            self.failed.lock().unwrap_or_else(PoisonError::into_inner).push((stack, out));
        }
    }

    fn acked(&self) -> Vec<String> {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn done_count(&self) -> usize {
        self.acked_count() + self.failed.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// The failed writes, one line each: stack, exit code, what the CLI said.
    fn failures(&self) -> Vec<String> {
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        failed.iter().map(|(stack, out)| format!("{stack}: exit {}: {}", out.code, out.stderr.trim())).collect()
    }
}

/// Waits until `writes` has `count` acknowledged writes.
fn wait_for_acked(writes: &Writes, count: usize) {
    poll(&format!("{count} acknowledged writes"), Duration::from_secs(60), || match writes.acked_count() {
        n if n >= count => Ok(()),
        n => Err(format!("{n} acknowledged, failures: {:?}", writes.failures())),
    });
}

/// Waits until manager `i`'s own copy holds every stack of `stacks`; returns that copy.
fn wait_for_all(m: &Managers, i: usize, stacks: &[String]) -> BTreeMap<String, u64> {
    let name = &m.list[i].name;
    poll(&format!("{name} to hold all {} acknowledged stacks", stacks.len()), SETTLE, || {
        let held = m.stacks(i)?;
        let missing: Vec<&String> = stacks.iter().filter(|s| !held.contains_key(*s)).collect();
        if missing.is_empty() {
            Ok(held)
        } else {
            Err(format!("{} missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]))
        }
    })
}

fn u64_of(status: &serde_json::Value, key: &str) -> u64 {
    status[key].as_u64().unwrap_or_else(|| panic!("no {key} in the status {status}"))
}

#[test]
fn a_crashed_leader_is_replaced_and_no_acknowledged_write_is_lost() {
    let _machine = share();
    let mut m = Managers::start(3, &[]);
    let leader = m.wait_for_leader(&[0, 1, 2]);
    let old_id = m.list[leader].id;
    let (client, hosts) = (m.client(), m.hosts());
    let writes = Writes::default();
    let stop = AtomicBool::new(false);
    let new_leader = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            for n in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let stack = format!("w{n:03}");
                let out = client.up(&hosts, &stack);
                writes.record(stack, out);
            }
        });
        wait_for_acked(&writes, 5);
        m.kill(leader);
        let survivors = m.running();
        let new_leader = m.wait_for_leader(&survivors);
        assert_ne!(m.list[new_leader].id, old_id, "the killed manager still leads");
        // Writes continue under the new leader.
        let at_election = writes.acked_count();
        wait_for_acked(&writes, at_election + 5);
        new_leader
    });
    let failures = writes.failures();
    let acked = writes.acked();
    assert!(
        failures.is_empty(),
        "{} of {} writes failed across the failover: {failures:#?}",
        failures.len(),
        acked.len()
    );
    for i in m.running() {
        let held = wait_for_all(&m, i, &acked);
        let wrong: Vec<_> = acked.iter().filter(|s| held[*s] != 1).map(|s| (s, held[s])).collect();
        assert!(wrong.is_empty(), "{}: stacks applied other than once: {wrong:?}", m.list[i].name);
    }
    let status = m.status(new_leader, false).expect("the new leader answers a linearizable status");
    assert_eq!(u64_of(&status, "leader"), m.list[new_leader].id);
}

#[test]
fn a_follower_down_while_the_log_is_compacted_catches_up_from_a_snapshot() {
    let _machine = share();
    let mut m = Managers::start(3, &["--snapshot-every", "20"]);
    let leader = m.wait_for_leader(&[0, 1, 2]);
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let client = m.client();
    let mut stacks: Vec<String> = (0..5).map(|n| format!("early{n}")).collect();
    for stack in &stacks {
        client.up_ok(&m.hosts(), stack);
    }
    wait_for_all(&m, follower, &stacks);
    let applied_before = u64_of(&m.status(follower, true).expect("follower status"), "applied_index");
    m.stop(follower);

    let others = m.hosts_of(&m.running());
    for n in 0..60 {
        let stack = format!("late{n:02}");
        client.up_ok(&others, &stack);
        stacks.push(stack);
    }
    let leader = m.wait_for_leader(&m.running());
    let status = m.status(leader, false).expect("leader status");
    let commit = u64_of(&status, "commit_index");
    let first_log = u64_of(&status, "first_log_index");
    assert!(
        first_log > applied_before + 1,
        "the leader's log still starts at {first_log}, and the stopped follower had applied {applied_before}: \
         catching up would not need a snapshot"
    );

    m.restart(follower);
    let caught_up = poll("the restarted follower to catch up", SETTLE, || {
        let s = m.status(follower, true)?;
        let (applied, snapshot) = (u64_of(&s, "applied_index"), u64_of(&s, "snapshot_index"));
        if applied >= commit && snapshot > applied_before {
            Ok(s)
        } else {
            Err(format!("applied {applied} (want {commit}), snapshot at {snapshot} (want > {applied_before})"))
        }
    });
    assert!(u64_of(&caught_up, "snapshot_index") > 0);
    let held = wait_for_all(&m, follower, &stacks);
    assert_eq!(held.len(), stacks.len(), "the follower holds stacks nobody wrote: {held:?}");
}

#[test]
fn all_managers_restarted_keep_the_same_state_and_elect_a_leader() {
    let _machine = share();
    let mut m = Managers::start(3, &[]);
    let client = m.client();
    for n in 0..8 {
        client.up_ok(&m.hosts(), &format!("s{n}"));
    }
    // Some stacks deployed again: revisions 2 and 3.
    client.up_ok(&m.hosts(), "s0");
    client.up_ok(&m.hosts(), "s1");
    client.up_ok(&m.hosts(), "s1");
    let before = client.stacks(&m.hosts(), false).expect("ls");
    assert_eq!((before.len(), before["s0"], before["s1"], before["s2"]), (8, 2, 3, 1), "{before:?}");
    for i in 0..3 {
        m.wait_for_stacks(i, &before);
    }

    for i in 0..3 {
        m.stop(i);
    }
    for i in 0..3 {
        m.restart(i);
    }
    m.wait_for_leader(&[0, 1, 2]);
    for i in 0..3 {
        m.wait_for_stacks(i, &before);
    }
    assert_eq!(client.stacks(&m.hosts(), false).expect("ls"), before);
    client.up_ok(&m.hosts(), "after-restart");
    assert_eq!(client.stacks(&m.hosts(), false).expect("ls").get("after-restart"), Some(&1));
}

/// Concurrent writes (distinct stacks) in flight while the leader is killed and restarted.
const STRESS_WRITES: usize = 1000;
const STRESS_WRITERS: usize = 8;
const STRESS_KILLS: usize = 8;

#[test]
fn writes_under_repeated_leader_crashes_are_each_applied_exactly_once() {
    let _machine = alone();
    let mut m = Managers::start(3, &[]);
    let client = m.client();
    // Each writer starts with another manager (the CLI fails over along its list).
    let host_lists: Vec<String> = (0..3).map(|k| m.hosts_of(&[k, (k + 1) % 3, (k + 2) % 3])).collect();
    let writes = Writes::default();
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let started = Instant::now();
    let kills = std::thread::scope(|s| {
        let _abort = StopOnDrop(&abort);
        for w in 0..STRESS_WRITERS {
            let client = client.clone();
            let (writes, next, abort, hosts) = (&writes, &next, &abort, &host_lists[w % 3]);
            s.spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= STRESS_WRITES || abort.load(Ordering::SeqCst) {
                    break;
                }
                let stack = format!("s{n:04}");
                let out = client.up(hosts, &stack);
                writes.record(stack, out);
            });
        }
        let mut kills = 0;
        for k in 1..=STRESS_KILLS {
            let threshold = k * STRESS_WRITES / (STRESS_KILLS + 1);
            poll(&format!("{threshold} writes done"), Duration::from_secs(120), || match writes.done_count() {
                n if n >= threshold => Ok(()),
                n => Err(format!("{n} done, failures: {:?}", writes.failures())),
            });
            let leader = m.wait_for_leader(&[0, 1, 2]);
            m.kill(leader);
            kills += 1;
            let survivors = m.running();
            m.wait_for_leader(&survivors);
            m.restart(leader);
            let id = m.list[leader].id;
            // Back in the group before the next crash, so that the crash leaves a majority.
            poll("the restarted manager to be reachable from the leader", SETTLE, || {
                let status = m.leader_status()?;
                match manager_entry(&status, id) {
                    Some(e) if e["reachable"] == true && e["matched_index"].as_u64().is_some_and(|x| x > 0) => Ok(()),
                    other => Err(format!("its entry: {other:?}")),
                }
            });
        }
        poll("every write to be done", Duration::from_secs(120), || match writes.done_count() {
            n if n >= STRESS_WRITES => Ok(()),
            n => Err(format!("{n} done")),
        });
        kills
    });
    let elapsed = started.elapsed();
    let acked = writes.acked();
    let failures = writes.failures();
    let summary = format!(
        "{} writes by {STRESS_WRITERS} writers in {elapsed:?}, {kills} leader kills: {} acknowledged, {} failed",
        STRESS_WRITES,
        acked.len(),
        failures.len()
    );
    eprintln!("{summary}; failures: {failures:#?}");
    assert!(kills >= 3, "{summary}");
    assert_eq!(acked.len() + failures.len(), STRESS_WRITES, "writes unaccounted for; {summary}");
    assert!(failures.len() * 50 <= STRESS_WRITES, "too many failed writes (more than 2%); {summary}:\n{failures:#?}");
    for failure in &failures {
        assert!(failure.contains("error:"), "a failed write that does not say why: {failure}; {summary}");
    }

    let leader = m.wait_for_leader(&[0, 1, 2]);
    let final_state = client.stacks(&m.addr(leader), false).expect("ls");
    let attempted: BTreeSet<String> = (0..STRESS_WRITES).map(|n| format!("s{n:04}")).collect();
    let lost: Vec<&String> = acked.iter().filter(|s| !final_state.contains_key(*s)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}; {summary}");
    let twice: Vec<_> = final_state.iter().filter(|(_, rev)| **rev != 1).collect();
    assert!(twice.is_empty(), "stacks not applied exactly once (name, revision): {twice:?}; {summary}");
    let unknown: Vec<_> = final_state.keys().filter(|s| !attempted.contains(*s)).collect();
    assert!(unknown.is_empty(), "stacks nobody wrote: {unknown:?}");
    for i in 0..3 {
        m.wait_for_stacks(i, &final_state);
    }
}

#[test]
fn five_managers_survive_two_losses_and_refuse_writes_fast_after_a_third() {
    let _machine = share();
    let mut m = Managers::start(5, &[]);
    let client = m.client();
    let leader = m.wait_for_leader(&[0, 1, 2, 3, 4]);
    client.up_ok(&m.hosts(), "before");
    let follower = (0..5).find(|i| *i != leader).expect("a follower");
    m.kill(leader);
    m.kill(follower);
    let survivors = m.running();
    let new_leader = m.wait_for_leader(&survivors);
    client.up_ok(&m.hosts(), "after-two-lost");
    for i in m.running() {
        wait_for_all(&m, i, &["before".to_string(), "after-two-lost".to_string()]);
    }

    m.kill(new_leader);
    let started = Instant::now();
    let out = client.up(&m.hosts(), "after-three-lost");
    let took = started.elapsed();
    assert_ne!(out.code, 0, "a write without a quorum succeeded:\n{}", out.stderr);
    assert!(out.stderr.contains("no quorum: "), "refused without saying why:\n{}", out.stderr);
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}:\n{}", out.stderr);
    eprintln!("first write after losing the quorum refused in {took:?}");

    // Once the survivors know the others are gone, the refusal is immediate and exact.
    let survivor = m.running()[0];
    poll("the survivors to see 3 managers unreachable", SETTLE, || {
        let status = m.status(survivor, true)?;
        let reachable =
            status["managers"].as_array().map_or(0, |l| l.iter().filter(|e| e["reachable"] == true).count());
        if reachable == 2 {
            Ok(())
        } else {
            Err(format!("{reachable} reachable"))
        }
    });
    let started = Instant::now();
    let out = client.up(&m.hosts(), "still-no-quorum");
    let took = started.elapsed();
    assert_ne!(out.code, 0, "a write without a quorum succeeded:\n{}", out.stderr);
    assert!(out.stderr.contains("no quorum: 2 of 5 managers reachable"), "{}", out.stderr);
    assert!(took < Duration::from_secs(3), "the refusal took {took:?}");
    eprintln!("write refused in {took:?} once the loss is known");

    for i in m.running() {
        let status = m.status(i, true).expect("--stale cluster status answers without a quorum");
        assert_eq!(u64_of(&status, "answered_by"), m.list[i].id);
        assert_eq!(status["managers"].as_array().map(Vec::len), Some(5), "{status}");
        let held = m.stacks(i).expect("--stale ls answers without a quorum");
        assert!(held.contains_key("before") && held.contains_key("after-two-lost"), "{held:?}");
    }
}

#[test]
fn quorum_lost_refuses_writes_and_comes_back_when_the_managers_do() {
    let _machine = share();
    let mut m = Managers::start(3, &[]);
    let client = m.client();
    let leader = m.wait_for_leader(&[0, 1, 2]);
    client.up_ok(&m.hosts(), "before");
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for f in &followers {
        m.kill(*f);
    }
    let started = Instant::now();
    let out = client.up(&m.hosts(), "refused");
    let took = started.elapsed();
    assert_ne!(out.code, 0, "a write without a quorum succeeded:\n{}", out.stderr);
    assert!(out.stderr.contains("no quorum: 1 of 3 managers reachable"), "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    eprintln!("write without a quorum refused in {took:?}");

    for f in &followers {
        m.restart(*f);
    }
    m.wait_for_leader(&[0, 1, 2]);
    client.up_ok(&m.hosts(), "after");
    let stacks = client.stacks(&m.hosts(), false).expect("ls");
    assert!(stacks.contains_key("before") && stacks.contains_key("after"), "{stacks:?}");
}

#[test]
fn managers_are_demoted_promoted_and_removed() {
    let _machine = share();
    // The last voting manager cannot be demoted.
    let solo = Managers::start(1, &[]);
    let out = solo.client().run(&["-H", &solo.addr(0), "node", "demote", "m1"]);
    assert_ne!(out.code, 0, "the last voting manager was demoted:\n{}", out.stdout);
    assert!(out.stderr.contains("last voting manager"), "{}", out.stderr);
    let status = solo.status(0, false).expect("status");
    assert_eq!(manager_entry(&status, solo.list[0].id).map(|e| e["voter"].clone()), Some(true.into()), "{status}");
    drop(solo);

    let mut m = Managers::start(3, &[]);
    let client = m.client();
    let leader = m.wait_for_leader(&[0, 1, 2]);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f, g) = (followers[0], followers[1]);
    let voter = |m: &Managers, i: usize, want: bool| {
        let (name, id) = (m.list[i].name.clone(), m.list[i].id);
        poll(&format!("{name} to show voter={want}"), SETTLE, || {
            let status = m.leader_status()?;
            match manager_entry(&status, id) {
                Some(e) if e["voter"] == want => Ok(()),
                other => Err(format!("its entry: {other:?}")),
            }
        });
    };

    client.ok(&["-H", &m.hosts(), "node", "demote", &m.list[f].name]);
    voter(&m, f, false);
    client.up_ok(&m.hosts(), "while-demoted");
    client.ok(&["-H", &m.hosts(), "node", "promote", &m.list[f].name]);
    voter(&m, f, true);

    let gone = m.list[g].id;
    m.kill(g);
    poll("the leader to see the killed manager unreachable", SETTLE, || {
        let status = m.leader_status()?;
        match manager_entry(&status, gone) {
            Some(e) if e["reachable"] == false => Ok(()),
            other => Err(format!("its entry: {other:?}")),
        }
    });
    client.ok(&["-H", &m.hosts(), "node", "rm", &m.list[g].name]);
    poll("the removed manager to leave the status", SETTLE, || {
        let status = m.leader_status()?;
        let ids: Vec<u64> =
            status["managers"].as_array().into_iter().flatten().filter_map(|e| e["id"].as_u64()).collect();
        if ids.len() == 2 && !ids.contains(&gone) {
            Ok(())
        } else {
            Err(format!("managers {ids:?}"))
        }
    });
    client.up_ok(&m.hosts(), "after-removal");
    for i in m.running() {
        wait_for_all(&m, i, &["while-demoted".to_string(), "after-removal".to_string()]);
    }
}

#[test]
fn a_backup_restores_into_a_new_cluster_and_a_lone_survivor_forces_a_new_cluster() {
    let _machine = share();
    let mut m = Managers::start(3, &[]);
    let client = m.client();
    for stack in ["a", "b", "c", "b"] {
        client.up_ok(&m.hosts(), stack);
    }
    let expected = client.stacks(&m.hosts(), false).expect("ls");
    assert_eq!(expected.get("b"), Some(&2), "{expected:?}");

    let backup = m.root().join("cluster.backup");
    client.ok(&["-H", &m.hosts(), "cluster", "backup", &backup.to_string_lossy()]);
    let restored = m.add("restored", &["--restore", &backup.to_string_lossy()]);
    m.wait_for_leader(&[restored]);
    m.wait_for_stacks(restored, &expected);
    let status = m.status(restored, false).expect("status of the restored cluster");
    assert_eq!(status["managers"].as_array().map(Vec::len), Some(1), "{status}");
    client.up_ok(&m.addr(restored), "after-restore");

    // Two of the original three are lost for good; the third starts a cluster of its own.
    let leader = m.wait_for_leader(&[0, 1, 2]);
    let keep = (0..3).find(|i| *i != leader).expect("a follower");
    m.wait_for_stacks(keep, &expected);
    for i in (0..3).filter(|i| *i != keep) {
        m.kill(i);
    }
    m.stop(keep);
    m.restart_with(keep, &["--force-new-cluster"]);
    m.wait_for_leader(&[keep]);
    let status = m.status(keep, false).expect("status after --force-new-cluster");
    let managers = status["managers"].as_array().cloned().unwrap_or_default();
    assert_eq!(managers.len(), 1, "{status}");
    assert_eq!((managers[0]["id"].as_u64(), managers[0]["voter"].as_bool()), (Some(m.list[keep].id), Some(true)));
    m.wait_for_stacks(keep, &expected);
    client.up_ok(&m.addr(keep), "after-recovery");
    let mut now = expected.clone();
    now.insert("after-recovery".into(), 1);
    assert_eq!(client.stacks(&m.addr(keep), false).expect("ls"), now);
}
