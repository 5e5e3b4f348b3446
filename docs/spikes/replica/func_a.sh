#!/bin/bash
# Functional checks of candidate (a): reads through kernel overlayfs over the placeholder replica.
set -u
cd /var/tmp/spike-a
M=mnt/merged S=store
mount -t overlay overlay -o lowerdir=$PWD/mnt/rep,upperdir=$PWD/mnt/up,workdir=$PWD/mnt/wk,redirect_dir=on,index=on $M || exit 1
f=w4/set-r0/d00
cmp mnt/rep/$f/f0000 $S/$f/f0000 && echo "direct read on the replica: OK"
cmp $M/$f/f0001 $S/$f/f0001 && echo "read() through overlay: OK"
python3 -c "
import mmap
with open('$M/$f/f0002','rb') as f:
    m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); d=m[:]
print('mmap through overlay: OK' if d==open('$S/$f/f0002','rb').read() else 'mmap through overlay: WRONG (all zeros: %s)'%(d.count(0)==len(d)))"
python3 -c "
import mmap
with open('mnt/rep/$f/f0005','rb') as f:
    m=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ); d=m[:]
print('mmap direct: OK' if d==open('$S/$f/f0005','rb').read() else 'mmap direct: WRONG (all zeros: %s)'%(d.count(0)==len(d)))"
cp $M/$f/f0003 /tmp/spike-cp && cmp /tmp/spike-cp $S/$f/f0003 && echo "cp through overlay: OK"; rm -f /tmp/spike-cp
cat $M/$f/f0004 | cmp - $S/$f/f0004 && echo "cat through overlay: OK"
git -C $M/w5/repo-r0 status --porcelain | wc -l | sed 's/^/git status through overlay, changed paths: /'
git -C $M/w5/repo-r0 fsck -q 2>&1 | head -3; echo "git fsck exit $?"
diff <(cd $M/w5/repo-r0 && git show HEAD:pkg00/mod00/file0000.txt) $S/w5/repo-r0/pkg00/mod00/file0000.txt && echo "git show (pack read via mmap): OK"
