/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbdd's setup, in the order main() runs it: the arguments
 * (daemon-args.c), then the daemon (daemon.c): config file and logging, the
 * loop, the control socket (first: a second daemon for the VBD stops
 * there), AIO, then either the guest's VBD (Xen, xenbus, the device, an
 * optional NBD export) or export-only mode (the device and its NBD export,
 * nothing of Xen), signals and sd_notify around the loop.
 */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdio.h>

#include "config.h"
#include "nbd-export.h"
#include "xenbus.h"

struct vbd_aio;
struct vbd_ctl;
struct vbd_device;
struct vbd_xen;

struct vbd_daemon_args {
        struct vbd_xenbus_config cfg;
        const char *spec, *type, *ctl_dir, *config_path, *debug;
        bool have_domid, have_devid, have_bdomid, mode_given, export_only;
        int level;           /* -1: from the config file */
        unsigned max_queues; /* --max-queues; 0: from the config file */
        struct vbd_nbd_config nbd;
};

/* Parse argv into a: -1 to go on, else the exit status (0 after --help). */
int vbd_daemon_parse_args(int argc, char **argv, struct vbd_daemon_args *a);
void vbd_daemon_usage(FILE *f);

struct vbd_daemon {
        struct vbd_daemon_args *args;
        struct vbd_config conf;
        struct ev_loop *loop;
        struct vbd_ctl *ctl;
        struct vbd_aio *aio;
        struct vbd_xen *xen;
        struct vbd_device *dev;
        struct vbd_xenbus *xb;
        struct vbd_nbd *nbd;
        bool nbd_stopped;
        ev_signal sigterm, sigint;
};

/* Config file, logging, loop, control socket, AIO.  0 or -errno (logged). */
int vbd_daemon_setup(struct vbd_daemon *d, struct vbd_daemon_args *a);
/* Serve the guest's VBD (Xen mode) or only export the image (export-only). */
int vbd_daemon_open_guest(struct vbd_daemon *d);
int vbd_daemon_open_export(struct vbd_daemon *d);
/* Signals, READY=1, the loop until the VBD is detached or a signal stops it;
 * returns the exit status. */
int vbd_daemon_run(struct vbd_daemon *d);
/* Close everything that was opened, in order.  Safe after any failure. */
void vbd_daemon_cleanup(struct vbd_daemon *d);
