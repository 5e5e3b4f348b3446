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

/// Which backend a compute service runs when `--union` (or `union =`) is not given, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultChoice {
    pub backend: UnionBackend,
    /// One line for the log and `status`.
    pub why: String,
}

/// What the default depends on, gathered by [`DefaultInputs::probe`] (a struct, so that the
/// choice itself is a pure function with a test per rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultInputs {
    /// The backend whose marks the upper layer already holds (an existing home).
    pub upper_written_by: Option<UnionBackend>,
    /// The backend the state directory says this home last ran with ([`record_backend`]):
    /// an existing home whose upper layer holds no marks yet (nothing deleted so far).
    pub state_ran_with: Option<UnionBackend>,
    /// `--pull held`: the project's changes come through the lower, which overlayfs cannot do.
    pub pull_held: bool,
    /// The kernel has overlayfs (listed, or a module it can load).
    pub kernel_has_overlay: bool,
}

impl DefaultInputs {
    pub fn probe(upper: &Path, state: &Path, pull_held: bool) -> Result<DefaultInputs, MountError> {
        Ok(DefaultInputs {
            upper_written_by: upper_written_by(upper)?,
            state_ran_with: recorded_backend(state)?,
            pull_held,
            kernel_has_overlay: cs_union::overlay::kernel_can_mount_overlay(),
        })
    }
}

/// The default backend: kernel overlayfs, near local-disk speed where unionfs-fuse costs
/// several times it (docs/union.md, docs/benchmarks.md), except where it cannot serve:
/// an upper layer unionfs-fuse wrote (neither reads the other's marks: it stays on
/// unionfs-fuse until the operator switches cleanly), a home that ran with unionfs-fuse
/// before (an upgrade never switches a running home behind the operator's back),
/// `--pull held`, or a kernel without overlayfs.
pub fn default_backend(i: &DefaultInputs) -> DefaultChoice {
    let (backend, why) = match i {
        DefaultInputs { upper_written_by: Some(b), .. } => {
            (*b, format!("the upper layer was written by {b}, which the other union cannot read"))
        }
        DefaultInputs { state_ran_with: Some(b), .. } => {
            (*b, format!("this home ran with {b} before (the state directory's {BACKEND_RECORD})"))
        }
        DefaultInputs { pull_held: true, .. } => {
            (UnionBackend::UnionfsFuse, "--pull held needs unionfs-fuse (overlayfs needs --pull changed)".into())
        }
        DefaultInputs { kernel_has_overlay: false, .. } => {
            (UnionBackend::UnionfsFuse, "this kernel has no overlayfs (modprobe overlay, then restart)".into())
        }
        _ => (UnionBackend::Overlay, "the default".into()),
    };
    DefaultChoice { backend, why }
}

/// The file in the compute service's state directory that names the backend the home runs
/// with, written once the union is mounted.
pub const BACKEND_RECORD: &str = "union-backend";

/// The backend [`record_backend`] wrote in `state`, if any. Anything else in the file is an
/// error naming it (the operator removes it, or passes `--union`).
pub fn recorded_backend(state: &Path) -> Result<Option<UnionBackend>, MountError> {
    let path = state.join(BACKEND_RECORD);
    match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| MountError::Config(format!("{}: {e} (remove the file, or give --union)", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(MountError::io("read", &path, e)),
    }
}

/// Records in `state` the backend this home runs with (write to a temporary, then rename).
pub fn record_backend(state: &Path, backend: UnionBackend) -> Result<(), MountError> {
    let path = state.join(BACKEND_RECORD);
    let tmp = state.join(format!(".{BACKEND_RECORD}.tmp"));
    std::fs::write(&tmp, format!("{backend}\n")).map_err(|e| MountError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| MountError::io("rename into place", &path, e))
}

/// The backend whose marks the top of `upper` holds, if any (`None` also when it does not
/// exist yet).
pub fn upper_written_by(upper: &Path) -> Result<Option<UnionBackend>, MountError> {
    if !upper.is_dir() {
        return Ok(None);
    }
    if unionfs_marks(upper)?.is_some() {
        return Ok(Some(UnionBackend::UnionfsFuse));
    }
    if overlay_marks(upper)?.is_some() {
        return Ok(Some(UnionBackend::Overlay));
    }
    Ok(None)
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
    fn the_default_is_overlay_unless_the_upper_the_pull_or_the_kernel_says_otherwise() {
        let fresh =
            DefaultInputs { upper_written_by: None, state_ran_with: None, pull_held: false, kernel_has_overlay: true };
        assert_eq!(default_backend(&fresh).backend, UnionBackend::Overlay);
        // An existing home keeps the backend that wrote it, whatever else holds.
        for b in [UnionBackend::UnionfsFuse, UnionBackend::Overlay] {
            let c = default_backend(&DefaultInputs { upper_written_by: Some(b), ..fresh.clone() });
            assert_eq!(c.backend, b);
            assert!(c.why.contains(b.name()), "{}", c.why);
        }
        // A home that ran with unionfs-fuse stays on it, even before its first deletion.
        let ran = default_backend(&DefaultInputs { state_ran_with: Some(UnionBackend::UnionfsFuse), ..fresh.clone() });
        assert_eq!(ran.backend, UnionBackend::UnionfsFuse);
        assert!(ran.why.contains("ran with unionfs-fuse"), "{}", ran.why);
        let held = default_backend(&DefaultInputs { pull_held: true, ..fresh.clone() });
        assert_eq!(held.backend, UnionBackend::UnionfsFuse);
        assert!(held.why.contains("--pull held"), "{}", held.why);
        let no_kernel = default_backend(&DefaultInputs { kernel_has_overlay: false, ..fresh.clone() });
        assert_eq!(no_kernel.backend, UnionBackend::UnionfsFuse);
        assert!(no_kernel.why.contains("no overlayfs"), "{}", no_kernel.why);
    }

    #[test]
    fn the_state_directory_records_the_backend_and_names_itself_when_garbled() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(recorded_backend(t.path()).unwrap(), None);
        record_backend(t.path(), UnionBackend::UnionfsFuse).unwrap();
        assert_eq!(recorded_backend(t.path()).unwrap(), Some(UnionBackend::UnionfsFuse));
        record_backend(t.path(), UnionBackend::Overlay).unwrap();
        assert_eq!(recorded_backend(t.path()).unwrap(), Some(UnionBackend::Overlay));
        std::fs::write(t.path().join(BACKEND_RECORD), "aufs").unwrap();
        let e = recorded_backend(t.path()).unwrap_err().to_string();
        assert!(e.contains(BACKEND_RECORD) && e.contains("aufs"), "{e}");
    }

    #[test]
    fn an_upper_layer_tells_which_union_wrote_it() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(upper_written_by(&t.path().join("not-yet")).unwrap(), None);
        assert_eq!(upper_written_by(t.path()).unwrap(), None);
        std::fs::create_dir(t.path().join(".unionfs-fuse")).unwrap();
        assert_eq!(upper_written_by(t.path()).unwrap(), Some(UnionBackend::UnionfsFuse));
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
