/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "ring"
#include <errno.h>
#include <string.h>

#include "ring.h"
#include "vbd/log.h"

/*
 * Wire layouts.  The shared ring header is four 32-bit indices and 48 bytes
 * of padding; then a power-of-two array of entries, each a union of request
 * and response.  The two x86 ABIs differ in the alignment of 64-bit fields:
 * i386 aligns uint64_t to 4 bytes.
 */
struct sring_hdr {
        uint32_t req_prod, req_event, rsp_prod, rsp_event;
        uint8_t pad[48];
};

struct wire_seg {
        uint32_t gref;
        uint8_t first_sect, last_sect;
        uint16_t pad;
};

struct req64 {
        uint8_t operation, nr_segments;
        uint16_t handle;
        uint32_t pad;
        uint64_t id, sector_number;
        struct wire_seg seg[VBD_RING_MAX_SEGMENTS];
};

struct rsp64 {
        uint64_t id;
        uint8_t operation;
        uint8_t pad;
        int16_t status;
        uint32_t pad2;
};

struct req32 {
        uint8_t operation, nr_segments;
        uint16_t handle;
        uint64_t id __attribute__((aligned(4)));
        uint64_t sector_number __attribute__((aligned(4)));
        struct wire_seg seg[VBD_RING_MAX_SEGMENTS];
} __attribute__((packed, aligned(4)));

struct rsp32 {
        uint64_t id __attribute__((aligned(4)));
        uint8_t operation;
        uint8_t pad;
        int16_t status;
} __attribute__((packed, aligned(4)));

_Static_assert(sizeof(struct sring_hdr) == 64, "sring header");
_Static_assert(sizeof(struct req64) == 112, "blkif x86_64 request");
_Static_assert(sizeof(struct rsp64) == 16, "blkif x86_64 response");
_Static_assert(sizeof(struct req32) == 108, "blkif x86_32 request");
_Static_assert(sizeof(struct rsp32) == 12, "blkif x86_32 response");

static size_t entry_size(enum vbd_ring_abi abi)
{
        return abi == VBD_RING_ABI_X86_32 ? sizeof(struct req32) : sizeof(struct req64);
}

static inline struct sring_hdr *hdr(const struct vbd_ring *r)
{
        return r->sring;
}

static inline void *entry(const struct vbd_ring *r, uint32_t idx)
{
        return (char *)r->sring + sizeof(struct sring_hdr) +
               (size_t)(idx & (r->nr_ents - 1)) * entry_size(r->abi);
}

int vbd_ring_parse_abi(const char *protocol, enum vbd_ring_abi *ret)
{
        if (!protocol || !*protocol)
                *ret = VBD_RING_ABI_NATIVE;
        else if (strcmp(protocol, "x86_64-abi") == 0)
                *ret = VBD_RING_ABI_X86_64;
        else if (strcmp(protocol, "x86_32-abi") == 0)
                *ret = VBD_RING_ABI_X86_32;
        else
                return -EINVAL;
        if (*ret == VBD_RING_ABI_NATIVE)
                *ret = sizeof(long) == 4 ? VBD_RING_ABI_X86_32 : VBD_RING_ABI_X86_64;
        return 0;
}

int vbd_ring_init(struct vbd_ring *r, void *sring, size_t size, enum vbd_ring_abi abi)
{
        size_t n;

        if (abi == VBD_RING_ABI_NATIVE)
                (void)vbd_ring_parse_abi(NULL, &abi);
        if (size <= sizeof(struct sring_hdr))
                return -EINVAL;
        n = (size - sizeof(struct sring_hdr)) / entry_size(abi);
        if (n == 0)
                return -EINVAL;
        while (n & (n - 1)) /* round down to a power of two */
                n &= n - 1;
        *r = (struct vbd_ring){.sring = sring, .abi = abi, .nr_ents = (unsigned)n};
        /* The frontend initialised the indices; we start where it says responses are. */
        r->req_cons = r->rsp_prod_pvt = __atomic_load_n(&hdr(r)->rsp_prod, __ATOMIC_ACQUIRE);
        return 0;
}

static void copy_segs(struct vbd_ring_req *req, const struct wire_seg *ws)
{
        unsigned n = req->nr_segments;

        /* Copy only what fits; nr_segments itself is checked by the caller. */
        if (n > VBD_RING_MAX_SEGMENTS)
                n = VBD_RING_MAX_SEGMENTS;
        for (unsigned i = 0; i < n; i++) {
                req->seg[i].gref = ws[i].gref;
                req->seg[i].first_sect = ws[i].first_sect;
                req->seg[i].last_sect = ws[i].last_sect;
        }
}

int vbd_ring_get_request(struct vbd_ring *r, struct vbd_ring_req *req)
{
        uint32_t prod = __atomic_load_n(&hdr(r)->req_prod, __ATOMIC_ACQUIRE);

        if (prod - r->rsp_prod_pvt > r->nr_ents)
                return -EPROTO;
        if (r->req_cons == prod)
                return 0;
        if (r->req_cons - r->rsp_prod_pvt >= r->nr_ents)
                return 0; /* no room for another response yet */

        /* Copy the whole entry once: the guest may change it under us. */
        if (r->abi == VBD_RING_ABI_X86_32) {
                struct req32 w;
                memcpy(&w, entry(r, r->req_cons), sizeof(w));
                __atomic_signal_fence(__ATOMIC_SEQ_CST);
                req->operation = w.operation;
                req->nr_segments = w.nr_segments;
                req->handle = w.handle;
                req->id = w.id;
                req->sector_number = w.sector_number;
                copy_segs(req, w.seg);
        } else {
                struct req64 w;
                memcpy(&w, entry(r, r->req_cons), sizeof(w));
                __atomic_signal_fence(__ATOMIC_SEQ_CST);
                req->operation = w.operation;
                req->nr_segments = w.nr_segments;
                req->handle = w.handle;
                req->id = w.id;
                req->sector_number = w.sector_number;
                copy_segs(req, w.seg);
        }
        r->req_cons++;
        return 1;
}

void vbd_ring_put_response(struct vbd_ring *r, uint64_t id, uint8_t operation, int16_t status)
{
        void *e = entry(r, r->rsp_prod_pvt);

        if (r->abi == VBD_RING_ABI_X86_32) {
                struct rsp32 w = {.id = id, .operation = operation, .status = status};
                memcpy(e, &w, sizeof(w));
        } else {
                struct rsp64 w = {.id = id, .operation = operation, .status = status};
                memcpy(e, &w, sizeof(w));
        }
        r->rsp_prod_pvt++;
}

bool vbd_ring_push_responses(struct vbd_ring *r)
{
        struct sring_hdr *h = hdr(r);
        uint32_t old = __atomic_load_n(&h->rsp_prod, __ATOMIC_RELAXED);
        uint32_t new = r->rsp_prod_pvt;

        if (old == new)
                return false;
        __atomic_store_n(&h->rsp_prod, new, __ATOMIC_RELEASE);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return (uint32_t)(new - __atomic_load_n(&h->rsp_event, __ATOMIC_RELAXED)) <
               (uint32_t)(new - old);
}

bool vbd_ring_final_check(struct vbd_ring *r)
{
        struct sring_hdr *h = hdr(r);

        if (__atomic_load_n(&h->req_prod, __ATOMIC_ACQUIRE) != r->req_cons)
                return true;
        __atomic_store_n(&h->req_event, r->req_cons + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        return __atomic_load_n(&h->req_prod, __ATOMIC_ACQUIRE) != r->req_cons;
}
