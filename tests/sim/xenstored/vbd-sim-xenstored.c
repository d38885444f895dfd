/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-sim-xenstored --socket PATH [--log]
 *
 * The simulated xenstore server (simxs.h) as a foreground process: serves
 * PATH until SIGTERM or SIGINT, then removes it.  With --log, one line per
 * request on stderr.  Clients: XENSTORED_PATH=PATH xenstore-read ...
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simxs.h"

static void usage(FILE *f)
{
        fprintf(f, "usage: vbd-sim-xenstored --socket PATH [--log]\n"
                   "  -s, --socket PATH  unix socket to listen on (XENSTORED_PATH of clients)\n"
                   "  -l, --log          one line per request on stderr\n"
                   "  -h, --help         this text\n");
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
            {"socket", required_argument, NULL, 's'},
            {"log", no_argument, NULL, 'l'},
            {"help", no_argument, NULL, 'h'},
            {NULL, 0, NULL, 0},
        };
        const char *path = NULL;
        bool log = false;
        struct simxs *s;
        sigset_t set;
        int c, sig;

        while ((c = getopt_long(argc, argv, "s:lh", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        path = optarg;
                        break;
                case 'l':
                        log = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (!path || optind != argc) {
                usage(stderr);
                return 2;
        }

        /* Blocked before the server thread exists, so that sigwait() gets them. */
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);

        s = simxs_start_log(path, log ? stderr : NULL);
        if (!s) {
                fprintf(stderr, "vbd-sim-xenstored: cannot listen on %s: %s\n", path,
                        strerror(errno));
                return 1;
        }
        if (log)
                fprintf(stderr, "vbd-sim-xenstored: listening on %s\n", path);
        while (sigwait(&set, &sig) != 0)
                ;
        simxs_stop(s);
        return 0;
}
