# SPDX-License-Identifier: LGPL-2.1-or-later
# Shared by the mount suite's tests (after functions.sh; $tmp is the test's).

# leftovers WHAT: nothing of ours may be left: processes, loop devices,
# mounts (FUSE or not), state.
leftovers() {
        local p bad=""
        for p in $(grep -las -- "$tmp/ru[n]" /proc/[0-9]*/cmdline); do
                bad="$bad process $(tr '\0' ' ' 2>/dev/null <"$p");"
        done
        losetup -a | grep -q -- "$tmp" && bad="$bad loop: $(losetup -a | grep -- "$tmp");"
        grep -q -- "$tmp" /proc/mounts && bad="$bad mount: $(grep -- "$tmp" /proc/mounts);"
        [ -z "$(ls -A "$tmp/run/mounts" 2>/dev/null)" ] ||
                bad="$bad state: $(ls -A "$tmp/run/mounts");"
        [ -z "$bad" ] || fail "$1: left behind:$bad"
}
