//! One service's candidate nodes as a tree of spread groups, each level ranked.
//!
//! With preferences `[zone, rack]` the root's children are the zones, theirs the racks, theirs
//! the nodes (with no preferences the nodes hang off the root). Every group knows how many of the
//! service's tasks its nodes run, and keeps its children that can still take a task in a sorted
//! set keyed by `[count, best child's key...]`; a node's key is its [`rank`]. So the first entry
//! of the root is the node with the lexicographically smallest `[zone count, rack count, node
//! rank...]` — Swarm's spread: the emptiest zone, in it the emptiest rack, in it the best node —
//! found in O(depth), and a placement updates only the keys on one path: O(depth × log n) instead
//! of a scan over every node.
//!
//! Counts include nodes that can no longer take a task (full): their tasks are still in the
//! group, so a zone with one full node does not look empty.
//!
//! [`rank`]: super::fit::rank

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};

/// A rank: lower is better, compared lexicographically. Inline up to four spread levels (a
/// node's rank is four numbers, each level puts one in front), so ranking allocates nothing.
pub type Key = smallvec::SmallVec<[u64; 8]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Child {
    Group(usize),
    Leaf(usize),
}

#[derive(Debug)]
struct Group {
    parent: Option<usize>,
    count: u64,
    children: Vec<Child>,
    /// The children that can still take a task, best first.
    ranked: BTreeSet<(Key, Child)>,
    /// This group's entry in its parent's `ranked` (`None`: no node in it can take a task).
    key: Option<Key>,
}

impl Group {
    fn new(parent: Option<usize>) -> Group {
        Group { parent, count: 0, children: Vec::new(), ranked: BTreeSet::new(), key: None }
    }
}

#[derive(Debug)]
struct Leaf {
    position: usize,
    parent: usize,
    count: u64,
    /// `None`: the node cannot take a task.
    key: Option<Key>,
}

/// A node as the tree is built from it.
pub struct LeafSpec<'p> {
    /// The node's position in the view.
    pub position: usize,
    /// Its group at each preference level, numbered (see `View::spread_groups`).
    pub path: &'p [u32],
    /// Tasks of the service on it.
    pub count: u64,
    /// Its rank, or `None` if it cannot take a task.
    pub key: Option<Key>,
}

#[derive(Debug)]
pub struct Tree {
    groups: Vec<Group>,
    leaves: Vec<Leaf>,
    leaf_at: HashMap<usize, usize>,
}

const ROOT: usize = 0;

impl Tree {
    /// Every spec's path must have the same length (one value per preference).
    pub fn build<'p>(specs: impl IntoIterator<Item = LeafSpec<'p>>) -> Tree {
        let mut tree = Tree { groups: vec![Group::new(None)], leaves: Vec::new(), leaf_at: HashMap::new() };
        let mut by_value: HashMap<(usize, u32), usize> = HashMap::new();
        for spec in specs {
            let mut group = ROOT;
            for &value in spec.path {
                group = match by_value.entry((group, value)) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        let id = tree.groups.len();
                        tree.groups.push(Group::new(Some(group)));
                        tree.groups[group].children.push(Child::Group(id));
                        *e.insert(id)
                    }
                };
            }
            let leaf = tree.leaves.len();
            tree.groups[group].children.push(Child::Leaf(leaf));
            if let Some(key) = &spec.key {
                tree.groups[group].ranked.insert((key.clone(), Child::Leaf(leaf)));
            }
            let mut up = Some(group);
            while let Some(g) = up {
                tree.groups[g].count += spec.count;
                up = tree.groups[g].parent;
            }
            tree.leaf_at.insert(spec.position, leaf);
            tree.leaves.push(Leaf { position: spec.position, parent: group, count: spec.count, key: spec.key });
        }
        // A group is created after its parent: going backwards ranks every group's children
        // before the group itself.
        for g in (1..tree.groups.len()).rev() {
            let key = tree.group_key(g);
            tree.groups[g].key = key.clone();
            if let (Some(key), Some(parent)) = (key, tree.groups[g].parent) {
                tree.groups[parent].ranked.insert((key, Child::Group(g)));
            }
        }
        tree
    }

    fn group_key(&self, g: usize) -> Option<Key> {
        let group = &self.groups[g];
        group.ranked.first().map(|(best, _)| {
            let mut key = Key::new();
            key.push(group.count);
            key.extend_from_slice(best);
            key
        })
    }

    /// The best node that can take a task, by position.
    pub fn best(&self) -> Option<usize> {
        self.best_in(Child::Group(ROOT))
    }

    fn best_in(&self, mut at: Child) -> Option<usize> {
        loop {
            match at {
                Child::Leaf(l) => return self.leaves[l].key.as_ref().map(|_| self.leaves[l].position),
                Child::Group(g) => at = self.groups[g].ranked.first()?.1,
            }
        }
    }

    /// Can the node at `position` still take a task?
    pub fn is_ranked(&self, position: usize) -> bool {
        self.leaf_at.get(&position).is_some_and(|l| self.leaves[*l].key.is_some())
    }

    /// The node at `position` got a new rank (`None`: it cannot take a task any more), and one
    /// more task if `placed`. Nodes that are not in the tree are ignored.
    pub fn update(&mut self, position: usize, key: Option<Key>, placed: bool) {
        let Some(&l) = self.leaf_at.get(&position) else { return };
        let leaf = &mut self.leaves[l];
        if placed {
            leaf.count += 1;
        }
        let old = std::mem::replace(&mut leaf.key, key.clone());
        let mut g = leaf.parent;
        replace_entry(&mut self.groups[g].ranked, old, key, Child::Leaf(l));
        loop {
            if placed {
                self.groups[g].count += 1;
            }
            let Some(parent) = self.groups[g].parent else { return };
            let new = self.group_key(g);
            let old = std::mem::replace(&mut self.groups[g].key, new.clone());
            if old != new {
                replace_entry(&mut self.groups[parent].ranked, old, new, Child::Group(g));
            }
            g = parent;
        }
    }

    /// Where one task should move to even the spread out, as (from, to) node positions: at the
    /// first level, top-down, where the child with the most tasks has at least two more than
    /// the emptiest child that can take one. A move between two children of a group changes no
    /// count above it, so it never undoes a level above; every move strictly evens out one level
    /// without touching those above it, so repeated moves end.
    pub fn imbalance(&self) -> Option<(usize, usize)> {
        self.imbalance_in(ROOT)
    }

    fn imbalance_in(&self, g: usize) -> Option<(usize, usize)> {
        let group = &self.groups[g];
        let fullest = self.fullest_child(g);
        if let (Some(from), Some((_, to))) = (fullest, group.ranked.first()) {
            if self.count(from) > self.count(*to) + 1 {
                if let (Some(from), Some(to)) = (self.fullest_node(from), self.best_in(*to)) {
                    return Some((from, to));
                }
            }
        }
        group.children.iter().find_map(|child| match child {
            Child::Group(inner) => self.imbalance_in(*inner),
            Child::Leaf(_) => None,
        })
    }

    fn count(&self, child: Child) -> u64 {
        match child {
            Child::Group(g) => self.groups[g].count,
            Child::Leaf(l) => self.leaves[l].count,
        }
    }

    /// The child with the most tasks; among equals the last, so that the first ones keep theirs.
    fn fullest_child(&self, g: usize) -> Option<Child> {
        self.groups[g].children.iter().copied().max_by_key(|c| self.count(*c))
    }

    fn fullest_node(&self, mut at: Child) -> Option<usize> {
        loop {
            match at {
                Child::Leaf(l) => return Some(self.leaves[l].position),
                Child::Group(g) => at = self.fullest_child(g)?,
            }
        }
    }
}

fn replace_entry(set: &mut BTreeSet<(Key, Child)>, old: Option<Key>, new: Option<Key>, child: Child) {
    if let Some(old) = old {
        set.remove(&(old, child));
    }
    if let Some(new) = new {
        set.insert((new, child));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node in a zone, numbered as the view numbers groups (0: no zone).
    fn leaf(position: usize, zone: Option<&str>, count: u64) -> LeafSpec<'static> {
        let path: &'static [u32] = match zone {
            None => &[0],
            Some("east") => &[1],
            Some(_) => &[2],
        };
        LeafSpec { position, path, count, key: Some(Key::from_slice(&[count, position as u64])) }
    }

    #[test]
    fn picks_the_emptiest_group_then_the_best_node() {
        let mut tree = Tree::build([leaf(0, Some("east"), 1), leaf(1, Some("east"), 0), leaf(2, Some("west"), 2)]);
        assert_eq!(tree.best(), Some(1), "east holds 1 task, west 2");
        tree.update(1, Some(Key::from_slice(&[1, 1])), true);
        assert_eq!(tree.best(), Some(0), "east and west hold 2: node 0 has 1 task, node 2 has 2");
        tree.update(0, None, false);
        assert_eq!(tree.best(), Some(1), "node 0 is full: east's best is node 1 (1 task, vs node 2's 2)");
        tree.update(1, None, false);
        assert_eq!(tree.best(), Some(2), "east cannot take more");
        tree.update(2, None, false);
        assert_eq!(tree.best(), None);
    }

    #[test]
    fn nodes_without_the_label_are_a_group_of_their_own() {
        let tree = Tree::build([leaf(0, Some("east"), 1), leaf(1, None, 0), leaf(2, None, 0)]);
        assert_eq!(tree.best(), Some(1));
    }

    #[test]
    fn finds_the_top_level_imbalance_first() {
        // east: 0 (4 tasks), 1 (0); west: 2 (1).
        let tree = Tree::build([leaf(0, Some("east"), 4), leaf(1, Some("east"), 0), leaf(2, Some("west"), 1)]);
        assert_eq!(tree.imbalance(), Some((0, 2)), "east 4 vs west 1: a task goes west");
        // east: 0 (2), 1 (0); west: 2 (2): zones even, east's nodes not.
        let tree = Tree::build([leaf(0, Some("east"), 2), leaf(1, Some("east"), 0), leaf(2, Some("west"), 2)]);
        assert_eq!(tree.imbalance(), Some((0, 1)), "within east, never across zones");
        let tree = Tree::build([leaf(0, Some("east"), 2), leaf(1, Some("east"), 1), leaf(2, Some("west"), 2)]);
        assert_eq!(tree.imbalance(), None);
    }

    #[test]
    fn a_full_emptiest_node_is_no_target() {
        let mut full = leaf(1, None, 0);
        full.key = None;
        let tree = Tree::build([leaf(0, None, 3), full, leaf(2, None, 2)]);
        assert_eq!(tree.imbalance(), None, "node 1 cannot take a task; 3 vs 2 is even enough");
    }
}
