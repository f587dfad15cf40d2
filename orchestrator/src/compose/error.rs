//! Loader errors. Passes over the YAML tree report a [`PathError`] (where in the document and
//! what is wrong); the loader turns it into a [`LoadError`] by finding the file, line and column
//! of that path in the source it came from.

use std::fmt;
use std::path::PathBuf;

use super::path::KeyPath;

/// An error found at a key path of a document, before the file position is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError {
    pub path: KeyPath,
    /// What is wrong, including what was expected (`expected a duration like 1m30s, got "soon"`).
    pub message: String,
    /// How to fix it, when we can tell.
    pub hint: Option<String>,
}

impl PathError {
    pub fn new(path: KeyPath, message: impl Into<String>) -> Self {
        PathError { path, message: message.into(), hint: None }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PathError {}

/// Where in which file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based; 0 when unknown (e.g. an error about the project as a whole).
    pub line: usize,
    /// 1-based; 0 when unknown.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        Ok(())
    }
}

/// A compose loading error the user sees: file, line, column, key path, what was expected, hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub location: Location,
    pub path: KeyPath,
    pub message: String,
    pub hint: Option<String>,
}

impl LoadError {
    pub fn new(location: Location, path: KeyPath, message: impl Into<String>) -> Self {
        LoadError { location, path, message: message.into(), hint: None }
    }

    /// An error about a file as a whole (cannot be read, not found, ...).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        LoadError {
            location: Location { file: file.into(), line: 0, column: 0 },
            path: KeyPath::root(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if !self.path.is_root() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Suggests the closest known name for a misspelt one ("did you mean `image`?").
pub fn did_you_mean<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("did you mean `{k}`?"))
}
