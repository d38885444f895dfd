/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The mirror driver: partner-assisted storage migration (PASM).
 *
 * A mirror is stacked over the image a VBD serves (vbd_mirror_wrap(), with
 * the VBD drained) and stays there.  While a migration runs, a background
 * copier streams the image to a partner reached over NBD (libnbd, in the
 * VBD's libev loop), region by region.  A region is unsent, in flight (being
 * copied) or synced.  Guest writes to synced regions are applied locally and
 * forwarded to the partner, and complete when both sides have them; writes
 * to unsent regions stay local (the copier reads them later); a write that
 * touches a region being copied waits for that copy.  Overlapping writes are
 * serialized, so both sides apply them in the same order.  Reads are local.
 * A guest flush is a local flush and an NBD flush.  When every region is
 * synced the migration is ready; cut-over (VBD paused and drained by the
 * caller) copies what is left, flushes both sides and reports.
 *
 * Any partner failure (error reply, connection lost, no answer within the
 * timeout) fails the migration: the partner is dropped at once, guest I/O
 * continues on the local image, and a new migration may be started.  The
 * local image is never written by the mirror itself.
 *
 * Precopy mode, for comparison: nothing is forwarded; writes make their
 * regions unsent again and the copier passes over the image until what is
 * left is small; cut-over then copies the rest while the guest is paused.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "vbd/driver.h"

struct ev_loop;

enum vbd_mirror_state {
        VBD_MIRROR_NONE,       /* never started */
        VBD_MIRROR_CONNECTING, /* connecting to the partner */
        VBD_MIRROR_COPYING,    /* copier running, writes forwarded */
        VBD_MIRROR_READY,      /* everything synced (precopy: little left) */
        VBD_MIRROR_CUTTING,    /* cut-over: final copy and flush */
        VBD_MIRROR_CUTOVER,    /* done: the partner is complete and flushed */
        VBD_MIRROR_FAILED,     /* partner error; see error */
        VBD_MIRROR_ABORTED,    /* abort requested */
};

struct vbd_mirror_params {
        const char *to;   /* libnbd URI of the partner */
        bool precopy;     /* precopy mode instead of PASM */
        unsigned share;   /* percent of the time the copier may use while the guest is busy */
        uint64_t rate;    /* bytes/s cap for the copier, 0 = none */
        uint64_t region;  /* region size, power of two */
        unsigned timeout; /* seconds a partner command or the connection may take */
        bool zeroed;      /* the partner reads zeroes: send nothing for holes */
        unsigned depth;   /* copier regions in flight when the guest is idle */
};

#define VBD_MIRROR_REGION_MIN     (64u << 10)
#define VBD_MIRROR_REGION_MAX     (64u << 20)
#define VBD_MIRROR_REGION_DEFAULT (1u << 20)
#define VBD_MIRROR_DEPTH_MAX      64
#define VBD_MIRROR_TIMEOUT_MAX    3600

struct vbd_mirror_status {
        enum vbd_mirror_state state;
        bool precopy;
        char to[1024];
        char error[256];
        uint64_t size, partner_size, region_size;
        uint64_t regions_total, regions_synced, regions_inflight;
        uint64_t bytes_synced, bytes_copied, bytes_zeroed, bytes_forwarded;
        uint64_t writes_forwarded, writes_waited, passes, dirty_bytes;
        unsigned partner_inflight;
        uint64_t elapsed_ms, rate; /* rate: bytes/s of progress, recent */
        int64_t eta_s;             /* -1: unknown */
        int64_t downtime_ms;       /* cut-over: pause to flushed; -1 before */
};

/* Stack a mirror over child (drained: nothing in flight).  NULL + err. */
struct vbd_image *vbd_mirror_wrap(struct ev_loop *loop, struct vbd_image *child,
                                  struct vbd_err *err);
bool vbd_image_is_mirror(struct vbd_image *img);

/* Start a migration: -EBUSY while one runs, -EINVAL bad params, -EROFS. */
int vbd_mirror_start(struct vbd_image *img, const struct vbd_mirror_params *p, struct vbd_err *err);
void vbd_mirror_get_status(struct vbd_image *img, struct vbd_mirror_status *ret);
enum vbd_mirror_state vbd_mirror_state(struct vbd_image *img);
const char *vbd_mirror_state_name(enum vbd_mirror_state s);

/*
 * Cut over; the caller has paused and drained the VBD, and the migration is
 * READY (else -EAGAIN).  done(opaque, status) runs once the partner has it
 * all and both sides are flushed (0, state CUTOVER), or the migration
 * failed (-errno, state FAILED).  pause_ns: when the caller paused the VBD
 * (CLOCK_MONOTONIC), for the downtime figure.
 */
int vbd_mirror_cutover(struct vbd_image *img, uint64_t pause_ns,
                       void (*done)(void *opaque, int status), void *opaque);

/* Drop the partner now (-ENOENT when nothing runs); a pending cut-over
 * completes with -ECANCELED. */
int vbd_mirror_abort(struct vbd_image *img);
