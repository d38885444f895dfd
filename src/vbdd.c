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
#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#include "util/parse.h"
#include "aio.h"
#include "config.h" /* VBD_VERSION, via version.h */
#include "ctl.h"
#include "image.h"
#include "nbd-export.h"
#include "vbd/log.h"
#include "xen.h"
#include "xenbus.h"

static void usage(FILE *f)
{
        fprintf(
            f, "Usage: vbdd --domid D --devid N [--image SPEC] [OPTIONS]\n"
               "       vbdd --instance D-N [OPTIONS]\n"
               "       vbdd --export-only --image SPEC --nbd ENDPOINT [OPTIONS]\n"
               "Serve one Xen virtual block device (blkif backend) from an image.\n"
               "\n"
               "  --domid D           frontend (guest) domain id\n"
               "  --devid N           virtual device number (e.g. 51712 for xvda)\n"
               "  --instance D-N      the same as --domid D --devid N (vbdd@D-N.service)\n"
               "  --image SPEC        driver:arg[,key=value...], e.g. raw:/srv/d.img, null:1G;\n"
               "                      default: the backend's params node (libxl's aio:PATH\n"
               "                      and bare /paths are served with raw)\n"
               "  --mode r|w          read-only or read-write (default: the backend's mode\n"
               "                      node with --image absent, else w)\n"
               "  --type NAME         backend directory type (default vbd3)\n"
               "  --backend-domid D   domain running this backend (default 0)\n"
               "  --ctl-dir DIR       directory of the control socket vbdd-D-N.sock\n"
               "                      (default: $VBD_RUNTIME_DIR, else runtime-dir in the\n"
               "                      config file, else " VBD_RUNTIME_DIR_DEFAULT ";\n"
               "                      vbdd-sim: $VBD_SIM_DIR)\n"
               "  --config FILE       config file (default " VBD_CONFIG_PATH ")\n"
               "  --nbd ENDPOINT      also export the image over NBD: unix:PATH (mode 0600)\n"
               "                      or tcp:ADDR:PORT (no TLS: trusted networks only)\n"
               "  --nbd-writable      the NBD export takes writes (default: read-only)\n"
               "  --nbd-name NAME     the NBD export name (default: \"\", the default export)\n"
               "  --export-only       no guest, no Xen: only the NBD export of --image (a stopped\n"
               "                      guest's disk, a migration target); read-only unless\n"
               "                      --nbd-writable; --domid/--devid optional (control socket)\n"
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

static struct vbd_xenbus *the_xenbus;
static struct vbd_nbd *the_nbd;
static bool nbd_stopped;

static void nbd_stopped_cb(void *opaque)
{
        nbd_stopped = true;
        ev_break(opaque, EVBREAK_ALL);
}

/* Export-only: drain the NBD clients, then leave the loop (also vbd-ctl detach). */
static void export_stop(void *opaque)
{
        vbd_nbd_shutdown(the_nbd, nbd_stopped_cb, opaque);
}

static void image_drained(void *opaque)
{
        *(bool *)opaque = true;
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
        vbd_info("signal %d: stopping", w->signum);
        if (the_xenbus)
                vbd_xenbus_shutdown(the_xenbus);
        else if (the_nbd)
                export_stop(loop);
        else
                ev_break(loop, EVBREAK_ALL);
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

int main(int argc, char **argv)
{
        static const struct option opts[] = {
            {"domid", required_argument, NULL, 'd'},
            {"devid", required_argument, NULL, 'n'},
            {"instance", required_argument, NULL, 'I'},
            {"image", required_argument, NULL, 'i'},
            {"mode", required_argument, NULL, 'm'},
            {"type", required_argument, NULL, 't'},
            {"backend-domid", required_argument, NULL, 'b'},
            {"ctl-dir", required_argument, NULL, 'C'},
            {"config", required_argument, NULL, 'c'},
            {"debug", required_argument, NULL, 'D'},
            {"verbose", no_argument, NULL, 'v'},
            {"quiet", no_argument, NULL, 'q'},
            {"help", no_argument, NULL, 'h'},
            {"version", no_argument, NULL, 'V'},
            {"nbd", required_argument, NULL, 'N'},
            {"nbd-writable", no_argument, NULL, 'W'},
            {"nbd-name", required_argument, NULL, 'E'},
            {"export-only", no_argument, NULL, 'X'},
            {},
        };
        struct vbd_xenbus_config cfg = {0};
        struct vbd_config conf;
        const char *spec = NULL, *type = NULL, *ctl_dir = NULL, *config_path = NULL;
        const char *debug = NULL;
        char spec_buf[VBD_IMAGE_SPEC_MAX + 1];
        bool have_domid = false, have_devid = false, have_bdomid = false, mode_given = false;
        int level = -1;
        struct ev_loop *loop;
        struct vbd_aio *aio = NULL;
        struct vbd_image *img = NULL;
        struct vbd_xen *xen = NULL;
        struct vbd_ctl *ctl = NULL;
        struct vbd_ctl_config ctl_cfg = {0};
        struct vbd_err err = {0};
        struct vbd_nbd_config nbd_cfg = {0};
        bool export_only = false;
        ev_signal sigterm, sigint;
        char id[64];
        int c, ret = 1;

        while ((c = getopt_long(argc, argv, "D:vqhV", opts, NULL)) != -1) {
                switch (c) {
                case 'd':
                        if (vbd_parse_u32(optarg, 0x7fef, &cfg.domid) < 0) {
                                fprintf(stderr, "vbdd: bad --domid '%s'\n", optarg);
                                return 2;
                        }
                        have_domid = true;
                        break;
                case 'n':
                        if (vbd_parse_u32(optarg, UINT32_MAX, &cfg.devid) < 0) {
                                fprintf(stderr, "vbdd: bad --devid '%s'\n", optarg);
                                return 2;
                        }
                        have_devid = true;
                        break;
                case 'I': {
                        char d[16];
                        const char *dash = strchr(optarg, '-');

                        if (!dash || (size_t)(dash - optarg) >= sizeof(d)) {
                                fprintf(stderr, "vbdd: --instance must be DOMID-DEVID\n");
                                return 2;
                        }
                        memcpy(d, optarg, (size_t)(dash - optarg));
                        d[dash - optarg] = '\0';
                        if (vbd_parse_u32(d, 0x7fef, &cfg.domid) < 0 ||
                            vbd_parse_u32(dash + 1, UINT32_MAX, &cfg.devid) < 0) {
                                fprintf(stderr, "vbdd: bad --instance '%s'\n", optarg);
                                return 2;
                        }
                        have_domid = have_devid = true;
                        break;
                }
                case 'b':
                        if (vbd_parse_u32(optarg, 0x7fef, &cfg.backend_domid) < 0) {
                                fprintf(stderr, "vbdd: bad --backend-domid '%s'\n", optarg);
                                return 2;
                        }
                        have_bdomid = true;
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
                        mode_given = true;
                        break;
                case 't':
                        if (!*optarg || strchr(optarg, '/') || strlen(optarg) > 32) {
                                fprintf(stderr, "vbdd: bad --type '%s'\n", optarg);
                                return 2;
                        }
                        type = optarg;
                        break;
                case 'C':
                        if (optarg[0] != '/') {
                                fprintf(stderr, "vbdd: --ctl-dir must be an absolute path\n");
                                return 2;
                        }
                        ctl_dir = optarg;
                        break;
                case 'c':
                        config_path = optarg;
                        break;
                case 'D':
                        if (vbd_log_enable(optarg) < 0) {
                                fprintf(stderr, "vbdd: bad --debug '%s'\n", optarg);
                                return 2;
                        }
                        debug = optarg;
                        break;
                case 'v':
                        level = VBD_LOG_DEBUG;
                        break;
                case 'q':
                        level = VBD_LOG_WARNING;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("vbdd %s\n", VBD_VERSION);
                        return 0;
                case 'N':
                        nbd_cfg.endpoint = optarg;
                        break;
                case 'W':
                        nbd_cfg.writable = true;
                        break;
                case 'E':
                        if (strlen(optarg) > VBD_NBD_NAME_MAX) {
                                fprintf(stderr, "vbdd: --nbd-name longer than %d bytes\n",
                                        VBD_NBD_NAME_MAX);
                                return 2;
                        }
                        nbd_cfg.name = optarg;
                        break;
                case 'X':
                        export_only = true;
                        break;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if ((nbd_cfg.writable || nbd_cfg.name) && !nbd_cfg.endpoint) {
                fprintf(stderr, "vbdd: --nbd-writable and --nbd-name need --nbd\n");
                return 2;
        }
        if (nbd_cfg.endpoint) {
                struct vbd_nbd_addr a;

                if (vbd_nbd_parse_endpoint(nbd_cfg.endpoint, &a) < 0) {
                        fprintf(stderr, "vbdd: bad --nbd '%s' (unix:PATH or tcp:ADDR:PORT)\n",
                                nbd_cfg.endpoint);
                        return 2;
                }
        }
        if (export_only) {
                if (optind != argc || !spec || !nbd_cfg.endpoint || have_domid != have_devid) {
                        fprintf(stderr, "vbdd: --export-only needs --image and --nbd (and "
                                        "--domid with --devid, or neither)\n");
                        return 2;
                }
                if (mode_given) {
                        fprintf(stderr, "vbdd: --export-only is read-only unless "
                                        "--nbd-writable; --mode does not apply\n");
                        return 2;
                }
                cfg.readonly = !nbd_cfg.writable;
        } else if (optind != argc || !have_domid || !have_devid) {
                fprintf(stderr, "vbdd: --domid and --devid (or --instance) are required "
                                "(see --help)\n");
                return 2;
        }
        if (export_only && !have_domid)
                snprintf(id, sizeof(id), "vbd[export]");
        else
                snprintf(id, sizeof(id), "vbd[%" PRIu32 "/%" PRIu32 "]", cfg.domid, cfg.devid);
        vbd_log_set_id(id);

        /* The config file gives the defaults; options given above win. */
        vbd_config_init(&conf);
        if (vbd_config_load(&conf, config_path ? config_path : VBD_CONFIG_PATH, config_path != NULL,
                            &err) < 0) {
                vbd_err("config: %s", err.msg);
                return 1;
        }
        vbd_log_set_level(level >= 0 ? (enum vbd_log_level)level
                                     : (enum vbd_log_level)conf.log_level);
        if (!debug && conf.debug[0] && vbd_log_enable(conf.debug) < 0)
                vbd_warn("config: debug topics '%s' ignored", conf.debug);
        cfg.type = type ? type : conf.backend_type;
        if (!have_bdomid)
                cfg.backend_domid = conf.backend_domid;
        if (!ctl_dir)
                ctl_dir = getenv("VBD_RUNTIME_DIR");
        if ((!ctl_dir || !*ctl_dir) && getenv("VBD_SIM_DIR") && *getenv("VBD_SIM_DIR")) {
                /* vbdd-sim: each simulation is its own runtime dir. */
                ctl_dir = getenv("VBD_SIM_DIR");
        }
        if (!ctl_dir || !*ctl_dir)
                ctl_dir = conf.runtime_dir;
        signal(SIGPIPE, SIG_IGN);

        loop = ev_default_loop(EVFLAG_AUTO);
        if (!loop) {
                vbd_err("cannot create the event loop");
                return 1;
        }
        /* The control socket first: a second daemon for this VBD stops here. */
        ctl_cfg.dir = ctl_dir;
        ctl_cfg.domid = cfg.domid;
        ctl_cfg.devid = cfg.devid;
        ctl_cfg.max_clients = conf.ctl_max_clients;
        ctl_cfg.log_level = level >= 0 ? level : conf.log_level;
        if (!export_only || have_domid) {
                ctl = vbd_ctl_new(loop, &ctl_cfg);
                if (!ctl && (errno == EADDRINUSE || errno == EEXIST))
                        goto out;
                if (!ctl)
                        vbd_warn("running without a control socket");
        }
        aio = vbd_aio_new(loop, conf.aio_depth);
        if (!aio) {
                vbd_log_errno(errno, "cannot set up Linux AIO: %m");
                goto out;
        }
        if (export_only)
                goto export_only;
        xen = vbd_xen_open();
        if (!xen)
                goto out;
        if (!spec) {
                if (spec_from_xenstore(xen, &cfg, mode_given, &cfg.readonly, spec_buf,
                                       sizeof(spec_buf)) < 0)
                        goto out;
                spec = spec_buf;
        }
        img = vbd_image_open(spec, cfg.readonly, aio, loop, &err);
        if (!img) {
                vbd_err("cannot open image '%s': %s", spec, err.msg);
                goto out;
        }
        the_xenbus = vbd_xenbus_new(loop, xen, img, &cfg);
        if (!the_xenbus)
                goto out;
        if (nbd_cfg.endpoint) {
                the_nbd = vbd_nbd_new(loop, img, &nbd_cfg);
                if (!the_nbd)
                        goto out;
        }
        if (ctl) {
                vbd_ctl_start(ctl, the_xenbus, &img, aio);
                vbd_ctl_set_nbd(ctl, the_nbd, NULL, NULL);
        }

        ev_signal_init(&sigterm, signal_cb, SIGTERM);
        ev_signal_init(&sigint, signal_cb, SIGINT);
        ev_signal_start(loop, &sigterm);
        ev_signal_start(loop, &sigint);
        ev_unref(loop); /* the signal watchers alone don't keep the loop alive */
        ev_unref(loop);

        notify("READY=1\nSTATUS=serving");
        ev_run(loop, 0);
        notify("STOPPING=1");
        ret = vbd_xenbus_finished(the_xenbus) ? vbd_xenbus_exit_code(the_xenbus) : 1;
        if (the_nbd) {
                /* The guest is gone: answer the NBD clients' requests in flight, then go. */
                vbd_nbd_shutdown(the_nbd, nbd_stopped_cb, loop);
                while (!nbd_stopped)
                        ev_run(loop, 0);
        }

stop_signals:
        ev_ref(loop);
        ev_ref(loop);
        ev_signal_stop(loop, &sigterm);
        ev_signal_stop(loop, &sigint);
out:
        vbd_ctl_free(ctl);
        vbd_nbd_free(the_nbd);
        vbd_xenbus_free(the_xenbus);
        vbd_xen_close(xen);
        if (img) { /* let the stack's background work (a mirror's) finish first */
                bool drained = false;

                vbd_image_drain(img, image_drained, &drained);
                while (!drained)
                        ev_run(loop, EVRUN_ONCE);
        }
        vbd_image_close(img);
        vbd_aio_free(aio);
        return ret;

export_only:
        /* No xenstore, no grant tables: nothing of Xen is opened. */
        img = vbd_image_open(spec, cfg.readonly, aio, loop, &err);
        if (!img) {
                vbd_err("cannot open image '%s': %s", spec, err.msg);
                goto out;
        }
        nbd_cfg.keep_loop_alive = true;
        the_nbd = vbd_nbd_new(loop, img, &nbd_cfg);
        if (!the_nbd)
                goto out;
        if (ctl) {
                vbd_ctl_start(ctl, NULL, &img, aio);
                vbd_ctl_set_nbd(ctl, the_nbd, export_stop, loop);
        }
        ev_signal_init(&sigterm, signal_cb, SIGTERM);
        ev_signal_init(&sigint, signal_cb, SIGINT);
        ev_signal_start(loop, &sigterm);
        ev_signal_start(loop, &sigint);
        ev_unref(loop);
        ev_unref(loop);
        notify("READY=1\nSTATUS=exporting");
        ev_run(loop, 0);
        notify("STOPPING=1");
        ret = nbd_stopped ? 0 : 1;
        goto stop_signals;
}
