//! Target `relpath`: [`RelPath::new`] and RelPath's MessagePack decoding.

use cs_protocol::{RelPath, MAX_COMPONENT_LEN, MAX_PATH_LEN};

/// An independent statement of the path rule (docs/protocol.md): what
/// [`RelPath::new`] must accept, and nothing else. Written component by
/// component rather than mirroring `cs_protocol`'s code, so a slip in one is
/// caught by the other.
pub fn reference_valid(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_PATH_LEN || s.as_bytes()[0] == b'/' {
        return false;
    }
    let mut comps = 0;
    for comp in s.split('/') {
        comps += 1;
        let bad = comp.is_empty()
            || comp == "."
            || comp == ".."
            || comp.len() > MAX_COMPONENT_LEN
            || comp.bytes().any(|b| b == 0);
        if bad {
            return false;
        }
    }
    comps >= 1
}

/// Asserts everything an accepted path promises: the rule holds, the text
/// is kept as given, and every helper stays inside the rule.
pub fn check_accepted(p: &RelPath, input: Option<&str>) {
    let s = p.as_str();
    assert!(
        reference_valid(s),
        "accepted a path the rule refuses: {s:?}"
    );
    assert!(
        !s.is_empty() && !s.starts_with('/') && !s.contains('\0'),
        "{s:?}"
    );
    for c in s.split('/') {
        assert!(
            !matches!(c, "" | "." | ".."),
            "accepted component {c:?} in {s:?}"
        );
    }
    if let Some(input) = input {
        assert_eq!(s, input, "RelPath::new changed its input");
    }
    // Display, Debug, as_path.
    assert_eq!(p.to_string(), s);
    let _ = format!("{p:?}");
    assert_eq!(p.as_path().to_str(), Some(s));
    assert_eq!(RelPath::from_path(p.as_path()).as_ref(), Ok(p));
    // serde through MessagePack (as the wire carries it) is the identity.
    let bytes = rmp_serde::to_vec(p).expect("encoding a RelPath");
    let back: RelPath = rmp_serde::from_slice(&bytes).expect("decoding an encoded RelPath");
    assert_eq!(&back, p);
    let named = rmp_serde::to_vec_named(&vec![p.clone()]).expect("encoding");
    assert_eq!(
        rmp_serde::from_slice::<Vec<RelPath>>(&named).expect("decoding"),
        vec![p.clone()]
    );
    // Family helpers only ever produce valid paths, consistent with each other.
    let comps: Vec<&str> = p.components().collect();
    assert_eq!(p.depth(), comps.len());
    assert_eq!(
        p.file_name(),
        *comps.last().expect("at least one component")
    );
    match p.parent() {
        None => assert_eq!(comps.len(), 1),
        Some(parent) => {
            assert!(
                reference_valid(parent.as_str()),
                "parent {parent:?} of {s:?}"
            );
            assert!(p.starts_with(&parent) && !parent.starts_with(p));
            assert!(parent < *p, "a directory sorts before its descendants");
            assert_eq!(parent.depth() + 1, p.depth());
            assert_eq!(parent.join(p.file_name()).as_ref(), Ok(p));
        }
    }
    let ancestors: Vec<RelPath> = p.ancestors().collect();
    assert_eq!(ancestors.len(), comps.len() - 1);
    for a in &ancestors {
        assert!(
            reference_valid(a.as_str()) && p.starts_with(a),
            "ancestor {a:?} of {s:?}"
        );
    }
    assert_eq!(p.with_file_name(p.file_name()).as_ref(), Ok(p));
    assert!(p.starts_with(p));
}

/// Checks one candidate string: accepted iff the rule says so, and an
/// accepted path keeps its promises; the same through MessagePack.
pub fn check_str(s: &str) {
    let got = RelPath::new(s);
    assert_eq!(
        got.is_ok(),
        reference_valid(s),
        "RelPath::new({s:?}) = {got:?} disagrees with the path rule"
    );
    match &got {
        Ok(p) => check_accepted(p, Some(s)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    // The same string as it would arrive on the wire.
    let wire = rmp_serde::to_vec(s).expect("encoding a str");
    let decoded = rmp_serde::from_slice::<RelPath>(&wire);
    assert_eq!(
        decoded.is_ok(),
        got.is_ok(),
        "decode and RelPath::new disagree on {s:?}"
    );
    if let Ok(p) = decoded {
        check_accepted(&p, Some(s));
    }
    // join/with_file_name validate too: never yield an invalid path.
    if let Ok(base) = RelPath::new("base/dir") {
        if let Ok(j) = base.join(s) {
            check_accepted(&j, None);
        }
        if let Ok(w) = base.with_file_name(s) {
            check_accepted(&w, None);
        }
    }
}

/// The `relpath` target: `data` as a string (lossily, and as is when it is
/// UTF-8), and `data` as MessagePack encoding a RelPath or a list of them.
/// Panics if a path breaking the rule is accepted, a valid one refused,
/// or an accepted path's text, Display or serde round trip is not the
/// identity.
pub fn fuzz_relpath(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        check_str(s);
    }
    let lossy = String::from_utf8_lossy(data);
    check_str(&lossy);
    // A non-UTF-8 path from the filesystem is refused, never mangled.
    if std::str::from_utf8(data).is_err() {
        use std::os::unix::ffi::OsStrExt;
        let os = std::ffi::OsStr::from_bytes(data);
        assert!(RelPath::from_path(std::path::Path::new(os)).is_err());
    }
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
