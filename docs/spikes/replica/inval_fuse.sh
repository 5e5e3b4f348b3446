#!/bin/bash
# Measurement code (issue 12 spike): how a round's changes reach the merged view when the
# overlay's lower is our FUSE filesystem (the control FIFO stands in for the round).
set -u
B=/var/tmp/spike-a; ST=$B/istore; L=$B/if-lower; O=$B/if; FIFO=$B/if.ctl
rm -rf $ST $O && mkdir -p $ST/d/sub $L $O/up $O/wk $O/m && rm -f $FIFO && mkfifo $FIFO
echo v1 > $ST/d/x; echo z > $ST/d/z; echo s > $ST/d/sub/s
/var/tmp/spike-target/release/spike-fuse $ST $L $FIFO 2> $B/if.log & FP=$!
for i in $(seq 50); do mountpoint -q $L && break; sleep 0.05; done
mount -t overlay overlay -o lowerdir=$L,upperdir=$O/up,workdir=$O/wk,${OVL_OPTS:-redirect_dir=on,index=on} $O/m
M=$O/m
upd() { echo "update $1" > $FIFO; sleep 0.2; }
exec 7< $M/d/x; read -r a <&7; echo "held fd reads: $a"
stat -c 'before: size %s' $M/d/x; ls $M/d/y 2>/dev/null || echo "d/y absent (negative dentry now cached)"
(cd $M/d/sub && sleep 1.5 && ls ../y >/dev/null 2>&1 && echo "a shell whose cwd is d/sub sees ../y" || echo "a shell whose cwd is d/sub does NOT see ../y") & SP=$!
# the round: x changes (new inode, by rename), y appears, z goes
printf 'version two\n' > $ST/d/x.tmp && mv $ST/d/x.tmp $ST/d/x; upd d/x
echo y > $ST/d/y; upd d/y
rm $ST/d/z; upd d/z
exec 7<&-; b=$(head -1 $M/d/x)
echo "next open reads: $b ($(stat -c 'size %s' $M/d/x))"
y=$(cat $M/d/y 2>&1) && echo "d/y visible: $y" || echo "d/y NOT visible: $y"
ls $M/d/z >/dev/null 2>&1 && echo "d/z still visible" || echo "d/z gone"
echo "listing of d: $(ls $M/d | tr '\n' ' ')"
wait $SP
# a file open before the change keeps its version:
echo w1 > $ST/d/w; upd d/w; exec 9< $M/d/w
printf 'w2 longer\n' > $ST/d/w.tmp && mv $ST/d/w.tmp $ST/d/w; upd d/w
echo "fd opened before the change reads: $(cat <&9)"; exec 9<&-
echo "new open reads: $(cat $M/d/w)"
umount $M; echo quit > $FIFO; wait $FP 2>/dev/null; umount $L 2>/dev/null; mountpoint -q $L && echo "STILL MOUNTED"
grep -v "^$" $B/if.log | tail -4
