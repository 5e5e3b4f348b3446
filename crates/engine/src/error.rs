use std::path::PathBuf;

use cs_protocol::{PathError, RelPath};

/// Everything that can fail in a round, with the file or path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid {set} pattern {pattern:?}: {reason}")]
    Pattern { set: &'static str, pattern: String, reason: String },

    /// The project's `.csignore` cannot be used and no earlier rules are
    /// known: no round runs until it is fixed (a round without the rules
    /// would sync what they keep apart).
    #[error(transparent)]
    Ignore(#[from] crate::IgnoreError),

    #[error(transparent)]
    Fs(#[from] cs_safe_fs::FsError),

    #[error("tar stream: {0}")]
    Tar(#[from] cs_tarstream::TarError),

    #[error("union layer: {0}")]
    Union(#[from] cs_union::UnionError),

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("state file {} is unreadable ({reason}); move it away to start that side's state afresh (a full re-check, nothing is lost)", path.display())]
    CorruptState { path: PathBuf, reason: String },

    #[error("name {name:?} under {}: {source}", dir.display())]
    BadName {
        dir: PathBuf,
        name: String,
        #[source]
        source: PathError,
    },

    #[error("protocol violation: {0}")]
    Protocol(String),

    /// Writing or closing a tar stream to the other side failed (its connection went away,
    /// or it aborted the stream): an I/O error of the transport, not of a file.
    #[error("stream to the {peer}: {source}")]
    Stream {
        peer: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: rmp_serde::encode::Error,
    },

    /// A fault test's failpoint fired (see `cs_failpoint`).
    #[error(transparent)]
    Failpoint(#[from] cs_failpoint::FailpointError),

    #[error("entry {path}: {reason}")]
    Entry { path: RelPath, reason: String },
}

impl EngineError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { op, path: path.into(), source }
    }
}
