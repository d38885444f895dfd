#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# fio's nbd engine (libnbd) against vbdd's writable export: random writes
# of several sizes with verify=crc32c at queue depth 32, then a second
# verify-only pass by a new connection, and qemu-img compare of the file
# with the export.  Skipped when fio has no nbd engine.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
requires fio --version
if ! fio --enghelp=nbd 2>/dev/null | grep -q uri; then
        echo "$0: skipped: this fio has no nbd engine (needs fio built with libnbd)" >&2
        exit 77
fi

img=$tmp/disk.img
truncate -s 256M "$img"
sock=$sockdir/f.sock
start_export "$sock" --image "raw:$img" --nbd-writable || finish
u=$(uri "$sock")

fio --name=nbd-verify --ioengine=nbd --uri="$u" --rw=randwrite --bsrange=4k-256k \
        --iodepth=32 --size=256M --io_size=128M --verify=crc32c --verify_fatal=1 \
        --do_verify=1 --randrepeat=1 --verify_state_save=0 --output="$tmp/fio1.out" || { fail "fio write+verify"; cat "$tmp/fio1.out" >&2; }
fio --name=nbd-verify --ioengine=nbd --uri="$u" --rw=randwrite --bsrange=4k-256k \
        --iodepth=32 --size=256M --io_size=128M --verify=crc32c --verify_fatal=1 \
        --verify_only=1 --randrepeat=1 --verify_state_save=0 --output="$tmp/fio2.out" || { fail "fio verify_only"; cat "$tmp/fio2.out" >&2; }
grep -q 'err= 0' "$tmp/fio1.out" || fail "fio reported errors"
fio --name=nbd-read --ioengine=nbd --uri="$u" --rw=randread --bs=4k --iodepth=32 \
        --size=256M --runtime=2 --time_based --output="$tmp/fio3.out" || fail "fio randread"
if command -v qemu-img >/dev/null; then
        qemu-img compare -f raw -F raw "$img" "$u" >/dev/null || fail "file and export differ"
fi
stop_export
finish
