//! The cluster store: every change is a command proposed to Raft and applied, in log order, to a
//! replicated state machine.
//!
//! - [`state`]: the replicated cluster state (stacks, services, tasks, nodes);
//! - [`tasks`]: the task table, with a journal of changed tasks for incremental readers;
//! - [`command`]: the commands that change it;
//! - [`raft`]: the replicated log — a raft-rs driver with durable storage in redb, generic over a
//!   [`raft::StateMachine`].

pub mod command;
pub mod raft;
mod rebalancing;
pub mod shared;
pub mod state;
pub mod tasks;
