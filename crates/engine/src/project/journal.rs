//! P's change journal: one sequence number per observed change to the home,
//! on P's own clock-free counter. Cursors are positions in it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
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
    /// lock: the walk is the slow part. `on_dir` is called with each
    /// directory before it is listed (to watch it first).
    pub fn scan(
        home: &Path,
        filter: &PathFilter,
        on_dir: &mut dyn FnMut(Option<&RelPath>),
    ) -> Result<HashMap<RelPath, Sig>, EngineError> {
        let mut seen = HashMap::new();
        on_dir(None);
        walk(home, None, filter, &mut seen, on_dir)?;
        Ok(seen)
    }

    /// Looks only where the home's events say something changed: lists each
    /// `dirty` directory (and stats it), walks each `appeared` directory
    /// whole. What it did not look at is assumed unchanged.
    pub fn scan_partial(
        home: &Path,
        filter: &PathFilter,
        dirty: &BTreeSet<Option<RelPath>>,
        appeared: &BTreeSet<RelPath>,
        on_dir: &mut dyn FnMut(Option<&RelPath>),
    ) -> Result<Partial, EngineError> {
        let mut part = Partial::default();
        let below_walked = |walked: &BTreeSet<RelPath>, p: &RelPath| walked.iter().any(|w| p.starts_with(w));
        for dir in appeared {
            if below_walked(&part.walked, dir) {
                continue; // an ancestor appeared too and is walked whole
            }
            // Covered whether or not it is still there: gone means deleted.
            part.walked.insert(dir.clone());
            let Some(sig) = stat_synced(home, dir, filter)? else { continue };
            part.seen.insert(dir.clone(), sig);
            if sig.kind == EntryKind::Dir {
                on_dir(Some(dir));
                walk(home, Some(dir), filter, &mut part.seen, on_dir)?;
            }
        }
        for dir in dirty {
            if dir.as_ref().is_some_and(|d| below_walked(&part.walked, d)) {
                continue;
            }
            part.listed.insert(dir.clone());
            if let Some(d) = dir {
                match stat_synced(home, d, filter)? {
                    Some(sig) if sig.kind == EntryKind::Dir => {
                        part.seen.insert(d.clone(), sig);
                    }
                    Some(sig) => {
                        // Now a file or a symlink: nothing below it.
                        part.seen.insert(d.clone(), sig);
                        continue;
                    }
                    None => continue,
                }
            }
            list(home, dir.as_ref(), filter, &mut part.seen)?;
        }
        Ok(part)
    }

    /// Records what a partial scan found, as [`Journal::merge`] does for a
    /// full one, for the paths it covered: those it saw, and those gone from
    /// where it looked (with everything the journal has below a directory
    /// that is gone or no longer a directory).
    pub fn merge_partial(&mut self, part: Partial, scan_began: u64) -> usize {
        let listed: HashSet<&[u8]> =
            part.listed.iter().map(|d| d.as_ref().map_or(&b""[..], |p| p.as_bytes())).collect();
        let walked: HashSet<&[u8]> = part.walked.iter().map(|p| p.as_bytes()).collect();
        let covered = |p: &RelPath| {
            let s = p.as_bytes();
            let parent = s.iter().rposition(|&b| b == b'/').map_or(&b""[..], |i| &s[..i]);
            listed.contains(s) || listed.contains(parent) || under(s, &walked)
        };
        let mut gone: Vec<RelPath> = Vec::new();
        let mut dead_dirs: HashSet<&[u8]> = HashSet::new();
        for (p, e) in &self.entries {
            let Some(old) = e.sig else { continue };
            if !covered(p) || e.seq > scan_began {
                continue;
            }
            let now = part.seen.get(p);
            if now.is_none() {
                gone.push(p.clone());
            }
            if old.kind == EntryKind::Dir && now.is_none_or(|s| s.kind != EntryKind::Dir) {
                dead_dirs.insert(p.as_bytes());
            }
        }
        if !dead_dirs.is_empty() {
            for (p, e) in &self.entries {
                if e.sig.is_some()
                    && e.seq <= scan_began
                    && !part.seen.contains_key(p)
                    && !covered(p)
                    && under(p.as_bytes(), &dead_dirs)
                {
                    gone.push(p.clone());
                }
            }
        }
        let mut changes = 0;
        for p in gone {
            self.record(&p, None, None);
            changes += 1;
        }
        for (p, sig) in part.seen {
            if self.unchanged_since_scan(&p, scan_began) && self.entries.get(&p).and_then(|e| e.sig) != Some(sig) {
                self.record(&p, Some(sig), None);
                changes += 1;
            }
        }
        changes
    }

    /// Records every difference between a scan and the journal as a change
    /// by no client. Returns how many changes were found.
    ///
    /// `scan_began` is the journal's `seq` when the scan started: an entry
    /// recorded since (a round's write or delete, made while the scan ran)
    /// is newer than what the scan saw and is left alone. Without this, a
    /// scan that saw a file just before another client's round replaced it
    /// put the old signature back, with no author: the round's own file then
    /// looked changed by someone else (a delete of it was kept, a write of it
    /// became a conflict copy).
    pub fn merge(&mut self, seen: HashMap<RelPath, Sig>, scan_began: u64) -> usize {
        let mut changes = 0;
        let gone: Vec<RelPath> = self
            .entries
            .iter()
            .filter(|(p, e)| e.sig.is_some() && e.seq <= scan_began && !seen.contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.record(&p, None, None);
            changes += 1;
        }
        for (p, sig) in seen {
            if self.unchanged_since_scan(&p, scan_began) && self.entries.get(&p).and_then(|e| e.sig) != Some(sig) {
                self.record(&p, Some(sig), None);
                changes += 1;
            }
        }
        changes
    }

    /// Not recorded since a scan that began at `scan_began`.
    fn unchanged_since_scan(&self, p: &RelPath, scan_began: u64) -> bool {
        self.entries.get(p).is_none_or(|e| e.seq <= scan_began)
    }

    /// `scan` then `merge`.
    pub fn refresh(&mut self, home: &Path, filter: &PathFilter) -> Result<usize, EngineError> {
        let began = self.seq;
        Ok(self.merge(Self::scan(home, filter, &mut |_| {})?, began))
    }
}

/// What a partial scan looked at and saw (see [`Journal::scan_partial`]).
#[derive(Debug, Default)]
pub struct Partial {
    /// Directories whose direct children (and themselves) are in `seen`,
    /// or gone.
    pub listed: BTreeSet<Option<RelPath>>,
    /// Directories whose whole tree is in `seen`, or gone.
    pub walked: BTreeSet<RelPath>,
    pub seen: HashMap<RelPath, Sig>,
}

/// Is `path` strictly below one of `dirs`?
fn under(path: &[u8], dirs: &HashSet<&[u8]>) -> bool {
    if dirs.is_empty() {
        return false;
    }
    path.iter().enumerate().any(|(i, &b)| b == b'/' && dirs.contains(&path[..i]))
}

/// The signature of `rel` if it exists and is synced.
fn stat_synced(home: &Path, rel: &RelPath, filter: &PathFilter) -> Result<Option<Sig>, EngineError> {
    let abs = home.join(rel.as_path());
    let md = match std::fs::symlink_metadata(&abs) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(None)
        }
        Err(e) => return Err(EngineError::io("stat", &abs, e)),
    };
    if !filter.is_synced(rel, md.is_dir()) {
        return Ok(None);
    }
    Ok(Sig::of(&Stat::from_metadata(&md)))
}

impl Default for Journal {
    fn default() -> Self {
        Journal::new()
    }
}

/// Every synced entry below `dir`, recursively; `on_dir` sees each
/// subdirectory before it is listed.
fn walk(
    root: &Path,
    dir: Option<&RelPath>,
    filter: &PathFilter,
    seen: &mut HashMap<RelPath, Sig>,
    on_dir: &mut dyn FnMut(Option<&RelPath>),
) -> Result<(), EngineError> {
    let mut subdirs = Vec::new();
    list_into(root, dir, filter, seen, &mut subdirs)?;
    for d in subdirs {
        on_dir(Some(&d));
        walk(root, Some(&d), filter, seen, on_dir)?;
    }
    Ok(())
}

/// The synced entries directly in `dir`.
fn list(
    root: &Path,
    dir: Option<&RelPath>,
    filter: &PathFilter,
    seen: &mut HashMap<RelPath, Sig>,
) -> Result<(), EngineError> {
    list_into(root, dir, filter, seen, &mut Vec::new())
}

fn list_into(
    root: &Path,
    dir: Option<&RelPath>,
    filter: &PathFilter,
    seen: &mut HashMap<RelPath, Sig>,
    subdirs: &mut Vec<RelPath>,
) -> Result<(), EngineError> {
    let abs = match dir {
        Some(d) => root.join(d.as_path()),
        None => root.to_path_buf(),
    };
    let rd = match std::fs::read_dir(&abs) {
        Ok(rd) => rd,
        Err(e)
            if dir.is_some()
                && matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) =>
        {
            return Ok(())
        }
        Err(e) => return Err(EngineError::io("list directory", &abs, e)),
    };
    for ent in rd {
        let ent = ent.map_err(|e| EngineError::io("list directory", &abs, e))?;
        let name = ent.file_name();
        let path = match dir {
            Some(d) => d.join(&name),
            None => RelPath::new(name.as_bytes()),
        };
        let Ok(path) = path else {
            tracing::warn!(path = %cs_protocol::Escaped(ent.path().as_os_str().as_bytes()), "unusable name, not synced");
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
            subdirs.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cs_protocol::Timestamp;

    fn file(size: u64) -> Sig {
        Sig {
            kind: EntryKind::File,
            mode: 0o644,
            size,
            mtime: Timestamp::new(1, 0),
            ctime: Timestamp::new(1, 0),
            ino: 7,
        }
    }

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// A scan that ran while another client's round wrote must not put back
    /// what it saw before the write (found by the soak: a client's own file
    /// then looked changed by someone else).
    #[test]
    fn a_scan_never_overrides_what_a_round_recorded_while_it_ran() {
        let client = ClientId::new("c1").unwrap();
        let mut j = Journal::new();
        j.record(&rel("f"), Some(file(1)), None);
        j.record(&rel("old"), Some(file(1)), None);
        let began = j.seq;
        // The scan sees f as it was, and old; meanwhile a round replaces f,
        // creates g and deletes old.
        let seen: HashMap<RelPath, Sig> = [(rel("f"), file(1)), (rel("old"), file(1))].into_iter().collect();
        j.record(&rel("f"), Some(file(2)), Some(&client));
        j.record(&rel("g"), Some(file(3)), Some(&client));
        j.record(&rel("old"), None, Some(&client));
        assert_eq!(j.merge(seen.clone(), began), 0);
        assert_eq!(j.get(&rel("f")).unwrap().sig, Some(file(2)));
        assert_eq!(j.get(&rel("f")).unwrap().author.as_ref(), Some(&client));
        assert!(j.is_live(&rel("g")));
        assert!(!j.is_live(&rel("old")));

        // The same through a partial scan of the home's top directory.
        let mut j2 = j.clone();
        let began = j2.seq;
        let part = Partial { listed: [None].into_iter().collect(), walked: BTreeSet::new(), seen };
        j2.record(&rel("f"), Some(file(4)), Some(&client));
        // This scan began after g and old's deletion were recorded: it is
        // newer than they are (g gone, old back); f it leaves alone.
        assert_eq!(j2.merge_partial(part, began), 2);
        assert_eq!(j2.get(&rel("f")).unwrap().sig, Some(file(4)));
        assert!(!j2.is_live(&rel("g")));
        assert!(j2.is_live(&rel("old")));
    }
}
