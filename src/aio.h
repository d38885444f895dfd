/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The AIO engine, the core's side: one libaio io_context per daemon.  What
 * drivers may call (the submit functions, vbd_aio_inflight) is in vbd/aio.h;
 * creating and freeing the engine is the core's.
 *
 * Submissions are queued and sent with one io_submit() per loop iteration
 * (from an ev_prepare watcher); completions are reaped from an eventfd
 * (io_set_eventfd) watched by an ev_io.  Short transfers are resubmitted for
 * the remainder; a transfer that makes no progress completes with -EIO.
 *
 * No allocation per operation: the caller embeds a struct vbd_aio_op (in a
 * driver's io scratch) and keeps it and the iovec alive until done runs; the
 * engine's bookkeeping (its iocb, list link, progress) lives in op->priv.
 * The iovec is never modified.  An op may be reused (submitted again) from
 * inside its own done callback.
 *
 * Submissions are flushed by an ev_prepare watcher; an op queued from another
 * ev_prepare watcher that runs after it in the same iteration is flushed by an
 * ev_idle watcher instead, so that nothing waits for an unrelated wakeup.
 * The engine's own watchers do not keep ev_run() alive; operations in flight
 * do (ev_ref while vbd_aio_inflight() > 0).
 *
 * Each submit function calls op->done exactly once, on the loop thread, from
 * one of the engine's watchers, never inline.  res is the full length on
 * success (len 0 completes with 0), -EIO when a transfer stops short (end of
 * file), or the -errno from the kernel; bad arguments (iovcnt < 0 or >
 * IOV_MAX, overflowing lengths) give -EINVAL.
 *
 * fdatasync uses IOCB_CMD_FDSYNC.  If the kernel or file system refuses it
 * (-EINVAL), this and every later fdatasync of this engine runs fdatasync(2)
 * on a worker thread whose result comes back to the loop through ev_async.
 */
#pragma once

#include "vbd/aio.h"

struct ev_loop;

/* max_inflight: the most operations ever in flight at once.  NULL + errno. */
struct vbd_aio *vbd_aio_new(struct ev_loop *loop, unsigned max_inflight);
/* NULL-safe.  Call with vbd_aio_inflight() == 0: ops still queued are dropped
 * (with a warning), ops in the kernel are waited for, neither calls done. */
void vbd_aio_free(struct vbd_aio *aio);
/* True while completions are read from the kernel's completion ring mapped
 * at the io_context (see aio.c), false when io_getevents() reads them. */
bool vbd_aio_kernel_ring(const struct vbd_aio *aio);
/* From now on io_getevents() only (for tests: the two ways must agree). */
void vbd_aio_no_kernel_ring(struct vbd_aio *aio);
