/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbdd: serves one virtual block device of one guest.
 */
#define VBD_LOG_TOPIC "vbdd"
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aio.h"
#include "config.h"
#include "image.h"
#include "vbd/log.h"
#include "xen.h"
#include "xenbus.h"

#define AIO_DEPTH 1024

static void usage(FILE *f)
{
        fprintf(
            f, "Usage: vbdd --domid D --devid N --image SPEC [OPTIONS]\n"
               "Serve one Xen virtual block device (blkif backend) from an image.\n"
               "\n"
               "  --domid D           frontend (guest) domain id\n"
               "  --devid N           virtual device number (e.g. 51712 for xvda)\n"
               "  --image SPEC        driver:arg[,key=value...], e.g. raw:/srv/d.img, null:1G\n"
               "  --mode r|w          read-only or read-write (default w)\n"
               "  --type NAME         backend directory type (default vbd3)\n"
               "  --backend-domid D   domain running this backend (default 0)\n"
               "  -D, --debug TOPICS  debug messages for topics (ring,xenbus,xen,drv.raw,...|all)\n"
               "  -v, --verbose       debug messages for every topic\n"
               "  -q, --quiet         warnings and errors only\n"
               "  -h, --help          this help\n"
               "  -V, --version       print the version\n"
               "\n"
               "The toolstack writes the backend and frontend xenstore directories first,\n"
               "then starts vbdd; vbdd exits 0 when the device is detached or the guest dies.\n"
               "\n"
               "Drivers:\n");
        vbd_image_list_drivers(f);
}

static int parse_u32(const char *s, uint32_t max, uint32_t *ret)
{
        char *end;
        unsigned long long n;

        errno = 0;
        if (!s || s[0] < '0' || s[0] > '9')
                return -EINVAL;
        n = strtoull(s, &end, 10);
        if (errno || *end || n > max)
                return -ERANGE;
        *ret = (uint32_t)n;
        return 0;
}

static struct vbd_xenbus *the_xenbus;

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        vbd_info("signal %d: stopping", w->signum);
        if (the_xenbus)
                vbd_xenbus_shutdown(the_xenbus);
        else
                ev_break(loop, EVBREAK_ALL);
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
            {"domid", required_argument, NULL, 'd'},
            {"devid", required_argument, NULL, 'n'},
            {"image", required_argument, NULL, 'i'},
            {"mode", required_argument, NULL, 'm'},
            {"type", required_argument, NULL, 't'},
            {"backend-domid", required_argument, NULL, 'b'},
            {"debug", required_argument, NULL, 'D'},
            {"verbose", no_argument, NULL, 'v'},
            {"quiet", no_argument, NULL, 'q'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {},
        };
        struct vbd_xenbus_config cfg = {.type = "vbd3"};
        const char *spec = NULL;
        bool have_domid = false, have_devid = false;
        struct ev_loop *loop;
        struct vbd_aio *aio = NULL;
        struct vbd_image *img = NULL;
        struct vbd_xen *xen = NULL;
        struct vbd_err err = {0};
        ev_signal sigterm, sigint;
        char id[64];
        int c, ret = 1;

        while ((c = getopt_long(argc, argv, "D:vqhV", opts, NULL)) != -1) {
                switch (c) {
                case 'd':
                        if (parse_u32(optarg, 0x7fef, &cfg.domid) < 0) {
                                fprintf(stderr, "vbdd: bad --domid '%s'\n", optarg);
                                return 2;
                        }
                        have_domid = true;
                        break;
                case 'n':
                        if (parse_u32(optarg, UINT32_MAX, &cfg.devid) < 0) {
                                fprintf(stderr, "vbdd: bad --devid '%s'\n", optarg);
                                return 2;
                        }
                        have_devid = true;
                        break;
                case 'b':
                        if (parse_u32(optarg, 0x7fef, &cfg.backend_domid) < 0) {
                                fprintf(stderr, "vbdd: bad --backend-domid '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case 'i':
                        spec = optarg;
                        break;
                case 'm':
                        if (strcmp(optarg, "r") && strcmp(optarg, "w")) {
                                fprintf(stderr, "vbdd: --mode must be r or w\n");
                                return 2;
                        }
                        cfg.readonly = optarg[0] == 'r';
                        break;
                case 't':
                        if (!*optarg || strchr(optarg, '/') || strlen(optarg) > 32) {
                                fprintf(stderr, "vbdd: bad --type '%s'\n", optarg);
                                return 2;
                        }
                        cfg.type = optarg;
                        break;
                case 'D':
                        if (vbd_log_enable(optarg) < 0) {
                                fprintf(stderr, "vbdd: bad --debug '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case 'v':
                        vbd_log_set_level(VBD_LOG_DEBUG);
                        break;
                case 'q':
                        vbd_log_set_level(VBD_LOG_WARNING);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("vbdd %s\n", VBD_VERSION);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind != argc || !have_domid || !have_devid || !spec) {
                fprintf(stderr, "vbdd: --domid, --devid and --image are required (see --help)\n");
                return 2;
        }
        snprintf(id, sizeof(id), "vbd[%" PRIu32 "/%" PRIu32 "]", cfg.domid, cfg.devid);
        vbd_log_set_id(id);
        signal(SIGPIPE, SIG_IGN);

        loop = ev_default_loop(EVFLAG_AUTO);
        if (!loop) {
                vbd_err("cannot create the event loop");
                return 1;
        }
        aio = vbd_aio_new(loop, AIO_DEPTH);
        if (!aio) {
                vbd_log_errno(errno, "cannot set up Linux AIO: %m");
                goto out;
        }
        img = vbd_image_open(spec, cfg.readonly, aio, &err);
        if (!img) {
                vbd_err("cannot open image '%s': %s", spec, err.msg);
                goto out;
        }
        xen = vbd_xen_open();
        if (!xen)
                goto out;
        the_xenbus = vbd_xenbus_new(loop, xen, img, &cfg);
        if (!the_xenbus)
                goto out;

        ev_signal_init(&sigterm, signal_cb, SIGTERM);
        ev_signal_init(&sigint, signal_cb, SIGINT);
        ev_signal_start(loop, &sigterm);
        ev_signal_start(loop, &sigint);
        ev_unref(loop); /* the signal watchers alone don't keep the loop alive */
        ev_unref(loop);

        ev_run(loop, 0);
        ret = vbd_xenbus_finished(the_xenbus) ? vbd_xenbus_exit_code(the_xenbus) : 1;

        ev_ref(loop);
        ev_ref(loop);
        ev_signal_stop(loop, &sigterm);
        ev_signal_stop(loop, &sigint);
out:
        vbd_xenbus_free(the_xenbus);
        vbd_xen_close(xen);
        vbd_image_close(img);
        vbd_aio_free(aio);
        return ret;
}
