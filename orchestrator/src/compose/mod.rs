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
pub mod canonical;
pub mod discovery;
pub mod dotenv;
pub mod interpolate;
pub mod loader;
pub mod merge;
pub mod model;
pub mod paths;
pub mod render;
pub mod support;
pub mod units;
pub mod validate;
