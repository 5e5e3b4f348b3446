//! Steps 1 and 2 on P: the client's deletes (modification beats deletion),
//! and the deletes P has for the client.

use std::os::unix::ffi::OsStrExt;

use cs_protocol::{DeleteReport, EntryKind, PullPolicy, RelPath};

use super::{lock, ProjectRound, ProjectSide};
use crate::{EngineError, PathFilter};

impl ProjectSide {
    /// Step 1: the client deleted these paths. Each is deleted unless P
    /// changed it since the client's cursor (modification beats deletion).
    pub fn apply_deletes(&self, r: &mut ProjectRound, paths: &[RelPath]) -> Result<DeleteReport, EngineError> {
        let mut report = DeleteReport::default();
        let mut paths: Vec<&RelPath> = paths.iter().collect();
        paths.sort();
        paths.dedup();
        let mut done: Vec<&RelPath> = Vec::new();
        for p in paths {
            // A directory's deletion already covered everything below it.
            if done.last().is_some_and(|d| p.starts_with(d)) {
                continue;
            }
            done.push(p);
            if !r.filter.is_synced(p, false) {
                report.refused.push((p.clone(), "excluded, local-only or ignored path".into()));
                continue;
            }
            // Whatever happens on P, the client no longer holds it. What it
            // still holds below it stays (see `delete_tree`).
            r.held.remove(p);
            match self.home.lstat(p) {
                Err(e) => report.refused.push((p.clone(), e.to_string())),
                Ok(None) => report.deleted.push(p.clone()),
                Ok(Some(_)) => {
                    self.delete_tree(r, p, &mut report)?;
                }
            }
        }
        // What P kept, the client deleted: it shows there again only through
        // this round's step 4 (with overlayfs the client's marker stays), so
        // step 4 counts it as hidden from the client (sent whatever its size).
        r.hidden.extend(report.kept.iter().cloned());
        Ok(report)
    }

    /// Deletes `p` and what lies below it, keeping every entry changed by
    /// others, every entry the client still holds (and the directories
    /// that still contain something). Returns whether `p` is gone.
    ///
    /// A client that deletes a directory while it holds entries below it
    /// created the directory again over its whiteout (`rm -r d; mkdir d`):
    /// those entries are its new content, not part of the deletion, and a
    /// stale or repeated delete must not remove them (issue 8).
    pub(super) fn delete_tree(
        &self,
        r: &ProjectRound,
        p: &RelPath,
        report: &mut DeleteReport,
    ) -> Result<bool, EngineError> {
        let Some(actual) = self.lstat_sig(p)? else { return Ok(true) };
        // Ignored by the round's rules or by newer ones (the file changed
        // since the hello): P's copy stays.
        let is_dir = actual.kind == EntryKind::Dir;
        if !r.filter.is_synced(p, is_dir) || !self.journal_filter().is_synced(p, is_dir) {
            return Ok(false);
        }
        let held = r.held.contains(p);
        if held && actual.kind != EntryKind::Dir {
            return Ok(false);
        }
        if actual.kind == EntryKind::Dir {
            let mut all_gone = true;
            for (name, kind) in self.home.read_dir(Some(p))? {
                let child = p.join(&name).map_err(|e| EngineError::BadName {
                    dir: self.cfg.home.join(p.as_path()),
                    name: cs_protocol::Escaped(name.as_bytes()).to_string(),
                    source: e,
                })?;
                if !r.filter.is_synced(&child, kind == cs_safe_fs::FileKind::Dir) {
                    all_gone = false;
                    continue;
                }
                all_gone &= self.delete_tree(r, &child, report)?;
            }
            if !all_gone || held {
                return Ok(false);
            }
            let _op = lock(&self.apply_lock);
            if self.changed_by_others(r, p, self.lstat_sig(p)?) {
                report.kept.push(p.clone());
                return Ok(false);
            }
            match self.home.remove_dir(p) {
                Ok(()) => {}
                Err(e) if e.io_kind() == Some(std::io::ErrorKind::DirectoryNotEmpty) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        } else {
            let _op = lock(&self.apply_lock);
            if self.changed_by_others(r, p, self.lstat_sig(p)?) {
                report.kept.push(p.clone());
                return Ok(false);
            }
            self.home.remove_file(p)?;
        }
        lock(&self.journal).journal.record(p, None, Some(&r.client));
        report.deleted.push(p.clone());
        Ok(true)
    }

    /// Step 2: the paths the client holds that no longer exist on P; with
    /// [`PullPolicy::Changed`] also every other path deleted since the
    /// client's cursor by anyone but this client (the client may still see
    /// it through the lower's caches, and hides it). A client without a
    /// known cursor gets no such extra: the lower shows P's current state.
    /// Not those ignored by the round's rules or by the journal's (a path
    /// that became ignored leaves the journal as if deleted; it is not):
    /// the client keeps its copy.
    pub fn deletes_for_client(&self, r: &mut ProjectRound) -> Vec<RelPath> {
        let j = lock(&self.journal);
        // A tombstone has no kind: a path an ignore rule matches as a file or
        // as a directory stays.
        let synced = |f: &PathFilter, p: &RelPath| f.is_synced(p, false) && !f.is_ignored(p, true);
        let mut gone: Vec<RelPath> = r
            .held
            .iter()
            .filter(|p| !j.journal.is_live(p) && synced(&r.filter, p) && synced(&j.filter, p))
            .cloned()
            .collect();
        if let (PullPolicy::Changed { .. }, Some(base)) = (r.pull, r.base) {
            let others = j.journal.entries.iter().filter(|(p, e)| {
                e.sig.is_none()
                    && e.seq > base
                    && e.author.as_ref() != Some(&r.client)
                    && !r.held.contains(*p)
                    && synced(&r.filter, p)
                    && synced(&j.filter, p)
            });
            gone.extend(others.map(|(p, _)| p.clone()));
        }
        drop(j);
        for p in &gone {
            r.held.remove(p);
        }
        gone
    }
}
