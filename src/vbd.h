/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One virtual block device's data path: the connected ring, the request
 * pool with its bounce buffers, grant copies in batches, the image.
 *
 * Multi-queue: one ring, event channel and request pool per frontend queue;
 * a request is answered on the ring it came from.  The queues share the
 * image, the AIO engine, the loop and the statistics.
 *
 * Requests are consumed when the event channel fires; WRITE data is
 * grant-copied into bounce buffers in one batch per ring pass, then handed
 * to the image.  Completions are collected, and once per loop iteration
 * (an ev_prepare watcher) READ data is grant-copied out in one batch, the
 * responses are pushed and the frontend notified at most once.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "ring.h"

struct ev_loop;
struct vbd_xen;
struct vbd_image;
struct vbd;

/* Latency histogram: bucket i counts completions that took [2^i, 2^(i+1))
 * microseconds (bucket 0 also counts < 1 us). */
#define VBD_LAT_BUCKETS 32

struct vbd_op_stats {
        uint64_t requests, bytes, errors;
        uint64_t lat_sum_us;
        uint64_t lat_hist[VBD_LAT_BUCKETS];
};

struct vbd_stats {
        struct vbd_op_stats read, write, flush, discard, other;
        uint64_t bad_requests, grant_errors, notifies, batches;
        unsigned inflight; /* requests taken from the rings and not yet answered */
        unsigned queues;   /* rings connected (multi-queue), 0 when disconnected */
        uint64_t queue_requests[VBD_RING_MAX_QUEUES]; /* taken from each queue's ring */
};

/* The latency (us) below which a fraction p (0..1) of completions fall, as the
 * upper bound of the histogram bucket; 0 when there were none. */
uint64_t vbd_stats_percentile(const struct vbd_op_stats *s, double p);

/* Called once when the ring must be dropped (bogus ring): the owner disconnects. */
typedef void (*vbd_fatal_fn)(void *opaque);

struct vbd *vbd_new(struct ev_loop *loop, struct vbd_xen *x, struct vbd_image *img,
                    uint32_t frontend_domid, bool readonly, vbd_fatal_fn fatal, void *opaque);
void vbd_free(struct vbd *v); /* NULL-safe; disconnected only */

/* For every queue of rc: map its ring pages, bind its event channel,
 * allocate its pool.  All or nothing: -errno (logged), nothing kept. */
int vbd_connect(struct vbd *v, const struct vbd_ring_config *rc);

/*
 * Stop taking requests; once every request in flight has completed and its
 * response is pushed, unmap and unbind and call done (possibly inline).
 * respond=false: the frontend is gone, drop responses instead.
 */
void vbd_disconnect(struct vbd *v, bool respond, void (*done)(void *opaque), void *opaque);

bool vbd_is_connected(const struct vbd *v);

/*
 * Pause: take no more requests from the ring (they wait there, the guest
 * sees slow I/O, nothing fails); done runs once every request taken has
 * been answered (inline if nothing is in flight).  The pause outlives a
 * reconnect.  Resume takes requests again.
 */
void vbd_pause(struct vbd *v, void (*done)(void *opaque), void *opaque);
void vbd_resume(struct vbd *v);
bool vbd_is_paused(const struct vbd *v);
/* True when paused and nothing is in flight: the image may be swapped. */
bool vbd_is_drained(const struct vbd *v);
/* Serve from another image from now on; only when drained (-EBUSY).  The
 * caller owns both images and republishes the size. */
int vbd_set_image(struct vbd *v, struct vbd_image *img);
unsigned vbd_inflight(const struct vbd *v);
unsigned vbd_queues(const struct vbd *v); /* rings connected; 0 when disconnected */
void vbd_get_stats(const struct vbd *v, struct vbd_stats *ret);
