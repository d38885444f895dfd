/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Copying an image chain into one new file with the daemon's backup job:
 * vbd-ctl restore (a backup of a chain) and vbd-ctl layer flatten (a guest
 * over its layers).  An export-only vbdd opens the chain read-only, with a
 * control socket of its own in a private directory, and runs the "backup"
 * job into the target without a backing file, so the holes stay holes.
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

/* The first line of the daemon's log, for a daemon that died at start. */
static void first_line(const char *log, char *buf, size_t size)
{
        FILE *f = fopen(log, "re");

        buf[0] = '\0';
        if (f) {
                size_t k = fread(buf, 1, size - 1, f);

                buf[k] = '\0';
                fclose(f);
        }
        buf[strcspn(buf, "\n")] = '\0';
}

int vbdctl_copy_image(struct vbdctl *o, const char *spec, const char *what, const char *out,
                      const char *format, bool progress, json_t **ret_st)
{
        char tmpl[] = "/tmp/vbd-copy.XXXXXX", sock[PATH_MAX], nbd[PATH_MAX + 8];
        char domid[16], devid[16], log[PATH_MAX];
        struct vbdctl_spawn sp;
        json_t *job, *res = NULL, *st = NULL;
        struct vbd_err e = {0};
        pid_t pid;
        int r, status;

        *ret_st = NULL;
        if (!mkdtemp(tmpl))
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "mkdtemp: %s", strerror(errno));
        vbdctl_spawn_defaults(o, &sp);
        snprintf(nbd, sizeof(nbd), "unix:%s/nbd.sock", tmpl);
        snprintf(domid, sizeof(domid), "%u", 32000u);
        snprintf(devid, sizeof(devid), "%u", (unsigned)getpid() % 60000u + 1);
        snprintf(log, sizeof(log), "%s/vbdd.log", tmpl);
        pid = fork();
        if (pid < 0) {
                rmdir(tmpl);
                return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "fork: %s", strerror(errno));
        }
        if (pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                execl(sp.vbdd, sp.vbdd, "--export-only", "--image", spec, "--nbd", nbd, "--domid",
                      domid, "--devid", devid, "--ctl-dir", tmpl, "-q", (char *)NULL);
                fprintf(stderr, "cannot run %s: %s\n", sp.vbdd, strerror(errno));
                _exit(127);
        }
        vbdctl_socket_path(tmpl, 32000u, (uint32_t)strtoul(devid, NULL, 10), sock, sizeof(sock));
        for (int i = 0; i < 200 && access(sock, F_OK) < 0; i++) {
                if (waitpid(pid, &status, WNOHANG) == pid) {
                        char buf[512];

                        first_line(log, buf, sizeof(buf));
                        unlink(log);
                        rmdir(tmpl);
                        return vbdctl_fail(o, VBDCTL_EXIT_FAILED, false, "%s: %s", what, buf);
                }
                usleep(50 * 1000);
        }
        job = json_pack("{s:s,s:s,s:i}", "target", out, "format", format, "granularity", 1 << 20);
        r = vbdctl_call(sock, "backup-start", job, 60000, &res, &e);
        if (r)
                r = vbdctl_fail(o, vbdctl_exit_code(r < 0 ? r : e.code), r > 0, "%s: %s", what,
                                r > 0 ? e.msg : "the daemon is gone");
        else {
                json_decref(res);
                r = vbdctl_wait_job(o, sock, progress, &st);
        }
        kill(pid, SIGTERM);
        waitpid(pid, &status, 0);
        unlink(log);
        unlink(sock);
        rmdir(tmpl);
        if (r) {
                json_decref(st);
                return r;
        }
        *ret_st = st;
        return 0;
}
