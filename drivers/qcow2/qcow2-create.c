/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2 create: a new, empty version 3 image, written from the format
 * specification (QEMU docs/interop/qcow2.txt).
 *
 * Layout, in clusters of cs bytes:
 *
 *   0                 the header: 112 bytes (the v3 fields and
 *                     compression_type 0, zlib, padded to a multiple of 8);
 *                     refcount_order 4 (16-bit refcounts), no incompatible,
 *                     compatible or auto-clear feature; then the header
 *                     extensions: the backing file format name (only with a
 *                     backing file) and the end of the extension area; then
 *                     the backing file name (not NUL-terminated)
 *   1 .. rt           the refcount table, sized for the image fully written
 *                     (every guest cluster, L2 table and refcount block), so
 *                     that the driver never has to move it
 *   rt+1 .. rt+nrb    the refcount blocks covering the clusters of this
 *                     layout, each of them at refcount 1
 *   the rest          the L1 table: size / (cs * cs / 8) entries rounded up,
 *                     all zero (every cluster unallocated)
 *
 * The file ends with the L1 table.  It is made with ftruncate, so all of it
 * starts as a hole; only the used start of the header cluster, of the
 * refcount table and of each refcount block is written.  The refcount
 * structures are written and synced first, the header last (a file cut
 * short by a crash has no valid header), then the file and its directory
 * are synced.  Any failure after the file exists removes it again.
 *
 * Refused: a size that is not a multiple of 512 (the driver exposes sizes
 * rounded down to 512; qemu-img rounds them up), cluster sizes outside
 * 512 B .. 2 MiB, sizes whose L1 table would be over 32 MiB (QEMU's and the
 * driver's limit), and sizes that, written in full, would need a refcount
 * table over 8 MiB or host offsets past 2^56 (neither QEMU nor the driver
 * could then fill the image).
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
#include "vbd/file.h"
#include "vbd/macro.h"

#define CREATE_DEFAULT_CLUSTER (64u << 10)
#define CREATE_HEADER_LEN      112 /* the v3 header with compression_type, padded */
#define CREATE_REFCOUNT_ORDER  4
#define CREATE_MODE            0644 /* less the umask: what qemu-img creates */

struct create_layout {
        unsigned cluster_bits;
        uint64_t cs;
        uint64_t l1_entries, l1_clusters;
        uint64_t rt_clusters; /* the refcount table */
        uint64_t nrb;         /* refcount blocks written now */
        uint64_t nclusters;   /* the file */
};

static uint64_t div_up(uint64_t a, uint64_t b)
{
        return a / b + (a % b != 0);
}

/* Refcount blocks for other clusters and for the blocks themselves. */
static uint64_t rb_need(uint64_t cs, uint64_t other)
{
        uint64_t per_rb = cs * 8 >> CREATE_REFCOUNT_ORDER, rb = 0;

        while (div_up(other + rb, per_rb) > rb)
                rb = div_up(other + rb, per_rb);
        return rb;
}

static int create_layout(const struct vbd_create *c, struct create_layout *l, struct vbd_err *err)
{
        uint64_t cs = c->cluster_size ? c->cluster_size : CREATE_DEFAULT_CLUSTER;
        uint64_t max_size, data, full_rb, full_rt, full_total, rt;

        if (!vbd_is_pow2(cs) || cs < (1u << QCOW2_MIN_CLUSTER_BITS) ||
            cs > (1u << QCOW2_MAX_CLUSTER_BITS))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: cluster size %llu is not a power of two from 512 bytes "
                                   "to 2 MiB",
                                   (unsigned long long)cs);
        l->cs = cs;
        l->cluster_bits = (unsigned)__builtin_ctzll(cs);
        if (c->size == 0 || c->size % 512)
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: size %llu is not a positive multiple of 512 bytes",
                                   (unsigned long long)c->size);
        /* Each L1 entry maps cs / 8 clusters; the L1 table is at most 32 MiB. */
        max_size = (uint64_t)(QCOW2_MAX_L1_BYTES / 8) * (cs / 8) * cs;
        if (max_size > QCOW2_MAX_VIRTUAL_SIZE)
                max_size = QCOW2_MAX_VIRTUAL_SIZE;
        if (c->size > max_size)
                return vbd_err_set(err, -EFBIG,
                                   "qcow2: size %llu too large for %llu-byte clusters (at most "
                                   "%llu bytes); use larger clusters",
                                   (unsigned long long)c->size, (unsigned long long)cs,
                                   (unsigned long long)max_size);
        data = div_up(c->size, cs);
        l->l1_entries = div_up(data, cs / 8);
        l->l1_clusters = div_up(l->l1_entries * 8, cs);

        /* Fully written: the header, the L1 table, an L2 table per L1 entry,
         * every data cluster, and the refcount structures for all of it. */
        for (full_rt = 1;; full_rt = rt) {
                full_rb = rb_need(cs, 1 + l->l1_clusters + l->l1_entries + data + full_rt);
                rt = div_up(full_rb * 8, cs);
                if (rt <= full_rt)
                        break;
        }
        full_total = 1 + l->l1_clusters + l->l1_entries + data + full_rb + full_rt;
        if (full_rt * cs > QCOW2_MAX_RT_BYTES || full_total > QCOW2_MAX_HOST_OFFSET / cs)
                return vbd_err_set(err, -EFBIG,
                                   "qcow2: size %llu too large for %llu-byte clusters: written "
                                   "in full it would need a refcount table of %llu bytes (at "
                                   "most %u) and %llu bytes of file; use larger clusters",
                                   (unsigned long long)c->size, (unsigned long long)cs,
                                   (unsigned long long)(full_rt * cs), QCOW2_MAX_RT_BYTES,
                                   (unsigned long long)(full_total * cs));

        /* What is written now: the table sized for the full image, and the
         * refcount blocks for the clusters of this layout. */
        l->rt_clusters = full_rt;
        l->nrb = rb_need(cs, 1 + l->rt_clusters + l->l1_clusters);
        l->nclusters = 1 + l->rt_clusters + l->nrb + l->l1_clusters;
        return 0;
}

/* dirname(path) into buf. */
static void dir_of(const char *path, char *buf, size_t size)
{
        char tmp[4096];

        snprintf(tmp, sizeof(tmp), "%s", path);
        snprintf(buf, size, "%s", dirname(tmp));
}

/* The backing file: named so that the driver can open it, there, of its format. */
static int check_backing(const struct vbd_create *c, struct vbd_err *err)
{
        char path[4096 + QCOW2_MAX_BACKING_NAME + 2], dir[4096];
        const char *name = c->backing, *fmt = c->backing_fmt;
        uint8_t magic[4];
        struct stat st;
        int fd, r = 0;
        ssize_t n;

        if (!name) {
                if (fmt)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: a backing format (%s) without a backing file",
                                           fmt);
                return 0;
        }
        if (!name[0])
                return vbd_err_set(err, -EINVAL, "qcow2: empty backing file name");
        if (strlen(name) > QCOW2_MAX_BACKING_NAME)
                return vbd_err_set(err, -ENAMETOOLONG,
                                   "qcow2: backing file name of %zu bytes (at most %u)",
                                   strlen(name), QCOW2_MAX_BACKING_NAME);
        if (!fmt || !fmt[0])
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: backing file '%s' without its format (backing_fmt "
                                   "raw or qcow2; formats are not probed)",
                                   name);
        if (strcmp(fmt, "raw") != 0 && strcmp(fmt, "qcow2") != 0)
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: backing format '%s' not supported (raw or qcow2)", fmt);
        /* Relative names are relative to the image's directory, as at open. */
        if (name[0] == '/') {
                snprintf(path, sizeof(path), "%s", name);
        } else {
                dir_of(c->path, dir, sizeof(dir));
                snprintf(path, sizeof(path), "%s/%s", dir, name);
        }
        if (strlen(path) >= 4096)
                return vbd_err_set(err, -ENAMETOOLONG, "qcow2: backing file path too long");
        if (strchr(path, ','))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: backing file '%s' has a ',' in its name (not possible "
                                   "in an image spec)",
                                   path);
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return vbd_err_set(err, -errno, "qcow2: backing file '%s': %s", path,
                                   strerror(errno));
        if (fstat(fd, &st) < 0) {
                r = vbd_err_set(err, -errno, "qcow2: backing file '%s': fstat: %s", path,
                                strerror(errno));
        } else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
                r = vbd_err_set(err, -EINVAL,
                                "qcow2: backing file '%s' is not a regular file or block device",
                                path);
        } else if (strcmp(fmt, "qcow2") == 0) {
                n = pread(fd, magic, sizeof(magic), 0);
                if (n < 0)
                        r = vbd_err_set(err, -errno, "qcow2: backing file '%s': read: %s", path,
                                        strerror(errno));
                else if (n != sizeof(magic) || vbd_get_be32(magic) != QCOW2_MAGIC)
                        r = vbd_err_set(err, -EINVAL,
                                        "qcow2: backing file '%s' is not a qcow2 image", path);
        }
        close(fd);
        return r;
}

/* The header cluster into hdr (cs zeroed bytes); the bytes used in *ret_len. */
static int build_header(const struct vbd_create *c, const struct create_layout *l, uint8_t *hdr,
                        size_t *ret_len, struct vbd_err *err)
{
        size_t off = CREATE_HEADER_LEN;

        vbd_put_be32(hdr + 0, QCOW2_MAGIC);
        vbd_put_be32(hdr + 4, 3);
        /* 8: backing_file_offset, 16: backing_file_size (below) */
        vbd_put_be32(hdr + 20, l->cluster_bits);
        vbd_put_be64(hdr + 24, c->size);
        vbd_put_be32(hdr + 32, 0); /* crypt_method */
        vbd_put_be32(hdr + 36, (uint32_t)l->l1_entries);
        vbd_put_be64(hdr + 40, (1 + l->rt_clusters + l->nrb) * l->cs);
        vbd_put_be64(hdr + QCOW2_HDR_RT_OFFSET, l->cs);
        vbd_put_be32(hdr + 56, (uint32_t)l->rt_clusters);
        vbd_put_be32(hdr + 60, 0); /* nb_snapshots */
        vbd_put_be64(hdr + 64, 0); /* snapshots_offset */
        vbd_put_be64(hdr + QCOW2_HDR_INCOMPAT, 0);
        vbd_put_be64(hdr + 80, 0); /* compatible: no lazy refcounts */
        vbd_put_be64(hdr + QCOW2_HDR_AUTOCLEAR, 0);
        vbd_put_be32(hdr + 96, CREATE_REFCOUNT_ORDER);
        vbd_put_be32(hdr + 100, CREATE_HEADER_LEN);
        hdr[104] = 0; /* compression_type: zlib; 105..111 padding, zero */

        if (c->backing) {
                size_t flen = strlen(c->backing_fmt), blen = strlen(c->backing);

                vbd_put_be32(hdr + off, QCOW2_EXT_BACKING_FMT);
                vbd_put_be32(hdr + off + 4, (uint32_t)flen);
                memcpy(hdr + off + 8, c->backing_fmt, flen);
                off += 8 + vbd_align_up(flen, 8);
                vbd_put_be64(hdr + off, 0); /* end of the extension area */
                off += 8;
                if (blen > l->cs - off)
                        return vbd_err_set(err, -ENAMETOOLONG,
                                           "qcow2: backing file name of %zu bytes does not fit in "
                                           "the first cluster (%llu bytes; at most %zu)",
                                           blen, (unsigned long long)l->cs, (size_t)l->cs - off);
                vbd_put_be64(hdr + 8, off);
                vbd_put_be32(hdr + 16, (uint32_t)blen);
                memcpy(hdr + off, c->backing, blen);
                off += blen;
        } else {
                vbd_put_be64(hdr + off, 0); /* end of the extension area */
                off += 8;
        }
        *ret_len = off;
        return 0;
}

/*
 * The refcount table's entries for the blocks written now, then the blocks.
 * The file is all holes here: only the used start of each cluster is
 * written (whole 512-byte sectors), the rest reads as zeros.
 */
static int write_refcounts(int fd, const struct create_layout *l, uint8_t *buf)
{
        uint64_t per_rt = l->cs / 8, per_rb = l->cs * 8 >> CREATE_REFCOUNT_ORDER;
        uint64_t first_rb = 1 + l->rt_clusters;
        int r;

        for (uint64_t k = 0; k * per_rt < l->nrb; k++) {
                uint64_t n = l->nrb - k * per_rt < per_rt ? l->nrb - k * per_rt : per_rt;

                memset(buf, 0, l->cs);
                for (uint64_t j = 0; j < n; j++)
                        vbd_put_be64(buf + j * 8, (first_rb + k * per_rt + j) * l->cs);
                r = vbd_pwrite_all(fd, buf, vbd_align_up(n * 8, 512), (1 + k) * l->cs);
                if (r < 0)
                        return r;
        }
        for (uint64_t b = 0; b < l->nrb; b++) {
                uint64_t n =
                    l->nclusters - b * per_rb < per_rb ? l->nclusters - b * per_rb : per_rb;

                memset(buf, 0, l->cs);
                for (uint64_t i = 0; i < n; i++)
                        qcow2_rc_set_entry(buf, CREATE_REFCOUNT_ORDER, i, 1);
                r = vbd_pwrite_all(fd, buf, vbd_align_up(n << CREATE_REFCOUNT_ORDER >> 3, 512),
                                   (first_rb + b) * l->cs);
                if (r < 0)
                        return r;
        }
        return 0;
}

int qcow2_create(const struct vbd_create *c, struct vbd_err *err)
{
        struct create_layout l = {0};
        struct qcow2_header h;
        struct vbd_err perr = {0};
        struct stat st, dst;
        char dir[4096];
        uint8_t *hdr = NULL, *buf = NULL;
        const char *what = NULL;
        size_t hlen = 0;
        int fd, r;

        if (!c->path || !c->path[0])
                return vbd_err_set(err, -EINVAL, "qcow2: create needs a path");
        if (strlen(c->path) >= sizeof(dir))
                return vbd_err_set(err, -ENAMETOOLONG, "qcow2: path too long");
        if (strchr(c->path, ','))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: '%s' has a ',' in its name (not possible in an image "
                                   "spec)",
                                   c->path);
        r = create_layout(c, &l, err);
        if (r < 0)
                return r;
        dir_of(c->path, dir, sizeof(dir));
        if (stat(dir, &dst) < 0)
                return vbd_err_set(err, -errno, "qcow2: cannot create '%s': directory '%s': %s",
                                   c->path, dir, strerror(errno));
        if (!S_ISDIR(dst.st_mode))
                return vbd_err_set(err, -ENOTDIR,
                                   "qcow2: cannot create '%s': '%s' is not a "
                                   "directory",
                                   c->path, dir);
        if (lstat(c->path, &st) == 0)
                return vbd_err_set(err, -EEXIST, "qcow2: '%s' exists; not overwriting it", c->path);
        r = check_backing(c, err);
        if (r < 0)
                return r;

        hdr = calloc(1, l.cs);
        buf = calloc(1, l.cs);
        if (!hdr || !buf) {
                r = vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
                goto out;
        }
        r = build_header(c, &l, hdr, &hlen, err);
        if (r < 0)
                goto out;
        /* Our own parser must take what we write. */
        r = qcow2_header_parse(hdr, l.cs, l.nclusters * l.cs, &h, &perr);
        if (r < 0) {
                r = vbd_err_set(err, -EIO, "qcow2: internal error, the new header is refused: %s",
                                perr.msg);
                goto out;
        }

        fd = open(c->path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOCTTY, CREATE_MODE);
        if (fd < 0) {
                r = errno == EEXIST ? vbd_err_set(err, -EEXIST,
                                                  "qcow2: '%s' exists; not overwriting it", c->path)
                                    : vbd_err_set(err, -errno, "qcow2: cannot create '%s': %s",
                                                  c->path, strerror(errno));
                goto out;
        }
        if (fstat(fd, &st) < 0) {
                /* Cannot tell our file from another: leave it. */
                r = vbd_err_set(err, -errno, "qcow2: fstat '%s': %s", c->path, strerror(errno));
                close(fd);
                goto out;
        }
        r = ftruncate(fd, (off_t)(l.nclusters * l.cs)) < 0 ? -errno : 0;
        what = "size";
        if (r == 0) {
                r = write_refcounts(fd, &l, buf);
                what = "write the refcount structures";
        }
        if (r == 0) {
                r = fsync(fd) < 0 ? -errno : 0;
                what = "fsync";
        }
        if (r == 0) {
                r = vbd_pwrite_all(fd, hdr, vbd_align_up(hlen, 512), 0);
                what = "write the header";
        }
        if (r == 0) {
                r = fsync(fd) < 0 ? -errno : 0;
                what = "fsync";
        }
        if (close(fd) < 0 && r == 0) {
                r = -errno;
                what = "close";
        }
        if (r == 0) {
                r = vbd_fsync_dir_of(c->path);
                what = "fsync its directory";
        }
        if (r < 0) {
                struct stat now;

                if (strcmp(what, "size") == 0)
                        vbd_err_set(err, r, "qcow2: cannot make '%s' %llu bytes long: %s", c->path,
                                    (unsigned long long)(l.nclusters * l.cs), strerror(-r));
                else
                        vbd_err_set(err, r, "qcow2: '%s': %s: %s", c->path, what, strerror(-r));
                if (stat(c->path, &now) == 0 && now.st_dev == st.st_dev && now.st_ino == st.st_ino)
                        (void)unlink(c->path);
                goto out;
        }
        vbd_info("'%s': created, qcow2 v3, %llu bytes, cluster %llu%s%s%s%s", c->path,
                 (unsigned long long)c->size, (unsigned long long)l.cs,
                 c->backing ? ", backing " : "", c->backing ? c->backing_fmt : "",
                 c->backing ? ":" : "", c->backing ? c->backing : "");
out:
        free(hdr);
        free(buf);
        return r;
}
