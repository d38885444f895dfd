/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl watch: the backend-type watcher that xl needs.  libxl writes a
 * vbd3 backend directory in state Initialising and waits for the backend
 * to reach InitWait before it runs the hotplug script, so something must
 * start vbdd on its own when the directory appears: this.  For every
 * <base>/D/N in state 1 with online != 0 and no daemon answering on its
 * socket, it spawns vbdd (the image from the params node) without waiting
 * for it: libxl waits for InitWait itself, and one slow daemon must not
 * hold up the others (several disks of one guest start in parallel).  The
 * child is tracked until it exits, so it is never started twice; a VBD
 * whose daemon fails (exits non-zero) 3 times while the directory is still
 * Initialising gets hotplug-error and is left alone.
 *
 * The other half of libxl's protocol: to remove a device libxl writes
 * online 0 and state Closing, waits (10 s) for the backend to reach Closed,
 * and only then runs the hotplug script's remove and deletes the
 * directories; after a timeout it deletes them without running the script.
 * A vbdd that already exited (the guest shut down or died first, or the
 * daemon crashed) cannot answer, so for a VBD in state Closing with online
 * 0 and no daemon, the watcher writes Closed in its place.
 *
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
        bool seen; /* its directory exists (last scan) */
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

static struct tracked *find(struct watch *w, uint32_t domid, uint32_t devid)
{
        for (size_t i = 0; i < w->nr; i++)
                if (w->t[i].domid == domid && w->t[i].devid == devid)
                        return &w->t[i];
        return NULL;
}

static struct tracked *track(struct watch *w, uint32_t domid, uint32_t devid)
{
        struct tracked *t = find(w, domid, devid);

        if (t)
                return t;
        if (w->nr == MAX_TRACKED)
                return NULL;
        w->t[w->nr] = (struct tracked){.domid = domid, .devid = devid, .seen = true};
        return &w->t[w->nr++];
}

/* Our child still runs, or some daemon answers on the VBD's socket. */
static bool served(struct watch *w, const struct tracked *t, uint32_t domid, uint32_t devid)
{
        char path[256];
        int fd;

        if (t && t->pid > 0 && kill(t->pid, 0) == 0)
                return true;
        if (vbdctl_socket_path(w->o->dir, domid, devid, path, sizeof(path)) < 0)
                return false;
        fd = vbdctl_connect(path);
        if (fd < 0)
                return false;
        close(fd);
        return true;
}

/*
 * If the VBD's backend state is `state` (and, with offline, its online node
 * is 0), write the kv pairs (NULL-terminated name, value).  In a transaction
 * that re-checks the nodes, so that a directory the toolstack removes
 * meanwhile is not re-created by the writes.  true if written.
 */
static bool write_if(struct watch *w, uint32_t domid, uint32_t devid, const char *state,
                     bool offline, const char *const *kv)
{
        char dir[400], path[600];

        snprintf(dir, sizeof(dir), "%s/%u/%u", w->base, (unsigned)domid, (unsigned)devid);
        for (int tries = 0; tries < 16; tries++) {
                xs_transaction_t t = xs_transaction_start(w->xs);
                char *v, *online = NULL;
                unsigned len;
                bool match;

                if (t == XBT_NULL)
                        return false;
                snprintf(path, sizeof(path), "%s/state", dir);
                v = xs_read(w->xs, t, path, &len);
                if (offline) {
                        snprintf(path, sizeof(path), "%s/online", dir);
                        online = xs_read(w->xs, t, path, &len);
                }
                match = v && strcmp(v, state) == 0 &&
                        (!offline || (online && strcmp(online, "0") == 0));
                free(v);
                free(online);
                for (unsigned i = 0; match && kv[i]; i += 2) {
                        snprintf(path, sizeof(path), "%s/%s", dir, kv[i]);
                        match = xs_write(w->xs, t, path, kv[i + 1], strlen(kv[i + 1]));
                }
                if (!match) {
                        xs_transaction_end(w->xs, t, true);
                        return false;
                }
                if (xs_transaction_end(w->xs, t, false))
                        return true;
                if (errno != EAGAIN)
                        return false;
        }
        return false;
}

/* Closing + online 0 + no daemon: Closed, for the toolstack. */
static void close_orphan(struct watch *w, uint32_t domid, uint32_t devid)
{
        static const char *const kv[] = {"state", "6", NULL};

        if (write_if(w, domid, devid, "5", true, kv))
                fprintf(stderr,
                        "vbd-ctl watch: %s/%u/%u: closed by the toolstack and no vbdd serves it: "
                        "state Closed\n",
                        w->base, (unsigned)domid, (unsigned)devid);
}

/* The daemon failed MAX_ATTEMPTS times: tell libxl, if it still waits. */
static void give_up(struct watch *w, struct tracked *t)
{
        static const char *const kv[] = {"hotplug-error", "vbdd failed to start", "hotplug-status",
                                         "error", NULL};

        fprintf(stderr, "vbd-ctl watch: giving up on %s/%u/%u\n", w->base, (unsigned)t->domid,
                (unsigned)t->devid);
        (void)write_if(w, t->domid, t->devid, "1", false, kv);
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
        bool off = online && strcmp(online, "0") == 0;
        bool want = state && strcmp(state, "1") == 0 && !off;
        bool closing = state && strcmp(state, "5") == 0 && off;
        struct vbdctl_spawn sp = w->a.sp;
        struct tracked *t;
        uint32_t domid, devid;
        pid_t pid;

        free(state);
        free(online);
        if (!parse_id(dom, 0x7fef, &domid) || !parse_id(dev, UINT32_MAX, &devid))
                return;
        t = find(w, domid, devid);
        if (t)
                t->seen = true;
        if (closing) {
                if (!served(w, t, domid, devid))
                        close_orphan(w, domid, devid);
                return;
        }
        if (!want)
                return;
        t = track(w, domid, devid);
        if (!t || t->attempts >= MAX_ATTEMPTS)
                return;
        if (served(w, t, domid, devid))
                return; /* ours starting or running, or someone else's daemon */
        sp.domid = domid;
        sp.devid = devid;
        t->attempts++;
        fprintf(stderr, "vbd-ctl watch: %s/%s/%s appeared: starting vbdd\n", w->base, dom, dev);
        /* Without waiting (but for --once): reap() sees the failures. */
        if (vbdctl_spawn_vbdd(o, &sp, &pid) == 0) {
                t->pid = pid;
                if (sp.wait)
                        t->attempts = 0;
                return;
        }
        t->pid = pid; /* not ready in time (--once) but still running, or 0 */
        if (t->attempts >= MAX_ATTEMPTS && pid <= 0)
                give_up(w, t);
}

static void scan(struct watch *w)
{
        unsigned nd = 0, nn;
        char **doms, **devs;
        char path[512];
        size_t n = 0;

        for (size_t i = 0; i < w->nr; i++)
                w->t[i].seen = false;
        doms = xs_directory(w->xs, XBT_NULL, w->base, &nd);
        if (!doms && errno != ENOENT)
                return; /* cannot tell what is gone: keep everything */
        for (unsigned i = 0; doms && i < nd; i++) {
                snprintf(path, sizeof(path), "%s/%s", w->base, doms[i]);
                nn = 0;
                devs = xs_directory(w->xs, XBT_NULL, path, &nn);
                for (unsigned j = 0; devs && j < nn; j++)
                        consider(w, doms[i], devs[j]);
                free(devs);
        }
        free(doms);
        /* Forget VBDs whose directory is gone (unless our daemon still runs). */
        for (size_t i = 0; i < w->nr; i++)
                if (w->t[i].seen || w->t[i].pid > 0)
                        w->t[n++] = w->t[i];
        w->nr = n;
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
                        if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                                w->t[i].attempts = 0; /* served and detached */
                        else if (w->t[i].attempts >= MAX_ATTEMPTS)
                                give_up(w, &w->t[i]);
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
        w.a.sp.wait = w.once;
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
