//! The mount supervisor against real processes: a loopback sshd, sshfs as the lower,
//! unionfs-fuse as the union. Short intervals throughout.
//!
//! Each test builds its actix system *after* its fixture, so that on a panic the system (and
//! with it the supervisor, whose mounts unmount on Drop) goes before the temporary directory
//! and the sshd.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_mount::{
    sshfs_command, AcceptEmptyLower, CheckNow, LowerSpec, LowerStatus, MountConfig, MountState, MountSupervisor,
    Shutdown, SshfsOptions, SshfsTarget, SyncAllowed, UnionStatus,
};
use cs_supervision::ObserveExt;
use cs_testbed::{current_user, real_tools_available, sshfs_mount, DelayProxy, Sshd};

struct Fx {
    root: PathBuf,
    home: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
    lower: PathBuf,
    // Dropped in this order: sshd before the directory it lives in.
    sshd: Sshd,
    _t: tempfile::TempDir,
}

fn fx() -> Option<Fx> {
    if !real_tools_available() {
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let (home, upper, merged, lower, keys) =
        (root.join("home"), root.join("upper"), root.join("merged"), root.join("lower"), root.join("keys"));
    for d in [&home, &upper, &merged, &lower, &keys] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(home.join("proj.txt"), b"project file\n").unwrap();
    std::fs::create_dir_all(home.join("src")).unwrap();
    std::fs::write(home.join("src/main.rs"), b"fn main() {}\n").unwrap();
    let sshd = Sshd::start(&keys).unwrap();
    Some(Fx { root, home, upper, merged, lower, sshd, _t: t })
}

impl Drop for Fx {
    fn drop(&mut self) {
        // The supervisor leaves the bare mount point immutable: lift that so that the
        // temporary directory can be deleted.
        let _ = cs_mount::unguard_mount_point(&self.merged);
    }
}

impl Fx {
    fn target(&self) -> SshfsTarget {
        SshfsTarget {
            user: Some(current_user()),
            host: "127.0.0.1".into(),
            port: Some(self.sshd.port()),
            remote_dir: self.home.display().to_string(),
            ssh_options: self.sshd.ssh_options(),
        }
    }

    fn sshfs_lower(&self, opts: &SshfsOptions) -> LowerSpec {
        LowerSpec::Command { cmd: sshfs_command(&self.target(), &self.lower, opts), mountpoint: self.lower.clone() }
    }

    fn config(&self, lower: LowerSpec) -> MountConfig {
        let mut c = MountConfig::new(lower, &self.upper, &self.merged);
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

/// Runs `f` on a fresh actix system, dropped (with its actors) before the caller's fixture.
fn run<F: Future>(f: impl FnOnce() -> F) -> F::Output {
    let sys = System::new();
    sys.block_on(f())
}

async fn observe(a: &Addr<MountSupervisor>) -> MountState {
    a.observe().await.unwrap()
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
        let s = observe(a).await;
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
    s.union.state == UnionStatus::Mounted
        && matches!(s.lower.state, LowerStatus::Mounted | LowerStatus::Adopted)
        && s.rail.is_none()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

async fn shutdown(a: &Addr<MountSupervisor>, fx: &Fx, pids: &[u32]) {
    let fin = a.send(Shutdown).await.unwrap().unwrap();
    assert_eq!(fin.union.state, UnionStatus::Unmounted);
    assert!(fin.rail.is_some());
    let adopted = fin.lower.kind == cs_mount::LowerKind::Adopt;
    let left: Vec<String> =
        fx.mounts().into_iter().filter(|l| !(adopted && l.split(' ').nth(4) == fx.lower.to_str())).collect();
    assert!(left.is_empty(), "mounts left after Shutdown: {left:?}");
    for &pid in pids {
        assert!(!pid_alive(pid), "process {pid} still running after Shutdown");
    }
}

#[test]
fn sshfs_lower_and_union_writes_go_up_project_shows_through() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let sup = MountSupervisor::new(fx.config(fx.sshfs_lower(&SshfsOptions::default()))).unwrap();
        let a = sup.start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        assert_eq!(s.lower.state, LowerStatus::Mounted);
        assert_eq!(s.lower.has_entries, Some(true));
        assert_eq!((s.union.remounts, s.lower.remounts), (0, 0));
        let (upid, lpid) = (s.union.pid.unwrap(), s.lower.pid.unwrap());
        assert!(a.send(SyncAllowed).await.unwrap());

        // A project file shows through; a write lands in the upper layer only.
        assert_eq!(std::fs::read(fx.merged.join("proj.txt")).unwrap(), b"project file\n");
        assert_eq!(std::fs::read(fx.merged.join("src/main.rs")).unwrap(), b"fn main() {}\n");
        std::fs::write(fx.merged.join("new.txt"), b"from C\n").unwrap();
        std::fs::write(fx.merged.join("src/lib.rs"), b"// C\n").unwrap();
        assert_eq!(std::fs::read(fx.upper.join("new.txt")).unwrap(), b"from C\n");
        assert_eq!(std::fs::read(fx.upper.join("src/lib.rs")).unwrap(), b"// C\n");
        assert!(!fx.home.join("new.txt").exists() && !fx.home.join("src/lib.rs").exists());

        // The observable state is what `cs-actor status` prints.
        let s = a.send(CheckNow).await.unwrap().unwrap();
        let json = serde_json::to_value(&s).unwrap();
        eprintln!("{}", serde_json::to_string_pretty(&json).unwrap());
        assert_eq!(json["lower"]["kind"], "command");
        assert_eq!(json["lower"]["state"], "mounted");
        assert_eq!(json["union"]["state"], "mounted");
        assert!(json["union"]["latency_ms"].is_number() && json["lower"]["latency_ms"].is_number(), "{json}");
        assert!(json["rail"].is_null());
        assert!(s.checks >= 1);

        shutdown(&a, &fx, &[upid, lpid]).await;
        // The project is untouched by the shutdown.
        assert_eq!(std::fs::read(fx.home.join("proj.txt")).unwrap(), b"project file\n");
    });
}

#[test]
fn killed_union_is_remounted() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let sup = MountSupervisor::new(fx.config(fx.sshfs_lower(&SshfsOptions::default()))).unwrap();
        let a = sup.start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        let old = s.union.pid.unwrap();
        // SAFETY: kill(2) of the union process the supervisor started (its pid from the state).
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        let t = Instant::now();
        let s = wait_state(&a, Duration::from_secs(5), "union remounted", |s| {
            s.union.remounts == 1 && s.union.state == UnionStatus::Mounted
        })
        .await;
        eprintln!("union remounted {:?} after kill -9", t.elapsed());
        assert_ne!(s.union.pid, Some(old));
        assert!(s.union.last_error.as_deref().unwrap_or("").contains("exited"), "{:?}", s.union.last_error);
        assert_eq!(std::fs::read(fx.merged.join("proj.txt")).unwrap(), b"project file\n");
        std::fs::write(fx.merged.join("after.txt"), b"x").unwrap();
        assert!(fx.upper.join("after.txt").exists());
        // The lower was not disturbed.
        assert_eq!(s.lower.remounts, 0);
        assert!(s.rail.is_none());
        shutdown(&a, &fx, &[s.union.pid.unwrap(), s.lower.pid.unwrap()]).await;
    });
}

#[test]
fn killed_sshfs_raises_the_rail_until_remounted() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let mut cfg = fx.config(fx.sshfs_lower(&SshfsOptions::default()));
        // The first remount waits ≥ 1 s, so the rail is observable.
        cfg.backoff_min = Duration::from_secs(1);
        cfg.backoff_max = Duration::from_secs(4);
        let a = MountSupervisor::new(cfg).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        let (old, upid) = (s.lower.pid.unwrap(), s.union.pid.unwrap());
        // SAFETY: kill(2) of the sshfs process the supervisor started (its pid from the state).
        unsafe { libc::kill(old as i32, libc::SIGKILL) };

        let s = wait_state(&a, Duration::from_secs(3), "the rail", |s| s.rail.is_some()).await;
        assert!(!a.send(SyncAllowed).await.unwrap());
        assert_eq!(s.lower.state, LowerStatus::Error, "{s:?}");
        assert!(s.rail.as_deref().unwrap().starts_with("lower erroring"), "{:?}", s.rail);
        assert_eq!(s.rails_raised, 1);
        // The union stays up (it shows only the upper layer meanwhile).
        assert_eq!(s.union.state, UnionStatus::Mounted);

        let s = wait_state(&a, Duration::from_secs(15), "lower remounted, rail down", |s| {
            s.rail.is_none() && s.lower.remounts == 1
        })
        .await;
        assert!(a.send(SyncAllowed).await.unwrap());
        assert_ne!(s.lower.pid, Some(old));
        // The same union process sees the new lower mount (it looks branches up by path).
        assert_eq!(s.union.pid, Some(upid));
        assert_eq!(s.union.remounts, 0);
        assert_eq!(std::fs::read(fx.merged.join("proj.txt")).unwrap(), b"project file\n");
        shutdown(&a, &fx, &[upid, s.lower.pid.unwrap()]).await;
    });
}

/// With the overlay backend, sshfs killed and mounted again: the overlay pinned the dead
/// sshfs, so it is mounted again over the new one (unionfs-fuse needs no remount, above).
#[test]
fn killed_sshfs_under_overlay_remounts_both() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let mut cfg = fx.config(fx.sshfs_lower(&SshfsOptions::default()));
        cfg.backend = cs_mount::UnionBackend::Overlay;
        let a = MountSupervisor::new(cfg).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        assert_eq!(s.union.pid, None);
        // index=on holds over sshfs (FUSE gives file handles): docs/union.md, point 6.
        assert!(s.union.options.as_deref().unwrap().split(',').any(|o| o == "index=on"), "{:?}", s.union.options);
        std::fs::write(fx.merged.join("c.txt"), b"C\n").unwrap();
        let old = s.lower.pid.unwrap();
        // SAFETY: kill(2) of the sshfs process the supervisor started (its pid from the state).
        unsafe { libc::kill(old as i32, libc::SIGKILL) };

        let s = wait_state(&a, Duration::from_secs(15), "lower and overlay remounted", |s| {
            healthy(s) && s.lower.remounts == 1 && s.union.remounts == 1
        })
        .await;
        assert_ne!(s.lower.pid, Some(old));
        assert_eq!(s.union.options_note, None, "index=on is kept over a new sshfs");
        // The project shows through the new sshfs (the old overlay answered ENOTCONN).
        assert_eq!(std::fs::read(fx.merged.join("src/main.rs")).unwrap(), b"fn main() {}\n");
        assert_eq!(std::fs::read(fx.merged.join("c.txt")).unwrap(), b"C\n");
        shutdown(&a, &fx, &[s.lower.pid.unwrap()]).await;
    });
}

#[test]
fn local_only_dirs_show_only_local_files() {
    let Some(fx) = fx() else { return };
    for d in ["scratch", ".cache/pip"] {
        std::fs::create_dir_all(fx.home.join(d)).unwrap();
        std::fs::write(fx.home.join(d).join("from-project"), b"P\n").unwrap();
    }
    std::fs::create_dir_all(fx.home.join("data")).unwrap();
    std::fs::write(fx.home.join("data/shared"), b"P\n").unwrap();
    run(|| async {
        let a = MountSupervisor::new(fx.config(fx.sshfs_lower(&SshfsOptions::default()))).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        let list = |p: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(fx.merged.join(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert!(list("scratch").is_empty(), "{:?}", list("scratch"));
        assert!(list(".cache").is_empty(), "{:?}", list(".cache"));
        assert!(!fx.merged.join("scratch/from-project").exists());
        assert!(!fx.merged.join(".cache/pip").exists());
        // An ordinary directory still merges.
        assert_eq!(list("data"), ["shared"]);

        std::fs::write(fx.merged.join("scratch/local"), b"C\n").unwrap();
        std::fs::create_dir_all(fx.merged.join(".cache/pip")).unwrap();
        std::fs::write(fx.merged.join(".cache/pip/wheel"), b"C\n").unwrap();
        std::fs::create_dir_all(fx.merged.join(".local/bin")).unwrap();
        assert_eq!(list("scratch"), ["local"]);
        assert_eq!(list(".cache/pip"), ["wheel"]);
        assert_eq!(std::fs::read(fx.upper.join("scratch/local")).unwrap(), b"C\n");
        assert_eq!(std::fs::read(fx.upper.join(".cache/pip/wheel")).unwrap(), b"C\n");
        assert!(fx.upper.join(".local/bin").is_dir());
        // The project's copies are neither shown nor changed.
        assert_eq!(std::fs::read(fx.home.join("scratch/from-project")).unwrap(), b"P\n");
        assert_eq!(std::fs::read(fx.home.join(".cache/pip/from-project")).unwrap(), b"P\n");
        assert!(!fx.home.join("scratch/local").exists() && !fx.home.join(".local").exists());
        shutdown(&a, &fx, &[s.union.pid.unwrap(), s.lower.pid.unwrap()]).await;
    });
}

#[test]
fn adopted_lower_that_empties_raises_the_rail() {
    let Some(fx) = fx() else { return };
    // An sshfs mount we made ourselves, adopted; short caches so the emptiness shows quickly.
    let opts = SshfsOptions::default().with_staleness(Duration::from_millis(500));
    let lower = sshfs_mount(&fx.home, fx.sshd.port(), fx.sshd.identity(), &fx.lower, &opts.to_opts()).unwrap();
    run(|| async {
        let a = MountSupervisor::new(fx.config(LowerSpec::Adopt(fx.lower.clone()))).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        assert_eq!(s.lower.state, LowerStatus::Adopted);
        assert_eq!(s.lower.pid, None);

        // The project's home empties (as a broken export would look): the rail goes up.
        std::fs::remove_file(fx.home.join("proj.txt")).unwrap();
        std::fs::remove_dir_all(fx.home.join("src")).unwrap();
        let s = wait_state(&a, Duration::from_secs(10), "the empty-lower rail", |s| s.rail.is_some()).await;
        assert!(s.rail.as_deref().unwrap().starts_with("lower empty"), "{:?}", s.rail);
        assert_eq!(s.lower.state, LowerStatus::Adopted);
        assert!(!a.send(SyncAllowed).await.unwrap());

        // Told that the project really is empty, it lets rounds run.
        a.send(AcceptEmptyLower).await.unwrap();
        assert!(a.send(SyncAllowed).await.unwrap());
        let s = a.send(CheckNow).await.unwrap().unwrap();
        assert!(s.rail.is_none(), "{:?}", s.rail);

        let upid = s.union.pid.unwrap();
        shutdown(&a, &fx, &[upid]).await;
    });
    // Shutdown does not unmount an adopted lower.
    assert!(cs_union::is_mounted(&fx.lower).unwrap());
    drop(lower);
    assert!(fx.mounts().is_empty());
}

#[test]
fn adopted_lower_that_is_not_mounted_keeps_the_rail_up() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let a = MountSupervisor::new(fx.config(LowerSpec::Adopt(fx.lower.clone()))).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(5), "a check", |s| s.checks >= 2).await;
        assert_eq!(s.lower.state, LowerStatus::Missing);
        assert!(s.rail.as_deref().unwrap().starts_with("lower missing"), "{:?}", s.rail);
        // The union waits for the lower: a union over an empty directory would look like a
        // home whose files all vanished.
        assert_eq!(s.union.state, UnionStatus::Starting);
        assert!(!a.send(SyncAllowed).await.unwrap());
        assert!(fx.mounts().is_empty());
        a.send(Shutdown).await.unwrap().unwrap();
    });
}

#[test]
fn failing_lower_command_is_retried_with_backoff() {
    let Some(fx) = fx() else { return };
    run(|| async {
        let lower = LowerSpec::Command { cmd: "false".into(), mountpoint: fx.lower.clone() };
        let a = MountSupervisor::new(fx.config(lower)).unwrap().start();
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
        let s = observe(&a).await;
        assert_eq!(s.lower.state, LowerStatus::Missing);
        assert!(s.lower.last_error.as_deref().unwrap().contains("exited with"), "{:?}", s.lower.last_error);
        // Attempts at about 0, 0.1, 0.3, 0.7 s (doubling from 100 ms, +0..25 % jitter), the
        // next not before 1.5 s.
        assert!((3..=5).contains(&s.lower.failed_attempts), "{} attempts", s.lower.failed_attempts);
        assert!(s.rail.is_some());
        assert!(fx.mounts().is_empty());
        a.send(Shutdown).await.unwrap().unwrap();
    });
}

#[test]
fn lower_command_that_exits_after_its_mount_shows_is_not_dead() {
    let Some(fx) = fx() else { return };
    run(|| async {
        // A daemonising command whose exit comes after the mount is listed (as `mount --bind`
        // under load, the replica's lower): the exit is not the mount's death.
        let cmd = format!(
            "sh -c 'mount --bind \"$0\" \"$1\" && sleep 0.5' {} {}",
            cs_mount::shell_quote(&fx.home.to_string_lossy()),
            cs_mount::shell_quote(&fx.lower.to_string_lossy())
        );
        let lower = LowerSpec::Command { cmd, mountpoint: fx.lower.clone() };
        let a = MountSupervisor::new(fx.config(lower)).unwrap().start();
        wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        // The command exits 0.5 s after mounting; checks every 200 ms.
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
        let s = observe(&a).await;
        assert!(healthy(&s), "{}", serde_json::to_string_pretty(&s).unwrap());
        assert_eq!((s.lower.remounts, s.lower.pid, s.rails_raised), (0, None, 0), "{:?}", s.lower);
        let upid = s.union.pid.unwrap();
        shutdown(&a, &fx, &[upid]).await;
    });
}

#[test]
fn cut_connection_recovers_by_sshfs_reconnect() {
    let Some(fx) = fx() else { return };
    let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), fx.sshd.addr(), Duration::from_millis(1)).unwrap();
    let mut target = fx.target();
    target.port = Some(proxy.port());
    let lower = LowerSpec::Command {
        cmd: sshfs_command(&target, &fx.lower, &SshfsOptions::default()),
        mountpoint: fx.lower.clone(),
    };
    run(|| async {
        let a = MountSupervisor::new(fx.config(lower)).unwrap().start();
        let s = wait_state(&a, Duration::from_secs(20), "healthy mounts", healthy).await;
        let lpid = s.lower.pid.unwrap();
        proxy.cut_all();
        // The project changes meanwhile; sshfs reconnects at the next request that misses its
        // caches (a new name).
        std::fs::write(fx.home.join("after-cut.txt"), b"new on P\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read(fx.merged.join("after-cut.txt")) {
                Ok(b) => {
                    assert_eq!(b, b"new on P\n");
                    break;
                }
                Err(e) if Instant::now() > deadline => panic!("no reconnect: {e}; {:?}", observe(&a).await),
                Err(_) => actix_rt::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let s = a.send(CheckNow).await.unwrap().unwrap();
        assert!(s.rail.is_none(), "{:?}", s.rail);
        assert_eq!(s.lower.pid, Some(lpid), "sshfs itself reconnected: no remount");
        assert_eq!(s.lower.remounts, 0);
        shutdown(&a, &fx, &[s.union.pid.unwrap(), lpid]).await;
    });
    drop(proxy);
}
