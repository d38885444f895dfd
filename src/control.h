/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The daemon's control socket: <runtime-dir>/vbdd-<domid>-<devid>.sock, a
 * unix stream socket, mode 0600, served in the VBD's libev loop.
 *
 * Protocol (version VBD_CTL_PROTOCOL): one JSON object per line each way.
 *   request:  {"v": 1, "id": ANY, "cmd": "NAME", "args": {...}}
 *             ("v", "id" and "args" optional; "id" is echoed back)
 *   reply:    {"v": 1, "id": ANY, "ok": true, "result": {...}}
 *          or {"v": 1, "id": ANY, "ok": false,
 *              "error": {"errno": 16, "code": "EBUSY", "message": "..."}}
 * One reply per request, in order.  Commands: version, info, stats, pause,
 * resume, reopen, detach, log-level, migrate-start, migrate-status,
 * migrate-cutover, migrate-abort (the table in control-cmds.c); see
 * vbd-ctl(8) for their fields.  pause, reopen, migrate-start and
 * migrate-cutover may answer later (after a drain).
 *
 * Peers are checked with SO_PEERCRED: uid 0, or the daemon's own uid (so
 * that an unprivileged test or developer can run vbdd and drive it), else
 * one error line (EPERM) and the connection is closed.
 *
 * Limits: a request line is at most VBD_CTL_LINE_MAX bytes (longer lines
 * get an E2BIG reply and are skipped), at most max_clients connections
 * (more are answered EMFILE and closed), at most VBD_CTL_OUT_MAX bytes of
 * unread replies per client (then the client is dropped), and a client
 * idle for VBD_CTL_IDLE_S seconds with nothing pending is closed.
 */
#pragma once

#include <stdint.h>

#define VBD_CTL_PROTOCOL 1
#define VBD_CTL_LINE_MAX (64 * 1024)
#define VBD_CTL_OUT_MAX  (1024 * 1024)
#define VBD_CTL_IDLE_S   300

struct ev_loop;
struct vbd_device;
struct vbd_xenbus;
struct vbd_ctl;

struct vbd_ctl_config {
        const char *dir; /* runtime dir; created 0700 if missing */
        uint32_t domid, devid;
        unsigned max_clients;
        int log_level; /* the level the daemon runs at, reported by info */
};

/*
 * Bind the socket (before the VBD exists, so that a second daemon for the
 * same VBD fails early: -EADDRINUSE when a live daemon answers there; a
 * stale socket is replaced).  NULL + errno, logged.
 */
struct vbd_ctl *vbd_ctl_new(struct ev_loop *loop, const struct vbd_ctl_config *cfg);

/*
 * Start serving commands for this device.  Everything that pauses, swaps or
 * resumes the image goes through dev (device.h); xb is for the xenbus
 * figures of info and stats.
 */
void vbd_ctl_start(struct vbd_ctl *c, struct vbd_device *dev, struct vbd_xenbus *xb);

const char *vbd_ctl_socket_path(const struct vbd_ctl *c);

/*
 * The daemon's NBD export (NULL: none): "info" reports it, and "reopen" and
 * "migrate-start" are refused while it exists (the export cannot change
 * images yet: see control-cmds.c).  xb may be NULL in
 * vbd_ctl_start() for an export-only daemon: then only version, info,
 * log-level and detach are served, and detach calls stop(opaque).
 */
struct vbd_nbd;
void vbd_ctl_set_nbd(struct vbd_ctl *c, struct vbd_nbd *nbd, void (*stop)(void *opaque),
                     void *opaque);

/* Flush what can be flushed, close every client, unlink the socket.  NULL-safe. */
void vbd_ctl_free(struct vbd_ctl *c);
