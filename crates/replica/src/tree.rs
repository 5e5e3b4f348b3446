//! The placeholder tree: directories, symlinks, and for each file a sparse placeholder of
//! P's size, mode and mtime carrying `user.cs.want` ([`crate::want`]).
//!
//! Layout under the replica root (a directory on the replica filesystem):
//! `build-N/` a tree being written; `tree-N/` complete trees; `current` (written
//! atomically, last) names the current tree and the snapshot's cursor. A kill -9 before
//! `current` is replaced leaves the old tree current (the next [`SnapshotWriter::begin`]
//! removes the `build-N` left behind); after, the new one. A mounted overlay keeps the
//! tree it was mounted with, so old trees are removed only when the caller says
//! ([`Tree::remove_others`]).
//!
//! Every name is created with `*at()` calls relative to an open parent directory and
//! `O_NOFOLLOW`, and a parent is only ever reached through directories this build made:
//! nothing follows a symlink the snapshot put there.
//!
//! A placeholder is made without ever being opened (`mknodat`, then calls by name): the
//! fill service watches every open on the image, and an open per placeholder was a
//! permission event it had to answer, which doubled a 100,000-file tree's build time
//! (1.6 s → 3.2 s, `tests/measure.rs`). The calls by path are safe because nobody but root
//! can write in the build until it is complete: its directories are given to the owner
//! only in [`SnapshotWriter::finish`].

use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cs_protocol::{Cursor, EntryKind, RelPath, SnapshotEntry, SnapshotReport, Timestamp};
use cs_safe_fs::SafeRoot;
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::error::{ReplicaError, Result};
use crate::want::{Want, XATTR};

const CURRENT: &str = "current";
const TREE: &str = "tree-";
const BUILD: &str = "build-";

/// A complete tree: the directory to give overlayfs as its lower layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub id: u64,
    pub dir: PathBuf,
    /// The snapshot's cursor: where the rounds continue from.
    pub cursor: Cursor,
    pub entries: u64,
}

/// Writes one snapshot's entries into a new tree.
#[derive(Debug)]
pub struct SnapshotWriter {
    replica_root: PathBuf,
    /// `build-N` under the replica root: placeholders are finished by path below it.
    build: PathBuf,
    root_fd: OwnedFd,
    id: u64,
    build_fd: OwnedFd,
    /// Open directories from the tree's root down to the last parent used (`None` is the
    /// root): pre-order input makes nearly every parent the top of this stack.
    stack: Vec<(Option<RelPath>, OwnedFd)>,
    /// Directories' modes and mtimes, applied in `finish` after their children.
    dirs: Vec<(RelPath, u32, Timestamp)>,
    owner: Option<(Uid, Gid)>,
    count: u64,
    /// The current tree when this build began: its filled files that are still P's
    /// version are linked into the new tree instead of placeholders (see `reuse`).
    previous: Option<OwnedFd>,
    kept: Kept,
    finisher: Finisher,
}

/// What a new tree kept of the previous one's fetched content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub files: u64,
    /// Their blocks.
    pub bytes: u64,
}

fn io(op: &'static str, path: &Path, e: Errno) -> ReplicaError {
    ReplicaError::io(op, path, e)
}

fn times(mtime: Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: mtime.nsec.into() },
    }
}

/// A placeholder made by name, to be set by path: `user.cs.want`, size, owner, mode, mtime.
struct Placeholder {
    path: PathBuf,
    entry: SnapshotEntry,
    owner: Option<(Uid, Gid)>,
}

impl Placeholder {
    fn set(&self) -> Result<()> {
        let e = &self.entry;
        let ctx = |op: &'static str| {
            move |r: Errno| ReplicaError::entry(&e.path, format!("{op}: {}", std::io::Error::from(r)))
        };
        let want = Want { path: e.path.clone(), size: e.size, mtime: e.mtime };
        rustix::fs::lsetxattr(&self.path, XATTR, &want.encode(), XattrFlags::empty())
            .map_err(ctx("set user.cs.want"))?;
        // Sparse: the size without a block, until the fill.
        truncate(&self.path, e.size).map_err(ctx("set size"))?;
        let here = rustix::fs::CWD;
        if let Some((u, g)) = self.owner {
            rustix::fs::chownat(here, &self.path, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).map_err(ctx("chown"))?;
        }
        rustix::fs::chmodat(here, &self.path, perm(e.mode), AtFlags::empty()).map_err(ctx("chmod"))?;
        rustix::fs::utimensat(here, &self.path, &times(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(ctx("set mtime"))?;
        Ok(())
    }
}

/// Sets placeholders on threads of their own while `add` goes on making names (and the
/// snapshot's stream is decoded): these calls are most of a placeholder's cost. Measured
/// with the fill service watching, a 100,000-file tree: 2.0 s with none, 1.8 s with one,
/// 1.5–1.7 s with two. A thread stops at its first error, which `send` or `wait` returns.
#[derive(Debug)]
struct Finisher {
    tx: Option<std::sync::mpsc::SyncSender<Placeholder>>,
    threads: Vec<std::thread::JoinHandle<Result<()>>>,
}

/// Placeholders queued for the finisher at most (a few MiB).
const FINISHER_QUEUE: usize = 4096;
const FINISHER_THREADS: usize = 2;

impl Finisher {
    fn start() -> Result<Finisher> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Placeholder>(FINISHER_QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut f = Finisher { tx: Some(tx), threads: Vec::new() };
        for _ in 0..FINISHER_THREADS {
            let rx = rx.clone();
            let work = move || loop {
                // One at a time off the queue; the lock is held only to take one.
                let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                match next {
                    Ok(p) => p.set()?,
                    Err(_) => return Ok(()), // every sender gone: all sent is set
                }
            };
            let t = std::thread::Builder::new()
                .name("replica-tree".into())
                .spawn(work)
                .map_err(|e| ReplicaError::io("start the tree's finisher thread", PathBuf::new(), e))?;
            f.threads.push(t);
        }
        Ok(f)
    }

    fn send(&mut self, p: Placeholder) -> Result<()> {
        if self.tx.as_ref().is_some_and(|tx| tx.send(p).is_ok()) {
            return Ok(());
        }
        // Every thread stopped at an error: that is the one to report.
        self.wait()?;
        Err(ReplicaError::Snapshot("the tree's finisher threads are gone".into()))
    }

    /// Every placeholder sent is set, or the first error.
    fn wait(&mut self) -> Result<()> {
        self.tx = None;
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = t.join().unwrap_or_else(|_| Err(ReplicaError::Snapshot("a tree finisher thread panicked".into())));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // A build dropped unfinished: what was sent is set, and nothing runs on after it.
        let _ = self.wait();
    }
}

/// `truncate(2)` by path (rustix has only `ftruncate`); the caller made `path` itself, in a
/// directory only root can write.
fn truncate(path: &Path, size: u64) -> std::result::Result<(), Errno> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
    let size = libc::off_t::try_from(size).map_err(|_| Errno::FBIG)?;
    // SAFETY: `c` is a valid NUL-terminated path that lives across the call.
    if unsafe { libc::truncate(c.as_ptr(), size) } == 0 {
        Ok(())
    } else {
        Err(Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO))
    }
}

/// Permission bits as applied on C: setuid and setgid never.
fn perm(mode: u32) -> Mode {
    Mode::from_raw_mode(mode & 0o1777)
}

fn numbered(name: &OsStr, prefix: &str) -> Option<u64> {
    name.to_str()?.strip_prefix(prefix)?.parse().ok()
}

/// A complete tree's directory name under the replica root (`tree-N`).
pub(crate) fn is_complete_tree_name(name: &OsStr) -> bool {
    numbered(name, TREE).is_some()
}

impl SnapshotWriter {
    /// Starts a new tree under `replica_root` (created if missing), after removing any
    /// build a crash left. `owner` is given to everything created (uid, gid).
    pub fn begin(replica_root: &Path, owner: Option<(u32, u32)>) -> Result<SnapshotWriter> {
        fs::create_dir_all(replica_root).map_err(|e| ReplicaError::io("create replica root", replica_root, e))?;
        let safe = SafeRoot::open(replica_root)?;
        let mut next = Tree::current(replica_root)?.map_or(1, |t| t.id + 1);
        for (name, _) in safe.read_dir(None)? {
            if let Some(n) = numbered(&name, BUILD) {
                safe.remove_tree(
                    &RelPath::new(name.as_bytes())
                        .map_err(|e| ReplicaError::State { path: replica_root.join(&name), detail: e.to_string() })?,
                )?;
                next = next.max(n + 1);
            } else if let Some(n) = numbered(&name, TREE) {
                next = next.max(n + 1);
            }
        }
        let root_fd =
            rustix::fs::open(replica_root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| io("open", replica_root, e))?;
        let name = format!("{BUILD}{next}");
        let build = replica_root.join(&name);
        rustix::fs::mkdirat(&root_fd, name.as_str(), Mode::from_raw_mode(0o755))
            .map_err(|e| io("create", &build, e))?;
        let build_fd = rustix::fs::openat(
            &root_fd,
            name.as_str(),
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open", &build, e))?;
        let owner = owner.map(|(u, g)| (Uid::from_raw(u), Gid::from_raw(g)));
        let stack = vec![(None, build_fd.try_clone().map_err(|e| ReplicaError::io("dup", &build, e))?)];
        // A previous tree that cannot be opened only costs its content being fetched again.
        let previous = Tree::current(replica_root).ok().flatten().and_then(|t| {
            rustix::fs::open(
                &t.dir,
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
        });
        Ok(SnapshotWriter {
            replica_root: replica_root.to_path_buf(),
            build,
            root_fd,
            id: next,
            build_fd,
            stack,
            dirs: Vec::new(),
            owner,
            count: 0,
            previous,
            kept: Kept::default(),
            finisher: Finisher::start()?,
        })
    }

    /// Where this build writes (`build-N` under the replica root).
    pub fn build_dir(&self) -> PathBuf {
        self.build.clone()
    }

    /// Adds one entry. Entries come in pre-order (a directory before what is below it);
    /// an entry whose parent is not a directory this snapshot created (a symlink, a
    /// file, missing), or whose path is already there, is refused naming the path.
    pub fn add(&mut self, e: &SnapshotEntry) -> Result<()> {
        let at = self.parent_index(&e.path)?;
        let dir = self.stack[at].1.as_fd();
        let name = e.path.file_name();
        let exists = |r: Errno| {
            if r == Errno::EXIST {
                ReplicaError::entry(&e.path, "a duplicate: this path is already in the snapshot")
            } else {
                ReplicaError::entry(&e.path, format!("create: {}", std::io::Error::from(r)))
            }
        };
        let ctx = |op: &'static str| {
            move |r: Errno| ReplicaError::entry(&e.path, format!("{op}: {}", std::io::Error::from(r)))
        };
        match e.kind {
            EntryKind::Dir => {
                rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(exists)?;
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(ctx("open"))?;
                // Given to the owner in `finish`: until then only root writes here.
                self.dirs.push((e.path.clone(), e.mode, e.mtime));
                self.stack.push((Some(e.path.clone()), fd));
            }
            EntryKind::Symlink => {
                let target = match &e.target {
                    Some(t) if !t.is_empty() && !t.contains(&0) => OsStr::from_bytes(t),
                    _ => return Err(ReplicaError::entry(&e.path, "a symlink without a valid target")),
                };
                rustix::fs::symlinkat(target, dir, name).map_err(exists)?;
                if let Some((u, g)) = self.owner {
                    rustix::fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(ctx("chown"))?;
                }
                rustix::fs::utimensat(dir, name, &times(e.mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(ctx("set mtime"))?;
            }
            EntryKind::File => {
                if let Some(bytes) = self.reuse(dir, name, e)? {
                    self.kept.files += 1;
                    self.kept.bytes += bytes;
                    self.count += 1;
                    return Ok(());
                }
                // Never opened (the module's doc says why): made by name here, set by name on
                // the finisher's thread.
                rustix::fs::mknodat(dir, name, FileType::RegularFile, Mode::from_raw_mode(0o600), 0).map_err(exists)?;
                let job =
                    Placeholder { path: self.build.join(e.path.as_os_str()), entry: e.clone(), owner: self.owner };
                self.finisher.send(job)?;
            }
        }
        self.count += 1;
        Ok(())
    }

    /// What this build kept of the previous tree's content so far.
    pub fn kept(&self) -> Kept {
        self.kept
    }

    /// Links the previous tree's copy of `e` into place instead of a placeholder when it is
    /// filled and P's version still (the same size, and mtime to the nanosecond, as the
    /// snapshot says: rsync's quick check): its content is not fetched again. Any doubt (not
    /// there, a symlink on the way, still wanted, another version) makes a placeholder.
    /// Nothing here opens the old file (an `O_PATH` descriptor makes no fanotify event).
    fn reuse(&self, dir: BorrowedFd<'_>, name: &OsStr, e: &SnapshotEntry) -> Result<Option<u64>> {
        let Some(prev) = self.previous.as_ref() else { return Ok(None) };
        let Ok(old) = rustix::fs::openat2(
            prev,
            e.path.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) else {
            return Ok(None);
        };
        let Ok(st) = rustix::fs::fstat(&old) else { return Ok(None) };
        let same = st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_size as u64 == e.size
            && (st.st_mtime, st.st_mtime_nsec as i64) == (e.mtime.sec, i64::from(e.mtime.nsec))
            && (st.st_blocks > 0 || e.size == 0);
        if !same {
            return Ok(None);
        }
        let proc = format!("/proc/self/fd/{}", old.as_raw_fd());
        match rustix::fs::getxattr(proc.as_str(), XATTR, &mut [0u8; 0][..]) {
            Err(Errno::NODATA) => {}
            _ => return Ok(None), // still a placeholder (or unreadable)
        }
        if rustix::fs::linkat(&old, "", dir, name, AtFlags::EMPTY_PATH).is_err() {
            return Ok(None);
        }
        // The inode is the old tree's too, which goes once this one is current.
        let ctx = |op: &'static str| {
            move |r: Errno| ReplicaError::entry(&e.path, format!("{op} (kept content): {}", std::io::Error::from(r)))
        };
        if let Some((u, g)) = self.owner {
            rustix::fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW).map_err(ctx("chown"))?;
        }
        rustix::fs::chmodat(dir, name, perm(e.mode), AtFlags::empty()).map_err(ctx("chmod"))?;
        Ok(Some(st.st_blocks as u64 * 512))
    }

    /// The stack index of `p`'s parent, opening it (below the deepest open ancestor)
    /// if it is not open.
    fn parent_index(&mut self, p: &RelPath) -> Result<usize> {
        let parent = p.parent();
        while let Some((Some(top), _)) = self.stack.last() {
            match &parent {
                Some(q) if q.starts_with(top) => break,
                _ => {
                    self.stack.pop();
                }
            }
        }
        if let Some(q) = &parent {
            let have = self.stack.last().and_then(|(t, _)| t.as_ref().map(|t| t.depth())).unwrap_or(0);
            for comp in q.components().skip(have) {
                let (top, fd) = self.stack.last().expect("the root is never popped");
                let sub = match top {
                    Some(t) => t.join(comp),
                    None => RelPath::new(comp.as_bytes()),
                }
                .map_err(|err| ReplicaError::entry(p, err.to_string()))?;
                let fd = rustix::fs::openat(
                    fd,
                    comp,
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|r| match r {
                    Errno::LOOP | Errno::NOTDIR => {
                        ReplicaError::entry(p, format!("refused: {sub} is a symlink or not a directory"))
                    }
                    Errno::NOENT => {
                        ReplicaError::entry(p, format!("refused: its parent {sub} is not in the snapshot before it"))
                    }
                    r => ReplicaError::entry(p, format!("open parent {sub}: {}", std::io::Error::from(r))),
                })?;
                self.stack.push((Some(sub), fd));
            }
        }
        Ok(self.stack.len() - 1)
    }

    /// Completes the tree: checks the entry count against P's report, applies the
    /// directories' modes and mtimes (children first), makes everything durable
    /// (`syncfs`), renames `build-N` to `tree-N` and then replaces `current`.
    pub fn finish(mut self, report: &SnapshotReport) -> Result<Tree> {
        if report.entries != self.count {
            return Err(ReplicaError::Snapshot(format!(
                "the stream carried {} entries, P's report says {}: incomplete, not switched to",
                self.count, report.entries
            )));
        }
        self.finisher.wait()?;
        self.stack.clear();
        let build = self.build_dir();
        for (p, mode, mtime) in self.dirs.iter().rev() {
            let fd = rustix::fs::openat2(
                &self.build_fd,
                p.as_os_str(),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|r| ReplicaError::entry(p, format!("reopen directory: {}", std::io::Error::from(r))))?;
            if let Some((u, g)) = self.owner {
                rustix::fs::fchown(&fd, Some(u), Some(g))
                    .map_err(|r| ReplicaError::entry(p, format!("chown: {}", std::io::Error::from(r))))?;
            }
            rustix::fs::fchmod(&fd, perm(*mode))
                .map_err(|r| ReplicaError::entry(p, format!("chmod: {}", std::io::Error::from(r))))?;
            rustix::fs::futimens(&fd, &times(*mtime))
                .map_err(|r| ReplicaError::entry(p, format!("set mtime: {}", std::io::Error::from(r))))?;
        }
        if let Some((u, g)) = self.owner {
            rustix::fs::fchown(&self.build_fd, Some(u), Some(g)).map_err(|e| io("chown", &build, e))?;
        }
        // One syncfs instead of an fsync per placeholder: the whole image is ours.
        rustix::fs::syncfs(&self.build_fd).map_err(|e| io("syncfs", &build, e))?;
        let name = format!("{TREE}{}", self.id);
        let dir = self.replica_root.join(&name);
        rustix::fs::renameat(&self.root_fd, format!("{BUILD}{}", self.id).as_str(), &self.root_fd, name.as_str())
            .map_err(|e| io("rename complete build to", &dir, e))?;
        rustix::fs::fsync(&self.root_fd).map_err(|e| io("fsync", &self.replica_root, e))?;
        let tree = Tree { id: self.id, dir, cursor: report.cursor, entries: self.count };
        let state = format!(
            "cs-replica current 1\nid {}\nepoch {}\nseq {}\nentries {}\n",
            tree.id, tree.cursor.epoch, tree.cursor.seq, tree.entries
        );
        cs_safe_fs::write_atomic(&self.replica_root.join(CURRENT), state.as_bytes())?;
        Ok(tree)
    }
}

impl Tree {
    /// The current tree under `replica_root`, if a snapshot was ever completed there.
    pub fn current(replica_root: &Path) -> Result<Option<Tree>> {
        let path = replica_root.join(CURRENT);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ReplicaError::io("read", &path, e)),
        };
        let bad = |detail: &str| ReplicaError::State { path: path.clone(), detail: detail.to_string() };
        let mut lines = text.lines();
        if lines.next() != Some("cs-replica current 1") {
            return Err(bad("not a state file of this version"));
        }
        let mut field = |key: &str| -> Result<u64> {
            let line = lines.next().ok_or_else(|| bad("truncated"))?;
            let v = line.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).ok_or_else(|| bad("malformed"))?;
            v.parse().map_err(|_| bad("malformed number"))
        };
        let id = field("id")?;
        let cursor = Cursor { epoch: field("epoch")?, seq: field("seq")? };
        let entries = field("entries")?;
        let dir = replica_root.join(format!("{TREE}{id}"));
        if !dir.is_dir() {
            return Err(bad(&format!("names {}, which is missing", dir.display())));
        }
        Ok(Some(Tree { id, dir, cursor, entries }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes every complete tree under `replica_root` except the current one, those
    /// in `keep`, and any a mount names in its options (an overlay's lowerdir): an
    /// overlay keeps the tree it was mounted with. Returns the directories removed.
    pub fn remove_others(replica_root: &Path, keep: &[&Tree]) -> Result<Vec<PathBuf>> {
        let current = Tree::current(replica_root)?;
        let safe = SafeRoot::open(replica_root)?;
        let info = fs::read("/proc/self/mountinfo").map_err(|e| ReplicaError::io("read", "/proc/self/mountinfo", e))?;
        let mut removed = Vec::new();
        for (name, _) in safe.read_dir(None)? {
            let Some(id) = numbered(&name, TREE) else { continue };
            if current.as_ref().is_some_and(|t| t.id == id) || keep.iter().any(|t| t.id == id) {
                continue;
            }
            let dir = replica_root.join(&name);
            if mentioned(&info, dir.as_os_str().as_bytes()) {
                tracing::info!(tree = %dir.display(), "a mount still uses this tree: kept");
                continue;
            }
            let rel = RelPath::new(name.as_bytes())
                .map_err(|e| ReplicaError::State { path: dir.clone(), detail: e.to_string() })?;
            safe.remove_tree(&rel)?;
            removed.push(dir);
        }
        Ok(removed)
    }
}

/// True if `path` appears in mountinfo as a whole path (followed by a separator).
fn mentioned(info: &[u8], path: &[u8]) -> bool {
    info.split(|&b| b == b'\n').any(|line| {
        let line = crate::image::unescape(line);
        line.windows(path.len())
            .enumerate()
            .any(|(i, w)| w == path && matches!(line.get(i + path.len()), None | Some(b',' | b':' | b' ' | b'\n')))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn mentioned_needs_a_whole_path() {
        let info = b"1 2 0:1 / /m rw - overlay overlay rw,lowerdir=/r/tree-1,upperdir=/u\n";
        assert!(super::mentioned(info, b"/r/tree-1"));
        assert!(!super::mentioned(info, b"/r/tree-"));
        assert!(!super::mentioned(info, b"/r/tree-10"));
    }
}
