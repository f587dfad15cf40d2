//! The dispatcher: what the managers send to agents.

pub mod taskspec;
pub mod server;
