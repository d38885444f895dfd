#!/bin/sh
# The whole test suite, as CI runs it: install what is needed, build twice
# (plain, and with AddressSanitizer + UBSan) and run every suite.
#   VBD_SKIP_XEN=1   leave out the real-Xen-in-QEMU suite (long)
set -eu
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

build() { # dir, meson options...
        dir=$1
        shift
        if [ -f "$dir/build.ninja" ]; then
                meson setup --reconfigure "$dir" "$@" >/dev/null
        else
                meson setup "$dir" "$@"
        fi
        ninja -C "$dir"
}

build build
build build-asan -Db_sanitize=address,undefined -Db_lundef=false

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

rc=0
meson test -C build-asan --print-errorlogs --no-suite xen || rc=1
if [ "${VBD_SKIP_XEN:-0}" = 1 ]; then
        meson test -C build --print-errorlogs --no-suite xen || rc=1
else
        meson test -C build --print-errorlogs || rc=1
fi
exit $rc
