//! Eviction under `--cache-max`: the keeper thread and how one filled file becomes a
//! placeholder again (docs/replica.md risk 6, measured with `docs/spikes/replica/evict.sh`).
//!
//! Recency is the last use, seen as a fanotify notification event when a reader closes the
//! file (`FAN_CLOSE_NOWRITE`, which never makes anyone wait), or the fill (the file's
//! ctime) if no reader closed it since. Not the atime: overlayfs reads its lower layers
//! through a `noatime` mount of its own, so a read through the merged view never updates
//! the lower file's atime (measured). Not `FAN_OPEN`: the event's descriptor, which the
//! service holds while it reads the event, counts as an open, and the eviction's own open
//! made one for every file it tried, so its lease was refused now and then.
//!
//! A file is evicted only while nothing has it open, checked by the kernel: a write lease
//! is refused while any other descriptor of it is open, overlayfs's included, so a reader
//! that opened it keeps reading the content it opened. Overlayfs's own opens do not break
//! a lease, so an open that arrives during the eviction is held back the fill service's
//! way: the inode is marked in flight first, and its permission event waits on it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cs_protocol::Timestamp;
use rustix::fs::{FallocateFlags, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{read_want, Inflight, Shared};
use crate::cache::{self, Cached};
use crate::sys;
use crate::want::{Want, XATTR};

/// The bound, and where the trees it covers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBound {
    pub max_bytes: u64,
    /// The replica root: every complete tree (`tree-N`) under it counts.
    pub trees_root: std::path::PathBuf,
}

/// Between two passes over the trees: after one that got under the bound, and after one
/// that could not (every candidate left was open): a pass walks every tree.
const GAP_AFTER_DONE: Duration = Duration::from_secs(1);
const GAP_AFTER_SHORT: Duration = Duration::from_secs(5);

/// With a bound, the filesystem mark reports every read-only close too (for recency);
/// without one, not (a mark the holder kept from a predecessor with a bound loses it).
/// Closes of what the service writes (fills, evictions) are `FAN_CLOSE_WRITE`, and its
/// event descriptors make no events: only readers' closes come.
pub(super) fn watch_opens(sh: &Shared) -> crate::error::Result<()> {
    let op = if sh.cfg.cache.is_some() { libc::FAN_MARK_ADD } else { libc::FAN_MARK_REMOVE };
    match sys::fanotify_mark(
        sh.fan.as_fd(),
        op | libc::FAN_MARK_FILESYSTEM,
        libc::FAN_CLOSE_NOWRITE,
        libc::AT_FDCWD,
        Some(&sh.cfg.mountpoint),
    ) {
        Ok(()) => Ok(()),
        Err(e) if op == libc::FAN_MARK_REMOVE => {
            tracing::debug!(error = %e, "no open notifications to remove");
            Ok(())
        }
        Err(e) => Err(crate::error::ReplicaError::Fanotify {
            op: "mark the filesystem for closes (cache recency)",
            path: sh.cfg.mountpoint.clone(),
            source: e,
        }),
    }
}

/// A reader closed `fd`'s file, now.
pub(super) fn note_use(sh: &Shared, fd: std::os::fd::BorrowedFd<'_>) {
    let Ok(st) = rustix::fs::fstat(fd) else { return };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let at = (now.as_secs() as i64, i64::from(now.subsec_nanos()));
    sh.used.lock().unwrap_or_else(|p| p.into_inner()).insert((st.st_dev, st.st_ino), at);
}

/// The keeper: one pass at start (what an earlier service filled counts too), then one
/// whenever the fills take the content over the bound.
pub(super) fn keeper(sh: &Shared, bound: &CacheBound) {
    let _own = sh.own_thread();
    ignore_lease_breaks();
    let mut next: Option<Instant> = None;
    loop {
        {
            let mut state = sh.lock();
            loop {
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                let over = state.stats.cache_bytes > bound.max_bytes;
                let wait = match next {
                    None => break,
                    Some(t) if over && t <= now => break,
                    Some(t) if over => t - now,
                    Some(_) => Duration::from_secs(3600),
                };
                state = sh.cache_wake.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let reached = pass(sh, bound);
        next = Some(Instant::now() + if reached { GAP_AFTER_DONE } else { GAP_AFTER_SHORT });
    }
}

/// Measures what the trees hold and evicts down under the bound; false if it could not
/// (files open).
fn pass(sh: &Shared, bound: &CacheBound) -> bool {
    let t = Instant::now();
    // Fills during the pass add to the estimate; kept on top of what the walk measured.
    let estimate_before = sh.lock().stats.cache_bytes;
    let (mut files, unreadable) = cache::filled_files(&bound.trees_root);
    {
        // The last reader's close where one was seen since the fill, else the fill; the
        // record keeps only files still filled.
        let mut used = sh.used.lock().unwrap_or_else(|p| p.into_inner());
        let filled: std::collections::HashSet<_> = files.iter().map(|f| (sh.dev, f.ino)).collect();
        used.retain(|k, _| filled.contains(k));
        for f in &mut files {
            if let Some(&at) = used.get(&(sh.dev, f.ino)) {
                f.recency = f.recency.max(at);
            }
        }
    }
    let mut held: u64 = files.iter().map(|f| f.bytes).sum();
    let target = cache::low_water(bound.max_bytes);
    let (mut evicted, mut skipped) = (0u64, 0u64);
    for c in cache::eviction_order(files, bound.max_bytes) {
        if held <= target || sh.stop.load(Ordering::SeqCst) {
            break;
        }
        match evict(sh, &c) {
            Outcome::Evicted(bytes) => {
                held = held.saturating_sub(bytes);
                evicted += 1;
                let mut state = sh.lock();
                state.stats.evicted += 1;
                state.stats.evicted_bytes += bytes;
            }
            Outcome::Open => skipped += 1,
            Outcome::Busy => {}
            Outcome::Failed(e) => sh.note_error(format!("evict {}: {e}", c.path.display())),
        }
    }
    {
        let mut state = sh.lock();
        state.stats.cache_bytes = held + state.stats.cache_bytes.saturating_sub(estimate_before);
        state.stats.evict_skipped_open += skipped;
    }
    if unreadable > 0 {
        tracing::warn!(unreadable, root = %bound.trees_root.display(), "replica cache pass: paths it could not read");
    }
    tracing::debug!(held, evicted, skipped, took_ms = t.elapsed().as_millis() as u64, "replica cache pass");
    held <= bound.max_bytes
}

enum Outcome {
    Evicted(u64),
    /// Open somewhere: it keeps its content.
    Open,
    /// Being filled, or changed since the walk: left alone.
    Busy,
    Failed(String),
}

/// Makes one filled file a placeholder again, unless anything has it open.
fn evict(sh: &Shared, c: &Cached) -> Outcome {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NOATIME | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(&c.path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Outcome::Busy,
        Err(e) => return Outcome::Failed(format!("open: {e}")),
    };
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => return Outcome::Failed(format!("fstat: {e}")),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_blocks == 0 || st.st_dev != sh.dev {
        return Outcome::Busy;
    }
    let key = (st.st_dev, st.st_ino);
    {
        // In flight and without its ignore mark in one step under the lock: an open
        // answered meanwhile cannot put the mark back (`on_event`), so every open from
        // here on is an event.
        let mut state = sh.lock();
        if state.inflight.contains_key(&key) {
            return Outcome::Busy;
        }
        if let Err(e) = remove_ignore_mark(sh, &fd) {
            return Outcome::Failed(e);
        }
        state.inflight.insert(key, Inflight::default());
    }
    let mtime = Timestamp { sec: st.st_mtime, nsec: st.st_mtime_nsec as u32 };
    let want = Want { path: c.rel.clone(), size: st.st_size as u64, mtime };
    let outcome = punch_out(&fd, &want, st.st_blocks as u64 * 512);
    // Opens that arrived meanwhile waited on the inode: a fill for them if it is a
    // placeholder now, else they go ahead on the content still there.
    let placeholder = matches!(read_want(fd.as_fd()), Ok(Some(_)));
    let mut state = sh.lock();
    let waiting = state.inflight.get(&key).is_some_and(|i| !i.waiters.is_empty());
    if placeholder && waiting {
        state.queue.push_back((key, Instant::now()));
        drop(state);
        sh.work.notify_one();
    } else {
        let waiters = state.inflight.remove(&key).map(|i| i.waiters).unwrap_or_default();
        drop(state);
        for p in &waiters {
            sh.answer(p.num, true);
        }
        sh.journal_answered(&waiters.iter().map(|p| p.num).collect::<Vec<_>>());
    }
    outcome
}

pub(super) fn remove_ignore_mark(sh: &Shared, fd: &OwnedFd) -> Result<(), String> {
    let remove = libc::FAN_MARK_REMOVE | libc::FAN_MARK_IGNORE;
    match sys::fanotify_mark(sh.fan.as_fd(), remove, libc::FAN_OPEN_PERM, fd.as_raw_fd(), None) {
        Ok(()) => Ok(()),
        // No mark (never opened since its fill, or the inode was evicted from memory).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(format!("remove its ignore mark: {e}")),
    }
}

/// The eviction proper, the inode in flight and without its ignore mark. Order:
/// `user.cs.want` (an open's event now waits for us), the lease (refused if open: undone),
/// the content punched out, P's mtime back, the lease released.
fn punch_out(fd: &OwnedFd, want: &Want, blocks: u64) -> Outcome {
    if let Err(e) = rustix::fs::fsetxattr(fd, XATTR, &want.encode(), XattrFlags::empty()) {
        return Outcome::Failed(format!("set {XATTR}: {e}"));
    }
    let undo_want = |why: Outcome| {
        if let Err(e) = rustix::fs::fremovexattr(fd, XATTR) {
            // Content and want both: the next open refetches what is there. Harmless.
            tracing::warn!(path = %want.path, error = %e, "an eviction left undone keeps {XATTR}");
        }
        why
    };
    match sys::set_lease(fd.as_fd(), libc::F_WRLCK) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return undo_want(Outcome::Open),
        Err(e) => return undo_want(Outcome::Failed(format!("take a write lease: {e}"))),
    }
    let punched = rustix::fs::fallocate(fd, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, 0, want.size);
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: want.mtime.sec, tv_nsec: want.mtime.nsec.into() },
    };
    let dated = rustix::fs::futimens(fd, &times);
    if let Err(e) = sys::set_lease(fd.as_fd(), libc::F_UNLCK) {
        tracing::warn!(path = %want.path, error = %e, "releasing an eviction's lease");
    }
    match (punched, dated) {
        (Err(e), _) => undo_want(Outcome::Failed(format!("punch out the content: {e}"))),
        (_, Err(e)) => Outcome::Failed(format!("restore mtime (the content is gone, the next open refills): {e}")),
        (Ok(()), Ok(())) => {
            let left = rustix::fs::fstat(fd).map(|s| s.st_blocks as u64 * 512).unwrap_or(0);
            Outcome::Evicted(blocks.saturating_sub(left))
        }
    }
}

/// A lease is broken by any open that is not overlayfs's (a tool reading the image
/// directly); the kernel then signals the process with SIGIO, whose default action ends
/// it. The lease lasts milliseconds and the opener waits for its release anyway, so the
/// signal carries nothing we need: ignored, unless someone installed a handler.
fn ignore_lease_breaks() {
    // SAFETY: sigaction reads and sets this process's SIGIO disposition only.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGIO, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_DFL {
            libc::signal(libc::SIGIO, libc::SIG_IGN);
        }
    }
}
