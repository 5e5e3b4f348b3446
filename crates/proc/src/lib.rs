//! Child processes and mounts, shared by the product (cs-union, cs-mount) and the test and
//! bench harnesses (cs-testbed, cs-bench): the last bytes of a child's stderr, waiting for a
//! child with a timeout, stopping it by pid, unmounting a (possibly dead) FUSE mount, and the
//! few `/proc` lookups the harnesses need. It depends on nothing of the project, so neither
//! side drags the other in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::process::{Pid, Signal};

/// How often the waits below poll.
const POLL: Duration = Duration::from_millis(10);

/// The last `cap` bytes a child wrote to a pipe, collected by a thread (so the pipe never fills).
pub struct OutputTail {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl OutputTail {
    /// Starts reading `pipe` (nothing to read if `None`), keeping its last `cap` bytes.
    pub fn collect<R: Read + Send + 'static>(pipe: Option<R>, cap: usize) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let thread = pipe.map(|mut pipe| {
            let buf = Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > cap {
                        let cut = b.len() - cap;
                        b.drain(..cut);
                    }
                }
            })
        });
        OutputTail { buf, thread }
    }

    /// What was kept, lossily decoded and trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).trim().to_string()
    }

    /// Waits for the writers to close the pipe (call once the child has exited and no
    /// daemonised grandchild can hold the pipe).
    pub fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Joins the reader only if it has finished. A daemonised grandchild may keep the pipe
    /// open, so this never blocks.
    pub fn finish_if_done(&mut self) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            self.finish();
        }
    }
}

/// Polls `child` until it exits or `t` passes; `Some(status)` if it exited (and was reaped).
pub fn wait_timeout(child: &mut Child, t: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Sends SIGTERM to our own child (by pid), then SIGKILL if it has not exited within
/// `grace`; reaps it either way.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // Our own unreaped child: its pid cannot have been reused.
    let _ = rustix::process::kill_process(Pid::from_child(child), Signal::TERM);
    if wait_timeout(child, grace).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `f` every 10 ms until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// An unmount that failed, with every attempt's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unmount {}: {}", path.display(), attempts.join("; "))]
pub struct UnmountError {
    pub path: PathBuf,
    pub attempts: Vec<String>,
}

/// Unmounts `path`: `umount2` as root, else `fusermount3 -u` / `fusermount -u`. With `lazy`,
/// detaches it (`MNT_DETACH` / `-uz`), which works on a busy or dead FUSE mount.
pub fn unmount(path: &Path, lazy: bool) -> Result<(), UnmountError> {
    let mut attempts = Vec::new();
    if try_unmount(path, lazy, &mut attempts) {
        Ok(())
    } else {
        Err(UnmountError { path: path.to_path_buf(), attempts })
    }
}

/// Detaches the mount at `path` (see [`unmount`]).
pub fn lazy_unmount(path: &Path) -> Result<(), UnmountError> {
    unmount(path, true)
}

/// Unmounts `path` normally, else lazily; the error lists both attempts.
pub fn unmount_or_detach(path: &Path) -> Result<(), UnmountError> {
    let mut attempts = Vec::new();
    if try_unmount(path, false, &mut attempts) || try_unmount(path, true, &mut attempts) {
        Ok(())
    } else {
        Err(UnmountError { path: path.to_path_buf(), attempts })
    }
}

/// One unmount attempt; true on success, else its errors are pushed to `errs`.
fn try_unmount(path: &Path, lazy: bool, errs: &mut Vec<String>) -> bool {
    if rustix::process::geteuid().is_root() {
        let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() };
        match rustix::mount::unmount(path, flags) {
            Ok(()) => return true,
            Err(e) => {
                let e = std::io::Error::from(e);
                errs.push(format!("umount2{}: {e}", if lazy { "(MNT_DETACH)" } else { "" }));
                return false;
            }
        }
    }
    let flag = if lazy { "-uz" } else { "-u" };
    for prog in ["fusermount3", "fusermount"] {
        match Command::new(prog).arg(flag).arg(path).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => return true,
            Ok(o) => errs.push(format!("{prog} {flag}: {} {}", o.status, String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => errs.push(format!("{prog} {flag}: {e}")),
        }
    }
    false
}

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces and
/// parentheses, so the split is at the last `)`): field 0 is the state, 1 the parent pid.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Pids whose parent is `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let ppid: u32 = stat_fields(child)?.get(1)?.parse().ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// True if `pid` has exited but is not reaped yet (or is gone).
pub fn is_zombie(pid: u32) -> bool {
    match stat_fields(pid) {
        Some(f) => f.first().map(String::as_str) == Some("Z"),
        None => true,
    }
}

/// A process's start time (clock ticks since boot), to tell it from a later one with its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_waited_for_and_stopped() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(children_of(std::process::id()).contains(&pid));
        assert!(!is_zombie(pid));
        assert!(start_time(pid).is_some());
        assert_eq!(wait_timeout(&mut child, Duration::from_millis(50)), None);
        let t = Instant::now();
        stop_child(&mut child, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM, not the SIGKILL fallback, stopped it");
        assert!(is_zombie(pid), "reaped");
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut child = Command::new("sh")
            .args(["-c", "printf 'aaaa'; printf 'bbbb' >&2; printf 'cccc' >&2"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut tail = OutputTail::collect(child.stderr.take(), 6);
        assert!(wait_timeout(&mut child, Duration::from_secs(10)).is_some());
        tail.finish();
        assert_eq!(tail.text(), "bbcccc");
    }

    #[test]
    fn unmounting_what_is_not_mounted_fails_with_every_attempt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = unmount_or_detach(dir.path()).expect_err("nothing is mounted there");
        assert_eq!(e.path, dir.path());
        assert!(e.attempts.len() >= 2, "{e}");
    }

    #[test]
    fn wait_until_returns_the_last_value() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), || {
            n += 1;
            n == 3
        }));
        assert!(!wait_until(Duration::from_millis(20), || false));
    }
}
