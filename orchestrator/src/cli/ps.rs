//! `shoal ps`: the project's containers with their node, state, health, ports, and — for any
//! that is not running — the reason.

use clap::{Args, ValueEnum};
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};
use super::converge::{describe, state_word};
use super::{project_name, ProjectArgs};

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Also show containers that exited or are being removed
    #[arg(short = 'a', long)]
    pub all: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only these services
    pub services: Vec<String>,
}

pub async fn run(project_args: &ProjectArgs, target: &Target, args: &PsArgs) -> anyhow::Result<i32> {
    let Some(stack) = project_name(project_args)? else { return Ok(1) };
    let request = pb::ListTasksRequest { stack, services: args.services.clone(), all: args.all, stale: target.stale };
    let mut connection = connect(target).await?;
    let response = connection
        .with_failover(|mut c| {
            let request = request.clone();
            async move { c.list_tasks(request).await }
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut tasks = response.into_inner().tasks;
    tasks.sort_by(|a, b| (&a.container_name, a.id).cmp(&(&b.container_name, b.id)));
    match args.format {
        Format::Table => println!("{}", table(&tasks)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&json(&tasks))?),
    }
    connection.close().await;
    Ok(0)
}

fn health_word(task: &pb::Task) -> String {
    match pb::Health::try_from(task.health).unwrap_or(pb::Health::Unspecified) {
        pb::Health::Unspecified => String::new(),
        h => h.as_str_name().trim_start_matches("HEALTH_").to_lowercase(),
    }
}

fn table(tasks: &[pb::Task]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["NAME", "SERVICE", "NODE", "STATE", "HEALTH", "PORTS", "REASON"]);
    for task in tasks {
        let service = task.service.as_ref().map(|s| s.service.clone()).unwrap_or_default();
        let reason = if task.state == pb::TaskState::Running as i32 { String::new() } else { task.message.clone() };
        table.add_row([
            task.container_name.clone(),
            service,
            task.node.clone(),
            state_word(task),
            health_word(task),
            task.ports.join(", "),
            reason,
        ]);
    }
    table
}

fn json(tasks: &[pb::Task]) -> serde_json::Value {
    tasks
        .iter()
        .map(|task| {
            serde_json::json!({
                "Name": task.container_name,
                "Service": task.service.as_ref().map(|s| s.service.clone()).unwrap_or_default(),
                "Project": task.service.as_ref().map(|s| s.stack.clone()).unwrap_or_default(),
                "Node": task.node,
                "Task": task.id,
                "Slot": task.slot,
                "ID": task.container_id,
                "State": state_word(task),
                "Health": health_word(task),
                "ExitCode": task.exit_code,
                "Publishers": task.ports,
                "Status": describe(task),
                "Reason": task.message,
            })
        })
        .collect()
}
