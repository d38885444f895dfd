/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd_parse_uint and vbd_xenbus_parse_ring on guest-style garbage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "util/parse.h"
#include "vbd/macro.h"
#include "xenbus.h"

static void test_uint(void)
{
        static const struct {
                const char *s;
                unsigned long long max, want;
                int r;
        } t[] = {
            {"0", 10, 0, 0},
            {"10", 10, 10, 0},
            {"11", 10, 0, -ERANGE},
            {"7", 4, 0, -ERANGE},
            {"4", 4, 4, 0},
            {"18446744073709551615", ~0ULL, ~0ULL, 0},
            {"18446744073709551616", ~0ULL, 0, -ERANGE},
            {"99999999999999999999999", ~0ULL, 0, -ERANGE},
            {"4294967295", 4294967295u, 4294967295u, 0},
            {"4294967296", 4294967295u, 0, -ERANGE},
            {"", 10, 0, -EINVAL},
            {"-1", 10, 0, -EINVAL},
            {"+1", 10, 0, -EINVAL},
            {" 1", 10, 0, -EINVAL},
            {"1 ", 10, 0, -EINVAL},
            {"0x10", 100, 0, -EINVAL},
            {"1e3", 10000, 0, -EINVAL},
            {"99999999999999999999x", ~0ULL, 0, -EINVAL},
            {"007", 10, 7, 0},
        };
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(t); i++) {
                unsigned long long v = 12345;
                int r = vbd_parse_uint(t[i].s, t[i].max, &v);
                if (r != t[i].r || (r == 0 && v != t[i].want))
                        fprintf(stderr, "'%s' max %llu: r %d v %llu\n", t[i].s, t[i].max, r, v);
                CHECK(r == t[i].r && (r < 0 || v == t[i].want));
        }
        CHECK_ERR(vbd_parse_uint(NULL, 1, &(unsigned long long){0}), -EINVAL);
}

/* A frontend directory as "key=value" strings. */
static char *get(void *opaque, const char *name)
{
        for (const char *const *kv = opaque; *kv; kv++) {
                size_t n = strlen(name);
                if (!strncmp(*kv, name, n) && (*kv)[n] == '=')
                        return strdup(*kv + n + 1);
        }
        errno = ENOENT;
        return NULL;
}

static void test_ring(void)
{
        struct vbd_ring_config rc;
        char msg[160];

        const char *one[] = {"ring-ref=8", "event-channel=3", NULL};
        CHECK(vbd_xenbus_parse_ring(get, one, 4, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_queues == 1 && rc.nr_pages == 1 && rc.queue[0].refs[0] == 8 &&
              rc.queue[0].port == 3 && rc.abi == VBD_RING_ABI_X86_64);

        const char *four[] = {"ring-page-order=2",   "ring-ref0=1", "ring-ref1=2",
                              "ring-ref2=3",         "ring-ref3=4", "event-channel=9",
                              "protocol=x86_32-abi", NULL};
        CHECK(vbd_xenbus_parse_ring(get, four, 4, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_pages == 4 && rc.queue[0].refs[3] == 4 && rc.abi == VBD_RING_ABI_X86_32);

        const char *gap[] = {"ring-page-order=2", "ring-ref0=1",     "ring-ref1=2",
                             "ring-ref3=4",       "event-channel=9", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, gap, 4, &rc, msg, sizeof(msg)), -ENOENT);
        CHECK(strstr(msg, "ring-ref2") != NULL);

        const char *big[] = {"ring-page-order=5", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, big, 4, &rc, msg, sizeof(msg)), -ERANGE);
        CHECK(strstr(msg, "the most is 4") != NULL);

        const char *proto[] = {"ring-ref=8", "event-channel=3", "protocol=arm-abi", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, proto, 4, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "unknown protocol 'arm-abi'") != NULL);

        const char *port[] = {"ring-ref=8", "event-channel=4294967296", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, port, 4, &rc, msg, sizeof(msg)), -ERANGE);
}

/* multi-queue-num-queues and the queue-N directories. */
static void test_queues(void)
{
        struct vbd_ring_config rc;
        char msg[160];

        const char *two[] = {"multi-queue-num-queues=2", "queue-0/ring-ref=8",
                             "queue-0/event-channel=3",  "queue-1/ring-ref=9",
                             "queue-1/event-channel=4",  NULL};
        CHECK(vbd_xenbus_parse_ring(get, two, 4, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_queues == 2 && rc.nr_pages == 1 && rc.queue[0].refs[0] == 8 &&
              rc.queue[0].port == 3 && rc.queue[1].refs[0] == 9 && rc.queue[1].port == 4);

        /* ring-page-order applies to every queue. */
        const char *ord[] = {
            "multi-queue-num-queues=2", "ring-page-order=1",       "queue-0/ring-ref0=1",
            "queue-0/ring-ref1=2",      "queue-0/event-channel=3", "queue-1/ring-ref0=5",
            "queue-1/ring-ref1=6",      "queue-1/event-channel=7", NULL};
        CHECK(vbd_xenbus_parse_ring(get, ord, 4, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_pages == 2 && rc.queue[1].refs[1] == 6 && rc.queue[1].port == 7);

        /* One queue asked for explicitly: the flat keys, as blkback reads them. */
        const char *one[] = {"multi-queue-num-queues=1", "ring-ref=8", "event-channel=3", NULL};
        CHECK(vbd_xenbus_parse_ring(get, one, 4, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_queues == 1 && rc.queue[0].refs[0] == 8);

        const char *zero[] = {"multi-queue-num-queues=0", "ring-ref=8", "event-channel=3", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, zero, 4, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "0 queues") != NULL);

        const char *many[] = {"multi-queue-num-queues=5", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, many, 4, &rc, msg, sizeof(msg)), -ERANGE);
        CHECK(strstr(msg, "the most is 4") != NULL);
        /* max_queues 1: no multi-queue at all. */
        CHECK_ERR(vbd_xenbus_parse_ring(get, two, 1, &rc, msg, sizeof(msg)), -ERANGE);

        const char *huge[] = {"multi-queue-num-queues=18446744073709551617", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, huge, 4, &rc, msg, sizeof(msg)), -ERANGE);

        const char *word[] = {"multi-queue-num-queues=two", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, word, 4, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "not a number") != NULL);

        const char *missing[] = {"multi-queue-num-queues=2", "queue-0/ring-ref=8",
                                 "queue-0/event-channel=3", "queue-1/ring-ref=9", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, missing, 4, &rc, msg, sizeof(msg)), -ENOENT);
        CHECK(strstr(msg, "queue-1/event-channel") != NULL);

        const char *flat[] = {"multi-queue-num-queues=2", "ring-ref=8", "event-channel=3", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, flat, 4, &rc, msg, sizeof(msg)), -ENOENT);
        CHECK(strstr(msg, "queue-0/ring-ref") != NULL);

        const char *same_port[] = {"multi-queue-num-queues=2", "queue-0/ring-ref=8",
                                   "queue-0/event-channel=3",  "queue-1/ring-ref=9",
                                   "queue-1/event-channel=3",  NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, same_port, 4, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "event channel 3 for queues 0 and 1") != NULL);

        const char *same_ref[] = {"multi-queue-num-queues=2", "queue-0/ring-ref=8",
                                  "queue-0/event-channel=3",  "queue-1/ring-ref=8",
                                  "queue-1/event-channel=4",  NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, same_ref, 4, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "ring grant 8 twice") != NULL);

        const char *same_page[] = {"ring-page-order=1", "ring-ref0=8", "ring-ref1=8",
                                   "event-channel=3", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, same_page, 4, &rc, msg, sizeof(msg)), -EINVAL);
}

int main(void)
{
        test_uint();
        test_ring();
        test_queues();
        return check_result("test-parse");
}
