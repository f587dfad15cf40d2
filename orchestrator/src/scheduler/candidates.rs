//! One service's candidate nodes: the checks that do not change while tasks are placed (status,
//! availability, constraints) run once per service; the survivors go into a ranked spread
//! [`Tree`]; the checks that do change (reservations, host ports, max per node) run when a node
//! comes first, and a node that fails them leaves the tree for good — loads only grow while one
//! service's tasks are placed, so it would fail again.
//!
//! That keeps scheduling a service O((tasks + nodes) × log nodes) rather than tasks × nodes, and
//! picks exactly the node a full scan with the same filters and ranking would.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::store::state::ServiceRecord;

use super::constraints::constraints_of;
use super::fit::{self, Rejection, Requirements};
use super::preferences::spread_of;
use super::tree::{LeafSpec, Tree};
use super::view::{ServiceIndex, StaticFit, View};

pub struct Candidates {
    /// The service, as the view numbers it.
    pub service: ServiceIndex,
    pub requirements: Requirements,
    tree: Tree,
    /// Per node position: why it can never take this service's tasks, if so (shared by the
    /// services with the same constraints).
    fixed: Rc<StaticFit>,
    /// Why nodes were ruled out so far, one entry per node.
    rejections: BTreeMap<Rejection, usize>,
}

/// When the per-placement checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// When a node comes first (placing many tasks).
    Lazily,
    /// For every node up front (rebalancing: the tree must know which nodes can take a task).
    Eagerly,
}

impl Candidates {
    /// `Err` with the task's reason when the service's placement settings are malformed.
    pub fn new(view: &View, service: &ServiceRecord, check: Check) -> Result<Candidates, String> {
        let constraints = constraints_of(&service.spec).map_err(|e| e.to_string())?;
        let spread = spread_of(&service.spec).map_err(|e| e.to_string())?;
        let (index, requirements) = view
            .service(&service.id)
            .and_then(|index| Some((index, view.requirements(index)?.clone())))
            .ok_or_else(|| format!("service {} is not in the snapshot", service.id))?;
        let fixed = view.static_fit(&constraints);
        let mut rejections = fixed.rejections.clone();
        let groups = view.spread_groups(&spread);
        let levels = spread.len();
        let mut leaves = Vec::new();
        for (position, node) in view.nodes.iter().enumerate() {
            if fixed.unfit[position].is_some() {
                continue;
            }
            let load = &view.loads[position];
            let fits = match check {
                Check::Lazily => Ok(()),
                Check::Eagerly => requirements.check(node, load, &index),
            };
            let key = match fits {
                Ok(()) => Some(fit::rank(node, load, &index, position)),
                Err(rejection) => {
                    *rejections.entry(rejection).or_default() += 1;
                    None
                }
            };
            let path = &groups[position * levels..(position + 1) * levels];
            leaves.push(LeafSpec { position, path, count: load.of(&index), key });
        }
        let tree = Tree::build(leaves);
        Ok(Candidates { service: index, requirements, tree, fixed, rejections })
    }

    /// The best node for one more task, or why there is none.
    pub fn next(&mut self, view: &View) -> Result<usize, String> {
        loop {
            let Some(position) = self.tree.best() else {
                return Err(fit::summarize(view.nodes.len(), &self.rejections));
            };
            match self.requirements.check(view.nodes[position], &view.loads[position], &self.service) {
                Ok(()) => return Ok(position),
                Err(rejection) => {
                    *self.rejections.entry(rejection).or_default() += 1;
                    self.tree.update(position, None, false);
                }
            }
        }
    }

    /// Can one more task go to the node at `position` (a pinned task)?
    pub fn check(&self, view: &View, position: usize) -> Result<(), Rejection> {
        match &self.fixed.unfit[position] {
            Some(rejection) => Err(rejection.clone()),
            None => self.requirements.check(view.nodes[position], &view.loads[position], &self.service),
        }
    }

    /// Is the node at `position` ready, active and within the constraints?
    pub fn eligible(&self, position: usize) -> bool {
        self.fixed.unfit.get(position).is_some_and(Option::is_none)
    }

    /// A task was placed at `position` and `view` counts it already: re-rank the node.
    pub fn placed(&mut self, view: &View, position: usize) {
        if self.fixed.unfit[position].is_some() {
            return;
        }
        // A node that was ruled out stays out (its rejection is counted once).
        let key = self
            .tree
            .is_ranked(position)
            .then(|| fit::rank(view.nodes[position], &view.loads[position], &self.service, position));
        self.tree.update(position, key, true);
    }

    /// Where one task should move to even the spread out, as (from, to) node positions. Needs
    /// [`Check::Eagerly`].
    pub fn imbalance(&self) -> Option<(usize, usize)> {
        self.tree.imbalance()
    }
}
