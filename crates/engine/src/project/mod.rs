//! The project's half of a round: it owns the home directory, the change
//! journal and one index per client, and answers each step.

mod journal;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cs_protocol::{
    ClientId, CommitRequest, Cursor, DeleteReport, EntryKind, Hello, HelloReply, RelPath, PROTOCOL_VERSION,
};
use cs_safe_fs::{FsError, SafeRoot};
use cs_tarstream::{EntryHeader, Limits, PackStats, PackWriter};
use serde::{Deserialize, Serialize};

pub use journal::{Journal, JournalEntry, JOURNAL_VERSION};

use crate::busy::{self, BusyFile, BusyOutcome, BusyPolicy, BusyTable, Packed};
use crate::compute::Interrupted;
use crate::sig::{held_digest, Sig};
use crate::{state, temp_name, EngineError, PathFilter};

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the broker: the data is still
    // consistent (every critical section is a few field updates).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One client's round in flight on P. Dropping it abandons the round.
pub struct ProjectRound {
    client: ClientId,
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
    unseen: BTreeSet<RelPath>,
    /// Paths sent in step 4.
    sent: BTreeSet<RelPath>,
    new_cursor: Option<Cursor>,
    /// Step 4's busy files: deferred or sent as a snapshot.
    busy: BTreeMap<RelPath, BusyOutcome>,
}

impl ProjectRound {
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
        crate::sweep_stale_temps(&cfg.home);
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
        Ok(ProjectSide {
            cfg,
            home,
            journal: Mutex::new(JournalState { journal, saved_seq: saved }),
            clients: Mutex::new(HashMap::new()),
            apply_lock: Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            watch: Mutex::new(Watch { home: watch::HomeWatch::new(), last_full: None }),
            busy: Mutex::new(HashMap::new()),
        })
        .inspect(|p| {
            // Watch now, so that directory moves before the first hello
            // count; that hello rescans in full anyway.
            let mut w = lock(&p.watch);
            if let Some(hw) = w.home.as_mut() {
                let _ = Journal::scan(&p.cfg.home, &p.cfg.filter, &mut |d| hw.watch(&p.cfg.home, d));
            }
        })
    }

    pub fn config(&self) -> &ProjectConfig {
        &self.cfg
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
        let Some(oldest) = oldest else { return Ok(0) };
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
        self.refresh_journal()?;
        let base = lock(&self.journal).journal.position(hello.cursor);
        let st = self.client_state(&hello.client)?;
        let need_held_list = st.needs_full_list || held_digest(st.held.iter()) != hello.held_digest;
        let reply = HelloReply { need_held_list, cursor_unknown: hello.cursor.is_some() && base.is_none() };
        let mut round = ProjectRound {
            client: hello.client.clone(),
            base,
            index_base: st.held.clone(),
            held: BTreeSet::new(),
            held_added: hello.held_added.clone(),
            held_removed: hello.held_removed.clone(),
            hidden: hello.hidden.clone(),
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
    /// clients' applies go on meanwhile.
    fn refresh_journal(&self) -> Result<(), EngineError> {
        let mut w = lock(&self.watch);
        let w = &mut *w;
        let home = &self.cfg.home;
        let started = w.last_full.take();
        // What rounds record while the scan runs is newer than the scan.
        let began = lock(&self.journal).journal.seq;
        let Some(hw) = w.home.as_mut() else {
            let seen = Journal::scan(home, &self.cfg.filter, &mut |_| {})?;
            lock(&self.journal).journal.merge(seen, began);
            return Ok(());
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
            let seen = Journal::scan(home, &self.cfg.filter, &mut |d| hw.watch(home, d))?;
            let mut j = lock(&self.journal);
            j.journal.merge(seen, began);
            // After the merge, which leaves alone what was recorded since
            // the scan began (these records included).
            for dir in &changes.moved {
                j.journal.touch_tree(dir);
            }
            w.last_full = Some(Instant::now());
        } else {
            let part = Journal::scan_partial(home, &self.cfg.filter, &changes.dirty, &changes.appeared, &mut |d| {
                hw.watch(home, d)
            })?;
            let mut j = lock(&self.journal);
            j.journal.merge_partial(part, began);
            for dir in &changes.moved {
                j.journal.touch_tree(dir);
            }
            if std::env::var_os("CS_JOURNAL_CHECK").is_some() {
                check_against_full_scan(&j.journal, home, &self.cfg.filter)?;
            }
            w.last_full = started;
        }
        Ok(())
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
        // At a path the client hides behind a whiteout in its grace (or hid
        // until its user made a file there), never held by it: made on P
        // after the deletion and never shown to the client, whatever its
        // cursor says. Its deletes and writes meet it as a change.
        if actual.is_some() && !r.index_base.contains(p) && r.hidden.iter().any(|h| p.starts_with(h)) {
            return true;
        }
        let j = lock(&self.journal);
        match j.journal.get(p) {
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

    fn record(&self, r: &ProjectRound, p: &RelPath) -> Result<(), EngineError> {
        let sig = self.lstat_sig(p)?;
        lock(&self.journal).journal.record(p, sig, Some(&r.client));
        Ok(())
    }

    /// Step 1: the client deleted these paths. Each is deleted unless P
    /// changed it since the client's cursor (modification beats deletion).
    pub fn apply_deletes(&self, r: &mut ProjectRound, paths: &[RelPath]) -> Result<DeleteReport, EngineError> {
        let mut report = DeleteReport::default();
        let mut paths: Vec<&RelPath> = paths.iter().collect();
        paths.sort();
        paths.dedup();
        let mut done: Vec<&RelPath> = Vec::new();
        for p in paths {
            // A directory's deletion already covered everything below it.
            if done.last().is_some_and(|d| p.starts_with(d)) {
                continue;
            }
            done.push(p);
            if !self.cfg.filter.is_synced(p, false) {
                report.refused.push((p.clone(), "excluded or local-only path".into()));
                continue;
            }
            // Whatever happens on P, the client no longer holds it. What it
            // still holds below it stays (see `delete_tree`).
            r.held.remove(p);
            match self.home.lstat(p) {
                Err(e) => report.refused.push((p.clone(), e.to_string())),
                Ok(None) => report.deleted.push(p.clone()),
                Ok(Some(_)) => {
                    self.delete_tree(r, p, &mut report)?;
                }
            }
        }
        Ok(report)
    }

    /// Deletes `p` and what lies below it, keeping every entry changed by
    /// others, every entry the client still holds (and the directories
    /// that still contain something). Returns whether `p` is gone.
    ///
    /// A client that deletes a directory while it holds entries below it
    /// created the directory again over its whiteout (`rm -r d; mkdir d`):
    /// those entries are its new content, not part of the deletion, and a
    /// stale or repeated delete must not remove them (issue 8).
    fn delete_tree(&self, r: &ProjectRound, p: &RelPath, report: &mut DeleteReport) -> Result<bool, EngineError> {
        let Some(actual) = self.lstat_sig(p)? else { return Ok(true) };
        let held = r.held.contains(p);
        if held && actual.kind != EntryKind::Dir {
            return Ok(false);
        }
        if actual.kind == EntryKind::Dir {
            let mut all_gone = true;
            for (name, _) in self.home.read_dir(Some(p))? {
                let child = p.join(&name).map_err(|e| EngineError::BadName {
                    dir: self.cfg.home.join(p.as_path()),
                    name: cs_protocol::Escaped(name.as_bytes()).to_string(),
                    source: e,
                })?;
                if !self.cfg.filter.is_synced(&child, false) {
                    all_gone = false;
                    continue;
                }
                all_gone &= self.delete_tree(r, &child, report)?;
            }
            if !all_gone || held {
                return Ok(false);
            }
            let _op = lock(&self.apply_lock);
            if self.changed_by_others(r, p, self.lstat_sig(p)?) {
                report.kept.push(p.clone());
                return Ok(false);
            }
            match self.home.remove_dir(p) {
                Ok(()) => {}
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::DirectoryNotEmpty) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        } else {
            let _op = lock(&self.apply_lock);
            if self.changed_by_others(r, p, self.lstat_sig(p)?) {
                report.kept.push(p.clone());
                return Ok(false);
            }
            self.home.remove_file(p)?;
        }
        lock(&self.journal).journal.record(p, None, Some(&r.client));
        report.deleted.push(p.clone());
        Ok(true)
    }

    /// Step 2: the paths the client holds that no longer exist on P.
    pub fn deletes_for_client(&self, r: &mut ProjectRound) -> Vec<RelPath> {
        let j = lock(&self.journal);
        let gone: Vec<RelPath> = r.held.iter().filter(|p| !j.journal.is_live(p)).cloned().collect();
        drop(j);
        for p in &gone {
            r.held.remove(p);
        }
        gone
    }

    /// Step 3: applies the client's tar stream, each entry atomically, with
    /// the conflict rule. `stop_after` aborts after that many entries.
    pub fn apply_writes<R: Read>(
        &self,
        r: &mut ProjectRound,
        input: R,
        stop_after: Option<usize>,
    ) -> Result<WriteReport, EngineError> {
        let mut report = WriteReport::default();
        let mut redirects: Vec<(RelPath, RelPath)> = Vec::new();
        let limits = self.cfg.limits.clone();
        let mut seen = 0usize;
        // A file entry is renamed into place only once the next header (or
        // the end of the stream) has been read intact: an entry the sender
        // found torn is followed by a withdraw marker (or a cut stream), and
        // is then discarded.
        let mut staged: Option<Staged> = None;
        let result = cs_tarstream::unpack_events(input, &limits, |ev| {
            let (h, data) = match ev {
                cs_tarstream::Event::Entry(h, data) => (h, data),
                // The client found that file changed while it packed it:
                // the staged copy (if any: the entry may have been refused)
                // is its, and goes.
                cs_tarstream::Event::Withdraw(path) => {
                    if let Some(st) = staged.take_if(|st| &st.entry == path) {
                        self.home
                            .remove_file(&st.tmp)
                            .map_err(|e| Box::new(EngineError::from(e)) as cs_tarstream::VisitError)?;
                    }
                    report.withdrawn.push(path.clone());
                    return Ok(());
                }
            };
            if stop_after.is_some_and(|n| seen >= n) {
                return Err(Box::new(Interrupted));
            }
            seen += 1;
            let step = (|| {
                if let Some(st) = staged.take() {
                    self.finalize(r, st, &mut report)?;
                }
                staged = self.apply_entry(r, h, data, &mut redirects, &mut report)?;
                Ok::<(), EngineError>(())
            })();
            step.map_err(|e| Box::new(e) as cs_tarstream::VisitError)
        });
        match result {
            Ok(_) => {
                if let Some(st) = staged.take() {
                    self.finalize(r, st, &mut report)?;
                }
                Ok(report)
            }
            Err(e) => {
                if let Some(st) = staged.take() {
                    let _ = self.home.remove_file(&st.tmp);
                }
                Err(e.into())
            }
        }
    }

    fn apply_entry(
        &self,
        r: &mut ProjectRound,
        h: &EntryHeader,
        data: &mut dyn Read,
        redirects: &mut Vec<(RelPath, RelPath)>,
        report: &mut WriteReport,
    ) -> Result<Option<Staged>, EngineError> {
        let h = &*crate::without_setid(h);
        let is_dir = h.kind == EntryKind::Dir;
        if !self.cfg.filter.is_synced(&h.path, is_dir) {
            report.refused.push((h.path.clone(), "excluded or local-only path".into()));
            return Ok(None);
        }
        r.held.insert(h.path.clone());
        let mut target = redirect(redirects, &h.path);
        // An ancestor that is not a directory on P (a file or a symlink P put
        // there after the client's cursor): the client's tree goes beside it.
        match self.lstat_sig(&target) {
            Ok(_) => {}
            Err(FsError::SymlinkInPath { .. } | FsError::NotADirectory { .. }) => {
                let Some(blocker) = self.first_non_dir_ancestor(&target)? else {
                    report.refused.push((h.path.clone(), "path changed while being resolved".into()));
                    return Ok(None);
                };
                let conflict_dir = self.conflict_dir(r, &blocker, 0o755, report)?;
                // P's entry wins: the client gets it in step 4.
                r.unseen.insert(blocker.clone());
                redirects.push((blocker, conflict_dir));
                target = redirect(redirects, &h.path);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(parent) = target.parent() {
            if self.home.lstat(&parent)?.is_none() {
                // Only in a race (P removed the directory after step 2):
                // P's default mode goes back to the client in step 4.
                self.home.create_dir_all(&parent, 0o755)?;
                r.unseen.extend(parent.ancestors().chain(std::iter::once(parent.clone())));
            }
        }
        if is_dir {
            self.apply_dir(r, h, target, redirects, report)?;
            return Ok(None);
        }
        let tmp_name = temp_name(&r.client, self.tmp_seq.fetch_add(1, Ordering::Relaxed));
        let tmp = if h.kind == EntryKind::File {
            let (tmp, _, n) = self.home.write_temp(&target, &tmp_name, data, h.mode, h.mtime, false)?;
            report.bytes += n;
            tmp
        } else {
            self.home.symlink_temp(&target, &tmp_name, h.link_target.as_deref().unwrap_or_default(), h.mtime)?
        };
        Ok(Some(Staged { tmp, target, entry: h.path.clone() }))
    }

    /// Moves a staged file into place, or beside it as a conflict copy.
    fn finalize(&self, r: &mut ProjectRound, st: Staged, report: &mut WriteReport) -> Result<(), EngineError> {
        let Staged { tmp, target, .. } = st;
        let _op = lock(&self.apply_lock);
        let actual = self.lstat_sig(&target)?;
        let replace = match actual.map(|a| a.kind) {
            None => true,
            Some(EntryKind::Dir) => {
                !self.changed_by_others(r, &target, actual) && self.home.remove_dir(&target).is_ok()
            }
            Some(_) => !self.changed_by_others(r, &target, actual),
        };
        if replace {
            self.home.rename(&tmp, &target)?;
            self.record(r, &target)?;
            report.applied += 1;
            return Ok(());
        }
        // From here on P's version wins, and goes to the client in step 4
        // (its mode or mtime may differ even where the content does not).
        r.unseen.insert(target.clone());
        if actual.map(|a| a.kind) != Some(EntryKind::Dir) && self.home.same_content(&tmp, &target)? {
            self.home.remove_file(&tmp)?;
            report.unchanged += 1;
            return Ok(());
        }
        // Conflict: the incoming version is kept beside P's, once (a
        // retried round finds its earlier copy and adds none).
        if let Some(existing) = self.find_conflict_copy(&target, &r.client, &tmp)? {
            self.home.remove_file(&tmp)?;
            tracing::debug!(path = %target, copy = %existing, "conflict copy already present");
            return Ok(());
        }
        let copy = self.conflict_name(&target, &r.client)?;
        self.home.rename_noreplace(&tmp, &copy)?;
        self.record(r, &copy)?;
        tracing::info!(path = %target, copy = %copy, client = %r.client, "conflict: project version kept");
        report.conflicts.push(copy);
        Ok(())
    }

    /// The directory that receives a client's tree which P's file or
    /// symlink at `p` displaced: this client's existing one for `p` if there
    /// is one (a retried round adds no second copy), else a new one.
    fn conflict_dir(
        &self,
        r: &ProjectRound,
        p: &RelPath,
        mode: u32,
        report: &mut WriteReport,
    ) -> Result<RelPath, EngineError> {
        let prefix = fit_name(p.file_name(), &crate::conflict_prefix("", &r.client));
        let existing = match self.home.read_dir(p.parent().as_ref()) {
            Ok(names) => names
                .into_iter()
                .filter(|(n, k)| *k == cs_safe_fs::FileKind::Dir && n.as_bytes().starts_with(prefix.as_bytes()))
                .filter_map(|(n, _)| p.with_file_name(&n).ok())
                .max(),
            Err(_) => None,
        };
        if let Some(dir) = existing {
            return Ok(dir);
        }
        let dir = self.conflict_name(p, &r.client)?;
        self.home.create_dir(&dir, mode)?;
        self.home.set_mode(&dir, mode)?;
        self.record(r, &dir)?;
        report.conflicts.push(dir.clone());
        Ok(dir)
    }

    fn apply_dir(
        &self,
        r: &mut ProjectRound,
        h: &EntryHeader,
        target: RelPath,
        redirects: &mut Vec<(RelPath, RelPath)>,
        report: &mut WriteReport,
    ) -> Result<(), EngineError> {
        let _op = lock(&self.apply_lock);
        let actual = self.lstat_sig(&target)?;
        let changed = self.changed_by_others(r, &target, actual);
        match actual.map(|a| a.kind) {
            None => self.home.create_dir(&target, h.mode)?,
            Some(EntryKind::Dir) if changed => {
                // P's mode wins; step 4 brings it to the client.
                r.unseen.insert(target);
                report.unchanged += 1;
                return Ok(());
            }
            Some(EntryKind::Dir) => {}
            Some(_) if !changed => {
                self.home.remove_file(&target)?;
                self.home.create_dir(&target, h.mode)?;
            }
            Some(_) => {
                // P put a file where the client has a directory: the client's
                // tree goes to a conflict directory beside it, P's file to
                // the client in step 4.
                let copy = self.conflict_dir(r, &target, h.mode, report)?;
                r.unseen.insert(target.clone());
                redirects.push((target, copy));
                return Ok(());
            }
        }
        self.home.set_mode(&target, h.mode)?;
        self.home.set_mtime(&target, h.mtime)?;
        self.record(r, &target)?;
        report.applied += 1;
        Ok(())
    }

    fn first_non_dir_ancestor(&self, p: &RelPath) -> Result<Option<RelPath>, EngineError> {
        let mut ancestors: Vec<RelPath> = p.ancestors().collect();
        ancestors.reverse();
        for a in ancestors {
            match self.home.lstat(&a)? {
                Some(st) if st.kind == cs_safe_fs::FileKind::Dir => continue,
                Some(_) => return Ok(Some(a)),
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// `NAME.conflict-<client>-<UTC time>` beside `p`, not yet taken.
    fn conflict_name(&self, p: &RelPath, client: &ClientId) -> Result<RelPath, EngineError> {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| "unknown-time".into());
        for n in 0..1000u32 {
            let suffix = if n == 0 { String::new() } else { format!("-{n}") };
            let tail = format!("{}{stamp}{suffix}", crate::conflict_prefix("", client));
            let name = fit_name(p.file_name(), &tail);
            let candidate =
                p.with_file_name(&name).map_err(|e| EngineError::Entry { path: p.clone(), reason: e.to_string() })?;
            if self.home.lstat(&candidate)?.is_none() {
                return Ok(candidate);
            }
        }
        Err(EngineError::Entry { path: p.clone(), reason: "no free conflict-copy name".into() })
    }

    /// An earlier conflict copy of `p` by this client with the same content as `tmp`.
    fn find_conflict_copy(
        &self,
        p: &RelPath,
        client: &ClientId,
        tmp: &RelPath,
    ) -> Result<Option<RelPath>, EngineError> {
        let prefix = fit_name(p.file_name(), &crate::conflict_prefix("", client));
        let names = match self.home.read_dir(p.parent().as_ref()) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for (name, kind) in names {
            if !name.as_bytes().starts_with(prefix.as_bytes()) || kind == cs_safe_fs::FileKind::Dir {
                continue;
            }
            let Ok(candidate) = p.with_file_name(&name) else { continue };
            if self.home.same_content(&candidate, tmp)? {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }

    /// Step 4: packs what changed on P since the client's cursor among the
    /// paths the client holds (plus those it has not applied yet), never
    /// echoing the client's own writes. Returns the cursor to commit.
    pub fn pack_changes<W: Write>(&self, r: &mut ProjectRound, w: W) -> Result<(W, PackStats, Cursor), EngineError> {
        // Every version a client may receive must be on record durably first:
        // a client that dies after applying it counts it as synced, so a
        // journal that forgot it (P died too) could not tell a later change
        // back to an older state from no change at all.
        self.persist_journal()?;
        let cursor = lock(&self.journal).journal.cursor();
        r.new_cursor = Some(cursor);
        let mut tar = PackWriter::new(w, self.cfg.zstd_level)?;
        let held: Vec<RelPath> = r.held.iter().cloned().collect();
        for p in held {
            let send = r.unseen.contains(&p)
                || match (r.base, lock(&self.journal).journal.get(&p).cloned()) {
                    (_, None) => false,
                    (_, Some(e)) if e.sig.is_none() => false,
                    // Never echo the client's own write: it holds exactly
                    // that, or has changed it and sends it in step 3.
                    (_, Some(e)) if e.author.as_ref() == Some(&r.client) => false,
                    (None, Some(_)) => true,
                    (Some(b), Some(e)) => e.seq > b,
                };
            if !send || !self.cfg.filter.is_synced(&p, false) {
                continue;
            }
            let st = match self.home.lstat(&p) {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %p, error = %e, "not sent");
                    continue;
                }
            };
            let Some(kind) = crate::sig::entry_kind(st.kind) else { continue };
            let mut header =
                EntryHeader { path: p.clone(), kind, mode: st.mode, mtime: st.mtime, size: 0, link_target: None };
            match kind {
                EntryKind::Dir => tar.append_dir(&header)?,
                EntryKind::Symlink => {
                    header.link_target = Some(self.home.read_link(&p)?);
                    tar.append_symlink(&header)?;
                }
                EntryKind::File => {
                    let f = match self.home.open_file(&p) {
                        Ok(f) => f,
                        // Gone since the lstat (a log rotated): as above.
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    // As on C (see `busy`): a file that changed since the
                    // journal saw it, or changes while it is read, is
                    // deferred; it stays unseen by this client, so a later
                    // round sends it.
                    let expected = lock(&self.journal).journal.get(&p).and_then(|e| e.sig);
                    let scratch = lock(&self.busy)
                        .get(&r.client)
                        .is_some_and(|t| t.wants_snapshot(&p, &self.cfg.busy))
                        .then(|| temp_name(&r.client, self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
                    let snapshot = scratch.as_deref().map(|name| (&self.cfg.busy, name));
                    let packed = busy::pack_file(&mut tar, &self.home, &p, f, header, expected, snapshot)?;
                    busy::note(&mut r.busy, &p, &packed);
                    match packed {
                        Packed::Whole(_) | Packed::Snapshot { exact: true, .. } => {}
                        // A snapshot of a file that changed meanwhile is
                        // not its current version: it stays unseen too.
                        Packed::Snapshot { exact: false, .. } | Packed::Deferred(_) => {
                            r.unseen.insert(p);
                            continue;
                        }
                    }
                }
            }
            r.sent.insert(p);
        }
        let (w, stats) = tar.finish()?;
        Ok((w, stats, cursor))
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

/// A file written to its temporary name, waiting for the rest of the
/// stream to prove it whole.
struct Staged {
    tmp: RelPath,
    target: RelPath,
    /// The entry's path in the stream (`target` may be a conflict directory's).
    entry: RelPath,
}

fn redirect(redirects: &[(RelPath, RelPath)], p: &RelPath) -> RelPath {
    for (from, to) in redirects.iter().rev() {
        if p.starts_with(from) {
            let rest = &p.as_bytes()[from.as_bytes().len()..];
            if let Ok(q) = RelPath::new([to.as_bytes(), rest].concat()) {
                return q;
            }
        }
    }
    p.clone()
}

/// `name` + `tail`, shortening `name` (not inside a UTF-8 character, for
/// names that are UTF-8) to stay within the 255-byte component limit.
fn fit_name(name: &OsStr, tail: &str) -> OsString {
    let name = name.as_bytes();
    let room = cs_protocol::MAX_COMPONENT_LEN.saturating_sub(tail.len());
    let mut end = name.len().min(room);
    while end > 0 && end < name.len() && name[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    OsString::from_vec([&name[..end], tail.as_bytes()].concat())
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
