//! Progress of an actor's long work, shared with whoever watches it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Progress counter and busy flag shared between an actor and its watchdog.
/// Clones share the same counters; the watchdog reads them without asking
/// the actor (an actor that is stuck may not answer messages).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    beats: AtomicU64,
    /// Milliseconds since `started` at the last beat.
    last_beat_ms: AtomicU64,
    /// How many long operations are in progress (nested or concurrent).
    busy: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            inner: Arc::new(Inner {
                started: Instant::now(),
                beats: AtomicU64::new(0),
                last_beat_ms: AtomicU64::new(0),
                busy: AtomicU64::new(0),
            }),
        }
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one unit of progress.
    pub fn beat(&self) {
        self.inner.beats.fetch_add(1, Ordering::Relaxed);
        self.inner.last_beat_ms.store(self.inner.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn beats(&self) -> u64 {
        self.inner.beats.load(Ordering::Relaxed)
    }

    /// Time since the last beat (or since creation, if none yet).
    pub fn since_last(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_beat_ms.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }

    /// Marks a long operation as in progress until the guard drops. Starting
    /// counts as progress, so an operation is not stuck the moment it begins.
    pub fn busy(&self) -> BusyGuard {
        self.inner.busy.fetch_add(1, Ordering::Relaxed);
        self.beat();
        BusyGuard { heartbeat: self.clone() }
    }

    pub fn is_busy(&self) -> bool {
        self.inner.busy.load(Ordering::Relaxed) > 0
    }

    /// Busy and silent for longer than `stuck_after`: stuck.
    pub fn health(&self, stuck_after: Duration) -> Health {
        let silent = self.since_last();
        match (self.is_busy(), silent > stuck_after) {
            (false, _) => Health::Idle,
            (true, false) => Health::Busy,
            (true, true) => Health::Stuck { silent_ms: silent.as_millis() as u64 },
        }
    }

    /// How many clones of this heartbeat exist (the watchdog forgets one
    /// that only it still holds: its actor is gone).
    pub(crate) fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

/// See [`Heartbeat::busy`]. Ending the operation counts as progress too.
#[derive(Debug)]
#[must_use = "the operation counts as busy only while the guard lives"]
pub struct BusyGuard {
    heartbeat: Heartbeat,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.heartbeat.beat();
        self.heartbeat.inner.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a watchdog concludes from a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Health {
    Idle,
    Busy,
    Stuck { silent_ms: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_tells_idle_busy_and_stuck_apart() {
        let hb = Heartbeat::new();
        std::thread::sleep(Duration::from_millis(20));
        // Silent but not busy: idle, however long.
        assert_eq!(hb.health(Duration::from_millis(5)), Health::Idle);
        let guard = hb.busy();
        assert_eq!(hb.health(Duration::from_secs(60)), Health::Busy);
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(hb.health(Duration::from_millis(5)), Health::Stuck { silent_ms } if silent_ms >= 5));
        // Progress makes it busy again.
        hb.beat();
        assert_eq!(hb.health(Duration::from_millis(5)), Health::Busy);
        drop(guard);
        assert_eq!(hb.health(Duration::ZERO), Health::Idle);
        assert_eq!(hb.beats(), 3);
    }

    #[test]
    fn nested_operations_stay_busy_until_the_last_ends() {
        let hb = Heartbeat::new();
        let a = hb.busy();
        let b = hb.clone().busy();
        drop(a);
        assert!(hb.is_busy());
        drop(b);
        assert!(!hb.is_busy());
    }
}
