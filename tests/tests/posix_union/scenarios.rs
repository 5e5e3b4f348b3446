//! The scenarios: each a sequence of operations (as root or as the user) on the view, starting
//! from [`super::observe::LOWER`]. Names are stable: the known-difference tables refer to them.

use libc::{O_APPEND, O_CREAT, O_DIRECTORY, O_EXCL, O_NOFOLLOW, O_RDONLY, O_TRUNC, O_WRONLY};

use super::observe::SET_MTIME;
use super::ops::{Id, Op, Op::*, Time, Who};

pub struct Scenario {
    pub name: &'static str,
    pub ops: Vec<(Who, Op)>,
}

const U: Who = Who::User;
const R: Who = Who::Root;

fn w(path: &'static str, flags: i32, data: &'static str) -> Op {
    Write { path, flags, data }
}
fn open(path: &'static str, flags: i32, mode: u32) -> Op {
    Open { path, flags, mode }
}
fn chown(path: &'static str, uid: Id, gid: Id) -> Op {
    Chown { path, uid, gid, follow: true }
}
fn times(path: &'static str, atime: Time, mtime: Time) -> Op {
    Utimens { path, atime, mtime, follow: true }
}

/// Every scenario, in a fixed order (the child process finds its operation by index).
pub fn all() -> Vec<Scenario> {
    let set = Time::At(SET_MTIME);
    let list: Vec<(&'static str, Vec<(Who, Op)>)> = vec![
        // open, creat, read, write: copy-up on write
        ("read_lower", vec![(U, Read("f")), (U, Read("big"))]),
        ("write_lower_trunc", vec![(U, w("f", O_TRUNC, "new\n")), (U, Read("f")), (U, Stat("f"))]),
        ("append_lower", vec![(U, w("f", O_APPEND, "more\n")), (U, Read("f")), (U, Mtime("f"))]),
        ("creat_new", vec![(U, open("new", O_CREAT | O_WRONLY | O_TRUNC, 0o640)), (U, Stat("new"))]),
        ("creat_excl_over_lower", vec![(U, open("f", O_CREAT | O_EXCL | O_WRONLY, 0o644))]),
        ("creat_trunc_lower", vec![(U, open("f", O_CREAT | O_TRUNC | O_WRONLY, 0o600)), (U, Stat("f"))]),
        ("create_in_lower_dir", vec![(U, w("d/new", O_CREAT, "x\n")), (U, ReadDir("d")), (U, Stat("d/new"))]),
        ("open_dir_for_write", vec![(U, open("d", O_WRONLY, 0))]),
        ("open_file_as_dir", vec![(U, open("f", O_RDONLY | O_DIRECTORY, 0)), (U, open("f/", O_RDONLY, 0))]),
        ("open_missing", vec![(U, Read("missing")), (U, Read("f/x")), (U, Read("d/missing"))]),
        ("open_nofollow_symlink", vec![(U, open("s", O_RDONLY | O_NOFOLLOW, 0))]),
        ("write_readonly_file_as_owner", vec![(U, w("ro", 0, "x")), (U, Read("ro"))]),
        ("write_readonly_file_as_root", vec![(R, w("ro", 0, "root wrote\n")), (U, Read("ro")), (U, Stat("ro"))]),
        ("read_private_as_root", vec![(R, Read("priv"))]),
        ("write_root_file_as_user", vec![(U, w("rootfile", 0, "x")), (U, Read("rootfile"))]),
        ("create_in_root_dir_as_user", vec![(U, open("rootdir/new", O_CREAT | O_WRONLY, 0o644))]),
        (
            "create_in_readonly_dir",
            vec![(U, open("rodir/new", O_CREAT | O_WRONLY, 0o644)), (R, open("rodir/new", O_CREAT | O_WRONLY, 0o644))],
        ),
        ("write_through_symlink", vec![(U, w("s", O_TRUNC, "via link\n")), (U, Read("f")), (U, Readlink("s"))]),
        ("create_through_dangling_symlink", vec![(U, w("dangling", O_CREAT, "made\n")), (U, Read("missing"))]),
        ("write_fifo_nonblocking", vec![(U, open("fifo", O_WRONLY | libc::O_NONBLOCK, 0))]),
        // unlink
        (
            "unlink_lower_file",
            vec![(U, Unlink("f")), (U, Stat("f")), (U, open("f", O_CREAT | O_EXCL | O_WRONLY, 0o600)), (U, Stat("f"))],
        ),
        ("unlink_lower_dir", vec![(U, Unlink("d"))]),
        ("unlink_shows_in_root_listing", vec![(U, Unlink("f")), (U, ReadDir("."))]),
        ("unlink_root_file_in_user_dir", vec![(U, Unlink("rootfile"))]),
        ("unlink_in_root_dir_as_user", vec![(U, Unlink("rootdir/f"))]),
        ("unlink_sticky", vec![(U, Unlink("sticky/rootf")), (U, Unlink("sticky/userf")), (U, ReadDir("sticky"))]),
        ("unlink_lower_symlink", vec![(U, Unlink("s")), (U, Read("f"))]),
        ("unlink_lower_hardlink", vec![(U, Unlink("hl1")), (U, Stat("hl2"))]),
        ("unlink_missing", vec![(U, Unlink("missing"))]),
        ("unlink_in_lower_dir_then_list", vec![(U, Unlink("d/a")), (U, w("d/n", O_CREAT, "n\n")), (U, ReadDir("d"))]),
        // rename
        ("rename_lower_file", vec![(U, Rename("f", "g")), (U, Read("g")), (U, Stat("f"))]),
        ("rename_lower_file_over_lower", vec![(U, Rename("f", "priv")), (U, Read("priv")), (U, Stat("priv"))]),
        ("rename_lower_dir", vec![(U, Rename("d", "d2")), (U, ReadDir("d2")), (U, Read("d2/sub/c")), (U, Stat("d"))]),
        (
            "rename_lower_dir_then_recreate",
            vec![(U, Rename("d", "d2")), (U, Mkdir("d", 0o755)), (U, ReadDir("d")), (U, ReadDir("d2"))],
        ),
        ("rename_lower_dir_into_dir", vec![(U, Rename("d", "empty/d")), (U, ReadDir("empty/d/sub"))]),
        ("rename_lower_dir_over_empty_dir", vec![(U, Rename("d", "empty")), (U, ReadDir("empty"))]),
        ("rename_dir_over_nonempty_dir", vec![(U, Rename("empty", "d"))]),
        ("rename_dir_over_file", vec![(U, Rename("d", "f")), (U, Rename("f", "d"))]),
        ("rename_dir_into_itself", vec![(U, Rename("d", "d/sub/x"))]),
        ("rename_lower_symlink", vec![(U, Rename("s", "s2")), (U, Readlink("s2"))]),
        ("rename_new_over_lower", vec![(U, w("new", O_CREAT, "n\n")), (U, Rename("new", "f")), (U, Read("f"))]),
        ("rename_in_root_dir_as_user", vec![(U, Rename("rootdir/f", "rootdir/g"))]),
        ("rename_sticky", vec![(U, Rename("sticky/rootf", "sticky/x")), (U, Rename("sticky/userf", "sticky/y"))]),
        ("rename_to_itself", vec![(U, Rename("f", "f")), (U, Read("f"))]),
        ("rename_lower_file_into_lower_dir", vec![(U, Rename("f", "d/sub/f")), (U, ReadDir("d/sub"))]),
        // link
        (
            "link_lower_file",
            vec![(U, Link("f", "f2")), (U, Stat("f")), (U, w("f2", O_APPEND, "via f2\n")), (U, Read("f"))],
        ),
        (
            "link_within_upper",
            vec![
                (U, w("new", O_CREAT, "n\n")),
                (U, Link("new", "new2")),
                (U, w("new2", O_APPEND, "via new2\n")),
                (U, Read("new")),
                (U, Stat("new")),
            ],
        ),
        ("link_dir", vec![(U, Link("d", "d2"))]),
        ("link_over_existing", vec![(U, Link("f", "priv"))]),
        ("link_root_file_as_user", vec![(U, Link("rootfile", "rl"))]),
        ("lower_hardlinks_after_write", vec![(U, w("hl1", O_APPEND, "more\n")), (U, Read("hl2")), (U, Stat("hl2"))]),
        // symlink
        ("symlink_new", vec![(U, Symlink("f", "ln")), (U, Readlink("ln")), (U, Read("ln"))]),
        ("symlink_over_existing", vec![(U, Symlink("x", "f"))]),
        ("symlink_in_lower_dir", vec![(U, Symlink("../f", "d/ln")), (U, Read("d/ln"))]),
        ("readlink_lower", vec![(U, Readlink("s")), (U, Readlink("dangling")), (U, Readlink("f"))]),
        // chmod
        ("chmod_lower_file", vec![(U, Chmod("f", 0o600)), (U, Stat("f")), (U, Read("f"))]),
        ("chmod_lower_dir", vec![(U, Chmod("d", 0o700)), (U, Stat("d")), (U, ReadDir("d"))]),
        ("chmod_root_file_as_user", vec![(U, Chmod("rootfile", 0o666))]),
        ("chmod_through_symlink", vec![(U, Chmod("s", 0o600)), (U, Stat("f"))]),
        ("chmod_as_root", vec![(R, Chmod("priv", 0o604)), (U, Stat("priv"))]),
        (
            "chmod_then_write_as_owner",
            vec![(U, Chmod("f", 0o444)), (U, w("f", 0, "x")), (R, w("f", O_APPEND, "root\n")), (U, Read("f"))],
        ),
        ("chmod_setgid_dir", vec![(U, Chmod("d", 0o2755)), (U, Mkdir("d/new", 0o755)), (U, Stat("d/new"))]),
        // chown
        (
            "chown_lower_to_root",
            vec![(R, chown("f", Id::Root, Id::Root)), (U, Stat("f")), (U, w("f", 0, "x")), (U, Read("f"))],
        ),
        ("chown_lower_as_user_to_root", vec![(U, chown("f", Id::Root, Id::Keep))]),
        ("chown_noop_as_user", vec![(U, chown("f", Id::Keep, Id::Keep)), (U, chown("f", Id::User, Id::User))]),
        (
            "lchown_lower_symlink",
            vec![(R, Chown { path: "s", uid: Id::Root, gid: Id::Root, follow: false }), (U, Stat("s")), (U, Stat("f"))],
        ),
        (
            "chown_lower_dir",
            vec![(R, chown("d", Id::Root, Id::Root)), (U, open("d/new", O_CREAT | O_WRONLY, 0o644)), (U, Stat("d"))],
        ),
        ("chown_root_file_to_user", vec![(R, chown("rootfile", Id::User, Id::User)), (U, w("rootfile", 0, "mine"))]),
        // truncate
        ("truncate_lower_shrink", vec![(U, Truncate("f", 3)), (U, Read("f"))]),
        ("truncate_lower_grow", vec![(U, Truncate("f", 100)), (U, Stat("f"))]),
        ("truncate_readonly_as_owner", vec![(U, Truncate("ro", 0))]),
        ("truncate_dir", vec![(U, Truncate("d", 0))]),
        ("truncate_big_lower", vec![(U, Truncate("big", 10)), (U, Read("big"))]),
        ("truncate_root_file_as_user", vec![(U, Truncate("rootfile", 0))]),
        // utimensat
        ("utimens_lower_file", vec![(U, times("f", set, set)), (U, Mtime("f"))]),
        ("touch_m_lower_file", vec![(U, times("f", Time::Omit, Time::Now)), (U, Mtime("f"))]),
        ("touch_m_lower_dir", vec![(U, times("d", Time::Omit, Time::Now)), (U, Mtime("d"))]),
        ("touch_lower_file_as_root", vec![(R, times("f", set, set)), (U, Mtime("f"))]),
        (
            "utimens_root_file_as_user",
            vec![(U, times("rootfile", Time::Now, Time::Now)), (U, times("rootfile", set, set))],
        ),
        ("utimens_readonly_as_owner", vec![(U, times("ro", Time::Now, Time::Now)), (U, Mtime("ro"))]),
        (
            "utimens_symlink_nofollow",
            vec![(U, Utimens { path: "s", atime: set, mtime: set, follow: false }), (U, Mtime("s")), (U, Mtime("f"))],
        ),
        ("utimens_through_symlink", vec![(U, times("s", set, set)), (U, Mtime("f"))]),
        ("write_updates_mtime", vec![(U, w("d/a", O_APPEND, "x")), (U, Mtime("d/a")), (U, Mtime("d"))]),
        // mkdir, rmdir, rm -r
        ("mkdir_new", vec![(U, Mkdir("x", 0o750)), (U, Stat("x"))]),
        ("mkdir_over_lower", vec![(U, Mkdir("d", 0o755)), (U, Mkdir("f", 0o755)), (U, Mkdir("s", 0o755))]),
        ("mkdir_in_lower_dir", vec![(U, Mkdir("d/sub/new", 0o700)), (U, ReadDir("d/sub"))]),
        ("mkdir_in_readonly_dir", vec![(U, Mkdir("rodir/new", 0o755)), (R, Mkdir("rodir/new", 0o755))]),
        (
            "rmdir_lower_empty_then_recreate",
            vec![(U, Rmdir("empty")), (U, Stat("empty")), (U, Mkdir("empty", 0o700)), (U, ReadDir("empty"))],
        ),
        ("rmdir_lower_nonempty", vec![(U, Rmdir("d"))]),
        (
            "rmdir_after_emptying_lower",
            vec![(U, Unlink("d/sub/c")), (U, Rmdir("d/sub")), (U, Unlink("d/a")), (U, Unlink("d/b")), (U, Rmdir("d"))],
        ),
        ("rm_r_lower_dir", vec![(U, RemoveAll("d")), (U, Stat("d")), (U, Mkdir("d", 0o755)), (U, ReadDir("d"))]),
        ("rm_r_root_dir_as_user", vec![(U, RemoveAll("rootdir")), (U, ReadDir("rootdir"))]),
        ("rmdir_file", vec![(U, Rmdir("f"))]),
        ("rmdir_dot", vec![(U, Rmdir("d/."))]),
        ("rmdir_through_symlink", vec![(U, Rmdir("sd"))]),
        // mkfifo, mknod
        ("mkfifo_new", vec![(U, Mkfifo("p", 0o640)), (U, Stat("p"))]),
        ("mkfifo_in_lower_dir", vec![(U, Mkfifo("d/p", 0o600)), (U, Stat("d/p"))]),
        ("mkfifo_over_lower", vec![(U, Mkfifo("f", 0o644))]),
        (
            "mknod_chardev_as_root",
            vec![(R, Mknod { path: "null2", mode: libc::S_IFCHR | 0o666, major: 1, minor: 3 }), (U, Stat("null2"))],
        ),
        ("mknod_chardev_as_user", vec![(U, Mknod { path: "null2", mode: libc::S_IFCHR | 0o666, major: 1, minor: 3 })]),
        ("mknod_fifo_as_user", vec![(U, Mknod { path: "p", mode: libc::S_IFIFO | 0o644, major: 0, minor: 0 })]),
        ("mknod_regular_as_user", vec![(U, Mknod { path: "r", mode: libc::S_IFREG | 0o600, major: 0, minor: 0 })]),
        // xattr
        (
            "setxattr_lower_file",
            vec![(U, SetXattr("f", "user.k", "v")), (U, GetXattr("f", "user.k")), (U, ListXattr("f"))],
        ),
        (
            "getxattr_lower",
            vec![(U, GetXattr("xf", "user.tag")), (U, ListXattr("xf")), (U, GetXattr("f", "user.none"))],
        ),
        ("removexattr_lower", vec![(U, RemoveXattr("xf", "user.tag")), (U, ListXattr("xf"))]),
        ("xattr_kept_on_copy_up", vec![(U, w("xf", O_APPEND, "more\n")), (U, GetXattr("xf", "user.tag"))]),
        ("setxattr_root_file_as_user", vec![(U, SetXattr("rootfile", "user.k", "v"))]),
        ("setxattr_lower_dir", vec![(U, SetXattr("d", "user.k", "v")), (U, ListXattr("d"))]),
        // mmap
        ("mmap_write_lower", vec![(U, MmapWrite { path: "big", offset: 100, data: "MMAP" }), (U, Read("big"))]),
        (
            "mmap_write_new",
            vec![(U, w("new", O_CREAT, "hello world\n")), (U, MmapWrite { path: "new", offset: 0, data: "HELLO" })],
        ),
        ("mmap_read_lower", vec![(U, MmapRead("f"))]),
        ("mmap_after_write", vec![(U, w("f", O_TRUNC, "rewritten\n")), (U, MmapRead("f"))]),
        // fallocate
        ("fallocate_lower", vec![(U, Fallocate { path: "f", mode: 0, offset: 0, len: 8192 }), (U, Stat("f"))]),
        (
            "fallocate_keep_size",
            vec![(U, Fallocate { path: "f", mode: libc::FALLOC_FL_KEEP_SIZE, offset: 0, len: 8192 }), (U, Stat("f"))],
        ),
        (
            "fallocate_punch_hole",
            vec![(
                U,
                Fallocate {
                    path: "big",
                    mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset: 0,
                    len: 4096,
                },
            )],
        ),
        // locks
        ("flock_lower", vec![(U, Flock("f"))]),
        ("flock_new", vec![(U, w("new", O_CREAT, "n\n")), (U, Flock("new"))]),
        ("ofd_lock_lower", vec![(U, FcntlLock("f"))]),
        // O_TMPFILE
        ("tmpfile_linked_at_root", vec![(U, TmpFile { dir: ".", link: "t" }), (U, Read("t"))]),
        ("tmpfile_linked_in_lower_dir", vec![(U, TmpFile { dir: "d", link: "d/t" }), (U, Read("d/t"))]),
        ("tmpfile_unlinked", vec![(U, TmpFile { dir: "d", link: "" }), (U, ReadDir("d"))]),
        // statfs, access
        ("statfs", vec![(U, Statfs(".")), (U, Statfs("d/a"))]),
        (
            "access_checks",
            vec![
                (U, Access("ro", libc::W_OK)),
                (R, Access("ro", libc::W_OK)),
                (U, Access("exe", libc::X_OK)),
                (U, Access("f", libc::X_OK)),
                (U, Access("rootdir/f", libc::W_OK)),
                (U, Access("rodir", libc::W_OK)),
                (U, Access("missing", libc::F_OK)),
            ],
        ),
    ];
    list.into_iter().map(|(name, ops)| Scenario { name, ops }).collect()
}
