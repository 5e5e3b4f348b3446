//! What changed in the home since the last hello, as inotify saw it.
//!
//! Two uses:
//!
//! - **Directory moves.** The journal compares stat signatures, which sees
//!   every change to a file except one: a directory moved away and back (or
//!   replaced by another of the same name) leaves every file below it with
//!   the same signature, yet a client may meanwhile have created a file at
//!   one of those paths. The journal counts everything below a moved
//!   directory as changed, so the conflict rule applies.
//! - **Where to look.** Rescanning the whole home at every hello costs
//!   O(files) of syscalls per round, idle or not (S3 in docs/benchmarks.md:
//!   ~400 ms of CPU at 100,000 files). The events name the directories whose
//!   entries changed; the journal lists just those, and walks whole only the
//!   directories that appeared.
//!
//! The events are trusted only while they are complete: a queue overflow,
//! a refused watch (the inotify limit) or an unavailable inotify make the
//! next refresh a full rescan. What inotify cannot see at all (writes
//! through a shared mmap, changes made on another machine when the home is
//! itself a network filesystem, a write to a hard link's other name) is
//! caught by the periodic full rescan (`ProjectConfig::full_rescan_every`).
//!
//! A watch is added to a directory *before* it is listed, so that nothing
//! created after the listing goes unseen.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cs_protocol::RelPath;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};

/// A directory of the home: `None` is the home itself.
pub type Dir = Option<RelPath>;

pub struct HomeWatch {
    fd: OwnedFd,
    /// Watch descriptor → the directory it watches, as of its last
    /// (re)watch. A moved directory's descriptors keep their old paths until
    /// the moved tree is walked again, which the move itself causes.
    dirs: HashMap<i32, Dir>,
    /// Set once the kernel refused a watch (inotify limit): events are
    /// incomplete from then on; said once in the log.
    limited: bool,
}

/// What happened since the last drain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Directories moved in or out (both names of a move).
    pub moved: Vec<RelPath>,
    /// Directories whose entries were created, deleted, written or changed.
    pub dirty: BTreeSet<Dir>,
    /// Directories that appeared (created or moved in): walked whole.
    pub appeared: BTreeSet<RelPath>,
    /// The kernel's queue overflowed: events were lost.
    pub overflow: bool,
}

impl HomeWatch {
    /// `None` where inotify is unavailable (then every refresh is a full
    /// rescan).
    pub fn new() -> Option<HomeWatch> {
        match inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC) {
            Ok(fd) => Some(HomeWatch { fd, dirs: HashMap::new(), limited: false }),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: every round rescans the whole home");
                None
            }
        }
    }

    /// Can the events be trusted to name every change since the watches
    /// were set? Not once a watch was refused.
    pub fn complete(&self) -> bool {
        !self.limited
    }

    /// Forget every watch (before a full rescan re-adds them): descriptors of
    /// directories that left the home would otherwise linger.
    /// Returns what was still queued: its directory moves still count.
    pub fn reset(&mut self) -> Changes {
        let queued = self.drain();
        for wd in self.dirs.keys() {
            let _ = inotify::remove_watch(&self.fd, *wd);
        }
        self.dirs.clear();
        self.limited = false;
        queued
    }

    /// Watches `dir` (re-watching refreshes the path of its descriptor,
    /// which follows the inode when a directory is renamed).
    pub fn watch(&mut self, home: &Path, dir: Option<&RelPath>) {
        let abs = match dir {
            Some(d) => home.join(d.as_path()),
            None => home.to_path_buf(),
        };
        let flags = WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MODIFY
            | WatchFlags::ATTRIB
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::ONLYDIR
            | WatchFlags::DONT_FOLLOW
            | WatchFlags::EXCL_UNLINK;
        match inotify::add_watch(&self.fd, &abs, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.cloned());
            }
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::NOMEM => {
                if !self.limited {
                    self.limited = true;
                    tracing::warn!(
                        "inotify watch limit reached (raise fs.inotify.max_user_watches): every round rescans the whole home"
                    );
                }
            }
            Err(_) => {} // Gone or not a directory any more: its parent's listing sees it.
        }
    }

    /// Are events queued (the descriptor is readable)? Reads nothing: a
    /// follower's check (see `follow`) refreshes the journal only then.
    pub fn has_events(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(&self.fd, rustix::event::PollFlags::IN)];
        let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
        // An error (EINTR) says "maybe": the refresh then finds out.
        rustix::event::poll(&mut fds, Some(&zero)).map_or(true, |n| n > 0)
    }

    /// Reads every queued event (never blocks).
    pub fn drain(&mut self) -> Changes {
        let mut out = Changes::default();
        let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events");
                    out.overflow = true; // unknown loss: rescan
                    break;
                }
            };
            let flags = ev.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                out.overflow = true;
                continue;
            }
            if flags.contains(ReadFlags::IGNORED) {
                self.dirs.remove(&ev.wd());
                continue;
            }
            let Some(parent) = self.dirs.get(&ev.wd()) else { continue };
            out.dirty.insert(parent.clone());
            if !flags.contains(ReadFlags::ISDIR) {
                continue;
            }
            let Some(name) = ev.file_name() else { continue };
            let name = name.to_bytes();
            let Ok(path) = (match parent {
                Some(p) => p.join(OsStr::from_bytes(name)),
                None => RelPath::new(name),
            }) else {
                continue;
            };
            if flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO) {
                out.moved.push(path.clone());
            }
            if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                out.appeared.insert(path);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_directory_moved_away_and_back_is_reported_under_both_names() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/sub")).unwrap();
        std::fs::write(t.path().join("d/sub/f"), b"x").unwrap();
        let mut w = HomeWatch::new().unwrap();
        w.watch(t.path(), None);
        w.watch(t.path(), Some(&rel("d")));
        assert_eq!(w.drain(), Changes::default(), "nothing yet");
        assert!(!w.has_events());
        // A file rename is not a directory move.
        std::fs::rename(t.path().join("d/sub/f"), t.path().join("d/sub/g")).unwrap();
        std::fs::rename(t.path().join("d"), t.path().join("e")).unwrap();
        std::fs::rename(t.path().join("e"), t.path().join("d")).unwrap();
        assert!(w.has_events());
        let ch = w.drain();
        assert!(!w.has_events(), "drained");
        let names: Vec<&str> = ch.moved.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(names, ["d", "e", "e", "d"]);
        assert_eq!(ch.appeared, [rel("d"), rel("e")].into_iter().collect());
        assert_eq!(w.drain(), Changes::default(), "drained");
    }

    #[test]
    fn writes_creates_deletes_and_attribute_changes_mark_their_directory() {
        let t = tempfile::tempdir().unwrap();
        let home = t.path();
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        std::fs::write(home.join("a/b/f"), b"x").unwrap();
        std::fs::write(home.join("top"), b"x").unwrap();
        let mut w = HomeWatch::new().unwrap();
        for d in [None, Some(rel("a")), Some(rel("a/b"))] {
            w.watch(home, d.as_ref());
        }
        assert!(w.complete());
        std::fs::read(home.join("a/b/f")).unwrap();
        assert!(w.drain().dirty.is_empty(), "a read is not a change");
        std::fs::write(home.join("a/b/f"), b"changed").unwrap();
        assert_eq!(w.drain().dirty, [Some(rel("a/b"))].into_iter().collect());
        let f = std::fs::File::open(home.join("top")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_eq!(w.drain().dirty, [None].into_iter().collect(), "touch of an old mtime");
        std::fs::create_dir(home.join("a/new")).unwrap();
        std::fs::remove_file(home.join("a/b/f")).unwrap();
        let ch = w.drain();
        assert_eq!(ch.dirty, [Some(rel("a")), Some(rel("a/b"))].into_iter().collect());
        assert_eq!(ch.appeared, [rel("a/new")].into_iter().collect());
        assert!(!ch.overflow);
    }
}
