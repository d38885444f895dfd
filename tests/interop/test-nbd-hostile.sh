#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A hostile client (nbd-hostile.py, raw sockets) against vbdd's NBD export,
# read-only and writable: bad magic, unknown flags, oversized and malformed
# options, requests past the end, too large, unaligned, unknown commands,
# garbage after the handshake, too many clients.  Each gets an error reply
# or a disconnect of that client alone; a good client keeps being served;
# nbdcopy still reads the right data afterwards and vbdd exits 0.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
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
finish
