/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The mirror filter: partner-assisted storage migration (PASM).
 *
 * "mirror:SPEC" stacks a mirror over the image SPEC opens (the core opens
 * that child first); the migrate job pushes one over the image a device
 * serves (vbd_device_push_filter(), the device paused and drained) and finds
 * it again by name (vbd_device_find_layer(dev, "mirror")).  Idle, it passes
 * every op to the child.  While a migration runs, a background copier
 * streams the image to a partner reached over NBD (libnbd, in the VBD's
 * libev loop), region by region.  A region is unsent, in flight (being
 * copied) or synced.  Guest writes to synced regions are applied locally and
 * forwarded to the partner, and complete when both sides have them; writes
 * to unsent regions stay local (the copier reads them later); a write that
 * touches a region being copied waits for that copy.  Overlapping writes are
 * serialized, so both sides apply them in the same order.  Reads are local.
 * A guest flush is a local flush and an NBD flush.  When every region is
 * synced the migration is ready; cut-over (VBD paused and drained by the
 * caller) copies what is left, flushes both sides and reports.
 *
 * Any partner failure (error reply, connection lost, no answer within the
 * timeout) fails the migration: the partner is dropped at once, guest I/O
 * continues on the local image, and a new migration may be started.  The
 * local image is never written by the mirror itself.
 *
 * Precopy mode, for comparison: nothing is forwarded; writes make their
 * regions unsent again and the copier passes over the image until what is
 * left is small; cut-over then copies the rest while the guest is paused.
 *
 * Files: mirror.c is the guest path (reads, writes local and forwarded,
 * waiting on in-flight regions, the region map) and the filter itself;
 * mirror-copy.c the migration engine (copier, pacing, precopy passes,
 * cut-over, status, progress()); mirror-nbd.c the libnbd glue (connect,
 * commands, the watchers for libnbd's fd, timeouts); mirror-job.c the
 * "migrate" job that drives the API below.
 *
 * Threading: everything runs on the VBD's loop.  libnbd's completion
 * callbacks only record the result and queue the command on done_list;
 * progress() then handles completions, failures, waiting writes, the copier
 * and the cut-over outside of any libnbd call (libnbd must not be re-entered
 * from its own callbacks, and nbd_close() cannot run inside one).
 *
 * Closing: drain() ends a running migration ("closed"), drops the partner
 * (its commands end with ECONNABORTED) and calls vbd_image_drained() once
 * the copier's local reads and a cut-over's local flush have landed; close()
 * only frees.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <ev.h>

#include "vbd/driver.h"
#include "vbd/err.h"
#include "vbd/nbd-watch.h"

/* ---- the API the migrate job uses (img: a mirror layer) ---- */

enum vbd_mirror_state {
        VBD_MIRROR_NONE,       /* never started */
        VBD_MIRROR_CONNECTING, /* connecting to the partner */
        VBD_MIRROR_COPYING,    /* copier running, writes forwarded */
        VBD_MIRROR_READY,      /* everything synced (precopy: little left) */
        VBD_MIRROR_CUTTING,    /* cut-over: final copy and flush */
        VBD_MIRROR_CUTOVER,    /* done: the partner is complete and flushed */
        VBD_MIRROR_FAILED,     /* partner error; see error */
        VBD_MIRROR_ABORTED,    /* abort requested */
};

struct vbd_mirror_params {
        const char *to;       /* libnbd URI of the partner */
        bool precopy;         /* precopy mode instead of PASM */
        unsigned share;       /* percent of the time the copier may use while the guest is busy */
        uint64_t rate;        /* bytes/s cap for the copier, 0 = none */
        uint64_t region;      /* region size, power of two */
        unsigned timeout;     /* seconds a partner command or the connection may take */
        bool zeroed;          /* the partner reads zeroes: send nothing for holes */
        unsigned depth;       /* copier regions in flight when the guest is idle */
        unsigned connections; /* NBD connections when the partner has multi-conn */
        bool shallow;         /* the partner has the backing chain: send only what the
                               * top image holds (not with zeroed) */
};

#define VBD_MIRROR_REGION_MIN     (64u << 10)
#define VBD_MIRROR_REGION_MAX     (64u << 20)
#define VBD_MIRROR_REGION_DEFAULT (1u << 20)
#define VBD_MIRROR_DEPTH_MAX      64
#define VBD_MIRROR_TIMEOUT_MAX    3600
#define VBD_MIRROR_CONN_MAX       8

struct vbd_mirror_status {
        enum vbd_mirror_state state;
        bool precopy, shallow;
        char to[1024];
        char error[256];
        uint64_t size, partner_size, region_size;
        uint64_t regions_total, regions_synced, regions_inflight;
        uint64_t bytes_synced, bytes_copied, bytes_zeroed, bytes_forwarded;
        uint64_t bytes_shallow; /* regions left to the partner's backing chain */
        uint64_t writes_forwarded, writes_waited, passes, dirty_bytes;
        uint64_t forward_requests; /* NBD writes that carried them (coalesced) */
        unsigned partner_inflight;
        unsigned connections;      /* NBD connections up (the first: forwards, flushes) */
        bool multi_conn;           /* the partner advertises it */
        bool partner_connected;    /* the NBD connection is up (it ends after a cut-over) */
        uint64_t elapsed_ms, rate; /* rate: bytes/s of progress, recent */
        int64_t eta_s;             /* -1: unknown */
        int64_t downtime_ms;       /* cut-over: pause to flushed; -1 before */
};

extern const struct vbd_driver vbd_driver_mirror;
/* The "migrate" job (mirror-job.c), offered through vbd_driver_mirror.jobs. */
extern const struct vbd_job_type vbd_job_migrate;

/* Start a migration: -EBUSY while one runs (or the mirror is closing),
 * -EINVAL bad params, -EROFS. */
int vbd_mirror_start(struct vbd_image *img, const struct vbd_mirror_params *p, struct vbd_err *err);
void vbd_mirror_get_status(struct vbd_image *img, struct vbd_mirror_status *ret);
enum vbd_mirror_state vbd_mirror_state(struct vbd_image *img);
const char *vbd_mirror_state_name(enum vbd_mirror_state s);

/*
 * Cut over; the caller has paused and drained the VBD, and the migration is
 * READY (else -EAGAIN).  done(opaque, status) runs once the partner has it
 * all and both sides are flushed (0, state CUTOVER), or the migration
 * failed (-errno, state FAILED).  pause_ns: when the caller paused the VBD
 * (CLOCK_MONOTONIC), for the downtime figure.
 */
int vbd_mirror_cutover(struct vbd_image *img, uint64_t pause_ns,
                       void (*done)(void *opaque, int status), void *opaque);

/* Drop the partner now (-ENOENT when nothing runs); a pending cut-over
 * completes with -ECANCELED. */
int vbd_mirror_abort(struct vbd_image *img);

/* ---- internals shared by mirror.c, mirror-copy.c and mirror-nbd.c ---- */

/* Region map entries. */
enum {
        R_UNSENT = 0,
        R_INFLIGHT = 1,
        R_SYNCED = 2,
        R_STATE = 3,
        R_REDO = 4, /* precopy: written while in flight, send again */
};

#define FWD_WINDOW_BYTES    (64u << 20) /* forwarded data outstanding */
#define FWD_WINDOW_COUNT    1024        /* forwarded writes outstanding */
#define FWD_SEND_MAX        128       /* forwards in libnbd at once (it walks its list per reply) */
#define GUEST_IDLE_NS       50000000u /* no guest I/O for this long: the copier runs at depth */
#define TICK_S              0.25
#define BG_FLUSH_BYTES      (64u << 20)
#define RATE_WINDOW         8  /* samples of progress, one per tick */
#define PRECOPY_MIN_REGIONS 16 /* precopy is ready when at most max(1%, this many) are left */

struct mirror;
struct nbd_handle;

/* One NBD connection to the partner.  conn[0] carries the forwards and the
 * flushes; with multi-conn, conn[1..] carry the copier's writes (conn[0]
 * too while none of them is up). */
struct nconn {
        struct mirror *m;
        struct nbd_handle *h;
        struct vbd_nbd_watch w;
        uint64_t start_ns;
        unsigned idx, inflight; /* commands in flight on it */
        bool ready;             /* connected, checked: takes commands */
        bool dirty;             /* libnbd's direction may have changed: update w */
        bool nocork;            /* not TCP (TCP_CORK refused) */
};

/* One NBD command in flight. */
struct nop {
        struct mirror *m;
        struct nconn *c;
        struct nop *prev, *next; /* m->nops, oldest first */
        struct nop *done_next;
        void (*complete)(struct nop *op);
        uint64_t start_ns;
        int err;
        bool done;
};

/* Per guest io (io->scratch); the child's scratch follows. */
struct mio {
        struct mirror *m;
        struct vbd_io *gio;
        struct mio *prev, *next; /* m->active: write-type ios applied now */
        struct mio *wnext;       /* m->wait_head: write-type ios waiting */
        struct nop nop;          /* the NBD half of a flush */
        uint64_t flush_seq;      /* a flush: forwards before it have seq < this */
        int local_status;
        unsigned pending; /* halves outstanding: local, partner */
        bool active, mark_unsent;
        struct vbd_io cio; /* to the child */
};

/* A migration pushes the mirror over a connected VBD, whose pools keep only
 * a little room per io for a pushed filter (512 bytes today, the core's
 * VBD_IMAGE_STACK_SCRATCH, not part of the ABI): stay well inside it. */
_Static_assert(sizeof(struct mio) <= 256, "struct mio must stay small: see above");

/* A forwarded guest write: its own copy of the data. */
struct fwd {
        struct mirror *m;
        struct fwd *prev, *next;   /* m->fwd_head: outstanding, in arrival order */
        struct fwd *bprev, *bnext; /* m->fbucket[first region]: found by range */
        struct fwd *qprev, *qnext; /* m->fq_head: not sent yet, in arrival order */
        uint64_t seq, off, len;
        unsigned nwrites; /* guest writes it carries (contiguous ones coalesced) */
        bool sent;        /* else queued: until the loop pass ends, behind an
                           * overlapping earlier one, or while conn[0] is full */
        struct nop nop;
        uint8_t data[];
};

enum { SLOT_FREE, SLOT_READING, SLOT_SENDING };

/* One region being copied. */
struct slot {
        struct mirror *m;
        int state;
        unsigned gen; /* the migration it copies for (m->gen) */
        uint64_t region, off, len, start_ns;
        void *buf;
        struct nop nop;
        struct iovec iov;
        struct vbd_io cio;
        void *cscratch;
};

struct mirror {
        struct vbd_image *self;
        struct ev_loop *loop;
        struct vbd_info info;

        enum vbd_mirror_state state;
        struct vbd_mirror_params p;
        char to[1024], error[256];
        struct nconn conn[VBD_MIRROR_CONN_MAX];
        unsigned nconn;   /* conn[0..nconn) were opened (some may be closed) */
        unsigned copy_rr; /* the copier connection used last */
        bool can_zero, can_fua, multi_conn;
        uint64_t partner_size;
        ev_timer tick_w, pace_w;
        bool tick_on, pace_on;
        ev_prepare pump_w; /* sends the queued forwards once per loop pass */
        bool pump_on;

        /* Region map. */
        uint8_t *rmap;
        uint64_t nregions, cursor, nunsent, ninflight, nsynced;
        bool picked; /* a region was picked since the cursor last wrapped */
        unsigned rshift;

        /* Guest I/O. */
        struct mio *active;
        struct mio *wait_head, **wait_tail;
        unsigned guest_inflight;
        struct mio *flush_head, **flush_tail; /* flushes waiting for earlier forwards */
        unsigned nflush;                      /* ... and those sent */

        /* Forwarded writes outstanding. */
        struct fwd *fwd_head, *fwd_tail;
        struct fwd *fq_head, *fq_tail; /* not sent yet */
        struct fwd **fbucket;          /* per region, the forwards starting there */
        uint64_t fwd_span;             /* most regions after its first one a forward has reached */
        unsigned nfwd, fqueued;        /* outstanding; of which not sent yet */
        uint64_t fwd_bytes, fwd_seq;
        uint64_t last_guest_ns;

        /* NBD commands. */
        struct nop *nops, *nops_tail, *done_list;
        unsigned nnops;

        /* Copier. */
        struct slot slots[VBD_MIRROR_DEPTH_MAX];
        unsigned slots_busy; /* including reads of an earlier migration still landing */
        unsigned gen;        /* migrations started */
        size_t cscratch;
        uint64_t next_copy_ns, rate_next_ns;

        /* Cut-over. */
        void (*cut_done)(void *opaque, int status);
        void *cut_opaque;
        uint64_t cut_pause_ns;
        int cut_flush; /* -1: not started; else halves outstanding */
        int cut_status;
        bool cut_partner_done; /* the final NBD flush was answered: the partner has it all */
        bool cut_local;        /* the local flush is in flight */
        struct vbd_io cut_io;
        void *cut_scratch;
        struct nop cut_nop;

        /* Background partner flush, so that the final one has little to do. */
        struct nop bg_nop;
        bool bg_flushing;
        uint64_t bg_bytes; /* written to the partner since the last one */

        /* Failure noticed inside a callback, handled by progress(). */
        bool fail_pending;
        int fail_err;
        char fail_msg[256];

        bool in_progress, again;
        /* drain() called; running; nothing in flight any more (reported by
         * drain() itself, or from the loop with drain_w: never from a
         * child's completion, since the core may close the stack then). */
        bool draining, in_drain, drained;
        ev_timer drain_w;

        /* Figures. */
        uint64_t start_ns, end_ns, bytes_copied, bytes_zeroed, bytes_forwarded, bytes_shallow;
        uint64_t writes_forwarded, writes_waited, passes, dirty_bytes, forward_requests;
        int64_t downtime_ms;
        uint64_t rate_bytes[RATE_WINDOW], rate_ns[RATE_WINDOW];
        unsigned rate_n;
};

/* Is a migration running (the partner is, or is being, connected)? */
static inline bool mirror_running(const struct mirror *m)
{
        return m->state >= VBD_MIRROR_CONNECTING && m->state <= VBD_MIRROR_CUTOVER;
}

/* Connected and taking commands. */
static inline bool mirror_linked(const struct mirror *m)
{
        return mirror_running(m) && m->state != VBD_MIRROR_CONNECTING && m->conn[0].h;
}

/* The partner has everything, flushed (cut over, or the final flush was
 * answered): its connection ending now fails nothing. */
static inline bool mirror_partner_done(const struct mirror *m)
{
        return m->state == VBD_MIRROR_CUTOVER ||
               (m->state == VBD_MIRROR_CUTTING && m->cut_partner_done);
}

static inline uint64_t mirror_region_off(const struct mirror *m, uint64_t r)
{
        return r << m->rshift;
}

static inline uint64_t mirror_region_len(const struct mirror *m, uint64_t r)
{
        uint64_t off = mirror_region_off(m, r), len = (uint64_t)1 << m->rshift;

        return off + len > m->info.size ? m->info.size - off : len;
}

static inline bool mirror_overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
        return a < b + blen && b < a + alen;
}

/* mirror.c: the region map and the guest path. */
void mirror_set_region(struct mirror *m, uint64_t r, int st);
/* An outstanding forward older than seq (all: UINT64_MAX) overlapping [off, off + len). */
struct fwd *mirror_fwd_overlap(const struct mirror *m, uint64_t off, uint64_t len, uint64_t seq);
/* Start the waiting writes that need not wait any more. */
void mirror_release_waiters(struct mirror *m);
/* The partner is gone: forwards and flushes never sent are over. */
void mirror_guest_partner_gone(struct mirror *m);
/* Send the queued forwards that may go now (at the end of a loop pass). */
void mirror_fwd_pump(struct mirror *m);
/* Run mirror_fwd_pump() at the end of this loop pass. */
void mirror_fwd_want_pump(struct mirror *m);

/* mirror-copy.c: the migration engine. */
void mirror_copy_init(struct mirror *m);
/* Handle everything that is due; may call vbd_image_drained() last. */
void mirror_progress(struct mirror *m);
/* Record a failure, handled by the next mirror_progress(). */
void mirror_fail(struct mirror *m, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* End the migration now (state FAILED or ABORTED), dropping the partner. */
void mirror_finish(struct mirror *m, enum vbd_mirror_state st, int err, const char *msg);
/* Once per tick: progress figures and the background flush. */
void mirror_copy_tick(struct mirror *m, uint64_t now);
/* Free the region map and the copier's idle buffers. */
void mirror_copy_reset(struct mirror *m);

/* mirror-nbd.c: the libnbd glue. */
void mirror_nbd_init(struct mirror *m);
/* Create conn[0]'s handle and start connecting it to m->to.  0, or -errno
 * + err with the handle closed.  Once it is up and the partner advertises
 * multi-conn, the copier's connections (p.connections - 1) follow. */
int mirror_nbd_connect(struct mirror *m, struct vbd_err *err);
/* conn[0] is up (nbd_aio_is_ready): check the export, start copying. */
void mirror_nbd_connected(struct mirror *m);
bool mirror_nbd_ready(struct mirror *m);
/* The connection for the copier's next write: the least busy copier
 * connection that is up, else conn[0]. */
struct nconn *mirror_nbd_copy_conn(struct mirror *m);
/* Connections up. */
unsigned mirror_nbd_nconns(const struct mirror *m);
/* TCP_CORK on c's socket (on: hold partial segments until off).  True if
 * it took (a TCP socket). */
bool mirror_nbd_cork(struct nconn *c, bool on);
/* Asynchronous commands on c: complete(op) runs later from mirror_progress(),
 * with op->err 0 or an errno (ECONNABORTED: the partner was dropped). */
void mirror_nbd_pwrite(struct nconn *c, struct nop *op, const void *buf, uint64_t len, uint64_t off,
                       void (*complete)(struct nop *op), const char *what);
void mirror_nbd_zero(struct nconn *c, struct nop *op, uint64_t len, uint64_t off,
                     void (*complete)(struct nop *op));
/* A flush on conn[0]: with one connection it covers what it carried; with
 * several, the partner's multi-conn makes it cover every write answered on
 * any of them before it was sent (the NBD spec's NBD_FLAG_CAN_MULTI_CONN). */
void mirror_nbd_flush(struct mirror *m, struct nop *op, void (*complete)(struct nop *op),
                      const char *what);
/* Run the completions recorded by libnbd's callbacks. */
void mirror_nbd_process_done(struct mirror *m);
/* Watch libnbd's fd for what it waits for now (nothing without a handle). */
void mirror_nbd_watch(struct mirror *m);
/* After the cut-over: end the connection cleanly (NBD_CMD_DISC), without
 * failing the migration; the handle is dropped once it is closed. */
void mirror_nbd_disconnect(struct mirror *m);
/* Close the handles; their commands complete with ECONNABORTED. */
void mirror_nbd_drop(struct mirror *m);
/* Timers that do not keep the loop alive. */
void mirror_timer_start(struct mirror *m, ev_timer *w, bool *on, double after);
void mirror_timer_stop(struct mirror *m, ev_timer *w, bool *on);
