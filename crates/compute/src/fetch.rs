//! Fetch, the compute side: ask the broker for P's current content of named
//! paths and unpack its tar stream into a directory (issue 12: what a
//! replica will fill its files with on first open). See docs/protocol.md,
//! *Fetch*, and [`crate::connection::LinkHandle::fetch`].
//!
//! Unpacking is as careful as step 4's: the stream is read with
//! `cs-tarstream`'s bounded reader (regular files, directories and symlinks
//! only, every path validated), every entry is written through a
//! [`SafeRoot`] of the target (beneath it, never through a symlink), a file
//! becomes visible only whole (a temporary file renamed once the next header
//! has been read: an entry the broker withdraws is discarded), and only
//! paths the request named, or files directly in a named directory, are
//! accepted: a broker cannot write elsewhere.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cs_protocol::{EntryKind, FetchReport, RelPath};
use cs_safe_fs::{FsError, SafeRoot};
use cs_tarstream::{Event, Limits, TarError};
use serde::Serialize;

/// No setuid/setgid bit is applied from a stream (as step 4).
const SETID_BITS: u32 = 0o6000;

/// What a fetch did: P's answer, and what was written into the target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchResult {
    /// P's report: what it sent (with P's size and mtime), what it does not
    /// have, what it refused and why.
    pub sent: Vec<cs_protocol::FileVersion>,
    pub missing: Vec<RelPath>,
    pub refused: Vec<(RelPath, String)>,
    /// Entries written into the target directory (files and directories).
    pub written: Vec<RelPath>,
    /// Files P withdrew from the stream (they changed while it read them):
    /// not written; ask again.
    pub withdrawn: Vec<RelPath>,
    /// Compressed bytes of the stream.
    pub stream_bytes: u64,
    /// File bytes written.
    pub file_bytes: u64,
}

impl FetchResult {
    pub(crate) fn with_report(mut self, report: FetchReport) -> Self {
        self.sent = report.sent;
        self.missing = report.missing;
        self.refused = report.refused;
        self
    }
}

/// Why a fetch failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0} paths: at most {max} per fetch", max = cs_wire::MAX_FETCH_PATHS)]
    TooManyPaths(usize),
    #[error("the broker does not serve fetches (an older broker): {0}")]
    NotSupported(String),
    #[error("the broker refused the fetch ({code}): {message}")]
    Refused { code: cs_wire::ErrorCode, message: String },
    #[error("the request failed")]
    Request(#[source] crate::round::RoundError),
    #[error("unexpected answer to a fetch: {0}")]
    Unexpected(String),
    #[error("the target directory {0:?}")]
    Target(PathBuf, #[source] FsError),
    #[error("unpacking the fetch into {0:?}")]
    Unpack(PathBuf, #[source] TarError),
    #[error("the unpacking thread failed: {0}")]
    Thread(String),
}

/// A visitor error: the entry's path is refused, or writing it failed.
#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("not asked for: the request named neither it nor its directory")]
    NotAsked,
    #[error("a {0:?} entry: a fetch brings regular files and directories")]
    Kind(EntryKind),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Counter of temporary names in this process.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn tmp_name() -> String {
    // `.csa-tmp-*`: the excluded pattern, so no round ever syncs a leftover.
    format!(".csa-tmp-fetch-{}-{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A file written to its temporary name, renamed over its target once the
/// next event shows it was not withdrawn.
struct Staged {
    tmp: RelPath,
    target: RelPath,
    bytes: u64,
}

/// Unpacks the fetch stream `r` into `target` (which must exist), accepting
/// only the paths `asked` and files directly below those of them that are
/// directories. Returns what was written (fills `written`, `withdrawn`,
/// `stream_bytes`, `file_bytes`).
pub fn unpack_into(r: impl Read, target: &Path, asked: &[RelPath]) -> Result<FetchResult, FetchError> {
    let root = SafeRoot::open(target).map_err(|e| FetchError::Target(target.to_owned(), e))?;
    let asked: BTreeSet<&RelPath> = asked.iter().collect();
    let allowed = |p: &RelPath| asked.contains(p) || p.parent().is_some_and(|d| asked.contains(&d));
    let mut out = FetchResult::default();
    let mut staged: Option<Staged> = None;
    let commit = |s: Staged, out: &mut FetchResult| -> Result<(), FsError> {
        if let Err(e) = root.rename(&s.tmp, &s.target) {
            let _ = root.remove_file(&s.tmp);
            return Err(e);
        }
        out.written.push(s.target);
        out.file_bytes += s.bytes;
        Ok(())
    };
    let res = cs_tarstream::unpack_events(r, &Limits::default(), |ev| {
        match ev {
            Event::Withdraw(p) => {
                if let Some(s) = staged.take() {
                    let _ = root.remove_file(&s.tmp);
                }
                out.withdrawn.push(p.clone());
            }
            Event::Entry(h, data) => {
                if let Some(s) = staged.take() {
                    commit(s, &mut out)?;
                }
                if !allowed(&h.path) {
                    return Err(Box::new(EntryError::NotAsked));
                }
                let mode = h.mode & 0o7777 & !SETID_BITS;
                match h.kind {
                    EntryKind::Dir => {
                        root.create_dir_all(&h.path, 0o755).map_err(EntryError::from)?;
                        root.set_mode(&h.path, mode | 0o700).map_err(EntryError::from)?;
                        root.set_mtime(&h.path, h.mtime).map_err(EntryError::from)?;
                        out.written.push(h.path.clone());
                    }
                    EntryKind::File => {
                        if let Some(dir) = h.path.parent() {
                            root.create_dir_all(&dir, 0o755).map_err(EntryError::from)?;
                        }
                        let (tmp, _, bytes) = root
                            .write_temp(&h.path, &tmp_name(), data, mode, h.mtime, false)
                            .map_err(EntryError::from)?;
                        staged = Some(Staged { tmp, target: h.path.clone(), bytes });
                    }
                    other => return Err(Box::new(EntryError::Kind(other))),
                }
            }
        }
        Ok(())
    });
    let stats = match res {
        Ok(stats) => stats,
        Err(e) => {
            if let Some(s) = staged.take() {
                let _ = root.remove_file(&s.tmp);
            }
            return Err(FetchError::Unpack(target.to_owned(), e));
        }
    };
    if let Some(s) = staged.take() {
        commit(s, &mut out).map_err(|e| FetchError::Target(target.to_owned(), e))?;
    }
    out.stream_bytes = stats.compressed_bytes;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use cs_protocol::Timestamp;
    use cs_tarstream::{EntryHeader, PackWriter};

    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    const T: Timestamp = Timestamp { sec: 1_700_000_000, nsec: 123_456_789 };

    fn stream(build: impl FnOnce(&mut PackWriter<Vec<u8>>)) -> Vec<u8> {
        let mut w = PackWriter::new(Vec::new(), 3).unwrap();
        build(&mut w);
        w.finish().unwrap().0
    }

    fn file(w: &mut PackWriter<Vec<u8>>, p: &str, data: &[u8], mode: u32) -> EntryHeader {
        let h = EntryHeader::file(rel(p), mode, T, data.len() as u64);
        w.append_file(&h, &mut &data[..]).unwrap();
        h
    }

    fn temporaries(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_name().to_string_lossy().starts_with(".csa-tmp") {
                    found.push(e.path().display().to_string());
                }
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                }
            }
        }
        found
    }

    /// A file the sender withdraws (it changed while read) never appears;
    /// the others appear whole, with their mode (setuid/setgid stripped)
    /// and mtime; no temporary file is left.
    #[test]
    fn a_withdrawn_file_never_appears_and_setid_bits_are_stripped() {
        let s = stream(|w| {
            file(w, "a", b"first", 0o6755);
            let b = file(w, "d/b", b"torn", 0o644);
            w.withdraw(&b).unwrap();
            file(w, "d/c", b"third", 0o640);
        });
        let dir = tempfile::tempdir().unwrap();
        let r = unpack_into(&s[..], dir.path(), &[rel("a"), rel("d")]).unwrap();
        assert_eq!(r.written, [rel("a"), rel("d/c")]);
        assert_eq!(r.withdrawn, [rel("d/b")]);
        assert_eq!(r.file_bytes, 10);
        assert!(!dir.path().join("d/b").exists());
        assert_eq!(std::fs::read(dir.path().join("d/c")).unwrap(), b"third");
        let md = std::fs::metadata(dir.path().join("a")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o755);
        assert_eq!((md.mtime(), md.mtime_nsec()), (T.sec, T.nsec as i64));
        assert_eq!(std::fs::metadata(dir.path().join("d/c")).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    }

    /// A stream bringing a path that was not asked for (nor is a file
    /// directly in a directory asked for), or a symlink, fails the
    /// unpacking: nothing of that entry is written.
    #[test]
    fn entries_not_asked_for_and_symlinks_are_refused() {
        let deeper = stream(|w| {
            file(w, "d/ok", b"ok", 0o644);
            file(w, "d/e/deeper", b"not asked", 0o644);
        });
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_into(&deeper[..], dir.path(), &[rel("d")]).unwrap_err();
        assert!(matches!(e, FetchError::Unpack(..)), "{e:?}");
        let chain = cs_supervision::error_chain(&e);
        assert!(chain.contains("not asked for"), "{chain}");
        assert_eq!(std::fs::read(dir.path().join("d/ok")).unwrap(), b"ok");
        assert!(!dir.path().join("d/e").exists());
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());

        let link = stream(|w| {
            let mut h = EntryHeader::file(rel("l"), 0o777, T, 0);
            h.kind = EntryKind::Symlink;
            h.link_target = Some("/etc/passwd".into());
            w.append_symlink(&h).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_into(&link[..], dir.path(), &[rel("l")]).unwrap_err();
        assert!(matches!(e, FetchError::Unpack(..)), "{e:?}");
        assert!(std::fs::symlink_metadata(dir.path().join("l")).is_err());
    }

    /// A target whose subdirectory is a symlink out of it: nothing is
    /// written through it.
    #[test]
    fn a_symlink_in_the_target_is_not_followed() {
        let s = stream(|w| {
            file(w, "sub/f", b"data", 0o644);
        });
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        let e = unpack_into(&s[..], dir.path(), &[rel("sub")]).unwrap_err();
        assert!(matches!(e, FetchError::Unpack(..)), "{e:?}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
