/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The image: a driver instance opened from a spec "driver:arg[,key=value...]",
 * e.g. "raw:/srv/disk.img", "null:10G", "raw:/dev/vg/lv,direct=off".
 */
#pragma once

#include <stdbool.h>
#include <stdio.h>

#include "vbd/driver.h"

/* NULL on error with err filled. */
struct vbd_image *vbd_image_open(const char *spec, bool readonly, struct vbd_aio *aio,
                                 struct vbd_err *err);
void vbd_image_close(struct vbd_image *img); /* NULL-safe; never with I/O in flight */

const struct vbd_info *vbd_image_info(const struct vbd_image *img);
size_t vbd_image_io_scratch_size(const struct vbd_image *img);

/*
 * The one validating dispatcher: op in caps (else -EOPNOTSUPP), offset/len
 * inside the image and aligned to logical_block, len <= max_io, iov total ==
 * len (else -EINVAL).  Failures complete the io with that status.
 * io->scratch must point to vbd_image_io_scratch_size() bytes.
 */
void vbd_image_submit(struct vbd_image *img, struct vbd_io *io);

/* The compiled-in drivers, for --help. */
void vbd_image_list_drivers(FILE *f);

/* Parse a size with optional K/M/G/T suffix (powers of 1024). */
int vbd_parse_size(const char *s, uint64_t *ret);
