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
        CHECK(vbd_xenbus_parse_ring(get, one, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_pages == 1 && rc.refs[0] == 8 && rc.port == 3 && rc.abi == VBD_RING_ABI_X86_64);

        const char *four[] = {"ring-page-order=2",   "ring-ref0=1", "ring-ref1=2",
                              "ring-ref2=3",         "ring-ref3=4", "event-channel=9",
                              "protocol=x86_32-abi", NULL};
        CHECK(vbd_xenbus_parse_ring(get, four, &rc, msg, sizeof(msg)) == 0);
        CHECK(rc.nr_pages == 4 && rc.refs[3] == 4 && rc.abi == VBD_RING_ABI_X86_32);

        const char *gap[] = {"ring-page-order=2", "ring-ref0=1",     "ring-ref1=2",
                             "ring-ref3=4",       "event-channel=9", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, gap, &rc, msg, sizeof(msg)), -ENOENT);
        CHECK(strstr(msg, "ring-ref2") != NULL);

        const char *big[] = {"ring-page-order=5", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, big, &rc, msg, sizeof(msg)), -ERANGE);
        CHECK(strstr(msg, "the most is 4") != NULL);

        const char *proto[] = {"ring-ref=8", "event-channel=3", "protocol=arm-abi", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, proto, &rc, msg, sizeof(msg)), -EINVAL);
        CHECK(strstr(msg, "unknown protocol 'arm-abi'") != NULL);

        const char *port[] = {"ring-ref=8", "event-channel=4294967296", NULL};
        CHECK_ERR(vbd_xenbus_parse_ring(get, port, &rc, msg, sizeof(msg)), -ERANGE);
}

int main(void)
{
        test_uint();
        test_ring();
        return check_result("test-parse");
}
