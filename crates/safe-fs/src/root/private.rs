//! [`SafeRoot::private_file_beside`]: a nameless scratch file on the same
//! filesystem as a path of the tree (for snapshots of busy files).

use std::fs::File;

use rustix::fs::{openat, unlinkat, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::SafeRoot;
use crate::FsError;

impl SafeRoot {
    /// A new, empty, read-write file in the directory of `target` (which
    /// must exist) that no directory lists: `O_TMPFILE`, so it vanishes
    /// with its descriptor, even if the process dies. Being on the same
    /// filesystem as `target`, it can receive a reflink (`FICLONE`) of it.
    ///
    /// Where the filesystem has no `O_TMPFILE` (NFS, FUSE), the file is
    /// created as `fallback_name` (`O_EXCL`) and unlinked at once: only a
    /// crash between the two leaves it behind, and callers use an excluded
    /// temporary name that the start-up sweep removes.
    pub fn private_file_beside(&self, target: &cs_protocol::RelPath, fallback_name: &str) -> Result<File, FsError> {
        const OP: &str = "private_file_beside";
        let (dir, _) = self.parent(OP, target)?;
        let flags = OFlags::RDWR | OFlags::CLOEXEC;
        match openat(&dir, ".", flags | OFlags::TMPFILE, Mode::from_raw_mode(0o600)) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => {}
            Err(e) => return Err(self.io(OP, target, e)),
        }
        let tmp = self.tmp_path(OP, target, fallback_name)?;
        let flags = flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
        let fd = openat(&dir, fallback_name, flags, Mode::from_raw_mode(0o600)).map_err(|e| self.io(OP, &tmp, e))?;
        unlinkat(&dir, fallback_name, AtFlags::empty()).map_err(|e| self.io(OP, &tmp, e))?;
        Ok(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use super::*;

    #[test]
    fn the_private_file_is_writable_and_listed_nowhere() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/f"), b"x").unwrap();
        let root = SafeRoot::open(t.path()).unwrap();
        let target = cs_protocol::RelPath::new("d/f").unwrap();
        let mut f = root.private_file_beside(&target, ".csa-tmp-test").unwrap();
        f.write_all(b"hello").unwrap();
        f.rewind().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let names: Vec<_> = std::fs::read_dir(t.path().join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["f"]);
        // A symlinked directory is refused, as everywhere in SafeRoot.
        std::os::unix::fs::symlink("d", t.path().join("s")).unwrap();
        let via_link = cs_protocol::RelPath::new("s/f").unwrap();
        assert!(root.private_file_beside(&via_link, ".csa-tmp-test").is_err());
    }
}
