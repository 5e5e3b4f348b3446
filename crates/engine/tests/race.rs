//! Races between the user's writes through the merged view and a round in
//! flight (soak30: files deleted on a compute server came back for good).
//!
//! The steps are called one by one, as `cs_engine::driver::run_round` does,
//! with the user's action inserted at the racy point. The union's missing
//! whiteout is the sshfs lower's negative cache: the file was created on C
//! shortly before, the lower still caches "absent", so unionfs-fuse deletes
//! the upper file and writes no marker.

use std::fs;
use std::path::PathBuf;

use cs_engine::driver::{run_round, Cut};
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide, PullPolicy};
use cs_protocol::{ClientId, RelPath};

struct Setup {
    _dir: tempfile::TempDir,
    home: PathBuf,
    upper: PathBuf,
    c: ComputeSide,
    p: ProjectSide,
}

fn setup() -> Setup {
    setup_pulling(PullPolicy::Held)
}

fn setup_pulling(pull: PullPolicy) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let upper = dir.path().join("upper");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut cfg = ComputeConfig::new(ClientId::new("c0").unwrap(), upper.clone(), dir.path().join("cstate"));
    cfg.pull = pull;
    let c = ComputeSide::open(cfg).unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), dir.path().join("pstate"))).unwrap();
    Setup { _dir: dir, home, upper, c, p }
}

fn rel(p: &str) -> RelPath {
    RelPath::new(p).unwrap()
}

/// One round, step by step as the driver runs it, with `before_pack` run
/// after step 3's list of changes is made and before anything is packed.
fn round_with_hook_before_pack(c: &mut ComputeSide, p: &ProjectSide, before_pack: impl FnOnce()) {
    let (mut cr, hello) = c.begin_round().unwrap();
    let (mut pr, reply) = p.begin_round(&hello).unwrap();
    if reply.need_held_list {
        p.set_held_list(&mut pr, c.held_list());
    }
    let deletes = c.deletes_to_send(&cr);
    let r1 = p.apply_deletes(&mut pr, &deletes).unwrap();
    c.finish_deletes_reported(&mut cr, &deletes, &r1).unwrap();
    let gone = p.deletes_for_client(&mut pr);
    c.apply_deletes(&mut cr, &gone).unwrap();

    let paths = c.changes_to_send(&cr);
    before_pack();
    let mut tar = Vec::new();
    let (tar_out, _) = c.pack_changes(&mut cr, &paths, &mut tar).map(|(w, s)| (w.len(), s)).unwrap();
    assert!(tar_out > 0);
    p.apply_writes(&mut pr, &tar[..], None).unwrap();

    let mut back = Vec::new();
    let (_, _, cursor) = p.pack_changes(&mut pr, &mut back).unwrap();
    c.apply_writes(&mut cr, &back[..], None).unwrap();

    let req = c.prepare_commit(&cr, cursor).unwrap();
    p.commit(pr, &req).unwrap();
    c.commit(cr).unwrap();
}

/// soak30 c0 `soak/c0/f14365` (also c1 `f11180`, c2 `f10081`): round N
/// sends the new file (P has it, C's manifest holds it); the user changes it
/// (overwrite/append); round N+1's scan sees the change and lists the file
/// for step 3; the user deletes it before step 3 packs it, and the union
/// writes no whiteout. Step 3 skips the vanished file and must not also drop
/// it from the manifest: the manifest entry is what makes the next round
/// send the delete.
#[test]
fn synced_copy_changed_then_deleted_before_pack_is_deleted_on_project() {
    let mut s = setup();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    fs::write(s.upper.join("f"), b"create").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(fs::read(s.home.join("f")).unwrap(), b"create");
    assert!(s.c.manifest().entries.contains_key(&rel("f")));

    fs::write(s.upper.join("f"), b"overwrite, longer").unwrap();
    let upper = s.upper.clone();
    round_with_hook_before_pack(&mut s.c, &s.p, || fs::remove_file(upper.join("f")).unwrap());

    // The next rounds must carry the deletion to P.
    run_round(&mut s.c, &s.p, None).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(!s.upper.join("f").exists());
    assert!(
        !s.home.join("f").exists(),
        "deleted on C, still on P (manifest holds f: {})",
        s.c.manifest().entries.contains_key(&rel("f"))
    );
    assert_eq!(fs::read(s.home.join("keep")).unwrap(), b"k");
}

/// Same race, but the union did write its whiteout: already fine before the
/// fix (control).
#[test]
fn synced_copy_changed_then_deleted_with_whiteout_before_pack_is_deleted_on_project() {
    let mut s = setup();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    fs::write(s.upper.join("f"), b"create").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::write(s.upper.join("f"), b"overwrite, longer").unwrap();
    let upper = s.upper.clone();
    round_with_hook_before_pack(&mut s.c, &s.p, || {
        fs::remove_file(upper.join("f")).unwrap();
        cs_union::create_whiteout(&upper, cs_union::Layout::UnionfsFuse1, &rel("f")).unwrap();
    });
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(!s.home.join("f").exists());
    assert_eq!(fs::read(s.home.join("keep")).unwrap(), b"k");
}

/// A new file deleted between the scan and step 3 never reached P: nothing
/// to delete there, and nothing left in the manifest.
#[test]
fn new_file_deleted_before_pack_is_never_sent_nor_held() {
    let mut s = setup();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::write(s.upper.join("f"), b"new").unwrap();
    let upper = s.upper.clone();
    round_with_hook_before_pack(&mut s.c, &s.p, || fs::remove_file(upper.join("f")).unwrap());
    assert!(!s.home.join("f").exists());
    assert!(!s.c.manifest().entries.contains_key(&rel("f")));
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(!s.home.join("f").exists());
    assert!(!s.c.manifest().entries.contains_key(&rel("f")));
}

/// Sibling window, through the sent log: step 3 put a new file on P, the
/// round did not commit (connection cut), the user deleted the file before
/// the retry and the union wrote no whiteout. The manifest never held the
/// file, so only the sent log says P may have it.
#[test]
fn file_sent_by_an_uncommitted_round_then_deleted_is_deleted_on_project() {
    let mut s = setup();
    fs::write(s.upper.join("keep"), b"k").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::write(s.upper.join("f"), b"new").unwrap();
    assert!(run_round(&mut s.c, &s.p, Some(Cut::AfterStep3)).is_err());
    assert_eq!(fs::read(s.home.join("f")).unwrap(), b"new", "step 3 reached P");
    fs::remove_file(s.upper.join("f")).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    assert!(!s.home.join("f").exists(), "deleted on C, still on P");
}

/// Pull policy `changed` (the compute service's default): P's new file at a path C does not
/// hold is pulled in step 4, but the user made a file there after the scan.
/// The user's version stays (not applied: the path is no longer absent, as
/// it was at the scan), and the next round it meets the conflict rule on P:
/// P's version stays, the user's is kept beside it, and C gets P's.
#[test]
fn pulled_file_the_user_made_meanwhile_stays_the_users_then_meets_the_conflict_rule() {
    let mut s = setup_pulling(cs_engine::DEFAULT_PULL);
    fs::write(s.upper.join("keep"), b"k").unwrap();
    run_round(&mut s.c, &s.p, None).unwrap();
    fs::write(s.home.join("x"), b"project").unwrap();
    let upper = s.upper.clone();
    round_with_hook_before_pack(&mut s.c, &s.p, || fs::write(upper.join("x"), b"user").unwrap());
    assert_eq!(fs::read(s.upper.join("x")).unwrap(), b"user", "the pull overwrote the user's file");
    run_round(&mut s.c, &s.p, None).unwrap();
    assert_eq!(fs::read(s.home.join("x")).unwrap(), b"project");
    let copies: Vec<Vec<u8>> = fs::read_dir(&s.home)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("x.conflict-"))
        .map(|e| fs::read(e.path()).unwrap())
        .collect();
    assert_eq!(copies, [b"user".to_vec()], "the user's version is kept once, beside P's");
    assert_eq!(fs::read(s.upper.join("x")).unwrap(), b"project");
}
