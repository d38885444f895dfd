/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl migrate abort: drop the partner (migrate-abort); the source image is
 * untouched. */
#include <stdio.h>

#include "cmd-migrate.h"

static int run_abort(struct mig *m, int argc, char **argv)
{
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = mig_parse(m, &mig_sub_abort, argc, argv, NULL)))
                return r;
        if ((r = mig_call(m, "migrate-abort", NULL, vbdctl_timeout(o, 30000), &st)))
                return r;
        if ((r = mig_check_state(m, st))) {
                json_decref(st);
                return r;
        }
        if (o->json) {
                vbdctl_print_json(st);
                return 0;
        }
        printf("%s: migration to %s aborted at %.1f%%; the VBD serves its local image\n",
               vbdctl_name(o->domid, o->devid), vbdctl_jstr(st, "to"),
               (int)(mig_progress(st) * 1000) / 10.0);
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
            "Common options: -d D -n N, -t/--timeout S (default 30), --ctl-dir DIR\n"
            "(see vbd-ctl --help).\n",
};
