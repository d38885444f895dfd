/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * mirror: the libnbd glue.  The partner's handle in the VBD's libev loop
 * (its fd watched for what libnbd waits for), the commands in flight with
 * their completions, the timeouts, and dropping the partner.  See mirror.h.
 */
#define VBD_LOG_TOPIC "drv.mirror"
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <ev.h>
#include <libnbd.h>

#include "mirror.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

/* ---- libev watchers that do not keep the loop alive ---- */

/* Only the connections libnbd may have changed its mind on (a command
 * issued, its fd served, connecting or closing): asking libnbd costs a lock
 * and its error context per call, per connection, per loop pass. */
void mirror_nbd_watch(struct mirror *m)
{
        for (unsigned i = 0; i < m->nconn; i++) {
                struct nconn *c = &m->conn[i];

                if (!c->dirty)
                        continue;
                c->dirty = false;
                vbd_nbd_watch_update(m->loop, &c->w, c->h);
        }
}

void mirror_timer_start(struct mirror *m, ev_timer *w, bool *on, double after)
{
        if (*on) {
                ev_ref(m->loop);
                ev_timer_stop(m->loop, w);
        }
        ev_timer_set(w, after, 0.);
        ev_timer_start(m->loop, w);
        ev_unref(m->loop);
        *on = true;
}

void mirror_timer_stop(struct mirror *m, ev_timer *w, bool *on)
{
        if (!*on)
                return;
        ev_ref(m->loop);
        ev_timer_stop(m->loop, w);
        *on = false;
}

/* ---- NBD commands ---- */

static int nop_cb(void *user_data, int *error)
{
        struct nop *op = user_data;
        struct mirror *m = op->m;

        if (op->done)
                return 1; /* already given up on (nbd_close) */
        op->done = true;
        op->err = *error;
        op->done_next = m->done_list;
        m->done_list = op;
        return 1;
}

static nbd_completion_callback nop_arm(struct nconn *c, struct nop *op,
                                       void (*complete)(struct nop *op))
{
        struct mirror *m = c->m;

        op->m = m;
        op->c = c;
        op->complete = complete;
        op->err = 0;
        op->done = false;
        op->start_ns = vbd_now_ns();
        op->next = NULL;
        op->prev = m->nops_tail;
        if (m->nops_tail)
                m->nops_tail->next = op;
        else
                m->nops = op;
        m->nops_tail = op;
        m->nnops++;
        c->inflight++;
        c->dirty = true;
        return (nbd_completion_callback){.callback = nop_cb, .user_data = op};
}

static void nop_unlink(struct mirror *m, struct nop *op)
{
        if (op->prev)
                op->prev->next = op->next;
        else
                m->nops = op->next;
        if (op->next)
                op->next->prev = op->prev;
        else
                m->nops_tail = op->prev;
        op->prev = op->next = NULL;
        m->nnops--;
        op->c->inflight--;
}

/* The command could not be issued (nbd_aio_* returned -1): fail, and let the
 * owner see it as a failed command. */
static void nop_issue_failed(struct mirror *m, struct nop *op, const char *what)
{
        int e = nbd_get_errno();

        mirror_fail(m, e ? e : EIO, "partner: cannot send %s: %s", what, nbd_get_error());
        op->done = true;
        op->err = e ? e : EIO;
        op->done_next = m->done_list;
        m->done_list = op;
}

void mirror_nbd_pwrite(struct nconn *c, struct nop *op, const void *buf, uint64_t len, uint64_t off,
                       void (*complete)(struct nop *op), const char *what)
{
        if (nbd_aio_pwrite(c->h, buf, len, off, nop_arm(c, op, complete), 0) < 0)
                nop_issue_failed(c->m, op, what);
}

void mirror_nbd_zero(struct nconn *c, struct nop *op, uint64_t len, uint64_t off,
                     void (*complete)(struct nop *op))
{
        if (nbd_aio_zero(c->h, len, off, nop_arm(c, op, complete), 0) < 0)
                nop_issue_failed(c->m, op, "a zero request");
}

void mirror_nbd_flush(struct mirror *m, struct nop *op, void (*complete)(struct nop *op),
                      const char *what)
{
        struct nconn *c = &m->conn[0];

        if (nbd_aio_flush(c->h, nop_arm(c, op, complete), 0) < 0)
                nop_issue_failed(m, op, what);
}

void mirror_nbd_process_done(struct mirror *m)
{
        while (m->done_list) {
                struct nop *op = m->done_list;

                m->done_list = op->done_next;
                nop_unlink(m, op);
                /* room on conn[0] for forwards held back by FWD_SEND_MAX */
                if (op->c == &m->conn[0] && m->fqueued)
                        mirror_fwd_want_pump(m);
                op->complete(op);
        }
}

/* The least busy; among equals, the one after the last used (in turn). */
struct nconn *mirror_nbd_copy_conn(struct mirror *m)
{
        struct nconn *best = NULL;

        for (unsigned k = 1; k < m->nconn; k++) {
                unsigned i = 1 + (m->copy_rr + k - 1) % (m->nconn - 1);
                struct nconn *c = &m->conn[i];

                if (c->h && c->ready && (!best || c->inflight < best->inflight))
                        best = c;
        }
        if (!best)
                return &m->conn[0];
        m->copy_rr = best->idx;
        return best;
}

unsigned mirror_nbd_nconns(const struct mirror *m)
{
        unsigned n = 0;

        for (unsigned i = 0; i < m->nconn; i++)
                n += m->conn[i].h && m->conn[i].ready;
        return n;
}

bool mirror_nbd_cork(struct nconn *c, bool on)
{
        int v = on, fd;

        if (c->nocork || !c->h)
                return false;
        fd = nbd_aio_get_fd(c->h);
        if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_CORK, &v, sizeof(v)) < 0) {
                c->nocork = true; /* a unix socket: nothing to gain */
                return false;
        }
        return true;
}

/* Close one handle, giving up on its commands. */
static void conn_drop(struct mirror *m, struct nconn *c)
{
        struct nbd_handle *h = c->h;

        if (!h)
                return;
        /* Commands still in flight are over: mark them before nbd_close() so
         * that a callback it might run does nothing. */
        for (struct nop *op = m->nops; op; op = op->next)
                if (!op->done && op->c == c) {
                        op->done = true;
                        op->err = ECONNABORTED;
                        op->done_next = m->done_list;
                        m->done_list = op;
                }
        c->h = NULL;
        c->ready = false;
        vbd_nbd_watch_update(m->loop, &c->w, NULL); /* stop watching the fd before it is closed */
        nbd_close(h);
}

/* Drop the partner: close every handle, give up on their commands. */
void mirror_nbd_drop(struct mirror *m)
{
        for (unsigned i = m->nconn; i-- > 0;)
                conn_drop(m, &m->conn[i]);
        m->nconn = 0;
        mirror_nbd_process_done(m);
}

static void conn_disconnect(struct mirror *m, struct nconn *c)
{
        if (!c->h)
                return;
        c->dirty = true;
        /* NBD_CMD_DISC: the server sees a clean end; libnbd closes the socket
         * once it is sent, and nbd_io_cb() then drops the handle. */
        if (!c->ready || nbd_aio_disconnect(c->h, 0) < 0) {
                if (c->ready)
                        vbd_debug("migration to %s: disconnect: %s", m->to, nbd_get_error());
                conn_drop(m, c);
        } else if (nbd_aio_is_closed(c->h) || nbd_aio_is_dead(c->h)) {
                /* Sent and shut at once: no watcher would see it close. */
                conn_drop(m, c);
        }
}

void mirror_nbd_disconnect(struct mirror *m)
{
        for (unsigned i = m->nconn; i-- > 0;)
                conn_disconnect(m, &m->conn[i]);
        mirror_nbd_process_done(m);
}

/* ---- connecting ---- */

static void nbd_io_cb(struct ev_loop *loop, ev_io *w, int revents);

static int conn_open(struct mirror *m, struct nconn *c, struct vbd_err *err)
{
        c->m = m;
        c->ready = false;
        c->inflight = 0;
        c->dirty = true;
        c->nocork = false;
        c->start_ns = vbd_now_ns();
        vbd_nbd_watch_init(&c->w, nbd_io_cb, c);
        c->h = nbd_create();
        if (!c->h)
                return vbd_err_set(err, -ENOMEM, "libnbd: %s", nbd_get_error());
        /* the URI comes from the control socket (root's): a TLS partner's
         * tls-psk-file= or tls-certificates= names a local file */
        if (nbd_set_uri_allow_local_file(c->h, true) < 0) {
                int r = vbd_err_set(err, -EINVAL, "libnbd: %s", nbd_get_error());

                nbd_close(c->h);
                c->h = NULL;
                return r;
        }
        if (nbd_aio_connect_uri(c->h, m->to) < 0) {
                int e = nbd_get_errno();
                int r = vbd_err_set(err, e ? -e : -EINVAL, "cannot connect to %s: %s", m->to,
                                    nbd_get_error());

                nbd_close(c->h);
                c->h = NULL;
                return r;
        }
        return 0;
}

int mirror_nbd_connect(struct mirror *m, struct vbd_err *err)
{
        int r;

        m->nconn = 1;
        m->conn[0].idx = 0;
        r = conn_open(m, &m->conn[0], err);
        if (r < 0)
                m->nconn = 0;
        return r;
}

bool mirror_nbd_ready(struct mirror *m)
{
        return m->nconn && m->conn[0].h && nbd_aio_is_ready(m->conn[0].h);
}

/* The copier's connections: only to a partner that advertises multi-conn
 * (without it, the NBD spec says a client should not spread its commands
 * over several connections: a server may keep a cache per connection).  One
 * that fails to come up is dropped, and the copier does without it. */
static void open_copier_conns(struct mirror *m)
{
        unsigned want = m->p.connections ? m->p.connections : 1;

        if (!m->multi_conn || want <= 1)
                return;
        if (want > VBD_MIRROR_CONN_MAX)
                want = VBD_MIRROR_CONN_MAX;
        for (unsigned i = 1; i < want; i++) {
                struct vbd_err err = {0};
                struct nconn *c = &m->conn[i];

                c->idx = i;
                if (conn_open(m, c, &err) < 0) {
                        vbd_info("migration to %s: copier connection %u: %s", m->to, i, err.msg);
                        continue;
                }
                m->nconn = i + 1;
        }
}

/* A copier connection came up: the same export? */
static void copier_conn_connected(struct mirror *m, struct nconn *c)
{
        int64_t size = nbd_get_size(c->h);

        if (size < 0 || (uint64_t)size != m->partner_size || nbd_is_read_only(c->h) == 1 ||
            nbd_can_multi_conn(c->h) != 1 || (m->can_zero && nbd_can_zero(c->h) != 1)) {
                vbd_info("migration to %s: copier connection %u: not the same export, dropped",
                         m->to, c->idx);
                conn_drop(m, c);
                return;
        }
        c->ready = true;
        vbd_debug("migration to %s: copier connection %u up", m->to, c->idx);
}

void mirror_nbd_connected(struct mirror *m)
{
        struct nbd_handle *h = m->conn[0].h;
        int64_t size = nbd_get_size(h);
        int64_t maxb = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);

        if (size < 0) {
                mirror_fail(m, nbd_get_errno(), "partner: no size: %s", nbd_get_error());
                return;
        }
        m->partner_size = (uint64_t)size;
        if (nbd_is_read_only(h) == 1) {
                mirror_fail(m, EROFS, "partner: the export is read-only");
        } else if ((uint64_t)size < m->info.size) {
                mirror_fail(m, ENOSPC,
                            "partner: export of %" PRId64 " bytes, smaller than the %" PRIu64
                            " of this VBD",
                            size, m->info.size);
        } else if (nbd_can_flush(h) != 1) {
                mirror_fail(m, EOPNOTSUPP, "partner: the export cannot flush");
        } else if (maxb > 0 && (uint64_t)maxb < ((uint64_t)1 << m->rshift)) {
                mirror_fail(m, EINVAL,
                            "partner: requests of at most %" PRId64 " bytes, less than a region",
                            maxb);
        } else {
                m->conn[0].ready = true;
                m->can_zero = nbd_can_zero(h) == 1;
                m->can_fua = nbd_can_fua(h) == 1;
                m->multi_conn = nbd_can_multi_conn(h) == 1;
                m->state = VBD_MIRROR_COPYING;
                m->start_ns = vbd_now_ns();
                vbd_info("migration to %s: connected (%" PRId64 " bytes%s%s), copying %" PRIu64
                         " regions of %u KiB (%s)",
                         m->to, size, m->can_zero ? ", zeroes" : "",
                         m->multi_conn ? ", multi-conn" : "", m->nregions, (1u << m->rshift) >> 10,
                         m->p.precopy ? "precopy" : "pasm");
                open_copier_conns(m);
        }
}

static void nbd_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nconn *c = w->data;
        struct mirror *m = c->m;
        int r = 0;

        if (!c->h)
                return;
        c->dirty = true;
        if (revents & EV_READ)
                r = nbd_aio_notify_read(c->h);
        if (r >= 0 && (revents & EV_WRITE) && c->h)
                r = nbd_aio_notify_write(c->h);
        if (mirror_partner_done(m) && (r < 0 || nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))) {
                /* Cut over: the partner has it all, flushed.  It going away
                 * now (our disconnect answered, or it exited) is no failure. */
                if (c->idx == 0)
                        vbd_info("migration to %s: the partner's connection closed after the "
                                 "cut-over",
                                 m->to);
                conn_drop(m, c);
                mirror_nbd_process_done(m);
        } else if (c->idx > 0 && !c->ready &&
                   (r < 0 || nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h))) {
                /* A copier connection that never came up: do without it. */
                const char *e = nbd_get_error();

                vbd_info("migration to %s: copier connection %u: %s", m->to, c->idx,
                         e ? e : "closed");
                conn_drop(m, c);
        } else if (r < 0 || nbd_aio_is_dead(c->h) || nbd_aio_is_closed(c->h)) {
                const char *e = nbd_get_error();

                mirror_fail(m, nbd_get_errno() ? nbd_get_errno() : ECONNRESET, "partner: %s",
                            e ? e : "connection lost");
        } else if (c->idx == 0 && m->state == VBD_MIRROR_CONNECTING && nbd_aio_is_ready(c->h)) {
                mirror_nbd_connected(m);
        } else if (c->idx > 0 && !c->ready && nbd_aio_is_ready(c->h)) {
                copier_conn_connected(m, c);
        }
        mirror_progress(m);
}

/* ---- timeouts ---- */

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct mirror *m = w->data;
        uint64_t t = vbd_now_ns(), limit = (uint64_t)m->p.timeout * 1000000000u;

        m->tick_on = false;
        ev_ref(loop);
        if (m->state == VBD_MIRROR_CONNECTING && t - m->start_ns > limit)
                mirror_fail(m, ETIMEDOUT, "partner: no connection after %u s", m->p.timeout);
        else if (m->nops && t - m->nops->start_ns > limit)
                mirror_fail(m, ETIMEDOUT, "partner: no answer for %u s", m->p.timeout);
        for (unsigned i = 1; i < m->nconn; i++) {
                struct nconn *c = &m->conn[i];

                if (c->h && !c->ready && t - c->start_ns > limit) {
                        vbd_info("migration to %s: copier connection %u: not up after %u s, "
                                 "dropped",
                                 m->to, i, m->p.timeout);
                        conn_drop(m, c);
                }
        }
        mirror_copy_tick(m, t);
        if (mirror_running(m) && m->state != VBD_MIRROR_CUTOVER)
                mirror_timer_start(m, &m->tick_w, &m->tick_on, TICK_S);
        mirror_progress(m);
}

void mirror_nbd_init(struct mirror *m)
{
        for (unsigned i = 0; i < VBD_MIRROR_CONN_MAX; i++) {
                m->conn[i].m = m;
                m->conn[i].idx = i;
                vbd_nbd_watch_init(&m->conn[i].w, nbd_io_cb, &m->conn[i]);
        }
        ev_init(&m->tick_w, tick_cb);
        m->tick_w.data = m;
}
