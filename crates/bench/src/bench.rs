//! The bench itself: the environment, the four setups, the measuring loop, W1–W5.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cs_shaper::Shaper;
use cs_testbed::Sshd;

use crate::report::{Results, W4_PASS1, W4_WARM};
use crate::services::Compute;
use crate::util::{bash, count_files, remove_tree, run_until, stopped, Ended};

/// How big everything is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub w1_sources: usize,
    /// W2's repository and W5's.
    pub repo_files: usize,
    pub w3_wheels: usize,
    pub w3_modules: usize,
    pub w4_files: usize,
    pub s1_files: usize,
    pub s2_files: usize,
    pub s2_bytes: u64,
    pub s3_files: usize,
    pub s3_held: usize,
    /// S4: the replica's start with a project of this many files.
    pub s4_files: usize,
}

impl Sizes {
    pub fn full() -> Self {
        Sizes {
            w1_sources: 50,
            repo_files: 5000,
            w3_wheels: 4,
            w3_modules: 60,
            w4_files: 2000,
            s1_files: 10_000,
            s2_files: 3,
            s2_bytes: 100 << 20,
            s3_files: 100_000,
            s3_held: 1000,
            s4_files: 100_000,
        }
    }

    pub fn quick() -> Self {
        Sizes {
            w1_sources: 10,
            repo_files: 500,
            w3_wheels: 2,
            w3_modules: 10,
            w4_files: 200,
            s1_files: 1000,
            s2_files: 3,
            s2_bytes: 4 << 20,
            s3_files: 5000,
            s3_held: 100,
            s4_files: 5000,
        }
    }

    pub fn describe(&self) -> Vec<(String, String)> {
        vec![
            ("W1".into(), format!("{} C files", self.w1_sources)),
            ("W2/W5".into(), format!("{} files", self.repo_files)),
            ("W3".into(), format!("{} wheels × {} modules", self.w3_wheels, self.w3_modules)),
            ("W4".into(), format!("{} files", self.w4_files)),
            ("S1".into(), format!("{}", self.s1_files)),
            ("S2".into(), format!("{} × {} MiB", self.s2_files, self.s2_bytes >> 20)),
            ("S3".into(), format!("{} files, {} held", self.s3_files, self.s3_held)),
            ("S4".into(), format!("{} files", self.s4_files)),
        ]
    }
}

/// How often and how long.
#[derive(Debug, Clone)]
pub struct Limits {
    pub runs: usize,
    /// A run still going after this is killed (reported as a lower bound).
    pub run_timeout: Duration,
    /// No further run of a cell starts once its runs took this long together.
    pub cell_budget: Duration,
}

/// What the measuring loop gets from one run.
pub enum Sample {
    /// `parts`: parts of the same run, each a sample of its own cell (test name, seconds),
    /// same RTT and column (W4's pass 1 and passes 2–3).
    Done {
        secs: f64,
        bytes: Option<u64>,
        note: Option<String>,
        parts: Vec<(&'static str, f64)>,
    },
    TimedOut {
        secs: f64,
        estimate: Option<f64>,
    },
}

/// Runs `f(run, deadline)` up to `lim.runs` times into the cell (`test`, `rtt`, `column`).
/// A timed-out run ends the cell; an error is recorded in the cell and ends it.
pub fn measure(
    res: &mut Results,
    lim: &Limits,
    test: &str,
    rtt: u64,
    column: &str,
    mut f: impl FnMut(usize, Instant) -> Result<Sample>,
) -> Result<()> {
    let started = Instant::now();
    let rtt_text = if rtt == u64::MAX { "any".to_string() } else { format!("{rtt} ms") };
    let mut last_run = Duration::ZERO;
    for r in 0..lim.runs {
        if stopped() {
            bail!("interrupted");
        }
        // Another run only if it is expected to end within the cell's budget.
        if r > 0 && started.elapsed() + last_run > lim.cell_budget {
            res.cell_mut(test, rtt, column).notes.push(format!(
                "{r} run{} only: a run takes {:.0} s, the cell's budget is {:.0} s",
                if r == 1 { "" } else { "s" },
                last_run.as_secs_f64(),
                lim.cell_budget.as_secs_f64()
            ));
            break;
        }
        // Flush what earlier runs left in flight (this disk discards on every unlink; the
        // previous run's cleanup would otherwise slow this one down).
        rustix::fs::sync();
        let run_start = Instant::now();
        let deadline = Instant::now() + lim.run_timeout;
        let out = f(r, deadline);
        last_run = run_start.elapsed();
        if stopped() {
            bail!("interrupted");
        }
        let cell = res.cell_mut(test, rtt, column);
        match out {
            Ok(Sample::Done { secs, bytes, note, parts }) => {
                eprintln!(
                    "{} {test} | {column} | RTT {rtt_text} | run {}: {secs:.3} s{}",
                    crate::util::clock(),
                    r + 1,
                    bytes.map(|b| format!(", {b} B on the wire")).unwrap_or_default()
                );
                cell.samples.push(secs);
                if let Some(b) = bytes {
                    cell.bytes.push(b);
                }
                if let Some(n) = note {
                    if !cell.notes.contains(&n) {
                        cell.notes.push(n);
                    }
                }
                for (part, secs) in parts {
                    res.cell_mut(part, rtt, column).samples.push(secs);
                }
            }
            Ok(Sample::TimedOut { secs, estimate }) => {
                eprintln!(
                    "{} {test} | {column} | RTT {rtt_text} | run {}: timed out after {secs:.1} s{}",
                    crate::util::clock(),
                    r + 1,
                    estimate.map(|e| format!(" (~{e:.0} s estimated)")).unwrap_or_default()
                );
                cell.timed_out = Some(secs);
                cell.estimate = estimate;
                break;
            }
            Err(e) => {
                eprintln!("{} {test} | {column} | RTT {rtt_text} | run {}: FAILED {e:#}", crate::util::clock(), r + 1);
                cell.failures.push(format!("run {}: {e:#}", r + 1));
                if cell.failures.len() >= 2 {
                    break;
                }
            }
        }
    }
    let cell = res.cell_mut(test, rtt, column);
    if cell.samples.is_empty() && cell.timed_out.is_none() {
        if let Some(last) = cell.failures.last() {
            cell.error = Some(last.clone());
        }
    }
    Ok(())
}

/// The fixed parts of the bench.
pub struct Env {
    pub root: PathBuf,
    pub bin: PathBuf,
    pub sshd: Sshd,
    pub shaper: Shaper,
    /// The shaper's route to sshd.
    pub ssh_route: SocketAddr,
    pub user: String,
    pub sizes: Sizes,
    pub python: PathBuf,
    pub wheels: Vec<String>,
    pub house: PathBuf,
    /// W2's source repository (on local disk, outside every home).
    pub repo_src: PathBuf,
    pub logs: PathBuf,
    /// `--compute-arg`: added to every `cs-actor compute`.
    pub compute_args: Vec<String>,
}

impl Env {
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// `ssh` with the options that reach sshd through the shaper (for rsync -e, tar, unison).
    pub fn ssh_command(&self) -> String {
        let mut s = format!("ssh -p {}", self.ssh_route.port());
        for o in self.sshd.ssh_options() {
            s.push_str(&format!(" -o {o}"));
        }
        s
    }

    /// Bytes through the shaper's route listening on `route`.
    pub fn wire(&self, route: SocketAddr) -> u64 {
        self.shaper.stats().route(route).map(|r| r.bytes_up + r.bytes_down).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    UnionLocal,
    /// Kernel overlayfs over a local lower (a candidate union: docs/union.md).
    OverlayLocal,
    /// fuse-overlayfs over a local lower (a candidate union: docs/union.md).
    FuseOverlayfsLocal,
    Sshfs,
    /// cs-actor with `--union unionfs-fuse` over its sshfs lower (the seed's design).
    CsActor,
    /// cs-actor with `--union overlay` (kernel overlayfs, the service's default) over its sshfs lower.
    CsActorOverlay,
    /// cs-actor with `--union overlay` over the project's replica (`--replica-dir`, issue 12):
    /// no sshfs, content fetched over the websocket on first open.
    CsActorReplica,
}

impl Kind {
    pub fn column(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::UnionLocal => "union-local",
            Kind::OverlayLocal => "overlay-local",
            Kind::FuseOverlayfsLocal => "fuse-overlayfs-local",
            Kind::Sshfs => "sshfs",
            Kind::CsActor => "cs-actor",
            Kind::CsActorOverlay => "cs-actor-overlay",
            Kind::CsActorReplica => "cs-actor-replica",
        }
    }
}

/// Where a workload runs (`view`) and where the project keeps the same files.
pub struct View<'a> {
    pub kind: Kind,
    pub view: PathBuf,
    /// The project side of `view` (for local disk: `view` itself; for the local union: its lower).
    pub project: PathBuf,
    /// The union's upper layer.
    pub upper: Option<PathBuf>,
    pub compute: Option<&'a Compute>,
}

impl View<'_> {
    /// Where files written at `rel` through the view land on this machine's disk.
    pub fn write_side(&self, rel: &str) -> PathBuf {
        match (self.kind, &self.upper) {
            (Kind::Sshfs, _) => self.project.join(rel),
            (Kind::UnionLocal | Kind::CsActor | Kind::CsActorOverlay | Kind::CsActorReplica, Some(u)) => u.join(rel),
            _ => self.view.join(rel),
        }
    }

    /// Waits for a round (cs-actor only), so the next run starts from a quiet state.
    pub fn settle(&self) -> Result<()> {
        if let Some(c) = self.compute {
            c.sync(Duration::from_secs(900))?;
        }
        Ok(())
    }

    /// Removes what a run wrote at `rel`, the cheapest correct way for each setup: on local
    /// disk directly; over sshfs on the project side; for cs-actor a round carries it to the
    /// project, the project deletes it, and the next round deletes the synced copies in the
    /// upper layer.
    pub fn cleanup(&self, rel: &str) -> Result<()> {
        match self.kind {
            Kind::Local | Kind::UnionLocal | Kind::OverlayLocal | Kind::FuseOverlayfsLocal => {
                remove_tree(&self.view.join(rel))
            }
            Kind::Sshfs => remove_tree(&self.project.join(rel)),
            Kind::CsActor | Kind::CsActorOverlay | Kind::CsActorReplica => {
                self.settle()?;
                remove_tree(&self.project.join(rel))?;
                self.settle()
            }
        }
    }
}

fn ended(e: Ended, estimate: impl FnOnce(f64) -> Option<f64>) -> std::result::Result<f64, Sample> {
    match e {
        Ended::Done(d) => Ok(d.as_secs_f64()),
        Ended::TimedOut(d) => {
            let s = d.as_secs_f64();
            Err(Sample::TimedOut { secs: s, estimate: estimate(s) })
        }
    }
}

/// Elapsed × total / done, when something was done.
fn extrapolate(elapsed: f64, done: u64, total: u64) -> Option<f64> {
    (done > 0 && done < total).then(|| elapsed * total as f64 / done as f64)
}

/// W1: `make -j2`, then `make clean`, in a fresh copy of the C project.
pub fn w1(env: &Env, v: &View, r: usize, deadline: Instant) -> Result<Sample> {
    let rel = format!("w1/proj-r{r}");
    let dir = v.view.join(&rel);
    let log = env.log("w1");
    let mut make = Command::new("make");
    make.arg("-s").arg("-j2").arg("-C").arg(&dir);
    let build = match ended(run_until(&mut make, &log, deadline)?, |s| {
        extrapolate(s, count_files(&v.write_side(&format!("{rel}/build"))) / 2, env.sizes.w1_sources as u64 + 1)
    }) {
        Ok(s) => s,
        Err(sample) => return Ok(sample),
    };
    if !dir.join("app").exists() {
        bail!("make did not produce {}", dir.join("app").display());
    }
    let mut clean = Command::new("make");
    clean.arg("-s").arg("-C").arg(&dir).arg("clean");
    let cl = match ended(run_until(&mut clean, &log, deadline)?, |_| None) {
        Ok(s) => s,
        Err(Sample::TimedOut { secs, .. }) => return Ok(Sample::TimedOut { secs: build + secs, estimate: None }),
        Err(s) => return Ok(s),
    };
    Ok(Sample::Done { secs: build + cl, bytes: None, note: None, parts: Vec::new() })
}

/// W2: `git clone --no-hardlinks` of the generated repository into the home, then
/// `git status`.
pub fn w2(env: &Env, v: &View, r: usize, deadline: Instant) -> Result<Sample> {
    let rel = format!("w2/clone-r{r}");
    std::fs::create_dir_all(v.view.join("w2"))?;
    let dest = v.view.join(&rel);
    let log = env.log("w2");
    let mut clone = Command::new("git");
    clone.args(["clone", "--no-hardlinks", "-q"]).arg(&env.repo_src).arg(&dest);
    let t_clone = match ended(run_until(&mut clone, &log, deadline)?, |s| {
        extrapolate(s, count_files(&v.write_side(&rel)), env.sizes.repo_files as u64)
    }) {
        Ok(s) => s,
        Err(sample) => {
            v.cleanup(&rel)?;
            return Ok(sample);
        }
    };
    let mut status = Command::new("git");
    status.arg("-C").arg(&dest).args(["status", "--porcelain"]);
    let t_status = match ended(run_until(&mut status, &log, deadline)?, |_| None) {
        Ok(s) => s,
        Err(Sample::TimedOut { secs, .. }) => {
            v.cleanup(&rel)?;
            return Ok(Sample::TimedOut { secs: t_clone + secs, estimate: None });
        }
        Err(s) => return Ok(s),
    };
    let n = count_files(&v.write_side(&rel));
    if n < env.sizes.repo_files as u64 {
        bail!("the clone has {n} files, expected at least {}", env.sizes.repo_files);
    }
    v.cleanup(&rel)?;
    Ok(Sample::Done { secs: t_clone + t_status, bytes: None, note: None, parts: Vec::new() })
}

/// W3: `pip install --target ~/.local/…` of the generated wheels, from the local wheelhouse.
pub fn w3(env: &Env, v: &View, r: usize, deadline: Instant) -> Result<Sample> {
    let rel = format!(".local/w3-r{r}");
    std::fs::create_dir_all(v.view.join(".local"))?;
    let target = v.view.join(&rel);
    let mut pip = Command::new(&env.python);
    pip.args([
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--disable-pip-version-check",
        "--no-cache-dir",
        "--find-links",
    ])
    .arg(&env.house)
    .arg("--target")
    .arg(&target)
    .args(&env.wheels)
    .env("PIP_NO_INPUT", "1");
    let t = match ended(run_until(&mut pip, &env.log("w3"), deadline)?, |_| None) {
        Ok(s) => s,
        Err(sample) => {
            remove_w3(v, &rel)?;
            return Ok(sample);
        }
    };
    for w in &env.wheels {
        if !target.join(w).join("__init__.py").exists() {
            bail!("pip did not install {w} into {}", target.display());
        }
    }
    remove_w3(v, &rel)?;
    Ok(Sample::Done { secs: t, bytes: None, note: None, parts: Vec::new() })
}

/// `.local` is local-only for cs-actor (an opaque directory of the upper layer, never
/// synced): remove it there; through the merged view with overlayfs, which must not be
/// changed behind its back.
fn remove_w3(v: &View, rel: &str) -> Result<()> {
    match v.kind {
        Kind::CsActor | Kind::UnionLocal => remove_tree(&v.write_side(rel)),
        Kind::CsActorOverlay | Kind::CsActorReplica => remove_tree(&v.view.join(rel)),
        _ => v.cleanup(rel),
    }
}

/// W4's file names (the same as the generator's), so the workload opens by name.
pub fn w4_paths(base: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| base.join(format!("d{:02}/f{:04}", i / 100, i))).collect()
}

/// W4: read every file of a fresh set (never read through this view before) three times.
pub fn w4(env: &Env, v: &View, r: usize, deadline: Instant) -> Result<Sample> {
    use std::io::Read;
    let paths = w4_paths(&v.view.join(format!("w4/set-r{r}")), env.sizes.w4_files);
    let total = (paths.len() * 3) as u64;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut bytes = 0u64;
    let t = Instant::now();
    let mut done = 0u64;
    let mut passes = Vec::new();
    for _pass in 0..3 {
        let tp = Instant::now();
        for p in &paths {
            if Instant::now() > deadline || stopped() {
                let s = t.elapsed().as_secs_f64();
                return Ok(Sample::TimedOut { secs: s, estimate: extrapolate(s, done, total) });
            }
            buf.clear();
            let mut f = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
            bytes += f.read_to_end(&mut buf).with_context(|| format!("read {}", p.display()))? as u64;
            done += 1;
        }
        passes.push(tp.elapsed().as_secs_f64());
    }
    let secs = t.elapsed().as_secs_f64();
    if bytes == 0 {
        bail!("read nothing");
    }
    let note = (r == 0).then(|| {
        format!(
            "run 1, the three passes: {} s",
            passes.iter().map(|p| crate::report::secs(*p)).collect::<Vec<_>>().join(" / ")
        )
    });
    // Pass 1 reads through a cold cache (the fetches); passes 2–3 are the warm reads.
    let parts = vec![(W4_PASS1, passes[0]), (W4_WARM, passes[1] + passes[2])];
    Ok(Sample::Done { secs, bytes: None, note, parts })
}

/// W5: `git status` and `find` in a project-side repository (metadata over the lower layer).
pub fn w5(env: &Env, v: &View, r: usize, deadline: Instant) -> Result<Sample> {
    let repo = v.view.join(format!("w5/repo-r{r}"));
    let out = env.logs.join(format!("w5-status-{}-r{r}.txt", v.kind.column()));
    let count = env.logs.join(format!("w5-find-{}-r{r}.txt", v.kind.column()));
    let mut c = bash(&format!(
        "git -C '{repo}' status --porcelain > '{out}'; find '{repo}' -type f | wc -l > '{count}'",
        repo = repo.display(),
        out = out.display(),
        count = count.display()
    ));
    let t = match ended(run_until(&mut c, &env.log("w5"), deadline)?, |_| None) {
        Ok(s) => s,
        Err(sample) => return Ok(sample),
    };
    let found: u64 = std::fs::read_to_string(&count)?.trim().parse().unwrap_or(0);
    if found < env.sizes.repo_files as u64 {
        bail!("find saw {found} files, expected at least {}", env.sizes.repo_files);
    }
    let dirty = std::fs::read_to_string(&out)?.lines().count();
    let note = (dirty > 0).then(|| format!("git status listed {dirty} changed paths (it re-read their content)"));
    Ok(Sample::Done { secs: t, bytes: None, note, parts: Vec::new() })
}

pub type Workload = fn(&Env, &View, usize, Instant) -> Result<Sample>;

pub const W: [(&str, Workload); 5] = [("W1", w1), ("W2", w2), ("W3", w3), ("W4", w4), ("W5", w5)];

/// Runs the selected workloads in `v`; for cs-actor, a round settles after each run.
pub fn workloads(
    env: &Env,
    res: &mut Results,
    lim: &Limits,
    v: &View,
    rtt: u64,
    only: &dyn Fn(&str) -> bool,
) -> Result<()> {
    for (name, f) in W {
        if !only(name) {
            continue;
        }
        measure(res, lim, name, rtt, v.kind.column(), |r, deadline| {
            let s = f(env, v, r, deadline)?;
            v.settle()?;
            Ok(s)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{W4_PASS1, W4_WARM};

    /// A run's parts become samples of their own cells (same RTT and column), one per run,
    /// beside the run's total.
    #[test]
    fn measure_keeps_each_runs_parts_as_samples() {
        let mut res = Results::default();
        let lim = Limits { runs: 3, run_timeout: Duration::from_secs(10), cell_budget: Duration::from_secs(60) };
        measure(&mut res, &lim, "W4", 10, "cs-actor-replica", |r, _| {
            let p1 = 1.0 + r as f64;
            Ok(Sample::Done { secs: p1 + 0.5, bytes: None, note: None, parts: vec![(W4_PASS1, p1), (W4_WARM, 0.5)] })
        })
        .unwrap();
        assert_eq!(res.cell("W4", 10, "cs-actor-replica").unwrap().samples, vec![1.5, 2.5, 3.5]);
        assert_eq!(res.cell(W4_PASS1, 10, "cs-actor-replica").unwrap().samples, vec![1.0, 2.0, 3.0]);
        assert_eq!(res.cell(W4_WARM, 10, "cs-actor-replica").unwrap().samples, vec![0.5, 0.5, 0.5]);
        assert!(res.cell(W4_PASS1, 40, "cs-actor-replica").is_none());
    }
}
