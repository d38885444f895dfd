#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A hostile client (nbd-hostile.py, raw sockets) against vbdd's NBD export,
# read-only and writable: bad magic, unknown flags, oversized and malformed
# options, requests past the end, too large, unaligned, unknown commands,
# garbage after the handshake, too many clients.  Each gets an error reply
# or a disconnect of that client alone; a good client keeps being served;
# nbdcopy still reads the right data afterwards and vbdd exits 0.  Then the
# TLS path of an export that requires it (when certtool is here): options
# before STARTTLS, a drop, garbage or half a ClientHello instead of the
# handshake, STARTTLS twice, the peer gone with reads in flight.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
. "$(dirname "$0")/../lib/tls.sh"
requires python3 --version
requires nbdcopy --version

img=$tmp/disk.img
head -c $((16 << 20)) /dev/urandom >"$img"
cp "$img" "$tmp/orig.img"

for writable in 0 1; do
        sock=$sockdir/h$writable.sock
        args=()
        [ $writable = 1 ] && args=(--nbd-writable)
        start_export "$sock" --image "raw:$img" "${args[@]}" || finish
        python3 "$(dirname "$0")/nbd-hostile.py" "$sock" $((16 << 20)) $writable ||
                fail "hostile client (writable=$writable)"
        kill -0 "$export_pid" || fail "vbdd died (writable=$writable)"
        nbdcopy "$(uri "$sock")" - | cmp - "$tmp/orig.img" || fail "data after the attacks differs"
        stop_export
done
# one line per disconnected client, no flood
n=$(grep -c 'disconnecting' "$tmp/vbdd.log")
[ "$n" -ge 4 ] && [ "$n" -le 40 ] || fail "$n 'disconnecting' log lines"

if certtool --version >/dev/null 2>&1 && tls_certs "$tmp/x509"; then
        sock=$sockdir/tls.sock
        : >"$tmp/vbdd.log"
        start_export "$sock" --image "raw:$img" --nbd-tls-certificates "$tmp/x509/server" \
                --nbd-tls-verify-peer || finish
        python3 "$(dirname "$0")/nbd-hostile.py" "$sock" $((16 << 20)) 0 "$tmp/x509/client" ||
                fail "hostile client on the TLS path"
        kill -0 "$export_pid" || fail "vbdd died on the TLS path"
        nbdcopy "nbds+unix:///?socket=$sock&tls-certificates=$tmp/x509/client" - |
                cmp - "$tmp/orig.img" || fail "data over TLS after the attacks differs"
        stop_export
        grep -q "TLS handshake" "$tmp/vbdd.log" || fail "no failed TLS handshake logged"
        n=$(grep -c 'disconnecting' "$tmp/vbdd.log")
        [ "$n" -ge 4 ] && [ "$n" -le 40 ] || fail "TLS: $n 'disconnecting' log lines"
else
        echo "# no certtool: the TLS attacks are skipped"
fi
finish
