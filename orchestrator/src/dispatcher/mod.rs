//! The dispatcher: what the managers send to agents.

pub mod liveness;
pub mod pieces;
pub mod server;
pub mod taskspec;
pub mod views;
