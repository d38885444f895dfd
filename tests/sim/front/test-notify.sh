#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# No lost notifications: vbd-sim bench --events-only looks at the ring for
# responses only after an event-channel event, as blkfront does, so a
# response vbdd publishes without the notification the ring's rsp_event
# asked for is never seen and the run stalls (--stall-timeout fails it).
# Verified I/O over the null driver (responses produced inline, several
# ring passes per loop iteration) and raw (AIO completions), one ring and
# four, a 1-page and a 4-page ring, small and indirect requests, a full
# ring (iodepth = its slots) and one request in flight; plus dd (one request
# at a time: every response must be notified).
set -u
VBD_SIM=${VBD_SIM:?set VBD_SIM to the vbd-sim binary}
: "${VBD_SIM_VBDD:?set VBD_SIM_VBDD to the vbdd-sim binary}"
export VBD_SIM_VBDD
P=()
[ -n "${VBD_SIM_PROTOCOL:-}" ] && P=(--protocol "$VBD_SIM_PROTOCOL") && echo "# protocol $VBD_SIM_PROTOCOL"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-notify.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
# A correct backend never stalls; 30 s only bounds a lost notification's cost.
S=(--events-only --stall-timeout 30)
bench() { # ARGS...
        if ! "$VBD_SIM" "${P[@]}" "${S[@]}" "${Q[@]}" bench --runtime 1 --verify --json "$@" \
                >"$tmp/out" 2>"$tmp/err"; then
                fail "bench ${Q[*]} $* failed:"; cat "$tmp/out" "$tmp/err" >&2; return 1
        fi
        grep -q '"mismatches":0,' "$tmp/out" && grep -q '"errors":0,' "$tmp/out" ||
                fail "bench ${Q[*]} $*: $(cat "$tmp/out")"
        echo "ok: bench ${Q[*]} $*"
}

for Q in "--queues 1" "--queues 4 --ring-order 2"; do
        read -ra Q <<<"$Q"
        for rw in randread randwrite randrw; do
                bench --image null:64M --rw "$rw" --bs 4096 --iodepth 32
                bench --image "raw:$tmp/r.img" --size 16M --rw "$rw" --bs 4096 --iodepth 32
        done
        # indirect requests
        bench --image "raw:$tmp/r.img" --size 16M --rw randrw --bs 65536 --iodepth 8
        # one request in flight
        bench --image "raw:$tmp/r.img" --size 16M --rw randrw --bs 4096 --iodepth 1
done

Q=()
head -c $((1 << 20)) /dev/urandom >"$tmp/data"
truncate -s 1M "$tmp/dd.img"
if "$VBD_SIM" "${P[@]}" "${S[@]}" dd --image "raw:$tmp/dd.img" --if "$tmp/data" 2>"$tmp/err" &&
        "$VBD_SIM" "${P[@]}" "${S[@]}" dd --image "raw:$tmp/dd.img" --of "$tmp/back" \
                --count $((1 << 20)) 2>>"$tmp/err"; then
        cmp -s "$tmp/data" "$tmp/back" || fail "dd: data read back differs"
else
        fail "dd failed: $(cat "$tmp/err")"
fi

[ "$fails" = 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all passed"
