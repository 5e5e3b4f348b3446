//! The one error type of this crate. Every variant names the operation and the path
//! (or binary / mount point) it concerns.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum UnionError {
    /// A filesystem call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A symlink (or other non-directory) sits where a directory of the union's metadata
    /// tree is expected; it is not followed, so nothing outside the upper layer is touched.
    #[error("{op} {}: not a plain directory inside the union metadata (symlinks are not followed)", path.display())]
    NotADirectory { op: &'static str, path: PathBuf },

    /// A [`crate::Whiteout`] whose `marker` does not match its `layout` and `path`.
    #[error("{op} {}: marker does not belong to the whiteout (expected {})", marker.display(), expected.display())]
    MarkerMismatch { op: &'static str, marker: PathBuf, expected: PathBuf },

    /// No union binary on `PATH`.
    #[error("find unionfs-fuse: neither `unionfs-fuse` nor `unionfs` is an executable in PATH={path:?}")]
    BinaryNotFound { path: String },

    /// Running the union binary (not the mount itself) failed.
    #[error("{op} {}: {detail}", binary.display())]
    Command { op: &'static str, binary: PathBuf, detail: String },

    /// Mounting failed, or the mount's process misbehaved.
    #[error("{op} {}: {detail}", merged.display())]
    Mount { op: &'static str, merged: PathBuf, detail: String },

    /// The kernel refused to mount overlayfs (`source` holds its errno; the kernel log says why).
    #[error("mount overlayfs at {} (options {options:?}): {source}; the kernel log (dmesg) says why", merged.display())]
    OverlayMount {
        merged: PathBuf,
        options: String,
        #[source]
        source: std::io::Error,
    },

    /// Probing the layout did not show a recognisable whiteout.
    #[error("probe whiteout layout in {}: {detail}", scratch.display())]
    Probe { scratch: PathBuf, detail: String },
}

impl UnionError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        UnionError::Io { op, path: path.into(), source }
    }
}
