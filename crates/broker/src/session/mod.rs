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
//! answering `Observe<Session>`, `Ping` and the idle check. Requests are handled one
//! at a time, in order; one that arrives while a step runs waits in a short
//! queue (a `Hello` there cancels the running step: the round restarts).
//!
//! The actor owns and wires five parts: [`phase`] (the round and its step:
//! a step borrows the round from it), [`io`] (the reader and writer tasks),
//! [`engine`] (each request as an engine call), [`follow`] (telling a
//! client of project changes between its rounds) and [`stats`] (the
//! counters, and the state `status` shows).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cs_engine::{ProjectRound, ProjectSide};
use cs_protocol::ClientId;
use cs_supervision::{ExitStatus, Heartbeat, Observable};
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, StreamItem, WireLimits, WsReceiver, WsSender};
use tokio::sync::{mpsc, watch};

use crate::bridge::{Activity, TarSlots};
use crate::broker::{Broker, SessionEnded};
use crate::state::SessionState;
use crate::BoxedIo;

mod engine;
mod fetch;
mod follow;
mod io;
mod phase;
mod snapshot;
mod stats;

use io::{read_loop, routes, write_loop, Outgoing, SharedRoutes};
use phase::Phase;
use stats::Stats;

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

/// Ends a session (replaced by a new connection of its client, shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopSession {
    pub status: ExitStatus,
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
    /// The round, and where it is.
    phase: Phase<ProjectRound>,
    /// Closing: nothing more is handled.
    closing: bool,
    /// Set when the session ends as a refusal (counted by the broker).
    refused: Option<&'static str>,
    exit: Option<ExitStatus>,
    stats: Stats,
    /// The stream ids of fetches in flight (they run beside the round).
    fetches: HashSet<u32>,
    /// Set when the session ends: the fetches in flight stop.
    fetch_cancel: Arc<AtomicBool>,
    /// The stream ids of snapshots in flight (beside the round, as fetches;
    /// they stop with `fetch_cancel` too).
    snapshots: HashSet<u32>,
    /// Requests whose answer must follow the end of their stream (step 4,
    /// fetches): request id → stream id.
    hold: HashMap<u64, u32>,
    /// Pushes of `ProjectChanged` to a client that asked (see `follow`).
    follow: follow::Follow,
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
    /// Busy during engine calls, beaten per entry: the broker's watchdog reads it.
    pub heartbeat: Heartbeat,
}

impl Session {
    /// Starts the session's actor and its reader and writer tasks.
    pub(crate) fn start(parts: SessionParts) -> Addr<Session> {
        let SessionParts { client, peer, conn_id, broker, shared, client_lock, sender, receiver, heartbeat } = parts;
        let (out_tx, out_rx) = mpsc::channel(OUTGOING_CAPACITY);
        let routes: SharedRoutes = Arc::default();
        let activity = Activity::default();
        activity.touch();
        let (alive, ended) = watch::channel(());
        cs_supervision::spawn_with(cs_supervision::MAILBOX_CAPACITY, move |ctx| {
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
                heartbeat,
                reader: Some(reader),
                writer: Some(writer),
                alive: Some(alive),
                cancel: Arc::new(AtomicBool::new(false)),
                busy: false,
                current_id: 0,
                streaming: false,
                queue: VecDeque::new(),
                phase: Phase::Idle,
                closing: false,
                refused: None,
                exit: None,
                stats: Stats::default(),
                fetches: HashSet::new(),
                fetch_cancel: Arc::new(AtomicBool::new(false)),
                snapshots: HashSet::new(),
                hold: HashMap::new(),
                follow: follow::Follow::default(),
            }
        })
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

    /// Answers request `id`; after the end of its stream if it has one.
    fn reply(&mut self, ctx: &mut Context<Self>, id: u64, msg: ServerMsg) {
        let frame = Frame::control(id, msg);
        let Some(stream) = self.hold.remove(&id) else { return self.send_frame(ctx, frame) };
        let Some(out) = &self.out else { return };
        if out.try_send(Outgoing::After { stream, frame }).is_err() {
            self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
        }
    }

    /// Answers an error; the session goes on.
    fn error(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        tracing::warn!(client = %self.client, peer = %self.peer, request = id, ?code, "{message}");
        self.stats.last_error = Some(format!("{code}: {message}"));
        self.reply(ctx, id, ServerMsg::Error { code, message });
    }

    /// A step failed: the round is abandoned, nothing of it is committed.
    fn fail_round(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        if self.phase.end_round() {
            self.stats.rounds_failed += 1;
        }
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
                self.stats.last_error.get_or_insert_with(|| reason.clone());
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
        routes(&self.routes).close();
        self.cancel_step();
        self.fetch_cancel.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        self.alive = None;
    }

    fn cancel_step(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Unblocks a step-3 reader waiting for chunks that will not come.
        routes(&self.routes).discard_all();
    }

    fn inbound(&mut self, ctx: &mut Context<Self>, req: Inbound) {
        if self.closing {
            return;
        }
        if let ClientMsg::Ping { sent_ms } = req.msg {
            self.reply(ctx, req.id, ServerMsg::Pong { sent_ms });
            return;
        }
        // A fetch runs beside the round: it never waits for a step.
        if let ClientMsg::Fetch { paths, stream } = req.msg {
            self.fetch(ctx, req.id, paths, stream);
            return;
        }
        // So does a snapshot, and the question of where P's journal is.
        if let ClientMsg::Snapshot { stream } = req.msg {
            self.snapshot_request(ctx, req.id, stream);
            return;
        }
        if let ClientMsg::JournalAt = req.msg {
            self.journal_at(ctx, req.id);
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
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
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
        // `send().await` off the actor (it is stopping): the broker must
        // learn that the session ended (it frees the client's slot), so wait
        // for room rather than drop; an error means the broker stopped.
        let ended = self.broker.send(SessionEnded {
            client: self.client.clone(),
            peer: self.peer,
            conn_id: self.conn_id,
            exit: self.exit.clone().unwrap_or(ExitStatus::Quit),
            refused: self.refused,
        });
        actix_rt::spawn(async move {
            if ended.await.is_err() {
                tracing::debug!("session ended after the broker stopped");
            }
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
        self.stats.last_error = Some(format!("{}: {}", msg.code, msg.reason));
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

impl Observable for Session {
    type State = SessionState;
    fn observe(&self) -> SessionState {
        self.snapshot()
    }
}
cs_supervision::observable!(Session);

impl Handler<StopSession> for Session {
    type Result = ();
    fn handle(&mut self, msg: StopSession, ctx: &mut Context<Self>) {
        self.end(ctx, msg.status);
    }
}
