/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The core's side of jobs (include/vbd/job.h): find a job type by name in
 * the drivers' jobs lists, keep at most one job of each type per device,
 * parse the control command's JSON arguments with the type's option table,
 * and route start, status, complete and cancel to it.
 *
 * start, complete and cancel return 0 with *ret set (the job's status), 1
 * when the job answers later through reply(opaque, status, msg, result)
 * (result: the status object on success, else NULL; the callee owns it), or
 * -errno with err set.
 */
#pragma once

#include <jansson.h>

#include "vbd/job.h"

struct vbd_err;

typedef void (*vbd_job_reply_fn)(void *opaque, int status, const char *msg, json_t *result);

/* The job type called name in any compiled-in driver, or NULL. */
const struct vbd_job_type *vbd_job_type_find(const char *name);

/* The device's job of this type (the latest), or NULL. */
struct vbd_job *vbd_job_get(struct vbd_device *dev, const struct vbd_job_type *type);

int vbd_job_start(struct vbd_device *dev, const struct vbd_job_type *type, json_t *args,
                  json_t **ret, struct vbd_err *err, vbd_job_reply_fn reply, void *opaque);
/* The status object of the job of this type, or the type's status_none (else
 * {"state": "none"}). */
json_t *vbd_job_status(struct vbd_device *dev, const struct vbd_job_type *type);
/* -ENOENT when the device has no job of this type. */
int vbd_job_complete(struct vbd_device *dev, const struct vbd_job_type *type, json_t **ret,
                     struct vbd_err *err, vbd_job_reply_fn reply, void *opaque);
int vbd_job_cancel(struct vbd_device *dev, const struct vbd_job_type *type, json_t **ret,
                   struct vbd_err *err, vbd_job_reply_fn reply, void *opaque);

/* Nobody waits for opaque's answers any more (its client went away). */
void vbd_jobs_forget(struct vbd_device *dev, void *opaque);
/* 0 when every job of dev is over or lets a reopen end it (reopen_ends),
 * else -EBUSY + err naming one. */
int vbd_jobs_check_idle(struct vbd_device *dev, struct vbd_err *err);
/* Free every job of dev (device teardown, reopen). */
void vbd_jobs_free(struct vbd_device *dev);

bool vbd_job_state_terminal(enum vbd_job_state s);
