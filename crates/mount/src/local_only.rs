//! Local-only directories: opaque directories of the upper layer.

use std::path::Path;

use cs_protocol::RelPath;
use cs_union::Layout;

use crate::MountError;

/// cs-actor's default local-only paths (the engine's `PathFilter` keeps them out of rounds).
pub const DEFAULT_LOCAL_ONLY: [&str; 3] = ["scratch", ".local", ".cache"];

/// Makes each of `paths` (relative to the home, e.g. `"scratch"`, `"a/b"`) an opaque directory
/// of the union: the directory is created in `upper` together with a *directory* whiteout
/// marker for it. unionfs-fuse 1.0 keeps such a marker when a directory is re-created by
/// `mkdir` and then shows only the upper directory's children: the project's same-named
/// directory stays hidden, and everything created there lives on local disk only.
///
/// Idempotent; safe before mounting and while mounted (the union re-checks markers on every
/// operation). An existing marker of either kind is kept. Fails if a path is not a valid
/// relative path, or if the upper layer holds a non-directory there.
pub fn prepare_local_only(upper: &Path, layout: Layout, paths: &[String]) -> Result<(), MountError> {
    for p in paths {
        let rel = RelPath::new(p.trim_end_matches('/'))
            .map_err(|e| MountError::Config(format!("local-only path {p:?}: {e}")))?;
        if cs_union::is_meta_path(&rel) {
            return Err(MountError::Config(format!("local-only path {p:?} is inside the union's metadata")));
        }
        let dir = upper.join(rel.as_path());
        std::fs::create_dir_all(&dir).map_err(|e| MountError::io("create local-only directory", &dir, e))?;
        let md = std::fs::symlink_metadata(&dir).map_err(|e| MountError::io("check local-only directory", &dir, e))?;
        if !md.is_dir() {
            return Err(MountError::Config(format!("local-only path {}: not a directory in the upper layer", dir.display())));
        }
        // Any marker (either layout, file or directory) already hides the lower entry.
        let has_marker = Layout::ALL
            .into_iter()
            .any(|l| std::fs::symlink_metadata(upper.join(l.marker_path(&rel))).is_ok());
        if !has_marker {
            cs_union::create_dir_whiteout(upper, layout, &rel)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_dir_and_marker_idempotently() {
        let t = tempfile::tempdir().unwrap();
        let paths: Vec<String> = vec!["scratch".into(), ".cache/".into(), "a/b".into()];
        prepare_local_only(t.path(), Layout::UnionfsFuse1, &paths).unwrap();
        prepare_local_only(t.path(), Layout::UnionfsFuse1, &paths).unwrap();
        for p in ["scratch", ".cache", "a/b"] {
            assert!(t.path().join(p).is_dir());
            let marker = t.path().join(Layout::UnionfsFuse1.marker_path(&RelPath::new(p).unwrap()));
            assert!(marker.is_dir(), "{}", marker.display());
        }
        assert!(prepare_local_only(t.path(), Layout::UnionfsFuse1, &["../x".into()]).is_err());
        assert!(prepare_local_only(t.path(), Layout::UnionfsFuse1, &[".unionfs-fuse/x".into()]).is_err());
    }
}
