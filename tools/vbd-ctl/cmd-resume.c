/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl resume: take requests from the ring again. */
#include <stdio.h>

#include "vbd-ctl.h"

static int run(struct vbdctl *o, int argc, char **argv)
{
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)) || (r = vbdctl_need_vbd(o)))
                return r;
        r = vbdctl_call_vbd(o, "resume", NULL, vbdctl_timeout(o, 10000), &res);
        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                printf("%s: resumed%s\n", vbdctl_name(o->domid, o->devid),
                       json_is_true(json_object_get(res, "was_paused")) ? "" : " (was not paused)");
                json_decref(res);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_resume = {
    .name = "resume",
    .run = run,
    .args = "-d D -n N [--json]",
    .summary = "take requests from the guest again after a pause",
};
