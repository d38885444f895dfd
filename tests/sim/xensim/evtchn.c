/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libxenevtchn, simulated.
 *
 * Ports live in the shared file, per domain, with Xen's states: free,
 * unbound (allocated for a remote domain) and interdomain.  Each handle owns
 * a non-blocking unix datagram socket with an abstract name derived from the
 * simulation id and the handle id; the socket is the handle's fd.
 *
 * Delivery: notify sets the peer port's pending flag; only when the flag
 * goes 0 -> 1, and only when the peer handle's doorbell flag also goes
 * 0 -> 1, one datagram is sent.  xenevtchn_pending() clears the doorbell,
 * drains the socket and returns one pending port of the handle (round
 * robin), re-ringing its own doorbell if more ports are pending.  Events
 * coalesce as under Xen.  Like the real device, it blocks until an event
 * arrives unless the fd is O_NONBLOCK (then EAGAIN when nothing is pending).
 *
 * As in Xen: binding an interdomain channel sets the local port pending;
 * notifying an unbound port is silently dropped; closing one end of an
 * interdomain channel returns the other end to "unbound" for the closing
 * domain, so a restarted backend can bind the same remote port again.
 * Handles of processes that died are reaped when somebody needs their port.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <stdint.h>
#include <xen/xen.h>
#include <xenevtchn.h>

#include "sx-internal.h"

struct xenevtchn_handle {
        struct simxen *sx;
        int fd;
        uint32_t slot, id;
        uint32_t domid, dom_gen;
        uint32_t *ports; /* ports this handle bound (may hold stale ones) */
        unsigned nr_ports, cap_ports, rr;
};

static socklen_t sx_evtchn_addr(struct simxen *sx, uint32_t id, struct sockaddr_un *sun)
{
        int n;

        memset(sun, 0, sizeof(*sun));
        sun->sun_family = AF_UNIX;
        /* Abstract name: sun_path[0] stays '\0'. */
        n = snprintf(sun->sun_path + 1, sizeof(sun->sun_path) - 1, "vbd-simxen-%016llx-%u",
                     (unsigned long long)sx->sh->sim_id, id);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static bool sx_handle_alive_locked(struct simxen *sx, uint32_t slot)
{
        struct sx_handle *hh = &sx->sh->handles[slot];
        struct sockaddr_un sun;
        socklen_t len;
        bool alive;
        int fd;

        if (!hh->id)
                return false;
        if (!sx_pid_alive(hh->pid))
                return false;
        /* The socket goes away with the process even if it is a zombie or
         * the pid was reused; a connect tells. */
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return true;
        len = sx_evtchn_addr(sx, hh->id, &sun);
        alive = connect(fd, (struct sockaddr *)&sun, len) == 0 || errno != ECONNREFUSED;
        close(fd);
        return alive;
}

void sx_port_close_locked(struct simxen *sx, struct sx_domain *d, uint32_t port)
{
        struct sx_port *p = &d->ports[port];

        if (p->state == SX_PORT_INTERDOMAIN) {
                struct sx_domain *rd = sx_dom_any(sx, p->remote_domid);

                if (rd && p->remote_port && p->remote_port < SX_NR_PORTS) {
                        struct sx_port *rp = &rd->ports[p->remote_port];

                        if (rp->state == SX_PORT_INTERDOMAIN && rp->remote_domid == d->domid &&
                            rp->remote_port == port) {
                                rp->state = SX_PORT_UNBOUND;
                                rp->remote_port = 0;
                        }
                }
        }
        memset(p, 0, sizeof(*p));
}

/* Closes every port of a handle and frees its slot (lock held). */
static void sx_handle_free_locked(struct simxen *sx, uint32_t slot)
{
        struct sx_handle *hh = &sx->sh->handles[slot];
        struct sx_domain *d = sx_dom_any(sx, hh->domid);
        uint32_t i;

        if (d && d->gen == hh->dom_gen)
                for (i = 1; i < SX_NR_PORTS; i++)
                        if (d->ports[i].state != SX_PORT_FREE && d->ports[i].owner_id == hh->id)
                                sx_port_close_locked(sx, d, i);
        memset(hh, 0, sizeof(*hh));
}

void sx_evtchn_reap_dead_handles_locked(struct simxen *sx)
{
        uint32_t i;

        for (i = 0; i < SX_MAX_HANDLES; i++)
                if (sx->sh->handles[i].id && !sx_handle_alive_locked(sx, i))
                        sx_handle_free_locked(sx, i);
}

static void sx_doorbell(struct simxen *sx, int sendfd, uint32_t slot, uint32_t port)
{
        struct sx_handle *hh = &sx->sh->handles[slot];
        struct sockaddr_un sun;
        socklen_t len;
        uint32_t id = hh->id;

        if (!id || __atomic_exchange_n(&hh->doorbell, 1, __ATOMIC_SEQ_CST))
                return;
        len = sx_evtchn_addr(sx, id, &sun);
        if (sendto(sendfd, &port, sizeof(port), MSG_DONTWAIT | MSG_NOSIGNAL,
                   (struct sockaddr *)&sun, len) < 0) {
                if (errno == ECONNREFUSED || errno == ENOENT) {
                        /* Its process is gone: close its channels. */
                        sx_handle_free_locked(sx, slot);
                } else {
                        /* Cannot happen with one datagram queued at most;
                         * keep the port pending for the next pending(). */
                        __atomic_store_n(&hh->doorbell, 0, __ATOMIC_SEQ_CST);
                }
        }
}

/* Latch an event on port p of its owner (lock held). */
static void sx_deliver_locked(struct simxen *sx, int sendfd, struct sx_port *p, uint32_t port)
{
        if (p->state != SX_PORT_INTERDOMAIN || p->owner_slot >= SX_MAX_HANDLES ||
            sx->sh->handles[p->owner_slot].id != p->owner_id)
                return;
        if (__atomic_exchange_n(&p->pending, 1, __ATOMIC_SEQ_CST))
                return;
        sx_doorbell(sx, sendfd, p->owner_slot, port);
}

static xenevtchn_handle *sx_evtchn_new(struct simxen *sx, uint32_t domid, unsigned flags)
{
        xenevtchn_handle *h = calloc(1, sizeof(*h));
        struct sx_domain *d;
        struct sockaddr_un sun;
        socklen_t len;
        int e = EMFILE;
        uint32_t i;

        if (!h)
                return NULL;
        h->sx = sx;
        /* Blocking, like /dev/xen/evtchn: callers that poll must set O_NONBLOCK. */
        h->fd =
            socket(AF_UNIX, SOCK_DGRAM | ((flags & XENEVTCHN_NO_CLOEXEC) ? 0 : SOCK_CLOEXEC), 0);
        if (h->fd < 0) {
                e = errno;
                free(h);
                errno = e;
                return NULL;
        }
        sx_lock(sx);
        d = sx_dom_alive(sx, domid);
        if (!d) {
                e = ESRCH;
                goto fail;
        }
        for (int pass = 0; pass < 2; pass++) {
                for (i = 0; i < SX_MAX_HANDLES && sx->sh->handles[i].id; i++)
                        ;
                if (i < SX_MAX_HANDLES || pass)
                        break;
                sx_evtchn_reap_dead_handles_locked(sx);
        }
        if (i == SX_MAX_HANDLES)
                goto fail;
        h->slot = i;
        h->id = sx->sh->next_handle_id++;
        if (!h->id)
                h->id = sx->sh->next_handle_id++;
        h->domid = domid;
        h->dom_gen = d->gen;
        len = sx_evtchn_addr(sx, h->id, &sun);
        if (bind(h->fd, (struct sockaddr *)&sun, len) < 0) {
                e = errno;
                goto fail;
        }
        sx->sh->handles[i] =
            (struct sx_handle){.id = h->id, .pid = getpid(), .domid = domid, .dom_gen = d->gen};
        sx_unlock(sx);
        return h;
fail:
        sx_unlock(sx);
        close(h->fd);
        free(h);
        errno = e;
        return NULL;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags)
{
        struct simxen *sx;
        xenevtchn_handle *h;
        uint32_t domid;

        sx = sx_env_open("xenevtchn_open", &domid);
        if (!sx)
                return NULL;
        h = sx_evtchn_new(sx, domid, flags);
        if (!h) {
                int e = errno;

                simxen_close(sx);
                errno = e;
        }
        return h;
}

xenevtchn_handle *simxen_evtchn_open_as(struct simxen *sx, uint32_t domid)
{
        struct simxen *own;
        xenevtchn_handle *h;

        if (!sx || domid >= DOMID_FIRST_RESERVED) {
                errno = EINVAL;
                return NULL;
        }
        /* Its own attachment, so the handle does not depend on sx. */
        own = simxen_open(sx->dir);
        if (!own)
                return NULL;
        h = sx_evtchn_new(own, domid, 0);
        if (!h) {
                int e = errno;

                simxen_close(own);
                errno = e;
        }
        return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
        errno = ENOSYS;
        return NULL;
}

int xenevtchn_close(xenevtchn_handle *h)
{
        if (!h)
                return 0;
        sx_lock(h->sx);
        if (h->slot < SX_MAX_HANDLES && h->sx->sh->handles[h->slot].id == h->id)
                sx_handle_free_locked(h->sx, h->slot);
        sx_unlock(h->sx);
        close(h->fd);
        simxen_close(h->sx);
        free(h->ports);
        free(h);
        return 0;
}

int xenevtchn_fd(xenevtchn_handle *h)
{
        if (!h) {
                errno = EINVAL;
                return -1;
        }
        return h->fd;
}

int xenevtchn_restrict(xenevtchn_handle *h, domid_t domid)
{
        errno = ENOSYS;
        return -1;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *h, unsigned int virq)
{
        errno = ENOSYS;
        return -1;
}

/* The handle's own domain, if it is still the one the handle was opened in. */
static struct sx_domain *sx_own_dom(xenevtchn_handle *h)
{
        struct sx_domain *d = sx_dom_alive(h->sx, h->domid);

        return d && d->gen == h->dom_gen ? d : NULL;
}

static struct sx_port *sx_own_port(xenevtchn_handle *h, uint32_t port)
{
        struct sx_domain *d;
        struct sx_port *p;

        if (port == 0 || port >= SX_NR_PORTS)
                return NULL;
        d = sx_own_dom(h);
        if (!d)
                return NULL;
        p = &d->ports[port];
        return p->state != SX_PORT_FREE && p->owner_id == h->id ? p : NULL;
}

static int sx_port_alloc_locked(xenevtchn_handle *h, struct sx_domain *d)
{
        uint32_t i, port;

        /* Drop stale entries, then make room for one more. */
        for (i = 0; i < h->nr_ports;) {
                if (sx_own_port(h, h->ports[i]))
                        i++;
                else
                        h->ports[i] = h->ports[--h->nr_ports];
        }
        if (h->nr_ports == h->cap_ports) {
                unsigned cap = h->cap_ports ? 2 * h->cap_ports : 8;
                uint32_t *n = realloc(h->ports, cap * sizeof(*n));

                if (!n)
                        return -ENOMEM;
                h->ports = n;
                h->cap_ports = cap;
        }
        for (i = 0; i < SX_NR_PORTS - 1; i++) {
                port = 1 + (d->port_hint + i) % (SX_NR_PORTS - 1);
                if (d->ports[port].state != SX_PORT_FREE)
                        continue;
                d->port_hint = port % (SX_NR_PORTS - 1);
                memset(&d->ports[port], 0, sizeof(d->ports[port]));
                d->ports[port].owner_id = h->id;
                d->ports[port].owner_slot = (uint16_t)h->slot;
                h->ports[h->nr_ports++] = port;
                return (int)port;
        }
        return -ENOSPC;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *h, uint32_t domid)
{
        struct sx_domain *d;
        int port;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        sx_lock(h->sx);
        d = sx_own_dom(h);
        if (domid == DOMID_SELF)
                domid = h->domid;
        if (!d || !sx_dom_alive(h->sx, domid)) {
                port = -ESRCH;
                goto out;
        }
        port = sx_port_alloc_locked(h, d);
        if (port < 0)
                goto out;
        d->ports[port].state = SX_PORT_UNBOUND;
        d->ports[port].remote_domid = (uint16_t)domid;
out:
        sx_unlock(h->sx);
        if (port < 0) {
                errno = -port;
                return -1;
        }
        return port;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *h, uint32_t domid,
                                                     evtchn_port_t remote_port)
{
        struct sx_domain *d, *rd;
        struct sx_port *rp;
        int port;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        sx_lock(h->sx);
        d = sx_own_dom(h);
        if (domid == DOMID_SELF)
                domid = h->domid;
        rd = sx_dom_alive(h->sx, domid);
        if (!d || !rd) {
                port = -ESRCH;
                goto out;
        }
        if (remote_port == 0 || remote_port >= SX_NR_PORTS) {
                port = -EINVAL;
                goto out;
        }
        rp = &rd->ports[remote_port];
        /* Still bound to one of ours whose process died? Reap it. */
        if (rp->state == SX_PORT_INTERDOMAIN && rp->remote_domid == d->domid)
                sx_evtchn_reap_dead_handles_locked(h->sx);
        if (rp->state != SX_PORT_UNBOUND || rp->remote_domid != d->domid) {
                port = -EINVAL;
                goto out;
        }
        port = sx_port_alloc_locked(h, d);
        if (port < 0)
                goto out;
        d->ports[port].state = SX_PORT_INTERDOMAIN;
        d->ports[port].remote_domid = (uint16_t)domid;
        d->ports[port].remote_port = remote_port;
        rp->state = SX_PORT_INTERDOMAIN;
        rp->remote_port = (uint32_t)port;
        /* Events sent to the unbound port were lost: Xen conservatively
         * marks the new local port pending. */
        sx_deliver_locked(h->sx, h->fd, &d->ports[port], (uint32_t)port);
out:
        sx_unlock(h->sx);
        if (port < 0) {
                errno = -port;
                return -1;
        }
        return port;
}

int xenevtchn_unbind(xenevtchn_handle *h, evtchn_port_t port)
{
        int r = 0;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        sx_lock(h->sx);
        if (sx_own_port(h, port)) {
                sx_port_close_locked(h->sx, sx_own_dom(h), port);
                for (unsigned i = 0; i < h->nr_ports;) {
                        if (h->ports[i] == port)
                                h->ports[i] = h->ports[--h->nr_ports];
                        else
                                i++;
                }
        } else
                r = port && port < SX_NR_PORTS ? -ENOTCONN : -EINVAL;
        sx_unlock(h->sx);
        if (r) {
                errno = -r;
                return -1;
        }
        return 0;
}

int xenevtchn_notify(xenevtchn_handle *h, evtchn_port_t port)
{
        struct sx_port *p;
        struct sx_domain *rd;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        sx_lock(h->sx);
        p = sx_own_port(h, port);
        if (!p) {
                sx_unlock(h->sx);
                errno = port && port < SX_NR_PORTS ? ENOTCONN : EINVAL;
                return -1;
        }
        __atomic_fetch_add(&h->sx->sh->stats.notifies, 1, __ATOMIC_RELAXED);
        /* Unbound (peer closed): dropped silently, as Xen does. */
        if (p->state == SX_PORT_INTERDOMAIN && p->remote_port < SX_NR_PORTS &&
            (rd = sx_dom_alive(h->sx, p->remote_domid)))
                sx_deliver_locked(h->sx, h->fd, &rd->ports[p->remote_port], p->remote_port);
        sx_unlock(h->sx);
        return 0;
}

static xenevtchn_port_or_error_t pending_once(xenevtchn_handle *h);

/*
 * Like a read() of /dev/xen/evtchn: waits for an event unless the fd was
 * made non-blocking (O_NONBLOCK), then -1 with EAGAIN.
 */
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *h)
{
        if (!h) {
                errno = EINVAL;
                return -1;
        }
        for (;;) {
                xenevtchn_port_or_error_t p = pending_once(h);
                struct pollfd pfd = {.fd = h->fd, .events = POLLIN};
                int fl;

                if (p >= 0 || errno != EAGAIN)
                        return p;
                fl = fcntl(h->fd, F_GETFL);
                if (fl < 0 || (fl & O_NONBLOCK)) {
                        errno = EAGAIN;
                        return -1;
                }
                if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                        return -1;
        }
}

static xenevtchn_port_or_error_t pending_once(xenevtchn_handle *h)
{
        struct sx_handle *hh;
        uint32_t buf[4];
        int found = -1;
        unsigned i, n, start;

        hh = &h->sx->sh->handles[h->slot];
        /* Drain first, then clear the doorbell: a datagram sent after the
         * clear stays queued (a spurious wakeup at worst).  The other order
         * ate a datagram sent between the two, leaving the doorbell set with
         * nothing queued: the re-ring below for a second pending port (two
         * queues on one handle) then sent nothing, and the fd stayed quiet
         * with that port pending.  One recv drains it: a datagram is sent
         * only when the doorbell goes 0 -> 1, so at most one is queued (if
         * ever two were, the second is a spurious wakeup, no more). */
        (void)recv(h->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (hh->id == h->id)
                __atomic_store_n(&hh->doorbell, 0, __ATOMIC_SEQ_CST);
        sx_lock(h->sx);
        n = h->nr_ports;
        start = h->rr;
        for (i = 0; i < n; i++) {
                unsigned k = (start + i) % n;
                struct sx_port *p = sx_own_port(h, h->ports[k]);

                if (!p || !__atomic_load_n(&p->pending, __ATOMIC_SEQ_CST))
                        continue;
                if (found < 0) {
                        __atomic_store_n(&p->pending, 0, __ATOMIC_SEQ_CST);
                        found = (int)h->ports[k];
                        h->rr = k + 1;
                } else {
                        /* More to come: keep the fd readable. */
                        sx_doorbell(h->sx, h->fd, h->slot, h->ports[k]);
                        break;
                }
        }
        sx_unlock(h->sx);
        if (found < 0) {
                errno = EAGAIN;
                return -1;
        }
        return found;
}

int xenevtchn_unmask(xenevtchn_handle *h, evtchn_port_t port)
{
        int r = 0;

        if (!h) {
                errno = EINVAL;
                return -1;
        }
        /* Events are never masked here: pending() consumed it already. */
        sx_lock(h->sx);
        if (!sx_own_port(h, port))
                r = -EINVAL;
        sx_unlock(h->sx);
        if (r) {
                errno = -r;
                return -1;
        }
        return 0;
}
