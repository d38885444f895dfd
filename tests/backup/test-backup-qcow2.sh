#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The change tracker on a qcow2 image keeps its checkpoints in the image's
# bitmaps extension, in QEMU's format: qemu-img info lists them (in use
# while vbdd runs, not after a clean stop), qemu-nbd -B exports exactly the
# changed extents vbdd's own export reports, qemu-img check stays clean, and
# qemu-img convert --bitmaps carries them.  Writes QEMU makes while vbdd is
# away (qemu-io records them in the enabled bitmaps) are in the next
# incremental; a program that invalidated the bitmaps makes the next backup
# full, saying why; after kill -9 the map file is the truth.
# Then backups into an NBD export (qemu-nbd): a full one over old data, and
# an incremental onto it.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../interop/nbd-lib.sh"
: "${VBD_CTL:?}"
export VBD_VBDD=$VBDD
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
[ -n "$PY_NBD" ] || { echo "SKIP: no python3 with libnbd's nbd module"; exit 77; }

MiB=$((1 << 20))
img=$tmp/disk.qcow2
dir=$tmp/bk
sock=$sockdir/n.sock
qsock=$sockdir/q.sock
U=$(uri "$sock")
client() { "$PY_NBD" "$(dirname "$0")/../cbt/cbt-client.py" "$@"; }
vctl() { "$VBD_CTL" --ctl-dir "$sockdir" "$@"; }
start() { start_export "$sock" --domid 9 --devid 1 --ctl-dir "$sockdir" --nbd-writable --image "cbt:qcow2:$img"; }
jget() { "$PY_NBD" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
# bitmaps FILE: "name granularity flags,..." per bitmap, from qemu-img info
bitmaps() {
        qemu-img info -U --output=json "$1" | "$PY_NBD" -c '
import json, sys
i = json.load(sys.stdin)
for b in (i.get("format-specific", {}).get("data", {}).get("bitmaps") or []):
    print(b["name"], b["granularity"], ",".join(sorted(b["flags"])) or "-")'
}
last_cp() { "$PY_NBD" -c 'import json,sys; print(json.load(open(sys.argv[1]))["backups"][-1]["checkpoint"])' \
        "$dir/vbd-backup.json"; }
qcheck() { qemu-img check -q "$1" 2>&1 || fail "qemu-img check $1: $(qemu-img check "$1" 2>&1)"; }
restore_cmp() {
        local out=$tmp/restored.raw want=${*: -1}
        rm -f "$out"
        vctl restore "${@:1:$#-1}" -o "$out" --no-progress >"$tmp/restore.log" 2>&1 ||
                { fail "restore $*: $(cat "$tmp/restore.log")"; return; }
        qemu-img compare -U -q -f raw -F qcow2 "$out" "$want" ||
                fail "restore ${*:1:$#-1}: differs from $want"
}
# qemu_dirty NAME: the changed extents qemu-nbd exports for bitmap NAME
qemu_dirty() {
        qemu-nbd -r -f qcow2 -B "$1" -k "$qsock" "$img" &
        local qpid=$! i
        for i in $(seq 100); do [ -S "$qsock" ] && break; sleep 0.05; done
        client dirty "$(uri "$qsock")" "$1"
        kill "$qpid" 2>/dev/null # it exits when its one client leaves
        wait "$qpid" 2>/dev/null
        rm -f "$qsock"
}

qemu-img create -q -f qcow2 "$img" 64M
qemu-io -f qcow2 -c "write -P 0x5a 0 8M" -c "write -P 0x6b 40M 1M" "$img" >/dev/null
mkdir "$dir"
start

# 1. A full backup makes checkpoint 1; the image lists it, in use while vbdd runs.
vctl backup -d 9 -n 1 --to "$dir" --no-progress >/dev/null 2>"$tmp/b1.err" ||
        fail "full backup: $(cat "$tmp/b1.err")"
cp1=$(last_cp)
bitmaps "$img" >"$tmp/bm1"
grep -qx "$cp1 65536 auto,in-use" "$tmp/bm1" || fail "while running, qemu-img info lists: $(cat "$tmp/bm1")"

# 2. Changes, a clean stop: the bitmap is current and no longer in use, and
# QEMU's reading of it is vbdd's.
client write "$U" $((1 * MiB)):4096:0x11 $((30 * MiB)):512:0x22 $((63 * MiB)):$((1 * MiB)):0x33
client dirty "$U" "$cp1" >"$tmp/vbdd.dirty"
stop_export
bitmaps "$img" >"$tmp/bm2"
grep -qx "$cp1 65536 auto" "$tmp/bm2" || fail "after a clean stop, qemu-img info lists: $(cat "$tmp/bm2")"
qcheck "$img"
qemu_dirty "$cp1" >"$tmp/qemu.dirty"
[ -s "$tmp/vbdd.dirty" ] && cmp -s "$tmp/vbdd.dirty" "$tmp/qemu.dirty" ||
        fail "qemu-nbd -B $cp1 exports $(cat "$tmp/qemu.dirty"), vbdd $(cat "$tmp/vbdd.dirty")"
printf '%s\n' "$((1 * MiB)) 65536" "$((30 * MiB)) 65536" "$((63 * MiB)) $((1 * MiB))" |
        cmp -s - "$tmp/qemu.dirty" || fail "the changed extents: $(cat "$tmp/qemu.dirty")"
qemu-img convert -f qcow2 -O qcow2 --bitmaps "$img" "$tmp/copy.qcow2" ||
        fail "qemu-img convert --bitmaps"
bitmaps "$tmp/copy.qcow2" | grep -q "^$cp1 65536" || fail "qemu-img convert --bitmaps lost the bitmap"
rm -f "$tmp/copy.qcow2"

# 3. QEMU writes while vbdd is away: it records them in the enabled bitmap,
# and the next incremental has them too.
qemu-io -f qcow2 -c "write -P 0x44 20M 128k" "$img" >/dev/null
start
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b2.json" 2>"$tmp/b2.err" ||
        fail "incremental: $(cat "$tmp/b2.err")"
[ "$(jget "$tmp/b2.json" kind)" = incremental ] || fail "the second backup is not incremental"
[ "$(jget "$tmp/b2.json" bytes_done)" = $((2 * 65536 + MiB + 2 * 65536)) ] ||
        fail "incremental copied $(jget "$tmp/b2.json" bytes_done) bytes: QEMU's writes missed?"
grep -q "written by another program" "$tmp/vbdd.log" || fail "vbdd did not say it counted QEMU's writes"
stop_export
restore_cmp "$dir" "$img"
bitmaps "$img" >"$tmp/bm3"
[ "$(wc -l <"$tmp/bm3")" = 1 ] && grep -q "^$(last_cp) 65536 auto$" "$tmp/bm3" ||
        fail "after the second backup qemu-img info lists: $(cat "$tmp/bm3")"

# 4. kill -9 of vbdd after writes: the image's bitmap stays in use (QEMU
# would call it inconsistent), the map file knows; the incremental is exact.
start
client write "$U" $((50 * MiB)):65536:0x55
kill -KILL "$export_pid"
wait "$export_pid" 2>/dev/null
bitmaps "$img" | grep -q "^$(last_cp) 65536 auto,in-use$" ||
        fail "after kill -9 qemu-img info lists: $(bitmaps "$img")"
qcheck "$img"
start
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b3.json" 2>"$tmp/b3.err" ||
        fail "after kill -9: $(cat "$tmp/b3.err")"
[ "$(jget "$tmp/b3.json" kind)" = incremental ] && [ "$(jget "$tmp/b3.json" bytes_done)" = 65536 ] ||
        fail "after kill -9: $(jget "$tmp/b3.json" kind), $(jget "$tmp/b3.json" bytes_done) bytes"
stop_export
restore_cmp "$dir" "$img"

# 5. A program that does not know bitmaps wrote the image (it clears
# autoclear bit 0, the bitmaps' validity): the next backup is full, saying why.
"$PY_NBD" - "$img" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(88)
    (ac,) = struct.unpack(">Q", f.read(8))
    f.seek(88)
    f.write(struct.pack(">Q", ac & ~1))
EOF
qemu-io -f qcow2 -c "write -P 0x66 10M 4k" "$img" >/dev/null 2>&1
# QEMU drops the invalidated extension and leaks its clusters: not ours to keep
qemu-img check -q -r leaks "$img" >/dev/null 2>&1
start
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b4.json" 2>"$tmp/b4.err" ||
        fail "after an invalidated bitmap: $(cat "$tmp/b4.err")"
[ "$(jget "$tmp/b4.json" kind)" = full ] || fail "after the bitmaps were invalidated the backup is not full"
grep -q "does not keep its bitmaps" "$tmp/b4.err" || fail "the full backup does not say why: $(cat "$tmp/b4.err")"
restore_cmp "$dir" "$img"

# 6. Into an NBD export (qemu-nbd on a raw file full of old data): a full
# backup overwrites all of it (the hole as zeroes), an incremental the changes.
truncate -s 64M "$tmp/nbd.raw"
head -c $((64 * MiB)) /dev/urandom >"$tmp/nbd.raw"
qemu-nbd -t -f raw --cache=none -k "$qsock" "$tmp/nbd.raw" &
qpid=$!
cleanup_fn kill "$qpid"
for i in $(seq 100); do [ -S "$qsock" ] && break; sleep 0.05; done
Q=$(uri "$qsock")
vctl backup -d 9 -n 1 --to "$Q" --full --checkpoint n1 --no-progress --json >"$tmp/n1.json" \
        2>"$tmp/n1.err" || fail "full backup to $Q: $(cat "$tmp/n1.err")"
qemu-img compare -U -q -f raw -F qcow2 "$tmp/nbd.raw" "$img" || fail "the NBD export is not the image"
client write "$U" $((33 * MiB)):8192:0x77 $((12 * MiB)):65536:0x00
vctl backup -d 9 -n 1 --to "$Q" --incremental --since n1 --checkpoint n2 --no-progress --json \
        >"$tmp/n2.json" 2>"$tmp/n2.err" || fail "incremental to $Q: $(cat "$tmp/n2.err")"
[ "$(jget "$tmp/n2.json" bytes_done)" = $((2 * 65536)) ] ||
        fail "the incremental to NBD copied $(jget "$tmp/n2.json" bytes_done) bytes"
qemu-img compare -U -q -f raw -F qcow2 "$tmp/nbd.raw" "$img" || fail "after the incremental the export is not the image"
# the destination killed mid-backup: the backup fails, its checkpoint goes,
# and the same incremental again onto the restarted export is right
client write "$U" $((2 * MiB)):$((4 * MiB)):0x78
vctl backup -d 9 -n 1 --to "$Q" --incremental --since n2 --checkpoint n3 --rate 1M --no-progress \
        >/dev/null 2>"$tmp/n5.err" &
bpid=$!
for i in $(seq 100); do
        vctl backup -d 9 -n 1 --status 2>/dev/null | grep -q "backup running" && break
        sleep 0.05
done
sleep 0.5
kill -KILL "$qpid"
wait "$qpid" 2>/dev/null
wait "$bpid" && fail "a backup whose NBD destination died succeeded"
grep -q "writing the target" "$tmp/n5.err" || fail "destination killed: $(cat "$tmp/n5.err")"
vctl checkpoint -d 9 -n 1 | grep -qw n3 && fail "a failed backup left checkpoint n3"
qemu-nbd -t -f raw --cache=none -k "$qsock" "$tmp/nbd.raw" &
qpid=$!
cleanup_fn kill "$qpid"
for i in $(seq 100); do [ -S "$qsock" ] && break; sleep 0.05; done
vctl backup -d 9 -n 1 --to "$Q" --incremental --since n2 --checkpoint n3 --no-progress --json \
        >"$tmp/n6.json" 2>"$tmp/n6.err" || fail "the incremental again: $(cat "$tmp/n6.err")"
[ "$(jget "$tmp/n6.json" bytes_done)" = $((4 * MiB)) ] ||
        fail "the incremental again copied $(jget "$tmp/n6.json" bytes_done) bytes"
qemu-img compare -U -q -f raw -F qcow2 "$tmp/nbd.raw" "$img" || fail "after the destination died and came back the export is not the image"
vctl backup -d 9 -n 1 --to "$Q" --incremental 2>"$tmp/n3.err" && fail "an NBD incremental without --since"
vctl backup -d 9 -n 1 --to "nbd+unix:///?socket=$sockdir/none" --full 2>"$tmp/n4.err" &&
        fail "a backup to a missing export succeeded"
[ -s "$tmp/n4.err" ] || fail "no message for a missing export"
kill "$qpid"
wait "$qpid" 2>/dev/null
stop_export
qcheck "$img"
finish
