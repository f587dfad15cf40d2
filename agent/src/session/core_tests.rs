//! The agent's core against the mock engine, on tokio's paused clock: containers adopted at start
//! meet the manager's assignments, and removals report what could not be cleaned up.

use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::engine::mock::{MockBehavior, MockEngine};
use crate::engine::{ContainerStatus, EventFilter, EventKind, HealthStatus};
use crate::spec::{HealthcheckSpec, NetworkSpec, TaskIdentity};

const NODE: &str = "n1";

fn task_spec(task: u64, image: &str) -> TaskSpec {
    let identity = TaskIdentity {
        project: "p".into(),
        service: "svc".into(),
        container_number: 1,
        config_hash: "h".into(),
        node_id: NODE.into(),
        task_id: task.to_string(),
    };
    TaskSpec { container: crate::spec::ContainerSpec::new(identity, image), ..TaskSpec::default() }
}

fn assignment(task: u64, desired: pb::DesiredState, spec: &TaskSpec) -> pb::Assignment {
    pb::Assignment {
        task,
        desired: desired as i32,
        spec_format: TaskSpec::FORMAT.into(),
        spec: serde_json::to_vec(spec).expect("a spec encodes").into(),
        ..pb::Assignment::default()
    }
}

fn complete_set(changed: Vec<pb::Assignment>) -> pb::Assignments {
    pb::Assignments { sequence: 1, complete: true, changed, ..Default::default() }
}

/// Takes the pending reports until the latest of `task` satisfies `done`, and returns it. With
/// the clock paused, a hang shows up as the deadline passing at once.
async fn report_until(core: &Core<MockEngine>, task: u64, done: impl Fn(&pb::TaskStatus) -> bool) -> pb::TaskStatus {
    loop {
        if let Some(status) = core.reports.take(usize::MAX).into_iter().find(|s| s.task == task && done(s)) {
            return status;
        }
        tokio::time::timeout(Duration::from_secs(3600), core.reports.wait())
            .await
            .expect("no report before the deadline");
    }
}

fn state(s: &pb::TaskStatus) -> pb::TaskState {
    pb::TaskState::try_from(s.state).unwrap_or(pb::TaskState::Unspecified)
}

#[tokio::test(start_paused = true)]
async fn an_adopted_container_is_reported_again_with_what_its_spec_tells() {
    let engine = MockEngine::new();
    // The first check passes only after an hour: the engine says `starting` meanwhile.
    engine.behave(
        "slow",
        MockBehavior { health: vec![(Duration::from_secs(3600), HealthStatus::Healthy)], ..Default::default() },
    );
    let mut spec = task_spec(7, "slow");
    spec.container.healthcheck =
        Some(HealthcheckSpec { test: vec!["CMD".into(), "true".into()], ..HealthcheckSpec::default() });
    // A previous agent (a previous `shoal` process) ran it.
    let id = engine.create(&spec.container).await.expect("create");
    engine.start(&id).await.expect("start");

    let core = Core::start(Arc::new(engine.clone()), NODE).await.expect("core");
    // Seen before any assignment, without the spec that tells it has a healthcheck.
    let seen = report_until(&core, 7, |s| state(s) == pb::TaskState::Running).await;
    assert_eq!(seen.health, pb::Health::Unspecified as i32);

    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Running, &spec)]));
    let now = report_until(&core, 7, |_| true).await;
    assert_eq!((state(&now), now.health), (pb::TaskState::Running, pb::Health::Starting as i32));
    assert_eq!(now.container_id, id);
    assert_eq!(engine.container_count(), 1, "the adopted container was replaced");
}

#[tokio::test(start_paused = true)]
async fn an_adopted_never_started_container_starts_only_once_its_task_should_run() {
    let engine = MockEngine::new();
    let spec = task_spec(7, "app");
    // The previous agent stopped between create and start.
    let id = engine.create(&spec.container).await.expect("create");

    let core = Core::start(Arc::new(engine.clone()), NODE).await.expect("core");
    report_until(&core, 7, |s| state(s) == pb::TaskState::Starting).await;
    // Whatever runs meanwhile (the paused clock jumps ahead once every task is idle), adoption
    // alone starts nothing: the manager gates its dependencies.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(engine.inspect(&id).await.expect("inspect").status, ContainerStatus::Created);

    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Running, &spec)]));
    report_until(&core, 7, |s| state(s) == pb::TaskState::Running).await;
    assert_eq!(engine.inspect(&id).await.expect("inspect").status, ContainerStatus::Running);
    assert_eq!(engine.container_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_adopted_never_started_container_of_a_departing_task_is_removed_unstarted() {
    let engine = MockEngine::new();
    let spec = task_spec(7, "app");
    let id = engine.create(&spec.container).await.expect("create");
    let mut events = engine.events(EventFilter::default()).await.expect("events");

    let core = Core::start(Arc::new(engine.clone()), NODE).await.expect("core");
    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Remove, &spec)]));
    report_until(&core, 7, |s| state(s) == pb::TaskState::Removed).await;
    assert_eq!(engine.container_count(), 0);
    let mut kinds = Vec::new();
    while let Some(event) = events.next().await {
        let event = event.expect("event");
        assert_eq!(event.container_id, id);
        kinds.push(event.kind.clone());
        if event.kind == EventKind::Destroy {
            break;
        }
    }
    assert!(!kinds.contains(&EventKind::Start), "started on its way out: {kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_network_the_engine_keeps_is_reported_with_the_removal_and_the_rest_goes() {
    let engine = MockEngine::new();
    let network = |name: &str| NetworkSpec { name: name.into(), project: "p".into(), ..NetworkSpec::default() };
    let mut spec = task_spec(7, "app");
    spec.networks = vec![network("p_default"), network("p_back")];
    let reason = "error while removing network: network p_default has active endpoints";
    engine.refuse_network_removal("p_default", Some(reason));

    let core = Core::start(Arc::new(engine.clone()), NODE).await.expect("core");
    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Running, &spec)]));
    report_until(&core, 7, |s| state(s) == pb::TaskState::Running).await;
    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Remove, &spec)]));
    let removed = report_until(&core, 7, |s| state(s) == pb::TaskState::Removed).await;

    assert_eq!(removed.cleanup_errors, [format!("network p_default was not removed: {reason}")]);
    assert_eq!(engine.container_count(), 0);
    assert!(!engine.network_exists("p_back"), "the network the engine let go of stayed");
    assert!(engine.network_exists("p_default"));
}

#[tokio::test(start_paused = true)]
async fn a_clean_removal_reports_no_cleanup_errors() {
    let engine = MockEngine::new();
    let mut spec = task_spec(7, "app");
    spec.networks = vec![NetworkSpec { name: "p_default".into(), project: "p".into(), ..NetworkSpec::default() }];
    let core = Core::start(Arc::new(engine.clone()), NODE).await.expect("core");
    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Running, &spec)]));
    report_until(&core, 7, |s| state(s) == pb::TaskState::Running).await;
    core.apply(complete_set(vec![assignment(7, pb::DesiredState::Remove, &spec)]));
    let removed = report_until(&core, 7, |s| state(s) == pb::TaskState::Removed).await;
    assert!(removed.cleanup_errors.is_empty(), "{:?}", removed.cleanup_errors);
    assert!(!engine.network_exists("p_default"));
}
