//! C's record of what its upper layer held at the last committed round, and
//! the journal of step-4 writes of a round that has not committed yet.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cs_protocol::{Cursor, RelPath};
use serde::{Deserialize, Serialize};

use crate::sig::Sig;
use crate::{state, EngineError};

pub const MANIFEST_VERSION: u32 = 1;

/// Committed state of the compute side. Every entry is a *synced copy*:
/// equal on P as of the last commit, and present in the upper layer then,
/// except one deleted through the merged view while its round ran (between
/// the scan and step 3): it stays here until the next round, whose step 1
/// sends its deletion (the union may have written no whiteout for it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub cursor: Option<Cursor>,
    /// Committed rounds so far.
    pub rounds: u64,
    pub entries: BTreeMap<RelPath, Sig>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, EngineError> {
        match state::load::<Manifest>(path)? {
            None => Ok(Manifest { version: MANIFEST_VERSION, ..Default::default() }),
            Some(m) if m.version == MANIFEST_VERSION => Ok(m),
            Some(m) => Err(EngineError::CorruptState {
                path: path.to_path_buf(),
                reason: format!("manifest version {} is not {MANIFEST_VERSION}", m.version),
            }),
        }
    }
}

/// Step 4 writes (and, in a second file, step 3 sends) of the round in
/// flight, appended as they happen (one
/// length-prefixed MessagePack record each) so that a crash before step 5
/// does not make C mistake P's own versions for local edits next round.
/// Plain writes survive a killed process; a torn last record is ignored.
pub struct AppliedLog {
    path: PathBuf,
    file: Option<std::fs::File>,
}

#[derive(Serialize, Deserialize)]
struct AppliedRecord {
    path: RelPath,
    sig: Sig,
}

impl AppliedLog {
    pub fn new(path: PathBuf) -> Self {
        AppliedLog { path, file: None }
    }

    pub fn append(&mut self, path: &RelPath, sig: Sig) -> Result<(), EngineError> {
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| EngineError::io("open applied log", &self.path, e))?;
            self.file = Some(f);
        }
        let rec = rmp_serde::to_vec(&AppliedRecord { path: path.clone(), sig })
            .map_err(|source| EngineError::Encode { what: "applied record", source })?;
        let mut buf = (rec.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&rec);
        let f = self.file.as_mut().expect("opened above");
        f.write_all(&buf).map_err(|e| EngineError::io("append applied log", &self.path, e))
    }

    /// Records of an interrupted round, oldest first.
    pub fn read(path: &Path) -> Result<Vec<(RelPath, Sig)>, EngineError> {
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => f.read_to_end(&mut bytes).map_err(|e| EngineError::io("read applied log", path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(EngineError::io("open applied log", path, e)),
        };
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(rec) = rest.get(4..4 + len) else { break };
            match rmp_serde::from_slice::<AppliedRecord>(rec) {
                Ok(r) => out.push((r.path, r.sig)),
                Err(_) => break,
            }
            rest = &rest[4 + len..];
        }
        Ok(out)
    }

    pub fn remove(path: &Path) -> Result<(), EngineError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(EngineError::io("remove applied log", path, e)),
        }
    }
}
