/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl checkpoint: the change tracker's checkpoints (the cbt filter).
 * --create NAME and --remove NAME run the daemon's "checkpoint" job (the VBD
 * pauses for the moment it takes to make the map durable); without either,
 * the list: each checkpoint with the bytes changed since it.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "vbd-ctl.h"

struct args {
        const char *create, *remove;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        if (c == 'c')
                a->create = arg;
        else
                a->remove = arg;
        return 0;
}

static void print_list(struct vbdctl *o, json_t *st)
{
        json_t *list = json_object_get(st, "checkpoints"), *cp;
        const char *reason = vbdctl_jstr(st, "reason");
        size_t i;

        if (!json_is_true(json_object_get(st, "tracking"))) {
                printf("%s: not tracking changes%s%s\n", vbdctl_name(o->domid, o->devid),
                       *reason ? ": " : "", reason);
                if (!json_object_get(st, "map"))
                        return;
        }
        printf("%s: map %s, granularity %lld\n", vbdctl_name(o->domid, o->devid),
               vbdctl_jstr(st, "map"), vbdctl_jint(st, "granularity"));
        if (*reason)
                printf("  note: %s\n", reason);
        if (json_array_size(list) == 0)
                printf("  no checkpoints (the next backup is full)\n");
        json_array_foreach(list, i, cp)
        {
                time_t t = (time_t)vbdctl_jint(cp, "created");
                char when[32];

                strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&t));
                printf("  %-24s %s  %lld bytes changed since\n", vbdctl_jstr(cp, "name"), when,
                       vbdctl_jint(cp, "changed_bytes"));
        }
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"create", required_argument, NULL, 'c'},
            {"remove", required_argument, NULL, 'r'},
            {},
        };
        struct args a = {0};
        json_t *res;
        int r;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)) || (r = vbdctl_need_vbd(o)))
                return r;
        if (a.create && a.remove)
                return vbdctl_usage_error(o, "--create and --remove: one at a time");
        if (a.create || a.remove)
                r = vbdctl_call_vbd(o, "checkpoint-start",
                                    json_pack("{s:s,s:s}", "op", a.create ? "create" : "remove",
                                              "name", a.create ? a.create : a.remove),
                                    vbdctl_timeout(o, 60000), &res);
        else
                r = vbdctl_call_vbd(o, "checkpoint-status", NULL, vbdctl_timeout(o, 10000), &res);
        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                if (a.create || a.remove)
                        printf("%s: checkpoint %s %s\n", vbdctl_name(o->domid, o->devid),
                               a.create ? a.create : a.remove, a.create ? "created" : "removed");
                else
                        print_list(o, res);
                json_decref(res);
        }
        return 0;
}

const struct vbdctl_verb vbdctl_verb_checkpoint = {
    .name = "checkpoint",
    .run = run,
    .args = "-d D -n N [--create NAME | --remove NAME] [--json]",
    .summary = "list, create or remove change-tracking checkpoints (cbt filter)",
};
