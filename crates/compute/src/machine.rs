//! The round coordinator's state machine: one enum of phases and one
//! transition function, with no I/O, so every rule is unit-tested.
//!
//! ```text
//!            Trigger                 StepStarted(step.next())
//!   Idle ─────────────► Running{step} ─────────────► Running{next}
//!    ▲  ▲                  │       │
//!    │  │     Committed    │       │ Failed(e)      Failed(e), e permanent
//!    │  └──────────────────┘       ▼                ───────────────────────► Stopped{failure}
//!    │                          Backoff{attempt} ──BackoffElapsed──► Running      │
//!    │ Resume                      │ (on-demand Trigger starts at once)          │ on-demand Trigger:
//!   Paused ◄──── Pause(reason) ────┘ (from Idle, Backoff or Stopped; a running   │ one more try
//!                                     round finishes first)                       ▼ (Running)
//! ```
//!
//! A `StepStarted` out of the order of [`Step`] (anything but the next step) leaves
//! the phase unchanged and yields [`Action::StepRefused`].
//!
//! The retry policy: a [`Failure`] is classified by `failure::classify` (the
//! class is decided there, from the typed error); here a transient one backs
//! off and retries, a permanent one stops until a person asks again.

use std::time::Duration;

use serde::Serialize;

/// The steps of a round: their one definition, shared with the broker.
pub use cs_wire::Step;

use crate::failure::Failure;

/// Why a round starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Timer,
    /// The upper layer changed (debounced filesystem events).
    UpperChanged,
    /// `cs-actor sync`.
    OnDemand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Running {
        round: u64,
        step: Step,
        /// Failed attempts before this one (0 for a fresh round).
        attempt: u32,
        /// A trigger arrived during the round: its changes may have been
        /// scanned too late, so another round follows at once.
        again: bool,
        /// The safety rail went up during the round: pause after it.
        pause_after: Option<String>,
    },
    Backoff {
        attempt: u32,
        last_error: String,
    },
    Paused {
        reason: String,
    },
    /// A permanent failure: no retry by timer or by change events; an on-demand trigger
    /// (`cs-actor sync`) tries once more, a restart starts afresh.
    Stopped {
        failure: Failure,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Trigger(Trigger),
    StepStarted(Step),
    Committed,
    Failed(Failure),
    BackoffElapsed,
    /// The mount supervisor's safety rail is up.
    Pause(String),
    Resume,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start round number `round` now.
    StartRound { round: u64 },
    /// Arm a timer that delivers `BackoffElapsed` after this long (before jitter).
    ScheduleRetry(Duration),
    /// Answer the `sync --wait` callers waiting for rounds up to `round`.
    Finished { round: u64, result: Result<(), Failure> },
    /// Answer every waiting `sync --wait` caller with an error now.
    RefuseWaiters(Failure),
    /// A `StepStarted` out of the order of [`Step`] was refused (the phase is
    /// unchanged): a bug of the round's code, to be logged loudly.
    StepRefused(cs_wire::OrderError),
}

/// Retry delays: the one rule of cs-supervision.
pub use cs_supervision::Backoff;

/// The coordinator's whole decision logic. `last_round` is the number of
/// the last round started (the next one is `last_round + 1`).
pub fn transition(phase: &Phase, event: Event, last_round: u64, backoff: &Backoff) -> (Phase, Vec<Action>) {
    use Phase::*;
    let start_attempt = |n: u64, attempt: u32| {
        (
            Running { round: n, step: Step::Resolve, attempt, again: false, pause_after: None },
            vec![Action::StartRound { round: n }],
        )
    };
    let start = |n: u64| start_attempt(n, 0);
    match (phase.clone(), event) {
        (Idle, Event::Trigger(_)) => start(last_round + 1),
        (Running { round, step, attempt, pause_after, .. }, Event::Trigger(_)) => {
            (Running { round, step, attempt, again: true, pause_after }, vec![])
        }
        // Only the next step of the sequence may start; anything else leaves the round
        // where it is, and says so.
        (Running { round, step: at, attempt, again, pause_after }, Event::StepStarted(step)) => {
            match at.may_start(step) {
                Ok(()) => (Running { round, step, attempt, again, pause_after }, vec![]),
                Err(e) => (phase.clone(), vec![Action::StepRefused(e)]),
            }
        }
        (Running { round, again, pause_after, .. }, Event::Committed) => {
            let done = Action::Finished { round, result: Ok(()) };
            match (pause_after, again) {
                (Some(reason), _) => {
                    (Paused { reason: reason.clone() }, vec![done, Action::RefuseWaiters(paused(&reason))])
                }
                (None, true) => {
                    let (p, mut a) = start(last_round + 1);
                    a.insert(0, done);
                    (p, a)
                }
                (None, false) => (Idle, vec![done]),
            }
        }
        (Running { round, attempt, pause_after, .. }, Event::Failed(e)) => {
            let done = Action::Finished { round, result: Err(e.clone()) };
            match pause_after {
                Some(reason) => (Paused { reason: reason.clone() }, vec![done, Action::RefuseWaiters(paused(&reason))]),
                // Retrying cannot help: stop, and answer the callers waiting for a later round too.
                None if e.is_permanent() => (Stopped { failure: e.clone() }, vec![done, Action::RefuseWaiters(e)]),
                None => {
                    let attempt = attempt + 1;
                    let last_error = e.message;
                    (Backoff { attempt, last_error }, vec![done, Action::ScheduleRetry(backoff.delay(attempt))])
                }
            }
        }
        (Running { round, step, attempt, again, .. }, Event::Pause(reason)) => {
            (Running { round, step, attempt, again, pause_after: Some(reason) }, vec![])
        }
        (Running { round, step, attempt, again, .. }, Event::Resume) => {
            (Running { round, step, attempt, again, pause_after: None }, vec![])
        }
        (Backoff { attempt, .. }, Event::BackoffElapsed)
        | (Backoff { attempt, .. }, Event::Trigger(Trigger::OnDemand)) => start_attempt(last_round + 1, attempt),
        // A retry after a failure that fails again backs off longer.
        (Backoff { .. }, Event::Trigger(_)) => (phase.clone(), vec![]),
        // Stopped: only a person's request tries again (the user may have fixed the cause).
        (Stopped { .. }, Event::Trigger(Trigger::OnDemand)) => start(last_round + 1),
        (Stopped { .. }, Event::Trigger(_)) => (phase.clone(), vec![]),
        (Idle | Backoff { .. } | Stopped { .. }, Event::Pause(reason)) => {
            (Paused { reason: reason.clone() }, vec![Action::RefuseWaiters(paused(&reason))])
        }
        (Paused { reason }, Event::Trigger(Trigger::OnDemand)) => {
            (phase.clone(), vec![Action::RefuseWaiters(paused(&reason))])
        }
        (Paused { .. }, Event::Resume) => start(last_round + 1),
        (Paused { .. }, Event::Pause(reason)) => (Paused { reason }, vec![]),
        // Anything else is stale (a timer after a state change): ignore it.
        (p, _) => (p, vec![]),
    }
}

fn paused(reason: &str) -> Failure {
    Failure::transient(format!("syncing is paused: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(phase: Phase, ev: Event) -> (Phase, Vec<Action>) {
        transition(&phase, ev, 4, &Backoff::default())
    }

    fn running(round: u64, step: Step) -> Phase {
        Phase::Running { round, step, attempt: 0, again: false, pause_after: None }
    }

    #[test]
    fn a_trigger_starts_the_next_round() {
        for t in [Trigger::Timer, Trigger::UpperChanged, Trigger::OnDemand] {
            assert_eq!(
                run(Phase::Idle, Event::Trigger(t)),
                (running(5, Step::Resolve), vec![Action::StartRound { round: 5 }])
            );
        }
    }

    #[test]
    fn steps_advance_in_order_and_commit_returns_to_idle() {
        // The coordinator first reports the step the round starts in.
        let (mut p, a) = run(running(5, Step::Resolve), Event::StepStarted(Step::Resolve));
        assert_eq!((&p, a), (&running(5, Step::Resolve), vec![]));
        for step in &Step::ALL[1..] {
            let (next, a) = run(p, Event::StepStarted(*step));
            assert_eq!((&next, a), (&running(5, *step), vec![]));
            p = next;
        }
        let (p, a) = run(p, Event::Committed);
        assert_eq!(p, Phase::Idle);
        assert_eq!(a, vec![Action::Finished { round: 5, result: Ok(()) }]);
    }

    #[test]
    fn out_of_order_steps_are_refused_and_the_round_stays_where_it_is() {
        for at in Step::ALL {
            for step in Step::ALL {
                if step == at || at.next() == Some(step) {
                    continue;
                }
                let phase = running(5, at);
                let (p, a) = run(phase.clone(), Event::StepStarted(step));
                assert_eq!(p, phase, "{step:?} after {at:?}");
                let [Action::StepRefused(e)] = &a[..] else { panic!("{step:?} after {at:?}: {a:?}") };
                assert!(e.to_string().contains(&format!("at step {}", at.label())), "{e}");
            }
        }
        // The round goes on from where it was.
        let (p, _) = run(running(5, Step::Resolve), Event::StepStarted(Step::WritesToProject));
        assert_eq!(run(p, Event::StepStarted(Step::Hello)).0, running(5, Step::Hello));
    }

    #[test]
    fn status_names_of_the_steps_are_unchanged() {
        let names: Vec<String> = Step::ALL.iter().map(|s| serde_json::to_value(s).expect("json").to_string()).collect();
        assert_eq!(
            names,
            [
                "\"resolve\"",
                "\"hello\"",
                "\"deletes_to_project\"",
                "\"deletes_to_compute\"",
                "\"writes_to_project\"",
                "\"writes_to_compute\"",
                "\"commit\""
            ]
        );
        for s in Step::ALL {
            assert_eq!(serde_json::to_value(s).expect("json"), serde_json::json!(s.name()));
        }
    }

    #[test]
    fn a_trigger_during_a_round_runs_another_right_after() {
        let (p, _) = run(running(5, Step::Hello), Event::Trigger(Trigger::UpperChanged));
        let (p, a) = transition(&p, Event::Committed, 5, &Backoff::default());
        assert_eq!(p, running(6, Step::Resolve));
        assert_eq!(a, vec![Action::Finished { round: 5, result: Ok(()) }, Action::StartRound { round: 6 }]);
    }

    #[test]
    fn failure_backs_off_then_retries() {
        let reset = Failure::transient("connection reset");
        let (p, a) = run(running(5, Step::WritesToCompute), Event::Failed(reset.clone()));
        assert_eq!(p, Phase::Backoff { attempt: 1, last_error: "connection reset".into() });
        assert_eq!(
            a,
            vec![Action::Finished { round: 5, result: Err(reset) }, Action::ScheduleRetry(Duration::from_secs(1))]
        );
        // Timer and upper-layer triggers wait for the backoff; on demand does not.
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::Timer)).0, p);
        let retry = Phase::Running { round: 5, step: Step::Resolve, attempt: 1, again: false, pause_after: None };
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::OnDemand)).0, retry);
        assert_eq!(run(p, Event::BackoffElapsed), (retry, vec![Action::StartRound { round: 5 }]));
    }

    #[test]
    fn repeated_failures_double_the_delay_up_to_the_cap() {
        let b = Backoff { min: Duration::from_secs(1), max: Duration::from_secs(60) };
        let delays: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // The attempt count survives the retry, so a second failure waits longer.
        let (p, _) = transition(&Phase::Backoff { attempt: 3, last_error: "x".into() }, Event::BackoffElapsed, 4, &b);
        let (p, a) = transition(&p, Event::Failed(Failure::transient("y")), 5, &b);
        assert_eq!(p, Phase::Backoff { attempt: 4, last_error: "y".into() });
        assert_eq!(a[1], Action::ScheduleRetry(Duration::from_secs(8)));
        // A commit starts the count afresh.
        let (p, _) = transition(&p, Event::BackoffElapsed, 5, &b);
        let (p, _) = transition(&p, Event::Committed, 6, &b);
        let (_, a) = transition(
            &transition(&p, Event::Trigger(Trigger::Timer), 6, &b).0,
            Event::Failed(Failure::transient("z")),
            7,
            &b,
        );
        assert_eq!(a[1], Action::ScheduleRetry(Duration::from_secs(1)));
    }

    #[test]
    fn safety_rail_pauses_and_resume_restarts() {
        let (p, a) = run(Phase::Idle, Event::Pause("lower mount missing".into()));
        assert_eq!(p, Phase::Paused { reason: "lower mount missing".into() });
        assert_eq!(a, vec![Action::RefuseWaiters(Failure::transient("syncing is paused: lower mount missing"))]);
        // Triggers do nothing while paused; on-demand callers are told why.
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::Timer)), (p.clone(), vec![]));
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::OnDemand)).1, a);
        assert_eq!(run(p, Event::Resume), (running(5, Step::Resolve), vec![Action::StartRound { round: 5 }]));
    }

    #[test]
    fn a_running_round_finishes_before_pausing() {
        let (p, a) = run(running(5, Step::WritesToProject), Event::Pause("lower empty".into()));
        assert!(a.is_empty());
        let (p, a) = run(p, Event::Committed);
        assert_eq!(p, Phase::Paused { reason: "lower empty".into() });
        assert_eq!(a[0], Action::Finished { round: 5, result: Ok(()) });
    }

    fn unauthorized() -> Failure {
        Failure::permanent("HTTP status 401", "check --token-file")
    }

    #[test]
    fn a_permanent_failure_stops_retrying_and_answers_every_waiter() {
        let (p, a) = run(running(5, Step::Hello), Event::Failed(unauthorized()));
        assert_eq!(p, Phase::Stopped { failure: unauthorized() });
        assert_eq!(
            a,
            vec![Action::Finished { round: 5, result: Err(unauthorized()) }, Action::RefuseWaiters(unauthorized())],
            "no retry is scheduled; callers waiting for later rounds learn it too"
        );
        // After a transient failure first: the backoff's retry fails permanently, and stops.
        let (p, _) = run(running(5, Step::Resolve), Event::Failed(Failure::transient("not connected yet")));
        let (p, _) = run(p, Event::BackoffElapsed);
        let (p, a) = run(p, Event::Failed(unauthorized()));
        assert_eq!(p, Phase::Stopped { failure: unauthorized() });
        assert!(!a.iter().any(|a| matches!(a, Action::ScheduleRetry(_))), "{a:?}");
    }

    #[test]
    fn stopped_ignores_timers_and_changes_but_a_person_can_try_again() {
        let stopped = Phase::Stopped { failure: unauthorized() };
        for ev in [
            Event::Trigger(Trigger::Timer),
            Event::Trigger(Trigger::UpperChanged),
            Event::BackoffElapsed,
            Event::Committed,
            Event::Resume,
        ] {
            assert_eq!(run(stopped.clone(), ev.clone()), (stopped.clone(), vec![]), "{ev:?}");
        }
        // `cs-actor sync`: one more try, as a fresh round.
        let (p, a) = run(stopped.clone(), Event::Trigger(Trigger::OnDemand));
        assert_eq!((p.clone(), a), (running(5, Step::Resolve), vec![Action::StartRound { round: 5 }]));
        // It fails the same way: stopped again, at once.
        assert_eq!(run(p.clone(), Event::Failed(unauthorized())).0, stopped);
        // It succeeds: back to normal.
        assert_eq!(run(p, Event::Committed).0, Phase::Idle);
        // The safety rail still wins.
        assert_eq!(run(stopped, Event::Pause("lower empty".into())).0, Phase::Paused { reason: "lower empty".into() });
    }

    #[test]
    fn stale_events_are_ignored() {
        assert_eq!(run(Phase::Idle, Event::BackoffElapsed), (Phase::Idle, vec![]));
        assert_eq!(run(Phase::Idle, Event::Committed), (Phase::Idle, vec![]));
        assert_eq!(run(Phase::Idle, Event::StepStarted(Step::Hello)), (Phase::Idle, vec![]));
    }
}
