/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzzes every xenstore value the backend reads from a guest: the input is
 * a frontend directory, lines of "name=value" (values may hold any byte
 * but newline and NUL), parsed as the handshake does.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/parse.h"
#include "xenbus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct dir {
        const char *keys[64], *values[64];
        unsigned n;
};

static char *get(void *opaque, const char *name)
{
        struct dir *d = opaque;

        for (unsigned i = 0; i < d->n; i++)
                if (!strcmp(d->keys[i], name))
                        return strdup(d->values[i]);
        errno = ENOENT;
        return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char *buf = malloc(size + 1), *line, *save = NULL;
        struct dir d = {.n = 0};
        struct vbd_ring_config rc;
        unsigned long long v;
        char msg[160];

        if (!buf)
                return 0;
        memcpy(buf, data, size);
        buf[size] = '\0';
        for (line = strtok_r(buf, "\n", &save); line && d.n < 64;
             line = strtok_r(NULL, "\n", &save)) {
                char *eq = strchr(line, '=');
                if (!eq)
                        continue;
                *eq = '\0';
                d.keys[d.n] = line;
                d.values[d.n++] = eq + 1;
        }
        msg[0] = '\0';
        if (vbd_xenbus_parse_ring(get, &d, 4, &rc, msg, sizeof(msg)) == 0) {
                if (rc.nr_pages < 1 || rc.nr_pages > (1u << VBD_RING_MAX_ORDER) ||
                    rc.nr_queues < 1 || rc.nr_queues > 4)
                        abort();
                for (unsigned a = 0; a < rc.nr_queues; a++)
                        for (unsigned b = a + 1; b < rc.nr_queues; b++)
                                if (rc.queue[a].port == rc.queue[b].port)
                                        abort(); /* one event channel for two queues */
        } else if (!msg[0]) {
                abort(); /* every refusal has its log line */
        }
        /* The other values: state, online, frontend-id. */
        for (unsigned i = 0; i < d.n; i++) {
                if (vbd_parse_uint(d.values[i], 8, &v) == 0 && v > 8)
                        abort();
                if (vbd_parse_uint(d.values[i], UINT16_MAX, &v) == 0 && v > UINT16_MAX)
                        abort();
        }
        free(buf);
        return 0;
}
