/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbdd's setup and run (see daemon.h). */
#define VBD_LOG_TOPIC "vbdd"
#include <errno.h>
#include <ev.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "aio.h"
#include "control.h"
#include "daemon.h"
#include "device.h"
#include "image.h"
#include "vbd/log.h"
#include "xen.h"

_Static_assert(VBD_CONFIG_MAX_QUEUES == VBD_RING_MAX_QUEUES, "max-queues bound");

/*
 * The image spec from the toolstack's params node: libxl writes "aio:PATH"
 * for backendtype=tap with format=raw, and a bare path for backendtype=phy.
 * What follows "aio:" may itself be a spec of ours ("aio:null:1G").
 */
static int params_to_spec(const char *params, char *buf, size_t size)
{
        const char *p = params;
        int n;

        if (strncmp(p, "aio:", 4) == 0)
                p += 4;
        if (p[0] == '/')
                n = snprintf(buf, size, "raw:%s", p);
        else
                n = snprintf(buf, size, "%s", p);
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static void notify(const char *state)
{
#ifdef HAVE_LIBSYSTEMD
        (void)sd_notify(0, state);
#else
        (void)state;
#endif
}

/* Read the image spec (and mode, unless given) the toolstack left in the
 * backend directory. */
static int spec_from_xenstore(struct vbd_xen *xen, const struct vbd_xenbus_config *cfg,
                              bool mode_given, bool *readonly, char *buf, size_t size)
{
        char path[256];
        char *params, *mode;
        int r;

        snprintf(path, sizeof(path), "/local/domain/%" PRIu32 "/backend/%s/%" PRIu32 "/%" PRIu32,
                 cfg->backend_domid, cfg->type, cfg->domid, cfg->devid);
        strncat(path, "/params", sizeof(path) - strlen(path) - 1);
        params = vbd_xs_read(xen, path);
        if (!params || !*params) {
                r = params ? -EINVAL : -errno;
                free(params);
                return vbd_log_errno(r, "no --image and no usable %s: %m", path);
        }
        r = params_to_spec(params, buf, size);
        if (r < 0)
                vbd_log_errno(r, "%s: %m", path);
        free(params);
        if (r < 0 || mode_given)
                return r;
        *strrchr(path, '/') = '\0';
        strncat(path, "/mode", sizeof(path) - strlen(path) - 1);
        mode = vbd_xs_read(xen, path);
        if (mode)
                *readonly = mode[0] == 'r';
        free(mode);
        return 0;
}

static void nbd_stopped_cb(void *opaque)
{
        struct vbd_daemon *d = opaque;

        d->nbd_stopped = true;
        ev_break(d->loop, EVBREAK_ALL);
}

/* Export-only: drain the NBD clients, then leave the loop (also vbd-ctl detach). */
/* The NBD export as a user of the device: pausing, swapping and resuming
 * the image reach its clients too. */
static void export_pause(void *user, void (*done)(void *opaque), void *opaque)
{
        vbd_nbd_pause(user, done, opaque);
}

static void export_resume(void *user)
{
        vbd_nbd_resume(user);
}

static int export_set_image(void *user, struct vbd_image *img)
{
        return vbd_nbd_set_image(user, img);
}

static const struct vbd_device_user_ops export_user_ops = {
    .pause = export_pause,
    .resume = export_resume,
    .set_image = export_set_image,
};

static int open_export(struct vbd_daemon *d)
{
        int r;

        d->nbd = vbd_nbd_new(d->loop, vbd_device_image(d->dev), &d->args->nbd);
        if (!d->nbd)
                return -errno;
        r = vbd_device_add_user(d->dev, "the NBD export", &export_user_ops, d->nbd);
        if (r < 0)
                return vbd_log_errno(r, "cannot register the NBD export: %m");
        return 0;
}

static void export_stop(void *opaque)
{
        struct vbd_daemon *d = opaque;

        vbd_nbd_shutdown(d->nbd, nbd_stopped_cb, d);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        struct vbd_daemon *d = w->data;

        vbd_info("signal %d: stopping", w->signum);
        if (d->xb)
                vbd_xenbus_shutdown(d->xb);
        else if (d->nbd)
                export_stop(d);
        else
                ev_break(loop, EVBREAK_ALL);
}

static const char *runtime_dir(const struct vbd_daemon *d)
{
        const char *dir = d->args->ctl_dir;

        if (!dir)
                dir = getenv("VBD_RUNTIME_DIR");
        if ((!dir || !*dir) && getenv("VBD_SIM_DIR") && *getenv("VBD_SIM_DIR"))
                dir = getenv("VBD_SIM_DIR"); /* vbdd-sim: each simulation is its own runtime dir */
        if (!dir || !*dir)
                dir = d->conf.runtime_dir;
        return dir;
}

int vbd_daemon_setup(struct vbd_daemon *d, struct vbd_daemon_args *a)
{
        struct vbd_ctl_config ctl_cfg = {0};
        struct vbd_err err = {0};
        char id[64];

        d->args = a;
        if (a->export_only && !a->have_domid)
                snprintf(id, sizeof(id), "vbd[export]");
        else
                snprintf(id, sizeof(id), "vbd[%" PRIu32 "/%" PRIu32 "]", a->cfg.domid,
                         a->cfg.devid);
        vbd_log_set_id(id);

        /* The config file gives the defaults; options given win. */
        vbd_config_init(&d->conf);
        if (vbd_config_load(&d->conf, a->config_path ? a->config_path : VBD_CONFIG_PATH,
                            a->config_path != NULL, &err) < 0) {
                vbd_err("config: %s", err.msg);
                return -EINVAL;
        }
        vbd_log_set_level(a->level >= 0 ? (enum vbd_log_level)a->level
                                        : (enum vbd_log_level)d->conf.log_level);
        if (!a->debug && d->conf.debug[0] && vbd_log_enable(d->conf.debug) < 0)
                vbd_warn("config: debug topics '%s' ignored", d->conf.debug);
        a->cfg.type = a->type ? a->type : d->conf.backend_type;
        if (!a->have_bdomid)
                a->cfg.backend_domid = d->conf.backend_domid;
        a->cfg.max_queues = a->max_queues ? a->max_queues : d->conf.max_queues;
        if (!a->cfg.max_queues) {
                long cpus = sysconf(_SC_NPROCESSORS_ONLN);

                a->cfg.max_queues = cpus < 1 ? 1 : cpus < 4 ? (unsigned)cpus : 4;
        }
        signal(SIGPIPE, SIG_IGN);

        d->loop = ev_default_loop(EVFLAG_AUTO);
        if (!d->loop) {
                vbd_err("cannot create the event loop");
                return -ENOMEM;
        }
        /* The control socket first: a second daemon for this VBD stops here. */
        ctl_cfg.dir = runtime_dir(d);
        ctl_cfg.domid = a->cfg.domid;
        ctl_cfg.devid = a->cfg.devid;
        ctl_cfg.max_clients = d->conf.ctl_max_clients;
        ctl_cfg.log_level = a->level >= 0 ? a->level : d->conf.log_level;
        if (!a->export_only || a->have_domid) {
                d->ctl = vbd_ctl_new(d->loop, &ctl_cfg);
                if (!d->ctl && (errno == EADDRINUSE || errno == EEXIST))
                        return -errno;
                if (!d->ctl)
                        vbd_warn("running without a control socket");
        }
        d->aio = vbd_aio_new(d->loop, d->conf.aio_depth);
        if (!d->aio)
                return vbd_log_errno(errno, "cannot set up Linux AIO: %m");
        return 0;
}

/* Open the image and the device that owns it. */
static int open_device(struct vbd_daemon *d, const char *spec)
{
        struct vbd_err err = {0};
        struct vbd_image *img = vbd_image_open(spec, d->args->cfg.readonly, d->aio, d->loop, &err);

        if (!img) {
                vbd_err("cannot open image '%s': %s", spec, err.msg);
                return err.code ? err.code : -EIO;
        }
        d->dev = vbd_device_new(d->loop, img, d->args->cfg.readonly, d->aio);
        if (!d->dev) {
                vbd_image_drain_close(img);
                return vbd_log_errno(ENOMEM, "cannot create the device: %m");
        }
        vbd_device_set_export_security(d->dev, &d->args->nbd);
        return 0;
}

int vbd_daemon_open_guest(struct vbd_daemon *d)
{
        struct vbd_daemon_args *a = d->args;
        char spec_buf[VBD_IMAGE_SPEC_MAX + 1];
        const char *spec = a->spec;
        int r;

        d->xen = vbd_xen_open();
        if (!d->xen)
                return -errno;
        if (!spec) {
                r = spec_from_xenstore(d->xen, &a->cfg, a->mode_given, &a->cfg.readonly, spec_buf,
                                       sizeof(spec_buf));
                if (r < 0)
                        return r;
                spec = spec_buf;
        }
        r = open_device(d, spec);
        if (r < 0)
                return r;
        d->xb = vbd_xenbus_new(d->loop, d->xen, d->dev, &a->cfg);
        if (!d->xb)
                return -errno;
        if (a->nbd.endpoint && (r = open_export(d)) < 0)
                return r;
        if (d->ctl) {
                vbd_ctl_start(d->ctl, d->dev, d->xb);
                vbd_ctl_set_nbd(d->ctl, d->nbd, NULL, NULL);
        }
        return 0;
}

int vbd_daemon_open_export(struct vbd_daemon *d)
{
        int r;

        /* No xenstore, no grant tables: nothing of Xen is opened. */
        r = open_device(d, d->args->spec);
        if (r < 0)
                return r;
        d->args->nbd.keep_loop_alive = true;
        r = open_export(d);
        if (r < 0)
                return r;
        if (d->ctl) {
                vbd_ctl_start(d->ctl, d->dev, NULL);
                vbd_ctl_set_nbd(d->ctl, d->nbd, export_stop, d);
        }
        return 0;
}

int vbd_daemon_run(struct vbd_daemon *d)
{
        int ret;

        ev_signal_init(&d->sigterm, signal_cb, SIGTERM);
        ev_signal_init(&d->sigint, signal_cb, SIGINT);
        d->sigterm.data = d->sigint.data = d;
        ev_signal_start(d->loop, &d->sigterm);
        ev_signal_start(d->loop, &d->sigint);
        ev_unref(d->loop); /* the signal watchers alone don't keep the loop alive */
        ev_unref(d->loop);

        notify(d->xb ? "READY=1\nSTATUS=serving" : "READY=1\nSTATUS=exporting");
        ev_run(d->loop, 0);
        notify("STOPPING=1");
        if (d->xb) {
                ret = vbd_xenbus_finished(d->xb) ? vbd_xenbus_exit_code(d->xb) : 1;
                if (d->nbd) {
                        /* The guest is gone: answer the NBD clients' requests in flight. */
                        vbd_nbd_shutdown(d->nbd, nbd_stopped_cb, d);
                        while (!d->nbd_stopped)
                                ev_run(d->loop, 0);
                }
        } else {
                ret = d->nbd_stopped ? 0 : 1;
        }
        ev_ref(d->loop);
        ev_ref(d->loop);
        ev_signal_stop(d->loop, &d->sigterm);
        ev_signal_stop(d->loop, &d->sigint);
        return ret;
}

static void device_drained(void *opaque)
{
        *(bool *)opaque = true;
}

void vbd_daemon_cleanup(struct vbd_daemon *d)
{
        vbd_ctl_free(d->ctl);
        if (d->nbd)
                vbd_device_remove_user(d->dev, d->nbd);
        vbd_nbd_free(d->nbd);
        vbd_xenbus_free(d->xb);
        if (d->dev) { /* the stack's background work (a mirror's) ends first */
                bool drained = false;

                vbd_device_drain(d->dev, device_drained, &drained);
                while (!drained)
                        ev_run(d->loop, EVRUN_ONCE);
        }
        vbd_device_free(d->dev);
        vbd_xen_close(d->xen);
        vbd_aio_free(d->aio);
}
