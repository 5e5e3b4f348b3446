//! POSIX behaviour of the union backends, compared with local disk (issue 11).
//!
//! Each scenario (scenarios.rs) starts from the same lower content (observe.rs: the user's
//! files, some of root's) and performs a sequence of system calls (ops.rs), each in a child
//! process running as root or as an unprivileged account (`csa-t-posix`, created if missing),
//! never the whole test. It runs on a plain directory holding the content (the reference: what
//! ext4 does) and on each union backend (backends.rs) over a lower holding it with an empty
//! upper. Each call's result (ok and its observed value, or the errno) and the final tree
//! (kind, mode, owner, size, content, link count, symlink target, mtime class) are
//! compared. A backend fails the test when it differs from local disk on a scenario that is
//! not in its known-differences table below, or when a listed difference no longer occurs.
//!
//! `CS_POSIX_BACKENDS=unionfs-fuse,overlay,overlay-redirect` (the default: all) chooses the backends;
//! `CS_POSIX_TMPDIR` the scratch directory's parent (default /var/tmp: overlayfs wants an
//! upper with trusted xattrs). `--nocapture` prints the table; `docs/union.md` ("POSIX
//! behaviour") documents it.

mod backends;
mod observe;
mod ops;
mod scenarios;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use backends::{Backend, Target};
use ops::{Outcome, Who};
use scenarios::Scenario;

/// The unprivileged account the user's operations run as.
const USER_ACCOUNT: &str = "csa-t-posix";
/// The test function that, in a child process, runs one operation.
const CHILD_TEST: &str = "child_runs_one_operation";
const ENV_CHILD: &str = "CS_POSIX_CHILD_OP";
const ENV_ROOT: &str = "CS_POSIX_CHILD_ROOT";
const ENV_IDS: &str = "CS_POSIX_CHILD_IDS";
const OUTCOME_TAG: &str = "CS-POSIX-OUTCOME ";

/// Where unionfs-fuse 1.0 (as cs-actor mounts it) differs from local disk, and why.
const KNOWN_UNIONFS_FUSE: &[(&str, &str)] = &[
    ("unlink_shows_in_root_listing", "its whiteout directory `.unionfs-fuse` appears in the root's listing once a lower path is deleted (cs-actor mounts without hide_meta_files)"),
    ("unlink_sticky", "deleting a lower entry records a whiteout instead of changing the directory: its mtime stays"),
    ("unlink_lower_hardlink", "link counts are the lower's: the other name of a deleted lower hard link still counts 2"),
    ("rename_lower_dir", "renaming a lower directory copies its tree up; the copied directories get fresh mtimes"),
    ("rename_lower_dir_then_recreate", "renaming a lower directory copies its tree up; the copied directories get fresh mtimes"),
    ("rename_lower_dir_into_dir", "renaming a lower directory copies its tree up; the copied directories get fresh mtimes"),
    ("rename_lower_dir_over_empty_dir", "renaming a lower directory copies its tree up; the copied directories get fresh mtimes"),
    ("rename_dir_over_nonempty_dir", "the refused rename (ENOTEMPTY, as local) still copied the target's subdirectories up, with fresh mtimes"),
    ("rename_lower_symlink", "a renamed lower symlink is recreated: fresh mtime"),
    ("link_lower_file", "link(2) of a lower file links a copied-up copy: the names are not one file (nlink 1, a write through one is not seen through the other)"),
    ("lower_hardlinks_after_write", "copy-up breaks lower hard links: the other name keeps the old content"),
    ("chmod_lower_dir", "chmod of a lower directory copies it and its subdirectories up with fresh mtimes"),
    ("chmod_setgid_dir", "a directory created in a setgid directory does not inherit the setgid bit (the daemon creates it, then chowns); the chmod copied subdirectories up with fresh mtimes"),
    ("lchown_lower_symlink", "lchown of a lower symlink recreates it in the upper: fresh mtime"),
    ("chown_lower_dir", "chown of a lower directory copies it and its subdirectories up with fresh mtimes"),
    ("touch_m_lower_file", "utimensat with atime UTIME_OMIT is ignored: `touch -m` leaves the mtime (the reported failure)"),
    ("touch_m_lower_dir", "utimensat with atime UTIME_OMIT is ignored: `touch -m` leaves the mtime (the reported failure)"),
    ("setxattr_lower_file", "Debian's unionfs-fuse 1.0 is built without xattr support: EOPNOTSUPP"),
    ("getxattr_lower", "Debian's unionfs-fuse 1.0 is built without xattr support: EOPNOTSUPP"),
    ("removexattr_lower", "Debian's unionfs-fuse 1.0 is built without xattr support: EOPNOTSUPP"),
    ("xattr_kept_on_copy_up", "Debian's unionfs-fuse 1.0 is built without xattr support: EOPNOTSUPP"),
    ("setxattr_lower_dir", "Debian's unionfs-fuse 1.0 is built without xattr support: EOPNOTSUPP"),
    ("fallocate_lower", "no fallocate in unionfs-fuse 1.0: EOPNOTSUPP"),
    ("fallocate_keep_size", "no fallocate in unionfs-fuse 1.0: EOPNOTSUPP"),
    ("fallocate_punch_hole", "no fallocate in unionfs-fuse 1.0: EOPNOTSUPP"),
    ("tmpfile_linked_at_root", "no O_TMPFILE (FUSE tmpfile) in unionfs-fuse 1.0: EOPNOTSUPP"),
    ("tmpfile_linked_in_lower_dir", "no O_TMPFILE (FUSE tmpfile) in unionfs-fuse 1.0: EOPNOTSUPP"),
    ("tmpfile_unlinked", "no O_TMPFILE (FUSE tmpfile) in unionfs-fuse 1.0: EOPNOTSUPP"),
];

/// Where kernel overlayfs (default options) differs from local disk, and why.
const KNOWN_OVERLAY: &[(&str, &str)] = &[
    ("unlink_lower_hardlink", "without index=on, link counts are the lower's: the other name of a deleted lower hard link still counts 2"),
    ("rename_lower_dir", "without redirect_dir=on, rename(2) of a lower directory fails with EXDEV (mv(1) then copies and deletes)"),
    ("rename_lower_dir_then_recreate", "without redirect_dir=on, rename(2) of a lower directory fails with EXDEV"),
    ("rename_lower_dir_into_dir", "without redirect_dir=on, rename(2) of a lower directory fails with EXDEV"),
    ("rename_lower_dir_over_empty_dir", "without redirect_dir=on, rename(2) of a lower directory fails with EXDEV"),
    ("rename_dir_over_nonempty_dir", "without redirect_dir=on, rename(2) of a lower directory fails with EXDEV before the target is checked (local: ENOTEMPTY)"),
    ("lower_hardlinks_after_write", "without index=on, copy-up breaks lower hard links: the other name keeps the old content"),
];

/// Where kernel overlayfs with `redirect_dir=on,index=on` differs from local disk, and why:
/// nowhere, on every scenario (with a lower that does not change while mounted).
const KNOWN_OVERLAY_REDIRECT: &[(&str, &str)] = &[];

fn known(backend: Backend) -> &'static [(&'static str, &'static str)] {
    match backend {
        Backend::UnionfsFuse => KNOWN_UNIONFS_FUSE,
        Backend::Overlay => KNOWN_OVERLAY,
        Backend::OverlayRedirect => KNOWN_OVERLAY_REDIRECT,
    }
}

#[test]
fn unionfs_fuse_behaves_as_local_disk() {
    check_backend(Backend::UnionfsFuse);
}

#[test]
fn overlay_behaves_as_local_disk() {
    check_backend(Backend::Overlay);
}

#[test]
fn overlay_redirect_behaves_as_local_disk() {
    check_backend(Backend::OverlayRedirect);
}

/// Runs one operation when started by [`run_op`] (the variables are set); else nothing.
#[test]
fn child_runs_one_operation() {
    let Ok(spec) = std::env::var(ENV_CHILD) else {
        return;
    };
    let (root, ids) = (std::env::var(ENV_ROOT).unwrap(), std::env::var(ENV_IDS).unwrap());
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok()).expect("child spec: two numbers");
    let mut spec = spec.split(' ');
    let (si, oi) = (num(spec.next()), num(spec.next()));
    let mut ids = ids.split(' ');
    let ids = (num(ids.next()) as u32, num(ids.next()) as u32);
    let (_, op) = &scenarios::all()[si].ops[oi];
    unsafe { libc::umask(0o022) };
    let outcome = ops::run(Path::new(&root), op, ids);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{OUTCOME_TAG}{}", ops::encode(&outcome)).unwrap();
    out.flush().unwrap();
    std::process::exit(0);
}

/// What one scenario did on one target.
struct Run {
    outcomes: Vec<Outcome>,
    tree: BTreeMap<String, String>,
}

fn user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        assert!(is_root(), "the POSIX suite runs as root (it mounts, and acts as root and as a user)");
        let a = cs_testbed::system_account(USER_ACCOUNT).unwrap_or_else(|e| panic!("account {USER_ACCOUNT}: {e}"));
        (a.uid, a.gid)
    })
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The reference runs (plain directory), computed once for all backends.
fn reference() -> &'static [Run] {
    static REF: OnceLock<Vec<Run>> = OnceLock::new();
    REF.get_or_init(|| {
        let ids = user_ids();
        scenarios::all()
            .iter()
            .enumerate()
            .map(|(si, s)| {
                let t = Target::reference(ids);
                run_scenario(si, s, &t, ids, &[])
            })
            .collect()
    })
}

fn run_scenario(si: usize, s: &Scenario, target: &Target, ids: (u32, u32), skip_at_root: &[&str]) -> Run {
    let outcomes = s.ops.iter().enumerate().map(|(oi, (who, _))| run_op(si, oi, *who, target.root(), ids)).collect();
    let tree = observe::observe(target.root(), ids, skip_at_root);
    Run { outcomes, tree }
}

/// Runs operation `oi` of scenario `si` in a child process (this test binary, filtered to
/// [`CHILD_TEST`]) as `who`: std's `Command::uid` drops the supplementary groups, then sets
/// the gid and uid.
fn run_op(si: usize, oi: usize, who: Who, root: &Path, ids: (u32, u32)) -> Outcome {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut c = Command::new(exe);
    c.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env_clear()
        .env(ENV_CHILD, format!("{si} {oi}"))
        .env(ENV_ROOT, root)
        .env(ENV_IDS, format!("{} {}", ids.0, ids.1))
        .current_dir("/")
        .stdin(Stdio::null());
    if who == Who::User {
        c.gid(ids.1).uid(ids.0);
    }
    let out = c.output().expect("spawn the operation's child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().find_map(|l| l.strip_prefix(OUTCOME_TAG)).and_then(ops::decode).unwrap_or_else(|| {
        panic!(
            "operation {oi} of scenario {si} as {who:?}: no outcome ({}); stdout: {stdout}; stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The differences between the reference run and a backend's, readable.
fn differences(s: &Scenario, want: &Run, got: &Run) -> Vec<String> {
    let mut d = Vec::new();
    for (i, ((who, op), (w, g))) in s.ops.iter().zip(want.outcomes.iter().zip(&got.outcomes)).enumerate() {
        if w != g {
            d.push(format!("op {i} {who:?} {op:?}: local {}, union {}", ops::show(w), ops::show(g)));
        }
    }
    let paths: std::collections::BTreeSet<&String> = want.tree.keys().chain(got.tree.keys()).collect();
    for p in paths {
        match (want.tree.get(p), got.tree.get(p)) {
            (Some(w), Some(g)) if w == g => {}
            (w, g) => d.push(format!(
                "{p}: local {}, union {}",
                w.map(String::as_str).unwrap_or("absent"),
                g.map(String::as_str).unwrap_or("absent")
            )),
        }
    }
    d
}

fn selected(backend: Backend) -> bool {
    match std::env::var("CS_POSIX_BACKENDS") {
        Err(_) => true,
        Ok(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            for n in &names {
                assert!(
                    Backend::ALL.iter().any(|b| b.name() == *n),
                    "CS_POSIX_BACKENDS names {n:?}; known backends: {:?}",
                    Backend::ALL.map(Backend::name)
                );
            }
            names.contains(&backend.name())
        }
    }
}

fn check_backend(backend: Backend) {
    if !selected(backend) {
        eprintln!("{}: not in CS_POSIX_BACKENDS, skipped", backend.name());
        return;
    }
    let ids = user_ids();
    let reference = reference();
    let all = scenarios::all();
    let known = known(backend);
    for (name, _) in known {
        assert!(
            all.iter().any(|s| s.name == *name),
            "{}: known difference for unknown scenario {name}",
            backend.name()
        );
    }
    let mut report = format!("| scenario | {} vs local disk |\n|---|---|\n", backend.name());
    let mut failures = Vec::new();
    for (si, s) in all.iter().enumerate() {
        let got = {
            let t = Target::union(backend, ids);
            run_scenario(si, s, &t, ids, backend.own_names())
        };
        let diffs = differences(s, &reference[si], &got);
        let listed = known.iter().find(|(n, _)| *n == s.name).map(|(_, why)| *why);
        let status = match (diffs.is_empty(), listed) {
            (true, None) => "same".to_string(),
            (true, Some(_)) => {
                failures.push(format!("{}: listed as a known difference but behaves as local disk now", s.name));
                "same (STALE known difference)".to_string()
            }
            (false, Some(why)) => format!("known difference ({why}): {}", diffs.join("; ")),
            (false, None) => {
                failures.push(format!("{}: {}", s.name, diffs.join("; ")));
                format!("DIFFERENT: {}", diffs.join("; "))
            }
        };
        report.push_str(&format!("| {} | {} |\n", s.name, status.replace('|', "\\|")));
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "{} differs from local disk where its known-differences table says nothing (or a listed difference is gone):\n{}",
        backend.name(),
        failures.join("\n")
    );
}
