#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Migration to a partner that requires TLS (a pre-shared key): a simulated
# guest (vbd-sim bench --verify) migrated over nbds+unix:// to qemu-nbd
# (--tls-creds, tls-creds-psk), to nbdkit (--tls=require --tls-psk) and to
# vbdd --export-only --nbd-writable --nbd-tls-psk;
# each ready, cut over with the partner equal to the paused source, then
# aborted (the guest goes on locally).  A wrong key and a plain nbd+unix://
# URI to the same partner fail the migration at the handshake with libnbd's
# reason, nothing sent, and the guest never sees an error.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((32 * MiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" 0 $((8 * MiB))
key() { echo "$1:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
mkdir -p "$tmp/creds"
key alice >"$tmp/creds/keys.psk"
key alice >"$tmp/wrong.psk"
chmod 600 "$tmp/creds/keys.psk" "$tmp/wrong.psk"

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 16M \
        --runtime 600 --seed 5 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# must_not_connect WHAT URI: the migration fails at the handshake, saying why
must_not_connect() {
        mstart "$gsock" "{\"to\": \"$2\"}" "$tmp/bad.json" ||
                { echo "# $1: refused at start: $(cat "$tmp/bad.json")"; return 0; }
        wait_state failed 30 "$tmp/bad.failed.json" || return 1
        check "$tmp/bad.failed.json" "state == 'failed' and len(error) > 0 and bytes_sent == 0" \
                "$1: failed with an error, nothing sent"
        echo "# $1: $(jfield "$tmp/bad.failed.json" error)"
}

# tls_migrate NAME DST: to the partner on $psock over TLS; ready, cutover,
# compare, abort; a wrong key and no TLS fail first
tls_migrate() {
        local name=$1 dst=$2 tls="nbds+unix://alice@/?socket=$psock"
        must_not_connect "$name: a wrong key" "$tls&tls-psk-file=$tmp/wrong.psk"
        must_not_connect "$name: no TLS" "$puri"
        mstart "$gsock" "{\"to\": \"$tls&tls-psk-file=$tmp/creds/keys.psk\"}" \
                "$tmp/$name.start.json" || {
                fail "$name: migrate-start over TLS: $(cat "$tmp/$name.start.json")"
                return 1
        }
        wait_state ready 120 "$tmp/$name.ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; return 1; }
        check "$tmp/$name.ready.json" "regions_synced == regions_total" "$name: ready"
        wait_writes 300 20 || fail "$name: the guest does not write once ready"
        ctl "$gsock" migrate-cutover >"$tmp/$name.cutover.json" ||
                { fail "$name: migrate-cutover: $(cat "$tmp/$name.cutover.json")"; return 1; }
        cmp "$src" "$dst" || fail "$name: the partner differs from the source after the cutover"
        check "$tmp/$name.cutover.json" "state == 'cutover' and writes_forwarded > 0" \
                "$name: cutover, writes forwarded"
        ctl "$gsock" migrate-abort >"$tmp/$name.abort.json" || fail "$name: abort after cutover"
        wait_writes 300 20 || fail "$name: the guest did not resume after the abort"
        echo "# $name over TLS: $(cat "$tmp/$name.cutover.json")"
}

if qemu-nbd --version >/dev/null 2>&1; then
        dq=$tmp/dst-qemu.img
        ones "$dq" $size
        start_partner qemu-nbd qn "$dq" \
                --object "tls-creds-psk,id=tls0,endpoint=server,dir=$tmp/creds" --tls-creds tls0 &&
                { tls_migrate qemu-nbd "$dq"; _stop_pid "$partner_pid" TERM; }
else
        echo "# qemu-nbd missing: that partner is skipped"
fi

if nbdkit --dump-config 2>/dev/null | grep -q '^tls=yes'; then
        dk=$tmp/dst-nbdkit.img
        ones "$dk" $size
        start_partner nbdkit nk "$dk" --tls=require --tls-psk="$tmp/creds/keys.psk" &&
                { tls_migrate nbdkit "$dk"; _stop_pid "$partner_pid" TERM; }
else
        echo "# nbdkit without TLS: that partner is skipped"
fi

dv=$tmp/dst-vbdd.img
ones "$dv" $size
start_partner vbdd vb "raw:$dv" --nbd-tls-psk "$tmp/creds/keys.psk" &&
        { tls_migrate vbdd "$dv"; _stop_pid "$partner_pid" TERM; }
grep -q "PSK identity 'alice'" "$tmp/vb.log" || fail "vbdd partner: no TLS client in its log"
grep -q "TLS handshake" "$tmp/vb.log" || fail "vbdd partner: the wrong key's handshake not logged"

stop_guest g
finish
