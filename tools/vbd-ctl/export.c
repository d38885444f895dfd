/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * An export-only vbdd serving one image on a unix NBD socket, with a control
 * socket of its own in a directory of the caller's: vbd-ctl restore runs a
 * job on it, vbd-ctl mount leaves it running under the mount.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vbd-ctl.h"

#define EXPORT_DOMID 32000u

int vbdctl_image_spec(const char *path, char *buf, size_t size)
{
        unsigned char magic[4] = {0};
        int fd = open(path, O_RDONLY | O_CLOEXEC), n;

        if (fd < 0)
                return -errno;
        n = (int)read(fd, magic, sizeof(magic));
        close(fd);
        if (n < 0)
                return -errno;
        n = snprintf(buf, size, "%s:%s", n == 4 && !memcmp(magic, "QFI\xfb", 4) ? "qcow2" : "raw",
                     path);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

bool vbdctl_pid_mentions(pid_t pid, const char *s)
{
        char path[64], buf[8192];
        FILE *f;
        size_t n;

        if (pid <= 0)
                return false;
        snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
        if (!(f = fopen(path, "re")))
                return false;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (size_t i = 0; i < n; i++) /* NUL-separated arguments */
                if (!buf[i])
                        buf[i] = ' ';
        buf[n] = '\0';
        return strstr(buf, s) != NULL;
}

int vbdctl_read_int(const char *path, int def)
{
        FILE *f = fopen(path, "re");
        int v = def;

        if (f) {
                if (fscanf(f, "%d", &v) != 1)
                        v = def;
                fclose(f);
        }
        return v;
}

void vbdctl_first_line(const char *file, char *msg, size_t size)
{
        char buf[1024] = "", *p = buf;
        FILE *f = fopen(file, "re");
        size_t k;

        if (f) {
                k = fread(buf, 1, sizeof(buf) - 1, f);
                buf[k] = '\0';
                fclose(f);
        }
        buf[strcspn(buf, "\n")] = '\0';
        if (!strncmp(p, "vbd[", 4) && strstr(p, "] "))
                p = strstr(p, "] ") + 2;
        if (!strncmp(p, "vbdd: ", 6))
                p += 6;
        snprintf(msg, size, "%s", *p ? p : "it exited without saying why");
}

static long long now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int vbdctl_export_start(struct vbdctl *o, const char *dir, const char *image, bool writable,
                        bool detach, struct vbdctl_export *ex, char *msg, size_t size)
{
        struct vbdctl_spawn sp;
        char domid[16], devid[16], nbd[PATH_MAX + 8];
        long long deadline;
        int status;

        memset(ex, 0, sizeof(*ex));
        vbdctl_spawn_defaults(o, &sp);
        ex->domid = EXPORT_DOMID;
        ex->devid = (uint32_t)getpid() % 60000u + 1;
        if (snprintf(ex->dir, sizeof(ex->dir), "%s", dir) >= (int)sizeof(ex->dir) ||
            snprintf(ex->nbd, sizeof(ex->nbd), "%s/nbd.sock", dir) >= (int)sizeof(ex->nbd) ||
            snprintf(ex->log, sizeof(ex->log), "%s/vbdd.log", dir) >= (int)sizeof(ex->log) ||
            vbdctl_socket_path(dir, ex->domid, ex->devid, ex->ctl, sizeof(ex->ctl)) < 0) {
                snprintf(msg, size, "%s: path too long", dir);
                return -ENAMETOOLONG;
        }
        snprintf(nbd, sizeof(nbd), "unix:%s", ex->nbd);
        snprintf(domid, sizeof(domid), "%u", ex->domid);
        snprintf(devid, sizeof(devid), "%u", ex->devid);
        ex->pid = fork();
        if (ex->pid < 0) {
                snprintf(msg, size, "fork: %s", strerror(errno));
                return -errno;
        }
        if (ex->pid == 0) {
                int fd = open(ex->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                if (detach) /* it outlives vbd-ctl, and the terminal's signals */
                        setsid();
                if (writable)
                        execl(sp.vbdd, sp.vbdd, "--export-only", "--image", image, "--nbd", nbd,
                              "--nbd-writable", "--domid", domid, "--devid", devid, "--ctl-dir",
                              dir, "-q", (char *)NULL);
                else
                        execl(sp.vbdd, sp.vbdd, "--export-only", "--image", image, "--nbd", nbd,
                              "--domid", domid, "--devid", devid, "--ctl-dir", dir, "-q",
                              (char *)NULL);
                fprintf(stderr, "cannot run %s: %s\n", sp.vbdd, strerror(errno));
                _exit(127);
        }
        /* Ready when both sockets are there (the NBD one is bound first). */
        deadline = now_ms() + (sp.timeout_ms > 0 ? sp.timeout_ms : 10000);
        while (access(ex->ctl, F_OK) < 0 || access(ex->nbd, F_OK) < 0) {
                if (waitpid(ex->pid, &status, WNOHANG) == ex->pid) {
                        vbdctl_first_line(ex->log, msg, size);
                        ex->pid = 0;
                        vbdctl_export_stop(ex, 0);
                        return -EIO;
                }
                if (now_ms() > deadline) {
                        snprintf(msg, size, "vbdd did not start in time (see %s)", ex->log);
                        vbdctl_export_stop(ex, 5000);
                        return -ETIMEDOUT;
                }
                usleep(5 * 1000);
        }
        return 0;
}

int vbdctl_wait_gone(pid_t pid, int timeout_ms, int *ret_status)
{
        long long deadline = now_ms() + timeout_ms;
        char path[64], st[256];

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        for (;;) {
                int status;
                pid_t w = waitpid(pid, &status, WNOHANG);
                FILE *f;

                if (w == pid) {
                        if (ret_status)
                                *ret_status = status;
                        return 0;
                }
                if (w < 0) { /* not ours (a mount's, after vbd-ctl mount exited) */
                        if (kill(pid, 0) < 0 && errno == ESRCH)
                                return 0;
                        f = fopen(path, "re");
                        if (!f)
                                return 0;
                        if (!fgets(st, sizeof(st), f))
                                st[0] = '\0';
                        fclose(f);
                        if (strstr(st, ") Z ")) /* its parent reaps it */
                                return 0;
                }
                if (now_ms() > deadline)
                        return -ETIMEDOUT;
                usleep(5 * 1000);
        }
}

int vbdctl_export_stop(struct vbdctl_export *ex, int timeout_ms)
{
        int r = 0;

        ex->status = -1;
        if (ex->pid > 0) {
                kill(ex->pid, SIGTERM); /* it flushes the image and exits */
                r = vbdctl_wait_gone(ex->pid, timeout_ms, &ex->status);
                if (r < 0) {
                        kill(ex->pid, SIGKILL);
                        vbdctl_wait_gone(ex->pid, 2000, NULL);
                        ex->status = -1;
                }
                ex->pid = 0;
        }
        unlink(ex->ctl);
        unlink(ex->nbd);
        unlink(ex->log);
        return r;
}
