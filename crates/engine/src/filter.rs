//! Which paths a round touches: local-only paths (C keeps them, P never
//! sees them), excluded paths (never synced in either direction) and the
//! paths `.csignore` ignores (never synced; each side keeps its own).

use std::sync::Arc;

use cs_protocol::RelPath;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::{EngineError, IgnoreRules};

/// The local-only patterns by default: [`cs_protocol::LOCAL_ONLY_DEFAULTS`] as directories
/// anchored at the synced root (`/scratch/`).
pub fn default_local_only() -> Vec<String> {
    cs_protocol::LOCAL_ONLY_DEFAULTS.iter().map(|name| format!("/{name}/")).collect()
}
/// Excluded by default: the union's meta directories, cs-actor's own state and
/// staging area, the temporary files an atomic apply leaves for an instant,
/// and the `.fuse_hidden*` files FUSE keeps for deleted files still open.
pub const DEFAULT_EXCLUDED: &[&str] = &["/.unionfs-fuse/", "/.unionfs/", "/.cs-actor/", ".csa-tmp-*", ".fuse_hidden*"];

/// Gitignore-style pattern sets (a leading `/` anchors at the synced root, a
/// trailing `/` matches directories only; a match covers everything below).
#[derive(Clone)]
pub struct PathFilter {
    local_only: Gitignore,
    excluded: Gitignore,
    local_only_patterns: Vec<String>,
    excluded_patterns: Vec<String>,
    /// The `.csignore` rules of the round (empty unless set with
    /// [`PathFilter::with_ignore`]).
    ignore: Arc<IgnoreRules>,
}

impl std::fmt::Debug for PathFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathFilter")
            .field("local_only", &self.local_only_patterns)
            .field("excluded", &self.excluded_patterns)
            .field("ignore", &self.ignore.text())
            .finish()
    }
}

impl PathFilter {
    pub fn new(local_only: &[&str], excluded: &[&str]) -> Result<Self, EngineError> {
        Ok(PathFilter {
            local_only: build("local-only", local_only)?,
            excluded: build("excluded", excluded)?,
            local_only_patterns: local_only.iter().map(|s| s.to_string()).collect(),
            excluded_patterns: excluded.iter().map(|s| s.to_string()).collect(),
            ignore: Arc::default(),
        })
    }

    /// This filter with `rules` as its `.csignore` rules (replacing any).
    pub fn with_ignore(&self, rules: Arc<IgnoreRules>) -> PathFilter {
        PathFilter { ignore: rules, ..self.clone() }
    }

    pub fn ignore_rules(&self) -> &Arc<IgnoreRules> {
        &self.ignore
    }

    pub fn local_only_patterns(&self) -> &[String] {
        &self.local_only_patterns
    }

    pub fn excluded_patterns(&self) -> &[String] {
        &self.excluded_patterns
    }

    /// Lives only on the compute server.
    pub fn is_local_only(&self, p: &RelPath, is_dir: bool) -> bool {
        self.local_only.matched_path_or_any_parents(p.as_path(), is_dir).is_ignore()
    }

    /// Never synced in either direction.
    pub fn is_excluded(&self, p: &RelPath, is_dir: bool) -> bool {
        self.excluded.matched_path_or_any_parents(p.as_path(), is_dir).is_ignore()
    }

    /// Matched by the `.csignore` rules: never synced, each side keeps its own.
    pub fn is_ignored(&self, p: &RelPath, is_dir: bool) -> bool {
        self.ignore.is_ignored(p, is_dir)
    }

    /// Neither local-only nor excluded nor ignored: the round carries it.
    pub fn is_synced(&self, p: &RelPath, is_dir: bool) -> bool {
        !self.is_excluded(p, is_dir) && !self.is_local_only(p, is_dir) && !self.is_ignored(p, is_dir)
    }
}

impl Default for PathFilter {
    fn default() -> Self {
        let local = default_local_only();
        let local: Vec<&str> = local.iter().map(String::as_str).collect();
        PathFilter::new(&local, DEFAULT_EXCLUDED).expect("default patterns are valid")
    }
}

fn build(set: &'static str, patterns: &[&str]) -> Result<Gitignore, EngineError> {
    // The root is a placeholder: we only ever match relative paths.
    let mut b = GitignoreBuilder::new("");
    for pat in patterns {
        b.add_line(None, pat).map_err(|e| EngineError::Pattern {
            set,
            pattern: pat.to_string(),
            reason: e.to_string(),
        })?;
    }
    b.build().map_err(|e| EngineError::Pattern { set, pattern: patterns.join(" "), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn defaults() {
        let f = PathFilter::default();
        assert!(f.is_local_only(&p("scratch"), true));
        assert!(f.is_local_only(&p("scratch/x/y"), false));
        assert!(!f.is_local_only(&p("src/scratch/x"), false), "anchored at the root");
        assert!(f.is_excluded(&p(".unionfs-fuse/a_HIDDEN~"), false));
        assert!(f.is_excluded(&p("deep/dir/.csa-tmp-gpu1-3"), false));
        assert!(f.is_synced(&p("src/main.rs"), false));
        assert!(f.is_synced(&p(".localrc"), false));
        assert!(!f.is_synced(&p(".cache/pip/x"), false));
    }

    /// Patterns match names that are not UTF-8 by their bytes.
    #[test]
    fn byte_names() {
        let f = PathFilter::default();
        let b = |s: &[u8]| RelPath::new(s).unwrap();
        assert!(f.is_local_only(&b(b"scratch/caf\xe9"), false));
        assert!(f.is_excluded(&b(b"d\xff/.csa-tmp-\xe9"), false));
        assert!(f.is_synced(&b(b"caf\xe9/na\xefve.txt"), false));
        let f = PathFilter::new(&["*.o"], &["/caf\u{e9}/"]).unwrap();
        assert!(f.is_local_only(&b(b"d\xff/x.o"), false));
        assert!(!f.is_excluded(&b(b"caf\xe9/x"), false), "Latin-1 bytes are not the UTF-8 pattern");
        assert!(f.is_excluded(&b("café/x".as_bytes()), false));
    }

    #[test]
    fn bad_pattern_is_named() {
        let err = PathFilter::new(&["ok", "a{b,c"], &[]).unwrap_err().to_string();
        assert!(err.contains("a{b,c"), "{err}");
        assert!(err.contains("local-only"), "{err}");
    }
}
