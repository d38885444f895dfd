#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The real-guest tests, run in dom0. Each test boots a PV domU (guest/domu-init
# decides what the guest does from its kernel command line), gives it a disk,
# watches the domU console (xenconsoled log) and checks the image in dom0.
# Results: "VBDT-RESULT <test> PASS|FAIL|SKIP <detail>" in /share/out/results.txt.
#
# /share/config (written by run.sh) may set:
#   VBD_BACKENDS  backends for the functional tests (default "vbdd"; add
#                 "blkback", the reference that validates the tests)
#   VBD_TESTS     subset of: rw mq mqbench reboot rebind ro flush backup mount qcow2 rbd migrate
#                 detach destroy xl xldetach xldestroy xlcrash bench
#   RBD_HOST RBD_DOM0 RBD_SKIP RBD_FAIL   the rbd test's Ceph (see run.sh)
#   BENCH_MIB BENCH_SECS BENCH_ROUNDS   benchmark size/duration/rounds
HERE=$(dirname "$0")
# shellcheck source=lib.sh
. "$HERE/lib.sh"
VBD_BACKENDS="vbdd"
VBD_TESTS="rw mq mqbench reboot rebind ro flush backup mount qcow2 rbd migrate detach destroy xl xldetach xldestroy xlcrash bench"
BENCH_MIB=64
BENCH_SECS=8
BENCH_ROUNDS=2
# shellcheck disable=SC1091
[ -f /share/config ] && . /share/config
: >"$OUT/results.txt"

VBDD_OK=1
if [[ " $VBD_BACKENDS $VBD_TESTS " == *" vbdd "* ]] || [[ " $VBD_TESTS " == *" bench "* ]]; then
        if [ ! -x "$VBDD" ]; then
                log "no vbdd at $VBDD"
                VBDD_OK=0
        elif ldd "$VBDD" | grep -q 'not found'; then
                log "vbdd is missing shared libraries in dom0:"
                ldd "$VBDD" | grep 'not found'
                VBDD_OK=0
        fi
fi

# --- (1) write / read back / compare with the image in dom0 --------------
t_rw() { # t_rw BACKEND
        local b=$1 name=rw-$1 img=$IMGDIR/rw-$1.img r8 pat
        test_begin "rw-$b"
        mkimg "$img" 64
        r8=$(put_random "$img" 8 4)
        log "image ready, creating the domU"
        domu_create "$name" rw "vbdt_timeout=120" || return
        attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        # the guest holds once it sees xvda, before any I/O: the nodes of the
        # connected disk cannot move under these reads
        if hold_wait "$name" connected 60; then
                xs_dump "$DOMID" connected
                local be
                be=$(be_of "$b" "$DOMID")
                check_xs "backend state 4 (Connected)" "$be/state" 4
                check_xs "frontend state 4 (Connected)" "$(vbdd_fe "$DOMID")/state" 4
                check_xs "backend sectors = 131072" "$be/sectors" 131072
                check_xs "backend sector-size = 512" "$be/sector-size" 512
                check_xs "backend feature-flush-cache = 1" "$be/feature-flush-cache" 1
        fi
        release "$name" connected
        guest_done "$name" 130
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        check "guest sees 131072 sectors" eq "$(vbdt_val "$name" sectors)" 131072
        check "guest sees a writable disk (ro=0)" eq "$(vbdt_val "$name" ro)" 0
        check "guest reads the data dom0 wrote (md5 $r8)" eq "$(console_of "$name" | sed -n 's/^VBDT read8 md5=//p')" "$r8"
        pat=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p')
        check "guest write succeeded" eq "$(console_of "$name" | sed -n 's/^VBDT write rc=\([0-9]*\).*/\1/p')" 0
        check "guest reads back what it wrote" eq "$(console_of "$name" | sed -n 's/^VBDT readback md5=//p')" "$pat"
        check "image in dom0 holds the guest's 4 MiB (md5 $pat)" eq "$(img_md5 "$img" 1 4 1M)" "$pat"
        local small back
        small=$(console_of "$name" | sed -n 's/^VBDT small md5=\([0-9a-f]*\).*/\1/p')
        back=$(console_of "$name" | sed -n 's/^VBDT small .*back=\([0-9a-f]*\).*/\1/p')
        check "7-sector write at sector 20001 read back by the guest" eq "$back" "$small"
        check "7-sector write at sector 20001 is in the image" eq "$(img_md5 "$img" 20001 7 512)" "$small"
        [ "$b" = vbdd ] && show_vbdd_log
        test_end
}

# --- (1b) multi-queue: a 2-vCPU guest's blkfront opens 2 rings ------------
t_mq() { # t_mq BACKEND
        local b=$1 name=mq-$1 img=$IMGDIR/mq-$1.img r8 pat fe be
        test_begin "mq-$b"
        mkimg "$img" 64
        r8=$(put_random "$img" 8 4)
        DOMU_VCPUS=2 domu_create "$name" rw "vbdt_timeout=120" || return
        VBDD_ARGS="${VBDD_ARGS:-} --max-queues 2" attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        if hold_wait "$name" connected 60; then
                xs_dump "$DOMID" connected
                be=$(be_of "$b" "$DOMID")
                fe=$(vbdd_fe "$DOMID")
                check_xs "frontend state 4 (Connected)" "$fe/state" 4
                [ "$b" = vbdd ] && check_xs "backend multi-queue-max-queues = 2" "$be/multi-queue-max-queues" 2
                check_xs "frontend multi-queue-num-queues = 2" "$fe/multi-queue-num-queues" 2
                for q in 0 1; do
                        check_live "frontend queue-$q/ring-ref published" xenstore-read "$fe/queue-$q/ring-ref"
                        check_live "frontend queue-$q/event-channel published" xenstore-read "$fe/queue-$q/event-channel"
                done
                check_xs_gone "no flat ring-ref with 2 queues" "$fe/ring-ref"
                if [ "$b" = vbdd ]; then
                        check "vbdd connected 2 queues" grep -q "connected: 2 queue(s)" "$VBDD_LOG"
                        local info
                        info=$(/share/bin/vbd-ctl info -d "$DOMID" -n "$DEVID" 2>&1)
                        log "vbd-ctl info: $(echo "$info" | grep -E '^(queues|xenbus|error)' | tr '\n' ';')"
                        check "vbd-ctl info: 2 queues" eq "$(echo "$info" | sed -n 's/^queues *\([0-9]*\) connected.*/\1/p')" 2
                fi
        fi
        release "$name" connected
        guest_done "$name" 130
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        check "guest reads the data dom0 wrote (md5 $r8)" eq "$(console_of "$name" | sed -n 's/^VBDT read8 md5=//p')" "$r8"
        pat=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p')
        check "guest write succeeded" eq "$(console_of "$name" | sed -n 's/^VBDT write rc=\([0-9]*\).*/\1/p')" 0
        check "guest reads back what it wrote" eq "$(console_of "$name" | sed -n 's/^VBDT readback md5=//p')" "$pat"
        check "image in dom0 holds the guest's 4 MiB (md5 $pat)" eq "$(img_md5 "$img" 1 4 1M)" "$pat"
        local small back
        small=$(console_of "$name" | sed -n 's/^VBDT small md5=\([0-9a-f]*\).*/\1/p')
        back=$(console_of "$name" | sed -n 's/^VBDT small .*back=\([0-9a-f]*\).*/\1/p')
        check "7-sector write at sector 20001 read back by the guest" eq "$back" "$small"
        check "7-sector write at sector 20001 is in the image" eq "$(img_md5 "$img" 20001 7 512)" "$small"
        [ "$b" = vbdd ] && show_vbdd_log
        test_end
}

# --- (1c) multi-queue speed: one 2-vCPU guest, a disk on 1 queue, one on 2 --
# Two vbdd VBDs in one 2-vCPU domU: xvda with --max-queues 1, xvdb with
# --max-queues 2 (blkfront opens one ring per vCPU), the bench mode's runs
# interleaved on both.  Figures only (TCG: no speed is asserted); checked:
# the queue counts, no error, both daemons exit 0.
t_mqbench() {
        local b=$1 name=mqbench-$1 img1=$IMGDIR/mqb-q1.img img2=$IMGDIR/mqb-q2.img pid1 pid2 log1 limit
        local rounds=1 secs=$((BENCH_SECS / 2 > 2 ? BENCH_SECS / 2 : 2))
        if [ "$b" != vbdd ]; then
                test_skip "mqbench-$b" "vbdd only"
                return
        fi
        test_begin "mqbench-$b"
        for f in "$img1" "$img2"; do
                rm -f "$f"
                dd if=/dev/zero of="$f" bs=1M count="$BENCH_MIB" conv=fsync status=none
        done
        limit=$((rounds * 2 * (4 * secs + 30) + 120))
        DOMU_VCPUS=2 domu_create "$name" bench \
                "vbdt_disks=xvda=vbdd-q1,xvdb=vbdd-q2 vbdt_mib=$BENCH_MIB vbdt_secs=$secs vbdt_rounds=$rounds vbdt_timeout=$limit" || return
        VBDD_ARGS="${VBDD_ARGS:-} --max-queues 1" vbdd_attach "$DOMID" "$img1" w "$CUR_TEST.q1"
        pid1=$VBDD_PID
        log1=$VBDD_LOG
        DEVID=51728 VBDD_DEV=xvdb VBDD_ARGS="${VBDD_ARGS:-} --max-queues 2" vbdd_attach "$DOMID" "$img2" w "$CUR_TEST.q2"
        pid2=$VBDD_PID
        guest_done "$name" $((limit + 60))
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        check "xvda (--max-queues 1) connected 1 queue" grep -q "connected: 1 queue(s)" "$log1"
        check "xvdb (--max-queues 2) connected 2 queues" grep -q "connected: 2 queue(s)" "$VBDD_LOG"
        VBDD_PID=$pid2 VBDD_RC="" DEVID=51728 reap vbdd "$DOMID" "guest poweroff (xvdb)"
        VBDD_PID=$pid1 VBDD_RC="" reap vbdd "$DOMID" "guest poweroff (xvda)"
        check "no benchmark errors" eq "$(console_of "$name" | grep -c -E 'VBDBENCH-ERROR|VBDT ERROR')" 0
        console_of "$name" | grep '^VBDT bench' >"$OUT/mqbench.raw.txt"
        bench_table "$OUT/mqbench.raw.txt" vbdd-q2 vbdd-q1 >"$OUT/mqbench.txt"
        cat "$OUT/mqbench.txt"
        check "figures for both disks" test "$(grep -c . "$OUT/mqbench.txt")" -ge 5
        test_end
}

# --- (2a) guest reboot: new domain, disk re-attached, data persists ------
t_reboot() {
        local b=$1 name=reboot-$1 img=$IMGDIR/reboot-$1.img d1 d2 pat
        test_begin "reboot-$b"
        mkimg "$img" 64
        printf 'VBDT-PHASE-1' | dd of="$img" conv=notrunc status=none
        domu_create "$name" reboot "vbdt_timeout=90" || return
        d1=$DOMID
        attach "$b" "$d1" "$img" w "$CUR_TEST.1"
        wait_line "$name" '^VBDT phase1 done|^VBDT-END' 130
        console_of "$name" | grep -q '^VBDT phase1 done' || {
                fail "guest phase 1 did not finish"
                diag "$d1"
        }
        # xl restarts the domain with a new domid; the toolstack re-attaches
        local end=$(($(cut -d. -f1 /proc/uptime) + 60))
        d2=""
        while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ]; do
                d2=$(xl domid "$name" 2>/dev/null)
                [ -n "$d2" ] && [ "$d2" != "$d1" ] && break
                d2=""
                sleep 0.3
        done
        [ -n "$d2" ] || fail "domain was not restarted by xl"
        log "domain rebooted: $d1 -> $d2"
        if [ "$b" = vbdd ]; then
                reap vbdd "$d1" "the old domain died (reboot)"
                show_vbdd_log
        fi
        if [ -n "$d2" ]; then
                # libxl re-creates a block-attached disk itself on reboot (it
                # is in the domain's stored config); vbd3 is ours to re-attach
                [ "$b" = vbdd ] && attach vbdd "$d2" "$img" w "$CUR_TEST.2"
                guest_done "$name" 130
                show_console "$name"
                save_console "$name"
                wait_domu_gone "$name" 30 || fail "domU did not power off"
                reap "$b" "$d2" "guest poweroff"
        fi
        pat=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p' | head -n 1)
        check "guest write before reboot succeeded" eq "$(console_of "$name" | sed -n 's/^VBDT write rc=\([0-9]*\).*/\1/p' | head -n 1)" 0
        check "after reboot the guest reads what it wrote before" \
                eq "$(console_of "$name" | sed -n 's/^VBDT phase2 md5=//p')" "$pat"
        check "image in dom0 holds the data" eq "$(img_md5 "$img" 1 4 1M)" "$pat"
        check "image carries the guest's phase-2 marker" eq "$(head -c 12 "$img")" VBDT-PHASE-2
        test_end
}

# --- (2b) frontend closes and re-initialises, same domain, same backend ---
t_rebind() {
        local b=$1 name=rebind-$1 img=$IMGDIR/rebind-$1.img p1 be
        test_begin "rebind-$b"
        mkimg "$img" 64
        domu_create "$name" rebind "vbdt_timeout=180" || return
        attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        be=$(be_of "$b" "$DOMID")
        # held after xvda went away on unbind: the backend answers the
        # frontend's close on its own time (polled), the guest writes state 1
        # only once released
        if hold_wait "$name" unbound 120; then
                wait_xs "backend Closed (6) after the frontend closed" "$be/state" 6 15
                xs_dump "$DOMID" "after unbind"
                [ "$b" = vbdd ] && check_live "vbdd still running after the frontend closed (online=1)" vbdd_running
        fi
        release "$name" unbound
        # held after writing its frontend state back to Initialising
        if hold_wait "$name" reinit 60 && console_has "$name" '^VBDT frontend state=1'; then
                wait_xs "backend back to InitWait (2) after frontend Initialising" "$be/state" 2 15
                xs_dump "$DOMID" "after frontend state=1"
                [ "$b" = vbdd ] && check_live "same vbdd process still serving" vbdd_running
        else
                fail "guest did not re-initialise its frontend ($(console_pos "$name"))"
        fi
        release "$name" reinit
        guest_done "$name" 190
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        p1=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p' | head -n 1)
        check "disk went away on unbind" console_has "$name" '^VBDT unbound'
        check "data written before the close is in the image" eq "$(img_md5 "$img" 1 4 1M)" "$p1"
        [ "$b" = vbdd ] && show_vbdd_log
        test_end
}

# --- (3) read-only disk --------------------------------------------------
t_ro() {
        local b=$1 name=ro-$1 img=$IMGDIR/ro-$1.img r8 before
        test_begin "ro-$b"
        mkimg "$img" 64
        r8=$(put_random "$img" 8 4)
        before=$(md5sum <"$img" | cut -d' ' -f1)
        domu_create "$name" ro "vbdt_timeout=120" || return
        attach "$b" "$DOMID" "$img" r "$CUR_TEST"
        # held once it sees xvda, before any I/O
        if hold_wait "$name" connected 60; then
                xs_sample "$(be_of "$b" "$DOMID")/info"
                CHECK_AT="$(be_of "$b" "$DOMID")/info; $XS_AT" \
                        check "backend info has VDISK_READONLY (4) (read $XS_SEEN)" has_bit "$XS_VAL" 4
        fi
        release "$name" connected
        guest_done "$name" 130
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        check "guest sees a read-only disk (ro=1)" eq "$(vbdt_val "$name" ro)" 1
        check "guest reads the data" eq "$(console_of "$name" | sed -n 's/^VBDT read8 md5=//p')" "$r8"
        check "guest write fails" eq "$(console_of "$name" | sed -n 's/^VBDT rowrite rc=\([0-9]*\).*/\1/p')" 1
        check "data unchanged as seen by the guest" eq "$(console_of "$name" | sed -n 's/^VBDT reread8 md5=//p')" "$r8"
        check "image unchanged in dom0" eq "$(md5sum <"$img" | cut -d' ' -f1)" "$before"
        [ "$b" = vbdd ] && show_vbdd_log
        test_end
}

# --- (4) flush-heavy workload --------------------------------------------
t_flush() {
        local b=$1 name=flush-$1 img=$IMGDIR/flush-$1.img n
        test_begin "flush-$b"
        mkimg "$img" 64
        domu_create "$name" flush "vbdt_timeout=240" || return
        attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        guest_done "$name" 280
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        check "guest sees a write-back cache (flushes are sent)" eq "$(vbdt_val "$name" wc)" write_back
        n=$(vbdt_val "$name" flushes)
        check "guest completed >= 300 flushes (got ${n:-none})" test "${n:-0}" -ge 300
        check "no I/O errors in the guest" eq "$(console_of "$name" | grep -c -E 'VBDBENCH-ERROR|VBDT ERROR|I/O error')" 0
        check "O_DSYNC 4k writes are in the image" \
                eq "$(img_md5 "$img" 16 1 1M)" "$(console_of "$name" | sed -n 's/^VBDT f1 md5=//p')"
        check "fsync'ed 8k writes are in the image" \
                eq "$(img_md5 "$img" 17 1 1M)" "$(console_of "$name" | sed -n 's/^VBDT f2 md5=//p')"
        check "dd conv=fsync writes are in the image" \
                eq "$(img_md5 "$img" 18 2 1M)" "$(console_of "$name" | sed -n 's/^VBDT f3 md5=//p')"
        [ "$b" = vbdd ] && show_vbdd_log
        test_end
}

# --- (4b) backups while the guest runs ------------------------------------
# vbdd serves cbt:raw; a full backup while the guest is held, an incremental
# started while it is held and run while the guest overwrites the changed
# MiB (copy-before-write), vbdd killed -9, then on the stopped guest's disk
# an export-only vbdd and one more incremental: the change map survived the
# kill.  Every backup restored and compared with the image at its point in time.
bk_json() { sed -n "s/^ *\"$2\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" "$OUT/$CUR_TEST.$1.json" | head -n 1; }
t_backup() {
        local b=$1 name=backup-$1 img=$IMGDIR/backup.img dir=$IMGDIR/backup.d ctl=/share/bin/vbd-ctl
        local md5_1 md5_3 bmd5 bpid i r
        if [ "$b" != vbdd ]; then
                test_skip "backup-$b" "vbdd only"
                return
        fi
        test_begin "backup-$b"
        mkimg "$img" 64
        rm -rf "$dir" "$img.cbt" "$IMGDIR"/restored-*.raw
        mkdir -p "$dir"
        domu_create "$name" backup "vbdt_timeout=400 vbdt_hold=180" || return
        VBDD_FILTERS=cbt: attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        if hold_wait "$name" full 90; then
                md5_1=$(md5sum <"$img" | cut -d' ' -f1) # held: the image cannot change
                "$ctl" backup -d "$DOMID" -n "$DEVID" --to "$dir" --no-progress --json \
                        >"$OUT/$CUR_TEST.b1.json" 2>"$OUT/$CUR_TEST.b1.err" ||
                        fail "full backup: $(cat "$OUT/$CUR_TEST.b1.err")"
                check "the first backup is full" eq "$(bk_json b1 kind)" full
        fi
        release "$name" full
        if hold_wait "$name" inc 90; then
                "$ctl" backup -d "$DOMID" -n "$DEVID" --to "$dir" --rate 64K --no-progress --json \
                        >"$OUT/$CUR_TEST.b2.json" 2>"$OUT/$CUR_TEST.b2.err" &
                bpid=$!
                for i in $(seq 100); do
                        "$ctl" backup -d "$DOMID" -n "$DEVID" --status 2>/dev/null | grep -q "backup running" && break
                        sleep 0.1
                done
                log "incremental: $("$ctl" backup -d "$DOMID" -n "$DEVID" --status 2>&1)"
        fi
        release "$name" inc
        if hold_wait "$name" stormed 120; then
                r=0
                wait "$bpid" || r=$?
                check "the incremental during the guest's writes completes (rc $r)" eq "$r" 0
                check "the second backup is incremental" eq "$(bk_json b2 kind)" incremental
                check "guest writes were held for copy-before-write ($(bk_json b2 writes_held), max $(bk_json b2 held_max_us) us)" \
                        test "$(bk_json b2 writes_held)" -gt 0
                md5_3=$(md5sum <"$img" | cut -d' ' -f1)
                log "kill -9 vbdd pid $VBDD_PID with the guest connected"
                kill -KILL "$VBDD_PID"
                wait "$VBDD_PID" 2>/dev/null
        fi
        xl destroy "$name" 2>/dev/null
        wait_domu_gone "$name" 30 || fail "domU not destroyed"
        xs_remove_vbd3 "$DOMID"
        save_console "$name"
        check "guest wrote without errors" eq "$(console_of "$name" | grep -c 'VBDT ERROR')" 0
        check "the guest overwrote the MiB during the backup ($(vbdt_val "$name" passes) passes)" \
                test "$(vbdt_val "$name" passes)" -gt 0
        bmd5=$(console_of "$name" | sed -n 's/^VBDT b md5=//p')
        # the stopped guest's disk: an export-only vbdd, one more incremental
        "$VBDD" --export-only --image "cbt:raw:$img" --nbd "unix:/tmp/bk-$$.sock" --nbd-writable \
                --domid "$DOMID" --devid "$DEVID" >"$OUT/$CUR_TEST.export.log" 2>&1 &
        VBDD_PID=$!
        for i in $(seq 50); do [ -S "/tmp/bk-$$.sock" ] && break; sleep 0.1; done
        "$ctl" backup -d "$DOMID" -n "$DEVID" --to "$dir" --no-progress --json \
                >"$OUT/$CUR_TEST.b3.json" 2>"$OUT/$CUR_TEST.b3.err" ||
                fail "incremental after kill -9: $(cat "$OUT/$CUR_TEST.b3.err")"
        check "after kill -9 the backup is incremental" eq "$(bk_json b3 kind)" incremental
        check "it copies exactly the storm's MiB ($(bk_json b3 bytes_done) bytes)" eq "$(bk_json b3 bytes_done)" 1048576
        kill -TERM "$VBDD_PID"
        wait "$VBDD_PID" 2>/dev/null
        for i in 1 2 3; do
                VBD_VBDD=$VBDD "$ctl" restore "$dir" --index "$i" -o "$IMGDIR/restored-$i.raw" --no-progress \
                        >>"$OUT/$CUR_TEST.restore.log" 2>&1 || fail "restore $i: $(tail -n 1 "$OUT/$CUR_TEST.restore.log")"
        done
        check "restore 1 is the image at the full backup" eq "$(md5sum <"$IMGDIR/restored-1.raw" | cut -d' ' -f1)" "$md5_1"
        check "restore 2 holds the MiB as it was when the incremental started" \
                eq "$(img_md5 "$IMGDIR/restored-2.raw" 20 1 1M)" "$bmd5"
        check "restore 2 is the image elsewhere (below 20 MiB)" \
                eq "$(img_md5 "$IMGDIR/restored-2.raw" 0 20 1M)" "$(img_md5 "$img" 0 20 1M)"
        check "restore 2 is the image elsewhere (above 21 MiB)" \
                eq "$(img_md5 "$IMGDIR/restored-2.raw" 21 43 1M)" "$(img_md5 "$img" 21 43 1M)"
        check "restore 3 is the image after the guest's writes" \
                eq "$(md5sum <"$IMGDIR/restored-3.raw" | cut -d' ' -f1)" "$md5_3"
        check "the image still is what it was when vbdd was killed" eq "$(md5sum <"$img" | cut -d' ' -f1)" "$md5_3"
        ls -l "$dir" | sed 's/^/    /'
        show_vbdd_log
        rm -f "$IMGDIR"/restored-*.raw
        test_end
}

# --- (4b) cold mounting: vbd-ctl mount in dom0, the guest reads it --------
# A guest disk (MBR, one ext4 partition; a qcow2 clone over a raw base) gets
# a file through `vbd-ctl mount --rw` in dom0 (the kernel's NBD client:
# nbd-client from the share), then a guest mounts the same disk served by
# vbdd and reads the file; while it runs, vbd-ctl mount --rw of its disk is
# refused naming its vbdd, and once it has written a file back a read-only
# vbd-ctl mount of its disk (through its vbdd's snapshot job) reads it while
# the guest still runs; after it is gone, a cold read-only mount reads it
# too. After every mount, umount and refusal nothing may be left (no
# snapshot job, no store beside the image).
MNT_DIR=/mnt/vbdt
# mount_clean WHAT [PID]: nothing of a vbd-ctl mount is left: no vbdd but
# PID (a guest's), no nbd device connected or sized, no loop device, no FUSE
# mount, MNT_DIR not a mount point, no state, `mount --list` empty. (Shell
# builtins where they do: every fork costs under TCG.)
mount_clean() {
        local what=$1 keep=${2:-none} v="" nbd="" loops="" fuse="" mnt="" p c d sz dev mp fs rest st
        for p in /proc/[0-9]*; do
                read -r c 2>/dev/null <"$p/comm" || continue
                [ "$c" = vbdd ] && [ "${p#/proc/}" != "$keep" ] && v="$v ${p#/proc/}"
        done
        check "$what: no vbdd left${v:+ (pids$v)}" test -z "$v"
        for d in /sys/block/nbd*; do
                [ -d "$d" ] || continue
                read -r sz <"$d/size"
                [ -e "$d/pid" ] || [ "$sz" != 0 ] && nbd="$nbd ${d##*/}"
        done
        check "$what: no nbd device connected${nbd:+ ($nbd )}" test -z "$nbd"
        for d in /sys/block/loop*/loop; do [ -d "$d" ] && loops="$loops ${d%/loop}"; done
        check "$what: no loop device bound${loops:+ ($loops )}" test -z "$loops"
        while read -r dev mp fs rest; do
                [[ $fs == fuse* ]] && fuse="$fuse $mp"
                [ "$mp" = "$MNT_DIR" ] && mnt="$dev"
        done </proc/mounts
        check "$what: no FUSE mount${fuse:+ ($fuse )}" test -z "$fuse"
        check "$what: $MNT_DIR is not a mount point${mnt:+ ($mnt)}" test -z "$mnt"
        st=$(shopt -s nullglob; echo /run/vbd/mounts/*)
        check "$what: no mount state in /run/vbd/mounts${st:+ ($st)}" test -z "$st"
        check "$what: vbd-ctl mount --list is empty" eq "$(vbd-ctl mount --list --json 2>&1 | tr -d ' \n')" "[]"
}
# vmount TAG ARGS...: vbd-ctl mount, its output in $OUT/$CUR_TEST.TAG.*;
# sets VM_RC, VM_OUT, VM_ERR
vmount() {
        local tag=$1 t0
        shift
        t0=$(ts)
        VBD_VBDD=/usr/local/sbin/vbdd vbd-ctl "$@" >"$OUT/$CUR_TEST.$tag.out" 2>"$OUT/$CUR_TEST.$tag.err"
        VM_RC=$?
        VM_OUT=$(cat "$OUT/$CUR_TEST.$tag.out")
        VM_ERR=$(cat "$OUT/$CUR_TEST.$tag.err")
        log "vbd-ctl $* -> rc $VM_RC in $(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.2f", b-a}')s: $VM_OUT $VM_ERR"
}
t_mount() {
        local b=$1 name=mount-$1 base=$IMGDIR/mount-base.raw img=$IMGDIR/mount.qcow2
        local base_md5 sha gsha mp st
        if [ "$b" != vbdd ]; then
                test_skip "mount-$b" "vbdd only"
                return
        fi
        test_begin "mount-$b"
        # the kernel's NBD client (modprobe meanwhile: seconds under TCG)
        modprobe nbd &
        mp=$!
        install -m 755 "$VBDD" /usr/local/sbin/vbdd
        install -m 755 /share/bin/vbd-ctl /usr/local/sbin/vbd-ctl
        if [ -x /share/bin/nbd-client ]; then
                install -m 755 /share/bin/nbd-client /usr/local/sbin/nbd-client
        else
                fail "no nbd-client in the share (build-images.sh's tools stage)"
        fi
        mkdir -p "$MNT_DIR"
        # the base: 32 MiB, an MBR with one Linux partition (1 MiB to the
        # end: 63488 sectors from 2048), ext4 in it; the guest's disk: a
        # qcow2 clone of it
        mkimg "$base" 32
        printf '\000\040\041\000\203\377\377\377\000\010\000\000\000\370\000\000' |
                dd of="$base" bs=1 seek=446 conv=notrunc status=none
        printf '\125\252' | dd of="$base" bs=1 seek=510 conv=notrunc status=none
        mke2fs -q -F -t ext4 -b 4096 -L vbdt -E offset=1048576 "$base" 31M || fail "mke2fs"
        base_md5=$(md5sum <"$base" | cut -d' ' -f1)
        rm -f "$img"
        vbd-ctl layer clone "$base" -o "$img" >"$OUT/$CUR_TEST.clone.log" 2>&1 ||
                fail "vbd-ctl layer clone: $(cat "$OUT/$CUR_TEST.clone.log")"
        wait "$mp"
        check "the nbd module loads (modprobe nbd, max_part=$(cat /sys/module/nbd/parameters/max_part 2>/dev/null))" \
                test -e /sys/block/nbd0
        # (1) cold mount read-write, write a file, umount
        vmount rw mount "$img" "$MNT_DIR" --rw
        check "vbd-ctl mount --rw succeeds (rc $VM_RC)" eq "$VM_RC" 0
        check "it went through the kernel's NBD client, partition 1" \
                grep -q "(partition 1, ext4) on $MNT_DIR read-write through nbd (/dev/nbd[0-9]*p1)" "$OUT/$CUR_TEST.rw.out"
        vbd-ctl mount --list --json >"$OUT/$CUR_TEST.list.json" 2>&1
        log "mount --list: $(tr -d ' \n' <"$OUT/$CUR_TEST.list.json")"
        check "mount --list shows it" grep -q "\"image\": \"$img\"" "$OUT/$CUR_TEST.list.json"
        dd if=/dev/urandom of="$MNT_DIR/data.bin" bs=1M count=4 status=none
        sha=$(sha256sum <"$MNT_DIR/data.bin" | cut -d' ' -f1)
        log "wrote $MNT_DIR/data.bin, sha256 $sha"
        vmount umount1 umount "$MNT_DIR"
        check "vbd-ctl umount succeeds (rc $VM_RC)" eq "$VM_RC" 0
        mount_clean "after umount"
        check "the base is untouched (writes went to the qcow2)" eq "$(md5sum <"$base" | cut -d' ' -f1)" "$base_md5"
        # (2) a guest on the same disk
        domu_create "$name" fs "vbdt_timeout=300 vbdt_part=1 vbdt_file=data.bin" || return
        VBDD_FORMAT=qcow2 attach vbdd "$DOMID" "$img" w "$CUR_TEST"
        if hold_wait "$name" connected 60; then
                # the guest's vbdd has the image writable: --rw is refused
                vmount busy mount "$img" "$MNT_DIR" --rw
                check_live "vbd-ctl mount --rw of the served image is refused (rc $VM_RC)" test "$VM_RC" != 0
                check_live "the refusal names the guest's vbdd (pid $VBDD_PID): $VM_ERR" \
                        grep -q "served writable by pid $VBDD_PID (vbdd)" "$OUT/$CUR_TEST.busy.err"
                mount_clean "after the refusal" "$VBDD_PID"
                check_live "the guest's vbdd still runs" vbdd_running
        fi
        release "$name" connected
        if hold_wait "$name" written 120; then
                # (2b) the running guest's disk, read-only: through its vbdd's snapshot
                gsha=$(console_of "$name" | sed -n 's/^VBDT fs wrote size=1048576 sha256=//p')
                vmount live mount "$img" "$MNT_DIR"
                check_live "read-only vbd-ctl mount of the running guest's disk succeeds (rc $VM_RC)" eq "$VM_RC" 0
                check_live "through nbd, a snapshot of VBD $DOMID/$DEVID (pid $VBDD_PID)" \
                        grep -q "on $MNT_DIR read-only through nbd (/dev/nbd[0-9]*p1), a snapshot of running VBD $DOMID/$DEVID (pid $VBDD_PID)" "$OUT/$CUR_TEST.live.out"
                vbd-ctl mount --list >"$OUT/$CUR_TEST.live.list" 2>&1
                check_live "mount --list: snapshot of $DOMID/$DEVID" grep -q "snapshot of $DOMID/$DEVID" "$OUT/$CUR_TEST.live.list"
                check_live "dom0 reads the running guest's file (sha256 $gsha)" \
                        eq "$(sha256sum <"$MNT_DIR/from-guest.bin" 2>/dev/null | cut -d' ' -f1)" "$gsha"
                check_live "and its own (sha256 $sha)" eq "$(sha256sum <"$MNT_DIR/data.bin" 2>/dev/null | cut -d' ' -f1)" "$sha"
                check_live "a write to the snapshot mount fails" not_touch "$MNT_DIR/x"
                vbd-ctl snapshot -d "$DOMID" -n "$DEVID" --status >"$OUT/$CUR_TEST.snap.st" 2>&1
                log "snapshot status: $(cat "$OUT/$CUR_TEST.snap.st")"
                vmount live-umount umount "$MNT_DIR"
                check_live "vbd-ctl umount of the snapshot mount succeeds (rc $VM_RC)" eq "$VM_RC" 0
                mount_clean "after the snapshot umount" "$VBDD_PID"
                vbd-ctl snapshot -d "$DOMID" -n "$DEVID" --status >"$OUT/$CUR_TEST.snap.st" 2>&1
                check_live "no snapshot job left: $(cat "$OUT/$CUR_TEST.snap.st")" \
                        grep -Eq "snapshot cancelled|no snapshot job" "$OUT/$CUR_TEST.snap.st"
                st=$(shopt -s nullglob dotglob; echo "$IMGDIR"/.vbd-snapshot-*)
                check_live "no store left beside the image${st:+ ($st)}" test -z "$st"
                check_live "the guest's vbdd still runs" vbdd_running
        fi
        release "$name" written
        guest_done "$name" 120
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap vbdd "$DOMID" "guest poweroff"
        check "the guest mounted the partition" eq "$(console_of "$name" | sed -n 's/^VBDT fs mount rc=\([0-9]*\).*/\1/p')" 0
        check "the guest reads the file dom0 wrote (sha256 $sha)" \
                eq "$(console_of "$name" | sed -n 's/^VBDT fs read size=4194304 sha256=//p')" "$sha"
        gsha=$(console_of "$name" | sed -n 's/^VBDT fs wrote size=1048576 sha256=//p')
        check "the guest wrote its file" test -n "$gsha"
        check "the guest unmounted cleanly" eq "$(console_of "$name" | sed -n 's/^VBDT fs umount rc=\([0-9]*\).*/\1/p')" 0
        # (3) read-only cold mount: the guest's file
        vmount ro mount "$img" "$MNT_DIR"
        check "read-only vbd-ctl mount succeeds (rc $VM_RC)" eq "$VM_RC" 0
        check "read-only, through nbd" grep -q "on $MNT_DIR read-only through nbd" "$OUT/$CUR_TEST.ro.out"
        check "dom0 reads the guest's file (sha256 $gsha)" \
                eq "$(sha256sum <"$MNT_DIR/from-guest.bin" 2>/dev/null | cut -d' ' -f1)" "$gsha"
        check "and its own (sha256 $sha)" eq "$(sha256sum <"$MNT_DIR/data.bin" 2>/dev/null | cut -d' ' -f1)" "$sha"
        check "a write to the read-only mount fails" not_touch "$MNT_DIR/x"
        vmount umount2 umount "$MNT_DIR"
        check "vbd-ctl umount succeeds (rc $VM_RC)" eq "$VM_RC" 0
        mount_clean "after the read-only umount"
        # (4) the nbd module loaded with max_part=0 (older kernels show no
        # partitions then; 6.1 still adds them): the mount must find the
        # partition or say why not, never "no filesystem found"
        if rmmod nbd && modprobe nbd max_part=0 && eq "$(cat /sys/module/nbd/parameters/max_part)" 0; then
                vmount mp0 mount "$img" "$MNT_DIR"
                if [ "$VM_RC" = 0 ]; then
                        check "max_part=0: partition 1 found all the same" \
                                grep -q "(partition 1, ext4)" "$OUT/$CUR_TEST.mp0.out"
                        vmount umount3 umount "$MNT_DIR"
                else
                        check "max_part=0: the refusal says why" grep -q "max_part=0" "$OUT/$CUR_TEST.mp0.err"
                fi
                mount_clean "after the mount with max_part=0"
        else
                fail "cannot reload the nbd module with max_part=0"
        fi
        rmmod nbd
        test_end
}
not_touch() { ! touch "$1" 2>/dev/null; }

# --- (4b) qcow2 with a backing chain: raw base <- qcow2 middle <- qcow2 top ---
# qpat SEED SECTORS: the guest's write data (domu-init's qpat, same bytes)
qpat() { seq $(($1 * 1000000)) $(($1 * 1000000 + 999999)) | head -c $(($2 * 512)); }
# put_at FILE SECTOR SRC: SRC's bytes into FILE at SECTOR (the reference)
put_at() { dd if="$3" of="$1" bs=512 seek="$2" conv=notrunc status=none; }
# qmd5 FILE SECTOR COUNT: md5 of COUNT sectors at SECTOR
qmd5() { dd if="$1" bs=512 skip="$2" count="$3" status=none | md5sum | cut -d' ' -f1; }
# In 512-byte sectors; the disk is 64 MiB (131072 sectors), the raw base only
# 32 MiB (past its end the chain reads zeros), the middle has 128 KiB
# clusters, the top qemu's default 64 KiB.
# The middle's own data (qemu-io), SEED:SECTOR:COUNT (random data):
QC_MID="1:16384:8192 2:81920:8192 3:32769:6"
# The guest's writes: a 1 MiB write over base data only; 7 sectors inside a
# base cluster; 5 inside a middle cluster; 256 KiB across the end of the
# middle's data (middle, then base); 256 KiB across the end of the base
# (base, then nothing); 1 MiB where no layer has data; 5 sectors there; 64
# KiB over middle data past the base's end, across two top clusters; the
# last sector.
QC_WRITES="11:4096:2048 12:9001:7 13:20483:5 14:24320:512 15:65280:512 16:106496:2048 17:122881:5 18:84032:128 19:131071:1"
# Regions nobody writes (NAME:SECTOR:COUNT): base data, the middle's data
# over the base and past its end, the middle's sub-cluster write, zeros
QC_READS="base0:0:4096 base1:10240:6144 mid:16384:4096 midpart:32768:128 midhigh:86016:4096 zeros:98304:8192"
t_qcow2() {
        local b=$1 name=qcow2-$1 d=$IMGDIR/qcow2 t w r seed sec n t0 rc
        local base mid top ref sb sm out cl want got
        if [ "$b" != vbdd ]; then
                test_skip "qcow2-$b" "vbdd only (blkback serves raw devices)"
                return
        fi
        test_begin "qcow2-$b"
        base=$d/base.raw mid=$d/mid.qcow2 top=$d/top.qcow2 ref=$d/ref.raw
        for t in qemu-img qemu-io; do
                if [ -x "/share/bin/$t" ]; then
                        install -m 755 "/share/bin/$t" "/usr/local/bin/$t"
                else
                        fail "no $t in the share (run.sh ships the host's qemu-utils)"
                fi
        done
        rm -rf "$d"
        mkdir -p "$d"
        # the chain, made by qemu's own tools; backing names relative to the
        # images' directory (as qemu-img create writes them when run there)
        dd if=/dev/urandom of="$base" bs=1M count=32 status=none
        (cd "$d" && qemu-img create -q -f qcow2 -o cluster_size=128k -b base.raw -F raw mid.qcow2 64M) ||
                fail "qemu-img create of the middle"
        # the raw reference: the base grown to 64 MiB (the chain's zeros past
        # its end), then every write applied to it as it is made to the chain
        cp "$base" "$ref"
        truncate -s 64M "$ref"
        for w in $QC_MID; do
                IFS=: read -r seed sec n <<<"$w"
                head -c $((n * 512)) /dev/urandom >"$d/m$seed"
                qemu-io -f qcow2 -c "write -q -s $d/m$seed $((sec * 512)) $((n * 512))" "$mid" ||
                        fail "qemu-io write into the middle at sector $sec"
                put_at "$ref" "$sec" "$d/m$seed"
        done
        (cd "$d" && qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 64M) ||
                fail "qemu-img create of the top"
        qemu-img info --backing-chain "$top" >"$OUT/$CUR_TEST.info-before.txt" 2>&1
        check "qemu-img sees a chain of three images (top, mid, base)" \
                eq "$(grep -c '^image: ' "$OUT/$CUR_TEST.info-before.txt")" 3
        # the test's own reference is right before the guest writes anything
        qemu-img compare -f qcow2 -F raw "$top" "$ref" >"$OUT/$CUR_TEST.compare-before.txt" 2>&1
        check "before the guest: the chain equals the raw reference (qemu-img compare rc $?)" \
                grep -q 'Images are identical' "$OUT/$CUR_TEST.compare-before.txt"
        sb=$(sha256sum <"$base" | cut -d' ' -f1)
        sm=$(sha256sum <"$mid" | cut -d' ' -f1)
        log "chain ready: base sha256 $sb, middle sha256 $sm; guest writes: $QC_WRITES"
        domu_create "$name" qcow2 "vbdt_timeout=240 vbdt_qw=${QC_WRITES// /,} vbdt_qr=${QC_READS// /,}" || return
        VBDD_FORMAT=qcow2 attach vbdd "$DOMID" "$top" w "$CUR_TEST"
        if hold_wait "$name" connected 60; then
                xs_dump "$DOMID" connected
                check_xs "backend state 4 (Connected)" "$(vbdd_be "$DOMID")/state" 4
                check_xs "backend sectors = 131072 (the top's 64 MiB, not the base's 32)" \
                        "$(vbdd_be "$DOMID")/sectors" 131072
        fi
        release "$name" connected
        guest_done "$name" 250
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap vbdd "$DOMID" "guest poweroff"
        show_vbdd_log
        # the guest's writes, their data, what it read back
        for w in $QC_WRITES; do
                IFS=: read -r seed sec n <<<"$w"
                qpat "$seed" "$n" >"$d/g$seed"
                want=$(md5sum <"$d/g$seed" | cut -d' ' -f1)
                out=$(console_of "$name" | grep "^VBDT qw seed=$seed ")
                check "guest write $seed ($n sectors at $sec) rc=0: '$out'" grep -q ' rc=0 ' <<<"$out"
                check "guest write $seed: its data is dom0's pattern (md5 $want)" eq "${out##*md5=}" "$want"
                check "guest write $seed read back by the guest" \
                        eq "$(console_of "$name" | sed -n "s/^VBDT qback seed=$seed md5=//p")" "$want"
                put_at "$ref" "$sec" "$d/g$seed"
        done
        for r in $QC_READS; do
                IFS=: read -r w sec n <<<"$r"
                want=$(qmd5 "$ref" "$sec" "$n")
                check "guest reads untouched '$w' ($n sectors at $sec) as the chain holds it (md5 $want)" \
                        eq "$(console_of "$name" | sed -n "s/^VBDT qread name=$w md5=//p")" "$want"
        done
        want=$(md5sum <"$ref" | cut -d' ' -f1)
        check "guest reads the whole disk as the reference holds it (md5 $want)" \
                eq "$(console_of "$name" | sed -n 's/^VBDT qall md5=//p')" "$want"
        # the images, by qemu's tools
        t0=$(ts)
        qemu-img check "$top" >"$OUT/$CUR_TEST.check-top.txt" 2>&1
        rc=$?
        log "qemu-img check top (rc $rc, $(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')s): $(tr '\n' ' ' <"$OUT/$CUR_TEST.check-top.txt")"
        check "qemu-img check of the top: clean, no leaks (rc $rc)" eq "$rc" 0
        check "qemu-img check of the top: 'No errors were found'" grep -q 'No errors were found' "$OUT/$CUR_TEST.check-top.txt"
        qemu-img check "$mid" >"$OUT/$CUR_TEST.check-mid.txt" 2>&1
        check "qemu-img check of the middle: clean (rc $?)" grep -q 'No errors were found' "$OUT/$CUR_TEST.check-mid.txt"
        qemu-img compare -f qcow2 -F raw "$top" "$ref" >"$OUT/$CUR_TEST.compare.txt" 2>&1
        rc=$?
        log "qemu-img compare top-chain vs reference (rc $rc): $(tr '\n' ' ' <"$OUT/$CUR_TEST.compare.txt")"
        check "qemu-img compare: the chain equals the raw reference with the same writes (rc $rc)" eq "$rc" 0
        check "the base is unchanged (sha256)" eq "$(sha256sum <"$base" | cut -d' ' -f1)" "$sb"
        check "the middle is unchanged (sha256)" eq "$(sha256sum <"$mid" | cut -d' ' -f1)" "$sm"
        # copy-on-write at cluster granularity: the top holds exactly the
        # 64 KiB clusters the guest wrote, nothing else
        qemu-img map --output=json "$top" >"$OUT/$CUR_TEST.map.json" 2>&1
        want=$(for w in $QC_WRITES; do
                IFS=: read -r seed sec n <<<"$w"
                cl=$((sec / 128))
                while [ "$cl" -le $(((sec + n - 1) / 128)) ]; do
                        echo "$cl"
                        cl=$((cl + 1))
                done
        done | sort -n -u | tr '\n' ' ')
        got=$(awk '/"depth": 0,/ && /"present": true/ {
                match($0, /"start": [0-9]+/); s = substr($0, RSTART + 9, RLENGTH - 9)
                match($0, /"length": [0-9]+/); l = substr($0, RSTART + 10, RLENGTH - 10)
                for (c = s / 65536; c < (s + l) / 65536; c++) print c }' "$OUT/$CUR_TEST.map.json" |
                sort -n -u | tr '\n' ' ')
        log "top clusters: written by the guest: $want; allocated in the top: $got"
        check "the top allocated exactly the clusters the guest wrote" eq "$got" "$want"
        qemu-img info --backing-chain "$top" >"$OUT/$CUR_TEST.info-after.txt" 2>&1
        test_end
}

# --- (4c) storage migration: a vbdd partner on TCP, cut-over, switch --------
# The guest writes and verifies (vbdbench churn) all the way through: its
# disk is migrated (pasm) to a `vbdd --export-only --nbd-writable` partner
# on 127.0.0.1 over TCP, cut over (the guest paused), the partner stopped
# and the VBD reopened on the destination (the guest runs on from it: a
# local storage migration, the way `migrate cutover --switch-to` ends one).
# The destination must equal the source at the cut-over (holes arrive as
# zeroes over the 0xff it started as), the source must not change after
# it, and every block the guest wrote, before, during and after, must read
# back as last written; no I/O error, vbdd exits 0.
MIG_PORT=10809
# churn_writes NAME: the guest's write count from its last churn line
churn_writes() { console_of "$1" | sed -n 's/^VBDT VBDBENCH churn t=[^ ]* writes=\([0-9]*\).*/\1/p' | tail -n 1; }
# churn_more NAME N SECONDS: the guest completes N more writes within SECONDS
churn_more() {
        local n0 n end=$(($(cut -d. -f1 /proc/uptime) + $3))
        n0=$(churn_writes "$1")
        while :; do
                n=$(churn_writes "$1")
                [ -n "$n" ] && [ "$n" -ge $((${n0:-0} + $2)) ] && return 0
                [ "$(cut -d. -f1 /proc/uptime)" -ge "$end" ] && break
                sleep 1
        done
        log "the guest wrote ${n0:-?} .. ${n:-?}, not $2 more, in $3 s"
        return 1
}
# tcp_listening PORT: something listens on 127.0.0.1:PORT (from /proc, no tools)
tcp_listening() {
        local hex
        hex=$(printf '0100007F:%04X' "$1")
        grep -q " $hex 00000000:0000 0A " /proc/net/tcp
}
t_migrate() {
        local b=$1 name=migrate-$1 src=$IMGDIR/mig-src.img dst=$IMGDIR/mig-dst.img ctl=/share/bin/vbd-ctl
        local ppid prc r md5_data md5_zero md5_cut span i info
        if [ "$b" != vbdd ]; then
                test_skip "migrate-$b" "vbdd only"
                return
        fi
        test_begin "migrate-$b"
        mkimg "$src" 64
        md5_data=$(put_random "$src" 32 16) # 48..64 MiB: a hole
        md5_zero=$(dd if=/dev/zero bs=1M count=16 status=none | md5sum | cut -d' ' -f1)
        tr '\000' '\377' </dev/zero | dd of="$dst" bs=1M count=64 iflag=fullblock status=none
        "$VBDD" --export-only --image "raw:$dst" --nbd "tcp:127.0.0.1:$MIG_PORT" --nbd-writable \
                >"$OUT/$CUR_TEST.partner.log" 2>&1 &
        ppid=$!
        for i in $(seq 50); do tcp_listening "$MIG_PORT" && break; sleep 0.2; done
        tcp_listening "$MIG_PORT" || fail "the partner does not listen: $(tail -n 3 "$OUT/$CUR_TEST.partner.log")"
        domu_create "$name" migrate "vbdt_timeout=1200 vbdt_hold=300" || return
        attach "$b" "$DOMID" "$src" w "$CUR_TEST"
        wait_line "$name" '^VBDT VBDBENCH churn t=' 120 || fail "the guest does not write (no churn line)"
        log "guest writing: $(churn_writes "$name") writes so far"

        "$ctl" migrate start -d "$DOMID" -n "$DEVID" --to "nbd://127.0.0.1:$MIG_PORT" --wait \
                >"$OUT/$CUR_TEST.start.log" 2>&1
        r=$?
        check "migrate start --wait reaches ready (rc $r: $(tail -n 1 "$OUT/$CUR_TEST.start.log"))" eq "$r" 0
        check "the guest writes on once ready (forwarded)" churn_more "$name" 100 120
        "$ctl" migrate status -d "$DOMID" -n "$DEVID" --json >"$OUT/$CUR_TEST.ready.json" 2>&1
        check "status: ready" eq "$(bk_json ready state)" ready
        check "status: guest writes forwarded ($(bk_json ready writes_forwarded))" \
                test "$(bk_json ready writes_forwarded)" -gt 0
        "$ctl" migrate cutover -d "$DOMID" -n "$DEVID" --json >"$OUT/$CUR_TEST.cut.json" 2>&1
        r=$?
        check "cutover (rc $r, downtime $(bk_json cut downtime_ms) ms)" eq "$(bk_json cut state)" cutover
        log "cutover: $(tr -d ' \n' <"$OUT/$CUR_TEST.cut.json")"
        # the guest is paused: the destination must be the source now
        md5_cut=$(md5sum <"$src" | cut -d' ' -f1)
        check "the destination equals the source at the cutover" eq "$(md5sum <"$dst" | cut -d' ' -f1)" "$md5_cut"
        kill -TERM "$ppid"
        wait "$ppid"
        prc=$?
        check "the partner vbdd exits 0 after the cutover (rc $prc)" eq "$prc" 0
        "$ctl" reopen -d "$DOMID" -n "$DEVID" --image "raw:$dst" >"$OUT/$CUR_TEST.reopen.log" 2>&1
        r=$?
        check "reopen on the destination (rc $r: $(cat "$OUT/$CUR_TEST.reopen.log"))" eq "$r" 0
        info=$("$ctl" info -d "$DOMID" -n "$DEVID" 2>&1)
        check "vbd-ctl info: serving the destination ($(echo "$info" | grep '^image'))" \
                eq "$(echo "$info" | sed -n 's/^image *//p')" "raw:$dst"
        check "the guest writes on from the destination" churn_more "$name" 100 120
        release "$name" stop
        if hold_wait "$name" verified 600; then
                span=$(console_of "$name" | sed -n 's/^VBDT span md5=//p')
                check "the destination holds what the guest reads back (md5 $span)" \
                        eq "$(img_md5 "$dst" 0 32 1M)" "$span"
                check "the destination keeps dom0's data at 32 MiB" eq "$(img_md5 "$dst" 32 16 1M)" "$md5_data"
                check "the source's hole arrived as zeroes" eq "$(img_md5 "$dst" 48 16 1M)" "$md5_zero"
                check "the source did not change after the cutover" eq "$(md5sum <"$src" | cut -d' ' -f1)" "$md5_cut"
                check "the guest's writes after the switch are not in the source" \
                        test "$(img_md5 "$src" 0 32 1M)" != "$span"
        fi
        release "$name" verified
        guest_done "$name" 300
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap "$b" "$DOMID" "guest poweroff"
        local done_line
        done_line=$(console_of "$name" | grep '^VBDT VBDBENCH churn done' | tail -n 1)
        log "guest: $done_line"
        check "the guest's churn ran to its end (rc 0)" eq "$(vbdt_val "$name" rc)" 0
        check "the guest saw no I/O error" eq "$(echo "$done_line" | sed -n 's/.* errors=\([0-9]*\).*/\1/p')" 0
        check "every block read back as last written" \
                eq "$(echo "$done_line" | sed -n 's/.* mismatches=\([0-9]*\).*/\1/p')" 0
        check "the guest verified blocks ($(echo "$done_line" | sed -n 's/.* verified=\([0-9]*\).*/\1/p'))" \
                test "$(echo "$done_line" | sed -n 's/.* verified=\([0-9]*\).*/\1/p')" -gt 100
        check "no VBDBENCH-ERROR on the console" eq "$(console_of "$name" | grep -c 'VBDBENCH-ERROR')" 0
        check "no I/O error in the guest's kernel log" eq "$(console_of "$name" | grep -c -i 'I/O error')" 0
        grep -q "cut-over hold is released" "$VBDD_LOG" || fail "vbdd did not log the end of the migration"
        show_vbdd_log
        test_end
}

# --- (4e) a Ceph RBD image: the rbd driver (librbd) under a real guest ----
# run.sh starts a single-node Ceph on the host (tests/rbd/ceph-cluster.sh)
# bound to its end of a tap device, QEMU's virtio NIC in dom0 is the other
# end; the share has the client's ceph.conf + keyring and the host's rbd
# tool. dom0 imports a 64 MiB image holding 4 MiB of random data at 8 MiB,
# vbdd serves it (rbd:rbd/IMAGE,conf=,id=vbd,keyring=) to the rw guest, and
# after the guest is gone `rbd export` (librbd, not vbdd) must hold the
# guest's writes and dom0's data, nothing else changed.
RBD_DIR=/tmp/rbd
rbd_cli() { timeout 120 /usr/local/bin/rbd -c "$RBD_DIR/ceph.conf" --id vbd --keyring "$RBD_DIR/client.vbd.keyring" "$@"; }
# rbd_net_up: dom0's virtio NIC at RBD_DOM0, the monitor at RBD_HOST answers
rbd_net_up() {
        local n ifc="" port i
        mkdir -p "$RBD_DIR" /run/vbdt-ceph
        cp /share/rbd/ceph.conf /share/rbd/client.vbd.keyring "$RBD_DIR/" || {
                fail "no ceph.conf/keyring in /share/rbd"
                return 1
        }
        install -m 755 /share/bin/rbd /usr/local/bin/rbd || {
                fail "no rbd tool in the share"
                return 1
        }
        modprobe virtio_net || {
                fail "modprobe virtio_net"
                return 1
        }
        for i in $(seq 50); do
                for n in /sys/class/net/*; do
                        [ "$(basename "$(readlink -f "$n/device/driver")")" = virtio_net ] && ifc=${n##*/}
                done
                [ -n "$ifc" ] && break
                sleep 0.1
        done
        if [ -z "$ifc" ]; then
                fail "no virtio NIC in dom0 ($(ls /sys/class/net | tr '\n' ' '))"
                return 1
        fi
        ip addr add "$RBD_DOM0" dev "$ifc" && ip link set "$ifc" up || {
                fail "cannot bring up $ifc at $RBD_DOM0"
                return 1
        }
        port=$(sed -n 's/^mon_host = \[v2:[0-9.]*:\([0-9]*\)\]$/\1/p' "$RBD_DIR/ceph.conf")
        for i in $(seq 60); do
                timeout 2 bash -c "exec 3<>/dev/tcp/$RBD_HOST/$port" 2>/dev/null && {
                        log "dom0 $ifc at $RBD_DOM0 reaches the monitor at $RBD_HOST:$port (after ${i} tries)"
                        return 0
                }
                sleep 0.5
        done
        fail "the monitor at $RBD_HOST:$port does not answer over $ifc ($(ip -br addr show dev "$ifc" | tr -s ' '))"
        return 1
}
t_rbd() {
        local b=$1 name=rbd-$1 src=$IMGDIR/rbd-src.img exp=$IMGDIR/rbd-export.img rimg=rbd/vbdt-xen
        local spec r8 pat small back t0 secs be
        if [ "$b" != vbdd ]; then
                test_skip "rbd-$b" "vbdd only (blkback serves local devices)"
                return
        fi
        if [ -n "${RBD_SKIP:-}" ]; then
                test_skip "rbd-$b" "$RBD_SKIP"
                return
        fi
        test_begin "rbd-$b"
        if [ -n "${RBD_FAIL:-}" ] || [ -z "${RBD_HOST:-}" ]; then
                fail "${RBD_FAIL:-no Ceph cluster from run.sh (RBD_HOST unset)}"
                test_end
                return
        fi
        rbd_net_up || {
                test_end
                return
        }
        mkimg "$src" 64
        r8=$(put_random "$src" 8 4)
        t0=$(ts)
        rbd_cli import --no-progress "$src" "$rimg" >"$OUT/$CUR_TEST.import.log" 2>&1 || {
                fail "rbd import: $(tail -n 2 "$OUT/$CUR_TEST.import.log" | tr '\n' ' ')"
                test_end
                return
        }
        log "rbd import of 64 MiB (4 MiB data) took $(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')s; $(rbd_cli info "$rimg" 2>&1 | grep -E 'size|features' | tr -s ' ' | tr '\n' ';')"
        spec="$rimg,conf=$RBD_DIR/ceph.conf,id=vbd,keyring=$RBD_DIR/client.vbd.keyring"
        domu_create "$name" rw "vbdt_timeout=180" || {
                test_end
                return
        }
        VBDD_FORMAT=rbd attach vbdd "$DOMID" "$spec" w "$CUR_TEST"
        # held once it sees xvda, before any I/O
        if hold_wait "$name" connected 90; then
                xs_dump "$DOMID" connected
                be=$(vbdd_be "$DOMID")
                check_xs "backend state 4 (Connected)" "$be/state" 4
                check_xs "frontend state 4 (Connected)" "$(vbdd_fe "$DOMID")/state" 4
                check_xs "backend sectors = 131072 (the RBD image's 64 MiB)" "$be/sectors" 131072
                check_xs "backend feature-flush-cache = 1" "$be/feature-flush-cache" 1
                check_xs "backend feature-discard = 1" "$be/feature-discard" 1
                check_xs "backend discard-granularity = 65536 (the rbd driver's)" "$be/discard-granularity" 65536
        fi
        release "$name" connected
        guest_done "$name" 190
        show_console "$name"
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        reap vbdd "$DOMID" "guest poweroff"
        show_vbdd_log
        check "vbdd opened the RBD image read-write, 64 MiB in 4 MiB objects (log)" \
                grep -q -E "drv.rbd: rbd:$rimg,.*: 67108864 bytes, objects of 4194304 bytes(, fast-diff)?$" "$VBDD_LOG"
        check "guest sees 131072 sectors" eq "$(vbdt_val "$name" sectors)" 131072
        check "guest sees a write-back cache (flushes reach librbd)" eq "$(vbdt_val "$name" wc)" write_back
        check "guest reads the data dom0 imported (md5 $r8)" eq "$(console_of "$name" | sed -n 's/^VBDT read8 md5=//p')" "$r8"
        pat=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p')
        check "guest write (O_DIRECT 1 MiB + fsync) succeeded" eq "$(console_of "$name" | sed -n 's/^VBDT write rc=\([0-9]*\).*/\1/p')" 0
        check "guest reads back what it wrote" eq "$(console_of "$name" | sed -n 's/^VBDT readback md5=//p')" "$pat"
        small=$(console_of "$name" | sed -n 's/^VBDT small md5=\([0-9a-f]*\).*/\1/p')
        back=$(console_of "$name" | sed -n 's/^VBDT small .*back=\([0-9a-f]*\).*/\1/p')
        check "7-sector write at sector 20001 read back by the guest" eq "$back" "$small"
        # the image as another librbd client reads it
        rm -f "$exp"
        t0=$(ts)
        if rbd_cli export --no-progress "$rimg" "$exp" >"$OUT/$CUR_TEST.export.log" 2>&1; then
                secs=$(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')
                log "rbd export of 64 MiB took ${secs}s ($(awk -v s="$secs" 'BEGIN{printf "%.1f", (s > 0 ? 64 / s : 0)}') MiB/s)"
                check "rbd export: the image holds the guest's 4 MiB at 1 MiB (md5 $pat)" eq "$(img_md5 "$exp" 1 4 1M)" "$pat"
                check "rbd export: the image holds the 7 sectors at 20001" eq "$(img_md5 "$exp" 20001 7 512)" "$small"
                # everything else is what dom0 imported: its image with the
                # guest's two writes copied in equals the export
                dd if="$exp" of="$src" bs=1M skip=1 seek=1 count=4 conv=notrunc status=none
                dd if="$exp" of="$src" bs=512 skip=20001 seek=20001 count=7 conv=notrunc status=none
                check "rbd export: nothing else changed (dom0's data and zeros)" cmp -s "$exp" "$src"
        else
                fail "rbd export: $(tail -n 2 "$OUT/$CUR_TEST.export.log" | tr '\n' ' ')"
        fi
        rm -f "$exp" "$src"
        test_end
}

# --- (5) detach while the guest runs -------------------------------------
t_detach() {
        local b=$1 name=detach-$1 img=$IMGDIR/detach-$1.img
        test_begin "detach-$b"
        mkimg "$img" 64
        domu_create "$name" detach "vbdt_timeout=200" || return
        attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        # the guest waits for the disk to go away, then holds (detached): its
        # domain, and so the frontend directory, stays until released
        if wait_line "$name" '^VBDT attached' 60; then
                sleep 1
                log "toolstack detaches the disk"
                case $b in
                vbdd)
                        local be
                        be=$(vbdd_be "$DOMID")
                        # what libxl does: online=0, then backend state 5 (Closing)
                        xenstore-write "$be/online" 0
                        xenstore-write "$be/state" 5
                        vbdd_wait_exit 45
                        check "vbdd exits 0 after detach (rc=$VBDD_RC)" eq "$VBDD_RC" 0
                        # vbdd may exit only once the frontend is Closed, and
                        # says Closed itself (libxl waits for that)
                        check_xs "frontend Closed (6) when vbdd exited" "$(vbdd_fe "$DOMID")/state" 6
                        check_xs "backend Closed (6) when vbdd exited" "$be/state" 6
                        xs_dump "$DOMID" "after detach"
                        xs_remove_vbd3 "$DOMID"
                        show_vbdd_log
                        ;;
                blkback)
                        xl block-detach "$DOMID" xvda || fail "xl block-detach"
                        blkback_release
                        ;;
                esac
                hold_wait "$name" detached 60
        else
                fail "disk never appeared in the guest"
        fi
        release "$name" detached
        guest_done "$name" 190
        show_console "$name"
        save_console "$name"
        check "guest saw the disk go away" console_has "$name" '^VBDT gone'
        check "no errors in the guest" eq "$(console_of "$name" | grep -c '^VBDT ERROR')" 0
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        [ "$b" = blkback ] && blkback_release
        test_end
}

# --- (6) domU destroyed in the middle of I/O ------------------------------
t_destroy() {
        local b=$1 name=destroy-$1 img=$IMGDIR/destroy-$1.img n0="" n1
        test_begin "destroy-$b"
        mkimg "$img" 64
        domu_create "$name" destroy "vbdt_timeout=600" || return
        attach "$b" "$DOMID" "$img" w "$CUR_TEST"
        if wait_line "$name" '^VBDT io-start' 60; then
                sleep 3
                n0=$(wc -l <"${VBDD_LOG:-/dev/null}")
                log "xl destroy $name (domain $DOMID) during I/O"
                xl destroy "$name" || fail "xl destroy"
        else
                fail "guest I/O never started"
                diag "$DOMID"
                xl destroy "$name"
        fi
        save_console "$name"
        case $b in
        vbdd)
                vbdd_wait_exit 30
                check "vbdd exits 0 after the domain died (rc=$VBDD_RC)" eq "$VBDD_RC" 0
                n1=$(wc -l <"$VBDD_LOG")
                check "vbdd logged why it exits ($((n1 - ${n0:-0})) new lines)" test "$n1" -gt "${n0:-0}"
                show_vbdd_log
                xs_remove_vbd3 "$DOMID"
                ;;
        blkback)
                sleep 2
                blkback_release
                ;;
        esac
        check "no dying domain left behind (grants released)" only_dom0_left 20
        test_end
}

# --- (7) the disk from the domU's xl config, attached by xl's hotplug -----
# vbdd: backendtype=phy,script=block-vbd3 + `vbd-ctl watch --type vbd` (see
# xl_setup in lib.sh); blkback: the same disk line with xen-block-phy.sh on a
# loop device, the reference. xl_begin BACKEND IMAGE: sets DISK, or fails.
xl_begin() {
        case $1 in
        vbdd)
                xl_setup || return 1
                DISK=$(xl_disk "$2")
                ;;
        blkback)
                LOOP=$(losetup --direct-io=on -f --show "$2") || {
                        fail "losetup $2"
                        return 1
                }
                DISK="format=raw,vdev=xvda,access=rw,backendtype=phy,script=$PHY_SCRIPT,target=$LOOP"
                ;;
        esac
        log "xl disk line: disk = [ '$DISK' ]"
}
xl_end() {
        case $1 in
        vbdd) xl_teardown ;;
        blkback) blkback_release ;;
        esac
        test_end
}
# blkback: libxl's own removal, for comparison
xl_blkback_removed() {
        check "libxl ran the hotplug script's remove" grep -q "calling hotplug script: $PHY_SCRIPT remove" "$2"
        check_xs_gone "backend directory removed" "$(xl_be "$1")"
        check_xs_gone "frontend directory removed" "$(vbdd_fe "$1")"
}

# guest reads/writes, powers off; xl's domain monitor destroys the domain
t_xl() {
        local b=$1 name=xl-$1 img=$IMGDIR/xl-$1.img r8 pat small back d be
        test_begin "xl-$b"
        mkimg "$img" 64
        r8=$(put_random "$img" 8 4)
        xl_begin "$b" "$img" || {
                xl_end "$b"
                return
        }
        XL_OPTS=-vvv domu_create "$name" rw "vbdt_timeout=150" "$DISK" || {
                xl_end "$b"
                return
        }
        d=$DOMID
        be=$(xl_be "$d")
        [ "$b" = vbdd ] && xl_after_create "$d" "$name"
        # held once it sees xvda, before any I/O (and so before its poweroff)
        if hold_wait "$name" connected 120; then
                check_xs "backend state 4 (Connected)" "$be/state" 4
                check_xs "frontend state 4 (Connected)" "$(vbdd_fe "$d")/state" 4
                check_xs "backend sectors = 131072" "$be/sectors" 131072
        fi
        release "$name" connected
        guest_done "$name" 200
        show_console "$name"
        save_console "$name"
        # on_poweroff="destroy": xl's monitoring process destroys the domain,
        # libxl removes the disk (Closing, Closed, script remove, rm)
        wait_domu_gone "$name" 60 || fail "domU did not power off"
        cp "/var/log/xen/xl-$name.log" "$OUT/$name.xl-daemon.log" 2>/dev/null
        case $b in
        vbdd)
                xl_after_remove "$d" "/var/log/xen/xl-$name.log"
                check "vbdd exited 0 (reaped by the watcher)" \
                        grep -q "vbdd for $d/$DEVID exited (status 0)" "$OUT/$CUR_TEST.watch.log"
                ;;
        blkback) xl_blkback_removed "$d" "/var/log/xen/xl-$name.log" ;;
        esac
        check "guest reads the data dom0 wrote (md5 $r8)" eq "$(console_of "$name" | sed -n 's/^VBDT read8 md5=//p')" "$r8"
        pat=$(console_of "$name" | sed -n 's/^VBDT pattern md5=//p')
        check "guest write succeeded" eq "$(console_of "$name" | sed -n 's/^VBDT write rc=\([0-9]*\).*/\1/p')" 0
        check "guest reads back what it wrote" eq "$(console_of "$name" | sed -n 's/^VBDT readback md5=//p')" "$pat"
        check "image in dom0 holds the guest's 4 MiB (md5 $pat)" eq "$(img_md5 "$img" 1 4 1M)" "$pat"
        small=$(console_of "$name" | sed -n 's/^VBDT small md5=\([0-9a-f]*\).*/\1/p')
        back=$(console_of "$name" | sed -n 's/^VBDT small .*back=\([0-9a-f]*\).*/\1/p')
        check "7-sector write at sector 20001 read back by the guest" eq "$back" "$small"
        check "7-sector write at sector 20001 is in the image" eq "$(img_md5 "$img" 20001 7 512)" "$small"
        xl_end "$b"
}

# `xl block-detach` while the guest runs: the guest closes, the backend
# Closed, libxl runs the remove script and deletes the directories
t_xldetach() {
        local b=$1 name=xldetach-$1 img=$IMGDIR/xldetach-$1.img d rc
        test_begin "xldetach-$b"
        mkimg "$img" 64
        xl_begin "$b" "$img" || {
                xl_end "$b"
                return
        }
        XL_OPTS=-vvv domu_create "$name" detach "vbdt_timeout=200" "$DISK" || {
                xl_end "$b"
                return
        }
        d=$DOMID
        [ "$b" = vbdd ] && xl_after_create "$d" "$name"
        # the guest holds once xvda is gone (detached): the removal checks
        # run while the domain still exists, so a directory found removed
        # was removed by block-detach, not by the domain's destruction
        if wait_line "$name" '^VBDT attached' 120; then
                sleep 1
                log "xl block-detach $d xvda"
                xl -vvv block-detach "$d" xvda >"$OUT/$name.xl-detach.log" 2>&1
                rc=$?
                check "xl block-detach succeeds (rc=$rc)" eq "$rc" 0
                case $b in
                vbdd)
                        xl_after_remove "$d" "$OUT/$name.xl-detach.log"
                        check "vbdd exited 0 (reaped by the watcher)" \
                                grep -q "vbdd for $d/$DEVID exited (status 0)" "$OUT/$CUR_TEST.watch.log"
                        ;;
                blkback) xl_blkback_removed "$d" "$OUT/$name.xl-detach.log" ;;
                esac
                hold_wait "$name" detached 60
        else
                fail "disk never appeared in the guest"
                diag "$d"
        fi
        release "$name" detached
        guest_done "$name" 260
        show_console "$name"
        save_console "$name"
        check "guest saw the disk go away" console_has "$name" '^VBDT gone'
        check "no errors in the guest" eq "$(console_of "$name" | grep -c '^VBDT ERROR')" 0
        wait_domu_gone "$name" 60 || fail "domU did not power off"
        xl_end "$b"
}

# `xl destroy` during guest I/O; xlcrash: vbdd is SIGKILLed first (the
# watcher answers Closed for it, the remove script deletes its socket)
t_xldestroy() { xl_destroy_test "$1" xldestroy; }
t_xlcrash() {
        [ "$1" = vbdd ] || return 0 # a vbdd-only failure mode
        xl_destroy_test "$1" xlcrash
}
xl_destroy_test() {
        local b=$1 kind=$2 name=$2-$1 img=$IMGDIR/$2-$1.img d t0 sock
        test_begin "$kind-$b"
        mkimg "$img" 64
        xl_begin "$b" "$img" || {
                xl_end "$b"
                return
        }
        XL_OPTS=-vvv domu_create "$name" destroy "vbdt_timeout=600" "$DISK" || {
                xl_end "$b"
                return
        }
        d=$DOMID
        [ "$b" = vbdd ] && xl_after_create "$d" "$name"
        if wait_line "$name" '^VBDT io-start' 120; then
                sleep 3
        else
                fail "guest I/O never started"
                diag "$d"
        fi
        if [ "$kind" = xlcrash ]; then
                sock=$XL_RUNDIR/vbdd-$d-$DEVID.sock
                log "kill -9 vbdd (pid $VBDD_PID) during guest I/O"
                kill -9 "$VBDD_PID"
                sleep 1
                check "the killed vbdd left its control socket behind" test -S "$sock"
                check "vbd-ctl sees it as stale" eq "$(vbd-ctl info -d "$d" -n "$DEVID" >/dev/null 2>&1; echo $?)" 3
        fi
        t0=$(ts)
        log "xl destroy $name (domain $d) during I/O"
        xl -vvv destroy "$name" >"$OUT/$name.xl-destroy.log" 2>&1 || fail "xl destroy: $(tail -n 2 "$OUT/$name.xl-destroy.log" | tr '\n' ' ')"
        log "xl destroy returned after $(awk -v a="$t0" -v b="$(ts)" 'BEGIN{printf "%.1f", b-a}')s"
        save_console "$name"
        case $b in
        vbdd)
                xl_after_remove "$d" "$OUT/$name.xl-destroy.log"
                if [ "$kind" = xlcrash ]; then
                        check "the watcher saw vbdd killed" \
                                grep -q "vbdd for $d/$DEVID exited (signal 9)" "$OUT/$CUR_TEST.watch.log"
                        check "the watcher answered Closed for the dead vbdd" \
                                grep -q "backend/vbd/$d/$DEVID: closed by the toolstack and no vbdd serves it" "$OUT/$CUR_TEST.watch.log"
                        check "the remove script deleted the stale socket" test ! -e "$sock"
                else
                        check "vbdd exited 0 (reaped by the watcher)" \
                                grep -q "vbdd for $d/$DEVID exited (status 0)" "$OUT/$CUR_TEST.watch.log"
                fi
                ;;
        blkback) xl_blkback_removed "$d" "$OUT/$name.xl-destroy.log" ;;
        esac
        check "no dying domain left behind (grants released)" only_dom0_left 20
        xl_end "$b"
}

# --- benchmark: vbdd vs blkback vs qdisk, same guest, same boot -----------
t_bench() {
        local name=bench img_v=$IMGDIR/bench-vbdd.img img_b=$IMGDIR/bench-blkback.img
        local img_q=$IMGDIR/bench-qdisk.img disks="" loop limit
        test_begin bench
        for f in "$img_v" "$img_b" "$img_q"; do
                rm -f "$f"
                dd if=/dev/zero of="$f" bs=1M count="$BENCH_MIB" conv=fsync status=none
        done
        loop=$(losetup --direct-io=on -f --show "$img_b")
        [ "$VBDD_OK" = 1 ] && disks="xvda=vbdd,"
        disks="${disks}xvdb=blkback,xvdc=qdisk"
        # per disk and round: 2 sequential runs (<= BENCH_SECS each) + 2 random
        limit=$((BENCH_ROUNDS * 3 * (4 * BENCH_SECS + 30) + 120))
        domu_create "$name" bench "vbdt_disks=$disks vbdt_mib=$BENCH_MIB vbdt_secs=$BENCH_SECS vbdt_rounds=$BENCH_ROUNDS vbdt_timeout=$limit" \
                "format=raw,vdev=xvdb,access=rw,backendtype=phy,script=$PHY_SCRIPT,target=$loop" \
                "format=raw,vdev=xvdc,access=rw,backendtype=qdisk,target=$img_q" || {
                losetup -d "$loop"
                test_end
                return
        }
        [ "$VBDD_OK" = 1 ] && vbdd_attach "$DOMID" "$img_v" w bench
        ps -eo pid,args | grep -E '[q]emu-system' | cut -c1-300 >"$OUT/bench.qemu-args.txt"
        guest_done "$name" $((limit + 60))
        save_console "$name"
        wait_domu_gone "$name" 30 || fail "domU did not power off"
        [ "$VBDD_OK" = 1 ] && reap vbdd "$DOMID" "guest poweroff"
        losetup -d "$loop"
        check "no benchmark errors" eq "$(console_of "$name" | grep -c -E 'VBDBENCH-ERROR|VBDT ERROR')" 0
        console_of "$name" | grep '^VBDT bench' >"$OUT/bench.raw.txt"
        bench_table "$OUT/bench.raw.txt" >"$OUT/bench.txt"
        cat "$OUT/bench.txt"
        test_end
}
# mean per backend and op over rounds, then ratios vs vbdd
# bench_table FILE [BACKEND...]: mean per workload and backend (default
# vbdd blkback qdisk) of vbdbench's lines, and the first backend's ratio to
# each of the others
bench_table() {
        local f=$1
        shift
        [ $# = 0 ] && set -- vbdd blkback qdisk
        awk -v list="$*" '
        { be=""; op=""; jobs=""; mb=""; io="";
          for (i = 1; i <= NF; i++) { split($i, kv, "=");
            if (kv[1]=="be") be=kv[2]; if (kv[1]=="op") op=kv[2]; if (kv[1]=="jobs") jobs=kv[2];
            if (kv[1]=="MBps") mb=kv[2]; if (kv[1]=="iops") io=kv[2]; }
          if (op == "randread") { key = "randread4k-qd" jobs; val = io; unit[key] = "IOPS" }
          else { key = op "-1M"; val = mb; unit[key] = "MB/s" }
          sum[be, key] += val; cnt[be, key]++; keys[key] = 1 }
        END {
          nb = split(list, bl, " "); split("seqwrite-1M seqread-1M randread4k-qd1 randread4k-qd8", order, " ")
          printf "%-16s %-5s", "workload", "unit"
          for (j = 1; j <= nb; j++) printf " %10s", bl[j]
          for (j = 2; j <= nb; j++) printf " %14s", bl[1] "/" bl[j]
          printf "\n"
          for (k = 1; k <= 4; k++) { key = order[k]; if (!(key in keys)) continue
            printf "%-16s %-5s", key, unit[key]
            for (j = 1; j <= nb; j++) { v[j] = cnt[bl[j], key] ? sum[bl[j], key] / cnt[bl[j], key] : 0; printf " %10.1f", v[j] }
            for (j = 2; j <= nb; j++) printf " %14s", (v[1] && v[j]) ? sprintf("%.2f", v[1] / v[j]) : "n/a"
            printf "\n" }
        }' "$f"
}

if [ "$VBDD_OK" != 1 ]; then
        for t in $VBD_TESTS; do
                [ "$t" = bench ] && continue
                [[ " $VBD_BACKENDS " == *" vbdd "* ]] && echo "VBDT-RESULT $t-vbdd FAIL vbdd unusable in dom0 (missing or missing libraries)" >>"$OUT/results.txt"
        done
fi
for t in $VBD_TESTS; do
        if [ "$t" = bench ]; then
                t_bench
                continue
        fi
        for b in $VBD_BACKENDS; do
                [ "$b" = vbdd ] && [ "$VBDD_OK" != 1 ] && continue
                "t_$t" "$b" 2>&1 | tee "$OUT/$t-$b.log"
        done
done
echo "VBDT-DONE" >>"$OUT/results.txt"
cat "$OUT/results.txt"
