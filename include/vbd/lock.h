/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Image locking, the core's service to drivers, on the same bytes and with
 * the same meanings as QEMU's (block/file-posix.c), so that vbdd, qemu,
 * qemu-img, qemu-io and qemu-nbd see each other's use of an image.
 *
 * A user of an image holds a set of permissions and may refuse to share some
 * of them with other users.  Permission bit i is byte 100 + i of the file
 * ("I hold it") and byte 200 + i ("I do not share it"), each taken as a
 * shared (read) open-file-description lock (F_OFD_SETLK, F_RDLCK), so any
 * number of users may mark the same byte.  A new user marks its bytes, then
 * tests (F_OFD_GETLK, F_WRLCK) byte 200 + i for each permission it wants
 * (somebody does not share it: "Failed to get \"write\" lock" in qemu's
 * words) and byte 100 + i for each one it will not share (somebody holds it:
 * "Failed to get shared \"write\" lock"); on a conflict it takes its bytes
 * back and fails.
 *
 * The locks belong to the open file description of fd: the driver keeps fd
 * open as long as the image is open (closing it drops them), and the other
 * descriptors it has for the same file (an O_DIRECT one) need none.
 *
 * What vbdd asks, as qemu does for a guest's disk: an image opened
 * read-write holds CONSISTENT_READ + WRITE (qcow2, which grows its file,
 * RESIZE too) and does not share WRITE and RESIZE; an image opened read-only
 * (a read-only disk, an export, a backing file) holds CONSISTENT_READ and
 * does not share WRITE and RESIZE either, as qemu's read-only drives and
 * backing files do: nobody else may write while we read, and
 * "qemu-img info -U" (force-share, which takes CONSISTENT_READ only) still
 * works beside us.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "vbd/opts.h"

struct vbd_err;
struct vbd_image;

/* QEMU's BLK_PERM_* bits: the lock bytes are 100 + bit and 200 + bit. */
enum vbd_lock_perm {
        VBD_LOCK_CONSISTENT_READ = 1 << 0,
        VBD_LOCK_WRITE = 1 << 1,
        VBD_LOCK_WRITE_UNCHANGED = 1 << 2,
        VBD_LOCK_RESIZE = 1 << 3,
        VBD_LOCK_GRAPH_MOD = 1 << 4,
        VBD_LOCK_PERM_ALL = (1 << 5) - 1,
};
#define VBD_LOCK_PERM_BASE   100
#define VBD_LOCK_SHARED_BASE 200

/* The "locking" option of a driver that locks its file (raw, qcow2). */
#define VBD_LOCK_OPT_DEF(n)                                                                        \
        VBD_OPT_TRISTATE_DEF(n, "auto",                                                            \
                             "image locks as qemu's (auto: off where the file system has none)")

/*
 * Lock the file open as fd (named path in messages) for img: mark the bytes
 * of perm and unshared (enum vbd_lock_perm) and check nobody conflicts.
 * mode: VBD_OFF takes nothing; VBD_ON fails where the file system refuses
 * OFD locks; VBD_AUTO then goes on without (logged at info level).
 * One lock per image (-EEXIST for a second).  Call it from open(); the core
 * forgets it when close() ran or open() failed.
 * 0; -EBUSY when another user conflicts, err naming the image, the
 * permission (in qemu's words) and, where /proc tells, the holder's pid and
 * command; another -errno + err when locking fails otherwise.
 */
int vbd_image_lock(struct vbd_image *img, int fd, const char *path, enum vbd_tristate mode,
                   uint32_t perm, uint32_t unshared, struct vbd_err *err);
