#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# The copier on connections of its own ("connections", default 4) to a
# partner that advertises multi-conn, and one connection to one that does
# not.  The same guest (vbd-sim bench --verify, random reads and writes over
# the first 32 MiB, the rest of the disk data) migrated in turn to:
#   nbdkit file (log filter), connections 3: 3 connections up, the copier's
#       region writes on at least two of them (the log), the partner equal
#   nbdkit memory (multi-conn): 4 up; equal (read back with nbdcopy)
#   qemu-nbd (default: one client, no multi-conn): 1 connection; equal
#   qemu-nbd -e 4 (multi-conn): 4 up; equal
#   qemu-nbd -e 2 and connections 4: the two connections it does not take
#       are dropped after the timeout (3 s) and the copy (16 s at --rate 8M)
#       goes on with 2
#   nbdkit file, a sequential writer going round 4 MiB: forwards coalesced
# Each: ready, cutover (the source paused: the partner must equal it byte
# for byte, which breaks if a copy and a forward of the same region race on
# two connections), abort (the guest goes on locally).
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
requires nbdkit --version
requires qemu-nbd --version
requires nbdcopy --version

size=$((128 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
truncate -s $size "$src"
fill "$src" $((32 * MiB)) $((96 * MiB))

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 32M \
        --runtime 600 --seed 5 || finish
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# migrate NAME EXTRA-ARGS EXPECT COMPARE...: to $puri; ready, with the
# status matching EXPECT (python); cutover; COMPARE... (source paused); abort
migrate() {
        local name=$1 extra=$2 expect=$3
        shift 3
        mstart "$gsock" "{\"to\": \"$puri\" $extra}" "$tmp/$name.start.json" || {
                fail "$name: migrate-start: $(cat "$tmp/$name.start.json")"
                return 1
        }
        wait_state ready 120 "$tmp/$name.ready.json" || { tail -20 "$tmp/g.vbdd.log" >&2; return 1; }
        echo "# $name ready: $(cat "$tmp/$name.ready.json")"
        check "$tmp/$name.ready.json" "$expect" "$name: connections"
        wait_writes 300 20 || fail "$name: the guest does not write once ready"
        ctl "$gsock" migrate-cutover >"$tmp/$name.cutover.json" || {
                fail "$name: migrate-cutover: $(cat "$tmp/$name.cutover.json")"
                tail -20 "$tmp/g.vbdd.log" >&2
                return 1
        }
        "$@" || fail "$name: the partner's image differs from the source after the cutover"
        ctl "$gsock" migrate-abort >"$tmp/$name.abort.json" || fail "$name: abort after cutover"
        wait_writes 300 20 || fail "$name: the guest did not resume after the abort"
        check "$tmp/$name.cutover.json" "state == 'cutover' and writes_forwarded > 0" \
                "$name: cutover, writes forwarded"
        check "$tmp/$name.cutover.json" "bytes_sent <= 1.1 * size + bytes_forwarded" \
                "$name: traffic bound"
}

same() {
        cmp "$src" "$dst"
}

# nbdkit file, with its log: which connection carried which write
truncate -s $size "$dst"
log=$tmp/nbdkit-writes.log
start_partner nbdkit-args nk --filter=log file "$dst" logfile="$log" && {
        migrate nbdkit-log ', "connections": 3' \
                "connections == 3 and multi_conn" same
        # the copier's region writes (1 MiB) went over more than one connection
        n=$(grep ' Write ' "$log" | grep -c 'count=0x100000 ')
        conns=$(grep ' Write ' "$log" | grep 'count=0x100000 ' |
                sed -n 's/.*connection=\([0-9]*\) .*/\1/p' | sort -u | wc -l)
        echo "# nbdkit log: $n region writes over $conns connection(s)"
        [ "$conns" -ge 2 ] || fail "the copier's writes used $conns connection(s), not several"
        stop_partner "$partner_pid" || fail "nbdkit did not exit 0"
}

# nbdkit memory: read back over NBD while it still serves
start_partner nbdkit-args nm memory size=$size && {
        same_mem() {
                rm -f "$dst"
                nbdcopy "$puri" "$dst" && cmp "$src" "$dst"
        }
        migrate nbdkit-memory '' "connections == 4 and multi_conn" same_mem
        stop_partner "$partner_pid" || fail "nbdkit memory did not exit 0"
}

# qemu-nbd as it comes: one client at a time, no multi-conn: one connection
# (qemu-nbd's exit status on SIGTERM is not 0, and not checked)
rm -f "$dst"
truncate -s $size "$dst"
start_partner qemu-nbd q1 "$dst" && {
        migrate qemu-nbd-1 '' "connections == 1 and not multi_conn" same
        stop_partner "$partner_pid" || true
}

# qemu-nbd -e 4: multi-conn
rm -f "$dst"
truncate -s $size "$dst"
start_partner qemu-nbd q4 "$dst" -e 4 && {
        migrate qemu-nbd-4 '' "connections == 4 and multi_conn" same
        stop_partner "$partner_pid" || true
}

# qemu-nbd -e 2 with 4 asked for: two never get past its accept; dropped
# after the 3 s timeout, long before the copy (128 MiB at 8 MiB/s) is done
rm -f "$dst"
truncate -s $size "$dst"
start_partner qemu-nbd q2 "$dst" -e 2 && {
        migrate qemu-nbd-2 ', "connections": 4, "timeout": 3, "share": 100, "rate": 8388608' \
                "connections == 2 and multi_conn" same
        grep -q 'copier connection .*dropped' "$tmp/g.vbdd.log" ||
                fail "no copier connection was dropped against qemu-nbd -e 2"
        stop_partner "$partner_pid" || true
}

stop_guest g

# A sequential writer going round the first 4 MiB: its forwards are
# contiguous (coalesced into fewer NBD writes) and each round overwrites the
# last one's (a coalesced forward must still reach the partner before a
# later write overlapping it)
start_guest s "raw:$src" --rw write --iodepth 16 --bs 4096 --size 4M \
        --runtime 600 --seed 9 || finish
wait_writes 1000 30 || fail "the sequential guest is not writing"
rm -f "$dst"
truncate -s $size "$dst"
start_partner nbdkit ns "$dst" && {
        migrate nbdkit-sequential '' "connections == 4 and multi_conn" same
        check "$tmp/nbdkit-sequential.cutover.json" "forward_requests < writes_forwarded" \
                "sequential writes coalesced into fewer NBD writes"
        stop_partner "$partner_pid" || fail "nbdkit did not exit 0"
}
stop_guest s
finish
