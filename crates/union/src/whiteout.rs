//! Whiteout markers in the upper layer: reading, writing, removing.
//!
//! On-disk form (see `docs/unionfs-notes.md`, re-checked by `tests/real_unionfs.rs`):
//! the marker for `a/b/c` is `UPPER/<meta>/a/b/c_HIDDEN~`, where `<meta>` is
//! `.unionfs-fuse` (Debian's unionfs-fuse 1.0) or `.unionfs` (upstream releases). `unlink`
//! writes an empty file (mode 0600), `rmdir` a directory (mode 0700); the parent "mirror"
//! directories `<meta>/a/b` are created with mode 0770. unionfs-fuse runs with umask 0, so
//! these modes are exact, and they are written exactly here too. An entry is hidden when a marker
//! of any type exists for it or for any of its ancestors.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use cs_protocol::RelPath;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::UnionError;

/// Appended to the hidden path's last component to name its marker.
pub const HIDE_SUFFIX: &str = "_HIDDEN~";

/// Mode of the mirror directories under the meta dir (`S_IRWXU | S_IRWXG`, as unionfs-fuse).
const META_DIR_MODE: u32 = 0o770;
/// Mode of a file marker (`S_IRUSR | S_IWUSR`, as unionfs-fuse).
const FILE_MARKER_MODE: u32 = 0o600;
/// Mode of a directory marker (`S_IRWXU`, as unionfs-fuse).
const DIR_MARKER_MODE: u32 = 0o700;

/// Which meta directory a union keeps its whiteouts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    /// Debian's unionfs-fuse 1.0: meta dir `.unionfs-fuse`.
    UnionfsFuse1,
    /// Upstream unionfs-fuse (2.x, 3.x): meta dir `.unionfs`.
    Unionfs2,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::UnionfsFuse1, Layout::Unionfs2];

    /// The meta directory's name, directly below the upper root.
    pub fn meta_dir(self) -> &'static str {
        match self {
            Layout::UnionfsFuse1 => ".unionfs-fuse",
            Layout::Unionfs2 => ".unionfs",
        }
    }

    /// The layout whose meta directory is called `name`.
    pub fn from_meta_dir(name: &str) -> Option<Layout> {
        Layout::ALL.into_iter().find(|l| l.meta_dir() == name)
    }

    /// Where the marker hiding `path` lives, relative to the upper root
    /// (built from the path's bytes: names need not be UTF-8).
    pub fn marker_path(self, path: &RelPath) -> PathBuf {
        let name = [path.as_bytes(), HIDE_SUFFIX.as_bytes()].concat();
        Path::new(self.meta_dir()).join(OsStr::from_bytes(&name))
    }
}

/// One marker found in the upper layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whiteout {
    /// The path hidden in the merged view (the lower layer's entry at this path and below).
    pub path: cs_protocol::RelPath,
    pub layout: Layout,
    /// The marker, relative to the upper root.
    pub marker: PathBuf,
    /// The marker is a directory: unionfs-fuse wrote it for `rmdir` of a lower directory.
    /// A file marker (written for `unlink`) may still hide a directory if one was created by
    /// other means.
    pub is_dir: bool,
}

/// Result of [`list_whiteouts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WhiteoutScan {
    /// Every marker, sorted by `path` (component-wise), then layout. A recursive delete
    /// leaves one marker per removed entry, so descendants of a hidden path appear too; see
    /// [`WhiteoutScan::roots`].
    pub whiteouts: Vec<Whiteout>,
    /// Entries of the meta trees that could not be decoded (names without the suffix,
    /// invalid paths, symlinks), each naming the entry's path. Sorted.
    pub problems: Vec<String>,
}

impl WhiteoutScan {
    /// The whiteouts not covered by a whiteout of a proper ancestor: together they hide the
    /// same lower entries as all of [`WhiteoutScan::whiteouts`].
    pub fn roots(&self) -> Vec<&Whiteout> {
        let mut out: Vec<&Whiteout> = Vec::new();
        let mut cover: Option<&RelPath> = None;
        for w in &self.whiteouts {
            if let Some(c) = cover {
                if w.path != *c && w.path.starts_with(c) {
                    continue;
                }
            }
            cover = Some(&w.path);
            out.push(w);
        }
        out
    }
}

/// True if `path`'s first component is a meta directory of any layout.
pub fn is_meta_path(path: &RelPath) -> bool {
    let first = path.components().next().unwrap_or_default();
    first.to_str().and_then(Layout::from_meta_dir).is_some()
}

/// Lists every whiteout marker in `upper`, both layouts. No meta dir: empty scan.
///
/// Undecodable entries land in [`WhiteoutScan::problems`]; I/O errors (an unreadable
/// meta directory, a missing `upper`) abort the scan, since a partial list would look
/// like "nothing deleted".
pub fn list_whiteouts(upper: &Path) -> Result<WhiteoutScan, UnionError> {
    fs::metadata(upper).map_err(|e| UnionError::io("list whiteouts: stat upper layer", upper, e))?;
    let mut scan = WhiteoutScan::default();
    for layout in Layout::ALL {
        let root = upper.join(layout.meta_dir());
        match fs::symlink_metadata(&root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(UnionError::io("list whiteouts: stat meta dir", root, e)),
            Ok(m) if !m.is_dir() => {
                scan.problems.push(format!(
                    "{}: meta dir is not a directory ({}); ignored",
                    root.display(),
                    describe(m.file_type())
                ));
                continue;
            }
            Ok(_) => {}
        }
        walk(layout, &root, Path::new(layout.meta_dir()), &mut Vec::new(), &mut scan)?;
    }
    scan.whiteouts.sort_by(|a, b| a.path.cmp(&b.path).then(a.layout.cmp(&b.layout)));
    scan.problems.sort();
    Ok(scan)
}

fn describe(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "file"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        "device"
    }
}

/// Walks one meta (sub)directory. `abs` is its absolute path, `rel` the same relative to
/// upper, `prefix` the merged-view components it mirrors.
fn walk(
    layout: Layout,
    abs: &Path,
    rel: &Path,
    prefix: &mut Vec<OsString>,
    scan: &mut WhiteoutScan,
) -> Result<(), UnionError> {
    let rd = fs::read_dir(abs).map_err(|e| UnionError::io("list whiteouts: read meta dir", abs, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| UnionError::io("list whiteouts: read meta dir", abs, e))?;
        let name = entry.file_name();
        let entry_rel = rel.join(&name);
        let ft = entry.file_type().map_err(|e| UnionError::io("list whiteouts: stat meta entry", entry.path(), e))?;
        let mut is_marker = false;
        if let Some(stem) = name.as_bytes().strip_suffix(HIDE_SUFFIX.as_bytes()) {
            is_marker = true;
            if stem.is_empty() {
                scan.problems.push(format!(
                    "{}: marker names no file (nothing before {HIDE_SUFFIX}); ignored",
                    entry_rel.display()
                ));
            } else {
                let mut p = Vec::new();
                for c in prefix.iter() {
                    p.extend_from_slice(c.as_bytes());
                    p.push(b'/');
                }
                p.extend_from_slice(stem);
                match RelPath::new(p) {
                    Ok(path) => {
                        scan.whiteouts.push(Whiteout { path, layout, marker: entry_rel.clone(), is_dir: ft.is_dir() })
                    }
                    Err(e) => scan.problems.push(format!("{}: invalid hidden path: {e}; ignored", entry_rel.display())),
                }
            }
        }
        if ft.is_dir() {
            // A mirror directory (or, for a real path ending in the suffix, both a directory
            // marker and a mirror directory: unionfs-fuse itself cannot tell them apart).
            prefix.push(name.clone());
            let r = walk(layout, &entry.path(), &entry_rel, prefix, scan);
            prefix.pop();
            r?;
        } else if !is_marker {
            let what = if ft.is_symlink() {
                "symlink inside the union metadata, not followed"
            } else {
                "not a whiteout marker (no _HIDDEN~ suffix)"
            };
            scan.problems.push(format!("{}: {what}; ignored", entry_rel.display()));
        }
    }
    Ok(())
}

/// True if a whiteout (any layout, any marker type) exists for `path` or any ancestor: the
/// lower layer's entry at `path` is hidden in the merged view. (The merged view may still
/// show an upper entry there, e.g. a directory re-created with `mkdir`.)
///
/// Same test as unionfs-fuse's `path_hidden`: `lstat` of each candidate marker.
pub fn is_hidden(upper: &Path, path: &RelPath) -> bool {
    Layout::ALL.into_iter().any(|layout| {
        std::iter::once(path.clone())
            .chain(path.ancestors())
            .any(|p| fs::symlink_metadata(upper.join(layout.marker_path(&p))).is_ok())
    })
}

/// Writes the marker `unlink` of a lower entry writes: an empty file, mode 0600, with mirror
/// directories (mode 0770) created as needed. An existing marker of any type is left alone.
pub fn create_whiteout(upper: &Path, layout: Layout, path: &RelPath) -> Result<(), UnionError> {
    create_marker(upper, layout, path, false)
}

/// Writes the marker `rmdir` of a lower directory writes: an empty directory, mode 0700, with
/// mirror directories (mode 0770) created as needed. An existing marker is left alone.
///
/// unionfs-fuse does not write markers for the children of a removed directory itself: a
/// recursive delete (`rm -r`) unlinks/rmdirs each entry, leaving one marker per entry. A
/// faithful emulation of `rm -r d` calls [`create_whiteout`] / [`create_dir_whiteout`] for
/// every lower entry below `d`, children first.
pub fn create_dir_whiteout(upper: &Path, layout: Layout, path: &RelPath) -> Result<(), UnionError> {
    create_marker(upper, layout, path, true)
}

/// Removes `w`'s marker (a missing marker is fine), then the mirror directories left empty
/// (the meta dir itself is kept). A directory marker that is not empty (it then also mirrors
/// a real directory whose name ends in `_HIDDEN~`) is an error.
pub fn remove_whiteout(upper: &Path, w: &Whiteout) -> Result<(), UnionError> {
    let expected = w.layout.marker_path(&w.path);
    if w.marker != expected {
        return Err(UnionError::MarkerMismatch { op: "remove whiteout", marker: w.marker.clone(), expected });
    }
    remove_marker(upper, w.layout, &w.path).map(|_| ())
}

/// Removes the marker for exactly `path` (not its ancestors) in every layout, like
/// unionfs-fuse does when a file is created over a whiteout. `Ok(true)` if one was removed.
pub fn remove_whiteout_at(upper: &Path, path: &RelPath) -> Result<bool, UnionError> {
    let mut removed = false;
    for layout in Layout::ALL {
        removed |= remove_marker(upper, layout, path)?;
    }
    Ok(removed)
}

/// The directories from upper down to the marker's parent, and the marker's file name.
fn marker_location(layout: Layout, path: &RelPath) -> (Vec<&OsStr>, OsString) {
    let mut dirs = vec![OsStr::new(layout.meta_dir())];
    let comps: Vec<&OsStr> = path.components().collect();
    let (last, parents) = comps.split_last().expect("a RelPath has at least one component");
    dirs.extend_from_slice(parents);
    (dirs, OsString::from_vec([last.as_bytes(), HIDE_SUFFIX.as_bytes()].concat()))
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Opens `upper` (following symlinks: it is the caller's root), then each of `dirs` below
/// it without following symlinks, creating missing ones with `create` mode. Returns the
/// chain of descriptors `[upper, dirs[0], dirs[1], ...]`, or `None` when not creating and a
/// component is missing or is not a directory.
fn open_chain(
    upper: &Path,
    dirs: &[&OsStr],
    create: Option<u32>,
    op: &'static str,
) -> Result<Option<Vec<OwnedFd>>, UnionError> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rfs::openat(CWD, upper, dir_flags, Mode::empty()).map_err(|e| UnionError::io(op, upper, errno_io(e)))?;
    let mut chain = vec![root];
    let mut abs = upper.to_path_buf();
    for &d in dirs {
        abs.push(d);
        let parent = chain.last().expect("chain starts with the root");
        let mut created = false;
        if let Some(mode) = create {
            match rfs::mkdirat(parent, d, Mode::from_raw_mode(mode)) {
                Ok(()) => created = true,
                Err(Errno::EXIST) => {}
                Err(e) => return Err(UnionError::io(op, &abs, errno_io(e))),
            }
        }
        match rfs::openat(parent, d, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => {
                if let (true, Some(mode)) = (created, create) {
                    // unionfs-fuse runs with umask 0: the mode is exact.
                    rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| UnionError::io(op, &abs, errno_io(e)))?;
                }
                chain.push(fd)
            }
            Err(Errno::NOENT) if create.is_none() => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => {
                let is_symlink = rfs::statat(parent, d, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
                    .unwrap_or(false);
                if create.is_none() && !is_symlink {
                    // A non-directory where a mirror directory would be: no marker below it.
                    return Ok(None);
                }
                return Err(UnionError::NotADirectory { op, path: abs });
            }
            Err(e) => return Err(UnionError::io(op, &abs, errno_io(e))),
        }
    }
    Ok(Some(chain))
}

fn create_marker(upper: &Path, layout: Layout, path: &RelPath, is_dir: bool) -> Result<(), UnionError> {
    let op = if is_dir { "create directory whiteout" } else { "create whiteout" };
    let (dirs, name) = marker_location(layout, path);
    let chain = open_chain(upper, &dirs, Some(META_DIR_MODE), op)?.expect("open_chain creates missing directories");
    let dir = chain.last().expect("chain is never empty");
    let abs = upper.join(layout.marker_path(path));
    match rfs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => return Ok(()), // some marker exists already: the path is hidden
        Err(Errno::NOENT) => {}
        Err(e) => return Err(UnionError::io(op, abs, errno_io(e))),
    }
    // unionfs-fuse runs with umask 0, so its modes are exact: create, then fchmod.
    let (res, mode) = if is_dir {
        let m = Mode::from_raw_mode(DIR_MARKER_MODE);
        let fd = rfs::mkdirat(dir, name.as_os_str(), m).and_then(|()| {
            rfs::openat(
                dir,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        });
        (fd, m)
    } else {
        let m = Mode::from_raw_mode(FILE_MARKER_MODE);
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        (rfs::openat(dir, name.as_os_str(), flags, m), m)
    };
    match res {
        Ok(fd) => rfs::fchmod(&fd, mode).map_err(|e| UnionError::io(op, abs, errno_io(e))),
        Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(UnionError::io(op, abs, errno_io(e))),
    }
}

fn remove_marker(upper: &Path, layout: Layout, path: &RelPath) -> Result<bool, UnionError> {
    let op = "remove whiteout";
    let (dirs, name) = marker_location(layout, path);
    let Some(chain) = open_chain(upper, &dirs, None, op)? else {
        return Ok(false);
    };
    let abs = upper.join(layout.marker_path(path));
    let dir = chain.last().expect("chain is never empty");
    let st = match rfs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        // A name within 8 bytes of NAME_MAX has no room for the suffix: it
        // cannot have a marker.
        Err(Errno::NOENT | Errno::NAMETOOLONG) => return Ok(false),
        Err(e) => return Err(UnionError::io(op, abs, errno_io(e))),
    };
    let flags =
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    match rfs::unlinkat(dir, name.as_os_str(), flags) {
        Ok(()) => {}
        Err(Errno::NOENT) => return Ok(false),
        Err(e) => return Err(UnionError::io(op, abs, errno_io(e))),
    }
    // Prune mirror directories left empty, deepest first; keep the meta dir itself, and
    // keep anything whose name is itself a marker name (it hides a path on its own).
    for k in (1..dirs.len()).rev() {
        if dirs[k].as_bytes().ends_with(HIDE_SUFFIX.as_bytes()) {
            break;
        }
        match rfs::unlinkat(&chain[k], dirs[k], AtFlags::REMOVEDIR) {
            Ok(()) => {}
            Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOENT) => break,
            Err(e) => {
                tracing::debug!(dir = ?&dirs[..=k], error = %e, "not pruning whiteout mirror dir");
                break;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::os::unix::fs::{symlink, PermissionsExt};

    use proptest::prelude::*;

    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn paths(scan: &WhiteoutScan) -> Vec<(String, Layout, bool)> {
        scan.whiteouts.iter().map(|w| (w.path.to_string(), w.layout, w.is_dir)).collect()
    }

    #[test]
    fn meta_dirs_and_paths() {
        assert_eq!(Layout::UnionfsFuse1.meta_dir(), ".unionfs-fuse");
        assert_eq!(Layout::Unionfs2.meta_dir(), ".unionfs");
        assert_eq!(Layout::from_meta_dir(".unionfs"), Some(Layout::Unionfs2));
        assert_eq!(Layout::from_meta_dir("x"), None);
        assert_eq!(Layout::UnionfsFuse1.marker_path(&rp("a/b c")), PathBuf::from(".unionfs-fuse/a/b c_HIDDEN~"));
        assert!(is_meta_path(&rp(".unionfs-fuse")));
        assert!(is_meta_path(&rp(".unionfs/a/b_HIDDEN~")));
        assert!(!is_meta_path(&rp(".unionfsx")));
        assert!(!is_meta_path(&rp("a/.unionfs")));
    }

    #[test]
    fn no_meta_dir_is_empty_and_missing_upper_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(list_whiteouts(t.path()).unwrap(), WhiteoutScan::default());
        let err = list_whiteouts(&t.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn create_list_hide_remove_both_layouts() {
        for layout in Layout::ALL {
            let t = tempfile::tempdir().unwrap();
            let up = t.path();
            create_whiteout(up, layout, &rp("f")).unwrap();
            create_whiteout(up, layout, &rp("a/b/c")).unwrap();
            create_dir_whiteout(up, layout, &rp("d")).unwrap();
            create_dir_whiteout(up, layout, &rp("a/b/e")).unwrap();
            // Idempotent, and an existing marker of the other type is left alone.
            create_whiteout(up, layout, &rp("d")).unwrap();
            create_dir_whiteout(up, layout, &rp("f")).unwrap();

            let meta = up.join(layout.meta_dir());
            // Exact modes whatever the umask (unionfs-fuse runs with umask 0).
            assert_eq!(mode(&meta), 0o770);
            assert_eq!(mode(&meta.join("a/b")), 0o770);
            assert_eq!(mode(&meta.join("f_HIDDEN~")), 0o600);
            assert_eq!(fs::metadata(meta.join("f_HIDDEN~")).unwrap().len(), 0);
            assert_eq!(mode(&meta.join("d_HIDDEN~")), 0o700);
            assert!(!up.join("a").exists(), "nothing is created in the data tree");

            let scan = list_whiteouts(up).unwrap();
            assert_eq!(scan.problems, Vec::<String>::new());
            assert_eq!(
                paths(&scan),
                vec![
                    ("a/b/c".to_string(), layout, false),
                    ("a/b/e".to_string(), layout, true),
                    ("d".to_string(), layout, true),
                    ("f".to_string(), layout, false),
                ]
            );
            let w = &scan.whiteouts[0];
            assert_eq!(w.marker, PathBuf::from(layout.meta_dir()).join("a/b/c_HIDDEN~"));

            for (p, hidden) in [
                ("f", true),
                ("f/x", true),
                ("d", true),
                ("d/x/y", true),
                ("a", false),
                ("a/b", false),
                ("a/b/c", true),
                ("a/b/e/z", true),
                ("a/b/cc", false),
                ("g", false),
            ] {
                assert_eq!(is_hidden(up, &rp(p)), hidden, "{p} in {layout:?}");
            }

            // Remove the nested file marker: a/b still holds e_HIDDEN~, so it stays.
            remove_whiteout(up, &scan.whiteouts[0]).unwrap();
            assert!(!is_hidden(up, &rp("a/b/c")));
            assert!(meta.join("a/b").is_dir());
            // Idempotent.
            remove_whiteout(up, &scan.whiteouts[0]).unwrap();
            // Remove the nested directory marker: a/b and a are now empty and pruned.
            remove_whiteout(up, &scan.whiteouts[1]).unwrap();
            assert!(!meta.join("a").exists());
            assert!(remove_whiteout_at(up, &rp("d")).unwrap());
            assert!(!remove_whiteout_at(up, &rp("d")).unwrap());
            assert!(remove_whiteout_at(up, &rp("f")).unwrap());
            assert!(!remove_whiteout_at(up, &rp("never/was")).unwrap());
            assert_eq!(list_whiteouts(up).unwrap(), WhiteoutScan::default());
            assert!(meta.is_dir(), "the meta dir itself is kept");
        }
    }

    #[test]
    fn both_layouts_at_once() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        create_whiteout(up, Layout::Unionfs2, &rp("x")).unwrap();
        create_whiteout(up, Layout::UnionfsFuse1, &rp("x")).unwrap();
        create_whiteout(up, Layout::Unionfs2, &rp("a")).unwrap();
        let scan = list_whiteouts(up).unwrap();
        assert_eq!(
            paths(&scan),
            vec![
                ("a".to_string(), Layout::Unionfs2, false),
                ("x".to_string(), Layout::UnionfsFuse1, false),
                ("x".to_string(), Layout::Unionfs2, false),
            ]
        );
        assert!(remove_whiteout_at(up, &rp("x")).unwrap());
        assert!(!is_hidden(up, &rp("x")));
        assert!(is_hidden(up, &rp("a/b")));
    }

    #[test]
    fn roots_drop_covered_descendants() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        // What `rm -r d` leaves (see docs/unionfs-notes.md).
        for p in ["d/a", "d/e/b", "d/e/f/c"] {
            create_whiteout(up, Layout::UnionfsFuse1, &rp(p)).unwrap();
        }
        for p in ["d/e/f", "d/e", "d/empty", "d", "d b"] {
            create_dir_whiteout(up, Layout::UnionfsFuse1, &rp(p)).unwrap();
        }
        create_whiteout(up, Layout::Unionfs2, &rp("d")).unwrap();
        let scan = list_whiteouts(up).unwrap();
        assert_eq!(scan.whiteouts.len(), 9);
        let roots: Vec<_> = scan.roots().iter().map(|w| (w.path.to_string(), w.layout)).collect();
        assert_eq!(
            roots,
            vec![
                ("d".to_string(), Layout::UnionfsFuse1),
                ("d".to_string(), Layout::Unionfs2),
                ("d b".to_string(), Layout::UnionfsFuse1),
            ]
        );
    }

    #[test]
    fn malformed_markers_are_problems_not_failures() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        create_whiteout(up, Layout::UnionfsFuse1, &rp("ok")).unwrap();
        create_whiteout(up, Layout::UnionfsFuse1, &rp("sub/ok2")).unwrap();
        let meta = up.join(".unionfs-fuse");
        fs::write(meta.join("no-suffix"), b"").unwrap();
        fs::write(meta.join(OsStr::from_bytes(b"bad\xff_HIDDEN~")), b"").unwrap();
        fs::create_dir(meta.join(OsStr::from_bytes(b"dir\xfe"))).unwrap();
        fs::write(meta.join(OsStr::from_bytes(b"dir\xfe")).join("x_HIDDEN~"), b"").unwrap();
        fs::write(meta.join("_HIDDEN~"), b"").unwrap();
        fs::write(meta.join("sub/.._HIDDEN~"), b"").unwrap();
        fs::write(meta.join("._HIDDEN~"), b"").unwrap();
        symlink("/etc", meta.join("link")).unwrap();
        // A symlink named like a marker hides (unionfs-fuse uses lstat): it is a marker.
        symlink("/nowhere", meta.join("sym_HIDDEN~")).unwrap();
        fs::write(up.join(".unionfs"), b"not a dir").unwrap();

        let scan = list_whiteouts(up).unwrap();
        assert_eq!(
            paths(&scan),
            vec![
                // Names that are not UTF-8 are names like any other (shown escaped).
                ("bad\\xFF".to_string(), Layout::UnionfsFuse1, false),
                ("dir\\xFE/x".to_string(), Layout::UnionfsFuse1, false),
                ("ok".to_string(), Layout::UnionfsFuse1, false),
                ("sub/ok2".to_string(), Layout::UnionfsFuse1, false),
                ("sym".to_string(), Layout::UnionfsFuse1, false),
            ]
        );
        let expect_problem = |needle: &str| {
            assert!(
                scan.problems.iter().any(|p| p.contains(needle)),
                "no problem mentioning {needle:?} in {:#?}",
                scan.problems
            )
        };
        expect_problem(".unionfs-fuse/no-suffix: not a whiteout marker");
        expect_problem(".unionfs-fuse/_HIDDEN~: marker names no file");
        expect_problem(".unionfs-fuse/sub/.._HIDDEN~: invalid hidden path");
        expect_problem(".unionfs-fuse/._HIDDEN~: invalid hidden path");
        expect_problem(".unionfs-fuse/link: symlink inside the union metadata, not followed");
        expect_problem(".unionfs: meta dir is not a directory");
        assert_eq!(scan.problems.len(), 6, "{:#?}", scan.problems);
    }

    /// Linux names are bytes: a Latin-1 or invalid UTF-8 name gets the
    /// marker unionfs-fuse writes for it (`<bytes>_HIDDEN~`), and back.
    #[test]
    fn byte_names_get_byte_markers() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        let b = |s: &[u8]| RelPath::new(s).unwrap();
        create_whiteout(up, Layout::UnionfsFuse1, &b(b"caf\xe9/na\xefve")).unwrap();
        create_dir_whiteout(up, Layout::Unionfs2, &b(b"\xff\xfe")).unwrap();
        create_whiteout(up, Layout::UnionfsFuse1, &rp("back\\slash")).unwrap();
        let on_disk = |rel: &[u8]| fs::symlink_metadata(up.join(OsStr::from_bytes(rel))).is_ok();
        assert!(on_disk(b".unionfs-fuse/caf\xe9/na\xefve_HIDDEN~"));
        assert!(on_disk(b".unionfs/\xff\xfe_HIDDEN~"));
        assert!(on_disk(b".unionfs-fuse/back\\slash_HIDDEN~"));
        let scan = list_whiteouts(up).unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let got: Vec<&[u8]> = scan.whiteouts.iter().map(|w| w.path.as_bytes()).collect();
        assert_eq!(got, [&b"back\\slash"[..], b"caf\xe9/na\xefve", b"\xff\xfe"]);
        assert!(is_hidden(up, &b(b"caf\xe9/na\xefve/below")));
        assert!(!is_hidden(up, &b(b"caf\xe9")));
        for w in &scan.whiteouts {
            remove_whiteout(up, w).unwrap();
        }
        assert_eq!(list_whiteouts(up).unwrap(), WhiteoutScan::default());
    }

    #[test]
    fn symlinks_in_the_meta_tree_are_not_followed_when_writing() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upper");
        let outside = t.path().join("outside");
        fs::create_dir_all(up.join(".unionfs-fuse")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("b_HIDDEN~"), b"precious").unwrap();
        symlink(&outside, up.join(".unionfs-fuse/a")).unwrap();

        let err = remove_whiteout_at(&up, &rp("a/b")).unwrap_err();
        assert!(matches!(err, UnionError::NotADirectory { .. }), "{err}");
        assert!(err.to_string().contains(".unionfs-fuse/a"), "{err}");
        assert!(outside.join("b_HIDDEN~").exists());
        let err = create_whiteout(&up, Layout::UnionfsFuse1, &rp("a/c")).unwrap_err();
        assert!(matches!(err, UnionError::NotADirectory { .. }), "{err}");
        assert!(!outside.join("c_HIDDEN~").exists());
        // A plain file where a mirror dir would be: nothing to remove below it.
        fs::write(up.join(".unionfs-fuse/plain"), b"").unwrap();
        assert!(!remove_whiteout_at(&up, &rp("plain/x")).unwrap());
    }

    #[test]
    fn remove_checks_the_marker_and_keeps_marker_named_dirs() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        create_whiteout(up, Layout::UnionfsFuse1, &rp("x")).unwrap();
        let mut w = list_whiteouts(up).unwrap().whiteouts.remove(0);
        w.marker = PathBuf::from("../../etc/passwd");
        let err = remove_whiteout(up, &w).unwrap_err();
        assert!(matches!(err, UnionError::MarkerMismatch { .. }), "{err}");
        assert!(is_hidden(up, &rp("x")));

        // A real directory named `y_HIDDEN~` whose child was deleted: its mirror dir is also
        // a directory marker for `y` (unionfs-fuse cannot tell them apart). Removing the
        // child's marker must not prune it, and removing `y`'s marker must not delete
        // the child's.
        create_whiteout(up, Layout::UnionfsFuse1, &rp("y_HIDDEN~/c")).unwrap();
        assert!(is_hidden(up, &rp("y")));
        let scan = list_whiteouts(up).unwrap();
        assert_eq!(
            paths(&scan),
            vec![
                ("x".to_string(), Layout::UnionfsFuse1, false),
                ("y".to_string(), Layout::UnionfsFuse1, true),
                ("y_HIDDEN~/c".to_string(), Layout::UnionfsFuse1, false),
            ]
        );
        assert!(remove_whiteout_at(up, &rp("y")).is_err());
        assert!(is_hidden(up, &rp("y_HIDDEN~/c")));
        assert!(remove_whiteout_at(up, &rp("y_HIDDEN~/c")).unwrap());
        assert!(is_hidden(up, &rp("y")), "the marker-named mirror dir is not pruned");
    }

    fn arb_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "c d", "é", "x_HIDDEN", ".h", "b\\x"]), 1..4)
            .prop_map(|v| v.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn create_then_list_then_remove_all(
            entries in prop::collection::btree_map(arb_path(), (any::<bool>(), any::<bool>()), 0..12)
        ) {
            let t = tempfile::tempdir().unwrap();
            let up = t.path();
            let mut want = BTreeSet::new();
            for (p, &(is_dir, fuse1)) in &entries {
                let layout = if fuse1 { Layout::UnionfsFuse1 } else { Layout::Unionfs2 };
                if is_dir {
                    create_dir_whiteout(up, layout, &rp(p)).unwrap();
                } else {
                    create_whiteout(up, layout, &rp(p)).unwrap();
                }
                want.insert((rp(p), layout, is_dir));
            }
            let scan = list_whiteouts(up).unwrap();
            prop_assert!(scan.problems.is_empty(), "{:?}", scan.problems);
            let got: BTreeSet<_> = scan.whiteouts.iter().map(|w| (w.path.clone(), w.layout, w.is_dir)).collect();
            prop_assert_eq!(&got, &want);
            prop_assert!(scan.whiteouts.windows(2).all(|w| w[0].path <= w[1].path));
            for (p, ..) in &want {
                prop_assert!(is_hidden(up, p));
            }
            for w in &scan.whiteouts {
                remove_whiteout(up, w).unwrap();
            }
            prop_assert_eq!(list_whiteouts(up).unwrap(), WhiteoutScan::default());
            for layout in Layout::ALL {
                let meta = up.join(layout.meta_dir());
                if meta.exists() {
                    prop_assert_eq!(fs::read_dir(&meta).unwrap().count(), 0);
                }
            }
        }
    }
}
