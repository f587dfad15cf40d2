//! `shoal service ls|ps|rebalance`: the cluster's services, each one's tasks (where they run and
//! why those that do not run wait), and spreading a service over the nodes again.
//!
//! A SERVICE is `stack/service`, or a service of the project the compose flags name (`-p`, `-f`,
//! or the compose file found from the working directory), as for `ps` and `scale`. `service ls`
//! lists every stack's services unless `-p` or `-f` names a project.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;

use super::connect::{connect, Connection, Target};
use super::converge::{describe, state_word};
use super::{project_name, ProjectArgs};

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services: mode, running/desired replicas, image
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print only the names (stack/service)
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a service's tasks: node, desired and current state, and why a task is not running
    Ps {
        /// `stack/service`, or a service of the compose project
        service: String,
        /// Also show tasks that ended or are being removed
        #[arg(short = 'a', long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Spread a replicated service's tasks evenly over the nodes that fit it again (after nodes
    /// joined or came back); tasks move one at a time
    Rebalance {
        /// `stack/service`, or a service of the compose project
        service: String,
    },
}

fn message(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &ServiceArgs) -> anyhow::Result<i32> {
    match &args.command {
        ServiceCommand::Ls { format, quiet } => {
            // Every stack, unless the compose flags name a project.
            let stack = if project_args.project_name.is_some() || !project_args.files.is_empty() {
                let Some(stack) = project_name(project_args)? else { return Ok(1) };
                stack
            } else {
                String::new()
            };
            let mut connection = connect(target).await?;
            let result = list(&mut connection, target.stale, stack, *format, *quiet).await;
            connection.close().await;
            result
        }
        ServiceCommand::Ps { service, all, format } => {
            let Some(service) = service_ref(project_args, service)? else { return Ok(1) };
            let mut connection = connect(target).await?;
            let result = tasks(&mut connection, target.stale, service, *all, *format).await;
            connection.close().await;
            result
        }
        ServiceCommand::Rebalance { service } => {
            let Some(service) = service_ref(project_args, service)? else { return Ok(1) };
            let name = format!("{}/{}", service.stack, service.service);
            let mut connection = connect(target).await?;
            let request = pb::RebalanceServiceRequest { service: Some(service) };
            // Safe to repeat: asking twice is asking once.
            let result = connection
                .with_failover(|mut c| {
                    let request = request.clone();
                    async move { c.rebalance_service(request).await }
                })
                .await;
            connection.close().await;
            result.map_err(message)?;
            eprintln!("{name}: rebalancing over the nodes that fit it");
            Ok(0)
        }
    }
}

/// `stack/service`, or `service` of the project the compose flags name (`None`: an error was
/// printed).
pub fn service_ref(project_args: &ProjectArgs, name: &str) -> anyhow::Result<Option<pb::ServiceRef>> {
    if let Some((stack, service)) = name.split_once('/') {
        if stack.is_empty() || service.is_empty() || service.contains('/') {
            anyhow::bail!("{name:?}: expected STACK/SERVICE or SERVICE");
        }
        return Ok(Some(pb::ServiceRef { stack: stack.to_string(), service: service.to_string() }));
    }
    let Some(stack) = project_name(project_args)? else { return Ok(None) };
    Ok(Some(pb::ServiceRef { stack, service: name.to_string() }))
}

async fn list(
    connection: &mut Connection,
    stale: bool,
    stack: String,
    format: Format,
    quiet: bool,
) -> anyhow::Result<i32> {
    let request = pb::ListServicesRequest { stack, stale };
    let response = connection
        .with_failover(|mut c| {
            let request = request.clone();
            async move { c.list_services(request).await }
        })
        .await
        .map_err(message)?;
    let mut services = response.into_inner().services;
    let name = |s: &pb::ServiceSummary| s.id.as_ref().map(|r| format!("{}/{}", r.stack, r.service)).unwrap_or_default();
    services.sort_by_key(|s| name(s));
    if quiet {
        for s in &services {
            println!("{}", name(s));
        }
        return Ok(0);
    }
    match format {
        Format::Table => {
            let mut table = Table::new();
            table.load_preset(presets::NOTHING);
            table.set_header(["NAME", "MODE", "REPLICAS", "IMAGE"]);
            for s in &services {
                let mut replicas = format!("{}/{}", s.running, s.desired);
                if s.removing {
                    replicas.push_str(" (removing)");
                }
                table.add_row([name(s), s.mode.clone(), replicas, s.image.clone()]);
            }
            println!("{table}");
        }
        Format::Json => {
            let json: Vec<serde_json::Value> = services
                .iter()
                .map(|s| {
                    let id = s.id.clone().unwrap_or_default();
                    serde_json::json!({
                        "Name": name(s),
                        "Stack": id.stack,
                        "Service": id.service,
                        "Mode": s.mode,
                        "Desired": s.desired,
                        "Running": s.running,
                        "Replicas": format!("{}/{}", s.running, s.desired),
                        "Image": s.image,
                        "Removing": s.removing,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(0)
}

fn desired_word(task: &pb::Task) -> String {
    match pb::DesiredState::try_from(task.desired).unwrap_or(pb::DesiredState::Unspecified) {
        pb::DesiredState::Running => "running".into(),
        pb::DesiredState::Shutdown => "shutdown".into(),
        pb::DesiredState::Remove => "remove".into(),
        pb::DesiredState::Unspecified => String::new(),
    }
}

/// `running 5 seconds ago`: the state and how long since it last changed.
fn current_state(task: &pb::Task, now_ms: u64) -> String {
    let age = Duration::from_secs(now_ms.saturating_sub(task.updated_at_ms) / 1000);
    let age = if age.is_zero() { "just now".to_string() } else { format!("{} ago", humantime::format_duration(age)) };
    format!("{} {age}", state_word(task))
}

async fn tasks(
    connection: &mut Connection,
    stale: bool,
    service: pb::ServiceRef,
    all: bool,
    format: Format,
) -> anyhow::Result<i32> {
    let known = pb::ListServicesRequest { stack: service.stack.clone(), stale };
    let services = connection
        .with_failover(|mut c| {
            let request = known.clone();
            async move { c.list_services(request).await }
        })
        .await
        .map_err(message)?
        .into_inner()
        .services;
    if !services.iter().any(|s| s.id.as_ref() == Some(&service)) {
        eprintln!("error: no such service: {}/{}", service.stack, service.service);
        return Ok(1);
    }
    let request =
        pb::ListTasksRequest { stack: service.stack.clone(), services: vec![service.service.clone()], all, stale };
    let tasks = connection
        .with_failover(|mut c| {
            let request = request.clone();
            async move { c.list_tasks(request).await }
        })
        .await
        .map_err(message)?;
    let mut tasks = tasks.into_inner().tasks;
    tasks.sort_by_key(|t| (t.slot, std::cmp::Reverse(t.id)));
    let nodes = connection
        .with_failover(|mut c| async move { c.list_nodes(pb::ListNodesRequest { stale }).await })
        .await
        .map_err(message)?
        .into_inner()
        .nodes;
    let hostnames: HashMap<String, String> = nodes.into_iter().map(|n| (n.id, n.hostname)).collect();
    let hostname = |t: &pb::Task| hostnames.get(&t.node).cloned().unwrap_or_else(|| t.node.clone());
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    match format {
        Format::Table => {
            let mut table = Table::new();
            table.load_preset(presets::NOTHING);
            table.set_header(["ID", "NAME", "NODE", "DESIRED STATE", "CURRENT STATE", "REASON"]);
            for t in &tasks {
                let reason = if t.state == pb::TaskState::Running as i32 { String::new() } else { t.message.clone() };
                table.add_row([
                    t.id.to_string(),
                    t.container_name.clone(),
                    hostname(t),
                    desired_word(t),
                    current_state(t, now_ms),
                    reason,
                ]);
            }
            println!("{table}");
        }
        Format::Json => {
            let json: Vec<serde_json::Value> = tasks
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "ID": t.id,
                        "Name": t.container_name,
                        "Slot": t.slot,
                        "Node": t.node,
                        "Hostname": hostname(t),
                        "DesiredState": desired_word(t),
                        "State": state_word(t),
                        "Status": describe(t),
                        "Reason": t.message,
                        "ContainerID": t.container_id,
                        "UpdatedAtMs": t.updated_at_ms,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_named_with_or_without_their_stack() {
        let project = ProjectArgs { project_name: Some("shop".into()), ..ProjectArgs::default() };
        let r = service_ref(&project, "web").expect("ok").expect("named");
        assert_eq!((r.stack.as_str(), r.service.as_str()), ("shop", "web"));
        let r = service_ref(&project, "other/db").expect("ok").expect("named");
        assert_eq!((r.stack.as_str(), r.service.as_str()), ("other", "db"));
        assert!(service_ref(&project, "a/b/c").is_err());
        assert!(service_ref(&project, "/b").is_err());
    }

    #[test]
    fn the_current_state_says_since_when() {
        let task = pb::Task { state: pb::TaskState::Running as i32, updated_at_ms: 10_000, ..Default::default() };
        assert_eq!(current_state(&task, 75_000), "running 1m 5s ago");
        assert_eq!(current_state(&task, 10_400), "running just now");
    }
}
