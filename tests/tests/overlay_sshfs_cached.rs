//! C's merged view on the real kernel overlayfs over P's home through sshfs mounted with
//! the production cache options (deploy/examples/compute.toml: sshfs's own cache of
//! attributes and listings 9 s, the kernel's 1 s), where the property test runs sshfs with
//! every cache off. What those caches do to step 2 is the subject: P deleted a directory C
//! holds, sshfs still says the directory is there for a few seconds, and overlayfs's
//! `rmdir` (which lists the lower part to check the directory is empty) answers ENOENT.
//! Seen in a 10-minute soak before the fix: three rounds failed for each one that committed.
//!
//! Needs root, overlayfs, sshd and sshfs; without them it prints a skip note and passes,
//! unless `CI` is set.

use std::time::{Duration, Instant};

use cs_tests::fixture::World;
use cs_tests::rp;
use cs_tests::view::View;

mod common;
use common::SshfsWorlds;

/// sshfs's caches as cs-actor's deployment sets them (`SshfsOptions` and the example config).
const PRODUCTION_CACHES: [&str; 6] =
    ["dir_cache=yes", "dcache_timeout=9", "entry_timeout=1", "attr_timeout=1", "negative_timeout=10", "auto_cache"];

fn bed() -> Option<SshfsWorlds> {
    if !cs_tests::fixture::real_overlay_available() || !cs_testbed::real_tools_available() {
        return None;
    }
    let scratch = cs_tests::fixture::overlay_scratch_base();
    Some(SshfsWorlds::start("cs-overlay-sshfs-cached-", &scratch, &PRODUCTION_CACHES))
}

/// P deletes directories C holds (written into C's upper layer by step 4) while sshfs
/// still lists them: the round that carries the deletions commits (what cannot be removed
/// yet stays, still held, and P names it again), and the rounds after converge once the
/// caches expire, with nothing of P's deletion resurrected.
#[test]
fn a_directory_p_deleted_that_sshfs_still_lists_does_not_fail_the_round() {
    let Some(bed) = bed() else { return };
    let mut w = World::with_real_overlay_over(&bed.base, &bed.mirror).expect("mount the real overlay over sshfs");
    for d in ["a", "b/c", "e/f/g"] {
        w.p().put(&rp(&format!("{d}/file")), d.as_bytes()).unwrap();
    }
    w.round();
    let upper = w.c().upper.clone();
    assert!(upper.join("b/c/file").exists(), "step 4 did not write P's files into the upper layer");
    // C's merged view looks the directories up (sshfs caches their attributes, not their
    // listings: nothing lists them), then P deletes them.
    for d in ["a", "b/c", "e/f/g"] {
        assert!(w.c_view(0).exists(&rp(&format!("{d}/file"))));
    }
    for d in ["a", "b", "e"] {
        w.p().remove_dir_all(&rp(d)).unwrap();
    }
    let first = w.try_round_of(0, None);
    assert!(first.is_ok(), "the round carrying P's deletions failed: {first:?}");
    // Within sshfs's cache lifetime (9 s) plus a margin, every deletion shows on C.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        w.round();
        if w.converged().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "not converged 30 s after P's deletions: {:?}", w.converged());
        std::thread::sleep(Duration::from_millis(500));
    }
    for d in ["a", "b", "e"] {
        assert!(!w.p().exists(&rp(d)), "{d} came back on P");
        assert!(!w.c_view(0).exists(&rp(d)), "{d} still in C's merged view");
    }
}
