//! Results, and the Markdown tables made of them.

use serde::{Deserialize, Serialize};

use crate::util::median;

/// The samples of one cell (one test, one RTT, one setup).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cell {
    /// Seconds, one per completed run.
    pub samples: Vec<f64>,
    /// Bytes on the wire per completed run, where measured.
    pub bytes: Vec<u64>,
    /// A run killed at the deadline: how long it had run (a lower bound).
    pub timed_out: Option<f64>,
    /// For a timed-out run whose progress is known: elapsed × total / done.
    pub estimate: Option<f64>,
    /// Runs that failed (the cell goes on with the next run, up to two failures).
    pub failures: Vec<String>,
    /// Why this cell has no sample at all.
    pub error: Option<String>,
    /// Anything else worth saying (e.g. git status not clean).
    pub notes: Vec<String>,
}

impl Cell {
    pub fn median(&self) -> Option<f64> {
        (!self.samples.is_empty()).then(|| median(&self.samples))
    }

    /// The number to compare with: the median, else the estimate, else the lower bound.
    pub fn value(&self) -> Option<(f64, Bound)> {
        if let Some(m) = self.median() {
            return Some((m, Bound::Exact));
        }
        if let Some(e) = self.estimate {
            return Some((e, Bound::Estimate));
        }
        self.timed_out.map(|t| (t, Bound::Lower))
    }

    /// `1.23 s (1.20–1.31)`, `> 120 s (~900 s)`, `error`.
    pub fn render(&self) -> String {
        if let Some(m) = self.median() {
            let n = self.samples.len();
            let lo = self.samples.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = self.samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut s = if n == 1 {
                format!("{} s (n=1)", secs(m))
            } else {
                format!("{} s ({}–{})", secs(m), secs(lo), secs(hi))
            };
            if n == 2 {
                s.push_str(" n=2");
            }
            if !self.failures.is_empty() {
                s.push_str(&format!("; {} run(s) failed", self.failures.len()));
            }
            if let Some(t) = self.timed_out {
                s.push_str(&format!("; a run > {} s", secs(t)));
            }
            return s;
        }
        if let Some(t) = self.timed_out {
            return match self.estimate {
                Some(e) => format!("> {} s (~{} s)", secs(t), secs(e)),
                None => format!("> {} s", secs(t)),
            };
        }
        if self.error.is_some() {
            return "error".into();
        }
        "—".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Exact,
    Estimate,
    Lower,
}

/// Seconds with sensible precision.
pub fn secs(v: f64) -> String {
    if v < 0.1 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

pub fn ratio(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}×")
    } else if v < 100.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.0}×")
    }
}

pub fn kib(bytes: f64) -> String {
    if bytes < 1024.0 * 10.0 {
        format!("{:.1} KiB", bytes / 1024.0)
    } else if bytes < 1024.0 * 1024.0 * 10.0 {
        format!("{:.0} KiB", bytes / 1024.0)
    } else {
        format!("{:.0} MiB", bytes / 1024.0 / 1024.0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// "W1" … "W5", "S1 C→P", …
    pub test: String,
    pub rtt_ms: u64,
    /// "local", "union-local", "overlay-local", "fuse-overlayfs-local", "sshfs", "cs-actor",
    /// "cs-actor-overlay", "rsync", "tar", "unison".
    pub column: String,
    pub cell: Cell,
}

/// One idle round of S3.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S3Round {
    pub wall_ms: f64,
    /// The round's own duration as the service reports it.
    pub round_ms: f64,
    pub cpu_compute_ms: f64,
    pub cpu_project_ms: f64,
    /// Broker link, both directions.
    pub wire_bytes: u64,
    /// sshfs link (the lower) during the round, both directions.
    pub sshfs_bytes: u64,
}

/// A window with no request at all: what the services do by themselves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Quiet {
    pub secs: f64,
    pub rounds: u64,
    pub cpu_compute_ms: f64,
    pub cpu_project_ms: f64,
    pub wire_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S3Result {
    pub rtt_ms: u64,
    pub files: usize,
    pub held: usize,
    pub rounds: Vec<S3Round>,
    /// Rounds nobody asked for that ran inside the measuring windows.
    pub extra_rounds: usize,
    pub quiet: Option<Quiet>,
    pub rss_compute_kib: Option<u64>,
    pub rss_project_kib: Option<u64>,
    pub error: Option<String>,
}

/// One run of S4: a first start and a restart of the compute service with the replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S4Run {
    /// From the spawn to the merged view listing the project's root: the placeholder tree
    /// is complete then (the union is mounted only after it), so this is also the time to
    /// complete metadata.
    pub listed_s: Option<f64>,
    /// From the spawn to the first round committed.
    pub round_s: Option<f64>,
    /// The same on a restart (the previous tree there, a new snapshot taken).
    pub restart_listed_s: Option<f64>,
    pub restart_round_s: Option<f64>,
    /// 3 s after the first start's first round.
    pub rss_compute_kib: Option<u64>,
    /// The fill holder (`cs-actor fill-holder`, the service's child).
    pub rss_holder_kib: Option<u64>,
    pub rss_project_kib: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct S4Result {
    pub rtt_ms: u64,
    pub files: usize,
    pub runs: Vec<S4Run>,
    pub error: Option<String>,
}

impl S4Result {
    /// The median of one measure over the runs that have it.
    pub fn median_of(&self, get: impl Fn(&S4Run) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.runs.iter().filter_map(get).collect();
        (!v.is_empty()).then(|| median(&v))
    }

    /// `1.23 (1.20–1.31)` seconds over the runs, or `—`.
    fn render(&self, get: impl Fn(&S4Run) -> Option<f64>) -> String {
        let v: Vec<f64> = self.runs.iter().filter_map(get).collect();
        if v.is_empty() {
            return "—".into();
        }
        let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("{} ({}–{})", secs(median(&v)), secs(lo), secs(hi))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rss {
    pub rtt_ms: u64,
    /// The setup: "cs-actor" (unionfs-fuse) or "cs-actor-overlay".
    #[serde(default)]
    pub column: String,
    pub compute_idle_kib: Option<u64>,
    pub project_idle_kib: Option<u64>,
    pub compute_peak_s1_kib: Option<u64>,
    pub project_peak_s1_kib: Option<u64>,
    /// The union and sshfs processes (not the service's own memory, for reference).
    pub unionfs_kib: Option<u64>,
    pub sshfs_kib: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    pub command: String,
    pub date: String,
    pub machine: String,
    pub load_start: String,
    pub load_end: String,
    pub tools: Vec<(String, String)>,
    pub runs: usize,
    pub sizes: Vec<(String, String)>,
    pub duration_s: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub meta: Meta,
    pub entries: Vec<Entry>,
    pub s3: Vec<S3Result>,
    #[serde(default)]
    pub s4: Vec<S4Result>,
    pub rss: Vec<Rss>,
    pub notes: Vec<String>,
    pub rtts: Vec<u64>,
}

pub const WORKLOADS: [(&str, &str); 5] = [
    ("W1", "compile: `make -j2` + `make clean`"),
    ("W2", "`git clone --no-hardlinks` + `git status`"),
    ("W3", "`pip install --target ~/.local` (local wheelhouse)"),
    ("W4", "read 4–64 KiB files, three passes"),
    ("W5", "`git status` + `find` in a project-side repo"),
];

pub const SYNC_TESTS: [&str; 4] = ["S1 C→P", "S1 P→C", "S2 C→P", "S2 P→C"];

/// W4's first pass alone (cold: what a first read costs), one sample per run, a cell of its
/// own beside W4's total; column `tar` holds its reference (`tar | zstd | ssh` carrying the
/// same files over the same link).
pub const W4_PASS1: &str = "W4 pass 1";
/// W4's second and third passes together (warm), one sample per run.
pub const W4_WARM: &str = "W4 passes 2–3";
/// The setups whose W4 passes the pass table and issue 12's W4 targets compare.
const CS_ACTOR_SETUPS: [&str; 3] = ["cs-actor", "cs-actor-overlay", "cs-actor-replica"];

impl Results {
    pub fn cell(&self, test: &str, rtt: u64, column: &str) -> Option<&Cell> {
        // RTT-independent columns are measured once and stored at RTT u64::MAX.
        self.entries
            .iter()
            .find(|e| e.test == test && e.column == column && (e.rtt_ms == rtt || e.rtt_ms == u64::MAX))
            .map(|e| &e.cell)
    }

    pub fn cell_mut(&mut self, test: &str, rtt: u64, column: &str) -> &mut Cell {
        if let Some(i) = self.entries.iter().position(|e| e.test == test && e.column == column && e.rtt_ms == rtt) {
            return &mut self.entries[i].cell;
        }
        self.entries.push(Entry { test: test.into(), rtt_ms: rtt, column: column.into(), cell: Cell::default() });
        &mut self.entries.last_mut().expect("just pushed").cell
    }

    pub fn errors(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| e.cell.error.as_ref().map(|er| format!("{} {} at {} ms: {er}", e.test, e.column, e.rtt_ms)))
            .collect();
        v.extend(self.s3.iter().filter_map(|s| s.error.as_ref().map(|e| format!("S3 at {} ms: {e}", s.rtt_ms))));
        v.extend(self.s4.iter().filter_map(|s| s.error.as_ref().map(|e| format!("S4 at {} ms: {e}", s.rtt_ms))));
        v
    }

    /// The union alone, one column per backend, over the same local lower: the measurement
    /// docs/union.md chooses on. Printed only when a candidate besides unionfs-fuse ran.
    fn union_backends_table(&self, o: &mut String) {
        const BACKENDS: [(&str, &str); 3] = [
            ("union-local", "unionfs-fuse"),
            ("overlay-local", "kernel overlayfs"),
            ("fuse-overlayfs-local", "fuse-overlayfs"),
        ];
        let rtt = u64::MAX;
        let ran = |col: &str| WORKLOADS.iter().any(|(w, _)| self.cell(w, rtt, col).is_some());
        if !ran("overlay-local") && !ran("fuse-overlayfs-local") {
            return;
        }
        o.push_str("\n### The union over a local lower, by backend: seconds, median (min–max), and / local disk\n\n");
        o.push_str("| workload | local disk |");
        for (_, name) in BACKENDS {
            o.push_str(&format!(" {name} | / local |"));
        }
        o.push_str("\n|---|---|");
        o.push_str(&"---|---|".repeat(BACKENDS.len()));
        o.push('\n');
        for (w, desc) in WORKLOADS {
            if self.cell(w, rtt, "local").is_none() {
                continue;
            }
            let local = self.val(w, rtt, "local");
            o.push_str(&format!("| {w} {desc} | {} |", self.cell_text(w, rtt, "local")));
            for (col, _) in BACKENDS {
                o.push_str(&format!(
                    " {} | {} |",
                    self.cell_text(w, rtt, col),
                    self.ratio_text(self.val(w, rtt, col), local)
                ));
            }
            o.push('\n');
        }
    }

    /// cs-actor with each union backend over the same sshfs lower and link: the measurement
    /// that decides the default backend. Printed only when `cs-actor-overlay` ran.
    fn cs_actor_backends_table(&self, o: &mut String) {
        if !self.entries.iter().any(|e| e.column == "cs-actor-overlay" && WORKLOADS.iter().any(|(w, _)| *w == e.test)) {
            return;
        }
        o.push_str(
            "\n### cs-actor by union backend (sshfs lower, same link): seconds, median (min–max), and / local disk\n\n",
        );
        o.push_str("| workload | RTT | local disk | cs-actor, unionfs-fuse | / local | cs-actor, overlayfs | / local | overlayfs / unionfs-fuse |\n");
        o.push_str("|---|---|---|---|---|---|---|---|\n");
        for (w, desc) in WORKLOADS {
            for &rtt in &self.rtts {
                if self.cell(w, rtt, "cs-actor").is_none() && self.cell(w, rtt, "cs-actor-overlay").is_none() {
                    continue;
                }
                let local = self.val(w, rtt, "local");
                let (fuse, ovl) = (self.val(w, rtt, "cs-actor"), self.val(w, rtt, "cs-actor-overlay"));
                o.push_str(&format!(
                    "| {w} {desc} | {rtt} ms | {} | {} | {} | {} | {} | {} |\n",
                    self.cell_text(w, rtt, "local"),
                    self.cell_text(w, rtt, "cs-actor"),
                    self.ratio_text(fuse, local),
                    self.cell_text(w, rtt, "cs-actor-overlay"),
                    self.ratio_text(ovl, local),
                    self.ratio_text(ovl, fuse),
                ));
            }
        }
    }

    /// cs-actor over the project's replica against cs-actor over sshfs, both with overlayfs,
    /// same link (issue 12's targets: W against local disk, S against rsync). Printed only
    /// when `cs-actor-replica` ran.
    fn replica_table(&self, o: &mut String) {
        if !self.entries.iter().any(|e| e.column == "cs-actor-replica") {
            return;
        }
        o.push_str("\n### cs-actor over the replica against the sshfs lower (overlayfs, same link): seconds, median (min–max)\n\n");
        o.push_str("| test | RTT | local disk | cs-actor, sshfs lower | / local | cs-actor, replica | / local | replica / sshfs lower | rsync -a | replica / rsync |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        let rows =
            WORKLOADS.iter().map(|(w, d)| (*w, d.to_string())).chain(SYNC_TESTS.iter().map(|t| (*t, String::new())));
        for (t, desc) in rows {
            for &rtt in &self.rtts {
                if self.cell(t, rtt, "cs-actor-replica").is_none() {
                    continue;
                }
                let local = self.val(t, rtt, "local");
                let (ovl, rep, rsync) = (
                    self.val(t, rtt, "cs-actor-overlay"),
                    self.val(t, rtt, "cs-actor-replica"),
                    self.val(t, rtt, "rsync"),
                );
                let name = if desc.is_empty() { describe_sync(t, &self.meta) } else { format!("{t} {desc}") };
                o.push_str(&format!(
                    "| {name} | {rtt} ms | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    self.cell_text(t, rtt, "local"),
                    self.cell_text(t, rtt, "cs-actor-overlay"),
                    self.ratio_text(ovl, local),
                    self.cell_text(t, rtt, "cs-actor-replica"),
                    self.ratio_text(rep, local),
                    self.ratio_text(rep, ovl),
                    self.cell_text(t, rtt, "rsync"),
                    self.ratio_text(rep, rsync),
                ));
            }
        }
    }

    /// W4 by pass, per RTT and cs-actor setup, with issue 12's two ratios: passes 2–3 against
    /// local disk's, pass 1 against `tar | zstd | ssh` carrying the same files. Printed only
    /// when a pass was recorded (or the tar reference ran).
    fn w4_pass_table(&self, o: &mut String) {
        if !self.entries.iter().any(|e| e.test == W4_PASS1 || e.test == W4_WARM) {
            return;
        }
        o.push_str("\n### W4 by pass: seconds, median (min–max), against local disk and `tar | zstd | ssh`\n\n");
        o.push_str(
            "Pass 1 is the first read of the run's files; passes 2–3 are the second and third together. The tar \
             column carries the same files (each run's set) from the project to a new local directory on the compute \
             side, over the same link. Local disk is measured once, repeated on each row.\n\n",
        );
        o.push_str("| RTT | setup | local disk, pass 1 | local disk, passes 2–3 | pass 1 | passes 2–3 | passes 2–3 / local | tar \\| zstd \\| ssh, W4's files | pass 1 / tar |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for &rtt in &self.rtts {
            let mut setups: Vec<&str> = CS_ACTOR_SETUPS
                .iter()
                .copied()
                .filter(|c| self.cell(W4_PASS1, rtt, c).is_some() || self.cell(W4_WARM, rtt, c).is_some())
                .collect();
            // No cs-actor setup at this RTT: one row still shows local disk and the reference.
            if setups.is_empty() && self.cell(W4_PASS1, rtt, "tar").is_some() {
                setups.push("—");
            }
            for s in setups {
                o.push_str(&format!(
                    "| {rtt} ms | {s} | {} | {} | {} | {} | {} | {} | {} |\n",
                    self.cell_text(W4_PASS1, rtt, "local"),
                    self.cell_text(W4_WARM, rtt, "local"),
                    self.cell_text(W4_PASS1, rtt, s),
                    self.cell_text(W4_WARM, rtt, s),
                    self.ratio_text(self.val(W4_WARM, rtt, s), self.val(W4_WARM, rtt, "local")),
                    self.cell_text(W4_PASS1, rtt, "tar"),
                    self.ratio_text(self.val(W4_PASS1, rtt, s), self.val(W4_PASS1, rtt, "tar")),
                ));
            }
        }
    }

    /// Issue 12's W4 targets, per RTT and cs-actor setup: passes 2–3 within 1.5× local disk's,
    /// pass 1 within 1.5× of `tar | zstd | ssh` carrying the same files over the same link.
    fn w4_targets(&self) -> String {
        let mut o = String::new();
        for &rtt in &self.rtts {
            for s in CS_ACTOR_SETUPS {
                if let Some((r, verdict)) = at_most(self.val(W4_WARM, rtt, s), self.val(W4_WARM, rtt, "local"), 1.5) {
                    o.push_str(&format!(
                        "- W4 passes 2–3 at {rtt} ms, {s}: {r} local disk's (target ≤ 1.5×): {verdict}\n"
                    ));
                }
                if let Some((r, verdict)) = at_most(self.val(W4_PASS1, rtt, s), self.val(W4_PASS1, rtt, "tar"), 1.5) {
                    o.push_str(&format!(
                        "- W4 pass 1 at {rtt} ms, {s}: {r} of `tar | zstd | ssh` carrying the same files (target ≤ 1.5×): {verdict}\n"
                    ));
                }
            }
        }
        o
    }

    fn val(&self, test: &str, rtt: u64, col: &str) -> Option<(f64, Bound)> {
        self.cell(test, rtt, col).and_then(|c| c.value())
    }

    fn cell_text(&self, test: &str, rtt: u64, col: &str) -> String {
        self.cell(test, rtt, col).map(|c| c.render()).unwrap_or_else(|| "—".into())
    }

    /// `a / b` as text, with `>`/`~`/`<` when an operand is a bound or an estimate.
    fn ratio_text(&self, a: Option<(f64, Bound)>, b: Option<(f64, Bound)>) -> String {
        match (a, b) {
            (Some((x, bx)), Some((y, by))) if y > 0.0 => {
                let r = x / y;
                match (bx, by) {
                    (Bound::Exact, Bound::Exact) => ratio(r),
                    (Bound::Lower, Bound::Exact) => format!("> {}", ratio(r)),
                    (Bound::Exact, Bound::Lower) => format!("< {}", ratio(r)),
                    (Bound::Estimate, Bound::Exact) | (Bound::Exact, Bound::Estimate) => format!("~{}", ratio(r)),
                    _ => "?".into(),
                }
            }
            _ => "—".into(),
        }
    }

    /// W1–W5 against local disk, the union over a local lower and raw sshfs; printed only
    /// when one of them ran.
    fn workloads_table(&self, o: &mut String) {
        if !self.entries.iter().any(|e| WORKLOADS.iter().any(|(w, _)| *w == e.test)) {
            return;
        }
        o.push_str("### W1–W5: seconds, median (min–max)\n\n");
        o.push_str("Local disk and the union over a local lower do not depend on the RTT: measured once, repeated on each row.\n\n");
        o.push_str("| workload | RTT | local disk | union, local lower | raw sshfs | cs-actor | cs-actor / local | raw sshfs / cs-actor | union's share of the gap |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for (w, desc) in WORKLOADS {
            for &rtt in &self.rtts {
                if self.cell(w, rtt, "cs-actor").is_none()
                    && self.cell(w, rtt, "sshfs").is_none()
                    && self.cell(w, rtt, "local").is_none()
                {
                    continue;
                }
                let local = self.val(w, rtt, "local");
                let ul = self.val(w, rtt, "union-local");
                let csa = self.val(w, rtt, "cs-actor");
                let raw = self.val(w, rtt, "sshfs");
                let share = match (local, ul, csa) {
                    (Some((l, Bound::Exact)), Some((u, Bound::Exact)), Some((c, Bound::Exact))) if c > l * 1.05 => {
                        format!("{:.0} %", ((u - l) / (c - l) * 100.0).clamp(0.0, 100.0))
                    }
                    (Some(_), Some(_), Some(_)) => "no gap".into(),
                    _ => "—".into(),
                };
                o.push_str(&format!(
                    "| {w} {desc} | {rtt} ms | {} | {} | {} | {} | {} | {} | {share} |\n",
                    self.cell_text(w, rtt, "local"),
                    self.cell_text(w, rtt, "union-local"),
                    self.cell_text(w, rtt, "sshfs"),
                    self.cell_text(w, rtt, "cs-actor"),
                    self.ratio_text(csa, local),
                    self.ratio_text(raw, csa),
                ));
            }
        }
    }

    /// S1 and S2 against rsync, tar and unison; printed only when one of them ran.
    fn sync_table(&self, o: &mut String) {
        if !self.entries.iter().any(|e| SYNC_TESTS.contains(&e.test.as_str())) {
            return;
        }
        o.push_str("\n### S1, S2: time to convergence, seconds, median (min–max)\n\n");
        o.push_str("| test | RTT | cs-actor | cs-actor, overlayfs | rsync -a | tar \\| zstd \\| ssh | unison | cs-actor / rsync | wire bytes cs-actor / rsync |\n");
        o.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for t in SYNC_TESTS {
            for &rtt in &self.rtts {
                if ["cs-actor", "cs-actor-overlay", "rsync"].iter().all(|c| self.cell(t, rtt, c).is_none()) {
                    continue;
                }
                let wire = |col: &str| {
                    self.cell(t, rtt, col)
                        .filter(|c| !c.bytes.is_empty())
                        .map(|c| median(&c.bytes.iter().map(|b| *b as f64).collect::<Vec<_>>()))
                };
                let wire_text = match (wire("cs-actor"), wire("rsync")) {
                    (Some(a), Some(b)) => format!("{} / {}", kib(a), kib(b)),
                    _ => "—".into(),
                };
                o.push_str(&format!(
                    "| {} | {rtt} ms | {} | {} | {} | {} | {} | {} | {wire_text} |\n",
                    describe_sync(t, &self.meta),
                    self.cell_text(t, rtt, "cs-actor"),
                    self.cell_text(t, rtt, "cs-actor-overlay"),
                    self.cell_text(t, rtt, "rsync"),
                    self.cell_text(t, rtt, "tar"),
                    self.cell_text(t, rtt, "unison"),
                    self.ratio_text(self.val(t, rtt, "cs-actor"), self.val(t, rtt, "rsync")),
                ));
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let m = &self.meta;
        o.push_str("## cs-bench results\n\n");
        o.push_str(&format!("- Date: {}\n", m.date));
        o.push_str(&format!("- Command: `{}`\n", m.command));
        o.push_str(&format!("- Machine: {}\n", m.machine));
        o.push_str(&format!("- Load average (1/5/15 min): {} at the start, {} at the end\n", m.load_start, m.load_end));
        o.push_str(&format!(
            "- Tools: {}\n",
            m.tools.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join("; ")
        ));
        o.push_str(&format!(
            "- Sizes: {}; {} runs per cell unless n says otherwise; wall time {:.0} s\n\n",
            m.sizes.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "),
            m.runs,
            m.duration_s
        ));

        self.workloads_table(&mut o);

        self.union_backends_table(&mut o);
        self.cs_actor_backends_table(&mut o);
        self.replica_table(&mut o);
        self.w4_pass_table(&mut o);

        self.sync_table(&mut o);

        if !self.s3.is_empty() {
            o.push_str("\n### S3: an idle round (no change), median (min–max) over the rounds\n\n");
            o.push_str("| RTT | project files / held | rounds | round wall (ms) | `sync --wait` wall (ms) | CPU compute (ms) | CPU project (ms) | broker link bytes | sshfs link bytes | RSS compute / project |\n");
            o.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
            for s in &self.s3 {
                if let Some(e) = &s.error {
                    o.push_str(&format!(
                        "| {} ms | {} / {} | error: {} | | | | | | | |\n",
                        s.rtt_ms,
                        s.files,
                        s.held,
                        e.replace('|', "/")
                    ));
                    continue;
                }
                let f = |get: &dyn Fn(&S3Round) -> f64| -> String {
                    let v: Vec<f64> = s.rounds.iter().map(get).collect();
                    if v.is_empty() {
                        return "—".into();
                    }
                    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    format!("{:.1} ({:.1}–{:.1})", median(&v), lo, hi)
                };
                let b = |get: &dyn Fn(&S3Round) -> u64| -> String {
                    let v: Vec<f64> = s.rounds.iter().map(|r| get(r) as f64).collect();
                    if v.is_empty() {
                        return "—".into();
                    }
                    kib(median(&v))
                };
                o.push_str(&format!(
                    "| {} ms | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
                    s.rtt_ms,
                    s.files,
                    s.held,
                    s.rounds.len(),
                    f(&|r| r.round_ms),
                    f(&|r| r.wall_ms),
                    f(&|r| r.cpu_compute_ms),
                    f(&|r| r.cpu_project_ms),
                    b(&|r| r.wire_bytes),
                    b(&|r| r.sshfs_bytes),
                    mib(s.rss_compute_kib),
                    mib(s.rss_project_kib),
                ));
            }
        }

        if !self.s4.is_empty() {
            o.push_str(&self.s4_table());
        }

        if self.s3.iter().any(|s| s.quiet.is_some()) {
            o.push_str("\nWith no request at all (the services left alone, same project):\n\n");
            o.push_str("| RTT | window (s) | rounds that ran | CPU compute (ms) | CPU project (ms) | broker link bytes | unasked rounds inside the measuring windows |\n");
            o.push_str("|---|---|---|---|---|---|---|\n");
            for s in &self.s3 {
                if let Some(q) = &s.quiet {
                    o.push_str(&format!(
                        "| {} ms | {:.0} | {} | {:.0} | {:.0} | {} | {} |\n",
                        s.rtt_ms,
                        q.secs,
                        q.rounds,
                        q.cpu_compute_ms,
                        q.cpu_project_ms,
                        kib(q.wire_bytes as f64),
                        s.extra_rounds
                    ));
                }
            }
        }

        if !self.rss.is_empty() {
            o.push_str("\n### Resident memory of the services (MiB)\n\n");
            o.push_str("| RTT | setup | compute idle | project idle | compute peak during S1 | project peak during S1 | unionfs-fuse / sshfs (idle, for reference) |\n");
            o.push_str("|---|---|---|---|---|---|---|\n");
            for r in &self.rss {
                o.push_str(&format!(
                    "| {} ms | {} | {} | {} | {} | {} | {} / {} |\n",
                    r.rtt_ms,
                    if r.column.is_empty() { "cs-actor" } else { &r.column },
                    mib(r.compute_idle_kib),
                    mib(r.project_idle_kib),
                    mib(r.compute_peak_s1_kib),
                    mib(r.project_peak_s1_kib),
                    mib(r.unionfs_kib),
                    mib(r.sshfs_kib),
                ));
            }
        }

        o.push_str("\n### Targets\n\n");
        o.push_str(&self.targets());
        let cell_notes: Vec<String> = self
            .entries
            .iter()
            .flat_map(|e| {
                let rtt = if e.rtt_ms == u64::MAX { "any RTT".to_string() } else { format!("{} ms", e.rtt_ms) };
                e.cell
                    .notes
                    .iter()
                    .map(|n| n.to_string())
                    .chain(e.cell.failures.iter().map(|f| format!("a run failed: {}", f.replace('\n', " "))))
                    .map(move |n| format!("{} {} at {rtt}: {n}", e.test, e.column))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !self.notes.is_empty() || !cell_notes.is_empty() {
            o.push_str("\n### Notes\n\n");
            for n in self.notes.iter().chain(cell_notes.iter()) {
                o.push_str(&format!("- {n}\n"));
            }
        }
        let errs = self.errors();
        if !errs.is_empty() {
            o.push_str("\n### Errors\n\n");
            for e in errs {
                o.push_str(&format!("- {}\n", e.replace('\n', " ")));
            }
        }
        o
    }

    /// The targets, each met or missed, by the numbers above.
    fn targets(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "met" } else { "missed" };
        for (w, _) in WORKLOADS.iter().take(4) {
            for &rtt in &self.rtts {
                if let (Some((c, Bound::Exact)), Some((l, Bound::Exact))) =
                    (self.val(w, rtt, "cs-actor"), self.val(w, rtt, "local"))
                {
                    o.push_str(&format!(
                        "- {w} at {rtt} ms: cs-actor {} local disk (target ≤ 1.5×): {}\n",
                        ratio(c / l),
                        yes(c / l <= 1.5)
                    ));
                }
            }
            let rtt = 10;
            if let (Some((c, Bound::Exact)), Some((r, rb))) = (self.val(w, rtt, "cs-actor"), self.val(w, rtt, "sshfs"))
            {
                let x = r / c;
                let verdict = match rb {
                    Bound::Exact => yes(x >= 100.0).to_string(),
                    Bound::Estimate => format!("{} (estimated)", yes(x >= 100.0)),
                    Bound::Lower if x >= 100.0 => "met".into(),
                    Bound::Lower => "not shown (raw sshfs timed out below 100×)".into(),
                };
                let rel = if rb == Bound::Lower {
                    ">"
                } else if rb == Bound::Estimate {
                    "~"
                } else {
                    ""
                };
                o.push_str(&format!(
                    "- {w} at 10 ms: raw sshfs {rel}{} cs-actor (target ≥ 100×): {verdict}\n",
                    ratio(x)
                ));
            }
        }
        o.push_str(&self.union_targets());
        o.push_str(&self.w4_targets());
        o.push_str(&self.s4_targets());
        for t in ["S1 C→P", "S1 P→C"] {
            for &rtt in &self.rtts {
                if let (Some((c, Bound::Exact)), Some((r, Bound::Exact))) =
                    (self.val(t, rtt, "cs-actor"), self.val(t, rtt, "rsync"))
                {
                    o.push_str(&format!(
                        "- {t} at {rtt} ms: cs-actor {} s, rsync {} s (target: at least as fast): {}\n",
                        secs(c),
                        secs(r),
                        yes(c <= r)
                    ));
                }
            }
        }
        for s in &self.s3 {
            if s.rounds.is_empty() {
                continue;
            }
            let cc = median(&s.rounds.iter().map(|r| r.cpu_compute_ms).collect::<Vec<_>>());
            let cp = median(&s.rounds.iter().map(|r| r.cpu_project_ms).collect::<Vec<_>>());
            let wb = median(&s.rounds.iter().map(|r| r.wire_bytes as f64).collect::<Vec<_>>());
            o.push_str(&format!(
                "- S3 at {} ms ({} files): CPU compute {cc:.1} ms, project {cp:.1} ms (target < 50 ms each): {}; wire {} (target: a few KiB): {}\n",
                s.rtt_ms,
                s.files,
                yes(cc < 50.0 && cp < 50.0),
                kib(wb),
                yes(wb <= 8.0 * 1024.0)
            ));
        }
        for r in &self.rss {
            if let (Some(c), Some(p)) = (r.compute_idle_kib, r.project_idle_kib) {
                o.push_str(&format!(
                    "- RSS idle at {} ms ({}): compute {}, project {} MiB (target < 64 MiB): {}\n",
                    r.rtt_ms,
                    if r.column.is_empty() { "cs-actor" } else { &r.column },
                    mib(Some(c)),
                    mib(Some(p)),
                    yes(c < 64 * 1024 && p < 64 * 1024)
                ));
            }
        }
        for s in &self.s3 {
            if let (Some(c), Some(p)) = (s.rss_compute_kib, s.rss_project_kib) {
                o.push_str(&format!(
                    "- RSS idle with the {}-file project at {} ms: compute {}, project {} MiB (target < 64 MiB): {}\n",
                    s.files,
                    s.rtt_ms,
                    mib(Some(c)),
                    mib(Some(p)),
                    yes(c < 64 * 1024 && p < 64 * 1024)
                ));
            }
        }
        o
    }
}

impl Results {
    /// S4's table: the replica's start, seconds from the spawn, median (min–max) over the runs.
    fn s4_table(&self) -> String {
        let mut o = String::new();
        o.push_str("\n### S4: the replica's start (`cs-actor-replica`), seconds from the spawn of `cs-actor compute`, median (min–max) over the runs\n\n");
        o.push_str("A first start lists the root once the placeholder tree of P's snapshot is complete (the union is mounted after it): that is also when the metadata is complete. A restart resumes the previous tree when P's journal continues it (the origin each run printed says which), and its first round brings what changed.\n\n");
        o.push_str("| RTT | project files | runs | first start: root listed | first round | restart: root listed | first round | RSS compute / holder / broker (MiB) |\n");
        o.push_str("|---|---|---|---|---|---|---|---|\n");
        for s in &self.s4 {
            if let Some(e) = &s.error {
                o.push_str(&format!("| {} ms | {} | error: {} | | | | | |\n", s.rtt_ms, s.files, e.replace('|', "/")));
                continue;
            }
            let rss =
                |get: &dyn Fn(&S4Run) -> Option<u64>| mib(s.median_of(|r| get(r).map(|k| k as f64)).map(|k| k as u64));
            o.push_str(&format!(
                "| {} ms | {} | {} | {} | {} | {} | {} | {} / {} / {} |\n",
                s.rtt_ms,
                s.files,
                s.runs.len(),
                s.render(|r| r.listed_s),
                s.render(|r| r.round_s),
                s.render(|r| r.restart_listed_s),
                s.render(|r| r.restart_round_s),
                rss(&|r| r.rss_compute_kib),
                rss(&|r| r.rss_holder_kib),
                rss(&|r| r.rss_project_kib),
            ));
        }
        o
    }

    /// Issue 12's startup targets, from S4: the root listed within 2 s of the start; a
    /// 100,000-file project's metadata complete within 10 s at 40 ms; idle RSS under 64 MiB
    /// per service.
    fn s4_targets(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "met" } else { "missed" };
        for s in &self.s4 {
            let (Some(first), Some(again)) = (s.median_of(|r| r.listed_s), s.median_of(|r| r.restart_listed_s)) else {
                continue;
            };
            o.push_str(&format!(
                "- S4 at {} ms ({} files): the root listed {} s after a first start, {} s after a restart (target ≤ 2 s): {} / {}; metadata complete {} s (target ≤ 10 s{}): {}\n",
                s.rtt_ms,
                s.files,
                secs(first),
                secs(again),
                yes(first <= 2.0),
                yes(again <= 2.0),
                secs(first),
                if s.files >= 100_000 { "" } else { ", set for 100,000 files" },
                yes(first <= 10.0),
            ));
            let kib = |get: fn(&S4Run) -> Option<u64>| s.median_of(|r| get(r).map(|k| k as f64));
            if let (Some(c), Some(p)) = (kib(|r| r.rss_compute_kib), kib(|r| r.rss_project_kib)) {
                o.push_str(&format!(
                    "- RSS idle with the replica of {} files at {} ms: compute {}, project {} MiB (target < 64 MiB): {}\n",
                    s.files,
                    s.rtt_ms,
                    mib(Some(c as u64)),
                    mib(Some(p as u64)),
                    yes(c < 64.0 * 1024.0 && p < 64.0 * 1024.0)
                ));
            }
        }
        o
    }

    /// Issue 11's targets for the overlayfs backend: the union alone within 1.5× local disk;
    /// cs-actor with it W2 within 2× and W3 within 1.3× local disk at 10 and 40 ms, and W1,
    /// W4, W5 no worse than with unionfs-fuse.
    fn union_targets(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "met" } else { "missed" };
        let exact = |v: Option<(f64, Bound)>| v.and_then(|(x, b)| (b == Bound::Exact).then_some(x));
        for (w, _) in WORKLOADS {
            if let (Some(u), Some(l)) =
                (exact(self.val(w, u64::MAX, "overlay-local")), exact(self.val(w, u64::MAX, "local")))
            {
                o.push_str(&format!(
                    "- {w}: overlay-local {} local disk (target ≤ 1.5×): {}\n",
                    ratio(u / l),
                    yes(u / l <= 1.5)
                ));
            }
        }
        for (w, _) in WORKLOADS {
            for &rtt in &self.rtts {
                let ovl = exact(self.val(w, rtt, "cs-actor-overlay"));
                let limit = match w {
                    "W2" => Some(2.0),
                    "W3" => Some(1.3),
                    _ => None,
                };
                if let (Some(limit), Some(c), Some(l), true) = (limit, ovl, exact(self.val(w, rtt, "local")), rtt > 0) {
                    o.push_str(&format!(
                        "- {w} at {rtt} ms: cs-actor with overlayfs {} local disk (target ≤ {limit}×): {}\n",
                        ratio(c / l),
                        yes(c / l <= limit)
                    ));
                }
                if let (None, Some(c), Some(f)) = (limit, ovl, exact(self.val(w, rtt, "cs-actor"))) {
                    o.push_str(&format!(
                        "- {w} at {rtt} ms: cs-actor with overlayfs {} of unionfs-fuse's time (target: no worse, ≤ 1.1× for noise): {}\n",
                        ratio(c / f),
                        yes(c / f <= 1.1)
                    ));
                }
            }
        }
        o
    }
}

/// `a / b` against a target of at most `limit`: the ratio as text and `met`/`missed`, or
/// `None` when the numbers cannot tell (a missing cell, or a bound on the wrong side).
fn at_most(a: Option<(f64, Bound)>, b: Option<(f64, Bound)>, limit: f64) -> Option<(String, &'static str)> {
    let ((x, bx), (y, by)) = (a?, b?);
    if y <= 0.0 {
        return None;
    }
    let r = x / y;
    let verdict = |met: bool| if met { "met" } else { "missed" };
    match (bx, by) {
        (Bound::Exact, Bound::Exact) => Some((ratio(r), verdict(r <= limit))),
        // `b` timed out: the ratio is at most `r`.
        (Bound::Exact, Bound::Lower) if r <= limit => Some((format!("< {}", ratio(r)), "met")),
        // `a` timed out: the ratio is at least `r`.
        (Bound::Lower, Bound::Exact) if r > limit => Some((format!("> {}", ratio(r)), "missed")),
        _ => None,
    }
}

fn mib(k: Option<u64>) -> String {
    k.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "—".into())
}

fn describe_sync(t: &str, m: &Meta) -> String {
    let get = |k: &str| m.sizes.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    match t {
        "S1 C→P" => format!("S1 {} × 4 KiB, compute → project", get("S1")),
        "S1 P→C" => format!("S1 {} × 4 KiB, project → compute (visible)", get("S1")),
        "S2 C→P" => format!("S2 {}, compute → project", get("S2")),
        "S2 P→C" => format!("S2 {}, project → compute (visible and read)", get("S2")),
        _ => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(res: &mut Results, test: &str, rtt: u64, col: &str, samples: &[f64]) {
        res.cell_mut(test, rtt, col).samples.extend_from_slice(samples);
    }

    /// Local disk (once), cs-actor-replica at 10 and 40 ms, tar at both: medians chosen so
    /// that each target is met at 10 ms and missed at 40 ms, with an outlier in every cell
    /// that would flip the verdict if a mean or the first run were used instead.
    fn sample_results() -> Results {
        let mut r = Results { rtts: vec![10, 40], ..Default::default() };
        let any = u64::MAX;
        put(&mut r, W4_PASS1, any, "local", &[0.030, 0.028, 0.090]);
        put(&mut r, W4_WARM, any, "local", &[0.052, 0.050, 0.200]);
        // 0.075 / 0.052 = 1.44× (met; the mean, 0.13, would be 2.5×).
        put(&mut r, W4_WARM, 10, "cs-actor-replica", &[0.200, 0.075, 0.070]);
        // 0.090 / 0.052 = 1.73× (missed).
        put(&mut r, W4_WARM, 40, "cs-actor-replica", &[0.090, 0.080, 0.100]);
        // 1.45 / 1.00 = 1.45× (met; run 1 alone, 3.0 s, would be 3×).
        put(&mut r, W4_PASS1, 10, "cs-actor-replica", &[3.0, 1.45, 1.40]);
        put(&mut r, W4_PASS1, 10, "tar", &[1.2, 1.0, 0.9]);
        // 2.93 / 1.25 = 2.34× (missed).
        put(&mut r, W4_PASS1, 40, "cs-actor-replica", &[2.93, 2.50, 3.10]);
        put(&mut r, W4_PASS1, 40, "tar", &[1.20, 1.30, 1.25]);
        r
    }

    #[test]
    fn w4_targets_compare_medians_and_say_met_or_missed() {
        let t = sample_results().targets();
        for line in [
            "- W4 passes 2–3 at 10 ms, cs-actor-replica: 1.44× local disk's (target ≤ 1.5×): met\n",
            "- W4 pass 1 at 10 ms, cs-actor-replica: 1.45× of `tar | zstd | ssh` carrying the same files (target ≤ 1.5×): met\n",
            "- W4 passes 2–3 at 40 ms, cs-actor-replica: 1.73× local disk's (target ≤ 1.5×): missed\n",
            "- W4 pass 1 at 40 ms, cs-actor-replica: 2.34× of `tar | zstd | ssh` carrying the same files (target ≤ 1.5×): missed\n",
        ] {
            assert!(t.contains(line), "no {line:?} in:\n{t}");
        }
        // No line for a setup that did not run.
        assert!(!t.contains("cs-actor-overlay"), "{t}");
    }

    #[test]
    fn w4_pass_table_has_a_row_per_rtt_and_setup_with_both_ratios() {
        let md = sample_results().markdown();
        assert!(md.contains("### W4 by pass"), "{md}");
        let row10 = "| 10 ms | cs-actor-replica | 0.030 s (0.028–0.090) | 0.052 s (0.050–0.20) | 1.45 s (1.40–3.00) \
                     | 0.075 s (0.070–0.20) | 1.44× | 1.00 s (0.90–1.20) | 1.45× |";
        let row40 = "| 40 ms | cs-actor-replica | 0.030 s (0.028–0.090) | 0.052 s (0.050–0.20) | 2.93 s (2.50–3.10) \
                     | 0.090 s (0.080–0.10) | 1.73× | 1.25 s (1.20–1.30) | 2.34× |";
        assert!(md.contains(row10), "no {row10:?} in:\n{md}");
        assert!(md.contains(row40), "no {row40:?} in:\n{md}");
    }

    #[test]
    fn w4_pass_table_is_absent_without_passes() {
        let mut r = Results { rtts: vec![10], ..Default::default() };
        put(&mut r, "W4", u64::MAX, "local", &[0.1]);
        let md = r.markdown();
        assert!(!md.contains("### W4 by pass"), "{md}");
        assert!(!r.targets().contains("W4 pass"), "{md}");
    }

    /// S4 at 40 ms: three runs whose medians are 1.8 s (first start) and 2.6 s (restart); the
    /// outliers (9 s, 0.5 s) would flip a verdict taken from a mean or from run 1.
    fn s4_results() -> Results {
        let run = |a: f64, b: f64, rss: u64| S4Run {
            listed_s: Some(a),
            round_s: Some(a + 0.5),
            restart_listed_s: Some(b),
            restart_round_s: Some(b + 0.5),
            rss_compute_kib: Some(rss),
            rss_holder_kib: Some(2048),
            rss_project_kib: Some(50 * 1024),
        };
        let s4 = S4Result {
            rtt_ms: 40,
            files: 100_000,
            runs: vec![run(9.0, 0.5, 70 * 1024), run(1.8, 2.6, 20 * 1024), run(1.7, 2.7, 21 * 1024)],
            error: None,
        };
        Results { rtts: vec![40], s4: vec![s4], ..Default::default() }
    }

    #[test]
    fn s4_targets_use_the_medians_of_the_runs() {
        let t = s4_results().targets();
        let line = "- S4 at 40 ms (100000 files): the root listed 1.80 s after a first start, 2.60 s after a restart \
                    (target ≤ 2 s): met / missed; metadata complete 1.80 s (target ≤ 10 s): met\n";
        assert!(t.contains(line), "no {line:?} in:\n{t}");
        let rss = "- RSS idle with the replica of 100000 files at 40 ms: compute 21.0, project 50.0 MiB (target < 64 MiB): met\n";
        assert!(t.contains(rss), "no {rss:?} in:\n{t}");
    }

    #[test]
    fn s4_table_has_a_row_per_rtt_and_an_error_row_for_a_failed_one() {
        let mut r = s4_results();
        r.s4.push(S4Result { rtt_ms: 10, files: 100_000, error: Some("no | tree".into()), ..Default::default() });
        let md = r.markdown();
        let row = "| 40 ms | 100000 | 3 | 1.80 (1.70–9.00) | 2.30 (2.20–9.50) | 2.60 (0.50–2.70) | 3.10 (1.00–3.20) | 21.0 / 2.0 / 50.0 |";
        assert!(md.contains(row), "no {row:?} in:\n{md}");
        assert!(md.contains("| 10 ms | 100000 | error: no / tree |"), "{md}");
        assert!(r.errors().iter().any(|e| e.starts_with("S4 at 10 ms")), "{:?}", r.errors());
        assert!(!r.targets().contains("S4 at 10 ms"), "{}", r.targets());
    }

    #[test]
    fn the_workload_and_sync_tables_are_printed_only_for_what_ran() {
        // S4 alone: neither the W1–W5 table nor the S1/S2 one, not even a header.
        let md = s4_results().markdown();
        assert!(!md.contains("### W1–W5") && !md.contains("### S1, S2"), "{md}");
        assert!(md.contains("### S4"), "{md}");
        // A workload and a sync test: both, each with its row.
        let mut r = Results { rtts: vec![10], ..Default::default() };
        put(&mut r, "W2", u64::MAX, "local", &[0.5]);
        put(&mut r, "S1 P→C", 10, "rsync", &[2.0]);
        let md = r.markdown();
        assert!(md.contains("### W1–W5") && md.contains("| W2 "), "{md}");
        assert!(md.contains("### S1, S2") && md.contains("| 10 ms | — | — | 2.00 s"), "{md}");
    }

    #[test]
    fn at_most_uses_a_timed_out_reference_only_when_it_decides() {
        let exact = |x| Some((x, Bound::Exact));
        let lower = |x| Some((x, Bound::Lower));
        assert_eq!(at_most(exact(1.5), exact(1.0), 1.5), Some(("1.50×".into(), "met")));
        assert_eq!(at_most(exact(1.6), exact(1.0), 1.5), Some(("1.60×".into(), "missed")));
        // The reference took more than 60 s: 30 / 60 is an upper bound, within the target.
        assert_eq!(at_most(exact(30.0), lower(60.0), 1.5), Some(("< 0.50×".into(), "met")));
        // An upper bound above the target says nothing.
        assert_eq!(at_most(exact(120.0), lower(60.0), 1.5), None);
        // The measured side timed out beyond the target: missed whatever it would have taken.
        assert_eq!(at_most(lower(60.0), exact(1.0), 1.5), Some(("> 60.0×".into(), "missed")));
        assert_eq!(at_most(None, exact(1.0), 1.5), None);
        assert_eq!(at_most(exact(1.0), Some((0.0, Bound::Exact)), 1.5), None);
    }
}
