/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The "backup" job: control verbs backup-start, backup-status, backup-cancel.
 *
 *   start   create the target file (qcow2 by default, over the previous
 *           backup for an incremental; or raw) and open it, or open the NBD
 *           export named by an nbd:// URI (it must hold the previous backup
 *           for an incremental; nothing is created), pause the device,
 *           stack the backup filter if it has none, fix the set of blocks
 *           (changed since the checkpoint "since", or every block that does
 *           not read as zeroes), make the checkpoint "checkpoint" in the
 *           same pause, begin, resume: the backup is the image as it was in
 *           that pause
 *   status  state, bytes to copy, read and written, writes held and for how
 *           long, rate, error
 *   cancel  stop; the job ends CANCELLED
 *
 * A backup that fails or is cancelled removes its target file (an NBD
 * export is left as it is, partly written) and the checkpoint it made, so
 * that checkpoint never stands for a backup that does not exist; changes since the previous
 * checkpoint are still all counted (removing a checkpoint merges its changes into the one before).
 * When the daemon dies mid-backup the checkpoint stays; the caller (vbd-ctl backup) only ever
 * builds on checkpoints of backups that completed.
 */
#define VBD_LOG_TOPIC "drv.backup"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backup.h"
#include "vbd/err.h"
#include "vbd/job.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

enum {
        OPT_TARGET,
        OPT_FORMAT,
        OPT_BACKING,
        OPT_SINCE,
        OPT_CHECKPOINT,
        OPT_GRANULARITY,
        OPT_DEPTH,
        OPT_RATE,
};

static const char *const formats[] = {"qcow2", "raw", NULL};

static const struct vbd_opt_desc job_opts[] = {
    [OPT_TARGET] = {.name = "target",
                    .type = VBD_OPT_STRING,
                    .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY,
                    .help = "the new file to write the backup to (must not exist), or the "
                            "NBD URI of an export to write it into (nbd://, nbd+unix://)"},
    [OPT_FORMAT] =
        VBD_OPT_ENUM_DEF("format", formats, NULL, "a file target's format (default qcow2)"),
    [OPT_BACKING] = VBD_OPT_STRING_DEF("backing", NULL,
                                       "qcow2: the previous backup, the new one's backing file"),
    [OPT_SINCE] = VBD_OPT_STRING_DEF("since", NULL,
                                     "incremental: copy only what changed since this checkpoint"),
    [OPT_CHECKPOINT] = VBD_OPT_STRING_DEF("checkpoint", NULL,
                                          "make this checkpoint at the backup's point in time"),
    [OPT_GRANULARITY] = {.name = "granularity",
                         .type = VBD_OPT_SIZE,
                         .flags = VBD_OPT_POW2,
                         .min = BK_GRAN_MIN,
                         .max = BK_GRAN_MAX,
                         .def = "64K",
                         .help = "copy unit and the qcow2 target's cluster size"},
    [OPT_DEPTH] = VBD_OPT_UINT_DEF("depth", 1, BK_SLOTS, "4", "runs of blocks in flight"),
    [OPT_RATE] = VBD_OPT_SIZE_DEF("rate", 0, UINT64_MAX >> 2, "0",
                                  "bytes/s the copy may read (0: no cap); blocks a guest write "
                                  "waits for are read at once"),
};

#define BK_PATH_MAX 1024
#define BK_NAME_MAX 64

struct bk_job {
        struct vbd_job *job;
        char target[BK_PATH_MAX], backing[BK_PATH_MAX];
        char since[BK_NAME_MAX], checkpoint[BK_NAME_MAX];
        unsigned format; /* index in formats */
        uint32_t gran;
        unsigned depth;
        uint64_t rate;
        struct vbd_image *timg; /* the target, open */
        bool nbd;               /* the target is an NBD export: not created, not removed */
        bool made_checkpoint;
        bool began;
        bool cancelling; /* cancel returned 1 */
        int status;
        char msg[256];
};

static struct vbd_image *layer_of(struct vbd_device *dev)
{
        return vbd_device_find_layer(dev, "backup");
}

static bool has_bitmap(struct vbd_device *dev, const char *name)
{
        const char *n;

        for (unsigned i = 0; (n = vbd_image_bitmap_name(vbd_device_image(dev), i)); i++)
                if (!strcmp(n, name))
                        return true;
        return false;
}

static bool name_ok(const char *name)
{
        size_t n = strlen(name);

        return n > 0 && n < BK_NAME_MAX &&
               strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
                   n;
}

static void drop_target(struct bk_job *b)
{
        struct vbd_device *dev = vbd_job_device(b->job);

        if (b->timg)
                vbd_device_close_image(dev, b->timg);
        b->timg = NULL;
        if (b->nbd)
                vbd_warn("%s: the export is left partly written", b->target);
        else if (unlink(b->target) < 0 && errno != ENOENT)
                vbd_warn("%s: %s", b->target, strerror(errno));
}

static void end(struct bk_job *b)
{
        if (b->status == 0)
                vbd_job_set_state(b->job, VBD_JOB_DONE, NULL);
        else if (b->status == -ECANCELED)
                vbd_job_set_state(b->job, VBD_JOB_CANCELLED, NULL);
        else
                vbd_job_set_state(b->job, VBD_JOB_FAILED, "%s", b->msg);
        if (b->cancelling) {
                b->cancelling = false;
                vbd_job_reply(b->job, 0, NULL);
        }
}

static void uncheckpoint_paused(void *opaque)
{
        struct bk_job *b = opaque;
        struct vbd_device *dev = vbd_job_device(b->job);
        struct vbd_err err = {0};

        if (vbd_image_bitmap_remove(vbd_device_image(dev), b->checkpoint, &err) < 0)
                vbd_warn("backup failed, and its checkpoint %s stays: %s", b->checkpoint, err.msg);
        else
                vbd_info("backup failed: checkpoint %s removed", b->checkpoint);
        b->made_checkpoint = false;
        vbd_device_resume(dev);
        end(b);
}

/* The engine is over (nothing in flight). */
static void finished(void *opaque, int status, const char *msg)
{
        struct bk_job *b = opaque;
        struct vbd_device *dev = vbd_job_device(b->job);

        b->status = status;
        snprintf(b->msg, sizeof(b->msg), "%s", msg ? msg : "");
        if (status == 0) {
                vbd_device_close_image(dev, b->timg);
                b->timg = NULL;
                end(b);
                return;
        }
        drop_target(b);
        if (b->made_checkpoint && status != -ESHUTDOWN) {
                vbd_device_pause(dev, uncheckpoint_paused, b); /* may call back inline */
                return;
        }
        end(b);
}

/* Fix the set: 0 or -errno + err. */
static int fill_set(struct bk_job *b, struct vbd_image *layer, struct vbd_err *err)
{
        struct vbd_image *top = vbd_device_image(vbd_job_device(b->job));
        uint64_t size = vbd_image_info(top)->size, pos = 0;
        struct vbd_extent ext[256];

        while (pos < size) {
                unsigned n = 0;
                int r = b->since[0] ? vbd_image_bitmap_status(top, b->since, pos, size - pos, ext,
                                                              VBD_ARRAY_SIZE(ext), &n)
                                    : vbd_image_block_status(top, pos, size - pos, ext,
                                                             VBD_ARRAY_SIZE(ext), &n);

                if (r < 0)
                        return vbd_err_set(err, r, "%s of the image at %llu: %s",
                                           b->since[0] ? "the bitmap" : "the block status",
                                           (unsigned long long)pos, strerror(-r));
                for (unsigned i = 0; i < n; i++) {
                        /* an NBD export may hold old data: a full backup writes it all
                         * (runs of zeroes as write-zeroes) */
                        bool copy = b->since[0] ? (ext[i].flags & VBD_EXTENT_DIRTY)
                                                : b->nbd || !(ext[i].flags & VBD_EXTENT_ZERO);

                        if (copy)
                                bk_add(layer, pos, ext[i].len);
                        pos += ext[i].len;
                }
        }
        return 0;
}

static void start_paused(void *opaque)
{
        struct bk_job *b = opaque;
        struct vbd_device *dev = vbd_job_device(b->job);
        struct vbd_err err = {0};
        struct vbd_image *layer = layer_of(dev);
        struct bk_params p = {
            .target = b->timg,
            .gran = b->gran,
            .depth = b->depth,
            .skip_zero = !b->backing[0] && !b->nbd,
            .rate = b->rate,
            .finished = finished,
            .opaque = b,
        };
        int r = 0;

        if (!layer && (r = vbd_device_push_filter(dev, "backup", &err)) >= 0)
                layer = layer_of(dev);
        if (r >= 0 && !layer)
                r = vbd_err_set(&err, -ENODEV, "the backup filter is missing from the stack");
        if (r >= 0)
                r = bk_prepare(layer, &p, &err);
        if (r >= 0 && (r = fill_set(b, layer, &err)) < 0)
                bk_unprepare(layer);
        if (r >= 0 && b->checkpoint[0]) {
                if ((r = vbd_image_bitmap_add(vbd_device_image(dev), b->checkpoint, &err)) < 0)
                        bk_unprepare(layer);
                else
                        b->made_checkpoint = true;
        }
        if (r < 0) {
                vbd_device_resume(dev);
                drop_target(b);
                vbd_job_set_state(b->job, VBD_JOB_FAILED, "%s", err.msg);
                vbd_job_reply(b->job, r, err.msg);
                return;
        }
        b->began = true;
        vbd_job_set_state(b->job, VBD_JOB_RUNNING, NULL);
        bk_begin(layer);
        vbd_device_resume(dev);
        vbd_info("backup to %s%s%s%s%s: %llu bytes to copy", b->target,
                 b->since[0] ? ", changes since " : " (full)", b->since,
                 b->checkpoint[0] ? ", checkpoint " : "", b->checkpoint,
                 (unsigned long long)bk_get(layer)->bytes_total);
        vbd_job_reply(b->job, 0, NULL);
}

int bk_copy_opt(char *dst, size_t size, const struct vbd_opt_value *v, const char *what,
                struct vbd_err *err)
{
        if (!v->set || !v->s) {
                dst[0] = '\0';
                return 0;
        }
        if (strlen(v->s) >= size)
                return vbd_err_set(err, -ENAMETOOLONG, "\"%s\" is longer than %zu bytes", what,
                                   size - 1);
        strcpy(dst, v->s);
        return 0;
}

static bool is_nbd_uri(const char *t)
{
        return !strncmp(t, "nbd://", 6) || !strncmp(t, "nbd+unix://", 11) ||
               !strncmp(t, "nbds://", 7) || !strncmp(t, "nbds+unix://", 12);
}

/* An NBD export as the target: it exists, holds at least the image, takes
 * writes.  For an incremental it must already hold the backup it builds on. */
static int open_nbd(struct bk_job *b, struct vbd_device *dev, struct vbd_image *top,
                    struct vbd_err *err)
{
        char spec[BK_PATH_MAX + 16];
        uint64_t have, need = vbd_image_info(top)->size;

        snprintf(spec, sizeof(spec), "nbd:%s", b->target);
        b->timg = vbd_device_open_image(dev, spec, false, err);
        if (!b->timg)
                return err->code ? err->code : -EIO;
        have = vbd_image_info(b->timg)->size;
        if (have < need) {
                vbd_device_close_image(dev, b->timg);
                b->timg = NULL;
                return vbd_err_set(err, -ENOSPC, "%s: the export has %llu bytes, the image %llu",
                                   b->target, (unsigned long long)have, (unsigned long long)need);
        }
        vbd_device_pause(dev, start_paused, b); /* may call back inline */
        return 1;
}

static int bk_start(struct vbd_job *job, const struct vbd_opt_value *v, struct vbd_err *err)
{
        struct bk_job *b = vbd_job_state(job);
        struct vbd_device *dev = vbd_job_device(job);
        struct vbd_image *top = vbd_device_image(dev);
        struct vbd_create c = {0};
        char spec[BK_PATH_MAX + 16];
        int r;

        b->job = job;
        if ((r = bk_copy_opt(b->target, sizeof(b->target), &v[OPT_TARGET], "target", err)) < 0 ||
            (r = bk_copy_opt(b->backing, sizeof(b->backing), &v[OPT_BACKING], "backing", err)) <
                0 ||
            (r = bk_copy_opt(b->since, sizeof(b->since), &v[OPT_SINCE], "since", err)) < 0 ||
            (r = bk_copy_opt(b->checkpoint, sizeof(b->checkpoint), &v[OPT_CHECKPOINT], "checkpoint",
                             err)) < 0)
                return r;
        b->format = v[OPT_FORMAT].set ? v[OPT_FORMAT].e : 0;
        b->gran = (uint32_t)v[OPT_GRANULARITY].u;
        b->depth = (unsigned)v[OPT_DEPTH].u;
        b->rate = v[OPT_RATE].u;
        b->nbd = is_nbd_uri(b->target);
        if (b->target[0] != '/' && !b->nbd)
                return vbd_err_set(err, -EINVAL,
                                   "the target must be an absolute path or an NBD URI: %s",
                                   b->target);
        if (b->nbd && (b->backing[0] || v[OPT_FORMAT].set))
                return vbd_err_set(err, -EINVAL,
                                   "an NBD target is an existing export: no format, no backing");
        if (b->backing[0] && b->format != 0)
                return vbd_err_set(err, -EINVAL, "only a qcow2 target has a backing file");
        if (b->since[0] && !b->backing[0] && !b->nbd)
                return vbd_err_set(err, -EINVAL,
                                   "an incremental (since %s) needs the backup it builds on "
                                   "(backing)",
                                   b->since);
        if (b->since[0] && !has_bitmap(dev, b->since))
                return vbd_err_set(err, -ENOENT,
                                   "no checkpoint %s on this device: the next backup must be full",
                                   b->since);
        if (b->checkpoint[0]) {
                if (!name_ok(b->checkpoint))
                        return vbd_err_set(err, -EINVAL,
                                           "bad checkpoint name \"%s\" (1 to 63 of A-Z a-z 0-9 . _ "
                                           "-)",
                                           b->checkpoint);
                if (vbd_device_readonly(dev))
                        return vbd_err_set(err, -EROFS,
                                           "the image is read-only: no checkpoint to make");
                if (has_bitmap(dev, b->checkpoint))
                        return vbd_err_set(err, -EEXIST, "checkpoint %s exists", b->checkpoint);
        }
        if (b->nbd)
                return open_nbd(b, dev, top, err);
        c.path = b->target;
        c.size = vbd_image_info(top)->size;
        c.backing = b->backing[0] ? b->backing : NULL;
        c.backing_fmt = b->backing[0] ? "qcow2" : NULL;
        c.cluster_size = b->format == 0 ? b->gran : 0;
        if ((r = vbd_image_create(formats[b->format], &c, err)) < 0)
                return r;
        snprintf(spec, sizeof(spec), "%s:%s", formats[b->format], b->target);
        b->timg = vbd_device_open_image(dev, spec, false, err);
        if (!b->timg) {
                r = err->code ? err->code : -EIO;
                unlink(b->target);
                return r;
        }
        /* "starting" until the pause: "running" means the point in time is fixed */
        vbd_device_pause(dev, start_paused, b); /* may call back inline */
        return 1;
}

static void fill(struct bk_job *b, struct vbd_device *dev, json_t *obj)
{
        struct vbd_image *layer = layer_of(dev);
        const struct bk_state *s = layer ? bk_get(layer) : NULL;
        uint64_t now = vbd_now_ns(), elapsed = 0, total = 0, done = 0, written = 0, held = 0;
        uint64_t held_max = 0, held_sum = 0;

        if (s && b && b->began) {
                elapsed = ((s->end_ns ? s->end_ns : now) - s->start_ns) / 1000000u;
                total = s->bytes_total;
                done = s->bytes_read;
                written = s->bytes_written;
                held = s->writes_held;
                held_max = s->held_ns_max;
                held_sum = s->held_ns_sum;
        }
        json_object_update_new(
            obj, json_pack("{s:s,s:s,s:s,s:s,s:s,s:I}", "target", b ? b->target : "", "format",
                           b ? formats[b->format] : "", "backing", b ? b->backing : "", "since",
                           b ? b->since : "", "checkpoint", b ? b->checkpoint : "", "granularity",
                           (json_int_t)(b ? b->gran : 0)));
        json_object_update_new(
            obj,
            json_pack("{s:I,s:I,s:I,s:f,s:I,s:I,s:I,s:I,s:I}", "bytes_total", (json_int_t)total,
                      "bytes_done", (json_int_t)done, "bytes_written", (json_int_t)written,
                      "progress", total ? (double)done / (double)total : (b && b->began ? 1. : 0.),
                      "writes_held", (json_int_t)held, "held_max_us", (json_int_t)(held_max / 1000),
                      "held_avg_us", (json_int_t)(held ? held_sum / held / 1000 : 0), "elapsed_ms",
                      (json_int_t)elapsed, "rate",
                      (json_int_t)(elapsed ? done * 1000 / elapsed : 0)));
}

static void bk_status(struct vbd_job *job, json_t *obj)
{
        struct bk_job *b = vbd_job_state(job);

        json_object_set_new(obj, "state", json_string(vbd_job_state_name(vbd_job_get_state(job))));
        fill(b, vbd_job_device(job), obj);
        json_object_set_new(obj, "error", json_string(b->status ? b->msg : ""));
}

static void bk_status_none(struct vbd_device *dev, json_t *obj)
{
        json_object_set_new(obj, "state", json_string("none"));
        fill(NULL, dev, obj);
        json_object_set_new(obj, "error", json_string(""));
}

static int bk_cancel(struct vbd_job *job, struct vbd_err *err)
{
        struct bk_job *b = vbd_job_state(job);
        struct vbd_image *layer = layer_of(vbd_job_device(job));

        if (!b->began || !layer || !bk_active(layer))
                return vbd_err_set(err, -ENOENT, "no backup is running");
        b->cancelling = true;
        bk_stop(layer, -ECANCELED, "cancelled");
        return 1;
}

static void bk_free(struct vbd_job *job)
{
        struct bk_job *b = vbd_job_state(job);

        if (b->timg) /* the device closed under a starting backup */
                drop_target(b);
}

const struct vbd_job_type bk_job = {
    .name = "backup",
    .description = "a point-in-time backup, full or of the changes since a checkpoint",
    .opts = job_opts,
    .nopts = VBD_ARRAY_SIZE(job_opts),
    .state_size = sizeof(struct bk_job),
    .start = bk_start,
    .status = bk_status,
    .cancel = bk_cancel,
    .free = bk_free,
    .status_none = bk_status_none,
};
