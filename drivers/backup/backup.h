/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * backup: point-in-time copies of a running device, the parts its files share.
 *
 *   backup.c      the filter (copy-before-write) and the copy engine
 *   backup-job.c  the "backup" job: target file, checkpoint, the pause in
 *                 which the copy's point in time is fixed; status, cancel
 *   snapshot.c    the "snapshot" job (image fleecing): the engine in fleece
 *                 mode over a store, a read-only view of the image as it was
 *                 at the start, and that view's own NBD export
 *
 * A backup copies a set of blocks (granularity bytes each), fixed when it
 * starts with the device paused: every block for a full backup (holes that
 * read as zeroes left out), the blocks changed since a checkpoint for an
 * incremental.  From then on the filter holds a guest write (or discard,
 * write-zeroes) that touches a block of the set not yet read, asks the copy
 * engine to read those blocks first, and lets the write go down once their
 * old contents are in the engine's buffers.  So the target receives the
 * image as it was at the start, whatever the guest writes meanwhile, and the
 * guest waits at most for one read per block, never for the target.
 *
 * Fleece mode (a snapshot) copies nothing on its own: the target is a store,
 * and only blocks the guest is about to change are read and written to it.
 * A held write goes down once its blocks are in the store (the store write
 * completed, not only the read) and no read of the view is reading them
 * from the image.  The view (bk_vread_*) reads saved blocks from the store
 * and the others from the image.  A failure (the store full) releases the
 * guest at once; the view's reads fail from then on.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vbd/driver.h"

#define BK_SLOTS        8          /* runs in flight */
#define BK_RUN_MAX      (1u << 20) /* bytes per run (read, then write to the target) */
#define BK_GRAN_DEFAULT (64u << 10)
#define BK_GRAN_MIN     4096u
#define BK_GRAN_MAX     (2u << 20)
#define BK_BUSY_NS      (20u * 1000 * 1000) /* a guest request within: the guest is busy */
#define BK_BUSY_RUN     (256u << 10)        /* then: one run in flight, of at most this */

struct bk_state;

/* A read of the view from the image, in flight: guest writes that overlap
 * it wait (fleece mode). */
struct bk_vread {
        uint64_t offset, len;
        struct bk_vread *next;
};

/* A guest io held until the blocks it touches are read (in the io scratch). */
struct bk_io {
        struct vbd_io child_io;
        struct vbd_io *io;
        struct bk_state *s;
        uint64_t held_ns;
        struct bk_io *next_wait;
};

/* One run of consecutive blocks: read from the source, written to the target. */
struct bk_slot {
        struct bk_state *s;
        bool busy;
        uint64_t first, nblocks; /* blocks */
        uint64_t offset, len;    /* bytes */
        void *buf;               /* BK_RUN_MAX bytes, aligned */
        struct iovec iov;
        struct vbd_io io;
        void *src_scratch, *dst_scratch;
};

struct bk_params {
        struct vbd_image *target; /* open, the device's size; the engine does not own it */
        uint32_t gran;            /* power of two */
        unsigned depth;           /* runs in flight, 1..BK_SLOTS */
        bool skip_zero;           /* the target reads zeroes: runs of zeroes are not written */
        bool fleece;              /* a snapshot: save only blocks about to be written (above) */
        uint64_t rate;            /* bytes/s the copier may read, 0: no cap (held writes' blocks
                                   * are read at once whatever the cap) */
        /* called once, when the engine has nothing in flight: 0 (target
         * complete and flushed) or -errno with msg */
        void (*finished)(void *opaque, int status, const char *msg);
        void *opaque;
};

struct bk_state {
        struct vbd_image *img, *child;
        uint64_t size;

        bool active;   /* a backup runs: copy-before-write on */
        bool stopping; /* no new reads: failed, cancelled or draining */
        struct bk_params p;
        unsigned shift;
        uint64_t nblocks;
        uint64_t *todo; /* the set, fixed at the start */
        uint64_t *read; /* blocks whose old contents are safe (read; fleece: stored) */
        uint64_t *want; /* fleece: blocks a held write waits for */
        struct bk_vread *vreads;
        uint64_t *busy;        /* blocks being read */
        uint64_t cursor, left; /* next block to look at; blocks of the set not yet read */
        uint64_t next_ns;      /* rate cap: the next run from the cursor not before */
        uint64_t guest_ns;     /* the guest's last request (the copy yields while it is busy) */
        uint64_t *urgent;      /* blocks held writes wait for, a stack */
        size_t nurgent, urgent_cap;
        struct bk_slot slot[BK_SLOTS];
        unsigned slots_busy;
        bool flushing;
        struct vbd_io flush_io;
        void *flush_scratch;
        int error;
        char msg[256];

        struct bk_io *wait_head, **wait_tail;
        uint64_t guest_inflight;
        bool draining;

        /* figures */
        uint64_t start_ns, end_ns;
        uint64_t bytes_total, bytes_read, bytes_written;
        uint64_t writes_held, held_ns_max, held_ns_sum;
        uint64_t vreads_total;
};

/* ---- backup.c ---- */

extern const struct vbd_driver vbd_driver_backup;

static inline bool bk_test(const uint64_t *bm, uint64_t b)
{
        return bm[b >> 6] & (UINT64_C(1) << (b & 63));
}

static inline void bk_set(uint64_t *bm, uint64_t b)
{
        bm[b >> 6] |= UINT64_C(1) << (b & 63);
}

/* Prepare a backup of img (a backup layer, the device paused and drained):
 * allocates the set, empty; 0 or -errno + err. */
int bk_prepare(struct vbd_image *img, const struct bk_params *p, struct vbd_err *err);
/* Add [offset, offset + len) to the set (before bk_begin). */
void bk_add(struct vbd_image *img, uint64_t offset, uint64_t len);
/* Start copying (still paused: the point in time is now). */
void bk_begin(struct vbd_image *img);
/* Drop a prepared backup that did not begin. */
void bk_unprepare(struct vbd_image *img);
/* Stop a running backup: finished() follows with status (< 0). */
void bk_stop(struct vbd_image *img, int status, const char *msg);
bool bk_active(struct vbd_image *img);
/* Fleece mode: a running snapshot whose view may be read (not failed, not stopping). */
bool bk_view_ok(const struct bk_state *s);
/* Fleece mode: is block b's old content in the store? */
bool bk_saved(const struct bk_state *s, uint64_t b);
/* Fleece mode: a read of the view over [offset, offset + len) begins (vr
 * lives until the end) / ends; the guest writes it overlaps wait between. */
void bk_vread_begin(struct bk_state *s, struct bk_vread *vr, uint64_t offset, uint64_t len);
void bk_vread_end(struct bk_state *s, struct bk_vread *vr);
const struct bk_state *bk_get(struct vbd_image *img);

/* ---- backup-job.c ---- */

extern const struct vbd_job_type bk_job;
/* A job's string option into dst ("" when not set): 0, or -ENAMETOOLONG + err. */
int bk_copy_opt(char *dst, size_t size, const struct vbd_opt_value *v, const char *what,
                struct vbd_err *err);

/* ---- snapshot.c ---- */

extern const struct vbd_job_type bk_snapshot_job;
