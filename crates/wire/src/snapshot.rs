//! The snapshot stream (`ClientMsg::Snapshot`, docs/protocol.md *Snapshot*):
//! P's metadata of the whole project as one zstd stream of records, encoded
//! and decoded here only.
//!
//! Inside the zstd stream, each entry is a record: its length as a `u32`
//! little-endian (1 to [`MAX_SNAPSHOT_RECORD_BYTES`]) followed by that many
//! bytes of MessagePack (named fields) of a [`SnapshotEntry`]. The stream
//! ends with the end record: a length of 0 followed by the number of entries
//! as a `u64` little-endian, and nothing after it. So a decoder holds one
//! record at a time (bounded memory whatever the number of entries), and a
//! stream cut anywhere, even between two records, is told from a whole one.
//!
//! The decoder checks what a replica builds on: at most
//! [`MAX_SNAPSHOT_ENTRIES`] entries, each a valid entry (a symlink with its
//! target, nothing else with one, permission bits only), in pre-order (each
//! entry's directory is an earlier directory entry of the stream, or the
//! root) with the names of one directory in strictly increasing byte order
//! (so no path comes twice). Anything else is an error naming the entry's
//! index (and its path once decoded), never a panic.

use std::io::{self, Read, Write};

use cs_protocol::{EntryKind, SnapshotEntry};

/// Most entries one snapshot stream may carry.
pub const MAX_SNAPSHOT_ENTRIES: u64 = 10_000_000;
/// Most bytes of one record (an entry's MessagePack): a path and a symlink
/// target of a few KiB each fit many times over.
pub const MAX_SNAPSHOT_RECORD_BYTES: usize = 64 << 10;
/// The decoder's bound on the zstd window (16 MiB): the encoder's levels
/// stay far below it, and a hostile stream cannot make it allocate more.
const WINDOW_LOG_MAX: u32 = 24;

/// The decoder's bounds (the defaults are the protocol's; tests lower them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    pub max_entries: u64,
    pub max_record_bytes: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits { max_entries: MAX_SNAPSHOT_ENTRIES, max_record_bytes: MAX_SNAPSHOT_RECORD_BYTES }
    }
}

/// Why a snapshot stream could not be written or read. `index` is the
/// entry's position in the stream (0 for the first).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStreamError {
    /// The underlying stream failed (the connection, an abort) or the
    /// compressed data is not zstd.
    #[error("snapshot stream, entry {index}: reading or decompressing: {source}")]
    Read {
        index: u64,
        #[source]
        source: io::Error,
    },
    #[error("snapshot stream, entry {index}: writing: {source}")]
    Write {
        index: u64,
        #[source]
        source: io::Error,
    },
    /// The stream ended before its end record.
    #[error("snapshot stream truncated at entry {index} (no end record)")]
    Truncated { index: u64 },
    #[error("snapshot stream, entry {index}: a record of {len} bytes (at most {max})")]
    RecordTooLarge { index: u64, len: usize, max: usize },
    #[error("snapshot stream: more than {max} entries")]
    TooManyEntries { max: u64 },
    /// The record is not a snapshot entry (`path` if that much decoded).
    #[error("snapshot stream, entry {index}{}: {reason}", path_suffix(.path))]
    Invalid { index: u64, path: Option<String>, reason: String },
    #[error("snapshot stream: the end record says {said} entries, the stream carried {index}")]
    CountMismatch { index: u64, said: u64 },
    #[error("snapshot stream: data after the end record (after {index} entries)")]
    Trailing { index: u64 },
}

fn path_suffix(p: &Option<String>) -> String {
    p.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
}

impl SnapshotStreamError {
    /// The entry's index the error names, if any.
    pub fn index(&self) -> Option<u64> {
        match self {
            SnapshotStreamError::Read { index, .. }
            | SnapshotStreamError::Write { index, .. }
            | SnapshotStreamError::Truncated { index }
            | SnapshotStreamError::RecordTooLarge { index, .. }
            | SnapshotStreamError::Invalid { index, .. }
            | SnapshotStreamError::CountMismatch { index, .. }
            | SnapshotStreamError::Trailing { index } => Some(*index),
            SnapshotStreamError::TooManyEntries { .. } => None,
        }
    }
}

/// Counts the compressed bytes written.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot stream: [`SnapshotEncoder::push`] each entry (in
/// pre-order), then [`SnapshotEncoder::finish`].
pub struct SnapshotEncoder<W: Write> {
    z: zstd::stream::write::Encoder<'static, Counting<W>>,
    entries: u64,
    buf: Vec<u8>,
}

impl<W: Write> SnapshotEncoder<W> {
    pub fn new(w: W, level: i32) -> Result<Self, SnapshotStreamError> {
        let z = zstd::stream::write::Encoder::new(Counting { inner: w, bytes: 0 }, level)
            .map_err(|source| SnapshotStreamError::Write { index: 0, source })?;
        Ok(SnapshotEncoder { z, entries: 0, buf: Vec::with_capacity(256) })
    }

    /// Entries pushed so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Appends one entry. The encoder trusts its caller for the order
    /// (the decoder checks it).
    pub fn push(&mut self, e: &SnapshotEntry) -> Result<(), SnapshotStreamError> {
        let index = self.entries;
        if index >= MAX_SNAPSHOT_ENTRIES {
            return Err(SnapshotStreamError::TooManyEntries { max: MAX_SNAPSHOT_ENTRIES });
        }
        self.buf.clear();
        rmp_serde::encode::write_named(&mut self.buf, e).map_err(|err| SnapshotStreamError::Invalid {
            index,
            path: Some(e.path.to_string()),
            reason: format!("encoding: {err}"),
        })?;
        if self.buf.len() > MAX_SNAPSHOT_RECORD_BYTES {
            return Err(SnapshotStreamError::RecordTooLarge {
                index,
                len: self.buf.len(),
                max: MAX_SNAPSHOT_RECORD_BYTES,
            });
        }
        let write = |z: &mut zstd::stream::write::Encoder<'static, Counting<W>>, b: &[u8]| {
            z.write_all(&(b.len() as u32).to_le_bytes())?;
            z.write_all(b)
        };
        write(&mut self.z, &self.buf).map_err(|source| SnapshotStreamError::Write { index, source })?;
        self.entries += 1;
        Ok(())
    }

    /// Writes the end record and ends the zstd stream. Returns the writer,
    /// the number of entries and the compressed bytes written.
    pub fn finish(mut self) -> Result<(W, u64, u64), SnapshotStreamError> {
        let index = self.entries;
        let err = |source| SnapshotStreamError::Write { index, source };
        self.z.write_all(&0u32.to_le_bytes()).map_err(err)?;
        self.z.write_all(&index.to_le_bytes()).map_err(err)?;
        let c = self.z.finish().map_err(err)?;
        Ok((c.inner, index, c.bytes))
    }
}

/// One directory of the stream's pre-order: its path (`None`: the root) and
/// the name of its last entry so far.
struct Level {
    dir: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
}

/// Reads a snapshot stream entry by entry, checking it (see the module).
pub struct SnapshotDecoder<R: Read> {
    z: zstd::stream::read::Decoder<'static, io::BufReader<R>>,
    limits: SnapshotLimits,
    index: u64,
    done: bool,
    levels: Vec<Level>,
    buf: Vec<u8>,
}

impl<R: Read> SnapshotDecoder<R> {
    pub fn new(r: R) -> Result<Self, SnapshotStreamError> {
        Self::with_limits(r, SnapshotLimits::default())
    }

    pub fn with_limits(r: R, limits: SnapshotLimits) -> Result<Self, SnapshotStreamError> {
        let err = |source| SnapshotStreamError::Read { index: 0, source };
        let mut z = zstd::stream::read::Decoder::new(r).map_err(err)?;
        z.window_log_max(WINDOW_LOG_MAX).map_err(err)?;
        Ok(SnapshotDecoder {
            z,
            limits,
            index: 0,
            done: false,
            levels: vec![Level { dir: None, last: None }],
            buf: Vec::new(),
        })
    }

    /// Entries decoded so far.
    pub fn entries(&self) -> u64 {
        self.index
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended first.
    fn read_full(&mut self, len: usize) -> Result<bool, SnapshotStreamError> {
        self.buf.resize(len, 0);
        let mut got = 0;
        while got < len {
            match self.z.read(&mut self.buf[got..len]) {
                Ok(0) => return Ok(false),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SnapshotStreamError::Read { index: self.index, source }),
            }
        }
        Ok(true)
    }

    /// The next entry, or `None` after the end record (the stream checked
    /// whole). After an error, the stream is unusable.
    pub fn next_entry(&mut self) -> Result<Option<SnapshotEntry>, SnapshotStreamError> {
        if self.done {
            return Ok(None);
        }
        let index = self.index;
        if !self.read_full(4)? {
            return Err(SnapshotStreamError::Truncated { index });
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return self.end().map(|()| None);
        }
        if index >= self.limits.max_entries {
            return Err(SnapshotStreamError::TooManyEntries { max: self.limits.max_entries });
        }
        if len > self.limits.max_record_bytes {
            return Err(SnapshotStreamError::RecordTooLarge { index, len, max: self.limits.max_record_bytes });
        }
        if !self.read_full(len)? {
            return Err(SnapshotStreamError::Truncated { index });
        }
        let e: SnapshotEntry = rmp_serde::from_slice(&self.buf[..len]).map_err(|err| SnapshotStreamError::Invalid {
            index,
            path: None,
            reason: format!("not a snapshot entry: {err}"),
        })?;
        self.check(&e)?;
        self.index += 1;
        Ok(Some(e))
    }

    fn end(&mut self) -> Result<(), SnapshotStreamError> {
        let index = self.index;
        if !self.read_full(8)? {
            return Err(SnapshotStreamError::Truncated { index });
        }
        let said = u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes"));
        if said != index {
            return Err(SnapshotStreamError::CountMismatch { index, said });
        }
        let mut one = [0u8; 1];
        loop {
            match self.z.read(&mut one) {
                Ok(0) => break,
                Ok(_) => return Err(SnapshotStreamError::Trailing { index }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(SnapshotStreamError::Read { index, source }),
            }
        }
        self.done = true;
        self.buf = Vec::new();
        Ok(())
    }

    /// The entry's own consistency and its place in the pre-order.
    fn check(&mut self, e: &SnapshotEntry) -> Result<(), SnapshotStreamError> {
        let invalid = |reason: &str| SnapshotStreamError::Invalid {
            index: self.index,
            path: Some(e.path.to_string()),
            reason: reason.to_string(),
        };
        match (e.kind, &e.target) {
            (EntryKind::Symlink, None) => return Err(invalid("a symlink without its target")),
            (EntryKind::Symlink, Some(t)) if t.is_empty() => return Err(invalid("a symlink with an empty target")),
            (EntryKind::File | EntryKind::Dir, Some(_)) => {
                return Err(invalid("a target on an entry that is not a symlink"))
            }
            _ => {}
        }
        if e.mode & !0o7777 != 0 {
            return Err(invalid("mode bits beyond the permissions (0o7777)"));
        }
        let bytes = e.path.as_bytes();
        let (parent, name) = match bytes.iter().rposition(|&b| b == b'/') {
            Some(i) => (Some(&bytes[..i]), &bytes[i + 1..]),
            None => (None, bytes),
        };
        // Leave the directories this entry is not in (never the root).
        while self.levels.len() > 1 && self.levels.last().and_then(|l| l.dir.as_deref()) != parent {
            self.levels.pop();
        }
        let top = self.levels.last_mut().expect("the root level is never popped");
        if top.dir.as_deref() != parent {
            return Err(invalid("its directory is not an earlier directory entry of the stream (pre-order)"));
        }
        if top.last.as_deref().is_some_and(|last| last >= name) {
            return Err(invalid(
                "not after the previous entry of its directory (names in increasing byte order, no duplicates)",
            ));
        }
        top.last = Some(name.to_vec());
        if e.kind == EntryKind::Dir {
            self.levels.push(Level { dir: Some(bytes.to_vec()), last: None });
        }
        Ok(())
    }
}

impl<R: Read> Iterator for SnapshotDecoder<R> {
    type Item = Result<SnapshotEntry, SnapshotStreamError>;

    /// Stops after the end record or the first error.
    fn next(&mut self) -> Option<Self::Item> {
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cs_protocol::{RelPath, Timestamp};

    use super::*;

    fn entry(p: &[u8], kind: EntryKind) -> SnapshotEntry {
        SnapshotEntry {
            path: RelPath::new(p).unwrap(),
            kind,
            mode: if kind == EntryKind::Symlink { 0o777 } else { 0o644 },
            size: 3,
            mtime: Timestamp::new(1_700_000_000, 5),
            target: (kind == EntryKind::Symlink).then(|| b"../x\xff".to_vec()),
        }
    }

    fn tree() -> Vec<SnapshotEntry> {
        vec![
            entry(b"a", EntryKind::Dir),
            entry(b"a/b", EntryKind::Dir),
            entry(b"a/b/f", EntryKind::File),
            entry(b"a/c\xe9", EntryKind::File),
            entry(b"a/l", EntryKind::Symlink),
            entry(b"empty", EntryKind::Dir),
            entry(b"z", EntryKind::File),
        ]
    }

    fn encode(entries: &[SnapshotEntry]) -> Vec<u8> {
        let mut enc = SnapshotEncoder::new(Vec::new(), 3).unwrap();
        for e in entries {
            enc.push(e).unwrap();
        }
        let (out, n, bytes) = enc.finish().unwrap();
        assert_eq!((n, bytes), (entries.len() as u64, out.len() as u64));
        out
    }

    fn decode(b: &[u8], limits: SnapshotLimits) -> Result<Vec<SnapshotEntry>, SnapshotStreamError> {
        SnapshotDecoder::with_limits(b, limits)?.collect()
    }

    /// Raw records (no checks on the writer's side), zstd-compressed.
    fn raw(records: &[&[u8]], end: Option<u64>) -> Vec<u8> {
        let mut plain = Vec::new();
        for r in records {
            plain.extend_from_slice(&(r.len() as u32).to_le_bytes());
            plain.extend_from_slice(r);
        }
        if let Some(n) = end {
            plain.extend_from_slice(&0u32.to_le_bytes());
            plain.extend_from_slice(&n.to_le_bytes());
        }
        zstd::encode_all(&plain[..], 3).unwrap()
    }

    #[test]
    fn a_tree_round_trips_in_order() {
        let t = tree();
        assert_eq!(decode(&encode(&t), SnapshotLimits::default()).unwrap(), t);
        assert_eq!(decode(&encode(&[]), SnapshotLimits::default()).unwrap(), vec![]);
    }

    #[test]
    fn a_stream_cut_anywhere_is_an_error_never_a_panic() {
        let b = encode(&tree());
        for cut in 0..b.len() {
            let e = decode(&b[..cut], SnapshotLimits::default()).unwrap_err();
            assert!(
                matches!(e, SnapshotStreamError::Truncated { .. } | SnapshotStreamError::Read { .. }),
                "cut at {cut}: {e}"
            );
        }
        // Cut between two records (the zstd frame itself whole).
        let recs: Vec<Vec<u8>> = tree().iter().map(|e| rmp_serde::to_vec_named(e).unwrap()).collect();
        let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
        let e = decode(&raw(&refs[..3], None), SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::Truncated { index: 3 }), "{e}");
    }

    #[test]
    fn garbage_and_bad_records_are_typed_errors_naming_the_entry() {
        let e = decode(b"this is not zstd at all", SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::Read { index: 0, .. }), "{e}");
        let ok = rmp_serde::to_vec_named(&entry(b"a", EntryKind::File)).unwrap();
        let e = decode(&raw(&[&ok, b"\xc1garbage"], Some(2)), SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::Invalid { index: 1, path: None, .. }), "{e}");
        // A child before its directory, a duplicate, a file as a directory.
        for (bad, index) in [
            (vec![entry(b"d/f", EntryKind::File)], 0),
            (vec![entry(b"a", EntryKind::File), entry(b"a", EntryKind::File)], 1),
            (vec![entry(b"b", EntryKind::File), entry(b"a", EntryKind::File)], 1),
            (vec![entry(b"a", EntryKind::File), entry(b"a/f", EntryKind::File)], 1),
            (vec![entry(b"a", EntryKind::Dir), entry(b"b", EntryKind::Dir), entry(b"a/f", EntryKind::File)], 2),
        ] {
            let e = decode(&encode(&bad), SnapshotLimits::default()).unwrap_err();
            match &e {
                SnapshotStreamError::Invalid { index: i, path: Some(p), .. } => {
                    assert_eq!((*i, p.as_str()), (index, bad[index as usize].path.to_string().as_str()), "{e}")
                }
                other => panic!("{bad:?}: {other}"),
            }
        }
        let mut link = entry(b"l", EntryKind::Symlink);
        link.target = None;
        let e = decode(&encode(&[link]), SnapshotLimits::default()).unwrap_err();
        assert!(e.to_string().contains("entry 0 (l): a symlink without its target"), "{e}");
        // A wrong count in the end record, and data after it.
        let e = decode(&raw(&[&ok], Some(2)), SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::CountMismatch { index: 1, said: 2 }), "{e}");
        let mut b = encode(&[entry(b"a", EntryKind::File)]);
        b.extend(zstd::encode_all(&b"more"[..], 3).unwrap());
        let e = decode(&b, SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::Trailing { index: 1 }), "{e}");
    }

    #[test]
    fn over_limit_counts_and_records_are_refused() {
        let t = tree();
        let limits = SnapshotLimits { max_entries: 3, ..Default::default() };
        let e = decode(&encode(&t), limits).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::TooManyEntries { max: 3 }), "{e}");
        let limits = SnapshotLimits { max_record_bytes: 16, ..Default::default() };
        let e = decode(&encode(&t), limits).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::RecordTooLarge { index: 0, max: 16, .. }), "{e}");
        // A length prefix of 4 GiB is refused before anything is allocated.
        let mut plain = u32::MAX.to_le_bytes().to_vec();
        plain.extend_from_slice(&[0; 16]);
        let e = decode(&zstd::encode_all(&plain[..], 3).unwrap(), SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotStreamError::RecordTooLarge { index: 0, .. }), "{e}");
    }
}
