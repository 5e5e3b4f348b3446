//! The operations a scenario performs, each a self-contained system call sequence (open, act,
//! close) on a path relative to the view's root, and its outcome: `Ok(observed value)` or the
//! errno, named.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::observe::{describe_lstat, escape, mtime_class};

/// Who performs an operation: root (the services, `sudo`) or the unprivileged owner of the
/// lower's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    Root,
    User,
}

/// An owner argument of `chown`: unchanged (-1), root, or the unprivileged user.
#[derive(Clone, Copy, Debug)]
pub enum Id {
    Keep,
    Root,
    User,
}

/// One timestamp argument of `utimensat`.
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Omit,
    Now,
    At(i64),
}

/// The operations. Paths are relative to the view's root; `flags` are `open(2)` flags.
#[derive(Clone, Debug)]
pub enum Op {
    /// `open(path, flags, mode)`, then close.
    Open {
        path: &'static str,
        flags: i32,
        mode: u32,
    },
    /// `open(path, O_WRONLY|flags, 0644)`, write `data`, close.
    Write {
        path: &'static str,
        flags: i32,
        data: &'static str,
    },
    /// The file's content.
    Read(&'static str),
    /// `lstat`: kind, mode, owner, size, link count.
    Stat(&'static str),
    /// `lstat`'s mtime: `setup`, an explicit value, or `now`.
    Mtime(&'static str),
    /// The directory's entry names, sorted.
    ReadDir(&'static str),
    Unlink(&'static str),
    Rmdir(&'static str),
    Mkdir(&'static str, u32),
    Rename(&'static str, &'static str),
    Link(&'static str, &'static str),
    /// `symlink(target, path)`.
    Symlink(&'static str, &'static str),
    Readlink(&'static str),
    Chmod(&'static str, u32),
    /// `chown` (`follow`) or `lchown`.
    Chown {
        path: &'static str,
        uid: Id,
        gid: Id,
        follow: bool,
    },
    Truncate(&'static str, i64),
    Utimens {
        path: &'static str,
        atime: Time,
        mtime: Time,
        follow: bool,
    },
    Mkfifo(&'static str, u32),
    /// `mknod(path, mode, makedev(major, minor))`; `mode` carries the `S_IF*` kind.
    Mknod {
        path: &'static str,
        mode: u32,
        major: u32,
        minor: u32,
    },
    /// `rm -r` (`std::fs::remove_dir_all`: readdir, unlink each entry, rmdir).
    RemoveAll(&'static str),
    SetXattr(&'static str, &'static str, &'static str),
    GetXattr(&'static str, &'static str),
    /// The `user.*` attribute names, sorted.
    ListXattr(&'static str),
    RemoveXattr(&'static str, &'static str),
    /// Open read-write, map the whole file shared, write `data` at `offset`, `msync`, unmap.
    MmapWrite {
        path: &'static str,
        offset: usize,
        data: &'static str,
    },
    /// The file's content read through a shared read-only mapping.
    MmapRead(&'static str),
    Fallocate {
        path: &'static str,
        mode: i32,
        offset: i64,
        len: i64,
    },
    /// `flock(LOCK_EX|LOCK_NB)` on one descriptor, then on a second one (which must conflict).
    Flock(&'static str),
    /// An OFD write lock (`F_OFD_SETLK`) on one descriptor, then on a second one (conflict).
    FcntlLock(&'static str),
    /// `open(dir, O_TMPFILE|O_WRONLY, 0644)`, write, then link it as `link` through
    /// `/proc/self/fd` (unless `link` is empty).
    TmpFile {
        dir: &'static str,
        link: &'static str,
    },
    /// `statfs` succeeds with a block size and block count.
    Statfs(&'static str),
    /// `access(path, mode)`.
    Access(&'static str, i32),
}

/// An operation's outcome: `Ok(observed value, often empty)` or the errno.
pub type Outcome = Result<String, i32>;

/// The result of a whole outcome, for tables: `ok`, `ok: value`, or the errno's name.
pub fn show(o: &Outcome) -> String {
    match o {
        Ok(v) if v.is_empty() => "ok".into(),
        Ok(v) => format!("ok: {v}"),
        Err(e) => errno_name(*e),
    }
}

/// Serialised form for the child's stdout: one line.
pub fn encode(o: &Outcome) -> String {
    match o {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("err {e}"),
    }
}

pub fn decode(line: &str) -> Option<Outcome> {
    if let Some(v) = line.strip_prefix("ok ") {
        return Some(Ok(v.to_string()));
    }
    line.strip_prefix("err ").and_then(|e| e.parse().ok()).map(Err)
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// Runs `op` below `root` in this process, `user_ids` being the unprivileged user's uid/gid.
pub fn run(root: &Path, op: &Op, user_ids: (u32, u32)) -> Outcome {
    let p = |rel: &str| cpath(root, rel);
    match op {
        Op::Open { path, flags, mode } => {
            let fd = open(&p(path), *flags, *mode)?;
            close(fd);
            Ok(String::new())
        }
        Op::Write { path, flags, data } => {
            let fd = open(&p(path), libc::O_WRONLY | flags, 0o644)?;
            let r = write_all(fd, data.as_bytes());
            close(fd);
            r.map(|_| String::new())
        }
        Op::Read(path) => std::fs::read(root.join(path)).map(|b| escape(&b)).map_err(io_errno),
        Op::Stat(path) => {
            std::fs::symlink_metadata(root.join(path)).map(|m| describe_lstat(&m, user_ids)).map_err(io_errno)
        }
        Op::Mtime(path) => std::fs::symlink_metadata(root.join(path)).map(|m| mtime_class(&m)).map_err(io_errno),
        Op::ReadDir(path) => {
            let rd = std::fs::read_dir(root.join(path)).map_err(io_errno)?;
            let mut names = Vec::new();
            for e in rd {
                names.push(e.map_err(io_errno)?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names.join(","))
        }
        Op::Unlink(path) => cvt(unsafe { libc::unlink(p(path).as_ptr()) }),
        Op::Rmdir(path) => cvt(unsafe { libc::rmdir(p(path).as_ptr()) }),
        Op::Mkdir(path, mode) => cvt(unsafe { libc::mkdir(p(path).as_ptr(), *mode) }),
        Op::Rename(from, to) => cvt(unsafe { libc::rename(p(from).as_ptr(), p(to).as_ptr()) }),
        Op::Link(from, to) => cvt(unsafe { libc::link(p(from).as_ptr(), p(to).as_ptr()) }),
        Op::Symlink(target, path) => {
            let target = CString::new(*target).expect("no NUL in test data");
            cvt(unsafe { libc::symlink(target.as_ptr(), p(path).as_ptr()) })
        }
        Op::Readlink(path) => {
            std::fs::read_link(root.join(path)).map(|t| escape(t.as_os_str().as_bytes())).map_err(io_errno)
        }
        Op::Chmod(path, mode) => cvt(unsafe { libc::chmod(p(path).as_ptr(), *mode) }),
        Op::Chown { path, uid, gid, follow } => {
            let id = |i: &Id, user: u32| match i {
                Id::Keep => u32::MAX,
                Id::Root => 0,
                Id::User => user,
            };
            let (u, g) = (id(uid, user_ids.0), id(gid, user_ids.1));
            let r = if *follow {
                unsafe { libc::chown(p(path).as_ptr(), u, g) }
            } else {
                unsafe { libc::lchown(p(path).as_ptr(), u, g) }
            };
            cvt(r)
        }
        Op::Truncate(path, len) => cvt(unsafe { libc::truncate(p(path).as_ptr(), *len) }),
        Op::Utimens { path, atime, mtime, follow } => {
            let ts = |t: &Time| match t {
                Time::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
                Time::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
                Time::At(s) => libc::timespec { tv_sec: *s, tv_nsec: 0 },
            };
            let times = [ts(atime), ts(mtime)];
            let flags = if *follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
            cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p(path).as_ptr(), times.as_ptr(), flags) })
        }
        Op::Mkfifo(path, mode) => cvt(unsafe { libc::mkfifo(p(path).as_ptr(), *mode) }),
        Op::Mknod { path, mode, major, minor } => {
            cvt(unsafe { libc::mknod(p(path).as_ptr(), *mode, libc::makedev(*major, *minor)) })
        }
        Op::RemoveAll(path) => std::fs::remove_dir_all(root.join(path)).map(|_| String::new()).map_err(io_errno),
        Op::SetXattr(path, name, value) => {
            let name = CString::new(*name).expect("no NUL in test data");
            cvt(unsafe { libc::setxattr(p(path).as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        }
        Op::GetXattr(path, name) => {
            let name = CString::new(*name).expect("no NUL in test data");
            let mut buf = [0u8; 256];
            let n = unsafe { libc::getxattr(p(path).as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                return Err(errno());
            }
            Ok(escape(&buf[..n as usize]))
        }
        Op::ListXattr(path) => list_user_xattrs(&p(path)).map(|names| names.join(",")),
        Op::RemoveXattr(path, name) => {
            let name = CString::new(*name).expect("no NUL in test data");
            cvt(unsafe { libc::removexattr(p(path).as_ptr(), name.as_ptr()) })
        }
        Op::MmapWrite { path, offset, data } => {
            let fd = open(&p(path), libc::O_RDWR, 0)?;
            let r = mmap_write(fd, *offset, data.as_bytes());
            close(fd);
            r.map(|_| String::new())
        }
        Op::MmapRead(path) => {
            let fd = open(&p(path), libc::O_RDONLY, 0)?;
            let r = mmap_read(fd);
            close(fd);
            r.map(|b| escape(&b))
        }
        Op::Fallocate { path, mode, offset, len } => {
            let fd = open(&p(path), libc::O_RDWR, 0)?;
            let r = cvt(unsafe { libc::fallocate(fd, *mode, *offset, *len) });
            close(fd);
            r
        }
        Op::Flock(path) => {
            let first = open(&p(path), libc::O_RDONLY, 0)?;
            let a = cvt(unsafe { libc::flock(first, libc::LOCK_EX | libc::LOCK_NB) });
            let second = open(&p(path), libc::O_RDONLY, 0);
            let b = second.and_then(|fd| cvt(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }));
            if let Ok(fd) = second {
                close(fd);
            }
            close(first);
            Ok(format!("first {}, second {}", show(&a), show(&b)))
        }
        Op::FcntlLock(path) => {
            let lock = |fd| {
                let mut l: libc::flock = unsafe { std::mem::zeroed() };
                l.l_type = libc::F_WRLCK as libc::c_short;
                l.l_whence = libc::SEEK_SET as libc::c_short;
                cvt(unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &l) })
            };
            let first = open(&p(path), libc::O_RDWR, 0)?;
            let a = lock(first);
            let second = open(&p(path), libc::O_RDWR, 0);
            let b = second.and_then(lock);
            if let Ok(fd) = second {
                close(fd);
            }
            close(first);
            Ok(format!("first {}, second {}", show(&a), show(&b)))
        }
        Op::TmpFile { dir, link } => {
            let fd = open(&p(dir), libc::O_TMPFILE | libc::O_WRONLY, 0o644)?;
            let mut r = write_all(fd, b"anonymous\n").map(|_| String::new());
            if r.is_ok() && !link.is_empty() {
                let proc_path = CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL");
                r = cvt(unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        proc_path.as_ptr(),
                        libc::AT_FDCWD,
                        p(link).as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                });
            }
            close(fd);
            r
        }
        Op::Statfs(path) => {
            let mut s: libc::statfs = unsafe { std::mem::zeroed() };
            cvt(unsafe { libc::statfs(p(path).as_ptr(), &mut s) })?;
            Ok(format!("bsize>0 {}, blocks>0 {}", s.f_bsize > 0, s.f_blocks > 0))
        }
        Op::Access(path, mode) => cvt(unsafe { libc::access(p(path).as_ptr(), *mode) }),
    }
}

/// The `user.*` extended attribute names of `path` (not following a symlink), sorted.
pub fn list_user_xattrs(path: &CString) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    let mut names: Vec<String> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).expect("no NUL in test paths")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn cvt(r: libc::c_int) -> Outcome {
    if r < 0 {
        Err(errno())
    } else {
        Ok(String::new())
    }
}

fn open(path: &CString, flags: i32, mode: u32) -> Result<i32, i32> {
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(fd)
    }
}

fn close(fd: i32) {
    unsafe { libc::close(fd) };
}

fn write_all(fd: i32, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            return Err(errno());
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn file_size(fd: i32) -> Result<usize, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(errno());
    }
    Ok(st.st_size as usize)
}

fn mmap_write(fd: i32, offset: usize, data: &[u8]) -> Result<(), i32> {
    let len = file_size(fd)?;
    if offset + data.len() > len {
        return Err(libc::EINVAL);
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
    if map == libc::MAP_FAILED {
        return Err(errno());
    }
    // SAFETY: the mapping is `len` bytes long and `offset + data.len() <= len`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.cast::<u8>().add(offset), data.len()) };
    let synced = unsafe { libc::msync(map, len, libc::MS_SYNC) };
    let r = if synced < 0 { Err(errno()) } else { Ok(()) };
    unsafe { libc::munmap(map, len) };
    r
}

fn mmap_read(fd: i32) -> Result<Vec<u8>, i32> {
    let len = file_size(fd)?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
    if map == libc::MAP_FAILED {
        return Err(errno());
    }
    // SAFETY: the mapping is `len` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(map.cast::<u8>(), len) }.to_vec();
    unsafe { libc::munmap(map, len) };
    Ok(bytes)
}
