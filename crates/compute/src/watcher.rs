//! The upper-layer watcher: filesystem events on the upper layer, debounced
//! into one "upper changed" trigger for the coordinator, so that a burst of
//! writes (a `git clone`, a build) starts one early round, not thousands.
//!
//! Events are read in batches ([`Batching`]): a reader blocked on the inotify
//! queue is woken by every event, and that wake-up is paid by whoever wrote
//! the file (the user's build, or step 4 writing the project's files).

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_protocol::{DeleteReport, RelPath};
use cs_supervision::Observable;
use notify::event::{CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;

use crate::coordinator::{Coordinator, TriggerRound};
use crate::machine::Trigger;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherState {
    pub watching: Option<String>,
    /// Events since the last round started: changes no round has scanned yet (a round's
    /// own writes into the upper layer are not counted).
    pub pending_events: u64,
    pub events_total: u64,
    pub triggers_sent: u64,
    pub last_error: Option<String>,
}

/// Upper-layer change events seen, and how many of them rounds have taken: the watcher
/// counts, the coordinator marks all seen so far as taken when a round starts (its scan
/// sees them). Shared, so that "pending" never counts what a round already took.
#[derive(Debug, Clone, Default)]
pub struct ChangeCount(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    seen: AtomicU64,
    taken: AtomicU64,
}

impl ChangeCount {
    pub fn add(&self, n: u64) {
        self.0.seen.fetch_add(n, Ordering::Relaxed);
    }

    /// A round starts: everything seen so far is its to carry.
    pub fn take(&self) {
        self.0.taken.store(self.0.seen.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn seen(&self) -> u64 {
        self.0.seen.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> u64 {
        self.seen().saturating_sub(self.0.taken.load(Ordering::Relaxed))
    }
}

/// Recognises the events of a round's own writes into the upper layer: the engine writes a
/// temporary `.csa-tmp-*` file and renames it into place, so the rename's arrival under the
/// real name (`To`, matched to its `From` by the inotify cookie) is ours too.
#[derive(Default)]
struct OwnWrites {
    /// Cookies of renames away from a temporary name, newest last (bounded).
    cookies: VecDeque<usize>,
}

impl OwnWrites {
    const KEEP: usize = 256;

    fn is_ours(&mut self, ev: &notify::Event) -> bool {
        // An event of no path (the kernel's queue overflowed: notify's `Rescan`) is nobody's
        // in particular, so it is a change.
        if ev.paths.is_empty() {
            return false;
        }
        let tmp = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".csa-tmp-"));
        match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) if ev.paths.iter().all(|p| tmp(p)) => {
                if let Some(c) = ev.attrs.tracker() {
                    if self.cookies.len() == Self::KEEP {
                        self.cookies.pop_front();
                    }
                    self.cookies.push_back(c);
                }
                true
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                match ev.attrs.tracker().and_then(|c| self.cookies.iter().position(|&k| k == c)) {
                    Some(i) => {
                        self.cookies.remove(i);
                        true
                    }
                    None => false,
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.first().is_some_and(|p| tmp(p)),
            _ => ev.paths.iter().all(|p| tmp(p)),
        }
    }
}

/// When the reading thread lets the kernel queue events instead of taking them as they come.
///
/// A process blocked reading an inotify queue is woken for every event, and the writer pays
/// for that wake-up: measured on a 2-core VM, writing 10,000 files of 4 KiB through the
/// merged view cost 33 µs a file with no reader and 71-101 µs with one that reads eagerly
/// (about 7 events a file), 36 µs with one that reads every 10 ms (docs/benchmarks.md,
/// *The upper-layer watcher's wake-ups*). So after a quiet spell the first event holds the
/// reading thread for [`Batching::HOLD`] and the burst behind it queues up (the kernel
/// coalesces nothing, but waking a reader that is not waiting costs nothing); while events
/// keep coming, the thread holds again whenever [`Batching::GAP`] has passed since its last
/// hold ended (by then it has usually worked through the queue). What this delays is only
/// when a change is *seen* (at most `HOLD`, beside the one-second debounce), never whether:
/// 10 ms of even a fast burst (~2,000 events in S1) stays far below the kernel's queue limit
/// (16,384 events), and an overflow is itself a change (`OwnWrites::is_ours`).
#[derive(Debug)]
struct Batching {
    last_hold_ended: Option<Instant>,
}

impl Batching {
    const HOLD: Duration = Duration::from_millis(10);
    const GAP: Duration = Duration::from_millis(2);

    fn new() -> Self {
        Batching { last_hold_ended: None }
    }

    /// An event is about to be handled at `now`: how long to hold first, if at all.
    fn hold_before(&self, now: Instant) -> Option<Duration> {
        match self.last_hold_ended {
            Some(t) if now.saturating_duration_since(t) < Self::GAP => None,
            _ => Some(Self::HOLD),
        }
    }

    /// The hold asked for ended at `now`.
    fn held(&mut self, now: Instant) {
        self.last_hold_ended = Some(now);
    }

    /// Holds the calling thread (notify's reader: it calls the handler on its own thread, so
    /// holding it leaves the events in the kernel's queue) if the policy says so.
    fn before_event(&mut self) {
        if let Some(hold) = self.hold_before(Instant::now()) {
            std::thread::sleep(hold);
            self.held(Instant::now());
        }
    }
}

/// Paths a round is about to remove from the upper layer (step 2: the project's deletions),
/// so that the events of those removals are not counted as a user's change. The round records
/// them just before the engine deletes; the watcher matches events against them. Bounded, and
/// every entry expires: a stale one must not hide a later change at its path for long.
/// (unionfs-fuse's bookkeeping, mirror directories and marker removals, never counts.)
#[derive(Debug, Clone, Default)]
pub struct OwnRemovals(Arc<Mutex<HashMap<PathBuf, Removal>>>);

#[derive(Debug)]
struct Removal {
    until: Instant,
    /// Its removal (or rename away) was seen: from then on only a whiteout may appear there
    /// as ours (anything else the user made drops the entry).
    gone: bool,
}

impl OwnRemovals {
    /// How long an entry matches after it was recorded, or after the engine reported it deleted.
    const TTL: Duration = Duration::from_secs(5);
    /// Beyond this many, removals count as changes (one needless round at worst).
    const MAX: usize = 20_000;

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Removal>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The round is about to remove `paths` (relative to the upper layer).
    pub fn expect<'a>(&self, paths: impl IntoIterator<Item = &'a RelPath>) {
        let now = Instant::now();
        let mut m = self.lock();
        m.retain(|_, r| r.until > now);
        for p in paths {
            if m.len() >= Self::MAX {
                break;
            }
            m.insert(p.as_path().to_path_buf(), Removal { until: now + Self::TTL, gone: false });
        }
    }

    /// The engine's report: what it kept or refused stays, so a user's removal there is a
    /// change; what it deleted matches for `TTL` from now (a long step outlives the first).
    pub fn done(&self, report: &DeleteReport) {
        let until = Instant::now() + Self::TTL;
        let mut m = self.lock();
        for p in report.kept.iter().chain(report.refused.iter().map(|(p, _)| p)) {
            m.remove(p.as_path());
        }
        for p in &report.deleted {
            if let Some(r) = m.get_mut(p.as_path()) {
                r.until = until;
            }
        }
    }

    /// Is `ev` (in the upper layer `upper`) made by a recorded removal? Every path must be.
    fn is_ours(&self, upper: &Path, ev: &notify::Event) -> bool {
        let mut m = self.lock();
        if ev.paths.is_empty() {
            return false;
        }
        let now = Instant::now();
        ev.paths.iter().all(|p| p.strip_prefix(upper).is_ok_and(|rel| Self::matches(&mut m, upper, rel, &ev.kind, now)))
    }

    fn matches(m: &mut HashMap<PathBuf, Removal>, upper: &Path, rel: &Path, kind: &EventKind, now: Instant) -> bool {
        let mut parts = rel.components();
        if parts.next().and_then(|c| c.as_os_str().to_str()).and_then(cs_union::Layout::from_meta_dir).is_some() {
            return Self::matches_marker(m, parts.as_path(), kind, now);
        }
        let whiteout = || {
            std::fs::symlink_metadata(upper.join(rel)).is_ok_and(|md| md.file_type().is_char_device() && md.rdev() == 0)
        };
        let is_dir = || std::fs::symlink_metadata(upper.join(rel)).is_ok_and(|md| md.is_dir());
        if let Some(r) = m.get_mut(rel).filter(|r| r.until > now) {
            return match kind {
                // Again after the first: overlayfs moves a directory away more than once
                // when the lower has one there too (seen over the replica). A user could only
                // remove the path again after making it again, which drops the entry (below).
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                    r.gone = true;
                    true
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => true,
                EventKind::Modify(ModifyKind::Metadata(_)) => true,
                // overlayfs hides a lower entry behind a whiteout (made aside, renamed in),
                // and copies a lower directory up to remove what is below it.
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    let ours = whiteout() || (!r.gone && is_dir());
                    if !ours {
                        // The user made something there: what happens to it next is theirs.
                        m.remove(rel);
                    }
                    ours
                }
                _ => false,
            };
        }
        // Below a removed directory: overlayfs cleans up its contents after renaming it away.
        let below_gone = rel.ancestors().skip(1).any(|a| m.get(a).is_some_and(|r| r.gone && r.until > now));
        below_gone
            && match kind {
                EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Name(RenameMode::From | RenameMode::Both))
                | EventKind::Modify(ModifyKind::Metadata(_)) => true,
                EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => whiteout(),
                _ => false,
            }
    }

    /// unionfs-fuse: an event at `rest` in the meta directory. A marker hiding a recorded path
    /// is the round's.
    fn matches_marker(m: &HashMap<PathBuf, Removal>, rest: &Path, kind: &EventKind, now: Instant) -> bool {
        let hidden = rest.file_name().and_then(|n| n.as_bytes().strip_suffix(cs_union::HIDE_SUFFIX.as_bytes()));
        let Some(hidden) = hidden else {
            // A mirror directory only holds markers, whose own events count.
            return !matches!(kind, EventKind::Modify(ModifyKind::Data(_)));
        };
        // The union removes a marker only when something is created at its path, which
        // counts on its own: a removal here is the engine's (step 1 ends its whiteouts).
        if matches!(kind, EventKind::Remove(_)) {
            return true;
        }
        matches!(kind, EventKind::Create(_) | EventKind::Modify(ModifyKind::Metadata(_)))
            && m.get(&rest.with_file_name(OsStr::from_bytes(hidden))).is_some_and(|r| r.until > now)
    }
}

/// Directories a round is about to make, or give P's mode and mtime, in the upper layer
/// (step 4: P's new directories), as the engine tells them (`ComputeSide::with_own_dirs`):
/// creation and attribute events at exactly those paths are the round's. Without this,
/// each round that brought P's new directories started another round a second later for
/// nothing. Bounded, and every entry expires: a user's `chmod` there within the TTL waits
/// for the next timer round (which scans everything), never longer.
#[derive(Debug, Clone, Default)]
pub struct OwnDirs(Arc<Mutex<HashMap<PathBuf, Instant>>>);

impl OwnDirs {
    const TTL: Duration = Duration::from_secs(5);
    /// Beyond this many (after dropping the expired), directories count as changes (one
    /// needless round at worst).
    const MAX: usize = 20_000;

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The round is about to make or set the directory `p` (relative to the upper layer).
    pub fn expect(&self, p: &RelPath) {
        let now = Instant::now();
        let mut m = self.lock();
        if m.len() >= Self::MAX {
            m.retain(|_, until| *until > now);
        }
        if m.len() < Self::MAX {
            m.insert(p.as_path().to_path_buf(), now + Self::TTL);
        }
    }

    /// The engine's hook (`ComputeSide::with_own_dirs`) recording into this set.
    pub fn hook(&self) -> cs_engine::OwnDirs {
        let own = self.clone();
        Arc::new(move |p: &RelPath| own.expect(p))
    }

    /// Is `ev` (in the upper layer `upper`) the making or setting of recorded directories?
    fn is_ours(&self, upper: &Path, ev: &notify::Event) -> bool {
        let kind_is_ours = matches!(
            ev.kind,
            EventKind::Create(CreateKind::Folder) | EventKind::Modify(ModifyKind::Metadata(_) | ModifyKind::Data(_))
        );
        if !kind_is_ours || ev.paths.is_empty() {
            return false;
        }
        let now = Instant::now();
        let m = self.lock();
        ev.paths.iter().all(|p| p.strip_prefix(upper).is_ok_and(|rel| m.get(rel).is_some_and(|until| *until > now)))
    }
}

pub struct UpperWatcher {
    upper: PathBuf,
    debounce: Duration,
    coordinator: Addr<Coordinator>,
    changes: ChangeCount,
    removals: OwnRemovals,
    dirs: OwnDirs,
    /// Shared with the thread that watches the tree again after an overflow (the walk can
    /// take a while on a large upper layer: not on the actor's thread).
    watcher: Option<Arc<Mutex<notify::RecommendedWatcher>>>,
    first_pending: Option<Instant>,
    /// A watch of the tree again is scheduled (after an overflow).
    rewatch_scheduled: bool,
    last_rewatch: Option<Instant>,
    state: WatcherState,
}

impl UpperWatcher {
    /// The directories the engine tells of (see [`OwnDirs::hook`]).
    pub fn with_own_dirs(mut self, dirs: OwnDirs) -> Self {
        self.dirs = dirs;
        self
    }

    /// `changes` and `removals` are shared with the coordinator (`Coordinator::with_change_count`,
    /// `Coordinator::with_own_removals`).
    pub fn new(
        upper: PathBuf,
        debounce: Duration,
        coordinator: Addr<Coordinator>,
        changes: ChangeCount,
        removals: OwnRemovals,
    ) -> Self {
        UpperWatcher {
            upper,
            debounce,
            coordinator,
            changes,
            removals,
            dirs: OwnDirs::default(),
            watcher: None,
            first_pending: None,
            rewatch_scheduled: false,
            last_rewatch: None,
            state: WatcherState::default(),
        }
    }
}

/// One or more raw events arrived.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(usize);

/// The kernel's event queue overflowed (notify's `Rescan`): events were lost, and among them
/// maybe the creation of directories, which notify starts watching only as it sees them
/// made. Changes in such a directory would wait for the timer round, until a restart; so
/// the tree is watched again (notify walks it and adds what it lacks).
#[derive(Message)]
#[rtype(result = "()")]
struct Rewatch;

impl UpperWatcher {
    /// At most one walk of the tree per this long, however often the queue overflows in a
    /// long burst (the last overflow's walk comes after the burst).
    const REWATCH_EVERY: Duration = Duration::from_secs(5);

    fn rewatch(&mut self) {
        self.rewatch_scheduled = false;
        self.last_rewatch = Some(Instant::now());
        let Some(w) = self.watcher.clone() else { return };
        let upper = self.upper.clone();
        let spawned = std::thread::Builder::new().name("upper-rewatch".into()).spawn(move || {
            let t = Instant::now();
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            match w.watch(&upper, RecursiveMode::Recursive) {
                Ok(()) => tracing::info!(
                    secs = t.elapsed().as_secs_f64(),
                    "upper-layer events were lost (queue overflow): the tree is watched again"
                ),
                Err(e) => tracing::warn!(error = %e, "watching the upper layer again after a queue overflow"),
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "starting the upper layer's watch again");
        }
    }
}

impl Handler<Rewatch> for UpperWatcher {
    type Result = ();
    fn handle(&mut self, _: Rewatch, ctx: &mut Self::Context) {
        if self.rewatch_scheduled {
            return;
        }
        self.rewatch_scheduled = true;
        let wait = self.last_rewatch.map_or(Duration::ZERO, |t| Self::REWATCH_EVERY.saturating_sub(t.elapsed()));
        ctx.run_later(wait, |act, _| act.rewatch());
    }
}

impl Actor for UpperWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let addr = ctx.address();
        let mut own = OwnWrites::default();
        let removals = self.removals.clone();
        let dirs = self.dirs.clone();
        let upper = self.upper.clone();
        let mut batching = Batching::new();
        let handler = move |res: notify::Result<notify::Event>| {
            batching.before_event();
            if let Ok(ev) = res {
                if ev.need_rescan() {
                    // try_send: one already queued is enough.
                    let _ = addr.try_send(Rewatch);
                }
                // Opens and reads are not changes; the round's own scan
                // opens every directory, which would start the next round.
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                // A round's own writes (temporary files, renamed into place) and removals are
                // not changes to carry: counting them would start a round for nothing.
                if !own.is_ours(&ev) && !removals.is_ours(&upper, &ev) && !dirs.is_ours(&upper, &ev) {
                    tracing::debug!(kind = ?ev.kind, paths = ?ev.paths, "upper-layer change");
                    // try_send: a full mailbox already means "changed".
                    let _ = addr.try_send(Changed(1));
                }
            }
        };
        match notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&self.upper, RecursiveMode::Recursive)?;
            Ok(w)
        }) {
            Ok(w) => {
                self.watcher = Some(Arc::new(Mutex::new(w)));
                self.state.watching = Some(self.upper.display().to_string());
            }
            Err(e) => {
                // Rounds still run on the timer; say why they are not early.
                self.state.last_error = Some(format!("cannot watch {}: {e}", self.upper.display()));
                tracing::warn!(error = %e, upper = %self.upper.display(), "upper-layer watcher off; timer rounds only");
            }
        }
    }
}

impl Handler<Changed> for UpperWatcher {
    type Result = ();
    fn handle(&mut self, m: Changed, ctx: &mut Self::Context) {
        self.changes.add(m.0 as u64);
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
            ctx.run_later(self.debounce, |act, _| {
                act.first_pending = None;
                // `try_send`: a trigger coalesces. If the coordinator's
                // mailbox is full, a trigger is already queued or a round
                // is about to run and will see these changes (and the
                // periodic round catches anything else): dropping is right,
                // waiting would only pile up triggers.
                match act.coordinator.try_send(TriggerRound(Trigger::UpperChanged)) {
                    Ok(()) => act.state.triggers_sent += 1,
                    Err(e) => tracing::debug!("round trigger dropped (coalesced): {e}"),
                }
            });
        }
    }
}

impl Observable for UpperWatcher {
    type State = WatcherState;
    fn observe(&self) -> WatcherState {
        WatcherState { pending_events: self.changes.pending(), events_total: self.changes.seen(), ..self.state.clone() }
    }
}
cs_supervision::observable!(UpperWatcher);

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, EventAttributes, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str], cookie: Option<usize>) -> notify::Event {
        let mut e =
            notify::Event { kind, paths: paths.iter().map(PathBuf::from).collect(), attrs: EventAttributes::new() };
        if let Some(c) = cookie {
            e = e.set_tracker(c);
        }
        e
    }

    #[test]
    fn a_rounds_rename_into_place_is_its_own_but_a_users_rename_is_not() {
        let mut own = OwnWrites::default();
        let rename = |m| EventKind::Modify(ModifyKind::Name(m));
        assert!(own.is_ours(&ev(EventKind::Create(CreateKind::File), &["/u/d/.csa-tmp-gpu-1-7-0"], None)));
        assert!(own.is_ours(&ev(rename(RenameMode::From), &["/u/d/.csa-tmp-gpu-1-7-0"], Some(9))));
        assert!(own.is_ours(&ev(rename(RenameMode::To), &["/u/d/out.txt"], Some(9))));
        assert!(own.is_ours(&ev(rename(RenameMode::Both), &["/u/d/.csa-tmp-gpu-1-7-0", "/u/d/out.txt"], Some(9))));
        // The user's own rename, and a write to the same name afterwards, are changes.
        assert!(!own.is_ours(&ev(rename(RenameMode::From), &["/u/d/a"], Some(10))));
        assert!(!own.is_ours(&ev(rename(RenameMode::To), &["/u/d/b"], Some(10))));
        assert!(!own.is_ours(&ev(rename(RenameMode::To), &["/u/d/out.txt"], Some(9))), "a cookie matches once");
        assert!(!own.is_ours(&ev(EventKind::Create(CreateKind::File), &["/u/d/out.txt"], None)));
        // The kernel's queue overflowed (notify: `Other`, no path, `Rescan`): a change.
        let overflow = ev(EventKind::Other, &[], None).set_flag(notify::event::Flag::Rescan);
        assert!(!own.is_ours(&overflow));
    }

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_rounds_removals_are_its_own_but_a_users_removal_is_not() {
        let upper = tempfile::tempdir().unwrap();
        let u = upper.path();
        let at = |p: &str| u.join(p).display().to_string();
        let is_ours = |own: &OwnRemovals, kind, p: &str| own.is_ours(u, &ev(kind, &[&at(p)], None));
        let (file, dir) = (EventKind::Remove(RemoveKind::File), EventKind::Remove(RemoveKind::Folder));
        let own = OwnRemovals::default();
        let gone = [rp("d/a.txt"), rp("d"), rp("lower-only.txt"), rp("kept.txt")];
        own.expect(&gone);
        assert!(is_ours(&own, file, "d/a.txt"));
        assert!(is_ours(&own, dir, "d"));
        own.done(&DeleteReport { deleted: gone[..3].to_vec(), kept: vec![rp("kept.txt")], ..Default::default() });
        // unionfs-fuse hides what only the lower has behind a marker, in mirror directories.
        assert!(is_ours(&own, EventKind::Create(CreateKind::Folder), ".unionfs-fuse"));
        assert!(is_ours(&own, EventKind::Create(CreateKind::File), ".unionfs-fuse/lower-only.txt_HIDDEN~"));
        // overlayfs copies a lower directory up before removing what is below it.
        std::fs::create_dir(u.join("e")).unwrap();
        own.expect(&[rp("e")]);
        assert!(is_ours(&own, EventKind::Modify(ModifyKind::Name(RenameMode::To)), "e"));
        assert!(is_ours(&own, EventKind::Modify(ModifyKind::Name(RenameMode::From)), "e"));
        assert!(is_ours(&own, file, "e/.wh-cleanup"), "below a directory renamed away");

        // A user's removal of another path, or of one the engine kept, and a marker of theirs.
        assert!(!is_ours(&own, file, "f/mine.txt"));
        assert!(!is_ours(&own, file, "kept.txt"));
        assert!(!is_ours(&own, EventKind::Create(CreateKind::File), ".unionfs-fuse/mine.txt_HIDDEN~"));
        // A path the round removed, made again and removed again by the user.
        std::fs::write(u.join("lower-only.txt"), "new").unwrap();
        assert!(!is_ours(&own, EventKind::Create(CreateKind::File), "lower-only.txt"));
        assert!(!is_ours(&own, file, "lower-only.txt"));
        assert!(is_ours(&own, dir, "d"), "overlayfs moves a directory away again");
        assert!(!is_ours(&own, EventKind::Modify(ModifyKind::Data(DataChange::Any)), "e"));
        // An expired entry hides nothing.
        own.expect(&[rp("late.txt")]);
        own.lock().values_mut().for_each(|r| r.until = Instant::now());
        assert!(!is_ours(&own, file, "late.txt"));
        assert!(!is_ours(&own, EventKind::Create(CreateKind::File), ".unionfs-fuse/late.txt_HIDDEN~"));
        assert!(!is_ours(&own, file, "e/x"));
    }

    #[test]
    fn a_markers_removal_is_not_a_change_but_a_new_marker_is() {
        let u = Path::new("/u");
        let own = OwnRemovals::default();
        let at = |kind, p: &str| own.is_ours(u, &ev(kind, &[&format!("/u/{p}")], None));
        assert!(at(EventKind::Remove(RemoveKind::File), ".unionfs-fuse/d/a.txt_HIDDEN~"));
        assert!(at(EventKind::Remove(RemoveKind::Folder), ".unionfs/d_HIDDEN~"));
        assert!(at(EventKind::Remove(RemoveKind::Folder), ".unionfs-fuse/d"));
        // A user's deletion of a lower entry writes one.
        assert!(!at(EventKind::Create(CreateKind::File), ".unionfs-fuse/d/a.txt_HIDDEN~"));
        assert!(!at(EventKind::Create(CreateKind::Folder), ".unionfs-fuse/d_HIDDEN~"));
        // Not the meta directory.
        assert!(!at(EventKind::Remove(RemoveKind::File), "a.txt_HIDDEN~"));
        assert!(!at(EventKind::Remove(RemoveKind::File), "d/.unionfs-fuse/a_HIDDEN~"));
    }

    #[test]
    fn the_making_of_a_rounds_directories_is_its_own_but_what_a_user_does_in_them_is_not() {
        let u = Path::new("/u");
        let dirs = OwnDirs::default();
        (dirs.hook())(&rp("s1/d000"));
        let at = |kind, p: &str| dirs.is_ours(u, &ev(kind, &[&format!("/u/{p}")], None));
        assert!(at(EventKind::Create(CreateKind::Folder), "s1/d000"));
        assert!(at(EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)), "s1/d000"));
        assert!(at(EventKind::Modify(ModifyKind::Data(DataChange::Any)), "s1/d000"));
        // Not another directory, not what a user makes inside, not a removal or a rename.
        assert!(!at(EventKind::Create(CreateKind::Folder), "s1/d001"));
        assert!(!at(EventKind::Create(CreateKind::Folder), "s1"));
        assert!(!at(EventKind::Create(CreateKind::File), "s1/d000/mine.txt"));
        assert!(!at(EventKind::Remove(RemoveKind::Folder), "s1/d000"));
        assert!(!at(EventKind::Modify(ModifyKind::Name(RenameMode::From)), "s1/d000"));
        // An expired entry hides nothing.
        dirs.lock().values_mut().for_each(|until| *until = Instant::now());
        assert!(!at(EventKind::Create(CreateKind::Folder), "s1/d000"));
    }

    #[test]
    fn the_reader_holds_after_a_quiet_spell_and_again_once_it_has_caught_up() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut b = Batching::new();
        // The first event ever, and the first after a quiet spell, wait for the burst.
        assert_eq!(b.hold_before(t0), Some(Batching::HOLD));
        b.held(ms(10));
        // The queue that built up meanwhile is taken without holding...
        assert_eq!(b.hold_before(ms(10)), None);
        assert_eq!(b.hold_before(ms(11)), None);
        // ...and an event once GAP has passed since the hold ended holds again (by then
        // the queue has usually been taken), so a steady burst is read in batches, not
        // event by event.
        assert_eq!(b.hold_before(ms(12)), Some(Batching::HOLD));
        b.held(ms(22));
        assert_eq!(b.hold_before(ms(5_000)), Some(Batching::HOLD));
    }

    #[test]
    fn pending_counts_only_what_no_round_has_taken() {
        let c = ChangeCount::default();
        c.add(8);
        assert_eq!(c.pending(), 8);
        c.take();
        assert_eq!((c.pending(), c.seen()), (0, 8));
        c.add(2);
        assert_eq!(c.pending(), 2);
    }
}
