//! Quick end-to-end checks of the driver on plain directories; the full
//! invariant suite lives in the workspace's tests/ package.

use std::fs;

use cs_engine::driver::run_round;
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide};
use cs_protocol::ClientId;

struct Setup {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    upper: std::path::PathBuf,
    c: ComputeSide,
    p: ProjectSide,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let upper = dir.path().join("upper");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let c =
        ComputeSide::open(ComputeConfig::new(ClientId::new("c1").unwrap(), upper.clone(), dir.path().join("cstate")))
            .unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), dir.path().join("pstate"))).unwrap();
    Setup { _dir: dir, home, upper, c, p }
}

#[test]
fn new_file_on_compute_reaches_project_and_is_not_echoed() {
    let mut s = setup();
    fs::create_dir(s.upper.join("d")).unwrap();
    fs::write(s.upper.join("d/f"), b"hello").unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.sent_to_project, 2);
    assert_eq!(r.sent_to_compute, 0, "no echo");
    assert_eq!(fs::read(s.home.join("d/f")).unwrap(), b"hello");
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!((r.sent_to_project, r.sent_to_compute), (0, 0), "idle round ships nothing");
}

#[test]
fn project_change_to_held_file_reaches_compute_and_conflict_keeps_both() {
    let mut s = setup();
    fs::write(s.upper.join("f"), b"one").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::write(s.home.join("f"), b"two-from-p").unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.sent_to_compute, 1);
    assert_eq!(fs::read(s.upper.join("f")).unwrap(), b"two-from-p");
    // Both sides write: P wins, C's version is kept as a conflict copy.
    fs::write(s.home.join("f"), b"three-p").unwrap();
    fs::write(s.upper.join("f"), b"three-c").unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(fs::read(s.home.join("f")).unwrap(), b"three-p");
    assert_eq!(fs::read(s.home.join(r.conflicts[0].as_path())).unwrap(), b"three-c");
    assert_eq!(fs::read(s.upper.join("f")).unwrap(), b"three-p");
}

#[test]
fn project_delete_removes_synced_copy_but_not_local_edit() {
    let mut s = setup();
    fs::write(s.upper.join("a"), b"a").unwrap();
    fs::write(s.upper.join("b"), b"b").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::remove_file(s.home.join("a")).unwrap();
    fs::remove_file(s.home.join("b")).unwrap();
    fs::write(s.upper.join("b"), b"b-edited").unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_compute, 1, "{r:?}");
    assert!(!s.upper.join("a").exists());
    assert_eq!(fs::read(s.home.join("b")).unwrap(), b"b-edited", "modification beats deletion");
}

/// A synced copy removed from the upper layer without a whiteout (the
/// union's lower cached "absent") is still a delete: otherwise P keeps the
/// file and it comes back in the merged view.
#[test]
fn synced_copy_gone_without_whiteout_is_deleted_on_project() {
    let mut s = setup();
    fs::create_dir(s.upper.join("d")).unwrap();
    fs::write(s.upper.join("d/f"), b"x").unwrap();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(s.home.join("d/f").exists());
    fs::remove_file(s.upper.join("d/f")).unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 1, "{r:?}");
    assert!(!s.home.join("d/f").exists());
    assert!(s.home.join("d").exists() && s.home.join("keep").exists());
}

/// A wiped upper layer is not read as "delete everything".
#[test]
fn wiped_upper_layer_deletes_nothing_on_project() {
    let mut s = setup();
    fs::write(s.upper.join("a"), b"a").unwrap();
    fs::write(s.upper.join("b"), b"b").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::remove_file(s.upper.join("a")).unwrap();
    fs::remove_file(s.upper.join("b")).unwrap();
    let r = run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert!(s.home.join("a").exists() && s.home.join("b").exists());
}

/// A path synced before the configuration made it local-only is kept on
/// P: a new filter is not a delete.
#[test]
fn path_made_local_only_is_not_deleted_on_project() {
    let mut s = setup();
    fs::create_dir(s.upper.join("data")).unwrap();
    fs::write(s.upper.join("data/x"), b"x").unwrap();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(s.home.join("data/x").exists());
    let mut cfg = s.c.config().clone();
    cfg.filter = cs_engine::PathFilter::new(&["data/"], &[]).unwrap();
    drop(s.c);
    let mut c = ComputeSide::open(cfg).unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert_eq!(fs::read(s.home.join("data/x")).unwrap(), b"x");
}

/// A deletion every client has seen leaves no tombstone behind: the journal
/// does not grow with every name ever deleted.
#[test]
fn tombstones_are_pruned_once_every_client_has_seen_them() {
    let mut s = setup();
    for i in 0..20 {
        fs::write(s.home.join(format!("tmp{i}")), b"x").unwrap();
    }
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(s.p.journal_size(), (20, 0));
    for i in 0..20 {
        fs::remove_file(s.home.join(format!("tmp{i}"))).unwrap();
    }
    // The round that sees the deletions records them; its commit moves the
    // only client's cursor past them, so they go.
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(s.p.journal_size(), (0, 0));

    // A second client that has not run since keeps them.
    fs::create_dir_all(s._dir.path().join("upper2")).unwrap();
    let c2cfg =
        ComputeConfig::new(ClientId::new("c2").unwrap(), s._dir.path().join("upper2"), s._dir.path().join("cstate2"));
    let mut c2 = ComputeSide::open(c2cfg).unwrap();
    run_round(&mut c2, &s.p, None).unwrap();
    fs::write(s.home.join("gone"), b"x").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::remove_file(s.home.join("gone")).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(s.p.journal_size(), (0, 1), "c2's cursor predates the deletion");
    run_round(&mut c2, &s.p, None).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(s.p.journal_size(), (0, 0));
}

/// With a grace period, the whiteout of a path P deleted stays (hiding what
/// the lower's caches may still show), is not sent again, and goes once the
/// grace is over; the whiteout of a path P kept goes at once.
#[test]
fn whiteouts_of_deleted_paths_stay_for_the_grace_period() {
    use cs_union::{create_whiteout, is_hidden, Layout};
    let s = setup();
    for f in ["gone", "kept"] {
        fs::write(s.home.join(f), b"p").unwrap();
    }
    let mut cfg = s.c.config().clone();
    cfg.whiteout_grace = std::time::Duration::from_secs(3600);
    drop(s.c);
    let mut c = ComputeSide::open(cfg.clone()).unwrap();
    run_round(&mut c, &s.p, None).unwrap();
    // C deletes both (the union's whiteouts); P changes `kept` meanwhile.
    let rel = |p: &str| cs_protocol::RelPath::new(p).unwrap();
    create_whiteout(&s.upper, Layout::UnionfsFuse1, &rel("gone")).unwrap();
    create_whiteout(&s.upper, Layout::UnionfsFuse1, &rel("kept")).unwrap();
    fs::write(s.home.join("kept"), b"changed on P").unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 1, "{r:?}");
    assert!(!s.home.join("gone").exists());
    assert_eq!(fs::read(s.home.join("kept")).unwrap(), b"changed on P", "modification beats deletion");
    assert!(is_hidden(&s.upper, &rel("gone")), "the deleted path's whiteout went at once");
    assert!(!is_hidden(&s.upper, &rel("kept")), "the kept path stays hidden");
    assert_eq!(c.retired_whiteouts(), 1);

    // Not sent again, even once P has the path again (it would delete P's new file).
    fs::write(s.home.join("gone"), b"new on P").unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert_eq!(fs::read(s.home.join("gone")).unwrap(), b"new on P");
    assert!(is_hidden(&s.upper, &rel("gone")));

    // The grace is over (reopened with none): the whiteout goes, P's file shows.
    cfg.whiteout_grace = std::time::Duration::ZERO;
    drop(c);
    let mut c = ComputeSide::open(cfg).unwrap();
    assert_eq!(c.retired_whiteouts(), 1, "kept across a restart");
    run_round(&mut c, &s.p, None).unwrap();
    assert!(!is_hidden(&s.upper, &rel("gone")));
    assert_eq!(c.retired_whiteouts(), 0);
    assert_eq!(fs::read(s.home.join("gone")).unwrap(), b"new on P");
}

/// A path created again on C ends its retired whiteout: deleting it again
/// is a new deletion, sent to P.
#[test]
fn a_path_recreated_during_the_grace_is_deleted_again_on_project() {
    use cs_union::{create_whiteout, Layout};
    let s = setup();
    fs::write(s.home.join("f"), b"p").unwrap();
    let mut cfg = s.c.config().clone();
    cfg.whiteout_grace = std::time::Duration::from_secs(3600);
    drop(s.c);
    let mut c = ComputeSide::open(cfg).unwrap();
    run_round(&mut c, &s.p, None).unwrap();
    let rel = cs_protocol::RelPath::new("f").unwrap();
    create_whiteout(&s.upper, Layout::UnionfsFuse1, &rel).unwrap();
    run_round(&mut c, &s.p, None).unwrap();
    assert!(!s.home.join("f").exists());
    assert_eq!(c.retired_whiteouts(), 1);
    // The user creates f again through the union (which drops the marker).
    let scan = cs_union::list_whiteouts(&s.upper).unwrap();
    for w in &scan.whiteouts {
        cs_union::remove_whiteout(&s.upper, w).unwrap();
    }
    fs::write(s.upper.join("f"), b"c again").unwrap();
    run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(fs::read(s.home.join("f")).unwrap(), b"c again");
    assert_eq!(c.retired_whiteouts(), 0);
    // And deletes it again: the union removes the upper file, leaves a marker.
    fs::remove_file(s.upper.join("f")).unwrap();
    create_whiteout(&s.upper, Layout::UnionfsFuse1, &rel).unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 1, "{r:?}");
    assert!(!s.home.join("f").exists());
}

#[test]
fn a_replaced_upper_layer_deletes_nothing_on_the_project() {
    let mut s = setup();
    fs::create_dir(s.upper.join("d")).unwrap();
    fs::write(s.upper.join("d/f"), b"synced").unwrap();
    fs::write(s.upper.join("g"), b"synced too").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(s.home.join("d/f").exists());
    // The disk is replaced: a new, empty directory where the upper layer was, but one
    // file the user made since (so the old guard, "no synced entry at all", does not hold).
    let cfg = s.c.config().clone();
    drop(s.c);
    fs::rename(&s.upper, s.upper.with_extension("old")).unwrap();
    fs::create_dir(&s.upper).unwrap();
    fs::write(s.upper.join("new"), b"made after").unwrap();
    fs::write(s.upper.join("keep"), b"made after too").unwrap();
    let mut c = ComputeSide::open(cfg).unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert!(s.home.join("d/f").exists() && s.home.join("g").exists());
    assert!(s.home.join("new").exists());
    // Recorded again at that commit: from now on a deletion is a deletion.
    fs::remove_file(s.upper.join("new")).unwrap();
    let r = run_round(&mut c, &s.p, None).unwrap();
    assert_eq!(r.deletes_to_project, 1, "{r:?}");
    assert!(!s.home.join("new").exists());
}
