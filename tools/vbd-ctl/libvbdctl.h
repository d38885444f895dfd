/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libvbdctl: the client side of the vbdd control socket (see src/control.h for
 * the protocol), shared by the vbd-ctl verbs.  One connection per call.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "vbd/driver.h" /* struct vbd_err */

/* vbd-ctl exit codes, documented in vbd-ctl(8): scripts rely on them. */
enum {
        VBDCTL_EXIT_OK = 0,
        VBDCTL_EXIT_FAILED = 1,    /* the daemon (or the host) refused or failed the command */
        VBDCTL_EXIT_USAGE = 2,     /* bad command line */
        VBDCTL_EXIT_NOT_FOUND = 3, /* no daemon serves that VBD (no socket, or a stale one) */
        VBDCTL_EXIT_PERM = 4,      /* permission denied (not root) */
        VBDCTL_EXIT_TIMEOUT = 5,   /* no answer in time */
        VBDCTL_EXIT_PROTO = 6,     /* connection lost or a reply that makes no sense */
};

#define VBDCTL_REPLY_MAX (16u << 20)

/* <dir>/vbdd-<domid>-<devid>.sock; -ENAMETOOLONG. */
int vbdctl_socket_path(const char *dir, uint32_t domid, uint32_t devid, char *buf, size_t size);

/* Connect; -errno (ENOENT no socket, ECONNREFUSED stale socket, EACCES). */
int vbdctl_connect(const char *path);

/*
 * Send {"v":1,"cmd":cmd,"args":args} (args stolen, may be NULL) and read the
 * reply line, waiting at most timeout_ms (< 0: forever).
 *   0: ok, *ret_result holds the "result" object (caller decrefs);
 *   1: the daemon answered an error: err->code (-errno) and err->msg;
 *  -errno: transport trouble (-ETIMEDOUT, -EPROTO bad reply, -ECONNRESET),
 *          err->msg says what.
 */
int vbdctl_call_fd(int fd, const char *cmd, json_t *args, int timeout_ms, json_t **ret_result,
                   struct vbd_err *err);

/* Connect to path and call.  Connection errors come back as -errno. */
int vbdctl_call(const char *path, const char *cmd, json_t *args, int timeout_ms,
                json_t **ret_result, struct vbd_err *err);

/* Wait until the peer closes the connection: 0, or -ETIMEDOUT. */
int vbdctl_wait_eof(int fd, int timeout_ms);

/* Sockets in dir, sorted by domid then devid. */
struct vbdctl_entry {
        uint32_t domid, devid;
        char path[108];
};
int vbdctl_scan(const char *dir, struct vbdctl_entry **ret, size_t *ret_n);

/* The exit code for a -errno (transport or daemon error). */
int vbdctl_exit_code(int err);
