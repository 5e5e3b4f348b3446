//! Small mount helpers (the process ones are in cs-proc).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::MountError;

/// True if `/proc/self/mountinfo` lists `p` (canonical) as a mount point.
pub(crate) fn mounted(p: &Path) -> bool {
    cs_union::is_mounted(p).unwrap_or(false)
}

/// Unmounts `path` if it is mounted: normally, else lazily.
pub(crate) fn unmount_if_mounted(path: &Path) -> Result<(), String> {
    if !mounted(path) {
        return Ok(());
    }
    cs_proc::unmount_or_detach(path).map_err(|e| e.to_string())
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
