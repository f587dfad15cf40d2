//! `deploy.placement.constraints`: `node.id`, `node.hostname`, `node.role`, `node.labels.<k>`,
//! `node.platform.os`, `node.platform.arch`, compared with `==` or `!=`.

use crate::compose::model::Service;
use crate::store::state::{Node, NodeRole};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub equals: bool,
    pub value: String,
}

impl Constraint {
    /// Parses `node.labels.zone == east`. Returns `None` for text that is not a constraint.
    pub fn parse(text: &str) -> Option<Constraint> {
        let (key, equals, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return None;
        };
        Some(Constraint { key: key.trim().to_string(), equals, value: value.trim().to_string() })
    }

    /// Does `node` satisfy this constraint? Unknown keys match nothing, so a typo never places
    /// a task somewhere unintended.
    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<&str> = match self.key.as_str() {
            "node.id" => Some(&node.id),
            "node.hostname" => Some(&node.hostname),
            "node.role" => Some(match node.role {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }),
            "node.platform.os" => Some(&node.os),
            "node.platform.arch" => Some(&node.arch),
            key => match key.strip_prefix("node.labels.") {
                Some(label) => node.labels.get(label).map(String::as_str),
                None => return false,
            },
        };
        match actual {
            Some(actual) => (actual == self.value) == self.equals,
            // A missing label is "not equal" to anything.
            None => !self.equals,
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.key, if self.equals { "==" } else { "!=" }, self.value)
    }
}

/// The service's constraints; text that does not parse becomes a constraint nothing satisfies.
pub fn constraints_of(service: &Service) -> Vec<Constraint> {
    let texts =
        service.deploy.as_ref().and_then(|d| d.placement.as_ref()).map(|p| p.constraints.as_slice()).unwrap_or(&[]);
    texts
        .iter()
        .map(|t| Constraint::parse(t).unwrap_or(Constraint { key: t.clone(), equals: true, value: String::new() }))
        .collect()
}

/// The first constraint `node` fails, if any.
pub fn first_failed(service: &Service, node: &Node) -> Option<Constraint> {
    constraints_of(service).into_iter().find(|c| !c.matches(node))
}

pub fn node_matches(service: &Service, node: &Node) -> bool {
    first_failed(service, node).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::node;

    #[test]
    fn parses_and_matches() {
        let mut n = node("n1");
        n.labels.insert("zone".into(), "east".into());
        let c = |s: &str| Constraint::parse(s).unwrap();
        assert!(c("node.labels.zone == east").matches(&n));
        assert!(!c("node.labels.zone!=east").matches(&n));
        assert!(c("node.labels.rack!=r1").matches(&n), "missing label is not equal");
        assert!(!c("node.labels.rack==r1").matches(&n));
        assert!(c("node.role==worker").matches(&n));
        assert!(c("node.hostname==host-n1").matches(&n));
        assert!(!c("engine.labels.x==y").matches(&n), "unknown keys never match");
        assert_eq!(c("node.id==n1").to_string(), "node.id==n1");
        assert!(Constraint::parse("nonsense").is_none());
    }
}
