//! CI's smoke test of the bench: `cs-bench --quick` at RTT 0 completes and prints its table.
//! No timing is asserted (this machine is shared); only that every part ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The cs-actor binary next to cs-bench, built (or brought up to date) in the same profile.
fn cs_actor_next_to(bench: &Path) -> PathBuf {
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

#[test]
fn quick_bench_completes_and_prints_the_table() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    // Every workload and rival of the table: a missing one would only be a note in the
    // bench's output and an empty column here.
    cs_testbed::require_programs(
        "the bench smoke test",
        &["git", "make", "cc", "python3", "rsync", "unison", "tar", "zstd", "bash", "find", "fuse-overlayfs"],
    );
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_cs-bench"));
    let cs_actor = cs_actor_next_to(&bench);
    let work = tempfile::Builder::new().prefix("cs-bench-smoke.").tempdir_in("/tmp").unwrap();
    let json = work.path().join("results.json");
    let start = Instant::now();
    let out = Command::new(&bench)
        .args(["--quick", "--rtt", "0", "--cs-actor"])
        .arg(&cs_actor)
        .arg("--dir")
        .arg(work.path().join("w"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run cs-bench");
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cs-bench --quick failed ({}):\n{stdout}\n--- stderr ---\n{stderr}", out.status);
    eprintln!("cs-bench --quick took {took:?}\n{stdout}");

    // The table, with every part.
    for needle in [
        "## cs-bench results",
        "- Machine: ",
        "| workload | RTT | local disk | union, local lower | raw sshfs | cs-actor |",
        "| W1 ",
        "| W5 ",
        "### The union over a local lower, by backend",
        "### cs-actor by union backend",
        "| test | RTT | cs-actor | cs-actor, overlayfs | rsync -a |",
        "S1 1000 × 4 KiB, compute → project",
        "### S3",
        "### Resident memory",
        "### Targets",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in the output:\n{stdout}");
    }
    assert!(!stdout.contains("### Errors"), "errors:\n{stdout}");

    // Every cell has at least one sample.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let entries = v["entries"].as_array().unwrap();
    for col in [
        "local",
        "union-local",
        "overlay-local",
        "fuse-overlayfs-local",
        "sshfs",
        "cs-actor",
        "cs-actor-overlay",
        "rsync",
        "tar",
        "unison",
    ] {
        assert!(entries.iter().any(|e| e["column"] == col), "no {col} cell");
    }
    for e in entries {
        assert!(
            !e["cell"]["samples"].as_array().unwrap().is_empty(),
            "{} {} has no sample: {}",
            e["test"],
            e["column"],
            e["cell"]
        );
    }
    assert!(!v["s3"][0]["rounds"].as_array().unwrap().is_empty());

    // Nothing left mounted, nothing left running under the work directory.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(work.path().to_str().unwrap()), "left mounted:\n{mounts}");
}
