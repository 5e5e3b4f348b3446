//! Persisted state files: MessagePack, replaced atomically (temp file,
//! fsync, rename, fsync of the directory), versioned.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::EngineError;

/// Reads a state file; `Ok(None)` if it does not exist yet.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, EngineError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io("read state file", path, e)),
    };
    rmp_serde::from_slice(&bytes)
        .map(Some)
        .map_err(|e| EngineError::CorruptState { path: path.to_path_buf(), reason: e.to_string() })
}

pub fn save<T: Serialize>(path: &Path, value: &T) -> Result<(), EngineError> {
    let bytes = rmp_serde::to_vec_named(value)
        .map_err(|e| EngineError::CorruptState { path: path.to_path_buf(), reason: e.to_string() })?;
    cs_safe_fs::write_atomic(path, &bytes)?;
    Ok(())
}

pub fn ensure_dir(path: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(path).map_err(|e| EngineError::io("create state directory", path, e))
}

/// Removes a state file; a missing one is fine.
pub fn remove(path: &Path) -> Result<(), EngineError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io("remove state file", path, e)),
    }
}
