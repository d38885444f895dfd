/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The backend side of the xenbus handshake for one VBD (see
 * xen/io/xenbus.h and xen/io/blkif.h): publishes the disk, follows the
 * frontend's state, connects and disconnects the ring, notices detaching
 * (backend directory removed, or online=0 once the frontend has closed) and
 * the death of the frontend domain.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

struct ev_loop;
struct vbd_xen;
struct vbd_device;
struct vbd_stats;
struct vbd_xenbus;

/* Reads a frontend value by name: malloc'd string, or NULL with errno
 * (ENOENT when absent). */
typedef char *(*vbd_xs_get_fn)(void *opaque, const char *name);

/*
 * Parse multi-queue-num-queues (1..max_queues, absent: 1), ring-page-order,
 * and per queue ring-ref / ring-ref%u and event-channel (flat keys for one
 * queue, queue-N/... for more), and protocol (all guest-controlled) through
 * get.  No grant reference or event channel may appear twice.  0, or -errno
 * with msg set to the one line to log.  Pure: used by the handshake and by
 * the fuzzer.
 */
int vbd_xenbus_parse_ring(vbd_xs_get_fn get, void *opaque, unsigned max_queues,
                          struct vbd_ring_config *ret, char *msg, size_t msglen);

struct vbd_xenbus_config {
        uint32_t domid, devid, backend_domid;
        const char *type; /* backend directory name, "vbd3" */
        bool readonly;
        unsigned max_queues; /* multi-queue-max-queues offered, 1..VBD_RING_MAX_QUEUES */
};

/*
 * Publishes the disk of dev and enters InitWait.  The ring serves dev's
 * image and registers with dev as one of its users: the device pauses,
 * resumes and swaps the image (republishing the size).  NULL + errno, logged.
 */
struct vbd_xenbus *vbd_xenbus_new(struct ev_loop *loop, struct vbd_xen *x, struct vbd_device *dev,
                                  const struct vbd_xenbus_config *cfg);
void vbd_xenbus_free(struct vbd_xenbus *xb);

/* Graceful stop (SIGTERM): drain, answer what is in flight, state Closed. */
void vbd_xenbus_shutdown(struct vbd_xenbus *xb);

/* For the control socket. */
const struct vbd_xenbus_config *vbd_xenbus_config(const struct vbd_xenbus *xb);
const char *vbd_xenbus_backend_path(const struct vbd_xenbus *xb);
int vbd_xenbus_state(const struct vbd_xenbus *xb);    /* ours, XenbusState */
int vbd_xenbus_frontend_state(struct vbd_xenbus *xb); /* as xenstore says now */
bool vbd_xenbus_connected(const struct vbd_xenbus *xb);
unsigned vbd_xenbus_inflight(const struct vbd_xenbus *xb); /* taken from the ring, unanswered */
unsigned vbd_xenbus_queues(const struct vbd_xenbus *xb);   /* rings connected; 0 if none */
void vbd_xenbus_get_stats(const struct vbd_xenbus *xb, struct vbd_stats *ret);

/* Set once the VBD's job is over and the loop should end. */
bool vbd_xenbus_finished(const struct vbd_xenbus *xb);
int vbd_xenbus_exit_code(const struct vbd_xenbus *xb);
