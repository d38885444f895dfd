#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The whole of a storage migration on one host, the way a toolstack finishes
# it: migrate a running guest's disk to a vbdd --export-only partner over
# TCP on 127.0.0.1, cut over (the guest is paused), stop the partner, reopen
# the paused VBD on the destination image and resume.  The simulated guest
# runs a verified random read/write load across all of it: every read after
# the switch, of blocks written before, during and after the migration,
# comes from the destination and must match.  After the switch the source
# must not change and the destination must take the guest's writes.  (The
# real-guest version is tests/xen's "migrate".)
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

requires nbdinfo --version
size=$((64 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
truncate -s $size "$src"
fill "$src" $((32 * MiB)) $((16 * MiB)) # beyond the guest's 32 MiB: dom0 data
ones "$dst" $size                         # holes must arrive as zeroes

# the partner on TCP loopback (start_partner's socket is unix): a port the
# kernel just gave out, again if another test took it before vbdd bound it
partner_pid=""
for attempt in 1 2 3 4 5; do
        port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        env -u VBD_RUNTIME_DIR "$VBDD" --export-only --image "raw:$dst" --nbd "tcp:127.0.0.1:$port" \
                --nbd-writable 2>>"$tmp/p.log" &
        partner_pid=$!
        for i in $(seq 100); do
                nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break 2
                kill -0 "$partner_pid" 2>/dev/null || break
                sleep 0.1
        done
        kill "$partner_pid" 2>/dev/null
        wait "$partner_pid" 2>/dev/null
        partner_pid=""
done
[ -n "$partner_pid" ] || { fail "the partner did not listen: $(cat "$tmp/p.log")"; finish; }
cleanup_fn _stop_pid "$partner_pid" TERM

start_guest g "raw:$src" --rw randrw --verify --iodepth 8 --bs 4096 --size 32M \
        --runtime 600 --seed 11 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"
mstart "$gsock" "{\"to\": \"nbd://127.0.0.1:$port\"}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; finish; }
wait_state ready 180 "$tmp/ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; finish; }
wait_writes 500 20 || fail "guest writes stalled once ready"
# before the cut-over the migration holds the stack: no reopen
ctl "$gsock" pause >/dev/null || fail "pause"
expect_err "$gsock" reopen "{\"image\": \"raw:$dst\"}" EBUSY "reopen while the migration is ready"
ctl "$gsock" resume >/dev/null || fail "resume"

ctl "$gsock" migrate-cutover >"$tmp/cutover.json" ||
        { fail "migrate-cutover: $(cat "$tmp/cutover.json")"; finish; }
check "$tmp/cutover.json" "state == 'cutover' and error == ''" "cutover reply"
cmp "$src" "$dst" || fail "the destination differs from the source after the cutover"
# the partner's connection is closed once the cutover flushed it: SIGTERM
# makes it exit 0 only with no client left half-way
stop_partner "$partner_pid" || fail "partner vbdd did not exit 0 after the cutover"
md5_src=$(md5sum <"$src")

ctl "$gsock" reopen "{\"image\": \"raw:$dst\"}" >"$tmp/reopen.json" ||
        { fail "reopen onto the destination: $(cat "$tmp/reopen.json")"; finish; }
check "$tmp/reopen.json" "size == $size" "reopen reply: size"
ctl "$gsock" resume >"$tmp/resume.json" || fail "resume: $(cat "$tmp/resume.json")"
ctl "$gsock" info >"$tmp/info.json"
check "$tmp/info.json" "image == 'raw:$dst' and not paused" "the VBD serves the destination"
status "$tmp/after.json"
check "$tmp/after.json" "state == 'none'" "no migration left after the switch"
grep -q "cut-over hold is released" "$tmp/g.vbdd.log" || fail "vbdd did not log the end of the migration"
n0=$(guest_writes)
wait_writes 2000 30 || fail "the guest did not resume on the destination"
n1=$(guest_writes)
stop_guest g
[ "$(md5sum <"$src")" = "$md5_src" ] || fail "the source changed after the switch"
cmp -n $((32 * MiB)) "$src" "$dst" >/dev/null &&
        fail "the guest's writes after the switch did not reach the destination"
cmp -i $((32 * MiB)) "$src" "$dst" || fail "the destination lost the data beyond the guest's 32 MiB"
echo "# $((n1 - n0)) writes after the switch;" \
        "cutover: $(cat "$tmp/cutover.json")"
finish
