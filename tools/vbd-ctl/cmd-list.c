/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl list: every daemon with a socket in the runtime dir. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vbd-ctl.h"

static int run(struct vbdctl *o, int argc, char **argv)
{
        struct vbdctl_entry *e;
        json_t *all;
        size_t n;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)))
                return r;
        r = vbdctl_scan(o->dir, &e, &n);
        if (r < 0)
                return vbdctl_fail(o, r, false, "%s: %s", o->dir, strerror(-r));
        all = json_array();
        for (size_t i = 0; i < n; i++) {
                struct vbd_err err = {0};
                json_t *res = NULL, *row;

                if (o->have_domid && e[i].domid != o->domid)
                        continue;
                if (o->have_devid && e[i].devid != o->devid)
                        continue;
                r = vbdctl_call(e[i].path, "info", NULL, vbdctl_timeout(o, 3000), &res, &err);
                row = json_pack("{s:I,s:I,s:s}", "domid", (json_int_t)e[i].domid, "devid",
                                (json_int_t)e[i].devid, "socket", e[i].path);
                if (r == 0) {
                        json_object_set(row, "pid", json_object_get(res, "pid"));
                        json_object_set(row, "state", json_object_get(res, "state"));
                        json_object_set(row, "mode", json_object_get(res, "mode"));
                        json_object_set(row, "image", json_object_get(res, "image"));
                } else {
                        const char *state = "error";

                        if (r == -ECONNREFUSED || r == -ENOENT)
                                state = "stale";
                        else if (r == -EACCES || (r == 1 && err.code == -EPERM))
                                state = "denied";
                        else if (r == -ETIMEDOUT)
                                state = "unresponsive";
                        json_object_set_new(row, "pid", json_null());
                        json_object_set_new(row, "state", json_string(state));
                        json_object_set_new(row, "mode", json_null());
                        json_object_set_new(row, "image", json_null());
                        json_object_set_new(row, "error", json_string(err.msg));
                }
                json_decref(res);
                json_array_append_new(all, row);
        }
        free(e);
        if (o->json) {
                vbdctl_print_json(all);
                return 0;
        }
        printf("%-6s %-8s %-8s %-12s %-4s %s\n", "DOMID", "DEVID", "PID", "STATE", "MODE", "IMAGE");
        for (size_t i = 0; i < json_array_size(all); i++) {
                json_t *row = json_array_get(all, i);
                char pid[24] = "-";

                if (json_is_integer(json_object_get(row, "pid")))
                        snprintf(pid, sizeof(pid), "%lld", vbdctl_jint(row, "pid"));
                printf("%-6lld %-8lld %-8s %-12s %-4s %s\n", vbdctl_jint(row, "domid"),
                       vbdctl_jint(row, "devid"), pid, vbdctl_jstr(row, "state"),
                       vbdctl_jstr(row, "mode"), vbdctl_jstr(row, "image"));
        }
        json_decref(all);
        return 0;
}

const struct vbdctl_verb vbdctl_verb_list = {
    .name = "list",
    .run = run,
    .args = "[-d D] [-n N] [--json]",
    .summary = "list the daemons: domid, devid, pid, state, image",
};
