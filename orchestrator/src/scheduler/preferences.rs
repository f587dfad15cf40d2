//! `deploy.placement.preferences: [{spread: node.labels.zone}]`: spread a service's tasks evenly
//! over the values of a node attribute, the first preference first.
//!
//! Swarm spreads over `node.labels.<name>` only; the other constraint attributes work too (a
//! spread over `node.platform.arch`, say). Nodes without the label form a group of their own, as
//! in Swarm. An unknown attribute is an error shown as the task's reason, never silently ignored.

use crate::compose::model::Service;
use crate::store::state::Node;

use super::constraints::{Attribute, KNOWN_ATTRIBUTES};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid placement preference \"spread: {descriptor}\": unknown attribute (use {})", KNOWN_ATTRIBUTES)]
pub struct PreferenceError {
    pub descriptor: String,
}

/// The attributes to spread over, most important first.
pub fn spread_of(service: &Service) -> Result<Vec<Attribute>, PreferenceError> {
    let preferences =
        service.deploy.as_ref().and_then(|d| d.placement.as_ref()).map(|p| p.preferences.as_slice()).unwrap_or(&[]);
    preferences.iter().map(|p| spread_of_one(&p.spread)).collect()
}

/// One `spread:` descriptor (`node.labels.zone`).
pub fn spread_of_one(descriptor: &str) -> Result<Attribute, PreferenceError> {
    let descriptor = descriptor.trim();
    Attribute::parse(descriptor).ok_or_else(|| PreferenceError { descriptor: descriptor.to_string() })
}

/// The groups `node` belongs to, one value per preference (`None`: it lacks the label).
pub fn path_of(spread: &[Attribute], node: &Node) -> Vec<Option<String>> {
    spread.iter().map(|attribute| attribute.value(node).map(str::to_string)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::{node, spec};

    #[test]
    fn parses_spread_preferences_in_order() {
        let service = spec(
            "{image: x, deploy: {placement: {preferences: [{spread: node.labels.zone}, {spread: node.labels.rack}]}}}",
        );
        let spread = spread_of(&service).expect("valid preferences");
        assert_eq!(spread, [Attribute::Label("zone".into()), Attribute::Label("rack".into())]);
        let mut n = node("n1");
        n.labels.insert("zone".into(), "east".into());
        assert_eq!(path_of(&spread, &n), [Some("east".to_string()), None]);
    }

    #[test]
    fn an_unknown_attribute_is_an_error() {
        let service = spec("{image: x, deploy: {placement: {preferences: [{spread: datacenter}]}}}");
        assert_eq!(
            spread_of(&service).expect_err("not an attribute").to_string(),
            "invalid placement preference \"spread: datacenter\": unknown attribute (use node.id, node.hostname, \
             node.role, node.platform.os, node.platform.arch or node.labels.<name>)"
        );
    }
}
