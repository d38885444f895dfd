/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Bad grant references in data segments: unknown, out of range, granted to
 * another domain, ended, and read-only grants for a READ (the backend must
 * write into the page).  Each request fails; no page the guest did not
 * grant writable is touched; refused writes never reach the image.
 */
#include <stdio.h>
#include <string.h>

#include "hostile.h"
#include "vbd/macro.h"

struct page {
        uint32_t gref;
        void *mem;
};

static struct page grant(struct hostile *h, uint32_t to, bool ro, bool ended)
{
        struct page p;

        CHECK_MSG(simfront_raw_grant(h->victim, to, ro, ended, &p.gref, &p.mem) >= 0, "grant");
        return p;
}

static blkif_request_t req1(uint8_t op, uint64_t id, uint64_t sector, uint32_t gref)
{
        return (blkif_request_t){.operation = op,
                                 .nr_segments = 1,
                                 .id = id,
                                 .sector_number = sector,
                                 .seg[0] = {.gref = gref, .first_sect = 0, .last_sect = 7}};
}

int main(void)
{
        struct hostile h;
        struct page good, ro, foreign, ended, canary;
        char before[8192], after[8192], pattern[4096];
        uint64_t id = 1;

        h_setup(&h, "bad grant references", "w", true);
        good = grant(&h, 0, false, false);
        ro = grant(&h, 0, true, false);
        foreign = grant(&h, 7, false, false);
        ended = grant(&h, 0, false, true);
        canary = grant(&h, 7, false, false); /* a page the backend must never see */
        memset(pattern, 0xc3, sizeof(pattern));
        memcpy(ro.mem, pattern, 4096);
        memcpy(foreign.mem, pattern, 4096);
        memcpy(canary.mem, pattern, 4096);
        h_image_read(&h, 0, before, sizeof(before));

        /* READ must write guest memory: a read-only grant is refused. */
        blkif_request_t q = req1(BLKIF_OP_READ, id++, 0, ro.gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "read into a read-only grant accepted");
        CHECK_MSG(!memcmp(ro.mem, pattern, 4096), "a read-only page was written");

        const uint32_t bad_refs[] = {foreign.gref, ended.gref, 3000,        4095,
                                     4096,         65535,      0xffffffffu, 0};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(bad_refs); i++) {
                q = req1(BLKIF_OP_READ, id++, 0, bad_refs[i]);
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "read into gref %u accepted",
                          bad_refs[i]);
                q = req1(BLKIF_OP_WRITE, id++, 0, bad_refs[i]);
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "write from gref %u accepted",
                          bad_refs[i]);
        }
        CHECK_MSG(!memcmp(foreign.mem, pattern, 4096), "a page granted to another domain changed");

        /* One good and one bad segment: the request fails as a whole. */
        q = req1(BLKIF_OP_WRITE, id++, 0, good.gref);
        q.nr_segments = 2;
        q.seg[1] = (struct blkif_request_segment){.gref = foreign.gref, .last_sect = 7};
        memset(good.mem, 0x11, 4096);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "half-bad write accepted");

        h_image_read(&h, 0, after, sizeof(after));
        CHECK_MSG(!memcmp(before, after, sizeof(after)), "a refused write reached the image");
        CHECK_MSG(!memcmp(canary.mem, pattern, 4096), "an ungranted page changed");
        h_expect_log(&h, "grant copy");

        /* A read-only grant is fine as the source of a WRITE. */
        memset(ro.mem, 0x77, 4096);
        q = req1(BLKIF_OP_WRITE, id++, 8, ro.gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_OKAY, "write from a read-only grant refused");
        h_image_read(&h, 8 * 512, after, 4096);
        CHECK_MSG(!memcmp(after, ro.mem, 4096), "write from a read-only grant lost");

        /* And the good page still works for reads. */
        q = req1(BLKIF_OP_READ, id++, 8, good.gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_OKAY, "good read refused");
        CHECK_MSG(!memcmp(good.mem, ro.mem, 4096), "good read returned wrong data");
        h_teardown(&h);
        return 0;
}
