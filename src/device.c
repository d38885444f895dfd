/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The device (see device.h): the image stack of one VBD, its users, the
 * counted pause holds, stacking and swapping.
 */
#define VBD_LOG_TOPIC "device"
#include <errno.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "nbd-export.h"
#include "image.h"
#include "job.h"
#include "vbd/log.h"

struct device_user {
        struct device_user *next;
        struct vbd_device *dev;
        const char *name;
        const struct vbd_device_user_ops *ops;
        void *user;
        bool draining; /* paused by us, its done not yet run */
};

struct pause_waiter {
        void (*done)(void *opaque);
        void *opaque;
};

struct vbd_device {
        struct ev_loop *loop;
        struct vbd_image *img; /* the top of the stack: the one pointer */
        bool readonly;
        struct vbd_aio *aio;
        struct device_user *users;
        unsigned holds;    /* vbd_device_pause() calls not yet resumed */
        unsigned draining; /* users whose pause has not called back, +1 while pausing them */
        bool drained;
        struct pause_waiter *waiters;
        unsigned nwaiters, waiters_size;
        struct vbd_job *jobs;
        const struct vbd_nbd_config *export_security; /* TLS and --nbd-insecure of job exports */
};

struct vbd_device *vbd_device_new(struct ev_loop *loop, struct vbd_image *img, bool readonly,
                                  struct vbd_aio *aio)
{
        struct vbd_device *dev = calloc(1, sizeof(*dev));

        if (!dev)
                return NULL;
        dev->loop = loop;
        dev->img = img;
        dev->readonly = readonly;
        dev->aio = aio;
        return dev;
}

void vbd_device_set_export_security(struct vbd_device *dev, const struct vbd_nbd_config *c)
{
        dev->export_security = c;
}

void vbd_device_drain(struct vbd_device *dev, void (*done)(void *opaque), void *opaque)
{
        vbd_image_drain(dev->img, done, opaque);
}

void vbd_device_free(struct vbd_device *dev)
{
        if (!dev)
                return;
        vbd_jobs_free(dev);
        while (dev->users)
                vbd_device_remove_user(dev, dev->users->user);
        vbd_image_close(dev->img);
        free(dev->waiters);
        free(dev);
}

int vbd_device_add_user(struct vbd_device *dev, const char *name,
                        const struct vbd_device_user_ops *ops, void *user)
{
        struct device_user *u = calloc(1, sizeof(*u));

        if (!u)
                return -ENOMEM;
        u->dev = dev;
        u->name = name;
        u->ops = ops;
        u->user = user;
        u->next = dev->users;
        dev->users = u;
        if (dev->holds && ops && ops->pause)
                ops->pause(user, NULL, NULL); /* paused already: join the pause */
        return 0;
}

void vbd_device_remove_user(struct vbd_device *dev, void *user)
{
        struct device_user **pp;

        if (!dev)
                return;
        for (pp = &dev->users; *pp; pp = &(*pp)->next) {
                struct device_user *u = *pp;

                if (u->user != user)
                        continue;
                *pp = u->next;
                if (u->draining) {
                        u->draining = false;
                        dev->draining--;
                }
                free(u);
                break;
        }
}

struct ev_loop *vbd_device_loop(struct vbd_device *dev)
{
        return dev->loop;
}

struct vbd_image *vbd_device_image(struct vbd_device *dev)
{
        return dev->img;
}

bool vbd_device_readonly(const struct vbd_device *dev)
{
        return dev->readonly;
}

bool vbd_device_paused(const struct vbd_device *dev)
{
        return dev->holds > 0;
}

bool vbd_device_drained(const struct vbd_device *dev)
{
        return dev->holds > 0 && dev->drained;
}

struct vbd_job **vbd_device_jobs(struct vbd_device *dev)
{
        return &dev->jobs;
}

/* ---- pause holds ---- */

static void drain_check(struct vbd_device *dev)
{
        if (dev->draining || !dev->holds || dev->drained)
                return;
        dev->drained = true;
        vbd_debug("drained: %u hold(s)", dev->holds);
        /* A done may pause or resume: take the list first. */
        while (dev->nwaiters && dev->drained) {
                struct pause_waiter w = dev->waiters[0];

                memmove(dev->waiters, dev->waiters + 1, --dev->nwaiters * sizeof(w));
                w.done(w.opaque);
        }
}

static void user_drained(void *opaque)
{
        struct device_user *u = opaque;
        struct vbd_device *dev = u->dev;

        if (!u->draining)
                return;
        u->draining = false;
        dev->draining--;
        drain_check(dev);
}

static int add_waiter(struct vbd_device *dev, void (*done)(void *opaque), void *opaque)
{
        if (dev->nwaiters == dev->waiters_size) {
                unsigned size = dev->waiters_size ? dev->waiters_size * 2 : 4;
                struct pause_waiter *p = realloc(dev->waiters, size * sizeof(*p));

                if (!p)
                        return -ENOMEM;
                dev->waiters = p;
                dev->waiters_size = size;
        }
        dev->waiters[dev->nwaiters++] = (struct pause_waiter){done, opaque};
        return 0;
}

void vbd_device_pause(struct vbd_device *dev, void (*done)(void *opaque), void *opaque)
{
        if (dev->holds++) {
                if (dev->drained) {
                        if (done)
                                done(opaque);
                } else if (done && add_waiter(dev, done, opaque) < 0) {
                        vbd_err("out of memory: a pause will not call back");
                }
                return;
        }
        dev->drained = false;
        if (done && add_waiter(dev, done, opaque) < 0)
                vbd_err("out of memory: a pause will not call back");
        dev->draining = 1; /* ourselves, until every user has been asked */
        for (struct device_user *u = dev->users; u; u = u->next) {
                if (!u->ops || !u->ops->pause)
                        continue;
                u->draining = true;
                dev->draining++;
                u->ops->pause(u->user, user_drained, u); /* may call back inline */
        }
        dev->draining--;
        drain_check(dev);
}

void vbd_device_forget(struct vbd_device *dev, void *opaque)
{
        unsigned n = 0;

        if (!dev)
                return;
        for (unsigned i = 0; i < dev->nwaiters; i++)
                if (dev->waiters[i].opaque != opaque)
                        dev->waiters[n++] = dev->waiters[i];
        dev->nwaiters = n;
}

void vbd_device_resume(struct vbd_device *dev)
{
        if (!dev->holds) {
                vbd_warn("resume without a pause: ignored");
                return;
        }
        if (--dev->holds)
                return;
        /* The last holder: whoever still waits has resumed already. */
        dev->nwaiters = 0;
        dev->drained = false;
        for (struct device_user *u = dev->users; u; u = u->next) {
                if (u->draining) {
                        u->draining = false;
                        dev->draining--;
                }
                if (u->ops && u->ops->resume)
                        u->ops->resume(u->user);
        }
}

/* ---- the image stack ---- */

/* Can every user be pointed at another image?  0, or -EBUSY naming one that cannot. */
static int check_swappable(struct vbd_device *dev, struct vbd_err *err)
{
        if (!vbd_device_drained(dev))
                return vbd_err_set(err, -EBUSY, "the VBD must be paused (and drained) first");
        for (struct device_user *u = dev->users; u; u = u->next)
                if (!u->ops || !u->ops->set_image)
                        return vbd_err_set(err, -EBUSY, "%s cannot change images", u->name);
        return 0;
}

/* Point every user at img (all or none), then make it the device's image. */
static int swap_image(struct vbd_device *dev, struct vbd_image *img, struct vbd_err *err)
{
        struct device_user *u;
        int r = 0;

        for (u = dev->users; u; u = u->next) {
                r = u->ops->set_image(u->user, img);
                if (r < 0)
                        break;
        }
        if (r < 0) {
                const char *who = u->name;

                for (struct device_user *v = dev->users; v != u; v = v->next)
                        (void)v->ops->set_image(v->user, dev->img);
                return vbd_err_set(err, r, "%s cannot serve %s: %s", who, vbd_image_name(img),
                                   strerror(-r));
        }
        dev->img = img;
        return 0;
}

/* A pushed filter that could not be swapped in: drain its own layer, drop it. */
static void filter_drained(void *opaque)
{
        (void)vbd_image_unwrap(opaque); /* the child is still dev->img */
}

int vbd_device_push_filter(struct vbd_device *dev, const char *name, struct vbd_err *err)
{
        struct vbd_image *top;
        int r = check_swappable(dev, err);

        if (r < 0)
                return r;
        top = vbd_image_open_filter(name, dev->img, err);
        if (!top)
                return err && err->code ? err->code : -ENOMEM;
        r = swap_image(dev, top, err);
        if (r < 0) {
                vbd_image_drain_top(top, filter_drained, top);
                return r;
        }
        vbd_info("%s stacked over %s", name, vbd_image_name(dev->img));
        return 0;
}

struct vbd_image *vbd_device_find_layer(struct vbd_device *dev, const char *name)
{
        for (struct vbd_image *i = dev->img; i; i = vbd_image_child(i))
                if (strcmp(vbd_image_driver(i)->name, name) == 0)
                        return i;
        return NULL;
}

/* ---- reopen ---- */

struct reopen {
        struct vbd_device *dev;
        char *spec;
        void (*done)(void *opaque, int status, const struct vbd_err *err);
        void *opaque;
};

struct vbd_image *vbd_device_open_image(struct vbd_device *dev, const char *spec, bool readonly,
                                        struct vbd_err *err)
{
        return vbd_image_open(spec, readonly, dev->aio, dev->loop, err);
}

void vbd_device_close_image(struct vbd_device *dev, struct vbd_image *img)
{
        (void)dev;
        vbd_image_drain_close(img);
}

struct vbd_image *vbd_device_open_driver(struct vbd_device *dev, const struct vbd_driver *drv,
                                         const char *spec, bool readonly, struct vbd_err *err)
{
        return vbd_image_open_driver(drv, spec, readonly, dev->aio, dev->loop, err);
}

/* ---- a job's own export ---- */

struct vbd_device_export {
        struct vbd_device *dev;
        struct vbd_nbd *nbd;
        bool stopping;
        void (*done)(void *opaque);
        void *opaque;
};

static void jexport_pause(void *user, void (*done)(void *opaque), void *opaque)
{
        struct vbd_device_export *ex = user;

        vbd_nbd_pause(ex->nbd, done, opaque);
}

static void jexport_resume(void *user)
{
        struct vbd_device_export *ex = user;

        vbd_nbd_resume(ex->nbd);
}

static const struct vbd_device_user_ops jexport_ops = {
    .pause = jexport_pause,
    .resume = jexport_resume,
};

struct vbd_device_export *vbd_device_export_start(struct vbd_device *dev, struct vbd_image *img,
                                                  const char *endpoint, const char *name,
                                                  bool writable, struct vbd_err *err)
{
        const struct vbd_nbd_config *sec = dev->export_security;
        struct vbd_nbd_config cfg = {.endpoint = endpoint, .name = name, .writable = writable};
        struct vbd_device_export *ex = calloc(1, sizeof(*ex));
        struct vbd_nbd_addr addr;
        int r;

        if (!ex) {
                vbd_err_set(err, -ENOMEM, "out of memory");
                return NULL;
        }
        if (vbd_nbd_parse_endpoint(endpoint, &addr) < 0) {
                vbd_err_set(err, -EINVAL, "bad endpoint \"%s\" (unix:PATH or tcp:ADDR:PORT)",
                            endpoint);
                goto fail;
        }
        if (sec) {
                cfg.tls_certificates = sec->tls_certificates;
                cfg.tls_psk = sec->tls_psk;
                cfg.tls_verify_peer = sec->tls_verify_peer;
                cfg.insecure = sec->insecure;
        }
        ex->dev = dev;
        ex->nbd = vbd_nbd_new(dev->loop, img, &cfg);
        if (!ex->nbd && errno == EPERM) {
                vbd_err_set(err, -EPERM,
                            "cannot export on %s without TLS: not a loopback address (vbdd "
                            "needs --nbd-tls-certificates or --nbd-tls-psk, or --nbd-insecure)",
                            endpoint);
                goto fail;
        }
        if (!ex->nbd) {
                vbd_err_set(err, -errno, "cannot export on %s: %s", endpoint, strerror(errno));
                goto fail;
        }
        if ((r = vbd_device_add_user(dev, "a job's NBD export", &jexport_ops, ex)) < 0) {
                vbd_err_set(err, r, "out of memory");
                vbd_nbd_free(ex->nbd);
                goto fail;
        }
        return ex;
fail:
        free(ex);
        return NULL;
}

static void jexport_free_cb(int revents, void *opaque)
{
        struct vbd_device_export *ex = opaque;
        void (*done)(void *opaque) = ex->done;
        void *done_opaque = ex->opaque;

        (void)revents;
        vbd_device_export_free(ex);
        if (done)
                done(done_opaque);
}

/* From inside the server's shutdown: free it from the loop, after. */
static void jexport_stopped(void *opaque)
{
        struct vbd_device_export *ex = opaque;

        ev_once(ex->dev->loop, -1, 0, 0., jexport_free_cb, ex);
}

void vbd_device_export_stop(struct vbd_device_export *ex, void (*done)(void *opaque), void *opaque)
{
        if (ex->stopping)
                return;
        ex->stopping = true;
        ex->done = done;
        ex->opaque = opaque;
        vbd_nbd_shutdown(ex->nbd, jexport_stopped, ex);
}

void vbd_device_export_free(struct vbd_device_export *ex)
{
        if (!ex)
                return;
        vbd_device_remove_user(ex->dev, ex);
        vbd_nbd_free(ex->nbd);
        free(ex);
}

unsigned vbd_device_export_clients(const struct vbd_device_export *ex)
{
        return ex ? vbd_nbd_clients(ex->nbd) : 0;
}

static void reopen_paused(void *opaque)
{
        struct reopen *ro = opaque;
        struct vbd_device *dev = ro->dev;
        struct vbd_image *img, *old = dev->img;
        struct vbd_err err = {0}, oerr = {0};
        int r = check_swappable(dev, &err);

        if (r >= 0)
                r = vbd_jobs_check_idle(dev, &err);
        if (r >= 0) {
                /* The new stack may open the old one's files (an overlay over
                 * the old image, the same image with other options): the old
                 * stack lets its image locks go meanwhile, and takes them back
                 * if the reopen fails. */
                vbd_image_unlock_all(old);
                img = vbd_image_open(ro->spec, dev->readonly, dev->aio, dev->loop, &oerr);
                if (!img)
                        r = vbd_err_set(&err, oerr.code ? oerr.code : -EIO, "cannot open '%s': %s",
                                        ro->spec, oerr.msg);
                else if ((r = swap_image(dev, img, &err)) < 0) {
                        vbd_image_unlock_all(img); /* it may take a while to close */
                        vbd_image_drain_close(img);
                }
                if (r < 0 && vbd_image_relock_all(old, &oerr) < 0)
                        vbd_warn("after a failed reopen, the image is no longer locked: %s",
                                 oerr.msg);
        }
        if (r >= 0) {
                vbd_jobs_free(dev); /* over, and about the old stack */
                vbd_image_drain_close(old);
        }
        vbd_device_resume(dev);
        ro->done(ro->opaque, r, &err);
        free(ro->spec);
        free(ro);
}

void vbd_device_reopen(struct vbd_device *dev, const char *spec,
                       void (*done)(void *opaque, int status, const struct vbd_err *err),
                       void *opaque)
{
        struct reopen *ro = calloc(1, sizeof(*ro));
        struct vbd_err err = {0};

        if (!ro || !(ro->spec = strdup(spec))) {
                free(ro);
                vbd_err_set(&err, -ENOMEM, "out of memory");
                done(opaque, err.code, &err);
                return;
        }
        ro->dev = dev;
        ro->done = done;
        ro->opaque = opaque;
        vbd_device_pause(dev, reopen_paused, ro); /* may call back inline */
}
