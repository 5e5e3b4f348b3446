//! `cs-actor pause` / `resume` and `cs-actor status` without `--control-socket`, end to end:
//! the real services over real sshfs and union mounts (the bed of `support/mod.rs`).
//!
//! - `a_pause_holds_across_a_restart_until_resume`: paused, a write on the compute server
//!   starts no round (the watcher sees it and triggers, nothing commits; `sync --wait` fails
//!   naming the pause and how to resume); the service is restarted (SIGTERM, whose last round
//!   must not run either) and comes back paused with the reason, before any round; a corrupt
//!   pause file stops the start-up naming the file; `resume` lets the write reach the project.
//!   Then `status` with no `--control-socket` finds the broker alone, then both services,
//!   through `CS_ACTOR_RUNTIME_DIR`.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

per_union! {
    both: [
        a_pause_holds_across_a_restart_until_resume,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

fn ctl(args: &[&str], sock: &Path) -> CmdOut {
    let mut all: Vec<&str> = args.to_vec();
    let sock = sock.display().to_string();
    all.extend(["--control-socket", &sock]);
    cli(&all, Duration::from_secs(60))
}

/// `cs-actor status ARGS` with the default sockets under `runtime_dir`.
fn status_in(runtime_dir: &Path, args: &[&str]) -> CmdOut {
    let mut c = Command::new(BIN);
    c.arg("status").args(args).env("CS_ACTOR_RUNTIME_DIR", runtime_dir);
    run(c, Duration::from_secs(20))
}

fn a_pause_holds_across_a_restart_until_resume() {
    if !tools() {
        return;
    }
    let mut bed = Bed::start("pause", |h| put(h, "README", "the project's readme\n"));
    let (home, merged, sock, state) = (bed.home.clone(), bed.merged(), bed.c().sock.clone(), bed.c().state.clone());
    let committed = |st: &Value| st["round"]["rounds_committed"].as_u64().unwrap_or(0);

    let out = ctl(&["pause", "--reason", "disk swap"], &sock);
    assert!(out.ok() && out.stdout.contains("syncing paused (disk swap)"), "{}", out.describe());
    let st = poll(Duration::from_secs(60), Duration::from_millis(100), || {
        let st = bed.compute_status();
        (st["round"]["phase"] == "paused").then_some(st)
    })
    .unwrap_or_else(|| bed.fail("not paused after `cs-actor pause`"));
    assert_eq!(st["round"]["operator_pause"]["reason"], "disk swap", "{st}");
    assert!(st["round"]["operator_pause"]["since_unix_ms"].as_u64().unwrap_or(0) > 0, "{st}");
    let before = committed(&st);
    let triggers = st["watcher"]["triggers_sent"].as_u64().unwrap_or(0);

    // A change on C: the watcher sees it and asks for a round; none starts, changes accumulate.
    put(&merged, "results/out.txt", "computed while paused\n");
    let st = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let st = bed.compute_status();
        let seen = st["watcher"]["pending_events"].as_u64().unwrap_or(0) > 0
            && st["watcher"]["triggers_sent"].as_u64().unwrap_or(0) > triggers;
        seen.then_some(st)
    })
    .unwrap_or_else(|| bed.fail("the watcher did not see the write, or sent no trigger"));
    assert_eq!(st["round"]["phase"], "paused", "{st}");
    let out = ctl(&["sync", "--wait"], &sock);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{}", out.describe());
    for needle in ["paused", "disk swap", "cs-actor resume"] {
        assert!(out.stderr.contains(needle), "`sync --wait` while paused must say {needle:?}: {}", out.describe());
    }
    let st = bed.compute_status();
    assert_eq!(committed(&st), before, "a round committed while paused: {st}");
    assert!(st["watcher"]["pending_events"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(!home.join("results/out.txt").exists(), "the write reached the project while paused");
    let human = ctl(&["status"], &sock);
    assert!(human.stdout.contains("PAUSED: by the operator: disk swap"), "{}", human.describe());
    assert!(human.stdout.contains("`cs-actor resume` resumes syncing"), "{}", human.describe());

    // Restart: the SIGTERM's last round must not run, and the new process starts paused.
    let p = bed.computes[0].proc.as_mut().expect("compute process");
    if !p.stop(Duration::from_secs(45)) || !p.status.is_some_and(|s| s.success()) {
        let st = p.status;
        bed.fail(&format!("the compute service did not stop cleanly on SIGTERM: {st:?}"));
    }
    assert!(!home.join("results/out.txt").exists(), "the last round on SIGTERM ran while paused");
    let pause_file = state.join("pause.json");
    let kept = fs::read(&pause_file).expect("the pause is kept in STATE/pause.json");

    // A corrupt pause file: the start-up stops, naming it, before mounting anything.
    fs::write(&pause_file, b"{\"reason\": \"disk sw").unwrap();
    bed.spawn_compute(0, &ComputeOpts::default());
    let exited =
        poll(Duration::from_secs(30), Duration::from_millis(100), || bed.computes[0].proc.as_mut().unwrap().exited());
    let log = fs::read_to_string(bed.root.join("compute-gpu-1.log")).unwrap_or_default();
    assert!(exited.is_some_and(|s| !s.success()), "a corrupt pause file did not stop the start-up: {log}");
    assert!(log.contains(&format!("the pause file {} is corrupt", pause_file.display())), "{log}");
    assert!(mounts_under(&merged).is_empty(), "mounted despite the corrupt pause file");

    fs::write(&pause_file, kept).unwrap();
    bed.spawn_compute(0, &ComputeOpts::default());
    let st = poll(Duration::from_secs(90), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        let up = st["round"]["phase"] == "paused"
            && st["mounts"]["union"]["state"] == "mounted"
            && st["connection"]["state"] == "connected";
        up.then_some(st)
    })
    .unwrap_or_else(|| bed.fail("the restarted service did not come up paused"));
    assert_eq!(st["round"]["operator_pause"]["reason"], "disk swap", "{st}");
    assert_eq!(committed(&st), 0, "a round ran at start-up while paused: {st}");
    assert!(st["connection"]["rtt_ms"].is_number(), "connected, the round trip must be known: {st}");
    assert!(!home.join("results/out.txt").exists());

    // Resume: a round starts at once and carries the write.
    let out = ctl(&["resume"], &sock);
    assert!(out.ok() && out.stdout.contains("syncing resumed"), "{}", out.describe());
    bed.sync_wait();
    assert_eq!(read(&home, "results/out.txt"), "computed while paused\n");
    assert!(!pause_file.exists(), "resume must remove {}", pause_file.display());
    let st = bed.compute_status();
    assert!(st["round"]["operator_pause"].is_null(), "{st}");
    // Resuming again is not an error.
    let out = ctl(&["resume"], &sock);
    assert!(out.ok() && out.stdout.contains("was not paused"), "{}", out.describe());

    // `status` without --control-socket: the default sockets in CS_ACTOR_RUNTIME_DIR.
    let run_dir = bed.root.join("run");
    fs::create_dir_all(&run_dir).unwrap();
    let out = status_in(&run_dir, &[]);
    assert!(!out.ok(), "no service there: {}", out.describe());
    for s in ["compute.sock", "project.sock"] {
        assert!(out.stderr.contains(&run_dir.join(s).display().to_string()), "{}", out.describe());
    }
    std::os::unix::fs::symlink(&bed.project_sock, run_dir.join("project.sock")).unwrap();
    let out = status_in(&run_dir, &[]);
    assert!(out.ok() && out.stdout.starts_with("project broker on"), "only the broker runs: {}", out.describe());
    std::os::unix::fs::symlink(&sock, run_dir.join("compute.sock")).unwrap();
    let out = status_in(&run_dir, &[]);
    assert!(out.ok(), "{}", out.describe());
    assert!(out.stdout.contains("compute server gpu-1") && out.stdout.contains("project broker on"), "{}", out.stdout);
    let out = status_in(&run_dir, &["--json"]);
    let services: Vec<Value> = serde_json::Deserializer::from_str(&out.stdout)
        .into_iter::<Value>()
        .map(|v| v.expect("status --json is a stream of JSON objects"))
        .map(|v| v["service"].clone())
        .collect();
    assert_eq!(services, ["compute", "project"], "{}", out.stdout);
    bed.finish();
}
