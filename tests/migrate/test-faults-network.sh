#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A bad network between the source and its partner (stall-proxy.py relaying
# the unix socket), a verified guest load running throughout:
#  - a partner that accepts the connection and never answers: with timeout=2
#    the migration fails within 10 s (or the start is refused); an abort while
#    "connecting" is immediate;
#  - the link stalls mid-copy (nothing relayed any more, connections open):
#    with timeout=2 the migration fails within a bounded time saying why, and
#    the guest's I/O (which waits for forwarded writes) goes on;
#  - a slow link (2 ms per 64 KiB chunk each way) still converges: ready,
#    cutover, partner equal to the source.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((64 * MiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((16 * MiB)) $((32 * MiB)) # 16..48M data, 48..64M holes
cp --sparse=always "$src" "$tmp/orig.img"

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 16M \
        --runtime 600 --seed 3 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# proxy NAME TARGET-SOCK ARGS...: sets $proxy_pid, $xuri
proxy() {
        local name=$1 to=$2 i
        shift 2
        "$PY" "$_mig_dir/stall-proxy.py" --listen "$sockdir/$name.sock" --to "$to" "$@" \
                2>>"$tmp/$name.log" &
        proxy_pid=$!
        cleanup_fn _stop_pid "$proxy_pid" TERM
        xuri="nbd+unix:///?socket=$sockdir/$name.sock"
        for i in $(seq 200); do
                [ -S "$sockdir/$name.sock" ] && return 0
                sleep 0.05
        done
        fail "stall-proxy $name did not start"
        cat "$tmp/$name.log" >&2
        return 1
}

# ---- a partner that accepts but never answers (stalled from the start) ----
d0=$tmp/dst0.img
truncate -s $size "$d0"
start_partner vbdd p0 "raw:$d0" || finish
proxy x0 "$psock" || finish
kill -USR1 "$proxy_pid"
t0=$(now_ms)
if mstart "$gsock" "{\"to\": \"$xuri\", \"timeout\": 2}" "$tmp/b0.start.json"; then
        wait_state failed 30 "$tmp/b0.failed.json"
        echo "# silent partner: failed $(($(now_ms) - t0)) ms after the start: $(jfield "$tmp/b0.failed.json" error)"
        [ $(($(now_ms) - t0)) -le 10000 ] || fail "silent partner: not failed within 10 s (timeout 2)"
else
        echo "# silent partner: start refused after $(($(now_ms) - t0)) ms: $(cat "$tmp/b0.start.json")"
        [ $(($(now_ms) - t0)) -le 10000 ] || fail "silent partner: the start took more than 10 s"
fi
wait_writes 1000 20 || fail "silent partner: the guest's I/O stopped"
# abort while connecting
if mstart "$gsock" "{\"to\": \"$xuri\", \"timeout\": 30}" "$tmp/b0.start2.json"; then
        check "$tmp/b0.start2.json" "state == 'connecting'" "silent partner: connecting"
        ctl "$gsock" migrate-abort >"$tmp/b0.abort.json" || fail "abort while connecting: $(cat "$tmp/b0.abort.json")"
        check "$tmp/b0.abort.json" "state == 'aborted'" "abort while connecting"
fi
wait_writes 1000 20 || fail "abort while connecting: the guest's I/O stopped"
_stop_pid "$proxy_pid" TERM
_stop_pid "$partner_pid" TERM

# ---- the link stalls mid-copy ----
d1=$tmp/dst1.img
truncate -s $size "$d1"
start_partner vbdd p1 "raw:$d1" || finish
proxy x1 "$psock" || finish
mstart "$gsock" "{\"to\": \"$xuri\", \"timeout\": 2, \"rate\": $((8 * MiB))}" "$tmp/b.start.json" ||
        { fail "migrate-start: $(cat "$tmp/b.start.json")"; finish; }
for i in $(seq 200); do
        status "$tmp/b.st.json"
        ctl check "$tmp/b.st.json" "state == 'copying' and regions_synced >= 4" 2>/dev/null && break
        sleep 0.05
done
check "$tmp/b.st.json" "state == 'copying' and 4 <= regions_synced < regions_total" \
        "mid-copy before the stall"
w0=$(guest_writes)
t0=$(now_ms)
kill -USR1 "$proxy_pid"
wait_state failed 30 "$tmp/b.failed.json"
t1=$(now_ms)
echo "# stalled link: failed $((t1 - t0)) ms after the stall: $(cat "$tmp/b.failed.json")"
check "$tmp/b.failed.json" "state == 'failed' and len(error) > 0" "stall: failed with an error"
# timeout 2 s: a command older than that fails it; allow the check period.
[ $((t1 - t0)) -ge 1000 ] || fail "stall: failed after $((t1 - t0)) ms, well before the 2 s timeout"
[ $((t1 - t0)) -le 8000 ] || fail "stall: failed only $((t1 - t0)) ms after the stall (timeout 2 s)"
wait_writes 1000 20 || fail "stall: the guest's I/O did not go on after the failure"
[ $(($(guest_writes) - w0)) -gt 1000 ] || fail "stall: the guest hardly wrote"
cmp -s -i $((16 * MiB)) "$src" "$tmp/orig.img" || fail "stall: the source's data changed"
_stop_pid "$proxy_pid" TERM
_stop_pid "$partner_pid" TERM

# ---- a slow link converges ----
d2=$tmp/dst2.img
ones "$d2" $size
start_partner vbdd p2 "raw:$d2" || finish
proxy x2 "$psock" --delay 2 || finish
t0=$(now_ms)
# share 100: the copier may use all the time the guest leaves (the default
# 25 % takes ~40 s here with the guest's forwarded writes on the slow link)
mstart "$gsock" "{\"to\": \"$xuri\", \"timeout\": 10, \"share\": 100}" "$tmp/s.start.json" ||
        fail "slow link: migrate-start: $(cat "$tmp/s.start.json")"
wait_state ready 150 "$tmp/s.ready.json"
echo "# slow link: ready after $(($(now_ms) - t0)) ms: $(cat "$tmp/s.ready.json")"
wait_writes 300 20 || fail "slow link: the guest does not write once ready"
ctl "$gsock" migrate-cutover >"$tmp/s.cutover.json" ||
        fail "slow link: cutover: $(cat "$tmp/s.cutover.json")"
check "$tmp/s.cutover.json" "state == 'cutover' and writes_forwarded > 0" "slow link: cutover"
cmp "$src" "$d2" || fail "slow link: partner differs from the source after the cutover"
ctl "$gsock" migrate-abort >/dev/null || fail "slow link: abort after the cutover"
wait_writes 300 20 || fail "slow link: the guest did not resume"
kill -TERM "$proxy_pid"
wait "$proxy_pid" 2>/dev/null
cat "$tmp/x2.log" | sed 's/^/# /'
stop_partner "$partner_pid" || fail "slow link: partner did not exit 0"

stop_guest g
finish
