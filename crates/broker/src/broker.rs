//! The broker actor: accepts connections, authenticates them, and keeps one
//! [`Session`] per connected client.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cs_protocol::ClientId;
use cs_supervision::{ExitStatus, Heartbeat, Observable, ObserveExt, Watchdog};
use cs_wire::{
    AuthFailure, ErrorCode, Frame, ServerConn, ServerMsg, TlsAcceptorConfig, TokenStore, WireError, WireLimits,
};
use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::session::{Session, SessionParts, Shared, StopSession};
use crate::state::{BrokerState, EndedSession, ENDED_KEPT};
use crate::BoxedIo;

/// How long a session has to answer an observation before it is reported
/// as not answering (its mailbox is bounded: it may be full).
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for the sessions to stop and for their engine
/// calls in flight to return.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The addresses of the sessions, to observe them (see `BrokerHandle::observe`).
#[derive(Message)]
#[rtype(result = "Vec<Addr<Session>>")]
pub struct SessionAddrs;

/// Stops accepting, ends every session (each round in flight is
/// abandoned: nothing of it commits), then stops the broker.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// An authenticated connection, from the accept task.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Connected {
    pub client: ClientId,
    pub peer: SocketAddr,
    pub conn: ServerConn<BoxedIo>,
}

/// A connection refused before it became a session.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Refused {
    pub reason: &'static str,
}

/// A session ended (sent by the session itself).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SessionEnded {
    pub client: ClientId,
    pub peer: SocketAddr,
    pub conn_id: u64,
    pub exit: ExitStatus,
    /// The session ended as a refusal (e.g. a hello naming another client).
    pub refused: Option<&'static str>,
}

struct SessionEntry {
    conn_id: u64,
    addr: Addr<Session>,
}

pub struct Broker {
    local_addr: SocketAddr,
    tls: bool,
    max_connections: usize,
    shared: Arc<Shared>,
    sessions: HashMap<ClientId, SessionEntry>,
    client_locks: HashMap<ClientId, Arc<tokio::sync::Mutex<()>>>,
    next_conn: u64,
    accepted: u64,
    refused: BTreeMap<String, u64>,
    ended: std::collections::VecDeque<EndedSession>,
    accept_task: Option<tokio::task::JoinHandle<()>>,
    /// Watches each session's heartbeat.
    watchdog: Watchdog,
}

impl Broker {
    pub(crate) fn new(
        local_addr: SocketAddr,
        tls: bool,
        max_connections: usize,
        shared: Arc<Shared>,
        watchdog: Watchdog,
    ) -> Self {
        Broker {
            local_addr,
            tls,
            max_connections,
            shared,
            sessions: HashMap::new(),
            client_locks: HashMap::new(),
            next_conn: 0,
            accepted: 0,
            refused: BTreeMap::new(),
            ended: Default::default(),
            accept_task: None,
            watchdog,
        }
    }

    pub(crate) fn set_accept_task(&mut self, task: tokio::task::JoinHandle<()>) {
        self.accept_task = Some(task);
    }

    fn count_refused(&mut self, reason: &str) {
        *self.refused.entry(reason.to_owned()).or_default() += 1;
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        tracing::info!(listen = %self.local_addr, tls = self.tls, "broker started");
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        tracing::info!(listen = %self.local_addr, "broker stopped");
    }
}

impl Handler<Connected> for Broker {
    type Result = ();

    fn handle(&mut self, msg: Connected, ctx: &mut Context<Self>) {
        let Connected { client, peer, conn } = msg;
        let replaces = self.sessions.contains_key(&client);
        if !replaces && self.sessions.len() >= self.max_connections {
            tracing::warn!(%peer, %client, max = self.max_connections, "connection refused: too many sessions");
            self.count_refused("busy");
            let message =
                format!("the broker serves {} clients already (max_connections); retry later", self.max_connections);
            actix_rt::spawn(refuse_busy(conn, message));
            return;
        }
        if let Some(old) = self.sessions.remove(&client) {
            tracing::info!(%client, %peer, "new connection of a connected client: it replaces the old session");
            // `send().await`, off the broker: the old session must stop
            // (two sessions of one client would both hold its lock in
            // turn), so wait for room in its mailbox rather than drop or
            // overfill it; an error means it already stopped.
            let stop = old.addr.send(StopSession {
                status: ExitStatus::Failure("replaced by a new connection of the same client".into()),
            });
            actix_rt::spawn(async move {
                let _ = stop.await;
            });
        }
        self.accepted += 1;
        self.next_conn += 1;
        let conn_id = self.next_conn;
        let client_lock = self.client_locks.entry(client.clone()).or_default().clone();
        let (sender, receiver) = conn.split();
        let heartbeat = Heartbeat::new();
        self.watchdog.watch(format!("session {client}"), heartbeat.clone());
        let addr = Session::start(SessionParts {
            client: client.clone(),
            peer,
            conn_id,
            broker: ctx.address(),
            shared: self.shared.clone(),
            client_lock,
            sender,
            receiver,
            heartbeat,
        });
        self.sessions.insert(client, SessionEntry { conn_id, addr });
    }
}

/// Tells a client beyond `max_connections` why, then closes.
async fn refuse_busy(mut conn: ServerConn<BoxedIo>, message: String) {
    let frame = Frame::control(0, ServerMsg::Error { code: ErrorCode::Busy, message });
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = conn.send(&frame).await;
        let _ = conn.close().await;
    })
    .await;
}

impl Handler<Refused> for Broker {
    type Result = ();
    fn handle(&mut self, msg: Refused, _: &mut Context<Self>) {
        self.count_refused(msg.reason);
    }
}

impl Handler<SessionEnded> for Broker {
    type Result = ();
    fn handle(&mut self, msg: SessionEnded, _: &mut Context<Self>) {
        if self.sessions.get(&msg.client).is_some_and(|s| s.conn_id == msg.conn_id) {
            self.sessions.remove(&msg.client);
        }
        if let Some(reason) = msg.refused {
            self.count_refused(reason);
        }
        tracing::debug!(client = %msg.client, exit = ?msg.exit, "session ended");
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        let ended_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.ended.push_back(EndedSession {
            client: msg.client.to_string(),
            peer: msg.peer,
            ended_unix_ms,
            exit: msg.exit,
        });
    }
}

impl Observable for Broker {
    type State = BrokerState;

    /// The broker's own state; `BrokerHandle::observe` adds the sessions'
    /// and the watchdog's.
    fn observe(&self) -> BrokerState {
        BrokerState {
            listen: self.local_addr,
            tls: self.tls,
            max_connections: self.max_connections,
            max_concurrent_tar: self.shared.tar.max(),
            tar_in_use: self.shared.tar.in_use(),
            accepted: self.accepted,
            refused: self.refused.clone(),
            sessions: Vec::new(),
            ended: self.ended.iter().cloned().collect(),
            ignore: self.shared.project.ignore_status(),
            watchdog: None,
        }
    }
}
cs_supervision::observable!(Broker);

impl Handler<SessionAddrs> for Broker {
    type Result = MessageResult<SessionAddrs>;
    fn handle(&mut self, _: SessionAddrs, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.values().map(|s| s.addr.clone()).collect())
    }
}

/// The broker's state with every session's (a session that does not answer
/// within [`OBSERVE_TIMEOUT`], its mailbox full, is left out; the watchdog
/// shows whether it is stuck) and the watchdog's report.
pub(crate) async fn observe_all(broker: &Addr<Broker>, watchdog: &Watchdog) -> Result<BrokerState, MailboxError> {
    let mut state = broker.observe().await?;
    let addrs = broker.send(SessionAddrs).await?;
    let answers = join_all(addrs.iter().map(|a| tokio::time::timeout(OBSERVE_TIMEOUT, a.observe()))).await;
    state.sessions = answers.into_iter().filter_map(|a| a.ok().and_then(|r| r.ok())).collect();
    state.sessions.sort_by(|a, b| a.client.cmp(&b.client));
    state.watchdog = Some(watchdog.report());
    Ok(state)
}

impl Handler<Shutdown> for Broker {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        if let Some(t) = self.accept_task.take() {
            t.abort();
        }
        let addrs: Vec<Addr<Session>> = self.sessions.drain().map(|(_, s)| s.addr).collect();
        let calls = self.shared.engine_calls.clone();
        Box::pin(
            async move {
                let stops = join_all(addrs.iter().map(|a| a.send(StopSession { status: ExitStatus::Quit })));
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, stops).await;
                // The ended sessions' engine calls see their streams closed
                // and return; one that does not (a slow disk) is waited for
                // a bounded time only: it runs on a thread of its own, which
                // does not hold the process up once the system stops.
                let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
                while calls.load(std::sync::atomic::Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let left = calls.load(std::sync::atomic::Ordering::SeqCst);
                if left > 0 {
                    tracing::warn!(calls = left, "stopping with engine calls still running (they are abandoned)");
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        )
    }
}

/// What the accept loop needs.
pub(crate) struct Acceptor {
    pub listener: TcpListener,
    pub tokens: Arc<TokenStore>,
    pub tls: Option<TlsAcceptorConfig>,
    pub limits: WireLimits,
    pub hello_timeout: Duration,
    /// Bound on connections being set up (TLS, upgrade, authentication).
    pub max_pending: usize,
    pub broker: Addr<Broker>,
}

/// Accepts connections and hands each, authenticated, to the broker.
pub(crate) async fn accept_loop(a: Acceptor) {
    let pending = Arc::new(tokio::sync::Semaphore::new(a.max_pending.max(1)));
    let a = Arc::new(a);
    loop {
        let (stream, peer) = match a.listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // E.g. out of file descriptors: wait a little, go on.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: too many connections being set up");
            // `send().await` in a task of its own: the count is status (and
            // a flood fills the broker's mailbox: `try_send` lost counts),
            // so wait for room, without stalling the accept loop.
            let broker = a.broker.clone();
            actix_rt::spawn(async move {
                let _ = broker.send(Refused { reason: "busy" }).await;
            });
            actix_rt::spawn(refuse_http_503(stream, a.tls.is_some()));
            continue;
        };
        let a = a.clone();
        actix_rt::spawn(async move {
            let result = handshake(&a, stream).await;
            drop(permit);
            match result {
                Ok((client, conn)) => {
                    tracing::info!(%peer, %client, "connection authenticated");
                    // `send().await`: a connection must not be lost; this
                    // setup task waits for room (backpressure on accepts, as
                    // its permit was already released). An error means the
                    // broker stopped: the connection closes with it.
                    if a.broker.send(Connected { client, peer, conn }).await.is_err() {
                        tracing::warn!(%peer, "the broker stopped: connection dropped");
                    }
                }
                Err(e) => {
                    let reason = refusal_reason(&e);
                    tracing::warn!(%peer, reason, "connection refused: {e}");
                    // `send().await`: a counter, but this task has nothing
                    // else to do, so it may as well wait for room.
                    let _ = a.broker.send(Refused { reason }).await;
                }
            }
        });
    }
}

async fn handshake(a: &Acceptor, stream: TcpStream) -> Result<(ClientId, ServerConn<BoxedIo>), WireError> {
    let _ = stream.set_nodelay(true);
    let start = tokio::time::Instant::now();
    let io: BoxedIo = match &a.tls {
        None => Box::new(stream),
        Some(tls) => match tokio::time::timeout(a.hello_timeout, tls.acceptor().accept(stream)).await {
            Err(_) => return Err(WireError::Timeout { what: "TLS handshake", after: a.hello_timeout }),
            Ok(Err(e)) => return Err(WireError::Tls(format!("handshake failed: {e}"))),
            Ok(Ok(s)) => Box::new(s),
        },
    };
    let left = a.hello_timeout.saturating_sub(start.elapsed());
    cs_wire::accept(io, &a.tokens, a.limits, left).await
}

/// The key under which a refusal is counted in [`BrokerState::refused`].
fn refusal_reason(e: &WireError) -> &'static str {
    match e {
        WireError::Unauthorized(AuthFailure::MissingHeader) => "missing_token",
        WireError::Unauthorized(AuthFailure::NotBearer) => "not_bearer",
        WireError::Unauthorized(AuthFailure::UnknownToken) => "unknown_token",
        WireError::Timeout { .. } => "timeout",
        WireError::Tls(_) => "tls",
        _ => "handshake",
    }
}

/// Refuses a connection beyond the bound before any upgrade: HTTP 503 on
/// plain connections (a TLS client just sees the connection closed).
async fn refuse_http_503(mut stream: TcpStream, tls: bool) {
    if !tls {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n",
            ),
        )
        .await;
    }
    let _ = stream.shutdown().await;
}
