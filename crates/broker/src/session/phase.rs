//! The protocol phase of a session: whether a round is open, at which
//! step, and the round itself. The phase owns the round; a step's engine
//! call borrows it ([`Phase::lend`]) and gives it back when it returns
//! ([`Phase::give_back`]), so "no round" is an answer, never a panic.

use std::time::Instant;

use crate::state::RoundStep;

/// Where the session's round is. Generic over the round so that the
/// transitions can be tested without a project (the session uses
/// `cs_engine::ProjectRound`).
pub(super) enum Phase<R> {
    /// No round open.
    Idle,
    /// The hello's engine call is opening a round.
    Opening,
    /// A round is open and waits for the client's next request.
    Open { round: R, at: RoundAt },
    /// A step of the open round runs on an engine thread, with the round.
    Lent { at: RoundAt },
}

/// What the session knows of its open round besides the round itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct RoundAt {
    /// The step entered last (it stays the current one until the next request).
    pub step: RoundStep,
    /// When the hello opened it.
    pub started: Instant,
    /// The hello reply asked for the full held list, which has not come yet.
    pub need_held_list: bool,
}

/// A request that needs the round, at a moment when there is none to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PhaseError {
    #[error("no round is open: send Hello first")]
    NoRound,
    #[error("a step of the round is still running: wait for each answer")]
    StepRunning,
}

impl<R> Phase<R> {
    /// The step `status` shows.
    pub fn step(&self) -> RoundStep {
        match self {
            Phase::Idle => RoundStep::Idle,
            Phase::Opening => RoundStep::Hello,
            Phase::Open { at, .. } | Phase::Lent { at } => at.step,
        }
    }

    /// A round is open (waiting, or lent to a step).
    pub fn is_open(&self) -> bool {
        matches!(self, Phase::Open { .. } | Phase::Lent { .. })
    }

    pub fn need_held_list(&self) -> bool {
        match self {
            Phase::Open { at, .. } | Phase::Lent { at } => at.need_held_list,
            Phase::Idle | Phase::Opening => false,
        }
    }

    /// When the open round began.
    pub fn started(&self) -> Option<Instant> {
        match self {
            Phase::Open { at, .. } | Phase::Lent { at } => Some(at.started),
            Phase::Idle | Phase::Opening => None,
        }
    }

    /// A hello: any open round is abandoned (returns whether there was
    /// one), and a new one is being opened.
    pub fn begin(&mut self) -> bool {
        let abandoned = self.end_round();
        *self = Phase::Opening;
        abandoned
    }

    /// The hello's engine call opened `round`.
    pub fn opened(&mut self, round: R, started: Instant, need_held_list: bool) {
        *self = Phase::Open { round, at: RoundAt { step: RoundStep::Hello, started, need_held_list } };
    }

    /// Step `step` starts: its engine call takes the round.
    pub fn lend(&mut self, step: RoundStep) -> Result<R, PhaseError> {
        match std::mem::replace(self, Phase::Idle) {
            Phase::Open { round, mut at } => {
                at.step = step;
                *self = Phase::Lent { at };
                Ok(round)
            }
            Phase::Lent { at } => {
                *self = Phase::Lent { at };
                Err(PhaseError::StepRunning)
            }
            other @ (Phase::Idle | Phase::Opening) => {
                *self = other;
                Err(PhaseError::NoRound)
            }
        }
    }

    /// The step's engine call returned the round. Returns false (and drops
    /// the round) if the round was abandoned meanwhile.
    pub fn give_back(&mut self, round: R) -> bool {
        match std::mem::replace(self, Phase::Idle) {
            Phase::Lent { at } => {
                *self = Phase::Open { round, at };
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// The client sent the held list the hello reply asked for.
    pub fn held_list_received(&mut self) {
        if let Phase::Open { at, .. } | Phase::Lent { at } = self {
            at.need_held_list = false;
        }
    }

    /// The round ends (committed, failed, or lost with its engine call):
    /// back to idle. Returns whether a round was open.
    pub fn end_round(&mut self) -> bool {
        let was_open = self.is_open();
        *self = Phase::Idle;
        was_open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(need_held_list: bool) -> Phase<u32> {
        let mut p = Phase::Idle;
        assert!(!p.begin());
        assert_eq!(p.step(), RoundStep::Hello);
        assert!(!p.is_open(), "a round is open only once the hello's call returned it");
        p.opened(7, Instant::now(), need_held_list);
        p
    }

    #[test]
    fn idle_has_no_round_to_lend() {
        let mut p: Phase<u32> = Phase::Idle;
        assert_eq!(p.lend(RoundStep::Deletes), Err(PhaseError::NoRound));
        assert_eq!(p.step(), RoundStep::Idle);
        let mut p: Phase<u32> = Phase::Opening;
        assert_eq!(p.lend(RoundStep::Deletes), Err(PhaseError::NoRound));
        assert_eq!(p.step(), RoundStep::Hello);
    }

    #[test]
    fn a_step_borrows_the_round_and_gives_it_back() {
        let mut p = open(false);
        assert_eq!(p.step(), RoundStep::Hello);
        let r = p.lend(RoundStep::Deletes).unwrap();
        assert_eq!(r, 7);
        assert_eq!(p.step(), RoundStep::Deletes);
        assert!(p.is_open());
        assert_eq!(p.lend(RoundStep::DeletesForClient), Err(PhaseError::StepRunning));
        assert_eq!(p.step(), RoundStep::Deletes, "a refused lend changes nothing");
        assert!(p.give_back(r));
        assert!(matches!(p, Phase::Open { round: 7, .. }));
        assert_eq!(p.step(), RoundStep::Deletes);
    }

    #[test]
    fn held_list_clears_the_request() {
        let mut p = open(true);
        assert!(p.need_held_list());
        let r = p.lend(RoundStep::Hello).unwrap();
        p.held_list_received();
        assert!(p.give_back(r));
        assert!(!p.need_held_list());
        assert_eq!(p.step(), RoundStep::Hello);
    }

    #[test]
    fn abandoning_drops_the_round_and_a_late_give_back() {
        let mut p = open(false);
        let r = p.lend(RoundStep::WritesIn).unwrap();
        assert!(p.end_round());
        assert_eq!(p.step(), RoundStep::Idle);
        assert!(!p.give_back(r), "a round given back after it was abandoned is dropped");
        assert!(!p.is_open());
        assert!(!p.end_round(), "nothing left to abandon");
    }

    #[test]
    fn a_new_hello_abandons_the_open_round() {
        let mut p = open(false);
        assert!(p.begin());
        assert_eq!(p.step(), RoundStep::Hello);
        assert!(!p.is_open());
        assert!(p.started().is_none());
    }

    #[test]
    fn commit_lends_the_round_for_good() {
        let mut p = open(false);
        let started = p.started();
        assert!(started.is_some());
        let _consumed = p.lend(RoundStep::Commit).unwrap();
        assert_eq!(p.step(), RoundStep::Commit);
        assert_eq!(p.started(), started);
        assert!(p.end_round(), "the committed round ends: idle");
        assert_eq!(p.step(), RoundStep::Idle);
    }
}
