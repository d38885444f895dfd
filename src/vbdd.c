/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbdd: serves one virtual block device of one guest (or, --export-only,
 * exports one image over NBD).  main() only sequences the steps in
 * daemon-args.c and daemon.c.
 */
#include "daemon.h"

int main(int argc, char **argv)
{
        struct vbd_daemon_args args;
        struct vbd_daemon d = {0};
        int ret = vbd_daemon_parse_args(argc, argv, &args);

        if (ret >= 0)
                return ret; /* --help, --version, or a usage error */
        ret = 1;
        if (vbd_daemon_setup(&d, &args) < 0)
                goto out;
        if ((args.export_only ? vbd_daemon_open_export(&d) : vbd_daemon_open_guest(&d)) < 0)
                goto out;
        ret = vbd_daemon_run(&d);
out:
        vbd_daemon_cleanup(&d);
        return ret;
}
