//! The nodes of a snapshot by position (id order), and what each carries. Positions instead of
//! ids, and numbers instead of service ids, keep the scheduler's hot path free of string lookups
//! and clones.

use std::collections::HashMap;

use crate::store::state::{ClusterState, Node, ServiceId};

use super::fit::{NodeLoad, Requirements};

/// A service as the view numbers it (its position among the state's services).
pub type ServiceIndex = u32;

pub struct View<'a> {
    /// Every node, in id order.
    pub nodes: Vec<&'a Node>,
    /// A node's position in `nodes`.
    pub position: HashMap<&'a str, usize>,
    /// What each node carries, by position; updated as the scheduler places tasks.
    pub loads: Vec<NodeLoad<ServiceIndex>>,
    services: HashMap<&'a ServiceId, ServiceIndex>,
}

impl<'a> View<'a> {
    /// Loads count every task that holds (or is about to hold) a container.
    pub fn new(state: &'a ClusterState) -> View<'a> {
        let nodes: Vec<&Node> = state.nodes.values().collect();
        let position: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let services: HashMap<&ServiceId, ServiceIndex> = state.services.keys().zip(0..).collect();
        let requirements: Vec<Requirements> = state.services.values().map(|s| Requirements::of(&s.spec)).collect();
        let mut view = View { loads: vec![NodeLoad::default(); nodes.len()], nodes, position, services };
        for task in state.tasks.values().filter(|t| t.state.is_active()) {
            let Some(&at) = task.node.as_deref().and_then(|n| view.position.get(n)) else { continue };
            let Some(&service) = view.services.get(&task.service) else { continue };
            view.loads[at].add(&service, &requirements[service as usize]);
        }
        view
    }

    /// The number the view gives a service of its state.
    pub fn service(&self, id: &ServiceId) -> Option<ServiceIndex> {
        self.services.get(id).copied()
    }

    /// Records one more task of `service` on the node at `position`.
    pub fn add(&mut self, position: usize, service: ServiceIndex, requirements: &Requirements) {
        if let Some(load) = self.loads.get_mut(position) {
            load.add(&service, requirements);
        }
    }
}
