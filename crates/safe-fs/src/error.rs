//! The error type of every operation in this crate.

use std::io;
use std::path::PathBuf;

/// An error from a [`SafeRoot`](crate::SafeRoot) operation or from
/// [`write_atomic`](crate::write_atomic).
///
/// Every variant names the operation (`op`, e.g. `"write_temp"`), the root
/// directory (`root`) and the root-relative path the caller asked about
/// (`path`, escaped for display as `RelPath`'s `Display` does: a name that
/// is not UTF-8 shows `\xE9`). For [`write_atomic`](crate::write_atomic), `root` is the
/// directory of the file and `path` its file name.
///
/// The underlying OS error of [`FsError::Io`] is its
/// [`source`](std::error::Error::source), not part of its `Display`: print
/// the chain (`{:#}` with anyhow) to see it.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum FsError {
    /// The system call failed; `source` says why.
    #[error("{op} \"{path}\" beneath {root:?} failed")]
    Io {
        op: &'static str,
        root: PathBuf,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A component of the path is a symlink: an ancestor, or the leaf itself
    /// for the operations that refuse a symlink leaf (`open_file`,
    /// `set_mode`, `read_dir`, `create_dir_all`, `sync_dir`). Nothing was
    /// done.
    #[error("{op} \"{path}\" beneath {root:?} refused: a component of the path is a symlink")]
    SymlinkInPath { op: &'static str, root: PathBuf, path: String },
    /// A component of the path that must be a directory is not one.
    #[error("{op} \"{path}\" beneath {root:?} failed: a component of the path is not a directory")]
    NotADirectory { op: &'static str, root: PathBuf, path: String },
    /// The leaf exists but is not a regular file (a directory, fifo, device...).
    #[error("{op} \"{path}\" beneath {root:?} failed: not a regular file")]
    NotAFile { op: &'static str, root: PathBuf, path: String },
    /// A file name argument (a temp name) is not a single valid path component.
    #[error("{op} \"{path}\" beneath {root:?} failed: {name:?} is not a valid file name")]
    InvalidName { op: &'static str, root: PathBuf, path: String, name: String },
    /// `remove_tree` found a mount point at `mount` (root-relative) and
    /// refused to delete across it. Entries visited before it may already
    /// have been removed.
    #[error("{op} \"{path}\" beneath {root:?} refused: \"{mount}\" is a mount point")]
    MountPoint { op: &'static str, root: PathBuf, path: String, mount: String },
    /// An entry was created but could not be given to its owner
    /// ([`SafeRoot::with_owner`](crate::SafeRoot::with_owner)); `source`
    /// says why (`EPERM`: the process may not give files away). A temp file
    /// or symlink is removed again; a directory stays, owned by the process.
    #[error("{op} {path:?} beneath {root:?}: could not give it to uid {uid}, gid {gid}")]
    Owner {
        op: &'static str,
        root: PathBuf,
        path: String,
        uid: u32,
        gid: u32,
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// True if the path (or one of its ancestors) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.io_kind() == Some(io::ErrorKind::NotFound)
    }

    /// The kind of the underlying OS error: `source.kind()` for
    /// [`FsError::Io`], [`io::ErrorKind::NotADirectory`] for
    /// [`FsError::NotADirectory`], `None` for the other variants.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            FsError::Io { source, .. } | FsError::Owner { source, .. } => Some(source.kind()),
            FsError::NotADirectory { .. } => Some(io::ErrorKind::NotADirectory),
            _ => None,
        }
    }

    /// The operation that failed.
    pub fn op(&self) -> &'static str {
        match self {
            FsError::Io { op, .. }
            | FsError::SymlinkInPath { op, .. }
            | FsError::NotADirectory { op, .. }
            | FsError::NotAFile { op, .. }
            | FsError::InvalidName { op, .. }
            | FsError::MountPoint { op, .. }
            | FsError::Owner { op, .. } => op,
        }
    }

    /// The root-relative path the operation was about.
    pub fn path(&self) -> &str {
        match self {
            FsError::Io { path, .. }
            | FsError::SymlinkInPath { path, .. }
            | FsError::NotADirectory { path, .. }
            | FsError::NotAFile { path, .. }
            | FsError::InvalidName { path, .. }
            | FsError::MountPoint { path, .. }
            | FsError::Owner { path, .. } => path,
        }
    }
}
