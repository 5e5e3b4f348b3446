//! Read-ahead: when an open has to fetch a file, the unfilled small files near it come
//! in a second fetch sent at the same moment, so that a cold read of many small files
//! costs one round trip per batch instead of one per file (issue 12's W4 pass 1, and
//! `git status` or a compile reading a tree not read before: W5, W1).
//!
//! "Near" is the tree around the opened file, nearest first:
//!
//! 1. the files of its own directory, then those of its subdirectories, breadth first;
//! 2. then, up to [`CLIMB`] levels up, each ancestor's files and its other subtrees,
//!    breadth first, the siblings after the one just walked first (a reader going
//!    through `d00`, `d01`, … in name order reads on into the next one).
//!
//! Each level is read in name order. The walk stops at the caps of [`ReadAhead`] (files,
//! bytes, and a per-file size above which a file waits for its own open), or after
//! [`SCAN_PER_FILE`] directory entries per file allowed, so a huge directory or a tree of
//! only filled files costs a bounded scan. It runs on the read-ahead's own thread, after
//! the open's fetch is sent, so the open never waits for the scan either.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use cs_protocol::RelPath;

use super::{claim_placeholder, Item, ReadAhead, Shared};
use crate::want::MAX_LEN;

/// Ancestors of the opened file's directory whose other subtrees are read ahead.
pub(super) const CLIMB: usize = 2;
/// Directory entries looked at per file the read-ahead may claim.
pub(super) const SCAN_PER_FILE: usize = 8;

/// Where a read-ahead starts: the opened file, and the root of the tree it is in.
pub(super) struct Origin {
    tree_root: PathBuf,
    opened: RelPath,
}

impl Origin {
    /// The tree's root from the path of our descriptor of the opened file on our own
    /// mount, which ends with the tree-relative path (the event's own path is relative to
    /// whichever mount overlayfs opened it through). `None` if it does not.
    pub(super) fn of(wfd: &OwnedFd, opened: &RelPath) -> Option<Origin> {
        let link = fs::read_link(format!("/proc/self/fd/{}", wfd.as_raw_fd())).ok()?;
        let link = link.as_os_str().as_bytes();
        let rel = opened.as_bytes();
        if link.len() <= rel.len() || !link.ends_with(rel) || link[link.len() - rel.len() - 1] != b'/' {
            return None;
        }
        let tree_root = PathBuf::from(OsStr::from_bytes(&link[..link.len() - rel.len() - 1]));
        Some(Origin { tree_root, opened: opened.clone() })
    }
}

/// Claims (in flight, so that their opens wait for this fetch) the unfilled files near
/// the origin, within the caps.
pub(super) fn claim_nearby(sh: &Shared, origin: &Origin, caps: ReadAhead) -> Vec<Item> {
    let mut scan = Scan {
        sh,
        root: &origin.tree_root,
        opened: &origin.opened,
        caps,
        entries_left: caps.max_files.saturating_mul(SCAN_PER_FILE),
        bytes: 0,
        items: Vec::new(),
        buf: vec![0u8; MAX_LEN],
    };
    let mut dir = origin.opened.parent();
    scan.subtree(dir.clone(), None);
    for _ in 0..CLIMB {
        // At the tree's root there is nothing further up.
        let Some(below) = dir else { break };
        let up = below.parent();
        scan.subtree(up.clone(), Some(below.file_name().to_os_string()));
        dir = up;
    }
    scan.items
}

struct Scan<'a> {
    sh: &'a Shared,
    root: &'a Path,
    opened: &'a RelPath,
    caps: ReadAhead,
    entries_left: usize,
    bytes: u64,
    items: Vec<Item>,
    buf: Vec<u8>,
}

impl Scan<'_> {
    fn done(&self) -> bool {
        self.items.len() >= self.caps.max_files
            || self.bytes >= self.caps.max_total_bytes
            || self.entries_left == 0
            || self.sh.stop.load(Ordering::SeqCst)
    }

    /// `top`'s files, then its subdirectories' breadth first, leaving out `walked` (a
    /// subdirectory of `top` already read ahead) and starting after it. `None`: the
    /// tree's root.
    fn subtree(&mut self, top: Option<RelPath>, walked: Option<OsString>) {
        let mut queue = VecDeque::from([(top, walked)]);
        while let Some((dir, walked)) = queue.pop_front() {
            if self.done() {
                return;
            }
            let (files, mut subdirs) = self.list(dir.as_ref());
            for name in files {
                if self.done() {
                    return;
                }
                self.claim(dir.as_ref(), &name);
            }
            if let Some(w) = walked {
                subdirs.retain(|d| *d != w);
                // The ones after the walked subdirectory first, then those before it.
                let after = subdirs.partition_point(|d| *d < w);
                subdirs.rotate_left(after);
            }
            for name in subdirs {
                let Ok(sub) = join(dir.as_ref(), &name) else { continue };
                queue.push_back((Some(sub), None));
            }
        }
    }

    /// `dir`'s regular files and subdirectories, each in name order, as many entries as
    /// the scan has left.
    fn list(&mut self, dir: Option<&RelPath>) -> (Vec<OsString>, Vec<OsString>) {
        let (mut files, mut subdirs) = (Vec::new(), Vec::new());
        let path = match dir {
            Some(d) => self.root.join(d.as_path()),
            None => self.root.to_path_buf(),
        };
        let Ok(entries) = fs::read_dir(&path) else { return (files, subdirs) };
        for entry in entries.flatten() {
            if self.entries_left == 0 {
                break;
            }
            self.entries_left -= 1;
            // The directory entry's own type: a symlink is neither, and is not followed.
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_file() {
                files.push(entry.file_name());
            } else if ft.is_dir() {
                subdirs.push(entry.file_name());
            }
        }
        files.sort_unstable();
        subdirs.sort_unstable();
        (files, subdirs)
    }

    fn claim(&mut self, dir: Option<&RelPath>, name: &OsStr) {
        let Ok(expect) = join(dir, name) else { return };
        // The opened file has a fetch of its own (ended already, perhaps, and failed:
        // not tried again at once).
        if expect == *self.opened {
            return;
        }
        let path = self.root.join(expect.as_path());
        let (caps, bytes) = (self.caps, self.bytes);
        let fits = |len| len <= caps.max_file_bytes && bytes + len <= caps.max_total_bytes;
        if let Some((item, len)) = claim_placeholder(self.sh, path, &expect, fits, &mut self.buf) {
            self.bytes += len;
            self.items.push(item);
        }
    }
}

fn join(dir: Option<&RelPath>, name: &OsStr) -> Result<RelPath, cs_protocol::PathError> {
    match dir {
        Some(d) => d.join(name),
        None => RelPath::new(name.as_bytes()),
    }
}
