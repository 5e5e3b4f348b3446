//! Wire types shared by both ends of a cs-actor round.
//!
//! Everything that crosses the network is defined here, so that validation
//! happens once, at decode time: a [`RelPath`] that exists is already known
//! to be relative, normalised and free of `..`, NUL and absolute parts.

mod meta;
mod relpath;
mod round;
mod snapshot;

pub use meta::{ClientId, ClientIdError, Cursor, EntryKind, HeldDigest, Timestamp};
pub use relpath::{Escaped, PathError, RelPath, MAX_COMPONENT_LEN, MAX_PATH_LEN};
pub use round::{CommitRequest, DeleteReport, FetchReport, FileVersion, HeldDelta, Hello, HelloReply, PullPolicy};
pub use snapshot::{SnapshotEntry, SnapshotReport};

/// The default local-only directories, as bare names relative to the home: caches and scratch
/// space that belong on fast local disk. The one list both forms derive from: the engine's
/// anchored patterns (`/scratch/`, which keep them out of rounds) and the mount's opaque
/// directories (`scratch`, which hide the project's same-named ones).
pub const LOCAL_ONLY_DEFAULTS: [&str; 3] = ["scratch", ".local", ".cache"];

/// Bumped on any incompatible change of the messages or tar conventions.
/// 2: tar streams may carry withdraw markers (busy files, issue 8).
///    Also: paths are MessagePack `bin` (bytes, any Linux name), not `str`.
pub const PROTOCOL_VERSION: u32 = 2;
