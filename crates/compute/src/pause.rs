//! The operator's pause (`cs-actor pause`), persisted in the service's state
//! directory so that it survives a restart until `cs-actor resume`.
//!
//! One small JSON file, `STATE/pause.json` (`{"reason":…,"since_unix_ms":…}`),
//! readable by a person, replaced atomically (`cs_safe_fs::write_atomic`).
//! Its absence means "not paused"; a file that cannot be read or parsed is an
//! error naming it: the service does not guess whether the operator wanted
//! syncing to stop.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the state directory.
pub const PAUSE_FILE: &str = "pause.json";

/// An operator's pause: why (optional) and since when (this machine's clock,
/// only ever shown, never compared with another machine's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorPause {
    pub reason: Option<String>,
    pub since_unix_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PauseFileError {
    #[error("reading the pause file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the pause file {path} is corrupt ({reason}): fix it, or delete it to resume syncing")]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing the pause file {path}: {source}")]
    Write { path: PathBuf, source: cs_safe_fs::FsError },
    #[error("removing the pause file {path}: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
}

/// Where the pause of the service with this state directory is kept.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(PAUSE_FILE)
}

/// The persisted pause, or `None` when the file does not exist.
pub fn load(path: &Path) -> Result<Option<OperatorPause>, PauseFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PauseFileError::Read { path: path.to_path_buf(), source }),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| PauseFileError::Corrupt { path: path.to_path_buf(), reason: e.to_string() })
}

pub fn save(path: &Path, pause: &OperatorPause) -> Result<(), PauseFileError> {
    let mut bytes = serde_json::to_vec_pretty(pause).expect("a pause serialises");
    bytes.push(b'\n');
    cs_safe_fs::write_atomic(path, &bytes).map_err(|source| PauseFileError::Write { path: path.to_path_buf(), source })
}

/// Removes the file; a missing one is fine (not paused).
pub fn clear(path: &Path) -> Result<(), PauseFileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PauseFileError::Remove { path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_pause_loads_back_and_clear_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert_eq!(load(&path).unwrap(), None);
        let p = OperatorPause { reason: Some("disk swap".into()), since_unix_ms: 42 };
        save(&path, &p).unwrap();
        assert_eq!(load(&path).unwrap(), Some(p));
        clear(&path).unwrap();
        assert_eq!(load(&path).unwrap(), None);
        clear(&path).unwrap();
    }

    #[test]
    fn a_corrupt_pause_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        for junk in [&b"{not json"[..], b"", b"{\"reason\":null}", b"{\"since_unix_ms\":1,\"extra\":2}"] {
            std::fs::write(&path, junk).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()) && e.contains("corrupt"), "{e}");
        }
    }
}
