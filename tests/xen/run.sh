#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Real-guest suite: Linux's own xen-blkfront against vbdd (and the in-kernel
# blkback / QEMU qdisk for reference and benchmarks), in Xen 4.17 + Debian
# bookworm dom0 booted in qemu-system-x86_64 with TCG.
#
#   run.sh [PATH/TO/vbdd [PATH/TO/vbd-ctl]]   (or env VBD_VBDD, VBD_VBD_CTL;
#                                     vbd-ctl defaults to the one beside vbdd,
#                                     or to tools/vbd-ctl/vbd-ctl there)
#
# Environment:
#   VBD_XEN_CACHE     image cache (default /var/cache/vbd-xen)
#   VBD_XEN_WORK      work dir: share + logs (default $VBD_XEN_CACHE/run)
#   VBD_XEN_BACKENDS  backends for the functional tests (default "vbdd";
#                     "vbdd blkback" also runs them on the in-kernel reference)
#   VBD_XEN_TESTS     subset of "rw mq mqbench reboot rebind ro flush backup mount qcow2 rbd
#                     migrate detach destroy xl xldetach xldestroy xlcrash bench"
#                     (rbd: a single-node Ceph on the host, reached by dom0
#                     over a tap device; started only when rbd is selected)
#   VBD_XEN_BENCH     "MIB SECS ROUNDS" for the benchmark (default "64 8 2")
#   VBD_XEN_VBDD_ARGS extra vbdd arguments (e.g. "-D xenbus,ring")
#   VBD_XEN_DOMU_EXTRA extra domU kernel arguments (vbdt_debug=1: full dmesg)
#   VBD_XEN_TIMEOUT   QEMU wall-clock limit in seconds (default 2400)
#   VBD_XEN_RESULTS   where to write the benchmark figures (default
#                     RESULTS-latest.txt beside this script)
#   VBD_XEN_RBD_NET   candidate /30s for the rbd test's tap device, by their
#                     first three octets (default "10.213.0 ... 10.213.63":
#                     the first no route covers); the host is .1, dom0 .2
# Exit: 0 all passed (some may have skipped), 1 failure, 77 skipped
# (qemu-system-x86 not installable, or every test selected skipped).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VBDD=${1:-${VBD_VBDD:-}}
VBD_CTL=${2:-${VBD_VBD_CTL:-}}
# vbd-ctl beside vbdd (installed: sbindir), or where the build puts it
if [ -z "$VBD_CTL" ] && [ -n "$VBDD" ]; then
        VBD_CTL=$(dirname "$VBDD")/vbd-ctl
        [ -x "$VBD_CTL" ] || VBD_CTL=$(dirname "$VBDD")/tools/vbd-ctl/vbd-ctl
fi
CACHE=${VBD_XEN_CACHE:-/var/cache/vbd-xen}
WORK=${VBD_XEN_WORK:-$CACHE/run}
TIMEOUT=${VBD_XEN_TIMEOUT:-2400}
RESULTS=${VBD_XEN_RESULTS:-$HERE/RESULTS-latest.txt}
T0=$(date +%s)
say() { echo "[xen-suite $(($(date +%s) - T0))s] $*"; }

if [ "$(id -u)" != 0 ]; then
        echo "xen suite: needs root (image build, QEMU with 9p)"
        exit 1
fi

# --- QEMU -----------------------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null; then
        say "installing qemu-system-x86"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -q && apt-get install -y -q --no-install-recommends qemu-system-x86; } >/dev/null 2>&1
        if ! command -v qemu-system-x86_64 >/dev/null; then
                echo "SKIP: qemu-system-x86 cannot be installed (apt-get install qemu-system-x86 failed);" \
                        "the real-guest Xen suite needs qemu-system-x86_64"
                exit 77
        fi
fi

# --- images ---------------------------------------------------------------
say "images (cache $CACHE)"
if ! VBD_XEN_CACHE=$CACHE "$HERE/build-images.sh"; then
        echo "FAIL: building the Xen/dom0/domU images failed"
        exit 1
fi

# --- the 9p share ------------------------------------------------------------
SHARE=$WORK/share
rm -rf "$SHARE"
mkdir -p "$SHARE"/{guest,domu,bin,out} "$WORK/logs"
cp "$HERE"/guest/*.sh "$SHARE/guest/"
chmod 755 "$SHARE"/guest/*.sh
for f in vmlinux initrd.cpio.gz; do
        cp -l "$CACHE/domu/$f" "$SHARE/domu/" 2>/dev/null || cp "$CACHE/domu/$f" "$SHARE/domu/"
done
BACKENDS=${VBD_XEN_BACKENDS:-vbdd}

# --- Ceph for the rbd test: a single-node cluster on a tap device ----------
# Only when the rbd test is selected (VBD_XEN_TESTS names it, or the default
# list) and vbdd runs: tests/rbd/ceph-cluster.sh binds to the host's end of
# a tap device QEMU gives dom0 as a virtio NIC; dom0 gets the client's
# ceph.conf and keyring and the host's rbd tool in the share. Cluster and tap
# are torn down when this script exits, whatever happens. A reason to skip
# (no Ceph packages, vbdd without the rbd driver) goes to the config: the
# test reports SKIP with it.
RBD_TAP=""
RBD_CDIR=$WORK/ceph
RBD_SKIP=""
QEMU_NET=()
rbd_teardown() {
        if [ -f "$RBD_CDIR/.ceph-cluster" ]; then
                # the daemons' logs stay (logs/ceph), the cluster goes
                mkdir -p "$WORK/logs/ceph"
                cp "$RBD_CDIR"/*.log "$RBD_CDIR"/*.out "$WORK/logs/ceph/" 2>/dev/null
                "$HERE/../rbd/ceph-cluster.sh" stop "$RBD_CDIR" || say "WARNING: ceph-cluster.sh stop failed"
        fi
        [ -z "$RBD_TAP" ] || ip link del "$RBD_TAP" 2>/dev/null
        RBD_TAP=""
}
QEMU_PID=""
on_exit() {
        if [ -n "$QEMU_PID" ]; then
                say "stopping QEMU (pid $QEMU_PID)"
                kill -TERM "$QEMU_PID" 2>/dev/null
                wait "$QEMU_PID" 2>/dev/null
        fi
        rbd_teardown
}
trap on_exit EXIT
trap 'exit 143' INT TERM HUP
# rbd_net: a free /30 and a tap device on it (RBD_TAP, RBD_HOST, RBD_DOM0)
rbd_net() {
        local n net cands
        cands=${VBD_XEN_RBD_NET:-$(seq -f '10.213.%g' 0 63)}
        for net in $cands; do
                # taken when any route but the default one covers it
                [ -z "$(ip -4 route show to match "$net.1" | grep -v '^default')" ] || continue
                n=vbdtap${net##*.}
                ip tuntap add dev "$n" mode tap 2>/dev/null || continue
                RBD_TAP=$n
                if ip addr add "$net.1/30" dev "$n" && ip link set "$n" up; then
                        RBD_HOST=$net.1
                        RBD_DOM0=$net.2/30
                        return 0
                fi
                ip link del "$n" 2>/dev/null
                RBD_TAP=""
        done
        return 1
}
rbd_setup() {
        local t missing="" pkgs="ceph-mon ceph-osd ceph-mgr ceph-common" t0 out
        if ! "$VBDD" --help 2>&1 | grep '^  rbd ' >/dev/null; then # not -q: SIGPIPE under pipefail
                RBD_SKIP="vbdd was built without the rbd driver (librbd/librados not found)"
                return
        fi
        for t in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd python3; do
                command -v $t >/dev/null || missing=1
        done
        if [ -n "$missing" ]; then
                say "rbd test: installing $pkgs"
                # shellcheck disable=SC2086
                { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                        --no-install-recommends $pkgs; } >"$WORK/logs/ceph-apt.log" 2>&1
                for t in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd python3; do
                        if ! command -v $t >/dev/null; then
                                RBD_SKIP="the Ceph packages ($pkgs) are not installed and cannot be installed (no $t; see logs/ceph-apt.log)"
                                return
                        fi
                done
        fi
        if ! rbd_net; then
                RBD_SKIP="cannot create a tap device with a free 10.213.x.0/30 for dom0's network"
                return
        fi
        t0=$(date +%s)
        "$HERE/../rbd/ceph-cluster.sh" stop "$RBD_CDIR" 2>/dev/null
        rm -rf "$RBD_CDIR" "$WORK/logs/ceph"
        if ! out=$(CEPH_ADDR=$RBD_HOST "$HERE/../rbd/ceph-cluster.sh" start "$RBD_CDIR" 2>"$WORK/logs/ceph-start.log"); then
                # a cluster that cannot start on a host that has Ceph is a failure
                RBD_FAIL="the Ceph cluster did not start on $RBD_HOST: $(tail -n 2 "$WORK/logs/ceph-start.log" | tr '\n' ' ')"
                return
        fi
        say "rbd test: Ceph up on $RBD_HOST ($RBD_TAP) in $(($(date +%s) - t0)) s: $out"
        # what a client in dom0 needs: the monitor's address, cephx, the key
        mkdir -p "$SHARE/rbd"
        {
                echo "[global]"
                grep -E '^(fsid|mon_host|auth_[a-z]*_required) = ' "$RBD_CDIR/ceph.conf"
                echo "ms_bind_ipv6 = false"
                echo "log_to_stderr = false"
                echo "err_to_stderr = true"
                echo "admin_socket = /run/vbdt-ceph/\$name.\$pid.asok"
        } >"$SHARE/rbd/ceph.conf"
        cp "$RBD_CDIR/client.vbd.keyring" "$SHARE/rbd/"
        cp "$(command -v rbd)" "$SHARE/bin/rbd"
        QEMU_NET=(-netdev "tap,id=net0,ifname=$RBD_TAP,script=no,downscript=no"
                -device "virtio-net-pci,netdev=net0,mac=52:54:00:56:42:44")
}
RBD_FAIL=""
if [ -n "$VBDD" ] && [[ " $BACKENDS " == *" vbdd "* ]] &&
        { [ -z "${VBD_XEN_TESTS:-}" ] || [[ " $VBD_XEN_TESTS " == *" rbd "* ]]; }; then
        rbd_setup
        [ -z "$RBD_SKIP" ] || say "rbd test will SKIP: $RBD_SKIP"
        [ -z "$RBD_FAIL" ] || say "rbd test will FAIL: $RBD_FAIL"
fi

if [ -n "$VBDD" ]; then
        if [ ! -x "$VBDD" ]; then
                echo "FAIL: vbdd '$VBDD' is not an executable"
                exit 1
        fi
        cp "$VBDD" "$SHARE/bin/vbdd"
        # the xl tests (disk line with script=block-vbd3) install vbd-ctl and
        # the hotplug script in dom0
        if [ -x "$VBD_CTL" ]; then
                cp "$VBD_CTL" "$SHARE/bin/vbd-ctl"
                say "vbd-ctl: $VBD_CTL"
        else
                say "WARNING: no vbd-ctl at '$VBD_CTL': the xl tests will fail"
        fi
        cp "$HERE/../../conf/block-vbd3" "$SHARE/bin/block-vbd3"
        # shared libraries vbdd and vbd-ctl need that the dom0 image lacks (same
        # Debian release on both sides): shipped in the share, installed in
        # dom0's /usr/local/lib by guest/lib.sh
        mkdir -p "$SHARE/lib"
        # nbd-client (the mount test: vbd-ctl mount through the kernel's NBD
        # client), unpacked by build-images.sh with its libraries
        TOOLS=$CACHE/dom0-tools
        if [ -x "$TOOLS/sbin/nbd-client" ]; then
                cp "$TOOLS/sbin/nbd-client" "$SHARE/bin/nbd-client"
        else
                say "WARNING: no nbd-client in $TOOLS: the mount test will fail"
        fi
        # qemu-img and qemu-io (the qcow2 test makes its backing chain and
        # checks it with qemu's own tools): the host's (qemu-utils, same
        # Debian release as dom0), their libraries below like vbdd's
        QTOOLS=""
        for t in qemu-img qemu-io; do
                if command -v "$t" >/dev/null; then
                        cp "$(command -v "$t")" "$SHARE/bin/$t"
                        QTOOLS="$QTOOLS $SHARE/bin/$t"
                else
                        say "WARNING: no $t on the host (qemu-utils): the qcow2 test will fail"
                fi
        done
        # (librbd, librados and ceph's private libceph-common: ldd follows
        # librbd's RUNPATH; the rbd tool when the rbd test runs)
        [ -x "$SHARE/bin/rbd" ] && QTOOLS="$QTOOLS $SHARE/bin/rbd"
        # shellcheck disable=SC2086
        for lib in $(LD_LIBRARY_PATH=$TOOLS/lib/x86_64-linux-gnu:$TOOLS/usr/lib/x86_64-linux-gnu \
                ldd "$VBDD" "$SHARE/bin/vbd-ctl" "$SHARE/bin/nbd-client" $QTOOLS 2>/dev/null |
                awk '/=> \//{print $3}' | sort -u); do
                n=$(basename "$lib")
                if [ ! -e "$CACHE/dom0-root/usr/lib/x86_64-linux-gnu/$n" ] &&
                        [ ! -e "$CACHE/dom0-root/lib/x86_64-linux-gnu/$n" ]; then
                        cp -L "$lib" "$SHARE/lib/$n"
                        say "vbdd/vbd-ctl/nbd-client/qemu-img need $n, not in the dom0 image: shipped in the share"
                fi
        done
        if "$VBDD" --help 2>&1 | grep -- '--domid' >/dev/null; then # not -q: vbdd would get SIGPIPE (pipefail)
                say "vbdd: $VBDD"
        else
                say "WARNING: '$VBDD --help' prints no usage; vbdd tests will probably fail"
        fi
elif [[ " $BACKENDS " == *" vbdd "* ]]; then
        say "no vbdd given (argument or VBD_VBDD): running the reference backends only"
        BACKENDS=${BACKENDS//vbdd/}
fi
read -r B_MIB B_SECS B_ROUNDS <<<"${VBD_XEN_BENCH:-64 8 2}"
{
        echo "VBD_BACKENDS=\"$BACKENDS\""
        [ -z "${VBD_XEN_TESTS:-}" ] || echo "VBD_TESTS=\"$VBD_XEN_TESTS\""
        [ -z "${VBD_XEN_VBDD_ARGS:-}" ] || echo "VBDD_ARGS=\"$VBD_XEN_VBDD_ARGS\""
        [ -z "${VBD_XEN_DOMU_EXTRA:-}" ] || echo "DOMU_EXTRA=\"$VBD_XEN_DOMU_EXTRA\""
        echo "BENCH_MIB=$B_MIB BENCH_SECS=$B_SECS BENCH_ROUNDS=$B_ROUNDS"
        [ -z "$RBD_TAP" ] || echo "RBD_HOST=$RBD_HOST RBD_DOM0=$RBD_DOM0"
        [ -z "$RBD_SKIP" ] || echo "RBD_SKIP=\"$RBD_SKIP\""
        [ -z "$RBD_FAIL" ] || echo "RBD_FAIL=\"$RBD_FAIL\""
} >"$SHARE/config"

# --- boot Xen + dom0 in QEMU (TCG) ----------------------------------------
LOG=$WORK/logs/serial.log
XEN_CMDLINE="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M dom0_max_vcpus=2"
XEN_CMDLINE="$XEN_CMDLINE loglvl=all guest_loglvl=all noreboot"
# No speculative-execution mitigations: under TCG, XPTI and PV L1TF shadowing
# make every PV guest several times slower and protect nothing here.
XEN_CMDLINE="$XEN_CMDLINE spec-ctrl=no xpti=false pv-l1tf=false"
DOM0_CMDLINE="console=hvc0 earlyprintk=xen root=/dev/vda rw mitigations=off"
DOM0_CMDLINE="$DOM0_CMDLINE init=/usr/local/sbin/vbd-dom0-boot"
say "booting Xen in qemu-system-x86_64 -accel tcg (timeout ${TIMEOUT}s), serial log $LOG"
nice -n 5 timeout "$TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu qemu64 -m 3072 -smp 2 -machine q35 \
        -display none -vga none -no-reboot -monitor none -net none "${QEMU_NET[@]}" \
        -chardev "file,id=ser0,path=$LOG" -serial chardev:ser0 \
        -kernel "$CACHE/boot/xen.elf" -append "$XEN_CMDLINE" \
        -initrd "$CACHE/boot/vmlinuz ${DOM0_CMDLINE//,/,,},$CACHE/boot/initrd.img" \
        -drive "file=$CACHE/dom0.img,if=virtio,format=raw,cache=unsafe,snapshot=on" \
        -virtfs "local,path=$SHARE,mount_tag=share,security_model=none,id=share" \
        >"$WORK/logs/qemu.stdout" 2>&1 &
# waited for in the background: a signal to this script runs its traps at
# once (which stop QEMU, then the rbd test's Ceph and tap device)
QEMU_PID=$!
wait "$QEMU_PID"
QRC=$?
QEMU_PID=""
say "QEMU exited rc=$QRC"
[ "$QRC" = 124 ] && say "TIMEOUT: QEMU killed after ${TIMEOUT}s"
rm -rf "$WORK/out"
cp -a "$SHARE/out" "$WORK/out"

# --- results -------------------------------------------------------------
RES=$WORK/out/results.txt
grep -a -E '\[dom0-main\]|VBDT-FATAL' "$LOG" | tr -d '\r' | sed 's/^/    /'
pass=0
failed=0
skipped=0
if [ -f "$RES" ]; then
        while read -r tag name status detail; do
                [ "$tag" = VBDT-RESULT ] || continue
                echo "  $status  $name  $detail"
                case $status in
                PASS) pass=$((pass + 1)) ;;
                SKIP) skipped=$((skipped + 1)) ;;
                *) failed=$((failed + 1)) ;;
                esac
        done <"$RES"
fi
if ! grep -q '^VBDT-DONE' "$RES" 2>/dev/null; then
        echo "  FAIL  suite did not complete (dom0 crashed, hung or timed out); see $LOG"
        failed=$((failed + 1))
fi
if [ -f "$WORK/out/bench.txt" ]; then
        {
                echo "# vbd real-guest benchmark (tests/xen/run.sh), $(date -u +%Y-%m-%dT%H:%MZ)"
                echo "# Xen 4.17 + Debian bookworm dom0 (kernel $(cat "$CACHE/boot/kernel-version")) nested in"
                echo "# qemu-system-x86_64 -accel tcg on $(nproc) host cores: absolute numbers are"
                echo "# meaningless, only the ratios between backends in the same boot mean anything."
                echo "# One PV domU, three disks: xvda=vbdd (vbd3, raw image), xvdb=blkback (phy, loop"
                echo "# --direct-io=on), xvdc=QEMU qdisk; images on dom0's ext4 root."
                echo "# ${B_MIB} MiB per disk, ${B_SECS}s per random-read run, mean of ${B_ROUNDS} interleaved rounds;"
                echo "# guest tool: vbdbench (O_DIRECT, 1 MiB sequential, 4 KiB random at QD1 / QD8)."
                echo
                cat "$WORK/out/bench.txt"
                echo
                echo "# raw runs:"
                sed 's/^VBDT bench /# /' "$WORK/out/bench.raw.txt"
        } >"$RESULTS"
        say "benchmark figures written to $RESULTS"
        cat "$WORK/out/bench.txt"
fi
say "logs: $WORK/logs (serial), $WORK/out (per-test dom0 logs, consoles, vbdd logs)"
echo "$pass passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] && [ "$pass" = 0 ] && [ "$skipped" -gt 0 ] && exit 77
[ "$failed" = 0 ] && [ "$pass" -gt 0 ]
