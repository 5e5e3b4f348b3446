//! Target `snapshot`: [`SnapshotDecoder`] (the replica's metadata stream)
//! on arbitrary bytes, with small limits: never a panic, bounded heap (the
//! decoder holds one record and the directory chain), every accepted entry
//! valid and in pre-order, and a stream decoded whole re-encodes to the
//! same entries.

use cs_protocol::{EntryKind, SnapshotEntry};
use cs_wire::{SnapshotDecoder, SnapshotEncoder, SnapshotLimits};

use crate::alloc_meter::measure;
use crate::relpath::check_accepted;

/// Small limits, so that the bounds are reached by small inputs.
pub const SMALL_SNAPSHOT_LIMITS: SnapshotLimits = SnapshotLimits { max_entries: 64, max_record_bytes: 4096 };

/// Most Rust heap a decode may take (zstd's own buffers are C allocations,
/// bounded by the decoder's window limit): a record, the directory chain of
/// at most `max_entries` names, the entries kept here, and slack.
pub fn snapshot_alloc_bound() -> usize {
    4 << 20
}

pub fn fuzz_snapshot(data: &[u8]) {
    let (res, peak) = measure(|| -> Result<Vec<SnapshotEntry>, cs_wire::SnapshotStreamError> {
        SnapshotDecoder::with_limits(data, SMALL_SNAPSHOT_LIMITS)?.collect()
    });
    if let Some(peak) = peak {
        assert!(peak <= snapshot_alloc_bound(), "decoding {} bytes took {peak} bytes of heap", data.len());
    }
    let entries = match res {
        Ok(e) => e,
        Err(e) => {
            // Printable, and names an index unless the count bound was hit.
            let _ = (e.to_string(), e.index());
            return;
        }
    };
    assert!(entries.len() as u64 <= SMALL_SNAPSHOT_LIMITS.max_entries);
    let mut seen = std::collections::BTreeSet::new();
    for e in &entries {
        check_accepted(&e.path, None);
        assert_eq!(e.kind == EntryKind::Symlink, e.target.is_some(), "{e:?}");
        assert_eq!(e.mode & !0o7777, 0);
        assert!(seen.insert(e.path.clone()), "{} twice", e.path);
        if let Some(parent) = e.path.parent() {
            let d = entries.iter().position(|x| x.path == parent).expect("its directory is in the stream");
            assert_eq!(entries[d].kind, EntryKind::Dir);
        }
    }
    let mut enc = SnapshotEncoder::new(Vec::new(), 1).expect("encoder");
    for e in &entries {
        enc.push(e).expect("re-encoding an accepted entry");
    }
    let (bytes, n, _) = enc.finish().expect("finishing");
    assert_eq!(n, entries.len() as u64);
    let back: Vec<SnapshotEntry> =
        SnapshotDecoder::with_limits(&bytes[..], SMALL_SNAPSHOT_LIMITS).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, entries, "entries changed through encode/decode");
}
