//! Symlinks planted in the root must never let an operation reach outside it.
//!
//! Every test builds `base/{home,outside}` with `home/evil -> base/outside`
//! (absolute) and `home/evil2 -> ..` (relative, so `evil2/outside` is the
//! outside directory too), snapshots `outside` (kinds, modes, mtimes,
//! contents, link targets), attacks, and checks the snapshot is unchanged.

mod common;

use std::io::Read;

use common::{assert_not_a_directory, assert_symlink_refused, rp, snapshot, ts, Hostile};
use cs_safe_fs::{FileKind, FsError};

/// Paths that go through a symlinked ancestor to an existing outside entry.
const VIA: &[&str] = &["evil/victim.txt", "evil2/outside/victim.txt"];
const VIA_DIR: &[&str] = &["evil/sub", "evil2/outside/sub"];

#[test]
fn every_operation_through_a_symlinked_ancestor_is_refused() {
    let h = Hostile::new();
    let r = &h.root;
    let before = snapshot(&h.outside());
    let base_before = snapshot(h.base.path()).len();
    let m = ts(1, 1);

    for &p in VIA {
        let p = rp(p);
        assert_symlink_refused(r.lstat(&p));
        assert_symlink_refused(r.open_file(&p));
        assert_symlink_refused(r.read_link(&p));
        assert_symlink_refused(r.write_temp(&p, "tmp", &mut &b"pwned"[..], 0o777, m, false));
        assert_symlink_refused(r.write_temp(&p, "victim.txt", &mut &b"pwned"[..], 0o777, m, false));
        assert_symlink_refused(r.symlink_temp(&p, "tmp", "/etc/passwd", m));
        assert_symlink_refused(r.set_mode(&p, 0o777));
        assert_symlink_refused(r.set_mtime(&p, m));
        assert_symlink_refused(r.remove_file(&p));
        assert_symlink_refused(r.remove_tree(&p));
        assert_symlink_refused(r.rename(&p, &rp("stolen")));
        assert_symlink_refused(r.rename(&rp("file"), &p));
        assert_symlink_refused(r.rename_noreplace(&p, &rp("stolen")));
        assert_symlink_refused(r.rename_noreplace(&rp("file"), &p.with_file_name("new").unwrap()));
        assert_symlink_refused(r.same_content(&p, &rp("file")));
        assert_symlink_refused(r.same_content(&rp("file"), &p));
        assert_symlink_refused(r.create_dir(&p.with_file_name("newdir").unwrap(), 0o777));
        assert_symlink_refused(r.create_dir_all(&p.with_file_name("new/deeper").unwrap(), 0o777));
    }
    for &d in VIA_DIR {
        let d = rp(d);
        assert_symlink_refused(r.read_dir(Some(&d)));
        assert_symlink_refused(r.remove_dir(&d.join("deeper").unwrap()));
        assert_symlink_refused(r.remove_tree(&d));
        assert_symlink_refused(r.remove_tree(&d.join("deeper").unwrap()));
        assert_symlink_refused(r.set_mode(&d, 0o777));
        assert_symlink_refused(r.sync_dir(Some(&d)));
        assert_symlink_refused(r.create_dir_all(&d.join("x").unwrap(), 0o777));
    }
    // The symlinks themselves as directories.
    for d in ["evil", "evil2"] {
        assert_symlink_refused(r.read_dir(Some(&rp(d))));
        assert_symlink_refused(r.create_dir_all(&rp(d), 0o777));
        assert_symlink_refused(r.sync_dir(Some(&rp(d))));
    }
    // Missing paths beneath a symlink: still refused, not "not found".
    assert_symlink_refused(r.lstat(&rp("evil/nope/x")));
    assert_symlink_refused(r.write_temp(&rp("evil/nope"), "t", &mut &b""[..], 0o644, m, false));

    assert_eq!(snapshot(&h.outside()), before, "outside changed");
    assert_eq!(snapshot(h.base.path()).len(), base_before, "something was created or removed");
    assert!(!h.home().join("stolen").exists());
    assert_eq!(std::fs::read(h.home().join("file")).unwrap(), b"a regular file");
}

#[test]
fn a_symlink_deep_in_the_path_is_refused() {
    let h = Hostile::new();
    std::os::unix::fs::symlink("/", h.home().join("d/inner/root")).unwrap();
    std::os::unix::fs::symlink("../..", h.home().join("d/inner/up")).unwrap();
    let r = &h.root;
    assert_symlink_refused(r.lstat(&rp("d/inner/root/etc/passwd")));
    assert_symlink_refused(r.open_file(&rp("d/inner/root/etc/passwd")));
    assert_symlink_refused(r.lstat(&rp("d/inner/up/file")));
    assert_symlink_refused(r.open_file(&rp("d/inner/up/file")));
    // Sanity: the real path works.
    assert_eq!(r.lstat(&rp("d/inner/f")).unwrap().unwrap().kind, FileKind::File);
}

#[test]
fn a_leaf_symlink_is_never_followed() {
    let h = Hostile::new();
    let r = &h.root;
    let before = snapshot(&h.outside());

    // open_file and set_mode refuse a symlink leaf (to a file or a directory).
    for l in ["link_to_victim", "evil", "evil2"] {
        assert_symlink_refused(r.open_file(&rp(l)));
        assert_symlink_refused(r.set_mode(&rp(l), 0o777));
    }
    // lstat / read_link describe the link itself.
    let st = r.lstat(&rp("link_to_victim")).unwrap().unwrap();
    assert_eq!(st.kind, FileKind::Symlink);
    assert_eq!(r.read_link(&rp("evil2")).unwrap(), "..");
    // set_mtime changes the link's own mtime only.
    r.set_mtime(&rp("link_to_victim"), ts(42, 42)).unwrap();
    assert_eq!(r.lstat(&rp("link_to_victim")).unwrap().unwrap().mtime, ts(42, 42));
    // write_temp / symlink_temp onto an existing symlink name: O_EXCL refuses.
    for tmp in ["link_to_victim", "evil"] {
        let err = r.write_temp(&rp("x"), tmp, &mut &b"pwned"[..], 0o777, ts(1, 1), false).unwrap_err();
        assert_eq!(err.io_kind(), Some(std::io::ErrorKind::AlreadyExists), "{err:?}");
        let err = r.symlink_temp(&rp("x"), tmp, "y", ts(1, 1)).unwrap_err();
        assert_eq!(err.io_kind(), Some(std::io::ErrorKind::AlreadyExists), "{err:?}");
    }
    // create_dir onto a symlink name: EEXIST, nothing created at the target.
    assert!(r.create_dir(&rp("evil"), 0o755).is_err());
    // remove_dir of a symlink to a directory: refused (ENOTDIR), link kept.
    assert!(r.remove_dir(&rp("evil")).is_err());
    assert!(h.home().join("evil").is_symlink());
    // same_content of a link and the file it points to: different kinds.
    assert!(!r.same_content(&rp("link_to_victim"), &rp("file")).unwrap());
    assert_eq!(snapshot(&h.outside()), before);

    // rename over a symlink replaces the link only.
    r.rename(&rp("file"), &rp("link_to_victim")).unwrap();
    let mut s = String::new();
    r.open_file(&rp("link_to_victim")).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "a regular file");
    // remove_file on leaf symlinks removes only the links.
    r.remove_file(&rp("evil")).unwrap();
    r.remove_file(&rp("evil2")).unwrap();
    assert!(std::fs::symlink_metadata(h.home().join("evil")).is_err());
    assert!(std::fs::symlink_metadata(h.home().join("evil2")).is_err());
    assert_eq!(snapshot(&h.outside()), before, "outside changed");
}

#[test]
fn remove_tree_unlinks_symlinks_inside_and_leaves_their_targets() {
    let h = Hostile::new();
    let home = h.home();
    let outside = h.outside();
    std::fs::create_dir_all(home.join("t/a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("t/to_outside")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.txt"), home.join("t/a/to_victim")).unwrap();
    std::os::unix::fs::symlink("../../../..", home.join("t/a/b/up")).unwrap();
    std::os::unix::fs::symlink(outside.join("sub"), home.join("t/a/b/sub")).unwrap();
    std::fs::write(home.join("t/a/b/f"), b"x").unwrap();
    let before = snapshot(&outside);

    h.root.remove_tree(&rp("t")).unwrap();
    assert!(std::fs::symlink_metadata(home.join("t")).is_err());
    assert_eq!(snapshot(&outside), before, "outside changed");

    // A leaf symlink to a directory: only the link goes.
    h.root.remove_tree(&rp("evil")).unwrap();
    h.root.remove_tree(&rp("evil2")).unwrap();
    assert!(std::fs::symlink_metadata(home.join("evil")).is_err());
    assert_eq!(snapshot(&outside), before, "outside changed");
    assert_eq!(std::fs::read(home.join("d/inner/f")).unwrap(), b"home file");
}

#[test]
fn a_file_where_a_directory_is_expected_is_not_a_directory() {
    let h = Hostile::new();
    let r = &h.root;
    let p = rp("file/x");
    assert_not_a_directory(r.lstat(&p));
    assert_not_a_directory(r.open_file(&p));
    assert_not_a_directory(r.write_temp(&p, "t", &mut &b""[..], 0o644, ts(1, 1), false));
    assert_not_a_directory(r.symlink_temp(&p, "t", "x", ts(1, 1)));
    assert_not_a_directory(r.create_dir(&p, 0o755));
    assert_not_a_directory(r.create_dir_all(&rp("file/x/y"), 0o755));
    assert_not_a_directory(r.remove_file(&p));
    assert_not_a_directory(r.remove_tree(&p));
    assert_not_a_directory(r.rename(&p, &rp("y")));
    assert_not_a_directory(r.set_mode(&p, 0o644));
    assert_not_a_directory(r.set_mtime(&p, ts(1, 1)));
    assert_not_a_directory(r.read_dir(Some(&rp("file"))));
    let err = r.lstat(&p).unwrap_err();
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::NotADirectory));
    assert!(!err.is_not_found());
    assert_eq!(std::fs::read(h.home().join("file")).unwrap(), b"a regular file");
}

#[test]
fn remove_tree_refuses_to_cross_a_mount_point() {
    let h = Hostile::new();
    let mnt = h.home().join("d/mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_guard) = Mount::tmpfs(&mnt) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    std::fs::write(mnt.join("on_other_fs"), b"keep").unwrap();
    let err = h.root.remove_tree(&rp("d")).unwrap_err();
    match &err {
        FsError::MountPoint { mount, .. } => assert_eq!(mount, "d/mnt"),
        other => panic!("expected MountPoint, got {other:?}"),
    }
    assert_eq!(std::fs::read(mnt.join("on_other_fs")).unwrap(), b"keep");
    assert!(matches!(h.root.remove_tree(&rp("d/mnt")), Err(FsError::MountPoint { .. })));
    // Ordinary operations through the mount point work (no RESOLVE_NO_XDEV).
    assert_eq!(h.root.lstat(&rp("d/mnt/on_other_fs")).unwrap().unwrap().size, 4);
    h.root.remove_file(&rp("d/mnt/on_other_fs")).unwrap();
}

/// Races: another thread keeps swapping `home/d` between a real directory
/// and a symlink to the outside while operations run on `d/...`. Whatever
/// the interleaving, nothing outside may change.
#[test]
fn swapping_a_directory_for_a_symlink_concurrently_never_escapes() {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let h = Hostile::new();
    let home = h.home();
    std::fs::create_dir_all(home.join("race/d/sub/deeper")).unwrap();
    std::fs::write(home.join("race/d/victim.txt"), b"home copy").unwrap();
    std::os::unix::fs::symlink(h.outside(), home.join("race/swap")).unwrap();
    let before = snapshot(&h.outside());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (a, b, stop) = (home.join("race/d"), home.join("race/swap"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                renameat_with(CWD, &a, CWD, &b, RenameFlags::EXCHANGE).unwrap();
                n += 1;
            }
            n
        })
    };
    let r = &h.root;
    let mut ok = 0;
    for i in 0..3000 {
        let m = ts(7, 7);
        let results = [
            r.write_temp(&rp("race/d/victim.txt"), "tmp", &mut &b"pwned"[..], 0o777, m, false).map(|_| ()),
            r.rename(&rp("race/d/tmp"), &rp("race/d/victim.txt")),
            r.set_mode(&rp("race/d/victim.txt"), 0o777),
            r.set_mtime(&rp("race/d/victim.txt"), m),
            r.create_dir(&rp("race/d/newdir"), 0o777),
            r.remove_tree(&rp("race/d/sub")),
            r.create_dir_all(&rp("race/d/sub/deeper"), 0o777),
            r.remove_file(&rp("race/d/victim.txt")),
            r.remove_dir(&rp("race/d/newdir")),
            r.symlink_temp(&rp("race/d/x"), "lnk", "/", m).map(|_| ()),
            r.remove_file(&rp("race/d/lnk")),
            r.open_file(&rp("race/d/victim.txt")).map(|_| ()),
        ];
        ok += results.iter().filter(|r| r.is_ok()).count();
        if i % 100 == 0 {
            assert_eq!(snapshot(&h.outside()), before, "outside changed at iteration {i}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 0 && ok > 0, "the race did not run: {swaps} swaps, {ok} successes");
    assert_eq!(snapshot(&h.outside()), before, "outside changed");
}

/// A tmpfs mounted for the duration of a test (needs CAP_SYS_ADMIN).
struct Mount(std::ffi::CString);

impl Mount {
    fn tmpfs(at: &std::path::Path) -> Option<Mount> {
        let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: NUL-terminated strings that outlive the call; no data argument.
        let r = unsafe { libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
        (r == 0).then_some(Mount(target))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}
