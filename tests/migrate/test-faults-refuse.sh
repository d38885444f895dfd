#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# What migrate-start refuses and how a migration is stopped, a verified guest
# load running throughout:
#  - bad arguments: EINVAL each, and no migration starts;
#  - abort/cutover with nothing running: ENOENT / EAGAIN;
#  - abort mid-copy: "aborted", the partner gets nothing more, the source's
#    data untouched, the guest goes on; while copying, a second start is
#    EBUSY and a cutover EAGAIN;
#  - a partner that is not there (missing socket, refused TCP port), a bad
#    URI, a partner smaller than the source, a read-only partner, one that
#    cannot flush (nbdkit's full plugin): the start
#    is refused or the migration fails, with an error that says so;
#  - a start while the VBD is paused leaves it paused until a resume;
#  - the guest detaching while "ready": vbdd exits 0;
#  - a read-only VBD: EROFS;  a VBD with its own NBD export: EBUSY.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/mig-lib.sh"

size=$((64 * MiB))
src=$tmp/src.img
truncate -s $size "$src"
fill "$src" $((16 * MiB)) $((32 * MiB))
cp --sparse=always "$src" "$tmp/orig.img"
data_intact() {
        cmp -s -i $((16 * MiB)) "$src" "$tmp/orig.img" || fail "$1: the source's data region changed"
}

dst=$tmp/dst.img
truncate -s $size "$dst"
start_partner vbdd p "raw:$dst" || finish
puri_ok=$puri
ppid_ok=$partner_pid

start_guest g "raw:$src" --rw randrw --verify --iodepth 16 --bs 4096 --size 16M \
        --runtime 600 --seed 9 || finish
gs=$gsock
require_migrate
wait_writes 1000 30 || fail "the guest is not writing"

# ---- nothing running ----
expect_err "$gs" migrate-abort '' ENOENT "abort with no migration"
expect_err "$gs" migrate-cutover '' 'EAGAIN|ENOENT' "cutover with no migration"

# ---- bad arguments: EINVAL, nothing starts ----
for a in '{}' '{"to": 5}' '{"to": ""}' "{\"to\": \"$puri_ok\", \"mode\": \"postcopy\"}" \
        "{\"to\": \"$puri_ok\", \"share\": 0}" "{\"to\": \"$puri_ok\", \"share\": 101}" \
        "{\"to\": \"$puri_ok\", \"region\": 3000}" "{\"to\": \"$puri_ok\", \"region\": 32768}" \
        "{\"to\": \"$puri_ok\", \"region\": $((128 * MiB))}" \
        "{\"to\": \"$puri_ok\", \"timeout\": 0}" "{\"to\": \"$puri_ok\", \"timeout\": 3601}" \
        "{\"to\": \"$puri_ok\", \"depth\": 0}" "{\"to\": \"$puri_ok\", \"depth\": 65}" \
        "{\"to\": \"$puri_ok\", \"rate\": -1}" "{\"to\": \"$puri_ok\", \"zeroed\": \"yes\"}" \
        "{\"to\": \"$puri_ok\", \"share\": \"50\"}"; do
        expect_err "$gs" migrate-start "$a" EINVAL "bad arguments"
done
status "$tmp/none.json"
check "$tmp/none.json" "state == 'none'" "a refused start left a migration behind"

# ---- abort mid-copy ----
mstart "$gs" "{\"to\": \"$puri_ok\", \"rate\": $((4 * MiB))}" "$tmp/d.start.json" ||
        fail "(d) migrate-start: $(cat "$tmp/d.start.json")"
for i in $(seq 200); do
        status "$tmp/d.st.json"
        ctl check "$tmp/d.st.json" "state == 'copying' and regions_synced >= 4" 2>/dev/null && break
        sleep 0.05
done
check "$tmp/d.st.json" "state == 'copying' and 4 <= regions_synced < regions_total" "(d) mid-copy"
expect_err "$gs" migrate-start "{\"to\": \"$puri_ok\"}" EBUSY "second start while copying"
expect_err "$gs" migrate-cutover '' EAGAIN "cutover while copying"
ctl "$gs" migrate-abort >"$tmp/d.abort.json" || fail "(d) abort: $(cat "$tmp/d.abort.json")"
check "$tmp/d.abort.json" "state == 'aborted' and regions_synced < regions_total" "(d) abort reply"
sleep 0.3
sum1=$(md5sum <"$dst")
wait_writes 2000 20 || fail "(d) the guest's I/O stopped after the abort"
sleep 0.5
status "$tmp/d.st2.json"
check "$tmp/d.st2.json" "state == 'aborted'" "(d) status after abort"
[ "$(md5sum <"$dst")" = "$sum1" ] || fail "(d) the partner's image still changes after the abort"
expect_err "$gs" migrate-abort '' ENOENT "abort after abort"
data_intact "(d)"

# ---- partners that cannot be used ----
# start_fails URI WHAT: the start is refused (an error reply) or the
# migration fails, with an error saying why (in $emsg)
start_fails() {
        local uri=$1 what=$2 t0
        t0=$(now_ms)
        emsg=""
        if ! mstart "$gs" "{\"to\": \"$uri\"}" "$tmp/e.json"; then
                ctl check "$tmp/e.json" "len(message) > 0 and code != 'EBUSY'" "$what: refused" ||
                        fail "$what: $(cat "$tmp/e.json")"
                echo "# $what: start refused: $(cat "$tmp/e.json")"
                emsg=$(jfield "$tmp/e.json" message)
                return 0
        fi
        wait_state failed 20 "$tmp/e.json" || return 1
        check "$tmp/e.json" "len(error) > 0" "$what: failed with an error"
        emsg=$(jfield "$tmp/e.json" error)
        echo "# $what: failed after $(($(now_ms) - t0)) ms: $emsg"
}
start_fails "nbd+unix:///?socket=$sockdir/nothing.sock" "missing partner socket"
start_fails "nbd://127.0.0.1:1" "refused TCP port"
start_fails "bogus://where" "bad URI"
start_fails "nbd://[::1" "malformed URI"

truncate -s $((size - MiB)) "$tmp/small.img"
start_partner vbdd ps "raw:$tmp/small.img" || finish
start_fails "$puri" "partner smaller than the source"
case ${emsg,,} in *size* | *small* | *large*) ;; *) echo "# note: the error does not mention the size" ;; esac
cmp -s "$tmp/small.img" <(head -c $((size - MiB)) /dev/zero) || fail "the smaller partner was written to"
_stop_pid "$partner_pid" TERM

truncate -s $size "$tmp/ro.img"
start_partner vbdd-ro pr "raw:$tmp/ro.img" || finish
start_fails "$puri" "read-only partner"
cmp -s "$tmp/ro.img" <(head -c $size /dev/zero) || fail "the read-only partner was written to"
_stop_pid "$partner_pid" TERM

if nbdkit full --version >/dev/null 2>&1; then
        start_partner nbdkit-args pf full $size || finish
        start_fails "$puri" "partner without flush (nbdkit full)"
        case ${emsg,,} in *flush*) ;; *) fail "partner without flush: the error does not say so: $emsg" ;; esac
        _stop_pid "$partner_pid" TERM
fi

wait_writes 1000 20 || fail "the guest's I/O stopped"
data_intact "(e)"
# ---- a start while the VBD is paused (vbd-ctl pause) keeps it paused ----
ctl "$gs" pause >/dev/null || fail "pause"
mstart "$gs" "{\"to\": \"$puri_ok\", \"rate\": $((4 * MiB))}" "$tmp/pz.json" ||
        fail "start while paused: $(cat "$tmp/pz.json")"
ctl "$gs" info >"$tmp/pz.info.json"
n0=$(guest_writes)
sleep 0.5
[ "$(guest_writes)" = "$n0" ] || fail "start while paused: the guest wrote"
ctl "$gs" resume >/dev/null || fail "resume"
check "$tmp/pz.info.json" "state == 'paused'" "start while paused: the VBD stays paused"
wait_writes 1000 20 || fail "start while paused: the guest's I/O did not resume"
ctl "$gs" migrate-abort >/dev/null || fail "start while paused: abort"

# the partner that works still does: from scratch to ready; then the guest
# goes away (disconnect, detach) with the migration live: vbdd exits 0
mstart "$gs" "{\"to\": \"$puri_ok\"}" "$tmp/ok.json" || fail "start after refusals: $(cat "$tmp/ok.json")"
wait_state ready 120 "$tmp/ok.json"
stop_guest g
grep -q 'exiting' "$tmp/g.vbdd.log" || fail "vbdd-sim did not log its exit"
stop_partner "$ppid_ok" || fail "partner did not exit 0"

# ---- a read-only VBD: EROFS ----
ro=$tmp/ro-src.img
head -c $((8 * MiB)) /dev/urandom >"$ro"
start_guest r "raw:$ro" --mode r --rw randread --verify --iodepth 1 --runtime 600 || finish
expect_err "$gsock" migrate-start "{\"to\": \"$puri_ok\"}" EROFS "read-only VBD"
status "$tmp/r.json"
check "$tmp/r.json" "state == 'none'" "read-only VBD: nothing started"
stop_guest r

# ---- a VBD with its own NBD export: EBUSY ----
cat >"$tmp/wrap.sh" <<WRAP
#!/bin/sh
exec "$VBD_SIM_VBDD" "\$@" --nbd "unix:$sockdir/own.sock"
WRAP
chmod +x "$tmp/wrap.sh"
real=$VBD_SIM_VBDD
VBD_SIM_VBDD=$tmp/wrap.sh
truncate -s $((8 * MiB)) "$tmp/n.img"
start_guest n "raw:$tmp/n.img" --rw randwrite --verify --iodepth 1 --runtime 600 || finish
VBD_SIM_VBDD=$real
expect_err "$gsock" migrate-start "{\"to\": \"nbd+unix:///?socket=$sockdir/nothing.sock\"}" EBUSY \
        "VBD with an NBD export"
wait_writes 200 20 || fail "the guest with an NBD export does not write"
stop_guest n
finish
