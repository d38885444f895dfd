#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-sim dd against the real vbdd-sim: round trips through the ring, offsets,
# read-only refusal, multi-page rings, clear errors.
set -u
VBD_SIM=${VBD_SIM:?set VBD_SIM to the vbd-sim binary}
: "${VBD_SIM_VBDD:?set VBD_SIM_VBDD to the vbdd-sim binary}"
export VBD_SIM_VBDD
# VBD_SIM_PROTOCOL=x86_32-abi: every run on an i386-layout ring.
if [ -n "${VBD_SIM_PROTOCOL:-}" ]; then
        real_sim=$VBD_SIM
        vbd_sim_proto() { "$real_sim" --protocol "$VBD_SIM_PROTOCOL" "$@"; }
        VBD_SIM=vbd_sim_proto
        echo "# protocol $VBD_SIM_PROTOCOL"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-dd.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
run() { # run CMD... with output in $tmp/out, $tmp/err; returns its status
        "$@" >"$tmp/out" 2>"$tmp/err"
}
expect_ok() {
        if ! run "$@"; then fail "'$*' failed:"; cat "$tmp/err" >&2; return 1; fi
}
expect_fail() { # STATUS PATTERN CMD...
        local want=$1 pat=$2; shift 2
        run "$@"; local st=$?
        [ "$st" = "$want" ] || { fail "'$*' exited $st, want $want"; cat "$tmp/err" >&2; return 1; }
        grep -q -- "$pat" "$tmp/err" || { fail "'$*': stderr lacks '$pat':"; cat "$tmp/err" >&2; return 1; }
}
# cmp a byte range of a file with another file
cmp_range() { # FILE OFFSET LEN OTHER
        cmp <(tail -c +$(($2 + 1)) "$1" | head -c "$3") "$4"
}

img=$tmp/disk.img
head -c $((4 << 20)) /dev/urandom >"$img"
head -c $((1 << 20)) /dev/urandom >"$tmp/in1m"
head -c 10000 /dev/urandom >"$tmp/small"

# Whole-file round trip.
expect_ok "$VBD_SIM" dd --image "raw:$img" --if "$tmp/in1m" &&
        { cmp -n $((1 << 20)) "$img" "$tmp/in1m" || fail "image differs after dd --if"; }
expect_ok "$VBD_SIM" dd --image "raw:$img" --of "$tmp/all" &&
        { cmp "$img" "$tmp/all" || fail "dd --of differs from the image"; }

# Unaligned --seek (read-modify-write on both ends) and --skip/--count.
cp "$img" "$tmp/before"
expect_ok "$VBD_SIM" dd --image "raw:$img" --if "$tmp/small" --seek 12345 &&
        { cmp_range "$img" 12345 10000 "$tmp/small" || fail "--seek 12345 data"; }
cmp -n 12345 "$img" "$tmp/before" || fail "--seek changed bytes before the range"
cmp <(tail -c +22346 "$img") <(tail -c +22346 "$tmp/before") || fail "--seek changed bytes after the range"
expect_ok "$VBD_SIM" dd --image "raw:$img" --of "$tmp/part" --skip 777 --count 5000 &&
        { cmp_range "$img" 777 5000 "$tmp/part" || fail "--skip 777 --count 5000"; }
expect_ok "$VBD_SIM" dd --image "raw:$img" --of "$tmp/tail" --skip $(((4 << 20) - 100))
[ "$(stat -c %s "$tmp/tail")" = 100 ] || fail "--skip to the end: $(stat -c %s "$tmp/tail") bytes"

# Multi-page ring, large transfer.
head -c $((3 << 20)) /dev/urandom >"$tmp/in3m"
expect_ok "$VBD_SIM" --ring-order 2 dd --image "raw:$img" --if "$tmp/in3m" --seek 1M &&
        { cmp_range "$img" $((1 << 20)) $((3 << 20)) "$tmp/in3m" || fail "ring-order 2 write"; }
expect_ok "$VBD_SIM" dd --ring-order 4 --image "raw:$img" --of "$tmp/all4" &&
        { cmp "$img" "$tmp/all4" || fail "ring-order 4 read"; }

# stdin / stdout.
head -c 3000 /dev/urandom >"$tmp/s3k"
"$VBD_SIM" dd --image "raw:$img" --if - --seek 512 <"$tmp/s3k" || fail "dd --if -"
"$VBD_SIM" dd --image "raw:$img" --of - --skip 512 --count 3000 >"$tmp/s3k.out" || fail "dd --of -"
cmp "$tmp/s3k" "$tmp/s3k.out" || fail "stdin/stdout round trip"

# Read-only VBD: reads work, writes are refused by the backend.
sum=$(md5sum <"$img")
expect_ok "$VBD_SIM" --mode r dd --image "raw:$img" --of "$tmp/ro" --count 64K &&
        { cmp -n 65536 "$img" "$tmp/ro" || fail "mode r read"; }
expect_fail 1 "read-only" "$VBD_SIM" --mode r dd --image "raw:$img" --if "$tmp/small"
[ "$(md5sum <"$img")" = "$sum" ] || fail "mode r: the image changed"

# null driver reads zeros.
expect_ok "$VBD_SIM" dd --image null:1M --of "$tmp/z" --count 8192 &&
        { cmp "$tmp/z" <(head -c 8192 /dev/zero) || fail "null reads are not zeros"; }

# Clear errors.
expect_fail 1 "does not fit" "$VBD_SIM" dd --image "raw:$img" --if "$tmp/in1m" --seek $(((3 << 20) + 1))
expect_fail 1 "past the end" "$VBD_SIM" dd --image "raw:$img" --of "$tmp/x" --skip 4M --count 1
expect_fail 1 "vbdd-sim log" "$VBD_SIM" dd --image "raw:$tmp/missing.img" --of "$tmp/x"
grep -q "missing.img" "$tmp/err" || fail "vbdd log for a missing image does not name it"
expect_fail 1 "cannot open" "$VBD_SIM" dd --image "raw:$img" --if "$tmp/nonexistent"
expect_fail 1 "vbdd-sim" "$VBD_SIM" --vbdd /nonexistent/vbdd-sim dd --image "raw:$img" --of "$tmp/x"
expect_fail 2 "exactly one" "$VBD_SIM" dd --image "raw:$img"
expect_fail 2 "--image" "$VBD_SIM" dd --if "$tmp/small"
expect_fail 2 "bench option" "$VBD_SIM" dd --image "raw:$img" --if "$tmp/small" --bs 4096
expect_fail 2 "unknown command" "$VBD_SIM" frobnicate --image "raw:$img"
expect_fail 2 "not a size" "$VBD_SIM" dd --image "raw:$img" --of x --skip 12Q
expect_ok "$VBD_SIM" --help && { grep -q "Usage: vbd-sim" "$tmp/out" || fail "--help"; }

# --keep keeps the simulation dir with the daemon's log.
expect_ok "$VBD_SIM" --keep -v dd --image "raw:$img" --of "$tmp/x" --count 512 &&
        { ls "$tmp"/vbd-sim.*/vbdd-1-51712.log >/dev/null 2>&1 || fail "--keep: no log kept"; }
# Without --keep nothing is left behind.
rm -rf "$tmp"/vbd-sim.*
expect_ok "$VBD_SIM" dd --image "raw:$img" --of "$tmp/x" --count 512
ls -d "$tmp"/vbd-sim.* >/dev/null 2>&1 && fail "sim dir left behind"

[ $fails = 0 ] && echo "PASS" || { echo "$fails failures"; exit 1; }
