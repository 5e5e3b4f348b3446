//! The sending side: [`PackWriter`].

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use cs_protocol::{EntryKind, RelPath};

use crate::error::TarError;
use crate::pax::{self, BLOCK};
use crate::{EntryHeader, MAX_LINK_TARGET_LEN, WINDOW_LOG_MAX};

/// Largest value of an 11-digit octal ustar field (`size`, `mtime`).
const OCTAL11_MAX: u64 = (1 << 33) - 1;
const COPY_BUF: usize = 64 << 10;
const ZEROS: [u8; BLOCK] = [0; BLOCK];
/// `write_headers`' kind for a withdraw marker.
const WITHDRAW_TYPEFLAG_KIND: Option<EntryKind> = None;

/// Counters of a [`PackWriter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Entries written (files, directories, symlinks).
    pub entries: u64,
    /// Uncompressed file data written (sum of the declared sizes).
    pub payload_bytes: u64,
    /// Compressed bytes handed to the underlying writer so far (the encoder
    /// buffers, so this lags until [`PackWriter::finish`]).
    pub compressed_bytes: u64,
    /// File entries withdrawn with [`PackWriter::withdraw`] (not counted in
    /// `entries`; their data is counted in `payload_bytes`).
    pub withdrawn: u64,
}

/// Counts the bytes accepted by the underlying writer and remembers whether
/// it failed (to tell sink errors from zstd errors).
struct CountingWriter<W> {
    inner: W,
    count: u64,
    failed: bool,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.count += n as u64;
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

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Writes entries as a zstd-compressed pax tar stream (see the crate
/// documentation for the format).
///
/// Dropping a writer without calling [`finish`](Self::finish) leaves the
/// stream without its end-of-archive marker, which the reader reports as
/// truncated.
pub struct PackWriter<W: Write> {
    enc: zstd::stream::write::Encoder<'static, CountingWriter<W>>,
    buf: Vec<u8>,
    entries: u64,
    payload: u64,
    withdrawn: u64,
    /// The last entry appended, if it is a file that may still be withdrawn.
    last_file: Option<RelPath>,
    poisoned: bool,
}

impl<W: Write> PackWriter<W> {
    /// Starts a stream compressed at `zstd_level` (as for the `zstd` tool;
    /// 0 means zstd's default, 3). Levels above 19 are capped to a 2^23-byte
    /// window, which the reader requires.
    pub fn new(w: W, zstd_level: i32) -> Result<Self, TarError> {
        let sink = CountingWriter { inner: w, count: 0, failed: false };
        let comp = |source| TarError::Compression { index: 0, path: None, source };
        let mut enc = zstd::stream::write::Encoder::new(sink, zstd_level).map_err(comp)?;
        enc.include_checksum(true).map_err(comp)?;
        if zstd_level > 19 {
            enc.window_log(WINDOW_LOG_MAX).map_err(comp)?;
        }
        Ok(PackWriter { enc, buf: Vec::new(), entries: 0, payload: 0, withdrawn: 0, last_file: None, poisoned: false })
    }

    /// Appends a regular file, copying exactly `h.size` bytes from `data`.
    ///
    /// If `data` has fewer bytes (the file shrank while being read), the entry
    /// is zero-padded to `h.size`; if it has more, the rest is not read; a
    /// read error likewise zero-pads. In these cases the stream stays
    /// well-formed and usable, and [`TarError::SourceChanged`] or
    /// [`TarError::SourceRead`] tells the caller that this entry's content
    /// is wrong: it must then [`withdraw`](Self::withdraw) the entry (or
    /// drop the whole stream).
    pub fn append_file(&mut self, h: &EntryHeader, data: &mut dyn Read) -> Result<(), TarError> {
        self.check_usable()?;
        expect_kind(h, EntryKind::File)?;
        if h.link_target.is_some() {
            return Err(invalid(h, "a file has no link target"));
        }
        self.last_file = None;
        self.write_headers(h, Some(h.kind), h.size)?;
        let outcome = self.copy_data(h, data)?;
        self.entries += 1;
        self.payload += h.size;
        self.last_file = Some(h.path.clone());
        outcome
    }

    /// Withdraws the file entry just appended (its content turned out wrong:
    /// the file changed while it was read). Writes a withdraw marker (see
    /// the crate documentation), on which the receiver discards that entry.
    /// Only the entry appended last can be withdrawn, and only once; `h` is
    /// the header it was appended with.
    pub fn withdraw(&mut self, h: &EntryHeader) -> Result<(), TarError> {
        self.check_usable()?;
        if self.last_file.as_ref() != Some(&h.path) || h.kind != EntryKind::File {
            return Err(invalid(h, "only the file entry appended last can be withdrawn, once"));
        }
        self.last_file = None;
        self.write_headers(h, WITHDRAW_TYPEFLAG_KIND, 0)?;
        self.entries -= 1;
        self.withdrawn += 1;
        Ok(())
    }

    /// Appends a directory.
    pub fn append_dir(&mut self, h: &EntryHeader) -> Result<(), TarError> {
        self.check_usable()?;
        expect_kind(h, EntryKind::Dir)?;
        if h.size != 0 {
            return Err(invalid(h, "a directory must have size 0"));
        }
        if h.link_target.is_some() {
            return Err(invalid(h, "a directory has no link target"));
        }
        self.last_file = None;
        self.write_headers(h, Some(h.kind), 0)?;
        self.entries += 1;
        Ok(())
    }

    /// Appends a symlink.
    pub fn append_symlink(&mut self, h: &EntryHeader) -> Result<(), TarError> {
        self.check_usable()?;
        expect_kind(h, EntryKind::Symlink)?;
        if h.size != 0 {
            return Err(invalid(h, "a symlink must have size 0"));
        }
        match &h.link_target {
            None => return Err(invalid(h, "a symlink needs a link target")),
            Some(t) if t.is_empty() => return Err(invalid(h, "empty symlink target")),
            Some(t) if t.as_bytes().contains(&0) => return Err(invalid(h, "symlink target contains NUL")),
            Some(t) if t.len() > MAX_LINK_TARGET_LEN => {
                return Err(invalid(h, "symlink target longer than 4096 bytes"))
            }
            Some(_) => {}
        }
        self.last_file = None;
        self.write_headers(h, Some(h.kind), 0)?;
        self.entries += 1;
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> PackStats {
        PackStats {
            entries: self.entries,
            payload_bytes: self.payload,
            compressed_bytes: self.enc.get_ref().count,
            withdrawn: self.withdrawn,
        }
    }

    /// Writes the end-of-archive marker, ends the zstd frame, flushes, and
    /// returns the underlying writer.
    pub fn finish(mut self) -> Result<(W, PackStats), TarError> {
        self.check_usable()?;
        self.write_all(&[0; 2 * BLOCK], None)?;
        let (entries, payload, withdrawn) = (self.entries, self.payload, self.withdrawn);
        let mut sink = match self.enc.finish() {
            Ok(sink) => sink,
            Err(source) => return Err(TarError::Io { index: entries, path: None, source }),
        };
        sink.flush().map_err(|source| TarError::Io { index: entries, path: None, source })?;
        let stats = PackStats { entries, payload_bytes: payload, compressed_bytes: sink.count, withdrawn };
        Ok((sink.inner, stats))
    }

    fn check_usable(&self) -> Result<(), TarError> {
        if self.poisoned {
            Err(TarError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Writes to the encoder; any failure poisons the writer (the stream is
    /// then in an unknown state).
    fn write_all(&mut self, bytes: &[u8], path: Option<&RelPath>) -> Result<(), TarError> {
        self.enc.write_all(bytes).map_err(|source| {
            self.poisoned = true;
            let index = self.entries;
            let path = path.map(|p| p.to_string());
            if self.enc.get_ref().failed {
                TarError::Io { index, path, source }
            } else {
                TarError::Compression { index, path, source }
            }
        })
    }

    /// Writes the PAX extended header (always present: it carries the mtime)
    /// and the ustar header of `h`, as an entry of `kind` (a withdraw marker:
    /// `None`) declaring `size` bytes of data.
    fn write_headers(&mut self, h: &EntryHeader, kind: Option<EntryKind>, size: u64) -> Result<(), TarError> {
        if h.mtime.nsec >= 1_000_000_000 {
            return Err(invalid(h, "mtime nanoseconds must be below 1e9"));
        }
        let mut name = h.path.as_bytes().to_vec();
        if kind == Some(EntryKind::Dir) {
            name.push(b'/');
        }
        let mut records = Vec::new();
        pax::push_record(&mut records, "mtime", pax::format_time(h.mtime).as_bytes());
        let split = std::str::from_utf8(&name).ok().and_then(ustar_split);
        let target = h.link_target.as_deref().map_or(&b""[..], OsStr::as_bytes);
        let target_fits = target.is_ascii() && target.len() <= 100;
        // PAX records are UTF-8 unless the header says its names are raw bytes.
        if std::str::from_utf8(&name).is_err() || std::str::from_utf8(target).is_err() {
            pax::push_record(&mut records, "hdrcharset", b"BINARY");
        }
        if split.is_none() {
            pax::push_record(&mut records, "path", &name);
        }
        if !target_fits {
            pax::push_record(&mut records, "linkpath", target);
        }
        if size > OCTAL11_MAX {
            pax::push_record(&mut records, "size", size.to_string().as_bytes());
        }

        let mut x = tar::Header::new_ustar();
        set_bytes(&mut x.as_old_mut().name, b"././@PaxHeader");
        x.set_mode(0o644);
        x.set_uid(0);
        x.set_gid(0);
        x.set_mtime(0);
        x.set_size(records.len() as u64);
        x.set_entry_type(tar::EntryType::XHeader);
        x.set_cksum();

        let mut u = tar::Header::new_ustar();
        {
            let ustar = u.as_ustar_mut().expect("new_ustar has ustar magic");
            match split {
                Some((prefix, base)) => {
                    set_bytes(&mut ustar.prefix, prefix.as_bytes());
                    set_bytes(&mut ustar.name, base.as_bytes());
                }
                // Placeholder only: the PAX `path` record is authoritative.
                None => set_bytes(&mut ustar.name, utf8_prefix(&name, 100)),
            }
            let shown = if target_fits { target } else { utf8_prefix(target, 100) };
            set_bytes(&mut ustar.linkname, shown);
        }
        u.set_mode(h.mode & 0o7777);
        u.set_uid(0);
        u.set_gid(0);
        u.set_mtime(h.mtime.sec.clamp(0, OCTAL11_MAX as i64) as u64);
        u.set_size(size);
        u.set_entry_type(match kind {
            Some(EntryKind::File) => tar::EntryType::Regular,
            Some(EntryKind::Dir) => tar::EntryType::Directory,
            Some(EntryKind::Symlink) => tar::EntryType::Symlink,
            None => tar::EntryType::new(crate::WITHDRAW_TYPEFLAG),
        });
        u.set_cksum();

        let path = Some(&h.path);
        self.write_all(x.as_bytes(), path)?;
        self.write_all(&records, path)?;
        self.write_all(&ZEROS[..pad_len(records.len() as u64)], path)?;
        self.write_all(u.as_bytes(), path)
    }

    /// Copies exactly `h.size` bytes (plus block padding). The outer `Err` is
    /// a stream failure; the inner result reports a source problem after
    /// which the stream is still consistent.
    fn copy_data(&mut self, h: &EntryHeader, data: &mut dyn Read) -> Result<Result<(), TarError>, TarError> {
        if self.buf.is_empty() {
            self.buf = vec![0; COPY_BUF];
        }
        let path = Some(&h.path);
        let mut done: u64 = 0;
        let mut problem = None;
        while done < h.size {
            let want = (h.size - done).min(COPY_BUF as u64) as usize;
            match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    problem = Some(TarError::SourceChanged { path: h.path.clone(), declared: h.size, got: done });
                    break;
                }
                Ok(n) => {
                    let chunk = std::mem::take(&mut self.buf);
                    let res = self.write_all(&chunk[..n], path);
                    self.buf = chunk;
                    res?;
                    done += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    problem = Some(TarError::SourceRead { path: h.path.clone(), source });
                    break;
                }
            }
        }
        // Keep the stream consistent whatever happened to the source.
        while done < h.size {
            let n = (h.size - done).min(BLOCK as u64) as usize;
            self.write_all(&ZEROS[..n], path)?;
            done += n as u64;
        }
        self.write_all(&ZEROS[..pad_len(h.size)], path)?;
        if problem.is_none() {
            let mut probe = [0u8; 1];
            loop {
                match data.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => {
                        problem =
                            Some(TarError::SourceChanged { path: h.path.clone(), declared: h.size, got: h.size + 1 });
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        problem = Some(TarError::SourceRead { path: h.path.clone(), source });
                        break;
                    }
                }
            }
        }
        Ok(problem.map_or(Ok(()), Err))
    }
}

fn expect_kind(h: &EntryHeader, kind: EntryKind) -> Result<(), TarError> {
    if h.kind == kind {
        Ok(())
    } else {
        Err(invalid(h, &format!("kind is {:?} but the entry is appended as {kind:?}", h.kind)))
    }
}

fn invalid(h: &EntryHeader, reason: &str) -> TarError {
    TarError::InvalidHeader { path: h.path.clone(), reason: reason.to_string() }
}

/// Zero bytes needed after `len` bytes to reach a block boundary.
pub(crate) fn pad_len(len: u64) -> usize {
    ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize
}

/// Splits an ASCII path into ustar `(prefix, name)` (prefix <= 155 bytes,
/// name 1..=100 bytes); `None` if it must go in a PAX `path` record.
fn ustar_split(path: &str) -> Option<(&str, &str)> {
    if !path.is_ascii() {
        return None;
    }
    if path.len() <= 100 {
        return Some(("", path));
    }
    // A trailing '/' (directories) must stay in `name`, so only split at a
    // '/' that leaves a non-empty name other than that '/'.
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i > 0 && i <= 155)
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .find(|(_, name)| name.len() <= 100 && !name.is_empty() && *name != "/")
}

/// The longest prefix of `s` of at most `max` bytes that is valid UTF-8.
fn utf8_prefix(s: &[u8], max: usize) -> &[u8] {
    let s = &s[..s.len().min(max)];
    match std::str::from_utf8(s) {
        Ok(_) => s,
        Err(e) => &s[..e.valid_up_to()],
    }
}

fn set_bytes(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ustar_split_rules() {
        assert_eq!(ustar_split("a/b"), Some(("", "a/b")));
        let long = format!("{}/{}", "p".repeat(150), "n".repeat(100));
        assert_eq!(ustar_split(&long), Some((&long[..150], &long[151..])));
        assert_eq!(ustar_split(&format!("{}/{}", "p".repeat(156), "n")), None);
        assert_eq!(ustar_split(&format!("{}/{}", "p".repeat(10), "n".repeat(101))), None);
        assert_eq!(ustar_split("é"), None);
        // A directory name's trailing '/' is never split off alone.
        let dir = format!("{}/", "d".repeat(100));
        assert_eq!(ustar_split(&dir), None);
    }

    /// Sizes beyond 11 octal digits get a PAX `size` record and a base-256
    /// header field. (Only the headers are written: streaming 8 GiB through
    /// a debug-mode test would be too slow.)
    #[test]
    fn huge_sizes_are_encoded_and_read_back() {
        for size in [OCTAL11_MAX, OCTAL11_MAX + 1, 60 << 30] {
            let path = RelPath::new("huge").unwrap();
            let h = EntryHeader::file(path, 0o600, cs_protocol::Timestamp::new(1, 2), size);
            let mut w = PackWriter::new(Vec::new(), 1).unwrap();
            w.write_headers(&h, Some(h.kind), h.size).unwrap();
            let bytes = w.enc.finish().unwrap().inner;
            let raw = zstd::decode_all(&bytes[..]).unwrap();
            let has_pax_size = raw.windows(6).any(|w| w == b" size=");
            assert_eq!(has_pax_size, size > OCTAL11_MAX, "{size}");
            // The ustar size field of the second header is octal or base-256.
            let field = &raw[raw.len() - BLOCK + 124..raw.len() - BLOCK + 136];
            assert_eq!(field[0] & 0x80 != 0, size > OCTAL11_MAX, "{size}");
            assert_eq!(pax::parse_numeric(field), Ok(size as i64));

            let mut seen = None;
            let err = crate::unpack(&bytes[..], &crate::Limits::default(), |got, _| {
                seen = Some(got.clone());
                Err("stop".into())
            })
            .unwrap_err();
            assert!(matches!(err, TarError::Visit { .. }), "{err:?}");
            assert_eq!(seen, Some(h));
        }
    }
}
