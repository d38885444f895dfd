#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The same guest (vbd-sim bench --verify, random reads and writes) migrated
# three times in a row, to three NBD servers: a qcow2 image served by vbdd
# --export-only (then qemu-img compare raw vs qcow2, qemu-img check clean),
# qemu-nbd on a raw file (--cache=none) and nbdkit's file plugin (then cmp).
# Each run: ready, cutover (partner equal to the paused source), abort (the
# guest goes on locally), and the next migration starts from scratch; with
# regions of 64 KiB (depth 8), 4 MiB and 1 MiB (share 50), over a source
# whose size is not a multiple of any (the last region is short).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
requires qemu-img --version

# 64 MiB + 68 KiB: the last region is a short one, and its end is data.
size=$((64 * MiB + 68 * KiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((32 * MiB)) $((16 * MiB))
fill "$src" $((60 * MiB)) $((64 * KiB))
fill "$src" $((size - 4 * KiB)) $((4 * KiB))

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 32M \
        --runtime 600 --seed 11 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# migrate NAME REGION EXTRA-ARGS COMPARE...: to $puri with regions of REGION
# bytes; ready; cutover; then COMPARE... (the source is paused)
migrate() {
        local name=$1 region=$2 extra=$3 w0
        shift 3
        w0=$(guest_writes)
        mstart "$gsock" "{\"to\": \"$puri\", \"region\": $region $extra}" "$tmp/$name.start.json" || {
                fail "$name: migrate-start: $(cat "$tmp/$name.start.json")"
                return 1
        }
        check "$tmp/$name.start.json" "to == '$puri' and size == $size and region_size == $region" \
                "$name: start reply"
        check "$tmp/$name.start.json" "regions_total == ($size + $region - 1) // $region" \
                "$name: regions_total"
        wait_state ready 120 "$tmp/$name.ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; return 1; }
        check "$tmp/$name.ready.json" "regions_synced == regions_total and partner_size >= size" \
                "$name: ready"
        wait_writes 300 20 || fail "$name: the guest does not write once ready"
        [ $(($(guest_writes) - w0)) -gt 300 ] || fail "$name: the guest hardly wrote"
        ctl "$gsock" migrate-cutover >"$tmp/$name.cutover.json" || {
                fail "$name: migrate-cutover: $(cat "$tmp/$name.cutover.json")"
                tail -20 "$tmp/g.vbdd.log" >&2
                return 1
        }
        # the guest is paused until the abort: keep it short (< 10 s)
        "$@" || fail "$name: the partner's image differs from the source after the cutover"
        ctl "$gsock" migrate-abort >"$tmp/$name.abort.json" || fail "$name: abort after cutover"
        wait_writes 300 20 || fail "$name: the guest did not resume after the abort"
        echo "# $name: $(cat "$tmp/$name.cutover.json")"
        check "$tmp/$name.abort.json" "state == 'aborted'" "$name: abort after cutover"
        check "$tmp/$name.cutover.json" "state == 'cutover' and writes_forwarded > 0" \
                "$name: cutover, writes forwarded"
        check "$tmp/$name.cutover.json" "bytes_sent <= 1.1 * size + bytes_forwarded" \
                "$name: traffic bound"
}

# vbdd serving a qcow2 image
requires qemu-img create -f qcow2 "$tmp/probe.qcow2" 1M
dq=$tmp/dst.qcow2
qemu-img create -q -f qcow2 "$dq" $size
start_partner vbdd vq "qcow2:$dq" && {
        # at the cutover (source paused, partner still serving): equal, and
        # the qcow2 metadata on disk consistent (flushed)
        compare_qcow2() {
                qemu-img compare -U -q -f raw -F qcow2 "$src" "$dq" &&
                        { qemu-img check -U -q "$dq" ||
                          { fail "qemu-img check of the qcow2 partner at the cutover"; true; }; }
        }
        migrate vbdd-qcow2 65536 ', "depth": 8' compare_qcow2
        stop_partner "$partner_pid" || fail "vbdd qcow2 partner did not exit 0 after SIGTERM"
        qemu-img check -q "$dq" || fail "qemu-img check of the qcow2 partner once stopped"
        # the holes stayed unallocated (zero clusters or none)
        qemu-img map --output=json "$dq" >"$tmp/map.json"
        "$PY" - "$tmp/map.json" $((48 * MiB)) $((60 * MiB)) <<'PY' || fail "vbdd-qcow2: holes of the source allocated as data"
import json, sys
m = json.load(open(sys.argv[1]))
lo, hi = int(sys.argv[2]), int(sys.argv[3])
data = sum(min(e["start"] + e["length"], hi) - max(e["start"], lo)
           for e in m if e["data"] and e["start"] < hi and e["start"] + e["length"] > lo)
sys.exit(0 if data == 0 else 1)
PY
}

# qemu-nbd on a raw file full of 0xff
if qemu-nbd --version >/dev/null 2>&1; then
        dr=$tmp/dst-qemu.img
        ones "$dr" $size
        start_partner qemu-nbd qn "$dr" && {
                migrate qemu-nbd $((4 * MiB)) '' cmp "$src" "$dr"
                _stop_pid "$partner_pid" TERM
        }
else
        echo "# qemu-nbd missing: that partner is skipped"
fi

# nbdkit's file plugin
if nbdkit file --version >/dev/null 2>&1; then
        dk=$tmp/dst-nbdkit.img
        ones "$dk" $size
        start_partner nbdkit nk "$dk" && {
                migrate nbdkit $MiB ', "share": 50' cmp "$src" "$dk"
                _stop_pid "$partner_pid" TERM
        }
else
        echo "# nbdkit missing: that partner is skipped"
fi

stop_guest g
finish
