#!/bin/sh
# The change tracker's write-path cost: a simulated guest's 4k QD32 random
# writes through the ring on the same 1 GiB file, raw vs cbt:raw, same run,
# alternated.  "fresh map" runs start from an empty map, so every block's
# first write in the run waits for its mark to be committed (the worst case:
# at 4K granularity nearly every write is a first write); "marked" runs come
# after a full pass, so every block is marked already (steady state between
# checkpoints).  Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/cbt.sh [BUILD_DIR]
#   VBD_BENCH_DIR   where the 1 GiB file goes (default /var/tmp; not tmpfs)
#   VBD_BENCH_TIME  seconds per run (default 5)
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-5}
SIM=$B/tests/sim/front/vbd-sim
IMG=$DIR/vbd-bench-cbt.img
MAP=$DIR/vbd-bench-cbt.map
export VBD_SIM_VBDD=$B/tests/sim/vbdd-sim

[ -x "$SIM" ] || { echo "bench: build first ($SIM missing)" >&2; exit 1; }
trap 'rm -f "$IMG" "$MAP"' EXIT
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }
benchlib fill "$IMG" 1G

run() { # spec -> "iops p99"
        "$SIM" bench --image "$1" --rw randwrite --bs 4096 --iodepth 32 --runtime "$T" --json |
                benchlib json "'%d %d %d' % (d['iops'], d['lat_us']['p99'], d['backend_cpu_ns_per_io'])"
}

echo "vbd cbt bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), ${T}s per run"
printf '%-34s %9s %9s %12s %7s\n' "4k QD32 randwrite" "IOPS" "p99 us" "backend ns/IO" "ratio"
for pass in 1 2; do
        set -- $(run "raw:$IMG")
        raw=$1
        printf '%-34s %9s %9s %12s %7s\n' "raw" "$1" "$2" "$3" "1.00"
        for g in 64K 4K; do
                rm -f "$MAP"
                set -- $(run "cbt:raw:$IMG,cbt.map=$MAP,cbt.granularity=$g")
                printf '%-34s %9s %9s %12s %7s\n' "cbt $g, fresh map" "$1" "$2" "$3" \
                        "$(benchlib ratio "$1" "$raw")"
                # mark every block, then measure the steady state
                "$SIM" bench --image "cbt:raw:$IMG,cbt.map=$MAP,cbt.granularity=$g" --rw write \
                        --bs 1048576 --iodepth 8 --runtime 3 --size 1G --json >/dev/null 2>&1 || true
                set -- $(run "cbt:raw:$IMG,cbt.map=$MAP,cbt.granularity=$g")
                printf '%-34s %9s %9s %12s %7s\n' "cbt $g, every block marked" "$1" "$2" "$3" \
                        "$(benchlib ratio "$1" "$raw")"
        done
done
