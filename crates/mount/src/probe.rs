//! Filesystem checks that cannot hang the caller: each runs on its own thread and is
//! abandoned after a timeout. A check whose previous thread is still stuck (a hung FUSE
//! request) is not started again: it reports the hang at once, so stuck threads never pile up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which mount a path is on: the mount's id (the never-reused 64-bit one where the kernel
/// gives it, Linux 6.8+; else the mountinfo id, which a later mount may take again), its
/// device and the root's inode. Two different mounts at one place differ in it (the
/// unique id alone tells them apart; on older kernels a remount of the same filesystem
/// onto the same directory may look the same).
pub(crate) type MountIdentity = (u64, u64, u64);

/// `STATX_MNT_ID_UNIQUE` (Linux 6.8), which rustix does not name.
const STATX_MNT_ID_UNIQUE: u32 = 0x4000;

/// What a check of one directory found.
#[derive(Debug, Clone)]
pub(crate) enum PathHealth {
    /// It answered: how fast, (if asked) whether it lists at least one entry, and the
    /// identity of the mount it is on.
    Ok { latency: Duration, has_entries: Option<bool>, mount: Option<MountIdentity> },
    /// It failed with this error (ENOTCONN for a dead FUSE mount).
    Err { message: String },
    /// No answer within the timeout (or the previous check is still stuck).
    Timeout { message: String },
}

impl PathHealth {
    pub(crate) fn describe(&self) -> Option<String> {
        match self {
            PathHealth::Ok { .. } => None,
            PathHealth::Err { message, .. } | PathHealth::Timeout { message } => Some(message.clone()),
        }
    }
}

/// One kind of check (one path), with its "still stuck" flag.
#[derive(Debug, Default, Clone)]
pub(crate) struct Prober {
    stuck: Arc<AtomicBool>,
}

impl Prober {
    /// `stat(path)` and, with `list`, whether `read_dir(path)` yields an entry; within `timeout`.
    pub(crate) fn check_dir(&self, path: &Path, list: bool, timeout: Duration) -> PathHealth {
        if self.stuck.load(Ordering::SeqCst) {
            return PathHealth::Timeout {
                message: format!("{}: the previous check is still waiting for an answer", path.display()),
            };
        }
        self.stuck.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        let p: PathBuf = path.to_path_buf();
        let stuck = Arc::clone(&self.stuck);
        let spawned = std::thread::Builder::new().name("cs-mount-check".into()).spawn(move || {
            let t = Instant::now();
            let r = probe(&p, list);
            stuck.store(false, Ordering::SeqCst);
            let _ = tx.send((t.elapsed(), r));
        });
        if let Err(e) = spawned {
            self.stuck.store(false, Ordering::SeqCst);
            return PathHealth::Err { message: format!("cannot start a check thread: {e}") };
        }
        match rx.recv_timeout(timeout) {
            Ok((latency, Ok((has_entries, mount)))) => PathHealth::Ok { latency, has_entries, mount },
            Ok((_, Err(e))) => PathHealth::Err { message: format!("{}: {e}", path.display()) },
            Err(_) => PathHealth::Timeout { message: format!("{}: no answer within {timeout:?}", path.display()) },
        }
    }
}

fn probe(p: &Path, list: bool) -> std::io::Result<(Option<bool>, Option<MountIdentity>)> {
    let m = std::fs::metadata(p)?;
    if !m.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    let mount = mount_identity(p);
    if !list {
        return Ok((None, mount));
    }
    let mut rd = std::fs::read_dir(p)?;
    match rd.next() {
        None => Ok((Some(false), mount)),
        Some(Ok(_)) => Ok((Some(true), mount)),
        Some(Err(e)) => Err(e),
    }
}

/// The identity of the mount `p` is on (`None` if `statx` cannot say).
fn mount_identity(p: &Path) -> Option<MountIdentity> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let want = StatxFlags::BASIC_STATS | StatxFlags::MNT_ID | StatxFlags::from_bits_retain(STATX_MNT_ID_UNIQUE);
    let st = statx(CWD, p, AtFlags::empty(), want).ok()?;
    if st.stx_mask & (StatxFlags::MNT_ID.bits() | STATX_MNT_ID_UNIQUE) == 0 {
        return None;
    }
    let dev = (u64::from(st.stx_dev_major) << 32) | u64::from(st.stx_dev_minor);
    Some((st.stx_mnt_id, dev, st.stx_ino))
}
