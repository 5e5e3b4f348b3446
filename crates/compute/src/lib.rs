//! The compute-server service (see docs/architecture.md).
pub mod connection;
pub mod coordinator;
pub mod failure;
pub mod fetch;
pub mod local;
pub mod machine;
pub mod packer;
pub mod pause;
pub mod progress;
pub mod replica;
pub mod round;
pub mod service;
pub mod snapshot;
pub mod watcher;
