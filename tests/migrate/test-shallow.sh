#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Shallow migration: a guest on a qcow2 clone of a 128 MiB raw base (an
# application layer both hosts have) migrates to a vbdd partner serving a
# fresh qcow2 over the same base; with "shallow" only what the top image
# holds (the guest's writes, a zeroed cluster over the base's data, a
# cluster dom0 wrote) is sent, never the base.  Checked: bytes sent far
# below the disk, the partner's top equal to the source's (qemu-img compare,
# guest-visible content), qemu-img check clean, and the refusal of shallow
# with zeroed.  Then vbd-ctl's check of the destination's backing chain
# (migrate start --shallow, vbd-ctl layer sum): an NBD partner without the
# fingerprint, a wrong fingerprint and a target over another base are
# refused before anything starts; a target over the same base is migrated
# into through a bridge.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
requires qemu-img --version
requires qemu-io --version

size=$((128 * MiB))
base=$tmp/base.raw
src=$tmp/src.qcow2
dst=$tmp/dst.qcow2
truncate -s $size "$base"
fill "$base" 0 $size
qemu-img create -q -f qcow2 -b "$base" -F raw "$src"
qemu-img create -q -f qcow2 -b "$base" -F raw "$dst"
# the top holds: 1 MiB of data at 100 MiB, 64 KiB of zeroes over the base's
# data at 120 MiB (must arrive as zeroes, not as the base)
qemu-io -f qcow2 -c "write -P 0x5a 100M 1M" -c "write -z 120M 64k" "$src" >/dev/null

start_partner vbdd p "qcow2:$dst" || finish
start_guest g "qcow2:$src" --rw randrw --verify --iodepth 8 --bs 4096 --size 16M \
        --runtime 600 --seed 5 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

expect_err "$gsock" migrate-start "{\"to\": \"$puri\", \"shallow\": true, \"zeroed\": true}" EINVAL \
        "shallow with zeroed"
mstart "$gsock" "{\"to\": \"$puri\", \"shallow\": true}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; finish; }
wait_state ready 120 "$tmp/ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; finish; }
check "$tmp/ready.json" "shallow and regions_synced == regions_total" "ready, shallow"
wait_writes 300 20 || fail "guest writes stalled once ready"
ctl "$gsock" migrate-cutover >"$tmp/cutover.json" ||
        { fail "migrate-cutover: $(cat "$tmp/cutover.json")"; finish; }
echo "# cutover: $(cat "$tmp/cutover.json")"
check "$tmp/cutover.json" "state == 'cutover' and shallow" "cutover"
# the guest's 16 MiB, the MiB at 100M, the zeroed cluster's region: at most
# 18 regions copied, the rest (110 of 128) left to the base
check "$tmp/cutover.json" "bytes_copied + bytes_zeroed <= 18 * $MiB" "only the top's regions copied"
check "$tmp/cutover.json" "bytes_shallow >= 110 * $MiB" "the base's regions not sent"
check "$tmp/cutover.json" "bytes_shallow + bytes_copied + bytes_zeroed == size" "every region accounted"
# the source is paused: the same disk on both sides
qemu-img compare -U -q -f qcow2 -F qcow2 "$src" "$dst" ||
        fail "the partner's disk differs from the source's after the cutover"
qemu-io -r -U -f qcow2 -c "read -P 0 120M 64k" "$dst" | grep -q "read 65536" ||
        fail "the zeroed cluster does not read zeroes on the partner"
ctl "$gsock" migrate-abort >/dev/null || fail "abort after the cutover"

# ---- vbd-ctl migrate start --shallow: the backing chain is checked ----
export VBD_VBDD=$VBDD # the bridge's vbdd
vc() { "$VBD_CTL" --ctl-dir "$run/g" "$@"; }
V=(-d 1 -n 51712)
fp=$(vc layer sum "$src") || fail "layer sum: $fp"
[ "$(vc layer sum "$dst")" = "$fp" ] || fail "layer sum: two clones of one base differ"
other=$tmp/other.raw
cp "$base" "$other"
printf 'x' | dd of="$other" bs=1 seek=$((64 * MiB)) conv=notrunc status=none # one byte
qemu-img create -q -f qcow2 -b "$other" -F raw "$tmp/wrong.qcow2"
fpo=$(vc layer sum "$tmp/wrong.qcow2")
[ "$fpo" != "$fp" ] || fail "layer sum: a base one byte off has the same fingerprint"
rc=0
vc migrate start "${V[@]}" --to "$puri" --shallow >"$tmp/c1" 2>&1 || rc=$?
[ $rc = 2 ] && grep -q "layer sum" "$tmp/c1" || fail "NBD partner without a fingerprint: rc $rc: $(cat "$tmp/c1")"
rc=0
vc migrate start "${V[@]}" --to "$puri" --shallow="$fpo" >"$tmp/c2" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "not the source's" "$tmp/c2" || fail "wrong fingerprint: rc $rc: $(cat "$tmp/c2")"
rc=0
vc migrate start "${V[@]}" --to "qcow2:$tmp/wrong.qcow2" --shallow >"$tmp/c3" 2>&1 || rc=$?
[ $rc = 1 ] && grep -q "not the source's" "$tmp/c3" || fail "target over another base: rc $rc: $(cat "$tmp/c3")"
[ -e "$run/g/partners/1-51712/bridge.json" ] && [ -n "$(pids_with "$run/g/partners/1-51712/nbd.sock")" ] &&
        fail "a refused shallow start left a bridge running"
status "$tmp/refused.json"
check "$tmp/refused.json" "state == 'aborted'" "the refusals started nothing"
# into a new clone of the same base, through a bridge
ok=$tmp/ok.qcow2
qemu-img create -q -f qcow2 -b "$base" -F raw "$ok"
vc migrate start "${V[@]}" --to "qcow2:$ok" --shallow="$fp" --wait >"$tmp/c4" 2>&1 ||
        fail "shallow into a bridge: $(cat "$tmp/c4")"
vc --json migrate cutover "${V[@]}" >"$tmp/c4.cut.raw" 2>&1 || fail "cutover: $(cat "$tmp/c4.cut.raw")"
"$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$tmp/c4.cut.raw" >"$tmp/c4.cut.json"
check "$tmp/c4.cut.json" "state == 'cutover' and shallow and bytes_shallow >= 100 * $MiB" \
        "shallow through a bridge: the base not sent"
qemu-img compare -U -q -f qcow2 -F qcow2 "$src" "$ok" || fail "the bridge's target differs from the source"
echo "# bridge: $(cat "$tmp/c4.cut.json")"
vc migrate abort "${V[@]}" >/dev/null || fail "abort after the bridge's cutover"
stop_guest g
stop_partner "$partner_pid" || fail "partner vbdd did not exit 0"
qemu-img check -q "$dst" || fail "qemu-img check of the partner's top"
finish
