//! Compose loader: compose files → a typed, normalized project model.
//!
//! Pipeline per file: read → YAML (values + a position index) → interpolation → `x-` removal;
//! then files are merged, `extends`/`include`/profiles resolved, short forms normalized to long
//! forms, and the result deserialized into [`model::Project`].

pub mod error;
pub mod path;
pub mod yaml;

pub use error::{did_you_mean, LoadError, Location, PathError};
pub use path::{KeyPath, Segment};
pub mod units;
pub mod model;
pub mod canonical;
pub mod discovery;
pub mod merge;
pub mod paths;
pub mod interpolate;
pub mod dotenv;
pub mod loader;
pub mod validate;
pub mod support;
