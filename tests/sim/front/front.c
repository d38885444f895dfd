/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The simulated blkfront: a guest domain's block frontend on the simulated
 * hypervisor, talking to vbdd-sim through xenstore, a shared ring in granted
 * guest pages and an event channel.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenevtchn.h>
#include <xenstore.h>

#include "simfront.h"
#include "simfront-internal.h"
#include "simxen.h"
#include "vbd/macro.h"
#include "vbd/time.h"

/* Barriers for the ring macros (x86-TSO and others alike). */
#undef xen_mb
#undef xen_rmb
#undef xen_wmb
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

#define MAX_RING_ORDER 4
#define MAX_RING_PAGES (1u << MAX_RING_ORDER)
#define WAIT_SLICE_MS  50
/* Grant entries kept free for raw grants (hostile tests) when deciding
 * whether the data pages can be pre-granted. */
#define RAW_GRANT_RESERVE 512u
#define SIM_NR_GRANTS     (4096u - 8u) /* xensim: 4096 per domain, 0..7 reserved */
#define SRING_HDR_SIZE    64u
#define DISCARD_MAX       (1u << 30)

/*
 * Wire layouts (offsets in bytes) of blkif.h in the two x86 ABIs.  i386
 * aligns uint64_t to 4 bytes, so its fields move up after handle.
 *                      x86_64  i386
 *   rw:       id         8      4     sector 16 / 12, seg[11] 24 / 20
 *   indirect: id         8      4     sector 16 / 12, handle 24 / 20,
 *                                     indirect_grefs[8] 28 / 24
 *   discard:  id         8      4     sector 16 / 12, nr_sectors 24 / 20
 *   response: id 0, operation 8, status 10 in both; 16 / 12 bytes.
 * Ring entries (unions) are 112 / 108 bytes after a 64-byte header.
 */
#define ENT_SIZE_64 112u
#define ENT_SIZE_32 108u
_Static_assert(sizeof(blkif_request_t) == ENT_SIZE_64, "native blkif request is x86_64");
_Static_assert(offsetof(blkif_sring_t, ring) == SRING_HDR_SIZE, "sring header");
_Static_assert(sizeof(struct blkif_request_segment) == 8, "segment");
_Static_assert(offsetof(blkif_request_t, seg) == 24, "x86_64 rw layout");
_Static_assert(offsetof(blkif_request_indirect_t, indirect_grefs) == 28, "x86_64 indirect");
_Static_assert(offsetof(blkif_request_discard_t, nr_sectors) == 24, "x86_64 discard");

enum io_state { IO_FREE, IO_OWNED, IO_INFLIGHT };

struct slot {
        struct simfront_io io;
        enum io_state state;
        uint16_t gen;
        uint16_t granted; /* per-request grants held (in gref_rw[]) */
        bool indirect;    /* in flight as BLKIF_OP_INDIRECT */
};

struct raw_grant {
        uint32_t pfn, gref;
        bool ended;
};

/* One queue (blkif multi-queue): its ring, event channel and free ios. */
struct fq {
        uint32_t ring_pfn[MAX_RING_PAGES], ring_gref[MAX_RING_PAGES];
        unsigned ring_granted, ring_allocated;
        blkif_sring_t *sring;
        blkif_front_ring_t ring; /* indices only; entries via ring_entry() */
        evtchn_port_t port;
        bool port_bound;
        unsigned *free_stack, nr_free; /* its ios: slot i is on queue i % nq */
};

struct simfront {
        struct simfront_env *env;
        struct simxen *sx;
        struct xs_handle *xsh;
        struct simfront_opts o;
        char fe[256], be[256];
        char err[512];
        int (*check)(void *opaque);
        void *check_opaque;
        bool watching;
        struct simfront_disk disk;
        bool prepared, connected;

        unsigned ring_order, ring_pages;
        struct fq q[SIMFRONT_MAX_QUEUES];
        unsigned nq;     /* queues in use (1 until prepared) */
        unsigned rawq;   /* the queue the raw_* calls act on */
        unsigned next_q; /* simfront_io_get: round robin */
        enum simfront_abi abi;
        size_t ent_size;

        xenevtchn_handle *xce; /* every queue's port */
        int evfd;

        unsigned nr_slots, segs;
        unsigned ind_per_slot; /* indirect descriptor pages per slot (0 or 1) */
        bool use_indirect, indirect_always;
        uint32_t *ind_pfn, *ind_gref; /* nr_slots * ind_per_slot */
        unsigned ind_allocated, ind_granted;
        char notice[256];
        char mq_notice[96];
        struct slot *slots;
        void **pages;                /* nr_slots * segs */
        uint32_t *pfns;              /* nr_slots * segs */
        uint32_t *gref_rw, *gref_ro; /* per-request mode: gref_rw = current grants */
        unsigned pages_allocated, grants_rw, grants_ro;
        bool pregranted;
        unsigned inflight;

        struct raw_grant *raw;
        unsigned nr_raw;

        struct simfront_stats st;
};

static int seterr(struct simfront *fe, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int seterr(struct simfront *fe, int r, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(fe->err, sizeof(fe->err), fmt, ap);
        va_end(ap);
        return r;
}

const char *simfront_errmsg(struct simfront *fe)
{
        return fe->err;
}

void simfront_set_check(struct simfront *fe, int (*check)(void *opaque), void *opaque)
{
        fe->check = check;
        fe->check_opaque = opaque;
}

const char *simfront_frontend_path(struct simfront *fe)
{
        return fe->fe;
}

const char *simfront_backend_path(struct simfront *fe)
{
        return fe->be;
}

const struct simfront_disk *simfront_disk(struct simfront *fe)
{
        return &fe->disk;
}

uint64_t simfront_size(struct simfront *fe)
{
        return fe->disk.sectors * SIMFRONT_SECTOR;
}

unsigned simfront_ring_size(struct simfront *fe)
{
        return fe->prepared ? fe->q[0].ring.nr_ents : 0;
}

unsigned simfront_inflight(struct simfront *fe)
{
        return fe->inflight;
}

unsigned simfront_queue_depth(struct simfront *fe)
{
        return fe->nr_slots;
}

unsigned simfront_max_segments(struct simfront *fe)
{
        return fe->prepared ? fe->segs : fe->o.max_segments;
}

bool simfront_indirect(struct simfront *fe)
{
        return fe->use_indirect;
}

enum simfront_abi simfront_abi(struct simfront *fe)
{
        return fe->abi;
}

const char *simfront_notice(struct simfront *fe)
{
        return fe->notice;
}

static inline void *ring_entry(struct simfront *fe, struct fq *q, RING_IDX i)
{
        return (char *)q->sring + SRING_HDR_SIZE +
               (size_t)(i & (q->ring.nr_ents - 1)) * fe->ent_size;
}

/* The queue of the raw_* calls. */
static inline struct fq *rawq(struct simfront *fe)
{
        return &fe->q[fe->rawq];
}

unsigned simfront_queues(struct simfront *fe)
{
        return fe->nq;
}

int simfront_raw_select_queue(struct simfront *fe, unsigned q)
{
        if (q >= fe->nq)
                return seterr(fe, -EINVAL, "queue %u of %u", q, fe->nq);
        fe->rawq = q;
        return 0;
}

bool simfront_connected(struct simfront *fe)
{
        return fe->connected;
}

void simfront_get_stats(struct simfront *fe, struct simfront_stats *ret)
{
        *ret = fe->st;
}

/* ------------------------------------------------------------------------ */
/* xenstore, as the guest */

int simfront_xs_write(struct simfront *fe, const char *key, const char *value)
{
        char path[512];

        snprintf(path, sizeof(path), "%s/%s", fe->fe, key);
        if (!xs_write(fe->xsh, XBT_NULL, path, value, strlen(value)))
                return seterr(fe, -errno, "xenstore write %s: %s", path, strerror(errno));
        return 0;
}

int simfront_xs_rm(struct simfront *fe, const char *key)
{
        char path[512];

        snprintf(path, sizeof(path), "%s/%s", fe->fe, key);
        if (!xs_rm(fe->xsh, XBT_NULL, path) && errno != ENOENT)
                return seterr(fe, -errno, "xenstore rm %s: %s", path, strerror(errno));
        return 0;
}

char *simfront_xs_read_backend(struct simfront *fe, const char *key)
{
        char path[512];
        unsigned len;

        snprintf(path, sizeof(path), "%s/%s", fe->be, key);
        return xs_read(fe->xsh, XBT_NULL, path, &len);
}

int simfront_set_state(struct simfront *fe, int state)
{
        char v[16];

        snprintf(v, sizeof(v), "%d", state);
        return simfront_xs_write(fe, "state", v);
}

/* Parse an unsigned decimal; -EINVAL on garbage. */
static int parse_u64(const char *s, uint64_t *ret)
{
        char *end;
        unsigned long long x;

        if (!s || !*s || *s == '-' || *s == ' ')
                return -EINVAL;
        errno = 0;
        x = strtoull(s, &end, 10);
        if (errno || *end)
                return -EINVAL;
        *ret = x;
        return 0;
}

/* Backend state; 0 (Unknown) when the node is missing. */
int simfront_backend_state(struct simfront *fe)
{
        char *v = simfront_xs_read_backend(fe, "state");
        uint64_t x;
        int r;

        if (!v)
                return errno == ENOENT ? 0 : -errno;
        r = parse_u64(v, &x);
        free(v);
        if (r < 0 || x > 255)
                return 0;
        return (int)x;
}

static void drain_watch(struct simfront *fe)
{
        char **w;

        while ((w = xs_check_watch(fe->xsh)))
                free(w);
}

static int ensure_watch(struct simfront *fe)
{
        char path[512];

        if (fe->watching)
                return 0;
        snprintf(path, sizeof(path), "%s/state", fe->be);
        if (!xs_watch(fe->xsh, path, "simfront-be-state"))
                return seterr(fe, -errno, "xenstore watch %s: %s", path, strerror(errno));
        fe->watching = true;
        return 0;
}

static const char *state_name(int s)
{
        static const char *names[] = {"Unknown",   "Initialising", "InitWait", "Initialised",
                                      "Connected", "Closing",      "Closed"};

        return s >= 0 && s <= 6 ? names[s] : "?";
}

/* Wait until the backend state is in want (bit mask of states); fail early
 * if it is in fail. */
static int wait_be(struct simfront *fe, unsigned want, unsigned fail, int timeout_ms,
                   const char *what)
{
        uint64_t deadline = vbd_now_ns() + (uint64_t)timeout_ms * 1000000u;
        int s, r;

        r = ensure_watch(fe);
        if (r < 0)
                return r;
        for (;;) {
                struct pollfd p = {.fd = xs_fileno(fe->xsh), .events = POLLIN};
                uint64_t now;
                int ms;

                s = simfront_backend_state(fe);
                if (s < 0)
                        return seterr(fe, s, "reading backend state: %s", strerror(-s));
                if (want & (1u << s))
                        return s;
                if (fail & (1u << s))
                        return seterr(fe, -ECONNRESET,
                                      "backend went to state %d (%s) while waiting for %s", s,
                                      state_name(s), what);
                if (fe->check) {
                        r = fe->check(fe->check_opaque);
                        if (r < 0)
                                return seterr(fe, r, "the backend went away while waiting for %s",
                                              what);
                }
                now = vbd_now_ns();
                if (now >= deadline)
                        return seterr(fe, -ETIMEDOUT,
                                      "timeout (%d ms) waiting for %s; backend state %d (%s)",
                                      timeout_ms, what, s, state_name(s));
                ms = (int)((deadline - now) / 1000000u) + 1;
                if (ms > WAIT_SLICE_MS)
                        ms = WAIT_SLICE_MS;
                if (p.fd >= 0 && poll(&p, 1, ms) > 0)
                        drain_watch(fe);
                else if (p.fd < 0)
                        simfront_sleep_ms(ms);
        }
}

int simfront_wait_backend_state(struct simfront *fe, int state, int timeout_ms)
{
        char what[32];
        int r;

        snprintf(what, sizeof(what), "state %d", state);
        r = wait_be(fe, 1u << state, 0, timeout_ms, what);
        return r < 0 ? r : 0;
}

/* ------------------------------------------------------------------------ */
/* Construction */

struct simfront *simfront_new(struct simfront_env *env, const struct simfront_opts *o)
{
        struct simfront *fe;
        char arg[16], path[512], *res;
        unsigned len;
        int e;

        if (o->ring_order > MAX_RING_ORDER || o->max_segments > SIMFRONT_MAX_INDIRECT_SEG ||
            o->queues > SIMFRONT_MAX_QUEUES) {
                errno = EINVAL;
                return NULL;
        }
        fe = calloc(1, sizeof(*fe));
        if (!fe)
                return NULL;
        fe->env = env;
        fe->sx = simfront_env_xen(env);
        fe->o = *o;
        if (!fe->o.max_segments)
                fe->o.max_segments = SIMFRONT_MAX_SEG;
        if (!fe->o.timeout_ms)
                fe->o.timeout_ms = 10000;
        if (!fe->o.max_data_pages)
                fe->o.max_data_pages = SIMFRONT_DEFAULT_DATA_PAGES;
        fe->abi = o->protocol && !strcmp(o->protocol, "x86_32-abi") ? SIMFRONT_ABI_X86_32
                                                                    : SIMFRONT_ABI_X86_64;
        fe->ent_size = fe->abi == SIMFRONT_ABI_X86_32 ? ENT_SIZE_32 : ENT_SIZE_64;
        fe->evfd = -1;
        fe->nq = 1;
        snprintf(fe->fe, sizeof(fe->fe), "/local/domain/%u/device/vbd/%u", o->domid, o->devid);

        /* libxenstore takes the socket from the environment at open. */
        if (setenv("XENSTORED_PATH", simfront_env_xs_path(env), 1) < 0)
                goto fail;
        fe->xsh = xs_open(XS_OPEN_SOCKETONLY);
        if (!fe->xsh)
                goto fail;
        snprintf(arg, sizeof(arg), "%u", o->domid);
        res = xs_control_command(fe->xsh, "sim-domid", arg, strlen(arg) + 1);
        if (!res)
                goto fail;
        free(res);

        snprintf(path, sizeof(path), "%s/backend", fe->fe);
        res = xs_read(fe->xsh, XBT_NULL, path, &len);
        if (!res)
                goto fail;
        if (len >= sizeof(fe->be)) {
                free(res);
                errno = ENAMETOOLONG;
                goto fail;
        }
        strcpy(fe->be, res);
        free(res);
        return fe;
fail:
        e = errno;
        if (fe->xsh)
                xs_close(fe->xsh);
        free(fe);
        errno = e;
        return NULL;
}

/* ------------------------------------------------------------------------ */
/* Resources: ring, event channel, data pages */

static int end_grant(struct simfront *fe, uint32_t gref, uint64_t deadline)
{
        int r;

        for (;;) {
                r = simxen_grant_end(fe->sx, fe->o.domid, gref);
                if (r != -EBUSY || vbd_now_ns() >= deadline)
                        return r;
                simfront_sleep_ms(1);
        }
}

/* Undo prepare.  Grants still mapped by the backend after the deadline
 * are leaked (and so are their pages), never freed under its feet. */
static int teardown(struct simfront *fe)
{
        uint64_t deadline = vbd_now_ns() + 2000000000ull;
        unsigned leaked = 0, i, n = fe->nr_slots * fe->segs;
        int r;

        if (fe->watching) {
                char path[512];

                snprintf(path, sizeof(path), "%s/state", fe->be);
                (void)xs_unwatch(fe->xsh, path, "simfront-be-state");
                fe->watching = false;
        }
        if (fe->xce) {
                for (unsigned k = 0; k < SIMFRONT_MAX_QUEUES; k++) {
                        if (fe->q[k].port_bound)
                                (void)xenevtchn_unbind(fe->xce, fe->q[k].port);
                        fe->q[k].port_bound = false;
                }
                xenevtchn_close(fe->xce);
                fe->xce = NULL;
                fe->evfd = -1;
        }
        for (i = 0; !fe->pregranted && i < fe->nr_slots; i++) {
                struct slot *s = &fe->slots[i];

                for (unsigned k = 0; k < s->granted; k++)
                        if (end_grant(fe, fe->gref_rw[i * fe->segs + k], deadline) == -EBUSY) {
                                /* keep the page: it is still mapped */
                                fe->pfns[i * fe->segs + k] = UINT32_MAX;
                                leaked++;
                        }
                s->granted = 0;
        }
        for (i = 0; i < n; i++) {
                bool busy = false;

                if (fe->pfns[i] == UINT32_MAX)
                        continue;
                if (i < fe->grants_rw && end_grant(fe, fe->gref_rw[i], deadline) == -EBUSY)
                        busy = true;
                if (i < fe->grants_ro && end_grant(fe, fe->gref_ro[i], deadline) == -EBUSY)
                        busy = true;
                if (busy)
                        leaked++;
                else if (i < fe->pages_allocated)
                        (void)simxen_page_free(fe->sx, fe->o.domid, fe->pfns[i]);
        }
        for (i = 0; i < fe->ind_allocated; i++) {
                if (i < fe->ind_granted && end_grant(fe, fe->ind_gref[i], deadline) == -EBUSY) {
                        leaked++;
                        continue;
                }
                (void)simxen_page_free(fe->sx, fe->o.domid, fe->ind_pfn[i]);
        }
        for (unsigned k = 0; k < SIMFRONT_MAX_QUEUES; k++) {
                struct fq *q = &fe->q[k];

                for (i = 0; i < q->ring_allocated; i++) {
                        if (i < q->ring_granted &&
                            end_grant(fe, q->ring_gref[i], deadline) == -EBUSY) {
                                leaked++;
                                continue;
                        }
                        (void)simxen_page_free(fe->sx, fe->o.domid, q->ring_pfn[i]);
                }
                q->ring_allocated = q->ring_granted = 0;
                q->sring = NULL;
                free(q->free_stack);
                q->free_stack = NULL;
                q->nr_free = 0;
        }
        for (i = 0; i < fe->nr_raw; i++) {
                if (!fe->raw[i].ended && end_grant(fe, fe->raw[i].gref, deadline) == -EBUSY) {
                        leaked++;
                        continue;
                }
                (void)simxen_page_free(fe->sx, fe->o.domid, fe->raw[i].pfn);
        }
        free(fe->raw);
        fe->raw = NULL;
        fe->nr_raw = 0;
        fe->pages_allocated = fe->grants_rw = fe->grants_ro = 0;
        fe->ind_allocated = fe->ind_granted = 0;
        free(fe->ind_pfn);
        free(fe->ind_gref);
        fe->ind_pfn = fe->ind_gref = NULL;
        fe->ind_per_slot = 0;
        fe->use_indirect = false;
        free(fe->slots);
        free(fe->pages);
        free(fe->pfns);
        free(fe->gref_rw);
        free(fe->gref_ro);
        fe->slots = NULL;
        fe->pages = NULL;
        fe->pfns = fe->gref_rw = fe->gref_ro = NULL;
        fe->nr_slots = fe->inflight = 0;
        fe->nq = 1;
        fe->rawq = fe->next_q = 0;
        fe->prepared = fe->connected = fe->pregranted = false;
        r = 0;
        if (leaked)
                r = seterr(fe, -EBUSY, "%u grants still mapped by the backend; pages leaked",
                           leaked);
        return r;
}

/* 2^order guest pages whose mappings in this process are contiguous. */
static int alloc_ring(struct simfront *fe, struct fq *q)
{
        uint32_t junk[8 * MAX_RING_PAGES];
        unsigned nj = 0, i, attempt;
        int r = 0;

        for (attempt = 0; attempt < 8; attempt++) {
                bool ok = true;

                for (i = 0; i < fe->ring_pages; i++) {
                        r = simxen_page_alloc(fe->sx, fe->o.domid, &q->ring_pfn[i]);
                        if (r < 0) {
                                q->ring_allocated = i;
                                seterr(fe, r, "allocating ring page: %s", strerror(-r));
                                goto out;
                        }
                }
                q->ring_allocated = fe->ring_pages;
                for (i = 1; i < fe->ring_pages; i++)
                        if ((char *)simxen_page(fe->sx, q->ring_pfn[i]) !=
                            (char *)simxen_page(fe->sx, q->ring_pfn[0]) + i * SIMFRONT_PAGE)
                                ok = false;
                if (ok && simxen_page(fe->sx, q->ring_pfn[0]))
                        goto out;
                for (i = 0; i < fe->ring_pages; i++)
                        junk[nj++] = q->ring_pfn[i];
                q->ring_allocated = 0;
        }
        r = seterr(fe, -ENOMEM, "no %u contiguous guest pages for the ring", fe->ring_pages);
out:
        for (i = 0; i < nj; i++)
                (void)simxen_page_free(fe->sx, fe->o.domid, junk[i]);
        return r;
}

static int read_disk_info(struct simfront *fe)
{
        static const char *const keys[] = {"sectors",
                                           "sector-size",
                                           "physical-sector-size",
                                           "info",
                                           "feature-flush-cache",
                                           "feature-barrier",
                                           "max-ring-page-order",
                                           "feature-max-indirect-segments",
                                           "feature-discard",
                                           "discard-granularity",
                                           "discard-alignment",
                                           "discard-secure",
                                           "multi-queue-max-queues"};
        enum { NKEYS = VBD_ARRAY_SIZE(keys) };
        uint64_t val[NKEYS];
        bool have[NKEYS];
        char *v;
        int r;

        memset(&fe->disk, 0, sizeof(fe->disk));
        for (unsigned i = 0; i < NKEYS; i++) {
                v = simfront_xs_read_backend(fe, keys[i]);
                have[i] = v != NULL;
                if (!v)
                        continue;
                r = parse_u64(v, &val[i]);
                if (r < 0) {
                        r = seterr(fe, -EPROTO, "backend %s '%s' is not a number", keys[i], v);
                        free(v);
                        return r;
                }
                free(v);
        }
        if (!have[0])
                return seterr(fe, -EPROTO, "backend did not publish sectors");
        fe->disk.sectors = val[0];
        fe->disk.sector_size = have[1] ? (uint32_t)val[1] : 512;
        if (fe->disk.sector_size < 512 || (fe->disk.sector_size & (fe->disk.sector_size - 1)))
                return seterr(fe, -EPROTO, "backend sector-size %u is not a power of two >= 512",
                              fe->disk.sector_size);
        fe->disk.physical_sector_size = have[2] ? (uint32_t)val[2] : fe->disk.sector_size;
        fe->disk.info = have[3] ? (uint32_t)val[3] : 0;
        fe->disk.flush = have[4] && val[4];
        fe->disk.barrier = have[5] && val[5];
        fe->disk.max_ring_page_order = have[6] ? (int)(val[6] > 16 ? 16 : val[6]) : -1;
        fe->disk.max_indirect_segments = have[7] ? (unsigned)(val[7] > 65535 ? 65535 : val[7]) : 0;
        fe->disk.discard = have[8] && val[8];
        fe->disk.discard_granularity = have[9] ? (uint32_t)(val[9] > UINT32_MAX ? 0 : val[9]) : 0;
        fe->disk.discard_alignment = have[10] ? (uint32_t)(val[10] > UINT32_MAX ? 0 : val[10]) : 0;
        fe->disk.discard_secure = have[11] && val[11];
        fe->disk.max_queues = have[12] ? (unsigned)(val[12] > 65535 ? 65535 : val[12]) : 0;
        v = simfront_xs_read_backend(fe, "mode");
        if (v) {
                snprintf(fe->disk.mode, sizeof(fe->disk.mode), "%s", v);
                free(v);
        }
        return 0;
}

/* Segments per request and whether to use BLKIF_OP_INDIRECT, from the
 * options and what the backend offers; notes any change in fe->notice. */
static void choose_segments(struct simfront *fe)
{
        unsigned want = fe->o.max_segments, offer = fe->disk.max_indirect_segments;
        size_t nl;

        fe->notice[0] = 0;
        fe->segs = want;
        if (want > SIMFRONT_MAX_SEG && offer < want) {
                fe->segs = offer > SIMFRONT_MAX_SEG ? offer : SIMFRONT_MAX_SEG;
                if (offer)
                        snprintf(fe->notice, sizeof(fe->notice),
                                 "max_segments %u clamped to %u: the backend offers "
                                 "feature-max-indirect-segments %u",
                                 want, fe->segs, offer);
                else
                        snprintf(fe->notice, sizeof(fe->notice),
                                 "max_segments %u clamped to %u: the backend offers no "
                                 "feature-max-indirect-segments",
                                 want, fe->segs);
        }
        fe->use_indirect = offer && (fe->segs > SIMFRONT_MAX_SEG || fe->o.indirect_always);
        nl = strlen(fe->notice);
        if (fe->o.indirect_always && !offer)
                snprintf(fe->notice + nl, sizeof(fe->notice) - nl,
                         "%sindirect_always ignored: the backend offers no "
                         "feature-max-indirect-segments",
                         nl ? "; " : "");
        if (fe->use_indirect && fe->segs > offer) {
                nl = strlen(fe->notice);
                snprintf(fe->notice + nl, sizeof(fe->notice) - nl,
                         "%smax_segments %u clamped to %u (feature-max-indirect-segments)",
                         nl ? "; " : "", fe->segs, offer);
                fe->segs = offer;
        }
        fe->indirect_always = fe->use_indirect && fe->o.indirect_always;
        fe->ind_per_slot = fe->use_indirect
                               ? (fe->segs + (unsigned)SIMFRONT_SEGS_PER_INDIRECT - 1) /
                                     (unsigned)SIMFRONT_SEGS_PER_INDIRECT
                               : 0;
}

int simfront_prepare(struct simfront *fe)
{
        unsigned i, n, per, n_ind;
        size_t nl;
        int r;

        if (fe->prepared)
                return seterr(fe, -EALREADY, "already prepared");
        /* A reconnect (guest reboot) starts from Initialising again. */
        {
                char path[512], *v;
                unsigned len;

                snprintf(path, sizeof(path), "%s/state", fe->fe);
                v = xs_read(fe->xsh, XBT_NULL, path, &len);
                if (!v || strcmp(v, "1")) {
                        r = simfront_set_state(fe, SIMFRONT_XB_INITIALISING);
                        if (r < 0) {
                                free(v);
                                return r;
                        }
                }
                free(v);
        }
        r = wait_be(fe, 1u << SIMFRONT_XB_INITWAIT, 0, fe->o.timeout_ms, "backend InitWait");
        if (r < 0)
                return r;
        r = read_disk_info(fe);
        if (r < 0)
                return r;
        if (fe->o.ring_order > 0 && (int)fe->o.ring_order > fe->disk.max_ring_page_order)
                return seterr(fe, -EOPNOTSUPP,
                              "ring order %u requested but backend max-ring-page-order is %d",
                              fe->o.ring_order, fe->disk.max_ring_page_order);

        fe->prepared = true; /* from here on, teardown() undoes */
        fe->ring_order = fe->o.ring_order;
        fe->ring_pages = 1u << fe->ring_order;
        /* Queues: what was asked, at most what the backend offers (as
         * Linux's blkfront does); one without multi-queue-max-queues. */
        fe->nq = fe->o.queues ? fe->o.queues : 1;
        if (fe->nq > 1 && fe->nq > fe->disk.max_queues) {
                unsigned want = fe->nq;

                fe->nq = fe->disk.max_queues ? fe->disk.max_queues : 1;
                snprintf(fe->mq_notice, sizeof(fe->mq_notice),
                         "queues %u clamped to %u: the backend offers %s%u", want, fe->nq,
                         fe->disk.max_queues ? "multi-queue-max-queues " : "no multi-queue, ",
                         fe->disk.max_queues ? fe->disk.max_queues : 1u);
        } else {
                fe->mq_notice[0] = 0;
        }
        fe->rawq = fe->next_q = 0;
        fe->xce = simxen_evtchn_open_as(fe->sx, fe->o.domid);
        if (!fe->xce) {
                r = seterr(fe, -errno, "opening event channel as dom%u: %s", fe->o.domid,
                           strerror(errno));
                goto fail;
        }
        fe->evfd = xenevtchn_fd(fe->xce);
        /* Polled, so non-blocking, as a real evtchn user must set it. */
        (void)fcntl(fe->evfd, F_SETFL, fcntl(fe->evfd, F_GETFL) | O_NONBLOCK);
        for (unsigned k = 0; k < fe->nq; k++) {
                struct fq *q = &fe->q[k];
                size_t ents;

                r = alloc_ring(fe, q);
                if (r < 0)
                        goto fail;
                for (i = 0; i < fe->ring_pages; i++) {
                        r = simxen_grant_access(fe->sx, fe->o.domid, fe->o.backend_domid,
                                                q->ring_pfn[i], false, &q->ring_gref[i]);
                        if (r < 0) {
                                seterr(fe, r, "granting ring page: %s", strerror(-r));
                                goto fail;
                        }
                        q->ring_granted = i + 1;
                }
                q->sring = simxen_page(fe->sx, q->ring_pfn[0]);
                memset(q->sring, 0, (size_t)fe->ring_pages * SIMFRONT_PAGE);
                SHARED_RING_INIT(q->sring);
                FRONT_RING_INIT(&q->ring, q->sring, (size_t)fe->ring_pages * SIMFRONT_PAGE);
                /* Entries of this ABI's size after the header, rounded down
                 * to a power of two (the macro assumed the native size). */
                ents = ((size_t)fe->ring_pages * SIMFRONT_PAGE - SRING_HDR_SIZE) / fe->ent_size;
                while (ents & (ents - 1))
                        ents &= ents - 1;
                q->ring.nr_ents = (unsigned)ents;

                r = xenevtchn_bind_unbound_port(fe->xce, fe->o.backend_domid);
                if (r < 0) {
                        r = seterr(fe, -errno, "allocating unbound event channel: %s",
                                   strerror(errno));
                        goto fail;
                }
                q->port = (evtchn_port_t)r;
                q->port_bound = true;
        }

        /* The ios: one per ring slot, or as many as max_data_pages holds. */
        choose_segments(fe);
        if (fe->mq_notice[0]) {
                nl = strlen(fe->notice);
                snprintf(fe->notice + nl, sizeof(fe->notice) - nl, "%s%s", nl ? "; " : "",
                         fe->mq_notice);
        }
        per = fe->segs; /* descriptor pages are not counted */
        fe->nr_slots = RING_SIZE(&fe->q[0].ring) * fe->nq;
        if ((uint64_t)fe->nr_slots * per > fe->o.max_data_pages) {
                fe->nr_slots = fe->o.max_data_pages / per;
                if (!fe->nr_slots) {
                        r = seterr(fe, -ENOMEM,
                                   "max_data_pages %u cannot hold one request of %u pages",
                                   fe->o.max_data_pages, per);
                        goto fail;
                }
                nl = strlen(fe->notice);
                snprintf(fe->notice + nl, sizeof(fe->notice) - nl,
                         "%s%u ios of %u data pages (max_data_pages %u) for %u ring slots",
                         nl ? "; " : "", fe->nr_slots, per, fe->o.max_data_pages,
                         RING_SIZE(&fe->q[0].ring) * fe->nq);
        }
        n = fe->nr_slots * fe->segs;
        n_ind = fe->nr_slots * fe->ind_per_slot;
        fe->slots = calloc(fe->nr_slots, sizeof(*fe->slots));
        for (unsigned k = 0; k < fe->nq; k++) {
                fe->q[k].free_stack = calloc(fe->nr_slots, sizeof(*fe->q[k].free_stack));
                if (!fe->q[k].free_stack) {
                        r = seterr(fe, -ENOMEM, "out of memory");
                        goto fail;
                }
        }
        fe->pages = calloc(n, sizeof(*fe->pages));
        fe->pfns = calloc(n, sizeof(*fe->pfns));
        fe->gref_rw = calloc(n, sizeof(*fe->gref_rw));
        fe->gref_ro = calloc(n, sizeof(*fe->gref_ro));
        fe->ind_pfn = calloc(n_ind + 1, sizeof(*fe->ind_pfn));
        fe->ind_gref = calloc(n_ind + 1, sizeof(*fe->ind_gref));
        if (!fe->slots || !fe->pages || !fe->pfns || !fe->gref_rw || !fe->gref_ro || !fe->ind_pfn ||
            !fe->ind_gref) {
                r = seterr(fe, -ENOMEM, "out of memory");
                goto fail;
        }
        /* Indirect descriptor pages: granted read-only once, kept. */
        for (i = 0; i < n_ind; i++) {
                r = simxen_page_alloc(fe->sx, fe->o.domid, &fe->ind_pfn[i]);
                if (r < 0) {
                        seterr(fe, r, "allocating indirect page %u of %u: %s", i, n_ind,
                               strerror(-r));
                        goto fail;
                }
                fe->ind_allocated = i + 1;
                memset(simxen_page(fe->sx, fe->ind_pfn[i]), 0, SIMFRONT_PAGE);
                r = simxen_grant_access(fe->sx, fe->o.domid, fe->o.backend_domid, fe->ind_pfn[i],
                                        true, &fe->ind_gref[i]);
                if (r < 0) {
                        seterr(fe, r, "granting indirect page: %s", strerror(-r));
                        goto fail;
                }
                fe->ind_granted = i + 1;
        }
        for (i = 0; i < n; i++) {
                r = simxen_page_alloc(fe->sx, fe->o.domid, &fe->pfns[i]);
                if (r < 0) {
                        seterr(fe, r, "allocating data page %u of %u: %s", i, n, strerror(-r));
                        goto fail;
                }
                fe->pages_allocated = i + 1;
                fe->pages[i] = simxen_page(fe->sx, fe->pfns[i]);
        }
        /* Pre-grant every data page twice (read-write for reads, read-only
         * for writes) if the grant table has room; else grant per request. */
        fe->pregranted =
            !fe->o.grant_per_request &&
            2ull * n + n_ind + fe->ring_pages * fe->nq + RAW_GRANT_RESERVE <= SIM_NR_GRANTS;
        for (i = 0; fe->pregranted && i < n; i++) {
                r = simxen_grant_access(fe->sx, fe->o.domid, fe->o.backend_domid, fe->pfns[i],
                                        false, &fe->gref_rw[i]);
                if (r == 0) {
                        fe->grants_rw = i + 1;
                        r = simxen_grant_access(fe->sx, fe->o.domid, fe->o.backend_domid,
                                                fe->pfns[i], true, &fe->gref_ro[i]);
                        if (r == 0)
                                fe->grants_ro = i + 1;
                }
                if (r == -ENOSPC) {
                        uint64_t dl = vbd_now_ns();

                        for (unsigned k = 0; k < fe->grants_rw; k++)
                                (void)end_grant(fe, fe->gref_rw[k], dl);
                        for (unsigned k = 0; k < fe->grants_ro; k++)
                                (void)end_grant(fe, fe->gref_ro[k], dl);
                        fe->grants_rw = fe->grants_ro = 0;
                        fe->pregranted = false;
                } else if (r < 0) {
                        seterr(fe, r, "granting data page: %s", strerror(-r));
                        goto fail;
                }
        }
        for (i = fe->nr_slots; i-- > 0;) {
                struct slot *s = &fe->slots[i];
                struct fq *q = &fe->q[i % fe->nq];

                s->io.slot = i;
                s->io.nr_pages = fe->segs;
                s->io.page = &fe->pages[i * fe->segs];
                s->state = IO_FREE;
                q->free_stack[q->nr_free++] = i;
        }
        return 0;
fail:
        (void)teardown(fe);
        return r;
}

/* A queue's ring-ref(s) and event-channel under prefix ("" or "queue-N/"). */
static bool put_queue_keys(struct simfront *fe, xs_transaction_t t, struct fq *q,
                           const char *prefix)
{
        char path[512], v[32];

        for (unsigned i = 0; i < fe->ring_pages; i++) {
                if (fe->ring_order == 0)
                        snprintf(path, sizeof(path), "%s/%sring-ref", fe->fe, prefix);
                else
                        snprintf(path, sizeof(path), "%s/%sring-ref%u", fe->fe, prefix, i);
                snprintf(v, sizeof(v), "%u", q->ring_gref[i]);
                if (!xs_write(fe->xsh, t, path, v, strlen(v)))
                        return false;
        }
        if (fe->ring_order > 0 && !*prefix) {
                snprintf(path, sizeof(path), "%s/ring-ref", fe->fe);
                (void)xs_rm(fe->xsh, t, path);
        }
        snprintf(path, sizeof(path), "%s/%sevent-channel", fe->fe, prefix);
        snprintf(v, sizeof(v), "%u", q->port);
        return xs_write(fe->xsh, t, path, v, strlen(v));
}

int simfront_publish(struct simfront *fe)
{
        xs_transaction_t t;
        char path[512], v[32];
        unsigned i;
        bool ok;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        for (;;) {
                t = xs_transaction_start(fe->xsh);
                if (t == XBT_NULL)
                        return seterr(fe, -errno, "xenstore transaction: %s", strerror(errno));
#define PUT(key, ...)                                                                              \
        (snprintf(path, sizeof(path), "%s/%s", fe->fe, key), snprintf(v, sizeof(v), __VA_ARGS__),  \
         xs_write(fe->xsh, t, path, v, strlen(v)))
                ok = true;
                if (fe->ring_order == 0) {
                        snprintf(path, sizeof(path), "%s/ring-page-order", fe->fe);
                        (void)xs_rm(fe->xsh, t, path);
                } else {
                        ok = ok && PUT("ring-page-order", "%u", fe->ring_order);
                }
                if (fe->nq == 1) {
                        /* One queue: the flat keys, no multi-queue-num-queues (as
                         * Linux); what an earlier connection left is removed. */
                        snprintf(path, sizeof(path), "%s/multi-queue-num-queues", fe->fe);
                        (void)xs_rm(fe->xsh, t, path);
                        for (unsigned k = 0; k < SIMFRONT_MAX_QUEUES; k++) {
                                snprintf(path, sizeof(path), "%s/queue-%u", fe->fe, k);
                                (void)xs_rm(fe->xsh, t, path);
                        }
                        ok = ok && put_queue_keys(fe, t, &fe->q[0], "");
                } else {
                        static const char *const flat[] = {"ring-ref", "event-channel"};

                        for (unsigned k = 0; k < VBD_ARRAY_SIZE(flat); k++) {
                                snprintf(path, sizeof(path), "%s/%s", fe->fe, flat[k]);
                                (void)xs_rm(fe->xsh, t, path);
                        }
                        for (i = 0; i < MAX_RING_PAGES; i++) {
                                snprintf(path, sizeof(path), "%s/ring-ref%u", fe->fe, i);
                                (void)xs_rm(fe->xsh, t, path);
                        }
                        for (unsigned k = fe->nq; k < SIMFRONT_MAX_QUEUES; k++) {
                                snprintf(path, sizeof(path), "%s/queue-%u", fe->fe, k);
                                (void)xs_rm(fe->xsh, t, path);
                        }
                        ok = ok && PUT("multi-queue-num-queues", "%u", fe->nq);
                        for (unsigned k = 0; ok && k < fe->nq; k++) {
                                char prefix[24];

                                snprintf(prefix, sizeof(prefix), "queue-%u/", k);
                                ok = put_queue_keys(fe, t, &fe->q[k], prefix);
                        }
                }
                if (ok && fe->o.protocol) {
                        snprintf(path, sizeof(path), "%s/protocol", fe->fe);
                        ok = xs_write(fe->xsh, t, path, fe->o.protocol, strlen(fe->o.protocol));
                }
#undef PUT
                if (!ok) {
                        int e = errno;

                        xs_transaction_end(fe->xsh, t, true);
                        return seterr(fe, -e, "xenstore write %s: %s", path, strerror(e));
                }
                if (xs_transaction_end(fe->xsh, t, false))
                        break;
                if (errno != EAGAIN)
                        return seterr(fe, -errno, "xenstore commit: %s", strerror(errno));
        }
        return simfront_set_state(fe, SIMFRONT_XB_INITIALISED);
}

int simfront_finish(struct simfront *fe)
{
        int r;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        r = wait_be(fe, 1u << SIMFRONT_XB_CONNECTED,
                    (1u << SIMFRONT_XB_CLOSING) | (1u << SIMFRONT_XB_CLOSED), fe->o.timeout_ms,
                    "backend Connected");
        if (r < 0)
                return r;
        r = simfront_set_state(fe, SIMFRONT_XB_CONNECTED);
        if (r < 0)
                return r;
        fe->connected = true;
        return 0;
}

int simfront_connect(struct simfront *fe)
{
        int r;

        r = simfront_prepare(fe);
        if (r < 0)
                return r;
        r = simfront_publish(fe);
        if (r < 0)
                goto fail;
        r = simfront_finish(fe);
        if (r < 0)
                goto fail;
        return 0;
fail:
        (void)teardown(fe);
        return r;
}

int simfront_disconnect(struct simfront *fe)
{
        char saved[sizeof(fe->err)];
        int r, first = 0;

        if (!fe->prepared)
                return 0;
        if (fe->connected && fe->inflight) {
                r = simfront_drain(fe, fe->o.timeout_ms);
                if (r < 0)
                        first = r;
        }
        fe->connected = false;
        r = simfront_set_state(fe, SIMFRONT_XB_CLOSING);
        if (r < 0 && !first)
                first = r;
        r = wait_be(fe,
                    (1u << SIMFRONT_XB_UNKNOWN) | (1u << SIMFRONT_XB_CLOSING) |
                        (1u << SIMFRONT_XB_CLOSED),
                    0, fe->o.timeout_ms, "backend Closing");
        if (r < 0 && !first)
                first = r;
        r = simfront_set_state(fe, SIMFRONT_XB_CLOSED);
        if (r < 0 && !first)
                first = r;
        r = wait_be(fe, (1u << SIMFRONT_XB_UNKNOWN) | (1u << SIMFRONT_XB_CLOSED), 0,
                    fe->o.timeout_ms, "backend Closed");
        if (r < 0 && !first)
                first = r;
        memcpy(saved, fe->err, sizeof(saved));
        r = teardown(fe);
        if (first) {
                memcpy(fe->err, saved, sizeof(saved));
                return first;
        }
        return r;
}

void simfront_free(struct simfront *fe)
{
        if (!fe)
                return;
        if (fe->prepared) {
                int t = fe->o.timeout_ms;

                fe->o.timeout_ms = t < 2000 ? t : 2000;
                (void)simfront_disconnect(fe);
        }
        if (fe->prepared)
                (void)teardown(fe);
        if (fe->watching) {
                char path[512];

                snprintf(path, sizeof(path), "%s/state", fe->be);
                (void)xs_unwatch(fe->xsh, path, "simfront-be-state");
        }
        xs_close(fe->xsh);
        free(fe);
}

/* ------------------------------------------------------------------------ */
/* I/O */

static inline struct fq *slot_queue(struct simfront *fe, unsigned slot)
{
        return &fe->q[slot % fe->nq];
}

unsigned simfront_io_queue_index(struct simfront *fe, const struct simfront_io *io)
{
        return io->slot % fe->nq;
}

struct simfront_io *simfront_io_get(struct simfront *fe)
{
        struct slot *s;

        struct fq *q = NULL;

        if (!fe->connected)
                return NULL;
        /* Round robin over the queues that have a free io. */
        for (unsigned k = 0; k < fe->nq && !q; k++) {
                struct fq *c = &fe->q[(fe->next_q + k) % fe->nq];

                if (c->nr_free) {
                        q = c;
                        fe->next_q = (fe->next_q + k + 1) % fe->nq;
                }
        }
        if (!q)
                return NULL;
        s = &fe->slots[q->free_stack[--q->nr_free]];
        s->state = IO_OWNED;
        s->io.done = NULL;
        s->io.opaque = NULL;
        s->io.tag = 0;
        s->io.status = 0;
        s->io.flags = 0;
        return &s->io;
}

void simfront_io_put(struct simfront *fe, struct simfront_io *io)
{
        struct slot *s = &fe->slots[io->slot];

        if (s->state != IO_OWNED)
                return;
        s->state = IO_FREE;
        slot_queue(fe, io->slot)->free_stack[slot_queue(fe, io->slot)->nr_free++] = io->slot;
}

uint32_t simfront_io_gref(struct simfront *fe, struct simfront_io *io, unsigned seg, bool readonly)
{
        unsigned i = io->slot * fe->segs + (seg < fe->segs ? seg : 0);

        if (!fe->pregranted) /* the current request's grant, if any */
                return seg < fe->slots[io->slot].granted ? fe->gref_rw[i] : 0;
        return readonly ? fe->gref_ro[i] : fe->gref_rw[i];
}

/* ------------------------------------------------------------------------ */
/* Wire encoding */

static inline void put16(uint8_t *p, size_t at, uint16_t v)
{
        memcpy(p + at, &v, sizeof(v));
}

static inline void put32(uint8_t *p, size_t at, uint32_t v)
{
        memcpy(p + at, &v, sizeof(v));
}

static inline void put64(uint8_t *p, size_t at, uint64_t v)
{
        memcpy(p + at, &v, sizeof(v));
}

size_t simfront_encode_req(const union simfront_req *req, enum simfront_abi abi, void *out)
{
        bool i386 = abi == SIMFRONT_ABI_X86_32;
        size_t o64 = i386 ? 4 : 8; /* 64-bit fields move up by 4 on i386 */
        union simfront_req r;
        uint8_t *p = out;

        memcpy(&r, req, sizeof(r));
        memset(p, 0, ENT_SIZE_64);
        p[0] = r.operation;
        switch (r.operation) {
        case BLKIF_OP_INDIRECT:
                p[1] = r.indirect.indirect_op;
                put16(p, 2, r.indirect.nr_segments);
                put64(p, o64, r.indirect.id);
                put64(p, o64 + 8, r.indirect.sector_number);
                put16(p, o64 + 16, r.indirect.handle);
                for (unsigned k = 0; k < SIMFRONT_MAX_INDIRECT_PAGES; k++)
                        put32(p, o64 + 20 + 4 * k, r.indirect.indirect_grefs[k]);
                return 64;
        case BLKIF_OP_DISCARD:
                p[1] = r.discard.flag;
                put16(p, 2, r.discard.handle);
                put64(p, o64, r.discard.id);
                put64(p, o64 + 8, r.discard.sector_number);
                put64(p, o64 + 16, r.discard.nr_sectors);
                return o64 + 24;
        default:
                p[1] = r.rw.nr_segments;
                put16(p, 2, r.rw.handle);
                put64(p, o64, r.rw.id);
                put64(p, o64 + 8, r.rw.sector_number);
                for (unsigned k = 0; k < SIMFRONT_MAX_SEG; k++) {
                        put32(p, o64 + 16 + 8 * k, r.rw.seg[k].gref);
                        p[o64 + 16 + 8 * k + 4] = r.rw.seg[k].first_sect;
                        p[o64 + 16 + 8 * k + 5] = r.rw.seg[k].last_sect;
                }
                return i386 ? ENT_SIZE_32 : ENT_SIZE_64;
        }
}

/* Response fields are at the same offsets in both ABIs (id 0, operation 8,
 * status 10); only the entry stride differs. */
static void decode_rsp(const void *ent, blkif_response_t *ret)
{
        const uint8_t *p = ent;
        uint8_t b[12];

        memcpy(b, p, sizeof(b)); /* one read of the shared entry */
        memset(ret, 0, sizeof(*ret));
        memcpy(&ret->id, b, 8);
        ret->operation = b[8];
        memcpy(&ret->status, b + 10, 2);
}

/* Encode into the next request slot (the whole entry rewritten). */
static void put_encoded(struct simfront *fe, struct fq *q, const union simfront_req *req,
                        enum simfront_abi abi)
{
        uint8_t buf[ENT_SIZE_64];
        size_t n = simfront_encode_req(req, abi, buf);
        void *slot = ring_entry(fe, q, q->ring.req_prod_pvt);

        if (n > fe->ent_size)
                n = fe->ent_size;
        memset(slot, 0, fe->ent_size);
        memcpy(slot, buf, n);
        q->ring.req_prod_pvt++;
}

int simfront_io_queue(struct simfront *fe, struct simfront_io *io)
{
        struct slot *s = &fe->slots[io->slot];
        struct fq *q = slot_queue(fe, io->slot);
        union simfront_req u;
        unsigned nseg, i, base;
        bool ro, indirect;
        uint64_t id;

        if (s->state != IO_OWNED)
                return seterr(fe, -EINVAL, "io %u not owned", io->slot);
        if (RING_FULL(&q->ring))
                return seterr(fe, -EBUSY, "ring full");
        switch (io->op) {
        case BLKIF_OP_READ:
        case BLKIF_OP_WRITE:
                if (!io->len)
                        return seterr(fe, -EINVAL, "read/write of 0 bytes");
                break;
        case BLKIF_OP_FLUSH_DISKCACHE:
        case BLKIF_OP_WRITE_BARRIER:
                break;
        case BLKIF_OP_DISCARD:
                if (!fe->disk.discard)
                        return seterr(fe, -EOPNOTSUPP,
                                      "the backend does not offer feature-discard");
                if (!io->len || io->offset % SIMFRONT_SECTOR || io->len % SIMFRONT_SECTOR)
                        return seterr(fe, -EINVAL, "bad discard offset %" PRIu64 " len %u",
                                      io->offset, io->len);
                id = ((uint64_t)++s->gen << 16) | io->slot;
                memset(&u, 0, sizeof(u));
                u.discard.operation = BLKIF_OP_DISCARD;
                u.discard.flag = io->flags & SIMFRONT_IO_DISCARD_SECURE ? BLKIF_DISCARD_SECURE : 0;
                u.discard.handle = (blkif_vdev_t)fe->o.devid;
                u.discard.id = id;
                u.discard.sector_number = io->offset / SIMFRONT_SECTOR;
                u.discard.nr_sectors = io->len / SIMFRONT_SECTOR;
                put_encoded(fe, q, &u, fe->abi);
                s->indirect = false;
                s->state = IO_INFLIGHT;
                fe->inflight++;
                fe->st.requests++;
                fe->st.queue_requests[io->slot % fe->nq]++;
                fe->st.discards++;
                return 0;
        default:
                return seterr(fe, -EINVAL, "op %u not supported by simfront_io_queue", io->op);
        }
        if (io->offset % SIMFRONT_SECTOR || io->len % SIMFRONT_SECTOR ||
            io->len > fe->segs * SIMFRONT_PAGE)
                return seterr(fe, -EINVAL, "bad io offset %" PRIu64 " len %u", io->offset, io->len);
        nseg = (io->len + SIMFRONT_PAGE - 1) / SIMFRONT_PAGE;
        indirect = (io->op == BLKIF_OP_READ || io->op == BLKIF_OP_WRITE) && fe->use_indirect &&
                   (nseg > SIMFRONT_MAX_SEG || fe->indirect_always);
        if (nseg > SIMFRONT_MAX_SEG && !indirect)
                return seterr(fe, -EINVAL,
                              "%u segments need BLKIF_OP_INDIRECT (reads and writes only)", nseg);
        ro = io->op == BLKIF_OP_WRITE || io->op == BLKIF_OP_WRITE_BARRIER;
        base = io->slot * fe->segs;

        if (!fe->pregranted) {
                for (i = 0; i < nseg; i++) {
                        int r = simxen_grant_access(fe->sx, fe->o.domid, fe->o.backend_domid,
                                                    fe->pfns[base + i], ro, &fe->gref_rw[base + i]);

                        if (r < 0) {
                                uint64_t dl = vbd_now_ns();

                                while (i--)
                                        (void)end_grant(fe, fe->gref_rw[base + i], dl);
                                return seterr(fe, r, "granting data page: %s", strerror(-r));
                        }
                        fe->st.grants++;
                }
                s->granted = (uint16_t)nseg;
        }
        id = ((uint64_t)++s->gen << 16) | io->slot;
        memset(&u, 0, sizeof(u));
        if (indirect) {
                unsigned ib = io->slot * fe->ind_per_slot;

                for (i = 0; i < nseg; i++) {
                        struct blkif_request_segment *d =
                            (struct blkif_request_segment *)simxen_page(
                                fe->sx, fe->ind_pfn[ib + i / SIMFRONT_SEGS_PER_INDIRECT]) +
                            i % SIMFRONT_SEGS_PER_INDIRECT;
                        uint32_t bytes = io->len - i * SIMFRONT_PAGE;

                        if (bytes > SIMFRONT_PAGE)
                                bytes = SIMFRONT_PAGE;
                        memset(d, 0, sizeof(*d));
                        d->gref =
                            ro && fe->pregranted ? fe->gref_ro[base + i] : fe->gref_rw[base + i];
                        d->first_sect = 0;
                        d->last_sect = (uint8_t)(bytes / SIMFRONT_SECTOR - 1);
                }
                u.indirect.operation = BLKIF_OP_INDIRECT;
                u.indirect.indirect_op = io->op;
                u.indirect.nr_segments = (uint16_t)nseg;
                u.indirect.id = id;
                u.indirect.sector_number = io->offset / SIMFRONT_SECTOR;
                u.indirect.handle = (blkif_vdev_t)fe->o.devid;
                for (i = 0; i * SIMFRONT_SEGS_PER_INDIRECT < nseg; i++)
                        u.indirect.indirect_grefs[i] = fe->ind_gref[ib + i];
                fe->st.indirect++;
        } else {
                u.rw.operation = io->op;
                u.rw.nr_segments = (uint8_t)nseg;
                u.rw.handle = (blkif_vdev_t)fe->o.devid;
                u.rw.id = id;
                u.rw.sector_number = io->offset / SIMFRONT_SECTOR;
                for (i = 0; i < nseg; i++) {
                        uint32_t bytes = io->len - i * SIMFRONT_PAGE;

                        if (bytes > SIMFRONT_PAGE)
                                bytes = SIMFRONT_PAGE;
                        u.rw.seg[i].gref =
                            ro && fe->pregranted ? fe->gref_ro[base + i] : fe->gref_rw[base + i];
                        u.rw.seg[i].first_sect = 0;
                        u.rw.seg[i].last_sect = (uint8_t)(bytes / SIMFRONT_SECTOR - 1);
                }
        }
        put_encoded(fe, q, &u, fe->abi);
        s->indirect = indirect;
        s->state = IO_INFLIGHT;
        fe->inflight++;
        fe->st.requests++;
        fe->st.queue_requests[io->slot % fe->nq]++;
        return 0;
}

int simfront_push(struct simfront *fe)
{
        int notify, any = 0;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not connected");
        fe->st.pushes++;
        for (unsigned k = 0; k < fe->nq; k++) {
                struct fq *q = &fe->q[k];

                if (q->ring.req_prod_pvt == q->sring->req_prod)
                        continue;
                RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&q->ring, notify);
                if (!notify)
                        continue;
                fe->st.notifies++;
                if (xenevtchn_notify(fe->xce, q->port) < 0)
                        return seterr(fe, -errno, "event channel notify: %s", strerror(errno));
                any = 1;
        }
        return any;
}

static int consume_queue(struct simfront *fe, unsigned qi)
{
        struct fq *q = &fe->q[qi];
        int n = 0, more;

        do {
                RING_IDX rp = q->ring.sring->rsp_prod, i;

                xen_rmb();
                if (rp - q->ring.rsp_cons > q->ring.req_prod_pvt - q->ring.rsp_cons)
                        return seterr(fe, -EPROTO,
                                      "backend rsp_prod %u ahead of requests (rsp_cons %u, "
                                      "req_prod %u)",
                                      rp, q->ring.rsp_cons, q->ring.req_prod_pvt);
                for (i = q->ring.rsp_cons; i != rp; i++) {
                        blkif_response_t rsp;
                        unsigned idx;
                        struct slot *s;

                        decode_rsp(ring_entry(fe, q, i), &rsp);
                        idx = (unsigned)(rsp.id & 0xffff);

                        q->ring.rsp_cons = i + 1;
                        fe->st.responses++;
                        if (idx >= fe->nr_slots || fe->slots[idx].state != IO_INFLIGHT ||
                            (uint16_t)(rsp.id >> 16) != fe->slots[idx].gen || rsp.id >> 32)
                                return seterr(fe, -EPROTO, "response with unknown id %#" PRIx64,
                                              rsp.id);
                        s = &fe->slots[idx];
                        if (idx % fe->nq != qi)
                                return seterr(fe, -EPROTO,
                                              "response for id %#" PRIx64
                                              " on queue %u: it was sent on queue %u",
                                              rsp.id, qi, idx % fe->nq);
                        if (s->indirect && rsp.operation == BLKIF_OP_INDIRECT)
                                fe->st.indirect_rsp_op_indirect++;
                        else if (rsp.operation != s->io.op)
                                return seterr(fe, -EPROTO,
                                              "response for id %#" PRIx64
                                              " has operation %u, request had %u",
                                              rsp.id, rsp.operation, s->io.op);
                        s->io.status = rsp.status;
                        if (rsp.status != BLKIF_RSP_OKAY)
                                fe->st.errors++;
                        for (unsigned k = 0; k < s->granted; k++) {
                                uint32_t g = fe->gref_rw[idx * fe->segs + k];
                                int r = simxen_grant_end(fe->sx, fe->o.domid, g);

                                if (r < 0) {
                                        /* Still mapped after the answer: the page stays
                                         * with the backend; the slot is unusable. */
                                        s->granted = 0;
                                        return seterr(fe, -EPROTO,
                                                      "ending grant %u after the response to "
                                                      "id %#" PRIx64 ": %s",
                                                      g, rsp.id, strerror(-r));
                                }
                        }
                        s->granted = 0;
                        s->state = IO_OWNED;
                        fe->inflight--;
                        n++;
                        if (s->io.done)
                                s->io.done(fe, &s->io);
                        if (s->state == IO_OWNED) {
                                s->state = IO_FREE;
                                q->free_stack[q->nr_free++] = idx;
                        }
                }
                RING_FINAL_CHECK_FOR_RESPONSES(&q->ring, more);
        } while (more);
        return n;
}

static int consume(struct simfront *fe)
{
        int n = 0;

        for (unsigned k = 0; k < fe->nq; k++) {
                int r = consume_queue(fe, k);

                if (r < 0)
                        return r;
                n += r;
        }
        return n;
}

/* Wait for an event up to ms; 1 if one came, 0 on timeout. */
static int wait_event(struct simfront *fe, int ms)
{
        struct pollfd p = {.fd = fe->evfd, .events = POLLIN};
        xenevtchn_port_or_error_t port;
        int r;

        fe->st.polls++;
        r = poll(&p, 1, ms);
        if (r < 0)
                return errno == EINTR ? 0 : seterr(fe, -errno, "poll: %s", strerror(errno));
        if (r == 0)
                return 0;
        fe->st.wakeups++;
        port = xenevtchn_pending(fe->xce);
        if (port >= 0)
                (void)xenevtchn_unmask(fe->xce, (evtchn_port_t)port);
        return 1;
}

int simfront_poll(struct simfront *fe, int timeout_ms)
{
        uint64_t deadline = 0;
        int n, r;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not connected");
        if (fe->o.events_only && timeout_ms == 0) {
                r = wait_event(fe, 0);
                return r <= 0 ? r : consume(fe);
        }
        if (!fe->o.events_only) {
                n = consume(fe);
                if (n != 0 || timeout_ms == 0)
                        return n;
        }
        if (timeout_ms > 0)
                deadline = vbd_now_ns() + (uint64_t)timeout_ms * 1000000u;
        for (;;) {
                int ms = 1000;

                if (timeout_ms > 0) {
                        uint64_t now = vbd_now_ns();

                        if (now >= deadline)
                                return 0;
                        if ((deadline - now) / 1000000u + 1 < (uint64_t)ms)
                                ms = (int)((deadline - now) / 1000000u) + 1;
                }
                r = wait_event(fe, ms);
                if (r < 0)
                        return r;
                /* events_only: a wait that timed out does not look. */
                n = r == 0 && fe->o.events_only ? 0 : consume(fe);
                if (n != 0)
                        return n;
                if (r == 0 && fe->check) {
                        r = fe->check(fe->check_opaque);
                        if (r < 0)
                                return seterr(fe, r, "the backend went away with I/O in flight");
                }
        }
}

int simfront_drain(struct simfront *fe, int timeout_ms)
{
        while (fe->inflight) {
                int r = simfront_poll(fe, timeout_ms);

                if (r < 0)
                        return r;
                if (r == 0)
                        return seterr(fe, -ETIMEDOUT, "%u requests unanswered after %d ms",
                                      fe->inflight, timeout_ms);
        }
        return 0;
}

void simfront_io_copy_in(struct simfront_io *io, size_t at, const void *src, size_t len)
{
        const char *p = src;

        while (len) {
                size_t pg = at / SIMFRONT_PAGE, off = at % SIMFRONT_PAGE;
                size_t n = SIMFRONT_PAGE - off;

                if (n > len)
                        n = len;
                memcpy((char *)io->page[pg] + off, p, n);
                p += n;
                at += n;
                len -= n;
        }
}

void simfront_io_copy_out(struct simfront_io *io, size_t at, void *dst, size_t len)
{
        char *p = dst;

        while (len) {
                size_t pg = at / SIMFRONT_PAGE, off = at % SIMFRONT_PAGE;
                size_t n = SIMFRONT_PAGE - off;

                if (n > len)
                        n = len;
                memcpy(p, (char *)io->page[pg] + off, n);
                p += n;
                at += n;
                len -= n;
        }
}

/* ------------------------------------------------------------------------ */
/* Synchronous helpers */

struct sync_job {
        bool write;
        uint64_t off, end; /* the caller's byte range */
        uint64_t a, e;     /* sector-aligned cover */
        char *rbuf;        /* read destination */
        const char *wbuf;  /* write source */
        char head[SIMFRONT_SECTOR], tail[SIMFRONT_SECTOR];
        unsigned inflight;
        int error;
        uint64_t err_off;
        uint32_t err_len;
        int16_t err_status;
};

static const char *status_name(int s)
{
        switch (s) {
        case BLKIF_RSP_OKAY:
                return "BLKIF_RSP_OKAY";
        case BLKIF_RSP_ERROR:
                return "BLKIF_RSP_ERROR";
        case BLKIF_RSP_EOPNOTSUPP:
                return "BLKIF_RSP_EOPNOTSUPP";
        default:
                return "unknown status";
        }
}

/* Copy the byte range [lo, hi) between an io covering [c, ...) and the job. */
static void sync_done(struct simfront *fe, struct simfront_io *io)
{
        struct sync_job *j = io->opaque;
        uint64_t lo, hi;

        j->inflight--;
        if (io->status != BLKIF_RSP_OKAY) {
                if (!j->error) {
                        j->error = -EIO;
                        j->err_off = io->offset;
                        j->err_len = io->len;
                        j->err_status = io->status;
                }
                return;
        }
        if (j->write || !io->len)
                return;
        lo = io->offset > j->off ? io->offset : j->off;
        hi = io->offset + io->len < j->end ? io->offset + io->len : j->end;
        if (lo < hi)
                simfront_io_copy_out(io, lo - io->offset, j->rbuf + (lo - j->off), hi - lo);
}

/* Fill a write io covering [c, c + len) from head/tail/user buffers. */
static void sync_fill(struct sync_job *j, struct simfront_io *io)
{
        uint64_t c = io->offset, cend = io->offset + io->len, lo, hi;

        lo = c > j->off ? c : j->off;
        hi = cend < j->end ? cend : j->end;
        if (lo < hi)
                simfront_io_copy_in(io, lo - c, j->wbuf + (lo - j->off), hi - lo);
        if (c < j->off) /* the head sector, first part */
                simfront_io_copy_in(io, 0, j->head, j->off - c);
        if (cend > j->end) /* the tail sector, last part */
                simfront_io_copy_in(io, j->end - c, j->tail + (j->end - (j->e - SIMFRONT_SECTOR)),
                                    cend - j->end);
}

static const char *op_name(uint8_t op)
{
        switch (op) {
        case BLKIF_OP_READ:
                return "read";
        case BLKIF_OP_WRITE:
                return "write";
        case BLKIF_OP_DISCARD:
                return "discard";
        default:
                return "request";
        }
}

/* A synchronous call gives up with ios of its job still in flight (a
 * timeout): their answers, if they ever come, must not reach the job, which
 * lives on the caller's stack. */
static void forget_job(struct simfront *fe, struct sync_job *j)
{
        for (unsigned i = 0; i < fe->nr_slots; i++) {
                struct slot *s = &fe->slots[i];

                if (s->state == IO_INFLIGHT && s->io.opaque == j) {
                        s->io.done = NULL;
                        s->io.opaque = NULL;
                }
        }
}

static int run_job(struct simfront *fe, struct sync_job *j, uint8_t op)
{
        uint64_t next = j->a;
        uint32_t max = op == BLKIF_OP_DISCARD ? DISCARD_MAX : fe->segs * SIMFRONT_PAGE;
        int r;

        while (next < j->e || j->inflight) {
                bool queued = false;

                while (next < j->e && !j->error) {
                        struct simfront_io *io = simfront_io_get(fe);
                        uint64_t len = j->e - next;

                        if (!io)
                                break;
                        if (len > max)
                                len = max;
                        io->op = op;
                        io->offset = next;
                        io->len = (uint32_t)len;
                        io->done = sync_done;
                        io->opaque = j;
                        if (op == BLKIF_OP_WRITE)
                                sync_fill(j, io);
                        r = simfront_io_queue(fe, io);
                        if (r == -ENOSPC && fe->inflight) {
                                simfront_io_put(fe, io); /* grants run out: wait */
                                break;
                        }
                        if (r < 0) {
                                simfront_io_put(fe, io);
                                return r;
                        }
                        j->inflight++;
                        next += len;
                        queued = true;
                }
                if (queued) {
                        r = simfront_push(fe);
                        if (r < 0)
                                return r;
                }
                if (!j->inflight)
                        break;
                r = simfront_poll(fe, fe->o.timeout_ms);
                if (r < 0)
                        return r;
                if (r == 0)
                        return seterr(fe, -ETIMEDOUT, "no response within %d ms", fe->o.timeout_ms);
        }
        if (j->error)
                return seterr(
                    fe, j->err_status == BLKIF_RSP_EOPNOTSUPP ? -EOPNOTSUPP : j->error,
                    "%s of %u bytes at offset %" PRIu64 " failed: backend answered %d (%s)%s",
                    op_name(op), j->err_len, j->err_off, j->err_status, status_name(j->err_status),
                    op != BLKIF_OP_READ && (fe->disk.info & VDISK_READONLY)
                        ? "; the disk is read-only"
                        : "");
        return 0;
}

static int sync_rw(struct simfront *fe, bool write, uint64_t off, void *buf, size_t len)
{
        struct sync_job j = {.write = write, .off = off, .end = off + len};
        int r;

        if (!fe->connected)
                return seterr(fe, -ENOTCONN, "not connected");
        if (!len)
                return 0;
        if (off + len < off)
                return seterr(fe, -EINVAL, "range overflows");
        j.a = off & ~(uint64_t)(SIMFRONT_SECTOR - 1);
        j.e = (j.end + SIMFRONT_SECTOR - 1) & ~(uint64_t)(SIMFRONT_SECTOR - 1);
        if (write) {
                j.wbuf = buf;
                /* Read-modify-write for the unaligned ends. */
                if (j.a != off) {
                        r = sync_rw(fe, false, j.a, j.head, SIMFRONT_SECTOR);
                        if (r < 0)
                                return r;
                }
                if (j.e != j.end) {
                        r = sync_rw(fe, false, j.e - SIMFRONT_SECTOR, j.tail, SIMFRONT_SECTOR);
                        if (r < 0)
                                return r;
                        if (j.e - SIMFRONT_SECTOR == j.a && j.a != off)
                                memcpy(j.head, j.tail, SIMFRONT_SECTOR);
                }
        } else {
                j.rbuf = buf;
        }
        r = run_job(fe, &j, write ? BLKIF_OP_WRITE : BLKIF_OP_READ);
        if (r < 0 && j.inflight)
                (void)simfront_drain(fe, fe->o.timeout_ms);
        if (j.inflight)
                forget_job(fe, &j);
        return r;
}

int simfront_read(struct simfront *fe, uint64_t offset, void *buf, size_t len)
{
        return sync_rw(fe, false, offset, buf, len);
}

int simfront_write(struct simfront *fe, uint64_t offset, const void *buf, size_t len)
{
        return sync_rw(fe, true, offset, (void *)buf, len);
}

static int sync_op(struct simfront *fe, uint8_t op)
{
        struct sync_job j = {.write = true};
        struct simfront_io *io;
        int r;

        if (!fe->connected)
                return seterr(fe, -ENOTCONN, "not connected");
        while (!(io = simfront_io_get(fe))) {
                r = simfront_poll(fe, fe->o.timeout_ms);
                if (r <= 0)
                        return r < 0 ? r : seterr(fe, -ETIMEDOUT, "ring stays full");
        }
        io->op = op;
        io->offset = 0;
        io->len = 0;
        io->done = sync_done;
        io->opaque = &j;
        r = simfront_io_queue(fe, io);
        if (r < 0) {
                simfront_io_put(fe, io);
                return r;
        }
        j.inflight = 1;
        r = simfront_push(fe);
        if (r < 0) {
                forget_job(fe, &j);
                return r;
        }
        while (j.inflight) {
                r = simfront_poll(fe, fe->o.timeout_ms);
                if (r <= 0) {
                        forget_job(fe, &j);
                        return r < 0 ? r
                                     : seterr(fe, -ETIMEDOUT, "no response within %d ms",
                                              fe->o.timeout_ms);
                }
        }
        if (j.error)
                return seterr(fe, -EIO, "%s failed: backend answered %d (%s)",
                              op == BLKIF_OP_FLUSH_DISKCACHE ? "flush" : "barrier", j.err_status,
                              status_name(j.err_status));
        return 0;
}

int simfront_discard(struct simfront *fe, uint64_t offset, uint64_t len)
{
        struct sync_job j = {.write = true, .off = offset, .end = offset + len};
        int r;

        if (!fe->connected)
                return seterr(fe, -ENOTCONN, "not connected");
        if (!fe->disk.discard)
                return seterr(fe, -EOPNOTSUPP, "the backend does not offer feature-discard");
        if (offset % SIMFRONT_SECTOR || len % SIMFRONT_SECTOR || offset + len < offset)
                return seterr(fe, -EINVAL,
                              "discard offset %" PRIu64 " len %" PRIu64 " not in whole sectors",
                              offset, len);
        if (!len)
                return 0;
        j.a = offset;
        j.e = offset + len;
        r = run_job(fe, &j, BLKIF_OP_DISCARD);
        if (r < 0 && j.inflight)
                (void)simfront_drain(fe, fe->o.timeout_ms);
        if (j.inflight)
                forget_job(fe, &j);
        return r;
}

int simfront_flush(struct simfront *fe)
{
        return sync_op(fe, BLKIF_OP_FLUSH_DISKCACHE);
}

int simfront_barrier(struct simfront *fe)
{
        return sync_op(fe, BLKIF_OP_WRITE_BARRIER);
}

/* ------------------------------------------------------------------------ */
/* hostile */

blkif_front_ring_t *simfront_raw_ring(struct simfront *fe)
{
        return fe->prepared ? &rawq(fe)->ring : NULL;
}

blkif_sring_t *simfront_raw_sring(struct simfront *fe)
{
        return rawq(fe)->sring;
}

unsigned simfront_raw_ring_grefs(struct simfront *fe, uint32_t *grefs, unsigned max)
{
        unsigned i;

        for (i = 0; i < rawq(fe)->ring_granted && i < max; i++)
                grefs[i] = rawq(fe)->ring_gref[i];
        return rawq(fe)->ring_granted;
}

uint32_t simfront_raw_port(struct simfront *fe)
{
        return rawq(fe)->port;
}

void *simfront_raw_slot(struct simfront *fe, uint32_t idx)
{
        return fe->prepared ? ring_entry(fe, rawq(fe), idx) : NULL;
}

size_t simfront_raw_slot_size(struct simfront *fe)
{
        return fe->ent_size;
}

int simfront_raw_put(struct simfront *fe, const void *req, size_t len)
{
        void *slot;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        if (len > sizeof(blkif_request_t))
                return seterr(fe, -EINVAL, "raw request of %zu bytes", len);
        slot = ring_entry(fe, rawq(fe), rawq(fe)->ring.req_prod_pvt);
        memset(slot, 0, fe->ent_size);
        memcpy(slot, req, len < fe->ent_size ? len : fe->ent_size);
        rawq(fe)->ring.req_prod_pvt++;
        return 0;
}

int simfront_raw_put_req_as(struct simfront *fe, const union simfront_req *req,
                            enum simfront_abi abi)
{
        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        put_encoded(fe, rawq(fe), req, abi == SIMFRONT_ABI_RING ? fe->abi : abi);
        return 0;
}

int simfront_raw_put_req(struct simfront *fe, const union simfront_req *req)
{
        return simfront_raw_put_req_as(fe, req, fe->abi);
}

int simfront_raw_put_discard(struct simfront *fe, uint64_t id, uint64_t sector_number,
                             uint64_t nr_sectors, uint8_t flag)
{
        union simfront_req u;

        memset(&u, 0, sizeof(u));
        u.discard.operation = BLKIF_OP_DISCARD;
        u.discard.flag = flag;
        u.discard.handle = (blkif_vdev_t)fe->o.devid;
        u.discard.id = id;
        u.discard.sector_number = sector_number;
        u.discard.nr_sectors = nr_sectors;
        return simfront_raw_put_req(fe, &u);
}

int simfront_raw_indirect(struct simfront *fe, uint8_t indirect_op, unsigned nr_segments,
                          unsigned nr_pages, unsigned nr_data, struct simfront_raw_indirect *ri)
{
        unsigned i, n;
        int r;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        if (nr_pages > SIMFRONT_MAX_INDIRECT_PAGES || nr_data > SIMFRONT_MAX_INDIRECT_SEG)
                return seterr(fe, -EINVAL,
                              "raw indirect: %u descriptor pages (max %u), %u data "
                              "pages (max %u)",
                              nr_pages, SIMFRONT_MAX_INDIRECT_PAGES, nr_data,
                              SIMFRONT_MAX_INDIRECT_SEG);
        memset(ri, 0, sizeof(*ri));
        ri->req.indirect.operation = BLKIF_OP_INDIRECT;
        ri->req.indirect.indirect_op = indirect_op;
        ri->req.indirect.nr_segments = (uint16_t)nr_segments;
        ri->req.indirect.handle = (blkif_vdev_t)fe->o.devid;
        for (i = 0; i < nr_pages; i++) {
                void *page;

                r = simfront_raw_grant(fe, fe->o.backend_domid, true, false,
                                       &ri->req.indirect.indirect_grefs[i], &page);
                if (r < 0)
                        return r;
                ri->desc[i] = page;
                ri->nr_pages = i + 1;
        }
        for (i = 0; i < nr_data; i++) {
                r = simfront_raw_grant(fe, fe->o.backend_domid, indirect_op == BLKIF_OP_WRITE,
                                       false, &ri->data_gref[i], &ri->data[i]);
                if (r < 0)
                        return r;
                ri->nr_data = i + 1;
        }
        n = nr_segments < nr_pages * SIMFRONT_SEGS_PER_INDIRECT
                ? nr_segments
                : nr_pages * (unsigned)SIMFRONT_SEGS_PER_INDIRECT;
        for (i = 0; nr_data && i < n; i++) {
                struct blkif_request_segment *d =
                    &ri->desc[i / SIMFRONT_SEGS_PER_INDIRECT][i % SIMFRONT_SEGS_PER_INDIRECT];

                d->gref = ri->data_gref[i % nr_data];
                d->first_sect = 0;
                d->last_sect = SIMFRONT_PAGE / SIMFRONT_SECTOR - 1;
        }
        return 0;
}

void simfront_raw_push(struct simfront *fe)
{
        xen_wmb();
        rawq(fe)->sring->req_prod = rawq(fe)->ring.req_prod_pvt;
        xen_mb();
}

void simfront_raw_set_req_prod(struct simfront *fe, uint32_t req_prod)
{
        xen_wmb();
        rawq(fe)->sring->req_prod = req_prod;
        xen_mb();
}

int simfront_raw_notify(struct simfront *fe)
{
        if (!fe->xce)
                return seterr(fe, -ENOTCONN, "no event channel");
        if (xenevtchn_notify(fe->xce, rawq(fe)->port) < 0)
                return seterr(fe, -errno, "notify: %s", strerror(errno));
        fe->st.notifies++;
        return 0;
}

int simfront_raw_get_response(struct simfront *fe, blkif_response_t *ret, int timeout_ms)
{
        uint64_t deadline = vbd_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;

        if (!fe->prepared)
                return seterr(fe, -ENOTCONN, "not prepared");
        for (;;) {
                RING_IDX rp = rawq(fe)->sring->rsp_prod;
                uint64_t now;
                int r, ms;

                xen_rmb();
                if (rp != rawq(fe)->ring.rsp_cons) {
                        decode_rsp(ring_entry(fe, rawq(fe), rawq(fe)->ring.rsp_cons), ret);
                        rawq(fe)->ring.rsp_cons++;
                        fe->st.responses++;
                        return 1;
                }
                rawq(fe)->sring->rsp_event = rawq(fe)->ring.rsp_cons + 1;
                xen_mb();
                if (rawq(fe)->sring->rsp_prod != rawq(fe)->ring.rsp_cons)
                        continue;
                now = vbd_now_ns();
                if (timeout_ms >= 0 && now >= deadline)
                        return 0;
                ms = timeout_ms < 0 ? 1000 : (int)((deadline - now) / 1000000u) + 1;
                r = wait_event(fe, ms > 1000 ? 1000 : ms);
                if (r < 0)
                        return r;
        }
}

int simfront_raw_grant(struct simfront *fe, uint32_t to_domid, bool readonly, bool ended,
                       uint32_t *ret_gref, void **ret_page)
{
        struct raw_grant *g, *n;
        int r;

        n = realloc(fe->raw, (fe->nr_raw + 1) * sizeof(*fe->raw));
        if (!n)
                return seterr(fe, -ENOMEM, "out of memory");
        fe->raw = n;
        g = &fe->raw[fe->nr_raw];
        r = simxen_page_alloc(fe->sx, fe->o.domid, &g->pfn);
        if (r < 0)
                return seterr(fe, r, "page alloc: %s", strerror(-r));
        r = simxen_grant_access(fe->sx, fe->o.domid, to_domid, g->pfn, readonly, &g->gref);
        if (r < 0) {
                (void)simxen_page_free(fe->sx, fe->o.domid, g->pfn);
                return seterr(fe, r, "grant: %s", strerror(-r));
        }
        g->ended = false;
        if (ended) {
                r = simxen_grant_end(fe->sx, fe->o.domid, g->gref);
                if (r < 0) {
                        fe->nr_raw++;
                        return seterr(fe, r, "end grant: %s", strerror(-r));
                }
                g->ended = true;
        }
        fe->nr_raw++;
        memset(simxen_page(fe->sx, g->pfn), 0, SIMFRONT_PAGE);
        *ret_gref = g->gref;
        if (ret_page)
                *ret_page = simxen_page(fe->sx, g->pfn);
        return 0;
}

bool simfront_pregranted(struct simfront *fe)
{
        return fe->pregranted;
}
