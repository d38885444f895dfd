/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The AIO service the core gives drivers: Linux AIO on the VBD's loop,
 * submissions batched per loop iteration, completions through an eventfd.
 * A driver embeds one struct vbd_aio_op per operation in flight (in its io
 * scratch, say), sets done and opaque, and calls one of the submit functions;
 * done runs exactly once, later, on the loop thread, never inline.  Short
 * transfers are resubmitted by the service: res is the full length or -errno.
 * The engine itself (vbd_aio_new/free) belongs to the core.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct vbd_aio;
struct vbd_aio_op;

typedef void (*vbd_aio_done_fn)(struct vbd_aio_op *op, ssize_t res);

struct vbd_aio_op {
        vbd_aio_done_fn done;
        void *opaque;
        /* The engine's private state (its iocb and bookkeeping): do not touch. */
        union {
                unsigned char bytes[192];
                uint64_t align;
                void *palign;
        } priv;
};

/* iov must stay valid until done; iovcnt >= 1; offset and lengths as the fd needs
 * (O_DIRECT: aligned to vbd_info.mem_align and the logical block). */
void vbd_aio_preadv(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                    int iovcnt, uint64_t offset);
void vbd_aio_pwritev(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                     int iovcnt, uint64_t offset);
void vbd_aio_fdatasync(struct vbd_aio *aio, struct vbd_aio_op *op, int fd);

/* Operations submitted and not yet completed (queued, in the kernel, or done
 * and not yet delivered). */
unsigned vbd_aio_inflight(const struct vbd_aio *aio);
/* True once IOCB_CMD_FDSYNC was refused and fdatasync runs on a worker thread. */
bool vbd_aio_fdsync_threaded(const struct vbd_aio *aio);
