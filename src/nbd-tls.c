/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * TLS on the NBD export (doc/proto.md, "TLS support"), with GnuTLS.
 *
 * The server's credentials are loaded once, when the export starts: either
 * X.509 (a directory holding server-cert.pem, server-key.pem and, to check
 * client certificates, ca-cert.pem and optionally ca-crl.pem: the layout of
 * qemu's tls-creds-x509 and nbdkit --tls-certificates) or a PSK keys file
 * in psktool's format (USERNAME:HEXKEY lines; GnuTLS reads it at each
 * handshake, so keys can be changed without a restart).
 *
 * A client's session starts after our NBD_REP_ACK to NBD_OPT_STARTTLS
 * (nbd-handshake.c).  Everything is non-blocking: the handshake steps from
 * the socket watchers (gnutls_record_get_direction says which one), records
 * are read into the caller's buffers and written from a bounce buffer of one
 * record.  Two rules of non-blocking GnuTLS are kept here:
 *
 *  - a send that returned GNUTLS_E_AGAIN is repeated with the same buffer
 *    and length: the bounce buffer keeps it (out_len) until it went out;
 *  - gnutls may hold decrypted bytes that no longer wake the socket
 *    watcher (gnutls_record_check_pending).  The export reads until
 *    EAGAIN, and whenever it stops reading early (stalled, paused) it
 *    restarts with an ev_feed_event (client_kick), never waiting for the
 *    socket: nothing buffered here is forgotten.
 *
 * Bytes the client sent after STARTTLS but before our ACK was read (a
 * pipelined ClientHello) were already in the input buffer: they are moved
 * here (raw) and given to GnuTLS before the socket.
 */
#define VBD_LOG_TOPIC "nbd"
#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nbd-internal.h"

#define NBD_TLS_RECORD 16384 /* the largest TLS record payload */
/*
 * TLS 1.2 at least (the spec's SHOULD); PSK key exchanges only with
 * --nbd-tls-psk; our order of ciphers, not the client's.  TLS 1.3 ties an
 * external PSK to SHA-256, which rules out NORMAL's first suite
 * (AES-256-GCM-SHA384): the next one would be ChaCha20-Poly1305, about 9x
 * slower than AES-GCM on a CPU with AES instructions (gnutls-cli
 * --benchmark-ciphers), so it goes last.
 */
#define NBD_TLS_PRIO_X509 "NORMAL:%SERVER_PRECEDENCE:-VERS-TLS1.1:-VERS-TLS1.0"
#define NBD_TLS_PRIO_PSK                                                                           \
        NBD_TLS_PRIO_X509 ":+ECDHE-PSK:+DHE-PSK:+PSK:-CHACHA20-POLY1305:+CHACHA20-POLY1305"

struct nbd_tls {
        gnutls_certificate_credentials_t x509;
        gnutls_psk_server_credentials_t psk;
        gnutls_priority_t prio;
        bool verify_peer;
};

struct nbd_tls_conn {
        gnutls_session_t s;
        uint8_t *raw; /* ciphertext read before the session began */
        size_t raw_len, raw_off;
        size_t out_len;    /* bytes of out in a send that said EAGAIN */
        bool recv_blocked; /* a read waits to write (a TLS 1.3 KeyUpdate answer) */
        uint8_t out[NBD_TLS_RECORD];
};

/* ---- the server's credentials ---- */

static int load_x509(struct nbd_tls *t, const char *dir)
{
        char ca[4096], crl[4096], cert[4096], key[4096];
        int r;

        if (snprintf(ca, sizeof(ca), "%s/ca-cert.pem", dir) >= (int)sizeof(ca) ||
            snprintf(crl, sizeof(crl), "%s/ca-crl.pem", dir) >= (int)sizeof(crl) ||
            snprintf(cert, sizeof(cert), "%s/server-cert.pem", dir) >= (int)sizeof(cert) ||
            snprintf(key, sizeof(key), "%s/server-key.pem", dir) >= (int)sizeof(key))
                return vbd_log_errno(ENAMETOOLONG, "--nbd-tls-certificates: path too long");
        if ((r = gnutls_certificate_allocate_credentials(&t->x509)) < 0)
                return vbd_log_errno(ENOMEM, "TLS: %s", gnutls_strerror(r));
        r = gnutls_certificate_set_x509_key_file(t->x509, cert, key, GNUTLS_X509_FMT_PEM);
        if (r < 0)
                return vbd_log_errno(EINVAL, "TLS: cannot load %s and %s: %s", cert, key,
                                     gnutls_strerror(r));
        if (access(ca, F_OK) == 0) {
                r = gnutls_certificate_set_x509_trust_file(t->x509, ca, GNUTLS_X509_FMT_PEM);
                if (r < 0)
                        return vbd_log_errno(EINVAL, "TLS: cannot load %s: %s", ca,
                                             gnutls_strerror(r));
        } else if (t->verify_peer) {
                return vbd_log_errno(ENOENT, "TLS: --nbd-tls-verify-peer needs %s", ca);
        }
        if (access(crl, F_OK) == 0) {
                r = gnutls_certificate_set_x509_crl_file(t->x509, crl, GNUTLS_X509_FMT_PEM);
                if (r < 0)
                        return vbd_log_errno(EINVAL, "TLS: cannot load %s: %s", crl,
                                             gnutls_strerror(r));
        }
        return 0;
}

static int load_psk(struct nbd_tls *t, const char *file)
{
        FILE *f = fopen(file, "re");
        int r;

        /* GnuTLS opens it at each handshake; a file we cannot read is an error now. */
        if (!f)
                return vbd_log_errno(errno, "TLS: cannot read the PSK file %s: %m", file);
        fclose(f);
        if ((r = gnutls_psk_allocate_server_credentials(&t->psk)) < 0)
                return vbd_log_errno(ENOMEM, "TLS: %s", gnutls_strerror(r));
        if ((r = gnutls_psk_set_server_credentials_file(t->psk, file)) < 0)
                return vbd_log_errno(EINVAL, "TLS: %s: %s", file, gnutls_strerror(r));
        return 0;
}

void nbd_tls_free(struct nbd_tls *t)
{
        if (!t)
                return;
        if (t->x509)
                gnutls_certificate_free_credentials(t->x509);
        if (t->psk)
                gnutls_psk_free_server_credentials(t->psk);
        if (t->prio)
                gnutls_priority_deinit(t->prio);
        free(t);
}

int nbd_tls_new(const struct vbd_nbd_config *cfg, struct nbd_tls **ret)
{
        struct nbd_tls *t;
        const char *err_pos = NULL;
        int r;

        *ret = NULL;
        if (!cfg->tls_certificates && !cfg->tls_psk)
                return 0;
        if (cfg->tls_certificates && cfg->tls_psk)
                return vbd_log_errno(EINVAL, "TLS: certificates or a PSK file, not both");
        if (cfg->tls_verify_peer && !cfg->tls_certificates)
                return vbd_log_errno(EINVAL, "TLS: verifying the peer needs certificates");
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->verify_peer = cfg->tls_verify_peer;
        r = cfg->tls_psk ? load_psk(t, cfg->tls_psk) : load_x509(t, cfg->tls_certificates);
        if (r >= 0) {
                r = gnutls_priority_init(
                    &t->prio, cfg->tls_psk ? NBD_TLS_PRIO_PSK : NBD_TLS_PRIO_X509, &err_pos);
                if (r < 0)
                        r = vbd_log_errno(EINVAL, "TLS priorities at '%s': %s",
                                          err_pos ? err_pos : "?", gnutls_strerror(r));
        }
        if (r < 0) {
                nbd_tls_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

const char *nbd_tls_describe(const struct nbd_tls *t)
{
        if (!t)
                return "no TLS";
        if (t->psk)
                return "TLS required, PSK";
        return t->verify_peer ? "TLS required, X.509, client certificates checked"
                              : "TLS required, X.509";
}

/* ---- a client's session ---- */

static ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t n)
{
        struct nbd_client *cl = p;
        struct nbd_tls_conn *c = cl->tls;
        ssize_t r;

        if (c->raw_off < c->raw_len) {
                size_t k = c->raw_len - c->raw_off < n ? c->raw_len - c->raw_off : n;

                memcpy(buf, c->raw + c->raw_off, k);
                c->raw_off += k;
                if (c->raw_off == c->raw_len) {
                        free(c->raw);
                        c->raw = NULL;
                        c->raw_len = c->raw_off = 0;
                }
                return (ssize_t)k;
        }
        r = read(cl->fd, buf, n);
        if (r < 0)
                gnutls_transport_set_errno(c->s, errno);
        return r;
}

static ssize_t tls_push(gnutls_transport_ptr_t p, const giovec_t *iov, int cnt)
{
        struct nbd_client *cl = p;
        ssize_t r = writev(cl->fd, (const struct iovec *)iov, cnt);

        if (r < 0)
                gnutls_transport_set_errno(cl->tls->s, errno);
        return r;
}

int nbd_tls_client_start(struct nbd_client *cl)
{
        struct nbd_tls *t = cl->srv->tls;
        struct nbd_tls_conn *c = calloc(1, sizeof(*c));
        int r;

        if (!c)
                return -ENOMEM;
        r = gnutls_init(&c->s, GNUTLS_SERVER | GNUTLS_NONBLOCK);
        if (r < 0) {
                free(c);
                return -ENOMEM;
        }
        cl->tls = c;
        if (t->psk)
                r = gnutls_credentials_set(c->s, GNUTLS_CRD_PSK, t->psk);
        else
                r = gnutls_credentials_set(c->s, GNUTLS_CRD_CERTIFICATE, t->x509);
        if (r >= 0)
                r = gnutls_priority_set(c->s, t->prio);
        if (r < 0)
                return -EINVAL; /* freed with the client */
        if (t->x509 && t->verify_peer) {
                gnutls_certificate_server_set_request(c->s, GNUTLS_CERT_REQUIRE);
                gnutls_session_set_verify_cert(c->s, NULL, 0);
        }
        gnutls_transport_set_ptr(c->s, cl);
        gnutls_transport_set_pull_function(c->s, tls_pull);
        gnutls_transport_set_vec_push_function(c->s, tls_push);
        /* What is left in the input buffer is the start of the TLS stream. */
        if (nbd_in_avail(cl)) {
                c->raw = malloc(nbd_in_avail(cl));
                if (!c->raw)
                        return -ENOMEM;
                memcpy(c->raw, cl->ibuf + cl->ioff, nbd_in_avail(cl));
                c->raw_len = nbd_in_avail(cl);
        }
        cl->ilen = cl->ioff = 0;
        return 0;
}

int nbd_tls_handshake(struct nbd_client *cl)
{
        struct nbd_tls_conn *c = cl->tls;
        char *desc;

        for (;;) {
                int r = gnutls_handshake(c->s);

                if (r == GNUTLS_E_SUCCESS)
                        break;
                if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
                        return 0;
                if (!gnutls_error_is_fatal(r))
                        continue; /* a warning alert: go on */
                if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
                        gnutls_datum_t out = {0};
                        unsigned status = gnutls_session_get_verify_cert_status(c->s);

                        if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509,
                                                                         &out, 0) == 0) {
                                nbd_client_kill(cl, "TLS handshake: %s", (char *)out.data);
                                gnutls_free(out.data);
                                return -EACCES;
                        }
                }
                nbd_client_kill(cl, "TLS handshake: %s", gnutls_strerror(r));
                return -EPROTO;
        }
        desc = gnutls_session_get_desc(c->s);
        if (cl->srv->tls->psk) {
                const char *user = gnutls_psk_server_get_username(c->s);

                vbd_info("%s: TLS %s, PSK identity '%s'", cl->peer, desc ? desc : "",
                         user ? user : "");
        } else {
                vbd_info("%s: TLS %s%s", cl->peer, desc ? desc : "",
                         cl->srv->tls->verify_peer ? ", client certificate verified" : "");
        }
        gnutls_free(desc);
        return 1;
}

bool nbd_tls_recv_blocked(const struct nbd_client *cl)
{
        return cl->tls_active && cl->tls->recv_blocked;
}

size_t nbd_tls_pending(const struct nbd_client *cl)
{
        return cl->tls_active ? gnutls_record_check_pending(cl->tls->s) : 0;
}

bool nbd_tls_wants_write(const struct nbd_client *cl)
{
        return cl->tls && gnutls_record_get_direction(cl->tls->s) == 1;
}

/* A GnuTLS error from a record call, as an errno for the caller's loop. */
static ssize_t record_error(struct nbd_client *cl, ssize_t r)
{
        if (r == GNUTLS_E_AGAIN)
                errno = EAGAIN;
        else if (r == GNUTLS_E_INTERRUPTED || !gnutls_error_is_fatal((int)r))
                errno = EINTR; /* try again */
        else {
                nbd_client_kill(cl, "TLS: %s", gnutls_strerror((int)r));
                errno = EPROTO;
        }
        return -1;
}

ssize_t nbd_tls_recv(struct nbd_client *cl, void *buf, size_t n)
{
        ssize_t r = gnutls_record_recv(cl->tls->s, buf, n);

        cl->tls->recv_blocked = false;
        if (r >= 0)
                return r;
        if (r == GNUTLS_E_AGAIN && gnutls_record_get_direction(cl->tls->s) == 1)
                cl->tls->recv_blocked = true; /* the reader waits for the socket to take more */
        if (r == GNUTLS_E_PREMATURE_TERMINATION) {
                vbd_debug("%s: closed without a TLS close_notify", cl->peer);
                return 0;
        }
        if (r == GNUTLS_E_REHANDSHAKE) {
                nbd_client_kill(cl, "TLS renegotiation is not supported");
                errno = EPROTO;
                return -1;
        }
        return record_error(cl, r);
}

ssize_t nbd_tls_sendv(struct nbd_client *cl, const struct iovec *iov, unsigned cnt)
{
        struct nbd_tls_conn *c = cl->tls;
        ssize_t r;

        if (!c->out_len) {
                /* One record's worth of what is queued. */
                for (unsigned i = 0; i < cnt && c->out_len < sizeof(c->out); i++) {
                        size_t k = sizeof(c->out) - c->out_len;

                        if (k > iov[i].iov_len)
                                k = iov[i].iov_len;
                        memcpy(c->out + c->out_len, iov[i].iov_base, k);
                        c->out_len += k;
                }
                if (!c->out_len)
                        return 0;
        }
        /* After EAGAIN: the same buffer and length, as GnuTLS wants; the
         * caller has not moved, its next bytes are these. */
        r = gnutls_record_send(c->s, c->out, c->out_len);
        if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
                return record_error(cl, r);
        c->out_len = 0;
        if (r < 0)
                return record_error(cl, r);
        return r;
}

void nbd_tls_client_free(struct nbd_client *cl)
{
        struct nbd_tls_conn *c = cl->tls;

        if (!c)
                return;
        if (cl->tls_active && !c->out_len)
                (void)gnutls_bye(c->s, GNUTLS_SHUT_WR); /* one try: the socket is non-blocking */
        gnutls_deinit(c->s);
        free(c->raw);
        free(c);
        cl->tls = NULL;
}
