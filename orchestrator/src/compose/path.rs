//! Key paths such as `services.web.ports[1]`: how every loader error says *where* in a file.

use std::fmt;

/// One step into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path from a document's root to one of its nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// Parses the dotted form used in tests and messages (`services.web.ports[1]`).
    /// Keys containing dots cannot be written this way; use [`KeyPath::key`] for those.
    pub fn parse(text: &str) -> Self {
        let mut path = KeyPath::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (key, rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                path = path.key(key);
            }
            for index in rest.split('[').filter(|s| !s.is_empty()) {
                if let Ok(i) = index.trim_end_matches(']').parse() {
                    path = path.index(i);
                }
            }
        }
        path
    }

    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        KeyPath(segments)
    }

    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path one step up, or `None` at the root.
    pub fn parent(&self) -> Option<KeyPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(KeyPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    /// The last key of the path, if the path ends in a key.
    pub fn last_key(&self) -> Option<&str> {
        match self.0.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    pub fn starts_with(&self, prefix: &KeyPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Replaces the leading `from` prefix with `to` (used when a service's
    /// attributes are reported at the place `extends` took them from).
    pub fn rebase(&self, from: &KeyPath, to: &KeyPath) -> Option<KeyPath> {
        if !self.starts_with(from) {
            return None;
        }
        let mut segments = to.0.clone();
        segments.extend_from_slice(&self.0[from.0.len()..]);
        Some(KeyPath(segments))
    }
}

impl From<Vec<Segment>> for KeyPath {
    fn from(segments: Vec<Segment>) -> Self {
        KeyPath(segments)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(k) if i == 0 => f.write_str(k)?,
                Segment::Key(k) => write!(f, ".{k}")?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_and_parses_the_dotted_form() {
        let p = KeyPath::root().key("services").key("web").key("ports").index(1);
        assert_eq!(p.to_string(), "services.web.ports[1]");
        assert_eq!(KeyPath::parse("services.web.ports[1]"), p);
        assert_eq!(p.parent().unwrap().to_string(), "services.web.ports");
    }

    #[test]
    fn rebases_a_prefix() {
        let p = KeyPath::parse("services.base.ports[0]");
        let r = p.rebase(&KeyPath::parse("services.base"), &KeyPath::parse("services.web"));
        assert_eq!(r.unwrap().to_string(), "services.web.ports[0]");
    }
}
