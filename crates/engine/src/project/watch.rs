//! Directory moves in the home, caught as they happen.
//!
//! The journal compares stat signatures between rounds, which sees every
//! change to a file except one: a directory moved away and back (or replaced
//! by another directory of the same name) between two rounds leaves every
//! file below it with the same signature, yet a client may meanwhile have
//! created a file at one of those paths without ever seeing P's. inotify
//! records the moves in the kernel's queue at the moment they happen; the
//! journal reads that queue at the next hello and counts everything below a
//! moved directory as changed, so the conflict rule applies.
//!
//! Only directory moves are watched: every other change shows in the
//! signatures, and the engine itself never moves a directory (so its own
//! writes never trigger this).

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;

use cs_protocol::RelPath;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};

pub struct DirMoves {
    fd: OwnedFd,
    /// Watch descriptor → the directory it watches (None: the home).
    dirs: HashMap<i32, Option<RelPath>>,
    /// Set once the kernel refused a watch (inotify limit): moves may be
    /// missed; said once in the log.
    limited: bool,
}

/// What happened since the last drain.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Directories moved in or out (both names of a move).
    pub dirs: Vec<RelPath>,
    /// The kernel's queue overflowed: moves may have been missed.
    pub overflow: bool,
}

impl DirMoves {
    /// `None` where inotify is unavailable (then only signatures count).
    pub fn new() -> Option<DirMoves> {
        match inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC) {
            Ok(fd) => Some(DirMoves { fd, dirs: HashMap::new(), limited: false }),
            Err(e) => {
                tracing::warn!(error = %e, "inotify unavailable: directory moves between rounds are not seen");
                None
            }
        }
    }

    /// Watches `dir` (re-watching refreshes the path of its descriptor,
    /// which follows the inode when a directory is renamed).
    pub fn watch(&mut self, home: &Path, dir: Option<&RelPath>) {
        let abs = match dir {
            Some(d) => home.join(d.as_path()),
            None => home.to_path_buf(),
        };
        let flags = WatchFlags::MOVED_FROM | WatchFlags::MOVED_TO | WatchFlags::ONLYDIR | WatchFlags::DONT_FOLLOW;
        match inotify::add_watch(&self.fd, &abs, flags) {
            Ok(wd) => {
                self.dirs.insert(wd, dir.cloned());
            }
            Err(e) if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::NOMEM => {
                if !self.limited {
                    self.limited = true;
                    tracing::warn!(
                        "inotify watch limit reached (raise fs.inotify.max_user_watches): some directory moves between rounds may be missed"
                    );
                }
            }
            Err(_) => {} // Gone or not a directory any more: the scan sees it.
        }
    }

    /// Reads every queued event (never blocks).
    pub fn drain(&mut self) -> Moves {
        let mut out = Moves::default();
        let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events");
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
            if !flags.contains(ReadFlags::ISDIR) || !flags.intersects(ReadFlags::MOVED_FROM | ReadFlags::MOVED_TO) {
                continue;
            }
            let (Some(parent), Some(name)) = (self.dirs.get(&ev.wd()), ev.file_name()) else { continue };
            let Ok(name) = name.to_str() else { continue };
            let path = match parent {
                Some(p) => p.join(name),
                None => RelPath::new(name),
            };
            if let Ok(p) = path {
                out.dirs.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_moved_away_and_back_is_reported_under_both_names() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("d/sub")).unwrap();
        std::fs::write(t.path().join("d/sub/f"), b"x").unwrap();
        let mut w = DirMoves::new().unwrap();
        w.watch(t.path(), None);
        w.watch(t.path(), Some(&RelPath::new("d").unwrap()));
        assert_eq!(w.drain(), Moves::default(), "nothing yet");
        // A file rename is not a directory move.
        std::fs::rename(t.path().join("d/sub/f"), t.path().join("d/sub/g")).unwrap();
        std::fs::rename(t.path().join("d"), t.path().join("e")).unwrap();
        std::fs::rename(t.path().join("e"), t.path().join("d")).unwrap();
        let moves = w.drain();
        let names: Vec<&str> = moves.dirs.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["d", "e", "e", "d"]);
        assert_eq!(w.drain(), Moves::default(), "drained");
    }
}
