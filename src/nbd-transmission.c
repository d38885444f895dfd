/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD transmission phase (doc/proto.md, "Transmission"): request
 * headers and WRITE payloads in, checks, dispatch to the image, simple or
 * structured replies out.
 *
 * Each client has VBD_NBD_MAX_INFLIGHT request slots and a
 * VBD_NBD_MAX_REQUEST-byte arena (anonymous memory, touched only as used)
 * cut into NBD_CHUNK-byte chunks.  A READ, WRITE or BLOCK_STATUS takes the
 * chunks it needs; when there are not enough, or no free slot, the socket
 * is not read until a reply has gone out.  Nothing is allocated per request.
 *
 * Requests go to the image through vbd_image_submit() and may complete in
 * any order; each reply is queued as it completes.  BLOCK_STATUS is
 * answered synchronously by the meta contexts (nbd-meta.c).
 */
#define VBD_LOG_TOPIC "nbd"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "nbd-internal.h"

/* ---- the pure parts ---- */

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

/* ---- setup ---- */

void nbd_transmission_set_scratch(struct nbd_client *cl, void *scratch, size_t size)
{
        free(cl->scratch);
        cl->scratch = scratch;
        cl->scratch_size = size;
        for (unsigned i = 0; i < VBD_NBD_MAX_INFLIGHT; i++)
                cl->reqs[i].io.scratch = size ? (char *)scratch + i * size : NULL;
}

int nbd_transmission_start(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        size_t scratch = vbd_image_io_scratch_size(nbd_image(s));
        void *arena, *sbuf = NULL;
        char meta[128];

        arena = mmap(NULL, VBD_NBD_MAX_REQUEST, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (arena == MAP_FAILED)
                return -errno;
        cl->arena = arena;
        cl->reqs = calloc(VBD_NBD_MAX_INFLIGHT, sizeof(*cl->reqs));
        if (scratch)
                sbuf = calloc(VBD_NBD_MAX_INFLIGHT, scratch);
        if (!cl->reqs || (scratch && !sbuf)) {
                free(sbuf);
                return -ENOMEM;
        }
        for (unsigned i = 0; i < NBD_CHUNKS; i++)
                cl->free_chunk[i] = (uint16_t)(NBD_CHUNKS - 1 - i);
        cl->nfree_chunks = NBD_CHUNKS;
        for (unsigned i = VBD_NBD_MAX_INFLIGHT; i-- > 0;) {
                struct nbd_req *r = &cl->reqs[i];

                r->cl = cl;
                r->next = cl->free_reqs;
                cl->free_reqs = r;
        }
        nbd_transmission_set_scratch(cl, sbuf, scratch);
        free(cl->opt);
        cl->opt = NULL;
        cl->lim = (struct vbd_nbd_limits){
            .size = s->size,
            .min_block = s->min_block,
            .max_block = s->max_block,
            .eflags = (uint16_t)(s->eflags | (cl->structured ? NBD_EFLAG_SEND_DF : 0)),
            .structured = cl->structured,
            .meta_alloc = cl->meta != 0,
        };
        cl->transmission = true;
        cl->state = CL_REQ_HDR;
        ev_timer_stop(s->loop, &cl->hs_timer);
        nbd_meta_describe(cl, meta, sizeof(meta));
        vbd_info("%s: connected (%s replies%s, %s)", cl->peer,
                 cl->structured ? "structured" : "simple", meta,
                 (cl->lim.eflags & NBD_EFLAG_READ_ONLY) ? "read-only" : "writable");
        return 0;
}

/* ---- request slots and buffers ---- */

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

void nbd_req_put(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;

        for (unsigned i = 0; i < r->nchunks; i++)
                cl->free_chunk[cl->nfree_chunks++] = r->chunk[i];
        r->nchunks = 0;
        r->state = REQ_FREE;
        r->next = cl->free_reqs;
        cl->free_reqs = r;
        cl->used--;
        nbd_client_unstall(cl);
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

/* ---- replies ---- */

static size_t error_reply(struct nbd_req *r)
{
        if (r->cl->structured && (r->type == NBD_CMD_READ || r->type == NBD_CMD_BLOCK_STATUS)) {
                vbd_put_be32(r->hdr, NBD_STRUCTURED_REPLY_MAGIC);
                vbd_put_be16(r->hdr + 4, NBD_REPLY_FLAG_DONE);
                vbd_put_be16(r->hdr + 6, NBD_REPLY_TYPE_ERROR);
                vbd_put_be64(r->hdr + 8, r->cookie);
                vbd_put_be32(r->hdr + 16, 6);
                vbd_put_be32(r->hdr + 20, r->error);
                vbd_put_be16(r->hdr + 24, 0);
                return 26;
        }
        return 0;
}

void nbd_req_queue_reply(struct nbd_req *r, unsigned data_iovs, uint32_t data_len)
{
        struct nbd_client *cl = r->cl;
        size_t h = 0;

        if (r->error) {
                data_iovs = 0;
                h = error_reply(r);
        } else if (cl->structured && r->type == NBD_CMD_READ) {
                vbd_put_be32(r->hdr, NBD_STRUCTURED_REPLY_MAGIC);
                vbd_put_be16(r->hdr + 4, NBD_REPLY_FLAG_DONE);
                vbd_put_be16(r->hdr + 6, NBD_REPLY_TYPE_OFFSET_DATA);
                vbd_put_be64(r->hdr + 8, r->cookie);
                vbd_put_be32(r->hdr + 16, 8 + data_len);
                vbd_put_be64(r->hdr + 20, r->offset);
                h = 28;
        } else if (r->type == NBD_CMD_BLOCK_STATUS) {
                /* nbd-meta.c wrote whole chunks, headers included, into the data. */
                r->iov[0] = r->iov[1];
                r->iov[0].iov_len = data_len;
                r->iovcnt = 1;
                goto queue;
        }
        if (!h) { /* a simple reply: errors without structure, and every other command */
                vbd_put_be32(r->hdr, NBD_SIMPLE_REPLY_MAGIC);
                vbd_put_be32(r->hdr + 4, r->error);
                vbd_put_be64(r->hdr + 8, r->cookie);
                h = 16;
                if (r->type != NBD_CMD_READ || r->error)
                        data_iovs = 0;
        }
        r->iov[0].iov_base = r->hdr;
        r->iov[0].iov_len = h;
        r->iovcnt = 1 + data_iovs;
queue:
        r->out_idx = 0;
        r->state = REQ_QUEUED;
        r->next = NULL;
        if (cl->outq_tail)
                cl->outq_tail->next = r;
        else
                cl->outq = r;
        cl->outq_tail = r;
}

/* ---- dispatch ---- */

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
        vbd_image_submit(nbd_image(cl->srv), &r->io);
}

static void req_finish(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;

        if (r->state == REQ_IO) {
                cl->in_io--;
                cl->srv->inflight--;
                nbd_server_io_left(cl->srv);
        }
        if (cl->dead) {
                nbd_req_put(r);
                return;
        }
        nbd_req_queue_reply(r, r->type == NBD_CMD_READ ? r->nchunks : 0,
                            r->type == NBD_CMD_READ ? r->len : 0);
        if (!cl->busy)
                nbd_client_flush(cl);
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
                nbd_client_update_watchers(cl);
                nbd_client_maybe_free(cl);
        }
}

static void req_block_status(struct nbd_req *r)
{
        int n = nbd_meta_block_status(r, r->iov[1].iov_base, r->iov[1].iov_len);

        if (n < 0) {
                r->error = vbd_nbd_errno(n);
                nbd_req_queue_reply(r, 0, 0);
                return;
        }
        nbd_req_queue_reply(r, 1, (uint32_t)n);
}

/* The header of r is in; its payload (WRITE) too.  Start it. */
static void req_start(struct nbd_req *r)
{
        struct nbd_client *cl = r->cl;
        const struct vbd_info *info = vbd_image_info(nbd_image(cl->srv));
        uint32_t fua = 0;

        if (r->error) {
                nbd_req_queue_reply(r, 0, 0);
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
                        nbd_req_queue_reply(r, 0, 0);
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
                nbd_req_queue_reply(r, 0, 0);
                return;
        }
}

/* ---- input ---- */

/* A request header at h (consumed). */
static void request_header(struct nbd_client *cl, const uint8_t *h)
{
        struct nbd_req *r;
        uint32_t magic = vbd_get_be32(h);
        uint16_t flags = vbd_get_be16(h + 4), type = vbd_get_be16(h + 6);
        uint64_t cookie = vbd_get_be64(h + 8), offset = vbd_get_be64(h + 16);
        uint32_t len = vbd_get_be32(h + 24);

        if (magic != NBD_REQUEST_MAGIC) {
                nbd_client_kill(cl, "bad request magic %#" PRIx32, magic);
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
                nbd_req_queue_reply(r, 0, 0);
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

int nbd_transmission_process(struct nbd_client *cl)
{
        struct nbd_req *r = cl->cur;

        if (cl->srv->paused)
                return NBD_IN_STOP; /* nothing new goes to the image */
        switch (cl->state) {
        case CL_REQ_HDR:
                if (!cl->free_reqs) {
                        cl->stalled = true;
                        return NBD_IN_STOP;
                }
                if (nbd_in_avail(cl) < NBD_REQ_HDR)
                        return NBD_IN_MORE;
                cl->ioff += NBD_REQ_HDR;
                request_header(cl, cl->ibuf + cl->ioff - NBD_REQ_HDR);
                return NBD_IN_NEXT;
        case CL_REQ_BUF:
                if (!req_get_chunks(r,
                                    r->type == NBD_CMD_BLOCK_STATUS ? NBD_BS_REPLY_MAX : r->len)) {
                        cl->stalled = true;
                        return NBD_IN_STOP;
                }
                if (r->type == NBD_CMD_WRITE) {
                        r->state = REQ_PAYLOAD;
                        cl->state = CL_REQ_PAYLOAD;
                        return NBD_IN_NEXT;
                }
                cl->cur = NULL;
                cl->state = CL_REQ_HDR;
                req_start(r);
                return NBD_IN_NEXT;
        case CL_REQ_PAYLOAD:
                while (r->got < r->len && nbd_in_avail(cl)) {
                        unsigned c = r->got / NBD_CHUNK, o = r->got % NBD_CHUNK;
                        size_t n = r->iov[1 + c].iov_len - o;

                        if (n > nbd_in_avail(cl))
                                n = nbd_in_avail(cl);
                        memcpy((uint8_t *)r->iov[1 + c].iov_base + o, cl->ibuf + cl->ioff, n);
                        cl->ioff += n;
                        r->got += (uint32_t)n;
                }
                if (r->got < r->len)
                        return NBD_IN_MORE;
                cl->cur = NULL;
                cl->state = CL_REQ_HDR;
                req_start(r);
                return NBD_IN_NEXT;
        default:
                return NBD_IN_STOP;
        }
}
