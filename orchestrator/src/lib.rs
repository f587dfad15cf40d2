pub mod cli;
pub mod compose;
pub mod graph;
pub mod manager;
pub mod reconciler;
pub mod scheduler;
pub mod store;
