/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The simulated guest side and toolstack for end-to-end tests of vbdd-sim.
 *
 *   simfront_env   a simulation: temp dir, simulated hypervisor (xen.shm),
 *                  xenstore server thread, domains;
 *   simfront_vbd   the toolstack's view of one VBD: the xenstore nodes of
 *                  contract.md and the vbdd-sim child process;
 *   simfront       a blkfront acting as guest domain D: handshake, shared
 *                  ring, pre-granted data pages, batched I/O.
 *
 * Errors: int functions return >= 0 or -errno; constructors return NULL with
 * errno set.  A human-readable reason of the last failure is kept in
 * simfront_env_errmsg() / simfront_errmsg().
 *
 * Not thread-safe; one thread drives an env and its fronts.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <xen/io/blkif.h>

#define SIMFRONT_SECTOR  512u
#define SIMFRONT_PAGE    4096u
#define SIMFRONT_MAX_SEG BLKIF_MAX_SEGMENTS_PER_REQUEST
#define SIMFRONT_MAX_IO  (SIMFRONT_MAX_SEG * SIMFRONT_PAGE)

/* XenbusState values (xen/io/xenbus.h), for readability. */
enum {
        SIMFRONT_XB_UNKNOWN = 0,
        SIMFRONT_XB_INITIALISING = 1,
        SIMFRONT_XB_INITWAIT = 2,
        SIMFRONT_XB_INITIALISED = 3,
        SIMFRONT_XB_CONNECTED = 4,
        SIMFRONT_XB_CLOSING = 5,
        SIMFRONT_XB_CLOSED = 6,
};

/* ------------------------------------------------------------------------ */
/* Environment */

struct simfront_env;
struct simxen;
struct xs_handle;

struct simfront_env_opts {
        const char *dir;   /* NULL: a fresh mkdtemp dir in $TMPDIR (or /tmp) */
        unsigned nr_pages; /* guest memory pages; 0: 16384 (64 MiB) */
        bool keep;         /* keep the dir at simfront_env_free() */
};

struct simfront_env *simfront_env_new(const struct simfront_env_opts *o);
/* Kills and reaps remaining vbdd children, stops xenstored, removes the
 * dir (unless keep).  NULL-safe. */
void simfront_env_free(struct simfront_env *env);

const char *simfront_env_dir(struct simfront_env *env);
const char *simfront_env_xs_path(struct simfront_env *env); /* <dir>/xenstored.sock */
struct simxen *simfront_env_xen(struct simfront_env *env);
struct xs_handle *simfront_env_xs(struct simfront_env *env); /* dom0 connection */
const char *simfront_env_errmsg(struct simfront_env *env);

/* Create a domain: simxen domain + /local/domain/D (domid, name). */
int simfront_env_domain_create(struct simfront_env *env, uint32_t domid);
/* simxen_domain_destroy + "sim-release-domain" (fires @releaseDomain). */
int simfront_env_domain_destroy(struct simfront_env *env, uint32_t domid);

/* Where vbdd-sim is: explicit path, else $VBD_SIM_VBDD, else vbdd-sim next
 * to the running binary (or in its parent dir, for the build tree).
 * Returns a malloc'd path or NULL + errno (ENOENT). */
char *simfront_find_vbdd(const char *explicit_path);

/* ------------------------------------------------------------------------ */
/* Toolstack: one VBD */

struct simfront_vbd;

struct simfront_vbd_opts {
        uint32_t domid, devid;
        const char *image;             /* params, e.g. raw:/x.img or null:1G */
        const char *mode;              /* "w" (default) or "r" */
        const char *type;              /* backend type, default "vbd3" */
        const char *vbdd;              /* vbdd-sim path; NULL: simfront_find_vbdd() */
        const char *const *extra_args; /* NULL-terminated, appended to vbdd's argv */
        bool no_spawn;                 /* write the nodes only */
};

/* Write the backend and frontend nodes (contract.md, with perms) and spawn
 * vbdd-sim with VBD_SIM_DIR and XENSTORED_PATH, its stderr (and stdout)
 * going to <dir>/vbdd-<D>-<N>.log. */
int simfront_vbd_add(struct simfront_env *env, const struct simfront_vbd_opts *o,
                     struct simfront_vbd **ret_vbd);
/* Kills (SIGKILL) the child if still running; leaves xenstore as it is. */
void simfront_vbd_free(struct simfront_vbd *vbd);

const char *simfront_vbd_backend_path(struct simfront_vbd *vbd);
const char *simfront_vbd_frontend_path(struct simfront_vbd *vbd);
const char *simfront_vbd_log_path(struct simfront_vbd *vbd);
pid_t simfront_vbd_pid(struct simfront_vbd *vbd); /* 0 once reaped or not spawned */
/* The child's log so far, malloc'd, NUL-terminated (NULL + errno). */
char *simfront_vbd_read_log(struct simfront_vbd *vbd);

enum simfront_detach {
        SIMFRONT_DETACH_OFFLINE, /* online=0 then backend state=5 */
        SIMFRONT_DETACH_REMOVE,  /* rm the backend dir */
};
int simfront_vbd_detach(struct simfront_vbd *vbd, enum simfront_detach how);
/* Remove the backend and frontend dirs (after the daemon is gone). */
int simfront_vbd_remove_nodes(struct simfront_vbd *vbd);

/* Wait for the child to exit.  0 and *ret_status (as from waitpid), or
 * -ETIMEDOUT.  timeout_ms < 0: forever. */
int simfront_vbd_wait(struct simfront_vbd *vbd, int timeout_ms, int *ret_status);
/* 1 if the child is still running, 0 if it exited (status kept), -errno. */
int simfront_vbd_running(struct simfront_vbd *vbd);
int simfront_vbd_kill(struct simfront_vbd *vbd, int sig);
/* Read an integer from the backend dir (e.g. "state"). */
int simfront_vbd_read_backend(struct simfront_vbd *vbd, const char *key, long long *ret);
/* Wait until backend/state == state (or the child exits: -ECHILD). */
int simfront_vbd_wait_state(struct simfront_vbd *vbd, int state, int timeout_ms);

/* ------------------------------------------------------------------------ */
/* The simulated blkfront */

struct simfront;
struct simfront_io;

struct simfront_opts {
        uint32_t domid, devid;
        uint32_t backend_domid; /* 0 */
        unsigned ring_order;    /* 0..4; must be <= max-ring-page-order */
        unsigned max_segments;  /* data pages per request slot, 1..11; 0: 11 */
        const char *protocol;   /* written if non-NULL, e.g. "x86_64-abi" (the
                                 * ring layout is always native x86_64) */
        bool grant_per_request; /* don't pre-grant the data pages (also the
                                 * fallback when the grant table is too small) */
        int timeout_ms;         /* handshake waits; 0: 10000 */
};

struct simfront *simfront_new(struct simfront_env *env, const struct simfront_opts *o);
/* Disconnects if connected (best effort), closes the xenstore connection. */
void simfront_free(struct simfront *fe);
const char *simfront_errmsg(struct simfront *fe);

/* Called while waiting (every ~50 ms); a negative return aborts the wait
 * with that code (e.g. the daemon died). */
void simfront_set_check(struct simfront *fe, int (*check)(void *opaque), void *opaque);

/* Full handshake: [state 1 if needed], wait backend InitWait, read the
 * backend's info, allocate + grant ring and data pages, bind an event
 * channel, publish, state 3, wait backend 4, state 4. */
int simfront_connect(struct simfront *fe);
/* State 5, wait backend >= 5, state 6, wait backend 6, end grants, free
 * pages, unbind.  In-flight I/O is waited for first (timeout). */
int simfront_disconnect(struct simfront *fe);
bool simfront_connected(struct simfront *fe);

/* What the backend published (valid after InitWait was seen). */
struct simfront_disk {
        uint64_t sectors; /* 512-byte units */
        uint32_t sector_size, physical_sector_size;
        uint32_t info;           /* VDISK_* */
        bool flush, barrier;     /* feature-flush-cache, feature-barrier */
        int max_ring_page_order; /* -1 if absent */
        char mode[8];
};
const struct simfront_disk *simfront_disk(struct simfront *fe);
uint64_t simfront_size(struct simfront *fe);      /* bytes */
unsigned simfront_ring_size(struct simfront *fe); /* request slots */
unsigned simfront_inflight(struct simfront *fe);

/* True if the data pages are granted once at connect, false if per request. */
bool simfront_pregranted(struct simfront *fe);

/* Asynchronous I/O.  Get an io (a ring slot with its data pages), fill op,
 * offset, len, done, opaque and the data, queue it; push once per batch;
 * poll for completions.  Data of an io is laid out as segment i = bytes
 * [i * 4096, (i + 1) * 4096) of the io, each in its own granted page. */
struct simfront_io {
        uint8_t op;      /* BLKIF_OP_READ/WRITE/FLUSH_DISKCACHE/WRITE_BARRIER */
        uint64_t offset; /* bytes, multiple of 512 */
        uint32_t len;    /* bytes, multiple of 512, <= max_segments * 4096 */
        void (*done)(struct simfront *fe, struct simfront_io *io);
        void *opaque;
        uint64_t tag;   /* caller's */
        int16_t status; /* BLKIF_RSP_* on completion */
        /* read-only for the caller */
        unsigned slot;
        unsigned nr_pages;
        void **page; /* nr_pages data page pointers */
};

/* A free io, or NULL if all ring slots are in flight (or not connected). */
struct simfront_io *simfront_io_get(struct simfront *fe);
/* Give an io back without submitting it. */
void simfront_io_put(struct simfront *fe, struct simfront_io *io);
/* Put the request in the ring (not yet visible to the backend).  Checks
 * alignment and size: -EINVAL.  -ENOSPC: no free grant entries (per-request
 * grants); complete some I/O and retry. */
int simfront_io_queue(struct simfront *fe, struct simfront_io *io);
/* Publish queued requests; notify the backend if it asked.  Returns 1 if
 * notified, 0 if not, -errno. */
int simfront_push(struct simfront *fe);
/* Consume responses, calling io->done for each (the io is free again after
 * done returns).  Waits up to timeout_ms (0: don't wait, <0: forever) for
 * the first.  Returns the number completed, 0 on timeout, -errno (-EPROTO
 * on a bad response). */
int simfront_poll(struct simfront *fe, int timeout_ms);
/* Poll until nothing is in flight.  -ETIMEDOUT. */
int simfront_drain(struct simfront *fe, int timeout_ms);
void simfront_io_copy_in(struct simfront_io *io, size_t at, const void *src, size_t len);
void simfront_io_copy_out(struct simfront_io *io, size_t at, void *dst, size_t len);

/* Synchronous helpers on arbitrary byte ranges (read-modify-write for the
 * unaligned ends), pipelined over the ring.  A failed request gives -EIO
 * and simfront_errmsg() says which offset and status. */
int simfront_read(struct simfront *fe, uint64_t offset, void *buf, size_t len);
int simfront_write(struct simfront *fe, uint64_t offset, const void *buf, size_t len);
int simfront_flush(struct simfront *fe);
int simfront_barrier(struct simfront *fe); /* WRITE_BARRIER without data */

struct simfront_stats {
        uint64_t requests, responses, pushes, notifies, polls, wakeups, errors;
        uint64_t grants; /* per-request grant operations */
};
void simfront_get_stats(struct simfront *fe, struct simfront_stats *ret);

/* ------------------------------------------------------------------------ */
/* hostile */

/* The handshake in steps, so that tests can meddle in between:
 *   prepare: [state 1], wait InitWait, read info, allocate + grant ring and
 *            data pages, bind the event channel (nothing written);
 *   publish: write ring-ref(s), event-channel, protocol, then state 3;
 *   finish:  wait backend Connected, state 4. */
int simfront_prepare(struct simfront *fe);
int simfront_publish(struct simfront *fe);
int simfront_finish(struct simfront *fe);

/* Xenstore, as the guest. */
int simfront_xs_write(struct simfront *fe, const char *key, const char *value); /* FE/key */
int simfront_xs_rm(struct simfront *fe, const char *key);
char *simfront_xs_read_backend(struct simfront *fe, const char *key); /* malloc'd */
int simfront_set_state(struct simfront *fe, int state);
int simfront_backend_state(struct simfront *fe);
int simfront_wait_backend_state(struct simfront *fe, int state, int timeout_ms);
const char *simfront_frontend_path(struct simfront *fe);
const char *simfront_backend_path(struct simfront *fe);

/* Ring internals (valid between prepare and disconnect). */
blkif_front_ring_t *simfront_raw_ring(struct simfront *fe);
blkif_sring_t *simfront_raw_sring(struct simfront *fe);
unsigned simfront_raw_ring_grefs(struct simfront *fe, uint32_t *grefs, unsigned max);
uint32_t simfront_raw_port(struct simfront *fe);
/* Copy len bytes (<= sizeof(blkif_request_t), rest zeroed) into the next
 * request slot and advance the private producer.  Requests put this way
 * bypass the io accounting: read their answers with raw_get_response. */
int simfront_raw_put(struct simfront *fe, const void *req, size_t len);
/* Publish the private producer (push) without notify. */
void simfront_raw_push(struct simfront *fe);
/* Store an arbitrary value in the shared req_prod. */
void simfront_raw_set_req_prod(struct simfront *fe, uint32_t req_prod);
int simfront_raw_notify(struct simfront *fe);
/* Next response, raw: 1 and *ret, 0 on timeout, -errno. */
int simfront_raw_get_response(struct simfront *fe, blkif_response_t *ret, int timeout_ms);
/* Grant reference of an io's data page: read-write or read-only grant. */
uint32_t simfront_io_gref(struct simfront *fe, struct simfront_io *io, unsigned seg, bool readonly);
/* A fresh guest page granted with the given properties (ended: granted then
 * ended, so the ref is stale).  The page is freed at disconnect/free. */
int simfront_raw_grant(struct simfront *fe, uint32_t to_domid, bool readonly, bool ended,
                       uint32_t *ret_gref, void **ret_page);
