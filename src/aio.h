/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The AIO engine: one libaio io_context per daemon.  Submissions are queued
 * and sent with one io_submit() per loop iteration (from an ev_prepare
 * watcher); completions are reaped from an eventfd (io_set_eventfd) watched
 * by an ev_io.  Short transfers are resubmitted for the remainder; a
 * transfer that makes no progress completes with -EIO.
 *
 * No allocation per operation: the caller embeds a struct vbd_aio_op (in a
 * driver's io scratch) and keeps it and the iovec alive until done runs.  The
 * iovec is never modified; a short transfer is continued from op->rest.  An
 * op may be reused (submitted again) from inside its own done callback.
 *
 * Submissions are flushed by an ev_prepare watcher; an op queued from another
 * ev_prepare watcher that runs after it in the same iteration is flushed by an
 * ev_idle watcher instead, so that nothing waits for an unrelated wakeup.
 * The engine's own watchers do not keep ev_run() alive; operations in flight
 * do (ev_ref while vbd_aio_inflight() > 0).
 *
 * fdatasync uses IOCB_CMD_FDSYNC.  If the kernel or file system refuses it
 * (-EINVAL), this and every later fdatasync of this engine runs fdatasync(2)
 * on a worker thread whose result comes back to the loop through ev_async.
 */
#pragma once

#include <libaio.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct ev_loop;
struct vbd_aio;
struct vbd_aio_op;

/* res: bytes transferred (always the full length) or -errno. */
typedef void (*vbd_aio_done_fn)(struct vbd_aio_op *op, ssize_t res);

struct vbd_aio_op {
        vbd_aio_done_fn done;
        void *opaque;
        /* private to aio.c */
        struct iocb iocb;
        struct vbd_aio_op *next;
        struct iovec *iov;
        int iovcnt;
        int fd;
        uint64_t offset, len, transferred;
        struct iovec rest[2]; /* for resubmitting a short transfer */
        ssize_t result;       /* status of a completion waiting to be delivered */
};

/* max_inflight: the most operations ever in flight at once.  NULL + errno. */
struct vbd_aio *vbd_aio_new(struct ev_loop *loop, unsigned max_inflight);
/* NULL-safe.  Call with vbd_aio_inflight() == 0: ops still queued are dropped
 * (with a warning), ops in the kernel are waited for, neither calls done. */
void vbd_aio_free(struct vbd_aio *aio);

/*
 * Each calls op->done exactly once, on the loop thread, from one of the
 * engine's watchers (possibly later in this loop iteration), never inline.
 * res is the full length on success (len 0 completes with 0), -EIO when a
 * transfer stops short (end of file), or the -errno from the kernel; bad
 * arguments (iovcnt < 0 or > IOV_MAX, overflowing lengths) give -EINVAL.
 * op->done must be set; fd, iov and the buffers must stay valid until done.
 */
void vbd_aio_preadv(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                    int iovcnt, uint64_t offset);
void vbd_aio_pwritev(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                     int iovcnt, uint64_t offset);
void vbd_aio_fdatasync(struct vbd_aio *aio, struct vbd_aio_op *op, int fd);

/* Operations submitted and not yet completed (queued, in the kernel, on the
 * fdatasync thread, or waiting for their done callback). */
unsigned vbd_aio_inflight(const struct vbd_aio *aio);

/* True once IOCB_CMD_FDSYNC was refused and fdatasync runs on the worker thread. */
bool vbd_aio_fdsync_threaded(const struct vbd_aio *aio);
