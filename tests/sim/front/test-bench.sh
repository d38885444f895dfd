#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-sim bench --verify against the real vbdd-sim, every --rw mode, on the
# null driver, a fresh raw image and an existing raw image; JSON output;
# multi-page ring; read-only refusal.
set -u
VBD_SIM=${VBD_SIM:?set VBD_SIM to the vbd-sim binary}
: "${VBD_SIM_VBDD:?set VBD_SIM_VBDD to the vbdd-sim binary}"
export VBD_SIM_VBDD

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
bench() { # ARGS...: runs bench, output in $tmp/out
        if ! "$VBD_SIM" bench --runtime 1 "$@" >"$tmp/out" 2>"$tmp/err"; then
                fail "bench $* failed:"; cat "$tmp/out" "$tmp/err" >&2; return 1
        fi
        cat "$tmp/out"
}
jfield() { # NAME: a numeric field of the JSON in $tmp/out
        sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" "$tmp/out"
}

head -c $((16 << 20)) /dev/urandom >"$tmp/old.img"
for rw in read write randread randwrite randrw; do
        bench --image null:64M --rw "$rw" --verify --json &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] &&
                  [ "$(jfield ios)" -gt 0 ] || fail "null $rw: $(cat "$tmp/out")"; }
        bench --image "raw:$tmp/fresh-$rw.img" --size 16M --rw "$rw" --verify --bs 8192 --iodepth 16 ||
                continue
        grep -q " 0 mismatches" "$tmp/out" || fail "fresh $rw: $(cat "$tmp/out")"
        bench --image "raw:$tmp/old.img" --rw "$rw" --verify --bs 4096 --iodepth 8 --seed $RANDOM --json &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] || fail "old $rw"; }
        case $rw in *read*) [ "$(jfield verified)" -gt 0 ] || fail "old $rw: no read verified";; esac
done

# Large requests, deep queue on a 4-page ring.
bench --image null:1G --rw randread --bs 45056 --iodepth 100 --ring-order 2 --json &&
        { [ "$(jfield iodepth)" = 100 ] && [ "$(jfield ring_order)" = 2 ] || fail "ring-order 2"; }
bench --image "raw:$tmp/big.img" --size 32M --rw randrw --bs 45056 --iodepth 64 --ring-order 2 --verify ||
        true
# Unaligned-size requests (not multiples of 4096) with verify.
bench --image "raw:$tmp/odd.img" --size 8M --rw randrw --bs 1536 --iodepth 32 --verify >/dev/null

# JSON is one object with the documented fields.
bench --image null:16M --rw randread --json >/dev/null &&
        for f in iops mb_s p50 p90 p99 p99.9 max; do
                grep -q "\"$f\":" "$tmp/out" || fail "JSON lacks $f: $(cat "$tmp/out")"
        done
[ "$(wc -l <"$tmp/out")" = 1 ] || fail "JSON is not one line"
# The human line has the same numbers.
bench --image null:16M --rw read >/dev/null &&
        { grep -q "IOPS.*MB/s.*p50.*p90.*p99.*p99.9.*max" "$tmp/out" || fail "human line: $(cat "$tmp/out")"; }

# Read-only VBD: reads run (verified against the image file), writes fail
# with a clear error.
bench --image "raw:$tmp/old.img" --mode r --rw randread --verify --json >/dev/null &&
        { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield verified)" -gt 0 ] || fail "mode r verify: $(cat "$tmp/out")"; }
if "$VBD_SIM" --mode r bench --runtime 1 --image "raw:$tmp/old.img" --rw randwrite >"$tmp/out" 2>"$tmp/err"; then
        fail "randwrite on mode r succeeded"
else
        grep -q "read-only" "$tmp/err" || { fail "mode r error unclear:"; cat "$tmp/err" >&2; }
fi

# --verify must catch corruption: something else overwrites the image while
# the guest reads back what it wrote; bench has to fail and say where.
head -c $((4 << 20)) /dev/zero >"$tmp/victim.img"
( end=$((SECONDS + 4)); while [ $SECONDS -lt $end ]; do
        head -c $((4 << 20)) /dev/urandom | dd of="$tmp/victim.img" conv=notrunc status=none
  done ) &
corrupter=$!
if "$VBD_SIM" bench --runtime 2 --image "raw:$tmp/victim.img" --rw randrw --verify \
        >"$tmp/out" 2>"$tmp/err"; then
        fail "verify did not notice a corrupted image: $(cat "$tmp/out")"
else
        grep -qi "mismatch" "$tmp/out" "$tmp/err" || { fail "corruption not reported as a mismatch:"; cat "$tmp/out" "$tmp/err" >&2; }
fi
wait $corrupter

# Usage errors.
"$VBD_SIM" bench --image null:1M --rw sideways >/dev/null 2>&1; [ $? = 2 ] || fail "--rw sideways"
"$VBD_SIM" bench --image null:1M --rw read --bs 1000 >/dev/null 2>&1; [ $? = 2 ] || fail "--bs 1000"
"$VBD_SIM" bench --image "raw:$tmp/none.img" --rw read >/dev/null 2>"$tmp/err"; [ $? = 1 ] &&
        grep -q "give --size" "$tmp/err" || fail "missing image without --size"
"$VBD_SIM" bench --image null:1M --rw read --iodepth 33 >/dev/null 2>"$tmp/err"; [ $? = 1 ] &&
        grep -q "ring-order" "$tmp/err" || fail "--iodepth above the ring size"

[ $fails = 0 ] && echo "PASS" || { echo "$fails failures"; exit 1; }
