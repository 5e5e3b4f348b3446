use std::io;
use std::path::PathBuf;

use cs_protocol::RelPath;

/// Every error names the file, path or command it is about.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A snapshot entry the tree refuses (under a symlink or a file, a duplicate, …).
    #[error("snapshot entry {path}: {reason}")]
    Entry { path: RelPath, reason: String },
    #[error("snapshot stream: {0}")]
    Snapshot(String),
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("replica state {}: {detail}", path.display())]
    State { path: PathBuf, detail: String },
    #[error("fanotify {op} on {}: {source}", path.display())]
    Fanotify {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    SafeFs(#[from] cs_safe_fs::FsError),
}

impl ReplicaError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        ReplicaError::Io { op, path: path.into(), source: source.into() }
    }

    pub(crate) fn entry(path: &RelPath, reason: impl Into<String>) -> Self {
        ReplicaError::Entry { path: path.clone(), reason: reason.into() }
    }
}

pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
