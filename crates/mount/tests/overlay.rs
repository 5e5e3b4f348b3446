//! The mount supervisor with the kernel overlayfs backend, against real mounts (as root): a
//! plain local directory as the lower (bind-mounted by the lower command), the overlay over
//! it, and what happens when the overlay or the lower goes away from outside.
//!
//! Each test builds its actix system after its fixture, so that on a panic the supervisor (whose
//! mounts unmount on Drop) goes before the temporary directory.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_mount::{
    CheckNow, LowerSpec, LowerStatus, MountConfig, MountState, MountSupervisor, Shutdown, UnionBackend, UnionStatus,
};
use cs_supervision::ObserveExt;
use cs_union::overlay::{is_opaque_dir, kernel_has_overlay};

struct Fx {
    root: PathBuf,
    /// The project's files (what the lower shows).
    project: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
    lower: PathBuf,
    /// Holds the directory the lower command bind-mounts (so a test can switch it).
    source_file: PathBuf,
    _t: tempfile::TempDir,
}

fn fx() -> Fx {
    assert!(rustix::process::geteuid().is_root(), "mounting overlayfs needs root");
    assert!(kernel_has_overlay(), "this kernel does not list overlay in /proc/filesystems");
    // Not /tmp: the upper's filesystem must take trusted xattrs (tmpfs does only since 6.6).
    let t = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let f = Fx {
        project: root.join("project"),
        upper: root.join("upper"),
        merged: root.join("merged"),
        lower: root.join("lower"),
        source_file: root.join("lower-source"),
        root,
        _t: t,
    };
    for d in [&f.project, &f.upper, &f.merged, &f.lower] {
        std::fs::create_dir_all(d).unwrap();
    }
    put(&f.project, "proj.txt", "project file\n");
    put(&f.project, "src/main.rs", "fn main() {}\n");
    put(&f.project, "scratch/from-project", "P\n");
    std::fs::write(&f.source_file, f.project.as_os_str().as_encoded_bytes()).unwrap();
    f
}

impl Drop for Fx {
    fn drop(&mut self) {
        let _ = cs_mount::unguard_mount_point(&self.merged);
    }
}

fn put(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

impl Fx {
    /// The lower: a bind mount of the directory named in `source_file` (read at each mount).
    fn lower_spec(&self) -> LowerSpec {
        let cmd = format!("mount --bind \"$(cat '{}')\" '{}'", self.source_file.display(), self.lower.display());
        LowerSpec::Command { cmd, mountpoint: self.lower.clone() }
    }

    fn config(&self) -> MountConfig {
        let mut c = MountConfig::new(self.lower_spec(), &self.upper, &self.merged);
        c.backend = UnionBackend::Overlay;
        c.health_interval = Duration::from_millis(200);
        c.health_timeout = Duration::from_secs(3);
        c.backoff_min = Duration::from_millis(100);
        c.backoff_max = Duration::from_secs(2);
        c
    }

    /// Mount points below the fixture's directory.
    fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.display().to_string();
        info.lines().filter(|l| l.split(' ').nth(4).is_some_and(|mp| mp.starts_with(&root))).map(String::from).collect()
    }
}

fn run<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    let sys = System::new();
    sys.block_on(f())
}

/// Polls the state every 20 ms until `pred` holds; panics with the last state after `t`.
async fn wait_state(
    a: &Addr<MountSupervisor>,
    t: Duration,
    what: &str,
    pred: impl Fn(&MountState) -> bool,
) -> MountState {
    let deadline = Instant::now() + t;
    loop {
        let s = a.observe().await.unwrap();
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("timed out after {t:?} waiting for {what}; state: {}", serde_json::to_string_pretty(&s).unwrap());
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

fn healthy(s: &MountState) -> bool {
    s.union.state == UnionStatus::Mounted && s.lower.state == LowerStatus::Mounted && s.rail.is_none()
}

fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

async fn shutdown(a: &Addr<MountSupervisor>, fx: &Fx) {
    let fin = a.send(Shutdown).await.unwrap().unwrap();
    assert_eq!(fin.union.state, UnionStatus::Unmounted);
    let left = fx.mounts();
    assert!(left.is_empty(), "mounts left after Shutdown: {left:?}");
}

/// A process whose working directory is `dir` (keeps a detached mount busy); killed on drop.
struct Holder(Child);

impl Holder {
    fn start(dir: &Path) -> Holder {
        Holder(Command::new("sleep").arg("60").current_dir(dir).spawn().unwrap())
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Detaches what is mounted at its path when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        while cs_union::is_mounted(&self.0).unwrap_or(false) {
            if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
    }
}

fn umount(path: &Path, lazy: bool) {
    let flags = if lazy { rustix::mount::UnmountFlags::DETACH } else { rustix::mount::UnmountFlags::empty() };
    rustix::mount::unmount(path, flags).unwrap();
}

#[test]
fn overlay_shows_the_lower_writes_go_up_local_only_is_opaque() {
    let fx = fx();
    run(|| async {
        let mut cfg = fx.config();
        cfg.local_only_owner = Some((40_001, 40_002));
        let a = MountSupervisor::new(cfg).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;

        // The observable state names the backend and the options in force; no process, no
        // unionfs-fuse meta directory.
        let json = serde_json::to_value(&s).unwrap();
        eprintln!("{}", serde_json::to_string_pretty(&json).unwrap());
        assert_eq!(json["union"]["backend"], "overlay");
        assert!(json["union"]["pid"].is_null() && json["union"]["whiteout_dir"].is_null(), "{json}");
        let opts = s.union.options.as_deref().unwrap();
        assert!(opts.split(',').any(|o| o == "redirect_dir=on"), "{opts}");
        assert!(opts.split(',').any(|o| o == "index=on"), "{opts}");
        assert_eq!(s.union.options_note, None);
        let work = fx.root.join("upper.overlay-work");
        assert_eq!(s.union.work_dir.as_deref(), Some(work.as_path()));
        assert!(work.join("work").is_dir(), "the default work directory is the upper's sibling");
        let info = cs_union::mount_entry(&fx.merged).unwrap().unwrap();
        assert_eq!(info.fs_type, "overlay");

        // The lower shows through; a write lands in the upper layer only.
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "project file\n");
        put(&fx.merged, "new.txt", "from C\n");
        put(&fx.merged, "src/lib.rs", "// C\n");
        assert_eq!(std::fs::read_to_string(fx.upper.join("new.txt")).unwrap(), "from C\n");
        assert_eq!(std::fs::read_to_string(fx.upper.join("src/lib.rs")).unwrap(), "// C\n");
        assert!(!fx.project.join("new.txt").exists());
        // A delete of a lower file is an overlay whiteout in the upper layer.
        std::fs::remove_file(fx.merged.join("proj.txt")).unwrap();
        let wh = std::fs::symlink_metadata(fx.upper.join("proj.txt")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
        assert!(fx.project.join("proj.txt").exists());

        // The local-only directories are opaque: the project's scratch is hidden, and they are
        // the compute user's.
        assert!(list(&fx.merged.join("scratch")).is_empty(), "{:?}", list(&fx.merged.join("scratch")));
        for d in ["scratch", ".cache", ".local"] {
            assert!(is_opaque_dir(&fx.upper.join(d)).unwrap(), "{d} is not opaque");
            let md = std::fs::metadata(fx.upper.join(d)).unwrap();
            assert_eq!((md.uid(), md.gid()), (40_001, 40_002), "{d}");
        }
        put(&fx.merged, "scratch/mine", "C\n");
        assert_eq!(list(&fx.merged.join("scratch")), ["mine"]);

        let s = a.send(CheckNow).await.unwrap().unwrap();
        assert!(healthy(&s) && s.union.remounts == 0, "{s:?}");
        shutdown(&a, &fx).await;
    });
    assert_eq!(std::fs::read_to_string(fx.project.join("proj.txt")).unwrap(), "project file\n");
}

#[test]
fn overlay_unmounted_from_outside_is_remounted() {
    let fx = fx();
    run(|| async {
        let a = MountSupervisor::new(fx.config()).unwrap().start();
        wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        put(&fx.merged, "c.txt", "C\n");

        // Someone detaches the overlay while a shell sits in the home: the old overlay lives on
        // (busy), so index=on is refused for the new one and it comes back with index=off.
        let holder = Holder::start(&fx.merged);
        umount(&fx.merged, true);
        let s = wait_state(&a, Duration::from_secs(10), "overlay remounted", |s| {
            s.union.remounts == 1 && s.union.state == UnionStatus::Mounted
        })
        .await;
        assert!(s.union.last_error.as_deref().unwrap_or("").contains("no longer mounted"), "{:?}", s.union.last_error);
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "project file\n");
        assert_eq!(std::fs::read_to_string(fx.merged.join("c.txt")).unwrap(), "C\n");
        // The kernel lists only what differs from its defaults: index=off is not listed.
        let opts = s.union.options.clone().unwrap();
        assert!(!opts.split(',').any(|o| o == "index=on"), "{opts}");
        let note = s.union.options_note.clone().unwrap_or_default();
        assert!(note.contains("index=on refused") && note.contains("still in use"), "{note}");
        assert_eq!(s.lower.remounts, 0);
        drop(holder);

        // Unmounted again with nothing holding it: back to index=on, the note gone.
        umount(&fx.merged, false);
        let s = wait_state(&a, Duration::from_secs(10), "overlay remounted again", |s| {
            s.union.remounts == 2 && s.union.state == UnionStatus::Mounted
        })
        .await;
        assert!(s.union.options.as_deref().unwrap().split(',').any(|o| o == "index=on"), "{:?}", s.union.options);
        assert_eq!(s.union.options_note, None);
        assert_eq!(std::fs::read_to_string(fx.merged.join("c.txt")).unwrap(), "C\n");
        shutdown(&a, &fx).await;
    });
}

#[test]
fn a_remounted_lower_gets_a_new_overlay_over_it() {
    let fx = fx();
    let second = fx.root.join("project-2");
    put(&second, "proj.txt", "the new lower\n");
    put(&second, "only-in-2.txt", "2\n");
    run(|| async {
        let a = MountSupervisor::new(fx.config()).unwrap().start();
        wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        put(&fx.merged, "c.txt", "C\n");
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "project file\n");

        // The lower goes away and its command mounts another directory there.
        std::fs::write(&fx.source_file, second.as_os_str().as_encoded_bytes()).unwrap();
        umount(&fx.lower, false);
        let s = wait_state(&a, Duration::from_secs(10), "lower and overlay remounted", |s| {
            healthy(s) && s.lower.remounts == 1 && s.union.remounts == 1
        })
        .await;
        // The overlay shows the new lower (the old one pinned the old superblock), and keeps
        // the upper layer.
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "the new lower\n");
        assert!(fx.merged.join("only-in-2.txt").exists());
        assert_eq!(std::fs::read_to_string(fx.merged.join("c.txt")).unwrap(), "C\n");
        // A different local directory under an upper made with index=on: the kernel refuses
        // index=on (its recorded origin), and the status says so.
        let note = s.union.options_note.clone().unwrap_or_default();
        assert!(note.contains("index=on refused") && note.contains("another lower"), "{note}");
        shutdown(&a, &fx).await;
    });
}

#[test]
fn a_stale_overlay_at_the_merged_path_is_replaced() {
    let fx = fx();
    // A predecessor's overlay (other upper and work directories) is still mounted there.
    let old_upper = fx.root.join("old-upper");
    put(&old_upper, "old.txt", "from the old mount\n");
    let old = cs_union::overlay::Overlay {
        upper: old_upper,
        lower: fx.project.clone(),
        work: fx.root.join("old-work"),
        merged: fx.merged.clone(),
        extra: vec![],
    };
    std::mem::forget(old.mount().unwrap()); // left behind, as after a kill -9
    let _if_still_there = Unmount(fx.merged.clone());
    assert!(fx.merged.join("old.txt").exists());
    run(|| async {
        let a = MountSupervisor::new(fx.config()).unwrap().start();
        wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        assert!(!fx.merged.join("old.txt").exists(), "the stale overlay is still in front");
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "project file\n");
        put(&fx.merged, "c.txt", "C\n");
        assert!(fx.upper.join("c.txt").exists());
        shutdown(&a, &fx).await;
    });
}

#[test]
fn an_upper_layer_of_the_other_backend_is_refused() {
    let fx = fx();
    std::fs::create_dir_all(fx.upper.join(".unionfs-fuse")).unwrap();
    let e = MountSupervisor::new(fx.config()).err().expect("an upper written by unionfs-fuse must be refused");
    let e = e.to_string();
    assert!(e.contains(&fx.upper.join(".unionfs-fuse").display().to_string()), "{e}");
    assert!(e.contains("move") && e.contains("empty upper layer"), "{e}");
    assert!(fx.mounts().is_empty());
}

/// An adopted lower that someone else mounts again (not the supervisor's own remount): the
/// health check sees that the lower is another mount than the one the overlay pins.
#[test]
fn an_adopted_lower_mounted_again_by_someone_else_gets_a_new_overlay() {
    let fx = fx();
    let second = fx.root.join("project-2");
    put(&second, "proj.txt", "the new lower\n");
    let bind = |src: &Path| {
        rustix::mount::mount_bind(src, &fx.lower).unwrap();
    };
    bind(&fx.project);
    // Unmounted even if the test fails (the supervisor leaves an adopted lower alone).
    let adopted = Unmount(fx.lower.clone());
    run(|| async {
        let mut cfg = fx.config();
        cfg.lower = LowerSpec::Adopt(fx.lower.clone());
        let a = MountSupervisor::new(cfg).unwrap().start();
        wait_state(&a, Duration::from_secs(20), "healthy mounts", |s| {
            s.union.state == UnionStatus::Mounted && s.lower.state == LowerStatus::Adopted
        })
        .await;
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "project file\n");

        umount(&fx.lower, false);
        bind(&second);
        let s = wait_state(&a, Duration::from_secs(10), "overlay remounted over the new lower", |s| {
            s.union.remounts == 1 && s.union.state == UnionStatus::Mounted
        })
        .await;
        assert!(s.union.last_error.as_deref().unwrap_or("").contains("mounted again"), "{:?}", s.union.last_error);
        assert_eq!(std::fs::read_to_string(fx.merged.join("proj.txt")).unwrap(), "the new lower\n");
        a.send(Shutdown).await.unwrap().unwrap();
    });
    // Shutdown leaves an adopted lower mounted.
    assert!(cs_union::is_mounted(&fx.lower).unwrap());
    drop(adopted);
    assert!(fx.mounts().is_empty(), "{:?}", fx.mounts());
}

/// A work directory left by an earlier mount with scratch entries the kernel cannot clean
/// (it would mount read-only): the scratch is removed and the overlay comes up writable.
#[test]
fn a_stale_work_directory_is_cleaned() {
    let fx = fx();
    let work = fx.root.join("upper.overlay-work");
    put(&work, "work/d/e/f", "left by a copy-up cut short");
    put(&work, "work/junk", "");
    run(|| async {
        let a = MountSupervisor::new(fx.config()).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        let opts = s.union.options.clone().unwrap();
        assert!(!opts.split(',').any(|o| o == "ro"), "{opts}");
        assert!(opts.split(',').any(|o| o == "index=on"), "{opts}");
        put(&fx.merged, "c.txt", "C\n");
        assert!(fx.upper.join("c.txt").exists());
        assert!(!work.join("work/junk").exists());
        shutdown(&a, &fx).await;
    });
}
