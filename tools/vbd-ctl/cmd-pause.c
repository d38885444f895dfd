/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl pause: the daemon stops taking requests from the ring (the guest
 * sees slow I/O, nothing fails) and answers once everything in flight has
 * completed: when this returns 0 the image is quiescent.
 */
#include <stdio.h>

#include "vbd-ctl.h"

static int run(struct vbdctl *o, int argc, char **argv)
{
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)) || (r = vbdctl_need_vbd(o)))
                return r;
        r = vbdctl_call_vbd(o, "pause", NULL, vbdctl_timeout(o, 60000), &res);
        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                printf("%s: paused, drained in %lld ms\n", vbdctl_name(o->domid, o->devid),
                       vbdctl_jint(res, "waited_ms"));
                json_decref(res);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_pause = {
    .name = "pause",
    .run = run,
    .args = "-d D -n N [--timeout S] [--json]",
    .summary = "stop taking guest requests; returns once nothing is in flight",
};
