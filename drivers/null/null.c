/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * null: an image of a given size that reads zeroes and discards writes.
 * For benchmarks of the rest of the stack and for tests.  Everything
 * completes inline.  Block status: all of it is a hole that reads as zeroes.
 */
#define VBD_LOG_TOPIC "drv.null"
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "vbd/driver.h"
#include "vbd/log.h"

#define NULL_BLOCK 512

struct null_state {
        uint64_t size;
        bool readonly;
};

static int null_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct null_state *s = vbd_image_state(img);
        uint64_t size;
        int r;

        if (!o->arg || !*o->arg)
                return vbd_err_set(err, -EINVAL, "null: missing size (null:SIZE, e.g. null:10G)");
        r = vbd_parse_size(o->arg, &size);
        if (r < 0)
                return vbd_err_set(err, r, "null: bad size '%.64s' (NUMBER[K|M|G|T])", o->arg);
        if (size == 0 || size % NULL_BLOCK)
                return vbd_err_set(err, -EINVAL, "null: size %llu is not a positive multiple of %d",
                                   (unsigned long long)size, NULL_BLOCK);
        if (size > INT64_MAX)
                return vbd_err_set(err, -EFBIG, "null: size %llu too large",
                                   (unsigned long long)size);
        s->size = size;
        s->readonly = o->readonly;
        return 0;
}

static int null_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct null_state *s = vbd_image_state(img);

        *ret_info = (struct vbd_info){
            .size = s->size,
            .caps = VBD_CAP_FLUSH,
            .logical_block = NULL_BLOCK,
            .physical_block = NULL_BLOCK,
            .mem_align = NULL_BLOCK,
            .max_io = 0,
            .discard_granularity = NULL_BLOCK,
        };
        if (!s->readonly)
                ret_info->caps |=
                    VBD_CAP_WRITE | VBD_CAP_FUA | VBD_CAP_DISCARD | VBD_CAP_WRITE_ZEROES;
        return 0;
}

static void null_submit(struct vbd_image *img, struct vbd_io *io)
{
        switch (io->op) {
        case VBD_OP_READ:
                for (unsigned i = 0; i < io->iovcnt; i++)
                        memset(io->iov[i].iov_base, 0, io->iov[i].iov_len);
                vbd_io_complete(io, 0);
                return;
        case VBD_OP_WRITE:
        case VBD_OP_FLUSH:
        case VBD_OP_DISCARD:
        case VBD_OP_WRITE_ZEROES:
                vbd_io_complete(io, 0);
                return;
        default:
                vbd_io_complete(io, -EOPNOTSUPP);
                return;
        }
}

/* Everything reads as zeroes and nothing is stored: one hole. */
static int null_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                             struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        ret[0] = (struct vbd_extent){.len = len, .flags = VBD_EXTENT_HOLE | VBD_EXTENT_ZERO};
        *ret_n = 1;
        return 0;
}

static void null_close(struct vbd_image *img)
{
}

const struct vbd_driver vbd_driver_null = {
    .abi = VBD_DRIVER_ABI,
    .name = "null",
    .description = "reads zeroes, discards writes (benchmarks, tests)",
    .usage = "null:SIZE (bytes, or with a K/M/G/T suffix; a multiple of 512)",
    .state_size = sizeof(struct null_state),
    .io_scratch_size = 0,
    .open = null_open,
    .get_info = null_get_info,
    .submit = null_submit,
    .close = null_close,
    .block_status = null_block_status,
};
