//! Disk full, end to end: the project home or the compute server's upper
//! layer on a small tmpfs. The round fails with an error that says so in
//! `cs-actor status`, nothing is left half-written, and once the filesystem
//! has room again (remounted larger) the next round commits and the file
//! arrives whole.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

per_union! {
    both: [
        project_disk_full_fails_the_round_clearly_and_recovers,
        upper_disk_full_fails_the_round_clearly_and_recovers,
    ],
}

fn tools() -> bool {
    cs_testbed::real_tools_available()
}

/// A tmpfs of `size` mounted on `dir`, unmounted (lazily) on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = run(
            {
                let mut c = Command::new("mount");
                c.args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"]).arg(dir);
                c
            },
            Duration::from_secs(10),
        );
        assert!(out.ok(), "mount tmpfs on {}: {}", dir.display(), out.describe());
        Tmpfs(dir.to_path_buf())
    }

    /// Gives the filesystem room again, keeping its contents.
    fn grow(&self, size: &str) {
        let mut c = Command::new("mount");
        c.args(["-o", &format!("remount,size={size}")]).arg(&self.0);
        let out = run(c, Duration::from_secs(10));
        assert!(out.ok(), "remount {}: {}", self.0.display(), out.describe());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = cs_testbed::lazy_unmount(&self.0);
    }
}

/// Stops the services (a last round included) so that the tmpfs can go
/// before the bed checks that nothing is left mounted.
fn stop_services(bed: &mut Bed) {
    for c in bed.computes.iter_mut() {
        if let Some(p) = c.proc.as_mut() {
            assert!(p.stop(Duration::from_secs(60)), "compute {} did not stop", c.id);
        }
    }
    if let Some(b) = bed.broker.as_mut() {
        assert!(b.stop(Duration::from_secs(30)), "the broker did not stop");
    }
    bed.sshd = None;
}

fn temporaries(root: &Path) -> Vec<String> {
    find_names(root, |n| n.starts_with(".csa-tmp-"))
}

/// The last error the compute service reports, once a round has failed.
fn wait_for_failure(bed: &Bed, failed_before: u64) -> String {
    let st = poll(Duration::from_secs(90), Duration::from_millis(200), || {
        let st = bed.c().status().ok()?;
        (st["round"]["rounds_failed"].as_u64()? > failed_before).then_some(st)
    })
    .unwrap_or_else(|| bed.fail("no round failed within 90 s of filling the disk"));
    st["round"]["last_error"].as_str().unwrap_or_else(|| bed.fail(&format!("no last_error: {st}"))).to_string()
}

fn says_disk_full(e: &str) -> bool {
    let e = e.to_lowercase();
    e.contains("no space left") || e.contains("disk full") || e.contains("enospc")
}

fn project_disk_full_fails_the_round_clearly_and_recovers() {
    if !tools() {
        return;
    }
    let mut bed = Bed::new("pfull");
    let home = bed.home.clone();
    let fs_home = Tmpfs::mount(&home, "4m");
    put(&home, "README", "a small project home\n");
    bed.start_broker();
    bed.start_compute("gpu-1");
    let (m, up) = (bed.merged(), bed.upper());
    let failed0 = bed.compute_status()["round"]["rounds_failed"].as_u64().unwrap_or(0);

    // 6 MiB of noise cannot fit in the project's 4 MiB.
    put(&m, "big.bin", noise(7, 6 << 20));
    put(&m, "small.txt", "fits\n");
    let r = bed.try_sync_wait_on(0, Duration::from_secs(120));
    assert!(r.is_err(), "a round committed with the project's disk full: {r:?}");
    let err = wait_for_failure(&bed, failed0);
    eprintln!("status last_error: {err}");
    assert!(says_disk_full(&err), "the error does not say the disk is full: {err}");
    assert!(err.contains("big.bin"), "the error does not name the file: {err}");
    assert!(err.contains("Internal"), "a full project disk is not the client's fault (error code): {err}");
    // Nothing half-written: no partial file under its name, no temporaries.
    assert!(!exists(&home, "big.bin"), "a partial big.bin is on the project");
    assert!(temporaries(&home).is_empty(), "temporaries left: {:?}", temporaries(&home));
    assert_eq!(fs::read(up.join("big.bin")).unwrap().len(), 6 << 20, "the compute side lost its copy");

    fs_home.grow("64m");
    bed.sync_wait();
    if let Err(e) = same_bytes(&up.join("big.bin"), &home.join("big.bin")) {
        bed.fail(&format!("big.bin after the disk had room again: {e}"));
    }
    assert_eq!(read(&home, "small.txt"), "fits\n");
    assert!(temporaries(&home).is_empty(), "temporaries left: {:?}", temporaries(&home));
    bed.assert_converged(Duration::from_secs(20));
    stop_services(&mut bed);
    drop(fs_home);
    bed.finish();
}

fn upper_disk_full_fails_the_round_clearly_and_recovers() {
    if !tools() {
        return;
    }
    let mut bed = Bed::new("cfull");
    let home = bed.home.clone();
    put(&home, "README", "the project\n");
    // The upper layer inside a 4 MiB filesystem of its own, not at its root: overlayfs's work
    // directory (UPPER.overlay-work by default) must be on the same filesystem, outside it.
    bed.start_broker();
    let i = bed.add_compute("gpu-1");
    let fs_dir = bed.root.join("gpu-1").join("upper-fs");
    let fs_upper = Tmpfs::mount(&fs_dir, "4m");
    bed.computes[i].upper = fs_dir.join("upper");
    fs::create_dir(&bed.computes[i].upper).unwrap();
    bed.run_compute(i, &ComputeOpts::default());
    let (m, up) = (bed.merged(), bed.upper());
    // A file the compute server holds (so the rail is not what stops rounds).
    put(&m, "held.txt", "held\n");
    bed.sync_wait();
    let failed0 = bed.compute_status()["round"]["rounds_failed"].as_u64().unwrap_or(0);

    // The project writes 6 MiB that the compute server holds a copy of: its
    // step 4 must write it into the 4 MiB upper layer. (A file C does not
    // hold would only show through the lower; edit a held one.)
    put(&m, "data.bin", "small at first\n");
    bed.sync_wait();
    put(&home, "data.bin", noise(11, 6 << 20));
    put(&home, "other.txt", "a new project file\n");
    let r = bed.try_sync_wait_on(0, Duration::from_secs(120));
    assert!(r.is_err(), "a round committed with the upper layer full: {r:?}");
    let err = wait_for_failure(&bed, failed0);
    eprintln!("status last_error: {err}");
    assert!(says_disk_full(&err), "the error does not say the disk is full: {err}");
    assert!(err.contains("data.bin"), "the error does not name the file: {err}");
    // Nothing half-written in the upper layer: the old copy, whole, and no temporaries.
    assert_eq!(read(&up, "data.bin"), "small at first\n", "the upper copy was damaged");
    assert!(temporaries(&up).is_empty(), "temporaries left in the upper layer: {:?}", temporaries(&up));
    assert_eq!(fs::read(home.join("data.bin")).unwrap().len(), 6 << 20, "the project's file changed");

    fs_upper.grow("64m");
    bed.sync_wait();
    if let Err(e) = same_bytes(&home.join("data.bin"), &m.join("data.bin")) {
        bed.fail(&format!("data.bin after the upper had room again: {e}"));
    }
    assert!(temporaries(&up).is_empty(), "temporaries left: {:?}", temporaries(&up));
    let conflicts = find_names(&home, |n| n.contains(".conflict-"));
    assert!(conflicts.is_empty(), "spurious conflict copies: {conflicts:?}");
    bed.assert_converged(Duration::from_secs(20));
    stop_services(&mut bed);
    drop(fs_upper);
    bed.finish();
}
