//! Snapshot on P: the metadata of every path the project syncs, no content,
//! for a compute side that builds a replica's placeholder tree (issue 12).
//! Read-only: no round, no index; any client may ask while its round runs.
//!
//! What is in it is what the journal has: the filter of the journal's last
//! refresh ([`PathFilter::is_synced`]: not excluded, not local-only, not
//! ignored by the `.csignore` rules in force), entries that are regular
//! files, directories or symlinks. The walk goes through the home's
//! [`SafeRoot`](cs_safe_fs::SafeRoot) and never follows a symlink (a symlink
//! is an entry with its target). Entries come in pre-order, the names of a
//! directory in byte order, each given to a sink as it is found: memory is
//! the depth of the tree times its directories' listings, not the tree.
//!
//! The cursor is the journal's position taken, with that filter, before the
//! walk starts: the journal is first refreshed as a hello refreshes it (and
//! saved, so no restart reissues a sequence number below the cursor), and no
//! lock is held during the walk. Whatever changes after that position (a
//! round's write or delete, a change the next hello's refresh records) is
//! journalled after it, so a client whose cursor is this one gets it through
//! its rounds; a change the walk already saw may come once more (harmless:
//! the same version).

use cs_protocol::{ClientId, EntryKind, RelPath, SnapshotEntry, SnapshotReport};
use cs_safe_fs::FileKind;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::fetch::refusal;
use super::{lock, ProjectSide};
use crate::sig::entry_kind;
use crate::{EngineError, PathFilter};

/// Most refused paths a snapshot names (the rest are only counted).
pub const MAX_SNAPSHOT_REFUSED: usize = 100;

impl ProjectSide {
    /// Walks the home and gives each synced entry to `sink`, in pre-order.
    /// Returns the report: the number of entries given, the journal's cursor
    /// taken before the walk, the paths left out (unreadable, changed kind
    /// while read). A sink's error ends the walk and is returned; a path
    /// that cannot be read is reported, not an error (only the home itself
    /// being unreadable is).
    ///
    /// `client`: who asks. Until that client commits a round, the
    /// journal keeps the tombstones after this cursor (its first round from
    /// it names those deletions); in memory only, so a restart of P before
    /// that round releases them.
    pub fn snapshot(
        &self,
        client: Option<&ClientId>,
        sink: &mut dyn FnMut(SnapshotEntry) -> Result<(), EngineError>,
    ) -> Result<SnapshotReport, EngineError> {
        // As a hello does: the journal brought up to date with the home
        // (where inotify saw changes; the `.csignore` rules in force read
        // again), so that the cursor is as recent as it can be and a client
        // starting from it is not sent again what the walk shows it.
        self.refresh_journal()?;
        let (cursor, filter) = {
            let j = lock(&self.journal);
            (j.journal.cursor(), j.filter.clone())
        };
        // Saved before the cursor leaves P: a restart must never reissue a
        // sequence number at or below a cursor a client holds (its changes
        // would then look older than the client's cursor).
        self.persist_journal()?;
        if let Some(c) = client {
            let mut pins = lock(&self.snapshot_pins);
            let pin = pins.entry(c.clone()).or_insert(cursor);
            if pin.epoch != cursor.epoch || pin.seq > cursor.seq {
                *pin = cursor;
            }
        }
        let mut w = Walk { side: self, filter: &filter, sink, report: SnapshotReport { cursor, ..Default::default() } };
        w.run()?;
        Ok(w.report)
    }
}

struct Walk<'a> {
    side: &'a ProjectSide,
    filter: &'a PathFilter,
    sink: &'a mut dyn FnMut(SnapshotEntry) -> Result<(), EngineError>,
    report: SnapshotReport,
}

/// A directory being walked: its path and its names not yet visited.
struct Dir {
    path: Option<RelPath>,
    rest: std::vec::IntoIter<(OsString, FileKind)>,
}

impl Walk<'_> {
    fn refuse(&mut self, p: &RelPath, why: impl Into<String>) {
        self.report.refused_count += 1;
        if self.report.refused.len() < MAX_SNAPSHOT_REFUSED {
            self.report.refused.push((p.clone(), why.into()));
        }
    }

    fn run(&mut self) -> Result<(), EngineError> {
        let home = &self.side.home;
        let top = home.read_dir(None)?;
        let mut stack = vec![Dir { path: None, rest: top.into_iter() }];
        while let Some(dir) = stack.last_mut() {
            let Some((name, _)) = dir.rest.next() else {
                stack.pop();
                continue;
            };
            let path = match &dir.path {
                Some(d) => d.join(&name),
                None => RelPath::new(name.clone().into_vec()),
            };
            let Ok(path) = path else {
                // As the journal: a name no path can carry is not synced.
                tracing::warn!(name = %cs_protocol::Escaped(name.as_bytes()), "snapshot: unusable name, left out");
                self.report.refused_count += 1;
                continue;
            };
            if let Some(listing) = self.visit(&path)? {
                stack.push(Dir { path: Some(path), rest: listing.into_iter() });
            }
        }
        Ok(())
    }

    /// One path: gives its entry to the sink if it is synced; for a
    /// directory, returns its listing (to walk next: pre-order).
    fn visit(&mut self, p: &RelPath) -> Result<Option<Vec<(OsString, FileKind)>>, EngineError> {
        let home = &self.side.home;
        let st = match home.lstat(p) {
            Ok(Some(st)) => st,
            // Gone since its directory was listed: a change after the cursor.
            Ok(None) => return Ok(None),
            Err(e) => {
                self.refuse(p, refusal(&e));
                return Ok(None);
            }
        };
        // Devices, fifos, sockets: never synced.
        let Some(kind) = entry_kind(st.kind) else { return Ok(None) };
        if !self.filter.is_synced(p, kind == EntryKind::Dir) {
            return Ok(None);
        }
        let mut entry =
            SnapshotEntry { path: p.clone(), kind, mode: st.mode, size: st.size, mtime: st.mtime, target: None };
        let mut listing = None;
        match kind {
            EntryKind::Dir => {
                entry.size = 0;
                // Listed before its entry is given: a directory whose
                // contents cannot be read is left out whole, not shown empty.
                match home.read_dir(Some(p)) {
                    Ok(l) => listing = Some(l),
                    Err(e) if e.is_not_found() => return Ok(None),
                    Err(e) => {
                        self.refuse(p, format!("its entries: {}", refusal(&e)));
                        return Ok(None);
                    }
                }
            }
            EntryKind::Symlink => match home.read_link(p) {
                Ok(t) => {
                    let t = t.into_vec();
                    entry.size = t.len() as u64;
                    entry.target = Some(t);
                }
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => {
                    let why = match e.io_kind() {
                        Some(std::io::ErrorKind::InvalidInput) => "changed kind while read".to_string(),
                        _ => refusal(&e),
                    };
                    self.refuse(p, why);
                    return Ok(None);
                }
            },
            EntryKind::File => {}
        }
        (self.sink)(entry)?;
        self.report.entries += 1;
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;
    use crate::project::ClientState;
    use crate::ProjectConfig;

    fn side(home: &std::path::Path, state: &std::path::Path) -> ProjectSide {
        let cfg = ProjectConfig::new(home.to_owned(), state.to_owned());
        ProjectSide::open(cfg).unwrap()
    }

    fn collect(p: &ProjectSide) -> (Vec<SnapshotEntry>, SnapshotReport) {
        let mut got = Vec::new();
        let report = p
            .snapshot(None, &mut |e| {
                got.push(e);
                Ok(())
            })
            .unwrap();
        (got, report)
    }

    #[test]
    fn the_walk_is_pre_order_skips_what_is_not_synced_and_never_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (home, state) = (dir.path().join("home"), dir.path().join("state"));
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(home.join("b/c")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::fs::write(home.join("b/c/f"), b"four").unwrap();
        std::fs::write(home.join("a"), b"1").unwrap();
        std::fs::set_permissions(home.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();
        symlink(&outside, home.join("b/out")).unwrap();
        std::fs::create_dir_all(home.join(".cache/x")).unwrap(); // local-only by default
        std::fs::create_dir_all(home.join(".cs-actor")).unwrap(); // excluded by default
        std::fs::write(home.join(".cs-actor/j"), b"").unwrap();
        let p = side(&home, &state);
        let (got, report) = collect(&p);
        // The refresh before the walk journalled the home: its cursor is
        // the journal's, and nothing is journalled after it yet.
        assert_eq!(report.cursor, p.journal_cursor());
        assert!(report.cursor.seq >= 5, "{:?}", report.cursor);
        let paths: Vec<String> = got.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths, ["a", "b", "b/c", "b/c/f", "b/out"]);
        assert_eq!((got[0].kind, got[0].mode, got[0].size), (EntryKind::File, 0o750, 1));
        assert_eq!((got[1].kind, got[1].size), (EntryKind::Dir, 0));
        assert_eq!(got[4].kind, EntryKind::Symlink);
        assert_eq!(got[4].target.as_deref(), Some(outside.as_os_str().as_bytes()));
        assert_eq!(got[4].size, outside.as_os_str().len() as u64);
        assert_eq!(report.entries, 5);
        assert_eq!((report.refused.len(), report.refused_count), (0, 0));
        // Unchanged home: the same cursor; a change: a later one.
        assert_eq!(collect(&p).1.cursor, report.cursor);
        std::fs::write(home.join("a"), b"changed").unwrap();
        let later = collect(&p).1;
        assert!(later.cursor.seq > report.cursor.seq, "{later:?}");
    }

    /// A client's snapshot cursor keeps the tombstones after it until that
    /// client commits, whatever the other clients' cursors.
    #[test]
    fn a_snapshot_pins_the_tombstones_after_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (home, state) = (dir.path().join("home"), dir.path().join("state"));
        std::fs::create_dir_all(&home).unwrap();
        let p = side(&home, &state);
        let c1 = ClientId::new("c1").unwrap();
        let report = p.snapshot(Some(&c1), &mut |_| Ok(())).unwrap();
        // A deletion after the snapshot, and another client whose committed
        // cursor is past it.
        let gone = RelPath::new("gone").unwrap();
        lock(&p.journal).journal.record(&gone, None, None);
        let other = ClientState { last_cursor: Some(p.journal_cursor()), ..Default::default() };
        crate::state::save(&p.client_path(&ClientId::new("c2").unwrap()), &other).unwrap();
        lock(&p.clients).clear();
        assert_eq!(p.prune_tombstones().unwrap(), 0, "c1 has not seen the deletion");
        assert!(lock(&p.journal).journal.get(&gone).is_some());
        assert!(report.cursor.seq < p.journal_cursor().seq);
        // Once c1 committed (its pin released), the tombstone goes.
        lock(&p.snapshot_pins).remove(&c1);
        assert_eq!(p.prune_tombstones().unwrap(), 1);
    }
}
