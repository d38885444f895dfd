#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The change tracker (cbt filter) on an export-only vbdd: writes through the
# NBD export mark exactly their blocks, checkpoints made and removed with
# vbd-ctl, the bitmaps read by real tools (nbdinfo --map, qemu-img map with
# x-dirty-bitmap, libnbd), the map surviving a restart, and the maps the
# tracker must refuse (corrupt, another image's, another granularity, in use)
# refused with the reason shown and a new map started.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../interop/nbd-lib.sh"
: "${VBD_CTL:?}"
requires nbdinfo --version
[ -n "$PY_NBD" ] || { echo "SKIP: no python3 with libnbd's nbd module"; exit 77; }

MiB=$((1 << 20))
G=65536
img=$tmp/disk.img
sock=$sockdir/n.sock
U=$(uri "$sock")
client() { "$PY_NBD" "$(dirname "$0")/cbt-client.py" "$@"; }
vctl() { "$VBD_CTL" --ctl-dir "$sockdir" "$@"; }
start() { start_export "$sock" --domid 9 --devid 1 --ctl-dir "$sockdir" --nbd-writable --image "$@"; }

# dirty NAME EXPECTED: the dirty extents of checkpoint NAME, "OFF LEN;..."
dirty() {
        local got
        got=$(client dirty "$U" "$1" | tr '\n' ';')
        [ "$got" = "$2" ] || fail "dirty since $1: got '$got', want '$2'"
}

truncate -s $((64 * MiB)) "$img"
start "cbt:raw:$img"
vctl checkpoint -d 9 -n 1 | grep -q "no checkpoints" || fail "a new map has no checkpoints"
vctl checkpoint -d 9 -n 1 --json | grep -q '"reason": "the change map is new"' ||
        fail "a new map says it is new"
[ -f "$img.cbt" ] || fail "the map is not beside the image ($img.cbt)"

vctl checkpoint -d 9 -n 1 --create c1 >/dev/null || fail "create c1"
client write "$U" $((1 * MiB)):4096 $((10 * MiB - 4096)):$((128 * 1024))
vctl checkpoint -d 9 -n 1 --create c2 >/dev/null || fail "create c2"
client write "$U" $((30 * MiB)):512 $((64 * MiB - 4096)):4096
# c1: 1 MiB (one block), 10 MiB - 4 KiB + 128 KiB (three blocks), then c2's
dirty c1 "$((1 * MiB)) $G;$((10 * MiB - G)) $((3 * G));$((30 * MiB)) $G;$((64 * MiB - G)) $G;"
dirty c2 "$((30 * MiB)) $G;$((64 * MiB - G)) $G;"

# The same through nbdinfo, and through qemu's NBD client (which reports
# dirty areas of x-dirty-bitmap as "data": false).
nbdinfo --map=qemu:dirty-bitmap:c2 "$U" >"$tmp/map.txt" || fail "nbdinfo --map"
grep -Eq "^ *$((30 * MiB)) +$G +1 +dirty" "$tmp/map.txt" || fail "nbdinfo: $(cat "$tmp/map.txt")"
nbdinfo --list "$U" | grep -q "qemu:dirty-bitmap:c1" || fail "nbdinfo --list names c1"
if command -v qemu-img >/dev/null; then
        qemu-img map --output=json --image-opts \
                "driver=nbd,server.type=unix,server.path=$sock,x-dirty-bitmap=qemu:dirty-bitmap:c2" \
                >"$tmp/qmap.json" || fail "qemu-img map x-dirty-bitmap"
        "$PY_NBD" - "$tmp/qmap.json" $((30 * MiB)) $((64 * MiB - G)) <<'PY' || fail "qemu-img map: $(cat "$tmp/qmap.json")"
import json, sys
m = json.load(open(sys.argv[1]))
want = {int(sys.argv[2]), int(sys.argv[3])}
got = {e["start"] for e in m if not e["data"]}
sys.exit(0 if got == want and all(e["length"] == 65536 for e in m if not e["data"]) else 1)
PY
fi

# A checkpoint that exists, a bad name, remove of one that does not exist.
vctl checkpoint -d 9 -n 1 --create c1 2>"$tmp/err" && fail "c1 created twice"
grep -q "exists" "$tmp/err" || fail "create twice: $(cat "$tmp/err")"
vctl checkpoint -d 9 -n 1 --create 'a/b' 2>"$tmp/err" && fail "a bad name accepted"
grep -q "bad checkpoint name" "$tmp/err" || fail "bad name: $(cat "$tmp/err")"
vctl checkpoint -d 9 -n 1 --remove nope 2>"$tmp/err" && fail "removed a missing checkpoint"
grep -q "no checkpoint nope" "$tmp/err" || fail "remove missing: $(cat "$tmp/err")"

# kill -9 and restart: the checkpoints and their bitmaps are still there.
kill -KILL "$export_pid"
wait "$export_pid" 2>/dev/null
start "cbt:raw:$img"
dirty c1 "$((1 * MiB)) $G;$((10 * MiB - G)) $((3 * G));$((30 * MiB)) $G;$((64 * MiB - G)) $G;"
dirty c2 "$((30 * MiB)) $G;$((64 * MiB - G)) $G;"
vctl checkpoint -d 9 -n 1 --json | grep -q '"reason": ""' || fail "a reason after a clean restart"

# Removing c2 (the newest) leaves c1 whole; removing the oldest of two
# leaves the newer one's bitmap as it was.
vctl checkpoint -d 9 -n 1 --create c3 >/dev/null || fail "create c3"
client write "$U" $((40 * MiB)):4096
vctl checkpoint -d 9 -n 1 --remove c2 >/dev/null || fail "remove c2"
dirty c1 "$((1 * MiB)) $G;$((10 * MiB - G)) $((3 * G));$((30 * MiB)) $G;$((40 * MiB)) $G;$((64 * MiB - G)) $G;"
dirty c3 "$((40 * MiB)) $G;"
vctl checkpoint -d 9 -n 1 --remove c1 >/dev/null || fail "remove c1"
dirty c3 "$((40 * MiB)) $G;"
vctl checkpoint -d 9 -n 1 --remove c3 >/dev/null || fail "remove c3"
nbdinfo --list "$U" | grep -q "qemu:dirty-bitmap" && fail "bitmaps listed after removing all"
vctl checkpoint -d 9 -n 1 --create c4 >/dev/null || fail "create c4"
stop_export

# A second tracker on the same image is refused while the first runs: by
# the image lock first (raw opens the image before the tracker opens its
# map), and with locking=off on the image by the map's own lock.
start "cbt:raw:$img"
first=$export_pid
if "$VBDD" --export-only --nbd "unix:$sockdir/m.sock" --image "cbt:raw:$img" 2>"$tmp/err2"; then
        fail "a second vbdd opened the same image"
fi
grep -q "is in use: failed to get shared \"write\" lock: pid $first (vbdd)" "$tmp/err2" ||
        fail "image in use: $(cat "$tmp/err2")"
if "$VBDD" --export-only --nbd "unix:$sockdir/m.sock" --image "cbt:raw:$img,locking=off" \
        2>"$tmp/err2"; then
        fail "a second vbdd tracked into the same map"
fi
grep -q "change map is in use by another process" "$tmp/err2" || fail "map in use: $(cat "$tmp/err2")"
kill -0 "$first" || fail "the first vbdd died"
stop_export

# Refused maps: each is moved aside (.bad), a new map is made, and the reason
# is in the status (the next backup is full).
refused() {
        local what=$1 reason=$2
        shift 2
        rm -f "$img.cbt.bad"
        start "$@"
        vctl checkpoint -d 9 -n 1 --json >"$tmp/st.json"
        grep -q "\"reason\": \"the change map was refused: $reason" "$tmp/st.json" ||
                fail "$what: $(cat "$tmp/st.json")"
        grep -q '"checkpoints": \[\]' "$tmp/st.json" || fail "$what: checkpoints kept"
        [ -f "$img.cbt.bad" ] || fail "$what: no .bad copy"
        grep -q "change map refused" "$tmp/vbdd.log" || fail "$what: nothing logged"
        stop_export
        : >"$tmp/vbdd.log"
}

# Both headers damaged.
start "cbt:raw:$img"
vctl checkpoint -d 9 -n 1 --create c5 >/dev/null || fail "create c5"
stop_export
printf 'garbage' | dd of="$img.cbt" bs=1 seek=100 conv=notrunc 2>/dev/null
printf 'garbage' | dd of="$img.cbt" bs=1 seek=4196 conv=notrunc 2>/dev/null
refused "both headers corrupt" "it is corrupt (no valid header)" "cbt:raw:$img"

# One header damaged, the other valid: not trusted either (the older one's
# newest checkpoint may have lost its bits when the active bitmap was cleared).
start "cbt:raw:$img"
vctl checkpoint -d 9 -n 1 --create d1 >/dev/null || fail "create d1"
vctl checkpoint -d 9 -n 1 --create d2 >/dev/null || fail "create d2"
stop_export
printf 'garbage' | dd of="$img.cbt" bs=1 seek=2000 conv=notrunc 2>/dev/null
refused "header 0 damaged" "it is corrupt (header 0 is damaged)" "cbt:raw:$img"

refused "another granularity" "its granularity is 65536, not 262144" \
        "cbt:raw:$img,cbt.granularity=256K"
truncate -s $((128 * MiB)) "$img"
refused "another size" "it was made for an image of another size" \
        "cbt:raw:$img,cbt.granularity=256K"
other=$tmp/other.img
truncate -s $((128 * MiB)) "$other"
refused "another image's map" "it was made for another image ($img)" \
        "cbt:raw:$other,cbt.map=$img.cbt,cbt.granularity=256K"

# Bad options.
"$VBDD" --export-only --nbd "unix:$sockdir/x.sock" --image "cbt:null:1G" 2>"$tmp/err" &&
        fail "cbt over null without a map accepted"
grep -q "give cbt.map=PATH" "$tmp/err" || fail "null without map: $(cat "$tmp/err")"
"$VBDD" --export-only --nbd "unix:$sockdir/x.sock" --image "cbt:raw:$img,cbt.granularity=3000" \
        2>"$tmp/err" && fail "granularity 3000 accepted"
finish
