//! Step 4 on P: what changed since the client's cursor, packed for it.

use std::io::Write;
use std::sync::atomic::Ordering;

use cs_protocol::{Cursor, EntryKind, RelPath};
use cs_tarstream::{EntryHeader, PackStats, PackWriter};

use super::{lock, ProjectRound, ProjectSide};
use crate::busy::{self, Packed};
use crate::{temp_name, EngineError};

impl ProjectSide {
    /// Step 4: packs what changed on P since the client's cursor among the
    /// paths the client holds (plus those it has not applied yet), never
    /// echoing the client's own writes. Returns the cursor to commit.
    pub fn pack_changes<W: Write>(&self, r: &mut ProjectRound, w: W) -> Result<(W, PackStats, Cursor), EngineError> {
        // Every version a client may receive must be on record durably first:
        // a client that dies after applying it counts it as synced, so a
        // journal that forgot it (P died too) could not tell a later change
        // back to an older state from no change at all.
        self.persist_journal()?;
        let cursor = lock(&self.journal).journal.cursor();
        r.new_cursor = Some(cursor);
        let mut tar = PackWriter::new(w, self.cfg.zstd_level)?;
        let held: Vec<RelPath> = r.held.iter().cloned().collect();
        for p in held {
            let send = r.unseen.contains(&p)
                || match (r.base, lock(&self.journal).journal.get(&p).cloned()) {
                    (_, None) => false,
                    (_, Some(e)) if e.sig.is_none() => false,
                    // Never echo the client's own write: it holds exactly
                    // that, or has changed it and sends it in step 3.
                    (_, Some(e)) if e.author.as_ref() == Some(&r.client) => false,
                    (None, Some(_)) => true,
                    (Some(b), Some(e)) => e.seq > b,
                };
            if !send {
                continue;
            }
            let st = match self.home.lstat(&p) {
                Ok(Some(st)) => st,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(path = %p, error = %e, "not sent");
                    continue;
                }
            };
            let Some(kind) = crate::sig::entry_kind(st.kind) else { continue };
            // Ignored (or local-only, excluded): the client keeps its own.
            if !r.filter.is_synced(&p, kind == EntryKind::Dir) {
                continue;
            }
            let mut header =
                EntryHeader { path: p.clone(), kind, mode: st.mode, mtime: st.mtime, size: 0, link_target: None };
            match kind {
                EntryKind::Dir => tar.append_dir(&header)?,
                EntryKind::Symlink => {
                    header.link_target = Some(self.home.read_link(&p)?);
                    tar.append_symlink(&header)?;
                }
                EntryKind::File => {
                    let f = match self.home.open_file(&p) {
                        Ok(f) => f,
                        // Gone since the lstat (a log rotated): as above.
                        Err(e) if e.is_not_found() => continue,
                        Err(e) => return Err(e.into()),
                    };
                    // As on C (see `busy`): a file that changed since the
                    // journal saw it, or changes while it is read, is
                    // deferred; it stays unseen by this client, so a later
                    // round sends it.
                    let expected = lock(&self.journal).journal.get(&p).and_then(|e| e.sig);
                    let scratch = lock(&self.busy)
                        .get(&r.client)
                        .is_some_and(|t| t.wants_snapshot(&p, &self.cfg.busy))
                        .then(|| temp_name(&r.client, self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
                    let snapshot = scratch.as_deref().map(|name| (&self.cfg.busy, name));
                    let packed = busy::pack_file(&mut tar, &self.home, &p, f, header, expected, snapshot, None)?;
                    busy::note(&mut r.busy, &p, &packed);
                    match packed {
                        Packed::Whole(_) | Packed::Snapshot { exact: true, .. } => {}
                        // A snapshot of a file that changed meanwhile is
                        // not its current version: it stays unseen too.
                        Packed::Snapshot { exact: false, .. } | Packed::Deferred(_) => {
                            r.unseen.insert(p);
                            continue;
                        }
                    }
                }
            }
            r.sent.insert(p);
        }
        let (w, stats) = tar.finish()?;
        Ok((w, stats, cursor))
    }
}
