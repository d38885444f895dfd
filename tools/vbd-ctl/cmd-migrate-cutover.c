/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbd-ctl migrate cutover: pause the VBD, copy what is left and flush both
 * sides (migrate-cutover): the partner has the disk. */
#include <stdio.h>
#include <string.h>

#include "cmd-migrate.h"

/*
 * After the cut-over: serve the destination here (reopen ends the cut-over
 * migration in the daemon and the guest runs on).  The bridge has let its
 * target go by now (it exited); an NBD partner must have been stopped by
 * whoever runs it, or the reopen fails on its lock and the VBD stays paused.
 */
static int switch_image(struct mig *m, json_t *st)
{
        struct vbdctl *o = m->o;
        const char *spec = m->switch_to;
        json_t *res;
        int r;

        if (!spec) {
                json_t *b = json_object_get(st, "bridge");

                if (!b || !json_is_integer(json_object_get(b, "exit_code")) ||
                    json_integer_value(json_object_get(b, "exit_code")) != 0 ||
                    !json_object_get(st, "target")) {
                        fprintf(stderr,
                                "vbd-ctl: %s: --switch: no bridge that stopped cleanly (the "
                                "migration went to an NBD partner? use --switch-to SPEC); the "
                                "VBD stays paused\n",
                                vbdctl_name(o->domid, o->devid));
                        return 1;
                }
                spec = vbdctl_jstr(st, "target");
        }
        r = vbdctl_call_vbd(o, "reopen", json_pack("{s:s}", "image", spec),
                            vbdctl_timeout(o, 60000), &res);
        if (r) {
                fprintf(stderr,
                        "vbd-ctl: %s: the cut-over is done but serving %s failed; the VBD "
                        "stays paused ('vbd-ctl migrate abort' resumes it on the source)\n",
                        vbdctl_name(o->domid, o->devid), spec);
                return r;
        }
        if (m->stream)
                mig_print_line_json(res);
        else if (o->json)
                vbdctl_print_json(json_incref(res));
        else
                printf("%s: switched: now serving %s (%lld bytes); the migration is over and "
                       "the guest runs on\n",
                       vbdctl_name(o->domid, o->devid), vbdctl_jstr(res, "image"),
                       vbdctl_jint(res, "size"));
        json_decref(res);
        return 0;
}

static int run_cutover(struct mig *m, int argc, char **argv)
{
        static const struct option extra[] = {
            {"wait-ready", no_argument, NULL, MIG_OPT_WAIT_READY},
            {"interval", required_argument, NULL, MIG_OPT_INTERVAL},
            {"switch", no_argument, NULL, MIG_OPT_SWITCH},
            {"switch-to", required_argument, NULL, MIG_OPT_SWITCH_TO},
            {},
        };
        struct vbdctl *o = m->o;
        json_t *st;
        int r;

        if ((r = mig_parse(m, &mig_sub_cutover, argc, argv, extra)))
                return r;
        if (m->have_interval && !m->follow)
                return vbdctl_usage_error(o, "--interval goes with --wait-ready");
        if (m->switch_bridge && m->switch_to)
                return vbdctl_usage_error(o, "--switch and --switch-to: one or the other");
        if (m->follow) {
                json_t *last;

                if ((r = mig_call(m, "migrate-status", NULL, vbdctl_timeout(o, MIG_POLL_WAIT_MS),
                                  &st)) ||
                    (r = mig_follow(m, st, &last)))
                        return r;
                if (strcmp(vbdctl_jstr(last, "state"), "cutover") == 0) {
                        /* Someone else cut over meanwhile: done all the same. */
                        mig_print_reached(m, last);
                        json_decref(last);
                        return 0;
                }
                json_decref(last);
        }
        if ((r = mig_call(m, "migrate-cutover", NULL, vbdctl_timeout(o, 120000), &st)))
                return r;
        if ((r = mig_check_state(m, st))) {
                json_decref(st);
                return r;
        }
        /* Cut over (the partner has it all, flushed) or failed: either way a
         * bridge's work is done; it is stopped once the mirror has closed
         * its connection. */
        mig_bridge_attach(
            m, st, strcmp(vbdctl_jstr(st, "state"), "cutover") == 0 ? "cutover" : "failed cutover");
        if (m->stream)
                mig_print_line_json(st);
        else if (o->json)
                vbdctl_print_json(json_incref(st));
        else
                printf("%s: cut over to %s in %lld ms of downtime: the partner has the whole "
                       "disk; the VBD stays paused (detach it, or 'vbd-ctl migrate abort' to "
                       "resume it here)\n",
                       vbdctl_name(o->domid, o->devid),
                       json_object_get(st, "target") ? vbdctl_jstr(st, "target")
                                                     : vbdctl_jstr(st, "to"),
                       vbdctl_jint(st, "downtime_ms"));
        if (!o->json && json_object_get(st, "bridge")) {
                char line[1024];

                mig_bridge_describe(json_object_get(st, "bridge"), line, sizeof(line));
                printf("%s: bridge: %s\n", vbdctl_name(o->domid, o->devid), line);
        }
        r = strcmp(vbdctl_jstr(st, "state"), "cutover") == 0 ? 0 : mig_report_lost(m, st);
        if (!r && (m->switch_bridge || m->switch_to))
                r = switch_image(m, st);
        json_decref(st);
        return r;
}

const struct mig_sub mig_sub_cutover = {
    .name = "cutover",
    .verb = "migrate cutover",
    .run = run_cutover,
    .help = "Usage: vbd-ctl migrate cutover -d D -n N [--wait-ready [--interval S]]\n"
            "                               [--switch | --switch-to SPEC] [--json]\n"
            "Finish a migration that is ready: the daemon pauses the VBD (drains it), copies\n"
            "what is left (precopy), flushes both sides and answers: the partner's image is\n"
            "then complete and consistent, and the VBD stays paused for the toolstack to\n"
            "detach it ('vbd-ctl migrate abort' resumes it here instead).  Exit 0 in state\n"
            "cutover; 1 if the migration is not ready (EAGAIN) or the final flush failed (the\n"
            "state is then failed and the VBD resumed).  A bridge (--to SPEC) is stopped once\n"
            "the daemon has closed its connection: the target then has the disk, flushed.\n"
            "\n"
            "  --wait-ready   first show the progress until the state is ready (exit 1 if it\n"
            "                 fails or is aborted instead), then cut over\n"
            "  --interval S   seconds between polls (default 1, from 0.1)\n"
            "  --switch       then serve the bridge's target here (--to SPEC): a local\n"
            "                 storage migration; the daemon reopens the VBD on it and the\n"
            "                 guest runs on (the migration is over)\n"
            "  --switch-to SPEC  the same with SPEC (the destination of an NBD partner,\n"
            "                 once that partner has let it go)\n"
            "  -t, --timeout S  seconds to wait for the cutover's answer (default 120)\n"
            "  -j, --json     the status object; with --wait-ready one compact object per\n"
            "                 line: each poll, then the cutover's answer\n"
            "Common options: -d D -n N, --ctl-dir DIR (see vbd-ctl --help).\n",
};
