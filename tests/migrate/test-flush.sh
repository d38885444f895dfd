#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# A guest flush is a barrier for the forwards before it, on a partner that
# answers writes slowly: nbdkit file behind its delay filter (every write
# answered after 3 s, flushes at once; multi-conn, so the copier has
# connections of its own).  The guest is vbd-sim dd reading a fifo into the
# disk once the migration is ready: 4 MiB (A) whose forwards are left to
# drain, then 4 MiB more (B), then end of input, on which dd sends a flush
# and exits once it is answered.  The partner is then killed at once
# (SIGKILL): its file must hold A and B.  A mirror that answered the flush
# before the forwards in front of it fails this (B's writes still sleep in
# the delay filter when the partner dies).  Also: dd's sequential writes
# (44 KiB ring requests) are coalesced into fewer NBD writes.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"
requires nbdkit --filter=delay null --version

size=$((64 * MiB))
seek=$((8 * MiB))
src=$tmp/src.img
dst=$tmp/dst.img
truncate -s $size "$src"
truncate -s $size "$dst"
head -c $((4 * MiB)) /dev/urandom >"$tmp/a"
head -c $((4 * MiB)) /dev/urandom >"$tmp/b"
cat "$tmp/a" "$tmp/b" >"$tmp/ab"

start_partner nbdkit-args nk --filter=delay file "$dst" delay-write=3 || finish
nk_pid=$partner_pid

# The fifo stays open for writing here (fd 3) until the end of input; no
# other process may hold it, or dd never sees the end.
fifo=$tmp/in.fifo
mkfifo "$fifo"
exec 3<>"$fifo"
mkdir -p "$run/d"
gsock=$run/d/vbdd-1-51712.sock
VBD_RUNTIME_DIR=$run/d VBD_WRAPPER_LOG=$tmp/d.vbdd.log \
        VBD_REAL_VBDD=$VBD_SIM_VBDD VBD_SIM_VBDD=$_lib_dir/vbdd-wrapper.sh \
        "$VBD_SIM" --stall-timeout 60 dd --image "raw:$src" --if "$fifo" --seek $seek \
        >"$tmp/dd.out" 2>"$tmp/dd.err" 3>&- &
dd_pid=$!
cleanup_fn _stop_pid "$dd_pid" TERM
ctl "$gsock" wait-info connected true 60 || {
        fail "dd did not connect: $(cat "$tmp/dd.err")"
        finish
}
require_migrate
mstart "$gsock" "{\"to\": \"$puri\", \"zeroed\": true, \"timeout\": 60}" "$tmp/start.json" ||
        { fail "migrate-start: $(cat "$tmp/start.json")"; finish; }
wait_state ready 60 "$tmp/ready.json" || finish
check "$tmp/ready.json" "multi_conn and connections >= 2" "the copier's connections are up"

# A: written, forwarded, answered (3 s later)
cat "$tmp/a" >&3
ok=
for i in $(seq 600); do
        status "$tmp/a.json"
        if ctl check "$tmp/a.json" "bytes_forwarded >= 4 * $MiB and partner_inflight == 0" \
                >/dev/null 2>&1; then
                ok=1
                break
        fi
        sleep 0.1
done
[ -n "$ok" ] || fail "the forwards of A were not answered: $(cat "$tmp/a.json")"
echo "# after A: $(cat "$tmp/a.json")"
check "$tmp/a.json" "bytes_forwarded == 4 * $MiB and forward_requests < writes_forwarded" \
        "A's contiguous writes coalesced into fewer NBD writes"

# B, then the end of input: dd flushes and exits once the flush is answered
cat "$tmp/b" >&3
exec 3>&-
rc=0
wait "$dd_pid" || rc=$?
kill -KILL "$nk_pid" 2>/dev/null
[ $rc = 0 ] || fail "dd exited $rc: $(cat "$tmp/dd.err")"
wait "$nk_pid" 2>/dev/null
cmp -n $((8 * MiB)) "$tmp/ab" "$dst" 0 $seek ||
        fail "the partner's file lacks writes acknowledged before the guest's flush"
cmp -n $((8 * MiB)) "$tmp/ab" "$src" 0 $seek || fail "the source lacks dd's data"
finish
