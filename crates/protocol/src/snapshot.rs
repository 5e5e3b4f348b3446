//! P's snapshot of a project's metadata (issue 12, the replica): every path
//! the filter syncs, with what a placeholder of it needs. No content.

use serde::{Deserialize, Serialize};

use crate::{Cursor, EntryKind, RelPath, Timestamp};

/// One entry of a snapshot, as P's `lstat` gave it. Entries come in
/// pre-order: a directory before anything below it. The mtime is P's clock:
/// carried to be shown, compared for equality only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub path: RelPath,
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`; setuid and setgid are never applied on C).
    pub mode: u32,
    /// Bytes of a file; 0 for a directory; the target's length for a symlink.
    pub size: u64,
    pub mtime: Timestamp,
    /// A symlink's target, as bytes (never followed by either side).
    #[serde(default, with = "serde_bytes_opt")]
    pub target: Option<Vec<u8>>,
}

/// P's answer to a snapshot request, after the stream's end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Entries the stream carries.
    pub entries: u64,
    /// P's journal position taken before the walk began: every change after
    /// it reaches a client whose cursor is this one through its rounds, so a
    /// client starting from this snapshot uses it as its cursor if it has
    /// none of its own.
    pub cursor: Cursor,
    /// Paths left out, with the reason (unreadable, changed kind while
    /// read): at most a bounded number, the rest only counted.
    pub refused: Vec<(RelPath, String)>,
    pub refused_count: u64,
}

mod serde_bytes_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&serde_bytes::Bytes::new(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_with_a_non_utf8_symlink_target() {
        let e = SnapshotEntry {
            path: RelPath::new("d/link").unwrap(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 3,
            mtime: Timestamp::new(1, 2),
            target: Some(b"\xe9/x".to_vec()),
        };
        let bin = rmp_serde::to_vec_named(&e).unwrap();
        assert_eq!(rmp_serde::from_slice::<SnapshotEntry>(&bin).unwrap(), e);
    }
}
