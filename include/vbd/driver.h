/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image driver interface.
 *
 * Lifecycle: the core allocates state_size zeroed bytes (vbd_image_state()),
 * calls open(), then get_info() once; submit() any number of times; close()
 * only when no I/O is in flight.  Every callback runs on the VBD's loop
 * thread.  A driver that needs a worker thread hands results back with
 * ev_async.
 *
 * Completion: every io passed to submit() completes exactly once, through
 * vbd_io_complete(io, status), never by calling io->done directly.  Inline
 * completion from inside submit() is allowed.
 *
 * Errors: int functions return >= 0 or -errno.  open() also fills err with a
 * human-readable message via vbd_err_set().
 *
 * Data I/O goes through the daemon's AIO engine (vbd_aio_* in aio.h); drivers
 * never call io_submit themselves.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vbd/io.h"

#define VBD_DRIVER_ABI 1

enum vbd_cap {
        VBD_CAP_WRITE = 1 << 0,
        VBD_CAP_FLUSH = 1 << 1,
        VBD_CAP_FUA = 1 << 2,
        VBD_CAP_DISCARD = 1 << 3,
        VBD_CAP_WRITE_ZEROES = 1 << 4,
};

struct vbd_info {
        uint64_t size;           /* bytes */
        uint32_t caps;           /* enum vbd_cap */
        uint32_t logical_block;  /* bytes, power of two >= 512 */
        uint32_t physical_block; /* bytes */
        uint32_t mem_align;      /* buffer alignment the driver needs */
        uint32_t max_io;         /* bytes per io, 0 = no limit */
        uint32_t discard_granularity, discard_alignment;
};

/* An error with a message, for control paths (open, config, ctl). */
struct vbd_err {
        int code; /* -errno */
        char msg[256];
};

int vbd_err_set(struct vbd_err *err, int code, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

struct vbd_image;
struct vbd_aio;

/* Parsed image options: "driver:arg[,key=value...]" (see image.c). */
struct vbd_opts {
        const char *arg;      /* the part after "driver:" up to the first ',' */
        bool readonly;        /* the VBD is read-only: open for reading only */
        unsigned nkeys;
        const char *const *keys, *const *values;
};

struct vbd_driver {
        unsigned abi; /* VBD_DRIVER_ABI */
        const char *name, *description, *usage;
        size_t state_size;      /* per image, zeroed, vbd_image_state() */
        size_t io_scratch_size; /* per io, io->scratch */

        int (*open)(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err);
        int (*get_info)(struct vbd_image *img, struct vbd_info *ret_info);
        void (*submit)(struct vbd_image *img, struct vbd_io *io);
        void (*close)(struct vbd_image *img);
};

/* Services the core gives drivers. */
void *vbd_image_state(struct vbd_image *img);
struct vbd_aio *vbd_image_aio(struct vbd_image *img);
const char *vbd_image_name(struct vbd_image *img);
void vbd_io_complete(struct vbd_io *io, int status);
