/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl migrate --to SPEC: the bridge.  The daemon's mirror only speaks
 * NBD to its partner; for an image spec (raw:FILE, qcow2:FILE,
 * rbd:POOL/IMAGE) vbd-ctl starts an export-only vbdd serving SPEC writable
 * on a unix socket, <ctl-dir>/partners/D-N/nbd.sock, and the ordinary NBD
 * migration goes to that socket.  The bridge runs in a session of its own
 * (it outlives vbd-ctl migrate start) under a small supervisor process that
 * reaps it and records its exit status (bridge.exit), so that a later
 * vbd-ctl can tell how it ended.  <ctl-dir>/partners/D-N/bridge.json says
 * what runs there: pid, spec, socket, log, and, once stopped, why and how it
 * exited.
 *
 * A target that does not exist is created with the VBD's size (raw, qcow2:
 * the drivers' create(); rbd: the rbd tool); one smaller than the VBD is
 * refused before the migration starts.  cutover and abort stop the bridge
 * once the mirror has closed its connection (after the final flush: the
 * data is durable on the target before the bridge exits); vbdd flushes the
 * image as it exits on SIGTERM.
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

#include "cmd-migrate.h"
#include "vbd/driver.h"
#include "vbd/err.h"
#include "vbd/macro.h"

#define BRIDGE_DOMID     32001u
#define BRIDGE_DEVID     1u
#define BRIDGE_START_MS  30000 /* rbd: connecting to the cluster */
#define BRIDGE_STOP_MS   30000
#define BRIDGE_CLOSED_MS 10000 /* the mirror closing its connection after a cutover */

static const char *const spec_drivers[] = {"raw:", "qcow2:", "rbd:"};

bool mig_is_spec(const char *arg)
{
        for (size_t i = 0; i < VBD_ARRAY_SIZE(spec_drivers); i++)
                if (!strncmp(arg, spec_drivers[i], strlen(spec_drivers[i])) &&
                    arg[strlen(spec_drivers[i])])
                        return true;
        return false;
}

static long long now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct bridge_paths {
        char dir[PATH_MAX], sock[PATH_MAX], ctl[PATH_MAX], log[PATH_MAX], json[PATH_MAX],
            exit[PATH_MAX];
};

static int paths(struct mig *m, struct bridge_paths *p)
{
        struct vbdctl *o = m->o;

        if (snprintf(p->dir, sizeof(p->dir), "%s/partners/%u-%u", o->dir, o->domid, o->devid) >=
                (int)sizeof(p->dir) ||
            snprintf(p->sock, sizeof(p->sock), "%s/nbd.sock", p->dir) >= (int)sizeof(p->sock) ||
            snprintf(p->log, sizeof(p->log), "%s/vbdd.log", p->dir) >= (int)sizeof(p->log) ||
            snprintf(p->json, sizeof(p->json), "%s/bridge.json", p->dir) >= (int)sizeof(p->json) ||
            snprintf(p->exit, sizeof(p->exit), "%s/bridge.exit", p->dir) >= (int)sizeof(p->exit) ||
            vbdctl_socket_path(p->dir, BRIDGE_DOMID, BRIDGE_DEVID, p->ctl, sizeof(p->ctl)) < 0 ||
            strlen(p->sock) >= 108 || strlen(p->ctl) >= 108)
                return -ENAMETOOLONG;
        return 0;
}

/* Is pid a live bridge serving sock (not a zombie, not a reused pid)? */
static bool bridge_alive(pid_t pid, const char *sock)
{
        char path[64], st[256];
        FILE *f;

        if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
                return false;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        if ((f = fopen(path, "re"))) {
                if (!fgets(st, sizeof(st), f))
                        st[0] = '\0';
                fclose(f);
                if (strstr(st, ") Z ") || strstr(st, ") X "))
                        return false;
        }
        return vbdctl_pid_mentions(pid, sock);
}

static int write_json(const char *path, json_t *j)
{
        char tmp[PATH_MAX + 8];
        int r;

        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        r = json_dump_file(j, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (r == 0 && rename(tmp, path) < 0)
                r = -1;
        if (r < 0)
                unlink(tmp);
        return r < 0 ? -EIO : 0;
}

/* The supervisor's record of the bridge's wait status, or -1. */
static int read_exit(const char *path)
{
        return vbdctl_read_int(path, -1);
}

static void describe_status(char *buf, size_t size, int st)
{
        if (st < 0)
                snprintf(buf, size, "exit status unknown");
        else if (WIFEXITED(st))
                snprintf(buf, size, "exit %d", WEXITSTATUS(st));
        else if (WIFSIGNALED(st))
                snprintf(buf, size, "killed by signal %d", WTERMSIG(st));
        else
                snprintf(buf, size, "wait status %d", st);
}

/* bridge.json with "running" (now) added, or NULL when there is none. */
json_t *mig_bridge_get(struct mig *m)
{
        struct bridge_paths p;
        json_t *j;
        int st;

        if (paths(m, &p) < 0 || !(j = json_load_file(p.json, 0, NULL)))
                return NULL;
        json_object_set_new(
            j, "running",
            json_boolean(bridge_alive((pid_t)vbdctl_jint(j, "pid"), vbdctl_jstr(j, "socket"))));
        if (!json_is_true(json_object_get(j, "running")) &&
            strcmp(vbdctl_jstr(j, "state"), "running") == 0) {
                /* It went without vbd-ctl stopping it. */
                st = read_exit(p.exit);
                json_object_set_new(j, "state", json_string("exited"));
                json_object_set_new(j, "exit_status", st >= 0 ? json_integer(st) : json_null());
                json_object_set_new(j, "exit_code",
                                    st >= 0 && WIFEXITED(st) ? json_integer(WEXITSTATUS(st))
                                                             : json_null());
        }
        return j;
}

/* ---- starting ---- */

/* fork a supervisor in a session of its own that runs vbdd and records its
 * wait status; the vbdd's pid in *ret_pid. */
static int spawn(struct mig *m, const struct bridge_paths *p, const char *spec, pid_t *ret_pid,
                 char *msg, size_t size)
{
        struct vbdctl_spawn sp;
        char nbd[PATH_MAX + 8], domid[16], devid[16];
        int pfd[2];
        pid_t sup, pid = -1;
        ssize_t n;

        vbdctl_spawn_defaults(m->o, &sp);
        snprintf(nbd, sizeof(nbd), "unix:%s", p->sock);
        snprintf(domid, sizeof(domid), "%u", BRIDGE_DOMID);
        snprintf(devid, sizeof(devid), "%u", BRIDGE_DEVID);
        if (pipe2(pfd, O_CLOEXEC) < 0) {
                snprintf(msg, size, "pipe: %s", strerror(errno));
                return -errno;
        }
        fflush(stdout);
        fflush(stderr);
        sup = fork();
        if (sup < 0) {
                snprintf(msg, size, "fork: %s", strerror(errno));
                close(pfd[0]);
                close(pfd[1]);
                return -errno;
        }
        if (sup == 0) {
                int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                int null = open("/dev/null", O_RDWR | O_CLOEXEC), st = -1;
                char tmp[PATH_MAX + 8];
                FILE *f;

                close(pfd[0]);
                setsid(); /* it outlives vbd-ctl, and the terminal's signals */
                if (null >= 0)
                        dup2(null, 0);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                signal(SIGINT, SIG_IGN);
                signal(SIGHUP, SIG_IGN);
                signal(SIGTERM, SIG_IGN);
                pid = fork();
                if (pid == 0) {
                        signal(SIGINT, SIG_DFL);
                        signal(SIGHUP, SIG_DFL);
                        signal(SIGTERM, SIG_DFL);
                        execl(sp.vbdd, sp.vbdd, "--export-only", "--image", spec, "--nbd", nbd,
                              "--nbd-writable", "--domid", domid, "--devid", devid, "--ctl-dir",
                              p->dir, "-q", (char *)NULL);
                        fprintf(stderr, "cannot run %s: %s\n", sp.vbdd, strerror(errno));
                        _exit(127);
                }
                if (write(pfd[1], &pid, sizeof(pid)) < 0)
                        _exit(1);
                close(pfd[1]);
                if (pid < 0)
                        _exit(1);
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                        ;
                snprintf(tmp, sizeof(tmp), "%s.tmp", p->exit);
                if ((f = fopen(tmp, "we"))) {
                        fprintf(f, "%d\n", st);
                        if (fclose(f) == 0)
                                rename(tmp, p->exit);
                }
                _exit(0);
        }
        close(pfd[1]);
        n = read(pfd[0], &pid, sizeof(pid));
        close(pfd[0]);
        if (n != (ssize_t)sizeof(pid) || pid <= 0) {
                snprintf(msg, size, "cannot start the bridge (fork)");
                return -EIO;
        }
        *ret_pid = pid;
        return 0;
}

/* Stop pid (SIGTERM: vbdd flushes and exits), wait; its wait status or -1. */
static int stop_pid(pid_t pid, const char *sock, const char *exit_file, bool *ret_killed)
{
        long long deadline;

        *ret_killed = false;
        if (bridge_alive(pid, sock)) {
                kill(pid, SIGTERM);
                deadline = now_ms() + BRIDGE_STOP_MS;
                while (bridge_alive(pid, sock) && now_ms() < deadline)
                        usleep(5 * 1000);
                if (bridge_alive(pid, sock)) {
                        kill(pid, SIGKILL);
                        *ret_killed = true;
                        deadline = now_ms() + 2000;
                        while (bridge_alive(pid, sock) && now_ms() < deadline)
                                usleep(5 * 1000);
                }
        }
        /* The supervisor writes the status right after reaping it. */
        deadline = now_ms() + 2000;
        while (access(exit_file, F_OK) < 0 && now_ms() < deadline)
                usleep(5 * 1000);
        return read_exit(exit_file);
}

/* Start vbdd on spec and wait until it serves: 0, or -errno with msg (its
 * own words: a missing image, a lock held...) and nothing left running. */
static int bridge_run(struct mig *m, const struct bridge_paths *p, const char *spec, pid_t *ret_pid,
                      char *msg, size_t size)
{
        long long deadline;
        bool killed;
        pid_t pid;
        int r;

        unlink(p->sock);
        unlink(p->ctl);
        unlink(p->exit);
        if ((r = spawn(m, p, spec, &pid, msg, size)) < 0)
                return r;
        deadline = now_ms() + BRIDGE_START_MS;
        while (access(p->ctl, F_OK) < 0 || access(p->sock, F_OK) < 0) {
                if (!bridge_alive(pid, p->sock) && access(p->exit, F_OK) == 0) {
                        vbdctl_first_line(p->log, msg, size);
                        return -EIO;
                }
                if (now_ms() > deadline) {
                        snprintf(msg, size, "the bridge did not start in time (see %.900s)",
                                 p->log);
                        stop_pid(pid, p->sock, p->exit, &killed);
                        return -ETIMEDOUT;
                }
                usleep(5 * 1000);
        }
        *ret_pid = pid;
        return 0;
}

/* "rbd:POOL/IMAGE[@SNAP],conf=F,id=U,keyring=K": the rbd tool's arguments to
 * create it with size bytes; 0 or -errno. */
static int rbd_create(const char *spec, uint64_t size, char *msg, size_t msize)
{
        char buf[MIG_TO_MAX], sz[32], *opts, *save = NULL;
        const char *argv[16];
        int n = 0, st;
        pid_t pid;

        snprintf(buf, sizeof(buf), "%s", spec + 4);
        opts = strchr(buf, ',');
        if (opts)
                *opts++ = '\0';
        if (strchr(buf, '@')) {
                snprintf(msg, msize, "%.900s: a snapshot cannot be a migration target", spec);
                return -EINVAL;
        }
        argv[n++] = "rbd";
        for (char *o = opts ? strtok_r(opts, ",", &save) : NULL; o && n < 10;
             o = strtok_r(NULL, ",", &save)) {
                if (!strncmp(o, "conf=", 5)) {
                        argv[n++] = "-c";
                        argv[n++] = o + 5;
                } else if (!strncmp(o, "id=", 3)) {
                        argv[n++] = "--id";
                        argv[n++] = o + 3;
                } else if (!strncmp(o, "keyring=", 8)) {
                        argv[n++] = "--keyring";
                        argv[n++] = o + 8;
                }
        }
        snprintf(sz, sizeof(sz), "%lluB", (unsigned long long)size);
        argv[n++] = "create";
        argv[n++] = "--size";
        argv[n++] = sz;
        argv[n++] = buf;
        argv[n] = NULL;
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0) {
                snprintf(msg, msize, "fork: %s", strerror(errno));
                return -errno;
        }
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR);

                if (null >= 0) {
                        dup2(null, 0);
                        dup2(null, 1);
                }
                execvp("rbd", (char **)argv);
                fprintf(stderr, "cannot run rbd: %s\n", strerror(errno));
                _exit(127);
        }
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                snprintf(
                    msg, msize,
                    "%.300s does not exist and 'rbd create --size %s %.300s' failed%s: create it "
                    "(at least %llu bytes) and start again",
                    spec, sz, buf, WIFEXITED(st) && WEXITSTATUS(st) == 127 ? " (no rbd tool)" : "",
                    (unsigned long long)size);
                return -ENOENT;
        }
        return 0;
}

/* raw:FILE or qcow2:FILE that does not exist: create it, size bytes.
 * 1 created, 0 it exists, -errno with msg. */
static int file_create(const char *spec, uint64_t size, char *path, size_t psize, char *msg,
                       size_t msize)
{
        const char *colon = strchr(spec, ':');
        char drv[16];
        struct vbd_create c = {0};
        struct vbd_err err = {0};
        struct stat st;

        snprintf(drv, sizeof(drv), "%.*s", (int)(colon - spec), spec);
        snprintf(path, psize, "%.*s", (int)strcspn(colon + 1, ","), colon + 1);
        if (stat(path, &st) == 0)
                return 0;
        if (errno != ENOENT) {
                snprintf(msg, msize, "%s: %s", path, strerror(errno));
                return -errno;
        }
        c.path = path;
        c.size = vbd_align_up(size, 512);
        if (vbd_image_create(drv, &c, &err) < 0) {
                snprintf(msg, msize, "cannot create the target: %s", err.msg);
                return err.code < 0 ? err.code : -EIO;
        }
        return 1;
}

/* The bridge's image size, from its control socket; 0 or -errno. */
static int bridge_size(const struct bridge_paths *p, uint64_t *ret)
{
        struct vbd_err err = {0};
        json_t *info;
        int r = vbdctl_call(p->ctl, "info", NULL, 10000, &info, &err);

        if (r)
                return -EIO;
        *ret = (uint64_t)vbdctl_jint(info, "size");
        json_decref(info);
        return 0;
}

int mig_bridge_start(struct mig *m, uint64_t vbd_size, bool *ret_created)
{
        struct vbdctl *o = m->o;
        struct bridge_paths p;
        char msg[1024] = "", path[PATH_MAX], enc[MIG_TO_MAX], parts[PATH_MAX + 16];
        const char *spec = m->spec;
        bool rbd = !strncmp(spec, "rbd:", 4), created = false, killed;
        uint64_t tsize = 0;
        json_t *old, *j;
        pid_t pid = 0;
        int r;

        *ret_created = false;
        if (paths(m, &p) < 0)
                return vbdctl_fail(o, -ENAMETOOLONG, true,
                                   "%s: --ctl-dir is too long for the bridge's sockets",
                                   vbdctl_name(o->domid, o->devid));
        /* A bridge left from a migration that is over (the daemon said no
         * migration runs): stop it first. */
        if ((old = mig_bridge_get(m))) {
                if (json_is_true(json_object_get(old, "running")))
                        stop_pid((pid_t)vbdctl_jint(old, "pid"), p.sock, p.exit, &killed);
                json_decref(old);
        }
        snprintf(parts, sizeof(parts), "%s/partners", o->dir);
        if ((mkdir(parts, 0700) < 0 && errno != EEXIST) ||
            (mkdir(p.dir, 0700) < 0 && errno != EEXIST))
                return vbdctl_fail(o, -errno, true, "%s: %s", p.dir, strerror(errno));
        unlink(p.json);
        path[0] = '\0';
        if (!rbd) {
                r = file_create(spec, vbd_size, path, sizeof(path), msg, sizeof(msg));
                if (r < 0)
                        return vbdctl_fail(o, r, true, "%s: %s", spec, msg);
                created = r == 1;
        }
        r = bridge_run(m, &p, spec, &pid, msg, sizeof(msg));
        if (r < 0 && rbd && strstr(msg, "rbd: no image ")) {
                /* The image does not exist: make one of the VBD's size. */
                if ((r = rbd_create(spec, vbd_size, msg, sizeof(msg))) < 0)
                        return vbdctl_fail(o, r, true, "%s", msg);
                created = true;
                r = bridge_run(m, &p, spec, &pid, msg, sizeof(msg));
        }
        if (r < 0) {
                if (created && path[0])
                        unlink(path);
                return vbdctl_fail(o, r, true, "the bridge to %s did not start: %s", spec, msg);
        }
        if (bridge_size(&p, &tsize) < 0 || tsize < vbd_size) {
                stop_pid(pid, p.sock, p.exit, &killed);
                unlink(p.log);
                if (created && path[0])
                        unlink(path);
                if (!tsize)
                        return vbdctl_fail(o, -EIO, true, "the bridge to %s does not answer", spec);
                return vbdctl_fail(o, -ENOSPC, true,
                                   "%s: %llu bytes, smaller than the VBD's %llu: not migrating",
                                   spec, (unsigned long long)tsize, (unsigned long long)vbd_size);
        }
        /* nbd+unix:///?socket=PATH, PATH percent-encoded */
        enc[0] = '\0';
        for (const char *s = p.sock; *s; s++) {
                size_t n = strlen(enc);
                unsigned char c = (unsigned char)*s;

                if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    strchr("-._~/", c))
                        snprintf(enc + n, sizeof(enc) - n, "%c", c);
                else
                        snprintf(enc + n, sizeof(enc) - n, "%%%02X", c);
        }
        snprintf(m->to, sizeof(m->to), "nbd+unix:///?socket=%s", enc);
        j = json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:b,s:I,s:s}", "pid", (json_int_t)pid, "spec", spec,
                      "socket", p.sock, "uri", m->to, "control", p.ctl, "log", p.log, "created",
                      created, "size", (json_int_t)tsize, "state", "running");
        if (created && path[0]) /* removed again if the daemon refuses the start */
                json_object_set_new(j, "file", json_string(path));
        if (write_json(p.json, j) < 0) {
                json_decref(j);
                stop_pid(pid, p.sock, p.exit, &killed);
                return vbdctl_fail(o, -EIO, true, "%s: cannot write it", p.json);
        }
        json_decref(j);
        *ret_created = created;
        return 0;
}

/* ---- stopping ---- */

/* Wait until the daemon's mirror has closed its connection to the bridge. */
static void wait_closed(struct mig *m)
{
        char path[256];
        long long deadline = now_ms() + BRIDGE_CLOSED_MS;

        if (vbdctl_socket_path(m->o->dir, m->o->domid, m->o->devid, path, sizeof(path)) < 0)
                return;
        for (;;) {
                struct vbd_err err = {0};
                json_t *st = NULL;
                bool open;

                if (vbdctl_call(path, "migrate-status", NULL, 5000, &st, &err))
                        return;
                open = json_is_true(json_object_get(st, "partner_connected"));
                json_decref(st);
                if (!open || now_ms() > deadline)
                        return;
                usleep(20 * 1000);
        }
}

json_t *mig_bridge_stop(struct mig *m, const char *why)
{
        struct bridge_paths p;
        char how[64];
        bool killed = false;
        json_t *j;
        int st;

        if (paths(m, &p) < 0 || !(j = mig_bridge_get(m)))
                return NULL;
        if (strcmp(vbdctl_jstr(j, "state"), "running") != 0)
                return j; /* stopped (or gone) before */
        wait_closed(m);
        st = stop_pid((pid_t)vbdctl_jint(j, "pid"), p.sock, p.exit, &killed);
        describe_status(how, sizeof(how), st);
        json_object_set_new(j, "state", json_string("stopped"));
        json_object_set_new(j, "running", json_false());
        json_object_set_new(j, "stopped_by", json_string(why));
        json_object_set_new(j, "exit_status", st >= 0 ? json_integer(st) : json_null());
        json_object_set_new(j, "exit_code",
                            st >= 0 && WIFEXITED(st) ? json_integer(WEXITSTATUS(st)) : json_null());
        json_object_set_new(j, "killed", json_boolean(killed));
        json_object_set_new(j, "how", json_string(how));
        json_object_del(j, "running");
        if (!strcmp(why, "refused start") && json_is_string(json_object_get(j, "file")) &&
            unlink(vbdctl_jstr(j, "file")) == 0)
                json_object_set_new(j, "removed", json_true()); /* it was made for this */
        write_json(p.json, j);
        json_object_set_new(j, "running", json_false());
        unlink(p.sock);
        unlink(p.ctl);
        return j;
}

/* One line for people: "vbdd pid 123 serving SPEC: running" etc. */
void mig_bridge_describe(json_t *b, char *buf, size_t size)
{
        const char *state = vbdctl_jstr(b, "state");
        char how[64];
        json_t *es = json_object_get(b, "exit_status");

        describe_status(how, sizeof(how), json_is_integer(es) ? (int)json_integer_value(es) : -1);
        if (strcmp(state, "running") == 0)
                snprintf(buf, size, "vbdd pid %lld serving %s on %s: running",
                         vbdctl_jint(b, "pid"), vbdctl_jstr(b, "spec"), vbdctl_jstr(b, "socket"));
        else if (strcmp(state, "stopped") == 0)
                snprintf(buf, size, "vbdd pid %lld serving %s: stopped after the %s (%s%s)",
                         vbdctl_jint(b, "pid"), vbdctl_jstr(b, "spec"),
                         vbdctl_jstr(b, "stopped_by"), how,
                         json_is_true(json_object_get(b, "killed")) ? ", killed" : "");
        else
                snprintf(buf, size, "vbdd pid %lld serving %s: exited on its own (%s; see %s)",
                         vbdctl_jint(b, "pid"), vbdctl_jstr(b, "spec"), how, vbdctl_jstr(b, "log"));
}

void mig_bridge_attach(struct mig *m, json_t *st, const char *stop)
{
        json_t *b = stop ? mig_bridge_stop(m, stop) : mig_bridge_get(m);

        if (!b)
                return;
        /* Only the bridge of this migration (its socket is the partner). */
        if (strcmp(vbdctl_jstr(b, "uri"), vbdctl_jstr(st, "to")) != 0) {
                json_decref(b);
                return;
        }
        json_object_set_new(st, "target", json_string(vbdctl_jstr(b, "spec")));
        json_object_set_new(st, "bridge", b);
}
