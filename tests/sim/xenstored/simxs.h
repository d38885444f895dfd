/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A small xenstore server speaking the real wire protocol (xen/io/xs_wire.h)
 * on a unix socket, so that clients use the real libxenstore with
 * XENSTORED_PATH=<socket>.
 *
 * Connections start as domain 0 (privileged), like xenstored's socket.
 * Simulation extensions, sent with xs_control_command():
 *   "sim-domid" "<N>"          this connection becomes domain N, unprivileged,
 *                              for good (a simulated guest's connection);
 *   "sim-release-domain" "<N>" (domain 0 only) fire @releaseDomain watches,
 *                              as xenstored does when a domain dies.
 */
#pragma once

struct simxs;

/* Listen on socket_path and serve from a thread of this process.  NULL + errno. */
struct simxs *simxs_start(const char *socket_path);
void simxs_stop(struct simxs *s); /* NULL-safe; closes all connections, unlinks the socket */
