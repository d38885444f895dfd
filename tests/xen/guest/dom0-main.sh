#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Runs in dom0 (called by the image's /usr/local/sbin/vbd-dom0-boot once the
# host's 9p share is mounted at /share): bring up the Xen control plane
# (xenstored, xenconsoled, backend kernel modules), run tests.sh, return.
# The boot stub powers the machine off afterwards.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
XENBIN=/usr/lib/xen-4.17/bin
ts() { cut -d' ' -f1 /proc/uptime; }
echo "[dom0-main] uptime $(ts)s, kernel $(uname -r)"

mkdir -p /dev/pts /dev/shm
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /var/log/xen/console /var/lib/xen /run/xen /var/run/xen /run/lock
hostname dom0
ip link set lo up 2>/dev/null

for m in xenfs xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback loop; do
        modprobe $m || echo "[dom0-main] modprobe $m FAILED"
done
mount -t xenfs xenfs /proc/xen
if ! grep -q control_d /proc/xen/capabilities 2>/dev/null; then
        echo "[dom0-main] VBDT-FATAL: not running as Xen dom0 (no control_d capability)"
        exit 1
fi
$XENBIN/xenstored --pid-file /run/xenstore.pid
for _ in $(seq 1 100); do
        xenstore-read /local >/dev/null 2>&1 && break
        sleep 0.1
done
$XENBIN/xen-init-dom0 >/dev/null
$XENBIN/xenconsoled --pid-file /run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
echo "[dom0-main] uptime $(ts)s: xen control plane up"
xl info | grep -E '^(xen_version|total_memory|free_memory|nr_cpus)' | sed 's/^/[dom0-main] /'

/share/guest/tests.sh
rc=$?
echo "[dom0-main] tests.sh rc=$rc at uptime $(ts)s"
sync
exit $rc
