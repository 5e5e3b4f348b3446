//! One client's session: its connection, its round in flight, its counters.
//!
//! ```text
//!  websocket ──► reader task ──Inbound──► Session actor ──spawn_blocking──► ProjectSide
//!      ▲            │ chunks of step 3 (stream channel) ─────────────────► SlotReader
//!      └──── writer task ◄──Outgoing (bounded)── Session / SlotWriter (step 4)
//! ```
//!
//! The actor itself never blocks: every engine call runs on a blocking
//! thread, with the round moved there and back, while the actor keeps
//! answering `Observe`, `Ping` and the idle check. Requests are handled one
//! at a time, in order; one that arrives while a step runs waits in a short
//! queue (a `Hello` there cancels the running step: the round restarts).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_engine::{EngineError, ProjectRound, ProjectSide};
use cs_protocol::{ClientId, CommitRequest, Hello, PROTOCOL_VERSION};
use cs_supervision::{ExitStatus, Heartbeat, MAILBOX_CAPACITY};
use cs_wire::{
    ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, StreamItem, WireError, WireLimits, WsReceiver, WsSender,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::bridge::{Activity, SlotReader, SlotWriter, TarSlots, TarWork};
use crate::broker::{Broker, SessionEnded};
use crate::state::{RoundStep, SessionState};
use crate::BoxedIo;

/// Requests that may wait while a step runs; more is a misbehaving client.
const QUEUE_LIMIT: usize = 8;
/// Frames waiting for the writer task.
const OUTGOING_CAPACITY: usize = 16;
/// How long a stopped session's writer may still take to flush its last
/// frames (e.g. the error that explains why the session ends).
const FLUSH_GRACE: Duration = Duration::from_secs(5);

/// What a session shares with every other one.
pub(crate) struct Shared {
    pub project: Arc<ProjectSide>,
    pub tar: Arc<TarSlots>,
    pub limits: WireLimits,
    pub idle_timeout: Duration,
    /// Engine calls running (on their threads), for a bounded wait at shutdown.
    pub engine_calls: Arc<AtomicUsize>,
}

/// Counts one engine call in [`Shared::engine_calls`] while it lives.
struct EngineCall(Arc<AtomicUsize>);

impl EngineCall {
    fn new(calls: &Arc<AtomicUsize>) -> Self {
        calls.fetch_add(1, Ordering::SeqCst);
        EngineCall(calls.clone())
    }
}

impl Drop for EngineCall {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The chunks of step-3 streams, routed by the reader task.
#[derive(Default)]
struct Routes {
    open: HashMap<u32, mpsc::Sender<StreamItem>>,
    /// Streams whose consumer is gone (refused, failed or cancelled): their
    /// remaining frames are dropped without further complaint.
    discarding: HashSet<u32>,
    /// The session ended: no stream is opened or fed any more.
    closed: bool,
}

type SharedRoutes = Arc<Mutex<Routes>>;

fn routes(r: &SharedRoutes) -> std::sync::MutexGuard<'_, Routes> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the writer task sends.
enum Outgoing {
    Frame(Frame<ServerMsg>),
    /// Step 4's stream: forwarded chunk by chunk up to its end.
    Stream {
        stream: u32,
        rx: mpsc::Receiver<StreamItem>,
    },
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A request from the client (from the reader task).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Inbound {
    id: u64,
    msg: ClientMsg,
    /// For `SendWrites`: the receiving end of the stream's channel.
    stream: Option<mpsc::Receiver<StreamItem>>,
}

/// A frame that could not be used (malformed, unknown, out of place).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct BadFrame {
    id: Option<u64>,
    code: ErrorCode,
    reason: String,
}

/// The connection ended (peer closed, transport error).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ConnectionLost {
    reason: Option<String>,
}

/// Observe message of a session.
#[derive(Message)]
#[rtype(result = "SessionState")]
pub struct ObserveSession;

/// Ends a session (replaced by a new connection of its client, shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopSession {
    pub status: ExitStatus,
}

struct OpenRound {
    /// `None` while a step runs with it on a blocking thread.
    round: Option<ProjectRound>,
    started: Instant,
    need_held_list: bool,
}

pub struct Session {
    client: ClientId,
    peer: SocketAddr,
    conn_id: u64,
    connected_since: u64,
    broker: Addr<Broker>,
    shared: Arc<Shared>,
    /// Serialises this client's engine calls across sessions: a new
    /// connection's round waits for the old one's call in flight to end.
    client_lock: Arc<tokio::sync::Mutex<()>>,
    out: Option<mpsc::Sender<Outgoing>>,
    routes: SharedRoutes,
    activity: Activity,
    heartbeat: Heartbeat,
    reader: Option<tokio::task::JoinHandle<()>>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// Dropped when the session ends: the writer task then drops step 4's
    /// stream channel at once, even while its socket is stuck.
    alive: Option<watch::Sender<()>>,
    /// Cancel flag of the step in flight.
    cancel: Arc<AtomicBool>,
    busy: bool,
    /// The request being worked on, and whether it is a tar stream step
    /// (then the idle timeout applies: a stalled stream is a silent client;
    /// other steps may compute for long without a frame).
    current_id: u64,
    streaming: bool,
    queue: VecDeque<Inbound>,
    step: RoundStep,
    round: Option<OpenRound>,
    /// Closing: nothing more is handled.
    closing: bool,
    /// Set when the session ends as a refusal (counted by the broker).
    refused: Option<&'static str>,
    exit: Option<ExitStatus>,
    // Counters.
    rounds_committed: u64,
    rounds_failed: u64,
    last_round_unix_ms: Option<u64>,
    last_round_duration_ms: Option<u64>,
    entries_in: u64,
    entries_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    conflicts_total: u64,
    last_error: Option<String>,
    deferred: crate::state::DeferredFiles,
    snapshots_sent: u64,
}

pub(crate) struct SessionParts {
    pub client: ClientId,
    pub peer: SocketAddr,
    pub conn_id: u64,
    pub broker: Addr<Broker>,
    pub shared: Arc<Shared>,
    pub client_lock: Arc<tokio::sync::Mutex<()>>,
    pub sender: WsSender<BoxedIo, ServerMsg>,
    pub receiver: WsReceiver<BoxedIo, ClientMsg>,
}

impl Session {
    /// Starts the session's actor and its reader and writer tasks.
    pub(crate) fn start(parts: SessionParts) -> Addr<Session> {
        let SessionParts { client, peer, conn_id, broker, shared, client_lock, sender, receiver } = parts;
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let routes: SharedRoutes = Arc::default();
        let activity = Activity::default();
        activity.touch();
        let (alive, ended) = watch::channel(());
        Session::create(move |ctx| {
            let addr = ctx.address();
            let reader = actix_rt::spawn(read_loop(receiver, addr.clone(), routes.clone(), activity.clone()));
            let writer = actix_rt::spawn(write_loop(sender, out_rx, ended, addr, activity.clone(), client.clone()));
            Session {
                client,
                peer,
                conn_id,
                connected_since: unix_ms(),
                broker,
                shared,
                client_lock,
                out: Some(out_tx),
                routes,
                activity,
                heartbeat: Heartbeat::new(),
                reader: Some(reader),
                writer: Some(writer),
                alive: Some(alive),
                cancel: Arc::new(AtomicBool::new(false)),
                busy: false,
                current_id: 0,
                streaming: false,
                queue: VecDeque::new(),
                step: RoundStep::Idle,
                round: None,
                closing: false,
                refused: None,
                exit: None,
                rounds_committed: 0,
                rounds_failed: 0,
                last_round_unix_ms: None,
                last_round_duration_ms: None,
                entries_in: 0,
                entries_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                conflicts_total: 0,
                last_error: None,
                deferred: Default::default(),
                snapshots_sent: 0,
            }
        })
    }

    fn snapshot(&self) -> SessionState {
        SessionState {
            client: self.client.to_string(),
            peer: self.peer,
            connected_since_unix_ms: self.connected_since,
            step: self.step,
            busy: self.busy,
            rounds_committed: self.rounds_committed,
            rounds_failed: self.rounds_failed,
            last_round_unix_ms: self.last_round_unix_ms,
            last_round_duration_ms: self.last_round_duration_ms,
            entries_in: self.entries_in,
            entries_out: self.entries_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            conflicts_total: self.conflicts_total,
            last_error: self.last_error.clone(),
            heartbeat_beats: self.heartbeat.beats(),
            heartbeat_silent_ms: self.heartbeat.since_last().as_millis() as u64,
            deferred: self.deferred.clone(),
            snapshots_sent: self.snapshots_sent,
        }
    }

    /// Queues a frame for the writer task. The queue is bounded; a client
    /// that does not read its answers fills it, and is then closed.
    fn send_frame(&mut self, ctx: &mut Context<Self>, frame: Frame<ServerMsg>) {
        let Some(out) = &self.out else { return };
        match out.try_send(Outgoing::Frame(frame)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.end(ctx, ExitStatus::Failure("connection lost".into()));
            }
        }
    }

    fn reply(&mut self, ctx: &mut Context<Self>, id: u64, msg: ServerMsg) {
        self.send_frame(ctx, Frame::control(id, msg));
    }

    /// Answers an error; the session goes on.
    fn error(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        tracing::warn!(client = %self.client, peer = %self.peer, request = id, ?code, "{message}");
        self.last_error = Some(format!("{code}: {message}"));
        self.reply(ctx, id, ServerMsg::Error { code, message });
    }

    /// A step failed: the round is abandoned, nothing of it is committed.
    fn fail_round(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        if self.round.take().is_some() {
            self.rounds_failed += 1;
        }
        self.step = RoundStep::Idle;
        self.error(ctx, id, code, format!("{message} (the round is abandoned: nothing of it was committed)"));
    }

    /// Ends the session: the reader stops now, the writer flushes what is
    /// queued (a few seconds at most) and closes the connection.
    fn end(&mut self, ctx: &mut Context<Self>, status: ExitStatus) {
        if self.closing {
            return;
        }
        self.closing = true;
        match &status {
            ExitStatus::Failure(reason) => {
                tracing::info!(client = %self.client, peer = %self.peer, "session closed: {reason}");
                self.last_error.get_or_insert_with(|| reason.clone());
            }
            _ => tracing::info!(client = %self.client, peer = %self.peer, ?status, "session closed"),
        }
        self.exit = Some(status);
        ctx.stop();
    }

    /// When the session ends (any reason: connection lost, replaced, idle,
    /// shutdown; from `stopped`, or `Drop` if the actor is dropped without
    /// stopping), its engine call in flight must not outlive it: it would
    /// keep the client's lock (the client's next session waits on it) and
    /// maybe a tar slot. So every channel end that feeds or drains that
    /// call is dropped here: the step-3 senders (routes table, and the
    /// reader task's clones), the step-4 receiver (in the writer task); and
    /// the cancel flag is set, which the call's waits also watch.
    fn close_streams(&mut self) {
        routes(&self.routes).closed = true;
        self.cancel_step();
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        self.alive = None;
    }

    fn cancel_step(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Unblocks a step-3 reader waiting for chunks that will not come.
        let mut r = routes(&self.routes);
        let ids: Vec<u32> = r.open.keys().copied().collect();
        for id in ids {
            r.open.remove(&id);
            r.discarding.insert(id);
        }
    }

    fn inbound(&mut self, ctx: &mut Context<Self>, req: Inbound) {
        if self.closing {
            return;
        }
        if let ClientMsg::Ping { sent_ms } = req.msg {
            self.reply(ctx, req.id, ServerMsg::Pong { sent_ms });
            return;
        }
        if self.busy {
            if self.queue.len() >= QUEUE_LIMIT {
                self.error(
                    ctx,
                    req.id,
                    ErrorCode::Busy,
                    "too many requests while a step is running: wait for each answer".into(),
                );
                return;
            }
            if matches!(req.msg, ClientMsg::Hello(_)) {
                tracing::info!(client = %self.client, "hello while a step runs: cancelling it, the round restarts");
                self.cancel_step();
            }
            self.queue.push_back(req);
            return;
        }
        self.dispatch(ctx, req);
    }

    fn next_queued(&mut self, ctx: &mut Context<Self>) {
        while !self.busy && !self.closing {
            let Some(req) = self.queue.pop_front() else { break };
            self.dispatch(ctx, req);
        }
    }

    /// Checks that `msg` may come now; `Err` is the reason it may not.
    fn check_order(&self, msg: &ClientMsg) -> Result<(), String> {
        let open = self.round.as_ref();
        let want = |steps: &[RoundStep], what: &str| -> Result<(), String> {
            if open.is_some() && steps.contains(&self.step) {
                Ok(())
            } else if open.is_none() {
                Err(format!("{what} without an open round: send Hello first"))
            } else {
                Err(format!("{what} out of order: the round is at step {}", self.step.label()))
            }
        };
        match msg {
            ClientMsg::WasCommitted { .. } | ClientMsg::Hello(_) | ClientMsg::Ping { .. } => Ok(()),
            ClientMsg::HeldList(_) => want(&[RoundStep::Hello], "HeldList (only right after Hello)"),
            ClientMsg::Deletes(_) => {
                want(&[RoundStep::Hello], "Deletes (step 1, after Hello)")?;
                if open.is_some_and(|r| r.need_held_list) {
                    return Err("Deletes before HeldList: the hello reply asked for the full held list".into());
                }
                Ok(())
            }
            ClientMsg::AskDeletes => want(&[RoundStep::Deletes], "AskDeletes (step 2, after Deletes)"),
            ClientMsg::SendWrites { .. } => {
                want(&[RoundStep::DeletesForClient], "SendWrites (step 3, after AskDeletes)")
            }
            ClientMsg::AskWrites { .. } => want(&[RoundStep::WritesIn], "AskWrites (step 4, after SendWrites)"),
            ClientMsg::Commit(_) => want(&[RoundStep::WritesOut], "Commit (step 5, after AskWrites)"),
        }
    }

    fn dispatch(&mut self, ctx: &mut Context<Self>, req: Inbound) {
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
            ClientMsg::WasCommitted { round_id } => {
                let client = self.client.clone();
                self.engine(
                    ctx,
                    None,
                    move |p, _| p.was_committed(&client, round_id),
                    move |act, ctx, _, r| match r {
                        Ok(b) => act.reply(ctx, id, ServerMsg::WasCommitted(b)),
                        Err(e) => act.error(ctx, id, code_of(&e), cs_supervision::error_chain(&e)),
                    },
                );
            }
            ClientMsg::Hello(hello) => self.hello(ctx, id, hello),
            ClientMsg::HeldList(paths) => {
                let round = self.take_round();
                self.engine(
                    ctx,
                    round,
                    move |p, r| {
                        p.set_held_list(r.as_mut().expect("round"), paths);
                        Ok::<_, EngineError>(())
                    },
                    move |act, ctx, round, _| {
                        act.put_round(round);
                        if let Some(o) = act.round.as_mut() {
                            o.need_held_list = false;
                        }
                        act.reply(ctx, id, ServerMsg::HeldListOk);
                    },
                );
            }
            ClientMsg::Deletes(paths) => {
                self.step = RoundStep::Deletes;
                let round = self.take_round();
                self.engine(
                    ctx,
                    round,
                    move |p, r| p.apply_deletes(r.as_mut().expect("round"), &paths),
                    move |act, ctx, round, res| match res {
                        Ok(report) => {
                            act.put_round(round);
                            act.reply(ctx, id, ServerMsg::DeleteReport(report));
                        }
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
                self.step = RoundStep::DeletesForClient;
                let round = self.take_round();
                self.engine(
                    ctx,
                    round,
                    move |p, r| Ok::<_, EngineError>(p.deletes_for_client(r.as_mut().expect("round"))),
                    move |act, ctx, round, res| {
                        act.put_round(round);
                        if let Ok(paths) = res {
                            act.reply(ctx, id, ServerMsg::DeletesForYou(paths));
                        }
                    },
                );
            }
            ClientMsg::SendWrites { stream: sid } => {
                let Some(rx) = stream else {
                    self.fail_round(ctx, id, ErrorCode::Internal, "the stream of SendWrites was not set up".into());
                    return;
                };
                self.step = RoundStep::WritesIn;
                let round = self.take_round();
                let work = self.tar_work();
                self.engine(
                    ctx,
                    round,
                    move |p, r| {
                        let mut reader = SlotReader::new(rx, work);
                        let res = p.apply_writes(r.as_mut().expect("round"), &mut reader, None);
                        (res, reader.bytes)
                    },
                    move |act, ctx, round, (res, bytes)| {
                        act.bytes_in += bytes;
                        match res {
                            Ok(report) => {
                                act.put_round(round);
                                let entries =
                                    report.applied + report.unchanged + report.conflicts.len() + report.refused.len();
                                act.entries_in += entries as u64;
                                act.conflicts_total += report.conflicts.len() as u64;
                                act.reply(ctx, id, writes_applied(report));
                            }
                            Err(e) => {
                                // The rest of the stream (if any) is dropped
                                // quietly: unless its end frame came already,
                                // its remaining frames are discarded, not
                                // answered as frames of an unknown stream (a
                                // stray answer would put the client's next
                                // request out of step).
                                {
                                    let mut r = routes(&act.routes);
                                    if r.open.remove(&sid).is_some() {
                                        r.discarding.insert(sid);
                                    }
                                }
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
                self.step = RoundStep::WritesOut;
                let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
                let Some(out) = self.out.clone() else { return };
                // The stream goes before anything queued after it: its chunks,
                // its end, then (below) WritesFollow with the cursor.
                if out.try_send(Outgoing::Stream { stream: sid, rx }).is_err() {
                    self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
                    return;
                }
                let round = self.take_round();
                let work = self.tar_work();
                let max_chunk = self.shared.limits.max_chunk_bytes;
                self.engine(
                    ctx,
                    round,
                    move |p, r| {
                        let mut writer = SlotWriter::new(tx, max_chunk, work);
                        if let Err(e) = writer.start() {
                            writer.abort(&e.to_string());
                            return Err(EngineError::Protocol(format!("step 4 not started: {e}")));
                        }
                        match p.pack_changes(r.as_mut().expect("round"), writer) {
                            Ok((writer, stats, cursor)) => match writer.finish() {
                                Ok(()) => Ok((stats, cursor)),
                                Err(e) => Err(EngineError::Protocol(format!("stream to the client: {e}"))),
                            },
                            Err(e) => Err(e),
                        }
                    },
                    move |act, ctx, round, res| match res {
                        Ok((stats, cursor)) => {
                            act.put_round(round);
                            act.entries_out += stats.entries;
                            act.bytes_out += stats.compressed_bytes;
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
        if self.round.take().is_some() {
            tracing::info!(client = %self.client, "hello during a round: the round restarts");
            self.rounds_failed += 1;
        }
        self.step = RoundStep::Hello;
        let started = Instant::now();
        self.engine(
            ctx,
            None,
            move |p, _| p.begin_round(&hello),
            move |act, ctx, _, res| match res {
                Ok((round, reply)) => {
                    act.round = Some(OpenRound { round: Some(round), started, need_held_list: reply.need_held_list });
                    act.reply(ctx, id, ServerMsg::HelloReply(reply));
                }
                Err(e) => act.fail_round(ctx, id, code_of(&e), format!("hello: {}", cs_supervision::error_chain(&e))),
            },
        );
    }

    fn commit(&mut self, ctx: &mut Context<Self>, id: u64, req: CommitRequest) {
        self.step = RoundStep::Commit;
        let Some(open) = self.round.take() else { return };
        let started = open.started;
        let round = open.round;
        let client = self.client.clone();
        self.engine(
            ctx,
            None,
            move |p, _| match round {
                Some(r) => p.commit(r, &req).map(|cursor| (cursor, p.busy_files(&client))),
                None => Err(EngineError::Protocol("no round to commit".into())),
            },
            move |act, ctx, _, res| match res {
                Ok((cursor, busy)) => {
                    act.snapshots_sent += busy.iter().filter(|b| b.snapshot_sent).count() as u64;
                    act.deferred = crate::state::DeferredFiles {
                        count: busy.len() as u64,
                        files: busy.into_iter().take(10).collect(),
                    };
                    act.step = RoundStep::Idle;
                    act.rounds_committed += 1;
                    act.last_round_unix_ms = Some(unix_ms());
                    act.last_round_duration_ms = Some(started.elapsed().as_millis() as u64);
                    tracing::info!(client = %act.client, ?cursor, ms = started.elapsed().as_millis() as u64, "round committed");
                    act.reply(ctx, id, ServerMsg::Committed { cursor });
                }
                Err(e) => {
                    act.rounds_failed += 1;
                    act.fail_round(ctx, id, code_of(&e), format!("step 5 (commit): {}", cs_supervision::error_chain(&e)))
                }
            },
        );
    }

    fn take_round(&mut self) -> Option<ProjectRound> {
        self.round.as_mut().and_then(|o| o.round.take())
    }

    fn put_round(&mut self, round: Option<ProjectRound>) {
        if let Some(o) = self.round.as_mut() {
            o.round = round;
        }
    }

    fn tar_work(&self) -> TarWork {
        TarWork::new(self.shared.tar.clone(), self.cancel.clone(), self.heartbeat.clone(), self.activity.clone())
            // A stream silent for this long ends the session anyway.
            .with_silence_limit(self.shared.idle_timeout)
    }

    /// Runs `work` on a blocking thread with the round (moved there and
    /// back), under this client's lock; then `then` on the actor. While it
    /// runs, requests wait in the queue.
    fn engine<T, W, F>(&mut self, ctx: &mut Context<Self>, round: Option<ProjectRound>, work: W, then: F)
    where
        T: Send + 'static,
        W: FnOnce(&ProjectSide, &mut Option<ProjectRound>) -> T + Send + 'static,
        F: FnOnce(&mut Self, &mut Context<Self>, Option<ProjectRound>, T) + 'static,
    {
        self.busy = true;
        self.heartbeat.beat();
        let project = self.shared.project.clone();
        let lock = self.client_lock.clone();
        let calls = self.shared.engine_calls.clone();
        let fut = async move {
            let guard = lock.lock_owned().await;
            let call = EngineCall::new(&calls);
            let (done, result) = oneshot::channel();
            // A thread of its own, not `spawn_blocking`: the runtime's
            // shutdown waits for its blocking tasks, so one stuck call would
            // keep the broker from exiting on SIGTERM (shutdown waits for
            // calls in flight, bounded, then the process exits).
            std::thread::Builder::new()
                .name("cs-broker-engine".into())
                .spawn(move || {
                    // Held until the call returns, even if the session is gone.
                    let _guard = guard;
                    let _call = call;
                    let mut round = round;
                    let out = work(&project, &mut round);
                    let _ = done.send((round, out));
                })
                .map_err(|e| format!("cannot start an engine thread: {e}"))?;
            result.await.map_err(|_| "the engine call panicked".to_string())
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.busy = false;
            act.streaming = false;
            act.heartbeat.beat();
            act.activity.touch();
            match res {
                Ok((round, out)) => then(act, ctx, round, out),
                Err(e) => {
                    tracing::error!(client = %act.client, "engine call failed: {e}");
                    act.round = None;
                    act.step = RoundStep::Idle;
                    act.rounds_failed += 1;
                    act.last_error = Some(format!("internal error: {e}"));
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
fn code_of(e: &EngineError) -> ErrorCode {
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

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let idle = self.shared.idle_timeout;
        let every = (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(every, move |act, ctx| {
            if act.busy && !act.streaming {
                // Computing (e.g. the hello's rescan of a large home).
                act.activity.touch();
                return;
            }
            let silent = act.activity.idle_for();
            if silent >= idle {
                act.end(
                    ctx,
                    ExitStatus::Failure(format!("idle for {} ms (limit {} ms)", silent.as_millis(), idle.as_millis())),
                );
            }
        });
        tracing::info!(client = %self.client, peer = %self.peer, "session started");
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.closing = true;
        Running::Stop
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.close_streams();
        // Dropping the queue's sender lets the writer flush and close.
        self.out = None;
        if let Some(w) = self.writer.take() {
            actix_rt::spawn(async move {
                tokio::time::sleep(FLUSH_GRACE).await;
                w.abort();
            });
        }
        self.broker.do_send(SessionEnded {
            client: self.client.clone(),
            peer: self.peer,
            conn_id: self.conn_id,
            exit: self.exit.clone().unwrap_or(ExitStatus::Quit),
            refused: self.refused,
        });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Idempotent; covers an actor dropped without `stopped` (its
        // system stopping).
        self.close_streams();
    }
}

impl Handler<Inbound> for Session {
    type Result = ();
    fn handle(&mut self, msg: Inbound, ctx: &mut Context<Self>) {
        self.inbound(ctx, msg);
    }
}

impl Handler<BadFrame> for Session {
    type Result = ();
    fn handle(&mut self, msg: BadFrame, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        tracing::warn!(client = %self.client, peer = %self.peer, "bad frame: {}", msg.reason);
        self.last_error = Some(format!("{}: {}", msg.code, msg.reason));
        self.reply(ctx, msg.id.unwrap_or(0), ServerMsg::Error { code: msg.code, message: msg.reason });
    }
}

impl Handler<ConnectionLost> for Session {
    type Result = ();
    fn handle(&mut self, msg: ConnectionLost, ctx: &mut Context<Self>) {
        match msg.reason {
            None => self.end(ctx, ExitStatus::Success),
            Some(r) => self.end(ctx, ExitStatus::Failure(r)),
        }
    }
}

impl Handler<ObserveSession> for Session {
    type Result = MessageResult<ObserveSession>;
    fn handle(&mut self, _: ObserveSession, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<StopSession> for Session {
    type Result = ();
    fn handle(&mut self, msg: StopSession, ctx: &mut Context<Self>) {
        self.end(ctx, msg.status);
    }
}

/// Reads frames: control messages go to the actor (one at a time: the
/// bounded mailbox is the backpressure), chunks to their stream's channel
/// (a full channel stops the reading, and TCP's window stops the client).
async fn read_loop(
    mut rx: WsReceiver<BoxedIo, ClientMsg>,
    addr: Addr<Session>,
    table: SharedRoutes,
    activity: Activity,
) {
    let reason = loop {
        let frame = match rx.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) if !e.is_fatal() => {
                activity.touch();
                let bad = BadFrame { id: e.request_id(), code: e.error_code(), reason: e.to_string() };
                if addr.send(bad).await.is_err() {
                    return;
                }
                continue;
            }
            Err(WireError::Closed) => break None,
            Err(e) => break Some(e.to_string()),
        };
        activity.touch();
        if routes(&table).closed {
            // The session ended: feed no stream any more.
            return;
        }
        match frame {
            Frame::Control(env) => {
                let mut stream = None;
                if let ClientMsg::SendWrites { stream: sid } = env.body {
                    let opened = {
                        let mut r = routes(&table);
                        if r.open.contains_key(&sid) {
                            None
                        } else {
                            let (tx, srx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
                            r.discarding.remove(&sid);
                            r.open.insert(sid, tx);
                            Some(srx)
                        }
                    };
                    if opened.is_none() {
                        let bad = BadFrame {
                            id: Some(env.id),
                            code: ErrorCode::BadRequest,
                            reason: format!("stream {sid} is already open"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    stream = opened;
                }
                if addr.send(Inbound { id: env.id, msg: env.body, stream }).await.is_err() {
                    return;
                }
            }
            Frame::Chunk { stream: sid, data } => {
                let tx = {
                    let mut r = routes(&table);
                    match r.open.get(&sid) {
                        Some(tx) => Ok(tx.clone()),
                        None if r.discarding.contains(&sid) => Err(false),
                        None => {
                            r.discarding.insert(sid);
                            Err(true)
                        }
                    }
                };
                match tx {
                    Ok(tx) => {
                        if tx.send(StreamItem::Chunk(data)).await.is_err() {
                            // The step stopped reading (it failed or was
                            // cancelled): drop the rest of the stream.
                            let mut r = routes(&table);
                            r.open.remove(&sid);
                            r.discarding.insert(sid);
                        }
                    }
                    Err(true) => {
                        let bad = BadFrame {
                            id: None,
                            code: ErrorCode::BadRequest,
                            reason: format!("stream chunk for stream {sid}, which no accepted SendWrites opened"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                    }
                    Err(false) => {}
                }
            }
            Frame::End { stream: sid, end } => {
                let tx = {
                    let mut r = routes(&table);
                    let tx = r.open.remove(&sid);
                    let known = tx.is_some() || r.discarding.remove(&sid);
                    (tx, known)
                };
                match tx {
                    (Some(tx), _) => {
                        let _ = tx.send(StreamItem::End(end)).await;
                    }
                    (None, true) => {}
                    (None, false) => {
                        let bad = BadFrame {
                            id: None,
                            code: ErrorCode::BadRequest,
                            reason: format!("end frame for stream {sid}, which is not open"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    addr.do_send(ConnectionLost { reason });
}

/// Forwards step 4's stream chunk by chunk up to its end.
async fn forward_stream(
    tx: &mut WsSender<BoxedIo, ServerMsg>,
    stream: u32,
    rx: &mut mpsc::Receiver<StreamItem>,
    activity: &Activity,
) -> Result<(), WireError> {
    loop {
        let frame = match rx.recv().await {
            Some(StreamItem::Chunk(data)) => Frame::Chunk { stream, data },
            Some(StreamItem::End(end)) => Frame::End { stream, end },
            None => {
                Frame::End { stream, end: StreamEnd::Abort("the project side stopped before the stream's end".into()) }
            }
        };
        let last = matches!(frame, Frame::End { .. });
        tx.send(&frame).await?;
        activity.touch();
        if last {
            return Ok(());
        }
    }
}

/// Sends what the actor queues, in order; step 4's stream is forwarded
/// chunk by chunk up to its end. Closes the connection when the queue ends.
async fn write_loop(
    mut tx: WsSender<BoxedIo, ServerMsg>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut ended: watch::Receiver<()>,
    addr: Addr<Session>,
    activity: Activity,
    client: ClientId,
) {
    let result: Result<(), WireError> = async {
        while let Some(item) = queue.recv().await {
            match item {
                Outgoing::Frame(f) => {
                    tx.send(&f).await?;
                    activity.touch();
                }
                Outgoing::Stream { stream, mut rx } => {
                    // `changed` fails only when the session drops `alive`.
                    let session_ended = tokio::select! {
                        r = forward_stream(&mut tx, stream, &mut rx, &activity) => { r?; false }
                        _ = ended.changed() => true,
                    };
                    if session_ended {
                        // The session ended in the middle of step 4: drop
                        // the channel now (the packer's next send fails),
                        // without waiting for a socket that may be stuck;
                        // the rest of the queue is no use to a client cut
                        // mid-stream.
                        drop(rx);
                        break;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(FLUSH_GRACE, tx.close()).await;
        }
        Err(e) => {
            tracing::debug!(client = %client, "writer: {e}");
            addr.do_send(ConnectionLost { reason: Some(format!("sending: {e}")) });
        }
    }
}
