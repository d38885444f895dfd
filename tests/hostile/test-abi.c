/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Mismatched ABI: the guest negotiates one ring layout and writes requests
 * in the other.  The backend reads garbage fields (ids, sectors, segment
 * tables shifted by 4 bytes); each slot must still get exactly one answer,
 * nothing may crash or reach outside the guest's grants, and correct
 * requests keep working afterwards.
 */
#include <stdio.h>
#include <string.h>

#include "hostile.h"

static void attack(const char *protocol, enum simfront_abi wrong)
{
        struct hostile h;
        char name[64], w[4096], r[4096], canary_copy[4096];
        uint32_t gref, canary_gref;
        void *page, *canary;

        snprintf(name, sizeof(name), "%s ring, requests in the other layout", protocol);
        h_setup_protocol(&h, name, "w", true, protocol);
        CHECK_MSG(simfront_raw_grant(h.victim, 0, false, false, &gref, &page) >= 0, "grant");
        CHECK_MSG(simfront_raw_grant(h.victim, 7, false, false, &canary_gref, &canary) >= 0,
                  "grant");
        memset(canary, 0x99, 4096);
        memcpy(canary_copy, canary, 4096);

        for (uint64_t i = 0; i < 40; i++) {
                union simfront_req q;
                blkif_response_t rsp;

                memset(&q, 0, sizeof(q));
                switch (i % 4) {
                case 0:
                case 1:
                        q.rw.operation = i % 4 ? BLKIF_OP_WRITE : BLKIF_OP_READ;
                        q.rw.nr_segments = 1 + (uint8_t)(i % 11);
                        q.rw.id = 0x1000 + i;
                        q.rw.sector_number = i * 8;
                        for (unsigned s = 0; s < q.rw.nr_segments; s++)
                                q.rw.seg[s] = (struct blkif_request_segment){
                                    .gref = s == 3 ? canary_gref : gref, .last_sect = 7};
                        break;
                case 2:
                        q.discard.operation = BLKIF_OP_DISCARD;
                        q.discard.id = 0x1000 + i;
                        q.discard.sector_number = i * 64;
                        q.discard.nr_sectors = 8;
                        break;
                default:
                        q.indirect.operation = BLKIF_OP_INDIRECT;
                        q.indirect.indirect_op = BLKIF_OP_READ;
                        q.indirect.nr_segments = 16;
                        q.indirect.id = 0x1000 + i;
                        q.indirect.indirect_grefs[0] = gref;
                        break;
                }
                CHECK_MSG(simfront_raw_put_req_as(h.victim, &q, wrong) >= 0, "put");
                simfront_raw_push(h.victim);
                CHECK_MSG(simfront_raw_notify(h.victim) >= 0, "notify");
                CHECK_MSG(simfront_raw_get_response(h.victim, &rsp, 5000) == 1,
                          "no answer to mismatched request %llu", (unsigned long long)i);
                h_victim_alive(&h);
        }
        CHECK_MSG(!memcmp(canary, canary_copy, 4096), "a page granted to another domain changed");
        h_bystander_io(&h);

        /* The ring still works in its own layout. */
        memset(w, 0x6d, sizeof(w));
        CHECK_MSG(simfront_write(h.victim, 8192, w, sizeof(w)) >= 0, "write after the attack: %s",
                  simfront_errmsg(h.victim));
        CHECK_MSG(simfront_read(h.victim, 8192, r, sizeof(r)) >= 0, "read after the attack");
        CHECK_MSG(!memcmp(w, r, sizeof(r)), "data after the attack");
        h_teardown(&h);
}

int main(void)
{
        attack("x86_32-abi", SIMFRONT_ABI_X86_64);
        attack("x86_64-abi", SIMFRONT_ABI_X86_32);
        return 0;
}
