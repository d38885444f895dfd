/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl attach: act as the toolstack: write the backend and frontend
 * directories (contract.md: perms, state Initialising), then spawn vbdd.
 * If the daemon does not come up the directories are removed again.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

#include "vbd-ctl.h"

/* xvda.. for the xvd major (202), else the number itself. */
static void vdev_name(uint32_t devid, char *buf, size_t size)
{
        if ((devid >> 8) == 202)
                snprintf(buf, size, "xvd%c", 'a' + (int)((devid >> 4) & 15));
        else
                snprintf(buf, size, "%u", (unsigned)devid);
}

static int write_nodes(struct vbdctl *o, struct xs_handle *xs, const struct vbdctl_spawn_args *a,
                       const char *be, const char *fe)
{
        char domid[16], devid[16], bdomid[16], vdev[32];
        const char *mode = a->sp.mode ? a->sp.mode : "w";
        char *old;
        int r;

        snprintf(domid, sizeof(domid), "%u", (unsigned)o->domid);
        snprintf(devid, sizeof(devid), "%u", (unsigned)o->devid);
        snprintf(bdomid, sizeof(bdomid), "%u", (unsigned)a->sp.backend_domid);
        if (a->vdev)
                snprintf(vdev, sizeof(vdev), "%s", a->vdev);
        else
                vdev_name(o->devid, vdev, sizeof(vdev));
        old = vbdctl_xs_read(xs, be);
        if (old) {
                free(old);
                return vbdctl_fail(o, -EEXIST, false,
                                   "%s already exists (detach --xenstore "
                                   "removes it)",
                                   be);
        }
        {
                const char *bkv[] = {
                    "frontend",  fe,          "frontend-id", domid,      "online",      "1",
                    "removable", "0",         "bootable",    "1",        "mode",        mode,
                    "params",    a->sp.image, "type",        a->sp.type, "device-type", "disk",
                    "dev",       vdev,        "state",       "1",        NULL};
                const char *fkv[] = {"backend",        be,    "backend-id",  bdomid,
                                     "virtual-device", devid, "device-type", "disk",
                                     "state",          "1",   NULL};

                r = vbdctl_xs_write_dir(xs, be, bkv, a->sp.backend_domid, o->domid);
                if (!r)
                        r = vbdctl_xs_write_dir(xs, fe, fkv, o->domid, a->sp.backend_domid);
        }
        if (r < 0) {
                (void)vbdctl_xs_rm(xs, be);
                return vbdctl_fail(o, r, false, "writing %s and %s: %s", be, fe, strerror(-r));
        }
        return 0;
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"image", required_argument, NULL, 'i'},
            {"mode", required_argument, NULL, 'm'},
            {"type", required_argument, NULL, 'T'},
            {"backend-domid", required_argument, NULL, 'B'},
            {"vbdd", required_argument, NULL, 'E'},
            {"systemd", no_argument, NULL, 'S'},
            {"log", required_argument, NULL, 'L'},
            {"vdev", required_argument, NULL, 'v'},
            {"no-xenstore", no_argument, NULL, 'X'},
            {},
        };
        struct vbdctl_spawn_args a = {0};
        struct xs_handle *xs = NULL;
        char be[512], fe[256];
        pid_t pid;
        int r;

        vbdctl_spawn_defaults(o, &a.sp);
        if ((r = vbdctl_parse(o, argc, argv, extra, vbdctl_spawn_opt, &a)) ||
            (r = vbdctl_need_vbd(o)))
                return r;
        if (!a.sp.image)
                return vbdctl_usage_error(o, "--image SPEC is required");
        a.sp.domid = o->domid;
        a.sp.devid = o->devid;
        a.sp.timeout_ms = vbdctl_timeout(o, a.sp.timeout_ms);
        vbdctl_backend_path(be, sizeof(be), a.sp.backend_domid, a.sp.type, o->domid, o->devid);
        snprintf(fe, sizeof(fe), "/local/domain/%u/device/vbd/%u", (unsigned)o->domid,
                 (unsigned)o->devid);
        if (!a.no_xenstore) {
                xs = vbdctl_xs_open(o);
                if (!xs)
                        return VBDCTL_EXIT_FAILED;
                r = write_nodes(o, xs, &a, be, fe);
                if (r) {
                        xs_close(xs);
                        return r;
                }
        }
        if (a.sp.systemd) {
                a.sp.image = NULL; /* the unit reads params and mode */
                a.sp.mode = NULL;
        }
        r = vbdctl_spawn_vbdd(o, &a.sp, &pid);
        if (r && xs) {
                (void)vbdctl_xs_rm(xs, be);
                (void)vbdctl_xs_rm(xs, fe);
        }
        if (xs)
                xs_close(xs);
        if (r)
                return r;
        return vbdctl_spawn_report(o, pid, "attached");
}

const struct vbdctl_verb vbdctl_verb_attach = {
    .name = "attach",
    .run = run,
    .args = "-d D -n N --image SPEC [--mode r|w] [--vdev NAME] [--type T] [--backend-domid B]\n"
            "       [--no-xenstore] [--vbdd PATH] [--systemd] [--log FILE] [--timeout S] [--json]",
    .summary = "write the toolstack's xenstore nodes for a VBD and spawn its vbdd",
};
