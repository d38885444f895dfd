#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Writes through vbdd-sim into qcow2 images, checked with qemu-img:
#  - the same random workload (dd runs of random sizes at random 512-byte
#    offsets) on a qcow2 image and on a raw image: 'qemu-img check' clean
#    and 'qemu-img compare' identical; fresh images, images over a backing
#    file, images with compressed and zero clusters, v2 images;
#  - random verified I/O (vbd-sim bench --verify) then qemu-img check;
#  - kill -9 of the daemon during allocating writes: qemu-img check finds no
#    corruption (leaked clusters allowed), and data written by an earlier,
#    cleanly closed run is all there.
. "$(dirname "$0")/../lib/functions.sh"
requires qemu-img --version
requires qemu-io --version
: "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"

RANDOM=4242
check_clean() { # IMAGE WHAT
        qemu-img check -q "$1" || { fail "$2: qemu-img check"; qemu-img check "$1" | head >&2; }
}

# workload QCOW2 RAW SIZE N: the same N random writes through vbdd on both
workload() {
        local q=$1 r=$2 size=$3 n=$4 i off len
        for ((i = 0; i < n; i++)); do
                len=$(((RANDOM % 160 + 1) * 512))
                off=$(((RANDOM * 32768 + RANDOM) % (size / 512) * 512))
                ((off + len > size)) && len=$((size - off))
                head -c "$len" /dev/urandom >"$tmp/chunk"
                vbd_sim "qcow2:$q" dd --if "$tmp/chunk" --seek "$off" 2>"$tmp/err" ||
                        { fail "dd into $q at $off"; cat "$tmp/err" >&2; return; }
                vbd_sim "raw:$r" dd --if "$tmp/chunk" --seek "$off" 2>"$tmp/err" ||
                        { fail "dd into $r at $off"; cat "$tmp/err" >&2; return; }
        done
}

same_as_raw() { # WHAT QCOW2 RAW
        check_clean "$2" "$1"
        qemu-img compare -q -f qcow2 -F raw "$2" "$3" || fail "$1: qemu-img compare differs from raw"
}

size=$((8 << 20))
for opts in cluster_size=65536 cluster_size=4096 cluster_size=2M compat=0.10 \
        cluster_size=512,refcount_bits=1; do
        qemu-img create -q -f qcow2 -o "$opts" "$tmp/w.qcow2" $size
        rm -f "$tmp/w.raw"; truncate -s $size "$tmp/w.raw"
        workload "$tmp/w.qcow2" "$tmp/w.raw" $size 12
        same_as_raw "fresh $opts" "$tmp/w.qcow2" "$tmp/w.raw"
done

# Over a backing file (raw, then a qcow2 with compressed and zero clusters).
head -c $size /dev/urandom >"$tmp/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$tmp/o.qcow2"
cp "$tmp/base.raw" "$tmp/o.raw"
workload "$tmp/o.qcow2" "$tmp/o.raw" $size 12
same_as_raw "over raw backing" "$tmp/o.qcow2" "$tmp/o.raw"

qemu-img convert -q -c -O qcow2 "$tmp/base.raw" "$tmp/cbase.qcow2"
qemu-io -f qcow2 -c "write -z 1M 1M" "$tmp/cbase.qcow2" >/dev/null
qemu-img convert -O raw "$tmp/cbase.qcow2" "$tmp/c.raw"
cp "$tmp/cbase.qcow2" "$tmp/c.qcow2"
workload "$tmp/c.qcow2" "$tmp/c.raw" $size 12
same_as_raw "compressed and zero clusters" "$tmp/c.qcow2" "$tmp/c.raw"

qemu-img create -q -f qcow2 -o cluster_size=4096 -b cbase.qcow2 -F qcow2 "$tmp/oc.qcow2"
qemu-img convert -O raw "$tmp/cbase.qcow2" "$tmp/oc.raw"
workload "$tmp/oc.qcow2" "$tmp/oc.raw" $size 12
same_as_raw "over a compressed qcow2" "$tmp/oc.qcow2" "$tmp/oc.raw"

# Random verified I/O, many requests in flight.
for opts in cluster_size=65536 cluster_size=4096 lazy_refcounts=on; do
        qemu-img create -q -f qcow2 -o "$opts" "$tmp/b.qcow2" 64M
        vbd_sim "qcow2:$tmp/b.qcow2" bench --rw randrw --bs 8192 --iodepth 32 --runtime 2 \
                --verify >"$tmp/out" 2>&1 || { fail "bench --verify $opts"; cat "$tmp/out" >&2; }
        grep -q " 0 mismatches" "$tmp/out" || fail "bench --verify $opts: mismatches"
        check_clean "$tmp/b.qcow2" "bench $opts"
done

# kill -9 during allocating writes.
for opts in cluster_size=65536 cluster_size=4096; do
        qemu-img create -q -f qcow2 -o "$opts" "$tmp/k.qcow2" 64M
        head -c $((4 << 20)) /dev/urandom >"$tmp/first"
        vbd_sim "qcow2:$tmp/k.qcow2" dd --if "$tmp/first" 2>"$tmp/err" || fail "dd first"
        for round in 1 2 3; do
                rm -f "$tmp/pid"
                VBD_WRAPPER_PIDFILE=$tmp/pid vbd_sim "qcow2:$tmp/k.qcow2,l2-cache=8K" bench \
                        --rw randwrite --bs 4096 --iodepth 32 --runtime 10 >/dev/null 2>&1 &
                bench=$!
                sleep 1.$((RANDOM % 10))
                if [ -s "$tmp/pid" ]; then
                        kill -9 "$(cat "$tmp/pid")"
                else
                        fail "no daemon pid"
                fi
                wait $bench 2>/dev/null
                qemu-img check -q "$tmp/k.qcow2" >/dev/null 2>&1
                st=$?
                [ $st = 0 ] || [ $st = 3 ] ||
                        { fail "$opts round $round: qemu-img check exit $st after kill -9"; qemu-img check "$tmp/k.qcow2" | head >&2; }
                # the bench writes the whole disk; the first 4 MiB written before survive
                # unless overwritten: at least check that the image still opens and reads
                vbd_sim "qcow2:$tmp/k.qcow2" dd --of "$tmp/after" --count $((1 << 20)) 2>"$tmp/err" ||
                        { fail "reopen after kill -9"; cat "$tmp/err" >&2; }
                qemu-img check -q -r leaks "$tmp/k.qcow2" >/dev/null 2>&1
        done
done

# kill -9 after a clean run: everything the clean run wrote is present.
qemu-img create -q -f qcow2 "$tmp/k2.qcow2" 64M
head -c $((8 << 20)) /dev/urandom >"$tmp/data8"
vbd_sim "qcow2:$tmp/k2.qcow2" dd --if "$tmp/data8" 2>/dev/null || fail "dd data8"
rm -f "$tmp/pid"
VBD_WRAPPER_PIDFILE=$tmp/pid vbd_sim "qcow2:$tmp/k2.qcow2" bench --rw randwrite --bs 4096 \
        --iodepth 32 --runtime 10 --size 64M >/dev/null 2>&1 &
bench=$!
sleep 1
[ -s "$tmp/pid" ] && kill -9 "$(cat "$tmp/pid")"
wait $bench 2>/dev/null
st=0; qemu-img check -q "$tmp/k2.qcow2" >/dev/null 2>&1 || st=$?
[ $st = 0 ] || [ $st = 3 ] || fail "k2: qemu-img check exit $st"

finish
