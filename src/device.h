/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device: one VBD's image stack and the users that serve from it (the
 * blkif ring through xenbus, the NBD export).  It is the one owner of the
 * served image (struct vbd_image *) and the one place that pauses, swaps and
 * resumes it: a control command, a job or a reopen asks the device, the
 * device asks every user.
 *
 * Pause holds are counted (vbd_device_pause/resume in include/vbd/job.h):
 * the first hold pauses every user, the device is drained once each of them
 * has nothing in flight, and it serves again when every holder resumed.  A
 * holder that resumes before its done ran may still see done run while
 * other holds keep the device paused: it ignores it.
 *
 * The device services for jobs (loop, image, readonly, pause, push_filter,
 * find_layer) are declared in include/vbd/job.h; this is the core's side.
 */
#pragma once

#include <stdbool.h>

#include "vbd/job.h"

struct ev_loop;
struct vbd_aio;
struct vbd_err;
struct vbd_image;
struct vbd_job;
struct vbd_device;

/* What a user of the image lets the device do to it.  pause and resume go
 * together; either both or neither.  NULL set_image: the user cannot change
 * images, and the device refuses to swap (reopen, push_filter) while it is
 * registered. */
struct vbd_device_user_ops {
        /* Take no new requests; done(opaque) once nothing is in flight (maybe inline). */
        void (*pause)(void *user, void (*done)(void *opaque), void *opaque);
        void (*resume)(void *user);
        /* Serve from img from now on (paused and drained).  0 or -errno. */
        int (*set_image)(void *user, struct vbd_image *img);
};

/* The device takes img (closed by vbd_device_free).  aio: handed to
 * vbd_image_open() for a reopen.  NULL + errno. */
struct vbd_device *vbd_device_new(struct ev_loop *loop, struct vbd_image *img, bool readonly,
                                  struct vbd_aio *aio);
/* The TLS credentials and --nbd-insecure of the exports jobs start
 * (vbd_device_export_start): c's tls_* and insecure fields, read at each
 * start; c must outlive the device.  Without: no TLS, loopback TCP only. */
struct vbd_nbd_config;
void vbd_device_set_export_security(struct vbd_device *dev, const struct vbd_nbd_config *c);
/* Before vbd_device_free, with the users disconnected: stop the stack's
 * background work (a migration's copier and partner); done(opaque) once
 * nothing of it is in flight, maybe inline.  Runs no loop itself. */
void vbd_device_drain(struct vbd_device *dev, void (*done)(void *opaque), void *opaque);
/* Free the jobs, then close the image stack (drained); the users are gone.  NULL-safe. */
void vbd_device_free(struct vbd_device *dev);

/* Register a user serving vbd_device_image() (name: for messages, static).
 * 0 or -ENOMEM.  Remove it before it stops serving. */
int vbd_device_add_user(struct vbd_device *dev, const char *name,
                        const struct vbd_device_user_ops *ops, void *user);
void vbd_device_remove_user(struct vbd_device *dev, void *user); /* NULL dev: nothing */

/* opaque is going away: its pause done callbacks must not run (its holds
 * stay: the owner resumes them, or the device is being torn down). */
void vbd_device_forget(struct vbd_device *dev, void *opaque);

/* Paused (held) and every user has nothing in flight. */
bool vbd_device_drained(const struct vbd_device *dev);

/*
 * Serve spec instead of the whole stack: pause (a hold of its own), open the
 * new image, swap it in every user, close the old stack (and the jobs, which
 * must all be over: -EBUSY), resume.  done(opaque, status, err) runs once,
 * maybe inline; status 0 or -errno with err saying why.
 */
void vbd_device_reopen(struct vbd_device *dev, const char *spec,
                       void (*done)(void *opaque, int status, const struct vbd_err *err),
                       void *opaque);

/* The jobs of this device (job.c keeps the list here). */
struct vbd_job **vbd_device_jobs(struct vbd_device *dev);
