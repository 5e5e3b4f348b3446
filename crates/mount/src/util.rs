//! Small mount helpers (the process ones are in cs-proc).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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
