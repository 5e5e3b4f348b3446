//! S1 and S2 (cs-actor against rsync, tar | zstd | ssh and unison), S3 (an idle round) and
//! S4 (the replica's start).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::{measure, Env, Kind, Limits, Sample};
use crate::gen;
use crate::report::{Results, S3Result, S3Round, S4Result, S4Run, W4_PASS1};
use crate::services::{Broker, Compute, ComputeLower, ComputeSpec};
use crate::util::{bash, count_files, cpu_ns, poll, remove_tree, rss_kib, run_until, stopped, Ended};

/// S3's quiet window: no request, only what the services do by themselves.
const S3_QUIET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    S1,
    S2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Written on the compute server, wanted on the project.
    ToProject,
    /// Written on the project, wanted on the compute server.
    ToCompute,
}

impl Test {
    pub fn name(self, way: Way) -> &'static str {
        match (self, way) {
            (Test::S1, Way::ToProject) => "S1 C→P",
            (Test::S1, Way::ToCompute) => "S1 P→C",
            (Test::S2, Way::ToProject) => "S2 C→P",
            (Test::S2, Way::ToCompute) => "S2 P→C",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Test::S1 => "s1",
            Test::S2 => "s2",
        }
    }
}

fn way_tag(w: Way) -> &'static str {
    match w {
        Way::ToProject => "c2p",
        Way::ToCompute => "p2c",
    }
}

/// Writes the test's files at `dir`.
fn generate(env: &Env, t: Test, dir: &Path, seed: u64) -> Result<()> {
    match t {
        Test::S1 => gen::small_files(dir, env.sizes.s1_files, seed),
        Test::S2 => gen::big_files(dir, env.sizes.s2_files, env.sizes.s2_bytes, seed),
    }
}

/// Whether `dir` holds the test's files, all complete.
fn complete(env: &Env, t: Test, dir: &Path) -> bool {
    match t {
        Test::S1 => count_files(dir) == env.sizes.s1_files as u64,
        Test::S2 => (0..env.sizes.s2_files).all(|i| {
            std::fs::metadata(dir.join(format!("blob{i}.bin"))).map(|m| m.len() == env.sizes.s2_bytes).unwrap_or(false)
        }),
    }
}

/// Reads every file of S2 at `dir` (the content has to arrive, not only the names); stops
/// at `deadline`. Returns the bytes read.
fn read_all(env: &Env, dir: &Path, deadline: Instant) -> Result<u64> {
    use std::io::Read;
    let mut total = 0;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..env.sizes.s2_files {
        let p = dir.join(format!("blob{i}.bin"));
        let mut f = std::fs::File::open(&p).with_context(|| format!("open {}", p.display()))?;
        loop {
            if Instant::now() > deadline || stopped() {
                return Ok(total);
            }
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

/// Where a compute service's lower layer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lower {
    /// sshfs through the shaper (the seed's design).
    Sshfs,
    /// The project's replica (`--replica-dir`): metadata and content over the websocket.
    Replica,
}

/// The cs-actor services of one RTT: broker on `home`, compute server behind the shaper.
pub struct Pair {
    pub broker: Broker,
    pub compute: Compute,
    pub broker_route: SocketAddr,
    pub home: PathBuf,
}

impl Pair {
    /// `union`: `--union NAME` for the compute service (`None`: the service's default).
    pub fn start(env: &Env, home: &Path, dir: &Path, interval: f64, union: Option<&str>, lower: Lower) -> Result<Pair> {
        let id = "bench-gpu";
        let broker = Broker::start(&env.bin, home, &dir.join("broker"), id)?;
        let broker_route = env.shaper.route(broker.listen)?;
        let target = cs_mount::SshfsTarget {
            user: Some(env.user.clone()),
            host: "127.0.0.1".into(),
            port: Some(env.ssh_route.port()),
            remote_dir: home.display().to_string(),
            ssh_options: env.sshd.ssh_options(),
        };
        let cdir = dir.join("compute");
        let lower = match lower {
            Lower::Sshfs => ComputeLower::Cmd(cs_mount::sshfs_command(
                &target,
                &cdir.join("lower"),
                &cs_mount::SshfsOptions::default(),
            )),
            Lower::Replica => ComputeLower::Replica,
        };
        let compute = Compute::start(ComputeSpec {
            bin: &env.bin,
            dir: &cdir,
            server: format!("ws://{broker_route}"),
            id,
            token_file: &dir.join("broker").join("token"),
            lower,
            interval,
            union,
            extra: &env.compute_args,
        })?;
        Ok(Pair { broker, compute, broker_route, home: home.to_path_buf() })
    }

    pub fn stop(mut self) {
        self.compute.shutdown();
        self.broker.stop();
    }
}

/// Waits until the compute service has run no round for [`SETTLE`] and none runs (at most
/// a minute): the rounds that earlier steps set off are over.
fn settle(c: &Compute) -> Result<()> {
    let committed = |c: &Compute| -> Result<(u64, bool)> {
        let st = c.status()?;
        Ok((st["round"]["rounds_committed"].as_u64().unwrap_or(0), st["round"]["phase"] == "idle"))
    };
    let give_up = Instant::now() + Duration::from_secs(60);
    let mut last = committed(c)?;
    while Instant::now() < give_up {
        std::thread::sleep(SETTLE);
        let now = committed(c)?;
        if now == last && now.1 {
            return Ok(());
        }
        last = now;
    }
    bail!("the compute service kept running rounds for a minute with nothing to sync")
}

/// Longer than the upper-layer watcher's debounce (1 s).
const SETTLE: Duration = Duration::from_millis(1500);

/// S1/S2 through cs-actor, one direction.
/// `kind`: the union backend `pair` runs (its column).
#[allow(clippy::too_many_arguments)]
pub fn cs_actor(
    env: &Env,
    res: &mut Results,
    lim: &Limits,
    pair: &Pair,
    kind: Kind,
    t: Test,
    way: Way,
    rtt: u64,
) -> Result<()> {
    let c = &pair.compute;
    measure(res, lim, t.name(way), rtt, kind.column(), |r, deadline| {
        let rel = format!("{}/{}-r{r}", t.tag(), way_tag(way));
        let seed = 100 + r as u64;
        let project = pair.home.join(&rel);
        let view = c.merged.join(&rel);
        let sample = match way {
            Way::ToProject => {
                // Bytes from the start of the write: rounds the watcher starts meanwhile count.
                let b0 = env.wire(pair.broker_route);
                let w = Instant::now();
                generate(env, t, &view, seed)?;
                let wrote = w.elapsed();
                let t0 = Instant::now();
                let mut rounds = 0;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break Sample::TimedOut { secs: t0.elapsed().as_secs_f64(), estimate: None };
                    }
                    c.sync(left)?;
                    rounds += 1;
                    if complete(env, t, &project) {
                        break Sample::Done {
                            secs: t0.elapsed().as_secs_f64(),
                            bytes: Some(env.wire(pair.broker_route) - b0),
                            note: Some(format!(
                                "writing them through the merged view took {:.2} s (not counted)",
                                wrote.as_secs_f64()
                            )),
                            parts: Vec::new(),
                        };
                    }
                    if rounds >= 5 {
                        bail!("{} not complete on the project after 5 rounds", project.display());
                    }
                }
            }
            Way::ToCompute => {
                // The previous run's cleanup round deleted through the merged view, which
                // the upper-layer watcher sees: it starts one more round a second later.
                // Generating before that round would time it, not the service's way of
                // learning of P's files (following, or its timer).
                settle(c)?;
                generate(env, t, &project, seed)?;
                // Both routes: through the lower (sshfs) and through the rounds (the broker's
                // websocket: with `--pull changed` P's new files come that way).
                let wire = || env.wire(env.ssh_route) + env.wire(pair.broker_route);
                let b0 = wire();
                let t0 = Instant::now();
                let visible =
                    poll(deadline.saturating_duration_since(Instant::now()), Duration::from_millis(20), || {
                        stopped() || complete(env, t, &view)
                    });
                if !visible {
                    Sample::TimedOut { secs: t0.elapsed().as_secs_f64(), estimate: None }
                } else {
                    let want = env.sizes.s2_bytes * env.sizes.s2_files as u64;
                    let n = if t == Test::S2 { read_all(env, &view, deadline)? } else { want };
                    let secs = t0.elapsed().as_secs_f64();
                    if n < want {
                        // Timed out while reading: extrapolate from the bytes read.
                        Sample::TimedOut { secs, estimate: (n > 0).then(|| secs * want as f64 / n as f64) }
                    } else {
                        Sample::Done { secs, bytes: Some(wire() - b0), note: None, parts: Vec::new() }
                    }
                }
            }
        };
        // The project deletes it; a round deletes the synced copies on the compute server.
        remove_tree(&project)?;
        c.sync(Duration::from_secs(900))?;
        Ok(sample)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Rsync,
    Tar,
    Unison,
}

impl Tool {
    pub fn column(self) -> &'static str {
        match self {
            Tool::Rsync => "rsync",
            Tool::Tar => "tar",
            Tool::Unison => "unison",
        }
    }
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

/// The shell command that carries `src` to `dst` with `tool` (one of them remote, over ssh
/// through the shaper).
fn baseline_cmd(env: &Env, tool: Tool, way: Way, src: &Path, dst: &Path, unison_dir: &Path) -> Result<Command> {
    let ssh = env.ssh_command();
    let host = format!("{}@127.0.0.1", env.user);
    Ok(match (tool, way) {
        (Tool::Rsync, Way::ToProject) => bash(&format!("rsync -a -e '{ssh}' {}/ {host}:{}/", q(src), q(dst))),
        (Tool::Rsync, Way::ToCompute) => bash(&format!("rsync -a -e '{ssh}' {host}:{}/ {}/", q(src), q(dst))),
        (Tool::Tar, Way::ToProject) => bash(&format!(
            "tar -C {} -cf - . | zstd -q -c | {ssh} {host} \"mkdir -p {d} && zstd -dq -c | tar -C {d} -xf -\"",
            q(src),
            d = q(dst)
        )),
        (Tool::Tar, Way::ToCompute) => bash(&format!(
            "mkdir -p {d} && {ssh} {host} \"tar -C {} -cf - . | zstd -q -c\" | zstd -dq -c | tar -C {d} -xf -",
            q(src),
            d = q(dst)
        )),
        (Tool::Unison, _) => {
            // Fresh archives each run (in the bench's directory, never ~/.unison): a first sync.
            remove_tree(unison_dir)?;
            let local_arch = unison_dir.join("local");
            let remote_arch = unison_dir.join("remote");
            std::fs::create_dir_all(&local_arch)?;
            std::fs::create_dir_all(&remote_arch)?;
            let server = unison_dir.join("server.sh");
            std::fs::write(&server, format!("#!/bin/sh\nUNISON={} exec unison \"$@\"\n", q(&remote_arch)))?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755))?;
            }
            let (local, remote) = match way {
                Way::ToProject => (src, dst),
                Way::ToCompute => (dst, src),
            };
            std::fs::create_dir_all(local)?;
            let sshargs: Vec<String> = std::iter::once(format!("-p {}", env.ssh_route.port()))
                .chain(env.sshd.ssh_options().iter().map(|o| format!("-o {o}")))
                .collect();
            let mut c = Command::new("unison");
            c.arg(local)
                .arg(format!("ssh://{host}/{}", remote.display()))
                .args(["-batch", "-auto", "-silent", "-times", "-ui", "text", "-confirmbigdel=false", "-sshargs"])
                .arg(sshargs.join(" "))
                .arg("-servercmd")
                .arg(&server)
                .env("UNISON", &local_arch);
            c
        }
    })
}

/// S1/S2 with a baseline tool, one direction: `source` (the test's files, on this machine)
/// is carried to a new directory on the other side.
#[allow(clippy::too_many_arguments)]
pub fn baseline(
    env: &Env,
    res: &mut Results,
    lim: &Limits,
    tool: Tool,
    t: Test,
    way: Way,
    rtt: u64,
    source: &Path,
) -> Result<()> {
    measure(res, lim, t.name(way), rtt, tool.column(), |r, deadline| {
        let name = format!("{}-{}-{}-r{r}", t.tag(), tool.column(), way_tag(way));
        let dst = match way {
            Way::ToProject => env.root.join("p-base").join(&name),
            Way::ToCompute => env.root.join("c-local").join(&name),
        };
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        let (src, dst) = (source, &dst);
        if tool == Tool::Unison {
            // Unison wants both roots to exist; the empty one is the destination.
            std::fs::create_dir_all(dst)?;
        }
        let udir = env.root.join("unison").join(&name);
        let mut cmd = baseline_cmd(env, tool, way, src, dst, &udir)?;
        let b0 = env.wire(env.ssh_route);
        let ended = run_until(&mut cmd, &env.log(&format!("{}-{}", t.tag(), tool.column())), deadline)?;
        let bytes = env.wire(env.ssh_route) - b0;
        let sample = match ended {
            Ended::Done(d) => {
                if !complete(env, t, dst) {
                    bail!("{} left {} incomplete", tool.column(), dst.display());
                }
                Sample::Done { secs: d.as_secs_f64(), bytes: Some(bytes), note: None, parts: Vec::new() }
            }
            Ended::TimedOut(d) => Sample::TimedOut { secs: d.as_secs_f64(), estimate: None },
        };
        remove_tree(dst)?;
        remove_tree(&udir)?;
        Ok(sample)
    })
}

/// The reference for W4's first pass (issue 12: pass 1 within 1.5× of it): the `tar`
/// setup's command, project → compute, carrying the files W4's run `r` reads (`sets`, the
/// fixtures' `set-r{r}`: same generator, sizes and count) to a new local directory on the
/// compute side, through the same shaped link. Recorded as test [`W4_PASS1`], column `tar`.
pub fn w4_tar(env: &Env, res: &mut Results, lim: &Limits, rtt: u64, sets: &Path) -> Result<()> {
    measure(res, lim, W4_PASS1, rtt, Tool::Tar.column(), |r, deadline| {
        let src = sets.join(format!("set-r{r}"));
        let dst = env.root.join("c-local").join(format!("w4-tar-r{r}"));
        std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
        // The unison directory is not used for tar.
        let mut cmd = baseline_cmd(env, Tool::Tar, Way::ToCompute, &src, &dst, &env.root.join("unison"))?;
        let b0 = env.wire(env.ssh_route);
        let ended = run_until(&mut cmd, &env.log("w4-tar"), deadline)?;
        let bytes = env.wire(env.ssh_route) - b0;
        let sample = match ended {
            Ended::Done(d) => {
                let n = count_files(&dst);
                if n != env.sizes.w4_files as u64 {
                    bail!("tar carried {n} of W4's {} files to {}", env.sizes.w4_files, dst.display());
                }
                Sample::Done { secs: d.as_secs_f64(), bytes: Some(bytes), note: None, parts: Vec::new() }
            }
            Ended::TimedOut(d) => Sample::TimedOut { secs: d.as_secs_f64(), estimate: None },
        };
        remove_tree(&dst)?;
        Ok(sample)
    })
}

/// S3: an idle round in a project of `s3_files` files, `s3_held` of them held in the upper
/// layer: wall time, CPU per side, bytes on the wire. Also the services' RSS afterwards.
pub fn s3(env: &Env, home: &Path, dir: &Path, rtt: u64, rounds: usize) -> S3Result {
    let mut out = S3Result { rtt_ms: rtt, files: env.sizes.s3_files, held: env.sizes.s3_held, ..Default::default() };
    let held_rel = format!("held-rtt{rtt}");
    let r = (|| -> Result<()> {
        let pair = Pair::start(env, home, dir, 3600.0, Some("unionfs-fuse"), Lower::Sshfs)?;
        let c = &pair.compute;
        // The held files: written on the compute server, carried to the project by a round.
        let t = Instant::now();
        gen::small_files(&c.merged.join(&held_rel), env.sizes.s3_held, 7)?;
        // Let the watcher's own round (one second after the first change) start first.
        std::thread::sleep(Duration::from_millis(1500));
        c.sync(Duration::from_secs(900))?;
        if count_files(&home.join(&held_rel)) != env.sizes.s3_held as u64 {
            bail!("the held files did not reach the project");
        }
        c.sync(Duration::from_secs(900))?;
        eprintln!(
            "  S3 | RTT {rtt} ms | {} held files synced in {:.1} s",
            env.sizes.s3_held,
            t.elapsed().as_secs_f64()
        );
        let committed =
            |c: &Compute| -> Result<u64> { Ok(c.status()?["round"]["rounds_committed"].as_u64().unwrap_or(0)) };
        // What the services cost when nothing at all happens for a while (no request).
        {
            let (n0, c0, p0, w0) =
                (committed(c)?, cpu_ns(c.pid()), cpu_ns(pair.broker.pid()), env.wire(pair.broker_route));
            std::thread::sleep(S3_QUIET);
            let (n1, c1, p1, w1) =
                (committed(c)?, cpu_ns(c.pid()), cpu_ns(pair.broker.pid()), env.wire(pair.broker_route));
            out.quiet = Some(crate::report::Quiet {
                secs: S3_QUIET.as_secs_f64(),
                rounds: n1 - n0,
                cpu_compute_ms: c1.saturating_sub(c0) as f64 / 1e6,
                cpu_project_ms: p1.saturating_sub(p0) as f64 / 1e6,
                wire_bytes: w1 - w0,
            });
            eprintln!("  S3 | RTT {rtt} ms | {} s with no request: {} rounds ran", S3_QUIET.as_secs(), n1 - n0);
        }
        for k in 0..rounds {
            if stopped() {
                bail!("interrupted");
            }
            let n0 = committed(c)?;
            let (c0, p0) = (cpu_ns(c.pid()), cpu_ns(pair.broker.pid()));
            let (w0, s0) = (env.wire(pair.broker_route), env.wire(env.ssh_route));
            let t0 = Instant::now();
            c.sync(Duration::from_secs(300))?;
            let wall = t0.elapsed();
            let (c1, p1) = (cpu_ns(c.pid()), cpu_ns(pair.broker.pid()));
            let (w1, s1) = (env.wire(pair.broker_route), env.wire(env.ssh_route));
            let st = c.status()?;
            // A round nobody asked for may run in the same window (see docs/benchmarks.md): the
            // rounds are all alike (nothing changes), so the window is divided among them.
            let n = st["round"]["rounds_committed"].as_u64().unwrap_or(0).saturating_sub(n0).max(1);
            out.extra_rounds += (n - 1) as usize;
            let per = |v: u64| v as f64 / n as f64;
            let round = S3Round {
                wall_ms: wall.as_secs_f64() * 1000.0,
                round_ms: st["round"]["last_committed"]["duration_ms"].as_f64().unwrap_or(f64::NAN),
                cpu_compute_ms: per(c1.saturating_sub(c0)) / 1e6,
                cpu_project_ms: per(p1.saturating_sub(p0)) / 1e6,
                wire_bytes: per(w1 - w0).round() as u64,
                sshfs_bytes: per(s1 - s0).round() as u64,
            };
            eprintln!(
                "  S3 | RTT {rtt} ms | window {}: {n} round(s); per round: {:.1} ms (the service's own measure), CPU compute {:.1} ms, project {:.1} ms, {} B broker link, {} B sshfs link; the sync request waited {:.1} ms",
                k + 1,
                round.round_ms,
                round.cpu_compute_ms,
                round.cpu_project_ms,
                round.wire_bytes,
                round.sshfs_bytes,
                round.wall_ms,
            );
            out.rounds.push(round);
        }
        out.rss_compute_kib = rss_kib(c.pid());
        out.rss_project_kib = rss_kib(pair.broker.pid());
        pair.stop();
        Ok(())
    })();
    if let Err(e) = r {
        eprintln!("  S3 | RTT {rtt} ms | ERROR {e:#}");
        out.error = Some(format!("{e:#}"));
    }
    let _ = remove_tree(&home.join(&held_rel));
    out
}

/// S4: how the replica starts with a project of `s4_files` files (issue 12's startup
/// targets). Per run, in a new replica directory: the first start (no tree yet: the image
/// is made, P's snapshot is written as a placeholder tree, then the union is mounted), then
/// a restart on the same directory (the previous tree is there, a new snapshot is taken and
/// the fetched content kept). Timed from the spawn of `cs-actor compute` to the merged view
/// listing the project's root, and to the first round committed; RSS after 3 s idle.
pub fn s4(env: &Env, home: &Path, dir: &Path, rtt: u64, runs: usize) -> S4Result {
    let mut out = S4Result { rtt_ms: rtt, files: env.sizes.s4_files, ..Default::default() };
    // The project's first directory (gen::many_small): what a listing of the root must show.
    let probe = std::ffi::OsString::from("src0000");
    let r = (|| -> Result<()> {
        let id = "bench-gpu";
        let broker = Broker::start(&env.bin, home, &dir.join("broker"), id)?;
        let route = env.shaper.route(broker.listen)?;
        for k in 0..runs {
            if stopped() {
                bail!("interrupted");
            }
            let cdir = dir.join(format!("compute-{k}"));
            let mut run = S4Run::default();
            for restart in [false, true] {
                let spec = ComputeSpec {
                    bin: &env.bin,
                    dir: &cdir,
                    server: format!("ws://{route}"),
                    id,
                    token_file: &dir.join("broker").join("token"),
                    lower: ComputeLower::Replica,
                    interval: 3600.0,
                    union: None,
                    extra: &env.compute_args,
                };
                let t0 = Instant::now();
                let mut c = Compute::spawn(spec)?;
                let mut listed = None;
                let ok = poll(Duration::from_secs(300), Duration::from_millis(10), || {
                    let found = std::fs::read_dir(&c.merged)
                        .map(|rd| rd.flatten().any(|e| e.file_name() == probe))
                        .unwrap_or(false);
                    if found {
                        listed = Some(t0.elapsed().as_secs_f64());
                    }
                    found || !c.alive()
                });
                let Some(listed) = listed.filter(|_| ok) else {
                    let tail = crate::util::tail(&c.log, 3000);
                    c.shutdown();
                    bail!("the merged view did not list the project's root (restart: {restart}); log:\n{tail}");
                };
                c.first_round(Duration::from_secs(300))?;
                let round = t0.elapsed().as_secs_f64();
                let st = c.status()?;
                let entries = st["replica"]["entries"].as_u64().unwrap_or(0);
                eprintln!(
                    "  S4 | RTT {rtt} ms | run {} {}: root listed at {listed:.2} s, first round at {round:.2} s, {entries} entries, origin {}",
                    k + 1,
                    if restart { "restart" } else { "first start" },
                    st["replica"]["origin"]
                );
                if (entries as usize) < env.sizes.s4_files {
                    c.shutdown();
                    bail!("the replica's tree has {entries} entries, the project {} files", env.sizes.s4_files);
                }
                if restart {
                    (run.restart_listed_s, run.restart_round_s) = (Some(listed), Some(round));
                } else {
                    (run.listed_s, run.round_s) = (Some(listed), Some(round));
                    std::thread::sleep(Duration::from_secs(3));
                    let cp = c.pid();
                    run.rss_compute_kib = rss_kib(cp);
                    run.rss_holder_kib = crate::util::descendants_rss_kib(cp, "cs-actor");
                    run.rss_project_kib = rss_kib(broker.pid());
                }
                c.shutdown();
                // The next start writes its log anew: keep this one if asked for.
                if std::env::var_os("CS_BENCH_SERVICE_LOG").is_some() {
                    let to = env.logs.join(format!(
                        "s4-{rtt}ms-run{}-{}-compute.log",
                        k + 1,
                        if restart { "restart" } else { "first" }
                    ));
                    if let Err(e) = std::fs::copy(&c.log, &to) {
                        eprintln!("cs-bench: could not keep {}: {e}", c.log.display());
                    }
                }
            }
            out.runs.push(run);
            remove_tree(&cdir)?;
        }
        broker.stop();
        Ok(())
    })();
    if let Err(e) = r {
        eprintln!("  S4 | RTT {rtt} ms | ERROR {e:#}");
        out.error = Some(format!("{e:#}"));
    }
    out
}
