/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Garbage in the frontend's xenstore directory: non-numeric or out-of-range
 * ring-ref, absurd ring-page-order, bad event-channel, unknown protocol,
 * grants the backend cannot map.  The backend refuses to connect with one
 * clear log line and goes to Closing; after the guest resets, a correct
 * handshake still works.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostile.h"
#include "vbd/macro.h"

struct garbage {
        const char *key, *value; /* value NULL: remove the key */
        const char *log;         /* expected in the victim's log */
};

static void publish_good(struct hostile *h)
{
        uint32_t grefs[16];
        char v[32];
        unsigned n = simfront_raw_ring_grefs(h->victim, grefs, 16);

        CHECK_MSG(n == 1, "expected a one-page ring, got %u", n);
        snprintf(v, sizeof(v), "%u", grefs[0]);
        CHECK_MSG(simfront_xs_write(h->victim, "ring-ref", v) >= 0, "write ring-ref");
        snprintf(v, sizeof(v), "%u", simfront_raw_port(h->victim));
        CHECK_MSG(simfront_xs_write(h->victim, "event-channel", v) >= 0, "write event-channel");
        CHECK_MSG(simfront_xs_write(h->victim, "protocol", "x86_64-abi") >= 0, "write protocol");
}

static void try_garbage(struct hostile *h, const struct garbage *g)
{
        CHECK_MSG(simfront_prepare(h->victim) >= 0, "prepare: %s", simfront_errmsg(h->victim));
        publish_good(h);
        if (g->value)
                CHECK_MSG(simfront_xs_write(h->victim, g->key, g->value) >= 0, "write %s", g->key);
        else
                CHECK_MSG(simfront_xs_rm(h->victim, g->key) >= 0, "rm %s", g->key);
        CHECK_MSG(simfront_set_state(h->victim, SIMFRONT_XB_INITIALISED) >= 0, "state 3");
        if (simfront_wait_backend_state(h->victim, SIMFRONT_XB_CLOSING, 5000) < 0)
                CHECK_FAIL("%s='%s': backend did not refuse (state %d)", g->key,
                           g->value ? g->value : "(removed)", simfront_backend_state(h->victim));
        h_expect_log(h, g->log);
        h_victim_alive(h);
        h_bystander_io(h);
        /* The guest gives up and starts over, as after a reboot. */
        CHECK_MSG(simfront_disconnect(h->victim) >= 0, "reset: %s", simfront_errmsg(h->victim));
        for (const char *const *k =
                 (const char *const[]){"ring-ref", "ring-ref0", "ring-ref1", "ring-page-order",
                                       "event-channel", "protocol", NULL};
             *k; k++)
                (void)simfront_xs_rm(h->victim, *k);
}

int main(void)
{
        struct hostile h;
        uint32_t ro_gref, foreign_gref;
        void *page;
        char ro[16], foreign[16];

        h_setup(&h, "xenstore garbage", "w", false);
        /* Grants the backend must not be able to map as a ring. */
        CHECK_MSG(simfront_raw_grant(h.victim, 0, true, false, &ro_gref, &page) >= 0, "grant");
        CHECK_MSG(simfront_raw_grant(h.victim, 9, false, false, &foreign_gref, &page) >= 0,
                  "grant");
        snprintf(ro, sizeof(ro), "%u", ro_gref);
        snprintf(foreign, sizeof(foreign), "%u", foreign_gref);

        const struct garbage cases[] = {
            {"ring-ref", "abc", "bad ring-ref"},
            {"ring-ref", "", "bad ring-ref"},
            {"ring-ref", "-1", "bad ring-ref"},
            {"ring-ref", "4294967296", "bad ring-ref"},
            {"ring-ref", "12abc", "bad ring-ref"},
            {"ring-ref", " 12", "bad ring-ref"},
            {"ring-ref", NULL, "published no ring-ref"},
            {"ring-ref", "3999", "cannot map"},
            {"ring-ref", ro, "cannot map"},
            {"ring-ref", foreign, "cannot map"},
            {"ring-page-order", "99", "ring-page-order '99'"},
            {"ring-page-order", "5", "ring-page-order '5'"},
            {"ring-page-order", "18446744073709551616", "bad ring-page-order"},
            {"ring-page-order", "x", "bad ring-page-order"},
            {"ring-page-order", "2", "published no ring-ref0"}, /* no ring-ref%u published */
            {"event-channel", "abc", "bad event-channel"},
            {"event-channel", NULL, "published no event-channel"},
            {"event-channel", "1000", "cannot bind event channel"},
            {"protocol", "sparc-abi", "unknown protocol"},
            {"protocol", "x86_64-abi ", "unknown protocol"},
        };
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(cases); i++)
                try_garbage(&h, &cases[i]);

        /* A garbage frontend state is treated as closed, not trusted. */
        CHECK_MSG(simfront_xs_write(h.victim, "state", "banana") >= 0, "write state");
        h_expect_log(&h, "not a xenbus state");
        h_victim_alive(&h);

        /* After all that, a correct handshake works. */
        CHECK_MSG(simfront_connect(h.victim) >= 0, "connect: %s", simfront_errmsg(h.victim));
        char w[512] = "after the garbage", r[512];
        CHECK_MSG(simfront_write(h.victim, 0, w, sizeof(w)) >= 0, "write");
        CHECK_MSG(simfront_read(h.victim, 0, r, sizeof(r)) >= 0, "read");
        CHECK_MSG(!memcmp(w, r, sizeof(r)), "data");
        h_teardown(&h);
        return 0;
}
