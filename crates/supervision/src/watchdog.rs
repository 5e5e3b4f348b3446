//! The watchdog: reads the heartbeats of a service's actors and tells idle,
//! busy and stuck apart (after quickwit's supervisor).
//!
//! An actor is *stuck* when it is busy (in a long operation) and its
//! heartbeat has not moved for longer than `stuck_after`. The watchdog does
//! not ask the actor (a stuck actor may not answer): it reads the shared
//! heartbeat. [`Watchdog::report`] is what `cs-actor status` shows;
//! [`Watchdog::spawn_monitor`] checks periodically and logs when an actor
//! gets stuck and when it recovers. Nothing is restarted: a stuck actor is
//! usually waiting on the disk or on a peer, and restarting would abandon
//! work; the operator decides (docs/operations.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::heartbeat::{Health, Heartbeat};

/// How long a busy actor may go without progress before it is stuck, unless
/// [`STUCK_AFTER_ENV`] says otherwise. Long enough for one slow step on a
/// slow disk or link (each step and each packed or applied entry beats).
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(120);

/// Environment variable overriding [`DEFAULT_STUCK_AFTER`], in seconds
/// (fractions allowed), e.g. `CS_STUCK_AFTER=30`.
pub const STUCK_AFTER_ENV: &str = "CS_STUCK_AFTER";

/// The heartbeats of one service's actors, by name.
#[derive(Debug, Clone)]
pub struct Watchdog {
    stuck_after: Duration,
    watched: Arc<Mutex<Vec<(String, Heartbeat)>>>,
}

/// One actor's health, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorHealth {
    /// `idle`, `busy` or `stuck`.
    pub health: &'static str,
    /// Time since its last progress.
    pub silent_ms: u64,
    pub beats: u64,
}

/// What the watchdog concluded, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchdogReport {
    pub stuck_after_ms: u64,
    /// Names of the stuck actors (empty when all is well).
    pub stuck: Vec<String>,
    pub actors: BTreeMap<String, ActorHealth>,
}

impl Watchdog {
    pub fn new(stuck_after: Duration) -> Self {
        Watchdog { stuck_after, watched: Arc::default() }
    }

    /// The threshold from [`STUCK_AFTER_ENV`], else [`DEFAULT_STUCK_AFTER`].
    pub fn from_env() -> Self {
        Self::new(stuck_after_from(std::env::var(STUCK_AFTER_ENV).ok().as_deref()))
    }

    pub fn stuck_after(&self) -> Duration {
        self.stuck_after
    }

    /// Watches `heartbeat` under `name` until only the watchdog holds it
    /// (its actor is gone). A name watched again replaces the old entry.
    pub fn watch(&self, name: impl Into<String>, heartbeat: Heartbeat) {
        let name = name.into();
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(n, _)| *n != name);
        w.push((name, heartbeat));
    }

    /// The health of every watched actor now.
    pub fn report(&self) -> WatchdogReport {
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|(_, hb)| hb.holders() > 1);
        let actors: BTreeMap<String, ActorHealth> = w
            .iter()
            .map(|(name, hb)| {
                let (health, silent_ms) = match hb.health(self.stuck_after) {
                    Health::Idle => ("idle", hb.since_last().as_millis() as u64),
                    Health::Busy => ("busy", hb.since_last().as_millis() as u64),
                    Health::Stuck { silent_ms } => ("stuck", silent_ms),
                };
                (name.clone(), ActorHealth { health, silent_ms, beats: hb.beats() })
            })
            .collect();
        let stuck = actors.iter().filter(|(_, a)| a.health == "stuck").map(|(n, _)| n.clone()).collect();
        WatchdogReport { stuck_after_ms: self.stuck_after.as_millis() as u64, stuck, actors }
    }

    /// Checks every `every` (on the current tokio runtime) and logs each
    /// actor that gets stuck (a warning, once) and each that recovers.
    pub fn spawn_monitor(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut stuck: Vec<String> = Vec::new();
            loop {
                tokio::time::sleep(every).await;
                let report = me.report();
                for name in report.stuck.iter().filter(|n| !stuck.contains(n)) {
                    let silent_ms = report.actors.get(name).map(|a| a.silent_ms).unwrap_or(0);
                    tracing::warn!(actor = %name, silent_ms, "actor stuck: busy without progress");
                }
                for name in stuck.iter().filter(|n| !report.stuck.contains(n)) {
                    tracing::info!(actor = %name, "actor no longer stuck");
                }
                stuck = report.stuck;
            }
        })
    }
}

fn stuck_after_from(value: Option<&str>) -> Duration {
    value
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(DEFAULT_STUCK_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_idle_busy_stuck_and_recovery() {
        let dog = Watchdog::new(Duration::from_millis(30));
        let (idle, working, hung) = (Heartbeat::new(), Heartbeat::new(), Heartbeat::new());
        dog.watch("idle", idle.clone());
        dog.watch("working", working.clone());
        dog.watch("hung", hung.clone());
        let _w = working.busy();
        let h = hung.busy();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(10));
            working.beat();
        }
        let r = dog.report();
        assert_eq!(r.actors["idle"].health, "idle");
        assert_eq!(r.actors["working"].health, "busy");
        assert_eq!(r.actors["hung"].health, "stuck");
        assert!(r.actors["hung"].silent_ms >= 30, "{r:?}");
        assert_eq!(r.stuck, vec!["hung".to_string()]);
        assert_eq!(r.stuck_after_ms, 30);
        // It resumes: progress, then the operation ends.
        hung.beat();
        assert_eq!(dog.report().actors["hung"].health, "busy");
        drop(h);
        assert_eq!(dog.report().actors["hung"].health, "idle");
        assert!(dog.report().stuck.is_empty());
    }

    #[test]
    fn forgets_actors_that_are_gone() {
        let dog = Watchdog::new(DEFAULT_STUCK_AFTER);
        let hb = Heartbeat::new();
        dog.watch("session a", hb.clone());
        assert!(dog.report().actors.contains_key("session a"));
        drop(hb);
        assert!(dog.report().actors.is_empty());
    }

    #[test]
    fn threshold_from_the_environment_value() {
        assert_eq!(stuck_after_from(None), DEFAULT_STUCK_AFTER);
        assert_eq!(stuck_after_from(Some("1.5")), Duration::from_millis(1500));
        assert_eq!(stuck_after_from(Some("0")), DEFAULT_STUCK_AFTER);
        assert_eq!(stuck_after_from(Some("soon")), DEFAULT_STUCK_AFTER);
    }
}
