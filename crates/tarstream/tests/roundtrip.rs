//! Packing then unpacking gives back exactly what was packed.

mod common;

use std::io::Read;

use common::*;
use cs_tarstream::{unpack, EntryHeader, EntryKind, Limits, PackWriter, RelPath, TarError, Timestamp};
use proptest::prelude::*;

fn long_path(total: usize) -> String {
    // Components of 200 bytes joined by '/', cut to `total` bytes.
    let mut s = String::new();
    let mut i = 0;
    while s.len() < total {
        if !s.is_empty() {
            s.push('/');
        }
        let c = char::from(b'a' + (i % 26) as u8);
        s.extend(std::iter::repeat_n(c, 200));
        i += 1;
    }
    s.truncate(total);
    assert!(!s.ends_with('/'));
    s
}

#[test]
fn everything_round_trips_exactly() {
    let p4000 = long_path(4000);
    let p4096 = long_path(4096);
    let split = format!("{}/{}", "p".repeat(150), "n".repeat(100)); // ustar prefix/name
    let long_target = format!("/{}", "t/".repeat(1000));
    let entries: Vec<(EntryHeader, Vec<u8>)> = vec![
        (dir("d", 0o755, (1_700_000_000, 0)), vec![]),
        (dir("d/sticky", 0o1777, (1_700_000_001, 999_999_999)), vec![]),
        fe("d/empty", 0o644, (1_700_000_002, 1), vec![]),
        fe("d/small", 0o644, (1_700_000_003, 123_456_789), b"hello\nworld\n".to_vec()),
        fe("d/exec", 0o755, (0, 0), vec![7; 512]),
        fe("d/setuid", 0o4755, (-1, 500_000_000), vec![1; 513]),
        fe("old", 0o600, (-2_000_000_000, 999_999_999), vec![2; 1000]),
        fe("older", 0o2640, (-62_000_000_000, 0), vec![3; 3]),
        fe("future", 0o400, (100_000_000_000, 42), vec![4; 4]),
        (symlink("abs", "/etc/passwd", (5, 0)), vec![]),
        (symlink("d/rel", "../d/small", (6, 7)), vec![]),
        (symlink("d/dotdot", "../../../outside", (6, 8)), vec![]),
        (symlink("d/longlink", &long_target, (6, 9)), vec![]),
        (symlink("uni-link", "ziel/日本語", (6, 10)), vec![]),
        fe(&p4000, 0o644, (7, 0), b"deep".to_vec()),
        (dir(&p4096, 0o700, (8, 0)), vec![]),
        fe(&split, 0o644, (9, 0), b"split".to_vec()),
        (dir(&"x".repeat(99), 0o755, (9, 1)), vec![]), // name + '/' fills the field
        (dir(&"y".repeat(100), 0o755, (9, 2)), vec![]), // name + '/' does not fit
        fe(&"z".repeat(100), 0o644, (9, 3), vec![]),
        (dir("ünïcödé", 0o755, (10, 0)), vec![]),
        fe("ünïcödé/файл 😀.txt", 0o644, (10, 1), "données".as_bytes().to_vec()),
        fe("spaces and\ttab", 0o644, (10, 2), vec![]),
    ];
    let bytes = pack(&entries);
    let got = unpack_all(&bytes, &Limits::default()).unwrap();
    assert_eq!(got.len(), entries.len());
    for (want, got) in entries.iter().zip(&got) {
        assert_eq!(want, got);
    }
}

/// Linux names are bytes: Latin-1 and invalid UTF-8 names and symlink
/// targets round trip exactly, as PAX records under `hdrcharset=BINARY`,
/// and GNU tar reads the stream the same way.
#[test]
fn byte_names_and_link_targets_round_trip() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let b = |s: &[u8]| RelPath::new(s).unwrap();
    let ts = Timestamp::new(1_700_000_000, 5);
    let long = [&b"\xe9"[..]; 200].concat(); // 200 bytes, over ustar's 100
    let entries: Vec<(EntryHeader, Vec<u8>)> = vec![
        (EntryHeader::dir(b(b"caf\xe9"), 0o755, ts), vec![]),
        (EntryHeader::file(b(b"caf\xe9/na\xefve.txt"), 0o644, ts, 6), b"latin1".to_vec()),
        (EntryHeader::file(b(b"bad\xc3\x28\xff\xfe"), 0o600, ts, 3), b"bad".to_vec()),
        (EntryHeader::file(b(&[&b"d/"[..], &long].concat()), 0o644, ts, 0), vec![]),
        (EntryHeader::symlink(b(b"l\xe9"), 0o777, ts, OsStr::from_bytes(b"caf\xe9/na\xefve.txt")), vec![]),
        (EntryHeader::symlink(b(b"l2"), 0o777, ts, OsStr::from_bytes(&long)), vec![]),
        (EntryHeader::symlink(b(b"l3"), 0o777, ts, OsStr::from_bytes(b"\xff")), vec![]),
    ];
    let bytes = pack(&entries);
    let got = unpack_all(&bytes, &Limits::default()).unwrap();
    assert_eq!(got, entries);
    let raw = zstd::decode_all(&bytes[..]).unwrap();
    let record = b" hdrcharset=BINARY\n";
    assert!(raw.windows(record.len()).any(|w| w == record), "no hdrcharset record");

    // Interoperability: GNU tar extracts the same names and targets.
    let Ok(out) = std::process::Command::new("tar").arg("--version").output() else { return };
    if !out.status.success() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.tar"), &raw).unwrap();
    let st = std::process::Command::new("tar").arg("-xf").arg("s.tar").current_dir(dir.path()).status().unwrap();
    assert!(st.success());
    let at = |p: &[u8]| dir.path().join(OsStr::from_bytes(p));
    assert_eq!(std::fs::read(at(b"caf\xe9/na\xefve.txt")).unwrap(), b"latin1");
    assert_eq!(std::fs::read(at(b"bad\xc3\x28\xff\xfe")).unwrap(), b"bad");
    assert!(at(&[&b"d/"[..], &long].concat()).is_file());
    assert_eq!(std::fs::read_link(at(b"l\xe9")).unwrap().as_os_str().as_bytes(), b"caf\xe9/na\xefve.txt");
    assert_eq!(std::fs::read_link(at(b"l2")).unwrap().as_os_str().as_bytes(), &long[..]);
}

#[test]
fn stats_count_entries_and_bytes() {
    let entries = vec![
        fe("a", 0o644, (1, 0), vec![1; 1000]),
        (dir("b", 0o755, (1, 0)), vec![]),
        fe("c", 0o644, (1, 0), vec![2; 24]),
    ];
    let bytes = pack(&entries);
    let stats = unpack(&bytes[..], &Limits::default(), |_, _| Ok(())).unwrap();
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.payload_bytes, 1024);
    assert_eq!(stats.compressed_bytes, bytes.len() as u64);
    // 3 PAX headers + records, 3 headers, 1000 -> 1024 and 24 -> 512 data, end marker.
    assert_eq!(stats.uncompressed_bytes, (3 * 2 + 3 + 2 + 1 + 2) * 512);
}

#[test]
fn empty_stream_round_trips() {
    let (bytes, stats) = PackWriter::new(Vec::new(), 1).unwrap().finish().unwrap();
    assert_eq!(stats.entries, 0);
    assert!(unpack_all(&bytes, &Limits::default()).unwrap().is_empty());
}

#[test]
fn ten_mib_file_streams_through_a_pipe() {
    const LEN: u64 = 10 << 20;
    let (tx, rx) = pipe();
    let writer = std::thread::spawn(move || {
        let mut w = PackWriter::new(tx, 1).unwrap();
        w.append_dir(&dir("big", 0o755, (1, 2))).unwrap();
        w.append_file(&file("big/noise", 0o644, (3, 4), LEN), &mut Noise::new(42, LEN)).unwrap();
        w.append_file(&file("big/after", 0o644, (5, 6), 3), &mut &b"end"[..]).unwrap();
        w.finish().unwrap().1
    });
    let mut headers = Vec::new();
    let mut after = Vec::new();
    let stats = unpack(rx, &Limits::default(), |h, r| {
        headers.push(h.clone());
        if h.path.to_str() == Some("big/noise") {
            // Compare against a regenerated stream, chunk by chunk.
            let mut expect = Noise::new(42, LEN);
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut total = 0u64;
            loop {
                let n = r.read(&mut a)?;
                if n == 0 {
                    break;
                }
                expect.read_exact(&mut b[..n])?;
                assert!(a[..n] == b[..n], "data differs at offset {total}");
                total += n as u64;
            }
            assert_eq!(total, LEN);
            assert_eq!(expect.read(&mut b)?, 0, "the source had more data");
        } else {
            r.read_to_end(&mut after)?;
        }
        Ok(())
    })
    .unwrap();
    let pack_stats = writer.join().unwrap();
    assert_eq!(pack_stats.payload_bytes, LEN + 3);
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.payload_bytes, LEN + 3);
    assert_eq!(stats.compressed_bytes, pack_stats.compressed_bytes);
    assert_eq!(headers[1], file("big/noise", 0o644, (3, 4), LEN));
    assert_eq!(after, b"end");
}

#[test]
fn shrunk_and_grown_sources_are_reported_and_the_stream_stays_usable() {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    let err = w.append_file(&file("shrank", 0o644, (1, 0), 10), &mut &b"abc"[..]).unwrap_err();
    match &err {
        TarError::SourceChanged { path, declared: 10, got: 3 } => assert_eq!(path.to_str(), Some("shrank")),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("shrank"), "{err}");
    let err = w.append_file(&file("grew", 0o644, (1, 0), 2), &mut &b"abcdef"[..]).unwrap_err();
    assert!(
        matches!(&err, TarError::SourceChanged { path, declared: 2, got: 3 } if path.to_str() == Some("grew")),
        "{err:?}"
    );
    struct Failing(u8);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0 -= 1;
            buf[0] = b'q';
            Ok(1)
        }
    }
    let err = w.append_file(&file("eio", 0o644, (1, 0), 5), &mut Failing(2)).unwrap_err();
    assert!(matches!(&err, TarError::SourceRead { path, .. } if path.to_str() == Some("eio")), "{err:?}");
    w.append_file(&file("fine", 0o644, (1, 0), 2), &mut &b"ok"[..]).unwrap();
    let (bytes, stats) = w.finish().unwrap();
    assert_eq!(stats.entries, 4);
    let got = unpack_all(&bytes, &Limits::default()).unwrap();
    let datas: Vec<(&str, &[u8])> = got.iter().map(|(h, d)| (h.path.to_str().unwrap(), &d[..])).collect();
    assert_eq!(
        datas,
        vec![("shrank", &b"abc\0\0\0\0\0\0\0"[..]), ("grew", b"ab"), ("eio", b"qq\0\0\0"), ("fine", b"ok")]
    );
}

#[test]
fn inconsistent_headers_are_refused_by_the_writer() {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    let f = file("f", 0o644, (1, 0), 0);
    let mut sized_dir = dir("d", 0o755, (1, 0));
    sized_dir.size = 1;
    let mut no_target = symlink("s", "t", (1, 0));
    no_target.link_target = None;
    let mut bad_nsec = f.clone();
    bad_nsec.mtime = Timestamp::new(1, 1_000_000_000);
    let cases: Vec<(&str, Result<(), TarError>)> = vec![
        ("file as dir", w.append_dir(&f)),
        ("file as symlink", w.append_symlink(&f)),
        ("sized dir", w.append_dir(&sized_dir)),
        ("symlink without target", w.append_symlink(&no_target)),
        ("empty target", w.append_symlink(&symlink("s", "", (1, 0)))),
        ("NUL target", w.append_symlink(&symlink("s", "a\0b", (1, 0)))),
        ("nsec", w.append_file(&bad_nsec, &mut &b""[..])),
    ];
    for (what, res) in cases {
        assert!(matches!(res, Err(TarError::InvalidHeader { .. })), "{what}: {res:?}");
    }
    // Nothing was written for the refused entries.
    let (bytes, stats) = w.finish().unwrap();
    assert_eq!(stats.entries, 0);
    assert!(unpack_all(&bytes, &Limits::default()).unwrap().is_empty());
}

#[test]
fn mode_is_masked_to_permission_bits() {
    let mut h = file("f", 0o100644, (1, 0), 0);
    let bytes = {
        let mut w = PackWriter::new(Vec::new(), 3).unwrap();
        w.append_file(&h, &mut &b""[..]).unwrap();
        w.finish().unwrap().0
    };
    h.mode = 0o644;
    assert_eq!(unpack_all(&bytes, &Limits::default()).unwrap(), vec![(h, vec![])]);
}

#[test]
fn sink_errors_poison_the_writer() {
    struct Full(usize);
    impl std::io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = PackWriter::new(Full(10), 1).unwrap();
    let h = file("f", 0o644, (1, 0), 1 << 20);
    let err = w.append_file(&h, &mut Noise::new(1, 1 << 20)).unwrap_err();
    assert!(matches!(&err, TarError::Io { path: Some(p), .. } if p == "f"), "{err:?}");
    assert!(matches!(w.append_dir(&dir("d", 0o755, (1, 0))), Err(TarError::Poisoned)));
    assert!(matches!(w.finish(), Err(TarError::Poisoned)));
}

#[test]
fn visitor_error_is_reported_with_the_path() {
    let entries = vec![
        fe("a", 0o644, (1, 0), vec![1; 10]),
        fe("dir/b", 0o644, (1, 0), vec![2; 10]),
        fe("c", 0o644, (1, 0), vec![3; 10]),
    ];
    let bytes = pack(&entries);
    let mut seen = Vec::new();
    let err = unpack(&bytes[..], &Limits::default(), |h, _| {
        seen.push(h.path.to_string());
        if h.path.to_str() == Some("dir/b") {
            return Err("no space left for this one".into());
        }
        Ok(())
    })
    .unwrap_err();
    match &err {
        TarError::Visit { index: 1, path, source } => {
            assert_eq!(path.to_str(), Some("dir/b"));
            assert_eq!(source.to_string(), "no space left for this one");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("dir/b"), "{err}");
    assert_eq!(seen, ["a", "dir/b"]);
}

#[test]
fn unread_data_is_drained() {
    let entries = vec![
        fe("a", 0o644, (1, 0), vec![1; 100_000]),
        fe("b", 0o644, (1, 0), vec![2; 1000]),
        fe("c", 0o644, (1, 0), vec![3; 10]),
        (dir("d", 0o755, (1, 0)), vec![]),
    ];
    let bytes = pack(&entries);
    let mut got = Vec::new();
    let stats = unpack(&bytes[..], &Limits::default(), |h, r| {
        let mut first = [0u8; 7];
        let n = if h.size > 0 { r.read(&mut first)? } else { 0 };
        got.push((h.path.to_string(), first[..n].to_vec()));
        Ok(())
    })
    .unwrap();
    assert_eq!(stats.entries, 4);
    let names: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    assert!(got[0].1.iter().all(|&b| b == 1) && !got[0].1.is_empty());
    assert!(got[2].1.iter().all(|&b| b == 3) && !got[2].1.is_empty());
}

#[test]
fn entry_reader_stops_at_the_entry_end() {
    let entries = vec![fe("a", 0o644, (1, 0), vec![9; 700]), fe("b", 0o644, (1, 0), vec![8; 5])];
    let bytes = pack(&entries);
    let mut lens = Vec::new();
    unpack(&bytes[..], &Limits::default(), |_, r| {
        let mut all = Vec::new();
        r.read_to_end(&mut all)?;
        // Further reads keep returning 0.
        assert_eq!(r.read(&mut [0u8; 10])?, 0);
        lens.push(all.len());
        Ok(())
    })
    .unwrap();
    assert_eq!(lens, [700, 5]);
}

#[test]
fn high_compression_levels_stay_within_the_reader_window() {
    let entries = vec![fe("a", 0o644, (1, 0), vec![5; 100_000])];
    let mut w = PackWriter::new(Vec::new(), 22).unwrap();
    w.append_file(&entries[0].0, &mut &entries[0].1[..]).unwrap();
    let bytes = w.finish().unwrap().0;
    assert_eq!(unpack_all(&bytes, &Limits::default()).unwrap(), entries);
}

#[test]
fn gnu_format_from_the_tar_crate_is_read() {
    // The tar crate writes GNU headers and `L` long-name records.
    let long = format!("{}/{}", "g".repeat(120), "h".repeat(120));
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(4);
    h.set_mode(0o640);
    h.set_mtime(1234);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, &long, &b"gnu!"[..]).unwrap();
    let raw = b.into_inner().unwrap();
    let got = unpack_all(&zstd(&raw), &Limits::default()).unwrap();
    assert_eq!(got, vec![fe(&long, 0o640, (1234, 0), b"gnu!".to_vec())]);
}

fn arb_component() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9._-]{1,12}", "[a-zA-Zéü日本😀 ]{1,6}", Just("x".repeat(255)),]
        .prop_filter("not . or ..", |c| c != "." && c != "..")
}

fn arb_entry() -> impl Strategy<Value = (EntryHeader, Vec<u8>)> {
    let path = prop::collection::vec(arb_component(), 1..5)
        .prop_map(|cs| cs.join("/"))
        .prop_filter_map("valid path", |p| RelPath::new(p).ok());
    let mtime = (prop_oneof![-5_000_000_000i64..5_000_000_000, any::<i64>()], 0u32..1_000_000_000)
        .prop_map(|(s, n)| Timestamp::new(s, n));
    let target = "[^\u{0}]{1,300}";
    (path, 0u32..0o10000, mtime, 0u8..3, prop::collection::vec(any::<u8>(), 0..3000), target).prop_map(
        |(path, mode, mtime, kind, data, target)| match kind {
            0 => (EntryHeader::file(path, mode, mtime, data.len() as u64), data),
            1 => (EntryHeader::dir(path, mode, mtime), vec![]),
            _ => (EntryHeader::symlink(path, mode, mtime, target), vec![]),
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_entry_sets_round_trip(entries in prop::collection::vec(arb_entry(), 0..12)) {
        let bytes = pack(&entries);
        let got = unpack_all(&bytes, &Limits::default()).unwrap();
        prop_assert_eq!(got, entries);
    }
}

#[test]
fn kinds_are_reported() {
    let entries =
        vec![fe("f", 0o644, (1, 0), vec![]), (dir("d", 0o755, (1, 0)), vec![]), (symlink("s", "f", (1, 0)), vec![])];
    let kinds: Vec<EntryKind> =
        unpack_all(&pack(&entries), &Limits::default()).unwrap().iter().map(|(h, _)| h.kind).collect();
    assert_eq!(kinds, [EntryKind::File, EntryKind::Dir, EntryKind::Symlink]);
}

#[test]
fn a_torn_file_is_withdrawn_and_the_receiver_is_told_before_the_next_entry() {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    let grew = file("grew", 0o644, (1, 0), 2);
    assert!(matches!(w.append_file(&grew, &mut &b"abcdef"[..]), Err(TarError::SourceChanged { .. })));
    w.withdraw(&grew).unwrap();
    // Only the file appended last, only once.
    assert!(matches!(w.withdraw(&grew), Err(TarError::InvalidHeader { .. })));
    let d = dir("d", 0o755, (1, 0));
    w.append_dir(&d).unwrap();
    let mut as_file = d.clone();
    as_file.kind = EntryKind::File;
    assert!(matches!(w.withdraw(&as_file), Err(TarError::InvalidHeader { .. })));
    let fine = file("fine", 0o644, (1, 0), 2);
    w.append_file(&fine, &mut &b"ok"[..]).unwrap();
    assert!(matches!(w.withdraw(&file("other", 0o644, (1, 0), 2)), Err(TarError::InvalidHeader { .. })));
    let (bytes, stats) = w.finish().unwrap();
    assert_eq!((stats.entries, stats.withdrawn), (2, 1));

    let mut seen = Vec::new();
    let stats = cs_tarstream::unpack_events(&bytes[..], &Limits::default(), |ev| {
        match ev {
            cs_tarstream::Event::Entry(h, r) => {
                let mut data = Vec::new();
                r.read_to_end(&mut data)?;
                seen.push(format!("{} {:?}", h.path, String::from_utf8_lossy(&data)));
            }
            cs_tarstream::Event::Withdraw(p) => seen.push(format!("withdraw {p}")),
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, ["grew \"ab\"", "withdraw grew", "d \"\"", "fine \"ok\""]);
    assert_eq!((stats.entries, stats.withdrawn), (3, 1));
    // The plain reader cannot take the entry back: it refuses the stream.
    let err = unpack(&bytes[..], &Limits::default(), |_, r| {
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(&err, TarError::Withdrawn { index: 0, path } if path.as_bytes() == b"grew"), "{err:?}");
}
