#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl mount / umount / mount --list, through vbdd, nbdfuse and a loop
# device (the path of machines without the nbd module, like CI's): a GPT
# disk with two partitions, a whole-disk ext4, a qcow2 chain written through
# the mount and read back without it (qemu-img convert + debugfs, and the
# simulated guest); bad input refused with a clear message and nothing left
# behind (no vbdd, nbdfuse, loop device or FUSE mount, no state); a
# running guest's disk, read-only, through its vbdd's snapshot.
. "$(dirname "$0")/../lib/functions.sh"
: "${VBD_CTL:?}" "${VBDD:?}"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: mounting needs root"; exit 77; }
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }
for p in losetup mkfs.ext4 debugfs nbdfuse sfdisk qemu-img blkid partx; do
        command -v $p >/dev/null || { echo "SKIP: no $p (scripts/install-deps.sh)"; exit 77; }
done
losetup -f >/dev/null 2>&1 || { echo "SKIP: no free loop device"; exit 77; }

export VBD_VBDD=$VBDD VBD_RUN_DIR=$tmp/run VBD_MOUNT_VIA=fuse
MiB=$((1 << 20))
mnt=$tmp/mnt
mkdir -p "$mnt" "$tmp/mnt2" "$tmp/plain"
vctl() { "$VBD_CTL" "$@"; }
# ms since the epoch
now() { date +%s%3N; }

# Whatever the test leaves mounted is undone at exit.
cleanup_all() {
        local d
        for d in "$mnt" "$tmp/mnt2"; do
                vctl umount "$d" >/dev/null 2>&1
        done
}
cleanup_fn cleanup_all

. "$(dirname "$0")/mount-lib.sh"

# must_fail WHAT PATTERN ARGS...: vbd-ctl ARGS fails, saying PATTERN, and
# leaves nothing behind.
must_fail() {
        local what=$1 pat=$2
        shift 2
        if vctl "$@" >"$tmp/out" 2>"$tmp/err"; then
                fail "$what: succeeded: $(cat "$tmp/out")"
                vctl umount "$mnt" >/dev/null 2>&1
        elif ! grep -q -- "$pat" "$tmp/err"; then
                fail "$what: want '$pat', got: $(cat "$tmp/err")"
        else
                echo "$what: refused: $(cat "$tmp/err")"
        fi
}

# --- 1. A GPT disk with two partitions ---
vfat=""
grep -qw vfat /proc/filesystems && command -v mkfs.vfat >/dev/null && vfat=1
gpt=$tmp/gpt.img
truncate -s $((64 * MiB)) "$gpt"
printf 'label: gpt\n,20M,L\n,,L\n' | sfdisk -q "$gpt" || fail "sfdisk"
read -r s1 n1 s2 n2 < <(partx -g -o START,SECTORS "$gpt" | tr '\n' ' ')
mkfs.ext4 -q -F -L one -E offset=$((s1 * 512)) "$gpt" $((n1 / 2))k || fail "mkfs.ext4 p1"
if [ -n "$vfat" ]; then
        mkfs.vfat --offset "$s2" "$gpt" $((n2 / 2)) >/dev/null || fail "mkfs.vfat p2"
        p2fs=vfat
else # no vfat in this kernel: a second ext4
        mkfs.ext4 -q -F -L two -E offset=$((s2 * 512)) "$gpt" $((n2 / 2))k || fail "mkfs.ext4 p2"
        p2fs=ext4
fi

must_fail "two partitions, no --partition" "1 (20.0 MiB, ext4), 2 (42.0 MiB, $p2fs)" \
        mount "$gpt" "$mnt"
leftovers "two partitions"
must_fail "--partition 3" "no partition 3" mount "$gpt" "$mnt" --partition 3
leftovers "--partition 3"

t0=$(now)
vctl mount "$gpt" "$mnt" --partition 1 --rw >"$tmp/out" 2>&1 || fail "mount p1: $(cat "$tmp/out")"
echo "GPT partition 1: $(cat "$tmp/out") (wall $(($(now) - t0)) ms)"
grep -q "$mnt ext4 rw" /proc/mounts || fail "p1 not mounted rw: $(grep "$mnt" /proc/mounts)"
echo "written through vbd-ctl mount" >"$mnt/p1.txt"
vctl mount --list >"$tmp/list" || fail "mount --list"
grep -q "$mnt .*$gpt .*loop[0-9]*p1 .*fuse+loop rw  mounted" "$tmp/list" ||
        fail "mount --list: $(cat "$tmp/list")"
vctl --json mount --list >"$tmp/list.json" || fail "mount --list --json"
python3 -c 'import json,sys
l = json.load(open(sys.argv[1]))
assert len(l) == 1 and l[0]["dir"] == sys.argv[2] and l[0]["partition"] == 1, l
assert l[0]["rw"] and not l[0]["stale"] and l[0]["image"] == sys.argv[3], l' \
        "$tmp/list.json" "$mnt" "$gpt" || fail "mount --list --json: $(cat "$tmp/list.json")"
t0=$(now)
vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount p1: $(cat "$tmp/out")"
echo "umount: $(($(now) - t0)) ms"
leftovers "umount p1"
# read back without vbd: debugfs on the raw file at the partition's offset
[ "$(debugfs -R 'cat /p1.txt' "$gpt?offset=$((s1 * 512))" 2>/dev/null)" = \
        "written through vbd-ctl mount" ] || fail "p1.txt not in the image (debugfs)"

vctl mount "$gpt" "$mnt" --partition 2 >"$tmp/out" 2>&1 || fail "mount p2: $(cat "$tmp/out")"
grep -q "$mnt $p2fs ro" /proc/mounts || fail "p2 not mounted ro: $(grep "$mnt" /proc/mounts)"
touch "$mnt/x" 2>/dev/null && fail "wrote to a read-only mount"
vctl umount "$mnt" >/dev/null 2>&1 || fail "umount p2"
leftovers "umount p2"

# --- 2. A filesystem on the whole disk; bad input around it ---
whole=$tmp/whole.img
truncate -s $((32 * MiB)) "$whole"
mkfs.ext4 -q -F "$whole" || fail "mkfs.ext4 whole"
must_fail "unknown --fstype" "unknown filesystem type 'nosuchfs'" \
        mount "$whole" "$mnt" --fstype nosuchfs
must_fail "--partition on a disk without a table" "no partition table" \
        mount "$whole" "$mnt" --partition 1
leftovers "--partition 1 on the whole disk"
vctl mount "$whole" "$mnt" --rw --fstype ext4 >"$tmp/out" 2>&1 ||
        fail "mount whole: $(cat "$tmp/out")"
echo "whole disk: $(cat "$tmp/out")"
# in use by a writer: a second mount is refused with the holder (vbdd's lock)
must_fail "a second read-write mount" "is in use: failed to get \"write\" lock: pid [0-9]* (vbdd)" \
        mount "$whole" "$tmp/mnt2" --rw
must_fail "a read-only mount of an image in use" "is in use" mount "$whole" "$tmp/mnt2"
must_fail "a mount point that is mounted" "already a mount point" mount "$gpt" "$mnt" --partition 1
# busy: a file open inside; umount refuses, says who, and keeps it all
echo data >"$mnt/busy"
exec 7<"$mnt/busy"
must_fail "umount of a busy mount" "busy: in use by pid $$ (test-mount.sh): nothing was unmounted" umount "$mnt"
grep -q "$mnt ext4 rw" /proc/mounts || fail "busy umount unmounted it anyway"
vctl mount --list | grep -q "$mnt .* mounted" || fail "busy umount dropped the state"
exec 7<&-
vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount after busy: $(cat "$tmp/out")"
leftovers "umount whole"
[ "$(debugfs -R 'cat /busy' "$whole" 2>/dev/null)" = data ] || fail "busy not in the image"

# nothing to mount
truncate -s $((16 * MiB)) "$tmp/empty.img"
must_fail "no table, no filesystem" "no partition table and no filesystem found" \
        mount "$tmp/empty.img" "$mnt"
leftovers "no table, no filesystem"
# a GPT whose headers (primary and backup) are gone: no table
cp "$gpt" "$tmp/corrupt.img"
dd if=/dev/zero of="$tmp/corrupt.img" bs=512 seek=1 count=33 conv=notrunc status=none
dd if=/dev/zero of="$tmp/corrupt.img" bs=512 seek=$((64 * 2048 - 33)) count=33 conv=notrunc status=none
must_fail "corrupt GPT" "no partition table and no filesystem found" mount "$tmp/corrupt.img" "$mnt"
leftovers "corrupt GPT"
must_fail "umount of a directory vbd did not mount" "not mounted by vbd-ctl mount" umount "$tmp/plain"
must_fail "umount of /" "not mounted by vbd-ctl mount" umount /
must_fail "a missing image" "No such file" mount "$tmp/nope.img" "$mnt"
must_fail "a missing mount point" "No such file" mount "$whole" "$tmp/nope"

# --- 3. A qcow2 chain: written through the mount, read back without it ---
base=$tmp/base.qcow2
top=$tmp/top.qcow2
truncate -s $((64 * MiB)) "$tmp/fs.raw"
mkfs.ext4 -q -F "$tmp/fs.raw" || fail "mkfs.ext4 fs.raw"
qemu-img convert -q -f raw -O qcow2 "$tmp/fs.raw" "$base" || fail "convert base"
qemu-img create -q -f qcow2 -b "$base" -F qcow2 "$top" || fail "create top"
t0=$(now)
vctl mount "$top" "$mnt" --rw >"$tmp/out" 2>&1 || fail "mount qcow2: $(cat "$tmp/out")"
echo "qcow2 chain: $(cat "$tmp/out") (wall $(($(now) - t0)) ms)"
head -c $((3 * MiB)) /dev/urandom >"$tmp/big"
cp "$tmp/big" "$mnt/big"
echo "through the chain" >"$mnt/f"
vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount qcow2: $(cat "$tmp/out")"
leftovers "umount qcow2"
qemu-img check -q "$top" || fail "qemu-img check top: $(qemu-img check "$top" 2>&1)"
qemu-img compare -q -f raw -F qcow2 "$tmp/fs.raw" "$base" || fail "the base changed"
qemu-img convert -q -O raw "$top" "$tmp/top.raw" || fail "convert top"
[ "$(debugfs -R 'cat /f' "$tmp/top.raw" 2>/dev/null)" = "through the chain" ] ||
        fail "qemu-img convert + debugfs: /f is not there"
debugfs -R "dump /big $tmp/big.back" "$tmp/top.raw" >/dev/null 2>&1
cmp -s "$tmp/big" "$tmp/big.back" || fail "qemu-img convert + debugfs: /big differs"
# and as the guest sees it: the simulated guest reads the disk through the ring
if [ -n "${VBD_SIM:-}" ] && [ -n "${VBD_SIM_VBDD:-}" ]; then
        vbd_sim "qcow2:$top" dd --mode r --of "$tmp/guest.raw" >/dev/null 2>&1 ||
                fail "vbd-sim dd of the chain"
        cmp -s "$tmp/guest.raw" "$tmp/top.raw" || fail "the guest's view differs from qemu-img's"
fi
# read-only, through vbd-ctl again
vctl mount "$top" "$mnt" >/dev/null 2>&1 || fail "mount qcow2 ro"
cmp -s "$tmp/big" "$mnt/big" || fail "big read back through a read-only mount differs"
vctl umount "$mnt" >/dev/null 2>&1 || fail "umount qcow2 ro"
leftovers "umount qcow2 ro"
# a backing file that is missing
mv "$base" "$tmp/moved.qcow2"
must_fail "a missing backing file" "backing file '$base': No such file" mount "$top" "$mnt"
leftovers "missing backing file"
mv "$tmp/moved.qcow2" "$base"

# --- 4. A stale mount (its processes killed): listed as stale, umount cleans up ---
vctl mount "$whole" "$mnt" >/dev/null 2>&1 || fail "mount for stale"
umount "$mnt" # behind vbd's back
vctl mount --list | grep -q "$mnt .*stale" || fail "not listed stale: $(vctl mount --list)"
must_fail "a mount over a stale one" "cleans it up first" mount "$whole" "$mnt"
vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount stale: $(cat "$tmp/out")"
leftovers "umount stale"

# --- 5. A running guest's disk: read-only through its vbdd's snapshot ---
# A simulated guest (vbd-sim dd, its vbdd-sim serving the raw disk writable)
# holds an ext4 with files.  vbd-ctl mount of it read-only goes through the
# guest's daemon's snapshot job; then the guest overwrites the whole disk,
# end to end, and with the caches dropped every file under the mount is
# still what it was.  --rw is refused naming the daemon.
if [ -n "${VBD_SIM:-}" ] && [ -n "${VBD_SIM_VBDD:-}" ]; then
        export VBD_RUNTIME_DIR=$tmp/ctl # vbdd-sim's control dir, and vbd-ctl's
        live=$tmp/live.img
        mkdir -p "$VBD_RUNTIME_DIR" "$tmp/tree/sub/deeper"
        for i in 1 2 3 4 5 6; do
                head -c $((i * 700 * 1024 + i)) /dev/urandom >"$tmp/tree/f$i"
        done
        head -c $((5 * MiB)) /dev/urandom >"$tmp/tree/sub/big"
        echo "a small one" >"$tmp/tree/sub/deeper/small"
        truncate -s $((48 * MiB)) "$live"
        mkfs.ext4 -q -F -d "$tmp/tree" "$live" || fail "mkfs.ext4 -d"
        (cd "$tmp/tree" && find . -type f | sort | xargs sha256sum) >"$tmp/tree.sha"
        head -c $((48 * MiB)) /dev/urandom >"$tmp/noise"
        # the guest: attached and idle until $tmp/go, then the noise over the
        # whole disk (4 MiB writes from 0 to the end), idle again until $tmp/done
        (
                while [ ! -e "$tmp/go" ]; do sleep 0.05; done
                cat "$tmp/noise"
                while [ ! -e "$tmp/done" ]; do sleep 0.05; done
        ) | vbd_sim "raw:$live" dd --if - >"$tmp/guest.log" 2>&1 &
        guest=$!
        cleanup_fn touch "$tmp/done"
        for i in $(seq 200); do
                vctl info -d 1 -n 51712 2>/dev/null | grep -q "^state *connected" && break
                sleep 0.05
        done
        gpid=$(vctl --json info -d 1 -n 51712 | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
        [ -n "$gpid" ] || fail "the guest's vbdd-sim does not answer: $(cat "$tmp/guest.log")"
        must_fail "--rw of a running guest's disk" \
                "is in use: served writable by pid $gpid (vbdd-sim), VBD 1/51712" mount "$live" "$mnt" --rw
        leftovers "--rw of a running guest's disk"
        # a failure half way (after the snapshot started) leaves no job, store or socket
        must_fail "--partition on a running disk without a table" "no partition table" \
                mount "$live" "$mnt" --partition 1
        leftovers "a failed mount of a running disk"
        vctl snapshot -d 1 -n 51712 --status >"$tmp/st" 2>&1
        grep -Eq "snapshot cancelled|no snapshot job" "$tmp/st" || fail "a job is left: $(cat "$tmp/st")"
        stores=$(ls -A "$tmp" | grep '^\.vbd-snapshot-')
        [ -z "$stores" ] || fail "a failed mount left a store: $stores"
        t0=$(now)
        vctl mount "$live" "$mnt" >"$tmp/out" 2>&1 || fail "mount of a running disk: $(cat "$tmp/out")"
        echo "running guest's disk: $(cat "$tmp/out") (wall $(($(now) - t0)) ms)"
        grep -q "read-only through fuse+loop (.*), a snapshot of running VBD 1/51712 (pid $gpid)" "$tmp/out" ||
                fail "not through the guest's snapshot: $(cat "$tmp/out")"
        vctl mount --list >"$tmp/list"
        grep -q "$mnt .*$live .* ro  mounted, snapshot of 1/51712 (pid $gpid)" "$tmp/list" ||
                fail "mount --list: $(cat "$tmp/list")"
        vctl --json mount --list | python3 -c 'import json,sys
l = json.load(sys.stdin)
assert len(l) == 1 and not l[0]["stale"] and not l[0]["rw"], l
s = l[0]["snapshot"]
assert (s["domid"], s["devid"], s["pid"]) == (1, 51712, int(sys.argv[1])), s' "$gpid" ||
                fail "mount --list --json: the snapshot: $(vctl --json mount --list)"
        vctl snapshot -d 1 -n 51712 --status | grep -q "snapshot running on unix:$tmp/run/mounts/" ||
                fail "snapshot --status: $(vctl snapshot -d 1 -n 51712 --status 2>&1)"
        stores=$(ls -A "$tmp" | grep '^\.vbd-snapshot-')
        [ -z "$stores" ] || fail "the store has a name: $stores (the daemon unlinks it)"
        # the guest overwrites it all
        touch "$tmp/go"
        for i in $(seq 1200); do
                cmp -s "$live" "$tmp/noise" && break
                kill -0 $guest 2>/dev/null || break
                sleep 0.1
        done
        cmp -s "$live" "$tmp/noise" || fail "the guest did not overwrite its disk: $(cat "$tmp/guest.log")"
        sync
        echo 3 >/proc/sys/vm/drop_caches
        (cd "$mnt" && sha256sum --quiet -c "$tmp/tree.sha") >"$tmp/sha.out" 2>&1 ||
                fail "files changed under the snapshot mount: $(cat "$tmp/sha.out")"
        [ "$(cd "$mnt" && find . -type f | wc -l)" = 8 ] || fail "not 8 files: $(cd "$mnt" && find .)"
        vctl --json snapshot -d 1 -n 51712 --status >"$tmp/st.json"
        python3 -c 'import json,sys
s = json.load(open(sys.argv[1]))
assert s["state"] == "running" and s["bytes_saved"] > 0 and s["writes_held"] > 0, s
print("snapshot under the mount: %d bytes saved, %d writes held (avg %d us, max %d us)" %
      (s["bytes_saved"], s["writes_held"], s["held_avg_us"], s["held_max_us"]))' "$tmp/st.json" ||
                fail "snapshot status after the overwrite: $(cat "$tmp/st.json")"
        t0=$(now)
        vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount of the snapshot: $(cat "$tmp/out")"
        echo "umount of the snapshot: $(($(now) - t0)) ms"
        leftovers "umount of the snapshot"
        vctl snapshot -d 1 -n 51712 --status >"$tmp/st" 2>&1
        grep -Eq "snapshot cancelled|no snapshot job" "$tmp/st" || fail "a job is left: $(cat "$tmp/st")"
        stores=$(ls -A "$tmp" | grep '^\.vbd-snapshot-')
        [ -z "$stores" ] || fail "a store is left: $stores"
        [ -e "$tmp/run/mounts" ] && [ -n "$(find "$tmp/run/mounts" -name '*.sock')" ] &&
                fail "a socket is left: $(find "$tmp/run/mounts" -name '*.sock')"
        kill -0 "$gpid" 2>/dev/null || fail "the guest's vbdd-sim is gone"
        touch "$tmp/done"
        wait $guest || fail "the guest failed: $(cat "$tmp/guest.log")"
        # a filesystem the guest has mounted (its journal needs recovery; the
        # image copied while mounted on a loop device): the journal replays
        # into the snapshot's thrown-away overlay, the file is there, and the
        # guest's disk is not written
        truncate -s $((16 * MiB)) "$tmp/making.img"
        mkfs.ext4 -q -F "$tmp/making.img" && mkdir "$tmp/making" &&
                mount -o loop "$tmp/making.img" "$tmp/making" || fail "mount -o loop"
        echo data >"$tmp/making/f" && sync
        cp --sparse=always "$tmp/making.img" "$tmp/dirty.img"
        umount "$tmp/making"
        dumpe2fs -h "$tmp/dirty.img" 2>/dev/null | grep -q "^Filesystem features:.* needs_recovery" ||
                fail "the copy's journal needs no recovery"
        dirty_sum=$(sha256sum <"$tmp/dirty.img")
        (while [ ! -e "$tmp/done2" ]; do sleep 0.05; done) |
                vbd_sim "raw:$tmp/dirty.img" dd --if - >"$tmp/guest2.log" 2>&1 &
        guest=$!
        cleanup_fn touch "$tmp/done2"
        for i in $(seq 200); do
                vctl info -d 1 -n 51712 2>/dev/null | grep -q "^state *connected" && break
                sleep 0.05
        done
        vctl mount "$tmp/dirty.img" "$mnt" >"$tmp/out" 2>&1 ||
                fail "mount of a running disk whose journal needs recovery: $(cat "$tmp/out")"
        [ "$(cat "$mnt/f" 2>&1)" = data ] || fail "the guest's file under the snapshot: $(cat "$mnt/f" 2>&1)"
        vctl umount "$mnt" >"$tmp/out" 2>&1 || fail "umount (journal replayed): $(cat "$tmp/out")"
        leftovers "a running disk whose journal needs recovery"
        [ "$(sha256sum <"$tmp/dirty.img")" = "$dirty_sum" ] ||
                fail "the replay of the journal wrote the guest's disk"
        vctl snapshot -d 1 -n 51712 --status >"$tmp/st" 2>&1
        grep -Eq "snapshot cancelled|no snapshot job" "$tmp/st" || fail "a job is left: $(cat "$tmp/st")"
        stores=$(ls -A "$tmp" | grep '^\.vbd-snapshot-')
        [ -z "$stores" ] || fail "a store is left: $stores"
        touch "$tmp/done2"
        wait $guest || fail "guest 2 failed: $(cat "$tmp/guest2.log")"
        unset VBD_RUNTIME_DIR
else
        echo "SKIP section 5: no VBD_SIM/VBD_SIM_VBDD"
fi

finish
