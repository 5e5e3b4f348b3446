//! The upper-layer watcher: filesystem events on the upper layer, debounced
//! into one "upper changed" trigger for the coordinator, so that a burst of
//! writes (a `git clone`, a build) starts one early round, not thousands.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_supervision::Observable;
use notify::event::{ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;

use crate::coordinator::{Coordinator, TriggerRound};
use crate::machine::Trigger;

#[derive(Debug, Clone, Default, Serialize)]
pub struct WatcherState {
    pub watching: Option<String>,
    /// Events since the last round started: changes no round has scanned yet (a round's
    /// own writes into the upper layer are not counted).
    pub pending_events: u64,
    pub events_total: u64,
    pub triggers_sent: u64,
    pub last_error: Option<String>,
}

/// Upper-layer change events seen, and how many of them rounds have taken: the watcher
/// counts, the coordinator marks all seen so far as taken when a round starts (its scan
/// sees them). Shared, so that "pending" never counts what a round already took.
#[derive(Debug, Clone, Default)]
pub struct ChangeCount(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    seen: AtomicU64,
    taken: AtomicU64,
}

impl ChangeCount {
    pub fn add(&self, n: u64) {
        self.0.seen.fetch_add(n, Ordering::Relaxed);
    }

    /// A round starts: everything seen so far is its to carry.
    pub fn take(&self) {
        self.0.taken.store(self.0.seen.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub fn seen(&self) -> u64 {
        self.0.seen.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> u64 {
        self.seen().saturating_sub(self.0.taken.load(Ordering::Relaxed))
    }
}

/// Recognises the events of a round's own writes into the upper layer: the engine writes a
/// temporary `.csa-tmp-*` file and renames it into place, so the rename's arrival under the
/// real name (`To`, matched to its `From` by the inotify cookie) is ours too.
#[derive(Default)]
struct OwnWrites {
    /// Cookies of renames away from a temporary name, newest last (bounded).
    cookies: VecDeque<usize>,
}

impl OwnWrites {
    const KEEP: usize = 256;

    fn is_ours(&mut self, ev: &notify::Event) -> bool {
        let tmp = |p: &Path| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(".csa-tmp-"));
        match ev.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) if ev.paths.iter().all(|p| tmp(p)) => {
                if let Some(c) = ev.attrs.tracker() {
                    if self.cookies.len() == Self::KEEP {
                        self.cookies.pop_front();
                    }
                    self.cookies.push_back(c);
                }
                true
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                match ev.attrs.tracker().and_then(|c| self.cookies.iter().position(|&k| k == c)) {
                    Some(i) => {
                        self.cookies.remove(i);
                        true
                    }
                    None => false,
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => ev.paths.first().is_some_and(|p| tmp(p)),
            _ => ev.paths.iter().all(|p| tmp(p)),
        }
    }
}

pub struct UpperWatcher {
    upper: PathBuf,
    debounce: Duration,
    coordinator: Addr<Coordinator>,
    changes: ChangeCount,
    watcher: Option<notify::RecommendedWatcher>,
    first_pending: Option<Instant>,
    state: WatcherState,
}

impl UpperWatcher {
    /// `changes` is shared with the coordinator (`Coordinator::with_change_count`).
    pub fn new(upper: PathBuf, debounce: Duration, coordinator: Addr<Coordinator>, changes: ChangeCount) -> Self {
        UpperWatcher {
            upper,
            debounce,
            coordinator,
            changes,
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
        let mut own = OwnWrites::default();
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                // Opens and reads are not changes; the round's own scan
                // opens every directory, which would start the next round.
                if matches!(ev.kind, notify::EventKind::Access(_)) {
                    return;
                }
                // A round's own writes (temporary files, renamed into place) are not changes
                // to carry: counting them would start a round for nothing.
                if !own.is_ours(&ev) {
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
        self.changes.add(m.0 as u64);
        if self.first_pending.is_none() {
            self.first_pending = Some(Instant::now());
            ctx.run_later(self.debounce, |act, _| {
                act.first_pending = None;
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
        WatcherState { pending_events: self.changes.pending(), events_total: self.changes.seen(), ..self.state.clone() }
    }
}
cs_supervision::observable!(UpperWatcher);

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, EventAttributes};

    fn ev(kind: EventKind, paths: &[&str], cookie: Option<usize>) -> notify::Event {
        let mut e =
            notify::Event { kind, paths: paths.iter().map(PathBuf::from).collect(), attrs: EventAttributes::new() };
        if let Some(c) = cookie {
            e = e.set_tracker(c);
        }
        e
    }

    #[test]
    fn a_rounds_rename_into_place_is_its_own_but_a_users_rename_is_not() {
        let mut own = OwnWrites::default();
        let rename = |m| EventKind::Modify(ModifyKind::Name(m));
        assert!(own.is_ours(&ev(EventKind::Create(CreateKind::File), &["/u/d/.csa-tmp-gpu-1-7-0"], None)));
        assert!(own.is_ours(&ev(rename(RenameMode::From), &["/u/d/.csa-tmp-gpu-1-7-0"], Some(9))));
        assert!(own.is_ours(&ev(rename(RenameMode::To), &["/u/d/out.txt"], Some(9))));
        assert!(own.is_ours(&ev(rename(RenameMode::Both), &["/u/d/.csa-tmp-gpu-1-7-0", "/u/d/out.txt"], Some(9))));
        // The user's own rename, and a write to the same name afterwards, are changes.
        assert!(!own.is_ours(&ev(rename(RenameMode::From), &["/u/d/a"], Some(10))));
        assert!(!own.is_ours(&ev(rename(RenameMode::To), &["/u/d/b"], Some(10))));
        assert!(!own.is_ours(&ev(rename(RenameMode::To), &["/u/d/out.txt"], Some(9))), "a cookie matches once");
        assert!(!own.is_ours(&ev(EventKind::Create(CreateKind::File), &["/u/d/out.txt"], None)));
    }

    #[test]
    fn pending_counts_only_what_no_round_has_taken() {
        let c = ChangeCount::default();
        c.add(8);
        assert_eq!(c.pending(), 8);
        c.take();
        assert_eq!((c.pending(), c.seen()), (0, 8));
        c.add(2);
        assert_eq!(c.pending(), 2);
    }
}
