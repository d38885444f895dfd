/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The "snapshot" job (image fleecing): control verbs snapshot-start,
 * snapshot-status, snapshot-cancel.
 *
 *   start   create the store (a new sparse raw file of the device's size),
 *           open it and unlink it at once (nothing stays behind, even after
 *           a crash), pause the device, stack the backup filter if it has
 *           none, run its engine in fleece mode, open the view and export it
 *           read-only on the job's own endpoint, resume: the export is the
 *           image as it was in that pause
 *   status  state, endpoint, bytes saved, writes held and for how long,
 *           clients, error
 *
 * With scratch=on the export also takes writes, into a second unlinked file
 * (STORE.scratch) that goes away with the job: a thrown-away overlay, so that
 * a file system the guest has mounted can replay its journal there and be
 * mounted (read-only) by dom0.  Its unit is 512 bytes, the smallest write,
 * so no write needs a read first; the map of units written is kept in
 * pieces of 1 GiB's worth, made on the first write there.
 *   cancel  stop the export (its clients are dropped) and the engine; the
 *           store goes away with its last descriptor; the job ends CANCELLED
 *
 * The guest is never disturbed beyond the wait for one block's copy: a
 * store that fills up (or fails) fails the job, the guest's held writes go
 * down at once, and the view's reads fail from then on rather than return
 * data newer than the snapshot.
 *
 * The view ("backup-view", not in the registry: only this job opens it)
 * reads a block from the store once its old contents are saved there, and
 * from the image below the filter before; every read of the view is known
 * to the engine for its whole life (bk_vread_*), so a guest write over it
 * waits, and a block saved meanwhile is read from the image unchanged.
 */
#define VBD_LOG_TOPIC "drv.backup"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backup.h"
#include "vbd/err.h"
#include "vbd/job.h"
#include "vbd/log.h"
#include "vbd/macro.h"
#include "vbd/time.h"

/* ---- the view ---- */

#define VIEW_WSHIFT 9  /* the scratch overlay's unit: 512 bytes */
#define VIEW_CSHIFT 30 /* one piece of its map per GiB */
#define VIEW_CBITS  (1u << (VIEW_CSHIFT - VIEW_WSHIFT))

struct view_state {
        struct bk_state *s;
        struct vbd_image *store, *image; /* the image: the filter's child */
        struct vbd_image *scratch;       /* the overlay, or NULL: read-only */
        uint64_t **written;              /* its units written, in pieces (NULL: none) */
        size_t npieces;
        size_t sub_scratch;
};

struct view_io {
        struct vbd_io *io;
        struct view_state *v;
        struct bk_vread vr;
        struct vbd_io sub;
        uint64_t pos; /* bytes of io done */
        struct iovec *iov;
        unsigned iovcnt;
        void *sub_scratch;
};

/* The view's open() takes its engine from here: set just before the job's
 * synchronous vbd_device_open_driver() on the loop thread, cleared after. */
static struct view_state view_attach;

static int view_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct view_state *v = vbd_image_state(img);

        (void)o;
        if (!view_attach.s)
                return vbd_err_set(err, -EINVAL, "backup-view: only the snapshot job opens it");
        *v = view_attach;
        v->written = NULL;
        v->sub_scratch = vbd_image_io_scratch_size(v->store);
        if (vbd_image_io_scratch_size(v->image) > v->sub_scratch)
                v->sub_scratch = vbd_image_io_scratch_size(v->image);
        if (v->scratch) {
                v->npieces = (size_t)((vbd_image_info(v->image)->size >> VIEW_CSHIFT) + 1);
                if (vbd_image_io_scratch_size(v->scratch) > v->sub_scratch)
                        v->sub_scratch = vbd_image_io_scratch_size(v->scratch);
                v->written = calloc(v->npieces, sizeof(*v->written));
                if (!v->written)
                        return vbd_err_set(err, -ENOMEM, "out of memory for the overlay's map");
        }
        return 0;
}

static bool view_written(const struct view_state *v, uint64_t off)
{
        const uint64_t *piece;

        if (!v->written || !(piece = v->written[off >> VIEW_CSHIFT]))
                return false;
        return bk_test(piece, (off & ((UINT64_C(1) << VIEW_CSHIFT) - 1)) >> VIEW_WSHIFT);
}

/* Mark [off, off + len) written: 0, or -ENOMEM (nothing marked past that). */
static int view_mark(struct view_state *v, uint64_t off, uint64_t len)
{
        for (uint64_t u = off >> VIEW_WSHIFT; u < (off + len) >> VIEW_WSHIFT; u++) {
                uint64_t **piece = &v->written[u >> (VIEW_CSHIFT - VIEW_WSHIFT)];

                if (!*piece && !(*piece = calloc(VIEW_CBITS / 64, 8)))
                        return -ENOMEM;
                bk_set(*piece, u & (VIEW_CBITS - 1));
        }
        return 0;
}

static uint32_t min_io(uint32_t a, uint32_t b)
{
        if (!a)
                return b;
        if (!b)
                return a;
        return a < b ? a : b;
}

static int view_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        struct view_state *v = vbd_image_state(img);
        const struct vbd_info *si = vbd_image_info(v->store), *ii = vbd_image_info(v->image);

        *ret = *ii;
        ret->caps = 0; /* reads only */
        if (v->scratch)
                ret->caps = VBD_CAP_WRITE | VBD_CAP_FLUSH;
        if (si->mem_align > ret->mem_align)
                ret->mem_align = si->mem_align;
        if (si->logical_block > ret->logical_block)
                ret->logical_block = si->logical_block;
        ret->max_io = min_io(ii->max_io, si->max_io);
        ret->discard_granularity = ret->discard_alignment = 0;
        return 0;
}

/* iov[] := the bytes [off, off + len) of src[] (at most n entries). */
static unsigned slice_iov(const struct iovec *src, unsigned n, uint64_t off, uint64_t len,
                          struct iovec *iov)
{
        unsigned k = 0;

        for (unsigned i = 0; i < n && len; i++) {
                uint64_t l = src[i].iov_len;

                if (off >= l) {
                        off -= l;
                        continue;
                }
                l -= off;
                if (l > len)
                        l = len;
                iov[k].iov_base = (char *)src[i].iov_base + off;
                iov[k].iov_len = l;
                k++;
                len -= l;
                off = 0;
        }
        return k;
}

static void view_finish(struct view_io *vio, int status)
{
        struct vbd_io *io = vio->io;

        bk_vread_end(vio->v->s, &vio->vr);
        free(vio->iov);
        free(vio->sub_scratch);
        vio->iov = NULL;
        vio->sub_scratch = NULL;
        vbd_io_complete(io, status);
}

static void view_next(struct view_io *vio);

static void view_sub_done(struct vbd_io *sub, int status)
{
        struct view_io *vio = sub->opaque;

        if (status >= 0 && !bk_view_ok(vio->v->s))
                status = -EIO; /* the snapshot failed meanwhile: the bytes may be newer */
        if (status < 0) {
                view_finish(vio, status);
                return;
        }
        vio->pos += sub->len;
        view_next(vio);
}

/* Where the view's byte at off comes from. */
static struct vbd_image *view_source(const struct view_state *v, uint64_t off)
{
        if (view_written(v, off))
                return v->scratch;
        return bk_saved(v->s, off >> v->s->shift) ? v->store : v->image;
}

/* The next run of units that all come from the same place: the overlay,
 * the store or the image. */
static void view_next(struct view_io *vio)
{
        struct vbd_io *io = vio->io;
        const struct view_state *v = vio->v;
        uint64_t off = io->offset + vio->pos, end = io->offset + io->len, len;
        uint64_t step = v->written ? vbd_image_info(v->image)->logical_block : v->s->p.gran;
        struct vbd_image *src;

        if (vio->pos == io->len) {
                view_finish(vio, 0);
                return;
        }
        src = view_source(v, off);
        len = (off / step + 1) * step - off;
        while (off + len < end && view_source(v, off + len) == src)
                len += step;
        if (off + len > end)
                len = end - off;
        vio->sub = (struct vbd_io){
            .op = VBD_OP_READ,
            .offset = off,
            .len = len,
            .iov = vio->iov,
            .iovcnt = slice_iov(io->iov, (unsigned)io->iovcnt, vio->pos, len, vio->iov),
            .done = view_sub_done,
            .opaque = vio,
            .scratch = vio->sub_scratch};
        vbd_image_submit(src, &vio->sub);
}

/* A write of the view, into the overlay: the units are the overlay's from now on. */
static void view_write_done(struct vbd_io *sub, int status)
{
        struct view_io *vio = sub->opaque;
        struct vbd_io *io = vio->io;

        if (status >= 0 && !bk_view_ok(vio->v->s))
                status = -EIO;
        if (status >= 0)
                status = view_mark(vio->v, io->offset, io->len);
        view_finish(vio, status);
}

static void view_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct view_state *v = vbd_image_state(img);
        struct view_io *vio = io->scratch;

        if (io->op == VBD_OP_FLUSH) { /* the overlay is thrown away: nothing to make durable */
                vbd_io_complete(io, bk_view_ok(v->s) ? 0 : -EIO);
                return;
        }
        if (io->op != VBD_OP_READ && (io->op != VBD_OP_WRITE || !v->scratch)) {
                vbd_io_complete(io, -EROFS); /* the core lets only what caps say through */
                return;
        }
        if (!bk_view_ok(v->s)) {
                vbd_io_complete(io, -EIO);
                return;
        }
        *vio = (struct view_io){.io = io, .v = v};
        vio->iov = calloc((size_t)io->iovcnt, sizeof(*vio->iov));
        vio->sub_scratch = calloc(1, v->sub_scratch + 1);
        if (!vio->iov || !vio->sub_scratch) {
                free(vio->iov);
                free(vio->sub_scratch);
                vbd_io_complete(io, -ENOMEM);
                return;
        }
        if (io->op == VBD_OP_WRITE) {
                /* it does not touch the image: the engine counts it, holds nothing */
                bk_vread_begin(v->s, &vio->vr, io->offset, 0);
                vio->sub = (struct vbd_io){.op = VBD_OP_WRITE,
                                           .offset = io->offset,
                                           .len = io->len,
                                           .iov = io->iov,
                                           .iovcnt = io->iovcnt,
                                           .done = view_write_done,
                                           .opaque = vio,
                                           .scratch = vio->sub_scratch};
                vbd_image_submit(v->scratch, &vio->sub);
                return;
        }
        bk_vread_begin(v->s, &vio->vr, io->offset, io->len);
        view_next(vio);
}

static void view_close(struct vbd_image *img)
{
        struct view_state *v = vbd_image_state(img);

        for (size_t i = 0; v->written && i < v->npieces; i++)
                free(v->written[i]);
        free(v->written); /* the job owns the store, the overlay and the engine */
        v->written = NULL;
}

/* Not in the registry (drivers.c.in): only the snapshot job opens it. */
static const struct vbd_driver view_driver = {
    .abi = VBD_DRIVER_ABI,
    .name = "backup-view",
    .description = "a snapshot's view: the image as it was when the snapshot started",
    .usage = "backup-view:NAME (opened by the snapshot job)",
    .state_size = sizeof(struct view_state),
    .io_scratch_size = sizeof(struct view_io),
    .open = view_open,
    .get_info = view_get_info,
    .submit = view_submit,
    .close = view_close,
};

/* ---- the job ---- */

enum {
        OPT_ENDPOINT,
        OPT_STORE,
        OPT_GRANULARITY,
        OPT_NAME,
        OPT_SCRATCH,
};

static const struct vbd_opt_desc job_opts[] = {
    [OPT_ENDPOINT] = {.name = "endpoint",
                      .type = VBD_OPT_STRING,
                      .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY,
                      .help = "where the snapshot is exported read-only: unix:PATH or "
                              "tcp:ADDR:PORT"},
    [OPT_STORE] = {.name = "store",
                   .type = VBD_OPT_STRING,
                   .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY,
                   .help = "a new file (absolute path) for the old contents of the blocks the "
                           "guest overwrites; unlinked as soon as it is open"},
    [OPT_GRANULARITY] = {.name = "granularity",
                         .type = VBD_OPT_SIZE,
                         .flags = VBD_OPT_POW2,
                         .min = BK_GRAN_MIN,
                         .max = BK_GRAN_MAX,
                         .def = "64K",
                         .help = "the unit saved before a guest write"},
    [OPT_NAME] = VBD_OPT_STRING_DEF("name", "", "the export's name (default: the default export)"),
    [OPT_SCRATCH] = VBD_OPT_BOOL_DEF("scratch", "off",
                                     "the export takes writes, into a thrown-away overlay "
                                     "(STORE.scratch, unlinked at once)"),
};

#define SN_PATH_MAX 1024

struct snap_job {
        struct vbd_job *job;
        char endpoint[SN_PATH_MAX], store[SN_PATH_MAX], name[256];
        uint32_t gran;
        bool scratch;
        struct vbd_image *simg, *view, *ximg; /* the store, the view, the overlay */
        struct vbd_device_export *ex;
        bool began, engine_over, export_over, cancelling;
        int status;
        char msg[256];
};

static struct vbd_image *layer_of(struct vbd_device *dev)
{
        return vbd_device_find_layer(dev, "backup");
}

static void close_images(struct snap_job *b)
{
        struct vbd_device *dev = vbd_job_device(b->job);

        if (b->view)
                vbd_device_close_image(dev, b->view);
        if (b->simg)
                vbd_device_close_image(dev, b->simg);
        if (b->ximg)
                vbd_device_close_image(dev, b->ximg);
        b->view = b->simg = b->ximg = NULL;
}

/* Both the engine and the export are over: release the rest, end. */
static void maybe_end(struct snap_job *b)
{
        if (!b->engine_over || !b->export_over)
                return;
        close_images(b);
        if (b->status == -ECANCELED)
                vbd_job_set_state(b->job, VBD_JOB_CANCELLED, NULL);
        else
                vbd_job_set_state(b->job, VBD_JOB_FAILED, "%s", b->msg);
        vbd_info("snapshot on %s over: %s", b->endpoint,
                 b->status == -ECANCELED ? "stopped" : b->msg);
        if (b->cancelling) {
                b->cancelling = false;
                vbd_job_reply(b->job, 0, NULL);
        }
}

static void export_stopped(void *opaque)
{
        struct snap_job *b = opaque;

        b->ex = NULL;
        b->export_over = true;
        maybe_end(b);
}

static void stop_export(struct snap_job *b)
{
        if (b->ex)
                vbd_device_export_stop(b->ex, export_stopped, b);
        else
                b->export_over = true;
}

/* The engine is over (nothing of it in flight): cancelled, or the store failed. */
static void finished(void *opaque, int status, const char *msg)
{
        struct snap_job *b = opaque;

        b->engine_over = true;
        if (b->status == 0) {
                b->status = status < 0 ? status : -EIO;
                snprintf(b->msg, sizeof(b->msg), "%s", msg ? msg : "the snapshot stopped");
        }
        stop_export(b);
        maybe_end(b);
}

static void start_failed(struct snap_job *b, int r, const char *msg)
{
        struct vbd_device *dev = vbd_job_device(b->job);

        vbd_device_export_free(b->ex);
        b->ex = NULL;
        close_images(b);
        vbd_device_resume(dev);
        vbd_job_set_state(b->job, VBD_JOB_FAILED, "%s", msg);
        vbd_job_reply(b->job, r, msg);
}

static void start_paused(void *opaque)
{
        struct snap_job *b = opaque;
        struct vbd_device *dev = vbd_job_device(b->job);
        struct vbd_image *layer = layer_of(dev);
        struct vbd_err err = {0};
        struct bk_params p = {
            .target = b->simg,
            .gran = b->gran,
            .depth = BK_SLOTS,
            .fleece = true,
            .finished = finished,
            .opaque = b,
        };
        char spec[64];
        int r = 0;

        if (!layer && (r = vbd_device_push_filter(dev, "backup", &err)) >= 0)
                layer = layer_of(dev);
        if (r >= 0 && !layer)
                r = vbd_err_set(&err, -ENODEV, "the backup filter is missing from the stack");
        if (r >= 0 && bk_active(layer))
                r = vbd_err_set(&err, -EBUSY, "a %s is running on this device",
                                bk_get(layer)->p.fleece ? "snapshot" : "backup");
        if (r >= 0)
                r = bk_prepare(layer, &p, &err);
        if (r < 0) {
                start_failed(b, r, err.msg);
                return;
        }
        view_attach = (struct view_state){.s = (struct bk_state *)bk_get(layer),
                                          .store = b->simg,
                                          .image = vbd_image_child(layer),
                                          .scratch = b->ximg};
        snprintf(spec, sizeof(spec), "backup-view:snapshot");
        b->view = vbd_device_open_driver(dev, &view_driver, spec, !b->scratch, &err);
        view_attach = (struct view_state){0};
        if (b->view)
                b->ex =
                    vbd_device_export_start(dev, b->view, b->endpoint, b->name, b->scratch, &err);
        if (!b->view || !b->ex) {
                bk_unprepare(layer);
                start_failed(b, err.code ? err.code : -EIO, err.msg);
                return;
        }
        bk_add(layer, 0, vbd_image_info(vbd_device_image(dev))->size);
        b->began = true;
        vbd_job_set_state(b->job, VBD_JOB_RUNNING, NULL);
        bk_begin(layer);
        vbd_device_resume(dev);
        vbd_info("snapshot exported on %s (granularity %u)", b->endpoint, b->gran);
        vbd_job_reply(b->job, 0, NULL);
}

/* A new sparse file of size bytes at path, open, then unlinked. */
static struct vbd_image *open_unlinked(struct vbd_device *dev, const char *path, uint64_t size,
                                       struct vbd_err *err)
{
        char spec[SN_PATH_MAX + 32];
        struct vbd_image *img;
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

        if (fd < 0) {
                vbd_err_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
                return NULL;
        }
        if (ftruncate(fd, (off_t)size) < 0) {
                int r = -errno;

                close(fd);
                unlink(path);
                vbd_err_set(err, r, "cannot size %s: %s", path, strerror(-r));
                return NULL;
        }
        close(fd);
        snprintf(spec, sizeof(spec), "raw:%s", path);
        img = vbd_device_open_image(dev, spec, false, err);
        unlink(path); /* open or not: nothing stays behind */
        return img;
}

/* The store, and with scratch the overlay beside it. */
static int open_store(struct snap_job *b, struct vbd_device *dev, uint64_t size,
                      struct vbd_err *err)
{
        char path[SN_PATH_MAX + 16];

        if (!(b->simg = open_unlinked(dev, b->store, size, err)))
                return err->code ? err->code : -EIO;
        if (!b->scratch)
                return 0;
        snprintf(path, sizeof(path), "%s.scratch", b->store);
        if (!(b->ximg = open_unlinked(dev, path, size, err))) {
                vbd_device_close_image(dev, b->simg);
                b->simg = NULL;
                return err->code ? err->code : -EIO;
        }
        return 0;
}

static int sn_start(struct vbd_job *job, const struct vbd_opt_value *v, struct vbd_err *err)
{
        struct snap_job *b = vbd_job_state(job);
        struct vbd_device *dev = vbd_job_device(job);
        struct vbd_image *layer = layer_of(dev);
        int r;

        b->job = job;
        if ((r = bk_copy_opt(b->endpoint, sizeof(b->endpoint), &v[OPT_ENDPOINT], "endpoint", err)) <
                0 ||
            (r = bk_copy_opt(b->store, sizeof(b->store), &v[OPT_STORE], "store", err)) < 0 ||
            (r = bk_copy_opt(b->name, sizeof(b->name), &v[OPT_NAME], "name", err)) < 0)
                return r;
        b->gran = (uint32_t)v[OPT_GRANULARITY].u;
        b->scratch = v[OPT_SCRATCH].b;
        if (strlen(b->store) + sizeof(".scratch") > sizeof(b->store))
                return vbd_err_set(err, -ENAMETOOLONG, "the store's name is too long");
        if (b->store[0] != '/')
                return vbd_err_set(err, -EINVAL, "the store must be an absolute path: %s",
                                   b->store);
        if (strncmp(b->endpoint, "unix:", 5) && strncmp(b->endpoint, "tcp:", 4))
                return vbd_err_set(err, -EINVAL, "bad endpoint \"%s\" (unix:PATH or tcp:ADDR:PORT)",
                                   b->endpoint);
        if (layer && bk_active(layer))
                return vbd_err_set(err, -EBUSY, "a %s is running on this device",
                                   bk_get(layer)->p.fleece ? "snapshot" : "backup");
        if ((r = open_store(b, dev, vbd_image_info(vbd_device_image(dev))->size, err)) < 0)
                return r;
        /* "starting" until the pause: "running" means the point in time is fixed */
        vbd_device_pause(dev, start_paused, b); /* may call back inline */
        return 1;
}

static void sn_status(struct vbd_job *job, json_t *obj)
{
        struct snap_job *b = vbd_job_state(job);
        struct vbd_image *layer = layer_of(vbd_job_device(job));
        const struct bk_state *s = layer && b->began ? bk_get(layer) : NULL;
        uint64_t held = 0, held_sum = 0, held_max = 0, saved = 0, reads = 0, elapsed = 0;

        if (s && s->p.fleece) {
                held = s->writes_held;
                held_sum = s->held_ns_sum;
                held_max = s->held_ns_max;
                saved = s->bytes_written;
                reads = s->vreads_total;
                elapsed = ((s->end_ns ? s->end_ns : vbd_now_ns()) - s->start_ns) / 1000000u;
        }
        json_object_update_new(
            obj,
            json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:i}", "state",
                      vbd_job_state_name(vbd_job_get_state(job)), "endpoint", b->endpoint, "name",
                      b->name, "store", b->store, "granularity", (json_int_t)b->gran, "bytes_saved",
                      (json_int_t)saved, "writes_held", (json_int_t)held, "held_avg_us",
                      (json_int_t)(held ? held_sum / held / 1000 : 0), "held_max_us",
                      (json_int_t)(held_max / 1000), "view_reads", (json_int_t)reads, "elapsed_ms",
                      (json_int_t)elapsed, "clients", (int)vbd_device_export_clients(b->ex)));
        json_object_set_new(obj, "error",
                            json_string(b->status && b->status != -ECANCELED ? b->msg : ""));
}

static void sn_status_none(struct vbd_device *dev, json_t *obj)
{
        (void)dev;
        json_object_update_new(obj, json_pack("{s:s,s:s}", "state", "none", "error", ""));
}

static int sn_cancel(struct vbd_job *job, struct vbd_err *err)
{
        struct snap_job *b = vbd_job_state(job);
        struct vbd_image *layer = layer_of(vbd_job_device(job));

        if (!b->began || b->engine_over || !layer || !bk_active(layer))
                return vbd_err_set(err, -ENOENT, "no snapshot is running");
        b->cancelling = true;
        b->status = -ECANCELED;
        snprintf(b->msg, sizeof(b->msg), "cancelled");
        stop_export(b);
        bk_stop(layer, -ECANCELED, "cancelled");
        return 1;
}

static void sn_free(struct vbd_job *job)
{
        struct snap_job *b = vbd_job_state(job);

        /* the device is going away: nothing of the export is in flight (the
         * engine's drain waited for the view's reads) */
        vbd_device_export_free(b->ex);
        b->ex = NULL;
        close_images(b);
}

const struct vbd_job_type bk_snapshot_job = {
    .name = "snapshot",
    .description = "a read-only NBD export of the image as it was at the start, while the "
                   "guest goes on writing (copy-before-write into a store)",
    .opts = job_opts,
    .nopts = VBD_ARRAY_SIZE(job_opts),
    .state_size = sizeof(struct snap_job),
    .start = sn_start,
    .status = sn_status,
    .cancel = sn_cancel,
    .free = sn_free,
    .status_none = sn_status_none,
};
