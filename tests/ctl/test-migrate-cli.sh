#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl migrate: the command line against a real daemon.  Usage errors
# (exit 2) and help; then a simulated guest (vbd-sim bench --verify on
# vbdd-sim) and a vbdd --export-only partner: status with no migration,
# start --wait to ready (plain progress lines), the status object's fields
# (--json) and the summary, a refused second start (EBUSY, exit 1),
# cutover (partner == source), abort (the VBD resumed), start --wait --json
# and cutover --wait-ready --json (one object per line), a failed migration
# (exit 1 with the error), SIGTERM during --wait (the copy goes on), the
# progress bar on a terminal (script(1)), and the guest's verify at the end.
# The migration's own behaviour is tested in tests/migrate/.
. "$(dirname "$0")/../lib/functions.sh"
: "${VBD_CTL:?}" "${VBDD:?}" "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"
MiB=$((1 << 20))
PY=${PYTHON:-python3}
requires "$PY" -c 'import json'

# sun_path is 108 bytes and the build dir may be deep
sockdir=$(mktemp -d /tmp/vbd-mcli.XXXXXX)
cleanup_fn rm -rf "$sockdir"
run=$sockdir/run
D=(-d 1 -n 51712)

ctl() {
        "$VBD_CTL" --ctl-dir "$run" "$@"
}

# expect STATUS PATTERN CMD...: exit status and a stderr pattern (grep -E);
# stdout in $tmp/out, stderr in $tmp/err
expect() {
        local want=$1 pat=$2 st=0
        shift 2
        "$@" >"$tmp/out" 2>"$tmp/err" || st=$?
        if [ "$st" != "$want" ]; then
                fail "'$*' exited $st, want $want: $(cat "$tmp/err")"
                return 1
        fi
        if [ -n "$pat" ] && ! grep -Eq -- "$pat" "$tmp/err"; then
                fail "'$*': stderr lacks '$pat': $(cat "$tmp/err")"
                return 1
        fi
}

# jcheck FILE EXPR MSG: EXPR (Python) over the fields of the JSON object in
# FILE (the last line if it holds several)
jcheck() {
        "$PY" - "$@" <<'PY' || fail "$3: $(tail -1 "$1")"
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
try:
    j = json.loads("".join(lines))
except ValueError:
    j = json.loads(lines[-1])
sys.exit(0 if eval(sys.argv[2], {}, dict(j, _keys=set(j))) else 1)
PY
}

# every line of FILE is a JSON object: prints the states, one per line
jlines_states() {
        "$PY" - "$1" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    print(json.loads(l).get("state", "error"))
PY
}

# ---- usage, help: no daemon needed ----
S=(--to nbd://localhost/x)
expect 2 "give start, status, cutover or abort" ctl migrate
expect 2 "'frob'" ctl migrate frob "${D[@]}"
expect 2 "domid and --devid are required" ctl migrate status -d 1
expect 2 "domid and --devid are required" ctl migrate start "${S[@]}"
expect 2 "--to URI is required" ctl migrate start "${D[@]}"
expect 2 "not an NBD URI" ctl migrate start "${D[@]}" --to /tmp/x.sock
expect 2 "not an NBD URI" ctl migrate start "${D[@]}" --to http://x/
expect 2 "tcp:HOST:PORT" ctl migrate start "${D[@]}" --to tcp:host
expect 2 "tcp:HOST:PORT" ctl migrate start "${D[@]}" --to tcp:host:70000
expect 2 "pasm or precopy" ctl migrate start "${D[@]}" "${S[@]}" --mode fast
expect 2 "1..100" ctl migrate start "${D[@]}" "${S[@]}" --share 0
expect 2 "1..100" ctl migrate start "${D[@]}" "${S[@]}" --share 101
expect 2 "1..100" ctl migrate start "${D[@]}" "${S[@]}" --share -5
expect 2 "bytes per second" ctl migrate start "${D[@]}" "${S[@]}" --rate 1MB
expect 2 "bytes per second" ctl migrate start "${D[@]}" "${S[@]}" --rate fast
expect 2 "power of two, 64K..64M" ctl migrate start "${D[@]}" "${S[@]}" --region 96K
expect 2 "power of two, 64K..64M" ctl migrate start "${D[@]}" "${S[@]}" --region 32K
expect 2 "power of two, 64K..64M" ctl migrate start "${D[@]}" "${S[@]}" --region 128M
expect 2 "1..3600" ctl migrate start "${D[@]}" "${S[@]}" --timeout 0
expect 2 "1..3600" ctl migrate start "${D[@]}" "${S[@]}" --timeout 3601
expect 2 "1..64" ctl migrate start "${D[@]}" "${S[@]}" --depth 0
expect 2 "1..64" ctl migrate start "${D[@]}" "${S[@]}" --depth 65
expect 2 "1..8" ctl migrate start "${D[@]}" "${S[@]}" --connections 0
expect 2 "1..8" ctl migrate start "${D[@]}" "${S[@]}" --connections 9
expect 2 "--interval goes with --wait" ctl migrate start "${D[@]}" "${S[@]}" --interval 1
expect 2 "0.1..3600" ctl migrate start "${D[@]}" "${S[@]}" --wait --interval 0.01
expect 2 "0.1..3600" ctl migrate status "${D[@]}" --watch --interval x
expect 2 "--interval goes with --watch" ctl migrate status "${D[@]}" --interval 2
expect 2 "--interval goes with --wait-ready" ctl migrate cutover "${D[@]}" --interval 2
expect 2 "unrecognized option '--to'" ctl migrate status "${D[@]}" --to nbd://x/
expect 2 "unrecognized option '--watch'" ctl migrate cutover "${D[@]}" --watch
expect 2 "unrecognized option '--wait'" ctl migrate abort "${D[@]}" --wait
expect 2 "unexpected argument 'x'" ctl migrate abort "${D[@]}" x
# nothing was sent anywhere: no daemon is needed for any of those
expect 3 "no vbdd serves" ctl migrate status "${D[@]}"
expect 3 "no vbdd serves" ctl migrate start "${D[@]}" "${S[@]}" --wait
expect 0 "" ctl migrate --help
grep -q "^Usage: vbd-ctl migrate start|status|cutover|abort" "$tmp/out" || fail "migrate --help"
for sub in start status cutover abort; do
        expect 0 "" ctl migrate $sub --help
        grep -q "^Usage: vbd-ctl migrate $sub -d D -n N" "$tmp/out" || fail "migrate $sub --help"
        awk 'length > 80 { exit 1 }' "$tmp/out" || fail "migrate $sub --help: lines over 80"
done
ctl migrate start --help | grep -q -- "--zeroed" || fail "start --help lacks --zeroed"
ctl --help | grep -q "^  migrate " || fail "vbd-ctl --help lacks migrate"

# ---- a guest and a partner ----
size=$((64 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
psock=$sockdir/p.sock
puri="nbd+unix:///?socket=$psock"
truncate -s $size "$src"
head -c $((8 * MiB)) /dev/urandom | dd of="$src" bs=1M seek=40 conv=notrunc status=none
truncate -s $size "$dst"

_stop() { # PID SIGNAL
        kill -"$2" "$1" 2>/dev/null || return 0
        for _ in $(seq 100); do
                kill -0 "$1" 2>/dev/null || break
                sleep 0.1
        done
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        return 0
}

start_partner() {
        "$VBDD" --export-only --image "raw:$dst" --nbd "unix:$psock" --nbd-writable \
                2>>"$tmp/partner.log" &
        partner_pid=$!
        cleanup_fn _stop "$partner_pid" KILL
        for _ in $(seq 100); do
                [ -S "$psock" ] && { sleep 0.1; return 0; }
                sleep 0.05
        done
        fail "the partner did not start: $(cat "$tmp/partner.log")"
        finish
}

mkdir -p "$run"
start_partner
# vbd-sim itself in the background (not through a function): $! takes SIGINT
VBD_RUNTIME_DIR=$run "$VBD_SIM" bench --image "raw:$src" --rw randrw --verify --size 16M \
        --iodepth 4 --bs 4096 --runtime 600 --json >"$tmp/guest.out" 2>"$tmp/guest.err" &
guest_pid=$!
cleanup_fn _stop "$guest_pid" TERM
for i in $(seq 200); do
        ctl --json info "${D[@]}" 2>/dev/null | grep -q '"state": "connected"' && break
        [ "$i" = 200 ] && { fail "the guest did not connect: $(cat "$tmp/guest.err")"; finish; }
        sleep 0.1
done

# A daemon built without libnbd: only the usage part above could run.
if ! ctl --json migrate status "${D[@]}" >"$tmp/probe.json" 2>/dev/null; then
        if grep -q '"EOPNOTSUPP"' "$tmp/probe.json" && [ "$_fails" = 0 ]; then
                echo "$0: skipped: vbdd built without migration (usage checks passed)" >&2
                exit 77
        fi
        fail "migrate-status is not served: $(cat "$tmp/probe.json")"
        finish
fi

# ---- no migration ----
expect 0 "" ctl migrate status "${D[@]}" && { grep -qx "1/51712: no migration" "$tmp/out" ||
        fail "status with none: $(cat "$tmp/out")"; }
expect 0 "" ctl --json migrate status "${D[@]}" &&
        jcheck "$tmp/out" "state == 'none' and size == $size" "status --json with none"
expect 1 "no migration" ctl migrate status "${D[@]}" --watch
expect 1 "no migration" ctl migrate abort "${D[@]}"
expect 1 "" ctl --json migrate abort "${D[@]}" &&
        jcheck "$tmp/out" "not ok and error['code'] == 'ENOENT' and error['exit'] == 1" \
                "abort with none: --json error"
expect 1 "" ctl migrate cutover "${D[@]}"

# ---- start --wait (stdout not a tty: one plain line per poll) ----
expect 0 "" ctl migrate start "${D[@]}" --to "unix:$psock" --region 256K --share 50 --rate 1G/s \
        --timeout 20 --depth 8 --connections 2 --wait --interval 0.2
cp "$tmp/out" "$tmp/wait.out"
head -1 "$tmp/wait.out" | grep -qxF "1/51712: migrating to $puri (pasm)" ||
        fail "start --wait: first line: $(head -1 "$tmp/wait.out")"
lines='^ *[0-9]{1,3}%  [0-9.]+/64\.0 MiB  [0-9.]+ [KMG]?i?B/s  ETA [0-9:?]+  fwd [0-9]+ writes/[0-9.]+ [KMG]?i?B  (connecting|copying|ready)$'
[ "$(sed '1d;$d' "$tmp/wait.out" | grep -Evc "$lines")" = 0 ] ||
        fail "start --wait: progress lines: $(cat "$tmp/wait.out")"
sed '1d;$d' "$tmp/wait.out" | tail -1 | grep -Eq '^100%  64\.0/64\.0 MiB .* ready$' ||
        fail "start --wait: the last progress line: $(cat "$tmp/wait.out")"
tail -1 "$tmp/wait.out" | grep -Eq '^1/51712: ready: 64 MiB synced in [0-9:]+, [0-9.]+x the disk sent' ||
        fail "start --wait: the last line: $(tail -1 "$tmp/wait.out")"
echo "# start --wait: $(sed -n 2p "$tmp/wait.out") ... $(tail -1 "$tmp/wait.out")"

# the status object: the contract's fields; --region and unix: went through
expect 0 "" ctl --json migrate status "${D[@]}" && cp "$tmp/out" "$tmp/ready.json"
jcheck "$tmp/ready.json" "state == 'ready' and mode == 'pasm' and to == '$puri' and error == ''" \
        "status --json: state, mode, to"
jcheck "$tmp/ready.json" "size == $size and region_size == 262144 and regions_total == 256" \
        "status --json: geometry from --region 256K"
jcheck "$tmp/ready.json" "connections == 2 and multi_conn" \
        "status --json: --connections 2 to a multi-conn partner"
jcheck "$tmp/ready.json" "regions_synced == 256 and bytes_synced == size and progress == 1" \
        "status --json: progress"
jcheck "$tmp/ready.json" "partner_size == $size and bytes_sent == bytes_copied + bytes_forwarded" \
        "status --json: partner_size, bytes_sent"
jcheck "$tmp/ready.json" "_keys >= {'regions_inflight', 'bytes_zeroed', 'writes_forwarded',
        'passes', 'dirty_bytes', 'partner_inflight', 'writes_waited', 'elapsed_ms', 'rate',
        'eta_s', 'downtime_ms'}" "status --json: every field"
# a one-screen summary
expect 0 "" ctl migrate status "${D[@]}"
for pat in "^1/51712: migration ready \(pasm\) to nbd\+unix:///\?socket=$psock$" \
        "^  progress   100.0%  64 MiB of 64 MiB synced \(256/256 regions of 256 KiB, 0 in flight\)$" \
        "^  rate       .*/s  ETA 0:00  elapsed [0-9:]+$" \
        "^  forwarded  [0-9]+ writes, .*guest writes waited\)$" \
        "^  sent       .* = [0-9.]+x the disk  \(copied .*, forwarded .*; zeroes .*\)$" \
        "^  partner    size 64 MiB, [0-9]+ requests in flight$"; do
        grep -Eq "$pat" "$tmp/out" || fail "status summary lacks /$pat/: $(cat "$tmp/out")"
done
grep -q "error" "$tmp/out" && fail "status summary shows an error line when ready"
expect 0 "" ctl --json migrate status "${D[@]}" --watch
[ "$(wc -l <"$tmp/out")" = 1 ] && jcheck "$tmp/out" "state == 'ready'" "status --watch --json" ||
        fail "status --watch --json when ready: $(cat "$tmp/out")"

# a second start while one runs: refused by the daemon
expect 1 "^vbd-ctl migrate start: 1/51712: .*(running|ready)" \
        ctl migrate start "${D[@]}" --to "$puri"
expect 1 "" ctl --json migrate start "${D[@]}" --to "$puri" &&
        jcheck "$tmp/out" "not ok and error['code'] == 'EBUSY' and error['exit'] == 1" \
                "second start: EBUSY"

# ---- cutover: the partner has the disk, the VBD stays paused ----
expect 0 "" ctl migrate cutover "${D[@]}" &&
        { grep -Eq "^1/51712: cut over to .* in [0-9]+ ms of downtime" "$tmp/out" ||
                fail "cutover output: $(cat "$tmp/out")"; }
echo "# cutover: $(cat "$tmp/out")"
cmp "$src" "$dst" || fail "after the cutover the partner differs from the source"
expect 0 "" ctl --json migrate status "${D[@]}" &&
        jcheck "$tmp/out" "state == 'cutover' and downtime_ms >= 0" "status after cutover"
expect 0 "" ctl migrate status "${D[@]}" && { grep -Eq "^  downtime   [0-9]+ ms$" "$tmp/out" ||
        fail "status summary after cutover: $(cat "$tmp/out")"; }
ctl info "${D[@]}" | grep -Eq "^state +paused" || fail "the VBD is not paused after cutover"
expect 1 "not ready" ctl migrate cutover "${D[@]}"

# ---- abort after the cutover: the VBD resumes here ----
expect 0 "" ctl migrate abort "${D[@]}" &&
        { grep -q "^1/51712: migration to $puri aborted" "$tmp/out" ||
                fail "abort output: $(cat "$tmp/out")"; }
ctl info "${D[@]}" | grep -Eq "^state +connected" || fail "abort did not resume the VBD"
expect 0 "" ctl --json migrate status "${D[@]}" &&
        jcheck "$tmp/out" "state == 'aborted'" "status after abort"
expect 1 "migration aborted" ctl migrate status "${D[@]}" --watch
expect 1 "" ctl migrate abort "${D[@]}"

# ---- JSON lines: start --wait --json, cutover --wait-ready --json ----
expect 0 "" ctl --json migrate start "${D[@]}" --to "$puri" --wait --interval 0.2
cp "$tmp/out" "$tmp/wait.jsonl"
states=$(jlines_states "$tmp/wait.jsonl" | uniq | tr '\n' ' ') ||
        fail "start --wait --json: not one object per line: $(cat "$tmp/wait.jsonl")"
echo "# start --wait --json states: $states"
case "$states" in
"connecting "*"ready " | "copying "*"ready ") ;;
*) fail "start --wait --json: states '$states'" ;;
esac
expect 0 "" ctl --json migrate cutover "${D[@]}" --wait-ready --interval 0.2
states=$(jlines_states "$tmp/out" | tr '\n' ' ')
[ "$states" = "ready cutover " ] || fail "cutover --wait-ready --json: states '$states'"
cmp "$src" "$dst" || fail "second cutover: the partner differs from the source"
expect 0 "" ctl migrate abort "${D[@]}"

# ---- cutover --wait-ready follows a migration to ready, then cuts over ----
expect 0 "" ctl migrate start "${D[@]}" --to "$puri" --rate 32M &&
        grep -Eq "^1/51712: migration to .* started \(pasm, 64 MiB in regions of 1 MiB\)" \
                "$tmp/out" || fail "start output: $(cat "$tmp/out")"
expect 0 "" ctl migrate cutover "${D[@]}" --wait-ready --interval 0.2
grep -Eq "^ *[0-9]+%  .* copying$" "$tmp/out" || fail "cutover --wait-ready showed no progress"
grep -Eq "^1/51712: cut over to " "$tmp/out" || fail "cutover --wait-ready: $(cat "$tmp/out")"
expect 0 "" ctl migrate abort "${D[@]}"

# ---- SIGTERM during --wait: vbd-ctl ends, the copy goes on ----
"$VBD_CTL" --ctl-dir "$run" migrate start "${D[@]}" --to "$puri" --rate 4M --wait \
        >"$tmp/int.out" 2>"$tmp/int.err" &
waiter=$!
sleep 1.5
kill -TERM $waiter
st=0
wait $waiter || st=$?
[ $st = 143 ] || fail "SIGTERM during --wait: exit $st"
grep -q "interrupted; the migration goes on" "$tmp/int.err" || fail "SIGTERM: $(cat "$tmp/int.err")"
ctl --json migrate status "${D[@]}" >"$tmp/out" &&
        jcheck "$tmp/out" "state == 'copying'" "the copy stopped with vbd-ctl"

# ---- the progress bar on a terminal ----
if command -v script >/dev/null; then
        script -qec "stty cols 100; '$VBD_CTL' --ctl-dir '$run' migrate status -d 1 -n 51712 \
                --watch --interval 0.2 & sleep 1; kill -TERM \$!; wait" /dev/null >"$tmp/tty.out"
        grep -Eq $'\r\\[#*\\.+\\]  [0-9]+%  [0-9.]+/64\.0 MiB  .*  copying\e\\[K' "$tmp/tty.out" ||
                fail "no progress bar on a tty: $(od -c "$tmp/tty.out" | head -20)"
        script -qec "stty cols 40; '$VBD_CTL' --ctl-dir '$run' migrate status -d 1 -n 51712 \
                --watch & sleep 0.5; kill -TERM \$!; wait" /dev/null >"$tmp/tty40.out"
        grep -Eq $'\rcopying [0-9]+% [0-9.]+/64\.0 MiB [^\r]*\e\\[K' "$tmp/tty40.out" ||
                fail "40 columns: $(od -c "$tmp/tty40.out" | head -20)"
else
        echo "# no script(1): the tty progress bar is not tested"
fi
expect 0 "" ctl migrate abort "${D[@]}"

# ---- a migration that fails: exit 1 with the daemon's error ----
# A partner that cannot be reached is refused at once.
expect 1 "^vbd-ctl migrate start: 1/51712: .*nobody.sock" \
        ctl migrate start "${D[@]}" --to "unix:$sockdir/nobody.sock" --wait
# A partner that dies mid-copy fails the migration: --wait ends with exit 1.
# Its own image: the first partner still serves $dst, locked read-write.
psock2=$sockdir/p2.sock
truncate -s $size "$tmp/dst2.img"
"$VBDD" --export-only --image "raw:$tmp/dst2.img" --nbd "unix:$psock2" --nbd-writable \
        2>>"$tmp/partner2.log" &
p2=$!
cleanup_fn _stop "$p2" KILL
for _ in $(seq 100); do [ -S "$psock2" ] && break; sleep 0.05; done
sleep 0.1
"$VBD_CTL" --ctl-dir "$run" migrate start "${D[@]}" --to "unix:$psock2" --rate 4M --wait \
        --interval 0.2 >"$tmp/fail.out" 2>"$tmp/fail.err" &
waiter=$!
sleep 1
kill -KILL $p2
st=0
wait $waiter || st=$?
[ $st = 1 ] || fail "start --wait, partner killed: exit $st: $(cat "$tmp/fail.err")"
grep -Eq "^vbd-ctl migrate start: 1/51712: migration failed: .+" "$tmp/fail.err" ||
        fail "start --wait, partner killed: $(cat "$tmp/fail.err")"
grep -Eq "^ *[0-9]+% .* failed$" "$tmp/fail.out" || fail "no failed line: $(cat "$tmp/fail.out")"
echo "# failed: $(cat "$tmp/fail.err")"
expect 0 "" ctl migrate status "${D[@]}" &&
        { grep -Eq "^  error      .+" "$tmp/out" || fail "status of a failed one: $(cat "$tmp/out")"; }
expect 1 "migration failed" ctl migrate status "${D[@]}" --watch
expect 0 "" ctl --json migrate status "${D[@]}" &&
        jcheck "$tmp/out" "state == 'failed' and len(error) > 0" "status --json of a failed one"
# a failed migration can be started again
expect 0 "" ctl migrate start "${D[@]}" --to "$puri" --wait
expect 0 "" ctl migrate abort "${D[@]}"

# ---- the guest saw nothing of it ----
kill -INT $guest_pid
st=0
wait $guest_pid || st=$?
[ $st = 0 ] || fail "the guest's bench exited $st: $(cat "$tmp/guest.err")"
tail -1 "$tmp/guest.out" >"$tmp/guest.json"
jcheck "$tmp/guest.json" "errors == 0 and mismatches == 0 and ios > 0" "guest I/O errors or mismatches"
stop_rc=0
kill -TERM $partner_pid && wait $partner_pid || stop_rc=$?
[ $stop_rc = 0 ] || fail "the partner exited $stop_rc"
finish
