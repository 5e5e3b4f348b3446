//! The compute server's half of a round: it reads the upper layer, drives
//! the steps, and writes P's changes into the upper layer.

mod manifest;
mod scan;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cs_protocol::{
    ClientId, CommitRequest, Cursor, DeleteReport, EntryKind, HeldDelta, Hello, HelloReply, RelPath, PROTOCOL_VERSION,
};
use cs_safe_fs::SafeRoot;
use cs_tarstream::{EntryHeader, Limits, PackStats, PackWriter};
use cs_union::Layout;

pub use manifest::{AppliedLog, Manifest, MANIFEST_VERSION};
pub use scan::{scan_upper, Marker, UpperScan};

use crate::busy::{self, BusyFile, BusyOutcome, BusyPolicy, BusyTable};
pub use crate::lookahead::Interrupted;
use crate::lookahead::{self, LookAhead};
use crate::progress::Progress;
use crate::sig::{held_digest, Sig};
use crate::{state, temp_name, EngineError, IgnoreRules, PathFilter, PullPolicy};

/// Settings of one compute server's sync engine.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    pub client: ClientId,
    /// The union's upper layer (local, fast disk).
    pub upper: PathBuf,
    /// Where the manifest lives: local disk, outside the upper layer.
    pub state_dir: PathBuf,
    pub filter: PathFilter,
    pub zstd_level: i32,
    pub limits: Limits,
    /// How long a whiteout stays after P confirmed the deletion. The lower
    /// mount may still show the deleted entry from its caches for a while
    /// (sshfs: names, attributes and listings); removing the whiteout at
    /// once made deleted files reappear in the merged view for that long,
    /// and `rm -r` fail with ENOTEMPTY. At least the lower's staleness;
    /// zero for a lower without caches (the tests' plain directories).
    pub whiteout_grace: Duration,
    /// The compute user: owner of every entry step 4 creates in the upper
    /// layer (files, directories, symlinks). `None`: the process's own.
    pub owner: Option<cs_safe_fs::Owner>,
    /// Files that keep changing: when to send a snapshot (see `busy`).
    pub busy: BusyPolicy,
    /// Which of P's changes reach the upper layer through the round (sent
    /// to P in every hello; see [`PullPolicy`]). `Held` unless set, as
    /// the protocol's default; the compute service's default is
    /// [`crate::DEFAULT_PULL`].
    pub pull: PullPolicy,
    /// Which union the upper layer belongs to: where the round's changes
    /// are made and how deletions are hidden (see [`UnionKind`]).
    pub union: UnionKind,
    /// Ask P, in every hello, to push `ProjectChanged` when the project
    /// changes between rounds (docs/protocol.md, *Follow*). Off unless set;
    /// the compute service turns it on (`--follow-project`).
    pub follow: bool,
}

/// The union the upper layer belongs to, as far as the engine cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnionKind {
    /// unionfs-fuse looks every path up again in both layers, so the
    /// engine writes into the upper layer directly, and hides deletions
    /// with markers in the union's meta directory (this layout).
    UnionfsFuse(Layout),
    /// Kernel overlayfs mounted at `merged`. Changing the layers behind
    /// its back is undefined (its dentry cache is never revalidated
    /// against the upper layer), so every change the round makes goes
    /// through the merged view; the upper layer is only read. Its
    /// markers (whiteouts, opaque directories, redirects) are never
    /// removed by the engine (docs/union.md).
    Overlay { merged: PathBuf },
}

impl ComputeConfig {
    pub fn new(client: ClientId, upper: PathBuf, state_dir: PathBuf) -> Self {
        ComputeConfig {
            client,
            upper,
            state_dir,
            filter: PathFilter::default(),
            zstd_level: crate::DEFAULT_ZSTD_LEVEL,
            limits: Limits::default(),
            whiteout_grace: Duration::ZERO,
            owner: None,
            busy: BusyPolicy::default(),
            pull: PullPolicy::Held,
            union: UnionKind::UnionfsFuse(Layout::UnionfsFuse1),
            follow: false,
        }
    }
}

/// The cursor of the client's last committed round, if any (`None`: no round committed
/// yet, or no state at all). A replica resumes its previous tree only when P's journal
/// still continues this cursor.
pub fn committed_cursor(state_dir: &Path) -> Result<Option<Cursor>, EngineError> {
    Ok(Manifest::load(&state_dir.join(MANIFEST_FILE))?.cursor)
}

/// A replica's lower layer is P's snapshot as of `cursor` (issue 12): a
/// client with no cursor of its own starts from it, so that its first round
/// carries every change P made after the snapshot (without a cursor, a first
/// round carries nothing: the lower was assumed to show P's current state,
/// which a snapshot does not). A client that has a cursor keeps it: the
/// snapshot is newer (taken at this start) and its upper layer already holds
/// what the rounds since brought. Returns whether the cursor was adopted.
pub fn adopt_snapshot_cursor(state_dir: &Path, cursor: Cursor) -> Result<bool, EngineError> {
    let path = state_dir.join(MANIFEST_FILE);
    let mut manifest = Manifest::load(&path)?;
    if manifest.cursor.is_some() {
        return Ok(false);
    }
    manifest.cursor = Some(cursor);
    state::save(&path, &manifest)?;
    Ok(true)
}

/// Told of each directory step 4 is about to make, or give P's mode and mtime, in the
/// upper layer (its path): the compute service's upper-layer watcher takes the events at
/// exactly those paths as the round's own, not a user's change that calls for another
/// round. (Files need no telling: they arrive under temporary names.)
pub type OwnDirs = Arc<dyn Fn(&RelPath) + Send + Sync>;

/// The compute side: committed state plus the means to run rounds.
pub struct ComputeSide {
    cfg: ComputeConfig,
    /// The configured filter with the `.csignore` rules P sent last (see
    /// [`ComputeSide::hello_answered`]): what every step goes by.
    filter: PathFilter,
    /// Why the project's `.csignore` is not in force, as P (or this side,
    /// failing to parse what P sent) said at the last hello.
    ignore_error: Option<String>,
    upper: SafeRoot,
    manifest: Manifest,
    /// Round id of a manifest written at step 5 whose commit on P is not
    /// confirmed yet (the process died in between).
    pending: Option<u64>,
    tmp_seq: u64,
    /// Whiteouts whose deletion P confirmed, kept for the grace period:
    /// path → when (ms since the epoch, this machine's clock only).
    retired: BTreeMap<RelPath, u64>,
    /// overlayfs: the inode of each retired marker. A retired path covers
    /// that marker only: one made again there (`rm -r` of a directory that
    /// was opaque, a whiteout where step 4 had made a directory) is a new
    /// deletion.
    retired_ino: BTreeMap<RelPath, u64>,
    /// Whether the upper layer is the one the manifest was made with: its
    /// root's (device, inode) as recorded in `state_dir` ([`UpperIdentity`]).
    upper_id: UpperIdentity,
    /// Files deferred or snapshotted by the last committed rounds (in
    /// memory: after a restart a busy file waits `snapshot_after` rounds
    /// again for its next snapshot).
    busy: BusyTable,
    /// The step in flight (3 or 4), for the status.
    progress: Progress,
    own_dirs: Option<OwnDirs>,
}

/// The in-memory state of one round on C. Dropping it abandons the round:
/// nothing of it is committed.
pub struct ComputeRound {
    scan: UpperScan,
    /// The committed manifest, plus step-4 writes of an interrupted round
    /// that are still in place (see [`AppliedLog`]).
    base: BTreeMap<RelPath, Sig>,
    /// Latest known signature of each upper entry: from the scan, updated
    /// when an entry is packed (step 3) or written (step 4).
    known: BTreeMap<RelPath, Sig>,
    /// The manifest this round will commit.
    next: BTreeMap<RelPath, Sig>,
    whiteouts_sent: Vec<Marker>,
    /// overlayfs's merged view, where this round makes its changes (see
    /// [`UnionKind::Overlay`]); `None` with unionfs-fuse (the upper layer
    /// then). Opened per round: a descriptor held across rounds would keep
    /// a detached overlay alive after the mount supervisor remounted it.
    merged: Option<SafeRoot>,
    /// overlayfs: this round removes, on P and so from the lower, what a
    /// directory of the merged view still refers to (a directory P deleted
    /// that C keeps): its cached view would be stale after the commit (see
    /// [`ComputeSide::commit`]).
    stale_after_commit: bool,
    not_applied: BTreeSet<RelPath>,
    applied_log: AppliedLog,
    /// Step 3's entries of the round in flight (same format).
    sent_log: AppliedLog,
    round_id: u64,
    /// Retired whiteouts whose marker is gone: over once the round commits.
    retired_gone: Vec<RelPath>,
    pub problems: Vec<String>,
    /// Step 3's busy files: deferred or sent as a snapshot.
    busy: BTreeMap<RelPath, BusyOutcome>,
}

/// A file of P's written to its temporary name, waiting for the rest of the
/// stream to prove it whole.
struct Staged {
    tmp: RelPath,
    target: RelPath,
    expected: Option<Sig>,
}

/// The manifest of a round whose step 5 is under way.
#[derive(serde::Serialize, serde::Deserialize)]
struct PendingCommit {
    round_id: u64,
    manifest: Manifest,
}

const MANIFEST_FILE: &str = "manifest.msgpack";
const PENDING_FILE: &str = "manifest.pending.msgpack";
const RETIRED_FILE: &str = "retired-whiteouts.msgpack";
const RETIRED_INO_FILE: &str = "retired-markers.msgpack";
const UPPER_ID_FILE: &str = "upper-identity.msgpack";

/// The upper layer compared with the one the committed state was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperIdentity {
    /// The same root directory (device and inode) as recorded.
    Known,
    /// Nothing recorded yet (a new state, or one from before the record).
    Unrecorded,
    /// Another directory than recorded: a wiped or replaced disk. Synced
    /// copies missing from it are not P's to delete; recorded again at the
    /// next commit.
    Replaced,
}
/// The text of the `.csignore` rules P sent last: the next scan goes by them.
const IGNORE_RULES_FILE: &str = "csignore.in-force";

/// What step 4 did on C.
#[derive(Debug, Default, Clone)]
pub struct ApplyReport {
    pub applied: usize,
    pub bytes: u64,
    /// P's version was not written because the local entry changed since the
    /// scan: the user's version stays and goes to P next round.
    pub not_applied: Vec<RelPath>,
    /// Entries P withdrew from its stream (they changed on P while being
    /// packed): discarded here, P sends them in a later round.
    pub withdrawn: Vec<RelPath>,
}

/// Step 4 under way on C: what the look-ahead loop needs of C.
struct WritesOut<'a> {
    side: &'a mut ComputeSide,
    r: &'a mut ComputeRound,
    report: ApplyReport,
    failpoint_hit: bool,
}

impl LookAhead for WritesOut<'_> {
    type Staged = Staged;

    fn entry_path(st: &Staged) -> &RelPath {
        &st.target
    }

    fn apply_entry(&mut self, h: &EntryHeader, data: &mut dyn Read) -> Result<Option<Staged>, EngineError> {
        self.side.apply_entry(self.r, h, data, &mut self.report)
    }

    fn finalize(&mut self, st: Staged) -> Result<(), EngineError> {
        self.side.finalize(self.r, st, &mut self.report)
    }

    fn discard(&mut self, st: Staged) -> Result<(), EngineError> {
        Ok(self.r.merged.as_ref().unwrap_or(&self.side.upper).remove_file(&st.tmp)?)
    }

    // P found that file changed while it packed it: the staged copy (if
    // any: the entry may have been skipped) was its, and went.
    fn withdrawn(&mut self, path: &RelPath) {
        self.report.withdrawn.push(path.clone());
    }

    // Fault tests (cs-failpoint): part of the stream is in place, this
    // entry's data and the rest of the stream not read yet.
    fn before_entry(&mut self) -> Result<(), EngineError> {
        if !self.failpoint_hit && self.report.applied > 0 {
            self.failpoint_hit = true;
            cs_failpoint::hit("mid-writes-to-compute")?;
        }
        Ok(())
    }
}

impl ComputeRound {
    /// The upper-layer entries the `.csignore` rules keep out of this
    /// round (a directory once, not what it holds).
    pub fn ignored(&self) -> &[RelPath] {
        &self.scan.ignored
    }
}

impl ComputeSide {
    pub fn open(mut cfg: ComputeConfig) -> Result<Self, EngineError> {
        state::ensure_dir(&cfg.state_dir)?;
        // overlayfs shows nothing of P's that it cached as absent (a name
        // looked up before P made it) until the round writes it through the
        // merged view: every change of P's must come through the rounds,
        // whatever its size (docs/union.md, point 2).
        if matches!(cfg.union, UnionKind::Overlay { .. }) && cfg.pull != (PullPolicy::Changed { max_file_size: None }) {
            tracing::info!(configured = ?cfg.pull, "overlayfs: pulling every change of the project's, uncapped");
            cfg.pull = PullPolicy::Changed { max_file_size: None };
        }
        let upper = SafeRoot::open(&cfg.upper)?.with_owner(cfg.owner);
        match &cfg.union {
            UnionKind::UnionfsFuse(_) => crate::sweep_stale_temps(&cfg.upper, &cfg.upper),
            UnionKind::Overlay { merged } => crate::sweep_stale_temps(&cfg.upper, merged),
        };
        let manifest = Manifest::load(&cfg.state_dir.join(MANIFEST_FILE))?;
        let pending = state::load::<PendingCommit>(&cfg.state_dir.join(PENDING_FILE))?.map(|p| p.round_id);
        let retired = state::load::<BTreeMap<RelPath, u64>>(&cfg.state_dir.join(RETIRED_FILE))?.unwrap_or_default();
        let retired_ino =
            state::load::<BTreeMap<RelPath, u64>>(&cfg.state_dir.join(RETIRED_INO_FILE))?.unwrap_or_default();
        let root_id = upper_root_id(&cfg.upper)?;
        let upper_id = match state::load::<(u64, u64)>(&cfg.state_dir.join(UPPER_ID_FILE))? {
            Some(id) if id == root_id => UpperIdentity::Known,
            Some(_) => {
                tracing::warn!(upper = %cfg.upper.display(), "the upper layer is not the one the state was made with: files missing from it are not deleted on the project");
                UpperIdentity::Replaced
            }
            None => {
                state::save(&cfg.state_dir.join(UPPER_ID_FILE), &root_id)?;
                UpperIdentity::Unrecorded
            }
        };
        let filter = cfg.filter.with_ignore(std::sync::Arc::new(load_ignore_rules(&cfg.state_dir)));
        Ok(ComputeSide {
            cfg,
            filter,
            ignore_error: None,
            upper,
            manifest,
            pending,
            tmp_seq: 0,
            retired,
            retired_ino,
            upper_id,
            busy: BusyTable::default(),
            progress: Progress::new(),
            own_dirs: None,
        })
    }

    /// The filter every step goes by: the configured one with the
    /// `.csignore` rules in force.
    pub fn filter(&self) -> &PathFilter {
        &self.filter
    }

    /// Why the project's `.csignore` is not in force, if it is not (status).
    pub fn ignore_error(&self) -> Option<&str> {
        self.ignore_error.as_deref()
    }

    /// After P answered the hello: its `.csignore` rules are this round's.
    /// If they differ from those the scan went by, the new ones are kept
    /// for later rounds and the round is opened again on a fresh scan (the
    /// hello's view of the held set differs from it only on paths both
    /// sides now ignore, which neither side deletes or writes). Rules that
    /// do not parse here leave the last ones in force, reported.
    pub fn hello_answered(&mut self, r: &mut ComputeRound, reply: &HelloReply) -> Result<(), EngineError> {
        self.ignore_error = reply.ignore_error.clone();
        if reply.ignore_rules == self.filter.ignore_rules().text() {
            return Ok(());
        }
        let rules = match IgnoreRules::parse("the project's .csignore", reply.ignore_rules.as_bytes()) {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!(error = %e, "the project's ignore rules do not parse here: the last ones stay");
                self.ignore_error = Some(e.to_string());
                return Ok(());
            }
        };
        cs_safe_fs::write_atomic(&self.cfg.state_dir.join(IGNORE_RULES_FILE), rules.text().as_bytes())?;
        tracing::info!(patterns = rules.patterns(), "new .csignore rules from the project");
        self.filter = self.cfg.filter.with_ignore(std::sync::Arc::new(rules));
        *r = self.open_round(r.round_id)?.0;
        Ok(())
    }

    pub fn config(&self) -> &ComputeConfig {
        &self.cfg
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn manifest_path(&self) -> PathBuf {
        self.cfg.state_dir.join(MANIFEST_FILE)
    }

    fn pending_path(&self) -> PathBuf {
        self.cfg.state_dir.join(PENDING_FILE)
    }

    /// A round whose step 5 was interrupted between P's commit and ours:
    /// ask P ([`crate::ProjectSide::was_committed`]) and pass the answer to
    /// [`Self::resolve_pending`] before the next round.
    pub fn pending_round(&self) -> Option<u64> {
        self.pending
    }

    /// Adopts the pending manifest if P committed that round, else drops it
    /// (the round is redone from the last committed state).
    pub fn resolve_pending(&mut self, committed_on_project: bool) -> Result<(), EngineError> {
        if self.pending.is_none() {
            return Ok(());
        }
        if committed_on_project {
            if let Some(p) = state::load::<PendingCommit>(&self.pending_path())? {
                state::save(&self.manifest_path(), &p.manifest)?;
                self.manifest = p.manifest;
                AppliedLog::remove(&self.applied_log_path())?;
                AppliedLog::remove(&self.sent_log_path())?;
            }
        }
        state::remove(&self.pending_path())?;
        self.pending = None;
        Ok(())
    }

    fn sent_log_path(&self) -> PathBuf {
        self.cfg.state_dir.join("sent.log")
    }

    fn applied_log_path(&self) -> PathBuf {
        self.cfg.state_dir.join("applied.log")
    }

    /// Scans the upper layer and opens a round.
    pub fn begin_round(&mut self) -> Result<(ComputeRound, Hello), EngineError> {
        if self.pending.is_some() {
            return Err(EngineError::Protocol(
                "a previous round's commit is unresolved: call resolve_pending first".into(),
            ));
        }
        self.open_round(crate::random_u64())
    }

    /// Removes this process's temporaries the scan found: one round is in flight at a
    /// time and its applies make theirs after the scan, so any found now are what an
    /// apply that failed midway left (a rename through the merged view that met
    /// ESTALE, a round cut in step 4). Left there, they made step 2 find a directory P
    /// deleted not empty and keep it, which sent it back to P as new. Those of another
    /// process, or another client id, are `sweep_stale_temps`'s (at start).
    fn remove_leftover_temps(&self, writer: &SafeRoot, temps: &[RelPath]) {
        let mut removed = 0;
        for t in temps {
            let name = t.as_path().file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default();
            if !crate::is_temp_of_this_process(name, &self.cfg.client) {
                continue;
            }
            match writer.remove_file(t) {
                Ok(()) => removed += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(path = %t, error = %e, "a temporary file of a failed apply not removed"),
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed temporary files a failed apply left");
        }
    }

    /// Scans the upper layer with the filter in force: round `round_id`.
    fn open_round(&self, round_id: u64) -> Result<(ComputeRound, Hello), EngineError> {
        let merged = match &self.cfg.union {
            UnionKind::UnionfsFuse(_) => None,
            UnionKind::Overlay { merged } => Some(SafeRoot::open(merged)?.with_owner(self.cfg.owner)),
        };
        let mut scan = scan_upper(&self.cfg.upper, &self.filter, &self.cfg.union)?;
        self.remove_leftover_temps(writer(&self.upper, &merged), &scan.temps);
        if let (Some(m), false) = (&merged, scan.redirects.is_empty()) {
            self.copy_up_moved_dirs(m, &scan.redirects)?;
            self.settle_moved_dirs(&scan.redirects)?;
            scan = scan_upper(&self.cfg.upper, &self.filter, &self.cfg.union)?;
        }
        // What P has at a retired path, C has not seen: P is told, and keeps
        // it from C's deletes and writes there. That includes a path whose
        // marker the union removed since (the user made a file there, not
        // knowing P's).
        let hidden = hidden_roots(self.retired.keys());
        // A retired whiteout lasts as long as its marker. The union removes
        // the marker when a non-directory is created at the path (a later
        // marker there is a new deletion), but keeps it beside a directory
        // created again (`rm -r d; mkdir d`: the new `d` is opaque). That
        // marker is still the deletion P applied: sending it again deleted
        // on P what C had written in the new directory since (issue 8).
        // Deleting the new directory goes through the manifest instead
        // (`deletes_to_send`: synced copies gone from the upper layer).
        // Dropped at commit: a retried round must name them to P again.
        let retired_gone: Vec<RelPath> = self
            .retired
            .keys()
            .filter(|p| !scan.whiteouts.iter().any(|w| &w.path == *p && self.is_retired(w)))
            .cloned()
            .collect();
        let mut base = self.manifest.entries.clone();
        // What an interrupted round sent in step 3 may be on P now: an entry
        // changed back since to its committed state (a chmod undone, say)
        // must still go, or P would keep the intermediate version.
        for (path, sig) in AppliedLog::read(&self.sent_log_path())? {
            match scan.entries.get(&path) {
                Some(now) if base.get(&path) == Some(now) => {
                    base.remove(&path);
                }
                Some(_) => {}
                // Sent, and gone from the upper layer since: P may hold it
                // although the manifest never did. As a synced copy gone
                // from the upper layer, its deletion is sent in step 1 (a
                // whiteout may be missing, see `deletes_to_send`); P
                // keeps it if someone else changed it since.
                None => {
                    base.entry(path).or_insert(sig);
                }
            }
        }
        // P's versions written by an interrupted round are synced copies, not
        // local edits, as long as nobody touched them since.
        for (path, sig) in AppliedLog::read(&self.applied_log_path())? {
            if scan.entries.get(&path) == Some(&sig) {
                base.insert(path, sig);
            }
        }
        let known = scan.entries.clone();
        let next: BTreeMap<RelPath, Sig> =
            base.iter().filter(|(p, _)| known.contains_key(*p)).map(|(p, s)| (p.clone(), *s)).collect();
        let committed = &self.manifest.entries;
        let hello = Hello {
            client: self.cfg.client.clone(),
            protocol: PROTOCOL_VERSION,
            cursor: self.manifest.cursor,
            held_digest: held_digest(committed.keys()),
            held_count: committed.len() as u64,
            held_added: next.keys().filter(|p| !committed.contains_key(*p)).cloned().collect(),
            held_removed: committed.keys().filter(|p| !known.contains_key(*p)).cloned().collect(),
            hidden,
            pull: self.cfg.pull,
            follow: self.cfg.follow,
        };
        let problems = scan.problems.clone();
        let round = ComputeRound {
            scan,
            base,
            known,
            next,
            whiteouts_sent: Vec::new(),
            merged,
            stale_after_commit: false,
            not_applied: BTreeSet::new(),
            applied_log: AppliedLog::new(self.applied_log_path()),
            sent_log: AppliedLog::new(self.sent_log_path()),
            round_id,
            retired_gone,
            problems,
            busy: BTreeMap::new(),
        };
        Ok((round, hello))
    }

    /// overlayfs: a directory moved through the merged view (`mv` of a
    /// directory the lower has, with `redirect_dir=on`) shows the lower's
    /// content under its old path without copying it. The round sends the
    /// old path's deletion (its whiteout) and the new path's entries from
    /// the upper layer; once P has applied the deletion the lower no longer
    /// has that content, so it is copied up first: each entry below a moved
    /// directory that the upper layer lacks gets a metadata change through
    /// the merged view ([`SafeRoot::reassert_owner`]). Returns how many.
    fn copy_up_moved_dirs(&self, merged: &SafeRoot, moved: &[RelPath]) -> Result<usize, EngineError> {
        let mut copied = 0;
        let mut dirs: Vec<RelPath> = moved.to_vec();
        while let Some(dir) = dirs.pop() {
            let entries = match retry_if_stale(Some(merged), || merged.read_dir(Some(&dir))) {
                Ok(e) => e,
                // Removed or replaced meanwhile: nothing of it to keep.
                Err(e) if e.is_not_found() || e.io_kind() == Some(std::io::ErrorKind::NotADirectory) => continue,
                Err(e) => return Err(e.into()),
            };
            for (name, kind) in entries {
                let Ok(p) = dir.join(&name) else { continue };
                let is_dir = kind == cs_safe_fs::FileKind::Dir;
                if !self.filter.is_synced(&p, is_dir) {
                    continue;
                }
                if self.upper.lstat(&p)?.is_none() {
                    match retry_if_stale(Some(merged), || merged.reassert_owner(&p)) {
                        Ok(()) => copied += 1,
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                if is_dir {
                    dirs.push(p);
                }
            }
        }
        if copied > 0 {
            tracing::info!(copied, moved = moved.len(), "copied up the lower content of moved directories");
        }
        Ok(copied)
    }

    /// overlayfs: once a moved directory's lower content is all in the upper
    /// layer, the directory stops merging its origin: otherwise whatever
    /// the lower later has at the old path (C's own new directory there,
    /// written to P by step 3) would show inside it too. overlayfs offers no
    /// way to do that through the merged view, so its redirect is replaced
    /// by an opaque mark in the upper layer directly and the kernel's cached
    /// dentries are dropped right after, which makes it read the directory
    /// afresh, as after a remount (a dentry a process holds, such as its
    /// working directory, keeps the old view until released).
    fn settle_moved_dirs(&self, moved: &[RelPath]) -> Result<(), EngineError> {
        use cs_union::overlay::{OPAQUE_XATTR, REDIRECT_XATTR};
        for d in moved {
            let abs = self.cfg.upper.join(d.as_path());
            rustix::fs::lsetxattr(&abs, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| EngineError::io("mark opaque", &abs, e.into()))?;
            match rustix::fs::lremovexattr(&abs, REDIRECT_XATTR) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(EngineError::io("remove the redirect of", &abs, e.into())),
            }
        }
        tracing::info!(moved = moved.len(), "moved directories no longer merge their old lower path");
        forget_cached_inodes();
        Ok(())
    }

    /// The committed held set, for P when its index does not match.
    pub fn held_list(&self) -> Vec<RelPath> {
        self.manifest.entries.keys().cloned().collect()
    }

    /// Step 1: paths deleted through the merged view since the last round.
    /// A whiteout on a path the upper layer holds again counts too: unionfs
    /// keeps a directory's marker when the directory is re-created (the new
    /// one is opaque), so P's old contents must go; C's new contents follow
    /// in step 3.
    ///
    /// A synced copy that left the upper layer without a whiteout counts
    /// too: the union writes a marker only if it believes the lower has the
    /// path, and a lower mount that caches "absent" (sshfs
    /// `negative_timeout`) hides a file the previous round put on P, which
    /// would come back once the cache expires. An upper layer with no synced
    /// entry at all is not read as "everything deleted" (a wiped or
    /// replaced upper disk): those deletions are then not sent. Nor are
    /// paths the filter no longer syncs.
    pub fn deletes_to_send(&self, r: &ComputeRound) -> Vec<RelPath> {
        // A retired whiteout's deletion is done on P: sending it again could
        // delete a file P created since (the client's cursor is past it).
        let mut out: Vec<RelPath> =
            r.scan.whiteouts.iter().filter(|w| !self.is_retired(w)).map(|w| w.path.clone()).collect();
        // A synced copy missing from another upper layer (a wiped or
        // replaced disk) is not a deletion; nor from an upper layer with no
        // synced entry left (its contents wiped), except with overlayfs,
        // which leaves no whiteout where its lower lookup missed the path
        // (sshfs caching "absent"), so the manifest is all that tells.
        let infer = match self.upper_id {
            UpperIdentity::Known => !r.known.is_empty() || r.merged.is_some(),
            UpperIdentity::Unrecorded => !r.known.is_empty(),
            UpperIdentity::Replaced => false,
        };
        if infer {
            // A path that the filter now keeps local (the configuration
            // changed since it was synced) is not deleted on P either.
            let gone = r
                .base
                .iter()
                .filter(|(p, sig)| !r.known.contains_key(*p) && self.filter.is_synced(p, sig.kind == EntryKind::Dir));
            out.extend(gone.map(|(p, _)| p.clone()));
        }
        out.sort();
        out.dedup();
        out
    }

    /// Step 1, after P answered: the processed whiteouts are removed, so
    /// that what P kept (modified there) shows through again, without
    /// waiting for any grace period (see [`ComputeSide::finish_deletes_reported`]).
    pub fn finish_deletes(&mut self, r: &mut ComputeRound, sent: &[RelPath]) -> Result<(), EngineError> {
        let sent: BTreeSet<&RelPath> = sent.iter().collect();
        let mut retired = false;
        let markers = std::mem::take(&mut r.scan.whiteouts);
        for w in &markers {
            if sent.contains(&w.path) {
                match &w.unionfs {
                    Some(marker) => cs_union::remove_whiteout(&self.cfg.upper, marker)?,
                    // overlayfs's markers stay: retired, never sent again.
                    None => {
                        self.retire_marker(r, &w.path, w.ino);
                        retired = true;
                    }
                }
                r.whiteouts_sent.push(w.clone());
            }
        }
        r.scan.whiteouts = markers;
        if retired {
            self.save_retired()?;
        }
        Ok(())
    }

    /// Step 1, after P answered with its report: the whiteout of a path P
    /// kept or refused to delete goes now (P's version shows through
    /// again); the whiteout of a path P deleted stays for
    /// [`ComputeConfig::whiteout_grace`], hiding what the lower's caches
    /// still show of it, and is not sent again. Retired whiteouts whose
    /// grace is over go too.
    pub fn finish_deletes_reported(
        &mut self,
        r: &mut ComputeRound,
        sent: &[RelPath],
        report: &DeleteReport,
    ) -> Result<(), EngineError> {
        let grace_ms = self.cfg.whiteout_grace.as_millis() as u64;
        let now = crate::now_ms();
        let sent: BTreeSet<&RelPath> = sent.iter().collect();
        let deleted: BTreeSet<&RelPath> = report.deleted.iter().collect();
        let mut changed = false;
        let markers = std::mem::take(&mut r.scan.whiteouts);
        for w in &markers {
            let Some(marker) = &w.unionfs else {
                // overlayfs: removing a whiteout behind its back is undefined,
                // so every marker sent stays, retired. What P kept comes
                // back through step 4 (P sends what it has below a path C
                // hides, whatever its size and age), written over the marker
                // through the merged view.
                if sent.contains(&w.path) && !self.is_retired(w) {
                    self.retire_marker(r, &w.path, w.ino);
                    changed = true;
                    r.whiteouts_sent.push(w.clone());
                }
                continue;
            };
            let due = match self.retired.get(&w.path) {
                Some(&since) => now.saturating_sub(since) >= grace_ms,
                None if !sent.contains(&w.path) => false,
                // Kept or refused on P, or no grace: at once.
                None if grace_ms == 0 || !deleted.contains(&w.path) => true,
                None => {
                    self.retired.insert(w.path.clone(), now);
                    changed = true;
                    false
                }
            };
            if due {
                cs_union::remove_whiteout(&self.cfg.upper, marker)?;
                r.whiteouts_sent.push(w.clone());
                changed |= self.retired.remove(&w.path).is_some();
            }
        }
        r.scan.whiteouts = markers;
        if changed {
            self.save_retired()?;
        }
        Ok(())
    }

    /// Is this marker's deletion done on P (or the engine's own)? With
    /// overlayfs, only the very marker that was retired (same inode).
    fn is_retired(&self, m: &Marker) -> bool {
        self.retired.contains_key(&m.path) && (m.unionfs.is_some() || self.retired_ino.get(&m.path) == Some(&m.ino))
    }

    /// overlayfs: `path`'s marker (inode `ino`) is retired from now on; a
    /// retired marker at that path that this round's scan found gone no
    /// longer ends at commit. The caller saves.
    fn retire_marker(&mut self, r: &mut ComputeRound, path: &RelPath, ino: u64) {
        self.retired.insert(path.clone(), crate::now_ms());
        self.retired_ino.insert(path.clone(), ino);
        r.retired_gone.retain(|g| g != path);
    }

    /// overlayfs, step 4: a directory made through the merged view inside
    /// one the lower also has comes out opaque (the kernel does that so a
    /// lower directory appearing later is not merged in). It is P's
    /// directory, not C's deletion of it: retired at once.
    fn retire_if_opaque(&mut self, r: &mut ComputeRound, p: &RelPath) -> Result<(), EngineError> {
        let abs = self.cfg.upper.join(p.as_path());
        if !cs_union::overlay::is_opaque_dir(&abs)? {
            return Ok(());
        }
        let md = std::fs::symlink_metadata(&abs).map_err(|e| EngineError::io("stat", &abs, e))?;
        self.retire_marker(r, p, md.ino());
        self.save_retired()
    }

    /// Whiteouts waiting for their grace period (status, tests).
    pub fn retired_whiteouts(&self) -> usize {
        self.retired.len()
    }

    fn save_retired(&self) -> Result<(), EngineError> {
        state::save(&self.cfg.state_dir.join(RETIRED_FILE), &self.retired)?;
        if !self.retired_ino.is_empty() || matches!(self.cfg.union, UnionKind::Overlay { .. }) {
            state::save(&self.cfg.state_dir.join(RETIRED_INO_FILE), &self.retired_ino)?;
        }
        Ok(())
    }

    /// Step 2: P no longer has these paths. Synced copies that did not change
    /// here are deleted from the upper layer; local edits and new local files
    /// stay (they go to P in step 3: modification wins).
    ///
    /// With [`PullPolicy::Changed`] P also names what it deleted that C does
    /// not hold, which C may still see through the lower's caches; every
    /// path P deleted that the upper layer no longer has is then hidden by a
    /// whiteout, retired at once (never sent back to P as C's deletion,
    /// removed after [`ComputeConfig::whiteout_grace`]), so that the merged
    /// view shows the deletion when the round commits.
    pub fn apply_deletes(&mut self, r: &mut ComputeRound, paths: &[RelPath]) -> Result<DeleteReport, EngineError> {
        let mut report = DeleteReport::default();
        let mut paths: Vec<&RelPath> = paths.iter().collect();
        paths.sort();
        paths.dedup();
        // overlayfs: P deleted (or moved away) a directory the upper layer
        // has too, so the overlay's cached view of it still refers to the
        // lower's, which is gone: operations there fail with ESTALE until a
        // lower that revalidates tells it (a plain directory never does).
        if r.merged.is_some()
            && paths
                .iter()
                .any(|p| self.upper.lstat(p).ok().flatten().is_some_and(|st| st.kind == cs_safe_fs::FileKind::Dir))
        {
            if let Some(m) = &r.merged {
                forget_cached_names(m.path(), "P deleted a directory the upper layer also has");
            }
        }
        // Directories left for a later round (see `not_yet`): their parents wait with them.
        let mut not_yet: Vec<RelPath> = Vec::new();
        // Deepest first, so that a directory is emptied before it is removed.
        for p in paths.into_iter().rev() {
            if !self.filter.is_synced(p, false) {
                report.refused.push((p.clone(), "not a synced path on this compute server".into()));
                continue;
            }
            let st = match self.upper.lstat(p) {
                Ok(st) => st,
                Err(e) => {
                    report.refused.push((p.clone(), e.to_string()));
                    continue;
                }
            };
            let Some(current) = st.as_ref().and_then(Sig::of) else {
                // Not in the upper layer. With overlayfs, what the merged
                // view shows there is the lower's (P's old entry, in sshfs's
                // caches or in a dentry not revalidated yet): removed through
                // the merged view, which hides it behind a whiteout.
                if let (None, Some(merged)) = (&st, &r.merged) {
                    remove_lower_entry(merged, p);
                }
                r.known.remove(p);
                r.next.remove(p);
                report.deleted.push(p.clone());
                continue;
            };
            // A directory an ignore rule names (`node_modules/`) is C's own.
            if !self.filter.is_synced(p, current.kind == EntryKind::Dir) {
                report.refused.push((p.clone(), "not a synced path on this compute server".into()));
                continue;
            }
            if r.base.get(p) != Some(&current) {
                report.kept.push(p.clone());
                continue;
            }
            if not_yet.iter().any(|d| d.starts_with(p)) {
                // Kept as a directory for local files, it would go back to P as new.
                not_yet.push(p.clone());
                report.refused.push((p.clone(), "a directory below it is not removed yet: next round".into()));
                continue;
            }
            let writer = r.merged.as_ref().unwrap_or(&self.upper);
            // The upper layer has it: a merged view that says it has not
            // holds stale dentries (see `retry_if_stale`).
            let removed = match current.kind {
                EntryKind::Dir => match retry_if_stale_or_missing(r.merged.as_ref(), || writer.remove_dir(p)) {
                    Ok(()) => true,
                    Err(e) if e.io_kind() == Some(std::io::ErrorKind::DirectoryNotEmpty) => false,
                    // overlayfs over a lower whose caches still list the directory P
                    // deleted (sshfs: its attribute cache, `dcache_timeout`): the overlay's
                    // rmdir lists the lower part to check it is empty, and the lower answers
                    // ENOENT until its caches expire. Left as it is, still held and still
                    // the synced copy, so P names it again next round; failing the round
                    // instead held every other change back for those seconds.
                    Err(e) if r.merged.is_some() && e.is_not_found() => {
                        tracing::info!(path = %p, error = %e, "P's deletion of a directory left for a later round");
                        not_yet.push(p.clone());
                        report.refused.push((p.clone(), format!("not removed yet ({e}): next round")));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
                _ => {
                    retry_if_stale_or_missing(r.merged.as_ref(), || writer.remove_file(p))?;
                    true
                }
            };
            if removed {
                r.known.remove(p);
                r.next.remove(p);
                report.deleted.push(p.clone());
            } else {
                // Still holds local files: it must exist on P again, so it
                // is sent in step 3 as if new. (overlayfs: its lower part is
                // gone from under the merged view.)
                r.stale_after_commit |= r.merged.is_some();
                r.next.remove(p);
                report.kept.push(p.clone());
            }
        }
        if r.merged.is_some() {
            self.retire_whiteouts_made(r, &report.deleted)?;
        } else if matches!(self.cfg.pull, PullPolicy::Changed { .. }) {
            self.hide_deleted(r, &report.deleted)?;
        }
        Ok(report)
    }

    /// overlayfs, after step 2: a deletion made through the merged view of a
    /// path the lower still has leaves a whiteout. It is P's deletion, not
    /// C's: retired at once (never sent back to P).
    fn retire_whiteouts_made(&mut self, r: &mut ComputeRound, deleted: &[RelPath]) -> Result<(), EngineError> {
        let mut changed = false;
        for p in deleted {
            let md = std::fs::symlink_metadata(self.cfg.upper.join(p.as_path())).ok();
            if let Some(md) = md.filter(cs_union::overlay::is_whiteout) {
                self.retire_marker(r, p, md.ino());
                changed = true;
            }
        }
        if changed {
            self.save_retired()?;
        }
        Ok(())
    }

    /// Step 2's whiteouts: each path P deleted that the upper layer does not
    /// have gets one (unless something already hides it), retired at once.
    /// Without a grace (a lower without caches) there is nothing to hide.
    fn hide_deleted(&mut self, r: &mut ComputeRound, deleted: &[RelPath]) -> Result<(), EngineError> {
        if self.cfg.whiteout_grace.is_zero() {
            return Ok(());
        }
        let now = crate::now_ms();
        let mut deleted: Vec<&RelPath> = deleted.iter().collect();
        deleted.sort();
        let mut roots: Vec<&RelPath> = Vec::new();
        for p in deleted {
            // Below a whiteout made here: hidden with it.
            if roots.last().is_some_and(|root| p.starts_with(root)) {
                continue;
            }
            // The user made something there since (or a kept directory):
            // it shows, and goes to P by the usual rules.
            if self.upper.lstat(p)?.is_some() || cs_union::is_hidden(&self.cfg.upper, p) {
                continue;
            }
            // overlayfs deletes through its merged view instead (step 2).
            let UnionKind::UnionfsFuse(layout) = &self.cfg.union else { return Ok(()) };
            cs_union::create_whiteout(&self.cfg.upper, *layout, p)?;
            self.retired.insert(p.clone(), now);
            // A retired whiteout at this path whose marker was gone at the
            // scan is alive again: the commit must not end it.
            r.retired_gone.retain(|g| g != p);
            roots.push(p);
        }
        if !roots.is_empty() {
            self.save_retired()?;
        }
        Ok(())
    }

    /// Step 3: every upper entry that is new or changed since the last
    /// committed round, directories before their contents.
    pub fn changes_to_send(&self, r: &ComputeRound) -> Vec<RelPath> {
        r.known.iter().filter(|(p, s)| r.next.get(*p) != Some(*s)).map(|(p, _)| p.clone()).collect()
    }

    /// See [`OwnDirs`].
    pub fn with_own_dirs(mut self, tell: OwnDirs) -> Self {
        self.own_dirs = Some(tell);
        self
    }

    /// The step in flight's counters (steps 3 and 4), for a status reader on
    /// another thread; whoever runs the step ends it ([`Progress::end`]).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Step 3: packs `paths` into a compressed tar stream written to `w`.
    pub fn pack_changes<W: Write>(
        &mut self,
        r: &mut ComputeRound,
        paths: &[RelPath],
        w: W,
    ) -> Result<(W, PackStats), EngineError> {
        // The totals as the scan saw them: files that grow meanwhile may carry more.
        let bytes_total =
            paths.iter().filter_map(|p| r.known.get(p)).filter(|s| s.kind == EntryKind::File).map(|s| s.size).sum();
        self.progress.begin(3, Some(paths.len() as u64), Some(bytes_total));
        let mut tar = PackWriter::new(w, self.cfg.zstd_level)?;
        for p in paths {
            // Counted when taken up: every `continue` below is an entry done with too.
            self.progress.entry_done();
            let Some(st) = self.upper.lstat(p)? else {
                // Gone since the scan: deleted (or renamed away) through the
                // merged view during the round. `next` keeps what it had: a
                // synced copy's committed entry stays in the manifest, so
                // that the next round sends its deletion even when the union
                // wrote no whiteout (a lower caching "absent"). Dropping it
                // here lost the deletion for good (soak30); a new file has
                // no entry in `next` and none is made.
                r.known.remove(p);
                continue;
            };
            let Some(mut sig) = Sig::of(&st) else {
                r.problems.push(format!("{p}: became a special file, not synced"));
                continue;
            };
            let mut header = EntryHeader {
                path: p.clone(),
                kind: sig.kind,
                mode: st.mode,
                mtime: st.mtime,
                size: 0,
                link_target: None,
            };
            match sig.kind {
                EntryKind::Dir => tar.append_dir(&header)?,
                EntryKind::Symlink => {
                    header.link_target = Some(self.upper.read_link(p)?);
                    tar.append_symlink(&header)?;
                }
                EntryKind::File => {
                    let f = match self.upper.open_file(p) {
                        Ok(f) => f,
                        // Gone since the lstat (a log rotated): as above.
                        Err(e) if e.is_not_found() => {
                            r.known.remove(p);
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    // A file that changed since the scan, or changes while
                    // it is read, is deferred (and withdrawn from the
                    // stream): `next` keeps what it had, so the next round
                    // sends it again. See `busy`.
                    let scratch = if self.busy.wants_snapshot(p, &self.cfg.busy) {
                        self.tmp_seq += 1;
                        Some(temp_name(&self.cfg.client, self.tmp_seq))
                    } else {
                        None
                    };
                    let snapshot = scratch.as_deref().map(|name| (&self.cfg.busy, name));
                    let packed = busy::pack_file(
                        &mut tar,
                        &self.upper,
                        p,
                        f,
                        header,
                        r.known.get(p).copied(),
                        snapshot,
                        Some(&self.progress),
                    )?;
                    match busy::note(&mut r.busy, p, &packed) {
                        Some(s) => sig = s,
                        None => continue,
                    }
                }
            }
            r.sent_log.append(p, sig)?;
            r.known.insert(p.clone(), sig);
            r.next.insert(p.clone(), sig);
        }
        Ok(tar.finish()?)
    }

    /// Step 4: applies P's tar stream to the upper layer, each entry
    /// atomically, and only where the local entry is still what this round
    /// last saw, through the look-ahead loop (see [`lookahead`]).
    /// `stop_after` aborts after that many entries (fault tests).
    pub fn apply_writes<R: Read>(
        &mut self,
        r: &mut ComputeRound,
        input: R,
        stop_after: Option<usize>,
    ) -> Result<ApplyReport, EngineError> {
        let limits = self.cfg.limits.clone();
        // The project announces no totals before its stream: done so far only.
        self.progress.begin(4, None, None);
        let mut step = WritesOut { side: self, r, report: ApplyReport::default(), failpoint_hit: false };
        let outcome = lookahead::apply_stream(&mut step, input, &limits, stop_after);
        let report = step.report;
        r.not_applied.extend(report.not_applied.iter().cloned());
        outcome.map(|()| report)
    }

    fn apply_entry(
        &mut self,
        r: &mut ComputeRound,
        h: &EntryHeader,
        data: &mut dyn Read,
        report: &mut ApplyReport,
    ) -> Result<Option<Staged>, EngineError> {
        self.progress.entry_done();
        let h = &*crate::without_setid(h);
        let p = &h.path;
        if !self.filter.is_synced(p, h.kind == EntryKind::Dir) {
            r.problems.push(format!("{p}: P sent a path that is not synced here; ignored"));
            return Ok(None);
        }
        let expected = r.known.get(p).copied();
        let current = match self.upper.lstat(p) {
            Ok(st) => st.and_then(|s| Sig::of(&s)),
            Err(_) => {
                report.not_applied.push(p.clone());
                return Ok(None);
            }
        };
        if current != expected {
            report.not_applied.push(p.clone());
            return Ok(None);
        }
        if h.kind == EntryKind::Dir {
            if let Some(tell) = &self.own_dirs {
                tell(p);
            }
            match current.map(|s| s.kind) {
                Some(EntryKind::Dir) => {}
                Some(_) => {
                    writer(&self.upper, &r.merged).remove_file(p)?;
                    writer(&self.upper, &r.merged).create_dir(p, h.mode)?;
                }
                // The merged view shows the lower's directory: P's mode and
                // mtime below copy it up.
                None if r.merged.as_ref().map(|m| clear_lower_entry(m, p, true)).transpose()? == Some(true) => {}
                None => {
                    if let Err(e) = writer(&self.upper, &r.merged).create_dir(p, h.mode) {
                        if e.is_not_found() {
                            report.not_applied.push(p.clone());
                            return Ok(None);
                        }
                        return Err(e.into());
                    }
                }
            }
            writer(&self.upper, &r.merged).set_mode(p, h.mode)?;
            writer(&self.upper, &r.merged).set_mtime(p, h.mtime)?;
            if r.merged.is_some() && current.is_none() {
                self.retire_if_opaque(r, p)?;
            }
            self.record_applied(r, p, report)?;
            return Ok(None);
        }
        self.tmp_seq += 1;
        let tmp_name = temp_name(&self.cfg.client, self.tmp_seq);
        let written = if h.kind == EntryKind::File {
            let mut data = self.progress.counting(data);
            writer(&self.upper, &r.merged).write_temp(p, &tmp_name, &mut data, h.mode, h.mtime, false).map(
                |(tmp, _, n)| {
                    report.bytes += n;
                    tmp
                },
            )
        } else {
            let target = h.link_target.as_deref().unwrap_or_default();
            writer(&self.upper, &r.merged).symlink_temp(p, &tmp_name, target, h.mtime)
        };
        match written {
            Ok(tmp) => Ok(Some(Staged { tmp, target: p.clone(), expected })),
            // The directory went away under us (the user removed it during
            // the round): the user's action stands; P keeps it unseen.
            Err(e) if e.is_not_found() => {
                report.not_applied.push(p.clone());
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Renames a staged file into place if the local entry is still what
    /// this round last saw; otherwise the user's version stays.
    fn finalize(&mut self, r: &mut ComputeRound, st: Staged, report: &mut ApplyReport) -> Result<(), EngineError> {
        let Staged { tmp, target, expected } = st;
        let now = self.upper.lstat(&target)?.and_then(|s| Sig::of(&s));
        let clear = now == expected && (now.map(|s| s.kind) != Some(EntryKind::Dir) || self.clear_dir(r, &target)?);
        if !clear {
            writer(&self.upper, &r.merged).remove_file(&tmp)?;
            report.not_applied.push(target);
            return Ok(());
        }
        if let (None, Some(merged)) = (now, &r.merged) {
            // The lower's stale entry could not be cleared (a directory the
            // lower lost but the overlay still caches): P's version waits for
            // a later round, when the overlay has caught up.
            let placed = retry_if_stale(Some(merged), || {
                clear_lower_entry(merged, &target, false)?;
                merged.rename(&tmp, &target)
            });
            if let Err(e) = placed {
                tracing::warn!(path = %target, error = %e, "P's version not placed in the merged view this round");
                merged.remove_file(&tmp)?;
                report.not_applied.push(target);
                return Ok(());
            }
            return self.record_applied(r, &target, report);
        }
        writer(&self.upper, &r.merged).rename(&tmp, &target)?;
        self.record_applied(r, &target, report)
    }

    fn record_applied(
        &mut self,
        r: &mut ComputeRound,
        p: &RelPath,
        report: &mut ApplyReport,
    ) -> Result<(), EngineError> {
        let Some(sig) = self.upper.lstat(p)?.and_then(|s| Sig::of(&s)) else {
            return Ok(());
        };
        r.applied_log.append(p, sig)?;
        r.known.insert(p.clone(), sig);
        r.next.insert(p.clone(), sig);
        report.applied += 1;
        Ok(())
    }

    /// P replaced directory `p` by a file. The local directory may go only if
    /// everything below it is safe on P: sent or received this round and not
    /// touched since. Returns whether `p` is gone.
    fn clear_dir(&mut self, r: &mut ComputeRound, p: &RelPath) -> Result<bool, EngineError> {
        let below: Vec<RelPath> =
            r.known.range(p.clone()..).skip(1).take_while(|(q, _)| q.starts_with(p)).map(|(q, _)| q.clone()).collect();
        for q in &below {
            let now = self.upper.lstat(q)?.and_then(|s| Sig::of(&s));
            if now.is_none() || now != r.next.get(q).copied() {
                return Ok(false);
            }
        }
        writer(&self.upper, &r.merged).remove_tree(p)?;
        for q in below {
            r.known.remove(&q);
            r.next.remove(&q);
        }
        Ok(true)
    }

    /// Step 5, first half: persists the manifest this round will commit as
    /// *pending*, and returns what P must know to mirror it.
    pub fn prepare_commit(&mut self, r: &ComputeRound, cursor: Cursor) -> Result<CommitRequest, EngineError> {
        let old = &self.manifest.entries;
        let added = r.next.keys().filter(|p| !old.contains_key(*p)).cloned().collect();
        let removed = old.keys().filter(|p| !r.next.contains_key(*p)).cloned().collect();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            cursor: Some(cursor),
            rounds: self.manifest.rounds + 1,
            entries: r.next.clone(),
        };
        state::save(&self.pending_path(), &PendingCommit { round_id: r.round_id, manifest })?;
        self.pending = Some(r.round_id);
        Ok(CommitRequest {
            round_id: r.round_id,
            held: HeldDelta { added, removed, digest: held_digest(r.next.keys()) },
            not_applied: r.not_applied.iter().cloned().collect(),
        })
    }

    /// Step 5, second half (after P committed): the pending manifest becomes
    /// the manifest. Only now does the round count.
    pub fn commit(&mut self, r: ComputeRound) -> Result<(), EngineError> {
        self.busy.commit(&r.busy);
        let first_round = self.manifest.cursor.is_none();
        if self.upper_id != UpperIdentity::Known {
            state::save(&self.cfg.state_dir.join(UPPER_ID_FILE), &upper_root_id(&self.cfg.upper)?)?;
            self.upper_id = UpperIdentity::Known;
        }
        let stale = r.stale_after_commit;
        let before = self.retired.len();
        for p in &r.retired_gone {
            self.retired.remove(p);
            self.retired_ino.remove(p);
        }
        drop(r);
        self.resolve_pending(true)?;
        if self.retired.len() != before {
            self.save_retired()?;
        }
        // overlayfs: see `forget_cached_names`.
        if let (true, UnionKind::Overlay { merged }) = (first_round || stale, &self.cfg.union) {
            forget_cached_names(merged, if first_round { "the first round" } else { "a round left stale names" });
        }
        Ok(())
    }

    /// Files that keep changing, as of the last committed round: deferred,
    /// or sent as snapshots (status).
    pub fn busy_files(&self) -> Vec<BusyFile> {
        self.busy.files()
    }
}

/// The `.csignore` rules P sent last, kept in `state_dir`; none at first. A
/// file that does not parse (damaged) counts as none: the next hello
/// answer brings the rules again before the round acts on anything.
fn load_ignore_rules(state_dir: &std::path::Path) -> IgnoreRules {
    let path = state_dir.join(IGNORE_RULES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return IgnoreRules::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignore rules unreadable, none until the next hello");
            return IgnoreRules::default();
        }
    };
    IgnoreRules::parse(&path.display().to_string(), &bytes).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "ignore rules unusable, none until the next hello");
        IgnoreRules::default()
    })
}

/// overlayfs: makes the overlay forget the names it caches (its unused
/// dentries; [`cs_union::overlay::forget_cached_names`] remounts it, which
/// touches no other filesystem), after a few kinds of rounds only:
/// - a client's first round: it had no cursor, so it carried none of P's
///   changes, and a name looked up in the merged view before P made it
///   (between the mount and this round) would stay "absent" for good; from
///   now on every change of P's comes through the rounds;
/// - a round that removed from the lower what a directory of the merged view
///   still refers to (a directory P deleted that C keeps): the overlay would
///   list it empty until a lower that revalidates (sshfs, after its cache
///   timeouts) tells it, a plain directory never;
/// - a round that found P deleting a directory the upper layer also has
///   (see `apply_deletes`; moved directories need more:
///   [`forget_cached_inodes`]);
/// - an operation of the round that met a stale entry ([`retry_on`]).
fn forget_cached_names(merged: &Path, why: &str) {
    match cs_union::overlay::forget_cached_names(merged) {
        Ok(()) => tracing::info!(why, "the overlay's cached names dropped (see docs/union.md)"),
        Err(e) => tracing::warn!(why, error = %e, "could not drop the overlay's cached names"),
    }
}

/// overlayfs, after settling moved directories: the overlay keeps an unused
/// directory's inode cached after its dentry goes, with the redirect and the
/// lower layers it merged, and a remount prunes dentries only (seen on 6.18:
/// `mv` of project directories in crates/cs-actor/tests/user_union.rs shows
/// the moved directory empty once the lower lost the old path). Only dropping
/// reclaimable dentries and inodes machine-wide evicts it, the cost of a cold
/// cache for every filesystem; it is paid once per round that settled moves.
fn forget_cached_inodes() {
    match std::fs::write("/proc/sys/vm/drop_caches", "2") {
        Ok(()) => tracing::info!("moved directories settled: dropped the kernel's dentry and inode caches"),
        Err(e) => tracing::warn!(error = %e, "could not drop the kernel's dentry and inode caches"),
    }
}

/// An operation through overlayfs's merged view that met a stale handle (a
/// lower that changed behind the overlay's back and has not revalidated
/// yet): the overlay's cached names are dropped (see [`forget_cached_names`])
/// and it is tried once more. Other errors, and a second failure, are
/// returned. `merged`: `None` when the operation is on the upper layer
/// (unionfs-fuse): then it is only tried again.
fn retry_if_stale<T>(
    merged: Option<&SafeRoot>,
    op: impl FnMut() -> Result<T, cs_safe_fs::FsError>,
) -> Result<T, cs_safe_fs::FsError> {
    retry_on(merged, &[std::io::ErrorKind::StaleNetworkFileHandle], op)
}

/// [`retry_if_stale`], also when the merged view says "not found" of an
/// entry the caller knows the upper layer has.
fn retry_if_stale_or_missing<T>(
    merged: Option<&SafeRoot>,
    op: impl FnMut() -> Result<T, cs_safe_fs::FsError>,
) -> Result<T, cs_safe_fs::FsError> {
    retry_on(merged, &[std::io::ErrorKind::StaleNetworkFileHandle, std::io::ErrorKind::NotFound], op)
}

fn retry_on<T>(
    merged: Option<&SafeRoot>,
    kinds: &[std::io::ErrorKind],
    mut op: impl FnMut() -> Result<T, cs_safe_fs::FsError>,
) -> Result<T, cs_safe_fs::FsError> {
    match op() {
        Err(e) if e.io_kind().is_some_and(|k| kinds.contains(&k)) => {
            tracing::info!(error = %e, "stale entry in the merged view: trying again");
            if let Some(m) = merged {
                forget_cached_names(m.path(), "a stale entry in the merged view");
            }
            op()
        }
        r => r,
    }
}

/// The upper layer's root directory as (device, inode).
fn upper_root_id(upper: &std::path::Path) -> Result<(u64, u64), EngineError> {
    let md = std::fs::metadata(upper).map_err(|e| EngineError::io("stat the upper layer", upper, e))?;
    Ok((md.dev(), md.ino()))
}

/// Where a round makes its changes: overlayfs's merged view when the round
/// has one, else the upper layer (unionfs-fuse).
fn writer<'a>(upper: &'a SafeRoot, merged: &'a Option<SafeRoot>) -> &'a SafeRoot {
    merged.as_ref().unwrap_or(upper)
}

/// overlayfs: P's entry is about to be placed at `p`, where the upper layer
/// has nothing, but the merged view may still show the lower's older entry
/// there (sshfs's caches, a dentry not revalidated yet). A lower directory
/// where P now has a non-directory, or the reverse, is removed through the
/// merged view first: nothing of it is the user's (the upper layer would
/// hold it). Returns whether a directory is already there (`want_dir`: P's
/// is one, which then needs no `mkdir`).
fn clear_lower_entry(merged: &SafeRoot, p: &RelPath, want_dir: bool) -> Result<bool, cs_safe_fs::FsError> {
    let Some(st) = merged.lstat(p)? else { return Ok(false) };
    let is_dir = st.kind == cs_safe_fs::FileKind::Dir;
    match (is_dir, want_dir) {
        (true, true) => return Ok(true),
        (false, false) => return Ok(false),
        (true, false) => merged.remove_tree(p)?,
        (false, true) => merged.remove_file(p)?,
    }
    Ok(false)
}

/// overlayfs, step 2: P deleted `p`, which the upper layer does not have;
/// the merged view may still show the lower's entry there. Removed through
/// the merged view (a directory only when empty: what the user made in it
/// lives in the upper layer and stays). Best effort: what cannot be removed
/// now is the lower's, gone once the lower shows P's deletion.
fn remove_lower_entry(merged: &SafeRoot, p: &RelPath) {
    let removed = retry_if_stale(Some(merged), || match merged.lstat(p) {
        Ok(Some(st)) if st.kind == cs_safe_fs::FileKind::Dir => merged.remove_dir(p),
        Ok(Some(_)) => merged.remove_file(p),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    });
    if let Err(e) = removed {
        if !e.is_not_found() {
            tracing::debug!(path = %p, error = %e, "P's deletion not made through the merged view now");
        }
    }
}

/// The paths of `sorted` not below another of them.
fn hidden_roots<'a>(sorted: impl Iterator<Item = &'a RelPath>) -> Vec<RelPath> {
    let mut out: Vec<RelPath> = Vec::new();
    for p in sorted {
        if !out.last().is_some_and(|root| p.starts_with(root)) {
            out.push(p.clone());
        }
    }
    out
}

#[cfg(test)]
mod snapshot_cursor_tests {
    use super::*;

    #[test]
    fn a_client_without_a_cursor_adopts_the_snapshots_and_one_with_a_cursor_keeps_its_own() {
        let state = tempfile::tempdir().unwrap();
        assert_eq!(committed_cursor(state.path()).unwrap(), None, "no state: no cursor");
        let s = Cursor { epoch: 7, seq: 40 };
        assert!(adopt_snapshot_cursor(state.path(), s).unwrap());
        assert_eq!(committed_cursor(state.path()).unwrap(), Some(s));
        // A later start with a newer snapshot: the cursor the rounds committed stays.
        assert!(!adopt_snapshot_cursor(state.path(), Cursor { epoch: 7, seq: 90 }).unwrap());
        assert_eq!(Manifest::load(&state.path().join(MANIFEST_FILE)).unwrap().cursor, Some(s));
    }
}
