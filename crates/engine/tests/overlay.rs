//! The compute side over a real kernel overlayfs (`redirect_dir=on,index=on`, as cs-actor
//! mounts it), whose lower layer is P's home itself (a plain directory that changes behind
//! the overlay's back, as the sshfs lower does). Every change a round makes goes through the
//! merged view (`UnionKind::Overlay`); these check what the user sees there, and what P has,
//! after each round. Needs root (it mounts).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use cs_engine::driver::run_round;
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide, PullPolicy, UnionKind};
use cs_protocol::ClientId;
use cs_union::overlay::{kernel_has_overlay, Overlay, OverlayGuard};

struct Bed {
    // Field order is drop order: unmount before the directories go.
    c: ComputeSide,
    p: ProjectSide,
    _mount: OverlayGuard,
    home: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
    _tmp: tempfile::TempDir,
}

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn read(root: &Path, rel: &str) -> std::io::Result<String> {
    fs::read_to_string(root.join(rel))
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// P's home holds `seed` (path, content) before the overlay is mounted over it.
fn bed(seed: &[(&str, &str)]) -> Bed {
    assert!(rustix::process::geteuid().is_root(), "mounting overlayfs needs root");
    assert!(kernel_has_overlay(), "this kernel does not list overlay in /proc/filesystems");
    // Not tmpfs: the upper layer needs trusted xattrs (tmpfs has them only since 6.6).
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = tmp.path();
    let (home, upper, merged) = (d.join("home"), d.join("upper"), d.join("merged"));
    for p in [&home, &upper, &merged] {
        fs::create_dir_all(p).unwrap();
    }
    for (rel, content) in seed {
        put(&home, rel, content);
    }
    let ov = Overlay {
        upper: upper.clone(),
        lower: home.clone(),
        work: d.join("work"),
        merged: merged.clone(),
        extra: vec!["redirect_dir=on".into(), "index=on".into()],
    };
    let mount = ov.mount().unwrap();
    let mut cfg = ComputeConfig::new(ClientId::new("c0").unwrap(), upper.clone(), d.join("cstate"));
    cfg.pull = PullPolicy::Changed { max_file_size: None };
    cfg.union = UnionKind::Overlay { merged: merged.clone() };
    let c = ComputeSide::open(cfg).unwrap();
    let p = ProjectSide::open(ProjectConfig::new(home.clone(), d.join("pstate"))).unwrap();
    let mut b = Bed { c, p, _mount: mount, home, upper, merged, _tmp: tmp };
    // The first round gives C its cursor; P's changes are pulled from then on.
    b.round();
    b
}

impl Bed {
    fn round(&mut self) -> cs_engine::driver::RoundReport {
        run_round(&mut self.c, &self.p, None).unwrap()
    }

    /// Nothing in the upper layer that the engine wrote behind the overlay's back would show
    /// here; what matters is what a user reads through the merged view.
    fn merged_has(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.merged.join(rel)).is_ok()
    }
}

#[test]
fn a_name_looked_up_before_the_project_made_it_is_there_after_the_round() {
    let mut b = bed(&[("keep", "k")]);
    // The user looks the name up: the overlay caches "absent" (a negative dentry).
    assert_eq!(fs::metadata(b.merged.join("late")).unwrap_err().kind(), ErrorKind::NotFound);
    put(&b.home, "late", "made on P");
    put(&b.home, "newdir/inner", "deep");
    // Without the round the overlay keeps saying ENOENT although the lower has it: the
    // failure this backend's design is about (docs/union.md, point 1).
    assert_eq!(fs::metadata(b.merged.join("late")).unwrap_err().kind(), ErrorKind::NotFound);
    b.round();
    assert_eq!(read(&b.merged, "late").unwrap(), "made on P");
    assert_eq!(read(&b.merged, "newdir/inner").unwrap(), "deep");
    // A change of P's to a file C holds now reaches the merged view too.
    put(&b.home, "late", "changed on P");
    b.round();
    assert_eq!(read(&b.merged, "late").unwrap(), "changed on P");
}

#[test]
fn the_projects_deletions_leave_the_merged_view_and_are_never_sent_back() {
    let mut b = bed(&[("gone", "g"), ("d/x", "x"), ("d/y", "y"), ("stay", "s")]);
    // The user reads them: the overlay holds positive dentries for them.
    assert_eq!(read(&b.merged, "gone").unwrap(), "g");
    assert_eq!(names(&b.merged.join("d")), ["x", "y"]);
    fs::remove_file(b.home.join("gone")).unwrap();
    b.round();
    // The engine's unlink through the merged view hides it.
    assert!(!b.merged_has("gone"), "{:?}", names(&b.merged));
    fs::remove_dir_all(b.home.join("d")).unwrap();
    // A plain directory as the lower never tells the overlay that `d` went: its cached
    // dentry stays positive, and rmdir through the merged view fails with ENOENT. sshfs
    // does tell (FUSE revalidates its dentries, and the overlay asks it): dropping the
    // dentry cache stands in for that here.
    drop_dentries();
    b.round();
    assert!(!b.merged_has("d"), "{:?}", names(&b.merged));
    assert_eq!(read(&b.merged, "stay").unwrap(), "s");
    // P makes them again: the round brings them back, and C never sent P its own
    // deletion of them in between.
    put(&b.home, "gone", "again");
    put(&b.home, "d/z", "z");
    let r = b.round();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert_eq!(read(&b.merged, "gone").unwrap(), "again");
    assert_eq!(names(&b.merged.join("d")), ["z"]);
    assert_eq!(read(&b.home, "gone").unwrap(), "again");
    let r = b.round();
    assert_eq!((r.deletes_to_project, r.sent_to_project, r.sent_to_compute), (0, 0, 0), "{r:?}");
}

/// What sshfs's revalidation does for the overlay above it, for a plain-directory lower
/// (see the deletions test).
fn drop_dentries() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

#[test]
fn the_users_deletion_of_a_project_file_reaches_the_project_once() {
    let mut b = bed(&[("old", "o"), ("src/a", "a"), ("src/sub/b", "b")]);
    fs::remove_file(b.merged.join("old")).unwrap();
    fs::remove_dir_all(b.merged.join("src")).unwrap();
    let r = b.round();
    assert!(r.deletes_to_project >= 2, "{r:?}");
    assert!(!b.home.join("old").exists() && !b.home.join("src").exists());
    // The whiteouts stay in the upper layer (never removed behind the overlay's back),
    // retired: the next rounds send nothing.
    let r = b.round();
    assert_eq!((r.deletes_to_project, r.sent_to_project), (0, 0), "{r:?}");
    // P makes `old` again: it shows through the round, over the whiteout.
    put(&b.home, "old", "new on P");
    b.round();
    assert_eq!(read(&b.merged, "old").unwrap(), "new on P");
    assert_eq!(read(&b.home, "old").unwrap(), "new on P");
}

#[test]
fn a_directory_made_again_keeps_only_its_new_content_on_both_sides() {
    let mut b = bed(&[("d/old1", "1"), ("d/old2", "2")]);
    fs::remove_dir_all(b.merged.join("d")).unwrap();
    fs::create_dir(b.merged.join("d")).unwrap();
    put(&b.merged, "d/new", "n");
    b.round();
    assert_eq!(names(&b.home.join("d")), ["new"]);
    assert_eq!(names(&b.merged.join("d")), ["new"]);
    // The opaque directory is the deletion P applied: not sent again when P adds to it.
    put(&b.home, "d/from_p", "p");
    let r = b.round();
    assert_eq!(r.deletes_to_project, 0, "{r:?}");
    assert_eq!(names(&b.home.join("d")), ["from_p", "new"]);
    assert_eq!(names(&b.merged.join("d")), ["from_p", "new"]);
}

#[test]
fn moving_a_project_directory_keeps_every_file_on_both_sides() {
    let mut b = bed(&[("src/a", "a"), ("src/sub/b", "b"), ("src/sub/deeper/c", "c"), ("other", "o")]);
    // With redirect_dir=on this returns at once and copies nothing up.
    fs::rename(b.merged.join("src"), b.merged.join("src2")).unwrap();
    put(&b.merged, "src2/added", "new");
    b.round();
    assert!(!b.home.join("src").exists(), "the old path went on P");
    for (rel, want) in [("src2/a", "a"), ("src2/sub/b", "b"), ("src2/sub/deeper/c", "c"), ("src2/added", "new")] {
        assert_eq!(read(&b.home, rel).unwrap(), want, "P: {rel}");
        // The lower no longer has `src`: what the merged view shows comes from the upper.
        assert_eq!(read(&b.merged, rel).unwrap(), want, "merged: {rel}");
    }
    assert!(!b.merged_has("src"));
    let r = b.round();
    assert_eq!((r.deletes_to_project, r.sent_to_project, r.sent_to_compute), (0, 0, 0), "{r:?}");
}

#[test]
fn a_file_deleted_here_and_changed_on_the_project_comes_back_with_the_projects_content() {
    let mut b = bed(&[("f", "v1")]);
    assert_eq!(read(&b.merged, "f").unwrap(), "v1");
    fs::remove_file(b.merged.join("f")).unwrap();
    put(&b.home, "f", "v2 on P");
    b.round();
    // Modification wins: P kept its version; C's whiteout cannot be removed, so P's
    // version comes back through the round, written over it.
    assert_eq!(read(&b.home, "f").unwrap(), "v2 on P");
    assert_eq!(read(&b.merged, "f").unwrap(), "v2 on P");
}

#[test]
fn the_projects_file_replacing_a_directory_and_the_reverse_show_in_the_merged_view() {
    let mut b = bed(&[("was_dir/x", "x"), ("was_file", "f")]);
    assert_eq!(names(&b.merged.join("was_dir")), ["x"]);
    assert_eq!(read(&b.merged, "was_file").unwrap(), "f");
    fs::remove_dir_all(b.home.join("was_dir")).unwrap();
    put(&b.home, "was_dir", "now a file");
    fs::remove_file(b.home.join("was_file")).unwrap();
    put(&b.home, "was_file/inside", "now a dir");
    // The overlay still caches the old directory (see drop_dentries): P's file cannot be
    // placed over it this round, and the round goes on (the file comes next round).
    let r = b.round();
    assert!(r.skipped_on_compute.iter().any(|p| p.as_bytes() == b"was_dir"), "{r:?}");
    assert_eq!(read(&b.merged, "was_file/inside").unwrap(), "now a dir");
    drop_dentries();
    b.round();
    assert_eq!(read(&b.merged, "was_dir").unwrap(), "now a file");
    assert_eq!(read(&b.merged, "was_file/inside").unwrap(), "now a dir");
}

#[test]
fn the_users_work_reaches_the_project_and_nothing_comes_back() {
    let mut b = bed(&[("lib/code.py", "print(1)")]);
    put(&b.merged, "lib/code.py", "print(2)");
    put(&b.merged, "new/file", "n");
    let r = b.round();
    assert!(r.sent_to_project >= 3, "{r:?}");
    assert_eq!(r.sent_to_compute, 0, "no echo: {r:?}");
    assert_eq!(read(&b.home, "lib/code.py").unwrap(), "print(2)");
    assert_eq!(read(&b.home, "new/file").unwrap(), "n");
    assert!(b.upper.join("lib/code.py").exists(), "copied up");
}
