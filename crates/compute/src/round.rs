//! One round as the compute service runs it: the engine's steps on the
//! packer, the project's answers over a [`Link`], in the contract's order.

use std::io::{Read, Write};
use std::time::Instant;

use actix::Addr;
use async_trait::async_trait;
use cs_protocol::{Cursor, RelPath};
use cs_wire::{ClientMsg, ErrorCode, ServerMsg};
use serde::Serialize;

use crate::connection::LinkError;
use crate::machine::Step;
use crate::packer::{self, Packer, PackerError};
use crate::watcher::OwnRemovals;

/// A tar stream going out: bytes, then `finish` (complete) or drop (cut:
/// the receiver must see an aborted stream, never a short complete one).
pub trait OutStream: Write + Send {
    fn finish(self: Box<Self>) -> std::io::Result<()>;
}

/// The compute side's view of the broker: requests with answers, and tar
/// streams each way. Implemented by the websocket connection.
#[async_trait]
pub trait Link: Send + Sync {
    async fn request(&self, msg: ClientMsg) -> Result<ServerMsg, RoundError>;
    /// A fresh stream id for this connection.
    fn next_stream(&self) -> u32;
    /// Where bytes of outbound stream `id` are written.
    async fn outbound(&self, id: u32) -> Result<Box<dyn OutStream>, RoundError>;
    /// Where bytes of inbound stream `id` are read; register before asking
    /// for the stream so that no chunk arrives unrouted.
    async fn inbound(&self, id: u32) -> Result<Box<dyn Read + Send>, RoundError>;
    /// Ends inbound stream `id` as aborted (its reader gets an error): the request that was to
    /// start it failed or was refused, so no chunk of it will ever come.
    fn cancel_inbound(&self, _id: u32) {}
    /// Drops outbound stream `id` if no request took it (the request failed before it was
    /// sent): its writer gets an error instead of waiting for room for ever.
    fn cancel_outbound(&self, _id: u32) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error("the compute side failed: {0}")]
    Packer(#[from] PackerError),
    #[error("the packer actor is gone: {0}")]
    Mailbox(#[from] actix::MailboxError),
    /// The broker's [`ServerMsg::Error`], its code kept for the retry policy (see `failure`).
    #[error("the project refused {step:?}: {code}: {message}")]
    Refused { step: Step, code: ErrorCode, message: String },
    #[error("connection to the project")]
    Link(#[from] LinkError),
    /// An answer that does not fit the request (a bug on one side).
    #[error("the project answered {} to {step:?}", brief(got))]
    Unexpected { step: Step, got: Box<ServerMsg> },
    /// The round's own code broke the step order (a bug, never input).
    #[error("the round's steps ran out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("{0}")]
    Failpoint(#[from] cs_failpoint::FailpointError),
}

/// Failpoint `name` (see `cs_failpoint`): `kill`/`exit` end the process here, `sleep`
/// waits without blocking the actor threads, `error` fails the step.
async fn failpoint(name: &str) -> Result<(), RoundError> {
    match cs_failpoint::eval(name) {
        cs_failpoint::Fired::No => Ok(()),
        cs_failpoint::Fired::Sleep(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        cs_failpoint::Fired::Error(e) => Err(e.into()),
    }
}

/// Counts and duration of one step of a committed round.
#[derive(Debug, Clone, Serialize)]
pub struct StepStat {
    pub step: Step,
    pub ms: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// What a committed round did (shown by `cs-actor status`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundSummary {
    pub round: u64,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    pub steps: Vec<StepStat>,
    /// Paths deleted on the project (step 1) and on the compute side (step 2).
    pub deletes_to_project: u64,
    pub deletes_to_compute: u64,
    pub kept_on_project: Vec<RelPath>,
    pub kept_on_compute: Vec<RelPath>,
    pub conflicts: Vec<RelPath>,
    pub not_applied: Vec<RelPath>,
    pub refused: Vec<(RelPath, String)>,
    /// P's journal position the round committed: the compute side's view of P is as of it.
    pub cursor: Option<Cursor>,
}

impl RoundSummary {
    /// Whether the round committed in P's journal epoch `epoch` (None: no commit cursor).
    pub fn in_epoch(&self, epoch: u64) -> Option<bool> {
        self.cursor.map(|c| c.epoch == epoch)
    }
}

fn unexpected(step: Step, got: ServerMsg) -> RoundError {
    match got {
        ServerMsg::Error { code, message } => RoundError::Refused { step, code, message },
        other => RoundError::Unexpected { step, got: Box::new(other) },
    }
}

/// An unexpected answer as shown in an error: its start (it may carry long path lists).
fn brief(msg: &ServerMsg) -> String {
    format!("{msg:?}").chars().take(200).collect()
}

struct Clock<'a> {
    progress: &'a (dyn Fn(Step) + Send + Sync),
    summary: RoundSummary,
    current: Option<(Step, Instant)>,
}

impl Clock<'_> {
    fn step(&mut self, s: Step) {
        self.close(0, 0);
        (self.progress)(s);
        self.current = Some((s, Instant::now()));
    }
    fn close(&mut self, entries: u64, bytes: u64) {
        if let Some((step, t)) = self.current.take() {
            self.summary.steps.push(StepStat { step, ms: t.elapsed().as_millis() as u64, entries, bytes });
        }
    }
}

/// Runs round `round` to its commit. On error the packer's round is dropped
/// (nothing is committed) and the error says which step failed. `removals`: where the
/// upper-layer watcher learns what step 2 is about to delete.
pub async fn run(
    round: u64,
    packer: &Addr<Packer>,
    link: &dyn Link,
    progress: &(dyn Fn(Step) + Send + Sync),
    removals: Option<&OwnRemovals>,
) -> Result<RoundSummary, RoundError> {
    let started = Instant::now();
    let mut clock = Clock {
        progress,
        summary: RoundSummary {
            round,
            started_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ..Default::default()
        },
        current: None,
    };
    let result = steps(packer, link, &mut clock, removals).await;
    if result.is_err() {
        let _ = packer.send(packer::Abort).await;
    }
    result?;
    clock.summary.duration_ms = started.elapsed().as_millis() as u64;
    Ok(clock.summary)
}

/// Walks the round's steps in their one order ([`Step::ALL`]), each with its request.
async fn steps(
    packer: &Addr<Packer>,
    link: &dyn Link,
    clock: &mut Clock<'_>,
    removals: Option<&OwnRemovals>,
) -> Result<(), RoundError> {
    // Step 4's cursor, committed by step 5.
    let mut cursor = None;
    for step in Step::ALL {
        clock.step(step);
        match step {
            Step::Resolve => resolve(packer, link).await?,
            Step::Hello => {
                hello(packer, link).await?;
                failpoint("after-hello").await?;
            }
            Step::DeletesToProject => {
                deletes_to_project(packer, link, clock).await?;
                failpoint("after-deletes-to-project").await?;
            }
            Step::DeletesToCompute => {
                deletes_to_compute(packer, link, clock, removals).await?;
                failpoint("after-deletes-to-compute").await?;
            }
            Step::WritesToProject => {
                writes_to_project(packer, link, clock).await?;
                failpoint("after-writes-to-project").await?;
            }
            Step::WritesToCompute => {
                cursor = Some(writes_to_compute(packer, link, clock).await?);
                failpoint("after-writes-to-compute").await?;
            }
            Step::Commit => {
                let cursor = cursor.ok_or(RoundError::OutOfOrder("commit without the cursor of step 4"))?;
                commit(packer, link, cursor).await?;
                clock.summary.cursor = Some(cursor);
                clock.close(0, 0);
            }
        }
    }
    Ok(())
}

async fn resolve(packer: &Addr<Packer>, link: &dyn Link) -> Result<(), RoundError> {
    if let Some(round_id) = packer.send(packer::PendingRound).await?? {
        let committed = match link.request(ClientMsg::WasCommitted { round_id }).await? {
            ServerMsg::WasCommitted(b) => b,
            other => return Err(unexpected(Step::Resolve, other)),
        };
        packer.send(packer::ResolvePending { committed_on_project: committed }).await??;
    }
    Ok(())
}

async fn hello(packer: &Addr<Packer>, link: &dyn Link) -> Result<(), RoundError> {
    let hello = packer.send(packer::Begin).await??;
    let reply = match link.request(ClientMsg::Hello(hello)).await? {
        ServerMsg::HelloReply(r) => r,
        other => return Err(unexpected(Step::Hello, other)),
    };
    // P's `.csignore` rules: this round's (a rescan if they changed).
    packer.send(packer::HelloAnswered(reply.clone())).await??;
    if reply.need_held_list {
        let list = packer.send(packer::HeldList).await??;
        match link.request(ClientMsg::HeldList(list)).await? {
            ServerMsg::HeldListOk => {}
            other => return Err(unexpected(Step::Hello, other)),
        }
    }
    Ok(())
}

async fn deletes_to_project(packer: &Addr<Packer>, link: &dyn Link, clock: &mut Clock<'_>) -> Result<(), RoundError> {
    let deletes = packer.send(packer::DeletesToSend).await??;
    let report = match link.request(ClientMsg::Deletes(deletes.clone())).await? {
        ServerMsg::DeleteReport(r) => r,
        other => return Err(unexpected(Step::DeletesToProject, other)),
    };
    packer.send(packer::FinishDeletes { sent: deletes.clone(), report: report.clone() }).await??;
    clock.summary.deletes_to_project = report.deleted.len() as u64;
    clock.summary.kept_on_project = report.kept;
    clock.summary.refused.extend(report.refused);
    clock.close(deletes.len() as u64, 0);
    Ok(())
}

async fn deletes_to_compute(
    packer: &Addr<Packer>,
    link: &dyn Link,
    clock: &mut Clock<'_>,
    removals: Option<&OwnRemovals>,
) -> Result<(), RoundError> {
    let gone = match link.request(ClientMsg::AskDeletes).await? {
        ServerMsg::DeletesForYou(g) => g,
        other => return Err(unexpected(Step::DeletesToCompute, other)),
    };
    let n = gone.len() as u64;
    // Before the engine deletes: the watcher may see the first removal at once.
    if let Some(r) = removals {
        r.expect(&gone);
    }
    let report = packer.send(packer::ApplyDeletes(gone)).await??;
    if let Some(r) = removals {
        r.done(&report);
    }
    clock.summary.deletes_to_compute = report.deleted.len() as u64;
    clock.summary.kept_on_compute = report.kept;
    clock.close(n, 0);
    Ok(())
}

async fn writes_to_project(packer: &Addr<Packer>, link: &dyn Link, clock: &mut Clock<'_>) -> Result<(), RoundError> {
    let stream = link.next_stream();
    let out = link.outbound(stream).await?;
    let send = async {
        let answer = link.request(ClientMsg::SendWrites { stream }).await;
        if answer.is_err() {
            link.cancel_outbound(stream);
        }
        answer
    };
    let (answer, packed) = tokio::join!(send, packer.send(packer::PackChanges(out)));
    let stats = packed??;
    match answer? {
        ServerMsg::WritesApplied { conflicts, refused, .. } => {
            clock.summary.conflicts = conflicts;
            clock.summary.refused.extend(refused);
        }
        other => return Err(unexpected(Step::WritesToProject, other)),
    }
    clock.close(stats.entries, stats.compressed_bytes);
    Ok(())
}

async fn writes_to_compute(
    packer: &Addr<Packer>,
    link: &dyn Link,
    clock: &mut Clock<'_>,
) -> Result<Cursor, RoundError> {
    let stream = link.next_stream();
    let input = link.inbound(stream).await?;
    let ask = async {
        let answer = link.request(ClientMsg::AskWrites { stream }).await;
        // Refused (say, on a connection that replaced the one this round began on: the
        // project has no open round there) or failed: the stream will never come, and the
        // packer must not wait for it for ever.
        if !matches!(answer, Ok(ServerMsg::WritesFollow { .. })) {
            link.cancel_inbound(stream);
        }
        answer
    };
    let (answer, applied) = tokio::join!(ask, packer.send(packer::ApplyWrites(input)));
    let applied = applied??;
    let cursor = match answer? {
        ServerMsg::WritesFollow { cursor, .. } => cursor,
        other => return Err(unexpected(Step::WritesToCompute, other)),
    };
    clock.summary.not_applied = applied.not_applied.clone();
    clock.close(applied.applied as u64, applied.bytes);
    Ok(cursor)
}

async fn commit(packer: &Addr<Packer>, link: &dyn Link, cursor: Cursor) -> Result<(), RoundError> {
    let req = packer.send(packer::PrepareCommit(cursor)).await??;
    failpoint("before-commit-request").await?;
    match link.request(ClientMsg::Commit(req)).await? {
        ServerMsg::Committed { .. } => {}
        other => return Err(unexpected(Step::Commit, other)),
    }
    failpoint("after-project-commit").await?;
    packer.send(packer::Commit).await??;
    failpoint("after-commit").await?;
    Ok(())
}
