//! Real processes for tests and benchmarks, all on 127.0.0.1:
//!
//! - [`Sshd`]: a throwaway OpenSSH server (own host key, own client key, own config, free port)
//!   that accepts exactly the generated key; `sftp` is `internal-sftp`, so sshfs works.
//! - [`DelayProxy`]: a TCP proxy that delivers every chunk `one_way_delay` after it arrived, in
//!   both directions, pipelined (a timestamped queue per direction, so the link has latency but
//!   no artificial throughput limit). It runs on its own thread and runtime, so synchronous
//!   tests can use it.
//! - [`sshfs_mount`]: an sshfs mount in the foreground (`-f`, our child, pid known).
//! - [`system_account`]: an unprivileged account of the machine, created if missing.
//!
//! Everything started here is stopped by its guard's `Drop`, by pid, and mounts are unmounted.

mod account;
mod error;
mod proxy;
mod sshd;
mod sshfs;

pub use account::{lookup, system_account, Account};
pub use cs_proc::{lazy_unmount, wait_until};
pub use error::TestbedError;
pub use proxy::DelayProxy;
pub use sshd::{current_user, Sshd};
pub use sshfs::{sshfs_mount, SshfsMount};

/// Result of this crate.
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// Checks that the external programs the real-process tests need are present (`/dev/fuse`,
/// `sshd`, `ssh-keygen`, `sshfs`, `unionfs-fuse`) and panics naming the missing ones
/// otherwise: `deploy/install-deps.sh`, part of the README's test command, installs them all,
/// so a missing one is a broken setup, never a reason to pass silently. Returns `true` (it
/// keeps the `if !real_tools_available() { return }` form of the older call sites).
pub fn real_tools_available() -> bool {
    let mut missing = Vec::new();
    if !std::path::Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    if !std::path::Path::new(sshd::SSHD).exists() {
        missing.push(format!("{} (openssh-server)", sshd::SSHD));
    }
    missing.extend(missing_programs(&["ssh-keygen", "sshfs"]));
    if which("unionfs-fuse").is_none() && which("unionfs").is_none() {
        missing.push("unionfs-fuse".to_string());
    }
    fail_if_missing("the real-process tests", &missing);
    true
}

/// Panics naming every program of `progs` that is not on `PATH`, and what installs it:
/// for tests that drive a tool of their own (rsync, unison, git, make, pip …).
pub fn require_programs(what: &str, progs: &[&str]) {
    fail_if_missing(what, &missing_programs(progs));
}

fn missing_programs(progs: &[&str]) -> Vec<String> {
    progs.iter().filter(|p| which(p).is_none()).map(|p| p.to_string()).collect()
}

fn fail_if_missing(what: &str, missing: &[String]) {
    if !missing.is_empty() {
        panic!(
            "{what} cannot run: missing {}. Run `bash deploy/install-deps.sh` as root (the README's \
             test command does), which installs every program the tests use.",
            missing.join(", ")
        );
    }
}

/// The first executable `name` on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}
