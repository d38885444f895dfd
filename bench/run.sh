#!/bin/sh
# vbd benchmarks: vbdd (driven by vbd-sim's simulated guest) against fio on
# the same file, in one run, printed as ratios.  Not a test: figures go to
# bench/RESULTS.md by hand.
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

# A fully written file, so that reads hit real blocks, not holes.
fio --name=fill --filename="$IMG" --size=1G --rw=write --bs=1M --ioengine=libaio \
        --direct=1 --iodepth=8 --output=/dev/null

json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

fio_iops() { # rw bs qd
        fio --name=b --filename="$IMG" --size=1G --rw="$1" --bs="$2" --iodepth="$3" \
                --ioengine=libaio --direct=1 --runtime="$T" --time_based --norandommap \
                --randrepeat=0 --output-format=json |
                json "round(d['jobs'][0]['read']['iops'] + d['jobs'][0]['write']['iops'])"
}

sim() { # image rw bs qd [ring-order] -> json
        "$SIM" bench --image "$1" --rw "$2" --bs "$3" --iodepth "$4" --ring-order "${5:-0}" \
                --runtime "$T" --json
}

echo "vbd bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${T}s per run, file in $DIR"
echo
printf '%-26s %12s %12s %8s\n' "raw driver vs fio" "vbdd IOPS" "fio IOPS" "ratio"
for rw in randread randwrite; do
        f=$(fio_iops $rw 4k 32)
        v=$(sim "raw:$IMG" $rw 4096 32 | json "d['iops']")
        printf '%-26s %12s %12s %8s\n' "4k QD32 $rw" "$v" "$f" \
                "$(python3 -c "print(f'{$v/$f:.2f}')")"
done
echo
printf '%-34s %12s %10s %10s\n' "null driver" "req/s" "MB/s" "p99 us"
for cfg in "4096 32 0" "4096 512 4" "512 512 4"; do
        set -- $cfg
        out=$(sim null:1G randread "$1" "$2" "$3")
        printf '%-34s %12s %10s %10s\n' "randread bs=$1 QD$2 ring-order $3" \
                "$(echo "$out" | json "d['iops']")" "$(echo "$out" | json "d['mb_s']")" \
                "$(echo "$out" | json "d['lat_us']['p99']")"
done
