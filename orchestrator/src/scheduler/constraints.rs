//! `deploy.placement.constraints`: `node.id`, `node.hostname`, `node.role`, `node.labels.<k>`,
//! `node.platform.os`, `node.platform.arch`, compared with `==` or `!=`.
//!
//! Swarm's semantics: attribute names and values compare case-insensitively (ASCII), label names
//! exactly; a node without the label compares as the empty string, so `==` fails and `!=` holds.
//! One addition: architectures compare by their normalized name, because nodes report Go-style
//! names (`amd64`) while Docker's documentation writes `node.platform.arch==x86_64`.
//!
//! Unlike Swarm, an unknown attribute (`engine.labels.x`, a typo) is an error rather than a
//! constraint that silently matches nothing: the scheduler shows it as the task's reason.

use std::fmt;

use shoal_agent::engine::normalize_arch;

use crate::compose::model::Service;
use crate::store::state::{Node, NodeRole};

/// What a constraint or a spread preference looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    Id,
    Hostname,
    Role,
    Os,
    Arch,
    /// A node label, by its exact (case-sensitive) name.
    Label(String),
}

const LABEL_PREFIX: &str = "node.labels.";

/// The list shown when an attribute is not recognized.
pub const KNOWN_ATTRIBUTES: &str =
    "node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<name>";

impl Attribute {
    /// `node.labels.zone` → `Label("zone")`; `None` for anything else than the known attributes.
    pub fn parse(key: &str) -> Option<Attribute> {
        let fixed = [
            ("node.id", Attribute::Id),
            ("node.hostname", Attribute::Hostname),
            ("node.role", Attribute::Role),
            ("node.platform.os", Attribute::Os),
            ("node.platform.arch", Attribute::Arch),
        ];
        if let Some((_, attribute)) = fixed.into_iter().find(|(name, _)| key.eq_ignore_ascii_case(name)) {
            return Some(attribute);
        }
        // `get` rather than slicing: the key may not have a char boundary there.
        let prefix = key.get(..LABEL_PREFIX.len())?;
        let label = &key[LABEL_PREFIX.len()..];
        (prefix.eq_ignore_ascii_case(LABEL_PREFIX) && !label.is_empty()).then(|| Attribute::Label(label.to_string()))
    }

    /// The node's value; `None` when the node has no such label.
    pub fn value<'a>(&self, node: &'a Node) -> Option<&'a str> {
        match self {
            Attribute::Id => Some(&node.id),
            Attribute::Hostname => Some(&node.hostname),
            Attribute::Role => Some(match node.role {
                NodeRole::Manager => "manager",
                NodeRole::Worker => "worker",
            }),
            Attribute::Os => Some(&node.os),
            Attribute::Arch => Some(&node.arch),
            Attribute::Label(label) => node.labels.get(label).map(String::as_str),
        }
    }
}

/// Why a constraint cannot be used; shown as the reason its service's tasks stay pending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("invalid placement constraint {text:?}: expected <attribute>==<value> or <attribute>!=<value>{hint}")]
    NoOperator { text: String, hint: String },
    #[error("invalid placement constraint {text:?}: only one == or != is allowed")]
    TwoOperators { text: String },
    #[error("invalid placement constraint {text:?}: the value is empty")]
    EmptyValue { text: String },
    #[error("invalid placement constraint {text:?}: unknown attribute {key:?} (use {})", KNOWN_ATTRIBUTES)]
    UnknownAttribute { text: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    /// The attribute as written (for messages).
    pub key: String,
    pub attribute: Attribute,
    pub equals: bool,
    /// The value as written (for messages).
    pub value: String,
    /// What node values are compared with: lowercased, and normalized for architectures.
    expected: String,
}

impl Constraint {
    /// Parses `node.labels.zone == east`.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let owned = || text.to_string();
        let operator = match (text.find("=="), text.find("!=")) {
            (Some(eq), Some(ne)) => Some(if eq < ne { (eq, true) } else { (ne, false) }),
            (Some(eq), None) => Some((eq, true)),
            (None, Some(ne)) => Some((ne, false)),
            (None, None) => None,
        };
        let Some((at, equals)) = operator else {
            // `node.labels.zone=east` is the likely mistake: say what was meant.
            let hint = match text.split_once('=') {
                Some((k, v)) => format!(" (did you mean {}=={}?)", k.trim(), v.trim()),
                None => String::new(),
            };
            return Err(ConstraintError::NoOperator { text: owned(), hint });
        };
        let key = text[..at].trim();
        let value = text[at + 2..].trim();
        if value.contains("==") || value.contains("!=") {
            return Err(ConstraintError::TwoOperators { text: owned() });
        }
        if value.is_empty() {
            return Err(ConstraintError::EmptyValue { text: owned() });
        }
        let attribute = Attribute::parse(key)
            .ok_or_else(|| ConstraintError::UnknownAttribute { text: owned(), key: key.to_string() })?;
        let expected = normalized(&attribute, value);
        Ok(Constraint { key: key.to_string(), attribute, equals, value: value.to_string(), expected })
    }

    /// Does `node` satisfy this constraint?
    pub fn matches(&self, node: &Node) -> bool {
        // A missing label compares as the empty string, which no (non-empty) value equals.
        let actual = self.attribute.value(node).unwrap_or("");
        let equal = match self.attribute {
            Attribute::Arch => normalized(&self.attribute, actual) == self.expected,
            _ => actual.eq_ignore_ascii_case(&self.expected),
        };
        equal == self.equals
    }
}

fn normalized(attribute: &Attribute, value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    match attribute {
        Attribute::Arch => normalize_arch(&lower),
        _ => lower,
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.key, if self.equals { "==" } else { "!=" }, self.value)
    }
}

/// The service's constraints, or the first one that is malformed.
pub fn constraints_of(service: &Service) -> Result<Vec<Constraint>, ConstraintError> {
    let texts =
        service.deploy.as_ref().and_then(|d| d.placement.as_ref()).map(|p| p.constraints.as_slice()).unwrap_or(&[]);
    texts.iter().map(|t| Constraint::parse(t)).collect()
}

/// The first constraint `node` fails, if any.
pub fn first_failed<'c>(constraints: &'c [Constraint], node: &Node) -> Option<&'c Constraint> {
    constraints.iter().find(|c| !c.matches(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::node;

    fn c(text: &str) -> Constraint {
        Constraint::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn parses_and_matches() {
        let mut n = node("n1");
        n.labels.insert("zone".into(), "east".into());
        assert!(c("node.labels.zone == east").matches(&n));
        assert!(!c("node.labels.zone!=east").matches(&n));
        assert!(c("node.labels.rack!=r1").matches(&n), "missing label is not equal");
        assert!(!c("node.labels.rack==r1").matches(&n));
        assert!(c("node.role==worker").matches(&n));
        assert!(c("node.hostname==host-n1").matches(&n));
        assert_eq!(c("node.id==n1").to_string(), "node.id==n1");
    }

    #[test]
    fn every_attribute_with_both_operators() {
        let mut n = node("n1");
        n.labels.insert("zone".into(), "east".into());
        n.os = "linux".into();
        n.arch = "amd64".into();
        let cases = [
            ("node.id", "n1", "n2"),
            ("node.hostname", "host-n1", "host-n2"),
            ("node.role", "worker", "manager"),
            ("node.labels.zone", "east", "west"),
            ("node.platform.os", "linux", "windows"),
            ("node.platform.arch", "amd64", "arm64"),
        ];
        for (key, own, other) in cases {
            assert!(c(&format!("{key}=={own}")).matches(&n), "{key}=={own}");
            assert!(!c(&format!("{key}!={own}")).matches(&n), "{key}!={own}");
            assert!(!c(&format!("{key}=={other}")).matches(&n), "{key}=={other}");
            assert!(c(&format!("{key}!={other}")).matches(&n), "{key}!={other}");
        }
        let mut manager = node("m1");
        manager.role = NodeRole::Manager;
        assert!(c("node.role==manager").matches(&manager));
        assert!(c("node.role!=worker").matches(&manager));
    }

    #[test]
    fn compares_like_swarm() {
        let mut n = node("n1");
        n.labels.insert("Zone".into(), "East".into());
        n.arch = "amd64".into();
        assert!(c("NODE.Hostname==HOST-N1").matches(&n), "names and values ignore case");
        assert!(c("node.labels.Zone==east").matches(&n));
        assert!(!c("node.labels.zone==east").matches(&n), "label names are case-sensitive");
        assert!(c("node.platform.arch==x86_64").matches(&n), "Docker's docs write x86_64");
        assert!(!c("node.platform.arch!=X86_64").matches(&n));
        let mut arm = node("n2");
        arm.arch = "arm64".into();
        assert!(c("node.platform.arch==aarch64").matches(&arm));
    }

    #[test]
    fn malformed_constraints_say_why() {
        let err = |text: &str| Constraint::parse(text).expect_err(text).to_string();
        assert_eq!(
            err("node.labels.zone=east"),
            "invalid placement constraint \"node.labels.zone=east\": expected <attribute>==<value> or \
             <attribute>!=<value> (did you mean node.labels.zone==east?)"
        );
        assert_eq!(
            err("nonsense"),
            "invalid placement constraint \"nonsense\": expected <attribute>==<value> or <attribute>!=<value>"
        );
        assert_eq!(err("node.role=="), "invalid placement constraint \"node.role==\": the value is empty");
        assert_eq!(
            err("node.role==worker!=manager"),
            "invalid placement constraint \"node.role==worker!=manager\": only one == or != is allowed"
        );
        assert_eq!(
            err("engine.labels.x==y"),
            "invalid placement constraint \"engine.labels.x==y\": unknown attribute \"engine.labels.x\" (use \
             node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<name>)"
        );
        assert!(err("node.labels.==x").contains("unknown attribute \"node.labels.\""));
        assert!(err("==x").contains("unknown attribute \"\""));
        assert!(err("nöde.lä==x").contains("unknown attribute"), "non-ASCII keys do not panic");
    }

    #[test]
    fn a_service_with_one_bad_constraint_is_rejected_whole() {
        let spec = crate::scheduler::tests::spec(
            "{image: x, deploy: {placement: {constraints: ['node.role==worker', 'node.zone==a']}}}",
        );
        let err = constraints_of(&spec).expect_err("node.zone is not an attribute");
        assert!(matches!(err, ConstraintError::UnknownAttribute { .. }), "{err}");
    }
}
