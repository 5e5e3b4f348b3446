//! The conventions every cs-actor actor follows, after quickwit's
//! `quickwit-actors` and Alice Ryhl's "Actors with Tokio", on actix. They
//! are code, not prose:
//!
//! - **Observable state** ([`observe`]). Each actor implements
//!   [`Observable`]: a `Clone + Serialize` state and a snapshot of it. The
//!   one generic message [`Observe<A>`] asks for it ([`observable!`] writes
//!   the handler, [`ObserveExt::observe`] sends it). That snapshot is exactly
//!   what `cs-actor status` prints and what tests assert on.
//! - **Bounded mailbox.** Actors are started with [`spawn`] (or
//!   [`spawn_with`]), which sets the mailbox capacity ([`MAILBOX_CAPACITY`]
//!   unless the actor says otherwise), so a flood of messages sent with
//!   `send().await` or `try_send` applies backpressure instead of growing
//!   memory. `do_send` ignores the bound: product code uses it only where
//!   the number of messages is bounded by construction (said at the call).
//! - **Heartbeat** ([`heartbeat`]). An actor doing long work marks itself
//!   busy ([`Heartbeat::busy`]) and records progress with
//!   [`Heartbeat::beat`] (every step, every entry).
//! - **Watchdog** ([`watchdog`]). Each service registers its actors'
//!   heartbeats with a [`Watchdog`], which tells *idle*, *busy* (progress)
//!   and *stuck* (busy, no progress for longer than its threshold) apart,
//!   logs when an actor gets stuck or recovers, and is shown by
//!   `cs-actor status`.
//! - **Backoff.** An actor retrying after failures waits by [`Backoff`] (one doubling rule,
//!   one jitter rule).
//! - **Exit status.** An actor that stops says why, with an [`ExitStatus`]
//!   kept in its observable state.

pub mod heartbeat;
pub mod observe;
pub mod watchdog;

pub use heartbeat::{Health, Heartbeat};
pub use observe::{spawn, spawn_with, Observable, Observe, ObserveExt};
pub use watchdog::{ActorHealth, Watchdog, WatchdogReport, DEFAULT_STUCK_AFTER, STUCK_AFTER_ENV};

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
