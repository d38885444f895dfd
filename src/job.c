/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Jobs (see job.h and include/vbd/job.h): one lifecycle for every
 * long-running operation on a device, the options parsed from JSON with the
 * type's table, one pending asynchronous answer per job.
 */
#define VBD_LOG_TOPIC "job"
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "image.h"
#include "job.h"
#include "vbd/log.h"
#include "vbd/macro.h"

enum pending { PENDING_NONE, PENDING_START, PENDING_COMPLETE, PENDING_CANCEL };

struct vbd_job {
        struct vbd_job *next; /* the device's list, newest first */
        const struct vbd_job_type *type;
        struct vbd_device *dev;
        enum vbd_job_state state;
        char error[256];
        enum pending pending; /* a start/complete/cancel that returned 1 */
        vbd_job_reply_fn reply;
        void *reply_opaque;
        void *priv; /* type->state_size bytes */
};

/* Job types are offered by the drivers and filters compiled in (their .jobs). */
const struct vbd_job_type *vbd_job_type_find(const char *name)
{
        for (unsigned i = 0; vbd_drivers[i]; i++) {
                const struct vbd_job_type *const *j = vbd_drivers[i]->jobs;

                for (; j && *j; j++)
                        if (strcmp((*j)->name, name) == 0)
                                return *j;
        }
        return NULL;
}

const char *vbd_job_state_name(enum vbd_job_state s)
{
        static const char *const names[] = {
            [VBD_JOB_NONE] = "starting",       [VBD_JOB_RUNNING] = "running",
            [VBD_JOB_READY] = "ready",         [VBD_JOB_COMPLETING] = "completing",
            [VBD_JOB_DONE] = "done",           [VBD_JOB_FAILED] = "failed",
            [VBD_JOB_CANCELLED] = "cancelled",
        };

        return (unsigned)s < VBD_ARRAY_SIZE(names) ? names[s] : "unknown";
}

bool vbd_job_state_terminal(enum vbd_job_state s)
{
        return s == VBD_JOB_DONE || s == VBD_JOB_FAILED || s == VBD_JOB_CANCELLED;
}

/* ---- the services jobs use ---- */

void *vbd_job_state(struct vbd_job *job)
{
        return job->priv;
}

struct vbd_device *vbd_job_device(struct vbd_job *job)
{
        return job->dev;
}

enum vbd_job_state vbd_job_get_state(const struct vbd_job *job)
{
        return job->state;
}

void vbd_job_set_state(struct vbd_job *job, enum vbd_job_state s, const char *fmt, ...)
{
        va_list ap;

        if (job->state == s)
                return;
        job->error[0] = '\0';
        if (fmt) {
                va_start(ap, fmt);
                vsnprintf(job->error, sizeof(job->error), fmt, ap);
                va_end(ap);
        }
        vbd_debug("%s job: %s -> %s%s%s", job->type->name, vbd_job_state_name(job->state),
                  vbd_job_state_name(s), job->error[0] ? ": " : "", job->error);
        job->state = s;
}

static json_t *job_status_json(struct vbd_job *job)
{
        json_t *obj = json_object();

        job->type->status(job, obj);
        return obj;
}

static void job_free(struct vbd_job *job)
{
        if (job->type->free)
                job->type->free(job);
        /* A pause the job waits for (its state as the opaque) must not call back. */
        vbd_device_forget(job->dev, job->priv);
        vbd_device_forget(job->dev, job);
        free(job->priv);
        free(job);
}

static void job_unlink(struct vbd_job *job)
{
        for (struct vbd_job **pp = vbd_device_jobs(job->dev); *pp; pp = &(*pp)->next) {
                if (*pp == job) {
                        *pp = job->next;
                        return;
                }
        }
}

/* Drop the older jobs of job's type: job's start went through. */
static void drop_older(struct vbd_job *job)
{
        struct vbd_job **pp = &job->next;

        while (*pp) {
                struct vbd_job *o = *pp;

                if (o->type != job->type) {
                        pp = &o->next;
                        continue;
                }
                *pp = o->next;
                job_free(o);
        }
}

void vbd_job_reply(struct vbd_job *job, int status, const char *msg)
{
        enum pending what = job->pending;
        vbd_job_reply_fn reply = job->reply;
        void *opaque = job->reply_opaque;
        json_t *result = NULL;

        if (what == PENDING_NONE) {
                vbd_warn("%s job: an answer nobody asked for (%d)", job->type->name, status);
                return;
        }
        job->pending = PENDING_NONE;
        job->reply = NULL;
        job->reply_opaque = NULL;
        if (status >= 0 && reply)
                result = job_status_json(job);
        if (what == PENDING_START) {
                if (status < 0) {
                        job_unlink(job); /* as if it never started */
                        job_free(job);
                } else {
                        drop_older(job);
                }
        }
        if (reply)
                reply(opaque, status < 0 ? status : 0,
                      status < 0 ? (msg && *msg ? msg : strerror(-status)) : NULL, result);
        else
                json_decref(result);
}

/* ---- the core's side ---- */

struct vbd_job *vbd_job_get(struct vbd_device *dev, const struct vbd_job_type *type)
{
        for (struct vbd_job *j = *vbd_device_jobs(dev); j; j = j->next)
                if (j->type == type)
                        return j;
        return NULL;
}

/* The text vbd_opts_parse() reads for a JSON value of an option of type t. */
static int json_to_text(const struct vbd_opt_desc *d, json_t *val, char *buf, size_t size,
                        const char **ret, struct vbd_err *err)
{
        switch (d->type) {
        case VBD_OPT_STRING:
        case VBD_OPT_ENUM:
                if (!json_is_string(val) ||
                    strlen(json_string_value(val)) != json_string_length(val))
                        break;
                *ret = json_string_value(val);
                return 0;
        case VBD_OPT_TRISTATE:
                if (json_is_string(val) && strcmp(json_string_value(val), "auto") == 0) {
                        *ret = "auto";
                        return 0;
                }
                /* fall through */
        case VBD_OPT_BOOL:
                if (!json_is_boolean(val))
                        break;
                *ret = json_is_true(val) ? "on" : "off";
                return 0;
        case VBD_OPT_SIZE:
        case VBD_OPT_UINT:
                if (!json_is_integer(val))
                        break;
                snprintf(buf, size, "%" JSON_INTEGER_FORMAT, json_integer_value(val));
                *ret = buf;
                return 0;
        }
        static const char *const what[] = {
            [VBD_OPT_STRING] = "a string",
            [VBD_OPT_BOOL] = "a boolean",
            [VBD_OPT_TRISTATE] = "true, false or \"auto\"",
            [VBD_OPT_SIZE] = "an integer (bytes)",
            [VBD_OPT_UINT] = "an integer",
            [VBD_OPT_ENUM] = "a string",
        };
        return vbd_err_set(err, -EINVAL, "\"%s\" must be %s", d->name,
                           (unsigned)d->type < VBD_ARRAY_SIZE(what) ? what[d->type] : "valid");
}

static int parse_args(const struct vbd_job_type *type, json_t *args, struct vbd_opt_value *values,
                      struct vbd_err *err)
{
        const char *key;
        json_t *val;
        int r;

        json_object_foreach(args, key, val)
        {
                const struct vbd_opt_desc *d = NULL;
                const char *text = NULL;
                char buf[32];

                for (unsigned i = 0; i < type->nopts; i++)
                        if (strcmp(type->opts[i].name, key) == 0)
                                d = &type->opts[i];
                if (!d)
                        return vbd_err_set(err, -EINVAL, "%s-start: unknown argument \"%s\"",
                                           type->name, key);
                r = json_to_text(d, val, buf, sizeof(buf), &text, err);
                if (r >= 0)
                        r = vbd_opts_parse(type->opts, type->nopts, key, text, values, err);
                if (r < 0)
                        return err->code = -EINVAL; /* every bad argument is EINVAL */
        }
        r = vbd_opts_finish(type->opts, type->nopts, values, err);
        return r < 0 ? (err->code = -EINVAL) : 0;
}

int vbd_job_start(struct vbd_device *dev, const struct vbd_job_type *type, json_t *args,
                  json_t **ret, struct vbd_err *err, vbd_job_reply_fn reply, void *opaque)
{
        struct vbd_job *old = vbd_job_get(dev, type), *job;
        struct vbd_opt_value *values = calloc(type->nopts ? type->nopts : 1, sizeof(*values));
        int r;

        if (!values)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        r = parse_args(type, args, values, err);
        if (r < 0)
                goto out;
        if (old && !vbd_job_state_terminal(old->state)) {
                r = vbd_err_set(err, -EBUSY, "a %s job is %s", type->name,
                                vbd_job_state_name(old->state));
                goto out;
        }
        job = calloc(1, sizeof(*job));
        if (job && type->state_size && !(job->priv = calloc(1, type->state_size))) {
                free(job);
                job = NULL;
        }
        if (!job) {
                r = vbd_err_set(err, -ENOMEM, "out of memory");
                goto out;
        }
        job->type = type;
        job->dev = dev;
        job->state = VBD_JOB_NONE;
        job->next = *vbd_device_jobs(dev);
        *vbd_device_jobs(dev) = job;
        job->pending = PENDING_START;
        job->reply = reply;
        job->reply_opaque = opaque;
        r = type->start(job, values, err);
        if (r < 0) {
                job->pending = PENDING_NONE;
                job_unlink(job);
                job_free(job);
                if (!err->code)
                        vbd_err_set(err, r, "%s", strerror(-r));
                goto out;
        }
        if (r == 0) {
                job->pending = PENDING_NONE;
                drop_older(job);
                *ret = job_status_json(job);
        }
        /* r == 1: the job answers with vbd_job_reply(), maybe already has. */
out:
        free(values);
        return r;
}

json_t *vbd_job_status(struct vbd_device *dev, const struct vbd_job_type *type)
{
        struct vbd_job *job = vbd_job_get(dev, type);
        json_t *obj;

        if (job)
                return job_status_json(job);
        obj = json_object();
        if (type->status_none)
                type->status_none(dev, obj);
        else
                json_object_set_new(obj, "state", json_string("none"));
        return obj;
}

typedef int (*verb_fn)(struct vbd_job *job, struct vbd_err *err);

static int job_verb(struct vbd_device *dev, const struct vbd_job_type *type, verb_fn fn,
                    enum pending what, json_t **ret, struct vbd_err *err, vbd_job_reply_fn reply,
                    void *opaque)
{
        struct vbd_job *job = vbd_job_get(dev, type);
        int r;

        if (!job)
                return vbd_err_set(err, -ENOENT, "no %s job (see %s-start)", type->name,
                                   type->name);
        if (!fn)
                return vbd_err_set(err, -EOPNOTSUPP, "a %s job cannot do that", type->name);
        if (job->pending != PENDING_NONE) {
                /* A cancel may overtake a pending start or complete (which then
                 * answers, usually failed); it must answer at once itself. */
                if (what != PENDING_CANCEL)
                        return vbd_err_set(err, -EBUSY, "the %s job is busy with another command",
                                           type->name);
                r = fn(job, err);
                if (r == 1) {
                        vbd_err("%s job: a cancel answered later while busy", type->name);
                        r = vbd_err_set(err, -EIO, "internal error");
                }
                if (r < 0 && !err->code)
                        vbd_err_set(err, r, "%s", strerror(-r));
                if (r == 0)
                        *ret = job_status_json(job);
                return r;
        }
        job->pending = what;
        job->reply = reply;
        job->reply_opaque = opaque;
        r = fn(job, err);
        if (r <= 0) {
                job->pending = PENDING_NONE;
                job->reply = NULL;
                job->reply_opaque = NULL;
        }
        if (r < 0 && !err->code)
                vbd_err_set(err, r, "%s", strerror(-r));
        if (r == 0)
                *ret = job_status_json(job);
        return r;
}

int vbd_job_complete(struct vbd_device *dev, const struct vbd_job_type *type, json_t **ret,
                     struct vbd_err *err, vbd_job_reply_fn reply, void *opaque)
{
        return job_verb(dev, type, type->complete, PENDING_COMPLETE, ret, err, reply, opaque);
}

int vbd_job_cancel(struct vbd_device *dev, const struct vbd_job_type *type, json_t **ret,
                   struct vbd_err *err, vbd_job_reply_fn reply, void *opaque)
{
        return job_verb(dev, type, type->cancel, PENDING_CANCEL, ret, err, reply, opaque);
}

void vbd_jobs_forget(struct vbd_device *dev, void *opaque)
{
        for (struct vbd_job *j = *vbd_device_jobs(dev); j; j = j->next) {
                if (j->reply_opaque == opaque) {
                        j->reply = NULL; /* the job goes on; nobody gets the answer */
                        j->reply_opaque = NULL;
                }
        }
}

int vbd_jobs_check_idle(struct vbd_device *dev, struct vbd_err *err)
{
        for (struct vbd_job *j = *vbd_device_jobs(dev); j; j = j->next)
                if (j->pending != PENDING_NONE ||
                    (!vbd_job_state_terminal(j->state) &&
                     !(j->type->reopen_ends && j->type->reopen_ends(j))))
                        return vbd_err_set(err, -EBUSY, "a %s job is %s (cancel it first)",
                                           j->type->name, vbd_job_state_name(j->state));
        return 0;
}

void vbd_jobs_free(struct vbd_device *dev)
{
        struct vbd_job **head = vbd_device_jobs(dev);

        while (*head) {
                struct vbd_job *j = *head;

                *head = j->next;
                job_free(j);
        }
}
