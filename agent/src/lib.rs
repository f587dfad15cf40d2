//! Shoal node agent: the engine driver (the only code that talks to a container engine) and the
//! task runner that turns assigned tasks into containers and reports what it observes.

pub mod engine;
pub mod labels;
pub mod logs;
pub mod runner;
pub mod session;
pub mod spec;

pub use engine::{Engine, EngineError};
pub use spec::*;
