/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Malformed requests: unknown operations, segment counts, sector ranges,
 * writes to a read-only disk.  Each gets an error response carrying its id;
 * the victim keeps serving good requests and the bystander is unharmed.
 */
#include <stdio.h>
#include <string.h>

#include "hostile.h"
#include "vbd/macro.h"

static uint32_t data_gref(struct hostile *h, void **ret_page)
{
        uint32_t gref;

        CHECK_MSG(simfront_raw_grant(h->victim, 0, false, false, &gref, ret_page) >= 0,
                  "raw grant");
        return gref;
}

static blkif_request_t rw(uint8_t op, uint64_t id, uint64_t sector, uint8_t nsegs, uint32_t gref)
{
        blkif_request_t q = {
            .operation = op, .nr_segments = nsegs, .id = id, .sector_number = sector};

        for (unsigned i = 0; i < nsegs && i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++)
                q.seg[i] =
                    (struct blkif_request_segment){.gref = gref, .first_sect = 0, .last_sect = 7};
        return q;
}

static void good_read(struct hostile *h, uint32_t gref, void *page, uint64_t id)
{
        char want[4096];
        blkif_request_t q = rw(BLKIF_OP_READ, id, 16, 1, gref);

        memset(page, 0, 4096);
        CHECK_MSG(h_raw_request(h, &q) == BLKIF_RSP_OKAY, "a good read failed");
        h_image_read(h, 16 * 512, want, sizeof(want));
        CHECK_MSG(!memcmp(page, want, sizeof(want)), "good read returned wrong data");
}

static void test_operations(void)
{
        struct hostile h;
        void *page;
        uint32_t gref;
        uint64_t id = 1000;
        static const uint8_t bad_ops[] = {BLKIF_OP_RESERVED_1, 7, 99, 255};

        h_setup(&h, "unknown operations", "w", true);
        gref = data_gref(&h, &page);
        for (unsigned i = 0; i < sizeof(bad_ops); i++) {
                blkif_request_t q = rw(bad_ops[i], id++, 0, 1, gref);
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_EOPNOTSUPP, "op %u not refused",
                          bad_ops[i]);
        }
        /* Indirect requests wrapping something other than READ/WRITE. */
        static const uint8_t bad_inner[] = {BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER,
                                            BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT, 99};
        for (unsigned i = 0; i < sizeof(bad_inner); i++) {
                struct blkif_request_indirect ind = {.operation = BLKIF_OP_INDIRECT,
                                                     .indirect_op = bad_inner[i],
                                                     .nr_segments = 1,
                                                     .id = id++,
                                                     .indirect_grefs = {gref}};
                blkif_request_t q;
                memcpy(&q, &ind, sizeof(ind));
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_EOPNOTSUPP,
                          "indirect op %u not refused", bad_inner[i]);
        }
        /* Secure discard is not offered. */
        struct blkif_request_discard dis = {.operation = BLKIF_OP_DISCARD,
                                            .flag = BLKIF_DISCARD_SECURE,
                                            .id = id++,
                                            .nr_sectors = 8};
        blkif_request_t q;
        memcpy(&q, &dis, sizeof(dis));
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_EOPNOTSUPP, "secure discard accepted");
        h_expect_log(&h, "unsupported operation");
        h_expect_log(&h, "secure discard");
        good_read(&h, gref, page, id++);
        h_teardown(&h);
}

static void test_segments(void)
{
        struct hostile h;
        void *page;
        uint32_t gref;
        uint64_t id = 2000;
        static const uint8_t counts[] = {0, 12, 16, 255};
        char before[8192], after[8192];

        h_setup(&h, "segment counts and sector ranges", "w", true);
        gref = data_gref(&h, &page);
        h_image_read(&h, 0, before, sizeof(before));

        for (unsigned i = 0; i < sizeof(counts); i++) {
                blkif_request_t q = rw(BLKIF_OP_READ, id++, 0, counts[i], gref);
                q.nr_segments = counts[i];
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "read nr_segments %u accepted",
                          counts[i]);
                q.operation = BLKIF_OP_WRITE;
                q.id = id++;
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "write nr_segments %u accepted",
                          counts[i]);
        }

        /* first_sect > last_sect, last_sect > 7 */
        static const uint8_t bad[][2] = {{4, 3}, {0, 8}, {7, 8}, {8, 8}, {0, 255}, {200, 100}};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(bad); i++) {
                blkif_request_t q = rw(BLKIF_OP_WRITE, id++, 0, 2, gref);
                q.seg[1].first_sect = bad[i][0];
                q.seg[1].last_sect = bad[i][1];
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "segment %u..%u accepted",
                          bad[i][0], bad[i][1]);
        }

        /* Sector ranges past the end or overflowing 64 bits. */
        const uint64_t sectors = IMG_SIZE / 512;
        const uint64_t starts[] = {sectors - 7, sectors,          sectors + 1,
                                   UINT64_MAX,  UINT64_MAX / 512, UINT64_MAX / 512 + 1,
                                   (1ULL << 55)};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(starts); i++) {
                blkif_request_t q = rw(BLKIF_OP_READ, id++, starts[i], 1, gref);
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "read at sector %llu accepted",
                          (unsigned long long)starts[i]);
                q = rw(BLKIF_OP_WRITE, id++, starts[i], 1, gref);
                CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "write at sector %llu accepted",
                          (unsigned long long)starts[i]);
        }
        /* The last 8 sectors are fine. */
        blkif_request_t q = rw(BLKIF_OP_READ, id++, sectors - 8, 1, gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_OKAY, "read of the last page refused");

        h_image_read(&h, 0, after, sizeof(after));
        CHECK_MSG(!memcmp(before, after, sizeof(after)), "a refused write reached the image");
        h_expect_log(&h, "nr_segments out of range");
        h_expect_log(&h, "bad segment sector range");
        h_expect_log(&h, "past the end");
        h_bystander_io(&h);
        good_read(&h, gref, page, id++);
        h_teardown(&h);
}

static void test_readonly(void)
{
        struct hostile h;
        void *page;
        uint32_t gref;
        char before[4096], after[4096];

        h_setup(&h, "writes to a read-only disk", "r", true);
        gref = data_gref(&h, &page);
        h_image_read(&h, 0, before, sizeof(before));
        memset(page, 0x5a, 4096);
        blkif_request_t q = rw(BLKIF_OP_WRITE, 1, 0, 1, gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "write to a read-only disk accepted");
        q = rw(BLKIF_OP_WRITE_BARRIER, 2, 0, 1, gref);
        CHECK_MSG(h_raw_request(&h, &q) == BLKIF_RSP_ERROR, "barrier write to a read-only disk");
        h_image_read(&h, 0, after, sizeof(after));
        CHECK_MSG(!memcmp(before, after, sizeof(after)), "the read-only image changed");
        h_expect_log(&h, "read-only");
        good_read(&h, gref, page, 3);
        h_teardown(&h);
}

int main(void)
{
        test_operations();
        test_segments();
        test_readonly();
        return 0;
}
