//! The error type of packing and unpacking.

use std::io;

use cs_protocol::{PathError, RelPath};

/// What an [`unpack`](crate::unpack) visitor may return.
pub type VisitError = Box<dyn std::error::Error + Send + Sync>;

/// Why packing or unpacking failed. `index` is the 0-based number of the
/// entry concerned (extension headers belong to the entry they precede);
/// `path` is given whenever it is known.
#[derive(thiserror::Error, Debug)]
pub enum TarError {
    /// The underlying reader (unpack) or writer (pack) failed.
    #[error("{}: I/O error on the tar stream: {source}", at(*.index, .path))]
    Io { index: u64, path: Option<String>, source: io::Error },

    /// The zstd layer failed: not a zstd stream, corrupt frame, checksum
    /// mismatch, window larger than [`WINDOW_LOG_MAX`](crate::WINDOW_LOG_MAX).
    #[error("{}: zstd error: {source}", at(*.index, .path))]
    Compression { index: u64, path: Option<String>, source: io::Error },

    /// The stream ended before the end-of-archive marker.
    #[error("{}: stream truncated while {during}", at(*.index, .path))]
    Truncated { index: u64, path: Option<String>, during: &'static str },

    /// A header or extension record is not valid.
    #[error("{}: malformed tar stream: {reason}", at(*.index, .path))]
    Malformed { index: u64, path: Option<String>, reason: String },

    /// The entry's path is not an acceptable relative path (`raw`: as
    /// received, escaped for display).
    #[error("entry #{index}: refused path \"{raw}\": {source}")]
    BadPath { index: u64, raw: String, source: PathError },

    /// The symlink target is empty, contains NUL or is too long.
    #[error("entry #{index} ({path}): refused symlink target: {reason}")]
    BadLinkTarget { index: u64, path: String, reason: String },

    /// An entry type other than file, directory, symlink.
    #[error("entry #{index} ({path}): unsupported entry type: {kind}")]
    UnsupportedType { index: u64, path: String, kind: String },

    /// A [`Limits`](crate::Limits) bound was exceeded.
    #[error("{}: limit exceeded: {what} (limit {limit})", at(*.index, .path))]
    LimitExceeded { index: u64, path: Option<String>, what: &'static str, limit: u64 },

    /// Packing: the file did not have exactly the declared number of bytes.
    /// The stream is still well-formed (the entry was zero-padded or cut to
    /// the declared size) but that entry's content is wrong: the caller must
    /// make the receiver discard it, or abandon the stream.
    #[error("{path}: file changed while being packed: {}", changed(*.declared, *.got))]
    SourceChanged { path: RelPath, declared: u64, got: u64 },

    /// Packing: reading the file's data failed. As for `SourceChanged`, the
    /// stream is still well-formed (zero-padded) but the entry is wrong.
    #[error("{path}: reading the file to pack failed: {source}")]
    SourceRead { path: RelPath, source: io::Error },

    /// Packing: the header given to the writer is inconsistent.
    #[error("{path}: invalid entry header: {reason}")]
    InvalidHeader { path: RelPath, reason: String },

    /// Packing: an earlier write to the stream failed, so it is unusable.
    #[error("the pack stream is unusable after an earlier write error")]
    Poisoned,

    /// [`unpack`](crate::unpack) met a withdraw marker: the sender took back
    /// the file entry just visited, which that visitor cannot undo. Readers
    /// that apply entries use [`unpack_events`](crate::unpack_events).
    #[error("entry #{index} ({path}): the sender withdrew this entry (the file changed while being packed); this reader cannot undo it")]
    Withdrawn { index: u64, path: RelPath },

    /// The visitor refused the entry.
    #[error("entry #{index} ({path}): {source}")]
    Visit { index: u64, path: RelPath, source: VisitError },
}

fn at(index: u64, path: &Option<String>) -> String {
    match path {
        Some(p) => format!("entry #{index} ({p})"),
        None => format!("entry #{index}"),
    }
}

fn changed(declared: u64, got: u64) -> String {
    if got < declared {
        format!("{declared} bytes declared, only {got} could be read (it shrank)")
    } else {
        format!("{declared} bytes declared, but it has more (it grew)")
    }
}
