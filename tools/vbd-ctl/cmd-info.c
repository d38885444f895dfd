/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl info: what one daemon serves and in which state. */
#include <stdio.h>

#include "vbd-ctl.h"

static int run(struct vbdctl *o, int argc, char **argv)
{
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)) || (r = vbdctl_need_vbd(o)))
                return r;
        r = vbdctl_call_vbd(o, "info", NULL, vbdctl_timeout(o, 10000), &res);
        if (r)
                return r;
        if (o->json) {
                vbdctl_print_json(res);
                return 0;
        }
        printf("vbd         %lld/%lld\n", vbdctl_jint(res, "domid"), vbdctl_jint(res, "devid"));
        printf("pid         %lld\n", vbdctl_jint(res, "pid"));
        printf("state       %s\n", vbdctl_jstr(res, "state"));
        printf("image       %s\n", vbdctl_jstr(res, "image"));
        printf("mode        %s\n", vbdctl_jstr(res, "mode"));
        printf("size        %lld bytes (sector %lld, physical %lld)\n", vbdctl_jint(res, "size"),
               vbdctl_jint(res, "sector_size"), vbdctl_jint(res, "physical_sector_size"));
        printf("backend     %s\n", vbdctl_jstr(res, "backend"));
        printf("xenbus      backend %s, frontend %s\n", vbdctl_jstr(res, "xenbus_state_name"),
               vbdctl_jstr(res, "frontend_state_name"));
        if (json_object_get(res, "queues"))
                printf("queues      %lld connected (at most %lld offered)\n",
                       vbdctl_jint(res, "queues"), vbdctl_jint(res, "max_queues"));
        printf("inflight    %lld\n", vbdctl_jint(res, "inflight"));
        printf("uptime      %lld s\n", vbdctl_jint(res, "uptime_s"));
        printf("log level   %s%s%s\n", vbdctl_jstr(res, "log_level"),
               *vbdctl_jstr(res, "debug") && *vbdctl_jstr(res, "debug") != '-' ? ", debug " : "",
               *vbdctl_jstr(res, "debug") && *vbdctl_jstr(res, "debug") != '-'
                   ? vbdctl_jstr(res, "debug")
                   : "");
        printf("version     %s (protocol %lld)\n", vbdctl_jstr(res, "version"),
               vbdctl_jint(res, "protocol"));
        json_decref(res);
        return 0;
}

const struct vbdctl_verb vbdctl_verb_info = {
    .name = "info",
    .run = run,
    .args = "-d D -n N [--json]",
    .summary = "show what a daemon serves and its state",
};
