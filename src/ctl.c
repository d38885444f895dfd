/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control socket server (see ctl.h for the protocol and the limits).
 * Everything runs in the VBD's loop: accept, per-client line buffers, one
 * command table, replies queued and written as the socket allows.  A pause
 * replies only once the VBD has drained; the client's further requests
 * wait (its read watcher is stopped) until then.
 */
#define VBD_LOG_TOPIC "ctl"
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "ctl.h"
#ifdef HAVE_MIRROR
#include "mirror.h"
#endif
#include "image.h"
#include "nbd-export.h"
#include "vbd.h"
#include "util/socket.h"
#include "vbd/log.h"
#include "xenbus.h"

struct ctl_client {
        struct vbd_ctl *ctl;
        struct ctl_client *next;
        int fd;
        ev_io rio, wio;
        ev_timer idle;
        char *in; /* VBD_CTL_LINE_MAX + 1 bytes */
        size_t in_len;
        bool discarding; /* skipping the rest of an oversized line */
        bool eof;
        char *out;
        size_t out_len, out_size;
        bool busy;          /* a deferred request (pause) is waiting for its reply */
        bool waiting_pause; /* ... and it is a pause */
        json_t *pending_id; /* its "id" */
        uint64_t pause_begin_ms;
#ifdef HAVE_MIRROR
        struct vbd_mirror_params mp; /* migrate-start waiting for the pause */
        char mp_to[1024];
#endif
};

struct vbd_ctl {
        struct ev_loop *loop;
        struct vbd_ctl_config cfg;
        char dir[256];
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        int fd;
        ev_io lio;
        bool started;
        struct ctl_client *clients;
        unsigned nr_clients;
        struct vbd_xenbus *xb;
        struct vbd_image **img;
        struct vbd_aio *aio;
        bool pausing; /* vbd_pause() called, its callback not yet run */
        int log_level;
        char debug[256];
        uint64_t start_ms;
        struct vbd_nbd *nbd;        /* NULL: no NBD export */
        void (*stop)(void *opaque); /* export-only: detach */
        void *stop_opaque;
        struct ctl_client *mig_client; /* migrate-start/cutover waiting for a pause */
        bool mig_was_paused;           /* the VBD was paused before that pause */
        bool mig_paused;               /* cut over: we keep the VBD paused */
        uint64_t mig_pause_ns;
};

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *errno_name(int e)
{
        const char *n = strerrorname_np(e);

        return n ? n : "EIO";
}

/* ---- output ---- */

static void client_close(struct ctl_client *cl);

static void client_flush(struct ctl_client *cl)
{
        size_t off = 0;

        while (off < cl->out_len) {
                ssize_t n = write(cl->fd, cl->out + off, cl->out_len - off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0) {
                        cl->out_len = off = 0;
                        cl->eof = true; /* peer gone: nothing more to say */
                        break;
                }
                off += (size_t)n;
        }
        memmove(cl->out, cl->out + off, cl->out_len - off);
        cl->out_len -= off;
        if (cl->out_len && !ev_is_active(&cl->wio))
                ev_io_start(cl->ctl->loop, &cl->wio);
        else if (!cl->out_len && ev_is_active(&cl->wio))
                ev_io_stop(cl->ctl->loop, &cl->wio);
}

/* Queue one JSON line; false if the client must be dropped (too much unread). */
static bool client_send(struct ctl_client *cl, json_t *msg)
{
        char *s = json_dumps(msg, JSON_COMPACT);
        size_t len;

        json_decref(msg);
        if (!s)
                return false;
        len = strlen(s);
        if (cl->out_len + len + 1 > VBD_CTL_OUT_MAX) {
                vbd_warn("client does not read its replies: dropping it");
                free(s);
                return false;
        }
        if (cl->out_len + len + 1 > cl->out_size) {
                size_t size = cl->out_size ? cl->out_size : 4096;
                char *p;

                while (size < cl->out_len + len + 1)
                        size *= 2;
                p = realloc(cl->out, size);
                if (!p) {
                        free(s);
                        return false;
                }
                cl->out = p;
                cl->out_size = size;
        }
        memcpy(cl->out + cl->out_len, s, len);
        cl->out[cl->out_len + len] = '\n';
        cl->out_len += len + 1;
        free(s);
        client_flush(cl);
        return true;
}

static json_t *reply_base(json_t *id)
{
        json_t *r = json_pack("{s:i}", "v", VBD_CTL_PROTOCOL);

        if (id)
                json_object_set(r, "id", id);
        return r;
}

static bool reply_ok(struct ctl_client *cl, json_t *id, json_t *result)
{
        json_t *r = reply_base(id);

        json_object_set_new(r, "ok", json_true());
        json_object_set_new(r, "result", result ? result : json_object());
        return client_send(cl, r);
}

static bool reply_err(struct ctl_client *cl, json_t *id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool reply_err(struct ctl_client *cl, json_t *id, int code, const char *fmt, ...)
{
        json_t *r = reply_base(id);
        char msg[512];
        va_list ap;

        code = code < 0 ? -code : code;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        json_object_set_new(r, "ok", json_false());
        json_object_set_new(
            r, "error",
            json_pack("{s:i,s:s,s:s}", "errno", code, "code", errno_name(code), "message", msg));
        return client_send(cl, r);
}

/* ---- state ---- */

static const char *xenbus_state_name(int s)
{
        static const char *const names[] = {"unknown",     "initialising",  "initwait",
                                            "initialised", "connected",     "closing",
                                            "closed",      "reconfiguring", "reconfigured"};

        return s >= 0 && (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "unknown";
}

static const char *vbd_state_name(struct vbd_ctl *c)
{
        struct vbd *v = vbd_xenbus_vbd(c->xb);

        if (vbd_xenbus_finished(c->xb))
                return "exiting";
        if (vbd_is_paused(v))
                return vbd_is_drained(v) ? "paused" : "pausing";
        return xenbus_state_name(vbd_xenbus_state(c->xb));
}

/* ---- commands ---- */

/* A command returns 0 with *ret_result set, 1 if it will reply later, or
 * -errno with err filled. */
typedef int (*ctl_cmd_fn)(struct ctl_client *cl, json_t *args, json_t **ret_result,
                          struct vbd_err *err);

static int set_err(struct vbd_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int set_err(struct vbd_err *err, int code, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
        return code;
}

static int no_args(json_t *args, struct vbd_err *err)
{
        if (args && json_object_size(args))
                return set_err(err, -EINVAL, "this command takes no arguments");
        return 0;
}

static const char *const cmd_names[];

static int cmd_version(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        json_t *cmds = json_array();

        for (unsigned i = 0; cmd_names[i]; i++)
                json_array_append_new(cmds, json_string(cmd_names[i]));
        *ret = json_pack("{s:i,s:s,s:o}", "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION,
                         "commands", cmds);
        return no_args(args, err);
}

static json_t *nbd_json(struct vbd_ctl *c)
{
        if (!c->nbd)
                return json_null();
        return json_pack("{s:s,s:s,s:b,s:I,s:I}", "endpoint", vbd_nbd_endpoint(c->nbd), "name",
                         vbd_nbd_name(c->nbd), "writable", vbd_nbd_writable(c->nbd), "clients",
                         (json_int_t)vbd_nbd_clients(c->nbd), "inflight",
                         (json_int_t)vbd_nbd_inflight(c->nbd));
}

/* info of an export-only daemon: no guest, no xenbus. */
static int cmd_info_export(struct ctl_client *cl, json_t **ret)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_info *info = vbd_image_info(*c->img);

        *ret = json_pack("{s:i,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:s,s:s,s:s,s:o}",
                         "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION, "pid",
                         (json_int_t)getpid(), "domid", (json_int_t)c->cfg.domid, "devid",
                         (json_int_t)c->cfg.devid, "image", vbd_image_name(*c->img), "mode",
                         vbd_image_readonly(*c->img) ? "r" : "w", "state", "export-only", "size",
                         (json_int_t)info->size, "sector_size", (json_int_t)info->logical_block,
                         "physical_sector_size", (json_int_t)info->physical_block, "uptime_s",
                         (json_int_t)((now_ms() - c->start_ms) / 1000), "log_level",
                         vbd_config_log_level_name(c->log_level), "debug", c->debug, "socket",
                         c->path, "nbd", nbd_json(c));
        return 0;
}

static int cmd_info(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_xenbus_config *xc;

        if (no_args(args, err) < 0)
                return err->code;
        if (!c->xb)
                return cmd_info_export(cl, ret);
        xc = vbd_xenbus_config(c->xb);
        struct vbd *v = vbd_xenbus_vbd(c->xb);
        const struct vbd_info *info = vbd_image_info(*c->img);
        int xs = vbd_xenbus_state(c->xb), fs = vbd_xenbus_frontend_state(c->xb);

        *ret = json_pack(
            "{s:i,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:I,s:i,s:s,s:i,s:s,"
            "s:b,s:b,s:b,s:I,s:I,s:s,s:s,s:s}",
            "protocol", VBD_CTL_PROTOCOL, "version", VBD_VERSION, "pid", (json_int_t)getpid(),
            "domid", (json_int_t)xc->domid, "devid", (json_int_t)xc->devid, "image",
            vbd_image_name(*c->img), "mode", xc->readonly ? "r" : "w", "state", vbd_state_name(c),
            "size", (json_int_t)info->size, "sector_size", (json_int_t)info->logical_block,
            "physical_sector_size", (json_int_t)info->physical_block, "type", xc->type, "backend",
            vbd_xenbus_backend_path(c->xb), "backend_domid", (json_int_t)xc->backend_domid,
            "xenbus_state", xs, "xenbus_state_name", xenbus_state_name(xs), "frontend_state", fs,
            "frontend_state_name", xenbus_state_name(fs), "connected", vbd_is_connected(v),
            "paused", vbd_is_paused(v), "drained", vbd_is_drained(v), "inflight",
            (json_int_t)vbd_inflight(v), "uptime_s", (json_int_t)((now_ms() - c->start_ms) / 1000),
            "log_level", vbd_config_log_level_name(c->log_level), "debug", c->debug, "socket",
            c->path);
        if (c->nbd)
                json_object_set_new(*ret, "nbd", nbd_json(c));
#ifdef HAVE_MIRROR
        if (vbd_image_is_mirror(*c->img))
                json_object_set_new(*ret, "migration",
                                    json_string(vbd_mirror_state_name(vbd_mirror_state(*c->img))));
#endif
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

static int cmd_stats(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_xenbus_config *xc = vbd_xenbus_config(c->xb);
        struct vbd_stats st;

        if (no_args(args, err) < 0)
                return err->code;
        vbd_get_stats(vbd_xenbus_vbd(c->xb), &st);
        *ret = json_pack(
            "{s:I,s:I,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:o,s:o,s:o,s:o,s:o}}", "domid",
            (json_int_t)xc->domid, "devid", (json_int_t)xc->devid, "image", vbd_image_name(*c->img),
            "state", vbd_state_name(c), "uptime_s", (json_int_t)((now_ms() - c->start_ms) / 1000),
            "inflight", (json_int_t)st.inflight, "bad_requests", (json_int_t)st.bad_requests,
            "grant_errors", (json_int_t)st.grant_errors, "notifies", (json_int_t)st.notifies,
            "batches", (json_int_t)st.batches, "ops", "read", op_stats_json(&st.read), "write",
            op_stats_json(&st.write), "flush", op_stats_json(&st.flush), "discard",
            op_stats_json(&st.discard), "other", op_stats_json(&st.other));
        return 0;
}

static void client_resume_input(struct ctl_client *cl);

static void paused_cb(void *opaque)
{
        struct vbd_ctl *c = opaque;
        uint64_t now = now_ms();

        c->pausing = false;
        vbd_info("paused: nothing in flight");
        for (struct ctl_client *cl = c->clients; cl; cl = cl->next) {
                if (!cl->waiting_pause)
                        continue;
                cl->waiting_pause = false;
                cl->busy = false;
                (void)reply_ok(cl, cl->pending_id,
                               json_pack("{s:b,s:I}", "paused", 1, "waited_ms",
                                         (json_int_t)(now - cl->pause_begin_ms)));
                json_decref(cl->pending_id);
                cl->pending_id = NULL;
                client_resume_input(cl);
        }
}

static int cmd_pause(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;

        if (no_args(args, err) < 0)
                return err->code;
        cl->busy = true;
        cl->waiting_pause = true;
        cl->pause_begin_ms = now_ms();
        if (!c->pausing) {
                c->pausing = true;
                vbd_info("pause requested: %u request(s) in flight",
                         vbd_inflight(vbd_xenbus_vbd(c->xb)));
                vbd_pause(vbd_xenbus_vbd(c->xb), paused_cb, c); /* may call back inline */
        }
        return 1;
}

static int cmd_resume(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        struct vbd *v = vbd_xenbus_vbd(c->xb);
        bool was = vbd_is_paused(v);

        if (no_args(args, err) < 0)
                return err->code;
        if (c->pausing) {
                c->pausing = false;
                for (struct ctl_client *o = c->clients; o; o = o->next) {
                        if (!o->waiting_pause)
                                continue;
                        o->waiting_pause = false;
                        o->busy = false;
                        (void)reply_err(o, o->pending_id, -ECANCELED,
                                        "resumed before the VBD had drained");
                        json_decref(o->pending_id);
                        o->pending_id = NULL;
                        if (o != cl)
                                client_resume_input(o);
                }
        }
        vbd_resume(v);
        if (was)
                vbd_info("resumed");
        *ret = json_pack("{s:b,s:b}", "paused", 0, "was_paused", was);
        return 0;
}

static int cmd_reopen(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        const struct vbd_xenbus_config *xc = vbd_xenbus_config(c->xb);
        struct vbd_image *img, *old = *c->img;
        struct vbd_err oerr = {0};
        json_t *j = args ? json_object_get(args, "image") : NULL;
        const char *spec;
        int r;

        if (!j || !json_is_string(j))
                return set_err(err, -EINVAL, "reopen needs \"image\": a string");
        if (json_object_size(args) != 1)
                return set_err(err, -EINVAL, "reopen takes only \"image\"");
        spec = json_string_value(j);
        if (strlen(spec) != json_string_length(j) || !*spec || strlen(spec) > VBD_IMAGE_SPEC_MAX)
                return set_err(err, -EINVAL, "bad image spec");
        if (!vbd_is_drained(vbd_xenbus_vbd(c->xb)))
                return set_err(err, -EBUSY, "the VBD must be paused (and drained) first");
        if (c->nbd)
                return set_err(err, -EBUSY, "the image is exported over NBD (%s)",
                               vbd_nbd_endpoint(c->nbd));
#ifdef HAVE_MIRROR
        if (vbd_image_is_mirror(*c->img)) {
                enum vbd_mirror_state st = vbd_mirror_state(*c->img);

                if (st >= VBD_MIRROR_CONNECTING && st <= VBD_MIRROR_CUTOVER)
                        return set_err(err, -EBUSY, "a migration is %s (migrate-abort first)",
                                       vbd_mirror_state_name(st));
        }
#endif
        img = vbd_image_open(spec, xc->readonly, c->aio, c->loop, &oerr);
        if (!img)
                return set_err(err, oerr.code ? oerr.code : -EIO, "cannot open '%s': %s", spec,
                               oerr.msg);
        r = vbd_xenbus_swap_image(c->xb, img);
        if (r < 0) {
                vbd_image_drain_close(img);
                return set_err(err, r, "cannot serve '%s': %s", spec, strerror(-r));
        }
        *c->img = img;
        vbd_image_drain_close(old);
        *ret = json_pack("{s:s,s:I}", "image", vbd_image_name(img), "size",
                         (json_int_t)vbd_image_info(img)->size);
        return 0;
}

static int cmd_detach(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        if (no_args(args, err) < 0)
                return err->code;
        *ret = json_pack("{s:b}", "detaching", 1);
        return 0; /* the shutdown starts once the reply is queued: see dispatch() */
}

static int cmd_log_level(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
        struct vbd_ctl *c = cl->ctl;
        json_t *level = args ? json_object_get(args, "level") : NULL;
        json_t *debug = args ? json_object_get(args, "debug") : NULL;
        size_t known = (level ? 1 : 0) + (debug ? 1 : 0);
        int l = c->log_level;

        if (args && json_object_size(args) != known)
                return set_err(err, -EINVAL, "log-level takes \"level\" and \"debug\"");
        if (level) {
                if (!json_is_string(level) ||
                    (l = vbd_config_parse_log_level(json_string_value(level))) < 0)
                        return set_err(err, -EINVAL,
                                       "\"level\" must be err, warning, info or debug");
        }
        if (debug) {
                const char *t = json_is_string(debug) ? json_string_value(debug) : NULL;

                if (!t || strlen(t) >= sizeof(c->debug) ||
                    strspn(t, "abcdefghijklmnopqrstuvwxyz"
                              "0123456789._-,") != strlen(t))
                        return set_err(err, -EINVAL, "\"debug\" must be topics like ring,xenbus");
                if (vbd_log_enable(t) < 0)
                        return set_err(err, -EINVAL, "\"debug\": too long");
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

/* ---- migration (the mirror driver) ---- */

/* Answer a deferred request (migrate-start, migrate-cutover). */
static void deferred_reply(struct ctl_client *cl, json_t *result, int code, const char *msg)
{
        if (code < 0) {
                json_decref(result);
                (void)reply_err(cl, cl->pending_id, code, "%s", msg);
        } else {
                (void)reply_ok(cl, cl->pending_id, result);
        }
        json_decref(cl->pending_id);
        cl->pending_id = NULL;
        cl->busy = false;
        client_resume_input(cl);
}

#ifdef HAVE_MIRROR
static uint64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static json_t *migrate_json(struct vbd_ctl *c)
{
        struct vbd_mirror_status st = {.state = VBD_MIRROR_NONE, .eta_s = -1, .downtime_ms = -1};
        json_t *j;

        if (vbd_image_is_mirror(*c->img))
                vbd_mirror_get_status(*c->img, &st);
        else
                st.size = vbd_image_info(*c->img)->size;
        j = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f}", "state",
                      vbd_mirror_state_name(st.state), "mode", st.precopy ? "precopy" : "pasm",
                      "to", st.to, "error", st.error, "size", (json_int_t)st.size, "partner_size",
                      (json_int_t)st.partner_size, "region_size", (json_int_t)st.region_size,
                      "regions_total", (json_int_t)st.regions_total, "regions_synced",
                      (json_int_t)st.regions_synced, "regions_inflight",
                      (json_int_t)st.regions_inflight, "bytes_synced", (json_int_t)st.bytes_synced,
                      "progress", st.size ? (double)st.bytes_synced / (double)st.size : 0.);
        json_object_update_new(
            j,
            json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b}", "bytes_copied",
                      (json_int_t)st.bytes_copied, "bytes_zeroed", (json_int_t)st.bytes_zeroed,
                      "bytes_forwarded", (json_int_t)st.bytes_forwarded, "writes_forwarded",
                      (json_int_t)st.writes_forwarded, "bytes_sent",
                      (json_int_t)(st.bytes_copied + st.bytes_forwarded), "passes",
                      (json_int_t)st.passes, "dirty_bytes", (json_int_t)st.dirty_bytes,
                      "partner_inflight", (json_int_t)st.partner_inflight, "writes_waited",
                      (json_int_t)st.writes_waited, "elapsed_ms", (json_int_t)st.elapsed_ms, "rate",
                      (json_int_t)st.rate, "eta_s", (json_int_t)st.eta_s, "downtime_ms",
                      (json_int_t)st.downtime_ms, "paused",
                      (int)vbd_is_paused(vbd_xenbus_vbd(c->xb))));
        return j;
}

/* Read an optional unsigned integer argument in [lo, hi]. */
static int arg_uint(json_t *args, const char *key, uint64_t lo, uint64_t hi, uint64_t *ret,
                    struct vbd_err *err)
{
        json_t *j = json_object_get(args, key);

        if (!j)
                return 0;
        if (!json_is_integer(j) || json_integer_value(j) < 0 ||
            (uint64_t)json_integer_value(j) < lo || (uint64_t)json_integer_value(j) > hi)
                return set_err(err, -EINVAL,
                               "\"%s\" must be an integer from %" PRIu64 " to %" PRIu64, key, lo,
                               hi);
        *ret = (uint64_t)json_integer_value(j);
        return 0;
}

static int parse_migrate_args(json_t *args, struct vbd_mirror_params *p, char *to, size_t to_size,
                              struct vbd_err *err)
{
        static const char *const keys[] = {"to",      "mode",   "share", "rate", "region",
                                           "timeout", "zeroed", "depth", NULL};
        const char *key;
        json_t *j, *val;
        uint64_t share = 50, rate = 0, region = VBD_MIRROR_REGION_DEFAULT, timeout = 30, depth = 4;

        if (!args)
                return set_err(err, -EINVAL, "migrate-start needs \"to\": the partner's NBD URI");
        json_object_foreach(args, key, val)
        {
                unsigned i;

                for (i = 0; keys[i] && strcmp(keys[i], key); i++)
                        ;
                if (!keys[i])
                        return set_err(err, -EINVAL, "migrate-start: unknown argument \"%s\"", key);
        }
        j = json_object_get(args, "to");
        if (!j || !json_is_string(j) || !json_string_length(j) ||
            strlen(json_string_value(j)) != json_string_length(j) ||
            json_string_length(j) >= to_size)
                return set_err(err, -EINVAL,
                               "\"to\" must be an NBD URI (nbd://HOST[:PORT][/NAME] "
                               "or nbd+unix:///NAME?socket=PATH)");
        snprintf(to, to_size, "%s", json_string_value(j));
        if (strncmp(to, "nbd://", 6) && strncmp(to, "nbd+unix://", 11) &&
            strncmp(to, "nbds://", 7) && strncmp(to, "nbds+unix://", 12))
                return set_err(err, -EINVAL, "\"to\": not an NBD URI: %s", to);
        j = json_object_get(args, "mode");
        p->precopy = false;
        if (j && (!json_is_string(j) || (strcmp(json_string_value(j), "pasm") &&
                                         strcmp(json_string_value(j), "precopy"))))
                return set_err(err, -EINVAL, "\"mode\" is \"pasm\" or \"precopy\"");
        if (j)
                p->precopy = strcmp(json_string_value(j), "precopy") == 0;
        j = json_object_get(args, "zeroed");
        if (j && !json_is_boolean(j))
                return set_err(err, -EINVAL, "\"zeroed\" is a boolean");
        p->zeroed = j && json_is_true(j);
        if (arg_uint(args, "share", 1, 100, &share, err) < 0 ||
            arg_uint(args, "rate", 0, UINT64_MAX >> 2, &rate, err) < 0 ||
            arg_uint(args, "region", VBD_MIRROR_REGION_MIN, VBD_MIRROR_REGION_MAX, &region, err) <
                0 ||
            arg_uint(args, "timeout", 1, VBD_MIRROR_TIMEOUT_MAX, &timeout, err) < 0 ||
            arg_uint(args, "depth", 1, VBD_MIRROR_DEPTH_MAX, &depth, err) < 0)
                return err->code;
        if (region & (region - 1))
                return set_err(err, -EINVAL, "\"region\" must be a power of two");
        p->to = to;
        p->share = (unsigned)share;
        p->rate = rate;
        p->region = region;
        p->timeout = (unsigned)timeout;
        p->depth = (unsigned)depth;
        return 0;
}

/* The VBD is drained: stack the mirror, start, resume. */
static void migrate_paused_cb(void *opaque)
{
        struct vbd_ctl *c = opaque;
        struct ctl_client *cl = c->mig_client;
        struct vbd *v = vbd_xenbus_vbd(c->xb);
        struct vbd_image *m;
        struct vbd_err err = {0};
        int r = 0;

        c->mig_client = NULL;
        m = vbd_mirror_wrap(c->loop, *c->img, &err);
        if (!m) {
                r = err.code ? err.code : -ENOMEM;
        } else if ((r = vbd_xenbus_swap_image(c->xb, m)) < 0) {
                (void)vbd_image_unwrap(m);
                set_err(&err, r, "cannot stack the mirror: %s", strerror(-r));
        } else {
                *c->img = m;
                if (cl)
                        r = vbd_mirror_start(m, &cl->mp, &err);
        }
        if (!c->mig_was_paused)
                vbd_resume(v);
        if (cl)
                deferred_reply(cl, r < 0 ? NULL : migrate_json(c), r, err.msg);
}
#endif

static int cmd_migrate_start(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
#ifdef HAVE_MIRROR
        struct vbd_ctl *c = cl->ctl;
        struct vbd *v = vbd_xenbus_vbd(c->xb);
        int r;

        r = parse_migrate_args(args, &cl->mp, cl->mp_to, sizeof(cl->mp_to), err);
        if (r < 0)
                return r;
        if (vbd_xenbus_config(c->xb)->readonly)
                return set_err(err, -EROFS, "the VBD is read-only: nothing to migrate");
        if (c->nbd)
                return set_err(err, -EBUSY, "the image is exported over NBD (%s)",
                               vbd_nbd_endpoint(c->nbd));
        if (c->mig_client || c->pausing)
                return set_err(err, -EBUSY, "a pause or another migration command is under way");
        if (vbd_image_is_mirror(*c->img)) {
                r = vbd_mirror_start(*c->img, &cl->mp, err);
                if (r < 0)
                        return r;
                *ret = migrate_json(c);
                return 0;
        }
        /* Stack a mirror over the image: only with nothing in flight. */
        c->mig_client = cl;
        c->mig_was_paused = vbd_is_paused(v);
        cl->busy = true;
        vbd_info("migration requested: pausing to stack the mirror");
        vbd_pause(v, migrate_paused_cb, c); /* may call back inline */
        return 1;
#else
        return set_err(err, -EOPNOTSUPP, "this vbdd was built without libnbd: no migration");
#endif
}

static int cmd_migrate_status(struct ctl_client *cl, json_t *args, json_t **ret,
                              struct vbd_err *err)
{
#ifdef HAVE_MIRROR
        if (no_args(args, err) < 0)
                return err->code;
        *ret = migrate_json(cl->ctl);
        return 0;
#else
        return set_err(err, -EOPNOTSUPP, "this vbdd was built without libnbd: no migration");
#endif
}

#ifdef HAVE_MIRROR
static void cutover_done(void *opaque, int status)
{
        struct vbd_ctl *c = opaque;
        struct ctl_client *cl = c->mig_client;
        struct vbd_mirror_status st;
        char msg[400];

        c->mig_client = NULL;
        if (status < 0) {
                vbd_mirror_get_status(*c->img, &st);
                snprintf(msg, sizeof(msg), "cut-over failed: %s",
                         st.error[0] ? st.error : strerror(-status));
                if (!c->mig_was_paused)
                        vbd_resume(vbd_xenbus_vbd(c->xb));
        } else {
                c->mig_paused = !c->mig_was_paused;
        }
        if (cl)
                deferred_reply(cl, status < 0 ? NULL : migrate_json(c), status, msg);
}

static void cutover_paused_cb(void *opaque)
{
        struct vbd_ctl *c = opaque;
        int r = vbd_mirror_cutover(*c->img, c->mig_pause_ns, cutover_done, c);

        if (r < 0)
                cutover_done(c, r);
}
#endif

static int cmd_migrate_cutover(struct ctl_client *cl, json_t *args, json_t **ret,
                               struct vbd_err *err)
{
#ifdef HAVE_MIRROR
        struct vbd_ctl *c = cl->ctl;
        struct vbd *v = vbd_xenbus_vbd(c->xb);
        enum vbd_mirror_state st;

        if (no_args(args, err) < 0)
                return err->code;
        if (!vbd_image_is_mirror(*c->img))
                return set_err(err, -ENOENT, "no migration (see migrate-start)");
        st = vbd_mirror_state(*c->img);
        if (st != VBD_MIRROR_READY)
                return set_err(err,
                               st == VBD_MIRROR_COPYING || st == VBD_MIRROR_CONNECTING ? -EAGAIN
                                                                                       : -EINVAL,
                               "the migration is %s, not ready", vbd_mirror_state_name(st));
        if (c->mig_client || c->pausing)
                return set_err(err, -EBUSY, "a pause or another migration command is under way");
        c->mig_client = cl;
        c->mig_was_paused = vbd_is_paused(v);
        c->mig_pause_ns = mono_ns();
        cl->busy = true;
        vbd_info("cut-over requested: pausing the VBD");
        vbd_pause(v, cutover_paused_cb, c); /* may call back inline */
        return 1;
#else
        return set_err(err, -EOPNOTSUPP, "this vbdd was built without libnbd: no migration");
#endif
}

static int cmd_migrate_abort(struct ctl_client *cl, json_t *args, json_t **ret, struct vbd_err *err)
{
#ifdef HAVE_MIRROR
        struct vbd_ctl *c = cl->ctl;
        bool was_cut;

        if (no_args(args, err) < 0)
                return err->code;
        if (!vbd_image_is_mirror(*c->img))
                return set_err(err, -ENOENT, "no migration to abort");
        was_cut = vbd_mirror_state(*c->img) == VBD_MIRROR_CUTOVER;
        if (vbd_mirror_abort(*c->img) < 0)
                return set_err(err, -ENOENT, "no migration running (it is %s)",
                               vbd_mirror_state_name(vbd_mirror_state(*c->img)));
        if (was_cut && c->mig_paused) {
                c->mig_paused = false;
                vbd_resume(vbd_xenbus_vbd(c->xb));
                vbd_info("resumed after the aborted cut-over");
        }
        *ret = migrate_json(c);
        return 0;
#else
        return set_err(err, -EOPNOTSUPP, "this vbdd was built without libnbd: no migration");
#endif
}

static const struct {
        const char *name;
        ctl_cmd_fn fn;
        bool deferred; /* may answer later (returns 1) */
} cmds[] = {
    {"version", cmd_version},
    {"info", cmd_info},
    {"stats", cmd_stats},
    {"pause", cmd_pause, true},
    {"resume", cmd_resume},
    {"reopen", cmd_reopen},
    {"detach", cmd_detach},
    {"log-level", cmd_log_level},
    {"migrate-start", cmd_migrate_start, true},
    {"migrate-status", cmd_migrate_status},
    {"migrate-cutover", cmd_migrate_cutover, true},
    {"migrate-abort", cmd_migrate_abort},
};

static const char *const cmd_names[] = {
    "version",         "info",          "stats",     "pause",         "resume",
    "reopen",          "detach",        "log-level", "migrate-start", "migrate-status",
    "migrate-cutover", "migrate-abort", NULL};

/* ---- requests ---- */

/* Handle one line; false if the client must be dropped. */
static bool dispatch(struct ctl_client *cl, char *line, size_t len)
{
        struct vbd_ctl *c = cl->ctl;
        json_error_t jerr;
        json_t *req, *id, *cmd, *v, *args, *result = NULL;
        struct vbd_err err = {0};
        const char *name;
        bool ok;
        int r = -EOPNOTSUPP;
        unsigned i;

        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
                len--;
        if (!len)
                return true;
        req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!req)
                return reply_err(cl, NULL, -EINVAL, "malformed JSON at column %d: %s", jerr.column,
                                 jerr.text);
        if (!json_is_object(req)) {
                json_decref(req);
                return reply_err(cl, NULL, -EINVAL, "a request is a JSON object");
        }
        id = json_object_get(req, "id");
        v = json_object_get(req, "v");
        cmd = json_object_get(req, "cmd");
        args = json_object_get(req, "args");
        if (v && (!json_is_integer(v) || json_integer_value(v) != VBD_CTL_PROTOCOL)) {
                ok = reply_err(cl, id, -EPROTONOSUPPORT, "protocol version %d only",
                               VBD_CTL_PROTOCOL);
                goto out;
        }
        if (!cmd || !json_is_string(cmd)) {
                ok = reply_err(cl, id, -EINVAL, "\"cmd\" (a string) is missing");
                goto out;
        }
        if (args && !json_is_object(args) && !json_is_null(args)) {
                ok = reply_err(cl, id, -EINVAL, "\"args\" must be an object");
                goto out;
        }
        if (json_is_null(args))
                args = NULL;
        name = json_string_value(cmd);
        for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
                if (strcmp(name, cmds[i].name) == 0)
                        break;
        if (i == sizeof(cmds) / sizeof(cmds[0])) {
                ok = reply_err(cl, id, -EOPNOTSUPP, "unknown command (try \"version\")");
                goto out;
        }
        if (!c->started) {
                ok = reply_err(cl, id, -EAGAIN, "the VBD is not set up yet");
                goto out;
        }
        if (!c->xb && cmds[i].fn != cmd_version && cmds[i].fn != cmd_info &&
            cmds[i].fn != cmd_log_level && cmds[i].fn != cmd_detach) {
                ok = reply_err(cl, id, -EOPNOTSUPP,
                               "not available: this vbdd only exports an "
                               "image over NBD (no guest)");
                goto out;
        }
        vbd_debug("command %s", cmds[i].name);
        if (cmds[i].deferred) {
                cl->pending_id = id ? json_incref(id) : NULL;
                r = cmds[i].fn(cl, args, &result, &err);
                if (r <= 0) {
                        json_decref(cl->pending_id);
                        cl->pending_id = NULL;
                        cl->busy = cl->waiting_pause = false;
                }
        } else {
                r = cmds[i].fn(cl, args, &result, &err);
        }
        if (r < 0) {
                json_decref(result);
                ok = reply_err(cl, id, err.code ? err.code : r, "%s",
                               err.msg[0] ? err.msg : strerror(-r));
        } else if (r == 0) {
                ok = reply_ok(cl, id, result);
                if (cmds[i].fn == cmd_detach) {
                        vbd_info("detach requested on the control socket");
                        if (c->xb)
                                vbd_xenbus_shutdown(c->xb);
                        else if (c->stop)
                                c->stop(c->stop_opaque);
                }
        } else {
                ok = true; /* replied, or will */
        }
out:
        json_decref(req);
        return ok;
}

/* Process complete lines in the input buffer while no request is pending. */
static bool process_input(struct ctl_client *cl)
{
        size_t start = 0;

        while (!cl->busy && start < cl->in_len) {
                char *nl = memchr(cl->in + start, '\n', cl->in_len - start);
                size_t n;

                if (!nl)
                        break;
                n = (size_t)(nl - (cl->in + start));
                if (cl->discarding) {
                        cl->discarding = false;
                } else if (!dispatch(cl, cl->in + start, n)) {
                        return false;
                }
                start += n + 1;
        }
        memmove(cl->in, cl->in + start, cl->in_len - start);
        cl->in_len -= start;
        if (!cl->busy && cl->in_len == VBD_CTL_LINE_MAX) {
                /* A full buffer and no newline: refuse the line, skip to its end. */
                cl->in_len = 0;
                if (!cl->discarding) {
                        cl->discarding = true;
                        vbd_warn("request longer than %d bytes refused", VBD_CTL_LINE_MAX);
                        if (!reply_err(cl, NULL, -E2BIG, "request longer than %d bytes",
                                       VBD_CTL_LINE_MAX))
                                return false;
                }
        }
        return true;
}

static void client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct ctl_client *cl = w->data;

        ev_timer_again(loop, &cl->idle);
        while (!cl->eof && cl->in_len < VBD_CTL_LINE_MAX) {
                ssize_t n = read(cl->fd, cl->in + cl->in_len, VBD_CTL_LINE_MAX - cl->in_len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0) {
                        cl->eof = true;
                        break;
                }
                cl->in_len += (size_t)n;
                if (!process_input(cl)) {
                        client_close(cl);
                        return;
                }
                if (cl->busy)
                        break;
        }
        if (!process_input(cl)) {
                client_close(cl);
                return;
        }
        if (cl->busy) {
                ev_io_stop(loop, &cl->rio); /* one request at a time */
                return;
        }
        if (cl->eof) {
                /* Nothing more will come: close once the replies are out. */
                ev_io_stop(loop, &cl->rio);
                if (!cl->out_len)
                        client_close(cl);
        }
}

static void client_resume_input(struct ctl_client *cl)
{
        if (!ev_is_active(&cl->rio) && !cl->eof)
                ev_io_start(cl->ctl->loop, &cl->rio);
        /* Look at what is already buffered from the loop, not from here. */
        ev_feed_event(cl->ctl->loop, &cl->rio, EV_READ);
}

static void client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct ctl_client *cl = w->data;

        client_flush(cl);
        if (cl->eof && !cl->out_len && !cl->busy)
                client_close(cl);
}

static void client_idle_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct ctl_client *cl = w->data;

        if (cl->busy)
                return; /* waiting for a pause: not idle */
        vbd_debug("closing an idle control connection");
        client_close(cl);
}

static void client_close(struct ctl_client *cl)
{
        struct vbd_ctl *c = cl->ctl;
        struct ctl_client **pp;

        for (pp = &c->clients; *pp; pp = &(*pp)->next) {
                if (*pp == cl) {
                        *pp = cl->next;
                        break;
                }
        }
        c->nr_clients--;
        if (c->mig_client == cl)
                c->mig_client = NULL; /* the pause goes on; nobody gets the reply */
        ev_io_stop(c->loop, &cl->rio);
        ev_io_stop(c->loop, &cl->wio);
        ev_timer_stop(c->loop, &cl->idle);
        ev_clear_pending(c->loop, &cl->rio);
        close(cl->fd);
        json_decref(cl->pending_id);
        free(cl->in);
        free(cl->out);
        free(cl);
}

/* Say why and hang up, for connections we do not serve. */
static void refuse(int fd, int code, const char *msg)
{
        char line[512];
        int n = snprintf(line, sizeof(line),
                         "{\"v\":%d,\"ok\":false,\"error\":{\"errno\":%d,\"code\":\"%s\","
                         "\"message\":\"%s\"}}\n",
                         VBD_CTL_PROTOCOL, code, errno_name(code), msg);

        /* msg is ours and has no characters to escape. */
        (void)!write(fd, line, (size_t)n);
        close(fd);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd_ctl *c = w->data;

        for (;;) {
                struct ucred cred;
                socklen_t len = sizeof(cred);
                struct ctl_client *cl;
                char msg[128];
                int fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                                vbd_log_errno(errno, "accept on %s: %m", c->path);
                        return;
                }
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                        refuse(fd, EPERM, "cannot identify the peer");
                        continue;
                }
                if (cred.uid != 0 && cred.uid != geteuid()) {
                        vbd_warn("control connection from uid %u (pid %d) refused",
                                 (unsigned)cred.uid, (int)cred.pid);
                        snprintf(msg, sizeof(msg), "permission denied: uid %u is not root",
                                 (unsigned)cred.uid);
                        refuse(fd, EPERM, msg);
                        continue;
                }
                if (c->nr_clients >= c->cfg.max_clients) {
                        vbd_warn("too many control connections (%u): refusing one", c->nr_clients);
                        refuse(fd, EMFILE, "too many control connections");
                        continue;
                }
                cl = calloc(1, sizeof(*cl));
                if (cl)
                        cl->in = malloc(VBD_CTL_LINE_MAX + 1);
                if (!cl || !cl->in) {
                        if (cl)
                                free(cl);
                        refuse(fd, ENOMEM, "out of memory");
                        continue;
                }
                cl->ctl = c;
                cl->fd = fd;
                ev_io_init(&cl->rio, client_read_cb, fd, EV_READ);
                cl->rio.data = cl;
                ev_io_init(&cl->wio, client_write_cb, fd, EV_WRITE);
                cl->wio.data = cl;
                ev_init(&cl->idle, client_idle_cb);
                cl->idle.repeat = VBD_CTL_IDLE_S;
                cl->idle.data = cl;
                ev_timer_again(loop, &cl->idle);
                ev_io_start(loop, &cl->rio);
                cl->next = c->clients;
                c->clients = cl;
                c->nr_clients++;
        }
}

/* ---- setup ---- */

static int make_dir(const char *dir)
{
        struct stat st;

        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (stat(dir, &st) < 0)
                return -errno;
        if (!S_ISDIR(st.st_mode))
                return -ENOTDIR;
        return 0;
}

/* Is a live daemon behind this socket path?  1 yes, 0 no (stale or absent). */
struct vbd_ctl *vbd_ctl_new(struct ev_loop *loop, const struct vbd_ctl_config *cfg)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct vbd_ctl *c = calloc(1, sizeof(*c));
        mode_t old_mask;
        int n, r;

        if (!c)
                return NULL;
        c->loop = loop;
        c->cfg = *cfg;
        c->fd = -1;
        c->log_level = cfg->log_level;
        c->start_ms = now_ms();
        if (!c->cfg.max_clients)
                c->cfg.max_clients = 16;
        if (snprintf(c->dir, sizeof(c->dir), "%s", cfg->dir) >= (int)sizeof(c->dir)) {
                r = vbd_log_errno(ENAMETOOLONG, "runtime dir '%s': %m", cfg->dir);
                goto fail;
        }
        c->cfg.dir = c->dir;
        n = snprintf(c->path, sizeof(c->path), "%s/vbdd-%" PRIu32 "-%" PRIu32 ".sock", c->dir,
                     cfg->domid, cfg->devid);
        if (n < 0 || (size_t)n >= sizeof(c->path)) {
                r = vbd_log_errno(ENAMETOOLONG, "control socket path in '%s': %m", c->dir);
                goto fail;
        }
        r = make_dir(c->dir);
        if (r < 0) {
                vbd_log_errno(r, "runtime dir %s: %m", c->dir);
                goto fail;
        }
        r = vbd_unix_socket_alive(c->path);
        if (r > 0) {
                r = vbd_log_errno(EADDRINUSE, "%s: another vbdd serves this VBD: %m", c->path);
                goto fail;
        }
        if (r < 0) {
                vbd_log_errno(r, "%s: %m (not replacing it)", c->path);
                goto fail;
        }
        (void)unlink(c->path);

        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                r = vbd_log_errno(errno, "socket: %m");
                goto fail;
        }
        memcpy(sa.sun_path, c->path, strlen(c->path) + 1);
        old_mask = umask(0077);
        r = bind(c->fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old_mask);
        if (r < 0) {
                r = vbd_log_errno(errno, "bind %s: %m", c->path);
                goto fail;
        }
        if (chmod(c->path, 0600) < 0 || listen(c->fd, 16) < 0) {
                r = vbd_log_errno(errno, "%s: %m", c->path);
                (void)unlink(c->path);
                goto fail;
        }
        ev_io_init(&c->lio, accept_cb, c->fd, EV_READ);
        c->lio.data = c;
        vbd_debug("control socket %s", c->path);
        return c;
fail:
        if (c->fd >= 0)
                close(c->fd);
        free(c);
        errno = r < 0 ? -r : EIO;
        return NULL;
}

void vbd_ctl_start(struct vbd_ctl *c, struct vbd_xenbus *xb, struct vbd_image **img,
                   struct vbd_aio *aio)
{
        c->xb = xb;
        c->img = img;
        c->aio = aio;
        c->started = true;
        ev_io_start(c->loop, &c->lio);
        ev_unref(c->loop); /* the listening socket alone does not keep the loop alive */
}

void vbd_ctl_set_nbd(struct vbd_ctl *c, struct vbd_nbd *nbd, void (*stop)(void *opaque),
                     void *opaque)
{
        c->nbd = nbd;
        c->stop = stop;
        c->stop_opaque = opaque;
}

const char *vbd_ctl_socket_path(const struct vbd_ctl *c)
{
        return c->path;
}

void vbd_ctl_free(struct vbd_ctl *c)
{
        if (!c)
                return;
        while (c->clients) {
                struct ctl_client *cl = c->clients;

                if (cl->waiting_pause)
                        (void)reply_err(cl, cl->pending_id, -ESHUTDOWN, "vbdd is exiting");
                client_flush(cl);
                client_close(cl);
        }
        if (ev_is_active(&c->lio)) {
                ev_ref(c->loop);
                ev_io_stop(c->loop, &c->lio);
        }
        if (c->fd >= 0) {
                close(c->fd);
                (void)unlink(c->path);
        }
        free(c);
}
