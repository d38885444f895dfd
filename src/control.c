/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control socket's transport (see control.h for the protocol and the
 * limits): accept, per-client line buffers, JSON framing, replies queued and
 * written as the socket allows, deferred replies.  The commands are one
 * table in control-cmds.c.  Everything runs in the VBD's loop.  A deferred
 * request (pause, reopen, migrate-start, migrate-cutover) stops the
 * client's reads until it is answered: one request at a time.
 */
#define VBD_LOG_TOPIC "ctl"
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "control-impl.h"
#include "device.h"
#include "nbd-export.h"
#include "util/listener.h"
#include "vbd/log.h"
#include "vbd/time.h"
#include "xenbus.h"

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

bool ctl_reply_ok(struct ctl_client *cl, json_t *id, json_t *result)
{
        json_t *r = reply_base(id);

        json_object_set_new(r, "ok", json_true());
        json_object_set_new(r, "result", result ? result : json_object());
        return client_send(cl, r);
}

bool ctl_reply_err(struct ctl_client *cl, json_t *id, int code, const char *fmt, ...)
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

void ctl_deferred_reply(struct ctl_client *cl, int status, const char *msg, json_t *result)
{
        if (status < 0) {
                json_decref(result);
                (void)ctl_reply_err(cl, cl->pending_id, status, "%s",
                                    msg && *msg ? msg : strerror(-status));
        } else {
                (void)ctl_reply_ok(cl, cl->pending_id, result);
        }
        json_decref(cl->pending_id);
        cl->pending_id = NULL;
        cl->busy = false;
        ctl_client_resume_input(cl);
}

/* ---- requests ---- */

/* Handle one line; false if the client must be dropped. */
static bool dispatch(struct ctl_client *cl, char *line, size_t len)
{
        struct vbd_ctl *c = cl->ctl;
        json_error_t jerr;
        json_t *req, *id, *jcmd, *v, *args, *result = NULL;
        const struct ctl_cmd *cmd;
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
                return ctl_reply_err(cl, NULL, -EINVAL, "malformed JSON at column %d: %s",
                                     jerr.column, jerr.text);
        if (!json_is_object(req)) {
                json_decref(req);
                return ctl_reply_err(cl, NULL, -EINVAL, "a request is a JSON object");
        }
        id = json_object_get(req, "id");
        v = json_object_get(req, "v");
        jcmd = json_object_get(req, "cmd");
        args = json_object_get(req, "args");
        if (v && (!json_is_integer(v) || json_integer_value(v) != VBD_CTL_PROTOCOL)) {
                ok = ctl_reply_err(cl, id, -EPROTONOSUPPORT, "protocol version %d only",
                                   VBD_CTL_PROTOCOL);
                goto out;
        }
        if (!jcmd || !json_is_string(jcmd)) {
                ok = ctl_reply_err(cl, id, -EINVAL, "\"cmd\" (a string) is missing");
                goto out;
        }
        if (args && !json_is_object(args) && !json_is_null(args)) {
                ok = ctl_reply_err(cl, id, -EINVAL, "\"args\" must be an object");
                goto out;
        }
        if (json_is_null(args))
                args = NULL;
        name = json_string_value(jcmd);
        for (i = 0; i < vbd_ctl_ncmds; i++)
                if (strcmp(name, vbd_ctl_cmds[i].name) == 0)
                        break;
        if (i == vbd_ctl_ncmds) {
                ok = ctl_reply_err(cl, id, -EOPNOTSUPP, "unknown command (try \"version\")");
                goto out;
        }
        if (!c->started) {
                ok = ctl_reply_err(cl, id, -EAGAIN, "the VBD is not set up yet");
                goto out;
        }
        cmd = &vbd_ctl_cmds[i];
        if (!c->xb && (cmd->flags & CTL_GUEST)) {
                ok = ctl_reply_err(cl, id, -EOPNOTSUPP,
                                   "not available: this vbdd only exports an "
                                   "image over NBD (no guest)");
                goto out;
        }
        /* A migration beside the daemon's own NBD export stays refused: its
         * clients' writes through the mirror are not what migrate tests cover. */
        if (c->nbd && (cmd->flags & CTL_NOT_BESIDE_NBD)) {
                ok = ctl_reply_err(cl, id, -EBUSY, "the image is exported over NBD (%s)",
                                   vbd_nbd_endpoint(c->nbd));
                goto out;
        }
        vbd_debug("command %s", cmd->name);
        if (cmd->flags & CTL_DEFERRED) {
                cl->pending_id = id ? json_incref(id) : NULL;
                cl->busy = true;
                r = cmd->fn(cl, cmd, args, &result, &err);
                if (r <= 0) {
                        json_decref(cl->pending_id);
                        cl->pending_id = NULL;
                        cl->busy = cl->waiting_pause = false;
                }
        } else {
                r = cmd->fn(cl, cmd, args, &result, &err);
        }
        if (r < 0) {
                json_decref(result);
                ok = ctl_reply_err(cl, id, err.code ? err.code : r, "%s",
                                   err.msg[0] ? err.msg : strerror(-r));
        } else if (r == 0) {
                ok = ctl_reply_ok(cl, id, result);
                if (cmd->flags & CTL_DETACH) {
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
                        if (!ctl_reply_err(cl, NULL, -E2BIG, "request longer than %d bytes",
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

void ctl_client_resume_input(struct ctl_client *cl)
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
        vbd_listener_client_gone(c->listener);
        ctl_cmds_client_gone(cl); /* what it waits for goes on; nobody gets the reply */
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

/* ---- the listener (src/util/listener.c): peer credentials, client limits ---- */

/* Say why and hang up (the listener closes fd), for connections we do not serve. */
static void refuse(int fd, int code, const char *msg)
{
        char line[512];
        int n = snprintf(line, sizeof(line),
                         "{\"v\":%d,\"ok\":false,\"error\":{\"errno\":%d,\"code\":\"%s\","
                         "\"message\":\"%s\"}}\n",
                         VBD_CTL_PROTOCOL, code, errno_name(code), msg);

        /* msg is ours and has no characters to escape. */
        (void)!write(fd, line, (size_t)n);
}

static void refuse_cb(void *opaque, int fd, int reason, const struct vbd_listener_peer *peer)
{
        struct vbd_ctl *c = opaque;
        char msg[128];

        if (reason == -EMFILE) {
                vbd_warn("too many control connections (%u): refusing one",
                         vbd_listener_clients(c->listener));
                refuse(fd, EMFILE, "too many control connections");
        } else if (!peer->has_cred) {
                refuse(fd, EPERM, "cannot identify the peer");
        } else {
                vbd_warn("control connection from uid %u (pid %d) refused", (unsigned)peer->uid,
                         (int)peer->pid);
                snprintf(msg, sizeof(msg), "permission denied: uid %u is not root",
                         (unsigned)peer->uid);
                refuse(fd, EPERM, msg);
        }
}

static void accept_error_cb(void *opaque, int err)
{
        struct vbd_ctl *c = opaque;

        vbd_log_errno(err, "accept on %s: %m", c->path);
}

static int accept_cb(void *opaque, int fd, const struct vbd_listener_peer *peer)
{
        struct vbd_ctl *c = opaque;
        struct ctl_client *cl = calloc(1, sizeof(*cl));

        if (cl)
                cl->in = malloc(VBD_CTL_LINE_MAX + 1);
        if (!cl || !cl->in) {
                free(cl);
                refuse(fd, ENOMEM, "out of memory");
                return -ENOMEM; /* the listener closes fd */
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
        ev_timer_again(c->loop, &cl->idle);
        ev_io_start(c->loop, &cl->rio);
        cl->next = c->clients;
        c->clients = cl;
        return 0;
}

/* Bind and listen on c->path (mode 0600, in a 0700 dir), replacing a stale
 * socket, refusing a live one. */
static int listen_unix(struct vbd_ctl *c)
{
        struct vbd_listener_config lc = {
            .path = c->path,
            .mode = 0600,
            .make_dir = true,
            .owner_only = true,
            .backlog = 16,
            .max_clients = c->cfg.max_clients,
            .accept = accept_cb,
            .refuse = refuse_cb,
            .error = accept_error_cb,
            .opaque = c,
        };
        int r;

        c->listener = vbd_listener_new(c->loop, &lc);
        if (c->listener)
                return 0;
        r = -errno;
        if (r == -EADDRINUSE)
                return vbd_log_errno(r, "%s: another vbdd serves this VBD: %m", c->path);
        if (r == -ENOTDIR)
                return vbd_log_errno(r, "runtime dir %s: %m", c->dir);
        return vbd_log_errno(r, "%s: %m", c->path);
}

/* ---- setup ---- */

struct vbd_ctl *vbd_ctl_new(struct ev_loop *loop, const struct vbd_ctl_config *cfg)
{
        struct vbd_ctl *c = calloc(1, sizeof(*c));
        int n, r;

        if (!c)
                return NULL;
        c->loop = loop;
        c->cfg = *cfg;
        c->log_level = cfg->log_level;
        c->start_ms = vbd_now_ms();
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
        r = listen_unix(c);
        if (r < 0)
                goto fail;
        vbd_debug("control socket %s", c->path);
        return c;
fail:
        free(c);
        errno = r < 0 ? -r : EIO;
        return NULL;
}

void vbd_ctl_start(struct vbd_ctl *c, struct vbd_device *dev, struct vbd_xenbus *xb)
{
        c->dev = dev;
        c->xb = xb;
        c->started = true;
        vbd_listener_start(c->listener); /* it alone does not keep the loop alive */
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
                        (void)ctl_reply_err(cl, cl->pending_id, -ESHUTDOWN, "vbdd is exiting");
                client_flush(cl);
                client_close(cl);
        }
        if (c->dev)
                vbd_device_forget(c->dev, c); /* a pause's done must not find us gone */
        vbd_listener_free(c->listener);       /* removes the socket file */
        free(c);
}
