//! The two cs-actor services, run from the real binary: `cs-actor project` (the broker) and
//! `cs-actor compute` (mounts, union, rounds), each talking through the shaper.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use cs_proc::stop_child;
use rustix::process::{Pid, Signal};

use crate::util::{children_of, is_mounted, poll, start_time};

/// Asks a control socket one JSON line and reads the answer.
pub fn ask(sock: &Path, req: &str, timeout: Duration) -> Result<Value> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connect {}", sock.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(req.as_bytes())?;
    s.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .with_context(|| format!("no answer on {} within {timeout:?}", sock.display()))?;
    serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))
}

/// `cs-actor project` on a home.
pub struct Broker {
    child: Child,
    /// Its control socket.
    #[allow(dead_code)]
    pub sock: PathBuf,
    pub listen: SocketAddr,
    /// Its stderr.
    #[allow(dead_code)]
    pub log: PathBuf,
}

impl Broker {
    /// Starts the broker on `home` with its state in `dir/state`, listening on a free port of
    /// 127.0.0.1, with one client `id` whose token it writes to `dir/token` (0600).
    pub fn start(bin: &Path, home: &Path, dir: &Path, id: &str) -> Result<Broker> {
        Broker::start_many(bin, home, dir, &[id.to_string()])
    }

    /// Like [`Broker::start`] with several clients: `dir/token-<id>` holds each one's token
    /// (and `dir/token` the first one's).
    pub fn start_many(bin: &Path, home: &Path, dir: &Path, ids: &[String]) -> Result<Broker> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        let mut rng = crate::gen::Rng::new(now_nanos());
        let mut lines = String::new();
        for (i, id) in ids.iter().enumerate() {
            let token = format!("bench-token-{}-{}", std::process::id(), rng.next());
            lines.push_str(&format!("{id} {token}\n"));
            let mut files = vec![dir.join(format!("token-{id}"))];
            if i == 0 {
                files.push(dir.join("token"));
            }
            for token_file in files {
                std::fs::write(&token_file, format!("{token}\n"))?;
                std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, lines)?;
        std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))?;
        let sock = dir.join("project.sock");
        let log = dir.join("broker.log");
        let mut last = String::new();
        for _ in 0..5 {
            let port = crate::util::free_port()?;
            let listen = SocketAddr::from(([127, 0, 0, 1], port));
            let _ = std::fs::remove_file(&sock);
            let out = std::fs::File::create(&log)?;
            let mut child = Command::new(bin)
                .arg("project")
                .arg("--home")
                .arg(home)
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--tokens")
                .arg(&tokens)
                .arg("--state")
                .arg(dir.join("state"))
                .arg("--control-socket")
                .arg(&sock)
                .env("RUST_LOG", service_log())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(out))
                .spawn()
                .with_context(|| format!("cannot run {}", bin.display()))?;
            let ok = poll(Duration::from_secs(30), Duration::from_millis(50), || {
                matches!(child.try_wait(), Ok(Some(_)))
                    || ask(&sock, r#"{"cmd":"status"}"#, Duration::from_secs(5)).is_ok()
            });
            if ok && matches!(child.try_wait(), Ok(None)) {
                return Ok(Broker { child, sock, listen, log });
            }
            stop_child(&mut child, Duration::from_secs(5));
            last = crate::util::tail(&log, 2000);
        }
        bail!("the broker did not start: {last}")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(20));
    }
}

/// The services' `RUST_LOG`: `warn`, or `CS_BENCH_SERVICE_LOG` (e.g. `info` to log every round).
fn service_log() -> String {
    std::env::var("CS_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into())
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
}

/// `cs-actor compute`: the union at `merged` over an sshfs lower at `lower`.
pub struct Compute {
    child: Option<Child>,
    pub sock: PathBuf,
    pub merged: PathBuf,
    pub upper: PathBuf,
    pub lower: PathBuf,
    pub log: PathBuf,
}

/// A compute service's lower layer.
pub enum ComputeLower {
    /// The full shell command that mounts the lower in the foreground (`--lower-mount-cmd`).
    Cmd(String),
    /// The project's replica in `DIR/replica` (`--replica-dir`).
    Replica,
}

pub struct ComputeSpec<'a> {
    pub bin: &'a Path,
    /// Where `merged/ upper/ state/ lower/` and the log go.
    pub dir: &'a Path,
    pub server: String,
    pub id: &'a str,
    pub token_file: &'a Path,
    pub lower: ComputeLower,
    /// Seconds between timer rounds.
    pub interval: f64,
    /// `--union NAME`, when not the service's default.
    pub union: Option<&'a str>,
    /// More arguments, last (`cs-bench --compute-arg`).
    pub extra: &'a [String],
}

impl Compute {
    /// Starts the service and returns once its first round has committed.
    pub fn start(spec: ComputeSpec<'_>) -> Result<Compute> {
        let mut c = Compute::spawn(spec)?;
        c.first_round(Duration::from_secs(120))?;
        Ok(c)
    }

    /// Starts the service and returns at once (S4 times what follows).
    pub fn spawn(spec: ComputeSpec<'_>) -> Result<Compute> {
        let d = spec.dir;
        let (merged, upper, lower, state) = (d.join("merged"), d.join("upper"), d.join("lower"), d.join("state"));
        for p in [&merged, &upper, &lower, &state] {
            std::fs::create_dir_all(p)?;
        }
        let sock = d.join("compute.sock");
        let log = d.join("compute.log");
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(spec.bin);
        cmd.arg("compute");
        match &spec.lower {
            ComputeLower::Cmd(c) => cmd.arg("--lower-mount-cmd").arg(c).arg("--lower-mountpoint").arg(&lower),
            ComputeLower::Replica => cmd.arg("--replica-dir").arg(d.join("replica")),
        };
        let child = cmd
            .arg("--server")
            .arg(&spec.server)
            .arg("--id")
            .arg(spec.id)
            .arg("--token-file")
            .arg(spec.token_file)
            .arg("--merged")
            .arg(&merged)
            .arg("--upper")
            .arg(&upper)
            .arg("--state")
            .arg(&state)
            .arg("--control-socket")
            .arg(&sock)
            .arg("--interval")
            .arg(spec.interval.to_string())
            .args(spec.union.map(|u| ["--union", u]).into_iter().flatten())
            .args(spec.extra)
            .env("RUST_LOG", service_log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(out))
            .spawn()
            .with_context(|| format!("cannot run {}", spec.bin.display()))?;
        Ok(Compute { child: Some(child), sock, merged, upper, lower, log })
    }

    /// Waits until the service's first round has committed; stops it if that does not
    /// happen within `timeout` or the service exits.
    pub fn first_round(&mut self, timeout: Duration) -> Result<()> {
        let c = self;
        let mut last = Value::Null;
        let ok = poll(timeout, Duration::from_millis(100), || {
            if let Some(ch) = c.child.as_mut() {
                if let Ok(Some(_)) = ch.try_wait() {
                    return true;
                }
            }
            match c.status() {
                Ok(st) => {
                    let done = st["round"]["rounds_committed"].as_u64().unwrap_or(0) >= 1;
                    last = st;
                    done
                }
                Err(_) => false,
            }
        });
        let alive = matches!(c.child.as_mut().map(|ch| ch.try_wait()), Some(Ok(None)));
        if !ok || !alive {
            let tail = crate::util::tail(&c.log, 3000);
            c.shutdown();
            bail!("the compute service did not commit a first round (status {last}); log:\n{tail}");
        }
        Ok(())
    }

    /// Whether the service is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|ch| ch.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn status(&self) -> Result<Value> {
        let v = ask(&self.sock, r#"{"cmd":"status"}"#, Duration::from_secs(10))?;
        if v["ok"].as_bool() != Some(true) {
            bail!("status: {v}");
        }
        Ok(v["status"].clone())
    }

    /// Asks for a round that starts after now and waits until it committed; returns the round
    /// number. A failed round is retried (the service retries too) until `timeout`.
    pub fn sync(&self, timeout: Duration) -> Result<u64> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no round committed within {timeout:?}");
            }
            let v = ask(&self.sock, r#"{"cmd":"sync","wait":true}"#, left)?;
            if v["ok"].as_bool() == Some(true) {
                return v["round"].as_u64().ok_or_else(|| anyhow!("sync answer without a round: {v}"));
            }
            tracing::warn!(answer = %v, "round failed; asking again");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the service (a last round, then it unmounts), and makes sure nothing it mounted
    /// stays mounted and none of its children stays running.
    pub fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let kids: Vec<(u32, Option<u64>)> = children_of(child.id()).into_iter().map(|p| (p, start_time(p))).collect();
        stop_child(&mut child, Duration::from_secs(60));
        for m in [&self.merged, &self.lower] {
            if is_mounted(m) {
                let _ = cs_testbed::lazy_unmount(m);
            }
        }
        // The service leaves its bare mount point immutable; the bench deletes its work dir.
        if let Err(e) = cs_mount::unguard_mount_point(&self.merged) {
            tracing::warn!(error = %e, "the work directory may not be removable");
        }
        for (pid, started) in kids {
            // Only the very process that was our child's child (same pid and start time).
            if started.is_some() && start_time(pid) == started {
                // A process we caused (sshfs, union), checked above.
                if let Some(pid) = Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::TERM);
                }
            }
        }
    }
}

impl Drop for Compute {
    fn drop(&mut self) {
        self.shutdown();
    }
}
