#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# mode "precopy" with a light guest (one 4 KiB read or write at a time over
# 4 MiB, verified): passes until the dirty bytes are small, "ready", then the
# cutover copies the rest with the guest paused; the partner equals the
# source; nothing is forwarded.  zeroed=true on a fresh sparse partner: the
# holes are not sent at all.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((64 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
truncate -s $size "$src"
fill "$src" $((8 * MiB)) $((24 * MiB)) # 8..32M data, 32..64M holes
truncate -s $size "$dst"

start_partner vbdd p "raw:$dst" || finish
start_guest g "raw:$src" --rw randrw --verify --iodepth 1 --bs 4096 --size 4M \
        --runtime 600 --seed 13 || finish
require_migrate
wait_writes 200 30 || fail "the guest is not writing"

t0=$(now_ms)
mstart "$gsock" "{\"to\": \"$puri\", \"mode\": \"precopy\", \"zeroed\": true}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; finish; }
check "$tmp/start.json" "mode == 'precopy'" "start reply: mode"
wait_state ready 120 "$tmp/ready.json" || finish
echo "# precopy ready after $(($(now_ms) - t0)) ms: $(cat "$tmp/ready.json")"
check "$tmp/ready.json" "passes >= 1 and writes_forwarded == 0 and bytes_forwarded == 0" \
        "precopy: passes, no forwarding"
kill -0 "$guest_pid" || fail "the guest stopped before the cutover"
wait_writes 200 20 || fail "the guest does not write once ready"
ctl "$gsock" migrate-cutover >"$tmp/cutover.json" ||
        { fail "migrate-cutover: $(cat "$tmp/cutover.json")"; finish; }
echo "# cutover: $(cat "$tmp/cutover.json")"
check "$tmp/cutover.json" "state == 'cutover' and writes_forwarded == 0 and downtime_ms >= 0" \
        "precopy cutover"
check "$tmp/cutover.json" "regions_synced == regions_total and dirty_bytes >= 0" "precopy: all synced"
# 24 MiB of data sent at least once (and the guest's writes); the 32 MiB of
# holes not at all (zeroed); re-sent dirty regions on top.
check "$tmp/cutover.json" "bytes_copied >= 24 * $MiB and bytes_zeroed >= 32 * $MiB" \
        "precopy: data copied, holes skipped"
check "$tmp/cutover.json" "bytes_sent == bytes_copied" "precopy: bytes_sent"
cmp "$src" "$dst" || fail "precopy: partner differs from the source after the cutover"
ctl "$gsock" migrate-abort >/dev/null || fail "abort after the cutover"
wait_writes 200 20 || fail "the guest did not resume after the abort"
stop_guest g
stop_partner "$partner_pid" || fail "partner did not exit 0"
finish
