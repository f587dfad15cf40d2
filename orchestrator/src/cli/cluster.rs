//! `shoal cluster status|join-token|backup`: the control plane itself.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;

use super::connect::{connect, Target};
use crate::manager::recovery;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Managers with their role, the leader, term, commit/applied index, reachability and last
    /// contact; node, service and task counts
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print the token (and command) that admits a new manager or agent
    JoinToken {
        #[arg(value_enum)]
        role: Role,
        /// Print only the token
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a consistent copy of the cluster state to FILE (`shoal server --restore FILE`)
    Backup { file: PathBuf },
    /// Change cluster-wide settings
    Update {
        /// When a node joins (or comes back, or is made active again), move a share of every
        /// replicated service's tasks onto it (default: false; `shoal service rebalance` does it
        /// for one service on demand)
        #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, required = true)]
        rebalance_on_join: Option<bool>,
    },
}

fn message(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn run(target: &Target, args: &ClusterArgs) -> anyhow::Result<i32> {
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let code = match &args.command {
        ClusterCommand::Status { format } => {
            let status =
                control.cluster_status(pb::ClusterStatusRequest { stale: target.stale }).await.map_err(message)?;
            let status = status.into_inner();
            match format {
                Format::Table => print_status(&status),
                Format::Json => println!("{}", serde_json::to_string_pretty(&status_json(&status))?),
            }
            0
        }
        ClusterCommand::JoinToken { role, quiet } => {
            let role_name = match role {
                Role::Manager => "manager",
                Role::Worker => "worker",
            };
            let response = control
                .join_token(pb::JoinTokenRequest { role: role_name.into() })
                .await
                .map_err(message)?
                .into_inner();
            if *quiet {
                println!("{}", response.token);
            } else {
                let managers = response.managers.join(",");
                match role {
                    Role::Manager => println!(
                        "To add a manager to this cluster, run on it:\n\n    shoal server --join {managers} --token {} --listen ADDR --state-dir DIR\n",
                        response.token
                    ),
                    Role::Worker => println!(
                        "To add a node to this cluster, run on it:\n\n    shoal agent --join {managers} --token {}\n",
                        response.token
                    ),
                }
            }
            0
        }
        ClusterCommand::Update { rebalance_on_join } => {
            let request = pb::UpdateClusterRequest { rebalance_on_join: *rebalance_on_join };
            control.update_cluster(request).await.map_err(message)?;
            if let Some(enabled) = rebalance_on_join {
                eprintln!("rebalance-on-join is {}", if *enabled { "on" } else { "off" });
            }
            0
        }
        ClusterCommand::Backup { file } => {
            let backup = control.backup(pb::BackupRequest {}).await.map_err(message)?.into_inner();
            recovery::write_backup(file, &backup.state, backup.applied_index)?;
            eprintln!("wrote the cluster state (as of index {}) to {}", backup.applied_index, file.display());
            0
        }
    };
    connection.close().await;
    Ok(code)
}

fn print_status(status: &pb::ClusterStatusResponse) {
    let leader = status.managers.iter().find(|m| m.id == status.leader);
    match leader {
        Some(m) => println!("Leader:        {} ({})", display_name(m), m.id),
        None if status.leader != 0 => println!("Leader:        manager {}", status.leader),
        None => println!("Leader:        none (no quorum, or an election is under way)"),
    }
    println!("Term:          {}", status.term);
    println!("Commit index:  {}", status.commit_index);
    println!("Applied index: {}", status.applied_index);
    println!(
        "Log:           entries {}..{}, snapshot at {}",
        status.first_log_index, status.last_log_index, status.snapshot_index
    );
    println!(
        "Counts:        {} stacks, {} services, {} tasks, {} nodes",
        status.stacks, status.services, status.tasks, status.nodes
    );
    println!("Settings:      rebalance-on-join {}", if status.rebalance_on_join { "on" } else { "off" });
    println!();
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["ID", "NAME", "ADDRESS", "ROLE", "VOTER", "REACHABLE", "LAST CONTACT", "MATCHED"]);
    for m in &status.managers {
        let contact = match m.last_contact_ms {
            _ if m.id == status.answered_by => "(this manager)".to_string(),
            Some(ms) => format!("{}ms ago", ms),
            None => "never".to_string(),
        };
        table.add_row([
            m.id.to_string(),
            display_name(m),
            m.address.clone(),
            m.role.clone(),
            if m.voter { "yes" } else { "no" }.to_string(),
            if m.reachable { "yes" } else { "no" }.to_string(),
            contact,
            m.matched_index.map(|i| i.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{table}");
}

fn display_name(m: &pb::ManagerStatus) -> String {
    if m.name.is_empty() {
        format!("manager-{}", m.id)
    } else {
        m.name.clone()
    }
}

fn status_json(status: &pb::ClusterStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "leader": status.leader,
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "answered_by": status.answered_by,
        "snapshot_index": status.snapshot_index,
        "first_log_index": status.first_log_index,
        "last_log_index": status.last_log_index,
        "counts": {"stacks": status.stacks, "services": status.services, "tasks": status.tasks, "nodes": status.nodes},
        "settings": {"rebalance_on_join": status.rebalance_on_join},
        "managers": status.managers.iter().map(|m| serde_json::json!({
            "id": m.id,
            "name": m.name,
            "address": m.address,
            "role": m.role,
            "voter": m.voter,
            "reachable": m.reachable,
            "last_contact_ms": m.last_contact_ms,
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}
