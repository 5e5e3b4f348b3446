//! The targets a scenario runs on: the reference (a plain directory on local disk, already
//! holding the lower's content) and each union backend (lower = the content, upper empty).
//! Every mount is undone by its guard's `Drop`, also when a test panics.

use std::path::{Path, PathBuf};

use cs_union::overlay::Overlay;
use cs_union::{MountGuard, UnionfsFuse};

use super::observe::{populate, prepare_root};

/// A union backend under test. To add one: a variant, its name, its mount, its known
/// differences (main.rs), and a `#[test]` in main.rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// unionfs-fuse as cs-actor mounts it (`cs_union::MountGuard`, `cow` + `access_options()`).
    UnionfsFuse,
    /// Kernel overlayfs (`cs_union::overlay`), upper and work dir on the same local filesystem,
    /// default options.
    Overlay,
    /// Kernel overlayfs with `redirect_dir=on` (a lower directory can be renamed: the upper
    /// records a redirect) and `index=on` (copy-up keeps lower hard links together).
    OverlayRedirect,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::UnionfsFuse, Backend::Overlay, Backend::OverlayRedirect];

    pub fn name(self) -> &'static str {
        match self {
            Backend::UnionfsFuse => "unionfs-fuse",
            Backend::Overlay => "overlay",
            Backend::OverlayRedirect => "overlay-redirect",
        }
    }

    /// Entries at the merged root that are the backend's own bookkeeping, left out of the tree
    /// observation (a scenario lists the root to show them).
    pub fn own_names(self) -> &'static [&'static str] {
        match self {
            Backend::UnionfsFuse => &[".unionfs-fuse"],
            Backend::Overlay | Backend::OverlayRedirect => &[],
        }
    }
}

/// One target, ready for a scenario: `root()` is where the operations happen.
pub struct Target {
    root: PathBuf,
    // Held for its `Drop` (a `MountGuard` or an `overlay::OverlayGuard`); declared before `_dir`: the
    // mount goes before its directories are removed.
    _mount: Option<Box<dyn std::any::Any>>,
    _dir: tempfile::TempDir,
}

impl Target {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A plain directory holding the lower's content: what local disk does.
    pub fn reference(user: (u32, u32)) -> Target {
        let dir = scratch();
        let root = dir.path().join("plain");
        std::fs::create_dir(&root).unwrap();
        populate(&root, user);
        Target { root, _mount: None, _dir: dir }
    }

    /// `backend` mounted over a lower holding the content and an empty upper.
    pub fn union(backend: Backend, user: (u32, u32)) -> Target {
        let dir = scratch();
        let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|n| dir.path().join(n));
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        populate(&lower, user);
        prepare_root(&upper, user);
        let mount: Box<dyn std::any::Any> = match backend {
            Backend::UnionfsFuse => {
                let bin = UnionfsFuse::find().unwrap_or_else(|e| {
                    panic!("{e}: run `bash deploy/install-deps.sh` as root (it installs unionfs-fuse)")
                });
                Box::new(MountGuard::mount(&bin, &upper, &lower, &merged, &[]).expect("mount unionfs-fuse"))
            }
            Backend::Overlay | Backend::OverlayRedirect => {
                let extra = match backend {
                    Backend::OverlayRedirect => vec!["redirect_dir=on".into(), "index=on".into()],
                    _ => Vec::new(),
                };
                let o = Overlay { upper: upper.clone(), lower: lower.clone(), work, merged: merged.clone(), extra };
                Box::new(o.mount().expect("mount overlayfs"))
            }
        };
        Target { root: merged, _mount: Some(mount), _dir: dir }
    }
}

/// A scratch directory on local disk (overlayfs needs an upper that supports trusted xattrs,
/// which tmpfs only does on recent kernels), traversable by the unprivileged user.
fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("CS_POSIX_TMPDIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::Builder::new().prefix("cs-posix-").tempdir_in(&base).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}
