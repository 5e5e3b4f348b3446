//! The engine calls: each request of a round becomes a call of
//! [`ProjectSide`] on a thread of its own, with the round moved there and
//! back, under the client's lock; its answer goes back to the client.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use cs_engine::{EngineError, ProjectRound, ProjectSide};
use cs_protocol::{CommitRequest, Hello, PROTOCOL_VERSION};
use cs_supervision::ExitStatus;
use cs_wire::{ClientMsg, ErrorCode, ServerMsg};
use tokio::sync::oneshot;

use super::io::{routes, Outgoing};
use super::{Inbound, Session};
use crate::bridge::{SlotReader, SlotWriter, TarWork};
use crate::state::RoundStep;

/// Counts one engine call in [`Shared::engine_calls`] while it lives.
pub(super) struct EngineCall(Arc<AtomicUsize>);

impl EngineCall {
    pub(super) fn new(calls: &Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Ordering::SeqCst);
        EngineCall(calls.clone())
    }
}

impl Drop for EngineCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `work` on a thread of its own named `name`, counted in `calls` while it
/// runs (the round's steps, fetches and snapshots alike). A thread, not
/// `spawn_blocking`: the runtime's shutdown waits for its blocking tasks, so one
/// stuck call would keep the broker from exiting on SIGTERM (shutdown waits for
/// calls in flight, bounded, then the process exits). What `work` holds is
/// released when it returns, even if the session is gone.
pub(super) async fn on_own_thread<T: Send + 'static>(
    calls: &Arc<AtomicUsize>,
    name: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let call = EngineCall::new(calls);
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _call = call;
            let _ = done.send(work());
        })
        .map_err(|e| format!("cannot start a thread {name}: {e}"))?;
    result.await.map_err(|_| format!("the call on thread {name} panicked"))
}

impl Session {
    /// Checks that `msg` may come now (the order is `cs_wire::Step`'s); `Err` is the
    /// reason it may not.
    fn check_order(&self, msg: &ClientMsg) -> Result<(), String> {
        let at = match (self.phase.is_open(), self.phase.step().step()) {
            (true, Some(step)) => cs_wire::RoundAt::Open { step, held_list_due: self.phase.need_held_list() },
            _ => cs_wire::RoundAt::Closed,
        };
        at.admit(msg).map_err(|e| e.to_string())
    }

    pub(super) fn dispatch(&mut self, ctx: &mut Context<Self>, req: Inbound) {
        let Inbound { id, msg, stream } = req;
        // A fresh cancel flag for the step this request starts.
        self.cancel = Arc::new(AtomicBool::new(false));
        self.current_id = id;
        self.streaming = matches!(msg, ClientMsg::SendWrites { .. } | ClientMsg::AskWrites { .. });
        if let Err(reason) = self.check_order(&msg) {
            // `stream` (a refused SendWrites) is dropped: its chunks are discarded.
            self.error(ctx, id, ErrorCode::BadRequest, reason);
            return;
        }
        match msg {
            ClientMsg::Ping { sent_ms } => self.reply(ctx, id, ServerMsg::Pong { sent_ms }),
            // `inbound` takes fetches before they could queue; here for completeness.
            ClientMsg::Fetch { paths, stream } => self.fetch(ctx, id, paths, stream),
            ClientMsg::Snapshot { stream } => self.snapshot_request(ctx, id, stream),
            ClientMsg::JournalAt => self.journal_at(ctx, id),
            ClientMsg::WasCommitted { round_id } => {
                let client = self.client.clone();
                self.engine(
                    ctx,
                    move |p| p.was_committed(&client, round_id),
                    move |act, ctx, r| match r {
                        Ok(b) => act.reply(ctx, id, ServerMsg::WasCommitted(b)),
                        Err(e) => act.error(ctx, id, code_of(&e), cs_supervision::error_chain(&e)),
                    },
                );
            }
            ClientMsg::Hello(hello) => self.hello(ctx, id, hello),
            ClientMsg::HeldList(paths) => {
                self.engine_on_round(
                    ctx,
                    RoundStep::Hello,
                    move |p, r| p.set_held_list(r, paths),
                    move |act, ctx, ()| {
                        act.phase.held_list_received();
                        act.reply(ctx, id, ServerMsg::HeldListOk);
                    },
                );
            }
            ClientMsg::Deletes(paths) => {
                self.engine_on_round(
                    ctx,
                    RoundStep::Deletes,
                    move |p, r| p.apply_deletes(r, &paths),
                    move |act, ctx, res| match res {
                        Ok(report) => act.reply(ctx, id, ServerMsg::DeleteReport(report)),
                        Err(e) => act.fail_round(
                            ctx,
                            id,
                            code_of(&e),
                            format!("step 1 (deletes): {}", cs_supervision::error_chain(&e)),
                        ),
                    },
                );
            }
            ClientMsg::AskDeletes => {
                self.engine_on_round(
                    ctx,
                    RoundStep::DeletesForClient,
                    move |p, r| p.deletes_for_client(r),
                    move |act, ctx, paths| act.reply(ctx, id, ServerMsg::DeletesForYou(paths)),
                );
            }
            ClientMsg::SendWrites { stream: sid } => {
                let Some(rx) = stream else {
                    self.fail_round(ctx, id, ErrorCode::Internal, "the stream of SendWrites was not set up".into());
                    return;
                };
                let work = self.tar_work();
                self.engine_on_round(
                    ctx,
                    RoundStep::WritesIn,
                    move |p, r| {
                        let mut reader = SlotReader::with_hook(rx, work);
                        let res = p.apply_writes(r, &mut reader, None);
                        (res, reader.bytes())
                    },
                    move |act, ctx, (res, bytes)| {
                        act.stats.bytes_in += bytes;
                        match res {
                            Ok(report) => {
                                act.stats.writes_in(&report);
                                act.reply(ctx, id, writes_applied(report));
                            }
                            Err(e) => {
                                // The rest of the stream (if any) is dropped
                                // quietly: unless its end frame came already,
                                // its remaining frames are discarded, not
                                // answered as frames of an unknown stream (a
                                // stray answer would put the client's next
                                // request out of step).
                                routes(&act.routes).discard(sid);
                                act.fail_round(
                                    ctx,
                                    id,
                                    code_of(&e),
                                    format!("step 3 (writes to the project): {}", cs_supervision::error_chain(&e)),
                                )
                            }
                        }
                    },
                );
            }
            ClientMsg::AskWrites { stream: sid } => {
                if sid & cs_wire::FETCH_STREAM_BIT != 0 {
                    let message = format!("step 4's stream id {sid:#x} has the fetch bit (bit 31) set");
                    return self.fail_round(ctx, id, ErrorCode::BadRequest, message);
                }
                let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
                let Some(out) = self.out.clone() else { return };
                // The answer (below: WritesFollow with the cursor, or the
                // error) goes after the stream's end.
                if out.try_send(Outgoing::Stream { stream: sid, rx }).is_err() {
                    self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
                    return;
                }
                self.hold.insert(id, sid);
                let work = self.tar_work();
                let max_chunk = self.shared.limits.max_chunk_bytes;
                self.engine_on_round(
                    ctx,
                    RoundStep::WritesOut,
                    move |p, r| {
                        let mut writer = SlotWriter::with_hook(tx, max_chunk, work);
                        if let Err(e) = writer.start() {
                            let _ = writer.abort(&e.to_string());
                            return Err(EngineError::Stream { peer: "client", source: e });
                        }
                        match p.pack_changes(r, writer) {
                            Ok((writer, stats, cursor)) => match writer.finish() {
                                Ok(()) => Ok((stats, cursor)),
                                Err(source) => Err(EngineError::Stream { peer: "client", source }),
                            },
                            Err(e) => Err(e),
                        }
                    },
                    move |act, ctx, res| match res {
                        Ok((stats, cursor)) => {
                            act.stats.writes_out(stats.entries, stats.compressed_bytes);
                            act.reply(ctx, id, ServerMsg::WritesFollow { stream: sid, cursor });
                        }
                        Err(e) => act.fail_round(
                            ctx,
                            id,
                            code_of(&e),
                            format!("step 4 (writes to the client): {}", cs_supervision::error_chain(&e)),
                        ),
                    },
                );
            }
            ClientMsg::Commit(req) => self.commit(ctx, id, req),
        }
    }

    fn hello(&mut self, ctx: &mut Context<Self>, id: u64, hello: Hello) {
        if hello.client != self.client {
            let message =
                format!("hello names client {} but this connection authenticated as {}", hello.client, self.client);
            self.error(ctx, id, ErrorCode::Unauthorized, message.clone());
            self.refused = Some("hello_other_client");
            self.end(ctx, ExitStatus::Failure(message));
            return;
        }
        if hello.protocol != PROTOCOL_VERSION {
            self.fail_round(
                ctx,
                id,
                ErrorCode::ProtocolVersion,
                format!("client speaks protocol {}, this broker {PROTOCOL_VERSION}", hello.protocol),
            );
            return;
        }
        if self.phase.begin() {
            tracing::info!(client = %self.client, "hello during a round: the round restarts");
            self.stats.rounds_failed += 1;
        }
        let started = Instant::now();
        let follow = hello.follow;
        // A follow check in flight now is stale: this round carries its news.
        self.follow.rounds_begun += 1;
        self.engine(
            ctx,
            move |p| p.begin_round(&hello),
            move |act, ctx, res| match res {
                Ok((round, mut reply)) => {
                    // Sessions serve fetches (`ClientMsg::Fetch`) and
                    // snapshots (`ClientMsg::Snapshot`), and push
                    // `ProjectChanged` to a client that follows.
                    reply.fetch = true;
                    reply.snapshot = true;
                    reply.follow = true;
                    act.follow_hello(ctx, follow);
                    act.phase.opened(round, started, reply.need_held_list);
                    act.reply(ctx, id, ServerMsg::HelloReply(reply));
                }
                Err(e) => act.fail_round(ctx, id, code_of(&e), format!("hello: {}", cs_supervision::error_chain(&e))),
            },
        );
    }

    fn commit(&mut self, ctx: &mut Context<Self>, id: u64, req: CommitRequest) {
        let started = self.phase.started();
        let round = match self.phase.lend(RoundStep::Commit) {
            Ok(round) => round,
            Err(e) => return self.error(ctx, id, ErrorCode::BadRequest, e.to_string()),
        };
        let started = started.unwrap_or_else(Instant::now);
        let client = self.client.clone();
        self.engine(
            ctx,
            move |p| p.commit(round, &req).map(|cursor| (cursor, p.busy_files(&client))),
            move |act, ctx, res| match res {
                Ok((cursor, busy)) => {
                    act.stats.committed(started, busy);
                    act.phase.end_round();
                    tracing::info!(client = %act.client, ?cursor, ms = started.elapsed().as_millis() as u64, "round committed");
                    act.reply(ctx, id, ServerMsg::Committed { cursor });
                }
                // The round was consumed: `fail_round` counts it failed.
                Err(e) => {
                    act.fail_round(ctx, id, code_of(&e), format!("step 5 (commit): {}", cs_supervision::error_chain(&e)))
                }
            },
        );
    }

    fn tar_work(&self) -> TarWork {
        TarWork::new(self.shared.tar.clone(), self.cancel.clone(), self.heartbeat.clone(), self.activity.clone())
            // A stream silent for this long ends the session anyway.
            .with_silence_limit(self.shared.idle_timeout)
    }

    /// Runs step `step` of the open round: `work` borrows the round on an
    /// engine thread (see [`Session::engine`]), which gives it back to the
    /// phase before `then` runs. Without a round to lend, the client is
    /// answered an error, and nothing runs.
    fn engine_on_round<T, W, F>(&mut self, ctx: &mut Context<Self>, step: RoundStep, work: W, then: F)
    where
        T: Send + 'static,
        W: FnOnce(&ProjectSide, &mut ProjectRound) -> T + Send + 'static,
        F: FnOnce(&mut Self, &mut Context<Self>, T) + 'static,
    {
        let mut round = match self.phase.lend(step) {
            Ok(round) => round,
            Err(e) => {
                let id = self.current_id;
                return self.error(ctx, id, ErrorCode::BadRequest, e.to_string());
            }
        };
        self.engine(
            ctx,
            move |p| {
                let out = work(p, &mut round);
                (round, out)
            },
            move |act, ctx, (round, out)| {
                act.phase.give_back(round);
                then(act, ctx, out)
            },
        );
    }

    /// Runs `work` on a thread of its own (what it needs, such as the
    /// round, moved there and back), under this client's lock; then `then`
    /// on the actor. While it runs, requests wait in the queue.
    fn engine<T, W, F>(&mut self, ctx: &mut Context<Self>, work: W, then: F)
    where
        T: Send + 'static,
        W: FnOnce(&ProjectSide) -> T + Send + 'static,
        F: FnOnce(&mut Self, &mut Context<Self>, T) + 'static,
    {
        self.busy = true;
        let busy = self.heartbeat.busy();
        let project = self.shared.project.clone();
        let lock = self.client_lock.clone();
        let calls = self.shared.engine_calls.clone();
        let fut = async move {
            let _busy = busy;
            let guard = lock.lock_owned().await;
            on_own_thread(&calls, "cs-broker-engine", move || {
                // Held until the call returns, even if the session is gone.
                let _guard = guard;
                work(&project)
            })
            .await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            act.streaming = false;
            act.heartbeat.beat();
            act.activity.touch();
            match res {
                Ok(out) => then(act, ctx, out),
                Err(e) => {
                    // The round (if one was lent) is lost with the call.
                    tracing::error!(client = %act.client, "engine call failed: {e}");
                    act.phase.end_round();
                    act.stats.rounds_failed += 1;
                    act.stats.last_error = Some(format!("internal error: {e}"));
                    let id = act.current_id;
                    act.reply(
                        ctx,
                        id,
                        ServerMsg::Error { code: ErrorCode::Internal, message: format!("internal error: {e}") },
                    );
                }
            }
            act.next_queued(ctx);
        }));
    }
}

/// Step 3's answer.
fn writes_applied(report: cs_engine::WriteReport) -> ServerMsg {
    ServerMsg::WritesApplied {
        applied: report.applied as u64,
        unchanged: report.unchanged as u64,
        conflicts: report.conflicts,
        refused: report.refused,
    }
}

/// The error code to report an engine failure with.
pub(super) fn code_of(e: &EngineError) -> ErrorCode {
    if caused_by_this_machine(e) {
        return ErrorCode::Internal;
    }
    match e {
        EngineError::Tar(_) | EngineError::Protocol(_) | EngineError::Entry { .. } => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

/// An error of P's own disk or resources (full, read-only, I/O error, out
/// of descriptors) somewhere in the chain: not the client's fault even when
/// it surfaced while reading the client's tar stream.
fn caused_by_this_machine(e: &EngineError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error(),
                Some(
                    libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EROFS | libc::ENOMEM | libc::EMFILE | libc::ENFILE
                )
            ) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}
