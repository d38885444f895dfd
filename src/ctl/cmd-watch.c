/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl watch: the backend-type watcher that xl needs.  libxl writes a
 * vbd3 backend directory in state Initialising and waits for the backend
 * to reach InitWait before it runs the hotplug script, so something must
 * start vbdd on its own when the directory appears: this.  For every
 * <base>/D/N in state 1 with online != 0 and no daemon answering on its
 * socket, it spawns vbdd (the image from the params node); a VBD whose
 * daemon fails to start 3 times gets hotplug-error and is left alone.
 * Runs until SIGTERM/SIGINT (vbd-watch.service); daemons outlive it.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

#include "util/parse.h"
#include "vbd-ctl.h"

#define MAX_ATTEMPTS 3
#define MAX_TRACKED  4096

struct tracked {
        uint32_t domid, devid;
        pid_t pid;
        unsigned attempts;
};

struct watch {
        struct vbdctl *o;
        struct xs_handle *xs;
        struct vbdctl_spawn_args a;
        char base[256];
        struct tracked *t;
        size_t nr;
        bool once;
};

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
        stop = 1;
}

static struct tracked *track(struct watch *w, uint32_t domid, uint32_t devid)
{
        for (size_t i = 0; i < w->nr; i++)
                if (w->t[i].domid == domid && w->t[i].devid == devid)
                        return &w->t[i];
        if (w->nr == MAX_TRACKED)
                return NULL;
        w->t[w->nr] = (struct tracked){.domid = domid, .devid = devid};
        return &w->t[w->nr++];
}

static char *read_at(struct watch *w, const char *dom, const char *dev, const char *key)
{
        char path[512];

        snprintf(path, sizeof(path), "%s/%s/%s/%s", w->base, dom, dev, key);
        return vbdctl_xs_read(w->xs, path);
}

static bool parse_id(const char *s, uint32_t max, uint32_t *ret)
{
        return vbd_parse_u32(s, max, ret) == 0;
}

static void consider(struct watch *w, const char *dom, const char *dev)
{
        struct vbdctl *o = w->o;
        char *state = read_at(w, dom, dev, "state"), *online = read_at(w, dom, dev, "online");
        bool want = state && strcmp(state, "1") == 0 && !(online && strcmp(online, "0") == 0);
        struct vbdctl_spawn sp = w->a.sp;
        struct tracked *t;
        char path[256], key[512];
        uint32_t domid, devid;
        pid_t pid;
        int fd;

        free(state);
        free(online);
        if (!want || !parse_id(dom, 0x7fef, &domid) || !parse_id(dev, UINT32_MAX, &devid))
                return;
        t = track(w, domid, devid);
        if (!t || t->attempts >= MAX_ATTEMPTS)
                return;
        if (t->pid > 0 && kill(t->pid, 0) == 0)
                return; /* ours, starting or running */
        if (vbdctl_socket_path(o->dir, domid, devid, path, sizeof(path)) == 0 &&
            (fd = vbdctl_connect(path)) >= 0) {
                close(fd);
                return; /* someone else's daemon serves it */
        }
        sp.domid = domid;
        sp.devid = devid;
        t->attempts++;
        fprintf(stderr, "vbd-ctl watch: %s/%s/%s appeared: starting vbdd\n", w->base, dom, dev);
        if (vbdctl_spawn_vbdd(o, &sp, &pid) == 0) {
                t->pid = pid;
                t->attempts = 0;
                return;
        }
        t->pid = 0;
        if (t->attempts >= MAX_ATTEMPTS) {
                fprintf(stderr, "vbd-ctl watch: giving up on %s/%s/%s\n", w->base, dom, dev);
                snprintf(key, sizeof(key), "%s/%s/%s/hotplug-error", w->base, dom, dev);
                (void)vbdctl_xs_write(w->xs, key, "vbdd failed to start");
                snprintf(key, sizeof(key), "%s/%s/%s/hotplug-status", w->base, dom, dev);
                (void)vbdctl_xs_write(w->xs, key, "error");
        }
}

static void scan(struct watch *w)
{
        unsigned nd = 0, nn;
        char **doms = xs_directory(w->xs, XBT_NULL, w->base, &nd), **devs;
        char path[512];

        for (unsigned i = 0; doms && i < nd; i++) {
                snprintf(path, sizeof(path), "%s/%s", w->base, doms[i]);
                nn = 0;
                devs = xs_directory(w->xs, XBT_NULL, path, &nn);
                for (unsigned j = 0; devs && j < nn; j++)
                        consider(w, doms[i], devs[j]);
                free(devs);
        }
        free(doms);
}

static void reap(struct watch *w)
{
        pid_t pid;
        int status;

        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                for (size_t i = 0; i < w->nr; i++) {
                        if (w->t[i].pid != pid)
                                continue;
                        w->t[i].pid = 0;
                        fprintf(stderr, "vbd-ctl watch: vbdd for %s exited (%s %d)\n",
                                vbdctl_name(w->t[i].domid, w->t[i].devid),
                                WIFEXITED(status) ? "status" : "signal",
                                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
                }
        }
}

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct watch *w = data;

        if (c == 'O') {
                w->once = true;
                return 0;
        }
        return vbdctl_spawn_opt(o, c, arg, &w->a);
}

static int run(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"type", required_argument, NULL, 'T'}, {"backend-domid", required_argument, NULL, 'B'},
            {"vbdd", required_argument, NULL, 'E'}, {"systemd", no_argument, NULL, 'S'},
            {"once", no_argument, NULL, 'O'},       {},
        };
        struct watch w = {.o = o};
        struct sigaction sa = {.sa_handler = on_signal};
        int r;

        vbdctl_spawn_defaults(o, &w.a.sp);
        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &w)))
                return r;
        w.a.sp.timeout_ms = vbdctl_timeout(o, w.a.sp.timeout_ms);
        snprintf(w.base, sizeof(w.base), "/local/domain/%u/backend/%s",
                 (unsigned)w.a.sp.backend_domid, w.a.sp.type);
        w.t = calloc(MAX_TRACKED, sizeof(*w.t));
        w.xs = vbdctl_xs_open(o);
        if (!w.t || !w.xs) {
                free(w.t);
                return VBDCTL_EXIT_FAILED;
        }
        if (!w.once && !xs_watch(w.xs, w.base, "vbd-watch")) {
                r = vbdctl_fail(o, -errno, false, "cannot watch %s: %s", w.base, strerror(errno));
                goto out;
        }
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (!w.once)
                fprintf(stderr, "vbd-ctl watch: watching %s\n", w.base);
        scan(&w);
        while (!w.once && !stop) {
                struct pollfd p = {.fd = xs_fileno(w.xs), .events = POLLIN};
                bool changed = false;
                char **ev;

                if (poll(&p, 1, 1000) > 0) {
                        while ((ev = xs_check_watch(w.xs))) {
                                free(ev);
                                changed = true;
                        }
                        if (!changed && errno != EAGAIN) {
                                r = vbdctl_fail(o, -EIO, false, "lost the xenstore connection");
                                goto out;
                        }
                }
                reap(&w);
                scan(&w); /* also every second: retries and missed events */
        }
        r = 0;
out:
        reap(&w);
        xs_close(w.xs);
        free(w.t);
        return r;
}

const struct vbdctl_verb vbdctl_verb_watch = {
    .name = "watch",
    .run = run,
    .args = "[--type T] [--backend-domid B] [--vbdd PATH] [--systemd] [--once]",
    .summary = "start vbdd for every new backend directory of our type (for xl)",
};
