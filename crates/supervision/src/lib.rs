//! The conventions every cs-actor actor follows, after quickwit's
//! `quickwit-actors`, on actix:
//!
//! - **Observable state.** Each actor defines a `Clone + Serialize` state
//!   struct and answers an `Observe` message (its own, typed) with a snapshot
//!   of it. That snapshot is exactly what `cs-actor status` prints and what
//!   tests assert on; nothing else about an actor's insides is public.
//! - **Bounded mailbox.** Each actor sets its mailbox capacity in `started`
//!   (`ctx.set_mailbox_capacity(MAILBOX_CAPACITY)`), so a flood of messages
//!   applies backpressure to senders instead of growing memory.
//! - **Heartbeat.** An actor doing long work records progress on its
//!   [`Heartbeat`] (every entry packed, every file applied). A supervisor
//!   compares heartbeats over time to tell *busy* (progress) from *stuck*.
//! - **Backoff.** An actor retrying after failures waits by [`Backoff`] (one doubling rule,
//!   one jitter rule).
//! - **Exit status.** An actor that stops says why, with an [`ExitStatus`]
//!   kept in its observable state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use actix;
pub use backoff::Backoff;

pub mod backoff;

/// Mailbox capacity of every actor unless it has a reason for another.
pub const MAILBOX_CAPACITY: usize = 64;

/// Why an actor stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "reason", rename_all = "snake_case")]
pub enum ExitStatus {
    /// Its work is done (e.g. a session whose client said goodbye).
    Success,
    /// Asked to stop (shutdown).
    Quit,
    /// Stopped on an error, with the reason.
    Failure(String),
}

/// Progress counter shared between an actor and whoever watches it.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    beats: Arc<AtomicU64>,
    started: Instant,
    last_beat_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            beats: Arc::new(AtomicU64::new(0)),
            started: Instant::now(),
            last_beat_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Heartbeat {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one unit of progress.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
        self.last_beat_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Time since the last beat (or since creation, if none yet).
    pub fn since_last(&self) -> Duration {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Busy actors that have not beaten for `stuck_after` are stuck.
    pub fn health(&self, busy: bool, stuck_after: Duration) -> Health {
        match (busy, self.since_last() > stuck_after) {
            (false, _) => Health::Idle,
            (true, false) => Health::Busy,
            (true, true) => Health::Stuck { silent_ms: self.since_last().as_millis() as u64 },
        }
    }
}

/// What a supervisor concludes from a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Health {
    Idle,
    Busy,
    Stuck { silent_ms: u64 },
}

/// `e` and its sources as one line, "outer: inner: innermost", for the
/// logs, the status and the error messages sent to the peer. A source whose
/// text the outer message already holds (thiserror's `{0}` with `#[from]`)
/// is not repeated. Without this, "write_temp ... failed" loses the
/// "No space left on device" that says what to do.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_tells_busy_from_stuck() {
        let hb = Heartbeat::new();
        assert_eq!(hb.health(false, Duration::ZERO), Health::Idle);
        hb.beat();
        assert_eq!(hb.health(true, Duration::from_secs(60)), Health::Busy);
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(hb.health(true, Duration::from_millis(5)), Health::Stuck { silent_ms } if silent_ms >= 5));
        assert_eq!(hb.beats(), 1);
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("write {0:?} failed")]
        Io(String, #[source] std::io::Error),
        #[error("tar stream: {0}")]
        Wrapped(#[from] Box<Outer>),
    }

    #[test]
    fn error_chain_keeps_the_root_cause_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let inner = Outer::Io("f".into(), io);
        assert_eq!(error_chain(&inner), format!("write \"f\" failed: {}", std::io::Error::from_raw_os_error(28)));
        let outer = Outer::Wrapped(Box::new(inner));
        let text = error_chain(&outer);
        assert!(text.starts_with("tar stream: write \"f\" failed: No space left on device"), "{text}");
        assert_eq!(text.matches("write").count(), 1, "{text}");
    }
}
