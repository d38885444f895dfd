#!/bin/bash
# Deploying an application into N guest images, three ways, in one run:
#   (a) layer    vbd-ctl layer create once (the tree copied into a layer over
#                the base), then N vbd-ctl layer clone of the layer
#   (b) mount+cp N guests as qcow2 clones of the base, the tree copied into
#                each through vbd-ctl mount --rw + cp -a + vbd-ctl umount
#   (c) convert  N whole-image copies (qemu-img convert -O qcow2) of a
#                prepared standalone image (base + application: the layer of
#                (a) flattened by qemu-img convert, not counted)
# The application: SIZE MB of incompressible files (/dev/urandom), half of
# it in 8 large files, half in small ones (4-60 KiB) in 20 directories.
# Figures per way: wall time; bytes written to the disk holding the images
# (the images live on a scratch ext4 of their own, on a loop device: the
# sectors written in /sys/block/loopN/stat, after a sync, so nothing else
# on the machine counts); disk used (du of the images the way made).  Not a
# test; root; prints a table and the ratios.
#
#   bench/layers.sh [BUILD_DIR] [--size MB] [--guests N]
#   VBD_BENCH_DIR   where the scratch files go (default /var/tmp)
set -eu
B=build
SIZE=500
GUESTS=20
while [ $# -gt 0 ]; do
        case $1 in
        --size) SIZE=$2; shift 2 ;;
        --guests) GUESTS=$2; shift 2 ;;
        -*) echo "usage: bench/layers.sh [BUILD_DIR] [--size MB] [--guests N]" >&2; exit 2 ;;
        *) B=$1; shift ;;
        esac
done
DIR=${VBD_BENCH_DIR:-/var/tmp}
W=$(mktemp -d "$DIR/vbd-layers-bench.XXXXXX")
CTL=$B/tools/vbd-ctl/vbd-ctl
export VBD_VBDD=$B/vbdd VBD_RUN_DIR=$W/run VBD_MOUNT_VIA=fuse

[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }
for t in qemu-img mkfs.ext4 losetup nbdfuse python3; do
        command -v $t >/dev/null || { echo "bench: $t is needed" >&2; exit 1; }
done
[ -x "$VBD_VBDD" ] && [ -x "$CTL" ] || { echo "bench: build first" >&2; exit 1; }
CTL=$(realpath "$CTL")
export VBD_VBDD=$(realpath "$VBD_VBDD")

S=$W/images # the scratch filesystem: every image of the bench
LOOP=""
cleanup() {
        set +e
        "$CTL" umount "$W/mnt" >/dev/null 2>&1
        for d in "$W"/run/mounts/m-*/root; do
                [ -d "$d" ] && "$CTL" umount "$d" >/dev/null 2>&1
        done
        mountpoint -q "$S" && umount "$S"
        [ -n "$LOOP" ] && losetup -d "$LOOP"
        rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$S" "$W/mnt"
# base virtual size: room for the application and then some
VSIZE=$((SIZE * 2 + 256))
# the scratch fs: (b) and (c) each hold GUESTS copies of the application
truncate -s $(((GUESTS * 2 + 6) * SIZE + 4096))M "$W/scratch.img"
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$W/scratch.img"
LOOP=$(losetup --find --show "$W/scratch.img")
mount "$LOOP" "$S"
DEV=$(basename "$LOOP")

now() { date +%s%N; }
# sectors written to the scratch disk, everything flushed first
written() {
        sync -f "$S"
        sync
        awk '{print $7}' "/sys/block/$DEV/stat"
}
du_b() { du -s --block-size=1 "$@" | awk '{s += $1} END {print s}'; }

# the application tree (outside the scratch disk: reading it costs nothing there)
echo "generating $SIZE MB of application files..."
python3 - "$W/app" "$SIZE" <<'EOF'
import os, random, sys
top, mb = sys.argv[1], int(sys.argv[2])
total = mb << 20
random.seed(42)
os.makedirs(top + "/bin")
big = total // 2 // 8
for i in range(8):
    with open("%s/bin/large%d.bin" % (top, i), "wb") as f:
        left = big
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
small, i = total - big * 8, 0
while small > 0:
    d = "%s/lib/d%02d" % (top, i % 20)
    os.makedirs(d, exist_ok=True)
    n = min(small, random.randrange(4096, 61440))
    with open("%s/f%05d" % (d, i), "wb") as f:
        f.write(os.urandom(n))
    small -= n
    i += 1
print("%d files" % (8 + i))
EOF
APPBYTES=$(du_b "$W/app")

# the base: an empty ext4, qcow2
truncate -s ${VSIZE}M "$W/base.raw"
mkfs.ext4 -q -F "$W/base.raw"
qemu-img convert -q -f raw -O qcow2 "$W/base.raw" "$S/base.qcow2"
rm "$W/base.raw"

declare -A T WR DU
# (a) layer create once, GUESTS clones
w0=$(written)
t0=$(now)
nice -n 19 "$CTL" layer create --base "$S/base.qcow2" --from "$W/app" -o "$S/layer.qcow2" >/dev/null
t1=$(now)
for i in $(seq "$GUESTS"); do
        nice -n 19 "$CTL" layer clone "$S/layer.qcow2" -o "$S/a$i.qcow2" >/dev/null
done
t2=$(now)
w1=$(written)
T[a]=$(((t2 - t0) / 1000000))
WR[a]=$(((w1 - w0) * 512))
DU[a]=$(du_b "$S/layer.qcow2" "$S"/a*.qcow2)
create_ms=$(((t1 - t0) / 1000000))
clones_ms=$(((t2 - t1) / 1000000))

# (b) GUESTS clones of the base, the tree copied into each through a mount
w0=$(written)
t0=$(now)
for i in $(seq "$GUESTS"); do
        nice -n 19 "$CTL" layer clone "$S/base.qcow2" -o "$S/b$i.qcow2" >/dev/null
        nice -n 19 "$CTL" mount "$S/b$i.qcow2" "$W/mnt" --rw >/dev/null
        nice -n 19 cp -a "$W/app/." "$W/mnt/"
        nice -n 19 "$CTL" umount "$W/mnt" >/dev/null
done
t1=$(now)
w1=$(written)
T[b]=$(((t1 - t0) / 1000000))
WR[b]=$(((w1 - w0) * 512))
DU[b]=$(du_b "$S"/b*.qcow2)

# (c) a prepared standalone image, copied whole GUESTS times
qemu-img convert -q -O qcow2 "$S/layer.qcow2" "$S/prepared.qcow2"
w0=$(written)
t0=$(now)
for i in $(seq "$GUESTS"); do
        nice -n 19 qemu-img convert -q -O qcow2 "$S/prepared.qcow2" "$S/c$i.qcow2"
done
t1=$(now)
w1=$(written)
T[c]=$(((t1 - t0) / 1000000))
WR[c]=$(((w1 - w0) * 512))
DU[c]=$(du_b "$S"/c*.qcow2)

# every guest sees the application: a file of it, from a guest of each way
for g in a1 b1 c1 "a$GUESTS" "b$GUESTS" "c$GUESTS"; do
        "$CTL" mount "$S/$g.qcow2" "$W/mnt" >/dev/null
        cmp -s "$W/app/bin/large7.bin" "$W/mnt/bin/large7.bin" ||
                { echo "bench: $g: the application is not there" >&2; exit 1; }
        "$CTL" umount "$W/mnt" >/dev/null
done

mb() { python3 -c "print('%.1f' % ($1 / 1048576))"; }
ratio() { python3 -c "print('%.1fx' % ($1 / max($2, 1)))"; }
echo
echo "$GUESTS guests, an application of $(mb "$APPBYTES") MiB ($(find "$W/app" -type f | wc -l) files)," \
        "base $VSIZE MiB ext4 qcow2; $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-34s %10s %14s %12s\n" "way" "wall s" "written MiB" "du MiB"
printf "%-34s %10s %14s %12s\n" "(a) layer create + $GUESTS layer clone" \
        "$(python3 -c "print('%.1f' % (${T[a]} / 1000))")" "$(mb "${WR[a]}")" "$(mb "${DU[a]}")"
printf "%-34s %10s %14s %12s\n" "(b) $GUESTS x mount --rw + cp -a" \
        "$(python3 -c "print('%.1f' % (${T[b]} / 1000))")" "$(mb "${WR[b]}")" "$(mb "${DU[b]}")"
printf "%-34s %10s %14s %12s\n" "(c) $GUESTS x qemu-img convert" \
        "$(python3 -c "print('%.1f' % (${T[c]} / 1000))")" "$(mb "${WR[c]}")" "$(mb "${DU[c]}")"
echo "(a): layer create $create_ms ms, $GUESTS clones $clones_ms ms"
for x in b c; do
        echo "($x)/(a): wall $(ratio "${T[$x]}" "${T[a]}"), written $(ratio "${WR[$x]}" "${WR[a]}")," \
                "du $(ratio "${DU[$x]}" "${DU[a]}")"
done
