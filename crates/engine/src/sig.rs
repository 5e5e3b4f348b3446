//! Change detection by stat signature, on one machine's own clock.

use cs_protocol::{EntryKind, Timestamp};
use cs_safe_fs::{FileKind, Stat};
use serde::{Deserialize, Serialize};

/// What a file looked like when last seen. Two signatures from the same
/// machine are compared for equality only: never ordered, never compared
/// with the other machine's (the "Clocks" invariant).
///
/// `ctime` and `ino` are what catch tools that restore old mtimes (`tar x`,
/// `cp -p`, `git checkout`, wheels): they cannot set ctime, and replacing a
/// file gives a new inode. Directories are compared by kind, mode and inode
/// only: their mtime and ctime move whenever a child changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sig {
    pub kind: EntryKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub ino: u64,
}

impl Sig {
    /// `None` for kinds that are never synced (devices, fifos, sockets).
    pub fn of(st: &Stat) -> Option<Sig> {
        let kind = entry_kind(st.kind)?;
        Some(match kind {
            EntryKind::Dir => Sig {
                kind,
                mode: st.mode,
                size: 0,
                mtime: Timestamp::default(),
                ctime: Timestamp::default(),
                ino: st.ino,
            },
            _ => Sig { kind, mode: st.mode, size: st.size, mtime: st.mtime, ctime: st.ctime, ino: st.ino },
        })
    }
}

pub fn entry_kind(k: FileKind) -> Option<EntryKind> {
    match k {
        FileKind::File => Some(EntryKind::File),
        FileKind::Dir => Some(EntryKind::Dir),
        FileKind::Symlink => Some(EntryKind::Symlink),
        FileKind::Other => None,
    }
}

/// Digest of a held set (sorted paths), identical on both sides.
pub fn held_digest<'a>(paths: impl Iterator<Item = &'a cs_protocol::RelPath>) -> cs_protocol::HeldDigest {
    let mut h = blake3::Hasher::new();
    for p in paths {
        h.update(p.as_bytes());
        h.update(&[0]);
    }
    cs_protocol::HeldDigest(*h.finalize().as_bytes())
}
