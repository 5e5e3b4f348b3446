//! Fuzz targets of cs-actor's network-facing decoders.
//!
//! Each target takes arbitrary bytes and panics if, and only if, the code
//! under test breaks its safety property (see docs/fuzzing.md):
//!
//! - [`fuzz_relpath`]: path validation ([`cs_protocol::RelPath`]) and its
//!   MessagePack decoding;
//! - [`fuzz_frame`]: websocket frame decoding ([`cs_wire::Frame`]) of both
//!   directions' messages, with bounded allocation;
//! - [`fuzz_tar`]: tar stream unpacking ([`cs_tarstream::unpack`]) with small
//!   limits;
//! - [`fuzz_tar_apply`]: unpacking into a real directory through
//!   [`cs_safe_fs::SafeRoot`], never touching anything outside the root;
//! - [`fuzz_snapshot`]: snapshot stream decoding
//!   ([`cs_wire::SnapshotDecoder`]) with small limits.
//!
//! The same functions are driven by the stable proptest drivers
//! (`tests/fuzz.rs`, time-bounded by `CS_FUZZ_SECS`) and by the cargo-fuzz
//! targets in the repository's `fuzz/` directory (nightly, libFuzzer).
//! Both install [`CountingAlloc`] so that the allocation bounds are checked.

pub mod alloc_meter;
pub mod frame;
pub mod relpath;
pub mod snapshot;
pub mod tar;
pub mod tar_apply;

pub use alloc_meter::CountingAlloc;
pub use frame::fuzz_frame;
pub use relpath::fuzz_relpath;
pub use snapshot::fuzz_snapshot;
pub use tar::fuzz_tar;
pub use tar_apply::fuzz_tar_apply;

/// A fuzz target: panics iff its property is broken.
pub type Target = fn(&[u8]);

/// The targets by name, for drivers and regression replays.
pub const TARGETS: &[(&str, Target)] = &[
    ("relpath", fuzz_relpath),
    ("frame", fuzz_frame),
    ("tar", fuzz_tar),
    ("tar_apply", fuzz_tar_apply),
    ("snapshot", fuzz_snapshot),
];
