#!/bin/bash
# Live migration into Ceph (vbd-ctl migrate --to rbd:..., through the
# bridge) against copying the same file into the same throw-away cluster
# offline (`rbd import`, what moving a stopped guest's disk costs: the whole
# copy is downtime), in the same run.  The live one runs under a simulated
# guest (vbd-sim bench, 4 KiB random read/write at QD16 on a raw file,
# vbdd-sim): its IOPS before (baseline) and while the copy runs, the time
# to ready and the cut-over's downtime.  Not a test; prints the figures and
# the load.
#
#   bench/rbd-migrate.sh [BUILD_DIR]
#   VBD_BENCH_SIZE  the disk in MiB (default 256; half of it data)
#   VBD_BENCH_TIME  seconds of the guest's baseline (default 8)
#   VBD_BENCH_MIG_ARGS  more migrate start options (e.g. "--share 100 --region 4M")
set -u
B=$(cd "${1:-build}" && pwd)
SIZE_MIB=${VBD_BENCH_SIZE:-256}
T=${VBD_BENCH_TIME:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
export VBDD=$B/vbdd VBD_SIM=$B/tests/sim/front/vbd-sim VBD_SIM_VBDD=$B/tests/sim/vbdd-sim
export VBD_CTL=$B/tools/vbd-ctl/vbd-ctl VBD_VBDD=$B/vbdd
export VBD_TEST_DIR=${VBD_BENCH_DIR:-/var/tmp}
. "$HERE/../tests/lib/functions.sh"
. "$HERE/../tests/migrate/mig-lib.sh"
. "$HERE/../tests/rbd/rbd-lib.sh"
for t in rbd ceph-mon ceph-osd; do
        command -v $t >/dev/null || { echo "bench: $t is needed" >&2; exit 1; }
done

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start_ceph
size=$((SIZE_MIB * MiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" 0 $((size / 2))

ios() {
        ctl "$gsock" stats | "$PY" -c 'import json, sys
o = json.load(sys.stdin)["ops"]
print(o["read"]["requests"] + o["write"]["requests"])'
}

# the peer: the stopped guest's disk copied in (sparse, as rbd import does)
t0=$(now_ms)
rbdc import --no-progress "$src" rbd/offline >/dev/null 2>&1 || { echo "rbd import failed"; exit 1; }
t_import=$(($(now_ms) - t0))
rbdc rm --no-progress rbd/offline >/dev/null 2>&1

start_guest g "raw:$src" --rw randrw --iodepth 16 --bs 4096 --size $((size / 2)) \
        --runtime 3600 --seed 5 || exit 1
wait_writes 1000 30 || { echo "the guest is not writing"; exit 1; }
i0=$(ios)
sleep "$T"
base=$((($(ios) - i0) / T))

spec=$(rspec live)
i0=$(ios)
t0=$(now_ms)
"$VBD_CTL" --ctl-dir "$run/g" migrate start -d 1 -n 51712 --to "$spec" --wait ${VBD_BENCH_MIG_ARGS:-} \
        >"$tmp/start.out" 2>&1 || { cat "$tmp/start.out"; exit 1; }
t_ready=$(($(now_ms) - t0))
during=$((($(ios) - i0) * 1000 / (t_ready + 1)))
"$VBD_CTL" --ctl-dir "$run/g" --json migrate cutover -d 1 -n 51712 >"$tmp/cut.json" ||
        { cat "$tmp/cut.json"; exit 1; }
down=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["downtime_ms"])' "$tmp/cut.json")
"$VBD_CTL" --ctl-dir "$run/g" migrate abort -d 1 -n 51712 >/dev/null
stop_guest g >/dev/null

echo "disk: $SIZE_MIB MiB, half data; guest: 4k randrw QD16 on raw, vbdd-sim;" \
        "migrate start ${VBD_BENCH_MIG_ARGS:-(defaults)}"
printf '%-44s %s\n' "offline rbd import (all downtime)" "$t_import ms"
printf '%-44s %s\n' "live migrate --to rbd: to ready" "$t_ready ms"
printf '%-44s %s\n' "live: cut-over downtime" "$down ms"
printf '%-44s %s\n' "live time to ready / offline import" \
        "$("$PY" -c "print('%.2f' % ($t_ready / max($t_import, 1)))")"
printf '%-44s %s\n' "guest IOPS baseline / while copying" "$base / $during"
printf '%-44s %s\n' "guest IOPS ratio (copying / baseline)" \
        "$("$PY" -c "print('%.2f' % ($during / max($base, 1)))")"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
finish >/dev/null
