//! Opening a directory beneath a directory fd without following any symlink.
//!
//! Errors are raw errnos; the caller turns them into [`FsError`](crate::FsError)s
//! with the path and the operation. `ELOOP` means a component is a symlink,
//! `ENOTDIR` that a component is not a directory, `ENOENT` that one is missing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{fstat, openat, openat2, statat, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Stay beneath the starting directory and refuse every symlink. No
/// `NO_XDEV`: the tree may legitimately contain mount points.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Set once `openat2` has returned `ENOSYS` (kernel before 5.6, or a seccomp
/// filter that does not know it).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens `path` (`"."` or a validated relative path: no `..`, no empty
/// component, no leading `/`) beneath `dirfd` with `flags` (which should
/// contain `O_DIRECTORY`), refusing any symlink on the way including the last
/// component.
pub(crate) fn open_beneath(dirfd: BorrowedFd<'_>, path: impl AsRef<OsStr>, flags: OFlags) -> Result<OwnedFd, Errno> {
    let path = path.as_ref();
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_retry(dirfd, path, flags) {
            Err(Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    open_walk(dirfd, path, flags)
}

fn openat2_retry(dirfd: BorrowedFd<'_>, path: &OsStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    // EAGAIN: a concurrent rename or mount disturbed a scoped lookup; the
    // kernel asks us to try again.
    let mut last = Errno::AGAIN;
    for _ in 0..64 {
        match openat2(dirfd, path, flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE) {
            Err(e @ (Errno::AGAIN | Errno::INTR)) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// The fallback for kernels without `openat2`: one `openat(O_NOFOLLOW)` per
/// component, each relative to the fd of the previous one. Since no
/// component is `..` and no symlink is ever followed, the result is beneath
/// `dirfd`, as with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
pub(crate) fn open_walk(dirfd: BorrowedFd<'_>, path: impl AsRef<OsStr>, flags: OFlags) -> Result<OwnedFd, Errno> {
    let path = path.as_ref();
    if path == "." {
        return openat(dirfd, ".", flags | OFlags::CLOEXEC, Mode::empty());
    }
    let mut cur: Option<OwnedFd> = None;
    let mut comps = path.as_bytes().split(|&b| b == b'/').map(OsStr::from_bytes).peekable();
    while let Some(comp) = comps.next() {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(Errno::INVAL);
        }
        let last = comps.peek().is_none();
        let f = if last {
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        let at = cur.as_ref().map_or(dirfd, |fd| fd.as_fd());
        let next = match openat(at, comp, f, Mode::empty()) {
            Ok(fd) => fd,
            Err(e @ (Errno::LOOP | Errno::NOTDIR)) => return Err(classify(at, comp, e)),
            Err(e) => return Err(e),
        };
        // `O_PATH | O_NOFOLLOW` opens a symlink itself instead of failing:
        // make sure we did not get one.
        if f.contains(OFlags::PATH) {
            let ft = FileType::from_raw_mode(fstat(&next)?.st_mode as _);
            if ft == FileType::Symlink {
                return Err(Errno::LOOP);
            }
            if f.contains(OFlags::DIRECTORY) && ft != FileType::Directory {
                return Err(Errno::NOTDIR);
            }
        }
        cur = Some(next);
    }
    cur.ok_or(Errno::INVAL)
}

/// After `ELOOP`/`ENOTDIR` from `openat(at, comp, O_NOFOLLOW…)`: was it
/// because `comp` is a symlink?
fn classify(at: BorrowedFd<'_>, comp: &OsStr, e: Errno) -> Errno {
    match statat(at, comp, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Symlink => Errno::LOOP,
        Ok(_) => Errno::NOTDIR,
        Err(_) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root(dir: &std::path::Path) -> OwnedFd {
        openat(rustix::fs::CWD, dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    /// Both implementations must agree on every case.
    #[test]
    fn openat2_and_walk_agree() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::fs::write(t.path().join("a/f"), b"x").unwrap();
        symlink(outside.path(), t.path().join("a/evil")).unwrap();
        symlink("..", t.path().join("a/b/up")).unwrap();
        symlink("b", t.path().join("a/rel")).unwrap();
        let fd = root(t.path());
        let dirpath = OFlags::PATH | OFlags::DIRECTORY;
        let dirread = OFlags::RDONLY | OFlags::DIRECTORY;
        let cases: &[(&str, OFlags, Result<(), Errno>)] = &[
            (".", dirpath, Ok(())),
            ("a", dirpath, Ok(())),
            ("a/b", dirread, Ok(())),
            ("a/evil", dirpath, Err(Errno::LOOP)),
            ("a/evil", dirread, Err(Errno::LOOP)),
            ("a/evil/x", dirpath, Err(Errno::LOOP)),
            ("a/b/up", dirpath, Err(Errno::LOOP)),
            ("a/b/up/b", dirpath, Err(Errno::LOOP)),
            ("a/rel", dirpath, Err(Errno::LOOP)),
            ("a/f", dirpath, Err(Errno::NOTDIR)),
            ("a/f", dirread, Err(Errno::NOTDIR)),
            ("a/f/x", dirpath, Err(Errno::NOTDIR)),
            ("a/missing", dirpath, Err(Errno::NOENT)),
            ("a/missing/x", dirpath, Err(Errno::NOENT)),
        ];
        for (path, flags, want) in cases {
            let a = openat2_retry(fd.as_fd(), OsStr::new(path), *flags).map(|_| ());
            let w = open_walk(fd.as_fd(), path, *flags).map(|_| ());
            assert_eq!(&a, want, "openat2 {path:?}");
            assert_eq!(&w, want, "walk {path:?}");
        }
    }
}
