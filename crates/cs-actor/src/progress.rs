//! The round in flight as the user sees it: a live bar while `sync --wait`
//! waits on a terminal (plain lines otherwise), and the `progress` line of
//! `status`. Read from the compute service's status (`round.step`,
//! `packer.progress`), polled on a second control connection.

use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use cs_control::{ask, ControlError, Request, Response};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

/// How often `sync --wait` asks for the status.
const POLL: Duration = Duration::from_millis(250);
/// How often a plain line is printed while nothing but the counts changed.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// The round in flight, as far as the status tells.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    pub round: u64,
    pub step_number: u64,
    pub step: String,
    /// Steps 3 and 4 while they stream.
    pub counts: Option<Counts>,
}

/// The step's counts, as the compute service's engine reports them.
pub type Counts = cs_engine::ProgressSnapshot;

/// The compute service's round in flight, if one runs.
pub fn of_status(st: &Value) -> Option<View> {
    let r = &st["round"];
    if r["phase"] != "running" {
        return None;
    }
    let step_number = r["step_number"].as_u64().unwrap_or(0);
    // Another step's counts (or none) are not this step's.
    let counts = serde_json::from_value::<Counts>(st["packer"]["progress"].clone())
        .ok()
        .filter(|c| u64::from(c.step) == step_number);
    Some(View {
        round: r["round"].as_u64().unwrap_or(0),
        step_number,
        step: r["step"].as_str().unwrap_or("?").to_string(),
        counts,
    })
}

/// `round 12 step 3/5 (writes_to_project)`
fn head(v: &View) -> String {
    format!("round {} step {}/5 ({})", v.round, v.step_number, v.step)
}

/// `12 of 300 entries` (files, directories, symlinks; `12 entries` without a total), and whether the other side has it all.
fn files(c: &Counts) -> String {
    let files = match c.entries_total {
        Some(t) => format!("{} of {t} entries", c.entries_done),
        None => format!("{} entries", c.entries_done),
    };
    if c.streaming {
        files
    } else {
        format!("{files} (all read, the other side finishing)")
    }
}

/// The whole view on one line: the plain form, and `status`'s.
pub fn line(v: &View) -> String {
    let Some(c) = &v.counts else { return head(v) };
    let bytes = match c.bytes_total {
        Some(t) => format!("{} of {}", human_bytes(c.bytes_done), human_bytes(t)),
        None => human_bytes(c.bytes_done),
    };
    let eta = c.eta_secs().filter(|_| c.streaming).map(|s| format!(", ETA {s} s")).unwrap_or_default();
    format!("{}: {}, {bytes}, {}/s{eta}", head(v), files(c), human_bytes(c.rate() as u64))
}

/// `status`'s line for the round in flight (empty when none).
pub fn status_line(st: &Value) -> String {
    match of_status(st) {
        Some(v) if v.counts.is_some() => format!("  progress    {}\n", line(&v)),
        _ => String::new(),
    }
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Waits for `answer` (the `sync --wait` request) while showing the round's progress on stderr.
pub async fn while_waiting(
    socket: &Path,
    answer: impl Future<Output = Result<Response, ControlError>>,
) -> Result<Response, ControlError> {
    let mut shown = if std::io::stderr().is_terminal() { Shown::bar() } else { Shown::Lines { last: None } };
    tokio::pin!(answer);
    loop {
        tokio::select! {
            r = &mut answer => {
                shown.finish();
                return r;
            }
            _ = tokio::time::sleep(POLL) => {
                let status = tokio::time::timeout(Duration::from_secs(2), ask(socket, &Request::Status)).await;
                if let Ok(Ok(Response { ok: true, status: Some(st), .. })) = status {
                    if let Some(v) = of_status(&st) {
                        shown.update(&v);
                    }
                }
            }
        }
    }
}

enum Shown {
    /// A terminal: one bar redrawn in place (the bar's own rate and ETA).
    Bar { bar: ProgressBar, step: Option<(u64, u64, bool)> },
    /// Not a terminal: a line per step, and every few seconds while it streams.
    Lines { last: Option<(View, Instant)> },
}

impl Shown {
    fn bar() -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        bar.set_message("waiting for the round to start");
        bar.enable_steady_tick(Duration::from_millis(200));
        Shown::Bar { bar, step: None }
    }

    fn update(&mut self, v: &View) {
        match self {
            Shown::Bar { bar, step } => {
                let total = v.counts.as_ref().and_then(|c| c.bytes_total);
                let this = (v.round, v.step_number, total.is_some());
                if *step != Some(this) {
                    *step = Some(this);
                    bar.reset();
                    let template = if total.is_some() {
                        "{spinner} {msg}, {binary_bytes} of {binary_total_bytes} [{bar:20}] {binary_bytes_per_sec}, ETA {eta}"
                    } else {
                        "{spinner} {msg}, {binary_bytes}, {binary_bytes_per_sec}"
                    };
                    bar.set_style(
                        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_length(total.unwrap_or(0));
                }
                let msg = match &v.counts {
                    Some(c) => format!("{}: {}", head(v), files(c)),
                    None => head(v),
                };
                bar.set_message(msg);
                bar.set_position(v.counts.as_ref().map_or(0, |c| c.bytes_done));
            }
            Shown::Lines { last } => {
                let due = match last {
                    None => true,
                    Some((prev, at)) => {
                        (prev.round, prev.step_number) != (v.round, v.step_number)
                            || (prev != v && at.elapsed() >= LINE_EVERY)
                    }
                };
                if due {
                    eprintln!("{}", line(v));
                    *last = Some((v.clone(), Instant::now()));
                }
            }
        }
    }

    fn finish(&self) {
        if let Shown::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_streaming_step_shows_counts_rate_and_eta() {
        let st = json!({"round": {"phase": "running", "round": 7, "step": "writes_to_project", "step_number": 3},
            "packer": {"progress": {"step": 3, "entries_done": 2, "entries_total": 5,
                                    "bytes_done": 1 << 30, "bytes_total": 3u64 << 30, "elapsed_ms": 10_000}}});
        let v = of_status(&st).unwrap();
        assert_eq!(
            line(&v),
            "round 7 step 3/5 (writes_to_project): 2 of 5 entries, 1.0 GiB of 3.0 GiB, 102.4 MiB/s, ETA 20 s"
        );
        assert!(status_line(&st).starts_with("  progress    round 7 step 3/5"));
    }

    #[test]
    fn step_four_has_no_totals_and_other_steps_no_counts() {
        let st = json!({"round": {"phase": "running", "round": 7, "step": "writes_to_compute", "step_number": 4},
            "packer": {"progress": {"step": 4, "entries_done": 3, "entries_total": null,
                                    "bytes_done": 2048, "bytes_total": null, "elapsed_ms": 1000}}});
        assert_eq!(
            line(&of_status(&st).unwrap()),
            "round 7 step 4/5 (writes_to_compute): 3 entries, 2.0 KiB, 2.0 KiB/s"
        );
        // Read to the end, waiting for the other side: final counts, no ETA.
        let st = json!({"round": {"phase": "running", "round": 7, "step": "writes_to_project", "step_number": 3},
            "packer": {"progress": {"step": 3, "entries_done": 5, "entries_total": 5, "streaming": false,
                                    "bytes_done": 4096, "bytes_total": 4096, "elapsed_ms": 1000}}});
        assert_eq!(
            line(&of_status(&st).unwrap()),
            "round 7 step 3/5 (writes_to_project): 5 of 5 entries (all read, the other side finishing), 4.0 KiB of 4.0 KiB, 4.0 KiB/s"
        );
        // The packer's counts of another step are not this step's.
        let st = json!({"round": {"phase": "running", "round": 7, "step": "commit", "step_number": 5},
            "packer": {"progress": {"step": 4, "entries_done": 3, "bytes_done": 1, "elapsed_ms": 1}}});
        assert_eq!(line(&of_status(&st).unwrap()), "round 7 step 5/5 (commit)");
        assert_eq!(status_line(&st), "");
        assert_eq!(of_status(&json!({"round": {"phase": "idle"}})), None);
    }
}
