/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The backend's view of a blkif shared ring (xen/io/blkif.h, xen/io/ring.h),
 * in either guest ABI.  Everything read from the shared pages is guest
 * controlled: requests are copied out once (no double fetch) into struct
 * vbd_ring_req and checked here before anything else sees them.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define VBD_RING_MAX_SEGMENTS           11  /* BLKIF_MAX_SEGMENTS_PER_REQUEST */
#define VBD_RING_MAX_INDIRECT_SEGMENTS  256 /* what we offer: 1 MiB per request */
#define VBD_RING_SEGS_PER_INDIRECT_PAGE 512 /* 4096 / sizeof(blkif_request_segment) */
#define VBD_RING_MAX_INDIRECT_PAGES     8   /* BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST */
#define VBD_RING_MAX_ORDER              4   /* 16 pages */
#define VBD_RING_MAX_QUEUES             16  /* the most multi-queue-max-queues offers */
#define VBD_SECTOR_SIZE                 512u
#define VBD_PAGE_SIZE                   4096u

enum vbd_ring_abi { VBD_RING_ABI_NATIVE, VBD_RING_ABI_X86_32, VBD_RING_ABI_X86_64 };

struct vbd_ring_seg {
        uint32_t gref;
        uint8_t first_sect, last_sect;
};

/* A request as copied out of the ring (not yet validated). */
struct vbd_ring_req {
        uint8_t operation;
        uint8_t indirect_op; /* BLKIF_OP_INDIRECT: READ or WRITE */
        uint8_t flag;        /* BLKIF_OP_DISCARD: BLKIF_DISCARD_SECURE */
        uint16_t nr_segments;
        uint16_t handle;
        uint64_t id;
        uint64_t sector_number;
        uint64_t nr_sectors; /* BLKIF_OP_DISCARD */
        uint32_t indirect_grefs[VBD_RING_MAX_INDIRECT_PAGES];
        struct vbd_ring_seg seg[VBD_RING_MAX_SEGMENTS]; /* direct requests */
};

/* What the disk allows, for vbd_ring_check_request(). */
struct vbd_ring_limits {
        uint64_t size; /* bytes */
        bool readonly;
        bool discard;
        unsigned max_indirect_segments; /* 0: no indirect requests */
};

/* A request's data transfer once checked. */
struct vbd_ring_xfer {
        uint8_t op;       /* BLKIF_OP_READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE/DISCARD */
        unsigned nr_segs; /* data segments (direct, or in the indirect pages) */
        unsigned nr_indirect_pages;
        uint64_t sector;      /* as the guest gave it */
        uint64_t offset, len; /* bytes; len of READ/WRITE known after check_segments */
};

/*
 * Check the fixed fields of a request: operation, segment count, read-only,
 * discard range.  0 and *ret filled, or -EOPNOTSUPP (operation not offered),
 * -EROFS, -EINVAL; *ret_why says what was wrong.
 */
int vbd_ring_check_request(const struct vbd_ring_req *req, const struct vbd_ring_limits *l,
                           struct vbd_ring_xfer *ret, const char **ret_why);

/* Check a request's data segments (from the ring or from its indirect pages)
 * and the disk range they cover; sets x->len.  0 or -EINVAL. */
int vbd_ring_check_segments(const struct vbd_ring_seg *segs, unsigned n, uint64_t size,
                            struct vbd_ring_xfer *x, const char **ret_why);

/* Decode n segments from the contents of indirect pages (n <= 512 per page). */
void vbd_ring_decode_indirect(const void *pages, unsigned n, struct vbd_ring_seg *out);

struct vbd_ring {
        void *sring; /* the mapped shared pages */
        enum vbd_ring_abi abi;
        unsigned nr_ents;
        uint32_t req_cons, rsp_prod_pvt;
};

/* What a frontend published for one queue's ring. */
struct vbd_queue_config {
        uint32_t refs[1u << VBD_RING_MAX_ORDER];
        uint32_t port; /* the frontend's event channel */
};

/* What a frontend published for its rings (xen/io/blkif.h), parsed and
 * checked: every queue has the same ring size and ABI. */
struct vbd_ring_config {
        unsigned nr_queues; /* multi-queue-num-queues; 1 when absent */
        unsigned nr_pages;  /* per queue: 1 << ring-page-order */
        enum vbd_ring_abi abi;
        struct vbd_queue_config queue[VBD_RING_MAX_QUEUES];
};

/* Parse the xenstore "protocol" value: NULL means native. -EINVAL if unknown. */
int vbd_ring_parse_abi(const char *protocol, enum vbd_ring_abi *ret);

/* Initialise the backend view over size bytes of shared pages. */
int vbd_ring_init(struct vbd_ring *r, void *sring, size_t size, enum vbd_ring_abi abi);

/*
 * Copy out the next request.  1: *req filled; 0: nothing to consume (or no
 * room for its response); -EPROTO: the producer index is more than a ring
 * ahead of us (a bogus ring: disconnect).
 */
int vbd_ring_get_request(struct vbd_ring *r, struct vbd_ring_req *req);

/* The operation of the next request, without consuming it (-1: none).  The
 * guest may still change it: whoever consumes must not rely on it. */
int vbd_ring_peek_op(const struct vbd_ring *r);

void vbd_ring_put_response(struct vbd_ring *r, uint64_t id, uint8_t operation, int16_t status);

/* Publish queued responses; true if the frontend must be notified. */
bool vbd_ring_push_responses(struct vbd_ring *r);

/* Re-arm req_event; true if requests arrived meanwhile (keep going). */
bool vbd_ring_final_check(struct vbd_ring *r);

/* Responses not yet produced for consumed requests. */
static inline unsigned vbd_ring_outstanding(const struct vbd_ring *r)
{
        return r->req_cons - r->rsp_prod_pvt;
}
