/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "xenbus"
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xen/io/blkif.h>
#include <xen/io/xenbus.h>

#include "device.h"
#include "image.h"
#include "util/parse.h"
#include "vbd.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "xen.h"
#include "xenbus.h"

#define PATH_LEN 256

struct vbd_xenbus {
        struct ev_loop *loop;
        struct vbd_xen *xen;
        struct vbd_device *dev; /* serves its image; we are one of its users */
        struct vbd *vbd;
        struct vbd_xenbus_config cfg;
        char be[PATH_LEN], fe[PATH_LEN], fe_state_path[PATH_LEN + 8];
        enum xenbus_state state; /* ours, as last written */
        bool disconnecting;      /* waiting for in-flight I/O to drain */
        bool frontend_gone;      /* the frontend domain died */
        bool stopping;           /* SIGTERM */
        bool finished;
        int exit_code;
        ev_io xs_watcher;
        ev_timer gone_w;         /* frontend gone: polls whether its domain died */
        struct vbd_ratelimit rl; /* messages the guest can repeat at will */
};

static void xenbus_evaluate(struct vbd_xenbus *xb);
static void check_frontend_domain(struct vbd_xenbus *xb);

static const char *state_name(enum xenbus_state s)
{
        static const char *const names[] = {"Unknown",     "Initialising",  "InitWait",
                                            "Initialised", "Connected",     "Closing",
                                            "Closed",      "Reconfiguring", "Reconfigured"};
        return (unsigned)s < VBD_ARRAY_SIZE(names) ? names[s] : "invalid";
}

static int switch_state(struct vbd_xenbus *xb, enum xenbus_state s)
{
        char v[4];
        const char *kv[] = {"state", v, NULL};
        int r;

        if (xb->state == s)
                return 0;
        snprintf(v, sizeof(v), "%d", (int)s);
        r = vbd_xs_write_all(xb->xen, xb->be, kv);
        if (r == -ENOENT) {
                vbd_debug("backend directory gone: state %s not written", state_name(s));
                return r;
        }
        if (r < 0)
                return vbd_log_errno(r, "cannot write backend state %s: %m", state_name(s));
        vbd_debug("backend state %s -> %s", state_name(xb->state), state_name(s));
        xb->state = s;
        return 0;
}

static void finish(struct vbd_xenbus *xb, int code, const char *why)
{
        if (xb->finished)
                return;
        vbd_info("%s; exiting", why);
        xb->finished = true;
        xb->exit_code = code;
        ev_io_stop(xb->loop, &xb->xs_watcher);
        ev_timer_stop(xb->loop, &xb->gone_w);
        ev_break(xb->loop, EVBREAK_ALL);
}

static int publish_size(struct vbd_xenbus *xb, struct vbd_image *img)
{
        const struct vbd_info *info = vbd_image_info(img);
        char sectors[24], psize[12];
        const char *kv[] = {"sectors", sectors, "physical-sector-size", psize, NULL};

        snprintf(sectors, sizeof(sectors), "%" PRIu64, info->size / VBD_SECTOR_SIZE);
        snprintf(psize, sizeof(psize), "%" PRIu32,
                 info->physical_block ? info->physical_block : VBD_SECTOR_SIZE);
        return vbd_xs_write_all(xb->xen, xb->be, kv);
}

static int publish(struct vbd_xenbus *xb)
{
        const struct vbd_info *info = vbd_image_info(vbd_device_image(xb->dev));
        char vinfo[12], order[4], indirect[8], gran[12], align[12], queues[4];
        bool flush = !xb->cfg.readonly && (info->caps & VBD_CAP_FLUSH);
        bool discard = !xb->cfg.readonly && (info->caps & VBD_CAP_DISCARD);
        const char *kv[] = {"sector-size",
                            "512",
                            "info",
                            vinfo,
                            "mode",
                            xb->cfg.readonly ? "r" : "w",
                            "feature-flush-cache",
                            flush ? "1" : "0",
                            "feature-barrier",
                            flush ? "1" : "0",
                            "max-ring-page-order",
                            order,
                            "feature-max-indirect-segments",
                            indirect,
                            "feature-discard",
                            discard ? "1" : "0",
                            "discard-granularity",
                            gran,
                            "discard-alignment",
                            align,
                            "discard-secure",
                            "0",
                            "multi-queue-max-queues",
                            queues,
                            "hotplug-status",
                            "connected",
                            NULL};
        int r;

        snprintf(vinfo, sizeof(vinfo), "%u", xb->cfg.readonly ? VDISK_READONLY : 0);
        snprintf(order, sizeof(order), "%u", VBD_RING_MAX_ORDER);
        snprintf(indirect, sizeof(indirect), "%u", VBD_RING_MAX_INDIRECT_SEGMENTS);
        /* Published even when 1, as blkback does: the frontend then uses one ring. */
        snprintf(queues, sizeof(queues), "%u", xb->cfg.max_queues);
        snprintf(gran, sizeof(gran), "%" PRIu32,
                 info->discard_granularity ? info->discard_granularity : VBD_SECTOR_SIZE);
        snprintf(align, sizeof(align), "%" PRIu32, info->discard_alignment);
        r = publish_size(xb, vbd_device_image(xb->dev));
        return r < 0 ? r : vbd_xs_write_all(xb->xen, xb->be, kv);
}

/* Read a value and parse it as a number <= max; on failure say why in msg. */
static int get_uint(vbd_xs_get_fn get, void *opaque, const char *name, unsigned long long max,
                    unsigned long long *ret, char *msg, size_t msglen)
{
        char *v = get(opaque, name);
        int r;

        if (!v) {
                r = -errno;
                if (r != -ENOENT)
                        snprintf(msg, msglen, "cannot read the frontend's %s: %s", name,
                                 strerror(-r));
                else
                        snprintf(msg, msglen, "frontend published no %s", name);
                return r;
        }
        r = vbd_parse_uint(v, max, ret);
        if (r == -ERANGE)
                snprintf(msg, msglen, "frontend published a bad %s '%.40s': the most is %llu", name,
                         v, max);
        else if (r < 0)
                snprintf(msg, msglen, "frontend published a bad %s '%.40s': not a number", name, v);
        free(v);
        return r;
}

/* One queue's ring-ref(s) and event-channel, under prefix ("" or "queue-N/"). */
static int parse_queue(vbd_xs_get_fn get, void *opaque, const char *prefix, unsigned order,
                       struct vbd_queue_config *q, char *msg, size_t msglen)
{
        unsigned long long n;
        char name[40];
        int r;

        for (unsigned i = 0; i < (1u << order); i++) {
                if (order)
                        snprintf(name, sizeof(name), "%sring-ref%u", prefix, i);
                else
                        snprintf(name, sizeof(name), "%sring-ref", prefix);
                r = get_uint(get, opaque, name, UINT32_MAX, &n, msg, msglen);
                if (r == -ENOENT && order == 0) { /* some frontends number even one page */
                        char alt[40];

                        snprintf(alt, sizeof(alt), "%sring-ref0", prefix);
                        r = get_uint(get, opaque, alt, UINT32_MAX, &n, msg, msglen);
                        if (r == -ENOENT) /* name the key the protocol defines */
                                snprintf(msg, msglen, "frontend published no %s", name);
                }
                if (r < 0)
                        return r;
                q->refs[i] = (uint32_t)n;
        }
        snprintf(name, sizeof(name), "%sevent-channel", prefix);
        r = get_uint(get, opaque, name, UINT32_MAX, &n, msg, msglen);
        if (r < 0)
                return r;
        q->port = (uint32_t)n;
        return 0;
}

/* Two queues (or two pages of one) on the same grant, or two queues on one
 * event channel, would serve one ring twice: refused. */
static int check_distinct(const struct vbd_ring_config *rc, char *msg, size_t msglen)
{
        for (unsigned a = 0; a < rc->nr_queues; a++) {
                const struct vbd_queue_config *qa = &rc->queue[a];

                for (unsigned b = a; b < rc->nr_queues; b++) {
                        const struct vbd_queue_config *qb = &rc->queue[b];

                        if (b > a && qa->port == qb->port) {
                                snprintf(msg, msglen,
                                         "frontend published event channel %" PRIu32
                                         " for queues %u and %u",
                                         qa->port, a, b);
                                return -EINVAL;
                        }
                        for (unsigned i = 0; i < rc->nr_pages; i++)
                                for (unsigned j = b == a ? i + 1 : 0; j < rc->nr_pages; j++)
                                        if (qa->refs[i] == qb->refs[j]) {
                                                snprintf(msg, msglen,
                                                         "frontend published ring grant %" PRIu32
                                                         " twice (queue %u page %u, queue %u "
                                                         "page %u)",
                                                         qa->refs[i], a, i, b, j);
                                                return -EINVAL;
                                        }
                }
        }
        return 0;
}

int vbd_xenbus_parse_ring(vbd_xs_get_fn get, void *opaque, unsigned max_queues,
                          struct vbd_ring_config *ret, char *msg, size_t msglen)
{
        unsigned long long order = 0, nq = 1;
        char prefix[24], *proto;
        int r;

        memset(ret, 0, sizeof(*ret));
        if (max_queues < 1 || max_queues > VBD_RING_MAX_QUEUES)
                max_queues = 1;
        r = get_uint(get, opaque, "multi-queue-num-queues", max_queues, &nq, msg, msglen);
        if (r == -ENOENT)
                nq = 1;
        else if (r < 0)
                return r;
        if (nq == 0) {
                snprintf(msg, msglen, "frontend asked for 0 queues (multi-queue-num-queues)");
                return -EINVAL;
        }
        ret->nr_queues = (unsigned)nq;
        r = get_uint(get, opaque, "ring-page-order", VBD_RING_MAX_ORDER, &order, msg, msglen);
        if (r == -ENOENT)
                order = 0;
        else if (r < 0)
                return r;
        ret->nr_pages = 1u << order;
        for (unsigned q = 0; q < ret->nr_queues; q++) {
                /* One queue: the flat keys, as blkback reads them (even when
                 * the frontend wrote multi-queue-num-queues = 1). */
                if (ret->nr_queues == 1)
                        prefix[0] = '\0';
                else
                        snprintf(prefix, sizeof(prefix), "queue-%u/", q);
                r = parse_queue(get, opaque, prefix, (unsigned)order, &ret->queue[q], msg, msglen);
                if (r < 0)
                        return r;
        }
        r = check_distinct(ret, msg, msglen);
        if (r < 0)
                return r;

        proto = get(opaque, "protocol");
        if (!proto && errno != ENOENT) {
                r = -errno;
                snprintf(msg, msglen, "cannot read the frontend's protocol: %s", strerror(-r));
                return r;
        }
        r = vbd_ring_parse_abi(proto, &ret->abi);
        if (r < 0)
                snprintf(msg, msglen, "frontend asked for unknown protocol '%.40s'", proto);
        free(proto);
        return r;
}

static char *fe_get(void *opaque, const char *name)
{
        struct vbd_xenbus *xb = opaque;
        char path[PATH_LEN + 32];

        snprintf(path, sizeof(path), "%s/%s", xb->fe, name);
        return vbd_xs_read(xb->xen, path);
}

/* Read the frontend's ring description and connect. */
static int connect_ring(struct vbd_xenbus *xb)
{
        struct vbd_ring_config rc;
        char msg[160];
        int r = vbd_xenbus_parse_ring(fe_get, xb, xb->cfg.max_queues, &rc, msg, sizeof(msg));

        if (r < 0) {
                vbd_err("%s", msg);
                return r;
        }
        return vbd_connect(xb->vbd, &rc);
}

/* The frontend's state, or Unknown if it is missing or garbage. */
static enum xenbus_state frontend_state(struct vbd_xenbus *xb)
{
        unsigned long long s;
        int r = vbd_xs_read_uint(xb->xen, xb->fe_state_path, XenbusStateReconfigured, &s);

        if (r == -ENOENT)
                return XenbusStateUnknown;
        if (r < 0) {
                if (vbd_ratelimit_ok(&xb->rl))
                        vbd_warn("frontend state is not a xenbus state: treating it as closed");
                return XenbusStateClosed;
        }
        return (enum xenbus_state)s;
}

static void disconnected(void *opaque)
{
        struct vbd_xenbus *xb = opaque;

        xb->disconnecting = false;
        if (xb->frontend_gone) {
                /* libxl runs the remove script once it reads Closed. */
                (void)switch_state(xb, XenbusStateClosed);
                finish(xb, 0, "frontend domain is gone");
                return;
        }
        if (xb->stopping) {
                (void)switch_state(xb, XenbusStateClosed);
                finish(xb, 0, "stopped");
                return;
        }
        /* The domain may have died while the ring drained, its
         * @releaseDomain come and gone: look now rather than wait. */
        check_frontend_domain(xb);
        if (xb->finished || xb->frontend_gone)
                return;
        xenbus_evaluate(xb);
}

static void start_disconnect(struct vbd_xenbus *xb, bool respond)
{
        if (xb->disconnecting)
                return;
        xb->disconnecting = true;
        vbd_disconnect(xb->vbd, respond, disconnected, xb);
}

/* The ring was found bogus: drop it and tell the frontend to go away. */
static void ring_fatal(void *opaque)
{
        struct vbd_xenbus *xb = opaque;

        (void)switch_state(xb, XenbusStateClosing);
        start_disconnect(xb, true);
}

static void xenbus_evaluate(struct vbd_xenbus *xb)
{
        unsigned long long online = 1;
        enum xenbus_state fe;
        char path[PATH_LEN + 16];
        int r;

        if (xb->finished || xb->disconnecting)
                return;

        r = vbd_xs_exists(xb->xen, xb->be);
        if (r == 0) {
                if (vbd_is_connected(xb->vbd)) {
                        start_disconnect(xb, true);
                        return;
                }
                finish(xb, 0, "backend directory removed by the toolstack");
                return;
        }
        snprintf(path, sizeof(path), "%s/online", xb->be);
        if (vbd_xs_read_uint(xb->xen, path, 1, &online) < 0)
                online = 1;

        fe = frontend_state(xb);
        vbd_debug("evaluate: backend %s, frontend %s, online %llu", state_name(xb->state),
                  state_name(fe), online);

        if (vbd_is_connected(xb->vbd)) {
                if (fe == XenbusStateInitialised || fe == XenbusStateConnected)
                        return;
                /* Frontend closing, closed, gone or restarting: drain and drop the ring. */
                start_disconnect(xb, true);
                return;
        }

        switch (fe) {
        case XenbusStateInitialised:
        case XenbusStateConnected:
                if (xb->state != XenbusStateInitWait)
                        break;
                r = connect_ring(xb);
                if (r < 0) { /* connect_ring said why */
                        (void)switch_state(xb, XenbusStateClosing);
                        return;
                }
                (void)switch_state(xb, XenbusStateConnected);
                return;
        case XenbusStateInitialising:
        case XenbusStateInitWait:
                if (online && (xb->state == XenbusStateClosed || xb->state == XenbusStateClosing)) {
                        vbd_info("frontend restarted: waiting for it to connect");
                        (void)switch_state(xb, XenbusStateInitWait);
                        return;
                }
                break;
        case XenbusStateClosing:
                (void)switch_state(xb, XenbusStateClosing);
                return;
        default: /* Closed, Unknown, and states that make no sense for blkif */
                if (xb->state == XenbusStateConnected || xb->state == XenbusStateClosing)
                        (void)switch_state(xb, XenbusStateClosed);
                /* The frontend's directory gone: its domain is being
                 * destroyed, most likely.  @releaseDomain says when, once;
                 * a check that cannot tell then (it was ESRCH, now read as
                 * gone: tests/xen destroy hung 1 run in 4 on it) is not
                 * asked again, so poll too, once a second, until the domain
                 * is dead or its frontend comes back. */
                if (fe == XenbusStateUnknown && !ev_is_active(&xb->gone_w))
                        ev_timer_again(xb->loop, &xb->gone_w);
                break;
        }

        if (!online && (fe == XenbusStateClosed || fe == XenbusStateUnknown ||
                        fe == XenbusStateInitialising || xb->state != XenbusStateConnected))
                finish(xb, 0, "detached by the toolstack");
}

static void check_frontend_domain(struct vbd_xenbus *xb)
{
        int alive = vbd_xen_domain_alive(xb->xen, xb->cfg.domid);

        if (alive != 0) {
                vbd_debug("frontend domain %" PRIu32 ": %s", xb->cfg.domid,
                          alive > 0 ? "alive" : strerror(-alive));
                return; /* alive, or we cannot tell */
        }
        vbd_info("frontend domain %" PRIu32 " is dying or gone", xb->cfg.domid);
        xb->frontend_gone = true;
        if (vbd_is_connected(xb->vbd)) {
                xb->disconnecting = false; /* restart the disconnect without responses */
                start_disconnect(xb, false);
                return;
        }
        if (!xb->disconnecting) {
                (void)switch_state(xb, XenbusStateClosed);
                finish(xb, 0, "frontend domain is gone");
        }
}

static void gone_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_xenbus *xb = w->data;

        if (xb->finished || frontend_state(xb) != XenbusStateUnknown) {
                ev_timer_stop(loop, w);
                return;
        }
        check_frontend_domain(xb);
}

static void xs_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd_xenbus *xb = w->data;
        const char *path, *token;
        bool evaluate = false, release = false;

        while (vbd_xs_next_event(xb->xen, &path, &token) > 0) {
                if (strcmp(token, "rel") == 0)
                        release = true;
                else
                        evaluate = true;
        }
        if (release)
                check_frontend_domain(xb);
        if (evaluate)
                xenbus_evaluate(xb);
}

/* ---- the device's user: pause, resume and swap the ring's image ---- */

static void user_pause(void *user, void (*done)(void *opaque), void *opaque)
{
        struct vbd_xenbus *xb = user;

        vbd_pause(xb->vbd, done, opaque);
}

static void user_resume(void *user)
{
        struct vbd_xenbus *xb = user;

        vbd_resume(xb->vbd);
}

/* Serve from img from now on (paused and drained); republish the size. */
static int user_set_image(void *user, struct vbd_image *img)
{
        struct vbd_xenbus *xb = user;
        int r = vbd_set_image(xb->vbd, img);

        if (r < 0)
                return r;
        r = publish_size(xb, img);
        if (r < 0)
                return vbd_log_errno(r, "cannot publish the new size: %m");
        vbd_info("now serving %s (%" PRIu64 " bytes)", vbd_image_name(img),
                 vbd_image_info(img)->size);
        return 0;
}

static const struct vbd_device_user_ops user_ops = {
    .pause = user_pause,
    .resume = user_resume,
    .set_image = user_set_image,
};

struct vbd_xenbus *vbd_xenbus_new(struct ev_loop *loop, struct vbd_xen *x, struct vbd_device *dev,
                                  const struct vbd_xenbus_config *cfg)
{
        struct vbd_xenbus *xb = calloc(1, sizeof(*xb));
        char path[PATH_LEN + 32], *fe = NULL;
        unsigned long long fe_id;
        int r;

        if (!xb)
                return NULL;
        xb->loop = loop;
        xb->xen = x;
        xb->dev = dev;
        xb->cfg = *cfg;
        if (xb->cfg.max_queues < 1)
                xb->cfg.max_queues = 1;
        if (xb->cfg.max_queues > VBD_RING_MAX_QUEUES)
                xb->cfg.max_queues = VBD_RING_MAX_QUEUES;
        xb->state = XenbusStateUnknown;
        xb->rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 5);
        snprintf(xb->be, sizeof(xb->be),
                 "/local/domain/%" PRIu32 "/backend/%s/%" PRIu32 "/%" PRIu32, cfg->backend_domid,
                 cfg->type, cfg->domid, cfg->devid);

        r = vbd_xs_exists(x, xb->be);
        if (r <= 0) {
                r = r ? r : -ENOENT;
                vbd_log_errno(r, "backend directory %s: %m (the toolstack creates it first)",
                              xb->be);
                goto fail;
        }
        snprintf(path, sizeof(path), "%s/frontend-id", xb->be);
        r = vbd_xs_read_uint(x, path, UINT16_MAX, &fe_id);
        if (r < 0 || fe_id != cfg->domid) {
                r = r < 0 ? r : -EINVAL;
                vbd_log_errno(r, "%s does not name domain %" PRIu32 ": %m", path, cfg->domid);
                goto fail;
        }
        snprintf(path, sizeof(path), "%s/frontend", xb->be);
        fe = vbd_xs_read(x, path);
        if (!fe || fe[0] != '/' || strlen(fe) >= sizeof(xb->fe)) {
                r = fe ? -EINVAL : -errno;
                vbd_log_errno(r, "bad or missing %s: %m", path);
                goto fail;
        }
        snprintf(xb->fe, sizeof(xb->fe), "%s", fe);
        snprintf(xb->fe_state_path, sizeof(xb->fe_state_path), "%s/state", xb->fe);
        free(fe);
        fe = NULL;

        xb->vbd =
            vbd_new(loop, x, vbd_device_image(dev), cfg->domid, cfg->readonly, ring_fatal, xb);
        if (!xb->vbd) {
                r = -ENOMEM;
                goto fail;
        }
        r = vbd_device_add_user(dev, "the blkif ring", &user_ops, xb);
        if (r < 0)
                goto fail;
        r = publish(xb);
        if (r < 0) {
                vbd_log_errno(r, "cannot publish the disk in %s: %m", xb->be);
                goto fail;
        }
        r = switch_state(xb, XenbusStateInitWait);
        if (r < 0)
                goto fail;

        ev_io_init(&xb->xs_watcher, xs_cb, vbd_xs_fd(x), EV_READ);
        xb->xs_watcher.data = xb;
        ev_init(&xb->gone_w, gone_cb);
        xb->gone_w.repeat = 1.;
        xb->gone_w.data = xb;
        ev_io_start(loop, &xb->xs_watcher);
        if ((r = vbd_xs_watch(x, xb->be, "be")) < 0 ||
            (r = vbd_xs_watch(x, xb->fe_state_path, "fe")) < 0 ||
            (r = vbd_xs_watch(x, "@releaseDomain", "rel")) < 0) {
                vbd_log_errno(r, "cannot set xenstore watches: %m");
                goto fail;
        }
        vbd_info("backend %s ready for frontend %s (%s)", xb->be, xb->fe,
                 cfg->readonly ? "read-only" : "read-write");
        return xb;
fail:
        free(fe);
        vbd_xenbus_free(xb);
        errno = -r;
        return NULL;
}

void vbd_xenbus_shutdown(struct vbd_xenbus *xb)
{
        if (xb->finished)
                return;
        xb->stopping = true;
        if (vbd_is_connected(xb->vbd)) {
                (void)switch_state(xb, XenbusStateClosing);
                xb->disconnecting = false;
                start_disconnect(xb, true);
                return;
        }
        if (!xb->disconnecting) {
                (void)switch_state(xb, XenbusStateClosed);
                finish(xb, 0, "stopped");
        }
}

bool vbd_xenbus_finished(const struct vbd_xenbus *xb)
{
        return xb->finished;
}

int vbd_xenbus_exit_code(const struct vbd_xenbus *xb)
{
        return xb->exit_code;
}

void vbd_xenbus_free(struct vbd_xenbus *xb)
{
        if (!xb)
                return;
        if (ev_is_active(&xb->xs_watcher))
                ev_io_stop(xb->loop, &xb->xs_watcher);
        ev_timer_stop(xb->loop, &xb->gone_w);
        vbd_device_remove_user(xb->dev, xb);
        vbd_free(xb->vbd);
        free(xb);
}

const struct vbd_xenbus_config *vbd_xenbus_config(const struct vbd_xenbus *xb)
{
        return &xb->cfg;
}

const char *vbd_xenbus_backend_path(const struct vbd_xenbus *xb)
{
        return xb->be;
}

int vbd_xenbus_state(const struct vbd_xenbus *xb)
{
        return (int)xb->state;
}

int vbd_xenbus_frontend_state(struct vbd_xenbus *xb)
{
        return (int)frontend_state(xb);
}

bool vbd_xenbus_connected(const struct vbd_xenbus *xb)
{
        return vbd_is_connected(xb->vbd);
}

unsigned vbd_xenbus_inflight(const struct vbd_xenbus *xb)
{
        return vbd_inflight(xb->vbd);
}

unsigned vbd_xenbus_queues(const struct vbd_xenbus *xb)
{
        return vbd_queues(xb->vbd);
}

void vbd_xenbus_get_stats(const struct vbd_xenbus *xb, struct vbd_stats *ret)
{
        vbd_get_stats(xb->vbd, ret);
}
