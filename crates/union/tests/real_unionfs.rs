//! Against the real unionfs-fuse: every scenario of `docs/unionfs-notes.md`, the fidelity of
//! `create_whiteout`/`create_dir_whiteout` (an upper prepared unmounted must hide exactly
//! what the real union hides, with the same on-disk form), and the mount guard.
//!
//! Without the binary or /dev/fuse these tests fail, naming what is missing
//! (`deploy/install-deps.sh` installs it).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cs_protocol::RelPath;
use cs_union::{
    create_dir_whiteout, create_whiteout, is_hidden, is_mounted, list_whiteouts, remove_whiteout, remove_whiteout_at,
    Layout, MountGuard, UnionError, UnionfsFuse, WhiteoutScan,
};

/// The union binary; panics naming what is missing when it or /dev/fuse is absent. (An
/// `Option` for the call sites' `let Some(u) = union() else { return }`.)
fn union() -> Option<UnionfsFuse> {
    let why = if !Path::new("/dev/fuse").exists() {
        "/dev/fuse does not exist".to_string()
    } else {
        match UnionfsFuse::find() {
            Ok(u) => return Some(u),
            Err(e) => e.to_string(),
        }
    };
    panic!("real unionfs-fuse tests cannot run: {why}. Run `bash deploy/install-deps.sh` as root (it installs unionfs-fuse and fuse3); /dev/fuse must exist.");
}

/// The running version's layout, probed once.
fn layout(u: &UnionfsFuse) -> Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    *L.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        u.probe_layout(t.path()).expect("probe_layout")
    })
}

fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

struct Fx {
    _t: tempfile::TempDir,
    upper: PathBuf,
    lower: PathBuf,
    merged: PathBuf,
}

impl Fx {
    fn new() -> Fx {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower, merged) = (t.path().join("upper"), t.path().join("lower"), t.path().join("merged"));
        for d in [&upper, &lower, &merged] {
            fs::create_dir(d).unwrap();
        }
        Fx { _t: t, upper, lower, merged }
    }

    /// Lower content from a list: `dir/` for directories, else a file holding its own name.
    fn with_lower(entries: &[&str]) -> Fx {
        let fx = Fx::new();
        for e in entries {
            let p = fx.lower.join(e.trim_end_matches('/'));
            if e.ends_with('/') {
                fs::create_dir_all(p).unwrap();
            } else {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, e.as_bytes()).unwrap();
            }
        }
        fx
    }

    fn mount(&self, u: &UnionfsFuse, opts: &[&str]) -> MountGuard {
        let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
        MountGuard::mount(u, &self.upper, &self.lower, &self.merged, &opts).expect("mount")
    }

    /// Mounts, runs `ops` on the merged dir, unmounts, returns the scan.
    fn run(&self, u: &UnionfsFuse, ops: impl FnOnce(&Path)) -> WhiteoutScan {
        let g = self.mount(u, &[]);
        ops(&self.merged);
        g.unmount().expect("unmount");
        list_whiteouts(&self.upper).expect("list_whiteouts")
    }

    fn m(&self, p: &str) -> PathBuf {
        self.merged.join(p)
    }
    fn u(&self, p: &str) -> PathBuf {
        self.upper.join(p)
    }
}

/// `(path, is_dir)` of every whiteout, asserting all are in `layout` and nothing is undecodable.
fn hidden(scan: &WhiteoutScan, layout: Layout) -> Vec<(String, bool)> {
    assert!(scan.problems.is_empty(), "problems: {:?}", scan.problems);
    for w in &scan.whiteouts {
        assert_eq!(w.layout, layout, "{w:?}");
        assert_eq!(w.marker, layout.marker_path(&w.path));
    }
    scan.whiteouts.iter().map(|w| (w.path.to_string(), w.is_dir)).collect()
}

fn v(items: &[(&str, bool)]) -> Vec<(String, bool)> {
    items.iter().map(|(p, d)| (p.to_string(), *d)).collect()
}

/// Everything below `root` (not following symlinks): path → (type, mode, size for files).
fn tree(root: &Path, skip_meta: bool) -> BTreeMap<String, (char, u32, u64)> {
    fn go(root: &Path, dir: &Path, skip_meta: bool, out: &mut BTreeMap<String, (char, u32, u64)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if skip_meta && Layout::ALL.iter().any(|l| rel == l.meta_dir()) {
                continue;
            }
            let md = match fs::symlink_metadata(e.path()) {
                Ok(md) => md,
                // Gone meanwhile (a `.fuse_hidden*` file released by FUSE).
                Err(err) if err.kind() == ErrorKind::NotFound => continue,
                Err(err) => panic!("stat {}: {err}", e.path().display()),
            };
            let ty = if md.is_dir() {
                'd'
            } else if md.file_type().is_symlink() {
                'l'
            } else if md.is_file() {
                'f'
            } else {
                'o'
            };
            let size = if ty == 'f' { md.len() } else { 0 };
            out.insert(rel, (ty, md.permissions().mode() & 0o7777, size));
            if ty == 'd' {
                go(root, &e.path(), skip_meta, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, skip_meta, &mut out);
    out
}

fn names(tree: &BTreeMap<String, (char, u32, u64)>) -> Vec<String> {
    tree.keys().cloned().collect()
}

fn exists(p: &Path) -> bool {
    match fs::symlink_metadata(p) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => false,
        Err(e) => panic!("stat {}: {e}", p.display()),
    }
}

// ---------------------------------------------------------------- probing and the binary

#[test]
fn version_and_probe() {
    let Some(u) = union() else { return };
    let version = u.version().expect("version");
    assert!(!version.is_empty());
    let t = tempfile::tempdir().unwrap();
    let probed = u.probe_layout(t.path()).expect("probe");
    eprintln!("{} version {version}: layout {probed:?}", u.binary.display());
    assert_eq!(probed, layout(&u));
    if version == "1.0" {
        // Debian's 1.0 (the version deployed) uses `.unionfs-fuse`.
        assert_eq!(probed, Layout::UnionfsFuse1);
    } else if version.split('.').next().and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m >= 2) {
        assert_eq!(probed, Layout::Unionfs2);
    }
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0, "probe cleans up after itself");
}

// ---------------------------------------------------------------- scenarios

#[test]
fn delete_lower_files() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["f", "d/e/g", "keep"]);
    let scan = fx.run(&u, |m| {
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_file(m.join("d/e/g")).unwrap();
    });
    assert_eq!(hidden(&scan, l), v(&[("d/e/g", false), ("f", false)]));
    // Nothing but the meta tree in upper: mirror dirs only under the meta dir.
    assert!(tree(&fx.upper, true).is_empty(), "{:?}", tree(&fx.upper, true));
    let meta = tree(&fx.upper.join(l.meta_dir()), false);
    assert_eq!(meta["d"].0, 'd');
    assert_eq!(meta["d/e/g_HIDDEN~"], ('f', 0o600, 0));
    assert!(is_hidden(&fx.upper, &rp("f")));
    assert!(is_hidden(&fx.upper, &rp("d/e/g")));
    assert!(!is_hidden(&fx.upper, &rp("d/e")));
}

#[test]
fn rm_r_nested_lower_dir_leaves_one_marker_per_entry() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/a", "d/e/b", "d/e/f/c", "d/empty/", "keep"]);
    let scan = fx.run(&u, |m| fs::remove_dir_all(m.join("d")).unwrap());
    assert_eq!(
        hidden(&scan, l),
        v(&[
            ("d", true),
            ("d/a", false),
            ("d/e", true),
            ("d/e/b", false),
            ("d/e/f", true),
            ("d/e/f/c", false),
            ("d/empty", true),
        ])
    );
    let roots: Vec<String> = scan.roots().iter().map(|w| w.path.to_string()).collect();
    assert_eq!(roots, ["d"]);
    let meta = tree(&fx.upper.join(l.meta_dir()), false);
    assert_eq!(meta["d_HIDDEN~"].0, 'd');
    assert_eq!(meta["d/e_HIDDEN~"].0, 'd');
    assert!(tree(&fx.upper, true).is_empty());
}

#[test]
fn rmdir_empty_lower_dirs() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/e/", "x/"]);
    let scan = fx.run(&u, |m| {
        fs::remove_dir(m.join("d/e")).unwrap();
        fs::remove_dir(m.join("x")).unwrap();
    });
    assert_eq!(hidden(&scan, l), v(&[("d/e", true), ("x", true)]));
}

#[test]
fn rename_lower_file() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/f"]);
    let lower_mtime = fs::metadata(fx.lower.join("d/f")).unwrap().mtime() - 1000;
    set_mtime(&fx.lower.join("d/f"), lower_mtime);
    let scan = fx.run(&u, |m| fs::rename(m.join("d/f"), m.join("d/g")).unwrap());
    assert_eq!(hidden(&scan, l), v(&[("d/f", false)]));
    assert_eq!(names(&tree(&fx.upper, true)), ["d", "d/g"]);
    assert_eq!(fs::metadata(fx.u("d/g")).unwrap().mtime(), lower_mtime, "copy keeps the mtime");
}

#[test]
fn rename_lower_dir_copies_the_tree_up() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/f", "d/e/g", "d/empty/"]);
    let scan = fx.run(&u, |m| fs::rename(m.join("d"), m.join("d2")).unwrap());
    assert_eq!(hidden(&scan, l), v(&[("d", true)]));
    assert_eq!(names(&tree(&fx.upper, true)), ["d2", "d2/e", "d2/e/g", "d2/empty", "d2/f"]);
}

#[test]
fn rename_dir_present_in_both_layers() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/x", "d/y"]);
    let g = fx.mount(&u, &[]);
    fs::write(fx.m("d/c"), b"c").unwrap(); // creates UPPER/d
    fs::rename(fx.m("d"), fx.m("d2")).unwrap();
    let mut seen: Vec<String> =
        fs::read_dir(fx.m("d2")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    seen.sort();
    g.unmount().unwrap();
    assert_eq!(hidden(&list_whiteouts(&fx.upper).unwrap(), l), v(&[("d", true)]));
    if l == Layout::UnionfsFuse1 {
        // unionfs-fuse 1.0 renames only the upper directory: lower-only children are lost
        // from the merged view (see docs/unionfs-notes.md).
        assert_eq!(seen, ["c"]);
    } else {
        eprintln!("rename of a dir in both layers: merged d2 = {seen:?}");
    }
}

#[test]
fn recreating_over_a_whiteout() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/f", "d/e/g", "top", "x/", "s", "h", "r", "p", "t/e/g", "k"]);
    let g = fx.mount(&u, &[]);
    let m = |p: &str| fx.m(p);
    // Non-directories created over a marker remove it.
    fs::remove_file(m("d/f")).unwrap();
    fs::write(m("d/f"), b"new").unwrap();
    fs::remove_file(m("top")).unwrap();
    fs::write(m("top"), b"new").unwrap();
    fs::remove_file(m("s")).unwrap();
    std::os::unix::fs::symlink("target", m("s")).unwrap();
    fs::remove_file(m("h")).unwrap();
    fs::write(m("tmp"), b"z").unwrap();
    fs::hard_link(m("tmp"), m("h")).unwrap();
    fs::remove_file(m("r")).unwrap();
    fs::write(m("q"), b"q").unwrap();
    fs::rename(m("q"), m("r")).unwrap();
    fs::remove_file(m("p")).unwrap();
    let c = std::ffi::CString::new(m("p").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    // A file created where a directory was removed removes the directory marker, but not
    // the markers of the old children.
    fs::remove_dir_all(m("t")).unwrap();
    fs::write(m("t"), b"file now").unwrap();
    // mkdir keeps the marker: the new directory is opaque.
    fs::remove_dir_all(m("d/e")).unwrap();
    fs::create_dir(m("d/e")).unwrap();
    fs::remove_dir(m("x")).unwrap();
    fs::create_dir(m("x")).unwrap();
    fs::remove_file(m("k")).unwrap();
    fs::create_dir(m("k")).unwrap();
    assert_eq!(fs::read_dir(m("d/e")).unwrap().count(), 0);
    g.unmount().unwrap();
    let scan = list_whiteouts(&fx.upper).unwrap();
    assert_eq!(
        hidden(&scan, l),
        v(&[("d/e", true), ("d/e/g", false), ("k", false), ("t/e", true), ("t/e/g", false), ("x", true)])
    );
}

#[test]
fn mkdir_over_a_dir_whiteout_is_opaque() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["d/a", "d/s/t"]);
    let g = fx.mount(&u, &[]);
    fs::rename(fx.m("d"), fx.m("d2")).unwrap();
    fs::create_dir(fx.m("d")).unwrap();
    fs::write(fx.m("d/new"), b"n").unwrap();
    let seen: Vec<_> = fs::read_dir(fx.m("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(seen, ["new"]);
    assert!(!exists(&fx.m("d/a")));
    g.unmount().unwrap();
    assert_eq!(hidden(&list_whiteouts(&fx.upper).unwrap(), l), v(&[("d", true)]));
    assert!(fx.u("d/new").is_file());
}

#[test]
fn modify_lower_file_copies_up_with_lower_modes() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["a/b/c/f"]);
    for (p, mode) in [("a", 0o750), ("a/b", 0o711), ("a/b/c", 0o700), ("a/b/c/f", 0o640)] {
        fs::set_permissions(fx.lower.join(p), fs::Permissions::from_mode(mode)).unwrap();
    }
    let owned = rustix::process::geteuid().is_root();
    if owned {
        std::os::unix::fs::chown(fx.lower.join("a/b"), Some(1000), Some(1000)).unwrap();
    }
    let scan = fx.run(&u, |m| {
        use std::io::Write;
        fs::OpenOptions::new().append(true).open(m.join("a/b/c/f")).unwrap().write_all(b"more").unwrap();
    });
    assert_eq!(hidden(&scan, l), v(&[]));
    let t = tree(&fx.upper, true);
    assert_eq!(t["a"], ('d', 0o750, 0));
    assert_eq!(t["a/b"], ('d', 0o711, 0));
    assert_eq!(t["a/b/c"], ('d', 0o700, 0));
    assert_eq!(t["a/b/c/f"], ('f', 0o640, "a/b/c/f".len() as u64 + 4));
    if owned {
        assert_eq!(fs::metadata(fx.u("a/b")).unwrap().uid(), 1000);
    }
}

#[test]
fn chmod_lower_file_copies_up() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["a/f"]);
    let mtime = fs::metadata(fx.lower.join("a/f")).unwrap().mtime() - 5000;
    set_mtime(&fx.lower.join("a/f"), mtime);
    let scan = fx.run(&u, |m| fs::set_permissions(m.join("a/f"), fs::Permissions::from_mode(0o600)).unwrap());
    assert_eq!(hidden(&scan, l), v(&[]));
    let md = fs::metadata(fx.u("a/f")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o600);
    assert_eq!(md.mtime(), mtime);
}

#[test]
fn delete_in_both_layers_and_upper_only() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["f", "dd/x", "g"]);
    let scan = fx.run(&u, |m| {
        fs::write(m.join("u"), b"upper only").unwrap();
        fs::remove_file(m.join("u")).unwrap();
        fs::write(m.join("f"), b"modified").unwrap();
        assert!(fx.u("f").exists());
        fs::remove_file(m.join("f")).unwrap();
        fs::write(m.join("dd/x"), b"changed").unwrap();
        fs::remove_dir_all(m.join("dd")).unwrap();
    });
    assert_eq!(hidden(&scan, l), v(&[("dd", true), ("dd/x", false), ("f", false)]));
    assert!(tree(&fx.upper, true).is_empty());
}

#[test]
fn deleting_an_open_file_goes_through_fuse_hidden() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["f"]);
    let g = fx.mount(&u, &[]);
    let open = fs::File::open(fx.m("f")).unwrap();
    fs::remove_file(fx.m("f")).unwrap();
    let upper_names = || names(&tree(&fx.upper, true));
    let during = upper_names();
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(during[0].starts_with(".fuse_hidden"), "{during:?}");
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !upper_names().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(upper_names().is_empty(), "{:?}", upper_names());
    g.unmount().unwrap();
    assert_eq!(hidden(&list_whiteouts(&fx.upper).unwrap(), l), v(&[("f", false)]));
}

#[test]
fn hide_meta_files_keeps_the_layout() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["f", "d/e/g"]);
    let g = fx.mount(&u, &["hide_meta_files"]);
    fs::remove_file(fx.m("f")).unwrap();
    fs::remove_dir_all(fx.m("d")).unwrap();
    let root: Vec<_> = fs::read_dir(&fx.merged).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(root.is_empty(), "meta dir hidden from readdir: {root:?}");
    g.unmount().unwrap();
    assert_eq!(
        hidden(&list_whiteouts(&fx.upper).unwrap(), l),
        v(&[("d", true), ("d/e", true), ("d/e/g", false), ("f", false)])
    );
}

// ---------------------------------------------------------------- emulation fidelity

/// Lower content shared by the fidelity tests.
const LOWER: &[&str] = &["f", "d/a", "d/e/b", "d/e/f/c", "d/empty/", "x/", "n/m/o", "keep", "k/l"];

/// Deletes through the real union and, separately, writes the same markers with
/// create_whiteout/create_dir_whiteout: the meta trees (types, modes, sizes) must be identical.
#[test]
fn emulated_markers_are_byte_for_byte_the_real_ones() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let real = Fx::with_lower(LOWER);
    real.run(&u, |m| {
        fs::remove_file(m.join("f")).unwrap();
        fs::remove_dir_all(m.join("d")).unwrap();
        fs::remove_dir(m.join("x")).unwrap();
        fs::remove_file(m.join("n/m/o")).unwrap();
    });

    let emu = Fx::with_lower(LOWER);
    create_whiteout(&emu.upper, l, &rp("f")).unwrap();
    // `rm -r d`: children first, one marker per entry.
    for p in ["d/a", "d/e/b", "d/e/f/c"] {
        create_whiteout(&emu.upper, l, &rp(p)).unwrap();
    }
    for p in ["d/e/f", "d/e", "d/empty", "d"] {
        create_dir_whiteout(&emu.upper, l, &rp(p)).unwrap();
    }
    create_dir_whiteout(&emu.upper, l, &rp("x")).unwrap();
    create_whiteout(&emu.upper, l, &rp("n/m/o")).unwrap();

    assert_eq!(tree(&emu.upper, false), tree(&real.upper, false));
    assert_eq!(list_whiteouts(&emu.upper).unwrap().whiteouts, list_whiteouts(&real.upper).unwrap().whiteouts);

    // Mounted, both show the same merged view.
    let merged_view = |fx: &Fx| {
        let g = fx.mount(&u, &[]);
        let t = tree(&fx.merged, true);
        g.unmount().unwrap();
        t
    };
    let view = merged_view(&emu);
    assert_eq!(names(&view), ["k", "k/l", "keep", "n", "n/m"]);
    assert_eq!(view, merged_view(&real));
}

/// Markers written while unmounted hide the lower entries once mounted; removing them
/// (mounted) makes the lower entries visible again.
#[test]
fn created_whiteouts_hide_and_removed_ones_unhide() {
    let Some(u) = union() else { return };
    let l = layout(&u);
    let fx = Fx::with_lower(&["f", "d/x", "d/y/z", "e/g", "e/h"]);
    create_whiteout(&fx.upper, l, &rp("f")).unwrap();
    create_dir_whiteout(&fx.upper, l, &rp("d")).unwrap();
    create_whiteout(&fx.upper, l, &rp("e/g")).unwrap();

    let g = fx.mount(&u, &[]);
    let root = || names(&tree(&fx.merged, true));
    assert_eq!(root(), ["e", "e/h"]);
    for p in ["f", "d", "d/x", "d/y/z", "e/g"] {
        assert!(!exists(&fx.m(p)), "{p} is hidden");
        assert!(is_hidden(&fx.upper, &rp(p)), "{p}");
    }
    assert!(!is_hidden(&fx.upper, &rp("e/h")));

    let scan = list_whiteouts(&fx.upper).unwrap();
    assert_eq!(hidden(&scan, l), v(&[("d", true), ("e/g", false), ("f", false)]));
    let f = scan.whiteouts.iter().find(|w| w.path.to_str() == Some("f")).unwrap();
    remove_whiteout(&fx.upper, f).unwrap();
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"f", "visible immediately, while mounted");
    assert!(remove_whiteout_at(&fx.upper, &rp("d")).unwrap());
    assert_eq!(fs::read(fx.m("d/y/z")).unwrap(), b"d/y/z");
    assert!(remove_whiteout_at(&fx.upper, &rp("e/g")).unwrap());
    assert!(!remove_whiteout_at(&fx.upper, &rp("e/g")).unwrap());
    assert_eq!(root(), ["d", "d/x", "d/y", "d/y/z", "e", "e/g", "e/h", "f"]);
    g.unmount().unwrap();
    // Mirror dir `e` was pruned; the meta dir itself may stay.
    assert!(!fx.upper.join(l.meta_dir()).join("e").exists());
}

/// After a real `rm -r`, removing only the root marker shows the directory again with its
/// children still hidden; removing all markers restores the lower tree.
#[test]
fn removing_real_markers_restores_the_lower_tree() {
    let Some(u) = union() else { return };
    let fx = Fx::with_lower(&["d/a", "d/e/b", "d/h", "top"]);
    let g = fx.mount(&u, &[]);
    fs::remove_dir_all(fx.m("d")).unwrap();
    fs::remove_file(fx.m("top")).unwrap();
    assert!(names(&tree(&fx.merged, true)).is_empty());
    let scan = list_whiteouts(&fx.upper).unwrap();
    let d = scan.whiteouts.iter().find(|w| w.path.to_str() == Some("d")).unwrap();
    remove_whiteout(&fx.upper, d).unwrap();
    assert_eq!(names(&tree(&fx.merged, true)), ["d"]);
    for w in &scan.whiteouts {
        remove_whiteout(&fx.upper, w).unwrap();
    }
    assert_eq!(names(&tree(&fx.merged, true)), ["d", "d/a", "d/e", "d/e/b", "d/h", "top"]);
    g.unmount().unwrap();
    assert_eq!(list_whiteouts(&fx.upper).unwrap(), WhiteoutScan::default());
}

// ---------------------------------------------------------------- the mount guard

#[test]
fn mount_guard_lifecycle() {
    let Some(u) = union() else { return };
    let fx = Fx::with_lower(&["f"]);
    let merged = fs::canonicalize(&fx.merged).unwrap();
    let g = fx.mount(&u, &[]);
    let pid = g.pid().expect("a pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(is_mounted(&merged).unwrap());
    assert_eq!(g.merged(), merged);
    drop(g);
    assert!(!is_mounted(&merged).unwrap(), "Drop unmounts");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "Drop reaps the process");

    // Mounting twice at the same place is refused.
    let g = fx.mount(&u, &[]);
    let err = MountGuard::mount(&u, &fx.upper, &fx.lower, &fx.merged, &[]).unwrap_err();
    assert!(err.to_string().contains("already mounted"), "{err}");
    g.unmount().unwrap();
}

#[test]
fn mount_guard_detects_and_cleans_up_a_dead_union() {
    let Some(u) = union() else { return };
    let fx = Fx::with_lower(&["f"]);
    let merged = fs::canonicalize(&fx.merged).unwrap();
    let mut g = fx.mount(&u, &[]);
    assert_eq!(g.try_wait().unwrap(), None);
    let pid = g.pid().unwrap();
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = g.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "death not detected");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    assert_eq!(g.pid(), None, "no pid once the process is gone");
    assert!(is_mounted(&merged).unwrap(), "a dead union leaves its mount behind");
    g.unmount().expect("unmount a dead union");
    assert!(!is_mounted(&merged).unwrap());
}

#[test]
fn mount_errors_name_the_problem() {
    let Some(u) = union() else { return };
    let fx = Fx::new();
    let err = MountGuard::mount(&u, &fx.upper, &fx.lower.join("missing"), &fx.merged, &[]).unwrap_err();
    assert!(matches!(err, UnionError::Io { .. }) && err.to_string().contains("missing"), "{err}");
    let colon = fx.lower.join("a:b");
    fs::create_dir(&colon).unwrap();
    let err = MountGuard::mount(&u, &fx.upper, &colon, &fx.merged, &[]).unwrap_err();
    assert!(err.to_string().contains("a:b"), "{err}");
    let err = MountGuard::mount(&u, &fx.upper, &fx.lower, &fx.merged, &["no_such_option".into()]).unwrap_err();
    assert!(matches!(err, UnionError::Mount { .. }), "{err}");
    assert!(err.to_string().contains("no_such_option"), "stderr is reported: {err}");
    assert!(!is_mounted(&fs::canonicalize(&fx.merged).unwrap()).unwrap());
}

fn set_mtime(p: &Path, secs: i64) {
    let f = fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs as u64)).unwrap();
}
