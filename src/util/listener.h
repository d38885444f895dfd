/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A listening socket on a libev loop, for the control socket and the NBD
 * export: a unix socket at a path (created with a mode, a stale socket
 * replaced, a live one refused, removed on free) or a TCP host:port.
 * Accepted sockets are CLOEXEC and NONBLOCK, come with the peer's
 * credentials (unix sockets: SO_PEERCRED) and are counted against a client
 * limit; over the limit, or from a peer refused by owner_only, the accept
 * callback is not called: the refuse hook may write a last line, then the
 * listener closes the socket.
 *
 * Errors are returned (-errno, or NULL + errno), never logged: the caller
 * knows what the socket is for.
 *
 * The control socket would use it as
 *     struct vbd_listener_config lc = {
 *             .path = c->path, .make_dir = true, .owner_only = true,
 *             .max_clients = cfg->max_clients, .backlog = 16,
 *             .accept = ctl_accept, .refuse = ctl_refuse, .opaque = c,
 *     };
 *     c->listener = vbd_listener_new(loop, &lc);    (in vbd_ctl_new)
 *     vbd_listener_start(c->listener);              (in vbd_ctl_start)
 * with ctl_refuse writing the JSON error line for the reason (-EPERM:
 * peer.has_cred false "cannot identify the peer", else "permission denied:
 * uid U is not root"; -EMFILE: "too many control connections"), and
 * vbd_listener_client_gone() from client_close().
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

struct ev_loop;
struct vbd_listener;

struct vbd_listener_peer {
        bool has_cred; /* pid, uid, gid are valid (unix sockets) */
        pid_t pid;
        uid_t uid;
        gid_t gid;
        char name[80]; /* for log lines: "pid P uid U", "ADDR:PORT", "[ADDR6]:PORT" */
};

struct vbd_listener_config {
        /* unix: path (must fit in sun_path) */
        const char *path;
        mode_t mode;     /* of the socket file; 0: 0600 */
        bool make_dir;   /* create path's directory (mode 0700) when missing */
        bool owner_only; /* refuse (-EPERM) peers other than root and our euid, or unknown */
        /* tcp, when path is NULL: a numeric address or a host name; port */
        const char *host; /* NULL: every local address */
        unsigned short port;

        int backlog;          /* 0: 64 */
        unsigned max_clients; /* 0: no limit */
        bool keep_loop_alive; /* while started, the listener keeps ev_run() going */
        /*
         * A new connection, fd ours now.  Return 0 to keep it (it counts
         * against max_clients until vbd_listener_client_gone()), or -errno
         * to have the listener close it uncounted.  It may stop the
         * listener, not free it.
         */
        int (*accept)(void *opaque, int fd, const struct vbd_listener_peer *peer);
        /* Optional: fd refused (-EMFILE: over max_clients; -EPERM: owner_only). */
        void (*refuse)(void *opaque, int fd, int reason, const struct vbd_listener_peer *peer);
        /* Optional: accept4() failed with -err (not EAGAIN, EINTR, ECONNABORTED). */
        void (*error)(void *opaque, int err);
        void *opaque;
};

/*
 * Bind and listen (not watched yet: vbd_listener_start).  NULL + errno:
 * EADDRINUSE (a live server on the unix path), EEXIST (path is not a
 * socket), ENOTDIR, EADDRNOTAVAIL (host not resolved), or what
 * socket/bind/listen said.
 */
struct vbd_listener *vbd_listener_new(struct ev_loop *loop, const struct vbd_listener_config *cfg);

/* Watch for connections / stop watching (the socket stays bound). */
void vbd_listener_start(struct vbd_listener *l);
void vbd_listener_stop(struct vbd_listener *l);

/* A client accepted by the callback has gone: one fewer against the limit. */
void vbd_listener_client_gone(struct vbd_listener *l);
unsigned vbd_listener_clients(const struct vbd_listener *l);

/* The listening descriptor. */
int vbd_listener_fd(const struct vbd_listener *l);

/* Stop, close, and remove the unix socket if it is still ours.  NULL-safe. */
void vbd_listener_free(struct vbd_listener *l);
