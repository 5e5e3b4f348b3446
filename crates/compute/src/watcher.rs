//! The upper-layer watcher: filesystem events on the upper layer, debounced
//! into one "upper changed" trigger for the coordinator, so that a burst of
//! writes (a `git clone`, a build) starts one early round, not thousands.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_supervision::Observable;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;

use crate::coordinator::{Coordinator, TriggerRound};
use crate::machine::Trigger;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherState {
    pub watching: Option<String>,
    /// Events since the last trigger was sent (local changes not yet offered to a round).
    pub pending_events: u64,
    pub events_total: u64,
    pub triggers_sent: u64,
    pub last_error: Option<String>,
}

pub struct UpperWatcher {
    upper: PathBuf,
    debounce: Duration,
    coordinator: Addr<Coordinator>,
    watcher: Option<notify::RecommendedWatcher>,
    first_pending: Option<Instant>,
    state: WatcherState,
}

impl UpperWatcher {
    pub fn new(upper: PathBuf, debounce: Duration, coordinator: Addr<Coordinator>) -> Self {
        UpperWatcher {
            upper,
            debounce,
            coordinator,
            watcher: None,
            first_pending: None,
            state: WatcherState::default(),
        }
    }
}

/// One or more raw events arrived.
#[derive(Message)]
#[rtype(result = "()")]
struct Changed(usize);

impl Actor for UpperWatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let addr = ctx.address();
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Opens and reads are not changes; the round's own scan
                // opens every directory, which would start the next round.
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                // Our own temporary files come and go inside every apply.
                let ours = ev
                    .paths
                    .iter()
                    .all(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".csa-tmp-")));
                if !ours {
                    // try_send: a full mailbox already means "changed".
                    let _ = addr.try_send(Changed(1));
                }
            }
        };
        match notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&self.upper, RecursiveMode::Recursive)?;
            Ok(w)
        }) {
            Ok(w) => {
                self.watcher = Some(w);
                self.state.watching = Some(self.upper.display().to_string());
            }
            Err(e) => {
                // Rounds still run on the timer; say why they are not early.
                self.state.last_error = Some(format!("cannot watch {}: {e}", self.upper.display()));
                tracing::warn!(error = %e, upper = %self.upper.display(), "upper-layer watcher off; timer rounds only");
            }
        }
    }
}

impl Handler<Changed> for UpperWatcher {
    type Result = ();
    fn handle(&mut self, m: Changed, ctx: &mut Self::Context) {
        self.state.pending_events += m.0 as u64;
        self.state.events_total += m.0 as u64;
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
            ctx.run_later(self.debounce, |act, _| {
                act.first_pending = None;
                act.state.pending_events = 0;
                // `try_send`: a trigger coalesces. If the coordinator's
                // mailbox is full, a trigger is already queued or a round
                // is about to run and will see these changes (and the
                // periodic round catches anything else): dropping is right,
                // waiting would only pile up triggers.
                match act.coordinator.try_send(TriggerRound(Trigger::UpperChanged)) {
                    Ok(()) => act.state.triggers_sent += 1,
                    Err(e) => tracing::debug!("round trigger dropped (coalesced): {e}"),
                }
            });
        }
    }
}

impl Observable for UpperWatcher {
    type State = WatcherState;
    fn observe(&self) -> WatcherState {
        self.state.clone()
    }
}
cs_supervision::observable!(UpperWatcher);
