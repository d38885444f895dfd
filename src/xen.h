/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The only module that calls libxengnttab, libxenevtchn, libxenctrl and
 * libxenstore.  vbdd links the real libraries; vbdd-sim links the simulator
 * (tests/sim/xensim) in place of the first three.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <xengnttab.h>

struct vbd_xen;

/* NULL + errno; logs what failed. */
struct vbd_xen *vbd_xen_open(void);
void vbd_xen_close(struct vbd_xen *x);

/* Grants */
void *vbd_xen_map_grants(struct vbd_xen *x, uint32_t domid, unsigned count, const uint32_t *refs);
int vbd_xen_unmap(struct vbd_xen *x, void *addr, unsigned count);
/* Returns 0 when the batch was processed: per-segment results in segs[i].status. */
int vbd_xen_grant_copy(struct vbd_xen *x, unsigned count, xengnttab_grant_copy_segment_t *segs);

/* Event channels: one device, any number of local ports bound on it. */
int vbd_xen_evtchn_fd(struct vbd_xen *x);
int vbd_xen_evtchn_bind(struct vbd_xen *x, uint32_t domid, uint32_t remote_port,
                        uint32_t *ret_local_port);
int vbd_xen_evtchn_unbind(struct vbd_xen *x, uint32_t local_port);
int vbd_xen_evtchn_notify(struct vbd_xen *x, uint32_t local_port);
/* Take one pending event and unmask its port: 1 and *ret_port (the local
 * port), 0 if none, or -errno.  Events not taken keep the fd readable; the
 * ring code takes up to one per queue per readiness. */
int vbd_xen_evtchn_ack(struct vbd_xen *x, uint32_t *ret_port);

/* Domains: 1 running, 0 dying or gone, -errno if unknown (no libxenctrl access). */
int vbd_xen_domain_alive(struct vbd_xen *x, uint32_t domid);

/* xenstore: malloc'ed NUL-terminated string or NULL + errno (ENOENT if absent). */
char *vbd_xs_read(struct vbd_xen *x, const char *path);
int vbd_xs_read_uint(struct vbd_xen *x, const char *path, unsigned long long max,
                     unsigned long long *ret);
int vbd_xs_exists(struct vbd_xen *x, const char *path);
int vbd_xs_fd(struct vbd_xen *x);
int vbd_xs_watch(struct vbd_xen *x, const char *path, const char *token);
int vbd_xs_unwatch(struct vbd_xen *x, const char *path, const char *token);
/* Next queued watch event, non-blocking: 1 with ret_path and ret_token set
 * (valid until the next call), 0 if none. */
int vbd_xs_next_event(struct vbd_xen *x, const char **ret_path, const char **ret_token);

/* A batch of writes done in one transaction (retried on EAGAIN).
 * kv: NULL-terminated array of {relative name, value} pairs under dir. */
int vbd_xs_write_all(struct vbd_xen *x, const char *dir, const char *const *kv);
