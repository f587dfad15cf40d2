pub mod compose;
pub mod cli;
