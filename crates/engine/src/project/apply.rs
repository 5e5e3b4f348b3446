//! Step 3 on P: the client's tar stream applied, each entry staged and
//! then renamed into place, or kept beside P's version as a conflict copy.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::Ordering;

use cs_protocol::{ClientId, EntryKind, RelPath};
use cs_safe_fs::FsError;
use cs_tarstream::EntryHeader;

use super::{lock, ProjectRound, ProjectSide, WriteReport};
use crate::lookahead::{self, LookAhead};
use crate::{temp_name, EngineError};

/// Step 3 under way: what the look-ahead loop needs of P.
struct WritesIn<'a> {
    side: &'a ProjectSide,
    r: &'a mut ProjectRound,
    /// Client trees moved beside P's file or symlink that displaced them.
    redirects: Vec<(RelPath, RelPath)>,
    report: WriteReport,
}

impl LookAhead for WritesIn<'_> {
    type Staged = Staged;

    fn entry_path(st: &Staged) -> &RelPath {
        &st.entry
    }

    fn apply_entry(&mut self, h: &EntryHeader, data: &mut dyn Read) -> Result<Option<Staged>, EngineError> {
        self.side.apply_entry(self.r, h, data, &mut self.redirects, &mut self.report)
    }

    fn finalize(&mut self, st: Staged) -> Result<(), EngineError> {
        self.side.finalize(self.r, st, &mut self.report)
    }

    fn discard(&mut self, st: Staged) -> Result<(), EngineError> {
        Ok(self.side.home.remove_file(&st.tmp)?)
    }

    // The client found that file changed while it packed it: the staged
    // copy (if any: the entry may have been refused) is its, and went.
    fn withdrawn(&mut self, path: &RelPath) {
        self.report.withdrawn.push(path.clone());
    }
}

impl ProjectSide {
    /// Step 3: applies the client's tar stream, each entry atomically, with
    /// the conflict rule, through the look-ahead loop (see [`lookahead`]).
    /// `stop_after` aborts after that many entries.
    pub fn apply_writes<R: Read>(
        &self,
        r: &mut ProjectRound,
        input: R,
        stop_after: Option<usize>,
    ) -> Result<WriteReport, EngineError> {
        let mut step = WritesIn { side: self, r, redirects: Vec::new(), report: WriteReport::default() };
        lookahead::apply_stream(&mut step, input, &self.cfg.limits, stop_after)?;
        Ok(step.report)
    }

    fn apply_entry(
        &self,
        r: &mut ProjectRound,
        h: &EntryHeader,
        data: &mut dyn Read,
        redirects: &mut Vec<(RelPath, RelPath)>,
        report: &mut WriteReport,
    ) -> Result<Option<Staged>, EngineError> {
        let h = &*crate::without_setid(h);
        let is_dir = h.kind == EntryKind::Dir;
        if !r.filter.is_synced(&h.path, is_dir) {
            let why = if r.filter.is_ignored(&h.path, is_dir) {
                "ignored by .csignore"
            } else {
                "excluded or local-only path"
            };
            report.refused.push((h.path.clone(), why.into()));
            return Ok(None);
        }
        r.held.insert(h.path.clone());
        let mut target = redirect(redirects, &h.path);
        // An ancestor that is not a directory on P (a file or a symlink P put
        // there after the client's cursor): the client's tree goes beside it.
        match self.lstat_sig(&target) {
            Ok(_) => {}
            Err(FsError::SymlinkInPath { .. } | FsError::NotADirectory { .. }) => {
                let Some(blocker) = self.first_non_dir_ancestor(&target)? else {
                    report.refused.push((h.path.clone(), "path changed while being resolved".into()));
                    return Ok(None);
                };
                let conflict_dir = self.conflict_dir(r, &blocker, 0o755, report)?;
                // P's entry wins: the client gets it in step 4.
                r.unseen.insert(blocker.clone());
                redirects.push((blocker, conflict_dir));
                target = redirect(redirects, &h.path);
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(parent) = target.parent() {
            if self.home.lstat(&parent)?.is_none() {
                // Only in a race (P removed the directory after step 2):
                // P's default mode goes back to the client in step 4.
                self.home.create_dir_all(&parent, 0o755)?;
                r.unseen.extend(parent.ancestors().chain(std::iter::once(parent.clone())));
            }
        }
        if is_dir {
            self.apply_dir(r, h, target, redirects, report)?;
            return Ok(None);
        }
        let tmp_name = temp_name(&r.client, self.tmp_seq.fetch_add(1, Ordering::Relaxed));
        let tmp = if h.kind == EntryKind::File {
            let (tmp, _, n) = self.home.write_temp(&target, &tmp_name, data, h.mode, h.mtime, false)?;
            report.bytes += n;
            tmp
        } else {
            self.home.symlink_temp(&target, &tmp_name, h.link_target.as_deref().unwrap_or_default(), h.mtime)?
        };
        Ok(Some(Staged { tmp, target, entry: h.path.clone() }))
    }

    /// Moves a staged file into place, or beside it as a conflict copy.
    fn finalize(&self, r: &mut ProjectRound, st: Staged, report: &mut WriteReport) -> Result<(), EngineError> {
        let Staged { tmp, target, .. } = st;
        // The client put a file where P has a directory: the client saw that
        // directory and replaced it (with overlayfs nothing else tells: its
        // one whiteout for the directory went when the file was made), so
        // what of it the client has seen goes as a deletion would; what
        // someone else changed since stays, and the conflict rule below
        // keeps both.
        if self.lstat_sig(&target)?.is_some_and(|a| a.kind == EntryKind::Dir) {
            self.delete_tree(r, &target, &mut cs_protocol::DeleteReport::default())?;
        }
        let _op = lock(&self.apply_lock);
        let actual = self.lstat_sig(&target)?;
        let replace = match actual.map(|a| a.kind) {
            None => true,
            Some(EntryKind::Dir) => {
                !self.changed_by_others(r, &target, actual) && self.home.remove_dir(&target).is_ok()
            }
            Some(_) => !self.changed_by_others(r, &target, actual),
        };
        if replace {
            self.home.rename(&tmp, &target)?;
            self.record(r, &target)?;
            report.applied += 1;
            return Ok(());
        }
        // From here on P's version wins, and goes to the client in step 4
        // (its mode or mtime may differ even where the content does not).
        r.unseen.insert(target.clone());
        if actual.map(|a| a.kind) != Some(EntryKind::Dir) && self.home.same_content(&tmp, &target)? {
            self.home.remove_file(&tmp)?;
            report.unchanged += 1;
            return Ok(());
        }
        // Conflict: the incoming version is kept beside P's, once (a
        // retried round finds its earlier copy and adds none).
        if let Some(existing) = self.find_conflict_copy(&target, &r.client, &tmp)? {
            self.home.remove_file(&tmp)?;
            tracing::debug!(path = %target, copy = %existing, "conflict copy already present");
            return Ok(());
        }
        let copy = self.conflict_name(&target, &r.client)?;
        self.home.rename_noreplace(&tmp, &copy)?;
        // P's file, made for everyone, this client included: its step 4
        // carries it (with overlayfs a name that appears only in the lower
        // may never show in the client's merged view).
        self.record_for_all(&copy)?;
        tracing::info!(path = %target, copy = %copy, client = %r.client, "conflict: project version kept");
        report.conflicts.push(copy);
        Ok(())
    }

    /// The directory that receives a client's tree which P's file or
    /// symlink at `p` displaced: this client's existing one for `p` if there
    /// is one (a retried round adds no second copy), else a new one.
    fn conflict_dir(
        &self,
        r: &ProjectRound,
        p: &RelPath,
        mode: u32,
        report: &mut WriteReport,
    ) -> Result<RelPath, EngineError> {
        let prefix = fit_name(p.file_name(), &crate::conflict_prefix("", &r.client));
        let existing = match self.home.read_dir(p.parent().as_ref()) {
            Ok(names) => names
                .into_iter()
                .filter(|(n, k)| *k == cs_safe_fs::FileKind::Dir && n.as_bytes().starts_with(prefix.as_bytes()))
                .filter_map(|(n, _)| p.with_file_name(&n).ok())
                .max(),
            Err(_) => None,
        };
        if let Some(dir) = existing {
            return Ok(dir);
        }
        let dir = self.conflict_name(p, &r.client)?;
        self.home.create_dir(&dir, mode)?;
        self.home.set_mode(&dir, mode)?;
        self.record(r, &dir)?;
        report.conflicts.push(dir.clone());
        Ok(dir)
    }

    fn apply_dir(
        &self,
        r: &mut ProjectRound,
        h: &EntryHeader,
        target: RelPath,
        redirects: &mut Vec<(RelPath, RelPath)>,
        report: &mut WriteReport,
    ) -> Result<(), EngineError> {
        let _op = lock(&self.apply_lock);
        let actual = self.lstat_sig(&target)?;
        let changed = self.changed_by_others(r, &target, actual);
        match actual.map(|a| a.kind) {
            None => self.home.create_dir(&target, h.mode)?,
            Some(EntryKind::Dir) if changed => {
                // P's mode wins; step 4 brings it to the client.
                r.unseen.insert(target);
                report.unchanged += 1;
                return Ok(());
            }
            Some(EntryKind::Dir) => {}
            Some(_) if !changed => {
                self.home.remove_file(&target)?;
                self.home.create_dir(&target, h.mode)?;
            }
            Some(_) => {
                // P put a file where the client has a directory: the client's
                // tree goes to a conflict directory beside it, P's file to
                // the client in step 4.
                let copy = self.conflict_dir(r, &target, h.mode, report)?;
                r.unseen.insert(target.clone());
                redirects.push((target, copy));
                return Ok(());
            }
        }
        self.home.set_mode(&target, h.mode)?;
        self.home.set_mtime(&target, h.mtime)?;
        self.record(r, &target)?;
        report.applied += 1;
        Ok(())
    }

    fn first_non_dir_ancestor(&self, p: &RelPath) -> Result<Option<RelPath>, EngineError> {
        let mut ancestors: Vec<RelPath> = p.ancestors().collect();
        ancestors.reverse();
        for a in ancestors {
            match self.home.lstat(&a)? {
                Some(st) if st.kind == cs_safe_fs::FileKind::Dir => continue,
                Some(_) => return Ok(Some(a)),
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// `NAME.conflict-<client>-<UTC time>` beside `p`, not yet taken.
    fn conflict_name(&self, p: &RelPath, client: &ClientId) -> Result<RelPath, EngineError> {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
            ))
            .unwrap_or_else(|_| "unknown-time".into());
        for n in 0..1000u32 {
            let suffix = if n == 0 { String::new() } else { format!("-{n}") };
            let tail = format!("{}{stamp}{suffix}", crate::conflict_prefix("", client));
            let name = fit_name(p.file_name(), &tail);
            let candidate =
                p.with_file_name(&name).map_err(|e| EngineError::Entry { path: p.clone(), reason: e.to_string() })?;
            if self.home.lstat(&candidate)?.is_none() {
                return Ok(candidate);
            }
        }
        Err(EngineError::Entry { path: p.clone(), reason: "no free conflict-copy name".into() })
    }

    /// An earlier conflict copy of `p` by this client with the same content as `tmp`.
    fn find_conflict_copy(
        &self,
        p: &RelPath,
        client: &ClientId,
        tmp: &RelPath,
    ) -> Result<Option<RelPath>, EngineError> {
        let prefix = fit_name(p.file_name(), &crate::conflict_prefix("", client));
        let names = match self.home.read_dir(p.parent().as_ref()) {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for (name, kind) in names {
            if !name.as_bytes().starts_with(prefix.as_bytes()) || kind == cs_safe_fs::FileKind::Dir {
                continue;
            }
            let Ok(candidate) = p.with_file_name(&name) else { continue };
            if self.home.same_content(&candidate, tmp)? {
                return Ok(Some(candidate));
            }
        }
        Ok(None)
    }
}

/// A file written to its temporary name, waiting for the rest of the
/// stream to prove it whole.
struct Staged {
    tmp: RelPath,
    target: RelPath,
    /// The entry's path in the stream (`target` may be a conflict directory's).
    entry: RelPath,
}

fn redirect(redirects: &[(RelPath, RelPath)], p: &RelPath) -> RelPath {
    for (from, to) in redirects.iter().rev() {
        if p.starts_with(from) {
            let rest = &p.as_bytes()[from.as_bytes().len()..];
            if let Ok(q) = RelPath::new([to.as_bytes(), rest].concat()) {
                return q;
            }
        }
    }
    p.clone()
}

/// `name` + `tail`, shortening `name` (not inside a UTF-8 character, for
/// names that are UTF-8) to stay within the 255-byte component limit.
fn fit_name(name: &OsStr, tail: &str) -> OsString {
    let name = name.as_bytes();
    let room = cs_protocol::MAX_COMPONENT_LEN.saturating_sub(tail.len());
    let mut end = name.len().min(room);
    while end > 0 && end < name.len() && name[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    OsString::from_vec([&name[..end], tail.as_bytes()].concat())
}
