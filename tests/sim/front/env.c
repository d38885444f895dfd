/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Simulation environment and toolstack: temp dir, simulated hypervisor,
 * xenstore server thread, domains, and VBDs (xenstore nodes + vbdd-sim).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xenstore.h>

#include "simfront.h"
#include "simfront-internal.h"
#include "simxen.h"
#include "simxs.h"
#include "vbd/time.h"

extern char **environ;

struct simfront_vbd {
        struct simfront_env *env;
        struct simfront_vbd *next;
        uint32_t domid, devid;
        pid_t pid;
        int status;
        bool exited;
        char be[256], fe[256], log[PATH_MAX];
};

struct simfront_env {
        char dir[3072];
        char xs_path[PATH_MAX];
        bool keep, made_dir;
        struct simxen *sx;
        struct simxs *xs;
        struct xs_handle *xsh;
        struct simfront_vbd *vbds;
        char err[512];
};

int simfront_env_seterr(struct simfront_env *env, int r, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(env->err, sizeof(env->err), fmt, ap);
        va_end(ap);
        return r;
}

const char *simfront_env_errmsg(struct simfront_env *env)
{
        return env->err;
}

const char *simfront_env_dir(struct simfront_env *env)
{
        return env->dir;
}

const char *simfront_env_xs_path(struct simfront_env *env)
{
        return env->xs_path;
}

struct simxen *simfront_env_xen(struct simfront_env *env)
{
        return env->sx;
}

struct xs_handle *simfront_env_xs(struct simfront_env *env)
{
        return env->xsh;
}

void simfront_sleep_ms(int ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Remove what the simulation put in entry name of directory at (files, and
 * directories such as the daemons' run/ for control sockets, a few levels
 * deep; symlinks are removed, never followed). */
static void rm_tree_at(int at, const char *name, int depth)
{
        struct stat st;
        DIR *d;
        int fd;
        struct dirent *de;

        if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return;
        if (!S_ISDIR(st.st_mode) || depth > 8) {
                (void)unlinkat(at, name, 0);
                return;
        }
        fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return;
        }
        while ((de = readdir(d))) {
                if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                        continue;
                rm_tree_at(dirfd(d), de->d_name, depth + 1);
        }
        closedir(d);
        (void)unlinkat(at, name, AT_REMOVEDIR);
}

static void rm_dir_flat(const char *dir)
{
        rm_tree_at(AT_FDCWD, dir, 0);
}

struct simfront_env *simfront_env_new(const struct simfront_env_opts *o)
{
        struct simfront_env_opts def = {0};
        struct simfront_env *env;
        int r;

        if (!o)
                o = &def;
        env = calloc(1, sizeof(*env));
        if (!env)
                return NULL;
        env->keep = o->keep;
        if (o->dir) {
                if (strlen(o->dir) + 32 > sizeof(env->dir)) {
                        free(env);
                        errno = ENAMETOOLONG;
                        return NULL;
                }
                strcpy(env->dir, o->dir);
                if (mkdir(env->dir, 0700) == 0)
                        env->made_dir = true;
                else if (errno != EEXIST)
                        goto fail_errno;
        } else {
                const char *tmp = getenv("TMPDIR");

                if (!tmp || !*tmp)
                        tmp = "/tmp";
                r = snprintf(env->dir, sizeof(env->dir), "%s/vbd-sim.XXXXXX", tmp);
                if (r < 0 || (size_t)r + 32 > sizeof(env->dir)) {
                        free(env);
                        errno = ENAMETOOLONG;
                        return NULL;
                }
                if (!mkdtemp(env->dir))
                        goto fail_errno;
                env->made_dir = true;
        }
        snprintf(env->xs_path, sizeof(env->xs_path), "%s/xenstored.sock", env->dir);

        env->sx = simxen_create(env->dir, o->nr_pages ? o->nr_pages : 16384);
        if (!env->sx)
                goto fail_errno;
        env->xs = simxs_start(env->xs_path);
        if (!env->xs)
                goto fail_errno;
        /* libxenstore finds the server through the environment. */
        if (setenv("XENSTORED_PATH", env->xs_path, 1) < 0)
                goto fail_errno;
        env->xsh = xs_open(XS_OPEN_SOCKETONLY);
        if (!env->xsh)
                goto fail_errno;
        return env;

fail_errno:
        r = errno;
        simfront_env_free(env);
        errno = r;
        return NULL;
}

void simfront_env_free(struct simfront_env *env)
{
        if (!env)
                return;
        while (env->vbds)
                simfront_vbd_free(env->vbds);
        if (env->xsh)
                xs_close(env->xsh);
        simxs_stop(env->xs);
        simxen_close(env->sx);
        if (env->made_dir && !env->keep)
                rm_dir_flat(env->dir);
        free(env);
}

/* Write path=value; perms may be NULL. */
static int xs_put(struct simfront_env *env, xs_transaction_t t, const char *path, const char *value)
{
        if (!xs_write(env->xsh, t, path, value, strlen(value)))
                return simfront_env_seterr(env, -errno, "xenstore write %s: %s", path,
                                           strerror(errno));
        return 0;
}

static int xs_putf(struct simfront_env *env, xs_transaction_t t, const char *dir, const char *key,
                   const char *fmt, ...)
{
        char path[512], value[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(value, sizeof(value), fmt, ap);
        va_end(ap);
        snprintf(path, sizeof(path), "%s/%s", dir, key);
        return xs_put(env, t, path, value);
}

/* perms: owner (with "others" access none) + optional second domain. */
static int xs_perms(struct simfront_env *env, xs_transaction_t t, const char *path, uint32_t owner,
                    int reader, unsigned reader_perm)
{
        struct xs_permissions p[2] = {
            {.id = owner, .perms = XS_PERM_NONE},
            {.id = reader < 0 ? 0 : (unsigned)reader, .perms = reader_perm},
        };

        if (!xs_set_permissions(env->xsh, t, path, p, reader < 0 ? 1 : 2))
                return simfront_env_seterr(env, -errno, "xenstore set perms %s: %s", path,
                                           strerror(errno));
        return 0;
}

int simfront_env_domain_create(struct simfront_env *env, uint32_t domid)
{
        char dom[64], dev[96];
        xs_transaction_t t;
        int r;

        r = simxen_domain_create(env->sx, domid);
        if (r < 0)
                return simfront_env_seterr(env, r, "simxen_domain_create %u: %s", domid,
                                           strerror(-r));
        snprintf(dom, sizeof(dom), "/local/domain/%u", domid);
        snprintf(dev, sizeof(dev), "%s/device", dom);
        for (;;) {
                t = xs_transaction_start(env->xsh);
                if (t == XBT_NULL)
                        return simfront_env_seterr(env, -errno, "xenstore transaction: %s",
                                                   strerror(errno));
                if ((r = xs_putf(env, t, dom, "domid", "%u", domid)) < 0 ||
                    (r = xs_putf(env, t, dom, "name", "guest%u", domid)) < 0 ||
                    (r = xs_perms(env, t, dom, 0, domid, XS_PERM_READ)) < 0 ||
                    (r = xs_put(env, t, dev, "")) < 0 ||
                    (r = xs_perms(env, t, dev, domid, 0, XS_PERM_READ)) < 0) {
                        xs_transaction_end(env->xsh, t, true);
                        return r;
                }
                if (xs_transaction_end(env->xsh, t, false))
                        return 0;
                if (errno != EAGAIN)
                        return simfront_env_seterr(env, -errno, "xenstore commit: %s",
                                                   strerror(errno));
        }
}

int simfront_env_domain_destroy(struct simfront_env *env, uint32_t domid)
{
        char arg[16];
        char *res;
        int r;

        r = simxen_domain_destroy(env->sx, domid);
        if (r < 0)
                return simfront_env_seterr(env, r, "simxen_domain_destroy %u: %s", domid,
                                           strerror(-r));
        snprintf(arg, sizeof(arg), "%u", domid);
        res = xs_control_command(env->xsh, "sim-release-domain", arg, strlen(arg) + 1);
        if (!res)
                return simfront_env_seterr(env, -errno, "sim-release-domain %u: %s", domid,
                                           strerror(errno));
        free(res);
        return 0;
}

static char *exe_dir(void)
{
        char buf[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
        char *slash;

        if (n <= 0)
                return NULL;
        buf[n] = 0;
        slash = strrchr(buf, '/');
        if (!slash)
                return NULL;
        *slash = 0;
        return strdup(buf);
}

char *simfront_find_vbdd(const char *explicit_path)
{
        const char *env = getenv("VBD_SIM_VBDD");
        char *dir, *p = NULL;

        if (explicit_path && *explicit_path)
                return strdup(explicit_path);
        if (env && *env)
                return strdup(env);
        dir = exe_dir();
        if (!dir) {
                errno = ENOENT;
                return NULL;
        }
        if (asprintf(&p, "%s/vbdd-sim", dir) >= 0 && access(p, X_OK) == 0)
                goto out;
        free(p);
        p = NULL;
        if (asprintf(&p, "%s/../vbdd-sim", dir) >= 0 && access(p, X_OK) == 0)
                goto out;
        free(p);
        p = NULL;
        errno = ENOENT;
out:
        free(dir);
        return p;
}

/* environ with VBD_SIM_DIR and XENSTORED_PATH replaced; malloc'd strings. */
static char **child_env(struct simfront_env *env)
{
        size_t n = 0, i, j = 0;
        char **e;

        while (environ[n])
                n++;
        e = calloc(n + 3, sizeof(*e));
        if (!e)
                return NULL;
        for (i = 0; i < n; i++) {
                if (!strncmp(environ[i], "VBD_SIM_DIR=", 12) ||
                    !strncmp(environ[i], "XENSTORED_PATH=", 15))
                        continue;
                e[j++] = environ[i];
        }
        if (asprintf(&e[j++], "VBD_SIM_DIR=%s", env->dir) < 0 ||
            asprintf(&e[j++], "XENSTORED_PATH=%s", env->xs_path) < 0) {
                free(e);
                return NULL;
        }
        e[j] = NULL;
        return e;
}

static int spawn_vbdd(struct simfront_vbd *vbd, const struct simfront_vbd_opts *o, const char *mode,
                      const char *type)
{
        struct simfront_env *env = vbd->env;
        posix_spawn_file_actions_t fa;
        char *path = simfront_find_vbdd(o->vbdd);
        char domid[16], devid[16];
        const char *argv[64];
        char **envp = NULL;
        size_t n = 0;
        int r;

        if (!path)
                return simfront_env_seterr(env, -ENOENT,
                                           "vbdd-sim not found (use --vbdd PATH or "
                                           "VBD_SIM_VBDD)");
        if (access(path, X_OK) < 0) {
                r = -errno;
                simfront_env_seterr(env, r, "vbdd-sim '%s': %s", path, strerror(errno));
                free(path);
                return r;
        }
        snprintf(domid, sizeof(domid), "%u", vbd->domid);
        snprintf(devid, sizeof(devid), "%u", vbd->devid);
        argv[n++] = path;
        argv[n++] = "--domid";
        argv[n++] = domid;
        argv[n++] = "--devid";
        argv[n++] = devid;
        argv[n++] = "--image";
        argv[n++] = o->image;
        argv[n++] = "--mode";
        argv[n++] = mode;
        argv[n++] = "--type";
        argv[n++] = type;
        for (size_t i = 0; o->extra_args && o->extra_args[i] && n < 63; i++)
                argv[n++] = o->extra_args[i];
        argv[n] = NULL;

        envp = child_env(env);
        if (!envp) {
                free(path);
                return simfront_env_seterr(env, -ENOMEM, "out of memory");
        }
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, vbd->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, 2, 1);
#ifdef __GLIBC__
        posix_spawn_file_actions_addclosefrom_np(&fa, 3);
#endif
        r = posix_spawn(&vbd->pid, path, &fa, NULL, (char *const *)argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        /* The two strings we added are the last ones. */
        for (n = 0; envp[n]; n++)
                ;
        free(envp[n - 1]);
        free(envp[n - 2]);
        free(envp);
        if (r) {
                vbd->pid = 0;
                simfront_env_seterr(env, -r, "spawn '%s': %s", path, strerror(r));
                free(path);
                return -r;
        }
        free(path);
        return 0;
}

int simfront_vbd_add(struct simfront_env *env, const struct simfront_vbd_opts *o,
                     struct simfront_vbd **ret_vbd)
{
        const char *mode = o->mode ? o->mode : "w";
        const char *type = o->type ? o->type : "vbd3";
        struct simfront_vbd *vbd;
        xs_transaction_t t;
        int r;

        if (!o->image)
                return simfront_env_seterr(env, -EINVAL, "no image");
        if (strcmp(mode, "w") && strcmp(mode, "r"))
                return simfront_env_seterr(env, -EINVAL, "mode must be r or w, not '%s'", mode);
        vbd = calloc(1, sizeof(*vbd));
        if (!vbd)
                return -ENOMEM;
        vbd->env = env;
        vbd->domid = o->domid;
        vbd->devid = o->devid;
        snprintf(vbd->be, sizeof(vbd->be), "/local/domain/0/backend/%s/%u/%u", type, o->domid,
                 o->devid);
        snprintf(vbd->fe, sizeof(vbd->fe), "/local/domain/%u/device/vbd/%u", o->domid, o->devid);
        snprintf(vbd->log, sizeof(vbd->log), "%s/vbdd-%u-%u.log", env->dir, o->domid, o->devid);

        for (;;) {
                t = xs_transaction_start(env->xsh);
                if (t == XBT_NULL) {
                        r = simfront_env_seterr(env, -errno, "xenstore transaction: %s",
                                                strerror(errno));
                        goto fail;
                }
                if ((r = xs_putf(env, t, vbd->be, "frontend", "%s", vbd->fe)) < 0 ||
                    (r = xs_perms(env, t, vbd->be, 0, o->domid, XS_PERM_READ)) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "frontend-id", "%u", o->domid)) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "online", "1")) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "mode", "%s", mode)) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "params", "%s", o->image)) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "type", "%s", type)) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "device-type", "disk")) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "dev", "xvda")) < 0 ||
                    (r = xs_putf(env, t, vbd->be, "state", "1")) < 0 ||
                    (r = xs_putf(env, t, vbd->fe, "backend", "%s", vbd->be)) < 0 ||
                    (r = xs_perms(env, t, vbd->fe, o->domid, 0, XS_PERM_READ)) < 0 ||
                    (r = xs_putf(env, t, vbd->fe, "backend-id", "0")) < 0 ||
                    (r = xs_putf(env, t, vbd->fe, "virtual-device", "%u", o->devid)) < 0 ||
                    (r = xs_putf(env, t, vbd->fe, "device-type", "disk")) < 0 ||
                    (r = xs_putf(env, t, vbd->fe, "state", "1")) < 0) {
                        xs_transaction_end(env->xsh, t, true);
                        goto fail;
                }
                if (xs_transaction_end(env->xsh, t, false))
                        break;
                if (errno != EAGAIN) {
                        r = simfront_env_seterr(env, -errno, "xenstore commit: %s",
                                                strerror(errno));
                        goto fail;
                }
        }

        if (!o->no_spawn) {
                r = spawn_vbdd(vbd, o, mode, type);
                if (r < 0)
                        goto fail;
        }
        vbd->next = env->vbds;
        env->vbds = vbd;
        *ret_vbd = vbd;
        return 0;
fail:
        free(vbd);
        return r;
}

void simfront_vbd_free(struct simfront_vbd *vbd)
{
        struct simfront_vbd **pp;

        if (!vbd)
                return;
        if (vbd->pid > 0 && !vbd->exited) {
                (void)kill(vbd->pid, SIGKILL);
                (void)simfront_vbd_wait(vbd, -1, NULL);
        }
        for (pp = &vbd->env->vbds; *pp; pp = &(*pp)->next)
                if (*pp == vbd) {
                        *pp = vbd->next;
                        break;
                }
        free(vbd);
}

const char *simfront_vbd_backend_path(struct simfront_vbd *vbd)
{
        return vbd->be;
}

const char *simfront_vbd_frontend_path(struct simfront_vbd *vbd)
{
        return vbd->fe;
}

const char *simfront_vbd_log_path(struct simfront_vbd *vbd)
{
        return vbd->log;
}

pid_t simfront_vbd_pid(struct simfront_vbd *vbd)
{
        return vbd->exited ? 0 : vbd->pid;
}

int simfront_vbd_cpu_ns(struct simfront_vbd *vbd, uint64_t *ret_ns)
{
        char path[64], buf[1024], *p;
        unsigned long long utime, stime;
        long tck = sysconf(_SC_CLK_TCK);
        ssize_t n;
        int fd;

        if (vbd->exited || vbd->pid <= 0)
                return -ESRCH;
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)vbd->pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? -ESRCH : -errno;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return -EIO;
        buf[n] = 0;
        /* comm may hold spaces and parentheses: fields start after the last ')'. */
        p = strrchr(buf, ')');
        if (!p || tck <= 0)
                return -EIO;
        /* state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
         * cmajflt utime stime */
        if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                   &stime) != 2)
                return -EIO;
        *ret_ns = (uint64_t)(utime + stime) * (1000000000ull / (unsigned long long)tck);
        return 0;
}

char *simfront_vbd_read_log(struct simfront_vbd *vbd)
{
        FILE *f = fopen(vbd->log, "r");
        char *buf = NULL;
        size_t len = 0, n;

        if (!f) {
                if (errno == ENOENT)
                        return strdup("");
                return NULL;
        }
        for (;;) {
                char *nb = realloc(buf, len + 4097);

                if (!nb) {
                        free(buf);
                        fclose(f);
                        errno = ENOMEM;
                        return NULL;
                }
                buf = nb;
                n = fread(buf + len, 1, 4096, f);
                len += n;
                if (n < 4096)
                        break;
        }
        fclose(f);
        buf[len] = 0;
        return buf;
}

int simfront_vbd_detach(struct simfront_vbd *vbd, enum simfront_detach how)
{
        struct simfront_env *env = vbd->env;
        int r;

        if (how == SIMFRONT_DETACH_REMOVE) {
                if (!xs_rm(env->xsh, XBT_NULL, vbd->be))
                        return simfront_env_seterr(env, -errno, "xenstore rm %s: %s", vbd->be,
                                                   strerror(errno));
                return 0;
        }
        r = xs_putf(env, XBT_NULL, vbd->be, "online", "0");
        if (r < 0)
                return r;
        return xs_putf(env, XBT_NULL, vbd->be, "state", "5");
}

int simfront_vbd_remove_nodes(struct simfront_vbd *vbd)
{
        struct simfront_env *env = vbd->env;

        if (!xs_rm(env->xsh, XBT_NULL, vbd->be) && errno != ENOENT)
                return simfront_env_seterr(env, -errno, "xenstore rm %s: %s", vbd->be,
                                           strerror(errno));
        if (!xs_rm(env->xsh, XBT_NULL, vbd->fe) && errno != ENOENT)
                return simfront_env_seterr(env, -errno, "xenstore rm %s: %s", vbd->fe,
                                           strerror(errno));
        return 0;
}

int simfront_vbd_running(struct simfront_vbd *vbd)
{
        pid_t p;
        int st;

        if (vbd->pid <= 0)
                return -ECHILD;
        if (vbd->exited)
                return 0;
        p = waitpid(vbd->pid, &st, WNOHANG);
        if (p < 0)
                return -errno;
        if (p == 0)
                return 1;
        vbd->exited = true;
        vbd->status = st;
        return 0;
}

int simfront_vbd_wait(struct simfront_vbd *vbd, int timeout_ms, int *ret_status)
{
        uint64_t deadline = vbd_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000000u;
        int r;

        for (;;) {
                r = simfront_vbd_running(vbd);
                if (r < 0)
                        return r;
                if (r == 0) {
                        if (ret_status)
                                *ret_status = vbd->status;
                        return 0;
                }
                if (timeout_ms >= 0 && vbd_now_ns() >= deadline)
                        return -ETIMEDOUT;
                simfront_sleep_ms(5);
        }
}

int simfront_vbd_kill(struct simfront_vbd *vbd, int sig)
{
        if (vbd->pid <= 0 || vbd->exited)
                return -ESRCH;
        return kill(vbd->pid, sig) < 0 ? -errno : 0;
}

int simfront_vbd_read_backend(struct simfront_vbd *vbd, const char *key, long long *ret)
{
        char path[512], *v, *end;
        unsigned len;
        long long x;

        snprintf(path, sizeof(path), "%s/%s", vbd->be, key);
        v = xs_read(vbd->env->xsh, XBT_NULL, path, &len);
        if (!v)
                return -errno;
        errno = 0;
        x = strtoll(v, &end, 10);
        if (errno || end == v || *end) {
                free(v);
                return -EINVAL;
        }
        free(v);
        *ret = x;
        return 0;
}

int simfront_vbd_wait_state(struct simfront_vbd *vbd, int state, int timeout_ms)
{
        uint64_t deadline = vbd_now_ns() + (uint64_t)timeout_ms * 1000000u;
        long long s = -1;

        for (;;) {
                if (simfront_vbd_read_backend(vbd, "state", &s) == 0 && s == state)
                        return 0;
                if (vbd->pid > 0 && simfront_vbd_running(vbd) == 0)
                        return simfront_env_seterr(vbd->env, -ECHILD,
                                                   "vbdd exited while waiting for backend "
                                                   "state %d (state %lld)",
                                                   state, s);
                if (vbd_now_ns() >= deadline)
                        return simfront_env_seterr(vbd->env, -ETIMEDOUT,
                                                   "timeout waiting for backend state %d "
                                                   "(state %lld)",
                                                   state, s);
                simfront_sleep_ms(5);
        }
}
