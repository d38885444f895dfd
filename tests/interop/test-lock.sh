#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# Image locks (include/vbd/lock.h) against qemu's own, with the real tools:
#  1. vbdd serving an image read-write: qemu-io writing it and qemu-img
#     resize fail with qemu's 'Failed to get "write" lock'; qemu-img info -U
#     and check -U (force-share) still work;
#  2. qemu-nbd, qemu-nbd -r, qemu-io, qemu-io -r and a qemu guest (-S) with
#     the image as a read-write or read-only disk holding it: vbdd opening
#     it read-write and read-only gets the verdict a qemu guest's disk gets
#     (qemu-system-x86_64 beside the same holder), and a refusal exits 1
#     with a message naming the image, the permission and the holder's pid;
#  3. two vbdd on one image read-write: the second is refused, naming the
#     first's pid; read-only beside read-only is allowed;
#  4. locking=off lets both directions through;
#  5. a qcow2 overlay served read-write: its backing file cannot be written
#     by qemu-io (as beside a qemu guest on the overlay), can be read;
#     locking=off on the overlay reaches its backing file;
#  6. the locks go with the daemon: after it stopped, qemu-io writes.
. "$(dirname "$0")/../lib/functions.sh"
requires qemu-img --version
requires qemu-io --version
requires qemu-nbd --version
: "${VBDD:?}"
. "$(dirname "$0")/nbd-lib.sh"

img=$tmp/a.img
truncate -s 16M "$img"
n=0

# vbdd_try RW|RO SPEC: open SPEC in a vbdd that exits at once if refused;
# 0 when it served (then stopped), 1 when refused (stderr in $tmp/try.err).
vbdd_try() {
        local w=() pid st=0 sock=$sockdir/try$((n += 1)).sock
        [ "$1" = RW ] && w=(--nbd-writable)
        "$VBDD" --export-only --nbd "unix:$sock" "${w[@]}" --image "$2" 2>"$tmp/try.err" &
        pid=$!
        for _ in $(seq 100); do
                [ -S "$sock" ] && break
                kill -0 $pid 2>/dev/null || break
                sleep 0.05
        done
        if [ -S "$sock" ]; then
                kill -TERM $pid
                wait $pid || fail "vbdd $*: exit $? after SIGTERM"
                return 0
        fi
        wait $pid || st=$?
        [ $st = 1 ] || fail "vbdd $* refused with exit $st (want 1): $(cat "$tmp/try.err")"
        return 1
}

# qemu_try RW|RO FILE: qemu-io's verdict beside the current holders.
qemu_try() {
        if [ "$1" = RW ]; then
                qemu-io -f raw -c "write 0 512" "$2" >/dev/null 2>"$tmp/qemu.err"
        else
                qemu-io -r -f raw -c "read 0 512" "$2" >/dev/null 2>"$tmp/qemu.err"
        fi
}

# ---- 1. vbdd holds the image read-write ----
start_export "$sockdir/a.sock" --nbd-writable --image "raw:$img"
qemu-io -f raw -c "write 0 512" "$img" >/dev/null 2>"$tmp/err" &&
        fail "qemu-io wrote an image vbdd serves read-write"
grep -q 'Failed to get "write" lock' "$tmp/err" || fail "qemu-io: $(cat "$tmp/err")"
qemu-img resize -f raw "$img" 32M >/dev/null 2>"$tmp/err" &&
        fail "qemu-img resize of an image vbdd serves read-write"
grep -q 'Failed to get .* lock' "$tmp/err" || fail "qemu-img resize: $(cat "$tmp/err")"
[ "$(stat -c %s "$img")" = $((16 << 20)) ] || fail "the image was resized under vbdd"
qemu-img info -U -f raw "$img" >/dev/null 2>"$tmp/err" || fail "qemu-img info -U: $(cat "$tmp/err")"
qemu-io -r -U -f raw -c "read 0 512" "$img" >/dev/null 2>"$tmp/err" ||
        fail "qemu-io -r -U beside vbdd: $(cat "$tmp/err")"
# ---- 3. a second vbdd, read-write and read-only ----
vbdd_try RW "raw:$img" && fail "a second vbdd opened the image read-write"
grep -q "'$img' is in use: failed to get \"write\" lock: pid $export_pid (vbdd) does not share it" \
        "$tmp/try.err" || fail "second vbdd rw: $(cat "$tmp/try.err")"
vbdd_try RO "raw:$img" && fail "a second vbdd read an image served read-write"
grep -q "failed to get shared \"write\" lock: pid $export_pid (vbdd) holds it" "$tmp/try.err" ||
        fail "second vbdd ro: $(cat "$tmp/try.err")"
# ---- 4. locking=off, one way ----
vbdd_try RW "raw:$img,locking=off" || fail "locking=off refused: $(cat "$tmp/try.err")"
stop_export
# ---- 6. gone with the daemon ----
qemu_try RW "$img" || fail "qemu-io after vbdd stopped: $(cat "$tmp/qemu.err")"

# Read-only beside read-only, and a qcow2 image read-write.
start_export "$sockdir/b.sock" --image "raw:$img"
vbdd_try RO "raw:$img" || fail "two read-only vbdd: $(cat "$tmp/try.err")"
vbdd_try RW "raw:$img" && fail "vbdd rw beside a read-only vbdd"
grep -q 'failed to get "write" lock' "$tmp/try.err" || fail "rw beside ro: $(cat "$tmp/try.err")"
qemu_try RW "$img" && fail "qemu-io wrote an image vbdd serves read-only"
qemu_try RO "$img" || fail "qemu-io -r beside a read-only vbdd: $(cat "$tmp/qemu.err")"
stop_export
qemu-img create -q -f qcow2 "$tmp/q.qcow2" 16M
start_export "$sockdir/q.sock" --nbd-writable --image "qcow2:$tmp/q.qcow2"
qemu-img check "$tmp/q.qcow2" >/dev/null 2>"$tmp/err" && fail "qemu-img check without -U"
grep -q 'Failed to get shared "write" lock' "$tmp/err" || fail "qemu-img check: $(cat "$tmp/err")"
qemu-img check -U "$tmp/q.qcow2" >/dev/null 2>"$tmp/err" ||
        fail "qemu-img check -U beside vbdd: $(cat "$tmp/err")"
qemu-io -f qcow2 -c "write 0 512" "$tmp/q.qcow2" >/dev/null 2>&1 &&
        fail "qemu-io wrote a qcow2 image vbdd serves"
stop_export

# ---- 2. qemu holds it: vbdd decides as a qemu guest's disk would ----
# The reference is qemu-system-x86_64 with the image as a virtio-blk disk
# (read-write, or readonly=on): what vbdd is to a Xen guest.  qemu-nbd and
# qemu-io share everything on a raw image (they do not stop each other),
# a guest's disk does not share "write", and neither does vbdd.
_stop_pid() { kill -TERM "$1" 2>/dev/null && wait "$1" 2>/dev/null; return 0; }
_stop_guest() { [ -s "$1" ] && kill -TERM "$(cat "$1")" 2>/dev/null; rm -f "$1"; return 0; }
have_guest=0
qemu-system-x86_64 --version >/dev/null 2>&1 && have_guest=1
[ $have_guest = 1 ] || echo "# no qemu-system-x86_64: vbdd's verdicts are checked against the expected ones"

# guest_start RW|RO FILE FMT PIDFILE: a stopped guest (-S) with FILE as its
# disk; 0 when it runs (qemu daemonizes once its devices are set up), 1 when
# it was refused (stderr in $tmp/qemu.err).
guest_start() {
        local ro=""
        [ "$1" = RO ] && ro=",readonly=on"
        rm -f "$4"
        qemu-system-x86_64 -M pc -S -nodefaults -display none -daemonize -pidfile "$4" \
                -drive "file=$2,format=$3,if=none,id=d$ro" -device virtio-blk-pci,drive=d \
                2>"$tmp/qemu.err" || return 1
        cleanup_fn _stop_guest "$4"
}
# guest_try RW|RO FILE [FMT]: the guest's verdict beside the current holders.
guest_try() {
        guest_start "$1" "$2" "${3:-raw}" "$tmp/try-guest.pid" || return 1
        _stop_guest "$tmp/try-guest.pid"
}

hold_fifo=$tmp/hold.fifo
mkfifo "$hold_fifo"
# holder, then the expected verdicts of vbdd RW and RO beside it (0 allowed)
for h in "qemu-nbd 1 1" "qemu-nbd -r 0 0" "qemu-io 1 1" "qemu-io -r 0 0" "guest 1 1" \
        "guest-ro 1 0"; do
        set -- $h
        want_ro=${*: -1} want_rw=${*: -2:1} holder=${h% * *}
        comm=${holder%% *}
        case $holder in
        qemu-nbd*)
                rm -f "$sockdir/h.sock"
                $holder -f raw -k "$sockdir/h.sock" "$img" 2>"$tmp/holder.err" &
                hpid=$!
                ;;
        qemu-io*) # it reads commands from the fifo: it holds the image until EOF
                $holder -f raw "$img" <"$hold_fifo" >/dev/null 2>"$tmp/holder.err" &
                hpid=$!
                exec 3>"$hold_fifo"
                ;;
        guest*)
                [ $have_guest = 1 ] || continue
                m=RW
                [ "$holder" = guest-ro ] && m=RO
                guest_start $m "$img" raw "$tmp/holder.pid" ||
                        { fail "guest $m: $(cat "$tmp/qemu.err")"; continue; }
                hpid=$(cat "$tmp/holder.pid") comm=qemu-system-x86
                ;;
        esac
        [ "$comm" = qemu-nbd ] || [ "$comm" = qemu-io ] && cleanup_fn _stop_pid "$hpid"
        # held once its lock bytes show in its fdinfo
        held=0
        for _ in $(seq 100); do
                grep -qs "^lock:.*:$(stat -c %i "$img") 100 " /proc/"$hpid"/fdinfo/* && held=1 && break
                sleep 0.05
        done
        [ $held = 1 ] || fail "$holder took no lock on the image"
        for mode in RW RO; do
                want=$want_rw
                [ $mode = RO ] && want=$want_ro
                v=0
                vbdd_try $mode "raw:$img" || v=1
                if [ $have_guest = 1 ]; then
                        guest_try $mode "$img" && want=0 || want=1
                fi
                if [ $v != "$want" ]; then
                        fail "beside $holder: vbdd $mode $([ $v = 0 ] && echo opened || echo refused), a qemu guest's disk $([ "$want" = 0 ] && echo opens || echo is refused): $(cat "$tmp/try.err" "$tmp/qemu.err")"
                elif [ $v = 1 ]; then
                        grep -Eq "'$img' is in use: failed to get (shared )?\"write\" lock: pid $hpid \\($comm\\)" \
                                "$tmp/try.err" || fail "beside $holder, vbdd $mode: $(cat "$tmp/try.err")"
                fi
                echo "# beside $holder: vbdd $mode $([ $v = 0 ] && echo allowed || echo refused)"
        done
        # ---- 4. locking=off, the other way ----
        if [ "$want_rw" = 1 ]; then
                vbdd_try RW "raw:$img,locking=off" ||
                        fail "locking=off beside $holder: $(cat "$tmp/try.err")"
        fi
        case $holder in
        qemu-io*) exec 3>&- ;;
        esac
        case $holder in
        guest*) _stop_guest "$tmp/holder.pid" ;;
        *) _stop_pid "$hpid" ;;
        esac
done

# ---- 5. the backing file of an overlay served read-write ----
# A qemu guest's disk on the overlay: its backing file is read, not written.
head -c 4M /dev/urandom >"$tmp/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$tmp/over.qcow2"
if [ $have_guest = 1 ]; then
        guest_start RW "$tmp/over.qcow2" qcow2 "$tmp/holder.pid" || fail "guest on the overlay"
        qemu_try RW "$tmp/base.raw" && fail "qemu lets the backing file of a guest's disk be written"
        _stop_guest "$tmp/holder.pid"
fi
start_export "$sockdir/o.sock" --nbd-writable --image "qcow2:$tmp/over.qcow2"
qemu_try RW "$tmp/base.raw" && fail "qemu-io wrote the backing file of an overlay vbdd serves"
grep -q 'Failed to get "write" lock' "$tmp/qemu.err" || fail "backing file: $(cat "$tmp/qemu.err")"
qemu_try RO "$tmp/base.raw" || fail "backing file not readable: $(cat "$tmp/qemu.err")"
vbdd_try RO "raw:$tmp/base.raw" || fail "vbdd reading the backing file: $(cat "$tmp/try.err")"
vbdd_try RW "raw:$tmp/base.raw" && fail "vbdd writing the backing file"
stop_export
start_export "$sockdir/o2.sock" --nbd-writable --image "qcow2:$tmp/over.qcow2,locking=off"
qemu_try RW "$tmp/base.raw" || fail "locking=off did not reach the backing file: $(cat "$tmp/qemu.err")"
qemu-io -f qcow2 -c "write 0 512" "$tmp/over.qcow2" >/dev/null 2>"$tmp/err" ||
        fail "locking=off: qemu-io on the overlay: $(cat "$tmp/err")"
stop_export

finish
