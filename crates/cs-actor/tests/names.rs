//! End to end: names that are not UTF-8 (a Latin-1 `café`, invalid UTF-8 bytes) sync like any
//! other name, through the real services, sshfs and each union backend (see `support/mod.rs`). Linux
//! names are bytes; users' old archives are full of Latin-1 ones.
//!
//! The bed's `tree`/`assert_converged` compare names as text, so this test checks every byte
//! name explicitly.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

per_union! {
    both: [
        names_that_are_not_utf8_sync_both_ways,
    ],
}

/// `root/rel` for a relative path given as bytes.
fn at(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(rel))
}

fn put_b(root: &Path, rel: &[u8], content: &str) {
    let p = at(root, rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
    fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn read_b(root: &Path, rel: &[u8]) -> Option<String> {
    fs::read_to_string(at(root, rel)).ok()
}

fn exists_b(root: &Path, rel: &[u8]) -> bool {
    fs::symlink_metadata(at(root, rel)).is_ok()
}

fn link_b(root: &Path, rel: &[u8]) -> Option<Vec<u8>> {
    fs::read_link(at(root, rel)).ok().map(|t| t.into_os_string().into_vec())
}

/// The names in `root/dir` starting with `prefix`, as bytes.
fn names_with_prefix(root: &Path, dir: &[u8], prefix: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(at(root, dir))
        .map(|rd| rd.flatten().map(|e| e.file_name().into_vec()).filter(|n| n.starts_with(prefix)).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn show(b: &[u8]) -> String {
    format!("{:?}", OsStr::from_bytes(b))
}

/// Waits (the lower layer's caches expire within seconds) until `ok` holds, or fails the bed
/// with `what`.
fn eventually(bed: &Bed, what: &str, mut ok: impl FnMut() -> bool) {
    if poll(Duration::from_secs(20), Duration::from_millis(200), || ok().then_some(())).is_none() {
        bed.fail(what);
    }
}

// Made on P before the compute server starts.
const P_LATIN1: &[u8] = b"p_caf\xe9.txt";
const P_BAD_DIR_FILE: &[u8] = b"p_dir\xff\xfe/inner\xe9.txt";
const P_DEL: &[u8] = b"p_del\xe9.txt";
const P_REN: &[u8] = b"p_ren\xe9.txt";
const P_HELD: &[u8] = b"p_held\xe9.txt";
const BOTH: &[u8] = b"both\xe9.txt";
const P_LINK: &[u8] = b"p_link\xe9";
// Made on C through the merged view.
const C_LATIN1: &[u8] = b"c_caf\xe9.txt";
const C_BAD_DIR: &[u8] = b"c_dir\xc3(";
const C_BAD_FILE: &[u8] = b"c_dir\xc3(/bad\x80name";
const C_RENAMED: &[u8] = b"c_renamed\xe9.txt";
const C_LINK: &[u8] = b"c_link\xe9";
const C_LINK_TARGET: &[u8] = b"target\xff/x\xe9";

fn names_that_are_not_utf8_sync_both_ways() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    let bed = Bed::start("names", |h| {
        put_b(h, P_LATIN1, "latin-1 name from P\n");
        put_b(h, P_BAD_DIR_FILE, "in a directory whose name is not UTF-8\n");
        put_b(h, P_DEL, "C deletes this\n");
        put_b(h, P_REN, "C renames this\n");
        put_b(h, P_HELD, "C edits this, then P edits it, then P deletes it\n");
        put_b(h, BOTH, "original\n");
        std::os::unix::fs::symlink(OsStr::from_bytes(P_LATIN1), at(h, P_LINK)).unwrap();
    });
    let (h, m, up) = (bed.home.clone(), bed.merged(), bed.upper());

    // The lower layer (sshfs) carries byte names: the merged view shows P's files.
    assert_eq!(read_b(&m, P_LATIN1).as_deref(), Some("latin-1 name from P\n"));
    assert_eq!(read_b(&m, P_BAD_DIR_FILE).as_deref(), Some("in a directory whose name is not UTF-8\n"));
    assert_eq!(link_b(&m, P_LINK).as_deref(), Some(P_LATIN1));

    // ---- Changes on the compute server, through the merged view.
    put_b(&m, C_LATIN1, "latin-1 name from C\n");
    put_b(&m, C_BAD_FILE, "invalid UTF-8 from C\n");
    std::os::unix::fs::symlink(OsStr::from_bytes(C_LINK_TARGET), at(&m, C_LINK)).unwrap();
    fs::remove_file(at(&m, P_DEL)).unwrap();
    fs::rename(at(&m, P_REN), at(&m, C_RENAMED)).unwrap();
    fs::write(at(&m, P_HELD), "edited on C\n").unwrap();
    bed.sync_wait();

    let problems = bed.compute_status()["packer"]["scan_problems"].clone();
    assert_eq!(problems, serde_json::json!([]), "the scan reported problems");
    for (rel, want) in [
        (C_LATIN1, "latin-1 name from C\n"),
        (C_BAD_FILE, "invalid UTF-8 from C\n"),
        (C_RENAMED, "C renames this\n"),
        (P_HELD, "edited on C\n"),
    ] {
        assert_eq!(read_b(&h, rel).as_deref(), Some(want), "{} on P", show(rel));
    }
    assert_eq!(link_b(&h, C_LINK).as_deref(), Some(C_LINK_TARGET), "symlink target on P");
    assert!(!exists_b(&h, P_DEL), "a delete on C of a byte name did not reach P");
    assert!(!exists_b(&h, P_REN), "the rename's source is still on P");

    // ---- Changes on the project.
    fs::write(at(&h, P_HELD), "P's edit\n").unwrap();
    fs::remove_file(at(&h, C_LATIN1)).unwrap();
    fs::rename(at(&h, C_BAD_DIR), at(&h, b"p_moved\xe9")).unwrap();
    put_b(&h, b"p_new\xe9/f\xff", "new on P\n");
    bed.sync_wait();

    // C took P's edit of a file it holds (step 4 wrote it into the upper layer) and dropped
    // its copies of what P deleted or moved away (step 2).
    assert_eq!(read_b(&up, P_HELD).as_deref(), Some("P's edit\n"), "the upper layer's copy of {}", show(P_HELD));
    assert!(!in_upper(&up, OsStr::from_bytes(C_LATIN1)), "the upper layer still holds a file P deleted");
    assert!(!in_upper(&up, OsStr::from_bytes(C_BAD_FILE)), "the upper layer still holds a file P moved away");
    eventually(&bed, "the merged view does not show P's changes to byte names", || {
        read_b(&m, P_HELD).as_deref() == Some("P's edit\n")
            && !exists_b(&m, C_LATIN1)
            && !exists_b(&m, C_BAD_FILE)
            && read_b(&m, b"p_moved\xe9/bad\x80name").as_deref() == Some("invalid UTF-8 from C\n")
            && read_b(&m, b"p_new\xe9/f\xff").as_deref() == Some("new on P\n")
    });

    // ---- Delete on P of a file C holds, and a conflict on a byte name.
    fs::remove_file(at(&h, P_HELD)).unwrap();
    put_b(&h, BOTH, "the project's version\n");
    put_b(&m, BOTH, "the compute server's version\n");
    let sock = bed.c().sock.display().to_string();
    bed.sync_wait();

    assert!(!in_upper(&up, OsStr::from_bytes(P_HELD)), "the upper layer still holds a byte-named file P deleted");
    assert_eq!(read_b(&h, BOTH).as_deref(), Some("the project's version\n"));
    let prefix = [BOTH, b".conflict-gpu-1-"].concat();
    let copies = names_with_prefix(&h, b"", &prefix);
    assert_eq!(
        copies.len(),
        1,
        "expected one conflict copy, found {:?}",
        copies.iter().map(|c| show(c)).collect::<Vec<_>>()
    );
    assert_eq!(read_b(&h, &copies[0]).as_deref(), Some("the compute server's version\n"));
    eventually(&bed, "the merged view does not show the conflict's outcome", || {
        read_b(&m, BOTH).as_deref() == Some("the project's version\n")
            && read_b(&m, &copies[0]).as_deref() == Some("the compute server's version\n")
            && !exists_b(&m, P_HELD)
    });

    // The logs name the conflict copy escaped (`\xE9`), never mangled.
    let copy_shown = format!("both\\xE9.txt.conflict-gpu-1-{}", String::from_utf8_lossy(&copies[0][prefix.len()..]));
    let logs: String = fs::read_dir(&bed.root)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned())
        .collect();
    assert!(logs.contains(&copy_shown), "no log line names {copy_shown}");
    assert!(!logs.contains('\u{fffd}'), "a log shows a name mangled (U+FFFD)");
    // `cs-actor status --json` shows paths escaped: the last round's list of
    // conflict copies (when the conflict was in that round: an earlier round,
    // triggered by the upper layer's events, may have carried it).
    let out = cli(&["status", "--json", "--control-socket", &sock], Duration::from_secs(30));
    assert!(out.ok(), "cs-actor status: {}", out.describe());
    let st: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert!(st["round"]["conflicts_total"].as_u64() >= Some(1), "{st}");
    for v in st["round"]["last_committed"]["conflicts"].as_array().into_iter().flatten() {
        assert_eq!(v.as_str(), Some(copy_shown.as_str()), "status shows {v}");
    }
    assert!(!out.stdout.contains('\u{fffd}'), "status shows a name mangled: {}", out.stdout);

    // A further round changes nothing: no second copy, nothing undone.
    bed.sync_wait();
    assert_eq!(names_with_prefix(&h, b"", &prefix).len(), 1);
    assert_eq!(read_b(&h, C_RENAMED).as_deref(), Some("C renames this\n"));
    assert_eq!(read_b(&h, b"p_moved\xe9/bad\x80name").as_deref(), Some("invalid UTF-8 from C\n"));
    assert_eq!(link_b(&h, C_LINK).as_deref(), Some(C_LINK_TARGET));
    assert!(!exists_b(&h, P_DEL) && !exists_b(&h, C_LATIN1) && !exists_b(&h, P_HELD));
    bed.finish();
}
