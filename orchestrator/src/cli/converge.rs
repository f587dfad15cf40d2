//! When is `up` done? A pure judgement over the tasks the manager reports, so it can be tested
//! without a cluster. `up -d` waits until every container has started (dependencies permitting)
//! or cannot be placed; `up --wait` until every service is running, healthy where it has a
//! healthcheck, and one-shot services have exited 0 — a task no node fits fails it.
//!
//! "Cannot be placed": the scheduler found no node that fits the task (`Task.unplaceable`, its
//! message says why), or the task waits for a service whose tasks cannot be placed. Such a task
//! starts when a node fits, which no waiting by the client brings about.

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
    /// Only with [`Goal::Started`]: every task has started except these, which cannot be placed;
    /// per service, why (the deployment is accepted; they start once a node fits).
    Unplaceable(Vec<(String, String)>),
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

/// Why a pending task cannot be placed: no node fits it, or it waits for a service that has a
/// task no node fits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Stuck {
    NoNodeFits(String),
    Dependency(String),
}

/// The pending tasks (of the services judged) that cannot be placed, by id: those no node fits,
/// and every pending task of a service that depends on a service with such a task.
fn stuck_tasks(
    project: &Project,
    services: &BTreeSet<String>,
    tasks: &BTreeMap<u64, pb::Task>,
) -> BTreeMap<u64, Stuck> {
    let pending = |t: &pb::Task| t.state == pb::TaskState::Pending as i32;
    let mut stuck: BTreeMap<u64, Stuck> = BTreeMap::new();
    let mut blocked: BTreeSet<&String> = BTreeSet::new();
    for name in services {
        for task in current_tasks(tasks, name).into_iter().filter(|t| pending(t) && t.unplaceable) {
            stuck.insert(task.id, Stuck::NoNodeFits(task.message.clone()));
            blocked.insert(name);
        }
    }
    // Down the dependency edges, until nothing more is blocked.
    loop {
        let mut grew = false;
        for name in services.iter().filter(|n| !blocked.contains(n)) {
            let Some(spec) = project.services.get(name) else { continue };
            let Some(dependency) = spec.depends_on.keys().find(|d| blocked.contains(d)) else { continue };
            for task in current_tasks(tasks, name).into_iter().filter(|t| pending(t)) {
                stuck.insert(task.id, Stuck::Dependency(dependency.clone()));
                grew = true;
            }
        }
        if !grew {
            return stuck;
        }
        for task in stuck.keys().filter_map(|id| tasks.get(id)) {
            if let Some(service) = task.service.as_ref().and_then(|s| services.get(&s.service)) {
                blocked.insert(service);
            }
        }
    }
}

/// Per service, one line per distinct reason: "2 of 3 tasks cannot be placed: 0 of 3 nodes
/// fit: 3 lack 64GiB memory", "1 of 1 task waits for db, which cannot be placed".
fn stuck_reasons(
    services: &BTreeSet<String>,
    tasks: &BTreeMap<u64, pb::Task>,
    stuck: &BTreeMap<u64, Stuck>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in services {
        let current = current_tasks(tasks, name);
        let mut counts: BTreeMap<&Stuck, usize> = BTreeMap::new();
        for task in &current {
            if let Some(why) = stuck.get(&task.id) {
                *counts.entry(why).or_default() += 1;
            }
        }
        let total = current.len();
        let tasks_word = if total == 1 { "task" } else { "tasks" };
        for (why, count) in counts {
            let line = match why {
                Stuck::NoNodeFits(reason) => format!("{count} of {total} {tasks_word} cannot be placed: {reason}"),
                Stuck::Dependency(on) => {
                    let waits = if count == 1 { "waits" } else { "wait" };
                    format!("{count} of {total} {tasks_word} {waits} for {on}, which cannot be placed")
                }
            };
            out.push((name.clone(), line));
        }
    }
    out
}

pub fn evaluate(
    project: &Project,
    services: &BTreeSet<String>,
    tasks: &BTreeMap<u64, pb::Task>,
    goal: Goal,
) -> Verdict {
    let mut failures = Vec::new();
    let mut waiting = false;
    let stuck = stuck_tasks(project, services, tasks);
    for name in services {
        let Some(spec) = project.services.get(name) else { continue };
        let current = current_tasks(tasks, name);
        if missing_replicas(spec, &current) {
            waiting = true;
            continue;
        }
        let has_healthcheck = has_healthcheck(spec);
        for task in current.into_iter().filter(|t| !stuck.contains_key(&t.id)) {
            match task_verdict(task, goal, has_healthcheck) {
                Verdict::Converged | Verdict::Unplaceable(_) => {}
                Verdict::Waiting => waiting = true,
                Verdict::Failed(reasons) => failures.extend(reasons.into_iter().map(|(_, r)| (name.clone(), r))),
            }
        }
    }
    let unplaceable = stuck_reasons(services, tasks, &stuck);
    if goal == Goal::Healthy {
        failures.extend(unplaceable.iter().cloned());
    }
    if !failures.is_empty() {
        failures.sort();
        failures.dedup();
        Verdict::Failed(failures)
    } else if waiting {
        Verdict::Waiting
    } else if !unplaceable.is_empty() {
        Verdict::Unplaceable(unplaceable)
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

/// Warns about the tasks that cannot be placed, per service, with where to follow them.
pub fn print_unplaceable(stack: &str, reasons: &[(String, String)]) {
    let mut hinted = BTreeSet::new();
    for (service, reason) in reasons {
        eprintln!("warning: service {service}: {reason}");
        if hinted.insert(service) {
            eprintln!(
                "  hint: they start once a node fits them (free resources, add or relabel a node, or change the \
                 service's placement); follow them with `shoal service ps {stack}/{service}`"
            );
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

    fn unplaceable(id: u64, service: &str, reason: &str) -> (u64, pb::Task) {
        let (id, mut t) = task(id, service, pb::TaskState::Pending, pb::Health::Unspecified, None, reason);
        t.unplaceable = true;
        (id, t)
    }

    const NO_FIT: &str = "0 of 3 nodes fit: 3 lack 64GiB memory";

    #[test]
    fn a_task_no_node_fits_is_a_warning_for_up_d_and_a_failure_for_wait() {
        let project: Project =
            serde_yaml::from_str("name: p\nservices:\n  web: {image: x}\n  big: {image: y, scale: 2}\n").unwrap();
        let services: BTreeSet<String> = ["web".to_string(), "big".to_string()].into();
        let mut tasks: BTreeMap<_, _> = [
            task(1, "web", pb::TaskState::Running, pb::Health::Unspecified, None, ""),
            unplaceable(2, "big", NO_FIT),
            task(3, "big", pb::TaskState::Running, pb::Health::Unspecified, None, ""),
        ]
        .into();
        let reason = ("big".to_string(), format!("1 of 2 tasks cannot be placed: {NO_FIT}"));
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Unplaceable(vec![reason.clone()]));
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Healthy), Verdict::Failed(vec![reason]));

        // Another task still on its way: `up -d` waits for it first; `--wait` fails at once.
        tasks.insert(1, task(1, "web", pb::TaskState::Starting, pb::Health::Unspecified, None, "").1);
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Waiting);
        assert!(matches!(evaluate(&project, &services, &tasks, Goal::Healthy), Verdict::Failed(_)));

        // A pending task whose reason is not "no node fits" is waited for, whatever its message.
        let (_, mut waiting) = task(2, "big", pb::TaskState::Pending, pb::Health::Unspecified, None, NO_FIT);
        waiting.unplaceable = false;
        tasks.insert(1, task(1, "web", pb::TaskState::Running, pb::Health::Unspecified, None, "").1);
        tasks.insert(2, waiting);
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Waiting);
        // The flag counts only while the task is pending.
        let (_, mut placed) = task(2, "big", pb::TaskState::Running, pb::Health::Unspecified, None, "");
        placed.unplaceable = true;
        tasks.insert(2, placed);
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Converged);
    }

    #[test]
    fn a_task_waiting_for_a_service_no_node_fits_cannot_be_placed_either() {
        let project: Project = serde_yaml::from_str(
            "name: p\nservices:\n  db: {image: x}\n  api: {image: y, depends_on: {db: {condition: service_started}}}\n  web: {image: z, depends_on: {api: {condition: service_started}}}\n  other: {image: o}\n",
        )
        .unwrap();
        let services: BTreeSet<String> = ["db", "api", "web", "other"].map(String::from).into();
        let mut tasks: BTreeMap<_, _> = [
            unplaceable(1, "db", NO_FIT),
            task(
                2,
                "api",
                pb::TaskState::Pending,
                pb::Health::Unspecified,
                None,
                "waiting for db to start (0 of 1 started)",
            ),
            task(
                3,
                "web",
                pb::TaskState::Pending,
                pb::Health::Unspecified,
                None,
                "waiting for api to start (0 of 1 started)",
            ),
            task(4, "other", pb::TaskState::Running, pb::Health::Unspecified, None, ""),
        ]
        .into();
        let expected = vec![
            ("api".to_string(), "1 of 1 task waits for db, which cannot be placed".to_string()),
            ("db".to_string(), format!("1 of 1 task cannot be placed: {NO_FIT}")),
            ("web".to_string(), "1 of 1 task waits for api, which cannot be placed".to_string()),
        ];
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Unplaceable(expected.clone()));
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Healthy), Verdict::Failed(expected));

        // Once db is placed, api waits for it to start like any dependency.
        tasks.insert(1, task(1, "db", pb::TaskState::Starting, pb::Health::Unspecified, None, "").1);
        assert_eq!(evaluate(&project, &services, &tasks, Goal::Started), Verdict::Waiting);
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
