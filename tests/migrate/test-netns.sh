#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Migration to a partner on another (emulated) host over TCP: the partner
# vbdd --export-only runs in its own network namespace behind a veth pair
# shaped to 1 Gbit/s each way (tests/lib/netns.sh), listening on the
# namespace's address in plain TCP (--nbd-insecure: the link is the test's); the source migrates a verified guest's 64 MiB disk
# to nbd://ADDR:PORT, reaches ready (writes forwarded across the link),
# cuts over (partner equal to the source), aborts (the guest resumes) and
# the guest ends without an error.  The data must have crossed the veth:
# its host end sent at least the copied bytes.  Skips (77) when network
# namespaces cannot be made here (not root, no iproute2, no veth or tbf).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
. "$_lib_dir/netns.sh"
# the cleanups (the namespace above all) run also when meson kills the test
trap 'exit 143' TERM INT HUP

if ! why=$(netns_check 2>&1); then
        echo "$0: skipped: no network namespace emulation here: $why" >&2
        exit 77
fi

size=$((64 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
truncate -s $size "$src"
fill "$src" $((16 * MiB)) $((32 * MiB)) # 0..16M the guest's, 16..48M data, then holes
fill "$src" $((size - 4 * KiB)) $((4 * KiB))
ones "$dst" $size

ns=vbdm$$
cleanup_fn netns_down "$ns"
netns_up "$ns" 1gbit || { fail "cannot set up namespace $ns"; finish; }
echo "# link: $NETNS, host $HOST_ADDR ($HOST_IF), partner $NS_ADDR ($NS_IF), $RATE each way"
port=10809
env -u VBD_RUNTIME_DIR ip netns exec "$ns" "$VBDD" --export-only --image "raw:$dst" \
        --nbd "tcp:$NS_ADDR:$port" --nbd-writable --nbd-insecure 2>>"$tmp/p.log" &
partner_pid=$!
cleanup_fn _stop_pid "$partner_pid" TERM
if ! netns_wait_tcp "$ns" "$NS_ADDR" $port 30 "$partner_pid"; then
        fail "the partner does not listen on $NS_ADDR:$port"
        cat "$tmp/p.log" >&2
        finish
fi
# ip execs the program: the pid is vbdd's, in the namespace
[ "$(ip netns identify "$partner_pid")" = "$ns" ] || fail "the partner is not in $ns"
uri="nbd://$NS_ADDR:$port"

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 16M \
        --runtime 600 --seed 11 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

tx0=$(cat "/sys/class/net/$HOST_IF/statistics/tx_bytes")
mstart "$gsock" "{\"to\": \"$uri\"}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; cat "$tmp/p.log" >&2; finish; }
check "$tmp/start.json" "state in ('connecting', 'copying') and to == '$uri'" "start reply"
wait_state ready 180 "$tmp/ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; finish; }
echo "# ready: $(cat "$tmp/ready.json")"
check "$tmp/ready.json" "regions_synced == regions_total and partner_size == $size" \
        "ready: every region synced"

# Ready: the guest's writes cross the link too.
f1=$(jfield "$tmp/ready.json" writes_forwarded)
wait_writes 500 20 || fail "guest writes stalled once ready"
status "$tmp/ready2.json"
check "$tmp/ready2.json" "state == 'ready' and writes_forwarded > $f1" "writes forwarded once ready"

ctl "$gsock" migrate-cutover >"$tmp/cutover.json" ||
        { fail "migrate-cutover: $(cat "$tmp/cutover.json")"; finish; }
n0=$(guest_writes)
tx1=$(cat "/sys/class/net/$HOST_IF/statistics/tx_bytes")
cmp "$src" "$dst" || fail "the partner's image differs from the source after the cutover"
[ "$(guest_writes)" = "$n0" ] || fail "the guest wrote while paused by the cutover"
ctl "$gsock" migrate-abort >"$tmp/abort.json" || fail "abort after cutover: $(cat "$tmp/abort.json")"
wait_writes 500 20 || fail "the guest did not resume after abort"
echo "# cutover: $(cat "$tmp/cutover.json")"
check "$tmp/cutover.json" "state == 'cutover' and error == '' and writes_forwarded > 0" \
        "cutover reply"
copied=$(jfield "$tmp/cutover.json" bytes_sent)
echo "# the host's end of the link sent $(((tx1 - tx0) / 1024)) KiB for $((copied / 1024)) KiB of NBD payload"
[ $((tx1 - tx0)) -ge "$copied" ] || fail "the data did not go over the veth ($((tx1 - tx0)) < $copied bytes)"
stop_guest g
kill -0 "$partner_pid" 2>/dev/null || fail "the partner died"
stop_partner "$partner_pid" || fail "partner vbdd did not exit 0 after SIGTERM"
finish
