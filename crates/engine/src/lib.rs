//! The sync round of cs-actor as plain library code: no actors, no sockets.
//!
//! [`ComputeSide`] owns the compute server's upper layer and manifest;
//! [`ProjectSide`] owns the project's home, its change journal and one index
//! per client. Each step of a round is a method on the side that performs it;
//! the services chain them over a websocket in the order of `cs_wire::Step`
//! (`cs_compute::round`); [`driver::run_round`] chains them in one process for
//! this crate's own tests. See docs/protocol.md for
//! the contract and docs/architecture.md for the map.

pub mod busy;
pub mod compute;
pub mod driver;
mod error;
mod filter;
mod ignore_rules;
mod lookahead;
pub mod progress;
pub mod project;
pub mod sig;
mod state;

pub use busy::{BusyFile, BusyPolicy, DEFAULT_SNAPSHOT_AFTER, DEFAULT_SNAPSHOT_MAX_BYTES};
pub use compute::{
    adopt_snapshot_cursor, committed_cursor, ApplyReport, ComputeConfig, ComputeRound, ComputeSide, OwnDirs, UnionKind,
};
pub use cs_safe_fs::Owner;
pub use error::EngineError;
pub use filter::{default_local_only, PathFilter, DEFAULT_EXCLUDED};
pub use ignore_rules::{IgnoreError, IgnoreRules, RuleMatch, IGNORE_FILE, IGNORE_FILE_MAX};
pub use progress::{Progress, ProgressSnapshot};
pub use project::{FollowNews, ProjectConfig, ProjectRound, ProjectSide, WriteReport, DEFAULT_FULL_RESCAN_EVERY};

use cs_protocol::ClientId;
pub use cs_protocol::PullPolicy;
pub use cs_union::Layout as WhiteoutLayout;

/// zstd level of the tar streams unless configured: fast, and still a good
/// ratio on source trees.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The pull policy unless configured (docs/protocol.md, steps 2 and 4; why
/// this default: docs/operations.md, "Pull policy"): every change P makes
/// reaches the merged view when the round commits, files up to 64 MiB
/// through the round; larger ones through the lower, as before.
pub const DEFAULT_PULL: PullPolicy = PullPolicy::Changed { max_file_size: Some(DEFAULT_PULL_MAX_FILE_SIZE) };

/// Default per-file cap of [`PullPolicy::Changed`]: 64 MiB.
pub const DEFAULT_PULL_MAX_FILE_SIZE: u64 = 64 << 20;

/// Name of the temporary file an atomic apply writes beside its target. It
/// matches the excluded pattern `.csa-tmp-*`, so no scan or round ever
/// picks one up.
pub(crate) fn temp_name(client: &ClientId, seq: u64) -> String {
    format!("{TEMP_PREFIX}{client}-{}-{seq}", std::process::id())
}

/// How every [`temp_name`] begins.
pub(crate) const TEMP_PREFIX: &str = ".csa-tmp-";

/// Whether `name` is a [`temp_name`] of `client` made by this process.
pub(crate) fn is_temp_of_this_process(name: &[u8], client: &ClientId) -> bool {
    let ours = format!("{TEMP_PREFIX}{client}-{}-", std::process::id());
    name.strip_prefix(ours.as_bytes()).is_some_and(|seq| !seq.is_empty() && seq.iter().all(u8::is_ascii_digit))
}

/// Removes the temporary files a previous process of ours left under `root`
/// (killed in the middle of an apply): they are excluded from syncing, but
/// the union would still show them to the user. Files of this process (the
/// pid in the name) are in flight and stay. Returns how many were removed.
/// `via` is where they are removed: `root` itself, or the merged view of an
/// overlay whose upper layer `root` is (changed only through it).
pub(crate) fn sweep_stale_temps(root: &std::path::Path, via: &std::path::Path) -> usize {
    let me = std::process::id().to_string();
    let mut removed = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for ent in rd.flatten() {
            let Ok(ft) = ent.file_type() else { continue };
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                dirs.push(ent.path());
            } else if let Some(rest) = name.strip_prefix(TEMP_PREFIX) {
                // .csa-tmp-<client>-<pid>-<seq>; the client id may hold dashes.
                let pid = rest.rsplit('-').nth(1);
                let path = ent.path();
                let target = path.strip_prefix(root).map(|rel| via.join(rel)).unwrap_or(path);
                if pid.is_some_and(|pid| pid != me) && std::fs::remove_file(target).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(root = %root.display(), removed, "removed temporary files left by an interrupted apply");
    }
    removed
}

/// The setuid and setgid bits: never applied from a tar stream, on either
/// side. A file may be setuid where its owner made it so; its synced copies
/// are not (they belong to another account on another machine).
pub const SETID_BITS: u32 = 0o6000;

/// `h` as it is applied: without [`SETID_BITS`].
pub(crate) fn without_setid(h: &cs_tarstream::EntryHeader) -> std::borrow::Cow<'_, cs_tarstream::EntryHeader> {
    if h.mode & SETID_BITS == 0 {
        return std::borrow::Cow::Borrowed(h);
    }
    let mut h = h.clone();
    h.mode &= !SETID_BITS;
    std::borrow::Cow::Owned(h)
}

/// `NAME.conflict-<client>-`: a conflict copy's name is this plus a UTC time.
pub fn conflict_prefix(name: &str, client: &ClientId) -> String {
    format!("{name}.conflict-{client}-")
}

/// A random-enough 64-bit id (round ids, journal epochs): unique, not secret.
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// This machine's wall clock, in ms since the epoch: only ever compared
/// with itself (never with the other side's clock).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stale_temps_of_other_processes_go_ours_stay() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let ours = format!(".csa-tmp-gpu-1-{}-3", std::process::id());
        for name in ["a/b/.csa-tmp-gpu-1-999999999-0", "a/.csa-tmp-x-1-2", &ours, "a/b/keep.txt", ".csa-tmp-odd"] {
            std::fs::write(t.path().join(name), b"x").unwrap();
        }
        assert_eq!(super::sweep_stale_temps(t.path(), t.path()), 2);
        assert!(t.path().join(&ours).exists());
        assert!(t.path().join("a/b/keep.txt").exists());
        assert!(!t.path().join("a/b/.csa-tmp-gpu-1-999999999-0").exists());
        assert!(t.path().join(".csa-tmp-odd").exists(), "not our name format: left alone");
    }

    #[test]
    fn a_temporary_of_this_process_is_told_from_others() {
        let client = cs_protocol::ClientId::new("gpu-1").unwrap();
        let ours = super::temp_name(&client, 7);
        assert!(super::is_temp_of_this_process(ours.as_bytes(), &client));
        let other_client = cs_protocol::ClientId::new("gpu").unwrap();
        assert!(!super::is_temp_of_this_process(ours.as_bytes(), &other_client));
        for name in
            [".csa-tmp-gpu-1-999999999-7".to_string(), format!("{ours}x"), format!("{ours}/"), ".csa-tmp-".into()]
        {
            assert!(!super::is_temp_of_this_process(name.as_bytes(), &client), "{name}");
        }
    }
}
