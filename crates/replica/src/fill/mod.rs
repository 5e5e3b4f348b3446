//! The fill service: a fanotify group with a FILESYSTEM mark on the replica's filesystem
//! and `FAN_OPEN_PERM`; the first open of a placeholder (a file carrying
//! `user.cs.want`) waits while its content is fetched from P and written into it, then is
//! allowed. Rules from docs/replica.md, section 1 and risk 1:
//!
//! - Event descriptors are `O_RDONLY` (overlayfs's private clone of the lower mount is
//!   read-only); the fill writes the same inode opened by handle on our own mount.
//! - Events of our own process (the fill's writes, the staging area, a tree being built
//!   in this process) are allowed at once by the reading thread, which never waits on a
//!   fetch: fills run on worker threads, one fill in flight per inode, later opens of
//!   that inode wait for it.
//! - A fill writes the content, truncates to the fetched size, sets P's mtime, puts an
//!   evictable ignore mark on the inode (no more events for it while it is cached) and
//!   lets the opens waiting on it through (`FAN_ALLOW`: the content is whole in the
//!   page cache). Then it makes the content durable (`fdatasync`, or one `syncfs` for a
//!   batch) and only then removes `user.cs.want`: a machine crash before leaves `want`
//!   set and the next open fills again.
//! - Whatever goes wrong (no answer within `fetch_timeout`, a Source error, a path P no
//!   longer has or refused, a withdrawn file) denies the open with EIO
//!   (`FAN_DENY_ERRNO`): the kernel accepts only a few errnos there, ENOENT not among
//!   them, and the name does exist in the tree until a round removes it.
//! - While the group lives, no reader ever sees a placeholder's zeros. When it dies
//!   (the last descriptor closes), the kernel allows what is pending and every later
//!   open of an unfilled placeholder reads zeros. [`Filler::start`] makes a group of its
//!   own (it dies with this process); [`Filler::start_with_group`] takes one from the
//!   holder process ([`crate::holder`]), which outlives the service, and with
//!   [`FillConfig::journal`] answers by number the events a killed predecessor had taken.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cs_protocol::RelPath;
use rustix::fs::{Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use crate::error::{ReplicaError, Result};
use crate::journal::{Journal, Orphan};
use crate::sys;
use crate::want::{Want, MAX_LEN, XATTR};

mod evict;
mod hydrate;
mod read_ahead;
pub use evict::CacheBound;
pub use hydrate::Hydrate;

/// Where content comes from (P, through the connection; a directory in tests).
pub trait Source: Send + Sync + 'static {
    /// Fetch P's current content of `paths` into `staging` (a directory on the replica
    /// fs): on return each fetched file is at staging/<path> with P's mtime (the
    /// caller's `LinkHandle::fetch` already does exactly this).
    fn fetch(&self, paths: &[RelPath], staging: &Path) -> Result<SourceReport, String>;
}

/// What a fetch brought, per path asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReport {
    pub written: Vec<RelPath>,
    /// P no longer has these.
    pub missing: Vec<RelPath>,
    pub refused: Vec<(RelPath, String)>,
    /// Changed while P sent them.
    pub withdrawn: Vec<RelPath>,
}

/// The caps of a read-ahead: the unfilled small files near an opened one (its directory
/// first, then the tree around it: `read_ahead.rs`) fetched beside it, what makes a cold
/// read of many small files one round trip per batch instead of one per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAhead {
    pub max_files: usize,
    pub max_file_bytes: u64,
    pub max_total_bytes: u64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead { max_files: 256, max_file_bytes: 1 << 20, max_total_bytes: 16 << 20 }
    }
}

#[derive(Debug, Clone)]
pub struct FillConfig {
    /// The replica filesystem's mount point (of its own: refused otherwise).
    pub mountpoint: PathBuf,
    /// Fetches land here, on the same filesystem, outside any tree; emptied at start.
    pub staging: PathBuf,
    /// An open waiting longer is denied with EIO.
    pub fetch_timeout: Duration,
    pub read_ahead: ReadAhead,
    /// Fills that may run at once (each waits on its fetch).
    pub workers: usize,
    /// The event journal (docs/replica.md section 4): each event taken from the group is
    /// written here (descriptor number, file handle) before it is answered, and marked
    /// answered after. A service started on a group that outlived its predecessor (held by
    /// the holder process, [`crate::holder`]) answers what its predecessor left unanswered.
    /// Off the replica's filesystem. `None`: no journal (a group of our own dies with us).
    pub journal: Option<PathBuf>,
    /// A bound on fetched content: over it, the least recently read filled files are
    /// made placeholders again (`evict.rs`). `None`: content stays until a new tree.
    pub cache: Option<CacheBound>,
}

impl FillConfig {
    pub fn new(mountpoint: impl Into<PathBuf>, staging: impl Into<PathBuf>) -> FillConfig {
        FillConfig {
            mountpoint: mountpoint.into(),
            staging: staging.into(),
            fetch_timeout: Duration::from_secs(30),
            read_ahead: ReadAhead::default(),
            workers: 4,
            journal: None,
            cache: None,
        }
    }
}

/// What `status` shows of the fill service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FillStats {
    /// Permission events read (our own included).
    pub events: u64,
    /// Opens allowed without a fill (no `user.cs.want`, our own, filled meanwhile).
    pub allowed_at_once: u64,
    /// Placeholders filled (read-ahead included) and their bytes.
    pub fills: u64,
    pub bytes: u64,
    pub read_ahead_fills: u64,
    pub source_calls: u64,
    /// Opens denied (with EIO).
    pub denied: u64,
    /// Inodes being filled now.
    pub in_flight: u64,
    /// Opens waiting for a fill now.
    pub waiting: u64,
    pub oldest_waiting_ms: u64,
    /// False once the kernel refused an evictable ignore mark (every open is then an event).
    pub ignore_marks: bool,
    /// The bound on fetched content (`None`: unbounded), and the filled files' blocks held
    /// (as of the last pass over the trees, plus the fills since).
    pub cache_max_bytes: Option<u64>,
    pub cache_bytes: u64,
    /// Filled files made placeholders again, and their blocks.
    pub evicted: u64,
    pub evicted_bytes: u64,
    /// Evictions given up because the file was open (it keeps its content; tried again later).
    pub evict_skipped_open: u64,
    /// The background fetch (`FillerHandle::hydrate`): `None` if not asked for, else where
    /// it stands, what it filled, and what it has left (as of its last walk).
    pub hydrate: Option<&'static str>,
    pub hydrated: u64,
    pub hydrated_bytes: u64,
    pub hydrate_left_files: u64,
    pub hydrate_left_bytes: u64,
    /// Files the background fetch gave up on (three failed fetches while others in their
    /// batch came: P refused or lost them); an open still fetches them.
    pub hydrate_given_up: u64,
    pub last_error: Option<String>,
}

type Key = (u64, u64);

struct Pending {
    /// The event's descriptor; for a predecessor's event, `/dev/null` keeping its number
    /// taken (`None`: the number is held by something else of this process).
    fd: Option<OwnedFd>,
    /// The number the kernel knows the event by.
    num: RawFd,
    since: Instant,
}

impl Pending {
    fn new(fd: OwnedFd, since: Instant) -> Pending {
        Pending { num: fd.as_raw_fd(), fd: Some(fd), since }
    }
}

#[derive(Default)]
struct Inflight {
    /// Every open waiting on this inode's fill (none for a read-ahead claim yet).
    waiters: Vec<Pending>,
    /// The inode opened by handle, for a fill started by a predecessor's event (whose
    /// waiter has no descriptor of the inode).
    probe: Option<OwnedFd>,
    /// The content is written, whole, and being made durable (`let_through`): opens go
    /// ahead at once.
    written: bool,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Key, Instant)>,
    inflight: HashMap<Key, Inflight>,
    stats: FillStats,
}

struct Shared {
    fan: OwnedFd,
    mount_fd: OwnedFd,
    dev: u64,
    cfg: FillConfig,
    source: Arc<dyn Source>,
    state: Mutex<State>,
    work: Condvar,
    stop: AtomicBool,
    /// Set by `stop` once the threads whose opens the reader answers have ended.
    reader_may_end: AtomicBool,
    ignore_ok: AtomicBool,
    errno_ok: AtomicBool,
    seq: AtomicU64,
    /// The threads whose opens are the fill service's own (its workers writing a
    /// placeholder, a read-ahead fetch, the recovery of a predecessor's events): let
    /// through at once, by thread id (`FAN_REPORT_TID`), not by process. The service's
    /// other threads (the sync engine reading or copying up a project file through the
    /// merged view) must wait for the fill like any reader: let through at once they
    /// read a placeholder's zeros, and a copy-up sends those zeros to the project.
    own: Mutex<HashSet<i32>>,
    journal: Option<Journal>,
    /// Read-ahead fills and Source calls run on threads of their own, beside the workers;
    /// `stop` waits for them (see [`Running`]).
    ahead: Arc<Running>,
    fetches: Arc<Running>,
    /// Wakes the cache keeper: a fill took the content over the bound, or `stop`.
    cache_wake: Condvar,
    /// With a cache bound: when a reader last closed each filled file (see `evict.rs`).
    used: Mutex<HashMap<Key, (i64, i64)>>,
}

/// How long `stop` waits for the threads it did not start itself: a read-ahead fill ends
/// within 100 ms of `stop` (its wait is sliced); a Source call may never end (it is left
/// behind, and logged).
const AHEAD_GRACE: Duration = Duration::from_secs(5);
const FETCH_GRACE: Duration = Duration::from_secs(2);

/// Counts running threads of one kind, so that `stop` can wait for them: until they end
/// they keep the image busy (the group and the image's descriptor through `Shared`, or a
/// staging directory on the image), and an unmount right after `stop` fails.
#[derive(Default)]
struct Running {
    count: Mutex<usize>,
    ended: Condvar,
}

/// One running thread; dropped last thing in it.
struct RunningGuard(Arc<Running>);

impl Running {
    fn enter(self: &Arc<Self>) -> RunningGuard {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        RunningGuard(self.clone())
    }

    /// Waits until none runs, at most `bound`; how many still run.
    fn wait(&self, bound: Duration) -> usize {
        let count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let (count, _) = self.ended.wait_timeout_while(count, bound, |n| *n > 0).unwrap_or_else(|p| p.into_inner());
        *count
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        *self.0.count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.ended.notify_all();
    }
}

/// While it lives, the current thread's opens are the fill service's own.
struct OwnThread<'a>(&'a Shared, i32);

impl Drop for OwnThread<'_> {
    fn drop(&mut self) {
        self.0.own.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

impl Shared {
    /// The read-ahead's caps; under a cache bound at most a quarter of it in bytes, so
    /// one read-ahead never evicts much of what was read just before.
    fn read_ahead_caps(&self) -> ReadAhead {
        let mut caps = self.cfg.read_ahead;
        if let Some(bound) = &self.cfg.cache {
            caps.max_total_bytes = caps.max_total_bytes.min(bound.max_bytes / 4);
        }
        caps
    }

    fn own_thread(&self) -> OwnThread<'_> {
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        self.own.lock().unwrap_or_else(|p| p.into_inner()).insert(tid);
        OwnThread(self, tid)
    }

    fn is_own(&self, tid: i32) -> bool {
        self.own.lock().unwrap_or_else(|p| p.into_inner()).contains(&tid)
    }
}

/// The fill service, started by [`Filler::start`].
pub struct Filler;

/// The running service: [`FillerHandle::stop`] (or drop) answers what is pending and
/// joins its threads.
pub struct FillerHandle {
    /// `None` once stopped: our hold on the group and the image is let go.
    shared: Option<Arc<Shared>>,
    /// The Source calls, waited for after the group is closed (see `shutdown`).
    fetches: Arc<Running>,
    wake: Arc<OwnedFd>,
    threads: Vec<JoinHandle<()>>,
}

/// The mount point, canonical, once checked to be a filesystem of its own, and its device.
fn own_filesystem(mountpoint: &Path) -> Result<(PathBuf, u64)> {
    let mp = fs::canonicalize(mountpoint).map_err(|e| ReplicaError::io("resolve", mountpoint, e))?;
    let dev = fs::metadata(&mp).map_err(|e| ReplicaError::io("stat", &mp, e))?.dev();
    let root_dev = fs::metadata("/").map_err(|e| ReplicaError::io("stat", "/", e))?.dev();
    // A filesystem mark makes every open on that filesystem wait for us: never on
    // the root filesystem, never on a directory that is not a mount of its own.
    if dev == root_dev || !crate::image::is_mount_point(&mp)? {
        return Err(ReplicaError::Fanotify {
            op: "refuse a filesystem mark",
            path: mp,
            source: io::Error::other("not a filesystem of its own (the root filesystem, or not a mount point)"),
        });
    }
    Ok((mp, dev))
}

/// Whether this kernel and process can make the fill service's kind of fanotify group
/// (pre-content class: CAP_SYS_ADMIN, and a kernel with fanotify permission events), without
/// marking anything: `cs-actor doctor`'s check.
pub fn probe_group_support() -> std::io::Result<()> {
    sys::fanotify_init(GROUP_CLASS | libc::FAN_CLOEXEC, libc::O_RDONLY as u32).map(drop)
}

/// The fill group's class. PRE_CONTENT: only such groups may deny with an errno of their
/// choice (EIO).
const GROUP_CLASS: u32 = libc::FAN_CLASS_PRE_CONTENT;

/// The fanotify group of the fill service: pre-content class, a FILESYSTEM mark with
/// `FAN_OPEN_PERM` on `mountpoint` (refused unless it is a filesystem of its own). Made by
/// [`Filler::start`], or by the holder process ([`crate::holder`]) that keeps it alive
/// across the service's deaths.
pub fn create_group(mountpoint: &Path) -> Result<OwnedFd> {
    let (mp, _) = own_filesystem(mountpoint)?;
    let fan_err = |op, e| ReplicaError::Fanotify { op, path: mp.clone(), source: e };
    let fan = sys::fanotify_init(
        GROUP_CLASS
            // An event's pid is the thread's: the service's own opens are told apart
            // from its other threads' (see `Shared::own`).
            | libc::FAN_REPORT_TID
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_UNLIMITED_QUEUE
            | libc::FAN_UNLIMITED_MARKS,
        (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
    )
    .map_err(|e| fan_err("init", e))?;
    sys::fanotify_mark(
        fan.as_fd(),
        libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
        libc::FAN_OPEN_PERM,
        libc::AT_FDCWD,
        Some(&mp),
    )
    .map_err(|e| fan_err("mark filesystem", e))?;
    Ok(fan)
}

impl Filler {
    /// The service on a group of its own: when this process dies, the group dies with it
    /// and the kernel allows whatever is pending (docs/replica.md risk 1).
    pub fn start(cfg: FillConfig, source: Arc<dyn Source>) -> Result<FillerHandle> {
        let group = create_group(&cfg.mountpoint)?;
        Filler::start_with_group(cfg, group, source)
    }

    /// The service on `group`, a descriptor of a group made by [`create_group`] (from the
    /// holder process). With `cfg.journal`, the events the journal says a dead predecessor
    /// took and did not answer are answered first: their descriptor numbers are kept taken
    /// (`/dev/null`) before any new event is read, each file is filled (or found filled),
    /// and the answer goes to that number.
    pub fn start_with_group(cfg: FillConfig, group: OwnedFd, source: Arc<dyn Source>) -> Result<FillerHandle> {
        let (mp, dev) = own_filesystem(&cfg.mountpoint)?;
        let fan = group;
        // The predecessor's events: their numbers taken before the reader runs.
        let (journal, orphans) = match &cfg.journal {
            Some(p) => {
                let (j, o) = Journal::open(p).map_err(|e| ReplicaError::io("open the fill journal", p, e))?;
                (Some(j), o)
            }
            None => (None, Vec::new()),
        };
        let mut reserved = Vec::new();
        for o in &orphans {
            let fd = if sys::fd_in_use(o.num) {
                // Held by something that stays (the group itself, most likely): no event
                // can get this number while it does.
                tracing::warn!(
                    fd = o.num,
                    "a predecessor's event number is in use here: answering it by number anyway"
                );
                None
            } else {
                match sys::reserve_fd(o.num) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        tracing::warn!(fd = o.num, error = %e, "keeping a predecessor's event number taken");
                        None
                    }
                }
            };
            reserved.push(Pending { fd, num: o.num, since: Instant::now() });
        }
        if cfg.staging.exists() {
            fs::remove_dir_all(&cfg.staging).map_err(|e| ReplicaError::io("empty staging", &cfg.staging, e))?;
        }
        fs::create_dir_all(&cfg.staging).map_err(|e| ReplicaError::io("create staging", &cfg.staging, e))?;
        let fan_err = |op, e| ReplicaError::Fanotify { op, path: mp.clone(), source: e };
        let mount_fd = rustix::fs::open(&mp, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| ReplicaError::io("open", &mp, e))?;
        let wake = Arc::new(
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK)
                .map_err(|e| fan_err("eventfd", e.into()))?,
        );
        let workers = cfg.workers.max(1);
        let cache_max_bytes = cfg.cache.as_ref().map(|c| c.max_bytes);
        let shared = Arc::new(Shared {
            fan,
            mount_fd,
            dev,
            cfg: FillConfig { mountpoint: mp, ..cfg },
            source,
            state: Mutex::new(State {
                stats: FillStats { ignore_marks: true, cache_max_bytes, ..Default::default() },
                ..Default::default()
            }),
            work: Condvar::new(),
            stop: AtomicBool::new(false),
            reader_may_end: AtomicBool::new(false),
            ignore_ok: AtomicBool::new(true),
            errno_ok: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            own: Mutex::new(HashSet::new()),
            journal,
            ahead: Arc::default(),
            fetches: Arc::default(),
            cache_wake: Condvar::new(),
            used: Mutex::new(HashMap::new()),
        });
        evict::watch_opens(&shared)?;
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new().name(name).spawn(f).map_err(|e| ReplicaError::io("spawn thread", "cs-replica", e))
        };
        let (sh, wk) = (shared.clone(), wake.clone());
        threads.push(spawn("replica-events".into(), Box::new(move || reader(&sh, wk.as_fd())))?);
        for i in 0..workers {
            let sh = shared.clone();
            threads.push(spawn(format!("replica-fill-{i}"), Box::new(move || worker(&sh)))?);
        }
        if let Some(bound) = shared.cfg.cache.clone() {
            let sh = shared.clone();
            threads.push(spawn("replica-cache".into(), Box::new(move || evict::keeper(&sh, &bound)))?);
        }
        // With the reader running (our own opens by handle are events too).
        for (o, p) in orphans.into_iter().zip(reserved) {
            adopt(&shared, o, p);
        }
        tracing::info!(mountpoint = %shared.cfg.mountpoint.display(), workers, "replica fill service started");
        let handle = FillerHandle { fetches: shared.fetches.clone(), shared: Some(shared), wake, threads };
        Ok(handle)
    }
}

/// A predecessor's unanswered event: filled like a new one, answered by its number.
fn adopt(sh: &Shared, o: Orphan, p: Pending) {
    let _own = sh.own_thread();
    let num = p.num;
    let probe = match &o.handle {
        Some((kind, bytes)) => sys::open_by_handle(sh.mount_fd.as_fd(), *kind, bytes, libc::O_RDONLY)
            .map_err(|e| format!("open by handle: {e}")),
        None => Err("no file handle was journaled".to_string()),
    };
    let probe = match probe.and_then(|f| rustix::fs::fstat(&f).map(|st| (f, st)).map_err(|e| format!("fstat: {e}"))) {
        Ok(x) => x,
        Err(e) => {
            sh.note_error(format!("a predecessor's event (descriptor {num}): {e}: denied"));
            sh.answer(num, false);
            sh.lock().stats.denied += 1;
            sh.journal_answered(&[num]);
            return;
        }
    };
    let (f, st) = probe;
    let placeholder = st.st_mode & libc::S_IFMT == libc::S_IFREG && matches!(read_want(f.as_fd()), Ok(Some(_)));
    tracing::info!(fd = num, ino = st.st_ino, placeholder, "answering a predecessor's event");
    if !placeholder {
        sh.answer(num, true);
        sh.lock().stats.allowed_at_once += 1;
        sh.journal_answered(&[num]);
        return;
    }
    let key = (st.st_dev, st.st_ino);
    let mut state = sh.lock();
    let first = !state.inflight.contains_key(&key);
    let entry = state.inflight.entry(key).or_default();
    entry.waiters.push(p);
    // Kept even when a read-ahead has the inode in flight already: should that fill fail,
    // this waiter (which has no descriptor) gets a fill of its own through the probe.
    entry.probe.get_or_insert(f);
    if first {
        state.queue.push_back((key, Instant::now()));
        drop(state);
        sh.work.notify_one();
    }
}

impl FillerHandle {
    /// Starts fetching in the background what `plan` names (once the current tree is the
    /// one the union shows: the caller says when). Replaces nothing: a second call is
    /// refused.
    pub fn hydrate(&mut self, plan: Hydrate) -> Result<()> {
        let Some(shared) = &self.shared else {
            return Err(ReplicaError::State { path: plan.tree.clone(), detail: "the fill service is stopped".into() });
        };
        let matcher = plan.matcher()?;
        {
            let mut state = shared.lock();
            if state.stats.hydrate.is_some() {
                return Err(ReplicaError::State { path: plan.tree.clone(), detail: "already hydrating".into() });
            }
            state.stats.hydrate = Some(hydrate::WAITING);
        }
        let sh = shared.clone();
        let t = thread::Builder::new()
            .name("replica-hydrate".into())
            .spawn(move || hydrate::run(&sh, &plan, matcher.as_ref()))
            .map_err(|e| ReplicaError::io("spawn thread", "cs-replica", e))?;
        self.threads.push(t);
        Ok(())
    }

    pub fn stats(&self) -> FillStats {
        let Some(shared) = &self.shared else { return FillStats::default() };
        let st = shared.lock();
        let now = Instant::now();
        let mut s = st.stats.clone();
        s.in_flight = st.inflight.len() as u64;
        let waiters = st.inflight.values().flat_map(|i| i.waiters.iter());
        s.waiting = waiters.clone().count() as u64;
        s.oldest_waiting_ms = waiters.map(|p| now.duration_since(p.since).as_millis() as u64).max().unwrap_or(0);
        s.ignore_marks = shared.ignore_ok.load(Ordering::Relaxed);
        s
    }

    /// Stops reading events, answers every pending one (EIO for those still waiting on
    /// a fill not started; fills under way finish or time out first), joins the threads
    /// (read-ahead fills included) and closes the group: the image can be unmounted when
    /// it returns. A Source call still running is waited for up to 2 s, then left to end
    /// on its own thread (its result is discarded; logged, as it may keep the image busy).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(shared) = self.shared.take() else { return };
        shared.stop.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes());
        shared.work.notify_all();
        shared.cache_wake.notify_all();
        // The reader goes last: the other threads' opens of our own files (a fill's
        // write, a read-ahead's) are events it must still answer. Gone, it would leave
        // them waiting for the group to close, which their own hold on it prevents.
        let mut threads = self.threads.drain(..);
        let reader = threads.next();
        for t in threads {
            let _ = t.join();
        }
        // The workers are gone, so no read-ahead fill starts now; the ones running see
        // `stop` within 100 ms.
        let ahead = shared.ahead.wait(AHEAD_GRACE);
        shared.reader_may_end.store(true, Ordering::SeqCst);
        let _ = rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes());
        if let Some(t) = reader {
            let _ = t.join();
        }
        // Closes the group and the image's descriptor (unless a read-ahead fill outlived
        // its grace). Only then can a Source call still writing to staging end: with the
        // event reader gone, its opens on the image wait for the group to go.
        drop(shared);
        let fetches = self.fetches.wait(FETCH_GRACE);
        if ahead + fetches > 0 {
            tracing::warn!(
                read_ahead_fills = ahead,
                source_calls = fetches,
                "replica fill service stopped with work still running: the image stays busy until it ends"
            );
        } else {
            tracing::info!("replica fill service stopped");
        }
    }
}

impl Drop for FillerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop the answers: the state stays consistent
        // enough (every change is a whole insert or remove).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers the event the kernel knows by descriptor number `fd`.
    fn answer(&self, fd: RawFd, allow: bool) {
        let r = if allow {
            libc::FAN_ALLOW
        } else if self.errno_ok.load(Ordering::Relaxed) {
            sys::fan_deny_errno(libc::EIO)
        } else {
            libc::FAN_DENY
        };
        match sys::respond(self.fan.as_fd(), fd, r) {
            Ok(()) => {}
            // No pending event has that number: a predecessor's event it answered before
            // dying (the kernel changes nothing).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                tracing::info!(fd, "no pending event with this number (answered before)")
            }
            Err(e) if !allow && e.raw_os_error() == Some(libc::EINVAL) && r != libc::FAN_DENY => {
                // A kernel before 6.14: plain deny (the reader gets EPERM).
                tracing::warn!("kernel refused FAN_DENY_ERRNO: denying with EPERM");
                self.errno_ok.store(false, Ordering::Relaxed);
                let _ = sys::respond(self.fan.as_fd(), fd, libc::FAN_DENY);
            }
            Err(e) => tracing::warn!(error = %e, "answering a fanotify event"),
        }
    }

    /// No more events for this inode while it stays in memory.
    fn ignore(&self, fd: BorrowedFd<'_>) {
        if !self.ignore_ok.load(Ordering::Relaxed) {
            return;
        }
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE_SURV | libc::FAN_MARK_EVICTABLE;
        if let Err(e) = sys::fanotify_mark(self.fan.as_fd(), flags, libc::FAN_OPEN_PERM, fd.as_raw_fd(), None) {
            tracing::warn!(error = %e, "kernel refused an evictable ignore mark: every open stays an event");
            self.ignore_ok.store(false, Ordering::Relaxed);
        }
    }

    fn journal_answered(&self, fds: &[RawFd]) {
        if let (Some(j), false) = (&self.journal, fds.is_empty()) {
            j.answered(fds);
        }
    }

    fn note_error(&self, msg: String) {
        tracing::warn!("{msg}");
        self.lock().stats.last_error = Some(msg);
    }
}

fn read_want(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; MAX_LEN];
    match rustix::fs::fgetxattr(fd, XATTR, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(Errno::NODATA) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The reading thread: answers at once whatever needs no fill, queues the rest.
fn reader(sh: &Shared, wake: BorrowedFd<'_>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let stopping = sh.stop.load(Ordering::SeqCst);
        // Stopping, the reader still answers the other threads' opens until `stop` has
        // waited for them (`reader_may_end`), then drains what is left and ends.
        let ending = stopping && sh.reader_may_end.load(Ordering::SeqCst);
        if !ending {
            let mut fds = [
                rustix::event::PollFd::new(&sh.fan, rustix::event::PollFlags::IN),
                rustix::event::PollFd::new(&wake, rustix::event::PollFlags::IN),
            ];
            // The wake stays readable once written: stopping, only the group is watched.
            let (fds, timeout) = if stopping {
                (&mut fds[..1], Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 20_000_000 }))
            } else {
                (&mut fds[..], None)
            };
            match rustix::event::poll(fds, timeout) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => {
                    sh.note_error(format!("poll on the fanotify group: {e}"));
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let n = match rustix::io::read(&sh.fan, &mut buf[..]) {
            Ok(n) => n,
            Err(Errno::AGAIN)
                if ending || (sh.stop.load(Ordering::SeqCst) && sh.reader_may_end.load(Ordering::SeqCst)) =>
            {
                // Drained: what arrives from now on the kernel allows when the group closes.
                fail_queue(sh);
                return;
            }
            Err(Errno::AGAIN | Errno::INTR) => continue,
            Err(e) => {
                sh.note_error(format!("read of the fanotify group: {e}"));
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let events = sys::parse_events(&buf[..n]);
        // Journaled before any is answered: a death from here on leaves them to the next
        // service, by number.
        if let Some(j) = &sh.journal {
            j.taken(events.iter().filter(|e| e.fd >= 0).map(|e| (e.fd, sys::handle_of(e.fd).ok())));
        }
        let mut done = Vec::new();
        for ev in events {
            if ev.fd < 0 {
                sh.note_error("fanotify queue overflow".into());
                continue;
            }
            // SAFETY: the kernel gave us this descriptor with the event.
            let fd = unsafe { OwnedFd::from_raw_fd(ev.fd) };
            done.extend(on_event(sh, ev.mask, ev.pid, fd, sh.stop.load(Ordering::SeqCst)));
        }
        // Marked answered before the numbers are freed (closed).
        sh.journal_answered(&done.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>());
        drop(done);
    }
}

/// Answers the event at once or queues it for a fill; gives back the descriptor of an
/// event answered here (to be journaled answered, then closed).
fn on_event(sh: &Shared, mask: u64, pid: i32, fd: OwnedFd, stopping: bool) -> Option<OwnedFd> {
    sh.lock().stats.events += 1;
    if mask & libc::FAN_OPEN_PERM == 0 {
        if mask & libc::FAN_CLOSE_NOWRITE != 0 && !sh.is_own(pid) {
            evict::note_use(sh, fd.as_fd());
        }
        return Some(fd);
    }
    let num = fd.as_raw_fd();
    let allow_now = |sh: &Shared| {
        sh.answer(num, true);
        sh.lock().stats.allowed_at_once += 1;
    };
    if sh.is_own(pid) {
        allow_now(sh);
        return Some(fd);
    }
    let st = match rustix::fs::fstat(&fd) {
        Ok(st) => st,
        Err(e) => {
            sh.note_error(format!("fstat of an event's file: {e}"));
            sh.answer(num, false);
            sh.lock().stats.denied += 1;
            return Some(fd);
        }
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        allow_now(sh);
        return Some(fd);
    }
    match read_want(fd.as_fd()) {
        Ok(None) => {
            // Filled (or never a placeholder). An empty file may be a new one that becomes
            // a placeholder later: no mark for it. Nor for a file being evicted: the
            // eviction removed its mark (under this lock) so that opens after it are
            // events; one put back now would let the next open read the hole it punches.
            if st.st_size > 0 {
                let state = sh.lock();
                if !state.inflight.contains_key(&(st.st_dev, st.st_ino)) {
                    sh.ignore(fd.as_fd());
                }
            }
            allow_now(sh);
            Some(fd)
        }
        Err(e) => {
            sh.note_error(format!("read user.cs.want of inode {}: {e}", st.st_ino));
            sh.answer(num, false);
            sh.lock().stats.denied += 1;
            Some(fd)
        }
        Ok(Some(_)) if stopping => {
            sh.answer(num, false);
            sh.lock().stats.denied += 1;
            Some(fd)
        }
        Ok(Some(_)) => {
            let key = (st.st_dev, st.st_ino);
            let now = Instant::now();
            let mut state = sh.lock();
            if state.inflight.get(&key).is_some_and(|i| i.written) {
                drop(state);
                allow_now(sh);
                return Some(fd);
            }
            let first = !state.inflight.contains_key(&key);
            state.inflight.entry(key).or_default().waiters.push(Pending::new(fd, now));
            if first {
                state.queue.push_back((key, now));
                drop(state);
                sh.work.notify_one();
            }
            None
        }
    }
}

/// At stop: every open not being filled is denied.
fn fail_queue(sh: &Shared) {
    let mut state = sh.lock();
    let keys: Vec<Key> = state.queue.drain(..).map(|(k, _)| k).collect();
    let mut pending = Vec::new();
    for k in keys {
        if let Some(i) = state.inflight.remove(&k) {
            pending.extend(i.waiters);
        }
    }
    state.stats.denied += pending.len() as u64;
    drop(state);
    for p in &pending {
        sh.answer(p.num, false);
    }
    sh.journal_answered(&pending.iter().map(|p| p.num).collect::<Vec<_>>());
    drop(pending);
    sh.work.notify_all();
}

fn worker(sh: &Arc<Shared>) {
    let _own = sh.own_thread();
    loop {
        let (key, since) = {
            let mut state = sh.lock();
            loop {
                if let Some(j) = state.queue.pop_front() {
                    break j;
                }
                if sh.stop.load(Ordering::SeqCst) {
                    return;
                }
                state = sh.work.wait(state).unwrap_or_else(|p| p.into_inner());
            }
        };
        fill_job(sh, key, since);
    }
}

/// One placeholder to fill in a batch.
struct Item {
    key: Key,
    rel: RelPath,
    /// Open for writing: the event's inode by handle; a read-ahead sibling by path.
    wfd: Option<OwnedFd>,
    path: Option<PathBuf>,
}

fn fill_job(sh: &Arc<Shared>, key: Key, since: Instant) {
    let deadline = since + sh.cfg.fetch_timeout;
    // The event that queued the job is the first waiter: fetch through its descriptor.
    let fd = {
        let state = sh.lock();
        let Some(i) = state.inflight.get(&key) else { return };
        match i.probe.as_ref().or_else(|| i.waiters.iter().find_map(|p| p.fd.as_ref())) {
            Some(fd) => fd.try_clone(),
            None => return,
        }
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(e) => return finish(sh, key, Err(format!("dup of an event descriptor: {e}")), FillKind::Open),
    };
    let want = match read_want(fd.as_fd()) {
        Ok(None) => return finish(sh, key, Ok(None), FillKind::Open), // filled meanwhile
        Ok(Some(b)) => match Want::decode(&b) {
            Some(w) => w,
            None => return finish(sh, key, Err(format!("inode {}: malformed user.cs.want", key.1)), FillKind::Open),
        },
        Err(e) => return finish(sh, key, Err(format!("inode {}: read user.cs.want: {e}", key.1)), FillKind::Open),
    };
    let wfd = match sys::reopen_by_handle(fd.as_fd(), sh.mount_fd.as_fd(), libc::O_WRONLY) {
        Ok(w) => w,
        Err(e) => {
            return finish(sh, key, Err(format!("{}: open by handle for writing: {e}", want.path)), FillKind::Open)
        }
    };
    drop(fd);
    let caps = sh.read_ahead_caps();
    let origin = if caps.max_files > 0 { read_ahead::Origin::of(&wfd, &want.path) } else { None };
    let batch = vec![Item { key, rel: want.path.clone(), wfd: Some(wfd), path: None }];
    // The opened file waits for itself only: the files near it come in a fetch of their
    // own, claimed and sent by another thread while this one's fetch is under way (the
    // link carries both at once), so neither the scan nor a large read-ahead batch ever
    // delays the open that asked for it.
    if let Some(origin) = origin {
        let ahead = sh.clone();
        let running = sh.ahead.enter();
        let spawned = thread::Builder::new().name("replica-ahead".into()).spawn(move || {
            {
                let _own = ahead.own_thread();
                let nearby = read_ahead::claim_nearby(&ahead, &origin, caps);
                if !nearby.is_empty() {
                    fill_batch(&ahead, nearby, deadline, FillKind::ReadAhead);
                }
            }
            // Our hold on the group and the image goes before `stop` hears we ended.
            drop(ahead);
            drop(running);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for a read-ahead fetch: the files near {} stay unfilled until opened", want.path);
        }
    }
    fill_batch(sh, batch, deadline, FillKind::Open);
}

/// One fetch for `batch`, then every open waiting on its items answered.
/// The items that failed, and whether P answered (see `fetch_and_fill`).
fn fill_batch(sh: &Shared, mut batch: Vec<Item>, deadline: Instant, kind: FillKind) -> (Vec<RelPath>, bool) {
    let (outcomes, answered) = fetch_and_fill(sh, &mut batch, deadline);
    let mut failed = Vec::new();
    for (item, outcome) in batch.into_iter().zip(outcomes) {
        if let Err(e) = &outcome {
            failed.push(item.rel.clone());
            if kind != FillKind::Open && refill_for_waiters(sh, item.key) {
                tracing::debug!(
                    "{}: a background fill failed ({e}); the opens waiting on it get one of their own",
                    item.rel
                );
                continue;
            }
        }
        finish(sh, item.key, outcome.map_err(|e| format!("fill of {} denied: {e}", item.rel)), kind);
    }
    (failed, answered)
}

/// A background fill (read-ahead, hydration) of `key` failed: the opens that joined it
/// are not denied for it but queued for a fill of their own, through their descriptor,
/// within their own timeout. It claimed the file by path, which a new tree may have
/// moved away meanwhile; the open's descriptor still reaches the inode. `false`: no
/// open waits on it (or none with a descriptor), nothing queued.
fn refill_for_waiters(sh: &Shared, key: Key) -> bool {
    let mut state = sh.lock();
    let Some(i) = state.inflight.get(&key) else { return false };
    let reachable = i.probe.is_some() || i.waiters.iter().any(|p| p.fd.is_some());
    let Some(since) = i.waiters.iter().map(|p| p.since).min() else { return false };
    if !reachable {
        return false;
    }
    state.queue.push_back((key, since));
    drop(state);
    sh.work.notify_one();
    true
}

/// Why a file is filled: an open waits for it, or in the background (a sibling read
/// ahead, the hydration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FillKind {
    Open,
    ReadAhead,
    Hydrate,
}

/// What a fill came to: `Ok(Some(bytes))` filled, `Ok(None)` nothing to fill (filled
/// meanwhile), `Err` denied.
type Outcome = Result<Option<u64>, String>;

/// Lets every open waiting on these written files through, and those that come before
/// their fills end, leaving the fills in flight. Later opens make no event at all: the
/// ignore mark goes on now, as the content is whole. (A service killed before `want` goes
/// leaves the mark with the holder's group, and readers the whole content; a machine
/// crash, which could lose the content, takes the group and its marks with it.)
fn let_through<'a>(sh: &Shared, files: impl Iterator<Item = (Key, BorrowedFd<'a>)>) {
    let mut state = sh.lock();
    let mut waiters = Vec::new();
    for (key, fd) in files {
        sh.ignore(fd);
        if let Some(i) = state.inflight.get_mut(&key) {
            waiters.append(&mut i.waiters);
            i.written = true;
        }
    }
    drop(state);
    for p in &waiters {
        sh.answer(p.num, true);
    }
    sh.journal_answered(&waiters.iter().map(|p| p.num).collect::<Vec<_>>());
}

/// Answers every open waiting on `key` and ends its fill.
fn finish(sh: &Shared, key: Key, outcome: Outcome, kind: FillKind) {
    let mut state = sh.lock();
    let waiters = state.inflight.remove(&key).map(|i| i.waiters).unwrap_or_default();
    match &outcome {
        Ok(Some(bytes)) => {
            state.stats.fills += 1;
            state.stats.bytes += bytes;
            match kind {
                FillKind::Open => {}
                FillKind::ReadAhead => state.stats.read_ahead_fills += 1,
                FillKind::Hydrate => {
                    state.stats.hydrated += 1;
                    state.stats.hydrated_bytes += bytes;
                }
            }
            // In blocks, as the keeper's pass counts them.
            state.stats.cache_bytes += bytes.div_ceil(4096) * 4096;
            if state.stats.cache_max_bytes.is_some_and(|max| state.stats.cache_bytes > max) {
                sh.cache_wake.notify_one();
            }
        }
        Ok(None) => state.stats.allowed_at_once += waiters.len() as u64,
        Err(e) => {
            state.stats.denied += waiters.len() as u64;
            // A file filled in the background that nobody opened is no reader's error:
            // left unfilled.
            if !waiters.is_empty() {
                tracing::warn!("{e}");
                state.stats.last_error = Some(e.clone());
            }
        }
    }
    drop(state);
    for p in &waiters {
        sh.answer(p.num, outcome.is_ok());
    }
    sh.journal_answered(&waiters.iter().map(|p| p.num).collect::<Vec<_>>());
    drop(waiters);
}

/// Claims the placeholder at `path` for a fill in the background (in flight, so that an
/// open of it waits for that fetch): a regular file of the replica, still wanted under
/// `expect`, whose size `fits`, not in flight already. The item, and the file's size.
fn claim_placeholder(
    sh: &Shared,
    path: PathBuf,
    expect: &RelPath,
    fits: impl FnOnce(u64) -> bool,
    buf: &mut [u8],
) -> Option<(Item, u64)> {
    let md = fs::symlink_metadata(&path).ok()?;
    if !md.is_file() || md.dev() != sh.dev || !fits(md.len()) {
        return None;
    }
    let n = rustix::fs::lgetxattr(&path, XATTR, &mut buf[..]).ok()?;
    let want = Want::decode(&buf[..n]).filter(|w| &w.path == expect)?;
    let key = (md.dev(), md.ino());
    {
        let mut state = sh.lock();
        if state.inflight.contains_key(&key) {
            return None;
        }
        state.inflight.insert(key, Inflight::default());
    }
    Some((Item { key, rel: want.path, wfd: None, path: Some(path) }, md.len()))
}

/// Removes a fetch's staging directory when the last holder drops it (the worker, or
/// the fetch thread of a fetch that timed out).
struct StagingDir(PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.0.display(), error = %e, "removing a fetch's staging directory");
            }
        }
    }
}

/// One Source call for the batch, bounded by `deadline`; then each item filled or failed;
/// and whether P answered (else every item failed for the link's or our own reason, not
/// its own).
fn fetch_and_fill(sh: &Shared, batch: &mut [Item], deadline: Instant) -> (Vec<Outcome>, bool) {
    let all = |e: String| (batch.iter().map(|_| Err(e.clone())).collect::<Vec<_>>(), false);
    let sub = sh.cfg.staging.join(format!("f{}", sh.seq.fetch_add(1, Ordering::Relaxed)));
    if let Err(e) = fs::create_dir(&sub) {
        return all(format!("create {}: {e}", sub.display()));
    }
    let staging = StagingDir(sub);
    let paths: Vec<RelPath> = batch.iter().map(|i| i.rel.clone()).collect();
    let (tx, rx) = mpsc::sync_channel(1);
    let source = sh.source.clone();
    sh.lock().stats.source_calls += 1;
    let running = sh.fetches.enter();
    let started = Instant::now();
    // The Source may never return: it runs on a thread of its own that we can leave behind.
    let spawned = thread::Builder::new().name("replica-fetch".into()).spawn(move || {
        let r = source.fetch(&paths, &staging.0);
        // If the fill gave up, the send fails and the staging directory goes here.
        let _ = tx.send((r, staging));
        drop(source);
        drop(running);
    });
    if let Err(e) = spawned {
        return all(format!("spawn a fetch thread: {e}"));
    }
    // Waited in slices so that `stop` does not wait for a fetch's whole timeout.
    let (report, staging) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok((Ok(r), s)) => break (r, s),
            Ok((Err(e), _)) => return all(format!("source: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) if left.is_zero() => {
                return all("no content within the fetch timeout".into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) if sh.stop.load(Ordering::SeqCst) => {
                return all("the fill service stopped".into())
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return all("the source panicked".into()),
        }
    };
    let fetched = Instant::now();
    let written: HashSet<&RelPath> = report.written.iter().collect();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut done = Vec::new();
    for (i, item) in batch.iter_mut().enumerate() {
        if written.contains(&item.rel) {
            match write_one(item, &staging.0.join(item.rel.as_path())) {
                Ok((fd, size)) => {
                    done.push((i, fd, size));
                    outcomes.push(Ok(None));
                }
                Err(e) => outcomes.push(Err(e)),
            }
            continue;
        }
        outcomes.push(Err(if report.missing.contains(&item.rel) {
            "P no longer has it".to_string()
        } else if let Some((_, why)) = report.refused.iter().find(|(p, _)| *p == item.rel) {
            format!("P refused it: {why}")
        } else if report.withdrawn.contains(&item.rel) {
            "it changed while P sent it".to_string()
        } else {
            "P did not send it".to_string()
        }));
    }
    let copied = Instant::now();
    // The opens waiting on what was written go ahead now, and those arriving until the
    // fill ends: the content is whole in the page cache, and making it durable costs a
    // journal commit (a `syncfs` of 20 ms and more) they need not wait for. `want` goes
    // only once it is durable (a crash before leaves the file to fill again).
    let_through(sh, done.iter().map(|(i, fd, _)| (batch[*i].key, fd.as_fd())));
    // Durable before `want` goes: one fdatasync for one file, one syncfs for a batch
    // (a journal commit per file is what a cold read of many small files would pay).
    let synced = match done.as_slice() {
        [] => Ok(()),
        [(_, fd, _)] => rustix::fs::fdatasync(fd),
        _ => rustix::fs::syncfs(&sh.mount_fd),
    };
    // Where a fill's time goes (the link and P, the copy, the disk), for an operator
    // asking why a first open was slow.
    tracing::debug!(
        files = batch.len(),
        filled = done.len(),
        bytes = done.iter().map(|(_, _, size)| size).sum::<u64>(),
        fetch_ms = ms(fetched - started),
        copy_ms = ms(copied - fetched),
        sync_ms = ms(copied.elapsed()),
        first = %batch.first().map(|i| i.rel.to_string()).unwrap_or_default(),
        "replica fetch"
    );
    for (i, fd, size) in done {
        let outcome = match synced {
            Err(e) => Err(format!("make durable: {e}")),
            Ok(()) => match rustix::fs::fremovexattr(&fd, XATTR) {
                Ok(()) | Err(Errno::NODATA) => Ok(Some(size)),
                Err(e) => Err(format!("remove user.cs.want: {e}")),
            },
        };
        // Not filled after all: its next open must be an event again, to fill it anew.
        if outcome.is_err() {
            if let Err(e) = evict::remove_ignore_mark(sh, &fd) {
                sh.note_error(format!("{}: {e}", batch[i].rel));
            }
        }
        outcomes[i] = outcome;
    }
    (outcomes, true)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Writes a staged file into the placeholder's inode: content, then P's size if it
/// differs from the snapshot's, then P's mtime. The caller makes it durable and only
/// then removes `want` (a crash before leaves it to fill again).
fn write_one(item: &mut Item, staged: &Path) -> Result<(OwnedFd, u64), String> {
    let ctx = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let wfd = match item.wfd.take() {
        Some(w) => w,
        None => {
            let path = item.path.as_ref().ok_or("no descriptor")?;
            let w = rustix::fs::open(path, OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| ctx("open placeholder", &e))?;
            let st = rustix::fs::fstat(&w).map_err(|e| ctx("fstat placeholder", &e))?;
            if (st.st_dev, st.st_ino) != item.key {
                return Err("the placeholder was replaced meanwhile".into());
            }
            w
        }
    };
    let src = fs::File::open(staged).map_err(|e| ctx("open fetched copy", &e))?;
    let md = src.metadata().map_err(|e| ctx("stat fetched copy", &e))?;
    if !md.file_type().is_file() {
        return Err("the fetched copy is not a regular file".into());
    }
    let size = md.len();
    copy(&src, &wfd, size).map_err(|e| ctx("write content", &e))?;
    let cur = rustix::fs::fstat(&wfd).map_err(|e| ctx("fstat placeholder", &e))?;
    if cur.st_size as u64 != size {
        // P's version differs from the snapshot's: the placeholder takes P's size.
        rustix::fs::ftruncate(&wfd, size).map_err(|e| ctx("truncate", &e))?;
    }
    let times = Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: md.mtime(), tv_nsec: md.mtime_nsec() },
    };
    rustix::fs::futimens(&wfd, &times).map_err(|e| ctx("set mtime", &e))?;
    Ok((wfd, size))
}

/// `copy_file_range` (in-kernel) from offset 0, falling back to read/write where the
/// kernel cannot.
fn copy(src: &fs::File, dst: &OwnedFd, size: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (0u64, 0u64);
    while off_in < size {
        let left = usize::try_from(size - off_in).unwrap_or(usize::MAX).min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), left) {
            Ok(0) => break, // shorter than it said: the truncate that follows fixes the size
            Ok(_) => {}
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if off_in == 0 => {
                return copy_rw(src, dst);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_rw(src: &fs::File, dst: &OwnedFd) -> io::Result<()> {
    let mut src = src;
    // SAFETY: borrowed for this call only; ManuallyDrop keeps `dst` open.
    let mut out = std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(dst.as_raw_fd()) });
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
    }
}
