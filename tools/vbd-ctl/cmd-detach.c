/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl detach: the daemon answers what is in flight, tells the guest the
 * device is closing, and exits; vbd-ctl waits for it to be gone.  With
 * --xenstore it then removes the backend and frontend directories, as the
 * toolstack does after a detach (also when no daemon runs any more).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xenstore.h>

#include "vbd-ctl.h"

struct args {
        bool no_wait, xenstore;
        const char *type;
        unsigned bdomid;
        bool have_bdomid;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        switch (c) {
        case 'W':
                a->no_wait = true;
                break;
        case 'X':
                a->xenstore = true;
                break;
        case 'T':
                a->type = arg;
                break;
        case 'B':
                a->bdomid = (unsigned)atoi(arg);
                a->have_bdomid = true;
                break;
        }
        return 0;
}

static int remove_nodes(struct vbdctl *o, const char *be)
{
        struct xs_handle *xs = vbdctl_xs_open(o);
        char path[600], *fe;
        int r;

        if (!xs)
                return VBDCTL_EXIT_FAILED;
        snprintf(path, sizeof(path), "%s/frontend", be);
        fe = vbdctl_xs_read(xs, path);
        r = vbdctl_xs_rm(xs, be);
        if (!r && fe && fe[0] == '/')
                r = vbdctl_xs_rm(xs, fe);
        free(fe);
        xs_close(xs);
        if (r < 0)
                return vbdctl_fail(o, r, false, "removing %s: %s", be, strerror(-r));
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {{"no-wait", no_argument, NULL, 'W'},
                                              {"xenstore", no_argument, NULL, 'X'},
                                              {"type", required_argument, NULL, 'T'},
                                              {"backend-domid", required_argument, NULL, 'B'},
                                              {}};
        struct args a = {0};
        char path[256], be[512];
        struct vbd_err err = {0};
        json_t *res = NULL;
        int fd, r, timeout;

        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)) || (r = vbdctl_need_vbd(o)))
                return r;
        timeout = vbdctl_timeout(o, 30000);
        vbdctl_backend_path(be, sizeof(be), a.have_bdomid ? a.bdomid : o->conf.backend_domid,
                            a.type ? a.type : o->conf.backend_type, o->domid, o->devid);
        if (vbdctl_socket_path(o->dir, o->domid, o->devid, path, sizeof(path)) < 0)
                return vbdctl_fail(o, -ENAMETOOLONG, false, "--ctl-dir is too long");
        fd = vbdctl_connect(path);
        if (fd < 0) {
                if (a.xenstore && (fd == -ENOENT || fd == -ECONNREFUSED)) {
                        r = remove_nodes(o, be);
                        if (!r && !o->json)
                                printf("%s: no daemon; removed %s\n",
                                       vbdctl_name(o->domid, o->devid), be);
                        else if (!r)
                                vbdctl_print_json(
                                    json_pack("{s:b,s:s}", "detached", 1, "backend", be));
                        return r;
                }
                return vbdctl_fail(o, fd, false, "%s: %s", vbdctl_name(o->domid, o->devid),
                                   fd == -ENOENT || fd == -ECONNREFUSED ? "no vbdd serves it"
                                                                        : strerror(-fd));
        }
        if (a.xenstore) {
                /* Where the daemon really is (its --type may differ from ours). */
                r = vbdctl_call_fd(fd, "info", NULL, timeout, &res, &err);
                if (r == 0 && json_is_string(json_object_get(res, "backend")))
                        snprintf(be, sizeof(be), "%s", vbdctl_jstr(res, "backend"));
                json_decref(res);
                res = NULL;
        }
        r = vbdctl_call_fd(fd, "detach", NULL, timeout, &res, &err);
        if (r) {
                close(fd);
                return vbdctl_fail(o, err.code, r == 1, "%s: %s", vbdctl_name(o->domid, o->devid),
                                   err.msg);
        }
        json_decref(res);
        if (!a.no_wait || a.xenstore) {
                r = vbdctl_wait_eof(fd, timeout);
                if (r < 0) {
                        close(fd);
                        return vbdctl_fail(o, r, false, "%s: still running after %d s",
                                           vbdctl_name(o->domid, o->devid), timeout / 1000);
                }
        }
        close(fd);
        if (a.xenstore && (r = remove_nodes(o, be)))
                return r;
        if (o->json)
                vbdctl_print_json(json_pack("{s:b,s:b}", "detached", 1, "waited", !a.no_wait));
        else
                printf("%s: detached\n", vbdctl_name(o->domid, o->devid));
        return 0;
}

const struct vbdctl_verb vbdctl_verb_detach = {
    .name = "detach",
    .run = run,
    .args = "-d D -n N [--no-wait] [--xenstore [--type T] [--backend-domid B]] [--json]",
    .summary = "close the device for the guest and stop its daemon",
};
