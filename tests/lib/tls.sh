# SPDX-License-Identifier: LGPL-2.1-or-later
# TLS credentials for the tests, made with GnuTLS's tools (gnutls-bin).
# Source it after functions.sh:
#
#   tls_requires             skip the test (77) without certtool and psktool
#   tls_psk FILE USER        a psktool keys file with a new random key for USER
#   tls_certs DIR            a test CA and, in the layouts of qemu's
#                            tls-creds-x509 and nbdkit --tls-certificates:
#                              DIR/server  ca-cert.pem server-cert.pem server-key.pem
#                                          (for localhost and 127.0.0.1)
#                              DIR/client  ca-cert.pem client-cert.pem client-key.pem
#                              DIR/ca-only ca-cert.pem (a client with no certificate)
#                              DIR/stranger the same as client, from another CA

tls_requires() {
        requires certtool --version
        requires psktool --version
}

tls_psk() {
        rm -f "$1"
        psktool -u "$2" -p "$1" >/dev/null
}

# _tls_cert KEY CERT TEMPLATE-LINES CA-DIR(or "" for self-signed)
_tls_cert() {
        local key=$1 cert=$2 lines=$3 ca=$4 t
        t=$(mktemp)
        printf '%b' "$lines" >"$t"
        certtool --generate-privkey --outfile "$key" >/dev/null 2>&1 || return 1
        if [ -z "$ca" ]; then
                certtool --generate-self-signed --load-privkey "$key" --template "$t" \
                        --outfile "$cert" >/dev/null 2>&1
        else
                certtool --generate-certificate --load-privkey "$key" --template "$t" \
                        --load-ca-certificate "$ca/ca-cert.pem" --load-ca-privkey "$ca/ca-key.pem" \
                        --outfile "$cert" >/dev/null 2>&1
        fi
        local rc=$?
        rm -f "$t"
        return $rc
}

tls_certs() {
        local d=$1 ca="cn = vbd test CA\nca\ncert_signing_key\nexpiration_days = 7\n"
        local srv="cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 7\n"
        local cli="cn = vbd test client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 7\n"
        mkdir -p "$d/ca" "$d/ca2" "$d/server" "$d/client" "$d/ca-only" "$d/stranger"
        _tls_cert "$d/ca/ca-key.pem" "$d/ca/ca-cert.pem" "$ca" "" &&
                _tls_cert "$d/ca2/ca-key.pem" "$d/ca2/ca-cert.pem" "$ca" "" &&
                _tls_cert "$d/server/server-key.pem" "$d/server/server-cert.pem" "$srv" "$d/ca" &&
                _tls_cert "$d/client/client-key.pem" "$d/client/client-cert.pem" "$cli" "$d/ca" &&
                _tls_cert "$d/stranger/client-key.pem" "$d/stranger/client-cert.pem" "$cli" \
                        "$d/ca2" || return 1
        cp "$d/ca/ca-cert.pem" "$d/server/"
        cp "$d/ca/ca-cert.pem" "$d/client/"
        cp "$d/ca/ca-cert.pem" "$d/ca-only/"
        cp "$d/ca/ca-cert.pem" "$d/stranger/" # trusts our server, is not trusted by it
}
