//! Filesystem operations confined beneath a root directory, never following
//! a symlink.
//!
//! The project side of a sync receives paths and tar entries from the
//! network and applies them beneath a home directory; the compute side
//! applies them to its upper layer. Both must be sure that a symlink planted
//! in the tree (`evil -> /etc`, `evil2 -> ..`) can never be used to read,
//! write, chmod or delete anything outside the root, including when the tree
//! changes while we work on it.
//!
//! So [`SafeRoot`] never resolves a path as a string from `/`. It holds a
//! file descriptor of the root and, for every operation:
//!
//! 1. opens the *parent* directory of the path with `openat2(root_fd,
//!    parent, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`:
//!    the kernel refuses (`ELOOP`, reported as [`FsError::SymlinkInPath`])
//!    any symlink met on the way, atomically with the lookup, so there is no
//!    check-then-use window;
//! 2. performs the leaf operation with the `*at` system call relative to that
//!    directory fd, with `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW` / `O_EXCL`, so
//!    that a symlink leaf is acted on itself (unlink, rename, lstat, utimes)
//!    or refused (open, chmod), never followed.
//!
//! `RESOLVE_NO_XDEV` is deliberately not used: a home directory may contain
//! mount points and paths through them are legitimate. [`SafeRoot::remove_tree`]
//! does however refuse to descend into a mount point.
//!
//! On kernels without `openat2` (before Linux 5.6) the parent is resolved one
//! component at a time with `openat(O_PATH | O_DIRECTORY | O_NOFOLLOW)`,
//! which gives the same guarantees at the cost of a few more system calls.
//!
//! A `SafeRoot` may be given an [`Owner`] ([`SafeRoot::with_owner`]): every
//! entry it then creates (temp files, temp symlinks, directories) is
//! `fchown`ed / `fchownat(AT_SYMLINK_NOFOLLOW)`ed to it before it is renamed
//! into place, so that a service running as root writes a user's home as
//! that user.
//!
//! Paths are [`cs_protocol::RelPath`]s, already known to be relative and free
//! of `..`, so `RESOLVE_BENEATH` is a second line of defence.

mod atomic;
mod error;
mod resolve;
mod root;

use std::os::unix::fs::MetadataExt;

pub use cs_protocol::{RelPath, Timestamp};

pub use atomic::write_atomic;
pub use error::FsError;
pub use root::SafeRoot;

/// Who owns what a [`SafeRoot`] creates (see [`SafeRoot::with_owner`]):
/// numeric ids, resolved from a user name by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// The kind of a filesystem entry, as seen without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (the link itself).
    Symlink,
    /// Anything else: fifo, socket, device.
    Other,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of an `st_mode`.
    pub fn from_mode(st_mode: u32) -> FileKind {
        match rustix::fs::FileType::from_raw_mode(st_mode) {
            rustix::fs::FileType::RegularFile => FileKind::File,
            rustix::fs::FileType::Directory => FileKind::Dir,
            rustix::fs::FileType::Symlink => FileKind::Symlink,
            _ => FileKind::Other,
        }
    }
}

/// What `lstat` says about an entry (never following a symlink leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The kind of the entry.
    pub kind: FileKind,
    /// Permission bits: `st_mode & 0o7777`.
    pub mode: u32,
    /// Size in bytes (for a symlink: the length of its target).
    pub size: u64,
    /// Last modification of the content.
    pub mtime: Timestamp,
    /// Last change of the inode (content or metadata); cannot be set.
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
    /// Device of the filesystem holding the entry.
    pub dev: u64,
    /// Number of hard links.
    pub nlink: u64,
}

impl Stat {
    /// Converts the metadata of a `std::fs::symlink_metadata` (or
    /// `DirEntry::metadata`) call, for callers that walk a tree with `std::fs`.
    pub fn from_metadata(m: &std::fs::Metadata) -> Stat {
        Stat {
            kind: FileKind::from_mode(m.mode()),
            mode: m.mode() & 0o7777,
            size: m.size(),
            mtime: Timestamp { sec: m.mtime(), nsec: clamp_nsec(m.mtime_nsec()) },
            ctime: Timestamp { sec: m.ctime(), nsec: clamp_nsec(m.ctime_nsec()) },
            ino: m.ino(),
            dev: m.dev(),
            nlink: m.nlink(),
        }
    }

    /// Converts a raw `struct stat` as returned by rustix.
    // The field types of `struct stat` differ between architectures; on
    // some of them these conversions are no-ops.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(crate) fn from_raw(st: &rustix::fs::Stat) -> Stat {
        let mode = st.st_mode as u32;
        Stat {
            kind: FileKind::from_mode(mode),
            mode: mode & 0o7777,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: Timestamp { sec: st.st_mtime as i64, nsec: clamp_nsec(st.st_mtime_nsec as i64) },
            ctime: Timestamp { sec: st.st_ctime as i64, nsec: clamp_nsec(st.st_ctime_nsec as i64) },
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
            nlink: st.st_nlink as u64,
        }
    }
}

fn clamp_nsec(n: i64) -> u32 {
    u32::try_from(n.clamp(0, 999_999_999)).unwrap_or(0)
}
