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
 * (payload: command\0 then each argument, the last nul optional.)
 *
 * Behaviour, as xenstored unless said otherwise (additions to this header):
 * - "sim-domid" also fires @introduceDomain; XS_RELEASE "<N>" from domain 0
 *   acts as "sim-release-domain"; XS_INTRODUCE/RESUME/SET_TARGET answer
 *   ENOSYS (domain 0) or EACCES.  IS_DOMAIN_INTRODUCED: "T" for 0 and for
 *   domains with a live "sim-domid" connection not released since.
 * - Watches fire on registration, then for changes of the node or below it;
 *   rm also fires watches below the removed node (with the watch's path).
 *   Only watchers that may read the node get the event (checked against
 *   the new permissions for SET_PERMS, the old node for rm); @-watches go
 *   to everyone.  Relative watches get relative paths.  Only
 *   "@releaseDomain" and "@introduceDomain" are accepted as special paths.
 * - Transactions see a private copy of the store; commit fails with EAGAIN
 *   (and ends the transaction) if any node the transaction read, wrote,
 *   created, removed, listed or found missing changed since (per-node
 *   generations; creating or removing a child changes the parent).
 * - A header announcing more than XENSTORE_PAYLOAD_MAX gets an E2BIG error,
 *   then the connection is closed.  Malformed requests get EINVAL and the
 *   connection stays.  A client whose queued output exceeds SIMXS_OUT_HARD
 *   (watch events it never reads) is disconnected; other clients are not
 *   affected.
 */
#pragma once

#include <stdio.h>

struct simxs;

/*
 * Limits (additions to the original header).  "domU" means a connection that
 * became unprivileged with "sim-domid"; domain 0 connections get the larger
 * values.  Errors are those of xenstored.
 */
#define SIMXS_MAX_CONNS        256        /* further connections are closed at once */
#define SIMXS_OUT_SOFT         (64 << 10) /* queued output above this: stop reading */
#define SIMXS_OUT_HARD         (1 << 20)  /* queued output above this: disconnect */
#define SIMXS_WATCHES_DOMU     128        /* per connection, else E2BIG */
#define SIMXS_WATCHES_DOM0     1024
#define SIMXS_TX_DOMU          10 /* open transactions per connection, else ENOSPC */
#define SIMXS_TX_DOM0          64
#define SIMXS_TX_NODES         1024 /* nodes touched by one transaction, else ENOSPC */
#define SIMXS_NODES_PER_DOMAIN 1000 /* nodes a domU may own, else ENOSPC */
#define SIMXS_VALUE_MAX_DOMU   2048 /* bytes per value written by a domU, else ENOSPC */

/* Listen on socket_path and serve from a thread of this process.  NULL + errno. */
struct simxs *simxs_start(const char *socket_path);
/* Addition: as simxs_start(), and if log is not NULL, one line per request to it. */
struct simxs *simxs_start_log(const char *socket_path, FILE *log);
void simxs_stop(struct simxs *s); /* NULL-safe; closes all connections, unlinks the socket */
