//! End to end: the real `cs-actor project` and `cs-actor compute` processes, a real sshd on
//! 127.0.0.1, the lower layer over real sshfs, the union by real unionfs-fuse and by kernel
//! overlayfs (each test runs once per backend: `unionfs_fuse::NAME`, `overlay::NAME`). See
//! `support/mod.rs` for the bed. Every test skips (or, with `CI` set, fails) when the external
//! programs are missing.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

per_union! {
    both: [
        writes_deletes_renames_modes_symlinks_both_ways,
        conflict_keeps_both_versions,
        git_clone_of_a_few_thousand_files_syncs_clean,
        two_compute_servers_one_stalled,
        broker_restart_mid_round_retries_and_commits,
        a_refused_token_stops_retrying_and_sync_wait_says_so,
        union_killed_is_remounted_and_reported,
        safety_rail_lower_gone_pauses_sync_and_deletes_nothing,
        idle_compute_server_stays_idle,
        a_rounds_deletions_start_no_round_but_a_users_do,
        a_rounds_removal_of_its_whiteouts_starts_no_round,
        status_json_has_the_documented_fields,
        deleted_files_do_not_come_back_from_the_lower_caches,
        an_emptied_project_is_accepted_from_the_command_line,
        project_changes_are_visible_when_sync_wait_returns,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

/// Content with a recognisable name and some binary bytes.
fn blob(tag: &str, n: usize) -> Vec<u8> {
    let mut v = format!("{tag}\n").into_bytes();
    v.extend((0..n).map(|i| (i * 7 + tag.len()) as u8));
    v
}

fn writes_deletes_renames_modes_symlinks_both_ways() {
    if !tools() {
        return;
    }
    let bed = Bed::start("both-ways", |h| {
        put(h, "README", "hello from the project\n");
        put(h, "docs/guide.txt", "the guide\n");
        put(h, "docs/old/notes.txt", "old notes\n");
        put(h, "del_by_c.txt", "the compute server deletes this\n");
        put(h, "ren_src.txt", "renamed on the compute server\n");
        put(h, "olddir/a.txt", "a\n");
        put(h, "olddir/sub/b.txt", "b\n");
        put(h, "mode.sh", "#!/bin/sh\necho hi\n");
        chmod(h, "mode.sh", 0o644);
        put(h, "held_then_p_deletes.txt", "C edits this, then P deletes it\n");
        put(h, "held_then_p_edits.txt", "C edits this, then P edits it\n");
        put(h, "unheld_p_edits.txt", "P edits this; C never touches it\n");
        put(h, "unheld_p_deletes.txt", "P deletes this; C never touches it\n");
        put(h, "p_chmod.txt", "P chmods this\n");
        chmod(h, "p_chmod.txt", 0o644);
        put(h, "scratch/x", "P's own scratch: never shown on C\n");
        symlink("README", h, "link_p");
    });
    let (h, m, up) = (bed.home.clone(), bed.merged(), bed.upper());

    // The merged view shows the project, but not P's copy of a local-only directory.
    assert_eq!(read(&m, "README"), "hello from the project\n");
    assert_eq!(read(&m, "docs/old/notes.txt"), "old notes\n");
    assert_eq!(fs::read_link(m.join("link_p")).unwrap().to_str(), Some("README"));
    assert!(!exists(&m, "scratch/x"), "P's scratch/x is visible in the merged view");

    // ---- Changes on the compute server, through the merged view.
    put(&m, "new/file1.txt", "made on the compute server\n");
    put(&m, "new/deep/er/file2.bin", blob("file2", 100_000));
    // An old mtime with nanoseconds, as `tar x` or `cp -p` leave it.
    set_mtime(&m, "new/deep/er/file2.bin", 1_000_000_000, 123_456_789);
    put(&m, "new/run.sh", "#!/bin/sh\n");
    chmod(&m, "new/run.sh", 0o750);
    fs::remove_file(m.join("del_by_c.txt")).unwrap();
    fs::rename(m.join("ren_src.txt"), m.join("ren_dst.txt")).unwrap();
    fs::rename(m.join("olddir"), m.join("newdir")).unwrap();
    chmod(&m, "mode.sh", 0o755);
    symlink("new/file1.txt", &m, "link_c");
    symlink("../README", &m, "new/rel_link");
    symlink("does/not/exist", &m, "dangling");
    append(&m, "held_then_p_deletes.txt", "edited on C\n");
    append(&m, "held_then_p_edits.txt", "edited on C\n");
    fs::create_dir(m.join("emptydir")).unwrap();
    put(&m, "scratch/local.txt", "stays on the compute server\n");
    put(&m, ".cache/c.bin", "local cache\n");

    bed.sync_wait();

    // The project has every change of the compute server...
    assert!(!exists(&h, "del_by_c.txt"), "a delete on C did not reach P");
    assert!(!exists(&h, "ren_src.txt"), "the rename's source is still on P");
    assert_eq!(read(&h, "ren_dst.txt"), "renamed on the compute server\n");
    assert!(!exists(&h, "olddir"), "the renamed directory's old name is still on P");
    assert_eq!(read(&h, "newdir/a.txt"), "a\n");
    assert_eq!(read(&h, "newdir/sub/b.txt"), "b\n");
    assert_eq!(mode(&h, "mode.sh"), 0o755);
    assert_eq!(mode(&h, "new/run.sh"), 0o750);
    assert_eq!(fs::read(h.join("new/deep/er/file2.bin")).unwrap(), blob("file2", 100_000));
    assert_eq!(mtime(&h, "new/deep/er/file2.bin"), (1_000_000_000, 123_456_789));
    assert_eq!(fs::read_link(h.join("link_c")).unwrap().to_str(), Some("new/file1.txt"));
    assert_eq!(fs::read_link(h.join("new/rel_link")).unwrap().to_str(), Some("../README"));
    assert_eq!(fs::read_link(h.join("dangling")).unwrap().to_str(), Some("does/not/exist"));
    assert!(fs::symlink_metadata(h.join("emptydir")).unwrap().is_dir());
    assert_eq!(read(&h, "held_then_p_edits.txt"), "C edits this, then P edits it\nedited on C\n");
    // ...but nothing of its local-only paths, and P's own scratch is untouched.
    assert!(!exists(&h, "scratch/local.txt"), "a local-only file reached the project");
    assert!(!exists(&h, ".cache"), "a local-only directory reached the project");
    assert_eq!(read(&h, "scratch/x"), "P's own scratch: never shown on C\n");

    // ---- Changes on the project.
    fs::remove_file(h.join("held_then_p_deletes.txt")).unwrap();
    put(&h, "held_then_p_edits.txt", "P's edit of a file C holds\n");
    put(&h, "unheld_p_edits.txt", "P's edit of a file C does not hold\n");
    fs::remove_file(h.join("unheld_p_deletes.txt")).unwrap();
    chmod(&h, "p_chmod.txt", 0o600);
    put(&h, "p_new/inner.txt", "new on the project\n");
    symlink("p_new/inner.txt", &h, "p_link");
    fs::rename(h.join("docs/old"), h.join("docs/older")).unwrap();
    put(&h, "scratch/y", "more of P's scratch\n");

    bed.sync_and_converge();

    // The compute server dropped its copy of the file P deleted, took P's edit of the file it
    // holds, and kept its local-only files.
    assert!(!in_upper(&up, "held_then_p_deletes.txt"), "the upper layer still holds a file P deleted");
    assert!(!exists(&m, "held_then_p_deletes.txt"));
    assert_eq!(read(&m, "held_then_p_edits.txt"), "P's edit of a file C holds\n");
    assert_eq!(read(&m, "unheld_p_edits.txt"), "P's edit of a file C does not hold\n");
    assert_eq!(mode(&m, "p_chmod.txt"), 0o600);
    assert_eq!(read(&m, "scratch/local.txt"), "stays on the compute server\n");
    assert!(!exists(&m, "scratch/x") && !exists(&m, "scratch/y"), "P's scratch shows in the merged view");
    assert!(!exists(&h, "scratch/local.txt"));

    // ---- One more round of compute-side changes to files that came from P.
    fs::remove_file(m.join("p_new/inner.txt")).unwrap();
    fs::rename(m.join("docs/older/notes.txt"), m.join("docs/older/notes2.txt")).unwrap();
    chmod(&m, "unheld_p_edits.txt", 0o640);
    bed.sync_and_converge();
    assert!(!exists(&h, "p_new/inner.txt"));
    assert_eq!(read(&h, "docs/older/notes2.txt"), "old notes\n");
    assert_eq!(mode(&h, "unheld_p_edits.txt"), 0o640);

    let conflicts = find_names(&h, |n| n.contains(".conflict-"));
    assert!(conflicts.is_empty(), "spurious conflict copies: {conflicts:?}");
    bed.finish();
}

fn conflict_keeps_both_versions() {
    if !tools() {
        return;
    }
    let bed = Bed::start("conflict", |h| put(h, "shared.txt", "original\n"));
    let (h, m) = (bed.home.clone(), bed.merged());
    assert_eq!(read(&m, "shared.txt"), "original\n");

    // Both sides write the file between rounds. The project writes first: whenever a round
    // starts after the compute server's write (an early round on the upper layer's events, or
    // ours), the project's change is already there.
    put(&h, "shared.txt", "the project's version\n");
    put(&m, "shared.txt", "the compute server's version\n");
    bed.sync_wait();

    assert_eq!(read(&h, "shared.txt"), "the project's version\n");
    let copies = find_names(&h, |n| n.starts_with("shared.txt.conflict-"));
    assert_eq!(copies.len(), 1, "expected one conflict copy, found {copies:?}");
    let name = &copies[0];
    let stamp = name.strip_prefix("shared.txt.conflict-gpu-1-").unwrap_or_else(|| panic!("conflict copy {name}"));
    // <UTC time>: YYYYMMDDTHHMMSS.mmmZ
    let b = stamp.as_bytes();
    assert!(
        b.len() == 20
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'.'
            && b[16..19].iter().all(u8::is_ascii_digit)
            && b[19] == b'Z',
        "conflict copy's time stamp {stamp:?}"
    );
    assert_eq!(read(&h, name), "the compute server's version\n");

    // The merged view shows the project's version (and, through the lower layer, the copy).
    let shown = poll(Duration::from_secs(15), Duration::from_millis(200), || {
        (fs::read_to_string(m.join("shared.txt")).ok()? == "the project's version\n"
            && fs::read_to_string(m.join(name)).ok()? == "the compute server's version\n")
            .then_some(())
    });
    if shown.is_none() {
        bed.fail(&format!(
            "merged view: shared.txt = {:?}, {name} = {:?}",
            fs::read_to_string(m.join("shared.txt")),
            fs::read_to_string(m.join(name))
        ));
    }
    // And a further round changes nothing: no second copy, no ping-pong.
    bed.sync_and_converge();
    assert_eq!(find_names(&h, |n| n.contains(".conflict-")).len(), 1);
    assert_eq!(read(&h, "shared.txt"), "the project's version\n");
    bed.finish();
}

fn git(dir: &Path, args: &[&str], home: &Path) -> CmdOut {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir).args(args);
    c.env("HOME", home).env("GIT_CONFIG_NOSYSTEM", "1").env("GIT_TERMINAL_PROMPT", "0");
    run(c, Duration::from_secs(300))
}

fn git_clone_of_a_few_thousand_files_syncs_clean() {
    if !tools() {
        return;
    }
    cs_testbed::require_programs("the git clone test", &["git"]);
    // The source repository lives outside the bed: it is neither the project nor the compute
    // server.
    let src_tmp = tempfile::Builder::new().prefix("cs-e2e-gitsrc-").tempdir().unwrap();
    let src = src_tmp.path().join("repo");
    let ghome = src_tmp.path().join("home");
    fs::create_dir_all(&ghome).unwrap();
    const FILES: usize = 3000;
    for i in 0..FILES {
        let rel = format!("pkg{:02}/mod{:02}/file{i:04}.txt", i % 30, (i / 30) % 10);
        put(&src, &rel, format!("file {i}\n{}\n", "x".repeat(i % 200)));
    }
    put(&src, "bin/tool.sh", "#!/bin/sh\necho tool\n");
    chmod(&src, "bin/tool.sh", 0o755);
    symlink("bin/tool.sh", &src, "tool");
    for args in [
        &["init", "-q"][..],
        &["add", "-A"],
        &["-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid", "commit", "-q", "-m", "a few thousand files"],
    ] {
        let o = git(&src, args, &ghome);
        assert!(o.ok(), "git {args:?}: {}", o.describe());
    }
    let head = git(&src, &["rev-parse", "HEAD"], &ghome).stdout.trim().to_string();

    let bed = Bed::start("git", |h| put(h, "README", "a project with a clone in it\n"));
    let (h, m) = (bed.home.clone(), bed.merged());

    let t = Instant::now();
    let mut c = Command::new("git");
    c.args(["clone", "-q", "--no-hardlinks"]).arg(&src).arg(m.join("clone"));
    c.env("HOME", &ghome).env("GIT_CONFIG_NOSYSTEM", "1");
    let o = run(c, Duration::from_secs(300));
    let clone_took = t.elapsed();
    if !o.ok() {
        bed.fail(&format!("git clone into the merged view: {}", o.describe()));
    }
    let files_in_clone = find_names(&m.join("clone"), |_| true).len();

    let t = Instant::now();
    bed.sync_wait();
    let sync_took = t.elapsed();
    let st = bed.compute_status();
    // Early rounds on the upper layer's events run during the clone and carry part of it;
    // the packer's counters cover every round since the service started.
    eprintln!(
        "git clone of {FILES} files ({files_in_clone} entries with .git) into the merged view took {:.1} s; \
         `cs-actor sync --wait` after it took {:.1} s; clone start to all committed {:.1} s; \
         {} rounds committed in all, {} entries / {} bytes packed for the project; last round {} ms: {}",
        clone_took.as_secs_f64(),
        sync_took.as_secs_f64(),
        (clone_took + sync_took).as_secs_f64(),
        st["round"]["rounds_committed"],
        st["packer"]["entries_packed"],
        st["packer"]["bytes_packed"],
        st["round"]["last_committed"]["duration_ms"],
        st["round"]["last_committed"]["steps"]
    );

    let clone_p = h.join("clone");
    let porcelain = git(&clone_p, &["status", "--porcelain"], &ghome);
    if !porcelain.ok() || !porcelain.stdout.trim().is_empty() {
        bed.fail(&format!("`git status --porcelain` in the project's copy: {}", porcelain.describe()));
    }
    let fsck = git(&clone_p, &["fsck", "--full", "--strict"], &ghome);
    if !fsck.ok() {
        bed.fail(&format!("`git fsck` in the project's copy: {}", fsck.describe()));
    }
    assert_eq!(git(&clone_p, &["rev-parse", "HEAD"], &ghome).stdout.trim(), head);
    assert_eq!(find_names(&clone_p, |_| true).len(), files_in_clone, "entries in the project's copy");
    assert_eq!(mode(&clone_p, "bin/tool.sh"), 0o755);
    // The compute server's own view of its clone is clean too.
    let porcelain_c = git(&m.join("clone"), &["status", "--porcelain"], &ghome);
    assert!(porcelain_c.ok() && porcelain_c.stdout.trim().is_empty(), "{}", porcelain_c.describe());
    bed.finish();
}

fn two_compute_servers_one_stalled() {
    if !tools() {
        return;
    }
    let bed = Bed::start("two", |h| put(h, "README", "shared by two compute servers\n"));
    let (h, m) = (bed.home.clone(), bed.merged());

    // Client 2 opens a round and stalls in the middle of its step-3 stream.
    let stalled = StalledClient::start(&bed.broker_url(), bed.token("gpu-2"), "gpu-2")
        .unwrap_or_else(|e| bed.fail(&format!("raw client gpu-2: {e}")));
    let session = |st: &serde_json::Value| {
        st["broker"]["sessions"].as_array().and_then(|a| a.iter().find(|s| s["client"] == "gpu-2").cloned())
    };
    let in_step3 = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        let st = status_json(&bed.project_sock).ok()?;
        let s = session(&st)?;
        (s["step"] == "3").then_some(s)
    });
    if in_step3.is_none() {
        bed.fail("the broker does not show gpu-2's session in step 3");
    }

    // Meanwhile client 1 syncs, twice, each promptly, and its files reach the project.
    for (i, name) in ["one.txt", "two.txt"].iter().enumerate() {
        put(&m, &format!("from_gpu1/{name}"), format!("write {i} of gpu-1\n"));
        let t = Instant::now();
        if let Err(e) = bed.try_sync_wait_on(0, Duration::from_secs(30)) {
            bed.fail(&format!("gpu-1's round {i} while gpu-2 is stalled: {e}"));
        }
        eprintln!("gpu-1 round {i} with gpu-2 stalled in step 3: {:.2} s", t.elapsed().as_secs_f64());
        assert_eq!(read(&h, &format!("from_gpu1/{name}")), format!("write {i} of gpu-1\n"));
    }
    // gpu-2 is still stalled (it was not simply dropped), and nothing of its round was applied.
    let st = bed.project_status();
    let s = session(&st).unwrap_or_else(|| bed.fail("gpu-2's session is gone"));
    assert_eq!(s["step"], "3", "gpu-2's session: {s}");
    assert!(!exists(&h, "stalled/big.bin"), "a stalled, unfinished stream was applied");
    let s1 = st["broker"]["sessions"].as_array().unwrap().iter().find(|s| s["client"] == "gpu-1").cloned();
    assert!(s1.is_some_and(|s| s["rounds_committed"].as_u64().unwrap_or(0) >= 3), "gpu-1's session: {st}");
    drop(stalled);
    bed.finish();
}

/// The broker is killed in the middle of step 3 and restarted: the round is
/// retried and commits, the file arrives whole, and the killed broker's
/// partial temporary file is swept when the new one opens the home.
fn broker_restart_mid_round_retries_and_commits() {
    broker_restart_scenario(true);
}

fn broker_restart_scenario(check_temporaries: bool) {
    if !tools() {
        return;
    }
    let mut bed = Bed::new("restart");
    put(&bed.home, "README", "the broker will be killed\n");
    bed.start_broker();
    // A high zstd level makes step 3 take seconds for 200 MB of noise (about 40 MB/s), so that
    // the kill lands in the middle of the stream even on a fast machine.
    bed.start_compute_with("gpu-1", &["--zstd-level", "15"]);
    let (h, m) = (bed.home.clone(), bed.merged());

    // 200 MB of incompressible data, written in a local-only directory (no round picks it up
    // half-written) and then renamed into the synced tree in one step.
    const SIZE: usize = 200 << 20;
    {
        use std::io::Write;
        fs::create_dir_all(m.join("scratch")).unwrap();
        let mut f = fs::File::create(m.join("scratch/big.tmp")).unwrap();
        for i in 0..(SIZE >> 22) {
            f.write_all(&noise(1000 + i as u64, 4 << 20)).unwrap();
        }
        f.sync_all().unwrap();
    }
    fs::rename(m.join("scratch/big.tmp"), m.join("big.bin")).unwrap();
    let up = bed.upper();
    let reconnects0 = bed.compute_status()["connection"]["reconnects"].as_u64().unwrap_or(0);
    bed.sync_nowait();

    // Kill the broker while the round streams the file to the project (step 3).
    let seen = poll(Duration::from_secs(60), Duration::from_millis(20), || {
        let st = bed.c().status().ok()?;
        (st["round"]["step"] == "writes_to_project").then_some(())
    });
    if seen.is_none() {
        bed.fail("never saw the round in step 3 (writes_to_project)");
    }
    // Well into the stream: once the broker is writing the entry (its temporary file grows).
    let partial = poll(Duration::from_secs(20), Duration::from_millis(20), || {
        let t = find_names(&h, |n| n.starts_with(".csa-tmp-"));
        let size = t.first().and_then(|n| fs::metadata(h.join(n)).ok()).map(|md| md.len())?;
        (size > 0).then_some((t, size))
    });
    bed.kill_broker();
    let killed_at = Instant::now();
    eprintln!("killed the broker in step 3, its temporary file at {partial:?}");
    assert!(
        !exists(&h, "big.bin"),
        "the file was already complete on the project when the broker was killed: step 3 was too fast for this test"
    );
    let tmp_after_kill = find_names(&h, |n| n.starts_with(".csa-tmp-"));
    eprintln!("broker killed in step 3; temporaries it left: {tmp_after_kill:?}");

    // The compute server notices, backs off; the broker comes back on the same port and state.
    std::thread::sleep(Duration::from_secs(1));
    bed.start_broker();
    let reconnected = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["connection"]["state"] == "connected" && st["connection"]["reconnects"].as_u64()? > reconnects0)
            .then_some(())
    });
    if reconnected.is_none() {
        bed.fail("the compute service did not reconnect within 60 s of the broker's restart");
    }
    eprintln!("reconnected {:.1} s after the kill", killed_at.elapsed().as_secs_f64());
    let r = bed.sync_wait();
    eprintln!("`sync --wait`: {r}, {:.1} s after the kill", killed_at.elapsed().as_secs_f64());

    if let Err(e) = same_bytes(&up.join("big.bin"), &h.join("big.bin")) {
        bed.fail(&format!("the project's big.bin is not the compute server's: {e}"));
    }
    assert_eq!(mtime(&up, "big.bin"), mtime(&h, "big.bin"));
    let st = bed.compute_status();
    eprintln!("last committed round: {}", st["round"]["last_committed"]["steps"]);
    let tmp = find_names(&h, |n| n.starts_with(".csa-tmp-"));
    if check_temporaries {
        assert!(tmp.is_empty(), "temporary files left in the project home: {tmp:?}");
    } else if !tmp.is_empty() {
        eprintln!("KNOWN BUG: temporary files left in the project home: {tmp:?}");
    }
    let conflicts = find_names(&h, |n| n.contains(".conflict-"));
    assert!(conflicts.is_empty(), "spurious conflict copies: {conflicts:?}");
    let st = bed.compute_status();
    assert!(
        st["round"]["rounds_failed"].as_u64().unwrap_or(0) >= 1,
        "the interrupted round did not count as failed: {st}"
    );
    assert!(st["connection"]["reconnects"].as_u64().unwrap_or(0) > reconnects0, "no reconnect counted: {st}");
    bed.finish();
}

/// A wrong token is a permanent failure: the broker answers HTTP 401 at the websocket upgrade
/// every time. The service must stop retrying (no more rounds, no more connection attempts,
/// whatever triggers arrive), say so in status with what to do, and `sync --wait` must fail
/// with the permanent-failure exit code (2) naming the token. A restart with the right token
/// recovers. (The transient counterpart, a broker stopped then started, is
/// `broker_restart_mid_round_retries_and_commits`.)
fn a_refused_token_stops_retrying_and_sync_wait_says_so() {
    if !tools() || skip_with_replica("a replica with no tree stops at once instead (replica.rs tests it)") {
        return;
    }
    let mut bed = Bed::new("bad-token");
    put(&bed.home, "README", "synced once the token is right\n");
    bed.start_broker();
    let i = bed.add_compute("gpu-1");
    bed.set_token(i, &"0badc0de".repeat(6));
    bed.spawn_compute(i, &ComputeOpts::default());

    let stopped = poll(Duration::from_secs(90), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["round"]["phase"] == "stopped").then_some(st)
    });
    let Some(st) = stopped else {
        let st = bed.c().status();
        bed.fail(&format!("the service did not stop retrying after the broker refused its token: {st:?}"))
    };
    eprintln!("stopped: {}", st["round"]);
    let r = &st["round"];
    assert!(r["stopped"]["reason"].as_str().is_some_and(|s| s.contains("401")), "{st}");
    assert!(r["stopped"]["what_to_do"].as_str().is_some_and(|s| s.contains("--token-file")), "{st}");
    assert!(r["stopped"]["since_unix_ms"].as_u64().is_some_and(|t| t > 0), "{st}");
    assert_eq!(st["connection"]["state"], "stopped", "{st}");
    let human = cli(&["status", "--control-socket", &bed.c().sock.display().to_string()], Duration::from_secs(20));
    assert!(human.stdout.contains("STOPPED") && human.stdout.contains("check --token-file"), "{}", human.describe());

    // Nothing retries by itself: not the backoff, not the connection, not a change in the home.
    let counts = |st: &serde_json::Value| {
        (st["round"]["rounds_failed"].as_u64().unwrap_or(0), st["connection"]["failed_attempts"].as_u64().unwrap_or(0))
    };
    let before = counts(&st);
    put(&bed.merged(), "new.txt", "a change the watcher reports\n");
    std::thread::sleep(Duration::from_secs(6));
    let st = bed.compute_status();
    assert_eq!(counts(&st), before, "attempts went on after a permanent failure: {st}");
    assert_eq!(st["round"]["phase"], "stopped", "{st}");

    // `sync --wait` tries once more, fails at once with the permanent code, naming the token.
    let out =
        cli(&["sync", "--wait", "--control-socket", &bed.c().sock.display().to_string()], Duration::from_secs(60));
    eprintln!("sync --wait: {}", out.describe());
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{}", out.describe());
    assert!(out.stderr.contains("token"), "{}", out.describe());
    assert!(out.took < Duration::from_secs(30), "sync --wait took {:?}", out.took);
    let st = bed.compute_status();
    assert_eq!(st["round"]["phase"], "stopped", "{st}");
    assert_eq!(counts(&st).0, before.0 + 1, "`sync` should try exactly once more: {st}");
    assert!(!exists(&bed.home, "new.txt"), "a round committed with a refused token");

    // The way out: the right token and a restart.
    let p = bed.computes[i].proc.as_mut().expect("compute process");
    assert!(p.stop(Duration::from_secs(45)), "the stopped service did not exit on SIGTERM");
    bed.set_token(i, bed.token("gpu-1"));
    bed.restart_compute(i, &ComputeOpts::default());
    bed.sync_wait();
    assert_eq!(read(&bed.home, "new.txt"), "a change the watcher reports\n");
    bed.finish();
}

fn union_killed_is_remounted_and_reported() {
    if !tools() {
        return;
    }
    let bed = Bed::start("remount", |h| put(h, "README", "still here after a remount\n"));
    let (h, m) = (bed.home.clone(), bed.merged());
    put(&m, "before.txt", "written before the union died\n");
    bed.sync_wait();

    let st = bed.compute_status();
    let remounts0 = st["mounts"]["union"]["remounts"].as_u64().unwrap();
    assert_eq!(remounts0, 0);
    let pid = match bed.union {
        Union::UnionfsFuse => {
            let pid = st["mounts"]["union"]["pid"].as_u64().unwrap_or_else(|| bed.fail(&format!("no union pid: {st}")));
            assert!(pid > 1);
            // SAFETY: kill(2) by the pid the compute service reports for the union it started (its child).
            assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0, "kill union pid {pid}");
            Some(pid)
        }
        // No daemon to kill: the mount itself goes away (what `umount -l` by someone does).
        Union::Overlay => {
            cs_testbed::lazy_unmount(&m).unwrap_or_else(|e| bed.fail(&format!("umount -l {}: {e}", m.display())));
            None
        }
    };

    let back = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        let u = &st["mounts"]["union"];
        let new_daemon = pid.is_none_or(|pid| u["pid"].as_u64().is_some_and(|p| p != pid));
        (u["remounts"].as_u64()? >= 1 && u["state"] == "mounted" && new_daemon).then_some(())
    });
    if back.is_none() {
        bed.fail("the union was not reported remounted within 60 s");
    }
    let works = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (fs::read_to_string(m.join("README")).ok()? == "still here after a remount\n"
            && fs::read_to_string(m.join("before.txt")).ok()? == "written before the union died\n")
            .then_some(())
    });
    if works.is_none() {
        bed.fail(&format!(
            "the merged view does not work after the remount: {:?}",
            fs::read_to_string(m.join("README"))
        ));
    }
    assert!(cs_union::is_mounted(&m).unwrap());

    put(&m, "after.txt", "written after the remount\n");
    bed.sync_wait();
    assert_eq!(read(&h, "after.txt"), "written after the remount\n");
    bed.finish();
}

/// The spec's safety rail: the lower mount dies while the compute server
/// holds synced copies; syncing pauses (and says why) instead of reading the
/// empty lower as deletions, nothing on the project is deleted, and once
/// the supervisor has remounted the lower, rounds resume.
fn safety_rail_lower_gone_pauses_sync_and_deletes_nothing() {
    if !tools() || skip_with_replica("the sshfs lower's loss") {
        return;
    }
    let bed = Bed::start("rail", |h| {
        for i in 0..20 {
            put(h, &format!("data/f{i}.txt"), format!("project file {i}\n"));
        }
    });
    let (h, m) = (bed.home.clone(), bed.merged());
    // C holds some synced copies (edited) and sees the rest through the lower.
    for i in 0..5 {
        append(&m, &format!("data/f{i}.txt"), "edited on the compute server\n");
    }
    bed.sync_wait();
    let st = bed.compute_status();
    let pid = st["mounts"]["lower"]["pid"].as_u64().unwrap_or_else(|| bed.fail(&format!("no lower pid: {st}")));
    // SAFETY: kill(2) by the pid the compute service reports for the sshfs it started (its child).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0, "kill sshfs pid {pid}");

    // The rail goes up and the coordinator pauses, saying why.
    let paused = poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let st = bed.c().status().ok()?;
        (st["mounts"]["rail"].is_string() && st["round"]["phase"] == "paused").then_some(st)
    });
    let Some(st) = paused else { bed.fail("no safety rail / pause within 30 s of killing sshfs") };
    assert!(st["round"]["paused_reason"].is_string(), "{st}");
    // An on-demand round is refused with the reason (unless the lower is already back).
    let refused = bed.try_sync_wait_on(0, Duration::from_secs(30));
    if let Err(e) = &refused {
        assert!(e.contains("paused"), "sync --wait while paused: {e}");
    }
    // Nothing on the project was deleted.
    for i in 0..20 {
        assert!(exists(&h, &format!("data/f{i}.txt")), "data/f{i}.txt deleted on the project");
    }
    // The supervisor remounts the lower; the rail clears and rounds resume.
    let back = poll(Duration::from_secs(90), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["mounts"]["rail"].is_null()
            && st["mounts"]["lower"]["state"] == "mounted"
            && st["round"]["phase"] != "paused")
            .then_some(())
    });
    if back.is_none() {
        bed.fail("the lower was not remounted / the rail did not clear within 90 s");
    }
    put(&m, "after.txt", "after the lower came back\n");
    bed.sync_wait();
    assert_eq!(read(&h, "after.txt"), "after the lower came back\n");
    for i in 0..20 {
        let want = if i < 5 {
            format!("project file {i}\nedited on the compute server\n")
        } else {
            format!("project file {i}\n")
        };
        assert_eq!(read(&h, &format!("data/f{i}.txt")), want);
    }
    bed.finish();
}

/// An idle compute server runs no rounds of its own accord (with the timer
/// at an hour): the round's own scan of the upper layer must not count as
/// a change (found by the bench: one round a second, forever).
fn idle_compute_server_stays_idle() {
    if !tools() {
        return;
    }
    let bed = Bed::start("idle", |h| put(h, "README", "idle\n"));
    put(&bed.merged(), "x.txt", "one change\n");
    bed.sync_wait();
    std::thread::sleep(Duration::from_secs(3));
    let before = bed.compute_status()["round"]["rounds_committed"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let after = bed.compute_status()["round"]["rounds_committed"].as_u64().unwrap();
    assert_eq!(after, before, "rounds ran with nothing to do");
    bed.finish();
}

/// The project's deletions, applied on the compute server by a round, are the round's own
/// changes of the upper layer (removals, whiteouts or markers): the watcher must not start
/// another round for them. A user's deletion right after does start one.
fn a_rounds_deletions_start_no_round_but_a_users_do() {
    if !tools() {
        return;
    }
    let bed = Bed::start("own-deletes", |h| {
        put(h, "held.txt", "C edits this, then P deletes it\n");
        put(h, "dir/held.txt", "in a directory C holds\n");
        put(h, "dir/lower_only.txt", "C never edits this\n");
        put(h, "lower_only.txt", "C never edits this either\n");
        put(h, "users.txt", "the user deletes this on C\n");
        // Never emptied: an empty home raises the "lower empty" rail (sshfs), which pauses
        // rounds.
        put(h, "kept.txt", "nobody deletes this\n");
    });
    let (h, m) = (bed.home.clone(), bed.merged());
    append(&m, "held.txt", "edited on C\n");
    append(&m, "dir/held.txt", "edited on C\n");
    bed.sync_wait();
    // The round the watcher starts for those edits (a second after them) goes first: any
    // round after the deletions' must be theirs.
    let settled = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let st = bed.c().status().ok()?;
        (st["watcher"]["triggers_sent"].as_u64()? >= 1 && st["round"]["phase"] == "idle").then_some(())
    });
    if settled.is_none() {
        bed.fail("no round for the user's edits");
    }
    std::thread::sleep(Duration::from_millis(500));
    // From here on the watcher's triggers are what the assertions count: other rounds (a
    // safety rail going down, a retry) may start, but none of them is the watcher's.
    let triggers = |st: &serde_json::Value| st["watcher"]["triggers_sent"].as_u64().unwrap_or(0);
    let before = triggers(&bed.compute_status());
    fs::remove_file(h.join("held.txt")).unwrap();
    fs::remove_file(h.join("lower_only.txt")).unwrap();
    fs::remove_dir_all(h.join("dir")).unwrap();
    bed.sync_wait();
    let st = bed.compute_status();
    let deleted = st["round"]["last_committed"]["deletes_to_compute"].as_u64().unwrap_or(0);
    assert!(deleted >= 4, "the round applied no deletions on C: {st:#}");
    let upper = bed.upper();
    for p in ["held.txt", "dir/held.txt"] {
        assert!(!in_upper(&upper, p), "{p} is still in the upper layer: {:?}", find_names(&upper, |_| true));
    }

    // A trigger comes a debounce (1 s) after the events that make it.
    std::thread::sleep(Duration::from_secs(3));
    let st = bed.compute_status();
    if triggers(&st) != before {
        bed.fail(&format!("the round's own deletions made the watcher start a round: {}", st["watcher"]));
    }

    fs::remove_file(m.join("users.txt")).unwrap();
    let started = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let st = bed.c().status().ok()?;
        (triggers(&st) > before).then_some(())
    });
    if started.is_none() {
        bed.fail(&format!("a user's deletion started no round: {}", bed.compute_status()["watcher"]));
    }
    bed.sync_wait();
    assert!(!exists(&h, "users.txt"), "the user's deletion did not reach the project");
    bed.finish();
}

/// Step 1 ends the whiteouts of the deletions P confirmed (unionfs-fuse: it removes their
/// markers, at once without a grace period): that starts no round either.
fn a_rounds_removal_of_its_whiteouts_starts_no_round() {
    if !tools() {
        return;
    }
    let mut bed = Bed::new("own-markers");
    put(&bed.home, "a.txt", "the user deletes this on C\n");
    put(&bed.home, "d/b.txt", "and this directory\n");
    // Never emptied: an empty home raises the "lower empty" rail (sshfs), which pauses rounds.
    put(&bed.home, "kept.txt", "nobody deletes this\n");
    bed.start_broker();
    bed.start_compute_with("gpu-1", &["--whiteout-grace-secs", "0"]);
    let h = bed.home.clone();
    let m = bed.merged();
    fs::remove_file(m.join("a.txt")).unwrap();
    fs::remove_dir_all(m.join("d")).unwrap();
    // The watcher's round carries the deletions to P and ends their whiteouts.
    let done = poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let st = bed.c().status().ok()?;
        let idle = st["round"]["phase"] == "idle" && st["round"]["round"].as_u64()? >= 2;
        (idle && !exists(&h, "a.txt") && !exists(&h, "d")).then_some(())
    });
    if done.is_none() {
        bed.fail("the user's deletions did not reach the project");
    }
    // The watcher's triggers, not the round number: other rounds (a safety rail going down, a
    // retry) may start, but none of them is the watcher's. The user's deletions make one (their
    // events come together, within the debounce); the whiteouts' removal, counted as a change,
    // would make another a debounce (1 s) after that round's step 1.
    std::thread::sleep(Duration::from_secs(3));
    let st = bed.compute_status();
    if st["watcher"]["triggers_sent"].as_u64() != Some(1) {
        bed.fail(&format!("removing the whiteouts made the watcher start a round: {}", st["watcher"]));
    }
    bed.finish();
}

fn status_json_has_the_documented_fields() {
    if !tools() {
        return;
    }
    let bed = Bed::start("status", |h| put(h, "README", "status\n"));
    put(&bed.merged(), "x.txt", "x\n");
    bed.sync_wait();

    // rtt_ms is a number once a ping went through (every 5 s).
    let st = poll(Duration::from_secs(15), Duration::from_millis(250), || {
        let st = bed.c().status().ok()?;
        st["connection"]["rtt_ms"].is_number().then_some(st)
    })
    .unwrap_or_else(|| bed.fail("connection.rtt_ms did not become a number within 15 s"));

    assert_eq!(st["service"], "compute", "{st:#}");
    assert_eq!(st["client"], "gpu-1");
    assert_eq!(st["mounts"]["lower"]["state"], "mounted", "{st:#}");
    assert_eq!(st["mounts"]["union"]["state"], "mounted", "{st:#}");
    let union = &st["mounts"]["union"];
    assert_eq!(union["backend"], bed.union.name(), "{st:#}");
    match bed.union {
        Union::UnionfsFuse => {
            assert!(matches!(union["whiteout_dir"].as_str(), Some(".unionfs-fuse" | ".unionfs")), "{st:#}");
            assert!(union["pid"].as_u64().is_some(), "{st:#}");
        }
        Union::Overlay => {
            assert!(union["whiteout_dir"].is_null() && union["pid"].is_null(), "{st:#}");
            assert!(union["work_dir"].is_string(), "{st:#}");
            assert!(union["options"].as_str().is_some_and(|o| o.contains("redirect_dir=on")), "{st:#}");
        }
    }
    assert_eq!(st["connection"]["state"], "connected", "{st:#}");
    assert!(st["connection"]["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert!(st["round"]["phase"].is_string(), "{st:#}");
    assert!(st["round"]["round"].as_u64().unwrap_or(0) >= 2, "{st:#}");
    assert!(st["round"]["rounds_committed"].as_u64().unwrap_or(0) >= 2, "{st:#}");
    let steps = st["round"]["last_committed"]["steps"].as_array().unwrap_or_else(|| panic!("no steps: {st:#}"));
    let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
    for want in ["deletes_to_project", "deletes_to_compute", "writes_to_project", "writes_to_compute", "commit"] {
        assert!(names.contains(&want), "step {want} missing from {names:?}");
    }
    for s in steps {
        for f in ["entries", "bytes", "ms"] {
            assert!(s[f].is_u64(), "step field {f}: {s}");
        }
    }

    let p = bed.project_status();
    assert_eq!(p["service"], "project", "{p:#}");
    assert_eq!(p["broker"]["listen"], format!("127.0.0.1:{}", bed.broker_port), "{p:#}");
    let s0 = &p["broker"]["sessions"][0];
    assert_eq!(s0["client"], "gpu-1", "{p:#}");
    assert!(s0["rounds_committed"].as_u64().unwrap_or(0) >= 2, "{p:#}");

    // The human view names the client and the committed rounds (when idle).
    let sock = bed.c().sock.display().to_string();
    let mut last = String::new();
    let human = poll(Duration::from_secs(20), Duration::from_millis(250), || {
        let o = cli(&["status", "--control-socket", &sock], Duration::from_secs(20));
        last = o.describe();
        (o.ok() && o.stdout.contains("gpu-1") && o.stdout.contains("rounds committed")).then_some(o.stdout)
    });
    if human.is_none() {
        bed.fail(&format!("human status: {last}"));
    }
    let psock = bed.project_sock.display().to_string();
    let o = cli(&["status", "--control-socket", &psock], Duration::from_secs(20));
    assert!(o.ok() && o.stdout.contains("gpu-1"), "project human status: {}", o.describe());
    bed.finish();
}

/// The comparison the other tests rely on does see every kind of difference (no processes).
#[test]
fn tree_comparison_sees_every_difference() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    for r in [a.path(), b.path()] {
        put(r, "d/f.txt", "same\n");
        set_mtime(r, "d/f.txt", 1_600_000_000, 5);
        symlink("d/f.txt", r, "l");
        put(r, "scratch/ignored", "local only");
        put(r, "d/.csa-tmp-x-1-0", "excluded");
    }
    put(b.path(), "scratch/other", "local only, different");
    let empty = a.path().join("no-upper");
    assert_eq!(diff_views(&tree(a.path()), &tree(b.path()), &empty), None);
    assert_eq!(tree(a.path()).len(), 3, "{:?}", tree(a.path()).keys().collect::<Vec<_>>());

    let differs = |f: &dyn Fn(&Path)| {
        let c = tempfile::tempdir().unwrap();
        put(c.path(), "d/f.txt", "same\n");
        set_mtime(c.path(), "d/f.txt", 1_600_000_000, 5);
        symlink("d/f.txt", c.path(), "l");
        f(c.path());
        diff_views(&tree(a.path()), &tree(c.path()), &empty)
    };
    assert!(differs(&|c| put(c, "d/f.txt", "other\n")).is_some(), "content");
    assert!(differs(&|c| chmod(c, "d/f.txt", 0o600)).is_some(), "mode");
    assert!(differs(&|c| set_mtime(c, "d/f.txt", 1_600_000_001, 5)).is_some(), "mtime seconds");
    assert!(differs(&|c| put(c, "extra", "")).is_some(), "extra path");
    assert!(differs(&|c| fs::remove_file(c.join("l")).unwrap()).is_some(), "missing path");
    assert!(
        differs(&|c| {
            fs::remove_file(c.join("l")).unwrap();
            symlink("elsewhere", c, "l")
        })
        .is_some(),
        "symlink target"
    );
    // Nanoseconds count where the union serves the file from its upper layer (sshfs shows
    // whole seconds only).
    assert!(differs(&|c| set_mtime(c, "d/f.txt", 1_600_000_000, 6)).is_none(), "ns through the lower");
    let c = tempfile::tempdir().unwrap();
    put(c.path(), "d/f.txt", "same\n");
    set_mtime(c.path(), "d/f.txt", 1_600_000_000, 6);
    symlink("d/f.txt", c.path(), "l");
    assert!(diff_views(&tree(a.path()), &tree(c.path()), a.path()).is_some(), "ns in the upper layer");
}

/// Deleted on the compute server, the files stay gone from its merged view
/// after the round, though the lower's caches (sshfs, the kernel) still list
/// them for a while: the whiteouts stay for a grace period after the
/// project confirmed the deletion (found by the soak: deleted files came
/// back for ~10 s, and `rm -r` failed with ENOTEMPTY). Once the grace is
/// over, a file the project creates again at such a path shows.
fn deleted_files_do_not_come_back_from_the_lower_caches() {
    if !tools() {
        return;
    }
    deleted_files_scenario(&["--whiteout-grace-secs", "4"], true);
}

/// Returns whether the merged view stayed right; with `expect_right`, fails otherwise.
fn deleted_files_scenario(flags: &[&str], expect_right: bool) -> bool {
    let mut bed = Bed::new("grace");
    for i in 0..20 {
        put(&bed.home, &format!("d/f{i}.txt"), format!("file {i}\n"));
    }
    put(&bed.home, "x.txt", "x\n");
    bed.start_broker();
    bed.start_compute_with("gpu-1", flags);
    let (h, m) = (bed.home.clone(), bed.merged());
    let mut wrong = Vec::new();
    for attempt in 0..3 {
        if attempt > 0 {
            for i in 0..20 {
                put(&h, &format!("d/f{i}.txt"), format!("file {i} again\n"));
            }
            put(&h, "x.txt", "x again\n");
            std::thread::sleep(CACHE_TIMEOUT * 2 + Duration::from_millis(300));
            bed.sync_wait();
        }
        // Read through the merged view (fills the lower's caches), then delete.
        assert_eq!(fs::read_dir(m.join("d")).unwrap().count(), 20);
        for i in 0..20 {
            fs::remove_file(m.join(format!("d/f{i}.txt"))).unwrap();
        }
        fs::remove_file(m.join("x.txt")).unwrap();
        bed.sync_wait();
        assert!(!exists(&h, "x.txt") && !exists(&h, "d/f0.txt"), "not deleted on the project");
        // Right after the round, and for longer than the caches live.
        let until = Instant::now() + CACHE_TIMEOUT * 3;
        while Instant::now() < until {
            if exists(&m, "x.txt") {
                wrong.push(format!("attempt {attempt}: x.txt is back in the merged view"));
                break;
            }
            let left: Vec<String> =
                fs::read_dir(m.join("d")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
            if !left.is_empty() {
                wrong.push(format!("attempt {attempt}: d lists {} deleted files again", left.len()));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if expect_right {
        assert!(wrong.is_empty(), "{wrong:?}");
        assert!(fs::remove_dir(m.join("d")).is_ok(), "rmdir d after its files were deleted");
        bed.sync_wait();
        assert!(!exists(&h, "d"));
        // The project creates x.txt again: hidden until the grace is over,
        // then it shows (a round after the grace removes the whiteout).
        put(&h, "x.txt", "new on the project\n");
        std::thread::sleep(Duration::from_secs(5));
        bed.sync_wait();
        let shown = poll(Duration::from_secs(10), Duration::from_millis(200), || {
            (fs::read_to_string(m.join("x.txt")).ok()? == "new on the project\n").then_some(())
        });
        if shown.is_none() {
            bed.fail("the project's new x.txt does not show after the grace");
        }
        bed.finish();
    } else {
        eprintln!("with {flags:?}: {wrong:?}");
        bed.finish();
    }
    wrong.is_empty()
}

/// The same with no grace: shows that the test above can fail (the deleted
/// files do come back from the caches: 3 attempts of 3 when written).
/// Not a requirement of the product, so not run by default.
#[test]
#[ignore = "demonstration that deleted_files_do_not_come_back_from_the_lower_caches can fail"]
fn without_a_grace_deleted_files_come_back() {
    if !tools() {
        return;
    }
    // The grace is unionfs-fuse's: overlayfs's whiteouts are never removed.
    with_union(Union::UnionfsFuse, || {
        assert!(
            !deleted_files_scenario(&["--whiteout-grace-secs", "0"], false),
            "the caches never showed a deleted file: the grace test proves nothing"
        );
    });
}

/// A project emptied on purpose: the lower comes back empty after holding
/// files, the safety rail pauses syncing (it cannot tell this from a broken
/// mount), and `cs-actor accept-empty-lower` lifts it.
fn an_emptied_project_is_accepted_from_the_command_line() {
    if !tools() || skip_with_replica("the lower-empty rail watches a lower mount") {
        return;
    }
    let bed = Bed::start("emptied", |h| {
        put(h, "a.txt", "a\n");
        put(h, "d/b.txt", "b\n");
    });
    let (h, m) = (bed.home.clone(), bed.merged());
    fs::remove_file(h.join("a.txt")).unwrap();
    fs::remove_dir_all(h.join("d")).unwrap();
    let paused = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["mounts"]["rail"].as_str()?.contains("accept-empty-lower") && st["round"]["phase"] == "paused")
            .then_some(())
    });
    if paused.is_none() {
        bed.fail("the rail did not go up (naming the command) within 60 s of emptying the project");
    }
    let sock = bed.c().sock.display().to_string();
    let out = cli(&["accept-empty-lower", "--control-socket", &sock], Duration::from_secs(20));
    assert!(out.ok() && out.stdout.contains("accepted"), "{}", out.describe());
    let resumed = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["mounts"]["rail"].is_null() && st["round"]["phase"] != "paused").then_some(())
    });
    if resumed.is_none() {
        bed.fail("the rail did not clear within 30 s of accept-empty-lower");
    }
    put(&m, "new.txt", "after the project was emptied\n");
    bed.sync_wait();
    assert_eq!(read(&h, "new.txt"), "after the project was emptied\n");
    assert!(!exists(&m, "a.txt") && !exists(&m, "d"));
    // The broker has no lower layer: it says where to run the command.
    let psock = bed.project_sock.display().to_string();
    let out = cli(&["accept-empty-lower", "--control-socket", &psock], Duration::from_secs(20));
    assert!(!out.ok() && out.describe().contains("compute server"), "{}", out.describe());
    bed.finish();
}

/// Visible at commit (sync-spec.md; issue 12's complaint): the project writes
/// a new file, changes one the compute server has read through the lower,
/// and deletes two; when `cs-actor sync --wait` returns, the merged view
/// shows all of it at once (no polling), although the lower's caches, filled
/// by reading through the merged view right before, still hold the old state
/// for 10 s. The default pull policy (`changed`) carries P's changes into the
/// upper layer and hides its deletions with whiteouts.
fn project_changes_are_visible_when_sync_wait_returns() {
    if !tools() {
        return;
    }
    let wrong = project_changes_scenario(&[]);
    assert!(wrong.is_empty(), "stale after `sync --wait`: {wrong:?}");
}

/// The same with `--pull held`: shows that the test above can fail (the
/// lower's caches do show the old state after the round). Not a requirement
/// of the product, so not run by default.
#[test]
#[ignore = "demonstration that project_changes_are_visible_when_sync_wait_returns can fail"]
fn with_pull_held_project_changes_show_late() {
    if !tools() {
        return;
    }
    // `--pull held` is unionfs-fuse's only: the overlay backend refuses it.
    with_union(Union::UnionfsFuse, || {
        let wrong = project_changes_scenario(&["--pull", "held"]);
        eprintln!("with --pull held: {wrong:?}");
        assert!(!wrong.is_empty(), "the caches never showed the old state: the test above proves nothing");
    });
}

/// What the merged view showed wrong right after `sync --wait`.
fn project_changes_scenario(flags: &[&str]) -> Vec<String> {
    let mut bed = Bed::new("visible");
    put(&bed.home, "keep.txt", "old\n");
    put(&bed.home, "gone.txt", "gone\n");
    put(&bed.home, "d/gone.txt", "gone too\n");
    put(&bed.home, "d/other.txt", "other\n");
    bed.start_broker();
    let opts = ComputeOpts { extra: flags, lower_cache: Some(PRODUCTION_STALENESS), ..Default::default() };
    bed.start_compute_opts("gpu-1", &opts);
    let (h, m) = (bed.home.clone(), bed.merged());
    let names = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        v.sort();
        v
    };
    // Fill the caches: names, attributes, data, listings, and "absent".
    assert_eq!(read(&m, "keep.txt"), "old\n");
    assert_eq!(read(&m, "gone.txt"), "gone\n");
    assert_eq!(read(&m, "d/gone.txt"), "gone too\n");
    assert_eq!(names(&m.join("d")), ["gone.txt", "other.txt"]);
    assert!(!exists(&m, "new.txt") && !exists(&m, "d/new.txt"));
    let started = Instant::now();
    put(&h, "keep.txt", "changed on the project, and longer\n");
    put(&h, "new.txt", "new\n");
    put(&h, "d/new.txt", "new in d\n");
    fs::remove_file(h.join("gone.txt")).unwrap();
    fs::remove_file(h.join("d/gone.txt")).unwrap();
    bed.sync_wait();
    let mut wrong = Vec::new();
    for (rel, want) in
        [("keep.txt", "changed on the project, and longer\n"), ("new.txt", "new\n"), ("d/new.txt", "new in d\n")]
    {
        match fs::read_to_string(m.join(rel)) {
            Ok(s) if s == want => {}
            other => wrong.push(format!("{rel}: {other:?}")),
        }
    }
    for rel in ["gone.txt", "d/gone.txt"] {
        if exists(&m, rel) {
            wrong.push(format!("{rel} still shows"));
        }
    }
    let listed = names(&m.join("d"));
    if listed != ["new.txt", "other.txt"] {
        wrong.push(format!("d lists {listed:?}"));
    }
    // Checked within the caches' lifetime, or the check proves little.
    let elapsed = started.elapsed();
    if elapsed >= PRODUCTION_STALENESS {
        eprintln!("note: checked {elapsed:?} after the project's changes: the lower's caches may have expired");
    }
    if flags.is_empty() && wrong.is_empty() {
        bed.sync_and_converge();
    }
    bed.finish();
    wrong
}
