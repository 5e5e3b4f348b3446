//! The packer actor: owns the sync engine's compute side and runs every
//! step of it (scan, pack, apply, commit) on a blocking thread, never on the
//! async threads. One operation at a time; its observable state is readable
//! while an operation runs.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use cs_engine::{ApplyReport, ComputeRound, ComputeSide, EngineError};
use cs_protocol::{CommitRequest, Cursor, DeleteReport, Hello, RelPath};
use cs_supervision::{Heartbeat, Observable};
use cs_tarstream::PackStats;
use serde::Serialize;

/// The engine and the round in flight, behind one lock: operations are
/// serialised by it.
struct Engine {
    side: ComputeSide,
    round: Option<ComputeRound>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PackerState {
    /// The operation running now, if any.
    pub busy: Option<&'static str>,
    pub busy_for_ms: u64,
    /// Entries packed (step 3) and applied (step 4) since the service started.
    pub entries_packed: u64,
    pub entries_applied: u64,
    pub bytes_packed: u64,
    pub bytes_applied: u64,
    /// Entries the scan could not sync (non-UTF-8 names, special files), from the last scan.
    pub scan_problems: Vec<String>,
    pub last_error: Option<String>,
    /// Files that keep changing, as of the last committed round: not sent
    /// whole (deferred), or sent as a snapshot.
    pub deferred: DeferredFiles,
    /// Snapshots of busy files sent since the service started.
    pub snapshots_sent: u64,
    /// What the `.csignore` rules keep out of rounds, as of the last scan.
    pub ignored: IgnoredPaths,
    /// The last step that streamed (3 or 4): entries and file bytes done so far, of the totals
    /// where known (step 3: from the scan; step 4: none, the project announces no totals);
    /// `streaming` false once the packer is done with it. Null before the first.
    pub progress: Option<cs_engine::ProgressSnapshot>,
}

/// The `ignored` section of the packer's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IgnoredPaths {
    /// Upper-layer entries the rules keep out (a directory counts once:
    /// the scan does not enter it).
    pub count: u64,
    /// The first few (sorted).
    pub paths: Vec<String>,
    /// Patterns in the rules in force (the project's `.csignore`).
    pub patterns: u64,
    /// Why the project's `.csignore` is not in force, if it is not.
    pub error: Option<String>,
}

impl IgnoredPaths {
    fn of(side: &ComputeSide, round: &ComputeRound) -> Self {
        let ignored = round.ignored();
        IgnoredPaths {
            count: ignored.len() as u64,
            paths: ignored.iter().take(IGNORED_SHOWN).map(|p| p.to_string()).collect(),
            patterns: side.filter().ignore_rules().patterns() as u64,
            error: side.ignore_error().map(str::to_owned),
        }
    }
}

/// How many ignored paths the status names.
const IGNORED_SHOWN: usize = 10;

/// The `deferred` section of the packer's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeferredFiles {
    pub count: u64,
    /// The first few (sorted by path).
    pub files: Vec<cs_engine::BusyFile>,
}

/// How many busy files the status names.
const DEFERRED_SHOWN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PackerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("no round in progress (the packer was asked for a step out of order)")]
    NoRound,
    #[error("the packer's worker thread died: {0}")]
    Worker(String),
    #[error("the packer handed its engine back (Close): no step can run")]
    Closed,
}

pub struct Packer {
    /// `None` once handed back by [`Close`].
    engine: Arc<tokio::sync::Mutex<Option<Engine>>>,
    state: Arc<Mutex<(PackerState, Option<Instant>)>>,
    heartbeat: Heartbeat,
    /// Beaten with the packer's own on every chunk streamed: the round
    /// waiting on the packer progresses as the packer does.
    round_heartbeat: Option<Heartbeat>,
    /// The engine's counters of the step in flight, read without its lock.
    progress: cs_engine::Progress,
}

impl Packer {
    pub fn new(side: ComputeSide) -> Self {
        Packer {
            progress: side.progress(),
            engine: Arc::new(tokio::sync::Mutex::new(Some(Engine { side, round: None }))),
            state: Arc::new(Mutex::new((PackerState::default(), None))),
            heartbeat: Heartbeat::new(),
            round_heartbeat: None,
        }
    }

    /// Also beats `round` (the coordinator's heartbeat) on streaming progress.
    pub fn with_round_heartbeat(mut self, round: Heartbeat) -> Self {
        self.round_heartbeat = Some(round);
        self
    }

    /// The heartbeat the watchdog reads: busy during an operation, a beat per
    /// chunk streamed.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    fn beating<T>(&self, inner: T) -> Beating<T> {
        let mut beats = vec![self.heartbeat.clone()];
        beats.extend(self.round_heartbeat.clone());
        Beating { inner, beats }
    }

    /// Runs `f` on a blocking thread with the engine locked.
    fn run<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Engine) -> Result<R, PackerError> + Send + 'static,
    ) -> ResponseFuture<Result<R, PackerError>> {
        let engine = self.engine.clone();
        let state = self.state.clone();
        let hb = self.heartbeat.clone();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || {
                let mut guard = engine.blocking_lock();
                let Some(engine) = guard.as_mut() else { return Err(PackerError::Closed) };
                {
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.0.busy = Some(op);
                    s.1 = Some(Instant::now());
                }
                let busy = hb.busy();
                let r = f(engine);
                drop(busy);
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.0.busy = None;
                s.1 = None;
                if let Err(e) = &r {
                    s.0.last_error = Some(format!("{op}: {e}"));
                }
                r
            })
            .await;
            result.unwrap_or_else(|e| Err(PackerError::Worker(e.to_string())))
        })
    }

    fn with_round<R: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut ComputeSide, &mut ComputeRound) -> Result<R, EngineError> + Send + 'static,
    ) -> ResponseFuture<Result<R, PackerError>> {
        self.run(op, move |e| {
            let round = e.round.as_mut().ok_or(PackerError::NoRound)?;
            Ok(f(&mut e.side, round)?)
        })
    }

    fn counters(&self) -> Arc<Mutex<(PackerState, Option<Instant>)>> {
        self.state.clone()
    }
}

impl Actor for Packer {
    type Context = Context<Self>;
}

impl Observable for Packer {
    type State = PackerState;
    fn observe(&self) -> PackerState {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = s.0.clone();
        out.busy_for_ms = s.1.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0);
        out.progress = self.progress.snapshot();
        out
    }
}
cs_supervision::observable!(Packer);

/// The round id of a commit interrupted by a crash, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<u64>, PackerError>")]
pub struct PendingRound;
impl Handler<PendingRound> for Packer {
    type Result = ResponseFuture<Result<Option<u64>, PackerError>>;
    fn handle(&mut self, _: PendingRound, _: &mut Self::Context) -> Self::Result {
        self.run("pending", |e| Ok(e.side.pending_round()))
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), PackerError>")]
pub struct ResolvePending {
    pub committed_on_project: bool,
}
impl Handler<ResolvePending> for Packer {
    type Result = ResponseFuture<Result<(), PackerError>>;
    fn handle(&mut self, m: ResolvePending, _: &mut Self::Context) -> Self::Result {
        self.run("resolve", move |e| Ok(e.side.resolve_pending(m.committed_on_project)?))
    }
}

/// Scan the upper layer and open a round (any round in flight is dropped).
#[derive(Message)]
#[rtype(result = "Result<Hello, PackerError>")]
pub struct Begin;
impl Handler<Begin> for Packer {
    type Result = ResponseFuture<Result<Hello, PackerError>>;
    fn handle(&mut self, _: Begin, _: &mut Self::Context) -> Self::Result {
        let state = self.counters();
        self.run("scan", move |e| {
            e.round = None;
            let (round, hello) = e.side.begin_round()?;
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0.scan_problems = round.problems.clone();
            s.0.ignored = IgnoredPaths::of(&e.side, &round);
            drop(s);
            e.round = Some(round);
            Ok(hello)
        })
    }
}

/// P answered the hello: take its `.csignore` rules for the round.
#[derive(Message)]
#[rtype(result = "Result<(), PackerError>")]
pub struct HelloAnswered(pub cs_protocol::HelloReply);
impl Handler<HelloAnswered> for Packer {
    type Result = ResponseFuture<Result<(), PackerError>>;
    fn handle(&mut self, m: HelloAnswered, _: &mut Self::Context) -> Self::Result {
        let state = self.counters();
        self.run("ignore rules", move |e| {
            let round = e.round.as_mut().ok_or(PackerError::NoRound)?;
            e.side.hello_answered(round, &m.0)?;
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0.scan_problems = round.problems.clone();
            s.0.ignored = IgnoredPaths::of(&e.side, round);
            Ok(())
        })
    }
}

/// Hand the compute side back; the packer runs no step after. For processes that
/// keep the side across rounds and start a packer per round (the in-memory link's
/// users: the tests and the demo).
#[derive(Message)]
#[rtype(result = "Result<ComputeSide, PackerError>")]
pub struct Close;
impl Handler<Close> for Packer {
    type Result = ResponseFuture<Result<ComputeSide, PackerError>>;
    fn handle(&mut self, _: Close, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        Box::pin(async move { engine.lock().await.take().map(|e| e.side).ok_or(PackerError::Closed) })
    }
}

/// Drop the round in flight: nothing of it is committed.
#[derive(Message)]
#[rtype(result = "Result<(), PackerError>")]
pub struct Abort;
impl Handler<Abort> for Packer {
    type Result = ResponseFuture<Result<(), PackerError>>;
    fn handle(&mut self, _: Abort, _: &mut Self::Context) -> Self::Result {
        self.run("abort", |e| {
            e.round = None;
            Ok(())
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<RelPath>, PackerError>")]
pub struct HeldList;
impl Handler<HeldList> for Packer {
    type Result = ResponseFuture<Result<Vec<RelPath>, PackerError>>;
    fn handle(&mut self, _: HeldList, _: &mut Self::Context) -> Self::Result {
        self.run("held list", |e| Ok(e.side.held_list()))
    }
}

/// Step 1: the whiteouts to send.
#[derive(Message)]
#[rtype(result = "Result<Vec<RelPath>, PackerError>")]
pub struct DeletesToSend;
impl Handler<DeletesToSend> for Packer {
    type Result = ResponseFuture<Result<Vec<RelPath>, PackerError>>;
    fn handle(&mut self, _: DeletesToSend, _: &mut Self::Context) -> Self::Result {
        self.with_round("deletes to send", |side, r| Ok(side.deletes_to_send(r)))
    }
}

/// Step 1, after P answered: remove the processed whiteouts (those of
/// paths P deleted after a grace period: see `ComputeConfig::whiteout_grace`).
#[derive(Message)]
#[rtype(result = "Result<(), PackerError>")]
pub struct FinishDeletes {
    pub sent: Vec<RelPath>,
    pub report: DeleteReport,
}
impl Handler<FinishDeletes> for Packer {
    type Result = ResponseFuture<Result<(), PackerError>>;
    fn handle(&mut self, m: FinishDeletes, _: &mut Self::Context) -> Self::Result {
        self.with_round("remove whiteouts", move |side, r| side.finish_deletes_reported(r, &m.sent, &m.report))
    }
}

/// Step 2: delete what P no longer has.
#[derive(Message)]
#[rtype(result = "Result<DeleteReport, PackerError>")]
pub struct ApplyDeletes(pub Vec<RelPath>);
impl Handler<ApplyDeletes> for Packer {
    type Result = ResponseFuture<Result<DeleteReport, PackerError>>;
    fn handle(&mut self, m: ApplyDeletes, _: &mut Self::Context) -> Self::Result {
        self.with_round("apply deletes", move |side, r| side.apply_deletes(r, &m.0))
    }
}

/// Step 3: pack the changes into `writer` (a bridge to the websocket).
#[derive(Message)]
#[rtype(result = "Result<PackStats, PackerError>")]
pub struct PackChanges(pub Box<dyn crate::round::OutStream>);
impl Handler<PackChanges> for Packer {
    type Result = ResponseFuture<Result<PackStats, PackerError>>;
    fn handle(&mut self, m: PackChanges, _: &mut Self::Context) -> Self::Result {
        let state = self.counters();
        let out = self.beating(m.0);
        let progress = StepEnds(self.progress.clone());
        self.with_round("pack", move |side, r| {
            let _progress = progress;
            let paths = side.changes_to_send(r);
            let out = crate::progress::MeteredOut::new(out, "writes to project (compressed)");
            let out = MidStreamFailpoint { inner: out, hit: false };
            let (w, stats) = side.pack_changes(r, &paths, out)?;
            w.inner.into_inner().inner.finish().map_err(|source| EngineError::Stream { peer: "project", source })?;
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0.entries_packed += stats.entries;
            s.0.bytes_packed += stats.payload_bytes;
            Ok(stats)
        })
    }
}

/// Failpoint `mid-writes-to-project`: hit once, after the first bytes of the outbound stream
/// were written (and, when the failpoint is armed, flushed to the connection as a chunk), before
/// the stream is finished.
struct MidStreamFailpoint<W> {
    inner: W,
    hit: bool,
}

impl<W: std::io::Write> std::io::Write for MidStreamFailpoint<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if !self.hit && n > 0 {
            self.hit = true;
            if cs_failpoint::armed("mid-writes-to-project") {
                self.inner.flush()?;
            }
            cs_failpoint::hit("mid-writes-to-project").map_err(std::io::Error::other)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Ends the step's progress when dropped (the step returned, whichever way): its counts stay, final.
struct StepEnds(cs_engine::Progress);

impl Drop for StepEnds {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A stream that beats heartbeats on every read or write: progress for the
/// watchdog while a long pack or apply runs.
struct Beating<T> {
    inner: T,
    beats: Vec<Heartbeat>,
}

impl<T> Beating<T> {
    fn beat(&self) {
        self.beats.iter().for_each(Heartbeat::beat);
    }
}

impl<W: std::io::Write> std::io::Write for Beating<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.beat();
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Beating<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.beat();
        Ok(n)
    }
}

/// Step 4: apply P's stream read from `reader`.
#[derive(Message)]
#[rtype(result = "Result<ApplyReport, PackerError>")]
pub struct ApplyWrites(pub Box<dyn Read + Send>);
impl Handler<ApplyWrites> for Packer {
    type Result = ResponseFuture<Result<ApplyReport, PackerError>>;
    fn handle(&mut self, m: ApplyWrites, _: &mut Self::Context) -> Self::Result {
        let state = self.counters();
        let input = self.beating(m.0);
        let progress = StepEnds(self.progress.clone());
        self.with_round("apply", move |side, r| {
            let _progress = progress;
            let input = crate::progress::MeteredIn::new(input, "writes from project (compressed)");
            let report = side.apply_writes(r, input, None)?;
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0.entries_applied += report.applied as u64;
            s.0.bytes_applied += report.bytes;
            Ok(report)
        })
    }
}

/// Step 5, first half: persist the pending manifest, get P's request.
#[derive(Message)]
#[rtype(result = "Result<CommitRequest, PackerError>")]
pub struct PrepareCommit(pub Cursor);
impl Handler<PrepareCommit> for Packer {
    type Result = ResponseFuture<Result<CommitRequest, PackerError>>;
    fn handle(&mut self, m: PrepareCommit, _: &mut Self::Context) -> Self::Result {
        self.with_round("prepare commit", move |side, r| side.prepare_commit(r, m.0))
    }
}

/// Step 5, second half: P committed; adopt the pending manifest.
#[derive(Message)]
#[rtype(result = "Result<(), PackerError>")]
pub struct Commit;
impl Handler<Commit> for Packer {
    type Result = ResponseFuture<Result<(), PackerError>>;
    fn handle(&mut self, _: Commit, _: &mut Self::Context) -> Self::Result {
        let state = self.counters();
        self.run("commit", move |e| {
            let round = e.round.take().ok_or(PackerError::NoRound)?;
            e.side.commit(round)?;
            let busy = e.side.busy_files();
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.0.snapshots_sent += busy.iter().filter(|b| b.snapshot_sent).count() as u64;
            s.0.deferred =
                DeferredFiles { count: busy.len() as u64, files: busy.into_iter().take(DEFERRED_SHOWN).collect() };
            Ok(())
        })
    }
}
