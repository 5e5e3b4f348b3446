//! Target `relpath`: [`RelPath::new`] and RelPath's MessagePack decoding.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use cs_protocol::{RelPath, MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// An independent statement of the path rule (docs/protocol.md): what
/// [`RelPath::new`] must accept, and nothing else. Written component by
/// component rather than mirroring `cs_protocol`'s code, so a slip in one is
/// caught by the other. A path is bytes: any Linux name, UTF-8 or not.
pub fn reference_valid(s: &[u8]) -> bool {
    if s.is_empty() || s.len() > MAX_PATH_LEN || s[0] == b'/' {
        return false;
    }
    let mut comps = 0;
    for comp in s.split(|&b| b == b'/') {
        comps += 1;
        let bad =
            comp.is_empty() || comp == b"." || comp == b".." || comp.len() > MAX_COMPONENT_LEN || comp.contains(&0);
        if bad {
            return false;
        }
    }
    comps >= 1
}

/// Asserts everything an accepted path promises: the rule holds, the bytes
/// are kept as given, and every helper stays inside the rule.
pub fn check_accepted(p: &RelPath, input: Option<&[u8]>) {
    let s = p.as_bytes();
    assert!(reference_valid(s), "accepted a path the rule refuses: {p:?}");
    assert!(!s.is_empty() && s[0] != b'/' && !s.contains(&0), "{p:?}");
    for c in s.split(|&b| b == b'/') {
        assert!(!matches!(c, b"" | b"." | b".."), "accepted component {:?} in {p:?}", OsStr::from_bytes(c));
    }
    if let Some(input) = input {
        assert_eq!(s, input, "RelPath::new changed its input");
    }
    // Display escapes: printable, one line, and it is the text itself for
    // plain UTF-8 names (no backslash, no control character).
    let shown = p.to_string();
    assert!(!shown.chars().any(char::is_control), "Display shows a control character: {shown:?}");
    match std::str::from_utf8(s) {
        Ok(text) if !text.contains('\\') && !text.chars().any(char::is_control) => assert_eq!(shown, text),
        _ => assert_ne!(shown.as_bytes(), s, "bytes needing escapes shown raw: {shown:?}"),
    }
    assert_eq!(format!("{p:?}"), format!("\"{shown}\""));
    // as_path, as_os_str, to_str.
    assert_eq!(p.as_path().as_os_str().as_bytes(), s);
    assert_eq!(p.as_os_str().as_bytes(), s);
    assert_eq!(p.to_str(), std::str::from_utf8(s).ok());
    assert_eq!(RelPath::from_path(p.as_path()).as_ref(), Ok(p));
    // serde through MessagePack (as the wire carries it) is the identity.
    let bytes = rmp_serde::to_vec(p).expect("encoding a RelPath");
    let back: RelPath = rmp_serde::from_slice(&bytes).expect("decoding an encoded RelPath");
    assert_eq!(&back, p);
    let named = rmp_serde::to_vec_named(&vec![p.clone()]).expect("encoding");
    assert_eq!(rmp_serde::from_slice::<Vec<RelPath>>(&named).expect("decoding"), vec![p.clone()]);
    // Family helpers only ever produce valid paths, consistent with each other.
    let comps: Vec<&OsStr> = p.components().collect();
    assert_eq!(p.depth(), comps.len());
    assert_eq!(p.file_name(), *comps.last().expect("at least one component"));
    match p.parent() {
        None => assert_eq!(comps.len(), 1),
        Some(parent) => {
            assert!(reference_valid(parent.as_bytes()), "parent {parent:?} of {p:?}");
            assert!(p.starts_with(&parent) && !parent.starts_with(p));
            assert!(parent < *p, "a directory sorts before its descendants");
            assert_eq!(parent.depth() + 1, p.depth());
            assert_eq!(parent.join(p.file_name()).as_ref(), Ok(p));
        }
    }
    let ancestors: Vec<RelPath> = p.ancestors().collect();
    assert_eq!(ancestors.len(), comps.len() - 1);
    for a in &ancestors {
        assert!(reference_valid(a.as_bytes()) && p.starts_with(a), "ancestor {a:?} of {p:?}");
    }
    assert_eq!(p.with_file_name(p.file_name()).as_ref(), Ok(p));
    assert!(p.starts_with(p));
}

/// Checks one candidate: accepted iff the rule says so, and an accepted
/// path keeps its promises; the same through MessagePack, as a `bin`
/// (this protocol) and, when it is UTF-8, as a `str` (protocol 1 and the
/// state files it wrote).
pub fn check_bytes(s: &[u8]) {
    let got = RelPath::new(s);
    assert_eq!(
        got.is_ok(),
        reference_valid(s),
        "RelPath::new({:?}) = {got:?} disagrees with the path rule",
        OsStr::from_bytes(s)
    );
    match &got {
        Ok(p) => check_accepted(p, Some(s)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The same bytes as they would arrive on the wire.
    let mut wires = vec![rmp_serde::to_vec(&serde_bytes::Bytes::new(s)).expect("encoding bytes")];
    if let Ok(text) = std::str::from_utf8(s) {
        wires.push(rmp_serde::to_vec(text).expect("encoding a str"));
    }
    for wire in wires {
        let decoded = rmp_serde::from_slice::<RelPath>(&wire);
        assert_eq!(decoded.is_ok(), got.is_ok(), "decode and RelPath::new disagree on {:?}", OsStr::from_bytes(s));
        if let Ok(p) = decoded {
            check_accepted(&p, Some(s));
        }
    }
    // join/with_file_name validate too: never yield an invalid path.
    if let Ok(base) = RelPath::new("base/dir") {
        if let Ok(j) = base.join(OsStr::from_bytes(s)) {
            check_accepted(&j, None);
        }
        if let Ok(w) = base.with_file_name(OsStr::from_bytes(s)) {
            check_accepted(&w, None);
        }
    }
}

/// The `relpath` target: `data` as a path (bytes, as Linux names are),
/// `data` lossily made UTF-8, and `data` as MessagePack encoding a RelPath
/// or a list of them. Panics if a path breaking the rule is accepted, a
/// valid one refused, or an accepted path's bytes or serde round trip is
/// not the identity, or its Display is not escaped.
pub fn fuzz_relpath(data: &[u8]) {
    check_bytes(data);
    let lossy = String::from_utf8_lossy(data);
    check_bytes(lossy.as_bytes());
    // A path from the filesystem is taken as its bytes, never mangled.
    let os = OsStr::from_bytes(data);
    assert_eq!(RelPath::from_path(std::path::Path::new(os)).ok(), RelPath::new(data).ok());
    // Raw MessagePack from the network.
    if let Ok(p) = rmp_serde::from_slice::<RelPath>(data) {
        check_accepted(&p, None);
    }
    if let Ok(list) = rmp_serde::from_slice::<Vec<RelPath>>(data) {
        for p in &list {
            check_accepted(p, None);
        }
    }
    if let Ok(list) = rmp_serde::from_slice::<Vec<(RelPath, String)>>(data) {
        for (p, _) in &list {
            check_accepted(p, None);
        }
    }
}
