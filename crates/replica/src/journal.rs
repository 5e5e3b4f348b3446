//! The fill service's event journal (docs/replica.md section 4): what a dead service left
//! unanswered. The kernel matches a response to a pending permission event by descriptor
//! number alone, and the numbers of a dead process are known to nobody else; so each event
//! is written here (number, file handle of its inode) when it is read, and marked answered
//! once answered, before its number is closed. Not synced: the case is the death of the
//! process (the page cache keeps what it wrote), not of the machine (which takes the
//! pending events with it).
//!
//! Lines: `+ NUM KIND HEX` (taken; `- -` when the handle could not be had) and `- NUM`
//! (answered). Emptied whenever nothing is outstanding.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Mutex;

/// An event a predecessor took and did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Orphan {
    pub num: RawFd,
    pub handle: Option<(i32, Vec<u8>)>,
}

pub(crate) struct Journal {
    inner: Mutex<Inner>,
}

struct Inner {
    file: fs::File,
    outstanding: BTreeMap<RawFd, ()>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn taken_line(num: RawFd, handle: Option<&(i32, Vec<u8>)>) -> String {
    match handle {
        Some((kind, b)) => format!("+ {num} {kind} {}\n", hex(b)),
        None => format!("+ {num} - -\n"),
    }
}

/// What a journal's text leaves outstanding, in number order.
pub(crate) fn replay(text: &str) -> Vec<Orphan> {
    let mut map: BTreeMap<RawFd, Option<(i32, Vec<u8>)>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["+", num, kind, h] => {
                let Ok(num) = num.parse::<RawFd>() else { continue };
                let handle = match (kind.parse::<i32>(), unhex(h)) {
                    (Ok(k), Some(b)) if !b.is_empty() => Some((k, b)),
                    _ => None,
                };
                map.insert(num, handle);
            }
            ["-", num] => {
                if let Ok(num) = num.parse::<RawFd>() {
                    map.remove(&num);
                }
            }
            _ => {} // a line cut short by the death: its event was not answered either
        }
    }
    map.into_iter().filter(|(n, _)| *n >= 0).map(|(num, handle)| Orphan { num, handle }).collect()
}

impl Journal {
    /// Opens the journal at `path`: what it leaves outstanding is returned (and kept in
    /// it, as taken by this service, until answered).
    pub(crate) fn open(path: &Path) -> io::Result<(Journal, Vec<Orphan>)> {
        let text = match fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let orphans = replay(&text);
        let mut body = String::new();
        for o in &orphans {
            body.push_str(&taken_line(o.num, o.handle.as_ref()));
        }
        // Rewritten whole (a new name renamed over: a death here leaves one or the other).
        let tmp = path.with_extension("new");
        fs::write(&tmp, body.as_bytes())?;
        fs::rename(&tmp, path)?;
        let file = fs::OpenOptions::new().append(true).open(path)?;
        let outstanding = orphans.iter().map(|o| (o.num, ())).collect();
        Ok((Journal { inner: Mutex::new(Inner { file, outstanding }) }, orphans))
    }

    /// Events read, before any is answered.
    pub(crate) fn taken(&self, events: impl Iterator<Item = (RawFd, Option<(i32, Vec<u8>)>)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = String::new();
        for (num, handle) in events {
            body.push_str(&taken_line(num, handle.as_ref()));
            inner.outstanding.insert(num, ());
        }
        if body.is_empty() {
            return;
        }
        if let Err(e) = inner.file.write_all(body.as_bytes()) {
            tracing::warn!(error = %e, "writing the fill journal: a death now would leave these events unanswered");
        }
    }

    /// Events answered, before their numbers are closed.
    pub(crate) fn answered(&self, nums: &[RawFd]) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = String::new();
        for n in nums {
            body.push_str(&format!("- {n}\n"));
            inner.outstanding.remove(n);
        }
        let r = if inner.outstanding.is_empty() {
            // Nothing outstanding: the journal starts again empty (appends go to the end).
            inner.file.set_len(0)
        } else {
            inner.file.write_all(body.as_bytes())
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "writing the fill journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_what_was_taken_and_not_answered() {
        let t = "+ 7 1 0a0b\n+ 8 - -\n- 7\n+ 7 1 0c\n+ 9 1 ff\n- 9\n+ 12 1 0";
        let o = replay(t);
        assert_eq!(
            o,
            vec![
                Orphan { num: 7, handle: Some((1, vec![0x0c])) },
                Orphan { num: 8, handle: None },
                Orphan { num: 12, handle: None },
            ],
            "a line cut short is still an event taken and not answered (denied: no handle)"
        );
        assert!(replay("").is_empty());
    }

    #[test]
    fn open_rewrites_the_outstanding_and_empties_when_all_are_answered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        fs::write(&p, "+ 5 1 aa\n+ 6 1 bb\n- 6\n").unwrap();
        let (j, o) = Journal::open(&p).unwrap();
        assert_eq!(o.len(), 1);
        assert_eq!(fs::read_to_string(&p).unwrap(), "+ 5 1 aa\n");
        j.taken([(9, Some((1, vec![1u8])))].into_iter());
        j.answered(&[9]);
        assert_eq!(replay(&fs::read_to_string(&p).unwrap()), o);
        j.answered(&[5]);
        assert_eq!(fs::read_to_string(&p).unwrap(), "");
        j.taken([(3, None)].into_iter());
        assert_eq!(fs::read_to_string(&p).unwrap(), "+ 3 - -\n");
    }
}
