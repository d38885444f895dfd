/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd_image_create("qcow2", ...) checked with the real qemu-img and qemu-io:
 *
 *   - geometry: 1 MiB, 1 GiB and 3 TiB images with 4 KiB, 64 KiB (also the
 *     default) and 2 MiB clusters, with and without a backing file:
 *     'qemu-img check' clean, 'qemu-img info' shows the virtual size,
 *     cluster size, v3 (compat 1.1), 16-bit refcounts, zlib, the backing
 *     file name and format; the header is exactly what the format says
 *     (header_length 112); the file is small and sparse; the driver opens
 *     it with that size and it reads as zeros;
 *   - data written through the driver (real AIO): offsets past 2 GiB, 1 TiB
 *     and the last cluster of a 3 TiB image, and enough 4 KiB clusters for
 *     several refcount blocks (counted in the file), then 'qemu-img check'
 *     clean and 'qemu-img compare' equal to a raw reference made by the raw
 *     driver's create and written through the raw driver;
 *   - data written by qemu-io into a new image (qemu allocating refcount
 *     blocks in our refcount table), then check clean and read back here;
 *   - incremental chains: a full image, an overlay over it and an overlay
 *     over that (backing format qcow2), an overlay over a raw file smaller
 *     than itself, and one with a relative backing name: read through the
 *     driver and through qemu-img, where an overlay has no data the backing
 *     data shows ('qemu-img map' depth), and qemu-img agrees with the model;
 *   - refusals: an existing path (-EEXIST, the file untouched), a missing
 *     directory (-ENOENT, nothing made), bad cluster sizes and sizes, sizes
 *     too large for the cluster size, bad backing files and formats, names
 *     that do not fit; a failure after the file was made (RLIMIT_FSIZE)
 *     removes it.
 *
 * Skips (77) without qemu-img or qemu-io.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aio.h"
#include "check.h"
#include "image.h"
#include "imgtest.h"
#include "vbd/endian.h"
#include "vbd/macro.h"

#define KB (1024ull)
#define MB (1024ull * 1024)
#define GB (1024ull * MB)
#define TB (1024ull * GB)

static char dir[256];
static struct ev_loop *loop;
static struct vbd_aio *aio;

static bool exists(const char *path)
{
        struct stat st;

        return lstat(path, &st) == 0;
}

static int create(const char *drv, const char *path, uint64_t size, uint32_t cs,
                  const char *backing, const char *fmt, struct vbd_err *err)
{
        struct vbd_create c = {
            .path = path, .size = size, .backing = backing, .backing_fmt = fmt, .cluster_size = cs};

        memset(err, 0, sizeof(*err));
        return vbd_image_create(drv, &c, err);
}

/* ---- I/O through the image layer ---- */

struct req {
        struct vbd_io io;
        struct iovec iov;
        int status, calls;
        void *scratch;
};

static unsigned pending;

static void req_done(struct vbd_io *io, int status)
{
        struct req *r = io->opaque;

        r->status = status;
        r->calls++;
        pending--;
}

static int do_io(struct vbd_image *img, enum vbd_op op, uint64_t off, uint64_t len, void *buf)
{
        struct req r = {0};
        int st;

        r.scratch = aligned_alloc(64, (vbd_image_io_scratch_size(img) + 63) & ~63ul);
        r.iov = (struct iovec){buf, len};
        r.io = (struct vbd_io){.op = op,
                               .offset = op == VBD_OP_FLUSH ? 0 : off,
                               .len = op == VBD_OP_FLUSH ? 0 : len,
                               .iov = buf ? &r.iov : NULL,
                               .iovcnt = buf ? 1 : 0,
                               .done = req_done,
                               .opaque = &r,
                               .scratch = r.scratch};
        pending++;
        vbd_image_submit(img, &r.io);
        while (pending)
                ev_run(loop, EVRUN_ONCE);
        CHECK_EQ(r.calls, 1);
        st = r.status;
        free(r.scratch);
        return st;
}

/* A failed open is a failed check. */
static struct vbd_image *img_open(const char *spec, bool ro)
{
        struct vbd_image *img = t_image_open(loop, aio, spec, ro);

        CHECK_MSG(img, "open %s", spec);
        return img;
}

static void *abuf(size_t len)
{
        void *p = aligned_alloc(4096, vbd_align_up(len, 4096));

        memset(p, 0, vbd_align_up(len, 4096));
        return p;
}

static uint8_t pat(uint64_t seed, uint64_t off)
{
        uint64_t x = (off >> 3) * 0x9e3779b97f4a7c15ull + seed * 0xbf58476d1ce4e5b9ull;

        return (uint8_t)(x >> 56 ^ off);
}

static void fill(uint8_t *p, size_t len, uint64_t seed, uint64_t off)
{
        for (size_t i = 0; i < len; i++)
                p[i] = pat(seed, off + i);
}

static bool all_zero(const uint8_t *p, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if (p[i])
                        return false;
        return true;
}

/* ---- what qemu says ---- */

/* qemu-img check: clean (exit 0, no errors, no leaks, nothing corrupt). */
static void check_clean(const char *path, const char *what)
{
        json_t *j = t_sh_json("qemu-img check --output=json '%s' 2>/dev/null", path);

        if (!j) {
                CHECK_FAIL("%s: qemu-img check of %s failed", what, path);
                (void)t_sh("qemu-img check '%s' | head -20 >&2", path);
                return;
        }
        CHECK_MSG(t_jint(j, "check-errors") == 0, "%s", what);
        CHECK_MSG(t_jint(j, "leaks") <= 0 && t_jint(j, "corruptions") <= 0,
                  "%s: leaks %lld, "
                  "corruptions %lld",
                  what, t_jint(j, "leaks"), t_jint(j, "corruptions"));
        json_decref(j);
}

/* qemu-img info agrees with what was asked. */
static void check_info(const char *path, uint64_t size, uint64_t cs, const char *backing,
                       const char *fmt, const char *what)
{
        json_t *j = t_sh_json("qemu-img info --output=json '%s'", path), *data;

        if (!j) {
                CHECK_FAIL("%s: qemu-img info failed", what);
                return;
        }
        data = json_object_get(json_object_get(j, "format-specific"), "data");
        CHECK_MSG(strcmp(t_jstr(j, "format"), "qcow2") == 0, "%s: format %s", what,
                  t_jstr(j, "format"));
        CHECK_MSG(t_jint(j, "virtual-size") == (long long)size, "%s: virtual-size %lld", what,
                  t_jint(j, "virtual-size"));
        CHECK_MSG(t_jint(j, "cluster-size") == (long long)cs, "%s: cluster-size %lld", what,
                  t_jint(j, "cluster-size"));
        CHECK_MSG(strcmp(t_jstr(data, "compat"), "1.1") == 0, "%s: compat %s", what,
                  t_jstr(data, "compat"));
        CHECK_MSG(t_jint(data, "refcount-bits") == 16, "%s", what);
        CHECK_MSG(strcmp(t_jstr(data, "compression-type"), "zlib") == 0, "%s", what);
        CHECK_MSG(json_is_false(json_object_get(data, "lazy-refcounts")), "%s", what);
        CHECK_MSG(json_is_false(json_object_get(data, "corrupt")), "%s", what);
        CHECK_MSG(json_is_false(json_object_get(j, "dirty-flag")), "%s", what);
        if (backing) {
                CHECK_MSG(strcmp(t_jstr(j, "backing-filename"), backing) == 0,
                          "%s: backing-filename '%s'", what, t_jstr(j, "backing-filename"));
                CHECK_MSG(strcmp(t_jstr(j, "backing-filename-format"), fmt) == 0,
                          "%s: backing-filename-format '%s'", what,
                          t_jstr(j, "backing-filename-format"));
        } else {
                CHECK_MSG(!json_object_get(j, "backing-filename") &&
                              !json_object_get(j, "backing-filename-format"),
                          "%s: a backing file", what);
        }
        json_decref(j);
}

/* The header fields, read back from the file: exactly the layout of qcow2-create.c. */
static void check_header(const char *path, uint64_t size, uint64_t cs, const char *backing,
                         const char *fmt, const char *what)
{
        uint8_t h[4096] = {0};
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        uint64_t l1_entries = (size + cs * (cs / 8) - 1) / (cs * (cs / 8));
        struct stat st;
        size_t off = 112;

        REQUIRE(fd >= 0 && fstat(fd, &st) == 0);
        REQUIRE(pread(fd, h, sizeof(h), 0) == (ssize_t)(st.st_size < 4096 ? st.st_size : 4096));
        close(fd);
        CHECK_MSG(vbd_get_be32(h) == 0x514649fb && vbd_get_be32(h + 4) == 3, "%s", what);
        CHECK_MSG(vbd_get_be32(h + 20) == (uint32_t)__builtin_ctzll(cs), "%s", what);
        CHECK_MSG(vbd_get_be64(h + 24) == size, "%s", what);
        CHECK_MSG(vbd_get_be32(h + 32) == 0, "%s: crypt_method", what);
        CHECK_MSG(vbd_get_be32(h + 36) == l1_entries, "%s: l1_size %u, want %llu", what,
                  vbd_get_be32(h + 36), (unsigned long long)l1_entries);
        CHECK_MSG(vbd_get_be64(h + 48) == cs, "%s: refcount table at cluster 1", what);
        CHECK_MSG(vbd_get_be32(h + 60) == 0 && vbd_get_be64(h + 64) == 0, "%s: snapshots", what);
        CHECK_MSG(vbd_get_be64(h + 72) == 0 && vbd_get_be64(h + 80) == 0 &&
                      vbd_get_be64(h + 88) == 0,
                  "%s: feature bits", what);
        CHECK_MSG(vbd_get_be32(h + 96) == 4, "%s: refcount_order", what);
        CHECK_MSG(vbd_get_be32(h + 100) == 112, "%s: header_length %u", what,
                  vbd_get_be32(h + 100));
        CHECK_MSG(all_zero(h + 104, 8), "%s: compression_type and padding", what);
        /* L1 table: the end of the file, cluster aligned. */
        CHECK_MSG(vbd_get_be64(h + 40) % cs == 0 &&
                      vbd_get_be64(h + 40) + vbd_align_up(l1_entries * 8, cs) ==
                          (uint64_t)st.st_size,
                  "%s: L1 at %llu, file %lld", what, (unsigned long long)vbd_get_be64(h + 40),
                  (long long)st.st_size);
        if (backing) {
                size_t flen = strlen(fmt), blen = strlen(backing);

                CHECK_MSG(vbd_get_be32(h + off) == 0xe2792aca &&
                              vbd_get_be32(h + off + 4) == flen &&
                              memcmp(h + off + 8, fmt, flen) == 0,
                          "%s: backing format extension", what);
                off += 8 + vbd_align_up(flen, 8);
                CHECK_MSG(vbd_get_be64(h + off) == 0, "%s: end of extensions", what);
                off += 8;
                CHECK_MSG(vbd_get_be64(h + 8) == off && vbd_get_be32(h + 16) == blen &&
                              (off + blen > sizeof(h) || memcmp(h + off, backing, blen) == 0),
                          "%s: backing name at %llu (%u bytes)", what,
                          (unsigned long long)vbd_get_be64(h + 8), vbd_get_be32(h + 16));
        } else {
                CHECK_MSG(vbd_get_be64(h + 8) == 0 && vbd_get_be32(h + 16) == 0, "%s", what);
                CHECK_MSG(vbd_get_be64(h + off) == 0, "%s: end of extensions", what);
        }
}

/* Refcount blocks in use: nonzero refcount table entries. */
static unsigned count_rbs(const char *path)
{
        uint8_t h[72];
        uint64_t rt, n, cs;
        unsigned count = 0;
        uint8_t *t;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        REQUIRE(fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h));
        cs = 1ull << vbd_get_be32(h + 20);
        rt = vbd_get_be64(h + 48);
        n = vbd_get_be32(h + 56) * cs;
        t = malloc(n);
        REQUIRE(t && pread(fd, t, n, (off_t)rt) == (ssize_t)n);
        for (uint64_t i = 0; i < n; i += 8)
                count += vbd_get_be64(t + i) != 0;
        free(t);
        close(fd);
        return count;
}

/* ---- geometry ---- */

static void test_geometry(uint64_t size, uint32_t cs, bool with_backing)
{
        const char *path = t_path(dir, "g.qcow2"), *base = t_path(dir, "g-base.qcow2");
        uint64_t want_cs = cs ? cs : 65536;
        struct vbd_err err;
        struct vbd_image *img;
        char what[128], spec[1300];
        struct stat st;
        uint8_t *buf;

        snprintf(what, sizeof(what), "size %llu cluster %u%s", (unsigned long long)size, cs,
                 with_backing ? " backing" : "");
        if (with_backing) {
                CHECK_R(create("qcow2", base, MB, 65536, NULL, NULL, &err), err.msg);
        }
        CHECK_R(create("qcow2", path, size, cs, with_backing ? base : NULL,
                       with_backing ? "qcow2" : NULL, &err),
                err.msg);
        REQUIRE(stat(path, &st) == 0);
        CHECK_EQ(st.st_mode & 0777, 0644 & ~022); /* the test runs with umask 022 */
        check_clean(path, what);
        check_info(path, size, want_cs, with_backing ? base : NULL, "qcow2", what);
        check_header(path, size, want_cs, with_backing ? base : NULL, "qcow2", what);
        /* Sparse: only the used start of the header, the refcount table's first
         * cluster and the refcount blocks are written; the L1 table is a hole. */
        CHECK_MSG((uint64_t)st.st_blocks * 512 <= 64 * KB, "%s: %lld blocks", what,
                  (long long)st.st_blocks);

        /* Our driver: opens it for writing, the size, zeros at both ends; closing
         * leaves it clean (no dirty bit, nothing leaked). */
        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = img_open(spec, false);
        if (img) {
                buf = abuf(64 * KB);
                memset(buf, 0xee, 64 * KB);
                CHECK_EQ(vbd_image_info(img)->size, size);
                CHECK_EQ(do_io(img, VBD_OP_READ, 0, 64 * KB < size ? 64 * KB : size, buf), 0);
                CHECK(all_zero(buf, 64 * KB < size ? 64 * KB : size));
                memset(buf, 0xee, 4096);
                CHECK_EQ(do_io(img, VBD_OP_READ, size - 4096, 4096, buf), 0);
                CHECK(all_zero(buf, 4096));
                t_image_close(loop, img);
                free(buf);
        }
        check_clean(path, what);
        /* The same as qemu-img's own empty image. */
        CHECK_MSG(t_sh("qemu-img create -q -f qcow2 -o cluster_size=%llu '%s.ref' %llu && "
                       "qemu-img compare -q '%s' '%s.ref'",
                       (unsigned long long)want_cs, path, (unsigned long long)size, path,
                       path) == 0,
                  "%s: differs from qemu-img's", what);
        (void)t_sh("rm -f '%s' '%s.ref' '%s'", path, path, base);
}

/* ---- data through the driver ---- */

struct wr {
        uint64_t off, len;
};

/* Writes the runs in ws (seed i for run i) into a new qcow2 and a new raw image of
 * size bytes, then compares them with qemu-img. */
static void test_write(uint64_t size, uint32_t cs, const struct wr *ws, unsigned n,
                       unsigned want_rbs)
{
        const char *q = t_path(dir, "w.qcow2"), *r = t_path(dir, "w.raw");
        struct vbd_image *qi, *ri;
        struct vbd_err err;
        char what[128], spec[1300];
        uint64_t maxlen = 0;
        uint8_t *buf, *back;

        snprintf(what, sizeof(what), "writes, size %llu cluster %u", (unsigned long long)size, cs);
        for (unsigned i = 0; i < n; i++)
                maxlen = ws[i].len > maxlen ? ws[i].len : maxlen;
        buf = abuf(maxlen);
        back = abuf(maxlen);
        CHECK_R(create("qcow2", q, size, cs, NULL, NULL, &err), err.msg);
        CHECK_R(create("raw", r, size, 0, NULL, NULL, &err), err.msg);
        snprintf(spec, sizeof(spec), "qcow2:%s", q);
        qi = img_open(spec, false);
        snprintf(spec, sizeof(spec), "raw:%s", r);
        ri = img_open(spec, false);
        if (!qi || !ri)
                goto out;
        for (unsigned i = 0; i < n; i++) {
                fill(buf, ws[i].len, i + 1, ws[i].off);
                CHECK_MSG(do_io(qi, VBD_OP_WRITE, ws[i].off, ws[i].len, buf) == 0, "%s: write %u",
                          what, i);
                CHECK_MSG(do_io(ri, VBD_OP_WRITE, ws[i].off, ws[i].len, buf) == 0,
                          "%s: raw write %u", what, i);
        }
        CHECK_EQ(do_io(qi, VBD_OP_FLUSH, 0, 0, NULL), 0);
        /* read back through the driver (the last write wins where runs overlap) */
        for (unsigned i = 0; i < n; i++) {
                bool later = false;

                for (unsigned k = i + 1; k < n; k++)
                        later |=
                            ws[k].off < ws[i].off + ws[i].len && ws[i].off < ws[k].off + ws[k].len;
                if (later)
                        continue;
                fill(buf, ws[i].len, i + 1, ws[i].off);
                CHECK_EQ(do_io(qi, VBD_OP_READ, ws[i].off, ws[i].len, back), 0);
                CHECK_MSG(memcmp(buf, back, ws[i].len) == 0, "%s: read back %u", what, i);
        }
out:
        t_image_close(loop, qi);
        t_image_close(loop, ri);
        check_clean(q, what);
        CHECK_MSG(t_sh("qemu-img compare -q -f qcow2 -F raw '%s' '%s'", q, r) == 0,
                  "%s: qemu-img compare with the raw reference differs", what);
        if (want_rbs)
                CHECK_MSG(count_rbs(q) >= want_rbs, "%s: %u refcount blocks, want >= %u", what,
                          count_rbs(q), want_rbs);
        /* and qemu-img sees the data: the image differs from an empty one */
        CHECK(t_sh("qemu-img create -q -f qcow2 '%s.empty' %llu", q, (unsigned long long)size) ==
              0);
        CHECK_MSG(t_sh("qemu-img compare -q '%s' '%s.empty'", q, q) == 1,
                  "%s: qemu-img reads the image as empty", what);
        (void)t_sh("rm -f '%s' '%s' '%s.empty'", q, r, q);
        free(buf);
        free(back);
}

static void test_writes(void)
{
        /* 3 TiB, 4 KiB clusters: a refcount block covers 2048 clusters (8 MiB), so
         * the metadata (about 3850 clusters: the 12 MiB L1 table, the 3 MiB
         * refcount table) and 24 MiB of data need at least five blocks. */
        static const struct wr w4k[] = {
            {0, 64 * KB},
            {2 * GB - 4 * KB, 8 * KB}, /* across 2 GiB */
            {4 * GB + 512, 3 * KB},    /* partial clusters past 4 GiB */
            {5 * GB, 24 * MB},         /* many clusters: more refcount blocks */
            {5 * GB + 8 * MB, 4 * KB}, /* rewrite inside it */
            {TB + 12 * KB, 4 * KB},
            {3 * TB - 4 * KB, 4 * KB}, /* the last cluster */
        };
        static const struct wr w64k[] = {
            {0, 128 * KB},
            {2 * GB + 64 * KB, 192 * KB},
            {3 * GB - 512, 1024},
            {2 * TB + 5 * MB, 1 * MB},
            {3 * TB - 64 * KB, 64 * KB},
        };
        static const struct wr w2m[] = {
            {0, 2 * MB},
            {2 * GB + 2 * MB, 4 * MB},
            {(5 * GB) / 2, 4096}, /* a partial cluster */
            {3 * TB - 2 * MB, 2 * MB},
        };
        static const struct wr w1g[] = {
            {0, 64 * KB}, {GB / 2 + 4096, 128 * KB}, {GB - 64 * KB, 64 * KB}};
        static const struct wr w1m[] = {
            {0, 4096}, {512 * KB, 64 * KB}, {MB - 512, 512}, {4096, 4096}, /* rewrite */
        };

        test_write(3 * TB, 4096, w4k, VBD_ARRAY_SIZE(w4k), 5);
        test_write(3 * TB, 65536, w64k, VBD_ARRAY_SIZE(w64k), 1);
        test_write(3 * TB, 2 * MB, w2m, VBD_ARRAY_SIZE(w2m), 1);
        test_write(MB, 4096, w1m, VBD_ARRAY_SIZE(w1m), 1);
        test_write(GB, 65536, w1g, VBD_ARRAY_SIZE(w1g), 1);
}

/* qemu-io writes into an image we made (it allocates refcount blocks in our
 * refcount table); we read back what it wrote. */
static void test_qemu_writes(uint32_t cs)
{
        const char *path = t_path(dir, "qw.qcow2");
        struct vbd_image *img;
        struct vbd_err err;
        char spec[1300], what[64];
        uint8_t *buf = abuf(MB);

        snprintf(what, sizeof(what), "qemu-io writes, cluster %u", cs);
        CHECK_R(create("qcow2", path, 3 * TB, cs, NULL, NULL, &err), err.msg);
        CHECK_MSG(t_sh("qemu-io -f qcow2 -c 'write -P 0x5a 0 20M' -c 'write -P 0xa5 %llu 1M' "
                       "-c 'write -P 0x3c %llu 4096' '%s' >/dev/null",
                       2 * TB, 3 * TB - 4096, path) == 0,
                  "%s: qemu-io", what);
        check_clean(path, what);
        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = img_open(spec, true);
        if (img) {
                static const struct {
                        uint64_t off;
                        uint8_t v;
                } probes[] = {{0, 0x5a},      {19 * MB, 0x5a},         {20 * MB, 0},
                              {2 * TB, 0xa5}, {3 * TB - 4096 - MB, 0}, {3 * TB - 4096, 0x3c}};

                for (size_t i = 0; i < VBD_ARRAY_SIZE(probes); i++) {
                        size_t len = probes[i].off == 3 * TB - 4096 ? 4096 : MB;
                        bool ok = true;

                        CHECK_EQ(do_io(img, VBD_OP_READ, probes[i].off, len, buf), 0);
                        for (size_t k = 0; k < len; k++)
                                ok &= buf[k] == probes[i].v;
                        CHECK_MSG(ok, "%s: at %llu", what, (unsigned long long)probes[i].off);
                }
                t_image_close(loop, img);
        }
        unlink(path);
        free(buf);
}

/* ---- incremental chains ---- */

/* qemu-img map: the depth of the layer that has offset off (0: the image itself). */
static int map_depth(const char *path, uint64_t off)
{
        json_t *j = t_sh_json("qemu-img map --output=json '%s'", path), *e;
        size_t i;
        int depth = -1;

        json_array_foreach(j, i, e)
        {
                uint64_t s = (uint64_t)t_jint(e, "start"), l = (uint64_t)t_jint(e, "length");

                if (off >= s && off < s + l && json_is_true(json_object_get(e, "present")))
                        depth = (int)t_jint(e, "depth");
        }
        json_decref(j);
        return depth;
}

/* Write runs of seed into img and the model. */
static void write_runs(struct vbd_image *img, uint8_t *model, const struct wr *ws, unsigned n,
                       uint64_t seed)
{
        for (unsigned i = 0; i < n; i++) {
                uint8_t *b = abuf(ws[i].len);

                fill(b, ws[i].len, seed, ws[i].off);
                CHECK_EQ(do_io(img, VBD_OP_WRITE, ws[i].off, ws[i].len, b), 0);
                memcpy(model + ws[i].off, b, ws[i].len);
                free(b);
        }
        CHECK_EQ(do_io(img, VBD_OP_FLUSH, 0, 0, NULL), 0);
}

/* The image reads as model, through the driver and through qemu-img convert. */
static void same_as_model(const char *path, const uint8_t *model, uint64_t size, const char *what)
{
        char spec[1300], raw[1300];
        struct vbd_image *img;
        uint8_t *buf = abuf(size);
        int fd;

        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = img_open(spec, true);
        if (img) {
                CHECK_EQ(do_io(img, VBD_OP_READ, 0, size, buf), 0);
                CHECK_MSG(memcmp(buf, model, size) == 0, "%s: the driver reads other data", what);
                t_image_close(loop, img);
        }
        check_clean(path, what);
        snprintf(raw, sizeof(raw), "%s.conv", path);
        CHECK(t_sh("qemu-img convert -O raw '%s' '%s'", path, raw) == 0);
        fd = open(raw, O_RDONLY | O_CLOEXEC);
        memset(buf, 0xee, size);
        CHECK(fd >= 0 && pread(fd, buf, size, 0) == (ssize_t)size);
        CHECK_MSG(memcmp(buf, model, size) == 0, "%s: qemu reads other data", what);
        if (fd >= 0)
                close(fd);
        unlink(raw);
        free(buf);
}

static void test_chain(void)
{
        const uint64_t size = 64 * MB, cs = 64 * KB;
        const char *full = t_path(dir, "full.qcow2"), *inc1 = t_path(dir, "inc1.qcow2"),
                   *inc2 = t_path(dir, "inc2.qcow2");
        /* a full backup, then two incrementals of whole clusters (and one partial
         * write, which copies the rest of its cluster from the backing file) */
        static const struct wr w0[] = {
            {0, 16 * 64 * KB}, {400 * 64 * KB, 10 * 64 * KB}, {64 * MB - 64 * KB, 64 * KB}};
        static const struct wr w1[] = {{8 * 64 * KB, 4 * 64 * KB},
                                       {600 * 64 * KB, 4 * 64 * KB},
                                       {64 * MB - 64 * KB + 4096, 512}};
        static const struct wr w2[] = {{10 * 64 * KB, 64 * KB}, {700 * 64 * KB, 2 * 64 * KB}};
        uint8_t *model = calloc(1, size);
        struct vbd_image *img;
        struct vbd_err err;
        char spec[1300];

        CHECK_R(create("qcow2", full, size, (uint32_t)cs, NULL, NULL, &err), err.msg);
        snprintf(spec, sizeof(spec), "qcow2:%s", full);
        img = img_open(spec, false);
        if (img) {
                write_runs(img, model, w0, VBD_ARRAY_SIZE(w0), 1);
                t_image_close(loop, img);
        }
        same_as_model(full, model, size, "full");

        CHECK_R(create("qcow2", inc1, size, (uint32_t)cs, full, "qcow2", &err), err.msg);
        check_info(inc1, size, cs, full, "qcow2", "inc1");
        same_as_model(inc1, model, size, "inc1 before writes: all from the backing file");
        snprintf(spec, sizeof(spec), "qcow2:%s", inc1);
        img = img_open(spec, false);
        if (img) {
                write_runs(img, model, w1, VBD_ARRAY_SIZE(w1), 2);
                t_image_close(loop, img);
        }
        same_as_model(inc1, model, size, "inc1");
        CHECK_EQ(map_depth(inc1, 0), 1);              /* backing data, not in the overlay */
        CHECK_EQ(map_depth(inc1, 8 * 64 * KB), 0);    /* overwritten */
        CHECK_EQ(map_depth(inc1, 600 * 64 * KB), 0);  /* new */
        CHECK_EQ(map_depth(inc1, 64 * MB - 1), 0);    /* the partial write's cluster */
        CHECK_EQ(map_depth(inc1, 300 * 64 * KB), -1); /* nowhere: zeros */

        CHECK_R(create("qcow2", inc2, size, (uint32_t)cs, inc1, "qcow2", &err), err.msg);
        snprintf(spec, sizeof(spec), "qcow2:%s", inc2);
        img = img_open(spec, false);
        if (img) {
                write_runs(img, model, w2, VBD_ARRAY_SIZE(w2), 3);
                t_image_close(loop, img);
        }
        same_as_model(inc2, model, size, "inc2");
        CHECK_EQ(map_depth(inc2, 0), 2);
        CHECK_EQ(map_depth(inc2, 8 * 64 * KB), 1);
        CHECK_EQ(map_depth(inc2, 10 * 64 * KB), 0);
        CHECK_MSG(
            t_sh("qemu-img info --backing-chain '%s' | grep -c '^image:' | grep -qx 3", inc2) == 0,
            "qemu-img sees a chain of 3");
        /* the incrementals hold only what changed */
        {
                struct stat a, b;

                REQUIRE(stat(full, &a) == 0 && stat(inc2, &b) == 0);
                CHECK_MSG(b.st_size < a.st_size, "inc2 %lld bytes, full %lld", (long long)b.st_size,
                          (long long)a.st_size);
        }
        unlink(inc2);
        unlink(inc1);
        unlink(full);
        free(model);
}

/* A raw backing file smaller than the overlay, and a relative backing name. */
static void test_backing_raw_relative(void)
{
        const uint64_t size = 8 * MB;
        const char *base = t_path(dir, "small.raw"), *ov = t_path(dir, "ov.qcow2"),
                   *rel = t_path(dir, "rel.qcow2");
        static const struct wr w[] = {{MB - 4096, 8192}, {6 * MB, 4096}};
        uint8_t *model = calloc(1, size);
        struct vbd_image *img;
        struct vbd_err err;
        char spec[1300];
        int fd;

        /* 1 MiB of data: the overlay reads it, then zeros */
        fd = open(base, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        fill(model, MB, 7, 0);
        REQUIRE(write(fd, model, MB) == (ssize_t)MB);
        close(fd);
        CHECK_R(create("qcow2", ov, size, 4096, base, "raw", &err), err.msg);
        check_info(ov, size, 4096, base, "raw", "raw backing");
        check_header(ov, size, 4096, base, "raw", "raw backing");
        same_as_model(ov, model, size, "raw backing, before writes");
        snprintf(spec, sizeof(spec), "qcow2:%s", ov);
        img = img_open(spec, false);
        if (img) {
                write_runs(img, model, w, VBD_ARRAY_SIZE(w), 8);
                t_image_close(loop, img);
        }
        same_as_model(ov, model, size, "raw backing");

        /* relative to the image's directory, stored as given */
        CHECK_R(create("qcow2", rel, size, 0, "ov.qcow2", "qcow2", &err), err.msg);
        check_info(rel, size, 65536, "ov.qcow2", "qcow2", "relative backing");
        same_as_model(rel, model, size, "relative backing");
        /* a long one (1000 bytes of "./"): fits in a 64 KiB cluster, not a 512-byte one */
        {
                char name[1100] = "";

                while (strlen(name) < 1000 - strlen("ov.qcow2"))
                        strcat(name, "./");
                strcat(name, "ov.qcow2");
                unlink(rel);
                CHECK_R(create("qcow2", rel, size, 65536, name, "qcow2", &err), err.msg);
                check_info(rel, size, 65536, name, "qcow2", "long backing name");
                check_header(rel, size, 65536, name, "qcow2", "long backing name");
                same_as_model(rel, model, size, "long backing name");
                unlink(rel);
                CHECK_ERR(create("qcow2", rel, size, 512, name, "qcow2", &err), -ENAMETOOLONG);
                CHECK(strstr(err.msg, "first cluster") != NULL);
                CHECK(!exists(rel));
        }
        unlink(rel);
        unlink(ov);
        unlink(base);
        free(model);
}

/* ---- refusals ---- */

static void test_refusals(void)
{
        const char *path = t_path(dir, "r.qcow2"), *base = t_path(dir, "r-base.qcow2"),
                   *rawf = t_path(dir, "r-base.raw");
        struct vbd_err err;
        struct stat before, st;
        char buf[4096], other[1300];
        int fd;

        /* an existing file: -EEXIST, untouched */
        fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        memset(buf, 'x', sizeof(buf));
        REQUIRE(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf));
        close(fd);
        REQUIRE(stat(path, &before) == 0);
        CHECK_ERR(create("qcow2", path, GB, 0, NULL, NULL, &err), -EEXIST);
        CHECK(strstr(err.msg, "exists") && strstr(err.msg, path));
        REQUIRE(stat(path, &st) == 0);
        CHECK(st.st_ino == before.st_ino && st.st_size == 4096 && (st.st_mode & 0777) == 0600 &&
              st.st_mtim.tv_sec == before.st_mtim.tv_sec &&
              st.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        memset(buf, 0, sizeof(buf));
        CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf) && buf[0] == 'x' &&
              buf[4095] == 'x');
        close(fd);
        /* ... also an existing image as the backing file of itself */
        CHECK_ERR(create("qcow2", path, GB, 0, path, "raw", &err), -EEXIST);
        unlink(path);

        /* a missing directory: -ENOENT naming it, nothing made */
        snprintf(other, sizeof(other), "%s/no-such-dir/x.qcow2", dir);
        CHECK_ERR(create("qcow2", other, GB, 0, NULL, NULL, &err), -ENOENT);
        CHECK_MSG(strstr(err.msg, "no-such-dir") && strstr(err.msg, "directory"), "%s", err.msg);
        CHECK(!exists(t_path(dir, "no-such-dir")));
        /* a file where the directory should be */
        snprintf(other, sizeof(other), "%s/r-base.raw/x.qcow2", dir);
        fd = open(rawf, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0 && write(fd, buf, 512) == 512);
        close(fd);
        CHECK_ERR(create("qcow2", other, GB, 0, NULL, NULL, &err), -ENOTDIR);

        /* cluster sizes and sizes; nothing made */
        CHECK_ERR(create("qcow2", path, GB, 256, NULL, NULL, &err), -EINVAL);
        CHECK(strstr(err.msg, "512 bytes to 2 MiB") != NULL);
        CHECK_ERR(create("qcow2", path, GB, 4 * MB, NULL, NULL, &err), -EINVAL);
        CHECK_ERR(create("qcow2", path, GB, 3000, NULL, NULL, &err), -EINVAL);
        CHECK_ERR(create("qcow2", path, 1000, 0, NULL, NULL, &err), -EINVAL);
        CHECK(strstr(err.msg, "multiple of 512") != NULL);
        CHECK_ERR(create("qcow2", path, 0, 0, NULL, NULL, &err), -EINVAL);
        /* the L1 table would be over 32 MiB (qemu-img refuses these too) */
        CHECK_ERR(create("qcow2", path, 9 * TB, 4096, NULL, NULL, &err), -EFBIG);
        CHECK(strstr(err.msg, "use larger clusters") != NULL);
        CHECK(t_sh("qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 9T 2>/dev/null", path) !=
              0);
        unlink(path);
        CHECK_ERR(create("qcow2", path, 129 * GB, 512, NULL, NULL, &err), -EFBIG);
        CHECK_ERR(create("qcow2", path, UINT64_MAX - 511, 2 * MB, NULL, NULL, &err), -EFBIG);
        /* 8 TiB with 4 KiB clusters: qemu-img makes it, but written in full it would
         * need a refcount table over 8 MiB, which neither qemu nor we can have */
        CHECK_ERR(create("qcow2", path, 8 * TB, 4096, NULL, NULL, &err), -EFBIG);
        CHECK(strstr(err.msg, "refcount table") != NULL);
        /* just below: fine */
        CHECK_R(create("qcow2", path, 8 * TB - 64 * GB, 4096, NULL, NULL, &err), err.msg);
        check_clean(path, "8 TiB - 64 GiB, 4 KiB clusters");
        unlink(path);
        /* 2 MiB clusters: host offsets stop at 2^56 (64 PiB) */
        CHECK_ERR(create("qcow2", path, 1ull << 57, 2 * MB, NULL, NULL, &err), -EFBIG);
        CHECK_R(create("qcow2", path, 1ull << 55, 2 * MB, NULL, NULL, &err), err.msg);
        check_clean(path, "32 PiB, 2 MiB clusters");
        check_info(path, 1ull << 55, 2 * MB, NULL, NULL, "32 PiB, 2 MiB clusters");
        unlink(path);
        CHECK(!exists(path));

        /* backing files */
        CHECK_R(create("qcow2", base, MB, 0, NULL, NULL, &err), err.msg);
        CHECK_ERR(create("qcow2", path, GB, 0, t_path(dir, "missing.qcow2"), "qcow2", &err),
                  -ENOENT);
        CHECK(strstr(err.msg, "missing.qcow2") != NULL);
        CHECK_ERR(create("qcow2", path, GB, 0, base, NULL, &err), -EINVAL);
        CHECK(strstr(err.msg, "format") != NULL);
        CHECK_ERR(create("qcow2", path, GB, 0, base, "", &err), -EINVAL);
        CHECK_ERR(create("qcow2", path, GB, 0, base, "vmdk", &err), -ENOTSUP);
        CHECK_ERR(create("qcow2", path, GB, 0, rawf, "qcow2", &err), -EINVAL);
        CHECK(strstr(err.msg, "not a qcow2 image") != NULL);
        CHECK_ERR(create("qcow2", path, GB, 0, NULL, "qcow2", &err), -EINVAL);
        CHECK_ERR(create("qcow2", path, GB, 0, "", "qcow2", &err), -EINVAL);
        CHECK_ERR(create("qcow2", path, GB, 0, dir, "raw", &err), -EINVAL); /* a directory */
        CHECK_ERR(create("qcow2", path, GB, 0, "a,b.qcow2", "qcow2", &err), -EINVAL);
        CHECK(strstr(err.msg, "','") != NULL);
        {
                char name[1100];

                memset(name, 'n', 1024);
                name[1024] = '\0';
                CHECK_ERR(create("qcow2", path, GB, 0, name, "qcow2", &err), -ENAMETOOLONG);
        }
        CHECK_ERR(create("qcow2", t_path(dir, "a,b.qcow2"), GB, 0, NULL, NULL, &err), -EINVAL);
        CHECK(!exists(path));
        CHECK(!exists(t_path(dir, "a,b.qcow2")));

        /* a failure once the file exists (the file size limit, at ftruncate):
         * removed again */
        {
                pid_t pid = fork();
                int status;

                REQUIRE(pid >= 0);
                if (pid == 0) {
                        struct rlimit rl = {1 * MB, 1 * MB};

                        signal(SIGXFSZ, SIG_IGN);
                        if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
                                _exit(100);
                        /* 3 TiB with 4 KiB clusters: a 15 MiB file */
                        _exit(-create("qcow2", path, 3 * TB, 4096, NULL, NULL, &err));
                }
                REQUIRE(waitpid(pid, &status, 0) == pid);
                CHECK(WIFEXITED(status));
                CHECK_MSG(WEXITSTATUS(status) == EFBIG, "exit %d", WEXITSTATUS(status));
                CHECK(!exists(path));
        }
        unlink(base);
        unlink(rawf);
}

int main(void)
{
        const char *tmp = getenv("TMPDIR");
        static const uint64_t sizes[] = {MB, GB, 3 * TB};
        static const uint32_t clusters[] = {4096, 65536, 2 * MB};

        if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
            system("qemu-io --version >/dev/null 2>&1") != 0) {
                fprintf(stderr, "qemu-img or qemu-io not found: skipped\n");
                return 77;
        }
        snprintf(dir, sizeof(dir), "%s/qcow2-create.XXXXXX", tmp ? tmp : "/var/tmp");
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        umask(022);
        signal(SIGPIPE, SIG_IGN);
        loop = ev_default_loop(0);
        aio = vbd_aio_new(loop, 256);
        if (!aio) {
                perror("vbd_aio_new");
                return 1;
        }

        for (size_t i = 0; i < VBD_ARRAY_SIZE(sizes); i++)
                for (size_t k = 0; k < VBD_ARRAY_SIZE(clusters); k++) {
                        test_geometry(sizes[i], clusters[k], false);
                        test_geometry(sizes[i], clusters[k], true);
                }
        test_geometry(GB, 0, false); /* the default: 64 KiB */
        test_geometry(MB, 512, true);
        test_writes();
        test_qemu_writes(4096);
        test_qemu_writes(65536);
        test_chain();
        test_backing_raw_relative();
        test_refusals();

        vbd_aio_free(aio);
        (void)t_sh("rm -rf '%s'", dir);
        return check_result("test-qcow2-create");
}
