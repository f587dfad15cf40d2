//! A manager: the store (Raft + cluster state machine), the orchestration loop, and the gRPC
//! services (Control for the CLI, Dispatcher for agents) on one listener.

pub mod cluster;
pub mod machine;
pub mod members;
pub mod orchestrate;
pub mod peers;
pub mod recovery;
pub mod server;
pub mod tokens;

pub use cluster::{Cluster, ClusterError};
pub use server::{Manager, ManagerConfig, ManagerError};
