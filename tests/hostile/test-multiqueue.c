/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkif multi-queue attacks: multi-queue-num-queues of 0, above the
 * backend's multi-queue-max-queues, huge or not a number; a queue-N key
 * missing or garbage; one grant or one event channel for two queues; an
 * event channel that cannot be bound for the last queue (the queues set up
 * before it are released).  Each is a clean refusal (backend Closing, one
 * log line, no grant left mapped) and the guest can start over.  Then, over
 * 2 queues: a bad request on queue 1 is answered on queue 1 while both
 * queues keep serving verified data; a reconnect with 4 queues and with 1;
 * a bogus producer index on queue 1 drops the device (the existing policy
 * for bogus rings), and a reconnect works.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hostile.h"
#include "vbd/macro.h"

#define MAX_QUEUES 4

struct garbage {
        const char *key, *value; /* value NULL: remove the key */
        const char *log;         /* expected (once more) in the victim's log */
};

/* How many times needle is in the victim's log. */
static unsigned log_count(struct hostile *h, const char *needle)
{
        char *log = simfront_vbd_read_log(h->victim_vbd), *p = log;
        unsigned n = 0;

        while (p && (p = strstr(p, needle))) {
                n++;
                p += strlen(needle);
        }
        free(log);
        return n;
}

static void expect_log_more(struct hostile *h, const char *needle, unsigned before)
{
        for (int i = 0; i < 200; i++) {
                if (log_count(h, needle) > before)
                        return;
                usleep(10000);
        }
        CHECK_FAIL("victim log has no new '%s'", needle);
}

static void put(struct hostile *h, const char *key, unsigned v)
{
        char s[16];

        snprintf(s, sizeof(s), "%u", v);
        CHECK_MSG(simfront_xs_write(h->victim, key, s) >= 0, "write %s", key);
}

/* What simfront_publish writes for 2 queues, without the state change. */
static void publish_good(struct hostile *h, uint32_t *ref, uint32_t *port)
{
        char key[32];

        CHECK_MSG(simfront_queues(h->victim) == 2, "victim has %u queues",
                  simfront_queues(h->victim));
        put(h, "multi-queue-num-queues", 2);
        for (unsigned q = 0; q < 2; q++) {
                CHECK(simfront_raw_select_queue(h->victim, q) == 0);
                CHECK(simfront_raw_ring_grefs(h->victim, &ref[q], 1) == 1);
                port[q] = simfront_raw_port(h->victim);
                snprintf(key, sizeof(key), "queue-%u/ring-ref", q);
                put(h, key, ref[q]);
                snprintf(key, sizeof(key), "queue-%u/event-channel", q);
                put(h, key, port[q]);
        }
        CHECK(simfront_raw_select_queue(h->victim, 0) == 0);
        CHECK_MSG(simfront_xs_write(h->victim, "protocol", "x86_64-abi") >= 0, "protocol");
}

static void reset_keys(struct hostile *h)
{
        static const char *const keys[] = {
            "multi-queue-num-queues", "queue-0",  "queue-1", "queue-2", "ring-ref",
            "event-channel",          "protocol", NULL};

        for (const char *const *k = keys; *k; k++)
                (void)simfront_xs_rm(h->victim, *k);
}

static void try_garbage(struct hostile *h, const struct garbage *g)
{
        uint32_t ref[2], port[2];
        unsigned before;
        char v[32];

        CHECK_MSG(simfront_prepare(h->victim) >= 0, "prepare: %s", simfront_errmsg(h->victim));
        before = log_count(h, g->log);
        publish_good(h, ref, port);
        /* "REF0" / "PORT0": queue 0's grant or event channel, for queue 1 too. */
        if (g->value && !strcmp(g->value, "REF0"))
                snprintf(v, sizeof(v), "%u", ref[0]);
        else if (g->value && !strcmp(g->value, "PORT0"))
                snprintf(v, sizeof(v), "%u", port[0]);
        else if (g->value)
                snprintf(v, sizeof(v), "%s", g->value);
        if (g->value)
                CHECK_MSG(simfront_xs_write(h->victim, g->key, v) >= 0, "write %s", g->key);
        else
                CHECK_MSG(simfront_xs_rm(h->victim, g->key) >= 0, "rm %s", g->key);
        CHECK_MSG(simfront_set_state(h->victim, SIMFRONT_XB_INITIALISED) >= 0, "state 3");
        if (simfront_wait_backend_state(h->victim, SIMFRONT_XB_CLOSING, 5000) < 0)
                CHECK_FAIL("%s='%s': backend did not refuse (state %d)", g->key,
                           g->value ? g->value : "(removed)", simfront_backend_state(h->victim));
        expect_log_more(h, g->log, before);
        h_victim_alive(h);
        h_bystander_io(h);
        /* Starting over ends every grant: one still mapped (a queue set up
         * before the failing one and not released) fails here with EBUSY. */
        CHECK_MSG(simfront_disconnect(h->victim) >= 0, "%s='%s': reset: %s", g->key,
                  g->value ? g->value : "(removed)", simfront_errmsg(h->victim));
        reset_keys(h);
}

/* A pattern through the ring (both queues: ios go round robin), read back
 * through the ring and from the image file. */
static void verified_io(struct hostile *h, uint64_t off, unsigned seed)
{
        static char w[256 << 10], r[256 << 10];

        for (size_t i = 0; i < sizeof(w); i++)
                w[i] = (char)(i * 7 + seed + i / 4096);
        CHECK_MSG(simfront_write(h->victim, off, w, sizeof(w)) >= 0, "write: %s",
                  simfront_errmsg(h->victim));
        memset(r, 0, sizeof(r));
        CHECK_MSG(simfront_read(h->victim, off, r, sizeof(r)) >= 0, "read: %s",
                  simfront_errmsg(h->victim));
        CHECK_MSG(!memcmp(w, r, sizeof(r)), "data read back differs at %" PRIu64, off);
        CHECK_MSG(simfront_flush(h->victim) >= 0, "flush: %s", simfront_errmsg(h->victim));
        h_image_read(h, off, r, sizeof(r));
        CHECK_MSG(!memcmp(w, r, sizeof(r)), "image differs at %" PRIu64, off);
}

/* Every queue carried requests since the frontend connected. */
static void all_queues_used(struct hostile *h, unsigned n)
{
        struct simfront_stats st;

        CHECK_MSG(simfront_queues(h->victim) == n, "%u queues, expected %u",
                  simfront_queues(h->victim), n);
        simfront_get_stats(h->victim, &st);
        for (unsigned q = 0; q < n; q++)
                CHECK_MSG(st.queue_requests[q] > 0, "no request on queue %u", q);
}

static void reconnect(struct hostile *h, unsigned queues)
{
        struct simfront_opts fo = {.domid = VICTIM_DOMID, .devid = DEVID, .queues = queues};
        char line[64];
        unsigned before;

        snprintf(line, sizeof(line), "connected: %u queue(s)", queues);
        before = log_count(h, line);
        if (h->victim)
                CHECK_MSG(simfront_disconnect(h->victim) >= 0, "disconnect: %s",
                          simfront_errmsg(h->victim));
        simfront_free(h->victim);
        h->victim = simfront_new(h->env, &fo);
        CHECK_MSG(h->victim, "simfront_new");
        CHECK_MSG(simfront_connect(h->victim) >= 0, "connect %u queues: %s", queues,
                  simfront_errmsg(h->victim));
        expect_log_more(h, line, before);
}

int main(void)
{
        struct hostile h;
        blkif_response_t rsp;

        h_setup_queues(&h, "multi-queue", false, MAX_QUEUES, 2);
        CHECK_MSG(simfront_prepare(h.victim) >= 0, "prepare: %s", simfront_errmsg(h.victim));
        CHECK_MSG(simfront_disk(h.victim)->max_queues == MAX_QUEUES,
                  "backend multi-queue-max-queues %u", simfront_disk(h.victim)->max_queues);
        CHECK_MSG(simfront_disconnect(h.victim) >= 0, "reset: %s", simfront_errmsg(h.victim));

        const struct garbage cases[] = {
            {"multi-queue-num-queues", "0", "asked for 0 queues"},
            {"multi-queue-num-queues", "5", "multi-queue-num-queues '5': the most is 4"},
            {"multi-queue-num-queues", "4294967297", "the most is 4"},
            {"multi-queue-num-queues", "18446744073709551616",
             "multi-queue-num-queues '18446744073709551616': the most is 4"},
            {"multi-queue-num-queues", "two", "multi-queue-num-queues 'two': not a number"},
            {"multi-queue-num-queues", "-2", "bad multi-queue-num-queues '-2'"},
            {"multi-queue-num-queues", "", "bad multi-queue-num-queues"},
            {"multi-queue-num-queues", "3", "published no queue-2/ring-ref\n"},
            {"queue-1/ring-ref", NULL, "published no queue-1/ring-ref\n"},
            {"queue-1/event-channel", NULL, "published no queue-1/event-channel"},
            {"queue-1", NULL, "published no queue-1/ring-ref\n"},
            {"queue-1/ring-ref", "abc", "bad queue-1/ring-ref 'abc'"},
            {"queue-1/event-channel", "4294967296", "bad queue-1/event-channel"},
            {"queue-1/ring-ref", "REF0", "twice (queue 0 page 0, queue 1 page 0)"},
            {"queue-1/event-channel", "PORT0", "for queues 0 and 1"},
            {"queue-1/ring-ref", "3999", "cannot map 1 ring page(s) of queue 1"},
            {"queue-1/event-channel", "1000", "(queue 1) of domain 1"},
        };
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(cases); i++)
                try_garbage(&h, &cases[i]);

        /* A correct 2-queue handshake, verified data over both queues. */
        reconnect(&h, 2);
        verified_io(&h, 0, 1);
        all_queues_used(&h, 2);

        /* A bad request on queue 1: answered there, with an error; queue 0
         * gets nothing; both go on serving. */
        {
                blkif_request_t bad = {.operation = 99, .id = 0xbad1};
                blkif_front_ring_t *q0;
                uint32_t q0_rsp;
                int16_t st;

                CHECK(simfront_raw_select_queue(h.victim, 0) == 0);
                q0 = simfront_raw_ring(h.victim);
                q0_rsp = simfront_raw_sring(h.victim)->rsp_prod;
                CHECK(simfront_raw_select_queue(h.victim, 1) == 0);
                st = h_raw_request(&h, &bad);
                CHECK_MSG(st == BLKIF_RSP_EOPNOTSUPP || st == BLKIF_RSP_ERROR,
                          "bad request on queue 1 answered %d", st);
                CHECK_MSG(q0 && simfront_raw_sring(h.victim) != NULL, "queue 1 ring");
                CHECK(simfront_raw_select_queue(h.victim, 0) == 0);
                CHECK_MSG(simfront_raw_sring(h.victim)->rsp_prod == q0_rsp,
                          "a response appeared on queue 0");
                h_expect_log(&h, "bad request id 47825 op 99");
                verified_io(&h, 1 << 20, 2);
        }

        /* Another queue count on reconnect: every ring and grant of the last
         * connection released (the disconnect would fail on a mapped one). */
        reconnect(&h, 4);
        verified_io(&h, 2 << 20, 3);
        all_queues_used(&h, 4);
        reconnect(&h, 1);
        verified_io(&h, 3 << 20, 4);
        all_queues_used(&h, 1);
        reconnect(&h, 2);
        verified_io(&h, 4 << 20, 5);

        /* A bogus producer on queue 1 drops the whole device (the policy for
         * bogus rings); a reconnect works. */
        CHECK(simfront_raw_select_queue(h.victim, 1) == 0);
        simfront_raw_set_req_prod(h.victim, simfront_raw_ring(h.victim)->rsp_cons + 100000);
        CHECK(simfront_raw_notify(h.victim) == 0);
        CHECK_MSG(simfront_wait_backend_state(h.victim, SIMFRONT_XB_CLOSING, 5000) >= 0,
                  "backend did not close on a bogus queue 1 (state %d)",
                  simfront_backend_state(h.victim));
        h_expect_log(&h, "bogus ring on queue 1");
        (void)simfront_raw_get_response(h.victim, &rsp, 0);
        h_victim_alive(&h);
        h_bystander_io(&h);
        simfront_free(h.victim);
        h.victim = NULL;
        reconnect(&h, 2);
        verified_io(&h, 5 << 20, 6);
        h_teardown(&h);
        return 0;
}
