//! The nodes of a snapshot by position (id order), and what each carries. Positions instead of
//! ids keep the scheduler's hot path free of string lookups and clones.

use std::collections::{BTreeMap, HashMap};

use crate::store::state::{ClusterState, Node, ServiceId};

use super::fit::{NodeLoad, Requirements};

pub struct View<'a> {
    /// Every node, in id order.
    pub nodes: Vec<&'a Node>,
    /// A node's position in `nodes`.
    pub position: HashMap<&'a str, usize>,
    /// What each node carries, by position; updated as the scheduler places tasks.
    pub loads: Vec<NodeLoad>,
    requirements: BTreeMap<&'a ServiceId, Requirements>,
}

impl<'a> View<'a> {
    /// Loads count every task that holds (or is about to hold) a container.
    pub fn new(state: &'a ClusterState) -> View<'a> {
        let nodes: Vec<&Node> = state.nodes.values().collect();
        let position: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let mut view =
            View { loads: vec![NodeLoad::default(); nodes.len()], nodes, position, requirements: BTreeMap::new() };
        for task in state.tasks.values().filter(|t| t.state.is_active()) {
            let Some(&at) = task.node.as_deref().and_then(|n| view.position.get(n)) else { continue };
            let Some(service) = state.services.get(&task.service) else { continue };
            let requirements = view.requirements.entry(&service.id).or_insert_with(|| Requirements::of(&service.spec));
            view.loads[at].add(&task.service, requirements);
        }
        view
    }

    /// Records one more task of `service` on the node at `position`.
    pub fn add(&mut self, position: usize, service: &ServiceId, requirements: &Requirements) {
        if let Some(load) = self.loads.get_mut(position) {
            load.add(service, requirements);
        }
    }
}
