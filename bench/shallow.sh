#!/bin/bash
# Shallow migration against a full one, same run: a guest (vbd-sim bench,
# 4 KiB random writes at QD8 over the first VBD_BENCH_TOP MiB) on a qcow2
# clone of a VBD_BENCH_SIZE MiB base full of data migrates to a vbdd
# partner serving a clone of the same base; once with --shallow (only the
# top's regions sent) and once without (the whole disk).  Prints time to
# ready, bytes sent and their ratios, and the guest's IOPS while copying
# against its baseline.  With VBD_BENCH_LINK=1g|10g the partner sits in a
# network namespace behind a shaped veth (tests/lib/netns.sh, root).  Not
# a test.
#
#   bench/shallow.sh [BUILD_DIR]
#   VBD_BENCH_SIZE  the base, MiB (default 1024)    VBD_BENCH_TOP  MiB (default 64)
#   VBD_BENCH_LINK  none (unix socket, default), 10g or 1g
set -u
B=$(cd "${1:-build}" && pwd)
SIZE_MIB=${VBD_BENCH_SIZE:-1024}
TOP_MIB=${VBD_BENCH_TOP:-64}
LINK=${VBD_BENCH_LINK:-none}
HERE=$(cd "$(dirname "$0")" && pwd)
export VBDD=$B/vbdd VBD_SIM=$B/tests/sim/front/vbd-sim VBD_SIM_VBDD=$B/tests/sim/vbdd-sim
export VBD_CTL=$B/tools/vbd-ctl/vbd-ctl VBD_VBDD=$B/vbdd
export VBD_TEST_DIR=${VBD_BENCH_DIR:-/var/tmp}
. "$HERE/../tests/lib/functions.sh"
. "$HERE/../tests/migrate/mig-lib.sh"
[ "$LINK" = none ] || . "$HERE/../tests/lib/netns.sh"

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
size=$((SIZE_MIB * MiB))
base=$tmp/base.raw
truncate -s $size "$base"
fill "$base" 0 $size
src=$tmp/src.qcow2
qemu-img create -q -f qcow2 -b "$base" -F raw "$src"
vc() { "$VBD_CTL" --ctl-dir "$run/g" "$@"; }
ios() {
        ctl "$gsock" stats | "$PY" -c 'import json, sys
o = json.load(sys.stdin)["ops"]
print(o["read"]["requests"] + o["write"]["requests"])'
}

start_guest g "qcow2:$src" --rw randwrite --iodepth 8 --bs 4096 --size "${TOP_MIB}M" \
        --runtime 3600 --seed 5 || exit 1
wait_writes 20000 60 || { echo "the guest is not writing"; exit 1; }
i0=$(ios)
sleep 5
baseline=$((($(ios) - i0) / 5))

# one migration; prints "ms bytes_sent iops"
migrate_once() { # NAME EXTRA-ARGS...
        local name=$1 dst=$tmp/$1.qcow2 uri pid i0 t0 t1 ns=""
        shift
        qemu-img create -q -f qcow2 -b "$base" -F raw "$dst"
        if [ "$LINK" = none ]; then
                start_partner vbdd "p-$name" "qcow2:$dst" >/dev/null || return 1
                uri=$puri
                pid=$partner_pid
        else
                ns=vbs$$ # netns.sh: at most 10 characters
                netns_up "$ns" "${LINK/g/gbit}" >/dev/null || return 1
                env -u VBD_RUNTIME_DIR ip netns exec "$ns" "$VBDD" --export-only --image "qcow2:$dst" \
                        --nbd "tcp:$NS_ADDR:10809" --nbd-writable --nbd-insecure 2>>"$tmp/p-$name.log" &
                pid=$!
                netns_wait_tcp "$ns" "$NS_ADDR" 10809 30 "$pid" || return 1
                uri=nbd://$NS_ADDR:10809
        fi
        i0=$(ios)
        t0=$(now_ms)
        vc migrate start -d 1 -n 51712 --to "$uri" --wait "$@" >"$tmp/$name.start" 2>&1 ||
                { cat "$tmp/$name.start" >&2; return 1; }
        t1=$(now_ms)
        i1=$(ios)
        vc --json migrate status -d 1 -n 51712 >"$tmp/$name.st.json"
        vc migrate abort -d 1 -n 51712 >/dev/null
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null
        [ -n "$ns" ] && netns_down "$ns"
        echo "$((t1 - t0)) $(jfield "$tmp/$name.st.json" bytes_sent) $(((i1 - i0) * 1000 / (t1 - t0 + 1)))"
}
fp=$(vc layer sum "$src")
read -r t_s b_s i_s < <(migrate_once shallow --shallow="$fp") || exit 1
read -r t_f b_f i_f < <(migrate_once full) || exit 1
stop_guest g >/dev/null
"$PY" - "$SIZE_MIB" "$TOP_MIB" "$LINK" "$baseline" "$t_s" "$b_s" "$i_s" "$t_f" "$b_f" "$i_f" <<'PY'
import sys
size, top, link, base, ts, bs, is_, tf, bf, if_ = sys.argv[1:]
base, ts, bs, is_, tf, bf, if_ = map(int, (base, ts, bs, is_, tf, bf, if_))
print(f"shallow migration, {size} MiB base, guest writing {top} MiB of its top, link {link}")
print(f"guest baseline {base} IOPS")
print(f"{'':10} {'to ready':>10} {'sent MiB':>10} {'guest IOPS':>11}")
print(f"{'shallow':10} {ts/1000:9.2f}s {bs/2**20:10.1f} {is_/base if base else 0:10.2f}x")
print(f"{'full':10} {tf/1000:9.2f}s {bf/2**20:10.1f} {if_/base if base else 0:10.2f}x")
print(f"shallow/full: time {ts/tf:.3f}x, bytes {bs/bf:.3f}x")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
finish
