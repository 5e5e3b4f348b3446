//! The union's mount point while nothing is mounted on it: the *bare* directory.
//!
//! Whenever the union is down (between a kill -9 of the service and the restart's remount, a
//! remount after the union died, or while the service is stopped) the home's path is this
//! directory, and programs writing to the home write into it. Those files would never be synced
//! and would be hidden as soon as the union is mounted on top; and unionfs-fuse (fuse 2) refuses
//! to mount on a non-empty directory at all ("fuse: mountpoint is not empty"). So:
//!
//! - [`prepare`] **guards** it: the immutable attribute (`chattr +i` through `FS_IOC_SETFLAGS`),
//!   which makes every write into it fail with EPERM, root's too, and does not stop a mount on
//!   top of it. It stays set: after a kill -9, a crash, or a stop. Where the filesystem (or our
//!   privilege) does not allow it, mode 0555 (root-owned when we are root) instead, which stops
//!   other users only; the status says which guard is in place.
//! - Before each mount, it **recovers** whatever is in the bare directory anyway (left by an
//!   older version, or written past the fallback guard): each entry is moved into the upper
//!   layer at the same path when nothing of that name is there (nor in the lower layer), so it
//!   shows up in the home and is synced as if it had been written through the union; otherwise
//!   into a recovery directory `cs-actor-recovered-<UTC time>/` at the top of the upper layer,
//!   keeping its relative path. That directory is in the user's home and is synced to the
//!   project like any other (the state directory would hide it from the user); the status
//!   reports it. Nothing is deleted and nothing is hidden.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cs_protocol::RelPath;
use cs_union::Layout;
use rustix::fs::IFlags;
use rustix::io::Errno;
use serde::Serialize;

use crate::util::{mounted, now_ms};

/// The prefix of the recovery directories in the upper layer.
pub const RECOVERY_PREFIX: &str = "cs-actor-recovered-";
/// How many recovered paths the status lists.
const LISTED: usize = 20;
/// Recovery passes before giving up on a directory that keeps filling (fallback guard only).
const PASSES: usize = 3;

/// How the bare mount point refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    /// Not prepared yet (the union was never mounted by this service).
    Pending,
    /// The immutable attribute: every write fails with EPERM.
    Immutable,
    /// Mode 0555 (root-owned when the service runs as root): refuses other users only.
    ReadOnlyMode,
    /// Neither could be set: nothing refuses writes (what lands there is recovered).
    Unguarded,
}

/// One recovery: what was found in the bare mount point before a mount, and where it went.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub at_ms: u64,
    /// Entries moved into the upper layer at their own path (a directory counts once).
    pub moved_into_upper: u64,
    /// Entries moved into `recovery_dir` because their name was taken.
    pub moved_into_recovery_dir: u64,
    /// `<upper>/cs-actor-recovered-<time>`, if anything went there.
    pub recovery_dir: Option<PathBuf>,
    /// The first few entries, as `path -> where`.
    pub entries: Vec<String>,
}

/// The outcome of [`prepare`].
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub guard: Guard,
    /// Why the immutable attribute could not be used, with the fallback guard.
    pub guard_error: Option<String>,
    pub recovery: Option<Recovery>,
    /// Why entries are left in the bare directory (the mount cannot go ahead), if they are.
    pub left: Option<String>,
}

/// Guards the bare directory `merged` and moves what it holds into `upper` (see the module
/// docs). `lower` is the lower layer's mount point: a name it holds counts as taken. Fails if
/// `merged` is mounted or cannot be opened. Entries that could not be moved stay where they
/// are, named in [`Prepared::left`]: the mount must not go ahead, and the next attempt tries
/// again.
pub(crate) fn prepare(merged: &Path, upper: &Path, lower: &Path) -> Result<Prepared, String> {
    let dir = open_bare(merged)?;
    let (guard, guard_error) = set_guard(&dir, merged);
    let mut recovery: Option<Recovery> = None;
    let result = recover(&dir, merged, upper, lower, guard, &mut recovery);
    if let Some(r) = &recovery {
        tracing::warn!(
            mount_point = %merged.display(),
            moved_into_upper = r.moved_into_upper,
            moved_into_recovery_dir = r.moved_into_recovery_dir,
            recovery_dir = ?r.recovery_dir,
            entries = ?r.entries,
            "entries found in the bare mount point of the union were moved into the upper layer"
        );
    }
    Ok(Prepared { guard, guard_error, recovery, left: result.err() })
}

/// Moves every entry of the bare directory (again, for entries arriving meanwhile); fails if
/// any is left.
fn recover(
    dir: &fs::File,
    merged: &Path,
    upper: &Path,
    lower: &Path,
    guard: Guard,
    recovery: &mut Option<Recovery>,
) -> Result<(), String> {
    for _ in 0..PASSES {
        let names = list(merged)?;
        if names.is_empty() {
            return Ok(());
        }
        // The immutable attribute also forbids moving entries out: lift it for the move.
        let immutable = guard == Guard::Immutable;
        if immutable {
            set_immutable(dir, false)
                .map_err(|e| format!("clear the immutable attribute of {}: {e}", merged.display()))?;
        }
        let r = recovery.get_or_insert_with(|| Recovery {
            at_ms: now_ms(),
            moved_into_upper: 0,
            moved_into_recovery_dir: 0,
            recovery_dir: None,
            entries: Vec::new(),
        });
        let mut mover = Mover { merged, upper, lower, r, errors: Vec::new() };
        for name in names {
            mover.place(Path::new(&name));
        }
        let errors = mover.errors;
        if immutable {
            set_immutable(dir, true)
                .map_err(|e| format!("set the immutable attribute of {} again: {e}", merged.display()))?;
        }
        if !errors.is_empty() {
            return Err(format!(
                "{} holds entries that could not be moved into the upper layer: {}",
                merged.display(),
                errors.join("; ")
            ));
        }
    }
    let left = list(merged)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("{} keeps filling while the union is down: {left:?}", merged.display()))
    }
}

/// Lifts the guard [`prepare`] left on a bare mount point (the immutable attribute), for a
/// tool that deletes the directory (the bench, the tests). Refuses while something is mounted
/// there; a filesystem without the attribute is fine.
pub fn unguard_mount_point(merged: &Path) -> Result<(), String> {
    let dir = open_bare(merged)?;
    match set_immutable(&dir, false) {
        Err(e) if !matches!(Errno::from_io_error(&e), Some(Errno::NOTTY | Errno::OPNOTSUPP)) => {
            Err(format!("clear the immutable attribute of {}: {e}", merged.display()))
        }
        _ => Ok(()),
    }
}

/// Opens the bare directory; refuses while something is mounted there (the ioctl would reach
/// the mounted filesystem, and its entries are not ours to move).
fn open_bare(merged: &Path) -> Result<fs::File, String> {
    if mounted(merged) {
        return Err(format!("{} is still mounted", merged.display()));
    }
    let dir = fs::File::open(merged).map_err(|e| format!("open the mount point {}: {e}", merged.display()))?;
    if mounted(merged) {
        return Err(format!("{} was mounted while being prepared", merged.display()));
    }
    Ok(dir)
}

/// The immutable attribute, else mode 0555 (root-owned when root), logged once per call.
fn set_guard(dir: &fs::File, merged: &Path) -> (Guard, Option<String>) {
    let err = match set_immutable(dir, true) {
        Ok(()) => return (Guard::Immutable, None),
        Err(e) => e,
    };
    let why = format!("the immutable attribute cannot be set on {} ({err})", merged.display());
    let root = rustix::process::geteuid().is_root();
    let owned = if root { std::os::unix::fs::fchown(dir, Some(0), Some(0)) } else { Ok(()) };
    let moded = owned.and_then(|()| dir.set_permissions(fs::Permissions::from_mode(0o555)));
    let (guard, why) = match moded {
        Ok(()) => (Guard::ReadOnlyMode, why),
        Err(e) => (Guard::Unguarded, format!("{why}; nor mode 0555: {e}")),
    };
    tracing::warn!(
        mount_point = %merged.display(),
        ?guard,
        reason = %why,
        "the bare mount point does not refuse every write: what is written there while the union is down is moved into the upper layer at the next mount"
    );
    (guard, Some(why))
}

fn set_immutable(dir: &fs::File, on: bool) -> io::Result<()> {
    let old = rustix::fs::ioctl_getflags(dir)?;
    let new = if on { old | IFlags::IMMUTABLE } else { old - IFlags::IMMUTABLE };
    if new != old {
        rustix::fs::ioctl_setflags(dir, new)?;
    }
    Ok(())
}

/// The names in `dir`, sorted.
fn list(dir: &Path) -> Result<Vec<std::ffi::OsString>, String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("list {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for e in rd {
        names.push(e.map_err(|e| format!("list {}: {e}", dir.display()))?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Moves entries of the bare directory to their place, recording it.
struct Mover<'a> {
    merged: &'a Path,
    upper: &'a Path,
    lower: &'a Path,
    r: &'a mut Recovery,
    errors: Vec<String>,
}

impl Mover<'_> {
    /// Places the bare entry `rel`: into the upper layer if the name is free, into its
    /// directory entry by entry if both are directories, else into the recovery directory.
    fn place(&mut self, rel: &Path) {
        let src = self.merged.join(rel);
        let dst = self.upper.join(rel);
        let Ok(src_md) = fs::symlink_metadata(&src) else { return }; // gone meanwhile
        match fs::symlink_metadata(&dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.free_in_lower(rel) {
                    self.move_to(rel, &dst, false);
                } else {
                    self.place_in_recovery_dir(rel);
                }
            }
            Ok(md) if md.is_dir() && src_md.is_dir() && !is_meta(rel) => match list(&src) {
                Ok(names) => {
                    for n in names {
                        self.place(&rel.join(n));
                    }
                    if let Err(e) = fs::remove_dir(&src) {
                        self.errors.push(format!("remove the emptied {}: {e}", src.display()));
                    }
                }
                Err(e) => self.errors.push(e),
            },
            _ => self.place_in_recovery_dir(rel),
        }
    }

    /// True if putting `rel` into the upper layer shadows nothing the merged view shows: the
    /// lower layer has no such entry (or an ancestor's whiteout hides it, as in a local-only
    /// directory), and no whiteout of its own is pending (that is a delete still to be synced).
    fn free_in_lower(&self, rel: &Path) -> bool {
        let Some(rp) = rel.to_str().and_then(|s| RelPath::new(s).ok()) else { return false };
        if cs_union::is_meta_path(&rp) || has_marker(self.upper, &rp) {
            return false;
        }
        // An ancestor hidden by a marker, or an opaque directory of overlayfs (a local-only
        // directory), hides the lower's entry.
        let opaque = |a: &RelPath| cs_union::overlay::is_opaque_dir(&self.upper.join(a.as_path())).unwrap_or(false);
        if rp.ancestors().any(|a| has_marker(self.upper, &a) || opaque(&a)) {
            return true;
        }
        match fs::symlink_metadata(self.lower.join(rel)) {
            Err(e) => e.kind() == io::ErrorKind::NotFound || Errno::from_io_error(&e) == Some(Errno::NOTDIR),
            Ok(_) => false,
        }
    }

    fn place_in_recovery_dir(&mut self, rel: &Path) {
        let dir = match &self.r.recovery_dir {
            Some(d) => d.clone(),
            None => match new_recovery_dir(self.upper) {
                Ok(d) => {
                    self.r.recovery_dir = Some(d.clone());
                    d
                }
                Err(e) => return self.errors.push(e),
            },
        };
        let dst = dir.join(rel);
        if let Some(parent) = dst.parent() {
            if let Err(e) = fs::create_dir_all(parent) {
                return self.errors.push(format!("create {}: {e}", parent.display()));
            }
        }
        self.move_to(rel, &dst, true);
    }

    fn move_to(&mut self, rel: &Path, dst: &Path, recovery: bool) {
        let src = self.merged.join(rel);
        match move_entry(&src, dst) {
            Ok(()) => {
                if recovery {
                    self.r.moved_into_recovery_dir += 1;
                } else {
                    self.r.moved_into_upper += 1;
                }
                if self.r.entries.len() < LISTED {
                    self.r.entries.push(format!("{} -> {}", rel.display(), dst.display()));
                }
            }
            Err(e) => self.errors.push(format!("move {} to {}: {e}", src.display(), dst.display())),
        }
    }
}

/// True if the upper layer holds a whiteout marker (any layout) for exactly `p`.
fn has_marker(upper: &Path, p: &RelPath) -> bool {
    Layout::ALL.into_iter().any(|l| fs::symlink_metadata(upper.join(l.marker_path(p))).is_ok())
}

fn is_meta(rel: &Path) -> bool {
    rel.to_str().and_then(|s| RelPath::new(s).ok()).is_none_or(|p| cs_union::is_meta_path(&p))
}

/// Creates `<upper>/cs-actor-recovered-<UTC time>` (with a `-N` suffix if taken).
fn new_recovery_dir(upper: &Path) -> Result<PathBuf, String> {
    let fmt = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let stamp = time::OffsetDateTime::now_utc().format(&fmt).map_err(|e| format!("format the time: {e}"))?;
    for n in 1..100 {
        let name = if n == 1 { format!("{RECOVERY_PREFIX}{stamp}") } else { format!("{RECOVERY_PREFIX}{stamp}-{n}") };
        let d = upper.join(name);
        match fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("create {}: {e}", d.display())),
        }
    }
    Err(format!("no free recovery directory name in {}", upper.display()))
}

/// `rename`, or (across filesystems) a copy keeping modes, owners and modification times,
/// then the removal of the source.
fn move_entry(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::rename(src, dst) {
        Err(e) if Errno::from_io_error(&e) == Some(Errno::XDEV) => {
            copy_tree(src, dst)?;
            let md = fs::symlink_metadata(src)?;
            if md.is_dir() {
                fs::remove_dir_all(src)
            } else {
                fs::remove_file(src)
            }
        }
        r => r,
    }
}

fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
    } else if ft.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let name = e?.file_name();
            copy_tree(&src.join(&name), &dst.join(&name))?;
        }
        fs::set_permissions(dst, md.permissions())?;
    } else if ft.is_file() {
        fs::copy(src, dst)?;
    } else {
        return Err(io::Error::other("not a regular file, directory or symlink: cannot copy it across filesystems"));
    }
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    }
    if !ft.is_symlink() {
        let f = fs::File::open(dst)?;
        f.set_modified(md.modified()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let (m, u, l) = (t.path().join("merged"), t.path().join("upper"), t.path().join("lower"));
        for d in [&m, &u, &l] {
            fs::create_dir(d).unwrap();
        }
        (t, m, u, l)
    }

    fn unguard(m: &Path) {
        let _ = set_immutable(&fs::File::open(m).unwrap(), false);
    }

    #[test]
    fn moves_free_names_into_upper_and_taken_ones_into_a_recovery_dir() {
        let (_t, m, u, l) = dirs();
        put(&l, "in_lower.txt", "lower");
        put(&u, "dir/taken.txt", "upper");
        put(&u, "scratch/.keep", "");
        cs_union::create_dir_whiteout(&u, Layout::UnionfsFuse1, &RelPath::new("scratch").unwrap()).unwrap();
        put(&l, "scratch/cache.bin", "the project's scratch, hidden");
        put(&m, "free.txt", "free");
        put(&m, "in_lower.txt", "bare over lower");
        put(&m, "dir/taken.txt", "bare over upper");
        put(&m, "dir/new.txt", "new in dir");
        put(&m, "newdir/a/b.txt", "whole dir");
        put(&m, "scratch/cache.bin", "local-only");
        put(&m, ".unionfs-fuse/x_HIDDEN~", "not a marker of ours");
        let p = prepare(&m, &u, &l).unwrap();
        assert_eq!(p.left, None);
        let r = p.recovery.expect("a recovery");
        assert_eq!(fs::read_dir(&m).unwrap().count(), 0, "the bare directory is empty");
        assert_eq!(fs::read_to_string(u.join("free.txt")).unwrap(), "free");
        assert_eq!(fs::read_to_string(u.join("dir/new.txt")).unwrap(), "new in dir");
        assert_eq!(fs::read_to_string(u.join("dir/taken.txt")).unwrap(), "upper");
        assert_eq!(fs::read_to_string(u.join("newdir/a/b.txt")).unwrap(), "whole dir");
        assert_eq!(fs::read_to_string(u.join("scratch/cache.bin")).unwrap(), "local-only");
        let rec = r.recovery_dir.clone().expect("a recovery directory");
        assert!(rec.starts_with(&u) && rec.file_name().unwrap().to_string_lossy().starts_with(RECOVERY_PREFIX));
        assert_eq!(fs::read_to_string(rec.join("in_lower.txt")).unwrap(), "bare over lower");
        assert_eq!(fs::read_to_string(rec.join("dir/taken.txt")).unwrap(), "bare over upper");
        assert_eq!(fs::read_to_string(rec.join(".unionfs-fuse/x_HIDDEN~")).unwrap(), "not a marker of ours");
        assert!(!u.join(".unionfs-fuse/x_HIDDEN~").exists());
        assert_eq!((r.moved_into_upper, r.moved_into_recovery_dir), (4, 3), "{r:?}");
        if p.guard == Guard::Immutable {
            let e = fs::write(m.join("after.txt"), "x").unwrap_err();
            assert_eq!(Errno::from_io_error(&e), Some(Errno::PERM));
        }
        unguard(&m);
    }

    #[test]
    fn an_empty_bare_dir_is_guarded_and_nothing_recovered() {
        let (_t, m, u, l) = dirs();
        let p = prepare(&m, &u, &l).unwrap();
        assert_eq!(p.left, None);
        assert!(p.recovery.is_none());
        assert!(fs::read_dir(&u).unwrap().next().is_none(), "no recovery directory for nothing");
        // Root on ext4/tmpfs/xfs/btrfs: the attribute works; elsewhere, mode 0555.
        match p.guard {
            Guard::Immutable => {
                assert!(p.guard_error.is_none());
                let flags = rustix::fs::ioctl_getflags(fs::File::open(&m).unwrap()).unwrap();
                assert!(flags.contains(IFlags::IMMUTABLE));
                // A second prepare is a no-op.
                assert!(prepare(&m, &u, &l).unwrap().recovery.is_none());
            }
            Guard::ReadOnlyMode => {
                assert_eq!(fs::metadata(&m).unwrap().permissions().mode() & 0o777, 0o555);
                assert!(p.guard_error.is_some());
            }
            Guard::Pending | Guard::Unguarded => panic!("no guard as root: {p:?}"),
        }
        unguard(&m);
    }

    /// Across filesystems (the bare directory on tmpfs, the upper layer on the temporary
    /// directory's filesystem): copied, then removed.
    #[test]
    fn moves_across_filesystems_by_copying() {
        let shm = Path::new("/dev/shm");
        let (_t, _m, u, l) = dirs();
        let Ok(t2) = tempfile::tempdir_in(shm) else { return };
        let same_fs = fs::metadata(t2.path()).unwrap().dev() == fs::metadata(&u).unwrap().dev();
        if same_fs {
            return;
        }
        let m = t2.path().join("merged");
        fs::create_dir(&m).unwrap();
        put(&m, "d/f.txt", "across");
        fs::set_permissions(m.join("d/f.txt"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("f.txt", m.join("d/link")).unwrap();
        let mtime = fs::metadata(m.join("d/f.txt")).unwrap().modified().unwrap();
        let p = prepare(&m, &u, &l).unwrap();
        assert_eq!(p.left, None);
        assert_eq!(p.recovery.unwrap().moved_into_upper, 1);
        assert_eq!(fs::read_to_string(u.join("d/f.txt")).unwrap(), "across");
        assert_eq!(fs::metadata(u.join("d/f.txt")).unwrap().permissions().mode() & 0o777, 0o640);
        assert_eq!(fs::metadata(u.join("d/f.txt")).unwrap().modified().unwrap(), mtime);
        assert_eq!(fs::read_link(u.join("d/link")).unwrap(), Path::new("f.txt"));
        assert!(!m.join("d").exists());
        unguard(&m);
    }
}
