//! Every operation on ordinary (non-hostile) trees.

mod common;

use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::{rp, ts};
use cs_safe_fs::{FileKind, FsError, RelPath, SafeRoot, Stat};

fn setup() -> (tempfile::TempDir, SafeRoot) {
    let t = tempfile::tempdir().unwrap();
    let root = SafeRoot::open(t.path()).unwrap();
    (t, root)
}

fn mtime_of(p: &Path) -> (i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn open_rejects_missing_and_non_directories() {
    let t = tempfile::tempdir().unwrap();
    assert!(SafeRoot::open(&t.path().join("nope")).unwrap_err().is_not_found());
    std::fs::write(t.path().join("f"), b"").unwrap();
    assert!(matches!(SafeRoot::open(&t.path().join("f")), Err(FsError::NotADirectory { .. })));
    let r = SafeRoot::open(t.path()).unwrap();
    assert_eq!(r.path(), t.path());
}

#[test]
fn lstat_kinds_and_missing() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    std::fs::write(t.path().join("d/f"), b"hello").unwrap();
    std::os::unix::fs::symlink("f", t.path().join("d/l")).unwrap();

    let f = root.lstat(&rp("d/f")).unwrap().unwrap();
    assert_eq!(f.kind, FileKind::File);
    assert_eq!(f.size, 5);
    assert_eq!(f, Stat::from_metadata(&std::fs::symlink_metadata(t.path().join("d/f")).unwrap()));
    assert_eq!(root.lstat(&rp("d")).unwrap().unwrap().kind, FileKind::Dir);
    let l = root.lstat(&rp("d/l")).unwrap().unwrap();
    assert_eq!(l.kind, FileKind::Symlink);
    assert_eq!(l.size, 1);
    assert_eq!(root.lstat(&rp("d/missing")).unwrap(), None);
    assert_eq!(root.lstat(&rp("missing/x/y")).unwrap(), None);
}

#[test]
fn write_temp_preserves_content_mode_and_nanosecond_mtime() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    // Bigger than the copy buffer, delivered in odd-sized chunks.
    let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
    let mut reader = Chunky { data: &data, pos: 0, chunk: 7777 };
    let mtime = ts(1_600_000_000, 123_456_789);
    let (tmp, st, n) = root.write_temp(&rp("d/target"), ".target.tmp", &mut reader, 0o640, mtime, true).unwrap();
    assert_eq!(tmp.to_str(), Some("d/.target.tmp"));
    assert_eq!(n, data.len() as u64);
    assert_eq!(st.kind, FileKind::File);
    assert_eq!(st.mode, 0o640);
    assert_eq!(st.size, data.len() as u64);
    assert_eq!(st.mtime, mtime);
    assert_eq!(root.lstat(&tmp).unwrap(), Some(st));
    assert!(!t.path().join("d/target").exists());

    root.rename(&tmp, &rp("d/target")).unwrap();
    root.sync_dir(Some(&rp("d"))).unwrap();
    let mut back = Vec::new();
    root.open_file(&rp("d/target")).unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    let m = std::fs::metadata(t.path().join("d/target")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_600_000_000, 123_456_789));
}

#[test]
fn write_temp_special_modes_and_top_level() {
    let (t, root) = setup();
    let (tmp, st, n) = root.write_temp(&rp("top"), "tmp1", &mut &b""[..], 0o4751, ts(0, 0), false).unwrap();
    assert_eq!((tmp.to_str().unwrap(), n, st.size), ("tmp1", 0, 0));
    // fchmod is not subject to the umask; root may set setuid.
    assert_eq!(st.mode, 0o4751);
    assert_eq!(st.mtime, ts(0, 0));
    assert!(t.path().join("tmp1").is_file());
    // Negative (pre-1970) times survive too.
    let (tmp2, st2, _) = root.write_temp(&rp("top"), "tmp2", &mut &b"x"[..], 0o600, ts(-86_400, 5), false).unwrap();
    assert_eq!(st2.mtime, ts(-86_400, 5));
    assert_eq!(root.lstat(&tmp2).unwrap().unwrap().mtime, ts(-86_400, 5));
}

#[test]
fn write_temp_errors_leave_nothing_behind() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    // A reader that fails half way: the temp file is removed.
    let mut bad = Failing { left: 200_000 };
    let err = root.write_temp(&rp("d/x"), "tmp", &mut bad, 0o644, ts(1, 0), false).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::ConnectionReset), "{err:?}");
    assert_eq!(std::fs::read_dir(t.path().join("d")).unwrap().count(), 0);

    // Existing temp name (any kind): AlreadyExists, existing entry untouched.
    std::fs::write(t.path().join("d/tmp"), b"keep").unwrap();
    let err = root.write_temp(&rp("d/x"), "tmp", &mut &b"new"[..], 0o644, ts(1, 0), false).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::AlreadyExists));
    assert_eq!(std::fs::read(t.path().join("d/tmp")).unwrap(), b"keep");

    // Parent missing.
    let err = root.write_temp(&rp("nope/x"), "tmp", &mut &b""[..], 0o644, ts(1, 0), false).unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    // Temp names that are not one component.
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let err = root.write_temp(&rp("d/x"), bad, &mut &b""[..], 0o644, ts(1, 0), false).unwrap_err();
        assert!(matches!(err, FsError::InvalidName { .. }), "{bad:?}: {err:?}");
        let err = root.symlink_temp(&rp("d/x"), bad, "t", ts(1, 0)).unwrap_err();
        assert!(matches!(err, FsError::InvalidName { .. }), "{bad:?}: {err:?}");
    }
    let names: Vec<_> = std::fs::read_dir(t.path().join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["tmp"]);

    // An mtime the kernel rejects: error, temp removed.
    let err = root.write_temp(&rp("d/x"), "tmp3", &mut &b"z"[..], 0o644, ts(1, 2_000_000_000), false).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::InvalidInput), "{err:?}");
    assert!(!t.path().join("d/tmp3").exists());
}

#[test]
fn symlink_temp_and_read_link() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    let mtime = ts(1_500_000_000, 987_654_321);
    let tmp = root.symlink_temp(&rp("d/l"), ".l.tmp", "../some/where é", mtime).unwrap();
    assert_eq!(tmp.to_str(), Some("d/.l.tmp"));
    let st = root.lstat(&tmp).unwrap().unwrap();
    assert_eq!(st.kind, FileKind::Symlink);
    assert_eq!(st.mtime, mtime);
    assert_eq!(root.read_link(&tmp).unwrap(), "../some/where é");
    assert_eq!(std::fs::read_link(t.path().join("d/.l.tmp")).unwrap(), Path::new("../some/where é"));
    // Existing name.
    let err = root.symlink_temp(&rp("d/l"), ".l.tmp", "x", mtime).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::AlreadyExists));
    // Bad mtime: nothing left behind.
    assert!(root.symlink_temp(&rp("d/l"), "t2", "x", ts(0, 1_000_000_000)).is_err());
    assert!(std::fs::symlink_metadata(t.path().join("d/t2")).is_err());
    // read_link of a non-symlink is an error.
    std::fs::write(t.path().join("d/f"), b"").unwrap();
    assert_eq!(root.read_link(&rp("d/f")).unwrap_err().io_kind(), Some(ErrorKind::InvalidInput));
}

#[test]
fn names_and_link_targets_are_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (t, root) = setup();
    let b = |s: &[u8]| RelPath::new(s).unwrap();
    // A symlink target that is not UTF-8 reads back as its bytes.
    std::os::unix::fs::symlink(OsStr::from_bytes(b"bad\xff"), t.path().join("l")).unwrap();
    assert_eq!(root.read_link(&rp("l")).unwrap().as_bytes(), b"bad\xff");
    // Latin-1 and invalid UTF-8 names: create, write, list, rename, symlink, remove.
    root.create_dir_all(&b(b"caf\xe9/\xff\xfe"), 0o755).unwrap();
    let target = b(b"caf\xe9/\xff\xfe/f\xe9.txt");
    let (tmp, _, n) = root.write_temp(&target, "tmp1", &mut &b"data"[..], 0o644, ts(1, 0), false).unwrap();
    assert_eq!((tmp.as_bytes(), n), (&b"caf\xe9/\xff\xfe/tmp1"[..], 4));
    root.rename(&tmp, &target).unwrap();
    assert_eq!(std::fs::read(t.path().join(OsStr::from_bytes(b"caf\xe9/\xff\xfe/f\xe9.txt"))).unwrap(), b"data");
    let names: Vec<Vec<u8>> =
        root.read_dir(Some(&b(b"caf\xe9/\xff\xfe"))).unwrap().into_iter().map(|(n, _)| n.as_bytes().to_vec()).collect();
    assert_eq!(names, [b"f\xe9.txt".to_vec()]);
    let link = root.symlink_temp(&b(b"caf\xe9/l\xe9"), "t", OsStr::from_bytes(b"f\xe9.txt"), ts(1, 0)).unwrap();
    assert_eq!(root.read_link(&link).unwrap().as_bytes(), b"f\xe9.txt");
    assert!(root.same_content(&link, &link).unwrap());
    // Errors show the name escaped, never raw or mangled.
    let err = root.create_dir(&b(b"caf\xe9"), 0o755).unwrap_err().to_string();
    assert!(err.contains("\"caf\\xE9\""), "{err}");
    root.remove_tree(&b(b"caf\xe9")).unwrap();
    assert!(root.lstat(&b(b"caf\xe9")).unwrap().is_none());
}

#[test]
fn create_dir_and_create_dir_all() {
    let (t, root) = setup();
    root.create_dir(&rp("a"), 0o755).unwrap();
    assert!(t.path().join("a").is_dir());
    let err = root.create_dir(&rp("a"), 0o755).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::AlreadyExists));
    assert!(root.create_dir(&rp("missing/b"), 0o755).unwrap_err().is_not_found());

    root.create_dir_all(&rp("a/b/c/d"), 0o700).unwrap();
    assert!(t.path().join("a/b/c/d").is_dir());
    let m = std::fs::metadata(t.path().join("a/b/c")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777 & !0o077, 0o700);
    // Idempotent on existing directories.
    root.create_dir_all(&rp("a/b/c/d"), 0o700).unwrap();
    root.create_dir_all(&rp("a"), 0o700).unwrap();
    // A file on the way, or as the leaf.
    std::fs::write(t.path().join("a/f"), b"").unwrap();
    common::assert_not_a_directory(root.create_dir_all(&rp("a/f/x"), 0o755));
    common::assert_not_a_directory(root.create_dir_all(&rp("a/f"), 0o755));
}

#[test]
fn set_mode_and_set_mtime() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    std::fs::write(t.path().join("d/f"), b"x").unwrap();
    std::os::unix::fs::symlink("f", t.path().join("d/l")).unwrap();

    root.set_mode(&rp("d/f"), 0o604).unwrap();
    assert_eq!(root.lstat(&rp("d/f")).unwrap().unwrap().mode, 0o604);
    root.set_mode(&rp("d"), 0o711).unwrap();
    assert_eq!(root.lstat(&rp("d")).unwrap().unwrap().mode, 0o711);
    // Only the permission bits are taken.
    root.set_mode(&rp("d/f"), 0o170_644).unwrap();
    assert_eq!(root.lstat(&rp("d/f")).unwrap().unwrap().mode, 0o644);
    root.set_mode(&rp("d"), 0o755).unwrap();

    let m1 = ts(1_234_567_890, 1);
    root.set_mtime(&rp("d/f"), m1).unwrap();
    assert_eq!(root.lstat(&rp("d/f")).unwrap().unwrap().mtime, m1);
    // On a symlink: the link's own mtime; the target keeps its own.
    let m2 = ts(1_111_111_111, 999_999_999);
    root.set_mtime(&rp("d/l"), m2).unwrap();
    assert_eq!(root.lstat(&rp("d/l")).unwrap().unwrap().mtime, m2);
    assert_eq!(mtime_of(&t.path().join("d/f")), (1_234_567_890, 1));
    root.set_mtime(&rp("d"), m2).unwrap();
    assert_eq!(mtime_of(&t.path().join("d")), (1_111_111_111, 999_999_999));

    assert!(root.set_mode(&rp("d/missing"), 0o644).unwrap_err().is_not_found());
    assert!(root.set_mtime(&rp("d/missing"), m1).unwrap_err().is_not_found());
}

#[test]
fn remove_file_dir_and_tree() {
    let (t, root) = setup();
    let p = t.path();
    std::fs::create_dir_all(p.join("t/a/b/c")).unwrap();
    std::fs::create_dir_all(p.join("t/empty")).unwrap();
    for f in ["t/f1", "t/a/f2", "t/a/b/f3", "t/a/b/c/f4"] {
        std::fs::write(p.join(f), f.as_bytes()).unwrap();
    }
    std::os::unix::fs::symlink("a/b", p.join("t/ldir")).unwrap();
    std::os::unix::fs::symlink("f1", p.join("t/lfile")).unwrap();
    std::fs::write(p.join("keep"), b"keep").unwrap();

    root.remove_file(&rp("t/f1")).unwrap();
    assert!(!p.join("t/f1").exists());
    assert!(root.remove_file(&rp("t/f1")).unwrap_err().is_not_found());
    assert_eq!(root.remove_file(&rp("t/a")).unwrap_err().io_kind(), Some(ErrorKind::IsADirectory));
    root.remove_dir(&rp("t/empty")).unwrap();
    assert!(!p.join("t/empty").exists());
    assert_eq!(root.remove_dir(&rp("t/a")).unwrap_err().io_kind(), Some(ErrorKind::DirectoryNotEmpty));
    assert!(p.join("t/a/b/c/f4").exists());

    root.remove_tree(&rp("t")).unwrap();
    assert!(!p.join("t").exists());
    assert_eq!(std::fs::read(p.join("keep")).unwrap(), b"keep");
    assert!(root.remove_tree(&rp("t")).unwrap_err().is_not_found());
    // remove_tree of a file is remove_file.
    root.remove_tree(&rp("keep")).unwrap();
    assert!(!p.join("keep").exists());
}

#[test]
fn remove_tree_deep_and_wide() {
    let (t, root) = setup();
    let mut deep = t.path().join("deep");
    for i in 0..150 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"x").unwrap();
    std::fs::create_dir(t.path().join("wide")).unwrap();
    for i in 0..2000 {
        std::fs::write(t.path().join(format!("wide/f{i}")), b"").unwrap();
    }
    root.remove_tree(&rp("deep")).unwrap();
    root.remove_tree(&rp("wide")).unwrap();
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn rename_replaces_files_symlinks_and_empty_dirs() {
    let (t, root) = setup();
    let p = t.path();
    std::fs::create_dir(p.join("d")).unwrap();
    std::fs::write(p.join("d/new"), b"new").unwrap();
    std::fs::write(p.join("d/old"), b"old").unwrap();
    root.rename(&rp("d/new"), &rp("d/old")).unwrap();
    assert_eq!(std::fs::read(p.join("d/old")).unwrap(), b"new");
    assert!(!p.join("d/new").exists());

    // Over a symlink: the link is replaced, its target untouched.
    std::fs::write(p.join("target"), b"target").unwrap();
    std::os::unix::fs::symlink("../target", p.join("d/link")).unwrap();
    root.rename(&rp("d/old"), &rp("d/link")).unwrap();
    assert!(std::fs::symlink_metadata(p.join("d/link")).unwrap().is_file());
    assert_eq!(std::fs::read(p.join("d/link")).unwrap(), b"new");
    assert_eq!(std::fs::read(p.join("target")).unwrap(), b"target");

    // A symlink is moved as itself.
    std::os::unix::fs::symlink("target", p.join("l2")).unwrap();
    root.rename(&rp("l2"), &rp("d/l2")).unwrap();
    assert_eq!(std::fs::read_link(p.join("d/l2")).unwrap(), Path::new("target"));

    // A directory over an empty directory, across parents.
    std::fs::create_dir_all(p.join("src/x")).unwrap();
    std::fs::create_dir(p.join("d/empty")).unwrap();
    root.rename(&rp("src"), &rp("d/empty")).unwrap();
    assert!(p.join("d/empty/x").is_dir());
    // ... but not over a non-empty one.
    std::fs::create_dir_all(p.join("src2")).unwrap();
    let err = root.rename(&rp("src2"), &rp("d")).unwrap_err();
    assert!(matches!(err.io_kind(), Some(ErrorKind::DirectoryNotEmpty | ErrorKind::AlreadyExists)), "{err:?}");
    assert!(root.rename(&rp("missing"), &rp("x")).unwrap_err().is_not_found());
}

#[test]
fn rename_noreplace_refuses_existing_targets() {
    let (t, root) = setup();
    let p = t.path();
    std::fs::write(p.join("a"), b"a").unwrap();
    std::fs::write(p.join("b"), b"b").unwrap();
    let err = root.rename_noreplace(&rp("a"), &rp("b")).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::AlreadyExists));
    assert_eq!(std::fs::read(p.join("a")).unwrap(), b"a");
    assert_eq!(std::fs::read(p.join("b")).unwrap(), b"b");
    // A dangling symlink counts as existing.
    std::os::unix::fs::symlink("nowhere", p.join("dangling")).unwrap();
    let err = root.rename_noreplace(&rp("a"), &rp("dangling")).unwrap_err();
    assert_eq!(err.io_kind(), Some(ErrorKind::AlreadyExists));
    root.rename_noreplace(&rp("a"), &rp("c")).unwrap();
    assert_eq!(std::fs::read(p.join("c")).unwrap(), b"a");
    assert!(!p.join("a").exists());
}

#[test]
fn read_dir_lists_sorted_entries_with_kinds() {
    let (t, root) = setup();
    let p = t.path();
    std::fs::create_dir_all(p.join("d/sub")).unwrap();
    std::fs::write(p.join("d/f"), b"").unwrap();
    std::os::unix::fs::symlink("sub", p.join("d/l")).unwrap();
    let fifo = std::ffi::CString::new(p.join("d/fifo").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let got = root.read_dir(Some(&rp("d"))).unwrap();
    let want: Vec<(std::ffi::OsString, FileKind)> = vec![
        ("f".into(), FileKind::File),
        ("fifo".into(), FileKind::Other),
        ("l".into(), FileKind::Symlink),
        ("sub".into(), FileKind::Dir),
    ];
    assert_eq!(got, want);
    assert_eq!(root.read_dir(None).unwrap(), vec![("d".into(), FileKind::Dir)]);
    assert_eq!(root.read_dir(Some(&rp("d/sub"))).unwrap(), vec![]);
    common::assert_not_a_directory(root.read_dir(Some(&rp("d/f"))));
    assert!(root.read_dir(Some(&rp("nope"))).unwrap_err().is_not_found());
}

#[test]
fn open_file_refuses_non_files_without_blocking() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    let fifo = std::ffi::CString::new(t.path().join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    // Would block forever without O_NONBLOCK (no writer).
    assert!(matches!(root.open_file(&rp("fifo")), Err(FsError::NotAFile { .. })));
    assert!(matches!(root.open_file(&rp("d")), Err(FsError::NotAFile { .. })));
    assert!(root.open_file(&rp("missing")).unwrap_err().is_not_found());
}

#[test]
fn same_content_compares_files_and_symlinks() {
    let (t, root) = setup();
    let p = t.path();
    let big: Vec<u8> = (0..400_000u32).map(|i| (i % 256) as u8).collect();
    let mut big2 = big.clone();
    *big2.last_mut().unwrap() ^= 1;
    std::fs::write(p.join("a"), &big).unwrap();
    std::fs::write(p.join("b"), &big).unwrap();
    std::fs::write(p.join("c"), &big2).unwrap();
    std::fs::write(p.join("short"), &big[..1000]).unwrap();
    std::fs::write(p.join("e1"), b"").unwrap();
    std::fs::write(p.join("e2"), b"").unwrap();
    std::os::unix::fs::symlink("a", p.join("l1")).unwrap();
    std::os::unix::fs::symlink("a", p.join("l2")).unwrap();
    std::os::unix::fs::symlink("b", p.join("l3")).unwrap();
    std::fs::create_dir(p.join("d1")).unwrap();
    std::fs::create_dir(p.join("d2")).unwrap();

    let same = |a: &str, b: &str| root.same_content(&rp(a), &rp(b)).unwrap();
    assert!(same("a", "b"));
    assert!(same("a", "a"));
    assert!(same("e1", "e2"));
    assert!(!same("a", "c"), "differs in the last byte only");
    assert!(!same("a", "short"));
    assert!(same("l1", "l2"));
    assert!(!same("l1", "l3"));
    assert!(!same("a", "l1"), "a file and a symlink to it differ");
    assert!(!same("l1", "a"));
    assert!(!same("d1", "d2"));
    assert!(!same("a", "d1"));
    assert!(root.same_content(&rp("a"), &rp("missing")).unwrap_err().is_not_found());
}

#[test]
fn stat_from_metadata_matches_lstat() {
    let (t, root) = setup();
    std::fs::create_dir(t.path().join("d")).unwrap();
    std::fs::write(t.path().join("d/f"), b"12345").unwrap();
    std::os::unix::fs::symlink("f", t.path().join("d/l")).unwrap();
    for name in ["d", "d/f", "d/l"] {
        let m = std::fs::symlink_metadata(t.path().join(name)).unwrap();
        let s = root.lstat(&rp(name)).unwrap().unwrap();
        assert_eq!(Stat::from_metadata(&m), s, "{name}");
        assert_eq!(s.ino, m.ino());
        assert_eq!(s.nlink, m.nlink());
    }
}

#[test]
fn errors_name_the_operation_root_and_path() {
    let (t, root) = setup();
    let err = root.remove_file(&rp("a/b")).unwrap_err();
    assert_eq!(err.op(), "remove_file");
    assert_eq!(err.path(), "a/b");
    let msg = err.to_string();
    assert!(msg.contains("remove_file") && msg.contains("a/b"), "{msg}");
    assert!(msg.contains(&*t.path().to_string_lossy()), "{msg}");
    assert!(std::error::Error::source(&err).is_some());
}

/// Delivers `data` at most `chunk` bytes at a time.
struct Chunky<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Delivers `left` zero bytes, then fails.
struct Failing {
    left: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::new(ErrorKind::ConnectionReset, "peer went away"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(0);
        self.left -= n;
        Ok(n)
    }
}
