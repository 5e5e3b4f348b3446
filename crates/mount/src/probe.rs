//! Filesystem checks that cannot hang the caller: each runs on its own thread and is
//! abandoned after a timeout. A check whose previous thread is still stuck (a hung FUSE
//! request) is not started again: it reports the hang at once, so stuck threads never pile up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a check of one directory found.
#[derive(Debug, Clone)]
pub(crate) enum PathHealth {
    /// It answered: how fast, and (if asked) whether it lists at least one entry.
    Ok { latency: Duration, has_entries: Option<bool> },
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
            Ok((latency, Ok(has_entries))) => PathHealth::Ok { latency, has_entries },
            Ok((_, Err(e))) => PathHealth::Err { message: format!("{}: {e}", path.display()) },
            Err(_) => PathHealth::Timeout { message: format!("{}: no answer within {timeout:?}", path.display()) },
        }
    }
}

fn probe(p: &Path, list: bool) -> std::io::Result<Option<bool>> {
    let m = std::fs::metadata(p)?;
    if !m.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    if !list {
        return Ok(None);
    }
    let mut rd = std::fs::read_dir(p)?;
    match rd.next() {
        None => Ok(Some(false)),
        Some(Ok(_)) => Ok(Some(true)),
        Some(Err(e)) => Err(e),
    }
}
