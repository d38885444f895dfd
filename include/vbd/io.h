/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd_io: the one request type every image driver sees.
 *
 * Offsets and lengths are bytes.  The core (vbd_image_submit) checks every
 * field before a driver sees it: the op is in the driver's caps, the range is
 * inside the image, offset and length are multiples of the logical block,
 * len <= max_io and the iovec adds up to len.  Drivers may rely on that.
 */
#pragma once

#include <stdint.h>
#include <sys/uio.h>

enum vbd_op {
        VBD_OP_READ,
        VBD_OP_WRITE,
        VBD_OP_FLUSH,
        VBD_OP_DISCARD,
        VBD_OP_WRITE_ZEROES,
        _VBD_OP_MAX,
};

enum vbd_io_flag {
        VBD_IO_FUA = 1 << 0,       /* write: durable when it completes */
        VBD_IO_MAY_UNMAP = 1 << 1, /* write-zeroes: may deallocate */
};

struct vbd_io;
typedef void (*vbd_io_done_fn)(struct vbd_io *io, int status);

struct vbd_io {
        enum vbd_op op;
        uint32_t flags;       /* enum vbd_io_flag */
        uint64_t offset, len; /* bytes; 0 for FLUSH */
        struct iovec *iov;    /* READ/WRITE only */
        unsigned iovcnt;
        vbd_io_done_fn done; /* called exactly once, status 0 or -errno */
        void *opaque;        /* the submitter's */
        void *scratch;       /* io_scratch_size bytes for the driver, set by the submitter */
};

const char *vbd_op_name(enum vbd_op op);
