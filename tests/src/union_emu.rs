//! unionfs-fuse in copy-on-write mode, emulated over two plain directories.
//!
//! merged(p) = upper(p) if the upper layer has p; else nothing if a whiteout
//! hides p or an ancestor; else lower(p), unless p is local-only (the
//! project's copies of local-only paths are not shown). Directories present in
//! both layers merge their children. Writes copy the file up first (content,
//! mode, mtime), creating missing parent directories in the upper layer with
//! the lower's modes; deleting a path the lower layer has leaves a whiteout.
//!
//! Where unionfs-fuse 1.0 was observed to do something specific (see
//! docs/unionfs-notes.md, checked against the real binary by cs-union's tests),
//! the emulation does the same:
//! - `unlink` leaves a file marker, `rmdir` a directory marker; `rm -r` one per entry;
//! - creating a non-directory over a marker removes exactly that marker;
//!   `mkdir` does not, so the new directory is opaque (lower children stay
//!   hidden); `rename` removes the marker at its target whatever the type
//!   (`remove_hidden(to)` at the end of unionfs-fuse's `unionfs_rename`);
//! - `rename` of a lower-only directory copies the tree up and leaves one
//!   directory marker for the source; of a directory in both layers, renames
//!   the upper one only (its lower-only children drop out of the view: a 1.0 bug);
//! - `chmod` of a lower-only directory copies the whole tree below it up too;
//! - removing a marker (by creating over it) leaves the mirror directories
//!   above it in place, even empty;
//! - `ln` of a lower file copies it up and links the copy in the upper layer.
//!
//! `tests/emu_vs_real.rs` checks all this against the real binary (same
//! operations on both, upper layers and merged views compared).

use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use cs_protocol::{RelPath, Timestamp};

use crate::filter::SyncFilter;
use crate::tree::Tree;
use crate::view::{check_rename, err, lstat_beneath, mtime_of, set_file_mtime, Entry, Kind, View};
use cs_union as wo;
pub use cs_union::Layout;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Upper,
    Lower,
}

/// C's merged view. `lower` is P's home itself (no network filesystem).
pub struct EmuUnion {
    pub upper: PathBuf,
    pub lower: PathBuf,
    pub layout: Layout,
    filter: Box<dyn SyncFilter>,
    name: String,
}

fn union_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl EmuUnion {
    pub fn new(upper: PathBuf, lower: PathBuf, layout: Layout, filter: Box<dyn SyncFilter>) -> Self {
        EmuUnion { upper, lower, layout, filter, name: "C merged view".into() }
    }

    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Snapshot of the merged view's synced paths.
    pub fn merged_snapshot(&self, filter: &dyn SyncFilter) -> io::Result<Tree> {
        Tree::of_view(self, filter)
    }

    /// The upper layer's own entry at `p`, if any.
    pub fn upper_has(&self, p: &RelPath) -> bool {
        lstat_beneath(&self.upper, p).is_some()
    }

    /// `p` is hidden by a whiteout on it or on an ancestor.
    pub fn is_hidden(&self, p: &RelPath) -> bool {
        wo::is_hidden(&self.upper, p)
    }

    /// Whiteout markers on disk, relative to the upper layer, directory
    /// markers with a trailing `/`: e.g. `.unionfs-fuse/d/x_HIDDEN~`, `.unionfs-fuse/d_HIDDEN~/`.
    pub fn whiteout_markers(&self) -> Vec<String> {
        let scan = wo::list_whiteouts(&self.upper).expect("list whiteouts");
        assert!(scan.problems.is_empty(), "undecodable markers: {:?}", scan.problems);
        let mut out: Vec<String> = scan
            .whiteouts
            .iter()
            .map(|w| format!("{}{}", w.marker.display(), if w.is_dir { "/" } else { "" }))
            .collect();
        out.sort();
        out
    }

    /// The lower layer's entry at `p` if the union may show it (whiteouts aside).
    fn in_lower(&self, p: &RelPath) -> Option<Metadata> {
        let md = lstat_beneath(&self.lower, p)?;
        let local =
            self.filter.is_local_only(p, md.is_dir()) || p.ancestors().any(|a| self.filter.is_local_only(&a, true));
        (!local).then_some(md)
    }

    /// Which layer shows `p`, given that its parent is a merged directory.
    fn layer(&self, p: &RelPath) -> Option<(Layer, Metadata)> {
        if let Some(md) = lstat_beneath(&self.upper, p) {
            return Some((Layer::Upper, md));
        }
        if wo::is_hidden(&self.upper, p) {
            return None;
        }
        self.in_lower(p).map(|md| (Layer::Lower, md))
    }

    /// Which layer shows `p`, checking that every ancestor is a merged directory.
    fn resolve(&self, p: &RelPath) -> Option<(Layer, Metadata)> {
        if wo::is_meta_path(p) {
            return None;
        }
        let mut ancestors: Vec<RelPath> = p.ancestors().collect();
        ancestors.reverse();
        for a in &ancestors {
            match self.layer(a) {
                Some((_, md)) if md.file_type().is_dir() => {}
                _ => return None,
            }
        }
        self.layer(p)
    }

    fn up(&self, p: &RelPath) -> PathBuf {
        self.upper.join(p.as_path())
    }

    fn need(&self, p: &RelPath, want: &[Kind]) -> io::Result<Kind> {
        match self.kind(p) {
            Some(k) if want.contains(&k) => Ok(k),
            other => {
                Err(err(io::ErrorKind::NotFound, format!("{}: {p} is {other:?}, need one of {want:?}", self.name)))
            }
        }
    }

    fn need_absent_with_parent_dir(&self, p: &RelPath) -> io::Result<()> {
        if let Some(k) = self.kind(p) {
            return Err(err(io::ErrorKind::AlreadyExists, format!("{}: {p} exists ({k:?})", self.name)));
        }
        match p.parent() {
            Some(d) => self.need(&d, &[Kind::Dir]).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Copies `p` (and, first, its missing parent directories) from the lower
    /// layer up, keeping content, mode and mtime. No-op if the upper layer has it.
    fn copy_up(&self, p: &RelPath) -> io::Result<()> {
        let (layer, md) = self
            .resolve(p)
            .ok_or_else(|| err(io::ErrorKind::NotFound, format!("{}: copy-up of absent {p}", self.name)))?;
        if layer == Layer::Upper {
            return Ok(());
        }
        if let Some(parent) = p.parent() {
            self.copy_up(&parent)?;
        }
        self.copy_entry(p, &md)
    }

    /// Copies the lower entry `p` (its metadata `md`) to the upper layer,
    /// whose parent directory must exist: content, mode, file mtime.
    fn copy_entry(&self, p: &RelPath, md: &Metadata) -> io::Result<()> {
        let (src, dst) = (self.lower.join(p.as_path()), self.up(p));
        match Kind::of(md) {
            Kind::File => {
                fs::copy(&src, &dst)?;
                fs::set_permissions(&dst, md.permissions())?;
                set_file_mtime(&dst, mtime_of(md))?;
            }
            Kind::Dir => {
                fs::create_dir(&dst)?;
                fs::set_permissions(&dst, md.permissions())?;
            }
            Kind::Symlink => std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?,
            Kind::Other => return Err(err(io::ErrorKind::Unsupported, format!("copy-up of special file {p}"))),
        }
        Ok(())
    }

    /// unionfs-fuse's copy-up of a lower-only directory (`rename`, `chmod`):
    /// the directory, then everything the *lower* directory holds below it,
    /// whiteouts or not. A child deleted through the merged view comes back
    /// with the copy (observed with 1.0: `rm d/x; chmod 700 d` shows `d/x`
    /// again).
    fn copy_up_tree(&self, p: &RelPath) -> io::Result<()> {
        self.copy_up(p)?;
        self.copy_lower_children(p)
    }

    fn copy_lower_children(&self, d: &RelPath) -> io::Result<()> {
        for e in fs::read_dir(self.lower.join(d.as_path()))? {
            let name = e?.file_name().into_string().map_err(|n| err(io::ErrorKind::InvalidData, format!("{n:?}")))?;
            let c = d.join(&name).map_err(|e| err(io::ErrorKind::InvalidData, e))?;
            let Some(md) = self.in_lower(&c) else { continue };
            if self.upper_has(&c) {
                continue;
            }
            self.copy_entry(&c, &md)?;
            if md.is_dir() {
                self.copy_lower_children(&c)?;
            }
        }
        Ok(())
    }

    /// Before creating `p`: its parent in the upper layer and, for a
    /// non-directory, no marker at `p` (unionfs-fuse's `remove_hidden`).
    fn prepare_create(&self, p: &RelPath, is_dir: bool) -> io::Result<()> {
        if let Some(parent) = p.parent() {
            self.copy_up(&parent)?;
        }
        if !is_dir {
            self.remove_marker(p)?;
        }
        Ok(())
    }

    /// unionfs-fuse's `remove_hidden`: removes the marker of `p` itself (a
    /// file, or an empty directory), and nothing else: the mirror
    /// directories above it stay, even when left empty. A name too long to
    /// carry the marker suffix has no marker (unionfs-fuse's `path_is_dir`
    /// reads any lstat error as "not there").
    fn remove_marker(&self, p: &RelPath) -> io::Result<()> {
        let m = self.upper.join(self.layout.marker_path(p));
        match fs::symlink_metadata(&m) {
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidFilename) => Ok(()),
            Err(e) => Err(e),
            Ok(md) if md.is_dir() => fs::remove_dir(&m),
            Ok(_) => fs::remove_file(&m),
        }
    }

    /// After deleting `p` from the merged view: a marker if the lower layer
    /// has it (a directory marker for `rmdir`, a file marker for `unlink`).
    fn maybe_whiteout(&self, p: &RelPath, rmdir: bool) -> io::Result<()> {
        // As unionfs-fuse: only if the lower entry would show now, i.e. is
        // not hidden already by a marker of its own or of an ancestor (an
        // upper file in a directory created again over its marker leaves
        // none).
        if self.in_lower(p).is_some() && !wo::is_hidden(&self.upper, p) {
            if rmdir {
                wo::create_dir_whiteout(&self.upper, self.layout, p).map_err(union_err)?;
            } else {
                wo::create_whiteout(&self.upper, self.layout, p).map_err(union_err)?;
            }
        }
        Ok(())
    }
}

impl View for EmuUnion {
    fn name(&self) -> &str {
        &self.name
    }

    fn host_path(&self, p: &RelPath) -> Option<PathBuf> {
        self.resolve(p).map(|(layer, _)| match layer {
            Layer::Upper => self.up(p),
            Layer::Lower => self.lower.join(p.as_path()),
        })
    }

    fn entries(&self, dir: Option<&RelPath>) -> io::Result<Vec<Entry>> {
        let mut names = std::collections::BTreeSet::new();
        let mut add = |host: PathBuf| -> io::Result<()> {
            for e in fs::read_dir(host)? {
                names.insert(std::os::unix::ffi::OsStringExt::into_vec(e?.file_name()));
            }
            Ok(())
        };
        match dir {
            None => {
                add(self.upper.clone())?;
                add(self.lower.clone())?;
            }
            Some(d) => {
                self.need(d, &[Kind::Dir])?;
                if lstat_beneath(&self.upper, d).is_some_and(|m| m.is_dir()) {
                    add(self.up(d))?;
                }
                if self.in_lower(d).is_some_and(|m| m.is_dir()) {
                    add(self.lower.join(d.as_path()))?;
                }
            }
        }
        let mut out = Vec::new();
        for n in names {
            let path = match dir {
                None => RelPath::new(n),
                Some(d) => d.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&n)),
            }
            .map_err(|e| err(io::ErrorKind::InvalidData, e))?;
            if wo::is_meta_path(&path) {
                continue;
            }
            if let Some((layer, md)) = self.layer(&path) {
                let host = match layer {
                    Layer::Upper => self.up(&path),
                    Layer::Lower => self.lower.join(path.as_path()),
                };
                out.push(Entry { path, host, md });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn write(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        match self.kind(p) {
            Some(Kind::File) => self.copy_up(p)?,
            Some(k) => return Err(err(io::ErrorKind::AlreadyExists, format!("{}: {p} is a {k:?}", self.name))),
            None => {
                self.need_absent_with_parent_dir(p)?;
                self.prepare_create(p, false)?;
            }
        }
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(self.up(p))?;
        f.write_all(data)
    }

    fn append(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        self.copy_up(p)?;
        OpenOptions::new().append(true).open(self.up(p))?.write_all(data)
    }

    fn truncate(&self, p: &RelPath, len: u64) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        self.copy_up(p)?;
        OpenOptions::new().write(true).open(self.up(p))?.set_len(len)
    }

    fn remove_file(&self, p: &RelPath) -> io::Result<()> {
        self.need(p, &[Kind::File, Kind::Symlink])?;
        if self.upper_has(p) {
            fs::remove_file(self.up(p))?;
        }
        self.maybe_whiteout(p, false)
    }

    fn mkdir(&self, p: &RelPath) -> io::Result<()> {
        self.need_absent_with_parent_dir(p)?;
        self.prepare_create(p, true)?;
        fs::create_dir(self.up(p))
    }

    fn remove_dir_all(&self, p: &RelPath) -> io::Result<()> {
        self.need(p, &[Kind::Dir])?;
        for c in self.children(Some(p))? {
            if self.kind(&c) == Some(Kind::Dir) {
                self.remove_dir_all(&c)?;
            } else {
                self.remove_file(&c)?;
            }
        }
        if self.upper_has(p) {
            fs::remove_dir(self.up(p))?;
        }
        self.maybe_whiteout(p, true)
    }

    fn rename(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        let kind = check_rename(self, from, to)?;
        let is_dir = kind == Kind::Dir;
        if is_dir && !self.upper_has(from) {
            self.copy_up_tree(from)?;
        } else {
            self.copy_up(from)?;
        }
        self.prepare_create(to, false)?;
        fs::rename(self.up(from), self.up(to))?;
        self.maybe_whiteout(from, is_dir)
    }

    fn chmod(&self, p: &RelPath, mode: u32) -> io::Result<()> {
        let kind = self.need(p, &[Kind::File, Kind::Dir])?;
        // unionfs-fuse's copy-up of a directory is recursive: a chmod of a
        // lower directory copies everything below it up too.
        if kind == Kind::Dir && !self.upper_has(p) {
            self.copy_up_tree(p)?;
        } else {
            self.copy_up(p)?;
        }
        fs::set_permissions(self.up(p), fs::Permissions::from_mode(mode))
    }

    fn symlink_os(&self, target: &std::ffi::OsStr, p: &RelPath) -> io::Result<()> {
        self.need_absent_with_parent_dir(p)?;
        self.prepare_create(p, false)?;
        std::os::unix::fs::symlink(target, self.up(p))
    }

    fn hard_link(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        self.need(from, &[Kind::File])?;
        self.need_absent_with_parent_dir(to)?;
        self.copy_up(from)?;
        self.prepare_create(to, false)?;
        fs::hard_link(self.up(from), self.up(to))
    }

    fn set_mtime(&self, p: &RelPath, t: Timestamp) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        self.copy_up(p)?;
        set_file_mtime(&self.up(p), t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::SpecDefaults;
    use crate::rp;
    use crate::view::PlainDir;

    struct T {
        _dirs: [tempfile::TempDir; 2],
        c: EmuUnion,
        p: PlainDir,
    }

    fn setup(layout: Layout) -> T {
        let (u, l) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let c = EmuUnion::new(u.path().into(), l.path().into(), layout, Box::new(SpecDefaults));
        let p = PlainDir::new(l.path(), "P home");
        T { _dirs: [u, l], c, p }
    }

    fn meta(layout: Layout) -> &'static str {
        match layout {
            Layout::UnionfsFuse1 => ".unionfs-fuse",
            Layout::Unionfs2 => ".unionfs",
        }
    }

    const OLD: Timestamp = Timestamp { sec: 1_000_000_000, nsec: 123_456_789 };

    #[test]
    fn reads_fall_through_and_writes_copy_up_content_mode_mtime_and_parents() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("d/e/x"), b"lower").unwrap();
        t.p.chmod(&rp("d"), 0o750).unwrap();
        t.p.chmod(&rp("d/e/x"), 0o640).unwrap();
        t.p.set_mtime(&rp("d/e/x"), OLD).unwrap();
        assert_eq!(t.c.read(&rp("d/e/x")).unwrap(), b"lower");
        assert!(!t.c.upper_has(&rp("d")), "reading copies nothing up");

        t.c.append(&rp("d/e/x"), b"+c").unwrap();
        assert!(t.c.upper_has(&rp("d/e/x")));
        assert_eq!(t.c.read(&rp("d/e/x")).unwrap(), b"lower+c");
        assert_eq!(t.p.read(&rp("d/e/x")).unwrap(), b"lower", "the lower layer is read-only");
        assert_eq!(t.c.mode(&rp("d")), Some(0o750), "parent copied up with the lower's mode");
        assert_eq!(t.c.mode(&rp("d/e/x")), Some(0o640));

        t.p.put(&rp("y"), b"old").unwrap();
        t.p.set_mtime(&rp("y"), OLD).unwrap();
        t.c.chmod(&rp("y"), 0o600).unwrap();
        assert_eq!(t.c.mtime(&rp("y")), Some(OLD), "copy-up keeps the mtime");
        assert_eq!(t.c.mode(&rp("y")), Some(0o600));
        assert_ne!(t.p.mode(&rp("y")), Some(0o600), "chmod changed the copy only");

        t.c.truncate(&rp("y"), 1).unwrap();
        assert_eq!(t.c.read(&rp("y")).unwrap(), b"o");
        t.c.write(&rp("y"), b"new").unwrap();
        assert_eq!(t.c.read(&rp("y")).unwrap(), b"new");
        assert_eq!(t.p.read(&rp("y")).unwrap(), b"old");
    }

    #[test]
    fn delete_leaves_whiteouts_in_the_real_layout_and_create_removes_them() {
        for layout in [Layout::UnionfsFuse1, Layout::Unionfs2] {
            let t = setup(layout);
            let m = meta(layout);
            t.p.put(&rp("d/x"), b"1").unwrap();
            t.p.put(&rp("d/f/y"), b"2").unwrap();
            t.p.put(&rp("z"), b"3").unwrap();
            t.c.put(&rp("new"), b"c").unwrap();

            t.c.remove_file(&rp("z")).unwrap();
            t.c.remove_file(&rp("new")).unwrap();
            assert_eq!(t.c.whiteout_markers(), [format!("{m}/z_HIDDEN~")], "no whiteout for an upper-only file");
            assert!(!t.c.exists(&rp("z")));
            assert!(t.p.exists(&rp("z")));

            t.c.remove_dir_all(&rp("d")).unwrap();
            let mut want = vec![
                format!("{m}/d/f/y_HIDDEN~"),
                format!("{m}/d/f_HIDDEN~/"),
                format!("{m}/d/x_HIDDEN~"),
                format!("{m}/d_HIDDEN~/"),
                format!("{m}/z_HIDDEN~"),
            ];
            want.sort();
            assert_eq!(t.c.whiteout_markers(), want);
            assert!(!t.c.exists(&rp("d")));
            assert!(t.c.walk().unwrap().is_empty(), "{:?}", t.c.walk());

            // mkdir keeps the marker: the new directory is opaque, even to
            // children P adds later.
            t.c.mkdir(&rp("d")).unwrap();
            t.p.write(&rp("d/new"), b"p").unwrap();
            assert!(t.c.children(Some(&rp("d"))).unwrap().is_empty());
            assert!(t.c.whiteout_markers().contains(&format!("{m}/d_HIDDEN~/")));
            // Creating a file removes exactly its own marker.
            t.c.put(&rp("z"), b"again").unwrap();
            assert_eq!(t.c.read(&rp("z")).unwrap(), b"again");
            t.c.put(&rp("d/x"), b"c").unwrap();
            let markers = t.c.whiteout_markers();
            assert!(!markers.contains(&format!("{m}/z_HIDDEN~")), "{markers:?}");
            assert!(!markers.contains(&format!("{m}/d/x_HIDDEN~")), "{markers:?}");
            assert!(markers.contains(&format!("{m}/d/f_HIDDEN~/")), "{markers:?}");
            assert_eq!(t.c.children(Some(&rp("d"))).unwrap(), [rp("d/x")]);
        }
    }

    #[test]
    fn renaming_a_lower_only_dir_copies_the_tree_up_and_hides_the_source() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("d/x"), b"x").unwrap();
        t.p.put(&rp("d/s/y"), b"y").unwrap();
        t.p.set_mtime(&rp("d/s/y"), OLD).unwrap();
        t.p.chmod(&rp("d/s"), 0o700).unwrap();
        t.p.symlink("x", &rp("d/l")).unwrap();
        let before = t.c.merged_snapshot(&SpecDefaults).unwrap();

        t.c.rename(&rp("d"), &rp("e")).unwrap();
        let after = t.c.merged_snapshot(&SpecDefaults).unwrap();
        assert_eq!(after.paths(), ["e", "e/l", "e/s", "e/s/y", "e/x"]);
        for (p, n) in &before.nodes {
            let moved = rp(&p.to_str().unwrap().replacen('d', "e", 1));
            assert_eq!(after.nodes.get(&moved), Some(n), "{p} moved to {moved} unchanged");
        }
        assert!(t.c.is_hidden(&rp("d")));
        assert_eq!(t.c.whiteout_markers(), [".unionfs-fuse/d_HIDDEN~/"], "one directory marker");
        // Files: over an existing one, and back onto a whited-out name.
        t.c.put(&rp("a"), b"a").unwrap();
        t.c.rename(&rp("e/x"), &rp("a")).unwrap();
        assert_eq!(t.c.read(&rp("a")).unwrap(), b"x");
        t.c.mkdir(&rp("d")).unwrap();
        t.c.rename(&rp("a"), &rp("d/x")).unwrap();
        assert_eq!(t.c.read(&rp("d/x")).unwrap(), b"x");
        assert!(!t.c.exists(&rp("a")));
        assert!(t.c.rename(&rp("e"), &rp("e/s/z")).is_err(), "no move into itself");
        assert!(t.c.rename(&rp("e"), &rp("d")).is_err(), "no move of a dir onto a dir");
        assert_eq!(t.p.read(&rp("d/x")).unwrap(), b"x", "the lower layer is never written");
    }

    #[test]
    fn renaming_a_dir_in_both_layers_moves_the_upper_one_only() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("d/lower_only"), b"l").unwrap();
        t.p.put(&rp("d/both"), b"b").unwrap();
        t.c.append(&rp("d/both"), b"+c").unwrap();
        t.c.put(&rp("d/upper_only"), b"u").unwrap();
        t.c.rename(&rp("d"), &rp("e")).unwrap();
        assert_eq!(t.c.walk().unwrap(), [rp("e"), rp("e/both"), rp("e/upper_only")]);
        assert_eq!(t.c.read(&rp("e/both")).unwrap(), b"b+c");
        assert_eq!(t.c.whiteout_markers(), [".unionfs-fuse/d_HIDDEN~/"]);
        // Renaming back removes the marker at the target: the lower-only child shows again.
        t.c.rename(&rp("e"), &rp("d")).unwrap();
        assert!(t.c.whiteout_markers().is_empty());
        assert_eq!(t.c.walk().unwrap(), [rp("d"), rp("d/both"), rp("d/lower_only"), rp("d/upper_only")]);
    }

    #[test]
    fn local_only_paths_show_the_upper_layer_only() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("scratch/p"), b"project's").unwrap();
        t.p.put(&rp("s/scratch/q"), b"synced").unwrap();
        assert!(!t.c.exists(&rp("scratch")));
        t.c.put(&rp("scratch/c"), b"mine").unwrap();
        assert_eq!(t.c.children(Some(&rp("scratch"))).unwrap(), [rp("scratch/c")]);
        assert!(t.c.exists(&rp("s/scratch/q")));
        t.c.remove_file(&rp("scratch/c")).unwrap();
        assert!(t.c.whiteout_markers().is_empty());
    }

    #[test]
    fn extract_and_symlinks() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("pkg/a"), b"1111").unwrap();
        t.p.set_mtime(&rp("pkg/a"), OLD).unwrap();
        let files = vec![(rp("pkg/a"), b"2222".to_vec()), (rp("pkg/sub/b"), b"b".to_vec())];
        t.c.extract(&files, OLD).unwrap();
        assert_eq!(t.c.read(&rp("pkg/a")).unwrap(), b"2222");
        assert_eq!(t.c.mtime(&rp("pkg/a")), Some(OLD));
        assert_eq!(t.c.mtime(&rp("pkg/sub/b")), Some(OLD));
        assert!(t.c.whiteout_markers().is_empty(), "re-creating removed the unlink's whiteout");

        t.p.symlink("../x", &rp("pkg/l")).unwrap();
        assert_eq!(t.c.read_link(&rp("pkg/l")).unwrap(), "../x");
        t.c.remove_file(&rp("pkg/l")).unwrap();
        t.c.symlink("y", &rp("pkg/l")).unwrap();
        assert_eq!(t.c.read_link(&rp("pkg/l")).unwrap(), "y");
        assert!(t.c.write(&rp("pkg/l"), b"no").is_err(), "writes never follow symlinks");
        assert!(t.c.mkdir(&rp("pkg/l/under")).is_err());
    }

    #[test]
    fn type_changes_between_layers() {
        let t = setup(Layout::UnionfsFuse1);
        t.p.put(&rp("d/x"), b"lower child").unwrap();
        t.c.remove_dir_all(&rp("d")).unwrap();
        t.c.write(&rp("d"), b"now a file").unwrap();
        assert_eq!(t.c.kind(&rp("d")), Some(Kind::File));
        assert!(!t.c.exists(&rp("d/x")));
        let snap = t.c.merged_snapshot(&SpecDefaults).unwrap();
        assert_eq!(snap.paths(), ["d"]);
    }
}
