/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl spawn: start vbdd for a VBD whose xenstore directories the
 * toolstack has written, and wait until it answers on its control socket.
 * Directly (detached, in its own session, logging to <dir>/vbdd-D-N.log) or
 * through systemd (systemctl start vbdd@D-N.service; the unit reads the
 * image from the backend's params node).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/parse.h"
#include "vbd-ctl.h"
#include "vbd/time.h"

static void print_log_tail(const char *log)
{
        char buf[2048];
        ssize_t n;
        off_t size;
        int fd = open(log, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return;
        size = lseek(fd, 0, SEEK_END);
        if (size > (off_t)sizeof(buf) - 1)
                (void)lseek(fd, size - (off_t)sizeof(buf) + 1, SEEK_SET);
        else
                (void)lseek(fd, 0, SEEK_SET);
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return;
        buf[n] = '\0';
        fprintf(stderr, "--- %s ---\n%s", log, buf);
        if (buf[n - 1] != '\n')
                fputc('\n', stderr);
}

static int run_systemctl(struct vbdctl *o, const struct vbdctl_spawn *sp)
{
        char unit[64];
        pid_t pid;
        int status;

        snprintf(unit, sizeof(unit), "vbdd@%u-%u.service", (unsigned)sp->domid,
                 (unsigned)sp->devid);
        pid = fork();
        if (pid < 0)
                return vbdctl_fail(o, -errno, false, "fork: %s", strerror(errno));
        if (pid == 0) {
                execlp("systemctl", "systemctl", "start", unit, (char *)NULL);
                fprintf(stderr, "vbd-ctl: cannot run systemctl: %s\n", strerror(errno));
                _exit(127);
        }
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
                return vbdctl_fail(o, -EIO, false,
                                   "systemctl start %s failed (see journalctl -u %s)", unit, unit);
        return 0;
}

int vbdctl_spawn_vbdd(struct vbdctl *o, const struct vbdctl_spawn *sp, pid_t *ret_pid)
{
        char domid[16], devid[16], bdomid[16], log[300], path[256];
        const char *argv[32];
        uint64_t deadline;
        unsigned n = 0;
        pid_t pid = 0;
        int r;

        *ret_pid = 0;
        if (vbdctl_socket_path(o->dir, sp->domid, sp->devid, path, sizeof(path)) < 0)
                return vbdctl_fail(o, -ENAMETOOLONG, false, "--ctl-dir is too long");
        if (sp->systemd) {
                r = run_systemctl(o, sp);
                if (r)
                        return r;
        } else {
                snprintf(domid, sizeof(domid), "%u", (unsigned)sp->domid);
                snprintf(devid, sizeof(devid), "%u", (unsigned)sp->devid);
                snprintf(bdomid, sizeof(bdomid), "%u", (unsigned)sp->backend_domid);
                if (sp->log)
                        snprintf(log, sizeof(log), "%s", sp->log);
                else
                        snprintf(log, sizeof(log), "%s/vbdd-%s-%s.log", o->dir, domid, devid);
                argv[n++] = sp->vbdd;
                argv[n++] = "--domid";
                argv[n++] = domid;
                argv[n++] = "--devid";
                argv[n++] = devid;
                if (sp->image) {
                        argv[n++] = "--image";
                        argv[n++] = sp->image;
                }
                if (sp->mode) {
                        argv[n++] = "--mode";
                        argv[n++] = sp->mode;
                }
                argv[n++] = "--type";
                argv[n++] = sp->type;
                argv[n++] = "--backend-domid";
                argv[n++] = bdomid;
                argv[n++] = "--ctl-dir";
                argv[n++] = o->dir;
                if (o->config_path) {
                        argv[n++] = "--config";
                        argv[n++] = o->config_path;
                }
                argv[n] = NULL;
                (void)mkdir(o->dir, 0700);
                pid = fork();
                if (pid < 0)
                        return vbdctl_fail(o, -errno, false, "fork: %s", strerror(errno));
                if (pid == 0) {
                        int in = open("/dev/null", O_RDONLY);
                        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0640);

                        setsid();
                        if (in < 0 || out < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 ||
                            dup2(out, 2) < 0) {
                                fprintf(stderr, "vbd-ctl: %s: %s\n", log, strerror(errno));
                                _exit(127);
                        }
                        if (in > 2)
                                close(in);
                        if (out > 2)
                                close(out);
                        execv(sp->vbdd, (char *const *)argv);
                        fprintf(stderr, "vbd-ctl: cannot run %s: %s\n", sp->vbdd, strerror(errno));
                        _exit(127);
                }
                *ret_pid = pid;
        }
        if (!sp->wait)
                return 0;

        /* Ready when it answers on its socket. */
        deadline = vbd_now_ms() + (uint64_t)sp->timeout_ms;
        for (;;) {
                struct vbd_err err = {0};
                json_t *res = NULL;
                int status;

                if (pid && waitpid(pid, &status, WNOHANG) == pid) {
                        *ret_pid = 0;
                        r = vbdctl_fail(o, -EIO, false,
                                        "vbdd for %s exited (%s %d) before it was ready",
                                        vbdctl_name(sp->domid, sp->devid),
                                        WIFEXITED(status) ? "status" : "signal",
                                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                        print_log_tail(log);
                        return r;
                }
                r = vbdctl_call(path, "info", NULL, 1000, &res, &err);
                if (r == 0) {
                        long long p = vbdctl_jint(res, "pid");

                        json_decref(res);
                        if (!pid || p == pid) {
                                *ret_pid = (pid_t)p;
                                return 0;
                        }
                }
                if (r == 1 && err.code != -EAGAIN)
                        return vbdctl_fail(o, err.code, true, "%s: %s",
                                           vbdctl_name(sp->domid, sp->devid), err.msg);
                if (vbd_now_ms() >= deadline) {
                        r = vbdctl_fail(o, -ETIMEDOUT, false, "vbdd for %s not ready after %d s",
                                        vbdctl_name(sp->domid, sp->devid), sp->timeout_ms / 1000);
                        if (pid)
                                print_log_tail(log);
                        return r;
                }
                usleep(20000);
        }
}

int vbdctl_spawn_opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct vbdctl_spawn_args *a = data;

        switch (c) {
        case 'i':
                a->sp.image = arg;
                break;
        case 'm':
                if (strcmp(arg, "r") && strcmp(arg, "w"))
                        return vbdctl_usage_error(o, "--mode must be r or w");
                a->sp.mode = arg;
                break;
        case 'T':
                if (!*arg || strchr(arg, '/') || strlen(arg) > 32)
                        return vbdctl_usage_error(o, "bad --type '%s'", arg);
                a->sp.type = arg;
                break;
        case 'B':
                if (vbd_parse_u32(arg, 0x7fef, &a->sp.backend_domid) < 0)
                        return vbdctl_usage_error(o, "bad --backend-domid '%s'", arg);
                a->have_bdomid = true;
                break;
        case 'E':
                a->sp.vbdd = arg;
                break;
        case 'S':
                a->sp.systemd = true;
                break;
        case 'L':
                a->sp.log = arg;
                break;
        case 'v':
                a->vdev = arg;
                break;
        case 'X':
                a->no_xenstore = true;
                break;
        }
        return 0;
}

void vbdctl_spawn_defaults(struct vbdctl *o, struct vbdctl_spawn *sp)
{
        sp->type = o->conf.backend_type;
        sp->backend_domid = o->conf.backend_domid;
        sp->vbdd = getenv("VBD_VBDD") && *getenv("VBD_VBDD") ? getenv("VBD_VBDD") : o->conf.vbdd;
        sp->systemd = o->conf.spawn_systemd;
        sp->timeout_ms = (int)o->conf.spawn_timeout_s * 1000;
        sp->wait = true;
}

int vbdctl_spawn_report(struct vbdctl *o, pid_t pid, const char *what)
{
        char path[256];

        (void)vbdctl_socket_path(o->dir, o->domid, o->devid, path, sizeof(path));
        if (o->json)
                vbdctl_print_json(json_pack("{s:I,s:I,s:I,s:s}", "domid", (json_int_t)o->domid,
                                            "devid", (json_int_t)o->devid, "pid", (json_int_t)pid,
                                            "socket", path));
        else
                printf("%s: %s, vbdd pid %d\n", vbdctl_name(o->domid, o->devid), what, (int)pid);
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
            {},
        };
        struct vbdctl_spawn_args a = {0};
        pid_t pid;
        int r;

        vbdctl_spawn_defaults(o, &a.sp);
        if ((r = vbdctl_parse(o, argc, argv, extra, vbdctl_spawn_opt, &a)) ||
            (r = vbdctl_need_vbd(o)))
                return r;
        a.sp.domid = o->domid;
        a.sp.devid = o->devid;
        a.sp.timeout_ms = vbdctl_timeout(o, a.sp.timeout_ms);
        if (a.sp.systemd && (a.sp.image || a.sp.mode))
                return vbdctl_usage_error(o, "with --systemd the image and mode come from "
                                             "xenstore (params, mode)");
        r = vbdctl_spawn_vbdd(o, &a.sp, &pid);
        if (r)
                return r;
        return vbdctl_spawn_report(o, pid, "spawned");
}

const struct vbdctl_verb vbdctl_verb_spawn = {
    .name = "spawn",
    .run = run,
    .args = "-d D -n N [--image SPEC] [--mode r|w] [--type T] [--backend-domid B]\n"
            "       [--vbdd PATH] [--systemd] [--log FILE] [--timeout S] [--json]",
    .summary = "start vbdd for a VBD the toolstack has set up in xenstore",
};
