#!/bin/bash
# The rbd driver: vbdd-sim on an RBD image through the ring (vbd-sim, the
# simulated guest) against fio's rbd engine and `rbd bench` on the same
# image of the same throw-away cluster (tests/rbd/ceph-cluster.sh: one mon,
# one mgr, one BlueStore OSD on a sparse file, size 1), in the same run.
# Not a test; prints the figures, the cluster's shape and the load.
#
#   bench/rbd.sh [BUILD_DIR]
#   VBD_BENCH_TIME  seconds per vbd-sim and fio run (default 8)
#
# Runs: 4 KiB random reads and random writes at queue depth 32, 1 MiB
# sequential reads and writes at queue depth 8 (1 MiB through the ring
# needs indirect segments: --max-segments 256).  fio's rbd engine and
# rbd bench run with the same block size and depth; rbd bench moves a fixed
# amount of data rather than running for a time.
set -eu
B=${1:-build}
T=${VBD_BENCH_TIME:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
CLUSTER=$HERE/../tests/rbd/ceph-cluster.sh
VBD_SIM=$B/tests/sim/front/vbd-sim
VBDD_SIM=$B/tests/sim/vbdd-sim
DIR=$(mktemp -d "${VBD_BENCH_DIR:-/var/tmp}/vbd-rbd-bench.XXXXXX")

for t in fio rbd python3; do
        command -v $t >/dev/null || { echo "bench: $t is needed" >&2; exit 1; }
done
[ -x "$VBD_SIM" ] && [ -x "$VBDD_SIM" ] || { echo "bench: build first ($VBD_SIM)" >&2; exit 1; }
fio --enghelp=rbd >/dev/null 2>&1 || { echo "bench: fio has no rbd engine" >&2; exit 1; }
cleanup() {
        "$CLUSTER" stop "$DIR/ceph" || true
        rm -rf "$DIR"
}
trap cleanup EXIT
benchlib() { python3 "$HERE/benchlib.py" "$@"; }

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
conf=$("$CLUSTER" start "$DIR/ceph")
export CEPH_CONF=$conf # fio's rbd engine reads the default conf
rbd -c "$conf" create rbd/bench --size 1G
rbd -c "$conf" bench --io-type write --io-size 4M --io-threads 8 --io-total 1G \
        --io-pattern seq rbd/bench >/dev/null # fill it: reads hit objects
spec="rbd:rbd/bench,conf=$conf"

sim() { # rw bs qd -> IOPS and MB/s
        local seg=$(($2 / 4096))
        ((seg < 1)) && seg=1
        "$VBD_SIM" --vbdd "$VBDD_SIM" --max-segments $seg bench --image "$spec" --rw "$1" \
                --bs "$2" --iodepth "$3" --runtime "$T" --json 2>/dev/null |
                benchlib json "f\"{int(d['iops'])} {d['mb_s']:.0f} {d['backend_cpu_pct']:.0f}\""
}

fio_rbd() { # rw bs qd -> IOPS and MB/s
        local dir=read
        case $1 in *write) dir=write ;; esac
        fio --name=b --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
                --rw="$1" --bs="$2" --iodepth="$3" --size=1G --runtime="$T" --time_based \
                --output-format=json 2>/dev/null | sed -n '/^{/,$p' |
                benchlib json "f\"{int(d['jobs'][0]['$dir']['iops'])} {d['jobs'][0]['$dir']['bw_bytes'] / 1e6:.0f}\""
}

rbd_bench() { # type pattern bs qd total -> IOPS and MB/s
        rbd -c "$conf" bench --io-type "$1" --io-pattern "$2" --io-size "$3" --io-threads "$4" \
                --io-total "$5" rbd/bench 2>/dev/null | python3 -c '
import re, sys
last = [l for l in sys.stdin if l.startswith("elapsed:")][-1]
ops = float(re.search(r"ops/sec: ([0-9.]+)", last).group(1))
print(int(ops), round(ops * int(sys.argv[1]) / 1e6))' "$(python3 -c "print(int('$3'.rstrip('KM')) * (1024 if '$3'.endswith('K') else 1 << 20))")"
}

printf '%-22s %20s %20s %20s\n' workload "vbd-sim (IOPS MB/s cpu%)" "fio rbd (IOPS MB/s)" "rbd bench (IOPS MB/s)"
row() { # name rw bs qd rbd-type rbd-pattern rbd-bs rbd-total
        local a b c
        a=$(sim "$2" "$3" "$4")
        b=$(fio_rbd "$2" "$3" "$4")
        c=$(rbd_bench "$5" "$6" "$7" "$4" "$8")
        printf '%-22s %20s %20s %20s\n' "$1" "$a" "$b" "$c"
}
row "4k randread QD32" randread 4096 32 read rand 4K 64M
row "4k randwrite QD32" randwrite 4096 32 write rand 4K 64M
row "1M read QD8" read 1048576 8 read seq 1M 1G
row "1M write QD8" write 1048576 8 write seq 1M 1G
echo "cluster: 1 mon, 1 mgr, 1 OSD (BlueStore on a sparse file in $(df --output=source "$DIR" | tail -1), cache 64 MiB), pool rbd size 1, 8 PGs, image 1 GiB, 4 MiB objects"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
