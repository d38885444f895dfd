/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vbdd's command line: --help and the options, checked. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "util/parse.h"
#include "daemon.h"
#include "image.h"
#include "vbd/log.h"

void vbd_daemon_usage(FILE *f)
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
               "  --max-queues N      blkif rings (multi-queue) offered to the frontend, 1..16\n"
               "                      (default: max-queues in the config file, else\n"
               "                      min(4, online CPUs))\n"
               "  --ctl-dir DIR       directory of the control socket vbdd-D-N.sock\n"
               "                      (default: $VBD_RUNTIME_DIR, else runtime-dir in the\n"
               "                      config file, else " VBD_RUNTIME_DIR_DEFAULT ";\n"
               "                      vbdd-sim: $VBD_SIM_DIR)\n"
               "  --config FILE       config file (default " VBD_CONFIG_PATH ")\n"
               "  --nbd ENDPOINT      also export the image over NBD: unix:PATH (mode 0600)\n"
               "                      or tcp:ADDR:PORT; without TLS, ADDR must be a loopback\n"
               "                      address unless --nbd-insecure\n"
               "  --nbd-writable      the NBD export takes writes (default: read-only)\n"
               "  --nbd-name NAME     the NBD export name (default: \"\", the default export)\n"
               "  --nbd-tls-certificates DIR\n"
               "                      require TLS, X.509: DIR holds server-cert.pem,\n"
               "                      server-key.pem and ca-cert.pem (as nbdkit, qemu-nbd)\n"
               "  --nbd-tls-psk FILE  require TLS, pre-shared keys: FILE as psktool writes it\n"
               "                      (USERNAME:HEXKEY lines)\n"
               "  --nbd-tls-verify-peer\n"
               "                      with certificates: clients need one signed by ca-cert.pem\n"
               "  --nbd-insecure      allow a TCP export without TLS on any address (a trusted\n"
               "                      network only: anyone reaching it reads the disk)\n"
               "                      The --nbd-tls-* and --nbd-insecure options also apply to\n"
               "                      the exports of jobs (vbd-ctl snapshot --start)\n"
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

int vbd_daemon_parse_args(int argc, char **argv, struct vbd_daemon_args *a)
{
        static const struct option opts[] = {
            {"domid", required_argument, NULL, 'd'},
            {"devid", required_argument, NULL, 'n'},
            {"instance", required_argument, NULL, 'I'},
            {"image", required_argument, NULL, 'i'},
            {"mode", required_argument, NULL, 'm'},
            {"type", required_argument, NULL, 't'},
            {"backend-domid", required_argument, NULL, 'b'},
            {"max-queues", required_argument, NULL, 'Q'},
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
            {"nbd-tls-certificates", required_argument, NULL, 'T'},
            {"nbd-tls-psk", required_argument, NULL, 'P'},
            {"nbd-tls-verify-peer", no_argument, NULL, 'Y'},
            {"nbd-insecure", no_argument, NULL, 'U'},
            {},
        };
        int c;

        memset(a, 0, sizeof(*a));
        a->level = -1;
        while ((c = getopt_long(argc, argv, "D:vqhV", opts, NULL)) != -1) {
                switch (c) {
                case 'd':
                        if (vbd_parse_u32(optarg, 0x7fef, &a->cfg.domid) < 0) {
                                fprintf(stderr, "vbdd: bad --domid '%s'\n", optarg);
                                return 2;
                        }
                        a->have_domid = true;
                        break;
                case 'n':
                        if (vbd_parse_u32(optarg, UINT32_MAX, &a->cfg.devid) < 0) {
                                fprintf(stderr, "vbdd: bad --devid '%s'\n", optarg);
                                return 2;
                        }
                        a->have_devid = true;
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
                        if (vbd_parse_u32(d, 0x7fef, &a->cfg.domid) < 0 ||
                            vbd_parse_u32(dash + 1, UINT32_MAX, &a->cfg.devid) < 0) {
                                fprintf(stderr, "vbdd: bad --instance '%s'\n", optarg);
                                return 2;
                        }
                        a->have_domid = a->have_devid = true;
                        break;
                }
                case 'b':
                        if (vbd_parse_u32(optarg, 0x7fef, &a->cfg.backend_domid) < 0) {
                                fprintf(stderr, "vbdd: bad --backend-domid '%s'\n", optarg);
                                return 2;
                        }
                        a->have_bdomid = true;
                        break;
                case 'Q':
                        if (vbd_parse_u32(optarg, VBD_CONFIG_MAX_QUEUES, &a->max_queues) < 0 ||
                            a->max_queues == 0) {
                                fprintf(stderr, "vbdd: --max-queues must be 1..%d\n",
                                        VBD_CONFIG_MAX_QUEUES);
                                return 2;
                        }
                        break;
                case 'i':
                        a->spec = optarg;
                        break;
                case 'm':
                        if (strcmp(optarg, "r") && strcmp(optarg, "w")) {
                                fprintf(stderr, "vbdd: --mode must be r or w\n");
                                return 2;
                        }
                        a->cfg.readonly = optarg[0] == 'r';
                        a->mode_given = true;
                        break;
                case 't':
                        if (!*optarg || strchr(optarg, '/') || strlen(optarg) > 32) {
                                fprintf(stderr, "vbdd: bad --type '%s'\n", optarg);
                                return 2;
                        }
                        a->type = optarg;
                        break;
                case 'C':
                        if (optarg[0] != '/') {
                                fprintf(stderr, "vbdd: --ctl-dir must be an absolute path\n");
                                return 2;
                        }
                        a->ctl_dir = optarg;
                        break;
                case 'c':
                        a->config_path = optarg;
                        break;
                case 'D':
                        if (vbd_log_enable(optarg) < 0) {
                                fprintf(stderr, "vbdd: bad --debug '%s'\n", optarg);
                                return 2;
                        }
                        a->debug = optarg;
                        break;
                case 'v':
                        a->level = VBD_LOG_DEBUG;
                        break;
                case 'q':
                        a->level = VBD_LOG_WARNING;
                        break;
                case 'h':
                        vbd_daemon_usage(stdout);
                        return 0;
                case 'V':
                        printf("vbdd %s\n", VBD_VERSION);
                        return 0;
                case 'N':
                        a->nbd.endpoint = optarg;
                        break;
                case 'W':
                        a->nbd.writable = true;
                        break;
                case 'E':
                        if (strlen(optarg) > VBD_NBD_NAME_MAX) {
                                fprintf(stderr, "vbdd: --nbd-name longer than %d bytes\n",
                                        VBD_NBD_NAME_MAX);
                                return 2;
                        }
                        a->nbd.name = optarg;
                        break;
                case 'X':
                        a->export_only = true;
                        break;
                case 'T':
                        a->nbd.tls_certificates = optarg;
                        break;
                case 'P':
                        a->nbd.tls_psk = optarg;
                        break;
                case 'Y':
                        a->nbd.tls_verify_peer = true;
                        break;
                case 'U':
                        a->nbd.insecure = true;
                        break;
                default:
                        vbd_daemon_usage(stderr);
                        return 2;
                }
        }
        if ((a->nbd.writable || a->nbd.name) && !a->nbd.endpoint) {
                fprintf(stderr, "vbdd: --nbd-writable and --nbd-name need --nbd\n");
                return 2;
        }
        if (a->nbd.tls_certificates && a->nbd.tls_psk) {
                fprintf(stderr, "vbdd: --nbd-tls-certificates or --nbd-tls-psk, not both\n");
                return 2;
        }
        if (a->nbd.tls_verify_peer && !a->nbd.tls_certificates) {
                fprintf(stderr, "vbdd: --nbd-tls-verify-peer needs --nbd-tls-certificates\n");
                return 2;
        }
        if (a->nbd.endpoint) {
                struct vbd_nbd_addr addr;

                if (vbd_nbd_parse_endpoint(a->nbd.endpoint, &addr) < 0) {
                        fprintf(stderr, "vbdd: bad --nbd '%s' (unix:PATH or tcp:ADDR:PORT)\n",
                                a->nbd.endpoint);
                        return 2;
                }
        }
        if (a->export_only) {
                if (optind != argc || !a->spec || !a->nbd.endpoint ||
                    a->have_domid != a->have_devid) {
                        fprintf(stderr, "vbdd: --export-only needs --image and --nbd (and "
                                        "--domid with --devid, or neither)\n");
                        return 2;
                }
                if (a->mode_given) {
                        fprintf(stderr, "vbdd: --export-only is read-only unless "
                                        "--nbd-writable; --mode does not apply\n");
                        return 2;
                }
                a->cfg.readonly = !a->nbd.writable;
        } else if (optind != argc || !a->have_domid || !a->have_devid) {
                fprintf(stderr, "vbdd: --domid and --devid (or --instance) are required "
                                "(see --help)\n");
                return 2;
        }
        return -1;
}
