//! The holder: a process of its own that keeps the fill service's fanotify group alive
//! (docs/replica.md risk 1). While a descriptor of the group exists the kernel keeps
//! permission events pending; when the last one closes it allows them all, and a reader
//! blocked on a placeholder reads its zeros. So the group is made here, by a process that
//! does nothing else, and the service gets a duplicate of it over a Unix socket
//! (`SCM_RIGHTS`); a service that dies leaves its events pending, and the next one gets
//! the same group and answers them (the journal, [`crate::fill::FillConfig::journal`]).
//!
//! [`serve`] is the holder's whole life: create the group and its filesystem mark, listen,
//! give each (root) client a descriptor of the group, and exit when a client sends
//! [`EXIT`] or when the mount point is no longer mounted (checked every second). It
//! never reads the group's queue and never exits with its parent.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::error::{ReplicaError, Result};

/// The byte a client sends to make the holder exit.
pub const EXIT: u8 = b'x';
/// The byte the holder sends with the group's descriptor.
const GROUP: u8 = b'g';

/// Runs the holder until told to exit or the mount point goes. Errors only before it
/// serves (the group, the socket).
pub fn serve(socket: &Path, mountpoint: &Path) -> Result<()> {
    let group = crate::fill::create_group(mountpoint)?;
    let io_err = |op: &'static str| move |e: io::Error| ReplicaError::io(op, socket, e);
    // A socket file left by a dead holder answers nobody: replaced.
    if socket.exists() && UnixStream::connect(socket).is_err() {
        std::fs::remove_file(socket).map_err(io_err("remove a stale socket"))?;
    }
    let listener = UnixListener::bind(socket).map_err(io_err("bind"))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod"))?;
    listener.set_nonblocking(true).map_err(io_err("set non-blocking"))?;
    tracing::info!(socket = %socket.display(), mountpoint = %mountpoint.display(), "fill holder serving");
    loop {
        let mut fds = [rustix::event::PollFd::new(&listener, rustix::event::PollFlags::IN)];
        let timeout = rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 };
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        if !crate::image::is_mount_point(mountpoint).unwrap_or(false) {
            tracing::info!(mountpoint = %mountpoint.display(), "no longer mounted: the fill holder exits");
            break;
        }
        let Ok((stream, _)) = listener.accept() else { continue };
        if client(stream, &group) {
            tracing::info!("told to exit: the fill holder exits");
            break;
        }
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// One client: root only; gets the group; may then send [`EXIT`]. True: exit.
fn client(stream: UnixStream, group: &OwnedFd) -> bool {
    let root = rustix::net::sockopt::socket_peercred(&stream).map(|c| c.uid.is_root()).unwrap_or(false);
    if !root {
        tracing::warn!("a client that is not root: refused");
        return false;
    }
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [group.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    if let Err(e) = rustix::net::sendmsg(&stream, &[IoSlice::new(&[GROUP])], &mut control, SendFlags::NOSIGNAL) {
        tracing::warn!(error = %e, "sending the group to a client");
        return false;
    }
    let mut b = [0u8; 1];
    matches!((&stream).read(&mut b), Ok(1) if b[0] == EXIT)
}

/// The group from the holder at `socket` (an error if none answers).
pub fn group(socket: &Path) -> io::Result<OwnedFd> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    receive(&s)
}

fn receive(s: &UnixStream) -> io::Result<OwnedFd> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut b = [0u8; 1];
    let r = rustix::net::recvmsg(s, &mut [IoSliceMut::new(&mut b)], &mut control, RecvFlags::CMSG_CLOEXEC)?;
    let mut got = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for fd in fds {
                got.get_or_insert(fd);
            }
        }
    }
    match got {
        Some(fd) if r.bytes == 1 && b[0] == GROUP => Ok(fd),
        _ => Err(io::Error::other("the holder sent no group")),
    }
}

/// Tells the holder at `socket` to exit and waits (up to `wait`) until it has closed the
/// connection. Ok(false): no holder answered.
pub fn tell_exit(socket: &Path, wait: Duration) -> io::Result<bool> {
    let mut s = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => return Ok(false),
        Err(e) => return Err(e),
    };
    s.set_read_timeout(Some(wait))?;
    drop(receive(&s)?);
    s.write_all(&[EXIT])?;
    // The holder closes the connection as it exits (socket removed before).
    let mut b = [0u8; 1];
    let _ = s.read(&mut b);
    Ok(true)
}
