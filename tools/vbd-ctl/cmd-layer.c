/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl layer: application layers, qcow2 images stacked over a base.
 *
 *   create --base BASE      LAYER, a clone of BASE, mounted read-write with
 *     --from DIR|--script F the mount code (cmd-mount.c); DIR copied in
 *     -o LAYER              (cp -a) or F run in it; unmounted, flushed,
 *                           checked; any failure removes LAYER
 *   clone LAYER -o GUEST    a new, empty qcow2 GUEST whose backing file is
 *                           LAYER (the drivers' own qcow2 create()); many
 *                           guests share one layer
 *   rebase GUEST --to NEW   GUEST keeps its clusters, the blocks it never
 *                           wrote now read from NEW: a header rewrite of
 *                           the backing file name and format, under the
 *                           write lock (refused while anybody uses GUEST)
 *   flatten GUEST [-o OUT]  the whole chain into one standalone qcow2 (the
 *                           backup job of an export-only vbdd; in place by
 *                           default: a new file renamed over GUEST)
 *   info IMAGE              the chain: file, format, sizes, depth
 *   sum IMAGE               the fingerprint of the chain below IMAGE (its
 *                           backing files' formats, sizes and SHA-256):
 *                           what a shallow migration checks on both hosts
 *
 * Depth: the files in an image's chain, the image itself included (a
 * standalone base is at depth 1, a clone of it at 2), numbered as QEMU's
 * qemu:allocation-depth numbers the layers.  create, clone and rebase refuse
 * to make a chain deeper than --max-depth (30 by default, XenServer's limit) and
 * say to flatten; info warns above it.
 *
 * Backing file names: relative to GUEST's directory when the layer lies
 * below that directory (a tree of layers and guests can move as a whole),
 * else absolute; the layer's directory is resolved, its file name kept (a
 * symlink to the current version of a layer stays one).  QEMU resolves
 * both the same way.  Formats are stored, never left to probing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nettle/sha2.h>

#include "lock.h"
#include "qcow2.h"
#include "util/parse.h"
#include "vbd-ctl.h"
#include "vbd/driver.h"
#include "vbd/endian.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define LAYER_MAX_DEPTH 30  /* the default limit */
#define CHAIN_MAX       256 /* files followed before calling it a loop */

struct layer_file {
        char path[PATH_MAX]; /* as opened: the backing name resolved */
        char fmt[8];         /* "qcow2" or "raw" */
        uint64_t vsize;      /* virtual size, bytes */
        uint64_t disk;       /* allocated on disk, bytes */
        dev_t dev;
        ino_t ino;
        char backing[QCOW2_MAX_BACKING_NAME + 1]; /* as stored; "" for none */
        char backing_fmt[32];                     /* as stored; "" for none */
};

struct chain {
        struct layer_file *f;
        unsigned n;
        char why[2 * PATH_MAX + 2048]; /* set when the chain is broken */
};

struct args {
        const char *output, *to, *size, *max_depth;
        const char *base, *from, *script, *fstype; /* create */
        uint32_t limit, partition;
        uint64_t vsize;
};

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;

        switch (c) {
        case 'o':
                a->output = arg;
                break;
        case 'T':
                a->to = arg;
                break;
        case 'S':
                if (vbd_parse_size(arg, &a->vsize) < 0 || a->vsize == 0)
                        return vbdctl_usage_error(o, "--size: a size: %s", arg);
                a->size = arg;
                break;
        case 'M':
                if (vbd_parse_u32(arg, CHAIN_MAX, &a->limit) < 0 || a->limit < 2)
                        return vbdctl_usage_error(o, "--max-depth: 2 to %u: %s", CHAIN_MAX, arg);
                a->max_depth = arg;
                break;
        case 'B':
                a->base = arg;
                break;
        case 'F':
                a->from = arg;
                break;
        case 'X':
                a->script = arg;
                break;
        case 'P':
                if (vbd_parse_u32(arg, 4096, &a->partition) < 0 || !a->partition)
                        return vbdctl_usage_error(o, "--partition: a number from 1: %s", arg);
                break;
        case 'Y':
                if (!vbdctl_fstype_ok(arg))
                        return vbdctl_usage_error(o, "--fstype: a filesystem type: %s", arg);
                a->fstype = arg;
                break;
        }
        return 0;
}

/* A lock refusal, without vbdd's advice about its locking option. */
static const char *lock_msg(struct vbd_err *err)
{
        char *p = strstr(err->msg, " (locking=off overrides)");

        if (p)
                *p = '\0';
        return err->msg;
}

/* ---- reading a chain ---- */

/* Read the header cluster of the qcow2 file fd (size bytes) into *ret_buf
 * (malloc()ed, *ret_len bytes) and parse it. */
static int read_header(int fd, uint64_t size, struct qcow2_header *h, uint8_t **ret_buf,
                       size_t *ret_len, struct vbd_err *err)
{
        uint8_t first[QCOW2_V3_HEADER_LEN];
        uint32_t bits;
        size_t len;
        uint8_t *buf;
        ssize_t n;

        n = pread(fd, first, sizeof(first), 0);
        if (n < 0)
                return vbd_err_set(err, -errno, "read: %s", strerror(errno));
        if ((size_t)n < 24)
                return vbd_err_set(err, -EINVAL, "too short for a qcow2 header");
        bits = vbd_get_be32(first + 20);
        if (bits < QCOW2_MIN_CLUSTER_BITS || bits > QCOW2_MAX_CLUSTER_BITS)
                return vbd_err_set(err, -EINVAL, "qcow2: cluster_bits %u", bits);
        len = (size_t)1 << bits;
        if (len > size)
                len = (size_t)size;
        buf = calloc(1, (size_t)1 << bits);
        if (!buf)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        n = pread(fd, buf, len, 0);
        if (n < 0 || (size_t)n != len) {
                free(buf);
                return vbd_err_set(err, n < 0 ? -errno : -EIO, "read: %s",
                                   n < 0 ? strerror(errno) : "short read");
        }
        if (qcow2_header_parse(buf, len, size, h, err) < 0) {
                free(buf);
                return err->code;
        }
        *ret_buf = buf;
        *ret_len = len;
        return 0;
}

/* Look at one file: fmt NULL probes the magic. */
static int probe(const char *path, const char *fmt, struct layer_file *lf, struct vbd_err *err)
{
        uint8_t magic[4] = {0};
        struct qcow2_header h;
        struct stat st;
        uint8_t *buf = NULL;
        size_t len, plen = strlen(path);
        off_t end;
        int fd, r = 0;

        memset(lf, 0, sizeof(*lf));
        if (plen >= sizeof(lf->path))
                return vbd_err_set(err, -ENAMETOOLONG, "%s: path too long", path);
        memcpy(lf->path, path, plen + 1);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return vbd_err_set(err, -errno, "%s: %s", path, strerror(errno));
        if (fstat(fd, &st) < 0 || (end = lseek(fd, 0, SEEK_END)) < 0) {
                r = vbd_err_set(err, -errno, "%s: %s", path, strerror(errno));
                goto out;
        }
        if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
                r = vbd_err_set(err, -EINVAL, "%s: not a regular file or block device", path);
                goto out;
        }
        lf->dev = st.st_dev;
        lf->ino = st.st_ino;
        lf->disk = (uint64_t)st.st_blocks * 512;
        if (!fmt) {
                if (pread(fd, magic, sizeof(magic), 0) < 0) {
                        r = vbd_err_set(err, -errno, "%s: read: %s", path, strerror(errno));
                        goto out;
                }
                fmt = vbd_get_be32(magic) == QCOW2_MAGIC ? "qcow2" : "raw";
        }
        if (strcmp(fmt, "raw") == 0) {
                snprintf(lf->fmt, sizeof(lf->fmt), "raw");
                lf->vsize = (uint64_t)end;
                goto out;
        }
        if (strcmp(fmt, "qcow2") != 0) {
                r = vbd_err_set(err, -ENOTSUP, "%s: format '%s' (raw or qcow2)", path, fmt);
                goto out;
        }
        snprintf(lf->fmt, sizeof(lf->fmt), "qcow2");
        r = read_header(fd, (uint64_t)end, &h, &buf, &len, err);
        if (r < 0) {
                char m[sizeof(err->msg)];

                snprintf(m, sizeof(m), "%s", err->msg);
                r = vbd_err_set(err, r, "%s: %s", path, m);
                goto out;
        }
        lf->vsize = h.size;
        snprintf(lf->backing, sizeof(lf->backing), "%s", h.backing_file);
        snprintf(lf->backing_fmt, sizeof(lf->backing_fmt), "%s", h.backing_fmt);
out:
        free(buf);
        close(fd);
        return r;
}

/* Where the backing file named name of the image at path is (QEMU's rule:
 * a relative name is relative to the image's directory). */
static int resolve(const char *path, const char *name, char *buf, size_t size)
{
        char tmp[PATH_MAX];
        int n;

        snprintf(tmp, sizeof(tmp), "%s", path);
        if (name[0] == '/')
                n = snprintf(buf, size, "%s", name);
        else if (!strcmp(dirname(tmp), "."))
                n = snprintf(buf, size, "%s", name);
        else
                n = snprintf(buf, size, "%s/%s", tmp, name);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/*
 * The chain from path down: 0 with c->f[0, c->n) (c->why set when a file
 * below could not be read: the chain is broken there), or -errno + err when
 * path itself cannot be read.  c->f is malloc()ed.
 */
static int chain_load(const char *path, struct chain *c, struct vbd_err *err)
{
        char next[PATH_MAX];
        int r;

        memset(c, 0, sizeof(*c));
        c->f = calloc(CHAIN_MAX, sizeof(*c->f));
        if (!c->f)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        r = probe(path, NULL, &c->f[0], err);
        if (r < 0) {
                free(c->f);
                c->f = NULL;
                return r;
        }
        c->n = 1;
        while (c->f[c->n - 1].backing[0]) {
                struct layer_file *up = &c->f[c->n - 1];
                struct vbd_err e = {0};

                if (c->n == CHAIN_MAX) {
                        snprintf(c->why, sizeof(c->why), "more than %u files: a loop?", CHAIN_MAX);
                        break;
                }
                for (unsigned i = 0; i + 1 < c->n; i++)
                        if (c->f[i].dev == up->dev && c->f[i].ino == up->ino) {
                                snprintf(c->why, sizeof(c->why), "%s is its own backing file",
                                         up->path);
                                return 0;
                        }
                if (resolve(up->path, up->backing, next, sizeof(next)) < 0) {
                        snprintf(c->why, sizeof(c->why), "%s: backing file path too long",
                                 up->path);
                        break;
                }
                if (probe(next, up->backing_fmt[0] ? up->backing_fmt : NULL, &c->f[c->n], &e) < 0) {
                        snprintf(c->why, sizeof(c->why), "%s: backing file '%s': %s", up->path,
                                 up->backing, e.msg);
                        break;
                }
                c->n++;
        }
        return 0;
}

/* The chain of path, complete: 0 or an exit code (reported). */
static int chain_need(struct vbdctl *o, const char *path, struct chain *c)
{
        struct vbd_err err = {0};

        if (chain_load(path, c, &err) < 0)
                return vbdctl_fail(o, err.code, false, "%s", err.msg);
        if (c->why[0]) {
                int ex = vbdctl_fail(o, -ENOENT, false, "%s: broken chain: %s", path, c->why);

                free(c->f);
                c->f = NULL;
                return ex;
        }
        return 0;
}

static void chain_free(struct chain *c)
{
        free(c->f);
        c->f = NULL;
}

/* The name an image at img stores for its backing file layer (see the top). */
static int backing_name(struct vbdctl *o, const char *img, const char *layer, char *buf,
                        size_t size)
{
        char t1[PATH_MAX], t2[PATH_MAX], idir[PATH_MAX], ldir[PATH_MAX];
        const char *base;
        size_t l;
        int n;

        snprintf(t1, sizeof(t1), "%s", img);
        snprintf(t2, sizeof(t2), "%s", layer);
        if (!realpath(dirname(t1), idir))
                return vbdctl_fail(o, -errno, false, "%s: %s", img, strerror(errno));
        if (!realpath(dirname(t2), ldir))
                return vbdctl_fail(o, -errno, false, "%s: %s", layer, strerror(errno));
        snprintf(t2, sizeof(t2), "%s", layer);
        base = basename(t2);
        l = strlen(idir);
        if (!strcmp(ldir, idir))
                n = snprintf(buf, size, "%s", base);
        else if (strcmp(idir, "/") && !strncmp(ldir, idir, l) && ldir[l] == '/')
                n = snprintf(buf, size, "%s/%s", ldir + l + 1, base);
        else
                n = snprintf(buf, size, "%s%s%s", ldir, strcmp(ldir, "/") ? "/" : "", base);
        if (n < 0 || (size_t)n >= size || (size_t)n > QCOW2_MAX_BACKING_NAME)
                return vbdctl_fail(o, -ENAMETOOLONG, false, "%s: backing file name too long",
                                   layer);
        return 0;
}

static int too_deep(struct vbdctl *o, const char *what, const char *layer, unsigned depth,
                    unsigned limit)
{
        return vbdctl_fail(o, -ELOOP, false,
                           "%s would be at depth %u, over the limit of %u (--max-depth): flatten "
                           "%s first (vbd-ctl layer flatten %s -o NEW) and use NEW",
                           what, depth + 1, limit, layer, layer);
}

/* Positional argument first, then the options; "-o" is --output. */
static int parse(struct vbdctl *o, int argc, char **argv, const struct option *extra,
                 struct args *a, const char **ret_pos)
{
        *ret_pos = NULL;
        if (argc > 1 && argv[1][0] != '-') {
                *ret_pos = argv[1];
                argv[1] = argv[0];
                argv++;
                argc--;
        }
        for (int i = 1; i < argc; i++)
                if (!strcmp(argv[i], "-o"))
                        argv[i] = (char *)"--output";
        a->limit = LAYER_MAX_DEPTH;
        return vbdctl_parse(o, argc, argv, extra, opt, a);
}

/* ---- clone ---- */

/*
 * Create output, an empty qcow2 over layer (whose chain *ch is loaded; the
 * caller frees it).  0, with the backing file name in name and the virtual
 * size in *ret_size, or an exit code (reported).
 */
static int clone_make(struct vbdctl *o, const char *layer, const char *output, const struct args *a,
                      struct chain *ch, char *name, size_t name_size, uint64_t *ret_size)
{
        struct vbd_create c = {0};
        struct vbd_err err = {0};
        int r;

        if ((r = chain_need(o, layer, ch)))
                return r;
        if (ch->n + 1 > a->limit)
                return too_deep(o, output, layer, ch->n, a->limit);
        c.size = a->size ? a->vsize : vbd_align_up(ch->f[0].vsize, 512);
        if (c.size < ch->f[0].vsize)
                return vbdctl_fail(o, -EINVAL, false,
                                   "--size %s is smaller than the layer (%" PRIu64 " bytes)",
                                   a->size, ch->f[0].vsize);
        if ((r = backing_name(o, output, layer, name, name_size)))
                return r;
        c.path = output;
        c.backing = name;
        c.backing_fmt = ch->f[0].fmt;
        if (vbd_image_create("qcow2", &c, &err) < 0)
                return vbdctl_fail(o, err.code, false, "%s", err.msg);
        *ret_size = c.size;
        return 0;
}

static int layer_clone(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"output", required_argument, NULL, 'o'},
            {"size", required_argument, NULL, 'S'},
            {"max-depth", required_argument, NULL, 'M'},
            {},
        };
        struct args a = {0};
        struct chain ch = {0};
        char name[PATH_MAX];
        const char *layer;
        uint64_t size = 0;
        int r;

        if ((r = parse(o, argc, argv, extra, &a, &layer)))
                return r;
        if (!layer || !a.output)
                return vbdctl_usage_error(o, "layer clone LAYER -o GUEST.qcow2");
        if ((r = clone_make(o, layer, a.output, &a, &ch, name, sizeof(name), &size)))
                goto out;
        if (o->json)
                vbdctl_print_json(json_pack("{s:b,s:s,s:s,s:s,s:I,s:i}", "ok", 1, "image", a.output,
                                            "backing", name, "backing_format", ch.f[0].fmt,
                                            "virtual_size", (json_int_t)size, "depth",
                                            (int)ch.n + 1));
        else
                printf("%s: a clone of %s (backing file %s, %s), depth %u\n", a.output, layer, name,
                       ch.f[0].fmt, ch.n + 1);
out:
        chain_free(&ch);
        return r;
}

/* ---- create ---- */

/* A signal that ends layer create (SIGINT, SIGTERM, SIGHUP): the child's
 * process group gets SIGTERM, everything is undone. */
static volatile sig_atomic_t create_signal;
static volatile pid_t create_child;

static void create_on_signal(int sig)
{
        int e = errno;

        create_signal = sig;
        if (create_child > 0)
                kill(-create_child, SIGTERM);
        errno = e;
}

static long long mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "exited with status 3", "was killed by SIGKILL" */
static void describe_status(int status, char *buf, size_t size)
{
        if (WIFEXITED(status))
                snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                snprintf(buf, size, "was killed by SIG%s",
                         sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
        else
                snprintf(buf, size, "ended (status %#x)", (unsigned)status);
}

/*
 * Run argv in a process group of its own, cwd dir, stdin /dev/null (stdout
 * on our stderr with --json), env VBD_LAYER_ROOT=root; whatever it leaves
 * running in its group is ended when it exits.  Returns its wait status,
 * or -errno.
 */
static int create_run(struct vbdctl *o, const char *const *argv, const char *dir, const char *root)
{
        int status = 0;
        pid_t pid = fork();

        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int null = open("/dev/null", O_RDONLY);

                setpgid(0, 0);
                signal(SIGINT, SIG_DFL);
                signal(SIGTERM, SIG_DFL);
                signal(SIGHUP, SIG_DFL);
                if (null >= 0)
                        dup2(null, 0);
                if (o->json)
                        dup2(2, 1);
                if (setenv("VBD_LAYER_ROOT", root, 1) < 0 || chdir(dir) < 0) {
                        fprintf(stderr, "vbd-ctl layer: %s: %s\n", dir, strerror(errno));
                        _exit(126);
                }
                execv(argv[0], (char *const *)argv);
                fprintf(stderr, "vbd-ctl layer: cannot run %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        setpgid(pid, pid); /* as the child does: whichever runs first */
        create_child = pid;
        if (create_signal) /* before create_child was set */
                kill(-pid, SIGTERM);
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        status = -errno;
                        break;
                }
        create_child = 0;
        /* what it started in the background, still in its group */
        for (int i = 0; i < 200 && kill(-pid, 0) == 0; i++) {
                kill(-pid, i < 100 ? SIGTERM : SIGKILL);
                usleep(20 * 1000);
        }
        return status;
}

/*
 * cp -a DIR/. MNT: one cp for the whole tree (modes, owners, times,
 * symlinks, hard links, sparse files, xattrs where the filesystem takes
 * them), then the root of the layer's filesystem gets its own owner and
 * mode back (cp gives it DIR's).
 */
static int create_copy(struct vbdctl *o, const char *from, const char *mnt, char *msg, size_t size)
{
        char dot[PATH_MAX + 4];
        const char *argv[] = {"/bin/cp", "-a", "--", dot, mnt, NULL};
        struct stat root;
        int st;

        snprintf(dot, sizeof(dot), "%s/.", from);
        if (access(argv[0], X_OK) < 0)
                argv[0] = "/usr/bin/cp";
        if (stat(mnt, &root) < 0) {
                snprintf(msg, size, "%s: %s", mnt, strerror(errno));
                return -EIO;
        }
        st = create_run(o, argv, mnt, mnt);
        if (st < 0) {
                snprintf(msg, size, "cp: %s", strerror(-st));
                return st;
        }
        if (st) {
                char how[64];

                describe_status(st, how, sizeof(how));
                snprintf(msg, size, "copying %s into the layer failed: cp %s (its errors above)",
                         from, how);
                return -EIO;
        }
        if (chown(mnt, root.st_uid, root.st_gid) < 0 || chmod(mnt, root.st_mode & 07777) < 0) {
                snprintf(msg, size, "%s: %s", mnt, strerror(errno));
                return -EIO;
        }
        return 0;
}

/* Is the new layer what it should be: a qcow2, clean, over base? */
static int create_check(const char *out, const struct layer_file *base, char *msg, size_t size)
{
        struct vbd_err err = {0};
        struct qcow2_header h;
        struct chain ch;
        struct stat st;
        uint8_t *buf = NULL;
        size_t len;
        int fd = open(out, O_RDONLY | O_CLOEXEC), r = 0;

        if (fd < 0 || fstat(fd, &st) < 0) {
                snprintf(msg, size, "%s: %s", out, strerror(errno));
                if (fd >= 0)
                        close(fd);
                return -EIO;
        }
        if (read_header(fd, (uint64_t)st.st_size, &h, &buf, &len, &err) < 0) {
                snprintf(msg, size, "%s after the mount: %s", out, err.msg);
                close(fd);
                return -EIO;
        }
        free(buf);
        close(fd);
        if (h.incompat & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT)) {
                snprintf(msg, size, "%s after the mount: marked %s", out,
                         h.incompat & QCOW2_INCOMPAT_CORRUPT ? "corrupt" : "dirty");
                return -EIO;
        }
        if (chain_load(out, &ch, &err) < 0) {
                snprintf(msg, size, "%s", err.msg);
                return -EIO;
        }
        if (ch.why[0]) {
                snprintf(msg, size, "%s: broken chain: %s", out, ch.why);
                r = -EIO;
        } else if (ch.n < 2 || ch.f[1].dev != base->dev || ch.f[1].ino != base->ino) {
                snprintf(msg, size, "%s: its backing file is not %s any more", out, base->path);
                r = -EIO;
        }
        chain_free(&ch);
        return r;
}

static int layer_create(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"base", required_argument, NULL, 'B'},      {"from", required_argument, NULL, 'F'},
            {"script", required_argument, NULL, 'X'},    {"output", required_argument, NULL, 'o'},
            {"partition", required_argument, NULL, 'P'}, {"fstype", required_argument, NULL, 'Y'},
            {"max-depth", required_argument, NULL, 'M'}, {},
        };
        static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
        struct sigaction sa = {.sa_handler = create_on_signal, .sa_flags = SA_RESTART}, old[3];
        struct vbdctl_mount *vm = NULL;
        struct args a = {0};
        struct chain ch = {0};
        struct layer_file base;
        char name[PATH_MAX], src[PATH_MAX], msg[16384] = "", fstype[32] = "", bytes[32];
        const char *pos, *mnt;
        long long t0 = mono_ms();
        bool made = false;
        uint64_t size = 0;
        struct stat st;
        int r, e = 0;

        if ((r = parse(o, argc, argv, extra, &a, &pos)))
                return r;
        if (pos || !a.base || !a.output || !a.from == !a.script)
                return vbdctl_usage_error(o, "layer create --base BASE --from DIR|--script FILE "
                                             "-o LAYER.qcow2");
        if (geteuid() != 0)
                return vbdctl_fail(o, -EPERM, false, "layer create mounts the layer: needs root");
        if (!realpath(a.from ? a.from : a.script, src) || stat(src, &st) < 0)
                return vbdctl_fail(o, -errno, false, "%s: %s", a.from ? a.from : a.script,
                                   strerror(errno));
        if (a.from && !S_ISDIR(st.st_mode))
                return vbdctl_fail(o, -ENOTDIR, false, "--from %s: not a directory", a.from);
        if (a.script && !S_ISREG(st.st_mode))
                return vbdctl_fail(o, -EINVAL, false, "--script %s: not a regular file", a.script);
        if (lstat(a.output, &st) == 0)
                return vbdctl_fail(o, -EEXIST, false, "%s exists: not overwriting it", a.output);
        for (unsigned i = 0; i < 3; i++)
                sigaction(sigs[i], &sa, &old[i]);
        create_signal = 0;
        if ((r = clone_make(o, a.base, a.output, &a, &ch, name, sizeof(name), &size)))
                goto out;
        made = true; /* from here on, a failure removes it */
        base = ch.f[0];
        if (!create_signal && (e = vbdctl_mount_start(o, a.output, true, a.partition, a.fstype, &vm,
                                                      msg, sizeof(msg))) < 0)
                goto fail;
        if (create_signal)
                goto fail;
        mnt = vbdctl_mount_dir(vm);
        snprintf(fstype, sizeof(fstype), "%s", vbdctl_mount_fstype(vm));
        if (a.from)
                e = create_copy(o, src, mnt, msg, sizeof(msg));
        else {
                const char *sh[] = {"/bin/sh", src, mnt, NULL}, *ex[] = {src, mnt, NULL};
                int stat_ = create_run(o, access(src, X_OK) == 0 ? ex : sh, mnt, mnt);

                if (stat_ < 0) {
                        snprintf(msg, sizeof(msg), "%s: %s", src, strerror(-stat_));
                        e = stat_;
                } else if (stat_ && !create_signal) {
                        char how[64];

                        describe_status(stat_, how, sizeof(how));
                        snprintf(msg, sizeof(msg), "the script %s %s", a.script, how);
                        e = -EIO;
                }
        }
        if (e < 0 || create_signal)
                goto fail;
        /* unmount, flush down to vbdd, release it all */
        for (int i = 0; (e = vbdctl_mount_stop(vm, msg, sizeof(msg))) == -EBUSY && i < 50; i++)
                usleep(100 * 1000);
        if (e < 0)
                goto fail;
        free(vm);
        vm = NULL;
        if (create_signal) /* while it unmounted: still a failure */
                goto fail;
        if ((e = create_check(a.output, &base, msg, sizeof(msg))) < 0)
                goto fail;
        if (stat(a.output, &st) < 0) {
                e = -errno;
                snprintf(msg, sizeof(msg), "%s: %s", a.output, strerror(errno));
                goto fail;
        }
        {
                double v = (double)st.st_blocks * 512;
                const char *unit = "KiB";

                v /= 1024;
                if (v >= 1024) {
                        v /= 1024;
                        unit = "MiB";
                }
                if (v >= 1024) {
                        v /= 1024;
                        unit = "GiB";
                }
                snprintf(bytes, sizeof(bytes), "%.1f %s", v, unit);
        }
        if (o->json) {
                json_t *j = json_pack("{s:b,s:s,s:s,s:s,s:s,s:I,s:i,s:I,s:s,s:I}", "ok", 1, "image",
                                      a.output, "base", a.base, "backing", name, "backing_format",
                                      base.fmt, "virtual_size", (json_int_t)size, "depth",
                                      (int)ch.n + 1, "disk_usage", (json_int_t)st.st_blocks * 512,
                                      "fstype", fstype, "elapsed_ms", (json_int_t)(mono_ms() - t0));

                json_object_set_new(j, a.from ? "from" : "script", json_string(src));
                vbdctl_print_json(j);
        } else
                printf("%s: a layer over %s (backing file %s, %s), depth %u: %s from %s, "
                       "%lld bytes allocated (%s), in %.1f s\n",
                       a.output, a.base, name, base.fmt, ch.n + 1, fstype, src,
                       (long long)st.st_blocks * 512, bytes, (double)(mono_ms() - t0) / 1000.);
        r = 0;
        goto out;
fail:
        if (vm) {
                char m2[8192] = "";
                int e2;

                for (int i = 0; (e2 = vbdctl_mount_stop(vm, m2, sizeof(m2))) == -EBUSY && i < 50;
                     i++)
                        usleep(100 * 1000);
                if (e2 == -EBUSY) {
                        /* vbdd keeps the layer open: it cannot be removed yet */
                        r = vbdctl_fail(o, e ? e : -EINTR, false,
                                        "%s; and %s: 'vbd-ctl umount %s' cleans up, then "
                                        "remove %s",
                                        *msg ? msg : "interrupted", m2, vbdctl_mount_dir(vm),
                                        a.output);
                        vm = NULL; /* (left, as said) */
                        made = false;
                        goto out;
                }
                free(vm);
                vm = NULL;
        }
        if (made)
                unlink(a.output);
        made = false;
        if (create_signal && (!e || e == -EIO))
                r = vbdctl_fail(o, -EINTR, false, "interrupted by SIG%s: %s removed",
                                sigabbrev_np(create_signal), a.output);
        else
                r = vbdctl_fail(o, e, false, "%s (%s removed)", msg, a.output);
out:
        for (unsigned i = 0; i < 3; i++)
                sigaction(sigs[i], &old[i], NULL);
        chain_free(&ch);
        return r;
}

/* ---- rebase ---- */

/*
 * Rewrite, in buf (the header cluster: cs bytes, len of them read), the
 * backing file name and format of the image whose header is h: the header
 * extensions other than the backing format are kept in their order, then
 * come the new backing format extension, the end of the extensions and the
 * name.  *ret_len: the bytes to write back from offset 0.
 */
static int rewrite_backing(uint8_t *buf, size_t cs, const struct qcow2_header *h, const char *name,
                           const char *fmt, size_t *ret_len, struct vbd_err *err)
{
        size_t off = h->header_length, bound = h->backing_offset ? h->backing_offset : cs;
        size_t old_end, keep = 0, flen = strlen(fmt), blen = strlen(name), pos;
        uint8_t *ext = malloc(cs);

        if (!ext)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        while (off + 8 <= bound) {
                uint32_t type = vbd_get_be32(buf + off), len = vbd_get_be32(buf + off + 4);
                size_t step = 8 + (((size_t)len + 7) & ~(size_t)7);

                if (type == QCOW2_EXT_END)
                        break;
                if (step > bound - off) {
                        free(ext);
                        return vbd_err_set(err, -EINVAL, "header extension %#x runs past the area",
                                           type);
                }
                if (type != QCOW2_EXT_BACKING_FMT) {
                        memcpy(ext + keep, buf + off, step);
                        keep += step;
                }
                off += step;
        }
        old_end = off + 8 <= bound ? off + 8 : off;
        if (h->backing_offset && h->backing_offset + h->backing_size > old_end)
                old_end = h->backing_offset + h->backing_size;
        pos = h->header_length + keep + 8 + vbd_align_up(flen, 8) + 8;
        if (pos + blen > cs) {
                free(ext);
                return vbd_err_set(err, -ENAMETOOLONG,
                                   "the backing file name (%zu bytes) does not fit in the header "
                                   "cluster (%zu bytes)",
                                   blen, cs);
        }
        memset(buf + h->header_length, 0,
               (old_end > pos + blen ? old_end : pos + blen) - h->header_length);
        memcpy(buf + h->header_length, ext, keep);
        off = h->header_length + keep;
        vbd_put_be32(buf + off, QCOW2_EXT_BACKING_FMT);
        vbd_put_be32(buf + off + 4, (uint32_t)flen);
        memcpy(buf + off + 8, fmt, flen);
        off += 8 + vbd_align_up(flen, 8);
        vbd_put_be64(buf + off, 0); /* QCOW2_EXT_END */
        off += 8;
        memcpy(buf + off, name, blen);
        vbd_put_be64(buf + 8, off);
        vbd_put_be32(buf + 16, (uint32_t)blen);
        free(ext);
        *ret_len = old_end > off + blen ? old_end : off + blen;
        return 0;
}

static int layer_rebase(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"to", required_argument, NULL, 'T'},
            {"max-depth", required_argument, NULL, 'M'},
            {},
        };
        struct vbd_lock lk = VBD_LOCK_INIT;
        struct vbd_err err = {0};
        struct qcow2_header h;
        struct layer_file old;
        struct args a = {0};
        struct chain ch = {0};
        char name[PATH_MAX], was[QCOW2_MAX_BACKING_NAME + 1], wpath[PATH_MAX];
        const char *guest;
        uint8_t *buf = NULL;
        uint64_t need;
        struct stat st;
        size_t len, wlen = 0;
        off_t end;
        int fd = -1, r;

        if ((r = parse(o, argc, argv, extra, &a, &guest)))
                return r;
        if (!guest || !a.to)
                return vbdctl_usage_error(o, "layer rebase GUEST --to NEWLAYER");
        fd = open(guest, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return vbdctl_fail(o, -errno, false, "%s: %s", guest, strerror(errno));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (end = lseek(fd, 0, SEEK_END)) < 0) {
                r = vbdctl_fail(o, -EINVAL, false, "%s: not a regular file", guest);
                goto out;
        }
        /* What a writer takes (vbdd, qemu): refused while anybody uses it. */
        if (vbd_lock_take(&lk, fd, guest, VBD_AUTO,
                          VBD_LOCK_CONSISTENT_READ | VBD_LOCK_WRITE | VBD_LOCK_RESIZE,
                          VBD_LOCK_WRITE | VBD_LOCK_RESIZE, &err) < 0) {
                r = vbdctl_fail(o, err.code, false, "%s is in use, not rebasing it: %s", guest,
                                lock_msg(&err));
                goto out;
        }
        if (read_header(fd, (uint64_t)end, &h, &buf, &len, &err) < 0) {
                r = vbdctl_fail(o, err.code, false, "%s: %s", guest, err.msg);
                goto out;
        }
        if ((r = chain_need(o, a.to, &ch)))
                goto out;
        for (unsigned i = 0; i < ch.n; i++)
                if (ch.f[i].dev == st.st_dev && ch.f[i].ino == st.st_ino) {
                        r = vbdctl_fail(o, -ELOOP, false, "%s is in the chain of %s", guest, a.to);
                        goto out;
                }
        if (ch.n + 1 > a.limit) {
                r = too_deep(o, guest, a.to, ch.n, a.limit);
                goto out;
        }
        /* The new layer covers what the old one did (the guest's size when
         * the old one cannot be read or there is none). */
        need = h.size;
        if (h.backing_file[0] && resolve(guest, h.backing_file, wpath, sizeof(wpath)) == 0 &&
            probe(wpath, h.backing_fmt[0] ? h.backing_fmt : NULL, &old, &err) == 0 &&
            old.vsize < need)
                need = old.vsize;
        if (ch.f[0].vsize < need) {
                r = vbdctl_fail(o, -EINVAL, false,
                                "%s (%" PRIu64 " bytes) is smaller than what %s reads from its "
                                "backing file now (%" PRIu64 " bytes)",
                                a.to, ch.f[0].vsize, guest, need);
                goto out;
        }
        if ((r = backing_name(o, guest, a.to, name, sizeof(name))))
                goto out;
        snprintf(was, sizeof(was), "%s", h.backing_file);
        if (rewrite_backing(buf, (size_t)1 << h.cluster_bits, &h, name, ch.f[0].fmt, &wlen, &err) <
            0) {
                r = vbdctl_fail(o, err.code, false, "%s: %s", guest, err.msg);
                goto out;
        }
        if (wlen > len) { /* the header cluster is the file's first: never short */
                r = vbdctl_fail(o, -EINVAL, false, "%s: the header cluster is cut short", guest);
                goto out;
        }
        if (pwrite(fd, buf, wlen, 0) != (ssize_t)wlen || fdatasync(fd) < 0) {
                r = vbdctl_fail(o, -errno, false, "%s: write: %s", guest, strerror(errno));
                goto out;
        }
        if (o->json)
                vbdctl_print_json(json_pack("{s:b,s:s,s:s,s:s,s:s,s:i}", "ok", 1, "image", guest,
                                            "backing", name, "backing_format", ch.f[0].fmt, "was",
                                            was, "depth", (int)ch.n + 1));
        else
                printf("%s: now over %s (backing file %s, %s; was %s), depth %u\n", guest, a.to,
                       name, ch.f[0].fmt, was[0] ? was : "none", ch.n + 1);
out:
        chain_free(&ch);
        free(buf);
        vbd_lock_forget(&lk);
        if (fd >= 0)
                close(fd);
        return r;
}

/* ---- flatten ---- */

static int abs_path(struct vbdctl *o, const char *p, char *buf, size_t size)
{
        char cwd[PATH_MAX];
        int n;

        if (p[0] == '/')
                n = snprintf(buf, size, "%s", p);
        else if (!getcwd(cwd, sizeof(cwd)))
                return vbdctl_fail(o, -errno, false, "getcwd: %s", strerror(errno));
        else
                n = snprintf(buf, size, "%s/%s", cwd, p);
        if (n < 0 || (size_t)n >= size)
                return vbdctl_fail(o, -ENAMETOOLONG, false, "%s: path too long", p);
        return 0;
}

static int layer_flatten(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"output", required_argument, NULL, 'o'},
            {},
        };
        struct vbd_lock lk = VBD_LOCK_INIT;
        struct vbd_err err = {0};
        struct args a = {0};
        struct chain ch = {0};
        char src[PATH_MAX], out[PATH_MAX], spec[PATH_MAX + 8], dir[PATH_MAX];
        const char *guest;
        json_t *st = NULL;
        struct stat sb;
        bool in_place;
        int fd = -1, r;

        if ((r = parse(o, argc, argv, extra, &a, &guest)))
                return r;
        if (!guest)
                return vbdctl_usage_error(o, "layer flatten GUEST [-o OUT]");
        if ((r = chain_need(o, guest, &ch)))
                return r;
        if (!realpath(guest, src)) {
                r = vbdctl_fail(o, -errno, false, "%s: %s", guest, strerror(errno));
                goto out;
        }
        if (strchr(src, ',')) {
                r = vbdctl_fail(o, -EINVAL, false, "%s: a ',' in the path (not in an image spec)",
                                src);
                goto out;
        }
        snprintf(spec, sizeof(spec), "%s:%s", ch.f[0].fmt, src);
        in_place = !a.output;
        if (in_place && ch.n == 1) {
                r = vbdctl_fail(o, -EINVAL, false, "%s has no backing file: nothing to flatten",
                                guest);
                goto out;
        }
        if (in_place) {
                int n = snprintf(out, sizeof(out), "%s.flatten-%ld", src, (long)getpid());

                if (n < 0 || (size_t)n >= sizeof(out)) {
                        r = vbdctl_fail(o, -ENAMETOOLONG, false, "%s: path too long", src);
                        goto out;
                }
                /* A reader's lock for the whole run: nobody starts writing
                 * GUEST before the new file replaces it. */
                fd = open(src, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0 || fstat(fd, &sb) < 0) {
                        r = vbdctl_fail(o, -errno, false, "%s: %s", src, strerror(errno));
                        goto out;
                }
                if (vbd_lock_take(&lk, fd, src, VBD_AUTO, VBD_LOCK_CONSISTENT_READ,
                                  VBD_LOCK_WRITE | VBD_LOCK_RESIZE, &err) < 0) {
                        r = vbdctl_fail(o, err.code, false, "%s is in use, not flattening it: %s",
                                        src, lock_msg(&err));
                        goto out;
                }
        } else {
                if ((r = abs_path(o, a.output, out, sizeof(out))))
                        goto out;
                if (access(out, F_OK) == 0) {
                        r = vbdctl_fail(o, -EEXIST, false, "%s exists: not overwriting it", out);
                        goto out;
                }
        }
        r = vbdctl_copy_image(o, spec, guest, out, "qcow2", !o->json && isatty(2), &st);
        if (r)
                goto out;
        if (in_place) {
                snprintf(dir, sizeof(dir), "%s", src);
                if (chmod(out, sb.st_mode & 07777) < 0 || rename(out, src) < 0) {
                        r = vbdctl_fail(o, -errno, false, "%s: %s", out, strerror(errno));
                        unlink(out);
                        goto out;
                }
                {
                        int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);

                        if (dfd >= 0) {
                                fsync(dfd);
                                close(dfd);
                        }
                }
        }
        if (o->json) {
                json_object_set_new(st, "source", json_string(src));
                json_object_set_new(st, "output", json_string(in_place ? src : out));
                json_object_set_new(st, "depth_was", json_integer(ch.n));
                vbdctl_print_json(st);
        } else {
                printf("%s: flattened %u layer%s into %s (%lld bytes copied in %.1f s)\n", guest,
                       ch.n, ch.n == 1 ? "" : "s", in_place ? src : out,
                       vbdctl_jint(st, "bytes_done"),
                       (double)vbdctl_jint(st, "elapsed_ms") / 1000.);
                json_decref(st);
        }
out:
        chain_free(&ch);
        vbd_lock_forget(&lk);
        if (fd >= 0)
                close(fd);
        return r;
}

/* ---- info ---- */

static int layer_info(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"max-depth", required_argument, NULL, 'M'},
            {},
        };
        struct vbd_err err = {0};
        struct args a = {0};
        struct chain ch;
        const char *image;
        json_t *list;
        int r;

        if ((r = parse(o, argc, argv, extra, &a, &image)))
                return r;
        if (!image)
                return vbdctl_usage_error(o, "layer info IMAGE");
        if (chain_load(image, &ch, &err) < 0)
                return vbdctl_fail(o, err.code, false, "%s", err.msg);
        if (ch.n > a.limit)
                fprintf(stderr,
                        "vbd-ctl layer: warning: %s is at depth %u, over the limit of %u: "
                        "flatten it (vbd-ctl layer flatten %s)\n",
                        image, ch.n, a.limit, image);
        list = json_array();
        if (!o->json)
                printf("%-5s %-6s %14s %12s  %s\n", "DEPTH", "FORMAT", "VIRTUAL", "DISK", "FILE");
        for (unsigned i = 0; i < ch.n; i++) {
                struct layer_file *f = &ch.f[i];

                if (o->json)
                        json_array_append_new(
                            list,
                            json_pack("{s:i,s:s,s:s,s:I,s:I,s:s,s:s}", "depth", (int)i + 1, "file",
                                      f->path, "format", f->fmt, "virtual_size",
                                      (json_int_t)f->vsize, "disk_usage", (json_int_t)f->disk,
                                      "backing", f->backing, "backing_format", f->backing_fmt));
                else
                        printf("%5u %-6s %14" PRIu64 " %12" PRIu64 "  %s\n", i + 1, f->fmt,
                               f->vsize, f->disk, f->path);
        }
        if (o->json)
                vbdctl_print_json(json_pack("{s:b,s:s,s:i,s:i,s:b,s:s,s:o}", "ok", !ch.why[0],
                                            "image", image, "depth", (int)ch.n, "max_depth",
                                            (int)a.limit, "complete", !ch.why[0], "error", ch.why,
                                            "chain", list));
        else
                json_decref(list);
        if (ch.why[0]) {
                fprintf(stderr, "vbd-ctl layer: %s: broken chain: %s\n", image, ch.why);
                r = VBDCTL_EXIT_FAILED;
        }
        chain_free(&ch);
        return r;
}

/* ---- sum: the fingerprint of a backing chain (shallow migration) ---- */

/* SHA-256 of a whole file, lowercase hex into hex[65]. */
static int file_sha256(const char *path, char hex[65], uint64_t *ret_size, struct vbd_err *err)
{
        struct sha256_ctx c;
        uint8_t d[SHA256_DIGEST_SIZE];
        size_t bufsz = 1 << 20;
        uint8_t *buf = malloc(bufsz);
        uint64_t total = 0;
        ssize_t n;
        int fd;

        if (!buf)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                free(buf);
                return vbd_err_set(err, -errno, "%s: %s", path, strerror(errno));
        }
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        sha256_init(&c);
        while ((n = read(fd, buf, bufsz)) > 0) {
                sha256_update(&c, (size_t)n, buf);
                total += (uint64_t)n;
        }
        if (n < 0) {
                int e = errno;

                close(fd);
                free(buf);
                return vbd_err_set(err, -e, "%s: read: %s", path, strerror(e));
        }
        close(fd);
        free(buf);
        sha256_digest(&c, sizeof(d), d);
        for (unsigned i = 0; i < sizeof(d); i++)
                snprintf(hex + 2 * i, 3, "%02x", d[i]);
        *ret_size = total;
        return 0;
}

int vbdctl_backing_sum(const char *image, char fp[VBDCTL_SUM_MAX], json_t **ret_files,
                       struct vbd_err *err)
{
        struct sha256_ctx all;
        uint8_t d[SHA256_DIGEST_SIZE];
        json_t *files = json_array();
        struct chain ch;
        int r;

        if (chain_load(image, &ch, err) < 0) {
                json_decref(files);
                return err->code;
        }
        if (ch.why[0]) {
                r = vbd_err_set(err, -ENOENT, "%s: broken chain: %s", image, ch.why);
                goto out;
        }
        if (ch.n < 2) {
                r = vbd_err_set(err, -EINVAL, "%s: %s with no backing file: nothing to share",
                                image, ch.f[0].fmt);
                goto out;
        }
        /* One line a file below the top, the paths left out (they differ
         * between hosts): "FORMAT VIRTUAL-SIZE FILE-SIZE SHA256\n". */
        sha256_init(&all);
        for (unsigned i = 1; i < ch.n; i++) {
                char hex[65], line[128];
                uint64_t fsize = 0;
                int n;

                if ((r = file_sha256(ch.f[i].path, hex, &fsize, err)) < 0)
                        goto out;
                n = snprintf(line, sizeof(line), "%s %" PRIu64 " %" PRIu64 " %s\n", ch.f[i].fmt,
                             ch.f[i].vsize, fsize, hex);
                sha256_update(&all, (size_t)n, (const uint8_t *)line);
                json_array_append_new(files,
                                      json_pack("{s:i,s:s,s:s,s:I,s:I,s:s}", "depth", (int)i + 1,
                                                "file", ch.f[i].path, "format", ch.f[i].fmt,
                                                "virtual_size", (json_int_t)ch.f[i].vsize,
                                                "file_size", (json_int_t)fsize, "sha256", hex));
        }
        sha256_digest(&all, sizeof(d), d);
        memcpy(fp, "sha256:", 7);
        for (unsigned i = 0; i < sizeof(d); i++)
                snprintf(fp + 7 + 2 * i, 3, "%02x", d[i]);
        r = 0;
out:
        chain_free(&ch);
        if (r == 0 && ret_files)
                *ret_files = files;
        else
                json_decref(files);
        return r;
}

static int layer_sum(struct vbdctl *o, int argc, char **argv)
{
        char fp[VBDCTL_SUM_MAX];
        struct vbd_err err = {0};
        struct args a = {0};
        const char *image;
        json_t *files = NULL;
        int r;

        if ((r = parse(o, argc, argv, NULL, &a, &image)))
                return r;
        if (!image)
                return vbdctl_usage_error(o, "layer sum IMAGE");
        if (vbdctl_backing_sum(image, fp, &files, &err) < 0)
                return vbdctl_fail(o, err.code, false, "%s", err.msg);
        if (o->json) {
                vbdctl_print_json(
                    json_pack("{s:s,s:s,s:o}", "image", image, "fingerprint", fp, "backing", files));
                return 0;
        }
        printf("%s\n", fp);
        json_decref(files);
        return 0;
}

/* ---- the verb ---- */

static const struct {
        const char *name;
        int (*run)(struct vbdctl *o, int argc, char **argv);
} subs[] = {
    {"create", layer_create},   {"clone", layer_clone}, {"rebase", layer_rebase},
    {"flatten", layer_flatten}, {"info", layer_info},     {"sum", layer_sum},
};

static int run_layer(struct vbdctl *o, int argc, char **argv)
{
        vbd_log_set_level(VBD_LOG_WARNING);
        if (argc > 1 && argv[1][0] != '-')
                for (size_t i = 0; i < sizeof(subs) / sizeof(subs[0]); i++)
                        if (!strcmp(argv[1], subs[i].name)) {
                                argv[1] = argv[0];
                                return subs[i].run(o, argc - 1, argv + 1);
                        }
        if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))
                return vbdctl_parse(o, argc, argv, NULL, NULL, NULL);
        return vbdctl_usage_error(o, "layer create|clone|rebase|flatten|info|sum ...");
}

const struct vbdctl_verb vbdctl_verb_layer = {
    .name = "layer",
    .run = run_layer,
    .args = "create --base BASE --from DIR|--script FILE -o LAYER [--partition N] [--fstype T] "
            "[--max-depth N] | clone LAYER -o GUEST [--size SIZE] [--max-depth N] | "
            "rebase GUEST --to NEWLAYER "
            "[--max-depth N] | flatten GUEST [-o OUT] | info IMAGE [--max-depth N] [--json] | "
            "sum IMAGE [--json]",
    .summary = "application layers: create one over a base, thin qcow2 clones of it, rebase, "
               "flatten, the chain, its fingerprint",
};
