//! The project-side service of cs-actor: a websocket broker that answers the
//! sync rounds of every compute server.
//!
//! - [`Broker`] (actix actor) owns the listener (through an accept task),
//!   authenticates each connection with `cs-wire` (bearer token; TLS when
//!   configured), enforces `max_connections`, and keeps one [`Session`] per
//!   client: a new connection of a connected client replaces its session.
//! - [`Session`] (actix actor, one per client) owns the connection, the
//!   client's [`cs_engine::ProjectRound`] in flight and its counters, and
//!   runs each step of the round on a blocking thread against the one
//!   [`cs_engine::ProjectSide`] all sessions share. Tar work is bounded
//!   globally by `max_concurrent_tar`; a stream waiting for its client's
//!   network holds no slot, so a stalled client delays nobody.
//!
//! # The wire, as a session accepts it
//!
//! C drives, P answers each request (same envelope id), one at a time:
//!
//! ```text
//! [WasCommitted{round_id}]   → WasCommitted(bool)          any time outside a step
//! Hello(hello)               → HelloReply                   opens (or restarts) a round
//! [HeldList(paths)]          → HeldListOk                   required iff need_held_list
//! Deletes(paths)             → DeleteReport                 step 1
//! AskDeletes                 → DeletesForYou(paths)         step 2
//! SendWrites{s}, then chunks on s, End(ok) on s
//!                            → WritesApplied{..}            step 3 (after the end frame)
//! AskWrites{s}               → chunks on s, End on s, THEN WritesFollow{s, cursor}   step 4
//! Commit(req)                → Committed{cursor}            step 5; the session is idle again
//! Ping{sent_ms}              → Pong{sent_ms}                any time, answered at once
//! ```
//!
//! Stream ids are the client's choice, per direction (a SendWrites id that
//! is already open is refused). In step 4 the cursor travels after the
//! stream's end frame, because it is known only once packing is done; if
//! packing fails, the stream ends with an abort and the answer is `Error`.
//!
//! Errors (`ServerMsg::Error{code, message}`, answering the request's id, or
//! id 0 when there is none):
//! - out of order (`Deletes` before `Hello`, `Commit` before step 4, …):
//!   `BadRequest`; the round stays where it was and the session goes on;
//! - a step that fails (a broken or aborted tar stream, an I/O error): the
//!   round is abandoned (nothing of it is committed), the session goes on;
//! - a malformed or unknown frame, a chunk of a stream nobody opened:
//!   `BadRequest`, logged; the session goes on;
//! - a hello naming another client than the token's: `Unauthorized`, and
//!   the connection is closed;
//! - beyond `max_connections`: `Busy` (id 0) right after the upgrade, then
//!   close (a connected client's new connection is always let in: it
//!   replaces the old session); beyond `max_connections` upgrades in
//!   progress at once: HTTP 503.
//!
//! A `Hello` sent while a step runs cancels that step (its request gets its
//! error answer first), then opens the new round. A session with no frame in
//! either direction (and no stream chunk processed) for `idle_timeout` is
//! closed; its round is abandoned.

mod bridge;
mod broker;
mod config;
mod session;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use actix::prelude::*;
use cs_engine::{ProjectConfig, ProjectSide};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

pub use bridge::{Activity, SlotReader, SlotWriter, TarSlots, TarWork};
pub use broker::{Broker, SessionAddrs, Shutdown};
pub use config::{duration, BrokerConfig, TlsFiles};
pub use session::Session;
pub use state::{
    BrokerState, EndedSession, FetchCounters, FollowCounters, RoundStep, SessionState, SnapshotCounters, ENDED_KEPT,
};

/// How often the watchdog looks for stuck sessions (to log them).
const WATCHDOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The byte stream under a session's websocket: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxedIo = Box<dyn Io>;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("opening the project (home {home}, state {state}): {source}")]
    Project {
        home: std::path::PathBuf,
        state: std::path::PathBuf,
        #[source]
        source: Box<cs_engine::EngineError>,
    },
    #[error("the path filter: {0}")]
    Filter(#[source] cs_engine::EngineError),
    #[error(transparent)]
    Tokens(#[from] cs_wire::TokenFileError),
    #[error("TLS: {0}")]
    Tls(#[source] cs_wire::WireError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("startup task failed: {0}")]
    Join(String),
}

/// A running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    pub addr: Addr<Broker>,
    /// Reads the sessions' heartbeats.
    pub watchdog: cs_supervision::Watchdog,
    /// The address actually listened on (the port, when `listen` had port 0).
    pub local_addr: SocketAddr,
}

impl BrokerHandle {
    /// The broker's observable state, with its sessions' and the watchdog's.
    pub async fn observe(&self) -> Result<BrokerState, MailboxError> {
        broker::observe_all(&self.addr, &self.watchdog).await
    }

    /// Stops accepting, ends every session, stops the broker.
    pub async fn shutdown(&self) -> Result<(), MailboxError> {
        self.addr.send(Shutdown).await
    }
}

/// Starts the broker: opens the project, loads the tokens (and the TLS
/// identity), binds the listener, starts the [`Broker`] actor and its
/// accept task. Must run inside an actix `System` (e.g. `#[actix_rt::main]`,
/// `actix_rt::System::new().block_on(..)`).
pub async fn run(cfg: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
    if cfg.max_connections == 0 {
        return Err(BrokerError::Config("max_connections must be at least 1".into()));
    }
    if cfg.max_concurrent_tar == 0 {
        return Err(BrokerError::Config("max_concurrent_tar must be at least 1".into()));
    }
    if cfg.idle_timeout.is_zero() || cfg.hello_timeout.is_zero() {
        return Err(BrokerError::Config("hello_timeout and idle_timeout must be more than 0".into()));
    }
    let filter = cfg.filter().map_err(BrokerError::Filter)?;
    let tokens_file = cfg.tokens_file.clone();
    let tls_files = cfg.tls.clone();
    let mut pcfg = ProjectConfig::new(cfg.home.clone(), cfg.state_dir.clone());
    pcfg.filter = filter;
    pcfg.full_rescan_every = cfg.full_rescan;
    pcfg.owner = cfg.owner;
    pcfg.busy = cfg.busy.clone();
    // Opening the project and reading secrets touch the disk: off the actor thread.
    let (project, tokens, tls) = tokio::task::spawn_blocking(move || {
        let project = ProjectSide::open(pcfg).map_err(|source| BrokerError::Project {
            home: cfg.home.clone(),
            state: cfg.state_dir.clone(),
            source: Box::new(source),
        })?;
        let tokens = cs_wire::TokenStore::load(&tokens_file)?;
        let tls = match tls_files {
            Some(t) => Some(cs_wire::TlsAcceptorConfig::from_pem(&t.cert, &t.key).map_err(BrokerError::Tls)?),
            None => None,
        };
        Ok::<_, BrokerError>((project, tokens, tls))
    })
    .await
    .map_err(|e| BrokerError::Join(e.to_string()))??;

    let listener =
        TcpListener::bind(cfg.listen).await.map_err(|source| BrokerError::Listen { addr: cfg.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| BrokerError::Listen { addr: cfg.listen, source })?;
    tracing::info!(clients = tokens.len(), "tokens loaded");

    let shared = Arc::new(session::Shared {
        project: Arc::new(project),
        tar: TarSlots::new(cfg.max_concurrent_tar),
        limits: cfg.limits,
        idle_timeout: cfg.idle_timeout,
        engine_calls: Default::default(),
    });
    let tls_on = tls.is_some();
    let watchdog = cs_supervision::Watchdog::from_env();
    let broker_watchdog = watchdog.clone();
    let addr = cs_supervision::spawn_with(cs_supervision::MAILBOX_CAPACITY, |ctx| {
        let broker = ctx.address();
        let task = actix_rt::spawn(broker::accept_loop(broker::Acceptor {
            listener,
            tokens: Arc::new(tokens),
            tls,
            limits: cfg.limits,
            hello_timeout: cfg.hello_timeout,
            max_pending: cfg.max_connections,
            broker,
        }));
        let mut b = Broker::new(local_addr, tls_on, cfg.max_connections, shared, broker_watchdog);
        b.set_accept_task(task);
        b
    });
    watchdog.spawn_monitor(WATCHDOG_EVERY);
    Ok(BrokerHandle { addr, watchdog, local_addr })
}
