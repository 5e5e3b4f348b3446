//! The websocket to the broker: one connection per compute server, request
//! and answer correlated by id, tar streams as chunk frames with bounded
//! channels (flow control), pings for liveness and round-trip time, and
//! reconnection with jittered exponential backoff.
//!
//! The actor owns the connection's lifecycle and its observable state; the
//! [`LinkHandle`] it hands out is what a round uses to talk to the broker.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use async_trait::async_trait;
use cs_protocol::{RelPath, SnapshotEntry, SnapshotReport};
use cs_supervision::{Backoff, Observable};
use cs_wire::{
    stream_channel, ChunkReader, ChunkWriter, ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, StreamItem, WireError,
    WireLimits, DEFAULT_STREAM_CHANNEL,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::failure::{classify_wire, Verdict};
use crate::fetch::{FetchError, FetchResult};
use crate::round::{Link, OutStream, RoundError};
use crate::snapshot::SnapshotError;

const CAP_UNKNOWN: u8 = 0;
const CAP_NO: u8 = 1;
const CAP_YES: u8 = 2;

/// How long one connection attempt may take (TCP, TLS, websocket upgrade).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a request to the broker got no answer. The wire's error is kept (shared: every
/// request waiting on a connection learns the same cause) so that the retry policy can
/// tell a refused token from a network that is down.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No connection now; `last` is why the last attempt failed or the last connection ended.
    #[error("not connected to the broker")]
    NotConnected {
        #[source]
        last: Option<Arc<WireError>>,
    },
    #[error("connection to the broker lost")]
    Lost(#[source] Arc<WireError>),
    #[error("no answer from the broker within {0:?}")]
    NoAnswer(Duration),
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The in-memory link of the tests and the demo (`crate::local`): a pipe failed or a
    /// fault was injected on purpose.
    #[error("in-memory link: {0}")]
    InMemory(String),
}

#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    pub url: String,
    pub token: String,
    pub extra_ca: Option<PathBuf>,
    pub limits: WireLimits,
    pub ping_interval: Duration,
    /// No answer to a request (or a pong) for this long: the connection is dead.
    pub request_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl ConnectionConfig {
    pub fn new(url: String, token: String) -> Self {
        ConnectionConfig {
            url,
            token,
            extra_ca: None,
            limits: WireLimits::default(),
            ping_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionState {
    pub url: String,
    /// connecting, connected, backoff, or stopped (the broker refused us for a reason that
    /// retrying cannot fix, such as the token: the next round, e.g. `cs-actor sync`, tries once more).
    pub state: &'static str,
    pub connected_for_ms: Option<u64>,
    pub rtt_ms: Option<f64>,
    pub reconnects: u64,
    pub failed_attempts: u32,
    pub next_attempt_in_ms: Option<u64>,
    pub last_error: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Following the project (docs/protocol.md, *Follow*): whether the broker's last hello
    /// answer on this connection offered to push project changes to a client that asks
    /// (None before the first answer, `false` from an older broker), how many pushes came,
    /// and when the last did.
    pub follow_offered: Option<bool>,
    pub project_pushes: u64,
    pub last_project_push_unix_ms: Option<u64>,
}

enum WriterCmd {
    Frame(Frame<ClientMsg>),
    Stream(u32, mpsc::Receiver<StreamItem>),
}

type Answer = oneshot::Sender<Result<ServerMsg, LinkError>>;

/// What the round and the actor share: the writer, requests waiting for an
/// answer, stream routes.
/// One item per wake-up of the `Notify` that `which` picks: a stream that never ends;
/// notifications made while it is not polled make one item (the `Notify`'s permit).
fn each_notification(
    shared: Arc<Shared>,
    which: fn(&Shared) -> &Notify,
) -> impl futures_util::Stream<Item = ()> + Send + 'static {
    futures_util::stream::unfold(shared, move |shared| async move {
        which(&shared).notified().await;
        Some(((), shared))
    })
}

#[derive(Default)]
struct Shared {
    writer: Mutex<Option<mpsc::Sender<WriterCmd>>>,
    pending: Mutex<HashMap<u64, Answer>>,
    inbound: Mutex<HashMap<u32, mpsc::Sender<StreamItem>>>,
    outbound: Mutex<HashMap<u32, mpsc::Receiver<StreamItem>>>,
    next_id: AtomicU64,
    next_stream: AtomicU32,
    /// Fetches and snapshots number their streams apart (with `FETCH_STREAM_BIT`).
    next_fetch_stream: AtomicU32,
    /// What the broker's last hello answer on this connection said of
    /// snapshots: [`CAP_UNKNOWN`] (no hello yet on this connection),
    /// [`CAP_NO`] or [`CAP_YES`].
    snapshot_cap: AtomicU8,
    /// The same for following ([`CAP_UNKNOWN`], [`CAP_NO`], [`CAP_YES`]).
    follow_cap: AtomicU8,
    /// P pushed `ProjectChanged`: one stored permit, so pushes that arrive while
    /// nobody waits make one wake-up, not a queue (a round catches them all).
    project_changed: Notify,
    /// Each connection made: one stored permit, like `project_changed`.
    link_up: Notify,
    project_pushes: AtomicU64,
    last_project_push_unix_ms: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    rtt_us: AtomicU64,
    /// Tar streams under way: pings wait behind a stream on the one
    /// connection, so they are not sent (nor judged) meanwhile.
    active_streams: AtomicU32,
    /// Why the last attempt failed or the last connection ended (None while connected).
    down: Mutex<Option<Arc<WireError>>>,
    /// The last failure was permanent: the actor waits for `wake` instead of a timer.
    stopped: std::sync::atomic::AtomicBool,
    /// A round wants the stopped connection tried once more.
    wake: Notify,
    /// An attempt ended (connected or failed): rounds waiting on `wake` look again.
    settled: Notify,
    /// An attempt is under way (from the actor's creation, whose first act is one): a
    /// round asking now waits for its outcome instead of failing "not connected" while
    /// the connection is a few milliseconds away, as the first round at start-up did.
    attempting: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection is gone: every waiter learns it now.
    fn fail_all(&self, why: LinkError) {
        *Self::lock(&self.writer) = None;
        for (_, tx) in Self::lock(&self.pending).drain() {
            let _ = tx.send(Err(why.clone()));
        }
        let reason = cs_supervision::error_chain(&why);
        for (_, tx) in Self::lock(&self.inbound).drain() {
            let _ = tx.try_send(StreamItem::End(StreamEnd::Abort(reason.clone())));
        }
        Self::lock(&self.outbound).clear();
        self.active_streams.store(0, Ordering::Relaxed);
    }
}

/// The round's handle on the connection.
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
    limits: WireLimits,
    timeout: Duration,
}

impl LinkHandle {
    /// The writer of the live connection. None: if the connection stopped after a permanent
    /// failure, a round is asking, so it is tried once more and its outcome awaited; if an
    /// attempt is under way, its outcome is awaited; otherwise (backing off) the round fails
    /// at once with the last cause.
    async fn writer(&self) -> Result<mpsc::Sender<WriterCmd>, LinkError> {
        if let Some(w) = Shared::lock(&self.shared.writer).clone() {
            return Ok(w);
        }
        // Made before the checks below: a `Notified` counts `notify_waiters` calls from its
        // creation on, so an attempt that settles in between still wakes it.
        let settled = self.shared.settled.notified();
        if self.shared.stopped.load(Ordering::Relaxed) {
            self.shared.wake.notify_one();
            let _ = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), settled).await;
        } else if self.shared.attempting.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(5), settled).await;
        }
        let writer = Shared::lock(&self.shared.writer).clone();
        writer.ok_or_else(|| LinkError::NotConnected { last: Shared::lock(&self.shared.down).clone() })
    }

    /// Each push of `ServerMsg::ProjectChanged` from the broker, as a stream that ends
    /// never: pushes that arrive while the stream is not polled make one item, not
    /// several (the round they start catches every change).
    pub fn project_changes(&self) -> impl futures_util::Stream<Item = ()> + Send + 'static {
        each_notification(self.shared.clone(), |s| &s.project_changed)
    }

    /// Each connection made (the first and every reconnection), as a stream that never
    /// ends; connections made while it is not polled make one item.
    pub fn link_ups(&self) -> impl futures_util::Stream<Item = ()> + Send + 'static {
        each_notification(self.shared.clone(), |s| &s.link_up)
    }

    /// Fetches P's current content of `paths` (project paths; at most
    /// [`cs_wire::MAX_FETCH_PATHS`]) and unpacks it into the existing
    /// directory `target` (see [`crate::fetch`]): a file at its path below
    /// `target`, a directory as itself and its regular files. At any
    /// moment, beside a round in flight (the broker serves it on its own;
    /// the stream is another stream id on the same connection). Paths P
    /// does not have or refuses are reported, not errors.
    pub async fn fetch(&self, paths: Vec<RelPath>, target: &Path) -> Result<FetchResult, FetchError> {
        if paths.len() > cs_wire::MAX_FETCH_PATHS {
            return Err(FetchError::TooManyPaths(paths.len()));
        }
        let seq = self.shared.next_fetch_stream.fetch_add(1, Ordering::Relaxed);
        let stream = cs_wire::FETCH_STREAM_BIT | (seq & !cs_wire::FETCH_STREAM_BIT);
        let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
        self.shared.active_streams.fetch_add(1, Ordering::Relaxed);
        Shared::lock(&self.shared.inbound).insert(stream, tx);
        let (asked, dir) = (paths.clone(), target.to_owned());
        let unpacker = std::thread::Builder::new()
            .name("cs-fetch-unpack".into())
            .spawn(move || crate::fetch::unpack_into(ChunkReader::new(rx), &dir, &asked));
        let unpacker = match unpacker {
            Ok(t) => t,
            Err(e) => {
                self.cancel_inbound(stream);
                return Err(FetchError::Thread(e.to_string()));
            }
        };
        let join = |t: std::thread::JoinHandle<Result<FetchResult, FetchError>>| async move {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| FetchError::Thread(e.to_string()))?
                .map_err(|_| FetchError::Thread("the unpacking thread panicked".into()))?
        };
        let answer = self.request(ClientMsg::Fetch { paths, stream }).await;
        let report = match answer {
            Ok(ServerMsg::FetchFollows { stream: s, report }) if s == stream => report,
            other => {
                // No stream (refused), or a broken one: the unpacker ends.
                self.cancel_inbound(stream);
                let _ = join(unpacker).await;
                return Err(match other {
                    Ok(ServerMsg::Error { code: ErrorCode::BadRequest, message })
                        if message.contains("unknown") && message.contains("Fetch") =>
                    {
                        FetchError::NotSupported(message)
                    }
                    Ok(ServerMsg::Error { code, message }) => FetchError::Refused { code, message },
                    Ok(m) => FetchError::Unexpected(format!("{m:?}")),
                    Err(e) => FetchError::Request(e),
                });
            }
        };
        // The answer comes after the stream's end: the unpacker has it all.
        Ok(join(unpacker).await?.with_report(report))
    }

    /// Whether the broker serves snapshots, as its last hello answer on
    /// this connection said (`None`: no hello answered on it yet).
    pub fn broker_serves_snapshot(&self) -> Option<bool> {
        match self.shared.snapshot_cap.load(Ordering::Relaxed) {
            CAP_YES => Some(true),
            CAP_NO => Some(false),
            _ => None,
        }
    }

    /// Asks the broker for P's metadata of the whole project (see
    /// [`crate::snapshot`] and docs/protocol.md, *Snapshot*) and gives each
    /// entry to `visit`, in pre-order, as it is decoded on a blocking
    /// thread. Returns P's report: the entry count and the journal cursor
    /// taken before P's walk (a client starting from this snapshot rounds
    /// from that cursor). At any moment, beside a round in flight.
    ///
    /// If the broker's hello answer on this connection said it does not
    /// serve snapshots, nothing is sent ([`SnapshotError::NotSupported`]);
    /// before any hello, the request is sent and an older broker's "unknown
    /// message" answer gives the same error. A visitor error stops the
    /// decoding; the rest of the stream is discarded as it arrives and the
    /// answer awaited, so the connection and later requests are unaffected.
    pub async fn snapshot<F>(&self, visit: F) -> Result<SnapshotReport, SnapshotError>
    where
        F: FnMut(SnapshotEntry) -> Result<(), String> + Send + 'static,
    {
        if self.broker_serves_snapshot() == Some(false) {
            return Err(SnapshotError::NotSupported("its hello answer on this connection says snapshot: false".into()));
        }
        let seq = self.shared.next_fetch_stream.fetch_add(1, Ordering::Relaxed);
        let stream = cs_wire::FETCH_STREAM_BIT | (seq & !cs_wire::FETCH_STREAM_BIT);
        let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
        self.shared.active_streams.fetch_add(1, Ordering::Relaxed);
        Shared::lock(&self.shared.inbound).insert(stream, tx);
        let mut visit = visit;
        let decoder = std::thread::Builder::new()
            .name("cs-snapshot-decode".into())
            // The reader is dropped when decoding stops (an error included):
            // the connection's reader then discards the stream's other chunks.
            .spawn(move || crate::snapshot::decode_into(ChunkReader::new(rx), &mut visit));
        let decoder = match decoder {
            Ok(t) => t,
            Err(e) => {
                self.cancel_inbound(stream);
                return Err(SnapshotError::Thread(e.to_string()));
            }
        };
        let join = |t: std::thread::JoinHandle<Result<u64, SnapshotError>>| async move {
            tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| SnapshotError::Thread(e.to_string()))?
                .map_err(|_| SnapshotError::Thread("the decoding thread panicked".into()))?
        };
        let answer = self.request(ClientMsg::Snapshot { stream }).await;
        let report = match answer {
            Ok(ServerMsg::SnapshotFollows { stream: s, report }) if s == stream => report,
            other => {
                // No stream (refused), or a broken one: the decoder ends.
                self.cancel_inbound(stream);
                let _ = join(decoder).await;
                return Err(match other {
                    Ok(ServerMsg::Error { code: ErrorCode::BadRequest, message })
                        if message.contains("unknown") && message.contains("Snapshot") =>
                    {
                        SnapshotError::NotSupported(message)
                    }
                    Ok(ServerMsg::Error { code, message }) => SnapshotError::Refused { code, message },
                    Ok(m) => SnapshotError::Unexpected(format!("{m:?}")),
                    Err(e) => SnapshotError::Request(e),
                });
            }
        };
        // The answer comes after the stream's end: the decoder has it all.
        let decoded = join(decoder).await?;
        if decoded != report.entries {
            return Err(SnapshotError::CountMismatch { reported: report.entries, decoded });
        }
        Ok(report)
    }

    /// The request's connection went away under it: why, as far as known.
    fn lost(&self) -> LinkError {
        match Shared::lock(&self.shared.down).clone() {
            Some(why) => LinkError::Lost(why),
            None => LinkError::Lost(Arc::new(WireError::Closed)),
        }
    }
}

struct ChunkOut(ChunkWriter, Arc<Shared>);

impl Write for ChunkOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl OutStream for ChunkOut {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        self.0.finish()
    }
}

#[async_trait]
impl Link for LinkHandle {
    async fn request(&self, msg: ClientMsg) -> Result<ServerMsg, RoundError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let writer = self.writer().await?;
        let (tx, rx) = oneshot::channel();
        Shared::lock(&self.shared.pending).insert(id, tx);
        // An upload's chunks follow its request on the same ordered queue.
        let upload = match &msg {
            ClientMsg::SendWrites { stream } => {
                Shared::lock(&self.shared.outbound).remove(stream).map(|rx| (*stream, rx))
            }
            _ => None,
        };
        let send = async {
            writer.send(WriterCmd::Frame(Frame::control(id, msg))).await.ok()?;
            if let Some((stream, rx)) = upload {
                writer.send(WriterCmd::Stream(stream, rx)).await.ok()?;
            }
            Some(())
        };
        if send.await.is_none() {
            Shared::lock(&self.shared.pending).remove(&id);
            return Err(self.lost().into());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Ok(Err(why))) => Err(why.into()),
            Ok(Err(_)) => Err(self.lost().into()),
            Err(_) => {
                Shared::lock(&self.shared.pending).remove(&id);
                Err(LinkError::NoAnswer(self.timeout).into())
            }
        }
    }

    fn next_stream(&self) -> u32 {
        self.shared.next_stream.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn outbound(&self, id: u32) -> Result<Box<dyn OutStream>, RoundError> {
        let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
        self.shared.active_streams.fetch_add(1, Ordering::Relaxed);
        Shared::lock(&self.shared.outbound).insert(id, rx);
        Ok(Box::new(ChunkOut(ChunkWriter::new(tx, self.limits.max_chunk_bytes), self.shared.clone())))
    }

    async fn inbound(&self, id: u32) -> Result<Box<dyn Read + Send>, RoundError> {
        let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
        self.shared.active_streams.fetch_add(1, Ordering::Relaxed);
        Shared::lock(&self.shared.inbound).insert(id, tx);
        Ok(Box::new(ChunkReader::new(rx)))
    }

    fn cancel_outbound(&self, id: u32) {
        if Shared::lock(&self.shared.outbound).remove(&id).is_some() {
            let _ = self.shared.active_streams.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    fn cancel_inbound(&self, id: u32) {
        if let Some(tx) = Shared::lock(&self.shared.inbound).remove(&id) {
            let _ = self.shared.active_streams.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            let _ = tx.try_send(StreamItem::End(StreamEnd::Abort("the request for this stream failed".into())));
        }
    }
}

pub struct Connection {
    cfg: ConnectionConfig,
    shared: Arc<Shared>,
    state: ConnectionState,
    connected_at: Option<Instant>,
    next_attempt: Option<Instant>,
    generation: u64,
}

impl Connection {
    pub fn new(cfg: ConnectionConfig) -> Self {
        let state = ConnectionState { url: cfg.url.clone(), state: "connecting", ..Default::default() };
        // `started` connects first thing: an attempt is under way from now on.
        let shared = Shared { attempting: true.into(), ..Default::default() };
        Connection { cfg, shared: Arc::new(shared), state, connected_at: None, next_attempt: None, generation: 0 }
    }

    pub fn link(&self) -> LinkHandle {
        LinkHandle { shared: self.shared.clone(), limits: self.cfg.limits, timeout: self.cfg.request_timeout }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.state.state = "connecting";
        self.next_attempt = None;
        self.shared.attempting.store(true, Ordering::Release);
        let cfg = self.cfg.clone();
        let fut = async move {
            tokio::time::timeout(
                CONNECT_TIMEOUT,
                cs_wire::connect(&cfg.url, &cfg.token, cfg.extra_ca.as_deref(), cfg.limits),
            )
            .await
            .unwrap_or(Err(WireError::Timeout { what: "connecting", after: CONNECT_TIMEOUT }))
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            match res {
                Ok(conn) => act.connected(conn, ctx),
                Err(e) => act.lost(Arc::new(e), ctx),
            }
            act.shared.attempting.store(false, Ordering::Release);
            act.shared.settled.notify_waiters();
        }));
    }

    fn connected(&mut self, conn: cs_wire::ClientConn, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        if self.state.failed_attempts > 0 || self.connected_at.is_some() {
            self.state.reconnects += 1;
        }
        tracing::info!(url = %self.cfg.url, "connected to the broker");
        self.state.state = "connected";
        self.state.failed_attempts = 0;
        self.connected_at = Some(Instant::now());
        *Shared::lock(&self.shared.down) = None;
        self.shared.stopped.store(false, Ordering::Relaxed);
        // Another connection may reach another broker (an upgrade, a downgrade).
        self.shared.snapshot_cap.store(CAP_UNKNOWN, Ordering::Relaxed);
        self.shared.follow_cap.store(CAP_UNKNOWN, Ordering::Relaxed);
        let (mut sender, mut receiver) = conn.split();
        let (wtx, mut wrx) = mpsc::channel::<WriterCmd>(64);
        *Shared::lock(&self.shared.writer) = Some(wtx);
        // Requests can go now: a round waiting out a backoff need not wait longer.
        self.shared.link_up.notify_one();
        let shared = self.shared.clone();
        let writer_shared = self.shared.clone();
        // Writer: frames and streams, in order.
        let writer = async move {
            while let Some(cmd) = wrx.recv().await {
                let r = match cmd {
                    WriterCmd::Frame(f) => sender.send(&f).await.map(|_| ()),
                    WriterCmd::Stream(id, mut rx) => {
                        let r = sender.send_stream(id, &mut rx).await.map(|_| ());
                        writer_shared.active_streams.fetch_sub(1, Ordering::Relaxed);
                        r
                    }
                };
                if let Err(e) = r {
                    return e;
                }
            }
            WireError::Closed
        };
        // Reader: answers to their waiters, chunks to their streams.
        let reader = async move {
            loop {
                let frame = match receiver.recv().await {
                    Ok(Some(f)) => f,
                    Ok(None) => return WireError::Closed,
                    Err(e) if !e.is_fatal() => {
                        tracing::warn!(error = %e, "bad frame from the broker; ignored");
                        continue;
                    }
                    Err(e) => return e,
                };
                match frame {
                    Frame::Control(env) => {
                        // Never an answer: routed before the requests' lookup.
                        if env.body.is_unsolicited() {
                            shared.project_pushes.fetch_add(1, Ordering::Relaxed);
                            shared.last_project_push_unix_ms.store(crate::coordinator::unix_ms(), Ordering::Relaxed);
                            shared.project_changed.notify_one();
                            continue;
                        }
                        if let ServerMsg::HelloReply(r) = &env.body {
                            let cap = if r.snapshot { CAP_YES } else { CAP_NO };
                            shared.snapshot_cap.store(cap, Ordering::Relaxed);
                            let cap = if r.follow { CAP_YES } else { CAP_NO };
                            shared.follow_cap.store(cap, Ordering::Relaxed);
                        }
                        if let ServerMsg::Pong { sent_ms } = env.body {
                            let now = now_us();
                            shared.rtt_us.store(now.saturating_sub(sent_ms), Ordering::Relaxed);
                        }
                        if let Some(tx) = Shared::lock(&shared.pending).remove(&env.id) {
                            let _ = tx.send(Ok(env.body));
                        }
                    }
                    Frame::Chunk { stream, data } => {
                        shared.bytes_received.fetch_add(data.len() as u64, Ordering::Relaxed);
                        let tx = Shared::lock(&shared.inbound).get(&stream).cloned();
                        if let Some(tx) = tx {
                            // Awaiting here is the flow control.
                            let _ = tx.send(StreamItem::Chunk(data)).await;
                        }
                    }
                    Frame::End { stream, end } => {
                        let tx = Shared::lock(&shared.inbound).remove(&stream);
                        if let Some(tx) = tx {
                            shared.active_streams.fetch_sub(1, Ordering::Relaxed);
                            let _ = tx.send(StreamItem::End(end)).await;
                        }
                    }
                }
            }
        };
        let both = async move {
            tokio::select! {
                why = writer => why,
                why = reader => why,
            }
        };
        ctx.spawn(both.into_actor(self).map(move |why, act, ctx| {
            if act.generation == generation {
                act.lost(Arc::new(why), ctx);
            }
        }));
        // Measure the round trip now rather than at the first periodic ping, so that status
        // knows it as soon as it says connected.
        self.ping(ctx);
    }

    /// The attempt failed or the connection ended: reconnect after a backoff, or, when the
    /// broker refused us for a reason retrying cannot fix (the token, say), stop and wait
    /// until a round asks for one more try ([`LinkHandle::writer`]).
    fn lost(&mut self, why: Arc<WireError>, ctx: &mut Context<Self>) {
        let text = cs_supervision::error_chain(why.as_ref());
        if self.connected_at.take().is_some() {
            tracing::warn!(reason = %text, "connection to the broker lost");
        }
        *Shared::lock(&self.shared.down) = Some(why.clone());
        self.shared.fail_all(LinkError::Lost(why.clone()));
        self.generation += 1;
        self.state.failed_attempts += 1;
        self.state.last_error = Some(text.clone());
        if let Verdict::Permanent(what_to_do) = classify_wire(&why) {
            tracing::error!(reason = %text, "the broker refused this client: not reconnecting ({what_to_do})");
            self.state.state = "stopped";
            self.next_attempt = None;
            self.shared.stopped.store(true, Ordering::Relaxed);
            let (shared, generation) = (self.shared.clone(), self.generation);
            let woken = async move { shared.wake.notified().await };
            ctx.spawn(woken.into_actor(self).map(move |(), act, ctx| {
                if act.generation == generation {
                    act.connect(ctx);
                }
            }));
            return;
        }
        let delay = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max).jittered(self.state.failed_attempts);
        self.state.state = "backoff";
        self.next_attempt = Some(Instant::now() + delay);
        ctx.run_later(delay, |act, ctx| act.connect(ctx));
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        if self.connected_at.is_none() || self.shared.active_streams.load(Ordering::Relaxed) > 0 {
            return;
        }
        let link = self.link();
        let generation = self.generation;
        let timeout = self.cfg.ping_interval * 3;
        let fut = async move {
            let ping = link.request(ClientMsg::Ping { sent_ms: now_us() });
            match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(_)) => None,
                // Lost or not connected: the reader or writer task reports it.
                Ok(Err(RoundError::Link(LinkError::NoAnswer(_)))) | Err(_) => {
                    Some(WireError::Timeout { what: "waiting for a pong", after: timeout })
                }
                Ok(Err(_)) => None,
            }
        };
        ctx.spawn(fut.into_actor(self).map(move |dead, act, ctx| {
            if let Some(why) = dead {
                if act.generation == generation && act.connected_at.is_some() {
                    act.lost(Arc::new(why), ctx);
                }
            }
        }));
    }
}

/// Microseconds on this machine's monotonic-ish clock: only ever compared
/// with itself (the pong echoes our own value back).
fn now_us() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

impl Actor for Connection {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        self.connect(ctx);
        ctx.run_interval(self.cfg.ping_interval, |act, ctx| act.ping(ctx));
    }
}

impl Observable for Connection {
    type State = ConnectionState;
    fn observe(&self) -> ConnectionState {
        let mut s = self.state.clone();
        s.connected_for_ms = self.connected_at.map(|t| t.elapsed().as_millis() as u64);
        let rtt = self.shared.rtt_us.load(Ordering::Relaxed);
        s.rtt_ms = (rtt > 0).then(|| rtt as f64 / 1000.0);
        s.next_attempt_in_ms =
            self.next_attempt.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        s.bytes_sent = self.shared.bytes_sent.load(Ordering::Relaxed);
        s.bytes_received = self.shared.bytes_received.load(Ordering::Relaxed);
        s.follow_offered = match self.shared.follow_cap.load(Ordering::Relaxed) {
            CAP_YES => Some(true),
            CAP_NO => Some(false),
            _ => None,
        };
        s.project_pushes = self.shared.project_pushes.load(Ordering::Relaxed);
        let last = self.shared.last_project_push_unix_ms.load(Ordering::Relaxed);
        s.last_project_push_unix_ms = (last > 0).then_some(last);
        s
    }
}
cs_supervision::observable!(Connection);

/// Close the connection (shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect;

impl Handler<Disconnect> for Connection {
    type Result = ();
    fn handle(&mut self, _: Disconnect, ctx: &mut Self::Context) {
        self.generation += 1;
        self.shared.fail_all(LinkError::ShuttingDown);
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use cs_protocol::ClientId;
    use cs_wire::TokenStore;

    use super::*;

    const TOKEN: &str = "token-of-gpu-1-0123456789abcdef";

    /// A connection whose websocket upgrade the "broker" answers only after `delay`.
    async fn slow_broker(delay: Duration) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/sync", listener.local_addr().expect("addr"));
        let tokens = TokenStore::from_pairs([(ClientId::new("gpu-1").expect("id"), TOKEN)]).expect("tokens");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(delay).await;
            let accepted = cs_wire::accept(tcp, &tokens, WireLimits::default(), Duration::from_secs(10)).await;
            let _conn = accepted.expect("upgrade");
            // Held open while the test looks at it.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (url, server)
    }

    /// The start-up race: the first round asks for the link while the first attempt is
    /// still under way. It must wait for that attempt, not fail "not connected".
    #[actix_rt::test]
    async fn a_request_during_the_first_attempt_waits_for_its_outcome() {
        let (url, server) = slow_broker(Duration::from_millis(600)).await;
        let conn = Connection::new(ConnectionConfig::new(url, TOKEN.into()));
        let link = conn.link();
        let _addr = conn.start();
        let asked = Instant::now();
        let writer = link.writer().await;
        assert!(writer.is_ok(), "the request failed during the first attempt: {:?}", writer.err());
        assert!(asked.elapsed() >= Duration::from_millis(500), "connected in {:?}?", asked.elapsed());
        server.abort();
    }

    /// A failed attempt still fails the request, with the attempt's cause, once it is known.
    #[actix_rt::test]
    async fn a_request_during_a_failing_attempt_gets_its_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let conn = Connection::new(ConnectionConfig::new(format!("ws://127.0.0.1:{port}/sync"), TOKEN.into()));
        let link = conn.link();
        let _addr = conn.start();
        match link.writer().await {
            Err(LinkError::NotConnected { last: Some(why) }) => {
                assert!(cs_supervision::error_chain(why.as_ref()).to_lowercase().contains("refused"), "{why}")
            }
            Err(e) => panic!("not the attempt's cause: {e}"),
            Ok(_) => panic!("connected to a closed port?"),
        }
    }
}
