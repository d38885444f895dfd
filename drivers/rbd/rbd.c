/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * rbd: a Ceph RBD image, through librbd's asynchronous API.
 *
 *   rbd:POOL/IMAGE[@SNAP][,conf=FILE][,id=USER][,keyring=FILE][,connect-timeout=SECONDS]
 *
 * open() connects to the cluster synchronously (librados: the monitors must
 * answer within connect-timeout seconds: client_mount_timeout and
 * rados_mon_op_timeout), opens the pool's I/O context and the image (read
 * only for a snapshot, which must be opened read-only).  The size is the
 * image's (or the snapshot's) at open, rounded down to 512 bytes.
 *
 * submit() starts one librbd request per io: rbd_aio_readv, rbd_aio_writev,
 * rbd_aio_flush, rbd_aio_discard, rbd_aio_write_zeroes (thick, unless the io
 * may unmap).  librbd completes them on its own threads: the completion
 * callback only appends the request to a mutex-protected list and writes
 * the eventfd that the VBD's loop watches; the loop takes the list and
 * completes the ios.  Nothing else happens on librbd's threads.  OSD
 * requests have no timeout: an io waits while its OSD is away (librbd
 * resends when it is back), as a disk's requests wait for the disk.
 *
 * Block status: rbd_diff_iterate2 from the image's creation (parents
 * included), by whole objects when fast-diff is on and valid.  It is
 * synchronous, and costs a round trip to the OSDs without fast-diff.
 *
 * A resize by another client is seen through rbd_update_watch and logged;
 * the VBD keeps the size it opened with until the image is opened again.
 */
#define VBD_LOG_TOPIC "drv.rbd"
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>
#include <rados/librados.h>
#include <rbd/librbd.h>

#include "vbd/driver.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define RBD_TIMEOUT_MAX  3600u
#define RBD_NAME_MAX     255u         /* bytes of a pool, image or snapshot name */
#define RBD_BLOCK        512u         /* the logical block */
#define RBD_DISCARD_GRAN 65536u       /* librbd's rbd_discard_granularity_bytes default */
#define RBD_STATUS_MAX   (1ull << 30) /* bytes one block_status call looks at */

struct rbd_state;

/* Per-io scratch. */
struct rbd_req {
        struct rbd_req *next; /* s->done_head, under s->lock */
        struct vbd_io *io;
        struct rbd_state *s;
        rbd_completion_t c;
};

struct rbd_state {
        rados_t cluster;
        rados_ioctx_t ioctx;
        rbd_image_t image;
        bool connected, watching;
        uint64_t watch_handle;
        struct ev_loop *loop;
        struct vbd_image *img;
        const char *name;

        char pool[RBD_NAME_MAX + 1], image_name[RBD_NAME_MAX + 1], snap[RBD_NAME_MAX + 1];
        bool readonly, fast_diff;
        uint64_t size, rbd_size, obj_size;

        int efd;
        ev_io efd_w;
        bool efd_on;
        /* shared with librbd's threads: */
        pthread_mutex_t lock;
        struct rbd_req *done_head, *done_tail;
        atomic_bool header_changed;

        unsigned nios; /* submitted and not yet completed */
        bool draining;
};

enum { OPT_CONF, OPT_ID, OPT_KEYRING, OPT_CONNECT_TIMEOUT };
static const struct vbd_opt_desc rbd_opts[] = {
    [OPT_CONF] = {.name = "conf",
                  .type = VBD_OPT_STRING,
                  .flags = VBD_OPT_NONEMPTY,
                  .help = "the Ceph configuration file (default: librados' search, "
                          "/etc/ceph/ceph.conf)"},
    [OPT_ID] = {.name = "id",
                .type = VBD_OPT_STRING,
                .flags = VBD_OPT_NONEMPTY,
                .def = "admin",
                .help = "the cephx user, without \"client.\""},
    [OPT_KEYRING] = {.name = "keyring",
                     .type = VBD_OPT_STRING,
                     .flags = VBD_OPT_NONEMPTY,
                     .help = "the keyring file with the user's key (default: the conf's)"},
    [OPT_CONNECT_TIMEOUT] = VBD_OPT_UINT_DEF("connect-timeout", 1, RBD_TIMEOUT_MAX, "10",
                                             "seconds open() waits for the monitors"),
};

/* ---- completions: librbd's threads to the loop ---- */

static void rbd_efd_kick(struct rbd_state *s)
{
        uint64_t one = 1;

        /* EAGAIN: the counter is full, the loop will wake anyway */
        while (write(s->efd, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
}

/* On a librbd thread: queue the request for the loop, nothing else. */
static void rbd_complete_cb(rbd_completion_t c, void *arg)
{
        struct rbd_req *r = arg;
        struct rbd_state *s = r->s;
        bool was_empty;

        (void)c;
        pthread_mutex_lock(&s->lock);
        r->next = NULL;
        was_empty = !s->done_head;
        if (s->done_tail)
                s->done_tail->next = r;
        else
                s->done_head = r;
        s->done_tail = r;
        pthread_mutex_unlock(&s->lock);
        if (was_empty)
                rbd_efd_kick(s);
}

/* On a librbd thread: the image's header changed (a resize, a snapshot...). */
static void rbd_update_cb(void *arg)
{
        struct rbd_state *s = arg;

        atomic_store(&s->header_changed, true);
        rbd_efd_kick(s);
}

static void rbd_io_get(struct rbd_state *s)
{
        if (s->nios++ == 0)
                ev_ref(s->loop);
}

static void rbd_check_size(struct rbd_state *s)
{
        uint64_t size;
        int r;

        if (!s->image)
                return;
        r = rbd_get_size(s->image, &size);
        if (r < 0) {
                vbd_warn("%s: the image's header changed; cannot read its size: %s", s->name,
                         strerror(-r));
                return;
        }
        if (size != s->rbd_size) {
                vbd_warn("%s: the image was resized from %" PRIu64 " to %" PRIu64
                         " bytes; the device keeps %" PRIu64 " bytes until it is opened again",
                         s->name, s->rbd_size, size, s->size);
                s->rbd_size = size;
        }
}

static void rbd_efd_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct rbd_state *s = w->data;
        struct rbd_req *list, *next;
        uint64_t n;

        (void)loop;
        (void)revents;
        while (read(s->efd, &n, sizeof(n)) < 0 && errno == EINTR)
                ;
        if (atomic_exchange(&s->header_changed, false))
                rbd_check_size(s);
        pthread_mutex_lock(&s->lock);
        list = s->done_head;
        s->done_head = s->done_tail = NULL;
        pthread_mutex_unlock(&s->lock);
        for (struct rbd_req *r = list; r; r = next) {
                struct vbd_io *io = r->io;
                ssize_t ret = rbd_aio_get_return_value(r->c);
                int status = 0;

                next = r->next; /* r is the io's scratch: gone once it completes */
                rbd_aio_release(r->c);
                if (ret < 0) {
                        static struct vbd_ratelimit rl = VBD_RATELIMIT_INIT(5000, 5);

                        status = (int)ret;
                        if (vbd_ratelimit_ok(&rl))
                                vbd_err("%s: %s of %" PRIu64 " bytes at %" PRIu64 " failed: %s",
                                        s->name, vbd_op_name(io->op), io->len, io->offset,
                                        strerror((int)-ret));
                } else if (io->op == VBD_OP_READ && (uint64_t)ret != io->len) {
                        status = -EIO; /* librbd reads whole ranges inside the image */
                }
                if (--s->nios == 0)
                        ev_unref(s->loop);
                vbd_io_complete(io, status); /* may submit the next io */
        }
        if (s->draining && s->nios == 0) {
                s->draining = false;
                vbd_image_drained(s->img); /* the last use of s */
        }
}

/* ---- ios ---- */

static void rbd_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct rbd_state *s = vbd_image_state(img);
        struct rbd_req *r = io->scratch;
        int ret;

        *r = (struct rbd_req){.io = io, .s = s};
        ret = rbd_aio_create_completion(r, rbd_complete_cb, &r->c);
        if (ret < 0) {
                vbd_io_complete(io, ret);
                return;
        }
        switch (io->op) {
        case VBD_OP_READ:
                ret = rbd_aio_readv(s->image, io->iov, (int)io->iovcnt, io->offset, r->c);
                break;
        case VBD_OP_WRITE:
                ret = rbd_aio_writev(s->image, io->iov, (int)io->iovcnt, io->offset, r->c);
                break;
        case VBD_OP_FLUSH:
                ret = rbd_aio_flush(s->image, r->c);
                break;
        case VBD_OP_DISCARD:
                ret = rbd_aio_discard(s->image, io->offset, io->len, r->c);
                break;
        case VBD_OP_WRITE_ZEROES:
                ret = rbd_aio_write_zeroes(
                    s->image, io->offset, (size_t)io->len, r->c,
                    (io->flags & VBD_IO_MAY_UNMAP) ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
                break;
        default:
                ret = -EOPNOTSUPP;
                break;
        }
        if (ret < 0) {
                rbd_aio_release(r->c);
                vbd_io_complete(io, ret);
                return;
        }
        rbd_io_get(s);
}

static void rbd_drain(struct vbd_image *img)
{
        struct rbd_state *s = vbd_image_state(img);

        if (s->nios == 0) {
                vbd_image_drained(img);
                return;
        }
        s->draining = true;
}

/* ---- block status ---- */

struct rbd_status {
        uint64_t pos, end; /* the next byte to describe; the end of the range */
        struct vbd_extent *ret;
        unsigned max, n;
};

static bool status_add(struct rbd_status *st, uint64_t len, uint32_t flags)
{
        if (len == 0)
                return true;
        if (st->n > 0 && st->ret[st->n - 1].flags == flags) {
                st->ret[st->n - 1].len += len;
        } else {
                if (st->n == st->max)
                        return false;
                st->ret[st->n++] = (struct vbd_extent){.len = len, .flags = flags};
        }
        st->pos += len;
        return true;
}

/* rbd_diff_iterate2's callback: [off, off + len) has data (exists) or was
 * discarded; in ascending order, possibly beyond the range asked (whole objects). */
static int status_cb(uint64_t off, size_t len, int exists, void *arg)
{
        struct rbd_status *st = arg;
        uint64_t end = off + len;

        if (end > st->end)
                end = st->end;
        if (off < st->pos)
                off = st->pos;
        if (end <= off)
                return 0;
        if (!status_add(st, off - st->pos, VBD_EXTENT_HOLE | VBD_EXTENT_ZERO) ||
            !status_add(st, end - off, exists ? 0 : VBD_EXTENT_HOLE | VBD_EXTENT_ZERO))
                return -ECANCELED; /* full: what we have is the answer */
        return 0;
}

static int rbd_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct rbd_state *s = vbd_image_state(img);
        struct rbd_status st = {.pos = offset, .ret = ret, .max = max};
        bool whole = false;
        int r;

        if (len > RBD_STATUS_MAX)
                len = RBD_STATUS_MAX;
        st.end = offset + len;
        if (s->fast_diff) {
                uint64_t flags = 0;

                whole =
                    rbd_get_flags(s->image, &flags) == 0 && !(flags & RBD_FLAG_FAST_DIFF_INVALID);
        }
        r = rbd_diff_iterate2(s->image, NULL, offset, len, 1, whole, status_cb, &st);
        if (r < 0 && r != -ECANCELED) {
                static struct vbd_ratelimit rl = VBD_RATELIMIT_INIT(5000, 5);

                if (vbd_ratelimit_ok(&rl))
                        vbd_err("%s: block status at %" PRIu64 ": %s", s->name, offset,
                                strerror(-r));
                return r;
        }
        if (r == 0 && st.pos < st.end)
                status_add(&st, st.end - st.pos, VBD_EXTENT_HOLE | VBD_EXTENT_ZERO);
        if (st.n == 0) /* cannot happen: max >= 1 and len > 0 */
                return -EIO;
        *ret_n = st.n;
        return 0;
}

/* ---- opening ---- */

/* Split POOL/IMAGE[@SNAP] into s, checked. */
static int rbd_parse_arg(struct rbd_state *s, const char *arg, struct vbd_err *err)
{
        const char *slash, *at, *image;
        size_t pool_len, image_len, snap_len = 0;

        if (!arg || !*arg)
                return vbd_err_set(err, -EINVAL, "rbd: missing POOL/IMAGE (rbd:POOL/IMAGE[@SNAP])");
        for (const char *p = arg; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        return vbd_err_set(err, -EINVAL,
                                           "rbd: '%s': control characters in the image name", arg);
        slash = strchr(arg, '/');
        if (!slash)
                return vbd_err_set(err, -EINVAL, "rbd: '%s': not POOL/IMAGE[@SNAP]", arg);
        pool_len = (size_t)(slash - arg);
        image = slash + 1;
        if (strchr(image, '/'))
                return vbd_err_set(
                    err, -EINVAL, "rbd: '%s': not POOL/IMAGE[@SNAP] (namespaces are not supported)",
                    arg);
        at = strchr(image, '@');
        image_len = at ? (size_t)(at - image) : strlen(image);
        if (at) {
                if (strchr(at + 1, '@'))
                        return vbd_err_set(err, -EINVAL, "rbd: '%s': more than one '@'", arg);
                snap_len = strlen(at + 1);
                if (snap_len == 0)
                        return vbd_err_set(err, -EINVAL, "rbd: '%s': empty snapshot name", arg);
        }
        if (pool_len == 0)
                return vbd_err_set(err, -EINVAL, "rbd: '%s': empty pool name", arg);
        if (image_len == 0)
                return vbd_err_set(err, -EINVAL, "rbd: '%s': empty image name", arg);
        if (pool_len > RBD_NAME_MAX || image_len > RBD_NAME_MAX || snap_len > RBD_NAME_MAX)
                return vbd_err_set(err, -ENAMETOOLONG, "rbd: '%.64s...': a name over %u bytes", arg,
                                   RBD_NAME_MAX);
        memcpy(s->pool, arg, pool_len);
        s->pool[pool_len] = '\0';
        memcpy(s->image_name, image, image_len);
        s->image_name[image_len] = '\0';
        if (at)
                memcpy(s->snap, at + 1, snap_len + 1);
        return 0;
}

static int check_file(const char *what, const char *path, struct vbd_err *err)
{
        struct stat st;

        if (stat(path, &st) < 0)
                return vbd_err_set(err, -errno, "rbd: %s %s: %s", what, path, strerror(errno));
        if (!S_ISREG(st.st_mode))
                return vbd_err_set(err, -EINVAL, "rbd: %s %s: not a regular file", what, path);
        if (access(path, R_OK) < 0)
                return vbd_err_set(err, -errno, "rbd: %s %s: %s", what, path, strerror(errno));
        return 0;
}

/* Does the keyring file have a section [name]?  1 yes, 0 no, -errno. */
static int keyring_has(const char *path, const char *name)
{
        char line[512];
        size_t n = strlen(name);
        int found = 0;
        FILE *f = fopen(path, "re");

        if (!f)
                return -errno;
        while (!found && fgets(line, sizeof(line), f)) {
                const char *p = line;

                while (*p == ' ' || *p == '\t')
                        p++;
                if (*p == '[' && strncmp(p + 1, name, n) == 0 && p[1 + n] == ']')
                        found = 1;
        }
        fclose(f);
        return found;
}

static bool valid_id(const char *id)
{
        for (const char *p = id; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return strlen(id) <= RBD_NAME_MAX;
}

static int conf_set(struct rbd_state *s, const char *key, const char *value, struct vbd_err *err)
{
        int r = rados_conf_set(s->cluster, key, value);

        if (r < 0)
                return vbd_err_set(err, r, "rbd: cannot set %s=%s: %s", key, value, strerror(-r));
        return 0;
}

static int rbd_connect(struct rbd_state *s, const struct vbd_opts *o, struct vbd_err *err)
{
        const char *conf = o->values[OPT_CONF].set ? o->values[OPT_CONF].s : NULL;
        const char *keyring = o->values[OPT_KEYRING].set ? o->values[OPT_KEYRING].s : NULL;
        const char *id = o->values[OPT_ID].s;
        unsigned timeout = (unsigned)o->values[OPT_CONNECT_TIMEOUT].u;
        char name[RBD_NAME_MAX + 8], tbuf[16];
        int r;

        if (!valid_id(id))
                return vbd_err_set(
                    err, -EINVAL,
                    "rbd: id=%s: not a user name ([A-Za-z0-9._-], without \"client.\")", id);
        if (strncmp(id, "client.", 7) == 0)
                return vbd_err_set(err, -EINVAL, "rbd: id=%s: give the user without \"client.\"",
                                   id);
        if (conf && (r = check_file("conf", conf, err)) < 0)
                return r;
        if (keyring && (r = check_file("keyring", keyring, err)) < 0)
                return r;
        snprintf(name, sizeof(name), "client.%s", id);
        if (keyring && (r = keyring_has(keyring, name)) <= 0)
                return vbd_err_set(err, r < 0 ? r : -ENOKEY, "rbd: keyring %s: %s", keyring,
                                   r < 0 ? strerror(-r) : "no key for the user");
        r = rados_create2(&s->cluster, "ceph", name, 0);
        if (r < 0)
                return vbd_err_set(err, r, "rbd: librados: %s", strerror(-r));
        r = rados_conf_read_file(s->cluster, conf);
        if (r < 0 && conf)
                return vbd_err_set(err, r, "rbd: conf %s: cannot parse it: %s", conf, strerror(-r));
        if (keyring && (r = conf_set(s, "keyring", keyring, err)) < 0)
                return r;
        snprintf(tbuf, sizeof(tbuf), "%u", timeout);
        if ((r = conf_set(s, "client_mount_timeout", tbuf, err)) < 0 ||
            (r = conf_set(s, "rados_mon_op_timeout", tbuf, err)) < 0)
                return r;
        r = rados_connect(s->cluster);
        if (r == -ENOENT && !conf) {
                char mons[8] = "";

                if (rados_conf_get(s->cluster, "mon_host", mons, sizeof(mons)) < 0 ||
                    mons[0] == '\0')
                        return vbd_err_set(err, r,
                                           "rbd: no monitors known: give conf=FILE (librados "
                                           "found no configuration with mon_host)");
        }
        if (r == -ETIMEDOUT || r == -EINTR)
                return vbd_err_set(err, -ETIMEDOUT,
                                   "rbd: no answer from the monitors within %u s (conf %s)",
                                   timeout, conf ? conf : "default");
        if (r == -ENOENT)
                return vbd_err_set(err, r, "rbd: cannot connect as %s: no key for it (keyring %s)",
                                   name, keyring ? keyring : "from the conf");
        if (r == -EACCES || r == -EPERM)
                return vbd_err_set(err, r,
                                   "rbd: the monitors refused %s: wrong key or no such user "
                                   "(keyring %s)",
                                   name, keyring ? keyring : "from the conf");
        if (r < 0)
                return vbd_err_set(err, r, "rbd: cannot connect as %s (conf %s): %s", name,
                                   conf ? conf : "default", strerror(-r));
        s->connected = true;
        return 0;
}

static int rbd_open_image(struct rbd_state *s, struct vbd_err *err)
{
        const char *snap = s->snap[0] ? s->snap : NULL;
        int r;

        r = rados_ioctx_create(s->cluster, s->pool, &s->ioctx);
        if (r == -ENOENT)
                return vbd_err_set(err, r, "rbd: no pool %s", s->pool);
        if (r < 0)
                return vbd_err_set(err, r, "rbd: pool %s: %s", s->pool, strerror(-r));
        if (s->readonly)
                r = rbd_open_read_only(s->ioctx, s->image_name, &s->image, snap);
        else
                r = rbd_open(s->ioctx, s->image_name, &s->image, NULL);
        if (r == -ENOENT && snap) {
                rbd_image_t probe;

                if (rbd_open_read_only(s->ioctx, s->image_name, &probe, NULL) == 0) {
                        rbd_close(probe);
                        s->image = NULL;
                        return vbd_err_set(err, r, "rbd: image %s/%s has no snapshot %s", s->pool,
                                           s->image_name, snap);
                }
        }
        if (r < 0)
                s->image = NULL;
        if (r == -ENOENT)
                return vbd_err_set(err, r, "rbd: no image %s in pool %s", s->image_name, s->pool);
        if (r == -EPERM || r == -EACCES)
                return vbd_err_set(err, r, "rbd: image %s/%s: not allowed (the user's caps)",
                                   s->pool, s->image_name);
        if (r < 0)
                return vbd_err_set(err, r, "rbd: cannot open image %s/%s: %s", s->pool,
                                   s->image_name, strerror(-r));
        return 0;
}

static void rbd_cleanup(struct rbd_state *s)
{
        if (s->efd_on) {
                ev_ref(s->loop);
                ev_io_stop(s->loop, &s->efd_w);
                s->efd_on = false;
        }
        if (s->watching) {
                (void)rbd_update_unwatch(s->image, s->watch_handle);
                s->watching = false;
        }
        if (s->image) {
                int r = rbd_close(s->image); /* writes back librbd's cache */

                if (r < 0)
                        vbd_err("%s: closing the image: %s", s->name, strerror(-r));
                s->image = NULL;
        }
        if (s->ioctx) {
                rados_ioctx_destroy(s->ioctx);
                s->ioctx = NULL;
        }
        if (s->cluster) {
                rados_shutdown(s->cluster); /* also for a handle that never connected */
                s->cluster = NULL;
                s->connected = false;
        }
        if (s->efd >= 0) {
                close(s->efd);
                s->efd = -1;
        }
        pthread_mutex_destroy(&s->lock);
}

static int rbd_open_cb(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct rbd_state *s = vbd_image_state(img);
        rbd_image_info_t info;
        uint64_t features = 0;
        int r;

        s->img = img;
        s->loop = vbd_image_loop(img);
        s->name = vbd_image_name(img);
        s->readonly = o->readonly;
        s->efd = -1;
        r = rbd_parse_arg(s, o->arg, err);
        if (r < 0)
                return r;
        if (s->snap[0] && !o->readonly)
                return vbd_err_set(err, -EROFS,
                                   "rbd: %s/%s@%s: a snapshot is read-only; open it read-only",
                                   s->pool, s->image_name, s->snap);
        if (!s->loop)
                return vbd_err_set(err, -EINVAL, "rbd: no event loop given");
        pthread_mutex_init(&s->lock, NULL);
        atomic_init(&s->header_changed, false);
        s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (s->efd < 0) {
                r = vbd_err_set(err, -errno, "rbd: eventfd: %s", strerror(errno));
                goto fail;
        }
        r = rbd_connect(s, o, err);
        if (r < 0)
                goto fail;
        r = rbd_open_image(s, err);
        if (r < 0)
                goto fail;
        r = rbd_stat(s->image, &info, sizeof(info));
        if (r < 0) {
                r = vbd_err_set(err, r, "rbd: %s/%s: stat: %s", s->pool, s->image_name,
                                strerror(-r));
                goto fail;
        }
        (void)rbd_get_features(s->image, &features);
        s->fast_diff = features & RBD_FEATURE_FAST_DIFF;
        s->rbd_size = info.size;
        s->obj_size = info.obj_size;
        s->size = info.size - info.size % RBD_BLOCK;
        if (s->size == 0) {
                r = vbd_err_set(err, -EINVAL, "rbd: %s/%s: the image is empty (%" PRIu64 " bytes)",
                                s->pool, s->image_name, info.size);
                goto fail;
        }
        if (s->size != info.size)
                vbd_warn("%s: size %" PRIu64 " is not a multiple of %u, exposing %" PRIu64 " bytes",
                         s->name, info.size, RBD_BLOCK, s->size);

        ev_io_init(&s->efd_w, rbd_efd_cb, s->efd, EV_READ);
        s->efd_w.data = s;
        ev_io_start(s->loop, &s->efd_w);
        ev_unref(s->loop); /* ios in flight keep the loop alive, not the watcher */
        s->efd_on = true;
        r = rbd_update_watch(s->image, &s->watch_handle, rbd_update_cb, s);
        if (r == 0)
                s->watching = true;
        else
                vbd_warn(
                    "%s: cannot watch the image's header (%s): a resize is seen on reopen only",
                    s->name, strerror(-r));
        vbd_info("%s: %" PRIu64 " bytes, objects of %" PRIu64 " bytes%s%s", s->name, s->size,
                 s->obj_size, s->fast_diff ? ", fast-diff" : "", s->readonly ? ", read-only" : "");
        return 0;

fail:
        rbd_cleanup(s);
        return r;
}

static int rbd_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct rbd_state *s = vbd_image_state(img);
        uint32_t phys = 4096;

        *ret_info = (struct vbd_info){
            .size = s->size,
            .caps = VBD_CAP_FLUSH,
            .logical_block = RBD_BLOCK,
            .physical_block = phys,
            .mem_align = 0,
            .max_io = 0,
            .discard_granularity = RBD_DISCARD_GRAN,
            .discard_alignment = 0,
        };
        if (!s->readonly)
                ret_info->caps |= VBD_CAP_WRITE | VBD_CAP_DISCARD | VBD_CAP_WRITE_ZEROES;
        return 0;
}

static void rbd_close_cb(struct vbd_image *img)
{
        rbd_cleanup(vbd_image_state(img));
}

const struct vbd_driver vbd_driver_rbd = {
    .abi = VBD_DRIVER_ABI,
    .name = "rbd",
    .description = "a Ceph RBD image (librbd)",
    .usage = "rbd:POOL/IMAGE[@SNAP][,conf=FILE][,id=USER][,keyring=FILE]"
             "[,connect-timeout=SECONDS]",
    .state_size = sizeof(struct rbd_state),
    .io_scratch_size = sizeof(struct rbd_req),
    .open = rbd_open_cb,
    .get_info = rbd_get_info,
    .submit = rbd_submit,
    .block_status = rbd_block_status,
    .drain = rbd_drain,
    .close = rbd_close_cb,
    .opts = rbd_opts,
    .nopts = VBD_ARRAY_SIZE(rbd_opts),
};
