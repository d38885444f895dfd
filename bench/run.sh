#!/bin/sh
# vbd benchmarks: vbdd (driven by vbd-sim's simulated guest) against fio on
# the same file, and the null driver's request rate and CPU per request,
# also over 1..4 blkif queues.
# Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/run.sh [BUILD_DIR]
#   VBD_BENCH_DIR    where the 1 GiB test file goes (default /var/tmp; must
#                    support O_DIRECT, so not tmpfs)
#   VBD_BENCH_TIME   seconds per run (default 10)
#   VBD_BENCH_ROUNDS rounds of the vbdd-vs-fio table (default 2); the order
#                    alternates (fio first, then vbdd first), the table has
#                    the means
#
# vbdd vs fio: 4k QD32 randread/randwrite and 1M QD8 sequential read/write,
# all O_DIRECT on one fully written 1 GiB file, against three fio peers:
#   libaio          fio's defaults (one request per io_submit)
#   libaio-batched  --iodepth_batch_submit=16 --iodepth_batch_complete_max=32
#   io_uring        --fixedbufs --registerfiles --hipri=0, batched as above
# (fio caps the batch at --iodepth). CPU per request: fio's own usr+sys
# (its JSON) over its requests; for vbdd the daemon's (vbdd-sim's
# utime+stime from /proc/PID/stat) plus the simulated guest's (vbd-sim's
# getrusage): on 2 cores the simulated guest competes with the daemon.
# vbdd's raw image is opened with direct=on (O_DIRECT or refuse), and the
# image's page-cache residency after vbdd's runs is printed: 0 means no
# request went through the page cache.
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-10}
ROUNDS=${VBD_BENCH_ROUNDS:-2}
SIM=$B/tests/sim/front/vbd-sim
IMG=$DIR/vbd-bench.img
RES=$(mktemp "${TMPDIR:-/tmp}/vbd-bench.XXXXXX")
export VBD_SIM_VBDD=$B/tests/sim/vbdd-sim

command -v fio >/dev/null || { echo "bench: fio is needed (apt-get install fio)" >&2; exit 1; }
[ -x "$SIM" ] || { echo "bench: build first ($SIM missing)" >&2; exit 1; }
trap 'rm -f "$IMG" "$RES"' EXIT
# fill FILE SIZE, json EXPR (over stdin's JSON, d), ratio A B, fiosum,
# peers FILE: bench/benchlib.py
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }

# A fully written file, so that reads hit real blocks, not holes.
benchlib fill "$IMG" 1G
# nothing of it in the page cache (fill and fio use O_DIRECT)
python3 -c "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)" "$IMG"

FIO_BATCH="--iodepth_batch_submit=16 --iodepth_batch_complete_max=32"
fio_peer() { # peer rw bs qd -> one line of JSON (benchlib fiosum)
        case $1 in
        libaio) eng="--ioengine=libaio" ;;
        libaio-batched) eng="--ioengine=libaio $FIO_BATCH" ;;
        io_uring) eng="--ioengine=io_uring --fixedbufs --registerfiles --hipri=0 $FIO_BATCH" ;;
        esac
        # shellcheck disable=SC2086
        fio --name=b --filename="$IMG" --size=1G --rw="$2" --bs="$3" --iodepth="$4" $eng \
                --direct=1 --runtime="$T" --time_based --norandommap --randrepeat=0 \
                --output-format=json | benchlib fiosum
}

sim() { # image rw bs qd [extra vbd-sim options...] -> json
        img=$1 rw=$2 bs=$3 qd=$4
        shift 4
        "$SIM" "$@" bench --image "$img" --rw "$rw" --bs "$bs" --iodepth "$qd" --runtime "$T" --json
}

echo "vbd bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), ${T}s per run"
echo
FIOS="libaio libaio-batched io_uring"
FIOS_REV="io_uring libaio-batched libaio"
r=1
while [ "$r" -le "$ROUNDS" ]; do
        while read -r wl rw bs qd; do
                if [ $((r % 2)) = 1 ]; then sides="$FIOS vbdd"; else sides="vbdd $FIOS_REV"; fi
                for side in $sides; do
                        if [ "$side" = vbdd ]; then
                                out=$(sim "raw:$IMG,direct=on" "$rw" "$bs" "$qd")
                        else
                                out=$(fio_peer "$side" "$rw" "$bs" "$qd")
                        fi
                        echo "$wl|$side|$r|$out" >>"$RES"
                done
        done <<'WL'
4k_QD32_randread randread 4096 32
4k_QD32_randwrite randwrite 4096 32
1M_QD8_read read 1048576 8
1M_QD8_write write 1048576 8
WL
        r=$((r + 1))
done
echo "raw driver vs fio: same 1 GiB file, O_DIRECT, mean of $ROUNDS round(s), load now $(cut -d' ' -f1-3 /proc/loadavg)"
benchlib peers "$RES"
if command -v fincore >/dev/null; then
        echo "page cache pages of the image after all runs: $(fincore -n -o PAGES "$IMG" | tr -d ' ') (0: vbdd's requests all went O_DIRECT)"
fi
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
