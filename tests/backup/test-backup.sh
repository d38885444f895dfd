#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl backup and restore against an export-only vbdd serving cbt:raw
# (writes come through its NBD export, as a guest's would through the ring):
# a full backup and incrementals into a directory, each restored and
# compared with a copy of the image taken at its point in time, and read
# by qemu-img (check, info, convert, compare) as the qcow2 chain it is; a
# backup taken while writes hammer the image is still the image as it was
# when it started; cancel, kill -9 of vbdd mid-backup, a full destination
# and a corrupt change map leave the chain usable and the next backup
# correct (and full when it must be, saying why).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../interop/nbd-lib.sh"
: "${VBD_CTL:?}"
export VBD_VBDD=$VBDD # the vbdd vbd-ctl restore starts
requires qemu-img --version
[ -n "$PY_NBD" ] || { echo "SKIP: no python3 with libnbd's nbd module"; exit 77; }

MiB=$((1 << 20))
G=65536
img=$tmp/disk.img
dir=$tmp/bk
sock=$sockdir/n.sock
U=$(uri "$sock")
client() { "$PY_NBD" "$(dirname "$0")/../cbt/cbt-client.py" "$@"; }
vctl() { "$VBD_CTL" --ctl-dir "$sockdir" "$@"; }
start() { start_export "$sock" --domid 9 --devid 1 --ctl-dir "$sockdir" --nbd-writable --image "$@"; }
jget() { "$PY_NBD" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
nbackups() { "$PY_NBD" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["backups"]))' \
        "$dir/vbd-backup.json"; }
# wait_running: until the backup job runs (or fail)
wait_running() {
        local i
        for i in $(seq 100); do
                vctl backup -d 9 -n 1 --status 2>/dev/null | grep -q "backup running" && return 0
                sleep 0.05
        done
        fail "the backup never ran: $(vctl backup -d 9 -n 1 --status 2>&1)"
        return 1
}
# restore_cmp ARGS... -- WANT: restore, then compare with WANT byte for byte
restore_cmp() {
        local out=$tmp/restored.raw want=${*: -1}
        rm -f "$out"
        vctl restore "${@:1:$#-1}" -o "$out" --no-progress >"$tmp/restore.log" 2>&1 ||
                { fail "restore $*: $(cat "$tmp/restore.log")"; return; }
        cmp -s "$out" "$want" || fail "restore ${*:1:$#-1}: differs from $want"
}
qcheck() { qemu-img check -q "$1" 2>&1 || fail "qemu-img check $1: $(qemu-img check "$1" 2>&1)"; }

# 64 MiB: 24 MiB of data at the start, a hole, 1 MiB at 40 MiB.
truncate -s $((64 * MiB)) "$img"
head -c $((24 * MiB)) /dev/urandom | dd of="$img" conv=notrunc status=none
head -c $((1 * MiB)) /dev/urandom | dd of="$img" bs=1M seek=40 conv=notrunc status=none
mkdir "$dir"
start "cbt:raw:$img"

# 1. Full: only the data is read (the hole is not), and restores to the image.
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b1.json" 2>"$tmp/b1.err" ||
        fail "full backup: $(cat "$tmp/b1.err")"
cp --sparse=always "$img" "$tmp/snap1"
[ "$(jget "$tmp/b1.json" kind)" = full ] || fail "the first backup is not full"
[ "$(jget "$tmp/b1.json" bytes_done)" = $((25 * MiB)) ] ||
        fail "full backup read $(jget "$tmp/b1.json" bytes_done) bytes, want $((25 * MiB)) (data only)"
[ -f "$dir/0001-full.qcow2" ] || fail "no 0001-full.qcow2"
qcheck "$dir/0001-full.qcow2"
restore_cmp "$dir" "$tmp/snap1"

# 2. Incremental: exactly the changed blocks, as a qcow2 overlay over the full.
client write "$U" $((1 * MiB)):4096:0x11 $((30 * MiB)):512:0x22 $((50 * MiB - 4096)):8192:0x33
cp --sparse=always "$img" "$tmp/snap2"
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b2.json" 2>"$tmp/b2.err" ||
        fail "incremental: $(cat "$tmp/b2.err")"
[ "$(jget "$tmp/b2.json" kind)" = incremental ] || fail "the second backup is not incremental"
[ "$(jget "$tmp/b2.json" bytes_done)" = $((4 * G)) ] ||
        fail "incremental read $(jget "$tmp/b2.json" bytes_done) bytes, want $((4 * G))"
qcheck "$dir/0002-inc.qcow2"
qemu-img info --output=json "$dir/0002-inc.qcow2" >"$tmp/info.json"
grep -q '"backing-filename": "0001-full.qcow2"' "$tmp/info.json" ||
        fail "0002-inc.qcow2's backing: $(cat "$tmp/info.json")"
grep -q '"cluster-size": 65536' "$tmp/info.json" || fail "cluster size is not the granularity"
restore_cmp "$dir" --index 1 "$tmp/snap1"
restore_cmp "$dir" "$tmp/snap2"
qemu-img convert -O raw "$dir/0002-inc.qcow2" "$tmp/q2.raw" && cmp -s "$tmp/q2.raw" "$tmp/snap2" ||
        fail "qemu-img convert of the chain differs from the image"
qemu-img compare -q -f qcow2 -F raw "$dir/0002-inc.qcow2" "$tmp/snap2" ||
        fail "qemu-img compare: the chain is not the image"
rm -f "$tmp/q2.raw"
# the chain names its backing files relatively: it can move
mv "$dir" "$dir.moved"
qemu-img compare -q -f qcow2 -F raw "$dir.moved/0002-inc.qcow2" "$tmp/snap2" ||
        fail "a moved chain is not the image"
mv "$dir.moved" "$dir"

# 3. Point in time: writes while a rate-capped backup runs do not reach it,
# are held only until their blocks are read, and the next incremental has them.
cp --sparse=always "$img" "$tmp/snap3"
vctl backup -d 9 -n 1 --to "$dir" --full --rate 8M --no-progress --json >"$tmp/b3.json" \
        2>"$tmp/b3.err" &
bpid=$!
wait_running
: >"$tmp/acked"
# the python process itself, so that kill stops it (not a subshell around it)
"$PY_NBD" "$(dirname "$0")/../cbt/cbt-client.py" storm "$U" 7 "$tmp/acked" 2>"$tmp/storm.err" &
spid=$!
sleep 1.5
kill "$spid"
wait "$spid" 2>/dev/null
wait "$bpid" || fail "backup under writes: $(cat "$tmp/b3.err")"
[ -s "$tmp/acked" ] || fail "the storm wrote nothing"
[ "$(jget "$tmp/b3.json" writes_held)" -gt 0 ] || fail "no write was held (copy-before-write untested)"
echo "under writes: $(wc -l <"$tmp/acked") writes acknowledged, $(jget "$tmp/b3.json" writes_held) held, max $(jget "$tmp/b3.json" held_max_us) us"
[ -f "$dir/0003-full.qcow2" ] || fail "no 0003-full.qcow2"
restore_cmp "$dir" --index 3 "$tmp/snap3"
vctl backup -d 9 -n 1 --to "$dir" --no-progress >"$tmp/b4.log" 2>&1 || fail "0004: $(cat "$tmp/b4.log")"
[ -f "$dir/0004-inc.qcow2" ] || fail "no 0004-inc.qcow2 after 0003-full"
cp --sparse=always "$img" "$tmp/snap4"
restore_cmp "$dir" "$tmp/snap4"
qcheck "$dir/0004-inc.qcow2"

# 4. Cancel: no file, no manifest entry, no checkpoint left.
vctl backup -d 9 -n 1 --to "$dir" --full --rate 1M --no-progress >/dev/null 2>"$tmp/b5.err" &
bpid=$!
wait_running
vctl backup -d 9 -n 1 --cancel >/dev/null || fail "cancel"
wait "$bpid" && fail "a cancelled backup exits 0"
grep -q "cancelled" "$tmp/b5.err" || fail "cancelled: $(cat "$tmp/b5.err")"
[ "$(nbackups)" = 4 ] || fail "a cancelled backup is in the manifest"
ls "$dir" | grep -q "0005" && fail "a cancelled backup left $(ls "$dir")"
vctl checkpoint -d 9 -n 1 | grep -q -- "-0005" && fail "a cancelled backup left its checkpoint"

# 5. kill -9 of vbdd mid-backup: the chain is as it was, the next incremental
# (since 0004) is right, and the dead backup's checkpoint is pruned.
client write "$U" $((5 * MiB)):$((2 * MiB)):0x44
vctl backup -d 9 -n 1 --to "$dir" --rate 1M --no-progress >/dev/null 2>&1 &
bpid=$!
wait_running
kill -KILL "$export_pid"
wait "$export_pid" 2>/dev/null
wait "$bpid" && fail "vbd-ctl backup exits 0 when vbdd died"
[ "$(nbackups)" = 4 ] || fail "a killed backup is in the manifest"
start "cbt:raw:$img"
client write "$U" $((60 * MiB)):4096:0x55
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b6.json" 2>"$tmp/b6.err" ||
        fail "after kill -9: $(cat "$tmp/b6.err")"
grep -q "interrupted backup" "$tmp/b6.err" || fail "the .part of the killed backup: $(cat "$tmp/b6.err")"
[ "$(jget "$tmp/b6.json" kind)" = incremental ] || fail "after kill -9 the backup is not incremental"
cp --sparse=always "$img" "$tmp/snap5"
restore_cmp "$dir" "$tmp/snap5"
[ "$(vctl checkpoint -d 9 -n 1 | grep -c ' bk-')" = 1 ] ||
        fail "checkpoints after pruning: $(vctl checkpoint -d 9 -n 1)"

# 6. Destination full (tmpfs of 4 MiB, root only): the backup fails with the
# reason, leaves nothing, makes no checkpoint, and the image is untouched.
if [ "$(id -u)" = 0 ] && mkdir "$tmp/small" && mount -t tmpfs -o size=4M vbd-test "$tmp/small"; then
        cleanup_fn umount "$tmp/small"
        md5_before=$(md5sum <"$img")
        vctl backup -d 9 -n 1 --to "$tmp/small" --no-progress >/dev/null 2>"$tmp/b7.err" &&
                fail "a backup onto a full disk succeeded"
        grep -q "No space left" "$tmp/b7.err" || fail "full disk: $(cat "$tmp/b7.err")"
        [ -z "$(ls "$tmp/small")" ] || fail "a failed backup left $(ls "$tmp/small")"
        [ "$(vctl checkpoint -d 9 -n 1 | grep -c ' bk-')" = 1 ] || fail "a failed backup made a checkpoint"
        [ "$(md5sum <"$img")" = "$md5_before" ] || fail "a failed backup changed the image"
        umount "$tmp/small"
else
        echo "destination full: skipped (needs root for a tmpfs)"
fi

# 7. A corrupt change map: refused, and the next backup is full and says why.
stop_export
printf 'garbage' | dd of="$img.cbt" bs=1 seek=64 conv=notrunc status=none
start "cbt:raw:$img"
vctl backup -d 9 -n 1 --to "$dir" --json >"$tmp/b8.json" 2>"$tmp/b8.err" ||
        fail "after a corrupt map: $(cat "$tmp/b8.err")"
[ "$(jget "$tmp/b8.json" kind)" = full ] || fail "after a corrupt map the backup is not full"
grep -q "full backup: the device has no checkpoint" "$tmp/b8.err" ||
        fail "the full backup does not say why: $(cat "$tmp/b8.err")"
restore_cmp "$dir" "$img"
vctl backup -d 9 -n 1 --to "$dir" --incremental --json >"$tmp/b9.json" 2>"$tmp/b9.err" ||
        fail "incremental after the new full: $(cat "$tmp/b9.err")"
[ "$(jget "$tmp/b9.json" bytes_done)" = 0 ] || fail "nothing changed, yet $(jget "$tmp/b9.json" bytes_done) bytes"

# 7b. --method rsync, the baseline: a point-in-time copy, then rsync onto a
# destination that holds an older copy (only what differs is sent).
if command -v rsync >/dev/null; then
        cp --sparse=always "$tmp/snap1" "$tmp/rsync-dest.img"
        vctl backup -d 9 -n 1 --method rsync --to "$tmp/rsync-dest.img" --snapshot "$tmp/rsync-snap.raw" \
                --no-progress >"$tmp/b12.log" 2>&1 || fail "--method rsync: $(cat "$tmp/b12.log")"
        cmp -s "$tmp/rsync-dest.img" "$img" || fail "--method rsync: the destination is not the image"
        [ -e "$tmp/rsync-snap.raw" ] && fail "--method rsync left its snapshot"
        grep -q "Total bytes sent" "$tmp/b12.log" || fail "--method rsync: no rsync stats: $(cat "$tmp/b12.log")"
else
        echo "--method rsync: skipped (no rsync)"
fi

# 8. No tracker, read-only (a stopped guest's disk): a full backup to a file.
stop_export
start_export "$sock" --domid 9 --devid 1 --ctl-dir "$sockdir" --image "raw:$img"
vctl backup -d 9 -n 1 --to "$tmp/ro.qcow2" --no-progress >/dev/null 2>"$tmp/b10.err" ||
        fail "read-only full backup: $(cat "$tmp/b10.err")"
qcheck "$tmp/ro.qcow2"
restore_cmp "$tmp/ro.qcow2" "$img"
vctl backup -d 9 -n 1 --to "$dir" --incremental 2>"$tmp/b11.err" && fail "an incremental without a tracker"
grep -q "does not track changes" "$tmp/b11.err" || fail "no tracker: $(cat "$tmp/b11.err")"
stop_export
finish
