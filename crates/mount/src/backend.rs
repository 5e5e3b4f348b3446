//! Which union the supervisor mounts, and the check that an upper layer was not made by the
//! other one (neither can read what the other leaves there).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::MountError;

/// The union filesystem over the lower layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnionBackend {
    /// unionfs-fuse 1.0 in the foreground: the daemon answers every operation; deletions are
    /// markers in its meta directory (`.unionfs-fuse`).
    #[default]
    UnionfsFuse,
    /// Kernel overlayfs (`redirect_dir=on,index=on` by default): no daemon; deletions are
    /// whiteouts (character devices 0:0), directories made again are opaque (docs/union.md).
    Overlay,
}

impl UnionBackend {
    /// The name `--union` takes and the status shows.
    pub fn name(self) -> &'static str {
        match self {
            UnionBackend::UnionfsFuse => "unionfs-fuse",
            UnionBackend::Overlay => "overlay",
        }
    }
}

impl std::fmt::Display for UnionBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for UnionBackend {
    type Err = MountError;
    fn from_str(s: &str) -> Result<Self, MountError> {
        match s {
            "unionfs-fuse" => Ok(UnionBackend::UnionfsFuse),
            "overlay" => Ok(UnionBackend::Overlay),
            other => {
                Err(MountError::Config(format!("union backend must be `unionfs-fuse` or `overlay`, not `{other}`")))
            }
        }
    }
}

/// The overlay options cs-actor mounts with: moving a lower directory is a rename that copies
/// nothing (`redirect_dir`), and copy-up keeps lower hard links (`index`). docs/union.md.
pub const DEFAULT_OVERLAY_OPTIONS: [&str; 2] = ["redirect_dir=on", "index=on"];

/// Refuses an upper layer that the *other* backend wrote: unionfs-fuse cannot read overlayfs's
/// whiteouts and opaque directories, and overlayfs shows unionfs-fuse's markers as files, so
/// deleted project files would come back. Looks at the top of the upper layer only (each
/// backend leaves its marks there: the local-only directories are made opaque or get a marker
/// at every mount), so a large upper costs nothing.
pub(crate) fn check_upper_is_for(upper: &Path, backend: UnionBackend) -> Result<(), MountError> {
    let found = match backend {
        UnionBackend::Overlay => unionfs_marks(upper)?,
        UnionBackend::UnionfsFuse => overlay_marks(upper)?,
    };
    let Some(what) = found else { return Ok(()) };
    let other = match backend {
        UnionBackend::Overlay => UnionBackend::UnionfsFuse,
        UnionBackend::UnionfsFuse => UnionBackend::Overlay,
    };
    Err(MountError::Config(format!(
        "the upper layer {} was written by the {other} union ({what}), which the {backend} union cannot read: \
         deleted project files would show again. Keep `--union {other}`, or switch cleanly: stop the service \
         (its last round sends every change to the project), move {} and the state directory away, and start \
         with `--union {backend}` and an empty upper layer (docs/operations.md, \"Choosing the union backend\")",
        upper.display(),
        upper.display(),
    )))
}

/// unionfs-fuse's meta directory at the top of `upper`.
fn unionfs_marks(upper: &Path) -> Result<Option<String>, MountError> {
    for l in cs_union::Layout::ALL {
        let meta = upper.join(l.meta_dir());
        if std::fs::symlink_metadata(&meta).is_ok() {
            return Ok(Some(format!("it holds {}", meta.display())));
        }
    }
    Ok(None)
}

/// overlayfs's attributes on `upper` or its top-level directories, or a whiteout there.
fn overlay_marks(upper: &Path) -> Result<Option<String>, MountError> {
    let xattrs = |p: &Path| cs_union::overlay::overlay_xattrs(p).map_err(MountError::from);
    if let Some(x) = xattrs(upper)?.first() {
        return Ok(Some(format!("{} has the attribute {x}", upper.display())));
    }
    let entries = std::fs::read_dir(upper).map_err(|e| MountError::io("list the upper layer", upper, e))?;
    for e in entries {
        let e = e.map_err(|e| MountError::io("list the upper layer", upper, e))?;
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
        if cs_union::overlay::is_whiteout(&md) {
            return Ok(Some(format!("{} is an overlay whiteout", path.display())));
        }
        if md.is_dir() {
            if let Some(x) = xattrs(&path)?.first() {
                return Ok(Some(format!("{} has the attribute {x}", path.display())));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in [UnionBackend::UnionfsFuse, UnionBackend::Overlay] {
            assert_eq!(b.name().parse::<UnionBackend>().unwrap(), b);
            assert_eq!(serde_json::to_value(b).unwrap(), b.name());
        }
        assert!("fuse-overlayfs".parse::<UnionBackend>().unwrap_err().to_string().contains("fuse-overlayfs"));
    }

    #[test]
    fn an_upper_of_unionfs_fuse_is_refused_for_overlay() {
        let t = tempfile::tempdir().unwrap();
        check_upper_is_for(t.path(), UnionBackend::Overlay).unwrap();
        check_upper_is_for(t.path(), UnionBackend::UnionfsFuse).unwrap();
        std::fs::create_dir(t.path().join(".unionfs-fuse")).unwrap();
        let e = check_upper_is_for(t.path(), UnionBackend::Overlay).unwrap_err().to_string();
        assert!(e.contains(".unionfs-fuse") && e.contains("--union unionfs-fuse"), "{e}");
        check_upper_is_for(t.path(), UnionBackend::UnionfsFuse).unwrap();
    }

    #[test]
    fn an_upper_of_overlay_is_refused_for_unionfs_fuse() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: trusted.* xattrs and device nodes need root");
            return;
        }
        // Whiteout first: a character device 0:0 at the top.
        let t = tempfile::tempdir_in("/var/tmp").unwrap();
        let wh = t.path().join("gone");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &wh,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .unwrap();
        let e = check_upper_is_for(t.path(), UnionBackend::UnionfsFuse).unwrap_err().to_string();
        assert!(e.contains("gone is an overlay whiteout") && e.contains("--union overlay"), "{e}");
        check_upper_is_for(t.path(), UnionBackend::Overlay).unwrap();
        std::fs::remove_file(&wh).unwrap();
        // Then an opaque local-only directory.
        let rel = cs_protocol::RelPath::new("scratch").unwrap();
        match cs_union::overlay::create_opaque_dir(t.path(), &rel) {
            Ok(()) => {
                let e = check_upper_is_for(t.path(), UnionBackend::UnionfsFuse).unwrap_err().to_string();
                assert!(e.contains("trusted.overlay.opaque"), "{e}");
            }
            Err(e) => eprintln!("no trusted xattrs on /var/tmp ({e}): opaque part skipped"),
        }
    }
}
