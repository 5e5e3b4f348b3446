//! The upper-layer watcher after its event queue overflows (a burst the kernel's queue cannot
//! hold): the events are lost, and with them the creation of directories that notify would
//! have started watching. The service watches the tree again, so every directory of the
//! upper layer is watched once the burst is over (a change made later in one of them starts
//! a round within the debounce, not at the next timer round).
//!
//! The queue is made small (`fs.inotify.max_queued_events`, read by the kernel when an
//! inotify instance is made) only while the service starts, in a test binary of its own:
//! no other test makes an inotify instance meanwhile. The user acts as an unprivileged
//! account on the real merged view (kernel overlayfs over the replica).
//!
//! Skips (or, with `CI` set, fails) when the external programs are missing.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use support::*;

const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Puts the kernel's inotify queue limit back when dropped (a failed test included).
struct QueueLimit(String);

impl QueueLimit {
    fn set(n: u32) -> QueueLimit {
        let old = fs::read_to_string(MAX_QUEUED).unwrap();
        fs::write(MAX_QUEUED, n.to_string()).unwrap();
        QueueLimit(old.trim().to_string())
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        if let Err(e) = fs::write(MAX_QUEUED, &self.0) {
            eprintln!("could not put {MAX_QUEUED} back to {}: {e}", self.0);
        }
    }
}

/// How many inotify watches process `pid` holds (`/proc/PID/fdinfo`: one `inotify wd:` line
/// per watch, in each inotify descriptor).
fn inotify_watches(pid: u32) -> usize {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else { return 0 };
    fds.flatten()
        .map(|f| fs::read_to_string(f.path()).map_or(0, |s| s.lines().filter(|l| l.starts_with("inotify wd:")).count()))
        .sum()
}

/// Directories in `root`, itself included (not following symlinks).
fn directories(root: &Path) -> usize {
    1 + fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| directories(&e.path()))
                .sum::<usize>()
        })
        .unwrap_or(0)
}

#[test]
fn after_the_event_queue_overflows_every_directory_of_the_upper_layer_is_watched_again() {
    let Some((mut bed, comp)) = project_owned_bed("watch-overflow", |_| {}) else {
        return;
    };
    let limit = QueueLimit::set(64);
    let opts = ComputeOpts { user: Some(&comp), union: Some(Union::Overlay), replica: true, ..Default::default() };
    bed.start_compute_opts("gpu-1", &opts);
    drop(limit);
    let watching = &bed.compute_status()["watcher"]["watching"];
    assert!(watching.is_string(), "the watcher is not watching: {watching}");

    let pid = bed.computes[0].proc.as_ref().and_then(|p| p.pid()).expect("the service's pid");
    let upper = bed.upper();
    // `burst` first, watched before the burst: then the only record of the directories made
    // in it is their creation events (a walk of a new `burst` would find them all).
    user_must(&bed, &comp, "mkdir \"$HOME\"/burst");
    let watched = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        (inotify_watches(pid) >= directories(&upper)).then_some(())
    });
    assert!(watched.is_some(), "burst/ is not watched: {} watches", inotify_watches(pid));
    // 60 directories, each with a subdirectory, and a file beside each in `burst`, made by
    // one process: ~300 events in `burst` (the new directories' own are not watched yet),
    // far more than 64 within the watcher's 10 ms hold.
    let burst =
        "import os\nfor i in range(60):\n    os.makedirs(f'burst/d{i}/sub')\n    open(f'burst/f{i}', 'w').write('x')\n";
    user_must(&bed, &comp, &format!("cd \"$HOME\" && python3 -c \"{burst}\""));
    let all_watched = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let (w, d) = (inotify_watches(pid), directories(&upper));
        (w >= d).then_some((w, d))
    });
    if all_watched.is_none() {
        bed.fail(&format!(
            "after the overflow the service watches {} inotify watches for {} directories of the upper layer",
            inotify_watches(pid),
            directories(&upper)
        ));
    }
    eprintln!("watches / directories once the burst is over: {all_watched:?}");
    bed.finish();
}
