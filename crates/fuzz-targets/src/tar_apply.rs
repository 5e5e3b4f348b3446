//! Target `tar_apply`: unpack into a real directory through [`SafeRoot`],
//! the way a round applies a stream, and check nothing escaped the root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cs_protocol::{EntryKind, RelPath};
use cs_safe_fs::{FsError, SafeRoot};
use cs_tarstream::unpack;

use crate::tar::{check_header, compress, small_limits};

/// Names of entries planted in the root before applying: symlinks that
/// point out of it, so that entries beneath them (`up/x`, `abs/x`) try
/// to escape.
pub const PLANTED: &[(&str, &str)] = &[
    ("up", ".."),
    ("upup", "../.."),
    ("abs", "@OUTSIDE@"),
    ("abs_file", "@OUTSIDE@/bait"),
    ("self", "."),
    ("loop", "loop"),
];

/// A snapshot of a tree without following symlinks: path -> (kind, size,
/// mtime, symlink target).
type Snapshot = BTreeMap<PathBuf, (u32, u64, i64, Option<PathBuf>)>;

fn snapshot(dir: &Path, skip: &Path, out: &mut Snapshot) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p == skip {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let link = m.file_type().is_symlink().then(|| fs::read_link(&p).ok()).flatten();
        out.insert(p.clone(), (m.mode() & 0o170000, m.size(), m.mtime(), link));
        if m.file_type().is_dir() {
            snapshot(&p, skip, out);
        }
    }
}

/// The sandbox: `outer/` holds `bait` (a file), `outside/` (a directory)
/// and `root/`, the SafeRoot; the planted symlinks are in `root/`.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub outer: PathBuf,
    pub root_path: PathBuf,
    pub root: SafeRoot,
    before: Snapshot,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::Builder::new().prefix("cs-fuzz-apply-").tempdir().expect("temp dir");
        let outer = tmp.path().canonicalize().expect("canonical temp dir");
        let root_path = outer.join("root");
        fs::create_dir(&root_path).expect("mkdir root");
        fs::write(outer.join("bait"), b"outside the root").expect("bait");
        fs::create_dir(outer.join("outside")).expect("mkdir outside");
        fs::write(outer.join("outside").join("bait"), b"outside the root").expect("bait");
        fs::create_dir(root_path.join("sub")).expect("mkdir sub");
        fs::write(root_path.join("sub").join("file"), b"inside").expect("file");
        let outside = outer.join("outside");
        for (name, target) in PLANTED {
            let target = target.replace("@OUTSIDE@", outside.to_str().expect("UTF-8 temp path"));
            std::os::unix::fs::symlink(target, root_path.join(name)).expect("plant symlink");
        }
        let root = SafeRoot::open(&root_path).expect("open root");
        let mut before = Snapshot::new();
        snapshot(&outer, &root_path, &mut before);
        Sandbox { _tmp: tmp, outer, root_path, root, before }
    }

    /// Panics if anything outside `root/` was created, changed or removed.
    pub fn assert_outside_untouched(&self) {
        let mut after = Snapshot::new();
        snapshot(&self.outer, &self.root_path, &mut after);
        assert_eq!(after, self.before, "the tree outside the root changed");
        assert_eq!(fs::read(self.outer.join("bait")).ok().as_deref(), Some(&b"outside the root"[..]));
        let root_meta = fs::symlink_metadata(&self.root_path).expect("root still there");
        assert!(root_meta.is_dir(), "the root itself was replaced");
    }

    /// Panics unless `p` names an entry reached from the root through real
    /// directories only (no symlink among its ancestors), i.e. it is inside.
    pub fn assert_inside(&self, p: &RelPath) {
        let mut cur = self.root_path.clone();
        let comps: Vec<&std::ffi::OsStr> = p.components().collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let m = fs::symlink_metadata(&cur)
                .unwrap_or_else(|e| panic!("{p}: {} does not exist after a successful op: {e}", cur.display()));
            if i + 1 < comps.len() {
                assert!(m.is_dir(), "{p}: ancestor {} is not a real directory", cur.display());
            }
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// Whether a SafeRoot failure is an acceptable refusal (as opposed to a
/// failure that means the target broke its own contract).
fn acceptable(e: &FsError) -> bool {
    // Any error is a refusal: what matters is that nothing happened outside
    // the root, which is checked afterwards. Touch the accessors so that
    // they are fuzzed too.
    let _ = (e.to_string(), e.is_not_found(), e.io_kind(), e.op(), e.path());
    true
}

/// Applies one entry as a round does: parents with `create_dir_all`,
/// directories with `create_dir_all` + `set_mode` + `set_mtime`, files and
/// symlinks into a temp sibling then `rename` over the target. Checks
/// that every successful step landed inside the root.
fn apply_entry(sb: &Sandbox, h: &cs_tarstream::EntryHeader, data: &mut dyn std::io::Read, seq: usize) {
    let root = &sb.root;
    let p = &h.path;
    if let Some(parent) = p.parent() {
        match root.create_dir_all(&parent, 0o755) {
            Ok(()) => sb.assert_inside(&parent),
            Err(e) => {
                assert!(acceptable(&e));
                return;
            }
        }
    }
    match h.kind {
        EntryKind::Dir => {
            if root.create_dir_all(p, 0o755).is_ok() {
                sb.assert_inside(p);
                // Keep the owner's bits so the sandbox stays removable.
                if root.set_mode(p, h.mode | 0o700).is_ok() {
                    sb.assert_inside(p);
                }
                let _ = root.set_mtime(p, h.mtime);
            }
        }
        EntryKind::File | EntryKind::Symlink => {
            let tmp_name = format!(".cs-fuzz-tmp-{seq}");
            let staged = if h.kind == EntryKind::File {
                root.write_temp(p, &tmp_name, data, h.mode, h.mtime, false).map(|(tmp, st, n)| {
                    assert_eq!(n, h.size, "write_temp wrote {n} bytes of a {}-byte entry", h.size);
                    assert_eq!(st.size, n);
                    tmp
                })
            } else {
                root.symlink_temp(p, &tmp_name, h.link_target.as_deref().unwrap_or("x".as_ref()), h.mtime)
            };
            match staged {
                Ok(tmp) => {
                    assert_eq!(tmp.parent(), p.parent(), "temp not beside its target");
                    sb.assert_inside(&tmp);
                    match root.rename(&tmp, p) {
                        Ok(()) => {
                            sb.assert_inside(p);
                            let st = root.lstat(p).expect("lstat after rename").expect("renamed entry exists");
                            let want = if h.kind == EntryKind::File {
                                cs_safe_fs::FileKind::File
                            } else {
                                cs_safe_fs::FileKind::Symlink
                            };
                            assert_eq!(st.kind, want);
                        }
                        Err(e) => {
                            assert!(acceptable(&e));
                            root.remove_file(&tmp).expect("removing a temp that could not be renamed");
                        }
                    }
                }
                Err(e) => assert!(acceptable(&e)),
            }
        }
    }
}

/// Applies `stream` into a fresh sandbox and checks the outside is
/// untouched. Returns the number of entries applied.
pub fn apply_stream(stream: &[u8]) -> usize {
    let sb = Sandbox::new();
    let limits = small_limits();
    let mut seq = 0usize;
    let _ = unpack(stream, &limits, |h, r| {
        check_header(h, &limits);
        apply_entry(&sb, h, r, seq);
        seq += 1;
        Ok(())
    });
    sb.assert_outside_untouched();
    // No temp is left behind (each was renamed or removed).
    let mut inside = Snapshot::new();
    snapshot(&sb.root_path, Path::new("/nonexistent"), &mut inside);
    for p in inside.keys() {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(!name.starts_with(".cs-fuzz-tmp-"), "temp left behind: {}", p.display());
    }
    seq
}

/// The `tar_apply` target: `data` compressed (so the tar parser is reached)
/// is applied beneath a SafeRoot holding symlinks to outside; `data` is
/// also tried as a compressed stream when it is one. Panics if anything
/// outside the root is created, changed or removed, if a successful
/// operation's result is not beneath the root through real directories, or
/// if a temp file is left behind.
pub fn fuzz_tar_apply(data: &[u8]) {
    apply_stream(&compress(data));
    // Only streams that start like a zstd frame are worth a second sandbox.
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        apply_stream(data);
    }
}
