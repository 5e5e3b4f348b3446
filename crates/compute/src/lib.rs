//! The compute-server service (see docs/architecture.md).
pub mod machine;
pub mod packer;
pub mod round;
pub mod coordinator;
pub mod watcher;
pub mod connection;
pub mod service;
pub mod progress;
