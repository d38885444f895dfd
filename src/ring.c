/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "ring"
#include <errno.h>
#include <string.h>

#include <stdint.h>
#include <xen/io/blkif.h>

#include "ring.h"
#include "vbd/endian.h"
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

/* Byte offsets of the fields of each request layout, per ABI. */
struct layout {
        uint8_t id, sector, seg;                           /* READ/WRITE/BARRIER/FLUSH */
        uint8_t ind_id, ind_sector, ind_handle, ind_grefs; /* INDIRECT */
        uint8_t dis_id, dis_sector, dis_nr_sectors;        /* DISCARD */
};

static const struct layout layout64 = {8, 16, 24, 8, 16, 24, 28, 8, 16, 24};
static const struct layout layout32 = {4, 12, 20, 4, 12, 20, 24, 4, 12, 20};

static void decode_segs(const uint8_t *b, unsigned n, struct vbd_ring_seg *out)
{
        for (unsigned i = 0; i < n; i++) {
                out[i].gref = vbd_get_le32(b + i * 8);
                out[i].first_sect = b[i * 8 + 4];
                out[i].last_sect = b[i * 8 + 5];
        }
}

void vbd_ring_decode_indirect(const void *pages, unsigned n, struct vbd_ring_seg *out)
{
        decode_segs(pages, n, out);
}

/* Decode one ring entry, already copied out of shared memory. */
static void decode(const uint8_t *b, const struct layout *l, struct vbd_ring_req *req)
{
        memset(req, 0, sizeof(*req));
        req->operation = b[0];
        switch (req->operation) {
        case BLKIF_OP_INDIRECT:
                req->indirect_op = b[1];
                req->nr_segments = vbd_get_le16(b + 2);
                req->id = vbd_get_le64(b + l->ind_id);
                req->sector_number = vbd_get_le64(b + l->ind_sector);
                req->handle = vbd_get_le16(b + l->ind_handle);
                for (unsigned i = 0; i < VBD_RING_MAX_INDIRECT_PAGES; i++)
                        req->indirect_grefs[i] = vbd_get_le32(b + l->ind_grefs + 4 * i);
                break;
        case BLKIF_OP_DISCARD:
                req->flag = b[1];
                req->handle = vbd_get_le16(b + 2);
                req->id = vbd_get_le64(b + l->dis_id);
                req->sector_number = vbd_get_le64(b + l->dis_sector);
                req->nr_sectors = vbd_get_le64(b + l->dis_nr_sectors);
                break;
        default:
                req->nr_segments = b[1];
                req->handle = vbd_get_le16(b + 2);
                req->id = vbd_get_le64(b + l->id);
                req->sector_number = vbd_get_le64(b + l->sector);
                /* Only what fits; nr_segments itself is checked later. */
                decode_segs(b + l->seg,
                            req->nr_segments < VBD_RING_MAX_SEGMENTS ? req->nr_segments
                                                                     : VBD_RING_MAX_SEGMENTS,
                            req->seg);
                break;
        }
}

int vbd_ring_peek_op(const struct vbd_ring *r)
{
        uint32_t prod = __atomic_load_n(&hdr(r)->req_prod, __ATOMIC_ACQUIRE);

        if (r->req_cons == prod || prod - r->rsp_prod_pvt > r->nr_ents)
                return -1;
        return __atomic_load_n((const uint8_t *)entry(r, r->req_cons), __ATOMIC_RELAXED);
}

int vbd_ring_get_request(struct vbd_ring *r, struct vbd_ring_req *req)
{
        uint32_t prod = __atomic_load_n(&hdr(r)->req_prod, __ATOMIC_ACQUIRE);
        uint8_t buf[sizeof(struct req64)];

        if (prod - r->rsp_prod_pvt > r->nr_ents)
                return -EPROTO;
        if (r->req_cons == prod)
                return 0;
        if (r->req_cons - r->rsp_prod_pvt >= r->nr_ents)
                return 0; /* no room for another response yet */

        /* Copy the whole entry once: the guest may change it under us. */
        memcpy(buf, entry(r, r->req_cons), entry_size(r->abi));
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        decode(buf, r->abi == VBD_RING_ABI_X86_32 ? &layout32 : &layout64, req);
        r->req_cons++;
        return 1;
}

int vbd_ring_check_request(const struct vbd_ring_req *req, const struct vbd_ring_limits *l,
                           struct vbd_ring_xfer *ret, const char **ret_why)
{
        *ret = (struct vbd_ring_xfer){.op = req->operation, .sector = req->sector_number};
        switch (req->operation) {
        case BLKIF_OP_READ:
        case BLKIF_OP_WRITE:
        case BLKIF_OP_WRITE_BARRIER:
                if (req->operation != BLKIF_OP_READ && l->readonly) {
                        *ret_why = "write to a read-only disk";
                        return -EROFS;
                }
                if (req->nr_segments > VBD_RING_MAX_SEGMENTS ||
                    (req->nr_segments == 0 && req->operation != BLKIF_OP_WRITE_BARRIER)) {
                        *ret_why = "nr_segments out of range";
                        return -EINVAL;
                }
                ret->nr_segs = req->nr_segments;
                ret->offset = req->sector_number * VBD_SECTOR_SIZE;
                return 0;
        case BLKIF_OP_FLUSH_DISKCACHE:
                return 0;
        case BLKIF_OP_INDIRECT:
                if (!l->max_indirect_segments) {
                        *ret_why = "unsupported operation";
                        return -EOPNOTSUPP;
                }
                if (req->indirect_op != BLKIF_OP_READ && req->indirect_op != BLKIF_OP_WRITE) {
                        *ret_why = "indirect request of an unsupported operation";
                        return -EOPNOTSUPP;
                }
                ret->op = req->indirect_op;
                if (ret->op == BLKIF_OP_WRITE && l->readonly) {
                        *ret_why = "write to a read-only disk";
                        return -EROFS;
                }
                if (req->nr_segments == 0 || req->nr_segments > l->max_indirect_segments) {
                        *ret_why = "indirect nr_segments out of range";
                        return -EINVAL;
                }
                ret->nr_segs = req->nr_segments;
                ret->nr_indirect_pages = (req->nr_segments + VBD_RING_SEGS_PER_INDIRECT_PAGE - 1) /
                                         VBD_RING_SEGS_PER_INDIRECT_PAGE;
                ret->offset = req->sector_number * VBD_SECTOR_SIZE;
                return 0;
        case BLKIF_OP_DISCARD:
                if (!l->discard) {
                        *ret_why = "unsupported operation";
                        return -EOPNOTSUPP;
                }
                if (req->flag & BLKIF_DISCARD_SECURE) {
                        *ret_why = "secure discard is not offered";
                        return -EOPNOTSUPP;
                }
                if (l->readonly) {
                        *ret_why = "discard on a read-only disk";
                        return -EROFS;
                }
                if (req->sector_number > l->size / VBD_SECTOR_SIZE ||
                    req->nr_sectors > l->size / VBD_SECTOR_SIZE - req->sector_number) {
                        *ret_why = "discard range past the end of the disk";
                        return -EINVAL;
                }
                ret->offset = req->sector_number * VBD_SECTOR_SIZE;
                ret->len = req->nr_sectors * VBD_SECTOR_SIZE;
                return 0;
        default:
                *ret_why = "unsupported operation";
                return -EOPNOTSUPP;
        }
}

int vbd_ring_check_segments(const struct vbd_ring_seg *segs, unsigned n, uint64_t size,
                            struct vbd_ring_xfer *x, const char **ret_why)
{
        uint64_t len = 0;

        for (unsigned i = 0; i < n; i++) {
                if (segs[i].first_sect > segs[i].last_sect ||
                    segs[i].last_sect >= VBD_PAGE_SIZE / VBD_SECTOR_SIZE) {
                        *ret_why = "bad segment sector range";
                        return -EINVAL;
                }
                len += (uint64_t)(segs[i].last_sect - segs[i].first_sect + 1) * VBD_SECTOR_SIZE;
        }
        /* The sector first: its byte offset may have wrapped around 2^64. */
        if (x->sector > size / VBD_SECTOR_SIZE || len > size - x->sector * VBD_SECTOR_SIZE) {
                *ret_why = "sector range past the end of the disk";
                return -EINVAL;
        }
        x->len = len;
        return 0;
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
