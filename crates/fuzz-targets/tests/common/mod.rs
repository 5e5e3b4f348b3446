//! The time-bounded proptest driver shared by the fuzz tests.
#![allow(dead_code)]

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Seconds each target runs: `CS_FUZZ_SECS`, default 10.
pub fn budget() -> Duration {
    let secs = std::env::var("CS_FUZZ_SECS").ok().and_then(|s| s.parse::<f64>().ok()).unwrap_or(10.0);
    Duration::from_secs_f64(secs.max(0.0))
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Panics of a target under test are expected while searching and
/// shrinking: keep them off the output (other threads' panics still print).
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs `f`, catching a panic without printing it: `Err(message)`.
pub fn quietly<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let res = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    res.map_err(|p| panic_message(&*p))
}

/// Runs `target(input)`; `Some(message)` if it panicked.
pub fn fails(target: fn(&[u8]), input: &[u8]) -> Option<String> {
    quietly(|| target(input)).err()
}

fn seed() -> u64 {
    match std::env::var("CS_FUZZ_SEED") {
        Ok(s) => s.parse().expect("CS_FUZZ_SEED must be a u64"),
        Err(_) => SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Where a failing input is saved (outside the source tree).
fn failure_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures")
}

/// Runs `target` on inputs from `strategy` until the time budget
/// (`CS_FUZZ_SECS`) or `max_cases` (scaled up with budgets over 10 s) is
/// used up. On a failure, shrinks the input with proptest's
/// value tree, saves it and panics with the minimal input in hex and the
/// seed (`CS_FUZZ_SEED` reproduces the run). Returns the number of cases.
pub fn drive<S>(name: &str, strategy: S, target: fn(&[u8]), max_cases: u64) -> u64
where
    S: Strategy<Value = Vec<u8>>,
{
    // The case count caps a default run; a longer budget scales it.
    let budget = budget();
    let scale = (budget.as_secs_f64() / 10.0).max(1.0);
    drive_for(name, strategy, target, (max_cases as f64 * scale) as u64, budget)
}

/// [`drive`] with an explicit time budget.
pub fn drive_for<S>(name: &str, strategy: S, target: fn(&[u8]), max_cases: u64, budget: Duration) -> u64
where
    S: Strategy<Value = Vec<u8>>,
{
    let seed = seed();
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config { failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let start = Instant::now();
    let mut cases = 0u64;
    let mut bytes = 0usize;
    while cases < max_cases && (cases == 0 || start.elapsed() < budget) {
        let mut tree = strategy.new_tree(&mut runner).expect("generating an input");
        let input = tree.current();
        bytes += input.len();
        cases += 1;
        let Some(first) = fails(target, &input) else {
            continue;
        };

        // Shrink: simplify while it still fails, complicate when it passes.
        let (mut minimal, mut message) = (input, first);
        let shrink_start = Instant::now();
        let mut steps = 0;
        if tree.simplify() {
            while steps < 5000 && shrink_start.elapsed() < Duration::from_secs(120) {
                steps += 1;
                let cur = tree.current();
                match fails(target, &cur) {
                    Some(m) => {
                        minimal = cur;
                        message = m;
                        if !tree.simplify() {
                            break;
                        }
                    }
                    None => {
                        if !tree.complicate() {
                            break;
                        }
                    }
                }
            }
        }
        let dir = failure_dir();
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{name}-{seed}.bin"));
        let _ = std::fs::write(&file, &minimal);
        let shown = &minimal[..minimal.len().min(4096)];
        panic!(
            "fuzz target {name} failed after {cases} cases (seed {seed}, {steps} shrink steps): {message}\n\
             minimal input ({} bytes, saved to {}):\n{}\n\
             lossy: {:?}",
            minimal.len(),
            file.display(),
            hex(shown),
            String::from_utf8_lossy(shown),
        );
    }
    eprintln!("fuzz {name}: {cases} cases, {bytes} input bytes in {:.1}s (seed {seed})", start.elapsed().as_secs_f64());
    cases
}
