//! End to end, issue 8 defect 2: a file that keeps changing (a training log appended to every
//! 10 ms) must not stop syncing. Rounds commit without it (it is deferred and status says so),
//! everything else goes both ways, a consistent snapshot of it reaches the project within a
//! few rounds while it is still being written, and once the writer stops the next rounds carry
//! the final file byte for byte. Real services, real sshfs and each union backend (see
//! `support/mod.rs`).

mod support;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

per_union! {
    both: [
        a_file_that_keeps_growing_is_deferred_snapshotted_and_synced_once_it_settles,
        a_project_file_that_keeps_growing_does_not_stop_step_4,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

/// True if `copy` is a prefix of `live` (the writer only appends, so a consistent copy taken
/// at any moment is one).
fn is_prefix_of(copy: &Path, live: &Path) -> Result<u64, String> {
    let a = fs::read(copy).map_err(|e| format!("read {}: {e}", copy.display()))?;
    let mut f = fs::File::open(live).map_err(|e| format!("open {}: {e}", live.display()))?;
    let mut b = vec![0u8; a.len()];
    f.read_exact(&mut b).map_err(|e| format!("{} is shorter than {} bytes: {e}", live.display(), a.len()))?;
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        return Err(format!("{} differs from {} at byte {i} of {}", copy.display(), live.display(), a.len()));
    }
    Ok(a.len() as u64)
}

fn deferred_names(st: &serde_json::Value) -> Vec<String> {
    st["packer"]["deferred"]["files"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["path"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn a_file_that_keeps_growing_is_deferred_snapshotted_and_synced_once_it_settles() {
    if !tools() {
        return;
    }
    let bed = Bed::start("busy-file", |h| put(h, "README", "busy file\n"));
    let (h, m, up) = (bed.home.clone(), bed.merged(), bed.upper());

    // A 20 MB log growing by 64 KiB every 10 ms, written through the merged view by a child
    // process (stopped by pid at the end).
    fs::write(m.join("train.log"), noise(8, 20_000_000)).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("while true; do head -c 65536 /dev/urandom >> \"$1\"; sleep 0.01; done")
        .arg("sh")
        .arg(m.join("train.log"));
    let mut writer = Proc::spawn("writer", cmd, &bed.root.join("writer.log"));
    std::thread::sleep(Duration::from_millis(300));

    put(&m, "other.txt", "other\n");
    put(&h, "fromp.txt", "fromp\n");

    // The round commits although train.log changes all the time.
    if let Err(e) = bed.try_sync_wait_on(0, Duration::from_secs(60)) {
        bed.fail(&format!("sync --wait failed while train.log was being written: {e}"));
    }
    assert_eq!(read(&h, "other.txt"), "other\n", "other.txt did not reach the project");
    let fromp = poll(Duration::from_secs(10), Duration::from_millis(200), || {
        (exists(&m, "fromp.txt") && read(&m, "fromp.txt") == "fromp\n").then_some(())
    });
    if fromp.is_none() {
        bed.fail("fromp.txt did not reach the merged view");
    }

    // Status names the busy file and why; the human view too.
    let st = bed.compute_status();
    assert!(deferred_names(&st).contains(&"train.log".to_string()), "train.log not listed as deferred: {st:#}");
    assert!(st["packer"]["deferred"]["count"].as_u64().unwrap_or(0) >= 1, "{st:#}");
    let f0 = &st["packer"]["deferred"]["files"][0];
    assert_eq!(f0["reason"], "still changing", "{st:#}");
    let sock = bed.c().sock.display().to_string();
    let human = cli(&["status", "--control-socket", &sock], Duration::from_secs(20));
    assert!(
        human.ok() && human.stdout.contains("train.log") && human.stdout.contains("still changing"),
        "{}",
        human.describe()
    );

    // Within a few rounds a snapshot of it reaches the project while it is still growing: a
    // consistent copy (a prefix of the live file) of at least its starting size.
    let mut snap = None;
    for _ in 0..8 {
        bed.sync_wait();
        if exists(&h, "train.log") {
            match is_prefix_of(&h.join("train.log"), &up.join("train.log")) {
                Ok(n) if n >= 20_000_000 => {
                    snap = Some(n);
                    break;
                }
                Ok(n) => {
                    bed.fail(&format!("the project's train.log is {n} bytes, less than the file had at the start"))
                }
                Err(e) => bed.fail(&format!("the project's train.log is not a consistent copy: {e}")),
            }
        }
    }
    let Some(snap) = snap else { bed.fail("no snapshot of train.log reached the project within 8 rounds") };
    assert!(writer.exited().is_none(), "the writer stopped early: the snapshot was not taken of a busy file");
    let st = bed.compute_status();
    assert!(st["packer"]["snapshots_sent"].as_u64().unwrap_or(0) >= 1, "no snapshot counted: {st:#}");
    eprintln!("snapshot of {snap} bytes reached the project while the file grew");

    // The writer stops: the next rounds carry the final file, byte for byte.
    writer.stop(Duration::from_secs(5));
    // An append the shell's last `head` was making when it stopped lands now.
    std::thread::sleep(Duration::from_millis(300));
    let final_len = fs::metadata(up.join("train.log")).unwrap().len();
    assert!(final_len > snap, "the file did not grow after the snapshot ({final_len} <= {snap})");
    bed.sync_wait();
    bed.sync_wait();
    if let Err(e) = same_bytes(&up.join("train.log"), &h.join("train.log")) {
        bed.fail(&format!("after the writer stopped, train.log differs: {e}"));
    }
    let st = bed.compute_status();
    assert!(
        !deferred_names(&st).contains(&"train.log".to_string()),
        "train.log still deferred after it settled: {st:#}"
    );
    bed.sync_and_converge();
    bed.finish();
}

/// The same on the project's side: a file the compute server holds, appended to on the project
/// all the time, must not fail step 4; the broker's status names it; snapshots of it reach the
/// upper layer; the final version once it settles.
fn a_project_file_that_keeps_growing_does_not_stop_step_4() {
    if !tools() {
        return;
    }
    let bed = Bed::start("busy-project-file", |h| put(h, "README", "busy project file\n"));
    let (h, m, up) = (bed.home.clone(), bed.merged(), bed.upper());

    // The compute server holds p.log (it wrote it), then the project appends to it non-stop.
    fs::write(m.join("p.log"), noise(9, 5_000_000)).unwrap();
    bed.sync_wait();
    assert!(same_bytes(&up.join("p.log"), &h.join("p.log")).is_ok());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("while true; do head -c 65536 /dev/urandom >> \"$1\"; sleep 0.01; done")
        .arg("sh")
        .arg(h.join("p.log"));
    let mut writer = Proc::spawn("writer", cmd, &bed.root.join("writer.log"));
    std::thread::sleep(Duration::from_millis(300));
    put(&m, "other.txt", "other\n");

    let mut snap = None;
    for _ in 0..8 {
        if let Err(e) = bed.try_sync_wait_on(0, Duration::from_secs(60)) {
            bed.fail(&format!("sync --wait failed while the project's p.log was being written: {e}"));
        }
        assert_eq!(read(&h, "other.txt"), "other\n");
        let grown = fs::metadata(up.join("p.log")).map(|md| md.len()).unwrap_or(0);
        if grown > 5_000_000 {
            match is_prefix_of(&up.join("p.log"), &h.join("p.log")) {
                Ok(n) => {
                    snap = Some(n);
                    break;
                }
                Err(e) => bed.fail(&format!("the compute server's p.log is not a consistent copy: {e}")),
            }
        }
    }
    let Some(snap) = snap else {
        bed.fail("no snapshot of the project's p.log reached the compute server within 8 rounds")
    };
    assert!(writer.exited().is_none(), "the writer stopped early");
    // Whether that copy was a snapshot of a deferred file or a plain send depends on whether an
    // append fell inside the broker's read of the file, which no test controls (CI once read it
    // whole between two appends). The outcome that matters is asserted above: the rounds commit
    // and the copy is consistent. The snapshot path itself is pinned deterministically by
    // crates/engine/tests/busy.rs (`step_4_defers_withdraws_and_snapshots_a_busy_project_file`).
    let p = bed.project_status();
    let sess = &p["broker"]["sessions"][0];
    eprintln!(
        "a consistent copy of {snap} bytes of the project's p.log reached the upper layer (snapshots sent: {})",
        sess["snapshots_sent"]
    );

    writer.stop(Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    bed.sync_wait();
    bed.sync_wait();
    if let Err(e) = same_bytes(&h.join("p.log"), &up.join("p.log")) {
        bed.fail(&format!("after the writer stopped, p.log differs: {e}"));
    }
    bed.finish();
}
