//! Which paths are synced: the one question snapshots and the emulated union ask.

use std::os::unix::ffi::OsStrExt;

use cs_protocol::RelPath;

/// The part of the engine's path filter that the harness needs.
pub trait SyncFilter {
    /// Synced in both directions (neither local-only nor excluded).
    fn is_synced(&self, p: &RelPath, is_dir: bool) -> bool;
    /// Lives on C only; the project's copy is neither shown nor changed.
    fn is_local_only(&self, p: &RelPath, is_dir: bool) -> bool;
}

impl SyncFilter for cs_engine::PathFilter {
    fn is_synced(&self, p: &RelPath, is_dir: bool) -> bool {
        cs_engine::PathFilter::is_synced(self, p, is_dir)
    }
    fn is_local_only(&self, p: &RelPath, is_dir: bool) -> bool {
        cs_engine::PathFilter::is_local_only(self, p, is_dir)
    }
}

/// The spec's default patterns, hand-coded: local-only `/scratch/`, `/.local/`,
/// `/.cache/`; excluded `/.unionfs-fuse/`, `/.unionfs/`, `/.cs-actor/`,
/// `.csa-tmp-*`, `.fuse_hidden*`. Used by this crate's own unit tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpecDefaults;

impl SpecDefaults {
    fn top_dir_in(p: &RelPath, is_dir: bool, names: &[&str]) -> bool {
        let mut comps = p.components();
        let first = comps.next().unwrap_or_default();
        let below = comps.next().is_some();
        names.iter().any(|n| first == *n) && (below || is_dir)
    }
}

impl SyncFilter for SpecDefaults {
    fn is_synced(&self, p: &RelPath, is_dir: bool) -> bool {
        let excluded = Self::top_dir_in(p, is_dir, &[".unionfs-fuse", ".unionfs", ".cs-actor"])
            || p.components()
                .any(|c| c.as_bytes().starts_with(b".csa-tmp-") || c.as_bytes().starts_with(b".fuse_hidden"));
        !excluded && !self.is_local_only(p, is_dir)
    }
    fn is_local_only(&self, p: &RelPath, is_dir: bool) -> bool {
        Self::top_dir_in(p, is_dir, &["scratch", ".local", ".cache"])
    }
}

/// Everything synced, nothing local-only.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncAll;

impl SyncFilter for SyncAll {
    fn is_synced(&self, _: &RelPath, _: bool) -> bool {
        true
    }
    fn is_local_only(&self, _: &RelPath, _: bool) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rp;

    #[test]
    fn spec_defaults() {
        let f = SpecDefaults;
        assert!(f.is_local_only(&rp("scratch"), true));
        assert!(f.is_local_only(&rp("scratch/x"), false));
        assert!(!f.is_local_only(&rp("scratch"), false), "a file named scratch is synced");
        assert!(!f.is_synced(&rp("scratch/x"), false));
        assert!(!f.is_synced(&rp(".unionfs-fuse/a_HIDDEN~"), false));
        assert!(!f.is_synced(&rp("d/.csa-tmp-123"), false));
        assert!(f.is_synced(&rp("d/scratch/x"), false));
        assert!(f.is_synced(&rp("a.conflict-c1-20260101T000000Z"), false));
    }
}
