/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Images: spec parsing (filters down to one driver, each layer's options
 * through its table), driver lookup, opening and closing stacks, draining,
 * the validating dispatcher and the services drivers get from the core
 * (driver.h).
 */
#define VBD_LOG_TOPIC "image"
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "lock.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define DRIVER_NAME_MAX 32

struct vbd_image {
        const struct vbd_driver *drv;
        struct vbd_aio *aio;
        bool readonly;
        struct vbd_info info;
        void *state;
        char *spec;
        size_t scratch_size;       /* per io: the driver's, plus the child's when stacked */
        struct vbd_image *child;   /* filters: the image below */
        struct vbd_image *backing; /* vbd_image_open_backing() */
        struct ev_loop *loop;
        bool opened; /* open() succeeded: close() is due */
        /* vbd_image_drain(): stage 0 waits for the driver, 1 child, 2 backing */
        bool drained, drain_top_only;
        unsigned drain_stage;
        void (*drain_done)(void *opaque);
        void *drain_opaque;
        struct vbd_lock lock; /* vbd_image_lock() */
};

int vbd_err_set(struct vbd_err *err, int code, const char *fmt, ...)
{
        va_list ap;

        if (code > 0)
                code = -code;
        if (err) {
                err->code = code;
                va_start(ap, fmt);
                vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
                va_end(ap);
        }
        return code;
}

const char *vbd_op_name(enum vbd_op op)
{
        static const char *const names[_VBD_OP_MAX] = {
            [VBD_OP_READ] = "read",
            [VBD_OP_WRITE] = "write",
            [VBD_OP_FLUSH] = "flush",
            [VBD_OP_DISCARD] = "discard",
            [VBD_OP_WRITE_ZEROES] = "write-zeroes",
        };

        if ((unsigned)op >= _VBD_OP_MAX)
                return "unknown";
        return names[op];
}

const struct vbd_driver *vbd_image_find_driver(const char *name)
{
        for (const struct vbd_driver *const *d = vbd_drivers; *d; d++)
                if (strcmp((*d)->name, name) == 0)
                        return *d;
        return NULL;
}

static void list_drivers(char *buf, size_t size)
{
        size_t n = 0;

        buf[0] = '\0';
        for (const struct vbd_driver *const *d = vbd_drivers; *d && n < size; d++)
                n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? ", " : "", (*d)->name);
        if (!buf[0])
                snprintf(buf, size, "none");
}

/* Put "name: " before err's message, set its code to code; returns code. */
static int err_prefix(struct vbd_err *err, int code, const char *name)
{
        char msg[sizeof(err->msg)];

        if (!err)
                return code;
        memcpy(msg, err->msg, sizeof(msg));
        return vbd_err_set(err, code, "%s: %s", name, msg);
}

/* One layer of a spec being opened: the driver, where its spec starts, its options. */
struct layer {
        const struct vbd_driver *drv;
        const char *spec; /* in the caller's spec: this layer's DRIVER ':' ... to the end */
        struct vbd_opt_value *values;
};

struct stack_spec {
        char *buf;       /* copy of the spec, cut in place */
        const char *arg; /* the bottom driver's ARG, in buf */
        unsigned n;      /* layers[0] is the top, layers[n - 1] the bottom driver */
        struct layer layers[VBD_IMAGE_DEPTH_MAX];
};

static void stack_spec_free(struct stack_spec *ss)
{
        for (unsigned i = 0; i < ss->n; i++)
                free(ss->layers[i].values);
        free(ss->buf);
}

/* Find the driver named by p[0, len) ([a-z0-9_-]+); top: the caller's explicit driver. */
static int spec_driver(const char *spec, const char *p, size_t len, const struct vbd_driver *top,
                       const struct vbd_driver *const *extra, const struct vbd_driver **ret,
                       struct vbd_err *err)
{
        char name[DRIVER_NAME_MAX + 1], known[128];

        if (len == 0 || len > DRIVER_NAME_MAX)
                return vbd_err_set(err, -EINVAL, "image spec '%.64s': %s driver name", spec,
                                   len ? "overlong" : "missing");
        memcpy(name, p, len);
        name[len] = '\0';
        for (size_t i = 0; i < len; i++)
                if (!islower((unsigned char)name[i]) && !isdigit((unsigned char)name[i]) &&
                    name[i] != '_' && name[i] != '-')
                        return vbd_err_set(err, -EINVAL, "image spec '%.64s': bad driver name",
                                           spec);
        if (top) {
                if (strcmp(top->name, name) != 0)
                        return vbd_err_set(err, -EINVAL,
                                           "image spec '%.64s' is not for driver '%s'", spec,
                                           top->name);
                *ret = top;
        } else {
                *ret = NULL;
                for (; extra && *extra && !*ret; extra++)
                        if (strcmp((*extra)->name, name) == 0)
                                *ret = *extra;
                if (!*ret)
                        *ret = vbd_image_find_driver(name);
                if (!*ret) {
                        list_drivers(known, sizeof(known));
                        return vbd_err_set(err, -ENOENT,
                                           "unknown image driver '%s' (compiled in: %s)", name,
                                           known);
                }
        }
        if ((*ret)->abi != VBD_DRIVER_ABI)
                return vbd_err_set(err, -EPROTO, "%s: driver ABI %u, expected %u", name,
                                   (*ret)->abi, VBD_DRIVER_ABI);
        return 0;
}

/* Give key=value to the layer it names: "FILTER.key" to every layer named FILTER
 * (a driver's own name works too), a plain key to the bottom driver. */
static int spec_option(struct stack_spec *ss, char *key, const char *value, struct vbd_err *err)
{
        const char *dot = strchr(key, '.');
        unsigned from = ss->n - 1, to = ss->n, hits = 0;
        int r;

        if (dot) {
                from = 0;
                key[dot - key] = '\0';
        }
        for (unsigned i = from; i < to; i++) {
                struct layer *l = &ss->layers[i];

                if (dot && strcmp(l->drv->name, key) != 0)
                        continue;
                hits++;
                r = vbd_opts_parse(l->drv->opts, l->drv->nopts, dot ? dot + 1 : key, value,
                                   l->values, err);
                /* Unknown and repeated options are bad specs (-EINVAL) like any other. */
                if (r == -ENOENT) {
                        char known[128] = "";
                        size_t n = 0;

                        for (unsigned k = 0; k < l->drv->nopts && n < sizeof(known); k++)
                                n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s",
                                                      k ? ", " : "", l->drv->opts[k].name);
                        return vbd_err_set(err, -EINVAL, "%s: unknown option '%.64s' (options: %s)",
                                           l->drv->name, dot ? dot + 1 : key, n ? known : "none");
                }
                if (r == -EEXIST)
                        return vbd_err_set(err, -EINVAL, "%s: option '%.64s' given twice",
                                           l->drv->name, dot ? dot + 1 : key);
                if (r < 0)
                        return err_prefix(err, r, l->drv->name);
        }
        if (!hits)
                return vbd_err_set(err, -EINVAL, "unknown option '%.32s.%.64s': no layer '%.32s'",
                                   key, dot + 1, key);
        return 0;
}

/*
 * Split spec into its layers (filters down to one driver), the bottom's ARG
 * and the options, parsed with each layer's table; defaults applied.
 */
static int spec_parse(const char *spec, const struct vbd_driver *top,
                      const struct vbd_driver *const *extra, struct stack_spec *ss,
                      struct vbd_err *err)
{
        size_t len;
        char *p, *opts;
        unsigned nopts = 0;
        int r;

        if (!spec || !*spec)
                return vbd_err_set(err, -EINVAL, "empty image spec (expected DRIVER:ARG)");
        len = strnlen(spec, VBD_IMAGE_SPEC_MAX + 1);
        if (len > VBD_IMAGE_SPEC_MAX)
                return vbd_err_set(err, -ENAMETOOLONG, "image spec longer than %d bytes",
                                   VBD_IMAGE_SPEC_MAX);
        ss->buf = strdup(spec);
        if (!ss->buf)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        opts = strchr(ss->buf, ',');
        if (opts)
                *opts++ = '\0';

        for (p = ss->buf;;) {
                char *colon = strchr(p, ':');
                struct layer *l;

                if (!colon)
                        return vbd_err_set(err, -EINVAL, "image spec '%.64s': expected %s", spec,
                                           ss->n ? "FILTER:DRIVER:ARG" : "DRIVER:ARG");
                if (ss->n == VBD_IMAGE_DEPTH_MAX)
                        return vbd_err_set(err, -E2BIG, "image spec '%.64s': more than %d layers",
                                           spec, VBD_IMAGE_DEPTH_MAX);
                l = &ss->layers[ss->n];
                r = spec_driver(spec, p, (size_t)(colon - p), ss->n ? NULL : top, extra, &l->drv,
                                err);
                if (r < 0)
                        return r;
                l->spec = spec + (p - ss->buf);
                l->values = calloc(l->drv->nopts ? l->drv->nopts : 1, sizeof(*l->values));
                if (!l->values)
                        return vbd_err_set(err, -ENOMEM, "out of memory");
                ss->n++;
                p = colon + 1;
                if (!(l->drv->flags & VBD_DRIVER_FILTER)) {
                        ss->arg = p;
                        break;
                }
        }

        while (opts) {
                char *comma = strchr(opts, ','), *item = opts, *eq;

                if (comma)
                        *comma = '\0';
                opts = comma ? comma + 1 : NULL;
                if (!*item)
                        return vbd_err_set(err, -EINVAL, "%s: empty option (stray ',')",
                                           ss->layers[0].drv->name);
                eq = strchr(item, '=');
                if (!eq)
                        return vbd_err_set(err, -EINVAL,
                                           "%s: option '%.64s' needs a value (key=value)",
                                           ss->layers[ss->n - 1].drv->name, item);
                *eq = '\0';
                if (!*item || *item == '.' || item[strlen(item) - 1] == '.')
                        return vbd_err_set(err, -EINVAL, "option without a name ('%.32s=%.64s')",
                                           item, eq + 1);
                if (++nopts > VBD_IMAGE_KEYS_MAX)
                        return vbd_err_set(err, -E2BIG, "%s: more than %d options",
                                           ss->layers[0].drv->name, VBD_IMAGE_KEYS_MAX);
                r = spec_option(ss, item, eq + 1, err);
                if (r < 0)
                        return r;
        }
        for (unsigned i = 0; i < ss->n; i++) {
                const struct vbd_driver *drv = ss->layers[i].drv;

                r = vbd_opts_finish(drv->opts, drv->nopts, ss->layers[i].values, err);
                if (r < 0)
                        return err_prefix(err, r, drv->name);
        }
        return 0;
}
static int info_check(const struct vbd_image *img, struct vbd_info *info, struct vbd_err *err)
{
        const char *name = img->drv->name;

        if (!vbd_is_pow2(info->logical_block) || info->logical_block < 512)
                return vbd_err_set(err, -EINVAL, "%s: bad logical block size %u", name,
                                   info->logical_block);
        if (info->size % info->logical_block)
                return vbd_err_set(err, -EINVAL,
                                   "%s: size %llu is not a multiple of the block size %u", name,
                                   (unsigned long long)info->size, info->logical_block);
        if (info->size > INT64_MAX)
                return vbd_err_set(err, -EFBIG, "%s: size %llu too large", name,
                                   (unsigned long long)info->size);
        if (info->max_io && info->max_io % info->logical_block)
                return vbd_err_set(err, -EINVAL, "%s: max_io %u not a multiple of block size %u",
                                   name, info->max_io, info->logical_block);
        if (!info->physical_block)
                info->physical_block = info->logical_block;
        if (!info->mem_align)
                info->mem_align = 1;
        if (!vbd_is_pow2(info->mem_align))
                return vbd_err_set(err, -EINVAL, "%s: bad memory alignment %u", name,
                                   info->mem_align);
        if (img->readonly)
                info->caps &= ~(uint32_t)(VBD_CAP_WRITE | VBD_CAP_FUA | VBD_CAP_DISCARD |
                                          VBD_CAP_WRITE_ZEROES);
        return 0;
}

static bool stack_has_drain(const struct vbd_image *img)
{
        for (; img; img = img->child)
                if (img->drv->drain || (img->backing && stack_has_drain(img->backing)))
                        return true;
        return false;
}

/* Close img, then its child and its backing image: no drain check. */
static void image_free(struct vbd_image *img)
{
        if (!img)
                return;
        if (img->opened)
                img->drv->close(img);
        vbd_lock_forget(&img->lock); /* its descriptor is closed */
        image_free(img->child);
        image_free(img->backing);
        free(img->spec);
        free(img->state);
        free(img);
}

/*
 * Open one layer: drv over child (NULL for a driver) from o; spec is its
 * name.  On failure child is left to the caller.  NULL + err.
 */
static struct vbd_image *image_start(const struct vbd_driver *drv, const char *spec,
                                     struct vbd_image *child, const struct vbd_opts *o,
                                     struct vbd_aio *aio, struct ev_loop *loop, struct vbd_err *err)
{
        struct vbd_image *img = calloc(1, sizeof(*img));
        int r;

        if (!img || !(img->spec = strdup(spec)) ||
            !(img->state = calloc(1, drv->state_size ? drv->state_size : 1))) {
                r = vbd_err_set(err, -ENOMEM, "out of memory");
                goto fail;
        }
        img->lock = (struct vbd_lock)VBD_LOCK_INIT;
        img->drv = drv;
        img->aio = aio;
        img->loop = loop;
        img->readonly = o->readonly;
        img->child = child;
        img->scratch_size = drv->io_scratch_size;
        if (child) /* the filter's own part, then the child's, 16-byte aligned */
                img->scratch_size = vbd_align_up(drv->io_scratch_size, 16) + child->scratch_size;
        r = drv->open(img, o, err);
        if (r < 0) {
                if (err && err->code == 0)
                        vbd_err_set(err, r, "%s: open failed: %s", drv->name, strerror(-r));
                goto fail;
        }
        img->opened = true;
        r = drv->get_info(img, &img->info);
        if (r >= 0)
                r = info_check(img, &img->info, err);
        else
                vbd_err_set(err, r, "%s: cannot get image information: %s", drv->name,
                            strerror(-r));
        if (r < 0)
                goto fail;
        vbd_debug("opened %s%s: %llu bytes, block %u, caps %#x%s", child ? "filter " : "",
                  img->spec, (unsigned long long)img->info.size, img->info.logical_block,
                  img->info.caps, o->readonly ? ", read-only" : "");
        return img;
fail:
        if (img) {
                img->child = NULL; /* the caller's */
                image_free(img);   /* closes what open() set up, and a backing image */
        }
        errno = -r;
        return NULL;
}

static struct vbd_image *open_stack(const struct vbd_driver *top,
                                    const struct vbd_driver *const *extra, const char *spec,
                                    bool readonly, struct vbd_aio *aio, struct ev_loop *loop,
                                    struct vbd_err *err)
{
        struct stack_spec ss = {0};
        struct vbd_image *img = NULL;
        int r;

        if (err) {
                err->code = 0;
                err->msg[0] = '\0';
        }
        r = spec_parse(spec, top, extra, &ss, err);
        if (r < 0)
                goto fail;
        /* The bottom driver first, then each filter over the one below. */
        for (unsigned i = ss.n; i-- > 0;) {
                const struct layer *l = &ss.layers[i];
                struct vbd_opts o = {
                    .arg = i == ss.n - 1 ? ss.arg : "",
                    .readonly = readonly,
                    .values = l->values,
                };
                struct vbd_image *next = image_start(l->drv, l->spec, img, &o, aio, loop, err);

                if (!next) {
                        r = -errno;
                        goto fail;
                }
                img = next;
        }
        stack_spec_free(&ss);
        return img;
fail:
        image_free(img);
        stack_spec_free(&ss);
        errno = -r;
        return NULL;
}

struct vbd_image *vbd_image_open_driver(const struct vbd_driver *drv, const char *spec,
                                        bool readonly, struct vbd_aio *aio, struct ev_loop *loop,
                                        struct vbd_err *err)
{
        return open_stack(drv, NULL, spec, readonly, aio, loop, err);
}

struct vbd_image *vbd_image_open_drivers(const struct vbd_driver *const *drivers, const char *spec,
                                         bool readonly, struct vbd_aio *aio, struct ev_loop *loop,
                                         struct vbd_err *err)
{
        return open_stack(NULL, drivers, spec, readonly, aio, loop, err);
}

struct vbd_image *vbd_image_open(const char *spec, bool readonly, struct vbd_aio *aio,
                                 struct ev_loop *loop, struct vbd_err *err)
{
        return open_stack(NULL, NULL, spec, readonly, aio, loop, err);
}

struct vbd_image *vbd_image_open_filter(const char *name, struct vbd_image *child,
                                        struct vbd_err *err)
{
        const struct vbd_driver *drv = vbd_image_find_driver(name);
        struct vbd_opt_value *values = NULL;
        struct vbd_image *img = NULL;
        char *spec = NULL;
        int r;

        if (err) {
                err->code = 0;
                err->msg[0] = '\0';
        }
        if (!drv || !(drv->flags & VBD_DRIVER_FILTER) || drv->abi != VBD_DRIVER_ABI) {
                r = vbd_err_set(err, drv ? -EINVAL : -ENOENT, "'%.64s' is not a filter%s", name,
                                drv ? "" : " compiled in");
                goto out;
        }
        values = calloc(drv->nopts ? drv->nopts : 1, sizeof(*values));
        if (!values || asprintf(&spec, "%s:%s", drv->name, child->spec) < 0) {
                spec = NULL;
                r = vbd_err_set(err, -ENOMEM, "out of memory");
                goto out;
        }
        r = vbd_opts_finish(drv->opts, drv->nopts, values, err);
        if (r < 0) {
                r = err_prefix(err, r, drv->name);
                goto out;
        }
        img = image_start(
            drv, spec, child,
            &(struct vbd_opts){.arg = "", .readonly = child->readonly, .values = values},
            child->aio, child->loop, err);
        r = img ? 0 : -errno;
out:
        free(values);
        free(spec);
        errno = -r;
        return img;
}

struct vbd_image *vbd_image_open_backing(struct vbd_image *img, const char *spec,
                                         struct vbd_err *err)
{
        if (img->backing) {
                vbd_err_set(err, -EEXIST, "%s: already has a backing image", img->drv->name);
                errno = EEXIST;
                return NULL;
        }
        img->backing = open_stack(NULL, NULL, spec, true, img->aio, img->loop, err);
        return img->backing;
}

int vbd_image_lock(struct vbd_image *img, int fd, const char *path, enum vbd_tristate mode,
                   uint32_t perm, uint32_t unshared, struct vbd_err *err)
{
        return vbd_lock_take(&img->lock, fd, path, mode, perm, unshared, err);
}

void vbd_image_unlock_all(struct vbd_image *img)
{
        for (; img; img = img->child) {
                vbd_lock_release(&img->lock);
                vbd_image_unlock_all(img->backing);
        }
}

int vbd_image_relock_all(struct vbd_image *img, struct vbd_err *err)
{
        int r = 0;

        for (; img; img = img->child) {
                int q = vbd_lock_retake(&img->lock, r < 0 ? NULL : err);

                if (q < 0 && r == 0)
                        r = q;
                q = vbd_image_relock_all(img->backing, r < 0 ? NULL : err);
                if (q < 0 && r == 0)
                        r = q;
        }
        return r;
}

struct vbd_image *vbd_image_backing(struct vbd_image *img)
{
        return img->backing;
}

const struct vbd_driver *vbd_image_driver(const struct vbd_image *img)
{
        return img->drv;
}

struct vbd_image *vbd_image_child(struct vbd_image *img)
{
        return img->child;
}

void *vbd_image_child_scratch(struct vbd_image *img, void *scratch)
{
        return (char *)scratch + vbd_align_up(img->drv->io_scratch_size, 16);
}

struct vbd_image *vbd_image_find_layer(struct vbd_image *img, const char *name)
{
        for (; img; img = img->child)
                if (strcmp(img->drv->name, name) == 0)
                        return img;
        return NULL;
}

/*
 * Draining runs top down: the layer's own drain(), then (once it reported
 * drained) its child's, then its backing image's, then done.  stage says
 * which of these comes next.
 */
static void drain_next(struct vbd_image *img);

static void drain_sub_done(void *opaque)
{
        drain_next(opaque);
}

static void drain_next(struct vbd_image *img)
{
        struct vbd_image *next = NULL;
        void (*done)(void *);

        while (!next && img->drain_stage < 3) {
                unsigned stage = img->drain_stage++;

                next = stage == 1 ? img->child : stage == 2 ? img->backing : NULL;
        }
        if (next) {
                vbd_image_drain(next, drain_sub_done, img);
                return;
        }
        done = img->drain_done;
        img->drain_stage = 0;
        img->drain_done = NULL;
        img->drained = true;
        done(img->drain_opaque);
}

void vbd_image_drain(struct vbd_image *img, void (*done)(void *opaque), void *opaque)
{
        assert(done && img->drain_stage == 0);
        img->drain_done = done;
        img->drain_opaque = opaque;
        img->drained = false; /* stage 0: waiting for this layer's vbd_image_drained() */
        if (img->drv->drain)
                img->drv->drain(img);
        else
                vbd_image_drained(img);
}

void vbd_image_drained(struct vbd_image *img)
{
        /* Once per drain(), from the driver being drained. */
        assert(img->drain_done && img->drain_stage == 0);
        img->drain_stage = img->drain_top_only ? 3 : 1;
        img->drain_top_only = false;
        drain_next(img);
}

void vbd_image_drain_top(struct vbd_image *img, void (*done)(void *opaque), void *opaque)
{
        img->drain_top_only = true;
        vbd_image_drain(img, done, opaque);
}

bool vbd_image_is_drained(const struct vbd_image *img)
{
        return img->drained;
}

struct vbd_image *vbd_image_unwrap(struct vbd_image *img)
{
        struct vbd_image *child = img->child;

        assert(img->drained || !img->drv->drain);
        img->child = NULL;
        image_free(img);
        return child;
}

static void drain_close_done(void *opaque)
{
        vbd_image_close(opaque);
}

void vbd_image_drain_close(struct vbd_image *img)
{
        if (img)
                vbd_image_drain(img, drain_close_done, img);
}

void vbd_image_close(struct vbd_image *img)
{
        if (!img)
                return;
        /* Background work must have stopped: vbd_image_drain() first. */
        assert(img->drained || !stack_has_drain(img));
        image_free(img);
}

const struct vbd_info *vbd_image_info(const struct vbd_image *img)
{
        return &img->info;
}

size_t vbd_image_io_scratch_size(const struct vbd_image *img)
{
        return img->scratch_size;
}

bool vbd_image_readonly(const struct vbd_image *img)
{
        return img->readonly;
}

void *vbd_image_state(struct vbd_image *img)
{
        return img->state;
}

struct vbd_aio *vbd_image_aio(struct vbd_image *img)
{
        return img->aio;
}

struct ev_loop *vbd_image_loop(struct vbd_image *img)
{
        return img->loop;
}

const char *vbd_image_name(const struct vbd_image *img)
{
        return img->spec;
}

void vbd_io_complete(struct vbd_io *io, int status)
{
        io->done(io, status);
}

static const uint32_t op_cap[_VBD_OP_MAX] = {
    [VBD_OP_READ] = 0,
    [VBD_OP_WRITE] = VBD_CAP_WRITE,
    [VBD_OP_FLUSH] = VBD_CAP_FLUSH,
    [VBD_OP_DISCARD] = VBD_CAP_DISCARD,
    [VBD_OP_WRITE_ZEROES] = VBD_CAP_WRITE_ZEROES,
};

/* 0: pass to the driver, 1: nothing to do (complete with 0), < 0: reject. */
static int image_check(const struct vbd_image *img, const struct vbd_io *io)
{
        const struct vbd_info *info = &img->info;
        uint64_t total = 0;

        if ((unsigned)io->op >= _VBD_OP_MAX)
                return -EINVAL;
        if (io->flags & ~(uint32_t)(VBD_IO_FUA | VBD_IO_MAY_UNMAP))
                return -EINVAL;
        if ((io->flags & VBD_IO_FUA) && io->op != VBD_OP_WRITE)
                return -EINVAL;
        if ((io->flags & VBD_IO_MAY_UNMAP) && io->op != VBD_OP_WRITE_ZEROES)
                return -EINVAL;
        if (img->readonly &&
            (io->op == VBD_OP_WRITE || io->op == VBD_OP_DISCARD || io->op == VBD_OP_WRITE_ZEROES))
                return -EROFS;
        if ((info->caps & op_cap[io->op]) != op_cap[io->op])
                return -EOPNOTSUPP;
        if ((io->flags & VBD_IO_FUA) && !(info->caps & VBD_CAP_FUA))
                return -EOPNOTSUPP;

        if (io->op == VBD_OP_FLUSH)
                return io->offset || io->len || io->iovcnt ? -EINVAL : 0;

        if (io->len > info->size || io->offset > info->size - io->len)
                return -EINVAL;
        if ((io->offset | io->len) & (info->logical_block - 1))
                return -EINVAL;

        if (io->op != VBD_OP_READ && io->op != VBD_OP_WRITE) {
                if (io->iovcnt)
                        return -EINVAL;
                return io->len == 0 ? 1 : 0;
        }
        if (io->len == 0)
                return -EINVAL;
        if (info->max_io && io->len > info->max_io)
                return -EINVAL;
        if (!io->iov || io->iovcnt == 0 || io->iovcnt > IOV_MAX)
                return -EINVAL;
        for (unsigned i = 0; i < io->iovcnt; i++) {
                if (io->iov[i].iov_len > io->len - total)
                        return -EINVAL;
                total += io->iov[i].iov_len;
        }
        return total == io->len ? 0 : -EINVAL;
}

void vbd_image_submit(struct vbd_image *img, struct vbd_io *io)
{
        int r;

        assert(io && io->done);
        assert(io->scratch || img->scratch_size == 0);

        r = image_check(img, io);
        if (r < 0) {
                vbd_debug("%s: rejected %s offset %llu len %llu flags %#x: %s", img->spec,
                          vbd_op_name(io->op), (unsigned long long)io->offset,
                          (unsigned long long)io->len, io->flags, strerror(-r));
                vbd_io_complete(io, r);
                return;
        }
        if (r == 1) {
                vbd_io_complete(io, 0);
                return;
        }
        img->drv->submit(img, io);
}

/* Backing-file hops below img, through its filters' children. */
static uint32_t chain_depth(const struct vbd_image *img)
{
        uint32_t d = 0;

        while (img) {
                if (img->backing) {
                        d++;
                        img = img->backing;
                } else {
                        img = img->child;
                }
        }
        return d;
}

int vbd_image_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                           struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        uint64_t total = 0;
        uint32_t depth;
        unsigned n = 0;
        int r;

        if (!len || !max || len > img->info.size || offset > img->info.size - len)
                return -EINVAL;
        if (!img->drv->block_status && img->child && img->child->info.size == img->info.size)
                return vbd_image_block_status(img->child, offset, len, ret, max, ret_n);
        if (!img->drv->block_status) {
                ret[0] = (struct vbd_extent){.len = len, .flags = 0};
                *ret_n = 1;
                return 0;
        }
        r = img->drv->block_status(img, offset, len, ret, max, &n);
        if (r < 0)
                return r;
        if (n == 0 || n > max)
                goto bad;
        depth = chain_depth(img);
        for (unsigned i = 0; i < n; i++) {
                if (ret[i].len == 0 || ret[i].len > len - total ||
                    (ret[i].flags & ~(uint32_t)(VBD_EXTENT_HOLE | VBD_EXTENT_ZERO)) ||
                    (ret[i].depth > depth && ret[i].depth != VBD_EXTENT_DEPTH_NONE))
                        goto bad;
                total += ret[i].len;
        }
        *ret_n = n;
        return 0;
bad:
        vbd_warn("%s: malformed block status for offset %llu len %llu", img->spec,
                 (unsigned long long)offset, (unsigned long long)len);
        return -EIO;
}

const char *vbd_image_bitmap_name(struct vbd_image *img, unsigned i)
{
        for (; img; img = img->child) {
                const char *name;

                if (!img->drv->bitmap_name)
                        continue;
                for (unsigned k = 0; (name = img->drv->bitmap_name(img, k)); k++)
                        if (i-- == 0)
                                return name;
        }
        return NULL;
}

int vbd_image_bitmap_status(struct vbd_image *img, const char *name, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        uint64_t size = img->info.size;

        if (!len || !max || len > size || offset > size - len)
                return -EINVAL;
        for (; img; img = img->child) {
                uint64_t total = 0;
                unsigned n = 0;
                int r;

                if (!img->drv->bitmap_status || img->info.size != size)
                        continue;
                r = img->drv->bitmap_status(img, name, offset, len, ret, max, &n);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return r;
                if (n == 0 || n > max)
                        goto bad;
                for (unsigned i = 0; i < n; i++) {
                        if (ret[i].len == 0 || ret[i].len > len - total ||
                            (ret[i].flags & ~(uint32_t)VBD_EXTENT_DIRTY))
                                goto bad;
                        total += ret[i].len;
                }
                *ret_n = n;
                return 0;
        bad:
                vbd_warn("%s: malformed bitmap status for offset %llu len %llu", img->spec,
                         (unsigned long long)offset, (unsigned long long)len);
                return -EIO;
        }
        return -ENOENT;
}

int vbd_image_bitmap_add(struct vbd_image *img, const char *name, struct vbd_err *err)
{
        for (; img; img = img->child)
                if (img->drv->bitmap_add)
                        return img->drv->bitmap_add(img, name, err);
        return vbd_err_set(err, -EOPNOTSUPP, "no change tracker in the image stack");
}

int vbd_image_bitmap_remove(struct vbd_image *img, const char *name, struct vbd_err *err)
{
        for (; img; img = img->child) {
                int r;

                if (!img->drv->bitmap_remove)
                        continue;
                r = img->drv->bitmap_remove(img, name, err);
                if (r != -ENOENT)
                        return r;
        }
        return vbd_err_set(err, -ENOENT, "no checkpoint %s", name);
}

int vbd_image_stored_bitmaps_put(struct vbd_image *img, const struct vbd_stored_bitmap *b,
                                 unsigned n, struct vbd_err *err)
{
        for (; img; img = img->child)
                if (img->drv->stored_bitmaps_put)
                        return img->drv->stored_bitmaps_put(img, b, n, err);
        return vbd_err_set(err, -EOPNOTSUPP, "the image format keeps no bitmaps");
}

int vbd_image_stored_bitmap_get(struct vbd_image *img, const char *name,
                                struct vbd_stored_bitmap *ret, struct vbd_err *err)
{
        for (; img; img = img->child)
                if (img->drv->stored_bitmap_get)
                        return img->drv->stored_bitmap_get(img, name, ret, err);
        return vbd_err_set(err, -EOPNOTSUPP, "the image format keeps no bitmaps");
}

int vbd_image_create(const char *driver, const struct vbd_create *c, struct vbd_err *err)
{
        const struct vbd_driver *drv = vbd_image_find_driver(driver);

        if (!drv)
                return vbd_err_set(err, -ENOENT, "no driver %s", driver);
        if (!drv->create)
                return vbd_err_set(err, -EOPNOTSUPP, "%s cannot create images", driver);
        if (!c->path || !c->path[0] || c->size == 0)
                return vbd_err_set(err, -EINVAL, "create: a path and a size are needed");
        if (c->cluster_size & (c->cluster_size - 1))
                return vbd_err_set(err, -EINVAL, "create: cluster size %u is not a power of two",
                                   c->cluster_size);
        return drv->create(c, err);
}

void vbd_image_list_drivers(FILE *f)
{
        for (const struct vbd_driver *const *d = vbd_drivers; *d; d++) {
                fprintf(f, "  %-12s %s%s\n", (*d)->name,
                        (*d)->flags & VBD_DRIVER_FILTER ? "filter: " : "", (*d)->description);
                if ((*d)->usage)
                        fprintf(f, "               usage: %s\n", (*d)->usage);
        }
}
