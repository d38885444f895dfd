# SPDX-License-Identifier: LGPL-2.1-or-later
# shellcheck shell=bash
#
# Helpers for the dom0 side of the real-guest suite (sourced by tests.sh).
# A "backend" is one of:
#   vbdd     our daemon: xenstore nodes under backend/vbd3 written here, the
#            way a toolstack does, then `vbdd --domid D --devid N ...`
#   blkback  Linux's in-kernel backend, via `xl block-attach` on a loop device
#   qdisk    QEMU's xen-block, via the domU's xl config (bench only)
# The xl tests instead give vbdd its disk from the domU's xl config (xl_*).

OUT=/share/out
IMGDIR=/var/lib/vbdt # on dom0's ext4 root, so O_DIRECT works
# domU kernel (uncompressed ELF) and initramfs, copied once to dom0's tmpfs
DOMU_KERNEL=/tmp/domu/vmlinux
DOMU_RAMDISK=/tmp/domu/initrd.cpio.gz
if [ ! -f "$DOMU_KERNEL" ]; then
        mkdir -p /tmp/domu
        cp /share/domu/vmlinux /share/domu/initrd.cpio.gz /tmp/domu/
fi
VBDD=/share/bin/vbdd
# Libraries run.sh shipped for vbdd/vbd-ctl (those the image lacks): onto
# dom0's own disk, known to ld.so, as a package would install them. Mapping
# them over 9p made every vbdd start take seconds (libxl allows 10 s from the
# backend directory to InitWait).
if [ -n "$(ls /share/lib 2>/dev/null)" ] && [ ! -e /usr/local/lib/.vbdt-shipped ]; then
        cp /share/lib/* /usr/local/lib/ && ldconfig && touch /usr/local/lib/.vbdt-shipped
fi
CONSOLE_DIR=/var/log/xen/console
DEVID=51712 # xvda
PHY_SCRIPT=/share/guest/xen-block-phy.sh
mkdir -p "$OUT" "$IMGDIR"

ts() { cut -d' ' -f1 /proc/uptime; }
log() { echo "[dom0 $(ts)] $*"; }

# --- results -------------------------------------------------------------
CUR_TEST=""
CUR_FAILS=""
test_begin() {
        CUR_TEST=$1
        CUR_FAILS=""
        CUR_DOMU=""
        SKIP_CHECKS=0
        VBDD_PID=""
        VBDD_LOG=""
        CUR_T0=$(ts)
        echo "=================== $CUR_TEST (dom0 uptime $CUR_T0) ==================="
}
# check DESCRIPTION COMMAND...: run a condition, remember failures. With
# CHECK_AT set (check_xs, check_live), a failure also records where the
# guest was at that moment, in the log and in the result line.
check() {
        local what=$1
        shift
        if [ "${SKIP_CHECKS:-0}" = 1 ]; then
                log "skip: $what (guest did not finish)"
                return 0
        fi
        if "$@"; then
                log "ok:   $what"
        else
                log "FAIL: $what"
                [ -z "${CHECK_AT:-}" ] || log "      at that moment: $CHECK_AT"
                CUR_FAILS="$CUR_FAILS; $what${CHECK_AT:+ [$CHECK_AT]}"
        fi
}
fail() {
        log "FAIL: $*"
        CUR_FAILS="$CUR_FAILS; $*"
}
test_end() {
        local secs status detail
        secs=$(awk -v a="$CUR_T0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')
        if [ -z "$CUR_FAILS" ]; then
                status=PASS
                detail="${secs}s"
        else
                status=FAIL
                detail="${secs}s${CUR_FAILS}"
        fi
        echo "VBDT-RESULT $CUR_TEST $status $detail" | tee -a "$OUT/results.txt"
}
test_skip() {
        echo "VBDT-RESULT $1 SKIP $2" | tee -a "$OUT/results.txt"
}

eq() { [ -n "$1" ] && [ "$1" = "$2" ]; }
# has_bit VALUE MASK: VALUE is a number with a bit of MASK set
has_bit() { [[ $1 =~ ^[0-9]+$ ]] && [ $(($1 & $2)) -ne 0 ]; }

# --- images --------------------------------------------------------------
# mkimg PATH MIB: sparse raw image of MIB MiB
mkimg() {
        rm -f "$1"
        truncate -s "${2}M" "$1"
}
# put_random PATH OFFSET_MIB COUNT_MIB: random data into an image, prints md5
put_random() {
        dd if=/dev/urandom of=/tmp/rnd bs=1M count="$3" status=none
        dd if=/tmp/rnd of="$1" bs=1M seek="$2" conv=notrunc,fsync status=none
        md5sum </tmp/rnd | cut -d' ' -f1
}
# img_md5 PATH OFFSET COUNT BS: md5 of COUNT blocks of BS bytes at block OFFSET
img_md5() { dd if="$1" bs="$4" skip="$2" count="$3" status=none | md5sum | cut -d' ' -f1; }

# --- domUs ---------------------------------------------------------------
# domu_create NAME MODE EXTRA_CMDLINE [DISKSPEC...]: PV domU, our kernel and
# busybox initramfs; no disk unless given. Prints nothing; sets DOMID.
domu_create() {
        local name=$1 mode=$2 extra=$3 disks=""
        shift 3
        for d in "$@"; do disks="$disks'$d',"; done
        rm -f "$CONSOLE_DIR/guest-$name.log"
        cat >"/tmp/$name.cfg" <<EOF
name="$name"
type="pv"
kernel="$DOMU_KERNEL"
ramdisk="$DOMU_RAMDISK"
extra="console=hvc0 loglevel=4 mitigations=off vbdt=$mode $extra ${DOMU_EXTRA:-}"
memory=256
vcpus=${DOMU_VCPUS:-1}
on_poweroff="destroy"
on_reboot="restart"
on_crash="destroy"
EOF
        [ -z "$disks" ] || echo "disk=[${disks%,}]" >>"/tmp/$name.cfg"
        DOMID=""
        rm -f "/var/log/xen/xl-$name.log"
        # shellcheck disable=SC2086
        if ! xl ${XL_OPTS:-} create "/tmp/$name.cfg" >"$OUT/$name.xl-create.log" 2>&1; then
                fail "xl create $name: $(tail -n 3 "$OUT/$name.xl-create.log" | tr '\n' ' ')"
                return 1
        fi
        DOMID=$(xl domid "$name" 2>/dev/null)
        CUR_DOMU=$name
        log "domU $name is domain $DOMID (mode $mode)"
}
console_of() { tr -d '\r' <"$CONSOLE_DIR/guest-$1.log" 2>/dev/null; }
console_has() { console_of "$1" | grep -q -E "$2"; }
# wait_line NAME REGEX SECONDS: wait for a console line of domU NAME
wait_line() {
        local end=$(($(cut -d. -f1 /proc/uptime) + $3))
        while ! console_of "$1" | grep -q -E "$2"; do
                [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && return 1
                sleep 0.5
        done
        return 0
}
# console_pos NAME: how far domU NAME's console has got: line count and the
# last VBDT line; "held at TAG" when that line is a hold (domu-init) dom0 has
# not released yet, i.e. the guest cannot have moved past that point
console_pos() {
        local n last how
        # one awk: cheap enough to sample around every live read
        IFS=$'\t' read -r n last < <(awk '{ sub(/\r$/, "") } /^VBDT/ { l = $0 } END { printf "%d\t%s\n", NR, l }' \
                "$CONSOLE_DIR/guest-$1.log" 2>/dev/null || echo 0)
        case $last in
        "VBDT hold "*)
                how=${last#VBDT hold }
                how="guest held at ${how%% *}"
                ;;
        "") how="no VBDT line yet" ;;
        *) how="guest not in a hold: it may have moved on" ;;
        esac
        echo "console of $1 at line ${n:-0}: '$last' ($how)"
}
# --- holding the guest: live state is read where the guest cannot move on ---
# domu-init's "hold TAG" prints "VBDT hold TAG t=..." and waits (up to
# vbdt_hold seconds, default 60) for /local/domain/D/data/vbdt-release/TAG.
# A test waits for the hold, reads and checks live state, then releases:
#   hold_wait NAME TAG SECONDS ... check_xs ... release NAME TAG
hold_wait() {
        wait_line "$1" "^VBDT hold $2 " "$3" && return 0
        fail "guest never held at '$2' within $3 s ($(console_pos "$1"))"
        return 1
}
# release NAME TAG: let domU NAME past its hold TAG (or through it at once,
# if it is not there yet). Harmless when the domain is gone.
release() {
        local d p at
        d=$(xl domid "$1" 2>/dev/null) || {
                log "release $2: domU $1 is gone"
                return 0
        }
        p=/local/domain/$d/data/vbdt-release/$2
        at=$(console_pos "$1")
        # the guest owns data/ (libxl); n$d: the guest may read, nobody else
        if xenstore-write "$p" "$(ts)" && xenstore-chmod "$p" "n$d"; then
                log "release $1 at '$2' (before: $at)"
        else
                fail "cannot write $p to release the guest"
        fi
}
# xs_sample PATH: read live node PATH once: XS_VAL (empty if absent),
# XS_SEEN ("'value'" or "absent") and XS_AT, the guest's console position
# around the read (console_pos), for check's failure message
xs_sample() {
        local at0
        at0=$(console_pos "${CUR_DOMU:-}")
        if XS_VAL=$(xenstore-read "$1" 2>/dev/null); then
                XS_SEEN="'$XS_VAL'"
        else
                XS_VAL=""
                XS_SEEN="absent"
        fi
        XS_AT=$(console_pos "${CUR_DOMU:-}")
        [ "$XS_AT" = "$at0" ] || XS_AT="console moved during the read, from [$at0] to [$XS_AT]"
}
# check_xs DESCRIPTION PATH EXPECTED: one read of live node PATH must give
# EXPECTED; the log has the value read, a failure where the guest was
check_xs() {
        xs_sample "$2"
        CHECK_AT="$2; $XS_AT" check "$1 (read $XS_SEEN)" eq "$XS_VAL" "$3"
}
# wait_xs DESCRIPTION PATH EXPECTED SECONDS: live node PATH must reach
# EXPECTED within SECONDS (for a state the backend/frontend moves to on its
# own, while the guest is held); checks the last value read
wait_xs() {
        local t0 end waited
        t0=$(ts)
        end=$(($(cut -d. -f1 /proc/uptime) + $4))
        while :; do
                xs_sample "$2"
                [ "$XS_VAL" = "$3" ] && break
                [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && break
                sleep 0.3
        done
        waited=$(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')
        CHECK_AT="$2, polled for ${waited}s; $XS_AT" \
                check "$1 (read $XS_SEEN after ${waited}s)" eq "$XS_VAL" "$3"
}
# check_xs_gone DESCRIPTION PATH: live node PATH must not exist; a failure
# shows what is there and where the guest was
check_xs_gone() {
        local at
        at=$(console_pos "${CUR_DOMU:-}")
        if xenstore-exists "$2" 2>/dev/null; then
                CHECK_AT="$2 still holds: $(xenstore-ls -f "$2" 2>/dev/null | head -n 3 | tr '\n' ' '); $at" \
                        check "$1" false
        else
                check "$1" true
        fi
}
# check_live DESCRIPTION COMMAND...: check with a condition on live state
# (e.g. a process); a failure records the guest's console position
check_live() {
        local at
        at=$(console_pos "${CUR_DOMU:-}")
        CHECK_AT=$at check "$@"
}
# vbdt_val NAME KEY: value of the last "VBDT ... KEY=value" console line
vbdt_val() { console_of "$1" | grep '^VBDT ' | sed -n "s/.*[[:space:]]$2=\([^[:space:]]*\).*/\1/p" | tail -n 1; }
domu_gone() { ! xl domid "$1" >/dev/null 2>&1; }
# wait_domu_gone NAME SECONDS (destroys it on timeout)
wait_domu_gone() {
        local end=$(($(cut -d. -f1 /proc/uptime) + $2))
        while ! domu_gone "$1"; do
                if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
                        xl destroy "$1" 2>/dev/null
                        return 1
                fi
                sleep 0.5
        done
        return 0
}
# no domain other than dom0 left (a domain whose grants are still mapped
# stays around as a dying "(null)" domain)
only_dom0_left() {
        local end=$(($(cut -d. -f1 /proc/uptime) + ${1:-15}))
        while [ "$(xl list | tail -n +2 | wc -l)" != 1 ]; do
                if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
                        xl list | sed 's/^/    /'
                        return 1
                fi
                sleep 0.5
        done
        return 0
}
# guest_done NAME SECONDS: wait for the guest's VBDT-END; on timeout, fail
# and dump everything useful (xenstore, vbdd state, Xen's log)
guest_done() {
        if wait_line "$1" '^VBDT-END' "$2"; then
                console_of "$1" | grep -q '^VBDT ERROR watchdog' && {
                        fail "guest watchdog fired (I/O hung)"
                        diag "$DOMID"
                        SKIP_CHECKS=1
                        return 1
                }
                # dom0 released too late: what it checked was not held still
                console_of "$1" | grep -q '^VBDT ERROR hold' &&
                        fail "guest hold timed out: $(console_of "$1" | grep '^VBDT ERROR hold' | head -n 1)"
                return 0
        fi
        fail "guest did not finish within $2 s"
        diag "$DOMID"
        SKIP_CHECKS=1
        return 1
}
diag() {
        echo "----- diagnostics (domain $1) -----"
        xs_dump "$1" diag
        if [ -n "${VBDD_PID:-}" ] && kill -0 "$VBDD_PID" 2>/dev/null; then
                echo "vbdd pid $VBDD_PID: $(grep State /proc/$VBDD_PID/status) wchan=$(cat /proc/$VBDD_PID/wchan)"
                cat "/proc/$VBDD_PID/stack" 2>/dev/null | sed 's/^/    /'
        fi
        [ -n "${VBDD_LOG:-}" ] && show_vbdd_log
        echo "xl dmesg (tail):"
        xl dmesg | tail -n 15 | sed 's/^/    /'
        echo "-----------------------------------"
}
save_console() { console_of "$1" >"$OUT/$CUR_TEST.console.log"; }
show_console() {
        echo "----- console of $1 (VBDT lines) -----"
        console_of "$1" | grep -E '^VBDT|blkfront|xvda|\[domU\]' | tail -n 60
        echo "--------------------------------------"
}

# --- vbdd, attached the way a toolstack does ------------------------------
vbdd_be() { echo "/local/domain/0/backend/vbd3/$1/$DEVID"; }
# be_of BACKEND DOMID: the backend directory of DOMID's xvda (blkback and the
# xl tests: libxl's backend/vbd; vbdd attached here: backend/vbd3)
be_of() {
        case $1 in
        vbdd) vbdd_be "$2" ;;
        *) echo "/local/domain/0/backend/vbd/$2/$DEVID" ;;
        esac
}
vbdd_fe() { echo "/local/domain/$1/device/vbd/$DEVID"; }
# xs_attach_vbd3 DOMID IMAGE MODE: write backend + frontend nodes (contract)
xs_attach_vbd3() {
        local d=$1 img=$2 mode=$3 be fe
        be=$(vbdd_be "$d")
        fe=$(vbdd_fe "$d")
        xenstore-write "$be" ""
        xenstore-chmod "$be" n0 "r$d"
        xenstore-write "$be/frontend" "$fe" "$be/frontend-id" "$d" "$be/online" 1 \
                "$be/removable" 0 "$be/bootable" 1 "$be/mode" "$mode" "$be/params" "${VBDD_FORMAT:-raw}:$img" \
                "$be/type" vbd3 "$be/device-type" disk "$be/dev" "${VBDD_DEV:-xvda}"
        xenstore-write "$fe" ""
        xenstore-chmod "$fe" "n$d" r0
        xenstore-write "$fe/backend" "$be" "$fe/backend-id" 0 "$fe/virtual-device" "$DEVID" \
                "$fe/device-type" disk
        xenstore-write "$be/state" 1
        xenstore-write "$fe/state" 1
        xenstore-chmod -r "$be" n0 "r$d"
        xenstore-chmod -r "$fe" "n$d" r0
}
xs_remove_vbd3() {
        xenstore-rm "$(vbdd_be "$1")" 2>/dev/null
        xenstore-rm "/local/domain/0/backend/vbd3/$1" 2>/dev/null
        xenstore-rm "$(vbdd_fe "$1")" 2>/dev/null
        return 0
}
# vbdd_attach DOMID IMAGE MODE TAG: nodes, then start vbdd in the background
# (VBDD_FORMAT: the image's format, default raw; VBDD_FILTERS: filters over
# it, e.g. "cbt:")
vbdd_attach() {
        local d=$1 img=$2 mode=$3 tag=$4
        xs_attach_vbd3 "$d" "$img" "$mode"
        VBDD_LOG=$OUT/$tag.vbdd.log
        # shellcheck disable=SC2086
        "$VBDD" --domid "$d" --devid "$DEVID" --image "${VBDD_FILTERS:-}${VBDD_FORMAT:-raw}:$img" --mode "$mode" ${VBDD_ARGS:-} >"$VBDD_LOG" 2>&1 &
        VBDD_PID=$!
        VBDD_RC=""
        log "vbdd pid $VBDD_PID serving domain $d ($img, mode $mode), log $VBDD_LOG"
        sleep 0.5
        if ! kill -0 "$VBDD_PID" 2>/dev/null; then
                wait "$VBDD_PID"
                VBDD_RC=$?
                fail "vbdd exited at once (rc=$VBDD_RC): $(tail -n 2 "$VBDD_LOG" | tr '\n' ' ')"
        fi
}
# vbdd_wait_exit SECONDS: sets VBDD_RC (exit code, or "hung" after SIGKILL)
vbdd_wait_exit() {
        [ -n "$VBDD_RC" ] && return 0
        local end=$(($(cut -d. -f1 /proc/uptime) + $1)) t0
        t0=$(ts)
        while kill -0 "$VBDD_PID" 2>/dev/null; do
                if [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ]; then
                        log "vbdd pid $VBDD_PID still running after $1 s: stack + SIGKILL"
                        cat "/proc/$VBDD_PID/stack" 2>/dev/null | sed 's/^/    /'
                        kill -9 "$VBDD_PID" 2>/dev/null
                        wait "$VBDD_PID" 2>/dev/null
                        VBDD_RC=hung
                        return 1
                fi
                sleep 0.2
        done
        wait "$VBDD_PID"
        VBDD_RC=$?
        log "vbdd pid $VBDD_PID exited rc=$VBDD_RC after $(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')s of waiting"
        return 0
}
vbdd_running() { kill -0 "$VBDD_PID" 2>/dev/null; }
show_vbdd_log() {
        echo "----- vbdd log (last 25 lines) -----"
        tail -n 25 "$VBDD_LOG" 2>/dev/null
        echo "------------------------------------"
}
# xs_dump DOMID TAG: backend + frontend directories into the log
xs_dump() {
        echo "----- xenstore ($2) -----"
        xenstore-ls -fp "/local/domain/0/backend/vbd3/$1" 2>/dev/null
        xenstore-ls -fp "/local/domain/0/backend/vbd/$1" 2>/dev/null
        xenstore-ls -fp "/local/domain/$1/device/vbd" 2>/dev/null
        echo "-------------------------"
}

# --- blkback (reference backend) -----------------------------------------
# blkback_attach DOMID IMAGE MODE: loop device + xl block-attach
blkback_attach() {
        local access=rw
        [ "$3" = r ] && access=ro
        LOOP=$(losetup --direct-io=on -f --show "$2") || {
                fail "losetup $2"
                return 1
        }
        xl block-attach "$1" "format=raw,vdev=xvda,access=$access,backendtype=phy,script=$PHY_SCRIPT,target=$LOOP" ||
                fail "xl block-attach to domain $1"
        log "blkback: domain $1 xvda on $LOOP ($2, $access)"
}
blkback_release() {
        [ -n "${LOOP:-}" ] && losetup -d "$LOOP" 2>/dev/null
        LOOP=""
}

# --- backend-independent attach/detach -----------------------------------
# attach BACKEND DOMID IMAGE MODE TAG
attach() {
        case $1 in
        vbdd) vbdd_attach "$2" "$3" "$4" "$5" ;;
        blkback) blkback_attach "$2" "$3" "$4" ;;
        esac
}
# after the domain is gone: reap the backend; for vbdd assert a clean exit
reap() { # reap BACKEND DOMID WHY
        case $1 in
        vbdd)
                vbdd_wait_exit 30
                if eq "$VBDD_RC" 0; then
                        log "ok:   vbdd exits 0 after $3"
                else
                        fail "vbdd exits 0 after $3 (rc=$VBDD_RC)"
                fi
                xs_remove_vbd3 "$2"
                ;;
        blkback)
                sleep 1
                blkback_release
                ;;
        esac
}

# --- vbdd from an xl config: script=block-vbd3 + vbd-ctl watch ------------
# Xen 4.17's xl refuses backendtype=tap, so the disk line is backendtype=phy
# with script=block-vbd3: libxl writes /local/domain/0/backend/vbd/D/N (params
# = the bare path) and waits for InitWait; `vbd-ctl watch --type vbd` starts
# vbdd for it; libxl runs `block-vbd3 add`; on shutdown/destroy libxl writes
# online=0 + Closing, waits for Closed, runs `block-vbd3 remove` and deletes
# the directories. The kernel's blkback would claim the vbd directory too, so
# it is unloaded for these tests. vbdd, vbd-ctl and the script are installed
# as a package would (dom0's root is a throw-away snapshot).
XL_SCRIPT=/etc/xen/scripts/block-vbd3
XL_RUNDIR=/run/vbd
xl_be() { echo "/local/domain/0/backend/vbd/$1/$DEVID"; }
xl_disk() { echo "format=raw,vdev=xvda,access=${2:-rw},backendtype=phy,script=block-vbd3,target=$1"; }
# xl_setup: install, unload blkback, start the watcher (WATCH_PID)
xl_setup() {
        WATCH_PID=""
        if [ ! -x /share/bin/vbd-ctl ] || [ ! -f /share/bin/block-vbd3 ]; then
                fail "vbd-ctl or block-vbd3 missing from the share (run.sh PATH/TO/vbdd PATH/TO/vbd-ctl)"
                return 1
        fi
        install -m 755 "$VBDD" /usr/local/sbin/vbdd
        install -m 755 /share/bin/vbd-ctl /usr/local/sbin/vbd-ctl
        install -m 755 /share/bin/block-vbd3 "$XL_SCRIPT"
        mkdir -p /etc/vbd
        printf '[ctl]\nvbdd = /usr/local/sbin/vbdd\n' >/etc/vbd/vbd.conf
        if [ -d /sys/module/xen_blkback ] && ! rmmod xen-blkback; then
                fail "cannot unload xen-blkback (it would claim the vbd directory)"
                return 1
        fi
        rm -rf "$XL_RUNDIR"
        vbd-ctl watch --type vbd >"$OUT/$CUR_TEST.watch.log" 2>&1 &
        WATCH_PID=$!
        for _ in $(seq 1 50); do
                grep -q 'watching' "$OUT/$CUR_TEST.watch.log" && break
                sleep 0.1
        done
        log "vbd-ctl watch --type vbd: pid $WATCH_PID; $(head -n 1 "$OUT/$CUR_TEST.watch.log")"
        kill -0 "$WATCH_PID" 2>/dev/null || {
                fail "vbd-ctl watch did not start: $(tail -n 2 "$OUT/$CUR_TEST.watch.log" | tr '\n' ' ')"
                return 1
        }
}
# xl_teardown: stop the watcher (it must exit 0), load blkback again
xl_teardown() {
        local rc
        if [ -n "${WATCH_PID:-}" ]; then
                kill -TERM "$WATCH_PID" 2>/dev/null
                wait "$WATCH_PID"
                rc=$?
                check "vbd-ctl watch exits 0 on SIGTERM (rc=$rc)" eq "$rc" 0
                echo "----- vbd-ctl watch log -----"
                cat "$OUT/$CUR_TEST.watch.log"
                echo "-----------------------------"
        fi
        WATCH_PID=""
        modprobe xen-blkback || log "modprobe xen-blkback FAILED"
}
# xl_vbdd_pid DOMID: the pid of the vbdd serving DOMID's xvda (vbd-ctl info)
xl_vbdd_pid() { vbd-ctl info -d "$1" -n "$DEVID" --json 2>/dev/null | sed -n 's/^ *"pid": *\([0-9]*\).*/\1/p'; }
# xl_after_create DOMID NAME: the checks once `xl create` returned (libxl saw
# InitWait and ran the add script); sets VBDD_PID and VBDD_LOG
xl_after_create() {
        local d=$1 name=$2 be
        be=$(xl_be "$d")
        xs_dump "$d" "after xl create"
        # live reads: the guest cannot be past its first hold (rw) or
        # the disk's removal (detach), or it loops on I/O (destroy)
        check_xs "libxl wrote the backend dir with script=$XL_SCRIPT" "$be/script" "$XL_SCRIPT"
        check_xs "backend type phy" "$be/type" phy
        check_xs "backend params the bare image path" "$be/params" "$IMGDIR/$name.img"
        check "libxl ran 'block-vbd3 add'" grep -q "calling hotplug script: $XL_SCRIPT add" "$OUT/$name.xl-create.log"
        check_xs "hotplug-status connected" "$be/hotplug-status" connected
        VBDD_PID=$(xl_vbdd_pid "$d")
        VBDD_LOG=$OUT/$CUR_TEST.vbdd.log
        VBDD_RC=""
        check "a vbdd answers for $d/$DEVID (vbd-ctl info: pid ${VBDD_PID:-none})" test -n "$VBDD_PID"
        check "the watcher started it, for backend type vbd" \
                grep -q "backend/vbd/$d/$DEVID appeared: starting vbdd" "$OUT/$CUR_TEST.watch.log"
        check "vbdd runs with --type vbd" eq "$(tr '\0' ' ' <"/proc/${VBDD_PID:-0}/cmdline" 2>/dev/null | grep -c -- '--type vbd')" 1
        check "xen-blkback is not loaded" test ! -d /sys/module/xen_blkback
}
# xl_after_remove DOMID LIBXL_LOG: the domain is gone; the remove path must
# have left nothing behind
xl_after_remove() {
        local d=$1 xllog=$2 be fe end
        be=$(xl_be "$d")
        fe=$(vbdd_fe "$d")
        end=$(($(cut -d. -f1 /proc/uptime) + 30))
        while [ -n "${VBDD_PID:-}" ] && kill -0 "$VBDD_PID" 2>/dev/null; do
                [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && break
                sleep 0.2
        done
        cp "$XL_RUNDIR/vbdd-$d-$DEVID.log" "$VBDD_LOG" 2>/dev/null
        show_vbdd_log
        echo "----- libxl: hotplug and device removal ($xllog) -----"
        grep -E 'hotplug|remove|Closed|timed out|Timeout|unable' "$xllog" | tail -n 25
        echo "------------------------------------------------------"
        xs_dump "$d" "after the domain is gone"
        check_live "vbdd process $VBDD_PID is gone" test -n "${VBDD_PID:-}" -a ! -d "/proc/${VBDD_PID:-0}"
        check "libxl ran 'block-vbd3 remove'" grep -q "calling hotplug script: $XL_SCRIPT remove" "$xllog"
        check "libxl removed the device without a timeout" not_grep 'unable to remove device|Timeout reached|timed out' "$xllog"
        check_xs_gone "backend directory $be removed" "$be"
        check_xs_gone "backend directory of the domain removed" "/local/domain/0/backend/vbd/$d"
        check_xs_gone "frontend directory removed" "$fe"
        check "no control socket left in $XL_RUNDIR ($(ls "$XL_RUNDIR" 2>/dev/null | tr '\n' ' '))" \
                test -z "$(ls "$XL_RUNDIR"/*.sock 2>/dev/null)"
        check "vbd-ctl list shows no daemon" eq "$(vbd-ctl list --json 2>/dev/null | tr -d ' \n')" "[]"
}
not_grep() { ! grep -q -E "$1" "$2"; }
