/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The AIO engine (see aio.h).
 *
 * An op goes through these lists, all intrusive (the next field of its
 * private part), so that nothing
 * is allocated per operation:
 *
 *   queue     accepted, waiting for io_submit (flushed from ev_prepare)
 *   kernel    submitted; counted by in_kernel, found again through io_event.obj
 *   deferred  finished outside a callback (bad arguments, io_submit refused
 *             the iocb): delivered from ev_prepare/ev_idle, never inline
 *   work      fdatasync for the worker thread (only after FDSYNC was refused)
 *   results   done by the worker, handed back with ev_async
 *
 * io_submit never gets more than max_inflight iocbs in total, which is the
 * size of the io_context; the queue itself is unbounded.
 *
 * Completions are read from the kernel's completion ring, which Linux maps
 * into the process at the io_context's address (fs/aio.c, struct aio_ring:
 * the kernel writes an event, then tail; whoever reads moves head, and
 * io_submit looks at head to know which slots are free again), instead of
 * with an io_getevents() per wake-up.  The header is checked first (magic,
 * no incompatible features, its length, the ring size) and head and tail
 * on every read; anything unexpected and io_getevents() does the work from
 * then on.
 */
#define VBD_LOG_TOPIC "aio"
#include <assert.h>
#include <errno.h>
#include <ev.h>
#include <libaio.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aio.h"
#include "vbd/log.h"
#include "vbd/macro.h"

/* What the engine keeps in each op's priv (vbd/aio.h keeps libaio out of drivers).
 * iocb comes first: an io_event's obj points at it, and so at priv. */
struct aio_priv {
        struct iocb iocb;
        struct vbd_aio_op *next;
        struct iovec *iov;
        int iovcnt;
        int fd;
        uint64_t offset, len, transferred;
        struct iovec rest[2]; /* for resubmitting a short transfer */
        ssize_t result;       /* status of a completion waiting to be delivered */
};
static_assert(sizeof(struct aio_priv) <= sizeof(((struct vbd_aio_op *)0)->priv),
              "struct vbd_aio_op.priv is too small for the engine's state");
static_assert(offsetof(struct aio_priv, iocb) == 0, "iocb must come first");

#define P(op) ((struct aio_priv *)(void *)(op)->priv.bytes)

#define AIO_RETRY_DELAY 0.001 /* seconds, after io_submit said EAGAIN with nothing in flight */

/* The header of the kernel's completion ring (Linux fs/aio.c), followed by
 * nr struct io_event. */
struct kring {
        unsigned id, nr, head, tail;
        unsigned magic, compat_features, incompat_features, header_length;
        struct io_event events[];
};
#define KRING_MAGIC 0xa10a10a1u

struct op_list {
        struct vbd_aio_op *head, *tail;
};

struct vbd_aio {
        struct ev_loop *loop;
        io_context_t ctx;
        int efd;
        unsigned max_inflight;
        unsigned inflight;  /* accepted and not yet completed */
        unsigned in_kernel; /* submitted and not yet reaped */
        struct op_list queue, deferred;
        struct iocb **iocbs;
        struct io_event *events;
        struct kring *kring; /* the completion ring, NULL: io_getevents */
        unsigned kring_nr;   /* its size, as read at io_setup */

        ev_io io_w;
        ev_prepare prepare_w;
        ev_idle idle_w;
        ev_timer retry_w;
        ev_async async_w;
        bool in_process;
        bool prepare_ran;
        unsigned prepare_iter;

        /* fdatasync fallback */
        bool fdsync_threaded;
        bool worker_started, worker_stop;
        pthread_t worker;
        pthread_mutex_t lock; /* protects work, results, worker_stop */
        pthread_cond_t cond;
        struct op_list work, results;
};

static void list_push(struct op_list *l, struct vbd_aio_op *op)
{
        P(op)->next = NULL;
        if (l->tail)
                P(l->tail)->next = op;
        else
                l->head = op;
        l->tail = op;
}

static struct vbd_aio_op *list_pop(struct op_list *l)
{
        struct vbd_aio_op *op = l->head;

        if (op) {
                l->head = P(op)->next;
                if (!l->head)
                        l->tail = NULL;
                P(op)->next = NULL;
        }
        return op;
}

static struct op_list list_take(struct op_list *l)
{
        struct op_list r = *l;

        l->head = l->tail = NULL;
        return r;
}

/* The loop stays alive (ev_run does not return) while operations are pending. */
static void inflight_get(struct vbd_aio *aio)
{
        if (aio->inflight++ == 0)
                ev_ref(aio->loop);
}

static void inflight_put(struct vbd_aio *aio)
{
        assert(aio->inflight > 0);
        if (--aio->inflight == 0)
                ev_unref(aio->loop);
}

/* Deliver a completion.  op is not touched afterwards: done may reuse it. */
static void op_finish(struct vbd_aio *aio, struct vbd_aio_op *op, ssize_t res)
{
        inflight_put(aio);
        op->done(op, res);
}

/*
 * Make sure queued or deferred work is seen before the loop blocks.  The
 * ev_prepare watcher does it, unless it already ran in this iteration and we
 * are being called from a later prepare watcher (the poll comes next).
 */
static void aio_kick(struct vbd_aio *aio)
{
        if (aio->in_process || ev_is_active(&aio->idle_w))
                return;
        if (aio->prepare_ran && ev_iteration(aio->loop) == aio->prepare_iter)
                ev_idle_start(aio->loop, &aio->idle_w);
}

static void op_defer(struct vbd_aio *aio, struct vbd_aio_op *op, ssize_t res)
{
        P(op)->result = res;
        list_push(&aio->deferred, op);
        aio_kick(aio);
}

static void *aio_worker(void *arg)
{
        struct vbd_aio *aio = arg;
        struct vbd_aio_op *op;
        int r;

        pthread_mutex_lock(&aio->lock);
        for (;;) {
                while (!aio->worker_stop && !aio->work.head)
                        pthread_cond_wait(&aio->cond, &aio->lock);
                op = list_pop(&aio->work);
                if (!op)
                        break; /* stop requested and nothing left */
                pthread_mutex_unlock(&aio->lock);

                r = fdatasync(P(op)->fd) < 0 ? -errno : 0;

                pthread_mutex_lock(&aio->lock);
                P(op)->result = r;
                list_push(&aio->results, op);
                ev_async_send(aio->loop, &aio->async_w);
        }
        pthread_mutex_unlock(&aio->lock);
        return NULL;
}

static int worker_start(struct vbd_aio *aio)
{
        sigset_t all, old;
        int r;

        if (aio->worker_started)
                return 0;
        /* The worker must not take the daemon's signals. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&aio->worker, NULL, aio_worker, aio);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                return r;
        aio->worker_started = true;
        return 0;
}

/* Hand an fdatasync op to the worker thread. */
static void op_to_worker(struct vbd_aio *aio, struct vbd_aio_op *op)
{
        int r;

        if (!aio->fdsync_threaded) {
                aio->fdsync_threaded = true;
                vbd_info("IOCB_CMD_FDSYNC refused, fdatasync runs on a worker thread from now on");
        }
        r = worker_start(aio);
        if (r < 0) {
                vbd_log_errno(r, "cannot start the fdatasync thread: %m");
                op_defer(aio, op, r);
                return;
        }
        pthread_mutex_lock(&aio->lock);
        list_push(&aio->work, op);
        pthread_cond_signal(&aio->cond);
        pthread_mutex_unlock(&aio->lock);
}

static void aio_async_cb(struct ev_loop *loop, ev_async *w, int revents)
{
        struct vbd_aio *aio = w->data;
        struct vbd_aio_op *op;
        struct op_list done;

        pthread_mutex_lock(&aio->lock);
        done = list_take(&aio->results);
        pthread_mutex_unlock(&aio->lock);

        while ((op = list_pop(&done)))
                op_finish(aio, op, P(op)->result);
}

static bool op_is_fdsync(const struct vbd_aio_op *op)
{
        return P(op)->iocb.aio_lio_opcode == IO_CMD_FDSYNC;
}

/* (Re)prepare the iocb for what is left of a read or write. */
static void op_prep_rw(struct vbd_aio *aio, struct vbd_aio_op *op, bool write)
{
        const struct iovec *iov = P(op)->iov;
        int iovcnt = P(op)->iovcnt;
        uint64_t skip = P(op)->transferred;

        /* Skip whole segments already done; split the first partial one. */
        while (iovcnt > 0 && skip >= iov->iov_len) {
                skip -= iov->iov_len;
                iov++;
                iovcnt--;
        }
        if (skip) {
                P(op)->rest[0].iov_base = (char *)iov->iov_base + skip;
                P(op)->rest[0].iov_len = iov->iov_len - skip;
                iov = P(op)->rest;
                iovcnt = 1; /* the following segments go in the next round */
        }
        if (write)
                io_prep_pwritev(&P(op)->iocb, P(op)->fd, iov, iovcnt,
                                (long long)(P(op)->offset + P(op)->transferred));
        else
                io_prep_preadv(&P(op)->iocb, P(op)->fd, iov, iovcnt,
                               (long long)(P(op)->offset + P(op)->transferred));
        io_set_eventfd(&P(op)->iocb, aio->efd);
}

/* Send queued ops to the kernel; normally a single io_submit. */
static void aio_flush(struct vbd_aio *aio)
{
        while (aio->queue.head && aio->in_kernel < aio->max_inflight) {
                unsigned room = aio->max_inflight - aio->in_kernel, n = 0;
                struct vbd_aio_op *op;
                int r;

                for (op = aio->queue.head; op && n < room; op = P(op)->next)
                        aio->iocbs[n++] = &P(op)->iocb;

                r = io_submit(aio->ctx, (long)n, aio->iocbs);
                if (r == -EINTR)
                        continue;
                if (r == -EAGAIN) {
                        /* Try again next iteration; make sure there is one. */
                        if (aio->in_kernel == 0 && !ev_is_active(&aio->retry_w)) {
                                ev_timer_set(&aio->retry_w, AIO_RETRY_DELAY, 0.);
                                ev_timer_start(aio->loop, &aio->retry_w);
                        }
                        return;
                }
                if (r < 0) {
                        /* The first iocb was refused: complete it, go on with the rest. */
                        op = list_pop(&aio->queue);
                        if (op_is_fdsync(op) && r == -EINVAL)
                                op_to_worker(aio, op);
                        else
                                op_defer(aio, op, r);
                        continue;
                }
                for (int i = 0; i < r; i++)
                        (void)list_pop(&aio->queue);
                aio->in_kernel += (unsigned)r;
                if ((unsigned)r == n)
                        return; /* all sent (or the context is full) */
                /* Partial submit: the next round reports what stopped it. */
        }
}

/* Deliver deferred completions and flush the queue until both are quiet. */
static void aio_process(struct vbd_aio *aio)
{
        struct op_list done;
        struct vbd_aio_op *op;

        aio->in_process = true;
        do {
                done = list_take(&aio->deferred);
                while ((op = list_pop(&done)))
                        op_finish(aio, op, P(op)->result);
                aio_flush(aio);
        } while (aio->deferred.head);
        aio->in_process = false;
}

static void aio_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct vbd_aio *aio = w->data;

        aio->prepare_ran = true;
        aio->prepare_iter = ev_iteration(loop);
        aio_process(aio);
}

static void aio_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
        struct vbd_aio *aio = w->data;

        ev_idle_stop(loop, w);
        aio_process(aio);
}

static void aio_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        aio_process(w->data);
}

/* One completion from the kernel. */
static void aio_complete(struct vbd_aio *aio, struct vbd_aio_op *op, long res)
{
        bool write;

        if (op_is_fdsync(op)) {
                if (res == -EINVAL)
                        op_to_worker(aio, op);
                else
                        op_finish(aio, op, res < 0 ? res : 0);
                return;
        }
        if (res < 0) {
                op_finish(aio, op, res);
                return;
        }
        if (res == 0 || (uint64_t)res > P(op)->len - P(op)->transferred) {
                /* No progress (end of file) or nonsense from the kernel. */
                op_finish(aio, op, -EIO);
                return;
        }
        P(op)->transferred += (uint64_t)res;
        if (P(op)->transferred == P(op)->len) {
                op_finish(aio, op, (ssize_t)P(op)->len);
                return;
        }
        /* Short transfer: resubmit the remainder. */
        write = P(op)->iocb.aio_lio_opcode == IO_CMD_PWRITEV;
        vbd_debug("short %s fd %d at %llu: %ld of %llu, resubmitting", write ? "write" : "read",
                  P(op)->fd, (unsigned long long)P(op)->offset, res,
                  (unsigned long long)(P(op)->len - P(op)->transferred + (uint64_t)res));
        op_prep_rw(aio, op, write);
        list_push(&aio->queue, op);
        aio_kick(aio);
}

static struct kring *kring_check(io_context_t ctx, unsigned max_inflight)
{
        struct kring *k = (struct kring *)(void *)ctx;

        if (!k || k->magic != KRING_MAGIC || k->incompat_features != 0 ||
            k->header_length != sizeof(*k) || k->nr <= max_inflight || k->head >= k->nr ||
            k->tail >= k->nr) {
                vbd_debug("no usable completion ring at the io_context: io_getevents it is");
                return NULL;
        }
        return k;
}

/* Up to max completions from the ring into events, as io_getevents(ctx, 0,
 * max, events, {0, 0}) would: their slots are free again when this returns.
 * -EIO (and the ring is not used again) if head or tail make no sense. */
static int kring_reap(struct vbd_aio *aio, struct io_event *events, unsigned max)
{
        struct kring *k = aio->kring;
        unsigned nr = aio->kring_nr;
        unsigned head = __atomic_load_n(&k->head, __ATOMIC_RELAXED);
        unsigned tail = __atomic_load_n(&k->tail, __ATOMIC_ACQUIRE); /* events before tail */
        unsigned n = 0;

        if (head >= nr || tail >= nr) {
                vbd_warn("completion ring head %u tail %u of %u: io_getevents from now on", head,
                         tail, nr);
                aio->kring = NULL;
                return -EIO;
        }
        while (head != tail && n < max) {
                events[n++] = k->events[head];
                head = head + 1 == nr ? 0 : head + 1;
        }
        /* Our reads of the events come before the kernel may reuse their slots. */
        __atomic_store_n(&k->head, head, __ATOMIC_RELEASE);
        return (int)n;
}

static void aio_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
        struct vbd_aio *aio = w->data;
        struct timespec zero = {0, 0};
        uint64_t count;
        int n;

        (void)!read(aio->efd, &count, sizeof(count)); /* non-blocking; EAGAIN is fine */
        for (;;) {
                n = -EIO;
                if (aio->kring)
                        n = kring_reap(aio, aio->events, aio->max_inflight);
                if (n == -EIO)
                        n = io_getevents(aio->ctx, 0, (long)aio->max_inflight, aio->events, &zero);
                if (n == -EINTR)
                        continue;
                if (n < 0) {
                        vbd_log_errno(n, "io_getevents: %m");
                        return;
                }
                for (int i = 0; i < n; i++) {
                        struct vbd_aio_op *op = vbd_container_of(
                            (struct aio_priv *)(void *)aio->events[i].obj, struct vbd_aio_op, priv);

                        assert(aio->in_kernel > 0);
                        aio->in_kernel--;
                        aio_complete(aio, op, (long)aio->events[i].res);
                }
                if ((unsigned)n < aio->max_inflight)
                        return;
        }
}

struct vbd_aio *vbd_aio_new(struct ev_loop *loop, unsigned max_inflight)
{
        struct vbd_aio *aio;
        int r;

        if (!loop || max_inflight == 0 || max_inflight > INT_MAX / 2) {
                errno = EINVAL;
                return NULL;
        }
        aio = calloc(1, sizeof(*aio));
        if (!aio)
                return NULL;
        aio->loop = loop;
        aio->max_inflight = max_inflight;
        aio->efd = -1;
        pthread_mutex_init(&aio->lock, NULL);
        pthread_cond_init(&aio->cond, NULL);

        aio->iocbs = calloc(max_inflight, sizeof(*aio->iocbs));
        aio->events = calloc(max_inflight, sizeof(*aio->events));
        if (!aio->iocbs || !aio->events) {
                r = -ENOMEM;
                goto fail;
        }
        aio->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (aio->efd < 0) {
                r = vbd_log_errno(errno, "eventfd: %m");
                goto fail;
        }
        r = io_setup((int)max_inflight, &aio->ctx);
        if (r < 0) {
                vbd_log_errno(r, "io_setup(%u): %m (see /proc/sys/fs/aio-max-nr)", max_inflight);
                aio->ctx = 0;
                goto fail;
        }
        aio->kring = kring_check(aio->ctx, max_inflight);
        if (aio->kring)
                aio->kring_nr = aio->kring->nr;

        /* Our watchers alone do not keep the loop running: ev_unref after start. */
        ev_io_init(&aio->io_w, aio_io_cb, aio->efd, EV_READ);
        aio->io_w.data = aio;
        ev_io_start(loop, &aio->io_w);
        ev_unref(loop);
        ev_prepare_init(&aio->prepare_w, aio_prepare_cb);
        aio->prepare_w.data = aio;
        ev_prepare_start(loop, &aio->prepare_w);
        ev_unref(loop);
        ev_async_init(&aio->async_w, aio_async_cb);
        aio->async_w.data = aio;
        ev_async_start(loop, &aio->async_w);
        ev_unref(loop);
        ev_idle_init(&aio->idle_w, aio_idle_cb);
        aio->idle_w.data = aio;
        ev_timer_init(&aio->retry_w, aio_retry_cb, AIO_RETRY_DELAY, 0.);
        aio->retry_w.data = aio;
        return aio;

fail:
        if (aio->efd >= 0)
                close(aio->efd);
        free(aio->iocbs);
        free(aio->events);
        pthread_cond_destroy(&aio->cond);
        pthread_mutex_destroy(&aio->lock);
        free(aio);
        errno = -r;
        return NULL;
}

void vbd_aio_free(struct vbd_aio *aio)
{
        if (!aio)
                return;
        if (aio->inflight)
                vbd_warn("freed with %u operations in flight", aio->inflight);

        if (aio->worker_started) {
                pthread_mutex_lock(&aio->lock);
                aio->worker_stop = true;
                pthread_cond_signal(&aio->cond);
                pthread_mutex_unlock(&aio->lock);
                pthread_join(aio->worker, NULL);
        }
        ev_ref(aio->loop);
        ev_io_stop(aio->loop, &aio->io_w);
        ev_ref(aio->loop);
        ev_prepare_stop(aio->loop, &aio->prepare_w);
        ev_ref(aio->loop);
        ev_async_stop(aio->loop, &aio->async_w);
        ev_idle_stop(aio->loop, &aio->idle_w);
        ev_timer_stop(aio->loop, &aio->retry_w);
        if (aio->inflight)
                ev_unref(aio->loop); /* balance inflight_get() */

        io_destroy(aio->ctx); /* waits for what the kernel still has */
        close(aio->efd);
        free(aio->iocbs);
        free(aio->events);
        pthread_cond_destroy(&aio->cond);
        pthread_mutex_destroy(&aio->lock);
        free(aio);
}

static void aio_rw(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                   int iovcnt, uint64_t offset, bool write)
{
        uint64_t len = 0;

        assert(op && op->done);
        inflight_get(aio);
        P(op)->fd = fd;
        P(op)->iov = iov;
        P(op)->iovcnt = iovcnt;
        P(op)->offset = offset;
        P(op)->transferred = 0;
        memset(&P(op)->iocb, 0, sizeof(P(op)->iocb));

        if (iovcnt < 0 || iovcnt > IOV_MAX || (iovcnt > 0 && !iov)) {
                op_defer(aio, op, -EINVAL);
                return;
        }
        for (int i = 0; i < iovcnt; i++) {
                if (iov[i].iov_len > SSIZE_MAX - len) {
                        op_defer(aio, op, -EINVAL);
                        return;
                }
                len += iov[i].iov_len;
        }
        P(op)->len = len;
        if (offset > INT64_MAX - len) {
                op_defer(aio, op, -EINVAL);
                return;
        }
        if (len == 0) {
                op_defer(aio, op, 0);
                return;
        }
        op_prep_rw(aio, op, write);
        list_push(&aio->queue, op);
        aio_kick(aio);
}

void vbd_aio_preadv(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                    int iovcnt, uint64_t offset)
{
        aio_rw(aio, op, fd, iov, iovcnt, offset, false);
}

void vbd_aio_pwritev(struct vbd_aio *aio, struct vbd_aio_op *op, int fd, struct iovec *iov,
                     int iovcnt, uint64_t offset)
{
        aio_rw(aio, op, fd, iov, iovcnt, offset, true);
}

void vbd_aio_fdatasync(struct vbd_aio *aio, struct vbd_aio_op *op, int fd)
{
        assert(op && op->done);
        inflight_get(aio);
        P(op)->fd = fd;
        P(op)->iov = NULL;
        P(op)->iovcnt = 0;
        P(op)->offset = P(op)->len = P(op)->transferred = 0;
        io_prep_fdsync(&P(op)->iocb, fd);
        io_set_eventfd(&P(op)->iocb, aio->efd);
        if (aio->fdsync_threaded) {
                op_to_worker(aio, op);
                return;
        }
        list_push(&aio->queue, op);
        aio_kick(aio);
}

bool vbd_aio_kernel_ring(const struct vbd_aio *aio)
{
        return aio->kring != NULL;
}

void vbd_aio_no_kernel_ring(struct vbd_aio *aio)
{
        aio->kring = NULL;
}

unsigned vbd_aio_inflight(const struct vbd_aio *aio)
{
        return aio->inflight;
}

bool vbd_aio_fdsync_threaded(const struct vbd_aio *aio)
{
        return aio->fdsync_threaded;
}
