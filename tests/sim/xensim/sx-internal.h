/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Internals of the simulated hypervisor: the layout of <dir>/xen.shm and the
 * helpers shared by simxen.c, gnttab.c, evtchn.c and ctrl.c.
 *
 * Every participant maps the whole file MAP_SHARED.  All tables are guarded
 * by one process-shared robust mutex (sx_lock/sx_unlock); the per-port and
 * per-handle pending flags are also touched with atomics so that the event
 * path can coalesce wake-ups.  Guest memory is the tail of the file, page
 * aligned, so a single page can be mmap'ed on its own (grant maps).
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "simxen.h"

#define SX_MAGIC         0x31304e45584d4953ull /* "SIMXEN01" */
#define SX_VERSION       1u
#define SX_MAX_DOMS      64u    /* domain slots, slot 0 is dom0 */
#define SX_NR_GRANTS     4096u  /* grant entries per domain */
#define SX_FIRST_GREF    8u     /* 0..7 reserved, as Linux does */
#define SX_NR_PORTS      1024u  /* event channel ports per domain, 0 invalid */
#define SX_MAX_HANDLES   256u   /* open xenevtchn handles, all processes */
#define SX_MAX_MAPRECS   16384u /* pages mapped through xengnttab, all processes */
#define SX_MAX_PAGES     (1u << 20)
#define SX_MAX_MAP_COUNT SX_NR_GRANTS /* pages per xengnttab_map_* call */
#define SX_NR_DOMIDS     32768u
#define SX_NO_SLOT       0xffu

enum sx_dom_state { SX_DOM_FREE = 0, SX_DOM_ALIVE, SX_DOM_DYING };
enum sx_port_state { SX_PORT_FREE = 0, SX_PORT_UNBOUND, SX_PORT_INTERDOMAIN };

struct sx_grant {
        uint8_t in_use, readonly;
        uint16_t to_domid;
        uint32_t pfn;
        uint32_t map_count;
};

struct sx_port {
        uint8_t state;   /* enum sx_port_state */
        uint8_t pending; /* atomic: an event is latched for the owner */
        uint16_t remote_domid;
        uint32_t remote_port;
        uint32_t owner_id; /* sx_handle.id of the binding handle */
        uint16_t owner_slot;
        uint16_t pad;
};

struct sx_domain {
        uint32_t domid;
        uint32_t state; /* enum sx_dom_state */
        uint32_t gen;   /* changes each time the slot is reused */
        uint32_t nr_pages;
        uint32_t mapped; /* sum of grants[].map_count */
        uint32_t grant_hint, port_hint, pad;
        struct sx_grant grants[SX_NR_GRANTS];
        struct sx_port ports[SX_NR_PORTS];
};

struct sx_handle {
        uint32_t id; /* nonzero while in use, unique over the simulation's life */
        int32_t pid;
        uint32_t domid;
        uint32_t dom_gen;
        uint8_t doorbell; /* atomic: a wake-up datagram is queued */
        uint8_t pad[7];
};

struct sx_maprec {
        int32_t pid; /* 0 = free */
        uint16_t dom_slot;
        uint16_t pad;
        uint32_t dom_gen;
        uint32_t gref;
};

struct sx_page {
        uint32_t owner;  /* domid + 1, 0 = free */
        uint32_t grants; /* grant entries naming this page */
};

struct sx_shared {
        uint64_t magic; /* written last by simxen_create */
        uint32_t version, nr_pages;
        uint64_t sim_id; /* random, names the event channel sockets */
        uint64_t file_size, pages_off, page_table_off;
        pthread_mutex_t lock;
        uint32_t next_handle_id, next_gen, page_hint, pad;
        struct simxen_stats stats;
        uint8_t dom_slot[SX_NR_DOMIDS]; /* domid -> slot or SX_NO_SLOT */
        struct sx_domain doms[SX_MAX_DOMS];
        struct sx_handle handles[SX_MAX_HANDLES];
        struct sx_maprec maprecs[SX_MAX_MAPRECS];
        /* struct sx_page pages[nr_pages] at page_table_off,
         * guest memory at pages_off (page aligned). */
};

struct simxen {
        struct sx_shared *sh;
        struct sx_page *pt;
        uint8_t *mem; /* guest page 0 */
        size_t size;
        int fd;
        char *dir;
};

void sx_lock(struct simxen *sx);
void sx_unlock(struct simxen *sx);

/* Attach for a library handle: VBD_SIM_DIR / VBD_SIM_DOMID.  NULL + errno,
 * message on stderr naming the caller. */
struct simxen *sx_env_open(const char *who, uint32_t *ret_domid);

/* The live (not dying) domain with that id, or NULL. */
struct sx_domain *sx_dom_alive(struct simxen *sx, uint32_t domid);
/* Alive or dying, or NULL. */
struct sx_domain *sx_dom_any(struct simxen *sx, uint32_t domid);
static inline unsigned sx_dom_slot(struct simxen *sx, const struct sx_domain *d)
{
        return (unsigned)(d - sx->sh->doms);
}

static inline uint8_t *sx_page_ptr(struct simxen *sx, uint32_t pfn)
{
        return sx->mem + (size_t)pfn * SIMXEN_PAGE_SIZE;
}

/* True if the process is alive (not gone, not a zombie). */
bool sx_pid_alive(pid_t pid);

/* Release one map record (lock held): drops the grant's map count and
 * finishes a dying domain when its last mapping goes. */
void sx_maprec_release_locked(struct simxen *sx, uint32_t rec);
/* Release map records of processes that no longer exist (lock held). */
void sx_reclaim_dead_mappers_locked(struct simxen *sx);
/* Frees a dying domain once nothing maps its grants (lock held). */
void sx_dom_try_reap_locked(struct simxen *sx, struct sx_domain *d);

/* Event channels (evtchn.c), lock held. */
void sx_port_close_locked(struct simxen *sx, struct sx_domain *d, uint32_t port);
void sx_evtchn_reap_dead_handles_locked(struct simxen *sx);
