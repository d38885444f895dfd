#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Hostile qcow2 images through vbdd-sim: corrupt headers, tables pointing
# past the file or into metadata, unsupported features, bad refcounts, cyclic
# and missing backing files.  Each must give a clear error at open or an I/O
# error for the request: never a crash, never a write into metadata.
. "$(dirname "$0")/../lib/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires python3 --version
: "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"
poke="python3 $(dirname "$0")/qcow2-poke.py"

# A small image with data: 64K clusters, L2 table and refcount block allocated.
fresh() { # PATH [OPTS]
        rm -f "$1"
        qemu-img create -q -f qcow2 ${2:+-o "$2"} "$1" 4M
        qemu-io -f qcow2 -c "write -P 0x42 0 256K" "$1" >/dev/null
}

# open_fails WHAT PATTERN IMAGE [--mode r]: vbdd refuses to open, says PATTERN
open_fails() {
        local what=$1 pat=$2 img=$3; shift 3
        if vbd_sim "qcow2:$img" dd --of "$tmp/out" --count 4096 "$@" 2>"$tmp/err"; then
                fail "$what: opened"; return
        fi
        grep -q -- "$pat" "$tmp/err" || { fail "$what: no '$pat' in:"; tail -3 "$tmp/err" >&2; }
        grep -qi "segmentation\|core dumped\|signal" "$tmp/err" && fail "$what: crashed"
}

# Header.
fresh "$tmp/a.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 0 4 0x12345678
open_fails "bad magic" "not a qcow2 image" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 4 4 4
open_fails "version 4" "version 4 not supported" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 20 4 22
open_fails "cluster_bits 22" "cluster_bits 22" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 20 4 8
open_fails "cluster_bits 8" "cluster_bits 8" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 72 8 0x10000000000
open_fails "unknown incompatible bit" "unknown incompatible feature bit(s) 40" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 32 4 1
open_fails "encryption" "encrypted images" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 96 4 7
open_fails "refcount_order 7" "refcount_order 7" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 100 4 4097
open_fails "header_length" "bad header_length" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 36 4 0
open_fails "L1 too small" "L1 table has 0 entries" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 40 8 0x7fff0000
open_fails "L1 past EOF" "L1 table offset" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 48 8 "$($poke "$tmp/a.qcow2" get l1_offset)"
open_fails "refcount table on the L1 table" "overlaps" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 16 4 2000; $poke "$tmp/b.qcow2" set 8 8 200
open_fails "backing name too long" "backing file name length" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 60 4 1; $poke "$tmp/b.qcow2" set 64 8 0x7ff00000
open_fails "snapshot table past EOF" "snapshot table" "$tmp/b.qcow2"
head -c 100 "$tmp/a.qcow2" >"$tmp/b.qcow2"
open_fails "truncated" "" "$tmp/b.qcow2"

# Features refused with a clear error.
qemu-img create -q -f qcow2 -o data_file="$tmp/ext.raw" "$tmp/ext.qcow2" 4M
open_fails "external data file" "external data file" "$tmp/ext.qcow2"
qemu-img create -q -f qcow2 -o extended_l2=on "$tmp/xl2.qcow2" 4M
open_fails "extended L2" "extended L2 entries" "$tmp/xl2.qcow2"
if qemu-img create -q -f qcow2 -o compression_type=zstd "$tmp/zstd.qcow2" 4M 2>/dev/null; then
        open_fails "zstd" "zstd compression is not supported" "$tmp/zstd.qcow2"
fi
# dirty (lazy refcounts, not closed) and corrupt: read-only only
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 72 8 1
open_fails "dirty read-write" "dirty" "$tmp/b.qcow2"
vbd_sim "qcow2:$tmp/b.qcow2" dd --of "$tmp/out" --count 4096 --mode r 2>"$tmp/err" ||
        fail "dirty image read-only open"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set 72 8 2
open_fails "corrupt read-write" "marked corrupt" "$tmp/b.qcow2"

# Tables: L1 entry past EOF, into the refcount table; reserved bits.
l1=$($poke "$tmp/a.qcow2" get l1_offset)
rt=$($poke "$tmp/a.qcow2" get rt_offset)
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l1" 8 0x80000000ff000000
open_fails "L1 entry past EOF" "L1 entry 0 points to" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l1" 8 $((0x8000000000000000 | rt))
open_fails "L1 entry into the refcount table" "points into metadata" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l1" 8 $(($($poke "$tmp/a.qcow2" get l1e0) | 1))
open_fails "L1 reserved bits" "reserved bits" "$tmp/b.qcow2"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$rt" 8 "$l1"
open_fails "refcount block on the L1 table" "overlaps other metadata" "$tmp/b.qcow2"

# L2 entries: past EOF -> I/O error for that request, the rest readable.
l2=$($poke "$tmp/a.qcow2" get l2_offset)
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l2" 8 0x80000000ff000000
rm -f "$tmp/daemon.log"
VBD_WRAPPER_LOG=$tmp/daemon.log vbd_sim "qcow2:$tmp/b.qcow2" dd --of "$tmp/out" --count 4096 \
        2>"$tmp/err" && fail "L2 entry past EOF: read succeeded"
grep -q "past the end of the file" "$tmp/daemon.log" || fail "L2 past EOF: no clear log line"
vbd_sim "qcow2:$tmp/b.qcow2" dd --of "$tmp/out" --skip 65536 --count 4096 2>"$tmp/err" ||
        fail "L2 entry past EOF: the next cluster is not readable"
# L2 entry pointing at the L1 table / the refcount block, with COPIED: a write must
# fail with an I/O error and leave all metadata as it was.
rb=$($poke "$tmp/a.qcow2" get rb0)
for target in "$l1" "$rb" "$l2" 0; do
        cp "$tmp/a.qcow2" "$tmp/b.qcow2"
        $poke "$tmp/b.qcow2" set "$l2" 8 $((0x8000000000000000 | target))
        meta_sum() { head -c $((l2 + 65536)) "$tmp/b.qcow2" | md5sum; }
        before=$(meta_sum)
        head -c 4096 /dev/urandom >"$tmp/junk"
        if vbd_sim "qcow2:$tmp/b.qcow2" dd --if "$tmp/junk" 2>"$tmp/err"; then
                fail "write through an L2 entry pointing to metadata at $target succeeded"
        fi
        [ "$before" = "$(meta_sum)" ] || fail "metadata at $target changed by a hostile L2 entry"
done
# A compressed L2 entry pointing past EOF / garbage compressed data.
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l2" 8 $((0x4000000000000000 | 0x7f000000))
vbd_sim "qcow2:$tmp/b.qcow2" dd --of "$tmp/out" --count 4096 2>"$tmp/err" &&
        fail "compressed entry past EOF: read succeeded"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"; $poke "$tmp/b.qcow2" set "$l2" 8 $((0x4000000000000000 | l1))
rm -f "$tmp/daemon.log"
VBD_WRAPPER_LOG=$tmp/daemon.log vbd_sim "qcow2:$tmp/b.qcow2" dd --of "$tmp/out" --count 4096 \
        2>"$tmp/err" && fail "garbage compressed data: read succeeded"
grep -q "does not decompress" "$tmp/daemon.log" || fail "garbage compressed data: no clear log line"

# Refcounts: a refcount block that says the L2 table and the L1 table are free must
# not make vbdd allocate data there; saturated refcounts (0xffff) must not overflow.
cp "$tmp/a.qcow2" "$tmp/b.qcow2"
cb=$($poke "$tmp/a.qcow2" get cluster_bits)
$poke "$tmp/b.qcow2" set $((rb + 2 * (l2 >> cb))) 2 0
$poke "$tmp/b.qcow2" set $((rb + 2 * (l1 >> cb))) 2 0
head -c $((1 << 20)) /dev/urandom >"$tmp/mb"
vbd_sim "qcow2:$tmp/b.qcow2" dd --if "$tmp/mb" --seek $((2 << 20)) 2>"$tmp/err" ||
        { fail "write with metadata refcounts 0"; cat "$tmp/err" >&2; }
qemu-img convert -O raw "$tmp/b.qcow2" "$tmp/b.raw" 2>/dev/null
qemu-img convert -O raw "$tmp/a.qcow2" "$tmp/a.raw"
cmp -n $((1 << 20)) "$tmp/a.raw" "$tmp/b.raw" || fail "allocation overwrote metadata"
cmp <(tail -c +$(((2 << 20) + 1)) "$tmp/b.raw" | head -c $((1 << 20))) "$tmp/mb" ||
        fail "data written with metadata refcounts 0 is wrong"
cp "$tmp/a.qcow2" "$tmp/b.qcow2"
for i in 0 1 2 3 4 5 6 7; do $poke "$tmp/b.qcow2" set $((rb + 2 * i)) 2 0xffff; done
vbd_sim "qcow2:$tmp/b.qcow2" dd --if "$tmp/mb" 2>"$tmp/err" ||
        { fail "write over saturated refcounts"; cat "$tmp/err" >&2; }

# Backing files: missing, cyclic, self.
qemu-img create -q -f qcow2 -b "$tmp/nonexistent.raw" -F raw -u "$tmp/m.qcow2" 4M
open_fails "missing backing file" "nonexistent.raw" "$tmp/m.qcow2"
qemu-img create -q -f qcow2 "$tmp/c1.qcow2" 4M
qemu-img create -q -f qcow2 -b c1.qcow2 -F qcow2 "$tmp/c2.qcow2" 4M
qemu-img rebase -q -u -b c2.qcow2 -F qcow2 "$tmp/c1.qcow2"
open_fails "cyclic backing chain" "backing chain loops" "$tmp/c2.qcow2"
qemu-img create -q -f qcow2 "$tmp/self.qcow2" 4M
qemu-img rebase -q -u -b self.qcow2 -F qcow2 "$tmp/self.qcow2"
open_fails "self backing" "backing chain loops" "$tmp/self.qcow2"
qemu-img create -q -f qcow2 -b "$tmp/a.qcow2" -F vmdk -u "$tmp/v.qcow2" 4M
open_fails "backing format vmdk" "raw or qcow2 only" "$tmp/v.qcow2"

finish
