//! Local-only directories: opaque directories of the upper layer.

use std::path::Path;

use cs_protocol::RelPath;
use cs_union::Layout;

use crate::MountError;

/// cs-actor's default local-only paths, as the mount takes them (bare names): the one list of
/// [`cs_protocol::LOCAL_ONLY_DEFAULTS`] (the engine's `PathFilter` keeps the same out of rounds).
pub const DEFAULT_LOCAL_ONLY: [&str; 3] = cs_protocol::LOCAL_ONLY_DEFAULTS;

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
    prepare_local_only_owned(upper, layout, paths, None)
}

/// [`prepare_local_only`], and each local-only directory belongs to `owner` (uid, gid): the
/// compute user's `~/scratch` is the user's, not the root service's (given at every mount, so
/// one made by root meanwhile is the user's again). Of its ancestors, those this call created
/// are the owner's too; those that existed keep their owner.
pub fn prepare_local_only_owned(
    upper: &Path,
    layout: Layout,
    paths: &[String],
    owner: Option<(u32, u32)>,
) -> Result<(), MountError> {
    for p in paths {
        let (rel, _) = create_owned(upper, p, owner)?;
        // Any marker (either layout, file or directory) already hides the lower entry.
        let has_marker =
            Layout::ALL.into_iter().any(|l| std::fs::symlink_metadata(upper.join(l.marker_path(&rel))).is_ok());
        if !has_marker {
            cs_union::create_dir_whiteout(upper, layout, &rel)?;
        }
    }
    Ok(())
}

/// The same for kernel overlayfs, before it is mounted: each local-only directory is an
/// opaque upper directory (`trusted.overlay.opaque=y`), which hides the lower's same-named
/// directory. Idempotent; owned as with [`prepare_local_only_owned`].
pub fn prepare_local_only_opaque(upper: &Path, paths: &[String], owner: Option<(u32, u32)>) -> Result<(), MountError> {
    for p in paths {
        let (rel, dir) = create_owned(upper, p, owner)?;
        if !cs_union::overlay::is_opaque_dir(&dir)? {
            cs_union::overlay::create_opaque_dir(upper, &rel)?;
        }
    }
    Ok(())
}

/// Creates the local-only directory `p` in `upper` (with its missing ancestors, those given
/// to `owner`), and checks it is a directory. Returns its relative and full paths.
fn create_owned(upper: &Path, p: &str, owner: Option<(u32, u32)>) -> Result<(RelPath, std::path::PathBuf), MountError> {
    let rel =
        RelPath::new(p.trim_end_matches('/')).map_err(|e| MountError::Config(format!("local-only path {p:?}: {e}")))?;
    if cs_union::is_meta_path(&rel) {
        return Err(MountError::Config(format!("local-only path {p:?} is inside the union's metadata")));
    }
    let dir = upper.join(rel.as_path());
    // The missing ones among the directory and its ancestors below `upper`.
    let created: Vec<std::path::PathBuf> = dir
        .ancestors()
        .take_while(|a| *a != upper && std::fs::symlink_metadata(a).is_err())
        .map(|a| a.to_path_buf())
        .collect();
    std::fs::create_dir_all(&dir).map_err(|e| MountError::io("create local-only directory", &dir, e))?;
    if let Some((uid, gid)) = owner {
        for d in created.iter().chain(std::iter::once(&dir)) {
            std::os::unix::fs::lchown(d, Some(uid), Some(gid))
                .map_err(|e| MountError::io("give the local-only directory to its user", d, e))?;
        }
    }
    let md = std::fs::symlink_metadata(&dir).map_err(|e| MountError::io("check local-only directory", &dir, e))?;
    if !md.is_dir() {
        return Err(MountError::Config(format!(
            "local-only path {}: not a directory in the upper layer",
            dir.display()
        )));
    }
    Ok((rel, dir))
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

    #[test]
    fn local_only_dirs_and_their_new_parents_belong_to_the_owner() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid cannot fail.
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: not root, cannot give directories away");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("kept")).unwrap();
        let paths: Vec<String> = vec!["scratch".into(), "x/y".into(), "kept/z".into()];
        prepare_local_only_owned(t.path(), Layout::UnionfsFuse1, &paths, Some((40_001, 40_002))).unwrap();
        let ids = |p: &str| {
            let m = std::fs::symlink_metadata(t.path().join(p)).unwrap();
            (m.uid(), m.gid())
        };
        for p in ["scratch", "x", "x/y", "kept/z"] {
            assert_eq!(ids(p), (40_001, 40_002), "{p}");
        }
        assert_eq!(ids("kept"), (0, 0), "an existing directory was re-owned");
        assert_eq!(ids("."), (0, 0), "the upper root is not local-only's to own");
    }
}
