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
struct vbd_job_type;

/* One extent of a block status answer (block_status, vbd_image_block_status). */
enum vbd_extent_flag {
        VBD_EXTENT_HOLE = 1 << 0, /* not allocated: writing there may fail with ENOSPC */
        VBD_EXTENT_ZERO = 1 << 1, /* reads as zeroes */
};

struct vbd_extent {
        uint64_t len;   /* bytes, > 0 */
        uint32_t flags; /* enum vbd_extent_flag */
};

/* Parsed image options: "driver:arg[,key=value...]" (see image.c). */
struct vbd_opts {
        const char *arg; /* the part after "driver:" up to the first ',' */
        bool readonly;   /* the VBD is read-only: open for reading only */
        unsigned nkeys;
        const char *const *keys, *const *values;
};

struct vbd_driver {
        unsigned abi; /* VBD_DRIVER_ABI */
        /* name: the spec prefix ("raw").  description: one line for --help.
         * usage: the spec syntax, e.g. "raw:PATH[,direct=on|off|auto]". */
        const char *name, *description, *usage;
        size_t state_size;      /* per image, zeroed, vbd_image_state() */
        size_t io_scratch_size; /* per io, io->scratch */

        /*
         * open: set up the image from o (o->arg and the key=value options,
         * already checked against keys).  Open read-only when o->readonly.
         * Returns 0 or -errno with err set (vbd_err_set).  o and its strings
         * are valid only during the call.  On failure close() is not called,
         * so open() undoes what it did.
         */
        int (*open)(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err);
        /* get_info: called once after open; fills every field. 0 or -errno. */
        int (*get_info)(struct vbd_image *img, struct vbd_info *ret_info);
        /* submit: start io (already validated by vbd_image_submit); complete it
         * exactly once with vbd_io_complete(), inline or later. */
        void (*submit)(struct vbd_image *img, struct vbd_io *io);
        /* close: undo open; never called with I/O in flight. */
        void (*close)(struct vbd_image *img);

        /*
         * block_status (optional): describe [offset, offset + len) as up to
         * max consecutive extents starting at offset, in *ret, their count in
         * *ret_n (>= 1).  They may cover less than len (the caller asks again
         * for the rest) but not more.  Synchronous, on the loop thread: keep
         * it cheap (SEEK_DATA, a metadata lookup).  The range is checked by
         * the core (inside the image, len > 0, max >= 1).  0 or -errno.
         * Without it the core reports one allocated extent (flags 0).
         */
        int (*block_status)(struct vbd_image *img, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n);

        /* Option keys accepted after the arg (NULL-terminated, NULL = none).
         * The core rejects any other key and duplicates before open(). */
        const char *const *keys;
        const struct vbd_job_type *const *jobs; /* NULL-terminated, NULL = none (job.h) */
};

/* Services the core gives drivers. */
void *vbd_image_state(struct vbd_image *img);
struct vbd_aio *vbd_image_aio(struct vbd_image *img); /* may be NULL (no AIO engine) */
const char *vbd_image_name(struct vbd_image *img);    /* the spec, for messages */
void vbd_io_complete(struct vbd_io *io, int status);  /* status 0 or -errno */

/* Parse a size with optional K/M/G/T suffix (powers of 1024): 0, -EINVAL, -ERANGE. */
int vbd_parse_size(const char *s, uint64_t *ret);

/* The value of option key in o, or NULL when it was not given. */
const char *vbd_opts_get(const struct vbd_opts *o, const char *key);
