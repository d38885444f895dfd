/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * mirror: the filter and its guest path.  Reads go to the child; writes go
 * to the child and, over synced regions, are forwarded to the partner;
 * writes wait on overlapping ones and on regions being copied; the region
 * map.  See mirror.h for the model, mirror-copy.c for the copier.
 */
#define VBD_LOG_TOPIC "drv.mirror"
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "mirror.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

/* ---- region map ---- */

void mirror_set_region(struct mirror *m, uint64_t r, int st)
{
        int old = m->rmap[r] & R_STATE;

        if (old == st)
                return;
        if (old == R_UNSENT)
                m->nunsent--;
        else if (old == R_INFLIGHT)
                m->ninflight--;
        else
                m->nsynced--;
        if (st == R_UNSENT)
                m->nunsent++;
        else if (st == R_INFLIGHT)
                m->ninflight++;
        else
                m->nsynced++;
        m->rmap[r] = (uint8_t)st;
}

/* Written locally: the partner's copy of these regions is stale now. */
static void make_unsent(struct mirror *m, uint64_t off, uint64_t len)
{
        uint64_t r0 = off >> m->rshift, r1 = (off + len - 1) >> m->rshift;

        for (uint64_t r = r0; r <= r1; r++) {
                int st = m->rmap[r] & R_STATE;

                if (st == R_SYNCED) {
                        mirror_set_region(m, r, R_UNSENT);
                        m->dirty_bytes += mirror_region_len(m, r);
                } else if (st == R_INFLIGHT) {
                        m->rmap[r] |= R_REDO;
                }
        }
        if (m->state == VBD_MIRROR_READY && !m->p.precopy && m->nunsent)
                m->state = VBD_MIRROR_COPYING;
}

/* Regions are computed from bytes at each use: a write may outlive the
 * migration (and region size) it started under. */
static bool any_region(const struct mirror *m, uint64_t off, uint64_t len, int st)
{
        uint64_t r0 = off >> m->rshift, r1 = (off + len - 1) >> m->rshift;

        for (uint64_t r = r0; r <= r1; r++)
                if ((m->rmap[r] & R_STATE) == st)
                        return true;
        return false;
}

static bool is_write_type(enum vbd_op op)
{
        return op == VBD_OP_WRITE || op == VBD_OP_DISCARD || op == VBD_OP_WRITE_ZEROES;
}

/* ---- guest I/O ---- */

static void guest_done(struct mio *mi)
{
        struct mirror *m = mi->m;
        struct vbd_io *gio = mi->gio;

        if (mi->active) {
                if (mi->prev)
                        mi->prev->next = mi->next;
                else
                        m->active = mi->next;
                if (mi->next)
                        mi->next->prev = mi->prev;
                mi->active = false;
        }
        m->guest_inflight--;
        m->last_guest_ns = vbd_now_ns();
        vbd_io_complete(gio, mi->local_status);
        m->again = true;
}

static void half_done(struct mio *mi)
{
        if (--mi->pending == 0)
                guest_done(mi);
}

static void local_done(struct vbd_io *cio, int status)
{
        struct mio *mi = cio->opaque;
        struct mirror *m = mi->m;

        mi->local_status = status;
        if (mirror_running(m) && m->rmap && is_write_type(mi->gio->op) &&
            (m->p.precopy || mi->mark_unsent || status < 0))
                make_unsent(m, mi->gio->offset, mi->gio->len);
        half_done(mi);
        mirror_progress(m);
}

/*
 * Forwarded writes.  The guest's write completes when the local write does;
 * the forward carries its own copy of the data and stays outstanding until
 * the partner answers.  At most FWD_WINDOW_BYTES / FWD_WINDOW_COUNT are
 * outstanding (more writes to synced regions wait: backpressure).  They are
 * kept in arrival order; one that overlaps an earlier outstanding forward is
 * sent only once that one is answered, so the partner applies overlapping
 * writes in the guest's order.
 *
 * Forwards are not sent as they come: they are queued, and mirror_fwd_pump()
 * sends them at the end of the loop pass (pump_w, an ev_prepare), so that a
 * guest write that continues the last queued one is coalesced into it (one
 * NBD write), and at most FWD_SEND_MAX are in libnbd at once (it walks its
 * list of commands in flight for each reply).  A coalesced forward keeps
 * the first write's place (its seq): a later write overlapping either part
 * waits for it, and a flush that came between them waits for both, which is
 * more than it needs.
 */
static void flush_nbd_done(struct nop *op);

static void fq_unlink(struct mirror *m, struct fwd *f)
{
        if (f->qprev)
                f->qprev->qnext = f->qnext;
        else
                m->fq_head = f->qnext;
        if (f->qnext)
                f->qnext->qprev = f->qprev;
        else
                m->fq_tail = f->qprev;
        f->qprev = f->qnext = NULL;
        m->fqueued--;
}

static void fwd_free(struct mirror *m, struct fwd *f)
{
        if (f->prev)
                f->prev->next = f->next;
        else
                m->fwd_head = f->next;
        if (f->next)
                f->next->prev = f->prev;
        else
                m->fwd_tail = f->prev;
        if (f->bprev)
                f->bprev->bnext = f->bnext;
        else
                m->fbucket[f->off >> m->rshift] = f->bnext;
        if (f->bnext)
                f->bnext->bprev = f->bprev;
        if (!f->sent)
                fq_unlink(m, f);
        m->nfwd--;
        m->fwd_bytes -= f->len;
        free(f);
        m->again = true;
}

/* Looks only at the buckets that can hold one. */
struct fwd *mirror_fwd_overlap(const struct mirror *m, uint64_t off, uint64_t len, uint64_t seq)
{
        uint64_t r0 = off >> m->rshift, r1 = (off + len - 1) >> m->rshift;
        uint64_t b = r0 > m->fwd_span ? r0 - m->fwd_span : 0;

        for (; b <= r1; b++)
                for (struct fwd *e = m->fbucket[b]; e; e = e->bnext)
                        if (e->seq < seq && mirror_overlaps(off, len, e->off, e->len))
                                return e;
        return NULL;
}

/* The NBD flushes waiting for forwards that came before them. */
static void flush_send_ready(struct mirror *m)
{
        while (m->flush_head && mirror_linked(m) &&
               (!m->fwd_head || m->fwd_head->seq >= m->flush_head->flush_seq)) {
                struct mio *mi = m->flush_head;

                m->flush_head = mi->wnext;
                if (!m->flush_head)
                        m->flush_tail = &m->flush_head;
                mi->wnext = NULL;
                mirror_nbd_flush(m, &mi->nop, flush_nbd_done, "a flush");
        }
}

void mirror_fwd_want_pump(struct mirror *m)
{
        if (m->pump_on || !m->loop)
                return;
        ev_prepare_start(m->loop, &m->pump_w);
        ev_unref(m->loop); /* the guest's ios keep the loop alive, not this */
        m->pump_on = true;
}

static void pump_stop(struct mirror *m)
{
        if (!m->pump_on)
                return;
        ev_ref(m->loop);
        ev_prepare_stop(m->loop, &m->pump_w);
        m->pump_on = false;
}

static void fwd_done(struct nop *op)
{
        struct fwd *f = vbd_container_of(op, struct fwd, nop);
        struct mirror *m = f->m;

        if (op->err) {
                if (op->err != ECONNABORTED)
                        mirror_fail(m, op->err,
                                    "partner: write of %" PRIu64 " bytes at %" PRIu64 " failed: %s",
                                    f->len, f->off, strerror(op->err));
        } else {
                m->writes_forwarded += f->nwrites;
                m->forward_requests++;
                m->bytes_forwarded += f->len;
                m->bg_bytes += f->len;
        }
        fwd_free(m, f);
        if (mirror_linked(m)) {
                if (m->fqueued)
                        mirror_fwd_want_pump(m);
                flush_send_ready(m);
        }
}

static void fwd_send(struct mirror *m, struct fwd *f)
{
        fq_unlink(m, f);
        f->sent = true;
        mirror_nbd_pwrite(&m->conn[0], &f->nop, f->data, f->len, f->off, fwd_done, "a write");
}

/* More than one forward in a pass goes out corked (TCP): one segment for
 * the lot rather than one per write (libnbd pushes each command). */
void mirror_fwd_pump(struct mirror *m)
{
        struct fwd *f = m->fq_head, *next;
        unsigned sent = 0;
        bool corked = false;

        for (; f && mirror_linked(m) && m->conn[0].inflight < FWD_SEND_MAX; f = next) {
                next = f->qnext;
                if (mirror_fwd_overlap(m, f->off, f->len, f->seq))
                        continue;
                if (sent++ == 1)
                        corked = mirror_nbd_cork(&m->conn[0], true);
                fwd_send(m, f);
        }
        if (corked && m->conn[0].h)
                mirror_nbd_cork(&m->conn[0], false);
}

/* Before the loop blocks.  A prepare watcher started from here would only
 * run after the next wake-up, so go round while the pass queued more. */
static void pump_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct mirror *m = w->data;

        for (unsigned round = 0; m->pump_on && round < 64; round++) {
                pump_stop(m);
                if (!m->fqueued || !mirror_linked(m))
                        break;
                mirror_fwd_pump(m);
                /* failed sends, writes that may start now; what is left
                 * queued waits for replies (fwd_done() wants the pump) */
                mirror_progress(m);
        }
}

/* Put f in place of old (unsent, queued) in every list. */
static void fwd_replace(struct mirror *m, struct fwd *old, struct fwd *f)
{
        f->prev = old->prev;
        f->next = old->next;
        if (f->prev)
                f->prev->next = f;
        else
                m->fwd_head = f;
        if (f->next)
                f->next->prev = f;
        else
                m->fwd_tail = f;
        f->qprev = old->qprev;
        f->qnext = old->qnext;
        if (f->qprev)
                f->qprev->qnext = f;
        else
                m->fq_head = f;
        if (f->qnext)
                f->qnext->qprev = f;
        else
                m->fq_tail = f;
        f->bprev = old->bprev;
        f->bnext = old->bnext;
        if (f->bprev)
                f->bprev->bnext = f;
        else
                m->fbucket[f->off >> m->rshift] = f;
        if (f->bnext)
                f->bnext->bprev = f;
}

static void copy_iov(uint8_t *dst, const struct vbd_io *g)
{
        size_t done = 0;

        for (unsigned i = 0; i < g->iovcnt; i++) {
                memcpy(dst + done, g->iov[i].iov_base, g->iov[i].iov_len);
                done += g->iov[i].iov_len;
        }
}

/* g continues the newest outstanding forward, not sent yet: append it (one
 * NBD write, at most a region long).  False if it cannot. */
static bool fwd_coalesce(struct mirror *m, const struct vbd_io *g)
{
        struct fwd *t = m->fwd_tail, *f;

        if (!t || t->sent || t->off + t->len != g->offset ||
            t->len + g->len > ((uint64_t)1 << m->rshift))
                return false;
        f = malloc(sizeof(*f) + t->len + g->len);
        if (!f)
                return false;
        memcpy(f, t, sizeof(*f) + t->len);
        copy_iov(f->data + t->len, g);
        f->len += g->len;
        f->nwrites++;
        fwd_replace(m, t, f);
        free(t);
        m->fwd_bytes += g->len;
        if (((f->off + f->len - 1) >> m->rshift) - (f->off >> m->rshift) > m->fwd_span)
                m->fwd_span = ((f->off + f->len - 1) >> m->rshift) - (f->off >> m->rshift);
        return true;
}

static void fwd_new(struct mirror *m, const struct vbd_io *g)
{
        struct fwd *f;
        uint64_t r0, r1;

        if (fwd_coalesce(m, g))
                return;
        f = malloc(sizeof(*f) + g->len);
        if (!f) {
                mirror_fail(m, ENOMEM, "out of memory for a forwarded write");
                return;
        }
        *f = (struct fwd){
            .m = m, .seq = m->fwd_seq++, .off = g->offset, .len = g->len, .nwrites = 1};
        copy_iov(f->data, g);
        f->prev = m->fwd_tail;
        if (m->fwd_tail)
                m->fwd_tail->next = f;
        else
                m->fwd_head = f;
        m->fwd_tail = f;
        f->qprev = m->fq_tail;
        if (m->fq_tail)
                m->fq_tail->qnext = f;
        else
                m->fq_head = f;
        m->fq_tail = f;
        m->nfwd++;
        m->fqueued++;
        m->fwd_bytes += f->len;
        r0 = f->off >> m->rshift;
        r1 = (f->off + f->len - 1) >> m->rshift;
        if (r1 - r0 > m->fwd_span)
                m->fwd_span = r1 - r0;
        f->bnext = m->fbucket[r0];
        if (f->bnext)
                f->bnext->bprev = f;
        m->fbucket[r0] = f;
        mirror_fwd_want_pump(m); /* sent at the end of this loop pass */
}

void mirror_guest_partner_gone(struct mirror *m)
{
        /* Forwards never sent, flushes never sent: over too. */
        pump_stop(m);
        while (m->fwd_head)
                fwd_free(m, m->fwd_head);
        while (m->flush_head) {
                struct mio *mi = m->flush_head;

                m->flush_head = mi->wnext;
                mi->wnext = NULL;
                m->nflush--;
                half_done(mi);
        }
        m->flush_tail = &m->flush_head;
}

/* Would this write be forwarded? */
static bool forwards(const struct mirror *m, const struct mio *mi)
{
        return mirror_running(m) && m->rmap && !m->p.precopy && mi->gio->op == VBD_OP_WRITE &&
               mirror_linked(m) && any_region(m, mi->gio->offset, mi->gio->len, R_SYNCED);
}

static void flush_nbd_done(struct nop *op)
{
        struct mio *mi = vbd_container_of(op, struct mio, nop);
        struct mirror *m = mi->m;

        m->nflush--;
        if (op->err && op->err != ECONNABORTED)
                mirror_fail(m, op->err, "partner: flush failed: %s", strerror(op->err));
        half_done(mi);
}

static void submit_local(struct mirror *m, struct mio *mi)
{
        struct vbd_io *gio = mi->gio;

        mi->cio = (struct vbd_io){
            .op = gio->op,
            .flags = gio->flags,
            .offset = gio->offset,
            .len = gio->len,
            .iov = gio->iov,
            .iovcnt = gio->iovcnt,
            .done = local_done,
            .opaque = mi,
            .scratch = vbd_image_child_scratch(m->self, gio->scratch),
        };
        vbd_image_submit(vbd_image_child(m->self), &mi->cio);
}

/* Must this write-type io wait?  (Overlaps a write being applied or an
 * earlier waiting one, touches a region being copied, or would be forwarded
 * with the window full.) */
static bool must_wait(struct mirror *m, struct mio *mi, struct mio *stop)
{
        const struct vbd_io *g = mi->gio;

        /* Without a migration nothing waits (and nothing is scanned). */
        if (!mirror_running(m) || !m->rmap)
                return false;
        for (struct mio *a = m->active; a; a = a->next)
                if (mirror_overlaps(g->offset, g->len, a->gio->offset, a->gio->len))
                        return true;
        for (struct mio *w = m->wait_head; w && w != stop; w = w->wnext)
                if (mirror_overlaps(g->offset, g->len, w->gio->offset, w->gio->len))
                        return true;
        if (!m->p.precopy && any_region(m, mi->gio->offset, mi->gio->len, R_INFLIGHT))
                return true;
        return forwards(m, mi) &&
               (m->nfwd >= FWD_WINDOW_COUNT || m->fwd_bytes + g->len > FWD_WINDOW_BYTES);
}

static void start_write(struct mirror *m, struct mio *mi)
{
        struct vbd_io *g = mi->gio;

        mi->active = true;
        mi->prev = NULL;
        mi->next = m->active;
        if (m->active)
                m->active->prev = mi;
        m->active = mi;
        mi->pending = 1;
        if (forwards(m, mi))
                fwd_new(m, g);
        else if (mirror_running(m) && m->rmap && !m->p.precopy &&
                 any_region(m, mi->gio->offset, mi->gio->len, R_SYNCED))
                /* Discard or write-zeroes on synced regions: send those
                 * regions again, from the local image, once done. */
                mi->mark_unsent = true;
        submit_local(m, mi);
}

void mirror_release_waiters(struct mirror *m)
{
        struct mio **pp = &m->wait_head, *mi;

        while ((mi = *pp)) {
                if (must_wait(m, mi, mi)) {
                        pp = &mi->wnext;
                        continue;
                }
                *pp = mi->wnext;
                if (!*pp)
                        m->wait_tail = pp;
                mi->wnext = NULL;
                start_write(m, mi);
                /* The lists changed: start over from the head. */
                pp = &m->wait_head;
        }
}

static void mirror_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct mirror *m = vbd_image_state(img);
        struct mio *mi = io->scratch;

        memset(mi, 0, offsetof(struct mio, cio));
        mi->m = m;
        mi->gio = io;
        m->guest_inflight++;
        m->last_guest_ns = vbd_now_ns();
        if (io->op == VBD_OP_READ) {
                mi->pending = 1;
                submit_local(m, mi);
                return;
        }
        if (io->op == VBD_OP_FLUSH) {
                /* Local flush now; the NBD flush once the forwards before it
                 * are answered (NBD flushes only what has completed). */
                mi->pending = 1;
                if (mirror_linked(m)) {
                        mi->pending++;
                        mi->flush_seq = m->fwd_seq;
                        *m->flush_tail = mi;
                        m->flush_tail = &mi->wnext;
                        m->nflush++;
                        flush_send_ready(m);
                }
                submit_local(m, mi);
                mirror_progress(m);
                return;
        }
        if (must_wait(m, mi, NULL)) {
                m->writes_waited++;
                *m->wait_tail = mi;
                m->wait_tail = &mi->wnext;
                return;
        }
        start_write(m, mi);
        mirror_progress(m);
}

/* ---- the filter ---- */

static int mirror_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct mirror *m = vbd_image_state(img);
        struct vbd_image *child = vbd_image_child(img);

        if (!child)
                return vbd_err_set(err, -EINVAL, "mirror: a filter, over an image: mirror:SPEC");
        m->self = img;
        m->loop = vbd_image_loop(img);
        m->info = *vbd_image_info(child);
        m->wait_tail = &m->wait_head;
        m->flush_tail = &m->flush_head;
        ev_prepare_init(&m->pump_w, pump_cb);
        m->pump_w.data = m;
        m->downtime_ms = -1;
        m->cut_flush = -1;
        m->cut_scratch = calloc(1, vbd_image_io_scratch_size(child) + 1);
        if (!m->cut_scratch)
                return vbd_err_set(err, -ENOMEM, "mirror: out of memory");
        mirror_nbd_init(m);
        mirror_copy_init(m);
        return 0;
}

static int mirror_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        struct mirror *m = vbd_image_state(img);

        *ret = m->info;
        return 0;
}

static int mirror_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                               struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        return vbd_image_block_status(vbd_image_child(img), offset, len, ret, max, ret_n);
}

/* No guest I/O is in flight: end the migration, drop the partner, and report
 * drained now, or from the loop once the copier's reads have landed. */
static void mirror_drain(struct vbd_image *img)
{
        struct mirror *m = vbd_image_state(img);

        if (m->draining) { /* again: the migration is over already */
                if (m->drained && !ev_is_active(&m->drain_w))
                        vbd_image_drained(img);
                return;
        }
        m->draining = true;
        if (mirror_running(m))
                mirror_finish(m, VBD_MIRROR_ABORTED, ECANCELED, "closed");
        mirror_timer_stop(m, &m->tick_w, &m->tick_on);
        mirror_timer_stop(m, &m->pace_w, &m->pace_on);
        mirror_nbd_drop(m);
        mirror_guest_partner_gone(m);
        m->in_drain = true;
        mirror_progress(m);
        m->in_drain = false;
        if (m->drained)
                vbd_image_drained(img); /* the last use of m: the core may close it */
}

/* Drained: nothing of ours is in flight. */
static void mirror_close(struct vbd_image *img)
{
        struct mirror *m = vbd_image_state(img);

        mirror_timer_stop(m, &m->tick_w, &m->tick_on);
        mirror_timer_stop(m, &m->pace_w, &m->pace_on);
        pump_stop(m);
        if (m->loop)
                ev_timer_stop(m->loop, &m->drain_w);
        mirror_nbd_drop(m);
        mirror_copy_reset(m);
        free(m->cut_scratch);
        m->cut_scratch = NULL;
}

static const struct vbd_job_type *const vbd_mirror_jobs[] = {&vbd_job_migrate, NULL};

const struct vbd_driver vbd_driver_mirror = {
    .abi = VBD_DRIVER_ABI,
    .flags = VBD_DRIVER_FILTER,
    .name = "mirror",
    .description = "live migration to an NBD partner (the migrate job)",
    .usage = "mirror:CHILDSPEC (no options; migrations are the migrate job)",
    .state_size = sizeof(struct mirror),
    .io_scratch_size = sizeof(struct mio),
    .open = mirror_open,
    .get_info = mirror_get_info,
    .submit = mirror_submit,
    .block_status = mirror_block_status,
    .drain = mirror_drain,
    .close = mirror_close,
    .jobs = vbd_mirror_jobs,
};
