//! Progress of the step in flight (or the last one), readable from another thread while the
//! step runs: entries and file bytes done, and the totals where the step
//! knows them up front (step 3 from the scan; step 4 does not: the project
//! announces no count before its stream).
//!
//! The counters are atomics bumped by the engine as it reads file bytes, so
//! a single large file moves the count as it streams, not only when done.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Shared handle: the engine counts, an observer takes [`snapshot`](Self::snapshot)s.
#[derive(Clone, Default)]
pub struct Progress(Arc<Inner>);

#[derive(Default)]
struct Inner {
    entries: AtomicU64,
    bytes: AtomicU64,
    step: Mutex<Option<StepHead>>,
}

/// What a step knows when it starts.
#[derive(Clone, Copy)]
struct StepHead {
    step: u8,
    entries_total: Option<u64>,
    bytes_total: Option<u64>,
    started: Instant,
    /// When the engine was done with the step (its stream may still be on the way).
    ended: Option<Instant>,
}

/// One reading of the step in flight (the `progress` section of the status).
/// Read back from status JSON by the CLI (`cs-actor sync --wait`, `status`): a field an older
/// service does not send reads as nothing done yet, still streaming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressSnapshot {
    /// The step's number in the contract (3: writes to the project, 4: writes from it).
    pub step: u8,
    #[serde(default)]
    pub entries_done: u64,
    #[serde(default)]
    pub entries_total: Option<u64>,
    /// File content bytes (uncompressed) read so far.
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: Option<u64>,
    /// Since the step started, until the engine was done with it.
    #[serde(default)]
    pub elapsed_ms: u64,
    /// False once the engine is done with the step: the counts are final (the other side may
    /// still be receiving or applying).
    #[serde(default = "still_streaming")]
    pub streaming: bool,
}

fn still_streaming() -> bool {
    true
}

impl ProgressSnapshot {
    /// Bytes per second over the step so far.
    pub fn rate(&self) -> f64 {
        self.bytes_done as f64 * 1000.0 / self.elapsed_ms.max(1) as f64
    }

    /// Seconds left at the rate so far, when the total is known.
    pub fn eta_secs(&self) -> Option<u64> {
        let left = self.bytes_total?.saturating_sub(self.bytes_done);
        let rate = self.rate();
        (rate > 0.0).then(|| (left as f64 / rate).ceil() as u64)
    }
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    /// A step starts: counters back to zero.
    pub fn begin(&self, step: u8, entries_total: Option<u64>, bytes_total: Option<u64>) {
        self.0.entries.store(0, Ordering::Relaxed);
        self.0.bytes.store(0, Ordering::Relaxed);
        *self.head() = Some(StepHead { step, entries_total, bytes_total, started: Instant::now(), ended: None });
    }

    /// The engine is done with the step (whichever way): the counts stay, final, until the
    /// next step begins.
    pub fn end(&self) {
        if let Some(head) = self.head().as_mut() {
            head.ended.get_or_insert_with(Instant::now);
        }
    }

    pub fn entry_done(&self) {
        self.0.entries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// `r`, counting every byte read from it.
    pub fn counting<R: Read>(&self, r: R) -> Counting<'_, R> {
        Counting { inner: r, progress: self }
    }

    /// The step in flight, if any.
    pub fn snapshot(&self) -> Option<ProgressSnapshot> {
        let head = (*self.head())?;
        Some(ProgressSnapshot {
            step: head.step,
            entries_done: self.0.entries.load(Ordering::Relaxed),
            entries_total: head.entries_total,
            bytes_done: self.0.bytes.load(Ordering::Relaxed),
            bytes_total: head.bytes_total,
            elapsed_ms: head.ended.unwrap_or_else(Instant::now).duration_since(head.started).as_millis() as u64,
            streaming: head.ended.is_none(),
        })
    }

    fn head(&self) -> std::sync::MutexGuard<'_, Option<StepHead>> {
        self.0.step.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A reader that adds what it reads to a [`Progress`].
pub struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_as_they_are_read_and_resets_per_step() {
        let p = Progress::new();
        assert_eq!(p.snapshot(), None);
        p.begin(3, Some(2), Some(10));
        let mut sink = Vec::new();
        p.counting(&b"hello"[..]).read_to_end(&mut sink).unwrap();
        p.entry_done();
        let s = p.snapshot().unwrap();
        assert_eq!(
            (s.step, s.entries_done, s.entries_total, s.bytes_done, s.bytes_total),
            (3, 1, Some(2), 5, Some(10))
        );
        p.begin(4, None, None);
        let s = p.snapshot().unwrap();
        assert_eq!((s.step, s.entries_done, s.bytes_done, s.bytes_total, s.streaming), (4, 0, 0, None, true));
        p.add_bytes(7);
        p.end();
        let s = p.snapshot().unwrap();
        assert_eq!((s.step, s.bytes_done, s.streaming), (4, 7, false));
        // Ended, the elapsed time stops.
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(p.snapshot().unwrap().elapsed_ms, s.elapsed_ms);
    }
}
