#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Runs $VBD_REAL_VBDD (vbdd-sim) for vbd-sim so that tests can reach the
# daemon: with $VBD_WRAPPER_PIDFILE set, its pid is written there (crash
# tests kill it); with $VBD_WRAPPER_LOG, its stderr goes to that file too.
set -eu
: "${VBD_REAL_VBDD:?}"
[ -n "${VBD_WRAPPER_PIDFILE:-}" ] && echo $$ >"$VBD_WRAPPER_PIDFILE"
if [ -n "${VBD_WRAPPER_LOG:-}" ]; then
        exec "$VBD_REAL_VBDD" "$@" 2>>"$VBD_WRAPPER_LOG"
fi
exec "$VBD_REAL_VBDD" "$@"
