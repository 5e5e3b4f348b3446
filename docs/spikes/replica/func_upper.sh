#!/bin/bash
# Measurement code (issue 12 spike): (1) a mount mark does not see reads through overlayfs;
# (2) a round's new version written through the merged view as a placeholder (sparse, right
# size, mode, mtime) into an upper layer on the watched filesystem is filled at first open.
set -u
B=/var/tmp/spike-a; cd $B
rm -rf mnt/rep mnt/up2 mnt/wk2 mnt/m2 && mkdir -p mnt/up2 mnt/wk2 mnt/m2 && python3 placeholders.py store mnt/rep > /dev/null
# (1) mount mark on a bind mount of the replica
mkdir -p rb && mount --bind mnt/rep rb
HSM_OPEN=1 ./hsm mount $B/rb $B/store 0 2> hsm-mount.log & HP=$!; sleep 0.3
mount -t overlay overlay -o lowerdir=$B/rb,upperdir=$B/mnt/up2,workdir=$B/mnt/wk2 mnt/m2
f=w4/set-r1/d00/f0000
cmp -s mnt/m2/$f store/$f && echo "mount mark, through overlay: filled" || echo "mount mark, through overlay: NOT filled (reads zeros)"
cmp -s rb/$f store/$f && echo "mount mark, direct on the marked mount: filled" || echo "mount mark, direct: NOT filled"
umount mnt/m2; kill $HP; wait $HP 2>/dev/null; umount rb
# (2) filesystem mark; the round writes a placeholder for a changed file through the merged view
rm -rf mnt/up2 mnt/wk2 && mkdir -p mnt/up2 mnt/wk2
HSM_VERBOSE=1 HSM_OPEN=1 ./hsm fs $B/mnt/rep $B/store 0 2> hsm-upper.log & HP=$!; sleep 0.3
mount -t overlay overlay -o lowerdir=$B/mnt/rep,upperdir=$B/mnt/up2,workdir=$B/mnt/wk2,redirect_dir=on,index=on mnt/m2
f=w4/set-r1/d00/f0001
exec 7< mnt/m2/$f; head -c 8 <&7 | od -An -tx1 | sed 's/^/old version, first bytes:/'
# the project's new version (the store stands in for P; the daemon fetches by path)
head -c 5000 /dev/urandom > store/$f.new && mv store/$f.new store/$f
python3 - <<PY
import os
m = "$B/mnt/m2/$f"; t = m + ".cs-tmp"
fd = os.open(t, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.ftruncate(fd, os.stat("$B/store/$f").st_size); os.setxattr(fd, "user.cs.want", b"1"); os.close(fd)
os.utime(t, ns=(0, os.stat("$B/store/$f").st_mtime_ns))
os.rename(t, m)
PY
stat -c 'after the round: size %s blocks %b' mnt/m2/$f
cmp -s mnt/m2/$f store/$f && echo "new open through the merged view: the new version, filled" || echo "new open: WRONG"
echo "the descriptor opened before reads on: $(tail -c +9 <&7 | head -c 8 | od -An -tx1)  (the old lower file, kept)"
exec 7<&-
stat -c 'upper file after fill: size %s blocks %b' mnt/up2/$f
umount mnt/m2; kill $HP; wait $HP 2>/dev/null
grep -c allowed hsm-upper.log
# (3), run by hand (docs/replica.md, "metacopy"): overlayfs data-only lower layer
#   lowerdir=META::DATA, metacopy=on,redirect_dir=on; META/d/x is a sparse file of the right
#   size with trusted.overlay.metacopy="" and trusted.overlay.redirect="/ab/cdef"; DATA/ab/cdef a
#   placeholder with user.cs.want; hsm watches DATA's filesystem; `cmp MERGED/d/x SOURCE` passes.
