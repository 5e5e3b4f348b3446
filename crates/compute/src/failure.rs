//! Why a round failed, classified: the retry policy's input.
//!
//! Errors stay typed up to here ([`RoundError`] and what it wraps: the wire's
//! [`WireError`], the broker's [`ErrorCode`], the engine's `EngineError`);
//! this module decides, in one place, whether trying again can help. The
//! coordinator's machine (`machine.rs`) then applies the policy: a transient
//! failure backs off and retries, a permanent one stops retrying until a
//! person acts (see docs/architecture.md, *Errors*).

use cs_engine::EngineError;
use cs_wire::{ErrorCode, WireError};
use serde::Serialize;

use crate::connection::LinkError;
use crate::packer::PackerError;
use crate::round::RoundError;

/// Whether trying again, unchanged, can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// It can pass by itself: the network, a busy broker, a timeout, a full disk, a bug hit
    /// by one round. Back off and retry.
    Transient,
    /// It will fail the same way until a person changes something: the token, the client
    /// name, the protocol version, the configuration. Stop retrying and say what to do.
    Permanent,
}

/// A failure as the coordinator's machine and the waiting `sync --wait` callers see it:
/// its class, the whole error chain, and (for a permanent one) what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub class: FailureClass,
    pub message: String,
    /// What the user should do (permanent failures).
    pub what_to_do: Option<String>,
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Self {
        Failure { class: FailureClass::Transient, message: message.into(), what_to_do: None }
    }

    pub fn permanent(message: impl Into<String>, what_to_do: impl Into<String>) -> Self {
        Failure { class: FailureClass::Permanent, message: message.into(), what_to_do: Some(what_to_do.into()) }
    }

    pub fn is_permanent(&self) -> bool {
        self.class == FailureClass::Permanent
    }

    /// The failure of a round: its chain as the message, classified by [`classify`].
    pub fn of(e: &RoundError) -> Self {
        let message = cs_supervision::error_chain(e);
        match classify(e) {
            Verdict::Transient => Failure::transient(message),
            Verdict::Permanent(what_to_do) => Failure::permanent(message, what_to_do),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(todo) = &self.what_to_do {
            write!(f, " ({todo})")?;
        }
        Ok(())
    }
}

/// A class, with what to do for a permanent failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Transient,
    Permanent(&'static str),
}

pub const CHECK_TOKEN: &str = "the broker refused the token: check --token-file (and that the broker's --tokens table \
                               has it), then run `cs-actor sync` or restart the service";
const CHECK_FORBIDDEN: &str = "the broker forbids this client: check --id and the broker's configuration, then run \
                               `cs-actor sync` or restart the service";
const CHECK_CLIENT: &str = "the broker refused this client for the request: check that --id is the client the token \
                            belongs to, then run `cs-actor sync` or restart the service";
const CHECK_VERSION: &str = "this compute server and the broker speak different protocol versions: install the same \
                             cs-actor version on both, then restart the service";
const CHECK_TLS: &str = "the TLS setup is unusable: check --server and --ca, then run `cs-actor sync` or restart the \
                         service";
const CHECK_CONFIG: &str = "the connection settings are unusable: check --server, then restart the service";
const CHECK_STATE: &str = "a state file is unreadable: move it away as the message says, then run `cs-actor sync`";

/// The retry policy's one decision: can the same round, tried again, succeed?
pub fn classify(e: &RoundError) -> Verdict {
    match e {
        RoundError::Link(l) => classify_link(l),
        RoundError::Refused { code, .. } => classify_code(*code),
        RoundError::Packer(PackerError::Engine(e)) => classify_engine(e),
        // The packer's worker or mailbox gone, a step out of order, a failpoint, an answer
        // that does not fit the request: nothing the user can fix; a new round starts clean.
        RoundError::Packer(_)
        | RoundError::Mailbox(_)
        | RoundError::Unexpected { .. }
        | RoundError::OutOfOrder(_)
        | RoundError::Failpoint(_) => Verdict::Transient,
    }
}

/// The kind of error that failed a round, for the metrics (`cs_compute_rounds_failed_total`'s
/// `kind` label): which part of the round gave up.
pub fn kind(e: &RoundError) -> &'static str {
    match e {
        RoundError::Link(_) => "link",
        RoundError::Refused { .. } => "refused",
        RoundError::Packer(_) => "packer",
        RoundError::Mailbox(_) => "mailbox",
        RoundError::Unexpected { .. } => "unexpected",
        RoundError::OutOfOrder(_) => "out_of_order",
        RoundError::Failpoint(_) => "failpoint",
    }
}

impl FailureClass {
    /// Its status name (`transient`, `permanent`), also the metrics' `class` label.
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
        }
    }
}

/// A connection failure: permanent when the broker refused who we are (at the
/// websocket upgrade) or the settings cannot work; the network itself is transient.
pub fn classify_link(e: &LinkError) -> Verdict {
    match e {
        LinkError::NotConnected { last: Some(w) } | LinkError::Lost(w) => classify_wire(w),
        LinkError::NotConnected { last: None }
        | LinkError::NoAnswer(_)
        | LinkError::ShuttingDown
        | LinkError::InMemory(_) => Verdict::Transient,
    }
}

pub fn classify_wire(e: &WireError) -> Verdict {
    match e {
        WireError::Rejected { status: 401 } | WireError::Unauthorized(_) => Verdict::Permanent(CHECK_TOKEN),
        WireError::Rejected { status: 403 } => Verdict::Permanent(CHECK_FORBIDDEN),
        // Raised while building the client's TLS setup (an unreadable or empty --ca).
        WireError::Tls(_) => Verdict::Permanent(CHECK_TLS),
        WireError::Config(_) => Verdict::Permanent(CHECK_CONFIG),
        // Refused connections, resets, timeouts, 5xx from a proxy, closed sockets.
        _ => Verdict::Transient,
    }
}

/// The broker's refusal of a request ([`ErrorCode`], as the broker sent it).
pub fn classify_code(code: ErrorCode) -> Verdict {
    match code {
        ErrorCode::Unauthorized => Verdict::Permanent(CHECK_CLIENT),
        ErrorCode::ProtocolVersion => Verdict::Permanent(CHECK_VERSION),
        // Busy: another round of ours is still winding down on the broker. Internal: the
        // broker's disk or a bug. BadRequest, TooLarge: this round's content; the next
        // round's may differ. All can pass.
        ErrorCode::Busy | ErrorCode::Internal | ErrorCode::BadRequest | ErrorCode::TooLarge => Verdict::Transient,
    }
}

/// An engine failure on this machine: I/O (a full disk, a file that vanished) can pass;
/// a corrupt state file stays corrupt until moved away.
pub fn classify_engine(e: &EngineError) -> Verdict {
    match e {
        EngineError::CorruptState { .. } => Verdict::Permanent(CHECK_STATE),
        _ => Verdict::Transient,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::machine::Step;

    fn link(w: WireError) -> RoundError {
        RoundError::Link(LinkError::NotConnected { last: Some(Arc::new(w)) })
    }

    #[test]
    fn a_refused_token_is_permanent_and_says_to_check_it() {
        let f = Failure::of(&link(WireError::Rejected { status: 401 }));
        assert_eq!(f.class, FailureClass::Permanent);
        assert!(f.message.contains("401"), "{f}");
        assert!(f.what_to_do.as_deref().is_some_and(|t| t.contains("--token-file")), "{f}");
        assert!(Failure::of(&link(WireError::Rejected { status: 403 })).is_permanent());
    }

    #[test]
    fn a_protocol_version_or_client_refusal_is_permanent() {
        for code in [ErrorCode::ProtocolVersion, ErrorCode::Unauthorized] {
            let e = RoundError::Refused { step: Step::Hello, code, message: "no".into() };
            assert!(Failure::of(&e).is_permanent(), "{code:?}");
        }
        let e = RoundError::Refused { step: Step::Hello, code: ErrorCode::ProtocolVersion, message: "v3".into() };
        assert!(Failure::of(&e).message.contains("ProtocolVersion: v3"), "{}", Failure::of(&e).message);
    }

    #[test]
    fn the_network_a_busy_broker_and_io_are_transient() {
        let refused = std::io::Error::from_raw_os_error(libc_econnrefused());
        let transient = [
            link(WireError::Io(refused)),
            link(WireError::Closed),
            link(WireError::Rejected { status: 502 }),
            link(WireError::Timeout { what: "connecting", after: Duration::from_secs(20) }),
            RoundError::Link(LinkError::NotConnected { last: None }),
            RoundError::Link(LinkError::NoAnswer(Duration::from_secs(120))),
            RoundError::Link(LinkError::Lost(Arc::new(WireError::Closed))),
            RoundError::Refused { step: Step::Hello, code: ErrorCode::Busy, message: "round in progress".into() },
            RoundError::Refused { step: Step::Commit, code: ErrorCode::Internal, message: "disk full".into() },
            RoundError::Packer(PackerError::Engine(EngineError::Io {
                op: "write",
                path: "/upper/a".into(),
                source: std::io::Error::from_raw_os_error(28),
            })),
            RoundError::Packer(PackerError::NoRound),
        ];
        for e in &transient {
            assert_eq!(Failure::of(e).class, FailureClass::Transient, "{e}");
        }
    }

    #[test]
    fn the_os_error_survives_into_the_message() {
        let e = link(WireError::Io(std::io::Error::from_raw_os_error(libc_econnrefused())));
        let f = Failure::of(&e);
        assert!(f.message.contains("not connected to the broker"), "{}", f.message);
        assert!(f.message.to_lowercase().contains("connection refused"), "{}", f.message);
    }

    #[test]
    fn class_names_are_the_status_names() {
        for c in [FailureClass::Transient, FailureClass::Permanent] {
            assert_eq!(serde_json::to_value(c).expect("json"), serde_json::json!(c.name()));
        }
    }

    #[test]
    fn a_corrupt_state_file_is_permanent() {
        let e = RoundError::Packer(PackerError::Engine(EngineError::CorruptState {
            path: "/state/manifest".into(),
            reason: "bad magic".into(),
        }));
        assert!(Failure::of(&e).is_permanent());
    }

    /// ECONNREFUSED on Linux.
    fn libc_econnrefused() -> i32 {
        111
    }
}
