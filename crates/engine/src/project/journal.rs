//! P's change journal: one sequence number per observed change to the home,
//! on P's own clock-free counter. Cursors are positions in it.

use std::collections::HashMap;
use std::path::Path;

use cs_protocol::{ClientId, Cursor, EntryKind, RelPath};
use cs_safe_fs::Stat;
use serde::{Deserialize, Serialize};

use crate::sig::Sig;
use crate::{EngineError, PathFilter};

pub const JOURNAL_VERSION: u32 = 1;

/// The latest known state of one path on P.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `None`: deleted (a tombstone, kept so that clients holding a copy
    /// learn of the deletion).
    pub sig: Option<Sig>,
    /// Sequence number of the latest change.
    pub seq: u64,
    /// The client whose round made that change, if any (echo suppression:
    /// a client is never sent back its own write).
    pub author: Option<ClientId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    /// Random per journal: cursors of another journal are unknown here.
    pub epoch: u64,
    pub seq: u64,
    pub entries: HashMap<RelPath, JournalEntry>,
}

impl Journal {
    pub fn new() -> Journal {
        Journal { version: JOURNAL_VERSION, epoch: crate::random_u64(), seq: 0, entries: HashMap::new() }
    }

    pub fn cursor(&self) -> Cursor {
        Cursor { epoch: self.epoch, seq: self.seq }
    }

    /// The cursor's position if it belongs to this journal.
    pub fn position(&self, c: Option<Cursor>) -> Option<u64> {
        c.filter(|c| c.epoch == self.epoch && c.seq <= self.seq).map(|c| c.seq)
    }

    pub fn get(&self, p: &RelPath) -> Option<&JournalEntry> {
        self.entries.get(p)
    }

    pub fn is_live(&self, p: &RelPath) -> bool {
        self.entries.get(p).is_some_and(|e| e.sig.is_some())
    }

    /// Records a change at a new sequence number. Returns the number.
    pub fn record(&mut self, p: &RelPath, sig: Option<Sig>, author: Option<&ClientId>) -> u64 {
        self.seq += 1;
        self.entries.insert(p.clone(), JournalEntry { sig, seq: self.seq, author: author.cloned() });
        self.seq
    }

    /// Counts `dir` and everything recorded below it as changed now, by no
    /// client: the directory was moved (away, back, or replaced), so its
    /// contents may differ from what a client saw even where every
    /// signature is the same.
    pub fn touch_tree(&mut self, dir: &RelPath) {
        let below: Vec<(RelPath, Option<Sig>)> = self
            .entries
            .iter()
            .filter(|(p, e)| e.sig.is_some() && p.starts_with(dir))
            .map(|(p, e)| (p.clone(), e.sig))
            .collect();
        for (p, sig) in below {
            self.record(&p, sig, None);
        }
    }

    /// Walks the home: every synced entry with its signature. Takes no
    /// lock: the walk is the slow part.
    pub fn scan(home: &Path, filter: &PathFilter) -> Result<HashMap<RelPath, Sig>, EngineError> {
        let mut seen = HashMap::new();
        walk(home, None, filter, &mut seen)?;
        Ok(seen)
    }

    /// Records every difference between a scan and the journal as a change
    /// by no client. Returns how many changes were found.
    pub fn merge(&mut self, seen: HashMap<RelPath, Sig>) -> usize {
        let mut changes = 0;
        let gone: Vec<RelPath> =
            self.entries.iter().filter(|(p, e)| e.sig.is_some() && !seen.contains_key(*p)).map(|(p, _)| p.clone()).collect();
        for p in gone {
            self.record(&p, None, None);
            changes += 1;
        }
        for (p, sig) in seen {
            if self.entries.get(&p).and_then(|e| e.sig) != Some(sig) {
                self.record(&p, Some(sig), None);
                changes += 1;
            }
        }
        changes
    }

    /// `scan` then `merge`.
    pub fn refresh(&mut self, home: &Path, filter: &PathFilter) -> Result<usize, EngineError> {
        Ok(self.merge(Self::scan(home, filter)?))
    }
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new()
    }
}

fn walk(root: &Path, dir: Option<&RelPath>, filter: &PathFilter, seen: &mut HashMap<RelPath, Sig>) -> Result<(), EngineError> {
    let abs = match dir {
        Some(d) => root.join(d.as_path()),
        None => root.to_path_buf(),
    };
    let rd = match std::fs::read_dir(&abs) {
        Ok(rd) => rd,
        Err(e) if dir.is_some() && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(())
        }
        Err(e) => return Err(EngineError::io("list directory", &abs, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| EngineError::io("list directory", &abs, e))?;
        let Some(name) = ent.file_name().to_str().map(str::to_owned) else {
            tracing::warn!(path = %ent.path().display(), "name is not UTF-8, not synced");
            continue;
        };
        let path = match dir {
            Some(d) => d.join(&name),
            None => RelPath::new(name),
        };
        let Ok(path) = path else {
            tracing::warn!(path = %ent.path().display(), "unusable name, not synced");
            continue;
        };
        // Never follows a symlink: it is an entry like any other.
        let md = match std::fs::symlink_metadata(ent.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(EngineError::io("stat", ent.path(), e)),
        };
        if !filter.is_synced(&path, md.is_dir()) {
            continue;
        }
        let Some(sig) = Sig::of(&Stat::from_metadata(&md)) else { continue };
        let is_dir = sig.kind == EntryKind::Dir;
        seen.insert(path.clone(), sig);
        if is_dir {
            walk(root, Some(&path), filter, seen)?;
        }
    }
    Ok(())
}
