#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbdd --export-only against real NBD clients: nbdinfo (size, flags,
# contexts, --map of a sparse file), nbdcopy both ways, qemu-img
# info/compare/convert over nbd+unix://, libnbd through nbd-client.py
# (read-only refusals, error replies, simple replies, NBD_OPT_EXPORT_NAME,
# FUA/flush/trim/zero/block status), a named export, TCP, the null driver.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires nbdinfo --version
requires nbdcopy --version
requires qemu-img --version

MiB=$((1 << 20))
img=$tmp/disk.img
# 64 MiB, sparse: data at 8..12 MiB and in the last MiB, holes elsewhere
truncate -s 64M "$img"
head -c $((4 * MiB)) /dev/urandom | dd of="$img" bs=1M seek=8 conv=notrunc status=none
head -c $MiB /dev/urandom | dd of="$img" bs=1M seek=63 conv=notrunc status=none
cp --sparse=always "$img" "$tmp/orig.img"

# ---- read-only export (the default) ----
sock=$sockdir/ro.sock
start_export "$sock" --image "raw:$img" || finish
u=$(uri "$sock")

nbdinfo --json "$u" >"$tmp/info.json" || fail "nbdinfo"
python3 - "$tmp/info.json" <<'PY' || fail "nbdinfo: wrong export description"
import json, sys
j = json.load(open(sys.argv[1]))
e = j["exports"][0]
checks = {
    "size": e["export-size"] == 64 << 20,
    "read-only": e["is_read_only"] is True,
    "flush": e["can_flush"] is True,
    "no trim": e["can_trim"] is False,
    "no zero": e["can_zero"] is False,
    "multi-conn": e["can_multi_conn"] is True,
    "df": e["can_df"] is True,
    "context": "base:allocation" in e["contexts"],
    "block sizes": (e["block_size_minimum"], e["block_size_maximum"]) == (512, 32 << 20),
    "structured": j["protocol"] == "newstyle-fixed" and j["structured"] is True,
}
bad = [k for k, v in checks.items() if not v]
if bad:
    print("bad:", bad, file=sys.stderr)
    sys.exit(1)
PY
nbdinfo --list "$u" | grep -q 'export=""' || fail "nbdinfo --list"

# Block status of the sparse file: hole,zero / data / hole,zero / data.
nbdinfo --map "$u" >"$tmp/map" || fail "nbdinfo --map"
cat >"$tmp/map.expect" <<MAP
0 8388608 3
8388608 4194304 0
12582912 53477376 3
66060288 1048576 0
MAP
awk '{print $1, $2, $3}' "$tmp/map" | diff -u "$tmp/map.expect" - || fail "block status map differs"
nbdinfo --map --totals "$u" | grep -q . || fail "nbdinfo --map --totals"

# nbdcopy out (multi-conn, several requests in flight) and compare.
nbdcopy "$u" "$tmp/copy.img" || fail "nbdcopy out"
cmp "$img" "$tmp/copy.img" || fail "nbdcopy copy differs"
nbdcopy --connections=1 --requests=64 --request-size=$((32 * MiB)) "$u" - | cmp - "$img" ||
        fail "nbdcopy with 32 MiB requests differs"

# qemu-img over nbd+unix://
qemu-img info --output=json "$u" | grep -q '"virtual-size": 67108864' || fail "qemu-img info"
qemu-img compare -f raw -F raw "$img" "$u" >/dev/null || fail "qemu-img compare raw vs nbd"
qemu-img convert -f raw -O raw "$u" "$tmp/qconv.img" || fail "qemu-img convert from nbd"
cmp "$img" "$tmp/qconv.img" || fail "qemu-img convert copy differs"
qemu-img convert -f raw -O qcow2 "$u" "$tmp/qconv.qcow2" || fail "qemu-img convert to qcow2"
qemu-img compare "$img" "$tmp/qconv.qcow2" >/dev/null || fail "qcow2 from nbd differs"

if [ -n "$PY_NBD" ]; then
        nbd_py readonly "$u" || fail "read-only refusals"
        nbd_py errors "$u" || fail "error replies (read-only)"
        nbd_py simple "$u" "$img" || fail "simple replies"
        nbd_py exportname "$u" "$img" || fail "NBD_OPT_EXPORT_NAME"
else
        echo "$0: libnbd's python module missing (python3-libnbd): libnbd checks skipped" >&2
fi
# a wrong export name is refused
nbdinfo "$(uri "$sock" nosuch)" >/dev/null 2>&1 && fail "unknown export name accepted"
stop_export
cmp "$img" "$tmp/orig.img" || fail "read-only export changed the image"

# ---- writable export, named ----
sock=$sockdir/rw.sock
start_export "$sock" --image "raw:$img" --nbd-writable --nbd-name disk0 || finish
u=$(uri "$sock" disk0)
nbdinfo --list "$(uri "$sock")" | grep -q 'export="disk0"' || fail "named export not listed"
nbdinfo --json "$u" | grep -q '"is_read_only": false' || fail "writable export is read-only"
head -c $((64 * MiB)) /dev/urandom >"$tmp/new.img"
nbdcopy "$tmp/new.img" "$u" || fail "nbdcopy into the export"
cmp "$tmp/new.img" "$img" || fail "file after nbdcopy in differs"
# qemu-img writes through the export (zeroes become WRITE_ZEROES/TRIM)
qemu-img convert -n -f raw -O raw "$tmp/orig.img" "$u" || fail "qemu-img convert into nbd"
cmp "$tmp/orig.img" "$img" || fail "file after qemu-img convert in differs"
qemu-img compare -f raw -F raw "$tmp/orig.img" "$u" >/dev/null || fail "compare after write"
if [ -n "$PY_NBD" ]; then
        nbd_py ops "$u" "$img" || fail "write operations"
        nbd_py errors "$u" || fail "error replies (writable)"
        nbd_py simple "$u" "$img" || fail "simple replies (writable)"
fi
# trim punches a hole in the file
blocks_before=$(stat -c %b "$img")
nbdinfo --map "$u" | awk '$3 == 0' | grep -q . || fail "no data extents before trim"
if [ -n "$PY_NBD" ]; then
        "$PY_NBD" -c "
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.trim(64 << 20, 0); h.flush(); h.shutdown()" "$u" ||
                fail "trim of the whole export"
        blocks_after=$(stat -c %b "$img")
        [ "$blocks_after" -lt "$blocks_before" ] || fail "trim did not free blocks ($blocks_before -> $blocks_after)"
        [ "$(nbdinfo --map "$u" | awk '{print $3}' | sort -u)" = 3 ] || fail "after trim: not all hole,zero"
        cmp -n $((64 * MiB)) "$img" /dev/zero || fail "after trim: not zeroes"
fi
stop_export

# ---- TCP, and the null driver ----
port=$((20000 + RANDOM % 20000))
"$VBDD" --export-only --image null:1G --nbd "tcp:127.0.0.1:$port" 2>>"$tmp/vbdd.log" &
pid=$!
cleanup_fn _kill_export $pid
for i in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null 2>&1 && break; sleep 0.05; done
[ "$(nbdinfo --size "nbd://127.0.0.1:$port")" = $((1 << 30)) ] || fail "tcp export size"
nbdinfo --map "nbd://127.0.0.1:$port" | grep -q '^ *0  *1073741824  *3' || fail "null: not one hole,zero extent"
nbdcopy --synchronous "nbd://127.0.0.1:$port" - 2>/dev/null | head -c $((8 * MiB)) | cmp -s - <(head -c $((8 * MiB)) /dev/zero) ||
        fail "null over tcp: not zeroes"
kill -TERM $pid
wait $pid || fail "tcp export: bad exit status"

# ---- bad command lines ----
"$VBDD" --export-only --image "raw:$img" 2>/dev/null && fail "--export-only without --nbd accepted"
"$VBDD" --export-only --nbd "unix:$sockdir/x" 2>/dev/null && fail "--export-only without --image accepted"
"$VBDD" --export-only --image "raw:$img" --nbd "tcp::10809" 2>/dev/null && fail "tcp without an address accepted"
"$VBDD" --export-only --image "raw:$img" --nbd "udp:x" 2>/dev/null && fail "bad endpoint accepted"
"$VBDD" --export-only --image "raw:$img" --nbd "unix:$sockdir/m" --mode w 2>/dev/null && fail "--mode accepted"

grep -q 'no TLS' "$tmp/vbdd.log" || fail "TCP export did not warn about TLS"
finish
