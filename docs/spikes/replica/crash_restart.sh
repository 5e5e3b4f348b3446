#!/bin/bash
# Measurement code (issue 12 spike): the fill worker is killed (-9) while a reader waits;
# a holder process keeps the fanotify group; the new worker finds the event its predecessor
# took in the journal, keeps its descriptor number taken, fills the file, answers by number.
# Expects the journaled loop image mounted at /var/tmp/spike-a/mnt (see docs/replica.md).
B=/var/tmp/spike-a; cd $B
rm -rf mnt/rep mnt/up mnt/wk hsm.journal && mkdir -p mnt/up mnt/wk mnt/merged && python3 placeholders.py store mnt/rep >/dev/null
mount -t overlay overlay -o lowerdir=$B/mnt/rep,upperdir=$B/mnt/up,workdir=$B/mnt/wk mnt/merged
HSM_JOURNAL=$B/hsm.journal HSM_SYNC_FIRST=1 HSM_HOLDER=1 HSM_OPEN=1 ./hsm fs $B/mnt/rep $B/store 3000 2> hsm-restart.log & H=$!
sleep 0.3; W=$(pgrep -P $H)
(timeout 30 cmp mnt/merged/w4/set-r1/d01/f0100 store/w4/set-r1/d01/f0100 > orphan.out 2>&1; echo "exit $?" >> orphan.out) & OP=$!
sleep 0.5; kill -9 $W
timeout 15 cmp mnt/merged/w4/set-r1/d09/f0900 store/w4/set-r1/d09/f0900 && echo "a later open after the restart: right content" || echo "a later open: WRONG or timed out"
wait $OP; grep -q "exit 0" orphan.out && echo "the reader that waited through the kill: right content" || echo "the waiting reader: $(cat orphan.out)"
for c in $(pgrep -P $H); do kill $c; done; kill $H; wait $H 2>/dev/null
umount mnt/merged; cat hsm-restart.log
