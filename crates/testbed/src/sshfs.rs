//! An sshfs mount of a directory served by a loopback sshd (directly or through a proxy).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, TestbedError};
use cs_proc::{stop_child, unmount, unmount_or_detach, wait_timeout, OutputTail};

/// How long sshfs gets to connect and mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of sshfs's stderr is kept.
const STDERR_TAIL: usize = 16 * 1024;

/// A running `sshfs -f` (our child). Dropping it unmounts and stops the process by pid.
pub struct SshfsMount {
    child: Option<Child>,
    stderr: OutputTail,
    mountpoint: PathBuf,
    args: Vec<String>,
}

impl std::fmt::Debug for SshfsMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshfsMount").field("mountpoint", &self.mountpoint).field("pid", &self.pid()).finish()
    }
}

/// Mounts `remote_dir` of `127.0.0.1:port` (an [`crate::Sshd`] or a proxy in front of one) at
/// `mountpoint` (must exist) as the current user with key `identity`:
///
/// `sshfs -f USER@127.0.0.1:REMOTE MOUNTPOINT -p PORT -o IdentityFile=… -o StrictHostKeyChecking=no
///  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes [-o EXTRA]…`
///
/// Each of `extra_opts` is passed as its own `-o` (e.g. `"reconnect"`, `"entry_timeout=10"`).
/// Returns once `/proc/self/mountinfo` lists the mount point.
pub fn sshfs_mount(
    remote_dir: &Path,
    port: u16,
    identity: &Path,
    mountpoint: &Path,
    extra_opts: &[String],
) -> Result<SshfsMount> {
    let mountpoint =
        std::fs::canonicalize(mountpoint).map_err(|e| TestbedError::io("resolve mount point", mountpoint, e))?;
    let mut args = vec![
        format!("{}@127.0.0.1:{}", crate::current_user(), remote_dir.display()),
        mountpoint.display().to_string(),
        "-f".into(),
        "-p".into(),
        port.to_string(),
    ];
    for o in [
        format!("IdentityFile={}", identity.display()),
        "IdentitiesOnly=yes".into(),
        "StrictHostKeyChecking=no".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "LogLevel=ERROR".into(),
        "BatchMode=yes".into(),
    ]
    .into_iter()
    .chain(extra_opts.iter().cloned())
    {
        args.push("-o".into());
        args.push(o);
    }
    let mut child = Command::new("sshfs")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| TestbedError::io("run sshfs at", &mountpoint, e))?;
    let stderr = OutputTail::collect(child.stderr.take(), STDERR_TAIL);
    let mut m = SshfsMount { child: Some(child), stderr, mountpoint, args };
    let deadline = Instant::now() + MOUNT_TIMEOUT;
    loop {
        if cs_union::is_mounted(&m.mountpoint).unwrap_or(false) {
            return Ok(m);
        }
        if let Some(c) = m.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                m.stderr.finish();
                return Err(TestbedError::process(
                    "sshfs mount",
                    format!("sshfs {:?} exited with {status} before mounting: {}", m.args, m.stderr.text()),
                ));
            }
        }
        if Instant::now() > deadline {
            return Err(TestbedError::process(
                "sshfs mount",
                format!("{} not mounted after {MOUNT_TIMEOUT:?}: {}", m.mountpoint.display(), m.stderr.text()),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl SshfsMount {
    /// The sshfs process id (`None` once stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The mount point (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The sshfs arguments used.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// What sshfs wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    /// Unmounts and stops the process; reports a mount that could not be removed.
    pub fn unmount(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let mut err = None;
        if cs_union::is_mounted(&self.mountpoint).unwrap_or(false) {
            if let Err(e) = unmount_or_detach(&self.mountpoint) {
                err = Some(e.to_string());
            }
        }
        if let Some(mut c) = self.child.take() {
            // sshfs exits by itself once unmounted.
            if wait_timeout(&mut c, Duration::from_secs(3)).is_none() {
                stop_child(&mut c, Duration::from_secs(2));
            }
        }
        self.stderr.finish();
        // A process killed before unmounting leaves a dead mount behind.
        if cs_union::is_mounted(&self.mountpoint).unwrap_or(false) && unmount(&self.mountpoint, true).is_err() {
            err = Some(format!("{} is still mounted", self.mountpoint.display()));
        }
        match err {
            None => Ok(()),
            Some(e) => Err(TestbedError::process("sshfs unmount", e)),
        }
    }
}

impl Drop for SshfsMount {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("cs-testbed: {e}");
        }
    }
}
