//! Snapshot, the compute side: ask the broker for P's metadata of the whole
//! project (issue 12: what a replica builds its placeholder tree from) and
//! hand each entry to a visitor as it is decoded. See docs/protocol.md,
//! *Snapshot*, and [`crate::connection::LinkHandle::snapshot`].
//!
//! The stream is decoded by [`cs_wire::SnapshotDecoder`] on a blocking
//! thread, one record at a time (bounded memory whatever the size of the
//! project), checked as it goes: valid entries, in pre-order, each path
//! once, at most [`cs_wire::MAX_SNAPSHOT_ENTRIES`]. The visitor sees an
//! entry only once it passed those checks; the report only comes after the
//! stream's end, and its count must match what was decoded.

use std::io::Read;

use cs_protocol::SnapshotEntry;
use cs_wire::{SnapshotDecoder, SnapshotStreamError};

/// Why a snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The broker does not serve snapshots: its hello answer on this
    /// connection said so (nothing was sent), or it did not know the request.
    #[error("the broker does not serve snapshots (an older broker): {0}")]
    NotSupported(String),
    #[error("the broker refused the snapshot ({code}): {message}")]
    Refused { code: cs_wire::ErrorCode, message: String },
    #[error("the request failed")]
    Request(#[source] crate::round::RoundError),
    #[error("unexpected answer to a snapshot: {0}")]
    Unexpected(String),
    /// The stream is not a valid snapshot stream (`index`: the entry at
    /// fault, when the error names one).
    #[error("decoding the snapshot stream")]
    Decode {
        index: Option<u64>,
        #[source]
        source: SnapshotStreamError,
    },
    /// The report's count is not what the stream carried.
    #[error("the broker's report says {reported} entries, its stream carried {decoded}")]
    CountMismatch { reported: u64, decoded: u64 },
    /// The visitor refused an entry: the rest of the stream was discarded.
    #[error("the visitor stopped the snapshot: {0}")]
    Visitor(String),
    #[error("the decoding thread failed: {0}")]
    Thread(String),
}

impl From<SnapshotStreamError> for SnapshotError {
    fn from(source: SnapshotStreamError) -> Self {
        SnapshotError::Decode { index: source.index(), source }
    }
}

/// Decodes the snapshot stream `r`, giving each entry to `visit`. Returns
/// the number of entries. Stops at the first decoding or visitor error
/// (the caller drops `r`: the rest of the stream is discarded).
pub fn decode_into(
    r: impl Read,
    visit: &mut dyn FnMut(SnapshotEntry) -> Result<(), String>,
) -> Result<u64, SnapshotError> {
    let mut dec = SnapshotDecoder::new(r)?;
    while let Some(e) = dec.next_entry()? {
        visit(e).map_err(SnapshotError::Visitor)?;
    }
    Ok(dec.entries())
}
