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

#include <ev.h>
#include <libnbd.h>

#include "mirror.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

/* ---- libev watchers that do not keep the loop alive ---- */

void mirror_nbd_watch(struct mirror *m)
{
        vbd_nbd_watch_update(m->loop, &m->nbd_w, m->nbd);
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

static nbd_completion_callback nop_arm(struct mirror *m, struct nop *op,
                                       void (*complete)(struct nop *op))
{
        op->m = m;
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

void mirror_nbd_pwrite(struct mirror *m, struct nop *op, const void *buf, uint64_t len,
                       uint64_t off, void (*complete)(struct nop *op), const char *what)
{
        if (nbd_aio_pwrite(m->nbd, buf, len, off, nop_arm(m, op, complete), 0) < 0)
                nop_issue_failed(m, op, what);
}

void mirror_nbd_zero(struct mirror *m, struct nop *op, uint64_t len, uint64_t off,
                     void (*complete)(struct nop *op))
{
        if (nbd_aio_zero(m->nbd, len, off, nop_arm(m, op, complete), 0) < 0)
                nop_issue_failed(m, op, "a zero request");
}

void mirror_nbd_flush(struct mirror *m, struct nop *op, void (*complete)(struct nop *op),
                      const char *what)
{
        if (nbd_aio_flush(m->nbd, nop_arm(m, op, complete), 0) < 0)
                nop_issue_failed(m, op, what);
}

void mirror_nbd_process_done(struct mirror *m)
{
        while (m->done_list) {
                struct nop *op = m->done_list;

                m->done_list = op->done_next;
                nop_unlink(m, op);
                op->complete(op);
        }
}

/* Drop the partner: close the handle, give up on its commands. */
void mirror_nbd_drop(struct mirror *m)
{
        struct nbd_handle *h;
        struct nop *op;

        if (!m->nbd)
                return;
        /* Commands still in flight are over: mark them before nbd_close() so
         * that a callback it might run does nothing. */
        for (op = m->nops; op; op = op->next)
                if (!op->done) {
                        op->done = true;
                        op->err = ECONNABORTED;
                        op->done_next = m->done_list;
                        m->done_list = op;
                }
        h = m->nbd;
        m->nbd = NULL;
        mirror_nbd_watch(m); /* stop watching the fd before it is closed */
        nbd_close(h);
        mirror_nbd_process_done(m);
}

void mirror_nbd_disconnect(struct mirror *m)
{
        if (!m->nbd)
                return;
        /* NBD_CMD_DISC: the server sees a clean end; libnbd closes the socket
         * once it is sent, and nbd_io_cb() then drops the handle. */
        if (nbd_aio_disconnect(m->nbd, 0) < 0) {
                vbd_debug("migration to %s: disconnect: %s", m->to, nbd_get_error());
                mirror_nbd_drop(m);
        } else if (nbd_aio_is_closed(m->nbd) || nbd_aio_is_dead(m->nbd)) {
                /* Sent and shut at once: no watcher would see it close. */
                mirror_nbd_drop(m);
        }
}

/* ---- connecting ---- */

int mirror_nbd_open(struct mirror *m, struct vbd_err *err)
{
        m->nbd = nbd_create();
        if (!m->nbd)
                return vbd_err_set(err, -ENOMEM, "libnbd: %s", nbd_get_error());
        /* the URI comes from the control socket (root's): a TLS partner's
         * tls-psk-file= or tls-certificates= names a local file */
        if (nbd_set_uri_allow_local_file(m->nbd, true) < 0) {
                int r = vbd_err_set(err, -EINVAL, "libnbd: %s", nbd_get_error());

                nbd_close(m->nbd);
                m->nbd = NULL;
                return r;
        }
        return 0;
}

int mirror_nbd_connect(struct mirror *m, struct vbd_err *err)
{
        if (nbd_aio_connect_uri(m->nbd, m->to) < 0) {
                int e = nbd_get_errno();
                int r = vbd_err_set(err, e ? -e : -EINVAL, "cannot connect to %s: %s", m->to,
                                    nbd_get_error());

                nbd_close(m->nbd);
                m->nbd = NULL;
                return r;
        }
        return 0;
}

bool mirror_nbd_ready(struct mirror *m)
{
        return m->nbd && nbd_aio_is_ready(m->nbd);
}

void mirror_nbd_connected(struct mirror *m)
{
        int64_t size = nbd_get_size(m->nbd);
        int64_t maxb = nbd_get_block_size(m->nbd, LIBNBD_SIZE_MAXIMUM);

        if (size < 0) {
                mirror_fail(m, nbd_get_errno(), "partner: no size: %s", nbd_get_error());
                return;
        }
        m->partner_size = (uint64_t)size;
        if (nbd_is_read_only(m->nbd) == 1) {
                mirror_fail(m, EROFS, "partner: the export is read-only");
        } else if ((uint64_t)size < m->info.size) {
                mirror_fail(m, ENOSPC,
                            "partner: export of %" PRId64 " bytes, smaller than the %" PRIu64
                            " of this VBD",
                            size, m->info.size);
        } else if (nbd_can_flush(m->nbd) != 1) {
                mirror_fail(m, EOPNOTSUPP, "partner: the export cannot flush");
        } else if (maxb > 0 && (uint64_t)maxb < ((uint64_t)1 << m->rshift)) {
                mirror_fail(m, EINVAL,
                            "partner: requests of at most %" PRId64 " bytes, less than a region",
                            maxb);
        } else {
                m->can_zero = nbd_can_zero(m->nbd) == 1;
                m->can_fua = nbd_can_fua(m->nbd) == 1;
                m->state = VBD_MIRROR_COPYING;
                m->start_ns = vbd_now_ns();
                vbd_info("migration to %s: connected (%" PRId64 " bytes%s), copying %" PRIu64
                         " regions of %u KiB (%s)",
                         m->to, size, m->can_zero ? ", zeroes" : "", m->nregions,
                         (1u << m->rshift) >> 10, m->p.precopy ? "precopy" : "pasm");
        }
}

static void nbd_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct mirror *m = w->data;
        int r = 0;

        if (!m->nbd)
                return;
        if (revents & EV_READ)
                r = nbd_aio_notify_read(m->nbd);
        if (r >= 0 && (revents & EV_WRITE) && m->nbd)
                r = nbd_aio_notify_write(m->nbd);
        if (mirror_partner_done(m) &&
            (r < 0 || nbd_aio_is_dead(m->nbd) || nbd_aio_is_closed(m->nbd))) {
                /* Cut over: the partner has it all, flushed.  It going away
                 * now (our disconnect answered, or it exited) is no failure. */
                vbd_info("migration to %s: the partner's connection closed after the cut-over",
                         m->to);
                mirror_nbd_drop(m);
        } else if (r < 0 || nbd_aio_is_dead(m->nbd) || nbd_aio_is_closed(m->nbd)) {
                const char *e = nbd_get_error();

                mirror_fail(m, nbd_get_errno() ? nbd_get_errno() : ECONNRESET, "partner: %s",
                            e ? e : "connection lost");
        } else if (m->state == VBD_MIRROR_CONNECTING && nbd_aio_is_ready(m->nbd)) {
                mirror_nbd_connected(m);
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
        mirror_copy_tick(m, t);
        if (mirror_running(m) && m->state != VBD_MIRROR_CUTOVER)
                mirror_timer_start(m, &m->tick_w, &m->tick_on, TICK_S);
        mirror_progress(m);
}

void mirror_nbd_init(struct mirror *m)
{
        vbd_nbd_watch_init(&m->nbd_w, nbd_io_cb, m);
        ev_init(&m->tick_w, tick_cb);
        m->tick_w.data = m;
}
