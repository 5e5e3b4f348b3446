//! The tar streams' side of a session: blocking `Read`/`Write` adapters over
//! the stream channels of `cs-wire` that hold a slot of the global tar bound
//! only while they have work, never while they wait for the network.
//!
//! `cs-wire`'s [`cs_wire::ChunkReader`]/[`cs_wire::ChunkWriter`] have the
//! same stream semantics (EOF only after an end-ok item, a cut channel is an
//! error), but block inside without telling; these adapters first try
//! without blocking, and give their slot back before they block. So a client
//! that stalls in the middle of its stream holds no slot, and the bound
//! (`max_concurrent_tar`) limits CPU and disk work, not connections.

use std::future::Future;
use std::io::{self, Read, Write};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cs_supervision::Heartbeat;
use cs_wire::{StreamEnd, StreamItem};
use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

/// How often a blocked stream wait looks at its step's cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(100);
/// The default bound on a stream wait without progress (sessions set
/// theirs to the idle timeout).
const DEFAULT_SILENCE: Duration = Duration::from_secs(300);

/// The global bound on tar work in progress: a counting semaphore for
/// blocking threads (the engine runs there).
#[derive(Debug)]
pub struct TarSlots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl TarSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(TarSlots { max: max.max(1), used: Mutex::new(0), freed: Condvar::new() })
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Slots taken right now.
    pub fn in_use(&self) -> usize {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until a slot is free, or until `cancel` is set (then `None`).
    fn acquire(self: &Arc<Self>, cancel: &AtomicBool) -> Option<SlotGuard> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= self.max {
            if cancel.load(Ordering::Relaxed) {
                return None;
            }
            used = self.freed.wait_timeout(used, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        *used += 1;
        Some(SlotGuard { slots: self.clone() })
    }
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SlotGuard {
    slots: Arc<TarSlots>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut used = self.slots.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        self.slots.freed.notify_one();
    }
}

/// A tar step's claim on the global bound: taken while working, given back
/// while waiting for the network. Also the step's cancel flag and progress.
pub struct TarWork {
    slots: Arc<TarSlots>,
    slot: Option<SlotGuard>,
    cancel: Arc<AtomicBool>,
    heartbeat: Heartbeat,
    activity: Activity,
    /// How long one wait for the network may go without progress.
    silence: Duration,
}

impl TarWork {
    pub fn new(slots: Arc<TarSlots>, cancel: Arc<AtomicBool>, heartbeat: Heartbeat, activity: Activity) -> Self {
        TarWork { slots, slot: None, cancel, heartbeat, activity, silence: DEFAULT_SILENCE }
    }

    /// Bounds each wait for the stream's channel: no item (step 3), or no
    /// room (step 4), for this long is an error (`TimedOut`).
    pub fn with_silence_limit(mut self, silence: Duration) -> Self {
        self.silence = silence;
        self
    }

    /// Waits for `fut` (a channel operation) on this blocking thread. Never
    /// blocks for ever, whoever still holds the channel's other end: a set
    /// cancel flag (the session ended, or a new hello) is seen within
    /// `CANCEL_CHECK`, and `silence` without the channel moving is an error.
    fn wait<F: Future>(&self, fut: F) -> io::Result<F::Output> {
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
        let deadline = Instant::now() + self.silence;
        loop {
            if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return Ok(v);
            }
            self.check()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the stream did not move for {} ms: given up", self.silence.as_millis()),
                ));
            }
            std::thread::park_timeout((deadline - now).min(CANCEL_CHECK));
        }
    }

    /// Takes a slot (blocking) unless one is held already.
    pub fn working(&mut self) -> io::Result<()> {
        if self.slot.is_none() {
            self.slot = Some(self.slots.acquire(&self.cancel).ok_or_else(cancelled)?);
        }
        Ok(())
    }

    /// Gives the slot back (before waiting for the network).
    pub fn waiting(&mut self) {
        self.slot = None;
    }

    fn check(&self) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(cancelled())
        } else {
            Ok(())
        }
    }

    fn progress(&self) {
        self.heartbeat.beat();
        self.activity.touch();
    }
}

/// Not `Interrupted`: `read_exact`, `write_all` and zstd's writer retry
/// that kind, so a cancelled step would spin on it for ever (holding the
/// client's lock, and its tar slot) instead of failing.
fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "the step was cancelled (new hello, or the session ended)")
}

/// The last moment anything happened on a session (a frame either way, a
/// stream chunk processed), for the idle timeout.
#[derive(Debug, Clone)]
pub struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { origin: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Activity {
    pub fn touch(&self) {
        self.last_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }
}

enum ReadState {
    Open,
    Done,
    Failed(io::ErrorKind, String),
}

/// Step 3: `Read` from the client's stream channel. EOF only after the
/// client's end-ok frame; an abort or a cut channel is an error.
pub struct SlotReader {
    rx: mpsc::Receiver<StreamItem>,
    cur: Bytes,
    state: ReadState,
    work: TarWork,
    /// Compressed bytes received.
    pub bytes: u64,
}

impl SlotReader {
    pub fn new(rx: mpsc::Receiver<StreamItem>, work: TarWork) -> Self {
        SlotReader { rx, cur: Bytes::new(), state: ReadState::Open, work, bytes: 0 }
    }

    fn next_item(&mut self) -> io::Result<Option<StreamItem>> {
        match self.rx.try_recv() {
            Ok(item) => Ok(Some(item)),
            Err(TryRecvError::Disconnected) => Ok(None),
            Err(TryRecvError::Empty) => {
                self.work.waiting();
                // Bounded and cancellable (not `blocking_recv`): a sender
                // left open somewhere cannot keep this call for ever.
                self.work.wait(self.rx.recv())
            }
        }
    }
}

impl Read for SlotReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.work.check()?;
            if !self.cur.is_empty() {
                self.work.working()?;
                let n = out.len().min(self.cur.len());
                out[..n].copy_from_slice(&self.cur.split_to(n));
                return Ok(n);
            }
            match &self.state {
                ReadState::Done => {
                    self.work.working()?;
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
                    self.work.progress();
                    self.cur = b;
                    ReadState::Open
                }
                Some(StreamItem::End(StreamEnd::Ok)) => ReadState::Done,
                Some(StreamItem::End(StreamEnd::Abort(reason))) => ReadState::Failed(
                    io::ErrorKind::ConnectionAborted,
                    format!("the client aborted its stream: {reason}"),
                ),
                None => ReadState::Failed(
                    io::ErrorKind::UnexpectedEof,
                    "stream cut before its end (connection lost, or the step was cancelled)".into(),
                ),
            };
        }
    }
}

/// Step 4: `Write` into the stream channel the session's writer task
/// forwards to the client, in chunks of at most `max_chunk` bytes. Nothing
/// is complete before [`SlotWriter::finish`]; dropped unfinished, it ends
/// the stream as aborted.
pub struct SlotWriter {
    tx: Option<mpsc::Sender<StreamItem>>,
    buf: BytesMut,
    max_chunk: usize,
    work: TarWork,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client's connection is gone")
}

impl SlotWriter {
    pub fn new(tx: mpsc::Sender<StreamItem>, max_chunk: usize, work: TarWork) -> Self {
        let max_chunk = max_chunk.max(1);
        SlotWriter { tx: Some(tx), buf: BytesMut::with_capacity(max_chunk), max_chunk, work }
    }

    /// Takes a slot before packing starts.
    pub fn start(&mut self) -> io::Result<()> {
        self.work.working()
    }

    fn send(&mut self, item: StreamItem) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(gone()),
            Err(TrySendError::Full(item)) => {
                self.work.waiting();
                // Bounded and cancellable (not `blocking_send`): a receiver
                // left open somewhere cannot keep this call for ever.
                self.work.wait(tx.send(item))?.map_err(|_| gone())?;
                self.work.check()?;
                self.work.working()
            }
        }
    }

    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.work.check()?;
        let chunk = self.buf.split().freeze();
        self.buf.reserve(self.max_chunk);
        self.send(StreamItem::Chunk(chunk))?;
        self.work.progress();
        Ok(())
    }

    /// Sends the rest and the end-ok item: only now is the stream complete.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buf()?;
        self.send(StreamItem::End(StreamEnd::Ok))?;
        self.tx = None;
        Ok(())
    }

    /// Ends the stream as failed, with `reason`.
    pub fn abort(mut self, reason: &str) {
        self.buf.clear();
        if let Some(tx) = self.tx.take() {
            let _ = tx.try_send(StreamItem::End(StreamEnd::Abort(reason.to_owned())));
        }
    }
}

impl Write for SlotWriter {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Err(io::Error::other("write after the stream ended"));
        }
        let n = data.len();
        while !data.is_empty() {
            let take = (self.max_chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == self.max_chunk {
                self.send_buf()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

impl Drop for SlotWriter {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Never block here; a full channel is closed by dropping the
            // sender, which the forwarding task sends as an abort too.
            let _ = tx.try_send(StreamItem::End(StreamEnd::Abort("the project side failed while packing".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(slots: &Arc<TarSlots>) -> TarWork {
        TarWork::new(slots.clone(), Arc::new(AtomicBool::new(false)), Heartbeat::new(), Activity::default())
    }

    #[test]
    fn a_reader_waiting_for_data_holds_no_slot() {
        let slots = TarSlots::new(1);
        let (tx, rx) = cs_wire::stream_channel(4);
        let reader = std::thread::spawn({
            let w = work(&slots);
            move || {
                let mut out = Vec::new();
                SlotReader::new(rx, w).read_to_end(&mut out).map(|_| out)
            }
        });
        tx.blocking_send(StreamItem::Chunk(Bytes::from_static(b"abc"))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // The reader consumed the chunk and waits: the slot is free for others.
        assert_eq!(slots.in_use(), 0);
        let mut other = work(&slots);
        other.working().unwrap();
        assert_eq!(slots.in_use(), 1);
        drop(other);
        tx.blocking_send(StreamItem::End(StreamEnd::Ok)).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), b"abc");
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn a_cut_stream_is_an_error() {
        let slots = TarSlots::new(1);
        let (tx, rx) = cs_wire::stream_channel(4);
        tx.try_send(StreamItem::Chunk(Bytes::from_static(b"abc"))).unwrap();
        drop(tx);
        let mut out = Vec::new();
        let e = SlotReader::new(rx, work(&slots)).read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_writer_blocked_on_the_network_holds_no_slot() {
        let slots = TarSlots::new(1);
        let (tx, mut rx) = cs_wire::stream_channel(1);
        let writer = std::thread::spawn({
            let w = work(&slots);
            move || {
                let mut sw = SlotWriter::new(tx, 4, w);
                sw.start()?;
                sw.write_all(b"0123456789ab")?;
                sw.finish()
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(slots.in_use(), 0, "blocked on a full channel, the slot is given back");
        let mut got = Vec::new();
        while let Some(item) = rx.blocking_recv() {
            match item {
                StreamItem::Chunk(b) => got.extend_from_slice(&b),
                StreamItem::End(e) => {
                    assert_eq!(e, StreamEnd::Ok);
                    break;
                }
            }
        }
        writer.join().unwrap().unwrap();
        assert_eq!(got, b"0123456789ab");
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn cancel_ends_a_reader_waiting_on_a_channel_still_open() {
        let slots = TarSlots::new(1);
        let (tx, rx) = cs_wire::stream_channel(4);
        let cancel = Arc::new(AtomicBool::new(false));
        let w = TarWork::new(slots.clone(), cancel.clone(), Heartbeat::new(), Activity::default());
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            // `read_to_end` retries `Interrupted`: the cancel must be another kind.
            SlotReader::new(rx, w).read_to_end(&mut out).unwrap_err()
        });
        tx.blocking_send(StreamItem::Chunk(Bytes::from_static(b"abc"))).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        cancel.store(true, Ordering::Relaxed);
        let e = t.join().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(slots.in_use(), 0);
        drop(tx);
    }

    #[test]
    fn a_silent_channel_ends_a_reader_and_a_writer() {
        let slots = TarSlots::new(2);
        let (_tx, rx) = cs_wire::stream_channel(4);
        let w = work(&slots).with_silence_limit(Duration::from_millis(200));
        let mut out = Vec::new();
        let e = SlotReader::new(rx, w).read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (tx, _rx) = cs_wire::stream_channel(1);
        let mut sw = SlotWriter::new(tx, 4, work(&slots).with_silence_limit(Duration::from_millis(200)));
        sw.start().unwrap();
        let e = sw.write_all(b"0123456789ab").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(sw);
        assert_eq!(slots.in_use(), 0);
    }

    #[test]
    fn cancel_ends_a_writer_blocked_on_a_channel_still_open() {
        let slots = TarSlots::new(1);
        let (tx, rx) = cs_wire::stream_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let w = TarWork::new(slots.clone(), cancel.clone(), Heartbeat::new(), Activity::default());
        let t = std::thread::spawn(move || {
            let mut sw = SlotWriter::new(tx, 4, w);
            sw.start().unwrap();
            // `write_all` retries `Interrupted`: the cancel must be another kind.
            // (So does zstd's writer, which the packer writes through.)
            sw.write_all(&[7u8; 1 << 16]).unwrap_err()
        });
        std::thread::sleep(Duration::from_millis(100));
        cancel.store(true, Ordering::Relaxed);
        let e = t.join().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(slots.in_use(), 0);
        drop(rx);
    }

    #[test]
    fn cancel_stops_a_wait_for_a_slot() {
        let slots = TarSlots::new(1);
        let mut holder = work(&slots);
        holder.working().unwrap();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut waiter = TarWork::new(slots.clone(), cancel.clone(), Heartbeat::new(), Activity::default());
        let t = std::thread::spawn(move || waiter.working().is_err());
        std::thread::sleep(Duration::from_millis(50));
        cancel.store(true, Ordering::Relaxed);
        assert!(t.join().unwrap());
    }
}
