/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Indirect requests and discard: segment counts, indirect page grants,
 * segment tables with bad entries, ranges past the end or overflowing.
 * Bad ones fail with their id; good ones move the right data.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostile.h"
#include "vbd/macro.h"

struct page {
        uint32_t gref;
        uint8_t *mem;
};

static struct page grant(struct hostile *h, uint32_t to, bool ro, bool ended)
{
        struct page p;
        void *mem;

        CHECK_MSG(simfront_raw_grant(h->victim, to, ro, ended, &p.gref, &mem) >= 0, "grant");
        p.mem = mem;
        return p;
}

static int16_t indirect(struct hostile *h, uint8_t op, uint64_t id, uint64_t sector, uint16_t nsegs,
                        const uint32_t *desc_grefs, unsigned ndesc)
{
        struct blkif_request_indirect ind = {.operation = BLKIF_OP_INDIRECT,
                                             .indirect_op = op,
                                             .nr_segments = nsegs,
                                             .id = id,
                                             .sector_number = sector};
        blkif_request_t q;

        for (unsigned i = 0; i < ndesc && i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++)
                ind.indirect_grefs[i] = desc_grefs[i];
        memcpy(&q, &ind, sizeof(ind));
        return h_raw_request(h, &q);
}

static int16_t discard(struct hostile *h, uint64_t id, uint64_t sector, uint64_t nr)
{
        struct blkif_request_discard d = {
            .operation = BLKIF_OP_DISCARD, .id = id, .sector_number = sector, .nr_sectors = nr};
        blkif_request_t q;

        memcpy(&q, &d, sizeof(d));
        return h_raw_request(h, &q);
}

/* Fill a descriptor page with n segments pointing at data pages. */
static void fill_desc(struct page *desc, const struct page *data, unsigned n)
{
        struct blkif_request_segment *s = (void *)desc->mem;

        for (unsigned i = 0; i < n; i++)
                s[i] = (struct blkif_request_segment){
                    .gref = data[i].gref, .first_sect = 0, .last_sect = 7};
}

#define NDATA 32

int main(void)
{
        struct hostile h;
        struct page desc, desc_ro, foreign, ended, data[NDATA], canary;
        char *img = malloc(NDATA * 4096), pattern[4096];
        uint64_t id = 1;
        const uint64_t sectors = IMG_SIZE / 512;

        h_setup(&h, "indirect requests and discard", "w", true);
        char *v = simfront_xs_read_backend(h.victim, "feature-max-indirect-segments");
        CHECK_MSG(v && atoi(v) == 256, "feature-max-indirect-segments '%s'", v ? v : "(none)");
        free(v);
        v = simfront_xs_read_backend(h.victim, "feature-discard");
        CHECK_MSG(v && atoi(v) == 1, "feature-discard '%s'", v ? v : "(none)");
        free(v);

        desc = grant(&h, 0, false, false);
        desc_ro = grant(&h, 0, true, false);
        foreign = grant(&h, 7, false, false);
        ended = grant(&h, 0, false, true);
        canary = grant(&h, 7, false, false);
        memset(pattern, 0xe1, sizeof(pattern));
        memcpy(canary.mem, pattern, 4096);
        for (unsigned i = 0; i < NDATA; i++)
                data[i] = grant(&h, 0, false, false);

        /* A good 32-segment indirect READ returns what the image holds. */
        fill_desc(&desc, data, NDATA);
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 64, NDATA, &desc.gref, 1) == BLKIF_RSP_OKAY,
                  "good indirect read refused");
        h_image_read(&h, 64 * 512, img, NDATA * 4096);
        for (unsigned i = 0; i < NDATA; i++)
                CHECK_MSG(!memcmp(data[i].mem, img + i * 4096, 4096), "indirect read page %u", i);

        /* A good indirect WRITE from a read-only descriptor page lands in the image. */
        for (unsigned i = 0; i < NDATA; i++)
                memset(data[i].mem, (int)(0x40 + i), 4096);
        fill_desc(&desc_ro, data, NDATA);
        CHECK_MSG(indirect(&h, BLKIF_OP_WRITE, id++, 128, NDATA, &desc_ro.gref, 1) ==
                      BLKIF_RSP_OKAY,
                  "good indirect write refused");
        h_image_read(&h, 128 * 512, img, NDATA * 4096);
        for (unsigned i = 0; i < NDATA; i++)
                CHECK_MSG(!memcmp(data[i].mem, img + i * 4096, 4096), "indirect write page %u", i);

        /* Segment counts. */
        const uint16_t counts[] = {0, 257, 512, 4096, 65535};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(counts); i++)
                CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 0, counts[i], &desc.gref, 1) ==
                              BLKIF_RSP_ERROR,
                          "indirect nr_segments %u accepted", counts[i]);

        /* Descriptor pages the backend must not or cannot read. */
        const uint32_t bad_desc[] = {foreign.gref, ended.gref, 3000, 4096, 0xffffffffu};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(bad_desc); i++) {
                CHECK_MSG(indirect(&h, BLKIF_OP_WRITE, id++, 0, 4, &bad_desc[i], 1) ==
                              BLKIF_RSP_ERROR,
                          "descriptor gref %u accepted", bad_desc[i]);
        }

        /* Bad entries inside the segment table. */
        struct blkif_request_segment *s = (void *)desc.mem;
        fill_desc(&desc, data, 4);
        s[3].first_sect = 5;
        s[3].last_sect = 2;
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 0, 4, &desc.gref, 1) == BLKIF_RSP_ERROR,
                  "segment first > last accepted");
        fill_desc(&desc, data, 4);
        s[2].last_sect = 8;
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 0, 4, &desc.gref, 1) == BLKIF_RSP_ERROR,
                  "segment last_sect 8 accepted");
        fill_desc(&desc, data, 4);
        s[1].gref = canary.gref; /* granted to another domain */
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 0, 4, &desc.gref, 1) == BLKIF_RSP_ERROR,
                  "data gref of another domain accepted");
        CHECK_MSG(!memcmp(canary.mem, pattern, 4096), "a page granted elsewhere changed");
        fill_desc(&desc, data, 4);
        s[0].gref = desc_ro.gref; /* a READ needs writable data pages */
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, 0, 4, &desc.gref, 1) == BLKIF_RSP_ERROR,
                  "read into a read-only page accepted");

        /* Ranges. */
        fill_desc(&desc, data, NDATA);
        const uint64_t starts[] = {sectors - 8, sectors, UINT64_MAX, UINT64_MAX / 512 + 1};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(starts); i++)
                CHECK_MSG(indirect(&h, BLKIF_OP_WRITE, id++, starts[i], NDATA, &desc.gref, 1) ==
                              BLKIF_RSP_ERROR,
                          "indirect write at sector %llu accepted", (unsigned long long)starts[i]);
        CHECK_MSG(indirect(&h, BLKIF_OP_READ, id++, sectors - 8 * NDATA, NDATA, &desc.gref, 1) ==
                      BLKIF_RSP_OKAY,
                  "indirect read of the last pages refused");

        /* Discard ranges. */
        const uint64_t dis[][2] = {{sectors, 1},    {sectors - 1, 2}, {0, sectors + 1},
                                   {UINT64_MAX, 1}, {1, UINT64_MAX},  {UINT64_MAX / 512 + 1, 8}};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(dis); i++)
                CHECK_MSG(discard(&h, id++, dis[i][0], dis[i][1]) == BLKIF_RSP_ERROR,
                          "discard %llu+%llu accepted", (unsigned long long)dis[i][0],
                          (unsigned long long)dis[i][1]);
        CHECK_MSG(discard(&h, id++, 0, 0) == BLKIF_RSP_OKAY, "empty discard refused");
        CHECK_MSG(discard(&h, id++, 2048, 256) == BLKIF_RSP_OKAY, "good discard refused");
        h_image_read(&h, 2048 * 512, img, 256 * 512);
        for (unsigned i = 0; i < 256 * 512; i++)
                CHECK_MSG(img[i] == 0, "discarded range reads %#x at %u", img[i] & 0xff, i);

        h_expect_log(&h, "indirect nr_segments out of range");
        h_expect_log(&h, "grant copy");
        h_expect_log(&h, "discard range past the end");
        free(img);
        h_teardown(&h);
        return 0;
}
