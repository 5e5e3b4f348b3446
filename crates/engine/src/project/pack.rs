//! Step 4 on P: what changed since the client's cursor, packed for it.

use std::io::Write;
use std::sync::atomic::Ordering;

use std::collections::BTreeMap;

use cs_protocol::{Cursor, EntryKind, PullPolicy, RelPath};
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
        let paths = self.step4_paths(r);
        for (p, why) in paths {
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
            match why {
                // Its child needs it in the upper layer, as a directory.
                Why::Parent if kind != EntryKind::Dir => continue,
                // Above the cap: the client reads it through the lower.
                Why::Pulled { max_file_size: Some(max) } if kind == EntryKind::File && st.size > max => continue,
                _ => {}
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

    /// What step 4 considers, in path order (a directory before what it
    /// holds): the held paths P changed since the cursor, never the
    /// client's own writes (no echo), plus those it has not applied yet;
    /// with [`PullPolicy::Changed`] and a known cursor, every other path
    /// changed since by anyone but this client, those it has not applied,
    /// and their directories it does not hold (the upper layer needs them
    /// to write into).
    fn step4_paths(&self, r: &ProjectRound) -> BTreeMap<RelPath, Why> {
        let j = lock(&self.journal);
        let mut out = BTreeMap::new();
        for p in &r.held {
            let send = r.unseen.contains(p)
                || match (r.base, j.journal.get(p)) {
                    (_, None) => false,
                    (_, Some(e)) if e.sig.is_none() => false,
                    // Never echo the client's own write: it holds exactly
                    // that, or has changed it and sends it in step 3.
                    (_, Some(e)) if e.author.as_ref() == Some(&r.client) => false,
                    (None, Some(_)) => true,
                    (Some(b), Some(e)) => e.seq > b,
                };
            if send {
                out.insert(p.clone(), Why::Held);
            }
        }
        // Without a cursor (a new client, or P's journal lost) the client
        // sees P's current state through the lower: a first round must not
        // copy the whole project.
        let (PullPolicy::Changed { max_file_size }, Some(base)) = (r.pull, r.base) else { return out };
        let mut pulled: Vec<(RelPath, Why)> = Vec::new();
        for (p, e) in &j.journal.entries {
            if e.sig.is_none() || e.author.as_ref() == Some(&r.client) || r.held.contains(p) {
                continue;
            }
            // The client hides what is there behind a marker of a deletion P
            // has (a whiteout in its grace, or overlayfs's, which stays):
            // it sees P's version only through the round, whatever its size
            // or age (P kept it, or made it after the deletion).
            if r.is_hidden(p) {
                pulled.push((p.clone(), Why::Pulled { max_file_size: None }));
            } else if e.seq > base {
                pulled.push((p.clone(), Why::Pulled { max_file_size }));
            }
        }
        drop(j);
        // Not applied by the client: sent again, whatever its size.
        let unapplied = r.unseen.iter().filter(|p| !r.held.contains(*p));
        pulled.extend(unapplied.map(|p| (p.clone(), Why::Pulled { max_file_size: None })));
        for (p, why) in pulled {
            for a in p.ancestors() {
                if r.held.contains(&a) || out.contains_key(&a) {
                    break;
                }
                out.insert(a, Why::Parent);
            }
            match out.get(&p) {
                Some(Why::Pulled { max_file_size: None }) => {}
                _ => {
                    out.insert(p, why);
                }
            }
        }
        out
    }
}

/// Why step 4 considers a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The client holds it, and P changed it (or the client has not
    /// applied P's version).
    Held,
    /// Pulled ([`PullPolicy::Changed`]): the client does not hold it, P
    /// changed it since the cursor. Files above `max_file_size` are not.
    Pulled { max_file_size: Option<u64> },
    /// A directory the client does not hold, above a pulled path.
    Parent,
}
