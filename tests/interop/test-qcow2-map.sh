#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The qcow2 driver's block status against qemu's: each image, made by
# qemu-img / qemu-io, is exported with vbdd --export-only and its map
# (nbdinfo --map, base:allocation) must equal 'qemu-img map --output=json'
# translated to NBD flags:
#   "data": true                          -> 0 (data)
#   "data": false, "zero": true, offset   -> 2 (zero: a zero cluster that keeps
#                                               its host cluster)
#   "data": false, "zero": true, no offset-> 3 (hole,zero)
# (a raw layer's holes carry an offset in qemu's map; they are hole,zero).
# Images: holes and data at cluster sizes 512 B..2 MiB, v2 and v3; zero
# clusters (write -z over nothing, over data, with -u); discarded clusters;
# compressed clusters; backing chains (data only in the backing file, zero
# and discarded clusters over backing data, overlay larger than the backing
# file, raw and qcow2 bases, three deep); many L2 tables through a tiny L2
# cache (answers cut short by the per-call bound).  With libnbd's python:
# random sub-range queries, with and without REQ_ONE, each extent checked
# against the expected map.  A writable export changed by qemu-io over NBD is
# mapped live, then compared with qemu-img map after it closed.  Corrupt L2
# entries give an error for block status, never a crash.
. "$(dirname "$0")/../lib/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires nbdinfo --version
requires python3 --version
: "${VBDD:?}"
. "$(dirname "$0")/nbd-lib.sh"
poke="python3 $(dirname "$0")/qcow2-poke.py"

qio() { qemu-io -f qcow2 "$@" >/dev/null || fail "qemu-io $*"; }

# merge: "start length flags" lines, adjacent ones with equal flags joined
merge() {
        awk 'NF >= 3 {
                if (n && $3 == f && $1 == s + l) { l += $2; next }
                if (n) print s, l, f
                s = $1; l = $2; f = $3; n = 1
        } END { if (n) print s, l, f }'
}

# expect_map IMAGE [RAW_DEPTH]: qemu's map as merged "start length flags"
expect_map() {
        qemu-img map --output=json "$1" | python3 -c '
import json, sys
raw = int(sys.argv[1])
for e in json.load(sys.stdin):
    if e["data"]:
        f = 0
    elif e["zero"]:
        f = 2 if "offset" in e and e["depth"] != raw else 3
    else:
        sys.exit("unexpected map entry %r" % e)
    print(e["start"], e["length"], f)' "${2:--1}" | merge
}

# random_queries URI MAPFILE: sub-range block status queries checked against MAPFILE
random_queries() {
        "$PY_NBD" - "$1" "$2" <<'PY'
import bisect, nbd, random, sys
uri, mapfile = sys.argv[1], sys.argv[2]
exp = [tuple(map(int, l.split())) for l in open(mapfile)]
starts = [e[0] for e in exp]
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()
rng = random.Random(size)
for i in range(300):
    off = rng.randrange(size // 512) * 512
    n = min(size - off, 512 * rng.randrange(1, 1 << rng.choice((1, 4, 10, 16))))
    n = min(n, (1 << 32) - 512)
    one = rng.random() < 0.3
    got = []
    def cb(ctx, o, entries, err):
        if ctx == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))
    h.block_status(n, off, cb, nbd.CMD_FLAG_REQ_ONE if one else 0)
    if not got or (one and len(got) != 1):
        sys.exit("query %d+%d%s: %d extents" % (off, n, " REQ_ONE" if one else "", len(got)))
    pos = off
    for ln, fl in got:
        k = bisect.bisect_right(starts, pos) - 1
        s, l, f = exp[k]
        if ln == 0 or fl != f or pos + ln > s + l:
            sys.exit("query %d+%d: extent %d+%d flags %d, expected %d+%d flags %d"
                     % (off, n, pos, ln, fl, s, l, f))
        pos += ln
    if pos > off + n:
        sys.exit("query %d+%d: extents cover %d bytes" % (off, n, pos - off))
h.shutdown()
PY
}

n_sock=0
# check_map IMAGE [SPEC-OPTIONS] [RAW_DEPTH]: vbdd's map == qemu's map
check_map() {
        local img=$1 opts=${2:-} name sock
        name=$(basename "$img")$opts
        expect_map "$img" "${3:-}" >"$tmp/expect" || { fail "$name: qemu-img map"; return; }
        n_sock=$((n_sock + 1))
        sock=$sockdir/m$n_sock.sock
        start_export "$sock" --image "qcow2:$img$opts" || return
        if ! nbdinfo --map "$(uri "$sock")" >"$tmp/map" 2>"$tmp/err"; then
                fail "$name: nbdinfo --map failed"
                cat "$tmp/err" >&2
        fi
        merge <"$tmp/map" >"$tmp/got"
        diff -u "$tmp/expect" "$tmp/got" >&2 || fail "$name: block status differs from qemu-img map"
        if [ -n "$PY_NBD" ]; then
                random_queries "$(uri "$sock")" "$tmp/expect" || fail "$name: random queries"
        fi
        stop_export
}

[ -n "$PY_NBD" ] || echo "$0: libnbd's python module missing: random queries skipped" >&2

# Holes, data, zero clusters; cluster sizes and versions.
for cs in 512 4096 65536 2097152; do
        for compat in 0.10 1.1; do
                img=$tmp/cs$cs-$compat.qcow2
                qemu-img create -q -f qcow2 -o cluster_size=$cs,compat=$compat "$img" 7M
                qio -c "write -P 0x5a 0 1M" -c "write -P 0xa5 3M 100K" \
                    -c "write -P 1 $((7 * 1048576 - 4096)) 4096" "$img"
                [ "$compat" = 1.1 ] && qio -c "write -z 512K 128K" -c "write -z 5M 64K" "$img"
                check_map "$img"
        done
done

# Zero clusters: over nothing, over data (keeps its host cluster), with unmap;
# discarded clusters (v3: zero flag or unallocated; v2: unallocated).
for compat in 0.10 1.1; do
        img=$tmp/zero-$compat.qcow2
        qemu-img create -q -f qcow2 -o compat=$compat "$img" 8M
        qio -c "write -P 1 0 2M" -c "write -P 2 4M 1M" "$img"
        if [ "$compat" = 1.1 ]; then
                qio -c "write -z 64K 128K" -c "write -z -u 512K 64K" -c "write -z 3M 192K" "$img"
        fi
        qio -c "discard 1M 256K" -c "discard 4M 64K" -c "discard 6M 64K" "$img"
        check_map "$img"
done

# Compressed clusters, alone and mixed with normal, zero and unallocated ones.
head -c $((6 << 20)) /dev/urandom >"$tmp/rand6m"
qemu-img convert -q -c -O qcow2 -f raw "$tmp/rand6m" "$tmp/comp.qcow2"
check_map "$tmp/comp.qcow2"
qemu-img create -q -f qcow2 "$tmp/mix.qcow2" 4M
qio -c "write -c -P 0x11 0 64K" -c "write -c -P 0x22 128K 64K" -c "write -P 0x33 64K 64K" \
    -c "write -z 192K 64K" -c "write -c -P 0x44 1M 64K" -c "write -z 1088K 64K" "$tmp/mix.qcow2"
check_map "$tmp/mix.qcow2"
# a fully allocated image from convert, and one with zero runs in it
qemu-img convert -q -O qcow2 -f raw "$tmp/rand6m" "$tmp/conv.qcow2"
check_map "$tmp/conv.qcow2"

# Backing chains.  qcow2 base with data in the first 2 MiB; the overlay (larger)
# has data of its own, zero and discarded clusters over the base's data.
qemu-img create -q -f qcow2 "$tmp/base.qcow2" 4M
qio -c "write -P 0x61 0 2M" -c "write -z 3M 64K" -c "write -P 0x62 3200K 64K" \
    -c "write -z 3200K 64K" "$tmp/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$tmp/over.qcow2" 6M
check_map "$tmp/over.qcow2" # data only in the backing file
qio -c "write -P 0x63 512K 64K" -c "write -z 1M 128K" -c "discard 1536K 64K" \
    -c "write -P 0x64 5M 64K" -c "write -z 5248K 64K" "$tmp/over.qcow2"
check_map "$tmp/over.qcow2"
check_map "$tmp/over.qcow2" ",l2-cache=1K"
# raw base (smaller, sparse), qcow2 middle with 4K clusters, qcow2 top
truncate -s 3M "$tmp/base.raw"
head -c $((512 << 10)) /dev/urandom | dd of="$tmp/base.raw" bs=1M seek=1 conv=notrunc status=none
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.raw -F raw "$tmp/mid.qcow2" 5M
qio -c "write -P 0x71 1M 8K" -c "write -z 2M 4K" -c "write -c -P 0x72 4M 4K" \
    -c "write -z 1200K 8K" "$tmp/mid.qcow2"
check_map "$tmp/mid.qcow2" "" 1
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$tmp/top.qcow2" 6M
qio -c "write -P 0x73 2M 512" -c "write -P 0x74 $((5 * 1048576 + 512)) 1024" \
    -c "write -z 1056K 64K" "$tmp/top.qcow2"
check_map "$tmp/top.qcow2" "" 2

# Many L2 tables (512 B clusters: one table maps 32 KiB) through a cache of four:
# every call reads tables from disk and stops at its bound.
img=$tmp/many.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 "$img" 32M
cmds=()
for i in $(seq 0 97); do
        cmds+=(-c "write -P $i $((i * 333 * 1024)) $(((i % 7 + 1) * 1024))")
        [ $((i % 3)) = 0 ] && cmds+=(-c "write -z $((i * 333 * 1024 + 65536)) 4096")
done
qio "${cmds[@]}" "$img"
check_map "$img" ",l2-cache=2K"
check_map "$img"

# A writable export changed over NBD: the live map (dirty L2 tables, nothing
# flushed yet) must match qemu-img map of the image after a clean close.
img=$tmp/live.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$img" 6M
qio -c "write -P 0x21 4M 256K" "$img"
sock=$sockdir/live.sock
start_export "$sock" --image "qcow2:$img" --nbd-writable || finish
qemu-io -f raw -c "write -P 0x22 256K 128K" -c "write -z 1M 64K" -c "write -z -u 1200K 64K" \
        -c "discard 4M 64K" -c "write -P 0x23 5M 4K" -c "write -z 4160K 64K" "$(uri "$sock")" \
        >/dev/null || fail "qemu-io over NBD"
nbdinfo --map "$(uri "$sock")" | merge >"$tmp/live-got" || fail "live nbdinfo --map"
stop_export
expect_map "$img" >"$tmp/live-expect"
diff -u "$tmp/live-expect" "$tmp/live-got" >&2 || fail "live map differs from qemu-img map after close"
qemu-img check -q "$img" || fail "live.qcow2: qemu-img check"

# Corrupt L2 entries: block status fails with an error, the daemon lives on.
qemu-img create -q -f qcow2 "$tmp/a.qcow2" 4M
qio -c "write -P 0x42 0 256K" "$tmp/a.qcow2"
l2=$($poke "$tmp/a.qcow2" get l2_offset)
e0=$($poke "$tmp/a.qcow2" get l2e0)
corrupt_case() { # WHAT L2-INDEX VALUE LOG-PATTERN
        local what=$1 idx=$2 val=$3 pat=$4 sock=$sockdir/bad.sock u lines
        cp "$tmp/a.qcow2" "$tmp/b.qcow2"
        $poke "$tmp/b.qcow2" set $((l2 + 8 * idx)) 8 "$val"
        lines=$(cat "$tmp/vbdd.log" 2>/dev/null | wc -l)
        start_export "$sock" --image "qcow2:$tmp/b.qcow2" || return
        u=$(uri "$sock")
        nbdinfo --map "$u" >"$tmp/map" 2>"$tmp/err" && fail "$what: nbdinfo --map succeeded"
        [ "$(nbdinfo --size "$u")" = $((4 << 20)) ] || fail "$what: export gone after block status"
        tail -n +$((lines + 1)) "$tmp/vbdd.log" | grep -q -- "$pat" || fail "$what: no '$pat' in the log"
        if [ -n "$PY_NBD" ]; then
                "$PY_NBD" - "$u" "$idx" <<'PY' || fail "$what: block status around the bad entry"
import nbd, sys
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
bad = int(sys.argv[2]) * 65536
got = []
h.block_status(65536, (bad + 65536) % (4 << 20), lambda c, o, e, err: got.extend(e))
try:
    h.block_status(65536, bad, lambda c, o, e, err: 0)
    sys.exit("block status of the bad cluster succeeded")
except nbd.Error as e:
    pass
if bad:
    got = []
    h.block_status(bad + 65536, 0, lambda c, o, e, err: got.extend(e))
    if not got or sum(got[0::2]) > bad or got[1] != 0:
        sys.exit("extents before the bad cluster: %r" % got)
h.shutdown()
PY
        fi
        stop_export
}
corrupt_case "L2 entry past EOF" 0 0x80000000ff000000 "past the end of the file"
corrupt_case "misaligned L2 entry" 2 $((e0 + 2 * 65536 + 512)) "unaligned cluster offset"
corrupt_case "reserved bits" 1 $((e0 + 65536 + 2)) "reserved bits"
corrupt_case "compressed entry past EOF" 3 $((0x4000000000000000 | 0x7f000000)) "compressed cluster"
# ... and in the backing file, seen through an overlay
cp "$tmp/a.qcow2" "$tmp/bb.qcow2"
$poke "$tmp/bb.qcow2" set "$l2" 8 0x80000000ff000000
qemu-img create -q -f qcow2 -b bb.qcow2 -F qcow2 -u "$tmp/ov.qcow2" 4M
sock=$sockdir/ov.sock
start_export "$sock" --image "qcow2:$tmp/ov.qcow2" || finish
nbdinfo --map "$(uri "$sock")" >/dev/null 2>&1 && fail "corrupt backing file: nbdinfo --map succeeded"
[ "$(nbdinfo --size "$(uri "$sock")")" = $((4 << 20)) ] || fail "corrupt backing: export gone"
stop_export

grep -qi "sanitizer\|runtime error\|segmentation\|core dumped" "$tmp/vbdd.log" && fail "vbdd crashed"
finish
