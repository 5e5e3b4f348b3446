//! Streaming, zstd-compressed, size-limited tar packing and unpacking of sync
//! entries (regular files, directories, symlinks).
//!
//! The sender builds a stream with [`PackWriter`]; the receiver consumes it
//! with [`unpack`], which validates every header before handing it to a
//! visitor together with a reader limited to that entry's data. Neither side
//! holds more than one entry's header and a fixed-size buffer in memory, so
//! memory use is independent of the number and size of the files.
//!
//! # Wire format
//!
//! This is a wire format between two machines: any change here is a protocol
//! change.
//!
//! * **Framing.** Exactly one zstd frame (with content checksum) containing a
//!   POSIX.1-2001 ("pax") tar stream: 512-byte ustar headers (magic
//!   `"ustar\0"`, version `"00"`), optional PAX extended headers (typeflag
//!   `x`) before an entry, entry data padded with zeros to a multiple of 512
//!   bytes, and the end-of-archive marker (two all-zero 512-byte blocks). The
//!   writer uses a zstd window of at most 2^23 bytes (8 MiB); the reader
//!   refuses frames needing a larger window ([`WINDOW_LOG_MAX`]), which bounds
//!   the decoder's memory. The reader stops at the end of the frame and
//!   does not look at whatever the underlying reader yields after it.
//! * **Entries.** Regular files (typeflag `0`), directories (`5`, written with
//!   a trailing `/`), symlinks (`2`). The order is the sender's: the format
//!   does not require parents before children.
//! * **Path.** The entry's [`RelPath`] (bytes, any Linux name: relative,
//!   normalised, at most 4096 bytes). It goes in the ustar `name` field, or
//!   split over `prefix`/`name` when it is pure ASCII and fits (name <= 100
//!   bytes, prefix <= 155 bytes). Otherwise (longer, or non-ASCII) it is
//!   carried as a PAX `path` record, and the ustar fields hold a truncated
//!   copy (its longest UTF-8 prefix) that readers must ignore.
//! * **Symlink target.** Non-empty bytes without NUL, at most 4096 bytes; may
//!   be absolute or contain `..` (it is user data: the receiver never follows
//!   symlinks). In `linkname` when ASCII and <= 100 bytes, else as a PAX
//!   `linkpath` record.
//! * **Names that are not UTF-8.** PAX records are UTF-8 by default; when the
//!   `path` or `linkpath` record of an entry is not, the same extended header
//!   carries `hdrcharset=BINARY` first (POSIX pax: the values are raw bytes),
//!   as GNU tar and bsdtar read it.
//! * **mtime.** Always a PAX `mtime` record with nanosecond precision:
//!   `<sec>` when the fraction is zero, else `<sec>.<9 digits>`, read as the
//!   real number `sec + nsec / 1e9`. A pre-1970 time `Timestamp { sec: -2,
//!   nsec: 500_000_000 }` (i.e. -1.5 s) is written `-1.500000000`. The ustar
//!   `mtime` field holds the seconds clamped to `0..=8^11-1` and is only used
//!   by the reader when there is no PAX `mtime`.
//! * **mode.** The permission bits including setuid/setgid/sticky
//!   (`mode & 0o7777`), octal in the ustar `mode` field.
//! * **size.** File data length; 0 for directories and symlinks (the reader
//!   refuses a non-zero size on those). Octal in the ustar `size` field when
//!   it fits 11 octal digits, else GNU base-256 in the field *and* a PAX
//!   `size` record (which takes precedence on read).
//! * **Ownership.** `uid`/`gid` are 0 and `uname`/`gname` empty: ownership is
//!   the receiver's business. The reader ignores these fields.
//! * **Withdraw marker** (protocol 2). A header with the vendor typeflag
//!   [`WITHDRAW_TYPEFLAG`] (`'W'`; POSIX reserves `'A'`–`'Z'` for vendors),
//!   size 0, carrying a path exactly as an entry does (ustar fields or a PAX
//!   `path` record), means "discard the file entry just before me": the
//!   sender found that file changed while it was being read, after its data
//!   was already in the stream ([`PackWriter::withdraw`]). It must follow
//!   immediately a regular-file entry with the same path, which it withdraws
//!   once; anything else (a marker first in the stream, after a directory or
//!   symlink, naming another path, or a second marker in a row) is refused
//!   as malformed. The receiver must therefore not make a file entry final
//!   before the next header has been read intact ("lookahead apply").
//!
//! # What the reader accepts
//!
//! [`unpack_events`] accepts ustar and GNU-magic headers whose checksum is right
//! (unsigned sum; the historic signed sum is also accepted), with typeflags
//! `0`/`\0` (regular), `5` (directory), `2` (symlink), plus the extension
//! headers `x` (PAX local: `path`, `linkpath`, `mtime`, `size` are used;
//! `hdrcharset` must be `BINARY` or `ISO-IR 10646 2000 UTF-8` and paths are
//! taken as bytes either way; other keywords are ignored; `GNU.sparse.*`
//! keywords are refused), `g` (PAX
//! global: syntax-checked, size-limited, otherwise ignored), `L` (GNU long
//! name) and `K` (GNU long link), and the withdraw marker `W` under the
//! rules above (reported as [`Event::Withdraw`]; [`unpack`], whose visitor
//! cannot take an entry back, refuses it with [`TarError::Withdrawn`]). Precedence: PAX record, then GNU long
//! name/link, then the ustar fields. Everything else (hard links, character
//! and block devices, fifos, contiguous files, GNU sparse, volume labels,
//! ...) is refused with [`TarError::UnsupportedType`]. One trailing `/` is
//! stripped from directory names; then the path must pass [`RelPath::new`]
//! (refusing `..`, absolute paths, NUL, empty components, overlong ones) or the
//! stream is refused with [`TarError::BadPath`]. PAX records are parsed
//! strictly. The end-of-archive marker is required (a stream cut at an entry
//! boundary is reported as truncated), and anything after it inside the
//! frame must be zero bytes (at most [`MAX_TRAILING_ZEROS`]).
//!
//! Every [`Limits`] bound is checked before the corresponding allocation or
//! visitor call, except the decompression ratio and truncation, which can
//! only be seen while data is being read: then the visitor's reads fail and
//! `unpack` returns the limit/truncation error (not the visitor's), and the
//! caller must discard whatever it wrote for that entry.
//!
//! Any error aborts the whole stream: there is no resynchronisation.

mod error;
mod pax;
mod read;
mod write;

use std::ffi::OsString;

pub use cs_protocol::{EntryKind, PathError, RelPath, Timestamp};
pub use error::{TarError, VisitError};
pub use read::{unpack, unpack_events, Event, UnpackStats};
pub use write::{PackStats, PackWriter};

/// Base-2 log of the largest zstd window the writer produces and the reader
/// accepts (8 MiB). This bounds the decoder's memory for hostile input.
pub const WINDOW_LOG_MAX: u32 = 23;

/// Longest accepted symlink target, in bytes (Linux `PATH_MAX`).
pub const MAX_LINK_TARGET_LEN: usize = 4096;

/// Typeflag of the withdraw marker (see the crate documentation).
pub const WITHDRAW_TYPEFLAG: u8 = b'W';

/// Most zero bytes accepted after the end-of-archive marker (other tar
/// writers pad to a record size, typically 10 KiB).
pub const MAX_TRAILING_ZEROS: u64 = 1 << 20;

/// Most extension headers (PAX local/global, GNU long name/link) accepted in
/// a row before a real entry. Each one is also bounded by
/// [`Limits::max_pax_bytes`].
pub const MAX_EXTENSION_HEADERS: u32 = 8;

/// The metadata of one entry, as written by [`PackWriter`] and handed to the
/// [`unpack`] visitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHeader {
    pub path: RelPath,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky: `mode & 0o7777`. The
    /// writer masks the value it is given; the reader always yields a masked
    /// value.
    pub mode: u32,
    /// Modification time; `nsec` must be below 1_000_000_000.
    pub mtime: Timestamp,
    /// Length of the file data; 0 unless `kind` is [`EntryKind::File`].
    pub size: u64,
    /// The symlink target: `Some` iff `kind` is [`EntryKind::Symlink`].
    /// Bytes, as Linux stores them: not necessarily UTF-8.
    pub link_target: Option<OsString>,
}

impl EntryHeader {
    /// A regular file header.
    pub fn file(path: RelPath, mode: u32, mtime: Timestamp, size: u64) -> Self {
        EntryHeader { path, kind: EntryKind::File, mode, mtime, size, link_target: None }
    }

    /// A directory header.
    pub fn dir(path: RelPath, mode: u32, mtime: Timestamp) -> Self {
        EntryHeader { path, kind: EntryKind::Dir, mode, mtime, size: 0, link_target: None }
    }

    /// A symlink header.
    pub fn symlink(path: RelPath, mode: u32, mtime: Timestamp, target: impl Into<OsString>) -> Self {
        EntryHeader { path, kind: EntryKind::Symlink, mode, mtime, size: 0, link_target: Some(target.into()) }
    }
}

/// Bounds enforced by [`unpack`] against a hostile or broken sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most entries (files, directories, symlinks; extension headers are not
    /// counted) in one stream.
    pub max_entries: u64,
    /// Largest declared size of one file.
    pub max_entry_bytes: u64,
    /// Largest sum of declared file sizes in one stream.
    pub max_total_bytes: u64,
    /// Largest ratio of uncompressed bytes produced (headers included) to
    /// compressed bytes consumed, checked on every read once more than
    /// `ratio_grace_bytes` have been produced.
    pub max_ratio: u64,
    /// Uncompressed bytes produced before `max_ratio` is enforced (small
    /// streams of empty files legitimately compress extremely well).
    pub ratio_grace_bytes: u64,
    /// Largest single extension record (PAX `x`/`g` data, GNU long name/link
    /// data). Checked before the record is allocated.
    pub max_pax_bytes: u64,
}

impl Default for Limits {
    /// Limits meant for syncing a home directory:
    ///
    /// * `max_entries` 10 million: a large home directory with several
    ///   toolchains and caches has a few million entries.
    /// * `max_entry_bytes` 64 GiB: VM images and datasets; larger files are
    ///   not something to push through a sync round anyway.
    /// * `max_total_bytes` 1 TiB per stream.
    /// * `max_ratio` 1000 after `ratio_grace_bytes` 64 MiB: ordinary data
    ///   compresses 2-10x, text and logs up to ~100x; 1000x is only reached by
    ///   long runs of one byte value. **Limitation:** a stream whose data is
    ///   mostly such runs (e.g. a zero-filled disk image larger than 64 MiB)
    ///   is refused with these defaults; raise `max_ratio` if that matters.
    /// * `max_pax_bytes` 64 KiB: our own records are at most ~8.3 KiB (a
    ///   4096-byte path, a 4096-byte link target, mtime, size).
    fn default() -> Self {
        Limits {
            max_entries: 10_000_000,
            max_entry_bytes: 64 << 30,
            max_total_bytes: 1 << 40,
            max_ratio: 1000,
            ratio_grace_bytes: 64 << 20,
            max_pax_bytes: 64 << 10,
        }
    }
}
