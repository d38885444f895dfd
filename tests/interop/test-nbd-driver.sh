#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The nbd driver (drivers/nbd) against real NBD servers, driven by the
# simulated guest (vbd-sim through vbdd-sim) and by qemu-io through vbdd's
# own NBD export:
#  - qemu-nbd -f raw and -f qcow2 (--cache=none), nbdkit memory: verified
#    random I/O, then the data read back from the file (qemu-img compare);
#    the guest's flush reaches the server (nbdkit's log filter);
#  - discard and write-zeroes reach the server (qemu-img map of the file),
#    and the zero fallback of a server that cannot zero (nbdkit nozero);
#  - the server's block sizes (nbdkit blocksize-policy), a size that is
#    not a multiple of 512, an empty export;
#  - TLS with a pre-shared key (nbdkit --tls=require), a wrong key, no TLS;
#  - a read-only export opened read-write, a missing socket, a server that
#    accepts but never answers the handshake (connect-timeout);
#  - kill -9 of qemu-nbd during writes, SIGSTOP of it with timeout=2: the
#    ios fail (-ETIMEDOUT within ~3 s), vbdd-sim does not crash, later ios
#    fail at once.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires qemu-nbd --version
requires qemu-img --version
requires qemu-io --version
: "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"

MiB=$((1 << 20))
RANDOM=1717

_kill_server() {
        kill -CONT "$1" 2>/dev/null
        kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null
        return 0
}

# wait_sock SOCK PID: until SOCK exists (the server listens)
wait_sock() {
        local i
        for i in $(seq 200); do
                [ -S "$1" ] && return 0
                kill -0 "$2" 2>/dev/null || break
                sleep 0.05
        done
        fail "server for $1 did not start"
        return 1
}

# qnbd SOCK ARGS...: qemu-nbd -t on SOCK in the background; $srv_pid
qnbd() {
        local sock=$1
        shift
        rm -f "$sock"
        qemu-nbd -t -k "$sock" "$@" 2>>"$tmp/server.log" &
        srv_pid=$!
        cleanup_fn _kill_server "$srv_pid"
        wait_sock "$sock" "$srv_pid"
}

# kit SOCK ARGS...: nbdkit in the foreground of a background job; $srv_pid
kit() {
        local sock=$1
        shift
        rm -f "$sock"
        nbdkit -f -U "$sock" "$@" 2>>"$tmp/server.log" &
        srv_pid=$!
        cleanup_fn _kill_server "$srv_pid"
        wait_sock "$sock" "$srv_pid"
}

stop_server() {
        _kill_server "$srv_pid"
}

spec() { # SOCK [OPTIONS]
        echo "nbd:$(uri "$1")${2:+,$2}"
}

# verified SPEC WHAT: random verified I/O through the simulated guest
verified() {
        vbd_sim "$1" bench --rw randrw --bs 8192 --iodepth 32 --runtime 2 --verify \
                >"$tmp/out" 2>&1 || { fail "$2: bench --verify"; tail "$tmp/out" >&2; return; }
        grep -q " 0 mismatches" "$tmp/out" || { fail "$2: mismatches"; tail "$tmp/out" >&2; }
        grep -q " 0 errors" "$tmp/out" || { fail "$2: errors"; tail "$tmp/out" >&2; }
}

# workload SPEC REF N SIZE: N random dd writes through the guest into SPEC
# and with dd into the raw file REF
workload() {
        local spec=$1 ref=$2 n=$3 size=$4 i off len
        for ((i = 0; i < n; i++)); do
                len=$(((RANDOM % 160 + 1) * 512))
                off=$(((RANDOM * 32768 + RANDOM) % (size / 512) * 512))
                ((off + len > size)) && len=$((size - off))
                head -c "$len" /dev/urandom >"$tmp/chunk"
                vbd_sim "$spec" dd --if "$tmp/chunk" --seek "$off" 2>"$tmp/err" ||
                        { fail "dd into $spec at $off"; cat "$tmp/err" >&2; return; }
                dd if="$tmp/chunk" of="$ref" bs=512 seek=$((off / 512)) conv=notrunc \
                        status=none
        done
}

# max_count LOG: the largest count= of a Read or Write in an nbdkit log
max_count() {
        python3 - "$1" <<'PY'
import re, sys
m = 0
for line in open(sys.argv[1]):
    r = re.search(r"(Read|Write) id=\S+ offset=\S+ count=(0x[0-9a-f]+|\d+)", line)
    if r:
        m = max(m, int(r.group(2), 0))
print(m)
PY
}

s1=$sockdir/s1.sock

# ---- qemu-nbd, raw and qcow2 ----
for fmt in raw qcow2; do
        img=$tmp/d.$fmt
        rm -f "$img" "$tmp/ref.raw"
        qemu-img create -q -f $fmt "$img" 64M
        truncate -s 64M "$tmp/ref.raw"
        qnbd "$s1" -f $fmt --cache=none "$img" || continue
        verified "$(spec "$s1")" "qemu-nbd -f $fmt"
        # the verified run's data, then a known workload on top
        stop_server
        qemu-img convert -f $fmt -O raw "$img" "$tmp/ref.raw"
        qnbd "$s1" -f $fmt --cache=none "$img" || continue
        workload "$(spec "$s1")" "$tmp/ref.raw" 16 $((64 * MiB))
        # reads through the driver, multi-segment and large (indirect)
        vbd_sim "$(spec "$s1")" dd --max-segments 64 --of "$tmp/back.raw" 2>"$tmp/err" ||
                { fail "qemu-nbd -f $fmt: dd out"; cat "$tmp/err" >&2; }
        cmp -s "$tmp/back.raw" "$tmp/ref.raw" || fail "qemu-nbd -f $fmt: read back differs"
        stop_server # cleanly: the guest's flushes made the data durable
        qemu-img compare -q -f $fmt -F raw "$img" "$tmp/ref.raw" ||
                fail "qemu-nbd -f $fmt: the file differs from the writes"
        [ $fmt = qcow2 ] && { qemu-img check -q "$img" || fail "qemu-img check after writes"; }
done

# ---- nbdkit memory; flush reaches the server ----
if nbdkit --version >/dev/null 2>&1; then
        kit "$s1" --filter=log memory 64M logfile="$tmp/kit.log" || finish
        verified "$(spec "$s1")" "nbdkit memory"
        head -c $MiB /dev/urandom >"$tmp/chunk"
        : >"$tmp/kit.log"
        vbd_sim "$(spec "$s1")" dd --if "$tmp/chunk" --seek $((3 * MiB)) 2>"$tmp/err" ||
                { fail "nbdkit: dd in"; cat "$tmp/err" >&2; }
        grep -q "Write id=" "$tmp/kit.log" || fail "nbdkit: no write seen"
        awk '/Write id=/ {w = NR} /Flush id=/ {f = NR} END {exit !(f > w && w)}' "$tmp/kit.log" ||
                fail "nbdkit: no flush after the writes"
        vbd_sim "$(spec "$s1")" dd --mode r --of "$tmp/back" --skip $((3 * MiB)) --count $MiB \
                2>"$tmp/err" || { fail "nbdkit: dd out"; cat "$tmp/err" >&2; }
        cmp -s "$tmp/back" "$tmp/chunk" || fail "nbdkit: read back differs"
        stop_server

        # Block sizes: minimum 4096 (the VBD's logical block), maximum 64K (split).
        kit "$s1" --filter=log --filter=blocksize-policy memory 16M logfile="$tmp/kit.log" \
                blocksize-minimum=4096 blocksize-preferred=16384 blocksize-maximum=65536 \
                blocksize-error-policy=error || finish
        vbd_sim "$(spec "$s1")" bench --rw randrw --bs 4096 --iodepth 16 --runtime 1 --verify \
                >"$tmp/out" 2>&1 || { fail "blocksize 4096: bench"; tail "$tmp/out" >&2; }
        grep -q " 0 errors" "$tmp/out" || { fail "blocksize 4096: errors"; tail "$tmp/out" >&2; }
        head -c $((1 * MiB)) /dev/urandom >"$tmp/chunk"
        : >"$tmp/kit.log"
        vbd_sim "$(spec "$s1")" dd --max-segments 64 --if "$tmp/chunk" --seek $MiB 2>"$tmp/err" ||
                { fail "blocksize: dd in"; cat "$tmp/err" >&2; }
        vbd_sim "$(spec "$s1")" dd --max-segments 64 --of "$tmp/back" --skip $MiB --count $MiB \
                2>"$tmp/err" || { fail "blocksize: dd out"; cat "$tmp/err" >&2; }
        cmp -s "$tmp/back" "$tmp/chunk" || fail "blocksize: read back differs"
        grep -q "Write id=" "$tmp/kit.log" || fail "blocksize: no write seen"
        m=$(max_count "$tmp/kit.log")
        ((m > 0 && m <= 65536)) || fail "blocksize: largest request $m bytes (maximum 64 KiB)"
        stop_server

        # Size not a multiple of 512: rounded down, with a warning.
        kit "$s1" memory 1000001 || finish
        VBD_WRAPPER_LOG=$tmp/odd.log vbd_sim "$(spec "$s1")" dd --mode r --of "$tmp/back" \
                2>"$tmp/err" || { fail "odd size: dd out"; cat "$tmp/err" >&2; }
        [ "$(stat -c %s "$tmp/back")" = $((1000001 / 512 * 512)) ] ||
                fail "odd size: $(stat -c %s "$tmp/back") bytes read"
        grep -q "not a multiple of 512, exposing 999936 bytes" "$tmp/odd.log" ||
                fail "odd size: no warning"
        stop_server

        # An empty export.
        kit "$s1" memory 0 || finish
        vbd_sim "$(spec "$s1")" dd --mode r --of "$tmp/back" >"$tmp/err" 2>&1 &&
                fail "empty export: opened"
        grep -q "the export is empty" "$tmp/err" || { fail "empty export: message"; cat "$tmp/err" >&2; }
        stop_server

        # A server that cannot zero: writes of zeroes instead.
        kit "$s1" --filter=log --filter=nozero memory 16M logfile="$tmp/kit.log" || finish
        head -c $((4 * MiB)) /dev/urandom >"$tmp/chunk"
        vbd_sim "$(spec "$s1")" dd --if "$tmp/chunk" 2>"$tmp/err" ||
                { fail "nozero: dd in"; cat "$tmp/err" >&2; }
        start_export "$sockdir/e.sock" --nbd-writable --image "$(spec "$s1")" || finish
        : >"$tmp/kit.log"
        qemu-io -f raw -c "write -z 1M 2M" "$(uri "$sockdir/e.sock")" >"$tmp/err" 2>&1 ||
                { fail "nozero: write -z"; cat "$tmp/err" >&2; }
        grep -q "Write id=" "$tmp/kit.log" || fail "nozero: no writes of zeroes"
        grep -q "Zero id=" "$tmp/kit.log" && fail "nozero: a zero command sent"
        stop_export
        head -c $MiB "$tmp/chunk" >"$tmp/expect"
        head -c $((2 * MiB)) /dev/zero >>"$tmp/expect"
        tail -c $MiB "$tmp/chunk" >>"$tmp/expect"
        vbd_sim "$(spec "$s1")" dd --mode r --of "$tmp/back" --count $((4 * MiB)) 2>"$tmp/err" ||
                { fail "nozero: dd out"; cat "$tmp/err" >&2; }
        cmp -s "$tmp/back" "$tmp/expect" || fail "nozero: zeroed range reads wrong"
        stop_server
fi

# ---- TLS (nbds+unix://, a pre-shared key) ----
if nbdkit --dump-config 2>/dev/null | grep -q '^tls=yes'; then
        key() { echo "$1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
        key alice >"$tmp/keys.psk"
        key alice >"$tmp/wrong.psk"
        chmod 600 "$tmp/keys.psk" "$tmp/wrong.psk"
        kit "$s1" --tls=require --tls-psk="$tmp/keys.psk" memory 16M || finish
        tls_spec() { echo "nbd:nbds+unix://alice@/?socket=$s1&tls-psk-file=$1"; }
        vbd_sim "$(tls_spec "$tmp/keys.psk")" bench --rw randrw --bs 8192 --iodepth 16 \
                --runtime 1 --verify >"$tmp/out" 2>&1 || { fail "TLS: bench"; tail "$tmp/out" >&2; }
        grep -q " 0 mismatches" "$tmp/out" || fail "TLS: mismatches"
        vbd_sim "$(tls_spec "$tmp/wrong.psk")" dd --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
                fail "TLS: opened with the wrong key"
        grep -q "cannot connect to nbds+unix://" "$tmp/err" || { fail "TLS: wrong key message"; cat "$tmp/err" >&2; }
        vbd_sim "$(spec "$s1")" dd --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
                fail "TLS: opened without TLS"
        grep -q "server requires TLS" "$tmp/err" || { fail "TLS: plain message"; cat "$tmp/err" >&2; }
        stop_server
fi

# ---- discard and write-zeroes reach qemu-nbd (qemu-img map of the file) ----
img=$tmp/z.raw
head -c $((16 * MiB)) /dev/urandom >"$img"
qnbd "$s1" -f raw --cache=none --discard=unmap "$img" || finish
start_export "$sockdir/e.sock" --nbd-writable --image "$(spec "$s1")" || finish
qemu-io -f raw -c "discard 1M 1M" -c "write -z -u 4M 2M" -c "write -z 8M 1M" \
        "$(uri "$sockdir/e.sock")" >"$tmp/err" 2>&1 || { fail "qemu-io discard/zero"; cat "$tmp/err" >&2; }
stop_export
stop_server
qemu-img map -f raw --output=json "$img" >"$tmp/map.json" || fail "qemu-img map"
python3 - "$tmp/map.json" "$img" <<'PY' || fail "discard/write-zeroes did not reach the file"
import json, sys
MiB = 1 << 20
m = json.load(open(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
def extent_at(off):
    for e in m:
        if e["start"] <= off < e["start"] + e["length"]:
            return e
bad = []
for off, length, what in ((1 * MiB, MiB, "discard"), (4 * MiB, 2 * MiB, "write -z -u")):
    for o in range(off, off + length, 65536):
        e = extent_at(o)
        if e is None or e["data"] or not e["zero"]:
            bad.append(f"{what}: not a hole at {o}: {e}")
            break
if data[8 * MiB:9 * MiB] != bytes(MiB):
    bad.append("write -z: not zeroes")
if data[1 * MiB:2 * MiB] != bytes(MiB) or data[4 * MiB:6 * MiB] != bytes(2 * MiB):
    bad.append("holes do not read as zeroes")
if data[0:MiB] == bytes(MiB) or data[2 * MiB:3 * MiB] == bytes(MiB):
    bad.append("data around the holes lost")
for b in bad:
    print(b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# ---- refusals ----
truncate -s 16M "$tmp/ro.raw"
qnbd "$s1" -f raw -r "$tmp/ro.raw" || finish
vbd_sim "$(spec "$s1")" dd --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
        fail "read-only export opened read-write"
grep -q "the export is read-only; open it read-only" "$tmp/err" ||
        { fail "read-only export: message"; cat "$tmp/err" >&2; }
vbd_sim "$(spec "$s1")" dd --mode r --of /dev/null --count 4096 2>"$tmp/err" ||
        { fail "read-only export opened read-only"; cat "$tmp/err" >&2; }
stop_server

vbd_sim "$(spec "$sockdir/none.sock")" dd --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
        fail "missing socket: opened"
grep -q "cannot connect to nbd+unix:///?socket=$sockdir/none.sock" "$tmp/err" ||
        { fail "missing socket: message"; cat "$tmp/err" >&2; }

# A listener that never answers: the handshake times out.
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(8)
time.sleep(60)' "$sockdir/mute.sock" &
mute_pid=$!
cleanup_fn kill "$mute_pid"
wait_sock "$sockdir/mute.sock" $mute_pid
t0=$(date +%s%N)
vbd_sim "$(spec "$sockdir/mute.sock" connect-timeout=2)" dd --of /dev/null --count 4096 \
        >"$tmp/err" 2>&1 && fail "mute server: opened"
t=$((($(date +%s%N) - t0) / 1000000))
grep -q "no connection to nbd+unix:///?socket=$sockdir/mute.sock within 2 s" "$tmp/err" ||
        { fail "mute server: message"; cat "$tmp/err" >&2; }
((t >= 1900 && t < 6000)) || fail "mute server: gave up after $t ms"
kill "$mute_pid"

vbd_sim "nbd:nbd+vsock:///" dd --of /dev/null --count 4096 >"$tmp/err" 2>&1 &&
        fail "vsock URI opened"
grep -q "not an NBD URI" "$tmp/err" || { fail "bad scheme: message"; cat "$tmp/err" >&2; }

# ---- faults during I/O ----
# bench_fault SIG WHAT SPEC: writes through the guest, SIG to qemu-nbd 0.7 s into them
bench_fault() {
        local sig=$1 what=$2 spec=$3 t0 t rc=0
        truncate -s 64M "$tmp/f.raw"
        qnbd "$s1" -f raw --cache=none "$tmp/f.raw" || return
        : >"$tmp/fault.log"
        (
                for _ in $(seq 400); do
                        grep -q "ring: connected" "$tmp/fault.log" && break
                        sleep 0.05
                done
                sleep 0.7
                kill -"$sig" "$srv_pid"
        ) &
        t0=$(date +%s%N)
        VBD_WRAPPER_LOG=$tmp/fault.log VBD_WRAPPER_PIDFILE=$tmp/fault.pid timeout 30 \
                "$VBD_SIM" --vbdd "$_lib_dir/vbdd-wrapper.sh" bench --image "$spec" \
                --rw randwrite --bs 8192 --iodepth 32 --runtime 4 >"$tmp/out" 2>&1 || rc=$?
        t=$((($(date +%s%N) - t0) / 1000000))
        [ $rc = 124 ] && fail "$what: the guest hung"
        [ $rc = 0 ] && fail "$what: no error"
        grep -qE " [1-9][0-9]* errors" "$tmp/out" || { fail "$what: no failed ios"; tail "$tmp/out" >&2; }
        grep -q "exited with status\|killed by signal" "$tmp/out" &&
                { fail "$what: vbdd-sim died"; tail "$tmp/out" >&2; }
        # later ios fail at once: many failed requests in the remaining time
        n=$(sed -nE 's/.* ([0-9]+) errors.*/\1/p' "$tmp/out")
        [ "${n:-0}" -gt 1000 ] || fail "$what: only ${n:-0} failed ios (not failing fast)"
        ((t < 10000)) || fail "$what: bench took $t ms"
        echo "$what: $t ms, ${n:-0} failed ios" >&2
        _kill_server "$srv_pid"
}
export VBD_REAL_VBDD=$VBD_SIM_VBDD
bench_fault KILL "kill -9 qemu-nbd" "$(spec "$s1")"
grep -q "connection lost" "$tmp/fault.log" || fail "kill -9: no 'connection lost' in the log"
bench_fault STOP "SIGSTOP qemu-nbd" "$(spec "$s1" nbd.timeout=2)"
grep -q "no answer for 2 s; dropping the connection" "$tmp/fault.log" ||
        fail "SIGSTOP: no timeout in the log"
grep -q "Connection timed out" "$tmp/fault.log" || fail "SIGSTOP: ios not failed with ETIMEDOUT"
# the ios stuck at the SIGSTOP failed after about timeout=2 s
lat=$(sed -nE 's/.* max ([0-9]+)\.[0-9]+;.*/\1/p' "$tmp/out")
((${lat:-0} > 1500000 && ${lat:-0} < 3500000)) ||
        fail "SIGSTOP: the longest io took ${lat:-?} us (want ~2 s)"

finish
