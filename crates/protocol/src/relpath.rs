//! A path relative to a synced root, validated at construction.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a string is not an acceptable [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute; only paths relative to the synced root are accepted")]
    Absolute(String),
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("path {0:?} contains a `..` component")]
    DotDot(String),
    #[error("path {0:?} is not normalised (empty or `.` component, or trailing `/`)")]
    NotNormalised(String),
    #[error("path {path:?} is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { path: String, len: usize },
    #[error("path {path:?} has a component of {len} bytes; the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong { path: String, len: usize },
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

/// A normalised relative path: components joined by `/`, none of them empty,
/// `.` or `..`, no NUL, no leading `/`. It cannot name anything outside the
/// root it is resolved against (symlinks aside: see `cs-safe-fs`).
///
/// Ordering is component-wise, so that a directory sorts immediately before
/// all of its descendants (`a` < `a/b` < `a b`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` and wraps it.
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        validate(&s)?;
        Ok(RelPath(s))
    }

    /// Converts a filesystem path (relative, as produced by stripping a root prefix).
    pub fn from_path(p: &Path) -> Result<Self, PathError> {
        match p.to_str() {
            Some(s) => Self::new(s),
            None => Err(PathError::NotUtf8(p.to_string_lossy().into_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('/')
    }

    /// Number of components (depth; 1 for a top-level entry).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_string()))
    }

    /// Every proper ancestor, nearest first (`a/b/c` gives `a/b`, `a`).
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .char_indices()
            .rev()
            .filter(|&(_, c)| c == '/')
            .map(|(i, _)| RelPath(self.0[..i].to_string()))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::new(format!("{}/{}", self.0, name))
    }

    /// Same directory, other last component (used for sibling temp and conflict names).
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => p.join(name),
            None => RelPath::new(name),
        }
    }

    /// True if `self` is `other` or lies below it (component-wise).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0.as_bytes()[other.0.len()] == b'/')
    }
}

fn validate(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { path: truncated(s), len: s.len() });
    }
    if s.contains('\0') {
        return Err(PathError::Nul(s.replace('\0', "\\0")));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(s.to_string()));
    }
    for c in s.split('/') {
        match c {
            ".." => return Err(PathError::DotDot(s.to_string())),
            "" | "." => return Err(PathError::NotNormalised(s.to_string())),
            _ if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathError::ComponentTooLong { path: truncated(s), len: c.len() })
            }
            _ => {}
        }
    }
    Ok(())
}

fn truncated(s: &str) -> String {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> Ordering {
        self.components().cmp(other.components())
    }
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for RelPath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_paths() {
        for p in ["a", "a/b", "a b/c.d", ".hidden/x", "a/..b", "...", "é/ü"] {
            assert_eq!(RelPath::new(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn rejects_hostile_paths() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute("/etc/passwd".into())),
            ("..", PathError::DotDot("..".into())),
            ("a/../../b", PathError::DotDot("a/../../b".into())),
            ("a/./b", PathError::NotNormalised("a/./b".into())),
            ("a//b", PathError::NotNormalised("a//b".into())),
            ("a/", PathError::NotNormalised("a/".into())),
            ("a\0b", PathError::Nul("a\\0b".into())),
        ];
        for (input, want) in cases {
            assert_eq!(RelPath::new(input).unwrap_err(), want, "input {input:?}");
        }
        assert!(matches!(RelPath::new("x".repeat(300)), Err(PathError::ComponentTooLong { .. })));
        let long = vec!["abc"; 2000].join("/");
        assert!(matches!(RelPath::new(long), Err(PathError::TooLong { .. })));
    }

    #[test]
    fn deserialize_validates() {
        let bytes = rmp_serde::to_vec(&"../x").unwrap();
        let err = rmp_serde::from_slice::<RelPath>(&bytes).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let ok: RelPath = rmp_serde::from_slice(&rmp_serde::to_vec(&"a/b").unwrap()).unwrap();
        assert_eq!(ok.as_str(), "a/b");
    }

    #[test]
    fn ordering_keeps_directories_before_descendants() {
        let mut v: Vec<RelPath> = ["a b", "a/b", "a", "a/b/c", "b"]
            .iter()
            .map(|s| RelPath::new(*s).unwrap())
            .collect();
        v.sort();
        let got: Vec<&str> = v.iter().map(|p| p.as_str()).collect();
        assert_eq!(got, ["a", "a/b", "a/b/c", "a b", "b"]);
    }

    #[test]
    fn family_helpers() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(p.file_name(), "c");
        let anc: Vec<String> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a/b", "a"]);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&RelPath::new("a/b").unwrap()));
        assert_eq!(p.with_file_name("z").unwrap().as_str(), "a/b/z");
        assert_eq!(RelPath::new("top").unwrap().parent(), None);
    }
}
