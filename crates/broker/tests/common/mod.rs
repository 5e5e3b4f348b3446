//! Test fixtures and a small compute-side client over cs-wire.
//!
//! [`TestClient`] drives a round exactly as the compute service does (and
//! is meant as its reference): a `ComputeSide` on a temporary upper layer,
//! every engine call on a blocking thread, the messages in the documented
//! order, the tar streams through `cs-wire`'s bridges:
//!
//! ```text
//! [WasCommitted]  (only if a previous round's commit is unresolved)
//! Hello        → HelloReply { need_held_list, .. }
//! [HeldList]   → HeldListOk            (only if need_held_list)
//! Deletes      → DeleteReport          step 1
//! AskDeletes   → DeletesForYou         step 2
//! SendWrites{s}, chunks on s, End(ok) on s → WritesApplied     step 3
//! AskWrites{s} → chunks on s, End on s, then WritesFollow{s, cursor}   step 4
//! Commit       → Committed{cursor}     step 5
//! ```
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cs_broker::{BrokerConfig, BrokerHandle};
use cs_engine::{ComputeConfig, ComputeRound, ComputeSide};
use cs_protocol::{ClientId, Cursor, DeleteReport, HelloReply, RelPath};
use cs_wire::{
    ChunkReader, ChunkWriter, ClientConn, ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, StreamItem, WireError,
    WireLimits,
};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

pub const CLIENTS: [(&str, &str); 4] = [
    ("c1", "token-of-client-one-0123456789"),
    ("c2", "token-of-client-two-0123456789"),
    ("c3", "token-of-client-three-012345678"),
    ("c4", "token-of-client-four-0123456789"),
];

pub fn token(client: &str) -> &'static str {
    CLIENTS.iter().find(|(c, _)| *c == client).expect("known client").1
}

/// A project home, its state and a token file.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub state: PathBuf,
    pub tokens: PathBuf,
}

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let state = dir.path().join("pstate");
        std::fs::create_dir_all(&home).unwrap();
        let tokens = dir.path().join("tokens");
        let text: String = CLIENTS.iter().map(|(c, t)| format!("{c} {t}\n")).collect();
        std::fs::write(&tokens, text).unwrap();
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
        Project { dir, home, state, tokens }
    }

    pub fn config(&self) -> BrokerConfig {
        BrokerConfig::new(self.home.clone(), self.state.clone(), "127.0.0.1:0".parse().unwrap(), self.tokens.clone())
    }

    pub async fn start(&self, tweak: impl FnOnce(&mut BrokerConfig)) -> BrokerHandle {
        let mut cfg = self.config();
        tweak(&mut cfg);
        cs_broker::run(cfg).await.expect("broker starts")
    }
}

pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

/// Everything under `root`, as sorted relative paths (with file contents).
pub fn listing(root: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else if ft.is_file() {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            } else {
                out.push((rel, None));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Deterministic incompressible bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What one round did, as the client saw it.
#[derive(Debug, Default)]
pub struct RoundSummary {
    pub hello: Option<HelloReply>,
    pub step1: DeleteReport,
    pub deletes_for_me: Vec<RelPath>,
    pub conflicts: Vec<RelPath>,
    pub refused: Vec<(RelPath, String)>,
    pub sent_entries: u64,
    pub received_applied: usize,
    pub cursor: Cursor,
}

/// The error of a request: the broker's answer, or the wire's.
#[derive(Debug)]
pub enum ClientError {
    Server { code: ErrorCode, message: String },
    Wire(WireError),
    Engine(String),
    Unexpected(String),
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Wire(e)
    }
}

impl ClientError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

type Engine = Arc<Mutex<(ComputeSide, Option<ComputeRound>)>>;

/// A compute server: its upper layer and engine state, and a connection.
pub struct TestClient {
    pub id: ClientId,
    pub dir: tempfile::TempDir,
    pub upper: PathBuf,
    pub conn: ClientConn,
    engine: Engine,
    next_id: u64,
    next_stream: u32,
    /// Hellos ask `follow` (docs/protocol.md, *Follow*).
    pub follow: bool,
    /// The `ProjectChanged` pushes received (their `changes`), set aside
    /// wherever they arrived.
    pub pushes: Vec<u64>,
}

pub async fn connect(addr: SocketAddr, token: &str) -> Result<ClientConn, WireError> {
    tokio::time::timeout(Duration::from_secs(10), cs_wire::connect(&url(addr), token, None, WireLimits::default()))
        .await
        .map_err(|_| WireError::Timeout { what: "connect", after: Duration::from_secs(10) })?
}

impl TestClient {
    /// A client with a fresh upper layer, connected with its own token.
    pub async fn new(addr: SocketAddr, client: &str) -> TestClient {
        let conn = connect(addr, token(client)).await.expect("connects");
        Self::with_conn(client, conn)
    }

    pub fn with_conn(client: &str, conn: ClientConn) -> TestClient {
        let dir = tempfile::tempdir().unwrap();
        let upper = dir.path().join("upper");
        std::fs::create_dir_all(&upper).unwrap();
        let id = ClientId::new(client).unwrap();
        let cfg = ComputeConfig::new(id.clone(), upper.clone(), dir.path().join("cstate"));
        let side = ComputeSide::open(cfg).unwrap();
        TestClient {
            id,
            dir,
            upper,
            conn,
            engine: Arc::new(Mutex::new((side, None))),
            next_id: 1,
            next_stream: 1,
            follow: false,
            pushes: Vec::new(),
        }
    }

    /// A new connection for the same compute server (same upper layer and state).
    pub async fn reconnect(&mut self, addr: SocketAddr) {
        self.conn = connect(addr, token(self.id.as_str())).await.expect("reconnects");
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.upper.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.upper.join(rel)).ok()
    }

    /// Runs `f` on the engine on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ComputeSide, &mut Option<ComputeRound>) -> T + Send + 'static,
    ) -> T {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = engine.lock().unwrap();
            let (side, round) = &mut *g;
            f(side, round)
        })
        .await
        .expect("engine thread")
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a control message; returns its id.
    pub async fn send(&mut self, msg: ClientMsg) -> Result<u64, ClientError> {
        let id = self.take_id();
        self.conn.send_msg(id, msg).await?;
        Ok(id)
    }

    /// The next control message (stream frames are not expected here);
    /// `ProjectChanged` pushes are set aside in `pushes`, as the compute
    /// service's reader does (never an answer).
    pub async fn recv_control(&mut self) -> Result<(u64, ServerMsg), ClientError> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.conn.recv()).await {
                Err(_) => return Err(ClientError::Unexpected("no answer within 30 s".into())),
                Ok(Err(e)) => return Err(e.into()),
                Ok(Ok(None)) => return Err(ClientError::Wire(WireError::Closed)),
                Ok(Ok(Some(Frame::Control(env)))) => match env.body {
                    ServerMsg::ProjectChanged { changes } => {
                        assert_eq!(env.id, cs_wire::UNSOLICITED_ID, "a push's id");
                        self.pushes.push(changes);
                    }
                    body => return Ok((env.id, body)),
                },
                Ok(Ok(Some(other))) => {
                    return Err(ClientError::Unexpected(format!(
                        "expected a control message, got {}",
                        other.describe()
                    )))
                }
            }
        }
    }

    /// Waits up to `within` for a `ProjectChanged` push (between rounds:
    /// any other frame is an error); returns its `changes`.
    pub async fn wait_push(&mut self, within: Duration) -> Option<u64> {
        if !self.pushes.is_empty() {
            return Some(self.pushes.remove(0));
        }
        match tokio::time::timeout(within, self.conn.recv()).await {
            Err(_) => None,
            Ok(Ok(Some(Frame::Control(env)))) => match env.body {
                ServerMsg::ProjectChanged { changes } if env.id == cs_wire::UNSOLICITED_ID => Some(changes),
                other => panic!("{}: between rounds, expected only pushes, got {other:?}", self.id),
            },
            Ok(Ok(Some(frame))) => panic!("{}: between rounds, got {}", self.id, frame.describe()),
            Ok(Ok(None)) => panic!("{}: connection closed", self.id),
            Ok(Err(e)) => panic!("{}: connection failed: {e}", self.id),
        }
    }

    /// Sends `msg` and returns the answer to it; an `Error` answer is `Err`.
    pub async fn request(&mut self, msg: ClientMsg) -> Result<ServerMsg, ClientError> {
        let id = self.send(msg).await?;
        let (rid, body) = self.recv_control().await?;
        if let ServerMsg::Error { code, message } = body {
            return Err(ClientError::Server { code, message });
        }
        if rid != id {
            return Err(ClientError::Unexpected(format!("answer to request {rid}, expected {id}: {body:?}")));
        }
        Ok(body)
    }

    fn unexpected<T>(what: &str, got: ServerMsg) -> Result<T, ClientError> {
        Err(ClientError::Unexpected(format!("expected {what}, got {got:?}")))
    }

    /// Before hello: resolves a round whose commit is unconfirmed.
    pub async fn resolve_pending(&mut self) -> Result<(), ClientError> {
        let pending = self.blocking(|c, _| c.pending_round()).await;
        if let Some(round_id) = pending {
            let committed = match self.request(ClientMsg::WasCommitted { round_id }).await? {
                ServerMsg::WasCommitted(b) => b,
                other => return Self::unexpected("WasCommitted", other),
            };
            self.blocking(move |c, _| c.resolve_pending(committed))
                .await
                .map_err(|e| ClientError::Engine(e.to_string()))?;
        }
        Ok(())
    }

    /// Opens a round on this side (dropping any in flight) and returns the
    /// hello to send, without sending it.
    pub async fn begin(&mut self) -> cs_protocol::Hello {
        self.blocking(|c, r| {
            r.take();
            let (round, hello) = c.begin_round().unwrap();
            *r = Some(round);
            hello
        })
        .await
    }

    /// Hello (and the held list when asked).
    pub async fn hello(&mut self) -> Result<HelloReply, ClientError> {
        self.resolve_pending().await?;
        let mut hello = self
            .blocking(|c, r| {
                let (round, hello) = c.begin_round()?;
                *r = Some(round);
                Ok::<_, cs_engine::EngineError>(hello)
            })
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        hello.follow = self.follow;
        let reply = match self.request(ClientMsg::Hello(hello)).await? {
            ServerMsg::HelloReply(r) => r,
            other => return Self::unexpected("HelloReply", other),
        };
        if reply.need_held_list {
            let list = self.blocking(|c, _| c.held_list()).await;
            match self.request(ClientMsg::HeldList(list)).await? {
                ServerMsg::HeldListOk => {}
                other => return Self::unexpected("HeldListOk", other),
            }
        }
        Ok(reply)
    }

    /// Step 1.
    pub async fn step1(&mut self) -> Result<DeleteReport, ClientError> {
        let deletes = self.blocking(|c, r| c.deletes_to_send(r.as_ref().expect("round"))).await;
        let report = match self.request(ClientMsg::Deletes(deletes.clone())).await? {
            ServerMsg::DeleteReport(r) => r,
            other => return Self::unexpected("DeleteReport", other),
        };
        self.blocking(move |c, r| c.finish_deletes(r.as_mut().expect("round"), &deletes))
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        Ok(report)
    }

    /// Step 2.
    pub async fn step2(&mut self) -> Result<Vec<RelPath>, ClientError> {
        let gone = match self.request(ClientMsg::AskDeletes).await? {
            ServerMsg::DeletesForYou(p) => p,
            other => return Self::unexpected("DeletesForYou", other),
        };
        let g = gone.clone();
        self.blocking(move |c, r| c.apply_deletes(r.as_mut().expect("round"), &g))
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        Ok(gone)
    }

    fn take_stream(&mut self) -> u32 {
        let s = self.next_stream;
        self.next_stream += 1;
        s
    }

    /// Step 3: packs the changes into the stream while it is sent.
    pub async fn step3(&mut self) -> Result<(ServerMsg, u64), ClientError> {
        let stream = self.take_stream();
        let id = self.send(ClientMsg::SendWrites { stream }).await?;
        let (tx, mut rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
        let max_chunk = self.conn.limits().max_chunk_bytes;
        let engine = self.engine.clone();
        let packer = tokio::task::spawn_blocking(move || {
            let mut g = engine.lock().unwrap();
            let (c, r) = &mut *g;
            let r = r.as_mut().expect("round");
            let paths = c.changes_to_send(r);
            let w = ChunkWriter::new(tx, max_chunk);
            let (w, stats) = c.pack_changes(r, &paths, w).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
            Ok::<_, String>(stats.entries)
        });
        let sent = self.conn.send_stream(stream, &mut rx).await;
        let entries = packer.await.expect("packer").map_err(ClientError::Engine)?;
        let end = sent?;
        if end != StreamEnd::Ok {
            return Err(ClientError::Unexpected(format!("stream ended {end:?}")));
        }
        let (rid, body) = self.recv_control().await?;
        if let ServerMsg::Error { code, message } = body {
            return Err(ClientError::Server { code, message });
        }
        assert_eq!(rid, id);
        Ok((body, entries))
    }

    /// Step 4: receives P's stream into the upper layer; returns the cursor
    /// (sent after the stream's end) and the entries applied.
    pub async fn step4(&mut self) -> Result<(Cursor, usize), ClientError> {
        let stream = self.take_stream();
        let id = self.send(ClientMsg::AskWrites { stream }).await?;
        let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
        let engine = self.engine.clone();
        let applier = tokio::task::spawn_blocking(move || {
            let mut g = engine.lock().unwrap();
            let (c, r) = &mut *g;
            c.apply_writes(r.as_mut().expect("round"), ChunkReader::new(rx), None).map_err(|e| e.to_string())
        });
        let mut tx = Some(tx);
        let cursor = loop {
            let frame = match tokio::time::timeout(Duration::from_secs(30), self.conn.recv()).await {
                Err(_) => return Err(ClientError::Unexpected("step 4 stalled".into())),
                Ok(r) => r?.ok_or(ClientError::Wire(WireError::Closed))?,
            };
            match frame {
                Frame::Chunk { stream: s, data } if s == stream => {
                    if let Some(t) = &tx {
                        let _ = t.send(StreamItem::Chunk(data)).await;
                    }
                }
                Frame::End { stream: s, end } if s == stream => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(StreamItem::End(end)).await;
                    }
                }
                Frame::Control(env) => match env.body {
                    ServerMsg::ProjectChanged { changes } => self.pushes.push(changes),
                    ServerMsg::WritesFollow { stream: s, cursor } if env.id == id && s == stream => {
                        if tx.is_some() {
                            return Err(ClientError::Unexpected("WritesFollow before the stream's end".into()));
                        }
                        break cursor;
                    }
                    ServerMsg::Error { code, message } => {
                        drop(tx);
                        let _ = applier.await;
                        return Err(ClientError::Server { code, message });
                    }
                    other => return Self::unexpected("WritesFollow", other),
                },
                other => return Err(ClientError::Unexpected(format!("in step 4: {}", other.describe()))),
            }
        };
        let report = applier.await.expect("applier").map_err(ClientError::Engine)?;
        Ok((cursor, report.applied))
    }

    /// Step 4's receiving end, for a test that reads the frames itself: feed
    /// the stream's items to the sender; the task applies them to the round.
    pub fn step4_applier(
        &self,
    ) -> (tokio::sync::mpsc::Sender<StreamItem>, tokio::task::JoinHandle<Result<usize, String>>) {
        let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
        let engine = self.engine.clone();
        let applier = tokio::task::spawn_blocking(move || {
            let mut g = engine.lock().unwrap();
            let (c, r) = &mut *g;
            c.apply_writes(r.as_mut().expect("round"), ChunkReader::new(rx), None)
                .map(|r| r.applied)
                .map_err(|e| e.to_string())
        });
        (tx, applier)
    }

    /// Step 5.
    pub async fn step5(&mut self, cursor: Cursor) -> Result<Cursor, ClientError> {
        let req = self
            .blocking(move |c, r| c.prepare_commit(r.as_ref().expect("round"), cursor))
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        let committed = match self.request(ClientMsg::Commit(req)).await? {
            ServerMsg::Committed { cursor } => cursor,
            other => return Self::unexpected("Committed", other),
        };
        self.blocking(|c, r| c.commit(r.take().expect("round")))
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        Ok(committed)
    }

    /// Step 5 as a client that dies between P's commit and its own: its
    /// manifest stays pending, to be resolved by `WasCommitted` next round.
    pub async fn step5_project_only(&mut self, cursor: Cursor) -> Result<Cursor, ClientError> {
        let req = self
            .blocking(move |c, r| c.prepare_commit(r.as_ref().expect("round"), cursor))
            .await
            .map_err(|e| ClientError::Engine(e.to_string()))?;
        let committed = match self.request(ClientMsg::Commit(req)).await? {
            ServerMsg::Committed { cursor } => cursor,
            other => return Self::unexpected("Committed", other),
        };
        self.abandon().await;
        Ok(committed)
    }

    /// A whole round.
    pub async fn round(&mut self) -> Result<RoundSummary, ClientError> {
        let mut s = RoundSummary { hello: Some(self.hello().await?), ..Default::default() };
        s.step1 = self.step1().await?;
        s.deletes_for_me = self.step2().await?;
        let (applied, entries) = self.step3().await?;
        s.sent_entries = entries;
        match applied {
            ServerMsg::WritesApplied { conflicts, refused, .. } => {
                s.conflicts = conflicts;
                s.refused = refused;
            }
            other => return Self::unexpected("WritesApplied", other),
        }
        let (cursor, n) = self.step4().await?;
        s.received_applied = n;
        let committed = self.step5(cursor).await?;
        assert_eq!(committed, cursor, "P commits the cursor it issued in step 4");
        s.cursor = committed;
        Ok(s)
    }

    /// Drops the round in flight on this side (after a failed step).
    pub async fn abandon(&mut self) {
        self.blocking(|_, r| {
            r.take();
        })
        .await;
    }

    /// A whole round, with a timeout.
    pub async fn round_within(&mut self, limit: Duration) -> RoundSummary {
        match tokio::time::timeout(limit, self.round()).await {
            Err(_) => panic!("{}: round did not complete within {limit:?}", self.id),
            Ok(Err(e)) => panic!("{}: round failed: {e:?}", self.id),
            Ok(Ok(s)) => s,
        }
    }

    /// Packs this round's step-3 changes into memory (to send by hand).
    pub async fn pack_to_vec(&mut self) -> Vec<u8> {
        self.blocking(|c, r| {
            let r = r.as_mut().expect("round");
            let paths = c.changes_to_send(r);
            let (v, _) = c.pack_changes(r, &paths, Vec::new()).unwrap();
            v
        })
        .await
    }

    /// Waits until the connection is closed by the broker.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.conn.recv()).await {
                Err(_) => return false,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
                Ok(Ok(Some(_))) => continue,
            }
        }
    }
}

// ---- helpers for hostile input (tests/hostile.rs) ----

impl Project {
    /// A project whose token file also lists `n` extra clients `x0`, `x1`, …
    /// (see [`extra_token`]).
    pub fn with_extra_clients(n: usize) -> Self {
        let p = Project::new();
        let mut text = std::fs::read_to_string(&p.tokens).unwrap();
        for i in 0..n {
            text.push_str(&format!("x{i} {}\n", extra_token(i)));
        }
        std::fs::write(&p.tokens, text).unwrap();
        p
    }

    /// A sibling of the home (outside it) with a canary file; returns its path.
    pub fn outside(&self) -> PathBuf {
        let o = self.dir.path().join("outside");
        std::fs::create_dir_all(o.join("sub")).unwrap();
        std::fs::write(o.join("canary"), b"canary: must never change").unwrap();
        std::fs::write(o.join("sub/canary2"), b"second canary").unwrap();
        o
    }
}

pub fn extra_token(i: usize) -> String {
    format!("token-of-extra-client-{i:04}-0123456789")
}

/// Connects with explicit wire limits.
pub async fn connect_with(addr: SocketAddr, token: &str, limits: WireLimits) -> Result<ClientConn, WireError> {
    tokio::time::timeout(Duration::from_secs(10), cs_wire::connect(&url(addr), token, None, limits))
        .await
        .map_err(|_| WireError::Timeout { what: "connect", after: Duration::from_secs(10) })?
}

impl TestClient {
    /// Sends `stream` (compressed tar bytes, in chunks) as the step-3
    /// stream of the round in flight and returns the broker's answer.
    pub async fn step3_raw(&mut self, chunks: impl IntoIterator<Item = Vec<u8>>) -> Result<ServerMsg, ClientError> {
        let stream = self.take_stream();
        let id = self.send(ClientMsg::SendWrites { stream }).await?;
        for c in chunks {
            // The broker may stop reading (it failed the step): it still
            // drains the stream, so sending goes on.
            self.conn.send(&Frame::Chunk { stream, data: bytes::Bytes::from(c) }).await?;
        }
        self.conn.send(&Frame::End { stream, end: StreamEnd::Ok }).await?;
        let (rid, body) = self.recv_control().await?;
        if let ServerMsg::Error { code, message } = body {
            return Err(ClientError::Server { code, message });
        }
        if rid != id {
            return Err(ClientError::Unexpected(format!("answer to request {rid}, expected {id}: {body:?}")));
        }
        Ok(body)
    }
}

/// The resident set size of this process (the broker runs in-process), in bytes.
pub fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Samples [`rss_bytes`] every 5 ms on a thread until the returned guard's
/// `stop`, which returns the highest value seen.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start() -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = rss_bytes();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(5));
            }
            max.max(rss_bytes())
        });
        RssSampler { stop, thread: Some(thread) }
    }

    pub fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

// ---- hand-made tar and zstd, for streams the real packer refuses to write ----

/// Tar typeflags.
pub const T_FILE: u8 = b'0';
pub const T_HARDLINK: u8 = b'1';
pub const T_SYMLINK: u8 = b'2';
pub const T_CHAR: u8 = b'3';
pub const T_BLOCK: u8 = b'4';
pub const T_DIR: u8 = b'5';
pub const T_FIFO: u8 = b'6';
pub const T_PAX: u8 = b'x';

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    assert_eq!(s.len(), digits, "value {v} does not fit");
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

/// One ustar header block. `name` is copied raw (up to 100 bytes), so it
/// may hold anything a hostile sender likes.
pub fn tar_header(name: &[u8], typeflag: u8, size: u64, linkname: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    assert!(name.len() <= 100 && linkname.len() <= 100);
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// A PAX extended header (`x`) with these records, padded.
pub fn pax_header(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        // "<len> <key>=<value>\n", len counting itself.
        let body = k.len() + v.len() + 3;
        let mut len = body + 1;
        while format!("{len}").len() + body != len {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let mut out = tar_header(b"PaxHeader", T_PAX, data.len() as u64, b"").to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// A regular file entry with its data, padded.
pub fn tar_file(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = tar_header(name, T_FILE, data.len() as u64, b"").to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// The end-of-archive marker.
pub fn tar_end() -> Vec<u8> {
    vec![0u8; 1024]
}

/// A zstd frame header: no checksum, no content size, a 128 KiB window.
pub const ZSTD_HEADER: [u8; 6] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
/// Largest block under that window.
pub const ZSTD_BLOCK: usize = 128 << 10;

fn block_header(size: usize, kind: u32, last: bool) -> [u8; 3] {
    let v = ((size as u32) << 3) | (kind << 1) | last as u32;
    [v as u8, (v >> 8) as u8, (v >> 16) as u8]
}

/// `data` as one zstd frame of raw (stored) blocks: a valid stream the
/// broker's decoder reads, without any compressor.
pub fn zstd_stored(data: &[u8]) -> Vec<u8> {
    let mut out = ZSTD_HEADER.to_vec();
    let mut parts: Vec<&[u8]> = data.chunks(ZSTD_BLOCK).collect();
    if parts.is_empty() {
        parts.push(&[]);
    }
    let n = parts.len();
    for (i, p) in parts.into_iter().enumerate() {
        out.extend_from_slice(&block_header(p.len(), 0, i + 1 == n));
        out.extend_from_slice(p);
    }
    out
}

/// A decompression bomb, generated lazily in chunks of about `chunk`
/// bytes: a tar whose single file `name` declares `size` bytes (a multiple
/// of 128 KiB, at most 8 GiB - 1) of zeros, each 128 KiB of which is one
/// 4-byte RLE block; then the end-of-archive marker. Never more than one
/// chunk is in memory.
pub fn zstd_bomb(name: &'static [u8], size: u64, chunk: usize) -> impl Iterator<Item = Vec<u8>> {
    assert_eq!(size % ZSTD_BLOCK as u64, 0);
    let blocks = size / ZSTD_BLOCK as u64;
    let mut first = ZSTD_HEADER.to_vec();
    let h = tar_header(name, T_FILE, size, b"");
    first.extend_from_slice(&block_header(512, 0, false));
    first.extend_from_slice(&h);
    let mut next = 0u64;
    let mut done = false;
    let mut head = Some(first);
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut out = head.take().unwrap_or_default();
        while out.len() < chunk && next < blocks {
            out.extend_from_slice(&block_header(ZSTD_BLOCK, 1, false));
            out.push(0);
            next += 1;
        }
        if next == blocks && out.len() < chunk {
            // The end-of-archive marker, as one last RLE block of zeros.
            out.extend_from_slice(&block_header(1024, 1, true));
            out.push(0);
            done = true;
        }
        Some(out)
    })
}

/// A websocket to the broker with no cs-wire client on it: what a hostile client speaks.
pub type RawWs = tokio_tungstenite::WebSocketStream<cs_wire::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn raw_ws(addr: std::net::SocketAddr, token: &str) -> RawWs {
    let mut req = url(addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next control answer on a raw websocket.
pub async fn answer(ws: &mut RawWs) -> (u64, ServerMsg) {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("an answer") {
            Some(Ok(Message::Binary(b))) => match Frame::<ServerMsg>::decode(&b).unwrap() {
                Frame::Control(env) => return (env.id, env.body),
                other => panic!("{other:?}"),
            },
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}
