//! Restarts of the compute service after kill -9 (issue 8, defect 4), end to end: the real
//! services over real sshfs and union mounts, each backend (the bed of `support/mod.rs`).
//!
//! A kill -9 (the OOM killer) leaves the service's union and lower daemons running: they outlive
//! it. The restarted service detaches them and mounts its own; in between, the home's path is
//! the bare mount-point directory, and a program still writing there wrote into it. unionfs-fuse
//! (fuse 2) then refused to mount on the non-empty directory on every attempt, the service gave
//! up after 60 s, and what was written there would have been hidden under the union for good.
//!
//! - `kill_9_during_a_push_then_restart_twenty_times`: a writer process (the user's side) writes
//!   a few hundred files into the merged view, `cs-actor sync --wait` runs in the background, the
//!   compute service is killed with SIGKILL at a random moment and started again 1 s later, 20
//!   times in a row. Every restart must mount within [`MOUNT_BOUND`]; every file the writer
//!   wrote must reach the merged view and the project (at its path, or in a recovery directory);
//!   a write the writer saw fail must have failed with EPERM, EACCES or EROFS (the guarded bare
//!   mount point refusing it), or ENOENT (`mkdir -p` ran in the old union, the write in the bare
//!   directory), and counts as not written.
//! - `files_planted_in_the_bare_mount_point_are_recovered`: entries in the bare mount point at
//!   start-up (left by an older version, or a missed guard) are moved into the upper layer, or
//!   into a recovery directory where the name is taken, reported in the status, and the union
//!   mounts; once stopped, the bare mount point is immutable and refuses writes.
//!
//! `CS_RESTART_SEED=N` replays the random kill moments of a run (each run prints its seed).

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

per_union! {
    both: [
        kill_9_during_a_push_then_restart_twenty_times,
        files_planted_in_the_bare_mount_point_are_recovered,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

/// Kill, restart, check: this many times on one bed.
const ITERATIONS: usize = 20;
/// Files the writer writes per iteration (50 per directory).
const FILES: usize = 300;
/// A restarted service must have its union mounted (and answer `status`) within this.
const MOUNT_BOUND: Duration = Duration::from_secs(30);
/// The prefix of the recovery directories (see docs/operations.md).
const RECOVERED_PREFIX: &str = "cs-actor-recovered-";

/// The user's side: writes `FILES` files into `$1/w/$2/`, creating their directories as it
/// goes, pausing 50 ms every 10 files (so that it is still writing while the service is down),
/// and prints `ok N` or `err N MESSAGE` per file, then `done`.
const WRITER: &str = r#"
m=$1; it=$2; n=$3; i=0
while [ "$i" -lt "$n" ]; do
  d="$m/w/$it/d$((i / 50))"
  if err=$( { mkdir -p "$d" && printf 'iteration %s file %s\n' "$it" "$i" > "$d/f$i"; } 2>&1 ); then
    echo "ok $i"
  else
    echo "err $i $err" | tr '\n' ' '; echo
  fi
  if [ $((i % 10)) -eq 9 ]; then sleep 0.05; fi
  i=$((i + 1))
done
echo done
"#;

fn rel(it: usize, i: usize) -> String {
    format!("w/{it}/d{}/f{i}", i / 50)
}

fn content(it: usize, i: usize) -> String {
    format!("iteration {it} file {i}\n")
}

/// The writer process of one iteration; its report goes to a file.
struct Writer {
    child: Child,
    out: PathBuf,
}

/// What the writer saw.
#[derive(Default)]
struct Written {
    ok: Vec<usize>,
    /// Refused by the guarded bare mount point: EPERM, EACCES or EROFS, or ENOENT (the file's
    /// directory, made through the union a moment before, is not in the bare directory).
    refused: Vec<usize>,
    /// Any other error (each one is a failure of the test).
    other: Vec<String>,
}

impl Writer {
    fn start(merged: &Path, out: PathBuf, it: usize) -> Writer {
        let log = fs::File::create(&out).expect("writer report");
        let child = Command::new("bash")
            .arg("-c")
            .arg(WRITER)
            .arg("writer")
            .arg(merged)
            .arg(it.to_string())
            .arg(FILES.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        Writer { child, out }
    }

    /// Waits for the writer to finish and parses its report.
    fn finish(mut self) -> Written {
        let done = poll(Duration::from_secs(120), Duration::from_millis(50), || self.child.try_wait().ok().flatten());
        if done.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!("the writer did not finish within 120 s");
        }
        let text = fs::read_to_string(&self.out).expect("writer report");
        assert!(text.lines().any(|l| l == "done"), "the writer did not finish its loop: {text}");
        let mut w = Written::default();
        for line in text.lines().filter(|l| *l != "done") {
            let mut parts = line.splitn(3, ' ');
            let (kind, i, msg) = (parts.next(), parts.next().and_then(|i| i.parse().ok()), parts.next().unwrap_or(""));
            match (kind, i) {
                (Some("ok"), Some(i)) => w.ok.push(i),
                (Some("err"), Some(i))
                    if [
                        "Operation not permitted",
                        "Permission denied",
                        "Read-only file system",
                        "No such file or directory",
                    ]
                    .iter()
                    .any(|e| msg.contains(e)) =>
                {
                    w.refused.push(i)
                }
                _ => w.other.push(line.to_string()),
            }
        }
        w
    }
}

/// Where `rel` landed under `root`: at its own path, or in a recovery directory.
fn find_written(root: &Path, rel: &str) -> Option<PathBuf> {
    let direct = root.join(rel);
    if direct.exists() {
        return Some(direct);
    }
    fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(RECOVERED_PREFIX))
        .map(|e| e.path().join(rel))
        .find(|p| p.exists())
}

/// The written files of iteration `it` missing (or wrong) under `root`.
fn missing(root: &Path, it: usize, ok: &[usize]) -> Vec<String> {
    ok.iter()
        .filter_map(|&i| {
            let r = rel(it, i);
            match find_written(root, &r).map(fs::read_to_string) {
                Some(Ok(c)) if c == content(it, i) => None,
                Some(Ok(c)) => Some(format!("{r} holds {c:?}")),
                Some(Err(e)) => Some(format!("{r}: {e}")),
                None => Some(r),
            }
        })
        .collect()
}

/// A small xorshift generator for the kill moments (seeded from the clock, or `CS_RESTART_SEED`).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CS_RESTART_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("CS_RESTART_SEED={seed}");
        Rng(seed | 1)
    }

    /// A duration in `[lo, hi)` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo))
    }
}

/// Entries directly in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Starts compute server 0 again and waits until its union is mounted (its status answers with
/// the union mounted) within [`MOUNT_BOUND`]; `Err` with what it said if not.
fn restart_and_wait_for_the_union(bed: &mut Bed) -> Result<Duration, String> {
    bed.spawn_compute(0, &ComputeOpts::default());
    let t0 = Instant::now();
    let up = poll(MOUNT_BOUND, Duration::from_millis(100), || {
        let c = &mut bed.computes[0];
        if let Some(st) = c.proc.as_mut().unwrap().exited() {
            return Some(Err(format!("the service exited with {st}")));
        }
        let st = c.status().ok()?;
        (st["mounts"]["union"]["state"] == "mounted").then_some(Ok(()))
    });
    match up {
        Some(Ok(())) => Ok(t0.elapsed()),
        Some(Err(e)) => Err(e),
        None => Err(format!("its union was not mounted within {MOUNT_BOUND:?}")),
    }
}

/// The union errors the service logged (the last few).
fn union_errors(bed: &Bed) -> String {
    let log = bed.c().proc.as_ref().map(|p| p.log.clone()).expect("compute log");
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("union dead") || l.contains("did not come up")).collect();
    lines[lines.len().saturating_sub(2)..].join("\n")
}

fn kill_9_during_a_push_then_restart_twenty_times() {
    if !tools() {
        return;
    }
    let started = Instant::now();
    let mut rng = Rng::new();
    let mut bed = Bed::start("restart-kill9", |h| put(h, "README", "killed during pushes\n"));
    let (home, merged) = (bed.home.clone(), bed.merged());
    let sock = bed.c().sock.display().to_string();
    let mut failed_restarts: Vec<String> = Vec::new();
    let mut lost: Vec<String> = Vec::new();
    let mut unexpected_errors: Vec<String> = Vec::new();
    let (mut written, mut refused) = (0, 0);
    for it in 0..ITERATIONS {
        let writer = Writer::start(&merged, bed.root.join(format!("writer-{it}.out")), it);
        std::thread::sleep(rng.ms(100, 500));
        // The user's `cs-actor sync --wait` in the background: the service dies under it.
        let mut sync = Command::new(BIN)
            .args(["sync", "--wait", "--control-socket", &sock])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cs-actor sync --wait");
        let kill_after = rng.ms(0, 1000);
        std::thread::sleep(kill_after);
        bed.computes[0].proc.as_mut().expect("compute process").kill9();
        let left = mounts_under(&bed.c().dir);
        std::thread::sleep(Duration::from_secs(1));

        let restart = restart_and_wait_for_the_union(&mut bed);
        let written_now = match restart {
            Ok(took) => {
                let w = writer.finish();
                eprintln!(
                    "iteration {it}: killed {} ms into the push (mounts left: {}), union mounted {:.1} s after the restart; writer: {} written, {} refused",
                    kill_after.as_millis(),
                    left.len(),
                    took.as_secs_f64(),
                    w.ok.len(),
                    w.refused.len()
                );
                w
            }
            Err(why) => {
                // Before the fix: the union never came back. Count it, then clear the way so
                // the next iterations run: stop the service, let the writer finish, move what
                // it wrote into the bare directory aside (those files are lost to the user).
                let errors = union_errors(&bed);
                bed.computes[0].proc.as_mut().unwrap().kill9();
                let w = writer.finish();
                let aside = bed.root.join(format!("bare-{it}"));
                let bare = if mounts_under(&merged).is_empty() { entries(&merged) } else { Vec::new() };
                eprintln!("iteration {it}: RESTART FAILED: {why}; bare mount point holds {bare:?}; log: {errors}");
                failed_restarts.push(format!("iteration {it}: {why} ({errors}); bare mount point held {bare:?}"));
                let _ = set_immutable(&merged, false);
                fs::create_dir_all(&aside).unwrap();
                for e in &bare {
                    fs::rename(merged.join(e), aside.join(e)).unwrap();
                }
                bed.restart_compute(0, &ComputeOpts::default());
                w
            }
        };
        let _ = poll(Duration::from_secs(30), Duration::from_millis(100), || sync.try_wait().ok().flatten());
        let _ = sync.kill();
        let _ = sync.wait();

        // Every write the writer saw succeed reaches the merged view and the project.
        bed.sync_wait();
        let mut gone = missing(&merged, it, &written_now.ok);
        if gone.is_empty() {
            let ok = poll(Duration::from_secs(20), Duration::from_millis(500), || {
                let g = missing(&home, it, &written_now.ok);
                if g.is_empty() {
                    Some(())
                } else {
                    bed.sync_wait();
                    None
                }
            });
            if ok.is_none() {
                gone = missing(&home, it, &written_now.ok).into_iter().map(|r| format!("project: {r}")).collect();
            }
        } else {
            gone = gone.into_iter().map(|r| format!("merged view: {r}")).collect();
        }
        if !gone.is_empty() {
            eprintln!("iteration {it}: {} written files lost, e.g. {:?}", gone.len(), &gone[..gone.len().min(5)]);
        }
        lost.extend(gone);
        unexpected_errors.extend(written_now.other.iter().map(|e| format!("iteration {it}: {e}")));
        written += written_now.ok.len();
        refused += written_now.refused.len();
    }
    eprintln!(
        "{ITERATIONS} kill -9 and restarts in {:.1} s: {} restart(s) failed, {written} files written, {refused} refused, {} lost",
        started.elapsed().as_secs_f64(),
        failed_restarts.len(),
        lost.len()
    );
    assert!(
        failed_restarts.is_empty() && lost.is_empty() && unexpected_errors.is_empty(),
        "{} of {ITERATIONS} restarts did not mount within {MOUNT_BOUND:?}:\n  {}\n{} written file(s) lost: {:?}\nunexpected write errors: {:?}",
        failed_restarts.len(),
        failed_restarts.join("\n  "),
        lost.len(),
        &lost[..lost.len().min(20)],
        &unexpected_errors[..unexpected_errors.len().min(20)]
    );
    bed.finish();
}

/// SIGTERM to compute server 0; it must stop by itself.
fn stop_compute(bed: &mut Bed) {
    let p = bed.computes[0].proc.as_mut().expect("compute process");
    if !p.stop(Duration::from_secs(45)) || !p.status.is_some_and(|s| s.success()) {
        let st = p.status;
        bed.fail(&format!("the compute service did not stop cleanly on SIGTERM: {st:?}"));
    }
}

fn files_planted_in_the_bare_mount_point_are_recovered() {
    if !tools() {
        return;
    }
    let mut bed = Bed::start("restart-planted", |h| {
        put(h, "README", "the project's readme\n");
        put(h, "docs/a.txt", "the project's a\n");
    });
    let (home, merged, upper) = (bed.home.clone(), bed.merged(), bed.upper());
    put(&merged, "docs/b.txt", "b written on the compute server\n");
    bed.sync_wait();
    stop_compute(&mut bed);
    assert!(mounts_under(&merged).is_empty(), "the union is still mounted after the service stopped");

    // What an older version (or a writer that got past the guard) leaves in the bare mount point.
    set_immutable(&merged, false).expect("clear the immutable attribute");
    put(&merged, "planted.txt", "a new name\n");
    put(&merged, "README", "planted over the project's README\n");
    put(&merged, "docs/b.txt", "planted over the upper layer's b\n");
    put(&merged, "docs/c.txt", "a new name in an existing directory\n");
    put(&merged, "newdir/sub/f.txt", "a new directory\n");

    bed.restart_compute(0, &ComputeOpts::default());
    assert!(!mounts_under(&merged).is_empty(), "the union is not mounted");
    assert_eq!(read(&upper, "planted.txt"), "a new name\n", "planted.txt was not moved into the upper layer");

    // New names went where the writer meant them to go; taken names into the recovery directory.
    assert_eq!(read(&merged, "planted.txt"), "a new name\n");
    assert_eq!(read(&merged, "docs/c.txt"), "a new name in an existing directory\n");
    assert_eq!(read(&merged, "newdir/sub/f.txt"), "a new directory\n");
    assert_eq!(read(&merged, "README"), "the project's readme\n");
    assert_eq!(read(&merged, "docs/b.txt"), "b written on the compute server\n");
    let rec: Vec<String> = entries(&merged).into_iter().filter(|e| e.starts_with(RECOVERED_PREFIX)).collect();
    assert_eq!(rec.len(), 1, "one recovery directory expected in the home: {:?}", entries(&merged));
    let rec = &rec[0];
    assert_eq!(read(&merged, &format!("{rec}/README")), "planted over the project's README\n");
    assert_eq!(read(&merged, &format!("{rec}/docs/b.txt")), "planted over the upper layer's b\n");

    // Reported in the status, as JSON and in the human view.
    let st = bed.compute_status();
    let r = &st["mounts"]["mount_point"];
    assert_eq!(r["guard"], "immutable", "{r}");
    let last = &r["last_recovery"];
    assert_eq!(last["moved_into_upper"], 3, "{r}");
    assert_eq!(last["moved_into_recovery_dir"], 2, "{r}");
    assert_eq!(last["recovery_dir"].as_str(), Some(upper.join(rec).to_str().unwrap()), "{r}");
    assert_eq!(r["recovered_entries"], 5, "{r}");
    let human = cli(&["status", "--control-socket", &bed.c().sock.display().to_string()], Duration::from_secs(20));
    assert!(human.ok(), "{}", human.describe());
    assert!(
        human.stdout.contains("recovered") && human.stdout.contains(rec.as_str()),
        "the human status does not report the recovery: {}",
        human.stdout
    );

    // They reach the project.
    bed.sync_and_converge();
    assert_eq!(read(&home, "planted.txt"), "a new name\n");
    assert_eq!(read(&home, "newdir/sub/f.txt"), "a new directory\n");
    assert_eq!(read(&home, &format!("{rec}/docs/b.txt")), "planted over the upper layer's b\n");
    assert_eq!(read(&home, "README"), "the project's readme\n");

    // Stopped: the bare mount point is empty, immutable, and refuses writes (even root's).
    stop_compute(&mut bed);
    assert!(mounts_under(&merged).is_empty());
    assert_eq!(entries(&merged), Vec::<String>::new(), "the bare mount point is not empty");
    assert!(is_immutable(&merged).expect("read the inode flags"), "the bare mount point is not immutable");
    let e = fs::write(merged.join("while-stopped.txt"), "x").expect_err("a write into the bare mount point succeeded");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    bed.finish();
}
