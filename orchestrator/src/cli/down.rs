//! `shoal down`: remove the stack's containers (dependents first, level by level) and networks;
//! named volumes only with `-v`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use shoal_proto::v1 as pb;
use tonic::transport::Channel;

use super::connect::{connect, Target};
use super::progress::Progress;
use super::{project_name, ProjectArgs};

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also remove the named volumes the project declares
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Seconds to wait for each container to stop before killing it (default: its stop_grace_period)
    #[arg(short = 't', long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Also remove services the compose files no longer define (down removes every service of
    /// the project; accepted for compatibility)
    #[arg(long)]
    pub remove_orphans: bool,
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &DownArgs) -> anyhow::Result<i32> {
    let Some(stack) = project_name(project_args)? else { return Ok(1) };
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let known = control.list_stacks(pb::ListStacksRequest {}).await?.into_inner();
    if !known.stacks.iter().any(|s| s.name == stack) {
        eprintln!("nothing to remove: project {stack} is not running");
        connection.close().await;
        return Ok(0);
    }
    let result = remove_and_wait(&mut control, &stack, args.volumes, args.timeout).await;
    connection.close().await;
    result.map(|()| 0)
}

/// Asks for the stack's removal and shows progress until its last container is gone.
pub async fn remove_and_wait(
    control: &mut pb::control_client::ControlClient<Channel>,
    stack: &str,
    volumes: bool,
    timeout: Option<u32>,
) -> anyhow::Result<()> {
    let mut events = control.watch(pb::WatchRequest { stack: stack.to_string() }).await?.into_inner();
    control
        .remove_stack(pb::RemoveStackRequest {
            stack: stack.to_string(),
            remove_volumes: volumes,
            timeout_seconds: timeout,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut progress = Progress::new();
    let mut tasks: BTreeMap<u64, pb::Task> = BTreeMap::new();
    let mut ready = false;
    while let Some(event) = events.next().await {
        let event = event.context("progress stream")?;
        if let Some(task) = event.task {
            if task.state == pb::TaskState::Removed as i32 {
                tasks.remove(&task.id);
                progress.update(&task);
            } else {
                progress.update(&task);
                tasks.insert(task.id, task);
            }
        }
        ready |= event.snapshot_done;
        if ready && tasks.is_empty() {
            break;
        }
    }
    progress.finish();
    // The manager forgets the services, then the stack, a moment after the last container:
    // wait for that too, or an embedded cluster would exit with the stack still listed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let stacks = control.list_stacks(pb::ListStacksRequest {}).await?.into_inner().stacks;
        if !stacks.iter().any(|s| s.name == stack) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
