/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Copying an image chain into one new file with the daemon's backup job:
 * vbd-ctl restore (a backup of a chain) and vbd-ctl layer flatten (a guest
 * over its layers).  An export-only vbdd (export.c) opens the chain
 * read-only, with a control socket of its own in a private directory, and
 * runs the "backup" job into the target without a backing file, so the
 * holes stay holes.
 * The job's progress is polled on the control socket (vbdctl_wait_job, also
 * vbd-ctl backup's).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "vbd-ctl.h"

#define POLL_MS 200

static void show_progress(json_t *st, bool final)
{
        double p = json_real_value(json_object_get(st, "progress"));
        long long total = vbdctl_jint(st, "bytes_total"), done = vbdctl_jint(st, "bytes_done");
        long long rate = vbdctl_jint(st, "rate");
        unsigned w = 30, fill = (unsigned)(p * w + 0.5);
        char bar[64];

        if (fill > w)
                fill = w;
        memset(bar, '#', fill);
        memset(bar + fill, '.', w - fill);
        bar[w] = '\0';
        fprintf(stderr, "\r[%s] %3d%%  %lld/%lld MiB  %lld MiB/s  held writes %lld  ", bar,
                (int)(p * 100), done >> 20, total >> 20, rate >> 20,
                vbdctl_jint(st, "writes_held"));
        if (final)
                fputc('\n', stderr);
        fflush(stderr);
}

int vbdctl_wait_job(struct vbdctl *o, const char *path, bool progress, json_t **ret)
{
        for (;;) {
                json_t *st = NULL;
                struct vbd_err e = {0};
                int r = vbdctl_call(path, "backup-status", NULL, 10000, &st, &e);
                const char *state;

                if (r)
                        return vbdctl_fail(o, vbdctl_exit_code(r < 0 ? r : e.code), r > 0,
                                           "backup-status: %s",
                                           r > 0 ? e.msg : "the daemon is gone");
                state = vbdctl_jstr(st, "state");
                if (!strcmp(state, "done") || !strcmp(state, "failed") ||
                    !strcmp(state, "cancelled") || !strcmp(state, "none")) {
                        if (progress)
                                show_progress(st, true);
                        *ret = st;
                        if (!strcmp(state, "done"))
                                return 0;
                        return vbdctl_fail(o, VBDCTL_EXIT_FAILED, true, "backup %s%s%s", state,
                                           *vbdctl_jstr(st, "error") ? ": " : "",
                                           vbdctl_jstr(st, "error"));
                }
                if (progress)
                        show_progress(st, false);
                json_decref(st);
                usleep(POLL_MS * 1000);
        }
}

int vbdctl_copy_image(struct vbdctl *o, const char *spec, const char *what, const char *out,
                      const char *format, bool progress, json_t **ret_st)
{
        char tmpl[] = "/tmp/vbd-copy.XXXXXX", msg[512] = "";
        struct vbdctl_export ex;
        json_t *job, *res = NULL, *st = NULL;
        struct vbd_err e = {0};
        int r;

        *ret_st = NULL;
        if (!mkdtemp(tmpl))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "mkdtemp: %s", strerror(errno));
        if (vbdctl_export_start(o, tmpl, spec, false, false, &ex, msg, sizeof(msg)) < 0) {
                rmdir(tmpl);
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", what, msg);
        }
        job = json_pack("{s:s,s:s,s:i}", "target", out, "format", format, "granularity", 1 << 20);
        r = vbdctl_call(ex.ctl, "backup-start", job, 60000, &res, &e);
        if (r)
                r = vbdctl_fail(o, vbdctl_exit_code(r < 0 ? r : e.code), r > 0, "%s: %s", what,
                                r > 0 ? e.msg : "the daemon is gone");
        else {
                json_decref(res);
                r = vbdctl_wait_job(o, ex.ctl, progress, &st);
        }
        vbdctl_export_stop(&ex, 60000);
        rmdir(tmpl);
        if (r) {
                json_decref(st);
                return r;
        }
        *ret_st = st;
        return 0;
}
