/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * passthrough: the filter that does nothing, the one to copy.
 *
 *   passthrough:CHILDSPEC[,passthrough.trace=on|off]
 *
 * e.g. "passthrough:raw:/srv/disk.img,direct=off,passthrough.trace=on".  The
 * core opens CHILDSPEC first (the filter gets an empty arg and finds it with
 * vbd_image_child()); every request goes to the child unchanged, with the
 * child's part of the io scratch, and completes when the child's does.  The
 * image's information and block status are the child's.  trace=on logs each
 * request at debug level (topic drv.passthrough) and counts what is in
 * flight, which the drain waits for: a filter with background work of its
 * own would stop it there.
 */
#define VBD_LOG_TOPIC "drv.passthrough"
#include <stdint.h>

#include "vbd/driver.h"
#include "vbd/log.h"
#include "vbd/macro.h"

enum { OPT_TRACE };
static const struct vbd_opt_desc pt_opts[] = {
    [OPT_TRACE] = VBD_OPT_BOOL_DEF("trace", "off", "log every request at debug level"),
};

struct pt_state {
        struct vbd_image *child;
        bool trace;
        bool draining;
        uint64_t inflight; /* requests passed down and not yet back */
};

/* Per io: the filter's own part of the scratch; the child's follows it. */
struct pt_io {
        struct vbd_io child_io; /* what the child sees */
        struct vbd_io *io;      /* ours, completed when child_io is */
        struct vbd_image *img;
};

static int pt_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct pt_state *s = vbd_image_state(img);

        s->child = vbd_image_child(img); /* open already: the core did it */
        s->trace = o->values[OPT_TRACE].b;
        return 0;
}

static int pt_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct pt_state *s = vbd_image_state(img);

        *ret_info = *vbd_image_info(s->child);
        return 0;
}

static void pt_child_done(struct vbd_io *child_io, int status)
{
        struct pt_io *p = vbd_container_of(child_io, struct pt_io, child_io);
        struct pt_state *s = vbd_image_state(p->img);
        struct vbd_io *io = p->io;

        if (s->trace)
                vbd_debug("%s: %s offset %llu len %llu done: %d", vbd_image_name(p->img),
                          vbd_op_name(io->op), (unsigned long long)io->offset,
                          (unsigned long long)io->len, status);
        s->inflight--;
        vbd_io_complete(io, status);
        /* Guest I/O is over before drain() is called; this only matters to a
         * filter whose own work (not the guest's) is still in flight. */
        if (s->draining && s->inflight == 0) {
                s->draining = false;
                vbd_image_drained(p->img);
        }
}

static void pt_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct pt_state *s = vbd_image_state(img);
        struct pt_io *p = io->scratch;

        if (s->trace)
                vbd_debug("%s: %s offset %llu len %llu flags %#x", vbd_image_name(img),
                          vbd_op_name(io->op), (unsigned long long)io->offset,
                          (unsigned long long)io->len, io->flags);
        p->io = io;
        p->img = img;
        p->child_io = *io;
        p->child_io.done = pt_child_done;
        p->child_io.opaque = p;
        p->child_io.scratch = vbd_image_child_scratch(img, io->scratch);
        s->inflight++;
        /* The child may complete inline: p and io are not touched afterwards. */
        vbd_image_submit(s->child, &p->child_io);
}

static int pt_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                           struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct pt_state *s = vbd_image_state(img);

        return vbd_image_block_status(s->child, offset, len, ret, max, ret_n);
}

static void pt_drain(struct vbd_image *img)
{
        struct pt_state *s = vbd_image_state(img);

        if (s->inflight == 0) {
                vbd_image_drained(img); /* inline is fine */
                return;
        }
        s->draining = true; /* pt_child_done reports it */
}

static void pt_close(struct vbd_image *img)
{
        /* Nothing of our own to undo: the core closes the child afterwards. */
}

const struct vbd_driver vbd_driver_passthrough = {
    .abi = VBD_DRIVER_ABI,
    .flags = VBD_DRIVER_FILTER,
    .name = "passthrough",
    .description = "passes everything to its child (the example to copy)",
    .usage = "passthrough:CHILDSPEC[,passthrough.trace=on|off]",
    .opts = pt_opts,
    .nopts = VBD_ARRAY_SIZE(pt_opts),
    .state_size = sizeof(struct pt_state),
    .io_scratch_size = sizeof(struct pt_io),
    .open = pt_open,
    .get_info = pt_get_info,
    .submit = pt_submit,
    .block_status = pt_block_status,
    .drain = pt_drain,
    .close = pt_close,
};
