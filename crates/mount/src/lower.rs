//! The lower layer: an adopted mount, or one the supervisor mounts by running a command.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use cs_proc::{wait_timeout, OutputTail};
use rustix::process::{Pid, Signal};

use crate::util::{mounted, unmount_if_mounted};

/// How the lower layer (the project's home) gets mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowerSpec {
    /// A directory someone else mounted (it must be a mount point); never unmounted by us.
    Adopt(PathBuf),
    /// A shell command that mounts the lower at `mountpoint`, such as
    /// [`crate::sshfs_command`]'s. It is run as `sh -c 'exec CMD'` in its own process group.
    /// A command that stays in the foreground (`sshfs -f`) is the mount's process: its exit
    /// is the mount's death, and remounting stops it by pid. A command that exits with
    /// status 0 once mounted (a daemonising `sshfs`) is fine too; the mount is then watched
    /// through `/proc/self/mountinfo` and `stat` only.
    Command { cmd: String, mountpoint: PathBuf },
}

impl LowerSpec {
    pub fn mountpoint(&self) -> &Path {
        match self {
            LowerSpec::Adopt(p) => p,
            LowerSpec::Command { mountpoint, .. } => mountpoint,
        }
    }

    pub fn kind(&self) -> LowerKind {
        match self {
            LowerSpec::Adopt(_) => LowerKind::Adopt,
            LowerSpec::Command { .. } => LowerKind::Command,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LowerKind {
    Adopt,
    Command,
}

/// How much of the lower command's stderr is kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;

/// A lower mounted by running its command.
pub(crate) struct LowerProc {
    /// The command's process while it runs in the foreground.
    child: Option<Child>,
    stderr: OutputTail,
    mountpoint: PathBuf,
    /// Why the foreground process ended, once it did.
    exited: Option<String>,
}

impl LowerProc {
    /// Runs `cmd` and waits until `mountpoint` (canonical) is mounted. A stale mount there (a
    /// previous process killed) is detached first.
    pub(crate) fn start(cmd: &str, mountpoint: &Path, timeout: Duration) -> Result<LowerProc, String> {
        unmount_if_mounted(mountpoint).map_err(|e| format!("detach the stale mount first: {e}"))?;
        let script = if cmd.trim_start().starts_with("exec ") { cmd.to_string() } else { format!("exec {cmd}") };
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run /bin/sh -c {script:?}: {e}"))?;
        let stderr = OutputTail::collect(child.stderr.take(), STDERR_TAIL);
        let mut p = LowerProc { child: Some(child), stderr, mountpoint: mountpoint.to_path_buf(), exited: None };
        let deadline = Instant::now() + timeout;
        loop {
            let is_mounted = mounted(mountpoint);
            match p.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => {
                    p.child = None;
                    if !status.success() {
                        p.stderr.finish_if_done();
                        let msg = format!("`{cmd}` exited with {status} before mounting: {}", p.stderr.text());
                        return Err(msg); // Drop detaches anything it mounted meanwhile
                    }
                    // Daemonised: the mount is up, or coming.
                }
                Some(Err(e)) => return Err(format!("waiting for `{cmd}`: {e}")),
                _ => {}
            }
            if is_mounted {
                tracing::debug!(mountpoint = %mountpoint.display(), pid = ?p.pid(), "lower mounted");
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{cmd}` did not mount {} within {timeout:?}: {}",
                    mountpoint.display(),
                    p.stderr.text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The foreground process's pid while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Some(why)` once the foreground process has exited (the mount is then dead or gone).
    /// An exit with status 0 while the mount is up is a daemonising command's (`mount --bind`,
    /// the replica's lower) that `start` saw mounted before it exited: the mount lives on,
    /// watched by `stat` only, as when `start` sees that exit itself.
    pub(crate) fn exited(&mut self) -> Option<String> {
        if self.exited.is_none() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                if status.success() && mounted(&self.mountpoint) {
                    tracing::debug!(mountpoint = %self.mountpoint.display(), "lower command exited after mounting");
                    return None;
                }
                self.stderr.finish_if_done();
                let tail = self.stderr.text();
                self.exited = Some(if tail.is_empty() {
                    format!("lower process exited with {status}")
                } else {
                    format!("lower process exited with {status}: {tail}")
                });
            }
        }
        self.exited.clone()
    }

    /// Unmounts (lazily if busy) and stops the process (SIGTERM, then SIGKILL, to its process
    /// group, by the pid we started).
    pub(crate) fn stop(&mut self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = unmount_if_mounted(&self.mountpoint) {
            errs.push(e);
        }
        if let Some(mut c) = self.child.take() {
            // sshfs exits by itself once unmounted.
            if wait_timeout(&mut c, Duration::from_secs(3)).is_none() {
                // The process group led by our own unreaped child (it was started with
                // process_group(0)), so the id cannot have been reused.
                let pgid = Pid::from_child(&c);
                let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
                if wait_timeout(&mut c, Duration::from_secs(2)).is_none() {
                    let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
                    let _ = c.wait();
                }
            }
        }
        self.stderr.finish_if_done();
        // A process that died first leaves a dead mount behind.
        if let Err(e) = unmount_if_mounted(&self.mountpoint) {
            errs.push(e);
        }
        if mounted(&self.mountpoint) {
            errs.push(format!("{} is still mounted", self.mountpoint.display()));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}

impl Drop for LowerProc {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the lower mount");
        }
    }
}
