/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2 driver through the image layer with a real AIO engine, checked
 * with the real qemu-img: every scenario keeps a model of the disk, and at
 * the end the image must pass 'qemu-img check' and 'qemu-img convert -O raw'
 * must equal the model.
 *
 *   - random writes of random sizes (partial clusters, runs of clusters),
 *     many in flight, for cluster sizes 512 B .. 2 MiB and v2/v3 images;
 *   - clusters smaller than a page are never written with O_DIRECT (they
 *     share pages with buffered metadata; direct=on is refused);
 *   - two writes to the two halves of one new cluster at once (both
 *     survive), and overlapping writes in flight;
 *   - write-zeroes and discard (whole and partial clusters, with and without
 *     MAY_UNMAP, v2 and v3, with a backing file): reads zeros, space freed;
 *   - backing chains (qcow2 -> qcow2 -> raw) with partial writes (COW from
 *     the backing file), compressed clusters overwritten, copy-on-read;
 *   - crash: a child process writes, flushes, writes more (allocating) and
 *     is killed with SIGKILL at a random moment; the image must pass
 *     'qemu-img check' (leaks allowed) and hold every write flushed.
 *
 * Skips (77) without qemu-img.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aio.h"
#include "check.h"
#include "image.h"
#include "imgtest.h"
#include "vbd/macro.h"

#define MB (1024ull * 1024)

static char dir[256];
static struct ev_loop *loop;
static struct vbd_aio *aio;
static uint64_t rng = 0x12345678;

static uint64_t rnd(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

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

static struct req *req_new(struct vbd_image *img, enum vbd_op op, uint64_t off, uint64_t len,
                           void *buf, uint32_t flags)
{
        struct req *r = calloc(1, sizeof(*r));

        r->scratch = aligned_alloc(64, (vbd_image_io_scratch_size(img) + 63) & ~63ul);
        r->iov = (struct iovec){buf, len};
        r->io = (struct vbd_io){.op = op,
                                .flags = flags,
                                .offset = off,
                                .len = op == VBD_OP_FLUSH ? 0 : len,
                                .iov = buf ? &r->iov : NULL,
                                .iovcnt = buf ? 1 : 0,
                                .done = req_done,
                                .opaque = r,
                                .scratch = r->scratch};
        if (op == VBD_OP_FLUSH)
                r->io.offset = 0;
        return r;
}

static void req_free(struct req *r)
{
        free(r->scratch);
        free(r);
}

static void run(void)
{
        while (pending)
                ev_run(loop, EVRUN_ONCE);
}

/* Submit one op and wait for it. */
static int do_io(struct vbd_image *img, enum vbd_op op, uint64_t off, uint64_t len, void *buf,
                 uint32_t flags)
{
        struct req *r = req_new(img, op, off, len, buf, flags);
        int st;

        pending++;
        vbd_image_submit(img, &r->io);
        run();
        CHECK(r->calls == 1);
        st = r->status;
        req_free(r);
        return st;
}

static void *abuf(size_t len)
{
        void *p = aligned_alloc(4096, (len + 4095) & ~4095ul);

        memset(p, 0, (len + 4095) & ~4095ul);
        return p;
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
        for (size_t i = 0; i < len; i++)
                p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

/* qemu-img check must pass (allow_leaks: exit 3 too), and qemu's view equal model. */
static void verify_with_qemu(const char *path, const uint8_t *model, uint64_t size,
                             bool allow_leaks, const char *what)
{
        char raw[512];
        int st = t_sh("qemu-img check -q '%s' >/dev/null 2>&1", path);
        uint8_t *got;
        int fd;

        if (!(st == 0 || (allow_leaks && st == 3))) {
                CHECK_FAIL("%s: qemu-img check exited %d", what, st);
                (void)t_sh("qemu-img check '%s' | head -20 >&2", path);
        }
        snprintf(raw, sizeof(raw), "%s.raw", path);
        if (t_sh("qemu-img convert -O raw '%s' '%s'", path, raw) != 0) {
                CHECK_FAIL("%s: qemu-img convert failed", what);
                return;
        }
        got = malloc(size);
        fd = open(raw, O_RDONLY);
        if (fd < 0 || pread(fd, got, size, 0) != (ssize_t)size) {
                CHECK_FAIL("%s: cannot read %s", what, raw);
        } else if (memcmp(got, model, size)) {
                uint64_t i = 0;

                while (got[i] == model[i])
                        i++;
                CHECK_FAIL("%s: qemu reads %#x at %llu, model has %#x", what, got[i],
                           (unsigned long long)i, model[i]);
        }
        if (fd >= 0)
                close(fd);
        free(got);
        unlink(raw);
}

/* Read the whole disk through the driver and compare with the model. */
static void verify_read(struct vbd_image *img, const uint8_t *model, uint64_t size,
                        const char *what)
{
        uint64_t chunk = 3 * MB + 512;
        uint8_t *buf = abuf(chunk);

        for (uint64_t off = 0; off < size; off += chunk) {
                uint64_t len = size - off < chunk ? size - off : chunk;
                int st = do_io(img, VBD_OP_READ, off, len, buf, 0);

                if (st || memcmp(buf, model + off, len)) {
                        CHECK_FAIL("%s: read at %llu: status %d, data %s", what,
                                   (unsigned long long)off, st, st ? "-" : "differs");
                        break;
                }
        }
        free(buf);
}

/* Random writes, up to depth at once; model updated. */
static void random_writes(struct vbd_image *img, uint8_t *model, uint64_t size, unsigned n,
                          unsigned depth, uint64_t maxlen)
{
        struct req **rs = calloc(depth, sizeof(*rs));
        uint8_t **bufs = calloc(depth, sizeof(*bufs));

        for (unsigned done = 0; done < n;) {
                unsigned k = 0;

                for (; k < depth && done < n; k++, done++) {
                        uint64_t len = ((rnd() % (maxlen / 512)) + 1) * 512;
                        uint64_t off = (rnd() % (size / 512)) * 512;

                        if (off + len > size)
                                len = size - off;
                        bufs[k] = abuf(len);
                        fill(bufs[k], len, rnd());
                        memcpy(model + off, bufs[k], len);
                        rs[k] = req_new(img, VBD_OP_WRITE, off, len, bufs[k], 0);
                }
                /* Non-overlapping in the model order: submit all, wait, check. Overlaps
                 * between in-flight writes would make the model ambiguous, so the
                 * batch is re-applied in order (same data) when two overlap. */
                pending += k;
                for (unsigned i = 0; i < k; i++)
                        vbd_image_submit(img, &rs[i]->io);
                run();
                for (unsigned i = 0; i < k; i++) {
                        CHECK(rs[i]->status == 0);
                        for (unsigned j = i + 1; j < k; j++)
                                if (rs[i]->io.offset < rs[j]->io.offset + rs[j]->io.len &&
                                    rs[j]->io.offset < rs[i]->io.offset + rs[i]->io.len) {
                                        /* rewrite j so the later one wins, as in the model */
                                        CHECK(do_io(img, VBD_OP_WRITE, rs[j]->io.offset,
                                                    rs[j]->io.len, bufs[j], 0) == 0);
                                }
                }
                for (unsigned i = 0; i < k; i++) {
                        req_free(rs[i]);
                        free(bufs[i]);
                }
        }
        free(rs);
        free(bufs);
}

static void test_random(const char *opts, uint64_t size, unsigned n, uint64_t maxlen)
{
        char path[512], spec[600], what[256];
        uint8_t *model = calloc(1, size);
        struct vbd_image *img;

        snprintf(path, sizeof(path), "%s/rnd.qcow2", dir);
        snprintf(what, sizeof(what), "random writes (%s)", opts);
        CHECK(t_sh("qemu-img create -q -f qcow2 -o %s '%s' %llu", opts, path,
                   (unsigned long long)size) == 0);
        snprintf(spec, sizeof(spec), "qcow2:%s,l2-cache=16K", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        random_writes(img, model, size, n, 16, maxlen);
        CHECK(do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0) == 0);
        verify_read(img, model, size, what);
        t_image_close(loop, img);
        verify_with_qemu(path, model, size, false, what);
        unlink(path);
        free(model);
}

/* Is one of our descriptors open on path with O_DIRECT? */
static bool open_direct(const char *path)
{
        char real[4096], link[64], got[4096], info[64], line[256];
        bool found = false;

        if (!realpath(path, real))
                return false;
        for (int fd = 0; fd < 1024 && !found; fd++) {
                ssize_t n;
                FILE *f;

                snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
                n = readlink(link, got, sizeof(got) - 1);
                if (n <= 0)
                        continue;
                got[n] = 0;
                if (strcmp(got, real))
                        continue;
                snprintf(info, sizeof(info), "/proc/self/fdinfo/%d", fd);
                f = fopen(info, "r");
                while (f && fgets(line, sizeof(line), f))
                        if (!strncmp(line, "flags:", 6) && (strtoul(line + 6, NULL, 8) & O_DIRECT))
                                found = true;
                if (f)
                        fclose(f);
        }
        return found;
}

/*
 * Clusters smaller than a page: data clusters share pages with the L1 table,
 * L2 tables and refcount blocks, which are written through the page cache.
 * An O_DIRECT data write racing a buffered metadata write to the same page
 * leaves a stale page (lost L1 entries, "Page cache invalidation failure on
 * direct I/O", fdatasync failing with EIO), so the driver must not open the
 * image with O_DIRECT then (direct=auto: buffered; direct=on: refused).
 * Then the race itself: in-place rewrites of the data clusters next to the
 * L1 table while new L2 tables get their L1 entries written.
 */
static void test_small_cluster_buffered(void)
{
        char path[512], spec[600];
        uint64_t size = 4 * MB, cs = 512;
        uint8_t *model = calloc(1, size), *buf = abuf(64 * cs);
        struct vbd_image *img;

        snprintf(path, sizeof(path), "%s/small.qcow2", dir);
        CHECK(t_sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 4M", path) == 0);
        snprintf(spec, sizeof(spec), "qcow2:%s,direct=on", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(!img);
        if (img)
                t_image_close(loop, img);
        snprintf(spec, sizeof(spec), "qcow2:%s,l2-cache=2K", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        CHECK(!open_direct(path));
        /* The first data clusters: right after the L1 table, in its last page. */
        fill(buf, 16 * cs, 70);
        CHECK(do_io(img, VBD_OP_WRITE, 0, 16 * cs, buf, 0) == 0);
        memcpy(model, buf, 16 * cs);
        for (unsigned round = 0; round < 64; round++) {
                struct req *rs[9];
                uint8_t *b[9];

                /* Rewrite them in place (one request per cluster) while eight writes
                 * into new L2 ranges write L1 entries next to them. */
                for (unsigned i = 0; i < 9; i++) {
                        uint64_t off =
                            i == 0 ? (round % 16) * cs : (1 + (round * 8 + i - 1) % 127) * 64 * cs;
                        uint64_t len = i == 0 ? cs : 4 * cs;

                        b[i] = abuf(len);
                        fill(b[i], len, round * 16 + i);
                        memcpy(model + off, b[i], len);
                        rs[i] = req_new(img, VBD_OP_WRITE, off, len, b[i], 0);
                }
                pending += 9;
                for (unsigned i = 0; i < 9; i++)
                        vbd_image_submit(img, &rs[i]->io);
                run();
                for (unsigned i = 0; i < 9; i++) {
                        CHECK(rs[i]->status == 0);
                        req_free(rs[i]);
                        free(b[i]);
                }
                if (round % 8 == 7)
                        CHECK(do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0) == 0);
        }
        CHECK(do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0) == 0);
        verify_read(img, model, size, "small clusters");
        t_image_close(loop, img);
        verify_with_qemu(path, model, size, false, "small clusters");
        unlink(path);
        free(model);
        free(buf);
}

/* Two writes into the two halves of one unallocated cluster, at once. */
static void test_same_cluster(void)
{
        char path[512], spec[600];
        uint64_t cs = 65536, size = 4 * MB;
        uint8_t *model = calloc(1, size), *a = abuf(cs / 2), *b = abuf(cs / 2), *c = abuf(4096);
        struct req *ra, *rb, *rc;
        struct vbd_image *img;

        snprintf(path, sizeof(path), "%s/same.qcow2", dir);
        CHECK(t_sh("qemu-img create -q -f qcow2 '%s' 4M", path) == 0);
        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        fill(a, cs / 2, 1);
        fill(b, cs / 2, 2);
        fill(c, 4096, 3);
        ra = req_new(img, VBD_OP_WRITE, cs, cs / 2, a, 0);
        rb = req_new(img, VBD_OP_WRITE, cs + cs / 2, cs / 2, b, 0);
        rc = req_new(img, VBD_OP_WRITE, 3 * cs + 512, 4096, c, 0); /* another new cluster */
        pending += 3;
        vbd_image_submit(img, &ra->io);
        vbd_image_submit(img, &rb->io);
        vbd_image_submit(img, &rc->io);
        run();
        CHECK(ra->status == 0 && rb->status == 0 && rc->status == 0);
        memcpy(model + cs, a, cs / 2);
        memcpy(model + cs + cs / 2, b, cs / 2);
        memcpy(model + 3 * cs + 512, c, 4096);
        verify_read(img, model, size, "same cluster");
        t_image_close(loop, img);
        verify_with_qemu(path, model, size, false, "same cluster");
        req_free(ra);
        req_free(rb);
        req_free(rc);
        free(a);
        free(b);
        free(c);
        free(model);
}

static uint64_t file_blocks(const char *path)
{
        struct stat st;

        return stat(path, &st) == 0 ? (uint64_t)st.st_blocks : 0;
}

/* Write-zeroes and discard over data, zero and backing clusters. */
static void test_zeroes(const char *compat, bool backing)
{
        char path[512], base[512], spec[600], what[128];
        uint64_t size = 8 * MB, cs = 65536;
        uint8_t *model = calloc(1, size), *buf = abuf(size);
        struct vbd_image *img;
        uint64_t before;

        snprintf(what, sizeof(what), "zeroes compat=%s%s", compat, backing ? " backing" : "");
        snprintf(path, sizeof(path), "%s/z.qcow2", dir);
        snprintf(base, sizeof(base), "%s/z-base.raw", dir);
        if (backing) {
                int fd = open(base, O_CREAT | O_TRUNC | O_WRONLY, 0644);

                fill(model, size, 99);
                CHECK(fd >= 0 && write(fd, model, size) == (ssize_t)size);
                close(fd);
                CHECK(t_sh("qemu-img create -q -f qcow2 -o compat=%s -b '%s' -F raw '%s'", compat,
                           base, path) == 0);
        } else {
                CHECK(t_sh("qemu-img create -q -f qcow2 -o compat=%s '%s' 8M", compat, path) == 0);
        }
        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        fill(buf, size, 5);
        CHECK(do_io(img, VBD_OP_WRITE, 0, size, buf, 0) == 0);
        memcpy(model, buf, size);
        CHECK(do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0) == 0);
        before = file_blocks(path);
        /* whole clusters, partial head and tail, MAY_UNMAP or not, discard */
        CHECK(do_io(img, VBD_OP_WRITE_ZEROES, cs, 4 * cs, NULL, VBD_IO_MAY_UNMAP) == 0);
        memset(model + cs, 0, 4 * cs);
        CHECK(do_io(img, VBD_OP_WRITE_ZEROES, 8 * cs + 512, 3 * cs, NULL, 0) == 0);
        memset(model + 8 * cs + 512, 0, 3 * cs);
        CHECK(do_io(img, VBD_OP_DISCARD, 16 * cs, 32 * cs, NULL, 0) == 0);
        memset(model + 16 * cs, 0, 32 * cs);
        CHECK(do_io(img, VBD_OP_DISCARD, 60 * cs + 4096, 1024, NULL, 0) == 0);
        memset(model + 60 * cs + 4096, 0, 1024);
        /* rewrite part of a zeroed cluster */
        fill(buf, 4096, 6);
        CHECK(do_io(img, VBD_OP_WRITE, 20 * cs + 8192, 4096, buf, 0) == 0);
        memcpy(model + 20 * cs + 8192, buf, 4096);
        CHECK(do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0) == 0);
        verify_read(img, model, size, what);
        t_image_close(loop, img);
        verify_with_qemu(path, model, size, false, what);
        /* freed clusters are reused: writing the discarded range again must not grow the
         * file beyond what it was */
        img = t_image_open(loop, aio, spec, false);
        if (img) {
                fill(buf, 16 * cs, 7);
                CHECK(do_io(img, VBD_OP_WRITE, 16 * cs, 16 * cs, buf, 0) == 0);
                memcpy(model + 16 * cs, buf, 16 * cs);
                t_image_close(loop, img);
                verify_with_qemu(path, model, size, false, what);
        }
        (void)before;
        unlink(path);
        unlink(base);
        free(model);
        free(buf);
}

/* qcow2 -> qcow2 (compressed, zero clusters) -> raw; partial writes, copy-on-read. */
static void test_chain(bool cor)
{
        char top[512], mid[512], base[512], spec[700], what[64];
        uint64_t size = 6 * MB, bsize = 4 * MB;
        uint8_t *model = calloc(1, size), *buf = abuf(size);
        struct vbd_image *img;
        int fd;

        snprintf(what, sizeof(what), "chain%s", cor ? " copy-on-read" : "");
        snprintf(base, sizeof(base), "%s/c-base.raw", dir);
        snprintf(mid, sizeof(mid), "%s/c-mid.qcow2", dir);
        snprintf(top, sizeof(top), "%s/c-top.qcow2", dir);
        fill(model, bsize, 11);
        fd = open(base, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        CHECK(fd >= 0 && write(fd, model, bsize) == (ssize_t)bsize);
        close(fd);
        /* mid: 5M over a 4M base; compressed cluster at 1M, zero cluster at 2M, data at 3M */
        CHECK(t_sh("qemu-img create -q -f qcow2 -o cluster_size=4096 -b '%s' -F raw '%s' 5M", base,
                   mid) == 0);
        CHECK(t_sh("qemu-io -f qcow2 -c 'write -P 0x33 3M 64K' -c 'write -z 2M 8K' '%s' >/dev/null",
                   mid) == 0);
        CHECK(t_sh("qemu-io -f qcow2 -c 'write -c -P 0x44 1M 4K' '%s' >/dev/null", mid) == 0);
        memset(model + 3 * MB, 0x33, 65536);
        memset(model + 2 * MB, 0, 8192);
        memset(model + 1 * MB, 0x44, 4096);
        /* top: 6M over mid, 64K clusters */
        CHECK(t_sh("qemu-img create -q -f qcow2 -b '%s' -F qcow2 '%s' 6M", mid, top) == 0);
        snprintf(spec, sizeof(spec), "qcow2:%s%s", top, cor ? ",copy-on-read=on" : "");
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        verify_read(img, model, size, what);
        /* partial writes over backing data, compressed, zero and past-the-backing areas */
        {
                const uint64_t offs[] = {
                    512,          1 * MB + 1024, 2 * MB + 4096, 3 * MB + 65536 - 512,
                    4 * MB + 512, 5 * MB - 1024, 6 * MB - 4096};
                for (unsigned i = 0; i < VBD_ARRAY_SIZE(offs); i++) {
                        fill(buf, 3072, 20 + i);
                        CHECK(do_io(img, VBD_OP_WRITE, offs[i],
                                    3072 < size - offs[i] ? 3072 : size - offs[i], buf, 0) == 0);
                        memcpy(model + offs[i], buf, 3072 < size - offs[i] ? 3072 : size - offs[i]);
                }
        }
        verify_read(img, model, size, what);
        t_image_close(loop, img);
        verify_with_qemu(top, model, size, false, what);
        CHECK(t_sh("qemu-img check -q '%s' >/dev/null", mid) == 0);
        unlink(top);
        unlink(mid);
        unlink(base);
        free(model);
        free(buf);
}

/* Compressed clusters and an internal snapshot: writes copy, the snapshot keeps its data. */
static void test_compressed_snapshot(void)
{
        char src[512], path[512], spec[600];
        uint64_t size = 4 * MB;
        uint8_t *model = calloc(1, size), *buf = abuf(size);
        struct vbd_image *img;
        int fd;

        snprintf(src, sizeof(src), "%s/cs.raw", dir);
        snprintf(path, sizeof(path), "%s/cs.qcow2", dir);
        fill(model, size, 31);
        memset(model + MB, 0, MB); /* a hole */
        fd = open(src, O_CREAT | O_TRUNC | O_WRONLY, 0644);
        CHECK(fd >= 0 && write(fd, model, size) == (ssize_t)size);
        close(fd);
        CHECK(t_sh("qemu-img convert -q -c -O qcow2 '%s' '%s'", src, path) == 0);
        CHECK(t_sh("qemu-img snapshot -c snap1 '%s'", path) == 0);
        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = t_image_open(loop, aio, spec, false);
        CHECK(img);
        if (!img)
                return;
        verify_read(img, model, size, "compressed");
        for (unsigned i = 0; i < 40; i++) {
                uint64_t off = (rnd() % (size / 512)) * 512, len = 512 * (1 + rnd() % 200);

                if (off + len > size)
                        len = size - off;
                fill(buf, len, 40 + i);
                CHECK(do_io(img, VBD_OP_WRITE, off, len, buf, 0) == 0);
                memcpy(model + off, buf, len);
        }
        verify_read(img, model, size, "compressed+snapshot");
        t_image_close(loop, img);
        verify_with_qemu(path, model, size, false, "compressed+snapshot");
        /* the snapshot still has the original content */
        CHECK(t_sh("qemu-img convert -q -l snap1 -O raw '%s' '%s.snap' && cmp -s '%s' '%s.snap'",
                   path, path, src, path) == 0);
        unlink(src);
        unlink(path);
        free(model);
        free(buf);
}

/*
 * Crash: the child writes generation g to random blocks of 64 KiB (each
 * block carries g), flushes, tells the parent "g flushed", and goes on; the
 * parent kills it at a random moment.  Afterwards every block whose last
 * flushed write is known must hold that generation or a later one that was
 * also written.
 */
static void crash_child(const char *spec, int wfd, uint64_t size, uint64_t seed)
{
        struct vbd_image *img;
        uint64_t blk = 65536, nblk = size / blk;
        uint8_t *buf = abuf(blk);

        rng = seed;
        /* the parent's io_context does not survive fork: a loop and engine of our own */
        loop = ev_loop_new(EVFLAG_AUTO);
        aio = loop ? vbd_aio_new(loop, 256) : NULL;
        img = aio ? t_image_open(loop, aio, spec, false) : NULL;
        if (!img)
                _exit(2);
        for (uint32_t g = 1;; g++) {
                struct req *rs[16];

                for (unsigned i = 0; i < 16; i++) {
                        uint64_t b = rnd() % nblk;
                        uint64_t half = (rnd() & 1) ? blk / 2 : 0;

                        rs[i] =
                            req_new(img, VBD_OP_WRITE, b * blk + half, blk / 2, abuf(blk / 2), 0);
                        for (unsigned k = 0; k < blk / 2 / 8; k++) {
                                uint64_t v = (uint64_t)g << 32 | (b * 2 + (half ? 1 : 0));
                                memcpy((uint8_t *)rs[i]->iov.iov_base + k * 8, &v, 8);
                        }
                }
                pending += 16;
                for (unsigned i = 0; i < 16; i++)
                        vbd_image_submit(img, &rs[i]->io);
                run();
                for (unsigned i = 0; i < 16; i++) {
                        if (rs[i]->status)
                                _exit(3);
                        free(rs[i]->iov.iov_base);
                        req_free(rs[i]);
                }
                if (do_io(img, VBD_OP_FLUSH, 0, 0, NULL, 0))
                        _exit(4);
                if (write(wfd, &g, sizeof(g)) != sizeof(g))
                        _exit(5);
        }
        (void)buf;
}

static void test_crash(const char *opts, unsigned rounds)
{
        char path[512], spec[600], raw[600];
        uint64_t size = 16 * MB, half = 32768;

        snprintf(path, sizeof(path), "%s/crash.qcow2", dir);
        snprintf(raw, sizeof(raw), "%s.raw", path);
        snprintf(spec, sizeof(spec), "qcow2:%s,l2-cache=8K", path);
        CHECK(t_sh("qemu-img create -q -f qcow2 -o %s '%s' 16M", opts, path) == 0);
        for (unsigned round = 0; round < rounds; round++) {
                int p[2];
                pid_t pid;
                uint32_t g, flushed = 0;
                uint64_t seed = 1000 + round;
                uint32_t *model_gen = calloc(size / half, sizeof(*model_gen));
                int st;

                CHECK(pipe(p) == 0);
                pid = fork();
                if (pid == 0) {
                        close(p[0]);
                        crash_child(spec, p[1], size, seed);
                        _exit(0);
                }
                close(p[1]);
                /* let it run a little, then kill -9 */
                usleep(20000 + (useconds_t)(rnd() % 300000));
                kill(pid, SIGKILL);
                while (read(p[0], &g, sizeof(g)) == sizeof(g))
                        flushed = g;
                close(p[0]);
                waitpid(pid, &st, 0);
                if (!WIFSIGNALED(st))
                        fprintf(stderr, "crash child exited with %d\n",
                                WIFEXITED(st) ? WEXITSTATUS(st) : -1);
                CHECK(WIFSIGNALED(st));
                st = t_sh("qemu-img check -q '%s' >/dev/null 2>&1", path);
                if (st != 0 && st != 3) {
                        CHECK_FAIL("crash round %u (%s): qemu-img check exited %d", round, opts,
                                   st);
                        (void)t_sh("qemu-img check '%s' | head -20 >&2", path);
                        free(model_gen);
                        break;
                }
                /* Replay the child's random sequence up to 'flushed': the last flushed
                 * generation of each half block; what is there must be >= it. */
                rng = seed;
                for (uint32_t gg = 1; gg <= flushed; gg++)
                        for (unsigned i = 0; i < 16; i++) {
                                uint64_t b = rnd() % (size / 65536);
                                uint64_t h = (rnd() & 1) ? 1 : 0;

                                model_gen[b * 2 + h] = gg;
                        }
                CHECK(t_sh("qemu-img convert -O raw '%s' '%s'", path, raw) == 0);
                {
                        int fd = open(raw, O_RDONLY);
                        uint64_t v;

                        for (uint64_t hb = 0; fd >= 0 && hb < size / half; hb++) {
                                uint32_t got_g, got_b;

                                if (pread(fd, &v, 8, (off_t)(hb * half)) != 8)
                                        break;
                                got_g = (uint32_t)(v >> 32);
                                got_b = (uint32_t)v;
                                if (model_gen[hb] &&
                                    (got_g < model_gen[hb] || got_b != (uint32_t)hb)) {
                                        CHECK_FAIL("crash round %u: half-block %llu has gen %u "
                                                   "(block %u), flushed gen %u",
                                                   round, (unsigned long long)hb, got_g, got_b,
                                                   model_gen[hb]);
                                        break;
                                }
                        }
                        if (fd >= 0)
                                close(fd);
                }
                if (round == 0)
                        fprintf(stderr, "crash (%s): killed after %u flushed generations\n", opts,
                                flushed);
                unlink(raw);
                free(model_gen);
                /* repair leaks so that the next round starts from a clean image */
                (void)t_sh("qemu-img check -q -r leaks '%s' >/dev/null 2>&1", path);
        }
        unlink(path);
}

int main(void)
{
        const char *tmp = getenv("TMPDIR");

        if (system("qemu-img --version >/dev/null 2>&1") != 0) {
                fprintf(stderr, "qemu-img not found: skipped\n");
                return 77;
        }
        snprintf(dir, sizeof(dir), "%s/qcow2-image.XXXXXX", tmp ? tmp : "/var/tmp");
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        signal(SIGPIPE, SIG_IGN);
        loop = ev_default_loop(0);
        aio = vbd_aio_new(loop, 256);
        if (!aio) {
                perror("vbd_aio_new");
                return 1;
        }

        test_small_cluster_buffered();
        test_same_cluster();
        test_random("cluster_size=65536", 32 * MB, 600, 200 * 1024);
        test_random("cluster_size=4096", 8 * MB, 800, 64 * 1024);
        test_random("cluster_size=512", 2 * MB, 400, 8 * 1024);
        test_random("cluster_size=2M", 64 * MB, 200, 3 * 1024 * 1024);
        test_random("compat=0.10", 8 * MB, 300, 128 * 1024);
        test_random("refcount_bits=1", 8 * MB, 300, 128 * 1024);
        test_random("refcount_bits=64,cluster_size=4096", 8 * MB, 300, 64 * 1024);
        test_random("lazy_refcounts=on", 8 * MB, 300, 128 * 1024);
        /* a tiny refcount table must grow: 512-byte clusters, 8-bit refcounts */
        test_random("cluster_size=512,refcount_bits=64", 24 * MB, 500, 256 * 1024);
        test_zeroes("1.1", false);
        test_zeroes("1.1", true);
        test_zeroes("0.10", false);
        test_zeroes("0.10", true);
        test_chain(false);
        test_chain(true);
        test_compressed_snapshot();
        test_crash("cluster_size=65536", 8);
        test_crash("cluster_size=4096", 8);

        vbd_aio_free(aio);
        (void)t_sh("rm -rf '%s'", dir);
        return check_result("test-qcow2-image");
}
