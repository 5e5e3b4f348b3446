//! Real processes for tests and benchmarks, all on 127.0.0.1:
//!
//! - [`Sshd`]: a throwaway OpenSSH server (own host key, own client key, own config, free port)
//!   that accepts exactly the generated key; `sftp` is `internal-sftp`, so sshfs works.
//! - [`DelayProxy`]: a TCP proxy that delivers every chunk `one_way_delay` after it arrived, in
//!   both directions, pipelined (a timestamped queue per direction, so the link has latency but
//!   no artificial throughput limit). It runs on its own thread and runtime, so synchronous
//!   tests can use it.
//! - [`sshfs_mount`]: an sshfs mount in the foreground (`-f`, our child, pid known).
//!
//! Everything started here is stopped by its guard's `Drop`, by pid, and mounts are unmounted.

mod error;
mod proc;
mod proxy;
mod sshd;
mod sshfs;

pub use error::TestbedError;
pub use proc::{lazy_unmount, wait_until};
pub use proxy::DelayProxy;
pub use sshd::{current_user, Sshd};
pub use sshfs::{sshfs_mount, SshfsMount};

/// Result of this crate.
pub type Result<T, E = TestbedError> = std::result::Result<T, E>;

/// Whether the external programs the real-process tests need are present (`/dev/fuse`,
/// `sshd`, `ssh-keygen`, `sshfs`, `unionfs-fuse`). Returns `false` with a note on stderr when
/// one is missing, so the test can skip; panics instead when the `CI` environment variable is
/// set (the same convention as `cs-union`'s real-mount tests).
pub fn real_tools_available() -> bool {
    let mut missing = Vec::new();
    if !std::path::Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse".to_string());
    }
    if !std::path::Path::new(sshd::SSHD).exists() {
        missing.push(sshd::SSHD.to_string());
    }
    for prog in ["ssh-keygen", "sshfs"] {
        if which(prog).is_none() {
            missing.push(prog.to_string());
        }
    }
    if which("unionfs-fuse").is_none() && which("unionfs").is_none() {
        missing.push("unionfs-fuse".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("real-process tests cannot run, missing: {missing:?}. CI is set, so this is a failure: run deploy/install-deps.sh.");
    }
    eprintln!("SKIPPED (missing {missing:?}; set CI=1 to make this fail)");
    false
}

/// The first executable `name` on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}
