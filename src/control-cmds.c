/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control socket's commands: one table of {name, handler, flags}.  The
 * transport (control.c) checks the flags; pause, resume and reopen go
 * through the device; migrate-* go to the "migrate" job type, when a driver
 * offers it.
 */
#define VBD_LOG_TOPIC "ctl"
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "control-impl.h"
#include "device.h"
#include "image.h"
#include "job.h"
#include "nbd-export.h"
#include "vbd.h" /* struct vbd_stats */
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"
#include "xenbus.h"

static int no_args(json_t *args, struct vbd_err *err)
{
        if (args && json_object_size(args))
                return vbd_err_set(err, -EINVAL, "this command takes no arguments");
        return 0;
}

static const char *xenbus_state_name(int s)
{
        static const char *const names[] = {"unknown",     "initialising",  "initwait",
                                            "initialised", "connected",     "closing",
                                            "closed",      "reconfiguring", "reconfigured"};

        return s >= 0 && (unsigned)s < VBD_ARRAY_SIZE(names) ? names[s] : "unknown";
}

static const char *vbd_state_name(struct vbd_ctl *c)
{
        if (vbd_xenbus_finished(c->xb))
                return "exiting";
        if (vbd_device_paused(c->dev))
                return vbd_device_drained(c->dev) ? "paused" : "pausing";
        return xenbus_state_name(vbd_xenbus_state(c->xb));
}

static json_int_t uptime_s(struct vbd_ctl *c)
{
        return (json_int_t)((vbd_now_ms() - c->start_ms) / 1000);
}

/* ---- version, info, stats ---- */

static int cmd_version(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                       struct vbd_err *err)
{
        json_t *cmds = json_array();

        for (unsigned i = 0; i < vbd_ctl_ncmds; i++)
                json_array_append_new(cmds, json_string(vbd_ctl_cmds[i].name));
        *ret = json_pack("{s:i,s:s,s:o}", "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION,
                         "commands", cmds);
        return no_args(args, err);
}

static json_t *nbd_json(struct vbd_ctl *c)
{
        if (!c->nbd)
                return json_null();
        return json_pack("{s:s,s:s,s:b,s:b,s:I,s:I}", "endpoint", vbd_nbd_endpoint(c->nbd), "name",
                         vbd_nbd_name(c->nbd), "writable", vbd_nbd_writable(c->nbd), "tls",
                         vbd_nbd_tls(c->nbd), "clients", (json_int_t)vbd_nbd_clients(c->nbd),
                         "inflight", (json_int_t)vbd_nbd_inflight(c->nbd));
}

/* info of an export-only daemon: no guest, no xenbus. */
static int cmd_info_export(struct ctl_client *cl, json_t **ret)
{
        struct vbd_ctl *c = cl->ctl;
        struct vbd_image *img = vbd_device_image(c->dev);
        const struct vbd_info *info = vbd_image_info(img);

        *ret = json_pack("{s:i,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s,s:s,s:s,s:o}",
                         "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION, "pid",
                         (json_int_t)getpid(), "domid", (json_int_t)c->cfg.domid, "devid",
                         (json_int_t)c->cfg.devid, "image", vbd_image_name(img), "mode",
                         vbd_image_readonly(img) ? "r" : "w", "state", "export-only", "size",
                         (json_int_t)info->size, "sector_size", (json_int_t)info->logical_block,
                         "physical_sector_size", (json_int_t)info->physical_block, "uptime_s",
                         uptime_s(c), "log_level", vbd_config_log_level_name(c->log_level), "debug",
                         c->debug, "socket", c->path, "nbd", nbd_json(c));
        return 0;
}

static int cmd_info(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                    struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_job_type *migrate = vbd_job_type_find("migrate");
        const struct vbd_xenbus_config *xc;

        if (no_args(args, err) < 0)
                return err->code;
        if (!c->xb)
                return cmd_info_export(cl, ret);
        xc = vbd_xenbus_config(c->xb);
        struct vbd_image *img = vbd_device_image(c->dev);
        const struct vbd_info *info = vbd_image_info(img);
        int xs = vbd_xenbus_state(c->xb), fs = vbd_xenbus_frontend_state(c->xb);

        *ret = json_pack(
            "{s:i,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:I,s:i,s:s,s:i,s:s,"
            "s:b,s:b,s:b,s:I,s:I,s:s,s:s,s:s}",
            "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION, "pid", (json_int_t)getpid(),
            "domid", (json_int_t)xc->domid, "devid", (json_int_t)xc->devid, "image",
            vbd_image_name(img), "mode", xc->readonly ? "r" : "w", "state", vbd_state_name(c),
            "size", (json_int_t)info->size, "sector_size", (json_int_t)info->logical_block,
            "physical_sector_size", (json_int_t)info->physical_block, "type", xc->type, "backend",
            vbd_xenbus_backend_path(c->xb), "backend_domid", (json_int_t)xc->backend_domid,
            "xenbus_state", xs, "xenbus_state_name", xenbus_state_name(xs), "frontend_state", fs,
            "frontend_state_name", xenbus_state_name(fs), "connected", vbd_xenbus_connected(c->xb),
            "paused", vbd_device_paused(c->dev), "drained", vbd_device_drained(c->dev), "inflight",
            (json_int_t)vbd_xenbus_inflight(c->xb), "uptime_s", uptime_s(c), "log_level",
            vbd_config_log_level_name(c->log_level), "debug", c->debug, "socket", c->path);
        if (*ret) {
                json_object_set_new(*ret, "queues", json_integer(vbd_xenbus_queues(c->xb)));
                json_object_set_new(*ret, "max_queues", json_integer(xc->max_queues));
        }
        if (c->nbd)
                json_object_set_new(*ret, "nbd", nbd_json(c));
        if (migrate && vbd_job_get(c->dev, migrate)) {
                json_t *st = vbd_job_status(c->dev, migrate);

                json_object_set(*ret, "migration", json_object_get(st, "state"));
                json_decref(st);
        }
        return 0;
}

static json_t *op_stats_json(const struct vbd_op_stats *s)
{
        json_t *hist = json_array();
        unsigned last = 0;

        for (unsigned i = 0; i < VBD_LAT_BUCKETS; i++)
                if (s->lat_hist[i])
                        last = i + 1;
        for (unsigned i = 0; i < last; i++)
                json_array_append_new(hist, json_integer((json_int_t)s->lat_hist[i]));
        return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "requests",
                         (json_int_t)s->requests, "bytes", (json_int_t)s->bytes, "errors",
                         (json_int_t)s->errors, "lat_sum_us", (json_int_t)s->lat_sum_us,
                         "lat_avg_us", (json_int_t)(s->requests ? s->lat_sum_us / s->requests : 0),
                         "lat_p50_us", (json_int_t)vbd_stats_percentile(s, 0.50), "lat_p90_us",
                         (json_int_t)vbd_stats_percentile(s, 0.90), "lat_p99_us",
                         (json_int_t)vbd_stats_percentile(s, 0.99), "lat_p999_us",
                         (json_int_t)vbd_stats_percentile(s, 0.999), "lat_hist_log2_us", hist);
}

static int cmd_stats(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                     struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_xenbus_config *xc = vbd_xenbus_config(c->xb);
        struct vbd_stats st;

        if (no_args(args, err) < 0)
                return err->code;
        vbd_xenbus_get_stats(c->xb, &st);
        *ret = json_pack("{s:I,s:I,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:o,s:o,s:o,s:o,s:o}}",
                         "domid", (json_int_t)xc->domid, "devid", (json_int_t)xc->devid, "image",
                         vbd_image_name(vbd_device_image(c->dev)), "state", vbd_state_name(c),
                         "uptime_s", uptime_s(c), "inflight", (json_int_t)st.inflight,
                         "bad_requests", (json_int_t)st.bad_requests, "grant_errors",
                         (json_int_t)st.grant_errors, "notifies", (json_int_t)st.notifies,
                         "batches", (json_int_t)st.batches, "ops", "read", op_stats_json(&st.read),
                         "write", op_stats_json(&st.write), "flush", op_stats_json(&st.flush),
                         "discard", op_stats_json(&st.discard), "other", op_stats_json(&st.other));
        if (*ret) {
                /* Requests taken from each queue's ring since start (also
                 * queues of an earlier connection, if there were more). */
                json_t *qr = json_array();
                unsigned n = st.queues;

                for (unsigned i = 0; i < VBD_RING_MAX_QUEUES; i++)
                        if (st.queue_requests[i] && i + 1 > n)
                                n = i + 1;
                for (unsigned i = 0; qr && i < n; i++)
                        json_array_append_new(qr, json_integer((json_int_t)st.queue_requests[i]));
                json_object_set_new(*ret, "queues", json_integer(st.queues));
                json_object_set_new(*ret, "queue_requests", qr);
        }
        return 0;
}

/* ---- pause, resume, reopen: the control socket's hold on the device ---- */

static void paused_cb(void *opaque)
{
        struct vbd_ctl *c = opaque;
        uint64_t now = vbd_now_ms();

        if (!c->pausing)
                return; /* resumed before the drain */
        c->pausing = false;
        vbd_info("paused: nothing in flight");
        for (struct ctl_client *cl = c->clients; cl; cl = cl->next) {
                if (!cl->waiting_pause)
                        continue;
                cl->waiting_pause = false;
                ctl_deferred_reply(cl, 0, NULL,
                                   json_pack("{s:b,s:I}", "paused", 1, "waited_ms",
                                             (json_int_t)(now - cl->pause_begin_ms)));
        }
}

static int cmd_pause(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                     struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;

        if (no_args(args, err) < 0)
                return err->code;
        cl->waiting_pause = true;
        cl->pause_begin_ms = vbd_now_ms();
        if (!c->held) {
                c->held = c->pausing = true;
                vbd_info("pause requested: %u request(s) in flight", vbd_xenbus_inflight(c->xb));
                vbd_device_pause(c->dev, paused_cb, c); /* may call back inline */
        } else if (!c->pausing) {
                c->pausing = true; /* held and drained: answer now */
                paused_cb(c);
        }
        return 1;
}

static int cmd_resume(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                      struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        bool was = vbd_device_paused(c->dev);

        if (no_args(args, err) < 0)
                return err->code;
        if (c->pausing) {
                c->pausing = false;
                for (struct ctl_client *o = c->clients; o; o = o->next) {
                        if (!o->waiting_pause)
                                continue;
                        o->waiting_pause = false;
                        ctl_deferred_reply(o, -ECANCELED, "resumed before the VBD had drained",
                                           NULL);
                }
        }
        if (c->held) {
                c->held = false;
                vbd_device_resume(c->dev);
                if (!vbd_device_paused(c->dev))
                        vbd_info("resumed");
        }
        *ret = json_pack("{s:b,s:b}", "paused", vbd_device_paused(c->dev), "was_paused", was);
        return 0;
}

static void reopen_done(void *opaque, int status, const struct vbd_err *err)
{
        struct ctl_client *cl = opaque;
        struct vbd_image *img = vbd_device_image(cl->ctl->dev);

        if (status < 0)
                ctl_deferred_reply(cl, status, err->msg, NULL);
        else
                ctl_deferred_reply(cl, 0, NULL,
                                   json_pack("{s:s,s:I}", "image", vbd_image_name(img), "size",
                                             (json_int_t)vbd_image_info(img)->size));
}

static int cmd_reopen(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                      struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        json_t *j = args ? json_object_get(args, "image") : NULL;
        const char *spec;

        if (!j || !json_is_string(j))
                return vbd_err_set(err, -EINVAL, "reopen needs \"image\": a string");
        if (json_object_size(args) != 1)
                return vbd_err_set(err, -EINVAL, "reopen takes only \"image\"");
        spec = json_string_value(j);
        if (strlen(spec) != json_string_length(j) || !*spec || strlen(spec) > VBD_IMAGE_SPEC_MAX)
                return vbd_err_set(err, -EINVAL, "bad image spec");
        if (!vbd_device_drained(c->dev))
                return vbd_err_set(err, -EBUSY, "the VBD must be paused (and drained) first");
        vbd_device_reopen(c->dev, spec, reopen_done, cl); /* may answer inline */
        return 1;
}

static int cmd_detach(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args, json_t **ret,
                      struct vbd_err *err)
{
        if (no_args(args, err) < 0)
                return err->code;
        *ret = json_pack("{s:b}", "detaching", 1);
        return 0; /* CTL_DETACH: the shutdown starts once the reply is queued */
}

static int cmd_log_level(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                         json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        json_t *level = args ? json_object_get(args, "level") : NULL;
        json_t *debug = args ? json_object_get(args, "debug") : NULL;
        size_t known = (level ? 1 : 0) + (debug ? 1 : 0);
        int l = c->log_level;

        if (args && json_object_size(args) != known)
                return vbd_err_set(err, -EINVAL, "log-level takes \"level\" and \"debug\"");
        if (level) {
                if (!json_is_string(level) ||
                    (l = vbd_config_parse_log_level(json_string_value(level))) < 0)
                        return vbd_err_set(err, -EINVAL,
                                           "\"level\" must be err, warning, info or debug");
        }
        if (debug) {
                const char *t = json_is_string(debug) ? json_string_value(debug) : NULL;

                if (!t || strlen(t) >= sizeof(c->debug) ||
                    strspn(t, "abcdefghijklmnopqrstuvwxyz"
                              "0123456789._-,") != strlen(t))
                        return vbd_err_set(err, -EINVAL,
                                           "\"debug\" must be topics like ring,xenbus");
                if (vbd_log_enable(t) < 0)
                        return vbd_err_set(err, -EINVAL, "\"debug\": too long");
                snprintf(c->debug, sizeof(c->debug), "%s", t);
        }
        if (level) {
                c->log_level = l;
                vbd_log_set_level((enum vbd_log_level)l);
        }
        if (known)
                vbd_info("log level %s, debug topics '%s'", vbd_config_log_level_name(c->log_level),
                         c->debug);
        *ret = json_pack("{s:s,s:s}", "level", vbd_config_log_level_name(c->log_level), "debug",
                         c->debug);
        return 0;
}

/* ---- jobs: NAME-start, -status, -cutover (complete), -abort (cancel) ---- */

static const struct vbd_job_type *job_type(const struct ctl_cmd *cmd, struct vbd_err *err)
{
        const struct vbd_job_type *t = vbd_job_type_find(cmd->job);

        if (!t)
                vbd_err_set(err, -EOPNOTSUPP, "this vbdd was built without %s (no %s job type)",
                            cmd->noun, cmd->job);
        return t;
}

static void job_reply(void *opaque, int status, const char *msg, json_t *result)
{
        ctl_deferred_reply(opaque, status, msg, result);
}

static int cmd_job_start(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                         json_t **ret, struct vbd_err *err)
{
        const struct vbd_job_type *t = job_type(cmd, err);

        if (!t)
                return err->code;
        return vbd_job_start(cl->ctl->dev, t, args, ret, err, job_reply, cl);
}

static int cmd_job_status(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                          json_t **ret, struct vbd_err *err)
{
        const struct vbd_job_type *t = job_type(cmd, err);

        if (!t || no_args(args, err) < 0)
                return err->code;
        *ret = vbd_job_status(cl->ctl->dev, t);
        return 0;
}

static int cmd_job_complete(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                            json_t **ret, struct vbd_err *err)
{
        const struct vbd_job_type *t = job_type(cmd, err);

        if (!t || no_args(args, err) < 0)
                return err->code;
        if (!vbd_job_get(cl->ctl->dev, t))
                return vbd_err_set(err, -ENOENT, "no %s (see %s-start)", cmd->noun, t->name);
        return vbd_job_complete(cl->ctl->dev, t, ret, err, job_reply, cl);
}

static int cmd_job_cancel(struct ctl_client *cl, const struct ctl_cmd *cmd, json_t *args,
                          json_t **ret, struct vbd_err *err)
{
        const struct vbd_job_type *t = job_type(cmd, err);

        if (!t || no_args(args, err) < 0)
                return err->code;
        if (!vbd_job_get(cl->ctl->dev, t))
                return vbd_err_set(err, -ENOENT, "no %s to abort", cmd->noun);
        return vbd_job_cancel(cl->ctl->dev, t, ret, err, job_reply, cl);
}

void ctl_cmds_client_gone(struct ctl_client *cl)
{
        if (cl->ctl->dev)
                vbd_jobs_forget(cl->ctl->dev, cl);
}

#define G  CTL_GUEST
#define D  CTL_DEFERRED
#define NX CTL_NOT_BESIDE_NBD

const struct ctl_cmd vbd_ctl_cmds[] = {
    {"version", cmd_version, 0},
    {"info", cmd_info, 0},
    {"stats", cmd_stats, G},
    {"pause", cmd_pause, G | D},
    {"resume", cmd_resume, G},
    {"reopen", cmd_reopen, G | D},
    {"detach", cmd_detach, CTL_DETACH},
    {"log-level", cmd_log_level, 0},
    {"migrate-start", cmd_job_start, G | D | NX, "migrate", "migration"},
    {"migrate-status", cmd_job_status, G, "migrate", "migration"},
    {"migrate-cutover", cmd_job_complete, G | D, "migrate", "migration"},
    {"migrate-abort", cmd_job_cancel, G, "migrate", "migration"},
    {"checkpoint-start", cmd_job_start, D, "checkpoint", "change tracking"},
    {"checkpoint-status", cmd_job_status, 0, "checkpoint", "change tracking"},
    {"backup-start", cmd_job_start, D, "backup", "backup"},
    {"backup-status", cmd_job_status, 0, "backup", "backup"},
    {"backup-cancel", cmd_job_cancel, D, "backup", "backup"},
    {"snapshot-start", cmd_job_start, D, "snapshot", "snapshot"},
    {"snapshot-status", cmd_job_status, 0, "snapshot", "snapshot"},
    {"snapshot-cancel", cmd_job_cancel, D, "snapshot", "snapshot"},
};
const unsigned vbd_ctl_ncmds = VBD_ARRAY_SIZE(vbd_ctl_cmds);
