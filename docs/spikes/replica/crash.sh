#!/bin/bash
# Measurement code (issue 12 spike): a reader blocked on an unfilled placeholder when the
# fanotify daemon is killed (-9); with and without a holder process keeping the group open.
B=/var/tmp/spike-a; cd $B
rm -rf mnt/rep mnt/up mnt/wk && mkdir -p mnt/up mnt/wk mnt/merged && python3 placeholders.py store mnt/rep > /dev/null
mount -t overlay overlay -o lowerdir=$B/mnt/rep,upperdir=$B/mnt/up,workdir=$B/mnt/wk,redirect_dir=on,index=on mnt/merged
for mode in plain holder; do
  if [ $mode = holder ]; then export HSM_HOLDER=1; fi
  HSM_OPEN=1 ./hsm fs $B/mnt/rep $B/store 3000 2> hsm-crash-$mode.log & HP=$!; sleep 0.3
  f=w4/set-r2/d0$([ $mode = plain ] && echo 1 || echo 2)/f0$([ $mode = plain ] && echo 1 || echo 2)00
  t0=$(date +%s.%N)
  ( cmp mnt/merged/$f store/$f > crash-$mode.out 2>&1; echo "cmp exit $? after $(echo "$(date +%s.%N) - $t0" | bc) s" >> crash-$mode.out ) & RP=$!
  sleep 0.5
  if [ $mode = holder ]; then W=$(pgrep -P $HP | head -1); kill -9 $W; echo "killed worker $W"; else kill -9 $HP; echo "killed daemon $HP"; fi
  if [ $mode = holder ]; then sleep 5; echo "$mode: blocked reader after 5 s: $(cat crash-$mode.out | tr '\n' ' ' | sed 's/^$/still blocked/')"; else wait $RP; echo "$mode: blocked reader: $(cat crash-$mode.out | tr '\n' ' ')"; fi
  g=${f%0}1; timeout 10 cmp mnt/merged/$g store/$g >/dev/null 2>&1 && echo "$mode: a later open: right content" || echo "$mode: a later open: WRONG content or timed out"
  for c in $(pgrep -P $HP); do kill $c; done; kill $HP 2>/dev/null; wait $HP 2>/dev/null; wait $RP 2>/dev/null
  [ $mode = holder ] && echo "$mode: blocked reader once the group closed: $(cat crash-$mode.out | tr '\n' ' ')"
  unset HSM_HOLDER
done
umount mnt/merged
cat hsm-crash-holder.log
