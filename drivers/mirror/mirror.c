/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * mirror: partner-assisted storage migration.  See mirror.h for the model.
 *
 * Threading: everything runs on the VBD's loop.  libnbd's completion
 * callbacks only record the result and queue the command on done_list;
 * progress() then handles completions, failures, waiting writes, the copier
 * and the cut-over outside of any libnbd call (libnbd must not be re-entered
 * from its own callbacks, and nbd_close() cannot run inside one).
 */
#define VBD_LOG_TOPIC "drv.mirror"
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <ev.h>
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "image.h"
#include "mirror.h"
#include "vbd/driver.h"
#include "vbd/log.h"

/* Region map entries. */
enum {
        R_UNSENT = 0,
        R_INFLIGHT = 1,
        R_SYNCED = 2,
        R_STATE = 3,
        R_REDO = 4, /* precopy: written while in flight, send again */
};

#define FWD_WINDOW_BYTES    (64u << 20) /* forwarded data outstanding */
#define FWD_WINDOW_COUNT    1024        /* forwarded writes outstanding */
#define GUEST_IDLE_NS       50000000u   /* no guest I/O for this long: the copier runs at depth */
#define TICK_S              0.25
#define BG_FLUSH_BYTES      (64u << 20)
#define RATE_WINDOW         8  /* samples of progress, one per tick */
#define PRECOPY_MIN_REGIONS 16 /* precopy is ready when at most max(1%, this many) are left */

struct mirror;

/* One NBD command in flight. */
struct nop {
        struct mirror *m;
        struct nop *prev, *next; /* m->nops, oldest first */
        struct nop *done_next;
        void (*complete)(struct nop *op);
        uint64_t start_ns;
        int err;
        bool done;
};

/* Per guest io (io->scratch); the child's scratch follows. */
struct mio {
        struct mirror *m;
        struct vbd_io *gio;
        struct mio *prev, *next; /* m->active: write-type ios applied now */
        struct mio *wnext;       /* m->wait_head: write-type ios waiting */
        struct nop nop;          /* the NBD half of a flush */
        uint64_t flush_seq;      /* a flush: forwards before it have seq < this */
        int local_status;
        unsigned pending; /* halves outstanding: local, partner */
        bool active, mark_unsent;
        struct vbd_io cio; /* to the child */
};

_Static_assert(((sizeof(struct mio) + 15) & ~(size_t)15) <= VBD_IMAGE_STACK_SCRATCH,
               "struct mio must fit in the room VBD pools keep for a stacked driver");

/* A forwarded guest write: its own copy of the data. */
struct fwd {
        struct mirror *m;
        struct fwd *prev, *next;   /* m->fwd_head: outstanding, in arrival order */
        struct fwd *bprev, *bnext; /* m->fbucket[first region]: found by range */
        uint64_t seq, off, len;
        bool sent; /* else queued behind an overlapping earlier one */
        struct nop nop;
        uint8_t data[];
};

enum { SLOT_FREE, SLOT_READING, SLOT_SENDING };

/* One region being copied. */
struct slot {
        struct mirror *m;
        int state;
        unsigned gen; /* the migration it copies for (m->gen) */
        uint64_t region, off, len, start_ns;
        void *buf;
        struct nop nop;
        struct iovec iov;
        struct vbd_io cio;
        void *cscratch;
};

struct mirror {
        struct vbd_image *self;
        struct ev_loop *loop;
        struct vbd_info info;

        enum vbd_mirror_state state;
        struct vbd_mirror_params p;
        char to[1024], error[256];
        struct nbd_handle *nbd;
        int nbd_fd, nbd_events;
        bool can_zero, can_fua;
        uint64_t partner_size;
        ev_io nbd_w;
        ev_timer tick_w, pace_w;
        bool tick_on, pace_on, io_on;

        /* Region map. */
        uint8_t *rmap;
        uint64_t nregions, cursor, nunsent, ninflight, nsynced;
        bool picked; /* a region was picked since the cursor last wrapped */
        unsigned rshift;

        /* Guest I/O. */
        struct mio *active;
        struct mio *wait_head, **wait_tail;
        unsigned guest_inflight;
        struct mio *flush_head, **flush_tail; /* flushes waiting for earlier forwards */
        unsigned nflush;                      /* ... and those sent */

        /* Forwarded writes outstanding. */
        struct fwd *fwd_head, *fwd_tail;
        struct fwd **fbucket;   /* per region, the forwards starting there */
        uint64_t fwd_span;      /* most regions after its first one a forward has reached */
        unsigned nfwd, fqueued; /* outstanding; of which not sent yet */
        uint64_t fwd_bytes, fwd_seq;
        uint64_t last_guest_ns;

        /* NBD commands. */
        struct nop *nops, *nops_tail, *done_list;
        unsigned nnops;

        /* Copier. */
        struct slot slots[VBD_MIRROR_DEPTH_MAX];
        unsigned slots_busy; /* including reads of an earlier migration still landing */
        unsigned gen;        /* migrations started */
        size_t cscratch;
        uint64_t next_copy_ns, rate_next_ns;

        /* Cut-over. */
        void (*cut_done)(void *opaque, int status);
        void *cut_opaque;
        uint64_t cut_pause_ns;
        int cut_flush; /* -1: not started; else halves outstanding */
        int cut_status;
        struct vbd_io cut_io;
        void *cut_scratch;
        struct nop cut_nop;

        /* Background partner flush, so that the final one has little to do. */
        struct nop bg_nop;
        bool bg_flushing;
        uint64_t bg_bytes; /* written to the partner since the last one */

        /* Failure noticed inside a callback, handled by progress(). */
        bool fail_pending;
        int fail_err;
        char fail_msg[256];

        bool in_progress, again;

        /* Figures. */
        uint64_t start_ns, end_ns, bytes_copied, bytes_zeroed, bytes_forwarded;
        uint64_t writes_forwarded, writes_waited, passes, dirty_bytes;
        int64_t downtime_ms;
        uint64_t rate_bytes[RATE_WINDOW], rate_ns[RATE_WINDOW];
        unsigned rate_n;
};

static void progress(struct mirror *m);
static void half_done(struct mio *mi);
static void fwd_free(struct mirror *m, struct fwd *f);
static void fail(struct mirror *m, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *vbd_mirror_state_name(enum vbd_mirror_state s)
{
        static const char *const names[] = {
            [VBD_MIRROR_NONE] = "none",       [VBD_MIRROR_CONNECTING] = "connecting",
            [VBD_MIRROR_COPYING] = "copying", [VBD_MIRROR_READY] = "ready",
            [VBD_MIRROR_CUTTING] = "cutting", [VBD_MIRROR_CUTOVER] = "cutover",
            [VBD_MIRROR_FAILED] = "failed",   [VBD_MIRROR_ABORTED] = "aborted",
        };

        return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "unknown";
}

/* Is a migration running (the partner is, or is being, connected)? */
static bool running(const struct mirror *m)
{
        return m->state >= VBD_MIRROR_CONNECTING && m->state <= VBD_MIRROR_CUTOVER;
}

/* Connected and taking commands. */
static bool linked(const struct mirror *m)
{
        return running(m) && m->state != VBD_MIRROR_CONNECTING && m->nbd;
}

static uint64_t region_off(const struct mirror *m, uint64_t r)
{
        return r << m->rshift;
}

static uint64_t region_len(const struct mirror *m, uint64_t r)
{
        uint64_t off = region_off(m, r), len = (uint64_t)1 << m->rshift;

        return off + len > m->info.size ? m->info.size - off : len;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
        return a < b + blen && b < a + alen;
}

static bool is_write_type(enum vbd_op op)
{
        return op == VBD_OP_WRITE || op == VBD_OP_DISCARD || op == VBD_OP_WRITE_ZEROES;
}

/* ---- libev watchers that do not keep the loop alive ---- */

static void watch_io(struct mirror *m)
{
        unsigned dir;
        int fd, events = 0;

        if (!m->nbd) {
                if (m->io_on) {
                        ev_ref(m->loop);
                        ev_io_stop(m->loop, &m->nbd_w);
                        m->io_on = false;
                }
                return;
        }
        fd = nbd_aio_get_fd(m->nbd);
        dir = nbd_aio_get_direction(m->nbd);
        if (dir & LIBNBD_AIO_DIRECTION_READ)
                events |= EV_READ;
        if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                events |= EV_WRITE;
        if (fd < 0)
                events = 0;
        if (m->io_on && fd == m->nbd_fd && events == m->nbd_events)
                return;
        if (m->io_on) {
                ev_ref(m->loop);
                ev_io_stop(m->loop, &m->nbd_w);
                m->io_on = false;
        }
        m->nbd_fd = fd;
        m->nbd_events = events;
        if (events) {
                ev_io_set(&m->nbd_w, fd, events);
                ev_io_start(m->loop, &m->nbd_w);
                ev_unref(m->loop);
                m->io_on = true;
        }
}

static void timer_start(struct mirror *m, ev_timer *w, bool *on, double after)
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

static void timer_stop(struct mirror *m, ev_timer *w, bool *on)
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
        op->start_ns = now_ns();
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

        fail(m, e ? e : EIO, "partner: cannot send %s: %s", what, nbd_get_error());
        op->done = true;
        op->err = e ? e : EIO;
        op->done_next = m->done_list;
        m->done_list = op;
}

static void process_done(struct mirror *m)
{
        while (m->done_list) {
                struct nop *op = m->done_list;

                m->done_list = op->done_next;
                nop_unlink(m, op);
                op->complete(op);
        }
}

/* ---- failure ---- */

/* Drop the partner: close the handle, give up on its commands. */
static void drop_partner(struct mirror *m)
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
        watch_io(m); /* stop watching the fd before it is closed */
        nbd_close(h);
        process_done(m);
        /* Forwards never sent, flushes never sent: over too. */
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

static void finish(struct mirror *m, enum vbd_mirror_state st, int err, const char *msg)
{
        if (!running(m))
                return;
        m->state = st;
        m->end_ns = now_ns();
        snprintf(m->error, sizeof(m->error), "%s", msg);
        if (st == VBD_MIRROR_FAILED)
                vbd_err("migration to %s failed: %s", m->to, msg);
        else
                vbd_info("migration to %s aborted", m->to);
        timer_stop(m, &m->tick_w, &m->tick_on);
        timer_stop(m, &m->pace_w, &m->pace_on);
        drop_partner(m);
        if (m->cut_done) {
                void (*done)(void *, int) = m->cut_done;

                m->cut_done = NULL;
                done(m->cut_opaque, err ? -err : -ECANCELED);
        }
}

static void fail(struct mirror *m, int err, const char *fmt, ...)
{
        va_list ap;

        if (!running(m) || m->fail_pending)
                return;
        m->fail_pending = true;
        m->fail_err = err ? err : EIO;
        va_start(ap, fmt);
        vsnprintf(m->fail_msg, sizeof(m->fail_msg), fmt, ap);
        va_end(ap);
}

/* ---- region map ---- */

static void set_region(struct mirror *m, uint64_t r, int st)
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
                        set_region(m, r, R_UNSENT);
                        m->dirty_bytes += region_len(m, r);
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
        m->last_guest_ns = now_ns();
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
        if (running(m) && m->rmap && is_write_type(mi->gio->op) &&
            (m->p.precopy || mi->mark_unsent || status < 0))
                make_unsent(m, mi->gio->offset, mi->gio->len);
        half_done(mi);
        progress(m);
}

/*
 * Forwarded writes.  The guest's write completes when the local write does;
 * the forward carries its own copy of the data and stays outstanding until
 * the partner answers.  At most FWD_WINDOW_BYTES / FWD_WINDOW_COUNT are
 * outstanding (more writes to synced regions wait: backpressure).  They are
 * kept in arrival order; one that overlaps an earlier outstanding forward is
 * sent only once that one is answered, so the partner applies overlapping
 * writes in the guest's order.
 */
static void fwd_send(struct mirror *m, struct fwd *f);
static void flush_nbd_done(struct nop *op);

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
                m->fqueued--;
        m->nfwd--;
        m->fwd_bytes -= f->len;
        free(f);
        m->again = true;
}

/* An outstanding forward older than seq (all when seq is UINT64_MAX) that
 * overlaps [off, off + len)?  Looks only at the buckets that can hold one. */
static struct fwd *fwd_overlap(const struct mirror *m, uint64_t off, uint64_t len, uint64_t seq)
{
        uint64_t r0 = off >> m->rshift, r1 = (off + len - 1) >> m->rshift;
        uint64_t b = r0 > m->fwd_span ? r0 - m->fwd_span : 0;

        for (; b <= r1; b++)
                for (struct fwd *e = m->fbucket[b]; e; e = e->bnext)
                        if (e->seq < seq && overlaps(off, len, e->off, e->len))
                                return e;
        return NULL;
}

/* Send the queued forwards that no earlier outstanding one overlaps. */
static void fwd_send_queued(struct mirror *m)
{
        for (struct fwd *f = m->fwd_head; f && m->fqueued && linked(m); f = f->next)
                if (!f->sent && !fwd_overlap(m, f->off, f->len, f->seq))
                        fwd_send(m, f);
}

/* The NBD flushes waiting for forwards that came before them. */
static void flush_send_ready(struct mirror *m)
{
        while (m->flush_head && linked(m) &&
               (!m->fwd_head || m->fwd_head->seq >= m->flush_head->flush_seq)) {
                struct mio *mi = m->flush_head;

                m->flush_head = mi->wnext;
                if (!m->flush_head)
                        m->flush_tail = &m->flush_head;
                mi->wnext = NULL;
                if (nbd_aio_flush(m->nbd, nop_arm(m, &mi->nop, flush_nbd_done), 0) < 0)
                        nop_issue_failed(m, &mi->nop, "a flush");
        }
}

static void fwd_done(struct nop *op)
{
        struct fwd *f = (struct fwd *)((char *)op - offsetof(struct fwd, nop));
        struct mirror *m = f->m;

        if (op->err) {
                if (op->err != ECONNABORTED)
                        fail(m, op->err,
                             "partner: write of %" PRIu64 " bytes at %" PRIu64 " failed: %s",
                             f->len, f->off, strerror(op->err));
        } else {
                m->writes_forwarded++;
                m->bytes_forwarded += f->len;
                m->bg_bytes += f->len;
        }
        fwd_free(m, f);
        if (linked(m)) {
                fwd_send_queued(m);
                flush_send_ready(m);
        }
}

static void fwd_send(struct mirror *m, struct fwd *f)
{
        if (!f->sent)
                m->fqueued--;
        f->sent = true;
        if (nbd_aio_pwrite(m->nbd, f->data, f->len, f->off, nop_arm(m, &f->nop, fwd_done), 0) < 0)
                nop_issue_failed(m, &f->nop, "a write");
}

static void fwd_new(struct mirror *m, const struct vbd_io *g)
{
        struct fwd *f = malloc(sizeof(*f) + g->len);
        size_t done = 0;
        uint64_t r0, r1;

        if (!f) {
                fail(m, ENOMEM, "out of memory for a forwarded write");
                return;
        }
        *f = (struct fwd){.m = m, .seq = m->fwd_seq++, .off = g->offset, .len = g->len};
        for (unsigned i = 0; i < g->iovcnt; i++) {
                memcpy(f->data + done, g->iov[i].iov_base, g->iov[i].iov_len);
                done += g->iov[i].iov_len;
        }
        f->prev = m->fwd_tail;
        if (m->fwd_tail)
                m->fwd_tail->next = f;
        else
                m->fwd_head = f;
        m->fwd_tail = f;
        m->nfwd++;
        m->fqueued++;
        m->fwd_bytes += f->len;
        r0 = f->off >> m->rshift;
        r1 = (f->off + f->len - 1) >> m->rshift;
        if (r1 - r0 > m->fwd_span)
                m->fwd_span = r1 - r0;
        if (!fwd_overlap(m, f->off, f->len, f->seq)) /* else sent when it is answered */
                fwd_send(m, f);
        f->bnext = m->fbucket[r0];
        if (f->bnext)
                f->bnext->bprev = f;
        m->fbucket[r0] = f;
}

/* Would this write be forwarded? */
static bool forwards(const struct mirror *m, const struct mio *mi)
{
        return running(m) && m->rmap && !m->p.precopy && mi->gio->op == VBD_OP_WRITE && linked(m) &&
               any_region(m, mi->gio->offset, mi->gio->len, R_SYNCED);
}

static void flush_nbd_done(struct nop *op)
{
        struct mio *mi = (struct mio *)((char *)op - offsetof(struct mio, nop));
        struct mirror *m = mi->m;

        m->nflush--;
        if (op->err && op->err != ECONNABORTED)
                fail(m, op->err, "partner: flush failed: %s", strerror(op->err));
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
        if (!running(m) || !m->rmap)
                return false;
        for (struct mio *a = m->active; a; a = a->next)
                if (overlaps(g->offset, g->len, a->gio->offset, a->gio->len))
                        return true;
        for (struct mio *w = m->wait_head; w && w != stop; w = w->wnext)
                if (overlaps(g->offset, g->len, w->gio->offset, w->gio->len))
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
        else if (running(m) && m->rmap && !m->p.precopy &&
                 any_region(m, mi->gio->offset, mi->gio->len, R_SYNCED))
                /* Discard or write-zeroes on synced regions: send those
                 * regions again, from the local image, once done. */
                mi->mark_unsent = true;
        submit_local(m, mi);
}

static void release_waiters(struct mirror *m)
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
        m->last_guest_ns = now_ns();
        if (io->op == VBD_OP_READ) {
                mi->pending = 1;
                submit_local(m, mi);
                return;
        }
        if (io->op == VBD_OP_FLUSH) {
                /* Local flush now; the NBD flush once the forwards before it
                 * are answered (NBD flushes only what has completed). */
                mi->pending = 1;
                if (linked(m)) {
                        mi->pending++;
                        mi->flush_seq = m->fwd_seq;
                        *m->flush_tail = mi;
                        m->flush_tail = &mi->wnext;
                        m->nflush++;
                        flush_send_ready(m);
                }
                submit_local(m, mi);
                progress(m);
                return;
        }
        if (must_wait(m, mi, NULL)) {
                m->writes_waited++;
                *m->wait_tail = mi;
                m->wait_tail = &mi->wnext;
                return;
        }
        start_write(m, mi);
        progress(m);
}

/* ---- the copier ---- */

static void pace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct mirror *m = w->data;

        m->pace_on = false;
        ev_ref(loop);
        progress(m);
}

static void slot_free(struct mirror *m, struct slot *s)
{
        s->state = SLOT_FREE;
        m->slots_busy--;
        m->again = true;
}

static void copy_sent(struct nop *op)
{
        struct slot *s = (struct slot *)((char *)op - offsetof(struct slot, nop));
        struct mirror *m = s->m;
        uint64_t t = now_ns(), took = t - s->start_ns;

        if (op->err) {
                if (op->err != ECONNABORTED)
                        fail(m, op->err, "partner: write of region at %" PRIu64 " failed: %s",
                             s->off, strerror(op->err));
                if (m->rmap)
                        set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
                return;
        }
        m->bg_bytes += s->len;
        if (m->rmap[s->region] & R_REDO)
                set_region(m, s->region, R_UNSENT);
        else
                set_region(m, s->region, R_SYNCED);
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
                progress(m);
                return;
        }
        if (status < 0) {
                fail(m, -status, "local read of region at %" PRIu64 " failed: %s", s->off,
                     strerror(-status));
                if (m->rmap)
                        set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
        } else if (!linked(m) || m->fail_pending) {
                set_region(m, s->region, R_UNSENT);
                slot_free(m, s);
        } else {
                nbd_completion_callback cb = nop_arm(m, &s->nop, copy_sent);

                s->state = SLOT_SENDING;
                m->bytes_copied += s->len;
                if (nbd_aio_pwrite(m->nbd, s->buf, s->len, s->off, cb, 0) < 0)
                        nop_issue_failed(m, &s->nop, "a region");
        }
        progress(m);
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
                        busy = overlaps(a->gio->offset, a->gio->len, region_off(m, r),
                                        region_len(m, r));
                /* A forward still outstanding there (the region was synced,
                 * then discarded): the copy must not race it. */
                if (!busy && m->nfwd)
                        busy = fwd_overlap(m, region_off(m, r), region_len(m, r), UINT64_MAX);
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
                        fail(m, ENOMEM, "out of memory for the copier");
                        return;
                }
                s->cscratch = m->cscratch ? (char *)s->buf + ((size_t)1 << m->rshift) : NULL;
        }
        s->m = m;
        s->gen = m->gen;
        s->region = r;
        s->off = region_off(m, r);
        s->len = region_len(m, r);
        s->start_ns = now_ns();
        m->slots_busy++;
        set_region(m, r, R_INFLIGHT);
        if (m->p.rate) {
                uint64_t t = s->start_ns;

                if (m->rate_next_ns < t)
                        m->rate_next_ns = t;
                m->rate_next_ns += s->len * 1000000000u / m->p.rate;
        }
        if (reads_zero(m, s->off, s->len) && (m->p.zeroed || m->can_zero)) {
                m->bytes_zeroed += s->len;
                if (m->p.zeroed) {
                        s->state = SLOT_SENDING;
                        set_region(m, r, R_SYNCED);
                        slot_free(m, s);
                        return;
                }
                s->state = SLOT_SENDING;
                if (nbd_aio_zero(m->nbd, s->len, s->off, nop_arm(m, &s->nop, copy_sent), 0) < 0)
                        nop_issue_failed(m, &s->nop, "a zero request");
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
        uint64_t t = now_ns(), at;
        unsigned window;
        bool cutting = m->state == VBD_MIRROR_CUTTING;

        if (!linked(m) || m->fail_pending || m->state == VBD_MIRROR_CUTOVER)
                return;
        if (cutting || (!m->guest_inflight && t - m->last_guest_ns >= GUEST_IDLE_NS))
                window = m->p.depth;
        else
                window = 1;
        at = m->next_copy_ns > m->rate_next_ns ? m->next_copy_ns : m->rate_next_ns;
        if (cutting)
                at = m->rate_next_ns;
        while (m->slots_busy < window && m->nunsent && linked(m) && !m->fail_pending) {
                struct slot *s = NULL;
                uint64_t r;

                if (at > t) {
                        if (!m->pace_on)
                                timer_start(m, &m->pace_w, &m->pace_on, (double)(at - t) / 1e9);
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
                t = now_ns();
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
                                 (double)(now_ns() - m->start_ns) / 1e9);
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

/* ---- cut-over ---- */

static void cut_check(struct mirror *m);

static void cut_flushed(struct mirror *m)
{
        if (--m->cut_flush > 0)
                return;
        if (m->cut_status < 0) {
                fail(m, -m->cut_status, "final flush failed: %s", strerror(-m->cut_status));
                return;
        }
        m->state = VBD_MIRROR_CUTOVER;
        m->end_ns = now_ns();
        m->downtime_ms = (int64_t)((m->end_ns - m->cut_pause_ns) / 1000000u);
        timer_stop(m, &m->tick_w, &m->tick_on);
        vbd_info("migration to %s cut over: %" PRIu64 " bytes copied, %" PRIu64
                 " forwarded, downtime %" PRId64 " ms",
                 m->to, m->bytes_copied, m->bytes_forwarded, m->downtime_ms);
        if (m->cut_done) {
                void (*done)(void *, int) = m->cut_done;

                m->cut_done = NULL;
                done(m->cut_opaque, 0);
        }
}

static void cut_local_done(struct vbd_io *io, int status)
{
        struct mirror *m = io->opaque;

        if (status < 0 && m->cut_status == 0)
                m->cut_status = status;
        cut_flushed(m);
        progress(m);
}

static void cut_nbd_done(struct nop *op)
{
        struct mirror *m = op->m;

        if (op->err && m->cut_status == 0)
                m->cut_status = -op->err;
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
        if (nbd_aio_flush(m->nbd, nop_arm(m, &m->cut_nop, cut_nbd_done), 0) < 0)
                nop_issue_failed(m, &m->cut_nop, "the final flush");
        m->cut_io = (struct vbd_io){
            .op = VBD_OP_FLUSH, .done = cut_local_done, .opaque = m, .scratch = m->cut_scratch};
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
        vbd_info("migration to %s: cut-over, %" PRIu64 " region(s) left", m->to,
                 m->nunsent + m->ninflight);
        progress(m);
        return 0;
}

/* ---- the driving loop ---- */

static void progress(struct mirror *m)
{
        if (m->in_progress) {
                m->again = true;
                return;
        }
        m->in_progress = true;
        do {
                m->again = false;
                process_done(m);
                if (m->fail_pending) {
                        m->fail_pending = false;
                        finish(m, VBD_MIRROR_FAILED, m->fail_err, m->fail_msg);
                }
                release_waiters(m);
                if (linked(m)) {
                        copier(m);
                        check_ready(m);
                        cut_check(m);
                }
                if (m->done_list || m->fail_pending)
                        m->again = true;
        } while (m->again);
        watch_io(m);
        m->in_progress = false;
}

static void connected(struct mirror *m)
{
        int64_t size = nbd_get_size(m->nbd);
        int64_t maxb = nbd_get_block_size(m->nbd, LIBNBD_SIZE_MAXIMUM);

        if (size < 0) {
                fail(m, nbd_get_errno(), "partner: no size: %s", nbd_get_error());
                return;
        }
        m->partner_size = (uint64_t)size;
        if (nbd_is_read_only(m->nbd) == 1) {
                fail(m, EROFS, "partner: the export is read-only");
        } else if ((uint64_t)size < m->info.size) {
                fail(m, ENOSPC,
                     "partner: export of %" PRId64 " bytes, smaller than the %" PRIu64
                     " of this VBD",
                     size, m->info.size);
        } else if (nbd_can_flush(m->nbd) != 1) {
                fail(m, EOPNOTSUPP, "partner: the export cannot flush");
        } else if (maxb > 0 && (uint64_t)maxb < ((uint64_t)1 << m->rshift)) {
                fail(m, EINVAL,
                     "partner: requests of at most %" PRId64 " bytes, less than a region", maxb);
        } else {
                m->can_zero = nbd_can_zero(m->nbd) == 1;
                m->can_fua = nbd_can_fua(m->nbd) == 1;
                m->state = VBD_MIRROR_COPYING;
                m->start_ns = now_ns();
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
        if (r < 0 || nbd_aio_is_dead(m->nbd) || nbd_aio_is_closed(m->nbd)) {
                const char *e = nbd_get_error();

                fail(m, nbd_get_errno() ? nbd_get_errno() : ECONNRESET, "partner: %s",
                     e ? e : "connection lost");
        } else if (m->state == VBD_MIRROR_CONNECTING && nbd_aio_is_ready(m->nbd)) {
                connected(m);
        }
        progress(m);
}

static void bg_flush_done(struct nop *op)
{
        struct mirror *m = op->m;

        m->bg_flushing = false;
        if (op->err && op->err != ECONNABORTED)
                fail(m, op->err, "partner: flush failed: %s", strerror(op->err));
}

/* Flush the partner now and then (every BG_FLUSH_BYTES written to it), so
 * that its cache holds little at cut-over: the final flush is downtime. */
static void bg_flush(struct mirror *m)
{
        if (!linked(m) || m->bg_flushing || m->fail_pending || m->bg_bytes < BG_FLUSH_BYTES ||
            (m->state != VBD_MIRROR_COPYING && m->state != VBD_MIRROR_READY))
                return;
        m->bg_flushing = true;
        m->bg_bytes = 0;
        if (nbd_aio_flush(m->nbd, nop_arm(m, &m->bg_nop, bg_flush_done), 0) < 0)
                nop_issue_failed(m, &m->bg_nop, "a flush");
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct mirror *m = w->data;
        uint64_t t = now_ns(), limit = (uint64_t)m->p.timeout * 1000000000u;
        unsigned i;

        m->tick_on = false;
        ev_ref(loop);
        if (m->state == VBD_MIRROR_CONNECTING && t - m->start_ns > limit)
                fail(m, ETIMEDOUT, "partner: no connection after %u s", m->p.timeout);
        else if (m->nops && t - m->nops->start_ns > limit)
                fail(m, ETIMEDOUT, "partner: no answer for %u s", m->p.timeout);
        bg_flush(m);
        i = m->rate_n++ % RATE_WINDOW;
        m->rate_bytes[i] = m->nsynced << m->rshift;
        m->rate_ns[i] = t;
        if (running(m) && m->state != VBD_MIRROR_CUTOVER)
                timer_start(m, &m->tick_w, &m->tick_on, TICK_S);
        progress(m);
}

/* ---- control ---- */

static void reset(struct mirror *m)
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

int vbd_mirror_start(struct vbd_image *img, const struct vbd_mirror_params *p, struct vbd_err *err)
{
        struct mirror *m = vbd_image_state(img);
        struct vbd_image *child = vbd_image_child(img);
        size_t cscratch = vbd_image_io_scratch_size(child);
        unsigned shift;

        if (running(m))
                return vbd_err_set(err, -EBUSY, "a migration to %s is %s", m->to,
                                   vbd_mirror_state_name(m->state));
        if (vbd_image_readonly(img))
                return vbd_err_set(err, -EROFS, "the VBD is read-only: nothing to migrate");
        if (m->nnops) /* dropped with the partner: cannot be */
                return vbd_err_set(err, -EBUSY, "the last migration's requests are still draining");
        if (!p->to || !*p->to || strlen(p->to) >= sizeof(m->to))
                return vbd_err_set(err, -EINVAL, "bad partner URI");
        if (p->region < VBD_MIRROR_REGION_MIN || p->region > VBD_MIRROR_REGION_MAX ||
            (p->region & (p->region - 1)) || p->region % m->info.logical_block)
                return vbd_err_set(err, -EINVAL, "region must be a power of two, %u KiB to %u MiB",
                                   VBD_MIRROR_REGION_MIN >> 10, VBD_MIRROR_REGION_MAX >> 20);
        if (p->share < 1 || p->share > 100 || p->depth < 1 || p->depth > VBD_MIRROR_DEPTH_MAX ||
            p->timeout < 1 || p->timeout > VBD_MIRROR_TIMEOUT_MAX)
                return vbd_err_set(err, -EINVAL, "share 1..100, depth 1..%d, timeout 1..%d s",
                                   VBD_MIRROR_DEPTH_MAX, VBD_MIRROR_TIMEOUT_MAX);
        for (shift = 0; ((uint64_t)1 << shift) < p->region; shift++)
                ;

        reset(m);
        m->p = *p;
        snprintf(m->to, sizeof(m->to), "%s", p->to);
        m->p.to = m->to;
        m->error[0] = '\0';
        m->can_zero = m->can_fua = false;
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
        m->fail_pending = false;
        m->end_ns = m->bytes_copied = m->bytes_zeroed = m->bytes_forwarded = 0;
        m->writes_forwarded = m->writes_waited = m->passes = m->dirty_bytes = 0;
        m->downtime_ms = -1;
        m->rate_n = 0;
        /* Guest writes in flight from before stay tracked (m->active). */
        m->rmap = calloc(m->nregions ? m->nregions : 1, 1);
        m->fbucket = calloc(m->nregions ? m->nregions : 1, sizeof(*m->fbucket));
        m->fwd_span = 0;
        if (!m->rmap || !m->fbucket) {
                reset(m);
                return vbd_err_set(err, -ENOMEM, "out of memory for %" PRIu64 " regions",
                                   m->nregions);
        }
        m->gen++;
        m->cscratch = cscratch; /* slot buffers: allocated when first used */
        m->nbd = nbd_create();
        if (!m->nbd) {
                reset(m);
                return vbd_err_set(err, -ENOMEM, "libnbd: %s", nbd_get_error());
        }
        if (nbd_aio_connect_uri(m->nbd, m->to) < 0) {
                int e = nbd_get_errno();

                vbd_err_set(err, e ? -e : -EINVAL, "cannot connect to %s: %s", m->to,
                            nbd_get_error());
                nbd_close(m->nbd);
                m->nbd = NULL;
                reset(m);
                /* migrate-status says why too. */
                m->state = VBD_MIRROR_FAILED;
                snprintf(m->error, sizeof(m->error), "%s", err ? err->msg : "cannot connect");
                vbd_err("migration: %s", m->error);
                return err ? err->code : -EINVAL;
        }
        m->state = VBD_MIRROR_CONNECTING;
        m->start_ns = now_ns();
        vbd_info("migration to %s: connecting (%s, region %" PRIu64 " KiB, share %u%%, depth %u%s)",
                 m->to, p->precopy ? "precopy" : "pasm", p->region >> 10, p->share, p->depth,
                 p->zeroed ? ", partner zeroed" : "");
        timer_start(m, &m->tick_w, &m->tick_on, TICK_S);
        if (nbd_aio_is_ready(m->nbd))
                connected(m);
        progress(m);
        return 0;
}

int vbd_mirror_abort(struct vbd_image *img)
{
        struct mirror *m = vbd_image_state(img);

        if (!running(m))
                return -ENOENT;
        finish(m, VBD_MIRROR_ABORTED, ECANCELED, "aborted");
        progress(m);
        return 0;
}

enum vbd_mirror_state vbd_mirror_state(struct vbd_image *img)
{
        return ((struct mirror *)vbd_image_state(img))->state;
}

void vbd_mirror_get_status(struct vbd_image *img, struct vbd_mirror_status *st)
{
        struct mirror *m = vbd_image_state(img);
        uint64_t t = now_ns(), end = running(m) && m->state != VBD_MIRROR_CUTOVER ? t : m->end_ns;
        uint64_t synced = 0;

        memset(st, 0, sizeof(*st));
        st->state = m->state;
        st->precopy = m->p.precopy;
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
                        synced += region_len(m, r);
        st->bytes_synced = synced;
        st->bytes_copied = m->bytes_copied;
        st->bytes_zeroed = m->bytes_zeroed;
        st->bytes_forwarded = m->bytes_forwarded;
        st->writes_forwarded = m->writes_forwarded;
        st->writes_waited = m->writes_waited;
        st->passes = m->passes;
        st->dirty_bytes = m->dirty_bytes;
        st->partner_inflight = m->nnops;
        st->elapsed_ms = m->start_ns && end > m->start_ns ? (end - m->start_ns) / 1000000u : 0;
        if (m->rate_n >= 2 && running(m)) {
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

/* ---- the driver ---- */

static int mirror_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct mirror *m = vbd_image_state(img);

        if (!vbd_image_child(img))
                return vbd_err_set(err, -EINVAL,
                                   "mirror: stacked by 'vbd-ctl migrate start', not opened");
        m->self = img;
        m->info = *vbd_image_info(vbd_image_child(img));
        m->wait_tail = &m->wait_head;
        m->flush_tail = &m->flush_head;
        m->nbd_fd = -1;
        m->downtime_ms = -1;
        m->cut_flush = -1;
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

static void mirror_close(struct vbd_image *img)
{
        struct mirror *m = vbd_image_state(img);
        struct vbd_image *child = vbd_image_child(img);

        if (running(m))
                finish(m, VBD_MIRROR_ABORTED, ECANCELED, "closed");
        /* Copier reads still in flight in the AIO engine: let them land. */
        for (int n = 0; m->slots_busy && n < 100000; n++)
                ev_run(m->loop, EVRUN_ONCE);
        timer_stop(m, &m->tick_w, &m->tick_on);
        timer_stop(m, &m->pace_w, &m->pace_on);
        drop_partner(m);
        reset(m);
        free(m->cut_scratch);
        if (child)
                vbd_image_close(child);
}

const struct vbd_driver vbd_driver_mirror = {
    .abi = VBD_DRIVER_ABI,
    .name = "mirror",
    .description = "migration to an NBD partner (stacked by vbd-ctl migrate)",
    .usage = "(stacked, not opened from a spec)",
    .state_size = sizeof(struct mirror),
    .io_scratch_size = sizeof(struct mio),
    .open = mirror_open,
    .get_info = mirror_get_info,
    .submit = mirror_submit,
    .close = mirror_close,
    .block_status = mirror_block_status,
};

bool vbd_image_is_mirror(struct vbd_image *img)
{
        return img && vbd_image_driver(img) == &vbd_driver_mirror;
}

struct vbd_image *vbd_mirror_wrap(struct ev_loop *loop, struct vbd_image *child,
                                  struct vbd_err *err)
{
        struct vbd_image *img = vbd_image_wrap(&vbd_driver_mirror, child, err);
        struct mirror *m;

        if (!img)
                return NULL;
        m = vbd_image_state(img);
        m->loop = loop;
        ev_init(&m->nbd_w, nbd_io_cb);
        m->nbd_w.data = m;
        ev_init(&m->tick_w, tick_cb);
        m->tick_w.data = m;
        ev_init(&m->pace_w, pace_cb);
        m->pace_w.data = m;
        m->cut_scratch = calloc(1, vbd_image_io_scratch_size(child) + 1);
        if (!m->cut_scratch) {
                vbd_image_unwrap(img);
                vbd_err_set(err, -ENOMEM, "out of memory");
                return NULL;
        }
        return img;
}
