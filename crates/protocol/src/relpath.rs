//! A path relative to a synced root, validated at construction.
//!
//! A path is bytes, as Linux names are: any name the kernel accepts (no NUL,
//! no `/` inside a component) is a valid component, UTF-8 or not. Text for
//! people (Display, errors, status, logs) escapes what is not printable UTF-8;
//! see [`Escaped`].

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a byte string is not an acceptable [`RelPath`]. The paths in it are
/// already escaped for display (see [`Escaped`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path \"{0}\" is absolute; only paths relative to the synced root are accepted")]
    Absolute(String),
    #[error("path \"{0}\" contains a NUL byte")]
    Nul(String),
    #[error("path \"{0}\" contains a `..` component")]
    DotDot(String),
    #[error("path \"{0}\" is not normalised (empty or `.` component, or trailing `/`)")]
    NotNormalised(String),
    #[error("path \"{path}\" is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong { path: String, len: usize },
    #[error("path \"{path}\" has a component of {len} bytes; the limit is {MAX_COMPONENT_LEN}")]
    ComponentTooLong { path: String, len: usize },
}

/// Bytes shown to people: UTF-8 text as is, except `\` (shown `\\`) and
/// control characters (`\n`, `\t`, `\0`, `\u{1b}`, …); every byte that is not
/// part of valid UTF-8 as `\xHH` (upper-case hex, as Rust's `{:?}` of an
/// `OsStr`). Unambiguous: different bytes never show the same.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    c if c.is_control() => write!(f, "{}", c.escape_debug())?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02X}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A normalised relative path: components joined by `/`, none of them empty,
/// `.` or `..`, no NUL, no leading `/`. It cannot name anything outside the
/// root it is resolved against (symlinks aside: see `cs-safe-fs`). The
/// components are bytes (Linux names), not necessarily UTF-8.
///
/// Ordering is component-wise, so that a directory sorts immediately before
/// all of its descendants (`a` < `a/b` < `a b`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validates `s` (text or bytes) and wraps it.
    pub fn new(s: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let s = s.into();
        validate(&s)?;
        Ok(RelPath(s))
    }

    /// Converts a filesystem path (relative, as produced by stripping a root prefix).
    pub fn from_path(p: &Path) -> Result<Self, PathError> {
        Self::new(p.as_os_str().as_bytes())
    }

    /// The path's bytes: what to compare, hash or match on.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as text, if it is UTF-8 (for display use `Display`, which
    /// escapes instead).
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    pub fn as_path(&self) -> &Path {
        Path::new(self.as_os_str())
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &OsStr> + Clone {
        self.0.split(|&b| b == b'/').map(OsStr::from_bytes)
    }

    /// Number of components (depth; 1 for a top-level entry).
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The last component.
    pub fn file_name(&self) -> &OsStr {
        OsStr::from_bytes(self.0.rsplit(|&b| b == b'/').next().unwrap_or(&self.0))
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0.iter().rposition(|&b| b == b'/').map(|i| RelPath(self.0[..i].to_vec()))
    }

    /// Every proper ancestor, nearest first (`a/b/c` gives `a/b`, `a`).
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0.iter().enumerate().rev().filter(|&(_, &b)| b == b'/').map(|(i, _)| RelPath(self.0[..i].to_vec()))
    }

    /// `self/name`, validated.
    pub fn join(&self, name: impl AsRef<OsStr>) -> Result<RelPath, PathError> {
        let name = name.as_ref().as_bytes();
        let mut s = Vec::with_capacity(self.0.len() + 1 + name.len());
        s.extend_from_slice(&self.0);
        s.push(b'/');
        s.extend_from_slice(name);
        RelPath::new(s)
    }

    /// Same directory, other last component (used for sibling temp and conflict names).
    pub fn with_file_name(&self, name: impl AsRef<OsStr>) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => p.join(name),
            None => RelPath::new(name.as_ref().as_bytes()),
        }
    }

    /// True if `self` is `other` or lies below it (component-wise).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len() && self.0.starts_with(&other.0) && self.0[other.0.len()] == b'/')
    }

    /// The path shown to people, escaped (same as `Display`).
    pub fn escaped(&self) -> Escaped<'_> {
        Escaped(&self.0)
    }
}

fn validate(s: &[u8]) -> Result<(), PathError> {
    let shown = || Escaped(s).to_string();
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { path: truncated(s), len: s.len() });
    }
    if s.contains(&0) {
        return Err(PathError::Nul(shown()));
    }
    if s[0] == b'/' {
        return Err(PathError::Absolute(shown()));
    }
    for c in s.split(|&b| b == b'/') {
        match c {
            b".." => return Err(PathError::DotDot(shown())),
            b"" | b"." => return Err(PathError::NotNormalised(shown())),
            _ if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathError::ComponentTooLong { path: truncated(s), len: c.len() })
            }
            _ => {}
        }
    }
    Ok(())
}

fn truncated(s: &[u8]) -> String {
    format!("{}…", Escaped(&s[..s.len().min(80)]))
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
        fmt::Debug::fmt(&self.escaped(), f)
    }
}

/// Escaped for people: see [`Escaped`]. Never parse it back into a path.
impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.escaped(), f)
    }
}

impl AsRef<Path> for RelPath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

/// MessagePack (the wire, the state files) carries the raw bytes as `bin`;
/// human-readable formats (JSON of `cs-actor status`) get the escaped text.
impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

/// Accepts `bin` (this version) and `str` (state files and peers of protocol
/// 1, which wrote paths as text), and validates either way.
impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PathVisitor;
        impl<'de> serde::de::Visitor<'de> for PathVisitor {
            type Value = RelPath;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relative path as bytes or a string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RelPath, E> {
                RelPath::new(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<RelPath, E> {
                RelPath::new(v).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RelPath, E> {
                RelPath::new(v).map_err(E::custom)
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<RelPath, E> {
                RelPath::new(v).map_err(E::custom)
            }
        }
        d.deserialize_byte_buf(PathVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn accepts_normal_paths() {
        for p in ["a", "a/b", "a b/c.d", ".hidden/x", "a/..b", "...", "é/ü"] {
            assert_eq!(RelPath::new(p).unwrap().as_bytes(), p.as_bytes());
        }
    }

    #[test]
    fn accepts_any_linux_name() {
        // Latin-1 "café.txt", a lone continuation byte, an overlong encoding,
        // control characters and a backslash: all names the kernel accepts.
        for p in [&b"caf\xe9.txt"[..], b"d\x80/x", b"\xc0\xaf", b"a\nb/\x1b[0m", b"back\\slash", b"\xff\xfe/\xe9"] {
            let got = RelPath::new(p).unwrap();
            assert_eq!(got.as_bytes(), p);
            assert_eq!(got.as_os_str().as_bytes(), p);
            assert_eq!(RelPath::from_path(got.as_path()).unwrap(), got);
        }
        let p = RelPath::new(&b"d\xe9/f\xff"[..]).unwrap();
        assert_eq!(p.file_name().as_bytes(), b"f\xff");
        assert_eq!(p.parent().unwrap().as_bytes(), b"d\xe9");
        assert_eq!(p.to_str(), None);
        assert_eq!(p.with_file_name(OsStr::from_bytes(b"g\xe9")).unwrap().as_bytes(), b"d\xe9/g\xe9");
        // Component limits count bytes: 255 two-byte-invalid sequences is 255 bytes.
        assert!(RelPath::new(vec![0xe9; MAX_COMPONENT_LEN]).is_ok());
        assert!(matches!(RelPath::new(vec![0xe9; MAX_COMPONENT_LEN + 1]), Err(PathError::ComponentTooLong { .. })));
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
        // The same rules hold for names that are not UTF-8.
        assert_eq!(RelPath::new(&b"\xe9/../x"[..]).unwrap_err(), PathError::DotDot("\\xE9/../x".into()));
        assert_eq!(RelPath::new(&b"/\xe9"[..]).unwrap_err(), PathError::Absolute("/\\xE9".into()));
        assert_eq!(RelPath::new(&b"\xe9\0"[..]).unwrap_err(), PathError::Nul("\\xE9\\0".into()));
        assert_eq!(RelPath::new(&b"\xe9//x"[..]).unwrap_err(), PathError::NotNormalised("\\xE9//x".into()));
        let long = [&b"\xe9"[..]; 4097].concat();
        match RelPath::new(long) {
            Err(PathError::TooLong { path, len: 4097 }) => assert!(path.starts_with("\\xE9\\xE9"), "{path}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn display_escapes_what_is_not_printable_utf8() {
        let cases: [(&[u8], &str); 6] = [
            (b"caf\xc3\xa9.txt", "café.txt"),
            (b"caf\xe9.txt", "caf\\xE9.txt"),
            (b"d/\xff\xfe", "d/\\xFF\\xFE"),
            (b"a\nb\tc\x1b", "a\\nb\\tc\\u{1b}"),
            (b"back\\slash", "back\\\\slash"),
            (b"caf\\xE9.txt", "caf\\\\xE9.txt"),
        ];
        for (bytes, shown) in cases {
            let p = RelPath::new(bytes).unwrap();
            assert_eq!(p.to_string(), shown);
            assert_eq!(format!("{p:?}"), format!("\"{shown}\""));
        }
        // Unambiguous: the byte 0xE9 and the four characters `\xE9` differ.
        assert_ne!(rp("caf\\xE9").to_string(), RelPath::new(&b"caf\xe9"[..]).unwrap().to_string());
        // JSON (human-readable) gets the escaped text.
        let p = RelPath::new(&b"caf\xe9.txt"[..]).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#""caf\\xE9.txt""#);
    }

    #[test]
    fn deserialize_validates() {
        let bytes = rmp_serde::to_vec(&"../x").unwrap();
        let err = rmp_serde::from_slice::<RelPath>(&bytes).unwrap_err();
        assert!(err.to_string().contains(".."), "{err}");
        let ok: RelPath = rmp_serde::from_slice(&rmp_serde::to_vec(&"a/b").unwrap()).unwrap();
        assert_eq!(ok, rp("a/b"));
        // The same check for the bytes form.
        let bin = rmp_serde::to_vec(&serde_bytes::Bytes::new(b"\xe9/../x")).unwrap();
        let err = rmp_serde::from_slice::<RelPath>(&bin).unwrap_err();
        assert!(err.to_string().contains("`..`"), "{err}");
        let bin = rmp_serde::to_vec(&serde_bytes::Bytes::new(b"/etc\xe9")).unwrap();
        assert!(rmp_serde::from_slice::<RelPath>(&bin).is_err());
    }

    #[test]
    fn msgpack_carries_bytes_and_still_reads_the_str_of_protocol_1() {
        let latin1 = RelPath::new(&b"d/caf\xe9.txt"[..]).unwrap();
        let enc = rmp_serde::to_vec(&latin1).unwrap();
        assert_eq!(enc[0], 0xc4, "a bin8 marker, not a str");
        assert_eq!(rmp_serde::from_slice::<RelPath>(&enc).unwrap(), latin1);
        // A state file written by the previous version: paths are msgpack str,
        // inside a named struct and a map, as manifest and journal are.
        #[derive(Serialize)]
        struct OldState<'a> {
            paths: Vec<&'a str>,
            by_path: std::collections::BTreeMap<&'a str, u64>,
        }
        #[derive(Deserialize, Debug, PartialEq)]
        struct NewState {
            paths: Vec<RelPath>,
            by_path: std::collections::BTreeMap<RelPath, u64>,
        }
        let old = OldState { paths: vec!["a/b", "é/ü"], by_path: [("x/y", 7)].into_iter().collect() };
        let file = rmp_serde::to_vec_named(&old).unwrap();
        let got: NewState = rmp_serde::from_slice(&file).unwrap();
        assert_eq!(got.paths, [rp("a/b"), rp("é/ü")]);
        assert_eq!(got.by_path.get(&rp("x/y")), Some(&7));
        // And what this version writes reads back, with a name that is not UTF-8.
        #[derive(Serialize)]
        struct NewOut<'a> {
            paths: &'a [RelPath],
            by_path: std::collections::BTreeMap<RelPath, u64>,
        }
        let paths = [latin1.clone(), rp("a")];
        let file =
            rmp_serde::to_vec_named(&NewOut { paths: &paths, by_path: [(latin1.clone(), 1)].into_iter().collect() })
                .unwrap();
        let got: NewState = rmp_serde::from_slice(&file).unwrap();
        assert_eq!(got.paths, paths);
        assert_eq!(got.by_path.get(&latin1), Some(&1));
    }

    #[test]
    fn ordering_keeps_directories_before_descendants() {
        let mut v: Vec<RelPath> = ["a b", "a/b", "a", "a/b/c", "b"].iter().map(|s| RelPath::new(*s).unwrap()).collect();
        v.push(RelPath::new(&b"a/\xe9"[..]).unwrap());
        v.sort();
        let got: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(got, ["a", "a/b", "a/b/c", "a/\\xE9", "a b", "b"]);
    }

    #[test]
    fn family_helpers() {
        let p = RelPath::new("a/b/c").unwrap();
        assert_eq!(p.parent().unwrap(), rp("a/b"));
        assert_eq!(p.file_name(), "c");
        let anc: Vec<String> = p.ancestors().map(|a| a.to_string()).collect();
        assert_eq!(anc, ["a/b", "a"]);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc").unwrap().starts_with(&RelPath::new("a/b").unwrap()));
        assert_eq!(p.with_file_name("z").unwrap(), rp("a/b/z"));
        assert_eq!(RelPath::new("top").unwrap().parent(), None);
        let q = RelPath::new(&b"\xe9/\xe9x/y"[..]).unwrap();
        let anc: Vec<Vec<u8>> = q.ancestors().map(|a| a.as_bytes().to_vec()).collect();
        assert_eq!(anc, [&b"\xe9/\xe9x"[..], b"\xe9"]);
        assert!(q.starts_with(&RelPath::new(&b"\xe9"[..]).unwrap()));
        assert!(!q.starts_with(&RelPath::new(&b"\xe9/\xe9"[..]).unwrap()));
    }
}
