#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-sim bench --verify against the real vbdd-sim, every --rw mode, on the
# null driver, a fresh raw image and an existing raw image; JSON output;
# multi-page ring; read-only refusal; indirect segments (64 KiB and 1 MiB
# requests, verified) once the backend offers them; the backend CPU report.
# VBD_SIM_PROTOCOL=x86_32-abi runs it all on an i386-layout ring.
set -u
VBD_SIM=${VBD_SIM:?set VBD_SIM to the vbd-sim binary}
: "${VBD_SIM_VBDD:?set VBD_SIM_VBDD to the vbdd-sim binary}"
export VBD_SIM_VBDD
P=()
[ -n "${VBD_SIM_PROTOCOL:-}" ] && P=(--protocol "$VBD_SIM_PROTOCOL") && echo "# protocol $VBD_SIM_PROTOCOL"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/test-bench.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export TMPDIR=$tmp
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }
bench() { # ARGS...: runs bench, output in $tmp/out
        if ! "$VBD_SIM" "${P[@]}" bench --runtime 1 "$@" >"$tmp/out" 2>"$tmp/err"; then
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
if "$VBD_SIM" "${P[@]}" --mode r bench --runtime 1 --image "raw:$tmp/old.img" --rw randwrite >"$tmp/out" 2>"$tmp/err"; then
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
if "$VBD_SIM" "${P[@]}" bench --runtime 2 --image "raw:$tmp/victim.img" --rw randrw --verify \
        >"$tmp/out" 2>"$tmp/err"; then
        fail "verify did not notice a corrupted image: $(cat "$tmp/out")"
else
        grep -qi "mismatch" "$tmp/out" "$tmp/err" || { fail "corruption not reported as a mismatch:"; cat "$tmp/out" "$tmp/err" >&2; }
fi
wait $corrupter

# The backend's CPU use, in JSON and in the human line; the ABI in use.
bench --image null:64M --rw randread --json >/dev/null && {
        grep -q '"backend_cpu_pct":[0-9]' "$tmp/out" && grep -q '"backend_cpu_ns_per_io":[0-9]' "$tmp/out" ||
                fail "no backend CPU in JSON: $(cat "$tmp/out")"
        ns=$(jfield backend_cpu_ns_per_io)
        [ "${ns%.*}" -gt 0 ] && [ "${ns%.*}" -lt 10000000 ] || fail "backend_cpu_ns_per_io '$ns'"
        # the simulated guest's own CPU (it competes with the daemon for cores)
        ns=$(jfield front_cpu_ns_per_io)
        [ "${ns%.*}" -gt 0 ] && [ "${ns%.*}" -lt 10000000 ] || fail "front_cpu_ns_per_io '$ns'"
        grep -q '"front_cpu_s":[0-9]' "$tmp/out" || fail "no front_cpu_s in JSON: $(cat "$tmp/out")"
        grep -q "\"protocol\":\"${VBD_SIM_PROTOCOL:-x86_64-abi}\"" "$tmp/out" || fail "protocol: $(cat "$tmp/out")"
        grep -q '"indirect":false' "$tmp/out" || fail "4 KiB requests went indirect"
}
bench --image null:64M --rw randread >/dev/null &&
        { grep -q "backend CPU [0-9.]*% ([0-9]* ns/IO)" "$tmp/out" || fail "human line lacks backend CPU: $(cat "$tmp/out")"; }

# Indirect segments: 64 KiB (16 segments) at QD32 and 1 MiB (256) at QD8,
# verified, on fresh and existing raw images and the null driver.
if "$VBD_SIM" "${P[@]}" bench --runtime 0.2 --image null:64M --rw randread --bs 64K >"$tmp/out" 2>"$tmp/err"; then
        bench --image null:256M --rw randrw --bs 64K --iodepth 32 --verify --json >/dev/null &&
                { grep -q '"indirect":true' "$tmp/out" && [ "$(jfield max_segments)" = 16 ] &&
                  [ "$(jfield indirect_requests)" = "$(jfield ios)" ] && [ "$(jfield mismatches)" = 0 ] &&
                  [ "$(jfield errors)" = 0 ] || fail "null 64K indirect: $(cat "$tmp/out")"; }
        for rw in randrw write randread; do
                bench --image "raw:$tmp/ind64-$rw.img" --size 32M --rw $rw --bs 64K --iodepth 32 --verify --json >/dev/null &&
                        { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] && [ "$(jfield ios)" -gt 0 ] &&
                          [ "$(jfield queue_depth)" = 32 ] || fail "raw 64K $rw: $(cat "$tmp/out")"; }
        done
        bench --image "raw:$tmp/old.img" --rw randrw --bs 1M --iodepth 8 --verify --seed 7 --json >/dev/null &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] && [ "$(jfield verified)" -gt 0 ] &&
                  [ "$(jfield max_segments)" = 256 ] || fail "raw 1M: $(cat "$tmp/out")"; }
        bench --image "raw:$tmp/ind1m.img" --size 64M --rw randrw --bs 1M --iodepth 8 --verify --json >/dev/null &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] || fail "fresh 1M: $(cat "$tmp/out")"; }
        # Odd sizes: partial last segment of an indirect request.
        bench --image "raw:$tmp/ind-odd.img" --size 16M --rw randrw --bs $((60 * 1024 + 512)) --iodepth 16 --verify --json >/dev/null &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] || fail "odd indirect: $(cat "$tmp/out")"; }
        # A 16-page ring: fewer ios than slots at 1 MiB, QD32 still fits.
        bench --image null:1G --rw randread --bs 1M --iodepth 32 --ring-order 4 --json >/dev/null &&
                { [ "$(jfield queue_depth)" -ge 32 ] && [ "$(jfield errors)" = 0 ] || fail "1M ring-order 4: $(cat "$tmp/out")"; }
        # More indirect requests in flight than vbdd has large slots (64):
        # the rest must wait in the ring, not stall it.
        bench --image "raw:$tmp/many-ind.img" --size 64M --rw randrw --bs 65536 --iodepth 128 --ring-order 4 --verify --json >/dev/null &&
                { [ "$(jfield mismatches)" = 0 ] && [ "$(jfield errors)" = 0 ] && [ "$(jfield ios)" -gt 128 ] ||
                  fail "128 indirect in flight: $(cat "$tmp/out")"; }
        # 4 KiB requests forced through BLKIF_OP_INDIRECT, verified (the
        # verify prefill counts among indirect_requests).
        bench --image "raw:$tmp/old.img" --rw randrw --max-segments 32 --indirect-always --verify --json >/dev/null &&
                { [ "$(jfield indirect_requests)" -ge "$(jfield ios)" ] && [ "$(jfield mismatches)" = 0 ] &&
                  [ "$(jfield verified)" -gt 0 ] && [ "$(jfield max_segments)" = 32 ] ||
                  fail "indirect-always: $(cat "$tmp/out")"; }
else
        if grep -q "offers no indirect" "$tmp/err"; then
                echo "SKIP indirect cases: the backend offers no feature-max-indirect-segments"
        else
                fail "bench --bs 64K:"; cat "$tmp/err" >&2
        fi
fi

# Usage errors.
"$VBD_SIM" "${P[@]}" bench --image null:1M --rw sideways >/dev/null 2>&1; [ $? = 2 ] || fail "--rw sideways"
"$VBD_SIM" "${P[@]}" bench --image null:1M --rw read --bs 1000 >/dev/null 2>&1; [ $? = 2 ] || fail "--bs 1000"
"$VBD_SIM" "${P[@]}" bench --image "raw:$tmp/none.img" --rw read >/dev/null 2>"$tmp/err"; [ $? = 1 ] &&
        grep -q "give --size" "$tmp/err" || fail "missing image without --size"
"$VBD_SIM" "${P[@]}" bench --image null:1M --rw read --iodepth 33 >/dev/null 2>"$tmp/err"; [ $? = 1 ] &&
        grep -q "ring-order" "$tmp/err" || fail "--iodepth above the ring size"
"$VBD_SIM" bench --image null:1M --rw read --bs 64K --max-segments 11 >/dev/null 2>"$tmp/err"; [ $? = 2 ] &&
        grep -q "max-segments" "$tmp/err" || fail "--bs above --max-segments"
"$VBD_SIM" bench --image null:1M --rw read --bs 2M >/dev/null 2>&1; [ $? = 2 ] || fail "--bs 2M"
"$VBD_SIM" --max-segments 257 bench --image null:1M --rw read >/dev/null 2>&1; [ $? = 2 ] || fail "--max-segments 257"
"$VBD_SIM" --protocol sparc-abi bench --image null:1M --rw read >/dev/null 2>&1; [ $? = 2 ] || fail "--protocol sparc-abi"

[ $fails = 0 ] && echo "PASS" || { echo "$fails failures"; exit 1; }
