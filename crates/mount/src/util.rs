//! Small process and mount helpers.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::MountError;

/// How much of a child's stderr is kept for error messages.
const TAIL: usize = 8 * 1024;

/// The last bytes a child wrote to stderr, collected by a thread (the pipe never fills).
pub(crate) struct OutputTail {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl OutputTail {
    pub(crate) fn collect(pipe: Option<ChildStderr>) -> Self {
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
                    if b.len() > TAIL {
                        let cut = b.len() - TAIL;
                        b.drain(..cut);
                    }
                }
            })
        });
        OutputTail { buf, thread }
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap_or_else(|p| p.into_inner())).trim().to_string()
    }

    /// Joins the reader once the pipe's writers are all gone. A daemonised grandchild may keep
    /// the pipe open, so this only joins a finished thread and never blocks.
    pub(crate) fn finish_if_done(&mut self) {
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Polls `child` until it exits or `t` passes; `Some(status)` if it exited (and was reaped).
pub(crate) fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
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
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True if `/proc/self/mountinfo` lists `p` (canonical) as a mount point.
pub(crate) fn mounted(p: &Path) -> bool {
    cs_union::is_mounted(p).unwrap_or(false)
}

/// Unmounts `path` (`umount2` as root, else `fusermount3 -u`/`fusermount -u`); with `lazy`,
/// detaches it (`MNT_DETACH` / `-uz`), which works on a busy or dead FUSE mount.
pub(crate) fn unmount(path: &Path, lazy: bool) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| "path contains NUL".to_string())?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        return Err(format!(
            "umount2{} {}: {}",
            if lazy { "(MNT_DETACH)" } else { "" },
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut errs = Vec::new();
    for prog in ["fusermount3", "fusermount"] {
        let flag = if lazy { "-uz" } else { "-u" };
        match Command::new(prog).arg(flag).arg(path).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => errs.push(format!("{prog} {flag}: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => errs.push(format!("{prog} {flag}: {e}")),
        }
    }
    Err(errs.join("; "))
}

/// Unmounts `path` if it is mounted: normally, else lazily.
pub(crate) fn unmount_if_mounted(path: &Path) -> Result<(), String> {
    if !mounted(path) {
        return Ok(());
    }
    let first = match unmount(path, false) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    unmount(path, true).map_err(|e| format!("{first}; {e}"))
}

/// Milliseconds since the Unix epoch (for "since" fields of the observable state).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// An absolute path for `p` that never stats `p` itself (it may be a dead mount, where any
/// access fails with ENOTCONN): the parent is canonicalised, the last component kept. The
/// directory is created if nothing is there.
pub(crate) fn resolve_dir(p: &Path, what: &'static str) -> Result<PathBuf, MountError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| MountError::io(what, p, e))?.join(p)
    };
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Err(MountError::Config(format!("{what}: {} has no parent directory", p.display())));
    };
    std::fs::create_dir_all(parent).map_err(|e| MountError::io(what, parent, e))?;
    let parent = std::fs::canonicalize(parent).map_err(|e| MountError::io(what, parent, e))?;
    let full = parent.join(name);
    match std::fs::symlink_metadata(&full) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(&full).map_err(|e| MountError::io(what, &full, e))?;
        }
        Ok(m) if m.file_type().is_symlink() => {
            return std::fs::canonicalize(&full).map_err(|e| MountError::io(what, &full, e));
        }
        // A directory, or something we cannot stat (a dead mount): keep the name.
        _ => {}
    }
    Ok(full)
}

/// A small xorshift generator for backoff jitter (no need for a real RNG).
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new() -> Self {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
            ^ ((std::process::id() as u64) << 32);
        Jitter(seed | 1)
    }

    /// A factor in [1.0, 1.25).
    pub(crate) fn factor(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        1.0 + (x >> 11) as f64 / (1u64 << 53) as f64 * 0.25
    }
}

/// `min × 2^failures`, capped at `max`, times a jitter factor in [1, 1.25) (capped at max).
pub(crate) fn backoff(min: Duration, max: Duration, failures: u32, jitter: &mut Jitter) -> Duration {
    let base = min.saturating_mul(1u32.checked_shl(failures.min(30)).unwrap_or(u32::MAX)).min(max);
    base.mul_f64(jitter.factor()).min(max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut j = Jitter::new();
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let b0 = backoff(min, max, 0, &mut j);
        assert!(b0 >= min && b0 < min.mul_f64(1.25), "{b0:?}");
        let b3 = backoff(min, max, 3, &mut j);
        assert!(b3 >= Duration::from_millis(800) && b3 < Duration::from_millis(1000), "{b3:?}");
        assert_eq!(backoff(min, max, 10, &mut j), max);
        assert_eq!(backoff(min, max, 100, &mut j), max);
    }
}
