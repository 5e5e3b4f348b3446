//! CI's soak: `cs-bench soak` for about a minute with 2 compute services (kernel overlayfs
//! unions) against one broker, random operations on every side, then convergence and the
//! lost-write check: it must exit 0 and print `lost writes: 0`. Then the checker's self-test:
//! the same soak, shorter (the service's default union), with the checker expecting a wrong
//! hash for one file, must fail and count it in every view.
//! Skipped when the real tools are missing, unless `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The cs-actor binary next to cs-bench, built (or brought up to date) in the same profile;
/// or the one `CS_BENCH_CS_ACTOR` names (not rebuilt).
fn cs_actor_next_to(bench: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CS_BENCH_CS_ACTOR") {
        return PathBuf::from(p);
    }
    let dir = bench.parent().expect("the bench binary has a directory");
    let release = dir.file_name().map(|n| n == "release").unwrap_or(false);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    c.args(["build", "-q", "-p", "cs-actor"]);
    if release {
        c.arg("--release");
    }
    let st = c.status().expect("run cargo build -p cs-actor");
    assert!(st.success(), "cargo build -p cs-actor failed");
    let bin = dir.join("cs-actor");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

fn soak(bench: &Path, cs_actor: &Path, work: &Path, args: &[&str]) -> (Output, String) {
    let out = Command::new(bench)
        .arg("soak")
        .args(args)
        .arg("--cs-actor")
        .arg(cs_actor)
        .arg("--dir")
        .arg(work)
        .output()
        .expect("run cs-bench soak");
    let text =
        format!("{}\n--- stderr ---\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out, text)
}

fn nothing_left_mounted(work: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(work.to_str().unwrap()), "left mounted:\n{mounts}");
}

#[test]
fn soak_two_clients_one_minute_loses_no_write() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cs-bench"));
    let cs_actor = cs_actor_next_to(&bench);
    let tmp = tempfile::Builder::new().prefix("cs-soak-test.").tempdir_in("/tmp").unwrap();

    // With kernel overlayfs, the union CI soaks (issue 11), named so that a change of the
    // service's default does not change what CI soaks.
    let work = tmp.path().join("soak");
    let args = ["--minutes", "1", "--clients", "2", "--report-every", "30", "--seed", "42", "--union", "overlay"];
    let (out, text) = soak(&bench, &cs_actor, &work, &args);
    eprintln!("{text}");
    assert!(out.status.success(), "the soak failed ({}):\n{text}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\nlost writes: 0\n"), "no `lost writes: 0`:\n{text}");
    assert!(stdout.contains("Convergence: reached"), "{text}");
    assert!(stdout.contains("| c1 |"), "no row for the second client:\n{text}");
    assert!(stdout.contains("(overlay union)"), "the soak did not run the overlay union:\n{text}");
    nothing_left_mounted(&work);

    // The checker's self-test: a write it believes lost must fail the soak, once per view.
    let work = tmp.path().join("sabotage");
    let (out, text) = soak(
        &bench,
        &cs_actor,
        &work,
        &["--minutes", "0.25", "--clients", "2", "--report-every", "600", "--seed", "43", "--sabotage"],
    );
    assert!(!out.status.success(), "the sabotaged soak passed:\n{text}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lost: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lost writes: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `lost writes: N` line:\n{text}"));
    assert!(lost >= 3, "the sabotaged write is not counted once per view (project + 2 merged):\n{text}");
    assert!(text.contains("SABOTAGE: the checker expects a wrong hash for "), "{text}");
    nothing_left_mounted(&work);
}
