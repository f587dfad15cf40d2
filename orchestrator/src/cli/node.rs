//! `shoal node ls|promote|demote|rm`: the machines of the cluster and manager membership.

use clap::{Args, Subcommand};
use comfy_table::{presets, Table};
use shoal_proto::v1 as pb;
use shoal_proto::v1::update_manager_request::Action;

use super::connect::{connect, Target};

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub command: NodeCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes (agents) with their status, and the managers' raft roles
    Ls {
        /// Print only the node ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Make a manager a voting member (it is promoted once it has caught up)
    Promote { node: String },
    /// Make a manager a non-voting member; the last voting manager cannot be demoted
    Demote { node: String },
    /// Remove a manager that is gone for good from the raft group
    Rm {
        node: String,
        /// Remove it even though it still answers
        #[arg(long)]
        force: bool,
    },
}

fn message(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn run(target: &Target, args: &NodeArgs) -> anyhow::Result<i32> {
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let (node, action, force) = match &args.command {
        NodeCommand::Ls { quiet } => {
            let nodes = control.list_nodes(pb::ListNodesRequest { stale: target.stale }).await.map_err(message)?;
            let status = control.cluster_status(pb::ClusterStatusRequest { stale: true }).await.map_err(message)?;
            print_nodes(&nodes.into_inner().nodes, &status.into_inner(), *quiet);
            connection.close().await;
            return Ok(0);
        }
        NodeCommand::Promote { node } => (node, Action::Promote, false),
        NodeCommand::Demote { node } => (node, Action::Demote, false),
        NodeCommand::Rm { node, force } => (node, Action::Remove, *force),
    };
    let request = pb::UpdateManagerRequest { node: node.clone(), action: action as i32, force };
    let response = control.update_manager(request).await.map_err(message)?.into_inner();
    println!("{}", response.message);
    connection.close().await;
    Ok(0)
}

fn print_nodes(nodes: &[pb::Node], status: &pb::ClusterStatusResponse, quiet: bool) {
    if quiet {
        for node in nodes {
            println!("{}", node.id);
        }
        return;
    }
    let manager_of = |id: &str| status.managers.iter().find(|m| m.name == id);
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE"]);
    for node in nodes {
        let manager = match manager_of(&node.id) {
            Some(m) if m.id == status.leader => "leader".to_string(),
            Some(m) if !m.voter => "learner".to_string(),
            Some(m) if m.reachable => "reachable".to_string(),
            Some(_) => "unreachable".to_string(),
            None => String::new(),
        };
        table.add_row([
            node.id.clone(),
            node.hostname.clone(),
            node.status.clone(),
            node.availability.clone(),
            manager,
            node.engine_version.clone(),
        ]);
    }
    println!("{table}");
}
