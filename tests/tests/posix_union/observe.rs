//! The lower's content (laid out the same way in the reference directory and in the union's
//! lower) and the observation of a view: every entry's kind, mode, owner, size, content, link
//! count, symlink target, device number and mtime class. Extended attributes are observed by
//! the xattr scenarios' own calls, so that a backend without them differs there only.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::ops::cpath;

/// Every lower entry's mtime (2001-09-09): "untouched since setup" in observations.
pub const SETUP_MTIME: i64 = 1_000_000_000;
/// An mtime set explicitly by a scenario (2009-02-13).
pub const SET_MTIME: i64 = 1_234_567_890;
/// Below this an mtime was set explicitly and is shown exactly; above it is "now".
const EXPLICIT_BELOW: i64 = 1_500_000_000;

/// Who owns a lower entry.
#[derive(Clone, Copy)]
pub enum Owner {
    Root,
    User,
}

/// One lower entry; paths relative to the lower's root, parents listed first.
pub enum Entry {
    Dir(&'static str, u32),
    File(&'static str, u32, &'static str),
    /// A file of `len` bytes of a repeating pattern (for mmap, truncate, fallocate).
    Big(&'static str, u32, usize),
    /// `Symlink(path, target)`.
    Symlink(&'static str, &'static str),
    /// `HardLink(path, existing)`.
    HardLink(&'static str, &'static str),
    Fifo(&'static str, u32),
}

/// The lower every scenario starts from: mostly the user's files (a home), some of root's.
pub const LOWER: &[(Owner, Entry)] = &[
    (Owner::User, Entry::File("f", 0o644, "lower f\n")),
    (Owner::User, Entry::File("ro", 0o444, "read only\n")),
    (Owner::User, Entry::File("exe", 0o755, "#!/bin/sh\n")),
    (Owner::User, Entry::File("priv", 0o600, "private\n")),
    (Owner::User, Entry::File("xf", 0o644, "has xattr\n")),
    (Owner::User, Entry::Big("big", 0o644, 65536)),
    (Owner::User, Entry::File("hl1", 0o644, "linked\n")),
    (Owner::User, Entry::HardLink("hl2", "hl1")),
    (Owner::User, Entry::Dir("d", 0o755)),
    (Owner::User, Entry::File("d/a", 0o644, "a\n")),
    (Owner::User, Entry::File("d/b", 0o644, "b\n")),
    (Owner::User, Entry::Dir("d/sub", 0o755)),
    (Owner::User, Entry::File("d/sub/c", 0o644, "c\n")),
    (Owner::User, Entry::Dir("empty", 0o755)),
    (Owner::User, Entry::Dir("rodir", 0o555)),
    (Owner::User, Entry::File("rodir/f", 0o644, "in rodir\n")),
    (Owner::User, Entry::Symlink("s", "f")),
    (Owner::User, Entry::Symlink("sd", "d")),
    (Owner::User, Entry::Symlink("dangling", "missing")),
    (Owner::User, Entry::Fifo("fifo", 0o644)),
    (Owner::Root, Entry::File("rootfile", 0o644, "root's\n")),
    (Owner::Root, Entry::Dir("rootdir", 0o755)),
    (Owner::Root, Entry::File("rootdir/f", 0o644, "root's in rootdir\n")),
    (Owner::Root, Entry::Dir("sticky", 0o1777)),
    (Owner::Root, Entry::File("sticky/rootf", 0o644, "root's in sticky\n")),
    (Owner::User, Entry::File("sticky/userf", 0o644, "user's in sticky\n")),
];

/// The pattern of [`Entry::Big`] files.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// Lays [`LOWER`] out in `root` (an existing directory, made the user's, mode 0755), with the
/// owners, modes, the `user.tag` xattr of `xf`, and every mtime [`SETUP_MTIME`].
pub fn populate(root: &Path, user: (u32, u32)) {
    let ids = |o: Owner| match o {
        Owner::Root => (0, 0),
        Owner::User => user,
    };
    for (owner, e) in LOWER {
        let (path, mode) = match e {
            Entry::Dir(p, m) => {
                fs::create_dir(root.join(p)).unwrap();
                (p, Some(*m))
            }
            Entry::File(p, m, text) => {
                fs::write(root.join(p), text).unwrap();
                (p, Some(*m))
            }
            Entry::Big(p, m, len) => {
                fs::write(root.join(p), pattern(*len)).unwrap();
                (p, Some(*m))
            }
            Entry::Symlink(p, target) => {
                std::os::unix::fs::symlink(target, root.join(p)).unwrap();
                (p, None)
            }
            Entry::HardLink(p, existing) => {
                fs::hard_link(root.join(existing), root.join(p)).unwrap();
                (p, None)
            }
            Entry::Fifo(p, m) => {
                let r = unsafe { libc::mkfifo(cpath(root, p).as_ptr(), *m) };
                assert_eq!(r, 0, "mkfifo {p}: {}", std::io::Error::last_os_error());
                (p, Some(*m))
            }
        };
        let (uid, gid) = ids(*owner);
        std::os::unix::fs::lchown(root.join(path), Some(uid), Some(gid)).unwrap();
        if let Some(m) = mode {
            let r = unsafe { libc::chmod(cpath(root, path).as_ptr(), m) };
            assert_eq!(r, 0, "chmod {path}: {}", std::io::Error::last_os_error());
        }
    }
    let xf = cpath(root, "xf");
    let (name, value) = (c"user.tag", b"lower");
    let r = unsafe { libc::setxattr(xf.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr xf (does {} support user xattrs?): {}", root.display(), std::io::Error::last_os_error());
    prepare_root(root, user);
    // Children before parents: setting a child's times does not touch its parent's.
    for (_, e) in LOWER.iter().rev() {
        let p = match e {
            Entry::Dir(p, _)
            | Entry::File(p, _, _)
            | Entry::Big(p, _, _)
            | Entry::Symlink(p, _)
            | Entry::HardLink(p, _)
            | Entry::Fifo(p, _) => p,
        };
        set_setup_mtime(root, p);
    }
    set_setup_mtime(root, ".");
}

/// Makes `root` look like the lower's root: the user's, mode 0755, mtime [`SETUP_MTIME`]
/// (also used for a union's empty upper, whose root is the merged root's).
pub fn prepare_root(root: &Path, user: (u32, u32)) {
    std::os::unix::fs::chown(root, Some(user.0), Some(user.1)).unwrap();
    let r = unsafe { libc::chmod(cpath(root, ".").as_ptr(), 0o755) };
    assert_eq!(r, 0, "chmod {}", root.display());
    set_setup_mtime(root, ".");
}

fn set_setup_mtime(root: &Path, rel: &str) {
    let t = libc::timespec { tv_sec: SETUP_MTIME, tv_nsec: 0 };
    let r = unsafe {
        libc::utimensat(libc::AT_FDCWD, cpath(root, rel).as_ptr(), [t, t].as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    };
    assert_eq!(r, 0, "utimensat {rel}: {}", std::io::Error::last_os_error());
}

/// A view's observable state: relative path → description. Names in `skip_at_root` (a
/// backend's own bookkeeping, see the known differences) are left out.
pub fn observe(root: &Path, user: (u32, u32), skip_at_root: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(".".to_string(), describe(root, ".", user));
    walk(root, "", user, skip_at_root, &mut out);
    out
}

fn walk(root: &Path, rel: &str, user: (u32, u32), skip: &[&str], out: &mut BTreeMap<String, String>) {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) => {
            out.insert(format!("{rel}/*"), format!("readdir failed: {e}"));
            return;
        }
    };
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                out.insert(format!("{rel}/*"), format!("readdir failed: {err}"));
                return;
            }
        };
        let name = e.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && skip.contains(&name.as_str()) {
            continue;
        }
        let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        out.insert(child.clone(), describe(root, &child, user));
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(root, &child, user, skip, out);
        }
    }
}

fn describe(root: &Path, rel: &str, user: (u32, u32)) -> String {
    let p = root.join(rel);
    let md = match fs::symlink_metadata(&p) {
        Ok(m) => m,
        Err(e) => return format!("lstat failed: {e}"),
    };
    let mut d = describe_lstat(&md, user);
    let ft = md.file_type();
    if ft.is_file() {
        match fs::read(&p) {
            Ok(b) => d.push_str(&format!(" content {}", escape(&b))),
            Err(e) => d.push_str(&format!(" read failed: {e}")),
        }
    } else if ft.is_symlink() {
        match fs::read_link(&p) {
            Ok(t) => d.push_str(&format!(" -> {}", escape(t.as_os_str().as_bytes()))),
            Err(e) => d.push_str(&format!(" readlink failed: {e}")),
        }
    } else if ft.is_char_device() || ft.is_block_device() {
        d.push_str(&format!(" dev {}:{}", libc::major(md.rdev()), libc::minor(md.rdev())));
    }
    if rel != "." {
        // The root's mtime is the mount point's on some backends: not compared.
        d.push_str(&format!(" mtime {}", mtime_class(&md)));
    }
    d
}

/// Kind, permission bits, owner, and for non-directories size and link count.
pub fn describe_lstat(md: &fs::Metadata, user: (u32, u32)) -> String {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "chardev"
    } else if ft.is_block_device() {
        "blockdev"
    } else {
        "socket"
    };
    let who = |id: u32, user_id: u32| match id {
        0 => "root".to_string(),
        i if i == user_id => "user".to_string(),
        i => i.to_string(),
    };
    let mut d = format!("{kind} {:04o} {}:{}", md.mode() & 0o7777, who(md.uid(), user.0), who(md.gid(), user.1));
    if !ft.is_dir() {
        d.push_str(&format!(" size {} nlink {}", md.size(), md.nlink()));
    }
    d
}

/// `setup`, an explicitly set value, or `now`.
pub fn mtime_class(md: &fs::Metadata) -> String {
    match md.mtime() {
        SETUP_MTIME => "setup".into(),
        t if t < EXPLICIT_BELOW => t.to_string(),
        _ => "now".into(),
    }
}

/// Bytes as text: short ones escaped, long ones as length and hash.
pub fn escape(b: &[u8]) -> String {
    if b.len() <= 64 {
        return format!("{:?}", String::from_utf8_lossy(b));
    }
    // FNV-1a: stable across processes (the child and the parent compare these).
    let h = b.iter().fold(0xcbf29ce484222325u64, |h, &c| (h ^ c as u64).wrapping_mul(0x100000001b3));
    format!("<{} bytes, fnv {h:016x}>", b.len())
}
