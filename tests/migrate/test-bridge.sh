#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl migrate start --to SPEC: the migration into an image spec through
# a bridge (an export-only vbdd vbd-ctl starts on
# <ctl-dir>/partners/D-N/nbd.sock), with a simulated guest (vbd-sim bench
# --verify) writing the whole time:
#  - a target smaller than the disk is refused before anything starts (no
#    migration, no bridge left);
#  - raw:FILE that does not exist: created with the disk's size, ready,
#    cutover: the bridge is stopped (exit 0) once the mirror closed its
#    connection, the target equals the paused source (qemu-img compare);
#    status, text and --json, tells the bridge's fate; abort resumes;
#  - qcow2:FILE that does not exist (created by vbd-ctl), the same, and
#    qemu-img check clean; an existing, larger qcow2 too;
#  - abort while copying (the copy slowed with --rate): the source goes on
#    serving, no bridge process is left;
#  - the bridge killed while copying: the migration fails, the guest goes
#    on, status says the bridge was killed;
#  - the guest sees no I/O error and no verify mismatch.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
: "${VBD_CTL:?}"
requires qemu-img --version

# 48 MiB + 68 KiB: not a multiple of a region; data, holes, the last sector.
size=$((48 * MiB + 68 * KiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((32 * MiB)) $((8 * MiB))
fill "$src" $((size - 4 * KiB)) $((4 * KiB))

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 32M \
        --runtime 900 --seed 21 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

export VBD_VBDD=$VBDD # the bridge's vbdd (the guest's is vbdd-sim)
bdir=$run/g/partners/1-51712
vc() {
        "$VBD_CTL" --ctl-dir "$run/g" "$@"
}
V=(-d 1 -n 51712)
# vcj OUT ARGS...: vbd-ctl --json ARGS; its object on one line in OUT (for
# check), what it printed in OUT.raw; vbd-ctl's exit code
vcj() {
        local out=$1 rc=0
        shift
        vc --json "$@" >"$out.raw" || rc=$?
        "$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$out.raw" \
                >"$out" 2>/dev/null || echo '{}' >"$out"
        return $rc
}

# Whatever happens, no bridge outlives the test.
kill_bridges() {
        local p
        for p in $(pids_with "$bdir/nbd.sock"); do
                kill -KILL "$p" 2>/dev/null
        done
}
cleanup_fn kill_bridges

# no vbdd serves the bridge socket (a zombie has no command line)
no_bridge() {
        [ -z "$(pids_with "$bdir/nbd.sock")" ]
}

bridge_pid() {
        "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["pid"])' "$bdir/bridge.json"
}

# ---- a target smaller than the disk: refused, nothing started ----
truncate -s $((32 * MiB)) "$tmp/small.img"
rc=0
vc migrate start "${V[@]}" --to "raw:$tmp/small.img" >"$tmp/small.out" 2>&1 || rc=$?
[ $rc = 1 ] || fail "a target smaller than the disk: exit $rc, not 1 (refused)"
grep -q "smaller than the VBD" "$tmp/small.out" || fail "too small: message: $(cat "$tmp/small.out")"
echo "# too small: $(cat "$tmp/small.out")"
status "$tmp/small.json"
check "$tmp/small.json" "state == 'none'" "too small: a migration was started"
no_bridge || fail "too small: a bridge is left running"
[ "$(stat -c %s "$tmp/small.img")" = $((32 * MiB)) ] || fail "too small: the target was changed"

# cutover_into NAME SPEC COMPARE...: migrate into SPEC, ready, cutover, run
# COMPARE... while the source is paused, status, abort (resume)
cutover_into() {
        local name=$1 spec=$2 w0 bpid t0 t1
        shift 2
        w0=$(guest_writes)
        t0=$(now_ms)
        vc migrate start "${V[@]}" --to "$spec" --wait >"$tmp/$name.start" 2>&1 || {
                fail "$name: migrate start --wait: $(cat "$tmp/$name.start")"
                tail -20 "$tmp/g.vbdd.log" "$bdir/vbdd.log" >&2
                return 1
        }
        t1=$(now_ms)
        grep -q "bridge\|migrating to $spec" "$tmp/$name.start" ||
                fail "$name: start does not name the target: $(cat "$tmp/$name.start")"
        bpid=$(bridge_pid) || { fail "$name: no bridge.json"; return 1; }
        kill -0 "$bpid" || fail "$name: the bridge (pid $bpid) is not running"
        vcj "$tmp/$name.ready.json" migrate status "${V[@]}" || fail "$name: status"
        check "$tmp/$name.ready.json" \
                "state == 'ready' and target == '$spec' and bridge['running'] and bridge['pid'] == $bpid and partner_connected" \
                "$name: status while ready names the bridge"
        wait_writes 300 20 || fail "$name: the guest does not write once ready"
        vcj "$tmp/$name.cut.json" migrate cutover "${V[@]}" 2>"$tmp/$name.cut.err" || {
                fail "$name: cutover: $(cat "$tmp/$name.cut.json" "$tmp/$name.cut.err")"
                tail -20 "$tmp/g.vbdd.log" >&2
        }
        check "$tmp/$name.cut.json" "state == 'cutover' and writes_forwarded > 0" "$name: cutover"
        check "$tmp/$name.cut.json" \
                "bridge['state'] == 'stopped' and bridge['stopped_by'] == 'cutover' and bridge['exit_code'] == 0 and not bridge['killed']" \
                "$name: the bridge stopped cleanly after the cutover"
        kill -0 "$bpid" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$bpid/status" 2>/dev/null &&
                fail "$name: the bridge is still running after the cutover"
        no_bridge || fail "$name: a bridge process is left after the cutover"
        # the source is paused: the target must be equal now
        "$@" || fail "$name: the target differs from the source after the cutover"
        vcj "$tmp/$name.after.json" migrate status "${V[@]}" ||
                fail "$name: status --json after the cutover"
        [ -s "$tmp/$name.after.json.raw" ] || fail "$name: status --json after the cutover printed nothing"
        check "$tmp/$name.after.json" \
                "state == 'cutover' and paused and bridge['state'] == 'stopped' and not bridge['running'] and not partner_connected" \
                "$name: status after the cutover"
        vc migrate status "${V[@]}" >"$tmp/$name.after.txt" || fail "$name: status after the cutover"
        grep -q "migration cutover (pasm) to $spec" "$tmp/$name.after.txt" &&
                grep -q "bridge .*stopped after the cutover (exit 0)" "$tmp/$name.after.txt" ||
                fail "$name: status text: $(cat "$tmp/$name.after.txt")"
        vc migrate abort "${V[@]}" >"$tmp/$name.abort" || fail "$name: abort after the cutover"
        wait_writes 300 20 || fail "$name: the guest did not resume after the abort"
        echo "# $name: $size bytes in $((t1 - t0)) ms to ready; $(cat "$tmp/$name.after.txt" | tr -s ' ' | tr '\n' ';')"
}

# ---- raw: that does not exist: created ----
dr=$tmp/new.raw
cutover_into raw "raw:$dr" cmp "$src" "$dr"
[ "$(stat -c %s "$dr")" = $size ] || fail "raw: created with $(stat -c %s "$dr") bytes, not $size"

# ---- qcow2: that does not exist: created by vbd-ctl ----
dq=$tmp/new.qcow2
compare_qcow2() { # FILE
        qemu-img compare -U -q -f raw -F qcow2 "$src" "$1" &&
                { qemu-img check -q "$1" || { fail "qemu-img check of $1"; true; }; }
}
cutover_into qcow2-new "qcow2:$dq" compare_qcow2 "$dq"
qemu-img info --output=json "$dq" | "$PY" -c \
        'import json, sys; sys.exit(0 if json.load(sys.stdin)["virtual-size"] >= '$size' else 1)' ||
        fail "qcow2-new: virtual size"

# ---- an existing qcow2, larger than the disk ----
dq2=$tmp/big.qcow2
qemu-img create -q -f qcow2 "$dq2" $((size + 4 * MiB))
cutover_into qcow2-big "qcow2:$dq2" compare_qcow2 "$dq2"

# ---- abort while copying: the source goes on, no bridge left ----
ones "$tmp/ab.raw" $size
vc migrate start "${V[@]}" --to "raw:$tmp/ab.raw" --rate 2M >"$tmp/ab.start" 2>&1 ||
        fail "abort: start: $(cat "$tmp/ab.start")"
sleep 1
# a second start while this one runs is refused; its bridge stays
bpid=$(bridge_pid)
vc migrate start "${V[@]}" --to "raw:$tmp/other.raw" >"$tmp/ab.again" 2>&1 &&
        fail "abort: a second start while copying was accepted"
grep -q "abort it first" "$tmp/ab.again" || fail "abort: second start: $(cat "$tmp/ab.again")"
[ "$(bridge_pid)" = "$bpid" ] && kill -0 "$bpid" || fail "abort: the second start touched the bridge"
[ -e "$tmp/other.raw" ] && fail "abort: the second start created its target"
vcj "$tmp/ab.st.json" migrate status "${V[@]}"
check "$tmp/ab.st.json" "state in ('connecting', 'copying') and bridge['running']" \
        "abort: copying through the bridge"
vcj "$tmp/ab.json" migrate abort "${V[@]}" || fail "abort: $(cat "$tmp/ab.json")"
check "$tmp/ab.json" "state == 'aborted' and bridge['state'] == 'stopped' and bridge['stopped_by'] == 'abort' and bridge['exit_code'] == 0" \
        "abort: the bridge stopped"
no_bridge || fail "abort: a bridge process is left"
wait_writes 300 20 || fail "abort: the source does not serve the guest any more"
status "$tmp/ab.after.json"
check "$tmp/ab.after.json" "state == 'aborted' and not paused" "abort: the source serves"

# ---- the bridge killed while copying: the migration fails, the source goes
# on, status tells the bridge's fate, a new start replaces the record ----
ones "$tmp/kill.raw" $size
vc migrate start "${V[@]}" --to "raw:$tmp/kill.raw" --rate 2M >"$tmp/kill.start" 2>&1 ||
        fail "kill: start: $(cat "$tmp/kill.start")"
bpid=$(bridge_pid)
sleep 0.5
kill -KILL "$bpid"
wait_state failed 30 "$tmp/kill.failed.json"
vcj "$tmp/kill.st.json" migrate status "${V[@]}"
check "$tmp/kill.st.json" \
        "state == 'failed' and bridge['state'] == 'exited' and not bridge['running'] and bridge['exit_status'] == 9" \
        "kill: status after the bridge was killed"
vc migrate status "${V[@]}" >"$tmp/kill.st.txt"
grep -q "bridge .*exited on its own (killed by signal 9" "$tmp/kill.st.txt" ||
        fail "kill: status text: $(cat "$tmp/kill.st.txt")"
wait_writes 300 20 || fail "kill: the source does not serve the guest any more"
vc migrate abort "${V[@]}" >/dev/null 2>&1 && fail "kill: abort of a failed migration succeeded"
no_bridge || fail "kill: a bridge process is left"

# ---- cutover --switch: a local storage migration into a new qcow2; the VBD
# then serves it, the source stays as it was at the cut-over, and the
# guest's verify (reads of blocks written on both sides of the switch) holds
ds=$tmp/switch.qcow2
vc migrate start "${V[@]}" --to "qcow2:$ds" --wait >"$tmp/sw.start" 2>&1 ||
        fail "switch: start: $(cat "$tmp/sw.start")"
wait_writes 300 20 || fail "switch: the guest does not write once ready"
vc migrate cutover "${V[@]}" --switch >"$tmp/sw.cut" 2>&1 ||
        fail "switch: cutover --switch: $(cat "$tmp/sw.cut")"
grep -q "switched: now serving qcow2:$ds" "$tmp/sw.cut" || fail "switch: output: $(cat "$tmp/sw.cut")"
no_bridge || fail "switch: a bridge process is left"
md5_sw=$(md5sum <"$src")
ctl "$gsock" info >"$tmp/sw.info.json"
check "$tmp/sw.info.json" "image == 'qcow2:$ds' and not paused" "switch: the VBD serves the new image"
status "$tmp/sw.after.json"
check "$tmp/sw.after.json" "state == 'none'" "switch: the migration is over"
wait_writes 1000 20 || fail "switch: the guest does not write on the new image"
# --switch without a bridge (no migration at all now) is refused
vc migrate cutover "${V[@]}" --switch >"$tmp/sw.again" 2>&1 && fail "switch: a second cutover --switch passed"

stop_guest g
[ "$(md5sum <"$src")" = "$md5_sw" ] || fail "switch: the source changed after the switch"
qemu-img check -q "$ds" || fail "switch: qemu-img check of the new image"
qemu-img compare -q -f raw -F qcow2 "$src" "$ds" >/dev/null 2>&1 &&
        fail "switch: the guest's writes after the switch are not in the new image"
finish
