//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cs_safe_fs::{FsError, RelPath, SafeRoot, Timestamp};

pub fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

pub fn ts(sec: i64, nsec: u32) -> Timestamp {
    Timestamp { sec, nsec }
}

/// Everything observable about a tree (except atimes): kind, mode, mtime,
/// content or link target of every entry, by relative path.
pub type Snapshot = BTreeMap<String, String>;

pub fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
    let m = std::fs::symlink_metadata(dir).unwrap();
    let rel = dir.strip_prefix(base).unwrap().to_string_lossy().into_owned();
    let head = format!("mode={:o} mtime={}.{} nlink={}", m.mode(), m.mtime(), m.mtime_nsec(), m.nlink());
    let ft = m.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(dir).unwrap();
        out.insert(rel, format!("link {head} -> {}", t.display()));
    } else if ft.is_dir() {
        out.insert(rel, format!("dir {head}"));
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            walk(base, &p, out);
        }
    } else {
        let data = std::fs::read(dir).unwrap();
        out.insert(rel, format!("file {head} {:?}", String::from_utf8_lossy(&data)));
    }
}

/// A base directory holding `home/` (the root) and `outside/` (must never
/// change), with `home/evil -> <abs outside>` and `home/evil2 -> ..`
/// (so `evil2/outside` is the outside directory too).
pub struct Hostile {
    pub base: tempfile::TempDir,
    pub root: SafeRoot,
}

impl Hostile {
    pub fn new() -> Hostile {
        let base = tempfile::tempdir().unwrap();
        let home = base.path().join("home");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(home.join("d/inner")).unwrap();
        std::fs::write(home.join("d/inner/f"), b"home file").unwrap();
        std::fs::write(home.join("file"), b"a regular file").unwrap();
        std::fs::create_dir_all(outside.join("sub/deeper")).unwrap();
        std::fs::write(outside.join("victim.txt"), b"precious").unwrap();
        std::fs::write(outside.join("sub/f"), b"also precious").unwrap();
        std::fs::write(outside.join("sub/deeper/g"), b"deep").unwrap();
        std::os::unix::fs::symlink(&outside, home.join("evil")).unwrap();
        std::os::unix::fs::symlink("..", home.join("evil2")).unwrap();
        std::os::unix::fs::symlink(outside.join("victim.txt"), home.join("link_to_victim")).unwrap();
        let root = SafeRoot::open(&home).unwrap();
        Hostile { base, root }
    }

    pub fn home(&self) -> std::path::PathBuf {
        self.base.path().join("home")
    }

    pub fn outside(&self) -> std::path::PathBuf {
        self.base.path().join("outside")
    }
}

#[track_caller]
pub fn assert_symlink_refused<T: std::fmt::Debug>(r: Result<T, FsError>) {
    match r {
        Err(FsError::SymlinkInPath { .. }) => {}
        other => panic!("expected SymlinkInPath, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_not_a_directory<T: std::fmt::Debug>(r: Result<T, FsError>) {
    match r {
        Err(FsError::NotADirectory { .. }) => {}
        other => panic!("expected NotADirectory, got {other:?}"),
    }
}
