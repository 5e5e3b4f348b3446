//! Issue 11, end to end: what the user does to the project's files in the merged view, with
//! each union backend. The user acts as an unprivileged account (`setpriv`, `HOME` = the
//! merged view) on the real bed (sshd, sshfs lower with caches as long-lived as production's,
//! both services), and the project's changes happen on P's home meanwhile:
//!
//! - `mv ~/src ~/src2` seconds after the project deleted a file in `src`;
//! - `rm -r` of a directory whose files were made on C and synced seconds earlier;
//! - `touch -m -d @T` of a project file;
//! - a name the user looked up (ENOENT) before the project created it (overlayfs's negative
//!   dentry), and a project deletion, both visible when `cs-actor sync --wait` returns;
//! - `mv` of project directories with children (overlayfs's redirects), synced whole.
//!
//! The first three fail on unionfs-fuse (docs/union.md): their unionfs-fuse twins are
//! `#[ignore]`d, with how they fail there.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::*;

per_union! {
    both: [
        a_name_looked_up_before_the_project_made_it_shows_when_sync_wait_returns,
        mv_of_project_directories_with_children_reaches_the_project_whole,
    ],
    unionfs_fuse_ignored: [
        mv_of_a_project_directory_after_the_project_deleted_a_file_in_it =
            "unionfs-fuse copies the tree up from the lower's stale listing: mv fails with ENOENT",
        rm_r_of_a_directory_made_on_c_and_synced_succeeds =
            "unionfs-fuse: rm -r makes no whiteouts (the lower's cache still says the files are not there): \
             the deletion never reaches the project (or rmdir fails with ENOTEMPTY once the lower lists them)",
        touch_m_of_a_project_file_sets_its_mtime_both_sides =
            "unionfs-fuse ignores a setattr of the mtime alone: touch -m leaves the old mtime",
    ],
}

/// A bed whose home belongs to the project's user, with `seed`'s files, and compute server
/// `gpu-1` serving it to the compute user with production's lower caches; returns the bed and
/// the compute user.
fn user_bed(name: &str, seed: impl FnOnce(&Path)) -> Option<(Bed, Account)> {
    let (mut bed, comp) = project_owned_bed(name, seed)?;
    let opts = ComputeOpts { user: Some(&comp), lower_cache: Some(PRODUCTION_STALENESS), ..Default::default() };
    bed.start_compute_opts("gpu-1", &opts);
    Some((bed, comp))
}

/// The names in `root/dir`, sorted (empty if it cannot be listed).
fn names(root: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join(dir))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Issue 11's first failure: the project deletes a file in `src`; seconds later (the lower's
/// listing of `src` still holds it) the user renames `src`. The rename must succeed at once,
/// and the round carry it: `src2` with `src`'s remaining files on both sides, no `src`, and
/// the deleted file nowhere.
fn mv_of_a_project_directory_after_the_project_deleted_a_file_in_it() {
    let Some((bed, user)) = user_bed("mv-stale", |h| {
        put(h, "src/a.txt", "a\n");
        put(h, "src/b.txt", "b: the project deletes this\n");
        put(h, "src/sub/c.txt", "c\n");
        put(h, "src/sub/d.txt", "d\n");
    }) else {
        return;
    };
    let (h, m) = (bed.home.clone(), bed.merged());
    // The user has looked at src: names, attributes, listings are cached.
    user_must(&bed, &user, "cd \"$HOME\" && ls -lR src > /dev/null && cat src/a.txt src/b.txt > /dev/null");
    fs::remove_file(h.join("src/b.txt")).unwrap();

    let out = as_user(&user, &m, "cd \"$HOME\" && mv src src2");
    if !out.ok() {
        bed.fail(&format!("`mv src src2` seconds after the project deleted src/b.txt: {}", out.describe()));
    }
    bed.sync_wait();

    let want = [("src2/a.txt", "a\n"), ("src2/sub/c.txt", "c\n"), ("src2/sub/d.txt", "d\n")];
    for (side, root) in [("project", &h), ("merged view", &m)] {
        for (rel, content) in want {
            match fs::read_to_string(root.join(rel)) {
                Ok(s) if s == content => {}
                other => bed.fail(&format!("{side}: {rel} is {other:?}, not {content:?}")),
            }
        }
        for gone in ["src", "src2/b.txt"] {
            if exists(root, gone) {
                bed.fail(&format!("{side}: {gone} still shows after `sync --wait`"));
            }
        }
        assert_eq!(names(root, "src2"), ["a.txt", "sub"], "{side}: src2");
    }
    user_must(&bed, &user, "cd \"$HOME\" && test ! -e src && cat src2/a.txt src2/sub/c.txt > /dev/null");
    bed.sync_and_converge();
    bed.finish();
}

/// Issue 11's second failure: files the user made on C reach the project (`sync --wait`),
/// then `rm -r` of their directory, seconds later, must succeed (no ENOTEMPTY from the
/// lower, which lists them now), and the deletion reach the project.
fn rm_r_of_a_directory_made_on_c_and_synced_succeeds() {
    let Some((bed, user)) = user_bed("rm-r-synced", |_| {}) else {
        return;
    };
    let (h, m) = (bed.home.clone(), bed.merged());
    user_must(
        &bed,
        &user,
        "set -e; cd \"$HOME\"; mkdir -p work/sub; for i in 1 2 3 4 5; do echo $i > work/f$i; done; \
         echo g > work/sub/g",
    );
    bed.sync_wait();
    assert_eq!(read(&h, "work/f5"), "5\n", "the files made on C did not reach the project");
    assert_eq!(read(&h, "work/sub/g"), "g\n");

    let out = as_user(&user, &m, "cd \"$HOME\" && rm -r work");
    if !out.ok() {
        bed.fail(&format!("`rm -r work` of files made on C and synced: {}", out.describe()));
    }
    assert!(!exists(&m, "work"), "work still shows in the merged view after rm -r");
    bed.sync_wait();
    if exists(&h, "work") {
        bed.fail(&format!(
            "the deletion of work did not reach the project: {:?}",
            find_names(&h.join("work"), |_| true)
        ));
    }
    assert!(!exists(&m, "work"), "work came back in the merged view after the round");
    bed.sync_and_converge();
    bed.finish();
}

/// Issue 11's third failure: `touch -m -d @T` of a project file (only in the lower) sets its
/// mtime in the merged view at once, and on the project after the round; the content stays.
fn touch_m_of_a_project_file_sets_its_mtime_both_sides() {
    const OLD: i64 = 1_500_000_000;
    const NEW: i64 = 1_600_000_000;
    let Some((bed, user)) = user_bed("touch-m", |h| {
        put(h, "proj.txt", "the project's file\n");
        set_mtime(h, "proj.txt", OLD, 0);
    }) else {
        return;
    };
    let (h, m) = (bed.home.clone(), bed.merged());
    assert_eq!(mtime(&m, "proj.txt").0, OLD, "the merged view shows another mtime before touch");

    user_must(&bed, &user, &format!("cd \"$HOME\" && touch -m -d @{NEW} proj.txt"));
    let shown = user_must(&bed, &user, "stat -c %Y \"$HOME/proj.txt\"");
    assert_eq!(shown.trim(), NEW.to_string(), "`touch -m` did not set the mtime in the merged view");
    assert_eq!(mtime(&m, "proj.txt").0, NEW);

    bed.sync_wait();
    assert_eq!(mtime(&h, "proj.txt").0, NEW, "the project's mtime after the round");
    assert_eq!(read(&h, "proj.txt"), "the project's file\n");
    assert_eq!(mtime(&m, "proj.txt").0, NEW, "the merged view's mtime after the round");
    bed.sync_and_converge();
    bed.finish();
}

/// overlayfs's negative dentry (issue 11): the user looks a name up before the project
/// creates it (ENOENT, remembered by the kernel), the project creates it, and when
/// `cs-actor sync --wait` returns the user opens and reads it at once. Likewise a file the
/// user read and the project deleted is gone, and then the new file once the project deletes
/// it too.
fn a_name_looked_up_before_the_project_made_it_shows_when_sync_wait_returns() {
    let Some((bed, user)) = user_bed("negative-dentry", |h| {
        put(h, "old.txt", "the project deletes this\n");
        put(h, "docs/guide.txt", "the guide\n");
    }) else {
        return;
    };
    let h = bed.home.clone();
    // Looked up, absent: the user's ENOENT (exit status of stat), for a name at the top and one
    // in a directory the user listed.
    user_must(
        &bed,
        &user,
        "cd \"$HOME\" && cat old.txt > /dev/null && ls docs > /dev/null \
         && ! stat newfile 2> /dev/null && ! stat docs/later.txt 2> /dev/null",
    );
    put(&h, "newfile", "made by the project after C looked\n");
    put(&h, "docs/later.txt", "also made after C looked\n");
    fs::remove_file(h.join("old.txt")).unwrap();
    chown_tree(&h, &account(PROJECT_ACCOUNT));

    bed.sync_wait();
    let out = as_user(&user, &bed.merged(), "cd \"$HOME\" && cat newfile docs/later.txt && test ! -e old.txt");
    if !out.ok() || out.stdout != "made by the project after C looked\nalso made after C looked\n" {
        bed.fail(&format!("right after `sync --wait`, as the user: {}", out.describe()));
    }
    let listed = user_must(&bed, &user, "ls \"$HOME\"");
    assert!(listed.lines().any(|l| l == "newfile"), "ls does not list newfile: {listed}");
    assert!(!listed.lines().any(|l| l == "old.txt"), "ls lists old.txt: {listed}");

    // The project deletes what it made; gone when `sync --wait` returns.
    fs::remove_file(h.join("newfile")).unwrap();
    bed.sync_wait();
    let out = as_user(&user, &bed.merged(), "cd \"$HOME\" && test ! -e newfile && cat docs/later.txt > /dev/null");
    if !out.ok() {
        bed.fail(&format!(
            "newfile still shows, or docs/later.txt not, after the project deleted newfile: {}",
            out.describe()
        ));
    }
    bed.sync_and_converge();
    bed.finish();
}

/// `mv` of project directories with children (a rename within the home's root, and one into a
/// new directory): instant with overlayfs (a redirect, nothing copied), and the round must
/// carry the moved trees whole (every file, content, mode, symlink) and delete the old paths.
fn mv_of_project_directories_with_children_reaches_the_project_whole() {
    let Some((bed, user)) = user_bed("mv-lower-dir", |h| {
        put(h, "lib/x.py", "x = 1\n");
        put(h, "lib/pkg/y.py", "y = 2\n");
        put(h, "lib/pkg/deep/data.bin", noise(11, 300_000));
        put(h, "lib/run.sh", "#!/bin/sh\necho run\n");
        chmod(h, "lib/run.sh", 0o755);
        symlink("x.py", h, "lib/link");
        put(h, "tools/t1", "tool one\n");
        put(h, "tools/sub/t2", "tool two\n");
    }) else {
        return;
    };
    let (h, m) = (bed.home.clone(), bed.merged());
    let before_lib = tree(&h.join("lib"));
    let before_tools = tree(&h.join("tools"));
    user_must(&bed, &user, "set -e; cd \"$HOME\"; mv lib lib2; mkdir bin; mv tools bin/tools");
    let check = |when: &str| {
        for (side, root) in [("project", &h), ("merged view", &m)] {
            for gone in ["lib", "tools"] {
                if exists(root, gone) {
                    bed.fail(&format!("{side}, {when}: {gone} still shows after the move was synced"));
                }
            }
            for (moved, before) in [("lib2", &before_lib), ("bin/tools", &before_tools)] {
                let now = tree(&root.join(moved));
                if let Some(d) = diff_views(&now, before, Path::new("/nonexistent")) {
                    bed.fail(&format!("{side}, {when}: {moved} is not what was moved:\n{d}"));
                }
            }
        }
        user_must(&bed, &user, "cd \"$HOME\" && ls -lR lib2 bin/tools > /dev/null && cat lib2/pkg/y.py > /dev/null");
    };
    bed.sync_wait();
    check("after the round");
    assert_eq!(mode(&h, "lib2/run.sh"), 0o755);
    // Once the lower's caches have forgotten the old paths (the project deleted them), the
    // moved directories' origin is gone from the lower: rounds and the user go on the same.
    std::thread::sleep(PRODUCTION_STALENESS + Duration::from_secs(1));
    bed.sync_wait();
    check("once the lower's caches expired");
    bed.sync_and_converge();
    bed.finish();
}
