//! Kernel overlayfs, really mounted: what deleting, re-creating and moving lower entries
//! through the merged view leaves in the upper layer, as `list_markers` reads it, and the
//! opaque directories cs-actor prepares for the local-only paths.

use std::fs;
use std::path::Path;

use cs_protocol::RelPath;
use cs_union::overlay::{create_opaque_dir, forget_cached_names, kernel_has_overlay, list_markers, Marker, Overlay};

fn rel(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

struct Bed {
    _tmp: tempfile::TempDir,
    ov: Overlay,
}

fn bed(extra: &[&str]) -> Bed {
    assert!(rustix::process::geteuid().is_root(), "mounting overlayfs needs root");
    assert!(kernel_has_overlay(), "this kernel does not list overlay in /proc/filesystems");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ov = Overlay {
        upper: d.join("upper"),
        lower: d.join("lower"),
        work: d.join("work"),
        merged: d.join("merged"),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    for p in [&ov.upper, &ov.lower, &ov.merged] {
        fs::create_dir_all(p).unwrap();
    }
    put(&ov.lower, "a/f", "lower f");
    put(&ov.lower, "a/g", "lower g");
    put(&ov.lower, "d/x", "x");
    put(&ov.lower, "d/sub/y", "y");
    put(&ov.lower, "e/z", "z");
    put(&ov.lower, "scratch/theirs", "the project's scratch");
    Bed { _tmp: tmp, ov }
}

#[test]
fn deletes_and_a_directory_made_again_read_back_as_markers() {
    let b = bed(&[]);
    create_opaque_dir(&b.ov.upper, &rel("scratch")).unwrap();
    let g = b.ov.mount().unwrap();
    let m = g.merged().to_path_buf();

    // The local-only directory hides the project's copy and takes new files.
    assert!(!m.join("scratch/theirs").exists(), "an opaque upper dir must hide the lower's children");
    put(&m, "scratch/mine", "local");
    assert_eq!(fs::read_to_string(b.ov.upper.join("scratch/mine")).unwrap(), "local");

    fs::remove_file(m.join("a/f")).unwrap();
    fs::remove_dir_all(m.join("d")).unwrap();
    fs::remove_dir_all(m.join("e")).unwrap();
    fs::create_dir(m.join("e")).unwrap();
    put(&m, "e/new", "new");
    // A copy-up is an entry, not a marker.
    fs::write(m.join("a/g"), "changed").unwrap();

    let markers = list_markers(&b.ov.upper).unwrap();
    assert_eq!(
        markers,
        vec![
            Marker::Whiteout(rel("a/f")),
            Marker::Whiteout(rel("d")),
            Marker::Opaque(rel("e")),
            Marker::Opaque(rel("scratch")),
        ]
    );
    assert_eq!(fs::read_dir(m.join("e")).unwrap().count(), 1, "the re-made dir shows only its new child");
    g.unmount().unwrap();
}

#[test]
fn a_moved_lower_directory_is_a_redirect_with_redirect_dir_on() {
    let b = bed(&["redirect_dir=on"]);
    let g = b.ov.mount().unwrap();
    let m = g.merged().to_path_buf();

    fs::rename(m.join("d"), m.join("d2")).unwrap();
    assert_eq!(fs::read_to_string(m.join("d2/sub/y")).unwrap(), "y");
    assert!(!m.join("d").exists());
    // Moving a directory copied nothing: its files are still only in the lower.
    assert!(!b.ov.upper.join("d2/x").exists());

    let markers = list_markers(&b.ov.upper).unwrap();
    assert_eq!(markers, vec![Marker::Whiteout(rel("d")), Marker::Redirect { path: rel("d2"), from: b"d".to_vec() }]);
    g.unmount().unwrap();
}

#[test]
fn without_redirect_dir_moving_a_lower_directory_is_refused_so_mv_copies() {
    let b = bed(&["redirect_dir=off"]);
    let g = b.ov.mount().unwrap();
    let m = g.merged().to_path_buf();
    let err = fs::rename(m.join("d"), m.join("d2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "rename(2) of a lower dir: {err}");
    g.unmount().unwrap();
}

/// The overlay never revalidates a negative entry: a name looked up before the lower had it
/// stays "not found" although `ls` lists it. `forget_cached_names` cures that for this
/// overlay only, keeping its options and flags, while a process works inside it.
#[test]
fn forgetting_cached_names_shows_what_the_lower_gained_and_keeps_the_mount() {
    let b = bed(&["redirect_dir=on", "index=on"]);
    let g = b.ov.mount().unwrap();
    let m = g.merged().to_path_buf();
    let options = |m: &Path| -> String {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = info.lines().find(|l| l.split(' ').nth(4) == Some(m.to_str().unwrap())).expect("mounted");
        line.split(" - ").nth(1).unwrap().to_string()
    };
    let before = options(&m);
    let flags_before = rustix::fs::statvfs(&m).unwrap().f_flag;

    assert!(!m.join("a/new").exists());
    put(&b.ov.lower, "a/new", "made by the project");
    assert!(!m.join("a/new").exists(), "the negative entry is expected to stay cached until forgotten");
    // A working directory inside the overlay does not stop it.
    let busy = fs::File::open(m.join("a")).unwrap();
    forget_cached_names(&m).unwrap();
    assert_eq!(fs::read_to_string(m.join("a/new")).unwrap(), "made by the project");
    assert_eq!(options(&m), before, "the overlay's options must not change");
    assert_eq!(rustix::fs::statvfs(&m).unwrap().f_flag, flags_before, "the mount's flags must not change");
    drop(busy);
    g.unmount().unwrap();
}
