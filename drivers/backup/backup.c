/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * backup: the copy-before-write filter and the copy engine (see backup.h).
 *
 *   backup:CHILDSPEC
 *
 * The "backup" job pushes it over a device's image when it first needs it
 * and leaves it there; idle, it passes every op down.  While a backup runs,
 * up to BK_SLOTS runs of consecutive blocks of the set are read from the
 * child and written to the target; blocks a held guest write waits for are
 * read first (a stack of urgent blocks), the rest in order.  A write is let
 * down as soon as the reads of its blocks completed: the old contents are in
 * the engine's buffers then, and the target write does not concern it.
 *
 * A failure (a read, a target write or the target's flush failing, a stop)
 * releases the held writes at once: the guest never waits for a backup that
 * will not complete.  The engine ends with finished() from a zero timer,
 * never from inside a caller's call.
 */
#define VBD_LOG_TOPIC "drv.backup"
#include <errno.h>
#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

struct bk_image {
        struct bk_state s;
        ev_timer finish_w;
        ev_timer rate_w; /* the rate cap's wait */
};

static struct bk_state *state_of(struct vbd_image *img)
{
        return &((struct bk_image *)vbd_image_state(img))->s;
}

/* ---- the set ---- */

static uint64_t first_block(const struct bk_state *s, uint64_t off)
{
        return off >> s->shift;
}

static uint64_t last_block(const struct bk_state *s, uint64_t off, uint64_t len)
{
        return (off + len - 1) >> s->shift;
}

static bool needs(const struct bk_state *s, uint64_t b)
{
        return bk_test(s->todo, b) && !bk_test(s->read, b);
}

static bool io_ready(const struct bk_state *s, const struct vbd_io *io)
{
        for (uint64_t b = first_block(s, io->offset); b <= last_block(s, io->offset, io->len); b++)
                if (needs(s, b))
                        return false;
        /* fleece: a read of the view may be reading these bytes from the image */
        for (const struct bk_vread *vr = s->vreads; vr; vr = vr->next)
                if (vr->offset < io->offset + io->len && io->offset < vr->offset + vr->len)
                        return false;
        return true;
}

static void bk_clear(uint64_t *bm, uint64_t b)
{
        bm[b >> 6] &= ~(UINT64_C(1) << (b & 63));
}

/* Nothing of the guest's, the view's or the engine's in flight: a drain may end. */
static void check_drained(struct bk_state *s)
{
        if (s->draining && s->guest_inflight == 0 && s->slots_busy == 0 && !s->flushing &&
            !s->active) {
                s->draining = false;
                vbd_image_drained(s->img);
        }
}

static uint64_t run_bytes(const struct bk_state *s)
{
        return s->p.gran > BK_RUN_MAX ? s->p.gran : BK_RUN_MAX;
}

/* ---- the guest's ios ---- */

static void child_done(struct vbd_io *child_io, int status)
{
        struct bk_io *p = vbd_container_of(child_io, struct bk_io, child_io);
        struct bk_state *s = p->s;

        s->guest_inflight--;
        vbd_io_complete(p->io, status);
        check_drained(s);
}

static void pass_down(struct bk_state *s, struct bk_io *p)
{
        p->child_io = *p->io;
        p->child_io.done = child_done;
        p->child_io.opaque = p;
        p->child_io.scratch = vbd_image_child_scratch(s->img, p->io->scratch);
        vbd_image_submit(s->child, &p->child_io);
}

/* Let down the held ios whose blocks are read (all of them when all). */
static void release_waiters(struct bk_state *s, bool all)
{
        struct bk_io *ready = NULL, **rt = &ready, **pp = &s->wait_head;
        uint64_t now = vbd_now_ns();

        while (*pp) {
                struct bk_io *p = *pp;

                if (all || io_ready(s, p->io)) {
                        *pp = p->next_wait;
                        p->next_wait = NULL;
                        *rt = p;
                        rt = &p->next_wait;
                } else {
                        pp = &p->next_wait;
                }
        }
        s->wait_tail = pp;
        while (ready) { /* outside the walk: completions may submit more */
                struct bk_io *p = ready;
                uint64_t held = now - p->held_ns;

                ready = p->next_wait;
                s->held_ns_sum += held;
                if (held > s->held_ns_max)
                        s->held_ns_max = held;
                pass_down(s, p);
        }
}

static void pump(struct bk_state *s);

static void push_urgent(struct bk_state *s, uint64_t b)
{
        if (s->nurgent == s->urgent_cap) {
                size_t cap = s->urgent_cap ? s->urgent_cap * 2 : 64;
                uint64_t *u = realloc(s->urgent, cap * sizeof(*u));

                if (!u)
                        return; /* the cursor reaches it anyway, later */
                s->urgent = u;
                s->urgent_cap = cap;
        }
        s->urgent[s->nurgent++] = b;
}

static void bk_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct bk_state *s = state_of(img);
        struct bk_io *p = io->scratch;
        bool changes =
            io->op == VBD_OP_WRITE || io->op == VBD_OP_DISCARD || io->op == VBD_OP_WRITE_ZEROES;

        p->io = io;
        p->s = s;
        p->next_wait = NULL;
        s->guest_inflight++;
        if (s->active)
                s->guest_ns = vbd_now_ns();
        if (!s->active || s->stopping || !changes || io->len == 0 || io_ready(s, io)) {
                pass_down(s, p);
                return;
        }
        /* Copy before write: hold it, and read its blocks next. */
        s->writes_held++;
        p->held_ns = vbd_now_ns();
        *s->wait_tail = p;
        s->wait_tail = &p->next_wait;
        for (uint64_t b = last_block(s, io->offset, io->len) + 1;
             b-- > first_block(s, io->offset);) {
                if (s->p.fleece && needs(s, b))
                        bk_set(s->want, b);
                if (needs(s, b) && !bk_test(s->busy, b))
                        push_urgent(s, b);
        }
        pump(s);
}

/* ---- the copy engine ---- */

static void finish_soon(struct bk_state *s)
{
        struct bk_image *bi = vbd_container_of(s, struct bk_image, s);

        if (!ev_is_active(&bi->finish_w))
                ev_timer_start(vbd_image_loop(s->img), &bi->finish_w);
}

static void fail(struct bk_state *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct bk_state *s, int status, const char *fmt, ...)
{
        va_list ap;

        if (s->error == 0) {
                s->error = status < 0 ? status : -EIO;
                va_start(ap, fmt);
                vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
                va_end(ap);
                vbd_warn("%s: %s", s->p.fleece ? "snapshot" : "backup", s->msg);
        }
        s->stopping = true;
        release_waiters(s, true);
}

static void maybe_finish(struct bk_state *s);

static void flush_done(struct vbd_io *io, int status)
{
        struct bk_state *s = io->opaque;

        s->flushing = false;
        if (status < 0)
                fail(s, status, "flushing the target: %s", strerror(-status));
        s->left = 0;
        finish_soon(s);
}

static void maybe_finish(struct bk_state *s)
{
        if (!s->active || s->slots_busy || s->flushing)
                return;
        if (s->stopping) {
                finish_soon(s);
                return;
        }
        if (s->left || s->p.fleece) /* a snapshot runs until it is stopped */
                return;
        s->flushing = true;
        s->flush_io = (struct vbd_io){
            .op = VBD_OP_FLUSH, .done = flush_done, .opaque = s, .scratch = s->flush_scratch};
        vbd_image_submit(s->p.target, &s->flush_io);
}

static bool all_zero(const void *buf, size_t len)
{
        const uint64_t *w = buf;

        for (size_t i = 0; i < len / 8; i++)
                if (w[i])
                        return false;
        return true;
}

static void write_done(struct vbd_io *io, int status)
{
        struct bk_slot *sl = io->opaque;
        struct bk_state *s = sl->s;

        if (status < 0)
                fail(s, status, "writing the %s at %llu: %s", s->p.fleece ? "store" : "target",
                     (unsigned long long)sl->offset, strerror(-status));
        else if (sl->io.op == VBD_OP_WRITE || sl->io.op == VBD_OP_WRITE_ZEROES)
                s->bytes_written += sl->len; /* (fleece: zeroes are saved unwritten) */
        if (s->p.fleece) {
                /* the old contents are in the store only now: the held writes may go */
                for (uint64_t b = sl->first; b < sl->first + sl->nblocks; b++) {
                        bk_clear(s->busy, b);
                        if (status >= 0) {
                                bk_set(s->read, b);
                                bk_clear(s->want, b);
                        }
                }
                if (status >= 0) {
                        s->left -= sl->nblocks;
                        release_waiters(s, false);
                }
        }
        sl->busy = false;
        s->slots_busy--;
        pump(s);
}

static void fleece_read_done(struct bk_state *s, struct bk_slot *sl, int status);

/* Write a slot's run (read into its buffer) to the target. */
static void slot_write(struct bk_state *s, struct bk_slot *sl)
{
        sl->io = (struct vbd_io){.op = VBD_OP_WRITE,
                                 .offset = sl->offset,
                                 .len = sl->len,
                                 .iov = &sl->iov,
                                 .iovcnt = 1,
                                 .done = write_done,
                                 .opaque = sl,
                                 .scratch = sl->dst_scratch};
        vbd_image_submit(s->p.target, &sl->io);
}

static void read_done(struct vbd_io *io, int status)
{
        struct bk_slot *sl = io->opaque;
        struct bk_state *s = sl->s;

        if (s->p.fleece) {
                fleece_read_done(s, sl, status);
                return;
        }
        for (uint64_t b = sl->first; b < sl->first + sl->nblocks; b++)
                bk_clear(s->busy, b);
        if (status < 0) {
                fail(s, status, "reading the image at %llu: %s", (unsigned long long)sl->offset,
                     strerror(-status));
                sl->busy = false;
                s->slots_busy--;
                maybe_finish(s);
                return;
        }
        for (uint64_t b = sl->first; b < sl->first + sl->nblocks; b++)
                bk_set(s->read, b);
        s->left -= sl->nblocks;
        s->bytes_read += sl->len;
        release_waiters(s, false);
        if (s->stopping || (s->p.skip_zero && all_zero(sl->buf, sl->len))) {
                sl->busy = false;
                s->slots_busy--;
                pump(s);
                return;
        }
        if ((vbd_image_info(s->p.target)->caps & VBD_CAP_WRITE_ZEROES) &&
            all_zero(sl->buf, sl->len)) {
                /* the target may hold old data: zeroes, without sending them */
                sl->io = (struct vbd_io){.op = VBD_OP_WRITE_ZEROES,
                                         .offset = sl->offset,
                                         .len = sl->len,
                                         .done = write_done,
                                         .opaque = sl,
                                         .scratch = sl->dst_scratch};
                vbd_image_submit(s->p.target, &sl->io);
                return;
        }
        slot_write(s, sl);
}

/* Fleece mode: the old contents of a run are read; store them (the blocks
 * stay busy until the store write completed). */
static void fleece_read_done(struct bk_state *s, struct bk_slot *sl, int status)
{
        if (status < 0)
                fail(s, status, "reading the image at %llu: %s", (unsigned long long)sl->offset,
                     strerror(-status));
        else
                s->bytes_read += sl->len;
        if (status < 0 || s->stopping || all_zero(sl->buf, sl->len)) {
                /* a new store reads as zeroes: zeroes are saved as they are */
                write_done(&sl->io, status < 0 || s->stopping ? -ECANCELED : 0);
                return;
        }
        slot_write(s, sl);
}

/* Under the rate cap, may a run from the cursor start now?  If not, wake
 * pump() when it may. */
static bool rate_ok(struct bk_state *s)
{
        struct bk_image *bi = vbd_container_of(s, struct bk_image, s);
        uint64_t now;

        if (!s->p.rate)
                return true;
        now = vbd_now_ns();
        if (now >= s->next_ns)
                return true;
        if (!ev_is_active(&bi->rate_w)) {
                ev_timer_set(&bi->rate_w, (double)(s->next_ns - now) / 1e9, 0.);
                ev_timer_start(vbd_image_loop(s->img), &bi->rate_w);
        }
        return false;
}

static void charge(struct bk_state *s, uint64_t len)
{
        uint64_t now = vbd_now_ns();

        if (!s->p.rate)
                return;
        if (s->next_ns < now)
                s->next_ns = now;
        s->next_ns += len * 1000000000u / s->p.rate;
}

/* Has the guest sent a request lately?  Then the copy in its own order
 * keeps one small run in flight and leaves the disk's queue to the guest. */
static bool guest_busy(const struct bk_state *s)
{
        return s->guest_ns && vbd_now_ns() - s->guest_ns < BK_BUSY_NS;
}

/* The next run to read: urgent blocks first, then from the cursor. */
static bool pick(struct bk_state *s, uint64_t *ret_first, uint64_t *ret_n)
{
        uint64_t max = run_bytes(s) >> s->shift, b, n;

        while (s->nurgent) {
                b = s->urgent[--s->nurgent];
                if (needs(s, b) && !bk_test(s->busy, b))
                        goto found;
        }
        if (s->p.fleece) /* only what the guest is about to overwrite */
                return false;
        if (!rate_ok(s))
                return false;
        if (guest_busy(s) && BK_BUSY_RUN >> s->shift < max)
                max = BK_BUSY_RUN >> s->shift ? BK_BUSY_RUN >> s->shift : 1;
        /* under a cap, runs of a tenth of a second's worth (one block at least) */
        if (s->p.rate && (s->p.rate / 10) >> s->shift < max)
                max = (s->p.rate / 10) >> s->shift ? (s->p.rate / 10) >> s->shift : 1;
        while (s->cursor < s->nblocks) {
                uint64_t w = s->cursor >> 6;
                uint64_t bits = s->todo[w] & ~s->read[w] & ~s->busy[w];

                bits &= ~UINT64_C(0) << (s->cursor & 63);
                if (!bits) {
                        s->cursor = (w + 1) << 6;
                        continue;
                }
                b = (w << 6) + (uint64_t)__builtin_ctzll(bits);
                if (b >= s->nblocks)
                        break;
                goto found;
        }
        return false;
found:
        for (n = 1; n < max && b + n < s->nblocks && needs(s, b + n) && !bk_test(s->busy, b + n) &&
                    (!s->p.fleece || bk_test(s->want, b + n));)
                n++;
        if (b + n > s->cursor && b <= s->cursor)
                s->cursor = b + n;
        *ret_first = b;
        *ret_n = n;
        return true;
}

static void pump(struct bk_state *s)
{
        while (s->active && !s->stopping &&
               (s->slots_busy < (guest_busy(s) && !s->nurgent ? 1 : s->p.depth))) {
                struct bk_slot *sl = NULL;
                uint64_t first, n;

                for (unsigned i = 0; i < s->p.depth && !sl; i++)
                        if (!s->slot[i].busy)
                                sl = &s->slot[i];
                if (!sl || !pick(s, &first, &n))
                        break;
                for (uint64_t b = first; b < first + n; b++)
                        bk_set(s->busy, b);
                sl->busy = true;
                s->slots_busy++;
                sl->first = first;
                sl->nblocks = n;
                sl->offset = first << s->shift;
                sl->len = n << s->shift;
                if (sl->len > s->size - sl->offset)
                        sl->len = s->size - sl->offset;
                charge(s, sl->len);
                sl->iov = (struct iovec){.iov_base = sl->buf, .iov_len = sl->len};
                sl->io = (struct vbd_io){.op = VBD_OP_READ,
                                         .offset = sl->offset,
                                         .len = sl->len,
                                         .iov = &sl->iov,
                                         .iovcnt = 1,
                                         .done = read_done,
                                         .opaque = sl,
                                         .scratch = sl->src_scratch};
                vbd_image_submit(s->child, &sl->io);
        }
        maybe_finish(s);
}

static void free_engine(struct bk_state *s)
{
        for (unsigned i = 0; i < BK_SLOTS; i++) {
                free(s->slot[i].buf);
                free(s->slot[i].src_scratch);
                free(s->slot[i].dst_scratch);
        }
        memset(s->slot, 0, sizeof(s->slot));
        free(s->todo);
        free(s->read);
        free(s->busy);
        free(s->urgent);
        free(s->want);
        free(s->flush_scratch);
        s->todo = s->read = s->busy = s->urgent = s->want = NULL;
        s->flush_scratch = NULL;
        s->nurgent = s->urgent_cap = 0;
}

static void rate_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        pump(w->data);
}

static void finish_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct bk_state *s = w->data;
        struct bk_params p = s->p;
        int status = s->error;
        char msg[sizeof(s->msg)];

        if (!s->active || s->slots_busy || s->flushing)
                return; /* a completion calls again */
        s->active = false;
        s->end_ns = vbd_now_ns();
        ev_timer_stop(loop, &vbd_container_of(s, struct bk_image, s)->rate_w);
        release_waiters(s, true);
        snprintf(msg, sizeof(msg), "%s", s->msg);
        free_engine(s);
        if (p.fleece)
                vbd_info("snapshot over: %llu bytes saved, %llu writes held (max %llu us)",
                         (unsigned long long)s->bytes_written, (unsigned long long)s->writes_held,
                         (unsigned long long)(s->held_ns_max / 1000));
        else
                vbd_info("backup %s: %llu of %llu bytes read, %llu written, %llu writes held (max "
                         "%llu us)",
                         status ? "failed" : "complete", (unsigned long long)s->bytes_read,
                         (unsigned long long)s->bytes_total, (unsigned long long)s->bytes_written,
                         (unsigned long long)s->writes_held,
                         (unsigned long long)(s->held_ns_max / 1000));
        p.finished(p.opaque, status, status ? msg : NULL);
        if (s->draining && s->guest_inflight == 0) {
                s->draining = false;
                vbd_image_drained(s->img);
        }
}

/* ---- the API ---- */

int bk_prepare(struct vbd_image *img, const struct bk_params *p, struct vbd_err *err)
{
        struct bk_state *s = state_of(img);
        size_t words;

        if (s->active)
                return vbd_err_set(err, -EBUSY, "a %s is running",
                                   s->p.fleece ? "snapshot" : "backup");
        if (!vbd_is_pow2(p->gran) || p->gran < BK_GRAN_MIN || p->gran > BK_GRAN_MAX ||
            p->depth < 1 || p->depth > BK_SLOTS)
                return vbd_err_set(err, -EINVAL, "backup: bad granularity or depth");
        if (vbd_image_info(p->target)->size != s->size)
                return vbd_err_set(err, -EINVAL, "the target has %llu bytes, the image %llu",
                                   (unsigned long long)vbd_image_info(p->target)->size,
                                   (unsigned long long)s->size);
        free_engine(s);
        memset(&s->p, 0, sizeof(s->p));
        s->p = *p;
        s->shift = (unsigned)__builtin_ctz(p->gran);
        s->nblocks = (s->size + p->gran - 1) >> s->shift;
        words = (size_t)((s->nblocks + 63) / 64);
        if (words == 0)
                words = 1;
        s->todo = calloc(words, 8);
        s->read = calloc(words, 8);
        s->busy = calloc(words, 8);
        s->want = p->fleece ? calloc(words, 8) : NULL;
        s->flush_scratch = calloc(1, vbd_image_io_scratch_size(p->target) + 1);
        if (!s->todo || !s->read || !s->busy || !s->flush_scratch || (p->fleece && !s->want))
                goto nomem;
        for (unsigned i = 0; i < p->depth; i++) {
                struct bk_slot *sl = &s->slot[i];

                sl->s = s;
                if (posix_memalign(&sl->buf, 4096, run_bytes(s)))
                        goto nomem;
                sl->src_scratch = calloc(1, vbd_image_io_scratch_size(s->child) + 1);
                sl->dst_scratch = calloc(1, vbd_image_io_scratch_size(p->target) + 1);
                if (!sl->src_scratch || !sl->dst_scratch)
                        goto nomem;
        }
        s->error = 0;
        s->msg[0] = '\0';
        s->stopping = false;
        s->bytes_total = s->bytes_read = s->bytes_written = 0;
        s->writes_held = s->held_ns_max = s->held_ns_sum = 0;
        s->vreads_total = 0;
        s->start_ns = s->end_ns = 0;
        return 0;
nomem:
        free_engine(s);
        return vbd_err_set(err, -ENOMEM, "out of memory for the backup's bitmaps and buffers");
}

void bk_add(struct vbd_image *img, uint64_t offset, uint64_t len)
{
        struct bk_state *s = state_of(img);

        if (!len || offset >= s->size)
                return;
        if (len > s->size - offset)
                len = s->size - offset;
        for (uint64_t b = first_block(s, offset); b <= last_block(s, offset, len); b++)
                bk_set(s->todo, b);
}

void bk_begin(struct vbd_image *img)
{
        struct bk_state *s = state_of(img);

        s->left = 0;
        s->bytes_total = 0;
        for (uint64_t b = 0; b < s->nblocks; b++) {
                if (!bk_test(s->todo, b))
                        continue;
                s->left++;
                s->bytes_total += b + 1 < s->nblocks ? s->p.gran : s->size - (b << s->shift);
        }
        s->cursor = 0;
        s->start_ns = s->next_ns = vbd_now_ns();
        s->guest_ns = 0;
        s->active = true;
        pump(s);
}

void bk_unprepare(struct vbd_image *img)
{
        struct bk_state *s = state_of(img);

        if (!s->active)
                free_engine(s);
}

void bk_stop(struct vbd_image *img, int status, const char *msg)
{
        struct bk_state *s = state_of(img);

        if (!s->active)
                return;
        fail(s, status, "%s", msg);
        maybe_finish(s);
}

bool bk_active(struct vbd_image *img)
{
        return state_of(img)->active;
}

bool bk_view_ok(const struct bk_state *s)
{
        return s->active && s->p.fleece && !s->stopping && s->error == 0;
}

bool bk_saved(const struct bk_state *s, uint64_t b)
{
        return bk_test(s->read, b);
}

void bk_vread_begin(struct bk_state *s, struct bk_vread *vr, uint64_t offset, uint64_t len)
{
        vr->offset = offset;
        vr->len = len;
        vr->next = s->vreads;
        s->vreads = vr;
        s->guest_inflight++; /* a drain waits for it */
        s->vreads_total++;
}

void bk_vread_end(struct bk_state *s, struct bk_vread *vr)
{
        for (struct bk_vread **pp = &s->vreads; *pp; pp = &(*pp)->next)
                if (*pp == vr) {
                        *pp = vr->next;
                        break;
                }
        vr->next = NULL;
        s->guest_inflight--;
        release_waiters(s, false);
        check_drained(s);
}

const struct bk_state *bk_get(struct vbd_image *img)
{
        return state_of(img);
}

/* ---- the filter ---- */

static int bk_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct bk_image *bi = vbd_image_state(img);
        struct bk_state *s = &bi->s;

        (void)o;
        (void)err;
        s->img = img;
        s->child = vbd_image_child(img);
        s->size = vbd_image_info(s->child)->size;
        s->wait_tail = &s->wait_head;
        ev_timer_init(&bi->finish_w, finish_cb, 0., 0.);
        bi->finish_w.data = s;
        ev_timer_init(&bi->rate_w, rate_cb, 0., 0.);
        bi->rate_w.data = s;
        return 0;
}

static int bk_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        *ret_info = *vbd_image_info(state_of(img)->child);
        return 0;
}

static void bk_drain(struct vbd_image *img)
{
        struct bk_state *s = state_of(img);

        if (!s->active && s->guest_inflight == 0) {
                vbd_image_drained(img);
                return;
        }
        s->draining = true;
        if (s->active)
                bk_stop(img, -ESHUTDOWN, "the device is closing");
}

static void bk_close(struct vbd_image *img)
{
        struct bk_image *bi = vbd_image_state(img);

        if (vbd_image_loop(img)) {
                ev_timer_stop(vbd_image_loop(img), &bi->finish_w);
                ev_timer_stop(vbd_image_loop(img), &bi->rate_w);
        }
        free_engine(&bi->s);
}

static const struct vbd_job_type *const bk_jobs[] = {&bk_job, &bk_snapshot_job, NULL};

const struct vbd_driver vbd_driver_backup = {
    .abi = VBD_DRIVER_ABI,
    .flags = VBD_DRIVER_FILTER,
    .name = "backup",
    .description = "point-in-time backups of a running image (copy-before-write)",
    .usage = "backup:CHILDSPEC (stacked by the backup job)",
    .state_size = sizeof(struct bk_image),
    .io_scratch_size = sizeof(struct bk_io),
    .open = bk_open,
    .get_info = bk_get_info,
    .submit = bk_submit,
    .drain = bk_drain,
    .close = bk_close,
    .jobs = bk_jobs,
};
