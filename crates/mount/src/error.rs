use std::path::PathBuf;

/// Errors of this crate. Each names what it was doing and on which path.
#[derive(thiserror::Error, Debug)]
pub enum MountError {
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work (a bad local-only path, a path unionfs-fuse cannot take).
    #[error("invalid mount configuration: {0}")]
    Config(String),
    /// The union layer failed (binary, layout probe, whiteout marker, mount).
    #[error(transparent)]
    Union(#[from] cs_union::UnionError),
    /// Unmounting at shutdown left something behind.
    #[error("shutdown: {0}")]
    Shutdown(String),
    /// The supervisor is gone (stopped, or its worker thread died).
    #[error("mount supervisor unavailable: {0}")]
    Unavailable(String),
}

impl MountError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MountError::Io { op, path: path.into(), source }
    }
}
