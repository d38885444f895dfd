/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "ring"
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <xen/io/blkif.h>
#include <xengnttab.h>

#include "image.h"
#include "vbd.h"
#include "vbd/log.h"
#include "vbd/time.h"
#include "xen.h"

#define REQ_MAX_BYTES (VBD_RING_MAX_SEGMENTS * VBD_PAGE_SIZE)
#define MAX_PASSES    8 /* ring passes per loop iteration before yielding */

#define MAX_BIG       64 /* indirect-capable slots: bounds a guest's hold on memory */
#define BIG_MAX_BYTES ((size_t)VBD_RING_MAX_INDIRECT_SEGMENTS * VBD_PAGE_SIZE)
#define BIG_DESC_PAGES                                                                             \
        ((VBD_RING_MAX_INDIRECT_SEGMENTS + VBD_RING_SEGS_PER_INDIRECT_PAGE - 1) /                  \
         VBD_RING_SEGS_PER_INDIRECT_PAGE)
#define BAD_KINDS 16 /* distinct malformed-request messages, each rate-limited alone */

/* What an indirect request needs besides a ring slot: its segment table and
 * a bounce buffer for up to VBD_RING_MAX_INDIRECT_SEGMENTS pages. */
struct vbd_big {
        struct vbd_big *next;
        uint8_t *bounce;
        uint8_t *desc; /* the indirect pages, copied from the guest */
        struct vbd_ring_seg segs[VBD_RING_MAX_INDIRECT_SEGMENTS];
};

enum req_phase { PHASE_FREE, PHASE_BARRIER_WAIT, PHASE_IO, PHASE_FLUSH_AFTER, PHASE_DONE };

struct vbd_req {
        struct vbd_io io;
        struct vbd_queue *q;
        struct vbd_req *next; /* free list or done list */
        uint64_t id;
        uint8_t operation; /* echoed in the response (the inner op of an indirect one) */
        uint16_t nr_segs;
        int16_t status;
        enum req_phase phase;
        struct vbd_ring_xfer xfer;
        struct vbd_ring_seg *segs; /* seg, or big->segs */
        struct vbd_ring_seg seg[VBD_RING_MAX_SEGMENTS];
        struct vbd_big *big; /* indirect requests only */
        struct iovec iov;
        uint8_t *bounce; /* small_bounce, or big->bounce */
        uint8_t *small_bounce;
        uint32_t copy_first; /* index of its first segment in the copy batch */
        uint64_t start_ns;   /* when it was taken from the ring */
};

/*
 * One ring of the device (blkif multi-queue: one per frontend queue) with
 * its own request pool: requests taken from a queue are answered on it.
 * All queues share the device's image, AIO engine, loop and statistics.
 */
struct vbd_queue {
        struct vbd *vbd;
        unsigned idx;
        void *ring_mem;
        unsigned ring_pages;
        struct vbd_ring ring;
        uint32_t local_port, remote_port;
        bool mapped, bound;

        /* pool */
        struct vbd_req *reqs;
        unsigned nr_reqs;
        uint8_t *bounce_mem;
        size_t bounce_size;
        uint8_t *scratch_mem;
        struct vbd_req *free_list;
        struct vbd_req *done_head, **done_tail;
        struct vbd_req *barrier; /* a WRITE_BARRIER waiting for the queue to drain */
        unsigned inflight;       /* requests handed to the image and not completed */
        xengnttab_grant_copy_segment_t *copy;
        struct vbd_req **copy_reqs;
        struct vbd_big *bigs, *big_free;
        unsigned nr_big;
        uint8_t *big_mem;
        size_t big_size;
        xengnttab_grant_copy_segment_t *desc_copy; /* indirect pages, one batch per pass */
        struct vbd_req **desc_reqs;
        /* an indirect request read from the ring while no indirect slot was
         * free: taken first once one is (the ring is read once per request) */
        struct vbd_ring_req stash;
        bool have_stash;
};

struct vbd {
        struct ev_loop *loop;
        struct vbd_xen *xen;
        struct vbd_image *img;
        const struct vbd_info *info;
        uint32_t domid;
        bool readonly;
        vbd_fatal_fn fatal;
        void *fatal_opaque;

        /* connection */
        bool connected, closing, respond;
        bool paused;
        void (*paused_cb)(void *opaque);
        void *paused_opaque;
        unsigned nr_queues;
        struct vbd_queue queue[VBD_RING_MAX_QUEUES];
        size_t scratch_size;  /* per request, the same in every queue */
        ev_io evtchn_watcher; /* one event channel device: every queue's port */
        ev_prepare flush_watcher;
        ev_idle kick_watcher;
        void (*closed_cb)(void *opaque);
        void *closed_opaque;
        struct vbd_ring_limits limits;

        struct vbd_ratelimit rl; /* I/O and grant errors */
        struct {
                const char *why;
                struct vbd_ratelimit rl;
        } rl_bad[BAD_KINDS]; /* per message: one flood can't hide another */
        struct vbd_stats stats;
};

static void vbd_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
static void vbd_evtchn_cb(struct ev_loop *loop, ev_io *w, int revents);
static void vbd_kick_cb(struct ev_loop *loop, ev_idle *w, int revents);
static void vbd_process_rings(struct vbd *v);
static void vbd_maybe_closed(struct vbd *v);
static void pause_check(struct vbd *v);

static void set_limits(struct vbd *v)
{
        v->limits = (struct vbd_ring_limits){
            .size = v->info->size,
            .readonly = v->readonly,
            .discard = !v->readonly && (v->info->caps & VBD_CAP_DISCARD),
            .max_indirect_segments = VBD_RING_MAX_INDIRECT_SEGMENTS,
        };
}

struct vbd *vbd_new(struct ev_loop *loop, struct vbd_xen *x, struct vbd_image *img,
                    uint32_t frontend_domid, bool readonly, vbd_fatal_fn fatal, void *opaque)
{
        struct vbd *v = calloc(1, sizeof(*v));

        if (!v)
                return NULL;
        v->loop = loop;
        v->xen = x;
        v->img = img;
        v->info = vbd_image_info(img);
        v->domid = frontend_domid;
        v->readonly = readonly;
        v->fatal = fatal;
        v->fatal_opaque = opaque;
        v->rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 10);
        set_limits(v);
        ev_prepare_init(&v->flush_watcher, vbd_flush_cb);
        ev_set_priority(&v->flush_watcher, EV_MAXPRI);
        v->flush_watcher.data = v;
        ev_idle_init(&v->kick_watcher, vbd_kick_cb);
        v->kick_watcher.data = v;
        return v;
}

static void pool_free(struct vbd_queue *q)
{
        if (q->bounce_mem)
                munmap(q->bounce_mem, q->bounce_size);
        if (q->big_mem)
                munmap(q->big_mem, q->big_size);
        free(q->bigs);
        free(q->desc_copy);
        free(q->desc_reqs);
        q->big_mem = NULL;
        q->bigs = q->big_free = NULL;
        q->desc_copy = NULL;
        q->desc_reqs = NULL;
        free(q->scratch_mem);
        free(q->reqs);
        free(q->copy);
        free(q->copy_reqs);
        q->bounce_mem = NULL;
        q->scratch_mem = NULL;
        q->reqs = NULL;
        q->copy = NULL;
        q->copy_reqs = NULL;
        q->free_list = NULL;
}

static void *map_anon(size_t size)
{
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        return p == MAP_FAILED ? NULL : p;
}

/*
 * Everything a queue's data path uses, sized by its ring: n request slots
 * with an 11-segment bounce buffer each, nr_big indirect slots with a 1 MiB
 * bounce buffer each (touched only when used; MAX_BIG shared by the queues,
 * at least 16 each), and the grant copy batches.
 */
static int pool_alloc(struct vbd_queue *q, unsigned n, unsigned nr_queues)
{
        size_t scratch = q->vbd->scratch_size;
        unsigned big = MAX_BIG / nr_queues < 16 ? 16 : MAX_BIG / nr_queues;
        size_t max_copy;

        q->nr_reqs = n;
        q->nr_big = n < big ? n : big;
        max_copy =
            (size_t)n * VBD_RING_MAX_SEGMENTS + (size_t)q->nr_big * VBD_RING_MAX_INDIRECT_SEGMENTS;
        q->reqs = calloc(n, sizeof(*q->reqs));
        q->copy = calloc(max_copy, sizeof(*q->copy));
        q->copy_reqs = calloc(n, sizeof(*q->copy_reqs));
        q->scratch_mem = scratch ? calloc(n, scratch) : NULL;
        q->bounce_size = (size_t)n * REQ_MAX_BYTES;
        q->bounce_mem = map_anon(q->bounce_size);
        q->bigs = calloc(q->nr_big, sizeof(*q->bigs));
        q->big_size = (size_t)q->nr_big * (BIG_MAX_BYTES + BIG_DESC_PAGES * VBD_PAGE_SIZE);
        q->big_mem = map_anon(q->big_size);
        q->desc_copy = calloc((size_t)q->nr_big * BIG_DESC_PAGES, sizeof(*q->desc_copy));
        q->desc_reqs = calloc(q->nr_big, sizeof(*q->desc_reqs));
        if (!q->reqs || !q->copy || !q->copy_reqs || (scratch && !q->scratch_mem) ||
            !q->bounce_mem || !q->bigs || !q->big_mem || !q->desc_copy || !q->desc_reqs) {
                pool_free(q);
                return -ENOMEM;
        }
        q->free_list = NULL;
        for (unsigned i = n; i-- > 0;) {
                struct vbd_req *rq = &q->reqs[i];
                rq->q = q;
                rq->small_bounce = q->bounce_mem + (size_t)i * REQ_MAX_BYTES;
                rq->io.scratch = scratch ? q->scratch_mem + (size_t)i * scratch : NULL;
                rq->next = q->free_list;
                q->free_list = rq;
        }
        q->big_free = NULL;
        for (unsigned i = q->nr_big; i-- > 0;) {
                struct vbd_big *b = &q->bigs[i];
                b->bounce = q->big_mem + (size_t)i * BIG_MAX_BYTES;
                b->desc = q->big_mem + (size_t)q->nr_big * BIG_MAX_BYTES +
                          (size_t)i * BIG_DESC_PAGES * VBD_PAGE_SIZE;
                b->next = q->big_free;
                q->big_free = b;
        }
        q->done_head = NULL;
        q->done_tail = &q->done_head;
        q->barrier = NULL;
        q->inflight = 0;
        q->have_stash = false;
        return 0;
}

/* Undo what queue_setup did (whatever part of it). */
static void queue_release(struct vbd_queue *q)
{
        struct vbd *v = q->vbd;

        if (q->bound)
                (void)vbd_xen_evtchn_unbind(v->xen, q->local_port);
        if (q->mapped)
                (void)vbd_xen_unmap(v->xen, q->ring_mem, q->ring_pages);
        q->bound = q->mapped = false;
        q->ring_mem = NULL;
        q->local_port = 0;
        pool_free(q);
}

/* Map queue q's ring pages, allocate its pool, bind its event channel. */
static int queue_setup(struct vbd_queue *q, const struct vbd_ring_config *rc)
{
        const struct vbd_queue_config *qc = &rc->queue[q->idx];
        struct vbd *v = q->vbd;
        int r;

        q->ring_mem = vbd_xen_map_grants(v->xen, v->domid, rc->nr_pages, qc->refs);
        if (!q->ring_mem)
                return vbd_log_errno(
                    errno, "cannot map %u ring page(s) of queue %u of domain %" PRIu32 ": %m",
                    rc->nr_pages, q->idx, v->domid);
        q->mapped = true;
        q->ring_pages = rc->nr_pages;
        r = vbd_ring_init(&q->ring, q->ring_mem, (size_t)rc->nr_pages * VBD_PAGE_SIZE, rc->abi);
        if (r < 0)
                return vbd_log_errno(r, "bad ring geometry: %m");
        r = pool_alloc(q, q->ring.nr_ents, rc->nr_queues);
        if (r < 0)
                return vbd_log_errno(r, "cannot allocate the request pool of queue %u: %m", q->idx);
        r = vbd_xen_evtchn_bind(v->xen, v->domid, qc->port, &q->local_port);
        if (r < 0)
                return vbd_log_errno(r,
                                     "cannot bind event channel %" PRIu32 " (queue %u) of domain "
                                     "%" PRIu32 ": %m",
                                     qc->port, q->idx, v->domid);
        q->bound = true;
        q->remote_port = qc->port;
        return 0;
}

int vbd_connect(struct vbd *v, const struct vbd_ring_config *rc)
{
        /* Room for a driver stacked later (a migration's mirror) too. */
        size_t scratch = vbd_image_io_scratch_size(v->img) + VBD_IMAGE_STACK_SCRATCH;
        char ports[VBD_RING_MAX_QUEUES * 11 + 1];
        size_t pl = 0;
        int r = 0;

        if (v->connected)
                return -EALREADY;
        if (rc->nr_queues < 1 || rc->nr_queues > VBD_RING_MAX_QUEUES)
                return -EINVAL;
        v->scratch_size = (scratch + 63) & ~(size_t)63;
        ports[0] = '\0';
        for (unsigned i = 0; i < rc->nr_queues; i++) {
                struct vbd_queue *q = &v->queue[i];

                memset(q, 0, sizeof(*q));
                q->vbd = v;
                q->idx = i;
                r = queue_setup(q, rc);
                if (r < 0) {
                        for (unsigned k = 0; k <= i; k++)
                                queue_release(&v->queue[k]);
                        return r;
                }
                pl += (size_t)snprintf(ports + pl, sizeof(ports) - pl, "%s%" PRIu32, i ? "," : "",
                                       rc->queue[i].port);
        }
        v->nr_queues = rc->nr_queues;
        v->connected = true;
        v->closing = false;
        v->respond = true;
        v->stats.queues = v->nr_queues;
        ev_io_init(&v->evtchn_watcher, vbd_evtchn_cb, vbd_xen_evtchn_fd(v->xen), EV_READ);
        v->evtchn_watcher.data = v;
        ev_io_start(v->loop, &v->evtchn_watcher);
        ev_prepare_start(v->loop, &v->flush_watcher);
        vbd_info("connected: %u queue(s) of %u ring page(s), %u slots each, %s ABI, event "
                 "channel(s) %s",
                 v->nr_queues, rc->nr_pages, v->queue[0].ring.nr_ents,
                 rc->abi == VBD_RING_ABI_X86_32 ? "x86_32" : "x86_64", ports);
        /* Requests may already be waiting. */
        vbd_process_rings(v);
        return 0;
}

static void vbd_teardown(struct vbd *v)
{
        ev_io_stop(v->loop, &v->evtchn_watcher);
        ev_prepare_stop(v->loop, &v->flush_watcher);
        ev_idle_stop(v->loop, &v->kick_watcher);
        for (unsigned i = 0; i < v->nr_queues; i++)
                queue_release(&v->queue[i]);
        v->nr_queues = 0;
        v->connected = false;
}

void vbd_disconnect(struct vbd *v, bool respond, void (*done)(void *opaque), void *opaque)
{
        if (!v->connected) {
                if (done)
                        done(opaque);
                return;
        }
        v->closing = true;
        v->respond = v->respond && respond;
        v->closed_cb = done;
        v->closed_opaque = opaque;
        vbd_maybe_closed(v);
}

/* Nothing taken from any ring is still being served. */
static bool vbd_idle(const struct vbd *v)
{
        for (unsigned i = 0; i < v->nr_queues; i++) {
                const struct vbd_queue *q = &v->queue[i];

                if (q->inflight || q->done_head || q->barrier)
                        return false;
        }
        return true;
}

static void vbd_maybe_closed(struct vbd *v)
{
        void (*cb)(void *);

        if (!v->closing || !vbd_idle(v))
                return;
        for (unsigned i = 0; v->respond && i < v->nr_queues; i++)
                if (vbd_ring_push_responses(&v->queue[i].ring))
                        (void)vbd_xen_evtchn_notify(v->xen, v->queue[i].local_port);
        vbd_teardown(v);
        vbd_info("disconnected");
        pause_check(v);
        cb = v->closed_cb;
        v->closed_cb = NULL;
        if (cb)
                cb(v->closed_opaque);
}

bool vbd_is_connected(const struct vbd *v)
{
        return v->connected;
}

unsigned vbd_inflight(const struct vbd *v)
{
        unsigned n = 0;

        for (unsigned i = 0; i < v->nr_queues; i++)
                n += v->queue[i].inflight;
        return n;
}

unsigned vbd_queues(const struct vbd *v)
{
        return v->connected ? v->nr_queues : 0;
}

void vbd_get_stats(const struct vbd *v, struct vbd_stats *ret)
{
        *ret = v->stats;
        ret->inflight = 0;
        for (unsigned i = 0; v->connected && i < v->nr_queues; i++)
                ret->inflight += vbd_ring_outstanding(&v->queue[i].ring);
        ret->queues = vbd_queues(v);
}

uint64_t vbd_stats_percentile(const struct vbd_op_stats *s, double p)
{
        uint64_t total = 0, seen = 0;

        for (unsigned i = 0; i < VBD_LAT_BUCKETS; i++)
                total += s->lat_hist[i];
        if (!total)
                return 0;
        for (unsigned i = 0; i < VBD_LAT_BUCKETS; i++) {
                seen += s->lat_hist[i];
                if ((double)seen >= p * (double)total)
                        return 2ull << i;
        }
        return 2ull << (VBD_LAT_BUCKETS - 1);
}

static void account_latency(struct vbd_op_stats *s, uint64_t ns)
{
        uint64_t us = ns / 1000;
        unsigned b = 0;

        s->lat_sum_us += us;
        while (us > 1 && b < VBD_LAT_BUCKETS - 1) {
                us >>= 1;
                b++;
        }
        s->lat_hist[b]++;
}

bool vbd_is_paused(const struct vbd *v)
{
        return v->paused;
}

bool vbd_is_drained(const struct vbd *v)
{
        if (!v->paused || !vbd_idle(v))
                return false;
        for (unsigned i = 0; v->connected && i < v->nr_queues; i++)
                if (vbd_ring_outstanding(&v->queue[i].ring))
                        return false;
        return true;
}

static void pause_check(struct vbd *v)
{
        void (*cb)(void *);

        if (!v->paused_cb || !vbd_is_drained(v))
                return;
        cb = v->paused_cb;
        v->paused_cb = NULL;
        cb(v->paused_opaque);
}

void vbd_pause(struct vbd *v, void (*done)(void *opaque), void *opaque)
{
        v->paused = true;
        v->paused_cb = done;
        v->paused_opaque = opaque;
        pause_check(v);
}

void vbd_resume(struct vbd *v)
{
        if (!v->paused)
                return;
        v->paused = false;
        v->paused_cb = NULL;
        if (v->connected)
                ev_feed_event(v->loop, &v->evtchn_watcher, EV_CUSTOM); /* look at the ring */
}

int vbd_set_image(struct vbd *v, struct vbd_image *img)
{
        if (!vbd_is_drained(v))
                return -EBUSY;
        if (v->connected && vbd_image_io_scratch_size(img) > v->scratch_size) {
                /* The pools were sized for the old driver (a raw image after
                 * a migration's switch to qcow2): nothing is in flight, so
                 * every slot's scratch can move to a bigger pool. */
                size_t scratch =
                    (vbd_image_io_scratch_size(img) + VBD_IMAGE_STACK_SCRATCH + 63) & ~(size_t)63;
                uint8_t *mem[VBD_RING_MAX_QUEUES] = {0};

                for (unsigned i = 0; i < v->nr_queues; i++) {
                        if (!(mem[i] = calloc(v->queue[i].nr_reqs, scratch))) {
                                while (i-- > 0)
                                        free(mem[i]);
                                return -ENOMEM;
                        }
                }
                for (unsigned i = 0; i < v->nr_queues; i++) {
                        struct vbd_queue *q = &v->queue[i];

                        free(q->scratch_mem);
                        q->scratch_mem = mem[i];
                        for (unsigned k = 0; k < q->nr_reqs; k++)
                                q->reqs[k].io.scratch = mem[i] + (size_t)k * scratch;
                }
                v->scratch_size = scratch;
        }
        v->img = img;
        v->info = vbd_image_info(img);
        set_limits(v);
        return 0;
}

void vbd_free(struct vbd *v)
{
        if (!v)
                return;
        if (v->connected)
                vbd_teardown(v);
        free(v);
}

/* ---- requests ---- */

static struct vbd_op_stats *op_stats(struct vbd *v, uint8_t operation)
{
        switch (operation) {
        case BLKIF_OP_READ:
                return &v->stats.read;
        case BLKIF_OP_WRITE:
        case BLKIF_OP_WRITE_BARRIER:
                return &v->stats.write;
        case BLKIF_OP_FLUSH_DISKCACHE:
                return &v->stats.flush;
        case BLKIF_OP_DISCARD:
                return &v->stats.discard;
        default:
                return &v->stats.other;
        }
}

static int16_t blkif_status(int status)
{
        if (status == 0)
                return BLKIF_RSP_OKAY;
        if (status == -EOPNOTSUPP)
                return BLKIF_RSP_EOPNOTSUPP;
        return BLKIF_RSP_ERROR;
}

static void req_finish(struct vbd_req *rq, int status)
{
        struct vbd_queue *q = rq->q;

        rq->status = blkif_status(status);
        rq->phase = PHASE_DONE;
        rq->next = NULL;
        *q->done_tail = rq;
        q->done_tail = &rq->next;
}

static void io_done(struct vbd_io *io, int status)
{
        struct vbd_req *rq = io->opaque;
        struct vbd_queue *q = rq->q;
        struct vbd *v = q->vbd;

        if (status == 0 && rq->phase == PHASE_FLUSH_AFTER) {
                /* WRITE_BARRIER: the write is done, now make it durable. */
                rq->phase = PHASE_IO;
                rq->io = (struct vbd_io){
                    .op = VBD_OP_FLUSH, .done = io_done, .opaque = rq, .scratch = rq->io.scratch};
                vbd_image_submit(v->img, &rq->io);
                return;
        }
        if (status < 0 && vbd_ratelimit_ok(&v->rl))
                vbd_warn("%s of %" PRIu64 " bytes at %" PRIu64 " failed: %s", vbd_op_name(io->op),
                         io->len, io->offset, strerror(-status));
        q->inflight--;
        req_finish(rq, status);
}

/* Hand a validated request to the image. */
static void req_submit(struct vbd_queue *q, struct vbd_req *rq)
{
        struct vbd *v = q->vbd;
        bool barrier = rq->operation == BLKIF_OP_WRITE_BARRIER;

        q->inflight++;
        rq->phase = PHASE_IO;
        if (rq->operation == BLKIF_OP_DISCARD) {
                rq->io.op = VBD_OP_DISCARD;
                rq->io.offset = rq->xfer.offset;
                rq->io.len = rq->xfer.len;
                rq->io.iov = NULL;
                rq->io.iovcnt = 0;
        } else if (rq->operation == BLKIF_OP_FLUSH_DISKCACHE || (barrier && rq->iov.iov_len == 0)) {
                rq->io.op = VBD_OP_FLUSH;
                rq->io.offset = rq->io.len = 0;
                rq->io.iov = NULL;
                rq->io.iovcnt = 0;
        } else {
                if (barrier) {
                        if (v->info->caps & VBD_CAP_FUA)
                                rq->io.flags = VBD_IO_FUA;
                        else
                                rq->phase = PHASE_FLUSH_AFTER;
                }
                rq->io.op = rq->operation == BLKIF_OP_READ ? VBD_OP_READ : VBD_OP_WRITE;
                rq->io.iov = &rq->iov;
                rq->io.iovcnt = 1;
        }
        rq->io.done = io_done;
        rq->io.opaque = rq;
        vbd_image_submit(v->img, &rq->io);
}

static void bad_request(struct vbd *v, const struct vbd_ring_req *req, const char *why)
{
        unsigned i;

        v->stats.bad_requests++;
        for (i = 0; i < BAD_KINDS && v->rl_bad[i].why && v->rl_bad[i].why != why; i++)
                ;
        if (i == BAD_KINDS)
                i = BAD_KINDS - 1; /* shares the last limit */
        if (!v->rl_bad[i].why) {
                v->rl_bad[i].why = why;
                v->rl_bad[i].rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 5);
        }
        if (vbd_ratelimit_ok(&v->rl_bad[i].rl))
                vbd_warn("bad request id %" PRIu64 " op %u: %s", req->id, req->operation, why);
}

/* Append rq's segments to the copy batch (guest -> bounce or bounce -> guest). */
static unsigned stage_copy(struct vbd_queue *q, struct vbd_req *rq, unsigned n, bool to_guest)
{
        const struct vbd *v = q->vbd;
        uint32_t pos = 0;

        rq->copy_first = n;
        for (unsigned i = 0; i < rq->nr_segs; i++) {
                xengnttab_grant_copy_segment_t *c = &q->copy[n++];
                const struct vbd_ring_seg *sg = &rq->segs[i];
                uint16_t off = sg->first_sect * VBD_SECTOR_SIZE;
                uint16_t len = (sg->last_sect - sg->first_sect + 1) * VBD_SECTOR_SIZE;

                memset(c, 0, sizeof(*c));
                if (to_guest) {
                        c->source.virt = rq->bounce + pos;
                        c->dest.foreign.ref = sg->gref;
                        c->dest.foreign.domid = (domid_t)v->domid;
                        c->dest.foreign.offset = off;
                        c->flags = GNTCOPY_dest_gref;
                } else {
                        c->source.foreign.ref = sg->gref;
                        c->source.foreign.domid = (domid_t)v->domid;
                        c->source.foreign.offset = off;
                        c->dest.virt = rq->bounce + pos;
                        c->flags = GNTCOPY_source_gref;
                }
                c->len = len;
                pos += len;
        }
        return n;
}

static int run_copy(struct vbd *v, xengnttab_grant_copy_segment_t *segs, unsigned nsegs)
{
        int r;

        if (nsegs == 0)
                return 0;
        v->stats.batches++;
        r = vbd_xen_grant_copy(v->xen, nsegs, segs);
        if (r < 0 && vbd_ratelimit_ok(&v->rl))
                vbd_log_errno(r, "grant copy of %u segments failed: %m", nsegs);
        return r;
}

static bool copy_status_ok(struct vbd *v, struct vbd_req *rq,
                           const xengnttab_grant_copy_segment_t *c, unsigned n, int batch_status)
{
        if (batch_status < 0)
                return false;
        for (unsigned i = 0; i < n; i++) {
                if (c[i].status != GNTST_okay) {
                        v->stats.grant_errors++;
                        if (vbd_ratelimit_ok(&v->rl))
                                vbd_warn("request id %" PRIu64 ": grant copy of gref %" PRIu32
                                         " failed (status %d)",
                                         rq->id,
                                         c[i].flags & GNTCOPY_source_gref ? c[i].source.foreign.ref
                                                                          : c[i].dest.foreign.ref,
                                         c[i].status);
                        return false;
                }
        }
        return true;
}

static bool copy_ok(struct vbd_queue *q, struct vbd_req *rq, int batch_status)
{
        return copy_status_ok(q->vbd, rq, &q->copy[rq->copy_first], rq->nr_segs, batch_status);
}

/* The batch being built by one pass over the ring. */
struct pass {
        unsigned nsegs, nwrites, ndesc, nind;
};

/* A READ/WRITE/WRITE_BARRIER with checked segments: set up its io, then
 * submit it (READ), stage its data copy (WRITE) or park it (BARRIER). */
static void dispatch_rw(struct vbd_queue *q, struct vbd_req *rq, struct pass *ps)
{
        struct vbd *v = q->vbd;
        rq->iov = (struct iovec){.iov_base = rq->bounce, .iov_len = rq->xfer.len};
        rq->io.offset = rq->xfer.offset;
        rq->io.len = rq->xfer.len;
        op_stats(v, rq->operation)->bytes += rq->xfer.len;
        if (rq->operation == BLKIF_OP_WRITE_BARRIER) {
                /* Everything before it completes first, nothing after it starts. */
                rq->phase = PHASE_BARRIER_WAIT;
                q->barrier = rq;
        } else if (rq->operation == BLKIF_OP_WRITE) {
                ps->nsegs = stage_copy(q, rq, ps->nsegs, false);
                q->copy_reqs[ps->nwrites++] = rq;
        } else {
                req_submit(q, rq);
        }
}

/* Take one request off the ring and start it.  Indirect ones wait in the
 * pass for their descriptor pages. */
static void take(struct vbd_queue *q, const struct vbd_ring_req *req, struct pass *ps)
{
        struct vbd *v = q->vbd;
        struct vbd_req *rq = q->free_list;
        const char *why = NULL;
        int r;

        q->free_list = rq->next;
        rq->id = req->id;
        rq->operation = req->operation;
        rq->nr_segs = 0;
        rq->io.flags = 0;
        rq->segs = rq->seg;
        rq->bounce = rq->small_bounce;
        rq->big = NULL;
        rq->start_ns = vbd_now_ns();

        /* Responses to indirect requests carry the inner operation (blkfront
         * compares it with what it sent), even when refusing them. */
        if (req->operation == BLKIF_OP_INDIRECT)
                rq->operation = req->indirect_op;
        r = vbd_ring_check_request(req, &v->limits, &rq->xfer, &why);
        op_stats(v, rq->operation)->requests++;
        v->stats.queue_requests[q->idx]++;
        if (r < 0) {
                bad_request(v, req, why);
                req_finish(rq, r);
                return;
        }

        switch (rq->xfer.op) {
        case BLKIF_OP_FLUSH_DISKCACHE:
                if (v->readonly)
                        req_finish(rq, 0); /* nothing to flush */
                else
                        req_submit(q, rq);
                return;
        case BLKIF_OP_DISCARD:
                op_stats(v, rq->operation)->bytes += rq->xfer.len;
                if (rq->xfer.len == 0)
                        req_finish(rq, 0);
                else
                        req_submit(q, rq);
                return;
        }

        if (req->operation == BLKIF_OP_INDIRECT) {
                struct vbd_big *b = q->big_free;
                unsigned left = rq->xfer.nr_segs;

                if (!b) { /* the guest changed the request after we peeked at it */
                        bad_request(v, req, "indirect request changed while being read");
                        req_finish(rq, -EBUSY);
                        return;
                }
                q->big_free = b->next;
                rq->big = b;
                rq->segs = b->segs;
                rq->bounce = b->bounce;
                for (unsigned i = 0; i < rq->xfer.nr_indirect_pages; i++) {
                        xengnttab_grant_copy_segment_t *c = &q->desc_copy[ps->ndesc++];
                        unsigned n = left < VBD_RING_SEGS_PER_INDIRECT_PAGE
                                         ? left
                                         : VBD_RING_SEGS_PER_INDIRECT_PAGE;

                        memset(c, 0, sizeof(*c));
                        c->source.foreign.ref = req->indirect_grefs[i];
                        c->source.foreign.domid = (domid_t)v->domid;
                        c->dest.virt = b->desc + (size_t)i * VBD_PAGE_SIZE;
                        c->len = (uint16_t)(n * 8);
                        c->flags = GNTCOPY_source_gref;
                        left -= n;
                }
                q->desc_reqs[ps->nind++] = rq;
                return;
        }

        r = vbd_ring_check_segments(req->seg, rq->xfer.nr_segs, v->limits.size, &rq->xfer, &why);
        if (r < 0) {
                bad_request(v, req, why);
                req_finish(rq, r);
                return;
        }
        rq->nr_segs = (uint16_t)rq->xfer.nr_segs;
        memcpy(rq->seg, req->seg, rq->nr_segs * sizeof(rq->seg[0]));
        dispatch_rw(q, rq, ps);
}

/* Indirect requests of this pass: fetch their segment tables, check them. */
static void finish_indirect(struct vbd_queue *q, struct pass *ps)
{
        struct vbd *v = q->vbd;
        unsigned d = 0;
        int st = run_copy(v, q->desc_copy, ps->ndesc);

        for (unsigned i = 0; i < ps->nind; i++) {
                struct vbd_req *rq = q->desc_reqs[i];
                unsigned pages = rq->xfer.nr_indirect_pages;
                struct vbd_ring_req fake = {.id = rq->id, .operation = BLKIF_OP_INDIRECT};
                const char *why = NULL;

                if (!copy_status_ok(v, rq, &q->desc_copy[d], pages, st)) {
                        d += pages;
                        req_finish(rq, -EFAULT);
                        continue;
                }
                d += pages;
                vbd_ring_decode_indirect(rq->big->desc, rq->xfer.nr_segs, rq->segs);
                if (vbd_ring_check_segments(rq->segs, rq->xfer.nr_segs, v->limits.size, &rq->xfer,
                                            &why) < 0) {
                        bad_request(v, &fake, why);
                        req_finish(rq, -EINVAL);
                        continue;
                }
                rq->nr_segs = (uint16_t)rq->xfer.nr_segs;
                dispatch_rw(q, rq, ps);
        }
        ps->ndesc = ps->nind = 0;
}

enum consumed {
        CONSUMED_ALL,     /* the ring is empty (for now) */
        CONSUMED_BLOCKED, /* waiting for a slot, a large slot or a barrier to drain */
        CONSUMED_BOGUS,   /* the ring must be dropped */
};

/* Consume requests from the ring. */
static enum consumed consume(struct vbd_queue *q)
{
        struct vbd *v = q->vbd;
        enum consumed ret = CONSUMED_ALL;
        struct pass ps = {0};
        struct vbd_ring_req req;
        int r;

        for (;;) {
                if (q->barrier || !q->free_list || (q->have_stash && !q->big_free)) {
                        ret = CONSUMED_BLOCKED; /* resumed when requests complete */
                        break;
                }
                if (q->have_stash) {
                        req = q->stash;
                        q->have_stash = false;
                        take(q, &req, &ps);
                        continue;
                }
                r = vbd_ring_get_request(&q->ring, &req);
                if (r == -EPROTO) {
                        ret = CONSUMED_BOGUS;
                        break;
                }
                if (r == 0)
                        break;
                /* Looking at the ring first (peek, then read) would race with
                 * the guest's next request: read it, and keep it if it must wait. */
                if (req.operation == BLKIF_OP_INDIRECT && !q->big_free) {
                        q->stash = req;
                        q->have_stash = true;
                        ret = CONSUMED_BLOCKED;
                        break;
                }
                take(q, &req, &ps);
        }
        if (ps.nind)
                finish_indirect(q, &ps);
        if (ps.nwrites) {
                int st = run_copy(v, q->copy, ps.nsegs);
                for (unsigned i = 0; i < ps.nwrites; i++) {
                        struct vbd_req *rq = q->copy_reqs[i];
                        if (copy_ok(q, rq, st))
                                req_submit(q, rq);
                        else
                                req_finish(rq, -EFAULT);
                }
        }
        return ret;
}

/* Start a waiting barrier once nothing else is in flight. */
static void barrier_try(struct vbd_queue *q)
{
        struct vbd *v = q->vbd;
        struct vbd_req *rq = q->barrier;

        if (!rq || q->inflight)
                return;
        q->barrier = NULL;
        if (rq->nr_segs) {
                unsigned n = stage_copy(q, rq, 0, false);
                if (!copy_ok(q, rq, run_copy(v, q->copy, n))) {
                        req_finish(rq, -EFAULT);
                        return;
                }
        }
        req_submit(q, rq);
}

/* Take what queue q's ring holds, as long as it can be served. */
static void queue_process(struct vbd_queue *q)
{
        struct vbd *v = q->vbd;

        if (!v->connected || v->closing || v->paused)
                return;
        for (;;) {
                barrier_try(q);
                switch (consume(q)) {
                case CONSUMED_BOGUS:
                        vbd_err("bogus ring on queue %u: producer index more than a ring ahead "
                                "of the responses; dropping the rings",
                                q->idx);
                        v->closing = true; /* take no more requests */
                        if (v->fatal)
                                v->fatal(v->fatal_opaque);
                        return;
                case CONSUMED_BLOCKED:
                        return;
                case CONSUMED_ALL:
                        break;
                }
                if (!vbd_ring_final_check(&q->ring))
                        return;
        }
}

/* Every queue (at connect, on resume): stops if one was found bogus. */
static void vbd_process_rings(struct vbd *v)
{
        for (unsigned i = 0; i < v->nr_queues && v->connected && !v->closing; i++)
                queue_process(&v->queue[i]);
}

static bool any_done(const struct vbd *v)
{
        for (unsigned i = 0; i < v->nr_queues; i++)
                if (v->queue[i].done_head)
                        return true;
        return false;
}

/* Copy out READ data and produce every pending response; notify once. */
static void respond_all(struct vbd_queue *q)
{
        struct vbd *v = q->vbd;
        struct vbd_req *head = q->done_head, *rq;
        unsigned nsegs = 0, nreads = 0;
        int st = 0;
        uint64_t t;

        q->done_head = NULL;
        q->done_tail = &q->done_head;
        if (!head)
                return;
        t = vbd_now_ns();

        if (v->respond) {
                for (rq = head; rq; rq = rq->next)
                        if (rq->operation == BLKIF_OP_READ && rq->status == BLKIF_RSP_OKAY &&
                            rq->nr_segs) {
                                nsegs = stage_copy(q, rq, nsegs, true);
                                nreads++;
                        }
                if (nreads)
                        st = run_copy(v, q->copy, nsegs);
        }
        while ((rq = head)) {
                head = rq->next;
                if (v->respond) {
                        if (rq->operation == BLKIF_OP_READ && rq->status == BLKIF_RSP_OKAY &&
                            rq->nr_segs && !copy_ok(q, rq, st))
                                rq->status = BLKIF_RSP_ERROR;
                        if (rq->status != BLKIF_RSP_OKAY)
                                op_stats(v, rq->operation)->errors++;
                        account_latency(op_stats(v, rq->operation), t - rq->start_ns);
                        vbd_ring_put_response(&q->ring, rq->id, rq->operation, rq->status);
                }
                rq->phase = PHASE_FREE;
                if (rq->big) {
                        rq->big->next = q->big_free;
                        q->big_free = rq->big;
                        rq->big = NULL;
                }
                rq->next = q->free_list;
                q->free_list = rq;
        }
}

static void vbd_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct vbd *v = w->data;
        unsigned pass;

        for (pass = 0; pass < MAX_PASSES && v->connected; pass++) {
                for (unsigned i = 0; i < v->nr_queues; i++) {
                        struct vbd_queue *q = &v->queue[i];

                        respond_all(q);
                        if (v->respond && vbd_ring_push_responses(&q->ring)) {
                                v->stats.notifies++;
                                (void)vbd_xen_evtchn_notify(v->xen, q->local_port);
                        }
                }
                pause_check(v);
                if (v->closing) {
                        for (unsigned i = 0; i < v->nr_queues; i++)
                                barrier_try(&v->queue[i]);
                        vbd_maybe_closed(v);
                        if (!v->connected || !any_done(v))
                                return;
                        continue;
                }
                vbd_process_rings(v);
                if (!v->connected || !any_done(v))
                        break;
        }
        /* Still work to do: don't let the loop block. */
        if (v->connected && any_done(v))
                ev_idle_start(loop, &v->kick_watcher);
}

static void vbd_kick_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
        ev_idle_stop(loop, w); /* the prepare watcher does the work */
}

/* The queue whose event channel port this is, or NULL (one just unbound). */
static struct vbd_queue *port_queue(struct vbd *v, uint32_t port)
{
        for (unsigned i = 0; i < v->nr_queues; i++)
                if (v->queue[i].local_port == port)
                        return &v->queue[i];
        return NULL;
}

/*
 * The evtchn fd is readable: take a pending port and look at its queue.
 * With several queues, up to one port per queue in one call: each read
 * gives one port, and leaving the others for the fd's next readiness would
 * cost a loop iteration (an epoll_wait and every watcher) each.  With one
 * queue a single read, so that no read ends in EAGAIN.  EV_CUSTOM (resume):
 * every queue.
 */
static void vbd_evtchn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd *v = w->data;
        unsigned n = v->nr_queues > 1 ? v->nr_queues : 1;
        bool any = false;

        for (unsigned k = 0; k < n; k++) {
                uint32_t port = 0;
                int r = vbd_xen_evtchn_ack(v->xen, &port);
                struct vbd_queue *q;

                if (r < 0 && vbd_ratelimit_ok(&v->rl))
                        vbd_log_errno(r, "reading the event channel failed: %m");
                if (r <= 0)
                        break;
                any = true;
                if (revents & EV_CUSTOM)
                        continue;
                q = port_queue(v, port);
                if (q)
                        queue_process(q);
                /* else not one of ours (a port just unbound): nothing to do */
                if (!v->connected || v->closing)
                        return;
        }
        /* resume, or the read failed: look at every queue */
        if ((revents & EV_CUSTOM) || !any)
                vbd_process_rings(v);
}
