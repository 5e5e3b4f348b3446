//! The holder: a process of its own that keeps the fill service's fanotify group alive
//! (docs/replica.md risk 1). While a descriptor of the group exists the kernel keeps
//! permission events pending; when the last one closes it allows them all, and a reader
//! blocked on a placeholder reads its zeros. So the group is made here, by a process that
//! does nothing else, and the service gets a duplicate of it over a Unix socket
//! (`SCM_RIGHTS`); a service that dies leaves its events pending, and the next one gets
//! the same group and answers them (the journal, [`crate::fill::FillConfig::journal`]).
//!
//! A service keeps its connection (its [`Lease`]) for as long as it answers the group. A
//! service that dies and does not come back would leave every reader of a file not fetched
//! yet blocked for good; so, given [`StandIn`], once no lease has been held for
//! [`StandIn::after`] the holder answers in the service's place with a fill service of its
//! own whose every fetch fails: such opens fail with EIO (as when the link is down past the
//! fetch timeout), everything else opens as usual. The next service to connect takes over
//! (the stand-in stops first, answering what it holds).
//!
//! [`serve`] is the holder's whole life: create the group and its filesystem mark, listen,
//! give each (root) client a descriptor of the group, and exit when a client sends
//! [`EXIT`] or when the mount point is no longer mounted (checked every second). It
//! never exits with its parent.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cs_protocol::RelPath;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

use crate::error::{ReplicaError, Result};
use crate::fill::{FillConfig, Filler, FillerHandle, Source, SourceReport};

/// The byte a client sends to make the holder exit.
pub const EXIT: u8 = b'x';
/// The byte the holder sends with the group's descriptor.
const GROUP: u8 = b'g';

/// Answering in place of a service that is gone: after `after` with no lease held, a fill
/// service on the group whose fetches all fail (`fill`: the service's own paths, so that
/// it answers, from the journal, what a killed service took and left).
#[derive(Debug, Clone)]
pub struct StandIn {
    pub after: Duration,
    pub fill: FillConfig,
}

/// The stand-in's source: there is no service, hence no link.
struct NoService;

impl Source for NoService {
    fn fetch(&self, _: &[RelPath], _: &Path) -> std::result::Result<SourceReport, String> {
        Err("the compute service is not running".into())
    }
}

/// Runs the holder until told to exit or the mount point goes. Errors only before it
/// serves (the group, the socket).
pub fn serve(socket: &Path, mountpoint: &Path, stand_in: Option<StandIn>) -> Result<()> {
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
    let mut leases: Vec<UnixStream> = Vec::new();
    // The service that starts the holder connects at once: counted from the start.
    let mut alone_since = Instant::now();
    let mut standing_in: Option<FillerHandle> = None;
    loop {
        let wait = match (&stand_in, &standing_in, leases.is_empty()) {
            (Some(s), None, true) => s.after.saturating_sub(alone_since.elapsed()).min(Duration::from_secs(1)),
            _ => Duration::from_secs(1),
        };
        let timeout = Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(&listener, PollFlags::IN))
            .chain(leases.iter().map(|l| PollFd::new(l, PollFlags::IN)))
            .collect();
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        drop(fds);
        if !crate::image::is_mount_point(mountpoint).unwrap_or(false) {
            tracing::info!(mountpoint = %mountpoint.display(), "no longer mounted: the fill holder exits");
            break;
        }
        let had_leases = !leases.is_empty();
        let mut exit = false;
        leases.retain(|l| match lease_news(l) {
            LeaseNews::None => true,
            LeaseNews::Closed => false,
            LeaseNews::Exit => {
                exit = true;
                true
            }
        });
        if exit {
            tracing::info!("told to exit: the fill holder exits");
            break;
        }
        if had_leases && leases.is_empty() {
            alone_since = Instant::now();
            tracing::info!("no service holds the group now");
        }
        while let Ok((stream, _)) = listener.accept() {
            if !is_root(&stream) {
                tracing::warn!("a client that is not root: refused");
                continue;
            }
            // The service answers from now on: the stand-in first answers what it holds.
            if let Some(f) = standing_in.take() {
                f.stop();
                tracing::info!("a service connected: the stand-in stopped, the service answers");
            }
            if give_group(&stream, &group) && stream.set_nonblocking(true).is_ok() {
                leases.push(stream);
            }
        }
        if let (Some(s), None, true) = (&stand_in, &standing_in, leases.is_empty()) {
            if alone_since.elapsed() >= s.after {
                standing_in = start_stand_in(s, &group);
                if standing_in.is_none() {
                    alone_since = Instant::now(); // tried again after as long
                }
            }
        }
    }
    if let Some(f) = standing_in.take() {
        f.stop();
    }
    let _ = std::fs::remove_file(socket);
    // Closed last: a client waiting in `tell_exit` sees the socket gone when it returns.
    drop(leases);
    Ok(())
}

fn start_stand_in(s: &StandIn, group: &OwnedFd) -> Option<FillerHandle> {
    let started = group
        .try_clone()
        .map_err(|e| ReplicaError::io("duplicate the group", &s.fill.mountpoint, e))
        .and_then(|g| Filler::start_with_group(s.fill.clone(), g, Arc::new(NoService)));
    match started {
        Ok(f) => {
            tracing::warn!(
                after_s = s.after.as_secs_f64(),
                "no compute service for this long: the holder answers in its place \
                 (opens of files not fetched yet fail with EIO until a service is back)"
            );
            Some(f)
        }
        Err(e) => {
            tracing::warn!(error = %e, "starting the stand-in fill service: readers keep waiting for a service");
            None
        }
    }
}

enum LeaseNews {
    None,
    Closed,
    Exit,
}

/// What a (non-blocking) lease says: nothing, its end (the service closed it or died), or
/// the exit byte.
fn lease_news(mut l: &UnixStream) -> LeaseNews {
    let mut b = [0u8; 1];
    match l.read(&mut b) {
        Ok(0) => LeaseNews::Closed,
        Ok(_) if b[0] == EXIT => LeaseNews::Exit,
        Ok(_) => LeaseNews::None,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => LeaseNews::None,
        Err(_) => LeaseNews::Closed,
    }
}

fn is_root(stream: &UnixStream) -> bool {
    rustix::net::sockopt::socket_peercred(stream).map(|c| c.uid.is_root()).unwrap_or(false)
}

/// Sends the group to a client. False: it could not be sent (the client is dropped).
fn give_group(stream: &UnixStream, group: &OwnedFd) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [group.as_fd()];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    match rustix::net::sendmsg(stream, &[IoSlice::new(&[GROUP])], &mut control, SendFlags::NOSIGNAL) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "sending the group to a client");
            false
        }
    }
}

/// A service's hold on the group: while it is kept, the holder knows a service answers;
/// dropped (or the service dead), the holder stands in after a while ([`StandIn`]).
#[derive(Debug)]
pub struct Lease {
    _conn: UnixStream,
}

/// The group from the holder at `socket` (an error if none answers), and the lease to keep
/// while answering it.
pub fn group(socket: &Path) -> io::Result<(OwnedFd, Lease)> {
    let s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let g = receive(&s)?;
    Ok((g, Lease { _conn: s }))
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
