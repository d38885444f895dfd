/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl reopen: serve another image (the VBD must be paused). */
#include <stdio.h>

#include "vbd-ctl.h"

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        *(const char **)data = arg;
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {{"image", required_argument, NULL, 'i'}, {}};
        const char *image = NULL;
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &image)) || (r = vbdctl_need_vbd(o)))
                return r;
        if (!image)
                return vbdctl_usage_error(o, "--image SPEC is required");
        r = vbdctl_call_vbd(o, "reopen", json_pack("{s:s}", "image", image),
                            vbdctl_timeout(o, 60000), &res);
        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                printf("%s: now serving %s (%lld bytes)\n", vbdctl_name(o->domid, o->devid),
                       vbdctl_jstr(res, "image"), vbdctl_jint(res, "size"));
                json_decref(res);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_reopen = {
    .name = "reopen",
    .run = run,
    .args = "-d D -n N --image SPEC [--json]",
    .summary = "swap the image of a paused VBD",
};
