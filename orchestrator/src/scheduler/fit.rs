//! Filters and ranking for one node: what it already carries, whether a task fits, how good a
//! fit it is, and how the reasons a task fits nowhere read.

use std::collections::{BTreeMap, BTreeSet};

use crate::compose::model::Service;
use crate::store::state::{Availability, Node, NodeStatus, ServiceId};

use super::constraints::{self, Constraint};
use super::tree::Key;

/// What one task of a service needs from a node, computed once per service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub nano_cpus: u64,
    pub memory: u64,
    /// Fixed host ports, as (`ip:port`, protocol).
    pub ports: Vec<(String, String)>,
    /// `max_replicas_per_node` (0 means unlimited, as in Swarm).
    pub max_per_node: Option<u64>,
}

impl Requirements {
    pub fn of(spec: &Service) -> Requirements {
        let (nano_cpus, memory) = reservations(spec);
        let max_per_node = spec
            .deploy
            .as_ref()
            .and_then(|d| d.placement.as_ref())
            .and_then(|p| p.max_replicas_per_node)
            .filter(|m| *m > 0);
        Requirements { nano_cpus, memory, ports: host_ports(spec), max_per_node }
    }

    /// Does one more task of `service` fit on `node`, given what it carries? (The checks that
    /// change as tasks are placed; see [`check_node`] for those that do not.)
    pub fn check<S: Ord + Clone>(&self, node: &Node, load: &NodeLoad<S>, service: &S) -> Result<(), Rejection> {
        // A node that reports no capacity (0) is not limited by it.
        if self.nano_cpus > 0 && node.nano_cpus > 0 && load.nano_cpus + self.nano_cpus > node.nano_cpus {
            return Err(Rejection::Cpu(self.nano_cpus));
        }
        if self.memory > 0 && node.memory_bytes > 0 && load.memory + self.memory > node.memory_bytes {
            return Err(Rejection::Memory(self.memory));
        }
        if let Some((port, protocol)) = self.ports.iter().find(|p| load.ports.contains(*p)) {
            let shown = port.trim_start_matches(':');
            return Err(Rejection::Port(format!("{shown}/{protocol}")));
        }
        if let Some(max) = self.max_per_node {
            if load.of(service) >= max {
                return Err(Rejection::MaxReplicas(max));
            }
        }
        Ok(())
    }
}

/// Is `node` a candidate at all: ready, active and within the constraints? These do not change
/// while tasks are placed, so they are checked once per service.
pub fn check_node(node: &Node, constraints: &[Constraint]) -> Result<(), Rejection> {
    if node.status != NodeStatus::Ready {
        return Err(Rejection::Down);
    }
    match node.availability {
        Availability::Active => {}
        Availability::Pause => return Err(Rejection::NotActive("paused".into())),
        Availability::Drain => return Err(Rejection::NotActive("drained".into())),
    }
    match constraints::first_failed(constraints, node) {
        Some(c) => Err(Rejection::Constraint(c.to_string())),
        None => Ok(()),
    }
}

/// What a node carries: reservations, host ports and tasks per service. Services are named by
/// `S`: the scheduler's view numbers them (comparing numbers instead of ids is most of what
/// ranking 10,000 nodes for each of 100 services costs); tests name them by id.
#[derive(Debug, Clone)]
pub struct NodeLoad<S = ServiceId> {
    pub nano_cpus: u64,
    pub memory: u64,
    pub ports: BTreeSet<(String, String)>,
    pub per_service: BTreeMap<S, u64>,
    pub total: u64,
}

impl<S> Default for NodeLoad<S> {
    fn default() -> Self {
        NodeLoad { nano_cpus: 0, memory: 0, ports: BTreeSet::new(), per_service: BTreeMap::new(), total: 0 }
    }
}

impl<S: Ord + Clone> NodeLoad<S> {
    pub fn add(&mut self, service: &S, requirements: &Requirements) {
        self.nano_cpus += requirements.nano_cpus;
        self.memory += requirements.memory;
        self.ports.extend(requirements.ports.iter().cloned());
        match self.per_service.get_mut(service) {
            Some(n) => *n += 1,
            None => {
                self.per_service.insert(service.clone(), 1);
            }
        }
        self.total += 1;
    }

    /// Tasks of `service` here.
    pub fn of(&self, service: &S) -> u64 {
        self.per_service.get(service).copied().unwrap_or(0)
    }
}

/// A node's rank for one more task of `service`, lower is better: fewest tasks of this service,
/// then fewest in total, then most free memory, then the node's position in id order. Spread
/// groups put their counts in front (see `tree.rs`).
pub fn rank<S: Ord + Clone>(node: &Node, load: &NodeLoad<S>, service: &S, position: usize) -> Key {
    let free_memory = node.memory_bytes.saturating_sub(load.memory);
    Key::from_slice(&[load.of(service), load.total, u64::MAX - free_memory, position as u64])
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

/// Why a node was filtered out; ordered so that reasons with equal counts print in a stable
/// order.
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

/// "0 of 3 nodes fit: 2 lack 512MiB memory, 1 fails constraint node.labels.zone==east": the most
/// common reason first (it is what to fix first), equal counts in [`Rejection`] order.
pub fn summarize(candidates: usize, rejections: &BTreeMap<Rejection, usize>) -> String {
    let mut reasons: Vec<(&Rejection, usize)> = rejections.iter().map(|(r, n)| (r, *n)).collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {}", r.describe(*n))).collect();
    format!("0 of {candidates} nodes fit: {}", parts.join(", "))
}

/// `512MiB`, `6GiB`, `1.5GiB`: the units users write reservations in.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    format!("{}{}", text.trim_end_matches(".0"), UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_most_common_first() {
        let mut rejections = BTreeMap::new();
        rejections.insert(Rejection::Constraint("node.labels.zone==east".into()), 1);
        rejections.insert(Rejection::Memory(512 << 20), 2);
        assert_eq!(
            summarize(3, &rejections),
            "0 of 3 nodes fit: 2 lack 512MiB memory, 1 fails constraint node.labels.zone==east"
        );
        rejections.insert(Rejection::Down, 2);
        rejections.insert(Rejection::Cpu(1_500_000_000), 1);
        rejections.insert(Rejection::NotActive("paused".into()), 1);
        assert_eq!(
            summarize(7, &rejections),
            "0 of 7 nodes fit: 2 are down, 2 lack 512MiB memory, 1 is paused, \
             1 fails constraint node.labels.zone==east, 1 lacks 1.5 CPUs"
        );
    }

    #[test]
    fn every_reason_in_singular_and_plural() {
        let cases = [
            (Rejection::Down, "1 is down", "2 are down"),
            (Rejection::NotActive("drained".into()), "1 is drained", "2 are drained"),
            (
                Rejection::Constraint("node.role==manager".into()),
                "1 fails constraint node.role==manager",
                "2 fail constraint node.role==manager",
            ),
            (Rejection::Cpu(2_000_000_000), "1 lacks 2 CPUs", "2 lack 2 CPUs"),
            (Rejection::Memory(6 << 30), "1 lacks 6GiB memory", "2 lack 6GiB memory"),
            (Rejection::Memory(1536 << 20), "1 lacks 1.5GiB memory", "2 lack 1.5GiB memory"),
            (Rejection::Port("8080/tcp".into()), "1 has port 8080/tcp in use", "2 have port 8080/tcp in use"),
            (
                Rejection::MaxReplicas(1),
                "1 already runs the maximum of 1 per node",
                "2 already run the maximum of 1 per node",
            ),
        ];
        for (rejection, one, two) in cases {
            assert_eq!(format!("1 {}", rejection.describe(1)), one);
            assert_eq!(format!("2 {}", rejection.describe(2)), two);
        }
    }
}
