# SPDX-License-Identifier: LGPL-2.1-or-later
# Shared helpers for shell tests (tests/interop/*.sh).  Source it:
#
#   . "$(dirname "$0")/../lib/functions.sh"
#
#   requires CMD [ARGS...]   skip the test (exit 77) unless CMD ARGS succeeds
#   cleanup_fn CMD [ARGS...] run CMD at exit (last registered runs first)
#   fail MSG                 count a failure (the test exits 1 at the end)
#   finish                   exit 1 if anything failed, else 0
#   vbd_sim SPEC CMD [ARGS]  run vbd-sim (dd/bench) against the image SPEC,
#                            e.g. vbd_sim qcow2:/tmp/a.qcow2 dd --if data
#   $tmp                     a private scratch directory, removed at exit
#
# Environment: VBD_SIM (vbd-sim) and VBD_SIM_VBDD (vbdd-sim), set by meson.

set -u

_cleanup_cmds=""
_fails=0

_run_cleanups() {
        eval "$_cleanup_cmds"
}
trap _run_cleanups EXIT

cleanup_fn() {
        local q="" a
        for a in "$@"; do
                q="$q '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"
        done
        _cleanup_cmds="$q;
$_cleanup_cmds"
}

requires() {
        if ! "$@" >/dev/null 2>&1; then
                echo "$0: skipped: '$*' failed" >&2
                exit 77
        fi
}

fail() {
        echo "FAIL: $*" >&2
        _fails=$((_fails + 1))
}

finish() {
        if [ "$_fails" -gt 0 ]; then
                echo "$0: $_fails failure(s)" >&2
                exit 1
        fi
        echo "$0: ok"
        exit 0
}

tmp=$(mktemp -d "${VBD_TEST_DIR:-/var/tmp}/vbd-test.XXXXXX")
cleanup_fn rm -rf "$tmp"
export TMPDIR=$tmp

_lib_dir=$(cd "$(dirname "${BASH_SOURCE:-$0}")" && pwd)

# vbd-sim SPEC COMMAND ARGS...: through a wrapper around vbdd-sim that can
# record the daemon's pid and log (VBD_WRAPPER_PIDFILE, VBD_WRAPPER_LOG).
vbd_sim() {
        local spec=$1
        shift
        VBD_REAL_VBDD=$VBD_SIM_VBDD VBD_SIM_VBDD=$_lib_dir/vbdd-wrapper.sh \
                "$VBD_SIM" "$1" --image "$spec" "${@:2}"
}
