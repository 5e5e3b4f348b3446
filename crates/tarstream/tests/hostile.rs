//! Hostile and broken streams are refused with the specific error, without
//! panicking, without unbounded allocation, and without visiting the refused
//! entry.

mod common;

use std::io::{Read, Write};
use std::time::Instant;

use common::*;
use cs_tarstream::{unpack, Limits, PathError, TarError};

/// A valid first entry, so each test also shows that refusal happens at the
/// bad entry and not before.
fn ok_first() -> Raw {
    Raw::new().entry(b'0', "ok", 2, "").data(b"ok")
}

fn expect_refused(raw: &Raw) -> TarError {
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"], "the refused entry must not be visited");
    res.unwrap_err()
}

#[test]
fn sanity_hand_made_stream_is_accepted() {
    let raw = ok_first().entry(b'5', "dir/", 0, "").entry(b'2', "ln", 0, "/abs/target").end();
    let got = unpack_all(&raw.zstd(), &Limits::default()).unwrap();
    let names: Vec<String> = got.iter().map(|(h, _)| h.path.to_string()).collect();
    assert_eq!(names, ["ok", "dir", "ln"]);
    assert_eq!(got[0].1, b"ok");
    assert_eq!(got[2].0.link_target.as_deref(), Some(std::ffi::OsStr::new("/abs/target")));
    assert_eq!(got[0].0.mtime.sec, 0o14530000000);
}

#[test]
fn path_traversal_and_absolute_paths_are_refused() {
    type Check = fn(&PathError) -> bool;
    let cases: Vec<(&str, Check)> = vec![
        ("../x", |e| matches!(e, PathError::DotDot(_))),
        ("a/../../x", |e| matches!(e, PathError::DotDot(_))),
        ("..", |e| matches!(e, PathError::DotDot(_))),
        ("/etc/passwd", |e| matches!(e, PathError::Absolute(_))),
        ("a//b", |e| matches!(e, PathError::NotNormalised(_))),
        ("./a", |e| matches!(e, PathError::NotNormalised(_))),
    ];
    for (name, want) in cases {
        for typeflag in [b'0', b'5', b'2'] {
            let raw = ok_first().entry(typeflag, name, 0, "t").end();
            match expect_refused(&raw) {
                TarError::BadPath { index: 1, raw, source } => {
                    assert_eq!(raw, name);
                    assert!(want(&source), "{name}: {source:?}");
                }
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn directory_gets_only_one_slash_stripped() {
    let raw = ok_first().entry(b'5', "a//", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::NotNormalised(_), .. }));
    let raw = ok_first().entry(b'0', "file/", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::NotNormalised(_), .. }));
    let raw = ok_first().entry(b'5', "/", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { .. }));
}

#[test]
fn paths_via_extensions_are_validated() {
    let raw = ok_first().pax(b'x', &[("path", b"../../etc/cron.d/x")]).entry(b'0', "innocent", 0, "").end();
    assert!(matches!(
        expect_refused(&raw),
        TarError::BadPath { source: PathError::DotDot(_), raw, .. } if raw == "../../etc/cron.d/x"
    ));
    let raw = ok_first().pax(b'x', &[("path", b"a\0b")]).entry(b'0', "innocent", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::Nul(_), .. }));
    let raw = ok_first().entry(b'L', "././@LongLink", 4, "").data(b"a\0b\0").entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::Nul(_), .. }));
    let raw = ok_first().entry(b'L', "././@LongLink", 6, "").data(b"/etc\0\0").entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::Absolute(_), .. }));
}

/// Names that are not UTF-8 are accepted (Linux names are bytes), with or
/// without `hdrcharset=BINARY`, but every other path rule still holds for
/// them, and a character set we cannot take as bytes is refused.
#[test]
fn byte_paths_are_accepted_and_still_validated() {
    for records in [
        vec![("path", &b"\xff\xfe/caf\xe9"[..])],
        vec![("hdrcharset", &b"BINARY"[..]), ("path", b"\xff\xfe/caf\xe9")],
        vec![("hdrcharset", &b"ISO-IR 10646 2000 UTF-8"[..]), ("path", b"\xff\xfe/caf\xe9")],
    ] {
        let raw = ok_first().pax(b'x', &records).entry(b'0', "x", 0, "").end();
        let got = unpack_all(&raw.zstd(), &Limits::default()).unwrap();
        assert_eq!(got[1].0.path.as_bytes(), b"\xff\xfe/caf\xe9");
    }
    type Check = fn(&PathError) -> bool;
    let cases: Vec<(&[u8], &str, Check)> = vec![
        (b"\xe9/../../x", "\\xE9/../../x", |e| matches!(e, PathError::DotDot(_))),
        (b"/\xe9", "/\\xE9", |e| matches!(e, PathError::Absolute(_))),
        (b"\xe9\0x", "\\xE9\\0x", |e| matches!(e, PathError::Nul(_))),
        (b"\xe9//x", "\\xE9//x", |e| matches!(e, PathError::NotNormalised(_))),
    ];
    for (path, shown, want) in cases {
        let raw = ok_first().pax(b'x', &[("hdrcharset", b"BINARY"), ("path", path)]).entry(b'0', "x", 0, "").end();
        match expect_refused(&raw) {
            TarError::BadPath { index: 1, raw, source } => {
                assert_eq!(raw, shown, "the refused path is shown escaped");
                assert!(want(&source), "{shown}: {source:?}");
            }
            other => panic!("{shown}: unexpected {other:?}"),
        }
    }
    let long = [&b"\xe9"[..]; 300].concat();
    let raw = ok_first().pax(b'x', &[("hdrcharset", b"BINARY"), ("path", &long)]).entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::BadPath { source: PathError::ComponentTooLong { .. }, .. }));
    let raw =
        ok_first().pax(b'x', &[("hdrcharset", b"ISO-8859-1"), ("path", b"caf\xe9")]).entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("hdrcharset")));
}

#[test]
fn special_entry_types_are_refused_naming_the_path() {
    for (flag, word) in [
        (b'1', "hard link"),
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "fifo"),
        (b'7', "contiguous"),
        (b'S', "sparse"),
        (b'V', "volume"),
        (b'Z', "unknown"),
    ] {
        let raw = ok_first().entry(flag, "dev/thing", 0, "ok").end();
        match expect_refused(&raw) {
            TarError::UnsupportedType { index: 1, path, kind } => {
                assert_eq!(path, "dev/thing");
                assert!(kind.contains(word), "{kind}");
            }
            other => panic!("{}: unexpected {other:?}", char::from(flag)),
        }
    }
    // PAX-style GNU sparse files look like regular files.
    let raw = ok_first()
        .pax(b'x', &[("GNU.sparse.major", b"1"), ("GNU.sparse.name", b"s")])
        .entry(b'0', "GNUSparseFile.0/s", 0, "")
        .end();
    assert!(matches!(expect_refused(&raw), TarError::UnsupportedType { kind, .. } if kind.contains("sparse")));
}

#[test]
fn huge_extension_records_are_refused_before_allocation() {
    // Only the header is there: a reader that allocated first would fail
    // differently (or run out of memory) instead of reporting the limit.
    for flag in [b'x', b'g', b'L', b'K'] {
        let raw = ok_first().entry(flag, "././@PaxHeader", 1 << 30, "");
        match expect_refused(&raw) {
            TarError::LimitExceeded { index: 1, what, limit, .. } => {
                assert_eq!(what, "extension record size");
                assert_eq!(limit, Limits::default().max_pax_bytes);
            }
            other => panic!("{}: unexpected {other:?}", char::from(flag)),
        }
    }
}

#[test]
fn extension_header_chains_are_bounded() {
    let mut raw = ok_first();
    for _ in 0..9 {
        raw = raw.pax(b'g', &[("comment", b"x")]);
    }
    let raw = raw.entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("extension headers")));
    let raw = ok_first().pax(b'x', &[("mtime", b"1")]).end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("not followed")));
}

#[test]
fn huge_size_followed_by_eof_is_truncation() {
    let size = Raw::octal_size(8 << 30);
    let raw = ok_first().block(Raw::header(b'0', b"big", &size, b""));
    // With the default limits the header is acceptable; reading the data
    // hits the end of the stream, which is reported as truncation (and the
    // visitor's reads fail).
    let mut read_failed = false;
    let mut seen = Vec::new();
    let err = unpack(&raw.zstd()[..], &Limits::default(), |h, r| {
        seen.push(h.path.to_string());
        let mut buf = vec![0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    read_failed = true;
                    return Err(e.into());
                }
            }
        }
    })
    .unwrap_err();
    assert!(read_failed);
    assert_eq!(seen, ["ok", "big"]);
    assert!(matches!(&err, TarError::Truncated { index: 1, path: Some(p), .. } if p == "big"), "{err:?}");
    // A visitor that ignores the failure changes nothing.
    let (_, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert!(matches!(res, Err(TarError::Truncated { .. })), "{res:?}");

    // With a lower entry limit it is refused before the visitor sees it.
    let limits = Limits { max_entry_bytes: 1 << 30, ..Limits::default() };
    let (seen, res) = visited_paths(&raw.zstd(), &limits);
    assert_eq!(seen, ["ok"]);
    assert!(
        matches!(res, Err(TarError::LimitExceeded { what: "entry size", limit, .. }) if limit == 1 << 30),
        "{res:?}"
    );
    // Base-256 size fields are limited just the same.
    let mut b256 = [0u8; 12];
    b256[0] = 0x80;
    b256[6] = 0x10; // 16 TiB
    let raw = ok_first().block(Raw::header(b'0', b"big", &b256, b""));
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"]);
    assert!(matches!(res, Err(TarError::LimitExceeded { what: "entry size", .. })), "{res:?}");
}

#[test]
fn truncated_streams_are_reported() {
    let entries = vec![fe("a", 0o644, (1, 0), vec![1; 100_000]), fe("b", 0o644, (1, 0), vec![2; 10])];
    let packed = pack(&entries);
    let raw = zstd::decode_all(&packed[..]).unwrap();

    // Tar cut in the middle of the data, inside a complete zstd frame.
    let cut = zstd(&raw[..50_000]);
    let err = unpack_all(&cut, &Limits::default()).unwrap_err();
    assert!(matches!(&err, TarError::Truncated { index: 0, path: Some(p), .. } if p == "a"), "{err:?}");

    // Cut at an entry boundary: the missing end marker is noticed.
    let boundary = raw.len() - 1024;
    let err = unpack_all(&zstd(&raw[..boundary]), &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Truncated { index: 2, .. }), "{err:?}");
    let err = unpack_all(&zstd(&raw[..boundary + 512]), &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Truncated { .. }), "{err:?}");

    // Cut inside a header block.
    let err = unpack_all(&zstd(&raw[..100]), &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Truncated { index: 0, .. }), "{err:?}");

    // The compressed stream itself cut short, at many places.
    for len in [0, 1, 4, 10, packed.len() / 3, packed.len() / 2, packed.len() - 1] {
        let err = unpack_all(&packed[..len], &Limits::default()).unwrap_err();
        assert!(matches!(err, TarError::Truncated { .. }), "cut at {len}: {err:?}");
    }
}

#[test]
fn bad_checksum_is_refused() {
    let mut h = Raw::header(b'0', b"x", &Raw::octal_size(0), b"");
    h[0] = b'y'; // change the name after the checksum was computed
    let raw = ok_first().block(h).end();
    assert!(
        matches!(expect_refused(&raw), TarError::Malformed { index: 1, reason, .. } if reason.contains("checksum"))
    );
}

#[test]
fn malformed_fields_are_refused_without_panicking() {
    let with_fields = |mode: &[u8], size: &[u8]| {
        let mut h = Raw::header(b'0', b"x", size, b"");
        h[100..108].copy_from_slice(mode);
        set_checksum(&mut h);
        ok_first().block(h).end()
    };
    for (mode, size) in [
        (&b"0000644\0"[..], &b"0000000009\0\0"[..]),
        (b"00006x4\0", b"00000000000\0"),
        (b"\0\0\0\0\0\0\0\0", b"00000000000\0"),
        (b"0000644\0", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
    ] {
        let raw = with_fields(mode, size);
        assert!(matches!(expect_refused(&raw), TarError::Malformed { .. }), "{mode:?} {size:?}");
    }
    for mtime in [&b"12abc"[..], b"1.2.3", b"99999999999999999999999", b"", b"-", b"1e5", b"0x10"] {
        let raw = ok_first().pax(b'x', &[("mtime", mtime)]).entry(b'0', "x", 0, "").end();
        // An empty value unsets the keyword (POSIX), so the header mtime is used.
        if mtime.is_empty() {
            let got = unpack_all(&raw.zstd(), &Limits::default()).unwrap();
            assert_eq!(got[1].0.mtime.sec, 0o14530000000);
            continue;
        }
        assert!(
            matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("mtime")),
            "{mtime:?}"
        );
    }
    for records in [&b"10 a=b\n"[..], b"5 a=b\n", b"garbage", b"3 a=b\n"] {
        let raw = ok_first().pax_raw(b'x', records).entry(b'0', "x", 0, "").end();
        assert!(matches!(expect_refused(&raw), TarError::Malformed { .. }), "{records:?}");
    }
    let raw = ok_first().pax(b'x', &[("size", b"12z")]).entry(b'0', "x", 0, "").end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("size")));
    let raw = ok_first().entry(b'5', "d", 5, "").data(b"12345").end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { .. }));
    let raw = ok_first().entry(b'2', "l", 1, "t").data(b"1").end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { .. }));
    // Old (v7) headers without ustar magic.
    let mut v7 = Raw::header(b'0', b"x", &Raw::octal_size(0), b"");
    v7[257..265].fill(0);
    set_checksum(&mut v7);
    let raw = ok_first().block(v7).end();
    assert!(matches!(expect_refused(&raw), TarError::Malformed { reason, .. } if reason.contains("magic")));
    // One zero block followed by something else.
    let raw = ok_first().block([0; 512]).entry(b'0', "x", 0, "");
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"]);
    assert!(matches!(res, Err(TarError::Malformed { .. })), "{res:?}");
    // Data after the end marker.
    let mut raw = ok_first().end();
    raw.bytes.extend_from_slice(b"sneaky");
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"]);
    assert!(matches!(res, Err(TarError::Malformed { ref reason, .. }) if reason.contains("after")), "{res:?}");
    // Zero padding after the end marker (tar's 10 KiB records) is fine.
    let mut raw = ok_first().end();
    raw.bytes.extend_from_slice(&[0; 8192]);
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"]);
    res.unwrap();
}

#[test]
fn bad_symlink_targets_are_refused() {
    let cases: Vec<Raw> = vec![
        ok_first().entry(b'2', "l", 0, "").end(),
        ok_first().pax(b'x', &[("linkpath", b"a\0b")]).entry(b'2', "l", 0, "x").end(),
        ok_first().pax(b'x', &[("linkpath", "t".repeat(4097).as_bytes())]).entry(b'2', "l", 0, "x").end(),
        ok_first().entry(b'K', "././@LongLink", 1, "").data(b"\0").entry(b'2', "l", 0, "").end(),
    ];
    for raw in cases {
        assert!(matches!(expect_refused(&raw), TarError::BadLinkTarget { index: 1, path, .. } if path == "l"));
    }
    // A target that is not UTF-8 is a target like any other.
    use std::os::unix::ffi::OsStrExt;
    let raw = ok_first().pax(b'x', &[("linkpath", b"\xc3\x28")]).entry(b'2', "l", 0, "x").end();
    let got = unpack_all(&raw.zstd(), &Limits::default()).unwrap();
    assert_eq!(got[1].0.link_target.as_deref().map(|t| t.as_bytes()), Some(&b"\xc3\x28"[..]));
}

#[test]
fn garbage_is_refused() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let garbage: Vec<u8> = (0..100_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    // Not zstd at all.
    let err = unpack_all(&garbage, &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Compression { index: 0, .. }), "{err:?}");
    // A zstd magic number followed by garbage.
    let mut fake = vec![0x28, 0xb5, 0x2f, 0xfd];
    fake.extend_from_slice(&garbage);
    let err = unpack_all(&fake, &Limits::default()).unwrap_err();
    assert!(matches!(err, TarError::Compression { .. }), "{err:?}");
    // Valid zstd, garbage tar.
    let err = unpack_all(&zstd(&garbage), &Limits::default()).unwrap_err();
    assert!(matches!(&err, TarError::Malformed { reason, .. } if reason.contains("checksum")), "{err:?}");
    // A corrupted byte in the middle of a valid stream.
    let mut packed = pack(&[fe("a", 0o644, (1, 0), garbage[..5000].to_vec())]);
    let mid = packed.len() / 2;
    packed[mid] ^= 0x55;
    assert!(unpack_all(&packed, &Limits::default()).is_err());
}

#[test]
fn uncompressed_tar_is_refused() {
    let raw = ok_first().end();
    let (seen, res) = visited_paths(&raw.bytes, &Limits::default());
    assert!(seen.is_empty());
    assert!(matches!(res, Err(TarError::Compression { index: 0, .. })), "{res:?}");
}

#[test]
fn oversized_zstd_window_is_refused() {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(27).unwrap();
    enc.write_all(&ok_first().end().bytes).unwrap();
    let bytes = enc.finish().unwrap();
    let (seen, res) = visited_paths(&bytes, &Limits::default());
    assert!(seen.is_empty());
    assert!(matches!(res, Err(TarError::Compression { .. })), "{res:?}");
}

/// Builds, streaming, a stream holding one file of `len` zero bytes.
fn zero_bomb(len: u64) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    let head = Raw::header(b'0', b"bomb", &Raw::octal_size(len), b"");
    enc.write_all(&head).unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        enc.write_all(&zeros[..n]).unwrap();
        left -= n as u64;
    }
    enc.write_all(&[0; 1024]).unwrap();
    enc.finish().unwrap()
}

#[test]
fn decompression_bomb_is_stopped_quickly() {
    let start = Instant::now();
    let bomb = zero_bomb(2 << 30);
    eprintln!("2 GiB bomb: {} compressed bytes, built in {:?}", bomb.len(), start.elapsed());
    assert!(bomb.len() < 1 << 20);

    let start = Instant::now();
    let mut produced = 0u64;
    let mut read_error = None;
    let err = unpack(&bomb[..], &Limits::default(), |_, r| {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => produced += n as u64,
                Err(e) => {
                    read_error = Some(e.to_string());
                    return Err(e.into());
                }
            }
        }
    })
    .unwrap_err();
    let took = start.elapsed();
    eprintln!("stopped after {took:?}");
    match err {
        TarError::LimitExceeded { index: 0, path, what, limit } => {
            assert_eq!(path.as_deref(), Some("bomb"));
            assert_eq!(what, "decompression ratio");
            assert_eq!(limit, 1000);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Stopped soon after the 64 MiB grace, far from 2 GiB; the visitor's
    // read failed.
    eprintln!("visitor read {produced} bytes, then: {read_error:?}");
    assert!(produced > 60 << 20 && produced < 128 << 20, "{produced}");
    assert!(read_error.unwrap().contains("ratio"));
    assert!(took.as_secs() < 10, "{took:?}");

    // The total size limit stops it before any data is read.
    let limits = Limits { max_total_bytes: 1 << 30, ..Limits::default() };
    let (seen, res) = visited_paths(&bomb, &limits);
    assert!(seen.is_empty());
    assert!(matches!(res, Err(TarError::LimitExceeded { what: "total size", .. })), "{res:?}");
}

#[test]
fn small_highly_compressible_streams_pass_the_grace() {
    // 16 MiB of zeros compresses > 1000x but is under the 64 MiB grace.
    let bomb = zero_bomb(16 << 20);
    let got = unpack_all(&bomb, &Limits::default()).unwrap();
    assert_eq!(got[0].1.len(), 16 << 20);
    // With no grace it is refused.
    let limits = Limits { ratio_grace_bytes: 0, ..Limits::default() };
    let err = unpack_all(&bomb, &limits).unwrap_err();
    assert!(matches!(err, TarError::LimitExceeded { what: "decompression ratio", .. }), "{err:?}");
}

#[test]
fn too_many_entries_are_refused() {
    let entries: Vec<_> = (0..11).map(|i| fe(&format!("f{i}"), 0o644, (1, 0), vec![])).collect();
    let bytes = pack(&entries);
    let limits = Limits { max_entries: 10, ..Limits::default() };
    let (seen, res) = visited_paths(&bytes, &limits);
    assert_eq!(seen.len(), 10);
    assert!(
        matches!(res, Err(TarError::LimitExceeded { index: 10, what: "number of entries", limit: 10, .. })),
        "{res:?}"
    );
    // Exactly at the limit is fine.
    let (seen, res) = visited_paths(&pack(&entries[..10]), &limits);
    assert_eq!(seen.len(), 10);
    res.unwrap();
}

#[test]
fn total_and_entry_size_limits() {
    let entries: Vec<_> = (0..4).map(|i| fe(&format!("f{i}"), 0o644, (1, 0), vec![0; 100])).collect();
    let bytes = pack(&entries);
    let limits = Limits { max_total_bytes: 350, ..Limits::default() };
    let (seen, res) = visited_paths(&bytes, &limits);
    assert_eq!(seen, ["f0", "f1", "f2"]);
    assert!(matches!(res, Err(TarError::LimitExceeded { index: 3, what: "total size", .. })), "{res:?}");
    let limits = Limits { max_entry_bytes: 99, ..Limits::default() };
    let (seen, res) = visited_paths(&bytes, &limits);
    assert!(seen.is_empty());
    assert!(matches!(res, Err(TarError::LimitExceeded { index: 0, what: "entry size", .. })), "{res:?}");
}

#[test]
fn transport_errors_are_io_errors() {
    struct Broken<'a>(&'a [u8]);
    impl Read for Broken<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer gone"));
            }
            let n = buf.len().min(self.0.len()).min(100);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let packed = pack(&[fe("a", 0o644, (1, 0), vec![7; 50_000])]);
    let err = unpack(Broken(&packed[..packed.len() / 2]), &Limits::default(), |_, r| {
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    })
    .unwrap_err();
    match err {
        TarError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("unexpected {other:?}"),
    }
}

/// The events `unpack_events` hands out, as text, and its result.
fn events(bytes: &[u8]) -> (Vec<String>, Result<cs_tarstream::UnpackStats, TarError>) {
    let mut seen = Vec::new();
    let res = cs_tarstream::unpack_events(bytes, &Limits::default(), |ev| {
        match ev {
            cs_tarstream::Event::Entry(h, r) => {
                std::io::copy(r, &mut std::io::sink())?;
                seen.push(format!("entry {}", h.path));
            }
            cs_tarstream::Event::Withdraw(p) => seen.push(format!("withdraw {p}")),
        }
        Ok(())
    });
    (seen, res)
}

fn withdraw(raw: Raw, path: &str) -> Raw {
    raw.entry(cs_tarstream::WITHDRAW_TYPEFLAG, path, 0, "")
}

#[test]
fn a_withdraw_marker_after_its_file_is_reported_and_the_stream_goes_on() {
    let raw = withdraw(ok_first(), "ok").entry(b'0', "next", 1, "").data(b"n").end();
    let (seen, res) = events(&raw.zstd());
    assert_eq!(seen, ["entry ok", "withdraw ok", "entry next"]);
    let stats = res.unwrap();
    assert_eq!((stats.entries, stats.withdrawn), (2, 1));
    // Through a PAX path record too (long or non-ASCII names).
    let long = format!("{}/f", "d".repeat(150));
    let raw = Raw::new()
        .pax(b'x', &[("path", long.as_bytes())])
        .entry(b'0', "placeholder", 1, "")
        .data(b"x")
        .pax(b'x', &[("path", long.as_bytes())]);
    let raw = withdraw(raw, "placeholder").end();
    let (seen, res) = events(&raw.zstd());
    res.unwrap();
    assert_eq!(seen, [format!("entry {long}"), format!("withdraw {long}")]);
}

#[test]
fn misplaced_withdraw_markers_are_refused() {
    let malformed = |raw: Raw, want_seen: &[&str]| {
        let (seen, res) = events(&raw.end().zstd());
        assert_eq!(seen, want_seen);
        match res {
            Err(TarError::Malformed { reason, .. }) => assert!(reason.contains("withdraw"), "{reason}"),
            other => panic!("expected a malformed stream, got {other:?}"),
        }
    };
    // Nothing to withdraw: first in the stream.
    malformed(withdraw(Raw::new(), "ok"), &[]);
    // Another path than the file just sent.
    malformed(withdraw(ok_first(), "other"), &["entry ok"]);
    // Twice in a row: the second has nothing left to withdraw.
    malformed(withdraw(withdraw(ok_first(), "ok"), "ok"), &["entry ok", "withdraw ok"]);
    // Not right after the file: an entry in between.
    malformed(withdraw(ok_first().entry(b'5', "d/", 0, ""), "ok"), &["entry ok", "entry d"]);
    // After a directory or a symlink of that name.
    malformed(withdraw(Raw::new().entry(b'5', "d/", 0, ""), "d"), &["entry d"]);
    malformed(withdraw(Raw::new().entry(b'2', "l", 0, "t"), "l"), &["entry l"]);
    // A marker that declares data.
    malformed(ok_first().entry(cs_tarstream::WITHDRAW_TYPEFLAG, "ok", 3, "").data(b"abc"), &["entry ok"]);
    // A bad path is refused as any entry's.
    let (seen, res) = events(&withdraw(ok_first(), "../ok").end().zstd());
    assert_eq!(seen, ["entry ok"]);
    assert!(matches!(res, Err(TarError::BadPath { .. })), "{res:?}");
    // A marker cut off before its end: truncated, and the entry is not confirmed.
    let mut bytes = withdraw(ok_first(), "ok").bytes;
    bytes.truncate(bytes.len() - 100);
    let (_, res) = events(&zstd(&bytes));
    assert!(matches!(res, Err(TarError::Truncated { .. })), "{res:?}");
}

#[test]
fn the_plain_reader_refuses_a_withdraw_it_cannot_honour() {
    let raw = withdraw(ok_first(), "ok").end();
    let (seen, res) = visited_paths(&raw.zstd(), &Limits::default());
    assert_eq!(seen, ["ok"]);
    match res {
        Err(TarError::Withdrawn { index: 0, path }) => assert_eq!(path.as_bytes(), b"ok"),
        other => panic!("{other:?}"),
    }
}
