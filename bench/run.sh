#!/bin/sh
# vbd benchmarks: vbdd (driven by vbd-sim's simulated guest) against fio on
# the same file, and the null driver's request rate and CPU per request,
# also over 1..4 blkif queues.
# Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/run.sh [BUILD_DIR]
#   VBD_BENCH_DIR   where the 1 GiB test file goes (default /var/tmp; must
#                   support O_DIRECT, so not tmpfs)
#   VBD_BENCH_TIME  seconds per run (default 10)
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-10}
SIM=$B/tests/sim/front/vbd-sim
IMG=$DIR/vbd-bench.img
export VBD_SIM_VBDD=$B/tests/sim/vbdd-sim

command -v fio >/dev/null || { echo "bench: fio is needed (apt-get install fio)" >&2; exit 1; }
[ -x "$SIM" ] || { echo "bench: build first ($SIM missing)" >&2; exit 1; }
trap 'rm -f "$IMG"' EXIT
# fill FILE SIZE, json EXPR (over stdin's JSON, d), ratio A B: bench/benchlib.py
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }

# A fully written file, so that reads hit real blocks, not holes.
benchlib fill "$IMG" 1G

fio_run() { # rw bs qd field(iops|bw_mb)
        fio --name=b --filename="$IMG" --size=1G --rw="$1" --bs="$2" --iodepth="$3" \
                --ioengine=libaio --direct=1 --runtime="$T" --time_based --norandommap \
                --randrepeat=0 --output-format=json |
                if [ "$4" = iops ]; then
                        benchlib json "round(d['jobs'][0]['read']['iops'] + d['jobs'][0]['write']['iops'])"
                else
                        benchlib json "round((d['jobs'][0]['read']['bw'] + d['jobs'][0]['write']['bw']) / 1024)"
                fi
}

sim() { # image rw bs qd [extra vbd-sim options...] -> json
        img=$1 rw=$2 bs=$3 qd=$4
        shift 4
        "$SIM" "$@" bench --image "$img" --rw "$rw" --bs "$bs" --iodepth "$qd" --runtime "$T" --json
}

echo "vbd bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg), ${T}s per run"
echo
printf '%-24s %12s %12s %7s\n' "raw driver vs fio" "vbdd" "fio" "ratio"
for rw in randread randwrite; do
        f=$(fio_run $rw 4k 32 iops)
        v=$(sim "raw:$IMG" $rw 4096 32 | benchlib json "d['iops']")
        printf '%-24s %8s IOPS %7s IOPS %7s\n' "4k QD32 $rw" "$v" "$f" "$(benchlib ratio "$v" "$f")"
done
for rw in read write; do
        f=$(fio_run $rw 1M 8 bw)
        v=$(sim "raw:$IMG" $rw 1048576 8 | benchlib json "round(d['mb_s'])")
        printf '%-24s %8s MB/s %7s MB/s %7s\n' "1M QD8 sequential $rw" "$v" "$f" "$(benchlib ratio "$v" "$f")"
done
echo
printf '%-36s %10s %9s %10s %12s\n' "null driver, randread" "req/s" "MB/s" "p99 us" "backend ns/IO"
while read -r bs qd order segs label; do
        out=$(sim null:1G randread "$bs" "$qd" --ring-order "$order" --max-segments "$segs")
        printf '%-36s %10s %9s %10s %12s\n' "$label" \
                "$(echo "$out" | benchlib json "d['iops']")" \
                "$(echo "$out" | benchlib json "d['mb_s']")" \
                "$(echo "$out" | benchlib json "d['lat_us']['p99']")" \
                "$(echo "$out" | benchlib json "d['backend_cpu_ns_per_io']")"
done <<'CFG'
4096 32 0 11 4k QD32, 1-page ring
4096 512 4 11 4k QD512, 16-page ring
512 512 4 11 512B QD512, 16-page ring
45056 32 0 11 44k (11 segs, direct) QD32
131072 32 0 32 128k (32 segs, indirect) QD32
65536 32 0 16 64k (indirect) QD32, 1-page ring
65536 128 4 16 64k (indirect) QD128, 16-page ring
CFG
echo
# blkif multi-queue: the same 4k QD32 over 1..4 rings.  vbd-sim is one
# thread: it spreads the ios over the queues in turn, so this measures what
# extra rings cost the backend (all queues share vbdd's one loop), not what
# a guest submitting from several vCPUs would gain.
printf '%-36s %10s %9s %10s %12s\n' "null driver, multi-queue randread" "req/s" "MB/s" "p99 us" "backend ns/IO"
for q in 1 2 3 4; do
        out=$(sim null:1G randread 4096 32 --queues "$q")
        printf '%-36s %10s %9s %10s %12s\n' "4k QD32, $q queue(s) of 32 slots" \
                "$(echo "$out" | benchlib json "d['iops']")" \
                "$(echo "$out" | benchlib json "d['mb_s']")" \
                "$(echo "$out" | benchlib json "d['lat_us']['p99']")" \
                "$(echo "$out" | benchlib json "d['backend_cpu_ns_per_io']")"
done
