//! Follow (docs/protocol.md, *Follow*): a client whose hello asked `follow`
//! is told of the project's changes between its rounds with an unsolicited
//! `ServerMsg::ProjectChanged`, so that it starts a round at once rather
//! than at its next timer round.
//!
//! Only while no round of the client runs: a round carries what changed
//! before its step 4 anyway, and news found mid-round would only make the
//! client run another round right after. The question itself ("news past
//! its cursor that it did not make?") is the engine's
//! (`ProjectSide::follow_check`), asked on a thread of its own: it may
//! refresh the journal, which may walk part of the home.
//!
//! Polling, not waiting on the inotify descriptor: the descriptor belongs
//! to the engine (drained by whichever refresh comes first, another
//! client's hello included), and the journal also changes by other clients'
//! rounds, which no descriptor announces. So each following session looks
//! every [`POLL`] (250 ms), and only while it is connected, following and
//! idle; an idle home costs a `poll(2)` and a look at the journal's
//! sequence number per look.
//!
//! Debounce: news starts a window; the push goes once the journal has been
//! quiet for [`QUIET`] or [`MAX_WAIT`] after the first news, whichever is
//! first, so a burst of writes is one round, and a file that never stops
//! changing still gets one about every second. Inside a window the session
//! looks every [`LOOK_IN_WINDOW`] instead of every [`POLL`]: the quiet is
//! then seen when it begins, not up to two idle looks later (which put the
//! push 250-500 ms after a burst's last write; it is now 100-150 ms).

use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_engine::FollowNews;
use cs_protocol::Cursor;
use cs_wire::{Frame, ServerMsg, UNSOLICITED_ID};

use super::engine::on_own_thread;
use super::{unix_ms, Session};
use crate::state::{FollowCounters, RoundStep};

/// How often a following, idle session looks for news.
pub(super) const POLL: Duration = Duration::from_millis(250);
/// The journal quiet this long after news: push. A writer's pauses inside a burst
/// (`cp -r`, `tar x`, `git checkout`) are far shorter.
pub(super) const QUIET: Duration = Duration::from_millis(100);
/// How often a session looks while a debounce window is open.
pub(super) const LOOK_IN_WINDOW: Duration = Duration::from_millis(50);
/// At most this long after the first news: push, quiet or not.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(1);

/// A session's follow state.
#[derive(Default)]
pub(super) struct Follow {
    /// The poll timer runs (started at the first hello that asked).
    ticking: bool,
    /// A check runs on its thread.
    in_flight: bool,
    /// A look [`LOOK_IN_WINDOW`] from now is scheduled (a window is open).
    look_soon: bool,
    /// Hellos seen: a check's answer from before the latest hello is stale
    /// (that round carried the news, or will).
    pub rounds_begun: u64,
    /// The journal position the last push covered.
    after: Option<Cursor>,
    debounce: Debounce,
    /// The last check's error, logged once until it changes.
    last_error: Option<String>,
    /// What status shows; `asked` is also whether the session follows now.
    pub counters: FollowCounters,
}

/// When to push, from the times news was seen. Pure, so that the rule is tested.
#[derive(Debug, Default)]
pub(super) struct Debounce {
    /// When the window opened, and when the journal last moved in it.
    first: Option<Instant>,
    last: Option<Instant>,
    /// The journal position last seen in the window.
    seen: Option<Cursor>,
}

impl Debounce {
    /// A check at `now` found news up to journal position `at`: a new
    /// position is a change (it opens the window, or restarts the quiet).
    pub fn saw(&mut self, now: Instant, at: Cursor) {
        if self.seen != Some(at) {
            self.first.get_or_insert(now);
            self.last = Some(now);
            self.seen = Some(at);
        }
    }

    /// Is the push due at `now`?
    pub fn due(&self, now: Instant) -> bool {
        match (self.first, self.last) {
            (Some(first), Some(last)) => now.duration_since(last) >= QUIET || now.duration_since(first) >= MAX_WAIT,
            _ => false,
        }
    }

    /// No news (or pushed, or a round began): the window closes.
    pub fn reset(&mut self) {
        *self = Debounce::default();
    }
}

impl Session {
    /// The client's hello said whether it follows; the timer starts with the first that does.
    pub(super) fn follow_hello(&mut self, ctx: &mut Context<Self>, wants: bool) {
        self.follow.counters.asked = wants;
        if wants && !self.follow.ticking {
            self.follow.ticking = true;
            ctx.run_interval(POLL, |act, ctx| act.follow_tick(ctx));
        }
    }

    fn round_running(&self) -> bool {
        self.busy || self.phase.step() != RoundStep::Idle
    }

    fn follow_tick(&mut self, ctx: &mut Context<Self>) {
        if self.closing || !self.follow.counters.asked {
            return;
        }
        if self.round_running() {
            self.follow.debounce.reset();
            return;
        }
        if self.follow.in_flight {
            return;
        }
        self.follow.in_flight = true;
        let generation = self.follow.rounds_begun;
        let project = self.shared.project.clone();
        let client = self.client.clone();
        let after = self.follow.after;
        let calls = self.shared.engine_calls.clone();
        let check = async move {
            on_own_thread(&calls, "cs-broker-follow", move || project.follow_check(&client, after)).await
        };
        ctx.spawn(check.into_actor(self).map(move |res, act, ctx| {
            act.follow.in_flight = false;
            if act.closing || generation != act.follow.rounds_begun || act.round_running() {
                return;
            }
            match res {
                Ok(Ok(news)) => {
                    act.follow.last_error = None;
                    act.follow_news(ctx, news);
                }
                Ok(Err(e)) => act.follow_failed(cs_supervision::error_chain(&e)),
                Err(e) => act.follow_failed(e),
            }
        }));
    }

    fn follow_news(&mut self, ctx: &mut Context<Self>, news: FollowNews) {
        let now = Instant::now();
        if news.changes == 0 {
            self.follow.debounce.reset();
            return;
        }
        self.follow.debounce.saw(now, news.checked);
        if !self.follow.debounce.due(now) {
            if !self.follow.look_soon {
                self.follow.look_soon = true;
                ctx.run_later(LOOK_IN_WINDOW, |act, ctx| {
                    act.follow.look_soon = false;
                    act.follow_tick(ctx);
                });
            }
            return;
        }
        self.follow.debounce.reset();
        self.follow.after = Some(news.checked);
        self.follow.counters.pushes += 1;
        self.follow.counters.last_push_unix_ms = Some(unix_ms());
        tracing::debug!(client = %self.client, changes = news.changes, "project changed: telling the client");
        self.send_frame(ctx, Frame::control(UNSOLICITED_ID, ServerMsg::ProjectChanged { changes: news.changes }));
    }

    fn follow_failed(&mut self, reason: String) {
        if self.follow.last_error.as_ref() != Some(&reason) {
            tracing::warn!(client = %self.client, "follow check failed (the client's timer rounds go on): {reason}");
            self.follow.last_error = Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Cursor {
        Cursor { epoch: 1, seq }
    }

    #[test]
    fn a_burst_is_pushed_once_quiet_and_a_stream_of_changes_within_the_cap() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Debounce::default();
        assert!(!d.due(ms(5000)), "no news, no push");
        d.saw(ms(0), at(3));
        assert!(!d.due(ms(50)));
        // The same position again is not a change: the quiet goes on.
        d.saw(ms(50), at(3));
        assert!(d.due(ms(100)), "100 ms quiet");
        // Changes every 75 ms never leave 100 ms of quiet: the cap pushes.
        let mut d = Debounce::default();
        for (i, t) in (0..=975).step_by(75).enumerate() {
            d.saw(ms(t), at(10 + i as u64));
            if t < 975 {
                assert!(!d.due(ms(t + 50)), "at {t} ms");
            }
        }
        assert!(d.due(ms(1000)), "1 s after the first news, 25 ms after the last");
        d.reset();
        assert!(!d.due(ms(5000)));
    }
}
