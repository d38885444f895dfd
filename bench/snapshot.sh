#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What a snapshot (image fleecing, the backup filter's snapshot job) costs
# the guest: vbd-sim's 4 KiB random writes at QD32 on a raw image, alone,
# then with a snapshot started as the run begins, then with the snapshot
# read end to end by nbdcopy meanwhile (a backup of it); same run, same file.
# The worst case for copy-before-write: random writes reach every block, so
# the first write to each 64 KiB block waits for its old contents to be read
# and stored.  Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/snapshot.sh [BUILD_DIR]
#   VBD_BENCH_DIR   where the image and the store go (default /var/tmp; not tmpfs)
#   VBD_BENCH_TIME  seconds per run (default 10)
#   VBD_BENCH_SIZE  image size (default 1G)
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-10}
SIZE=${VBD_BENCH_SIZE:-1G}
SIM=$B/tests/sim/front/vbd-sim
export VBD_SIM_VBDD=$B/tests/sim/vbdd-sim
W=$(mktemp -d "$DIR/vbd-snapbench.XXXXXX")
IMG=$W/disk.img
trap '[ -n "${VBD_BENCH_KEEP:-}" ] || rm -rf "$W"' EXIT
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }
command -v nbdcopy >/dev/null || { echo "bench: nbdcopy is needed (libnbd-bin)" >&2; exit 1; }
[ -x "$SIM" ] || { echo "bench: build first ($SIM missing)" >&2; exit 1; }

# ctl SOCKET CMD [ARGS_JSON]: one control command, its result on stdout
ctl() {
        python3 - "$@" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
req = {"v": 1, "cmd": sys.argv[2]}
if len(sys.argv) > 3:
    req["args"] = json.loads(sys.argv[3])
s.sendall((json.dumps(req) + "\n").encode())
buf = b""
while not buf.endswith(b"\n"):
    d = s.recv(65536)
    if not d:
        break
    buf += d
r = json.loads(buf)
if not r.get("ok"):
    sys.exit("bench: %s: %s" % (sys.argv[2], r["error"]["message"]))
print(json.dumps(r.get("result", {})))
EOF
}

benchlib fill "$IMG" "$SIZE"

# run MODE: one vbd-sim run (MODE plain, snapshot or snapshot+read) -> its JSON
run() {
        local mode=$1 t=$W/t-$1 sock="" i status="{}"
        mkdir "$t"
        TMPDIR=$t "$SIM" bench --image "raw:$IMG" --rw randwrite --bs 4096 --iodepth 32 \
                --runtime "$T" --json >"$t/out.json" &
        local pid=$!
        if [ "$mode" != plain ]; then
                for i in $(seq 400); do
                        sock=$(ls "$t"/vbd-sim.*/vbdd-*.sock 2>/dev/null | head -1) || true
                        [ -n "$sock" ] && break
                        sleep 0.01
                done
                [ -n "$sock" ] || { echo "bench: no control socket" >&2; exit 1; }
                sleep 0.05
                ctl "$sock" snapshot-start \
                        "{\"endpoint\": \"unix:$t/snap.sock\", \"store\": \"$W/store-$mode\"}" >/dev/null
                if [ "$mode" = snapshot+read ]; then
                        t0=$(date +%s%N)
                        nbdcopy "nbd+unix:///?socket=$t/snap.sock" null: 2>"$t/nbdcopy.err" ||
                                echo "bench: nbdcopy: $(cat "$t/nbdcopy.err")" >&2
                        echo $((($(date +%s%N) - t0) / 1000000)) >"$t/copy_ms"
                fi
                # the snapshot's figures: the last status before the guest's run ends
                while kill -0 $pid 2>/dev/null; do
                        s=$(ctl "$sock" snapshot-status 2>/dev/null) && status=$s
                        sleep 0.2
                done
        fi
        wait $pid
        echo "$status" >"$t/status.json"
        cat "$t/out.json"
}

echo "vbd snapshot bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), $SIZE raw image, ${T}s per run"
base=$(run plain | benchlib json "d['iops']")
printf '%-34s %9s IOPS\n' "guest 4k randwrite QD32, alone" "$base"
for mode in snapshot snapshot+read; do
        v=$(run $mode | benchlib json "d['iops']")
        st=$W/t-$mode/status.json
        printf '%-34s %9s IOPS %6sx   saved %s MiB, %s writes held, avg %s us, max %s us%s\n' \
                "with $mode" "$v" "$(benchlib ratio "$v" "$base")" \
                "$(benchlib json "d['bytes_saved'] >> 20" <"$st")" \
                "$(benchlib json "d['writes_held']" <"$st")" \
                "$(benchlib json "d['held_avg_us']" <"$st")" \
                "$(benchlib json "d['held_max_us']" <"$st")" \
                "$([ -f "$W/t-$mode/copy_ms" ] && echo ", nbdcopy of the snapshot $(cat "$W/t-$mode/copy_ms") ms")"
done
