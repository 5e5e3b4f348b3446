//! The background fetch (`--hydrate`, `--prefetch PATTERN…`): the placeholders of the
//! current tree, smallest first and among equals the most recently changed, fetched in
//! batches while no open waits for a fill, so that a user who will read everything does
//! not wait at each first open.
//!
//! It yields to the user: before each batch it waits until no open waits (a batch is at
//! most the read-ahead's caps, so an open that comes meanwhile waits for that much at
//! worst, and its own fetch goes out beside it anyway). With a cache bound it stops at
//! 90 % of the bound: hydrating past it would only evict what it just fetched. A batch
//! that fails (the link down) is tried again after a pause, from a fresh walk.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cs_protocol::RelPath;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::{claim_placeholder, fill_batch, FillKind, Item, Shared};
use crate::error::{ReplicaError, Result};
use crate::want::{Want, MAX_LEN, XATTR};

pub(super) const WAITING: &str = "waiting";
const RUNNING: &str = "running";
const DONE: &str = "done";
const AT_BOUND: &str = "stopped at the cache bound";
const PAUSED: &str = "paused after a failed fetch";

/// After a batch that failed, before walking again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What to fetch in the background.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hydrate {
    /// The tree the union shows (`Tree::dir`).
    pub tree: PathBuf,
    /// `None`: every file (`--hydrate`). Else gitignore-style patterns, relative to the
    /// tree's root (`--prefetch`: `*.py`, `data/`, `/models/**/*.bin`): the files they match.
    pub only: Option<Vec<String>>,
}

impl Hydrate {
    /// The patterns as one matcher; a bad pattern is refused, naming it.
    pub(super) fn matcher(&self) -> Result<Option<Gitignore>> {
        let Some(patterns) = &self.only else { return Ok(None) };
        let mut b = GitignoreBuilder::new(&self.tree);
        for p in patterns {
            b.add_line(None, p).map_err(|e| ReplicaError::State {
                path: self.tree.clone(),
                detail: format!("prefetch pattern {p:?}: {e}"),
            })?;
        }
        let g = b
            .build()
            .map_err(|e| ReplicaError::State { path: self.tree.clone(), detail: format!("prefetch patterns: {e}") })?;
        Ok(Some(g))
    }
}

/// A placeholder to fetch.
struct Wanted {
    path: PathBuf,
    rel: RelPath,
    size: u64,
    mtime: (i64, i64),
}

/// A file P answered about this often without sending it is left to its first open: P refuses it or lost it (a deleted file stays a placeholder in the lower
/// layer, hidden by the round's deletion), and asking again would never end.
const GIVE_UP_AFTER: u8 = 3;

pub(super) fn run(sh: &Shared, plan: &Hydrate, only: Option<&Gitignore>) {
    let _own = sh.own_thread();
    let mut failures: HashMap<RelPath, u8> = HashMap::new();
    loop {
        let mut left = wanted(&plan.tree, only);
        left.retain(|w| failures.get(&w.rel).is_none_or(|n| *n < GIVE_UP_AFTER));
        sh.lock().stats.hydrate_given_up = failures.values().filter(|n| **n >= GIVE_UP_AFTER).count() as u64;
        // Smallest first (most files per byte), then the most recently changed.
        left.sort_by(|a, b| a.size.cmp(&b.size).then(b.mtime.cmp(&a.mtime)));
        let note = |state: &'static str, left: &[Wanted]| {
            let mut st = sh.lock();
            st.stats.hydrate = Some(state);
            st.stats.hydrate_left_files = left.len() as u64;
            st.stats.hydrate_left_bytes = left.iter().map(|w| w.size).sum();
        };
        if left.is_empty() {
            note(DONE, &left);
            tracing::info!("replica hydrated: nothing left to fetch");
            return;
        }
        note(RUNNING, &left);
        let mut failed = false;
        let mut claimed = false;
        let mut at = 0;
        while at < left.len() {
            if !wait_for_quiet(sh) {
                return;
            }
            if at_bound(sh) {
                note(AT_BOUND, &left[at..]);
                tracing::info!(left = left.len() - at, "replica hydration stops at the cache bound");
                return;
            }
            let (batch, next) = claim_batch(sh, &left, at);
            at = next;
            if batch.is_empty() {
                continue;
            }
            claimed = true;
            let deadline = Instant::now() + sh.cfg.fetch_timeout;
            let (lost, answered) = fill_batch(sh, batch, deadline, FillKind::Hydrate);
            if !answered {
                // No answer (the link, a timeout): no file's fault. Pause, then walk again.
                failed = true;
                break;
            }
            // P answered: what failed is the file's own doing (P refused or lost it).
            for rel in lost {
                *failures.entry(rel).or_default() += 1;
            }
            note(RUNNING, &left[at..]);
        }
        if !failed && claimed {
            continue; // walk again: what is left is what this pass could not claim
        }
        if !failed {
            // All left was in flight (opens being filled): look again in a moment.
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        note(PAUSED, &left[at..]);
        let until = Instant::now() + RETRY_AFTER;
        while Instant::now() < until {
            if sh.stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Until no open waits for a fill; false at `stop`.
fn wait_for_quiet(sh: &Shared) -> bool {
    loop {
        if sh.stop.load(Ordering::SeqCst) {
            return false;
        }
        let busy = {
            let st = sh.lock();
            !st.queue.is_empty() || st.inflight.values().any(|i| !i.waiters.is_empty())
        };
        if !busy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn at_bound(sh: &Shared) -> bool {
    let st = sh.lock();
    st.stats.cache_max_bytes.is_some_and(|max| st.stats.cache_bytes >= crate::cache::low_water(max))
}

/// From `left[at..]`, up to the read-ahead's caps of placeholders still wanted and not in
/// flight, each claimed (in flight, so that an open of it waits for this fetch); and where
/// the next batch starts. A file over the caps goes alone.
fn claim_batch(sh: &Shared, left: &[Wanted], mut at: usize) -> (Vec<Item>, usize) {
    let caps = sh.cfg.read_ahead;
    let mut batch = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; MAX_LEN];
    while at < left.len() {
        let w = &left[at];
        if !batch.is_empty() && (batch.len() >= caps.max_files.max(1) || total + w.size > caps.max_total_bytes) {
            break;
        }
        at += 1;
        // Still the placeholder walked (not filled meanwhile, not another file).
        if let Some((item, _)) = claim_placeholder(sh, w.path.clone(), &w.rel, |_| true, &mut buf) {
            total += w.size;
            batch.push(item);
        }
    }
    (batch, at)
}

/// Every placeholder of `tree` the patterns take (no symlink followed).
fn wanted(tree: &Path, only: Option<&Gitignore>) -> Vec<Wanted> {
    let mut out = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    let mut buf = vec![0u8; MAX_LEN];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            let rel = path.strip_prefix(tree).ok().map(|r| r.to_path_buf());
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            if let (Some(g), Some(r)) = (only, &rel) {
                if !g.matched_path_or_any_parents(r, false).is_ignore() {
                    continue;
                }
            }
            let Ok(n) = rustix::fs::lgetxattr(&path, XATTR, &mut buf[..]) else { continue };
            let Some(w) = Want::decode(&buf[..n]) else { continue };
            let Ok(md) = std::fs::symlink_metadata(&path) else { continue };
            out.push(Wanted { path, rel: w.path, size: md.len(), mtime: (md.mtime(), md.mtime_nsec()) });
        }
    }
    out
}
