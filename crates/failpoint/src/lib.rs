//! Failpoints: named places in the compute service's round where a fault test makes the
//! process die, stall or fail, deterministically.
//!
//! A failpoint is armed by the environment variable `CS_FAILPOINTS`, read once per process:
//!
//! ```text
//! CS_FAILPOINTS='after-hello=kill'
//! CS_FAILPOINTS='mid-writes-to-project=2*sleep(3000);after-commit=error'
//! ```
//!
//! Grammar: `spec := entry (';' entry)*`, `entry := NAME '=' [N '*'] ACTION`, with
//!
//! | action | effect when the failpoint fires |
//! |---|---|
//! | `kill` | `SIGKILL` to the process itself (as `kill -9`: no destructor, no flush, no unmount) |
//! | `exit` | `exit(1)` at once (no destructor runs either) |
//! | `sleep(MS)` | the caller waits `MS` milliseconds, then goes on (a test cuts the link meanwhile) |
//! | `error` | the caller fails its step with an error naming the failpoint |
//!
//! `N*` (N ≥ 1) fires on the N-th hit of that failpoint only (counted per process); without
//! it, every hit fires. Every firing is logged to stderr as
//! `cs-failpoint: NAME fired (hit K): ACTION` before it acts, so a test can wait for it.
//! Whitespace around entries, names and actions is ignored; an empty variable arms nothing.
//! A spec that does not parse, or names a failpoint that does not exist, is an error
//! ([`check`]); the compute service calls [`check`] at start-up and refuses to start. A
//! [`hit`] on a bad spec aborts the process.
//!
//! When `CS_FAILPOINTS` is unset (production), [`hit`] costs one atomic load: the parsed
//! spec lives in a [`OnceLock`], initialised at the first call.
//!
//! # The failpoints ([`NAMES`])
//!
//! In the compute service's round (`crates/compute/src/round.rs`, the engine's
//! `ComputeSide` for `mid-writes-to-compute`), in round order:
//!
//! | name | where |
//! |---|---|
//! | `after-hello` | P answered the hello (and the held list, if it asked for it) |
//! | `after-deletes-to-project` | step 1 done: P answered the deletes, C removed the processed whiteouts |
//! | `after-deletes-to-compute` | step 2 done: C applied P's deletes |
//! | `mid-writes-to-project` | step 3: the first bytes of the outbound tar stream were handed to the connection, the stream not finished (hit in every round: even an empty stream has bytes) |
//! | `after-writes-to-project` | step 3 done: P answered that it applied the stream |
//! | `mid-writes-to-compute` | step 4: at least one entry of P's stream is in place in the upper layer, the next entry's header has arrived, its data and the rest of the stream are not read yet (hit only in a round where P's stream has an entry after an applied one; at most once per round) |
//! | `after-writes-to-compute` | step 4 done: stream applied, P's cursor received |
//! | `before-commit-request` | step 5: C's pending manifest is written, the commit request not sent yet |
//! | `after-project-commit` | step 5: P answered that it committed; C's manifest is not written yet (the pending manifest is) |
//! | `after-commit` | step 5 done: C's manifest written, the round counts |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that arms failpoints.
pub const ENV: &str = "CS_FAILPOINTS";

/// Every failpoint there is, in round order (see the crate docs).
pub const NAMES: &[&str] = &[
    "after-hello",
    "after-deletes-to-project",
    "after-deletes-to-compute",
    "mid-writes-to-project",
    "after-writes-to-project",
    "mid-writes-to-compute",
    "after-writes-to-compute",
    "before-commit-request",
    "after-project-commit",
    "after-commit",
];

/// What a failpoint does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kill,
    Exit,
    Sleep(Duration),
    Error,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Kill => f.write_str("kill"),
            Action::Exit => f.write_str("exit"),
            Action::Sleep(d) => write!(f, "sleep({})", d.as_millis()),
            Action::Error => f.write_str("error"),
        }
    }
}

/// One armed failpoint.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    /// Fire on this hit only (1-based); `None`: on every hit.
    pub nth: Option<u64>,
    pub action: Action,
    hits: AtomicU64,
}

/// A parsed `CS_FAILPOINTS`.
#[derive(Debug, Default)]
pub struct Spec {
    pub entries: Vec<Entry>,
}

/// A `CS_FAILPOINTS` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The whole value.
    pub spec: String,
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad {ENV} spec {:?}: {}", self.spec, self.reason)
    }
}

impl std::error::Error for SpecError {}

/// A failpoint fired with the `error` action: the step fails with this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailpointError {
    pub name: String,
}

impl fmt::Display for FailpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "failpoint {} fired (injected error)", self.name)
    }
}

impl std::error::Error for FailpointError {}

/// What the caller must do after [`eval`]: `kill` and `exit` never return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fired {
    /// Not armed, or not this hit.
    No,
    /// Wait this long (asynchronously, if the caller is async), then go on.
    Sleep(Duration),
    /// Fail the step.
    Error(FailpointError),
}

impl Spec {
    /// Parses a `CS_FAILPOINTS` value.
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        let err = |reason: String| SpecError { spec: text.to_string(), reason };
        let mut entries: Vec<Entry> = Vec::new();
        for part in text.split(';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, action) =
                part.split_once('=').ok_or_else(|| err(format!("entry {part:?} is not NAME=ACTION")))?;
            let name = name.trim();
            if !NAMES.contains(&name) {
                return Err(err(format!("unknown failpoint {name:?} (known: {})", NAMES.join(", "))));
            }
            if entries.iter().any(|e| e.name == name) {
                return Err(err(format!("failpoint {name:?} is named twice")));
            }
            let action = action.trim();
            let (nth, action) = match action.split_once('*') {
                Some((n, a)) => {
                    let n: u64 = n
                        .trim()
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| err(format!("{name}: count {n:?} is not a whole number ≥ 1")))?;
                    (Some(n), a.trim())
                }
                None => (None, action),
            };
            let action = parse_action(action).map_err(|r| err(format!("{name}: {r}")))?;
            entries.push(Entry { name: name.to_string(), nth, action, hits: AtomicU64::new(0) });
        }
        Ok(Spec { entries })
    }

    /// Counts a hit of `name`; the action if this hit fires.
    pub fn hit(&self, name: &str) -> Option<(u64, Action)> {
        let e = self.entries.iter().find(|e| e.name == name)?;
        let k = e.hits.fetch_add(1, Ordering::Relaxed) + 1;
        match e.nth {
            Some(n) if n != k => None,
            _ => Some((k, e.action)),
        }
    }
}

fn parse_action(a: &str) -> Result<Action, String> {
    match a {
        "kill" => return Ok(Action::Kill),
        "exit" => return Ok(Action::Exit),
        "error" => return Ok(Action::Error),
        _ => {}
    }
    if let Some(ms) = a.strip_prefix("sleep(").and_then(|r| r.strip_suffix(')')) {
        let ms: u64 = ms.trim().parse().map_err(|_| format!("sleep({ms}): not a number of milliseconds"))?;
        return Ok(Action::Sleep(Duration::from_millis(ms)));
    }
    Err(format!("unknown action {a:?} (kill, exit, sleep(MS), error, optionally N*ACTION)"))
}

static SPEC: OnceLock<Result<Option<Spec>, SpecError>> = OnceLock::new();

fn spec() -> &'static Result<Option<Spec>, SpecError> {
    SPEC.get_or_init(|| match std::env::var(ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => {
            Err(SpecError { spec: v.to_string_lossy().into_owned(), reason: "not UTF-8".into() })
        }
        Ok(v) => Spec::parse(&v).map(|s| (!s.entries.is_empty()).then_some(s)),
    })
}

/// Parses `CS_FAILPOINTS` (once) and says whether it is valid: call it at start-up and
/// refuse to start on an error. Returns the armed entries as `NAME=ACTION` strings.
pub fn check() -> Result<Vec<String>, SpecError> {
    match spec() {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(s)) => Ok(s
            .entries
            .iter()
            .map(|e| match e.nth {
                Some(n) => format!("{}={n}*{}", e.name, e.action),
                None => format!("{}={}", e.name, e.action),
            })
            .collect()),
        Err(e) => Err(e.clone()),
    }
}

/// Whether `CS_FAILPOINTS` arms `name` at all (counts no hit). For a caller that prepares a
/// failpoint (flushes a stream so that its bytes are out before the hit), never in production.
#[inline]
pub fn armed(name: &str) -> bool {
    matches!(spec(), Ok(Some(s)) if s.entries.iter().any(|e| e.name == name))
}

/// Counts a hit of failpoint `name` and acts if it fires: `kill` and `exit` end the process
/// here; `sleep` and `error` are returned for the caller to carry out (an async caller sleeps
/// without blocking its thread). Unarmed: one atomic load.
#[inline]
pub fn eval(name: &str) -> Fired {
    match spec() {
        Ok(None) => Fired::No,
        Ok(Some(s)) => fire(s, name),
        Err(e) => {
            eprintln!("cs-failpoint: {e}; aborting");
            std::process::abort();
        }
    }
}

#[cold]
fn fire(s: &Spec, name: &str) -> Fired {
    debug_assert!(NAMES.contains(&name), "failpoint {name:?} is not in cs_failpoint::NAMES");
    let Some((k, action)) = s.hit(name) else { return Fired::No };
    eprintln!("cs-failpoint: {name} fired (hit {k}): {action}");
    match action {
        Action::Kill => {
            let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
            // The signal is delivered before kill(2) returns to a single-threaded caller;
            // other threads may run a moment longer: never go on.
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Action::Exit => std::process::exit(1),
        Action::Sleep(d) => Fired::Sleep(d),
        Action::Error => Fired::Error(FailpointError { name: name.to_string() }),
    }
}

/// [`eval`] for synchronous callers: sleeps on this thread; `Err` for the `error` action.
#[inline]
pub fn hit(name: &str) -> Result<(), FailpointError> {
    match eval(name) {
        Fired::No => Ok(()),
        Fired::Sleep(d) => {
            std::thread::sleep(d);
            Ok(())
        }
        Fired::Error(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, Option<u64>, Action) {
        let s = Spec::parse(text).unwrap();
        assert_eq!(s.entries.len(), 1);
        let e = &s.entries[0];
        (e.name.clone(), e.nth, e.action)
    }

    #[test]
    fn parses_every_action() {
        assert_eq!(one("after-hello=kill"), ("after-hello".into(), None, Action::Kill));
        assert_eq!(one("after-commit=exit"), ("after-commit".into(), None, Action::Exit));
        assert_eq!(one("after-commit=error"), ("after-commit".into(), None, Action::Error));
        assert_eq!(
            one(" mid-writes-to-project = sleep( 250 ) "),
            ("mid-writes-to-project".into(), None, Action::Sleep(Duration::from_millis(250)))
        );
        assert_eq!(one("after-hello=2*kill"), ("after-hello".into(), Some(2), Action::Kill));
        assert_eq!(
            one("after-hello= 3 * sleep(10)"),
            ("after-hello".into(), Some(3), Action::Sleep(Duration::from_millis(10)))
        );
    }

    #[test]
    fn parses_several_and_ignores_empty_entries() {
        let s = Spec::parse("after-hello=kill;;after-commit=2*error;").unwrap();
        let names: Vec<&str> = s.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["after-hello", "after-commit"]);
        assert!(Spec::parse("").unwrap().entries.is_empty());
        assert!(Spec::parse(" ; ").unwrap().entries.is_empty());
    }

    #[test]
    fn bad_specs_are_errors_naming_the_spec() {
        for (bad, why) in [
            ("after-hello", "not NAME=ACTION"),
            ("after-helo=kill", "unknown failpoint \"after-helo\""),
            ("after-hello=explode", "unknown action \"explode\""),
            ("after-hello=sleep(x)", "not a number"),
            ("after-hello=sleep(10", "unknown action"),
            ("after-hello=0*kill", "count"),
            ("after-hello=-1*kill", "count"),
            ("after-hello=two*kill", "count"),
            ("after-hello=kill;after-hello=exit", "named twice"),
            ("after-hello=", "unknown action \"\""),
        ] {
            let e = Spec::parse(bad).expect_err(bad);
            assert_eq!(e.spec, bad);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg} does not name the spec");
            assert!(msg.contains("CS_FAILPOINTS"), "{msg}");
            assert!(msg.contains(why), "{bad}: {msg} does not say {why:?}");
        }
    }

    #[test]
    fn count_fires_on_the_nth_hit_only() {
        let s = Spec::parse("after-hello=3*error").unwrap();
        let fired: Vec<bool> = (0..5).map(|_| s.hit("after-hello").is_some()).collect();
        assert_eq!(fired, [false, false, true, false, false]);
        let s = Spec::parse("after-hello=error").unwrap();
        assert!((0..3).all(|_| s.hit("after-hello").is_some()));
        assert_eq!(s.hit("after-commit"), None, "an unarmed name never fires");
    }

    #[test]
    fn error_names_the_failpoint() {
        let e = FailpointError { name: "after-hello".into() };
        assert!(e.to_string().contains("after-hello"));
    }

    #[test]
    fn unset_variable_arms_nothing() {
        // The test harness does not set CS_FAILPOINTS.
        if std::env::var_os(ENV).is_none() {
            assert_eq!(check(), Ok(Vec::new()));
            assert_eq!(eval("after-hello"), Fired::No);
            assert_eq!(hit("after-commit"), Ok(()));
        }
    }
}
