#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The change tracker survives kill -9 mid-write: after every crash, each block
# that differs from the image at checkpoint c1, and each block an
# acknowledged write touched, is dirty in c1's bitmap, and the map is not
# refused (no full backup after a crash).  Then the same tracker under a
# simulated guest's blkif ring (vbd-sim): its writes, and only they, are marked.
#
# A kill -9 keeps the page cache, so this checks the order (the mark is
# written before the write goes down), not the fdatasync; the power-cut case
# rests on the same order plus fdatasync (vbd-driver-cbt(7)).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/../interop/nbd-lib.sh"
: "${VBD_CTL:?}" "${VBD_SIM:?}"
[ -n "$PY_NBD" ] || { echo "SKIP: no python3 with libnbd's nbd module"; exit 77; }

MiB=$((1 << 20))
img=$tmp/disk.img
sock=$sockdir/n.sock
U=$(uri "$sock")
client() { "$PY_NBD" "$(dirname "$0")/cbt-client.py" "$@"; }
vctl() { "$VBD_CTL" --ctl-dir "$sockdir" "$@"; }
start() { start_export "$sock" --domid 9 --devid 2 --ctl-dir "$sockdir" --nbd-writable --image "$@"; }

dd if=/dev/urandom of="$img" bs=1M count=256 status=none
start "cbt:raw:$img"
vctl checkpoint -d 9 -n 2 --create c1 >/dev/null || fail "create c1"
stop_export
cp "$img" "$tmp/snap.img" # the image at c1 (nothing ran in between)

for round in 1 2 3 4 5; do
        start "cbt:raw:$img"
        : >"$tmp/acked"
        # the python process itself, so that kill stops it (not a subshell)
        "$PY_NBD" "$(dirname "$0")/cbt-client.py" storm "$U" "$round" "$tmp/acked" &
        storm=$!
        # once writes are being acknowledged (a loaded machine takes its time
        # to start the client), kill at a different point each round
        for _ in $(seq 200); do
                [ -s "$tmp/acked" ] && break
                sleep 0.05
        done
        sleep "$((round / 3)).$(((round * 3) % 10))"
        kill -KILL "$export_pid"
        wait "$export_pid" 2>/dev/null
        kill "$storm" 2>/dev/null
        wait "$storm" 2>/dev/null
        [ -s "$tmp/acked" ] || fail "round $round: no write was acknowledged before the kill"
        start "cbt:raw:$img"
        vctl checkpoint -d 9 -n 2 --json >"$tmp/st.json"
        grep -q '"reason": ""' "$tmp/st.json" || fail "round $round: map refused: $(cat "$tmp/st.json")"
        grep -q '"name": "c1"' "$tmp/st.json" || fail "round $round: c1 lost"
        client verify "$U" c1 "$tmp/snap.img" "$img" 65536 "$tmp/acked" >"$tmp/verify" ||
                fail "round $round: $(cat "$tmp/verify")"
        echo "round $round: $(wc -l <"$tmp/acked") writes acked; $(cat "$tmp/verify")"
        stop_export
done

# Through the ring: a checkpoint, a simulated guest writes 1 MiB at 20 MiB
# and 4 KiB at 50 MiB + 4 KiB, and c2's bitmap is exactly those blocks.
start "cbt:raw:$img"
vctl checkpoint -d 9 -n 2 --create c2 >/dev/null || fail "create c2"
stop_export
head -c $MiB /dev/urandom >"$tmp/a"
head -c 4096 /dev/urandom >"$tmp/b"
vbd_sim "cbt:raw:$img" dd --if "$tmp/a" --seek $((20 * MiB)) || fail "vbd-sim dd a"
vbd_sim "cbt:raw:$img" dd --if "$tmp/b" --seek $((50 * MiB + 4096)) || fail "vbd-sim dd b"
start "cbt:raw:$img"
got=$(client dirty "$U" c2 | tr '\n' ';')
[ "$got" = "$((20 * MiB)) $MiB;$((50 * MiB)) 65536;" ] || fail "ring writes: dirty since c2 '$got'"
client verify "$U" c1 "$tmp/snap.img" "$img" 65536 >"$tmp/verify" || fail "after the ring: $(cat "$tmp/verify")"
stop_export
finish
