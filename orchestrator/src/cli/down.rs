//! `shoal down`: remove the stack's containers (dependents first, level by level) and networks;
//! named volumes only with `-v`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use clap::Args;
use shoal_proto::v1 as pb;

use super::connect::{connect, Connection, Target};
use super::progress::Progress;
use super::watch::{Seen, TaskWatch};
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
    let mut connection = connect(target).await?;
    let result = down(&mut connection, &stack, args).await;
    connection.close().await;
    result
}

async fn down(connection: &mut Connection, stack: &str, args: &DownArgs) -> anyhow::Result<i32> {
    if !listed(connection, stack).await? {
        eprintln!("nothing to remove: project {stack} is not running");
        return Ok(0);
    }
    let cleanup_errors = remove_and_wait(connection, stack, args.volumes, args.timeout).await?;
    Ok(report(&cleanup_errors))
}

/// Prints what could not be cleaned up after the containers; the exit code (1 if anything).
pub fn report(cleanup_errors: &BTreeSet<String>) -> i32 {
    for error in cleanup_errors {
        eprintln!("error: {error}");
    }
    i32::from(!cleanup_errors.is_empty())
}

/// Whether the cluster knows the stack.
async fn listed(connection: &mut Connection, stack: &str) -> anyhow::Result<bool> {
    let stacks = connection
        .with_failover(|mut c| async move { c.list_stacks(pb::ListStacksRequest { stale: false }).await })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .stacks;
    Ok(stacks.iter().any(|s| s.name == stack))
}

/// Asks for the stack's removal and shows progress until its last container is gone. Returns
/// what the agents could not remove after the containers (a network another container still
/// uses), each line naming the object and the engine's reason; everything else is removed.
pub async fn remove_and_wait(
    connection: &mut Connection,
    stack: &str,
    volumes: bool,
    timeout: Option<u32>,
) -> anyhow::Result<BTreeSet<String>> {
    let mut watch = TaskWatch::open(connection, stack).await?;
    let request =
        pb::RemoveStackRequest { stack: stack.to_string(), remove_volumes: volumes, timeout_seconds: timeout };
    connection
        .with_failover(|mut c| {
            let request = request.clone();
            async move { c.remove_stack(request).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut progress = Progress::new();
    let mut tasks: BTreeMap<u64, pb::Task> = BTreeMap::new();
    let mut cleanup_errors = BTreeSet::new();
    let mut ready = false;
    while !(ready && tasks.is_empty()) {
        let event = match watch.next(connection, None).await? {
            Seen::Event(event) => *event,
            // (No deadline: it does not time out.)
            Seen::Reopened | Seen::TimedOut => {
                (tasks, ready) = (BTreeMap::new(), false);
                continue;
            }
        };
        if let Some(task) = event.task {
            progress.update(&task);
            if task.state == pb::TaskState::Removed as i32 {
                cleanup_errors.extend(task.cleanup_errors.iter().cloned());
                tasks.remove(&task.id);
            } else {
                tasks.insert(task.id, task);
            }
        }
        ready |= event.snapshot_done;
    }
    progress.finish();
    // The manager forgets the services, then the stack, a moment after the last container:
    // wait for that too, or an embedded cluster would exit with the stack still listed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline && listed(connection, stack).await? {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(cleanup_errors)
}
