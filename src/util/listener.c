/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <ev.h>
#include <libgen.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/listener.h"
#include "util/socket.h"

struct vbd_listener {
        struct ev_loop *loop;
        struct vbd_listener_config cfg;
        int fd;
        ev_io io;
        unsigned nr_clients;
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        dev_t dev; /* of the socket file we bound, to remove only ours */
        ino_t ino;
};

static void peer_describe(struct vbd_listener *l, int fd, struct vbd_listener_peer *p)
{
        *p = (struct vbd_listener_peer){0};
        if (l->path[0]) {
                struct ucred cred;
                socklen_t len = sizeof(cred);

                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
                        p->has_cred = true;
                        p->pid = cred.pid;
                        p->uid = cred.uid;
                        p->gid = cred.gid;
                        snprintf(p->name, sizeof(p->name), "pid %d uid %u", (int)cred.pid,
                                 (unsigned)cred.uid);
                } else {
                        snprintf(p->name, sizeof(p->name), "fd %d", fd);
                }
        } else {
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                char host[64] = "?", port[8] = "?";
                bool v6;

                if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
                        (void)getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
                                          sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
                v6 = strchr(host, ':') != NULL;
                snprintf(p->name, sizeof(p->name), "%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "",
                         port);
        }
}

static void refuse(struct vbd_listener *l, int fd, int reason, const struct vbd_listener_peer *p)
{
        if (l->cfg.refuse)
                l->cfg.refuse(l->cfg.opaque, fd, reason, p);
        close(fd);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd_listener *l = w->data;

        for (;;) {
                struct vbd_listener_peer peer;
                int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR &&
                            errno != ECONNABORTED && l->cfg.error)
                                l->cfg.error(l->cfg.opaque, -errno);
                        return;
                }
                peer_describe(l, fd, &peer);
                if (l->cfg.owner_only &&
                    (!peer.has_cred || (peer.uid != 0 && peer.uid != geteuid()))) {
                        refuse(l, fd, -EPERM, &peer);
                        continue;
                }
                if (l->cfg.max_clients && l->nr_clients >= l->cfg.max_clients) {
                        refuse(l, fd, -EMFILE, &peer);
                        continue;
                }
                if (l->cfg.accept(l->cfg.opaque, fd, &peer) < 0) {
                        close(fd);
                        continue;
                }
                l->nr_clients++;
                if (!ev_is_active(&l->io))
                        return; /* the callback stopped us */
        }
}

static int make_dir(const char *path)
{
        char buf[PATH_MAX];
        struct stat st;
        const char *dir;

        if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
                return -ENAMETOOLONG;
        dir = dirname(buf);
        if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        if (stat(dir, &st) < 0)
                return -errno;
        return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int listen_unix(struct vbd_listener *l, const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        mode_t mode = l->cfg.mode ? l->cfg.mode : 0600, old_mask;
        struct stat st;
        int r, fd;

        if (!path[0])
                return -EINVAL;
        if (strlen(path) >= sizeof(l->path))
                return -ENAMETOOLONG;
        memcpy(l->path, path, strlen(path) + 1);
        if (l->cfg.make_dir) {
                r = make_dir(l->path);
                if (r < 0)
                        return r;
        }
        r = vbd_unix_socket_alive(l->path);
        if (r > 0)
                return -EADDRINUSE;
        if (r < 0)
                return r;
        (void)unlink(l->path); /* stale */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        memcpy(sa.sun_path, l->path, strlen(l->path) + 1);
        old_mask = umask(0077); /* no window with a wider mode than asked */
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old_mask);
        if (r < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        if (chmod(l->path, mode) < 0 || lstat(l->path, &st) < 0 || listen(fd, l->cfg.backlog) < 0) {
                r = -errno;
                (void)unlink(l->path);
                close(fd);
                return r;
        }
        l->dev = st.st_dev;
        l->ino = st.st_ino;
        l->fd = fd;
        return 0;
}

static int listen_tcp(struct vbd_listener *l, const char *host)
{
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *res = NULL, *ai;
        char port[8];
        int r, fd = -1, one = 1;

        snprintf(port, sizeof(port), "%u", l->cfg.port);
        if (getaddrinfo(host, port, &hints, &res) != 0)
                return -EADDRNOTAVAIL;
        r = -EADDRNOTAVAIL;
        for (ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
                if (fd < 0) {
                        r = -errno;
                        continue;
                }
                (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, l->cfg.backlog) == 0)
                        break;
                r = -errno;
                close(fd);
                fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0)
                return r;
        l->fd = fd;
        return 0;
}

struct vbd_listener *vbd_listener_new(struct ev_loop *loop, const struct vbd_listener_config *cfg)
{
        struct vbd_listener *l;
        int r;

        if (!cfg->accept) {
                errno = EINVAL;
                return NULL;
        }
        l = calloc(1, sizeof(*l));
        if (!l)
                return NULL;
        l->loop = loop;
        l->cfg = *cfg;
        l->cfg.path = l->cfg.host = NULL; /* the caller's strings: not kept */
        if (!l->cfg.backlog)
                l->cfg.backlog = 64;
        l->fd = -1;
        r = cfg->path ? listen_unix(l, cfg->path) : listen_tcp(l, cfg->host);
        if (r < 0) {
                free(l);
                errno = -r;
                return NULL;
        }
        ev_io_init(&l->io, accept_cb, l->fd, EV_READ);
        l->io.data = l;
        return l;
}

void vbd_listener_start(struct vbd_listener *l)
{
        if (ev_is_active(&l->io))
                return;
        ev_io_start(l->loop, &l->io);
        if (!l->cfg.keep_loop_alive)
                ev_unref(l->loop);
}

void vbd_listener_stop(struct vbd_listener *l)
{
        if (!ev_is_active(&l->io))
                return;
        if (!l->cfg.keep_loop_alive)
                ev_ref(l->loop);
        ev_io_stop(l->loop, &l->io);
}

void vbd_listener_client_gone(struct vbd_listener *l)
{
        if (l && l->nr_clients)
                l->nr_clients--;
}

unsigned vbd_listener_clients(const struct vbd_listener *l)
{
        return l->nr_clients;
}

int vbd_listener_fd(const struct vbd_listener *l)
{
        return l->fd;
}

void vbd_listener_free(struct vbd_listener *l)
{
        struct stat st;

        if (!l)
                return;
        vbd_listener_stop(l);
        ev_clear_pending(l->loop, &l->io);
        close(l->fd);
        /* Only the socket we bound: another server may have replaced it since. */
        if (l->path[0] && lstat(l->path, &st) == 0 && st.st_dev == l->dev && st.st_ino == l->ino)
                (void)unlink(l->path);
        free(l);
}
