//! Scanning the upper layer: every synced entry with its signature, and the
//! union's whiteouts.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cs_protocol::{EntryKind, Escaped, RelPath};
use cs_safe_fs::Stat;
use cs_union::Whiteout;

use crate::sig::Sig;
use crate::{EngineError, PathFilter};

/// The upper layer as seen at the start of a round.
#[derive(Debug, Default)]
pub struct UpperScan {
    pub entries: BTreeMap<RelPath, Sig>,
    /// Whiteouts on synced paths, sorted by path.
    pub whiteouts: Vec<Whiteout>,
    /// Entries that cannot be synced (sockets, fifos, devices, undecodable
    /// whiteout markers), each naming its path. They are reported, never
    /// silently dropped.
    pub problems: Vec<String>,
    /// Entries the `.csignore` rules keep out of the round, sorted; a
    /// directory counts once (the scan does not enter it).
    pub ignored: Vec<RelPath>,
}

pub fn scan_upper(upper: &Path, filter: &PathFilter) -> Result<UpperScan, EngineError> {
    let mut scan = UpperScan::default();
    walk(upper, None, filter, &mut scan)?;
    scan.ignored.sort();
    let ws = cs_union::list_whiteouts(upper)?;
    scan.problems.extend(ws.problems);
    scan.whiteouts = ws.whiteouts.into_iter().filter(|w| filter.is_synced(&w.path, w.is_dir)).collect();
    Ok(scan)
}

fn walk(root: &Path, dir: Option<&RelPath>, filter: &PathFilter, scan: &mut UpperScan) -> Result<(), EngineError> {
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
        if !filter.is_synced(&path, is_dir) {
            if !filter.is_excluded(&path, is_dir) && !filter.is_local_only(&path, is_dir) {
                scan.ignored.push(path);
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
            subdirs.push(path.clone());
        }
        scan.entries.insert(path, sig);
    }
    for d in subdirs {
        walk(root, Some(&d), filter, scan)?;
    }
    Ok(())
}
