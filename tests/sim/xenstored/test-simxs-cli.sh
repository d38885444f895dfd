#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# The real xenstore-utils CLI against vbd-sim-xenstored.
# Usage: test-simxs-cli.sh PATH-TO-vbd-sim-xenstored
set -u

server=${1:?usage: $0 vbd-sim-xenstored}
for t in xenstore-write xenstore-read xenstore-ls xenstore-chmod xenstore-rm xenstore-list \
         xenstore-exists; do
        command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not installed"; exit 77; }
done

dir=$(mktemp -d /tmp/test-simxs-cli.XXXXXX)
pid=
cleanup() {
        [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
        rm -rf "$dir"
}
trap cleanup EXIT

export XENSTORED_PATH="$dir/socket"
"$server" --socket "$XENSTORED_PATH" --log 2>"$dir/log" &
pid=$!
i=0
while [ ! -S "$XENSTORED_PATH" ]; do
        i=$((i + 1))
        [ $i -gt 100 ] && { echo "FAIL: server did not start"; cat "$dir/log"; exit 1; }
        sleep 0.05
done

fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect() { # expect DESCRIPTION WANT GOT
        [ "$2" = "$3" ] || fail "$1: want [$2] got [$3]"
}

xenstore-write /vm/1/name guest1 /vm/1/uuid 1234 || fail "xenstore-write"
expect "read" guest1 "$(xenstore-read /vm/1/name)"
expect "read two" "guest1
1234" "$(xenstore-read /vm/1/name /vm/1/uuid)"
expect "list" "name
uuid" "$(xenstore-list /vm/1)"
xenstore-exists /vm/1/uuid || fail "exists"
xenstore-exists /vm/1/nope 2>/dev/null && fail "exists on a missing node"
xenstore-read /vm/1/nope 2>/dev/null && fail "read of a missing node succeeded"
xenstore-write /vm/bad//path x 2>/dev/null && fail "write of an invalid path succeeded"

expect "ls" 'vm = ""
 1 = ""
  name = "guest1"
  uuid = "1234"' "$(xenstore-ls /)"
expect "ls -f" '/vm/1/name = "guest1"
/vm/1/uuid = "1234"' "$(xenstore-ls -f /vm | grep -v '^/vm/1 =' | grep -v '^/vm =')"

xenstore-chmod /vm/1/name n0 r5 || fail "chmod"
# -p pads with dots up to the permissions: drop them.
perms_of() { xenstore-ls -p "$1" | grep "^$2 " | sed 's/  [. ]*(/ (/'; }
expect "ls -p" 'name = "guest1" (n0,r5)' "$(perms_of /vm/1 name)"
xenstore-chmod -r /vm b3 || fail "chmod -r"
expect "chmod -r" 'uuid = "1234" (b3)' "$(perms_of /vm/1 uuid)"
expect "chmod -r" 'name = "guest1" (b3)' "$(perms_of /vm/1 name)"
xenstore-chmod /vm/1/name x5 2>/dev/null && fail "chmod with a bad mode succeeded"

xenstore-write rel/key relval || fail "relative write"
expect "relative" relval "$(xenstore-read /local/domain/0/rel/key)"

# xenstore-watch: the registration event, then one per change below the path.
xenstore-watch -n 3 /vm >"$dir/watch" 2>&1 &
wpid=$!
i=0
while ! grep -q . "$dir/watch" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && break
        sleep 0.05
done
xenstore-write /vm/1/state 4 || fail "write under a watch"
xenstore-write /elsewhere 1 || fail "write elsewhere"
xenstore-rm /vm/1/state || fail "rm under a watch"
i=0
while kill -0 $wpid 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && { kill $wpid; fail "xenstore-watch did not get 3 events"; break; }
        sleep 0.05
done
wait $wpid 2>/dev/null
expect "watch" "/vm
/vm/1/state
/vm/1/state" "$(cut -d' ' -f1 "$dir/watch")"

xenstore-rm /vm/1/uuid || fail "rm"
xenstore-read /vm/1/uuid 2>/dev/null && fail "read after rm succeeded"
xenstore-rm /vm || fail "rm subtree"
expect "ls after rm" "" "$(xenstore-ls / | grep '^vm')"

# The server logged the requests and is still serving.
grep -q 'WRITE' "$dir/log" || fail "no request log"
expect "still serving" relval "$(xenstore-read rel/key)"

kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
expect "exit status on SIGTERM" 0 "$rc"
[ -e "$XENSTORED_PATH" ] && fail "socket left behind"

if [ $fails -ne 0 ]; then
        echo "--- server log"; cat "$dir/log"
        exit 1
fi
echo "all CLI checks passed"
