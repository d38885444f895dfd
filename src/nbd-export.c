/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD server (see nbd-export.h): the export's lifecycle, its listener
 * (util/listener.c), the clients' sockets, pause and shutdown.  The
 * protocol is in nbd-handshake.c, nbd-transmission.c and nbd-meta.c.
 *
 * Per client: an input buffer for headers and options, a handshake output
 * buffer (control path, allocated), and for the transmission phase the
 * request slots and buffers of nbd-transmission.c.  Replies are written
 * with writev, several per call.
 *
 * A client is freed only from a top-level watcher callback (never from
 * inside an I/O completion that might run inline in vbd_image_submit), and
 * only once none of its requests is in the image.
 */
#define VBD_LOG_TOPIC "nbd"
#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd-internal.h"
#include "util/listener.h"

/* ---- endpoints ---- */

int vbd_nbd_parse_endpoint(const char *ep, struct vbd_nbd_addr *ret)
{
        struct vbd_nbd_addr a = {0};
        const char *host, *colon, *p;
        size_t hlen;
        unsigned long port = 0;

        if (!ep)
                return -EINVAL;
        if (strncmp(ep, "unix:", 5) == 0) {
                p = ep + 5;
                if (!*p || strlen(p) >= sizeof(a.path))
                        return -EINVAL;
                a.unix_socket = true;
                memcpy(a.path, p, strlen(p) + 1);
                *ret = a;
                return 0;
        }
        if (strncmp(ep, "tcp:", 4) != 0)
                return -EINVAL;
        host = ep + 4;
        colon = strrchr(host, ':');
        if (!colon || colon == host)
                return -EINVAL;
        hlen = (size_t)(colon - host);
        if (host[0] == '[') {
                if (hlen < 3 || host[hlen - 1] != ']')
                        return -EINVAL;
                host++;
                hlen -= 2;
        } else if (memchr(host, ':', hlen) || memchr(host, ']', hlen)) {
                return -EINVAL; /* an IPv6 address needs brackets */
        }
        if (hlen == 0 || hlen >= sizeof(a.host) || memchr(host, '[', hlen))
                return -EINVAL;
        p = colon + 1;
        if (!*p || strlen(p) > 5)
                return -EINVAL;
        for (; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                port = port * 10 + (unsigned long)(*p - '0');
        }
        if (port == 0 || port > 65535)
                return -EINVAL;
        memcpy(a.host, host, hlen);
        a.host[hlen] = '\0';
        a.port = (unsigned short)port;
        *ret = a;
        return 0;
}

bool vbd_nbd_host_is_loopback(const char *host)
{
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
        struct addrinfo *res = NULL;
        bool loopback = true;

        if (!host || getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
                return false;
        /* Every address the listener might bind must be a loopback one. */
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                if (ai->ai_family == AF_INET) {
                        const struct sockaddr_in *in = (const void *)ai->ai_addr;

                        loopback &= (ntohl(in->sin_addr.s_addr) >> 24) == 127;
                } else if (ai->ai_family == AF_INET6) {
                        const struct in6_addr *a =
                            &((const struct sockaddr_in6 *)(const void *)ai->ai_addr)->sin6_addr;

                        loopback &= IN6_IS_ADDR_LOOPBACK(a) ||
                                    (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
                } else {
                        loopback = false;
                }
        }
        freeaddrinfo(res);
        return loopback;
}

/* ---- client lifetime ---- */

static void client_free(struct nbd_client *cl);
static void server_client_gone(struct vbd_nbd *s);

void nbd_client_kill(struct nbd_client *cl, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        if (cl->dead)
                return;
        if (fmt) {
                va_start(ap, fmt);
                vsnprintf(msg, sizeof(msg), fmt, ap);
                va_end(ap);
                if (vbd_ratelimit_ok(&cl->srv->rl))
                        vbd_warn("%s: %s: disconnecting", cl->peer, msg);
        }
        cl->dead = true;
        cl->state = CL_STOPPED;
}

bool nbd_client_maybe_free(struct nbd_client *cl)
{
        if (cl->busy || cl->in_io)
                return false;
        if (cl->dead || (cl->closing && !cl->outq && cl->ooff == cl->olen && !cl->cur)) {
                client_free(cl);
                return true;
        }
        return false;
}

/* Is there a reason to read the socket now? */
static bool client_wants_input(const struct nbd_client *cl)
{
        if (cl->dead || cl->closing || cl->state == CL_STOPPED || cl->stalled)
                return false;
        return !(cl->transmission && cl->srv->paused);
}

void nbd_client_update_watchers(struct nbd_client *cl)
{
        struct ev_loop *loop = cl->srv->loop;
        bool want_read = client_wants_input(cl);
        bool want_write = !cl->dead && (cl->ooff < cl->olen || cl->outq);

        if (want_read && nbd_tls_recv_blocked(cl))
                want_write = true;
        if (cl->state == CL_TLS_HANDSHAKE && !cl->dead && cl->ooff == cl->olen) {
                /* The STARTTLS ACK is out: GnuTLS says which way it waits. */
                want_write = nbd_tls_wants_write(cl);
                want_read = !want_write;
        }

        if (want_read && !ev_is_active(&cl->rio))
                ev_io_start(loop, &cl->rio);
        else if (!want_read && ev_is_active(&cl->rio))
                ev_io_stop(loop, &cl->rio);
        /* Bytes inside GnuTLS do not wake the watcher.  The read loop stops
         * early only when input is not wanted, and is kicked when it is
         * again; this keeps it so if that ever changes. */
        if (want_read && nbd_tls_pending(cl))
                ev_feed_event(loop, &cl->rio, EV_READ);
        if (want_write && !ev_is_active(&cl->wio))
                ev_io_start(loop, &cl->wio);
        else if (!want_write && ev_is_active(&cl->wio))
                ev_io_stop(loop, &cl->wio);
}

/* Look at the buffered input again, from the loop. */
static void client_kick(struct nbd_client *cl)
{
        if (!client_wants_input(cl))
                return;
        ev_io_start(cl->srv->loop, &cl->rio);
        ev_feed_event(cl->srv->loop, &cl->rio, EV_READ);
}

void nbd_client_unstall(struct nbd_client *cl)
{
        if (!cl->stalled)
                return;
        cl->stalled = false;
        client_kick(cl);
}

/* ---- the socket, in the clear or through TLS ---- */

static ssize_t client_recv(struct nbd_client *cl, void *buf, size_t n)
{
        return cl->tls_active ? nbd_tls_recv(cl, buf, n) : read(cl->fd, buf, n);
}

static ssize_t client_sendv(struct nbd_client *cl, const struct iovec *iov, unsigned cnt)
{
        return cl->tls_active ? nbd_tls_sendv(cl, iov, cnt) : writev(cl->fd, iov, (int)cnt);
}

/*
 * After our ACK to STARTTLS: the ACK goes out in the clear, then the TLS
 * handshake steps as the socket allows.  Once it is done, options are read
 * again, through TLS, from the loop (GnuTLS may hold some already).
 */
static void client_tls_step(struct nbd_client *cl)
{
        nbd_client_flush(cl);
        if (cl->dead || cl->state != CL_TLS_HANDSHAKE || cl->ooff < cl->olen)
                return;
        if (nbd_tls_handshake(cl) <= 0)
                return; /* waiting, or killed */
        cl->tls_active = true;
        cl->state = CL_OPT_HDR;
        client_kick(cl);
}

/* ---- input ---- */

/* Consume what is buffered.  NBD_IN_MORE: read the socket for more. */
static int client_process(struct nbd_client *cl)
{
        for (;;) {
                int r;

                if (cl->dead || cl->closing || cl->stalled)
                        return NBD_IN_STOP;
                if (cl->state == CL_STOPPED)
                        return NBD_IN_STOP;
                r = cl->state >= CL_REQ_HDR ? nbd_transmission_process(cl)
                                            : nbd_handshake_process(cl);
                if (r != NBD_IN_NEXT)
                        return r;
        }
}

/* Read straight into a WRITE's buffer: large payloads skip the copy. */
static ssize_t read_payload_direct(struct nbd_client *cl)
{
        struct nbd_req *r = cl->cur;
        unsigned c = r->got / NBD_CHUNK, o = r->got % NBD_CHUNK;
        ssize_t n;

        n = client_recv(cl, (uint8_t *)r->iov[1 + c].iov_base + o, r->iov[1 + c].iov_len - o);
        if (n > 0)
                r->got += (uint32_t)n;
        return n;
}

static void client_on_eof(struct nbd_client *cl)
{
        if (!cl->transmission) {
                vbd_debug("%s: closed the connection during the handshake", cl->peer);
                cl->dead = true;
                return;
        }
        if (cl->cur) {
                /* A request cut short: nothing to answer. */
                nbd_req_put(cl->cur);
                cl->cur = NULL;
        }
        vbd_debug("%s: end of input", cl->peer);
        cl->closing = true;
        cl->state = CL_STOPPED;
}

static void client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nbd_client *cl = w->data;

        cl->busy++;
        if (cl->state == CL_TLS_HANDSHAKE)
                client_tls_step(cl);
        for (;;) {
                ssize_t n;

                if (cl->state == CL_TLS_HANDSHAKE || client_process(cl) == NBD_IN_STOP)
                        break;
                if (cl->state == CL_REQ_PAYLOAD && !nbd_in_avail(cl) &&
                    cl->cur->len - cl->cur->got >= 4096) {
                        n = read_payload_direct(cl);
                } else {
                        if (cl->ioff) { /* what is left is a partial header or option */
                                memmove(cl->ibuf, cl->ibuf + cl->ioff, nbd_in_avail(cl));
                                cl->ilen -= cl->ioff;
                                cl->ioff = 0;
                        }
                        n = client_recv(cl, cl->ibuf + cl->ilen, NBD_IBUF - cl->ilen);
                        if (n > 0)
                                cl->ilen += (size_t)n;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (n < 0) {
                        nbd_client_kill(cl, "read: %s", strerror(errno));
                        break;
                }
                if (n == 0) {
                        client_on_eof(cl);
                        break;
                }
        }
        if (cl->state == CL_TLS_HANDSHAKE)
                client_tls_step(cl); /* an option just said STARTTLS */
        else
                nbd_client_flush(cl);
        cl->busy--;
        nbd_client_update_watchers(cl);
        nbd_client_maybe_free(cl);
}

/* ---- output ---- */

void nbd_client_flush(struct nbd_client *cl)
{
        struct iovec iov[NBD_WRITEV_IOVS];

        if (cl->dead)
                return;
        while (cl->ooff < cl->olen) {
                struct iovec o = {cl->obuf + cl->ooff, cl->olen - cl->ooff};
                ssize_t n = client_sendv(cl, &o, 1);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n < 0) {
                        nbd_client_kill(cl, NULL);
                        return;
                }
                cl->ooff += (size_t)n;
        }
        while (cl->outq) {
                unsigned cnt = 0;
                ssize_t n;

                /* Gather the iovecs of as many queued replies as fit. */
                for (struct nbd_req *r = cl->outq; r && cnt < NBD_WRITEV_IOVS; r = r->next)
                        for (unsigned i = r->out_idx; i < r->iovcnt && cnt < NBD_WRITEV_IOVS; i++)
                                iov[cnt++] = r->iov[i];
                n = client_sendv(cl, iov, cnt);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n < 0) {
                        nbd_client_kill(cl, NULL); /* the peer is gone */
                        return;
                }
                /* Advance by n bytes. */
                while (cl->outq) {
                        struct nbd_req *r = cl->outq;

                        while (r->out_idx < r->iovcnt && (size_t)n >= r->iov[r->out_idx].iov_len) {
                                n -= (ssize_t)r->iov[r->out_idx].iov_len;
                                r->out_idx++;
                        }
                        if (r->out_idx < r->iovcnt) {
                                r->iov[r->out_idx].iov_base =
                                    (uint8_t *)r->iov[r->out_idx].iov_base + n;
                                r->iov[r->out_idx].iov_len -= (size_t)n;
                                break;
                        }
                        cl->outq = r->next;
                        if (!cl->outq)
                                cl->outq_tail = NULL;
                        nbd_req_put(r);
                }
        }
}

static void client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nbd_client *cl = w->data;

        cl->busy++;
        if (cl->state == CL_TLS_HANDSHAKE)
                client_tls_step(cl);
        else
                nbd_client_flush(cl);
        if (nbd_tls_recv_blocked(cl))
                client_kick(cl); /* the read that waited for this */
        cl->busy--;
        nbd_client_update_watchers(cl);
        nbd_client_maybe_free(cl);
}

static void client_hs_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct nbd_client *cl = w->data;

        nbd_client_kill(cl, "no export chosen within %.0f s", NBD_HANDSHAKE_S);
        nbd_client_update_watchers(cl);
        nbd_client_maybe_free(cl);
}

static void client_free(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        struct nbd_client **pp;

        for (pp = &s->clients; *pp; pp = &(*pp)->next) {
                if (*pp == cl) {
                        *pp = cl->next;
                        break;
                }
        }
        s->nr_clients--;
        vbd_listener_client_gone(s->listener);
        ev_io_stop(s->loop, &cl->rio);
        ev_io_stop(s->loop, &cl->wio);
        ev_clear_pending(s->loop, &cl->rio);
        ev_clear_pending(s->loop, &cl->wio);
        ev_timer_stop(s->loop, &cl->hs_timer);
        nbd_tls_client_free(cl);
        close(cl->fd);
        vbd_info("%s: disconnected", cl->peer);
        if (cl->arena)
                munmap(cl->arena, VBD_NBD_MAX_REQUEST);
        free(cl->reqs);
        free(cl->scratch);
        free(cl->ibuf);
        free(cl->opt);
        free(cl->obuf);
        free(cl);
        server_client_gone(s);
}

/* ---- server ---- */

static int server_accept(void *opaque, int fd, const struct vbd_listener_peer *peer)
{
        struct vbd_nbd *s = opaque;
        struct nbd_client *cl = calloc(1, sizeof(*cl));

        if (cl) {
                cl->srv = s;
                cl->ibuf = malloc(NBD_IBUF);
                cl->opt = malloc(NBD_OPT_MAX);
                if (cl->ibuf && cl->opt)
                        nbd_handshake_greet(cl); /* written from the loop */
        }
        if (!cl || !cl->ibuf || !cl->opt || cl->dead) {
                if (cl) {
                        free(cl->ibuf);
                        free(cl->opt);
                        free(cl->obuf);
                }
                free(cl);
                vbd_warn("out of memory: refusing a client");
                return -ENOMEM;
        }
        if (!s->addr.unix_socket) {
                int one = 1;

                (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        cl->fd = fd;
        snprintf(cl->peer, sizeof(cl->peer), "client %s", peer->name);
        ev_io_init(&cl->rio, client_read_cb, fd, EV_READ);
        cl->rio.data = cl;
        ev_io_init(&cl->wio, client_write_cb, fd, EV_WRITE);
        cl->wio.data = cl;
        ev_timer_init(&cl->hs_timer, client_hs_timeout_cb, NBD_HANDSHAKE_S, 0);
        cl->hs_timer.data = cl;
        ev_timer_start(s->loop, &cl->hs_timer);
        cl->state = CL_CLIENT_FLAGS;
        cl->next = s->clients;
        s->clients = cl;
        s->nr_clients++;
        vbd_debug("%s: new connection", cl->peer);
        nbd_client_update_watchers(cl);
        return 0;
}

static void server_refuse(void *opaque, int fd, int reason, const struct vbd_listener_peer *peer)
{
        struct vbd_nbd *s = opaque;

        if (vbd_ratelimit_ok(&s->rl))
                vbd_warn("%u clients already: refusing one", s->nr_clients);
}

static void server_accept_error(void *opaque, int err)
{
        struct vbd_nbd *s = opaque;

        if (vbd_ratelimit_ok(&s->rl))
                vbd_warn("accept on %s: %s", s->endpoint, strerror(-err));
}

static int server_listen(struct vbd_nbd *s)
{
        struct vbd_listener_config lc = {
            .path = s->addr.unix_socket ? s->addr.path : NULL,
            .mode = 0600,
            .host = s->addr.host,
            .port = s->addr.port,
            .max_clients = s->max_clients,
            .keep_loop_alive = s->keep_alive,
            .accept = server_accept,
            .refuse = server_refuse,
            .error = server_accept_error,
            .opaque = s,
        };
        int r;

        s->listener = vbd_listener_new(s->loop, &lc);
        if (s->listener) {
                vbd_listener_start(s->listener);
                return 0;
        }
        r = -errno;
        if (!s->addr.unix_socket)
                return vbd_log_errno(r, "cannot listen on %s: %m", s->endpoint);
        if (r == -EADDRINUSE)
                return vbd_log_errno(r, "%s: a server listens there already: %m", s->addr.path);
        if (r == -EEXIST)
                return vbd_log_errno(r, "%s: %m (not replacing it)", s->addr.path);
        return vbd_log_errno(r, "%s: %m", s->addr.path);
}

/* The export's limits and flags, from the image. */
static void server_set_info(struct vbd_nbd *s, const struct vbd_info *info)
{
        s->size = info->size;
        s->min_block = info->logical_block;
        s->pref_block = info->physical_block > 4096 ? info->physical_block : 4096;
        if (s->pref_block & (s->pref_block - 1))
                s->pref_block = 4096;
        s->max_block = VBD_NBD_MAX_REQUEST;
        if (info->max_io && info->max_io < s->max_block)
                s->max_block = info->max_io;
        s->eflags = NBD_EFLAG_HAS_FLAGS | NBD_EFLAG_CAN_MULTI_CONN;
        if (info->caps & VBD_CAP_FLUSH)
                s->eflags |= NBD_EFLAG_SEND_FLUSH;
        if (!s->writable) {
                s->eflags |= NBD_EFLAG_READ_ONLY;
        } else {
                if (info->caps & (VBD_CAP_FUA | VBD_CAP_FLUSH))
                        s->eflags |= NBD_EFLAG_SEND_FUA;
                if (info->caps & VBD_CAP_DISCARD)
                        s->eflags |= NBD_EFLAG_SEND_TRIM;
                if (info->caps & VBD_CAP_WRITE_ZEROES)
                        s->eflags |= NBD_EFLAG_SEND_WRITE_ZEROES;
        }
}

struct vbd_nbd *vbd_nbd_new(struct ev_loop *loop, struct vbd_image *img,
                            const struct vbd_nbd_config *cfg)
{
        struct vbd_nbd *s;
        const char *name = cfg->name ? cfg->name : "";
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->loop = loop;
        s->img_ = img;
        s->rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 10);
        if (vbd_nbd_parse_endpoint(cfg->endpoint, &s->addr) < 0) {
                r = vbd_log_errno(EINVAL, "bad NBD endpoint '%s' (unix:PATH or tcp:ADDR:PORT)",
                                  cfg->endpoint ? cfg->endpoint : "");
                goto fail;
        }
        s->name_len = strlen(name);
        if (s->name_len > VBD_NBD_NAME_MAX) {
                r = vbd_log_errno(ENAMETOOLONG, "NBD export name longer than %d bytes",
                                  VBD_NBD_NAME_MAX);
                goto fail;
        }
        memcpy(s->name, name, s->name_len + 1);
        snprintf(s->endpoint, sizeof(s->endpoint), "%s", cfg->endpoint);
        s->writable = cfg->writable && !vbd_image_readonly(nbd_image(s));
        if (cfg->writable && !s->writable)
                vbd_warn("the image is read-only: the NBD export is too");
        s->max_clients = cfg->max_clients ? cfg->max_clients : VBD_NBD_MAX_CLIENTS;
        s->keep_alive = cfg->keep_loop_alive;
        r = nbd_tls_new(cfg, &s->tls);
        if (r < 0)
                goto fail;
        if (!s->tls && !s->addr.unix_socket && !cfg->insecure &&
            !vbd_nbd_host_is_loopback(s->addr.host)) {
                r = vbd_log_errno(EPERM,
                                  "refusing an NBD export without TLS on %s, not a loopback "
                                  "address: anyone on the network could read%s the disk; give "
                                  "TLS credentials (--nbd-tls-certificates DIR or --nbd-tls-psk "
                                  "FILE), or --nbd-insecure on a trusted network",
                                  s->endpoint, s->writable ? " and write" : "");
                goto fail;
        }
        server_set_info(s, vbd_image_info(nbd_image(s)));
        ev_timer_init(&s->done_timer, NULL, 0, 0);
        ev_timer_init(&s->shutdown_timer, NULL, 0, 0);
        ev_timer_init(&s->pause_timer, NULL, 0, 0);

        r = server_listen(s);
        if (r < 0)
                goto fail;
        vbd_info("NBD export '%s' of %s on %s (%s, %s%s)", s->name, vbd_image_name(nbd_image(s)),
                 s->endpoint, s->writable ? "writable" : "read-only", nbd_tls_describe(s->tls),
                 s->tls || s->addr.unix_socket ? "" : ": trusted networks only");
        return s;
fail:
        nbd_tls_free(s->tls);
        free(s);
        errno = -r;
        return NULL;
}

static void server_close_listener(struct vbd_nbd *s)
{
        vbd_listener_free(s->listener);
        s->listener = NULL;
}

static void done_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_nbd *s = w->data;

        ev_timer_stop(loop, &s->shutdown_timer);
        if (s->done) {
                void (*done)(void *) = s->done;

                s->done = NULL;
                done(s->done_opaque);
        }
}

static void server_client_gone(struct vbd_nbd *s)
{
        if (s->shutting_down && !s->nr_clients && !ev_is_active(&s->done_timer))
                ev_timer_start(s->loop, &s->done_timer);
}

static void shutdown_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_nbd *s = w->data;

        for (struct nbd_client *cl = s->clients, *next; cl; cl = next) {
                next = cl->next;
                if (!cl->dead) {
                        vbd_warn("%s: replies not read after %.0f s: dropping", cl->peer,
                                 NBD_SHUTDOWN_S);
                        nbd_client_kill(cl, NULL);
                }
                nbd_client_update_watchers(cl);
                nbd_client_maybe_free(cl);
        }
}

void vbd_nbd_shutdown(struct vbd_nbd *s, void (*done)(void *opaque), void *opaque)
{
        if (s->shutting_down) {
                vbd_info("NBD export already stopping: %u client(s), %u request(s) in flight",
                         s->nr_clients, s->inflight);
                return;
        }
        s->shutting_down = true;
        s->done = done;
        s->done_opaque = opaque;
        ev_timer_init(&s->done_timer, done_cb, 0, 0);
        s->done_timer.data = s;
        ev_timer_init(&s->shutdown_timer, shutdown_timeout_cb, NBD_SHUTDOWN_S, 0);
        s->shutdown_timer.data = s;
        server_close_listener(s);
        vbd_info("NBD export stopping: %u client(s), %u request(s) in flight", s->nr_clients,
                 s->inflight);
        for (struct nbd_client *cl = s->clients, *next; cl; cl = next) {
                next = cl->next;
                if (!cl->transmission) {
                        cl->dead = true;
                } else {
                        struct nbd_req *r = cl->cur;

                        if (r && r->state != REQ_IO) {
                                /* Its header is in, its payload or buffers are not: refuse it. */
                                cl->cur = NULL;
                                r->error = NBD_ESHUTDOWN;
                                nbd_req_queue_reply(r, 0, 0);
                        }
                        cl->closing = true;
                        cl->state = CL_STOPPED;
                        cl->stalled = false;
                        nbd_client_flush(cl);
                }
                nbd_client_update_watchers(cl);
                nbd_client_maybe_free(cl);
        }
        if (s->nr_clients)
                ev_timer_start(s->loop, &s->shutdown_timer);
        else
                ev_timer_start(s->loop, &s->done_timer);
}

/* ---- pause ---- */

static void pause_done_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_nbd *s = w->data;
        void (*done)(void *) = s->pause_done;

        s->pause_done = NULL;
        if (done)
                done(s->pause_opaque);
}

void nbd_server_io_left(struct vbd_nbd *s)
{
        /* From an I/O completion: call back from the loop, not from under the image. */
        if (!s->inflight && s->paused && s->pause_done && !ev_is_active(&s->pause_timer))
                ev_timer_start(s->loop, &s->pause_timer);
}

void vbd_nbd_pause(struct vbd_nbd *s, void (*done)(void *opaque), void *opaque)
{
        if (s->paused) {
                vbd_err("NBD export paused already: pause ignored");
                return;
        }
        s->paused = true;
        vbd_debug("pausing: %u request(s) in flight", s->inflight);
        for (struct nbd_client *cl = s->clients; cl; cl = cl->next)
                nbd_client_update_watchers(cl);
        if (!s->inflight) {
                if (done)
                        done(opaque);
                return;
        }
        s->pause_done = done;
        s->pause_opaque = opaque;
        ev_timer_init(&s->pause_timer, pause_done_cb, 0, 0);
        s->pause_timer.data = s;
}

void vbd_nbd_resume(struct vbd_nbd *s)
{
        if (!s->paused)
                return;
        s->paused = false;
        s->pause_done = NULL; /* a pause not drained yet is called off */
        ev_timer_stop(s->loop, &s->pause_timer);
        vbd_debug("resumed");
        /* What arrived meanwhile is in the sockets or in ibuf: look at it. */
        for (struct nbd_client *cl = s->clients; cl; cl = cl->next)
                if (cl->transmission)
                        client_kick(cl);
}

int vbd_nbd_set_image(struct vbd_nbd *s, struct vbd_image *img)
{
        const struct vbd_info *info = vbd_image_info(img);
        size_t size = vbd_image_io_scratch_size(img);
        struct nbd_client *cl;
        void **scratch;
        unsigned i;

        if (!s->paused || s->inflight)
                return -EBUSY;
        /* Clients negotiated these. */
        if (info->size != s->size || info->logical_block != s->min_block ||
            (info->max_io && info->max_io < s->max_block))
                return -EINVAL;
        /* Allocate everything first: nothing changes unless it all worked. */
        scratch = calloc(s->nr_clients + 1, sizeof(*scratch));
        if (!scratch)
                return -ENOMEM;
        for (cl = s->clients, i = 0; cl; cl = cl->next, i++) {
                if (!cl->reqs || !size || size == cl->scratch_size)
                        continue;
                scratch[i] = calloc(VBD_NBD_MAX_INFLIGHT, size);
                if (!scratch[i]) {
                        while (i-- > 0)
                                free(scratch[i]);
                        free(scratch);
                        return -ENOMEM;
                }
        }
        for (cl = s->clients, i = 0; cl; cl = cl->next, i++)
                if (cl->reqs && size != cl->scratch_size)
                        nbd_transmission_set_scratch(cl, scratch[i], size);
        free(scratch);
        s->img_ = img;
        vbd_info("NBD export '%s' now serves %s", s->name, vbd_image_name(img));
        return 0;
}

/* ---- the rest of the API ---- */

void vbd_nbd_free(struct vbd_nbd *s)
{
        if (!s)
                return;
        server_close_listener(s);
        while (s->clients) {
                struct nbd_client *cl = s->clients;

                if (cl->in_io)
                        vbd_warn("%s: freed with %u request(s) in flight", cl->peer, cl->in_io);
                cl->dead = true;
                cl->busy = 0;
                cl->in_io = 0;
                client_free(cl);
        }
        ev_timer_stop(s->loop, &s->done_timer);
        ev_timer_stop(s->loop, &s->shutdown_timer);
        ev_timer_stop(s->loop, &s->pause_timer);
        nbd_tls_free(s->tls);
        free(s);
}

const char *vbd_nbd_endpoint(const struct vbd_nbd *s)
{
        return s->endpoint;
}

const char *vbd_nbd_name(const struct vbd_nbd *s)
{
        return s->name;
}

bool vbd_nbd_writable(const struct vbd_nbd *s)
{
        return s->writable;
}

bool vbd_nbd_tls(const struct vbd_nbd *s)
{
        return s->tls != NULL;
}

unsigned vbd_nbd_clients(const struct vbd_nbd *s)
{
        return s->nr_clients;
}

unsigned vbd_nbd_inflight(const struct vbd_nbd *s)
{
        return s->inflight;
}
