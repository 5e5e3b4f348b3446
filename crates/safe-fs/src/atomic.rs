//! [`write_atomic`]: crash-safe replacement of a local state file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::FsError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces the file at `path` with `bytes`, atomically and durably: writes
/// a temp file (`.<name>.tmp-<pid>-<n>`, created exclusively) in the same
/// directory, fsyncs it, renames it over `path`, then fsyncs the directory.
/// A reader (or a crash) sees either the old or the new content, never a
/// mix. On error the temp file is removed and `path` is unchanged.
///
/// For the tool's own state files, not for paths beneath a synced root: the
/// path is resolved normally. The new file gets the permission bits of the
/// file it replaces, or `0o600` if there is none.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    const OP: &str = "write_atomic";
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let err = |source: io::Error| FsError::Io {
        op: OP,
        root: dir.clone(),
        path: name.to_string_lossy().into_owned(),
        source,
    };
    if name.is_empty() {
        return Err(err(io::Error::new(io::ErrorKind::InvalidInput, "no file name")));
    }
    let mode = match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => m.permissions().mode() & 0o7777,
        _ => 0o600,
    };

    let (tmp, mut file) = create_temp(&dir, &name).map_err(err)?;
    let result = (|| {
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    File::open(&dir).and_then(|d| d.sync_all()).map_err(err)
}

/// Creates a new, exclusively-created temp file next to `name` in `dir`.
fn create_temp(dir: &Path, name: &OsString) -> io::Result<(PathBuf, File)> {
    // Keep the temp name within NAME_MAX whatever the length of `name`.
    let stem: Vec<u8> = name.as_bytes().iter().copied().take(200).collect();
    let mut last_err = None;
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = b".".to_vec();
        tmp_name.extend_from_slice(&stem);
        tmp_name.extend_from_slice(format!(".tmp-{}-{n}", std::process::id()).as_bytes());
        let tmp = dir.join(OsString::from_vec(tmp_name));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC).bits() as i32)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}
