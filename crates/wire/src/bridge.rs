//! Blocking bridges between the sync engine's `std::io` tar streams and the
//! async websocket.
//!
//! ```text
//! blocking thread            async task                      async task            blocking thread
//! tar → ChunkWriter ─mpsc(N)→ send_stream ─websocket/TCP─→ recv_stream ─mpsc(N)→ ChunkReader → untar
//! ```
//!
//! **Flow control is the bounded channels.** [`ChunkWriter`] blocks
//! while its channel holds N chunks; the task that forwards
//! them blocks while the websocket cannot take more (TCP backpressure); on
//! the receiving side, `recv_stream` stops reading the socket while the
//! [`ChunkReader`]'s channel is full, so a slow reader stops the socket
//! reader, TCP's window fills, and the sender stops in turn. Memory in
//! flight is therefore bounded by the two channels (2·N chunks of at most
//! `max_chunk_bytes`), one chunk in each task and in each bridge, the
//! websocket buffers, and the kernel's socket buffers — whatever the
//! stream's length.
//!
//! **A cut stream is never a complete stream.** The reader returns EOF only
//! after an explicit end-ok item ([`ChunkWriter::finish`]). A writer dropped
//! without `finish` sends an abort (or, if its channel is full, closes the
//! channel, which every consumer treats as an abort); an abort or a closed
//! channel is an `io::Error` for the reader.
//!
//! **A hook says what a user adds around the waits.** Both bridges take a
//! [`StreamHook`] (by default [`Plain`]: block until the channel moves). The
//! broker's hook holds a slot of its global tar bound only while a bridge has
//! work, gives it back before the bridge blocks on the network, and bounds
//! every wait (cancel flag, silence limit); see `cs_broker::TarWork`.
//!
//! Both bridges block: use them on blocking threads (`spawn_blocking`,
//! `std::thread`), never inside an async task.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

use crate::frame::StreamEnd;

/// What travels through a stream's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// The next bytes of the stream (never more than the connection's
    /// `max_chunk_bytes` when produced by [`ChunkWriter`]).
    Chunk(Bytes),
    /// The end of the stream: complete, or aborted with a reason.
    End(StreamEnd),
}

/// A good default capacity, in chunks, for a stream channel: 8 chunks of
/// 256 KiB keep 2 MiB in flight per channel.
pub const DEFAULT_STREAM_CHANNEL: usize = 8;

/// A bounded channel for one stream.
pub fn stream_channel(capacity: usize) -> (mpsc::Sender<StreamItem>, mpsc::Receiver<StreamItem>) {
    mpsc::channel(capacity.max(1))
}

/// What a bridge does around its work and its waits. Every method has a
/// default that does nothing extra ([`Plain`]).
pub trait StreamHook {
    /// Called before the bridge works on data (hands out a chunk or EOF,
    /// starts packing, resumes after a wait): e.g. take a slot.
    fn working(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Called before the bridge blocks on its channel: e.g. give a slot back.
    fn waiting(&mut self) {}

    /// Called before each step: an error ends the stream (e.g. cancelled).
    /// Not `Interrupted`, which `read_exact`/`write_all` retry for ever.
    fn check(&self) -> io::Result<()> {
        Ok(())
    }

    /// A chunk moved through the bridge.
    fn progress(&self) {}

    /// Waits for `fut` (a channel operation) on this blocking thread. The
    /// default waits as long as it takes.
    fn wait<F: Future>(&mut self, fut: F) -> io::Result<F::Output> {
        park_on(fut, || Ok(Duration::from_secs(60)))
    }

    /// The abort reason a writer dropped before `finish` sends.
    fn unfinished_reason(&self) -> &str {
        "writer dropped before finishing"
    }
}

/// The hook that adds nothing: the bridges block until their channel moves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl StreamHook for Plain {}

/// Polls `fut` on this thread until it is ready, parking in between (its
/// waker unparks the thread). After each pending poll `between` runs: it
/// fails the wait, or says how long to park at most before polling again.
pub fn park_on<F: Future>(fut: F, mut between: impl FnMut() -> io::Result<Duration>) -> io::Result<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        std::thread::park_timeout(between()?);
    }
}

/// `std::io::Write` into a stream channel, in chunks of at most
/// `max_chunk_bytes`. See the module documentation.
pub struct ChunkWriter<H: StreamHook = Plain> {
    tx: mpsc::Sender<StreamItem>,
    buf: BytesMut,
    max_chunk: usize,
    done: bool,
    hook: H,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the stream's receiver is gone (connection lost or stream abandoned)")
}

impl ChunkWriter {
    pub fn new(tx: mpsc::Sender<StreamItem>, max_chunk_bytes: usize) -> Self {
        Self::with_hook(tx, max_chunk_bytes, Plain)
    }
}

impl<H: StreamHook> ChunkWriter<H> {
    pub fn with_hook(tx: mpsc::Sender<StreamItem>, max_chunk_bytes: usize, hook: H) -> Self {
        let max_chunk = max_chunk_bytes.max(1);
        ChunkWriter { tx, buf: BytesMut::with_capacity(max_chunk), max_chunk, done: false, hook }
    }

    /// Tells the hook that work starts (the broker takes a tar slot before
    /// packing).
    pub fn start(&mut self) -> io::Result<()> {
        self.hook.working()
    }

    /// Sends `item` now if the channel has room, else waits (through the
    /// hook) for room.
    fn send(&mut self, item: StreamItem) -> io::Result<()> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(gone()),
            Err(TrySendError::Full(item)) => {
                self.hook.waiting();
                self.hook.wait(self.tx.send(item))?.map_err(|_| gone())?;
                self.hook.check()?;
                self.hook.working()
            }
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hook.check()?;
        let chunk = self.buf.split().freeze();
        self.buf.reserve(self.max_chunk);
        self.send(StreamItem::Chunk(chunk))?;
        self.hook.progress();
        Ok(())
    }

    /// Sends what is buffered and the end of the stream: only now may the
    /// receiver treat the stream as complete.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.done = true;
        self.send(StreamItem::End(StreamEnd::Ok))
    }

    /// Ends the stream as failed: the receiver discards it and gets an
    /// error carrying `reason`.
    pub fn abort(mut self, reason: &str) -> io::Result<()> {
        self.done = true;
        self.buf.clear();
        self.send(StreamItem::End(StreamEnd::Abort(reason.to_owned())))
    }
}

impl<H: StreamHook> Write for ChunkWriter<H> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.done {
            return Err(io::Error::other("write after the stream ended"));
        }
        let n = data.len();
        while !data.is_empty() {
            let room = self.max_chunk - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.max_chunk {
                self.send_buf()?;
            }
        }
        Ok(n)
    }

    /// Sends the buffered bytes as a (possibly short) chunk.
    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl<H: StreamHook> Drop for ChunkWriter<H> {
    fn drop(&mut self) {
        if !self.done {
            // Never block in drop (it may run in an async context): if the
            // channel is full, dropping the sender closes it, and a closed
            // channel without an end item is an abort for every consumer.
            let reason = self.hook.unfinished_reason().to_owned();
            let _ = self.tx.try_send(StreamItem::End(StreamEnd::Abort(reason)));
        }
    }
}

enum ReadState {
    Open,
    Done,
    Failed(io::ErrorKind, String),
}

/// `std::io::Read` from a stream channel. EOF only after the end-ok item;
/// an abort or a channel closed before the end is an `io::Error` (and stays
/// one on every later read).
pub struct ChunkReader<H: StreamHook = Plain> {
    rx: mpsc::Receiver<StreamItem>,
    cur: Bytes,
    state: ReadState,
    hook: H,
    /// Bytes received so far.
    bytes: u64,
}

impl ChunkReader {
    pub fn new(rx: mpsc::Receiver<StreamItem>) -> Self {
        Self::with_hook(rx, Plain)
    }
}

impl<H: StreamHook> ChunkReader<H> {
    pub fn with_hook(rx: mpsc::Receiver<StreamItem>, hook: H) -> Self {
        ChunkReader { rx, cur: Bytes::new(), state: ReadState::Open, hook, bytes: 0 }
    }

    /// Bytes received so far (whether read yet or not).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The next item, now if there is one, else after a wait (through the
    /// hook); `None` if the channel closed.
    fn next_item(&mut self) -> io::Result<Option<StreamItem>> {
        match self.rx.try_recv() {
            Ok(item) => Ok(Some(item)),
            Err(TryRecvError::Disconnected) => Ok(None),
            Err(TryRecvError::Empty) => {
                self.hook.waiting();
                self.hook.wait(self.rx.recv())
            }
        }
    }

    /// True once the end-ok item was received (everything before it may
    /// still be unread).
    pub fn is_complete(&self) -> bool {
        matches!(self.state, ReadState::Done)
    }
}

impl<H: StreamHook> Read for ChunkReader<H> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.hook.check()?;
            if !self.cur.is_empty() {
                self.hook.working()?;
                let n = out.len().min(self.cur.len());
                out[..n].copy_from_slice(&self.cur.split_to(n));
                return Ok(n);
            }
            match &self.state {
                ReadState::Done => {
                    self.hook.working()?;
                    return Ok(0);
                }
                ReadState::Failed(kind, msg) => return Err(io::Error::new(*kind, msg.clone())),
                ReadState::Open => {}
            }
            let item = match self.next_item() {
                Ok(item) => item,
                Err(e) => {
                    self.state = ReadState::Failed(e.kind(), e.to_string());
                    return Err(e);
                }
            };
            self.state = match item {
                Some(StreamItem::Chunk(b)) => {
                    self.bytes += b.len() as u64;
                    self.hook.progress();
                    self.cur = b;
                    ReadState::Open
                }
                Some(StreamItem::End(StreamEnd::Ok)) => ReadState::Done,
                Some(StreamItem::End(StreamEnd::Abort(reason))) => ReadState::Failed(
                    io::ErrorKind::ConnectionAborted,
                    format!("stream aborted by its sender: {reason}"),
                ),
                None => ReadState::Failed(
                    io::ErrorKind::UnexpectedEof,
                    "stream cut: its channel closed before the stream's end".into(),
                ),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_bounded_and_eof_needs_finish() {
        let (tx, rx) = stream_channel(64);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let writer = std::thread::spawn({
            let data = data.clone();
            move || {
                let mut w = ChunkWriter::new(tx, 1000);
                w.write_all(&data[..2500]).unwrap();
                w.write_all(&data[2500..]).unwrap();
                w.finish().unwrap();
            }
        });
        writer.join().unwrap();
        // Inspect the items before reading.
        let mut rx = rx;
        let mut items = Vec::new();
        while let Ok(item) = rx.try_recv() {
            items.push(item);
        }
        assert_eq!(items.len(), 11);
        assert!(items[..10].iter().all(|i| matches!(i, StreamItem::Chunk(b) if b.len() == 1000)));
        assert_eq!(items[10], StreamItem::End(StreamEnd::Ok));
        let (tx, rx) = stream_channel(64);
        for i in items {
            tx.try_send(i).unwrap();
        }
        let mut out = Vec::new();
        ChunkReader::new(rx).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn dropped_writer_is_an_error_not_eof() {
        let (tx, rx) = stream_channel(4);
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let r = ChunkReader::new(rx).read_to_end(&mut out);
            (r, out.len())
        });
        {
            let mut w = ChunkWriter::new(tx, 100);
            w.write_all(&[1; 350]).unwrap();
        }
        let (r, n) = reader.join().unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
        assert!(e.to_string().contains("writer dropped"), "{e}");
        assert_eq!(n, 300);
    }

    #[test]
    fn closed_channel_without_end_is_an_error() {
        let (tx, rx) = stream_channel(4);
        tx.try_send(StreamItem::Chunk(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut r = ChunkReader::new(rx);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(out, b"abc");
        // And it stays an error.
        assert!(r.read(&mut [0; 4]).is_err());
    }

    #[test]
    fn writer_fails_when_the_receiver_is_gone() {
        let (tx, rx) = stream_channel(1);
        drop(rx);
        let mut w = ChunkWriter::new(tx, 10);
        let e = w.write_all(&[0; 100]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn writer_blocks_when_the_channel_is_full() {
        let (tx, mut rx) = stream_channel(2);
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = progress.clone();
        let writer = std::thread::spawn(move || {
            let mut w = ChunkWriter::new(tx, 10);
            for _ in 0..10 {
                w.write_all(&[0; 10]).unwrap();
                p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            w.finish().unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Two chunks fit in the channel, the third write blocks in send.
        assert_eq!(progress.load(std::sync::atomic::Ordering::SeqCst), 2);
        let mut n = 0;
        while let Some(item) = rx.blocking_recv() {
            n += 1;
            if matches!(item, StreamItem::End(_)) {
                break;
            }
        }
        writer.join().unwrap();
        assert_eq!(n, 11);
    }
}
