/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Images: spec parsing, driver lookup, the validating dispatcher and the
 * services drivers get from the core (driver.h).
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
#include "util/parse.h"
#include "vbd/log.h"

#define DRIVER_NAME_MAX 32

struct vbd_image {
        const struct vbd_driver *drv;
        struct vbd_aio *aio;
        bool readonly;
        struct vbd_info info;
        void *state;
        char *spec;
        size_t scratch_size;     /* per io: the driver's, plus the child's when stacked */
        struct vbd_image *child; /* stacked drivers (vbd_image_wrap): the image below */
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

const char *vbd_opts_get(const struct vbd_opts *o, const char *key)
{
        for (unsigned i = 0; i < o->nkeys; i++)
                if (strcmp(o->keys[i], key) == 0)
                        return o->values[i];
        return NULL;
}

const struct vbd_driver *vbd_image_find_driver(const char *name)
{
        for (const struct vbd_driver *const *d = vbd_drivers; *d; d++)
                if (strcmp((*d)->name, name) == 0)
                        return *d;
        return NULL;
}

static void list_names(char *buf, size_t size, const char *const *names)
{
        size_t n = 0;

        buf[0] = '\0';
        for (; names && *names && n < size; names++)
                n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? ", " : "", *names);
        if (!buf[0])
                snprintf(buf, size, "none");
}

static bool key_known(const struct vbd_driver *drv, const char *key)
{
        for (const char *const *k = drv->keys; k && *k; k++)
                if (strcmp(*k, key) == 0)
                        return true;
        return false;
}

/*
 * Split buf (the spec after "driver:", modified in place) into arg and
 * options, checked against drv->keys.
 */
static int spec_parse_opts(const struct vbd_driver *drv, char *buf, struct vbd_opts *o,
                           const char **keys, const char **values, struct vbd_err *err)
{
        char *p, *item, known[128];

        o->arg = buf;
        o->nkeys = 0;
        o->keys = keys;
        o->values = values;
        p = strchr(buf, ',');
        if (!p)
                return 0;
        *p++ = '\0';
        list_names(known, sizeof(known), drv->keys);
        for (;;) {
                char *comma = strchr(p, ','), *eq;

                if (comma)
                        *comma = '\0';
                item = p;
                if (!*item)
                        return vbd_err_set(err, -EINVAL, "%s: empty option (stray ',')", drv->name);
                eq = strchr(item, '=');
                if (!eq)
                        return vbd_err_set(err, -EINVAL,
                                           "%s: option '%.64s' needs a value (key=value)",
                                           drv->name, item);
                *eq = '\0';
                if (!*item)
                        return vbd_err_set(err, -EINVAL, "%s: option without a name ('=%.64s')",
                                           drv->name, eq + 1);
                if (!key_known(drv, item))
                        return vbd_err_set(err, -EINVAL, "%s: unknown option '%.64s' (options: %s)",
                                           drv->name, item, known);
                for (unsigned i = 0; i < o->nkeys; i++)
                        if (strcmp(keys[i], item) == 0)
                                return vbd_err_set(err, -EINVAL, "%s: option '%.64s' given twice",
                                                   drv->name, item);
                if (o->nkeys == VBD_IMAGE_KEYS_MAX)
                        return vbd_err_set(err, -E2BIG, "%s: more than %d options", drv->name,
                                           VBD_IMAGE_KEYS_MAX);
                keys[o->nkeys] = item;
                values[o->nkeys] = eq + 1;
                o->nkeys++;
                if (!comma)
                        return 0;
                p = comma + 1;
        }
}

static bool is_pow2(uint32_t v)
{
        return v && !(v & (v - 1));
}

static int info_check(const struct vbd_image *img, struct vbd_info *info, struct vbd_err *err)
{
        const char *name = img->drv->name;

        if (!is_pow2(info->logical_block) || info->logical_block < 512)
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
        if (!is_pow2(info->mem_align))
                return vbd_err_set(err, -EINVAL, "%s: bad memory alignment %u", name,
                                   info->mem_align);
        if (img->readonly)
                info->caps &= ~(uint32_t)(VBD_CAP_WRITE | VBD_CAP_FUA | VBD_CAP_DISCARD |
                                          VBD_CAP_WRITE_ZEROES);
        return 0;
}

/* Allocate img's spec copy and driver state, open it, get and check its
 * information.  0, or -errno with err set and nothing left open. */
static int image_start(struct vbd_image *img, const char *spec, const struct vbd_opts *o,
                       struct vbd_err *err)
{
        const struct vbd_driver *drv = img->drv;
        int r;

        img->spec = strdup(spec);
        img->state = calloc(1, drv->state_size ? drv->state_size : 1);
        if (!img->spec || !img->state)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        r = drv->open(img, o, err);
        if (r < 0) {
                if (err && err->code == 0)
                        vbd_err_set(err, r, "%s: open failed: %s", drv->name, strerror(-r));
                return r;
        }
        r = drv->get_info(img, &img->info);
        if (r >= 0)
                r = info_check(img, &img->info, err);
        else
                vbd_err_set(err, r, "%s: cannot get image information: %s", drv->name,
                            strerror(-r));
        if (r < 0)
                drv->close(img);
        return r < 0 ? r : 0;
}

/* Free what image_start() allocated, after it failed. */
static void image_discard(struct vbd_image *img)
{
        if (!img)
                return;
        free(img->spec);
        free(img->state);
        free(img);
}

struct vbd_image *vbd_image_open_driver(const struct vbd_driver *drv, const char *spec,
                                        bool readonly, struct vbd_aio *aio, struct vbd_err *err)
{
        const char *keys[VBD_IMAGE_KEYS_MAX], *values[VBD_IMAGE_KEYS_MAX];
        struct vbd_image *img = NULL;
        struct vbd_opts o = {0};
        const char *colon;
        char name[DRIVER_NAME_MAX + 1], *buf = NULL;
        size_t len, nlen;
        int r;

        if (err) {
                err->code = 0;
                err->msg[0] = '\0';
        }
        if (!spec || !*spec) {
                r = vbd_err_set(err, -EINVAL, "empty image spec (expected DRIVER:ARG)");
                goto fail;
        }
        len = strnlen(spec, VBD_IMAGE_SPEC_MAX + 1);
        if (len > VBD_IMAGE_SPEC_MAX) {
                r = vbd_err_set(err, -ENAMETOOLONG, "image spec longer than %d bytes",
                                VBD_IMAGE_SPEC_MAX);
                goto fail;
        }
        colon = memchr(spec, ':', len);
        if (!colon) {
                r = vbd_err_set(err, -EINVAL, "image spec '%.64s': expected DRIVER:ARG", spec);
                goto fail;
        }
        nlen = (size_t)(colon - spec);
        if (nlen == 0 || nlen > DRIVER_NAME_MAX) {
                r = vbd_err_set(err, -EINVAL, "image spec '%.64s': %s driver name", spec,
                                nlen ? "overlong" : "missing");
                goto fail;
        }
        memcpy(name, spec, nlen);
        name[nlen] = '\0';
        for (size_t i = 0; i < nlen; i++)
                if (!islower((unsigned char)name[i]) && !isdigit((unsigned char)name[i]) &&
                    name[i] != '_' && name[i] != '-') {
                        r = vbd_err_set(err, -EINVAL, "image spec '%.64s': bad driver name", spec);
                        goto fail;
                }
        if (!drv) {
                drv = vbd_image_find_driver(name);
                if (!drv) {
                        char known[128];
                        const char *names[16];
                        size_t n = 0;

                        for (const struct vbd_driver *const *d = vbd_drivers; *d && n < 15; d++)
                                names[n++] = (*d)->name;
                        names[n] = NULL;
                        list_names(known, sizeof(known), names);
                        r = vbd_err_set(err, -ENOENT, "unknown image driver '%s' (compiled in: %s)",
                                        name, known);
                        goto fail;
                }
        } else if (strcmp(drv->name, name) != 0) {
                r = vbd_err_set(err, -EINVAL, "image spec '%.64s' is not for driver '%s'", spec,
                                drv->name);
                goto fail;
        }
        if (drv->abi != VBD_DRIVER_ABI) {
                r = vbd_err_set(err, -EPROTO, "%s: driver ABI %u, expected %u", drv->name, drv->abi,
                                VBD_DRIVER_ABI);
                goto fail;
        }

        buf = strdup(colon + 1);
        img = calloc(1, sizeof(*img));
        if (!buf || !img) {
                r = vbd_err_set(err, -ENOMEM, "out of memory");
                goto fail;
        }
        r = spec_parse_opts(drv, buf, &o, keys, values, err);
        if (r < 0)
                goto fail;
        o.readonly = readonly;

        img->drv = drv;
        img->aio = aio;
        img->readonly = readonly;
        img->scratch_size = drv->io_scratch_size;
        r = image_start(img, spec, &o, err);
        if (r < 0)
                goto fail;
        free(buf);
        vbd_debug("opened %s: %llu bytes, block %u, caps %#x%s", img->spec,
                  (unsigned long long)img->info.size, img->info.logical_block, img->info.caps,
                  readonly ? ", read-only" : "");
        return img;

fail:
        free(buf);
        image_discard(img);
        errno = -r;
        return NULL;
}

struct vbd_image *vbd_image_open(const char *spec, bool readonly, struct vbd_aio *aio,
                                 struct vbd_err *err)
{
        return vbd_image_open_driver(NULL, spec, readonly, aio, err);
}

struct vbd_image *vbd_image_wrap(const struct vbd_driver *drv, struct vbd_image *child,
                                 struct vbd_err *err)
{
        struct vbd_image *img = calloc(1, sizeof(*img));
        struct vbd_opts o = {.arg = "", .readonly = child->readonly};
        int r;

        if (err) {
                err->code = 0;
                err->msg[0] = '\0';
        }
        if (!img || drv->abi != VBD_DRIVER_ABI) {
                r = vbd_err_set(err, img ? -EPROTO : -ENOMEM, "%s: cannot stack", drv->name);
                goto fail;
        }
        img->drv = drv;
        img->aio = child->aio;
        img->readonly = child->readonly;
        img->child = child;
        /* The driver's own part, then the child's, 16-byte aligned. */
        img->scratch_size = ((drv->io_scratch_size + 15) & ~(size_t)15) + child->scratch_size;
        r = image_start(img, child->spec, &o, err);
        if (r < 0)
                goto fail;
        return img;
fail:
        image_discard(img);
        errno = -r;
        return NULL;
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
        return (char *)scratch + ((img->drv->io_scratch_size + 15) & ~(size_t)15);
}

struct vbd_image *vbd_image_unwrap(struct vbd_image *img)
{
        struct vbd_image *child = img->child;

        img->child = NULL;
        vbd_image_close(img);
        return child;
}

void vbd_image_close(struct vbd_image *img)
{
        if (!img)
                return;
        img->drv->close(img);
        free(img->spec);
        free(img->state);
        free(img);
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

const char *vbd_image_name(struct vbd_image *img)
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

int vbd_image_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                           struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        uint64_t total = 0;
        unsigned n = 0;
        int r;

        if (!len || !max || len > img->info.size || offset > img->info.size - len)
                return -EINVAL;
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
        for (unsigned i = 0; i < n; i++) {
                if (ret[i].len == 0 || ret[i].len > len - total ||
                    (ret[i].flags & ~(uint32_t)(VBD_EXTENT_HOLE | VBD_EXTENT_ZERO)))
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

void vbd_image_list_drivers(FILE *f)
{
        for (const struct vbd_driver *const *d = vbd_drivers; *d; d++) {
                fprintf(f, "  %-8s %s\n", (*d)->name, (*d)->description);
                if ((*d)->usage)
                        fprintf(f, "           usage: %s\n", (*d)->usage);
        }
}
