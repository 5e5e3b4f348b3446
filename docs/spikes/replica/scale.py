# Measurement code (issue 12 spike): the metadata store at 1,000,000 paths, two ways.
# (1) placeholders on ext4 (dirs of 100 sparse files, mode, mtime, want-xattr), (2) SQLite rows.
import os, sqlite3, sys, time
N = int(sys.argv[2]); root = sys.argv[1]
t = time.monotonic()
for i in range(N):
    if i % 100 == 0:
        d = f"{root}/ph/d{i//10000:03}/e{(i//100)%100:02}"; os.makedirs(d, exist_ok=True)
    fd = os.open(f"{d}/f{i:07}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, 4096 + i % 60000); os.setxattr(fd, "user.cs.want", b"1"); os.close(fd)
    os.utime(f"{d}/f{i:07}", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
el = time.monotonic() - t
os.sync(); print(f"placeholders: {N} in {el:.1f} s ({N/el:.0f}/s)")
t = time.monotonic()
db = sqlite3.connect(f"{root}/meta.db"); db.execute("pragma journal_mode=wal")
db.execute("create table e (parent int, name text, kind int, mode int, size int, mtime int, target text, primary key (parent, name)) without rowid")
with db:
    db.executemany("insert into e values (?,?,?,?,?,?,?)", ((i // 100, f"f{i:07}", 1, 0o644, 4096 + i % 60000, 1_600_000_000, None) for i in range(N)))
el = time.monotonic() - t
t = time.monotonic(); 
for i in range(0, N, N // 10000): db.execute("select * from e where parent=? and name=?", (i // 100, f"f{i:07}")).fetchone()
lk = (time.monotonic() - t) / 10000 * 1e6
print(f"sqlite: {N} rows in one transaction {el:.1f} s ({N/el:.0f}/s), point lookup {lk:.1f} µs, file {os.path.getsize(root + '/meta.db') >> 20} MiB")
