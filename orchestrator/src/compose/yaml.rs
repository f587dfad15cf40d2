//! Reading YAML: values come from serde_yaml; positions come from a second, event-level pass
//! (yaml-rust2), because serde_yaml's `Value` keeps no marks. The index maps each key path to the
//! line/column of its key and of its value, so that any later pass can report where an error is.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::error::{LoadError, Location};
use super::path::{KeyPath, Segment};

/// Line and column of a node, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    key: Option<Position>,
    value: Option<Position>,
}

/// Key path → where its key and value stand in one file.
#[derive(Debug, Clone, Default)]
pub struct PositionIndex {
    marks: HashMap<KeyPath, Marks>,
    /// Keys that appear twice in one mapping, in file order.
    duplicates: Vec<(KeyPath, Position)>,
    /// `mode: 0o440` as written (document index, path, text): serde_yaml reads YAML 1.2 octal
    /// as the integer 288, which a file mode, read as octal digits, cannot tell from `mode: 288`.
    octal_modes: Vec<(usize, KeyPath, String)>,
}

impl PositionIndex {
    /// Builds the index of `text`. A document yaml-rust2 cannot read gives an empty index: the
    /// values come from serde_yaml, which reports its own syntax errors with their positions.
    pub fn build(text: &str) -> Self {
        let mut builder = IndexBuilder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, true).is_err() {
            return builder.index;
        }
        builder.index
    }

    /// Where the node at `path` is; walks up to the nearest ancestor that the file has
    /// (a key that came from a merge key or from another file has no mark of its own).
    /// With `prefer_key`, the position of the key rather than of its value.
    pub fn locate(&self, path: &KeyPath, prefer_key: bool) -> Option<Position> {
        let mut current = Some(path.clone());
        while let Some(p) = current {
            if let Some(marks) = self.marks.get(&p) {
                let found = if prefer_key { marks.key.or(marks.value) } else { marks.value.or(marks.key) };
                if found.is_some() {
                    return found;
                }
            }
            current = p.parent();
        }
        None
    }

    /// The first key that appears twice in one mapping, with the position of its second use.
    pub fn first_duplicate(&self) -> Option<&(KeyPath, Position)> {
        self.duplicates.first()
    }

    /// True if the file itself has a node at exactly this path.
    pub fn contains(&self, path: &KeyPath) -> bool {
        self.marks.contains_key(path)
    }
}

enum Frame {
    Mapping { path: KeyPath, pending_key: Option<String>, seen: HashSet<String> },
    Sequence { path: KeyPath, next: usize },
}

#[derive(Default)]
struct IndexBuilder {
    stack: Vec<Frame>,
    index: PositionIndex,
    /// Documents started so far.
    documents: usize,
}

fn position(mark: Marker) -> Position {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Position { line: mark.line(), column: mark.col() + 1 }
}

impl IndexBuilder {
    /// Called for every node start (scalar, alias, collection start). Returns the node's path, or
    /// `None` if the node is a mapping key (then it is remembered as the pending key).
    fn place_node(&mut self, scalar_text: Option<&str>, mark: Marker) -> Option<KeyPath> {
        match self.stack.last_mut() {
            None => Some(KeyPath::root()),
            Some(Frame::Sequence { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                self.index.marks.entry(p.clone()).or_default().value = Some(position(mark));
                Some(p)
            }
            Some(Frame::Mapping { path, pending_key, seen }) => match pending_key.take() {
                Some(key) => {
                    let p = path.key(key);
                    self.index.marks.entry(p.clone()).or_default().value = Some(position(mark));
                    Some(p)
                }
                None => {
                    // A key. Complex (collection) keys get a placeholder name; compose has none.
                    let key = scalar_text.unwrap_or("?").to_string();
                    let p = path.key(key.clone());
                    if !seen.insert(key.clone()) {
                        self.index.duplicates.push((p.clone(), position(mark)));
                    }
                    self.index.marks.entry(p).or_default().key = Some(position(mark));
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for IndexBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, style, ..) => {
                let path = self.place_node(Some(&text), mark);
                if let Some(path) = path.filter(|p| p.last_key() == Some("mode")) {
                    let octal = text.strip_prefix("0o").is_some_and(|d| d.bytes().all(|b| (b'0'..=b'7').contains(&b)));
                    if style == TScalarStyle::Plain && octal && self.documents > 0 {
                        self.index.octal_modes.push((self.documents - 1, path, text));
                    }
                }
            }
            Event::Alias(_) => {
                self.place_node(Some("*alias"), mark);
            }
            Event::MappingStart(..) => {
                let path = self.place_node(None, mark).unwrap_or_default();
                self.stack.push(Frame::Mapping { path, pending_key: None, seen: HashSet::new() });
            }
            Event::SequenceStart(..) => {
                let path = self.place_node(None, mark).unwrap_or_default();
                self.stack.push(Frame::Sequence { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentStart => {
                self.stack.clear();
                self.documents += 1;
            }
            _ => {}
        }
    }
}

/// One compose file as read from disk: its documents and where their nodes are.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Every YAML document of the file, in order (compose merges them in that order).
    pub documents: Vec<Value>,
    text: String,
    /// Built on first use: most loads never report a position, and the index costs as much as
    /// parsing the file again.
    positions: OnceLock<PositionIndex>,
}

impl SourceFile {
    /// Reads and parses a file. Missing files, unreadable files and YAML syntax errors
    /// (including duplicate keys) come back as located errors.
    pub fn read(path: &Path) -> Result<SourceFile, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoadError::file(path, format!("cannot read the file: {e}"))
                .with_hint("check the path given with -f, or run shoal in the project's directory")
        })?;
        Self::parse(path, &text)
    }

    /// Parses YAML text that came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<SourceFile, LoadError> {
        let positions = OnceLock::new();
        // YAML 1.2 octal (`0o440`) needs the written text, which only the index keeps.
        if text.contains("0o") {
            let _ = positions.set(PositionIndex::build(text));
        }
        let mut documents = Vec::new();
        for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let mut value = Value::deserialize(document)
                .map_err(|e| syntax_error(path, &e, positions.get_or_init(|| PositionIndex::build(text))))?;
            for (_, mode_path, literal) in positions.get().iter().flat_map(|p| &p.octal_modes).filter(|(d, ..)| *d == n)
            {
                if let Some(v @ Value::Number(_)) = node_mut(&mut value, mode_path) {
                    *v = Value::String(literal.clone());
                }
            }
            // `<<: *anchor` merge keys are a YAML 1.1 feature serde_yaml leaves to us.
            value.apply_merge().map_err(|e| {
                LoadError::file(path, format!("invalid `<<` merge key: {e}"))
                    .with_hint("`<<` takes an alias to a mapping (`<<: *base`) or a list of such aliases")
            })?;
            if !value.is_null() {
                documents.push(value);
            }
        }
        Ok(SourceFile { path: path.to_path_buf(), documents, text: text.to_string(), positions })
    }

    /// Where the nodes of this file are (built on first use).
    pub fn positions(&self) -> &PositionIndex {
        self.positions.get_or_init(|| PositionIndex::build(&self.text))
    }

    pub fn location(&self, path: &KeyPath, prefer_key: bool) -> Location {
        let pos = self.positions().locate(path, prefer_key);
        Location { file: self.path.clone(), line: pos.map_or(0, |p| p.line), column: pos.map_or(0, |p| p.column) }
    }
}

/// The node at `path` in `value`, if there is one.
fn node_mut<'a>(value: &'a mut Value, path: &KeyPath) -> Option<&'a mut Value> {
    path.segments().iter().try_fold(value, |node, segment| match segment {
        Segment::Key(key) => node.get_mut(key.as_str()),
        Segment::Index(i) => node.get_mut(*i),
    })
}

fn syntax_error(path: &Path, error: &serde_yaml::Error, positions: &PositionIndex) -> LoadError {
    let message = error.to_string();
    if message.contains("duplicate entry") {
        // serde_yaml points at the mapping; the index knows the repeated key itself.
        if let Some((key_path, pos)) = positions.first_duplicate() {
            let key = key_path.last_key().unwrap_or("?");
            let location = Location { file: path.to_path_buf(), line: pos.line, column: pos.column };
            return LoadError::new(location, key_path.clone(), format!("duplicate key `{key}`"))
                .with_hint("a key may appear only once in a mapping: remove or merge the repeated one");
        }
    }
    let location = match error.location() {
        Some(l) => Location { file: path.to_path_buf(), line: l.line(), column: l.column() },
        None => Location { file: path.to_path_buf(), line: 0, column: 0 },
    };
    // serde_yaml appends " at line X column Y" to its message; the location already says it.
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    let hint = if message.contains("duplicate entry") {
        "a key may appear only once in a mapping: remove or rename one of them"
    } else {
        "check the indentation and quoting around this position"
    };
    LoadError::new(location, KeyPath::root(), format!("invalid YAML: {message}")).with_hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "services:\n  web:\n    image: nginx\n    ports:\n      - \"80:80\"\n      - 443\n";

    #[test]
    fn indexes_keys_values_and_sequence_items() {
        let index = PositionIndex::build(TEXT);
        let at = |p: &str, key| index.locate(&KeyPath::parse(p), key).unwrap();
        assert_eq!(at("services.web.image", true), Position { line: 3, column: 5 });
        assert_eq!(at("services.web.image", false), Position { line: 3, column: 12 });
        assert_eq!(at("services.web.ports[1]", false), Position { line: 6, column: 9 });
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(at("services.web.ports[1].target", false), Position { line: 6, column: 9 });
    }

    #[test]
    fn reports_duplicate_keys_with_their_line() {
        let err = SourceFile::parse(Path::new("c.yaml"), "services:\n  a: {}\n  a: {}\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{err}");
        assert_eq!(err.location.line, 3);
        assert_eq!(err.path.to_string(), "services.a");
        assert!(err.hint.is_some());
    }

    #[test]
    fn applies_merge_keys() {
        let file = SourceFile::parse(Path::new("c.yaml"), "x: &b {a: 1, b: 2}\ny:\n  <<: *b\n  b: 3\n").unwrap();
        let y = &file.documents[0]["y"];
        assert_eq!(y["a"], Value::from(1));
        assert_eq!(y["b"], Value::from(3));
        assert!(y.get("<<").is_none());
    }

    #[test]
    fn keeps_yaml12_octal_file_modes_as_written() {
        let text = "a: 1\n---\nsecrets:\n  - {source: s, mode: 0o440}\n  - {source: t, mode: 0440}\nother: 0o17\n";
        let file = SourceFile::parse(Path::new("c.yaml"), text).unwrap();
        let secrets = &file.documents[1]["secrets"];
        assert_eq!(secrets[0]["mode"], Value::String("0o440".into()));
        // serde_yaml keeps a leading-zero number as the string it is.
        assert_eq!(secrets[1]["mode"], Value::String("0440".into()));
        // Only file modes: other integers keep serde_yaml's reading.
        assert_eq!(file.documents[1]["other"], Value::from(15));
    }

    #[test]
    fn reads_every_document() {
        let file = SourceFile::parse(Path::new("c.yaml"), "a: 1\n---\nb: 2\n").unwrap();
        assert_eq!(file.documents.len(), 2);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = SourceFile::parse(Path::new("c.yaml"), "services:\n  web: [\n").unwrap_err();
        assert!(err.location.line >= 2, "{err}");
    }
}
