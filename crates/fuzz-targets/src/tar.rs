//! Target `tar`: [`cs_tarstream::unpack`] with small limits.

use cs_protocol::EntryKind;
use cs_tarstream::{unpack, EntryHeader, Limits, PackWriter, TarError, MAX_LINK_TARGET_LEN};

use crate::alloc_meter::measure;
use crate::relpath::check_accepted;

/// Small limits, so that every bound is reachable by small inputs.
pub fn small_limits() -> Limits {
    Limits {
        max_entries: 8,
        max_entry_bytes: 4096,
        max_total_bytes: 12 << 10,
        max_ratio: 200,
        ratio_grace_bytes: 32 << 10,
        max_pax_bytes: 2048,
    }
}

/// Most Rust heap one `unpack` may take with [`small_limits`], the visitor
/// here allocating nothing that grows with the stream: the 64 KiB scratch
/// buffer, the zstd input buffer (128 KiB), one extension record per kind
/// (at most `max_pax_bytes` each, and one `max_pax_bytes` copy of a path),
/// the entry headers, and slack. The zstd decoder's own window (at most
/// 8 MiB) is C `malloc` and not counted.
pub const TAR_ALLOC_BOUND: usize = 512 << 10;

/// Checks the promises of one header handed to the visitor.
pub fn check_header(h: &EntryHeader, limits: &Limits) {
    check_accepted(&h.path, None);
    assert!(h.mode <= 0o7777, "unmasked mode {:o}", h.mode);
    assert!(h.mtime.nsec < 1_000_000_000, "mtime nsec {}", h.mtime.nsec);
    assert!(h.size <= limits.max_entry_bytes, "entry of {} bytes over the limit", h.size);
    match h.kind {
        EntryKind::File => assert!(h.link_target.is_none()),
        EntryKind::Dir => assert!(h.size == 0 && h.link_target.is_none()),
        EntryKind::Symlink => {
            assert_eq!(h.size, 0);
            let t = h.link_target.as_deref().expect("a symlink without a target");
            assert!(
                !t.is_empty()
                    && t.len() <= MAX_LINK_TARGET_LEN
                    && !std::os::unix::ffi::OsStrExt::as_bytes(t).contains(&0),
                "target {t:?}"
            );
        }
    }
}

/// One visited entry: its header and (when read in full) its data.
pub type Visited = (EntryHeader, Option<Vec<u8>>);

/// Unpacks `stream` with `limits`, checking every visit; `style` varies what
/// the visitor does (read all, part or none of the data; refuse an entry).
/// Returns the visits and the outcome.
pub fn unpack_checked(stream: &[u8], limits: &Limits, style: u8) -> (Vec<Visited>, Result<u64, TarError>) {
    let mut seen: Vec<Visited> = Vec::new();
    let mut total: u64 = 0;
    let mut buf = [0u8; 1000];
    let (res, peak) = measure(|| {
        unpack(stream, limits, |h, r| {
            check_header(h, limits);
            assert!(
                (seen.len() as u64) < limits.max_entries,
                "visitor called for entry #{} past max_entries",
                seen.len()
            );
            total += h.size;
            assert!(total <= limits.max_total_bytes, "total size {total} over the limit");
            let which = seen.len() as u8;
            let mut got = 0u64;
            let mut data = Vec::new();
            // style bit 0: read everything; bit 1: stop after the first
            // read; bit 2: refuse the 3rd entry.
            let full = style & 1 == 0 || which.is_multiple_of(2);
            loop {
                let n = r.read(&mut buf)?;
                assert!(n <= buf.len());
                if n == 0 {
                    break;
                }
                got += n as u64;
                assert!(got <= h.size, "entry reader gave {got} bytes of a {}-byte entry", h.size);
                if full {
                    data.extend_from_slice(&buf[..n]);
                }
                if !full && style & 2 != 0 {
                    break;
                }
            }
            let complete = got == h.size;
            if full {
                assert!(complete, "entry reader ended at {got} of {} bytes without an error", h.size);
            }
            seen.push((h.clone(), (full && complete).then_some(data)));
            if style & 4 != 0 && which == 2 {
                return Err("refused by the visitor".into());
            }
            Ok(())
        })
    });
    if let Some(peak) = peak {
        // The visitor keeps at most max_total_bytes of data and the headers.
        let bound = TAR_ALLOC_BOUND + 2 * limits.max_total_bytes as usize + seen.len() * 2 * 8192;
        assert!(peak <= bound, "unpack took {peak} bytes of heap (bound {bound})");
    }
    let res = res.map(|stats| {
        assert_eq!(stats.entries, seen.len() as u64, "stats disagree with the visits");
        assert_eq!(stats.payload_bytes, seen.iter().map(|(h, _)| h.size).sum::<u64>());
        assert!(stats.entries <= limits.max_entries);
        assert!(stats.payload_bytes <= limits.max_total_bytes);
        stats.entries
    });
    if let Err(e) = &res {
        let _ = e.to_string();
        if style & 4 != 0 && seen.len() == 3 {
            // Either the refusal or a stream failure under the visitor's
            // reads (which takes precedence).
            assert!(!matches!(e, TarError::BadPath { .. } | TarError::UnsupportedType { .. }), "{e:?}");
        }
    }
    (seen, res)
}

/// A stream that was accepted, packed again with [`PackWriter`], must be
/// accepted again with the same entries: whatever the reader accepts, the
/// writer can express.
pub fn check_repack(seen: &[Visited], limits: &Limits) {
    let mut w = PackWriter::new(Vec::new(), 1).expect("pack writer");
    for (h, data) in seen {
        let data = data.as_ref().expect("accepted stream read in full");
        match h.kind {
            EntryKind::File => w.append_file(h, &mut &data[..]),
            EntryKind::Dir => w.append_dir(h),
            EntryKind::Symlink => w.append_symlink(h),
        }
        .unwrap_or_else(|e| panic!("the writer refuses an entry the reader accepted: {h:?}: {e}"));
    }
    let (bytes, _) = w.finish().expect("finishing the repack");
    let (again, res) = unpack_checked(&bytes, limits, 0);
    res.unwrap_or_else(|e| panic!("repacked stream refused: {e}"));
    assert_eq!(again.len(), seen.len());
    for ((a, da), (b, db)) in again.iter().zip(seen) {
        assert_eq!(a, b, "entry changed through unpack/pack/unpack");
        assert_eq!(da, db, "data changed through unpack/pack/unpack");
    }
}

fn check_stream(stream: &[u8], style: u8) {
    let limits = small_limits();
    let (seen, res) = unpack_checked(stream, &limits, style);
    if res.is_ok() && style & 1 == 0 {
        check_repack(&seen, &limits);
    }
}

/// Compresses `raw` as the writer would (one zstd frame with a checksum).
pub fn compress(raw: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    enc.include_checksum(true).expect("zstd checksum");
    std::io::Write::write_all(&mut enc, raw).expect("zstd write");
    enc.finish().expect("zstd finish")
}

/// The `tar` target: `data` as a compressed stream (exercising the zstd
/// layer), and `data` compressed first (exercising the tar parser). The sum
/// of the bytes picks the visitor's behaviour (read all, part or none of an
/// entry's data; refuse the third entry). Panics if
/// `unpack` panics, calls the visitor with an invalid path or header, more
/// than `max_entries` times or past the size limits, hands out more data
/// than an entry has, takes unbounded heap, or accepts a stream whose
/// entries do not survive a repack.
pub fn fuzz_tar(data: &[u8]) {
    let style = data.iter().fold(0u8, |a, &b| a.wrapping_add(b)) % 8;
    check_stream(data, style);
    check_stream(&compress(data), style);
}
