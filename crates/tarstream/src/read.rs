//! The receiving side: [`unpack`].
//!
//! Design note: the `tar` crate's `Archive::entries()` resolves PAX and GNU
//! long-name extensions itself, but it reads each extension record with
//! `read_to_end` for whatever size the header declares (tar 0.4.46,
//! `EntryFields::read_all`), before we could look at that size: a hostile
//! "1 GiB PAX record" of compressible zeros would be allocated in full. So the
//! header level is implemented here: 512-byte blocks are read from the
//! decompressor, the `tar::Header` type is used only for its field layout,
//! and numeric fields, checksums and PAX records are parsed by [`crate::pax`]
//! with every size checked against [`Limits`] before anything is allocated.

use std::ffi::OsString;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStringExt;

use cs_protocol::{EntryKind, Escaped, PathError, RelPath, Timestamp};

use crate::error::{TarError, VisitError};
use crate::pax::{self, BLOCK};
use crate::write::pad_len;
use crate::{
    EntryHeader, Limits, MAX_EXTENSION_HEADERS, MAX_LINK_TARGET_LEN, MAX_TRAILING_ZEROS, WINDOW_LOG_MAX,
    WITHDRAW_TYPEFLAG,
};

/// What [`unpack_events`] hands its visitor.
pub enum Event<'a> {
    /// An entry, with a reader limited to its data.
    Entry(&'a EntryHeader, &'a mut dyn Read),
    /// The sender withdrew the file entry visited just before (same path):
    /// its data is wrong (the file changed while it was packed) and must be
    /// discarded. Only ever follows an `Entry` of a regular file with this
    /// path, at most once.
    Withdraw(&'a RelPath),
}

/// Counters of one [`unpack`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries visited.
    pub entries: u64,
    /// File data bytes (sum of the file sizes).
    pub payload_bytes: u64,
    /// Uncompressed tar bytes, headers and padding included.
    pub uncompressed_bytes: u64,
    /// Compressed bytes read from the underlying reader (it is read through
    /// a buffer, so this may include some read-ahead past the frame).
    pub compressed_bytes: u64,
    /// Entries withdrawn by the sender (counted in `entries` too).
    pub withdrawn: u64,
}

/// Counts the compressed bytes consumed and remembers how the underlying
/// reader ended, to classify decoder errors.
struct CountingReader<R> {
    inner: R,
    count: u64,
    failed: bool,
    eof: bool,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                if n == 0 && !buf.is_empty() {
                    self.eof = true;
                }
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = true;
                }
                Err(e)
            }
        }
    }
}

/// A failure of the decompressed stream, before it is given its entry
/// context.
#[derive(Debug)]
enum SrcError {
    Io(io::Error),
    Compression(io::Error),
    Truncated,
    Ratio(u64),
}

impl SrcError {
    fn at(self, index: u64, path: Option<String>, during: &'static str) -> TarError {
        match self {
            SrcError::Io(source) => TarError::Io { index, path, source },
            SrcError::Compression(source) => TarError::Compression { index, path, source },
            SrcError::Truncated => TarError::Truncated { index, path, during },
            SrcError::Ratio(limit) => TarError::LimitExceeded { index, path, what: "decompression ratio", limit },
        }
    }

    /// An `io::Error` describing this failure, for the visitor's reader.
    fn to_io(&self) -> io::Error {
        match self {
            SrcError::Io(e) | SrcError::Compression(e) => io::Error::new(e.kind(), e.to_string()),
            SrcError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, "tar stream truncated in entry data"),
            SrcError::Ratio(_) => io::Error::other("tar stream exceeds the decompression ratio limit"),
        }
    }
}

type ZDecoder<R> = zstd::stream::read::Decoder<'static, BufReader<CountingReader<R>>>;

/// The decompressed tar byte stream, with the ratio check on every read.
struct Source<R: Read> {
    dec: ZDecoder<R>,
    produced: u64,
    max_ratio: u64,
    grace: u64,
}

impl<R: Read> Source<R> {
    fn consumed(&self) -> u64 {
        self.dec.get_ref().get_ref().count
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, SrcError> {
        let n = loop {
            match self.dec.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let inner = self.dec.get_ref().get_ref();
                    return Err(if inner.failed {
                        SrcError::Io(e)
                    } else if inner.eof && e.kind() == io::ErrorKind::UnexpectedEof {
                        SrcError::Truncated
                    } else {
                        SrcError::Compression(e)
                    });
                }
            }
        };
        self.produced += n as u64;
        if self.produced > self.grace && self.produced > self.max_ratio.saturating_mul(self.consumed()) {
            return Err(SrcError::Ratio(self.max_ratio));
        }
        Ok(n)
    }

    /// Fills `buf` completely. `Ok(false)` if the stream ended before its
    /// first byte; a partial fill is `Truncated`.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool, SrcError> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..])? {
                0 if got == 0 => return Ok(false),
                0 => return Err(SrcError::Truncated),
                n => got += n,
            }
        }
        Ok(true)
    }

    /// Reads and discards `n` bytes.
    fn skip(&mut self, mut n: u64, scratch: &mut [u8]) -> Result<(), SrcError> {
        while n > 0 {
            let want = n.min(scratch.len() as u64) as usize;
            match self.read(&mut scratch[..want])? {
                0 => return Err(SrcError::Truncated),
                k => n -= k as u64,
            }
        }
        Ok(())
    }
}

/// The reader handed to the visitor: at most `remaining` bytes of entry
/// data. A stream failure is kept so that `unpack` reports it in preference
/// to whatever the visitor makes of the resulting `io::Error`.
struct EntryReader<'a, R: Read> {
    src: &'a mut Source<R>,
    remaining: u64,
    failed: Option<SrcError>,
}

impl<R: Read> Read for EntryReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.to_io());
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.remaining.min(buf.len() as u64) as usize;
        let res = match self.src.read(&mut buf[..want]) {
            Ok(0) => Err(SrcError::Truncated),
            other => other,
        };
        match res {
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) => {
                let io = e.to_io();
                self.failed = Some(e);
                Err(io)
            }
        }
    }
}

/// Extension data collected for the next real entry.
#[derive(Default)]
struct Pending {
    count: u32,
    pax_path: Option<Vec<u8>>,
    pax_linkpath: Option<Vec<u8>>,
    pax_mtime: Option<Vec<u8>>,
    pax_size: Option<Vec<u8>>,
    gnu_sparse: bool,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

/// Reads a zstd-compressed tar stream entry by entry (streaming: memory is
/// independent of stream and file sizes), validates each header and calls
/// `visit` with it and a reader limited to that entry's data. Whatever the
/// visitor leaves unread is drained, so the next entry still parses.
///
/// Returns at the end-of-archive marker (after checking the rest of the zstd
/// frame). Any error aborts: see [`TarError`] for what each variant means. A
/// visitor's error is returned as [`TarError::Visit`] with the entry path,
/// unless the stream itself failed under the visitor's reads (truncation,
/// corruption, ratio limit): then that failure is returned.
///
/// A withdraw marker (see the crate documentation) cannot be honoured by
/// this visitor, which has taken the entry already: it ends the stream with
/// [`TarError::Withdrawn`]. Use [`unpack_events`] to apply entries.
pub fn unpack<R: Read>(
    r: R,
    limits: &Limits,
    mut visit: impl FnMut(&EntryHeader, &mut dyn Read) -> Result<(), VisitError>,
) -> Result<UnpackStats, TarError> {
    let res = unpack_events(r, limits, |ev| match ev {
        Event::Entry(h, data) => visit(h, data),
        Event::Withdraw(_) => Err(Box::new(WithdrawRefused)),
    });
    match res {
        Err(TarError::Visit { index, path, source }) if source.is::<WithdrawRefused>() => {
            Err(TarError::Withdrawn { index, path })
        }
        other => other,
    }
}

/// [`unpack`]'s visitor cannot undo an entry.
#[derive(Debug, thiserror::Error)]
#[error("withdraw marker")]
struct WithdrawRefused;

/// [`unpack`] with withdraw markers: the visitor gets each entry as
/// [`Event::Entry`] and each withdraw marker as [`Event::Withdraw`] (right
/// after the entry it withdraws). A receiver that applies entries should
/// make a file final only when the next event is an entry or the end of the
/// stream, and discard it on a withdraw.
pub fn unpack_events<R: Read>(
    r: R,
    limits: &Limits,
    mut visit: impl FnMut(Event<'_>) -> Result<(), VisitError>,
) -> Result<UnpackStats, TarError> {
    let counting = CountingReader { inner: r, count: 0, failed: false, eof: false };
    let comp = |source| TarError::Compression { index: 0, path: None, source };
    let buffered = BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), counting);
    let mut dec = zstd::stream::read::Decoder::with_buffer(buffered).map_err(comp)?.single_frame();
    dec.window_log_max(WINDOW_LOG_MAX).map_err(comp)?;
    let mut src = Source { dec, produced: 0, max_ratio: limits.max_ratio, grace: limits.ratio_grace_bytes };

    let mut stats = UnpackStats::default();
    let mut scratch = vec![0u8; 64 << 10];
    let mut pending = Pending::default();
    let mut block = [0u8; BLOCK];
    let mut index: u64 = 0;
    // The last entry visited, while it is a file that may be withdrawn.
    let mut last_file: Option<RelPath> = None;
    loop {
        let hint = pending_path_hint(&pending);
        if !src.read_full(&mut block).map_err(|e| e.at(index, hint.clone(), "reading a header"))? {
            return Err(TarError::Truncated {
                index,
                path: hint,
                during: "reading a header (no end-of-archive marker)",
            });
        }
        let malformed = |reason: String| TarError::Malformed { index, path: hint.clone(), reason };
        if block.iter().all(|&b| b == 0) {
            if pending.count > 0 {
                return Err(malformed("extension header not followed by an entry".into()));
            }
            finish_stream(&mut src, &mut block, &mut scratch, index)?;
            stats.uncompressed_bytes = src.produced;
            stats.compressed_bytes = src.consumed();
            return Ok(stats);
        }
        if !pax::checksum_ok(&block) {
            return Err(malformed("header checksum mismatch".into()));
        }
        let magic = &block[257..265];
        if magic != b"ustar\x0000" && magic != b"ustar  \0" {
            return Err(malformed(format!("not a ustar/GNU header (magic {:?})", String::from_utf8_lossy(magic))));
        }
        let header = tar::Header::from_byte_slice(&block);
        let typeflag = block[156];
        let size_field =
            pax::parse_numeric(&header.as_old().size).map_err(|e| malformed(format!("size field: {e}")))?;
        let size_field = u64::try_from(size_field).map_err(|_| malformed(format!("negative size {size_field}")))?;

        if matches!(typeflag, b'x' | b'g' | b'L' | b'K') {
            pending.count += 1;
            if pending.count > MAX_EXTENSION_HEADERS {
                return Err(malformed(format!("more than {MAX_EXTENSION_HEADERS} extension headers in a row")));
            }
            if size_field > limits.max_pax_bytes {
                return Err(TarError::LimitExceeded {
                    index,
                    path: hint,
                    what: "extension record size",
                    limit: limits.max_pax_bytes,
                });
            }
            let mut data = vec![0u8; size_field as usize];
            let during = "reading an extension record";
            if !src.read_full(&mut data).map_err(|e| e.at(index, hint.clone(), during))? {
                return Err(SrcError::Truncated.at(index, hint, during));
            }
            src.skip(pad_len(size_field) as u64, &mut scratch).map_err(|e| e.at(index, hint.clone(), during))?;
            match typeflag {
                b'x' | b'g' => {
                    let records = pax::parse_records(&data).map_err(malformed)?;
                    if typeflag == b'x' {
                        for (key, value) in records {
                            let value = (!value.is_empty()).then(|| value.to_vec());
                            match key {
                                "path" => pending.pax_path = value,
                                "linkpath" => pending.pax_linkpath = value,
                                "mtime" => pending.pax_mtime = value,
                                // Paths are taken as bytes either way; any
                                // other character set would need converting.
                                "hdrcharset"
                                    if !matches!(value.as_deref(), Some(b"BINARY" | b"ISO-IR 10646 2000 UTF-8")) =>
                                {
                                    return Err(malformed(format!(
                                        "unsupported PAX hdrcharset {:?}",
                                        String::from_utf8_lossy(value.as_deref().unwrap_or_default())
                                    )))
                                }
                                "size" => pending.pax_size = value,
                                k if k.starts_with("GNU.sparse.") => pending.gnu_sparse = true,
                                _ => {}
                            }
                        }
                    }
                }
                _ => {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    if typeflag == b'L' {
                        pending.long_name = Some(data);
                    } else {
                        pending.long_link = Some(data);
                    }
                }
            }
            continue;
        }

        // A real entry.
        let raw_path: Vec<u8> = match (&pending.pax_path, &pending.long_name) {
            (Some(p), _) | (None, Some(p)) => p.clone(),
            (None, None) => header_path(header),
        };
        // Escaped (as RelPath shows), for messages.
        let lossy = Escaped(&raw_path).to_string();
        let malformed = |reason: String| TarError::Malformed { index, path: Some(lossy.clone()), reason };
        if typeflag == WITHDRAW_TYPEFLAG {
            let path = parse_path(raw_path, EntryKind::File).map_err(|source| TarError::BadPath {
                index,
                raw: lossy.clone(),
                source,
            })?;
            if pending.gnu_sparse || pending.pax_size.is_some() || size_field != 0 {
                return Err(malformed("withdraw marker with data or a size".into()));
            }
            if last_file.take().as_ref() != Some(&path) {
                return Err(malformed("withdraw marker that does not follow the entry of that file".into()));
            }
            let withdrawn = index - 1; // a file entry was visited: index >= 1
            visit(Event::Withdraw(&path)).map_err(|source| TarError::Visit { index: withdrawn, path, source })?;
            stats.withdrawn += 1;
            pending = Pending::default();
            continue;
        }
        let kind = match typeflag {
            b'0' | b'\0' => EntryKind::File,
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink,
            other => return Err(TarError::UnsupportedType { index, path: lossy, kind: type_name(other) }),
        };
        if pending.gnu_sparse {
            return Err(TarError::UnsupportedType {
                index,
                path: lossy,
                kind: "GNU sparse file (PAX GNU.sparse.* records)".into(),
            });
        }
        if index >= limits.max_entries {
            return Err(TarError::LimitExceeded {
                index,
                path: Some(lossy),
                what: "number of entries",
                limit: limits.max_entries,
            });
        }
        let path =
            parse_path(raw_path, kind).map_err(|source| TarError::BadPath { index, raw: lossy.clone(), source })?;
        let size = match &pending.pax_size {
            Some(s) => std::str::from_utf8(s)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| malformed(format!("bad PAX size {:?}", String::from_utf8_lossy(s))))?,
            None => size_field,
        };
        if kind != EntryKind::File && size != 0 {
            return Err(malformed(format!("{kind:?} entry with non-zero size {size}")));
        }
        let mode = pax::parse_numeric(&header.as_old().mode).map_err(|e| malformed(format!("mode field: {e}")))?;
        let mode = (mode as u32) & 0o7777;
        let mtime = match &pending.pax_mtime {
            Some(m) => pax::parse_time(m)
                .ok_or_else(|| malformed(format!("bad PAX mtime {:?}", String::from_utf8_lossy(m))))?,
            None => Timestamp::new(
                pax::parse_numeric(&header.as_old().mtime).map_err(|e| malformed(format!("mtime field: {e}")))?,
                0,
            ),
        };
        let link_target = if kind == EntryKind::Symlink {
            let raw = match (&pending.pax_linkpath, &pending.long_link) {
                (Some(p), _) | (None, Some(p)) => p.clone(),
                (None, None) => trim_nul(&header.as_old().linkname).to_vec(),
            };
            let bad =
                |reason: &str| TarError::BadLinkTarget { index, path: path.to_string(), reason: reason.to_string() };
            if raw.is_empty() {
                return Err(bad("empty target"));
            }
            if raw.len() > MAX_LINK_TARGET_LEN {
                return Err(bad(&format!("{} bytes long; the limit is 4096", raw.len())));
            }
            if raw.contains(&0) {
                return Err(bad("contains a NUL byte"));
            }
            Some(OsString::from_vec(raw))
        } else {
            None
        };
        if size > limits.max_entry_bytes {
            return Err(TarError::LimitExceeded {
                index,
                path: Some(path.to_string()),
                what: "entry size",
                limit: limits.max_entry_bytes,
            });
        }
        if stats.payload_bytes.saturating_add(size) > limits.max_total_bytes {
            return Err(TarError::LimitExceeded {
                index,
                path: Some(path.to_string()),
                what: "total size",
                limit: limits.max_total_bytes,
            });
        }

        let entry = EntryHeader { path, kind, mode, mtime, size, link_target };
        last_file = None;
        let mut reader = EntryReader { src: &mut src, remaining: size, failed: None };
        let visited = visit(Event::Entry(&entry, &mut reader));
        let during = "reading entry data";
        if let Some(e) = reader.failed.take() {
            return Err(e.at(index, Some(entry.path.to_string()), during));
        }
        if let Err(source) = visited {
            return Err(TarError::Visit { index, path: entry.path, source });
        }
        let rest = reader.remaining;
        src.skip(rest + pad_len(size) as u64, &mut scratch)
            .map_err(|e| e.at(index, Some(entry.path.to_string()), during))?;
        stats.entries += 1;
        stats.payload_bytes += size;
        index += 1;
        pending = Pending::default();
        if kind == EntryKind::File {
            last_file = Some(entry.path);
        }
    }
}

/// After the first zero block: the second one, then only zeros (bounded)
/// up to the end of the zstd frame, which also verifies its checksum.
fn finish_stream<R: Read>(
    src: &mut Source<R>,
    block: &mut [u8; BLOCK],
    scratch: &mut [u8],
    index: u64,
) -> Result<(), TarError> {
    let during = "reading the end-of-archive marker";
    if !src.read_full(block).map_err(|e| e.at(index, None, during))? {
        return Err(SrcError::Truncated.at(index, None, during));
    }
    let malformed = |reason: &str| TarError::Malformed { index, path: None, reason: reason.into() };
    if block.iter().any(|&b| b != 0) {
        return Err(malformed("a single zero block is not an end-of-archive marker"));
    }
    let mut trailing: u64 = 0;
    loop {
        let n = src.read(scratch).map_err(|e| e.at(index, None, "reading past the end marker"))?;
        if n == 0 {
            return Ok(());
        }
        if scratch[..n].iter().any(|&b| b != 0) {
            return Err(malformed("data after the end-of-archive marker"));
        }
        trailing += n as u64;
        if trailing > MAX_TRAILING_ZEROS {
            return Err(malformed("too much padding after the end-of-archive marker"));
        }
    }
}

fn pending_path_hint(p: &Pending) -> Option<String> {
    p.pax_path.as_ref().or(p.long_name.as_ref()).map(|b| Escaped(b).to_string())
}

fn trim_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

/// The path from the ustar `prefix`/`name` fields (GNU headers have no
/// prefix: those bytes hold other data).
fn header_path(h: &tar::Header) -> Vec<u8> {
    let name = trim_nul(&h.as_old().name);
    match h.as_ustar() {
        Some(u) if u.prefix[0] != 0 => {
            let mut p = trim_nul(&u.prefix).to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            p
        }
        _ => name.to_vec(),
    }
}

fn parse_path(mut raw: Vec<u8>, kind: EntryKind) -> Result<RelPath, PathError> {
    if kind == EntryKind::Dir && raw.len() > 1 && raw.last() == Some(&b'/') {
        raw.pop();
    }
    RelPath::new(raw)
}

fn type_name(flag: u8) -> String {
    let what = match flag {
        b'1' => "hard link",
        b'3' => "character device",
        b'4' => "block device",
        b'6' => "fifo",
        b'7' => "contiguous file",
        b'S' => "GNU sparse file",
        b'D' => "GNU dump directory",
        b'M' => "GNU multi-volume continuation",
        b'V' => "GNU volume label",
        b'N' => "GNU old long name",
        _ => "unknown",
    };
    format!("{what} (typeflag {:?})", char::from(flag))
}
