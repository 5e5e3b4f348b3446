//! The replica (issue 12, docs/replica.md): the project's metadata as a placeholder tree
//! on an ext4 filesystem of its own, used as the lower layer of the compute side's
//! overlayfs, and a fanotify service that fills a placeholder with P's content when it
//! is first opened. A library: no actors, no sockets; the caller brings the snapshot
//! stream and a [`fill::Source`] that fetches from P.
//!
//! - [`image`]: the replica's filesystem (a loop-mounted ext4 image).
//! - [`tree`]: build a placeholder tree from a snapshot, switch to it atomically.
//! - [`fill`]: the fill service.
//! - [`holder`]: the process that keeps the fill service's fanotify group alive across
//!   the service's deaths (docs/replica.md risk 1).
//! - `cache`: which filled files to evict under `--cache-max` (the fill service evicts).
//! - [`want`]: the `user.cs.want` xattr a placeholder carries until it is filled.

mod cache;
pub mod error;
pub mod fill;
pub mod holder;
pub mod image;
mod journal;
mod sys;
pub mod tree;
pub mod want;

pub use error::ReplicaError;
pub use fill::{
    create_group, probe_group_support, FillConfig, FillStats, Filler, FillerHandle, ReadAhead, Source, SourceReport,
};
pub use image::ReplicaFs;
pub use tree::{Kept, SnapshotWriter, Tree};
