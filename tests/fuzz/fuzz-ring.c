/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzzes what a guest puts in its shared ring: the input becomes the ring
 * pages (indices included) and the contents of one indirect page; every
 * request the backend would take is decoded and checked the way vbd.c does.
 *
 * Input: byte 0 = ABI (bit 0) | ring pages (bits 1-2: 1, 2, 4, 8) |
 *        read-only (bit 3) | discard (bit 4); bytes 1..8 = disk size in
 *        sectors; then ring bytes, then indirect page bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static _Alignas(4096) uint8_t ring_mem[8 * VBD_PAGE_SIZE];
        static _Alignas(4096) uint8_t indirect[VBD_PAGE_SIZE];
        static struct vbd_ring_seg segs[VBD_RING_MAX_INDIRECT_SEGMENTS];
        struct vbd_ring r;
        struct vbd_ring_req req;
        struct vbd_ring_limits l;
        uint64_t sectors = 0;
        size_t ring_size, n;
        uint8_t flags;

        if (size < 9)
                return 0;
        flags = data[0];
        ring_size = (size_t)VBD_PAGE_SIZE << ((flags >> 1) & 3);
        memcpy(&sectors, data + 1, sizeof(sectors));
        l = (struct vbd_ring_limits){
            .size = sectors * VBD_SECTOR_SIZE, /* may wrap: the checks must cope */
            .readonly = flags & 8,
            .discard = flags & 16,
            .max_indirect_segments = VBD_RING_MAX_INDIRECT_SEGMENTS,
        };
        data += 9;
        size -= 9;
        n = size < ring_size ? size : ring_size;
        memset(ring_mem, 0, ring_size);
        memcpy(ring_mem, data, n);
        data += n;
        size -= n;
        memset(indirect, 0, sizeof(indirect));
        memcpy(indirect, data, size < sizeof(indirect) ? size : sizeof(indirect));

        if (vbd_ring_init(&r, ring_mem, ring_size,
                          flags & 1 ? VBD_RING_ABI_X86_32 : VBD_RING_ABI_X86_64) < 0)
                return 0;
        for (unsigned i = 0; i < 2 * r.nr_ents + 2; i++) {
                struct vbd_ring_xfer x;
                const char *why = NULL;
                int rc = vbd_ring_get_request(&r, &req);

                if (rc <= 0)
                        break;
                (void)vbd_ring_peek_op(&r);
                if (vbd_ring_check_request(&req, &l, &x, &why) == 0) {
                        if (req.operation == 6 /* BLKIF_OP_INDIRECT */) {
                                if (x.nr_segs > VBD_RING_MAX_INDIRECT_SEGMENTS ||
                                    x.nr_indirect_pages > VBD_RING_MAX_INDIRECT_PAGES)
                                        abort(); /* the check must bound these */
                                vbd_ring_decode_indirect(indirect, x.nr_segs, segs);
                                if (vbd_ring_check_segments(segs, x.nr_segs, l.size, &x, &why) ==
                                        0 &&
                                    (x.len > (uint64_t)x.nr_segs * VBD_PAGE_SIZE ||
                                     x.offset + x.len > l.size || x.offset + x.len < x.offset))
                                        abort();
                        } else if (x.nr_segs) {
                                if (x.nr_segs > VBD_RING_MAX_SEGMENTS)
                                        abort();
                                if (vbd_ring_check_segments(req.seg, x.nr_segs, l.size, &x, &why) ==
                                        0 &&
                                    (x.offset + x.len > l.size || x.offset + x.len < x.offset))
                                        abort();
                        } else if (x.op == 5 /* DISCARD */ &&
                                   (x.offset + x.len > l.size || x.offset + x.len < x.offset)) {
                                abort();
                        }
                } else if (!why) {
                        abort(); /* every refusal says why */
                }
                vbd_ring_put_response(&r, req.id, req.operation, 0);
                if (i % 7 == 0)
                        (void)vbd_ring_push_responses(&r);
        }
        (void)vbd_ring_push_responses(&r);
        (void)vbd_ring_final_check(&r);
        return 0;
}
