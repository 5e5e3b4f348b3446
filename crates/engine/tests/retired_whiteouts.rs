//! Whiteouts kept for the grace period after P confirmed the deletion
//! ("retired"), next to what the union does when the path is created again.
//! The markers are written by hand in unionfs-fuse's form (see
//! docs/unionfs-notes.md; the real union is exercised by
//! crates/cs-actor/tests/defect_rmrf.rs).

use std::fs;
use std::time::Duration;

use cs_engine::driver::run_round;
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide};
use cs_protocol::{ClientId, RelPath};
use cs_union::{create_dir_whiteout, create_whiteout, is_hidden, Layout};

fn rel(p: &str) -> RelPath {
    RelPath::new(p).unwrap()
}

/// Issue 8, defect 1: `rm -rf data; mkdir data; echo fresh > data/n`.
/// unionfs-fuse keeps `data_HIDDEN~` beside the new directory. The round
/// syncs the deletion and data/n; the next rounds must not send the
/// deletion again (it deleted data/n on P, for good).
#[test]
fn the_marker_kept_beside_a_recreated_directory_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (home, upper) = (dir.path().join("home"), dir.path().join("upper"));
    fs::create_dir_all(home.join("data/deep/er")).unwrap();
    fs::write(home.join("data/deep/er/x"), b"old").unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut cfg = ComputeConfig::new(ClientId::new("c1").unwrap(), upper.clone(), dir.path().join("cstate"));
    cfg.whiteout_grace = Duration::from_secs(3600);
    let mut c = ComputeSide::open(cfg.clone()).unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), dir.path().join("pstate"))).unwrap();
    run_round(&mut c, &p, None).unwrap();

    // What the real union leaves for `rm -rf data; mkdir data; echo fresh > data/n`.
    let l = Layout::UnionfsFuse1;
    create_whiteout(&upper, l, &rel("data/deep/er/x")).unwrap();
    for d in ["data/deep/er", "data/deep", "data"] {
        create_dir_whiteout(&upper, l, &rel(d)).unwrap();
    }
    fs::create_dir(upper.join("data")).unwrap();
    fs::write(upper.join("data/n"), b"fresh").unwrap();

    let r = run_round(&mut c, &p, None).unwrap();
    assert!(r.deletes_to_project >= 1, "{r:?}");
    assert_eq!(fs::read(home.join("data/n")).unwrap(), b"fresh");
    assert!(!home.join("data/deep").exists());
    assert!(is_hidden(&upper, &rel("data")), "the marker stays for the grace");
    // One per marker P confirmed: data and everything that was below it.
    assert_eq!(c.retired_whiteouts(), 4);

    for round in 0..3 {
        let r = run_round(&mut c, &p, None).unwrap();
        assert_eq!(r.deletes_to_project, 0, "round {round} sent a delete again: {r:?}");
        assert_eq!(fs::read(home.join("data/n")).unwrap(), b"fresh", "round {round}");
    }
    // Across a restart too.
    drop(c);
    let mut c = ComputeSide::open(cfg.clone()).unwrap();
    assert_eq!(c.retired_whiteouts(), 4);
    let r = run_round(&mut c, &p, None).unwrap();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");

    // A second `rm -rf data` (the new tree, synced copies) is a new deletion:
    // it goes, marker or not. (Another file stays in the upper layer: one
    // holding no synced entry at all sends no deletion, by design.)
    fs::write(upper.join("keep"), b"k").unwrap();
    run_round(&mut c, &p, None).unwrap();
    fs::remove_file(upper.join("data/n")).unwrap();
    fs::remove_dir(upper.join("data")).unwrap();
    let r = run_round(&mut c, &p, None).unwrap();
    assert!(r.deletes_to_project >= 1, "{r:?}");
    assert!(!home.join("data").exists());

    // The grace over, the marker goes.
    cfg.whiteout_grace = Duration::ZERO;
    drop(c);
    let mut c = ComputeSide::open(cfg).unwrap();
    run_round(&mut c, &p, None).unwrap();
    assert!(!is_hidden(&upper, &rel("data")));
    assert_eq!(c.retired_whiteouts(), 0);
}

/// The project side's own guard: a delete from a client never removes what
/// that client still holds below the path (its new content in a directory
/// created again over a whiteout). Here the compute side's stale delete is
/// sent by hand, as the compute side did before the fix above.
#[test]
fn a_delete_never_removes_what_the_client_holds_below_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (home, upper) = (dir.path().join("home"), dir.path().join("upper"));
    fs::create_dir_all(home.join("data")).unwrap();
    fs::write(home.join("data/old"), b"old").unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut cfg = ComputeConfig::new(ClientId::new("c1").unwrap(), upper.clone(), dir.path().join("cstate"));
    // P's later file must stay one the client does not hold (with the pull
    // policy `changed` the round would bring it into the upper layer).
    cfg.pull = cs_engine::PullPolicy::Held;
    let mut c = ComputeSide::open(cfg).unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), dir.path().join("pstate"))).unwrap();
    run_round(&mut c, &p, None).unwrap();
    // `rm -rf data; mkdir data; echo fresh > data/n`, synced.
    create_whiteout(&upper, Layout::UnionfsFuse1, &rel("data/old")).unwrap();
    create_dir_whiteout(&upper, Layout::UnionfsFuse1, &rel("data")).unwrap();
    fs::create_dir(upper.join("data")).unwrap();
    fs::write(upper.join("data/n"), b"fresh").unwrap();
    let r = run_round(&mut c, &p, None).unwrap();
    assert_eq!(fs::read(home.join("data/n")).ok().as_deref(), Some(&b"fresh"[..]), "{r:?}");
    // P gets a file there that C sees (through the lower) but does not hold.
    fs::write(home.join("data/p"), b"p").unwrap();
    run_round(&mut c, &p, None).unwrap();

    // The stale delete of data.
    let (_cr, hello) = c.begin_round().unwrap();
    let (mut pr, reply) = p.begin_round(&hello).unwrap();
    if reply.need_held_list {
        p.set_held_list(&mut pr, c.held_list());
    }
    let report = p.apply_deletes(&mut pr, &[rel("data")]).unwrap();
    assert_eq!(fs::read(home.join("data/n")).unwrap(), b"fresh", "P deleted what the client holds: {report:?}");
    assert!(!report.deleted.contains(&rel("data/n")), "{report:?}");
    assert!(!home.join("data/p").exists(), "what the client does not hold is deleted: {report:?}");
}
