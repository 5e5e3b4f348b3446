//! A TCP proxy that adds a fixed one-way delay, both directions, pipelined.
//!
//! Each direction of each connection is a reader and a writer joined by a queue of
//! `(deliver_at, chunk)`: the reader stamps every chunk with `arrival + delay` and goes on
//! reading, the writer sleeps until the head's time and writes it. So a link with delay `d`
//! carries any number of chunks in flight: round trip `2d`, throughput not limited by `d`
//! (only by the queue's bound, which applies backpressure like a real window).

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Result, TestbedError};

/// Size of one read.
const CHUNK: usize = 64 * 1024;
/// Chunks in flight per direction before the reader waits (16 MiB at full chunks).
const QUEUE: usize = 256;

enum Cmd {
    /// Acknowledged over a std channel, so `cut_all` may be called from inside another runtime.
    CutAll(std::sync::mpsc::Sender<()>),
    Stop,
}

/// A running proxy (see the module docs). Dropping it closes every connection and stops its
/// thread.
pub struct DelayProxy {
    addr: SocketAddr,
    delay: Duration,
    cmd: mpsc::UnboundedSender<Cmd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DelayProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayProxy").field("addr", &self.addr).field("delay", &self.delay).finish()
    }
}

impl DelayProxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards every connection to `target`,
    /// each chunk delivered `one_way_delay` after it arrived.
    pub fn start(listen: SocketAddr, target: SocketAddr, one_way_delay: Duration) -> Result<DelayProxy> {
        let std_listener =
            std::net::TcpListener::bind(listen).map_err(|e| TestbedError::io("bind proxy", listen.to_string(), e))?;
        std_listener.set_nonblocking(true).map_err(|e| TestbedError::io("set nonblocking", listen.to_string(), e))?;
        let addr = std_listener.local_addr().map_err(|e| TestbedError::io("local_addr", listen.to_string(), e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestbedError::io("build proxy runtime", listen.to_string(), e))?;
        let (cmd, cmd_rx) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name(format!("delay-proxy-{}", addr.port()))
            .spawn(move || {
                rt.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(l) => serve(l, target, one_way_delay, cmd_rx).await,
                        Err(e) => tracing::error!(error = %e, "delay proxy: cannot register listener"),
                    }
                });
            })
            .map_err(|e| TestbedError::io("spawn proxy thread", listen.to_string(), e))?;
        Ok(DelayProxy { addr, delay: one_way_delay, cmd, thread: Some(thread) })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn one_way_delay(&self) -> Duration {
        self.delay
    }

    /// Closes every open connection (both sides see the socket closed) and returns once they
    /// are closed. The proxy keeps accepting new ones. Blocks the calling thread briefly (also
    /// fine from async code: the proxy runs on its own thread).
    pub fn cut_all(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmd.send(Cmd::CutAll(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        let _ = self.cmd.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, delay: Duration, mut cmd: mpsc::UnboundedReceiver<Cmd>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    conns.spawn(async move {
                        if let Err(e) = relay(client, target, delay).await {
                            tracing::debug!(error = %e, "delay proxy: connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delay proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            c = cmd.recv() => match c {
                Some(Cmd::CutAll(ack)) => {
                    // Aborting a connection's task drops its sockets (one task per connection,
                    // no spawned children): once joined, every socket is closed.
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    let _ = ack.send(());
                }
                Some(Cmd::Stop) | None => break,
            },
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// One proxied connection: both directions, until both have delivered their EOF or one fails.
async fn relay(client: TcpStream, target: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let (down_tx, down_rx) = mpsc::channel(QUEUE);
    tokio::try_join!(
        read_side(cr, up_tx, delay),
        write_side(sw, up_rx),
        read_side(sr, down_tx, delay),
        write_side(cw, down_rx),
    )?;
    Ok(())
}

/// `None` = end of stream.
type Stamped = (Instant, Option<Vec<u8>>);

async fn read_side(mut r: OwnedReadHalf, q: mpsc::Sender<Stamped>, delay: Duration) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = r.read(&mut buf).await?;
        let at = Instant::now() + delay;
        let item = (n > 0).then(|| buf[..n].to_vec());
        let eof = item.is_none();
        if q.send((at, item)).await.is_err() {
            return Err(std::io::Error::other("writer gone"));
        }
        if eof {
            return Ok(());
        }
    }
}

async fn write_side(mut w: OwnedWriteHalf, mut q: mpsc::Receiver<Stamped>) -> std::io::Result<()> {
    while let Some((at, item)) = q.recv().await {
        // A due chunk goes at once: sleep_until rounds up to the timer's
        // 1 ms tick, which at zero delay would add a millisecond per chunk.
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        match item {
            Some(bytes) => w.write_all(&bytes).await?,
            None => {
                w.shutdown().await?;
                return Ok(());
            }
        }
    }
    Ok(())
}
