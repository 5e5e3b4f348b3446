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
//!    │ last Resume(by)             │ (on-demand Trigger starts at once)          │ on-demand Trigger:
//!   Paused ◄── Pause{by, reason} ──┘ (from Idle, Backoff or Stopped; a running   │ one more try
//!                                     round finishes first)                       ▼ (Running)
//! ```
//!
//! Two holders pause syncing, independently ([`PauseBy`]): the safety rail (the mount
//! supervisor) and the operator (`cs-actor pause`). Each is lifted only by its own
//! `Resume`; rounds start again when neither holds ([`Pauses`]). A round in flight when a
//! pause arrives finishes (its commit or failure then enters `Paused`): cutting it would
//! only make the next round redo its work, and a round is bounded.
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
    /// P pushed `ProjectChanged`: the project changed between rounds (following,
    /// docs/protocol.md, *Follow*). A change trigger like `UpperChanged`: it starts a
    /// round from `Idle`, marks one to follow a round in flight, waits out a backoff.
    ProjectChanged,
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
        /// Pauses that arrived during the round: pause after it when any holds.
        pauses: Pauses,
    },
    Backoff {
        attempt: u32,
        last_error: String,
    },
    /// At least one of `pauses` holds.
    Paused {
        pauses: Pauses,
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
    /// The safety rail is up (the mount supervisor), or the operator paused syncing.
    Pause {
        by: PauseBy,
        reason: String,
    },
    /// This holder lifts its pause (the other one's, if any, stays).
    Resume(PauseBy),
    /// The connection to the broker is up (again). A round waiting out a backoff is tried
    /// at once: it most likely failed for the link (at start, the first round is tried
    /// before the connection is up); in any other phase it changes nothing.
    LinkUp,
}

/// Who pauses syncing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseBy {
    /// The mount supervisor's safety rail: lower missing, erroring, or empty where it was not.
    Rail,
    /// `cs-actor pause` (persisted by the coordinator until `cs-actor resume`).
    Operator,
}

/// The pauses holding now, by holder: each reason, or `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pauses {
    pub rail: Option<String>,
    pub operator: Option<String>,
}

impl Pauses {
    pub fn is_empty(&self) -> bool {
        self.rail.is_none() && self.operator.is_none()
    }

    pub fn holds(&self, by: PauseBy) -> bool {
        self.get(by).is_some()
    }

    fn get(&self, by: PauseBy) -> &Option<String> {
        match by {
            PauseBy::Rail => &self.rail,
            PauseBy::Operator => &self.operator,
        }
    }

    fn with(mut self, by: PauseBy, reason: Option<String>) -> Self {
        match by {
            PauseBy::Rail => self.rail = reason,
            PauseBy::Operator => self.operator = reason,
        }
        self
    }

    /// Every reason, for status and for the callers told that no round runs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.operator {
            parts.push(if r.is_empty() { "by the operator".to_string() } else { format!("by the operator: {r}") });
        }
        if let Some(r) = &self.rail {
            parts.push(r.clone());
        }
        parts.join("; ")
    }

    /// What a `sync --wait` caller gets: the reasons, and how to resume an operator pause.
    pub fn failure(&self) -> Failure {
        let mut f = Failure::transient(format!("syncing is paused: {}", self.describe()));
        if self.operator.is_some() {
            f.what_to_do = Some("`cs-actor resume` lifts the operator's pause".into());
        }
        f
    }
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
            Running { round: n, step: Step::Resolve, attempt, again: false, pauses: Pauses::default() },
            vec![Action::StartRound { round: n }],
        )
    };
    let start = |n: u64| start_attempt(n, 0);
    let pause = |pauses: Pauses, done: Vec<Action>| {
        let mut actions = done;
        actions.push(Action::RefuseWaiters(pauses.failure()));
        (Paused { pauses }, actions)
    };
    match (phase.clone(), event) {
        (Idle, Event::Trigger(_)) => start(last_round + 1),
        (Running { round, step, attempt, pauses, .. }, Event::Trigger(_)) => {
            (Running { round, step, attempt, again: true, pauses }, vec![])
        }
        // Only the next step of the sequence may start; anything else leaves the round
        // where it is, and says so.
        (Running { round, step: at, attempt, again, pauses }, Event::StepStarted(step)) => match at.may_start(step) {
            Ok(()) => (Running { round, step, attempt, again, pauses }, vec![]),
            Err(e) => (phase.clone(), vec![Action::StepRefused(e)]),
        },
        (Running { round, again, pauses, .. }, Event::Committed) => {
            let done = Action::Finished { round, result: Ok(()) };
            match (pauses.is_empty(), again) {
                (false, _) => pause(pauses, vec![done]),
                (true, true) => {
                    let (p, mut a) = start(last_round + 1);
                    a.insert(0, done);
                    (p, a)
                }
                (true, false) => (Idle, vec![done]),
            }
        }
        (Running { round, attempt, pauses, .. }, Event::Failed(e)) => {
            let done = Action::Finished { round, result: Err(e.clone()) };
            match pauses.is_empty() {
                false => pause(pauses, vec![done]),
                // Retrying cannot help: stop, and answer the callers waiting for a later round too.
                true if e.is_permanent() => (Stopped { failure: e.clone() }, vec![done, Action::RefuseWaiters(e)]),
                true => {
                    let attempt = attempt + 1;
                    let last_error = e.message;
                    (Backoff { attempt, last_error }, vec![done, Action::ScheduleRetry(backoff.delay(attempt))])
                }
            }
        }
        (Running { round, step, attempt, again, pauses }, Event::Pause { by, reason }) => {
            (Running { round, step, attempt, again, pauses: pauses.with(by, Some(reason)) }, vec![])
        }
        (Running { round, step, attempt, again, pauses }, Event::Resume(by)) => {
            (Running { round, step, attempt, again, pauses: pauses.with(by, None) }, vec![])
        }
        (Backoff { attempt, .. }, Event::BackoffElapsed)
        | (Backoff { attempt, .. }, Event::LinkUp)
        | (Backoff { attempt, .. }, Event::Trigger(Trigger::OnDemand)) => start_attempt(last_round + 1, attempt),
        // A retry after a failure that fails again backs off longer.
        (Backoff { .. }, Event::Trigger(_)) => (phase.clone(), vec![]),
        // Stopped: only a person's request tries again (the user may have fixed the cause).
        (Stopped { .. }, Event::Trigger(Trigger::OnDemand)) => start(last_round + 1),
        (Stopped { .. }, Event::Trigger(_)) => (phase.clone(), vec![]),
        (Idle | Backoff { .. } | Stopped { .. }, Event::Pause { by, reason }) => {
            pause(Pauses::default().with(by, Some(reason)), vec![])
        }
        (Paused { pauses }, Event::Trigger(Trigger::OnDemand)) => {
            (phase.clone(), vec![Action::RefuseWaiters(pauses.failure())])
        }
        // One holder lifting its pause leaves the other's: rounds start when neither holds.
        (Paused { pauses }, Event::Resume(by)) => {
            let pauses = pauses.with(by, None);
            if pauses.is_empty() {
                start(last_round + 1)
            } else {
                (Paused { pauses }, vec![])
            }
        }
        (Paused { pauses }, Event::Pause { by, reason }) => (Paused { pauses: pauses.with(by, Some(reason)) }, vec![]),
        // Anything else is stale (a timer after a state change): ignore it.
        (p, _) => (p, vec![]),
    }
}

impl Phase {
    /// The pauses holding (or, for a running round, waiting for it to end).
    pub fn pauses(&self) -> Pauses {
        match self {
            Phase::Running { pauses, .. } | Phase::Paused { pauses } => pauses.clone(),
            _ => Pauses::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(phase: Phase, ev: Event) -> (Phase, Vec<Action>) {
        transition(&phase, ev, 4, &Backoff::default())
    }

    fn rail(reason: &str) -> Event {
        Event::Pause { by: PauseBy::Rail, reason: reason.into() }
    }

    fn operator(reason: &str) -> Event {
        Event::Pause { by: PauseBy::Operator, reason: reason.into() }
    }

    fn paused_by_rail(reason: &str) -> Phase {
        Phase::Paused { pauses: Pauses { rail: Some(reason.into()), operator: None } }
    }

    fn running(round: u64, step: Step) -> Phase {
        Phase::Running { round, step, attempt: 0, again: false, pauses: Pauses::default() }
    }

    #[test]
    fn the_link_coming_up_ends_a_backoff_and_nothing_else() {
        let backoff = Phase::Backoff { attempt: 2, last_error: "not connected".into() };
        let (p, a) = run(backoff, Event::LinkUp);
        assert_eq!(
            p,
            Phase::Running { round: 5, step: Step::Resolve, attempt: 2, again: false, pauses: Pauses::default() }
        );
        assert_eq!(a, vec![Action::StartRound { round: 5 }]);
        for phase in [
            Phase::Idle,
            running(5, Step::WritesToProject),
            paused_by_rail("lower missing"),
            Phase::Stopped { failure: Failure::permanent("HTTP status 401", "check --token-file") },
        ] {
            assert_eq!(run(phase.clone(), Event::LinkUp), (phase.clone(), vec![]), "{phase:?}");
        }
    }

    #[test]
    fn a_trigger_starts_the_next_round() {
        for t in [Trigger::Timer, Trigger::UpperChanged, Trigger::ProjectChanged, Trigger::OnDemand] {
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
        for t in [Trigger::UpperChanged, Trigger::ProjectChanged] {
            let (p, _) = run(running(5, Step::Hello), Event::Trigger(t));
            let (p, a) = transition(&p, Event::Committed, 5, &Backoff::default());
            assert_eq!(p, running(6, Step::Resolve), "{t:?}");
            assert_eq!(a, vec![Action::Finished { round: 5, result: Ok(()) }, Action::StartRound { round: 6 }]);
        }
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
        // Timer and change triggers wait for the backoff; on demand does not.
        for t in [Trigger::Timer, Trigger::UpperChanged, Trigger::ProjectChanged] {
            assert_eq!(run(p.clone(), Event::Trigger(t)), (p.clone(), vec![]), "{t:?}");
        }
        let retry =
            Phase::Running { round: 5, step: Step::Resolve, attempt: 1, again: false, pauses: Pauses::default() };
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
        let (p, a) = run(Phase::Idle, rail("lower mount missing"));
        assert_eq!(p, paused_by_rail("lower mount missing"));
        assert_eq!(a, vec![Action::RefuseWaiters(Failure::transient("syncing is paused: lower mount missing"))]);
        // Triggers do nothing while paused; on-demand callers are told why.
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::Timer)), (p.clone(), vec![]));
        assert_eq!(run(p.clone(), Event::Trigger(Trigger::OnDemand)).1, a);
        assert_eq!(
            run(p, Event::Resume(PauseBy::Rail)),
            (running(5, Step::Resolve), vec![Action::StartRound { round: 5 }])
        );
    }

    #[test]
    fn a_running_round_finishes_before_pausing() {
        let (p, a) = run(running(5, Step::WritesToProject), rail("lower empty"));
        assert!(a.is_empty());
        let (p, a) = run(p, Event::Committed);
        assert_eq!(p, paused_by_rail("lower empty"));
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
            Event::Trigger(Trigger::ProjectChanged),
            Event::BackoffElapsed,
            Event::Committed,
            Event::Resume(PauseBy::Rail),
            Event::Resume(PauseBy::Operator),
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
        assert_eq!(run(stopped.clone(), rail("lower empty")).0, paused_by_rail("lower empty"));
        // So does the operator's pause; its resume gives the stopped service one more try.
        let (p, _) = run(stopped, operator("maintenance"));
        assert_eq!(run(p, Event::Resume(PauseBy::Operator)).1, vec![Action::StartRound { round: 5 }]);
    }

    fn paused_both(rail: &str, operator: &str) -> Phase {
        Phase::Paused { pauses: Pauses { rail: Some(rail.into()), operator: Some(operator.into()) } }
    }

    #[test]
    fn an_operator_pause_stops_every_trigger_and_tells_callers_how_to_resume() {
        for from in [Phase::Idle, Phase::Backoff { attempt: 2, last_error: "x".into() }] {
            let (p, a) = run(from, operator("disk maintenance"));
            let pauses = Pauses { rail: None, operator: Some("disk maintenance".into()) };
            assert_eq!(p, Phase::Paused { pauses: pauses.clone() });
            let [Action::RefuseWaiters(f)] = &a[..] else { panic!("{a:?}") };
            assert_eq!(
                f.to_string(),
                "syncing is paused: by the operator: disk maintenance (`cs-actor resume` lifts the operator's pause)"
            );
            assert!(!f.is_permanent());
            for t in [Trigger::Timer, Trigger::UpperChanged, Trigger::ProjectChanged] {
                assert_eq!(run(p.clone(), Event::Trigger(t)), (p.clone(), vec![]), "{t:?}");
            }
            assert_eq!(run(p.clone(), Event::Trigger(Trigger::OnDemand)), (p.clone(), a.clone()));
            assert_eq!(run(p.clone(), Event::BackoffElapsed), (p.clone(), vec![]), "a stale retry timer");
            // The rail's resume is not the operator's.
            assert_eq!(run(p.clone(), Event::Resume(PauseBy::Rail)), (p.clone(), vec![]));
            assert_eq!(
                run(p, Event::Resume(PauseBy::Operator)),
                (running(5, Step::Resolve), vec![Action::StartRound { round: 5 }])
            );
        }
        // Without a reason, the message still names who paused.
        let (_, a) = run(Phase::Idle, operator(""));
        let [Action::RefuseWaiters(f)] = &a[..] else { panic!("{a:?}") };
        assert!(f.message.ends_with("syncing is paused: by the operator"), "{f}");
    }

    #[test]
    fn rail_and_operator_pauses_hold_independently() {
        // Operator first, then the rail: each resume lifts only its own.
        let (p, _) = run(Phase::Idle, operator("upgrade"));
        let (p, a) = run(p, rail("lower missing"));
        assert_eq!((&p, a), (&paused_both("lower missing", "upgrade"), vec![]));
        let (_, a) = run(p.clone(), Event::Trigger(Trigger::OnDemand));
        let [Action::RefuseWaiters(f)] = &a[..] else { panic!("{a:?}") };
        assert!(f.message.contains("by the operator: upgrade") && f.message.contains("lower missing"), "{f}");
        let (after_rail, a) = run(p.clone(), Event::Resume(PauseBy::Rail));
        assert_eq!(
            (after_rail, a),
            (Phase::Paused { pauses: Pauses { rail: None, operator: Some("upgrade".into()) } }, vec![])
        );
        let (after_op, a) = run(p, Event::Resume(PauseBy::Operator));
        assert_eq!((&after_op, a), (&paused_by_rail("lower missing"), vec![]));
        // The last one lifted starts a round.
        assert_eq!(run(after_op, Event::Resume(PauseBy::Rail)).1, vec![Action::StartRound { round: 5 }]);
        // A second pause by the same holder replaces its reason.
        let (p, _) = run(paused_by_rail("x"), rail("y"));
        assert_eq!(p, paused_by_rail("y"));
    }

    #[test]
    fn a_round_in_flight_finishes_then_pauses_unless_the_pause_was_lifted_meanwhile() {
        let (p, a) = run(running(5, Step::WritesToProject), operator("now"));
        assert!(a.is_empty());
        // The round goes on through its steps.
        let (p, _) = run(p, Event::StepStarted(Step::WritesToCompute));
        let (paused, a) = run(p.clone(), Event::Committed);
        assert_eq!(paused, Phase::Paused { pauses: Pauses { rail: None, operator: Some("now".into()) } });
        assert_eq!(a[0], Action::Finished { round: 5, result: Ok(()) });
        assert!(matches!(&a[1], Action::RefuseWaiters(f) if f.message.contains("by the operator: now")), "{a:?}");
        // A failure then pauses too, without a retry.
        let (failed, a) = run(p.clone(), Event::Failed(Failure::transient("reset")));
        assert!(matches!(failed, Phase::Paused { .. }));
        assert!(!a.iter().any(|a| matches!(a, Action::ScheduleRetry(_))), "{a:?}");
        // Resumed before the round ended: it ends as usual.
        let (p, _) = run(p, Event::Resume(PauseBy::Operator));
        assert_eq!(run(p, Event::Committed).0, Phase::Idle);
        // The rail's resume during the round does not lift the operator's pause.
        let (p, _) = run(running(5, Step::Hello), operator("op"));
        let (p, _) = run(p, rail("rail"));
        let (p, _) = run(p, Event::Resume(PauseBy::Rail));
        assert!(
            matches!(run(p, Event::Committed).0, Phase::Paused { pauses } if pauses.operator.is_some() && pauses.rail.is_none())
        );
    }

    #[test]
    fn stale_events_are_ignored() {
        assert_eq!(run(Phase::Idle, Event::Resume(PauseBy::Operator)), (Phase::Idle, vec![]));
        assert_eq!(run(Phase::Idle, Event::BackoffElapsed), (Phase::Idle, vec![]));
        assert_eq!(run(Phase::Idle, Event::Committed), (Phase::Idle, vec![]));
        assert_eq!(run(Phase::Idle, Event::StepStarted(Step::Hello)), (Phase::Idle, vec![]));
    }
}
