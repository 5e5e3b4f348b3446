//! The bound on fetched content (`--cache-max`): which filled files to evict, least
//! recently used first. The eviction itself (a write lease, the content punched out,
//! `user.cs.want` again) is the fill service's (`fill.rs`), which must hold back an open
//! of the file while it happens.
//!
//! What counts: the blocks of the filled files of every complete tree (a placeholder is
//! sparse and counts nothing). Recency: the last use the fill service saw (a reader's close, `evict.rs`),
//! else the fill itself (the ctime: a fill's last step removes `user.cs.want`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cs_protocol::RelPath;

use crate::want::XATTR;

/// Evict down to this share of the bound, so that a pass is not needed after every fill.
const LOW_WATER_PERCENT: u64 = 90;

/// A filled file of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cached {
    pub path: PathBuf,
    /// Relative to its tree's root: what `user.cs.want` names.
    pub rel: RelPath,
    /// Bytes on disk (blocks).
    pub bytes: u64,
    pub ino: u64,
    /// When it was last used, as far as we know (seconds, nanoseconds).
    pub recency: (i64, i64),
}

/// Every filled file of every complete tree under `trees_root`, and how the walk went
/// (paths it could not read are skipped and counted: they are not ours to judge).
pub(crate) fn filled_files(trees_root: &Path) -> (Vec<Cached>, u64) {
    let mut out = Vec::new();
    let mut unreadable = 0;
    let Ok(rd) = fs::read_dir(trees_root) else { return (out, 1) };
    for e in rd.flatten() {
        if crate::tree::is_complete_tree_name(&e.file_name()) && e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), &e.path(), &mut out, &mut unreadable);
        }
    }
    // A new tree links the files it kept from the previous one: one inode, counted once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|c| seen.insert(c.ino));
    (out, unreadable)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<Cached>, unreadable: &mut u64) {
    let Ok(rd) = fs::read_dir(dir) else {
        *unreadable += 1;
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        // No symlink is followed: symlink_metadata, and directories by their own type.
        let Ok(md) = fs::symlink_metadata(&path) else {
            *unreadable += 1;
            continue;
        };
        if md.is_dir() {
            walk(root, &path, out, unreadable);
            continue;
        }
        if !md.is_file() || md.blocks() == 0 {
            continue;
        }
        // A placeholder still wanted holds nothing (getxattr by path: no open, no event).
        let mut buf = [0u8; 0];
        match rustix::fs::lgetxattr(&path, XATTR, &mut buf[..]) {
            Err(rustix::io::Errno::NODATA) => {}
            _ => continue,
        }
        let Some(rel) = path.strip_prefix(root).ok().and_then(|r| RelPath::new(r.as_os_str().as_encoded_bytes()).ok())
        else {
            *unreadable += 1;
            continue;
        };
        out.push(Cached { path, rel, bytes: md.blocks() * 512, ino: md.ino(), recency: (md.ctime(), md.ctime_nsec()) });
    }
}

/// What a pass should get down to once over `max`: 90 % of it, so that the next fills do
/// not each need a pass.
pub(crate) fn low_water(max: u64) -> u64 {
    max / 100 * LOW_WATER_PERCENT
}

/// The candidates for eviction, least recently used first (the larger first among equals),
/// when what is held is over `max`; nothing if within. The caller evicts in this order until
/// it is down to [`low_water`], passing by the files it may not evict (open).
pub(crate) fn eviction_order(mut files: Vec<Cached>, max: u64) -> Vec<Cached> {
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    if total <= max {
        return Vec::new();
    }
    files.sort_by(|a, b| a.recency.cmp(&b.recency).then(b.bytes.cmp(&a.bytes)));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, kib: u64, atime: i64) -> Cached {
        Cached { path: name.into(), rel: RelPath::new(name).unwrap(), bytes: kib << 10, ino: 0, recency: (atime, 0) }
    }

    /// What a pass evicts when every eviction but those of `open` succeeds.
    fn evicted(files: Vec<Cached>, max: u64, open: &[&str]) -> Vec<String> {
        let mut held: u64 = files.iter().map(|f| f.bytes).sum();
        let mut out = Vec::new();
        for c in eviction_order(files, max) {
            if held <= low_water(max) {
                break;
            }
            if !open.contains(&c.rel.to_string().as_str()) {
                held -= c.bytes;
                out.push(c.rel.to_string());
            }
        }
        out
    }

    #[test]
    fn within_the_bound_nothing_goes() {
        assert!(eviction_order(vec![f("a", 40, 1), f("b", 60, 2)], 100 << 10).is_empty());
    }

    #[test]
    fn over_the_bound_the_least_recently_used_go_until_under_the_low_water_mark() {
        let files = vec![f("new", 40, 30), f("old", 40, 10), f("mid", 40, 20), f("never", 8, 0)];
        // 128 KiB held, bound 100 KiB: down to 90 KiB, oldest first.
        assert_eq!(evicted(files, 100 << 10, &[]), ["never", "old"], "128 - 8 - 40 = 80 KiB <= 90 KiB");
    }

    #[test]
    fn an_open_file_is_passed_by_and_the_next_oldest_goes_instead() {
        let files = vec![f("new", 40, 30), f("old", 40, 10), f("mid", 40, 20), f("never", 8, 0)];
        assert_eq!(evicted(files, 100 << 10, &["old"]), ["never", "mid"]);
    }

    #[test]
    fn one_file_over_the_whole_bound_goes_when_it_is_the_oldest() {
        assert_eq!(evicted(vec![f("huge", 500, 1), f("small", 4, 2)], 100 << 10, &[]), ["huge"]);
    }
}
