//! Container events from the engine's event stream, and health waiting built on them.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bollard::models::EventMessage;
use bollard::query_parameters::EventsOptions;
use futures_util::stream::{BoxStream, StreamExt};

use super::{engine_time, DockerEngine};
use crate::engine::{
    ContainerStatus, Engine, EngineError, EngineEvent, EngineResult, EventFilter, EventKind, HealthStatus, WaitOutcome,
};

/// Actions the runner cares about. `health_status` is prefix-matched by the engine, which is how
/// it matches `health_status: healthy`.
const ACTIONS: [&str; 5] = ["start", "die", "oom", "health_status", "destroy"];

pub(super) fn subscribe(engine: &DockerEngine, filter: EventFilter) -> BoxStream<'static, EngineResult<EngineEvent>> {
    let mut filters: HashMap<String, Vec<String>> = HashMap::from([
        ("type".into(), vec!["container".into()]),
        ("event".into(), ACTIONS.iter().map(|a| a.to_string()).collect()),
    ]);
    if !filter.labels.is_empty() {
        filters.insert("label".into(), filter.labels.iter().map(|(k, v)| format!("{k}={v}")).collect());
    }
    if let Some(c) = filter.container {
        filters.insert("container".into(), vec![c]);
    }
    // Without `since` the engine could emit an event between our request and its subscription;
    // replaying from "now" (its history buffer) closes that gap.
    let since = filter.since.unwrap_or_else(SystemTime::now);
    let options = EventsOptions { since: Some(engine_time(since)), until: None, filters: Some(filters) };
    let this = engine.clone();
    engine
        .client()
        .events(Some(options))
        .filter_map(move |item| {
            let out = match item {
                Ok(msg) => to_event(msg).map(Ok),
                Err(e) => Some(Err(this.err("reading engine events", e))),
            };
            std::future::ready(out)
        })
        .boxed()
}

fn to_event(msg: EventMessage) -> Option<EngineEvent> {
    let actor = msg.actor?;
    let attributes: std::collections::BTreeMap<String, String> =
        actor.attributes.unwrap_or_default().into_iter().collect();
    let action = msg.action?;
    let kind = match action.as_str() {
        "start" => EventKind::Start,
        "die" => EventKind::Die { exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()) },
        "oom" => EventKind::Oom,
        "destroy" => EventKind::Destroy,
        a => {
            let status = a.strip_prefix("health_status:")?.trim();
            EventKind::Health(HealthStatus::parse(status)?)
        }
    };
    Some(EngineEvent {
        container_id: actor.id?,
        kind,
        labels: attributes,
        time_nanos: msg.time_nano.unwrap_or_default(),
    })
}

/// Waits until the healthcheck settles or the container stops. Level-triggered: every event is
/// only a cue to re-inspect, so a replayed or missed event cannot produce a wrong answer.
pub(super) async fn wait_for_health(engine: &DockerEngine, id: &str) -> EngineResult<WaitOutcome> {
    // A little history, in case the transition happened just before this call.
    let since = SystemTime::now() - Duration::from_secs(1);
    let mut events = engine
        .events(EventFilter { container: Some(id.to_string()), since: Some(since), ..EventFilter::default() })
        .await?;
    loop {
        let state = engine.inspect(id).await?;
        match (state.status, state.health) {
            (ContainerStatus::Running, Some(HealthStatus::Healthy)) => return Ok(WaitOutcome::Healthy),
            (ContainerStatus::Running, Some(HealthStatus::Unhealthy)) => return Ok(WaitOutcome::Unhealthy),
            (ContainerStatus::Running, None) => return Err(EngineError::NoHealthcheck(id.to_string())),
            (ContainerStatus::Exited | ContainerStatus::Dead, _) => {
                return Ok(WaitOutcome::Exited {
                    code: state.exit_code.unwrap_or_default(),
                    oom_killed: state.oom_killed,
                })
            }
            _ => {}
        }
        match events.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => {
                return Err(EngineError::api(
                    format!("waiting for container {id} to become healthy"),
                    "the engine closed the event stream",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn msg(action: &str, attrs: &[(&str, &str)]) -> EventMessage {
        EventMessage {
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("c1".into()),
                attributes: Some(attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            }),
            time_nano: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn maps_die_with_exit_code_and_health() {
        let die = to_event(msg("die", &[("exitCode", "3")])).unwrap();
        assert_eq!(die.kind, EventKind::Die { exit_code: Some(3) });
        let h = to_event(msg("health_status: unhealthy", &[])).unwrap();
        assert_eq!(h.kind, EventKind::Health(HealthStatus::Unhealthy));
        assert!(to_event(msg("exec_start: sh", &[])).is_none());
    }
}
