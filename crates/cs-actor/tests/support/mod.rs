//! The end-to-end test bed: real processes on 127.0.0.1 only.
//!
//! A [`Bed`] owns a temporary directory holding
//!
//! ```text
//! ROOT/home            the project's home (P)
//! ROOT/sshd/           a throwaway sshd (own port, own keys) serving it
//! ROOT/tokens          the broker's token table (gpu-1, gpu-2), mode 0600
//! ROOT/broker-state/   the broker's journal and client indexes
//! ROOT/project.sock    the broker's control socket
//! ROOT/<id>/           one compute server: merged/ upper/ state/ lower/ token control.sock
//! ROOT/*.log           every service's stderr
//! ```
//!
//! and starts the real `cs-actor project` (the broker) and `cs-actor compute` (sshfs lower,
//! union, rounds over a websocket) as child processes. The union is one of two backends
//! ([`Union`]: unionfs-fuse or kernel overlayfs, `cs-actor compute --union NAME`): tests written
//! once run with each ([`per_union!`], [`with_union`]), `CS_E2E_UNION=NAME` picks one. Teardown is by pid, in
//! order: every compute service gets SIGTERM and is waited for (it runs a last round, then
//! unmounts), then the broker, then sshd; SIGKILL after a grace period; then whatever is still
//! mounted under ROOT is lazily unmounted. [`Bed::finish`] asserts that the services stopped by
//! themselves and that nothing stayed mounted.
//!
//! The helpers take generous deadlines and poll: the tests run on small, loaded machines.

#![allow(dead_code)]

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_cs-actor");
/// sshfs cache timeouts (names, attributes, absent names, directory cache): short, so that a
/// change on the project side shows through the lower layer quickly.
pub const CACHE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lower caches as long-lived as production's (docs/mount.md: up to ~10 s;
/// deploy/examples/compute.toml).
pub const PRODUCTION_STALENESS: Duration = Duration::from_secs(10);
/// The compute services' timer: long, so that rounds happen when a test asks for them (plus the
/// start-up round and early rounds on upper-layer events, which no test counts on).
pub const INTERVAL_SECS: &str = "3600";
/// The default local-only directories (top level of the home).
pub const LOCAL_ONLY: &[&str] = &["scratch", ".local", ".cache"];
/// Excluded top-level directories (the union's meta directories, cs-actor's own state).
const EXCLUDED_TOP: &[&str] = &[".unionfs-fuse", ".unionfs", ".cs-actor"];
/// Excluded names at any depth (atomic-apply temporaries, FUSE's open-deleted files).
const EXCLUDED_PREFIXES: &[&str] = &[".csa-tmp-", ".fuse_hidden"];
/// The clients in every bed's token table.
pub const CLIENTS: &[&str] = &["gpu-1", "gpu-2"];

/// How long a compute service gets to stop on SIGTERM (its last round is bounded at 30 s).
const COMPUTE_GRACE: Duration = Duration::from_secs(45);
const BROKER_GRACE: Duration = Duration::from_secs(15);

/// The beds run one at a time: each starts sshd, sshfs, unionfs-fuse and two services, and
/// some move hundreds of megabytes; on a 2-core machine running them side by side only makes
/// every deadline tighter.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// The union backend

/// The union a compute service mounts (`cs-actor compute --union NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Union {
    /// unionfs-fuse 1.0: whiteouts in the upper layer's `.unionfs-fuse/` meta directory.
    UnionfsFuse,
    /// Kernel overlayfs (`redirect_dir=on,index=on`): whiteouts are character devices 0:0 in
    /// the upper layer, its work directory lives beside the upper layer, not in it.
    Overlay,
}

/// `CS_E2E_LOWER=replica`: every compute service with the overlay union serves the project
/// from a replica (`--replica-dir`) instead of an sshfs lower: the whole e2e suite, run
/// against issue 12's replica (a documented run, not CI's).
pub const LOWER_ENV: &str = "CS_E2E_LOWER";

fn replica_from_env() -> bool {
    match std::env::var(LOWER_ENV).as_deref() {
        Ok("replica") => true,
        Ok("sshfs") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{LOWER_ENV}={other:?}: expected replica or sshfs"),
    }
}

/// A test of the sshfs lower itself (its loss, the "lower empty" rail, what it shows of the
/// project's ignored files) in a `CS_E2E_LOWER=replica` run of this test's backend: says so
/// and returns true (the test returns). With a replica there is no lower mount to lose, and
/// the snapshot leaves out what the project's `.csignore` matches.
pub fn skip_with_replica(why: &str) -> bool {
    let skip = current_union() == Union::Overlay && replica_from_env();
    if skip {
        eprintln!("skipped with {LOWER_ENV}=replica: {why}");
    }
    skip
}

/// The environment variable that picks one backend (see [`Union::chosen`]).
pub const UNION_ENV: &str = "CS_E2E_UNION";

impl Union {
    /// The service's default for a fresh upper layer on a kernel with overlayfs (`--union` is
    /// passed only for the other one, so the default's own choice is what these tests run).
    pub const DEFAULT: Union = Union::Overlay;

    /// The name `--union` takes.
    pub fn name(self) -> &'static str {
        match self {
            Union::UnionfsFuse => "unionfs-fuse",
            Union::Overlay => "overlay",
        }
    }

    pub fn parse(name: &str) -> Option<Union> {
        [Union::UnionfsFuse, Union::Overlay].into_iter().find(|u| u.name() == name)
    }

    /// The backend `CS_E2E_UNION` names, if set (a bad name panics, naming the choices).
    pub fn chosen() -> Option<Union> {
        let v = std::env::var(UNION_ENV).ok().filter(|v| !v.is_empty())?;
        Some(Union::parse(&v).unwrap_or_else(|| panic!("{UNION_ENV}={v:?}: expected unionfs-fuse or overlay")))
    }
}

thread_local! {
    /// The backend of the test running on this thread (set by [`with_union`]).
    static TEST_UNION: Cell<Option<Union>> = const { Cell::new(None) };
}

/// The backend a bed starts its compute services with: the one [`with_union`] set for this
/// test, else `CS_E2E_UNION`, else unionfs-fuse.
pub fn current_union() -> Union {
    TEST_UNION.get().or_else(Union::chosen).unwrap_or(Union::DEFAULT)
}

/// Runs `test` with `union` as the backend of every bed it starts. When `CS_E2E_UNION` names
/// the other backend, `test` does not run (it says so on stderr): that variable narrows a run
/// to one backend.
pub fn with_union(union: Union, test: fn()) {
    if let Some(only) = Union::chosen().filter(|&c| c != union) {
        eprintln!("skipped: {UNION_ENV}={} (this is the {} run)", only.name(), union.name());
        return;
    }
    struct Restore(Option<Union>);
    impl Drop for Restore {
        fn drop(&mut self) {
            TEST_UNION.set(self.0);
        }
    }
    let _restore = Restore(TEST_UNION.replace(Some(union)));
    test()
}

/// Makes the `#[test]`s of end-to-end tests written once as plain `fn NAME()`: module
/// `unionfs_fuse` and module `overlay` each get a `#[test] fn NAME` that runs it with that
/// backend ([`with_union`]). Attributes before a name in `both` (`#[ignore = "…"]`) go on
/// both; the names in `unionfs_fuse_ignored` run on overlay and their unionfs-fuse twin is
/// `#[ignore]`d with the reason given (how it fails there, or why CI skips it).
///
/// ```ignore
/// per_union! {
///     both: [writes_sync, #[ignore = "demonstration"] can_fail],
///     unionfs_fuse_ignored: [mv_of_a_project_dir = "unionfs-fuse: mv fails with ENOENT"],
/// }
/// ```
#[allow(unused_macros)] // a test file without per-backend tests (replica.rs: overlay only)
macro_rules! per_union {
    (
        both: [$($(#[$attr:meta])* $name:ident),* $(,)?]
        $(, unionfs_fuse_ignored: [$($only:ident = $why:literal),* $(,)?])?
        $(,)?
    ) => {
        mod unionfs_fuse {
            $(
                $(#[$attr])*
                #[test]
                fn $name() {
                    $crate::support::with_union($crate::support::Union::UnionfsFuse, super::$name)
                }
            )*
            $($(
                #[test]
                #[ignore = $why]
                fn $only() {
                    $crate::support::with_union($crate::support::Union::UnionfsFuse, super::$only)
                }
            )*)?
        }
        mod overlay {
            $(
                $(#[$attr])*
                #[test]
                fn $name() {
                    $crate::support::with_union($crate::support::Union::Overlay, super::$name)
                }
            )*
            $($(
                #[test]
                fn $only() {
                    $crate::support::with_union($crate::support::Union::Overlay, super::$only)
                }
            )*)?
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_union;

/// Whether `md` is an overlayfs whiteout (a character device 0:0).
pub fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether the upper layer `upper` holds an entry at `rel` (a copy, a new file, a directory):
/// present and not an overlayfs whiteout (unionfs-fuse keeps its whiteouts elsewhere, in its
/// meta directory).
pub fn in_upper(upper: &Path, rel: impl AsRef<Path>) -> bool {
    fs::symlink_metadata(upper.join(rel)).is_ok_and(|md| !is_whiteout(&md))
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// Calls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Writes `content` at `root/rel`, creating the parent directories.
pub fn put(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", parent.display()));
    }
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

/// Appends `content` to `root/rel`.
pub fn append(root: &Path, rel: &str, content: impl AsRef<[u8]>) {
    use std::io::Write;
    let p = root.join(rel);
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.write_all(content.as_ref()).unwrap_or_else(|e| panic!("append to {}: {e}", p.display()));
}

/// The content of `root/rel` as text (panics if it cannot be read).
pub fn read(root: &Path, rel: &str) -> String {
    let p = root.join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Sets the permission bits of `root/rel`.
pub fn chmod(root: &Path, rel: &str, mode: u32) {
    let p = root.join(rel);
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// `ln -s target root/rel`.
pub fn symlink(target: &str, root: &Path, rel: &str) {
    let p = root.join(rel);
    std::os::unix::fs::symlink(target, &p).unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
}

/// Sets the access and modification times of the file `root/rel` (what `tar x` or `cp -p` do).
/// Both: unionfs-fuse (libfuse 2's high-level API) ignores a `setattr` that sets the mtime
/// alone (`touch -m` through the merged view is a no-op).
pub fn set_mtime(root: &Path, rel: &str, sec: i64, nsec: u32) {
    let p = root.join(rel);
    let t = std::time::UNIX_EPOCH + Duration::new(sec as u64, nsec);
    let f = fs::OpenOptions::new().write(true).open(&p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", p.display()));
}

/// `lstat` succeeds (a dangling symlink exists).
pub fn exists(root: &Path, rel: &str) -> bool {
    fs::symlink_metadata(root.join(rel)).is_ok()
}

/// `(seconds, nanoseconds)` of the mtime of `root/rel` (not following a symlink).
pub fn mtime(root: &Path, rel: &str) -> (i64, u32) {
    let md = fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("lstat {}/{rel}: {e}", root.display()));
    (md.mtime(), md.mtime_nsec() as u32)
}

/// Permission bits of `root/rel`.
pub fn mode(root: &Path, rel: &str) -> u32 {
    let md = fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("lstat {}/{rel}: {e}", root.display()));
    md.mode() & 0o7777
}

/// `count` pseudo-random (incompressible) bytes from `seed` (xorshift64*).
pub fn noise(seed: u64, count: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(count + 8);
    while out.len() < count {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(count);
    out
}

/// A 64-bit FNV-1a hash of a reader's bytes, and their count.
pub fn hash_reader(mut r: impl Read) -> std::io::Result<(u64, u64)> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok((h, n));
        }
        for b in &buf[..k] {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        n += k as u64;
    }
}

/// Compares two files byte for byte (streaming: fine for hundreds of megabytes).
pub fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let (ma, mb) = (
        fs::metadata(a).map_err(|e| format!("{}: {e}", a.display()))?,
        fs::metadata(b).map_err(|e| format!("{}: {e}", b.display()))?,
    );
    if ma.len() != mb.len() {
        return Err(format!("sizes differ: {} has {} bytes, {} has {}", a.display(), ma.len(), b.display(), mb.len()));
    }
    let mut fa = fs::File::open(a).map_err(|e| e.to_string())?;
    let mut fb = fs::File::open(b).map_err(|e| e.to_string())?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| e.to_string())?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| e.to_string())?;
        if n != m || ba[..n] != bb[..m] {
            let i = ba[..n].iter().zip(&bb[..m]).position(|(x, y)| x != y).unwrap_or(n.min(m));
            return Err(format!("contents differ at byte {}", off + i as u64));
        }
        if n == 0 {
            return Ok(());
        }
        off += n as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Every entry under `root` whose name satisfies `pred` (relative paths; the walk does not
/// follow symlinks).
pub fn find_names(root: &Path, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(rd) = fs::read_dir(root.join(&rel)) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = rel.join(&name);
            if pred(&name) {
                found.push(r.display().to_string());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(r);
            }
        }
    }
    found.sort();
    found
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process whose stdout and stderr go to a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// How it ended, once reaped.
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let f2 = f.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(f2).stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf(), status: None }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Reaps the process if it exited; `Some(status)` once it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.status = Some(st);
                self.child = None;
            }
        }
        self.status
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child, not yet reaped: its pid cannot have been reused.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    fn wait_for(&mut self, t: Duration) -> bool {
        poll(t, Duration::from_millis(20), || self.exited().map(|_| ())).is_some()
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. True if it exited by itself.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if self.exited().is_some() {
            return true;
        }
        self.signal(libc::SIGTERM);
        if self.wait_for(grace) {
            return true;
        }
        self.kill9();
        false
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            self.status = c.wait().ok();
        }
    }

    /// The last `max` bytes of the log.
    pub fn log_tail(&self, max: usize) -> String {
        tail(&self.log, max)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn tail(path: &Path, max: usize) -> String {
    let data = fs::read(path).unwrap_or_default();
    let from = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[from..]).into_owned()
}

/// The outcome of a command run to completion (or killed at its deadline).
pub struct CmdOut {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CmdOut {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn describe(&self) -> String {
        let st = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {:?}", self.took),
        };
        format!("{st}; stdout: {}; stderr: {}", self.stdout.trim(), self.stderr.trim())
    }
}

/// Runs `cmd` with its output captured, killing it (by pid) if it is not done within `timeout`.
pub fn run(mut cmd: Command, timeout: Duration) -> CmdOut {
    let start = Instant::now();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = poll(timeout, Duration::from_millis(10), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    CmdOut {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: start.elapsed(),
    }
}

/// `cs-actor ARGS…`.
pub fn cli(args: &[&str], timeout: Duration) -> CmdOut {
    let mut c = Command::new(BIN);
    c.args(args);
    run(c, timeout)
}

/// `cs-actor status --json` on a control socket.
pub fn status_json(sock: &Path) -> Result<Value, String> {
    let out = cli(&["status", "--json", "--control-socket", &sock.display().to_string()], Duration::from_secs(20));
    if !out.ok() {
        return Err(out.describe());
    }
    serde_json::from_str(&out.stdout).map_err(|e| format!("status --json is not JSON ({e}): {}", out.stdout))
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Mount points at or under `root` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Processes (other than this one) whose command line mentions `root`: what our services
/// started (sshfs, unionfs-fuse, the shell around the mount command).
pub fn processes_under(root: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let needle = root.as_os_str().to_string_lossy().into_owned();
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            text.contains(&needle).then(|| (pid, text.trim().to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The user's side: an unprivileged account acting in the merged view

/// The project's user (owner of P's home), the compute user, and a second user of the compute
/// server. Created if missing (`useradd --system`, retried while another test binary holds
/// the passwd lock) and kept: fixed names, so that concurrent test binaries share them.
pub const PROJECT_ACCOUNT: &str = "csa-t-proj";
pub const COMPUTE_ACCOUNT: &str = "csa-t-comp";
pub const OTHER_ACCOUNT: &str = "csa-t-other";

/// The user's tools: the system's Python (with pip), git. `--break-system-packages`: Debian
/// marks its Python externally managed (PEP 668), which refuses even `--user` installs.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The account `name`, created if missing.
pub fn account(name: &str) -> Account {
    cs_testbed::system_account(name).unwrap_or_else(|e| panic!("account {name}: {e}"))
}

/// `sh -c script` as `who` (no supplementary groups), `HOME=home`, a clean environment.
pub fn as_user(who: &Account, home: &Path, script: &str) -> CmdOut {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={}", who.uid))
        .arg(format!("--regid={}", who.gid))
        .args(["--clear-groups", "--", "env", "-i"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("PATH={USER_PATH}"))
        .args(["sh", "-c", script])
        .current_dir("/");
    run(c, Duration::from_secs(300))
}

pub fn must(who: &Account, home: &Path, script: &str) -> String {
    let out = as_user(who, home, script);
    assert!(out.ok(), "as {}: `{script}` failed: {}", who.name, out.describe());
    out.stdout
}

/// What the user's shell says in the bed's (first) merged view, or the bed fails with the
/// command's output.
pub fn user_must(bed: &Bed, who: &Account, script: &str) -> String {
    let out = as_user(who, &bed.merged(), script);
    if !out.ok() {
        bed.fail(&format!("as {}: `{script}` failed: {}", who.name, out.describe()));
    }
    out.stdout
}

/// A bed for tests whose user is an unprivileged account, up to the broker: the home
/// belongs to the project's account (a README and `seed`'s files), the bed's root is open
/// to the compute account (which reaches the merged view through it, as under /home), and
/// the broker runs. Returns the compute
/// account; `None` where the external programs are missing.
pub fn project_owned_bed(name: &str, seed: impl FnOnce(&Path)) -> Option<(Bed, Account)> {
    if !cs_testbed::real_tools_available() {
        return None;
    }
    let (proj, comp) = (account(PROJECT_ACCOUNT), account(COMPUTE_ACCOUNT));
    let mut bed = Bed::new(name);
    fs::set_permissions(&bed.root, fs::Permissions::from_mode(0o755)).unwrap();
    put(&bed.home, "README", "a project\n");
    seed(&bed.home);
    chown_tree(&bed.home, &proj);
    bed.start_broker();
    Some((bed, comp))
}

/// `chown -R` (not following symlinks).
pub fn chown_tree(root: &Path, who: &Account) {
    std::os::unix::fs::lchown(root, Some(who.uid), Some(who.gid)).unwrap();
    for rel in find_names(root, |_| true) {
        let p = root.join(rel);
        std::os::unix::fs::lchown(&p, Some(who.uid), Some(who.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// The bed

/// How [`Bed::start_compute_opts`] starts `cs-actor compute`.
#[derive(Default, Clone)]
pub struct ComputeOpts<'a> {
    /// More flags.
    pub extra: &'a [&'a str],
    /// Environment variables (e.g. `CS_FAILPOINTS`).
    pub env: &'a [(&'a str, &'a str)],
    /// The broker URL, when not the bed's broker directly (a shaper in between).
    pub server: Option<String>,
    /// The compute user: `--user NAME`, and the lower mount shows the project's files as
    /// this account's (sshfs `-o uid=,gid=`).
    pub user: Option<&'a Account>,
    /// The lower mount's cache timeouts, when not [`CACHE_TIMEOUT`] (e.g. production's ~10 s).
    pub lower_cache: Option<Duration>,
    /// The union backend, when not the test's ([`current_union`]).
    pub union: Option<Union>,
    /// The project's files from a replica (`--replica-dir COMPUTE/replica`, issue 12) instead
    /// of an sshfs lower: overlay only, and no sshfs at all.
    pub replica: bool,
    /// `--follow-project` as the product has it by default: a project change starts a round
    /// on its own. Off otherwise (`--follow-project false`): the tests drive every round by
    /// `cs-actor sync --wait`, so that what they see between two rounds is theirs to decide.
    pub follow: bool,
}

/// An account of this machine (tests/user.rs acts as one).
pub use cs_testbed::Account;

/// One compute server: its directories and its `cs-actor compute` process.
pub struct Compute {
    pub id: String,
    pub dir: PathBuf,
    pub merged: PathBuf,
    pub upper: PathBuf,
    pub state: PathBuf,
    pub lower: PathBuf,
    pub sock: PathBuf,
    pub token_file: PathBuf,
    pub proc: Option<Proc>,
    /// The union backend it was last started with.
    pub union: Union,
}

impl Compute {
    pub fn status(&self) -> Result<Value, String> {
        status_json(&self.sock)
    }
}

/// The flags of `cs-actor compute` that choose `union`: none for the default, so that the bed
/// also drives a build whose `compute` has no `--union` yet.
pub fn union_args(union: Union) -> Vec<&'static str> {
    if union == Union::DEFAULT {
        Vec::new()
    } else {
        vec!["--union", union.name()]
    }
}

pub struct Bed {
    tmp: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub home: PathBuf,
    pub sshd: Option<cs_testbed::Sshd>,
    pub tokens_file: PathBuf,
    tokens: BTreeMap<String, String>,
    pub broker: Option<Proc>,
    pub broker_port: u16,
    pub broker_state: PathBuf,
    pub project_sock: PathBuf,
    /// `--user NAME` for the broker (default: the owner of the home).
    pub broker_user: Option<String>,
    /// More flags for the broker.
    pub broker_extra: Vec<String>,
    broker_runs: u32,
    pub computes: Vec<Compute>,
    /// The union backend compute services start with unless [`ComputeOpts::union`] says
    /// otherwise: the test's ([`current_union`]).
    pub union: Union,
    finished: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Bed {
    /// A temporary directory with an empty project home, sshd serving it, and the token table.
    /// Nothing of cs-actor runs yet: seed the home, then [`Bed::start_broker`] and
    /// [`Bed::start_compute`].
    pub fn new(name: &str) -> Bed {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let union = current_union();
        eprintln!("cs-e2e: bed {name} with the {} union", union.name());
        let tmp = tempfile::Builder::new().prefix(&format!("cs-e2e-{name}-")).tempdir().expect("tempdir");
        let root = fs::canonicalize(tmp.path()).expect("canonicalize tempdir");
        let home = root.join("home");
        fs::create_dir_all(&home).unwrap();
        let sshd_dir = root.join("sshd");
        fs::create_dir_all(&sshd_dir).unwrap();
        let sshd = cs_testbed::Sshd::start(&sshd_dir).unwrap_or_else(|e| panic!("sshd: {e}"));

        let mut tokens = BTreeMap::new();
        let mut table = String::new();
        for (i, id) in CLIENTS.iter().enumerate() {
            let t: String = noise(0x5eed ^ (std::process::id() as u64) << 8 ^ i as u64 ^ nanos(), 24)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            writeln!(table, "{id} {t}").unwrap();
            tokens.insert(id.to_string(), t);
        }
        let tokens_file = root.join("tokens");
        write_secret(&tokens_file, &table);
        Bed {
            tmp: Some(tmp),
            broker_port: free_port(),
            broker_state: root.join("broker-state"),
            project_sock: root.join("project.sock"),
            home,
            sshd: Some(sshd),
            tokens_file,
            tokens,
            broker: None,
            broker_user: None,
            broker_extra: Vec::new(),
            broker_runs: 0,
            computes: Vec::new(),
            union,
            root,
            finished: false,
            _serial: serial,
        }
    }

    /// [`Bed::new`], the broker and compute server `gpu-1`, after `seed` filled the home.
    pub fn start(name: &str, seed: impl FnOnce(&Path)) -> Bed {
        let mut bed = Bed::new(name);
        seed(&bed.home);
        bed.start_broker();
        bed.start_compute("gpu-1");
        bed
    }

    pub fn token(&self, id: &str) -> &str {
        &self.tokens[id]
    }

    pub fn broker_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.broker_port)
    }

    /// Starts `cs-actor project` on the bed's port and state directory (again after a kill:
    /// same port, same state) and returns once its control socket answers.
    pub fn start_broker(&mut self) {
        assert!(self.broker.is_none(), "the broker is already running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.broker_runs += 1;
            let log = self.root.join(format!("broker.{}.log", self.broker_runs));
            let mut cmd = Command::new(BIN);
            cmd.arg("project")
                .arg("--home")
                .arg(&self.home)
                .arg("--listen")
                .arg(format!("127.0.0.1:{}", self.broker_port))
                .arg("--tokens")
                .arg(&self.tokens_file)
                .arg("--state")
                .arg(&self.broker_state)
                .arg("--control-socket")
                .arg(&self.project_sock);
            if let Some(u) = &self.broker_user {
                cmd.args(["--user", u]);
            }
            cmd.args(&self.broker_extra);
            let mut p = Proc::spawn("broker", cmd, &log);
            let ready = poll(Duration::from_secs(30), Duration::from_millis(100), || {
                if p.exited().is_some() {
                    return Some(false);
                }
                let st = status_json(&self.project_sock).ok()?;
                (st["broker"]["listen"].as_str().is_some()).then_some(true)
            });
            match ready {
                Some(true) => {
                    self.broker = Some(p);
                    return;
                }
                _ => {
                    p.kill9();
                    // The port may still be held for a moment after a kill: try again.
                    if Instant::now() > deadline {
                        self.fail(&format!(
                            "the broker did not start on port {} ({:?}): {}",
                            self.broker_port,
                            p.status,
                            p.log_tail(4000)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// SIGKILL to the broker (no chance to clean up).
    pub fn kill_broker(&mut self) {
        let mut p = self.broker.take().expect("no broker running");
        p.kill9();
    }

    /// The sshfs command line for compute servers: the home over the bed's sshd, with short
    /// cache timeouts.
    pub fn lower_mount_cmd(&self, mountpoint: &Path) -> String {
        self.lower_mount_cmd_for(mountpoint, None, CACHE_TIMEOUT)
    }

    /// [`Bed::lower_mount_cmd`], the project's files shown as `user`'s (`-o uid=,gid=`), with
    /// the caches living `cache`.
    pub fn lower_mount_cmd_for(&self, mountpoint: &Path, user: Option<&Account>, cache: Duration) -> String {
        let sshd = self.sshd.as_ref().expect("sshd");
        let target = cs_mount::SshfsTarget {
            user: Some(cs_testbed::current_user()),
            host: "127.0.0.1".into(),
            port: Some(sshd.port()),
            remote_dir: self.home.display().to_string(),
            ssh_options: sshd.ssh_options(),
        };
        // Fields set one by one (not through a helper) so that the bound is exactly ours.
        let mut opts = cs_mount::SshfsOptions::sshfs_defaults();
        opts.entry_timeout = Some(cache);
        opts.attr_timeout = Some(cache);
        opts.negative_timeout = Some(cache);
        opts.dir_cache = Some(true);
        opts.dcache_timeout = Some(cache);
        opts.reconnect = true;
        if let Some(u) = user {
            opts.extra.extend([format!("uid={}", u.uid), format!("gid={}", u.gid)]);
        }
        cs_mount::sshfs_command(&target, mountpoint, &opts)
    }

    /// Starts `cs-actor compute --id ID` and returns its index once it is up: union mounted,
    /// connected, its start-up round committed, idle.
    pub fn start_compute(&mut self, id: &str) -> usize {
        self.start_compute_with(id, &[])
    }

    /// [`Bed::start_compute`] with more flags for `cs-actor compute`.
    pub fn start_compute_with(&mut self, id: &str, extra: &[&str]) -> usize {
        self.start_compute_opts(id, &ComputeOpts { extra, ..Default::default() })
    }

    /// [`Bed::start_compute`] with more flags, environment variables or another broker URL.
    pub fn start_compute_opts(&mut self, id: &str, opts: &ComputeOpts) -> usize {
        let i = self.add_compute(id);
        self.run_compute(i, opts);
        i
    }

    /// Compute server `id`'s directories and token file (its token from the table), not started:
    /// [`Bed::spawn_compute`] starts it.
    pub fn add_compute(&mut self, id: &str) -> usize {
        let dir = self.root.join(id);
        let c = Compute {
            id: id.to_string(),
            merged: dir.join("merged"),
            upper: dir.join("upper"),
            state: dir.join("state"),
            lower: dir.join("lower"),
            sock: dir.join("control.sock"),
            token_file: dir.join("token"),
            dir,
            proc: None,
            union: self.union,
        };
        for d in [&c.merged, &c.upper, &c.state, &c.lower] {
            fs::create_dir_all(d).unwrap();
        }
        write_secret(&c.token_file, &format!("{}\n", self.token(id)));
        self.computes.push(c);
        self.computes.len() - 1
    }

    /// Replaces compute server `i`'s token file (read when its service starts).
    pub fn set_token(&self, i: usize, token: &str) {
        write_secret(&self.computes[i].token_file, &format!("{token}\n"));
    }

    /// Starts compute server `i` again on the same directories (its upper layer, state, mount
    /// points: whatever a killed predecessor left there) once the previous process has exited;
    /// returns once it is up, as [`Bed::start_compute`].
    pub fn restart_compute(&mut self, i: usize, opts: &ComputeOpts) {
        let running = self.computes[i].proc.as_mut().is_some_and(|p| p.exited().is_none());
        assert!(!running, "compute server {} is still running", self.computes[i].id);
        self.computes[i].proc = None;
        self.run_compute(i, opts);
    }

    /// Spawns `cs-actor compute` for `computes[i]` (from [`Bed::add_compute`], its directories
    /// maybe changed) and waits until it is up.
    pub fn run_compute(&mut self, i: usize, opts: &ComputeOpts) {
        self.spawn_compute(i, opts);
        let id = self.computes[i].id.clone();
        let ok = poll(Duration::from_secs(90), Duration::from_millis(200), || {
            let c = &mut self.computes[i];
            if c.proc.as_mut().unwrap().exited().is_some() {
                return Some(false);
            }
            let st = c.status().ok()?;
            let up = st["round"]["phase"] == "idle"
                && st["round"]["rounds_committed"].as_u64().unwrap_or(0) >= 1
                && st["connection"]["state"] == "connected"
                && st["mounts"]["union"]["state"] == "mounted";
            up.then_some(true)
        });
        if ok != Some(true) {
            let st = self.computes[i].status();
            self.fail(&format!("compute server {id} did not come up (status: {st:?})"));
        }
    }

    /// Spawns `cs-actor compute` for `computes[i]` (whose previous process, if any, must have
    /// exited) and returns at once: the caller watches it come up.
    pub fn spawn_compute(&mut self, i: usize, opts: &ComputeOpts) {
        let running = self.computes[i].proc.as_mut().is_some_and(|p| p.exited().is_none());
        assert!(!running, "compute server {} is still running", self.computes[i].id);
        let union = opts.union.unwrap_or(self.union);
        self.computes[i].union = union;
        let c = &self.computes[i];
        let id = c.id.clone();
        let id = id.as_str();
        let server = opts.server.clone().unwrap_or_else(|| self.broker_url());
        let mut cmd = Command::new(BIN);
        for (k, v) in opts.env {
            cmd.env(k, v);
        }
        cmd.arg("compute")
            .args(["--server", &server, "--id", id])
            .arg("--token-file")
            .arg(&c.token_file)
            .arg("--merged")
            .arg(&c.merged)
            .arg("--upper")
            .arg(&c.upper)
            .arg("--state")
            .arg(&c.state)
            .arg("--control-socket")
            .arg(&c.sock)
            .args(["--interval", INTERVAL_SECS])
            .args(["--follow-project", if opts.follow { "true" } else { "false" }])
            .args(union_args(union))
            .args(opts.extra);
        if opts.replica || (union == Union::Overlay && replica_from_env()) {
            // No lower given: the project's replica, in STATE/replica (the default). A small
            // sparse image: the tests' projects are megabytes (a test with a bigger one says
            // its own size).
            if !opts.extra.contains(&"--replica-size-gib") {
                cmd.args(["--replica-size-gib", "2"]);
            }
            cmd.args(["--replica-inodes", "200000"]);
        } else {
            let lower_cmd = self.lower_mount_cmd_for(&c.lower, opts.user, opts.lower_cache.unwrap_or(CACHE_TIMEOUT));
            cmd.arg("--lower-mount-cmd").arg(lower_cmd).arg("--lower-mountpoint").arg(&c.lower);
        }
        if let Some(u) = opts.user {
            cmd.args(["--user", &u.name]);
        }
        let log = self.root.join(format!("compute-{id}.log"));
        let p = Proc::spawn(&format!("compute {id}"), cmd, &log);
        self.computes[i].proc = Some(p);
    }

    /// The first compute server.
    pub fn c(&self) -> &Compute {
        &self.computes[0]
    }

    /// The first compute server's merged view.
    pub fn merged(&self) -> PathBuf {
        self.c().merged.clone()
    }

    pub fn upper(&self) -> PathBuf {
        self.c().upper.clone()
    }

    /// `cs-actor sync --wait` on compute server `i`.
    pub fn try_sync_wait_on(&self, i: usize, timeout: Duration) -> Result<String, String> {
        let sock = self.computes[i].sock.display().to_string();
        let out = cli(&["sync", "--wait", "--control-socket", &sock], timeout);
        if out.ok() {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.describe())
        }
    }

    /// `cs-actor sync --wait` on the first compute server; it must commit within 2 minutes.
    pub fn sync_wait(&self) -> String {
        self.sync_wait_on(0)
    }

    pub fn sync_wait_on(&self, i: usize) -> String {
        match self.try_sync_wait_on(i, Duration::from_secs(120)) {
            Ok(s) => s,
            Err(e) => self.fail(&format!("`cs-actor sync --wait` on {} failed: {e}", self.computes[i].id)),
        }
    }

    /// `cs-actor sync` (no wait) on the first compute server.
    pub fn sync_nowait(&self) {
        let sock = self.c().sock.display().to_string();
        let out = cli(&["sync", "--control-socket", &sock], Duration::from_secs(30));
        if !out.ok() {
            self.fail(&format!("`cs-actor sync` failed: {}", out.describe()));
        }
    }

    pub fn compute_status(&self) -> Value {
        self.c().status().unwrap_or_else(|e| self.fail(&format!("compute status: {e}")))
    }

    pub fn project_status(&self) -> Value {
        status_json(&self.project_sock).unwrap_or_else(|e| self.fail(&format!("project status: {e}")))
    }

    /// Two rounds (the second after the lower layer's caches expired), then the merged view
    /// must equal the project home on every synced path within a deadline.
    pub fn sync_and_converge(&self) {
        self.sync_wait();
        std::thread::sleep(CACHE_TIMEOUT * 2 + Duration::from_millis(200));
        self.sync_wait();
        self.assert_converged(Duration::from_secs(20));
    }

    /// Polls until merged view and project home agree (see [`diff_views`]); fails with the
    /// differences at the deadline.
    pub fn assert_converged(&self, within: Duration) {
        let (merged, upper) = (self.merged(), self.upper());
        let mut last = String::new();
        let ok = poll(within, Duration::from_millis(500), || {
            let m = tree(&merged);
            let p = tree(&self.home);
            match diff_views(&m, &p, &upper) {
                None => {
                    eprintln!("converged: {} synced paths agree", p.len());
                    Some(())
                }
                Some(d) => {
                    last = d;
                    None
                }
            }
        });
        if ok.is_none() {
            self.fail(&format!("the merged view does not equal the project home after {within:?}:\n{last}"));
        }
    }

    /// The tails of every log of the bed.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut logs: Vec<PathBuf> = fs::read_dir(&self.root)
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "log")).collect())
            .unwrap_or_default();
        logs.sort();
        for l in logs {
            let _ = writeln!(out, "===== {} (tail)\n{}", l.display(), tail(&l, 6000));
        }
        if let Some(s) = &self.sshd {
            let _ = writeln!(out, "===== sshd\n{}", s.log());
        }
        out
    }

    /// Panics with `msg`, the services' status and the logs.
    pub fn fail(&self, msg: &str) -> ! {
        let cs: Vec<String> =
            self.computes.iter().map(|c| format!("{}: {:?}", c.id, c.status().map(|v| v.to_string()))).collect();
        panic!(
            "{msg}\n----- compute status: {}\n----- project status: {:?}\n{}",
            cs.join("\n"),
            status_json(&self.project_sock).map(|v| v.to_string()),
            self.logs()
        );
    }

    /// Stops everything in order and returns the problems: a service that had to be killed,
    /// mounts or processes it left behind.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for c in self.computes.iter_mut().rev() {
            if let Some(p) = c.proc.as_mut() {
                let was_running = p.exited().is_none();
                if !p.stop(COMPUTE_GRACE) {
                    problems.push(format!("compute service {} did not stop within {COMPUTE_GRACE:?} of SIGTERM", c.id));
                } else if was_running && !p.status.is_some_and(|s| s.success()) {
                    problems.push(format!("compute service {} exited with {:?}", c.id, p.status));
                }
            }
        }
        if let Some(b) = self.broker.as_mut() {
            if !b.stop(BROKER_GRACE) {
                problems.push(format!("the broker did not stop within {BROKER_GRACE:?} of SIGTERM"));
            }
        }
        self.sshd = None; // stops sshd and its sessions
                          // What the compute services should have unmounted and stopped themselves.
        let left = mounts_under(&self.root);
        if !left.is_empty() {
            problems.push(format!("still mounted after the services stopped: {left:?}"));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = mounts_under(&self.root);
            if left.is_empty() {
                break;
            }
            for m in &left {
                let _ = cs_testbed::lazy_unmount(m);
            }
            if Instant::now() > deadline {
                problems.push(format!("could not unmount: {left:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // FUSE daemons exit once unmounted; anything still alive a while later was left behind.
        let stray = poll(Duration::from_secs(5), Duration::from_millis(100), || {
            let v = processes_under(&self.root);
            v.is_empty().then_some(())
        });
        if stray.is_none() {
            let v = processes_under(&self.root);
            problems.push(format!("processes left behind: {v:?}"));
            for (pid, _) in v {
                // SAFETY: kill(2) by pid of a process whose command line names this test's
                // private temporary directory: one our services started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        problems
    }

    /// Orderly teardown; asserts that the services stopped by themselves (the compute service
    /// unmounting its union and lower layer) and that nothing is left mounted under the bed.
    pub fn finish(mut self) {
        self.finished = true;
        let problems = self.teardown();
        let still = mounts_under(&self.root);
        if !problems.is_empty() || !still.is_empty() {
            let logs = self.logs();
            panic!("teardown: {problems:#?}; mounted at the end: {still:?}\n{logs}");
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if !self.finished {
            let problems = self.teardown();
            if !problems.is_empty() {
                eprintln!("cs-e2e teardown after a failure: {problems:#?}");
            }
        }
        // The compute services leave their bare mount points immutable: clear that, or the
        // temporary tree cannot be deleted.
        let mounted = mounts_under(&self.root);
        for c in &self.computes {
            if !mounted.contains(&c.merged) {
                let _ = set_immutable(&c.merged, false);
            }
        }
        // Never delete a tree that still has something mounted inside.
        if !mounts_under(&self.root).is_empty() {
            eprintln!("cs-e2e: {} still has mounts: kept", self.root.display());
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        } else if std::env::var_os("CS_E2E_KEEP").is_some() {
            if let Some(t) = self.tmp.take() {
                eprintln!("cs-e2e: kept {}", t.keep().display());
            }
        }
    }
}

/// `FS_IMMUTABLE_FL` (`chattr +i`), from linux/fs.h.
const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// The inode flags of an open file or directory (`lsattr -d`), by `FS_IOC_GETFLAGS`.
fn inode_flags(f: &fs::File) -> std::io::Result<libc::c_int> {
    use std::os::fd::AsRawFd;
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which lives for the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(flags)
}

/// Whether `dir` carries the immutable attribute (`chattr +i`).
pub fn is_immutable(dir: &Path) -> std::io::Result<bool> {
    Ok(inode_flags(&fs::File::open(dir)?)? & FS_IMMUTABLE_FL != 0)
}

/// Sets or clears the immutable attribute of `dir` (`chattr +i` / `chattr -i`).
pub fn set_immutable(dir: &Path, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir)?;
    let old = inode_flags(&f)?;
    let mut flags = if on { old | FS_IMMUTABLE_FL } else { old & !FS_IMMUTABLE_FL };
    if flags == old {
        return Ok(());
    }
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer, which lives for the call.
    if unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tree snapshots

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Small files (and symlink targets) in full.
    Bytes(Vec<u8>),
    /// Larger files: (FNV-1a 64, length).
    Hash(u64, u64),
}

impl Content {
    fn show(&self) -> String {
        match self {
            Content::Bytes(b) if b.len() <= 80 => format!("{:?}", String::from_utf8_lossy(b)),
            Content::Bytes(b) => format!("{:?}… ({} bytes)", String::from_utf8_lossy(&b[..80]), b.len()),
            Content::Hash(h, n) => format!("<{n} bytes, fnv {h:016x}>"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (0 for a symlink).
    pub mode: u32,
    /// A file's content, a symlink's target, nothing for a directory.
    pub content: Content,
    /// A file's mtime (seconds, nanoseconds); `(0, 0)` for the others (not in the contract).
    pub mtime: (i64, u32),
}

/// The synced paths under a root (relative, `/`-separated) and what they hold.
pub type Tree = BTreeMap<String, Node>;

/// Whether `rel` (relative, `/`-separated) is synced: not local-only, not excluded.
pub fn is_synced(rel: &str) -> bool {
    let top = rel.split('/').next().unwrap_or("");
    if LOCAL_ONLY.contains(&top) || EXCLUDED_TOP.contains(&top) {
        return false;
    }
    !rel.split('/').any(|c| EXCLUDED_PREFIXES.iter().any(|p| c.starts_with(p)))
}

/// Snapshot of the synced paths under `root` (not following symlinks).
pub fn tree(root: &Path) -> Tree {
    let mut t = Tree::new();
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let abs = if dir.is_empty() { root.to_path_buf() } else { root.join(&dir) };
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) => panic!("readdir {}: {e}", abs.display()),
        };
        for e in rd {
            let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", abs.display()));
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if dir.is_empty() { name } else { format!("{dir}/{name}") };
            if !is_synced(&rel) {
                continue;
            }
            let p = root.join(&rel);
            // Something may vanish while a round runs: a snapshot just records what it saw.
            let Ok(md) = fs::symlink_metadata(&p) else { continue };
            let ft = md.file_type();
            let node = if ft.is_file() {
                let content = if md.len() <= 64 * 1024 {
                    match fs::read(&p) {
                        Ok(b) => Content::Bytes(b),
                        Err(e) => Content::Bytes(format!("<unreadable: {e}>").into_bytes()),
                    }
                } else {
                    match fs::File::open(&p).and_then(hash_reader) {
                        Ok((h, n)) => Content::Hash(h, n),
                        Err(e) => Content::Bytes(format!("<unreadable: {e}>").into_bytes()),
                    }
                };
                Node {
                    kind: Kind::File,
                    mode: md.mode() & 0o7777,
                    content,
                    mtime: (md.mtime(), md.mtime_nsec() as u32),
                }
            } else if ft.is_dir() {
                todo.push(rel.clone());
                Node { kind: Kind::Dir, mode: md.mode() & 0o7777, content: Content::Bytes(Vec::new()), mtime: (0, 0) }
            } else if ft.is_symlink() {
                let target = fs::read_link(&p).map(|t| t.into_os_string().into_encoded_bytes()).unwrap_or_default();
                Node { kind: Kind::Symlink, mode: 0, content: Content::Bytes(target), mtime: (0, 0) }
            } else {
                Node { kind: Kind::Other, mode: md.mode() & 0o7777, content: Content::Bytes(Vec::new()), mtime: (0, 0) }
            };
            t.insert(rel, node);
        }
    }
    t
}

/// `None` if the merged view `m` and the project home `p` agree on every synced path: same
/// paths, kinds, contents, symlink targets, modes, and file mtimes. The lower layer (sshfs,
/// SFTP v3) shows whole seconds only, so nanoseconds are compared for the files the union
/// serves from its upper layer (`upper` holds them), seconds for all.
pub fn diff_views(m: &Tree, p: &Tree, upper: &Path) -> Option<String> {
    let mut out = String::new();
    let paths: BTreeSet<&String> = m.keys().chain(p.keys()).collect();
    for path in paths {
        match (m.get(path), p.get(path)) {
            (Some(a), None) => {
                writeln!(out, "  {path}: only in the merged view ({:?} {})", a.kind, a.content.show()).unwrap()
            }
            (None, Some(b)) => {
                writeln!(out, "  {path}: only in the project ({:?} {})", b.kind, b.content.show()).unwrap()
            }
            (Some(a), Some(b)) => {
                if a.kind != b.kind {
                    writeln!(out, "  {path}: {:?} in the merged view, {:?} in the project", a.kind, b.kind).unwrap();
                    continue;
                }
                if a.content != b.content {
                    writeln!(out, "  {path}: merged {} / project {}", a.content.show(), b.content.show()).unwrap();
                }
                if a.mode != b.mode {
                    writeln!(out, "  {path}: mode {:o} merged / {:o} project", a.mode, b.mode).unwrap();
                }
                if a.kind == Kind::File {
                    let in_upper = fs::symlink_metadata(upper.join(path)).is_ok_and(|md| md.is_file());
                    let same = if in_upper { a.mtime == b.mtime } else { a.mtime.0 == b.mtime.0 };
                    if !same {
                        writeln!(
                            out,
                            "  {path}: mtime {}.{:09} merged{} / {}.{:09} project",
                            a.mtime.0,
                            a.mtime.1,
                            if in_upper { " (upper)" } else { " (lower)" },
                            b.mtime.0,
                            b.mtime.1
                        )
                        .unwrap();
                    }
                }
            }
            (None, None) => unreachable!(),
        }
    }
    (!out.is_empty()).then_some(out)
}

// ---------------------------------------------------------------------------------------------
// A hand-driven client that stalls in step 3

/// A raw cs-wire client that opens a round (hello, held list if asked, steps 1 and 2), starts
/// step 3 (`SendWrites` and one chunk of a real compressed tar stream, far from its end), then
/// stays silent with the connection open until dropped.
pub struct StalledClient {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StalledClient {
    pub fn start(url: &str, token: &str, id: &str) -> Result<StalledClient, String> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (url, token, id) = (url.to_string(), token.to_string(), id.to_string());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                match stall(&url, &token, &id).await {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = stop_rx.await;
                        drop(conn);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(StalledClient { stop: Some(stop_tx), thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the raw client did not get to step 3 within 60 s".into()),
        }
    }
}

impl Drop for StalledClient {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn stall(url: &str, token: &str, id: &str) -> Result<cs_wire::ClientConn, String> {
    use cs_protocol::{ClientId, HeldDigest, Hello, RelPath, Timestamp, PROTOCOL_VERSION};
    use cs_wire::{ClientMsg, Frame, ServerMsg, WireLimits};

    let e = |what: &str| {
        let what = what.to_string();
        move |err: cs_wire::WireError| format!("{what}: {err}")
    };
    let mut conn =
        tokio::time::timeout(Duration::from_secs(20), cs_wire::connect(url, token, None, WireLimits::default()))
            .await
            .map_err(|_| "connect: timeout".to_string())?
            .map_err(e("connect"))?;

    async fn answer(conn: &mut cs_wire::ClientConn, id: u64) -> Result<ServerMsg, String> {
        loop {
            match conn
                .recv_timeout(Duration::from_secs(30))
                .await
                .map_err(|e| format!("waiting for answer {id}: {e}"))?
            {
                Some(Frame::Control(env)) if env.id == id => return Ok(env.body),
                Some(_) => continue,
                None => return Err(format!("the broker closed the connection before answering {id}")),
            }
        }
    }

    let hello = Hello {
        client: ClientId::new(id).map_err(|e| e.to_string())?,
        protocol: PROTOCOL_VERSION,
        cursor: None,
        held_digest: HeldDigest([0; 32]),
        held_count: 0,
        held_added: Vec::new(),
        held_removed: Vec::new(),
        hidden: Vec::new(),
        pull: Default::default(),
        follow: false,
    };
    conn.send_msg(1, ClientMsg::Hello(hello)).await.map_err(e("send hello"))?;
    match answer(&mut conn, 1).await? {
        ServerMsg::HelloReply(r) if r.need_held_list => {
            conn.send_msg(2, ClientMsg::HeldList(Vec::new())).await.map_err(e("send held list"))?;
            match answer(&mut conn, 2).await? {
                ServerMsg::HeldListOk => {}
                other => return Err(format!("held list answered {other:?}")),
            }
        }
        ServerMsg::HelloReply(_) => {}
        other => return Err(format!("hello answered {other:?}")),
    }
    conn.send_msg(3, ClientMsg::Deletes(Vec::new())).await.map_err(e("send deletes"))?;
    match answer(&mut conn, 3).await? {
        ServerMsg::DeleteReport(_) => {}
        other => return Err(format!("deletes answered {other:?}")),
    }
    conn.send_msg(4, ClientMsg::AskDeletes).await.map_err(e("send ask deletes"))?;
    match answer(&mut conn, 4).await? {
        ServerMsg::DeletesForYou(_) => {}
        other => return Err(format!("ask deletes answered {other:?}")),
    }

    // The start of a real step-3 stream: one 8 MiB incompressible file, of which only the
    // first 64 KiB of the compressed stream are sent.
    let size = 8 << 20;
    let data = noise(42, size);
    let mut w = cs_tarstream::PackWriter::new(Vec::new(), 3).map_err(|e| e.to_string())?;
    let h = cs_tarstream::EntryHeader::file(
        RelPath::new("stalled/big.bin").map_err(|e| e.to_string())?,
        0o644,
        Timestamp::new(1_700_000_000, 0),
        size as u64,
    );
    w.append_file(&h, &mut &data[..]).map_err(|e| e.to_string())?;
    let (packed, _) = w.finish().map_err(|e| e.to_string())?;
    let stream = 7;
    conn.send_msg(5, ClientMsg::SendWrites { stream }).await.map_err(e("send SendWrites"))?;
    let chunk = bytes::Bytes::copy_from_slice(&packed[..64 * 1024]);
    conn.send(&Frame::Chunk { stream, data: chunk }).await.map_err(e("send chunk"))?;
    Ok(conn)
}
