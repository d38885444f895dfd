#!/bin/bash
# The NBD export: vbdd --export-only against qemu-nbd serving the same raw
# file the same way (O_DIRECT, Linux AIO, read-only, unix socket).  Not a
# test; prints the figures and vbdd/qemu-nbd ratios.
#
#   bench/nbd.sh [BUILD_DIR]
#   VBD_BENCH_DIR   where the 1 GiB test file goes (default /var/tmp; must
#                   support O_DIRECT, so not tmpfs)
#   VBD_BENCH_TIME  seconds per fio run (default 10)
#
# Runs: nbdcopy of the whole file to null: (4 connections, the default
# request size and queue), best of 3, in MB/s; fio's nbd engine 4 KiB
# random reads at queue depth 32 (one connection), IOPS; and 1 MiB
# sequential reads at queue depth 8, MB/s.  fio needs its nbd engine.
# With psktool: nbdcopy again over TLS (a pre-shared key, nbds+unix://)
# from vbdd --nbd-tls-psk and qemu-nbd --tls-creds (tls-creds-psk), and
# vbdd's TLS/plain ratio, measured in the same run.
set -eu
B=${1:-build}
DIR=${VBD_BENCH_DIR:-/var/tmp}
T=${VBD_BENCH_TIME:-10}
VBDD=$B/vbdd
IMG=$DIR/vbd-nbd-bench.img
SOCKDIR=$(mktemp -d /tmp/vbd-nbd-bench.XXXXXX)
pids=()

for t in nbdcopy qemu-nbd fio python3; do
        command -v $t >/dev/null || { echo "bench: $t is needed" >&2; exit 1; }
done
[ -x "$VBDD" ] || { echo "bench: build first ($VBDD missing)" >&2; exit 1; }
cleanup() {
        for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
        rm -rf "$SOCKDIR" "$IMG"
}
trap cleanup EXIT
# fill FILE SIZE, json EXPR (over stdin's JSON, d), ratio A B: bench/benchlib.py
benchlib() { python3 "$(dirname "$0")/benchlib.py" "$@"; }

benchlib fill "$IMG" 1G

have_fio_nbd=0
fio --enghelp=nbd 2>/dev/null | grep -q uri && have_fio_nbd=1

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && { sleep 0.1; return 0; }; sleep 0.05; done; return 1; }

copy_mbs() { # uri -> best MB/s of 3 whole-file copies to null:
        local best=0 t0 t1 mbs
        for _ in 1 2 3; do
                t0=$(date +%s.%N)
                nbdcopy "$1" null:
                t1=$(date +%s.%N)
                mbs=$(python3 -c "print(int(1024 / ($t1 - $t0)))")
                [ "$mbs" -gt "$best" ] && best=$mbs
        done
        echo "$best"
}

fio_nbd() { # uri rw bs qd field
        fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --size=1G \
                --runtime="$T" --time_based --output-format=json | sed -n '/^{/,$p' |
                benchlib json "$( [ "$5" = iops ] && echo "int(d['jobs'][0]['read']['iops'])" ||
                         echo "int(d['jobs'][0]['read']['bw_bytes'] / 1e6)")"
}

"$VBDD" --export-only --image "raw:$IMG" --nbd "unix:$SOCKDIR/vbdd.sock" -q &
pids+=($!)
qemu-nbd -f raw --cache=none --aio=native -r -t -e 8 -k "$SOCKDIR/qemu.sock" "$IMG" &
pids+=($!)
wait_sock "$SOCKDIR/vbdd.sock" && wait_sock "$SOCKDIR/qemu.sock" || { echo "bench: servers did not start" >&2; exit 1; }
V="nbd+unix:///?socket=$SOCKDIR/vbdd.sock"
Q="nbd+unix:///?socket=$SOCKDIR/qemu.sock"

printf '%-34s %12s %12s %8s\n' "1 GiB raw file, $(nproc) CPUs" vbdd qemu-nbd ratio
v=$(copy_mbs "$V"); q=$(copy_mbs "$Q")
printf '%-34s %12s %12s %8s\n' "nbdcopy to null: (MB/s)" "$v" "$q" "$(benchlib ratio "$v" "$q")"
if [ $have_fio_nbd = 1 ]; then
        v=$(fio_nbd "$V" randread 4k 32 iops); q=$(fio_nbd "$Q" randread 4k 32 iops)
        printf '%-34s %12s %12s %8s\n' "fio nbd randread 4k QD32 (IOPS)" "$v" "$q" "$(benchlib ratio "$v" "$q")"
        v=$(fio_nbd "$V" read 1M 8 bw); q=$(fio_nbd "$Q" read 1M 8 bw)
        printf '%-34s %12s %12s %8s\n' "fio nbd read 1M QD8 (MB/s)" "$v" "$q" "$(benchlib ratio "$v" "$q")"
else
        echo "fio has no nbd engine: fio runs skipped"
fi

if command -v psktool >/dev/null; then
        mkdir "$SOCKDIR/psk"
        psktool -u bench -p "$SOCKDIR/psk/keys.psk" >/dev/null
        "$VBDD" --export-only --image "raw:$IMG" --nbd "unix:$SOCKDIR/vbdd-tls.sock" -q \
                --nbd-tls-psk "$SOCKDIR/psk/keys.psk" &
        pids+=($!)
        qemu-nbd -f raw --cache=none --aio=native -r -t -e 8 -k "$SOCKDIR/qemu-tls.sock" \
                --object "tls-creds-psk,id=tls0,endpoint=server,dir=$SOCKDIR/psk" \
                --tls-creds tls0 "$IMG" &
        pids+=($!)
        wait_sock "$SOCKDIR/vbdd-tls.sock" && wait_sock "$SOCKDIR/qemu-tls.sock" ||
                { echo "bench: TLS servers did not start" >&2; exit 1; }
        k="tls-psk-file=$SOCKDIR/psk/keys.psk"
        VT="nbds+unix://bench@/?socket=$SOCKDIR/vbdd-tls.sock&$k"
        QT="nbds+unix://bench@/?socket=$SOCKDIR/qemu-tls.sock&$k"
        # server CPU (user+system, ms) per 1 GiB copy: load on the machine
        # slows the copies, not this
        ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
        cpu_ms() { # PID URI: copy_mbs's MB/s, then the server's ms of CPU per copy
                local t0 mbs
                t0=$(ticks "$1")
                mbs=$(copy_mbs "$2")
                echo "$mbs $(( ($(ticks "$1") - t0) * 1000 / $(getconf CLK_TCK) / 3 ))"
        }
        # alternate plain and TLS so that a drift of the machine hits both
        read -r vp vpc <<<"$(cpu_ms "${pids[0]}" "$V")"
        read -r vt vtc <<<"$(cpu_ms "${pids[2]}" "$VT")"
        read -r qt qtc <<<"$(cpu_ms "${pids[3]}" "$QT")"
        read -r qp qpc <<<"$(cpu_ms "${pids[1]}" "$Q")"
        read -r vp2 _ <<<"$(cpu_ms "${pids[0]}" "$V")"
        [ "$vp2" -gt "$vp" ] && vp=$vp2
        printf '%-34s %12s %12s %8s\n' "nbdcopy plain, around TLS (MB/s)" "$vp" "$qp" "$(benchlib ratio "$vp" "$qp")"
        printf '%-34s %12s %12s %8s\n' "nbdcopy TLS (PSK) (MB/s)" "$vt" "$qt" "$(benchlib ratio "$vt" "$qt")"
        printf '%-34s %12s %12s %8s\n' "server CPU ms per GiB, TLS" "$vtc" "$qtc" "$(benchlib ratio "$vtc" "$qtc")"
        printf '%-34s %12s %12s %8s\n' "server CPU ms per GiB, plain" "$vpc" "$qpc" "$(benchlib ratio "$vpc" "$qpc")"
        printf '%-34s %12s %12s %8s\n' "TLS / plain, MB/s (vbdd, qemu-nbd)" \
                "$(benchlib ratio "$vt" "$vp")" "$(benchlib ratio "$qt" "$qp")" ""
else
        echo "no psktool (gnutls-bin): TLS runs skipped"
fi
