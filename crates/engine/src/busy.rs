//! Files that keep changing ("busy" files), for both packers (C's step 3,
//! P's step 4): a file goes into a stream only whole. One that changed since
//! the round looked at it is *deferred* (not sent, not recorded as synced, so
//! the next round tries again); one that changes while it is being read is
//! *withdrawn* in-band (the receiver discards it) and deferred too. A file
//! deferred `snapshot_after` rounds in a row is sent as a *snapshot*: a
//! private copy taken in one go (a reflink where the filesystem can, else a
//! copy of the bytes it had when stat'ed, up to `snapshot_max_bytes`), so
//! that a log written for hours still reaches the other side regularly.
//! Nothing here ever fails a round because a file is busy.

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};

use cs_protocol::{EntryKind, RelPath};
use cs_safe_fs::{SafeRoot, Stat};
use cs_tarstream::{EntryHeader, PackWriter, TarError};
use serde::Serialize;

use crate::progress::Progress;
use crate::sig::Sig;
use crate::EngineError;

/// Default of [`BusyPolicy::snapshot_after`].
pub const DEFAULT_SNAPSHOT_AFTER: u32 = 3;
/// Default of [`BusyPolicy::snapshot_max_bytes`]: 1 GiB.
pub const DEFAULT_SNAPSHOT_MAX_BYTES: u64 = 1 << 30;

/// How busy files are carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyPolicy {
    /// Consecutive rounds a file is deferred before the next round sends a
    /// snapshot of it instead (then the count starts again). 0: a file
    /// found busy is snapshotted at once.
    pub snapshot_after: u32,
    /// Largest file copied into a snapshot when the filesystem cannot
    /// reflink it (a reflink costs no copy and has no bound). A larger busy
    /// file stays deferred until it settles.
    pub snapshot_max_bytes: u64,
}

impl Default for BusyPolicy {
    fn default() -> Self {
        BusyPolicy { snapshot_after: DEFAULT_SNAPSHOT_AFTER, snapshot_max_bytes: DEFAULT_SNAPSHOT_MAX_BYTES }
    }
}

/// Why a file was not sent whole this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeferReason {
    /// Its signature moved between the round's scan (or P's journal) and
    /// the moment it was opened.
    ChangedSinceScan,
    /// It changed while its data was being streamed: withdrawn.
    ChangedWhileRead,
    /// A snapshot was due but the filesystem cannot reflink and the file is
    /// larger than [`BusyPolicy::snapshot_max_bytes`].
    TooLargeToSnapshot { size: u64, max: u64 },
    /// Reading it failed (withdrawn).
    ReadError(String),
}

impl std::fmt::Display for DeferReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeferReason::ChangedSinceScan | DeferReason::ChangedWhileRead => f.write_str("still changing"),
            DeferReason::TooLargeToSnapshot { size, max } => write!(
                f,
                "still changing; {size} bytes is above the snapshot limit of {max} bytes and the filesystem cannot reflink: sent once it settles"
            ),
            DeferReason::ReadError(e) => write!(f, "read error: {e}"),
        }
    }
}

/// What packing one regular file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packed {
    /// The whole file, exactly as it was at this signature.
    Whole(Sig),
    /// A snapshot. `sig` is the file's signature when the snapshot began;
    /// `exact` says the file did not change while it was taken (then the
    /// snapshot is the file at `sig`).
    Snapshot { sig: Sig, exact: bool, bytes: u64, reflinked: bool },
    /// Not in the stream (or withdrawn from it).
    Deferred(DeferReason),
}

/// Packs the regular file `p` (already opened as `f`) as `header` says
/// (path, and mode/mtime/size overwritten from the open file). `expected` is
/// the signature the round saw; `snapshot` asks for a snapshot instead of
/// the live file (see [`BusyTable::wants_snapshot`]), with the name of the
/// scratch file should the filesystem lack `O_TMPFILE`.
// Each argument is one fact of this file's packing; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_file<W: Write>(
    tar: &mut PackWriter<W>,
    root: &SafeRoot,
    p: &RelPath,
    mut f: std::fs::File,
    mut header: EntryHeader,
    expected: Option<Sig>,
    snapshot: Option<(&BusyPolicy, &str)>,
    progress: Option<&Progress>,
) -> Result<Packed, EngineError> {
    let before = fstat_sig(&f, root, p)?;
    header.kind = EntryKind::File;
    header.mode = before.mode;
    header.mtime = before.mtime;
    header.size = before.size;
    let mut cannot_snapshot = None;
    if let Some((policy, scratch_name)) = snapshot {
        match take_snapshot(root, p, &f, before, policy, scratch_name) {
            Ok(Snap::Taken { file, bytes, exact, reflinked }) => {
                return pack_snapshot(
                    tar,
                    header,
                    file,
                    bytes,
                    Packed::Snapshot { sig: before, exact, bytes, reflinked },
                    progress,
                );
            }
            Ok(Snap::Deferred(reason)) => return Ok(Packed::Deferred(reason)),
            // Too large to copy, or no room for a copy: the live file may
            // still happen to be whole this round.
            Ok(Snap::TooLarge(reason)) => cannot_snapshot = Some(reason),
            Err(e) => cannot_snapshot = Some(DeferReason::ReadError(format!("taking a snapshot: {e}"))),
        }
        f.rewind().map_err(|e| EngineError::io("rewind", root.path().join(p.as_path()), e))?;
    }
    let defer = |reason| Ok(Packed::Deferred(cannot_snapshot.clone().unwrap_or(reason)));
    if expected.is_some_and(|e| e != before) {
        return defer(DeferReason::ChangedSinceScan);
    }
    let appended = match progress {
        Some(progress) => tar.append_file(&header, &mut progress.counting(&mut f)),
        None => tar.append_file(&header, &mut f),
    };
    let torn = match appended {
        Ok(()) => (fstat_sig(&f, root, p)? != before).then_some(DeferReason::ChangedWhileRead),
        Err(TarError::SourceChanged { .. }) => Some(DeferReason::ChangedWhileRead),
        Err(TarError::SourceRead { source, .. }) => Some(DeferReason::ReadError(source.to_string())),
        Err(e) => return Err(e.into()),
    };
    match torn {
        None => Ok(Packed::Whole(before)),
        Some(reason) => {
            tar.withdraw(&header)?;
            defer(reason)
        }
    }
}

enum Snap {
    Taken { file: std::fs::File, bytes: u64, exact: bool, reflinked: bool },
    TooLarge(DeferReason),
    Deferred(DeferReason),
}

/// A private copy of the open file `f` (whose signature was `before`):
/// a reflink where the filesystem can (the file at one instant: the kernel
/// locks both inodes), else a copy of its first `before.size` bytes (for an
/// appending writer, a consistent prefix whatever it adds meanwhile).
fn take_snapshot(
    root: &SafeRoot,
    p: &RelPath,
    f: &std::fs::File,
    before: Sig,
    policy: &BusyPolicy,
    scratch_name: &str,
) -> Result<Snap, EngineError> {
    let io_err = |op, e| EngineError::io(op, root.path().join(p.as_path()), e);
    let mut snap = root.private_file_beside(p, scratch_name)?;
    let reflinked = rustix::fs::ioctl_ficlone(&snap, f).is_ok();
    let bytes = if reflinked {
        snap.metadata().map_err(|e| io_err("stat the snapshot of", e))?.len()
    } else if before.size > policy.snapshot_max_bytes {
        return Ok(Snap::TooLarge(DeferReason::TooLargeToSnapshot {
            size: before.size,
            max: policy.snapshot_max_bytes,
        }));
    } else {
        let copied = std::io::copy(&mut f.take(before.size), &mut snap).map_err(|e| io_err("copy a snapshot of", e))?;
        if copied < before.size {
            return Ok(Snap::Deferred(DeferReason::ChangedWhileRead)); // it shrank
        }
        copied
    };
    let after = fstat_sig(f, root, p)?;
    // Only appends keep a copied prefix consistent: a file that shrank (was
    // rewritten) during the copy is not sent.
    if !reflinked && after.size < before.size {
        return Ok(Snap::Deferred(DeferReason::ChangedWhileRead));
    }
    snap.rewind().map_err(|e| io_err("rewind the snapshot of", e))?;
    Ok(Snap::Taken { file: snap, bytes, exact: after == before, reflinked })
}

fn pack_snapshot<W: Write>(
    tar: &mut PackWriter<W>,
    mut header: EntryHeader,
    mut snap: std::fs::File,
    bytes: u64,
    done: Packed,
    progress: Option<&Progress>,
) -> Result<Packed, EngineError> {
    header.size = bytes;
    let appended = match progress {
        Some(progress) => tar.append_file(&header, &mut progress.counting(&mut snap)),
        None => tar.append_file(&header, &mut snap),
    };
    match appended {
        Ok(()) => Ok(done),
        // Nobody else writes the private copy: only a failing disk gets here.
        Err(TarError::SourceChanged { .. }) => {
            tar.withdraw(&header)?;
            Ok(Packed::Deferred(DeferReason::ChangedWhileRead))
        }
        Err(TarError::SourceRead { source, .. }) => {
            tar.withdraw(&header)?;
            Ok(Packed::Deferred(DeferReason::ReadError(source.to_string())))
        }
        Err(e) => Err(e.into()),
    }
}

fn fstat_sig(f: &std::fs::File, root: &SafeRoot, p: &RelPath) -> Result<Sig, EngineError> {
    let md = f.metadata().map_err(|e| EngineError::io("stat", root.path().join(p.as_path()), e))?;
    Sig::of(&Stat::from_metadata(&md))
        .ok_or_else(|| EngineError::Entry { path: p.clone(), reason: "not a regular file".into() })
}

/// What this round did with a busy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyOutcome {
    Deferred(DeferReason),
    Snapshot { bytes: u64, reflinked: bool },
}

/// A busy file as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BusyFile {
    pub path: String,
    /// Why it is not sent whole ("still changing", ...).
    pub reason: String,
    /// Rounds in a row it was deferred since it was last sent.
    pub deferrals: u32,
    /// Snapshots of it sent since it became busy.
    pub snapshots: u32,
    /// The last round sent a snapshot of it.
    pub snapshot_sent: bool,
}

/// The busy files of one side (of one client, on P) across committed rounds.
#[derive(Debug, Default)]
pub struct BusyTable {
    files: BTreeMap<RelPath, BusyFile>,
}

impl BusyTable {
    /// Is a snapshot of `p` due this round?
    pub fn wants_snapshot(&self, p: &RelPath, policy: &BusyPolicy) -> bool {
        self.files.get(p).is_some_and(|b| b.deferrals >= policy.snapshot_after)
    }

    /// A committed round's outcomes. A file the round sent whole, or did not
    /// try to send (it settled), is no longer busy.
    pub fn commit(&mut self, round: &BTreeMap<RelPath, BusyOutcome>) {
        self.files.retain(|p, _| round.contains_key(p));
        for (p, outcome) in round {
            let b = self.files.entry(p.clone()).or_insert_with(|| BusyFile {
                path: p.to_string(),
                reason: DeferReason::ChangedWhileRead.to_string(),
                deferrals: 0,
                snapshots: 0,
                snapshot_sent: false,
            });
            match outcome {
                BusyOutcome::Deferred(reason) => {
                    b.deferrals += 1;
                    b.reason = reason.to_string();
                    b.snapshot_sent = false;
                }
                BusyOutcome::Snapshot { .. } => {
                    b.deferrals = 0;
                    b.snapshots += 1;
                    b.snapshot_sent = true;
                }
            }
        }
    }

    pub fn files(&self) -> Vec<BusyFile> {
        self.files.values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Records `packed` in a round's busy outcomes; returns the signature to
/// record as sent, if any.
pub(crate) fn note(outcomes: &mut BTreeMap<RelPath, BusyOutcome>, p: &RelPath, packed: &Packed) -> Option<Sig> {
    match packed {
        Packed::Whole(sig) => Some(*sig),
        Packed::Snapshot { sig, exact, bytes, reflinked } => {
            tracing::info!(path = %p, bytes, reflinked, exact, "busy file: sent a snapshot");
            outcomes.insert(p.clone(), BusyOutcome::Snapshot { bytes: *bytes, reflinked: *reflinked });
            Some(*sig)
        }
        Packed::Deferred(reason) => {
            tracing::debug!(path = %p, %reason, "busy file deferred");
            outcomes.insert(p.clone(), BusyOutcome::Deferred(reason.clone()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_snapshot_is_due_after_k_deferrals_and_the_count_starts_again() {
        let policy = BusyPolicy { snapshot_after: 2, snapshot_max_bytes: 10 };
        let mut t = BusyTable::default();
        let p = rp("log");
        let deferred = BTreeMap::from([(p.clone(), BusyOutcome::Deferred(DeferReason::ChangedWhileRead))]);
        assert!(!t.wants_snapshot(&p, &policy));
        t.commit(&deferred);
        assert!(!t.wants_snapshot(&p, &policy));
        t.commit(&deferred);
        assert!(t.wants_snapshot(&p, &policy));
        t.commit(&BTreeMap::from([(p.clone(), BusyOutcome::Snapshot { bytes: 5, reflinked: false })]));
        assert!(!t.wants_snapshot(&p, &policy));
        let f = &t.files()[0];
        assert_eq!((f.deferrals, f.snapshots, f.snapshot_sent, f.reason.as_str()), (0, 1, true, "still changing"));
        // A round that does not meet it (it settled and was sent whole, or
        // needed nothing) ends it.
        t.commit(&BTreeMap::new());
        assert!(t.is_empty());
    }
}
