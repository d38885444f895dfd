/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Image locks, the core's side (the scheme: vbd/lock.h).  One struct
 * vbd_lock per image layer, in struct vbd_image; vbd_image_lock() fills it.
 * The unlock/relock pair lets a reopen hand an image over to a new stack
 * that opens the same file (an overlay over the old image, or the same
 * image with other options): the old stack's bytes are let go while the
 * new one opens and taken back if it fails.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vbd/lock.h"

struct vbd_lock {
        int fd; /* the driver's descriptor; -1: no lock */
        uint32_t perm, unshared;
        uint32_t locked_perm, locked_unshared; /* the bytes marked now */
        char *path;
};

#define VBD_LOCK_INIT                                                                              \
        {                                                                                          \
                .fd = -1                                                                           \
        }

/*
 * Take the lock (see vbd_image_lock): l must be unused (fd == -1).
 * 0 with l->fd == -1 when mode is off or, with auto, the file system has no
 * OFD locks; 0 with l set up when locked; -errno + err.
 */
int vbd_lock_take(struct vbd_lock *l, int fd, const char *path, enum vbd_tristate mode,
                  uint32_t perm, uint32_t unshared, struct vbd_err *err);
/* Let the bytes go, keep what was asked (for vbd_lock_retake).  NULL-safe. */
void vbd_lock_release(struct vbd_lock *l);
/* Mark and check the bytes again after vbd_lock_release: 0, -EBUSY + err. */
int vbd_lock_retake(struct vbd_lock *l, struct vbd_err *err);
/* The driver closed fd (the kernel dropped the locks): forget l. */
void vbd_lock_forget(struct vbd_lock *l);

/*
 * Who holds lock byte off of the file open as fd (other than fd itself):
 * "pid N (COMM)" in buf, from /proc/PID/fdinfo; false when not found.
 */
bool vbd_lock_holder(int fd, int off, char *buf, size_t size);
