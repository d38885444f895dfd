/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl migrate abort: drop the partner (migrate-abort); the source image is
 * untouched. */
#include <stdio.h>
#include <string.h>

#include "cmd-migrate.h"

/* The daemon refused the abort (no migration runs: it failed, or was
 * aborted): a bridge still running for it has nothing more to do. */
static void stop_leftover(struct mig *m)
{
        struct vbd_err err = {0};
        char path[256], line[1024];
        const char *state;
        json_t *st = NULL, *b;

        if (vbdctl_socket_path(m->o->dir, m->o->domid, m->o->devid, path, sizeof(path)) < 0 ||
            vbdctl_call(path, "migrate-status", NULL, 10000, &st, &err))
                return;
        state = vbdctl_jstr(st, "state");
        if (strcmp(state, "failed") == 0 || strcmp(state, "aborted") == 0 ||
            strcmp(state, "none") == 0) {
                b = mig_bridge_get(m);
                if (b && json_is_true(json_object_get(b, "running"))) {
                        json_decref(b);
                        b = mig_bridge_stop(m, "abort");
                        mig_bridge_describe(b, line, sizeof(line));
                        fprintf(stderr, "vbd-ctl %s: %s: bridge: %s\n", m->o->verb,
                                vbdctl_name(m->o->domid, m->o->devid), line);
                }
                json_decref(b);
        }
        json_decref(st);
}

static int run_abort(struct mig *m, int argc, char **argv)
{
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = mig_parse(m, &mig_sub_abort, argc, argv, NULL)))
                return r;
        if ((r = mig_call(m, "migrate-abort", NULL, vbdctl_timeout(o, 30000), &st))) {
                stop_leftover(m);
                return r;
        }
        if ((r = mig_check_state(m, st))) {
                json_decref(st);
                return r;
        }
        mig_bridge_attach(m, st, "abort");
        if (o->json) {
                vbdctl_print_json(st);
                return 0;
        }
        printf("%s: migration to %s aborted at %.1f%%; the VBD serves its local image\n",
               vbdctl_name(o->domid, o->devid),
               json_object_get(st, "target") ? vbdctl_jstr(st, "target") : vbdctl_jstr(st, "to"),
               (int)(mig_progress(st) * 1000) / 10.0);
        if (json_object_get(st, "bridge")) {
                char line[1024];

                mig_bridge_describe(json_object_get(st, "bridge"), line, sizeof(line));
                printf("%s: bridge: %s\n", vbdctl_name(o->domid, o->devid), line);
        }
        json_decref(st);
        return 0;
}

const struct mig_sub mig_sub_abort = {
    .name = "abort",
    .verb = "migrate abort",
    .run = run_abort,
    .help = "Usage: vbd-ctl migrate abort -d D -n N [--json]\n"
            "Drop the partner at once; the source image is untouched and the guest goes on\n"
            "using it.  After a cutover this resumes the VBD here.  State aborted; a new\n"
            "start begins from scratch.  Exit 1 if no migration is running (ENOENT).\n"
            "A bridge (--to SPEC) is stopped, also that of a migration that failed.\n"
            "Common options: -d D -n N, -t/--timeout S (default 30), --ctl-dir DIR\n"
            "(see vbd-ctl --help).\n",
};
