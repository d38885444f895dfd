#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# qcow2 driver benchmark: vbdd (driven by vbd-sim's simulated guest through
# the blkif ring) against 'qemu-img bench -t none -i native' on the same
# image with the same pattern: 4 KiB requests, queue depth 32, sequential
# (qemu-img bench has no random mode):
#   read        a fully allocated image
#   alloc-64k   writes into a fresh image, 64 KiB clusters (1 in 16 allocates)
#   alloc-4k    writes into a fresh image, 4 KiB clusters (every write allocates)
#   overwrite   writes over a fully allocated image
# The two tools run back to back and alternate (ROUNDS times) because the
# machine may be busy; every figure is printed, then the medians and ratio.
# Not a test: figures go to bench/RESULTS.md by hand.
#
#   bench/qcow2.sh [BUILD_DIR]
#   VBD_BENCH_DIR    where the images go (default /var/tmp; not tmpfs)
#   VBD_BENCH_TIME   seconds per vbd-sim run (default 5)
#   VBD_BENCH_ROUNDS rounds per pattern (default 3)
#   VBD_BENCH_PATTERNS which patterns (default: read alloc-64k alloc-4k overwrite)
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-5}
ROUNDS=${VBD_BENCH_ROUNDS:-3}
export VBD_SIM=$B/tests/sim/front/vbd-sim
export VBD_SIM_VBDD=$PWD/$B/tests/sim/vbdd-sim
export VBD_TEST_DIR=$DIR
command -v qemu-img >/dev/null || { echo "bench: qemu-img is needed (qemu-utils)" >&2; exit 1; }
[ -x "$VBD_SIM" ] || { echo "bench: build first ($VBD_SIM missing)" >&2; exit 1; }
. "$(dirname "$0")/../tests/lib/functions.sh"
IMG=$tmp/bench.qcow2
SIZE=4G
COUNT=${VBD_BENCH_COUNT:-200000} # qemu-img bench requests for read/overwrite (800 MiB)

# fill FILE SIZE, json EXPR (over stdin's JSON, d), ratio A B: bench/benchlib.py
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

prepare() { # pattern
        rm -f "$IMG"
        case $1 in
        alloc-4k) qemu-img create -q -f qcow2 -o cluster_size=4096 "$IMG" $SIZE ;;
        *) qemu-img create -q -f qcow2 "$IMG" $SIZE ;;
        esac
        case $1 in
        read | overwrite) # fully allocate the first GiB
                qemu-img bench -t none -i native -f qcow2 -w -s 1M -d 8 -c 1024 "$IMG" \
                        >/dev/null ;;
        esac
}

qemu_iops() { # pattern count
        local w="" out secs
        [ "$1" != read ] && w=-w
        out=$(qemu-img bench -t none -i native -f qcow2 $w -s 4096 -d 32 -c "$2" "$IMG")
        secs=$(echo "$out" | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
        python3 -c "print(round($2 / $secs))"
}

vbd_iops() { # pattern
        local rw=write region=$SIZE
        [ "$1" = read ] && { rw=read; region=1G; }
        [ "$1" = overwrite ] && region=1G
        vbd_sim "qcow2:$IMG" bench --rw $rw --bs 4096 --iodepth 32 --runtime "$T" \
                --size $region --json | benchlib json "'%d %d' % (round(d['iops']), d['ios'])"
}

echo "qcow2 bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "4 KiB sequential, QD32; vbd-sim ${T}s per run, qemu-img bench as many requests (alloc-*) or $COUNT; $ROUNDS rounds"
printf '%-10s %-30s %-30s %8s\n' pattern "vbdd IOPS (each round)" "qemu-img IOPS (each round)" ratio
for p in ${VBD_BENCH_PATTERNS:-read alloc-64k alloc-4k overwrite}; do
        v=() q=()
        for ((r = 0; r < ROUNDS; r++)); do
                prepare $p
                read -r iops ios < <(vbd_iops $p)
                v+=("$iops")
                # The allocating patterns: qemu-img writes as many requests as
                # vbdd did (the same amount of fresh space); the others stay
                # within the allocated first GiB.
                case $p in alloc-*) n=$ios ;; *) n=$COUNT ;; esac
                prepare $p
                q+=("$(qemu_iops $p "$n")")
        done
        mv=$(median "${v[@]}")
        mq=$(median "${q[@]}")
        printf '%-10s %-30s %-30s %8s\n' $p "${v[*]}" "${q[*]}" "$(benchlib ratio "$mv" "$mq")"
done
rm -f "$IMG"
