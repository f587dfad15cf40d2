//! `shoal up`: deploy the project, show progress until it has started (or, with `--wait`,
//! converged), then follow the logs unless detached; Ctrl-C stops the stack gracefully.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};
use super::converge::{evaluate, print_reasons, still_waiting, Goal, Verdict};
use super::progress::Progress;
use super::{load_project, ProjectArgs};
use crate::compose::support::unsupported_attributes;
use crate::graph::ServiceGraph;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run in the background: return once the containers have started
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Wait until every service is running and healthy (one-shot services: exited 0); implies -d
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

    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let response = control
        .deploy_stack(pb::DeployStackRequest {
            stack: project.name.clone(),
            project_json: serde_json::to_vec(project)?,
            services: args.services.clone(),
            remove_orphans: args.remove_orphans,
            force_recreate: args.force_recreate,
            no_recreate: args.no_recreate,
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
    let outcome = wait_for(&mut control, project, &selected, goal, timeout).await?;
    let code = match outcome {
        Verdict::Converged => 0,
        Verdict::Failed(reasons) => {
            print_reasons(&reasons);
            1
        }
        Verdict::Waiting => 1,
    };
    if code != 0 || args.detach || args.wait {
        connection.close().await;
        return Ok(code);
    }
    let code = attach(&mut control, &project.name).await?;
    connection.close().await;
    Ok(code)
}

/// Watches the stack's tasks until `goal` is reached, fails, or `timeout` passes.
pub async fn wait_for(
    control: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    project: &crate::compose::model::Project,
    selected: &BTreeSet<String>,
    goal: Goal,
    timeout: Option<Duration>,
) -> anyhow::Result<Verdict> {
    let mut events = control.watch(pb::WatchRequest { stack: project.name.clone() }).await?.into_inner();
    let mut tasks: BTreeMap<u64, pb::Task> = BTreeMap::new();
    let mut progress = Progress::new();
    let mut ready = false;
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(next) => next,
                Err(_) => {
                    progress.finish();
                    let mut reasons = still_waiting(project, selected, &tasks, goal);
                    let after = timeout.map_or(0, |t| t.as_secs());
                    reasons.insert(0, (String::new(), format!("gave up after {after}s; still waiting for:")));
                    return Ok(Verdict::Failed(reasons));
                }
            },
            None => events.next().await,
        };
        let Some(event) = next else { anyhow::bail!("the manager closed the progress stream") };
        let event = event.context("progress stream")?;
        if let Some(task) = event.task {
            let selected_task = task.service.as_ref().is_some_and(|s| selected.contains(&s.service));
            if task.state == pb::TaskState::Removed as i32 {
                tasks.remove(&task.id);
            } else if selected_task {
                if task.desired == pb::DesiredState::Running as i32 {
                    progress.update(&task);
                }
                tasks.insert(task.id, task);
            }
        }
        ready |= event.snapshot_done;
        if !ready {
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

/// Follows the logs until Ctrl-C, then removes the stack's containers (keeping volumes).
async fn attach(
    control: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    stack: &str,
) -> anyhow::Result<i32> {
    let logs = control
        .logs(pb::LogsRequest {
            stack: stack.to_string(),
            services: vec![],
            follow: true,
            tail: None,
            timestamps: false,
        })
        .await?
        .into_inner();
    let printer = super::logs::print(logs, false);
    tokio::select! {
        result = printer => { result?; }
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
    let stop = super::down::remove_and_wait(control, stack, false, None);
    tokio::select! {
        result = stop => result.map(|()| 0),
        _ = tokio::signal::ctrl_c() => Ok(130),
    }
}
