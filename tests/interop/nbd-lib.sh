# SPDX-License-Identifier: LGPL-2.1-or-later
# Helpers for the NBD export tests (test-nbd-*.sh), on top of
# tests/lib/functions.sh.  Source it after functions.sh:
#
#   start_export SOCK ARGS...  vbdd --export-only --nbd unix:SOCK ARGS... in the
#                              background; waits until it listens; sets $export_pid;
#                              its stderr is appended to $tmp/vbdd.log
#   stop_export                SIGTERM it and check that it exits 0
#   uri SOCK [NAME]            the nbd+unix:// URI of an export
#   $sockdir                   a short directory for sockets (sun_path is 108 bytes)
#   $PY_NBD                    a python3 that has libnbd's "nbd" module, or ""
#
# Environment: VBDD (the real vbdd), set by meson.

: "${VBDD:?}"

sockdir=$(mktemp -d /tmp/vbd-nbd.XXXXXX)
cleanup_fn rm -rf "$sockdir"
_nbd_dir=$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)

# libnbd's python module belongs to the distribution's python3, which may not
# be the first python3 in PATH (pyenv, venvs).
PY_NBD=""
for _py in python3 /usr/bin/python3; do
        if "$_py" -c 'import nbd' 2>/dev/null; then
                PY_NBD=$_py
                break
        fi
done

_kill_export() {
        kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null
        return 0
}

start_export() {
        local sock=$1 i j ctl="" dir="" domid="" devid=""
        shift
        # with a control socket, wait for it too: it is made after the export's
        # (a vbd-ctl call right after the start would find nothing there)
        for ((i = 1; i < $#; i++)); do
                case ${!i} in
                --ctl-dir) j=$((i + 1)) && dir=${!j} ;;
                --domid) j=$((i + 1)) && domid=${!j} ;;
                --devid) j=$((i + 1)) && devid=${!j} ;;
                esac
        done
        [ -n "$dir" ] && [ -n "$domid" ] && [ -n "$devid" ] && ctl=$dir/vbdd-$domid-$devid.sock
        # a daemon killed -9 leaves its sockets behind: without this, the wait
        # below would end at once, before the new daemon has bound them again
        rm -f "$sock" ${ctl:+"$ctl"}
        "$VBDD" --export-only --nbd "unix:$sock" "$@" 2>>"$tmp/vbdd.log" &
        export_pid=$!
        cleanup_fn _kill_export "$export_pid"
        for i in $(seq 200); do
                if [ -S "$sock" ] && { [ -z "$ctl" ] || [ -S "$ctl" ]; }; then
                        sleep 0.05 # bound; listen() follows
                        return 0
                fi
                kill -0 "$export_pid" 2>/dev/null || break
                sleep 0.05
        done
        fail "vbdd --export-only $* did not start"
        cat "$tmp/vbdd.log" >&2
        return 1
}

stop_export() {
        local rc=0
        kill -TERM "$export_pid"
        wait "$export_pid" || rc=$?
        [ "$rc" = 0 ] || fail "vbdd exited with $rc after SIGTERM"
}

uri() {
        echo "nbd+unix:///${2:-}?socket=$1"
}

# nbd_py SCRIPT-ARGS...: run nbd-client.py with libnbd's python
nbd_py() {
        "$PY_NBD" "$_nbd_dir/nbd-client.py" "$@"
}
