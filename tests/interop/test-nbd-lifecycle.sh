#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The NBD export's life: SIGTERM while nbdcopy is mid-transfer (in-flight
# requests drained, exit 0); the control socket of an export-only vbdd
# (info shows the export and its clients; detach stops it, exit 0; guest
# verbs refused); and an export beside a guest: vbdd-sim serving a
# simulated guest's verified I/O with --nbd, read by nbdinfo/nbdcopy.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires nbdcopy --version
requires nbdinfo --version
MiB=$((1 << 20))

# ---- SIGTERM mid-transfer ----
img=$tmp/big.img
head -c $((256 * MiB)) /dev/urandom >"$img"
sock=$sockdir/t.sock
start_export "$sock" --image "raw:$img,direct=off" --nbd-writable || finish
nbdcopy --request-size=$((4 * MiB)) --requests=16 "$(uri "$sock")" "$tmp/out.img" 2>/dev/null &
copy=$!
# wait until the copy is under way
for i in $(seq 200); do
        [ -s "$tmp/out.img" ] && [ "$(stat -c %s "$tmp/out.img")" -gt 0 ] && break
        grep -q 'connected' "$tmp/vbdd.log" && break
        sleep 0.01
done
sleep 0.1
kill -TERM "$export_pid"
rc=0
wait "$export_pid" || rc=$?
[ $rc = 0 ] || fail "SIGTERM mid-transfer: vbdd exit status $rc"
wait $copy 2>/dev/null
grep -q 'NBD export stopping: [1-9][0-9]* client(s)' "$tmp/vbdd.log" || fail "the stop did not find the client"
[ -e "$sock" ] && fail "socket left behind"

# ---- the control socket of an export-only vbdd ----
if [ -n "${VBD_CTL:-}" ]; then
        run=$tmp/run
        sock=$sockdir/c.sock
        start_export "$sock" --image "null:1G" --domid 7 --devid 51712 --ctl-dir "$run" || finish
        nbdcopy --synchronous "$(uri "$sock")" - 2>/dev/null | head -c $MiB >/dev/null
        "$VBD_CTL" --ctl-dir "$run" --json info -d 7 -n 51712 >"$tmp/ctl.json" || fail "vbd-ctl info"
        python3 - "$tmp/ctl.json" "unix:$sock" <<'PY' || fail "vbd-ctl info: wrong answer"
import json, sys
j = json.load(open(sys.argv[1]))
r = j.get("result", j)
ok = (r["state"] == "export-only" and r["mode"] == "r" and r["size"] == 1 << 30
      and r["nbd"]["endpoint"] == sys.argv[2] and r["nbd"]["writable"] is False
      and r["nbd"]["name"] == "")
sys.exit(0 if ok else 1)
PY
        "$VBD_CTL" --ctl-dir "$run" list | grep -q 'export-only' || fail "vbd-ctl list"
        "$VBD_CTL" --ctl-dir "$run" pause -d 7 -n 51712 >/dev/null 2>&1 && fail "pause accepted without a guest"
        "$VBD_CTL" --ctl-dir "$run" detach -d 7 -n 51712 >/dev/null || fail "vbd-ctl detach"
        rc=0
        wait "$export_pid" || rc=$?
        [ $rc = 0 ] || fail "detach: vbdd exit status $rc"
fi

# ---- beside a guest: vbdd-sim with --nbd ----
if [ -n "${VBD_SIM:-}" ] && [ -n "${VBD_SIM_VBDD:-}" ]; then
        gimg=$tmp/guest.img
        truncate -s 64M "$gimg"
        sock=$sockdir/g.sock
        cat >"$tmp/wrap.sh" <<WRAP
#!/bin/sh
exec "$VBD_SIM_VBDD" "\$@" --nbd "unix:$sock" 2>>"$tmp/guest.log"
WRAP
        chmod +x "$tmp/wrap.sh"
        VBD_SIM_VBDD=$tmp/wrap.sh "$VBD_SIM" bench --image "raw:$gimg" --rw randrw --bs 4096 \
                --iodepth 16 --runtime 3 --verify >"$tmp/bench.out" 2>&1 &
        bench=$!
        for i in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
        sleep 0.3
        [ "$(nbdinfo --size "$(uri "$sock")")" = $((64 * MiB)) ] || fail "guest export: size"
        nbdinfo --json "$(uri "$sock")" | grep -q '"is_read_only": true' || fail "guest export not read-only"
        nbdcopy "$(uri "$sock")" - | head -c $((64 * MiB)) | wc -c | grep -qx $((64 * MiB)) ||
                fail "nbdcopy beside the guest"
        wait $bench || { fail "vbd-sim bench with --nbd"; cat "$tmp/bench.out" >&2; }
        grep -q 'NBD export stopping' "$tmp/guest.log" || fail "guest vbdd did not stop its export"
        [ -e "$sock" ] && fail "guest export socket left behind"
fi
finish
