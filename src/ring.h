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

#define VBD_RING_MAX_SEGMENTS 11 /* BLKIF_MAX_SEGMENTS_PER_REQUEST */
#define VBD_RING_MAX_ORDER    4  /* 16 pages */
#define VBD_SECTOR_SIZE       512u
#define VBD_PAGE_SIZE         4096u

enum vbd_ring_abi { VBD_RING_ABI_NATIVE, VBD_RING_ABI_X86_32, VBD_RING_ABI_X86_64 };

struct vbd_ring_seg {
        uint32_t gref;
        uint8_t first_sect, last_sect;
};

/* A request as copied out of the ring (not yet validated against the image). */
struct vbd_ring_req {
        uint8_t operation;
        uint8_t nr_segments;
        uint16_t handle;
        uint64_t id;
        uint64_t sector_number;
        struct vbd_ring_seg seg[VBD_RING_MAX_SEGMENTS];
};

struct vbd_ring {
        void *sring; /* the mapped shared pages */
        enum vbd_ring_abi abi;
        unsigned nr_ents;
        uint32_t req_cons, rsp_prod_pvt;
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
