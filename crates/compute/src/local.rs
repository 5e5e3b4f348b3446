//! An in-memory [`Link`] to a [`ProjectSide`] in the same process, so that the code
//! the compute service ships ([`round::run`] on the [`Packer`] actor) runs without a
//! broker: the invariant suite, the property test and the demo use it.
//!
//! The project end is a thin adapter: each request is checked against the round's
//! one order ([`RoundAt::admit`], as the broker checks it) and answered by the
//! matching `ProjectSide` call on a blocking thread; the tar streams go through OS
//! pipes. Faults ([`Cut`]) are injected here, where a dropped connection or a crash
//! would strike: a request that fails, a stream that ends after N entries, an answer
//! lost after the project committed.

use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use cs_engine::{ComputeSide, EngineError, ProjectRound, ProjectSide};
use cs_protocol::{ClientId, Cursor, EntryKind};
use cs_tarstream::{EntryHeader, Limits, PackWriter};
use cs_wire::{ClientMsg, ErrorCode, RoundAt, ServerMsg, Step};

use cs_supervision::ObserveExt;

use crate::connection::LinkError;

use crate::packer::{self, Packer};
use crate::round::{self, Link, OutStream, RoundError, RoundSummary};

/// Where to cut a round short, as a dropped connection or a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The request of step 2 fails (step 1 done on both sides).
    AfterStep1,
    /// The request of step 3 fails.
    AfterStep2,
    /// P stops reading the step-3 stream after this many entries.
    InStep3 { after_entries: usize },
    /// The request of step 4 fails.
    AfterStep3,
    /// The step-4 stream ends, aborted, after this many entries.
    InStep4 { after_entries: usize },
    /// The commit request fails before P commits.
    AfterStep4,
    /// P committed, C did not (the answer is lost).
    AfterProjectCommit,
}

/// What the project end saw of a round (the compute end's view is the [`RoundSummary`]).
#[derive(Debug, Clone, Default)]
pub struct ProjectRecord {
    /// Step 4: tar entries P packed, and their compressed bytes.
    pub sent_entries: u64,
    pub sent_bytes: u64,
    /// Step 4's cursor.
    pub cursor: Cursor,
    /// The cut that fired, if any.
    pub cut: Option<Cut>,
}

/// What one round did, as both ends saw it: the engine's own report type, so the engine's
/// step-level tests and the tests of the shipped round read the same fields.
pub use cs_engine::driver::RoundReport;

/// The report of a committed round, from the compute end's summary and the project end's record.
fn report(c: &RoundSummary, p: &ProjectRecord, problems: Vec<String>) -> RoundReport {
    let step3 = c.steps.iter().find(|s| s.step == Step::WritesToProject);
    RoundReport {
        deletes_to_project: c.deletes_to_project as usize,
        kept_on_project: c.kept_on_project.clone(),
        deletes_to_compute: c.deletes_to_compute as usize,
        kept_on_compute: c.kept_on_compute.clone(),
        sent_to_project: step3.map_or(0, |s| s.entries as usize),
        bytes_to_project: step3.map_or(0, |s| s.bytes),
        conflicts: c.conflicts.clone(),
        sent_to_compute: p.sent_entries as usize,
        bytes_to_compute: p.sent_bytes,
        skipped_on_compute: c.not_applied.clone(),
        cursor: p.cursor,
        problems,
    }
}

struct Project {
    /// The open round (moved to the blocking thread during a call), and where it is.
    round: Option<ProjectRound>,
    at: RoundAt,
    /// Streams C writes (step 3) and reads (step 4), by id, until a request takes them.
    from_compute: HashMap<u32, PipeReader>,
    to_compute: HashMap<u32, PipeWriter>,
    record: ProjectRecord,
}

/// The link. One round at a time, like a connection.
pub struct LocalLink {
    side: Arc<ProjectSide>,
    client: ClientId,
    cut: Option<Cut>,
    streams: AtomicU32,
    project: Mutex<Project>,
}

/// Compute's end of a step-3 pipe.
struct PipeOut(PipeWriter);
impl Write for PipeOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl OutStream for PipeOut {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        Ok(()) // The tar stream carries its own end: closing the pipe is enough.
    }
}

fn link_error(e: impl std::fmt::Display) -> RoundError {
    RoundError::Link(LinkError::InMemory(e.to_string()))
}

impl LocalLink {
    pub fn new(side: Arc<ProjectSide>, client: ClientId, cut: Option<Cut>) -> Self {
        LocalLink {
            side,
            client,
            cut,
            streams: AtomicU32::new(0),
            project: Mutex::new(Project {
                round: None,
                at: RoundAt::Closed,
                from_compute: HashMap::new(),
                to_compute: HashMap::new(),
                record: ProjectRecord::default(),
            }),
        }
    }

    /// What the project end saw.
    pub fn record(&self) -> ProjectRecord {
        self.lock().record.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Project> {
        self.project.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fires `cut` if it is this link's: the request fails.
    fn cut_if(&self, cut: Cut) -> Result<(), RoundError> {
        if self.cut == Some(cut) {
            self.lock().record.cut = Some(cut);
            return Err(RoundError::Link(LinkError::InMemory(format!("round cut on purpose at {cut:?}"))));
        }
        Ok(())
    }

    fn stop_after(&self, step: Step) -> Option<usize> {
        match (self.cut, step) {
            (Some(Cut::InStep3 { after_entries }), Step::WritesToProject) => Some(after_entries),
            (Some(Cut::InStep4 { after_entries }), Step::WritesToCompute) => Some(after_entries),
            _ => None,
        }
    }

    /// Runs `work` on a blocking thread with the open round moved there and back.
    async fn engine<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ProjectSide, &mut Option<ProjectRound>) -> T + Send + 'static,
    ) -> Result<T, RoundError> {
        let mut round = self.lock().round.take();
        let side = self.side.clone();
        let (round, out) = tokio::task::spawn_blocking(move || {
            let out = work(&side, &mut round);
            (round, out)
        })
        .await
        .map_err(link_error)?;
        self.lock().round = round;
        Ok(out)
    }

    /// The broker's answer to a failed engine call: the round is abandoned.
    fn failed(&self, step: Step, e: EngineError) -> ServerMsg {
        let mut p = self.lock();
        p.round = None;
        p.at = RoundAt::Closed;
        let message = format!("step {}: {} (the round is abandoned)", step.label(), cs_supervision::error_chain(&e));
        ServerMsg::Error { code: ErrorCode::Internal, message }
    }

    /// The round is at `step` (1 to 5; admitted, so no held list is due).
    fn enter(&self, step: Step) {
        self.lock().at = RoundAt::Open { step, held_list_due: false };
    }

    async fn answer(&self, msg: ClientMsg) -> Result<ServerMsg, RoundError> {
        let no_round = || EngineError::Protocol("no open round".into());
        Ok(match msg {
            ClientMsg::Ping { sent_ms } => ServerMsg::Pong { sent_ms },
            // Its hello answer says `fetch: false`: a client does not ask.
            ClientMsg::Fetch { .. } => ServerMsg::Error {
                code: ErrorCode::BadRequest,
                message: "the in-memory link does not serve fetches".into(),
            },
            // Nor `snapshot: true`.
            ClientMsg::Snapshot { .. } => ServerMsg::Error {
                code: ErrorCode::BadRequest,
                message: "the in-memory link does not serve snapshots".into(),
            },
            ClientMsg::JournalAt => {
                let side = self.side.clone();
                let cursor = tokio::task::spawn_blocking(move || side.journal_cursor()).await.map_err(link_error)?;
                ServerMsg::JournalAt { cursor }
            }
            ClientMsg::WasCommitted { round_id } => {
                let client = self.client.clone();
                match self.engine(move |p, _| p.was_committed(&client, round_id)).await? {
                    Ok(b) => ServerMsg::WasCommitted(b),
                    Err(e) => self.failed(Step::Resolve, e),
                }
            }
            ClientMsg::Hello(hello) => {
                let side = self.side.clone();
                let begun = tokio::task::spawn_blocking(move || side.begin_round(&hello)).await.map_err(link_error)?;
                match begun {
                    Ok((round, reply)) => {
                        let mut p = self.lock();
                        p.round = Some(round);
                        p.at = RoundAt::Open { step: Step::Hello, held_list_due: reply.need_held_list };
                        ServerMsg::HelloReply(reply)
                    }
                    Err(e) => self.failed(Step::Hello, e),
                }
            }
            ClientMsg::HeldList(paths) => {
                let r = self.engine(move |p, r| r.as_mut().map(|r| p.set_held_list(r, paths)).ok_or_else(no_round));
                match r.await? {
                    Ok(()) => {
                        self.lock().at = RoundAt::Open { step: Step::Hello, held_list_due: false };
                        ServerMsg::HeldListOk
                    }
                    Err(e) => self.failed(Step::Hello, e),
                }
            }
            ClientMsg::Deletes(paths) => {
                self.enter(Step::DeletesToProject);
                let r = self.engine(move |p, r| p.apply_deletes(r.as_mut().ok_or_else(no_round)?, &paths));
                match r.await? {
                    Ok(report) => ServerMsg::DeleteReport(report),
                    Err(e) => self.failed(Step::DeletesToProject, e),
                }
            }
            ClientMsg::AskDeletes => {
                self.cut_if(Cut::AfterStep1)?;
                self.enter(Step::DeletesToCompute);
                let r = self.engine(move |p, r| r.as_mut().map(|r| p.deletes_for_client(r)).ok_or_else(no_round));
                match r.await? {
                    Ok(gone) => ServerMsg::DeletesForYou(gone),
                    Err(e) => self.failed(Step::DeletesToCompute, e),
                }
            }
            ClientMsg::SendWrites { stream } => {
                self.cut_if(Cut::AfterStep2)?;
                self.enter(Step::WritesToProject);
                let input = self.lock().from_compute.remove(&stream);
                let input = input.ok_or_else(|| link_error(format!("SendWrites on unknown stream {stream}")))?;
                let stop = self.stop_after(Step::WritesToProject);
                let r = self.engine(move |p, r| p.apply_writes(r.as_mut().ok_or_else(no_round)?, input, stop));
                let r = r.await?;
                if let Some(after_entries) = stop {
                    self.lock().round = None;
                    self.cut_if(Cut::InStep3 { after_entries })?;
                }
                match r {
                    Ok(report) => ServerMsg::WritesApplied {
                        applied: report.applied as u64,
                        unchanged: report.unchanged as u64,
                        conflicts: report.conflicts,
                        refused: report.refused,
                    },
                    Err(e) => self.failed(Step::WritesToProject, e),
                }
            }
            ClientMsg::AskWrites { stream } => {
                self.cut_if(Cut::AfterStep3)?;
                self.enter(Step::WritesToCompute);
                let out = self.lock().to_compute.remove(&stream);
                let out = out.ok_or_else(|| link_error(format!("AskWrites on unknown stream {stream}")))?;
                let stop = self.stop_after(Step::WritesToCompute);
                let r = self
                    .engine(move |p, r| {
                        let r = r.as_mut().ok_or_else(no_round)?;
                        match stop {
                            None => p.pack_changes(r, out).map(|(_, stats, cursor)| (stats, cursor)),
                            Some(n) => pack_cut_after(p, r, out, n),
                        }
                    })
                    .await?;
                match r {
                    Ok((stats, cursor)) => {
                        // Cut in the stream, or (a stream shorter than the cut) right after it.
                        if let Some(after_entries) = stop {
                            self.lock().round = None;
                            self.cut_if(Cut::InStep4 { after_entries })?;
                        }
                        let mut p = self.lock();
                        p.record.sent_entries = stats.entries;
                        p.record.sent_bytes = stats.compressed_bytes;
                        p.record.cursor = cursor;
                        ServerMsg::WritesFollow { stream, cursor }
                    }
                    Err(e) => {
                        if let Some(after_entries) = stop {
                            self.lock().round = None;
                            self.cut_if(Cut::InStep4 { after_entries })?;
                        }
                        self.failed(Step::WritesToCompute, e)
                    }
                }
            }
            ClientMsg::Commit(req) => {
                self.cut_if(Cut::AfterStep4)?;
                self.enter(Step::Commit);
                let round = self.lock().round.take();
                let side = self.side.clone();
                let committed = tokio::task::spawn_blocking(move || match round {
                    Some(r) => side.commit(r, &req),
                    None => Err(no_round()),
                })
                .await
                .map_err(link_error)?;
                self.lock().at = RoundAt::Closed;
                match committed {
                    Ok(cursor) => {
                        self.cut_if(Cut::AfterProjectCommit)?;
                        ServerMsg::Committed { cursor }
                    }
                    Err(e) => self.failed(Step::Commit, e),
                }
            }
        })
    }
}

/// Step 4 with the stream cut after `n` entries: P packs into a relay that passes the
/// first `n` entries on to C, then drops C's stream unfinished (C sees it aborted).
/// A stream of at most `n` entries goes through whole (the request fails after).
fn pack_cut_after(
    p: &ProjectSide,
    r: &mut ProjectRound,
    out: PipeWriter,
    n: usize,
) -> Result<(cs_tarstream::PackStats, Cursor), EngineError> {
    let (relay_in, packed) = std::io::pipe().map_err(|e| EngineError::Protocol(format!("step-4 relay: {e}")))?;
    let relay = std::thread::spawn(move || relay_entries(relay_in, out, n));
    let packed = p.pack_changes(r, packed).map(|(w, stats, cursor)| {
        drop(w);
        (stats, cursor)
    });
    relay.join().map_err(|_| EngineError::Protocol("the step-4 relay panicked".into()))?;
    packed
}

/// Copies the first `n` entries of the tar stream on `input` to a new stream on `out`;
/// finishes it if there were no more, else drops it unfinished.
fn relay_entries(input: PipeReader, out: PipeWriter, n: usize) {
    let Ok(mut tar) = PackWriter::new(out, 1) else { return };
    let mut seen = 0usize;
    let mut last_file: Option<EntryHeader> = None;
    let result = cs_tarstream::unpack_events(input, &Limits::default(), |ev| {
        match ev {
            cs_tarstream::Event::Entry(h, data) => {
                if seen >= n {
                    return Err("cut".into());
                }
                seen += 1;
                match h.kind {
                    EntryKind::File => {
                        tar.append_file(h, data)?;
                        last_file = Some(h.clone());
                    }
                    EntryKind::Dir => tar.append_dir(h)?,
                    EntryKind::Symlink => tar.append_symlink(h)?,
                }
            }
            cs_tarstream::Event::Withdraw(path) => {
                if let Some(h) = last_file.take_if(|h| &h.path == path) {
                    tar.withdraw(&h)?;
                }
            }
        }
        Ok(())
    });
    // On a cut, `tar` is dropped unfinished: C's stream is aborted.
    if result.is_ok() {
        let _ = tar.finish();
    }
}

#[async_trait]
impl Link for LocalLink {
    async fn request(&self, msg: ClientMsg) -> Result<ServerMsg, RoundError> {
        let at = self.lock().at;
        if let Err(e) = at.admit(&msg) {
            return Ok(ServerMsg::Error { code: ErrorCode::BadRequest, message: e.to_string() });
        }
        self.answer(msg).await
    }

    fn next_stream(&self) -> u32 {
        self.streams.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn outbound(&self, id: u32) -> Result<Box<dyn OutStream>, RoundError> {
        let (reader, writer) = std::io::pipe().map_err(link_error)?;
        self.lock().from_compute.insert(id, reader);
        Ok(Box::new(PipeOut(writer)))
    }

    async fn inbound(&self, id: u32) -> Result<Box<dyn Read + Send>, RoundError> {
        let (reader, writer) = std::io::pipe().map_err(link_error)?;
        self.lock().to_compute.insert(id, writer);
        Ok(Box::new(reader))
    }

    fn cancel_inbound(&self, id: u32) {
        self.lock().to_compute.remove(&id);
    }

    fn cancel_outbound(&self, id: u32) {
        self.lock().from_compute.remove(&id);
    }
}

/// One round of `side` against `project` through the shipped round ([`round::run`] on a
/// [`Packer`]), in an actix system of its own. The side is handed back whatever happens,
/// with what the project end saw and, if the round committed, the report of both ends.
pub fn run_round(
    side: ComputeSide,
    project: Arc<ProjectSide>,
    cut: Option<Cut>,
) -> (ComputeSide, ProjectRecord, Result<RoundReport, RoundError>) {
    let client = side.config().client.clone();
    let system = actix::System::new();
    system.block_on(async move {
        let packer = cs_supervision::spawn(Packer::new(side));
        let link = LocalLink::new(project, client, cut);
        let result = round::run(1, &packer, &link, &|_| {}, None).await;
        let problems = packer.observe().await.map(|s| s.scan_problems).unwrap_or_default();
        let side = match packer.send(packer::Close).await {
            Ok(Ok(side)) => side,
            // The packer is ours and alive until here: losing the side is a bug of this module.
            Ok(Err(e)) => panic!("the packer did not hand its compute side back: {e}"),
            Err(e) => panic!("the packer did not hand its compute side back: {e}"),
        };
        let record = link.record();
        let report = result.map(|summary| report(&summary, &record, problems));
        (side, record, report)
    })
}

#[cfg(test)]
mod tests {
    use cs_engine::ProjectConfig;

    use super::*;

    /// The project end checks the order as the broker does: with the same type.
    #[actix_rt::test]
    async fn requests_out_of_order_are_refused_by_the_project_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (home, state) = (dir.path().join("home"), dir.path().join("state"));
        for d in [&home, &state] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let side = Arc::new(ProjectSide::open(ProjectConfig::new(home, state)).expect("project side"));
        let link = LocalLink::new(side, ClientId::new("c1").expect("id"), None);
        match link.request(ClientMsg::AskDeletes).await {
            Ok(ServerMsg::Error { code: ErrorCode::BadRequest, message }) => {
                assert!(message.contains("(step 2)") && message.contains("send Hello first"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }
}
