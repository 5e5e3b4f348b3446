//! The project's half of a round: it owns the home directory, the change
//! journal and one index per client, and answers each step: steps 1 and 2
//! in [`deletes`], step 3 in [`apply`], step 4 in [`pack`], step 5 here;
//! beside the round, fetches in [`fetch`], snapshots in [`snapshot`] and
//! the follow check (has a client news between its rounds?) in [`follow`].

mod apply;
mod deletes;
mod fetch;
mod follow;
mod ignore;
mod journal;
mod pack;
mod snapshot;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cs_protocol::{ClientId, CommitRequest, Cursor, Hello, HelloReply, PullPolicy, RelPath, PROTOCOL_VERSION};
use cs_safe_fs::{FsError, SafeRoot};
use cs_tarstream::Limits;
use serde::{Deserialize, Serialize};

pub use fetch::MAX_FETCH_ENTRIES;
pub use follow::FollowNews;
pub use ignore::IgnoreStatus;
pub use journal::{Journal, JournalEntry, JOURNAL_VERSION};
pub use snapshot::MAX_SNAPSHOT_REFUSED;

use crate::busy::{BusyFile, BusyOutcome, BusyPolicy, BusyTable};
use crate::sig::{held_digest, Sig};
use crate::{state, EngineError, PathFilter};

/// Settings of the project side.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    /// The home directory: the source of truth.
    pub home: PathBuf,
    /// Journal and per-client indexes. Keep it outside the home (or under
    /// the excluded `.cs-actor/`).
    pub state_dir: PathBuf,
    /// P uses the same filter as its clients: what is local-only or
    /// excluded there is never journalled, written or deleted here.
    pub filter: PathFilter,
    pub zstd_level: i32,
    pub limits: Limits,
    /// Between full rescans of the home, a hello looks only where inotify
    /// saw changes (see `watch`); a full rescan at least this often catches
    /// what inotify cannot see (mmap writes, a home that is itself a network
    /// filesystem).
    pub full_rescan_every: Duration,
    /// The home's owner: every entry step 3 creates (files, directories,
    /// symlinks, conflict copies, missing parents) is given to it, so that
    /// a broker running as root never leaves root's files in a user's home.
    /// `None`: the process's own ids.
    pub owner: Option<cs_safe_fs::Owner>,
    /// Files that keep changing: when to send a snapshot (see `busy`).
    pub busy: BusyPolicy,
}

/// Default of [`ProjectConfig::full_rescan_every`].
pub const DEFAULT_FULL_RESCAN_EVERY: Duration = Duration::from_secs(300);

impl ProjectConfig {
    pub fn new(home: PathBuf, state_dir: PathBuf) -> Self {
        ProjectConfig {
            home,
            state_dir,
            filter: PathFilter::default(),
            zstd_level: crate::DEFAULT_ZSTD_LEVEL,
            limits: Limits::default(),
            full_rescan_every: DEFAULT_FULL_RESCAN_EVERY,
            owner: None,
            busy: BusyPolicy::default(),
        }
    }
}

const CLIENT_STATE_VERSION: u32 = 1;

/// What P remembers of one client between rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClientState {
    pub version: u32,
    /// Mirror of the client's manifest: the paths it holds in its upper layer.
    pub held: BTreeSet<RelPath>,
    /// Paths whose current P version the client has not applied (it had
    /// changed them meanwhile): their incoming versions meet the conflict rule.
    pub unseen: BTreeSet<RelPath>,
    /// The mirror is known to be off: ask for the full list next round.
    pub needs_full_list: bool,
    pub last_cursor: Option<Cursor>,
    /// Id of the last round committed for this client.
    pub last_round_id: Option<u64>,
    pub rounds: u64,
}

/// The project side. Shared by every client's session (`&self` methods):
/// each client's round state lives in its own [`ProjectRound`]; what is
/// shared (the journal, the client table) is locked only for an instant, and
/// `apply_lock` serialises single file operations (check, then rename or
/// remove), so one client's slow stream never holds up another's round for
/// longer than one file operation.
pub struct ProjectSide {
    cfg: ProjectConfig,
    home: SafeRoot,
    journal: Mutex<JournalState>,
    clients: Mutex<HashMap<ClientId, ClientState>>,
    apply_lock: Mutex<()>,
    tmp_seq: AtomicU64,
    /// The home's changes since the last hello (see `watch`). Held from
    /// the drain of the events to the journal's merge: one refresh at a time,
    /// so that a hello never sees a journal that misses what another hello
    /// drained.
    watch: Mutex<Watch>,
    /// Each client's busy files of step 4 (in memory, see `busy`).
    busy: Mutex<HashMap<ClientId, BusyTable>>,
    /// The `.csignore` rules in force (see `ignore`).
    ignore: Mutex<ignore::IgnoreState>,
    /// The oldest snapshot cursor handed to each client since its last
    /// commit (see `snapshot`): tombstones after it are kept, since the
    /// client's first round from that cursor names them. In memory only.
    snapshot_pins: Mutex<HashMap<ClientId, Cursor>>,
}

struct Watch {
    home: Option<watch::HomeWatch>,
    /// When the last full rescan merged; `None`: the next refresh is one
    /// (at start, and after any failed refresh, whose events are lost).
    last_full: Option<Instant>,
}

struct JournalState {
    journal: Journal,
    saved_seq: Option<u64>,
    /// The filter of the journal's last refresh: a path it does not sync
    /// may be a tombstone only because it became ignored, so no round
    /// deletes it on the strength of the journal, whatever its own rules.
    filter: Arc<PathFilter>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the broker: the data is still
    // consistent (every critical section is a few field updates).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client's round in flight on P. Dropping it abandons the round.
pub struct ProjectRound {
    client: ClientId,
    /// The configured filter with the `.csignore` rules read at this
    /// round's hello (and sent to the client): the round's steps go by it.
    filter: Arc<PathFilter>,
    /// The client's cursor, if it belongs to this journal. `None` means the
    /// client's view of P is unknown: every P entry counts as changed.
    base: Option<u64>,
    /// What the client's committed manifest holds (P's index, or the list
    /// the client sent when they differed).
    index_base: BTreeSet<RelPath>,
    /// What the client holds as the round progresses.
    held: BTreeSet<RelPath>,
    /// The client's held changes since its last commit (from its hello).
    held_added: Vec<RelPath>,
    held_removed: Vec<RelPath>,
    /// Paths the client still hides behind whiteouts of deletions P
    /// confirmed (from its hello): what P has there, it has not seen.
    hidden: Vec<RelPath>,
    /// What steps 2 and 4 send beyond what the client holds (its hello).
    pull: PullPolicy,
    unseen: BTreeSet<RelPath>,
    /// Paths sent in step 4.
    sent: BTreeSet<RelPath>,
    new_cursor: Option<Cursor>,
    /// Step 4's busy files: deferred or sent as a snapshot.
    busy: BTreeMap<RelPath, BusyOutcome>,
}

impl ProjectRound {
    /// Is `p` at or below a path the client hides behind a whiteout?
    fn is_hidden(&self, p: &RelPath) -> bool {
        self.hidden.iter().any(|h| p.starts_with(h))
    }

    /// What the client holds at the start of the round: the index of its
    /// committed manifest, adjusted by what it reported in its hello.
    fn rebuild_held(&mut self) {
        self.held = self.index_base.clone();
        for p in &self.held_removed {
            self.held.remove(p);
        }
        self.held.extend(self.held_added.iter().cloned());
    }
}

/// What step 3 did on P.
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    pub applied: usize,
    /// Already identical on P: nothing written (retries land here).
    pub unchanged: usize,
    pub bytes: u64,
    /// Conflict copies created: P's version stayed, the incoming one is here.
    pub conflicts: Vec<RelPath>,
    pub refused: Vec<(RelPath, String)>,
    /// Entries the client withdrew from its stream (they changed while it
    /// packed them): discarded; the client sends them in a later round.
    pub withdrawn: Vec<RelPath>,
}

impl ProjectSide {
    pub fn open(cfg: ProjectConfig) -> Result<Self, EngineError> {
        state::ensure_dir(&cfg.state_dir)?;
        state::ensure_dir(&cfg.state_dir.join("clients"))?;
        let home = SafeRoot::open(&cfg.home)?.with_owner(cfg.owner);
        crate::sweep_stale_temps(&cfg.home, &cfg.home);
        let path = cfg.state_dir.join("journal.msgpack");
        let (journal, saved) = match state::load::<Journal>(&path)? {
            Some(j) if j.version == JOURNAL_VERSION => {
                let s = j.seq;
                (j, Some(s))
            }
            Some(j) => {
                return Err(EngineError::CorruptState {
                    path,
                    reason: format!("journal version {} is not {JOURNAL_VERSION}", j.version),
                })
            }
            None => (Journal::new(), None),
        };
        let filter = Arc::new(cfg.filter.clone());
        Ok(ProjectSide {
            cfg,
            home,
            journal: Mutex::new(JournalState { journal, saved_seq: saved, filter }),
            clients: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            watch: Mutex::new(Watch { home: watch::HomeWatch::new(), last_full: None }),
            busy: Mutex::new(HashMap::new()),
            ignore: Mutex::new(ignore::IgnoreState::default()),
            snapshot_pins: Mutex::new(HashMap::new()),
        })
        .inspect(|p| {
            let st = p.initial_ignore();
            if let Some(f) = &st.in_force {
                lock(&p.journal).filter = f.clone();
            }
            *lock(&p.ignore) = st;
            // Watch now, so that directory moves before the first hello
            // count; that hello rescans in full anyway.
            let filter = p.journal_filter();
            let mut w = lock(&p.watch);
            if let Some(hw) = w.home.as_mut() {
                let _ = Journal::scan(&p.cfg.home, &filter, &mut |d| hw.watch(&p.cfg.home, d));
            }
        })
    }

    pub fn config(&self) -> &ProjectConfig {
        &self.cfg
    }

    /// The filter of the journal's last refresh (see [`JournalState::filter`]).
    fn journal_filter(&self) -> Arc<PathFilter> {
        lock(&self.journal).filter.clone()
    }

    /// P's current journal position (what a round starting now would see).
    pub fn journal_cursor(&self) -> Cursor {
        lock(&self.journal).journal.cursor()
    }

    /// Live entries and tombstones in the journal (status, tests).
    pub fn journal_size(&self) -> (usize, usize) {
        let j = lock(&self.journal);
        let live = j.journal.entries.values().filter(|e| e.sig.is_some()).count();
        (live, j.journal.entries.len() - live)
    }

    /// Drops the tombstones every client has seen. A deletion at or before
    /// the oldest committed cursor of this journal is known to every client
    /// that has one; a client without one (new, or of an older journal)
    /// counts every path as changed whatever the journal says, and step 2
    /// asks only whether a held path is live. Without this, every deleted
    /// name (editors' and builds' temporary files) stayed in memory and in
    /// journal.msgpack for the life of the project. A client that never
    /// comes back keeps the tombstones since its last round: removing its
    /// file under `clients/` releases them.
    fn prune_tombstones(&self) -> Result<usize, EngineError> {
        let dir = self.cfg.state_dir.join("clients");
        let epoch = lock(&self.journal).journal.epoch;
        let mut oldest: Option<u64> = None;
        let rd = std::fs::read_dir(&dir).map_err(|e| EngineError::io("list directory", &dir, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| EngineError::io("list directory", &dir, e))?;
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".msgpack")) else { continue };
            let Ok(id) = ClientId::new(id) else { continue };
            if let Some(c) = self.client_state(&id)?.last_cursor.filter(|c| c.epoch == epoch) {
                oldest = Some(oldest.map_or(c.seq, |o| o.min(c.seq)));
            }
        }
        let Some(mut oldest) = oldest else { return Ok(0) };
        for c in lock(&self.snapshot_pins).values().filter(|c| c.epoch == epoch) {
            oldest = oldest.min(c.seq);
        }
        let mut j = lock(&self.journal);
        let before = j.journal.entries.len();
        j.journal.entries.retain(|_, e| e.sig.is_some() || e.seq > oldest);
        Ok(before - j.journal.entries.len())
    }

    fn client_path(&self, c: &ClientId) -> PathBuf {
        self.cfg.state_dir.join("clients").join(format!("{c}.msgpack"))
    }

    /// The client's committed state, loaded on first use.
    pub fn client_state(&self, c: &ClientId) -> Result<ClientState, EngineError> {
        if let Some(st) = lock(&self.clients).get(c) {
            return Ok(st.clone());
        }
        let st = state::load::<ClientState>(&self.client_path(c))?
            .unwrap_or(ClientState { version: CLIENT_STATE_VERSION, ..Default::default() });
        lock(&self.clients).insert(c.clone(), st.clone());
        Ok(st)
    }

    /// Did this client's round `round_id` commit here? Asked by a client
    /// that died between P's commit and its own.
    pub fn was_committed(&self, c: &ClientId, round_id: u64) -> Result<bool, EngineError> {
        Ok(self.client_state(c)?.last_round_id == Some(round_id))
    }

    /// Opens a round: brings the journal up to date with the home and checks
    /// the client's index against its digest.
    pub fn begin_round(&self, hello: &Hello) -> Result<(ProjectRound, HelloReply), EngineError> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(EngineError::Protocol(format!(
                "client {} speaks protocol {}, this broker {PROTOCOL_VERSION}",
                hello.client, hello.protocol
            )));
        }
        let filter = self.refresh_journal()?;
        let base = lock(&self.journal).journal.position(hello.cursor);
        let st = self.client_state(&hello.client)?;
        let need_held_list = st.needs_full_list || held_digest(st.held.iter()) != hello.held_digest;
        let reply = HelloReply {
            need_held_list,
            cursor_unknown: hello.cursor.is_some() && base.is_none(),
            ignore_rules: filter.ignore_rules().text().to_owned(),
            ignore_error: self.ignore_error(),
            // The broker's sessions serve fetches and say so; the engine alone does not.
            fetch: false,
            snapshot: false,
            follow: false,
        };
        let mut round = ProjectRound {
            client: hello.client.clone(),
            filter,
            base,
            index_base: st.held.clone(),
            held: BTreeSet::new(),
            held_added: hello.held_added.clone(),
            held_removed: hello.held_removed.clone(),
            hidden: hello.hidden.clone(),
            pull: hello.pull,
            unseen: st.unseen,
            sent: BTreeSet::new(),
            new_cursor: None,
            busy: BTreeMap::new(),
        };
        round.rebuild_held();
        Ok((round, reply))
    }

    /// Saves the journal if it changed since it was last saved.
    fn persist_journal(&self) -> Result<(), EngineError> {
        let mut j = lock(&self.journal);
        if j.saved_seq != Some(j.journal.seq) {
            state::save(&self.cfg.state_dir.join("journal.msgpack"), &j.journal)?;
            j.saved_seq = Some(j.journal.seq);
        }
        Ok(())
    }

    /// Brings the journal up to date with the home: where inotify saw
    /// changes, or everywhere when its events are incomplete or a full
    /// rescan is due. The walk holds the watch, not the journal: other
    /// clients' applies go on meanwhile. Returns the filter it went by, with
    /// the `.csignore` rules read now; rules that changed make it a full
    /// rescan.
    fn refresh_journal(&self) -> Result<Arc<PathFilter>, EngineError> {
        let mut w = lock(&self.watch);
        let w = &mut *w;
        let home = &self.cfg.home;
        let (filter, rules_changed) = self.reload_ignore()?;
        let started = w.last_full.take().filter(|_| !rules_changed);
        // What rounds record while the scan runs is newer than the scan.
        let began = lock(&self.journal).journal.seq;
        let Some(hw) = w.home.as_mut() else {
            let seen = Journal::scan(home, &filter, &mut |_| {})?;
            let mut j = lock(&self.journal);
            j.journal.merge(seen, began);
            j.filter = filter.clone();
            return Ok(filter);
        };
        let mut changes = hw.drain();
        let full =
            started.is_none_or(|t| t.elapsed() >= self.cfg.full_rescan_every) || changes.overflow || !hw.complete();
        if changes.overflow {
            tracing::info!("inotify queue overflowed: rescanning the whole home");
        }
        if full {
            let queued = hw.reset();
            changes.moved.extend(queued.moved);
            let seen = Journal::scan(home, &filter, &mut |d| hw.watch(home, d))?;
            let mut j = lock(&self.journal);
            j.journal.merge(seen, began);
            j.filter = filter.clone();
            // After the merge, which leaves alone what was recorded since
            // the scan began (these records included).
            for dir in &changes.moved {
                j.journal.touch_tree(dir);
            }
            w.last_full = Some(Instant::now());
        } else {
            let part =
                Journal::scan_partial(home, &filter, &changes.dirty, &changes.appeared, &mut |d| hw.watch(home, d))?;
            let mut j = lock(&self.journal);
            j.journal.merge_partial(part, began);
            for dir in &changes.moved {
                j.journal.touch_tree(dir);
            }
            if std::env::var_os("CS_JOURNAL_CHECK").is_some() {
                check_against_full_scan(&j.journal, home, &filter)?;
            }
            w.last_full = started;
        }
        Ok(filter)
    }

    /// The client's full held list, when [`HelloReply::need_held_list`].
    pub fn set_held_list(&self, r: &mut ProjectRound, paths: Vec<RelPath>) {
        r.index_base = paths.into_iter().collect();
        r.rebuild_held();
    }

    /// Did P's copy of `p` change since the client's cursor, by anyone but
    /// this client? `actual` is what is on disk now: a change the journal has
    /// not recorded yet counts too.
    fn changed_by_others(&self, r: &ProjectRound, p: &RelPath, actual: Option<Sig>) -> bool {
        if r.unseen.contains(p) {
            return true;
        }
        let j = lock(&self.journal);
        let entry = j.journal.get(p);
        // The client's own write, still in place: never someone else's
        // change, below a path it hides or not (a retried round's step 3
        // finds what the cut round's step 3 wrote).
        if entry.is_some_and(|e| e.sig == actual && e.author.as_ref() == Some(&r.client)) {
            return false;
        }
        // At a path the client hides behind a whiteout in its grace (or hid
        // until its user made a file there), never held by it: made on P
        // after the deletion and never shown to the client, whatever its
        // cursor says. Its deletes and writes meet it as a change.
        if actual.is_some() && !r.index_base.contains(p) && r.is_hidden(p) {
            return true;
        }
        match entry {
            None => actual.is_some(),
            Some(e) if e.sig != actual => true,
            // The client's own write, still in place.
            Some(e) if e.author.as_ref() == Some(&r.client) => false,
            // Without a cursor, anything else may be unseen by the client.
            Some(e) => r.base.is_none_or(|base| e.seq > base),
        }
    }

    fn lstat_sig(&self, p: &RelPath) -> Result<Option<Sig>, FsError> {
        Ok(self.home.lstat(p)?.and_then(|s| Sig::of(&s)))
    }

    /// Records `p` as changed by P itself (no client): every client's
    /// step 4 considers it.
    fn record_for_all(&self, p: &RelPath) -> Result<(), EngineError> {
        let sig = self.lstat_sig(p)?;
        lock(&self.journal).journal.record(p, sig, None);
        Ok(())
    }

    fn record(&self, r: &ProjectRound, p: &RelPath) -> Result<(), EngineError> {
        let sig = self.lstat_sig(p)?;
        lock(&self.journal).journal.record(p, sig, Some(&r.client));
        Ok(())
    }

    /// The client's busy files of step 4, as of its last committed round
    /// (status).
    pub fn busy_files(&self, client: &ClientId) -> Vec<BusyFile> {
        lock(&self.busy).get(client).map(BusyTable::files).unwrap_or_default()
    }

    /// Step 5: makes the round count on P. The journal is persisted before
    /// the cursor is handed out, so no sequence number is ever issued twice.
    pub fn commit(&self, r: ProjectRound, req: &CommitRequest) -> Result<Cursor, EngineError> {
        let cursor = r.new_cursor.ok_or_else(|| EngineError::Protocol("commit before step 4".into()))?;
        let mut held = r.index_base;
        for p in &req.held.removed {
            held.remove(p);
        }
        held.extend(req.held.added.iter().cloned());
        let needs_full_list = held_digest(held.iter()) != req.held.digest;
        if needs_full_list {
            tracing::warn!(client = %r.client, "held index does not match the client's digest; asking for the full list next round");
        }
        let mut unseen: BTreeSet<RelPath> = r.unseen.difference(&r.sent).cloned().collect();
        unseen.extend(req.not_applied.iter().cloned());
        let prev = self.client_state(&r.client)?;
        let st = ClientState {
            version: CLIENT_STATE_VERSION,
            held,
            unseen,
            needs_full_list,
            last_cursor: Some(cursor),
            last_round_id: Some(req.round_id),
            rounds: prev.rounds + 1,
        };
        self.persist_journal()?;
        // Always saved: the round id is what a crashed client asks about.
        state::save(&self.client_path(&r.client), &st)?;
        let mut busy = lock(&self.busy);
        let table = busy.entry(r.client.clone()).or_default();
        table.commit(&r.busy);
        if table.is_empty() {
            busy.remove(&r.client);
        }
        drop(busy);
        // Its committed cursor now stands for it (a later snapshot pins again).
        lock(&self.snapshot_pins).remove(&r.client);
        lock(&self.clients).insert(r.client, st);
        // Housekeeping: a failure here costs memory, not correctness.
        match self.prune_tombstones() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "journal tombstones every client has seen dropped"),
            Err(e) => tracing::warn!(error = %e, "pruning journal tombstones"),
        }
        Ok(cursor)
    }
}

/// With `CS_JOURNAL_CHECK` set (tests): the journal after an incremental
/// refresh must hold exactly what a full scan sees.
fn check_against_full_scan(j: &Journal, home: &std::path::Path, filter: &PathFilter) -> Result<(), EngineError> {
    let full = Journal::scan(home, filter, &mut |_| {})?;
    let mut diffs = Vec::new();
    for (p, e) in &j.entries {
        if e.sig.is_some() && e.sig != full.get(p).copied() {
            diffs.push(format!("{p}: journal {:?}, disk {:?}", e.sig, full.get(p)));
        }
    }
    for (p, sig) in &full {
        if j.get(p).and_then(|e| e.sig).is_none() {
            diffs.push(format!("{p}: missing from the journal, disk {sig:?}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        diffs.sort();
        tracing::error!("incremental journal differs from a full scan: {diffs:?}");
        Err(EngineError::Protocol(format!(
            "CS_JOURNAL_CHECK: the incremental journal differs from a full scan: {diffs:?}"
        )))
    }
}
