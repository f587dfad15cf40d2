//! Filters and ranking for one node: what it already carries, whether a task fits, how good a
//! fit it is.

use std::collections::{BTreeMap, BTreeSet};

use crate::compose::model::Service;
use crate::store::state::{Availability, ClusterState, Node, NodeId, NodeStatus, ServiceId, ServiceRecord};

use super::constraints;

/// What a node carries: reservations, host ports and tasks per service.
#[derive(Debug, Clone, Default)]
pub struct NodeLoad {
    pub nano_cpus: u64,
    pub memory: u64,
    pub ports: BTreeSet<(String, String)>,
    pub per_service: BTreeMap<ServiceId, u64>,
    pub total: u64,
}

impl NodeLoad {
    pub fn add(&mut self, service: &ServiceId, spec: &Service) {
        let (cpus, memory) = reservations(spec);
        self.nano_cpus += cpus;
        self.memory += memory;
        self.ports.extend(host_ports(spec));
        *self.per_service.entry(service.clone()).or_default() += 1;
        self.total += 1;
    }
}

/// Loads from every task that holds (or is about to hold) a container.
pub fn current_loads(state: &ClusterState) -> BTreeMap<NodeId, NodeLoad> {
    let mut loads: BTreeMap<NodeId, NodeLoad> = BTreeMap::new();
    for task in state.tasks.values().filter(|t| t.state.is_active()) {
        let (Some(node), Some(service)) = (&task.node, state.services.get(&task.service)) else { continue };
        loads.entry(node.clone()).or_default().add(&task.service, &service.spec);
    }
    loads
}

/// Reserved nano-CPUs and bytes of memory.
fn reservations(spec: &Service) -> (u64, u64) {
    let r = spec.deploy.as_ref().and_then(|d| d.resources.as_ref()).and_then(|r| r.reservations.as_ref());
    let cpus = r.and_then(|r| r.cpus).map_or(0, |c| (c * 1e9) as u64);
    let memory = r.and_then(|r| r.memory).map_or(0, |m| m.0);
    (cpus, memory)
}

/// Fixed host ports the service publishes, as (`ip:port`, protocol). Ranges and ephemeral
/// ports never conflict: the engine picks a free one.
fn host_ports(spec: &Service) -> Vec<(String, String)> {
    spec.ports
        .iter()
        .filter_map(|p| {
            let published = p.published.as_deref().filter(|p| !p.contains('-') && !p.is_empty() && *p != "0")?;
            let ip = p.host_ip.clone().unwrap_or_default();
            Some((format!("{ip}:{published}"), p.protocol.clone().unwrap_or_else(|| "tcp".into())))
        })
        .collect()
}

/// Why a node was filtered out; ordered so that reasons print in a stable order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    Down,
    NotActive(String),
    Constraint(String),
    Cpu(u64),
    Memory(u64),
    Port(String),
    MaxReplicas(u64),
}

impl Rejection {
    /// The phrase after the count: "2 lack 512MiB memory".
    pub fn describe(&self, count: usize) -> String {
        let (is, has, lacks) = if count == 1 { ("is", "has", "lacks") } else { ("are", "have", "lack") };
        match self {
            Rejection::Down => format!("{is} down"),
            Rejection::NotActive(a) => format!("{is} {a}"),
            Rejection::Constraint(c) => format!("fail{} constraint {c}", if count == 1 { "s" } else { "" }),
            Rejection::Cpu(n) => format!("{lacks} {} CPUs", *n as f64 / 1e9),
            Rejection::Memory(b) => format!("{lacks} {} memory", human_bytes(*b)),
            Rejection::Port(p) => format!("{has} port {p} in use"),
            Rejection::MaxReplicas(n) => {
                format!("already run{} the maximum of {n} per node", if count == 1 { "s" } else { "" })
            }
        }
    }
}

pub fn check(node: &Node, load: &NodeLoad, service: &ServiceRecord) -> Result<(), Rejection> {
    if node.status != NodeStatus::Ready {
        return Err(Rejection::Down);
    }
    match node.availability {
        Availability::Active => {}
        Availability::Pause => return Err(Rejection::NotActive("paused".into())),
        Availability::Drain => return Err(Rejection::NotActive("drained".into())),
    }
    if let Some(c) = constraints::first_failed(&service.spec, node) {
        return Err(Rejection::Constraint(c.to_string()));
    }
    let (cpus, memory) = reservations(&service.spec);
    // A node that reports no capacity (0) is not limited by it.
    if cpus > 0 && node.nano_cpus > 0 && load.nano_cpus + cpus > node.nano_cpus {
        return Err(Rejection::Cpu(cpus));
    }
    if memory > 0 && node.memory_bytes > 0 && load.memory + memory > node.memory_bytes {
        return Err(Rejection::Memory(memory));
    }
    for (port, protocol) in host_ports(&service.spec) {
        if load.ports.contains(&(port.clone(), protocol.clone())) {
            let shown = port.trim_start_matches(':');
            return Err(Rejection::Port(format!("{shown}/{protocol}")));
        }
    }
    let max = service.spec.deploy.as_ref().and_then(|d| d.placement.as_ref()).and_then(|p| p.max_replicas_per_node);
    if let Some(max) = max.filter(|m| *m > 0) {
        if load.per_service.get(&service.id).copied().unwrap_or(0) >= max {
            return Err(Rejection::MaxReplicas(max));
        }
    }
    Ok(())
}

/// Lower is better.
pub type Rank = (u64, u64, u64, NodeId);

pub fn rank(node: &Node, load: &NodeLoad, service: &ServiceId) -> Rank {
    let free_memory = node.memory_bytes.saturating_sub(load.memory);
    (load.per_service.get(service).copied().unwrap_or(0), load.total, u64::MAX - free_memory, node.id.clone())
}

/// `512 MiB`, `6 GiB`, `1.5 GiB`: the way users write reservations.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{} {}", text.trim_end_matches(".0"), UNITS[unit])
}
