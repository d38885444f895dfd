/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * nbd: an image served by an NBD server, through libnbd's asynchronous API
 * in the VBD's libev loop.
 *
 *   nbd:URI[,timeout=SECONDS][,connect-timeout=SECONDS]
 *
 * URI is what nbd_connect_uri(3) takes, limited to TCP and Unix sockets:
 * nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, and their TLS
 * forms nbds:// and nbds+unix:// when libnbd was built with TLS.
 *
 * open() connects synchronously (poll() on libnbd's socket, never the VBD's
 * loop), for at most connect-timeout seconds.  The size and the block size
 * constraints the server sends are checked here (libnbd passes them on):
 * the logical block is the server's minimum block size, at least 512; a size
 * that is not a multiple of it is rounded down, with a warning.
 *
 * submit() turns an io into NBD commands: READ and WRITE one command per
 * iovec element (or a bounce buffer when the elements are not multiples of
 * the minimum block size), every command at most the server's maximum block
 * size (32 MiB when it names none), at most NBD_IO_WINDOW of them in flight
 * per io.  FUA goes to the server when it has it (otherwise the cap is not
 * offered).  DISCARD is a trim, or nothing when the server cannot trim
 * (discard is advisory); WRITE_ZEROES is a zero command, or writes of a
 * zeroed buffer when the server cannot zero.
 *
 * libnbd's completion callbacks only mark the command done and queue it;
 * the queue is worked off outside libnbd (nbd_process), so that completing
 * an io (which may submit the next one) never calls libnbd from inside
 * libnbd.
 *
 * A command without an answer for timeout seconds drops the connection:
 * every io in flight fails with -ETIMEDOUT; a lost connection fails them
 * with -EIO (or the server's error, when it sent one); once dropped, every
 * io fails at once with -EIO.  There is no reconnection.
 */
#define VBD_LOG_TOPIC "drv.nbd"
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>
#include <libnbd.h>

#include "vbd/driver.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/nbd-watch.h"
#include "vbd/time.h"

#define NBD_IO_WINDOW   8           /* commands in flight per io */
#define NBD_DEFAULT_MAX (32u << 20) /* largest command without a server maximum */
#define NBD_ZERO_CHUNK  (1u << 20)  /* bytes per write of the zero fallback */
#define NBD_BLOCK_MAX   65536u      /* largest minimum block size we take */
#define NBD_TIMEOUT_MAX 86400u

struct nbd_state;
struct nbd_io;

/* One NBD command.  Freed when both we (processed) and libnbd (the closure's
 * free callback: lib cleared) are done with it. */
struct nbd_cmd {
        struct nbd_cmd *prev, *next; /* s->cmds, oldest first */
        struct nbd_cmd *done_next;   /* s->done_head */
        struct nbd_io *nio;
        uint64_t start_ns;
        int err;        /* errno of the answer, 0 = success */
        bool done;      /* answered, failed or given up on; queued on s->done */
        bool processed; /* taken off s->done */
        bool lib;       /* libnbd holds the closure */
};

/* Per-io scratch. */
struct nbd_io {
        struct vbd_io *io;
        struct nbd_state *s;
        uint64_t pos, end; /* the next byte of the image to issue; the io's end */
        unsigned iov_i;    /* READ/WRITE cursor: element and offset in it */
        size_t iov_off;
        char *bounce;      /* READ/WRITE through one buffer (len bytes) */
        unsigned inflight; /* commands of this io in flight */
        int err;           /* the first error, -errno */
        bool flush_sent;
        bool zero_writes; /* WRITE_ZEROES as writes of zero buffers */
};

struct nbd_state {
        struct nbd_handle *h; /* NULL once the connection is dropped */
        struct ev_loop *loop;
        const char *name;
        char *uri;
        unsigned timeout_s;

        uint64_t size;
        uint32_t min_block, pref_block, max_block; /* as the server says (0: not said) */
        uint32_t logical_block, physical_block, max_cmd;
        bool readonly; /* opened read-only */
        bool can_flush, can_fua, can_trim, can_zero, can_fast_zero;

        struct vbd_nbd_watch w;
        ev_timer tick;
        bool tick_on;
        ev_timer drained_w; /* vbd_image_drained() from the loop, not from deep inside */

        struct nbd_cmd *cmds, *cmds_tail;
        struct nbd_cmd *done_head, *done_tail;
        unsigned ncmds;
        unsigned nios; /* ios submitted and not yet completed */
        bool processing, draining;
        struct vbd_image *img;
};

static const char zeroes[NBD_ZERO_CHUNK];

enum { OPT_TIMEOUT, OPT_CONNECT_TIMEOUT };
static const struct vbd_opt_desc nbd_opts[] = {
    [OPT_TIMEOUT] = VBD_OPT_UINT_DEF("timeout", 1, NBD_TIMEOUT_MAX, "30",
                                     "seconds without an answer before the connection is dropped"),
    [OPT_CONNECT_TIMEOUT] = VBD_OPT_UINT_DEF("connect-timeout", 1, NBD_TIMEOUT_MAX, "10",
                                             "seconds open() waits for the connection"),
};

static void nbd_process(struct nbd_state *s);

/* ---- the socket and the timer in the VBD's loop ---- */

/* Watch libnbd's socket for what libnbd waits for.  The watchers do not keep
 * the loop alive; ios in flight do (nbd_busy). */
static void nbd_watch(struct nbd_state *s)
{
        vbd_nbd_watch_update(s->loop, &s->w, s->h);
}

static void nbd_tick_update(struct nbd_state *s)
{
        bool want = s->ncmds > 0 && s->h;

        if (want == s->tick_on)
                return;
        if (want) {
                double period = s->timeout_s / 4.;

                if (period > 1.)
                        period = 1.;
                ev_timer_set(&s->tick, period, period);
                ev_timer_start(s->loop, &s->tick);
                ev_unref(s->loop);
        } else {
                ev_ref(s->loop);
                ev_timer_stop(s->loop, &s->tick);
        }
        s->tick_on = want;
}

/* The loop stays alive while ios are in flight, as with the AIO engine. */
static void nbd_io_get(struct nbd_state *s)
{
        if (s->nios++ == 0)
                ev_ref(s->loop);
}

static void nbd_io_put(struct nbd_state *s)
{
        if (--s->nios == 0) {
                ev_unref(s->loop);
                if (s->draining) {
                        s->draining = false;
                        ev_timer_set(&s->drained_w, 0., 0.);
                        ev_timer_start(s->loop, &s->drained_w);
                }
        }
}

static void nbd_drained_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct nbd_state *s = w->data;

        (void)loop;
        (void)revents;
        vbd_image_drained(s->img); /* the last use of s: the core may close the image */
}

/* ---- commands ---- */

static void cmd_queue_done(struct nbd_state *s, struct nbd_cmd *c, int err)
{
        c->done = true;
        c->err = err;
        c->done_next = NULL;
        if (s->done_tail)
                s->done_tail->done_next = c;
        else
                s->done_head = c;
        s->done_tail = c;
}

static int cmd_cb(void *user_data, int *error)
{
        struct nbd_cmd *c = user_data;

        if (!c->done) /* else given up on already */
                cmd_queue_done(c->nio->s, c, *error);
        return 1;
}

static void cmd_free_cb(void *user_data)
{
        struct nbd_cmd *c = user_data;

        c->lib = false;
        if (c->processed)
                free(c);
}

static struct nbd_cmd *cmd_new(struct nbd_io *nio)
{
        struct nbd_state *s = nio->s;
        struct nbd_cmd *c = calloc(1, sizeof(*c));

        if (!c)
                return NULL;
        c->nio = nio;
        c->start_ns = vbd_now_ns();
        c->lib = true;
        c->prev = s->cmds_tail;
        if (s->cmds_tail)
                s->cmds_tail->next = c;
        else
                s->cmds = c;
        s->cmds_tail = c;
        s->ncmds++;
        nio->inflight++;
        return c;
}

static nbd_completion_callback cmd_closure(struct nbd_cmd *c)
{
        return (nbd_completion_callback){.callback = cmd_cb, .user_data = c, .free = cmd_free_cb};
}

static void cmd_unlink(struct nbd_state *s, struct nbd_cmd *c)
{
        if (c->prev)
                c->prev->next = c->next;
        else
                s->cmds = c->next;
        if (c->next)
                c->next->prev = c->prev;
        else
                s->cmds_tail = c->prev;
        c->prev = c->next = NULL;
        s->ncmds--;
}

/* Drop the connection: every command not answered yet fails with err. */
static void nbd_drop(struct nbd_state *s, int err)
{
        struct nbd_handle *h = s->h;

        if (!h)
                return;
        for (struct nbd_cmd *c = s->cmds; c; c = c->next)
                if (!c->done)
                        cmd_queue_done(s, c, err);
        s->h = NULL;
        nbd_watch(s); /* before the fd is closed */
        nbd_tick_update(s);
        nbd_close(h); /* runs no completion callback, only the free callbacks */
        nbd_process(s);
}

/* ---- ios ---- */

static void nio_finish(struct nbd_io *nio)
{
        struct nbd_state *s = nio->s;
        struct vbd_io *io = nio->io;

        if (nio->bounce) {
                if (!nio->err && io->op == VBD_OP_READ) {
                        size_t off = 0;

                        for (unsigned i = 0; i < io->iovcnt; i++) {
                                memcpy(io->iov[i].iov_base, nio->bounce + off, io->iov[i].iov_len);
                                off += io->iov[i].iov_len;
                        }
                }
                free(nio->bounce);
                nio->bounce = NULL;
        }
        vbd_io_complete(io, nio->err);
        nbd_io_put(s); /* may call vbd_image_drained(): s is not touched after */
}

/* The next piece of a READ/WRITE: its buffer and length (<= max). */
static void nio_next_buf(struct nbd_io *nio, uint64_t max, void **ret_buf, uint64_t *ret_len)
{
        struct vbd_io *io = nio->io;
        uint64_t len;

        if (nio->bounce) {
                *ret_buf = nio->bounce + (nio->pos - io->offset);
                len = nio->end - nio->pos;
                *ret_len = len < max ? len : max;
                return;
        }
        while (io->iov[nio->iov_i].iov_len == nio->iov_off) {
                nio->iov_i++;
                nio->iov_off = 0;
        }
        len = io->iov[nio->iov_i].iov_len - nio->iov_off;
        if (len > max)
                len = max;
        *ret_buf = (char *)io->iov[nio->iov_i].iov_base + nio->iov_off;
        *ret_len = len;
        nio->iov_off += (size_t)len;
}

/* Send one command of nio: 1 sent (or failed, then queued as done), 0 nothing left. */
static int nio_issue_one(struct nbd_io *nio)
{
        struct nbd_state *s = nio->s;
        struct vbd_io *io = nio->io;
        struct nbd_cmd *c;
        uint64_t len = 0, off = nio->pos;
        uint32_t flags = 0;
        void *buf = NULL;
        const char *what;
        int64_t r;

        if (io->op == VBD_OP_FLUSH ? nio->flush_sent : nio->pos >= nio->end)
                return 0;
        c = cmd_new(nio);
        if (!c) {
                nio->err = -ENOMEM;
                return 0;
        }
        if ((io->flags & VBD_IO_FUA) && s->can_fua)
                flags |= LIBNBD_CMD_FLAG_FUA;
        switch (io->op) {
        case VBD_OP_READ:
                nio_next_buf(nio, s->max_cmd, &buf, &len);
                what = "read";
                r = nbd_aio_pread(s->h, buf, len, off, cmd_closure(c), 0);
                break;
        case VBD_OP_WRITE:
                nio_next_buf(nio, s->max_cmd, &buf, &len);
                what = "write";
                r = nbd_aio_pwrite(s->h, buf, len, off, cmd_closure(c), flags);
                break;
        case VBD_OP_FLUSH:
                nio->flush_sent = true;
                what = "flush";
                r = nbd_aio_flush(s->h, cmd_closure(c), 0);
                break;
        case VBD_OP_DISCARD:
                len = nio->end - nio->pos;
                if (len > s->max_cmd)
                        len = s->max_cmd;
                what = "trim";
                r = nbd_aio_trim(s->h, len, off, cmd_closure(c), flags);
                break;
        case VBD_OP_WRITE_ZEROES:
                len = nio->end - nio->pos;
                if (nio->zero_writes) {
                        if (len > NBD_ZERO_CHUNK)
                                len = NBD_ZERO_CHUNK;
                        if (len > s->max_cmd)
                                len = s->max_cmd;
                        what = "write of zeroes";
                        r = nbd_aio_pwrite(s->h, zeroes, len, off, cmd_closure(c), flags);
                } else {
                        if (len > s->max_cmd)
                                len = s->max_cmd;
                        if (!(io->flags & VBD_IO_MAY_UNMAP))
                                flags |= LIBNBD_CMD_FLAG_NO_HOLE;
                        what = "zero";
                        r = nbd_aio_zero(s->h, len, off, cmd_closure(c), flags);
                }
                break;
        default:
                what = "?";
                r = -1;
                break;
        }
        nio->pos += len;
        if (r < 0 && !c->done) {
                int e = nbd_get_errno();
                static struct vbd_ratelimit rl = VBD_RATELIMIT_INIT(5000, 5);

                if (vbd_ratelimit_ok(&rl))
                        vbd_err("%s: cannot send a %s of %" PRIu64 " bytes at %" PRIu64 ": %s",
                                s->name, what, len, off, nbd_get_error());
                cmd_queue_done(s, c, e > 0 ? e : EIO);
                nio->err = -(e > 0 ? e : EIO); /* send no more of it */
        }
        return 1;
}

/* Issue what the window allows; complete nio when nothing is left. */
static void nio_pump(struct nbd_io *nio)
{
        while (!nio->err && nio->inflight < NBD_IO_WINDOW && nio->s->h && nio_issue_one(nio))
                ;
        if (!nio->inflight) {
                if (!nio->err && !nio->s->h &&
                    (nio->io->op == VBD_OP_FLUSH ? !nio->flush_sent : nio->pos < nio->end))
                        nio->err = -EIO; /* dropped halfway */
                nio_finish(nio);
        }
}

/* Work off the answered commands, outside libnbd. */
static void nbd_process(struct nbd_state *s)
{
        if (s->processing)
                return; /* the outer call goes on */
        s->processing = true;
        while (s->done_head) {
                struct nbd_cmd *c = s->done_head;
                struct nbd_io *nio = c->nio;

                s->done_head = c->done_next;
                if (!s->done_head)
                        s->done_tail = NULL;
                cmd_unlink(s, c);
                c->processed = true;
                if (c->err && !nio->err) /* libnbd's ENOTCONN: the connection died */
                        nio->err = c->err == ENOTCONN ? -EIO : -c->err;
                nio->inflight--;
                if (!c->lib)
                        free(c);
                nio_pump(nio);
        }
        s->processing = false;
        nbd_watch(s);
        nbd_tick_update(s);
}

static void nbd_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct nbd_state *s = w->data;
        int r = 0;

        (void)loop;
        if (!s->h)
                return;
        if (revents & EV_READ)
                r = nbd_aio_notify_read(s->h);
        if (r >= 0 && (revents & EV_WRITE))
                r = nbd_aio_notify_write(s->h);
        if (r < 0 || nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h)) {
                const char *e = nbd_get_error();

                vbd_err("%s: connection lost: %s", s->name, e ? e : "closed by the server");
                nbd_drop(s, EIO);
                return;
        }
        nbd_process(s);
}

static void nbd_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct nbd_state *s = w->data;

        (void)loop;
        (void)revents;
        if (s->h && s->cmds &&
            vbd_now_ns() - s->cmds->start_ns > (uint64_t)s->timeout_s * 1000000000u) {
                vbd_err("%s: no answer for %u s; dropping the connection", s->name, s->timeout_s);
                nbd_drop(s, ETIMEDOUT);
        }
}

static void nbd_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct nbd_state *s = vbd_image_state(img);
        struct nbd_io *nio = io->scratch;

        *nio = (struct nbd_io){.io = io, .s = s, .pos = io->offset, .end = io->offset + io->len};
        if (!s->h) {
                vbd_io_complete(io, -EIO);
                return;
        }
        if (io->op == VBD_OP_DISCARD && !s->can_trim) {
                vbd_io_complete(io, 0); /* advisory */
                return;
        }
        if (io->op == VBD_OP_WRITE_ZEROES && !s->can_zero)
                nio->zero_writes = true;
        if ((io->op == VBD_OP_READ || io->op == VBD_OP_WRITE) && io->iovcnt > 1 &&
            s->min_block > 1) {
                bool aligned = true;

                for (unsigned i = 0; i < io->iovcnt; i++)
                        if (io->iov[i].iov_len % s->min_block)
                                aligned = false;
                if (!aligned) {
                        nio->bounce = malloc(io->len);
                        if (!nio->bounce) {
                                vbd_io_complete(io, -ENOMEM);
                                return;
                        }
                        if (io->op == VBD_OP_WRITE) {
                                size_t off = 0;

                                for (unsigned i = 0; i < io->iovcnt; i++) {
                                        memcpy(nio->bounce + off, io->iov[i].iov_base,
                                               io->iov[i].iov_len);
                                        off += io->iov[i].iov_len;
                                }
                        }
                }
        }
        nbd_io_get(s);
        nio_pump(nio);
        if (s->h && (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h))) {
                vbd_err("%s: connection lost: %s", s->name,
                        nbd_get_error() ? nbd_get_error() : "closed");
                nbd_drop(s, EIO);
                return;
        }
        nbd_process(s); /* answers libnbd took in while sending */
}

static void nbd_drain(struct vbd_image *img)
{
        struct nbd_state *s = vbd_image_state(img);

        if (s->nios == 0) {
                vbd_image_drained(img);
                return;
        }
        s->draining = true;
}

/* ---- opening ---- */

/* Run libnbd's connection until it is ready, for at most timeout_s seconds,
 * with poll(): open() does not run the VBD's loop. */
static int nbd_connect(struct nbd_state *s, unsigned timeout_s, struct vbd_err *err)
{
        uint64_t deadline = vbd_now_ms() + (uint64_t)timeout_s * 1000u;

        if (nbd_aio_connect_uri(s->h, s->uri) < 0) {
                int e = nbd_get_errno();

                return vbd_err_set(err, e > 0 ? -e : -ECONNREFUSED, "nbd: cannot connect to %s: %s",
                                   s->uri, nbd_get_error());
        }
        while (nbd_aio_is_connecting(s->h)) {
                unsigned dir = nbd_aio_get_direction(s->h);
                struct pollfd p = {.fd = nbd_aio_get_fd(s->h)};
                uint64_t now = vbd_now_ms();
                int r;

                if (now >= deadline)
                        return vbd_err_set(err, -ETIMEDOUT, "nbd: no connection to %s within %u s",
                                           s->uri, timeout_s);
                if (dir & LIBNBD_AIO_DIRECTION_READ)
                        p.events |= POLLIN;
                if (dir & LIBNBD_AIO_DIRECTION_WRITE)
                        p.events |= POLLOUT;
                if (p.fd < 0)
                        return vbd_err_set(err, -EIO, "nbd: cannot connect to %s: %s", s->uri,
                                           nbd_get_error() ? nbd_get_error() : "no socket");
                r = poll(&p, 1, (int)(deadline - now));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return vbd_err_set(err, -errno, "nbd: poll: %s", strerror(errno));
                if (r == 0)
                        continue;
                r = 0;
                if (p.revents & (POLLIN | POLLHUP | POLLERR))
                        r = nbd_aio_notify_read(s->h);
                if (r >= 0 && (p.revents & (POLLOUT | POLLHUP | POLLERR)))
                        r = nbd_aio_notify_write(s->h);
                if (r < 0)
                        break;
        }
        if (!nbd_aio_is_ready(s->h)) {
                int e = nbd_get_errno();
                const char *msg = nbd_get_error();

                return vbd_err_set(err, e > 0 ? -e : -ECONNREFUSED, "nbd: cannot connect to %s: %s",
                                   s->uri, msg ? msg : "the server closed the connection");
        }
        return 0;
}

/* The export's size and block sizes, checked (libnbd passes them as sent). */
static int nbd_read_geometry(struct nbd_state *s, struct vbd_err *err)
{
        int64_t size = nbd_get_size(s->h);
        int64_t bmin = nbd_get_block_size(s->h, LIBNBD_SIZE_MINIMUM);
        int64_t bpref = nbd_get_block_size(s->h, LIBNBD_SIZE_PREFERRED);
        int64_t bmax = nbd_get_block_size(s->h, LIBNBD_SIZE_MAXIMUM);
        uint64_t max;

        if (size < 0)
                return vbd_err_set(err, -EIO, "nbd: %s: no export size: %s", s->uri,
                                   nbd_get_error());
        if (size == 0)
                return vbd_err_set(err, -EINVAL, "nbd: %s: the export is empty", s->uri);
        if (bmin < 0 || bpref < 0 || bmax < 0 || bmin > UINT32_MAX || bpref > UINT32_MAX ||
            bmax > UINT32_MAX)
                return vbd_err_set(err, -EPROTO, "nbd: %s: no block sizes: %s", s->uri,
                                   nbd_get_error());
        s->min_block = (uint32_t)bmin;
        s->pref_block = (uint32_t)bpref;
        s->max_block = (uint32_t)bmax;
        if (s->min_block == 0)
                s->min_block = 1; /* not advertised */
        if (!vbd_is_pow2(s->min_block) || s->min_block > NBD_BLOCK_MAX)
                return vbd_err_set(err, -EPROTO,
                                   "nbd: %s: the server's minimum block size %" PRId64
                                   " is not a power of two up to %u",
                                   s->uri, bmin, NBD_BLOCK_MAX);
        if (s->pref_block &&
            (!vbd_is_pow2(s->pref_block) || s->pref_block < s->min_block ||
             (s->max_block && s->max_block != UINT32_MAX && s->pref_block > s->max_block)))
                return vbd_err_set(err, -EPROTO,
                                   "nbd: %s: the server's block sizes make no sense (minimum "
                                   "%" PRId64 ", preferred %" PRId64 ", maximum %" PRId64 ")",
                                   s->uri, bmin, bpref, bmax);
        if (s->max_block && s->max_block != UINT32_MAX && s->max_block % s->min_block)
                return vbd_err_set(err, -EPROTO,
                                   "nbd: %s: the server's maximum block size %" PRId64
                                   " is not a multiple of its minimum %" PRId64,
                                   s->uri, bmax, bmin);

        s->logical_block = s->min_block > 512 ? s->min_block : 512;
        max = s->max_block ? s->max_block : NBD_DEFAULT_MAX;
        if (max > NBD_DEFAULT_MAX)
                max = NBD_DEFAULT_MAX;
        max -= max % s->logical_block;
        if (max == 0)
                return vbd_err_set(err, -EPROTO,
                                   "nbd: %s: the server's maximum block size %" PRId64
                                   " is less than a block of %u bytes",
                                   s->uri, bmax, s->logical_block);
        s->max_cmd = (uint32_t)max;
        s->physical_block = s->logical_block;
        if (s->pref_block > s->physical_block)
                s->physical_block = s->pref_block < NBD_BLOCK_MAX ? s->pref_block : NBD_BLOCK_MAX;

        s->size = (uint64_t)size - (uint64_t)size % s->logical_block;
        if (s->size == 0)
                return vbd_err_set(err, -EINVAL,
                                   "nbd: %s: the export (%" PRId64 " bytes) is smaller than a "
                                   "block of %u bytes",
                                   s->uri, size, s->logical_block);
        if (s->size != (uint64_t)size)
                vbd_warn("%s: size %" PRId64 " is not a multiple of %u, exposing %" PRIu64 " bytes",
                         s->uri, size, s->logical_block, s->size);
        return 0;
}

static bool nbd_uri_scheme(const char *uri, bool *tls)
{
        static const struct {
                const char *prefix;
                bool tls;
        } schemes[] = {
            {"nbd://", false},
            {"nbd+unix://", false},
            {"nbds://", true},
            {"nbds+unix://", true},
        };

        for (size_t i = 0; i < VBD_ARRAY_SIZE(schemes); i++)
                if (strncmp(uri, schemes[i].prefix, strlen(schemes[i].prefix)) == 0) {
                        *tls = schemes[i].tls;
                        return true;
                }
        return false;
}

static void nbd_cleanup(struct nbd_state *s)
{
        if (s->h) {
                struct nbd_handle *h = s->h;

                s->h = NULL;
                nbd_watch(s);
                nbd_tick_update(s);
                nbd_close(h);
        }
        free(s->uri);
        s->uri = NULL;
}

static int nbd_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct nbd_state *s = vbd_image_state(img);
        bool tls = false;
        int ro, r;

        s->img = img;
        s->loop = vbd_image_loop(img);
        s->name = vbd_image_name(img);
        s->readonly = o->readonly;
        s->timeout_s = (unsigned)o->values[OPT_TIMEOUT].u;
        vbd_nbd_watch_init(&s->w, nbd_io_cb, s);
        ev_init(&s->tick, nbd_tick_cb);
        s->tick.data = s;
        ev_init(&s->drained_w, nbd_drained_cb);
        s->drained_w.data = s;

        if (!o->arg || !*o->arg)
                return vbd_err_set(err, -EINVAL,
                                   "nbd: missing URI (nbd:nbd://HOST[:PORT]/EXPORT or "
                                   "nbd:nbd+unix:///EXPORT?socket=PATH)");
        if (!nbd_uri_scheme(o->arg, &tls))
                return vbd_err_set(err, -EINVAL,
                                   "nbd: '%s': not an NBD URI (nbd://, nbd+unix://, nbds://, "
                                   "nbds+unix://)",
                                   o->arg);
        if (!s->loop)
                return vbd_err_set(err, -EINVAL, "nbd: no event loop given");
        s->uri = strdup(o->arg);
        if (!s->uri)
                return vbd_err_set(err, -ENOMEM, "nbd: out of memory");
        s->h = nbd_create();
        if (!s->h) {
                r = vbd_err_set(err, -ENOMEM, "nbd: libnbd: %s", nbd_get_error());
                goto fail;
        }
        if (tls && nbd_supports_tls(s->h) != 1) {
                r = vbd_err_set(err, -EOPNOTSUPP, "nbd: %s: this libnbd has no TLS", s->uri);
                goto fail;
        }
        if (nbd_set_uri_allow_transports(s->h, LIBNBD_ALLOW_TRANSPORT_TCP |
                                                   LIBNBD_ALLOW_TRANSPORT_UNIX) < 0 ||
            nbd_set_uri_allow_tls(s->h, tls ? LIBNBD_TLS_REQUIRE : LIBNBD_TLS_DISABLE) < 0 ||
            nbd_set_uri_allow_local_file(s->h, true) < 0) { /* tls-psk-file= */
                r = vbd_err_set(err, -EINVAL, "nbd: libnbd: %s", nbd_get_error());
                goto fail;
        }
        r = nbd_connect(s, (unsigned)o->values[OPT_CONNECT_TIMEOUT].u, err);
        if (r < 0)
                goto fail;
        r = nbd_read_geometry(s, err);
        if (r < 0)
                goto fail;
        ro = nbd_is_read_only(s->h);
        if (ro == 1 && !o->readonly) {
                r = vbd_err_set(err, -EROFS, "nbd: %s: the export is read-only; open it read-only",
                                s->uri);
                goto fail;
        }
        s->can_flush = nbd_can_flush(s->h) == 1;
        s->can_fua = nbd_can_fua(s->h) == 1;
        s->can_trim = nbd_can_trim(s->h) == 1;
        s->can_zero = nbd_can_zero(s->h) == 1;
        s->can_fast_zero = nbd_can_fast_zero(s->h) == 1;
        vbd_info("%s: %" PRIu64 " bytes%s, blocks %u/%u/%u (min/pref/max)%s%s%s%s%s", s->uri,
                 s->size, ro == 1 ? ", read-only" : "", s->min_block, s->pref_block, s->max_block,
                 s->can_flush ? ", flush" : "", s->can_fua ? ", fua" : "",
                 s->can_trim ? ", trim" : "", s->can_zero ? ", zero" : "",
                 s->can_fast_zero ? ", fast-zero" : "");
        return 0;

fail:
        nbd_cleanup(s);
        return r;
}

static int nbd_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct nbd_state *s = vbd_image_state(img);

        *ret_info = (struct vbd_info){
            .size = s->size,
            .caps = s->can_flush ? VBD_CAP_FLUSH : 0,
            .logical_block = s->logical_block,
            .physical_block = s->physical_block,
            .mem_align = 0,
            .max_io = 0, /* split here */
            .discard_granularity = s->can_trim ? s->physical_block : 0,
            .discard_alignment = 0,
        };
        if (!s->readonly) {
                ret_info->caps |= VBD_CAP_WRITE | VBD_CAP_DISCARD | VBD_CAP_WRITE_ZEROES;
                if (s->can_fua)
                        ret_info->caps |= VBD_CAP_FUA;
        }
        return 0;
}

static void nbd_close_image(struct vbd_image *img)
{
        struct nbd_state *s = vbd_image_state(img);

        /* Nothing in flight: say goodbye as far as the socket takes it now
         * (nbd_shutdown would wait for the server), then close. */
        ev_timer_stop(s->loop, &s->drained_w);
        if (s->h && nbd_aio_is_ready(s->h))
                (void)nbd_aio_disconnect(s->h, 0);
        nbd_cleanup(s);
}

const struct vbd_driver vbd_driver_nbd = {
    .abi = VBD_DRIVER_ABI,
    .name = "nbd",
    .description = "an export of an NBD server (libnbd client)",
    .usage = "nbd:URI[,timeout=SECONDS][,connect-timeout=SECONDS]",
    .state_size = sizeof(struct nbd_state),
    .io_scratch_size = sizeof(struct nbd_io),
    .open = nbd_open,
    .get_info = nbd_get_info,
    .submit = nbd_submit,
    .drain = nbd_drain,
    .close = nbd_close_image,
    .opts = nbd_opts,
    .nopts = VBD_ARRAY_SIZE(nbd_opts),
};
