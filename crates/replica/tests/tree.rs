//! The placeholder tree: what it makes of each entry, the entries it refuses, and the
//! switch that never shows a half tree. On a plain temporary directory (user xattrs on
//! the root filesystem): no root needed.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::rel;
use cs_protocol::{Cursor, EntryKind, RelPath, SnapshotEntry, SnapshotReport, Timestamp};
use cs_replica::want::{Want, XATTR};
use cs_replica::{ReplicaError, SnapshotWriter, Tree};

fn e(path: &str, kind: EntryKind, mode: u32, size: u64) -> SnapshotEntry {
    SnapshotEntry {
        path: rel(path),
        kind,
        mode,
        size,
        mtime: Timestamp::new(1_600_000_000, 123_456_789),
        target: (kind == EntryKind::Symlink).then(|| b"../elsewhere".to_vec()),
    }
}

fn report(n: usize, seq: u64) -> SnapshotReport {
    SnapshotReport { entries: n as u64, cursor: Cursor { epoch: 7, seq }, ..Default::default() }
}

fn build(root: &Path, entries: &[SnapshotEntry], seq: u64) -> Tree {
    let mut w = SnapshotWriter::begin(root, None).unwrap();
    for x in entries {
        w.add(x).unwrap();
    }
    w.finish(&report(entries.len(), seq)).unwrap()
}

fn refused(entries: &[SnapshotEntry]) -> (String, ReplicaError) {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut w = SnapshotWriter::begin(tmp.path(), None).unwrap();
    for x in entries {
        if let Err(err) = w.add(x) {
            return (x.path.to_string(), err);
        }
    }
    panic!("every entry was accepted");
}

#[test]
fn placeholders_dirs_and_symlinks_carry_the_snapshots_metadata() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let entries = vec![
        e("d", EntryKind::Dir, 0o555, 0),
        e("d/f", EntryKind::File, 0o4755, 12345),
        e("d/l", EntryKind::Symlink, 0o777, 12),
        e("top", EntryKind::File, 0o444, 0),
    ];
    let t = build(tmp.path(), &entries, 3);
    assert_eq!(Tree::current(tmp.path()).unwrap().as_ref(), Some(&t));
    assert_eq!(t.cursor, Cursor { epoch: 7, seq: 3 });
    let f = fs::symlink_metadata(t.dir.join("d/f")).unwrap();
    assert_eq!((f.len(), f.blocks()), (12345, 0), "a sparse placeholder of P's size");
    assert_eq!(f.mode() & 0o7777, 0o755, "setuid is never applied");
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_600_000_000, 123_456_789));
    let mut buf = [0u8; 8192];
    let n = rustix::fs::lgetxattr(t.dir.join("d/f"), XATTR, &mut buf[..]).unwrap();
    let w = Want::decode(&buf[..n]).unwrap();
    assert_eq!((w.path, w.size), (rel("d/f"), 12345));
    let d = fs::symlink_metadata(t.dir.join("d")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o555);
    assert_eq!((d.mtime(), d.mtime_nsec()), (1_600_000_000, 123_456_789), "set after its children were made");
    assert_eq!(fs::read_link(t.dir.join("d/l")).unwrap().as_os_str(), "../elsewhere");
    assert_eq!(fs::symlink_metadata(t.dir.join("d/l")).unwrap().mtime(), 1_600_000_000);
    assert_eq!(fs::symlink_metadata(t.dir.join("top")).unwrap().mode() & 0o777, 0o444);
}

#[test]
fn hostile_entries_are_refused_naming_the_path() {
    let (p, err) = refused(&[
        e("a", EntryKind::Dir, 0o755, 0),
        e("a/l", EntryKind::Symlink, 0o777, 3),
        e("a/l/x", EntryKind::File, 0o644, 1),
    ]);
    assert_eq!(p, "a/l/x");
    assert!(err.to_string().contains("a/l/x") && err.to_string().contains("symlink"), "{err}");

    let (p, err) = refused(&[e("f", EntryKind::File, 0o644, 1), e("f/x", EntryKind::File, 0o644, 1)]);
    assert_eq!(p, "f/x");
    assert!(err.to_string().contains("f/x"), "{err}");

    let (p, err) = refused(&[e("f", EntryKind::File, 0o644, 1), e("f", EntryKind::File, 0o644, 1)]);
    assert_eq!(p, "f");
    assert!(err.to_string().contains("duplicate"), "{err}");

    let (p, err) = refused(&[
        e("d", EntryKind::Dir, 0o755, 0),
        e("x", EntryKind::File, 0o644, 1),
        e("d", EntryKind::Dir, 0o755, 0),
    ]);
    assert_eq!(p, "d");
    assert!(err.to_string().contains("duplicate"), "{err}");

    let (p, err) = refused(&[e("nodir/x", EntryKind::File, 0o644, 1)]);
    assert_eq!(p, "nodir/x");
    assert!(err.to_string().contains("not in the snapshot before it"), "{err}");

    let mut bad = e("l", EntryKind::Symlink, 0o777, 0);
    bad.target = None;
    let (p, _) = refused(&[bad]);
    assert_eq!(p, "l");

    for s in ["../x", "a/../b", "/abs", "", "a//b", "."] {
        assert!(RelPath::new(s).is_err(), "{s:?} must not even be a RelPath");
    }
}

#[test]
fn entries_out_of_depth_first_order_still_find_their_parent() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let entries = vec![
        e("a", EntryKind::Dir, 0o755, 0),
        e("b", EntryKind::Dir, 0o755, 0),
        e("a/x", EntryKind::File, 0o644, 1),
        e("b/y", EntryKind::File, 0o644, 1),
        e("a/c", EntryKind::Dir, 0o755, 0),
        e("a/c/z", EntryKind::File, 0o644, 1),
    ];
    let t = build(tmp.path(), &entries, 1);
    for p in ["a/x", "b/y", "a/c/z"] {
        assert!(t.dir.join(p).is_file(), "{p}");
    }
}

#[test]
fn an_interrupted_build_never_becomes_current_and_is_removed_by_the_next() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = tmp.path();
    let first = build(root, &[e("old", EntryKind::File, 0o644, 1)], 1);

    // A build dropped half way (as a kill -9 would leave it).
    let mut w = SnapshotWriter::begin(root, None).unwrap();
    w.add(&e("new", EntryKind::File, 0o644, 1)).unwrap();
    let half = w.build_dir();
    drop(w);
    assert_eq!(Tree::current(root).unwrap().as_ref(), Some(&first));
    assert!(half.exists());

    // A build whose stream was cut (fewer entries than P's report): refused, not switched.
    let mut w = SnapshotWriter::begin(root, None).unwrap();
    assert!(!half.exists(), "begin removes a leftover build");
    w.add(&e("new", EntryKind::File, 0o644, 1)).unwrap();
    let err = w.finish(&report(2, 2)).unwrap_err();
    assert!(err.to_string().contains("incomplete"), "{err}");
    assert_eq!(Tree::current(root).unwrap().as_ref(), Some(&first));

    // A complete one: current switches; the old tree stays until removed explicitly.
    let second = build(root, &[e("new", EntryKind::File, 0o644, 1)], 3);
    assert_eq!(Tree::current(root).unwrap().as_ref(), Some(&second));
    assert!(first.dir.join("old").exists(), "the previous tree is kept for the overlay mounted on it");
    let removed = Tree::remove_others(root, &[]).unwrap();
    assert_eq!(removed, vec![first.dir.clone()]);
    assert!(second.dir.join("new").exists());
    let names: Vec<_> = fs::read_dir(root).unwrap().map(|d| d.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "only current and its tree are left: {names:?}");
    assert_eq!(fs::metadata(root.join("current")).unwrap().permissions().mode() & 0o7000, 0);
}

/// A file filled in the previous tree whose snapshot entry still says P's size and mtime.
fn fill_by_hand(tree: &Tree, path: &str, content: &[u8]) {
    let p = tree.dir.join(path);
    let mtime = fs::metadata(&p).unwrap().modified().unwrap();
    fs::write(&p, content).unwrap();
    fs::File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
    rustix::fs::removexattr(&p, XATTR).unwrap();
}

#[test]
fn a_new_tree_keeps_the_previous_trees_filled_files_that_are_still_ps_version() {
    if !common::root_or_skip("a_new_tree_keeps_the_previous_trees_filled_files_that_are_still_ps_version") {
        return; // linking by descriptor (AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut entries = vec![
        e("d", EntryKind::Dir, 0o755, 0),
        e("d/same", EntryKind::File, 0o644, 5),
        e("d/changed", EntryKind::File, 0o644, 5),
        e("d/unread", EntryKind::File, 0o644, 5),
        e("d/mode", EntryKind::File, 0o644, 5),
    ];
    let old = build(tmp.path(), &entries, 1);
    for f in ["d/same", "d/changed", "d/mode"] {
        fill_by_hand(&old, f, b"12345");
    }
    let kept_inode = fs::metadata(old.dir.join("d/same")).unwrap().ino();
    // P since: d/changed has another mtime (same size), d/mode another mode.
    entries[2].mtime = Timestamp::new(1_700_000_000, 1);
    entries[4].mode = 0o600;
    let mut w = SnapshotWriter::begin(tmp.path(), None).unwrap();
    for x in &entries {
        w.add(x).unwrap();
    }
    let kept = w.kept();
    let new = w.finish(&report(entries.len(), 2)).unwrap();
    assert_eq!((kept.files, kept.bytes > 0), (2, true), "d/same and d/mode kept: {kept:?}");
    let want = |p: &str| rustix::fs::getxattr(new.dir.join(p), XATTR, &mut [0u8; 64][..]).is_ok();
    let md = |p: &str| fs::metadata(new.dir.join(p)).unwrap();
    assert_eq!(md("d/same").ino(), kept_inode, "the same inode, linked");
    assert_eq!(fs::read(new.dir.join("d/same")).unwrap(), b"12345");
    assert!(!want("d/same") && !want("d/mode"));
    assert_eq!(md("d/mode").mode() & 0o7777, 0o600, "the snapshot's mode");
    assert!(want("d/changed") && md("d/changed").blocks() == 0, "another version: a placeholder");
    assert_eq!(md("d/changed").mtime(), 1_700_000_000);
    assert!(want("d/unread"), "never filled: a placeholder");
    // The old tree goes; the kept content stays.
    Tree::remove_others(tmp.path(), &[]).unwrap();
    assert!(!old.dir.exists());
    assert_eq!(fs::read(new.dir.join("d/same")).unwrap(), b"12345");
    assert_eq!(md("d/same").nlink(), 1);
}

/// Placeholders are finished by path (never opened: the fill service would see every open),
/// which is safe only while nobody but root can write in the build: the owner gets the
/// directories when the tree is complete, not before.
#[test]
fn only_root_can_write_in_a_build_until_it_is_complete_then_the_owner_owns_it() {
    if !common::root_or_skip("only_root_can_write_in_a_build_until_it_is_complete_then_the_owner_owns_it") {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let owner = (4242, 4343);
    let mut w = SnapshotWriter::begin(tmp.path(), Some(owner)).unwrap();
    let entries = vec![e("d", EntryKind::Dir, 0o777, 0), e("d/f", EntryKind::File, 0o644, 10)];
    for x in &entries {
        w.add(x).unwrap();
    }
    let build = w.build_dir();
    for (p, mode) in [(build.clone(), None), (build.join("d"), Some(0o700))] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.uid(), 0, "{} is root's during the build", p.display());
        if let Some(mode) = mode {
            assert_eq!(m.mode() & 0o7777, mode, "{}: nobody else may enter it during the build", p.display());
        }
    }
    let t = w.finish(&report(entries.len(), 1)).unwrap();
    let f = fs::symlink_metadata(t.dir.join("d/f")).unwrap();
    assert_eq!((f.len(), f.blocks(), f.mode() & 0o7777), (10, 0, 0o644));
    for p in [t.dir.clone(), t.dir.join("d"), t.dir.join("d/f")] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), owner, "{} is the owner's once complete", p.display());
    }
    assert_eq!(fs::symlink_metadata(t.dir.join("d")).unwrap().mode() & 0o7777, 0o777);
}

/// A placeholder the finisher threads cannot set (a size no file can have) fails the build
/// naming its path, at `finish` at the latest, and the tree is never switched to.
#[test]
fn a_placeholder_that_cannot_be_set_fails_the_build_naming_its_path() {
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let entries = vec![
        e("d", EntryKind::Dir, 0o755, 0),
        e("d/ok", EntryKind::File, 0o644, 1),
        e("d/huge", EntryKind::File, 0o644, u64::MAX),
        e("d/after", EntryKind::File, 0o644, 2),
    ];
    let mut w = SnapshotWriter::begin(tmp.path(), None).unwrap();
    let mut failed = None;
    for x in &entries {
        if let Err(err) = w.add(x) {
            failed = Some(err);
            break;
        }
    }
    let err = match failed {
        Some(err) => err,
        None => w.finish(&report(entries.len(), 1)).expect_err("a size no file can have"),
    };
    let text = err.to_string();
    assert!(text.contains("d/huge") && text.contains("set size"), "{text}");
    assert_eq!(Tree::current(tmp.path()).unwrap(), None, "never switched to");
}
