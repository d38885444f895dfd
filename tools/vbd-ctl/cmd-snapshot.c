/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl snapshot: the daemon's "snapshot" job (drivers/backup), a
 * read-only NBD export of a running VBD as it was when the job started.
 * The daemon copies the old contents of each block the guest overwrites
 * into a store (a new file it creates sparse and unlinks at once) before
 * the write goes on, so the export keeps its point in time while the
 * guest runs.  --start returns once the export serves; --stop ends it and
 * releases the store.  vbd-ctl mount of a running guest's disk drives the
 * same verbs (cmd-mount.c).  --status of a VBD without one says so (state
 * "none" in --json).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/parse.h"
#include "vbd-ctl.h"

struct args {
        const char *start, *store, *granularity, *name;
        bool status, stop, scratch;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        (void)o;
        switch (c) {
        case 'S':
                a->start = arg;
                break;
        case 's':
                a->store = arg;
                break;
        case 'g':
                a->granularity = arg;
                break;
        case 'N':
                a->name = arg;
                break;
        case 'q':
                a->status = true;
                break;
        case 'X':
                a->stop = true;
                break;
        case 'W':
                a->scratch = true;
                break;
        }
        return 0;
}

/* path made absolute (the daemon's working directory is not ours): 0 or -errno. */
static int absolute(const char *path, char *buf, size_t size)
{
        char cwd[PATH_MAX];
        int n;

        if (path[0] == '/')
                n = snprintf(buf, size, "%s", path);
        else if (!getcwd(cwd, sizeof(cwd)))
                return -errno;
        else
                n = snprintf(buf, size, "%s/%s", cwd, path);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static int snap_start(struct vbdctl *o, struct args *a)
{
        char ep[PATH_MAX + 8], store[PATH_MAX];
        const char *path = a->start;
        json_t *job, *res;
        int r;

        if (!strncmp(path, "tcp:", 4)) {
                snprintf(ep, sizeof(ep), "%s", path);
        } else {
                if (!strncmp(path, "unix:", 5))
                        path += 5;
                if (!*path)
                        return vbdctl_usage_error(o, "--start unix:PATH|tcp:ADDR:PORT");
                if (absolute(path, store, sizeof(store)) < 0)
                        return vbdctl_usage_error(o, "--start: path too long");
                snprintf(ep, sizeof(ep), "unix:%s", store);
        }
        if (absolute(a->store, store, sizeof(store)) < 0)
                return vbdctl_usage_error(o, "--store: path too long");
        job = json_pack("{s:s,s:s,s:b}", "endpoint", ep, "store", store, "scratch", a->scratch);
        if (a->granularity) {
                uint64_t v;

                if (vbd_parse_size(a->granularity, &v) < 0 || !v)
                        return vbdctl_usage_error(o, "--granularity: a size: %s", a->granularity);
                json_object_set_new(job, "granularity", json_integer((json_int_t)v));
        }
        if (a->name)
                json_object_set_new(job, "name", json_string(a->name));
        if ((r = vbdctl_call_vbd(o, "snapshot-start", job, vbdctl_timeout(o, 60000), &res)))
                return r;
        json_decref(res);
        /* what the job says of itself now: its endpoint and granularity */
        if ((r = vbdctl_call_vbd(o, "snapshot-status", NULL, vbdctl_timeout(o, 10000), &res)))
                return r;
        if (o->json)
                vbdctl_print_json(res);
        else {
                printf("%s: snapshot exported on %s (granularity %lld, store %s)\n",
                       vbdctl_name(o->domid, o->devid), vbdctl_jstr(res, "endpoint"),
                       vbdctl_jint(res, "granularity"), store);
                json_decref(res);
        }
        return 0;
}

static int snap_status(struct vbdctl *o)
{
        json_t *st;
        int r = vbdctl_call_vbd(o, "snapshot-status", NULL, vbdctl_timeout(o, 10000), &st);

        if (r)
                return r;
        if (o->json) {
                vbdctl_print_json(st);
                return 0;
        }
        if (!strcmp(vbdctl_jstr(st, "state"), "none")) {
                printf("%s: no snapshot job\n", vbdctl_name(o->domid, o->devid));
                json_decref(st);
                return 0;
        }
        printf("%s: snapshot %s", vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "state"));
        if (*vbdctl_jstr(st, "endpoint"))
                printf(" on %s: %lld bytes saved (granularity %lld), %lld writes held (avg %lld "
                       "us, max %lld us), %lld clients",
                       vbdctl_jstr(st, "endpoint"), vbdctl_jint(st, "bytes_saved"),
                       vbdctl_jint(st, "granularity"), vbdctl_jint(st, "writes_held"),
                       vbdctl_jint(st, "held_avg_us"), vbdctl_jint(st, "held_max_us"),
                       vbdctl_jint(st, "clients"));
        if (json_is_string(json_object_get(st, "error")) && *vbdctl_jstr(st, "error"))
                printf(": %s", vbdctl_jstr(st, "error"));
        putchar('\n');
        json_decref(st);
        return 0;
}

static int snap_stop(struct vbdctl *o)
{
        json_t *st;
        int r = vbdctl_call_vbd(o, "snapshot-cancel", NULL, vbdctl_timeout(o, 60000), &st);

        if (r)
                return r;
        if (o->json)
                vbdctl_print_json(st);
        else {
                printf("%s: snapshot stopped\n", vbdctl_name(o->domid, o->devid));
                json_decref(st);
        }
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"start", required_argument, NULL, 'S'},
            {"store", required_argument, NULL, 's'},
            {"granularity", required_argument, NULL, 'g'},
            {"name", required_argument, NULL, 'N'},
            {"status", no_argument, NULL, 'q'},
            {"stop", no_argument, NULL, 'X'},
            {"scratch", no_argument, NULL, 'W'},
            {},
        };
        struct args a = {0};
        int r;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)) || (r = vbdctl_need_vbd(o)))
                return r;
        if (!!a.start + a.status + a.stop != 1)
                return vbdctl_usage_error(o, "one of --start ENDPOINT, --status or --stop");
        if (!a.start && (a.store || a.granularity || a.name || a.scratch))
                return vbdctl_usage_error(o, "--store, --granularity, --name and --scratch go with "
                                             "--start");
        if (a.status)
                return snap_status(o);
        if (a.stop)
                return snap_stop(o);
        if (!a.store)
                return vbdctl_usage_error(o, "--start needs --store FILE (a new file)");
        return snap_start(o, &a);
}

const struct vbdctl_verb vbdctl_verb_snapshot = {
    .name = "snapshot",
    .run = run,
    .args = "-d D -n N --start unix:PATH|tcp:ADDR:PORT --store FILE [--granularity SIZE]\n"
            "         [--name EXPORT] [--scratch] | -d D -n N --status [--json] | -d D -n N --stop",
    .summary = "export a running VBD read-only as it was at --start (copy-before-write)",
};
