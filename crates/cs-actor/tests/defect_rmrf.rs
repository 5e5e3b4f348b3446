//! Issue 8, defect 1, end to end (real sshd, sshfs, each union backend and services, default
//! whiteout grace): `rm -rf DIR; mkdir DIR` on the compute server, then a file in the new
//! directory. unionfs-fuse keeps the directory's whiteout beside the re-created directory
//! (overlayfs makes the new directory opaque); the round after the one that synced the new
//! file sent that deletion again and the project deleted the new file, for good.

mod support;

use std::fs;
use std::time::Duration;

use cs_protocol::RelPath;
use support::*;

per_union! {
    both: [
        a_write_in_a_directory_recreated_after_rm_rf_stays_on_the_project,
        a_file_created_where_a_directory_was_removed_stays_on_the_project,
    ],
}

/// Whether the union left the marker of a removed lower directory at `rel`: unionfs-fuse's
/// whiteout beside it, or overlayfs's opaque directory.
fn dir_marker(union: Union, upper: &std::path::Path, rel: &RelPath) -> bool {
    match union {
        Union::UnionfsFuse => cs_union::is_hidden(upper, rel),
        Union::Overlay => cs_union::overlay::list_markers(upper)
            .unwrap_or_else(|e| panic!("overlay markers of {}: {e}", upper.display()))
            .contains(&cs_union::overlay::Marker::Opaque(rel.clone())),
    }
}

fn a_write_in_a_directory_recreated_after_rm_rf_stays_on_the_project() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    // (README: a home holding only data/ would be empty for a moment, which pauses syncing.)
    let bed = Bed::start("rmrf-recreate", |h| {
        put(h, "data/deep/er/x", "old\n");
        put(h, "README", "hello\n");
    });
    let (h, m, up) = (bed.home.clone(), bed.merged(), bed.upper());
    bed.sync_wait();
    assert_eq!(read(&m, "data/deep/er/x"), "old\n");

    // The user's part, as reported.
    fs::remove_dir_all(m.join("data")).unwrap();
    fs::create_dir(m.join("data")).unwrap();
    put(&m, "data/n", "fresh\n");

    bed.sync_wait();
    assert_eq!(read(&h, "data/n"), "fresh\n", "the new file did not reach the project");
    assert!(!exists(&h, "data/deep"), "the deleted tree is still on the project");
    // The situation of the report: the union kept the directory's marker beside the new
    // directory (were this to change, the test would no longer prove anything).
    let data = RelPath::new("data").unwrap();
    assert!(dir_marker(bed.union, &up, &data), "no marker of the removed data/ beside the re-created one");
    assert!(up.join("data/n").is_file());

    // Nothing changes; the next rounds must change nothing either.
    std::thread::sleep(Duration::from_secs(3));
    bed.sync_wait();
    if !exists(&h, "data/n") {
        bed.fail("the round after sent the deletion of data/ again: data/n is gone from the project");
    }
    assert_eq!(read(&h, "data/n"), "fresh\n");
    bed.sync_and_converge();
    assert_eq!(read(&h, "data/n"), "fresh\n");
    assert_eq!(read(&m, "data/n"), "fresh\n");

    // unionfs-fuse: once the grace is over (25 s by default) the marker goes, the directory is
    // no longer opaque, and the project's copy (the same) shows through. overlayfs's markers
    // stay (removing one behind its back is undefined: docs/union.md).
    if bed.union == Union::UnionfsFuse {
        std::thread::sleep(Duration::from_secs(26));
        bed.sync_and_converge();
        assert!(!cs_union::is_hidden(&up, &data), "the retired whiteout outlived its grace");
    }
    assert_eq!(read(&h, "data/n"), "fresh\n");
    assert!(!exists(&m, "data/deep"), "the deleted tree came back in the merged view");
    bed.finish();
}

/// The same for a file: `rm -rf` a directory, then a file at its name. The union removes the
/// file marker when the file is created; the new file must stay on the project too.
fn a_file_created_where_a_directory_was_removed_stays_on_the_project() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    let bed = Bed::start("rmrf-file", |h| {
        put(h, "data/deep/x", "old\n");
        put(h, "README", "hello\n");
    });
    let (h, m) = (bed.home.clone(), bed.merged());
    bed.sync_wait();
    fs::remove_dir_all(m.join("data")).unwrap();
    put(&m, "data", "now a file\n");
    bed.sync_wait();
    assert_eq!(read(&h, "data"), "now a file\n");
    std::thread::sleep(Duration::from_secs(3));
    bed.sync_and_converge();
    assert_eq!(read(&h, "data"), "now a file\n");
    bed.finish();
}
