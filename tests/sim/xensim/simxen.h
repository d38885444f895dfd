/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The simulated hypervisor.
 *
 * State lives in one shared-memory file, <dir>/xen.shm, so that a simulated
 * guest (the frontend, in its own process) and vbdd-sim (the backend, in
 * another) share guest memory, grant tables and event channels the way two
 * domains share them under Xen.
 *
 * The backend side uses the ordinary libxengnttab / libxenevtchn /
 * libxenctrl API (this library defines those symbols; vbdd-sim links it
 * instead of the real libraries).  Handles opened with xengnttab_open(),
 * xenevtchn_open() and xc_interface_open() find the simulation through the
 * environment variable VBD_SIM_DIR and act as domain 0 (or VBD_SIM_DOMID).
 *
 * The guest / toolstack side uses the simxen_* calls below.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <xenevtchn.h>

#define SIMXEN_PAGE_SIZE 4096u

struct simxen;

/* Create <dir>/xen.shm with nr_pages pages of guest memory (1 .. 2^20),
 * replacing a stale file.  NULL + errno.
 *
 * Limits: 64 domains, 4096 grant entries per domain (refs 0..7 reserved, as
 * in Linux), ports 1..1023 per domain, 256 open event channel handles and
 * 16384 mapped grant pages over all processes.
 *
 * Backend-side semantics worth knowing (they follow Xen + Linux gntdev):
 * - xengnttab_grant_copy() fails as a whole (-1, EINVAL, nothing copied) if
 *   a segment is malformed: no gref side, unknown flag bits, gref offset +
 *   len > 4096, NULL virt.  Otherwise it returns 0 and sets each status:
 *   GNTST_bad_domain (granting domain missing or dying), GNTST_bad_gntref
 *   (ref >= 4096), GNTST_general_error (entry unused/ended, granted to
 *   another domain, or read-only used as destination).
 * - xengnttab_map_*() map all pages or none (NULL, EINVAL; ENOMEM past
 *   xengnttab_set_max_grants()); a read-only grant maps only without
 *   PROT_WRITE.  xengnttab_unmap() needs the exact address and count;
 *   xengnttab_close() unmaps what the handle still maps.
 * - xenevtchn_pending() never blocks: -1/EAGAIN when nothing is pending,
 *   which can also happen once after the fd polled readable (coalesced
 *   wake-up).  Events are never masked; unmask() only checks the port.
 *   bind_interdomain() leaves the new local port pending (as Xen does);
 *   notify on a port whose peer closed is dropped (returns 0); notify /
 *   unbind of a port this handle does not own fails with ENOTCONN.
 *   Closing one end returns the other end to "unbound", so a restarted
 *   backend can bind the same remote port again (also after a crash). */
struct simxen *simxen_create(const char *dir, unsigned nr_pages);
/* Attach to an existing simulation.  NULL + errno. */
struct simxen *simxen_open(const char *dir);
void simxen_close(struct simxen *sx); /* NULL-safe; leaves the file */

/* Domains.  destroy marks the domain dying, ends its grants and closes its
 * event channels; xc_domain_getinfo() then no longer reports it.  As under
 * Xen, while a backend still maps one of its grants the domain lingers as a
 * zombie (reported with dying = shutdown = 1, grants unusable, its id not
 * reusable) until the last such mapping is unmapped; mappings of processes
 * that died are released (as gntdev does), when grant_end or destroy meet
 * them.  Domain 0 always exists; domids >= DOMID_FIRST_RESERVED are refused.
 * Returns 0 or -errno (-EEXIST, -EINVAL, -ENOSPC, -ESRCH, -EPERM). */
int simxen_domain_create(struct simxen *sx, uint32_t domid);
int simxen_domain_destroy(struct simxen *sx, uint32_t domid);

/* Guest memory, page-granular, owned by a domain. */
int simxen_page_alloc(struct simxen *sx, uint32_t domid, uint32_t *ret_pfn);
int simxen_page_free(struct simxen *sx, uint32_t domid, uint32_t pfn);
void *simxen_page(struct simxen *sx, uint32_t pfn); /* NULL if out of range */

/* Grant table of the granting domain: gnttab_grant_foreign_access(). */
int simxen_grant_access(struct simxen *sx, uint32_t domid, uint32_t to_domid, uint32_t pfn,
                        bool readonly, uint32_t *ret_gref);
/* -EBUSY while the grant is mapped by the other side. */
int simxen_grant_end(struct simxen *sx, uint32_t domid, uint32_t gref);

/* An event channel handle acting as domid, for the guest side.  Use it with
 * the ordinary xenevtchn_* calls (bind_unbound_port, notify, pending, fd,
 * unmask, unbind, close). */
xenevtchn_handle *simxen_evtchn_open_as(struct simxen *sx, uint32_t domid);

/* Counters, for tests and benchmarks. */
struct simxen_stats {
        uint64_t grant_copy_calls, grant_copy_segs, grant_copy_errors;
        uint64_t maps, unmaps, notifies;
};
void simxen_get_stats(struct simxen *sx, struct simxen_stats *ret);
