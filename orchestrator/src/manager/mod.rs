//! A manager: the store (Raft + cluster state machine), the orchestration loop, and the gRPC
//! services (Control for the CLI, Dispatcher for agents) on one listener.

pub mod cluster;
pub mod machine;
pub mod orchestrate;
pub mod server;

pub use cluster::{Cluster, ClusterError};
pub use server::{Manager, ManagerConfig, ManagerError};
