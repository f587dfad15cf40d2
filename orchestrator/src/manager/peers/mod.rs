//! A manager's links to the other managers: the address book, the outbound raft transport, the
//! inbound Raft service and write forwarding to the leader. A group of one (the embedded cluster)
//! has none of this.

pub mod book;
pub mod forward;
pub mod service;
pub mod transport;

pub use crate::manager::tokens::token_matches;
