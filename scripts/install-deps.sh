#!/bin/sh
# Install what vbd needs to build and test on Debian 12 (bookworm).
# Idempotent; uses sudo when not root.  Set VBD_DEPS_EXTRA for more packages.
set -eu

PKGS="build-essential meson ninja-build pkg-config clang clang-format \
libjansson-dev libinih-dev libsystemd-dev libgnutls28-dev gnutls-bin nettle-dev \
libxen-dev libaio-dev libev-dev zlib1g-dev xenstore-utils fio qemu-utils python3 iproute2 \
libnbd-dev libnbd-bin python3-libnbd nbdkit rsync fdisk dosfstools fuse3 e2fsprogs \
librbd-dev librados-dev ceph-mon ceph-osd ceph-mgr ceph-common qemu-block-extra \
${VBD_DEPS_EXTRA:-}"

missing=""
for p in $PKGS; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing:$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
