//! A link shaper: a small tokio TCP proxy that makes 127.0.0.1 behave like a slow link.
//!
//! This machine's kernel has no `tc netem`, so this is how tests and benchmarks get latency.
//! One [`Shaper`] is one *link*; it carries any number of [`Shaper::route`]s (a listening
//! port of 127.0.0.1 forwarding to a target), so an sshd and a broker can sit behind the same
//! link and share its delay, its bandwidth and its faults.
//!
//! - **Delay, pipelined.** Each direction of each connection is a reader and a writer joined
//!   by a queue of `(deliver_at, chunk)`. The reader stamps every chunk it reads with its
//!   arrival time plus the direction's one-way delay and goes on reading; the writer sleeps
//!   until the head's time and writes it. So any number of chunks are in flight: the round
//!   trip is `up + down`, and the delay does not limit throughput.
//! - **Bandwidth** (optional, bytes per second, each direction, shared by every connection of
//!   the link): a chunk is transmitted when the direction is free, takes `len / rate`, and is
//!   delivered one delay after its transmission ends; the reader does not read more until its
//!   chunk is on the wire, so the sender sees back-pressure (the link buffers about one
//!   bandwidth-delay product, like a real one) instead of an unbounded queue.
//! - **Faults.** [`Shaper::cut_all`] closes every open connection now; [`Shaper::cut_after`]
//!   lets exactly `N` more bytes through (both directions, all connections and routes
//!   together), then closes every open connection. New connections are accepted as usual
//!   afterwards. [`CutStyle`] says whether a cut is a close (FIN) or a reset (RST).
//! - **Counters** ([`Shaper::stats`]): bytes delivered per route and direction, connections.
//!
//! The proxy runs on its own thread and runtime, so synchronous code can use it; dropping the
//! [`Shaper`] closes every connection and listener and joins the thread.
//!
//! Loopback only by intent: a route listens on 127.0.0.1 unless [`Shaper::route_on`] is given
//! another address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// Largest chunk read at once.
const MAX_CHUNK: usize = 64 * 1024;
/// Smallest chunk when a bandwidth cap asks for small ones.
const MIN_CHUNK: usize = 1024;
/// Chunks queued per direction of a connection before its reader waits (16 MiB at full
/// chunks): with no bandwidth cap this bounds what a link holds in flight.
const QUEUE: usize = 256;
/// With a bandwidth cap, how long before a chunk's transmission ends the reader reads the next.
const READ_LEAD: Duration = Duration::from_millis(3);

/// Errors starting a shaper or a route.
#[derive(thiserror::Error, Debug)]
pub enum ShaperError {
    #[error("{op} {addr}: {source}")]
    Io {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the shaper's thread is gone")]
    Gone,
}

/// The shape of a link. "Up" is client → target, "down" is target → client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// One-way delay client → target.
    pub up_delay: Duration,
    /// One-way delay target → client.
    pub down_delay: Duration,
    /// Bytes per second in each direction (shared by all connections of the link); `None`:
    /// no cap.
    pub bandwidth: Option<u64>,
}

impl LinkConfig {
    /// Half of `rtt` each way, no bandwidth cap.
    pub fn rtt(rtt: Duration) -> Self {
        LinkConfig { up_delay: rtt / 2, down_delay: rtt - rtt / 2, bandwidth: None }
    }

    /// No delay, no cap: a plain proxy (still counting bytes and able to cut).
    pub fn none() -> Self {
        LinkConfig::rtt(Duration::ZERO)
    }

    /// The same with a bandwidth cap (bytes per second, each direction).
    pub fn with_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.bandwidth = Some(bytes_per_sec.max(1));
        self
    }

    /// The round-trip time this link adds.
    pub fn round_trip(&self) -> Duration {
        self.up_delay + self.down_delay
    }
}

/// What a cut does to each side's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CutStyle {
    /// Close (FIN): bytes already delivered stay readable, then end of stream.
    #[default]
    Close,
    /// Reset (RST, `SO_LINGER` 0): the peer sees `ECONNRESET`; what it had not yet read may
    /// be lost.
    Reset,
}

/// Counters of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStats {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where connections are forwarded.
    pub target: SocketAddr,
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes delivered to the target (client → target).
    pub bytes_up: u64,
    /// Bytes delivered to clients (target → client).
    pub bytes_down: u64,
}

/// Counters of the whole link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    pub routes: Vec<RouteStats>,
    /// Cuts so far (by [`Shaper::cut_all`] or a [`Shaper::cut_after`] budget running out).
    pub cuts: u64,
}

impl Stats {
    /// Bytes delivered in both directions over every route.
    pub fn total_bytes(&self) -> u64 {
        self.routes.iter().map(|r| r.bytes_up + r.bytes_down).sum()
    }

    /// The counters of the route listening on `listen`.
    pub fn route(&self, listen: SocketAddr) -> Option<&RouteStats> {
        self.routes.iter().find(|r| r.listen == listen)
    }
}

#[derive(Default)]
struct RouteCounters {
    accepted: AtomicU64,
    open: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Up,
    Down,
}

/// What a reader gets from the cut-after budget for a chunk of `n` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    /// No budget armed: forward it all.
    All,
    /// Forward this many, and this chunk exhausts the budget: the cut follows it.
    Last(usize),
    /// Forward this many; budget remains.
    Some(usize),
    /// The budget is exhausted (a cut is pending): forward nothing.
    Nothing,
}

struct Link {
    cfg: Mutex<LinkConfig>,
    /// Per direction, when the direction is free to transmit again (bandwidth cap only).
    next_free: [Mutex<Option<Instant>>; 2],
    /// Bytes still allowed before the armed cut (`None`: not armed).
    budget: Mutex<Option<u64>>,
    cut_style: Mutex<CutStyle>,
    /// Bumped at every cut; a connection is cut when the value passes the one it started at.
    cut_gen: watch::Sender<u64>,
    /// Open connections by the generation they started in.
    open_by_gen: Mutex<BTreeMap<u64, u64>>,
    closed: Notify,
    cuts: AtomicU64,
}

impl Link {
    fn new(cfg: LinkConfig) -> Self {
        Link {
            cfg: Mutex::new(cfg),
            next_free: [Mutex::new(None), Mutex::new(None)],
            budget: Mutex::new(None),
            cut_style: Mutex::new(CutStyle::default()),
            cut_gen: watch::channel(0).0,
            open_by_gen: Mutex::new(BTreeMap::new()),
            closed: Notify::new(),
            cuts: AtomicU64::new(0),
        }
    }

    fn config(&self) -> LinkConfig {
        *lock(&self.cfg)
    }

    fn delay(&self, dir: Dir) -> Duration {
        let c = self.config();
        match dir {
            Dir::Up => c.up_delay,
            Dir::Down => c.down_delay,
        }
    }

    /// How much to read at once: with a cap, about 5 ms of transmission (so the cap is smooth
    /// at the scale of a round trip).
    fn chunk_len(&self) -> usize {
        match self.config().bandwidth {
            None => MAX_CHUNK,
            Some(bw) => ((bw / 200) as usize).clamp(MIN_CHUNK, MAX_CHUNK),
        }
    }

    /// Reserves the direction for `len` bytes that arrived at `now`: returns when they are to
    /// be delivered, and when their transmission ends (`None` without a cap).
    fn schedule(&self, dir: Dir, len: usize, now: Instant) -> (Instant, Option<Instant>) {
        let cfg = self.config();
        let delay = match dir {
            Dir::Up => cfg.up_delay,
            Dir::Down => cfg.down_delay,
        };
        match cfg.bandwidth {
            None => (now + delay, None),
            Some(bw) => {
                let mut free = lock(&self.next_free[dir as usize]);
                let start = match *free {
                    Some(f) if f > now => f,
                    _ => now,
                };
                let end = start + Duration::from_secs_f64(len as f64 / bw as f64);
                *free = Some(end);
                (end + delay, Some(end))
            }
        }
    }

    fn take_budget(&self, n: usize) -> Take {
        let mut b = lock(&self.budget);
        match *b {
            None => Take::All,
            Some(0) => Take::Nothing,
            Some(left) => {
                let t = (n as u64).min(left);
                *b = Some(left - t);
                if left - t == 0 {
                    Take::Last(t as usize)
                } else {
                    Take::Some(t as usize)
                }
            }
        }
    }

    /// Cuts every connection open now; returns the generation they belong to (≤ it).
    fn cut_now(&self) -> u64 {
        *lock(&self.budget) = None;
        let mut old = 0;
        self.cut_gen.send_modify(|g| {
            old = *g;
            *g += 1;
        });
        self.cuts.fetch_add(1, Ordering::Relaxed);
        old
    }

    fn open_up_to(&self, gen: u64) -> u64 {
        lock(&self.open_by_gen).range(..=gen).map(|(_, n)| *n).sum()
    }

    /// Waits until every connection of generation ≤ `gen` has closed.
    async fn wait_closed(&self, gen: u64) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open_up_to(gen) == 0 {
                return;
            }
            notified.await;
        }
    }

    fn register(&self) -> u64 {
        let gen = *self.cut_gen.borrow();
        *lock(&self.open_by_gen).entry(gen).or_insert(0) += 1;
        gen
    }

    fn unregister(&self, gen: u64) {
        let mut m = lock(&self.open_by_gen);
        if let Some(n) = m.get_mut(&gen) {
            *n -= 1;
            if *n == 0 {
                m.remove(&gen);
            }
        }
        drop(m);
        self.closed.notify_waiters();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct RouteEntry {
    listen: SocketAddr,
    target: SocketAddr,
    counters: Arc<RouteCounters>,
}

/// A shaped link with its routes (see the crate docs). Dropping it closes everything.
pub struct Shaper {
    link: Arc<Link>,
    routes: Mutex<Vec<RouteEntry>>,
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper").field("config", &self.link.config()).finish()
    }
}

impl Shaper {
    /// Starts a link with no routes yet.
    pub fn start(cfg: LinkConfig) -> Result<Shaper, ShaperError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| ShaperError::Io {
            op: "build runtime for",
            addr: "shaper".into(),
            source: e,
        })?;
        let handle = rt.handle().clone();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cs-shaper".into())
            .spawn(move || {
                rt.block_on(async move {
                    let _ = stop_rx.await;
                });
                // Dropping the runtime cancels every task: listeners and sockets close.
                drop(rt);
            })
            .map_err(|e| ShaperError::Io { op: "spawn thread for", addr: "shaper".into(), source: e })?;
        Ok(Shaper {
            link: Arc::new(Link::new(cfg)),
            routes: Mutex::new(Vec::new()),
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A link with `cfg` and one route to `target` on a free port of 127.0.0.1.
    pub fn start_route(cfg: LinkConfig, target: SocketAddr) -> Result<(Shaper, SocketAddr), ShaperError> {
        let s = Shaper::start(cfg)?;
        let addr = s.route(target)?;
        Ok((s, addr))
    }

    /// Listens on a free port of 127.0.0.1 and forwards every connection to `target` through
    /// this link. Returns the address clients connect to.
    pub fn route(&self, target: SocketAddr) -> Result<SocketAddr, ShaperError> {
        self.route_on(SocketAddr::from(([127, 0, 0, 1], 0)), target)
    }

    /// Like [`Shaper::route`] on a given address.
    pub fn route_on(&self, listen: SocketAddr, target: SocketAddr) -> Result<SocketAddr, ShaperError> {
        let l = std::net::TcpListener::bind(listen).map_err(|e| ShaperError::Io {
            op: "bind",
            addr: listen.to_string(),
            source: e,
        })?;
        l.set_nonblocking(true).map_err(|e| ShaperError::Io {
            op: "set nonblocking",
            addr: listen.to_string(),
            source: e,
        })?;
        let addr =
            l.local_addr().map_err(|e| ShaperError::Io { op: "local_addr", addr: listen.to_string(), source: e })?;
        let counters = Arc::new(RouteCounters::default());
        let (ok_tx, ok_rx) = std::sync::mpsc::channel();
        let link = Arc::clone(&self.link);
        let c = Arc::clone(&counters);
        self.handle.spawn(async move {
            match TcpListener::from_std(l) {
                Ok(l) => {
                    let _ = ok_tx.send(Ok(()));
                    accept_loop(l, target, link, c).await;
                }
                Err(e) => {
                    let _ = ok_tx.send(Err(e));
                }
            }
        });
        match ok_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ShaperError::Io { op: "register listener", addr: addr.to_string(), source: e }),
            Err(_) => return Err(ShaperError::Gone),
        }
        lock(&self.routes).push(RouteEntry { listen: addr, target, counters });
        Ok(addr)
    }

    /// The link's shape now.
    pub fn config(&self) -> LinkConfig {
        self.link.config()
    }

    /// Changes the shape; it applies to bytes read from now on (bytes in flight keep their
    /// delivery times, and order is always kept).
    pub fn set_config(&self, cfg: LinkConfig) {
        *lock(&self.link.cfg) = cfg;
    }

    /// What the next cuts do to the sockets.
    pub fn set_cut_style(&self, style: CutStyle) {
        *lock(&self.link.cut_style) = style;
    }

    /// Closes every open connection (of every route) and returns once they are all closed.
    /// New connections are accepted as usual.
    pub fn cut_all(&self) {
        let link = Arc::clone(&self.link);
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let gen = link.cut_now();
            link.wait_closed(gen).await;
            let _ = tx.send(());
        });
        let _ = rx.recv();
    }

    /// Lets exactly `bytes` more bytes through (both directions, all connections, counted as
    /// read from the senders), then cuts every open connection. Bytes read beyond the budget
    /// before the cut are dropped. `cut_after(0)` cuts at the next byte. Replaces any budget
    /// armed before; [`Shaper::disarm`] removes it.
    pub fn cut_after(&self, bytes: u64) {
        if bytes == 0 {
            // Nothing to deliver first: the cut is now.
            *lock(&self.link.budget) = None;
            self.cut_all();
        } else {
            *lock(&self.link.budget) = Some(bytes);
        }
    }

    /// Removes a [`Shaper::cut_after`] budget that has not run out.
    pub fn disarm(&self) {
        let mut b = lock(&self.link.budget);
        if *b != Some(0) {
            *b = None;
        }
    }

    /// Bytes left before the armed cut (`None`: none armed).
    pub fn budget(&self) -> Option<u64> {
        *lock(&self.link.budget)
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let routes = lock(&self.routes)
            .iter()
            .map(|r| RouteStats {
                listen: r.listen,
                target: r.target,
                accepted: r.counters.accepted.load(Ordering::Relaxed),
                open: r.counters.open.load(Ordering::Relaxed),
                bytes_up: r.counters.bytes_up.load(Ordering::Relaxed),
                bytes_down: r.counters.bytes_down.load(Ordering::Relaxed),
            })
            .collect();
        Stats { routes, cuts: self.link.cuts.load(Ordering::Relaxed) }
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(l: TcpListener, target: SocketAddr, link: Arc<Link>, counters: Arc<RouteCounters>) {
    loop {
        match l.accept().await {
            Ok((client, _)) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let (link, counters) = (Arc::clone(&link), Arc::clone(&counters));
                tokio::spawn(async move {
                    counters.open.fetch_add(1, Ordering::Relaxed);
                    let gen = link.register();
                    connection(client, target, &link, &counters, gen).await;
                    link.unregister(gen);
                    counters.open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "shaper: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Resolves once a cut reaches generation `gen`.
async fn cut_reached(rx: &mut watch::Receiver<u64>, gen: u64) {
    let _ = rx.wait_for(|g| *g > gen).await;
}

/// One proxied connection, until both directions delivered their end of stream, one fails, or
/// a cut.
async fn connection(mut client: TcpStream, target: SocketAddr, link: &Arc<Link>, counters: &RouteCounters, gen: u64) {
    let mut cut_rx = link.cut_gen.subscribe();
    let holds_cut = AtomicBool::new(false);
    let mut server = tokio::select! {
        s = TcpStream::connect(target) => match s {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, %target, "shaper: cannot reach the target");
                return;
            }
        },
        _ = cut_reached(&mut cut_rx, gen) => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let cut = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let relay = async {
            tokio::try_join!(
                direction(cr, sw, Dir::Up, link, &counters.bytes_up, &holds_cut),
                direction(sr, cw, Dir::Down, link, &counters.bytes_down, &holds_cut),
            )
        };
        tokio::select! {
            r = relay => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "shaper: connection ended");
                }
                false
            }
            _ = cut_reached(&mut cut_rx, gen) => true,
        }
    };
    if !cut && holds_cut.load(Ordering::Relaxed) && *link.cut_gen.borrow() <= gen {
        // This connection ran the budget out but ended before delivering the cut: do it now.
        link.cut_now();
    }
    if cut && *lock(&link.cut_style) == CutStyle::Reset {
        for s in [&client, &server] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    drop(client);
    drop(server);
}

enum Item {
    Data(Vec<u8>),
    Eof,
    /// The cut-after budget ran out with the chunk before: cut when delivering this.
    Cut,
}

/// One direction: a reader and a writer joined by a queue of timestamped chunks.
async fn direction<R, W>(
    r: R,
    w: W,
    dir: Dir,
    link: &Arc<Link>,
    delivered: &AtomicU64,
    holds_cut: &AtomicBool,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::try_join!(read_side(r, tx, dir, link, holds_cut), write_side(w, rx, link, delivered))?;
    Ok(())
}

async fn read_side<R: AsyncRead + Unpin>(
    mut r: R,
    q: mpsc::Sender<(Instant, Item)>,
    dir: Dir,
    link: &Arc<Link>,
    holds_cut: &AtomicBool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_CHUNK];
    let gone = || std::io::Error::other("shaper: writer gone");
    loop {
        let len = link.chunk_len();
        let n = r.read(&mut buf[..len]).await?;
        let now = Instant::now();
        if n == 0 {
            let at = now + link.delay(dir);
            q.send((at, Item::Eof)).await.map_err(|_| gone())?;
            return Ok(());
        }
        let (take, last) = match link.take_budget(n) {
            Take::All => (n, false),
            Take::Some(t) => (t, false),
            Take::Last(t) => (t, true),
            Take::Nothing => {
                // A cut is pending: this connection is about to be closed.
                std::future::pending::<()>().await;
                unreachable!()
            }
        };
        let (at, tx_end) = link.schedule(dir, take, now);
        q.send((at, Item::Data(buf[..take].to_vec()))).await.map_err(|_| gone())?;
        if last {
            holds_cut.store(true, Ordering::Relaxed);
            q.send((at, Item::Cut)).await.map_err(|_| gone())?;
        }
        if let Some(end) = tx_end {
            // Read the next chunk a little before this one is on the wire, so timer lateness
            // does not leave the link idle between chunks (the next one is scheduled at
            // `end`, not at whenever we woke).
            tokio::time::sleep_until(end.checked_sub(READ_LEAD).unwrap_or(end)).await;
        }
    }
}

async fn write_side<W: AsyncWrite + Unpin>(
    mut w: W,
    mut q: mpsc::Receiver<(Instant, Item)>,
    link: &Arc<Link>,
    delivered: &AtomicU64,
) -> std::io::Result<()> {
    while let Some((at, item)) = q.recv().await {
        // A timer always waits for its next tick (1 ms): sleep only when there is a delay left,
        // so a link of zero delay adds nothing.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        match item {
            Item::Data(bytes) => {
                // Counted before the write, so a peer that has read them sees them counted.
                delivered.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                w.write_all(&bytes).await?;
            }
            Item::Eof => {
                w.shutdown().await?;
                return Ok(());
            }
            Item::Cut => {
                link.cut_now();
                // This connection is cut with the others.
                std::future::pending::<()>().await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_runs_out_exactly() {
        let l = Link::new(LinkConfig::none());
        assert_eq!(l.take_budget(10), Take::All);
        *l.budget.lock().unwrap() = Some(25);
        assert_eq!(l.take_budget(10), Take::Some(10));
        assert_eq!(l.take_budget(10), Take::Some(10));
        assert_eq!(l.take_budget(10), Take::Last(5));
        assert_eq!(l.take_budget(10), Take::Nothing);
        l.cut_now();
        assert_eq!(l.take_budget(10), Take::All);
    }

    #[test]
    fn bandwidth_serialises_chunks() {
        let l = Link::new(LinkConfig::rtt(Duration::from_millis(20)).with_bandwidth(1000));
        let t0 = Instant::now();
        let (at1, end1) = l.schedule(Dir::Up, 100, t0);
        let (at2, end2) = l.schedule(Dir::Up, 100, t0);
        assert_eq!(end1, Some(t0 + Duration::from_millis(100)));
        assert_eq!(end2, Some(t0 + Duration::from_millis(200)));
        assert_eq!(at1, t0 + Duration::from_millis(110));
        assert_eq!(at2, t0 + Duration::from_millis(210));
        // The other direction is independent.
        let (_, end3) = l.schedule(Dir::Down, 100, t0);
        assert_eq!(end3, Some(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn rtt_splits_in_halves() {
        let c = LinkConfig::rtt(Duration::from_millis(41));
        assert_eq!(c.round_trip(), Duration::from_millis(41));
        assert_eq!(c.up_delay, Duration::from_micros(20_500));
    }
}
