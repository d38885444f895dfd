/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ring.c against rings built with Xen's own ring macros (xen/io/ring.h and
 * xen/io/blkif.h define the native x86_64 layout), plus the x86_32 layout
 * written byte by byte.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
/* ring.h's barriers for the frontend side of the test */
#define wmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#include <xen/io/blkif.h>

#include "check.h"
#include "ring.h"
#include "vbd/macro.h"

static _Alignas(4096) unsigned char pages[4][4096];

static void test_native_roundtrip(void)
{
        blkif_sring_t *s = (blkif_sring_t *)pages[0];
        blkif_front_ring_t fr;
        struct vbd_ring r;
        struct vbd_ring_req req;

        memset(pages, 0, sizeof(pages));
        SHARED_RING_INIT(s);
        FRONT_RING_INIT(&fr, s, 4096);
        CHECK(vbd_ring_init(&r, s, 4096, VBD_RING_ABI_X86_64) == 0);
        CHECK(r.nr_ents == RING_SIZE(&fr));
        CHECK(vbd_ring_get_request(&r, &req) == 0);

        for (unsigned i = 0; i < 3; i++) {
                blkif_request_t *q = RING_GET_REQUEST(&fr, fr.req_prod_pvt++);
                q->operation = BLKIF_OP_WRITE;
                q->nr_segments = 2;
                q->id = 0x1122334455667788ull + i;
                q->sector_number = 1000 + i;
                q->seg[0] =
                    (struct blkif_request_segment){.gref = 7, .first_sect = 1, .last_sect = 7};
                q->seg[1] =
                    (struct blkif_request_segment){.gref = 9, .first_sect = 0, .last_sect = 3};
        }
        RING_PUSH_REQUESTS(&fr);
        for (unsigned i = 0; i < 3; i++) {
                CHECK(vbd_ring_get_request(&r, &req) == 1);
                CHECK(req.operation == BLKIF_OP_WRITE && req.nr_segments == 2);
                CHECK(req.id == 0x1122334455667788ull + i && req.sector_number == 1000 + i);
                CHECK(req.seg[1].gref == 9 && req.seg[1].last_sect == 3 &&
                      req.seg[0].first_sect == 1);
        }
        CHECK(vbd_ring_get_request(&r, &req) == 0);

        /* Responses appear where blkfront reads them, and notify honours rsp_event. */
        s->rsp_event = 1;
        vbd_ring_put_response(&r, 42, BLKIF_OP_WRITE, BLKIF_RSP_ERROR);
        CHECK(vbd_ring_push_responses(&r) == true);
        blkif_response_t *p = RING_GET_RESPONSE(&fr, fr.rsp_cons);
        CHECK(p->id == 42 && p->status == BLKIF_RSP_ERROR && p->operation == BLKIF_OP_WRITE);
        fr.rsp_cons++;
        s->rsp_event = fr.rsp_cons + 5; /* frontend wants to hear only after 5 more */
        vbd_ring_put_response(&r, 43, BLKIF_OP_WRITE, 0);
        CHECK(vbd_ring_push_responses(&r) == false);
        CHECK(vbd_ring_push_responses(&r) == false); /* nothing new */

        /* final check arms req_event */
        CHECK(vbd_ring_final_check(&r) == false);
        CHECK(s->req_event == r.req_cons + 1);
}

static void test_bogus_producer(void)
{
        blkif_sring_t *s = (blkif_sring_t *)pages[0];
        struct vbd_ring r;
        struct vbd_ring_req req;

        memset(pages, 0, sizeof(pages));
        SHARED_RING_INIT(s);
        CHECK(vbd_ring_init(&r, s, 4096, VBD_RING_ABI_X86_64) == 0);
        s->req_prod = r.nr_ents + 1; /* more than a ring ahead */
        CHECK_ERR(vbd_ring_get_request(&r, &req), -EPROTO);
        s->req_prod = (uint32_t)-5; /* wrapped backwards */
        CHECK_ERR(vbd_ring_get_request(&r, &req), -EPROTO);
        s->req_prod = r.nr_ents; /* exactly a ring: fine */
        for (unsigned i = 0; i < r.nr_ents; i++)
                CHECK(vbd_ring_get_request(&r, &req) == 1);
        /* No room for more responses: nothing more is consumed. */
        s->req_prod = r.nr_ents; /* and the producer cannot go further without responses */
        CHECK(vbd_ring_get_request(&r, &req) == 0);
        CHECK(vbd_ring_outstanding(&r) == r.nr_ents);
}

static void test_x86_32_layout(void)
{
        unsigned char *base = pages[0];
        struct vbd_ring r;
        struct vbd_ring_req req;
        uint64_t id = 0xdeadbeefcafef00dull, sector = 123456789;
        uint32_t gref = 0x01020304, prod = 1;

        memset(pages, 0, sizeof(pages));
        CHECK(vbd_ring_init(&r, base, 4096, VBD_RING_ABI_X86_32) == 0);
        CHECK(r.nr_ents == 32);
        /* i386: op@0 nr@1 handle@2 id@4 sector@12 seg@20 (8 bytes each), 108 per entry */
        unsigned char *e = base + 64;
        e[0] = BLKIF_OP_READ;
        e[1] = 1;
        memcpy(e + 4, &id, 8);
        memcpy(e + 12, &sector, 8);
        memcpy(e + 20, &gref, 4);
        e[24] = 2;
        e[25] = 5;
        memcpy(base, &prod, 4);
        CHECK(vbd_ring_get_request(&r, &req) == 1);
        CHECK(req.id == id && req.sector_number == sector && req.operation == BLKIF_OP_READ);
        CHECK(req.seg[0].gref == gref && req.seg[0].first_sect == 2 && req.seg[0].last_sect == 5);
        /* response: id@0 op@8 status@10, 12 bytes, in slot 0 */
        vbd_ring_put_response(&r, id, BLKIF_OP_READ, BLKIF_RSP_EOPNOTSUPP);
        (void)vbd_ring_push_responses(&r);
        uint64_t rid;
        int16_t st;
        memcpy(&rid, e, 8);
        memcpy(&st, e + 10, 2);
        CHECK(rid == id && e[8] == BLKIF_OP_READ && st == BLKIF_RSP_EOPNOTSUPP);
        uint32_t rsp_prod;
        memcpy(&rsp_prod, base + 8, 4);
        CHECK(rsp_prod == 1);
}

static void test_multipage_and_abi(void)
{
        struct vbd_ring r;
        enum vbd_ring_abi abi;

        memset(pages, 0, sizeof(pages));
        CHECK(vbd_ring_init(&r, pages, sizeof(pages), VBD_RING_ABI_X86_64) == 0);
        CHECK(r.nr_ents == 128); /* (16384 - 64) / 112 = 145 -> 128 */
        CHECK_ERR(vbd_ring_init(&r, pages, 64, VBD_RING_ABI_X86_64), -EINVAL);
        CHECK(vbd_ring_parse_abi(NULL, &abi) == 0 && abi == VBD_RING_ABI_X86_64);
        CHECK(vbd_ring_parse_abi("x86_32-abi", &abi) == 0 && abi == VBD_RING_ABI_X86_32);
        CHECK(vbd_ring_parse_abi("x86_64-abi", &abi) == 0 && abi == VBD_RING_ABI_X86_64);
        CHECK_ERR(vbd_ring_parse_abi("arm-abi", &abi), -EINVAL);
        CHECK_ERR(vbd_ring_parse_abi("x86_64-abi ", &abi), -EINVAL);
}

static void test_segment_copy_bounded(void)
{
        blkif_sring_t *s = (blkif_sring_t *)pages[0];
        blkif_front_ring_t fr;
        struct vbd_ring r;
        struct vbd_ring_req req;

        memset(pages, 0, sizeof(pages));
        SHARED_RING_INIT(s);
        FRONT_RING_INIT(&fr, s, 4096);
        CHECK(vbd_ring_init(&r, s, 4096, VBD_RING_ABI_X86_64) == 0);
        blkif_request_t *q = RING_GET_REQUEST(&fr, fr.req_prod_pvt++);
        q->operation = BLKIF_OP_READ;
        q->nr_segments = 255; /* copied as is, checked by the caller; no overrun here */
        RING_PUSH_REQUESTS(&fr);
        memset(&req, 0xaa, sizeof(req));
        CHECK(vbd_ring_get_request(&r, &req) == 1);
        CHECK(req.nr_segments == 255);
}

static void test_indirect_discard_decode(void)
{
        blkif_sring_t *s = (blkif_sring_t *)pages[0];
        blkif_front_ring_t fr;
        struct vbd_ring r;
        struct vbd_ring_req req;

        memset(pages, 0, sizeof(pages));
        SHARED_RING_INIT(s);
        FRONT_RING_INIT(&fr, s, 4096);
        CHECK(vbd_ring_init(&r, s, 4096, VBD_RING_ABI_X86_64) == 0);
        struct blkif_request_indirect *ind = (void *)RING_GET_REQUEST(&fr, fr.req_prod_pvt++);
        ind->operation = BLKIF_OP_INDIRECT;
        ind->indirect_op = BLKIF_OP_WRITE;
        ind->nr_segments = 300;
        ind->id = 77;
        ind->sector_number = 1234;
        for (unsigned i = 0; i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++)
                ind->indirect_grefs[i] = 100 + i;
        struct blkif_request_discard *d = (void *)RING_GET_REQUEST(&fr, fr.req_prod_pvt++);
        d->operation = BLKIF_OP_DISCARD;
        d->flag = BLKIF_DISCARD_SECURE;
        d->id = 78;
        d->sector_number = 9;
        d->nr_sectors = 1ULL << 40;
        RING_PUSH_REQUESTS(&fr);
        CHECK(vbd_ring_peek_op(&r) == BLKIF_OP_INDIRECT);
        CHECK(vbd_ring_get_request(&r, &req) == 1);
        CHECK(req.operation == BLKIF_OP_INDIRECT && req.indirect_op == BLKIF_OP_WRITE);
        CHECK(req.nr_segments == 300 && req.id == 77 && req.sector_number == 1234);
        CHECK(req.indirect_grefs[0] == 100 && req.indirect_grefs[7] == 107);
        CHECK(vbd_ring_get_request(&r, &req) == 1);
        CHECK(req.operation == BLKIF_OP_DISCARD && req.flag == BLKIF_DISCARD_SECURE);
        CHECK(req.id == 78 && req.sector_number == 9 && req.nr_sectors == (1ULL << 40));
        CHECK(vbd_ring_peek_op(&r) == -1);
}

static void test_check(void)
{
        const struct vbd_ring_limits l = {
            .size = 1 << 20, .discard = true, .max_indirect_segments = 256};
        const struct vbd_ring_limits ro = {.size = 1 << 20, .readonly = true};
        struct vbd_ring_xfer x;
        const char *why;
        struct {
                struct vbd_ring_req req;
                const struct vbd_ring_limits *l;
                int want;
        } cases[] = {
            {{.operation = BLKIF_OP_READ, .nr_segments = 1}, &l, 0},
            {{.operation = BLKIF_OP_READ, .nr_segments = 0}, &l, -EINVAL},
            {{.operation = BLKIF_OP_READ, .nr_segments = 12}, &l, -EINVAL},
            {{.operation = BLKIF_OP_WRITE, .nr_segments = 1}, &ro, -EROFS},
            {{.operation = BLKIF_OP_WRITE_BARRIER, .nr_segments = 0}, &l, 0},
            {{.operation = BLKIF_OP_FLUSH_DISKCACHE}, &ro, 0},
            {{.operation = BLKIF_OP_INDIRECT, .indirect_op = 0, .nr_segments = 256}, &l, 0},
            {{.operation = BLKIF_OP_INDIRECT, .indirect_op = 0, .nr_segments = 257}, &l, -EINVAL},
            {{.operation = BLKIF_OP_INDIRECT, .indirect_op = 3, .nr_segments = 1}, &l, -EOPNOTSUPP},
            {{.operation = BLKIF_OP_INDIRECT, .indirect_op = 0, .nr_segments = 1},
             &ro,
             -EOPNOTSUPP},
            {{.operation = BLKIF_OP_DISCARD, .sector_number = 2047, .nr_sectors = 1}, &l, 0},
            {{.operation = BLKIF_OP_DISCARD, .sector_number = 2047, .nr_sectors = 2}, &l, -EINVAL},
            {{.operation = BLKIF_OP_DISCARD, .sector_number = 1, .nr_sectors = UINT64_MAX},
             &l,
             -EINVAL},
            {{.operation = BLKIF_OP_DISCARD, .flag = 1, .nr_sectors = 1}, &l, -EOPNOTSUPP},
            {{.operation = BLKIF_OP_DISCARD, .nr_sectors = 1}, &ro, -EOPNOTSUPP},
            {{.operation = 99}, &l, -EOPNOTSUPP},
        };
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(cases); i++) {
                int r = vbd_ring_check_request(&cases[i].req, cases[i].l, &x, &why);
                if (r != cases[i].want)
                        fprintf(stderr, "check case %u: got %d want %d\n", i, r, cases[i].want);
                CHECK(r == cases[i].want);
        }
        CHECK(vbd_ring_check_request(&cases[6].req, &l, &x, &why) == 0 && x.nr_indirect_pages == 1);

        /* Segments and range, including a sector whose byte offset wraps. */
        struct vbd_ring_seg seg[2] = {{1, 0, 7}, {2, 0, 3}};
        struct vbd_ring_req rw = {.operation = BLKIF_OP_READ, .nr_segments = 2};
        const uint64_t sectors[] = {
            0, 2048 - 12, 2048 - 11, 2048, UINT64_MAX / 512 + 1, (1ULL << 55) + 1, UINT64_MAX};
        const int want[] = {0, 0, -EINVAL, -EINVAL, -EINVAL, -EINVAL, -EINVAL};
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(sectors); i++) {
                rw.sector_number = sectors[i];
                CHECK(vbd_ring_check_request(&rw, &l, &x, &why) == 0);
                int r = vbd_ring_check_segments(seg, 2, l.size, &x, &why);
                if (r != want[i])
                        fprintf(stderr, "sector %llu: got %d\n", (unsigned long long)sectors[i], r);
                CHECK(r == want[i]);
                if (r == 0)
                        CHECK(x.len == 6144 && x.offset == sectors[i] * 512);
        }
        seg[1].first_sect = 4;
        seg[1].last_sect = 3;
        rw.sector_number = 0;
        CHECK(vbd_ring_check_request(&rw, &l, &x, &why) == 0);
        CHECK_ERR(vbd_ring_check_segments(seg, 2, l.size, &x, &why), -EINVAL);
        seg[1] = (struct vbd_ring_seg){2, 0, 8};
        CHECK_ERR(vbd_ring_check_segments(seg, 2, l.size, &x, &why), -EINVAL);

        /* Indirect segment tables decode from the wire layout. */
        struct blkif_request_segment wire[3] = {{5, 1, 2}, {6, 0, 7}, {0xffffffff, 7, 7}};
        struct vbd_ring_seg out[3];
        vbd_ring_decode_indirect(wire, 3, out);
        CHECK(out[0].gref == 5 && out[0].first_sect == 1 && out[0].last_sect == 2);
        CHECK(out[2].gref == 0xffffffff && out[2].first_sect == 7);
}

int main(void)
{
        test_indirect_discard_decode();
        test_check();
        test_native_roundtrip();
        test_bogus_producer();
        test_x86_32_layout();
        test_multipage_and_abi();
        test_segment_copy_bounded();
        return check_result("test-ring");
}
