//! Kernel overlayfs as the union: mounting it, and reading what it leaves in the upper layer.
//!
//! The kernel answers every operation of the merged view itself (no daemon, no round trip to
//! userspace), which is why it measures near local disk (docs/union.md). What it writes into
//! the upper layer (see the kernel's Documentation/filesystems/overlayfs.rst):
//!
//! - a **whiteout** for a deleted lower entry: a character device 0:0 at the entry's path;
//! - an **opaque directory**: an upper directory with `trusted.overlay.opaque = "y"` hides
//!   everything below the same path in the lower (after `rm -r d; mkdir d`, and what
//!   cs-actor creates for the local-only directories);
//! - a **redirect**: an upper directory with `trusted.overlay.redirect` names where its lower
//!   content lives (after `mv` of a lower directory, with `redirect_dir=on` only).
//!
//! [`list_markers`] reads all three, so the sync engine can tell deletions from entries.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cs_protocol::RelPath;

use crate::mount::is_mounted;
use crate::UnionError;

/// The xattr that makes an upper directory opaque (its value is `y`).
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The xattr of an upper directory moved from a lower path (`redirect_dir=on`).
pub const REDIRECT_XATTR: &str = "trusted.overlay.redirect";

/// One mount of kernel overlayfs: `lowerdir=LOWER,upperdir=UPPER,workdir=WORK` on MERGED.
/// `work` must be an empty directory on the same filesystem as `upper`, outside it.
#[derive(Debug, Clone)]
pub struct Overlay {
    pub upper: PathBuf,
    pub lower: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    /// Mount options after the three directories (e.g. `redirect_dir=on`).
    pub extra: Vec<String>,
}

/// What overlayfs left in the upper layer, by path relative to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Marker {
    /// The lower entry at this path was deleted through the merged view.
    Whiteout(RelPath),
    /// This upper directory hides the lower directory at the same path.
    Opaque(RelPath),
    /// This upper directory shows the lower directory named by `from` (absolute in the
    /// layer when it starts with `/`, else a name in the same parent).
    Redirect { path: RelPath, from: Vec<u8> },
}

impl Overlay {
    /// The option string given to the kernel; `,`, `:` and `\` in paths are escaped as the
    /// kernel's option parser expects.
    pub fn options(&self) -> Result<String, UnionError> {
        let mut s = format!(
            "lowerdir={},upperdir={},workdir={}",
            escape(&self.lower)?,
            escape(&self.upper)?,
            escape(&self.work)?
        );
        for o in &self.extra {
            s.push(',');
            s.push_str(o);
        }
        Ok(s)
    }

    /// Mounts it. The work directory is created if missing (it must be empty: overlayfs
    /// refuses a work directory another mount uses). Needs CAP_SYS_ADMIN.
    pub fn mount(&self) -> Result<OverlayGuard, UnionError> {
        let op = "mount overlayfs at";
        std::fs::create_dir_all(&self.work).map_err(|e| UnionError::io("create overlay work dir", &self.work, e))?;
        let data = CString::new(self.options()?).map_err(|_| UnionError::Mount {
            op,
            merged: self.merged.clone(),
            detail: "a path contains a NUL byte".into(),
        })?;
        rustix::mount::mount("overlay", &self.merged, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())
            .map_err(|e| UnionError::OverlayMount {
            merged: self.merged.clone(),
            options: data.to_string_lossy().into_owned(),
            source: e.into(),
        })?;
        tracing::debug!(merged = %self.merged.display(), "overlayfs mounted");
        Ok(OverlayGuard { merged: self.merged.clone(), done: false })
    }
}

/// A mounted overlay; unmounts on [`OverlayGuard::unmount`] or drop (lazily when busy).
#[derive(Debug)]
pub struct OverlayGuard {
    merged: PathBuf,
    done: bool,
}

impl OverlayGuard {
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    pub fn unmount(mut self) -> Result<(), UnionError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), UnionError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        if is_mounted(&self.merged)? {
            cs_proc::unmount_or_detach(&self.merged).map_err(|e| UnionError::Mount {
                op: "unmount overlayfs at",
                merged: self.merged.clone(),
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }
}

impl Drop for OverlayGuard {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "cleaning up overlay mount");
        }
    }
}

/// Makes the overlay mounted at `merged` forget the names it has cached, and nothing else
/// on the machine: a negative entry for a name the lower has gained since (overlayfs never
/// revalidates one), a positive one for an entry the lower lost. A remount with the same
/// flags and no options changes nothing but prunes the superblock's unused dentries (seen
/// on 6.18: crates/union/tests/real_overlay.rs), where `echo 2 > /proc/sys/vm/drop_caches`
/// drops every filesystem's dentries and inodes, the user's working set included. Entries
/// in use (a process's working directory, an open file) stay until released.
pub fn forget_cached_names(merged: &Path) -> Result<(), UnionError> {
    use rustix::fs::StatVfsMountFlags as St;
    use rustix::mount::MountFlags as Ms;
    let err = |e: rustix::io::Errno| UnionError::Mount {
        op: "remount (to drop its cached names) overlayfs at",
        merged: merged.to_path_buf(),
        detail: std::io::Error::from(e).to_string(),
    };
    // A remount sets the mount's flags to the ones given: keep those in force.
    let now = rustix::fs::statvfs(merged).map_err(err)?.f_flag;
    let mut flags = Ms::empty();
    for (st, ms) in [
        (St::RDONLY, Ms::RDONLY),
        (St::NOSUID, Ms::NOSUID),
        (St::NODEV, Ms::NODEV),
        (St::NOEXEC, Ms::NOEXEC),
        (St::SYNCHRONOUS, Ms::SYNCHRONOUS),
        (St::NOATIME, Ms::NOATIME),
        (St::NODIRATIME, Ms::NODIRATIME),
        (St::RELATIME, Ms::RELATIME),
    ] {
        if now.contains(st) {
            flags |= ms;
        }
    }
    rustix::mount::mount_remount(merged, flags, "").map_err(err)
}

/// True if the kernel offers overlayfs (listed in /proc/filesystems; it may be a module
/// loaded on first mount, which this does not try).
pub fn kernel_has_overlay() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
}

/// True if mounting overlayfs can work here: the kernel lists it, or has it as a module
/// that the first mount loads (`modules.builtin` / `modules.dep` of the running kernel).
pub fn kernel_can_mount_overlay() -> bool {
    if kernel_has_overlay() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else { return false };
    let dir = Path::new("/lib/modules").join(release.trim());
    ["modules.builtin", "modules.dep"]
        .iter()
        .any(|f| std::fs::read_to_string(dir.join(f)).is_ok_and(|s| s.lines().any(|l| l.contains("/overlay.ko"))))
}

/// Creates `rel` as an opaque directory of the upper layer (and its parents as plain
/// directories), before the overlay is mounted: the lower's same-named directory stays
/// hidden and everything made there lives in the upper layer.
pub fn create_opaque_dir(upper: &Path, rel: &RelPath) -> Result<(), UnionError> {
    let dir = upper.join(rel.as_path());
    std::fs::create_dir_all(&dir).map_err(|e| UnionError::io("create opaque dir", &dir, e))?;
    rustix::fs::lsetxattr(&dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
        .map_err(|e| UnionError::io("set trusted.overlay.opaque on", &dir, e.into()))
}

/// True for what overlayfs writes as a whiteout: a character device 0:0.
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// True if `dir` is an opaque directory of an upper layer (`trusted.overlay.opaque = y`).
pub fn is_opaque_dir(dir: &Path) -> Result<bool, UnionError> {
    Ok(get_xattr(dir, OPAQUE_XATTR)?.as_deref() == Some(b"y"))
}

/// True if `dir` is an upper directory moved through the merged view (`trusted.overlay.redirect`).
pub fn is_redirected_dir(dir: &Path) -> Result<bool, UnionError> {
    Ok(get_xattr(dir, REDIRECT_XATTR)?.is_some())
}

/// The `trusted.overlay.*` attributes of `path` (not following symlinks), by name: what
/// overlayfs leaves on its upper layer's directories (opaque, redirect, and on the root
/// `origin` and `uuid`). Empty where the filesystem has no xattrs.
pub fn overlay_xattrs(path: &Path) -> Result<Vec<String>, UnionError> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if buf.len() < 64 * 1024 => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(UnionError::io("list xattrs of", path, e.into())),
        }
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|name| name.starts_with(b"trusted.overlay."))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

/// Every whiteout, opaque directory and redirect below `upper`, sorted by path. Symlinks are
/// not followed; an entry that vanishes while listed is skipped (the upper layer is live).
pub fn list_markers(upper: &Path) -> Result<Vec<Marker>, UnionError> {
    let mut out = Vec::new();
    let mut stack = vec![Vec::<u8>::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() { upper.to_path_buf() } else { upper.join(OsStr::from_bytes(&rel)) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(UnionError::io("list upper dir", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| UnionError::io("list upper dir", &dir, e))?;
            let mut child = rel.clone();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(entry.file_name().as_bytes());
            let path = entry.path();
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(UnionError::io("stat upper entry", &path, e)),
            };
            let relpath = RelPath::new(child.clone()).map_err(|e| {
                UnionError::io("name upper entry", &path, std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
            if is_whiteout(&meta) {
                out.push(Marker::Whiteout(relpath));
            } else if meta.is_dir() {
                if is_opaque_dir(&path)? {
                    out.push(Marker::Opaque(relpath.clone()));
                }
                if let Some(from) = get_xattr(&path, REDIRECT_XATTR)? {
                    out.push(Marker::Redirect { path: relpath, from });
                }
                stack.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The value of `name` on `path` (not following symlinks), `None` when it has none.
fn get_xattr(path: &Path, name: &str) -> Result<Option<Vec<u8>>, UnionError> {
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::RANGE) if buf.len() < 64 * 1024 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(UnionError::io("read xattr of", path, e.into())),
        }
    }
}

/// A path as the kernel's mount option parser wants it.
fn escape(p: &Path) -> Result<String, UnionError> {
    let s = p.to_str().ok_or_else(|| {
        UnionError::io(
            "give overlayfs the path",
            p,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8: overlayfs options are text"),
        )
    })?;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_escape_separators() {
        let o = Overlay {
            upper: "/u,1".into(),
            lower: "/l:2".into(),
            work: "/w\\3".into(),
            merged: "/m".into(),
            extra: vec!["redirect_dir=on".into()],
        };
        assert_eq!(o.options().unwrap(), r"lowerdir=/l\:2,upperdir=/u\,1,workdir=/w\\3,redirect_dir=on");
    }
}
