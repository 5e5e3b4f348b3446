//! The round's steps, defined once: their order, their number in the contract
//! (docs/protocol.md), what comes next, and which request may come at each point.
//!
//! It lives here, beside [`ClientMsg`], because the order *is* a property of the
//! requests, and because every party to a round already depends on this crate:
//! the compute service (its round and its coordinator's machine), the broker (the
//! order check of a session) and the tests. No actors, no I/O.

use serde::Serialize;

use crate::ClientMsg;

/// The steps of a round, in order. `Resolve` and `Hello` are the preamble (step 0);
/// steps 1 to 5 are the contract's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Settle a commit interrupted by a crash (ask P about a pending round).
    Resolve,
    Hello,
    DeletesToProject,
    DeletesToCompute,
    WritesToProject,
    WritesToCompute,
    Commit,
}

impl Step {
    /// Every step, in the order a round runs them.
    pub const ALL: [Step; 7] = [
        Step::Resolve,
        Step::Hello,
        Step::DeletesToProject,
        Step::DeletesToCompute,
        Step::WritesToProject,
        Step::WritesToCompute,
        Step::Commit,
    ];

    /// The first step of every round.
    pub const FIRST: Step = Step::Resolve;

    /// The step's number in the contract (1 to 5; 0 for the preamble).
    pub fn number(self) -> u8 {
        match self {
            Step::Resolve | Step::Hello => 0,
            Step::DeletesToProject => 1,
            Step::DeletesToCompute => 2,
            Step::WritesToProject => 3,
            Step::WritesToCompute => 4,
            Step::Commit => 5,
        }
    }

    /// The step after this one; `None` after the commit.
    pub fn next(self) -> Option<Step> {
        let i = Step::ALL.iter().position(|s| *s == self)?;
        Step::ALL.get(i + 1).copied()
    }

    /// Its name in the compute side's status (`round.step`): `deletes_to_project`, ….
    pub fn name(self) -> &'static str {
        match self {
            Step::Resolve => "resolve",
            Step::Hello => "hello",
            Step::DeletesToProject => "deletes_to_project",
            Step::DeletesToCompute => "deletes_to_compute",
            Step::WritesToProject => "writes_to_project",
            Step::WritesToCompute => "writes_to_compute",
            Step::Commit => "commit",
        }
    }

    /// Its label in the project side's status (`step` of a session): `hello`, `1` … `5`.
    pub fn label(self) -> &'static str {
        match self {
            Step::Resolve => "resolve",
            Step::Hello => "hello",
            Step::DeletesToProject => "1",
            Step::DeletesToCompute => "2",
            Step::WritesToProject => "3",
            Step::WritesToCompute => "4",
            Step::Commit => "5",
        }
    }

    /// The step a request belongs to; `None` for `Ping`, `Fetch`, `Snapshot` and `JournalAt`, which may
    /// come at any time.
    pub fn of(msg: &ClientMsg) -> Option<Step> {
        Some(match msg {
            ClientMsg::WasCommitted { .. } => Step::Resolve,
            ClientMsg::Hello(_) | ClientMsg::HeldList(_) => Step::Hello,
            ClientMsg::Deletes(_) => Step::DeletesToProject,
            ClientMsg::AskDeletes => Step::DeletesToCompute,
            ClientMsg::SendWrites { .. } => Step::WritesToProject,
            ClientMsg::AskWrites { .. } => Step::WritesToCompute,
            ClientMsg::Commit(_) => Step::Commit,
            ClientMsg::Ping { .. } | ClientMsg::Fetch { .. } | ClientMsg::Snapshot { .. } | ClientMsg::JournalAt => {
                return None
            }
        })
    }

    /// The compute side's rule: may step `to` start when the round is at `self`?
    /// Only the next one (or `self` again: the coordinator reports the first step
    /// it is already in).
    pub fn may_start(self, to: Step) -> Result<(), OrderError> {
        if to == self || self.next() == Some(to) {
            Ok(())
        } else {
            Err(OrderError::OutOfOrder { request: to.request_name(), step: to, at: self })
        }
    }

    /// The request that starts this step, named in error messages.
    fn request_name(self) -> &'static str {
        match self {
            Step::Resolve => "WasCommitted",
            Step::Hello => "Hello",
            Step::DeletesToProject => "Deletes",
            Step::DeletesToCompute => "AskDeletes",
            Step::WritesToProject => "SendWrites",
            Step::WritesToCompute => "AskWrites",
            Step::Commit => "Commit",
        }
    }
}

/// Where a round is, as the project side sees its client's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundAt {
    /// No round is open: only `WasCommitted`, `Hello` and `Ping` may come.
    Closed,
    /// A round is open and at `step`; `held_list_due` while the hello reply asked
    /// for the held list and it has not come yet.
    Open { step: Step, held_list_due: bool },
}

/// Why a request may not come now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("{request} (step {}) without an open round: send Hello first", step.label())]
    NoRound { request: &'static str, step: Step },
    #[error("{request} (step {}) out of order: the round is at step {}", step.label(), at.label())]
    OutOfOrder { request: &'static str, step: Step, at: Step },
    #[error("Deletes (step 1) before HeldList: the hello reply asked for the full held list")]
    HeldListDue,
}

impl RoundAt {
    /// The project side's rule: may `msg` come now? `WasCommitted`, `Hello` (which
    /// restarts a round) and `Ping` may always come; `HeldList` only right after
    /// `Hello`; every other request only right after the request of the step
    /// before it, in an open round.
    pub fn admit(self, msg: &ClientMsg) -> Result<(), OrderError> {
        let step = match (Step::of(msg), msg) {
            (None, _) | (_, ClientMsg::WasCommitted { .. } | ClientMsg::Hello(_)) => return Ok(()),
            (Some(step), _) => step,
        };
        let request = match msg {
            ClientMsg::HeldList(_) => "HeldList",
            _ => step.request_name(),
        };
        let RoundAt::Open { step: at, held_list_due } = self else {
            return Err(OrderError::NoRound { request, step });
        };
        // HeldList belongs to the hello step: it comes while the round is there.
        let in_order = if matches!(msg, ClientMsg::HeldList(_)) { at == step } else { at.next() == Some(step) };
        if !in_order {
            return Err(OrderError::OutOfOrder { request, step, at });
        }
        if step == Step::DeletesToProject && held_list_due {
            return Err(OrderError::HeldListDue);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cs_protocol::{ClientId, CommitRequest, HeldDigest, Hello, RelPath};

    use super::*;

    /// One request of each step (`HeldList` besides `Hello`).
    fn request(step: Step) -> ClientMsg {
        match step {
            Step::Resolve => ClientMsg::WasCommitted { round_id: 1 },
            Step::Hello => ClientMsg::Hello(Hello {
                client: ClientId::new("c1").expect("id"),
                protocol: 2,
                cursor: None,
                held_digest: HeldDigest([0; 32]),
                held_count: 0,
                held_added: vec![],
                held_removed: vec![],
                hidden: vec![],
                pull: Default::default(),
                follow: false,
            }),
            Step::DeletesToProject => ClientMsg::Deletes(vec![RelPath::new("a").expect("path")]),
            Step::DeletesToCompute => ClientMsg::AskDeletes,
            Step::WritesToProject => ClientMsg::SendWrites { stream: 1 },
            Step::WritesToCompute => ClientMsg::AskWrites { stream: 2 },
            Step::Commit => ClientMsg::Commit(CommitRequest::default()),
        }
    }

    fn open(step: Step) -> RoundAt {
        RoundAt::Open { step, held_list_due: false }
    }

    #[test]
    fn the_order_numbers_and_labels() {
        let next: Vec<Option<Step>> = Step::ALL.iter().map(|s| s.next()).collect();
        assert_eq!(next[..6], Step::ALL[1..].iter().copied().map(Some).collect::<Vec<_>>()[..]);
        assert_eq!(next[6], None);
        assert_eq!(Step::ALL.map(Step::number), [0, 0, 1, 2, 3, 4, 5]);
        assert_eq!(Step::ALL.map(Step::label)[1..], ["hello", "1", "2", "3", "4", "5"]);
        for s in Step::ALL {
            assert_eq!(Step::of(&request(s)), Some(s));
        }
        assert_eq!(Step::of(&ClientMsg::Ping { sent_ms: 0 }), None);
        assert_eq!(Step::of(&ClientMsg::Fetch { paths: vec![], stream: crate::FETCH_STREAM_BIT }), None);
        assert_eq!(Step::of(&ClientMsg::HeldList(vec![])), Some(Step::Hello));
    }

    #[test]
    fn every_legal_order_is_admitted() {
        // Each request after the one before it, with and without a held list.
        for held_list in [false, true] {
            let mut at = RoundAt::Closed;
            for step in Step::ALL {
                let msg = request(step);
                at.admit(&msg).unwrap_or_else(|e| panic!("{step:?} at {at:?}: {e}"));
                if step == Step::Resolve {
                    continue; // WasCommitted opens nothing.
                }
                at = open(step);
                if step == Step::Hello && held_list {
                    at = RoundAt::Open { step, held_list_due: true };
                    at.admit(&ClientMsg::HeldList(vec![])).expect("held list after hello");
                    at = open(step);
                }
            }
        }
        // WasCommitted, Hello, Ping, Fetch, Snapshot and JournalAt may come anywhere.
        for at in std::iter::once(RoundAt::Closed).chain(Step::ALL.map(open)) {
            let fetch =
                ClientMsg::Fetch { paths: vec![RelPath::new("a").expect("path")], stream: crate::FETCH_STREAM_BIT };
            let snapshot = ClientMsg::Snapshot { stream: crate::FETCH_STREAM_BIT };
            let anytime = [ClientMsg::Ping { sent_ms: 1 }, fetch, snapshot, ClientMsg::JournalAt];
            for msg in [request(Step::Resolve), request(Step::Hello)].into_iter().chain(anytime) {
                assert_eq!(at.admit(&msg), Ok(()), "{msg:?} at {at:?}");
            }
        }
    }

    #[test]
    fn every_out_of_order_request_is_refused_naming_both_steps() {
        for at in Step::ALL {
            for step in &Step::ALL[2..] {
                let msg = request(*step);
                let verdict = open(at).admit(&msg);
                if at.next() == Some(*step) {
                    assert_eq!(verdict, Ok(()));
                    continue;
                }
                let e = verdict.expect_err("out of order");
                let text = e.to_string();
                assert!(
                    text.contains(&format!("(step {})", step.label()))
                        && text.contains(&format!("the round is at step {}", at.label())),
                    "{text}"
                );
            }
            let held = open(at).admit(&ClientMsg::HeldList(vec![]));
            assert_eq!(held.is_ok(), at == Step::Hello, "HeldList at {at:?}: {held:?}");
        }
        // No round open: every step's request but the preamble is refused.
        for step in &Step::ALL[2..] {
            let e = RoundAt::Closed.admit(&request(*step)).expect_err("no round");
            assert!(e.to_string().contains("send Hello first"), "{e}");
        }
        assert!(RoundAt::Closed.admit(&ClientMsg::HeldList(vec![])).is_err());
        // Deletes while the held list is due.
        let due = RoundAt::Open { step: Step::Hello, held_list_due: true };
        assert_eq!(due.admit(&request(Step::DeletesToProject)), Err(OrderError::HeldListDue));
    }

    #[test]
    fn the_compute_side_starts_only_the_next_step() {
        for at in Step::ALL {
            for to in Step::ALL {
                let ok = to == at || at.next() == Some(to);
                let verdict = at.may_start(to);
                assert_eq!(verdict.is_ok(), ok, "{to:?} after {at:?}");
                if let Err(e) = verdict {
                    let text = e.to_string();
                    assert!(text.contains(to.label()) && text.contains(at.label()), "{text}");
                }
            }
        }
    }
}
