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
#include "xen.h"

#define REQ_MAX_BYTES (VBD_RING_MAX_SEGMENTS * VBD_PAGE_SIZE)
#define MAX_PASSES    8 /* ring passes per loop iteration before yielding */

/* Kinds of malformed requests, each with its own log rate limit. */
enum bad_kind { BAD_READONLY, BAD_SEGMENTS, BAD_SECTORS, BAD_RANGE, BAD_OP, _BAD_MAX };

enum req_phase { PHASE_FREE, PHASE_BARRIER_WAIT, PHASE_IO, PHASE_FLUSH_AFTER, PHASE_DONE };

struct vbd_req {
        struct vbd_io io;
        struct vbd *vbd;
        struct vbd_req *next; /* free list or done list */
        uint64_t id;
        uint8_t operation;
        uint8_t nr_segs;
        int16_t status;
        enum req_phase phase;
        struct vbd_ring_seg seg[VBD_RING_MAX_SEGMENTS];
        struct iovec iov;
        uint8_t *bounce;
        uint32_t copy_first; /* index of its first segment in the copy batch */
        uint64_t start_ns;   /* when it was taken from the ring */
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
        void *ring_mem;
        unsigned ring_pages;
        struct vbd_ring ring;
        uint32_t local_port;
        ev_io evtchn_watcher;
        ev_prepare flush_watcher;
        ev_idle kick_watcher;
        void (*closed_cb)(void *opaque);
        void *closed_opaque;

        /* pool */
        struct vbd_req *reqs;
        unsigned nr_reqs;
        uint8_t *bounce_mem;
        size_t bounce_size;
        uint8_t *scratch_mem;
        size_t scratch_size;
        struct vbd_req *free_list;
        struct vbd_req *done_head, **done_tail;
        struct vbd_req *barrier; /* a WRITE_BARRIER waiting for the queue to drain */
        unsigned inflight;       /* requests handed to the image and not completed */
        xengnttab_grant_copy_segment_t *copy;
        struct vbd_req **copy_reqs;

        struct vbd_ratelimit rl;               /* I/O and grant errors */
        struct vbd_ratelimit rl_bad[_BAD_MAX]; /* per kind: one flood can't hide another */
        struct vbd_stats stats;
};

static void vbd_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
static void vbd_evtchn_cb(struct ev_loop *loop, ev_io *w, int revents);
static void vbd_kick_cb(struct ev_loop *loop, ev_idle *w, int revents);
static void vbd_process_ring(struct vbd *v);
static void vbd_maybe_closed(struct vbd *v);
static void pause_check(struct vbd *v);

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
        for (unsigned i = 0; i < _BAD_MAX; i++)
                v->rl_bad[i] = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 5);
        ev_prepare_init(&v->flush_watcher, vbd_flush_cb);
        ev_set_priority(&v->flush_watcher, EV_MAXPRI);
        v->flush_watcher.data = v;
        ev_idle_init(&v->kick_watcher, vbd_kick_cb);
        v->kick_watcher.data = v;
        return v;
}

static void pool_free(struct vbd *v)
{
        if (v->bounce_mem)
                munmap(v->bounce_mem, v->bounce_size);
        free(v->scratch_mem);
        free(v->reqs);
        free(v->copy);
        free(v->copy_reqs);
        v->bounce_mem = NULL;
        v->scratch_mem = NULL;
        v->reqs = NULL;
        v->copy = NULL;
        v->copy_reqs = NULL;
        v->free_list = NULL;
}

static int pool_alloc(struct vbd *v, unsigned n)
{
        size_t scratch = vbd_image_io_scratch_size(v->img);

        scratch = (scratch + 63) & ~(size_t)63;
        v->nr_reqs = n;
        v->reqs = calloc(n, sizeof(*v->reqs));
        v->copy = calloc((size_t)n * VBD_RING_MAX_SEGMENTS, sizeof(*v->copy));
        v->copy_reqs = calloc(n, sizeof(*v->copy_reqs));
        v->scratch_size = scratch;
        v->scratch_mem = scratch ? calloc(n, scratch) : NULL;
        v->bounce_size = (size_t)n * REQ_MAX_BYTES;
        v->bounce_mem =
            mmap(NULL, v->bounce_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (v->bounce_mem == MAP_FAILED)
                v->bounce_mem = NULL;
        if (!v->reqs || !v->copy || !v->copy_reqs || (scratch && !v->scratch_mem) ||
            !v->bounce_mem) {
                pool_free(v);
                return -ENOMEM;
        }
        v->free_list = NULL;
        for (unsigned i = n; i-- > 0;) {
                struct vbd_req *rq = &v->reqs[i];
                rq->vbd = v;
                rq->bounce = v->bounce_mem + (size_t)i * REQ_MAX_BYTES;
                rq->io.scratch = scratch ? v->scratch_mem + (size_t)i * scratch : NULL;
                rq->next = v->free_list;
                v->free_list = rq;
        }
        v->done_head = NULL;
        v->done_tail = &v->done_head;
        return 0;
}

int vbd_connect(struct vbd *v, const uint32_t *refs, unsigned nr_pages, uint32_t remote_port,
                enum vbd_ring_abi abi)
{
        int r;

        if (v->connected)
                return -EALREADY;
        v->ring_mem = vbd_xen_map_grants(v->xen, v->domid, nr_pages, refs);
        if (!v->ring_mem)
                return vbd_log_errno(errno, "cannot map %u ring page(s) of domain %" PRIu32 ": %m",
                                     nr_pages, v->domid);
        v->ring_pages = nr_pages;
        r = vbd_ring_init(&v->ring, v->ring_mem, (size_t)nr_pages * VBD_PAGE_SIZE, abi);
        if (r < 0) {
                vbd_log_errno(r, "bad ring geometry: %m");
                goto fail_unmap;
        }
        r = pool_alloc(v, v->ring.nr_ents);
        if (r < 0) {
                vbd_log_errno(r, "cannot allocate the request pool: %m");
                goto fail_unmap;
        }
        r = vbd_xen_evtchn_bind(v->xen, v->domid, remote_port, &v->local_port);
        if (r < 0) {
                vbd_log_errno(r, "cannot bind event channel %" PRIu32 " of domain %" PRIu32 ": %m",
                              remote_port, v->domid);
                goto fail_pool;
        }
        v->connected = true;
        v->closing = false;
        v->respond = true;
        v->barrier = NULL;
        v->inflight = 0;
        ev_io_init(&v->evtchn_watcher, vbd_evtchn_cb, vbd_xen_evtchn_fd(v->xen), EV_READ);
        v->evtchn_watcher.data = v;
        ev_io_start(v->loop, &v->evtchn_watcher);
        ev_prepare_start(v->loop, &v->flush_watcher);
        vbd_info("connected: %u ring page(s), %u slots, %s ABI, event channel %" PRIu32, nr_pages,
                 v->ring.nr_ents, v->ring.abi == VBD_RING_ABI_X86_32 ? "x86_32" : "x86_64",
                 remote_port);
        /* Requests may already be waiting. */
        vbd_process_ring(v);
        return 0;

fail_pool:
        pool_free(v);
fail_unmap:
        (void)vbd_xen_unmap(v->xen, v->ring_mem, nr_pages);
        v->ring_mem = NULL;
        return r;
}

static void vbd_teardown(struct vbd *v)
{
        ev_io_stop(v->loop, &v->evtchn_watcher);
        ev_prepare_stop(v->loop, &v->flush_watcher);
        ev_idle_stop(v->loop, &v->kick_watcher);
        (void)vbd_xen_evtchn_unbind(v->xen, v->local_port);
        (void)vbd_xen_unmap(v->xen, v->ring_mem, v->ring_pages);
        v->ring_mem = NULL;
        pool_free(v);
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

static void vbd_maybe_closed(struct vbd *v)
{
        void (*cb)(void *);

        if (!v->closing || v->inflight || v->done_head || v->barrier)
                return;
        if (v->respond && vbd_ring_push_responses(&v->ring))
                (void)vbd_xen_evtchn_notify(v->xen, v->local_port);
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
        return v->inflight;
}

void vbd_get_stats(const struct vbd *v, struct vbd_stats *ret)
{
        *ret = v->stats;
        ret->inflight = v->connected ? vbd_ring_outstanding(&v->ring) : 0;
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

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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
        return v->paused && !v->inflight && !v->done_head && !v->barrier &&
               (!v->connected || vbd_ring_outstanding(&v->ring) == 0);
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
        if (v->connected && vbd_image_io_scratch_size(img) > v->scratch_size)
                return -EINVAL; /* the pool was sized for the old driver */
        v->img = img;
        v->info = vbd_image_info(img);
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
        struct vbd *v = rq->vbd;

        rq->status = blkif_status(status);
        rq->phase = PHASE_DONE;
        rq->next = NULL;
        *v->done_tail = rq;
        v->done_tail = &rq->next;
}

static void io_done(struct vbd_io *io, int status)
{
        struct vbd_req *rq = io->opaque;
        struct vbd *v = rq->vbd;

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
        v->inflight--;
        req_finish(rq, status);
}

/* Hand a validated request to the image. */
static void req_submit(struct vbd *v, struct vbd_req *rq)
{
        bool barrier = rq->operation == BLKIF_OP_WRITE_BARRIER;

        v->inflight++;
        rq->phase = PHASE_IO;
        if (rq->operation == BLKIF_OP_FLUSH_DISKCACHE || (barrier && rq->iov.iov_len == 0)) {
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

static void bad_request(struct vbd *v, const struct vbd_ring_req *req, enum bad_kind kind,
                        const char *why)
{
        v->stats.bad_requests++;
        if (vbd_ratelimit_ok(&v->rl_bad[kind]))
                vbd_warn("bad request id %" PRIu64 " op %u: %s", req->id, req->operation, why);
}

/*
 * Check a READ/WRITE/WRITE_BARRIER request against the blkif rules and the
 * image.  Fills rq's segments, iov and io range.  Returns 0 or -errno.
 */
static int req_validate_rw(struct vbd *v, const struct vbd_ring_req *req, struct vbd_req *rq)
{
        uint64_t len = 0, size = v->info->size;
        unsigned min = req->operation == BLKIF_OP_WRITE_BARRIER ? 0 : 1;

        if (req->operation != BLKIF_OP_READ && v->readonly) {
                bad_request(v, req, BAD_READONLY, "write to a read-only disk");
                return -EROFS;
        }
        if (req->nr_segments < min || req->nr_segments > VBD_RING_MAX_SEGMENTS) {
                bad_request(v, req, BAD_SEGMENTS, "nr_segments out of range");
                return -EINVAL;
        }
        for (unsigned i = 0; i < req->nr_segments; i++) {
                const struct vbd_ring_seg *s = &req->seg[i];
                if (s->first_sect > s->last_sect ||
                    s->last_sect >= VBD_PAGE_SIZE / VBD_SECTOR_SIZE) {
                        bad_request(v, req, BAD_SECTORS, "bad segment sector range");
                        return -EINVAL;
                }
                rq->seg[i] = *s;
                len += (uint64_t)(s->last_sect - s->first_sect + 1) * VBD_SECTOR_SIZE;
        }
        if (req->sector_number > size / VBD_SECTOR_SIZE ||
            len > size - req->sector_number * VBD_SECTOR_SIZE) {
                bad_request(v, req, BAD_RANGE, "sector range past the end of the disk");
                return -EINVAL;
        }
        rq->nr_segs = req->nr_segments;
        rq->iov = (struct iovec){.iov_base = rq->bounce, .iov_len = len};
        rq->io.offset = req->sector_number * VBD_SECTOR_SIZE;
        rq->io.len = len;
        return 0;
}

/* Append rq's segments to the copy batch (guest -> bounce or bounce -> guest). */
static unsigned stage_copy(struct vbd *v, struct vbd_req *rq, unsigned n, bool to_guest)
{
        uint32_t pos = 0;

        rq->copy_first = n;
        for (unsigned i = 0; i < rq->nr_segs; i++) {
                xengnttab_grant_copy_segment_t *c = &v->copy[n++];
                uint16_t off = rq->seg[i].first_sect * VBD_SECTOR_SIZE;
                uint16_t len = (rq->seg[i].last_sect - rq->seg[i].first_sect + 1) * VBD_SECTOR_SIZE;

                memset(c, 0, sizeof(*c));
                if (to_guest) {
                        c->source.virt = rq->bounce + pos;
                        c->dest.foreign.ref = rq->seg[i].gref;
                        c->dest.foreign.domid = (domid_t)v->domid;
                        c->dest.foreign.offset = off;
                        c->flags = GNTCOPY_dest_gref;
                } else {
                        c->source.foreign.ref = rq->seg[i].gref;
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

/* Run the batch; returns per request whether all its segments succeeded. */
static int run_copy(struct vbd *v, unsigned nsegs)
{
        int r;

        if (nsegs == 0)
                return 0;
        v->stats.batches++;
        r = vbd_xen_grant_copy(v->xen, nsegs, v->copy);
        if (r < 0 && vbd_ratelimit_ok(&v->rl))
                vbd_log_errno(r, "grant copy of %u segments failed: %m", nsegs);
        return r;
}

static bool copy_ok(struct vbd *v, struct vbd_req *rq, int batch_status)
{
        if (batch_status < 0)
                return false;
        for (unsigned i = 0; i < rq->nr_segs; i++) {
                int16_t st = v->copy[rq->copy_first + i].status;
                if (st != GNTST_okay) {
                        v->stats.grant_errors++;
                        if (vbd_ratelimit_ok(&v->rl))
                                vbd_warn("request id %" PRIu64 ": grant copy of gref %" PRIu32
                                         " failed (status %d)",
                                         rq->id, rq->seg[i].gref, st);
                        return false;
                }
        }
        return true;
}

/* Consume requests from the ring.  Returns true if the ring must be dropped. */
static bool consume(struct vbd *v)
{
        unsigned nsegs = 0, nwrites = 0;
        struct vbd_ring_req req;
        bool bogus = false;
        int r;

        while (!v->barrier && v->free_list) {
                struct vbd_req *rq;

                r = vbd_ring_get_request(&v->ring, &req);
                if (r == -EPROTO) {
                        bogus = true;
                        break;
                }
                if (r == 0)
                        break;
                rq = v->free_list;
                v->free_list = rq->next;
                rq->id = req.id;
                rq->operation = req.operation;
                rq->nr_segs = 0;
                rq->io.flags = 0;
                rq->start_ns = now_ns();
                op_stats(v, req.operation)->requests++;

                switch (req.operation) {
                case BLKIF_OP_READ:
                case BLKIF_OP_WRITE:
                case BLKIF_OP_WRITE_BARRIER:
                        r = req_validate_rw(v, &req, rq);
                        if (r < 0) {
                                req_finish(rq, r);
                                continue;
                        }
                        op_stats(v, req.operation)->bytes += rq->io.len;
                        if (req.operation == BLKIF_OP_WRITE_BARRIER) {
                                /* Everything before it completes first, nothing after it starts. */
                                rq->phase = PHASE_BARRIER_WAIT;
                                v->barrier = rq;
                        } else if (req.operation == BLKIF_OP_WRITE) {
                                nsegs = stage_copy(v, rq, nsegs, false);
                                v->copy_reqs[nwrites++] = rq;
                        } else {
                                req_submit(v, rq);
                        }
                        break;
                case BLKIF_OP_FLUSH_DISKCACHE:
                        if (v->readonly) {
                                req_finish(rq, 0); /* nothing to flush */
                                break;
                        }
                        req_submit(v, rq);
                        break;
                default:
                        bad_request(v, &req, BAD_OP, "unsupported operation");
                        req_finish(rq, -EOPNOTSUPP);
                        break;
                }
        }

        if (nwrites) {
                int st = run_copy(v, nsegs);
                for (unsigned i = 0; i < nwrites; i++) {
                        struct vbd_req *rq = v->copy_reqs[i];
                        if (copy_ok(v, rq, st))
                                req_submit(v, rq);
                        else
                                req_finish(rq, -EFAULT);
                }
        }
        return bogus;
}

/* Start a waiting barrier once nothing else is in flight. */
static void barrier_try(struct vbd *v)
{
        struct vbd_req *rq = v->barrier;

        if (!rq || v->inflight)
                return;
        v->barrier = NULL;
        if (rq->nr_segs) {
                unsigned n = stage_copy(v, rq, 0, false);
                if (!copy_ok(v, rq, run_copy(v, n))) {
                        req_finish(rq, -EFAULT);
                        return;
                }
        }
        req_submit(v, rq);
}

static void vbd_process_ring(struct vbd *v)
{
        if (!v->connected || v->closing || v->paused)
                return;
        for (;;) {
                barrier_try(v);
                if (consume(v)) {
                        vbd_err("bogus ring: producer index more than a ring ahead of the "
                                "responses; dropping the ring");
                        v->closing = true; /* take no more requests */
                        if (v->fatal)
                                v->fatal(v->fatal_opaque);
                        return;
                }
                if (v->barrier || !v->free_list)
                        return; /* resumed when requests complete */
                if (!vbd_ring_final_check(&v->ring))
                        return;
        }
}

/* Copy out READ data and produce every pending response; notify once. */
static void respond_all(struct vbd *v)
{
        struct vbd_req *head = v->done_head, *rq;
        unsigned nsegs = 0, nreads = 0;
        int st = 0;
        uint64_t t;

        v->done_head = NULL;
        v->done_tail = &v->done_head;
        if (!head)
                return;
        t = now_ns();

        if (v->respond) {
                for (rq = head; rq; rq = rq->next)
                        if (rq->operation == BLKIF_OP_READ && rq->status == BLKIF_RSP_OKAY &&
                            rq->nr_segs) {
                                nsegs = stage_copy(v, rq, nsegs, true);
                                nreads++;
                        }
                if (nreads)
                        st = run_copy(v, nsegs);
        }
        while ((rq = head)) {
                head = rq->next;
                if (v->respond) {
                        if (rq->operation == BLKIF_OP_READ && rq->status == BLKIF_RSP_OKAY &&
                            rq->nr_segs && !copy_ok(v, rq, st))
                                rq->status = BLKIF_RSP_ERROR;
                        if (rq->status != BLKIF_RSP_OKAY)
                                op_stats(v, rq->operation)->errors++;
                        account_latency(op_stats(v, rq->operation), t - rq->start_ns);
                        vbd_ring_put_response(&v->ring, rq->id, rq->operation, rq->status);
                }
                rq->phase = PHASE_FREE;
                rq->next = v->free_list;
                v->free_list = rq;
        }
}

static void vbd_flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct vbd *v = w->data;
        unsigned pass;

        for (pass = 0; pass < MAX_PASSES && v->connected; pass++) {
                bool more;

                respond_all(v);
                if (v->respond && vbd_ring_push_responses(&v->ring)) {
                        v->stats.notifies++;
                        (void)vbd_xen_evtchn_notify(v->xen, v->local_port);
                }
                pause_check(v);
                if (v->closing) {
                        barrier_try(v);
                        vbd_maybe_closed(v);
                        if (!v->connected || !v->done_head)
                                return;
                        continue;
                }
                vbd_process_ring(v);
                more = v->done_head != NULL;
                if (!more)
                        break;
        }
        /* Still work to do: don't let the loop block. */
        if (v->connected && v->done_head)
                ev_idle_start(loop, &v->kick_watcher);
}

static void vbd_kick_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
        ev_idle_stop(loop, w); /* the prepare watcher does the work */
}

static void vbd_evtchn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd *v = w->data;
        int r = vbd_xen_evtchn_drain(v->xen);

        if (r < 0 && vbd_ratelimit_ok(&v->rl))
                vbd_log_errno(r, "reading the event channel failed: %m");
        vbd_process_ring(v);
}
