//! Runner behaviour against the mock engine, on tokio's paused clock (deterministic timing).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::*;
use crate::engine::mock::{MockBehavior, MockEngine};
use crate::spec::TaskIdentity;

fn spec(image: &str, task: &str) -> ContainerSpec {
    ContainerSpec::new(
        TaskIdentity {
            project: "p".into(),
            service: "svc".into(),
            container_number: task.trim_start_matches('t').parse().unwrap_or(1),
            config_hash: "h".into(),
            node_id: "node-1".into(),
            task_id: task.into(),
        },
        image,
    )
}

async fn runner(engine: &MockEngine) -> (TaskRunner<MockEngine>, mpsc::Receiver<TaskStatus>) {
    let (tx, rx) = mpsc::channel(64);
    let r = TaskRunner::start(Arc::new(engine.clone()), "node-1", tx).await.unwrap();
    (r, rx)
}

/// Receives statuses of `task` until one satisfies `done`; returns all of them in order. With the
/// clock paused, a hang shows up as tokio's "time is frozen and no task is runnable" timeout.
async fn until(rx: &mut mpsc::Receiver<TaskStatus>, task: &str, done: impl Fn(&TaskState) -> bool) -> Vec<TaskState> {
    let mut seen = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(3600), rx.recv())
            .await
            .expect("no status within the deadline")
            .expect("status channel closed");
        if s.task_id != task {
            continue;
        }
        let stop = done(&s.state);
        seen.push(s.state);
        if stop {
            return seen;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn reports_lifecycle_through_health_to_exit() {
    let engine = MockEngine::new();
    engine.behave(
        "web",
        MockBehavior {
            health: vec![
                (Duration::from_secs(2), HealthStatus::Healthy),
                (Duration::from_secs(3), HealthStatus::Unhealthy),
            ],
            exit_after: Some((Duration::from_secs(10), 3)),
            ..Default::default()
        },
    );
    let (r, mut rx) = runner(&engine).await;
    r.run(spec("web", "t1"));
    let states = until(&mut rx, "t1", TaskState::is_terminal).await;
    assert_eq!(
        states,
        vec![
            TaskState::Created,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Healthy,
            TaskState::Unhealthy,
            TaskState::Exited { code: 3 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn start_failure_and_missing_image_fail_with_reasons() {
    let engine = MockEngine::new();
    engine.only_images(["broken"]);
    engine.behave(
        "broken",
        MockBehavior {
            start_failure: Some("exec: \"nope\": executable file not found in $PATH".into()),
            ..Default::default()
        },
    );
    let (r, mut rx) = runner(&engine).await;
    r.run(spec("broken", "t1"));
    let states = until(&mut rx, "t1", TaskState::is_terminal).await;
    let TaskState::Failed { reason } = states.last().unwrap() else { panic!("{states:?}") };
    assert!(reason.contains("starting the container failed") && reason.contains("nope"));

    r.run(spec("absent", "t2"));
    let states = until(&mut rx, "t2", TaskState::is_terminal).await;
    let TaskState::Failed { reason } = &states[0] else { panic!("{states:?}") };
    assert!(reason.contains("image absent not found locally"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn oom_kill_is_a_failure_that_says_so() {
    let engine = MockEngine::new();
    engine.behave(
        "hog",
        MockBehavior { exit_after: Some((Duration::from_secs(1), 137)), oom: true, ..Default::default() },
    );
    let (r, mut rx) = runner(&engine).await;
    r.run(spec("hog", "t1"));
    let states = until(&mut rx, "t1", TaskState::is_terminal).await;
    let TaskState::Failed { reason } = states.last().unwrap() else { panic!("{states:?}") };
    assert!(reason.contains("out of memory"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn stop_waits_out_the_grace_period_then_reports_the_kill() {
    let engine = MockEngine::new();
    engine.behave("stubborn", MockBehavior { ignores_stop_signal: true, ..Default::default() });
    let (r, mut rx) = runner(&engine).await;
    let mut s = spec("stubborn", "t1");
    s.stop_grace_period = Some(Duration::from_secs(4));
    r.run(s);
    until(&mut rx, "t1", |s| *s == TaskState::Running).await;
    let t0 = tokio::time::Instant::now();
    assert_eq!(r.stop("t1").await.unwrap(), StopOutcome::Killed);
    assert!(t0.elapsed() >= Duration::from_secs(4));
    let states = until(&mut rx, "t1", TaskState::is_terminal).await;
    assert_eq!(states, vec![TaskState::Exited { code: 137 }]);
}

#[tokio::test(start_paused = true)]
async fn adopts_existing_containers_instead_of_recreating() {
    let engine = MockEngine::new();
    engine.behave("job", MockBehavior { exit_after: Some((Duration::from_secs(30), 0)), ..Default::default() });
    {
        let (r, mut rx) = runner(&engine).await;
        r.run(spec("job", "t1"));
        r.run(spec("job", "t2"));
        until(&mut rx, "t1", |s| *s == TaskState::Running).await;
        until(&mut rx, "t2", |s| *s == TaskState::Running).await;
        // The agent "restarts": this runner goes away, the containers stay.
    }
    // Another node's container must not be adopted.
    let mut foreign = spec("job", "t9");
    foreign.identity.node_id = "node-2".into();
    engine.create(&foreign).await.unwrap();
    assert_eq!(engine.container_count(), 3);

    let (r, mut rx) = runner(&engine).await;
    let mut adopted = r.adopt().await.unwrap();
    adopted.sort();
    assert_eq!(adopted, vec!["t1".to_string(), "t2".to_string()]);
    assert_eq!(until(&mut rx, "t1", |_| true).await, vec![TaskState::Running]);
    // Re-assigning an adopted task does not create a second container.
    r.run(spec("job", "t1"));
    assert_eq!(engine.container_count(), 3);
    // The adopted container is still watched: its exit is reported.
    assert_eq!(until(&mut rx, "t1", TaskState::is_terminal).await, vec![TaskState::Exited { code: 0 }]);
}

#[tokio::test(start_paused = true)]
async fn adoption_leaves_a_never_started_container_until_its_task_should_run() {
    let engine = MockEngine::new();
    let id = engine.create(&spec("idle", "t1")).await.unwrap();
    let (r, mut rx) = runner(&engine).await;
    r.adopt().await.unwrap();
    assert_eq!(until(&mut rx, "t1", |_| true).await, vec![TaskState::Created]);
    // Whatever runs meanwhile (the paused clock jumps ahead once every task is idle), adoption
    // alone does not start it: its dependencies may not be ready.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.inspect(&id).await.unwrap().status, ContainerStatus::Created);

    r.start_adopted("t1").await;
    assert_eq!(until(&mut rx, "t1", |s| *s == TaskState::Running).await, vec![TaskState::Starting, TaskState::Running]);
    // Only once: a running container is left alone.
    r.start_adopted("t1").await;
    assert_eq!(engine.inspect(&id).await.unwrap().status, ContainerStatus::Running);
    assert!(rx.try_recv().is_err(), "a second start_adopted reported something");
}

#[tokio::test(start_paused = true)]
async fn an_adopted_never_started_container_can_be_removed_without_starting() {
    let engine = MockEngine::new();
    engine.create(&spec("idle", "t1")).await.unwrap();
    let (r, mut rx) = runner(&engine).await;
    r.adopt().await.unwrap();
    assert_eq!(until(&mut rx, "t1", |_| true).await, vec![TaskState::Created]);
    r.remove("t1", false).await.unwrap();
    assert_eq!(engine.container_count(), 0);
    r.start_adopted("t1").await;
    assert!(r.tasks().is_empty());
}

#[tokio::test(start_paused = true)]
async fn removal_outside_shoal_is_reported_but_our_own_is_not() {
    let engine = MockEngine::new();
    let (r, mut rx) = runner(&engine).await;
    r.run(spec("x", "t1"));
    r.run(spec("x", "t2"));
    until(&mut rx, "t1", |s| *s == TaskState::Running).await;
    until(&mut rx, "t2", |s| *s == TaskState::Running).await;

    let id = r.container_id("t1").unwrap();
    engine.remove(&id, RemoveOptions { force: true, volumes: false }).await.unwrap();
    let states = until(&mut rx, "t1", TaskState::is_terminal).await;
    assert_eq!(states, vec![TaskState::Failed { reason: "the container was removed outside Shoal".into() }]);

    r.remove("t2", false).await.unwrap();
    assert_eq!(r.tasks(), vec!["t1".to_string()]);
    assert_eq!(engine.container_count(), 0);
    // Nothing about t2 follows its removal.
    r.run(spec("x", "t3"));
    let next = until(&mut rx, "t3", |_| true).await;
    assert_eq!(next, vec![TaskState::Created]);
}

#[tokio::test(start_paused = true)]
async fn run_takes_over_an_existing_container_of_the_same_task() {
    let engine = MockEngine::new();
    let id = engine.create(&spec("x", "t1")).await.unwrap();
    let (r, mut rx) = runner(&engine).await;
    r.run(spec("x", "t1"));
    assert_eq!(until(&mut rx, "t1", |s| *s == TaskState::Running).await, vec![TaskState::Starting, TaskState::Running]);
    assert_eq!(r.container_id("t1"), Some(id));
    assert_eq!(engine.container_count(), 1);
}

/// Receives statuses of `task` until its state satisfies `done`; returns that last status whole.
async fn status_until(
    rx: &mut mpsc::Receiver<TaskStatus>,
    task: &str,
    done: impl Fn(&TaskState) -> bool,
) -> TaskStatus {
    loop {
        let s = tokio::time::timeout(Duration::from_secs(3600), rx.recv())
            .await
            .expect("no status within the deadline")
            .expect("status channel closed");
        if s.task_id == task && done(&s.state) {
            return s;
        }
    }
}

/// The spec of task `task` of slot `slot` on `node`: its container is `p-svc-<slot>`.
fn slot_spec(node: &str, task: &str, slot: u32) -> ContainerSpec {
    let mut spec = spec("x", task);
    spec.identity.node_id = node.into();
    spec.identity.container_number = slot;
    spec
}

#[tokio::test(start_paused = true)]
async fn a_name_another_nodes_container_holds_gets_a_renamed_container() {
    let engine = MockEngine::new();
    // A lost node's container of slot 3, stopped but not removed, keeps the name p-svc-3.
    let lost = engine.create(&slot_spec("node-2", "12", 3)).await.unwrap();
    let (r, mut rx) = runner(&engine).await;
    r.run(slot_spec("node-1", "17", 3));
    let running = status_until(&mut rx, "17", |s| *s == TaskState::Running).await;
    assert_eq!(running.container_name.as_deref(), Some("p-svc-3-t17"));
    let created = engine.inspect("p-svc-3-t17").await.unwrap();
    assert_eq!(created.labels.get(labels::NODE).map(String::as_str), Some("node-1"));
    assert_eq!(engine.inspect("p-svc-3").await.unwrap().id, lost, "the other node's container is left alone");

    // The renamed container is this node's: after a restart the agent adopts it under that name.
    drop(r);
    let (r, mut rx) = runner(&engine).await;
    assert_eq!(r.adopt().await.unwrap(), vec!["17".to_string()]);
    let adopted = status_until(&mut rx, "17", |_| true).await;
    assert_eq!((adopted.state, adopted.container_name.as_deref()), (TaskState::Running, Some("p-svc-3-t17")));
    assert_eq!(engine.container_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_name_a_newer_task_or_another_replica_of_this_node_holds_is_still_an_error() {
    let engine = MockEngine::new();
    // A newer task's container of the same replica: the manager does not give up on that one
    // for an older task.
    let newer = engine.create(&slot_spec("node-1", "19", 3)).await.unwrap();
    let (r, mut rx) = runner(&engine).await;
    r.run(slot_spec("node-1", "17", 3));
    let failed = status_until(&mut rx, "17", TaskState::is_terminal).await;
    let TaskState::Failed { reason } = &failed.state else { panic!("{failed:?}") };
    assert!(reason.contains("the container name p-svc-3 is already in use"), "{reason}");
    assert_eq!((failed.container_name, engine.container_count()), (None, 1));
    assert_eq!(engine.inspect("p-svc-3").await.unwrap().id, newer);
    // Another replica's container that has this task's name (its container_name).
    let mut other = slot_spec("node-1", "5", 4);
    other.container_name = Some("p-svc-6".into());
    engine.create(&other).await.unwrap();
    r.run(slot_spec("node-1", "20", 6));
    let failed = status_until(&mut rx, "20", TaskState::is_terminal).await;
    assert!(matches!(&failed.state, TaskState::Failed { reason } if reason.contains("p-svc-6 is already in use")));
    assert_eq!(engine.container_count(), 2);
    // A container this runner created under its own name reports no other name.
    r.run(slot_spec("node-1", "18", 4));
    assert_eq!(status_until(&mut rx, "18", |s| *s == TaskState::Running).await.container_name, None);
}

#[tokio::test(start_paused = true)]
async fn an_older_task_of_the_same_replica_on_this_node_gives_up_its_name() {
    // A node marked down and back: its task 12 of slot 3 was orphaned and replaced by task 17,
    // placed on the same node, whose container would be created while 12's is still removed.
    let engine = MockEngine::new();
    let (r, mut rx) = runner(&engine).await;
    r.run(slot_spec("node-1", "12", 3));
    let old = status_until(&mut rx, "12", |s| *s == TaskState::Running).await.container_id.expect("a container");
    r.run(slot_spec("node-1", "17", 3));
    let running = status_until(&mut rx, "17", |s| *s == TaskState::Running).await;
    assert_eq!(running.container_name, None, "the replica's own name");
    let held = engine.inspect("p-svc-3").await.unwrap();
    assert_eq!(held.labels.get(labels::TASK).map(String::as_str), Some("17"));
    assert_eq!(engine.container_count(), 1, "task 12's container is gone");
    // The old task's own removal, when it comes, finds nothing left to do.
    r.remove("12", false).await.unwrap();
    assert_eq!(engine.container_count(), 1);
    // Its watcher was retired with it (its disappearance is no news to report); task 17's watches on.
    let watched: Vec<String> = r.shared.lock_watchers().keys().cloned().collect();
    assert_eq!(watched, vec![running.container_id.expect("task 17's container")]);
    assert!(!watched.contains(&old));
}

#[test]
fn renamed_names_are_recognised() {
    assert_eq!(renamed("p-web-3", "17"), "p-web-3-t17");
    assert!(is_renamed("p-web-3-t17", "17"));
    assert!(!is_renamed("p-web-3", "17"));
    assert!(!is_renamed("p-web-3-t17", "7"));
    assert!(!is_renamed("-t17", "17"));
}

#[test]
fn messages_are_human_readable() {
    assert_eq!(describe(&TaskState::Exited { code: 3 }), "exited with code 3");
    assert_eq!(describe(&TaskState::Exited { code: 137 }), "exited with code 137 (killed by signal 9)");
}

#[test]
fn a_taken_port_is_its_own_reason() {
    let port = EngineError::PortInUse { port: Some("8080".into()) };
    assert_eq!(start_failure(&port), port.to_string());
    let other = EngineError::api("starting container c1", "OCI runtime create failed");
    assert_eq!(
        start_failure(&other),
        "starting the container failed: starting container c1: OCI runtime create failed"
    );
}
