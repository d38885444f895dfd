/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The "checkpoint" job: control verbs checkpoint-start {"op": "create" |
 * "remove", "name": NAME} and checkpoint-status.  Start pauses the device
 * (nothing in flight, so a checkpoint is a point in time every write is
 * either before or after), changes the map, resumes, and answers once the
 * map is on disk.  Status lists the checkpoints with the bytes changed since
 * each; it answers the same on a device that never ran the job.
 */
#define VBD_LOG_TOPIC "drv.cbt"
#include <errno.h>
#include <string.h>

#include "cbt.h"
#include "vbd/err.h"
#include "vbd/job.h"
#include "vbd/log.h"
#include "vbd/macro.h"

enum { OPT_OP, OPT_NAME };
static const char *const op_names[] = {"create", "remove", NULL};
static const struct vbd_opt_desc job_opts[] = {
    [OPT_OP] = VBD_OPT_ENUM_DEF("op", op_names, "create", "create or remove a checkpoint"),
    [OPT_NAME] = {.name = "name",
                  .type = VBD_OPT_STRING,
                  .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY,
                  .help = "the checkpoint's name (A-Z a-z 0-9 . _ -, at most 63)"},
};

struct cp_job {
        struct vbd_job *job;
        unsigned op;
        char name[CBT_NAME_MAX];
        bool holding;
};

static struct cbt_state *tracker(struct vbd_device *dev)
{
        struct vbd_image *l = vbd_device_find_layer(dev, "cbt");

        return l ? vbd_image_state(l) : NULL;
}

static void paused(void *opaque)
{
        struct cp_job *c = opaque;
        struct vbd_device *dev = vbd_job_device(c->job);
        struct cbt_state *s = tracker(dev);
        struct vbd_err err = {0};
        int r;

        if (!s)
                r = vbd_err_set(&err, -ENODEV, "the change tracker is gone");
        else if (c->op == 0)
                r = cbt_checkpoint_create(s, c->name, &err);
        else
                r = cbt_checkpoint_remove(s, c->name, &err);
        c->holding = false;
        vbd_device_resume(dev);
        if (r < 0) {
                vbd_job_set_state(c->job, VBD_JOB_FAILED, "%s", err.msg);
                vbd_job_reply(c->job, r, err.msg);
                return;
        }
        vbd_job_set_state(c->job, VBD_JOB_DONE, NULL);
        vbd_job_reply(c->job, 0, NULL);
}

static int cp_start(struct vbd_job *job, const struct vbd_opt_value *values, struct vbd_err *err)
{
        struct cp_job *c = vbd_job_state(job);
        struct vbd_device *dev = vbd_job_device(job);
        struct cbt_state *s = tracker(dev);

        if (!s)
                return vbd_err_set(err, -ENODEV,
                                   "no change tracker on this device (open the image as cbt:SPEC)");
        if (!cbt_name_ok(values[OPT_NAME].s))
                return vbd_err_set(err, -EINVAL,
                                   "bad checkpoint name \"%s\" (1 to 63 of A-Z a-z 0-9 . _ -)",
                                   values[OPT_NAME].s);
        if (s->readonly)
                return vbd_err_set(err, -EROFS, "the image is read-only: nothing to track");
        c->job = job;
        c->op = values[OPT_OP].e;
        strcpy(c->name, values[OPT_NAME].s);
        /* Refuse what cannot work before pausing the guest for it. */
        if (c->op == 0 && cbt_find(s, c->name) >= 0)
                return vbd_err_set(err, -EEXIST, "checkpoint %s exists", c->name);
        if (c->op == 1 && cbt_find(s, c->name) < 0)
                return vbd_err_set(err, -ENOENT, "no checkpoint %s", c->name);
        vbd_job_set_state(job, VBD_JOB_RUNNING, NULL);
        c->holding = true;
        vbd_device_pause(dev, paused, c); /* may call back inline */
        return 1;
}

static void fill(struct vbd_device *dev, json_t *obj)
{
        struct cbt_state *s = tracker(dev);
        json_t *list;

        if (!s) {
                json_object_set_new(obj, "tracking", json_false());
                return;
        }
        list = json_array();
        for (unsigned i = 0; i < s->ncp; i++)
                json_array_append_new(list,
                                      json_pack("{s:s,s:I,s:I}", "name", s->cp[i].name, "created",
                                                (json_int_t)s->cp[i].created, "changed_bytes",
                                                (json_int_t)(cbt_count_since(s, i) * s->gran)));
        json_object_set_new(obj, "tracking", json_boolean(!s->lost && s->fd >= 0));
        json_object_set_new(obj, "map", json_string(s->map_path));
        json_object_set_new(obj, "granularity", json_integer(s->gran));
        json_object_set_new(obj, "checkpoints", list);
        json_object_set_new(obj, "reason", json_string(s->reason));
        json_object_set_new(obj, "marks", json_integer((json_int_t)s->marks));
        json_object_set_new(obj, "commits", json_integer((json_int_t)s->commits));
        json_object_set_new(obj, "held_writes", json_integer((json_int_t)s->waited_writes));
}

static void cp_status(struct vbd_job *job, json_t *obj)
{
        enum vbd_job_state st = vbd_job_get_state(job);

        json_object_set_new(obj, "state", json_string(vbd_job_state_name(st)));
        fill(vbd_job_device(job), obj);
}

static void cp_status_none(struct vbd_device *dev, json_t *obj)
{
        json_object_set_new(obj, "state", json_string("none"));
        fill(dev, obj);
}

static int cp_cancel(struct vbd_job *job, struct vbd_err *err)
{
        return vbd_err_set(err, -ENOENT, "a checkpoint cannot be cancelled");
}

const struct vbd_job_type cbt_checkpoint_job = {
    .name = "checkpoint",
    .description = "create or remove a change-tracking checkpoint",
    .opts = job_opts,
    .nopts = VBD_ARRAY_SIZE(job_opts),
    .state_size = sizeof(struct cp_job),
    .start = cp_start,
    .status = cp_status,
    .cancel = cp_cancel,
    .status_none = cp_status_none,
};
