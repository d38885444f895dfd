/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl log-level: show or change a daemon's log level and debug topics. */
#include <stdio.h>

#include "vbd-ctl.h"

struct args {
        const char *level, *debug;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        if (c == 'l')
                a->level = arg;
        else
                a->debug = arg;
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"level", required_argument, NULL, 'l'}, {"debug", required_argument, NULL, 'D'}, {}};
        struct args a = {0};
        json_t *args, *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)) || (r = vbdctl_need_vbd(o)))
                return r;
        if (a.level && vbd_config_parse_log_level(a.level) < 0)
                return vbdctl_usage_error(o, "--level must be err, warning, info or debug");
        args = json_object();
        if (a.level)
                json_object_set_new(args, "level", json_string(a.level));
        if (a.debug)
                json_object_set_new(args, "debug", json_string(a.debug));
        r = vbdctl_call_vbd(o, "log-level", args, vbdctl_timeout(o, 10000), &res);
        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                printf("%s: log level %s, debug topics '%s'\n", vbdctl_name(o->domid, o->devid),
                       vbdctl_jstr(res, "level"), vbdctl_jstr(res, "debug"));
                json_decref(res);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_log_level = {
    .name = "log-level",
    .run = run,
    .args = "-d D -n N [--level err|warning|info|debug] [--debug TOPICS] [--json]",
    .summary = "show or set a daemon's log level and debug topics",
};
