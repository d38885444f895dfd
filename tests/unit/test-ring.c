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

#include "ring.h"

static int failures;
#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);   \
                        failures++;                                                                \
                }                                                                                  \
        } while (0)

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
        CHECK(vbd_ring_get_request(&r, &req) == -EPROTO);
        s->req_prod = (uint32_t)-5; /* wrapped backwards */
        CHECK(vbd_ring_get_request(&r, &req) == -EPROTO);
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
        CHECK(vbd_ring_init(&r, pages, 64, VBD_RING_ABI_X86_64) == -EINVAL);
        CHECK(vbd_ring_parse_abi(NULL, &abi) == 0 && abi == VBD_RING_ABI_X86_64);
        CHECK(vbd_ring_parse_abi("x86_32-abi", &abi) == 0 && abi == VBD_RING_ABI_X86_32);
        CHECK(vbd_ring_parse_abi("x86_64-abi", &abi) == 0 && abi == VBD_RING_ABI_X86_64);
        CHECK(vbd_ring_parse_abi("arm-abi", &abi) == -EINVAL);
        CHECK(vbd_ring_parse_abi("x86_64-abi ", &abi) == -EINVAL);
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

int main(void)
{
        test_native_roundtrip();
        test_bogus_producer();
        test_x86_32_layout();
        test_multipage_and_abi();
        test_segment_copy_bounded();
        if (failures)
                fprintf(stderr, "%d check(s) failed\n", failures);
        return failures ? 1 : 0;
}
