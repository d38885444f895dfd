/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The migration job ("migrate"): the sequence behind the control verbs
 * migrate-start, -status, -cutover and -abort, against the mirror's API
 * (mirror.h) and the device services (include/vbd/job.h).
 *
 *   start    stack the mirror (pause, push the filter, resume) unless the
 *            device has one from an earlier migration, then start copying
 *   status   the mirror's figures, in the order vbd-ctl(8) documents
 *   complete cut over: pause (the hold is kept: the VBD stays paused, the
 *            partner has the disk), final copy, flush both sides
 *   cancel   drop the partner; after a cut-over the hold goes and the VBD
 *            serves again here
 *   reopen   after a cut-over, the VBD may be reopened on another image (the
 *            destination, once its partner let it go): that ends the job,
 *            the hold goes with it and the guest runs on the new image
 *
 * The mirror changes state on its own (partner failures, the copier
 * finishing); a prepare watcher follows it into the job's state every loop
 * iteration, and drops the cut-over hold once the mirror is no longer cut
 * over.
 */
#define VBD_LOG_TOPIC "migrate"
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <string.h>

#include "mirror.h"
#include "vbd/job.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

enum {
        OPT_TO,
        OPT_MODE,
        OPT_SHARE,
        OPT_RATE,
        OPT_REGION,
        OPT_TIMEOUT,
        OPT_ZEROED,
        OPT_DEPTH,
        OPT_SHALLOW,
        OPT_CONNECTIONS,
};

static const char *const modes[] = {"pasm", "precopy", NULL};

static const struct vbd_opt_desc migrate_opts[] = {
    [OPT_TO] = {.name = "to",
                .type = VBD_OPT_STRING,
                .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY,
                .help = "the partner's NBD URI (nbd://, nbd+unix://, nbds://, nbds+unix://)"},
    [OPT_MODE] = VBD_OPT_ENUM_DEF("mode", modes, "pasm", "pasm, or precopy for comparison"),
    [OPT_SHARE] = VBD_OPT_UINT_DEF("share", 1, 100, "50",
                                   "percent of the time the copier may take from a busy guest"),
    [OPT_RATE] =
        VBD_OPT_SIZE_DEF("rate", 0, UINT64_MAX >> 2, NULL, "bytes/s cap for the copier (0: none)"),
    [OPT_REGION] = {.name = "region",
                    .type = VBD_OPT_SIZE,
                    .flags = VBD_OPT_POW2,
                    .min = VBD_MIRROR_REGION_MIN,
                    .max = VBD_MIRROR_REGION_MAX,
                    .def = "1M",
                    .help = "copy unit, a power of two"},
    [OPT_TIMEOUT] = VBD_OPT_UINT_DEF("timeout", 1, VBD_MIRROR_TIMEOUT_MAX, "30",
                                     "seconds a partner command may take"),
    [OPT_ZEROED] = VBD_OPT_BOOL_DEF("zeroed", NULL, "the partner reads zeroes: skip holes"),
    [OPT_DEPTH] = VBD_OPT_UINT_DEF("depth", 1, VBD_MIRROR_DEPTH_MAX, "4",
                                   "copier regions in flight while the guest is idle"),
    [OPT_SHALLOW] = VBD_OPT_BOOL_DEF("shallow", NULL,
                                     "the partner has the image's backing chain: send only "
                                     "what the top image holds"),
    [OPT_CONNECTIONS] = VBD_OPT_UINT_DEF("connections", 1, VBD_MIRROR_CONN_MAX, "4",
                                         "NBD connections to a multi-conn partner (the "
                                         "forwards' and the copier's)"),
};

struct migrate {
        struct vbd_job *job;
        struct vbd_mirror_params p;
        char to[1024];
        bool holding; /* our cut-over pause is held */
        bool cutting; /* complete() paused, the cut-over has not called back */
        uint64_t pause_ns;
        ev_prepare follow;
};

static struct vbd_image *mirror_of(struct vbd_device *dev)
{
        return vbd_device_find_layer(dev, "mirror");
}

/* Follow the mirror's state into the job's; drop the hold when not cut over. */
static void follow(struct migrate *mg)
{
        struct vbd_device *dev = vbd_job_device(mg->job);
        struct vbd_image *m = mirror_of(dev);
        enum vbd_mirror_state st = m ? vbd_mirror_state(m) : VBD_MIRROR_NONE;
        struct vbd_mirror_status s;

        switch (st) {
        case VBD_MIRROR_NONE:
                break;
        case VBD_MIRROR_CONNECTING:
        case VBD_MIRROR_COPYING:
                vbd_job_set_state(mg->job, VBD_JOB_RUNNING, NULL);
                break;
        case VBD_MIRROR_READY:
                vbd_job_set_state(mg->job, VBD_JOB_READY, NULL);
                break;
        case VBD_MIRROR_CUTTING:
        case VBD_MIRROR_CUTOVER:
                /* Cut over stays COMPLETING: an abort still rolls it back. */
                vbd_job_set_state(mg->job, VBD_JOB_COMPLETING, NULL);
                break;
        case VBD_MIRROR_FAILED:
                if (vbd_job_get_state(mg->job) != VBD_JOB_FAILED) {
                        vbd_mirror_get_status(m, &s);
                        vbd_job_set_state(mg->job, VBD_JOB_FAILED, "%s", s.error);
                }
                break;
        case VBD_MIRROR_ABORTED:
                vbd_job_set_state(mg->job, VBD_JOB_CANCELLED, NULL);
                break;
        }
        if (mg->holding && !mg->cutting && st != VBD_MIRROR_CUTTING && st != VBD_MIRROR_CUTOVER) {
                mg->holding = false;
                vbd_device_resume(dev);
                if (st == VBD_MIRROR_ABORTED)
                        vbd_info("resumed after the aborted cut-over");
        }
}

static void follow_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
        follow(w->data);
}

static void follow_start(struct migrate *mg)
{
        struct ev_loop *loop = vbd_device_loop(vbd_job_device(mg->job));

        if (ev_is_active(&mg->follow))
                return;
        ev_prepare_start(loop, &mg->follow);
        ev_unref(loop); /* following alone does not keep the loop alive */
}

static void follow_stop(struct migrate *mg)
{
        struct ev_loop *loop = vbd_device_loop(vbd_job_device(mg->job));

        if (!ev_is_active(&mg->follow))
                return;
        ev_ref(loop);
        ev_prepare_stop(loop, &mg->follow);
}

/* The status object: today's fields in today's order. */
static void fill_status(struct vbd_device *dev, json_t *obj)
{
        struct vbd_mirror_status st = {.state = VBD_MIRROR_NONE, .eta_s = -1, .downtime_ms = -1};
        struct vbd_image *m = mirror_of(dev);

        if (m)
                vbd_mirror_get_status(m, &st);
        else
                st.size = vbd_image_info(vbd_device_image(dev))->size;
        json_object_update_new(
            obj,
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "state",
                      vbd_mirror_state_name(st.state), "mode", st.precopy ? "precopy" : "pasm",
                      "to", st.to, "error", st.error, "size", (json_int_t)st.size, "partner_size",
                      (json_int_t)st.partner_size, "region_size", (json_int_t)st.region_size,
                      "regions_total", (json_int_t)st.regions_total, "regions_synced",
                      (json_int_t)st.regions_synced, "regions_inflight",
                      (json_int_t)st.regions_inflight, "bytes_synced", (json_int_t)st.bytes_synced,
                      "progress", st.size ? (double)st.bytes_synced / (double)st.size : 0.));
        json_object_update_new(
            obj,
            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "bytes_copied",
                      (json_int_t)st.bytes_copied, "bytes_zeroed", (json_int_t)st.bytes_zeroed,
                      "bytes_forwarded", (json_int_t)st.bytes_forwarded, "writes_forwarded",
                      (json_int_t)st.writes_forwarded, "bytes_sent",
                      (json_int_t)(st.bytes_copied + st.bytes_forwarded), "passes",
                      (json_int_t)st.passes, "dirty_bytes", (json_int_t)st.dirty_bytes,
                      "partner_inflight", (json_int_t)st.partner_inflight, "writes_waited",
                      (json_int_t)st.writes_waited, "elapsed_ms", (json_int_t)st.elapsed_ms, "rate",
                      (json_int_t)st.rate, "eta_s", (json_int_t)st.eta_s, "downtime_ms",
                      (json_int_t)st.downtime_ms, "paused", (int)vbd_device_paused(dev)));
        json_object_set_new(obj, "partner_connected", json_boolean(st.partner_connected));
        json_object_set_new(obj, "bytes_shallow", json_integer((json_int_t)st.bytes_shallow));
        json_object_set_new(obj, "shallow", json_boolean(st.shallow));
        json_object_set_new(obj, "connections", json_integer(st.connections));
        json_object_set_new(obj, "multi_conn", json_boolean(st.multi_conn));
        json_object_set_new(obj, "forward_requests", json_integer((json_int_t)st.forward_requests));
}

static void migrate_status(struct vbd_job *job, json_t *obj)
{
        follow(vbd_job_state(job));
        fill_status(vbd_job_device(job), obj);
}

static void migrate_status_none(struct vbd_device *dev, json_t *obj)
{
        fill_status(dev, obj);
}

/* Start on the stacked mirror m: 0 or -errno + err. */
static int begin(struct migrate *mg, struct vbd_image *m, struct vbd_err *err)
{
        int r = vbd_mirror_start(m, &mg->p, err);

        if (r < 0)
                return r;
        vbd_job_set_state(mg->job, VBD_JOB_RUNNING, NULL);
        follow_start(mg);
        return 0;
}

/* The VBD is drained: stack the mirror, start, resume. */
static void start_paused(void *opaque)
{
        struct migrate *mg = opaque;
        struct vbd_device *dev = vbd_job_device(mg->job);
        struct vbd_err err = {0};
        int r = vbd_device_push_filter(dev, "mirror", &err);

        if (r >= 0)
                r = begin(mg, mirror_of(dev), &err);
        vbd_device_resume(dev);
        vbd_job_reply(mg->job, r, err.msg);
}

static int migrate_start(struct vbd_job *job, const struct vbd_opt_value *v, struct vbd_err *err)
{
        struct migrate *mg = vbd_job_state(job);
        struct vbd_device *dev = vbd_job_device(job);
        const char *to = v[OPT_TO].s;
        struct vbd_image *m;

        mg->job = job;
        ev_prepare_init(&mg->follow, follow_cb);
        mg->follow.data = mg;
        if (strlen(to) >= sizeof(mg->to))
                return vbd_err_set(err, -EINVAL, "\"to\": longer than %zu bytes",
                                   sizeof(mg->to) - 1);
        if (strncmp(to, "nbd://", 6) && strncmp(to, "nbd+unix://", 11) &&
            strncmp(to, "nbds://", 7) && strncmp(to, "nbds+unix://", 12))
                return vbd_err_set(err, -EINVAL, "\"to\": not an NBD URI: %s", to);
        if (vbd_device_readonly(dev))
                return vbd_err_set(err, -EROFS, "the VBD is read-only: nothing to migrate");
        snprintf(mg->to, sizeof(mg->to), "%s", to);
        mg->p = (struct vbd_mirror_params){
            .to = mg->to,
            .precopy = v[OPT_MODE].e == 1,
            .share = (unsigned)v[OPT_SHARE].u,
            .rate = v[OPT_RATE].set ? v[OPT_RATE].u : 0,
            .region = v[OPT_REGION].u,
            .timeout = (unsigned)v[OPT_TIMEOUT].u,
            .zeroed = v[OPT_ZEROED].set && v[OPT_ZEROED].b,
            .depth = (unsigned)v[OPT_DEPTH].u,
            .shallow = v[OPT_SHALLOW].set && v[OPT_SHALLOW].b,
            .connections = (unsigned)v[OPT_CONNECTIONS].u,
        };
        m = mirror_of(dev);
        if (m)
                return begin(mg, m, err);
        /* Stack a mirror over the image: only with nothing in flight. */
        vbd_info("migration requested: pausing to stack the mirror");
        vbd_device_pause(dev, start_paused, mg); /* may call back inline */
        return 1;
}

static void cutover_done(void *opaque, int status)
{
        struct migrate *mg = opaque;
        struct vbd_mirror_status st;
        char msg[400] = "";

        mg->cutting = false;
        if (status < 0) {
                vbd_mirror_get_status(mirror_of(vbd_job_device(mg->job)), &st);
                snprintf(msg, sizeof(msg), "cut-over failed: %s",
                         st.error[0] ? st.error : strerror(-status));
        }
        follow(mg); /* failed: drops the hold; cut over: keeps it */
        vbd_job_reply(mg->job, status, msg);
}

static void cutover_paused(void *opaque)
{
        struct migrate *mg = opaque;
        struct vbd_image *m = mirror_of(vbd_job_device(mg->job));
        int r = m ? vbd_mirror_cutover(m, mg->pause_ns, cutover_done, mg) : -ENOENT;

        if (r < 0)
                cutover_done(mg, r);
}

static int migrate_complete(struct vbd_job *job, struct vbd_err *err)
{
        struct migrate *mg = vbd_job_state(job);
        struct vbd_device *dev = vbd_job_device(job);
        struct vbd_image *m = mirror_of(dev);
        enum vbd_mirror_state st;

        if (!m)
                return vbd_err_set(err, -ENOENT, "no migration (see migrate-start)");
        st = vbd_mirror_state(m);
        if (st != VBD_MIRROR_READY)
                return vbd_err_set(
                    err,
                    st == VBD_MIRROR_COPYING || st == VBD_MIRROR_CONNECTING ? -EAGAIN : -EINVAL,
                    "the migration is %s, not ready", vbd_mirror_state_name(st));
        if (mg->cutting || mg->holding)
                return vbd_err_set(err, -EBUSY, "a cut-over is under way");
        mg->cutting = mg->holding = true;
        mg->pause_ns = vbd_now_ns();
        vbd_info("cut-over requested: pausing the VBD");
        vbd_device_pause(dev, cutover_paused, mg); /* may call back inline */
        return 1;
}

static int migrate_cancel(struct vbd_job *job, struct vbd_err *err)
{
        struct migrate *mg = vbd_job_state(job);
        struct vbd_image *m = mirror_of(vbd_job_device(job));

        if (!m)
                return vbd_err_set(err, -ENOENT, "no migration to abort");
        if (vbd_mirror_abort(m) < 0)
                return vbd_err_set(err, -ENOENT, "no migration running (it is %s)",
                                   vbd_mirror_state_name(vbd_mirror_state(m)));
        follow(mg);
        return 0;
}

/* A finished cut-over lets a reopen end it: the partner has the disk. */
static bool migrate_reopen_ends(struct vbd_job *job)
{
        struct migrate *mg = vbd_job_state(job);
        struct vbd_image *m = mg->job ? mirror_of(vbd_job_device(job)) : NULL;

        return m && mg->holding && !mg->cutting && vbd_mirror_state(m) == VBD_MIRROR_CUTOVER;
}

static void migrate_free(struct vbd_job *job)
{
        struct migrate *mg = vbd_job_state(job);

        if (!mg->job)
                return; /* start never ran */
        follow_stop(mg);
        if (mg->holding) {
                mg->holding = false;
                if (!mg->cutting)
                        vbd_info("migration to %s over: its cut-over hold is released", mg->to);
                vbd_device_resume(vbd_job_device(job));
        }
}

const struct vbd_job_type vbd_job_migrate = {
    .name = "migrate",
    .description = "storage migration to an NBD partner (the mirror's copier and cut-over)",
    .opts = migrate_opts,
    .nopts = VBD_ARRAY_SIZE(migrate_opts),
    .state_size = sizeof(struct migrate),
    .start = migrate_start,
    .status = migrate_status,
    .complete = migrate_complete,
    .cancel = migrate_cancel,
    .free = migrate_free,
    .status_none = migrate_status_none,
    .reopen_ends = migrate_reopen_ends,
};
