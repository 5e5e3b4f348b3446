//! Fetch on P: the current content of named paths, for a compute side that
//! reads a file it does not have (issue 12). Read-only: no round, no
//! journal, no index; any client may fetch while its round runs.
//!
//! Confinement is step 4's: every path is resolved in the home's
//! [`SafeRoot`](cs_safe_fs::SafeRoot) (beneath the home, never through a
//! symlink), excluded and local-only paths are never served, and only
//! regular files and directories are. A path that cannot be served is
//! reported (missing or refused, with the reason), never fatal: only a
//! failure of the stream itself ends the fetch.

use std::collections::BTreeSet;
use std::io::Write;

use cs_protocol::{EntryKind, FetchReport, FileVersion, RelPath};
use cs_safe_fs::{FileKind, FsError};
use cs_tarstream::{EntryHeader, PackStats, PackWriter};

use super::ProjectSide;
use crate::busy::{self, Packed};
use crate::EngineError;

/// Most entries one fetch packs (a directory's files count): beyond it, the
/// rest is refused with the reason, so one request cannot stream a home.
pub const MAX_FETCH_ENTRIES: usize = 4096;

struct Fetch<'a, W: Write> {
    side: &'a ProjectSide,
    tar: PackWriter<W>,
    report: FetchReport,
    /// Paths packed or reported already (a file named and also in a named directory).
    seen: BTreeSet<RelPath>,
}

impl ProjectSide {
    /// Packs P's current version of each path into `w` (a zstd tar stream
    /// as step 4's): a regular file as itself, a directory as its own entry
    /// followed by its regular files (not deeper). Returns the stream's
    /// writer, what was sent, missing or refused, and the stream's counters.
    pub fn fetch_paths<W: Write>(&self, paths: &[RelPath], w: W) -> Result<(W, FetchReport, PackStats), EngineError> {
        let mut f = Fetch {
            side: self,
            tar: PackWriter::new(w, self.cfg.zstd_level)?,
            report: FetchReport::default(),
            seen: BTreeSet::new(),
        };
        for p in paths {
            if f.seen.insert(p.clone()) {
                f.one(p, true)?;
            }
        }
        let Fetch { tar, report, .. } = f;
        let (w, stats) = tar.finish()?;
        Ok((w, report, stats))
    }
}

impl<W: Write> Fetch<'_, W> {
    fn entries(&self) -> usize {
        self.report.sent.len()
    }

    fn refuse(&mut self, p: &RelPath, why: impl Into<String>) {
        self.report.refused.push((p.clone(), why.into()));
    }

    /// One path: `named` if the request named it (else a file of a named directory).
    fn one(&mut self, p: &RelPath, named: bool) -> Result<(), EngineError> {
        if self.entries() >= MAX_FETCH_ENTRIES {
            self.refuse(p, format!("over this fetch's bound of {MAX_FETCH_ENTRIES} entries: ask again"));
            return Ok(());
        }
        let home = &self.side.home;
        let st = match home.lstat(p) {
            Ok(Some(st)) => st,
            Ok(None) => {
                self.report.missing.push(p.clone());
                return Ok(());
            }
            Err(e) => {
                self.refuse(p, refusal(&e));
                return Ok(());
            }
        };
        let is_dir = st.kind == FileKind::Dir;
        let filter = &self.side.cfg.filter;
        if filter.is_excluded(p, is_dir) || filter.is_local_only(p, is_dir) {
            // A file of a named directory that is excluded (a temporary
            // of step 3, say) is skipped without naming it.
            if named {
                self.refuse(p, "excluded or local-only: never served");
            }
            return Ok(());
        }
        match st.kind {
            FileKind::Dir => {
                let header = EntryHeader {
                    path: p.clone(),
                    kind: EntryKind::Dir,
                    mode: st.mode,
                    mtime: st.mtime,
                    size: 0,
                    link_target: None,
                };
                self.tar.append_dir(&header)?;
                self.report.sent.push(FileVersion { path: p.clone(), kind: EntryKind::Dir, size: 0, mtime: st.mtime });
                if !named {
                    return Ok(());
                }
                let children = match home.read_dir(Some(p)) {
                    Ok(c) => c,
                    Err(e) => {
                        self.refuse(p, format!("its entries: {}", refusal(&e)));
                        return Ok(());
                    }
                };
                let mut files: Vec<RelPath> = children
                    .into_iter()
                    .filter(|(_, kind)| *kind == FileKind::File)
                    .filter_map(|(name, _)| p.join(&name).ok())
                    .collect();
                files.sort();
                for child in files {
                    if self.entries() >= MAX_FETCH_ENTRIES {
                        self.refuse(p, format!("more files than this fetch's bound of {MAX_FETCH_ENTRIES} entries: fetch the rest by name"));
                        break;
                    }
                    if self.seen.insert(child.clone()) {
                        self.one(&child, false)?;
                    }
                }
            }
            FileKind::File => {
                let f = match home.open_file(p) {
                    Ok(f) => f,
                    Err(e) if e.is_not_found() => {
                        self.report.missing.push(p.clone());
                        return Ok(());
                    }
                    Err(e) => {
                        self.refuse(p, refusal(&e));
                        return Ok(());
                    }
                };
                let header = EntryHeader::file(p.clone(), st.mode, st.mtime, st.size);
                // As step 4: a file that changes while it is read is
                // withdrawn from the stream (the receiver discards it).
                match busy::pack_file(&mut self.tar, home, p, f, header, None, None, None)? {
                    Packed::Whole(sig) => self.report.sent.push(FileVersion {
                        path: p.clone(),
                        kind: EntryKind::File,
                        size: sig.size,
                        mtime: sig.mtime,
                    }),
                    Packed::Deferred(reason) => self.refuse(p, reason.to_string()),
                    // No snapshot was asked for.
                    Packed::Snapshot { .. } => self.refuse(p, "still changing"),
                }
            }
            FileKind::Symlink => self.refuse(p, "a symlink: fetch serves regular files and directories"),
            _ => self.refuse(p, "not a regular file or a directory"),
        }
        Ok(())
    }
}

/// Why a path's resolution failed, for the client (without P's paths: the
/// broker logs the full error).
pub(super) fn refusal(e: &FsError) -> String {
    tracing::debug!(error = %e, "fetch: not served");
    match e {
        FsError::SymlinkInPath { .. } => "reached through a symlink: never followed".into(),
        FsError::NotADirectory { .. } => "a component of the path is not a directory".into(),
        FsError::NotAFile { .. } => "not a regular file".into(),
        other => match other.io_kind() {
            Some(kind) => format!("cannot read it on the project side: {kind}"),
            None => "cannot read it on the project side".into(),
        },
    }
}
