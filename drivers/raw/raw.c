/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * raw: a regular file or a block device, byte for byte.
 *
 *   raw:PATH[,direct=on|off|auto][,locking=on|off|auto]
 *
 * direct=auto (default) opens with O_DIRECT and falls back to buffered I/O
 * when the file system refuses it (EINVAL); on requires O_DIRECT, off never
 * uses it.  With O_DIRECT a second, buffered descriptor of the same file
 * serves the requests O_DIRECT cannot take (offset, length or buffers not
 * aligned as statx(STATX_DIOALIGN) says; without that, 512 bytes for
 * offset/length and 4096 for memory are assumed).
 *
 * READ/WRITE and FLUSH go through the AIO engine; a FUA write is a write
 * followed by fdatasync.  DISCARD and WRITE_ZEROES are fallocate() on files
 * and BLKDISCARD/BLKZEROOUT on block devices: synchronous system calls on
 * the loop thread, completed inline.
 *
 * Block status: SEEK_DATA/SEEK_HOLE on files (holes read as zeroes: HOLE |
 * ZERO; data: 0); a block device, or a file system without SEEK_DATA, is
 * one allocated extent.
 *
 * create: a new sparse file of the size (mode 0644 less the umask, as
 * qemu-img's), synced with its directory; never an existing path.
 *
 * Image locks (vbd/lock.h), on the buffered descriptor: read-write holds
 * "consistent read" and "write", read-only "consistent read"; neither shares
 * "write" or "resize" (the size is fixed at open).  locking=off takes none.
 */
#define VBD_LOG_TOPIC "drv.raw"
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vbd/aio.h"
#include "vbd/driver.h"
#include "vbd/file.h"
#include "vbd/lock.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define RAW_DEFAULT_DIO_OFFSET_ALIGN 512
#define RAW_DEFAULT_DIO_MEM_ALIGN    4096
#define RAW_ZERO_CHUNK               65536

struct raw_state {
        int fd;  /* O_DIRECT when direct, else buffered */
        int bfd; /* buffered; == fd when !direct */
        bool direct, blockdev, readonly;
        uint64_t size;
        uint32_t logical_block, physical_block, discard_granularity;
        uint32_t dio_offset_align, dio_mem_align;
        struct vbd_aio *aio;
};

/* Per-io scratch. */
struct raw_io {
        struct vbd_aio_op op;
        struct vbd_io *io;
        struct raw_state *s;
};

/* Source of zeroes for WRITE_ZEROES when the file system cannot zero a range. */
static char raw_zeroes[RAW_ZERO_CHUNK] __attribute__((aligned(4096)));

enum { OPT_DIRECT, OPT_LOCKING };
static const struct vbd_opt_desc raw_opts[] = {
    [OPT_DIRECT] = VBD_OPT_TRISTATE_DEF("direct", "auto",
                                        "O_DIRECT: on requires it, auto falls back to buffered"),
    [OPT_LOCKING] = VBD_LOCK_OPT_DEF("locking"),
};

/* Alignment O_DIRECT needs on fd. */
static void raw_dio_align(struct raw_state *s)
{
        s->dio_offset_align = RAW_DEFAULT_DIO_OFFSET_ALIGN;
        s->dio_mem_align = RAW_DEFAULT_DIO_MEM_ALIGN;
        if (s->logical_block > s->dio_offset_align)
                s->dio_offset_align = s->logical_block;
#ifdef STATX_DIOALIGN
        struct statx stx;

        if (statx(s->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
            (stx.stx_mask & STATX_DIOALIGN) && vbd_is_pow2(stx.stx_dio_offset_align) &&
            vbd_is_pow2(stx.stx_dio_mem_align)) {
                s->dio_offset_align = stx.stx_dio_offset_align;
                s->dio_mem_align = stx.stx_dio_mem_align;
        }
#endif
}

static int raw_blockdev_geometry(struct raw_state *s, const char *path, struct vbd_err *err)
{
        uint64_t size;
        int lbs;
        unsigned int pbs;

        if (ioctl(s->bfd, BLKGETSIZE64, &size) < 0)
                return vbd_err_set(err, -errno, "raw: BLKGETSIZE64 on '%s': %s", path,
                                   strerror(errno));
        if (ioctl(s->bfd, BLKSSZGET, &lbs) < 0)
                return vbd_err_set(err, -errno, "raw: BLKSSZGET on '%s': %s", path,
                                   strerror(errno));
        if (lbs < 512 || !vbd_is_pow2((uint32_t)lbs))
                return vbd_err_set(err, -EINVAL, "raw: '%s' has logical block size %d", path, lbs);
        s->logical_block = (uint32_t)lbs;
        if (ioctl(s->bfd, BLKPBSZGET, &pbs) < 0 || !vbd_is_pow2(pbs) || pbs < (unsigned)lbs)
                pbs = (unsigned)lbs;
        s->physical_block = pbs;
        s->discard_granularity = pbs;
        s->size = size - size % s->logical_block;
        return 0;
}

static int raw_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        struct raw_state *s = vbd_image_state(img);
        const char *path = o->arg;
        enum vbd_tristate direct = o->values[OPT_DIRECT].t;
        struct stat st, dst;
        int flags, r;

        s->fd = s->bfd = -1;
        if (!path || !*path)
                return vbd_err_set(err, -EINVAL, "raw: missing path (raw:PATH)");
        s->aio = vbd_image_aio(img);
        if (!s->aio)
                return vbd_err_set(err, -EINVAL, "raw: no AIO engine given");
        s->readonly = o->readonly;

        flags = (o->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NOCTTY;
        s->bfd = open(path, flags);
        if (s->bfd < 0)
                return vbd_err_set(err, -errno, "raw: cannot open '%s'%s: %s", path,
                                   o->readonly ? "" : " for writing", strerror(errno));
        if (fstat(s->bfd, &st) < 0) {
                r = vbd_err_set(err, -errno, "raw: fstat '%s': %s", path, strerror(errno));
                goto fail;
        }
        if (S_ISBLK(st.st_mode)) {
                s->blockdev = true;
                r = raw_blockdev_geometry(s, path, err);
                if (r < 0)
                        goto fail;
        } else if (S_ISREG(st.st_mode)) {
                s->logical_block = 512;
                s->physical_block = 4096;
                if (vbd_is_pow2((uint32_t)st.st_blksize) && st.st_blksize >= 512 &&
                    st.st_blksize <= 65536)
                        s->physical_block = (uint32_t)st.st_blksize;
                s->discard_granularity = s->physical_block;
                s->size = (uint64_t)st.st_size;
                if (s->size % s->logical_block) {
                        vbd_warn("'%s': size %llu is not a multiple of %u, exposing %llu bytes",
                                 path, (unsigned long long)s->size, s->logical_block,
                                 (unsigned long long)(s->size - s->size % s->logical_block));
                        s->size -= s->size % s->logical_block;
                }
        } else {
                r = vbd_err_set(err, -EINVAL, "raw: '%s' is not a regular file or block device",
                                path);
                goto fail;
        }
        r = vbd_image_lock(img, s->bfd, path, o->values[OPT_LOCKING].t,
                           VBD_LOCK_CONSISTENT_READ | (o->readonly ? 0 : VBD_LOCK_WRITE),
                           VBD_LOCK_WRITE | VBD_LOCK_RESIZE, err);
        if (r < 0)
                goto fail;

        s->fd = s->bfd;
        if (direct != VBD_OFF) {
                int dfd = open(path, flags | O_DIRECT);

                if (dfd < 0 && (errno != EINVAL || direct == VBD_ON)) {
                        r = vbd_err_set(err, -errno, "raw: cannot open '%s' with O_DIRECT: %s",
                                        path, strerror(errno));
                        goto fail;
                }
                if (dfd < 0) {
                        vbd_info("'%s': O_DIRECT not supported here, using buffered I/O", path);
                } else if (fstat(dfd, &dst) < 0 || dst.st_dev != st.st_dev ||
                           dst.st_ino != st.st_ino) {
                        close(dfd);
                        r = vbd_err_set(err, -ESTALE, "raw: '%s' was replaced while opening", path);
                        goto fail;
                } else {
                        s->fd = dfd;
                        s->direct = true;
                        raw_dio_align(s);
                }
        }
        vbd_debug("'%s': %llu bytes, %s, %s I/O (dio align offset %u mem %u)", path,
                  (unsigned long long)s->size, s->blockdev ? "block device" : "file",
                  s->direct ? "direct" : "buffered", s->dio_offset_align, s->dio_mem_align);
        return 0;

fail:
        close(s->bfd);
        s->fd = s->bfd = -1;
        return r;
}

static int raw_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        struct raw_state *s = vbd_image_state(img);
        uint32_t mem_align = RAW_DEFAULT_DIO_MEM_ALIGN;

        if (s->direct && s->dio_mem_align > mem_align)
                mem_align = s->dio_mem_align;
        *ret_info = (struct vbd_info){
            .size = s->size,
            .caps = VBD_CAP_FLUSH,
            .logical_block = s->logical_block,
            .physical_block = s->physical_block,
            .mem_align = mem_align,
            .max_io = 0,
            .discard_granularity = s->discard_granularity,
            .discard_alignment = 0,
        };
        if (!s->readonly)
                ret_info->caps |=
                    VBD_CAP_WRITE | VBD_CAP_FUA | VBD_CAP_DISCARD | VBD_CAP_WRITE_ZEROES;
        return 0;
}

/* Can O_DIRECT take this request? */
static bool raw_dio_ok(const struct raw_state *s, const struct vbd_io *io)
{
        if (!s->direct)
                return false;
        if (io->offset % s->dio_offset_align || io->len % s->dio_offset_align)
                return false;
        for (unsigned i = 0; i < io->iovcnt; i++)
                if ((uintptr_t)io->iov[i].iov_base % s->dio_mem_align ||
                    io->iov[i].iov_len % s->dio_offset_align)
                        return false;
        return true;
}

static struct raw_io *raw_io_of(struct vbd_aio_op *op)
{
        return (struct raw_io *)((char *)op - offsetof(struct raw_io, op));
}

static void raw_flush_done(struct vbd_aio_op *op, ssize_t res)
{
        struct raw_io *rio = raw_io_of(op);

        vbd_io_complete(rio->io, res < 0 ? (int)res : 0);
}

static void raw_rw_done(struct vbd_aio_op *op, ssize_t res)
{
        struct raw_io *rio = raw_io_of(op);
        struct vbd_io *io = rio->io;

        if (res >= 0 && io->op == VBD_OP_WRITE && (io->flags & VBD_IO_FUA)) {
                op->done = raw_flush_done;
                vbd_aio_fdatasync(rio->s->aio, op, rio->s->fd);
                return;
        }
        vbd_io_complete(io, res < 0 ? (int)res : 0);
}

/* Write zeroes with plain writes, when the file system cannot zero a range. */
static int raw_write_zero_buffers(struct raw_state *s, uint64_t offset, uint64_t len)
{
        while (len) {
                size_t n = len < sizeof(raw_zeroes) ? (size_t)len : sizeof(raw_zeroes);
                ssize_t w = pwrite(s->bfd, raw_zeroes, n, (off_t)offset);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w < 0)
                        return -errno;
                if (w == 0)
                        return -EIO;
                offset += (uint64_t)w;
                len -= (uint64_t)w;
        }
        return 0;
}

static int raw_fallocate(struct raw_state *s, int mode, uint64_t offset, uint64_t len)
{
        return fallocate(s->fd, mode, (off_t)offset, (off_t)len) < 0 ? -errno : 0;
}

static int raw_discard(struct raw_state *s, uint64_t offset, uint64_t len)
{
        if (s->blockdev) {
                uint64_t range[2] = {offset, len};

                return ioctl(s->fd, BLKDISCARD, range) < 0 ? -errno : 0;
        }
        return raw_fallocate(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
}

static int raw_write_zeroes(struct raw_state *s, uint64_t offset, uint64_t len, bool may_unmap)
{
        int r = -EOPNOTSUPP;

        if (s->blockdev) {
                uint64_t range[2] = {offset, len};

                r = ioctl(s->fd, BLKZEROOUT, range) < 0 ? -errno : 0;
        } else {
                if (may_unmap)
                        r = raw_fallocate(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset,
                                          len);
                if (r == -EOPNOTSUPP)
                        r = raw_fallocate(s, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset,
                                          len);
        }
        if (r == -EOPNOTSUPP || r == -ENOTTY)
                r = raw_write_zero_buffers(s, offset, len);
        return r;
}

static void raw_submit(struct vbd_image *img, struct vbd_io *io)
{
        struct raw_state *s = vbd_image_state(img);
        struct raw_io *rio = io->scratch;
        int fd;

        rio->io = io;
        rio->s = s;
        switch (io->op) {
        case VBD_OP_READ:
        case VBD_OP_WRITE:
                fd = raw_dio_ok(s, io) ? s->fd : s->bfd;
                rio->op.done = raw_rw_done;
                if (io->op == VBD_OP_READ)
                        vbd_aio_preadv(s->aio, &rio->op, fd, io->iov, (int)io->iovcnt, io->offset);
                else
                        vbd_aio_pwritev(s->aio, &rio->op, fd, io->iov, (int)io->iovcnt, io->offset);
                return;
        case VBD_OP_FLUSH:
                rio->op.done = raw_flush_done;
                vbd_aio_fdatasync(s->aio, &rio->op, s->fd);
                return;
        case VBD_OP_DISCARD:
                /* Synchronous: fallocate/ioctl block the loop for their duration. */
                vbd_io_complete(io, raw_discard(s, io->offset, io->len));
                return;
        case VBD_OP_WRITE_ZEROES:
                vbd_io_complete(
                    io, raw_write_zeroes(s, io->offset, io->len, io->flags & VBD_IO_MAY_UNMAP));
                return;
        default:
                vbd_io_complete(io, -EOPNOTSUPP);
                return;
        }
}

static int raw_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                            struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        struct raw_state *s = vbd_image_state(img);
        uint64_t end = offset + len, pos = offset;
        unsigned n = 0;

        if (s->blockdev)
                goto all_data;
        while (pos < end && n < max) {
                off_t data = lseek(s->bfd, (off_t)pos, SEEK_DATA), hole;
                uint64_t next;
                uint32_t flags;

                if (data < 0 && errno == ENXIO) {
                        data = (off_t)end; /* nothing but a hole up to the end of the file */
                } else if (data < 0) {
                        if (n)
                                break;
                        goto all_data; /* EINVAL: no SEEK_DATA here */
                }
                if ((uint64_t)data > pos) {
                        next = (uint64_t)data < end ? (uint64_t)data : end;
                        flags = VBD_EXTENT_HOLE | VBD_EXTENT_ZERO;
                } else {
                        hole = lseek(s->bfd, (off_t)pos, SEEK_HOLE);
                        if (hole < 0 || (uint64_t)hole <= pos) {
                                /* Changed under us, or an odd file system: call it data. */
                                hole = (off_t)end;
                        }
                        next = (uint64_t)hole < end ? (uint64_t)hole : end;
                        flags = 0;
                }
                /* Keep extents aligned to the logical block: a partial block is data. */
                if (next < end && next % s->logical_block) {
                        uint64_t up = next - next % s->logical_block + s->logical_block;

                        if (flags) {
                                next -= next % s->logical_block;
                                if (next <= pos) {
                                        next = up < end ? up : end;
                                        flags = 0;
                                }
                        } else {
                                next = up < end ? up : end;
                        }
                }
                if (n && ret[n - 1].flags == flags)
                        ret[n - 1].len += next - pos;
                else
                        ret[n++] = (struct vbd_extent){.len = next - pos, .flags = flags};
                pos = next;
        }
        *ret_n = n;
        return 0;

all_data:
        ret[0] = (struct vbd_extent){.len = len, .flags = 0};
        *ret_n = 1;
        return 0;
}

static void raw_close(struct vbd_image *img)
{
        struct raw_state *s = vbd_image_state(img);

        if (s->fd >= 0 && s->fd != s->bfd)
                close(s->fd);
        if (s->bfd >= 0)
                close(s->bfd);
        s->fd = s->bfd = -1;
}

/* Remove the file we created at path (dev and ino in *ours), unless
 * something else is there now. */
static void raw_unlink_ours(const char *path, const struct stat *ours)
{
        struct stat st;

        if (stat(path, &st) == 0 && st.st_dev == ours->st_dev && st.st_ino == ours->st_ino)
                (void)unlink(path);
}

static int raw_create(const struct vbd_create *c, struct vbd_err *err)
{
        struct stat st;
        int fd, r;

        if (strchr(c->path, ','))
                return vbd_err_set(err, -EINVAL,
                                   "raw: '%s' has a ',' in its name (not possible in an image "
                                   "spec)",
                                   c->path);
        if (c->backing || c->backing_fmt)
                return vbd_err_set(err, -EINVAL, "raw: '%s': raw images have no backing file",
                                   c->path);
        if (c->cluster_size)
                return vbd_err_set(err, -EINVAL, "raw: '%s': raw images have no cluster size",
                                   c->path);
        if (c->size == 0 || c->size % 512)
                return vbd_err_set(err, -EINVAL,
                                   "raw: '%s': size %llu is not a positive multiple of 512 bytes",
                                   c->path, (unsigned long long)c->size);
        if (c->size > (uint64_t)INT64_MAX)
                return vbd_err_set(err, -EFBIG, "raw: '%s': size %llu too large", c->path,
                                   (unsigned long long)c->size);
        fd = open(c->path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOCTTY, 0644);
        if (fd < 0 && errno == EEXIST)
                return vbd_err_set(err, -EEXIST, "raw: '%s' exists; not overwriting it", c->path);
        if (fd < 0)
                return vbd_err_set(err, -errno, "raw: cannot create '%s': %s", c->path,
                                   strerror(errno));
        if (fstat(fd, &st) < 0) {
                /* Cannot tell our file from another: leave it. */
                r = vbd_err_set(err, -errno, "raw: fstat '%s': %s", c->path, strerror(errno));
                close(fd);
                return r;
        }
        if (ftruncate(fd, (off_t)c->size) < 0)
                r = vbd_err_set(err, -errno, "raw: cannot make '%s' %llu bytes long: %s", c->path,
                                (unsigned long long)c->size, strerror(errno));
        else if (fsync(fd) < 0)
                r = vbd_err_set(err, -errno, "raw: fsync '%s': %s", c->path, strerror(errno));
        else
                r = 0;
        if (close(fd) < 0 && r == 0)
                r = vbd_err_set(err, -errno, "raw: close '%s': %s", c->path, strerror(errno));
        if (r == 0) {
                r = vbd_fsync_dir_of(c->path);
                if (r < 0)
                        vbd_err_set(err, r, "raw: fsync the directory of '%s': %s", c->path,
                                    strerror(-r));
        }
        if (r < 0) {
                raw_unlink_ours(c->path, &st);
                return r;
        }
        vbd_debug("'%s': created, %llu bytes", c->path, (unsigned long long)c->size);
        return 0;
}

const struct vbd_driver vbd_driver_raw = {
    .abi = VBD_DRIVER_ABI,
    .name = "raw",
    .description = "a regular file or block device, byte for byte",
    .usage = "raw:PATH[,direct=on|off|auto][,locking=on|off|auto]",
    .state_size = sizeof(struct raw_state),
    .io_scratch_size = sizeof(struct raw_io),
    .open = raw_open,
    .get_info = raw_get_info,
    .submit = raw_submit,
    .close = raw_close,
    .opts = raw_opts,
    .nopts = VBD_ARRAY_SIZE(raw_opts),
    .block_status = raw_block_status,
    .create = raw_create,
};
