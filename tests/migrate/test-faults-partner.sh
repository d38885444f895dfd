#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Partner failures during a live migration, a verified guest load running
# throughout:
#  - the partner is killed (SIGKILL) mid-copy: state "failed" with an error,
#    the guest's I/O goes on without an error, the source's data untouched;
#    a new migrate-start to a fresh partner then runs to the end (ready,
#    cutover, images equal);
#  - the partner's disk is full (its image on a 16 MiB tmpfs when root, else
#    nbdkit's error filter answering ENOSPC to every write; VBD_TEST_NO_MOUNT=1
#    forces that): "failed" saying ENOSPC, the guest unaffected;
#  - once "ready", the partner starts failing writes (nbdkit's error filter):
#    a forwarded guest write fails there, the migration fails, the guest's
#    write still succeeds (its local status);
#  - the guest detaches mid-copy: vbdd-sim exits 0 (vbd-sim checks).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((64 * MiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((16 * MiB)) $((48 * MiB)) # 16..64M data, the guest's 0..16M
cp "$src" "$tmp/orig.img"

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 16M \
        --runtime 600 --seed 5 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# The source's data region is what it was (the guest writes only 0..16M).
data_intact() {
        cmp -s -i $((16 * MiB)) "$src" "$tmp/orig.img" || fail "$1: the source's data region changed"
}

# ---- (a) partner killed mid-copy ----
d1=$tmp/dst1.img
truncate -s $size "$d1"
start_partner vbdd p1 "raw:$d1" || finish
# 8 MiB/s: the copy takes ~8 s, the kill lands in the middle.
mstart "$gsock" "{\"to\": \"$puri\", \"rate\": $((8 * MiB))}" "$tmp/a.start.json" ||
        { fail "migrate-start: $(cat "$tmp/a.start.json")"; finish; }
for i in $(seq 200); do
        status "$tmp/a.st.json"
        ctl check "$tmp/a.st.json" "state == 'copying' and regions_synced >= 8" 2>/dev/null && break
        sleep 0.05
done
check "$tmp/a.st.json" "state == 'copying' and 8 <= regions_synced < regions_total" \
        "(a) mid-copy before the kill"
w0=$(guest_writes)
t0=$(now_ms)
kill -KILL "$partner_pid"
wait "$partner_pid" 2>/dev/null
wait_state failed 30 "$tmp/a.failed.json"
t1=$(now_ms)
echo "# (a) failed $((t1 - t0)) ms after the kill: $(cat "$tmp/a.failed.json")"
check "$tmp/a.failed.json" "state == 'failed' and len(error) > 0" "(a) failed with an error"
[ $((t1 - t0)) -lt 10000 ] || fail "(a) took $((t1 - t0)) ms to notice the dead partner"
wait_writes 1000 20 || fail "(a) the guest's I/O stopped after the partner died"
[ $(($(guest_writes) - w0)) -gt 1000 ] || fail "(a) the guest hardly wrote"
kill -0 "$guest_pid" || fail "(a) the guest died"
data_intact "(a)"
expect_err "$gsock" migrate-cutover '' 'EAGAIN|EINVAL' "(a) cutover after failure"
ctl "$gsock" migrate-status >"$tmp/a.st2.json"
check "$tmp/a.st2.json" "state == 'failed'" "(a) a refused cutover leaves the state"

# ... and again, to a fresh partner: from scratch, to the end.
d2=$tmp/dst2.img
ones "$d2" $size
start_partner vbdd p2 "raw:$d2" || finish
mstart "$gsock" "{\"to\": \"$puri\"}" "$tmp/a2.start.json" ||
        fail "(a) restart after failure: $(cat "$tmp/a2.start.json")"
check "$tmp/a2.start.json" "state in ('connecting', 'copying') and error == '' and regions_synced == 0" \
        "(a) restart starts from scratch"
wait_state ready 120 "$tmp/a2.ready.json"
wait_writes 300 20 || fail "(a) the guest does not write once ready"
ctl "$gsock" migrate-cutover >"$tmp/a2.cutover.json" ||
        fail "(a) cutover after restart: $(cat "$tmp/a2.cutover.json")"
check "$tmp/a2.cutover.json" "state == 'cutover' and writes_forwarded > 0" "(a) restart: cutover"
cmp "$src" "$d2" || fail "(a) restart: partner differs from the source after the cutover"
ctl "$gsock" migrate-abort >/dev/null || fail "(a) abort after the cutover"
wait_writes 300 20 || fail "(a) the guest did not resume"
stop_partner "$partner_pid" || fail "(a) partner 2 did not exit 0"

# ---- (c) the partner's disk is full ----
if [ "$(id -u)" = 0 ] && [ -z "${VBD_TEST_NO_MOUNT:-}" ] && mkdir "$tmp/small" && mount -t tmpfs -o size=16m vbd-mig "$tmp/small" 2>/dev/null; then
        cleanup_fn umount -l "$tmp/small"
        truncate -s $size "$tmp/small/dst.img"
        start_partner vbdd pc "raw:$tmp/small/dst.img,direct=off" || finish
        how="vbdd on a 16 MiB tmpfs"
else
        truncate -s $size "$tmp/dst-full.img"
        start_partner nbdkit-args pc --filter=error file "$tmp/dst-full.img" error=ENOSPC \
                error-pwrite-rate=100% error-zero-rate=100% || finish
        how="nbdkit --filter=error error=ENOSPC"
fi
w0=$(guest_writes)
mstart "$gsock" "{\"to\": \"$puri\"}" "$tmp/c.start.json" ||
        fail "(c) migrate-start: $(cat "$tmp/c.start.json")"
wait_state failed 60 "$tmp/c.failed.json"
echo "# (c) $how: $(cat "$tmp/c.failed.json")"
check "$tmp/c.failed.json" "state == 'failed' and ('ENOSPC' in error or 'No space' in error)" \
        "(c) failed with ENOSPC"
wait_writes 1000 20 || fail "(c) the guest's I/O stopped"
[ $(($(guest_writes) - w0)) -gt 1000 ] || fail "(c) the guest hardly wrote"
data_intact "(c)"
_stop_pid "$partner_pid" TERM

# ---- (c2) once ready, a forwarded guest write fails (ENOSPC) ----
# nbdkit's error filter starts failing every write when the inject file
# appears: the migration fails, the guest's writes complete with their local
# status (bench counts an error otherwise).
if nbdkit --version >/dev/null 2>&1; then
        ones "$tmp/dst-c2.img" $size
        start_partner nbdkit-args pc2 --filter=error file "$tmp/dst-c2.img" error=ENOSPC \
                error-pwrite-rate=100% error-zero-rate=100% error-pwrite-file="$tmp/inject" \
                error-zero-file="$tmp/inject" || finish
        mstart "$gsock" "{\"to\": \"$puri\"}" "$tmp/c2.start.json" ||
                fail "(c2) migrate-start: $(cat "$tmp/c2.start.json")"
        wait_state ready 120 "$tmp/c2.ready.json"
        wait_writes 300 20 || fail "(c2) the guest does not write once ready"
        touch "$tmp/inject"
        wait_state failed 20 "$tmp/c2.failed.json"
        echo "# (c2) $(cat "$tmp/c2.failed.json")"
        check "$tmp/c2.failed.json" "'No space' in error or 'ENOSPC' in error" "(c2) failed with ENOSPC"
        wait_writes 1000 20 || fail "(c2) the guest's I/O stopped"
        _stop_pid "$partner_pid" TERM
fi

# ---- the guest goes away (disconnect, detach) mid-copy: vbdd exits 0 ----
d3=$tmp/dst3.img
truncate -s $size "$d3"
start_partner vbdd p3 "raw:$d3" || finish
mstart "$gsock" "{\"to\": \"$puri\", \"rate\": $((4 * MiB))}" "$tmp/x.start.json" ||
        fail "(detach) migrate-start: $(cat "$tmp/x.start.json")"
wait_state copying 20 "$tmp/x.st.json"
stop_guest g
stop_partner "$partner_pid" || fail "(detach) partner did not exit 0"
data_intact "end"
finish
