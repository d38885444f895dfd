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
#define SIMFRONT_MAX_SEG BLKIF_MAX_SEGMENTS_PER_REQUEST /* direct requests */
#define SIMFRONT_MAX_IO  (SIMFRONT_MAX_SEG * SIMFRONT_PAGE)
/* With BLKIF_OP_INDIRECT (if the backend offers feature-max-indirect-segments). */
#define SIMFRONT_MAX_INDIRECT_SEG   256u
#define SIMFRONT_MAX_INDIRECT_IO    (SIMFRONT_MAX_INDIRECT_SEG * SIMFRONT_PAGE)
#define SIMFRONT_SEGS_PER_INDIRECT  (SIMFRONT_PAGE / sizeof(struct blkif_request_segment))
#define SIMFRONT_MAX_INDIRECT_PAGES BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
/* Default cap on the data pages of one frontend (the indirect descriptor
 * pages, one per io, come on top). */
#define SIMFRONT_DEFAULT_DATA_PAGES 8192u
#define SIMFRONT_MAX_QUEUES         16u /* blkif multi-queue */

/* The ring layouts of blkif.h: x86_64 (the native structs, 112-byte ring
 * entries) and i386 (64-bit fields 4-byte aligned, 108-byte entries). */
enum simfront_abi {
        SIMFRONT_ABI_RING = 0, /* raw puts: whatever the ring uses */
        SIMFRONT_ABI_X86_64,
        SIMFRONT_ABI_X86_32,
};

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
/* CPU time (user + system, all threads) the child used so far, from
 * /proc/<pid>/stat utime + stime (clock-tick resolution).  -ESRCH if gone. */
int simfront_vbd_cpu_ns(struct simfront_vbd *vbd, uint64_t *ret_ns);
/* Wait until backend/state == state (or the child exits: -ECHILD). */
int simfront_vbd_wait_state(struct simfront_vbd *vbd, int state, int timeout_ms);

/* ------------------------------------------------------------------------ */
/* The simulated blkfront */

struct simfront;
struct simfront_io;

struct simfront_opts {
        uint32_t domid, devid;
        uint32_t backend_domid;  /* 0 */
        unsigned ring_order;     /* 0..4; must be <= max-ring-page-order */
        unsigned max_segments;   /* data pages per request, 1..256; 0: 11.  Above 11
                                  * needs the backend's feature-max-indirect-segments:
                                  * clamped at connect to max(11, what it offers),
                                  * and simfront_notice() says so.  Requests of more
                                  * than 11 segments go as BLKIF_OP_INDIRECT. */
        bool indirect_always;    /* send every read/write as BLKIF_OP_INDIRECT (if
                                  * offered; else a notice and direct requests) */
        const char *protocol;    /* written if non-NULL.  "x86_32-abi": the ring is
                                  * built in the i386 layout; anything else (NULL,
                                  * "x86_64-abi", garbage for hostile tests): x86_64 */
        bool grant_per_request;  /* don't pre-grant the data pages (also the
                                  * fallback when the grant table is too small) */
        unsigned max_data_pages; /* cap on the data pages; 0: 8192.  The
                                  * number of ios (simfront_queue_depth) is the
                                  * ring size or what fits this cap, if fewer */
        int timeout_ms;          /* handshake waits; 0: 10000 */
        unsigned queues;         /* blkif multi-queue rings, 0..16 (0: 1).  More than 1
                                  * is clamped at prepare to the backend's
                                  * multi-queue-max-queues (simfront_notice() says so)
                                  * and published as multi-queue-num-queues and
                                  * queue-N/ring-ref(s), queue-N/event-channel; one
                                  * queue uses the flat keys.  Io slot i is on queue
                                  * i % queues; simfront_io_get() takes the queues in
                                  * turn; a response on another queue than its
                                  * request's is -EPROTO */
        bool events_only;        /* look at the rings for responses only after an
                                  * event-channel event, as blkfront does (no look
                                  * on entry to simfront_poll, none after a wait
                                  * that timed out): a notification the backend
                                  * owed and did not send stalls simfront_poll
                                  * until its timeout instead of being covered up */
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
        unsigned max_indirect_segments; /* feature-max-indirect-segments; 0 if absent */
        bool discard;                   /* feature-discard */
        uint32_t discard_granularity;   /* bytes; 0 if absent */
        uint32_t discard_alignment;     /* bytes */
        bool discard_secure;            /* discard-secure */
        unsigned max_queues;            /* multi-queue-max-queues; 0 if absent */
};
const struct simfront_disk *simfront_disk(struct simfront *fe);
uint64_t simfront_size(struct simfront *fe);      /* bytes */
unsigned simfront_ring_size(struct simfront *fe); /* ring entries (request slots) per queue */
unsigned simfront_queues(struct simfront *fe);    /* queues in use (after clamping) */
unsigned simfront_inflight(struct simfront *fe);
/* Ios available (<= ring size; fewer if the data pages did not fit). */
unsigned simfront_queue_depth(struct simfront *fe);
/* Segments per request in use (after clamping to what the backend offers). */
unsigned simfront_max_segments(struct simfront *fe);
/* True if reads/writes of more than 11 segments (or all, indirect_always)
 * go as BLKIF_OP_INDIRECT. */
bool simfront_indirect(struct simfront *fe);
enum simfront_abi simfront_abi(struct simfront *fe);
/* What the frontend changed from its options at connect ("" if nothing),
 * e.g. "max_segments 256 clamped to 11: the backend offers no
 * feature-max-indirect-segments". */
const char *simfront_notice(struct simfront *fe);

/* True if the data pages are granted once at connect, false if per request. */
bool simfront_pregranted(struct simfront *fe);

/* Asynchronous I/O.  Get an io (a ring slot with its data pages), fill op,
 * offset, len, done, opaque and the data, queue it; push once per batch;
 * poll for completions.  Data of an io is laid out as segment i = bytes
 * [i * 4096, (i + 1) * 4096) of the io, each in its own granted page. */
#define SIMFRONT_IO_DISCARD_SECURE 1u /* BLKIF_DISCARD_SECURE on a discard */
struct simfront_io {
        uint8_t op;      /* BLKIF_OP_READ/WRITE/FLUSH_DISKCACHE/WRITE_BARRIER/DISCARD */
        uint8_t flags;   /* SIMFRONT_IO_* */
        uint64_t offset; /* bytes, multiple of 512 */
        uint32_t len;    /* bytes, multiple of 512, <= max_segments * 4096
                          * (discard: any multiple of 512, no data pages) */
        void (*done)(struct simfront *fe, struct simfront_io *io);
        void *opaque;
        uint64_t tag;   /* caller's */
        int16_t status; /* BLKIF_RSP_* on completion */
        /* read-only for the caller */
        unsigned slot;
        unsigned nr_pages;
        void **page; /* nr_pages data page pointers */
};

/* A free io (done, opaque, tag, status, flags cleared), or NULL if all are
 * in flight (or not connected). */
struct simfront_io *simfront_io_get(struct simfront *fe);
/* The queue an io goes on. */
unsigned simfront_io_queue_index(struct simfront *fe, const struct simfront_io *io);
/* Give an io back without submitting it. */
void simfront_io_put(struct simfront *fe, struct simfront_io *io);
/* Put the request in the ring (not yet visible to the backend).  Checks
 * alignment and size: -EINVAL.  -ENOSPC: no free grant entries (per-request
 * grants); complete some I/O and retry.  -EOPNOTSUPP: a discard and the
 * backend has no feature-discard.  A read/write of more than 11 segments
 * (or any, with indirect_always) goes as BLKIF_OP_INDIRECT with the io's
 * descriptor page; its response may carry operation BLKIF_OP_INDIRECT or
 * the indirect_op (both accepted; io->op stays READ/WRITE). */
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
/* BLKIF_OP_DISCARD of [offset, offset + len) (multiples of 512), split in
 * requests of at most 1 GiB.  -EOPNOTSUPP without sending anything if the
 * backend does not offer feature-discard, or if it answers EOPNOTSUPP. */
int simfront_discard(struct simfront *fe, uint64_t offset, uint64_t len);

struct simfront_stats {
        uint64_t requests, responses, pushes, notifies, polls, wakeups, errors;
        uint64_t grants;                   /* per-request grant operations */
        uint64_t indirect, discards;       /* requests sent as BLKIF_OP_INDIRECT, DISCARD */
        uint64_t indirect_rsp_op_indirect; /* indirect responses that carried op 6 */
        uint64_t queue_requests[SIMFRONT_MAX_QUEUES]; /* requests sent on each queue */
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

/* Which queue the raw_* calls below act on (default 0, reset at prepare):
 * its ring, ring grants and event channel.  -EINVAL if q >= queues. */
int simfront_raw_select_queue(struct simfront *fe, unsigned q);

/* Ring internals (valid between prepare and disconnect).  The indices of
 * raw_ring (req_prod_pvt, rsp_cons, nr_ents) and the header of raw_sring
 * are the same in both ABIs; RING_GET_REQUEST/RESPONSE on raw_ring are only
 * right for an x86_64 ring: use simfront_raw_slot() instead. */
blkif_front_ring_t *simfront_raw_ring(struct simfront *fe);
blkif_sring_t *simfront_raw_sring(struct simfront *fe);
unsigned simfront_raw_ring_grefs(struct simfront *fe, uint32_t *grefs, unsigned max);
uint32_t simfront_raw_port(struct simfront *fe);
/* The ring entry for index idx (masked), and the entry size (112 x86_64,
 * 108 i386). */
void *simfront_raw_slot(struct simfront *fe, uint32_t idx);
size_t simfront_raw_slot_size(struct simfront *fe);
/* Copy len bytes (<= sizeof(blkif_request_t); at most the entry size is
 * kept, so a 112-byte x86_64 request loses its last 4 bytes in an i386
 * ring; the rest of the entry is zeroed) into the next request slot and
 * advance the private producer.  Requests put this way bypass the io
 * accounting: read their answers with raw_get_response. */
int simfront_raw_put(struct simfront *fe, const void *req, size_t len);

/* Any request, as a native (x86_64 on this host) struct of blkif.h; which
 * member counts is told by operation: BLKIF_OP_INDIRECT -> indirect,
 * BLKIF_OP_DISCARD -> discard, anything else -> rw. */
union simfront_req {
        uint8_t operation;
        blkif_request_t rw;
        blkif_request_discard_t discard;
        blkif_request_indirect_t indirect;
};
/* Encode a native request in the ring's ABI (fields as they are: any
 * nr_segments, all 11 seg[] / 8 indirect_grefs[] entries, flag, pad
 * bytes zero) into the next slot; advance the private producer.  req
 * points to a union simfront_req (or a blkif_request_t for rw ops). */
int simfront_raw_put_req(struct simfront *fe, const union simfront_req *req);
/* The same, encoded in abi whatever the ring uses: mismatched-ABI attacks
 * (an x86_64 request in an i386 ring is cut to 108 bytes, see raw_put). */
int simfront_raw_put_req_as(struct simfront *fe, const union simfront_req *req,
                            enum simfront_abi abi);
/* Encode without putting: bytes written into out (>= 112 bytes, zeroed
 * first) -- the entry size of that ABI's layout for the op (rw 112/108,
 * indirect 64/64, discard 32/28). */
size_t simfront_encode_req(const union simfront_req *req, enum simfront_abi abi, void *out);

/* A raw indirect request: nr_pages (0..8) descriptor pages granted
 * read-only to the backend, each holding 512 struct blkif_request_segment
 * (guest memory: write them as you like before the put), and nr_data
 * (0..256) data pages granted to the backend (read-only for
 * indirect_op WRITE, read-write otherwise).  The builder fills req.indirect
 * (operation BLKIF_OP_INDIRECT, indirect_op, nr_segments as given (any
 * value, not checked), handle = devid, indirect_grefs[0..nr_pages)) and, if
 * nr_data, descriptors i < min(nr_segments, 512 * nr_pages) as whole pages
 * {data_gref[i % nr_data], 0, 7}; id and sector_number are 0: set them.
 * Then simfront_raw_put_req(fe, &ri->req).  Pages are freed at disconnect. */
struct simfront_raw_indirect {
        union simfront_req req;
        unsigned nr_pages, nr_data;
        struct blkif_request_segment *desc[SIMFRONT_MAX_INDIRECT_PAGES];
        uint32_t data_gref[SIMFRONT_MAX_INDIRECT_SEG];
        void *data[SIMFRONT_MAX_INDIRECT_SEG];
};
int simfront_raw_indirect(struct simfront *fe, uint8_t indirect_op, unsigned nr_segments,
                          unsigned nr_pages, unsigned nr_data, struct simfront_raw_indirect *ri);
/* A raw BLKIF_OP_DISCARD (flag e.g. BLKIF_DISCARD_SECURE), in the ring's ABI. */
int simfront_raw_put_discard(struct simfront *fe, uint64_t id, uint64_t sector_number,
                             uint64_t nr_sectors, uint8_t flag);
/* Publish the private producer (push) without notify. */
void simfront_raw_push(struct simfront *fe);
/* Store an arbitrary value in the shared req_prod. */
void simfront_raw_set_req_prod(struct simfront *fe, uint32_t req_prod);
int simfront_raw_notify(struct simfront *fe);
/* Next response, raw, decoded per the ring's ABI: 1 and *ret, 0 on
 * timeout, -errno. */
int simfront_raw_get_response(struct simfront *fe, blkif_response_t *ret, int timeout_ms);
/* Grant reference of an io's data page: read-write or read-only grant. */
uint32_t simfront_io_gref(struct simfront *fe, struct simfront_io *io, unsigned seg, bool readonly);
/* A fresh guest page granted with the given properties (ended: granted then
 * ended, so the ref is stale).  The page is freed at disconnect/free. */
int simfront_raw_grant(struct simfront *fe, uint32_t to_domid, bool readonly, bool ended,
                       uint32_t *ret_gref, void **ret_page);
