//! When is `up` done? A pure judgement over the tasks the manager reports, so it can be tested
//! without a cluster. `up -d` waits until every container has started (dependencies permitting);
//! `up --wait` until every service is running, healthy where it has a healthcheck, and one-shot
//! services have exited 0.

use std::collections::{BTreeMap, BTreeSet};

use shoal_proto::v1 as pb;

use crate::compose::model::Project;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    Started,
    Healthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Converged,
    Waiting,
    /// Per service, why it cannot converge.
    Failed(Vec<(String, String)>),
}

/// The service's tasks that are meant to run.
fn current_tasks<'a>(tasks: &'a BTreeMap<u64, pb::Task>, service: &str) -> Vec<&'a pb::Task> {
    tasks
        .values()
        .filter(|t| t.service.as_ref().is_some_and(|s| s.service == service))
        .filter(|t| t.desired == pb::DesiredState::Running as i32)
        .collect()
}

/// A replicated service whose tasks have not all been created yet (global services have as
/// many as there are nodes, which the client does not know).
fn missing_replicas(spec: &crate::compose::model::Service, current: &[&pb::Task]) -> bool {
    let global = spec.deploy.as_ref().and_then(|d| d.mode.as_deref()).is_some_and(|m| m.starts_with("global"));
    !global && (current.len() as u64) < spec.replicas()
}

/// Messages the scheduler gives pending tasks that will not resolve by waiting.
const PERMANENT: [&str; 2] = ["did not complete successfully", "has no healthcheck"];

pub fn evaluate(
    project: &Project,
    services: &BTreeSet<String>,
    tasks: &BTreeMap<u64, pb::Task>,
    goal: Goal,
) -> Verdict {
    let mut failures = Vec::new();
    let mut waiting = false;
    for name in services {
        let Some(spec) = project.services.get(name) else { continue };
        let current = current_tasks(tasks, name);
        if missing_replicas(spec, &current) {
            waiting = true;
            continue;
        }
        let has_healthcheck = has_healthcheck(spec);
        for task in current {
            match task_verdict(task, goal, has_healthcheck) {
                Verdict::Converged => {}
                Verdict::Waiting => waiting = true,
                Verdict::Failed(reasons) => failures.extend(reasons.into_iter().map(|(_, r)| (name.clone(), r))),
            }
        }
    }
    if !failures.is_empty() {
        failures.sort();
        failures.dedup();
        Verdict::Failed(failures)
    } else if waiting {
        Verdict::Waiting
    } else {
        Verdict::Converged
    }
}

fn task_verdict(task: &pb::Task, goal: Goal, has_healthcheck: bool) -> Verdict {
    let state = pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified);
    let fail = |reason: String| Verdict::Failed(vec![(String::new(), format!("{}: {reason}", task.container_name))]);
    match state {
        pb::TaskState::Complete if task.exit_code.unwrap_or(0) == 0 => Verdict::Converged,
        pb::TaskState::Complete | pb::TaskState::Failed => {
            let reason = match (task.message.is_empty(), task.exit_code) {
                (false, _) => task.message.clone(),
                (true, Some(code)) => format!("exited with code {code}"),
                (true, None) => "failed before its container ran".into(),
            };
            fail(reason)
        }
        pb::TaskState::Running => {
            let healthy = task.health == pb::Health::Healthy as i32;
            if goal == Goal::Started || !has_healthcheck || healthy {
                Verdict::Converged
            } else if task.health == pb::Health::Unhealthy as i32 {
                // As docker compose does: its healthcheck has failed `retries` times in a row.
                fail("is unhealthy".into())
            } else {
                Verdict::Waiting
            }
        }
        pb::TaskState::Pending if PERMANENT.iter().any(|p| task.message.contains(p)) => fail(task.message.clone()),
        _ => Verdict::Waiting,
    }
}

/// Why the services that have not converged yet have not, for the timeout message; services
/// that have are left out.
pub fn still_waiting(
    project: &Project,
    services: &BTreeSet<String>,
    tasks: &BTreeMap<u64, pb::Task>,
    goal: Goal,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in services {
        let Some(spec) = project.services.get(name) else { continue };
        let current = current_tasks(tasks, name);
        if missing_replicas(spec, &current) {
            out.push((name.clone(), format!("{} of {} containers created", current.len(), spec.replicas())));
        }
        let has_healthcheck = has_healthcheck(spec);
        for task in current {
            if task_verdict(task, goal, has_healthcheck) != Verdict::Converged {
                out.push((name.clone(), format!("{}: {}", task.container_name, describe(task))));
            }
        }
    }
    out.sort();
    out
}

fn has_healthcheck(spec: &crate::compose::model::Service) -> bool {
    spec.healthcheck.as_ref().is_some_and(|h| {
        h.disable != Some(true) && h.test.as_ref().is_none_or(|t| t.first().map(String::as_str) != Some("NONE"))
    })
}

/// Prints a failed verdict's reasons, one `error:` line each; a reason without a service is
/// about the whole wait (the timeout) and comes first.
pub fn print_reasons(reasons: &[(String, String)]) {
    for (service, reason) in reasons {
        if service.is_empty() {
            eprintln!("error: {reason}");
        } else {
            eprintln!("error: service {service}: {reason}");
        }
    }
}

/// The task's state in one word, as `ps` shows it: `exited (N)` only for a container that ran
/// and exited. A failure without an exit code never ran: `rejected` when no container was
/// created (image missing, invalid spec), `failed` when its container could not start (a taken
/// port) or ended without one (OOM kill, removed behind Shoal's back). The reason is the
/// task's message.
pub fn state_word(task: &pb::Task) -> String {
    let state = pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified);
    match (state, task.exit_code) {
        (pb::TaskState::Complete | pb::TaskState::Failed, Some(code)) => format!("exited ({code})"),
        (pb::TaskState::Complete, None) => "exited (0)".into(),
        (pb::TaskState::Failed, None) if task.container_id.is_empty() => "rejected".into(),
        (other, _) => other.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase(),
    }
}

/// `running (healthy)`, `pending: waiting for db to be healthy`, `exited (0)`.
pub fn describe(task: &pb::Task) -> String {
    let state = pb::TaskState::try_from(task.state).unwrap_or(pb::TaskState::Unspecified);
    let mut text = state_word(task);
    match pb::Health::try_from(task.health).unwrap_or(pb::Health::Unspecified) {
        pb::Health::Unspecified => {}
        h => text.push_str(&format!(" ({})", h.as_str_name().trim_start_matches("HEALTH_").to_lowercase())),
    }
    if !task.message.is_empty() && !matches!(state, pb::TaskState::Running) {
        // Agents often repeat the state in their message ("starting", "preparing: image x").
        let word = text.split(' ').next().unwrap_or_default().to_string();
        let message =
            task.message.strip_prefix(&word).map(|m| m.trim_start_matches(':').trim()).unwrap_or(&task.message);
        if !message.is_empty() && message != "shut down" && message != "removed" {
            text.push_str(&format!(": {message}"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        serde_yaml::from_str(
            "name: p\nservices:\n  web: {image: x, healthcheck: {test: [CMD, 'true']}}\n  job: {image: y}\n",
        )
        .unwrap()
    }

    fn task(
        id: u64,
        service: &str,
        state: pb::TaskState,
        health: pb::Health,
        exit: Option<i64>,
        message: &str,
    ) -> (u64, pb::Task) {
        (
            id,
            pb::Task {
                id,
                service: Some(pb::ServiceRef { stack: "p".into(), service: service.into() }),
                desired: pb::DesiredState::Running as i32,
                state: state as i32,
                health: health as i32,
                exit_code: exit,
                message: message.into(),
                container_name: format!("p-{service}-1"),
                ..Default::default()
            },
        )
    }

    fn all() -> BTreeSet<String> {
        ["web".to_string(), "job".to_string()].into()
    }

    #[test]
    fn waits_for_health_only_with_wait() {
        let tasks: BTreeMap<_, _> = [
            task(1, "web", pb::TaskState::Running, pb::Health::Starting, None, ""),
            task(2, "job", pb::TaskState::Complete, pb::Health::Unspecified, Some(0), ""),
        ]
        .into();
        assert_eq!(evaluate(&project(), &all(), &tasks, Goal::Started), Verdict::Converged);
        assert_eq!(evaluate(&project(), &all(), &tasks, Goal::Healthy), Verdict::Waiting);
    }

    #[test]
    fn missing_tasks_mean_waiting() {
        let tasks: BTreeMap<_, _> = [task(1, "web", pb::TaskState::Running, pb::Health::Healthy, None, "")].into();
        assert_eq!(evaluate(&project(), &all(), &tasks, Goal::Healthy), Verdict::Waiting);
    }

    #[test]
    fn failures_carry_reasons() {
        let tasks: BTreeMap<_, _> = [
            task(
                1,
                "web",
                pb::TaskState::Pending,
                pb::Health::Unspecified,
                None,
                "job did not complete successfully: it exited with code 2",
            ),
            task(2, "job", pb::TaskState::Failed, pb::Health::Unspecified, Some(2), "exited with code 2"),
        ]
        .into();
        let Verdict::Failed(reasons) = evaluate(&project(), &all(), &tasks, Goal::Started) else { panic!() };
        assert_eq!(
            reasons,
            [
                ("job".to_string(), "p-job-1: exited with code 2".to_string()),
                ("web".to_string(), "p-web-1: job did not complete successfully: it exited with code 2".to_string())
            ]
        );
    }

    #[test]
    fn unhealthy_fails_the_wait_at_once() {
        let tasks: BTreeMap<_, _> = [
            task(1, "web", pb::TaskState::Running, pb::Health::Unhealthy, None, ""),
            task(2, "job", pb::TaskState::Complete, pb::Health::Unspecified, Some(0), ""),
        ]
        .into();
        assert_eq!(evaluate(&project(), &all(), &tasks, Goal::Started), Verdict::Converged);
        assert_eq!(
            evaluate(&project(), &all(), &tasks, Goal::Healthy),
            Verdict::Failed(vec![("web".into(), "p-web-1: is unhealthy".into())])
        );
    }

    #[test]
    fn still_waiting_names_only_what_has_not_converged() {
        let tasks: BTreeMap<_, _> = [
            task(1, "web", pb::TaskState::Running, pb::Health::Starting, None, ""),
            task(2, "job", pb::TaskState::Complete, pb::Health::Unspecified, Some(0), ""),
        ]
        .into();
        assert_eq!(
            still_waiting(&project(), &all(), &tasks, Goal::Healthy),
            [("web".to_string(), "p-web-1: running (starting)".to_string())]
        );
        assert_eq!(still_waiting(&project(), &all(), &tasks, Goal::Started), []);
        let none = BTreeMap::new();
        assert_eq!(
            still_waiting(&project(), &all(), &none, Goal::Started),
            [
                ("job".to_string(), "0 of 1 containers created".to_string()),
                ("web".to_string(), "0 of 1 containers created".to_string())
            ]
        );
    }

    #[test]
    fn describes_tasks() {
        let (_, t) =
            task(1, "web", pb::TaskState::Pending, pb::Health::Unspecified, None, "waiting for db to be healthy");
        assert_eq!(describe(&t), "pending: waiting for db to be healthy");
        let (_, t) = task(1, "web", pb::TaskState::Running, pb::Health::Healthy, None, "");
        assert_eq!(describe(&t), "running (healthy)");
    }

    #[test]
    fn only_a_container_that_ran_shows_an_exit_code() {
        let (_, ran) = task(1, "job", pb::TaskState::Failed, pb::Health::Unspecified, Some(3), "exited with code 3");
        assert_eq!((state_word(&ran), describe(&ran)), ("exited (3)".into(), "exited (3): with code 3".into()));
        let (_, done) = task(1, "job", pb::TaskState::Complete, pb::Health::Unspecified, Some(0), "exited with code 0");
        assert_eq!(state_word(&done), "exited (0)");

        // Never created: no container, no exit code.
        let no_image = "image shoal-test/nope not found locally and could not be pulled: not found";
        let (_, never) = task(1, "web", pb::TaskState::Failed, pb::Health::Unspecified, None, no_image);
        assert_eq!(state_word(&never), "rejected");
        assert_eq!(describe(&never), format!("rejected: {no_image}"));
        // Created, but it could not start.
        let port = "starting the container failed: host port 8080 is already in use (...)";
        let (_, mut unstarted) = task(1, "web", pb::TaskState::Failed, pb::Health::Unspecified, None, port);
        unstarted.container_id = "c0ffee".into();
        assert_eq!((state_word(&unstarted), describe(&unstarted)), ("failed".into(), format!("failed: {port}")));

        let (_, silent) = task(1, "web", pb::TaskState::Failed, pb::Health::Unspecified, None, "");
        let Verdict::Failed(reasons) = task_verdict(&silent, Goal::Started, false) else { panic!() };
        assert_eq!(reasons[0].1, "p-web-1: failed before its container ran");
    }
}
