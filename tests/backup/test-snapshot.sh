#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl snapshot: the backup filter's snapshot job on a running simulated
# guest (vbd-sim bench, randrw with --verify, over a raw disk).  Started in
# a pause just after a copy of the image is taken, its export read twice by
# nbdcopy (and once by qemu-img compare) while the guest writes all over the
# disk, equals that copy; its status says what it did; --stop ends it and
# leaves nothing; a second start, an existing store, plain TCP off loopback
# and bad options are refused; a store that fills up (a small tmpfs) fails the job while the
# guest goes on with no error and no mismatch, and the export's reads fail;
# a daemon with --nbd-tls-psk gives the job's export TLS.
. "$(dirname "$0")/../lib/functions.sh"
: "${VBD_CTL:?}" "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"
requires nbdcopy --version
requires qemu-img --version

MiB=$((1 << 20))
ctl=$(mktemp -d /tmp/vbd-snap.XXXXXX) # short: sun_path is 108 bytes
cleanup_fn rm -rf "$ctl"
export VBD_RUNTIME_DIR=$ctl # vbdd-sim's control dir, and vbd-ctl's
D=(-d 1 -n 51712)
vctl() { "$VBD_CTL" "$@"; }
img=$tmp/disk.img
ep=$ctl/snap.sock
U="nbd+unix:///?socket=$ep"
jget() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

quiet_kill() { kill "$1" 2>/dev/null; }
# guest NAME RUNTIME: a guest writing and reading all over the disk in the
# background ($guest its pid, its JSON in $tmp/NAME.json); waits until its
# daemon is connected
guest() {
        local i
        vbd_sim "raw:$img" bench --rw randrw --bs 4096 --iodepth 16 --runtime "$2" --verify \
                --json >"$tmp/$1.json" 2>"$tmp/$1.err" &
        guest=$!
        cleanup_fn quiet_kill "$guest"
        for i in $(seq 200); do
                vctl info "${D[@]}" 2>/dev/null | grep -q "^state *connected" && return 0
                sleep 0.05
        done
        fail "guest $1 did not connect: $(cat "$tmp/$1.err")"
        return 1
}
# guest_ok NAME: the guest ended with no I/O error and no mismatch
guest_ok() {
        wait "$guest" || fail "guest $1 failed: $(cat "$tmp/$1.err")"
        python3 -c 'import json,sys
g = json.load(open(sys.argv[1]))
assert g["errors"] == 0 and g["mismatches"] == 0 and g["writes"] > 0, g
print("guest %s: %d writes, %d reads verified, 0 errors" % (sys.argv[2], g["writes"], g["verified"]))' \
                "$tmp/$1.json" "$1" || fail "guest $1: $(cat "$tmp/$1.json")"
}
# must_fail WHAT PATTERN ARGS...
must_fail() {
        local what=$1 pat=$2
        shift 2
        if vctl "$@" >"$tmp/out" 2>"$tmp/err"; then
                fail "$what: succeeded: $(cat "$tmp/out")"
        elif ! grep -q -- "$pat" "$tmp/err"; then
                fail "$what: want '$pat', got: $(cat "$tmp/err")"
        else
                echo "$what: refused: $(cat "$tmp/err")"
        fi
}

head -c $((32 * MiB)) /dev/urandom >"$img"

# 1. Bad options, no daemon
must_fail "--start without --store" "needs --store" snapshot "${D[@]}" --start "unix:$ep"
must_fail "--start and --stop" "one of" snapshot "${D[@]}" --start "unix:$ep" --store x --stop
must_fail "no daemon" "" snapshot -d 7 -n 7 --status

# 2. No job yet; then one started in a pause, right after a copy of the
# image: its export stays that copy while the guest writes
guest g1 20 || exit 1
vctl snapshot "${D[@]}" --status >"$tmp/out" 2>&1 || fail "status without a job: $(cat "$tmp/out")"
grep -q "^1/51712: no snapshot job$" "$tmp/out" || fail "status without a job: $(cat "$tmp/out")"
[ "$(vctl --json snapshot "${D[@]}" --status | jget /dev/stdin state)" = none ] ||
        fail "--json status without a job: $(vctl --json snapshot "${D[@]}" --status 2>&1)"
vctl pause "${D[@]}" >/dev/null || fail "pause"
cp --sparse=never "$img" "$tmp/ref.raw"
t0=$(date +%s%3N)
vctl snapshot "${D[@]}" --start "unix:$ep" --store "$tmp/store" >"$tmp/start.out" 2>&1 ||
        fail "snapshot --start: $(cat "$tmp/start.out")"
echo "$(cat "$tmp/start.out") ($(($(date +%s%3N) - t0)) ms, paused)"
vctl resume "${D[@]}" >/dev/null || fail "resume"
[ -e "$tmp/store" ] && fail "the store has a name (the daemon unlinks it)"
must_fail "a second start" "" snapshot "${D[@]}" --start "unix:$ctl/s2.sock" --store "$tmp/store2"
[ -e "$tmp/store2" ] && fail "a refused start left its store"
[ -e "$ctl/s2.sock" ] && fail "a refused start left its socket"
sleep 1 # the guest writes on
t0=$(date +%s%3N)
nbdcopy "$U" "$tmp/copy1.raw" || fail "nbdcopy 1"
echo "nbdcopy of the snapshot while the guest writes: $(($(date +%s%3N) - t0)) ms"
cmp -s "$tmp/copy1.raw" "$tmp/ref.raw" || fail "copy 1 of the snapshot differs from the image at its start"
cmp -s "$img" "$tmp/ref.raw" && fail "the guest wrote nothing (the test would prove nothing)"
nbdcopy "$U" "$tmp/copy2.raw" || fail "nbdcopy 2"
cmp -s "$tmp/copy2.raw" "$tmp/ref.raw" || fail "copy 2 of the snapshot differs from the image at its start"
qemu-img compare -q -f raw "$tmp/ref.raw" "$U" || fail "qemu-img compare: the export differs"
vctl --json snapshot "${D[@]}" --status >"$tmp/st.json" || fail "status --json"
python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
assert s["state"] == "running", s
assert s["endpoint"] == "unix:" + sys.argv[2], s
assert s["granularity"] == 65536, s
assert s["bytes_saved"] > 0 and s["bytes_saved"] % 65536 == 0, s
assert s["bytes_saved"] <= 32 << 20, s
assert s["writes_held"] > 0 and s["held_max_us"] >= s["held_avg_us"] >= 0, s
assert isinstance(s["clients"], int), s
print("snapshot: %d bytes saved, %d writes held, avg %d us, max %d us" %
      (s["bytes_saved"], s["writes_held"], s["held_avg_us"], s["held_max_us"]))' \
        "$tmp/st.json" "$ep" || fail "status fields: $(cat "$tmp/st.json")"
vctl snapshot "${D[@]}" --status | grep -q "^1/51712: snapshot running on unix:$ep: [0-9]* bytes saved" ||
        fail "status text: $(vctl snapshot "${D[@]}" --status 2>&1)"
vctl snapshot "${D[@]}" --stop >"$tmp/out" 2>&1 || fail "--stop: $(cat "$tmp/out")"
grep -q "snapshot stopped" "$tmp/out" || fail "--stop says: $(cat "$tmp/out")"
[ "$(vctl --json snapshot "${D[@]}" --status | jget /dev/stdin state)" = cancelled ] ||
        fail "not cancelled after --stop: $(vctl snapshot "${D[@]}" --status 2>&1)"
[ -e "$ep" ] && fail "the export's socket is left after --stop"
nbdcopy "$U" "$tmp/copy3.raw" 2>/dev/null && fail "the export still serves after --stop"
# a new one, with its own granularity; a store that exists is refused
touch "$tmp/exists"
must_fail "an existing store" "" snapshot "${D[@]}" --start "unix:$ep" --store "$tmp/exists"
[ -e "$tmp/exists" ] || fail "the refusal removed the existing file"
vctl snapshot "${D[@]}" --start "unix:$ep" --store "$tmp/store3" --granularity 256K >/dev/null 2>&1 ||
        fail "a second snapshot after --stop"
[ "$(vctl --json snapshot "${D[@]}" --status | jget /dev/stdin granularity)" = $((256 << 10)) ] ||
        fail "--granularity 256K: $(vctl snapshot "${D[@]}" --status 2>&1)"
vctl snapshot "${D[@]}" --stop >/dev/null 2>&1 || fail "--stop 2"
# plain TCP on every address: refused (the daemon has no TLS credentials), nothing left
must_fail "plain TCP on 0.0.0.0" "not a loopback address" snapshot "${D[@]}" \
        --start "tcp:0.0.0.0:10809" --store "$tmp/store4"
[ -e "$tmp/store4" ] && fail "a refused start left its store"
guest_ok g1

# 3. A store that fills up: the job fails, the guest goes on
small=$tmp/small
mkdir "$small"
if mount -t tmpfs -o size=2M vbd-test-small "$small" 2>/dev/null; then
        cleanup_fn umount "$small"
        guest g2 8 || exit 1
        vctl snapshot "${D[@]}" --start "unix:$ep" --store "$small/store" >/dev/null 2>&1 ||
                fail "snapshot on the small store"
        for i in $(seq 200); do
                [ "$(vctl --json snapshot "${D[@]}" --status | jget /dev/stdin state)" = failed ] && break
                sleep 0.05
        done
        vctl --json snapshot "${D[@]}" --status >"$tmp/full.json"
        python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
assert s["state"] == "failed" and s.get("error"), s
print("full store: failed: %s" % s["error"])' "$tmp/full.json" ||
                fail "a full store did not fail the job: $(cat "$tmp/full.json")"
        nbdcopy "$U" "$tmp/copy4.raw" 2>/dev/null &&
                fail "the export of a failed snapshot still reads (newer data)"
        guest_ok g2
        vctl snapshot "${D[@]}" --stop >/dev/null 2>&1
        [ -z "$(ls -A "$small")" ] || fail "the small store is not empty: $(ls -A "$small")"
        [ "$(df --output=used -B1 "$small" | tail -1)" -lt $((64 << 10)) ] ||
                fail "the store's space is not released: $(df "$small")"
else
        echo "SKIP section 3: cannot mount a tmpfs"
fi

# 4. The daemon's TLS credentials (--nbd-tls-psk) cover the job's export:
# a plain client is refused, a TLS one reads the snapshot; TCP on 0.0.0.0
# is allowed then
if command -v psktool >/dev/null; then
        psktool -u alice -p "$tmp/keys.psk" >/dev/null
        printf '#!/bin/sh\nexec "%s" --nbd-tls-psk "%s" "$@"\n' "$VBD_SIM_VBDD" "$tmp/keys.psk" \
                >"$tmp/tls-vbdd.sh"
        chmod +x "$tmp/tls-vbdd.sh"
        VBD_SIM_VBDD=$tmp/tls-vbdd.sh guest g3 8 || exit 1
        vctl pause "${D[@]}" >/dev/null || fail "pause (TLS)"
        cp --sparse=never "$img" "$tmp/ref4.raw"
        vctl snapshot "${D[@]}" --start "unix:$ep" --store "$tmp/store5" >"$tmp/out" 2>&1 ||
                fail "snapshot with TLS: $(cat "$tmp/out")"
        vctl resume "${D[@]}" >/dev/null || fail "resume (TLS)"
        nbdcopy "$U" "$tmp/plain.raw" 2>/dev/null && fail "TLS job export: a plain client read it"
        nbdcopy "nbds+unix://alice@/?socket=$ep&tls-psk-file=$tmp/keys.psk" "$tmp/copy5.raw" ||
                fail "TLS job export: nbdcopy"
        cmp -s "$tmp/copy5.raw" "$tmp/ref4.raw" || fail "TLS job export: differs from the image at its start"
        vctl snapshot "${D[@]}" --stop >/dev/null 2>&1 || fail "--stop (TLS)"
        ok=0
        for try in 1 2 3 4 5; do
                port=$((20000 + RANDOM % 20000))
                if vctl snapshot "${D[@]}" --start "tcp:0.0.0.0:$port" --store "$tmp/store6.$try" \
                        >"$tmp/out" 2>&1; then
                        ok=1
                        break
                fi
                grep -q "in use" "$tmp/out" || break
        done
        [ $ok = 1 ] || fail "TLS job export on 0.0.0.0 refused: $(cat "$tmp/out")"
        [ $ok = 1 ] && { nbdinfo --size "nbds://alice@127.0.0.1:$port/?tls-psk-file=$tmp/keys.psk" \
                >/dev/null || fail "TLS job export on tcp:0.0.0.0: nbdinfo"; }
        vctl snapshot "${D[@]}" --stop >/dev/null 2>&1
        guest_ok g3
else
        echo "SKIP section 4: no psktool"
fi
finish
