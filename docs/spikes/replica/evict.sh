#!/bin/bash
# Measurement code (issue 12 spike): evicting a filled file (write lease, punch hole, wanted
# again) is refused while overlayfs has it open, and the next open through overlayfs refills it.
B=/var/tmp/spike-a; cd $B
rm -rf mnt/rep mnt/up mnt/wk && mkdir -p mnt/up mnt/wk mnt/merged && python3 placeholders.py store mnt/rep >/dev/null
mount -t overlay overlay -o lowerdir=$B/mnt/rep,upperdir=$B/mnt/up,workdir=$B/mnt/wk,redirect_dir=on,index=on mnt/merged
rm -f evict.ctl && mkfifo evict.ctl
HSM_CTL=$B/evict.ctl HSM_OPEN=1 ./hsm fs $B/mnt/rep $B/store 0 2> hsm-evict.log & H=$!; sleep 0.3
f=w4/set-r2/d03/f0300
cmp mnt/merged/$f store/$f && echo "filled at first open: $(stat -c %b mnt/rep/$f) blocks"
exec 7< mnt/merged/$f
echo "evict /$f" > evict.ctl; sleep 0.3
echo "while the merged view holds it open: $(stat -c %b mnt/rep/$f) blocks; the open descriptor reads right: $(cmp - store/$f <&7 && echo yes)"
exec 7<&-; sleep 0.2
ls -l /proc/[0-9]*/fd/ 2>/dev/null | grep -c "f0300" | sed 's/^/descriptors naming the file before the second eviction: /'
echo "evict /$f" > evict.ctl; sleep 0.3
echo "once closed: $(stat -c %b mnt/rep/$f) blocks"
cmp mnt/merged/$f store/$f && echo "the next open through the merged view: refilled, right content ($(stat -c %b mnt/rep/$f) blocks)"
kill $H; wait $H 2>/dev/null; umount mnt/merged; cat hsm-evict.log
