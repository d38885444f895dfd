/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD server (see nbd-export.h).  One listener, up to max_clients
 * connections, all in the daemon's loop.
 *
 * Per client: an input buffer for headers and options, a handshake output
 * buffer (control path, allocated), and for the transmission phase a fixed
 * set of VBD_NBD_MAX_INFLIGHT request slots and a VBD_NBD_MAX_REQUEST-byte
 * arena (anonymous memory, touched only as used) cut into NBD_CHUNK-byte
 * chunks.  A READ or WRITE takes the chunks it needs; when there are not
 * enough, or no free slot, the socket is not read until a reply has gone
 * out.  Nothing is allocated per request.
 *
 * Requests go to the image through vbd_image_submit() and may complete in
 * any order; each reply is queued as it completes and written with writev
 * (several replies per call).  BLOCK_STATUS is answered synchronously from
 * vbd_image_block_status().
 *
 * A client is freed only from a top-level watcher callback (never from
 * inside an I/O completion that might run inline in vbd_image_submit), and
 * only once none of its requests is in the image.
 */
#define VBD_LOG_TOPIC "nbd"
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "image.h"
#include "nbd-export.h"
#include "util/socket.h"
#include "vbd/log.h"

/* ---- protocol constants (doc/proto.md) ---- */

#define NBD_MAGIC                  0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT               0x49484156454f5054ULL /* "IHAVEOPT" */
#define NBD_REP_MAGIC              0x0003e889045565a9ULL
#define NBD_REQUEST_MAGIC          0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC     0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10

#define NBD_REP_ACK          1u
#define NBD_REP_SERVER       2u
#define NBD_REP_INFO         3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR_UNSUP    (0x80000000u + 1)
#define NBD_REP_ERR_INVALID  (0x80000000u + 3)
#define NBD_REP_ERR_UNKNOWN  (0x80000000u + 6)
#define NBD_REP_ERR_SHUTDOWN (0x80000000u + 7)
#define NBD_REP_ERR_TOO_BIG  (0x80000000u + 9)

#define NBD_INFO_EXPORT     0
#define NBD_INFO_NAME       1
#define NBD_INFO_BLOCK_SIZE 3

#define NBD_EFLAG_HAS_FLAGS         (1u << 0)
#define NBD_EFLAG_READ_ONLY         (1u << 1)
#define NBD_EFLAG_SEND_FLUSH        (1u << 2)
#define NBD_EFLAG_SEND_FUA          (1u << 3)
#define NBD_EFLAG_SEND_TRIM         (1u << 5)
#define NBD_EFLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_EFLAG_SEND_DF           (1u << 7)
#define NBD_EFLAG_CAN_MULTI_CONN    (1u << 8)

#define NBD_CMD_FLAG_FUA     (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF      (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)

#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

#define NBD_REPLY_FLAG_DONE         (1u << 0)
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        0x8001

#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ESHUTDOWN 108

#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_META_ID_ALLOCATION   1

/* ---- our limits ---- */

#define NBD_CHUNK        (128u << 10)
#define NBD_CHUNKS       (VBD_NBD_MAX_REQUEST / NBD_CHUNK)
#define NBD_IBUF         (64u << 10) /* headers, options, small payloads */
#define NBD_OPT_MAX      NBD_IBUF    /* option data we look at (fits in ibuf) */
#define NBD_OPT_SKIP_MAX (16u << 20) /* option data we skip (ERR_TOO_BIG); more: disconnect */
#define NBD_OPTS_MAX     1024        /* options per connection */
#define NBD_OBUF_MAX     (1u << 20)  /* unread handshake replies */
#define NBD_EXTENTS_MAX  1024        /* descriptors per BLOCK_STATUS reply */
#define NBD_HANDSHAKE_S  30.0
#define NBD_SHUTDOWN_S   5.0
#define NBD_REQ_HDR      28
#define NBD_WRITEV_IOVS  256

/* ---- types ---- */

enum cl_state {
        CL_CLIENT_FLAGS, /* 4 bytes after our greeting */
        CL_OPT_HDR,      /* 16 bytes */
        CL_OPT_DATA,     /* opt_len bytes into opt */
        CL_OPT_SKIP,     /* skip bytes, then ERR_TOO_BIG */
        CL_REQ_HDR,      /* 28 bytes */
        CL_REQ_BUF,      /* a READ/WRITE waiting for buffer chunks */
        CL_REQ_PAYLOAD,  /* a WRITE's data into its chunks */
        CL_STOPPED,      /* nothing more is read */
};

enum req_state { REQ_FREE, REQ_PAYLOAD, REQ_IO, REQ_QUEUED };

struct nbd_client;

struct nbd_req {
        struct nbd_client *cl;
        struct nbd_req *next; /* free list or output queue */
        enum req_state state;
        struct vbd_io io;
        uint64_t cookie, offset;
        uint32_t len, got; /* request length; WRITE payload received */
        uint16_t flags, type;
        uint32_t error;   /* NBD error for the reply, 0 = success */
        bool flush_after; /* FUA done as a FLUSH after the operation */
        unsigned nchunks;
        uint16_t chunk[NBD_CHUNKS];
        struct iovec iov[1 + NBD_CHUNKS]; /* reply header, then data */
        unsigned iovcnt;                  /* reply iovecs */
        unsigned out_idx;                 /* first iovec not fully written */
        uint8_t hdr[32];
};

struct nbd_client {
        struct vbd_nbd *srv;
        struct nbd_client *next;
        int fd;
        char peer[80];
        ev_io rio, wio;
        ev_timer hs_timer;
        enum cl_state state;
        unsigned busy; /* callbacks on the stack that use the client */
        bool dead;     /* drop: no more output, close once no I/O is in flight */
        bool closing;  /* close once everything in flight is answered */
        bool stalled;  /* not reading: no slot or no buffer */

        /* input */
        uint8_t *ibuf;
        size_t ilen, ioff;

        /* handshake */
        bool no_zeroes, structured, meta_alloc, transmission;
        uint32_t opt_code, opt_len;
        uint64_t skip;
        unsigned nopts;
        uint8_t *opt;
        uint8_t *obuf;
        size_t olen, ooff, osize;

        /* transmission */
        struct vbd_nbd_limits lim;
        uint8_t *arena;
        uint16_t free_chunk[NBD_CHUNKS];
        unsigned nfree_chunks;
        struct nbd_req *reqs, *free_reqs, *cur;
        struct nbd_req *outq, *outq_tail;
        unsigned in_io; /* requests in the image */
        unsigned used;  /* slots not free */
        void *scratch;
        struct vbd_extent ext[NBD_EXTENTS_MAX];
};

struct vbd_nbd {
        struct ev_loop *loop;
        struct vbd_image *img;
        struct vbd_nbd_addr addr;
        char endpoint[160];
        char name[VBD_NBD_NAME_MAX + 1];
        size_t name_len;
        bool writable, keep_alive;
        unsigned max_clients, nr_clients;
        struct nbd_client *clients;
        int lfd;
        ev_io lio;
        uint64_t size;
        uint32_t min_block, pref_block, max_block;
        uint16_t eflags; /* without the per-client SEND_DF */
        unsigned inflight;
        bool shutting_down;
        void (*done)(void *opaque);
        void *done_opaque;
        ev_timer shutdown_timer, done_timer;
        struct vbd_ratelimit rl;
};

/* ---- byte order ---- */

static void put16(uint8_t *p, uint16_t v)
{
        v = htobe16(v);
        memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
        v = htobe32(v);
        memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
        v = htobe64(v);
        memcpy(p, &v, 8);
}

static uint16_t get16(const uint8_t *p)
{
        uint16_t v;

        memcpy(&v, p, 2);
        return be16toh(v);
}

static uint32_t get32(const uint8_t *p)
{
        uint32_t v;

        memcpy(&v, p, 4);
        return be32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
        uint64_t v;

        memcpy(&v, p, 8);
        return be64toh(v);
}

/* ---- pure parts ---- */

int vbd_nbd_parse_endpoint(const char *ep, struct vbd_nbd_addr *ret)
{
        struct vbd_nbd_addr a = {0};
        const char *host, *colon, *p;
        size_t hlen;
        unsigned long port = 0;

        if (!ep)
                return -EINVAL;
        if (strncmp(ep, "unix:", 5) == 0) {
                p = ep + 5;
                if (!*p || strlen(p) >= sizeof(a.path))
                        return -EINVAL;
                a.unix_socket = true;
                memcpy(a.path, p, strlen(p) + 1);
                *ret = a;
                return 0;
        }
        if (strncmp(ep, "tcp:", 4) != 0)
                return -EINVAL;
        host = ep + 4;
        colon = strrchr(host, ':');
        if (!colon || colon == host)
                return -EINVAL;
        hlen = (size_t)(colon - host);
        if (host[0] == '[') {
                if (hlen < 3 || host[hlen - 1] != ']')
                        return -EINVAL;
                host++;
                hlen -= 2;
        } else if (memchr(host, ':', hlen) || memchr(host, ']', hlen)) {
                return -EINVAL; /* an IPv6 address needs brackets */
        }
        if (hlen == 0 || hlen >= sizeof(a.host) || memchr(host, '[', hlen))
                return -EINVAL;
        p = colon + 1;
        if (!*p || strlen(p) > 5)
                return -EINVAL;
        for (; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                port = port * 10 + (unsigned long)(*p - '0');
        }
        if (port == 0 || port > 65535)
                return -EINVAL;
        memcpy(a.host, host, hlen);
        a.host[hlen] = '\0';
        a.port = (unsigned short)port;
        *ret = a;
        return 0;
}

uint32_t vbd_nbd_check_request(const struct vbd_nbd_limits *lim, uint16_t flags, uint16_t type,
                               uint64_t offset, uint32_t length)
{
        bool ro = lim->eflags & NBD_EFLAG_READ_ONLY;
        bool in_range = offset <= lim->size && length <= lim->size - offset;
        bool aligned = !((offset | length) & (lim->min_block - 1));
        uint16_t allowed = 0;

        if (lim->eflags & NBD_EFLAG_SEND_FUA)
                allowed |= NBD_CMD_FLAG_FUA; /* "valid for all commands" */
        switch (type) {
        case NBD_CMD_READ:
                if (lim->eflags & NBD_EFLAG_SEND_DF)
                        allowed |= NBD_CMD_FLAG_DF;
                break;
        case NBD_CMD_WRITE_ZEROES:
                allowed |= NBD_CMD_FLAG_NO_HOLE;
                break;
        case NBD_CMD_BLOCK_STATUS:
                allowed |= NBD_CMD_FLAG_REQ_ONE;
                break;
        case NBD_CMD_DISC:
                return 0;
        }
        if (flags & ~allowed)
                return NBD_EINVAL;

        switch (type) {
        case NBD_CMD_READ:
                if (!length || length > lim->max_block || !aligned)
                        return NBD_EINVAL;
                return in_range ? 0 : NBD_EINVAL;
        case NBD_CMD_WRITE:
                if (ro)
                        return NBD_EPERM;
                if (!length || length > lim->max_block || !aligned)
                        return NBD_EINVAL;
                return in_range ? 0 : NBD_ENOSPC;
        case NBD_CMD_FLUSH:
                if (!(lim->eflags & NBD_EFLAG_SEND_FLUSH) || offset || length)
                        return NBD_EINVAL;
                return 0;
        case NBD_CMD_TRIM: /* any alignment: only the whole blocks inside are trimmed */
                if (ro)
                        return NBD_EPERM;
                if (!(lim->eflags & NBD_EFLAG_SEND_TRIM))
                        return NBD_EINVAL;
                return in_range ? 0 : NBD_ENOSPC;
        case NBD_CMD_WRITE_ZEROES:
                if (ro)
                        return NBD_EPERM;
                if (!(lim->eflags & NBD_EFLAG_SEND_WRITE_ZEROES) || !aligned)
                        return NBD_EINVAL;
                return in_range ? 0 : NBD_ENOSPC;
        case NBD_CMD_BLOCK_STATUS:
                if (!lim->structured || !lim->meta_alloc || !length || !aligned)
                        return NBD_EINVAL;
                return in_range ? 0 : NBD_EINVAL;
        default: /* CACHE, RESIZE, anything else: not offered */
                return NBD_EINVAL;
        }
}

uint32_t vbd_nbd_errno(int status)
{
        switch (status < 0 ? -status : status) {
        case 0:
                return 0;
        case EPERM:
        case EROFS:
        case EACCES:
                return NBD_EPERM;
        case ENOMEM:
                return NBD_ENOMEM;
        case EINVAL:
        case EOPNOTSUPP:
        case ERANGE:
                return NBD_EINVAL;
        case ENOSPC:
        case EDQUOT:
        case EFBIG:
                return NBD_ENOSPC;
        case EOVERFLOW:
                return NBD_EOVERFLOW;
        case ESHUTDOWN:
                return NBD_ESHUTDOWN;
        default:
                return NBD_EIO;
        }
}

/* ---- client lifetime ---- */

static void client_free(struct nbd_client *cl);
static void client_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void client_flush(struct nbd_client *cl);
static void server_client_gone(struct vbd_nbd *s);

/* A protocol violation or a dead socket: one log line, drop the client. */
static void client_kill(struct nbd_client *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void client_kill(struct nbd_client *cl, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        if (cl->dead)
                return;
        if (fmt) {
                va_start(ap, fmt);
                vsnprintf(msg, sizeof(msg), fmt, ap);
                va_end(ap);
                if (vbd_ratelimit_ok(&cl->srv->rl))
                        vbd_warn("%s: %s: disconnecting", cl->peer, msg);
        }
        cl->dead = true;
        cl->state = CL_STOPPED;
}

/* Free the client if nothing holds it any more.  Only from top-level callbacks. */
static bool client_maybe_free(struct nbd_client *cl)
{
        if (cl->busy || cl->in_io)
                return false;
        if (cl->dead || (cl->closing && !cl->outq && cl->ooff == cl->olen && !cl->cur)) {
                client_free(cl);
                return true;
        }
        return false;
}

/* Is there a reason not to read the socket now? */
static void client_update_watchers(struct nbd_client *cl)
{
        struct ev_loop *loop = cl->srv->loop;
        bool want_read = !cl->dead && !cl->closing && cl->state != CL_STOPPED && !cl->stalled;
        bool want_write = !cl->dead && (cl->ooff < cl->olen || cl->outq);

        if (want_read && !ev_is_active(&cl->rio))
                ev_io_start(loop, &cl->rio);
        else if (!want_read && ev_is_active(&cl->rio))
                ev_io_stop(loop, &cl->rio);
        if (want_write && !ev_is_active(&cl->wio))
                ev_io_start(loop, &cl->wio);
        else if (!want_write && ev_is_active(&cl->wio))
                ev_io_stop(loop, &cl->wio);
}

/* ---- handshake output ---- */

static void out_bytes(struct nbd_client *cl, const void *p, size_t n)
{
        if (cl->dead)
                return;
        if (cl->olen - cl->ooff + n > NBD_OBUF_MAX) {
                client_kill(cl, "does not read its option replies");
                return;
        }
        if (cl->ooff && cl->ooff == cl->olen)
                cl->ooff = cl->olen = 0;
        if (cl->olen + n > cl->osize) {
                size_t size = cl->osize ? cl->osize : 4096;
                uint8_t *b;

                while (size < cl->olen + n)
                        size *= 2;
                b = realloc(cl->obuf, size);
                if (!b) {
                        client_kill(cl, "out of memory");
                        return;
                }
                cl->obuf = b;
                cl->osize = size;
        }
        memcpy(cl->obuf + cl->olen, p, n);
        cl->olen += n;
}

/* An option reply header + data. */
static void opt_reply(struct nbd_client *cl, uint32_t type, const void *data, uint32_t len)
{
        uint8_t h[20];

        put64(h, NBD_REP_MAGIC);
        put32(h + 8, cl->opt_code);
        put32(h + 12, type);
        put32(h + 16, len);
        out_bytes(cl, h, sizeof(h));
        if (len)
                out_bytes(cl, data, len);
}

static void opt_error(struct nbd_client *cl, uint32_t type, const char *msg)
{
        opt_reply(cl, type, msg, msg ? (uint32_t)strlen(msg) : 0);
}

/* ---- transmission setup ---- */

static int client_start_transmission(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        size_t scratch = vbd_image_io_scratch_size(s->img);
        void *arena;

        arena = mmap(NULL, VBD_NBD_MAX_REQUEST, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (arena == MAP_FAILED)
                return -errno;
        cl->arena = arena;
        cl->reqs = calloc(VBD_NBD_MAX_INFLIGHT, sizeof(*cl->reqs));
        if (scratch)
                cl->scratch = calloc(VBD_NBD_MAX_INFLIGHT, scratch);
        if (!cl->reqs || (scratch && !cl->scratch))
                return -ENOMEM;
        for (unsigned i = 0; i < NBD_CHUNKS; i++)
                cl->free_chunk[i] = (uint16_t)(NBD_CHUNKS - 1 - i);
        cl->nfree_chunks = NBD_CHUNKS;
        for (unsigned i = VBD_NBD_MAX_INFLIGHT; i-- > 0;) {
                struct nbd_req *r = &cl->reqs[i];

                r->cl = cl;
                r->io.scratch = scratch ? (char *)cl->scratch + i * scratch : NULL;
                r->next = cl->free_reqs;
                cl->free_reqs = r;
        }
        free(cl->opt);
        cl->opt = NULL;
        cl->lim = (struct vbd_nbd_limits){
            .size = s->size,
            .min_block = s->min_block,
            .max_block = s->max_block,
            .eflags = (uint16_t)(s->eflags | (cl->structured ? NBD_EFLAG_SEND_DF : 0)),
            .structured = cl->structured,
            .meta_alloc = cl->meta_alloc,
        };
        cl->transmission = true;
        cl->state = CL_REQ_HDR;
        ev_timer_stop(s->loop, &cl->hs_timer);
        vbd_info("%s: connected (%s replies%s, %s)", cl->peer,
                 cl->structured ? "structured" : "simple",
                 cl->meta_alloc ? ", base:allocation" : "",
                 (cl->lim.eflags & NBD_EFLAG_READ_ONLY) ? "read-only" : "writable");
        return 0;
}

static uint16_t client_eflags(const struct nbd_client *cl)
{
        return (uint16_t)(cl->srv->eflags | (cl->structured ? NBD_EFLAG_SEND_DF : 0));
}

/* ---- options ---- */

static bool name_is_ours(const struct vbd_nbd *s, const uint8_t *name, uint32_t len)
{
        return len == s->name_len && memcmp(name, s->name, len) == 0;
}

static void opt_info_go(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        const uint8_t *d = cl->opt;
        uint32_t len = cl->opt_len, nlen, nreq;
        uint8_t info[18];
        bool want_name = false;

        if (len < 6 || (nlen = get32(d)) > len - 6 || nlen > VBD_NBD_NAME_MAX) {
                opt_error(cl, NBD_REP_ERR_INVALID, "malformed option");
                return;
        }
        nreq = get16(d + 4 + nlen);
        if (len != 4 + nlen + 2 + 2 * nreq) {
                opt_error(cl, NBD_REP_ERR_INVALID, "malformed option: bad length");
                return;
        }
        if (!name_is_ours(s, d + 4, nlen)) {
                opt_error(cl, NBD_REP_ERR_UNKNOWN, "no such export");
                return;
        }
        for (uint32_t i = 0; i < nreq; i++)
                if (get16(d + 4 + nlen + 2 + 2 * i) == NBD_INFO_NAME)
                        want_name = true;

        put16(info, NBD_INFO_EXPORT);
        put64(info + 2, s->size);
        put16(info + 10, client_eflags(cl));
        opt_reply(cl, NBD_REP_INFO, info, 12);
        /* Sent even when not asked for: our requests must be aligned. */
        put16(info, NBD_INFO_BLOCK_SIZE);
        put32(info + 2, s->min_block);
        put32(info + 6, s->pref_block);
        put32(info + 10, s->max_block);
        opt_reply(cl, NBD_REP_INFO, info, 14);
        if (want_name) {
                uint8_t buf[2 + VBD_NBD_NAME_MAX];

                put16(buf, NBD_INFO_NAME);
                memcpy(buf + 2, s->name, s->name_len);
                opt_reply(cl, NBD_REP_INFO, buf, (uint32_t)(2 + s->name_len));
        }
        opt_reply(cl, NBD_REP_ACK, NULL, 0);
        if (cl->opt_code == NBD_OPT_GO && !cl->dead) {
                int r = client_start_transmission(cl);

                if (r < 0)
                        client_kill(cl, "cannot start transmission: %s", strerror(-r));
        }
}

static void opt_export_name(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        static const uint8_t zeroes[124];
        uint8_t h[10];
        int r;

        if (!name_is_ours(s, cl->opt, cl->opt_len)) {
                client_kill(cl, "NBD_OPT_EXPORT_NAME for an unknown export");
                return;
        }
        put64(h, s->size);
        put16(h + 8, client_eflags(cl));
        out_bytes(cl, h, sizeof(h));
        if (!cl->no_zeroes)
                out_bytes(cl, zeroes, sizeof(zeroes));
        if (cl->dead)
                return;
        r = client_start_transmission(cl);
        if (r < 0)
                client_kill(cl, "cannot start transmission: %s", strerror(-r));
}

static void opt_meta_context(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        const uint8_t *d = cl->opt;
        uint32_t len = cl->opt_len, nlen, nq, pos;
        bool set = cl->opt_code == NBD_OPT_SET_META_CONTEXT, found = false;
        uint8_t rep[4 + sizeof(NBD_META_BASE_ALLOCATION)];

        if (set)
                cl->meta_alloc = false; /* replaced even when this fails */
        if (!cl->structured) {
                opt_error(cl, NBD_REP_ERR_INVALID, "negotiate structured replies first");
                return;
        }
        if (len < 8 || (nlen = get32(d)) > len - 8 || nlen > VBD_NBD_NAME_MAX) {
                opt_error(cl, NBD_REP_ERR_INVALID, "malformed option");
                return;
        }
        nq = get32(d + 4 + nlen);
        pos = 8 + nlen;
        /* Check the whole option before answering anything. */
        for (uint32_t i = 0; i < nq; i++) {
                uint32_t ql;

                if (len - pos < 4 || (ql = get32(d + pos)) > len - pos - 4 ||
                    ql > VBD_NBD_NAME_MAX) {
                        opt_error(cl, NBD_REP_ERR_INVALID, "malformed query");
                        return;
                }
                pos += 4 + ql;
        }
        if (pos != len) {
                opt_error(cl, NBD_REP_ERR_INVALID, "malformed option: trailing data");
                return;
        }
        if (!name_is_ours(s, d + 4, nlen)) {
                opt_error(cl, NBD_REP_ERR_UNKNOWN, "no such export");
                return;
        }
        pos = 8 + nlen;
        for (uint32_t i = 0; i < nq; i++) {
                uint32_t ql = get32(d + pos);
                const char *q = (const char *)d + pos + 4;

                pos += 4 + ql;
                if (ql == strlen(NBD_META_BASE_ALLOCATION) &&
                    memcmp(q, NBD_META_BASE_ALLOCATION, ql) == 0)
                        found = true;
                else if (!set && ql == 5 && memcmp(q, "base:", 5) == 0)
                        found = true; /* LIST with a namespace: everything in it */
        }
        if (!set && nq == 0)
                found = true;
        if (found) {
                put32(rep, set ? NBD_META_ID_ALLOCATION : 0);
                memcpy(rep + 4, NBD_META_BASE_ALLOCATION, strlen(NBD_META_BASE_ALLOCATION));
                opt_reply(cl, NBD_REP_META_CONTEXT, rep,
                          (uint32_t)(4 + strlen(NBD_META_BASE_ALLOCATION)));
        }
        if (set)
                cl->meta_alloc = found;
        opt_reply(cl, NBD_REP_ACK, NULL, 0);
}

static void handle_option(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;

        vbd_debug("%s: option %" PRIu32 " (%" PRIu32 " bytes)", cl->peer, cl->opt_code,
                  cl->opt_len);
        if (s->shutting_down && cl->opt_code != NBD_OPT_ABORT) {
                opt_error(cl, NBD_REP_ERR_SHUTDOWN, "the server is shutting down");
                return;
        }
        switch (cl->opt_code) {
        case NBD_OPT_EXPORT_NAME:
                opt_export_name(cl);
                return;
        case NBD_OPT_ABORT:
                opt_reply(cl, NBD_REP_ACK, NULL, 0);
                cl->closing = true;
                cl->state = CL_STOPPED;
                return;
        case NBD_OPT_LIST: {
                uint8_t buf[4 + VBD_NBD_NAME_MAX];

                if (cl->opt_len) {
                        opt_error(cl, NBD_REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                        return;
                }
                put32(buf, (uint32_t)s->name_len);
                memcpy(buf + 4, s->name, s->name_len);
                opt_reply(cl, NBD_REP_SERVER, buf, (uint32_t)(4 + s->name_len));
                opt_reply(cl, NBD_REP_ACK, NULL, 0);
                return;
        }
        case NBD_OPT_STARTTLS:
                opt_error(cl, NBD_REP_ERR_UNSUP, "TLS is not supported by this server");
                return;
        case NBD_OPT_INFO:
        case NBD_OPT_GO:
                opt_info_go(cl);
                return;
        case NBD_OPT_STRUCTURED_REPLY:
                if (cl->opt_len) {
                        opt_error(cl, NBD_REP_ERR_INVALID,
                                  "NBD_OPT_STRUCTURED_REPLY takes no data");
                        return;
                }
                cl->structured = true;
                opt_reply(cl, NBD_REP_ACK, NULL, 0);
                return;
        case NBD_OPT_LIST_META_CONTEXT:
        case NBD_OPT_SET_META_CONTEXT:
                opt_meta_context(cl);
                return;
        default: /* EXTENDED_HEADERS and anything else */
                opt_error(cl, NBD_REP_ERR_UNSUP, NULL);
                return;
        }
}

/* ---- requests ---- */

static struct nbd_req *req_get(struct nbd_client *cl)
{
        struct nbd_req *r = cl->free_reqs;

        if (r) {
                cl->free_reqs = r->next;
                r->next = NULL;
                cl->used++;
        }
        return r;
}

static void req_put(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;

        for (unsigned i = 0; i < r->nchunks; i++)
                cl->free_chunk[cl->nfree_chunks++] = r->chunk[i];
        r->nchunks = 0;
        r->state = REQ_FREE;
        r->next = cl->free_reqs;
        cl->free_reqs = r;
        cl->used--;
        if (cl->stalled) {
                /* Look at the buffered input again, from the loop. */
                cl->stalled = false;
                if (!cl->dead && !cl->closing && cl->state != CL_STOPPED) {
                        ev_io_start(cl->srv->loop, &cl->rio);
                        ev_feed_event(cl->srv->loop, &cl->rio, EV_READ);
                }
        }
}

/* Take buffer chunks for len bytes and point the data iovecs at them. */
static bool req_get_chunks(struct nbd_req *r, uint32_t len)
{
        struct nbd_client *cl = r->cl;
        unsigned n = (len + NBD_CHUNK - 1) / NBD_CHUNK;

        if (n > cl->nfree_chunks)
                return false;
        for (unsigned i = 0; i < n; i++) {
                uint32_t c = cl->free_chunk[--cl->nfree_chunks];
                uint32_t l = len - i * NBD_CHUNK < NBD_CHUNK ? len - i * NBD_CHUNK : NBD_CHUNK;

                r->chunk[i] = (uint16_t)c;
                r->iov[1 + i].iov_base = cl->arena + (size_t)c * NBD_CHUNK;
                r->iov[1 + i].iov_len = l;
        }
        r->nchunks = n;
        return true;
}

/* Queue the reply of r (r->error, data in r->iov[1..]) for sending. */
static void req_queue_reply(struct nbd_req *r, unsigned data_iovs, uint32_t data_len)
{
        struct nbd_client *cl = r->cl;
        bool structured = cl->structured;
        size_t h = 0;

        if (r->error) {
                data_iovs = 0;
                if (structured && (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)) {
                        put32(r->hdr, NBD_STRUCTURED_REPLY_MAGIC);
                        put16(r->hdr + 4, NBD_REPLY_FLAG_DONE);
                        put16(r->hdr + 6, NBD_REPLY_TYPE_ERROR);
                        put64(r->hdr + 8, r->cookie);
                        put32(r->hdr + 16, 6);
                        put32(r->hdr + 20, r->error);
                        put16(r->hdr + 24, 0);
                        h = 26;
                }
        } else if (structured && r->type == NBD_CMD_READ) {
                put32(r->hdr, NBD_STRUCTURED_REPLY_MAGIC);
                put16(r->hdr + 4, NBD_REPLY_FLAG_DONE);
                put16(r->hdr + 6, NBD_REPLY_TYPE_OFFSET_DATA);
                put64(r->hdr + 8, r->cookie);
                put32(r->hdr + 16, 8 + data_len);
                put64(r->hdr + 20, r->offset);
                h = 28;
        } else if (r->type == NBD_CMD_BLOCK_STATUS) {
                put32(r->hdr, NBD_STRUCTURED_REPLY_MAGIC);
                put16(r->hdr + 4, NBD_REPLY_FLAG_DONE);
                put16(r->hdr + 6, NBD_REPLY_TYPE_BLOCK_STATUS);
                put64(r->hdr + 8, r->cookie);
                put32(r->hdr + 16, data_len);
                h = 20;
        }
        if (!h) { /* a simple reply: errors without structure, and every other command */
                put32(r->hdr, NBD_SIMPLE_REPLY_MAGIC);
                put32(r->hdr + 4, r->error);
                put64(r->hdr + 8, r->cookie);
                h = 16;
                if (r->type != NBD_CMD_READ || r->error)
                        data_iovs = 0;
        }
        r->iov[0].iov_base = r->hdr;
        r->iov[0].iov_len = h;
        r->iovcnt = 1 + data_iovs;
        r->out_idx = 0;
        r->state = REQ_QUEUED;
        r->next = NULL;
        if (cl->outq_tail)
                cl->outq_tail->next = r;
        else
                cl->outq = r;
        cl->outq_tail = r;
}

static void req_io_done(struct vbd_io *io, int status);

static void req_submit(struct nbd_req *r, enum vbd_op op, uint32_t flags, uint64_t offset,
                       uint64_t len, unsigned iovcnt)
{
        struct nbd_client *cl = r->cl;

        r->io.op = op;
        r->io.flags = flags;
        r->io.offset = offset;
        r->io.len = len;
        r->io.iov = iovcnt ? r->iov + 1 : NULL;
        r->io.iovcnt = iovcnt;
        r->io.done = req_io_done;
        r->io.opaque = r;
        if (r->state != REQ_IO) {
                r->state = REQ_IO;
                cl->in_io++;
                cl->srv->inflight++;
        }
        vbd_image_submit(cl->srv->img, &r->io);
}

static void req_finish(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;

        if (r->state == REQ_IO) {
                cl->in_io--;
                cl->srv->inflight--;
        }
        if (cl->dead) {
                req_put(r);
                return;
        }
        req_queue_reply(r, r->type == NBD_CMD_READ ? r->nchunks : 0,
                        r->type == NBD_CMD_READ ? r->len : 0);
        if (!cl->busy)
                client_flush(cl);
}

static void req_io_done(struct vbd_io *io, int status)
{
        struct nbd_req *r = io->opaque;
        struct nbd_client *cl = r->cl;

        if (status == 0 && r->flush_after && !cl->dead) {
                r->flush_after = false;
                req_submit(r, VBD_OP_FLUSH, 0, 0, 0, 0);
                return;
        }
        if (status < 0)
                vbd_debug("%s: %s offset %llu len %llu: %s", cl->peer, vbd_op_name(io->op),
                          (unsigned long long)io->offset, (unsigned long long)io->len,
                          strerror(-status));
        r->error = vbd_nbd_errno(status);
        req_finish(r);
        if (!cl->busy) {
                client_update_watchers(cl);
                client_maybe_free(cl);
        }
}

static void req_block_status(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;
        unsigned max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_EXTENTS_MAX, n = 0, out = 0;
        uint8_t *p;
        int rc;

        rc = vbd_image_block_status(cl->srv->img, r->offset, r->len, cl->ext, max, &n);
        if (rc < 0) {
                r->error = vbd_nbd_errno(rc);
                req_queue_reply(r, 0, 0);
                return;
        }
        p = r->iov[1].iov_base;
        put32(p, NBD_META_ID_ALLOCATION);
        for (unsigned i = 0; i < n; i++) {
                uint32_t f = 0;

                if (cl->ext[i].flags & VBD_EXTENT_HOLE)
                        f |= NBD_STATE_HOLE;
                if (cl->ext[i].flags & VBD_EXTENT_ZERO)
                        f |= NBD_STATE_ZERO;
                /* Extents lie inside the request: each fits in 32 bits. */
                if (out && get32(p + 4 + 8 * (out - 1) + 4) == f) {
                        uint8_t *l = p + 4 + 8 * (out - 1);

                        put32(l, get32(l) + (uint32_t)cl->ext[i].len);
                        continue;
                }
                put32(p + 4 + 8 * out, (uint32_t)cl->ext[i].len);
                put32(p + 4 + 8 * out + 4, f);
                out++;
        }
        r->iov[1].iov_len = 4 + 8 * out;
        req_queue_reply(r, 1, 4 + 8 * out);
}

/* The header of r is in; its payload (WRITE) too.  Start it. */
static void req_start(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;
        const struct vbd_info *info = vbd_image_info(cl->srv->img);
        uint32_t fua = 0;

        if (r->error) {
                req_queue_reply(r, 0, 0);
                return;
        }
        if (r->flags & NBD_CMD_FLAG_FUA) {
                if (r->type == NBD_CMD_WRITE && (info->caps & VBD_CAP_FUA))
                        fua = VBD_IO_FUA;
                else if (r->type == NBD_CMD_WRITE || r->type == NBD_CMD_TRIM ||
                         r->type == NBD_CMD_WRITE_ZEROES)
                        r->flush_after = (info->caps & VBD_CAP_FLUSH) != 0;
        }
        switch (r->type) {
        case NBD_CMD_READ:
                req_submit(r, VBD_OP_READ, 0, r->offset, r->len, r->nchunks);
                return;
        case NBD_CMD_WRITE:
                req_submit(r, VBD_OP_WRITE, fua, r->offset, r->len, r->nchunks);
                return;
        case NBD_CMD_FLUSH:
                req_submit(r, VBD_OP_FLUSH, 0, 0, 0, 0);
                return;
        case NBD_CMD_TRIM: {
                /* Only whole blocks; a trim is a hint, the rest is left alone. */
                uint64_t b = cl->lim.min_block;
                uint64_t start = (r->offset + b - 1) / b * b, end = (r->offset + r->len) / b * b;

                if (end <= start) {
                        r->flush_after = false;
                        req_queue_reply(r, 0, 0);
                        return;
                }
                req_submit(r, VBD_OP_DISCARD, 0, start, end - start, 0);
                return;
        }
        case NBD_CMD_WRITE_ZEROES:
                req_submit(r, VBD_OP_WRITE_ZEROES,
                           (r->flags & NBD_CMD_FLAG_NO_HOLE) ? 0 : VBD_IO_MAY_UNMAP, r->offset,
                           r->len, 0);
                return;
        case NBD_CMD_BLOCK_STATUS:
                req_block_status(r);
                return;
        default:
                r->error = NBD_EINVAL;
                req_queue_reply(r, 0, 0);
                return;
        }
}

/* A request header is in cl->ibuf at ioff. */
static void handle_request_header(struct nbd_client *cl, const uint8_t *h)
{
        struct nbd_req *r;
        uint32_t magic = get32(h);
        uint16_t flags = get16(h + 4), type = get16(h + 6);
        uint64_t cookie = get64(h + 8), offset = get64(h + 16);
        uint32_t len = get32(h + 24);

        if (magic != NBD_REQUEST_MAGIC) {
                client_kill(cl, "bad request magic %#" PRIx32, magic);
                return;
        }
        vbd_debug("%s: cmd %u flags %#x offset %" PRIu64 " len %" PRIu32, cl->peer, type, flags,
                  offset, len);
        if (type == NBD_CMD_DISC) {
                cl->closing = true;
                cl->state = CL_STOPPED;
                return;
        }
        if (type == NBD_CMD_WRITE && len > VBD_NBD_MAX_REQUEST) {
                /* We will not swallow that much: answer, then hang up. */
                r = req_get(cl);
                r->cookie = cookie;
                r->type = type;
                r->error = NBD_EINVAL;
                req_queue_reply(r, 0, 0);
                vbd_warn("%s: write of %" PRIu32 " bytes (limit %u): disconnecting", cl->peer, len,
                         VBD_NBD_MAX_REQUEST);
                cl->closing = true;
                cl->state = CL_STOPPED;
                return;
        }
        r = req_get(cl); /* there is one: the header is read only when one is free */
        r->cookie = cookie;
        r->offset = offset;
        r->len = len;
        r->flags = flags;
        r->type = type;
        r->got = 0;
        r->flush_after = false;
        r->nchunks = 0;
        r->error = cl->srv->shutting_down
                       ? NBD_ESHUTDOWN
                       : vbd_nbd_check_request(&cl->lim, flags, type, offset, len);
        cl->cur = r;
        if (type == NBD_CMD_WRITE ||
            ((type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS) && !r->error)) {
                cl->state = CL_REQ_BUF;
                return;
        }
        cl->cur = NULL;
        req_start(r);
}

/* ---- input ---- */

static size_t in_avail(const struct nbd_client *cl)
{
        return cl->ilen - cl->ioff;
}

enum { IN_MORE, IN_STOP };

/* Consume what is buffered.  IN_MORE: read the socket for more. */
static int client_process(struct nbd_client *cl)
{
        for (;;) {
                const uint8_t *p = cl->ibuf + cl->ioff;

                if (cl->dead || cl->closing || cl->stalled)
                        return IN_STOP;
                switch (cl->state) {
                case CL_CLIENT_FLAGS: {
                        uint32_t f;

                        if (in_avail(cl) < 4)
                                return IN_MORE;
                        f = get32(p);
                        cl->ioff += 4;
                        if (f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
                                client_kill(cl, "unknown client flags %#" PRIx32, f);
                                return IN_STOP;
                        }
                        cl->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
                        cl->state = CL_OPT_HDR;
                        break;
                }
                case CL_OPT_HDR:
                        if (in_avail(cl) < 16)
                                return IN_MORE;
                        if (get64(p) != NBD_IHAVEOPT) {
                                client_kill(cl, "bad option magic");
                                return IN_STOP;
                        }
                        cl->opt_code = get32(p + 8);
                        cl->opt_len = get32(p + 12);
                        cl->ioff += 16;
                        if (++cl->nopts > NBD_OPTS_MAX) {
                                client_kill(cl, "more than %d options", NBD_OPTS_MAX);
                                return IN_STOP;
                        }
                        if (cl->opt_len > NBD_OPT_SKIP_MAX) {
                                client_kill(cl, "option %" PRIu32 " of %" PRIu32 " bytes",
                                            cl->opt_code, cl->opt_len);
                                return IN_STOP;
                        }
                        if (cl->opt_len > NBD_OPT_MAX) {
                                if (cl->opt_code == NBD_OPT_EXPORT_NAME) {
                                        /* cannot be answered with an error */
                                        client_kill(cl, "export name of %" PRIu32 " bytes",
                                                    cl->opt_len);
                                        return IN_STOP;
                                }
                                cl->skip = cl->opt_len;
                                cl->state = CL_OPT_SKIP;
                        } else {
                                cl->state = CL_OPT_DATA;
                        }
                        break;
                case CL_OPT_DATA:
                        if (in_avail(cl) < cl->opt_len)
                                return IN_MORE;
                        memcpy(cl->opt, p, cl->opt_len);
                        cl->ioff += cl->opt_len;
                        cl->state = CL_OPT_HDR;
                        handle_option(cl);
                        break;
                case CL_OPT_SKIP: {
                        size_t n = in_avail(cl) < cl->skip ? in_avail(cl) : (size_t)cl->skip;

                        cl->ioff += n;
                        cl->skip -= n;
                        if (cl->skip)
                                return IN_MORE;
                        cl->state = CL_OPT_HDR;
                        opt_error(cl, NBD_REP_ERR_TOO_BIG, "option too long");
                        break;
                }
                case CL_REQ_HDR:
                        if (!cl->free_reqs) {
                                cl->stalled = true;
                                return IN_STOP;
                        }
                        if (in_avail(cl) < NBD_REQ_HDR)
                                return IN_MORE;
                        cl->ioff += NBD_REQ_HDR;
                        handle_request_header(cl, p);
                        break;
                case CL_REQ_BUF: {
                        struct nbd_req *r = cl->cur;

                        if (!req_get_chunks(r, r->type == NBD_CMD_BLOCK_STATUS
                                                   ? 4 + 8 * NBD_EXTENTS_MAX
                                                   : r->len)) {
                                cl->stalled = true;
                                return IN_STOP;
                        }
                        if (r->type == NBD_CMD_WRITE) {
                                r->state = REQ_PAYLOAD;
                                cl->state = CL_REQ_PAYLOAD;
                                break;
                        }
                        cl->cur = NULL;
                        cl->state = CL_REQ_HDR;
                        req_start(r);
                        break;
                }
                case CL_REQ_PAYLOAD: {
                        struct nbd_req *r = cl->cur;

                        while (r->got < r->len && in_avail(cl)) {
                                unsigned c = r->got / NBD_CHUNK, o = r->got % NBD_CHUNK;
                                size_t n = r->iov[1 + c].iov_len - o;

                                if (n > in_avail(cl))
                                        n = in_avail(cl);
                                memcpy((uint8_t *)r->iov[1 + c].iov_base + o, cl->ibuf + cl->ioff,
                                       n);
                                cl->ioff += n;
                                r->got += (uint32_t)n;
                        }
                        if (r->got < r->len)
                                return IN_MORE;
                        cl->cur = NULL;
                        cl->state = CL_REQ_HDR;
                        req_start(r);
                        break;
                }
                case CL_STOPPED:
                        return IN_STOP;
                }
        }
}

/* Read straight into a WRITE's buffer: large payloads skip the copy. */
static ssize_t read_payload_direct(struct nbd_client *cl)
{
        struct nbd_req *r = cl->cur;
        unsigned c = r->got / NBD_CHUNK, o = r->got % NBD_CHUNK;
        ssize_t n;

        n = read(cl->fd, (uint8_t *)r->iov[1 + c].iov_base + o, r->iov[1 + c].iov_len - o);
        if (n > 0)
                r->got += (uint32_t)n;
        return n;
}

static void client_on_eof(struct nbd_client *cl)
{
        if (!cl->transmission) {
                vbd_debug("%s: closed the connection during the handshake", cl->peer);
                cl->dead = true;
                return;
        }
        if (cl->cur) {
                /* A request cut short: nothing to answer. */
                req_put(cl->cur);
                cl->cur = NULL;
        }
        vbd_debug("%s: end of input", cl->peer);
        cl->closing = true;
        cl->state = CL_STOPPED;
}

static void client_read_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nbd_client *cl = w->data;

        cl->busy++;
        for (;;) {
                ssize_t n;

                if (client_process(cl) == IN_STOP)
                        break;
                if (cl->state == CL_REQ_PAYLOAD && !in_avail(cl) &&
                    cl->cur->len - cl->cur->got >= 4096) {
                        n = read_payload_direct(cl);
                } else {
                        if (cl->ioff) { /* what is left is a partial header or option */
                                memmove(cl->ibuf, cl->ibuf + cl->ioff, in_avail(cl));
                                cl->ilen -= cl->ioff;
                                cl->ioff = 0;
                        }
                        n = read(cl->fd, cl->ibuf + cl->ilen, NBD_IBUF - cl->ilen);
                        if (n > 0)
                                cl->ilen += (size_t)n;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (n < 0) {
                        client_kill(cl, "read: %s", strerror(errno));
                        break;
                }
                if (n == 0) {
                        client_on_eof(cl);
                        break;
                }
        }
        client_flush(cl);
        cl->busy--;
        client_update_watchers(cl);
        client_maybe_free(cl);
}

/* ---- output ---- */

static void client_flush(struct nbd_client *cl)
{
        struct iovec iov[NBD_WRITEV_IOVS];

        if (cl->dead)
                return;
        while (cl->ooff < cl->olen) {
                ssize_t n = write(cl->fd, cl->obuf + cl->ooff, cl->olen - cl->ooff);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n < 0) {
                        client_kill(cl, NULL);
                        return;
                }
                cl->ooff += (size_t)n;
        }
        while (cl->outq) {
                unsigned cnt = 0;
                ssize_t n;

                /* Gather the iovecs of as many queued replies as fit. */
                for (struct nbd_req *r = cl->outq; r && cnt < NBD_WRITEV_IOVS; r = r->next)
                        for (unsigned i = r->out_idx; i < r->iovcnt && cnt < NBD_WRITEV_IOVS; i++)
                                iov[cnt++] = r->iov[i];
                n = writev(cl->fd, iov, (int)cnt);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        return;
                if (n < 0) {
                        client_kill(cl, NULL); /* the peer is gone */
                        return;
                }
                /* Advance by n bytes. */
                while (cl->outq) {
                        struct nbd_req *r = cl->outq;

                        while (r->out_idx < r->iovcnt && (size_t)n >= r->iov[r->out_idx].iov_len) {
                                n -= (ssize_t)r->iov[r->out_idx].iov_len;
                                r->out_idx++;
                        }
                        if (r->out_idx < r->iovcnt) {
                                r->iov[r->out_idx].iov_base =
                                    (uint8_t *)r->iov[r->out_idx].iov_base + n;
                                r->iov[r->out_idx].iov_len -= (size_t)n;
                                break;
                        }
                        cl->outq = r->next;
                        if (!cl->outq)
                                cl->outq_tail = NULL;
                        req_put(r);
                }
        }
}

static void client_write_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nbd_client *cl = w->data;

        cl->busy++;
        client_flush(cl);
        cl->busy--;
        client_update_watchers(cl);
        client_maybe_free(cl);
}

static void client_hs_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct nbd_client *cl = w->data;

        client_kill(cl, "no export chosen within %.0f s", NBD_HANDSHAKE_S);
        client_update_watchers(cl);
        client_maybe_free(cl);
}

static void client_free(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        struct nbd_client **pp;

        for (pp = &s->clients; *pp; pp = &(*pp)->next) {
                if (*pp == cl) {
                        *pp = cl->next;
                        break;
                }
        }
        s->nr_clients--;
        ev_io_stop(s->loop, &cl->rio);
        ev_io_stop(s->loop, &cl->wio);
        ev_clear_pending(s->loop, &cl->rio);
        ev_clear_pending(s->loop, &cl->wio);
        ev_timer_stop(s->loop, &cl->hs_timer);
        close(cl->fd);
        vbd_info("%s: disconnected", cl->peer);
        if (cl->arena)
                munmap(cl->arena, VBD_NBD_MAX_REQUEST);
        free(cl->reqs);
        free(cl->scratch);
        free(cl->ibuf);
        free(cl->opt);
        free(cl->obuf);
        free(cl);
        server_client_gone(s);
}

/* ---- server ---- */

static void peer_name(int fd, bool unix_socket, char *buf, size_t size)
{
        if (unix_socket) {
                struct ucred cred;
                socklen_t len = sizeof(cred);

                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
                        snprintf(buf, size, "client pid %d uid %u", (int)cred.pid,
                                 (unsigned)cred.uid);
                else
                        snprintf(buf, size, "client fd %d", fd);
        } else {
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                char host[64] = "?", port[8] = "?";

                if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
                        (void)getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
                                          sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
                snprintf(buf, size, "client %s%s%s:%s", strchr(host, ':') ? "[" : "", host,
                         strchr(host, ':') ? "]" : "", port);
        }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd_nbd *s = w->data;

        for (;;) {
                struct nbd_client *cl;
                uint8_t greeting[18];
                int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED &&
                            vbd_ratelimit_ok(&s->rl))
                                vbd_warn("accept on %s: %s", s->endpoint, strerror(errno));
                        return;
                }
                if (s->nr_clients >= s->max_clients) {
                        if (vbd_ratelimit_ok(&s->rl))
                                vbd_warn("%u clients already: refusing one", s->nr_clients);
                        close(fd);
                        continue;
                }
                cl = calloc(1, sizeof(*cl));
                if (cl) {
                        cl->ibuf = malloc(NBD_IBUF);
                        cl->opt = malloc(NBD_OPT_MAX);
                }
                if (!cl || !cl->ibuf || !cl->opt) {
                        if (cl) {
                                free(cl->ibuf);
                                free(cl->opt);
                        }
                        free(cl);
                        close(fd);
                        vbd_warn("out of memory: refusing a client");
                        continue;
                }
                if (!s->addr.unix_socket) {
                        int one = 1;

                        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                }
                cl->srv = s;
                cl->fd = fd;
                peer_name(fd, s->addr.unix_socket, cl->peer, sizeof(cl->peer));
                ev_io_init(&cl->rio, client_read_cb, fd, EV_READ);
                cl->rio.data = cl;
                ev_io_init(&cl->wio, client_write_cb, fd, EV_WRITE);
                cl->wio.data = cl;
                ev_timer_init(&cl->hs_timer, client_hs_timeout_cb, NBD_HANDSHAKE_S, 0);
                cl->hs_timer.data = cl;
                ev_timer_start(loop, &cl->hs_timer);
                cl->state = CL_CLIENT_FLAGS;
                cl->next = s->clients;
                s->clients = cl;
                s->nr_clients++;
                vbd_debug("%s: new connection", cl->peer);

                put64(greeting, NBD_MAGIC);
                put64(greeting + 8, NBD_IHAVEOPT);
                put16(greeting + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
                out_bytes(cl, greeting, sizeof(greeting));
                client_flush(cl);
                client_update_watchers(cl);
                client_maybe_free(cl);
        }
}

static int listen_unix(struct vbd_nbd *s)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        const char *path = s->addr.path;
        mode_t old_mask;
        int r, fd;

        r = vbd_unix_socket_alive(path);
        if (r > 0)
                return vbd_log_errno(EADDRINUSE, "%s: a server listens there already: %m", path);
        if (r < 0)
                return vbd_log_errno(r, "%s: %m (not replacing it)", path);
        (void)unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return vbd_log_errno(errno, "socket: %m");
        memcpy(sa.sun_path, path, strlen(path) + 1);
        old_mask = umask(0077);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old_mask);
        if (r < 0) {
                r = vbd_log_errno(errno, "bind %s: %m", path);
                close(fd);
                return r;
        }
        if (chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
                r = vbd_log_errno(errno, "%s: %m", path);
                (void)unlink(path);
                close(fd);
                return r;
        }
        s->lfd = fd;
        return 0;
}

static int listen_tcp(struct vbd_nbd *s)
{
        struct addrinfo hints = {.ai_family = AF_UNSPEC,
                                 .ai_socktype = SOCK_STREAM,
                                 .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
        struct addrinfo *res = NULL, *ai;
        char port[8];
        int r, fd = -1, one = 1;

        snprintf(port, sizeof(port), "%u", s->addr.port);
        r = getaddrinfo(s->addr.host, port, &hints, &res);
        if (r != 0) {
                vbd_err("%s: %s", s->endpoint, gai_strerror(r));
                return -EADDRNOTAVAIL;
        }
        r = -EADDRNOTAVAIL;
        for (ai = res; ai; ai = ai->ai_next) {
                fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                            ai->ai_protocol);
                if (fd < 0) {
                        r = -errno;
                        continue;
                }
                (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0)
                        break;
                r = -errno;
                close(fd);
                fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0)
                return vbd_log_errno(r, "cannot listen on %s: %m", s->endpoint);
        s->lfd = fd;
        return 0;
}

struct vbd_nbd *vbd_nbd_new(struct ev_loop *loop, struct vbd_image *img,
                            const struct vbd_nbd_config *cfg)
{
        const struct vbd_info *info = vbd_image_info(img);
        struct vbd_nbd *s;
        const char *name = cfg->name ? cfg->name : "";
        int r;

        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        s->loop = loop;
        s->img = img;
        s->lfd = -1;
        s->rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 10);
        if (vbd_nbd_parse_endpoint(cfg->endpoint, &s->addr) < 0) {
                r = vbd_log_errno(EINVAL, "bad NBD endpoint '%s' (unix:PATH or tcp:ADDR:PORT)",
                                  cfg->endpoint ? cfg->endpoint : "");
                goto fail;
        }
        s->name_len = strlen(name);
        if (s->name_len > VBD_NBD_NAME_MAX) {
                r = vbd_log_errno(ENAMETOOLONG, "NBD export name longer than %d bytes",
                                  VBD_NBD_NAME_MAX);
                goto fail;
        }
        memcpy(s->name, name, s->name_len + 1);
        snprintf(s->endpoint, sizeof(s->endpoint), "%s", cfg->endpoint);
        s->writable = cfg->writable && !vbd_image_readonly(img);
        if (cfg->writable && !s->writable)
                vbd_warn("the image is read-only: the NBD export is too");
        s->max_clients = cfg->max_clients ? cfg->max_clients : VBD_NBD_MAX_CLIENTS;
        s->keep_alive = cfg->keep_loop_alive;

        s->size = info->size;
        s->min_block = info->logical_block;
        s->pref_block = info->physical_block > 4096 ? info->physical_block : 4096;
        if (s->pref_block & (s->pref_block - 1))
                s->pref_block = 4096;
        s->max_block = VBD_NBD_MAX_REQUEST;
        if (info->max_io && info->max_io < s->max_block)
                s->max_block = info->max_io;
        s->eflags = NBD_EFLAG_HAS_FLAGS | NBD_EFLAG_CAN_MULTI_CONN;
        if (info->caps & VBD_CAP_FLUSH)
                s->eflags |= NBD_EFLAG_SEND_FLUSH;
        if (!s->writable) {
                s->eflags |= NBD_EFLAG_READ_ONLY;
        } else {
                if (info->caps & (VBD_CAP_FUA | VBD_CAP_FLUSH))
                        s->eflags |= NBD_EFLAG_SEND_FUA;
                if (info->caps & VBD_CAP_DISCARD)
                        s->eflags |= NBD_EFLAG_SEND_TRIM;
                if (info->caps & VBD_CAP_WRITE_ZEROES)
                        s->eflags |= NBD_EFLAG_SEND_WRITE_ZEROES;
        }

        r = s->addr.unix_socket ? listen_unix(s) : listen_tcp(s);
        if (r < 0)
                goto fail;
        ev_io_init(&s->lio, accept_cb, s->lfd, EV_READ);
        s->lio.data = s;
        ev_io_start(loop, &s->lio);
        if (!s->keep_alive)
                ev_unref(loop);
        vbd_info("NBD export '%s' of %s on %s (%s%s)", s->name, vbd_image_name(img), s->endpoint,
                 s->writable ? "writable" : "read-only",
                 s->addr.unix_socket ? "" : "; no TLS: trusted networks only");
        return s;
fail:
        free(s);
        errno = -r;
        return NULL;
}

static void server_close_listener(struct vbd_nbd *s)
{
        if (s->lfd < 0)
                return;
        if (!s->keep_alive)
                ev_ref(s->loop);
        ev_io_stop(s->loop, &s->lio);
        close(s->lfd);
        s->lfd = -1;
        if (s->addr.unix_socket)
                (void)unlink(s->addr.path);
}

static void done_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_nbd *s = w->data;

        ev_timer_stop(loop, &s->shutdown_timer);
        if (s->done) {
                void (*done)(void *) = s->done;

                s->done = NULL;
                done(s->done_opaque);
        }
}

static void server_client_gone(struct vbd_nbd *s)
{
        if (s->shutting_down && !s->nr_clients && !ev_is_active(&s->done_timer))
                ev_timer_start(s->loop, &s->done_timer);
}

static void shutdown_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct vbd_nbd *s = w->data;

        for (struct nbd_client *cl = s->clients, *next; cl; cl = next) {
                next = cl->next;
                if (!cl->dead) {
                        vbd_warn("%s: replies not read after %.0f s: dropping", cl->peer,
                                 NBD_SHUTDOWN_S);
                        client_kill(cl, NULL);
                }
                client_update_watchers(cl);
                client_maybe_free(cl);
        }
}

void vbd_nbd_shutdown(struct vbd_nbd *s, void (*done)(void *opaque), void *opaque)
{
        if (s->shutting_down) {
                vbd_info("NBD export already stopping: %u client(s), %u request(s) in flight",
                         s->nr_clients, s->inflight);
                return;
        }
        s->shutting_down = true;
        s->done = done;
        s->done_opaque = opaque;
        ev_timer_init(&s->done_timer, done_cb, 0, 0);
        s->done_timer.data = s;
        ev_timer_init(&s->shutdown_timer, shutdown_timeout_cb, NBD_SHUTDOWN_S, 0);
        s->shutdown_timer.data = s;
        server_close_listener(s);
        vbd_info("NBD export stopping: %u client(s), %u request(s) in flight", s->nr_clients,
                 s->inflight);
        for (struct nbd_client *cl = s->clients, *next; cl; cl = next) {
                next = cl->next;
                if (!cl->transmission) {
                        cl->dead = true;
                } else {
                        struct nbd_req *r = cl->cur;

                        if (r && r->state != REQ_IO) {
                                /* Its header is in, its payload or buffers are not: refuse it. */
                                cl->cur = NULL;
                                r->error = NBD_ESHUTDOWN;
                                req_queue_reply(r, 0, 0);
                        }
                        cl->closing = true;
                        cl->state = CL_STOPPED;
                        cl->stalled = false;
                        client_flush(cl);
                }
                client_update_watchers(cl);
                client_maybe_free(cl);
        }
        if (s->nr_clients)
                ev_timer_start(s->loop, &s->shutdown_timer);
        else
                ev_timer_start(s->loop, &s->done_timer);
}

void vbd_nbd_free(struct vbd_nbd *s)
{
        if (!s)
                return;
        server_close_listener(s);
        while (s->clients) {
                struct nbd_client *cl = s->clients;

                if (cl->in_io)
                        vbd_warn("%s: freed with %u request(s) in flight", cl->peer, cl->in_io);
                cl->dead = true;
                cl->busy = 0;
                cl->in_io = 0;
                client_free(cl);
        }
        if (s->shutting_down) {
                ev_timer_stop(s->loop, &s->done_timer);
                ev_timer_stop(s->loop, &s->shutdown_timer);
        }
        free(s);
}

const char *vbd_nbd_endpoint(const struct vbd_nbd *s)
{
        return s->endpoint;
}

const char *vbd_nbd_name(const struct vbd_nbd *s)
{
        return s->name;
}

bool vbd_nbd_writable(const struct vbd_nbd *s)
{
        return s->writable;
}

unsigned vbd_nbd_clients(const struct vbd_nbd *s)
{
        return s->nr_clients;
}

unsigned vbd_nbd_inflight(const struct vbd_nbd *s)
{
        return s->inflight;
}
