/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* An error with a message, for control paths (open, options, jobs, control commands). */
#pragma once

struct vbd_err {
        int code; /* -errno */
        char msg[256];
};

/* Fill err (code is -abs(code)) and return it, for "return vbd_err_set(err, -EINVAL, ...)". */
int vbd_err_set(struct vbd_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
