/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to the NBD export (nbd-*.c): the protocol constants, the client
 * and server state, and what the files of the export call in each other.
 *
 *   nbd-export.c        the public API, the listener, clients, input and
 *                       output, pause and shutdown
 *   nbd-handshake.c     fixed newstyle negotiation: greeting and NBD_OPT_*
 *   nbd-transmission.c  requests: checks, dispatch to the image, replies
 *   nbd-meta.c          the meta contexts (a table; base:allocation today)
 *   nbd-tls.c           TLS (GnuTLS): credentials, a client's session, records
 */
#pragma once

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "image.h"
#include "nbd-export.h"
#include "vbd/endian.h"
#include "vbd/macro.h"
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
#define NBD_REP_ERR_TLS_REQD (0x80000000u + 5)
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

/* ---- our limits ---- */

#define NBD_CHUNK        (128u << 10)
#define NBD_CHUNKS       (VBD_NBD_MAX_REQUEST / NBD_CHUNK)
#define NBD_IBUF         (64u << 10) /* headers, options, small payloads */
#define NBD_OPT_MAX      NBD_IBUF    /* option data we look at (fits in ibuf) */
#define NBD_OPT_SKIP_MAX (16u << 20) /* option data we skip (ERR_TOO_BIG); more: disconnect */
#define NBD_OPTS_MAX     1024        /* options per connection */
#define NBD_OBUF_MAX     (1u << 20)  /* unread handshake replies */
#define NBD_EXTENTS_MAX  1024        /* descriptors per BLOCK_STATUS reply chunk */
#define NBD_META_MAX     8           /* entries in the meta context table */
#define NBD_HANDSHAKE_S  30.0
#define NBD_SHUTDOWN_S   5.0
#define NBD_REQ_HDR      28
#define NBD_WRITEV_IOVS  256

/* A BLOCK_STATUS reply: one chunk (header, context id, descriptors) per context. */
#define NBD_BS_CHUNK_MAX (20 + 4 + 8 * NBD_EXTENTS_MAX)
#define NBD_BS_REPLY_MAX (NBD_META_MAX * NBD_BS_CHUNK_MAX)

/* ---- types ---- */

enum nbd_cl_state {
        CL_CLIENT_FLAGS,  /* 4 bytes after our greeting */
        CL_OPT_HDR,       /* 16 bytes */
        CL_OPT_DATA,      /* opt_len bytes into opt */
        CL_OPT_SKIP,      /* skip bytes, then ERR_TOO_BIG */
        CL_TLS_HANDSHAKE, /* our STARTTLS ACK out, then the TLS handshake */
        CL_REQ_HDR,       /* 28 bytes */
        CL_REQ_BUF,       /* a READ/WRITE/BLOCK_STATUS waiting for buffer chunks */
        CL_REQ_PAYLOAD,   /* a WRITE's data into its chunks */
        CL_STOPPED,       /* nothing more is read */
};

enum nbd_req_state { REQ_FREE, REQ_PAYLOAD, REQ_IO, REQ_QUEUED };

/* What the input state machines tell the read loop. */
enum {
        NBD_IN_MORE, /* read the socket for more */
        NBD_IN_STOP, /* read nothing now */
        NBD_IN_NEXT, /* something was consumed: look at the rest */
};

struct nbd_client;

struct nbd_req {
        struct nbd_client *cl;
        struct nbd_req *next; /* free list or output queue */
        enum nbd_req_state state;
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
        char peer[96];
        ev_io rio, wio;
        ev_timer hs_timer;
        enum nbd_cl_state state;
        unsigned busy;            /* callbacks on the stack that use the client */
        bool dead;                /* drop: no more output, close once no I/O is in flight */
        bool closing;             /* close once everything in flight is answered */
        bool stalled;             /* not reading: no slot or no buffer */
        struct nbd_tls_conn *tls; /* the TLS session, from STARTTLS on */
        bool tls_active;          /* handshake done: every byte goes through tls */

        /* input */
        uint8_t *ibuf;
        size_t ilen, ioff;

        /* handshake */
        bool no_zeroes, structured, transmission;
        uint32_t meta;   /* selected meta contexts: bit i = nbd_meta_contexts[i] */
        char bitmap[64]; /* the dirty bitmap of the selected prefix context */
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
        void *scratch;  /* VBD_NBD_MAX_INFLIGHT * scratch_size */
        size_t scratch_size;
        struct vbd_extent ext[NBD_EXTENTS_MAX];
};

struct vbd_listener;

struct vbd_nbd {
        struct ev_loop *loop;
        struct vbd_image *img_; /* only through nbd_image() */
        struct vbd_nbd_addr addr;
        char endpoint[160];
        char name[VBD_NBD_NAME_MAX + 1];
        size_t name_len;
        bool writable, keep_alive;
        unsigned max_clients, nr_clients;
        struct nbd_client *clients;
        struct vbd_listener *listener;
        uint64_t size;
        uint32_t min_block, pref_block, max_block;
        uint16_t eflags; /* without the per-client SEND_DF */
        unsigned inflight;
        bool shutting_down;
        void (*done)(void *opaque);
        void *done_opaque;
        ev_timer shutdown_timer, done_timer;
        bool paused;
        void (*pause_done)(void *opaque);
        void *pause_opaque;
        ev_timer pause_timer;
        struct vbd_ratelimit rl;
        struct nbd_tls *tls; /* credentials: TLS required; NULL: no TLS */
};

/*
 * The served image.  Every use goes through here: the one place to change
 * when the image comes from elsewhere (a device object).
 */
static inline struct vbd_image *nbd_image(struct vbd_nbd *s)
{
        return s->img_;
}

/* ---- nbd-export.c ---- */

/* A protocol violation or a dead socket: one log line (fmt NULL: none), drop the client. */
void nbd_client_kill(struct nbd_client *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Free the client if nothing holds it any more.  Only from top-level callbacks. */
bool nbd_client_maybe_free(struct nbd_client *cl);
/* Start or stop the socket watchers for what the client wants now. */
void nbd_client_update_watchers(struct nbd_client *cl);
/* Write what is queued, as far as the socket takes it. */
void nbd_client_flush(struct nbd_client *cl);
/* Input is allowed again (a slot or buffer came free): look at it from the loop. */
void nbd_client_unstall(struct nbd_client *cl);
/* A request left the image (srv->inflight went down). */
void nbd_server_io_left(struct vbd_nbd *s);

static inline size_t nbd_in_avail(const struct nbd_client *cl)
{
        return cl->ilen - cl->ioff;
}

/* ---- nbd-handshake.c ---- */

/* Queue our greeting on a new connection. */
void nbd_handshake_greet(struct nbd_client *cl);
/* Consume buffered handshake input (CL_CLIENT_FLAGS .. CL_OPT_SKIP). */
int nbd_handshake_process(struct nbd_client *cl);
/* Append bytes to the handshake output. */
void nbd_out_bytes(struct nbd_client *cl, const void *p, size_t n);
/* An option reply: header + data; an error reply with an optional message. */
void nbd_opt_reply(struct nbd_client *cl, uint32_t type, const void *data, uint32_t len);
void nbd_opt_error(struct nbd_client *cl, uint32_t type, const char *msg);
bool nbd_name_is_ours(const struct vbd_nbd *s, const uint8_t *name, uint32_t len);

/* ---- nbd-transmission.c ---- */

/* The export chosen: set up the request slots and buffers.  -errno. */
int nbd_transmission_start(struct nbd_client *cl);
/* Consume buffered transmission input (CL_REQ_HDR .. CL_REQ_PAYLOAD). */
int nbd_transmission_process(struct nbd_client *cl);
/* Give r's slot and buffers back. */
void nbd_req_put(struct nbd_req *r);
/* Queue the reply of r (r->error set, or the data in r->iov[1..]). */
void nbd_req_queue_reply(struct nbd_req *r, unsigned data_iovs, uint32_t data_len);
/* Give every slot size bytes of scratch from scratch (VBD_NBD_MAX_INFLIGHT * size, ours now). */
void nbd_transmission_set_scratch(struct nbd_client *cl, void *scratch, size_t size);

/* ---- nbd-tls.c ---- */

struct nbd_tls;
struct nbd_tls_conn;

/* The credentials cfg names (*ret NULL when it names none).  0 or -errno, logged. */
int nbd_tls_new(const struct vbd_nbd_config *cfg, struct nbd_tls **ret);
void nbd_tls_free(struct nbd_tls *t); /* NULL-safe */
/* "no TLS", "TLS required, PSK", ... for the log. */
const char *nbd_tls_describe(const struct nbd_tls *t);
/* A session for cl (cl->tls), taking over the unread input.  -errno (cl->tls
 * may be set: freed with the client). */
int nbd_tls_client_start(struct nbd_client *cl);
/* Step the handshake: 1 done, 0 wait for the socket (nbd_tls_wants_write),
 * -errno failed (the client is killed, logged). */
int nbd_tls_handshake(struct nbd_client *cl);
bool nbd_tls_wants_write(const struct nbd_client *cl);
/* The last read said EAGAIN waiting to write (GnuTLS answering the peer):
 * read again when the socket is writable. */
bool nbd_tls_recv_blocked(const struct nbd_client *cl);
/* Decrypted bytes GnuTLS holds for us: they will not wake the socket watcher. */
size_t nbd_tls_pending(const struct nbd_client *cl);
/* read(2)/writev(2) through the session: bytes, 0 at the end of input, or -1
 * with errno (EAGAIN, EINTR: again; else the client is killed, logged). */
ssize_t nbd_tls_recv(struct nbd_client *cl, void *buf, size_t n);
ssize_t nbd_tls_sendv(struct nbd_client *cl, const struct iovec *iov, unsigned cnt);
/* Send close_notify if it can go at once; free the session. */
void nbd_tls_client_free(struct nbd_client *cl);

/* ---- nbd-meta.c ---- */

/*
 * A meta context (NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS).  Its id
 * on the wire is its index in nbd_meta_contexts + 1.
 */
struct nbd_meta_context {
        const char *name; /* "namespace:leaf", or with prefix, "namespace:leaf:" */
        /* name is a prefix completed by the name of one of the image's dirty
         * bitmaps (vbd_image_bitmap_name); a client selects one, cl->bitmap. */
        bool prefix;
        /* Offered on this export?  NULL: always. */
        bool (*available)(struct vbd_nbd *s);
        /*
         * Descriptors (length, flags; big-endian) for [r->offset, +r->len)
         * into out, at most max (1 with REQ_ONE): how many, or -errno.
         */
        int (*block_status)(struct nbd_req *r, uint8_t *out, unsigned max);
};

extern const struct nbd_meta_context nbd_meta_contexts[];
extern const unsigned nbd_meta_count;

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT, data in cl->opt. */
void nbd_meta_option(struct nbd_client *cl);
/* The reply chunks of a BLOCK_STATUS for every selected context into out: bytes or -errno. */
int nbd_meta_block_status(struct nbd_req *r, uint8_t *out, size_t size);
/* ", base:allocation" for the log line, "" when none is selected. */
void nbd_meta_describe(const struct nbd_client *cl, char *buf, size_t size);
