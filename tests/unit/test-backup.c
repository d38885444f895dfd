/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The backup engine in fleece mode (drivers/backup, a snapshot's), over
 * gated images: every io the engine sends to the image or the store waits
 * until the test lets it complete, so the orderings a snapshot depends on
 * are checked one by one rather than hoped for under load:
 *   - a held guest write goes down only once its blocks' old contents are
 *     in the store (the store write completed), not when they were read;
 *   - a read of the view in flight over a block keeps a guest write to it
 *     held, even once the block is saved;
 *   - a block that read as zeroes is saved without a store write;
 *   - a write to a saved block, or a read, passes at once;
 *   - a store write that fails (a full store) releases the guest at once,
 *     ends the engine with the error, and the view may not be read.
 */
#include <errno.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>

#include "backup.h"
#include "image.h"
#include "unit-test.h"
#include "vbd/driver.h"
#include "vbd/macro.h"

#define DISK (1u << 20)
#define GRAN 65536u

/* ---- "gate": a memory disk whose ios wait for the test ---- */

struct gate_io {
        struct vbd_io *io;
        struct gate_io *next;
};

struct gate {
        unsigned char *mem;
        struct gate_io *head;
        unsigned queued;
};

static int gate_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct gate *g = vbd_image_state(img);

        (void)o;
        (void)err;
        g->mem = calloc(1, DISK);
        return g->mem ? 0 : -ENOMEM;
}

static int gate_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        (void)img;
        *ret = (struct vbd_info){.size = DISK,
                                 .caps = VBD_CAP_WRITE | VBD_CAP_FLUSH,
                                 .logical_block = 512,
                                 .physical_block = 512,
                                 .mem_align = 1};
        return 0;
}

static void gate_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct gate *g = vbd_image_state(img);
        struct gate_io *gi = io->scratch, **pp = &g->head;

        gi->io = io;
        gi->next = NULL;
        while (*pp)
                pp = &(*pp)->next;
        *pp = gi;
        g->queued++;
}

static void gate_close(struct vbd_image *img)
{
        free(((struct gate *)vbd_image_state(img))->mem);
}

static const struct vbd_driver gate_driver = {
    .abi = VBD_DRIVER_ABI,
    .name = "gate",
    .description = "test: a memory disk whose ios wait",
    .usage = "gate:X",
    .state_size = sizeof(struct gate),
    .io_scratch_size = sizeof(struct gate_io),
    .open = gate_open,
    .get_info = gate_get_info,
    .submit = gate_submit,
    .close = gate_close,
};

/* The first queued io of op on g (NULL if none). */
static struct vbd_io *gate_find(struct gate *g, enum vbd_op op)
{
        for (struct gate_io *gi = g->head; gi; gi = gi->next)
                if (gi->io->op == op)
                        return gi->io;
        return NULL;
}

/* Complete the first queued io of op with status (doing it when 0); 1 if there was one. */
static int gate_release(struct gate *g, enum vbd_op op, int status)
{
        for (struct gate_io **pp = &g->head; *pp; pp = &(*pp)->next) {
                struct gate_io *gi = *pp;
                struct vbd_io *io = gi->io;
                uint64_t pos = io->offset;

                if (io->op != op)
                        continue;
                *pp = gi->next;
                g->queued--;
                for (unsigned i = 0; status == 0 && i < io->iovcnt; i++) {
                        if (op == VBD_OP_READ)
                                memcpy(io->iov[i].iov_base, g->mem + pos, io->iov[i].iov_len);
                        else if (op == VBD_OP_WRITE)
                                memcpy(g->mem + pos, io->iov[i].iov_base, io->iov[i].iov_len);
                        pos += io->iov[i].iov_len;
                }
                vbd_io_complete(io, status);
                return 1;
        }
        return 0;
}

/* ---- the setup ---- */

static const struct vbd_driver *const test_drivers[] = {&gate_driver, NULL};

struct rig {
        struct ev_loop *loop;
        struct vbd_image *top, *store;
        struct gate *disk, *sg;
        int finished, status;
};

static void finished(void *opaque, int status, const char *msg)
{
        struct rig *r = opaque;

        (void)msg;
        r->finished++;
        r->status = status;
}

static void rig_open(struct rig *r, struct ev_loop *loop)
{
        struct vbd_err err = {0};
        struct bk_params p = {
            .gran = GRAN, .depth = BK_SLOTS, .fleece = true, .finished = finished, .opaque = r};

        memset(r, 0, sizeof(*r));
        r->loop = loop;
        r->top = vbd_image_open_drivers(test_drivers, "backup:gate:disk", false, NULL, loop, &err);
        r->store = vbd_image_open_drivers(test_drivers, "gate:store", false, NULL, loop, &err);
        REQUIRE(r->top && r->store);
        r->disk = vbd_image_state(vbd_image_child(r->top));
        r->sg = vbd_image_state(r->store);
        /* old contents: block b holds bytes b + 1, except block 3 (zeroes) */
        for (unsigned b = 0; b < DISK / GRAN; b++)
                memset(r->disk->mem + b * GRAN, b == 3 ? 0 : (int)b + 1, GRAN);
        p.target = r->store;
        REQUIRE(bk_prepare(r->top, &p, &err) == 0);
        bk_add(r->top, 0, DISK);
        bk_begin(r->top);
}

static void rig_close(struct rig *r)
{
        if (bk_active(r->top)) {
                bk_stop(r->top, -ECANCELED, "test over");
                ev_run(r->loop, EVRUN_NOWAIT);
        }
        CHECK_EQ(r->finished, 1);
        vbd_image_drain_close(r->top);
        vbd_image_drain_close(r->store);
}

/* A guest io on the top image. */
struct gio {
        struct vbd_io io;
        struct iovec iov;
        unsigned char *buf;
        void *scratch;
        int done, status;
};

static void gio_done(struct vbd_io *io, int status)
{
        struct gio *g = io->opaque;

        g->done++;
        g->status = status;
}

static void gio_submit(struct rig *r, struct gio *g, enum vbd_op op, uint64_t off, uint64_t len,
                       int fill)
{
        memset(g, 0, sizeof(*g));
        g->buf = malloc(len);
        g->scratch = calloc(1, vbd_image_io_scratch_size(r->top) + 1);
        REQUIRE(g->buf && g->scratch);
        memset(g->buf, fill, len);
        g->iov = (struct iovec){.iov_base = g->buf, .iov_len = len};
        g->io = (struct vbd_io){.op = op,
                                .offset = off,
                                .len = len,
                                .iov = &g->iov,
                                .iovcnt = 1,
                                .done = gio_done,
                                .opaque = g,
                                .scratch = g->scratch};
        vbd_image_submit(r->top, &g->io);
}

static void gio_free(struct gio *g)
{
        free(g->buf);
        free(g->scratch);
}

static bool store_holds(struct rig *r, unsigned b, int val)
{
        for (unsigned i = 0; i < GRAN; i++)
                if (r->sg->mem[b * GRAN + i] != val)
                        return false;
        return true;
}

/* A held write goes down once the store write completed, not at the read. */
static void test_saved_before_write(struct ev_loop *loop)
{
        struct rig r;
        struct gio w, w2, w3, w4, rd;
        const struct bk_state *s;

        rig_open(&r, loop);
        s = bk_get(r.top);
        gio_submit(&r, &w, VBD_OP_WRITE, 0, 4096, 0xaa);
        CHECK(!gate_find(r.disk, VBD_OP_WRITE)); /* held */
        CHECK(gate_find(r.disk, VBD_OP_READ));   /* its block is being read */
        CHECK_EQ(s->writes_held, 1u);
        CHECK(gate_release(r.disk, VBD_OP_READ, 0));
        CHECK(gate_find(r.sg, VBD_OP_WRITE));    /* being saved */
        CHECK(!gate_find(r.disk, VBD_OP_WRITE)); /* still held: not in the store yet */
        CHECK(!bk_saved(s, 0));
        CHECK(gate_release(r.sg, VBD_OP_WRITE, 0));
        CHECK(bk_saved(s, 0));
        CHECK(store_holds(&r, 0, 1));
        CHECK(gate_find(r.disk, VBD_OP_WRITE)); /* let down */
        CHECK(gate_release(r.disk, VBD_OP_WRITE, 0));
        CHECK_EQ(w.done, 1);
        CHECK_EQ(w.status, 0);
        CHECK_EQ(r.disk->mem[0], 0xaa);

        /* a saved block: no wait; a read never waits */
        gio_submit(&r, &w2, VBD_OP_WRITE, 8192, 4096, 0xbb);
        CHECK(gate_find(r.disk, VBD_OP_WRITE));
        CHECK(gate_release(r.disk, VBD_OP_WRITE, 0));
        CHECK_EQ(w2.done, 1);
        gio_submit(&r, &rd, VBD_OP_READ, GRAN * 5, 4096, 0);
        CHECK(gate_release(r.disk, VBD_OP_READ, 0));
        CHECK_EQ(rd.done, 1);
        CHECK(!bk_saved(s, 5)); /* a read saves nothing */
        CHECK_EQ(r.sg->queued, 0u);

        /* a block that reads as zeroes: saved without a store write */
        gio_submit(&r, &w3, VBD_OP_WRITE, GRAN * 3, 512, 0xcc);
        CHECK(gate_release(r.disk, VBD_OP_READ, 0));
        CHECK(!gate_find(r.sg, VBD_OP_WRITE));
        CHECK(bk_saved(s, 3));
        CHECK(gate_release(r.disk, VBD_OP_WRITE, 0));
        CHECK_EQ(w3.done, 1);

        /* only the blocks a write touches are saved: one write over blocks 6-7 */
        gio_submit(&r, &w4, VBD_OP_WRITE, GRAN * 6 + 512, GRAN, 0xdd);
        while (gate_release(r.disk, VBD_OP_READ, 0))
                ;
        while (gate_release(r.sg, VBD_OP_WRITE, 0))
                ;
        CHECK(bk_saved(s, 6) && bk_saved(s, 7) && !bk_saved(s, 8));
        CHECK(store_holds(&r, 6, 7) && store_holds(&r, 7, 8));
        CHECK(gate_release(r.disk, VBD_OP_WRITE, 0));
        CHECK_EQ(w4.done, 1);
        CHECK_EQ(s->bytes_written, 3u * GRAN);
        gio_free(&w);
        gio_free(&w2);
        gio_free(&w3);
        gio_free(&w4);
        gio_free(&rd);
        rig_close(&r);
}

/* A read of the view in flight keeps an overlapping write held, saved or not. */
static void test_view_read_holds(struct ev_loop *loop)
{
        struct rig r;
        struct gio w;
        struct bk_vread vr;
        struct bk_state *s;

        rig_open(&r, loop);
        s = (struct bk_state *)bk_get(r.top);
        bk_vread_begin(s, &vr, GRAN, GRAN); /* the view reads block 1 from the image */
        gio_submit(&r, &w, VBD_OP_WRITE, GRAN + 4096, 4096, 0x55);
        CHECK(gate_release(r.disk, VBD_OP_READ, 0));
        CHECK(gate_release(r.sg, VBD_OP_WRITE, 0));
        CHECK(bk_saved(s, 1));
        CHECK(!gate_find(r.disk, VBD_OP_WRITE)); /* saved, but the view is still reading */
        CHECK_EQ(w.done, 0);
        bk_vread_end(s, &vr);
        CHECK(gate_release(r.disk, VBD_OP_WRITE, 0));
        CHECK_EQ(w.done, 1);
        CHECK_EQ(w.status, 0);
        CHECK(bk_view_ok(s));
        gio_free(&w);
        rig_close(&r);
        CHECK_EQ(r.status, -ECANCELED);
}

/* The store fails: the guest goes on at once, the engine ends with the error. */
static void test_store_full(struct ev_loop *loop)
{
        struct rig r;
        struct gio w, w2;
        const struct bk_state *s;

        rig_open(&r, loop);
        s = bk_get(r.top);
        gio_submit(&r, &w, VBD_OP_WRITE, GRAN * 2, 4096, 0x77);
        gio_submit(&r, &w2, VBD_OP_WRITE, GRAN * 9, 4096, 0x78);
        while (gate_release(r.disk, VBD_OP_READ, 0))
                ;
        CHECK(gate_release(r.sg, VBD_OP_WRITE, -ENOSPC));
        CHECK(!bk_view_ok(s));
        CHECK(gate_find(r.disk, VBD_OP_WRITE)); /* both released */
        while (gate_release(r.disk, VBD_OP_WRITE, 0))
                ;
        CHECK_EQ(w.done, 1);
        CHECK_EQ(w2.done, 1);
        CHECK_EQ(w.status, 0);
        CHECK_EQ(w2.status, 0);
        while (gate_release(r.sg, VBD_OP_WRITE, 0)) /* the other save, in flight */
                ;
        ev_run(loop, EVRUN_NOWAIT);
        CHECK_EQ(r.finished, 1);
        CHECK_EQ(r.status, -ENOSPC);
        CHECK(!bk_active(r.top));
        gio_free(&w);
        gio_free(&w2);
        rig_close(&r);
}

int main(void)
{
        struct ev_loop *loop = ev_default_loop(0);

        test_saved_before_write(loop);
        test_view_read_holds(loop);
        test_store_full(loop);
        return check_result("backup");
}
