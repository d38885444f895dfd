#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# TLS on vbdd's NBD export against real clients, keys and certificates made
# with certtool and psktool (tests/lib/tls.sh):
#  - PSK (--nbd-tls-psk): nbdinfo, nbdcopy (both ways) over nbds+unix:// with
#    tls-psk-file=, qemu-img convert and qemu-io (tls-creds-psk) reading and
#    writing, the data compared with the file; a wrong key and a plain client
#    fail, the export goes on;
#  - X.509 (--nbd-tls-certificates), with and without --nbd-tls-verify-peer:
#    nbdcopy (tls-certificates=), qemu-img / qemu-io (tls-creds-x509); with
#    verification a client without a certificate, or with one of another
#    CA, fails the handshake;
#  - the address rule: plain TCP on 0.0.0.0, [::] or a non-loopback address
#    of this host is refused at start, with the reason; --nbd-insecure or TLS
#    lets it run (clients then reach it on 127.0.0.1); bad TLS options.
. "$(dirname "$0")/../lib/functions.sh"
. "$(dirname "$0")/nbd-lib.sh"
. "$(dirname "$0")/../lib/tls.sh"
tls_requires
requires nbdinfo --version
requires nbdcopy --version
have_qemu=1
{ qemu-img --version && qemu-io --version; } >/dev/null 2>&1 || have_qemu=0

MiB=$((1 << 20))
img=$tmp/disk.img
head -c $((32 * MiB)) /dev/urandom >"$img"
mkdir -p "$tmp/psk" "$tmp/wrong"
tls_psk "$tmp/psk/keys.psk" alice
tls_psk "$tmp/wrong/keys.psk" alice
tls_certs "$tmp/x509" || { fail "certtool could not make the certificates"; finish; }
X=$tmp/x509

# pattern_at FILE OFFSET LEN BYTE: FILE holds LEN bytes of BYTE (octal) at OFFSET
pattern_at() {
        cmp -s <(tail -c +$(($2 + 1)) "$1" | head -c "$3") <(head -c "$3" /dev/zero | tr '\0' "\\$4")
}

# ---- PSK ----
sock=$sockdir/psk.sock
start_export "$sock" --image "raw:$img" --nbd-writable --nbd-tls-psk "$tmp/psk/keys.psk" || finish
u="nbds+unix://alice@/?socket=$sock&tls-psk-file=$tmp/psk/keys.psk"
nbdinfo "$u" >"$tmp/info" 2>&1 || fail "nbdinfo over TLS (PSK): $(cat "$tmp/info")"
grep -q "with TLS" "$tmp/info" || fail "nbdinfo does not report TLS: $(head -1 "$tmp/info")"
nbdcopy "$u" - | cmp - "$img" || fail "nbdcopy over TLS (PSK): data differs"
head -c $((32 * MiB)) /dev/urandom >"$tmp/new.img"
nbdcopy "$tmp/new.img" "$u" || fail "nbdcopy to the export over TLS"
cmp "$tmp/new.img" "$img" || fail "nbdcopy's write over TLS: the file differs"
if nbdinfo "nbds+unix://alice@/?socket=$sock&tls-psk-file=$tmp/wrong/keys.psk" >/dev/null 2>&1; then
        fail "a wrong PSK was accepted"
fi
if nbdinfo "nbds+unix://mallory@/?socket=$sock&tls-psk-file=$tmp/psk/keys.psk" >/dev/null 2>&1; then
        fail "an unknown PSK identity was accepted"
fi
if nbdinfo "$(uri "$sock")" >"$tmp/plain" 2>&1; then
        fail "a plain client was served by a TLS export"
fi
if [ $have_qemu = 1 ]; then
        o=(--object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmp/psk,username=alice")
        io="driver=nbd,server.type=unix,server.path=$sock,tls-creds=tls0"
        qemu-img convert "${o[@]}" --image-opts "$io" -O raw "$tmp/q.img" ||
                fail "qemu-img convert over TLS (PSK)"
        cmp "$tmp/q.img" "$img" || fail "qemu-img over TLS (PSK): data differs"
        qemu-io "${o[@]}" --image-opts "$io" -c "write -P 0x5a $((3 * MiB)) $((2 * MiB))" \
                -c "read -P 0x5a $((3 * MiB)) $((2 * MiB))" >"$tmp/qio" 2>&1 ||
                fail "qemu-io over TLS (PSK): $(cat "$tmp/qio")"
        grep -q "Pattern verification failed" "$tmp/qio" && fail "qemu-io read back the wrong data"
        pattern_at "$img" $((3 * MiB)) $((2 * MiB)) 132 || fail "qemu-io's write is not in the file"
        o=(--object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmp/wrong,username=alice")
        qemu-img info "${o[@]}" --image-opts "$io" >/dev/null 2>&1 &&
                fail "qemu-img with a wrong PSK was served"
else
        echo "# qemu-img or qemu-io missing: their runs are skipped"
fi
kill -0 "$export_pid" || fail "vbdd died under the PSK clients"
grep -q "TLS handshake" "$tmp/vbdd.log" || fail "a failed handshake is not logged"
stop_export

# ---- X.509 ----
x509_clients() { # WHAT: nbdcopy and qemu through the export on $sock with $X/client
        local what=$1
        nbdcopy "nbds+unix:///?socket=$sock&tls-certificates=$X/client" - | cmp - "$img" ||
                fail "$what: nbdcopy: data differs"
        [ $have_qemu = 1 ] || return 0
        local o=(--object "tls-creds-x509,id=tls0,endpoint=client,dir=$X/client")
        local io="driver=nbd,server.type=unix,server.path=$sock,tls-creds=tls0,tls-hostname=localhost"
        qemu-img convert "${o[@]}" --image-opts "$io" -O raw "$tmp/q.img" || fail "$what: qemu-img"
        cmp "$tmp/q.img" "$img" || fail "$what: qemu-img: data differs"
        qemu-io "${o[@]}" --image-opts "$io" -c "write -P 0x33 0 $MiB" -c "read -P 0x33 0 $MiB" \
                >"$tmp/qio" 2>&1 || fail "$what: qemu-io: $(cat "$tmp/qio")"
        grep -q "Pattern verification failed" "$tmp/qio" && fail "$what: qemu-io read back the wrong data"
        pattern_at "$img" 0 $MiB 63 || fail "$what: qemu-io's write is not in the file"
}
sock=$sockdir/x.sock
start_export "$sock" --image "raw:$img" --nbd-writable --nbd-tls-certificates "$X/server" || finish
x509_clients "X.509"
nbdinfo "nbds+unix:///?socket=$sock&tls-certificates=$X/ca-only" >/dev/null 2>&1 ||
        fail "X.509 without --nbd-tls-verify-peer: a client without a certificate was refused"
nbdinfo "$(uri "$sock")" >/dev/null 2>&1 && fail "X.509: a plain client was served"
stop_export

start_export "$sock" --image "raw:$img" --nbd-writable --nbd-tls-certificates "$X/server" \
        --nbd-tls-verify-peer || finish
x509_clients "X.509, peer verified"
nbdinfo "nbds+unix:///?socket=$sock&tls-certificates=$X/ca-only" >/dev/null 2>&1 &&
        fail "--nbd-tls-verify-peer: a client without a certificate was served"
nbdinfo "nbds+unix:///?socket=$sock&tls-certificates=$X/stranger" >/dev/null 2>&1 &&
        fail "--nbd-tls-verify-peer: a certificate of another CA was accepted"
grep -q "client certificate verified" "$tmp/vbdd.log" || fail "no verified client in the log"
kill -0 "$export_pid" || fail "vbdd died under the X.509 clients"
stop_export

# ---- which addresses may serve without TLS ----
# refused NAME ENDPOINT: vbdd exits at start saying why
refused() {
        local rc=0
        timeout 20 "$VBDD" --export-only --image "raw:$img" --nbd "$2" 2>"$tmp/refused.err" || rc=$?
        if [ $rc = 0 ] || [ $rc = 124 ]; then
                fail "$1: plain TCP on $2 not refused (exit $rc)"
        elif ! grep -qF "refusing an NBD export without TLS on $2" "$tmp/refused.err"; then
                fail "$1: refused without the reason: $(cat "$tmp/refused.err")"
        fi
}
refused "any IPv4 address" "tcp:0.0.0.0:10809"
refused "any IPv6 address" "tcp:[::]:10809"
a=$(ip -o -4 addr show scope global 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)
if [ -n "$a" ]; then
        refused "this host's address $a" "tcp:$a:10809"
else
        echo "# no global IPv4 address here: only the wildcards are tried"
fi

# tcp_export ARGS...: vbdd --export-only on tcp:0.0.0.0:$port (a free port
# found by trying), waits until it serves; sets $port, $export_pid
tcp_export() {
        local try i
        for try in 1 2 3 4 5 6 7 8; do
                port=$((20000 + RANDOM % 20000))
                : >"$tmp/tcp.log"
                "$VBDD" --export-only --image "raw:$img" --nbd "tcp:0.0.0.0:$port" "$@" \
                        2>"$tmp/tcp.log" &
                export_pid=$!
                cleanup_fn _kill_export "$export_pid"
                for i in $(seq 100); do
                        grep -q "NBD export '' of" "$tmp/tcp.log" && return 0
                        kill -0 "$export_pid" 2>/dev/null || break
                        sleep 0.05
                done
                wait "$export_pid" 2>/dev/null
                grep -q "cannot listen" "$tmp/tcp.log" || break # not a busy port
        done
        fail "vbdd on tcp:0.0.0.0 $* did not start: $(cat "$tmp/tcp.log")"
        return 1
}
if tcp_export --nbd-insecure; then
        nbdcopy "nbd://127.0.0.1:$port" - | cmp - "$img" || fail "--nbd-insecure: data differs"
        grep -q "trusted networks only" "$tmp/tcp.log" || fail "--nbd-insecure: no warning logged"
        stop_export
fi
if tcp_export --nbd-tls-psk "$tmp/psk/keys.psk"; then
        nbdcopy "nbds://alice@127.0.0.1:$port/?tls-psk-file=$tmp/psk/keys.psk" - | cmp - "$img" ||
                fail "TLS on 0.0.0.0: data differs"
        nbdinfo "nbd://127.0.0.1:$port" >/dev/null 2>&1 && fail "TLS on 0.0.0.0: a plain client served"
        stop_export
fi
if tcp_export --nbd-tls-certificates "$X/server"; then
        nbdcopy "nbds://127.0.0.1:$port/?tls-certificates=$X/client" - | cmp - "$img" ||
                fail "X.509 over TCP: data differs"
        stop_export
fi

# ---- bad TLS options ----
bad() { # WHAT ARGS...: vbdd refuses to start
        local what=$1
        shift
        timeout 20 "$VBDD" --export-only --image "raw:$img" "$@" 2>"$tmp/bad.err" &&
                fail "$what: accepted"
        [ -s "$tmp/bad.err" ] || fail "$what: no message"
}
bad "certificates and PSK" --nbd "unix:$sockdir/b" --nbd-tls-psk "$tmp/psk/keys.psk" \
        --nbd-tls-certificates "$X/server"
bad "verify-peer without certificates" --nbd "unix:$sockdir/b" --nbd-tls-verify-peer
bad "TLS without --nbd" --nbd-tls-psk "$tmp/psk/keys.psk"
bad "a missing PSK file" --nbd "unix:$sockdir/b" --nbd-tls-psk "$tmp/nonexistent.psk"
bad "a directory without certificates" --nbd "unix:$sockdir/b" --nbd-tls-certificates "$X/ca-only"
mkdir -p "$X/noca"
cp "$X/server/server-cert.pem" "$X/server/server-key.pem" "$X/noca/"
bad "verify-peer without ca-cert.pem" --nbd "unix:$sockdir/b" --nbd-tls-verify-peer \
        --nbd-tls-certificates "$X/noca"
[ -e "$sockdir/b" ] && fail "a refused export left its socket"
finish
