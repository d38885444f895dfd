#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The rbd driver (drivers/rbd) against a real single-node Ceph cluster
# (ceph-cluster.sh: mon, mgr, BlueStore OSD, cephx), driven by the
# simulated guest (vbd-sim through vbdd-sim) and by qemu-io through vbdd's
# NBD export:
#  - verified random I/O, then a known workload: the data read back through
#    the guest, by `rbd export` and by QEMU's rbd driver (qemu-img convert)
#    equal the writes;
#  - discard and write-zeroes reach the image (rbd diff, reads), block
#    status (qemu-img map of the export) sees the holes;
#  - a snapshot opened read-only has the data of its time; read-write it
#    is refused; through a read-only export writes fail;
#  - kill -9 of the OSD during verified guest I/O, restarted 3 s later: the
#    guest's requests wait and complete, no error, nothing lost (verify,
#    and a dd done across the outage read back);
#  - a resize by another client is logged; reopened, the new size;
#  - a monitor that does not answer (connect-timeout=2: the error within
#    ~2 s), a missing pool, image, snapshot, keyring, a wrong key, bad specs.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../interop/nbd-lib.sh"
. "$(dirname "$0")/rbd-lib.sh"
requires qemu-img --version
requires qemu-io --version
: "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"
requires_ceph

MiB=$((1 << 20))
RANDOM=1717
start_ceph

# expect_fail WHAT MESSAGE SPEC: opening SPEC fails with MESSAGE
expect_fail() {
        vbd_sim "$3" dd --mode r --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
                fail "$1: opened"
        grep -qF -- "$2" "$tmp/err" || { fail "$1: message (want '$2')"; cat "$tmp/err" >&2; }
}

# ---- verified I/O, a known workload, the data seen by rbd and by QEMU ----
rbdc create rbd/a --size 64M || fail "rbd create"
vbd_sim "$(rspec a)" bench --rw randrw --bs 8192 --iodepth 32 --runtime 2 --verify \
        >"$tmp/out" 2>&1 || { fail "bench --verify"; tail "$tmp/out" >&2; }
grep -q " 0 mismatches" "$tmp/out" || { fail "verify: mismatches"; tail "$tmp/out" >&2; }
grep -q " 0 errors" "$tmp/out" || { fail "verify: errors"; tail "$tmp/out" >&2; }
grep -q " [1-9][0-9]* writes" "$tmp/out" || fail "verify: no writes"
echo "verified: $(grep -o '[0-9]* IOPS' "$tmp/out")" >&2

rbdc export rbd/a "$tmp/ref.raw" >/dev/null 2>&1 || fail "rbd export"
for ((i = 0; i < 24; i++)); do
        len=$(((RANDOM % 160 + 1) * 512))
        off=$(((RANDOM * 32768 + RANDOM) % (64 * MiB / 512) * 512))
        ((off + len > 64 * MiB)) && len=$((64 * MiB - off))
        head -c "$len" /dev/urandom >"$tmp/chunk"
        vbd_sim "$(rspec a)" dd --if "$tmp/chunk" --seek "$off" 2>"$tmp/err" ||
                { fail "dd in at $off"; cat "$tmp/err" >&2; break; }
        dd if="$tmp/chunk" of="$tmp/ref.raw" bs=512 seek=$((off / 512)) conv=notrunc status=none
done
head -c $((3 * MiB + 4096)) /dev/urandom >"$tmp/chunk" # large, multi-segment (indirect)
vbd_sim "$(rspec a)" dd --max-segments 64 --if "$tmp/chunk" --seek $((30 * MiB - 4096)) \
        2>"$tmp/err" || { fail "dd in (indirect)"; cat "$tmp/err" >&2; }
dd if="$tmp/chunk" of="$tmp/ref.raw" bs=4096 seek=$(((30 * MiB - 4096) / 4096)) conv=notrunc \
        status=none
vbd_sim "$(rspec a)" dd --max-segments 64 --of "$tmp/back.raw" 2>"$tmp/err" ||
        { fail "dd out"; cat "$tmp/err" >&2; }
cmp -s "$tmp/back.raw" "$tmp/ref.raw" || fail "read back through the guest differs"
rm -f "$tmp/exp.raw"
rbdc export rbd/a "$tmp/exp.raw" >/dev/null 2>&1 || fail "rbd export"
cmp -s "$tmp/exp.raw" "$tmp/ref.raw" || fail "rbd export differs from the writes"
qemu-img convert -f raw -O raw \
        "rbd:rbd/a:conf=$conf:id=vbd:keyring=$cdir/client.vbd.keyring" "$tmp/q.raw" \
        2>"$tmp/err" || { fail "qemu-img convert from rbd"; cat "$tmp/err" >&2; }
cmp -s "$tmp/q.raw" "$tmp/ref.raw" || fail "QEMU's rbd driver reads other data"
rm -f "$tmp/q.raw" "$tmp/exp.raw" "$tmp/back.raw"

# ---- discard, write-zeroes, block status ----
rbdc create rbd/z --size 32M || fail "rbd create z"
head -c $((32 * MiB)) /dev/urandom >"$tmp/z.raw"
vbd_sim "$(rspec z)" dd --if "$tmp/z.raw" 2>"$tmp/err" || { fail "z: dd in"; cat "$tmp/err" >&2; }
start_export "$sockdir/e.sock" --nbd-writable --image "$(rspec z)" || finish
qemu-io -f raw -c "discard 4M 4M" -c "write -z -u 12M 4M" -c "write -z 20M 1M" \
        -c "discard 24M 64K" "$(uri "$sockdir/e.sock")" >"$tmp/err" 2>&1 ||
        { fail "qemu-io discard/zero"; cat "$tmp/err" >&2; }
qemu-img map -f raw --output=json "$(uri "$sockdir/e.sock")" >"$tmp/map.json" 2>"$tmp/err" ||
        { fail "qemu-img map of the export"; cat "$tmp/err" >&2; }
stop_export
rbdc diff rbd/z --format json >"$tmp/diff.json" 2>"$tmp/err" || { fail "rbd diff"; cat "$tmp/err" >&2; }
rbdc export rbd/z "$tmp/zexp.raw" >/dev/null 2>&1 || fail "rbd export z"
python3 - "$tmp/diff.json" "$tmp/map.json" "$tmp/zexp.raw" "$tmp/z.raw" <<'PY' || fail "discard/write-zeroes"
import json, sys
MiB = 1 << 20
diff = json.load(open(sys.argv[1]))
qmap = json.load(open(sys.argv[2]))
data = open(sys.argv[3], "rb").read()
orig = open(sys.argv[4], "rb").read()
bad = []
def allocated(off, length):  # rbd diff: some data extent overlaps
    return any(e["exists"] in (True, "true") and e["offset"] < off + length and
               off < e["offset"] + e["length"] for e in diff)
for off, what in ((4 * MiB, "discard 4M 4M"), (12 * MiB, "write -z -u 12M 4M")):
    if allocated(off, 4 * MiB):
        bad.append(f"{what}: rbd diff still lists data in [{off}, +4M)")
    if data[off:off + 4 * MiB] != bytes(4 * MiB):
        bad.append(f"{what}: does not read as zeroes")
if data[20 * MiB:21 * MiB] != bytes(MiB):
    bad.append("write -z 20M 1M: not zeroes")
if not allocated(20 * MiB, MiB):
    bad.append("write -z 20M 1M (no unmap): deallocated")
for lo, hi in ((0, 4 * MiB), (8 * MiB, 12 * MiB), (16 * MiB, 20 * MiB), (21 * MiB, 24 * MiB),
               (24 * MiB + 65536, 32 * MiB)):
    if data[lo:hi] != orig[lo:hi]:
        bad.append(f"data in [{lo}, {hi}) changed")
# the export's block status: the discarded objects are holes
def ext(off):
    for e in qmap:
        if e["start"] <= off < e["start"] + e["length"]:
            return e
for off in (4 * MiB, 6 * MiB, 12 * MiB, 15 * MiB):
    e = ext(off)
    if e is None or e["data"] or not e["zero"]:
        bad.append(f"qemu-img map: not a hole at {off}: {e}")
for off in (0, 9 * MiB, 31 * MiB):
    e = ext(off)
    if e is None or not e["data"]:
        bad.append(f"qemu-img map: no data at {off}: {e}")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
rm -f "$tmp/z.raw" "$tmp/zexp.raw"

# ---- snapshots: read-only ----
rbdc snap create rbd/a@s1 >/dev/null 2>&1 || fail "rbd snap create"
head -c $MiB /dev/urandom >"$tmp/chunk"
vbd_sim "$(rspec a)" dd --if "$tmp/chunk" --seek 0 2>"$tmp/err" || { fail "dd after snap"; cat "$tmp/err" >&2; }
vbd_sim "$(rspec a@s1)" dd --mode r --of "$tmp/snap.raw" 2>"$tmp/err" ||
        { fail "snapshot opened read-only"; cat "$tmp/err" >&2; }
cmp -s "$tmp/snap.raw" "$tmp/ref.raw" || fail "the snapshot does not have the data of its time"
vbd_sim "$(rspec a)" dd --mode r --of "$tmp/now" --count $MiB 2>"$tmp/err" || fail "dd out a"
cmp -s "$tmp/now" "$tmp/chunk" || fail "the image lost the write after the snapshot"
vbd_sim "$(rspec a@s1)" dd --if "$tmp/chunk" >"$tmp/err" 2>&1 && fail "snapshot opened read-write"
grep -q "a snapshot is read-only; open it read-only" "$tmp/err" ||
        { fail "snapshot read-write: message"; cat "$tmp/err" >&2; }
start_export "$sockdir/s.sock" --image "$(rspec a@s1)" || finish
qemu-io -f raw -c "write 0 64K" "$(uri "$sockdir/s.sock")" >"$tmp/err" 2>&1 &&
        fail "a write to the snapshot's export succeeded"
qemu-io -f raw -r -c "read -P 0 0 0" -c "read 0 64K" "$(uri "$sockdir/s.sock")" >"$tmp/err" 2>&1 ||
        { fail "read of the snapshot's export"; cat "$tmp/err" >&2; }
stop_export
expect_fail "missing snapshot" "image rbd/a has no snapshot nosuch" "$(rspec a@nosuch)"
rm -f "$tmp/snap.raw"

# ---- the OSD killed during guest I/O: requests wait, nothing lost ----
rbdc create rbd/f --size 64M || fail "rbd create f"
: >"$tmp/fault.log"
(
        for _ in $(seq 400); do
                grep -q "ring: connected" "$tmp/fault.log" && break
                sleep 0.05
        done
        sleep 1
        "$_rbd_dir/ceph-cluster.sh" osd-kill "$cdir"
        echo "osd killed" >>"$tmp/fault.log"
        sleep 3
        "$_rbd_dir/ceph-cluster.sh" osd-start "$cdir" && echo "osd back" >>"$tmp/fault.log"
) &
fault_pid=$!
t0=$(date +%s%N)
rc=0
VBD_WRAPPER_LOG=$tmp/fault.log VBD_REAL_VBDD=$VBD_SIM_VBDD timeout 120 "$VBD_SIM" \
        --vbdd "$_lib_dir/vbdd-wrapper.sh" bench --image "$(rspec f)" --rw randrw --bs 16384 \
        --iodepth 32 --runtime 10 --verify --stall-timeout 90 >"$tmp/out" 2>&1 || rc=$?
t=$((($(date +%s%N) - t0) / 1000000))
wait $fault_pid
grep -q "osd killed" "$tmp/fault.log" || fail "OSD fault: the OSD was not killed"
grep -q "osd back" "$tmp/fault.log" || fail "OSD fault: the OSD did not come back"
[ $rc = 0 ] || { fail "OSD fault: bench exited $rc after $t ms"; tail "$tmp/out" >&2; }
grep -q " 0 errors" "$tmp/out" || { fail "OSD fault: failed ios"; tail "$tmp/out" >&2; }
grep -q " 0 mismatches" "$tmp/out" || { fail "OSD fault: mismatches"; tail "$tmp/out" >&2; }
lat=$(sed -nE 's/.* max ([0-9]+)\.[0-9]+;.*/\1/p' "$tmp/out")
# the guest waited: an io took the outage, or (a slow restart under load) the
# ios stuck in it completed after the measured 10 s, making the run longer
((${lat:-0} > 2000000 || t > 13000)) ||
        fail "OSD fault: the longest io took ${lat:-?} us, the run $t ms (no wait seen?)"
echo "OSD kill -9 + restart: bench $t ms, longest io ${lat:-?} us, $(grep -o '[0-9]* errors' "$tmp/out")" >&2

# a dd across an outage completes once the OSD is back, and is read back
head -c $((8 * MiB)) /dev/urandom >"$tmp/chunk"
(sleep 1; "$_rbd_dir/ceph-cluster.sh" osd-kill "$cdir"; sleep 2
        "$_rbd_dir/ceph-cluster.sh" osd-start "$cdir") &
fault_pid=$!
# (an OSD restart on a loaded 2-core machine can take longer than dd's 10 s default)
vbd_sim "$(rspec f)" dd --stall-timeout 90 --if "$tmp/chunk" --seek $MiB 2>"$tmp/err" ||
        { fail "dd across the outage"; cat "$tmp/err" >&2; }
wait $fault_pid || fail "OSD restart (dd)"
vbd_sim "$(rspec f)" dd --mode r --of "$tmp/back" --skip $MiB --count $((8 * MiB)) 2>"$tmp/err" ||
        { fail "dd out after the outage"; cat "$tmp/err" >&2; }
cmp -s "$tmp/back" "$tmp/chunk" || fail "data written across the outage lost"

# ---- a resize: logged while open, the new size on reopen ----
: >"$tmp/resize.log"
(
        for _ in $(seq 400); do
                grep -q "ring: connected" "$tmp/resize.log" && break
                sleep 0.05
        done
        sleep 0.5
        rbdc resize rbd/f --size 96M >/dev/null 2>&1
) &
resize_pid=$!
VBD_WRAPPER_LOG=$tmp/resize.log VBD_REAL_VBDD=$VBD_SIM_VBDD timeout 60 "$VBD_SIM" \
        --vbdd "$_lib_dir/vbdd-wrapper.sh" bench --image "$(rspec f)" --rw randread --bs 4096 \
        --iodepth 8 --runtime 3 >"$tmp/out" 2>&1 ||
        { fail "bench during resize"; tail "$tmp/out" >&2; tail -n 40 "$tmp/resize.log" >&2; }
wait $resize_pid || fail "rbd resize"
grep -q "resized from 67108864 to 100663296 bytes" "$tmp/resize.log" ||
        { fail "resize: not logged"; tail "$tmp/resize.log" >&2; }
vbd_sim "$(rspec f)" dd --mode r --of "$tmp/back" 2>"$tmp/err" || { fail "dd out resized"; cat "$tmp/err" >&2; }
[ "$(stat -c %s "$tmp/back")" = $((96 * MiB)) ] || fail "reopened: $(stat -c %s "$tmp/back") bytes, not 96 MiB"
rm -f "$tmp/back" "$tmp/chunk"

# ---- refusals ----
expect_fail "missing pool" "no pool nopool" "rbd:nopool/a,conf=$conf,id=vbd,keyring=$cdir/client.vbd.keyring"
expect_fail "missing image" "no image nosuch in pool rbd" "$(rspec nosuch)"
expect_fail "missing keyring" "keyring $tmp/none.keyring: No such file or directory" \
        "rbd:rbd/a,conf=$conf,id=vbd,keyring=$tmp/none.keyring"
expect_fail "missing conf" "conf $tmp/none.conf: No such file or directory" \
        "rbd:rbd/a,conf=$tmp/none.conf,id=vbd"
sed "s|key = .*|key = $(ceph-authtool --gen-print-key)|" "$cdir/client.vbd.keyring" >"$tmp/wrong.keyring"
expect_fail "wrong key" "the monitors refused client.vbd: wrong key or no such user" \
        "rbd:rbd/a,conf=$conf,id=vbd,keyring=$tmp/wrong.keyring"
ceph-authtool "$tmp/nobody.keyring" --create-keyring --gen-key -n client.nobody >/dev/null
expect_fail "unknown user" "the monitors refused client.nobody: wrong key or no such user" \
        "rbd:rbd/a,conf=$conf,id=nobody,keyring=$tmp/nobody.keyring"
expect_fail "no key for the user" "client.vbd.keyring: no key for the user" \
        "rbd:rbd/a,conf=$conf,id=nobody,keyring=$cdir/client.vbd.keyring"
if [ ! -e /etc/ceph/ceph.conf ] && [ ! -e ~/.ceph/config ]; then
        unset CEPH_CONF
        expect_fail "no conf anywhere" "no monitors known: give conf=FILE" \
                "rbd:rbd/a,id=vbd,keyring=$cdir/client.vbd.keyring"
fi
expect_fail "no slash" "not POOL/IMAGE[@SNAP]" "rbd:a,conf=$conf"
expect_fail "empty image" "empty image name" "rbd:rbd/,conf=$conf"
expect_fail "empty pool" "empty pool name" "rbd:/a,conf=$conf"
expect_fail "empty snapshot" "empty snapshot name" "rbd:rbd/a@,conf=$conf"
expect_fail "two @" "more than one '@'" "rbd:rbd/a@b@c,conf=$conf"
expect_fail "namespace" "namespaces are not supported" "rbd:rbd/ns/a,conf=$conf"
expect_fail "client. in id" "give the user without \"client.\"" "rbd:rbd/a,conf=$conf,id=client.vbd"
expect_fail "bad id" "not a user name" "rbd:rbd/a,conf=$conf,id=a b"
expect_fail "timeout 0" "connect-timeout" "rbd:rbd/a,conf=$conf,connect-timeout=0"

# a monitor that does not answer: a port where nothing listens
port=$(python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
sed "s/^mon_host = .*/mon_host = [v2:127.0.0.1:$port]/" "$conf" >"$tmp/dead.conf"
t0=$(date +%s%N)
expect_fail "dead monitor" "no answer from the monitors within 2 s" \
        "rbd:rbd/a,conf=$tmp/dead.conf,id=vbd,keyring=$cdir/client.vbd.keyring,connect-timeout=2"
t=$((($(date +%s%N) - t0) / 1000000))
((t >= 1900 && t < 8000)) || fail "dead monitor: gave up after $t ms"
echo "dead monitor: error after $t ms" >&2

finish
