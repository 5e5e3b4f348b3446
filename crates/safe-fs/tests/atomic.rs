//! write_atomic: local state files.

use std::os::unix::fs::PermissionsExt;

use cs_safe_fs::write_atomic;

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn creates_and_replaces_without_leaving_temp_files() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("state.bin");
    write_atomic(&p, b"first version, rather long").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"first version, rather long");
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o600);

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomic(&p, b"second").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"second");
    // The mode of the replaced file is kept.
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777, 0o640);
    write_atomic(&p, b"").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"");
    assert_eq!(names(t.path()), ["state.bin"]);
}

#[test]
fn replaces_a_symlink_itself_not_its_target() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("target"), b"target").unwrap();
    std::os::unix::fs::symlink("target", t.path().join("state")).unwrap();
    write_atomic(&t.path().join("state"), b"new").unwrap();
    assert!(std::fs::symlink_metadata(t.path().join("state")).unwrap().is_file());
    assert_eq!(std::fs::read(t.path().join("target")).unwrap(), b"target");
    assert_eq!(names(t.path()), ["state", "target"]);
}

#[test]
fn errors_leave_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    // Missing directory.
    let err = write_atomic(&t.path().join("nope/state"), b"x").unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // Target is a non-empty directory: rename fails, temp removed.
    std::fs::create_dir_all(t.path().join("dir/child")).unwrap();
    let err = write_atomic(&t.path().join("dir"), b"x").unwrap_err();
    assert!(err.io_kind().is_some(), "{err:?}");
    assert_eq!(names(t.path()), ["dir"]);
    // No file name.
    assert!(write_atomic(std::path::Path::new("/"), b"x").is_err());
}

#[test]
fn long_file_names_still_get_a_valid_temp_name() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("n".repeat(255));
    write_atomic(&p, b"ok").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"ok");
    assert_eq!(names(t.path()).len(), 1);
}
