#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Images made by qemu-img create / convert and qemu-io, read whole through
# vbdd-sim (vbd-sim dd --of), must equal 'qemu-img convert -O raw' of the
# same image: cluster sizes 512 B..2 MiB, v2 and v3, refcount widths, zero
# and compressed clusters, internal snapshots, backing chains (raw and qcow2,
# three deep, backing smaller than the overlay).
. "$(dirname "$0")/../lib/functions.sh"
requires qemu-img --version
requires qemu-io --version
: "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"

qio() { qemu-io -f qcow2 "$@" >/dev/null || fail "qemu-io $*"; }

# check_read IMAGE [SPEC-OPTIONS]: vbdd's view == qemu's view
check_read() {
        local img=$1 opts=${2:-} name
        name=$(basename "$img")
        qemu-img convert -O raw "$img" "$tmp/expect.raw" || { fail "$name: convert"; return; }
        if ! vbd_sim "qcow2:$img$opts" dd --of "$tmp/got.raw" 2>"$tmp/err"; then
                fail "$name: vbd-sim dd failed"; cat "$tmp/err" >&2; return
        fi
        cmp "$tmp/expect.raw" "$tmp/got.raw" || fail "$name$opts: vbdd reads differ from qemu"
        # the image was opened read-write and closed: still clean, unchanged content
        qemu-img check -q "$img" || fail "$name: qemu-img check after a read-write open"
}

head -c $((6 << 20)) /dev/urandom >"$tmp/rand6m"

# Cluster sizes and versions, data written by qemu-io in a pattern with holes.
for cs in 512 4096 65536 2097152; do
        for compat in 0.10 1.1; do
                img=$tmp/cs$cs-$compat.qcow2
                qemu-img create -q -f qcow2 -o cluster_size=$cs,compat=$compat "$img" 7M
                qio -c "write -P 0x5a 0 1M" -c "write -P 0xa5 3M 100K" -c "write -P 1 $((7 * 1048576 - 4096)) 4096" "$img"
                [ "$compat" = 1.1 ] && qio -c "write -z 512K 128K" "$img"
                check_read "$img"
        done
done

# Refcount widths.
for rb in 1 8 64; do
        img=$tmp/rb$rb.qcow2
        qemu-img create -q -f qcow2 -o refcount_bits=$rb "$img" 4M
        qio -c "write -P 7 1M 1M" "$img"
        check_read "$img"
done

# convert: full data, and compressed (zlib).
qemu-img convert -q -O qcow2 -f raw "$tmp/rand6m" "$tmp/conv.qcow2"
check_read "$tmp/conv.qcow2"
qemu-img convert -q -c -O qcow2 -f raw "$tmp/rand6m" "$tmp/comp.qcow2"
check_read "$tmp/comp.qcow2"
qemu-img convert -q -c -O qcow2 -o cluster_size=4096 -f raw "$tmp/rand6m" "$tmp/comp4k.qcow2"
check_read "$tmp/comp4k.qcow2" ",l2-cache=8K"
# a mix of compressed, zero and normal clusters
qemu-img create -q -f qcow2 "$tmp/mix.qcow2" 4M
qio -c "write -c -P 0x11 0 64K" -c "write -c -P 0x22 128K 64K" -c "write -P 0x33 64K 64K" \
    -c "write -z 192K 64K" -c "write -c -P 0x44 1M 64K" "$tmp/mix.qcow2"
check_read "$tmp/mix.qcow2"

# Internal snapshot: the active layer is read.
qemu-img create -q -f qcow2 "$tmp/snap.qcow2" 4M
qio -c "write -P 0x61 0 2M" "$tmp/snap.qcow2"
qemu-img snapshot -c s1 "$tmp/snap.qcow2"
qio -c "write -P 0x62 1M 64K" "$tmp/snap.qcow2"
check_read "$tmp/snap.qcow2"

# Backing chains: raw base (smaller than the overlays), qcow2 middle, qcow2 top.
head -c $((3 << 20)) /dev/urandom >"$tmp/base.raw"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw "$tmp/mid.qcow2" 5M
qio -c "write -P 0x71 1M 8K" -c "write -z 2M 4K" -c "write -c -P 0x72 4M 4K" "$tmp/mid.qcow2"
qemu-img create -q -f qcow2 -b "$tmp/mid.qcow2" -F qcow2 "$tmp/top.qcow2" 6M
qio -c "write -P 0x73 2M 512" -c "write -P 0x74 $((5 * 1048576 + 512)) 1024" "$tmp/top.qcow2"
check_read "$tmp/mid.qcow2"
check_read "$tmp/top.qcow2"
check_read "$tmp/top.qcow2" ",copy-on-read=on"
# ... and after copy-on-read the top image alone holds what was read
qemu-img rebase -q -u -b "" "$tmp/top.qcow2" 2>/dev/null
qemu-img convert -O raw "$tmp/top.qcow2" "$tmp/top-alone.raw"
qemu-img convert -O raw "$tmp/mid.qcow2" "$tmp/mid.raw"
# guest clusters read through the chain were copied up: the first MiB matches the chain
cmp -n $((1 << 20)) "$tmp/top-alone.raw" "$tmp/mid.raw" || fail "copy-on-read did not copy"

# A 4-deep qcow2 chain with no backing format recorded (probed).
qemu-img create -q -f qcow2 "$tmp/l0.qcow2" 2M
qio -c "write -P 0x10 0 512K" "$tmp/l0.qcow2"
for i in 1 2 3; do
        qemu-img create -q -f qcow2 -b "l$((i - 1)).qcow2" -F qcow2 "$tmp/l$i.qcow2" 2M
        qio -c "write -P $((0x10 + i)) $((i * 262144)) 4096" "$tmp/l$i.qcow2"
done
check_read "$tmp/l3.qcow2"

finish
