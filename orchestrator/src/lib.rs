pub mod compose;
