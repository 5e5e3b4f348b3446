//! Snapshots of a view restricted to synced paths, and a readable diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cs_protocol::{RelPath, Timestamp};

use crate::filter::SyncFilter;
use crate::view::{mtime_of, Kind, PlainDir, View};

/// One entry. `data` is a file's content or a symlink's target (empty for a
/// directory); `mode` is the permission bits (0 for a symlink); `mtime` is
/// kept for files only: directory and symlink times are not part of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    pub mode: u32,
    pub data: Vec<u8>,
    pub mtime: Option<Timestamp>,
}

impl Node {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// The synced paths of a view and what they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<RelPath, Node>,
}

impl Tree {
    /// Snapshot of what `v` shows on the paths `filter` syncs. A directory
    /// that is not synced is not entered.
    pub fn of_view<V: View + ?Sized>(v: &V, filter: &dyn SyncFilter) -> io::Result<Tree> {
        let mut t = Tree::default();
        let mut todo: Vec<Option<RelPath>> = vec![None];
        while let Some(dir) = todo.pop() {
            for e in v.entries(dir.as_ref())? {
                let kind = Kind::of(&e.md);
                if !filter.is_synced(&e.path, kind == Kind::Dir) {
                    continue;
                }
                let mode = e.md.mode() & 0o7777;
                let (mode, data, mtime) = match kind {
                    Kind::File => (mode, std::fs::read(&e.host)?, Some(mtime_of(&e.md))),
                    Kind::Symlink => (0, std::fs::read_link(&e.host)?.into_os_string().into_encoded_bytes(), None),
                    Kind::Dir => {
                        todo.push(Some(e.path.clone()));
                        (mode, Vec::new(), None)
                    }
                    Kind::Other => (mode, Vec::new(), None),
                };
                t.nodes.insert(e.path, Node { kind, mode, data, mtime });
            }
        }
        Ok(t)
    }

    /// Snapshot of a plain directory.
    pub fn scan(root: &Path, filter: &dyn SyncFilter) -> io::Result<Tree> {
        Tree::of_view(&PlainDir::new(root, root.display().to_string()), filter)
    }

    pub fn get(&self, p: &str) -> Option<&Node> {
        self.nodes.get(&RelPath::new(p).ok()?)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().map(|p| p.to_string()).collect()
    }

    /// Conflict copies of `p`: siblings named `<name>.conflict-…`.
    pub fn conflict_copies_of(&self, p: &RelPath) -> Vec<(&RelPath, &Node)> {
        let prefix = [p.file_name().as_bytes(), b".conflict-"].concat();
        self.nodes
            .iter()
            .filter(|(q, _)| q.parent() == p.parent() && q.file_name().as_bytes().starts_with(&prefix))
            .collect()
    }

    /// Every conflict copy in the tree.
    pub fn all_conflict_copies(&self) -> Vec<&RelPath> {
        self.nodes.keys().filter(|q| q.file_name().as_bytes().windows(10).any(|w| w == b".conflict-")).collect()
    }

    /// `None` if equal, else every difference, one per line.
    pub fn diff(&self, other: &Tree, a: &str, b: &str) -> Option<String> {
        let mut out = String::new();
        for (p, n) in &self.nodes {
            match other.nodes.get(p) {
                None => writeln!(out, "  {p}: only in {a} ({})", describe(n)).unwrap(),
                Some(m) => {
                    if n.kind != m.kind {
                        writeln!(out, "  {p}: {:?} in {a}, {:?} in {b}", n.kind, m.kind).unwrap();
                        continue;
                    }
                    if n.data != m.data {
                        let what = if n.kind == Kind::Symlink { "target" } else { "content" };
                        writeln!(out, "  {p}: {what} {} in {a}, {} in {b}", show(&n.data), show(&m.data)).unwrap();
                    }
                    if n.mode != m.mode {
                        writeln!(out, "  {p}: mode {:o} in {a}, {:o} in {b}", n.mode, m.mode).unwrap();
                    }
                    if n.mtime != m.mtime {
                        writeln!(out, "  {p}: mtime {} in {a}, {} in {b}", show_t(n.mtime), show_t(m.mtime)).unwrap();
                    }
                }
            }
        }
        for (p, m) in &other.nodes {
            if !self.nodes.contains_key(p) {
                writeln!(out, "  {p}: only in {b} ({})", describe(m)).unwrap();
            }
        }
        if out.is_empty() {
            None
        } else {
            Some(format!("{a} and {b} differ:\n{out}"))
        }
    }

    /// Panics with the diff unless the trees are equal.
    pub fn assert_same(&self, other: &Tree, a: &str, b: &str) {
        if let Some(d) = self.diff(other, a, b) {
            panic!("{d}");
        }
    }

    /// One line per entry: for failure messages.
    pub fn listing(&self) -> String {
        let mut out = String::new();
        for (p, n) in &self.nodes {
            writeln!(out, "  {p}: {}", describe(n)).unwrap();
        }
        out
    }
}

fn describe(n: &Node) -> String {
    match n.kind {
        Kind::File => format!("file {:o} {} mtime {}", n.mode, show(&n.data), show_t(n.mtime)),
        Kind::Symlink => format!("symlink -> {}", show(&n.data)),
        Kind::Dir => format!("dir {:o}", n.mode),
        Kind::Other => "special file".to_string(),
    }
}

fn show(data: &[u8]) -> String {
    let s = String::from_utf8_lossy(data);
    if s.chars().count() > 80 {
        format!("{:?}… ({} bytes)", s.chars().take(80).collect::<String>(), data.len())
    } else {
        format!("{s:?}")
    }
}

fn show_t(t: Option<Timestamp>) -> String {
    match t {
        Some(t) => format!("{}.{:09}", t.sec, t.nsec),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::SpecDefaults;
    use crate::rp;

    #[test]
    fn snapshot_and_diff() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (va, vb) = (PlainDir::new(a.path(), "A"), PlainDir::new(b.path(), "B"));
        for v in [&va, &vb] {
            v.put(&rp("d/x"), b"same").unwrap();
            v.chmod(&rp("d"), 0o755).unwrap();
            v.set_mtime(&rp("d/x"), Timestamp::new(1_000_000_000, 5)).unwrap();
            v.symlink("../t", &rp("d/l")).unwrap();
            v.put(&rp("scratch/local"), b"not synced").unwrap();
            v.put(&rp(".csa-tmp-1"), b"not synced").unwrap();
        }
        let (ta, tb) = (va.snapshot(&SpecDefaults).unwrap(), vb.snapshot(&SpecDefaults).unwrap());
        assert_eq!(ta.paths(), ["d", "d/l", "d/x"]);
        assert_eq!(ta.get("d/l").unwrap().text(), "../t");
        assert_eq!(ta.get("d/x").unwrap().mtime, Some(Timestamp::new(1_000_000_000, 5)));
        assert_eq!(ta.diff(&tb, "A", "B"), None);

        // Directory mtimes are not compared; file mtimes, modes, content and targets are.
        vb.put(&rp("d/new"), b"n").unwrap();
        vb.remove_file(&rp("d/new")).unwrap();
        assert_eq!(ta.diff(&vb.snapshot(&SpecDefaults).unwrap(), "A", "B"), None);
        vb.set_mtime(&rp("d/x"), Timestamp::new(1_000_000_000, 6)).unwrap();
        vb.chmod(&rp("d"), 0o700).unwrap();
        vb.remove_file(&rp("d/l")).unwrap();
        vb.symlink("../u", &rp("d/l")).unwrap();
        vb.put(&rp("e"), b"").unwrap();
        va.write(&rp("d/y"), b"y").unwrap();
        let d = ta.diff(&vb.snapshot(&SpecDefaults).unwrap(), "A", "B").unwrap();
        for want in [
            "d: mode 755 in A, 700 in B",
            "d/l: target \"../t\" in A, \"../u\" in B",
            "d/x: mtime 1000000000.000000005 in A, 1000000000.000000006 in B",
            "e: only in B",
        ] {
            assert!(d.contains(want), "missing {want:?} in:\n{d}");
        }
        let ta2 = va.snapshot(&SpecDefaults).unwrap();
        assert!(ta2.diff(&ta, "A2", "A").unwrap().contains("d/y: only in A2"));
    }

    #[test]
    fn conflict_copies_are_siblings() {
        let t = tempfile::tempdir().unwrap();
        let v = PlainDir::new(t.path(), "P");
        for p in ["d/x", "d/x.conflict-c1-20260101T000000Z", "x.conflict-c1-1", "d/xy.conflict-c1-1"] {
            v.put(&rp(p), b"").unwrap();
        }
        let tree = v.snapshot(&SpecDefaults).unwrap();
        let got: Vec<String> = tree.conflict_copies_of(&rp("d/x")).iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(got, ["d/x.conflict-c1-20260101T000000Z"]);
        assert_eq!(tree.all_conflict_copies().len(), 3);
    }
}
