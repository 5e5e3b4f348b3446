//! [`SafeRoot`]: every operation beneath one root directory.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use cs_protocol::{Escaped, RelPath, Timestamp};
use rustix::fs::{
    chownat, fchmod, fchown, fcntl_getfl, fcntl_setfl, fstat, fsync, futimens, mkdirat, openat, readlinkat, renameat,
    renameat_with, statat, statx, symlinkat, unlinkat, utimensat, AtFlags, Dir, FileType, Gid, Mode, OFlags,
    RenameFlags, StatxAttributes, StatxFlags, Timespec, Timestamps, Uid, UTIME_OMIT,
};
use rustix::io::Errno;

use crate::resolve::open_beneath;
use crate::{FileKind, FsError, Owner, Stat};

mod private;

/// Size of the copy buffer of [`SafeRoot::write_temp`] and of each of the two
/// buffers of [`SafeRoot::same_content`].
const BUF_SIZE: usize = 128 * 1024;

/// A directory that paths are resolved beneath, never following a symlink.
///
/// Holds an `O_PATH | O_DIRECTORY` file descriptor of the root, so that
/// renaming or replacing the root's own path after [`SafeRoot::open`] does
/// not change which directory is operated on. See the crate documentation
/// for how paths are resolved.
///
/// All methods take `&self`; a `SafeRoot` can be shared between threads.
pub struct SafeRoot {
    fd: OwnedFd,
    path: PathBuf,
    /// Given every entry this root creates; `None`: left to the process.
    owner: Option<Owner>,
}

impl fmt::Debug for SafeRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeRoot")
            .field("path", &self.path)
            .field("fd", &self.fd.as_raw_fd())
            .field("owner", &self.owner)
            .finish()
    }
}

/// A directory fd: the root's own, or one opened beneath it.
enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Owned(fd) => fd.as_fd(),
        }
    }
}

/// `"a/b/c"` -> `(Some("a/b"), "c")`, `"c"` -> `(None, "c")` (bytes: names need not be UTF-8).
fn split(p: &RelPath) -> (Option<&OsStr>, &OsStr) {
    let s = p.as_bytes();
    match s.iter().rposition(|&b| b == b'/') {
        Some(i) => (Some(OsStr::from_bytes(&s[..i])), OsStr::from_bytes(&s[i + 1..])),
        None => (None, OsStr::from_bytes(s)),
    }
}

fn is_dir(st: &rustix::fs::Stat) -> bool {
    #[allow(clippy::unnecessary_cast)]
    let mode = st.st_mode as u32;
    FileKind::from_mode(mode) == FileKind::Dir
}

fn mode_bits(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & 0o7777)
}

fn timestamps(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: mtime.nsec.into() },
    }
}

/// A name usable as one path component.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= cs_protocol::MAX_COMPONENT_LEN
}

impl SafeRoot {
    /// Opens `root`, which must be an existing directory. `root` itself is
    /// resolved normally (symlinks in it are followed: it comes from local
    /// configuration, not from the network); everything beneath it is not.
    pub fn open(root: &Path) -> Result<SafeRoot, FsError> {
        let fd = openat(rustix::fs::CWD, root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                let (root, path) = (root.to_path_buf(), ".".to_string());
                match e {
                    Errno::NOTDIR => FsError::NotADirectory { op: "open", root, path },
                    e => FsError::Io { op: "open", root, path, source: e.into() },
                }
            })?;
        Ok(SafeRoot { fd, path: root.to_path_buf(), owner: None })
    }

    /// Every entry created from now on ([`SafeRoot::write_temp`],
    /// [`SafeRoot::symlink_temp`], [`SafeRoot::create_dir`],
    /// [`SafeRoot::create_dir_all`]) is given to `owner` before it is
    /// returned: `fchown` on the open temp file, `fchownat(AT_SYMLINK_NOFOLLOW)`
    /// on a symlink or a new directory. `None`: the process's own ids, as
    /// the kernel gives them. Existing entries are never re-owned.
    pub fn with_owner(mut self, owner: Option<Owner>) -> SafeRoot {
        self.owner = owner;
        self
    }

    /// The owner given with [`SafeRoot::with_owner`].
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Gives the entry `name` of `dir` (just created by us; `path` for
    /// messages) to the owner, if there is one. Never follows a symlink.
    fn own_at<N: rustix::path::Arg>(
        &self,
        op: &'static str,
        path: impl fmt::Display,
        dir: BorrowedFd<'_>,
        name: N,
    ) -> Result<(), FsError> {
        let Some(o) = self.owner else { return Ok(()) };
        chownat(dir, name, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.owner_err(op, path, o, e))
    }

    fn owner_err(&self, op: &'static str, path: impl fmt::Display, o: Owner, e: Errno) -> FsError {
        FsError::Owner { op, root: self.path.clone(), path: path.to_string(), uid: o.uid, gid: o.gid, source: e.into() }
    }

    /// The root directory, as given to [`SafeRoot::open`] (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- errors -------------------------------------------------------

    fn io(&self, op: &'static str, path: impl fmt::Display, e: impl Into<io::Error>) -> FsError {
        FsError::Io { op, root: self.path.clone(), path: path.to_string(), source: e.into() }
    }

    /// For errors of a lookup: `ELOOP` and `ENOTDIR` get their own variants.
    fn lookup_err(&self, op: &'static str, path: impl fmt::Display, e: Errno) -> FsError {
        let (root, path) = (self.path.clone(), path.to_string());
        match e {
            Errno::LOOP => FsError::SymlinkInPath { op, root, path },
            Errno::NOTDIR => FsError::NotADirectory { op, root, path },
            e => FsError::Io { op, root, path, source: e.into() },
        }
    }

    fn symlink_err(&self, op: &'static str, path: impl fmt::Display) -> FsError {
        FsError::SymlinkInPath { op, root: self.path.clone(), path: path.to_string() }
    }

    fn not_found(&self, op: &'static str, path: impl fmt::Display) -> FsError {
        self.io(op, path, io::Error::from(io::ErrorKind::NotFound))
    }

    // ---- resolution ---------------------------------------------------

    /// Opens the directory `dir` (None: the root) with `flags`, refusing
    /// symlinks everywhere including `dir` itself. `path` is for messages.
    fn open_dir(
        &self,
        op: &'static str,
        dir: Option<&OsStr>,
        flags: OFlags,
        path: impl fmt::Display,
    ) -> Result<DirFd<'_>, FsError> {
        match dir {
            None if flags == OFlags::PATH | OFlags::DIRECTORY => Ok(DirFd::Root(self.fd.as_fd())),
            dir => open_beneath(self.fd.as_fd(), dir.unwrap_or(OsStr::new(".")), flags)
                .map(DirFd::Owned)
                .map_err(|e| self.lookup_err(op, path, e)),
        }
    }

    /// The parent directory of `p` (an `O_PATH` fd, fine as the dirfd of
    /// `*at` calls) and the last component of `p`.
    fn parent<'p>(&self, op: &'static str, p: &'p RelPath) -> Result<(DirFd<'_>, &'p OsStr), FsError> {
        let (dir, name) = split(p);
        let fd = self.open_dir(op, dir, OFlags::PATH | OFlags::DIRECTORY, p)?;
        Ok((fd, name))
    }

    // ---- reading ------------------------------------------------------

    /// `lstat(p)`: never follows a symlink leaf.
    ///
    /// `Ok(None)` if `p` or one of its ancestors does not exist;
    /// [`FsError::SymlinkInPath`] / [`FsError::NotADirectory`] if an ancestor
    /// is a symlink / not a directory.
    pub fn lstat(&self, p: &RelPath) -> Result<Option<Stat>, FsError> {
        const OP: &str = "lstat";
        let (dir, name) = match self.parent(OP, p) {
            Ok(x) => x,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Stat::from_raw(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io(OP, p, e)),
        }
    }

    /// Opens the regular file `p` read-only. A symlink leaf is refused
    /// ([`FsError::SymlinkInPath`]), anything else that is not a regular file
    /// too ([`FsError::NotAFile`]; a fifo is never blocked on).
    pub fn open_file(&self, p: &RelPath) -> Result<File, FsError> {
        self.open_file_op("open_file", p)
    }

    fn open_file_op(&self, op: &'static str, p: &RelPath) -> Result<File, FsError> {
        let (dir, name) = self.parent(op, p)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = openat(&dir, name, flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP => self.symlink_err(op, p),
            e => self.io(op, p, e),
        })?;
        let st = fstat(&fd).map_err(|e| self.io(op, p, e))?;
        #[allow(clippy::unnecessary_cast)]
        if FileKind::from_mode(st.st_mode as u32) != FileKind::File {
            return Err(FsError::NotAFile { op, root: self.path.clone(), path: p.to_string() });
        }
        // O_NONBLOCK was only there so that opening a fifo cannot hang.
        let fl = fcntl_getfl(&fd).map_err(|e| self.io(op, p, e))?;
        fcntl_setfl(&fd, fl - OFlags::NONBLOCK).map_err(|e| self.io(op, p, e))?;
        Ok(File::from(fd))
    }

    /// The target of the symlink `p`, as the bytes it holds (not
    /// necessarily UTF-8). `EINVAL` if `p` is not a symlink.
    pub fn read_link(&self, p: &RelPath) -> Result<OsString, FsError> {
        const OP: &str = "read_link";
        Ok(OsString::from_vec(self.read_link_raw(OP, p)?.into_bytes()))
    }

    fn read_link_raw(&self, op: &'static str, p: &RelPath) -> Result<CString, FsError> {
        let (dir, name) = self.parent(op, p)?;
        readlinkat(&dir, name, Vec::new()).map_err(|e| self.io(op, p, e))
    }

    /// The entries of directory `p` (`None`: the root), without `.` and
    /// `..`, sorted by name, each with its kind (not following symlinks).
    /// A symlink `p` is refused ([`FsError::SymlinkInPath`]).
    pub fn read_dir(&self, p: Option<&RelPath>) -> Result<Vec<(OsString, FileKind)>, FsError> {
        const OP: &str = "read_dir";
        let path = p.map_or(".".to_string(), |p| p.to_string());
        let fd = match self.open_dir(OP, p.map(|p| p.as_os_str()), OFlags::RDONLY | OFlags::DIRECTORY, &path)? {
            DirFd::Owned(fd) => fd,
            DirFd::Root(_) => return Err(self.io(OP, &path, Errno::INVAL)), // not reached: RDONLY always opens
        };
        let mut entries = list_dir(fd).map_err(|e| self.io(OP, &path, e))?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(entries.into_iter().map(|(name, kind)| (OsString::from_vec(name.into_bytes()), kind)).collect())
    }

    /// Streaming comparison: true if `a` and `b` are both regular files with
    /// the same bytes, or both symlinks with the same target. Different kinds
    /// (or two directories) give false. A missing path is an error
    /// ([`FsError::is_not_found`]).
    pub fn same_content(&self, a: &RelPath, b: &RelPath) -> Result<bool, FsError> {
        const OP: &str = "same_content";
        let sa = self.lstat(a)?.ok_or_else(|| self.not_found(OP, a))?;
        let sb = self.lstat(b)?.ok_or_else(|| self.not_found(OP, b))?;
        match (sa.kind, sb.kind) {
            (FileKind::Symlink, FileKind::Symlink) => Ok(self.read_link_raw(OP, a)? == self.read_link_raw(OP, b)?),
            (FileKind::File, FileKind::File) => {
                if sa.size != sb.size {
                    return Ok(false);
                }
                let mut fa = self.open_file_op(OP, a)?;
                let mut fb = self.open_file_op(OP, b)?;
                let (mut ba, mut bb) = (vec![0u8; BUF_SIZE], vec![0u8; BUF_SIZE]);
                loop {
                    let na = read_full(&mut fa, &mut ba).map_err(|e| self.io(OP, a, e))?;
                    let nb = read_full(&mut fb, &mut bb).map_err(|e| self.io(OP, b, e))?;
                    if na != nb || ba.get(..na) != bb.get(..nb) {
                        return Ok(false);
                    }
                    if na == 0 {
                        return Ok(true);
                    }
                }
            }
            _ => Ok(false),
        }
    }

    // ---- creating -----------------------------------------------------

    /// `mkdir(p, mode)`. The parent must exist; an existing `p` is an error
    /// with [`io_kind`](FsError::io_kind) `AlreadyExists`. `mode` is subject
    /// to the process umask: use [`SafeRoot::set_mode`] for an exact mode.
    pub fn create_dir(&self, p: &RelPath, mode: u32) -> Result<(), FsError> {
        const OP: &str = "create_dir";
        let (dir, name) = self.parent(OP, p)?;
        mkdirat(&dir, name, mode_bits(mode)).map_err(|e| self.io(OP, p, e))?;
        self.own_at(OP, p, dir.as_fd(), name)
    }

    /// `mkdir -p`: creates `p` and its missing ancestors with `mode` (subject
    /// to the umask). Existing components, `p` included, must be real
    /// directories: a symlink gives [`FsError::SymlinkInPath`], anything
    /// else [`FsError::NotADirectory`].
    pub fn create_dir_all(&self, p: &RelPath, mode: u32) -> Result<(), FsError> {
        const OP: &str = "create_dir_all";
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        let mut cur = DirFd::Root(self.fd.as_fd());
        for comp in p.components() {
            let next = match open_beneath(cur.as_fd(), comp, flags) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match mkdirat(&cur, comp, mode_bits(mode)) {
                        Ok(()) => self.own_at(OP, p, cur.as_fd(), comp)?,
                        Err(Errno::EXIST) => {} // created concurrently; checked below
                        Err(e) => return Err(self.io(OP, p, e)),
                    }
                    open_beneath(cur.as_fd(), comp, flags).map_err(|e| self.lookup_err(OP, p, e))?
                }
                Err(e) => return Err(self.lookup_err(OP, p, e)),
            };
            cur = DirFd::Owned(next);
        }
        Ok(())
    }

    /// Creates `tmp_name` (`O_CREAT | O_EXCL | O_NOFOLLOW`, so an existing
    /// entry of any kind is an `AlreadyExists` error) in the parent directory
    /// of `target`, which must exist; copies all of `data` into it through a
    /// 128 KiB buffer; then `fchown` to the [owner](SafeRoot::with_owner) if
    /// there is one, `fchmod(mode & 0o7777)`, `futimens(mtime)` (atime
    /// left as is) and, if `fsync`, `fsync`.
    ///
    /// Returns the temp path, its [`Stat`] after all that, and the number of
    /// bytes written. On error the temp file is removed. `target` itself is
    /// not touched: rename the temp over it with [`SafeRoot::rename`] (then
    /// [`SafeRoot::sync_dir`] the parent for durability).
    pub fn write_temp(
        &self,
        target: &RelPath,
        tmp_name: &str,
        data: &mut dyn Read,
        mode: u32,
        mtime: Timestamp,
        fsync: bool,
    ) -> Result<(RelPath, Stat, u64), FsError> {
        const OP: &str = "write_temp";
        let tmp = self.tmp_path(OP, target, tmp_name)?;
        let (dir, _) = self.parent(OP, target)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&dir, tmp_name, flags, Mode::from_raw_mode(0o600)).map_err(|e| self.io(OP, &tmp, e))?;
        let mut file = File::from(fd);
        match self.fill_temp(&mut file, &tmp, data, mode, mtime, fsync) {
            Ok((stat, n)) => Ok((tmp, stat, n)),
            Err(e) => {
                drop(file);
                let _ = unlinkat(&dir, tmp_name, AtFlags::empty());
                Err(e)
            }
        }
    }

    fn fill_temp(
        &self,
        file: &mut File,
        tmp: &RelPath,
        data: &mut dyn Read,
        mode: u32,
        mtime: Timestamp,
        sync: bool,
    ) -> Result<(Stat, u64), FsError> {
        const OP: &str = "write_temp";
        let mut buf = vec![0u8; BUF_SIZE];
        let mut total: u64 = 0;
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io("write_temp (reading the data)", tmp, e)),
            };
            let chunk = buf.get(..n).ok_or_else(|| {
                self.io("write_temp (reading the data)", tmp, io::Error::other("reader returned an impossible length"))
            })?;
            file.write_all(chunk).map_err(|e| self.io(OP, tmp, e))?;
            total += n as u64;
        }
        // Before the chmod: a chown clears setuid/setgid bits.
        if let Some(o) = self.owner {
            fchown(&*file, Some(Uid::from_raw(o.uid)), Some(Gid::from_raw(o.gid)))
                .map_err(|e| self.owner_err(OP, tmp, o, e))?;
        }
        fchmod(&*file, mode_bits(mode)).map_err(|e| self.io(OP, tmp, e))?;
        futimens(&*file, &timestamps(mtime)).map_err(|e| self.io(OP, tmp, e))?;
        if sync {
            fsync(&*file).map_err(|e| self.io(OP, tmp, e))?;
        }
        let st = fstat(&*file).map_err(|e| self.io(OP, tmp, e))?;
        Ok((Stat::from_raw(&st), total))
    }

    /// Creates the symlink `tmp_name -> link_target` in the parent directory
    /// of `target` (which must exist; an existing `tmp_name` is an
    /// `AlreadyExists` error) and sets the link's own mtime. Returns the temp
    /// path; on error nothing is left behind. The target is stored as given,
    /// never resolved.
    pub fn symlink_temp(
        &self,
        target: &RelPath,
        tmp_name: &str,
        link_target: impl AsRef<OsStr>,
        mtime: Timestamp,
    ) -> Result<RelPath, FsError> {
        const OP: &str = "symlink_temp";
        let link_target = link_target.as_ref();
        let tmp = self.tmp_path(OP, target, tmp_name)?;
        let (dir, _) = self.parent(OP, target)?;
        symlinkat(link_target, &dir, tmp_name).map_err(|e| self.io(OP, &tmp, e))?;
        if let Err(e) = self.own_at(OP, &tmp, dir.as_fd(), tmp_name) {
            let _ = unlinkat(&dir, tmp_name, AtFlags::empty());
            return Err(e);
        }
        if let Err(e) = utimensat(&dir, tmp_name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW) {
            let _ = unlinkat(&dir, tmp_name, AtFlags::empty());
            return Err(self.io(OP, &tmp, e));
        }
        Ok(tmp)
    }

    fn tmp_path(&self, op: &'static str, target: &RelPath, tmp_name: &str) -> Result<RelPath, FsError> {
        let invalid = || FsError::InvalidName {
            op,
            root: self.path.clone(),
            path: target.to_string(),
            name: tmp_name.to_string(),
        };
        if !valid_name(tmp_name) {
            return Err(invalid());
        }
        target.with_file_name(tmp_name).map_err(|_| invalid())
    }

    // ---- metadata -----------------------------------------------------

    /// `chmod(p, mode & 0o7777)` on a file or directory. A symlink leaf is
    /// refused ([`FsError::SymlinkInPath`]): it is never followed.
    ///
    /// Uses `fchmodat2(AT_SYMLINK_NOFOLLOW)` (Linux 6.6); on older kernels,
    /// opens the leaf with `O_PATH | O_NOFOLLOW` and changes the mode
    /// through `/proc/self/fd` (which must then be mounted).
    pub fn set_mode(&self, p: &RelPath, mode: u32) -> Result<(), FsError> {
        const OP: &str = "set_mode";
        let (dir, name) = self.parent(OP, p)?;
        let mode = mode & 0o7777;
        match fchmodat2_nofollow(dir.as_fd(), name, mode) {
            Ok(()) => return Ok(()),
            // fchmodat2 refuses a symlink with EOPNOTSUPP (it cannot chmod the link).
            Err(Errno::OPNOTSUPP) => {
                return match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Symlink => {
                        Err(self.symlink_err(OP, p))
                    }
                    _ => Err(self.io(OP, p, Errno::OPNOTSUPP)),
                };
            }
            Err(Errno::NOSYS) => {}
            Err(e) => return Err(self.io(OP, p, e)),
        }
        self.chmod_via_proc(OP, p, dir.as_fd(), name, mode)
    }

    /// `set_mode` before Linux 6.6: hold the leaf with `O_PATH | O_NOFOLLOW`,
    /// check it is not a symlink, chmod it through its `/proc/self/fd` link.
    fn chmod_via_proc(
        &self,
        op: &'static str,
        p: &RelPath,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        mode: u32,
    ) -> Result<(), FsError> {
        let fd = openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| self.io(op, p, e))?;
        let st = fstat(&fd).map_err(|e| self.io(op, p, e))?;
        if FileType::from_raw_mode(st.st_mode as _) == FileType::Symlink {
            return Err(self.symlink_err(op, p));
        }
        // The magic link designates exactly the inode we hold: no race.
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::fs::chmod(proc_path.as_str(), mode_bits(mode)).map_err(|e| self.io(op, p, e))
    }

    /// Sets the owner of `p` itself (never a symlink's target) to the owner
    /// it has: changes nothing but its ctime. On kernel overlayfs that is a
    /// metadata change, which copies a lower entry (and its directories) up
    /// into the upper layer; the sync engine does it to keep a moved
    /// directory's contents once the lower loses them. The leaf is held with
    /// `O_PATH | O_NOFOLLOW` and changed through that descriptor, so the
    /// owner read is the owner written back to the same inode (no race with
    /// a rename in between).
    pub fn reassert_owner(&self, p: &RelPath) -> Result<(), FsError> {
        const OP: &str = "reassert_owner";
        let (dir, name) = self.parent(OP, p)?;
        let fd = openat(&dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| self.io(OP, p, e))?;
        let st = fstat(&fd).map_err(|e| self.io(OP, p, e))?;
        let (uid, gid) = (Uid::from_raw(st.st_uid), Gid::from_raw(st.st_gid));
        chownat(&fd, "", Some(uid), Some(gid), AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.io(OP, p, e))
    }

    /// Sets the modification time of `p` itself (a symlink's own mtime for a
    /// symlink: `utimensat(AT_SYMLINK_NOFOLLOW)`); the access time is left
    /// unchanged.
    pub fn set_mtime(&self, p: &RelPath, mtime: Timestamp) -> Result<(), FsError> {
        const OP: &str = "set_mtime";
        let (dir, name) = self.parent(OP, p)?;
        utimensat(&dir, name, &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(OP, p, e))
    }

    /// `fsync` of directory `p` (`None`: the root), to make renames and
    /// creations in it durable.
    pub fn sync_dir(&self, p: Option<&RelPath>) -> Result<(), FsError> {
        const OP: &str = "sync_dir";
        let path = p.map_or(".".to_string(), |p| p.to_string());
        let fd = self.open_dir(OP, p.map(|p| p.as_os_str()), OFlags::RDONLY | OFlags::DIRECTORY, &path)?;
        fsync(&fd).map_err(|e| self.io(OP, &path, e))
    }

    // ---- removing and renaming ---------------------------------------

    /// Unlinks the file or symlink `p` (the link itself, never its target).
    /// A directory is an error.
    pub fn remove_file(&self, p: &RelPath) -> Result<(), FsError> {
        const OP: &str = "remove_file";
        let (dir, name) = self.parent(OP, p)?;
        unlinkat(&dir, name, AtFlags::empty()).map_err(|e| self.io(OP, p, e))
    }

    /// Removes the empty directory `p`.
    pub fn remove_dir(&self, p: &RelPath) -> Result<(), FsError> {
        const OP: &str = "remove_dir";
        let (dir, name) = self.parent(OP, p)?;
        unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(|e| self.io(OP, p, e))
    }

    /// Removes `p` and, if it is a directory, everything beneath it, never
    /// following a symlink (a symlink inside is unlinked, its target left
    /// alone). Refuses to descend into a mount point
    /// ([`FsError::MountPoint`]). Entries that vanish meanwhile are ignored;
    /// a missing `p` is an error.
    ///
    /// Iterative; holds one open directory per level of depth, so a tree
    /// deeper than the fd limit fails with `EMFILE`.
    pub fn remove_tree(&self, p: &RelPath) -> Result<(), FsError> {
        const OP: &str = "remove_tree";
        let (dir, name) = self.parent(OP, p)?;
        let st = statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(OP, p, e))?;
        if !is_dir(&st) {
            return match unlinkat(&dir, name, AtFlags::empty()) {
                Err(Errno::ISDIR) => self.remove_tree_at(OP, p, dir.as_fd(), name),
                r => r.map_err(|e| self.io(OP, p, e)),
            };
        }
        self.remove_tree_at(OP, p, dir.as_fd(), name)
    }

    /// Empties directory `name` in `parent` (`p` beneath the root), then
    /// removes it.
    fn remove_tree_at(
        &self,
        op: &'static str,
        p: &RelPath,
        parent: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), FsError> {
        struct Frame {
            fd: OwnedFd,
            /// Name in the parent frame's directory.
            name: CString,
            /// Root-relative path, for messages.
            rel: String,
            /// Entries not yet removed.
            todo: Vec<(CString, FileKind)>,
        }
        let top_name = CString::new(name.as_bytes()).map_err(|_| self.io(op, p, Errno::INVAL))?;
        let open_frame = |at: BorrowedFd<'_>, name: CString, rel: String| -> Result<Frame, (Errno, String)> {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = openat(at, name.as_c_str(), flags, Mode::empty()).map_err(|e| (e, rel.clone()))?;
            if is_mount_root(fd.as_fd(), at) {
                return Err((Errno::BUSY, rel));
            }
            let dup = openat(&fd, c".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| (e, rel.clone()))?;
            let todo = list_dir(dup).map_err(|e| (e, rel.clone()))?;
            Ok(Frame { fd, name, rel, todo })
        };
        let frame_err = |(e, rel): (Errno, String)| match e {
            Errno::BUSY => FsError::MountPoint { op, root: self.path.clone(), path: p.to_string(), mount: rel },
            e => self.lookup_err(op, &rel, e),
        };

        let mut stack = vec![open_frame(parent, top_name, p.to_string()).map_err(frame_err)?];
        while let Some(frame) = stack.last_mut() {
            let Some((name, kind)) = frame.todo.pop() else {
                // Frame emptied: remove its directory from the parent frame's.
                let done = stack.pop();
                if let (Some(done), Some(up)) = (done, stack.last()) {
                    match unlinkat(&up.fd, done.name.as_c_str(), AtFlags::REMOVEDIR) {
                        Ok(()) | Err(Errno::NOENT) => {}
                        Err(e) => return Err(self.io(op, &done.rel, e)),
                    }
                }
                continue;
            };
            let rel = format!("{}/{}", frame.rel, Escaped(name.to_bytes()));
            if kind != FileKind::Dir {
                match unlinkat(&frame.fd, name.as_c_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => continue,
                    Err(Errno::ISDIR) => {} // became a directory meanwhile
                    Err(e) => return Err(self.io(op, &rel, e)),
                }
            }
            match open_frame(frame.fd.as_fd(), name.clone(), rel) {
                Ok(child) => stack.push(child),
                Err((Errno::NOENT, _)) => {}
                // Replaced by a non-directory (or a symlink) meanwhile: unlink that.
                Err((Errno::NOTDIR | Errno::LOOP, rel)) => match unlinkat(&frame.fd, name.as_c_str(), AtFlags::empty())
                {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(self.io(op, &rel, e)),
                },
                Err(e) => return Err(frame_err(e)),
            }
        }
        match unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io(op, p, e)),
        }
    }

    /// `rename(from, to)`: atomically replaces `to` if it exists (a file, a
    /// symlink, or an empty directory if `from` is a directory). Symlinks
    /// are renamed / replaced themselves, never followed.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), FsError> {
        const OP: &str = "rename";
        let (fd1, n1) = self.parent(OP, from)?;
        let (fd2, n2) = self.parent(OP, to)?;
        renameat(&fd1, n1, &fd2, n2).map_err(|e| self.io(OP, format!("{from} -> {to}"), e))
    }

    /// `renameat2(from, to, RENAME_NOREPLACE)`: fails with
    /// `AlreadyExists` if `to` exists (atomically).
    pub fn rename_noreplace(&self, from: &RelPath, to: &RelPath) -> Result<(), FsError> {
        const OP: &str = "rename_noreplace";
        let (fd1, n1) = self.parent(OP, from)?;
        let (fd2, n2) = self.parent(OP, to)?;
        renameat_with(&fd1, n1, &fd2, n2, RenameFlags::NOREPLACE).map_err(|e| self.io(OP, format!("{from} -> {to}"), e))
    }
}

/// All entries of the directory open as `fd` except `.` and `..`. An entry
/// whose type `getdents` does not give is `lstat`ed; one that vanished
/// meanwhile is skipped.
fn list_dir(fd: OwnedFd) -> Result<Vec<(CString, FileKind)>, Errno> {
    let mut dir = Dir::new(fd)?;
    let mut out = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let name: &CStr = ent.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let kind = match ent.file_type() {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Dir,
            FileType::Symlink => FileKind::Symlink,
            FileType::Unknown => match statat(dir.fd()?, name, AtFlags::SYMLINK_NOFOLLOW) {
                #[allow(clippy::unnecessary_cast)]
                Ok(st) => FileKind::from_mode(st.st_mode as u32),
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            },
            _ => FileKind::Other,
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

/// Is the directory `fd` (found in `parent`) the root of a mount? Uses
/// `STATX_ATTR_MOUNT_ROOT` where the kernel reports it (5.8+), else compares
/// devices with the parent (which also flags btrfs subvolumes).
fn is_mount_root(fd: BorrowedFd<'_>, parent: BorrowedFd<'_>) -> bool {
    let Ok(sx) = statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS) else {
        return false;
    };
    if sx.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
        return sx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT);
    }
    match statx(parent, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS) {
        Ok(px) => (px.stx_dev_major, px.stx_dev_minor) != (sx.stx_dev_major, sx.stx_dev_minor),
        Err(_) => false,
    }
}

/// Reads until `buf` is full or end of file; returns the count.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match f.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `fchmodat2(dirfd, name, mode, AT_SYMLINK_NOFOLLOW)` (Linux 6.6+): changes
/// the mode of `name` itself; `EOPNOTSUPP` if it is a symlink. `ENOSYS` where
/// the syscall is unknown (older kernel, or an architecture whose number we
/// do not know).
fn fchmodat2_nofollow(dirfd: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), Errno> {
    // The generic syscall table number, shared by all architectures below
    // (x32 and the legacy mips/alpha/ia64 tables differ: fallback there).
    #[cfg(all(
        any(
            all(target_arch = "x86_64", target_pointer_width = "64"),
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64",
            target_arch = "loongarch64",
            target_arch = "powerpc64",
            target_arch = "s390x",
        ),
        target_os = "linux"
    ))]
    {
        const SYS_FCHMODAT2: libc::c_long = 452;
        let name = CString::new(name.as_bytes()).map_err(|_| Errno::INVAL)?;
        // SAFETY: `dirfd` is an open fd for the duration of the call and
        // `name` a NUL-terminated string that outlives it; the kernel does
        // not keep either pointer. Arguments are passed with the C types of
        // the syscall's prototype.
        let r = unsafe {
            libc::syscall(
                SYS_FCHMODAT2,
                dirfd.as_raw_fd() as libc::c_int,
                name.as_ptr(),
                mode as libc::c_uint,
                libc::AT_SYMLINK_NOFOLLOW as libc::c_int,
            )
        };
        if r == 0 {
            return Ok(());
        }
        Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
    #[cfg(not(all(
        any(
            all(target_arch = "x86_64", target_pointer_width = "64"),
            target_arch = "x86",
            target_arch = "aarch64",
            target_arch = "arm",
            target_arch = "riscv64",
            target_arch = "loongarch64",
            target_arch = "powerpc64",
            target_arch = "s390x",
        ),
        target_os = "linux"
    )))]
    {
        let _ = (dirfd, name, mode);
        Err(Errno::NOSYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(split(&p), (Some(OsStr::new("a/b")), OsStr::new("c")));
        let p = RelPath::new("c").unwrap();
        assert_eq!(split(&p), (None, OsStr::new("c")));
        let p = RelPath::new(&b"\xe9/x\xff"[..]).unwrap();
        assert_eq!(split(&p), (Some(OsStr::from_bytes(b"\xe9")), OsStr::from_bytes(b"x\xff")));
    }

    /// The pre-6.6 path of `set_mode`, which the kernel running the tests
    /// may not take.
    #[test]
    fn chmod_fallback_changes_files_and_refuses_symlinks() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        std::os::unix::fs::symlink("f", t.path().join("l")).unwrap();
        let root = SafeRoot::open(t.path()).unwrap();
        let (f, l) = (RelPath::new("f").unwrap(), RelPath::new("l").unwrap());
        root.chmod_via_proc("t", &f, root.fd.as_fd(), OsStr::new("f"), 0o2741).unwrap();
        assert_eq!(root.lstat(&f).unwrap().unwrap().mode, 0o2741);
        let err = root.chmod_via_proc("t", &l, root.fd.as_fd(), OsStr::new("l"), 0o777).unwrap_err();
        assert!(matches!(err, FsError::SymlinkInPath { .. }), "{err:?}");
        assert_eq!(root.lstat(&f).unwrap().unwrap().mode, 0o2741);
    }

    #[test]
    fn safe_root_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SafeRoot>();
        assert_send_sync::<FsError>();
    }

    #[test]
    fn names() {
        for ok in ["x", ".x.tmp", "..."] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\0b", &"x".repeat(256)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
