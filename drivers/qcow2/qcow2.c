/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2: QEMU copy-on-write images, versions 2 and 3.
 *
 *   qcow2:PATH[,l2-cache=SIZE][,refcount-cache=SIZE][,direct=on|off|auto]
 *            [,copy-on-read=on|off][,locking=on|off|auto]
 *
 * Clusters of 512 B to 2 MiB, refcounts of 1 to 64 bits, zero clusters,
 * zlib-compressed clusters (read; rewritten uncompressed when written),
 * internal snapshots (shared clusters are copied on write), backing files
 * (raw or qcow2, any depth up to QCOW2_MAX_BACKING_DEPTH, opened read-only
 * through the image layer), lazy refcounts and the dirty bit.  Refused with
 * a clear error: encryption, external data files, extended L2 entries,
 * non-zlib compression, unknown incompatible features; a dirty or corrupt
 * image is opened read-only only.
 *
 * Requests are cut into chunks of guest clusters with the same kind of
 * mapping; one chunk at a time per request, many requests at once.  Data
 * goes through the AIO engine (O_DIRECT when the file system and the
 * buffers allow it); metadata is read and written synchronously by
 * qcow2-meta.c on the loop thread and cached (L2 tables, refcount blocks).
 *
 * Writes to clusters that are not exclusively ours (unallocated, zero,
 * compressed, shared with a snapshot) allocate new clusters: the guest data
 * and the copied-on-write rest of the first and last cluster (from the
 * backing file, the old cluster, or zeros, which fresh space past the old
 * end of file already is) go out in one pwritev; only when it completed is
 * the L2 entry changed.  Allocations of the same guest cluster are
 * serialised (s->allocs); the others wait in s->waiters.
 *
 * Block status is answered from the L1/L2 tables (qcow2_block_status),
 * asking the backing image for clusters this image does not hold.
 *
 * FLUSH runs a flush round (one at a time; later flushes join the next):
 * new allocations are held, requests submitted before the round drain,
 * dirty refcount blocks are written and synced, then dirty L2 tables
 * (allocations resume) and synced, then the L1 entries of new L2 tables and
 * synced; then clusters freed before the round are released.
 *
 * Image locks (vbd/lock.h) on the metadata descriptor, as qemu's qcow2 takes
 * them on its file: read-write holds "consistent read", "write" and
 * "resize" (the file grows), read-only "consistent read"; neither shares
 * "write" or "resize".  Backing files are opened read-only, so they are
 * locked as qemu locks them: others may read, nobody may write.  The
 * locking option, when given, is passed down the backing chain.
 */
#define VBD_LOG_TOPIC "drv.qcow2"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2.h"
#include "vbd/lock.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define QCOW2_IOV_MAX   64   /* iovec entries per chunk */
#define QCOW2_RUN_MAX   256  /* clusters per chunk */
#define QCOW2_MEM_ALIGN 4096 /* our buffers */

enum flush_stage {
        FLUSH_IDLE,
        FLUSH_DRAIN,
        FLUSH_SYNC_RB,
        FLUSH_SYNC_L2,
        FLUSH_SYNC_L1,
};

struct qcow2_cowbuf {
        struct qcow2_cowbuf *next;
        uint8_t *data; /* one cluster, aligned */
};

enum child_kind {
        CHILD_READ, /* a guest read from the backing file */
        CHILD_COW,  /* the COW part of an allocating write */
        CHILD_COR,  /* a whole cluster read for copy-on-read */
};

/* An I/O on the backing image; the backing driver's scratch follows. */
struct qcow2_child {
        struct vbd_io io;
        struct qcow2_child *next;
        struct qcow2_io *parent;
        enum child_kind kind;
        struct iovec iov[1];
};

/* Per-request scratch. */
struct qcow2_io {
        struct vbd_io *io;
        struct qcow2_state *s;
        struct qcow2_io *next;  /* s->waiters or s->flush_* */
        struct qcow2_io *anext; /* s->allocs */
        unsigned gen;
        int status;
        unsigned pending;
        uint64_t pos;  /* next guest byte */
        uint64_t wend; /* writes: end of the current write range */
        uint64_t clen; /* bytes in the current chunk */
        bool zero_src; /* write zeroes (from s->zero_buf), not the guest's buffers */
        bool counted;
        /* Joined to another request's allocation of fresh clusters (see join_alloc). */
        struct qcow2_io *deps, *dnext; /* writes joined to ours / next of those */
        bool joined, join_io_done, join_alloc_done;
        int join_res, join_alloc_status;
        struct vbd_aio_op op;
        struct iovec iov[QCOW2_IOV_MAX];
        int iovcnt;
        /* Allocating write. */
        uint64_t gc0, ncl, host;
        bool fresh;
        struct qcow2_map old[2];
        uint64_t cow_len[2]; /* head, tail */
        bool cow_write[2];   /* the COW part is written (else fresh zeroes) */
        uint8_t *cow_src[2]; /* its bytes, at the in-cluster offset */
        struct qcow2_cowbuf *cow[2];
        struct vbd_aio_op cow_op[2];
        struct qcow2_cowbuf *cor; /* copy-on-read: the whole cluster */
};

enum { OPT_L2_CACHE, OPT_RB_CACHE, OPT_DIRECT, OPT_COR, OPT_LOCKING };
static const struct vbd_opt_desc qcow2_opts[] = {
    [OPT_L2_CACHE] =
        VBD_OPT_SIZE_DEF("l2-cache", 0, 0, NULL, "L2 table cache (default: automatic)"),
    [OPT_RB_CACHE] =
        VBD_OPT_SIZE_DEF("refcount-cache", 0, 0, NULL, "refcount block cache (default: automatic)"),
    [OPT_DIRECT] = VBD_OPT_TRISTATE_DEF("direct", "auto", "O_DIRECT for guest data"),
    [OPT_COR] = VBD_OPT_BOOL_DEF("copy-on-read", "off", "copy clusters read from the backing file"),
    [OPT_LOCKING] = VBD_LOCK_OPT_DEF("locking"),
};

/* Backing chain being opened on this thread: loop detection. */
static __thread struct {
        dev_t dev;
        ino_t ino;
} chain[QCOW2_MAX_BACKING_DEPTH + 1];
static __thread unsigned chain_len;

static void read_next(struct qcow2_io *q);
static void write_next(struct qcow2_io *q);
static void zero_next(struct qcow2_io *q);
static void flush_step(struct qcow2_state *s);

static struct qcow2_io *qio_of_op(struct vbd_aio_op *op)
{
        return op->opaque;
}

/* ---- helpers ---- */

static int data_fd(const struct qcow2_state *s, uint64_t off, const struct iovec *iov, int n)
{
        if (!s->direct || off % s->dio_align)
                return s->mfd;
        for (int i = 0; i < n; i++)
                if ((uintptr_t)iov[i].iov_base % s->dio_mem_align || iov[i].iov_len % s->dio_align)
                        return s->mfd;
        return s->dfd;
}

/*
 * Fill iov with the bytes [at, at + len) of the request (at relative to the
 * request's offset): the guest buffers, or zeroes.  At most max entries;
 * returns the entries used and sets *ret_len to the bytes covered (less than
 * len when max ran out).
 */
static int slice(const struct qcow2_io *q, uint64_t at, uint64_t len, struct iovec *iov, int max,
                 uint64_t *ret_len)
{
        const struct vbd_io *io = q->io;
        uint64_t done = 0;
        int n = 0;

        if (q->zero_src) {
                while (done < len && n < max) {
                        uint64_t l = len - done < q->s->cs ? len - done : q->s->cs;

                        iov[n++] = (struct iovec){q->s->zero_buf, (size_t)l};
                        done += l;
                }
                *ret_len = done;
                return n;
        }
        for (unsigned i = 0; i < io->iovcnt && done < len; i++) {
                uint64_t l = io->iov[i].iov_len;

                if (at >= l) {
                        at -= l;
                        continue;
                }
                if (n == max)
                        break;
                l -= at;
                if (l > len - done)
                        l = len - done;
                iov[n++] = (struct iovec){(char *)io->iov[i].iov_base + at, (size_t)l};
                done += l;
                at = 0;
        }
        *ret_len = done;
        return n;
}

/* Slice the current chunk [q->pos, q->pos + q->clen) into q->iov[first..];
 * shortens q->clen (to a multiple of 512) when the entries run out. */
static int slice_chunk(struct qcow2_io *q, int first)
{
        uint64_t got;
        int n = slice(q, q->pos - q->io->offset, q->clen, q->iov + first, QCOW2_IOV_MAX - 2 - first,
                      &got);

        if (got < q->clen) {
                got &= ~511ull;
                if (!got)
                        return -EINVAL;
                q->clen = got;
                n = slice(q, q->pos - q->io->offset, q->clen, q->iov + first,
                          QCOW2_IOV_MAX - 2 - first, &got);
        }
        return n;
}

/* Copy or zero bytes of the request's buffers at [at, at + len). */
static void buf_fill(struct qcow2_io *q, uint64_t at, uint64_t len, const uint8_t *src)
{
        const struct vbd_io *io = q->io;

        for (unsigned i = 0; i < io->iovcnt && len; i++) {
                uint64_t l = io->iov[i].iov_len;

                if (at >= l) {
                        at -= l;
                        continue;
                }
                l -= at;
                if (l > len)
                        l = len;
                if (src) {
                        memcpy((char *)io->iov[i].iov_base + at, src, (size_t)l);
                        src += l;
                } else {
                        memset((char *)io->iov[i].iov_base + at, 0, (size_t)l);
                }
                len -= l;
                at = 0;
        }
}

static void wake_waiters(struct qcow2_state *s)
{
        struct qcow2_io *w = s->waiters;

        s->waiters = NULL;
        while (w) {
                struct qcow2_io *next = w->next;

                w->next = NULL;
                if (w->io->op == VBD_OP_WRITE || w->wend > w->pos)
                        write_next(w);
                else
                        zero_next(w);
                w = next;
        }
}

static void wait_for_alloc(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;

        q->next = s->waiters;
        s->waiters = q;
}

/* New allocations of requests submitted after a flush round started are held. */
static bool alloc_held(const struct qcow2_io *q)
{
        return q->s->alloc_blocked && q->gen == q->s->gen;
}

static struct qcow2_io *alloc_conflict(struct qcow2_state *s, uint64_t gc)
{
        for (struct qcow2_io *a = s->allocs; a; a = a->anext)
                if (gc >= a->gc0 && gc < a->gc0 + a->ncl)
                        return a;
        return NULL;
}

static void alloc_unregister(struct qcow2_io *q)
{
        struct qcow2_io **pp = &q->s->allocs;

        while (*pp && *pp != q)
                pp = &(*pp)->anext;
        if (*pp)
                *pp = q->anext;
        q->anext = NULL;
}

static void complete(struct qcow2_io *q, int status)
{
        struct qcow2_state *s = q->s;
        struct vbd_io *io = q->io;

        if (q->counted) {
                s->inflight[q->gen & 1]--;
                q->counted = false;
        }
        vbd_io_complete(io, status);
        if (s->flush_stage == FLUSH_DRAIN)
                flush_step(s);
}

/* ---- buffers for the backing image and COW ---- */

static struct qcow2_child *child_get(struct qcow2_state *s)
{
        struct qcow2_child *c = s->child_free;
        size_t head = (sizeof(*c) + 63) & ~(size_t)63;
        void *p;

        if (c) {
                s->child_free = c->next;
                return c;
        }
        if (posix_memalign(&p, 64, head + (s->backing_scratch ? s->backing_scratch : 1)))
                return NULL;
        memset(p, 0, head);
        c = p;
        c->io.scratch = (char *)p + head;
        return c;
}

static void child_put(struct qcow2_state *s, struct qcow2_child *c)
{
        c->next = s->child_free;
        s->child_free = c;
}

static struct qcow2_cowbuf *cowbuf_get(struct qcow2_state *s)
{
        struct qcow2_cowbuf *b = s->cow_free;

        if (b) {
                s->cow_free = b->next;
                return b;
        }
        b = calloc(1, sizeof(*b));
        if (!b)
                return NULL;
        if (posix_memalign((void **)&b->data, QCOW2_MEM_ALIGN, s->cs)) {
                free(b);
                return NULL;
        }
        return b;
}

static void cowbuf_put(struct qcow2_state *s, struct qcow2_cowbuf *b)
{
        if (!b)
                return;
        b->next = s->cow_free;
        s->cow_free = b;
}

/*
 * Prepare a read of [off, off + len) of the backing image into buf, or into
 * the request's buffers (iov, at q->pos) when buf is NULL; past the backing
 * image's end reads zeros.  Returns 1 when that is all (nothing to read), 0
 * with *ret a child to submit, or -errno.
 */
static int backing_read(struct qcow2_io *q, enum child_kind kind, uint64_t off, uint64_t len,
                        struct iovec *iov, int iovcnt, uint8_t *buf, struct qcow2_child **ret)
{
        struct qcow2_state *s = q->s;
        struct qcow2_child *c;
        uint64_t avail = off < s->backing_size ? s->backing_size - off : 0;

        if (avail > len)
                avail = len;
        /* The part past the backing image's end. */
        if (avail < len) {
                if (buf)
                        memset(buf + avail, 0, (size_t)(len - avail));
                else
                        buf_fill(q, q->pos - q->io->offset + avail, len - avail, NULL);
        }
        if (!avail)
                return 1;
        c = child_get(s);
        if (!c)
                return -ENOMEM;
        c->parent = q;
        c->kind = kind;
        c->io.op = VBD_OP_READ;
        c->io.flags = 0;
        c->io.offset = off;
        c->io.len = avail;
        if (buf) {
                c->iov[0] = (struct iovec){buf, (size_t)avail};
                c->io.iov = c->iov;
                c->io.iovcnt = 1;
        } else {
                uint64_t got;

                c->io.iov = iov;
                c->io.iovcnt = (unsigned)slice(q, q->pos - q->io->offset, avail, iov, iovcnt, &got);
        }
        c->io.opaque = c;
        *ret = c;
        return 0;
}

static void child_done(struct vbd_io *cio, int status);

static void child_submit(struct qcow2_state *s, struct qcow2_child *c)
{
        c->io.done = child_done;
        vbd_image_submit(s->backing, &c->io);
}

/* ---- reads ---- */

enum read_class {
        RC_DATA,
        RC_ZERO,
        RC_BACKING,
        RC_COMPRESSED,
};

static enum read_class read_class(const struct qcow2_state *s, const struct qcow2_map *m,
                                  uint64_t gc)
{
        switch (m->kind) {
        case QCOW2_DATA:
                return RC_DATA;
        case QCOW2_COMPRESSED:
                return RC_COMPRESSED;
        case QCOW2_ZERO:
                return RC_ZERO;
        default:
                return s->backing && (gc << s->cluster_bits) < s->backing_size ? RC_BACKING
                                                                               : RC_ZERO;
        }
}

static void read_data_done(struct vbd_aio_op *op, ssize_t res)
{
        struct qcow2_io *q = qio_of_op(op);

        if (res < 0) {
                complete(q, (int)res);
                return;
        }
        q->pos += q->clen;
        read_next(q);
}

static void cor_done(struct qcow2_io *q);
static void cor_read_done(struct qcow2_io *q);

static void read_next(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;
        uint64_t end = q->io->offset + q->io->len;

        while (q->pos < end) {
                uint64_t gc = q->pos >> s->cluster_bits, in = q->pos & (s->cs - 1);
                struct qcow2_map m, m2;
                enum read_class rc;
                unsigned k;
                int r, n;

                r = qcow2_lookup(s, gc, &m);
                if (r < 0) {
                        complete(q, r);
                        return;
                }
                rc = read_class(s, &m, gc);
                q->clen = s->cs - in;
                if (rc != RC_COMPRESSED) {
                        for (k = 1; q->pos + q->clen < end && k < QCOW2_RUN_MAX; k++) {
                                if (qcow2_lookup(s, gc + k, &m2) < 0 ||
                                    read_class(s, &m2, gc + k) != rc ||
                                    (rc == RC_DATA && m2.host != m.host + (k << s->cluster_bits)))
                                        break;
                                q->clen += s->cs;
                        }
                }
                if (q->clen > end - q->pos)
                        q->clen = end - q->pos;

                switch (rc) {
                case RC_ZERO:
                        buf_fill(q, q->pos - q->io->offset, q->clen, NULL);
                        q->pos += q->clen;
                        continue;
                case RC_COMPRESSED:
                        r = qcow2_decompress(s, &m);
                        if (r < 0) {
                                complete(q, r);
                                return;
                        }
                        buf_fill(q, q->pos - q->io->offset, q->clen, s->dbuf + in);
                        q->pos += q->clen;
                        continue;
                case RC_DATA:
                        n = slice_chunk(q, 0);
                        if (n < 0) {
                                complete(q, n);
                                return;
                        }
                        q->iovcnt = n;
                        q->op.done = read_data_done;
                        q->op.opaque = q;
                        vbd_aio_preadv(s->aio, &q->op, data_fd(s, m.host + in, q->iov, n), q->iov,
                                       n, m.host + in);
                        return;
                case RC_BACKING: {
                        struct qcow2_child *c;

                        if (s->cor && !alloc_held(q) && !alloc_conflict(s, gc)) {
                                /* Copy-on-read: the whole cluster into a buffer. */
                                if (q->clen > s->cs - in)
                                        q->clen = s->cs - in;
                                q->cor = cowbuf_get(s);
                                if (!q->cor) {
                                        complete(q, -ENOMEM);
                                        return;
                                }
                                r = backing_read(q, CHILD_COR, gc << s->cluster_bits, s->cs, NULL,
                                                 0, q->cor->data, &c);
                                if (r < 0) {
                                        complete(q, r);
                                        return;
                                }
                                if (r == 1) {
                                        cor_read_done(q);
                                        return;
                                }
                                child_submit(s, c);
                                return;
                        }
                        n = slice_chunk(q, 0);
                        if (n < 0) {
                                complete(q, n);
                                return;
                        }
                        r = backing_read(q, CHILD_READ, q->pos, q->clen, q->iov, n, NULL, &c);
                        if (r < 0) {
                                complete(q, r);
                                return;
                        }
                        if (r == 1) {
                                q->pos += q->clen;
                                continue;
                        }
                        child_submit(s, c);
                        return;
                }
                }
        }
        complete(q, 0);
}

/* ---- writes ---- */

static bool needs_alloc(const struct qcow2_map *m)
{
        return !(m->kind == QCOW2_DATA && m->copied);
}

static void write_data_done(struct vbd_aio_op *op, ssize_t res)
{
        struct qcow2_io *q = qio_of_op(op);

        if (res < 0) {
                complete(q, (int)res);
                return;
        }
        q->pos += q->clen;
        write_next(q);
}

static void release_joined(struct qcow2_io *q, int status);

static void alloc_fail(struct qcow2_io *q, int r)
{
        struct qcow2_state *s = q->s;

        if (q->ncl && q->deps)
                vbd_warn("'%s': allocating write failed, %llu clusters leaked", s->path,
                         (unsigned long long)q->ncl);
        else if (q->ncl)
                (void)qcow2_free_now(s, q->host, q->ncl << s->cluster_bits);
        release_joined(q, r);
        alloc_unregister(q);
        cowbuf_put(s, q->cow[0]);
        cowbuf_put(s, q->cow[1]);
        cowbuf_put(s, q->cor);
        q->cow[0] = q->cow[1] = q->cor = NULL;
        q->ncl = 0;
        if (q->io->op == VBD_OP_READ) {
                /* copy-on-read is best effort: the data was read */
                q->pos += q->clen;
                read_next(q);
        } else {
                complete(q, r);
        }
        wake_waiters(s);
}

static void alloc_write_done(struct vbd_aio_op *op, ssize_t res)
{
        struct qcow2_io *q = qio_of_op(op);
        struct qcow2_state *s = q->s;
        int r = 0;

        if (res < 0) {
                alloc_fail(q, (int)res);
                return;
        }
        for (uint64_t k = 0; k < q->ncl && r == 0; k++) {
                uint64_t old;

                r = qcow2_l2_get(s, q->gc0 + k, &old);
                if (r == 0)
                        r = qcow2_l2_set(s, q->gc0 + k,
                                         (q->host + (k << s->cluster_bits)) | QCOW2_OFLAG_COPIED);
                if (r == 0 && qcow2_release_entry(s, old) < 0)
                        vbd_warn("'%s': out of memory, a cluster is leaked", s->path);
                if (r < 0 && k) {
                        /* Entries before k point to the new clusters: keep those. */
                        if (!q->deps)
                                (void)qcow2_free_now(s, q->host + (k << s->cluster_bits),
                                                     (q->ncl - k) << s->cluster_bits);
                        q->ncl = 0;
                }
        }
        if (r < 0) {
                vbd_err("'%s': cannot update the L2 table: %s", s->path, strerror(-r));
                alloc_fail(q, r);
                return;
        }
        alloc_unregister(q);
        cowbuf_put(s, q->cow[0]);
        cowbuf_put(s, q->cow[1]);
        cowbuf_put(s, q->cor);
        q->cow[0] = q->cow[1] = q->cor = NULL;
        q->ncl = 0;
        release_joined(q, 0);
        q->pos += q->clen;
        if (q->io->op == VBD_OP_READ)
                cor_done(q);
        else
                write_next(q);
        wake_waiters(s);
}

/* All COW sources are in: write head + data + tail in one go. */
static void alloc_write(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;
        uint64_t off = q->host + q->cow_len[0];
        int n = 0, m;

        if (q->status < 0) {
                alloc_fail(q, q->status);
                return;
        }
        if (q->cow_write[0]) {
                q->iov[n++] = (struct iovec){q->cow_src[0], (size_t)q->cow_len[0]};
                off = q->host;
        }
        if (q->cor) {
                m = 1;
                q->iov[n] = (struct iovec){q->cor->data, (size_t)s->cs};
        } else {
                /* The guest's data. */
                uint64_t got;

                m = slice(q, q->pos - q->io->offset, q->clen, q->iov + n, QCOW2_IOV_MAX - 2 - n,
                          &got);
                if (got != q->clen) {
                        alloc_fail(q, -EINVAL);
                        return;
                }
        }
        n += m;
        if (q->cow_write[1])
                q->iov[n++] = (struct iovec){q->cow_src[1], (size_t)q->cow_len[1]};
        q->iovcnt = n;
        q->op.done = alloc_write_done;
        q->op.opaque = q;
        vbd_aio_pwritev(s->aio, &q->op, data_fd(s, off, q->iov, n), q->iov, n, off);
}

static void cow_part_done(struct qcow2_io *q, int status)
{
        if (status < 0 && q->status == 0)
                q->status = status;
        if (--q->pending == 0)
                alloc_write(q);
}

static void cow_read_done(struct vbd_aio_op *op, ssize_t res)
{
        cow_part_done(qio_of_op(op), res < 0 ? (int)res : 0);
}

/*
 * Prepare COW part w (0: head, 1: tail) of an allocating write: the bytes of
 * guest cluster gc at [roff, roff + len) as they read before this write.
 */
static int cow_prepare(struct qcow2_io *q, int w, uint64_t gc, uint64_t roff, uint64_t len,
                       struct qcow2_child **ret_child)
{
        struct qcow2_state *s = q->s;
        const struct qcow2_map *m = &q->old[w];
        enum read_class rc = read_class(s, m, gc);
        struct qcow2_child *c;
        uint8_t *buf;
        int r;

        q->cow_len[w] = len;
        q->cow_write[w] = false;
        if (!len)
                return 0;
        if (rc == RC_ZERO) {
                q->cow_src[w] = s->zero_buf + roff;
                q->cow_write[w] = !q->fresh;
                return 0;
        }
        q->cow[w] = cowbuf_get(s);
        if (!q->cow[w])
                return -ENOMEM;
        buf = q->cow[w]->data;
        q->cow_src[w] = buf + roff;
        q->cow_write[w] = true;
        switch (rc) {
        case RC_COMPRESSED:
                r = qcow2_decompress(s, m);
                if (r < 0)
                        return r;
                memcpy(buf + roff, s->dbuf + roff, (size_t)len);
                return 0;
        case RC_DATA:
                q->pending++;
                q->cow_op[w].done = cow_read_done;
                q->cow_op[w].opaque = q;
                q->iov[QCOW2_IOV_MAX - 2 + w] = (struct iovec){buf + roff, (size_t)len};
                vbd_aio_preadv(s->aio, &q->cow_op[w],
                               data_fd(s, m->host + roff, &q->iov[QCOW2_IOV_MAX - 2 + w], 1),
                               &q->iov[QCOW2_IOV_MAX - 2 + w], 1, m->host + roff);
                return 0;
        case RC_BACKING:
                r = backing_read(q, CHILD_COW, (gc << s->cluster_bits) + roff, len, NULL, 0,
                                 buf + roff, &c);
                if (r < 0)
                        return r;
                if (r == 0) {
                        q->pending++;
                        *ret_child = c;
                }
                return 0;
        default:
                return 0;
        }
}

/* Start an allocating write of the current chunk (clusters gc0..gc0+ncl-1). */
static void start_alloc(struct qcow2_io *q, uint64_t want)
{
        struct qcow2_state *s = q->s;
        uint64_t gc = q->pos >> s->cluster_bits, in = q->pos & (s->cs - 1), host, got;
        struct qcow2_child *pend[2] = {NULL, NULL};
        bool fresh;
        int r;

        r = qcow2_alloc(s, want, &host, &got, &fresh);
        if (r < 0) {
                if (r != -ENOSPC)
                        vbd_err("'%s': cannot allocate clusters: %s", s->path, strerror(-r));
                if (q->io->op == VBD_OP_READ) {
                        /* copy-on-read is best effort: the data was read */
                        cowbuf_put(s, q->cor);
                        q->cor = NULL;
                        q->pos += q->clen;
                        read_next(q);
                        return;
                }
                complete(q, r);
                return;
        }
        if (got < want && q->clen > (got << s->cluster_bits) - in)
                q->clen = (got << s->cluster_bits) - in;
        q->gc0 = gc;
        q->ncl = got;
        q->host = host;
        q->fresh = fresh;
        q->status = 0;
        q->pending = 1; /* held until every part is started */
        q->cow[0] = q->cow[1] = NULL;
        q->anext = s->allocs;
        s->allocs = q;

        r = qcow2_lookup(s, gc, &q->old[0]);
        if (r == 0)
                r = qcow2_lookup(s, gc + got - 1, &q->old[1]);
        for (int w = 0; w < 2 && r >= 0; w++) {
                uint64_t g = w ? gc + got - 1 : gc;
                uint64_t roff = w ? in + q->clen - ((got - 1) << s->cluster_bits) : 0;
                uint64_t len = w ? s->cs - roff : in;

                r = cow_prepare(q, w, g, roff, len, &pend[w]);
        }
        if (r < 0) {
                /* Parts already reading finish first; alloc_write sees the status. */
                q->status = r;
                for (int w = 0; w < 2; w++)
                        if (pend[w]) {
                                child_put(s, pend[w]);
                                q->pending--;
                        }
        } else {
                for (int w = 0; w < 2; w++)
                        if (pend[w])
                                child_submit(s, pend[w]);
        }
        cow_part_done(q, 0);
}

/*
 * Joining an allocation: while request a allocates fresh clusters (nothing
 * written there but its own data: the rest reads as zeros), another write
 * into the same guest clusters goes straight to the reserved host clusters
 * instead of waiting.  It completes only after a's L2 update, so that a read
 * after its completion finds the data; if a fails, it is redone through the
 * normal path (and a's clusters are leaked, not freed under it).
 */
static bool can_join(const struct qcow2_io *a)
{
        return a->io->op != VBD_OP_READ && a->fresh && !a->cow_write[0] && !a->cow_write[1] &&
               a->ncl;
}

static void join_finish(struct qcow2_io *q)
{
        if (q->join_res < 0) {
                complete(q, q->join_res);
                return;
        }
        if (q->join_alloc_status == 0)
                q->pos += q->clen;
        write_next(q); /* on failure: again, through the normal path */
}

static void join_write_done(struct vbd_aio_op *op, ssize_t res)
{
        struct qcow2_io *q = qio_of_op(op);

        q->join_io_done = true;
        q->join_res = res < 0 ? (int)res : 0;
        if (q->join_alloc_done)
                join_finish(q);
}

/* The allocation q is done (status 0) or failed: let its joined writes go on. */
static void release_joined(struct qcow2_io *q, int status)
{
        struct qcow2_io *d = q->deps;

        q->deps = NULL;
        while (d) {
                struct qcow2_io *next = d->dnext;

                d->dnext = NULL;
                d->joined = false;
                d->join_alloc_done = true;
                d->join_alloc_status = status;
                if (d->join_io_done)
                        join_finish(d);
                d = next;
        }
}

static void join_alloc(struct qcow2_io *q, struct qcow2_io *a)
{
        struct qcow2_state *s = q->s;
        uint64_t end = (a->gc0 + a->ncl) << s->cluster_bits, host;
        int n;

        if (end > q->wend)
                end = q->wend;
        q->clen = end - q->pos;
        n = slice_chunk(q, 0);
        if (n < 0) {
                complete(q, n);
                return;
        }
        host = a->host + (q->pos - (a->gc0 << s->cluster_bits));
        q->joined = true;
        q->join_io_done = q->join_alloc_done = false;
        q->join_res = q->join_alloc_status = 0;
        q->dnext = a->deps;
        a->deps = q;
        q->iovcnt = n;
        q->op.done = join_write_done;
        q->op.opaque = q;
        vbd_aio_pwritev(s->aio, &q->op, data_fd(s, host, q->iov, n), q->iov, n, host);
}

static void write_next(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;

        while (q->pos < q->wend) {
                uint64_t gc = q->pos >> s->cluster_bits, in = q->pos & (s->cs - 1);
                struct qcow2_map m, m2;
                uint64_t k;
                int r, n;

                r = qcow2_lookup(s, gc, &m);
                if (r < 0) {
                        complete(q, r);
                        return;
                }
                q->clen = s->cs - in;
                if (!needs_alloc(&m)) {
                        /* In place. */
                        for (k = 1; q->pos + q->clen < q->wend && k < QCOW2_RUN_MAX; k++) {
                                if (qcow2_lookup(s, gc + k, &m2) < 0 || needs_alloc(&m2) ||
                                    m2.host != m.host + (k << s->cluster_bits))
                                        break;
                                q->clen += s->cs;
                        }
                        if (q->clen > q->wend - q->pos)
                                q->clen = q->wend - q->pos;
                        if (qcow2_is_meta(s, m.host, k << s->cluster_bits)) {
                                qcow2_log_corrupt(s, "guest offset %llu maps to metadata at %llu",
                                                  (unsigned long long)q->pos,
                                                  (unsigned long long)m.host);
                                complete(q, -EIO);
                                return;
                        }
                        n = slice_chunk(q, 0);
                        if (n < 0) {
                                complete(q, n);
                                return;
                        }
                        q->iovcnt = n;
                        q->op.done = write_data_done;
                        q->op.opaque = q;
                        vbd_aio_pwritev(s->aio, &q->op, data_fd(s, m.host + in, q->iov, n), q->iov,
                                        n, m.host + in);
                        return;
                }
                /* Allocating. */
                {
                        struct qcow2_io *a = alloc_conflict(s, gc);

                        if (a && can_join(a)) {
                                join_alloc(q, a);
                                return;
                        }
                        if (a || alloc_held(q)) {
                                wait_for_alloc(q);
                                return;
                        }
                }
                for (k = 1; q->pos + q->clen < q->wend && k < QCOW2_RUN_MAX &&
                            ((gc + k) >> s->l2_bits) == (gc >> s->l2_bits);
                     k++) {
                        if (qcow2_lookup(s, gc + k, &m2) < 0 || !needs_alloc(&m2) ||
                            alloc_conflict(s, gc + k))
                                break;
                        q->clen += s->cs;
                }
                if (q->clen > q->wend - q->pos)
                        q->clen = q->wend - q->pos;
                {
                        uint64_t got;

                        (void)slice(q, q->pos - q->io->offset, q->clen, q->iov, QCOW2_IOV_MAX - 3,
                                    &got);
                        if (got < q->clen) {
                                got &= ~511ull;
                                if (!got) {
                                        complete(q, -EINVAL);
                                        return;
                                }
                                q->clen = got;
                        }
                }
                start_alloc(q, (in + q->clen + s->cs - 1) >> s->cluster_bits);
                return;
        }
        if (q->io->op == VBD_OP_WRITE)
                complete(q, 0);
        else
                zero_next(q);
}

/* ---- write-zeroes and discard ---- */

static void zero_next(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;
        uint64_t end = q->io->offset + q->io->len;

        q->zero_src = false;
        while (q->pos < end) {
                uint64_t gc = q->pos >> s->cluster_bits, in = q->pos & (s->cs - 1);
                uint64_t run = s->cs - in, old;
                struct qcow2_map m;
                bool full;
                int r;

                if (run > end - q->pos)
                        run = end - q->pos;
                full = in == 0 && (run == s->cs || q->pos + run == s->size);
                r = qcow2_lookup(s, gc, &m);
                if (r < 0) {
                        complete(q, r);
                        return;
                }
                if (read_class(s, &m, gc) == RC_ZERO) {
                        q->pos += run; /* reads as zeroes already */
                        continue;
                }
                if (alloc_conflict(s, gc) || alloc_held(q)) {
                        q->wend = q->pos;
                        wait_for_alloc(q);
                        return;
                }
                if (full && (s->h.version >= 3 || !s->backing)) {
                        uint64_t e = s->h.version >= 3 ? QCOW2_OFLAG_ZERO : 0;
                        bool keep = s->h.version >= 3 && q->io->op == VBD_OP_WRITE_ZEROES &&
                                    !(q->io->flags & VBD_IO_MAY_UNMAP) && m.kind == QCOW2_DATA &&
                                    m.copied;

                        if (keep)
                                e |= m.host | QCOW2_OFLAG_COPIED;
                        r = qcow2_l2_get(s, gc, &old);
                        if (r == 0)
                                r = qcow2_l2_set(s, gc, e);
                        if (r == 0 && !keep)
                                r = qcow2_release_entry(s, old);
                        if (r < 0) {
                                complete(q, r);
                                return;
                        }
                        q->pos += run;
                        continue;
                }
                /* Zeroes as data, through the write path. */
                q->zero_src = true;
                q->wend = q->pos + run;
                write_next(q);
                return;
        }
        complete(q, 0);
}

/* ---- copy-on-read ---- */

/* The whole cluster is in q->cor: give the guest its part, then write the
 * cluster into the image unless someone allocated it meanwhile. */
static void cor_read_done(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;
        uint64_t gc = q->pos >> s->cluster_bits, in = q->pos & (s->cs - 1);
        struct qcow2_map m;

        buf_fill(q, q->pos - q->io->offset, q->clen, q->cor->data + in);
        if (alloc_held(q) || alloc_conflict(s, gc) || qcow2_lookup(s, gc, &m) < 0 ||
            m.kind != QCOW2_UNALLOC) {
                cowbuf_put(s, q->cor);
                q->cor = NULL;
                q->pos += q->clen;
                read_next(q);
                return;
        }
        q->pos = gc << s->cluster_bits;
        q->clen = s->cs;
        start_alloc(q, 1);
}

static void cor_done(struct qcow2_io *q)
{
        read_next(q);
}

/* ---- flush rounds ---- */

/* After drain(): drained once no flush round runs (it writes metadata). */
static void drain_check(struct qcow2_state *s)
{
        if (s->flush_busy || s->flush_next)
                return;
        s->draining = false;
        vbd_image_drained(s->img);
}

static void qcow2_drain(struct vbd_image *img)
{
        struct qcow2_state *s = vbd_image_state(img);

        s->draining = true;
        drain_check(s);
}

/* Start the flush of the queued flush requests (none is running). */
static void flush_begin(struct qcow2_state *s)
{
        s->flush_cur = s->flush_next;
        s->flush_next = NULL;
        s->flush_busy = true;
        s->gen++;
        s->alloc_blocked = true;
        s->flush_stage = FLUSH_DRAIN;
        flush_step(s);
}

static void flush_finish(struct qcow2_state *s, int status)
{
        struct qcow2_io *list = s->flush_cur;

        if (status == 0)
                qcow2_apply_frees(s, s->flush_frees);
        s->flush_cur = NULL;
        s->flush_stage = FLUSH_IDLE;
        s->flush_busy = false;
        if (s->alloc_blocked) {
                s->alloc_blocked = false;
                wake_waiters(s);
        }
        while (list) {
                struct qcow2_io *next = list->next;

                vbd_io_complete(list->io, status);
                list = next;
        }
        if (s->flush_next && !s->flush_busy)
                flush_begin(s);
        else if (s->draining && !s->flush_busy)
                drain_check(s);
}

static void flush_sync_done(struct vbd_aio_op *op, ssize_t res)
{
        struct qcow2_state *s = op->opaque;

        if (res < 0) {
                vbd_err("'%s': fdatasync failed: %s", s->path, strerror((int)-res));
                flush_finish(s, (int)res);
                return;
        }
        if (s->flush_stage == FLUSH_SYNC_RB && s->rc_written > s->rc_durable)
                s->rc_durable = s->rc_written;
        flush_step(s);
}

static void flush_sync(struct qcow2_state *s, enum flush_stage next)
{
        s->flush_stage = next;
        s->flush_op.done = flush_sync_done;
        s->flush_op.opaque = s;
        vbd_aio_fdatasync(s->aio, &s->flush_op, s->mfd);
}

static void flush_step(struct qcow2_state *s)
{
        int r;

        switch (s->flush_stage) {
        case FLUSH_IDLE:
                return;
        case FLUSH_DRAIN:
                if (s->inflight[(s->gen - 1) & 1])
                        return;
                r = qcow2_write_rbs(s);
                if (r < 0)
                        break;
                flush_sync(s, FLUSH_SYNC_RB);
                return;
        case FLUSH_SYNC_RB:
                s->flush_frees = s->nfrees;
                r = qcow2_write_l2s(s);
                if (r < 0)
                        break;
                s->alloc_blocked = false;
                flush_sync(s, FLUSH_SYNC_L2);
                wake_waiters(s);
                return;
        case FLUSH_SYNC_L2:
                if (!s->nl1_todo) {
                        flush_finish(s, 0);
                        return;
                }
                r = qcow2_write_l1_todo(s);
                if (r < 0)
                        break;
                flush_sync(s, FLUSH_SYNC_L1);
                return;
        case FLUSH_SYNC_L1:
                flush_finish(s, 0);
                return;
        default:
                return;
        }
        vbd_err("'%s': flush failed: %s", s->path, strerror(-r));
        flush_finish(s, r);
}

static void flush_submit(struct qcow2_io *q)
{
        struct qcow2_state *s = q->s;

        if (s->readonly) {
                vbd_io_complete(q->io, 0);
                return;
        }
        q->next = s->flush_next;
        s->flush_next = q;
        if (!s->flush_busy)
                flush_begin(s);
}

/* ---- the backing child ---- */

static void child_done(struct vbd_io *cio, int status)
{
        struct qcow2_child *c = cio->opaque;
        struct qcow2_io *q = c->parent;
        struct qcow2_state *s = q->s;
        enum child_kind kind = c->kind;

        child_put(s, c);
        if (kind == CHILD_COW) {
                cow_part_done(q, status);
                return;
        }
        if (status < 0) {
                if (kind == CHILD_COR) {
                        cowbuf_put(s, q->cor);
                        q->cor = NULL;
                }
                complete(q, status);
                return;
        }
        if (kind == CHILD_COR) {
                cor_read_done(q);
                return;
        }
        q->pos += q->clen;
        read_next(q);
}

/* ---- driver entry points ---- */

static int open_backing(struct vbd_image *self_img, struct qcow2_state *s, struct vbd_err *err)
{
        const char *name = s->h.backing_file, *fmt = s->h.backing_fmt;
        char path[4096 + 1100], spec[sizeof(path) + 32], dir[4096];
        struct vbd_err berr = {0};
        struct stat st, self;
        struct vbd_image *img;

        if (name[0] == '/') {
                snprintf(path, sizeof(path), "%s", name);
        } else {
                snprintf(dir, sizeof(dir), "%s", s->path);
                snprintf(path, sizeof(path), "%s/%s", dirname(dir), name);
        }
        if (strlen(path) >= 4096)
                return vbd_err_set(err, -ENAMETOOLONG, "qcow2: backing file path too long");
        if (strchr(path, ','))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: backing file '%s' has a ',' in its name (not "
                                   "possible in an image spec)",
                                   path);
        if (stat(path, &st) < 0)
                return vbd_err_set(err, -errno, "qcow2: backing file '%s': %s", path,
                                   strerror(errno));
        if (fstat(s->mfd, &self) < 0)
                return vbd_err_set(err, -errno, "qcow2: fstat: %s", strerror(errno));
        if (chain_len == 0)
                chain[chain_len++] = (typeof(chain[0])){self.st_dev, self.st_ino};
        for (unsigned i = 0; i < chain_len; i++)
                if (chain[i].dev == st.st_dev && chain[i].ino == st.st_ino)
                        return vbd_err_set(err, -ELOOP, "qcow2: backing chain loops at '%s'", path);
        if (chain_len > QCOW2_MAX_BACKING_DEPTH)
                return vbd_err_set(err, -ELOOP, "qcow2: backing chain deeper than %d images",
                                   QCOW2_MAX_BACKING_DEPTH);
        if (!fmt[0]) {
                /* No format recorded (old images): look at the magic. */
                uint8_t magic[4] = {0};
                int fd = open(path, O_RDONLY | O_CLOEXEC);

                if (fd >= 0) {
                        if (pread(fd, magic, 4, 0) != 4)
                                memset(magic, 0, 4);
                        close(fd);
                }
                fmt = vbd_get_be32(magic) == QCOW2_MAGIC ? "qcow2" : "raw";
                vbd_warn("'%s': backing file '%s' has no recorded format, probed %s", s->path, path,
                         fmt);
        } else if (strcmp(fmt, "raw") != 0 && strcmp(fmt, "qcow2") != 0) {
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: backing file '%s' has format '%s' (raw or qcow2 only)",
                                   path, fmt);
        }
        snprintf(spec, sizeof(spec), "%s:%s%s", fmt, path,
                 s->locking == VBD_OFF  ? ",locking=off"
                 : s->locking == VBD_ON ? ",locking=on"
                                        : "");
        chain[chain_len++] = (typeof(chain[0])){st.st_dev, st.st_ino};
        img = vbd_image_open_backing(self_img, spec, &berr); /* the core's: it closes it */
        chain_len--;
        if (chain_len == 1)
                chain_len = 0;
        if (!img)
                return vbd_err_set(err, berr.code ? berr.code : -EIO, "qcow2: backing file: %s",
                                   berr.msg);
        s->backing = img;
        s->backing_size = vbd_image_info(img)->size;
        s->backing_scratch = vbd_image_io_scratch_size(img);
        return 0;
}

static void dio_align(struct qcow2_state *s)
{
        s->dio_align = 512;
        s->dio_mem_align = 4096;
#ifdef STATX_DIOALIGN
        struct statx stx;

        if (statx(s->dfd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
            (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align &&
            !(stx.stx_dio_offset_align & (stx.stx_dio_offset_align - 1)) && stx.stx_dio_mem_align &&
            !(stx.stx_dio_mem_align & (stx.stx_dio_mem_align - 1))) {
                s->dio_align = stx.stx_dio_offset_align;
                s->dio_mem_align = stx.stx_dio_mem_align;
        }
#endif
}

/*
 * The unit in which the kernel caches and writes back the file: the page,
 * or the file system block when larger.  An O_DIRECT write into a page that
 * a buffered write of other bytes dirties at the same time leaves a stale
 * page behind (the kernel cannot invalidate it: "Page cache invalidation
 * failure on direct I/O", and fdatasync then fails with EIO); its writeback
 * puts old bytes back over the direct write, or the direct write's
 * sub-block zeroing hits the buffered bytes.  Metadata is always written
 * buffered, so with clusters smaller than this unit, data clusters next to
 * an L1 table, an L2 table or a refcount block must be written buffered too.
 */
static uint64_t dio_granule(int fd)
{
        long ps = sysconf(_SC_PAGESIZE);
        uint64_t g = ps > 0 ? (uint64_t)ps : 4096;
        struct stat st;

        if (fstat(fd, &st) == 0 && st.st_blksize > 0 && (uint64_t)st.st_blksize > g)
                g = (uint64_t)st.st_blksize;
        return g;
}

static int qcow2_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct qcow2_state *s = vbd_image_state(img);
        struct qcow2_meta_opts mo = {0};
        const char *path = o->arg;
        /* direct: 0 off, 1 on, 2 auto */
        int direct = o->values[OPT_DIRECT].t == VBD_AUTO ? 2 : o->values[OPT_DIRECT].t == VBD_ON,
            cor = o->values[OPT_COR].b, fd, r;

        s->mfd = s->dfd = -1;
        if (!path || !*path)
                return vbd_err_set(err, -EINVAL, "qcow2: missing path (qcow2:PATH)");
        mo.l2_cache = o->values[OPT_L2_CACHE].set ? o->values[OPT_L2_CACHE].u : 0;
        mo.rb_cache = o->values[OPT_RB_CACHE].set ? o->values[OPT_RB_CACHE].u : 0;
        s->img = img;
        s->aio = vbd_image_aio(img);
        if (!s->aio)
                return vbd_err_set(err, -EINVAL, "qcow2: no AIO engine given");
        s->path = strdup(path);
        if (!s->path)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory");

        fd = open(path, (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = vbd_err_set(err, -errno, "qcow2: cannot open '%s'%s: %s", path,
                                o->readonly ? "" : " for writing", strerror(errno));
                goto fail;
        }
        s->locking = o->values[OPT_LOCKING].t;
        r = vbd_image_lock(img, fd, path, o->values[OPT_LOCKING].t,
                           VBD_LOCK_CONSISTENT_READ |
                               (o->readonly ? 0 : VBD_LOCK_WRITE | VBD_LOCK_RESIZE),
                           VBD_LOCK_WRITE | VBD_LOCK_RESIZE, err);
        if (r < 0) {
                close(fd);
                goto fail;
        }
        r = qcow2_meta_open(s, fd, o->readonly, &mo, err);
        if (r < 0)
                goto fail;
        s->cor = cor == 1 && !o->readonly;

        s->dfd = s->mfd;
        if (direct && !o->readonly) {
                uint64_t g = dio_granule(s->mfd);

                if (s->cs < g && direct == 1) {
                        r = vbd_err_set(err, -EINVAL,
                                        "qcow2: direct=on needs clusters of at least %llu bytes "
                                        "(page and file system block); '%s' has %llu",
                                        (unsigned long long)g, path, (unsigned long long)s->cs);
                        goto fail;
                }
                if (s->cs < g)
                        direct = 0;
        }
        if (direct) {
                int dfd = open(path, (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_DIRECT);
                struct stat a, b;

                if (dfd < 0 && (errno != EINVAL || direct == 1)) {
                        r = vbd_err_set(err, -errno, "qcow2: cannot open '%s' with O_DIRECT: %s",
                                        path, strerror(errno));
                        goto fail;
                }
                if (dfd >= 0) {
                        if (fstat(dfd, &a) < 0 || fstat(s->mfd, &b) < 0 || a.st_dev != b.st_dev ||
                            a.st_ino != b.st_ino) {
                                close(dfd);
                                r = vbd_err_set(err, -ESTALE,
                                                "qcow2: '%s' was replaced while opening", path);
                                goto fail;
                        }
                        s->dfd = dfd;
                        s->direct = true;
                        dio_align(s);
                }
        }
        if (s->h.backing_file[0]) {
                r = open_backing(img, s, err);
                if (r < 0)
                        goto fail;
        }
        vbd_info("'%s': qcow2 v%u, %llu bytes, cluster %llu, refcount %u bits, %s%s%s%s%s%s", path,
                 s->h.version, (unsigned long long)s->size, (unsigned long long)s->cs, s->rc_width,
                 s->backing ? "backing " : "no backing file",
                 s->backing ? vbd_image_name(s->backing) : "", s->lazy ? ", lazy refcounts" : "",
                 s->h.nb_snapshots ? ", snapshots" : "", o->readonly ? ", read-only" : "",
                 s->cor ? ", copy-on-read" : "");
        return 0;

fail:
        if (s->dfd >= 0 && s->dfd != s->mfd)
                close(s->dfd);
        s->dfd = -1;
        qcow2_meta_close(s); /* closes fd */
        s->backing = NULL;   /* the core closes it */
        free(s->path);
        s->path = NULL;
        return r;
}

static int qcow2_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct qcow2_state *s = vbd_image_state(img);

        *ret_info = (struct vbd_info){
            .size = s->size,
            .caps = VBD_CAP_FLUSH,
            .logical_block = 512,
            .physical_block = s->cs < 4096 ? (uint32_t)s->cs : 4096,
            .mem_align = s->direct && s->dio_mem_align > QCOW2_MEM_ALIGN ? s->dio_mem_align
                                                                         : QCOW2_MEM_ALIGN,
            .max_io = 0,
            .discard_granularity = (uint32_t)s->cs,
            .discard_alignment = 0,
        };
        if (!s->readonly)
                ret_info->caps |= VBD_CAP_WRITE | VBD_CAP_DISCARD | VBD_CAP_WRITE_ZEROES;
        return 0;
}

static void qcow2_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct qcow2_state *s = vbd_image_state(img);
        struct qcow2_io *q = io->scratch;

        memset(q, 0, offsetof(struct qcow2_io, iov));
        q->cow[0] = q->cow[1] = q->cor = NULL;
        q->ncl = 0;
        q->io = io;
        q->s = s;
        q->pos = io->offset;
        q->gen = s->gen;
        if (io->op == VBD_OP_FLUSH) {
                flush_submit(q);
                return;
        }
        s->inflight[q->gen & 1]++;
        q->counted = true;
        switch (io->op) {
        case VBD_OP_READ:
                read_next(q);
                return;
        case VBD_OP_WRITE:
                q->wend = io->offset + io->len;
                write_next(q);
                return;
        case VBD_OP_DISCARD:
        case VBD_OP_WRITE_ZEROES:
                zero_next(q);
                return;
        default:
                complete(q, -EOPNOTSUPP);
                return;
        }
}

/* ---- block status ---- */

#define STATUS_MAX_CLUSTERS (1ull << 20) /* L2 entries looked at per call */
#define STATUS_MAX_LOADS    16u          /* uncached L2 tables read per call */

/* Append an extent to ret[0, *n), merged into the last one when the flags
 * and the depth match.  false: ret is full. */
static bool status_add(struct vbd_extent *ret, unsigned max, unsigned *n, uint64_t len,
                       uint32_t flags, uint32_t depth)
{
        if (*n && ret[*n - 1].flags == flags && ret[*n - 1].depth == depth) {
                ret[*n - 1].len += len;
                return true;
        }
        if (*n == max)
                return false;
        ret[(*n)++] = (struct vbd_extent){.len = len, .flags = flags, .depth = depth};
        return true;
}

/*
 * The status of [pos, end), unallocated in this image, from the backing
 * chain: the backing image's own block status inside its size, zeros past
 * it.  Appends to ret[0, *n); *ret_done: the bytes described, less than
 * end - pos when ret filled up or the backing image answered short (it
 * bounds its own work; the caller asks again).
 */
static int backing_status(struct qcow2_state *s, uint64_t pos, uint64_t end, struct vbd_extent *ret,
                          unsigned max, unsigned *n, uint64_t *ret_done)
{
        uint64_t p = pos, bend = end < s->backing_size ? end : s->backing_size;

        *ret_done = 0;
        while (p < bend) {
                /* Straight into the free tail of ret, compacted by status_add as it
                 * goes (it never writes past the extent being read); when ret is
                 * full, one extent that may still merge into the last. */
                struct vbd_extent one, *dst = *n < max ? ret + *n : &one;
                unsigned cap = *n < max ? max - *n : 1, k = 0;
                uint64_t asked = bend - p, got = 0;
                int r = vbd_image_block_status(s->backing, p, asked, dst, cap, &k);

                if (r < 0)
                        return r;
                for (unsigned i = 0; i < k; i++) {
                        struct vbd_extent e = dst[i];
                        uint32_t d = e.depth == VBD_EXTENT_DEPTH_NONE ? e.depth : e.depth + 1;

                        if (!status_add(ret, max, n, e.len, e.flags, d))
                                goto out;
                        p += e.len;
                        got += e.len;
                }
                if (got < asked)
                        goto out;
        }
        /* Past a shorter backing file: zeros that file stands for (QEMU
         * counts them as allocated there, for qemu:allocation-depth). */
        if (p < end && status_add(ret, max, n, end - p, VBD_EXTENT_HOLE | VBD_EXTENT_ZERO, 1))
                p = end;
out:
        *ret_done = p - pos;
        return 0;
}

/*
 * block_status: from the L1/L2 tables.  Unallocated clusters: the backing
 * chain's status (zeros past its end), or hole + zero without a backing
 * file; zero clusters: zero, and hole when no host cluster is kept;
 * standard and compressed clusters: data.  Synchronous, as the contract
 * requires: L2 tables come from the cache, and one that is not cached is
 * read with pread on the loop thread (qcow2_status_run).  The work per call
 * is bounded (STATUS_MAX_CLUSTERS entries, STATUS_MAX_LOADS table reads);
 * the answer then covers less than asked.  An error after some extents ends
 * the answer there (the next call, starting at the bad cluster, reports it).
 */
static int qcow2_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                              struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct qcow2_state *s = vbd_image_state(img);
        uint64_t pos = offset, end = offset + len, budget = STATUS_MAX_CLUSTERS;
        uint64_t last = (end - 1) >> s->cluster_bits;
        unsigned loads = STATUS_MAX_LOADS, n = 0;
        int r = 0;

        while (pos < end && budget) {
                uint64_t gc = pos >> s->cluster_bits, ncl, next, done;
                uint64_t want = last - gc + 1 < budget ? last - gc + 1 : budget;
                enum qcow2_status st;
                uint32_t flags;

                r = qcow2_status_run(s, gc, want, &loads, &st, &ncl);
                if (r < 0 || !ncl)
                        break;
                budget -= ncl;
                next = (gc + ncl) << s->cluster_bits;
                if (next > end)
                        next = end;
                if (st == QCOW2_ST_UNALLOC && s->backing) {
                        r = backing_status(s, pos, next, ret, max, &n, &done);
                        if (r < 0)
                                break;
                        pos += done;
                        if (pos < next)
                                break;
                        continue;
                }
                if (st == QCOW2_ST_DATA)
                        flags = 0;
                else if (st == QCOW2_ST_ZERO_ALLOC)
                        flags = VBD_EXTENT_ZERO;
                else
                        flags = VBD_EXTENT_HOLE | VBD_EXTENT_ZERO;
                /* zero clusters are this image's; unallocated ones (no backing
                 * file) are nobody's */
                if (!status_add(ret, max, &n, next - pos, flags,
                                st == QCOW2_ST_UNALLOC ? VBD_EXTENT_DEPTH_NONE : 0))
                        break;
                pos = next;
        }
        if (!n)
                return r < 0 ? r : -EIO;
        *ret_n = n;
        return 0;
}

static void qcow2_close(struct vbd_image *img)
{
        struct qcow2_state *s = vbd_image_state(img);
        int r = qcow2_meta_shutdown(s);

        if (r < 0)
                vbd_err("'%s': cannot write the metadata back on close: %s", s->path, strerror(-r));
        while (s->child_free) {
                struct qcow2_child *c = s->child_free;

                s->child_free = c->next;
                free(c);
        }
        while (s->cow_free) {
                struct qcow2_cowbuf *b = s->cow_free;

                s->cow_free = b->next;
                free(b->data);
                free(b);
        }
        s->backing = NULL; /* the core closes it after this */
        if (s->dfd >= 0 && s->dfd != s->mfd)
                close(s->dfd);
        s->dfd = -1;
        qcow2_meta_close(s);
        free(s->path);
        s->path = NULL;
}

/* ---- stored bitmaps (qcow2-bitmap.c) ---- */

static int qcow2_stored_bitmaps_put(struct vbd_image *img, const struct vbd_stored_bitmap *b,
                                    unsigned n, struct vbd_err *err)
{
        struct qcow2_state *s = vbd_image_state(img);

        if (s->allocs || s->flush_busy || s->flush_cur || s->inflight[0] || s->inflight[1])
                return vbd_err_set(err, -EBUSY, "qcow2: requests in flight");
        return qcow2_bitmaps_put(s, b, n, err);
}

static int qcow2_stored_bitmap_get(struct vbd_image *img, const char *name,
                                   struct vbd_stored_bitmap *ret, struct vbd_err *err)
{
        return qcow2_bitmap_get(vbd_image_state(img), name, ret, err);
}

const struct vbd_driver vbd_driver_qcow2 = {
    .abi = VBD_DRIVER_ABI,
    .name = "qcow2",
    .description = "QEMU qcow2 images (v2/v3, backing files, zero and compressed clusters)",
    .usage = "qcow2:PATH[,l2-cache=SIZE][,refcount-cache=SIZE][,direct=on|off|auto]"
             "[,copy-on-read=on|off][,locking=on|off|auto]",
    .state_size = sizeof(struct qcow2_state),
    .io_scratch_size = sizeof(struct qcow2_io),
    .open = qcow2_open,
    .get_info = qcow2_get_info,
    .submit = qcow2_submit,
    .close = qcow2_close,
    .opts = qcow2_opts,
    .nopts = VBD_ARRAY_SIZE(qcow2_opts),
    .drain = qcow2_drain,
    .block_status = qcow2_block_status,
    .create = qcow2_create,
    .stored_bitmaps_put = qcow2_stored_bitmaps_put,
    .stored_bitmap_get = qcow2_stored_bitmap_get,
};
