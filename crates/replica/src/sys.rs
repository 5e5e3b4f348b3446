//! fanotify and file handles through `libc` (rustix has neither); each call wrapped once.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use std::os::unix::ffi::OsStrExt;

/// `FAN_DENY_ERRNO(e)` of linux/fanotify.h (6.14+), absent from libc 0.2.191: the
/// denied opener gets `e` instead of EPERM. Only pre-content groups may use it, and
/// only a few errnos (EIO among them; not ENOENT).
pub(crate) const fn fan_deny_errno(e: i32) -> u32 {
    libc::FAN_DENY | (((e as u32) & 0xff) << 24)
}

pub(crate) fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a descriptor we now own.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark` on a path (AT_FDCWD) or, with `path == None`, on `fd`'s own inode.
pub(crate) fn fanotify_mark(
    fan: BorrowedFd<'_>,
    flags: u32,
    mask: u64,
    fd: RawFd,
    path: Option<&Path>,
) -> io::Result<()> {
    let c = match path {
        Some(p) => {
            Some(CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?)
        }
        None => None,
    };
    let ptr = c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: ptr is NUL-terminated or null; fds are valid for the call.
    let r = unsafe { libc::fanotify_mark(fan.as_raw_fd(), flags, mask, fd, ptr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Answers one permission event. The kernel matches a response by descriptor number.
pub(crate) fn respond(fan: BorrowedFd<'_>, event_fd: RawFd, response: u32) -> io::Result<()> {
    let r = libc::fanotify_response { fd: event_fd, response };
    let n = std::mem::size_of::<libc::fanotify_response>();
    // SAFETY: writes exactly the struct's bytes.
    let w = unsafe { libc::write(fan.as_raw_fd(), &r as *const _ as *const libc::c_void, n) };
    if w != n as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One event as read from the group's queue.
pub(crate) struct Event {
    pub mask: u64,
    pub fd: RawFd,
    pub pid: i32,
}

/// Parses a buffer `read` from the group; stops at the first malformed record.
pub(crate) fn parse_events(buf: &[u8]) -> Vec<Event> {
    let meta = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    let mut off = 0;
    while buf.len() - off >= meta {
        // SAFETY: `meta` bytes are there; read_unaligned copes with any alignment.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[off..].as_ptr() as *const libc::fanotify_event_metadata) };
        let len = m.event_len as usize;
        if len < meta || off + len > buf.len() || m.vers != libc::FANOTIFY_METADATA_VERSION {
            break;
        }
        out.push(Event { mask: m.mask, fd: m.fd, pid: m.pid });
        off += len;
    }
    out
}

/// `MAX_HANDLE_SZ`.
const MAX_HANDLE: usize = 128;

#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    f: [u8; MAX_HANDLE],
}

/// The file handle of the inode behind `fd` (its type and bytes): what the journal keeps
/// of an event, good for [`open_by_handle`] on the replica's own mount.
pub(crate) fn handle_of(fd: RawFd) -> io::Result<(i32, Vec<u8>)> {
    let mut h = Handle { bytes: MAX_HANDLE as u32, kind: 0, f: [0; MAX_HANDLE] };
    let mut mnt_id: libc::c_int = 0;
    let empty = c"";
    // SAFETY: `h` is a file_handle with room for MAX_HANDLE bytes, as handle_bytes says.
    let r = unsafe {
        libc::name_to_handle_at(
            fd,
            empty.as_ptr(),
            &mut h as *mut Handle as *mut libc::file_handle,
            &mut mnt_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.bytes as usize).min(MAX_HANDLE);
    Ok((h.kind, h.f[..n].to_vec()))
}

/// Opens the inode of a handle from [`handle_of`] through `mount_fd`'s mount.
pub(crate) fn open_by_handle(mount_fd: BorrowedFd<'_>, kind: i32, bytes: &[u8], flags: i32) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = Handle { bytes: bytes.len() as u32, kind, f: [0; MAX_HANDLE] };
    h.f[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `h` is a file_handle whose handle_bytes matches its content.
    let nfd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            &mut h as *mut Handle as *mut libc::file_handle,
            flags | libc::O_CLOEXEC,
        )
    };
    if nfd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(nfd) })
}

/// Opens the inode behind `fd` again, through `mount_fd`'s mount, with `flags`: the
/// event's descriptor may be on overlayfs's private read-only clone of the mount.
pub(crate) fn reopen_by_handle(fd: BorrowedFd<'_>, mount_fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let (kind, bytes) = handle_of(fd.as_raw_fd())?;
    open_by_handle(mount_fd, kind, &bytes, flags)
}

/// Whether descriptor number `fd` is open in this process.
pub(crate) fn fd_in_use(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r >= 0
}

/// `/dev/null` on descriptor number `fd` (which must be free): keeps the number taken.
pub(crate) fn reserve_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    if null.as_raw_fd() == fd {
        return Ok(null);
    }
    // SAFETY: `fd` was checked free by the caller; dup3 gives us that number.
    let r = unsafe { libc::dup3(null.as_raw_fd(), fd, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created at that number, ours.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// `F_SETLEASE`: `libc::F_WRLCK` is refused (`EAGAIN`) while any other descriptor of the
/// file is open (overlayfs's own included); `libc::F_UNLCK` releases it.
pub(crate) fn set_lease(fd: BorrowedFd<'_>, kind: i32) -> io::Result<()> {
    // SAFETY: a plain fcntl on a descriptor we hold.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLEASE, kind) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
