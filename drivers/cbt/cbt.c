/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cbt: changed-block tracking, a filter over any image.
 *
 *   cbt:CHILDSPEC[,cbt.map=PATH][,cbt.granularity=SIZE]
 *
 * e.g. "cbt:raw:/srv/disk.img" (the map is /srv/disk.img.cbt) or
 * "cbt:qcow2:/srv/a.qcow2,cbt.granularity=256K".  Every write, discard and
 * write-zeroes sets the bits of the blocks it touches in the active bitmap;
 * checkpoints (the "checkpoint" job) freeze it.  The bitmap "changed since
 * checkpoint NAME" is offered to the NBD export as qemu:dirty-bitmap:NAME.
 *
 * Crash survival: a write that touches a block whose bit is not yet on disk
 * is held until the page of the map holding that bit is written and
 * fdatasync'ed; only then does it go to the image.  Marks waiting at the same
 * time share one commit (group commit), and a block pays once per checkpoint
 * interval, so after a kill or a power cut every block that may have changed
 * is marked, and the next incremental backup is still correct.  Writes to
 * blocks already marked go straight down.
 *
 * When the map cannot be written, the tracker marks it lost in its header
 * (the next backup is then full, and says why) and lets writes through; if
 * even that fails it removes the map; if that fails too, writes fail with EIO
 * rather than go untracked.
 */
#define VBD_LOG_TOPIC "drv.cbt"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbt.h"
#include "vbd/job.h"
#include "vbd/log.h"
#include "vbd/macro.h"

enum { OPT_MAP, OPT_GRANULARITY };
static const struct vbd_opt_desc cbt_opts[] = {
    [OPT_MAP] =
        VBD_OPT_STRING_DEF("map", NULL, "the change map file (default: the image's path + .cbt)"),
    [OPT_GRANULARITY] = {.name = "granularity",
                         .type = VBD_OPT_SIZE,
                         .flags = VBD_OPT_POW2,
                         .min = 4096,
                         .max = 64u << 20,
                         .def = "64K",
                         .help = "bytes per tracked block, a power of two"},
};

/* ---- helpers ---- */

/* The path of the file at the bottom of a spec: "qcow2:/a/b.qcow2,x=y" gives
 * "/a/b.qcow2"; false when the bottom is not a path ("null:1G"). */
static bool spec_path(const char *spec, char *buf, size_t size)
{
        const char *p = spec;
        size_t n;

        for (;;) {
                size_t k = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_-");

                if (k == 0 || p[k] != ':')
                        break;
                p += k + 1;
        }
        n = strcspn(p, ",");
        if (p[0] != '/' || n >= size)
                return false;
        memcpy(buf, p, n);
        buf[n] = '\0';
        return true;
}

static uint64_t block_of(const struct cbt_state *s, uint64_t off)
{
        return off >> s->gran_shift;
}

static size_t page_of(uint64_t block)
{
        return (size_t)(block / (CBT_PAGE * 8));
}

/* ---- open, info, close ---- */

static int cbt_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct cbt_state *s = vbd_image_state(img);
        const struct vbd_info *ci;
        char path[CBT_PATH_MAX];
        int r;

        s->img = img;
        s->child = vbd_image_child(img);
        s->fd = -1;
        s->readonly = o->readonly;
        s->aio = vbd_image_aio(img);
        s->wait_tail = &s->wait_head;
        ci = vbd_image_info(s->child);
        s->size = ci->size;
        s->gran = (uint32_t)o->values[OPT_GRANULARITY].u;
        if (s->gran < ci->logical_block)
                return vbd_err_set(err, -EINVAL, "cbt.granularity %u is below the image's block %u",
                                   s->gran, ci->logical_block);
        s->gran_shift = (unsigned)__builtin_ctz(s->gran);
        s->nblocks = (s->size + s->gran - 1) >> s->gran_shift;
        s->bitmap_bytes = ((s->nblocks + 7) / 8 + CBT_PAGE - 1) / CBT_PAGE * CBT_PAGE;
        if (s->bitmap_bytes == 0)
                s->bitmap_bytes = CBT_PAGE;
        s->npages = (size_t)(s->bitmap_bytes / CBT_PAGE);
        if (!spec_path(vbd_image_name(s->child), path, sizeof(path))) {
                if (!o->values[OPT_MAP].set)
                        return vbd_err_set(err, -EINVAL,
                                           "cbt: the image is not a file: give cbt.map=PATH");
                snprintf(path, sizeof(path), "%.*s", CBT_PATH_MAX - 1, vbd_image_name(s->child));
        }
        snprintf(s->image_path, sizeof(s->image_path), "%s", path);
        if (o->values[OPT_MAP].set)
                r = snprintf(s->map_path, sizeof(s->map_path), "%s", o->values[OPT_MAP].s);
        else
                r = snprintf(s->map_path, sizeof(s->map_path), "%s.cbt", path);
        if (r <= 0 || (size_t)r >= sizeof(s->map_path) || r >= CBT_PATH_MAX)
                return vbd_err_set(err, -ENAMETOOLONG, "cbt: the map's path is too long");
        r = cbt_map_open(s, err);
        if (r == 0)
                r = cbt_stored_import(s, err);
        if (r < 0) {
                cbt_map_close(s);
                return r;
        }
        cbt_stored_publish(s, true);
        return 0;
}

static int cbt_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct cbt_state *s = vbd_image_state(img);

        *ret_info = *vbd_image_info(s->child);
        return 0;
}

static void cbt_close(struct vbd_image *img)
{
        struct cbt_state *s = vbd_image_state(img);

        cbt_stored_publish(s, false);
        cbt_map_close(s);
}

/* ---- passing ios down ---- */

static void child_done(struct vbd_io *child_io, int status)
{
        struct cbt_io *p = vbd_container_of(child_io, struct cbt_io, child_io);
        struct cbt_state *s = vbd_image_state(p->img);
        struct vbd_image *img = p->img;

        s->inflight--;
        vbd_io_complete(p->io, status);
        if (s->draining && s->inflight == 0 && !s->committing) {
                s->draining = false;
                vbd_image_drained(img);
        }
}

static void pass_down(struct vbd_image *img, struct cbt_io *p)
{
        struct cbt_state *s = vbd_image_state(img);

        p->child_io = *p->io;
        p->child_io.done = child_done;
        p->child_io.opaque = p;
        p->child_io.scratch = vbd_image_child_scratch(img, p->io->scratch);
        s->inflight++;
        vbd_image_submit(s->child, &p->child_io);
}

/* ---- group commit ---- */

static void commit_start(struct cbt_state *s);

/* Are all the map pages covering io's blocks on disk? */
static bool io_durable(const struct cbt_state *s, const struct vbd_io *io)
{
        uint64_t first = block_of(s, io->offset), last = block_of(s, io->offset + io->len - 1);

        for (size_t pg = page_of(first); pg <= page_of(last); pg++)
                if (s->page_state[pg] != CBT_PAGE_CLEAN)
                        return false;
        return true;
}

/* Release the held ios that may go down now; fail them all with fail < 0. */
static void release_waiters(struct cbt_state *s, int fail)
{
        struct cbt_io *ready = NULL, **rt = &ready, **pp = &s->wait_head;

        while (*pp) {
                struct cbt_io *p = *pp;

                if (fail < 0 || s->lost || io_durable(s, p->io)) {
                        *pp = p->next_wait;
                        p->next_wait = NULL;
                        *rt = p;
                        rt = &p->next_wait;
                } else {
                        pp = &p->next_wait;
                }
        }
        s->wait_tail = pp;
        /* Outside the list walk: a child may complete inline, and a completion
         * may submit more. */
        while (ready) {
                struct cbt_io *p = ready;

                ready = p->next_wait;
                if (fail < 0) {
                        s->inflight--;
                        vbd_io_complete(p->io, fail);
                } else {
                        s->inflight--; /* pass_down counts it again */
                        pass_down(p->img, p);
                }
        }
}

/* The map could not be written: stop tracking safely (see the top). */
static void tracking_lost(struct cbt_state *s, int err)
{
        char why[128];

        snprintf(why, sizeof(why), "writing the change map failed: %s", strerror(-err));
        vbd_err("%s: %s", s->map_path, why);
        s->lost = true;
        if (cbt_map_mark_lost(s, why) == 0) {
                vbd_warn("%s: tracking stopped; the next backup is full", s->map_path);
                release_waiters(s, 0);
                return;
        }
        if (unlink(s->map_path) == 0) {
                vbd_warn("%s: removed; the next backup is full", s->map_path);
                release_waiters(s, 0);
                return;
        }
        vbd_err("%s: cannot mark the map lost nor remove it: failing writes", s->map_path);
        s->lost = false; /* not safe to let writes through */
        release_waiters(s, -EIO);
}

static void commit_finish(struct cbt_state *s)
{
        int err = s->commit_err;

        s->committing = false;
        if (err < 0) {
                /* The pages are as dirty as before: a later write tries again. */
                for (unsigned i = 0; i < s->nruns; i++)
                        for (uint32_t k = 0; k < s->run_len[i]; k++) {
                                s->page_state[s->run_page[i] + k] = CBT_PAGE_DIRTY;
                                s->dirty[s->ndirty++] = s->run_page[i] + k;
                        }
                tracking_lost(s, err);
                if (!s->lost) {
                        if (s->draining && s->inflight == 0) {
                                s->draining = false;
                                vbd_image_drained(s->img);
                        }
                        return;
                }
        } else {
                s->commits++;
                for (unsigned i = 0; i < s->nruns; i++) {
                        for (uint32_t k = 0; k < s->run_len[i]; k++) {
                                uint32_t pg = s->run_page[i] + k;

                                if (s->page_state[pg] == CBT_PAGE_REDIRTIED) {
                                        s->page_state[pg] = CBT_PAGE_DIRTY;
                                        s->dirty[s->ndirty++] = pg;
                                } else {
                                        s->page_state[pg] = CBT_PAGE_CLEAN;
                                }
                        }
                }
                release_waiters(s, 0);
        }
        if (s->ndirty && !s->lost)
                commit_start(s);
        else if (s->draining && s->inflight == 0 && !s->committing) {
                s->draining = false;
                vbd_image_drained(s->img);
        }
}

static void sync_done(struct vbd_aio_op *op, ssize_t res)
{
        struct cbt_state *s = op->opaque;

        if (res < 0 && s->commit_err == 0)
                s->commit_err = (int)res;
        commit_finish(s);
}

static void write_done(struct vbd_aio_op *op, ssize_t res)
{
        struct cbt_state *s = op->opaque;

        if (res < 0 && s->commit_err == 0)
                s->commit_err = (int)res;
        if (--s->commit_ops)
                return;
        if (s->commit_err < 0) {
                commit_finish(s);
                return;
        }
        s->ops[CBT_BATCH_RUNS].done = sync_done;
        s->ops[CBT_BATCH_RUNS].opaque = s;
        vbd_aio_fdatasync(s->aio, &s->ops[CBT_BATCH_RUNS], s->fd);
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

        return x < y ? -1 : x > y;
}

/* Write the dirty pages (up to CBT_BATCH_RUNS runs of them) and fdatasync. */
static void commit_start(struct cbt_state *s)
{
        size_t taken = 0;

        qsort(s->dirty, s->ndirty, sizeof(*s->dirty), cmp_u32);
        s->nruns = 0;
        while (taken < s->ndirty && s->nruns < CBT_BATCH_RUNS) {
                uint32_t first = s->dirty[taken], len = 1;

                while (taken + len < s->ndirty && s->dirty[taken + len] == first + len)
                        len++;
                for (uint32_t k = 0; k < len; k++)
                        s->page_state[first + k] = CBT_PAGE_WRITING;
                s->run_page[s->nruns] = first;
                s->run_len[s->nruns] = len;
                s->iov[s->nruns] = (struct iovec){
                    .iov_base = (uint8_t *)s->active + (size_t)first * CBT_PAGE,
                    .iov_len = (size_t)len * CBT_PAGE,
                };
                s->nruns++;
                taken += len;
        }
        memmove(s->dirty, s->dirty + taken, (s->ndirty - taken) * sizeof(*s->dirty));
        s->ndirty -= taken;
        s->committing = true;
        s->commit_err = 0;
        if (!s->aio) { /* no AIO engine (tests): synchronously */
                for (unsigned i = 0; i < s->nruns && s->commit_err == 0; i++) {
                        uint64_t off =
                            cbt_map_active_offset(s) + (uint64_t)s->run_page[i] * CBT_PAGE;

                        if (pwrite(s->fd, s->iov[i].iov_base, s->iov[i].iov_len, (off_t)off) !=
                            (ssize_t)s->iov[i].iov_len)
                                s->commit_err = errno ? -errno : -EIO;
                }
                if (s->commit_err == 0 && fdatasync(s->fd) < 0)
                        s->commit_err = -errno;
                commit_finish(s);
                return;
        }
        s->commit_ops = s->nruns;
        for (unsigned i = 0; i < s->nruns; i++) {
                s->ops[i].done = write_done;
                s->ops[i].opaque = s;
                vbd_aio_pwritev(s->aio, &s->ops[i], s->fd, &s->iov[i], 1,
                                cbt_map_active_offset(s) + (uint64_t)s->run_page[i] * CBT_PAGE);
        }
}

/* Set the bits of [offset, offset + len); true when they all were set and on disk. */
static bool mark(struct cbt_state *s, uint64_t offset, uint64_t len)
{
        uint64_t first = block_of(s, offset), last = block_of(s, offset + len - 1);
        bool durable = true;

        for (uint64_t b = first; b <= last; b++) {
                size_t pg = page_of(b);

                if (cbt_test(s->active, b)) {
                        if (s->page_state[pg] != CBT_PAGE_CLEAN)
                                durable = false;
                        continue;
                }
                cbt_set(s->active, b);
                s->marks++;
                durable = false;
                switch (s->page_state[pg]) {
                case CBT_PAGE_CLEAN:
                        s->page_state[pg] = CBT_PAGE_DIRTY;
                        s->dirty[s->ndirty++] = (uint32_t)pg;
                        break;
                case CBT_PAGE_WRITING:
                        s->page_state[pg] = CBT_PAGE_REDIRTIED;
                        break;
                default:
                        break;
                }
        }
        return durable;
}

static void cbt_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct cbt_state *s = vbd_image_state(img);
        struct cbt_io *p = io->scratch;
        bool changes =
            io->op == VBD_OP_WRITE || io->op == VBD_OP_DISCARD || io->op == VBD_OP_WRITE_ZEROES;

        p->io = io;
        p->img = img;
        p->next_wait = NULL;
        if (!changes || s->lost || s->fd < 0 || io->len == 0 || mark(s, io->offset, io->len)) {
                pass_down(img, p);
                return;
        }
        /* Hold it until its marks are durable. */
        s->waited_writes++;
        s->inflight++;
        *s->wait_tail = p;
        s->wait_tail = &p->next_wait;
        if (!s->committing)
                commit_start(s);
}

/* ---- bitmaps ---- */

bool cbt_changed_since(const struct cbt_state *s, unsigned k, uint64_t b)
{
        if (s->lost)
                return true;
        if (cbt_test(s->active, b))
                return true;
        for (unsigned i = k; i + 1 < s->ncp; i++)
                if (cbt_test(s->cp[i].delta, b))
                        return true;
        return false;
}

int cbt_load_since(struct cbt_state *s, unsigned k)
{
        for (unsigned i = k; i + 1 < s->ncp; i++) {
                int r = cbt_load_delta(s, i);

                if (r < 0)
                        return r;
        }
        return 0;
}

uint64_t cbt_since_word(const struct cbt_state *s, unsigned k, size_t w)
{
        uint64_t v;

        if (s->lost)
                return ~UINT64_C(0);
        v = s->active[w];
        for (unsigned i = k; i + 1 < s->ncp; i++)
                v |= s->cp[i].delta[w];
        return v;
}

uint64_t cbt_count_since(struct cbt_state *s, unsigned k)
{
        uint64_t n = 0;

        if (s->lost || cbt_load_since(s, k) < 0)
                return s->nblocks;
        for (size_t w = 0; w < s->bitmap_bytes / 8; w++)
                n += (uint64_t)__builtin_popcountll(cbt_since_word(s, k, w));
        return n;
}

static const char *cbt_bitmap_name(struct vbd_image *img, unsigned i)
{
        struct cbt_state *s = vbd_image_state(img);

        return i < s->ncp ? s->cp[i].name : NULL;
}

static int cbt_bitmap_status(struct vbd_image *img, const char *name, uint64_t offset, uint64_t len,
                             struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct cbt_state *s = vbd_image_state(img);
        int k = cbt_find(s, name), r;
        uint64_t end = offset + len, pos = offset;
        unsigned n = 0;

        if (k < 0)
                return -ENOENT;
        if ((r = cbt_load_since(s, (unsigned)k)) < 0)
                return r;
        while (pos < end && n < max) {
                uint64_t b = block_of(s, pos);
                bool dirty = cbt_changed_since(s, (unsigned)k, b);
                uint64_t stop = (b + 1) << s->gran_shift;

                /* extend over the following blocks with the same state */
                while (stop < end &&
                       cbt_changed_since(s, (unsigned)k, stop >> s->gran_shift) == dirty)
                        stop += s->gran;
                if (stop > end)
                        stop = end;
                ret[n++] =
                    (struct vbd_extent){.len = stop - pos, .flags = dirty ? VBD_EXTENT_DIRTY : 0};
                pos = stop;
        }
        *ret_n = n;
        return 0;
}

static int cbt_bitmap_add(struct vbd_image *img, const char *name, struct vbd_err *err)
{
        struct cbt_state *s = vbd_image_state(img);

        if (!cbt_name_ok(name))
                return vbd_err_set(err, -EINVAL, "bad checkpoint name \"%s\"", name);
        if (cbt_find(s, name) >= 0)
                return vbd_err_set(err, -EEXIST, "checkpoint %s exists", name);
        return cbt_checkpoint_create(s, name, err);
}

static int cbt_bitmap_remove(struct vbd_image *img, const char *name, struct vbd_err *err)
{
        struct cbt_state *s = vbd_image_state(img);

        if (cbt_find(s, name) < 0)
                return -ENOENT;
        return cbt_checkpoint_remove(s, name, err);
}

static int cbt_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct cbt_state *s = vbd_image_state(img);

        return vbd_image_block_status(s->child, offset, len, ret, max, ret_n);
}

static void cbt_drain(struct vbd_image *img)
{
        struct cbt_state *s = vbd_image_state(img);

        if (s->inflight == 0 && !s->committing) {
                vbd_image_drained(img);
                return;
        }
        s->draining = true;
}

static const struct vbd_job_type *const cbt_jobs[] = {&cbt_checkpoint_job, NULL};

const struct vbd_driver vbd_driver_cbt = {
    .abi = VBD_DRIVER_ABI,
    .flags = VBD_DRIVER_FILTER,
    .name = "cbt",
    .description = "changed-block tracking: a crash-safe dirty bitmap with checkpoints",
    .usage = "cbt:CHILDSPEC[,cbt.map=PATH][,cbt.granularity=SIZE]",
    .opts = cbt_opts,
    .nopts = VBD_ARRAY_SIZE(cbt_opts),
    .state_size = sizeof(struct cbt_state),
    .io_scratch_size = sizeof(struct cbt_io),
    .open = cbt_open,
    .get_info = cbt_get_info,
    .submit = cbt_submit,
    .block_status = cbt_block_status,
    .drain = cbt_drain,
    .close = cbt_close,
    .jobs = cbt_jobs,
    .bitmap_name = cbt_bitmap_name,
    .bitmap_status = cbt_bitmap_status,
    .bitmap_add = cbt_bitmap_add,
    .bitmap_remove = cbt_bitmap_remove,
};
