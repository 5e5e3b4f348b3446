//! What a user on one side sees and does: the operations of the harness, on
//! P's home ([`PlainDir`]) or on C's merged view ([`crate::union_emu::EmuUnion`]).

use std::fs::{self, FileTimes, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cs_protocol::{RelPath, Timestamp};

use crate::filter::SyncFilter;
use crate::tree::Tree;

/// Kind of an entry as the view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// fifo, socket, device: never created by the harness.
    Other,
}

impl Kind {
    pub fn of(md: &Metadata) -> Kind {
        let t = md.file_type();
        if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        }
    }
}

pub(crate) fn err(kind: io::ErrorKind, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(kind, what.to_string())
}

/// `lstat` of `root/p` that never follows a symlink on the way: every
/// ancestor must be a real directory, else the path does not exist.
pub fn lstat_beneath(root: &Path, p: &RelPath) -> Option<Metadata> {
    let mut cur = root.to_path_buf();
    let mut comps = p.components().peekable();
    while let Some(c) = comps.next() {
        cur.push(c);
        let md = cur.symlink_metadata().ok()?;
        if comps.peek().is_some() && !md.file_type().is_dir() {
            return None;
        }
        if comps.peek().is_none() {
            return Some(md);
        }
    }
    None
}

pub fn mtime_of(md: &Metadata) -> Timestamp {
    Timestamp::new(md.mtime(), md.mtime_nsec() as u32)
}

pub fn to_system_time(t: Timestamp) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec.into())
    }
}

/// Now, on this machine's clock, to the nanosecond.
pub fn now() -> Timestamp {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    Timestamp::new(d.as_secs() as i64, d.subsec_nanos())
}

/// Sets the mtime (and the access time, as `touch -d` and `tar x` do) of the regular file at
/// `host` (no symlink is followed). Both: unionfs-fuse 1.0 ignores a change of the mtime
/// alone (see docs/unionfs-notes.md).
pub fn set_file_mtime(host: &Path, t: Timestamp) -> io::Result<()> {
    let f = OpenOptions::new().write(true).custom_flags_nofollow().open(host)?;
    let t = to_system_time(t);
    f.set_times(FileTimes::new().set_modified(t).set_accessed(t))
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}
impl NoFollow for OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NOFOLLOW)
    }
}

/// One entry of a directory as a view shows it: where it is stored, and its `lstat`.
#[derive(Debug)]
pub struct Entry {
    pub path: RelPath,
    pub host: PathBuf,
    pub md: Metadata,
}

/// The user operations of both sides. Preconditions are those of the shell
/// commands they stand for (`echo >`, `>>`, `truncate`, `rm`, `mkdir`,
/// `rm -r`, `mv`, `chmod`, `ln -s`, `touch -d`); a violated one is an error.
/// No operation follows a symlink.
pub trait View {
    /// "C merged view", "P home": used in messages.
    fn name(&self) -> &str;
    /// Where the view's entry at `p` is stored, if the view shows one.
    fn host_path(&self, p: &RelPath) -> Option<PathBuf>;
    /// The entries of directory `dir` (`None`: the root), sorted by path.
    fn entries(&self, dir: Option<&RelPath>) -> io::Result<Vec<Entry>>;

    /// Creates or overwrites (`O_TRUNC`) the file `p`; its parent must exist.
    fn write(&self, p: &RelPath, data: &[u8]) -> io::Result<()>;
    fn append(&self, p: &RelPath, data: &[u8]) -> io::Result<()>;
    fn truncate(&self, p: &RelPath, len: u64) -> io::Result<()>;
    /// Removes a file or symlink.
    fn remove_file(&self, p: &RelPath) -> io::Result<()>;
    fn mkdir(&self, p: &RelPath) -> io::Result<()>;
    /// `rm -r`: children first, then the directory.
    fn remove_dir_all(&self, p: &RelPath) -> io::Result<()>;
    /// `mv` of a file or symlink (over a file or symlink, or to a new name)
    /// or of a directory (to a new name).
    fn rename(&self, from: &RelPath, to: &RelPath) -> io::Result<()>;
    fn chmod(&self, p: &RelPath, mode: u32) -> io::Result<()>;
    /// `ln -s`; the target is bytes (a Linux symlink target need not be UTF-8).
    fn symlink_os(&self, target: &std::ffi::OsStr, p: &RelPath) -> io::Result<()>;
    /// `ln from to`: a hard link to the file `from`; `to` must not exist.
    fn hard_link(&self, from: &RelPath, to: &RelPath) -> io::Result<()>;
    /// `touch -d`: sets a regular file's mtime.
    fn set_mtime(&self, p: &RelPath, t: Timestamp) -> io::Result<()>;

    // ---- provided ----

    fn symlink(&self, target: &str, p: &RelPath) -> io::Result<()> {
        self.symlink_os(std::ffi::OsStr::new(target), p)
    }

    /// The paths of directory `dir`'s entries, sorted.
    fn children(&self, dir: Option<&RelPath>) -> io::Result<Vec<RelPath>> {
        Ok(self.entries(dir)?.into_iter().map(|e| e.path).collect())
    }

    fn lstat(&self, p: &RelPath) -> Option<Metadata> {
        self.host_path(p).and_then(|h| h.symlink_metadata().ok())
    }

    fn kind(&self, p: &RelPath) -> Option<Kind> {
        self.lstat(p).map(|md| Kind::of(&md))
    }

    fn exists(&self, p: &RelPath) -> bool {
        self.kind(p).is_some()
    }

    fn read(&self, p: &RelPath) -> io::Result<Vec<u8>> {
        match self.kind(p) {
            Some(Kind::File) => fs::read(self.host_path(p).expect("shown")),
            _ => Err(err(io::ErrorKind::NotFound, format!("{}: no file {p}", self.name()))),
        }
    }

    fn read_string(&self, p: &RelPath) -> io::Result<String> {
        Ok(String::from_utf8_lossy(&self.read(p)?).into_owned())
    }

    fn read_link(&self, p: &RelPath) -> io::Result<String> {
        match self.kind(p) {
            Some(Kind::Symlink) => {
                let t = fs::read_link(self.host_path(p).expect("shown"))?;
                Ok(t.to_string_lossy().into_owned())
            }
            _ => Err(err(io::ErrorKind::NotFound, format!("{}: no symlink {p}", self.name()))),
        }
    }

    fn mode(&self, p: &RelPath) -> Option<u32> {
        self.lstat(p).map(|md| md.mode() & 0o7777)
    }

    fn mtime(&self, p: &RelPath) -> Option<Timestamp> {
        self.lstat(p).map(|md| mtime_of(&md))
    }

    /// `mkdir -p`.
    fn mkdir_p(&self, dir: &RelPath) -> io::Result<()> {
        let mut all: Vec<RelPath> = dir.ancestors().collect();
        all.reverse();
        all.push(dir.clone());
        for d in all {
            match self.kind(&d) {
                None => self.mkdir(&d)?,
                Some(Kind::Dir) => {}
                Some(_) => return Err(err(io::ErrorKind::AlreadyExists, format!("{d} is not a directory"))),
            }
        }
        Ok(())
    }

    /// `mkdir -p $(dirname p) && echo data > p`.
    fn put(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        if let Some(parent) = p.parent() {
            self.mkdir_p(&parent)?;
        }
        self.write(p, data)
    }

    /// `put`, then `touch -d` to `t`.
    fn put_with_mtime(&self, p: &RelPath, data: &[u8], t: Timestamp) -> io::Result<()> {
        self.put(p, data)?;
        self.set_mtime(p, t)
    }

    /// What `tar x`, `pip install` and `git checkout` do: each file is
    /// unlinked if present, created anew, and given the archive's old `mtime`.
    fn extract(&self, files: &[(RelPath, Vec<u8>)], mtime: Timestamp) -> io::Result<()> {
        for (p, data) in files {
            if let Some(parent) = p.parent() {
                self.mkdir_p(&parent)?;
            }
            match self.kind(p) {
                None => {}
                Some(Kind::Dir) => return Err(err(io::ErrorKind::AlreadyExists, format!("{p} is a directory"))),
                Some(_) => self.remove_file(p)?,
            }
            self.write(p, data)?;
            self.set_mtime(p, mtime)?;
        }
        Ok(())
    }

    /// `cp -p`-like in-place replacement: new content, the file's old mtime kept.
    fn overwrite_keeping_mtime(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        let t = self.mtime(p).ok_or_else(|| err(io::ErrorKind::NotFound, format!("no {p}")))?;
        self.write(p, data)?;
        self.set_mtime(p, t)
    }

    /// Every entry of the view, depth first, sorted (directories before their children).
    fn walk(&self) -> io::Result<Vec<RelPath>> {
        fn rec<V: View + ?Sized>(v: &V, dir: Option<&RelPath>, out: &mut Vec<RelPath>) -> io::Result<()> {
            for c in v.children(dir)? {
                out.push(c.clone());
                if v.kind(&c) == Some(Kind::Dir) {
                    rec(v, Some(&c), out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        rec(self, None, &mut out)?;
        Ok(out)
    }

    /// Snapshot of the synced paths the view shows.
    fn snapshot(&self, filter: &dyn SyncFilter) -> io::Result<Tree> {
        Tree::of_view(self, filter)
    }
}

/// A plain directory tree: P's home as P's users see it.
#[derive(Debug, Clone)]
pub struct PlainDir {
    pub root: PathBuf,
    pub name: String,
}

impl PlainDir {
    pub fn new(root: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        PlainDir { root: root.into(), name: name.into() }
    }

    fn host(&self, p: &RelPath) -> PathBuf {
        self.root.join(p.as_path())
    }

    fn need(&self, p: &RelPath, want: &[Kind]) -> io::Result<Kind> {
        match self.kind(p) {
            Some(k) if want.contains(&k) => Ok(k),
            other => {
                Err(err(io::ErrorKind::NotFound, format!("{}: {p} is {other:?}, need one of {want:?}", self.name)))
            }
        }
    }

    fn need_parent_dir(&self, p: &RelPath) -> io::Result<()> {
        match p.parent() {
            None => Ok(()),
            Some(d) => self.need(&d, &[Kind::Dir]).map(|_| ()),
        }
    }
}

impl View for PlainDir {
    fn name(&self) -> &str {
        &self.name
    }

    fn host_path(&self, p: &RelPath) -> Option<PathBuf> {
        lstat_beneath(&self.root, p).map(|_| self.host(p))
    }

    fn entries(&self, dir: Option<&RelPath>) -> io::Result<Vec<Entry>> {
        let host = match dir {
            None => self.root.clone(),
            Some(d) => {
                self.need(d, &[Kind::Dir])?;
                self.host(d)
            }
        };
        let mut out = Vec::new();
        let listing = match fs::read_dir(host) {
            Ok(l) => l,
            // A directory of kernel overlayfs's merged view whose lower part P
            // deleted, over an sshfs lower that has not revalidated it yet
            // (between rounds): unreadable until then, as users see it.
            Err(e) if dir.is_some() && e.raw_os_error() == Some(libc::ESTALE) => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in listing {
            let e = e?;
            let name = e.file_name();
            let path = match dir {
                None => RelPath::new(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str())),
                Some(d) => d.join(&name),
            }
            .map_err(|e| err(io::ErrorKind::InvalidData, e))?;
            let md = match e.path().symlink_metadata() {
                Ok(md) => md,
                // Listed but not there to `lstat`: kernel overlayfs over a lower that
                // gained the name after the overlay cached it as absent (docs/union.md,
                // point 1). Users see no such entry; P's side of a comparison still has it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // Its lower part deleted by P, not revalidated yet (see above).
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => continue,
                Err(e) => return Err(e),
            };
            out.push(Entry { path, host: e.path(), md });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn write(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        self.need_parent_dir(p)?;
        if let Some(k) = self.kind(p) {
            self.need(p, &[Kind::File]).map_err(|_| err(io::ErrorKind::AlreadyExists, format!("{p} is a {k:?}")))?;
        }
        let mut f =
            OpenOptions::new().write(true).create(true).truncate(true).custom_flags_nofollow().open(self.host(p))?;
        f.write_all(data)
    }

    fn append(&self, p: &RelPath, data: &[u8]) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        OpenOptions::new().append(true).custom_flags_nofollow().open(self.host(p))?.write_all(data)
    }

    fn truncate(&self, p: &RelPath, len: u64) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        OpenOptions::new().write(true).custom_flags_nofollow().open(self.host(p))?.set_len(len)
    }

    fn remove_file(&self, p: &RelPath) -> io::Result<()> {
        self.need(p, &[Kind::File, Kind::Symlink])?;
        fs::remove_file(self.host(p))
    }

    fn mkdir(&self, p: &RelPath) -> io::Result<()> {
        self.need_parent_dir(p)?;
        fs::create_dir(self.host(p))
    }

    fn remove_dir_all(&self, p: &RelPath) -> io::Result<()> {
        self.need(p, &[Kind::Dir])?;
        fs::remove_dir_all(self.host(p))
    }

    fn rename(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        check_rename(self, from, to)?;
        fs::rename(self.host(from), self.host(to))
    }

    fn chmod(&self, p: &RelPath, mode: u32) -> io::Result<()> {
        self.need(p, &[Kind::File, Kind::Dir])?;
        fs::set_permissions(self.host(p), fs::Permissions::from_mode(mode))
    }

    fn symlink_os(&self, target: &std::ffi::OsStr, p: &RelPath) -> io::Result<()> {
        self.need_parent_dir(p)?;
        std::os::unix::fs::symlink(target, self.host(p))
    }

    fn hard_link(&self, from: &RelPath, to: &RelPath) -> io::Result<()> {
        self.need(from, &[Kind::File])?;
        self.need_parent_dir(to)?;
        fs::hard_link(self.host(from), self.host(to))
    }

    fn set_mtime(&self, p: &RelPath, t: Timestamp) -> io::Result<()> {
        self.need(p, &[Kind::File])?;
        set_file_mtime(&self.host(p), t)
    }
}

/// The preconditions of `mv` shared by both views: `from` exists, `to`'s
/// parent is a directory, `to` is not below `from`, and `to` is absent or
/// (for a non-directory `from`) a non-directory.
pub fn check_rename<V: View + ?Sized>(v: &V, from: &RelPath, to: &RelPath) -> io::Result<Kind> {
    let k = v.kind(from).ok_or_else(|| err(io::ErrorKind::NotFound, format!("{}: no {from}", v.name())))?;
    if to.starts_with(from) {
        return Err(err(io::ErrorKind::InvalidInput, format!("{to} is {from} or below it")));
    }
    if let Some(d) = to.parent() {
        if v.kind(&d) != Some(Kind::Dir) {
            return Err(err(io::ErrorKind::NotFound, format!("{}: parent {d} of {to} is not a directory", v.name())));
        }
    }
    match (k, v.kind(to)) {
        (_, None) => Ok(k),
        (Kind::File | Kind::Symlink, Some(Kind::File | Kind::Symlink)) => Ok(k),
        (_, Some(tk)) => Err(err(io::ErrorKind::AlreadyExists, format!("cannot mv {k:?} {from} onto {tk:?} {to}"))),
    }
}
