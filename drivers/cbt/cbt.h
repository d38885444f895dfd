/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cbt, the change tracker: the parts its files share.
 *
 *   cbt.c      the filter: the write path (marks made durable before the
 *              write goes down, committed in groups), bitmap status
 *   cbt-map.c  the map file beside the image: its format (documented in
 *              vbd-driver-cbt(7)), open and validation, checkpoints
 *   cbt-job.c  the "checkpoint" job: create and remove, with the device
 *              paused; status
 *
 * Bitmaps are arrays of 64-bit words, bit b for block b (granularity bytes
 * each).  The active bitmap holds the blocks written since the newest
 * checkpoint (or since the map was made, when there is none); checkpoint i,
 * when not the newest, owns a frozen delta: the blocks written between it and
 * checkpoint i + 1.  "Changed since checkpoint k" is the OR of the deltas of
 * k ... n-2 and the active bitmap, so the write path touches one bitmap
 * whatever the number of checkpoints.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vbd/aio.h"
#include "vbd/driver.h"

#define CBT_MAX_CHECKPOINTS 16
#define CBT_NAME_MAX        64 /* with the NUL */
#define CBT_PATH_MAX        256
#define CBT_REASON_MAX      256
#define CBT_PAGE            4096u
#define CBT_HEADER_BYTES    (2 * CBT_PAGE) /* two header slots */
#define CBT_BATCH_RUNS      64             /* pwrites in one group commit */
#define CBT_NO_SLOT         UINT32_MAX

/* Page states of the active bitmap in the map file (group commit). */
enum cbt_page {
        CBT_PAGE_CLEAN,    /* on disk as in memory */
        CBT_PAGE_DIRTY,    /* bits set in memory, not yet in a commit */
        CBT_PAGE_WRITING,  /* in the commit in flight */
        CBT_PAGE_REDIRTIED /* in the commit in flight and set again since */
};

struct cbt_checkpoint {
        char name[CBT_NAME_MAX];
        uint64_t created; /* unix seconds */
        uint32_t slot;    /* its delta's slot in the file; CBT_NO_SLOT for the newest */
        uint64_t *delta;  /* loaded on first use, NULL until then */
};

/* An io waiting for its marks to be durable (in the filter's io scratch). */
struct cbt_io {
        struct vbd_io child_io;
        struct vbd_io *io;
        struct vbd_image *img;
        struct cbt_io *next_wait;
};

struct cbt_state {
        struct vbd_image *img, *child;
        char map_path[CBT_PATH_MAX + 8];
        int fd; /* the map file, buffered; -1 read-only without a map */
        bool readonly;

        /* geometry */
        uint64_t size; /* the image's, bytes */
        uint32_t gran; /* bytes per block, a power of two */
        unsigned gran_shift;
        uint64_t nblocks;
        uint64_t bitmap_bytes; /* one bitmap in the file: whole pages */
        size_t npages;

        /* the header */
        uint64_t seq; /* of the newest valid header */
        unsigned hdr_slot;
        uint8_t image_id[16];
        char image_path[CBT_PATH_MAX];
        char reason[CBT_REASON_MAX]; /* why the map was started afresh, "" if it was not */
        unsigned ncp;
        struct cbt_checkpoint cp[CBT_MAX_CHECKPOINTS];

        uint64_t *active; /* bitmap_bytes */

        /* tracking lost (the map could not be written): everything is dirty */
        bool lost;
        /* the image below keeps stored bitmaps (cbt-stored.c) */
        bool has_stored;
        /* the map says the checkpoints were published there (a flag in its header) */
        bool published;

        /* group commit of the active bitmap's pages */
        struct vbd_aio *aio;
        uint8_t *page_state; /* enum cbt_page, npages */
        uint32_t *dirty;     /* pages in state DIRTY, ndirty of them */
        size_t ndirty;
        bool committing;
        unsigned commit_ops; /* pwrites of the commit in flight */
        int commit_err;
        struct vbd_aio_op ops[CBT_BATCH_RUNS + 1];
        struct iovec iov[CBT_BATCH_RUNS];
        uint32_t run_page[CBT_BATCH_RUNS], run_len[CBT_BATCH_RUNS];
        unsigned nruns;
        struct cbt_io *wait_head, **wait_tail;

        uint64_t inflight; /* ios passed down, not yet back */
        bool draining;

        /* figures for the status */
        uint64_t marks, commits, waited_writes;
};

/* ---- cbt-map.c ---- */

/* Open or create the map for s (geometry set): 0 or -errno + err.  A map that
 * is corrupt or was made for another image is moved aside (PATH.bad) and a
 * new one made; s->reason says why. */
int cbt_map_open(struct cbt_state *s, struct vbd_err *err);
void cbt_map_close(struct cbt_state *s);
/* Write the header to the other slot and fdatasync it: 0 or -errno. */
int cbt_map_write_header(struct cbt_state *s);
/* Start the map afresh, no checkpoints, why as the reason: 0 or -errno. */
int cbt_map_restart(struct cbt_state *s, const char *why);
/* Mark tracking as lost in the file: 0 or -errno. */
int cbt_map_mark_lost(struct cbt_state *s, const char *why);
uint64_t cbt_map_active_offset(const struct cbt_state *s);
/* The checkpoint named name, or -1. */
int cbt_find(const struct cbt_state *s, const char *name);
/* Load checkpoint i's delta (not the newest): 0 or -errno. */
int cbt_load_delta(struct cbt_state *s, unsigned i);
/* With nothing in flight (the device paused): 0 or -errno + err. */
int cbt_checkpoint_create(struct cbt_state *s, const char *name, struct vbd_err *err);
int cbt_checkpoint_remove(struct cbt_state *s, const char *name, struct vbd_err *err);
bool cbt_name_ok(const char *name);

/* ---- cbt.c ---- */

extern const struct vbd_driver vbd_driver_cbt;

static inline bool cbt_test(const uint64_t *bm, uint64_t b)
{
        return bm[b >> 6] & (UINT64_C(1) << (b & 63));
}

static inline void cbt_set(uint64_t *bm, uint64_t b)
{
        bm[b >> 6] |= UINT64_C(1) << (b & 63);
}

/* Load the deltas "changed since checkpoint k" needs: 0 or -errno. */
int cbt_load_since(struct cbt_state *s, unsigned k);
/* Word w of "changed since checkpoint k" (deltas loaded): the active bitmap
 * ORed with the deltas of the checkpoints after k; all ones once lost. */
uint64_t cbt_since_word(const struct cbt_state *s, unsigned k, size_t w);
/* Blocks set in "changed since checkpoint k" over the whole image. */
uint64_t cbt_count_since(struct cbt_state *s, unsigned k);
/* Is block b changed since checkpoint k (deltas loaded)? */
bool cbt_changed_since(const struct cbt_state *s, unsigned k, uint64_t b);

/* ---- cbt-stored.c ---- */

/* At a read-write open, before any write: count again the blocks the image's
 * stored bitmaps say another program wrote since (or lose tracking when they
 * were invalidated).  0 or -errno + err. */
int cbt_stored_import(struct cbt_state *s, struct vbd_err *err);
/* Replace the image's stored bitmaps by the checkpoints (a warning on
 * failure: the map stays the truth).  0 or -errno. */
int cbt_stored_publish(struct cbt_state *s, bool in_use);

/* ---- cbt-job.c ---- */

extern const struct vbd_job_type cbt_checkpoint_job;
