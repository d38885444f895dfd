/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image driver interface, ABI 2: everything a driver or filter may use
 * is in include/vbd/ (this file, io.h, aio.h, opts.h, err.h, log.h, job.h,
 * macro.h, time.h, endian.h, file.h); drivers are built without src/ on their
 * include path.
 *
 * Specs: DRIVER ':' ARG { ',' KEY '=' VALUE }.  A filter (flags has
 * VBD_DRIVER_FILTER) takes the spec of the image below it as its ARG, so
 * filters stack over drivers: "mirror:qcow2:/srv/a.qcow2",
 * "passthrough:raw:/srv/b.img,direct=off".  The core opens the child first
 * (vbd_image_child()); keys spelled FILTER.KEY go to the filter named
 * FILTER, the others to the driver at the bottom.
 *
 * Lifecycle: the core allocates state_size zeroed bytes (vbd_image_state()),
 * parses the options with the driver's table (opts.h), calls open(), then
 * get_info() once; submit() any number of times; before close() it calls
 * drain() (when set) and waits for vbd_image_drained(); close() runs only
 * with nothing in flight and never runs the loop.  Every callback runs on
 * the VBD's loop thread; a driver that needs a worker thread hands results
 * back with ev_async on vbd_image_loop().
 *
 * Completion: every io passed to submit() completes exactly once, through
 * vbd_io_complete(io, status), never by calling io->done directly.  Inline
 * completion from inside submit() is allowed.
 *
 * Errors: int functions return >= 0 or -errno; open() also fills err.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vbd/aio.h"
#include "vbd/err.h"
#include "vbd/io.h"
#include "vbd/opts.h"

#define VBD_DRIVER_ABI 2

struct ev_loop;
struct vbd_image;
struct vbd_job_type;
struct vbd_create;
struct vbd_stored_bitmap;
#define VBD_STORED_BITMAP_NAME_MAX 1023

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

/* One extent of a block status answer (block_status, vbd_image_block_status). */
enum vbd_extent_flag {
        VBD_EXTENT_HOLE = 1 << 0,  /* not allocated: writing there may fail with ENOSPC */
        VBD_EXTENT_ZERO = 1 << 1,  /* reads as zeroes */
        VBD_EXTENT_DIRTY = 1 << 2, /* bitmap_status: changed since the bitmap's checkpoint */
};

struct vbd_extent {
        uint64_t len;   /* bytes, > 0 */
        uint32_t flags; /* enum vbd_extent_flag */
        /*
         * block_status: the layer of the backing chain the extent's contents
         * come from, in backing-file hops below this image: 0 this image (or
         * a filter's child), 1 its backing file, 2 that file's backing file,
         * ...; VBD_EXTENT_DEPTH_NONE: allocated in no layer of the chain
         * (reads as zeroes).  Added within ABI 2 in what was padding, so the
         * struct's size is unchanged: drivers without backing files leave it
         * 0 (a compound literal or initializer does); the core checks it
         * against the chain.  Unused by bitmap_status.
         */
        uint32_t depth;
};
#define VBD_EXTENT_DEPTH_NONE UINT32_MAX
_Static_assert(sizeof(struct vbd_extent) == 16, "struct vbd_extent is part of ABI 2");

/* What open() gets: valid only during the call. */
struct vbd_opts {
        const char *arg; /* DRIVER's ARG (up to the first ','); for a filter, "" */
        bool readonly;   /* open for reading only */
        const struct vbd_opt_value *values; /* one per entry of the driver's opts table */
};

enum vbd_driver_flag {
        VBD_DRIVER_FILTER = 1 << 0, /* stacks over a child opened by the core */
};

struct vbd_driver {
        unsigned abi;   /* VBD_DRIVER_ABI */
        unsigned flags; /* enum vbd_driver_flag */
        /* name: the spec prefix ("raw").  description: one line for --help.
         * usage: the spec syntax, e.g. "raw:PATH[,direct=on|off|auto]". */
        const char *name, *description, *usage;
        const struct vbd_opt_desc *opts; /* the options after ARG (opts.h) */
        unsigned nopts;
        size_t state_size;      /* per image, zeroed, vbd_image_state() */
        size_t io_scratch_size; /* per io, io->scratch (a filter's child's part follows) */

        /* open: set up from o.  0 or -errno with err set; on failure close()
         * is not called, so open() undoes what it did. */
        int (*open)(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err);
        /* get_info: called once after open; fills every field. 0 or -errno.
         * A filter usually starts from *vbd_image_info(vbd_image_child(img)). */
        int (*get_info)(struct vbd_image *img, struct vbd_info *ret_info);
        /* submit: start io (already validated by the core); complete it
         * exactly once with vbd_io_complete(), inline or later. */
        void (*submit)(struct vbd_image *img, struct vbd_io *io);
        /*
         * block_status (optional): describe [offset, offset + len) as up to
         * max consecutive extents starting at offset, in *ret, their count in
         * *ret_n (>= 1).  They may cover less than len (the caller asks again
         * for the rest) but not more.  Synchronous and cheap.  The range is
         * checked by the core.  Without it the core reports one allocated
         * extent (flags 0), or asks the child of a filter.
         */
        int (*block_status)(struct vbd_image *img, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n);
        /* drain (optional): no guest I/O is in flight and none will come;
         * stop background work (timers, copiers, connections) and call
         * vbd_image_drained(img) once nothing of the driver's is in flight
         * (maybe inline).  Without drain the image counts as drained at once. */
        void (*drain)(struct vbd_image *img);
        /* close: undo open; nothing in flight; never runs the loop.  The core
         * closes the child (filters) and the backing image afterwards. */
        void (*close)(struct vbd_image *img);

        /* Jobs this driver offers (job.h), NULL-terminated; NULL = none. */
        const struct vbd_job_type *const *jobs;

        /*
         * Dirty bitmaps (optional, a change tracker's): bitmap_name returns
         * the name of bitmap i (0, 1, ...) or NULL past the last; names are
         * [A-Za-z0-9._-]+, at most 63 bytes, and may come and go between
         * calls.  bitmap_status answers like block_status, with extents
         * flagged VBD_EXTENT_DIRTY where the image changed since the bitmap
         * was made, 0 elsewhere; -ENOENT for a name it does not have.
         */
        const char *(*bitmap_name)(struct vbd_image *img, unsigned i);
        int (*bitmap_status)(struct vbd_image *img, const char *name, uint64_t offset, uint64_t len,
                             struct vbd_extent *ret, unsigned max, unsigned *ret_n);
        /*
         * Checkpoints (optional, with the bitmaps): bitmap_add makes bitmap
         * name, empty from now on (a checkpoint); bitmap_remove drops one (its
         * changes stay counted in the bitmaps made before it).  Synchronous,
         * durable when they return 0, and called only with nothing in flight
         * (the device paused and drained).  0 or -errno with err set; -ENOENT
         * from bitmap_remove for a name it does not have.
         */
        int (*bitmap_add)(struct vbd_image *img, const char *name, struct vbd_err *err);
        int (*bitmap_remove)(struct vbd_image *img, const char *name, struct vbd_err *err);

        /*
         * create (optional): make a new image file for this driver, c->size
         * bytes reading as zeroes (or as c->backing where the format has
         * backing files), refusing an existing path (-EEXIST).  Durable when
         * it returns 0.  No image is open; 0 or -errno with err set.
         */
        int (*create)(const struct vbd_create *c, struct vbd_err *err);

        /*
         * Bitmaps kept in the image file in the format's own way (optional;
         * qcow2's bitmaps extension, which QEMU reads and writes), so that
         * other tools see a change tracker's checkpoints.  stored_bitmaps_put
         * replaces every bitmap the file holds by the n given (n == 0: none
         * left); it needs a writable image.  stored_bitmap_get reads bitmap
         * name into *ret (ret->bits malloc()ed, the caller frees it);
         * -ENOENT when the file has none of that name, -ESTALE when the
         * file's bitmaps cannot be trusted (a program that does not know
         * them wrote the image since).  Synchronous, durable when put
         * returns 0, called only with nothing in flight (paused and drained,
         * or from a filter's open() or close()).  0 or -errno with err set.
         */
        int (*stored_bitmaps_put)(struct vbd_image *img, const struct vbd_stored_bitmap *b,
                                  unsigned n, struct vbd_err *err);
        int (*stored_bitmap_get)(struct vbd_image *img, const char *name,
                                 struct vbd_stored_bitmap *ret, struct vbd_err *err);
};

/*
 * A stored bitmap: bit b set when block b (granularity bytes from b *
 * granularity) changed; bits is an array of ceil(nbits / 64) 64-bit words in
 * host order, bit b in word b / 64 at (b % 64), nbits = ceil(virtual size /
 * granularity).  in_use: a writer that has the image open keeps it up to
 * date in memory, so the copy in the file is not current (QEMU then counts
 * it as inconsistent).  enabled: a writer opening the image should go on
 * recording into it (QEMU's "auto" flag).
 */
struct vbd_stored_bitmap {
        char name[VBD_STORED_BITMAP_NAME_MAX + 1];
        uint32_t granularity; /* bytes, a power of two, 512 ... 2^31 */
        bool in_use, enabled;
        uint64_t nbits;
        uint64_t *bits;
};

/* What create() gets. */
struct vbd_create {
        const char *path;
        uint64_t size;           /* bytes, > 0 */
        const char *backing;     /* a backing file's path, or NULL (formats that have them) */
        const char *backing_fmt; /* its driver name ("qcow2", "raw"), or NULL */
        uint32_t cluster_size;   /* bytes, a power of two; 0: the format's default */
};

/* Services the core gives drivers. */
void *vbd_image_state(struct vbd_image *img);
struct vbd_aio *vbd_image_aio(struct vbd_image *img);    /* may be NULL (no AIO engine) */
struct ev_loop *vbd_image_loop(struct vbd_image *img);   /* the VBD's loop, for timers */
const char *vbd_image_name(const struct vbd_image *img); /* the spec, for messages */
const struct vbd_driver *vbd_image_driver(const struct vbd_image *img);
const struct vbd_info *vbd_image_info(const struct vbd_image *img);
bool vbd_image_readonly(const struct vbd_image *img);
void vbd_io_complete(struct vbd_io *io, int status); /* status 0 or -errno */
void vbd_image_drained(struct vbd_image *img);       /* after drain() */

/* Stacking.  A filter's child, opened by the core from the filter's ARG: */
struct vbd_image *vbd_image_child(struct vbd_image *img); /* NULL for a driver */
/* The child's part of an io's scratch (it follows the filter's io_scratch_size). */
void *vbd_image_child_scratch(struct vbd_image *img, void *scratch);
/*
 * A backing image a driver opens for itself (qcow2's backing file): opened
 * read-only by the core from spec, with the same AIO engine and loop,
 * drained after the driver and closed by the core after the driver's
 * close(), or right after a failed open() (the driver does not close it).
 * Call it from open() only.  At most one per image (-EEXIST).  NULL + err
 * on failure.
 */
struct vbd_image *vbd_image_open_backing(struct vbd_image *img, const char *spec,
                                         struct vbd_err *err);
struct vbd_image *vbd_image_backing(struct vbd_image *img); /* NULL when none */
size_t vbd_image_io_scratch_size(const struct vbd_image *img);

/* Submit io to another image (a child or backing image): the core's validating
 * dispatcher; io->done and io->scratch (vbd_image_io_scratch_size bytes) set. */
void vbd_image_submit(struct vbd_image *img, struct vbd_io *io);
/* Block status of another image (see block_status above); checks the range. */
int vbd_image_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                           struct vbd_extent *ret, unsigned max, unsigned *ret_n);
/* The dirty bitmaps of the stack from img down through its filters' children:
 * the name of bitmap i over all layers (NULL past the last), and its status
 * (range checked; -ENOENT when no layer has the name). */
const char *vbd_image_bitmap_name(struct vbd_image *img, unsigned i);
int vbd_image_bitmap_status(struct vbd_image *img, const char *name, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n);
/* Checkpoints on the stack from img down: bitmap_add on the topmost layer
 * that has one (-EOPNOTSUPP when none has), bitmap_remove on the layer that
 * holds name (-ENOENT when none does).  Only with nothing in flight. */
int vbd_image_bitmap_add(struct vbd_image *img, const char *name, struct vbd_err *err);
int vbd_image_bitmap_remove(struct vbd_image *img, const char *name, struct vbd_err *err);
/* Create an image file with the registered driver's create() (-EOPNOTSUPP
 * when it has none, -ENOENT for an unknown driver). */
int vbd_image_create(const char *driver, const struct vbd_create *c, struct vbd_err *err);
/* Stored bitmaps on the first layer from img down through its filters'
 * children whose driver has them (backing images are not searched):
 * -EOPNOTSUPP when none has. */
int vbd_image_stored_bitmaps_put(struct vbd_image *img, const struct vbd_stored_bitmap *b,
                                 unsigned n, struct vbd_err *err);
int vbd_image_stored_bitmap_get(struct vbd_image *img, const char *name,
                                struct vbd_stored_bitmap *ret, struct vbd_err *err);
