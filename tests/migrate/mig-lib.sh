# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the migration tests (test-*.sh here), on top of
# tests/lib/functions.sh.  Source it after functions.sh.  The daemon is
# driven with raw JSON on its control socket (tests/lib/vbdctl.py), not
# with vbd-ctl.
#
#   start_guest NAME SPEC BENCH-ARGS...
#                  a simulated guest: vbd-sim bench BENCH-ARGS --json on the
#                  image SPEC (raw:PATH) in the background, with the source
#                  vbdd-sim's control socket in $run/NAME/; waits until the
#                  ring is connected.  Sets $gsock (control socket) and
#                  $guest_pid; output in $tmp/NAME.out/.err, log $tmp/NAME.vbdd.log
#   stop_guest NAME
#                  SIGTERM the guest (bench stops, reports, detaches) and check
#                  that it exits 0 with no I/O error and no verify mismatch
#   guest_writes   the source's completed guest write requests (stats)
#   wait_writes N [SECS]  wait until the guest completed N more writes
#                  than now (default 20 s); 1 if it did not
#   start_partner KIND NAME IMAGE [EXTRA...]
#                  an NBD partner on $sockdir/NAME.sock: KIND vbdd (vbdd
#                  --export-only --nbd-writable, IMAGE a spec), vbdd-ro (the
#                  same without --nbd-writable), qemu-nbd (raw file), nbdkit
#                  (file plugin), nbdkit-args (IMAGE EXTRA... are nbdkit's
#                  arguments after -U SOCK: filters, plugin, params).
#                  Sets $partner_pid, $psock, $puri (its nbd+unix URI).
#   stop_partner PID    SIGTERM, wait; 0 if it exited 0
#   ctl ARGS...         tests/lib/vbdctl.py (see there)
#   mstart SOCK JSON-ARGS OUT   migrate-start; the reply in OUT; 0 if ok
#   check FILE EXPR [MSG]       vbdctl.py check; a failure is counted
#   expect_err SOCK CMD JSON CODE MSG   CMD must fail with error code CODE
#                                       (or one of CODE1|CODE2...)
#   fill FILE OFF LEN [SRC]     write LEN bytes of SRC (/dev/urandom) at OFF
#   ones FILE SIZE              a file of SIZE bytes 0xff
#   jfield FILE NAME            a field of the JSON object in FILE
#   status FILE                 migrate-status into FILE
#   wait_state STATES SECS FILE wait for one of STATES (comma list)
#   require_migrate             skip (77) if built without libnbd; fail if
#                               migrate-status is not served at all
#   now_ms                      a timestamp in ms
#   pids_with STRING            the live processes whose command line has
#                               STRING (from /proc: zombies have none)
#
# Environment (meson): VBDD, VBD_SIM, VBD_SIM_VBDD.

: "${VBDD:?}" "${VBD_SIM:?}" "${VBD_SIM_VBDD:?}"
KiB=1024
MiB=$((1 << 20))
_mig_dir=$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)
# python3 for vbdctl.py: the system's when there is one (a pyenv shim costs
# half a second per call on a loaded machine, and the cutover window is short)
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x /usr/bin/python3 ] && PY=/usr/bin/python3

# Sockets: sun_path is 108 bytes, the build dir may be deep.
sockdir=$(mktemp -d /tmp/vbd-mig.XXXXXX)
cleanup_fn rm -rf "$sockdir"
run=$sockdir/run

ctl() {
        "$PY" "$_lib_dir/vbdctl.py" "$@"
}

check() {
        ctl check "$@" || fail "${3:-$2}"
}

# mstart SOCK ARGS-JSON OUT: migrate-start, reply (result or error) in OUT
mstart() {
        ctl "$1" migrate-start "$2" >"$3"
}

# expect_err SOCK CMD ARGS-JSON CODE WHAT
expect_err() {
        local out=$tmp/expect.json
        if ctl "$1" "$2" "$3" >"$out"; then
                fail "$5: $2 $3 succeeded: $(cat "$out")"
                return 1
        fi
        ctl check "$out" "code in '$4'.split('|') and len(message) > 0" "$5: $2 $3" || {
                fail "$5: $2 $3: expected $4: $(cat "$out")"
                return 1
        }
        echo "# $5: $2 -> $(cat "$out")"
}

fill() { # FILE OFF LEN [SRC]
        head -c "$3" "${4:-/dev/urandom}" |
                dd of="$1" bs=1M seek="$2" oflag=seek_bytes conv=notrunc status=none
}

# ones FILE SIZE: a file of SIZE bytes of 0xff (a partner image that is not
# zeros, so that a hole the copier failed to send shows)
ones() {
        head -c "$2" /dev/zero | tr '\0' '\377' >"$1"
}

_stop_pid() { # PID SIGNAL: signal and reap within 15 s, else SIGKILL
        local i
        kill -"$2" "$1" 2>/dev/null || return 0
        for i in $(seq 150); do
                kill -0 "$1" 2>/dev/null || break
                sleep 0.1
        done
        kill -KILL "$1" 2>/dev/null
        wait "$1" 2>/dev/null
        return 0
}

start_guest() {
        local name=$1 spec=$2 i
        shift 2
        mkdir -p "$run/$name"
        gsock=$run/$name/vbdd-1-51712.sock
        # (like vbd_sim, but $! is vbd-sim itself: signals reach it)
        VBD_RUNTIME_DIR=$run/$name VBD_WRAPPER_LOG=$tmp/$name.vbdd.log \
                VBD_REAL_VBDD=$VBD_SIM_VBDD VBD_SIM_VBDD=$_lib_dir/vbdd-wrapper.sh \
                "$VBD_SIM" bench --image "$spec" --json "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
        guest_pid=$!
        eval "guest_pid_$name=$guest_pid"
        cleanup_fn _stop_pid "$guest_pid" TERM
        if ! ctl "$gsock" wait-info connected true 60; then
                fail "guest $name did not connect"
                cat "$tmp/$name.err" "$tmp/$name.vbdd.log" >&2
                return 1
        fi
}

stop_guest() {
        local name=$1 pid rc=0
        eval "pid=\$guest_pid_$name"
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" || rc=$?
        if [ $rc != 0 ]; then
                fail "guest $name: vbd-sim bench exited $rc"
                cat "$tmp/$name.out" "$tmp/$name.err" >&2
                tail -30 "$tmp/$name.vbdd.log" >&2
                return 1
        fi
        tail -1 "$tmp/$name.out" >"$tmp/$name.json"
        ctl check "$tmp/$name.json" "errors == 0 and mismatches == 0 and ios > 0" \
                "guest $name: I/O errors or verify mismatches" || {
                fail "guest $name: $(cat "$tmp/$name.out" "$tmp/$name.err")"
                return 1
        }
        echo "# guest $name: $("$PY" -c '
import json, sys
j = json.load(open(sys.argv[1]))
print("%d ios (%d writes) in %.1f s, %d reads verified, %d mismatches, %d errors" % (
    j["ios"], j["writes"], j["runtime_s"], j["verified"], j["mismatches"], j["errors"]))' "$tmp/$name.json")"
}

guest_writes() {
        ctl "$gsock" stats | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["ops"]["write"]["requests"])'
}

# wait_writes N [SECONDS]: the guest completes N more writes within SECONDS
wait_writes() {
        local n0 n i
        n0=$(guest_writes) || return 1
        for i in $(seq $((${2:-20} * 20))); do
                n=$(guest_writes) || return 1
                [ "$n" -ge $((n0 + $1)) ] && return 0
                sleep 0.05
        done
        return 1
}

_wait_sock() { # SOCK PID
        local i
        for i in $(seq 200); do
                if [ -S "$1" ]; then
                        sleep 0.1 # bind comes before listen
                        return 0
                fi
                kill -0 "$2" 2>/dev/null || return 1
                sleep 0.05
        done
        return 1
}

start_partner() {
        local kind=$1 name=$2 image=$3
        shift 3
        psock=$sockdir/$name.sock
        puri="nbd+unix:///?socket=$psock"
        case $kind in
        vbdd)
                env -u VBD_RUNTIME_DIR "$VBDD" --export-only --image "$image" \
                        --nbd "unix:$psock" --nbd-writable "$@" 2>>"$tmp/$name.log" &
                ;;
        vbdd-ro)
                env -u VBD_RUNTIME_DIR "$VBDD" --export-only --image "$image" \
                        --nbd "unix:$psock" "$@" 2>>"$tmp/$name.log" &
                ;;
        qemu-nbd)
                qemu-nbd -f raw -k "$psock" --cache=none "$@" "$image" 2>>"$tmp/$name.log" &
                ;;
        nbdkit)
                nbdkit -f -U "$psock" "$@" file "$image" 2>>"$tmp/$name.log" &
                ;;
        nbdkit-args)
                nbdkit -f -U "$psock" "$image" "$@" 2>>"$tmp/$name.log" &
                ;;
        *)
                echo "start_partner: unknown kind $kind" >&2
                exit 2
                ;;
        esac
        partner_pid=$!
        cleanup_fn _stop_pid "$partner_pid" TERM
        if ! _wait_sock "$psock" "$partner_pid"; then
                fail "partner $kind $name did not start"
                cat "$tmp/$name.log" >&2
                return 1
        fi
}

stop_partner() {
        local rc=0
        kill -TERM "$1" 2>/dev/null || return 1
        wait "$1" || rc=$?
        return $rc
}

# jfield FILE NAME: a field of the JSON object in FILE
jfield() {
        "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# status FILE: migrate-status into FILE
status() {
        ctl "$gsock" migrate-status >"$1" || fail "migrate-status: $(cat "$1")"
}

# wait_state STATES SECONDS FILE: wait for a state; the status in FILE
wait_state() {
        ctl "$gsock" wait "$1" "$2" "$3" >/dev/null || {
                fail "waiting for state $1: $(cat "$3")"
                return 1
        }
}

# the migration is in the daemon; refuse to run against one that lacks it
require_migrate() {
        local out=$tmp/probe.json
        if ctl "$gsock" migrate-status >"$out"; then
                return 0
        fi
        if ctl check "$out" "code == 'EOPNOTSUPP' and 'unknown command' not in message" \
                >/dev/null 2>&1; then
                echo "$0: skipped: vbdd built without migration: $(cat "$out")" >&2
                exit 77
        fi
        fail "migrate-status is not served: $(cat "$out")"
        finish
}

now_ms() {
        date +%s%3N
}

pids_with() {
        local d cmd
        for d in /proc/[0-9]*; do
                cmd=$(tr '\0' ' ' 2>/dev/null <"$d/cmdline") || continue
                [[ $cmd == *"$1"* ]] && echo "${d#/proc/}"
        done
        return 0
}
