//! `SafeRoot::with_owner`: what a root-run service creates belongs to the
//! configured user. Runs as root (the tests of this project do); as anyone
//! else the giving-away test checks the typed error instead.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{rp, ts};
use cs_safe_fs::{FsError, Owner, SafeRoot};

/// Ids no account on a test machine uses, as root may give files to any id.
const OTHER: Owner = Owner { uid: 54_321, gid: 54_322 };

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn ids(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn created_entries_get_the_owner_and_existing_ones_keep_theirs() {
    if !is_root() {
        eprintln!("skipped: not root, cannot give files away (see owner_error_is_typed)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("old")).unwrap();
    let root = SafeRoot::open(t.path()).unwrap().with_owner(Some(OTHER));
    assert_eq!(root.owner(), Some(OTHER));

    root.create_dir(&rp("d"), 0o755).unwrap();
    root.create_dir_all(&rp("old/a/b"), 0o755).unwrap();
    let (tmp, st, _) =
        root.write_temp(&rp("d/f"), ".t1", &mut &b"data"[..], 0o640, ts(1_700_000_000, 5), false).unwrap();
    root.rename(&tmp, &rp("d/f")).unwrap();
    let ltmp = root.symlink_temp(&rp("d/l"), ".t2", "f", ts(1_700_000_000, 0)).unwrap();
    root.rename(&ltmp, &rp("d/l")).unwrap();

    let want = (OTHER.uid, OTHER.gid);
    for p in ["d", "old/a", "old/a/b", "d/f", "d/l"] {
        assert_eq!(ids(&t.path().join(p)), want, "{p}");
    }
    // The existing directory, and the root itself, are not re-owned.
    assert_eq!(ids(&t.path().join("old")), (0, 0));
    // Mode and mtime still as asked (the chown comes before the chmod).
    assert_eq!(st.mode, 0o640);
    assert_eq!(std::fs::symlink_metadata(t.path().join("d/f")).unwrap().mode() & 0o7777, 0o640);
    // The symlink's target was not followed by the chown.
    assert_eq!(std::fs::read_link(t.path().join("d/l")).unwrap(), Path::new("f"));
}

#[test]
fn a_symlink_is_owned_itself_never_its_target() {
    if !is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("victim"), b"x").unwrap();
    let root = SafeRoot::open(t.path()).unwrap().with_owner(Some(OTHER));
    let target = outside.path().join("victim");
    let tmp = root.symlink_temp(&rp("l"), ".t", target.to_str().unwrap(), ts(1, 0)).unwrap();
    assert_eq!(ids(&t.path().join(tmp.as_path())), (OTHER.uid, OTHER.gid));
    assert_eq!(ids(&target), (0, 0), "the chown followed the symlink");
}

#[test]
fn owner_error_is_typed_and_leaves_no_temp() {
    // As root, giving a file away cannot fail on a local disk; an id the
    // kernel rejects (-1 means "unchanged" to chown) is not expressible, so
    // this test runs as a user, where any other uid is refused (EPERM).
    if is_root() {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "owner_error_is_typed_and_leaves_no_temp", "--nocapture"])
            .output();
        match out {
            Ok(o) => assert!(
                o.status.success(),
                "as nobody: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("skipped: setpriv not available: {e}"),
        }
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let root = SafeRoot::open(t.path()).unwrap().with_owner(Some(OTHER));
    let err = root.write_temp(&rp("f"), ".t", &mut &b"data"[..], 0o644, ts(1, 0), false).unwrap_err();
    assert!(matches!(err, FsError::Owner { uid: 54_321, gid: 54_322, .. }), "{err:?}");
    assert!(err.to_string().contains("uid 54321"), "{err}");
    assert!(!t.path().join(".t").exists(), "the temp file stayed");
    let err = root.symlink_temp(&rp("l"), ".t2", "x", ts(1, 0)).unwrap_err();
    assert!(matches!(err, FsError::Owner { .. }), "{err:?}");
    assert!(std::fs::symlink_metadata(t.path().join(".t2")).is_err(), "the temp symlink stayed");
    let err = root.create_dir(&rp("d"), 0o755).unwrap_err();
    assert!(matches!(err, FsError::Owner { .. }), "{err:?}");
}
