/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* xenstore helpers for the verbs that act as the toolstack. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

#include "vbd-ctl.h"

struct xs_handle *vbdctl_xs_open(struct vbdctl *o)
{
        struct xs_handle *xs = xs_open(0);

        if (!xs)
                vbdctl_fail(o, -errno, false, "cannot connect to xenstore: %s", strerror(errno));
        return xs;
}

char *vbdctl_xs_read(struct xs_handle *xs, const char *path)
{
        unsigned len;

        return xs_read(xs, XBT_NULL, path, &len);
}

int vbdctl_xs_write(struct xs_handle *xs, const char *path, const char *value)
{
        return xs_write(xs, XBT_NULL, path, value, strlen(value)) ? 0 : -errno;
}

int vbdctl_xs_rm(struct xs_handle *xs, const char *path)
{
        if (xs_rm(xs, XBT_NULL, path))
                return 0;
        return errno == ENOENT ? 0 : -errno;
}

int vbdctl_xs_write_dir(struct xs_handle *xs, const char *dir, const char *const *kv,
                        unsigned owner, unsigned reader)
{
        struct xs_permissions perms[2] = {
            {.id = owner, .perms = XS_PERM_NONE},
            {.id = reader, .perms = XS_PERM_READ},
        };
        char path[512];

        for (int tries = 0; tries < 16; tries++) {
                xs_transaction_t t = xs_transaction_start(xs);
                int r = 0;

                if (t == XBT_NULL)
                        return -errno;
                if (!xs_mkdir(xs, t, dir) || !xs_set_permissions(xs, t, dir, perms, 2))
                        r = -errno;
                for (unsigned i = 0; !r && kv[i]; i += 2) {
                        snprintf(path, sizeof(path), "%s/%s", dir, kv[i]);
                        if (!xs_write(xs, t, path, kv[i + 1], strlen(kv[i + 1])))
                                r = -errno;
                }
                if (r) {
                        xs_transaction_end(xs, t, true);
                        return r;
                }
                if (xs_transaction_end(xs, t, false))
                        return 0;
                if (errno != EAGAIN)
                        return -errno;
        }
        return -EAGAIN;
}

void vbdctl_backend_path(char *buf, size_t size, unsigned bdomid, const char *type, uint32_t domid,
                         uint32_t devid)
{
        snprintf(buf, size, "/local/domain/%u/backend/%s/%" PRIu32 "/%" PRIu32, bdomid, type, domid,
                 devid);
}
