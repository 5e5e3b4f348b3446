//! The tar streams' side of a session: `cs-wire`'s bridges
//! ([`cs_wire::ChunkReader`]/[`cs_wire::ChunkWriter`]) with [`TarWork`] as
//! their hook, which holds a slot of the global tar bound only while they
//! have work, never while they wait for the network, and bounds every wait
//! (cancel flag, silence limit). So a client that stalls in the middle of
//! its stream holds no slot, and the bound (`max_concurrent_tar`) limits CPU
//! and disk work, not connections.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cs_supervision::Heartbeat;
use cs_wire::{ChunkReader, ChunkWriter, StreamHook};

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
}

impl StreamHook for TarWork {
    /// Takes a slot (blocking, cancellable) unless one is held already.
    fn working(&mut self) -> io::Result<()> {
        if self.slot.is_none() {
            self.slot = Some(self.slots.acquire(&self.cancel).ok_or_else(cancelled)?);
        }
        Ok(())
    }

    /// Gives the slot back (before waiting for the network).
    fn waiting(&mut self) {
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

    /// Never blocks for ever, whoever still holds the channel's other end: a
    /// set cancel flag (the session ended, or a new hello) is seen within
    /// `CANCEL_CHECK`, and `silence` without the channel moving is an error.
    fn wait<F: Future>(&mut self, fut: F) -> io::Result<F::Output> {
        let deadline = Instant::now() + self.silence;
        cs_wire::park_on(fut, || {
            self.check()?;
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the stream did not move for {} ms: given up", self.silence.as_millis()),
                ));
            }
            Ok((deadline - now).min(CANCEL_CHECK))
        })
    }

    fn unfinished_reason(&self) -> &str {
        "the project side failed while packing"
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

/// Step 3: `Read` from the client's stream channel, holding a slot only
/// while it has data to hand out.
pub type SlotReader = ChunkReader<TarWork>;

/// Step 4: `Write` into the stream channel the session's writer task
/// forwards to the client, holding a slot only while it packs.
pub type SlotWriter = ChunkWriter<TarWork>;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cs_wire::{StreamEnd, StreamItem};
    use std::io::{Read, Write};

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
                SlotReader::with_hook(rx, w).read_to_end(&mut out).map(|_| out)
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
        let e = SlotReader::with_hook(rx, work(&slots)).read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_writer_blocked_on_the_network_holds_no_slot() {
        let slots = TarSlots::new(1);
        let (tx, mut rx) = cs_wire::stream_channel(1);
        let writer = std::thread::spawn({
            let w = work(&slots);
            move || {
                let mut sw = SlotWriter::with_hook(tx, 4, w);
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
            SlotReader::with_hook(rx, w).read_to_end(&mut out).unwrap_err()
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
        let e = SlotReader::with_hook(rx, w).read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (tx, _rx) = cs_wire::stream_channel(1);
        let mut sw = SlotWriter::with_hook(tx, 4, work(&slots).with_silence_limit(Duration::from_millis(200)));
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
            let mut sw = SlotWriter::with_hook(tx, 4, w);
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
