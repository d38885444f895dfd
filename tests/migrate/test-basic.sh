#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Live migration (mode pasm, the defaults) of a 256 MiB raw image to a vbdd
# --export-only partner while a simulated guest runs a verified random
# read/write load the whole time: the status while copying, "ready" with every
# region synced, guest writes forwarded, the cutover (guest paused, partner
# equal to the source byte for byte: data, holes, the last sector), the
# traffic bound (bytes_sent <= 1.1 x size + bytes_forwarded), abort after the
# cutover resuming the guest locally, and the guest's verify.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((256 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img

# Source: 0..64M the guest's (written by its verify prefill, then random
# writes), 64..128M data, 128..256M holes but for 1 MiB at 200M and the last
# 4 KiB.  The partner starts as 0xff everywhere: holes must be sent as zeros.
truncate -s $size "$src"
fill "$src" $((64 * MiB)) $((64 * MiB))
fill "$src" $((200 * MiB)) $MiB
fill "$src" $((size - 4 * KiB)) $((4 * KiB))
ones "$dst" $size
cp --sparse=always "$src" "$tmp/orig.img"

start_partner vbdd p "raw:$dst" || finish
start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 64M \
        --runtime 600 --seed 7 || finish
require_migrate
status "$tmp/none.json"
check "$tmp/none.json" "state == 'none'" "migrate-status before any start"
wait_writes 2000 30 || fail "the guest is not writing"

w0=$(guest_writes)
t0=$(now_ms)
mstart "$gsock" "{\"to\": \"$puri\"}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; finish; }
echo "# start: $(cat "$tmp/start.json")"
check "$tmp/start.json" "state in ('connecting', 'copying') and mode == 'pasm' and to == '$puri'" \
        "start reply"
check "$tmp/start.json" "size == $size and region_size == $MiB and regions_total == 256" \
        "start reply: geometry"
check "$tmp/start.json" "error == '' and regions_synced <= regions_total" "start reply: fields"

# While copying: progress moves, the guest keeps writing.
wait_state copying,ready 30 "$tmp/copying.json"
wait_writes 500 20 || fail "guest writes stalled during the copy"
wait_state ready 180 "$tmp/ready.json" || { cat "$tmp/g.vbdd.log" >&2; finish; }
t1=$(now_ms)
echo "# ready after $((t1 - t0)) ms: $(cat "$tmp/ready.json")"
check "$tmp/ready.json" "regions_synced == regions_total == 256 and regions_inflight == 0" \
        "ready: every region synced"
check "$tmp/ready.json" "progress == 1 and bytes_synced == size and error == ''" "ready: progress"
check "$tmp/ready.json" "partner_size == $size" "ready: partner_size"
w1=$(guest_writes)
[ $((w1 - w0)) -gt 500 ] || fail "the guest wrote only $((w1 - w0)) times during the migration"
kill -0 "$guest_pid" 2>/dev/null || fail "the guest stopped before the cutover"

# Ready: writes keep being forwarded.
wait_writes 500 20 || fail "guest writes stalled once ready"
status "$tmp/ready2.json"
f1=$(jfield "$tmp/ready.json" writes_forwarded)
check "$tmp/ready2.json" "state == 'ready' and writes_forwarded > $f1" "writes forwarded once ready"

# The cutover pauses the guest: what runs until the abort must take well
# under the 10 s the simulated guest waits for an answer.
ctl "$gsock" migrate-cutover >"$tmp/cutover.json" ||
        { fail "migrate-cutover: $(cat "$tmp/cutover.json")"; cat "$tmp/g.vbdd.log" >&2; finish; }
ctl "$gsock" info >"$tmp/info.json"
n0=$(guest_writes)
# The source is drained and stays still: the partner must equal it now.
cmp "$src" "$dst" || fail "partner image differs from the source after the cutover"
cmp -n $((128 * MiB)) -i $((64 * MiB)) "$src" "$tmp/orig.img" ||
        fail "the source's data region changed"
[ "$(guest_writes)" = "$n0" ] || fail "the guest wrote while paused by the cutover"

# abort after the cutover: the guest runs on locally.
ctl "$gsock" migrate-abort >"$tmp/abort.json" || fail "abort after cutover: $(cat "$tmp/abort.json")"
check "$tmp/abort.json" "state == 'aborted'" "abort after cutover"
wait_writes 500 20 || fail "the guest did not resume after abort"
echo "# cutover: $(cat "$tmp/cutover.json")"
check "$tmp/info.json" "state == 'paused'" "the guest is paused after the cutover"
check "$tmp/cutover.json" "state == 'cutover' and error == '' and downtime_ms >= 0" "cutover reply"
check "$tmp/cutover.json" "writes_forwarded > 0 and bytes_forwarded >= 4096 * writes_forwarded" \
        "guest writes were forwarded"
check "$tmp/cutover.json" "bytes_sent <= 1.1 * size + bytes_forwarded" "traffic bound"
check "$tmp/cutover.json" "bytes_sent == bytes_copied + bytes_forwarded" "bytes_sent"
# The data (64M + 1M + 4K, and the guest's 64M) is copied; the 127 MiB of
# holes are not sent as data.
check "$tmp/cutover.json" "bytes_copied >= 65 * $MiB and bytes_zeroed >= 120 * $MiB" \
        "holes sent as zeroes, data copied"
check "$tmp/cutover.json" "bytes_copied + bytes_zeroed >= size" "every byte covered"
stop_guest g
stop_partner "$partner_pid" || fail "partner vbdd did not exit 0 after SIGTERM"
grep -E 'migrat|mirror' "$tmp/g.vbdd.log" | tail -20 | sed 's/^/# log: /'
finish
