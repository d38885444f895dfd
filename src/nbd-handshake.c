/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD handshake (doc/proto.md, "Fixed newstyle negotiation"): our
 * greeting, the client flags, then options until NBD_OPT_GO or
 * NBD_OPT_EXPORT_NAME moves the client to the transmission phase.
 *
 * Option data up to NBD_OPT_MAX bytes is read into cl->opt and looked at;
 * longer data up to NBD_OPT_SKIP_MAX is skipped and answered ERR_TOO_BIG;
 * anything longer, or more than NBD_OPTS_MAX options, drops the client.
 * Replies go to an output buffer of at most NBD_OBUF_MAX unread bytes.
 * With TLS credentials every option but STARTTLS and ABORT waits for TLS
 * (the spec's FORCEDTLS mode, see opt_starttls).
 */
#define VBD_LOG_TOPIC "nbd"
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-internal.h"

/* ---- output ---- */

void nbd_out_bytes(struct nbd_client *cl, const void *p, size_t n)
{
        if (cl->dead)
                return;
        if (cl->olen - cl->ooff + n > NBD_OBUF_MAX) {
                nbd_client_kill(cl, "does not read its option replies");
                return;
        }
        if (cl->ooff && cl->ooff == cl->olen)
                cl->ooff = cl->olen = 0;
        if (cl->olen + n > cl->osize) {
                size_t size = cl->osize ? cl->osize : 4096;
                uint8_t *b;

                while (size < cl->olen + n)
                        size *= 2;
                b = realloc(cl->obuf, size);
                if (!b) {
                        nbd_client_kill(cl, "out of memory");
                        return;
                }
                cl->obuf = b;
                cl->osize = size;
        }
        memcpy(cl->obuf + cl->olen, p, n);
        cl->olen += n;
}

void nbd_opt_reply(struct nbd_client *cl, uint32_t type, const void *data, uint32_t len)
{
        uint8_t h[20];

        vbd_put_be64(h, NBD_REP_MAGIC);
        vbd_put_be32(h + 8, cl->opt_code);
        vbd_put_be32(h + 12, type);
        vbd_put_be32(h + 16, len);
        nbd_out_bytes(cl, h, sizeof(h));
        if (len)
                nbd_out_bytes(cl, data, len);
}

void nbd_opt_error(struct nbd_client *cl, uint32_t type, const char *msg)
{
        nbd_opt_reply(cl, type, msg, msg ? (uint32_t)strlen(msg) : 0);
}

void nbd_handshake_greet(struct nbd_client *cl)
{
        uint8_t greeting[18];

        vbd_put_be64(greeting, NBD_MAGIC);
        vbd_put_be64(greeting + 8, NBD_IHAVEOPT);
        vbd_put_be16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        nbd_out_bytes(cl, greeting, sizeof(greeting));
}

/* ---- options ---- */

static uint16_t client_eflags(const struct nbd_client *cl)
{
        return (uint16_t)(cl->srv->eflags | (cl->structured ? NBD_EFLAG_SEND_DF : 0));
}

bool nbd_name_is_ours(const struct vbd_nbd *s, const uint8_t *name, uint32_t len)
{
        return len == s->name_len && memcmp(name, s->name, len) == 0;
}

static void start_transmission(struct nbd_client *cl)
{
        int r = nbd_transmission_start(cl);

        if (r < 0)
                nbd_client_kill(cl, "cannot start transmission: %s", strerror(-r));
}

static void opt_info_go(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        const uint8_t *d = cl->opt;
        uint32_t len = cl->opt_len, nlen, nreq;
        uint8_t info[18];
        bool want_name = false;

        if (len < 6 || (nlen = vbd_get_be32(d)) > len - 6 || nlen > VBD_NBD_NAME_MAX) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "malformed option");
                return;
        }
        nreq = vbd_get_be16(d + 4 + nlen);
        if (len != 4 + nlen + 2 + 2 * nreq) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "malformed option: bad length");
                return;
        }
        if (!nbd_name_is_ours(s, d + 4, nlen)) {
                nbd_opt_error(cl, NBD_REP_ERR_UNKNOWN, "no such export");
                return;
        }
        for (uint32_t i = 0; i < nreq; i++)
                if (vbd_get_be16(d + 4 + nlen + 2 + 2 * i) == NBD_INFO_NAME)
                        want_name = true;

        vbd_put_be16(info, NBD_INFO_EXPORT);
        vbd_put_be64(info + 2, s->size);
        vbd_put_be16(info + 10, client_eflags(cl));
        nbd_opt_reply(cl, NBD_REP_INFO, info, 12);
        /* Sent even when not asked for: our requests must be aligned. */
        vbd_put_be16(info, NBD_INFO_BLOCK_SIZE);
        vbd_put_be32(info + 2, s->min_block);
        vbd_put_be32(info + 6, s->pref_block);
        vbd_put_be32(info + 10, s->max_block);
        nbd_opt_reply(cl, NBD_REP_INFO, info, 14);
        if (want_name) {
                uint8_t buf[2 + VBD_NBD_NAME_MAX];

                vbd_put_be16(buf, NBD_INFO_NAME);
                memcpy(buf + 2, s->name, s->name_len);
                nbd_opt_reply(cl, NBD_REP_INFO, buf, (uint32_t)(2 + s->name_len));
        }
        nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
        if (cl->opt_code == NBD_OPT_GO && !cl->dead)
                start_transmission(cl);
}

static void opt_export_name(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        static const uint8_t zeroes[124];
        uint8_t h[10];

        if (!nbd_name_is_ours(s, cl->opt, cl->opt_len)) {
                nbd_client_kill(cl, "NBD_OPT_EXPORT_NAME for an unknown export");
                return;
        }
        vbd_put_be64(h, s->size);
        vbd_put_be16(h + 8, client_eflags(cl));
        nbd_out_bytes(cl, h, sizeof(h));
        if (!cl->no_zeroes)
                nbd_out_bytes(cl, zeroes, sizeof(zeroes));
        if (!cl->dead)
                start_transmission(cl);
}

static void opt_list(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        uint8_t buf[4 + VBD_NBD_NAME_MAX];

        if (cl->opt_len) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                return;
        }
        vbd_put_be32(buf, (uint32_t)s->name_len);
        memcpy(buf + 4, s->name, s->name_len);
        nbd_opt_reply(cl, NBD_REP_SERVER, buf, (uint32_t)(4 + s->name_len));
        nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
}

/*
 * NBD_OPT_STARTTLS.  With credentials the server is in the spec's FORCEDTLS
 * mode: the first STARTTLS is acknowledged and the TLS handshake follows
 * (nbd-export.c); a second one, through TLS, is invalid.
 */
static void opt_starttls(struct nbd_client *cl)
{
        int r;

        if (!cl->srv->tls) {
                nbd_opt_error(cl, NBD_REP_ERR_UNSUP, "TLS is not configured on this server");
                return;
        }
        if (cl->tls_active) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "TLS is already negotiated");
                return;
        }
        if (cl->opt_len) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
                return;
        }
        nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
        if (cl->dead)
                return;
        r = nbd_tls_client_start(cl);
        if (r < 0) {
                nbd_client_kill(cl, "cannot start TLS: %s", strerror(-r));
                return;
        }
        cl->state = CL_TLS_HANDSHAKE;
}

/* Before TLS in FORCEDTLS mode only STARTTLS and ABORT are served: true if
 * the option was refused here. */
static bool option_needs_tls(struct nbd_client *cl)
{
        if (!cl->srv->tls || cl->tls_active || cl->opt_code == NBD_OPT_STARTTLS ||
            cl->opt_code == NBD_OPT_ABORT)
                return false;
        if (cl->opt_code == NBD_OPT_EXPORT_NAME) /* cannot be answered with an error */
                nbd_client_kill(cl, "NBD_OPT_EXPORT_NAME without TLS, which is required");
        else
                nbd_opt_error(cl, NBD_REP_ERR_TLS_REQD,
                              "TLS is required: send NBD_OPT_STARTTLS first");
        return true;
}

static void handle_option(struct nbd_client *cl)
{
        vbd_debug("%s: option %" PRIu32 " (%" PRIu32 " bytes)", cl->peer, cl->opt_code,
                  cl->opt_len);
        if (cl->srv->shutting_down && cl->opt_code != NBD_OPT_ABORT) {
                nbd_opt_error(cl, NBD_REP_ERR_SHUTDOWN, "the server is shutting down");
                return;
        }
        if (option_needs_tls(cl))
                return;
        switch (cl->opt_code) {
        case NBD_OPT_EXPORT_NAME:
                opt_export_name(cl);
                return;
        case NBD_OPT_ABORT:
                nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
                cl->closing = true;
                cl->state = CL_STOPPED;
                return;
        case NBD_OPT_LIST:
                opt_list(cl);
                return;
        case NBD_OPT_STARTTLS:
                opt_starttls(cl);
                return;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
                opt_info_go(cl);
                return;
        case NBD_OPT_STRUCTURED_REPLY:
                if (cl->opt_len) {
                        nbd_opt_error(cl, NBD_REP_ERR_INVALID,
                                      "NBD_OPT_STRUCTURED_REPLY takes no data");
                        return;
                }
                cl->structured = true;
                nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
                return;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
                nbd_meta_option(cl);
                return;
        default: /* EXTENDED_HEADERS and anything else */
                nbd_opt_error(cl, NBD_REP_ERR_UNSUP, NULL);
                return;
        }
}

/* ---- input ---- */

/* One option header at p (16 bytes, consumed). */
static int option_header(struct nbd_client *cl, const uint8_t *p)
{
        if (vbd_get_be64(p) != NBD_IHAVEOPT) {
                nbd_client_kill(cl, "bad option magic");
                return NBD_IN_STOP;
        }
        cl->opt_code = vbd_get_be32(p + 8);
        cl->opt_len = vbd_get_be32(p + 12);
        cl->ioff += 16;
        if (++cl->nopts > NBD_OPTS_MAX) {
                nbd_client_kill(cl, "more than %d options", NBD_OPTS_MAX);
                return NBD_IN_STOP;
        }
        if (cl->opt_len > NBD_OPT_SKIP_MAX) {
                nbd_client_kill(cl, "option %" PRIu32 " of %" PRIu32 " bytes", cl->opt_code,
                                cl->opt_len);
                return NBD_IN_STOP;
        }
        if (cl->opt_len <= NBD_OPT_MAX) {
                cl->state = CL_OPT_DATA;
                return NBD_IN_NEXT;
        }
        if (cl->opt_code == NBD_OPT_EXPORT_NAME) {
                /* cannot be answered with an error */
                nbd_client_kill(cl, "export name of %" PRIu32 " bytes", cl->opt_len);
                return NBD_IN_STOP;
        }
        cl->skip = cl->opt_len;
        cl->state = CL_OPT_SKIP;
        return NBD_IN_NEXT;
}

int nbd_handshake_process(struct nbd_client *cl)
{
        const uint8_t *p = cl->ibuf + cl->ioff;

        switch (cl->state) {
        case CL_CLIENT_FLAGS: {
                uint32_t f;

                if (nbd_in_avail(cl) < 4)
                        return NBD_IN_MORE;
                f = vbd_get_be32(p);
                cl->ioff += 4;
                if (f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
                        nbd_client_kill(cl, "unknown client flags %#" PRIx32, f);
                        return NBD_IN_STOP;
                }
                if (cl->srv->tls && !(f & NBD_FLAG_C_FIXED_NEWSTYLE)) {
                        /* TLS needs fixed newstyle: such a client could never get it. */
                        nbd_client_kill(cl, "no fixed newstyle, and TLS is required");
                        return NBD_IN_STOP;
                }
                cl->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
                cl->state = CL_OPT_HDR;
                return NBD_IN_NEXT;
        }
        case CL_OPT_HDR:
                if (nbd_in_avail(cl) < 16)
                        return NBD_IN_MORE;
                return option_header(cl, p);
        case CL_OPT_DATA:
                if (nbd_in_avail(cl) < cl->opt_len)
                        return NBD_IN_MORE;
                memcpy(cl->opt, p, cl->opt_len);
                cl->ioff += cl->opt_len;
                cl->state = CL_OPT_HDR;
                handle_option(cl);
                return NBD_IN_NEXT;
        case CL_OPT_SKIP: {
                size_t n = nbd_in_avail(cl) < cl->skip ? nbd_in_avail(cl) : (size_t)cl->skip;

                cl->ioff += n;
                cl->skip -= n;
                if (cl->skip)
                        return NBD_IN_MORE;
                cl->state = CL_OPT_HDR;
                if (cl->srv->tls && !cl->tls_active) /* the only error before TLS */
                        nbd_opt_error(cl, NBD_REP_ERR_TLS_REQD, "TLS is required");
                else
                        nbd_opt_error(cl, NBD_REP_ERR_TOO_BIG, "option too long");
                return NBD_IN_NEXT;
        }
        default:
                return NBD_IN_STOP;
        }
}
