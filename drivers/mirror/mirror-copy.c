/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * mirror: the migration engine.  The copier (regions read from the child and
 * written to the partner, paced by share and rate), precopy passes, the
 * cut-over, failure and abort, the status figures, and progress(), which
 * runs everything that became due.  See mirror.h.
 */
#define VBD_LOG_TOPIC "drv.mirror"
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mirror.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

const char *vbd_mirror_state_name(enum vbd_mirror_state s)
{
        static const char *const names[] = {
            [VBD_MIRROR_NONE] = "none",       [VBD_MIRROR_CONNECTING] = "connecting",
            [VBD_MIRROR_COPYING] = "copying", [VBD_MIRROR_READY] = "ready",
            [VBD_MIRROR_CUTTING] = "cutting", [VBD_MIRROR_CUTOVER] = "cutover",
            [VBD_MIRROR_FAILED] = "failed",   [VBD_MIRROR_ABORTED] = "aborted",
        };

        return (unsigned)s < VBD_ARRAY_SIZE(names) ? names[s] : "unknown";
}

/* ---- failure ---- */

void mirror_finish(struct mirror *m, enum vbd_mirror_state st, int err, const char *msg)
{
        if (!mirror_running(m))
                return;
        m->state = st;
        m->end_ns = vbd_now_ns();
        snprintf(m->error, sizeof(m->error), "%s", msg);
        if (st == VBD_MIRROR_FAILED)
                vbd_err("migration to %s failed: %s", m->to, msg);
        else
                vbd_info("migration to %s aborted", m->to);
        mirror_timer_stop(m, &m->tick_w, &m->tick_on);
        mirror_timer_stop(m, &m->pace_w, &m->pace_on);
        mirror_nbd_drop(m);
        mirror_guest_partner_gone(m);
        if (m->cut_done) {
                void (*done)(void *, int) = m->cut_done;

                m->cut_done = NULL;
                done(m->cut_opaque, err ? -err : -ECANCELED);
        }
}

void mirror_fail(struct mirror *m, int err, const char *fmt, ...)
{
        va_list ap;

        if (!mirror_running(m) || m->fail_pending)
                return;
        if (mirror_partner_done(m)) {
                /* What the partner says now (its connection closing, a late
                 * background flush) cannot undo a complete, flushed copy. */
                va_start(ap, fmt);
                vsnprintf(m->fail_msg, sizeof(m->fail_msg), fmt, ap);
                va_end(ap);
                vbd_info("migration to %s: after the final flush: %s", m->to, m->fail_msg);
                return;
        }
        m->fail_pending = true;
        m->fail_err = err ? err : EIO;
        va_start(ap, fmt);
        vsnprintf(m->fail_msg, sizeof(m->fail_msg), fmt, ap);
        va_end(ap);
}

/* ---- the copier ---- */

static void pace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct mirror *m = w->data;

        m->pace_on = false;
        ev_ref(loop);
        mirror_progress(m);
}

static void slot_free(struct mirror *m, struct slot *s)
{
        s->state = SLOT_FREE;
        m->slots_busy--;
        m->again = true;
}

static void copy_sent(struct nop *op)
{
        struct slot *s = vbd_container_of(op, struct slot, nop);
        struct mirror *m = s->m;
        uint64_t t = vbd_now_ns(), took = t - s->start_ns;

        if (op->err) {
                if (op->err != ECONNABORTED)
                        mirror_fail(m, op->err,
                                    "partner: write of region at %" PRIu64 " failed: %s", s->off,
                                    strerror(op->err));
                if (m->rmap)
                        mirror_set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
                return;
        }
        m->bg_bytes += s->len;
        if (m->rmap[s->region] & R_REDO)
                mirror_set_region(m, s->region, R_UNSENT);
        else
                mirror_set_region(m, s->region, R_SYNCED);
        /* Pacing: while the guest is busy, copy at most share% of the time. */
        if (m->state != VBD_MIRROR_CUTTING && m->p.share < 100 &&
            (m->guest_inflight || t - m->last_guest_ns < GUEST_IDLE_NS)) {
                uint64_t wait = took * (100 - m->p.share) / m->p.share;

                if (m->next_copy_ns < t + wait)
                        m->next_copy_ns = t + wait;
        }
        slot_free(m, s);
}

static void copy_read(struct vbd_io *cio, int status)
{
        struct slot *s = cio->opaque;
        struct mirror *m = s->m;

        if (s->gen != m->gen) {
                /* A read of a migration that has ended, landing now: its
                 * buffer may be the wrong size for this one. */
                free(s->buf);
                s->buf = NULL;
                slot_free(m, s);
                mirror_progress(m);
                return;
        }
        if (status < 0) {
                mirror_fail(m, -status, "local read of region at %" PRIu64 " failed: %s", s->off,
                            strerror(-status));
                if (m->rmap)
                        mirror_set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
        } else if (!mirror_linked(m) || m->fail_pending) {
                mirror_set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
        } else {
                s->state = SLOT_SENDING;
                m->bytes_copied += s->len;
                mirror_nbd_pwrite(mirror_nbd_copy_conn(m), &s->nop, s->buf, s->len, s->off,
                                  copy_sent, "a region");
        }
        mirror_progress(m);
}

/* Does the local image read [off, off+len) as zeroes? */
static bool reads_zero(struct mirror *m, uint64_t off, uint64_t len)
{
        struct vbd_image *child = vbd_image_child(m->self);

        while (len) {
                struct vbd_extent e[16];
                unsigned n = 0;

                if (vbd_image_block_status(child, off, len, e, 16, &n) < 0)
                        return false;
                for (unsigned i = 0; i < n && len; i++) {
                        uint64_t l = e[i].len < len ? e[i].len : len;

                        if (!(e[i].flags & VBD_EXTENT_ZERO))
                                return false;
                        off += l;
                        len -= l;
                }
        }
        return true;
}

/* Shallow: does [off, off+len) read only from below the top image (a
 * backing file's data, or nothing allocated anywhere)?  The partner's own
 * backing chain, the same, then has it. */
static bool from_backing(struct mirror *m, uint64_t off, uint64_t len)
{
        struct vbd_image *child = vbd_image_child(m->self);

        while (len) {
                struct vbd_extent e[16];
                unsigned n = 0;

                if (vbd_image_block_status(child, off, len, e, 16, &n) < 0 || !n)
                        return false;
                for (unsigned i = 0; i < n && len; i++) {
                        uint64_t l = e[i].len < len ? e[i].len : len;

                        if (e[i].depth == 0)
                                return false;
                        off += l;
                        len -= l;
                }
        }
        return true;
}

/* The next unsent region no applied write touches, from the cursor on. */
static bool pick_region(struct mirror *m, uint64_t *ret)
{
        for (uint64_t i = 0; i < m->nregions && m->nunsent; i++) {
                uint64_t r = m->cursor;
                bool busy = false;

                if (++m->cursor == m->nregions) {
                        m->cursor = 0;
                        if (m->picked)
                                m->passes++; /* a pass that copied something */
                        m->picked = false;
                }
                if ((m->rmap[r] & R_STATE) != R_UNSENT)
                        continue;
                for (struct mio *a = m->active; a && !busy; a = a->next)
                        busy = mirror_overlaps(a->gio->offset, a->gio->len, mirror_region_off(m, r),
                                               mirror_region_len(m, r));
                /* A forward still outstanding there (the region was synced,
                 * then discarded): the copy must not race it. */
                if (!busy && m->nfwd)
                        busy = mirror_fwd_overlap(m, mirror_region_off(m, r),
                                                  mirror_region_len(m, r), UINT64_MAX);
                if (!busy) {
                        *ret = r;
                        m->picked = true;
                        return true;
                }
        }
        return false;
}

static void copy_start(struct mirror *m, struct slot *s, uint64_t r)
{
        uint32_t align = m->info.mem_align > 4096 ? m->info.mem_align : 4096;

        if (!s->buf) {
                if (posix_memalign(&s->buf, align, ((size_t)1 << m->rshift) + m->cscratch)) {
                        s->buf = NULL;
                        mirror_fail(m, ENOMEM, "out of memory for the copier");
                        return;
                }
                s->cscratch = m->cscratch ? (char *)s->buf + ((size_t)1 << m->rshift) : NULL;
        }
        s->m = m;
        s->gen = m->gen;
        s->region = r;
        s->off = mirror_region_off(m, r);
        s->len = mirror_region_len(m, r);
        s->start_ns = vbd_now_ns();
        m->slots_busy++;
        mirror_set_region(m, r, R_INFLIGHT);
        if (m->p.rate) {
                uint64_t t = s->start_ns;

                if (m->rate_next_ns < t)
                        m->rate_next_ns = t;
                m->rate_next_ns += s->len * 1000000000u / m->p.rate;
        }
        if (m->p.shallow && from_backing(m, s->off, s->len)) {
                m->bytes_shallow += s->len;
                s->state = SLOT_SENDING;
                mirror_set_region(m, r, R_SYNCED);
                slot_free(m, s);
                return;
        }
        if (reads_zero(m, s->off, s->len) && (m->p.zeroed || m->can_zero)) {
                m->bytes_zeroed += s->len;
                if (m->p.zeroed) {
                        s->state = SLOT_SENDING;
                        mirror_set_region(m, r, R_SYNCED);
                        slot_free(m, s);
                        return;
                }
                s->state = SLOT_SENDING;
                mirror_nbd_zero(mirror_nbd_copy_conn(m), &s->nop, s->len, s->off, copy_sent);
                return;
        }
        s->state = SLOT_READING;
        s->iov = (struct iovec){.iov_base = s->buf, .iov_len = s->len};
        s->cio = (struct vbd_io){
            .op = VBD_OP_READ,
            .offset = s->off,
            .len = s->len,
            .iov = &s->iov,
            .iovcnt = 1,
            .done = copy_read,
            .opaque = s,
            .scratch = s->cscratch,
        };
        vbd_image_submit(vbd_image_child(m->self), &s->cio);
}

static void copier(struct mirror *m)
{
        uint64_t t = vbd_now_ns(), at;
        unsigned window;
        bool cutting = m->state == VBD_MIRROR_CUTTING;

        if (!mirror_linked(m) || m->fail_pending || m->state == VBD_MIRROR_CUTOVER)
                return;
        if (cutting || (!m->guest_inflight && t - m->last_guest_ns >= GUEST_IDLE_NS))
                window = m->p.depth;
        else
                window = 1;
        at = m->next_copy_ns > m->rate_next_ns ? m->next_copy_ns : m->rate_next_ns;
        if (cutting)
                at = m->rate_next_ns;
        while (m->slots_busy < window && m->nunsent && mirror_linked(m) && !m->fail_pending) {
                struct slot *s = NULL;
                uint64_t r;

                if (at > t) {
                        if (!m->pace_on)
                                mirror_timer_start(m, &m->pace_w, &m->pace_on,
                                                   (double)(at - t) / 1e9);
                        break;
                }
                for (unsigned i = 0; i < m->p.depth; i++)
                        if (m->slots[i].state == SLOT_FREE) {
                                s = &m->slots[i];
                                break;
                        }
                if (!s || !pick_region(m, &r))
                        break;
                copy_start(m, s, r);
                at = m->rate_next_ns;
                t = vbd_now_ns();
        }
}

static void check_ready(struct mirror *m)
{
        uint64_t left, limit;

        if (m->state != VBD_MIRROR_COPYING && m->state != VBD_MIRROR_READY)
                return;
        if (!m->p.precopy) {
                if (m->state == VBD_MIRROR_COPYING && m->nsynced == m->nregions) {
                        m->state = VBD_MIRROR_READY;
                        vbd_info("migration to %s ready: %" PRIu64 " bytes copied, %" PRIu64
                                 " forwarded in %" PRIu64 " writes, %.1f s",
                                 m->to, m->bytes_copied, m->bytes_forwarded, m->writes_forwarded,
                                 (double)(vbd_now_ns() - m->start_ns) / 1e9);
                }
                return;
        }
        /* Precopy: ready once a pass is done and little is left. */
        left = (m->nunsent + m->ninflight) << m->rshift;
        limit = (uint64_t)PRECOPY_MIN_REGIONS << m->rshift;
        if (m->info.size / 100 > limit)
                limit = m->info.size / 100;
        if ((m->passes >= 1 || !left) && left <= limit) {
                if (m->state == VBD_MIRROR_COPYING)
                        vbd_info("migration to %s ready (precopy, %" PRIu64 " bytes left)", m->to,
                                 left);
                m->state = VBD_MIRROR_READY;
        } else {
                m->state = VBD_MIRROR_COPYING;
        }
}

/* ---- background flush ---- */

static void bg_flush_done(struct nop *op)
{
        struct mirror *m = op->m;

        m->bg_flushing = false;
        if (op->err && op->err != ECONNABORTED)
                mirror_fail(m, op->err, "partner: flush failed: %s", strerror(op->err));
}

/* Flush the partner now and then (every BG_FLUSH_BYTES written to it while
 * copying; once ready, every tick that wrote something), so that its cache
 * holds little at cut-over: the final flush is downtime (a partner with a
 * writeback cache, such as librbd's, may hold tens of MiB). */
static void bg_flush(struct mirror *m)
{
        if (!mirror_linked(m) || m->bg_flushing || m->fail_pending || !m->bg_bytes ||
            (m->state == VBD_MIRROR_COPYING && m->bg_bytes < BG_FLUSH_BYTES) ||
            (m->state != VBD_MIRROR_COPYING && m->state != VBD_MIRROR_READY))
                return;
        m->bg_flushing = true;
        m->bg_bytes = 0;
        mirror_nbd_flush(m, &m->bg_nop, bg_flush_done, "a flush");
}

void mirror_copy_tick(struct mirror *m, uint64_t now)
{
        unsigned i;

        bg_flush(m);
        i = m->rate_n++ % RATE_WINDOW;
        m->rate_bytes[i] = m->nsynced << m->rshift;
        m->rate_ns[i] = now;
}

/* ---- cut-over ---- */

static void cut_flushed(struct mirror *m)
{
        if (--m->cut_flush > 0)
                return;
        if (m->cut_status < 0) {
                m->cut_partner_done = false; /* a local failure still fails */
                mirror_fail(m, -m->cut_status, "final flush failed: %s", strerror(-m->cut_status));
                return;
        }
        m->state = VBD_MIRROR_CUTOVER;
        m->end_ns = vbd_now_ns();
        m->downtime_ms = (int64_t)((m->end_ns - m->cut_pause_ns) / 1000000u);
        mirror_timer_stop(m, &m->tick_w, &m->tick_on);
        vbd_info("migration to %s cut over: %" PRIu64 " bytes copied, %" PRIu64
                 " forwarded, downtime %" PRId64 " ms",
                 m->to, m->bytes_copied, m->bytes_forwarded, m->downtime_ms);
        /* The partner has it all: end the connection, so that it may go
         * (vbd-ctl stops a bridge it started once this is closed). */
        mirror_nbd_disconnect(m);
        if (m->cut_done) {
                void (*done)(void *, int) = m->cut_done;

                m->cut_done = NULL;
                done(m->cut_opaque, 0);
        }
}

static void cut_local_done(struct vbd_io *io, int status)
{
        struct mirror *m = io->opaque;

        m->cut_local = false;
        if (status < 0 && m->cut_status == 0)
                m->cut_status = status;
        cut_flushed(m);
        mirror_progress(m);
}

static void cut_nbd_done(struct nop *op)
{
        struct mirror *m = op->m;

        if (op->err && m->cut_status == 0)
                m->cut_status = -op->err;
        if (!op->err)
                m->cut_partner_done = true;
        cut_flushed(m);
}

static void cut_check(struct mirror *m)
{
        if (m->state != VBD_MIRROR_CUTTING || m->cut_flush >= 0 || m->fail_pending)
                return;
        if (m->nunsent || m->ninflight || m->slots_busy || m->nfwd || m->nflush ||
            m->guest_inflight)
                return;
        m->cut_flush = 2;
        m->cut_status = 0;
        mirror_nbd_flush(m, &m->cut_nop, cut_nbd_done, "the final flush");
        m->cut_io = (struct vbd_io){
            .op = VBD_OP_FLUSH, .done = cut_local_done, .opaque = m, .scratch = m->cut_scratch};
        m->cut_local = true;
        vbd_image_submit(vbd_image_child(m->self), &m->cut_io);
}

int vbd_mirror_cutover(struct vbd_image *img, uint64_t pause_ns,
                       void (*done)(void *opaque, int status), void *opaque)
{
        struct mirror *m = vbd_image_state(img);

        if (m->state != VBD_MIRROR_READY)
                return -EAGAIN;
        m->state = VBD_MIRROR_CUTTING;
        m->cut_done = done;
        m->cut_opaque = opaque;
        m->cut_pause_ns = pause_ns;
        m->cut_flush = -1;
        m->cut_partner_done = false;
        vbd_info("migration to %s: cut-over, %" PRIu64 " region(s) left", m->to,
                 m->nunsent + m->ninflight);
        mirror_progress(m);
        return 0;
}

/* ---- the driving loop ---- */

void mirror_progress(struct mirror *m)
{
        if (m->in_progress) {
                m->again = true;
                return;
        }
        m->in_progress = true;
        do {
                m->again = false;
                mirror_nbd_process_done(m);
                if (m->fail_pending) {
                        m->fail_pending = false;
                        mirror_finish(m, VBD_MIRROR_FAILED, m->fail_err, m->fail_msg);
                }
                mirror_release_waiters(m);
                if (mirror_linked(m)) {
                        copier(m);
                        check_ready(m);
                        cut_check(m);
                }
                if (m->done_list || m->fail_pending)
                        m->again = true;
        } while (m->again);
        mirror_nbd_watch(m);
        m->in_progress = false;
        /* drain() reports itself; a completion must not: the core may close
         * the stack from vbd_image_drained(), under the child's feet. */
        if (m->draining && !m->drained && !m->slots_busy && !m->cut_local && !m->nnops) {
                m->drained = true;
                if (!m->in_drain) /* from a completion: report from the loop */
                        ev_timer_start(m->loop, &m->drain_w);
        }
}

static void drained_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct mirror *m = w->data;

        vbd_image_drained(m->self);
}

/* ---- control ---- */

void mirror_copy_reset(struct mirror *m)
{
        free(m->rmap);
        m->rmap = NULL;
        free(m->fbucket);
        m->fbucket = NULL;
        for (unsigned i = 0; i < VBD_MIRROR_DEPTH_MAX; i++) {
                if (m->slots[i].state != SLOT_FREE)
                        continue; /* a read still landing frees its own */
                free(m->slots[i].buf);
                m->slots[i].buf = NULL;
        }
}

void mirror_copy_init(struct mirror *m)
{
        ev_init(&m->pace_w, pace_cb);
        m->pace_w.data = m;
        ev_timer_init(&m->drain_w, drained_cb, 0., 0.);
        m->drain_w.data = m;
}

int vbd_mirror_start(struct vbd_image *img, const struct vbd_mirror_params *p, struct vbd_err *err)
{
        struct mirror *m = vbd_image_state(img);
        struct vbd_image *child = vbd_image_child(img);
        size_t cscratch = vbd_image_io_scratch_size(child);
        struct vbd_err local;
        unsigned shift;
        int r;

        if (!err)
                err = &local;
        if (m->draining)
                return vbd_err_set(err, -EBUSY, "the mirror is closing");
        if (mirror_running(m))
                return vbd_err_set(err, -EBUSY, "a migration to %s is %s", m->to,
                                   vbd_mirror_state_name(m->state));
        if (vbd_image_readonly(img))
                return vbd_err_set(err, -EROFS, "the VBD is read-only: nothing to migrate");
        if (!m->loop)
                return vbd_err_set(err, -EINVAL, "the mirror has no event loop");
        if (m->nnops) /* dropped with the partner: cannot be */
                return vbd_err_set(err, -EBUSY, "the last migration's requests are still draining");
        if (!p->to || !*p->to || strlen(p->to) >= sizeof(m->to))
                return vbd_err_set(err, -EINVAL, "bad partner URI");
        if (p->region < VBD_MIRROR_REGION_MIN || p->region > VBD_MIRROR_REGION_MAX ||
            !vbd_is_pow2(p->region) || p->region % m->info.logical_block)
                return vbd_err_set(err, -EINVAL, "region must be a power of two, %u KiB to %u MiB",
                                   VBD_MIRROR_REGION_MIN >> 10, VBD_MIRROR_REGION_MAX >> 20);
        if (p->share < 1 || p->share > 100 || p->depth < 1 || p->depth > VBD_MIRROR_DEPTH_MAX ||
            p->timeout < 1 || p->timeout > VBD_MIRROR_TIMEOUT_MAX ||
            p->connections > VBD_MIRROR_CONN_MAX)
                return vbd_err_set(
                    err, -EINVAL, "share 1..100, depth 1..%d, timeout 1..%d s, connections 1..%d",
                    VBD_MIRROR_DEPTH_MAX, VBD_MIRROR_TIMEOUT_MAX, VBD_MIRROR_CONN_MAX);
        if (p->shallow && p->zeroed)
                return vbd_err_set(err, -EINVAL,
                                   "shallow and zeroed: a shallow partner reads its backing "
                                   "chain, not zeroes");
        for (shift = 0; ((uint64_t)1 << shift) < p->region; shift++)
                ;

        mirror_copy_reset(m);
        m->p = *p;
        snprintf(m->to, sizeof(m->to), "%s", p->to);
        m->p.to = m->to;
        m->error[0] = '\0';
        m->can_zero = m->can_fua = m->multi_conn = false;
        m->partner_size = 0;
        m->rshift = shift;
        m->nregions = (m->info.size + p->region - 1) >> shift;
        m->cursor = m->ninflight = m->nsynced = 0;
        m->picked = m->bg_flushing = false;
        m->bg_bytes = 0;
        m->nunsent = m->nregions;
        m->next_copy_ns = m->rate_next_ns = 0;
        m->cut_done = NULL;
        m->cut_flush = -1;
        m->cut_status = 0;
        m->cut_partner_done = false;
        m->fail_pending = false;
        m->end_ns = m->bytes_copied = m->bytes_zeroed = m->bytes_forwarded = m->bytes_shallow = 0;
        m->writes_forwarded = m->writes_waited = m->passes = m->dirty_bytes = 0;
        m->forward_requests = 0;
        m->downtime_ms = -1;
        m->rate_n = 0;
        /* Guest writes in flight from before stay tracked (m->active). */
        m->rmap = calloc(m->nregions ? m->nregions : 1, 1);
        m->fbucket = calloc(m->nregions ? m->nregions : 1, sizeof(*m->fbucket));
        m->fwd_span = 0;
        if (!m->rmap || !m->fbucket) {
                mirror_copy_reset(m);
                return vbd_err_set(err, -ENOMEM, "out of memory for %" PRIu64 " regions",
                                   m->nregions);
        }
        m->gen++;
        m->cscratch = cscratch; /* slot buffers: allocated when first used */
        r = mirror_nbd_connect(m, err);
        if (r < 0) {
                mirror_copy_reset(m);
                /* migrate-status says why too. */
                m->state = VBD_MIRROR_FAILED;
                snprintf(m->error, sizeof(m->error), "%s", err->msg);
                vbd_err("migration: %s", m->error);
                return r;
        }
        m->state = VBD_MIRROR_CONNECTING;
        m->start_ns = vbd_now_ns();
        vbd_info("migration to %s: connecting (%s, region %" PRIu64
                 " KiB, share %u%%, depth %u, connections %u%s%s)",
                 m->to, p->precopy ? "precopy" : "pasm", p->region >> 10, p->share, p->depth,
                 p->connections ? p->connections : 1, p->zeroed ? ", partner zeroed" : "",
                 p->shallow ? ", shallow" : "");
        mirror_timer_start(m, &m->tick_w, &m->tick_on, TICK_S);
        if (mirror_nbd_ready(m))
                mirror_nbd_connected(m);
        mirror_progress(m);
        return 0;
}

int vbd_mirror_abort(struct vbd_image *img)
{
        struct mirror *m = vbd_image_state(img);

        if (!mirror_running(m))
                return -ENOENT;
        mirror_finish(m, VBD_MIRROR_ABORTED, ECANCELED, "aborted");
        mirror_progress(m);
        return 0;
}

enum vbd_mirror_state vbd_mirror_state(struct vbd_image *img)
{
        return ((struct mirror *)vbd_image_state(img))->state;
}

void vbd_mirror_get_status(struct vbd_image *img, struct vbd_mirror_status *st)
{
        struct mirror *m = vbd_image_state(img);
        uint64_t t = vbd_now_ns();
        uint64_t end = mirror_running(m) && m->state != VBD_MIRROR_CUTOVER ? t : m->end_ns;
        uint64_t synced = 0;

        memset(st, 0, sizeof(*st));
        st->state = m->state;
        st->precopy = m->p.precopy;
        st->shallow = m->p.shallow;
        snprintf(st->to, sizeof(st->to), "%s", m->to);
        snprintf(st->error, sizeof(st->error), "%s", m->error);
        st->size = m->info.size;
        st->partner_size = m->partner_size;
        st->downtime_ms = m->downtime_ms;
        st->eta_s = -1;
        if (m->state == VBD_MIRROR_NONE)
                return;
        st->region_size = (uint64_t)1 << m->rshift;
        st->regions_total = m->nregions;
        st->regions_synced = m->nsynced;
        st->regions_inflight = m->ninflight;
        for (uint64_t r = 0; m->rmap && r < m->nregions; r++)
                if ((m->rmap[r] & R_STATE) == R_SYNCED)
                        synced += mirror_region_len(m, r);
        st->bytes_synced = synced;
        st->bytes_copied = m->bytes_copied;
        st->bytes_zeroed = m->bytes_zeroed;
        st->bytes_shallow = m->bytes_shallow;
        st->bytes_forwarded = m->bytes_forwarded;
        st->writes_forwarded = m->writes_forwarded;
        st->writes_waited = m->writes_waited;
        st->passes = m->passes;
        st->dirty_bytes = m->dirty_bytes;
        st->forward_requests = m->forward_requests;
        st->partner_inflight = m->nnops;
        st->connections = mirror_nbd_nconns(m);
        st->multi_conn = m->multi_conn;
        st->partner_connected = mirror_linked(m);
        st->elapsed_ms = m->start_ns && end > m->start_ns ? (end - m->start_ns) / 1000000u : 0;
        if (m->rate_n >= 2 && mirror_running(m)) {
                unsigned n = m->rate_n < RATE_WINDOW ? m->rate_n : RATE_WINDOW;
                unsigned newest = (m->rate_n - 1) % RATE_WINDOW;
                unsigned oldest = (m->rate_n - n) % RATE_WINDOW;
                uint64_t dt = m->rate_ns[newest] - m->rate_ns[oldest];
                uint64_t db = m->rate_bytes[newest] > m->rate_bytes[oldest]
                                  ? m->rate_bytes[newest] - m->rate_bytes[oldest]
                                  : 0;

                if (dt)
                        st->rate = (uint64_t)((double)db * 1e9 / (double)dt);
        }
        if (m->state == VBD_MIRROR_READY || m->state == VBD_MIRROR_CUTOVER)
                st->eta_s = 0;
        else if (st->rate)
                st->eta_s = (int64_t)((st->size - synced) / st->rate);
}
