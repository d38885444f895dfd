#!/bin/bash
# Cold mounting: the wall time of vbd-ctl mount (to a usable mount) and of
# vbd-ctl umount, for a raw image and a 3-deep qcow2 chain (base + 2
# overlays), each with ext4 on the whole disk; median of 5.  The peer, the
# same path built from QEMU's parts: qemu-storage-daemon --export fuse (the
# image as a file), losetup, mount; and back (umount, losetup -d, the FUSE
# unmount, the daemon gone).  Not a test; root; prints the figures.
#
#   bench/mount.sh [BUILD_DIR]
#   VBD_BENCH_DIR   where the images go (default /var/tmp)
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
N=5
W=$(mktemp -d "$DIR/vbd-mount-bench.XXXXXX")
export VBD_VBDD=$B/vbdd VBD_RUN_DIR=$W/run VBD_MOUNT_VIA=fuse
CTL=$B/tools/vbd-ctl/vbd-ctl
MNT=$W/mnt

[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }
for t in qemu-img mkfs.ext4 losetup nbdfuse python3; do
        command -v $t >/dev/null || { echo "bench: $t is needed" >&2; exit 1; }
done
[ -x "$VBD_VBDD" ] && [ -x "$CTL" ] || { echo "bench: build first" >&2; exit 1; }
have_qsd=0
command -v qemu-storage-daemon >/dev/null && have_qsd=1
cleanup() {
        "$CTL" umount "$MNT" >/dev/null 2>&1 || true
        umount "$MNT" 2>/dev/null || true
        rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$MNT"
now() { date +%s%N; }
median() { python3 -c 'import statistics,sys; print("%.0f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }

# images: 256 MiB ext4 with 32 MiB of files; the chain: base, mid, top,
# each overlay with files of its own
truncate -s 256M "$W/raw.img"
mkfs.ext4 -q -F "$W/raw.img"
"$CTL" mount "$W/raw.img" "$MNT" --rw >/dev/null
head -c 32M /dev/urandom >"$MNT/data"
"$CTL" umount "$MNT" >/dev/null
qemu-img convert -q -f raw -O qcow2 "$W/raw.img" "$W/base.qcow2"
for l in mid top; do
        qemu-img create -q -f qcow2 -b "$W/$([ $l = mid ] && echo base || echo mid).qcow2" \
                -F qcow2 "$W/$l.qcow2"
        "$CTL" mount "$W/$l.qcow2" "$MNT" --rw >/dev/null
        head -c 8M /dev/urandom >"$MNT/$l"
        "$CTL" umount "$MNT" >/dev/null
done

# report NAME "MOUNT-MS..." "UMOUNT-MS..."
report() {
        # shellcheck disable=SC2086
        printf "%-28s mount %5s ms   umount %5s ms   (mount: %s)\n" "$1" "$(median $2)" \
                "$(median $3)" "$2"
}

# vbd IMAGE: N rounds of mount + check a file + umount
vbd() {
        local i t0 t1 t2 m=() u=()
        for i in $(seq $N); do
                t0=$(now)
                "$CTL" mount "$1" "$MNT" >/dev/null
                t1=$(now)
                [ -s "$MNT/data" ] || { echo "bench: $1: no data" >&2; exit 1; }
                "$CTL" umount "$MNT" >/dev/null
                t2=$(now)
                m+=($(((t1 - t0) / 1000000)))
                u+=($(((t2 - t1) / 1000000)))
        done
        report "vbd-ctl $(basename "$1")" "${m[*]}" "${u[*]}"
}

# qsd IMAGE FORMAT: the same with qemu-storage-daemon's FUSE export
qsd() {
        local i t0 t1 t2 m=() u=() dev f=$W/qsd.file
        for i in $(seq $N); do
                : >"$f"
                t0=$(now)
                qemu-storage-daemon --blockdev "driver=$2,node-name=d,file.driver=file,file.filename=$1" \
                        --export "type=fuse,id=e,node-name=d,mountpoint=$f,writable=off" \
                        --pidfile "$W/qsd.pid" --daemonize
                dev=$(losetup --find --show --read-only "$f")
                mount -o ro "$dev" "$MNT"
                t1=$(now)
                [ -s "$MNT/data" ] || { echo "bench: qsd $1: no data" >&2; exit 1; }
                umount "$MNT"
                losetup -d "$dev"
                while losetup "$dev" >/dev/null 2>&1; do sleep 0.005; done
                pid=$(cat "$W/qsd.pid")
                umount "$f"
                kill "$pid"
                while kill -0 "$pid" 2>/dev/null; do sleep 0.005; done
                t2=$(now)
                m+=($(((t1 - t0) / 1000000)))
                u+=($(((t2 - t1) / 1000000)))
        done
        report "qsd+loop $(basename "$1")" "${m[*]}" "${u[*]}"
}

echo "median of $N, read-only mounts, ext4 on the whole disk, $(uname -r)"
vbd "$W/raw.img"
vbd "$W/top.qcow2"
if [ $have_qsd = 1 ]; then
        qsd "$W/raw.img" raw
        qsd "$W/top.qcow2" qcow2
else
        echo "(no qemu-storage-daemon: no peer figures)"
fi
