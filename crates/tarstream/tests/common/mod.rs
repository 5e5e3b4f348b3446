//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use cs_tarstream::{unpack, EntryHeader, EntryKind, Limits, PackWriter, RelPath, TarError, Timestamp};

pub fn rp(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

pub fn file(path: &str, mode: u32, mtime: (i64, u32), size: u64) -> EntryHeader {
    EntryHeader::file(rp(path), mode, Timestamp::new(mtime.0, mtime.1), size)
}

/// A file entry with its data (size taken from the data).
pub fn fe(path: &str, mode: u32, mtime: (i64, u32), data: Vec<u8>) -> (EntryHeader, Vec<u8>) {
    (file(path, mode, mtime, data.len() as u64), data)
}

pub fn dir(path: &str, mode: u32, mtime: (i64, u32)) -> EntryHeader {
    EntryHeader::dir(rp(path), mode, Timestamp::new(mtime.0, mtime.1))
}

pub fn symlink(path: &str, target: &str, mtime: (i64, u32)) -> EntryHeader {
    EntryHeader::symlink(rp(path), 0o777, Timestamp::new(mtime.0, mtime.1), target.to_string())
}

/// Packs `(header, data)` pairs (data ignored unless a file) into a Vec.
pub fn pack(entries: &[(EntryHeader, Vec<u8>)]) -> Vec<u8> {
    let mut w = PackWriter::new(Vec::new(), 3).unwrap();
    for (h, data) in entries {
        match h.kind {
            EntryKind::File => w.append_file(h, &mut &data[..]).unwrap(),
            EntryKind::Dir => w.append_dir(h).unwrap(),
            EntryKind::Symlink => w.append_symlink(h).unwrap(),
        }
    }
    let (out, stats) = w.finish().unwrap();
    assert_eq!(stats.entries, entries.len() as u64);
    assert_eq!(stats.compressed_bytes, out.len() as u64);
    out
}

/// Unpacks everything, reading each entry's data fully.
pub fn unpack_all(bytes: &[u8], limits: &Limits) -> Result<Vec<(EntryHeader, Vec<u8>)>, TarError> {
    let mut got = Vec::new();
    unpack(bytes, limits, |h, r| {
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        got.push((h.clone(), data));
        Ok(())
    })?;
    Ok(got)
}

/// Unpacks, recording the visited paths, and returns them with the result.
pub fn visited_paths(bytes: &[u8], limits: &Limits) -> (Vec<String>, Result<(), TarError>) {
    let mut seen = Vec::new();
    let res = unpack(bytes, limits, |h, r| {
        seen.push(h.path.to_string());
        std::io::copy(r, &mut std::io::sink())?;
        Ok(())
    });
    (seen, res.map(|_| ()))
}

pub fn zstd(raw: &[u8]) -> Vec<u8> {
    zstd::encode_all(raw, 3).unwrap()
}

/// Hand-made uncompressed tar streams.
#[derive(Default)]
pub struct Raw {
    pub bytes: Vec<u8>,
}

pub const BLOCK: usize = 512;

impl Raw {
    pub fn new() -> Self {
        Raw::default()
    }

    /// A ustar header with a correct checksum.
    pub fn header(typeflag: u8, name: &[u8], size_field: &[u8], linkname: &[u8]) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name);
        b[100..108].copy_from_slice(b"0000644\0");
        b[108..116].copy_from_slice(b"0000000\0");
        b[116..124].copy_from_slice(b"0000000\0");
        b[124..124 + size_field.len()].copy_from_slice(size_field);
        b[136..148].copy_from_slice(b"14530000000\0");
        b[156] = typeflag;
        b[157..157 + linkname.len()].copy_from_slice(linkname);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        set_checksum(&mut b);
        b
    }

    pub fn octal_size(size: u64) -> Vec<u8> {
        format!("{size:011o}\0").into_bytes()
    }

    /// Entry header with octal size.
    pub fn entry(mut self, typeflag: u8, name: &str, size: u64, link: &str) -> Self {
        let h = Raw::header(typeflag, name.as_bytes(), &Raw::octal_size(size), link.as_bytes());
        self.bytes.extend_from_slice(&h);
        self
    }

    pub fn block(mut self, b: [u8; BLOCK]) -> Self {
        self.bytes.extend_from_slice(&b);
        self
    }

    /// Data padded to a block boundary.
    pub fn data(mut self, d: &[u8]) -> Self {
        self.bytes.extend_from_slice(d);
        let pad = (BLOCK - d.len() % BLOCK) % BLOCK;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A PAX extension header (typeflag `x` or `g`) with these records.
    pub fn pax(self, typeflag: u8, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while rest + len.to_string().len() != len {
                len = rest + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.pax_raw(typeflag, &data)
    }

    pub fn pax_raw(self, typeflag: u8, data: &[u8]) -> Self {
        self.entry(typeflag, "././@PaxHeader", data.len() as u64, "").data(data)
    }

    pub fn end(mut self) -> Self {
        self.bytes.extend_from_slice(&[0u8; 2 * BLOCK]);
        self
    }

    pub fn zstd(&self) -> Vec<u8> {
        zstd(&self.bytes)
    }
}

pub fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Deterministic pseudo-random bytes (xorshift), produced on demand.
pub struct Noise {
    state: u64,
    left: u64,
}

impl Noise {
    pub fn new(seed: u64, len: u64) -> Self {
        Noise { state: seed | 1, left: len }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        // Odd-sized reads on purpose: callers must cope with short reads.
        let n = n.min(7919);
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = (self.state >> 32) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A bounded in-memory pipe between two threads.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(4);
    (PipeWriter { tx }, PipeReader { rx, cur: Vec::new(), pos: 0 })
}

pub struct PipeWriter {
    tx: SyncSender<Vec<u8>>,
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(16 << 10);
        self.tx.send(buf[..n].to_vec()).map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(v) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
