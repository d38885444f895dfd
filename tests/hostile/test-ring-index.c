/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A producer index running more than a ring ahead (or backwards): the
 * backend must call the ring bogus, stop using it, go to Closing and log it
 * once, without crashing; the guest can then reconnect cleanly.
 */
#include <stdio.h>
#include <string.h>

#include "hostile.h"
#include "vbd/macro.h"

static void reconnect_and_use(struct hostile *h)
{
        char w[4096], r[4096];

        /* The guest notices Closing and closes; the backend waits for it. */
        CHECK_MSG(simfront_wait_backend_state(h->victim, SIMFRONT_XB_CLOSING, 5000) >= 0,
                  "backend did not go to Closing");
        CHECK_MSG(simfront_disconnect(h->victim) >= 0, "disconnect: %s",
                  simfront_errmsg(h->victim));
        h_victim_alive(h);
        CHECK_MSG(simfront_connect(h->victim) >= 0, "reconnect: %s", simfront_errmsg(h->victim));
        memset(w, 0x3c, sizeof(w));
        CHECK_MSG(simfront_write(h->victim, 4096, w, sizeof(w)) >= 0, "write after reconnect");
        CHECK_MSG(simfront_read(h->victim, 4096, r, sizeof(r)) >= 0, "read after reconnect");
        CHECK_MSG(!memcmp(w, r, sizeof(r)), "data after reconnect");
}

int main(void)
{
        struct hostile h;
        const int32_t overruns[] = {1, 100, -5, 0x40000000};

        h_setup(&h, "producer index overrun", "w", true);
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(overruns); i++) {
                blkif_sring_t *s = simfront_raw_sring(h.victim);
                uint32_t prod = s->rsp_prod + simfront_ring_size(h.victim) + (uint32_t)overruns[i];

                if (overruns[i] < 0)
                        prod = s->rsp_prod + (uint32_t)overruns[i];
                simfront_raw_set_req_prod(h.victim, prod);
                CHECK_MSG(simfront_raw_notify(h.victim) >= 0, "notify");
                h_expect_log(&h, "bogus ring");
                h_bystander_io(&h);
                reconnect_and_use(&h);
        }
        h_teardown(&h);
        return 0;
}
