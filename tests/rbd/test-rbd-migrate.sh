#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Live storage migration into a Ceph cluster (ceph-cluster.sh) and back:
# vbd-ctl migrate start --to rbd:POOL/IMAGE (through the bridge, an
# export-only vbdd on the image) while a simulated guest (vbd-sim bench
# --verify) writes the whole time:
#  - an image smaller than the disk is refused before anything starts, and
#    so is a pool that does not exist (the driver's message);
#  - an image that does not exist is created (rbd create, the disk's size),
#    ready, cutover: the bridge stopped cleanly, `rbd export` equals the
#    paused source byte for byte; status says so (text and --json);
#  - back: a guest on that rbd image migrated into raw:FILE, cutover, the
#    file equals `rbd export`;
#  - the guests see no I/O error and no verify mismatch.
# Figures (reported, not asserted): the time to ready, the guest's IOPS while
# the copy runs.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../migrate/mig-lib.sh"
. "$(dirname "$0")/rbd-lib.sh"
: "${VBD_CTL:?}"
requires_ceph
start_ceph

size=$((64 * MiB + 68 * KiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((40 * MiB)) $((16 * MiB))
fill "$src" $((size - 4 * KiB)) $((4 * KiB))

export VBD_VBDD=$VBDD # the bridge's vbdd (the guests' is vbdd-sim)
vc() {
        "$VBD_CTL" --ctl-dir "$run/$1" "${@:2}"
}
V=(-d 1 -n 51712)
# vcj OUT DIR ARGS...: vbd-ctl --json; its object on one line in OUT
vcj() {
        local out=$1 rc=0
        shift
        vc "$1" --json "${@:2}" >"$out.raw" || rc=$?
        "$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$out.raw" \
                >"$out" 2>/dev/null || echo '{}' >"$out"
        return $rc
}
kill_bridges() {
        local p
        for p in $(pids_with "$run/g/partners/1-51712/nbd.sock") \
                $(pids_with "$run/h/partners/1-51712/nbd.sock"); do
                kill -KILL "$p" 2>/dev/null
        done
}
cleanup_fn kill_bridges
no_bridge() { # NAME: no vbdd serves its bridge socket (a zombie has no command line)
        [ -z "$(pids_with "$run/$1/partners/1-51712/nbd.sock")" ]
}
ios() { # the guest's completed requests
        ctl "$gsock" stats | "$PY" -c 'import json, sys
o = json.load(sys.stdin)["ops"]
print(o["read"]["requests"] + o["write"]["requests"])'
}

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 32M \
        --runtime 900 --seed 31 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# ---- an image smaller than the disk: refused, nothing started ----
rbdc create rbd/small --size 32M || fail "rbd create small"
vc g migrate start "${V[@]}" --to "$(rspec small)" >"$tmp/small.out" 2>&1 &&
        fail "an rbd image smaller than the disk was accepted"
grep -q "smaller than the VBD" "$tmp/small.out" || fail "too small: $(cat "$tmp/small.out")"
status "$tmp/small.json"
check "$tmp/small.json" "state == 'none'" "too small: a migration was started"
no_bridge g || fail "too small: a bridge is left"

# ---- a pool that does not exist: refused with the driver's words ----
nopool=$(rspec x | sed 's|^rbd:rbd/|rbd:nopool/|')
rc=0
vc g migrate start "${V[@]}" --to "$nopool" >"$tmp/nopool.out" 2>&1 || rc=$?
[ $rc = 1 ] || fail "no pool: exit $rc, not 1"
grep -q "did not start: .*rbd: no pool nopool" "$tmp/nopool.out" ||
        fail "no pool: message: $(cat "$tmp/nopool.out")"
no_bridge g || fail "no pool: a bridge is left"

# ---- into rbd/mig, which does not exist yet ----
spec=$(rspec mig)
i0=$(ios)
t0=$(now_ms)
vc g migrate start "${V[@]}" --to "$spec" --wait >"$tmp/start.out" 2>&1 || {
        fail "migrate start --to rbd: $(cat "$tmp/start.out")"
        tail -20 "$tmp/g.vbdd.log" "$run/g/partners/1-51712/vbdd.log" >&2
        finish
}
t1=$(now_ms)
i1=$(ios)
rbdc info rbd/mig --format json >"$tmp/info.json" || fail "rbd info: the image was not created"
check "$tmp/info.json" "size == $size" "the image created has the disk's size"
vcj "$tmp/ready.json" g migrate status "${V[@]}"
check "$tmp/ready.json" "state == 'ready' and target == '$spec' and bridge['running']" \
        "ready, through the bridge"
wait_writes 300 20 || fail "the guest does not write once ready"
vcj "$tmp/cut.json" g migrate cutover "${V[@]}" || fail "cutover: $(cat "$tmp/cut.json.raw")"
check "$tmp/cut.json" "state == 'cutover' and writes_forwarded > 0" "cutover"
check "$tmp/cut.json" \
        "bridge['state'] == 'stopped' and bridge['exit_code'] == 0 and not bridge['killed']" \
        "the bridge stopped cleanly after the cutover"
no_bridge g || fail "a bridge is left after the cutover"
# the source is paused: the cluster's image must equal it now
rbdc export rbd/mig "$tmp/exp.raw" >/dev/null 2>&1 || fail "rbd export"
cmp "$src" "$tmp/exp.raw" || fail "rbd export differs from the source after the cutover"
vcj "$tmp/after.json" g migrate status "${V[@]}" || fail "status --json after the cutover"
check "$tmp/after.json" "state == 'cutover' and bridge['state'] == 'stopped'" \
        "status --json after the cutover"
vc g migrate status "${V[@]}" >"$tmp/after.txt" || fail "status after the cutover"
grep -q "bridge .*stopped after the cutover (exit 0)" "$tmp/after.txt" ||
        fail "status text: $(cat "$tmp/after.txt")"
echo "# into rbd: $((size / MiB)) MiB ready in $((t1 - t0)) ms, guest" \
        "$(((i1 - i0) * 1000 / (t1 - t0 + 1))) IOPS meanwhile;" \
        "downtime $(jfield "$tmp/cut.json" downtime_ms) ms;" \
        "forwarded $(jfield "$tmp/cut.json" writes_forwarded) writes"
# (a toolstack would detach the guest here and start it on the cluster's
# image; the abort resumes it on the source so that it can stop cleanly)
vc g migrate abort "${V[@]}" >/dev/null || fail "abort after the cutover"
stop_guest g
rm -f "$tmp/exp.raw"

# ---- and back: a guest on rbd/mig migrated into a raw file ----
start_guest h "$(rspec mig)" --rw randrw --verify --iodepth 16 --bs 4096 --size 32M \
        --runtime 900 --seed 32 || finish
# past its verify prefill (sequential writes): reading and writing at random
wait_reads() {
        local i
        for i in $(seq 1200); do
                [ "$(ctl "$gsock" stats | "$PY" -c 'import json, sys
print(json.load(sys.stdin)["ops"]["read"]["requests"])')" -ge "$1" ] && return 0
                sleep 0.05
        done
        return 1
}
wait_reads 1000 || fail "back: the guest on rbd does not read"
wait_writes 500 30 || fail "back: the guest on rbd is not writing"
i0=$(ios)
t0=$(now_ms)
vc h migrate start "${V[@]}" --to "raw:$tmp/back.raw" --wait >"$tmp/back.out" 2>&1 ||
        fail "back: migrate start: $(cat "$tmp/back.out")"
t1=$(now_ms)
i1=$(ios)
vcj "$tmp/back.cut.json" h migrate cutover "${V[@]}" || fail "back: cutover: $(cat "$tmp/back.cut.json.raw")"
check "$tmp/back.cut.json" "state == 'cutover' and bridge['exit_code'] == 0" "back: cutover"
rbdc export rbd/mig "$tmp/exp.raw" >/dev/null 2>&1 || fail "back: rbd export"
cmp "$tmp/exp.raw" "$tmp/back.raw" || fail "back: the raw file differs from the rbd image"
echo "# back from rbd: $((size / MiB)) MiB ready in $((t1 - t0)) ms, guest" \
        "$(((i1 - i0) * 1000 / (t1 - t0 + 1))) IOPS meanwhile"
vc h migrate abort "${V[@]}" >/dev/null || fail "back: abort after the cutover"
stop_guest h
finish
