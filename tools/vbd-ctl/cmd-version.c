/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl version: ours, and a daemon's (with -d/-n). */
#include <stdio.h>

#include "vbd-ctl.h"

static int run(struct vbdctl *o, int argc, char **argv)
{
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)))
                return r;
        if (!o->have_domid && !o->have_devid) {
                if (o->json)
                        vbdctl_print_json(
                            json_pack("{s:s,s:i}", "version", VBD_VERSION, "protocol", 1));
                else
                        printf("vbd-ctl %s (protocol 1)\n", VBD_VERSION);
                return 0;
        }
        if ((r = vbdctl_need_vbd(o)) ||
            (r = vbdctl_call_vbd(o, "version", NULL, vbdctl_timeout(o, 10000), &res)))
                return r;
        if (o->json) {
                vbdctl_print_json(res);
                return 0;
        }
        printf("vbdd %s (protocol %lld)\n", vbdctl_jstr(res, "version"),
               vbdctl_jint(res, "protocol"));
        json_decref(res);
        return 0;
}

const struct vbdctl_verb vbdctl_verb_version = {
    .name = "version",
    .run = run,
    .args = "[-d D -n N] [--json]",
    .summary = "print the version of vbd-ctl, or of a daemon",
};
