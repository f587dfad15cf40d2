//! Container lifecycle against the real engine: health, exit codes, stop with grace period,
//! logs, events, and the task runner (including adoption after a restart).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_agent::engine::{EventFilter, EventKind, HealthStatus, LogOptions, StopOutcome, WaitCondition, WaitOutcome};
use shoal_agent::runner::{TaskRunner, TaskState, TaskStatus};
use shoal_agent::spec::*;
use shoal_agent::{labels, Engine};
use support::*;
use tokio::sync::mpsc;

fn healthcheck(cmd: &str) -> HealthcheckSpec {
    HealthcheckSpec {
        test: vec!["CMD-SHELL".into(), cmd.into()],
        interval: Some(Duration::from_millis(200)),
        timeout: Some(Duration::from_secs(2)),
        retries: Some(1),
        ..Default::default()
    }
}

#[tokio::test]
async fn becomes_healthy_and_the_event_says_so() {
    let engine = engine().await;
    let t = TestRun::new("healthy");
    let mut s = t.spec("a");
    s.healthcheck = Some(healthcheck("true"));
    let id = engine.create(&s).await.unwrap();
    let mut events = engine.events(EventFilter { container: Some(id.clone()), ..Default::default() }).await.unwrap();
    engine.start(&id).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), engine.wait(&id, WaitCondition::Health))
        .await
        .expect("healthy within 30s")
        .unwrap();
    assert_eq!(outcome, WaitOutcome::Healthy);
    assert_eq!(engine.inspect(&id).await.unwrap().health, Some(HealthStatus::Healthy));
    // The event stream saw start, then the health transition.
    let mut kinds = Vec::new();
    while !kinds.contains(&EventKind::Health(HealthStatus::Healthy)) {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("health event within 30s")
            .expect("event stream open")
            .unwrap();
        assert_eq!(ev.container_id, id);
        assert_eq!(ev.labels.get(TEST_LABEL), Some(&t.id));
        kinds.push(ev.kind);
    }
    assert_eq!(kinds[0], EventKind::Start);
}

#[tokio::test]
async fn becomes_unhealthy() {
    let engine = engine().await;
    let t = TestRun::new("unhealthy");
    let mut s = t.spec("a");
    s.healthcheck = Some(healthcheck("exit 1"));
    let id = engine.create(&s).await.unwrap();
    engine.start(&id).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), engine.wait(&id, WaitCondition::Health))
        .await
        .expect("unhealthy within 30s")
        .unwrap();
    assert_eq!(outcome, WaitOutcome::Unhealthy);
}

#[tokio::test]
async fn waiting_for_health_without_a_healthcheck_is_an_error() {
    let engine = engine().await;
    let t = TestRun::new("nohc");
    let id = engine.create(&t.spec("a")).await.unwrap();
    engine.start(&id).await.unwrap();
    let err = engine.wait(&id, WaitCondition::Health).await.unwrap_err();
    assert!(err.to_string().contains("no healthcheck"), "{err}");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let engine = engine().await;
    let t = TestRun::new("exit");
    for (service, code) in [("ok", 0), ("three", 3), ("big", 201)] {
        let mut s = t.spec(service);
        s.command = Some(vec!["sh".into(), "-c".into(), format!("exit {code}")]);
        let id = engine.create(&s).await.unwrap();
        engine.start(&id).await.unwrap();
        let outcome = engine.wait(&id, WaitCondition::Exit).await.unwrap();
        assert_eq!(outcome, WaitOutcome::Exited { code, oom_killed: false });
        assert_eq!(engine.inspect(&id).await.unwrap().exit_code, Some(code));
    }
}

#[tokio::test]
async fn stop_waits_out_the_grace_period_for_a_process_ignoring_sigterm_then_kills() {
    let engine = engine().await;
    let t = TestRun::new("stubborn");
    let mut s = t.spec("a");
    // PID 1 without an init has no default SIGTERM action: `sleep` ignores the stop signal.
    s.init = Some(false);
    let id = engine.create(&s).await.unwrap();
    engine.start(&id).await.unwrap();
    let grace = Duration::from_secs(2);
    let t0 = Instant::now();
    let outcome = engine.stop(&id, grace).await.unwrap();
    let elapsed = t0.elapsed();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(elapsed >= grace, "stopped after {elapsed:?}, before the grace period");
    let state = engine.inspect(&id).await.unwrap();
    assert!(!state.is_running());
    assert_eq!(state.exit_code, Some(137));
}

#[tokio::test]
async fn stop_is_prompt_when_the_process_honours_the_signal() {
    let engine = engine().await;
    let t = TestRun::new("prompt");
    let s = t.spec("a"); // init: true forwards SIGTERM to sleep, which then dies
    let id = engine.create(&s).await.unwrap();
    engine.start(&id).await.unwrap();
    let grace = Duration::from_secs(20);
    let t0 = Instant::now();
    assert_eq!(engine.stop(&id, grace).await.unwrap(), StopOutcome::Exited);
    assert!(t0.elapsed() < grace);
    assert_eq!(engine.stop(&id, grace).await.unwrap(), StopOutcome::AlreadyStopped);
}

#[tokio::test]
async fn logs_stream_stdout_and_stderr() {
    let engine = engine().await;
    let t = TestRun::new("logs");
    let mut s = t.spec("a");
    s.command = Some(vec!["sh".into(), "-c".into(), "echo out-line; echo err-line >&2".into()]);
    let id = engine.create(&s).await.unwrap();
    engine.start(&id).await.unwrap();
    engine.wait(&id, WaitCondition::Exit).await.unwrap();
    let chunks: Vec<_> = engine.logs(&id, LogOptions { follow: true, ..Default::default() }).collect().await;
    let mut out = String::new();
    let mut err = String::new();
    for c in chunks {
        let c = c.unwrap();
        let text = String::from_utf8_lossy(&c.data).to_string();
        match c.stream {
            shoal_agent::engine::LogStream::Stderr => err.push_str(&text),
            _ => out.push_str(&text),
        }
    }
    assert_eq!(out, "out-line\n");
    assert_eq!(err, "err-line\n");
}

#[tokio::test]
async fn list_finds_containers_by_label_and_remove_is_idempotent() {
    let engine = engine().await;
    let t = TestRun::new("list");
    let a = engine.create(&t.spec("a")).await.unwrap();
    let b = engine.create(&t.spec("b")).await.unwrap();
    let found = engine.list(&[(TEST_LABEL, &t.id)]).await.unwrap();
    let mut ids: Vec<_> = found.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    let mut want = vec![a.clone(), b];
    want.sort();
    assert_eq!(ids, want);
    let only_a = engine.list(&[(TEST_LABEL, &t.id), (labels::SERVICE, "a")]).await.unwrap();
    assert_eq!(only_a.len(), 1);
    engine.remove(&a, Default::default()).await.unwrap();
    engine.remove(&a, Default::default()).await.unwrap();
    assert!(matches!(engine.inspect(&a).await, Err(shoal_agent::EngineError::ContainerNotFound(_))));
}

/// Task statuses from the runner, buffered per task so waiting for one task's state does not
/// swallow another's.
struct Inbox {
    rx: mpsc::Receiver<TaskStatus>,
    pending: Vec<TaskStatus>,
}

impl Inbox {
    fn new(rx: mpsc::Receiver<TaskStatus>) -> Self {
        Inbox { rx, pending: Vec::new() }
    }

    async fn next(&mut self, task: &str) -> TaskStatus {
        if let Some(i) = self.pending.iter().position(|s| s.task_id == task) {
            return self.pending.remove(i);
        }
        loop {
            let s = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no status for {task} within 30s"))
                .expect("status channel open");
            if s.task_id == task {
                return s;
            }
            self.pending.push(s);
        }
    }

    async fn until(&mut self, task: &str, want: &TaskState) -> Vec<TaskStatus> {
        let mut seen = Vec::new();
        loop {
            let s = self.next(task).await;
            let done = &s.state == want;
            seen.push(s);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn runner_reports_states_and_adopts_after_restart() {
    let engine = Arc::new(engine().await);
    let t = TestRun::new("runner");
    let node = format!("node-{}", t.id);
    let mut web = t.spec("web");
    web.healthcheck = Some(healthcheck("true"));
    let mut job = t.spec("job");
    job.identity.task_id = "task-job".into();

    let (web_id, job_id) = {
        let (tx, rx) = mpsc::channel(64);
        let mut inbox = Inbox::new(rx);
        let runner = TaskRunner::start(engine.clone(), node.clone(), tx).await.unwrap();
        runner.run(web.clone());
        runner.run(job.clone());
        let states: Vec<_> =
            inbox.until("task-web-1", &TaskState::Healthy).await.into_iter().map(|s| s.state).collect();
        assert_eq!(states, vec![TaskState::Created, TaskState::Starting, TaskState::Running, TaskState::Healthy]);
        inbox.until("task-job", &TaskState::Running).await;
        (runner.container_id("task-web-1").unwrap(), runner.container_id("task-job").unwrap())
        // The runner (the "agent") goes away here; its containers keep running.
    };

    let (tx, rx) = mpsc::channel(64);
    let mut inbox = Inbox::new(rx);
    let runner = TaskRunner::start(engine.clone(), node.clone(), tx).await.unwrap();
    let mut adopted = runner.adopt().await.unwrap();
    adopted.sort();
    assert_eq!(adopted, vec!["task-job".to_string(), "task-web-1".to_string()]);
    let s = inbox.next("task-web-1").await;
    assert_eq!(s.state, TaskState::Healthy);
    assert_eq!(s.container_id.as_deref(), Some(web_id.as_str()));
    // Re-assigning the adopted task does not create another container.
    runner.run(web.clone());
    let for_task = engine.list(&[(labels::NODE, &node), (labels::TASK, "task-web-1")]).await.unwrap();
    assert_eq!(for_task.len(), 1);
    assert_eq!(for_task[0].id, web_id);

    // The adopted job is still watched: make it exit and see the code.
    inbox.until("task-job", &TaskState::Running).await;
    engine.stop(&job_id, Duration::from_secs(10)).await.unwrap();
    let last = inbox.until("task-job", &TaskState::Exited { code: 143 }).await.pop().unwrap();
    assert_eq!(last.message, "exited with code 143 (killed by signal 15)");

    runner.remove("task-web-1", true).await.unwrap();
    assert!(matches!(engine.inspect(&web_id).await, Err(shoal_agent::EngineError::ContainerNotFound(_))));
}

#[tokio::test]
async fn runner_reports_a_failed_start_with_the_engine_reason() {
    let engine = Arc::new(engine().await);
    let t = TestRun::new("badstart");
    let (tx, rx) = mpsc::channel(64);
    let mut inbox = Inbox::new(rx);
    let runner = TaskRunner::start(engine.clone(), format!("node-{}", t.id), tx).await.unwrap();
    let mut s = t.spec("a");
    s.command = Some(vec!["/no/such/binary".into()]);
    s.init = Some(false);
    runner.run(s);
    let last = loop {
        let st = inbox.next("task-a-1").await;
        if st.state.is_terminal() {
            break st;
        }
    };
    let TaskState::Failed { reason } = &last.state else {
        panic!("expected a failure, got {last:?}");
    };
    assert!(reason.contains("/no/such/binary"), "{reason}");
}

/// Two agents on one engine: a lost node's stopped container keeps the slot's name, and the
/// replacement on another node is created under a name of its own; a name this node's own
/// container holds stays an error.
#[tokio::test]
async fn runner_renames_a_container_whose_name_another_nodes_container_holds() {
    let engine = Arc::new(engine().await);
    let t = TestRun::new("takenname");
    let mut lost = t.spec("web");
    lost.identity.node_id = format!("lost-{}", t.id);
    let lost_id = engine.create(&lost).await.unwrap();
    let name = labels::container_name(&lost);
    // The engine names a taken name as such.
    let err = engine.create(&lost).await.unwrap_err();
    assert!(matches!(&err, shoal_agent::EngineError::NameInUse { name: n } if *n == name), "{err}");

    let node = format!("node-{}", t.id);
    let (tx, rx) = mpsc::channel(64);
    let mut inbox = Inbox::new(rx);
    let runner = TaskRunner::start(engine.clone(), node.clone(), tx).await.unwrap();
    let mut replacement = t.spec("web");
    replacement.identity.task_id = "task-web-2".into();
    runner.run(replacement);
    let running = inbox.until("task-web-2", &TaskState::Running).await.pop().unwrap();
    let renamed = format!("{name}-ttask-web-2");
    assert_eq!(running.container_name.as_deref(), Some(renamed.as_str()));
    let created = engine.inspect(&renamed).await.unwrap();
    assert_eq!(created.labels.get(labels::NODE), Some(&node));
    assert_eq!(created.labels.get(TEST_LABEL), Some(&t.id), "the renamed container is labelled for cleanup");
    assert_eq!(engine.inspect(&name).await.unwrap().id, lost_id, "the other node's container is left alone");

    // A name this node's own container holds is refused as before.
    let mut own = t.spec("web");
    own.identity.task_id = "task-web-3".into();
    own.container_name = Some(renamed.clone());
    runner.run(own);
    let failed = loop {
        let s = inbox.next("task-web-3").await;
        if s.state.is_terminal() {
            break s;
        }
    };
    let TaskState::Failed { reason } = &failed.state else { panic!("expected a failure, got {failed:?}") };
    assert!(reason.contains(&format!("the container name {renamed} is already in use")), "{reason}");
}
