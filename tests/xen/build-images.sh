#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build (or reuse from the cache) everything the real-guest Xen suite boots:
#   $CACHE/boot/xen.elf        Xen 4.17, uncompressed ELF for QEMU's multiboot
#   $CACHE/boot/vmlinuz        Debian bookworm kernel (dom0 and domU)
#   $CACHE/boot/initrd.img     dom0 initramfs (busybox, virtio + ext4 modules)
#   $CACHE/dom0.img            dom0 root filesystem, raw ext4
#   $CACHE/domu/vmlinux        domU kernel (same kernel, uncompressed ELF)
#   $CACHE/domu/initrd.cpio.gz domU busybox initramfs: guest/domu-init,
#                              xen-blkfront.ko (+deps), static vbdbench, and
#                              ext4 (+deps, loaded only by the tests that
#                              mount a filesystem)
#   $CACHE/dom0-tools/         programs the dom0 image lacks, shipped over the
#                              9p share by run.sh: nbd-client (+libnl), for
#                              vbd-ctl mount through the kernel's NBD client
#
# Cache dir: $VBD_XEN_CACHE (default /var/cache/vbd-xen). Three stages, each
# with a stamp holding the sha256 of its inputs; a stage is rebuilt only when
# its inputs (or an earlier stage) changed:
#   rootfs  debootstrap chroot   <- package list, mirror, ROOTFS_REV
#   image   dom0.img + boot/     <- rootfs stamp, dom0 boot stub, IMAGE_REV
#   domu    domU initramfs       <- rootfs stamp, guest/domu-init,
#                                   guest/vbdbench.c, host busybox, DOMU_REV
#   tools   dom0-tools/          <- TOOLS_PACKAGES, TOOLS_REV (apt-get download
#                                   from the host's archive, unpacked; not
#                                   installed on the host, not in the image)
# Needs root (debootstrap, chroot). Host packages are installed with apt-get
# when missing. Prints nothing but progress; exits non-zero on failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${VBD_XEN_CACHE:-/var/cache/vbd-xen}
export DEBIAN_FRONTEND=noninteractive
SUITE=bookworm

ROOTFS_REV=1
IMAGE_REV=1
DOMU_REV=2
TOOLS_REV=1
# dom0 runtime: Debian kernel, Xen 4.17 + toolstack, qemu for qdisk, and the
# shared libraries vbdd links (libxengnttab/evtchn/ctrl/store, libaio, libev,
# jansson, inih, systemd). run.sh also ships any library a newer vbdd needs
# that the image lacks, so the image need not be rebuilt for that.
ROOTFS_PACKAGES="linux-image-amd64 initramfs-tools kmod udev
 xen-hypervisor-4.17-amd64 xen-utils-4.17 xenstore-utils qemu-system-xen
 libxengnttab1 libxenevtchn1 libxenmisc4.17 libxenstore4 libaio1 libev4
 libjansson4 libinih1 libsystemd0
 busybox iproute2 procps util-linux e2fsprogs strace"
# unpacked into dom0-tools/ (same Debian release as dom0): the nbd-client a
# vbd-ctl mount uses where the kernel has the nbd module
TOOLS_PACKAGES="nbd-client libnl-3-200 libnl-genl-3-200"
HOST_PACKAGES="debootstrap busybox-static cpio e2fsprogs gzip xz-utils file gcc libc6-dev libxen-dev"

log() { echo "[build-images] $*"; }
die() {
        echo "[build-images] ERROR: $*" >&2
        exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap/chroot)"

need_host_packages() {
        local missing=""
        for p in $HOST_PACKAGES; do
                dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
                        missing="$missing $p"
        done
        if [ -n "$missing" ]; then
                log "installing host packages:$missing"
                apt-get update -q >/dev/null
                # shellcheck disable=SC2086
                apt-get install -y -q --no-install-recommends $missing >/dev/null
        fi
}

# The Debian archive this machine already uses (deb822 or one-line format).
host_mirror() {
        local m=""
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                m=$(awk '/^URIs:/{u=$2} /^Suites:/{ if ($0 !~ /security|updates/) {print u; exit} }' \
                        /etc/apt/sources.list.d/debian.sources)
        fi
        if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
                m=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
        fi
        echo "${m:-http://deb.debian.org/debian}"
}
host_security_mirror() {
        local m=""
        if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                m=$(awk '/^URIs:/{u=$2} /^Suites:.*security/{print u; exit}' \
                        /etc/apt/sources.list.d/debian.sources)
        fi
        if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
                m=$(awk '$1=="deb" && /security/ {print $2; exit}' /etc/apt/sources.list)
        fi
        echo "$m"
}

MIRROR=${VBD_XEN_MIRROR:-$(host_mirror)}
SECURITY=${VBD_XEN_SECURITY_MIRROR-$(host_security_mirror)}
R=$CACHE/dom0-root

stamp_ok() { [ -f "$CACHE/stamps/$1" ] && [ "$(cat "$CACHE/stamps/$1")" = "$2" ]; }
stamp_set() {
        mkdir -p "$CACHE/stamps"
        echo "$2" >"$CACHE/stamps/$1"
}
hash_of() { sha256sum | cut -d' ' -f1; }

umount_chroot() {
        local m
        for m in dev/pts dev sys proc; do
                mountpoint -q "$R/$m" 2>/dev/null && umount -l "$R/$m" || true
        done
}

build_rootfs() {
        log "stage rootfs: debootstrap $SUITE from $MIRROR into $R (takes several minutes)"
        umount_chroot
        rm -rf "$R"
        mkdir -p "$CACHE"
        debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
                die "debootstrap failed, see $CACHE/debootstrap.log"
        # no daemons may start inside the chroot
        printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
        chmod 755 "$R/usr/sbin/policy-rc.d"
        {
                echo "deb $MIRROR $SUITE main"
                echo "deb $MIRROR $SUITE-updates main"
                [ -z "$SECURITY" ] || echo "deb $SECURITY $SUITE-security main"
        } >"$R/etc/apt/sources.list"
        # snapshot mirrors have expired Release files
        printf 'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n' \
                >"$R/etc/apt/apt.conf.d/99vbd-snapshot"
        trap umount_chroot EXIT
        mount -t proc proc "$R/proc"
        mount -t sysfs sysfs "$R/sys"
        mount --bind /dev "$R/dev"
        mount --bind /dev/pts "$R/dev/pts"
        {
                chroot "$R" apt-get update -q
                # shellcheck disable=SC2086
                chroot "$R" apt-get install -y -q --no-install-recommends $ROOTFS_PACKAGES
                chroot "$R" apt-get clean
        } >"$CACHE/rootfs-apt.log" 2>&1 || die "apt-get in the chroot failed, see $CACHE/rootfs-apt.log"
        umount_chroot
        trap - EXIT
        chroot "$R" dpkg-query -W -f='${Package} ${Version}\n' >"$CACHE/dom0-packages.txt"
        [ -f "$R/boot/xen-4.17-amd64.gz" ] || die "no Xen hypervisor in $R/boot"
}

# PID 1 of dom0 (baked into the image, deliberately minimal and stable): mount
# the 9p share from the host and hand over to /share/guest/dom0-main.sh, which
# is copied fresh into the share by run.sh on every run. Powers off if that
# fails, so QEMU never hangs.
DOM0_BOOT_STUB='#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
modprobe 9pnet_virtio; modprobe 9p
mkdir -p /share
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /share &&
   [ -x /share/guest/dom0-main.sh ]; then
        /share/guest/dom0-main.sh
        echo "[vbd-dom0-boot] dom0-main.sh exited rc=$?"
else
        echo "[vbd-dom0-boot] VBDT-FATAL: cannot mount the 9p share or no /share/guest/dom0-main.sh"
fi
sync
echo o >/proc/sysrq-trigger
sleep 30
'

DOM0_INITRD_INIT='#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw,noatime /dev/vda /root; then
        echo "[dom0-initrd] VBDT-FATAL: cannot mount /dev/vda"
        echo o >/proc/sysrq-trigger
fi
umount /proc /sys /dev
exec switch_root /root /usr/local/sbin/vbd-dom0-boot
'

build_image() {
        log "stage image: dom0.img, Xen ELF, dom0 kernel/initrd"
        local kver
        kver=$(ls "$R/lib/modules" | sort -V | tail -1)
        printf '%s' "$DOM0_BOOT_STUB" >"$R/usr/local/sbin/vbd-dom0-boot"
        chmod 755 "$R/usr/local/sbin/vbd-dom0-boot"
        echo dom0 >"$R/etc/hostname"
        echo "/dev/vda / ext4 rw,noatime 0 1" >"$R/etc/fstab"
        # dom0_mem is fixed on the Xen command line: xl must not balloon dom0
        sed -i '/^#\?autoballoon=/d' "$R/etc/xen/xl.conf"
        echo 'autoballoon="off"' >>"$R/etc/xen/xl.conf"
        mkdir -p "$CACHE/boot"
        zcat "$R/boot/xen-4.17-amd64.gz" >"$CACHE/boot/xen.elf.tmp"
        file "$CACHE/boot/xen.elf.tmp" | grep -q 'ELF 32-bit' ||
                die "Xen image is not an ELF32 multiboot binary: $(file "$CACHE/boot/xen.elf.tmp")"
        mv "$CACHE/boot/xen.elf.tmp" "$CACHE/boot/xen.elf"
        cp "$R/boot/vmlinuz-$kver" "$CACHE/boot/vmlinuz"
        # our own small dom0 initramfs: virtio disk + ext4, then switch_root
        # to vbd-dom0-boot (Debian's initramfs-tools one costs ~1 min in TCG)
        printf '%s' "$DOM0_INITRD_INIT" >"$CACHE/dom0-initrd-init"
        mk_initramfs "$CACHE/boot/initrd.img" "$CACHE/dom0-initrd-init" "$kver" \
                kernel/crypto/crc32c_generic.ko kernel/drivers/virtio/virtio_pci.ko \
                kernel/drivers/block/virtio_blk.ko kernel/fs/ext4/ext4.ko
        rm -f "$CACHE/dom0.img.tmp"
        # 4 GiB: ~1.3 GiB used, the rest for the test disk images
        mke2fs -q -t ext4 -L vbd-dom0 -d "$R" "$CACHE/dom0.img.tmp" 4G
        mv "$CACHE/dom0.img.tmp" "$CACHE/dom0.img"
        echo "$kver" >"$CACHE/boot/kernel-version"
}

# mod_order KVER MODULE...: the modules (paths relative to lib/modules/KVER)
# with all their dependencies, in load order
mod_order() {
        local kver=$1
        shift
        awk -F: -v want="$*" '
                function add(p,   d, n, i) { if (p in seen) return; seen[p] = 1
                        n = split(dep[p], d, " "); for (i = n; i >= 1; i--) add(d[i]); print p }
                { dep[$1] = $2 }
                END { n = split(want, w, " "); for (i = 1; i <= n; i++) {
                        if (!(w[i] in dep)) { print "MISSING " w[i]; exit 1 } add(w[i]) } }' \
                "$R/lib/modules/$kver/modules.dep"
}
# mk_initramfs OUT INIT KVER MODULE...: busybox (static, from the host) +
# modules (+deps, load order in /lib/modules/load-order) + INIT as /init
mk_initramfs() {
        local out=$1 init=$2 kver=$3 t order mod
        shift 3
        order=$(mod_order "$kver" "$@") || die "kernel modules not found: $order"
        t=$(mktemp -d)
        mkdir -p "$t"/{bin,sbin,proc,sys,dev,tmp,root,lib/modules}
        cp /bin/busybox "$t/bin/busybox"
        ln -s busybox "$t/bin/sh"
        install -m 755 "$init" "$t/init"
        : >"$t/lib/modules/load-order"
        for mod in $order; do
                cp "$R/lib/modules/$kver/$mod" "$t/lib/modules/"
                basename "$mod" >>"$t/lib/modules/load-order"
        done
        # EXTRA_MODS: more modules (+deps not already there), their load
        # order in /lib/modules/extra-order, for /init to load when needed
        : >"$t/lib/modules/extra-order"
        if [ -n "${EXTRA_MODS:-}" ]; then
                # shellcheck disable=SC2086
                order=$(mod_order "$kver" $EXTRA_MODS) || die "kernel modules not found: $order"
                for mod in $order; do
                        [ -e "$t/lib/modules/$(basename "$mod")" ] && continue
                        cp "$R/lib/modules/$kver/$mod" "$t/lib/modules/"
                        basename "$mod" >>"$t/lib/modules/extra-order"
                done
        fi
        [ -z "${EXTRA_BIN:-}" ] || cp "$EXTRA_BIN" "$t/bin/"
        (cd "$t" && find . | cpio -o -H newc --quiet | gzip -6) >"$out.tmp"
        mv "$out.tmp" "$out"
        rm -rf "$t"
}
# vmlinux_from_bzimage BZIMAGE OUT: the kernel ELF inside a bzImage, so that
# xl's domain builder does not spend its time decompressing xz under TCG
vmlinux_from_bzimage() {
        local off
        off=$(LC_ALL=C grep -abo -P '\xfd7zXZ\x00' "$1" | head -n 1 | cut -d: -f1 || true)
        [ -n "$off" ] || die "no xz payload in $1"
        tail -c +$((off + 1)) "$1" | xz -dc --single-stream >"$2.tmp" 2>/dev/null || true
        file "$2.tmp" | grep -q 'ELF 64-bit' || die "could not extract vmlinux from $1"
        mv "$2.tmp" "$2"
}

build_domu() {
        log "stage domu: busybox initramfs with xen-blkfront and vbdbench, vmlinux"
        local kver t
        kver=$(ls "$R/lib/modules" | sort -V | tail -1)
        t=$(mktemp -d)
        gcc -static -O2 -Wall -Wextra -pthread -o "$t/vbdbench" "$HERE/guest/vbdbench.c"
        mkdir -p "$CACHE/domu"
        # ext4 for the mount test (crc32c: its metadata checksums)
        EXTRA_BIN=$t/vbdbench EXTRA_MODS="kernel/crypto/crc32c_generic.ko kernel/fs/ext4/ext4.ko" \
                mk_initramfs "$CACHE/domu/initrd.cpio.gz" "$HERE/guest/domu-init" "$kver" \
                kernel/drivers/block/xen-blkfront.ko
        vmlinux_from_bzimage "$R/boot/vmlinuz-$kver" "$CACHE/domu/vmlinux"
        rm -rf "$t"
}

# dom0 tools: the packages' files unpacked into dom0-tools/ (no maintainer
# scripts run, nothing installed on the host). A failure is not fatal: the
# tests that need a tool say it is missing.
build_tools() {
        local t d
        log "stage tools: apt-get download $TOOLS_PACKAGES, unpacked into $CACHE/dom0-tools"
        t=$(mktemp -d)
        chmod 755 "$t" # apt's _apt user writes the .debs here
        # shellcheck disable=SC2086
        if ! (cd "$t" && apt-get download -q $TOOLS_PACKAGES) >"$CACHE/tools-apt.log" 2>&1; then
                apt-get update -q >>"$CACHE/tools-apt.log" 2>&1
                # shellcheck disable=SC2086
                if ! (cd "$t" && apt-get download -q $TOOLS_PACKAGES) >>"$CACHE/tools-apt.log" 2>&1; then
                        log "WARNING: apt-get download $TOOLS_PACKAGES failed (see $CACHE/tools-apt.log)"
                        rm -rf "$t"
                        return 1
                fi
        fi
        rm -rf "$CACHE/dom0-tools.tmp"
        for d in "$t"/*.deb; do
                dpkg-deb -x "$d" "$CACHE/dom0-tools.tmp" || {
                        rm -rf "$t" "$CACHE/dom0-tools.tmp"
                        return 1
                }
        done
        rm -rf "$t" "$CACHE/dom0-tools"
        mv "$CACHE/dom0-tools.tmp" "$CACHE/dom0-tools"
}

need_host_packages
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

H_ROOTFS=$(printf '%s\n' "$ROOTFS_REV" "$SUITE" "$MIRROR" "$SECURITY" $ROOTFS_PACKAGES | hash_of)
if ! stamp_ok rootfs "$H_ROOTFS" || [ ! -x "$R/usr/sbin/xl" ]; then
        rm -f "$CACHE/stamps/"*
        build_rootfs
        stamp_set rootfs "$H_ROOTFS"
else
        log "stage rootfs: cached"
fi

H_IMAGE=$(printf '%s\n' "$H_ROOTFS" "$IMAGE_REV" "$DOM0_BOOT_STUB" "$DOM0_INITRD_INIT" | hash_of)
if ! stamp_ok image "$H_IMAGE" || [ ! -f "$CACHE/dom0.img" ] || [ ! -f "$CACHE/boot/xen.elf" ]; then
        build_image
        stamp_set image "$H_IMAGE"
else
        log "stage image: cached"
fi

H_DOMU=$(cat <(printf '%s\n' "$H_ROOTFS" "$DOMU_REV") "$HERE/guest/domu-init" "$HERE/guest/vbdbench.c" \
        /bin/busybox | hash_of)
if ! stamp_ok domu "$H_DOMU" || [ ! -f "$CACHE/domu/initrd.cpio.gz" ] || [ ! -f "$CACHE/domu/vmlinux" ]; then
        build_domu
        stamp_set domu "$H_DOMU"
else
        log "stage domu: cached"
fi
H_TOOLS=$(printf '%s\n' "$TOOLS_REV" $TOOLS_PACKAGES | hash_of)
if ! stamp_ok tools "$H_TOOLS" || [ ! -d "$CACHE/dom0-tools" ]; then
        build_tools && stamp_set tools "$H_TOOLS"
else
        log "stage tools: cached"
fi
log "images ready in $CACHE (kernel $(cat "$CACHE/boot/kernel-version"))"
