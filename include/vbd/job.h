/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Jobs: long-running operations on one device (a storage migration today;
 * backups and exports next), each an object of its own with one lifecycle.
 *
 *   NONE -start-> RUNNING -> READY -complete-> COMPLETING -> DONE
 *                    |          |                  |
 *                    +----------+------------------+--> FAILED (error says why)
 *                    +----cancel-------------------+--> CANCELLED
 *
 * A driver or filter offers job types (struct vbd_driver.jobs); the core
 * keeps at most one job of each type per device, parses its options from the
 * control command's JSON arguments with the type's option table (opts.h),
 * and routes the control verbs to it: start, status, complete, cancel.  A
 * job touches the image stack only through its device: vbd_device_pause()
 * (counted holds: the device serves again when every holder resumed),
 * vbd_device_push_filter() while paused and drained, vbd_device_find_layer().
 *
 * start, complete and cancel return 0 (done, the core answers), 1 (the job
 * answers later, exactly once, with vbd_job_reply()) or -errno with err set.
 * Every callback runs on the device's loop thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "vbd/opts.h"

struct ev_loop;
struct vbd_err;
struct vbd_image;
struct vbd_job;
struct vbd_device;
struct vbd_driver;

enum vbd_job_state {
        VBD_JOB_NONE,       /* created, start not yet answered */
        VBD_JOB_RUNNING,    /* working */
        VBD_JOB_READY,      /* may be completed (a mirror in sync) */
        VBD_JOB_COMPLETING, /* complete requested, finishing */
        VBD_JOB_DONE,       /* finished: terminal */
        VBD_JOB_FAILED,     /* terminal, with an error message */
        VBD_JOB_CANCELLED,  /* terminal */
};

struct vbd_job_type {
        const char *name;        /* "migrate": the control verbs are NAME-start, ... */
        const char *description; /* one line */
        const struct vbd_opt_desc *opts;
        unsigned nopts;
        size_t state_size; /* zeroed, vbd_job_state() */

        /* Set up from the parsed options and begin.  On -errno the core frees the job. */
        int (*start)(struct vbd_job *job, const struct vbd_opt_value *values, struct vbd_err *err);
        /* Add this job's fields to obj (the core adds nothing before them). */
        void (*status)(struct vbd_job *job, json_t *obj);
        /* Finish (cut-over); -EAGAIN when not READY.  Optional: -EOPNOTSUPP. */
        int (*complete)(struct vbd_job *job, struct vbd_err *err);
        /* Stop now; the job ends CANCELLED (or FAILED).  -ENOENT when already over. */
        int (*cancel)(struct vbd_job *job, struct vbd_err *err);
        /* Release everything; only in a terminal state, with nothing in flight. */
        void (*free)(struct vbd_job *job);
        /* The status of a device that never ran this job (state "none" etc.): optional. */
        void (*status_none)(struct vbd_device *dev, json_t *obj);
        /* The device is asked to serve another image (reopen) while this job is
         * not over: true lets the reopen end the job (its work is complete
         * elsewhere: a cut-over whose partner now has the disk); it is then
         * freed with the old stack.  Optional: without it such a job makes
         * the reopen fail with EBUSY. */
        bool (*reopen_ends)(struct vbd_job *job);
};

void *vbd_job_state(struct vbd_job *job);
struct vbd_device *vbd_job_device(struct vbd_job *job);
enum vbd_job_state vbd_job_get_state(const struct vbd_job *job);
/* "starting", "running", ... "cancelled": the name status reports for s. */
const char *vbd_job_state_name(enum vbd_job_state s);
/* Move to state s; FAILED takes a message (printf format), others NULL. */
void vbd_job_set_state(struct vbd_job *job, enum vbd_job_state s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Answer the pending start/complete/cancel that returned 1: status 0 or -errno. */
void vbd_job_reply(struct vbd_job *job, int status, const char *msg);

/* Device services for jobs. */
struct ev_loop *vbd_device_loop(struct vbd_device *dev);
struct vbd_image *vbd_device_image(struct vbd_device *dev); /* the top of the stack */
bool vbd_device_readonly(const struct vbd_device *dev);
bool vbd_device_paused(const struct vbd_device *dev);
/* Take a hold: stop taking new requests; done(opaque) once nothing is in flight
 * (maybe inline).  Every hold is dropped with one vbd_device_resume(). */
void vbd_device_pause(struct vbd_device *dev, void (*done)(void *opaque), void *opaque);
void vbd_device_resume(struct vbd_device *dev);
/* Stack filter name (with its default options) on top; only when paused and
 * drained (-EBUSY).  0 or -errno + err. */
int vbd_device_push_filter(struct vbd_device *dev, const char *name, struct vbd_err *err);
/* The topmost layer opened by driver/filter name, or NULL. */
struct vbd_image *vbd_device_find_layer(struct vbd_device *dev, const char *name);
/* Another image for a job (a backup's target, a restore's source), opened from
 * spec with the device's AIO engine and loop; NULL + err on failure.  Close
 * it with vbd_device_close_image() once the job has nothing in flight on it:
 * it is drained (its drivers' background work ends) and closed. */
struct vbd_image *vbd_device_open_image(struct vbd_device *dev, const char *spec, bool readonly,
                                        struct vbd_err *err);
void vbd_device_close_image(struct vbd_device *dev, struct vbd_image *img);
/* An image of a driver that is not in the registry (a job's own view of the
 * device), opened from spec (its first name must be drv->name) with the
 * device's AIO engine and loop; NULL + err.  Closed like the others. */
struct vbd_image *vbd_device_open_driver(struct vbd_device *dev, const struct vbd_driver *drv,
                                         const char *spec, bool readonly, struct vbd_err *err);

/*
 * A job's own NBD export of img (a view of the device, not the device's
 * image; writable only when img takes writes), on endpoint ("unix:PATH" or
 * "tcp:ADDR:PORT"), export name name ("" the default).  It is a user of the device: it pauses with
 * it, and the device refuses to swap its stack while it runs.  NULL + err.
 * Stop it with vbd_device_export_stop(): the listener closes, the requests
 * in flight complete, the clients are dropped, done(opaque) runs from the
 * loop and the export is freed.  vbd_device_export_free() frees it at once,
 * only with nothing of it in flight (the device's teardown).
 */
struct vbd_device_export;
struct vbd_device_export *vbd_device_export_start(struct vbd_device *dev, struct vbd_image *img,
                                                  const char *endpoint, const char *name,
                                                  bool writable, struct vbd_err *err);
void vbd_device_export_stop(struct vbd_device_export *ex, void (*done)(void *opaque), void *opaque);
void vbd_device_export_free(struct vbd_device_export *ex); /* NULL-safe */
unsigned vbd_device_export_clients(const struct vbd_device_export *ex);
