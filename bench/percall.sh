#!/bin/sh
# Kernel crossings and instructions per request on the blkif data path,
# counted rather than timed, so that the machine's load moves them little.
# Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/percall.sh [BUILD_DIR]
#   VBD_BENCH_DIR    where the 1 GiB test file goes (default /var/tmp; must
#                    support O_DIRECT)
#   VBD_BENCH_TIME   seconds per run (default 5)
#   VBD_PERCALL_CG   1: also count user-space instructions per request with
#                    callgrind (two runs per workload, 2 s and 2+T s, the
#                    difference divided by the difference in requests, so
#                    that start-up and teardown cancel out)
#
# Syscalls: perf stat counting the syscall tracepoints (in-kernel counters,
# nothing recorded per event) of vbdd-sim for its whole life, divided by
# the requests vbd-sim completed; start-up adds a few hundred syscalls,
# under 0.01 per request at these run lengths.  The same counters over
# fio's batched libaio peer on the same file (bench/run.sh's libaio-batched)
# give the reference.  vbdd's counts include the simulated Xen's calls made
# in the daemon's process: sendto (event channel doorbell), recvfrom
# (xenevtchn_pending), futex (the simulator's shared mutex); grant copies
# are memcpy there, no syscall.
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-5}
SIM=$B/tests/sim/front/vbd-sim
VBDD=$(cd "$(dirname "$B/tests/sim/vbdd-sim")" && pwd)/vbdd-sim
IMG=$DIR/vbd-percall.img
W=$(mktemp -d "${TMPDIR:-/tmp}/vbd-percall.XXXXXX")
trap 'rm -rf "$W" "$IMG"' EXIT

for p in perf fio python3; do
        command -v $p >/dev/null || { echo "percall: $p is needed" >&2; exit 1; }
done
[ -x "$SIM" ] || { echo "percall: build first ($SIM missing)" >&2; exit 1; }
perf stat -e syscalls:sys_enter_read true >/dev/null 2>&1 ||
        { echo "percall: perf cannot count syscall tracepoints (root? tracefs?)" >&2; exit 1; }
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }

SYSCALLS="io_submit io_getevents read write epoll_wait sendto recvfrom futex ioctl"
EV=raw_syscalls:sys_enter
for s in $SYSCALLS; do EV="$EV,syscalls:sys_enter_$s"; done

# vbdd-sim under perf stat: perf attaches to the wrapper's pid, which then
# execs vbdd-sim (so vbd-sim's pid, signals and CPU figures stay right).
cat >"$W/perf-vbdd" <<EOF
#!/bin/sh
perf stat -x, -o "\$PERCALL_OUT.tmp" -e "$EV" -p \$\$ 2>/dev/null &
p=\$!
# wait until perf has its counters open
while ! ls -l /proc/\$p/fd 2>/dev/null | grep -q perf_event; do sleep 0.05; done
( while kill -0 \$p 2>/dev/null; do sleep 0.1; done; mv "\$PERCALL_OUT.tmp" "\$PERCALL_OUT" ) &
exec "$VBDD" "\$@"
EOF
cat >"$W/cg-vbdd" <<EOF
#!/bin/sh
exec valgrind -q --tool=callgrind --callgrind-out-file="\$PERCALL_OUT" "$VBDD" "\$@"
EOF
chmod +x "$W/perf-vbdd" "$W/cg-vbdd"

waitfile() { # file: perf writes it after the counters' teardown
        i=0
        while [ ! -s "$1" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
        [ -s "$1" ] || { echo "percall: no counts in $1" >&2; exit 1; }
}

# counts FILE IOS -> "total name=n ..." per request
per_req() {
        python3 - "$1" "$2" <<'PY'
import sys
ios = int(sys.argv[2])
c = {}
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        c[f[2].split(":")[-1].replace("sys_enter_", "")] = int(f[0])
tot = c.pop("sys_enter", 0)
parts = ["%s %.3f" % (k, v / ios) for k, v in c.items() if v / ios >= 0.0005]
# per wake-up (vbdd: epoll_wait) or per submission (fio: io_submit): how
# much each round costs, whatever the batching the load gave
rounds = c.get("epoll_wait") or c.get("io_submit") or 1
print("%.3f  %5.1f req/round %4.1f calls/round  (%s)" %
      (tot / ios, ios / rounds, tot / rounds, ", ".join(parts)))
PY
}

sim() { # vbdd-wrapper out image rw runtime [vbd-sim options] -> ios
        w=$1 o=$2 img=$3 rw=$4 t=$5
        shift 5
        PERCALL_OUT=$o VBD_SIM_VBDD=$w "$SIM" --stall-timeout 120 "$@" bench --image "$img" \
                --rw "$rw" --bs 4096 --iodepth 32 --runtime "$t" --json | benchlib json "d['ios']"
}

benchlib fill "$IMG" 1G
echo "vbd percall: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), ${T}s per run"
echo "4k QD32: syscalls per request; requests and syscalls per round (vbdd: per epoll_wait,"
echo "fio: per io_submit); syscalls per request by type"
# shellcheck disable=SC2086 # the workloads are split on purpose
for wl in "null:1G randread" "null:1G randwrite" "null:1G randread --queues 4" \
        "raw:$IMG,direct=on randread" "raw:$IMG,direct=on randwrite"; do
        set -- $wl
        img=$1 rw=$2
        shift 2
        rm -f "$W/out"
        ios=$(sim "$W/perf-vbdd" "$W/out" "$img" "$rw" "$T" "$@")
        waitfile "$W/out"
        printf "%-10s %-10s %8s req  %s\n" "vbdd" "${img%%:*} $rw $*" "$ios" \
                "$(per_req "$W/out" "$ios")"
done
for rw in randread randwrite; do
        perf stat -x, -o "$W/fio.out" -e "$EV" -- fio --name=b --filename="$IMG" --size=1G \
                --rw=$rw --bs=4096 --iodepth=32 --ioengine=libaio --iodepth_batch_submit=16 \
                --iodepth_batch_complete_max=32 --direct=1 --runtime="$T" --time_based \
                --norandommap --randrepeat=0 --output-format=json >"$W/fio.json"
        ios=$(benchlib fiosum <"$W/fio.json" | benchlib json "d['ios']")
        printf '%-10s %-10s %8s req  %s\n' "fio" "raw $rw" "$ios" "$(per_req "$W/fio.out" "$ios")"
done

[ "${VBD_PERCALL_CG:-0}" = 1 ] || exit 0
command -v valgrind >/dev/null || { echo "percall: valgrind is needed for VBD_PERCALL_CG" >&2; exit 1; }
echo
echo "user-space instructions per request (callgrind, vbdd-sim only, start-up cancelled)"
for wl in "null:1G randread" "null:1G randwrite" "raw:$IMG,direct=on randread" \
        "raw:$IMG,direct=on randwrite"; do
        set -- $wl
        rm -f "$W"/cg.*
        ios1=$(sim "$W/cg-vbdd" "$W/cg.1" "$1" "$2" 2)
        ios2=$(sim "$W/cg-vbdd" "$W/cg.2" "$1" "$2" $((2 + T)))
        waitfile "$W/cg.1"
        waitfile "$W/cg.2"
        python3 - "$W/cg.1" "$ios1" "$W/cg.2" "$ios2" "${1%%:*} $2" <<'PY'
import sys
def ir(path):
    for line in open(path):
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit("no totals in " + path)
a, b = ir(sys.argv[1]), ir(sys.argv[3])
n1, n2 = int(sys.argv[2]), int(sys.argv[4])
print("%-10s %-20s %6.0f instructions/request (%d and %d requests)" %
      ("vbdd", sys.argv[5], (b - a) / max(n2 - n1, 1), n1, n2))
PY
done
