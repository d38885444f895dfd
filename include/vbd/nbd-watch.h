/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A libnbd handle's socket in a libev loop, for drivers that drive libnbd's
 * asynchronous API from the VBD's loop (nbd, mirror).  The watcher follows
 * what libnbd waits for (nbd_aio_get_direction) and does not keep the loop
 * alive: the driver's ios in flight do.  Include after <libnbd.h> and <ev.h>.
 */
#pragma once

#include <ev.h>
#include <libnbd.h>
#include <stdbool.h>

struct vbd_nbd_watch {
        ev_io io; /* ev_init() it with the driver's callback and data */
        int fd, events;
        bool on;
};

static inline void vbd_nbd_watch_init(struct vbd_nbd_watch *nw, void (*cb)(EV_P_ ev_io *, int),
                                      void *data)
{
        ev_init(&nw->io, cb);
        nw->io.data = data;
        nw->fd = -1;
        nw->events = 0;
        nw->on = false;
}

/* Watch h's socket for what libnbd waits for now; h NULL (closed): stop. */
static inline void vbd_nbd_watch_update(struct ev_loop *loop, struct vbd_nbd_watch *nw,
                                        struct nbd_handle *h)
{
        int fd = -1, events = 0;

        if (h) {
                unsigned dir = nbd_aio_get_direction(h);

                fd = nbd_aio_get_fd(h);
                if (dir & LIBNBD_AIO_DIRECTION_READ)
                        events |= EV_READ;
                if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                        events |= EV_WRITE;
                if (fd < 0)
                        events = 0;
        }
        if (nw->on && fd == nw->fd && events == nw->events)
                return;
        if (nw->on) {
                ev_ref(loop);
                ev_io_stop(loop, &nw->io);
                nw->on = false;
        }
        nw->fd = fd;
        nw->events = events;
        if (events) {
                ev_io_set(&nw->io, fd, events);
                ev_io_start(loop, &nw->io);
                ev_unref(loop);
                nw->on = true;
        }
}
