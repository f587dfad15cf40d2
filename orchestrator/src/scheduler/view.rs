//! The nodes of a snapshot by position (id order), and what each carries. Positions instead of
//! ids, and numbers instead of service ids, keep the scheduler's hot path free of string lookups
//! and clones.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::store::state::{ClusterState, Node, ServiceId};

use super::constraints::{Attribute, Constraint};
use super::fit::{self, NodeLoad, Rejection, Requirements};

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
    /// What one task of each service needs, by service number.
    requirements: Vec<Requirements>,
    /// What services with the same constraints share, worked out once per round: most
    /// services of a stack have the same (or none), and at 100 services × 10,000 nodes the
    /// checks were a fifth of placing a lost node's tasks.
    fit_by_constraints: RefCell<HashMap<Vec<Constraint>, Rc<StaticFit>>>,
    /// Each node's spread groups, per list of spread attributes (see [`View::spread_groups`]).
    groups_by_spread: RefCell<HashMap<Vec<Attribute>, Rc<[u32]>>>,
}

/// The checks of a node that do not change while tasks are placed (status, availability,
/// constraints; see [`fit::check_node`]), for every node.
pub struct StaticFit {
    /// By node position: why it can never take the tasks, if so.
    pub unfit: Vec<Option<Rejection>>,
    /// How many nodes were ruled out, by reason.
    pub rejections: BTreeMap<Rejection, usize>,
}

impl<'a> View<'a> {
    /// Loads count every task that holds (or is about to hold) a container.
    pub fn new(state: &'a ClusterState) -> View<'a> {
        let nodes: Vec<&Node> = state.nodes.values().collect();
        let position: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
        let services: HashMap<&ServiceId, ServiceIndex> = state.services.keys().zip(0..).collect();
        let requirements: Vec<Requirements> = state.services.values().map(|s| Requirements::of(&s.spec)).collect();
        let mut view = View {
            loads: vec![NodeLoad::default(); nodes.len()],
            nodes,
            position,
            services,
            requirements,
            fit_by_constraints: RefCell::default(),
            groups_by_spread: RefCell::default(),
        };
        for task in state.tasks.values().filter(|t| t.state.is_active()) {
            let Some(&at) = task.node.as_deref().and_then(|n| view.position.get(n)) else { continue };
            let Some(&service) = view.services.get(&task.service) else { continue };
            view.loads[at].add(&service, &view.requirements[service as usize]);
        }
        view
    }

    /// The number the view gives a service of its state.
    pub fn service(&self, id: &ServiceId) -> Option<ServiceIndex> {
        self.services.get(id).copied()
    }

    /// What one task of the service numbered `service` needs.
    pub fn requirements(&self, service: ServiceIndex) -> Option<&Requirements> {
        self.requirements.get(service as usize)
    }

    /// Every node's static fit for tasks with these constraints.
    pub fn static_fit(&self, constraints: &[Constraint]) -> Rc<StaticFit> {
        let mut cache = self.fit_by_constraints.borrow_mut();
        if let Some(fit) = cache.get(constraints) {
            return fit.clone();
        }
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        let unfit = self
            .nodes
            .iter()
            .map(|node| {
                let rejection = fit::check_node(node, constraints).err()?;
                *rejections.entry(rejection.clone()).or_default() += 1;
                Some(rejection)
            })
            .collect();
        let fit = Rc::new(StaticFit { unfit, rejections });
        cache.insert(constraints.to_vec(), fit.clone());
        fit
    }

    /// Every node's group at each level of a spread: `groups[position * levels + level]`, the
    /// node's value of that level's attribute as a number (0: it lacks the attribute; equal
    /// values, equal numbers).
    pub fn spread_groups(&self, spread: &[Attribute]) -> Rc<[u32]> {
        let mut cache = self.groups_by_spread.borrow_mut();
        if let Some(groups) = cache.get(spread) {
            return groups.clone();
        }
        let mut numbers: Vec<HashMap<&str, u32>> = vec![HashMap::new(); spread.len()];
        let mut groups = Vec::with_capacity(self.nodes.len() * spread.len());
        for node in &self.nodes {
            for (attribute, numbers) in spread.iter().zip(&mut numbers) {
                let group = match attribute.value(node) {
                    None => 0,
                    Some(value) => {
                        let next = numbers.len() as u32 + 1;
                        *numbers.entry(value).or_insert(next)
                    }
                };
                groups.push(group);
            }
        }
        let groups: Rc<[u32]> = groups.into();
        cache.insert(spread.to_vec(), groups.clone());
        groups
    }

    /// Records one more task of `service` on the node at `position`.
    pub fn add(&mut self, position: usize, service: ServiceIndex, requirements: &Requirements) {
        if let Some(load) = self.loads.get_mut(position) {
            load.add(&service, requirements);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::constraints::Constraint;
    use crate::scheduler::tests::{node, state_with};

    #[test]
    fn services_alike_share_the_static_fit_and_spread_groups_number_values() {
        let mut state = state_with(&[], &[("web", "{image: x}", 1)]);
        for (id, zone) in [("a", Some("east")), ("b", None), ("c", Some("west")), ("d", Some("east"))] {
            let mut n = node(id);
            if let Some(zone) = zone {
                n.labels.insert("zone".into(), zone.into());
            }
            state.apply(crate::store::command::Command::RegisterNode { node: Box::new(n) });
        }
        let view = View::new(&state);
        let east = vec![Constraint::parse("node.labels.zone==east").expect("valid")];
        let fit = view.static_fit(&east);
        assert!(Rc::ptr_eq(&fit, &view.static_fit(&east.clone())), "worked out once per constraint list");
        let fits: Vec<bool> = fit.unfit.iter().map(Option::is_none).collect();
        assert_eq!(fits, [true, false, false, true]);
        assert_eq!(fit.rejections.values().sum::<usize>(), 2);
        assert!(view.static_fit(&[]).unfit.iter().all(Option::is_none));

        let zone = [Attribute::Label("zone".into())];
        let groups = view.spread_groups(&zone);
        assert_eq!(&groups[..], &[1, 0, 2, 1], "east, none, west, east");
        assert!(Rc::ptr_eq(&groups, &view.spread_groups(&zone)));
        let two = view.spread_groups(&[Attribute::Label("zone".into()), Attribute::Id]);
        assert_eq!(&two[..], &[1, 1, 0, 2, 2, 3, 1, 4], "levels side by side per node");
    }
}
