//! Processes with deadlines, /proc readings, the machine, small filesystem helpers.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Set by SIGINT/SIGTERM: stop at the next check, cleaning up on the way out.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGINT and SIGTERM set [`STOP`] instead of killing the bench, so it can unmount and stop
/// what it started.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
}

/// How a timed command ended.
#[derive(Debug)]
pub enum Ended {
    Done(Duration),
    /// Killed at the deadline after running this long.
    TimedOut(Duration),
}

/// Runs `cmd` in its own process group with stdin from /dev/null and stdout/stderr appended to
/// `log`; returns how long it ran. At `deadline` the whole group is killed (by its id: the
/// group of the child we started) and `Ended::TimedOut` is returned. A non-zero exit is an
/// error naming the command and the log's tail.
pub fn run_until(cmd: &mut Command, log: &Path, deadline: Instant) -> Result<Ended> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err)).process_group(0);
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = child.wait();
        let _ = tx.send(r);
    });
    let status: ExitStatus = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(r) => break r?,
            Err(_) if left > Duration::from_millis(200) && !stopped() => continue,
            Err(_) => {
                let ran = start.elapsed();
                // The process group we created for our own (unreaped) child.
                if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = waiter.join();
                if stopped() {
                    bail!("interrupted");
                }
                return Ok(Ended::TimedOut(ran));
            }
        }
    };
    let took = start.elapsed();
    let _ = waiter.join();
    if !status.success() {
        bail!("{what} failed with {status}; log {}:\n{}", log.display(), tail(log, 2000));
    }
    Ok(Ended::Done(took))
}

/// Runs `cmd` to completion (no deadline beyond `limit`), output to `log`; error if it fails.
pub fn run(cmd: &mut Command, log: &Path, limit: Duration) -> Result<Duration> {
    match run_until(cmd, log, Instant::now() + limit)? {
        Ended::Done(d) => Ok(d),
        Ended::TimedOut(d) => bail!("{cmd:?} did not finish within {d:?}; log {}", log.display()),
    }
}

/// A `bash -c` command with `pipefail`.
pub fn bash(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg("-c").arg(format!("set -euo pipefail; {script}"));
    c
}

/// The last `n` bytes of a file, as text.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b[b.len().saturating_sub(n)..]).into_owned(),
        Err(e) => format!("({e})"),
    }
}

/// The stdout of a command that must succeed (short outputs only).
pub fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed with {}: {}", o.status, String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// First line of a program's version output, or "missing".
pub fn version(prog: &str, arg: &str) -> String {
    match Command::new(prog).arg(arg).stdin(Stdio::null()).output() {
        Ok(o) => {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().find(|l| !l.trim().is_empty()).unwrap_or("?").trim().to_string()
        }
        Err(_) => "missing".into(),
    }
}

/// The first line of a program's version output that starts with `prefix`.
pub fn version_line(prog: &str, arg: &str, prefix: &str) -> String {
    match Command::new(prog).arg(arg).stdin(Stdio::null()).output() {
        Ok(o) => {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines().find(|l| l.starts_with(prefix)).unwrap_or("?").trim().to_string()
        }
        Err(_) => "missing".into(),
    }
}

/// CPU time (user + system) of every thread of `pid` that is alive now, from
/// `/proc/PID/task/*/schedstat` (nanoseconds).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    rd.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// A `VmXXX:` field of `/proc/PID/status` in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Resident memory now (KiB).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Resident memory (KiB) of `pid`'s descendants whose command name starts with `name`,
/// summed (`None`: no such process): the processes a service started (the union, sshfs,
/// its fill holder).
pub fn descendants_rss_kib(pid: u32, name: &str) -> Option<u64> {
    let mut all = Vec::new();
    let mut stack = children_of(pid);
    while let Some(p) = stack.pop() {
        stack.extend(children_of(p));
        all.push(p);
    }
    all.iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).map(|c| c.trim().starts_with(name)).unwrap_or(false)
        })
        .filter_map(|p| rss_kib(*p))
        .reduce(|a, b| a + b)
}

/// Peak resident memory since start or the last [`reset_peak_rss`] (KiB).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// Resets `VmHWM` to the current RSS (`echo 5 > /proc/PID/clear_refs`).
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub use cs_proc::{children_of, start_time};

/// Whether something is mounted at `path` (by `/proc/self/mountinfo`).
pub fn is_mounted(path: &Path) -> bool {
    let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    cs_union::is_mounted(&p).unwrap_or(false)
}

/// `uptime`'s three load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line describing this machine.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.0} GiB RAM", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| l[12..].trim_matches('"').to_string()))
        .unwrap_or_default();
    let virt = if cpuinfo.contains(" hypervisor") { ", virtual machine" } else { "" };
    format!("{model}, {cores} cores{virt}, {mem}, Linux {kernel}, {os}")
}

/// The block device's name (`vda`) when `dir` is on ext4 mounted without a journal, else `None`
/// (also when it cannot tell). Without a journal, ext4's inode allocator skips each inode freed
/// in the last 60 s (360 s while its inode table block is dirty), reading its deletion time one
/// by one (fs/ext4/ialloc.c, `recently_deleted`): a create after many deletes scans them all.
pub fn ext4_without_journal(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).ok()?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?.to_string();
    if !Path::new("/proc/fs/ext4").join(&name).exists() {
        return None;
    }
    // A journal shows as /proc/fs/jbd2/<device>-<journal inode>.
    let journal_prefix = format!("{name}-");
    let journaled = std::fs::read_dir("/proc/fs/jbd2")
        .ok()?
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with(&journal_prefix));
    (!journaled).then_some(name)
}

/// Files (not directories) under `dir`, recursively; symlinks are counted, not followed.
pub fn count_files(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// `rm -rf`, quietly accepting a path that is already gone. The subdirectories are removed
/// by a few threads at once: on a filesystem mounted with `discard` (this machine's root)
/// every unlink waits for the device, and the device takes several at a time.
pub fn remove_tree(p: &Path) -> Result<()> {
    let gone = |r: std::io::Result<()>| match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("remove {}: {e}", p.display())),
    };
    let md = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(anyhow!("remove {}: {e}", p.display())),
    };
    if !md.is_dir() {
        return gone(std::fs::remove_file(p));
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    // One level down when there are few (e.g. `home/` holding everything).
    if subdirs.len() < REMOVERS {
        let deeper: Vec<PathBuf> = subdirs
            .iter()
            .flat_map(|d| {
                std::fs::read_dir(d)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                            .map(|e| e.path())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        if deeper.len() > subdirs.len() {
            // Disjoint trees only; what is left above them goes with the last remove.
            subdirs = deeper;
        }
    }
    if subdirs.len() > 1 {
        let queue = std::sync::Mutex::new(subdirs);
        std::thread::scope(|s| {
            for _ in 0..REMOVERS {
                s.spawn(|| loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    match next {
                        Some(d) => {
                            let _ = std::fs::remove_dir_all(&d);
                        }
                        None => break,
                    }
                });
            }
        });
    }
    gone(std::fs::remove_dir_all(p))
}

/// Threads removing a tree at once.
const REMOVERS: usize = 8;

/// `cp -a SRC/. DST/` (DST created).
pub fn copy_tree(src: &Path, dst: &Path, log: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut c = Command::new("cp");
    c.arg("-a").arg(format!("{}/.", src.display())).arg(dst);
    run(&mut c, log, Duration::from_secs(600))?;
    Ok(())
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` every `every` until it is true or `timeout` passes.
pub fn poll(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The absolute path of a program on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    cs_testbed::which(prog)
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Seconds since the bench started, for progress lines.
pub fn clock() -> String {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let s = START.get_or_init(Instant::now).elapsed().as_secs();
    format!("[{:02}:{:02}:{:02}]", s / 3600, (s / 60) % 60, s % 60)
}

/// The work directory: `dir` (created) or a new temporary one under /tmp
/// named `prefix…` (removed when the returned guard drops). Refuses a path
/// with spaces, `:`, `=` or quotes (sshd config, unionfs-fuse branches).
pub fn work_dir(dir: Option<&Path>, prefix: &str) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let (root, tmp) = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (std::fs::canonicalize(d)?, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    if root.to_string_lossy().contains([' ', ':', '=', '\'']) {
        bail!("the work directory {} must not contain spaces, ':', '=' or quotes", root.display());
    }
    Ok((root, tmp))
}

/// fuse-overlayfs mounted over an [`cs_union::overlay::Overlay`]'s directories, in the
/// foreground as our child: a measured candidate union only (docs/union.md), not a backend.
pub struct FuseOverlayfs {
    child: std::process::Child,
    merged: PathBuf,
}

impl FuseOverlayfs {
    pub fn version() -> String {
        version_line("fuse-overlayfs", "--version", "fuse-overlayfs")
    }

    pub fn mount(ov: &cs_union::overlay::Overlay) -> Result<Self> {
        std::fs::create_dir_all(&ov.work)?;
        let opts = format!("{},allow_other", ov.options()?);
        let child = Command::new("fuse-overlayfs")
            .args(["-f", "-o", &opts])
            .arg(&ov.merged)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start fuse-overlayfs")?;
        let mut me = FuseOverlayfs { child, merged: ov.merged.clone() };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cs_union::is_mounted(&me.merged)? {
            if let Some(st) = me.child.try_wait()? {
                bail!("fuse-overlayfs exited before mounting {}: {st}", me.merged.display());
            }
            if Instant::now() > deadline {
                bail!("fuse-overlayfs did not mount {} within 10 s", me.merged.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }

    pub fn unmount(mut self) -> Result<()> {
        cs_proc::unmount_or_detach(&self.merged).map_err(|e| anyhow!("unmount {}: {e}", self.merged.display()))?;
        if cs_proc::wait_timeout(&mut self.child, Duration::from_secs(5)).is_none() {
            cs_proc::stop_child(&mut self.child, Duration::from_secs(2));
        }
        Ok(())
    }
}

impl Drop for FuseOverlayfs {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = cs_proc::unmount_or_detach(&self.merged);
            cs_proc::stop_child(&mut self.child, Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small ext4 image made with `mkfs_args`, loop-mounted on `dir`; unmounted on drop.
    struct LoopExt4 {
        dir: PathBuf,
    }

    impl LoopExt4 {
        fn new(tmp: &Path, name: &str, mkfs_args: &[&str]) -> Self {
            let img = tmp.join(format!("{name}.img"));
            std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
            let st = Command::new("mkfs.ext4").args(["-q", "-F"]).args(mkfs_args).arg(&img).status().unwrap();
            assert!(st.success(), "mkfs.ext4 {mkfs_args:?} failed");
            let dir = tmp.join(name);
            std::fs::create_dir(&dir).unwrap();
            let st = Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&dir).status().unwrap();
            assert!(st.success(), "mount -o loop {} failed", img.display());
            LoopExt4 { dir }
        }
    }

    impl Drop for LoopExt4 {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }

    #[test]
    fn ext4_without_journal_is_told_apart_from_journaled_ext4_and_tmpfs() {
        assert!(rustix::process::geteuid().is_root(), "loop-mounting ext4 images needs root");
        let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
        let journaled = LoopExt4::new(tmp.path(), "journaled", &[]);
        let bare = LoopExt4::new(tmp.path(), "bare", &["-O", "^has_journal"]);
        let dev = ext4_without_journal(&bare.dir).expect("ext4 made with ^has_journal has no journal");
        assert!(dev.starts_with("loop"), "the device is the loop device, got {dev}");
        assert_eq!(ext4_without_journal(&journaled.dir), None);
        assert_eq!(ext4_without_journal(Path::new("/dev/shm")), None, "tmpfs is not ext4");
    }
}
