//! `cs-bench`: cs-actor's merged view against local disk and raw sshfs (W1–W5), and its
//! rounds against rsync, tar | zstd | ssh and unison (S1, S2), an idle round (S3) and the
//! services' memory, on a link of controlled latency (the `cs-shaper` proxy in front of a
//! loopback sshd and of the broker). Prints a Markdown table. See docs/benchmarks.md.
//!
//! `cargo run --release -p cs-bench -- --rtt 0,10,40`   (the full bench)
//! `cargo run --release -p cs-bench -- --quick`         (small sizes, RTT 0: a smoke test)
//! `cargo run --release -p cs-bench -- soak --minutes 3 --clients 3`  (the soak: see soak.rs)

mod bench;
mod gen;
mod report;
mod services;
mod soak;
mod sync;
mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cs_shaper::{LinkConfig, Shaper};
use cs_testbed::Sshd;

use bench::{workloads, Env, Kind, Limits, Sizes, View};
use report::{Results, Rss};
use sync::{Pair, Test, Tool, Way};
use util::{copy_tree, peak_rss_kib, remove_tree, reset_peak_rss, rss_kib, which};

const ALL_TESTS: [&str; 9] = ["W1", "W2", "W3", "W4", "W5", "S1", "S2", "S3", "S4"];
const ALL_SETUPS: [&str; 11] = [
    "local",
    "union-local",
    "overlay-local",
    "fuse-overlayfs-local",
    "sshfs",
    "cs-actor",
    "cs-actor-overlay",
    "cs-actor-replica",
    "rsync",
    "tar",
    "unison",
];

/// The slow-link bench (see docs/benchmarks.md).
#[derive(Parser, Debug)]
#[command(name = "cs-bench", version)]
struct Cli {
    /// Round-trip times to add, in ms, comma-separated (default 0,10,40; with --quick 0).
    #[arg(long, value_delimiter = ',')]
    rtt: Option<Vec<u64>>,
    /// One more argument for every `cs-actor compute` the setups start; repeat it for each
    /// (`--compute-arg=--follow-project --compute-arg=false`), e.g. to compare a service
    /// option side by side with two runs.
    #[arg(long = "compute-arg", value_name = "ARG", allow_hyphen_values = true)]
    compute_args: Vec<String>,
    /// Small sizes, RTT 0 unless --rtt is given: finishes in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Runs per cell (medians of these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A run still going after this many seconds is stopped and reported as a lower bound.
    #[arg(long, default_value_t = 60.0)]
    run_timeout: f64,
    /// No further run of a cell starts once its runs took this many seconds together.
    #[arg(long, default_value_t = 60.0)]
    cell_budget: f64,
    /// Only these tests (comma-separated): W1 … W5, S1, S2, S3, S4 (the replica's start:
    /// with the setup cs-actor-replica).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Only these setups: local, union-local (unionfs-fuse), overlay-local (kernel overlayfs),
    /// fuse-overlayfs-local, sshfs, cs-actor (unionfs-fuse), cs-actor-overlay (`--union
    /// overlay`), cs-actor-replica (overlay over the project's replica, no sshfs), rsync, tar
    /// (S1, S2, and W4's files: the reference for W4's first pass), unison.
    #[arg(long, value_delimiter = ',')]
    setups: Option<Vec<String>>,
    /// Bandwidth cap of the shaped link, bytes per second each way (default: none).
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Idle rounds measured in S3 (default: max(runs, 5)).
    #[arg(long)]
    s3_rounds: Option<usize>,
    /// Override S1's file count.
    #[arg(long)]
    s1_files: Option<usize>,
    /// Override S2's file size (MiB).
    #[arg(long)]
    s2_mib: Option<u64>,
    /// Override S3's project size (files).
    #[arg(long)]
    s3_files: Option<usize>,
    /// Override S4's project size (files).
    #[arg(long)]
    s4_files: Option<usize>,
    /// The cs-actor binary (default: next to this one, i.e. target/release/cs-actor).
    #[arg(long)]
    cs_actor: Option<PathBuf>,
    /// Work directory (default: a new one under /tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// Also write the Markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Also write every sample as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    util::install_signal_handlers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(|a| a == "soak").unwrap_or(false) {
        std::process::exit(soak::main(args[1..].to_vec()));
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(0) => {}
        Ok(errors) => {
            eprintln!("{} cs-bench: {errors} cell(s) failed (see the Errors section)", util::clock());
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("{} cs-bench: error: {e:#}", util::clock());
            std::process::exit(1);
        }
    }
}

fn find_cs_actor(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for the current executable")?;
    // target/release/cs-bench, or target/release/deps/cs_bench-… in tests.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("cs-actor");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no cs-actor binary next to {}: build it (`cargo build --release -p cs-actor`) or give --cs-actor",
        exe.display()
    )
}

/// With `CS_BENCH_SERVICE_LOG` set (a `RUST_LOG` for the services), their logs are what
/// was asked for: copied into `logs/` as `<prefix>-compute.log` and `<prefix>-broker.log`
/// before the work directory of the setup goes.
fn keep_service_logs(dir: &Path, logs: &Path, prefix: &str) {
    if std::env::var_os("CS_BENCH_SERVICE_LOG").is_none() {
        return;
    }
    for (from, name) in [("compute/compute.log", "compute"), ("broker/broker.log", "broker")] {
        let to = logs.join(format!("{prefix}-{name}.log"));
        if let Err(e) = std::fs::copy(dir.join(from), &to) {
            eprintln!("cs-bench: could not keep {}: {e}", dir.join(from).display());
        }
    }
}

/// The programs each part needs; returns what is missing per part.
fn check_tools(tests: &BTreeSet<String>, setups: &BTreeSet<String>) -> Vec<(String, Vec<&'static str>)> {
    let have = |p: &str| which(p).is_some();
    let mut out = Vec::new();
    let mut need = |what: &str, progs: &[&'static str]| {
        let missing: Vec<&'static str> = progs.iter().copied().filter(|p| !have(p)).collect();
        if !missing.is_empty() {
            out.push((what.to_string(), missing));
        }
    };
    if !Path::new("/usr/sbin/sshd").exists() {
        need("the testbed", &["sshd (openssh-server)"]);
    } else {
        need("the testbed", &["ssh", "ssh-keygen", "sshfs", "git", "cp"]);
    }
    if setups.contains("union-local") || setups.contains("cs-actor") {
        need("the union", &["unionfs-fuse"]);
    }
    if setups.contains("fuse-overlayfs-local") {
        need("fuse-overlayfs", &["fuse-overlayfs"]);
    }
    if (setups.contains("overlay-local") || setups.contains("cs-actor-overlay") || setups.contains("cs-actor-replica"))
        && !cs_union::overlay::kernel_has_overlay()
    {
        need("overlayfs", &["overlayfs in the kernel (/proc/filesystems; modprobe overlay)"]);
    }
    if tests.contains("W1") {
        need("W1", &["make", "cc"]);
    }
    if tests.contains("W3") {
        need("W3", &["python3"]);
    }
    if tests.contains("W5") {
        need("W5", &["find", "bash"]);
    }
    if tests.contains("S1") || tests.contains("S2") {
        if setups.contains("rsync") {
            need("rsync", &["rsync"]);
        }
        if setups.contains("unison") {
            need("unison", &["unison"]);
        }
    }
    // tar also carries W4's files (the reference for W4's first pass).
    if (tests.contains("S1") || tests.contains("S2") || tests.contains("W4")) && setups.contains("tar") {
        need("tar | zstd | ssh", &["tar", "zstd", "bash"]);
    }
    out
}

fn run(cli: Cli) -> Result<usize> {
    let t_start = Instant::now();
    util::clock();
    let command = std::iter::once("cs-bench".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let rtts = cli.rtt.clone().unwrap_or_else(|| if cli.quick { vec![0] } else { vec![0, 10, 40] });
    let mut sizes = if cli.quick { Sizes::quick() } else { Sizes::full() };
    if let Some(n) = cli.s1_files {
        sizes.s1_files = n;
    }
    if let Some(m) = cli.s2_mib {
        sizes.s2_bytes = m << 20;
    }
    if let Some(n) = cli.s3_files {
        sizes.s3_files = n;
    }
    sizes.s3_held = sizes.s3_held.min(sizes.s3_files);
    if let Some(n) = cli.s4_files {
        sizes.s4_files = n;
    }
    let runs = cli.runs.max(1);
    let lim = Limits {
        runs,
        run_timeout: Duration::from_secs_f64(cli.run_timeout),
        cell_budget: Duration::from_secs_f64(cli.cell_budget),
    };
    let tests: BTreeSet<String> = match &cli.only {
        Some(v) => v.iter().map(|s| s.trim().to_uppercase()).collect(),
        None => ALL_TESTS.iter().map(|s| s.to_string()).collect(),
    };
    for t in &tests {
        if !ALL_TESTS.contains(&t.as_str()) {
            bail!("unknown test {t:?} (known: {ALL_TESTS:?})");
        }
    }
    let mut setups: BTreeSet<String> = match &cli.setups {
        Some(v) => v.iter().map(|s| s.trim().to_lowercase()).collect(),
        None => ALL_SETUPS.iter().map(|s| s.to_string()).collect(),
    };
    for s in &setups {
        if !ALL_SETUPS.contains(&s.as_str()) {
            bail!("unknown setup {s:?} (known: {ALL_SETUPS:?})");
        }
    }

    let mut res = Results { rtts: rtts.clone(), ..Default::default() };
    let missing = check_tools(&tests, &setups);
    for (what, progs) in &missing {
        let msg = format!("{what} needs {} (Debian: apt-get install {}): skipped", progs.join(", "), progs.join(" "));
        eprintln!("{} cs-bench: {msg}", util::clock());
        res.notes.push(msg);
        match what.as_str() {
            "rsync" => {
                setups.remove("rsync");
            }
            "unison" => {
                setups.remove("unison");
            }
            "tar | zstd | ssh" => {
                setups.remove("tar");
            }
            "the union" => {
                setups.remove("union-local");
                setups.remove("cs-actor");
            }
            "overlayfs" => {
                setups.remove("overlay-local");
                setups.remove("cs-actor-overlay");
                setups.remove("cs-actor-replica");
            }
            "fuse-overlayfs" => {
                setups.remove("fuse-overlayfs-local");
            }
            "the testbed" => bail!("cannot run at all: {} missing", progs.join(", ")),
            _ => {}
        }
    }
    let skip_test = |t: &str| missing.iter().any(|(w, _)| w == t);
    let only = |t: &str| tests.contains(t) && !skip_test(t);
    let any_cs_actor = ["cs-actor", "cs-actor-overlay", "cs-actor-replica"].iter().any(|s| setups.contains(*s));
    let bin = if any_cs_actor { find_cs_actor(cli.cs_actor.clone())? } else { PathBuf::new() };
    if !rustix::process::geteuid().is_root() {
        eprintln!("cs-bench: not root: FUSE mounts may need user_allow_other; resident-memory peaks cannot be reset");
    }

    // The work directory: no spaces, `:` or `=` (sshd config, unionfs-fuse branches).
    let (root, _tmp) = util::work_dir(cli.dir.as_deref(), "cs-bench.")?;
    eprintln!("{} cs-bench: working in {} (load average {})", util::clock(), root.display(), util::loadavg());
    res.meta.load_start = util::loadavg();
    if let Some(dev) = util::ext4_without_journal(&root) {
        let msg = format!(
            "the work directory is on ext4 without a journal ({dev}): there a new inode skips every inode freed in \
             the last minute, one lookup each, so creating files right after deleting many (W1-W3, S1) is slow and \
             varies with what anything on {dev} deleted; give --dir on a journaled filesystem (docs/benchmarks.md)"
        );
        eprintln!("{} cs-bench: {msg}", util::clock());
        res.notes.push(msg);
    }
    res.meta.date = util::output(std::process::Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"))
        .unwrap_or_default()
        .trim()
        .to_string();
    res.meta.command = command;
    res.meta.machine = util::machine();
    res.meta.runs = runs;
    res.meta.sizes = sizes.describe();
    res.meta.tools = vec![
        ("sshfs".into(), util::version_line("sshfs", "--version", "SSHFS version").replace("SSHFS version ", "")),
        ("unionfs-fuse".into(), unionfs_version()),
        ("fuse-overlayfs".into(), util::FuseOverlayfs::version()),
        ("OpenSSH".into(), util::version("ssh", "-V")),
        ("rsync".into(), util::version("rsync", "--version").split_whitespace().nth(2).unwrap_or("?").to_string()),
        ("unison".into(), util::version("unison", "-version").replace("unison version ", "")),
        (
            "zstd".into(),
            util::version("zstd", "--version")
                .split_whitespace()
                .find(|w| w.starts_with('v'))
                .unwrap_or("?")
                .trim_end_matches(',')
                .to_string(),
        ),
        ("git".into(), util::version("git", "--version").replace("git version ", "")),
        ("gcc".into(), util::version("cc", "--version").rsplit(' ').next().unwrap_or("?").to_string()),
        ("python".into(), util::version("python3", "--version").replace("Python ", "")),
    ];

    let r = bench_all(&cli, &root, bin, sizes, &lim, &rtts, &only, &setups, &mut res);
    eprintln!("{} cs-bench: measured; writing the report", util::clock());
    res.meta.load_end = util::loadavg();
    res.meta.duration_s = t_start.elapsed().as_secs_f64();
    if let Err(e) = &r {
        res.notes.push(format!("the bench stopped early: {e:#}"));
    }
    let md = res.markdown();
    println!("{md}");
    if let Some(p) = &cli.markdown {
        std::fs::write(p, &md).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.json {
        std::fs::write(p, serde_json::to_vec_pretty(&res)?).with_context(|| format!("write {}", p.display()))?;
    }
    // Nothing may stay mounted below the work directory.
    let left = mounts_below(&root);
    if !left.is_empty() {
        eprintln!("{} cs-bench: still mounted, detaching: {left:?}", util::clock());
        for m in &left {
            let _ = cs_testbed::lazy_unmount(m);
        }
    }
    if cli.keep || cli.dir.is_some() {
        eprintln!("{} cs-bench: work directory kept: {}", util::clock(), root.display());
    } else if left.is_empty() {
        let _ = remove_tree(&root);
    }
    eprintln!("{} cs-bench: done", util::clock());
    r?;
    Ok(res.errors().len())
}

/// One of the two overlay candidates, mounted.
enum OverlayMount {
    Kernel(cs_union::overlay::OverlayGuard),
    Fuse(util::FuseOverlayfs),
}

impl OverlayMount {
    fn unmount(self) -> Result<()> {
        match self {
            OverlayMount::Kernel(g) => Ok(g.unmount()?),
            OverlayMount::Fuse(f) => f.unmount(),
        }
    }
}

/// Lower (a copy of the template), upper, work and merged directories below `d`, with the
/// local-only directories made opaque in the upper layer, as cs-actor prepares them.
fn overlay_dirs(d: &Path, template: &Path, setup_log: &Path) -> Result<cs_union::overlay::Overlay> {
    let ov = cs_union::overlay::Overlay {
        upper: d.join("upper"),
        lower: d.join("lower"),
        work: d.join("work"),
        merged: d.join("merged"),
        extra: Vec::new(),
    };
    copy_tree(template, &ov.lower, setup_log)?;
    std::fs::create_dir_all(&ov.upper)?;
    std::fs::create_dir_all(&ov.merged)?;
    for name in cs_mount::DEFAULT_LOCAL_ONLY {
        let rel =
            cs_protocol::RelPath::new(name.as_bytes()).map_err(|e| anyhow::anyhow!("local-only name {name:?}: {e}"))?;
        cs_union::overlay::create_opaque_dir(&ov.upper, &rel)?;
    }
    Ok(ov)
}

fn unionfs_version() -> String {
    match cs_union::UnionfsFuse::find().and_then(|u| u.version()) {
        Ok(v) => v,
        Err(_) => "missing".into(),
    }
}

/// Mount points under `root`, deepest first.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

#[allow(clippy::too_many_arguments)]
fn bench_all(
    cli: &Cli,
    root: &Path,
    bin: PathBuf,
    sizes: Sizes,
    lim: &Limits,
    rtts: &[u64],
    only: &dyn Fn(&str) -> bool,
    setups: &BTreeSet<String>,
    res: &mut Results,
) -> Result<()> {
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let setup_log = logs.join("setup.log");

    // sshd and the shaped link in front of it.
    let sshd_dir = root.join("sshd");
    std::fs::create_dir_all(&sshd_dir)?;
    let sshd = Sshd::start(&sshd_dir)?;
    let mut link = LinkConfig::rtt(Duration::from_millis(rtts[0]));
    link.bandwidth = cli.bandwidth;
    let shaper = Shaper::start(link)?;
    let ssh_route = shaper.route(sshd.addr())?;

    // Fixtures, generated once.
    let t = Instant::now();
    eprintln!("{} cs-bench: generating fixtures …", util::clock());
    let fx = root.join("fixtures");
    let template = fx.join("home");
    let runs = lim.runs;
    let w_any = ["W1", "W2", "W3", "W4", "W5"].iter().any(|w| only(w));
    let repo_src = fx.join("repo");
    if only("W2") || only("W5") {
        gen::git_repo(&repo_src, sizes.repo_files, &setup_log)?;
    }
    for r in 0..runs {
        if only("W1") {
            gen::c_project(&template.join(format!("w1/proj-r{r}")), sizes.w1_sources)?;
        }
        if only("W4") {
            gen::read_set(&template.join(format!("w4/set-r{r}")), sizes.w4_files, 40 + r as u64)?;
        }
        if only("W5") {
            copy_tree(&repo_src, &template.join(format!("w5/repo-r{r}")), &setup_log)?;
        }
    }
    std::fs::create_dir_all(&template)?;
    let house = fx.join("wheelhouse");
    let (python, wheels) = if only("W3") {
        let py = gen::python()?;
        let w = gen::wheelhouse(&fx.join("wheel-src"), &house, &py, sizes.w3_wheels, sizes.w3_modules, &setup_log)?;
        (py, w)
    } else {
        (PathBuf::from("python3"), Vec::new())
    };
    // The baselines' sources (read-only, so generated once): on this machine they serve as
    // the compute server's files (C→P) and as the project's (P→C).
    let base_src = fx.join("sync-src");
    if ["rsync", "tar", "unison"].iter().any(|t| setups.contains(*t)) {
        if only("S1") {
            gen::small_files(&base_src.join("S1"), sizes.s1_files, 100)?;
        }
        if only("S2") {
            gen::big_files(&base_src.join("S2"), sizes.s2_files, sizes.s2_bytes, 100)?;
        }
    }
    let s3_home = root.join("p-s3").join("home");
    if only("S3") && setups.contains("cs-actor") {
        gen::many_small(&s3_home, sizes.s3_files - sizes.s3_held, 9)?;
    }
    let s4_home = root.join("p-s4").join("home");
    if only("S4") && setups.contains("cs-actor-replica") {
        gen::many_small(&s4_home, sizes.s4_files, 11)?;
    }
    eprintln!("{} cs-bench: fixtures ready in {:.1} s", util::clock(), t.elapsed().as_secs_f64());

    let env = Env {
        root: root.to_path_buf(),
        bin,
        sshd,
        shaper,
        ssh_route,
        user: cs_testbed::current_user(),
        sizes,
        python,
        wheels,
        house,
        repo_src,
        logs,
        compute_args: cli.compute_args.clone(),
    };

    // Local disk and the union over a local lower: no network, measured once.
    if w_any && setups.contains("local") {
        eprintln!("{} cs-bench: local disk", util::clock());
        let home = root.join("local").join("home");
        copy_tree(&template, &home, &setup_log)?;
        let v = View { kind: Kind::Local, view: home.clone(), project: home.clone(), upper: None, compute: None };
        workloads(&env, res, lim, &v, u64::MAX, only)?;
        remove_tree(&home)?;
    }
    if w_any && setups.contains("union-local") {
        eprintln!("{} cs-bench: unionfs-fuse over a local lower", util::clock());
        let d = root.join("union-local");
        let (lower, upper, merged) = (d.join("lower"), d.join("upper"), d.join("merged"));
        copy_tree(&template, &lower, &setup_log)?;
        std::fs::create_dir_all(&upper)?;
        std::fs::create_dir_all(&merged)?;
        let u = cs_union::UnionfsFuse::find()?;
        // The same union cs-actor mounts: `-o cow`, local-only directories opaque.
        let layout = u.probe_layout(&d)?;
        cs_mount::prepare_local_only(
            &upper,
            layout,
            &cs_mount::DEFAULT_LOCAL_ONLY.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        let guard = cs_union::MountGuard::mount(&u, &upper, &lower, &merged, &[])?;
        let v = View {
            kind: Kind::UnionLocal,
            view: merged.clone(),
            project: lower.clone(),
            upper: Some(upper.clone()),
            compute: None,
        };
        let r = workloads(&env, res, lim, &v, u64::MAX, only);
        guard.unmount()?;
        r?;
        remove_tree(&d)?;
    }
    // The overlay candidates: the same directories, only the mount differs.
    for (setup, kind, what) in [
        ("overlay-local", Kind::OverlayLocal, "kernel overlayfs"),
        ("fuse-overlayfs-local", Kind::FuseOverlayfsLocal, "fuse-overlayfs"),
    ] {
        if !(w_any && setups.contains(setup)) {
            continue;
        }
        if kind == Kind::OverlayLocal && !cs_union::overlay::kernel_has_overlay() {
            let msg = format!("{setup} needs overlayfs in the kernel (/proc/filesystems): skipped");
            eprintln!("{} cs-bench: {msg}", util::clock());
            res.notes.push(msg);
            continue;
        }
        eprintln!("{} cs-bench: {what} over a local lower", util::clock());
        let d = root.join(setup);
        let ov = overlay_dirs(&d, &template, &setup_log)?;
        let mount = match kind {
            // Mounted as cs-actor mounts it.
            Kind::OverlayLocal => OverlayMount::Kernel(
                cs_union::overlay::Overlay {
                    extra: cs_mount::DEFAULT_OVERLAY_OPTIONS.iter().map(|o| o.to_string()).collect(),
                    ..ov.clone()
                }
                .mount()?,
            ),
            _ => OverlayMount::Fuse(util::FuseOverlayfs::mount(&ov)?),
        };
        let v = View { kind, view: ov.merged.clone(), project: ov.lower.clone(), upper: None, compute: None };
        let r = workloads(&env, res, lim, &v, u64::MAX, only);
        mount.unmount()?;
        r?;
        remove_tree(&d)?;
    }

    for &rtt in rtts {
        let mut link = LinkConfig::rtt(Duration::from_millis(rtt));
        link.bandwidth = cli.bandwidth;
        env.shaper.set_config(link);
        let rd = root.join(format!("rtt{rtt}"));
        eprintln!("{} cs-bench: RTT {rtt} ms (load average {})", util::clock(), util::loadavg());

        if w_any && setups.contains("sshfs") {
            eprintln!("{} cs-bench: raw sshfs, RTT {rtt} ms", util::clock());
            let home = rd.join("sshfs-home");
            let mnt = rd.join("sshfs-mnt");
            copy_tree(&template, &home, &setup_log)?;
            std::fs::create_dir_all(&mnt)?;
            // sshfs as a user would mount it: its own defaults.
            let m = cs_testbed::sshfs_mount(&home, ssh_route.port(), env.sshd.identity(), &mnt, &[])?;
            let v = View { kind: Kind::Sshfs, view: mnt.clone(), project: home.clone(), upper: None, compute: None };
            let r = workloads(&env, res, lim, &v, rtt, only);
            m.unmount()?;
            r?;
            remove_tree(&home)?;
        }

        // cs-actor with each union backend, one after the other over the same link.
        for (kind, union) in
            [(Kind::CsActor, "unionfs-fuse"), (Kind::CsActorOverlay, "overlay"), (Kind::CsActorReplica, "overlay")]
        {
            if !(setups.contains(kind.column()) && (w_any || only("S1") || only("S2"))) {
                continue;
            }
            eprintln!("{} cs-bench: {}, RTT {rtt} ms", util::clock(), kind.column());
            let home = rd.join(format!("{}-home", kind.column()));
            copy_tree(&template, &home, &setup_log)?;
            let lower = if kind == Kind::CsActorReplica { sync::Lower::Replica } else { sync::Lower::Sshfs };
            let pair = Pair::start(&env, &home, &rd.join(kind.column()), 10.0, Some(union), lower)?;
            let r = cs_actor_part(&env, res, lim, &pair, kind, rtt, only);
            pair.stop();
            keep_service_logs(&rd.join(kind.column()), &env.logs, &format!("{}-{rtt}ms", kind.column()));
            r?;
            remove_tree(&home)?;
        }

        for tool in [Tool::Rsync, Tool::Tar, Tool::Unison] {
            if !setups.contains(tool.column()) {
                continue;
            }
            for t in [Test::S1, Test::S2] {
                let name = if t == Test::S1 { "S1" } else { "S2" };
                if !only(name) {
                    continue;
                }
                for way in [Way::ToProject, Way::ToCompute] {
                    sync::baseline(&env, res, lim, tool, t, way, rtt, &base_src.join(name))?;
                }
            }
        }

        // W4's pass-1 reference: tar carries each run's W4 file set over the same link.
        if only("W4") && setups.contains("tar") {
            eprintln!("{} cs-bench: W4's files by tar | zstd | ssh, RTT {rtt} ms", util::clock());
            sync::w4_tar(&env, res, lim, rtt, &template.join("w4"))?;
        }

        if only("S3") && setups.contains("cs-actor") {
            eprintln!("{} cs-bench: S3, RTT {rtt} ms", util::clock());
            let rounds = cli.s3_rounds.unwrap_or(runs.max(5));
            res.s3.push(sync::s3(&env, &s3_home, &rd.join("s3"), rtt, rounds));
        }

        if only("S4") && setups.contains("cs-actor-replica") {
            eprintln!("{} cs-bench: S4, RTT {rtt} ms", util::clock());
            res.s4.push(sync::s4(&env, &s4_home, &rd.join("s4"), rtt, runs));
        }
        remove_tree(&rd)?;
    }
    Ok(())
}

/// The cs-actor part of one RTT, for one union backend (`kind`): memory idle, S1 and S2
/// (memory peak), W1–W5.
fn cs_actor_part(
    env: &Env,
    res: &mut Results,
    lim: &Limits,
    pair: &Pair,
    kind: Kind,
    rtt: u64,
    only: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let (cp, pp) = (pair.compute.pid(), pair.broker.pid());
    // Idle: after the first round, a few seconds of nothing.
    std::thread::sleep(Duration::from_secs(3));
    let mut rss = Rss {
        rtt_ms: rtt,
        column: kind.column().to_string(),
        compute_idle_kib: rss_kib(cp),
        project_idle_kib: rss_kib(pp),
        ..Default::default()
    };
    let sum_named = |name: &str| util::descendants_rss_kib(cp, name);
    rss.unionfs_kib = sum_named("unionfs");
    rss.sshfs_kib = sum_named("sshfs");
    let reset = reset_peak_rss(cp) && reset_peak_rss(pp);
    if only("S1") {
        sync::cs_actor(env, res, lim, pair, kind, Test::S1, Way::ToProject, rtt)?;
        sync::cs_actor(env, res, lim, pair, kind, Test::S1, Way::ToCompute, rtt)?;
        if reset {
            rss.compute_peak_s1_kib = peak_rss_kib(cp);
            rss.project_peak_s1_kib = peak_rss_kib(pp);
        }
    }
    res.rss.push(rss);
    if only("S2") {
        sync::cs_actor(env, res, lim, pair, kind, Test::S2, Way::ToProject, rtt)?;
        sync::cs_actor(env, res, lim, pair, kind, Test::S2, Way::ToCompute, rtt)?;
    }
    let v = View {
        kind,
        view: pair.compute.merged.clone(),
        project: pair.home.clone(),
        upper: Some(pair.compute.upper.clone()),
        compute: Some(&pair.compute),
    };
    workloads(env, res, lim, &v, rtt, only)
}
