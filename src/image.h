/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image, the core's side: a stack of filters over one driver, opened from
 * a spec, e.g. "raw:/srv/disk.img", "null:10G", "raw:/dev/vg/lv,direct=off",
 * "passthrough:qcow2:/srv/a.qcow2,passthrough.trace=on".  What drivers see
 * (the services, vbd_image_submit, vbd_image_block_status) is in vbd/driver.h.
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "vbd/driver.h"

/*
 * Spec syntax: { FILTER ':' } DRIVER ':' ARG { ',' KEY '=' VALUE }.  Names
 * are [a-z0-9_-]+; a name whose driver has VBD_DRIVER_FILTER takes the rest
 * as its child's spec, the first name that is not a filter ends the chain
 * and its ARG runs to the first ',' (it may contain ':', not ',').  A KEY
 * spelled NAME.KEY goes to every layer whose driver is NAME, a plain KEY to
 * the bottom driver; each layer's options are parsed with its table (opts.h)
 * and unknown or repeated ones are refused (-EINVAL).  At most
 * VBD_IMAGE_SPEC_MAX bytes, VBD_IMAGE_KEYS_MAX options, VBD_IMAGE_DEPTH_MAX
 * layers.  The bottom driver is opened first, then each filter over the one
 * below; every layer is named by its part of the spec (from its NAME to the
 * end).
 *
 * readonly: the image is opened for reading only; WRITE, DISCARD and
 * WRITE_ZEROES then fail with -EROFS in vbd_image_submit().  aio may be NULL
 * for drivers that do no file I/O (null); raw needs it.  loop is the VBD's
 * loop (vbd_image_loop()); NULL only for drivers that need none (tests).
 *
 * NULL on error with err filled (err->code is -errno, err->msg says why).
 */
#define VBD_IMAGE_SPEC_MAX  4096
#define VBD_IMAGE_KEYS_MAX  16
#define VBD_IMAGE_DEPTH_MAX 8
struct vbd_image *vbd_image_open(const char *spec, bool readonly, struct vbd_aio *aio,
                                 struct ev_loop *loop, struct vbd_err *err);
/* The same with an explicit driver for the top layer instead of a registry
 * lookup (tests); the spec's first name must still equal drv->name. */
struct vbd_image *vbd_image_open_driver(const struct vbd_driver *drv, const char *spec,
                                        bool readonly, struct vbd_aio *aio, struct ev_loop *loop,
                                        struct vbd_err *err);
/* Tests: drivers (NULL-terminated) are looked up before the registry, for
 * every layer. */
struct vbd_image *vbd_image_open_drivers(const struct vbd_driver *const *drivers, const char *spec,
                                         bool readonly, struct vbd_aio *aio, struct ev_loop *loop,
                                         struct vbd_err *err);
/*
 * Close the whole stack: each layer's close(), then its child's, then its
 * backing image's.  NULL-safe; never with I/O in flight, never runs the
 * loop.  When any layer has a drain(), vbd_image_drain() must have finished
 * first (asserted).
 */
void vbd_image_close(struct vbd_image *img);

/*
 * Drain the stack before closing it: img's drain(), then, once it called
 * vbd_image_drained(), the same for its child and its backing image, then
 * done(opaque) (inline when nothing has background work).  No guest I/O may
 * be in flight or come afterwards.
 */
void vbd_image_drain(struct vbd_image *img, void (*done)(void *opaque), void *opaque);
bool vbd_image_is_drained(const struct vbd_image *img); /* the last drain finished */
/* Drain img's own layer only, not its child or backing image (before
 * vbd_image_unwrap() of a filter that goes away while its child stays). */
void vbd_image_drain_top(struct vbd_image *img, void (*done)(void *opaque), void *opaque);
/* Drain img, then close it (inline when no layer has background work); the
 * caller forgets img.  NULL-safe. */
void vbd_image_drain_close(struct vbd_image *img);

/*
 * Stack the registered filter name, with its default options, over child
 * (already open): the new image takes the child's read-only flag, AIO engine
 * and loop and is named "NAME:" + the child's name.  Each io's scratch holds
 * the filter's part then the child's (vbd_image_child_scratch()).  Closing
 * the new image closes child too; vbd_image_unwrap() closes only the top
 * (drained, when it has a drain) and returns the child.  NULL + err on
 * failure (child is left open).
 */
struct vbd_image *vbd_image_open_filter(const char *name, struct vbd_image *child,
                                        struct vbd_err *err);
struct vbd_image *vbd_image_unwrap(struct vbd_image *img);
/* The topmost layer of img's stack (img, its child, ...) opened by the driver
 * or filter called name, or NULL. */
struct vbd_image *vbd_image_find_layer(struct vbd_image *img, const char *name);

/* Per-io scratch a pushed filter may add: pools sized for an image keep this
 * much room so that a filter can be stacked while the VBD is connected. */
#define VBD_IMAGE_STACK_SCRATCH 512

/*
 * The one validating dispatcher.  In order:
 *   op < _VBD_OP_MAX, flags known, FUA only on WRITE, MAY_UNMAP only on
 *     WRITE_ZEROES                                         else -EINVAL
 *   WRITE/DISCARD/WRITE_ZEROES on a read-only image         -EROFS
 *   op (and FUA) in the driver's caps (READ always is)     else -EOPNOTSUPP
 *   FLUSH: offset == len == iovcnt == 0                    else -EINVAL
 *   offset + len inside the image, no overflow; offset and len multiples
 *     of logical_block                                     else -EINVAL
 *   READ/WRITE: len > 0, len <= max_io (when max_io != 0), 1 <= iovcnt <=
 *     IOV_MAX, iov total == len                            else -EINVAL
 *   DISCARD/WRITE_ZEROES: iovcnt == 0 (else -EINVAL); len == 0 completes
 *     with 0 without reaching the driver
 * Failures complete the io (inline) with that status through
 * vbd_io_complete().  io->done must be set and io->scratch must point to
 * vbd_image_io_scratch_size() bytes (the caller's invariants, asserted).
 */
void vbd_image_submit(struct vbd_image *img, struct vbd_io *io);

/*
 * Allocation status of [offset, offset + len): up to max extents from
 * offset, their count in *ret_n (>= 1 on success), covering at most len
 * bytes (possibly less: ask again from where they end).  The driver's
 * block_status when it has one, else the child's for a filter of the same
 * size, else one extent of len bytes, flags 0.
 * -EINVAL for an empty range, max == 0 or a range outside the image;
 * -EIO if the driver's answer is malformed; or the driver's -errno.
 * (Declared in vbd/driver.h too: drivers ask their child or backing image.)
 */
int vbd_image_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                           struct vbd_extent *ret, unsigned max, unsigned *ret_n);

/*
 * Image locks (vbd/lock.h) of the whole stack: each layer's, its child's and
 * its backing image's.  unlock lets every byte go (a reopen, while the new
 * stack opens the same files); relock takes them back: 0, or -EBUSY + err
 * when somebody took the file meanwhile (the bytes that could be are kept).
 */
void vbd_image_unlock_all(struct vbd_image *img);
int vbd_image_relock_all(struct vbd_image *img, struct vbd_err *err);

/* The compiled-in drivers, for --help: name, description and usage. */
void vbd_image_list_drivers(FILE *f);

/* The registry generated by drivers/meson.build from -Ddrivers, NULL-terminated. */
extern const struct vbd_driver *const vbd_drivers[];
const struct vbd_driver *vbd_image_find_driver(const char *name); /* NULL if unknown */
