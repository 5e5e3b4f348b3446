//! `cs-actor fetch --to DIR PATH…` end to end: the real broker and compute service (sshfs
//! lower, the union; see `support/mod.rs`), the CLI asking the running service over its
//! control socket, the service fetching over its own websocket. Files and a directory land
//! beneath DIR with the project's bytes and modes; a missing path and a path through a
//! symlink are reported; `..` and absolute paths are refused naming the path; nothing is
//! written outside DIR; the broker's status counts the fetches; rounds go on. The union plays no
//! part in a fetch, but the bed mounts one: run with each. Skips (or, with `CI` set, fails)
//! when the external programs are missing.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn fetch(sock: &Path, to: &Path, extra: &[&str], paths: &[&str]) -> CmdOut {
    let (sock, to) = (sock.display().to_string(), to.display().to_string());
    let mut args = vec!["fetch", "--to", &to, "--control-socket", &sock];
    args.extend(extra);
    args.extend(paths);
    cli(&args, Duration::from_secs(120))
}

per_union! {
    both: [
        the_cli_fetches_project_paths_into_a_directory,
    ],
}

fn the_cli_fetches_project_paths_into_a_directory() {
    if !cs_testbed::real_tools_available() {
        return;
    }
    let big = noise(0xfe7c, 3 << 20);
    let bed = Bed::start("fetch", |h| {
        put(h, "src/main.rs", "fn main() {}\n");
        put(h, "data/big.bin", &big);
        put(h, "data/run.sh", "#!/bin/sh\n");
        chmod(h, "data/run.sh", 0o751);
        put(h, "data/sub/deeper.txt", "not fetched with data\n");
    });
    let home = bed.home.clone();
    let outside = bed.root.join("outside");
    put(&outside, "canary", "must never change\n");
    symlink("../outside", &home, "link");
    let sock = bed.c().sock.clone();
    let to = bed.root.join("fetched");
    fs::create_dir_all(&to).unwrap();

    let out = fetch(&sock, &to, &[], &["src/main.rs", "data", "no/such/file", "link/canary"]);
    if !out.ok() {
        bed.fail(&format!("`cs-actor fetch` failed: {}", out.describe()));
    }
    assert!(out.stdout.contains("4 written"), "src/main.rs, data, data/big.bin, data/run.sh: {}", out.describe());
    assert!(out.stdout.contains("1 missing, 1 refused"), "{}", out.describe());
    assert!(out.stdout.contains("missing: no/such/file"), "{}", out.describe());
    assert!(out.stdout.contains("refused: link/canary: reached through a symlink"), "{}", out.describe());
    for f in ["src/main.rs", "data/big.bin", "data/run.sh"] {
        same_bytes(&home.join(f), &to.join(f)).unwrap_or_else(|e| bed.fail(&format!("{f}: {e}")));
    }
    assert_eq!(mode(&to, "data/run.sh"), 0o751);
    assert_eq!(mtime(&to, "data/big.bin"), mtime(&home, "data/big.bin"));
    assert!(!exists(&to, "data/sub"), "a directory brings its files, not deeper");
    assert!(!exists(&to, "no") && !exists(&to, "link"));
    assert!(find_names(&to, |n| n.starts_with(".csa-tmp")).is_empty(), "temporary files left in DIR");

    // --json: the whole answer, P's versions included.
    let out = fetch(&sock, &to, &["--json"], &["src/main.rs"]);
    assert!(out.ok(), "{}", out.describe());
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    assert_eq!(v["sent"][0]["path"], "src/main.rs", "{v}");
    assert_eq!(v["sent"][0]["size"], 13, "{v}");
    assert_eq!(v["written"][0], "src/main.rs", "{v}");

    // Not project paths: refused, naming the path; a missing DIR too.
    for bad in ["../outside/canary", "/etc/passwd", "src/../../outside/canary"] {
        let out = fetch(&sock, &to, &[], &["src/main.rs", bad]);
        assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{bad}: {}", out.describe());
        assert!(out.stderr.contains("not a project path"), "{bad}: {}", out.describe());
    }
    let out = fetch(&sock, &bed.root.join("no-such-dir"), &[], &["src/main.rs"]);
    assert!(!out.ok() && out.stderr.contains("--to"), "{}", out.describe());
    assert_eq!(read(&outside, "canary"), "must never change\n");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "nothing written outside DIR");

    // The broker counts them; the compute service still rounds.
    let st = bed.project_status();
    let s = st["broker"]["sessions"].as_array().and_then(|a| a.iter().find(|s| s["client"] == "gpu-1").cloned());
    let s = s.unwrap_or_else(|| bed.fail("no session of gpu-1"));
    assert_eq!(s["fetch"]["served"], 2, "{s}");
    assert_eq!(s["fetch"]["in_flight"], 0, "{s}");
    put(&bed.merged(), "after-fetch.txt", "rounds go on\n");
    bed.sync_wait();
    assert_eq!(read(&home, "after-fetch.txt"), "rounds go on\n");
    bed.finish();
}
