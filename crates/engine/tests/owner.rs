//! Owners and setuid on plain directories: what a round creates on each side
//! belongs to that side's configured user; what was made locally keeps its
//! owner; no setuid or setgid bit is ever applied. Giving files away needs
//! root: as anyone else the owner test is skipped (the setuid test runs).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cs_engine::driver::run_round;
use cs_engine::{ComputeConfig, ComputeSide, Owner, ProjectConfig, ProjectSide};
use cs_protocol::ClientId;

/// Ids no account on a test machine uses (root may give files to any id).
const COMPUTE_USER: Owner = Owner { uid: 43_001, gid: 43_002 };
const PROJECT_USER: Owner = Owner { uid: 42_001, gid: 42_002 };

struct Setup {
    _dir: tempfile::TempDir,
    home: PathBuf,
    upper: PathBuf,
    c: ComputeSide,
    p: ProjectSide,
}

fn setup(owners: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let upper = dir.path().join("upper");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut cc = ComputeConfig::new(ClientId::new("c1").unwrap(), upper.clone(), dir.path().join("cstate"));
    let mut pc = ProjectConfig::new(home.clone(), dir.path().join("pstate"));
    if owners {
        cc.owner = Some(COMPUTE_USER);
        pc.owner = Some(PROJECT_USER);
    }
    let c = ComputeSide::open(cc).unwrap();
    let p = ProjectSide::open(pc).unwrap();
    Setup { _dir: dir, home, upper, c, p }
}

fn ids(root: &Path, rel: &str) -> (u32, u32) {
    let m = fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("lstat {rel}: {e}"));
    (m.uid(), m.gid())
}

fn mode(root: &Path, rel: &str) -> u32 {
    fs::symlink_metadata(root.join(rel)).unwrap().mode() & 0o7777
}

fn me() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

#[test]
fn each_side_writes_as_its_user_and_local_files_keep_their_owner() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root, cannot give files away");
        return;
    }
    let mut s = setup(true);
    let (c_user, p_user) = ((COMPUTE_USER.uid, COMPUTE_USER.gid), (PROJECT_USER.uid, PROJECT_USER.gid));
    // Made by root on each side (the test runs as root).
    fs::create_dir_all(s.upper.join("from-c/sub")).unwrap();
    fs::write(s.upper.join("from-c/sub/f"), b"c").unwrap();
    std::os::unix::fs::symlink("f", s.upper.join("from-c/sub/l")).unwrap();
    fs::create_dir_all(s.home.join("from-p/sub")).unwrap();
    fs::write(s.home.join("from-p/sub/g"), b"p").unwrap();
    std::os::unix::fs::symlink("g", s.home.join("from-p/sub/l")).unwrap();
    // C must hold the P paths for step 4 to send them: a first round makes
    // C's copies of C's files on P; P's files go to C as they are held.
    run_round(&mut s.c, &s.p, None).unwrap();
    for rel in ["from-c", "from-c/sub", "from-c/sub/f", "from-c/sub/l"] {
        assert_eq!(ids(&s.home, rel), p_user, "P's copy of {rel}");
        assert_eq!(ids(&s.upper, rel), me(), "C's own {rel} keeps its owner");
    }
    for rel in ["from-p", "from-p/sub/g"] {
        assert_eq!(ids(&s.home, rel), me(), "P's own {rel} keeps its owner");
    }
    // P's change to a path C holds arrives as the compute user.
    fs::write(s.home.join("from-c/sub/f"), b"changed on P").unwrap();
    fs::write(s.upper.join("from-c/sub/l2"), b"c2").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(fs::read(s.upper.join("from-c/sub/f")).unwrap(), b"changed on P");
    assert_eq!(ids(&s.upper, "from-c/sub/f"), c_user, "a file step 4 replaced");
    assert_eq!(ids(&s.home, "from-c/sub/l2"), p_user);
    fs::write(s.home.join("from-c/sub/f"), b"P wins").unwrap();
    fs::write(s.upper.join("from-c/sub/f"), b"C loses").unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(ids(&s.home, r.conflicts[0].to_str().expect("a UTF-8 conflict name")), p_user, "the conflict copy");
    assert_eq!(ids(&s.upper, "from-c/sub/f"), c_user);
}

#[test]
fn a_missing_parent_created_on_p_belongs_to_the_home_owner() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let mut s = setup(true);
    fs::create_dir_all(s.upper.join("a/b")).unwrap();
    fs::write(s.upper.join("a/b/f"), b"x").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    for rel in ["a", "a/b", "a/b/f"] {
        assert_eq!(ids(&s.home, rel), (PROJECT_USER.uid, PROJECT_USER.gid), "{rel}");
    }
}

#[test]
fn no_setuid_or_setgid_bit_crosses_in_either_direction() {
    let mut s = setup(false);
    fs::write(s.upper.join("c-tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(s.upper.join("c-tool"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::create_dir(s.upper.join("c-dir")).unwrap();
    fs::set_permissions(s.upper.join("c-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(mode(&s.home, "c-tool"), 0o755, "setuid/setgid crossed C → P");
    assert_eq!(mode(&s.home, "c-dir"), 0o775, "setgid directory crossed C → P");
    // The user's own file on C keeps what the user made.
    assert_eq!(mode(&s.upper, "c-tool"), 0o6755);

    // P → C: a held file made setuid on P arrives without the bit.
    fs::write(s.home.join("c-tool"), b"#!/bin/sh\necho p\n").unwrap();
    fs::set_permissions(s.home.join("c-tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert!(r.sent_to_compute >= 1, "{r:?}");
    assert_eq!(fs::read(s.upper.join("c-tool")).unwrap(), b"#!/bin/sh\necho p\n");
    assert_eq!(mode(&s.upper, "c-tool"), 0o755, "setuid crossed P → C");
    assert_eq!(mode(&s.home, "c-tool"), 0o4755, "P's own file keeps its bits");
    // And nothing is sent back: the next round is idle.
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!((r.sent_to_project, r.sent_to_compute), (0, 0), "{r:?}");
}
