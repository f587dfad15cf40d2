//! `shoal node ls|inspect|update|promote|demote|rm`: the machines of the cluster, their
//! availability and labels, and manager membership.
//!
//! Labels: an agent gives its own (`shoal agent --label`) each time it registers; `node update
//! --label-add/--label-rm` changes them on the cluster's side. The operator's changes win and
//! persist across the agent's re-registrations (a removed label stays removed even if the agent
//! gives it again, until it is added back); `node inspect` shows both.

use std::collections::BTreeMap;

use clap::{Args, Subcommand, ValueEnum};
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
        /// A table, or JSON (one object per node) for scripts
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show a node in detail: resources, labels, platform, address, manager status, its tasks
    Inspect {
        /// Node ids or hostnames
        #[arg(required = true)]
        nodes: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
    },
    /// Change a node's availability or labels
    Update {
        /// Node id or hostname
        node: String,
        /// active: takes tasks; pause: keeps its tasks, takes no new ones; drain: its tasks move
        /// to other nodes
        #[arg(long, value_enum)]
        availability: Option<AvailabilityArg>,
        /// Add or change a label, KEY=VALUE (repeatable); wins over the agent's own labels
        #[arg(long = "label-add", value_name = "KEY=VALUE")]
        label_add: Vec<String>,
        /// Remove a label (repeatable), including one the agent gives
        #[arg(long = "label-rm", value_name = "KEY")]
        label_rm: Vec<String>,
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

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    #[default]
    Pretty,
    Json,
}

/// `node ls --format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AvailabilityArg {
    Active,
    Pause,
    Drain,
}

fn message(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn run(target: &Target, args: &NodeArgs) -> anyhow::Result<i32> {
    let connection = connect(target).await?;
    let mut control = connection.control.clone();
    let (node, action, force) = match &args.command {
        NodeCommand::Ls { quiet, format } => {
            let nodes = control.list_nodes(pb::ListNodesRequest { stale: target.stale }).await.map_err(message)?;
            let status = control.cluster_status(pb::ClusterStatusRequest { stale: true }).await.map_err(message)?;
            print_nodes(&nodes.into_inner().nodes, &status.into_inner(), *quiet, *format)?;
            connection.close().await;
            return Ok(0);
        }
        NodeCommand::Inspect { nodes, format } => {
            let code = inspect(&mut control, target.stale, nodes, *format).await?;
            connection.close().await;
            return Ok(code);
        }
        NodeCommand::Update { node, availability, label_add, label_rm } => {
            let mut add = std::collections::HashMap::new();
            for pair in label_add {
                match pair.split_once('=') {
                    Some((k, v)) if !k.trim().is_empty() => add.insert(k.trim().to_string(), v.to_string()),
                    _ => anyhow::bail!("--label-add {pair:?}: expected KEY=VALUE"),
                };
            }
            if availability.is_none() && add.is_empty() && label_rm.is_empty() {
                anyhow::bail!("nothing to update: give --availability, --label-add or --label-rm");
            }
            let availability = match availability {
                None => String::new(),
                Some(AvailabilityArg::Active) => "active".into(),
                Some(AvailabilityArg::Pause) => "pause".into(),
                Some(AvailabilityArg::Drain) => "drain".into(),
            };
            let request =
                pb::UpdateNodeRequest { node: node.clone(), availability, label_add: add, label_rm: label_rm.clone() };
            let updated = control.update_node(request).await.map_err(message)?.into_inner();
            if let Some(node) = updated.node {
                println!("{}", node.id);
            }
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

fn print_nodes(
    nodes: &[pb::Node],
    status: &pb::ClusterStatusResponse,
    quiet: bool,
    format: ListFormat,
) -> anyhow::Result<()> {
    if quiet {
        for node in nodes {
            println!("{}", node.id);
        }
        return Ok(());
    }
    match format {
        ListFormat::Table => println!("{}", nodes_table(nodes, status)),
        ListFormat::Json => println!("{}", serde_json::to_string_pretty(&nodes_json(nodes, status))?),
    }
    Ok(())
}

fn nodes_table(nodes: &[pb::Node], status: &pb::ClusterStatusResponse) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE"]);
    for node in nodes {
        table.add_row([
            node.id.clone(),
            node.hostname.clone(),
            node.status.clone(),
            node.availability.clone(),
            manager_status(node, status),
            node.engine_version.clone(),
        ]);
    }
    table
}

/// `node ls --format json`: one object per node, the table's columns and a little more (the
/// details are `node inspect`'s).
fn nodes_json(nodes: &[pb::Node], status: &pb::ClusterStatusResponse) -> serde_json::Value {
    nodes
        .iter()
        .map(|node| {
            let labels: BTreeMap<&String, &String> = node.labels.iter().collect();
            serde_json::json!({
                "ID": node.id,
                "Hostname": node.hostname,
                "Role": node.role,
                "Status": node.status,
                "StatusMessage": node.status_message,
                "Availability": node.availability,
                "ManagerStatus": manager_status(node, status),
                "EngineVersion": node.engine_version,
                "Address": node.address,
                "Labels": labels,
            })
        })
        .collect()
}

/// `node inspect`: the nodes (each by id or hostname) with their tasks; exit 1 if one is unknown.
async fn inspect(
    control: &mut shoal_proto::v1::control_client::ControlClient<tonic::transport::Channel>,
    stale: bool,
    names: &[String],
    format: Format,
) -> anyhow::Result<i32> {
    let nodes = control.list_nodes(pb::ListNodesRequest { stale }).await.map_err(message)?.into_inner().nodes;
    let status = control.cluster_status(pb::ClusterStatusRequest { stale: true }).await.map_err(message)?.into_inner();
    let request = pb::ListTasksRequest { stack: String::new(), services: Vec::new(), all: false, stale };
    let tasks = control.list_tasks(request).await.map_err(message)?.into_inner().tasks;
    let mut found = Vec::new();
    let mut code = 0;
    for name in names {
        match find(&nodes, name) {
            Ok(node) => found.push(node),
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
            }
        }
    }
    match format {
        Format::Json => {
            let all: Vec<serde_json::Value> = found.iter().map(|n| node_json(n, &status, &tasks)).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        Format::Pretty => {
            for (i, node) in found.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_node(node, &status, &tasks);
            }
        }
    }
    Ok(code)
}

/// A node by id, or by hostname when exactly one node has it.
fn find<'a>(nodes: &'a [pb::Node], name: &str) -> anyhow::Result<&'a pb::Node> {
    if let Some(node) = nodes.iter().find(|n| n.id == name) {
        return Ok(node);
    }
    let by_host: Vec<&pb::Node> = nodes.iter().filter(|n| n.hostname == name).collect();
    match by_host.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!("no node named {name:?}; `shoal node ls` lists them"),
        many => anyhow::bail!(
            "{} nodes have the hostname {name:?} ({}): name one by its id",
            many.len(),
            many.iter().map(|n| n.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// `leader`, `reachable`, `unreachable`, `learner`; empty for a node that is no manager.
fn manager_status(node: &pb::Node, status: &pb::ClusterStatusResponse) -> String {
    match status.managers.iter().find(|m| m.name == node.id) {
        Some(m) if m.id == status.leader => "leader".to_string(),
        Some(m) if !m.voter => "learner".to_string(),
        Some(m) if m.reachable => "reachable".to_string(),
        Some(_) => "unreachable".to_string(),
        None => String::new(),
    }
}

/// `1.5 GiB`, `512 MiB`, `0 B`: binary units, one decimal where it matters.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.trim_end_matches(".0"), UNITS[unit])
}

/// `4`, `0.5`: CPUs from nano-CPUs.
fn format_cpus(nano: u64) -> String {
    let text = format!("{:.2}", nano as f64 / 1e9);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn node_tasks<'a>(node: &pb::Node, tasks: &'a [pb::Task]) -> Vec<&'a pb::Task> {
    let mut on: Vec<&pb::Task> = tasks.iter().filter(|t| t.node == node.id).collect();
    on.sort_by(|a, b| (&a.container_name, a.id).cmp(&(&b.container_name, b.id)));
    on
}

/// Where each label comes from: the agent's own, set by an operator, or the agent's overridden.
fn label_origin(node: &pb::Node, key: &str, value: &str) -> &'static str {
    match node.agent_labels.get(key) {
        Some(v) if v == value => "agent",
        _ => "node update",
    }
}

fn print_node(node: &pb::Node, status: &pb::ClusterStatusResponse, tasks: &[pb::Task]) {
    let field = |name: &str, value: &str| println!("{:<16}{}", format!("{name}:"), value);
    field("ID", &node.id);
    field("Hostname", &node.hostname);
    field("Role", &node.role);
    field("Availability", &node.availability);
    if node.status_message.is_empty() {
        field("Status", &node.status);
    } else {
        field("Status", &format!("{} ({})", node.status, node.status_message));
    }
    let manager = manager_status(node, status);
    field("Manager status", if manager.is_empty() { "-" } else { &manager });
    field("Address", if node.address.is_empty() { "-" } else { &node.address });
    field("Platform", &format!("{}/{}", node.os, node.arch));
    field("Engine version", &node.engine_version);
    field("Resources", &format!("{} CPUs, {} memory", format_cpus(node.nano_cpus), format_bytes(node.memory_bytes)));
    let labels: BTreeMap<&String, &String> = node.labels.iter().collect();
    if labels.is_empty() {
        field("Labels", "-");
    } else {
        println!("Labels:");
        for (k, v) in &labels {
            println!("  {k}={v}  ({})", label_origin(node, k, v));
        }
    }
    let hidden: BTreeMap<&String, &String> =
        node.agent_labels.iter().filter(|(k, _)| !node.labels.contains_key(*k)).collect();
    for (k, v) in hidden {
        println!("  ({k}={v} given by the agent, removed by node update)");
    }
    let on = node_tasks(node, tasks);
    if on.is_empty() {
        field("Tasks", "none");
        return;
    }
    println!("Tasks:");
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(["  NAME", "SERVICE", "STATE"]);
    for task in on {
        let service = task.service.as_ref().map(|s| format!("{}/{}", s.stack, s.service)).unwrap_or_default();
        table.add_row([format!("  {}", task.container_name), service, super::converge::describe(task)]);
    }
    println!("{table}");
}

fn node_json(node: &pb::Node, status: &pb::ClusterStatusResponse, tasks: &[pb::Task]) -> serde_json::Value {
    let labels: BTreeMap<&String, &String> = node.labels.iter().collect();
    let agent_labels: BTreeMap<&String, &String> = node.agent_labels.iter().collect();
    serde_json::json!({
        "ID": node.id,
        "Hostname": node.hostname,
        "Role": node.role,
        "Availability": node.availability,
        "Status": node.status,
        "StatusMessage": node.status_message,
        "ManagerStatus": manager_status(node, status),
        "Address": node.address,
        "Platform": {"OS": node.os, "Architecture": node.arch},
        "EngineVersion": node.engine_version,
        "Resources": {
            "NanoCPUs": node.nano_cpus,
            "MemoryBytes": node.memory_bytes,
            "CPUs": format_cpus(node.nano_cpus),
            "Memory": format_bytes(node.memory_bytes),
        },
        "Labels": labels,
        "AgentLabels": agent_labels,
        "Tasks": node_tasks(node, tasks).iter().map(|t| serde_json::json!({
            "ID": t.id,
            "Name": t.container_name,
            "Stack": t.service.as_ref().map(|s| s.stack.clone()).unwrap_or_default(),
            "Service": t.service.as_ref().map(|s| s.service.clone()).unwrap_or_default(),
            "Slot": t.slot,
            "State": super::converge::state_word(t),
            "Status": super::converge::describe(t),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_cpus_read_like_people_write_them() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(8_242_724_864), "7.7 GiB");
        assert_eq!(format_cpus(4_000_000_000), "4");
        assert_eq!(format_cpus(500_000_000), "0.5");
    }

    #[test]
    fn node_ls_json_has_the_table_columns() {
        let m1 = pb::Node {
            id: "m1".into(),
            hostname: "host1".into(),
            role: "manager".into(),
            status: "ready".into(),
            availability: "active".into(),
            engine_version: "27.0".into(),
            labels: [("zone".to_string(), "east".to_string())].into(),
            ..Default::default()
        };
        let w1 = pb::Node {
            id: "w1".into(),
            role: "worker".into(),
            status: "down".into(),
            status_message: "no heartbeat for 6.2s".into(),
            ..Default::default()
        };
        let status = pb::ClusterStatusResponse {
            leader: 7,
            managers: vec![pb::ManagerStatus {
                id: 7,
                name: "m1".into(),
                voter: true,
                reachable: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json = nodes_json(&[m1.clone(), w1.clone()], &status);
        assert_eq!(json[0]["ID"], "m1");
        assert_eq!(json[0]["ManagerStatus"], "leader");
        assert_eq!(json[0]["Labels"]["zone"], "east");
        assert_eq!((json[1]["Status"].as_str(), json[1]["ManagerStatus"].as_str()), (Some("down"), Some("")));
        assert_eq!(json[1]["StatusMessage"], "no heartbeat for 6.2s");
        let table = nodes_table(&[m1, w1], &status).to_string();
        assert!(table.lines().any(|l| l.contains("m1") && l.contains("leader") && l.contains("27.0")), "{table}");
    }

    #[test]
    fn nodes_are_found_by_id_or_unique_hostname() {
        let node = |id: &str, host: &str| pb::Node { id: id.into(), hostname: host.into(), ..Default::default() };
        let nodes = [node("a1", "web"), node("b2", "db"), node("c3", "db")];
        assert_eq!(find(&nodes, "a1").map(|n| n.id.clone()).ok(), Some("a1".into()));
        assert_eq!(find(&nodes, "web").map(|n| n.id.clone()).ok(), Some("a1".into()));
        assert!(find(&nodes, "db").unwrap_err().to_string().contains("b2, c3"));
        assert!(find(&nodes, "x").is_err());
    }
}
