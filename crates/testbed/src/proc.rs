//! Child processes and mounts: output capture, waiting, stopping by pid, unmounting.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of a child's stderr is kept.
const TAIL: usize = 16 * 1024;

/// The last bytes a child wrote to a pipe, collected by a thread (so the pipe never fills).
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

    /// Waits for the writer to close the pipe (call once the child has exited).
    pub(crate) fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `child` until it exits or `t` passes; true if it exited (and was reaped).
pub(crate) fn wait_timeout(child: &mut Child, t: Duration) -> bool {
    let deadline = Instant::now() + t;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM to our child by pid, then SIGKILL if it has not exited within `grace`; reaps it.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own unreaped child: its pid cannot have been reused.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    if !wait_timeout(child, grace) {
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
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Detaches the mount at `path` (`umount2(MNT_DETACH)` as root, else `fusermount3 -uz`).
pub fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    unmount(path, true)
}

/// Unmounts `path`, lazily if asked.
pub(crate) fn unmount(path: &Path, lazy: bool) -> std::io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let flags = if lazy { libc::MNT_DETACH } else { 0 };
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        return Err(std::io::Error::last_os_error());
    }
    let mut last = String::new();
    for prog in ["fusermount3", "fusermount"] {
        match Command::new(prog).arg(if lazy { "-uz" } else { "-u" }).arg(path).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = format!("{prog}: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => last = format!("{prog}: {e}"),
        }
    }
    Err(std::io::Error::other(last))
}
