//! A throwaway OpenSSH server on 127.0.0.1.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cs_proc::{children_of, is_zombie, stop_child, OutputTail};
use rustix::process::{Pid, Signal};

use crate::{Result, TestbedError};

pub(crate) const SSHD: &str = "/usr/sbin/sshd";
/// How long sshd gets to accept connections and send its banner.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may grab the one we found before sshd binds it).
const PORT_ATTEMPTS: usize = 5;
/// How much of a child's stderr is kept.
const STDERR_TAIL: usize = 16 * 1024;

/// A running `sshd -D -e` (our child) that accepts only the key it generated.
pub struct Sshd {
    child: Child,
    stderr: OutputTail,
    port: u16,
    identity: PathBuf,
    dir: PathBuf,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd").field("pid", &self.child.id()).field("port", &self.port).finish()
    }
}

impl Sshd {
    /// Generates a host key and a client key (ed25519) under `dir` (which must exist and whose
    /// path must not contain spaces), writes `sshd_config` there, starts sshd on a free port of
    /// 127.0.0.1 and returns once it sends its banner.
    pub fn start(dir: &Path) -> Result<Sshd> {
        let dir = std::fs::canonicalize(dir).map_err(|e| TestbedError::io("resolve sshd dir", dir, e))?;
        if dir.as_os_str().to_string_lossy().contains(char::is_whitespace) {
            return Err(TestbedError::process("start sshd", format!("{} contains whitespace", dir.display())));
        }
        let host_key = dir.join("ssh_host_ed25519_key");
        let identity = dir.join("id_ed25519");
        for key in [&host_key, &identity] {
            if !key.exists() {
                keygen(key)?;
            }
        }
        // sshd insists on its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").map_err(|e| TestbedError::io("create", "/run/sshd", e))?;

        let config = dir.join("sshd_config");
        let mut last_err = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let text = format!(
                "ListenAddress 127.0.0.1\n\
                 Port {port}\n\
                 HostKey {host}\n\
                 AuthorizedKeysFile {auth}\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile {pid}\n\
                 Subsystem sftp internal-sftp\n\
                 LogLevel ERROR\n",
                host = host_key.display(),
                auth = dir.join("id_ed25519.pub").display(),
                pid = dir.join("sshd.pid").display(),
            );
            std::fs::write(&config, text).map_err(|e| TestbedError::io("write", &config, e))?;
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| TestbedError::io("run", SSHD, e))?;
            let stderr = OutputTail::collect(child.stderr.take(), STDERR_TAIL);
            let mut sshd = Sshd { child, stderr, port, identity: identity.clone(), dir: dir.clone() };
            match sshd.wait_ready() {
                Ok(()) => return Ok(sshd),
                Err(e) => last_err = e, // Drop stops it
            }
        }
        Err(TestbedError::process("start sshd", last_err))
    }

    fn wait_ready(&mut self) -> std::result::Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = self.addr();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stderr.finish();
                return Err(format!("sshd exited with {status}: {}", self.stderr.text()));
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut banner = [0u8; 8];
                if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-" {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("sshd not ready after {READY_TIMEOUT:?}: {}", self.stderr.text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The private key sshd accepts.
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// The sshd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The directory with the keys and the config.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Options for `ssh`/`sshfs` to reach this server directly: `-p PORT` then the
    /// [`Sshd::ssh_options`], each as `-o K=V`.
    pub fn ssh_args(&self) -> Vec<String> {
        self.ssh_args_via(self.port)
    }

    /// Like [`Sshd::ssh_args`] but through another port of 127.0.0.1 (a proxy in front).
    pub fn ssh_args_via(&self, port: u16) -> Vec<String> {
        let mut v = vec!["-p".to_string(), port.to_string()];
        for o in self.ssh_options() {
            v.push("-o".into());
            v.push(o);
        }
        v
    }

    /// The ssh options (`K=V`, no port): the identity, no host-key checking and no known-hosts
    /// file (the host key is new each time), quiet, never prompt.
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            format!("IdentityFile={}", self.identity.display()),
            "IdentitiesOnly=yes".into(),
            "StrictHostKeyChecking=no".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "LogLevel=ERROR".into(),
            "BatchMode=yes".into(),
        ]
    }

    /// What sshd wrote to stderr (errors only: `LogLevel ERROR`).
    pub fn log(&self) -> String {
        self.stderr.text()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // sshd forks one process per connection, which would outlive the listener (and, orphaned,
        // never be reaped in a container whose init does not reap). Sessions whose client just
        // went away end by themselves: give them a moment, while the listener still reaps them;
        // then stop the rest (our grandchildren, found by their parent pid) before the listener.
        let listener = self.child.id();
        let live = || children_of(listener).into_iter().filter(|&p| !is_zombie(p)).collect::<Vec<_>>();
        crate::wait_until(Duration::from_secs(1), || live().is_empty());
        for pid in live() {
            // A child of our (running, so not yet reaping it) sshd: one of the sessions we
            // caused; its pid cannot have been reused while unreaped.
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
        }
        crate::wait_until(Duration::from_secs(2), || live().is_empty());
        stop_child(&mut self.child, Duration::from_secs(3));
        self.stderr.finish();
    }
}

fn keygen(path: &Path) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cs-testbed", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestbedError::io("run ssh-keygen for", path, e))?;
    if !out.status.success() {
        return Err(TestbedError::process(
            "ssh-keygen",
            format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(())
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| TestbedError::io("bind", "127.0.0.1:0", e))?;
    let port = l.local_addr().map_err(|e| TestbedError::io("local_addr", "127.0.0.1:0", e))?.port();
    Ok(port)
}

/// The name of the user this process runs as (the login sshd accepts the key for).
pub fn current_user() -> String {
    // SAFETY: getpwuid_r writes only into the buffers we pass; `pw.pw_name` points into `buf`,
    // which outlives its use.
    unsafe {
        let uid = libc::geteuid();
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut res: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut res) == 0 && !res.is_null() {
            return std::ffi::CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| "root".into())
}
