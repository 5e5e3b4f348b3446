# Measurement code for issue 12's spike: make a placeholder tree (metadata only: dirs, sparse
# files of the right size, modes, mtimes, symlinks) of SRC at DST; prints the rate.
import os, sys, time
src, dst = sys.argv[1], sys.argv[2]
t = time.monotonic(); n = 0
for d, dirs, files in os.walk(src):
    rel = os.path.relpath(d, src)
    od = os.path.join(dst, rel) if rel != "." else dst
    os.makedirs(od, exist_ok=True)
    for name in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
        s = os.path.join(d, name); o = os.path.join(od, name); st = os.lstat(s)
        if os.path.islink(s):
            os.symlink(os.readlink(s), o)
        else:
            fd = os.open(o, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, st.st_size); os.fchmod(fd, st.st_mode & 0o7777); os.setxattr(fd, 'user.cs.want', b'1'); os.close(fd)
        os.utime(o, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        n += 1
for d, dirs, files in os.walk(src, topdown=False):  # directory mtimes last
    rel = os.path.relpath(d, src); st = os.stat(d)
    os.utime(os.path.join(dst, rel), ns=(st.st_atime_ns, st.st_mtime_ns))
el = time.monotonic() - t
print(f"placeholders: {n} entries in {el:.2f} s ({n/el:.0f}/s)")
