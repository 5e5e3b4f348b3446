//! Test support for cs-actor, usable without FUSE:
//!
//! - [`union_emu::EmuUnion`]: unionfs-fuse in copy-on-write mode, emulated over
//!   two plain directories (the lower one is P's home itself);
//! - [`view::PlainDir`]: P's home as its users see it;
//! - [`tree::Tree`]: snapshots of either view, with a readable diff;
//! - [`fixture::World`]: tempdirs, both sides of the engine, rounds, cuts, crashes.

pub mod filter;
pub mod fixture;
pub mod tree;
pub mod union_emu;
pub mod view;

pub use cs_protocol::{RelPath, Timestamp};

/// `RelPath::new(s).unwrap()`, for literals in tests.
pub fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap_or_else(|e| panic!("bad test path {s:?}: {e}"))
}
