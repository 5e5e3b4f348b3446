//! Scanning the upper layer: every synced entry with its signature, and the
//! union's deletion markers (unionfs-fuse's meta directory, or overlayfs's
//! whiteouts and opaque directories, found in the same walk).

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cs_protocol::{EntryKind, Escaped, RelPath};
use cs_safe_fs::Stat;
use cs_union::overlay;
use cs_union::Whiteout;

use super::UnionKind;
use crate::sig::Sig;
use crate::{EngineError, PathFilter};

/// A deletion the union recorded in the upper layer: the lower's entry at
/// `path` (and below) no longer shows in the merged view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub path: RelPath,
    /// The deleted entry was a directory, as far as the marker tells
    /// (unionfs-fuse's directory markers, overlayfs's opaque directories).
    /// An overlayfs whiteout does not tell.
    pub is_dir: bool,
    /// overlayfs: the marker's inode in the upper layer (the whiteout's, or
    /// the opaque directory's). A marker made again at the same path is a
    /// new inode, so a new deletion; 0 for unionfs-fuse's.
    pub ino: u64,
    /// unionfs-fuse's marker, which the engine removes once P has the
    /// deletion; `None` for overlayfs's, which are never removed.
    pub unionfs: Option<Whiteout>,
}

/// The upper layer as seen at the start of a round.
#[derive(Debug, Default)]
pub struct UpperScan {
    pub entries: BTreeMap<RelPath, Sig>,
    /// Deletion markers on synced paths, sorted by path.
    pub whiteouts: Vec<Marker>,
    /// overlayfs only: directories moved through the merged view
    /// (`trusted.overlay.redirect`), whose content partly still lives in
    /// the lower layer under their old path. Sorted.
    pub redirects: Vec<RelPath>,
    /// Entries that cannot be synced (sockets, fifos, devices, undecodable
    /// whiteout markers), each naming its path. They are reported, never
    /// silently dropped.
    pub problems: Vec<String>,
    /// Entries the `.csignore` rules keep out of the round, sorted; a
    /// directory counts once (the scan does not enter it).
    pub ignored: Vec<RelPath>,
    /// Files named as the engine's temporaries (`.csa-tmp-*`, excluded from
    /// every round): what an apply that failed midway left (see
    /// `ComputeSide::remove_leftover_temps`).
    pub temps: Vec<RelPath>,
}

pub fn scan_upper(upper: &Path, filter: &PathFilter, union: &UnionKind) -> Result<UpperScan, EngineError> {
    let mut scan = UpperScan::default();
    let overlay = matches!(union, UnionKind::Overlay { .. });
    walk(upper, None, filter, overlay, &mut scan)?;
    scan.ignored.sort();
    if overlay {
        scan.whiteouts.sort_by(|a, b| a.path.cmp(&b.path));
        scan.redirects.sort();
    } else {
        let ws = cs_union::list_whiteouts(upper)?;
        scan.problems.extend(ws.problems);
        scan.whiteouts = ws
            .whiteouts
            .into_iter()
            .filter(|w| filter.is_synced(&w.path, w.is_dir))
            .map(|w| Marker { path: w.path.clone(), is_dir: w.is_dir, ino: 0, unionfs: Some(w) })
            .collect();
    }
    Ok(scan)
}

fn walk(
    root: &Path,
    dir: Option<&RelPath>,
    filter: &PathFilter,
    overlay: bool,
    scan: &mut UpperScan,
) -> Result<(), EngineError> {
    let abs = match dir {
        Some(d) => root.join(d.as_path()),
        None => root.to_path_buf(),
    };
    let rd = match std::fs::read_dir(&abs) {
        Ok(rd) => rd,
        // Removed while we walked: the next round sees the result.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_some() => return Ok(()),
        Err(e) => return Err(EngineError::io("list directory", &abs, e)),
    };
    let mut subdirs = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| EngineError::io("list directory", &abs, e))?;
        let name = ent.file_name();
        let path = match dir {
            Some(d) => d.join(&name),
            None => RelPath::new(name.as_bytes()),
        };
        let path = match path {
            Ok(p) => p,
            Err(e) => {
                scan.problems.push(format!("{}: {e}, not synced", Escaped(ent.path().as_os_str().as_bytes())));
                continue;
            }
        };
        if cs_union::is_meta_path(&path) {
            continue;
        }
        let md = match std::fs::symlink_metadata(ent.path()) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(EngineError::io("stat", ent.path(), e)),
        };
        let is_dir = md.is_dir();
        if overlay && overlay::is_whiteout(&md) {
            if filter.is_synced(&path, false) {
                scan.whiteouts.push(Marker { path, is_dir: false, ino: md.ino(), unionfs: None });
            }
            continue;
        }
        if !filter.is_synced(&path, is_dir) {
            if !filter.is_excluded(&path, is_dir) && !filter.is_local_only(&path, is_dir) {
                scan.ignored.push(path);
            } else if md.is_file() && name.as_bytes().starts_with(crate::TEMP_PREFIX.as_bytes()) {
                scan.temps.push(path);
            }
            continue;
        }
        let Some(sig) = Sig::of(&Stat::from_metadata(&md)) else {
            scan.problems.push(format!(
                "{}: not a file, directory or symlink, not synced",
                Escaped(ent.path().as_os_str().as_bytes())
            ));
            continue;
        };
        if sig.kind == EntryKind::Dir {
            if overlay {
                // An opaque directory hides the lower's: as unionfs-fuse's
                // directory marker beside a directory made again.
                if overlay::is_opaque_dir(&ent.path())? {
                    scan.whiteouts.push(Marker { path: path.clone(), is_dir: true, ino: md.ino(), unionfs: None });
                }
                if overlay::is_redirected_dir(&ent.path())? {
                    scan.redirects.push(path.clone());
                }
            }
            subdirs.push(path.clone());
        }
        scan.entries.insert(path, sig);
    }
    for d in subdirs {
        walk(root, Some(&d), filter, overlay, scan)?;
    }
    Ok(())
}
