//! `shoal up`: deploy the project, show progress until it has started (or, with `--wait`,
//! converged), then follow the logs unless detached; Ctrl-C stops the stack gracefully.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use shoal_proto::v1 as pb;

use super::connect::{connect, Connection, Target};
use super::converge::{evaluate, print_reasons, print_unplaceable, still_waiting, Goal, Verdict};
use super::progress::Progress;
use super::watch::{Seen, TaskWatch};
use super::{load_project, ProjectArgs};
use crate::compose::support::unsupported_attributes;
use crate::graph::ServiceGraph;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run in the background: return once the containers have started (a task no node fits is
    /// a warning: it starts once a node fits)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Wait until every service is running and healthy (one-shot services: exited 0); implies
    /// -d. A task no node fits is a failure
    #[arg(long)]
    pub wait: bool,
    /// With --wait (or -d): give up after this many seconds
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Recreate containers even if their configuration did not change
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// Keep existing containers even if their configuration changed
    #[arg(long)]
    pub no_recreate: bool,
    /// Remove services of this project that the compose files no longer define
    #[arg(long)]
    pub remove_orphans: bool,
    /// Only these services (and what they depend on)
    pub services: Vec<String>,
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &UpArgs) -> anyhow::Result<i32> {
    let Some(loaded) = load_project(project_args)? else { return Ok(1) };
    let project = &loaded.project;
    for unsupported in unsupported_attributes(project) {
        eprintln!("warning: {unsupported} is not supported yet and is ignored");
    }
    for name in &args.services {
        if !project.services.contains_key(name) {
            eprintln!("error: no such service: {name}");
            return Ok(1);
        }
    }
    let selected: BTreeSet<String> = if args.services.is_empty() {
        project.services.keys().cloned().collect()
    } else {
        ServiceGraph::build(project)?.subgraph_with_dependencies(&args.services)
    };

    let mut connection = connect(target).await?;
    // The tasks before this deployment: those of services it recreates must not count as
    // converged while the manager has yet to replace them.
    let list = pb::ListTasksRequest { stack: project.name.clone(), services: vec![], all: true, stale: false };
    let before = connection
        .with_failover(|mut c| {
            let list = list.clone();
            async move { c.list_tasks(list).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .tasks;
    // One request id for every attempt: a deploy retried on another manager is applied once.
    let deploy = pb::DeployStackRequest {
        stack: project.name.clone(),
        project_json: serde_json::to_vec(project)?,
        services: args.services.clone(),
        remove_orphans: args.remove_orphans,
        force_recreate: args.force_recreate,
        no_recreate: args.no_recreate,
        request_id: super::connect::request_id(),
    };
    let response = connection
        .with_failover(|mut c| {
            let deploy = deploy.clone();
            async move { c.deploy_stack(deploy).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if !response.orphans.is_empty() {
        eprintln!(
            "warning: found services of project {} that the compose files no longer define ({}); run `shoal up --remove-orphans` to remove them",
            project.name,
            response.orphans.join(", ")
        );
    }

    let goal = if args.wait { Goal::Healthy } else { Goal::Started };
    let timeout = args.timeout.map(Duration::from_secs);
    let recreated: BTreeSet<&String> = response.recreated.iter().collect();
    let outdated: BTreeSet<u64> = before
        .iter()
        .filter(|t| t.service.as_ref().is_some_and(|s| recreated.contains(&s.service)))
        .map(|t| t.id)
        .collect();
    let started = tokio::time::Instant::now();
    let mut outcome = wait_for(&mut connection, project, &selected, &outdated, goal, timeout).await?;
    if let Verdict::Unplaceable(reasons) = &outcome {
        // Accepted: those tasks start once a node fits them.
        print_unplaceable(&project.name, reasons);
        outcome = Verdict::Converged;
    }
    if outcome == Verdict::Converged {
        // Replaced and surplus containers go before this process (and with it an embedded
        // agent) exits.
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        if !settle(&mut connection, project, &selected, left).await? {
            let after = timeout.map_or(0, |t| t.as_secs());
            let reason = format!("gave up after {after}s waiting for replaced containers to be removed");
            outcome = Verdict::Failed(vec![(String::new(), reason)]);
        }
    }
    let code = match outcome {
        Verdict::Converged => 0,
        Verdict::Failed(reasons) => {
            print_reasons(&reasons);
            1
        }
        Verdict::Waiting | Verdict::Unplaceable(_) => 1,
    };
    if code != 0 || args.detach || args.wait {
        connection.close().await;
        return Ok(code);
    }
    let code = attach(&mut connection, &project.name).await?;
    connection.close().await;
    Ok(code)
}

/// Watches the stack's tasks until `goal` is reached, fails, or `timeout` passes. Tasks in
/// `outdated` (about to be replaced) are not judged.
pub async fn wait_for(
    connection: &mut Connection,
    project: &crate::compose::model::Project,
    selected: &BTreeSet<String>,
    outdated: &BTreeSet<u64>,
    goal: Goal,
    timeout: Option<Duration>,
) -> anyhow::Result<Verdict> {
    let mut watch = TaskWatch::open(connection, &project.name).await?;
    let mut tasks: BTreeMap<u64, pb::Task> = BTreeMap::new();
    let mut progress = Progress::new();
    let mut ready = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let event = match watch.next(connection, deadline).await? {
            Seen::Event(event) => *event,
            Seen::Reopened => {
                (tasks, ready) = (BTreeMap::new(), false);
                continue;
            }
            Seen::TimedOut => {
                progress.finish();
                let mut reasons = still_waiting(project, selected, &tasks, goal);
                let after = timeout.map_or(0, |t| t.as_secs());
                reasons.insert(0, (String::new(), format!("gave up after {after}s; still waiting for:")));
                return Ok(Verdict::Failed(reasons));
            }
        };
        if let Some(task) = event.task {
            let selected_task = task.service.as_ref().is_some_and(|s| selected.contains(&s.service));
            if task.state == pb::TaskState::Removed as i32 {
                tasks.remove(&task.id);
            } else if selected_task && !outdated.contains(&task.id) {
                if task.desired == pb::DesiredState::Running as i32 {
                    progress.update(&task);
                }
                tasks.insert(task.id, task);
            }
        }
        ready |= event.snapshot_done;
        if !ready || watch.more_ready() {
            continue;
        }
        match evaluate(project, selected, &tasks, goal) {
            Verdict::Waiting => {}
            verdict => {
                progress.finish();
                return Ok(verdict);
            }
        }
    }
}

/// Waits until the selected services have no tasks left that are being stopped or removed
/// and no more tasks meant to run than their replicas (global services: any number); false if
/// `timeout` passes first.
pub async fn settle(
    connection: &mut Connection,
    project: &crate::compose::model::Project,
    selected: &BTreeSet<String>,
    timeout: Option<Duration>,
) -> anyhow::Result<bool> {
    let wanted: BTreeMap<&String, Option<u64>> = selected
        .iter()
        .filter_map(|name| project.services.get(name).map(|spec| (name, spec)))
        .map(|(name, spec)| {
            let global = spec.deploy.as_ref().and_then(|d| d.mode.as_deref()).is_some_and(|m| m.starts_with("global"));
            (name, (!global).then(|| spec.replicas()))
        })
        .collect();
    let mut watch = TaskWatch::open(connection, &project.name).await?;
    let mut progress = Progress::new();
    let mut tasks: BTreeMap<u64, pb::Task> = BTreeMap::new();
    let mut ready = false;
    let settled = |tasks: &BTreeMap<u64, pb::Task>| {
        wanted.iter().all(|(name, replicas)| {
            let of_service: Vec<&pb::Task> =
                tasks.values().filter(|t| t.service.as_ref().is_some_and(|s| &&s.service == name)).collect();
            let leaving = of_service.iter().any(|t| t.desired != pb::DesiredState::Running as i32);
            let running = of_service.len() as u64;
            !leaving && replicas.is_none_or(|r| running <= r)
        })
    };
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let event = match watch.next(connection, deadline).await? {
            Seen::Event(event) => *event,
            Seen::Reopened => {
                (tasks, ready) = (BTreeMap::new(), false);
                continue;
            }
            Seen::TimedOut => {
                progress.finish();
                return Ok(false);
            }
        };
        if let Some(task) = event.task {
            if task.state == pb::TaskState::Removed as i32 {
                if tasks.remove(&task.id).is_some() {
                    progress.update(&task);
                }
            } else if task.service.as_ref().is_some_and(|s| selected.contains(&s.service)) {
                if task.desired != pb::DesiredState::Running as i32 {
                    progress.update(&task);
                }
                tasks.insert(task.id, task);
            }
        }
        ready |= event.snapshot_done;
        if ready && !watch.more_ready() && settled(&tasks) {
            progress.finish();
            return Ok(true);
        }
    }
}

/// Follows the logs until Ctrl-C (or until they end), then removes the stack's containers
/// (keeping volumes).
async fn attach(connection: &mut Connection, stack: &str) -> anyhow::Result<i32> {
    let request =
        pb::LogsRequest { stack: stack.to_string(), services: vec![], follow: true, tail: None, timestamps: false };
    tokio::select! {
        result = super::logs::follow(connection, request) => { result?; }
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
    let stop = super::down::remove_and_wait(connection, stack, false, None);
    let cleanup_errors = tokio::select! {
        result = stop => result?,
        _ = tokio::signal::ctrl_c() => return Ok(130),
    };
    Ok(super::down::report(&cleanup_errors))
}
