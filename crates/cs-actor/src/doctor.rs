//! `cs-actor doctor`: checks what syncing needs on this machine and says how
//! to fix what is wrong, one line per check.
//!
//! Each check is a function returning a [`Check`]; the rules that need no
//! machine (versions, modes, counts against limits) are pure functions with
//! unit tests. A check that *fails* blocks syncing (the exit status is 1);
//! a *warning* slows it or will block it later. No clock is checked: the
//! protocol compares no timestamps across machines (docs/protocol.md,
//! "Clocks"); only the local clock is used, to tell how long a TLS
//! certificate has left.

use std::fmt;
use std::net::ToSocketAddrs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{ComputeArgs, ProjectArgs};
use crate::services::{default_compute_socket, default_project_socket};

/// Environment override of `fs.inotify.max_user_watches` (tests simulate a low limit with it).
pub const MAX_WATCHES_ENV: &str = "CS_DOCTOR_MAX_USER_WATCHES";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Pass,
    /// A fact worth knowing that needs no action.
    Info,
    /// Syncing works, slower or not for long.
    Warn,
    /// Syncing cannot work until this is fixed.
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Pass => "ok  ",
            Level::Info => "info",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One check's finding, and what to do about it.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, level: Level, detail: impl Into<String>) -> Self {
        Check { name, level, detail: detail.into(), fix: None }
    }
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check::new(name, Level::Pass, detail)
    }
    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {:<16} {}", self.level, self.name, self.detail)?;
        match &self.fix {
            Some(fix) => write!(f, "; fix: {fix}"),
            None => Ok(()),
        }
    }
}

/// What the compute side's checks look at (from `--config` or the running service's `setup`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ComputeSetup {
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub upper: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub lower_mount_cmd: Option<String>,
    /// `unionfs-fuse` or `overlay`; absent: the default ([`cs_mount::default_backend`]).
    pub union: Option<String>,
    /// Where the project's replica is, when the lower is the replica (the default with no
    /// lower mount given).
    pub replica_dir: Option<PathBuf>,
}

/// What the project side's checks look at.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ProjectSetup {
    pub home: Option<PathBuf>,
    pub tokens: Option<PathBuf>,
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
}

enum Side {
    Compute(ComputeSetup),
    Project(ProjectSetup),
}

/// `cs-actor doctor`: prints every check and returns whether none failed.
pub async fn run(config: Option<&Path>, control_socket: Option<&Path>) -> Result<bool> {
    let mut sides: Vec<(Side, Option<Value>, PathBuf)> = Vec::new();
    if let Some(path) = config {
        let (side, socket) = side_of_config(path)?;
        let socket = control_socket.map(Path::to_path_buf).unwrap_or(socket);
        let status = service_status(&socket).await;
        sides.push((side, status, socket));
    } else {
        let sockets: Vec<PathBuf> = match control_socket {
            Some(s) => vec![s.to_path_buf()],
            None => vec![default_compute_socket(), default_project_socket()],
        };
        for socket in sockets {
            let Some(status) = service_status(&socket).await else { continue };
            let setup = status["setup"].clone();
            let side = match status["service"].as_str() {
                Some("project") => Side::Project(serde_json::from_value(setup).unwrap_or_default()),
                _ => Side::Compute(serde_json::from_value(setup).unwrap_or_default()),
            };
            sides.push((side, Some(status), socket));
        }
        if sides.is_empty() {
            let tried = match control_socket {
                Some(s) => s.display().to_string(),
                None => format!("{} or {}", default_compute_socket().display(), default_project_socket().display()),
            };
            let c = Check::new("service", Level::Fail, format!("no running service answers on {tried}"))
                .fix("start it (systemctl start cs-actor-compute or cs-actor-project), or give --config FILE or --control-socket PATH");
            println!("{c}");
            return Ok(false);
        }
    }
    let mut checks = Vec::new();
    for (side, status, socket) in &sides {
        checks.extend(match side {
            Side::Compute(setup) => compute_checks(setup, status.as_ref(), socket).await,
            Side::Project(setup) => project_checks(setup, status.as_ref(), socket).await,
        });
    }
    checks.push(Check::new(
        "clock",
        Level::Info,
        "not checked, on purpose: no part of syncing compares clocks across machines (docs/protocol.md, Clocks)",
    ));
    for c in &checks {
        println!("{c}");
    }
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warned = checks.iter().filter(|c| c.level == Level::Warn).count();
    if failed > 0 {
        println!("doctor: {failed} problem(s) block syncing, {warned} warning(s)");
    } else {
        println!("doctor: nothing blocks syncing, {warned} warning(s)");
    }
    Ok(failed == 0)
}

/// A config file is the compute service's or the broker's: whichever reads it (both refuse
/// unknown keys). Returns the side and its control socket.
fn side_of_config(path: &Path) -> Result<(Side, PathBuf)> {
    if let Ok(a) = crate::config::load::<ComputeArgs>(Some(path)) {
        let socket = a.control_socket.clone().unwrap_or_else(default_compute_socket);
        let replica_dir = a.replica_dir_or_default();
        let setup = ComputeSetup {
            server: a.server,
            token_file: a.token_file,
            ca: a.ca,
            upper: a.upper,
            state: a.state,
            lower_mount_cmd: a.lower_mount_cmd,
            union: a.union,
            replica_dir,
        };
        return Ok((Side::Compute(setup), socket));
    }
    let a = crate::config::load::<ProjectArgs>(Some(path))
        .with_context(|| format!("{} is neither a compute nor a project config", path.display()))?;
    let socket = a.control_socket.clone().unwrap_or_else(default_project_socket);
    let setup = ProjectSetup { home: a.home, tokens: a.tokens, listen: a.listen, tls_cert: a.tls_cert };
    Ok((Side::Project(setup), socket))
}

async fn service_status(socket: &Path) -> Option<Value> {
    let ask = cs_control::ask(socket, &cs_control::Request::Status);
    let resp = tokio::time::timeout(Duration::from_secs(5), ask).await.ok()?.ok()?;
    resp.status.filter(|_| resp.ok)
}

async fn compute_checks(setup: &ComputeSetup, status: Option<&Value>, socket: &Path) -> Vec<Check> {
    let uses_sshfs = setup.lower_mount_cmd.as_deref().is_some_and(|c| c.contains("sshfs"));
    // The backend the service runs: the one given, else the default for this upper layer.
    let overlay = match (setup.union.as_deref(), &setup.upper, &setup.state) {
        (Some(name), ..) => name == "overlay",
        (None, upper, state) => {
            // An unreadable upper or state directory is another check's finding; here it
            // counts as a fresh home.
            let probed = match (upper, state) {
                (Some(u), Some(s)) => cs_mount::DefaultInputs::probe(u, s, false).ok(),
                _ => None,
            };
            let inputs = probed.unwrap_or(cs_mount::DefaultInputs {
                upper_written_by: None,
                state_ran_with: None,
                pull_held: false,
                kernel_has_overlay: cs_union::overlay::kernel_can_mount_overlay(),
            });
            cs_mount::default_backend(&inputs).backend == cs_mount::UnionBackend::Overlay
        }
    };
    let mut checks = vec![compute_service(status, socket), fuse_device(), fuse_passthrough()];
    checks.extend(packages(&[("unionfs-fuse", !overlay), ("fuse3", true), ("sshfs", uses_sshfs)]));
    if overlay {
        checks.push(overlay_kernel());
    }
    if let Some(dir) = &setup.replica_dir {
        checks.push(replica_support(dir));
    }
    match &setup.upper {
        Some(upper) => {
            if overlay {
                checks.push(trusted_xattrs(upper));
            }
            checks.push(inotify_watches(upper, "the upper layer"));
            checks.push(free_space(upper, "upper layer"));
        }
        None => checks.push(Check::new("upper layer", Level::Warn, "not configured: space and watches not checked")),
    }
    checks.push(match &setup.token_file {
        Some(f) => token_file(f, false),
        None => Check::new("token file", Level::Fail, "no --token-file configured").fix("give --token-file FILE"),
    });
    match &setup.server {
        Some(url) => checks.extend(broker_from_compute(url, setup.ca.as_deref(), status).await),
        None => checks.push(Check::new("broker", Level::Fail, "no --server configured").fix("give --server URL")),
    }
    checks
}

async fn project_checks(setup: &ProjectSetup, status: Option<&Value>, socket: &Path) -> Vec<Check> {
    let mut checks = vec![project_service(status, socket)];
    checks.extend(packages(&[("openssh-server", false)]));
    match &setup.home {
        Some(home) => {
            checks.push(inotify_watches(home, "the project home"));
            checks.push(free_space(home, "project home"));
        }
        None => checks.push(Check::new("home", Level::Fail, "no --home configured").fix("give --home DIR")),
    }
    checks.push(match &setup.tokens {
        Some(f) => token_file(f, true),
        None => Check::new("tokens file", Level::Fail, "no --tokens configured").fix("give --tokens FILE"),
    });
    if let Some(listen) = &setup.listen {
        checks.push(listening(listen).await);
    }
    if let Some(cert) = &setup.tls_cert {
        checks.push(cert_file(cert));
    }
    checks
}

// ---- the service ----

fn compute_service(status: Option<&Value>, socket: &Path) -> Check {
    let Some(st) = status else {
        return Check::new("service", Level::Warn, format!("no compute service answers on {}", socket.display()))
            .fix("start it (systemctl start cs-actor-compute), or give its --control-socket");
    };
    let r = &st["round"];
    let phase = r["phase"].as_str().unwrap_or("unknown");
    match phase {
        "stopped" => Check::new("service", Level::Fail, format!("rounds stopped: {}", r["stopped"]["reason"]))
            .fix(r["stopped"]["what_to_do"].as_str().unwrap_or("see docs/operations.md").to_string()),
        // Paused on purpose: syncing resumes when the operator says so.
        "paused" if st["mounts"]["rail"].is_null() && !r["operator_pause"].is_null() => Check::new(
            "service",
            Level::Warn,
            format!("paused by the operator: {}", r["paused_reason"].as_str().unwrap_or("no reason given")),
        )
        .fix("cs-actor resume, when syncing should go on"),
        "paused" => {
            let why = st["mounts"]["rail"].as_str().or(r["paused_reason"].as_str()).unwrap_or("paused").to_string();
            Check::new("service", Level::Fail, format!("rounds paused: {why}"))
                .fix("see docs/operations.md, When something is wrong (accept-empty-lower if the project was emptied)")
        }
        _ => Check::pass(
            "service",
            format!(
                "compute service {} on {}: round {phase}, {} committed",
                st["client"].as_str().unwrap_or("?"),
                socket.display(),
                r["rounds_committed"]
            ),
        ),
    }
}

fn project_service(status: Option<&Value>, socket: &Path) -> Check {
    match status {
        Some(st) => Check::pass(
            "service",
            format!(
                "project broker on {} ({}): {} session(s)",
                st["broker"]["listen"].as_str().unwrap_or("?"),
                socket.display(),
                st["broker"]["sessions"].as_array().map_or(0, Vec::len)
            ),
        ),
        None => Check::new("service", Level::Warn, format!("no project broker answers on {}", socket.display()))
            .fix("start it (systemctl start cs-actor-project), or give its --control-socket"),
    }
}

// ---- FUSE ----

fn fuse_device() -> Check {
    let dev = Path::new("/dev/fuse");
    let md = match std::fs::metadata(dev) {
        Ok(md) => md,
        Err(e) => {
            return Check::new("fuse", Level::Fail, format!("/dev/fuse: {e}"))
                .fix("modprobe fuse (in a container: give it /dev/fuse, e.g. --device /dev/fuse)")
        }
    };
    if !md.file_type().is_char_device() {
        return Check::new("fuse", Level::Fail, "/dev/fuse is not a character device").fix("modprobe fuse");
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Check::new("fuse", Level::Fail, format!("/dev/fuse cannot be opened read-write: {e}"))
            .fix("run the service as root, or allow the device (container: --device /dev/fuse --cap-add SYS_ADMIN)");
    }
    let version = match Command::new("fusermount3").arg("-V").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => {
            return Check::new("fuse", Level::Fail, format!("/dev/fuse opens, but fusermount3: {e}"))
                .fix("apt-get install fuse3")
        }
    };
    Check::pass("fuse", format!("/dev/fuse opens read-write; {version}; kernel {}", kernel_release()))
}

/// What the project's replica needs of this machine: a loop device, `mkfs.ext4`, and a
/// fanotify group of the fill service's class.
fn replica_support(dir: &Path) -> Check {
    let root = rustix::process::geteuid().is_root();
    replica_verdict(
        dir,
        Path::new("/dev/loop-control").exists(),
        in_path("mkfs.ext4"),
        cs_replica::probe_group_support(),
        root,
    )
}

pub fn replica_verdict(dir: &Path, loop_control: bool, mkfs: bool, fanotify: std::io::Result<()>, root: bool) -> Check {
    const NAME: &str = "replica";
    let dir = dir.display();
    if !loop_control {
        return Check::new(NAME, Level::Fail, format!("{dir}: no /dev/loop-control to mount the replica's image"))
            .fix("modprobe loop (in a container: give it the loop devices)");
    }
    if !mkfs {
        return Check::new(
            NAME,
            Level::Fail,
            format!("{dir}: mkfs.ext4 is not on PATH (it makes the replica's image)"),
        )
        .fix("apt-get install e2fsprogs");
    }
    match fanotify {
        Ok(()) => Check::pass(
            NAME,
            format!("{dir}: loop devices, mkfs.ext4 and fanotify permission events (fills at first open) are here"),
        ),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !root => {
            Check::new(NAME, Level::Warn, format!("{dir}: fanotify not checked, it needs root ({e})"))
                .fix("run `cs-actor doctor` as root, as the service runs")
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Check::new(
            NAME,
            Level::Fail,
            format!("{dir}: this kernel refuses fanotify permission events ({e}), which fill files at first open"),
        )
        .fix("a kernel built with CONFIG_FANOTIFY_ACCESS_PERMISSIONS, or a lower mount (--lower-mount-cmd sshfs ...)"),
        Err(e) => Check::new(NAME, Level::Fail, format!("{dir}: a fanotify group for the fills: {e}"))
            .fix("run the service as root (container: --cap-add SYS_ADMIN), or give a lower mount instead"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn fuse_passthrough() -> Check {
    let params: Vec<String> = std::fs::read_dir("/sys/module/fuse/parameters")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let value = std::fs::read_to_string(e.path()).unwrap_or_default();
            format!("{}={}", e.file_name().to_string_lossy(), value.trim())
        })
        .collect();
    passthrough_verdict(&kernel_release(), &params)
}

/// FUSE passthrough (reads and writes of an open file go straight to the backing file) came
/// with Linux 6.9. The union works without it: this is for knowing, not for fixing.
pub fn passthrough_verdict(release: &str, params: &[String]) -> Check {
    let params = if params.is_empty() { "none".to_string() } else { params.join(" ") };
    match kernel_version(release) {
        Some(v) if v >= (6, 9) => Check::pass(
            "fuse passthrough",
            format!("kernel {release} supports FUSE passthrough (6.9+); fuse module parameters: {params}"),
        ),
        Some(_) => Check::new(
            "fuse passthrough",
            Level::Info,
            format!("kernel {release} predates FUSE passthrough (6.9); the union works without it"),
        ),
        None => Check::new("fuse passthrough", Level::Info, format!("kernel release {release:?} not understood")),
    }
}

/// `6.12.0-1-amd64` → (6, 12).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

// ---- the overlay union ----

fn overlay_kernel() -> Check {
    if cs_union::overlay::kernel_has_overlay() {
        return Check::pass("overlayfs", format!("the kernel offers overlay (kernel {})", kernel_release()));
    }
    Check::new("overlayfs", Level::Fail, "the kernel does not list overlay in /proc/filesystems")
        .fix("modprobe overlay (a container cannot load it: load it on the host), or run with --union unionfs-fuse")
}

/// overlayfs keeps its opaque directories and redirects in `trusted.*` xattrs of the upper
/// layer: tried on a scratch file beside the upper layer, on its filesystem (never inside it:
/// the union is mounted over it).
fn trusted_xattrs(upper: &Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    const NAME: &str = "trusted.overlay";
    let (Some(parent), Ok(md)) = (upper.parent(), std::fs::metadata(upper)) else {
        return Check::new(
            "trusted xattrs",
            Level::Warn,
            format!("{} does not exist yet: not checked", upper.display()),
        );
    };
    if std::fs::metadata(parent).map(|p| p.dev()).ok() != Some(md.dev()) {
        return Check::new(
            "trusted xattrs",
            Level::Info,
            format!(
                "{} is a mount point of its own: trusted xattrs not checked (nothing is written inside it)",
                upper.display()
            ),
        );
    }
    let scratch = parent.join(format!(".cs-actor-doctor-xattr-{}", std::process::id()));
    let result = match std::fs::File::create(&scratch) {
        Err(_) => Err(None),
        Ok(_) => {
            rustix::fs::lsetxattr(&scratch, format!("{NAME}.cs-actor-doctor"), b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| Some(std::io::Error::from(e)))
        }
    };
    let _ = std::fs::remove_file(&scratch);
    xattr_verdict(upper, result.err(), rustix::process::geteuid().is_root())
}

/// The verdict on setting a `trusted.*` xattr on the upper's filesystem: `err` is `None` when
/// it worked, `Some(None)` when the scratch file could not even be made.
pub fn xattr_verdict(upper: &Path, err: Option<Option<std::io::Error>>, root: bool) -> Check {
    let fs = format!("the filesystem of {}", upper.display());
    match err {
        None => Check::pass("trusted xattrs", format!("{fs} takes trusted.* xattrs (overlayfs's opaque directories and redirects)")),
        Some(Some(e)) if e.raw_os_error() == Some(libc::EPERM) && !root => {
            Check::new("trusted xattrs", Level::Warn, format!("{fs}: not checked, trusted.* xattrs need root ({e})"))
                .fix("run `cs-actor doctor` as root")
        }
        Some(Some(e)) => Check::new("trusted xattrs", Level::Fail, format!("{fs} refuses trusted.* xattrs: {e}"))
            .fix("put the upper layer (and the overlay work directory) on ext4 or xfs (tmpfs from Linux 6.6), or run with --union unionfs-fuse"),
        Some(None) => Check::new("trusted xattrs", Level::Warn, format!("{fs}: not checked, no scratch file could be made beside it")),
    }
}

// ---- packages ----

/// `(package, needed)`: a missing needed package fails, another warns.
fn packages(wanted: &[(&'static str, bool)]) -> Vec<Check> {
    wanted
        .iter()
        .map(|&(pkg, needed)| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", pkg]).output();
            let version = match out {
                Ok(out) => dpkg_installed(&String::from_utf8_lossy(&out.stdout)),
                // Not a Debian system: the program itself may still be there.
                Err(_) => program_of(pkg).filter(|p| in_path(p)).map(|p| format!("{p} in PATH")),
            };
            match version {
                Some(v) => Check::pass("package", format!("{pkg} {v}")),
                None if needed => Check::new("package", Level::Fail, format!("{pkg} is not installed"))
                    .fix(format!("apt-get install {pkg}")),
                None => Check::new("package", Level::Warn, format!("{pkg} is not installed (needed by a sshfs lower)"))
                    .fix(format!("apt-get install {pkg}, unless the lower layer is mounted another way")),
            }
        })
        .collect()
}

/// `dpkg-query -f '${Status}\t${Version}'` → the version, if installed.
pub fn dpkg_installed(out: &str) -> Option<String> {
    let (status, version) = out.trim().split_once('\t')?;
    status.ends_with(" installed").then(|| version.to_string())
}

fn program_of(pkg: &str) -> Option<&'static str> {
    match pkg {
        "unionfs-fuse" => Some("unionfs"),
        "fuse3" => Some("fusermount3"),
        "sshfs" => Some("sshfs"),
        "openssh-server" => Some("sshd"),
        _ => None,
    }
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

// ---- inotify ----

fn inotify_watches(root: &Path, what: &str) -> Check {
    let limit = match std::env::var(MAX_WATCHES_ENV) {
        Ok(v) => v.parse().ok(),
        Err(_) => {
            std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").ok().and_then(|s| s.trim().parse().ok())
        }
    };
    let Some(limit) = limit else {
        return Check::new("inotify", Level::Warn, "fs.inotify.max_user_watches cannot be read");
    };
    watches_verdict(limit, count_dirs(root), what)
}

/// One inotify watch per directory: a limit below the count means rounds rescan everything
/// (project side) or miss early triggers (compute side): slower, never wrong. Other programs
/// of the same user need watches too, hence the margin.
pub fn watches_verdict(limit: u64, dirs: u64, what: &str) -> Check {
    let detail = format!("fs.inotify.max_user_watches {limit}, {dirs} directories in {what}");
    let want = (dirs.saturating_mul(2)).max(65536);
    let fix = format!("sysctl -w fs.inotify.max_user_watches={want} (and in /etc/sysctl.d/ to keep it)");
    if dirs >= limit {
        Check::new("inotify", Level::Warn, format!("{detail}: too few watches, every round rescans the whole tree"))
            .fix(fix)
    } else if dirs.saturating_mul(5) > limit.saturating_mul(4) {
        Check::new("inotify", Level::Warn, format!("{detail}: less than 20% to spare")).fix(fix)
    } else {
        Check::pass("inotify", detail)
    }
}

/// Directories under `root` (itself included), symlinks not followed.
fn count_dirs(root: &Path) -> u64 {
    let mut n = 0;
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        n += 1;
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    n
}

// ---- free space ----

fn free_space(path: &Path, what: &'static str) -> Check {
    match rustix::fs::statvfs(path) {
        Ok(st) => space_verdict(what, path, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_favail),
        Err(e) => Check::new("free space", Level::Fail, format!("{what} {}: {e}", path.display()))
            .fix("create the directory, or correct the path in the configuration"),
    }
}

const MIB: u64 = 1 << 20;

/// A disk that is full fails every round that writes (nothing is lost: the round is retried).
pub fn space_verdict(what: &str, path: &Path, avail: u64, total: u64, inodes_avail: u64) -> Check {
    let detail = format!(
        "{what} {}: {} MiB free of {} MiB, {inodes_avail} inodes free",
        path.display(),
        avail / MIB,
        total / MIB
    );
    let fix = format!("free space on {} (df -h {0})", path.display());
    if avail < 64 * MIB || inodes_avail < 1000 {
        Check::new("free space", Level::Fail, format!("{detail}: rounds that write will fail")).fix(fix)
    } else if avail < 1024 * MIB || avail.saturating_mul(20) < total {
        Check::new("free space", Level::Warn, format!("{detail}: little room left")).fix(fix)
    } else {
        Check::pass("free space", detail)
    }
}

// ---- tokens ----

fn token_file(path: &Path, table: bool) -> Check {
    let name = if table { "tokens file" } else { "token file" };
    let mode = match std::fs::metadata(path) {
        Ok(md) => md.permissions().mode() & 0o7777,
        Err(e) => return Check::new(name, Level::Fail, format!("{}: {e}", path.display())).fix("create it, mode 0600"),
    };
    let verdict = token_mode_verdict(name, path, mode);
    if verdict.level != Level::Pass {
        return verdict;
    }
    // The mode is right: is the content what the service accepts?
    let content = if table {
        cs_wire::TokenStore::load(path).map(|_| ()).map_err(|e| e.to_string())
    } else {
        cs_wire::read_token_file(path).map(|_| ()).map_err(|e| e.to_string())
    };
    match content {
        Ok(()) => verdict,
        Err(e) => Check::new(name, Level::Fail, e).fix("see docs/operations.md for the token format"),
    }
}

/// Only the owner may read a token: the services refuse a group- or world-accessible file.
pub fn token_mode_verdict(name: &'static str, path: &Path, mode: u32) -> Check {
    if mode & 0o077 != 0 {
        Check::new(name, Level::Fail, format!("{} is mode {mode:04o}: group or others can access it", path.display()))
            .fix(format!("chmod 600 {}", path.display()))
    } else {
        Check::pass(name, format!("{} mode {mode:04o}", path.display()))
    }
}

// ---- the broker ----

/// host and port of a ws:// or wss:// URL.
pub fn broker_address(url: &str) -> Option<(bool, String, u16)> {
    let (tls, rest) =
        if let Some(r) = url.strip_prefix("wss://") { (true, r) } else { (false, url.strip_prefix("ws://")?) };
    let authority = rest.split(['/', '?']).next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    (!host.is_empty()).then(|| (tls, host.to_string(), port))
}

async fn broker_from_compute(url: &str, ca: Option<&Path>, status: Option<&Value>) -> Vec<Check> {
    let Some((tls, host, port)) = broker_address(url) else {
        return vec![Check::new("broker", Level::Fail, format!("{url:?} is not a ws:// or wss:// URL"))
            .fix("--server ws://HOST:PORT (loopback) or wss://HOST:PORT")];
    };
    let live = status
        .and_then(|st| {
            let c = &st["connection"];
            let rtt = c["rtt_ms"].as_f64().map_or("not measured yet".to_string(), |r| format!("{r:.1} ms"));
            Some(format!("; the service's websocket: {}, rtt {rtt}", c["state"].as_str()?))
        })
        .unwrap_or_default();
    let (stream, elapsed) = match tcp_connect(&host, port).await {
        Ok(ok) => ok,
        Err(e) => {
            return vec![Check::new("broker", Level::Fail, format!("{host}:{port} unreachable: {e}"))
                .fix("start `cs-actor project` there, or correct --server; check the firewall")]
        }
    };
    let mut checks =
        vec![Check::pass("broker", format!("{host}:{port} reachable, TCP connect {:.1} ms{live}", ms(elapsed)))];
    if tls {
        checks.push(match cs_wire::tls_peer_certificates(stream, &host, ca).await {
            Ok(certs) => match certs.first() {
                Some(leaf) => cert_verdict(leaf.as_ref(), "the broker's certificate verifies"),
                None => Check::new("tls", Level::Fail, "the broker sent no certificate"),
            },
            Err(e) => Check::new("tls", Level::Fail, format!("handshake with {host}:{port}: {e}"))
                .fix("a certificate valid for this host name, not expired; a self-signed one needs --ca"),
        });
    }
    checks
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn tcp_connect(host: &str, port: u16) -> Result<(tokio::net::TcpStream, Duration), String> {
    let addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))?;
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok((s, t.elapsed())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// The broker's own address answers (0.0.0.0 is asked on loopback).
async fn listening(listen: &str) -> Check {
    let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
        return Check::new("listen", Level::Fail, format!("--listen {listen:?} is not IP:PORT"));
    };
    let host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    match tcp_connect(&host, addr.port()).await {
        Ok((_, t)) => Check::pass("listen", format!("{listen} accepts connections ({:.1} ms)", ms(t))),
        Err(e) => Check::new("listen", Level::Fail, format!("{listen}: {e}"))
            .fix("start the broker, or free the port (ss -ltnp)"),
    }
}

fn cert_file(path: &Path) -> Check {
    let pem = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Check::new("tls", Level::Fail, format!("{}: {e}", path.display())),
    };
    match x509_parser::pem::parse_x509_pem(&pem) {
        Ok((_, p)) => cert_verdict(&p.contents, &format!("{}", path.display())),
        Err(e) => Check::new("tls", Level::Fail, format!("{}: not a PEM certificate: {e}", path.display())),
    }
}

fn cert_verdict(der: &[u8], what: &str) -> Check {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            expiry_verdict(what, &cert.subject().to_string(), not_after.timestamp() - now, &not_after.to_string())
        }
        Err(e) => Check::new("tls", Level::Fail, format!("{what}: certificate not understood: {e}")),
    }
}

/// Seconds left before the certificate expires, by this machine's clock (the one place a clock
/// is read, and only this machine's).
pub fn expiry_verdict(what: &str, subject: &str, secs_left: i64, not_after: &str) -> Check {
    let days = secs_left / 86400;
    let detail = format!("{what}: {subject}, valid until {not_after}");
    let fix = "renew the certificate (--tls-cert on the broker) and restart the broker";
    if secs_left <= 0 {
        Check::new("tls", Level::Fail, format!("{detail}: EXPIRED")).fix(fix)
    } else if days < 14 {
        Check::new("tls", Level::Warn, format!("{detail}: expires in {days} day(s)")).fix(fix)
    } else {
        Check::pass("tls", format!("{detail} ({days} days left)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_rule_names_what_is_missing_and_what_to_do() {
        let d = Path::new("/var/lib/cs/state/replica");
        let errno = |n| Err(std::io::Error::from_raw_os_error(n));
        let ok = replica_verdict(d, true, true, Ok(()), true);
        assert_eq!(ok.level, Level::Pass, "{ok}");
        assert!(ok.detail.contains("/var/lib/cs/state/replica"), "{ok}");
        let no_loop = replica_verdict(d, false, true, Ok(()), true);
        assert_eq!(no_loop.level, Level::Fail);
        assert!(no_loop.fix.as_deref().unwrap().contains("modprobe loop"), "{no_loop}");
        let no_mkfs = replica_verdict(d, true, false, Ok(()), true);
        assert!(no_mkfs.level == Level::Fail && no_mkfs.fix.as_deref().unwrap().contains("e2fsprogs"), "{no_mkfs}");
        let kernel = replica_verdict(d, true, true, errno(libc::EINVAL), true);
        assert_eq!(kernel.level, Level::Fail);
        assert!(kernel.fix.as_deref().unwrap().contains("CONFIG_FANOTIFY_ACCESS_PERMISSIONS"), "{kernel}");
        // Not root: the probe cannot tell, and says so instead of failing.
        assert_eq!(replica_verdict(d, true, true, errno(libc::EPERM), false).level, Level::Warn);
        assert_eq!(replica_verdict(d, true, true, errno(libc::EPERM), true).level, Level::Fail);
    }

    #[test]
    fn inotify_rule_compares_directories_with_the_limit() {
        assert_eq!(watches_verdict(8192, 100, "home").level, Level::Pass);
        let low = watches_verdict(1000, 900, "home");
        assert_eq!(low.level, Level::Warn);
        let over = watches_verdict(1000, 5000, "home");
        assert_eq!(over.level, Level::Warn);
        assert!(over.detail.contains("rescans"), "{over}");
        assert!(over.fix.as_deref().unwrap().contains("max_user_watches=65536"), "{over}");
        assert!(watches_verdict(1000, 50_000, "home").fix.unwrap().contains("=100000"));
    }

    #[test]
    fn token_mode_rule_refuses_group_and_world_bits() {
        let p = Path::new("/x/token");
        assert_eq!(token_mode_verdict("token file", p, 0o600).level, Level::Pass);
        assert_eq!(token_mode_verdict("token file", p, 0o400).level, Level::Pass);
        for bad in [0o644, 0o640, 0o604, 0o660, 0o601] {
            let c = token_mode_verdict("token file", p, bad);
            assert_eq!(c.level, Level::Fail, "{bad:o}");
            assert_eq!(c.fix.as_deref(), Some("chmod 600 /x/token"));
        }
    }

    #[test]
    fn kernel_versions_and_passthrough() {
        assert_eq!(kernel_version("6.12.0-1-amd64"), Some((6, 12)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(passthrough_verdict("6.9.1", &[]).level, Level::Pass);
        assert_eq!(passthrough_verdict("6.8.12", &[]).level, Level::Info);
        assert_eq!(passthrough_verdict("", &[]).level, Level::Info);
    }

    #[test]
    fn trusted_xattr_verdicts() {
        let u = Path::new("/var/u");
        assert_eq!(xattr_verdict(u, None, true).level, Level::Pass);
        let eperm = || Some(Some(std::io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(xattr_verdict(u, eperm(), false).level, Level::Warn);
        assert_eq!(xattr_verdict(u, eperm(), true).level, Level::Fail);
        let notsup = xattr_verdict(u, Some(Some(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP))), true);
        assert_eq!(notsup.level, Level::Fail);
        assert!(notsup.fix.unwrap().contains("--union unionfs-fuse"));
    }

    #[test]
    fn dpkg_status_lines() {
        assert_eq!(dpkg_installed("install ok installed\t3.14.0-4"), Some("3.14.0-4".into()));
        assert_eq!(dpkg_installed("deinstall ok config-files\t1.0"), None);
        assert_eq!(dpkg_installed(""), None);
    }

    #[test]
    fn space_and_expiry_rules() {
        let p = Path::new("/u");
        assert_eq!(space_verdict("upper", p, 10 * MIB, 100_000 * MIB, 10_000).level, Level::Fail);
        assert_eq!(space_verdict("upper", p, 50_000 * MIB, 100_000 * MIB, 10).level, Level::Fail);
        assert_eq!(space_verdict("upper", p, 2000 * MIB, 100_000 * MIB, 10_000).level, Level::Warn);
        assert_eq!(space_verdict("upper", p, 50_000 * MIB, 100_000 * MIB, 10_000).level, Level::Pass);
        assert_eq!(expiry_verdict("c", "CN=x", -5, "then").level, Level::Fail);
        assert_eq!(expiry_verdict("c", "CN=x", 3 * 86400, "then").level, Level::Warn);
        assert_eq!(expiry_verdict("c", "CN=x", 90 * 86400, "then").level, Level::Pass);
    }

    #[test]
    fn a_certificate_file_is_read_for_its_expiry() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("broker.crt");
        std::fs::write(&pem, ck.cert.pem()).unwrap();
        let c = cert_file(&pem);
        assert_eq!(c.level, Level::Pass, "{c}");
        assert!(c.detail.contains("days left"), "{c}");
        std::fs::write(&pem, "not a certificate").unwrap();
        assert_eq!(cert_file(&pem).level, Level::Fail);
    }

    #[test]
    fn broker_urls() {
        assert_eq!(broker_address("ws://127.0.0.1:7780"), Some((false, "127.0.0.1".into(), 7780)));
        assert_eq!(broker_address("wss://p.example/x"), Some((true, "p.example".into(), 443)));
        assert_eq!(broker_address("wss://[::1]:9/"), Some((true, "[::1]".into(), 9)));
        assert_eq!(broker_address("http://x"), None);
    }
}
