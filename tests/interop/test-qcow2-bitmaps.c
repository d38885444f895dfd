/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Stored bitmaps (vbd_image_stored_bitmaps_put/get) in qcow2's bitmaps
 * extension, checked with the real qemu-img, qemu-io, qemu-nbd and nbdinfo:
 *
 *   - put: four bitmaps (bits at the first and the last, partial, block, a
 *     run that fills whole clusters of bitmap data with ones, an empty one,
 *     an all-ones one) on qemu-img-made images with 64 KiB, 512 B and 2 MiB
 *     clusters, one with a backing file: 'qemu-img info' lists them (name,
 *     granularity, "auto" when enabled, never "in-use"), 'qemu-img check' is
 *     clean, and qemu-nbd -B exports exactly our bits (nbdinfo --map of
 *     qemu:dirty-bitmap:NAME against the model's extents); get reads them
 *     back; clusters of ones are stored without a data cluster;
 *   - a read-write open leaves the bitmaps in use in the file (qemu-img
 *     info says "in-use"), check still clean, get reports the flags found;
 *   - replacing the set 20 times (varying), then n = 0: check clean after
 *     each (no leaks), the file stops growing, n = 0 drops the extension
 *     and autoclear bit 0;
 *   - QEMU to us: qemu-img bitmap --add, writes by qemu-io (which records
 *     them), get returns exactly the blocks written; a disabled one;
 *     -ENOENT for an absent name; autoclear bit 0 cleared (what a program
 *     without bitmap support does): -ESTALE;
 *   - refusals: read-only (-EROFS), duplicate names, bad granularity,
 *     wrong nbits, names too long, no room in the first cluster for the
 *     extension beside a long backing file name (-ENOSPC, image unchanged);
 *   - killed (SIGKILL) while putting sets in a loop: qemu-img check finds
 *     leaks at most, and the file holds one whole set, read back exactly;
 *   - hostile directories (offset past the end, unaligned, table size,
 *     huge name size, granularity 40, nb_bitmaps mismatch, bad table
 *     entries): open works read-only and read-write, the data reads, get
 *     fails with -EIO and a reason, and a put replaces the lot.
 *
 * Skips (77) without qemu-img, qemu-io, qemu-nbd or nbdinfo.
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

static char dir[256];
static struct ev_loop *loop;
static struct vbd_aio *aio;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static uint64_t file_size(const char *path)
{
        struct stat st;

        REQUIRE(stat(path, &st) == 0);
        return (uint64_t)st.st_size;
}

/* qemu-img check: exit 0 and nothing leaked or corrupt (leaks_ok: leaks allowed). */
static void check_img(const char *path, bool leaks_ok, const char *what)
{
        json_t *j = t_sh_json("qemu-img check --output=json '%s' 2>/dev/null", path);

        if (!j) {
                if (leaks_ok && t_sh("qemu-img check '%s' >/dev/null 2>&1", path) == 3)
                        return; /* leaks only */
                CHECK_FAIL("%s: qemu-img check of %s failed", what, path);
                (void)t_sh("qemu-img check '%s' | head -20 >&2", path);
                return;
        }
        CHECK_MSG(t_jint(j, "check-errors") <= 0 && t_jint(j, "corruptions") <= 0 &&
                      (leaks_ok || t_jint(j, "leaks") <= 0),
                  "%s: check-errors %lld, corruptions %lld, leaks %lld", what,
                  t_jint(j, "check-errors"), t_jint(j, "corruptions"), t_jint(j, "leaks"));
        json_decref(j);
}

/* qcow2:path, a failed open a failed check. */
static struct vbd_image *img_open(const char *path, bool ro)
{
        char spec[1300];
        struct vbd_image *img;

        snprintf(spec, sizeof(spec), "qcow2:%s", path);
        img = t_image_open(loop, aio, spec, ro);
        CHECK_MSG(img, "open %s", spec);
        return img;
}

struct req {
        struct vbd_io io;
        struct iovec iov;
        int status, calls;
};

static void req_done(struct vbd_io *io, int status)
{
        struct req *r = io->opaque;

        r->status = status;
        r->calls++;
}

static int do_read(struct vbd_image *img, uint64_t off, void *buf, uint64_t len)
{
        struct req r = {0};
        void *scratch = aligned_alloc(64, (vbd_image_io_scratch_size(img) + 63) & ~63ul);

        r.iov = (struct iovec){buf, len};
        r.io = (struct vbd_io){.op = VBD_OP_READ,
                               .offset = off,
                               .len = len,
                               .iov = &r.iov,
                               .iovcnt = 1,
                               .done = req_done,
                               .opaque = &r,
                               .scratch = scratch};
        vbd_image_submit(img, &r.io);
        while (!r.calls)
                ev_run(loop, EVRUN_ONCE);
        free(scratch);
        return r.status;
}

/* ---- bitmap models ---- */

struct model {
        struct vbd_stored_bitmap b;
};

static void model_init(struct model *m, const char *name, uint32_t gran, uint64_t size,
                       bool enabled)
{
        memset(m, 0, sizeof(*m));
        snprintf(m->b.name, sizeof(m->b.name), "%s", name);
        m->b.granularity = gran;
        m->b.enabled = enabled;
        m->b.nbits = (size + gran - 1) / gran;
        m->b.bits = calloc((m->b.nbits + 63) / 64 + 1, 8);
        REQUIRE(m->b.bits);
}

static void model_set(struct model *m, uint64_t from, uint64_t to)
{
        for (uint64_t b = from; b < to && b < m->b.nbits; b++)
                m->b.bits[b / 64] |= 1ull << (b % 64);
}

static bool model_bit(const struct vbd_stored_bitmap *b, uint64_t i)
{
        return (b->bits[i / 64] >> (i % 64)) & 1;
}

static void model_free(struct model *m)
{
        free(m->b.bits);
        m->b.bits = NULL;
}

static int put(struct vbd_image *img, struct model *m, unsigned n, char *msg, size_t msglen)
{
        struct vbd_stored_bitmap *b = calloc(n ? n : 1, sizeof(*b));
        struct vbd_err err = {0};
        int r;

        REQUIRE(b);
        for (unsigned i = 0; i < n; i++)
                b[i] = m[i].b;
        r = vbd_image_stored_bitmaps_put(img, b, n, &err);
        if (msg)
                snprintf(msg, msglen, "%s", err.msg);
        free(b);
        return r;
}

static char put_msg[512];

static const char *put_err(void)
{
        return put_msg;
}

/* A put that must work. */
#define PUT_OK(h, m, n) CHECK_R(put(h, m, n, put_msg, sizeof(put_msg)), put_err())

/* get name and compare with m (bits and enabled; in_use as expected, -1: either). */
static void get_same(struct vbd_image *img, const struct model *m, int in_use, const char *what)
{
        struct vbd_stored_bitmap got;
        struct vbd_err err = {0};
        int r = vbd_image_stored_bitmap_get(img, m->b.name, &got, &err);
        uint64_t diff = 0, first = UINT64_MAX;

        if (r < 0) {
                CHECK_FAIL("%s: get %s: %s", what, m->b.name, err.msg);
                return;
        }
        CHECK_MSG(strcmp(got.name, m->b.name) == 0, "%s", what);
        CHECK_EQ(got.granularity, m->b.granularity);
        CHECK_EQ(got.nbits, m->b.nbits);
        CHECK_MSG(got.enabled == m->b.enabled, "%s: %s enabled %d", what, m->b.name, got.enabled);
        CHECK_MSG(in_use < 0 || got.in_use == in_use, "%s: %s in_use %d", what, m->b.name,
                  got.in_use);
        for (uint64_t i = 0; got.nbits == m->b.nbits && i < (got.nbits + 63) / 64; i++)
                if (got.bits[i] != m->b.bits[i]) {
                        diff++;
                        if (first == UINT64_MAX)
                                first = i;
                }
        CHECK_MSG(diff == 0, "%s: %s: %llu words differ, first %llu", what, m->b.name,
                  (unsigned long long)diff, (unsigned long long)first);
        free(got.bits);
}

static int get_err(struct vbd_image *img, const char *name, char *msg, size_t msglen)
{
        struct vbd_stored_bitmap got;
        struct vbd_err err = {0};
        int r = vbd_image_stored_bitmap_get(img, name, &got, &err);

        if (r == 0)
                free(got.bits);
        if (msg)
                snprintf(msg, msglen, "%s", err.msg);
        return r;
}

/* qemu-nbd -B NAME, nbdinfo --map: the dirty extents equal the model's. */
static void nbd_same(const char *path, const struct model *m, uint64_t size, const char *what)
{
        json_t *j = t_sh_json("timeout 60 nbdinfo --map=qemu:dirty-bitmap:%s --json -- "
                              "[ qemu-nbd -r -f qcow2 -B %s '%s' ] 2>/dev/null",
                              m->b.name, m->b.name, path);
        uint64_t pos = 0, g = m->b.granularity, bad = 0;
        size_t i;
        json_t *e;

        if (!json_is_array(j)) {
                CHECK_FAIL("%s: nbdinfo --map of bitmap %s failed", what, m->b.name);
                json_decref(j);
                return;
        }
        json_array_foreach(j, i, e)
        {
                uint64_t off = (uint64_t)t_jint(e, "offset"), len = (uint64_t)t_jint(e, "length");
                bool dirty = t_jint(e, "type") == 1;

                if (off != pos) {
                        CHECK_FAIL("%s: %s: extent at %llu, expected %llu", what, m->b.name,
                                   (unsigned long long)off, (unsigned long long)pos);
                        break;
                }
                for (uint64_t b = off / g; b * g < off + len; b++)
                        if (model_bit(&m->b, b) != dirty)
                                bad++;
                /* Extents start and end on block boundaries (or at the end). */
                if (off % g || ((off + len) % g && off + len != size))
                        bad++;
                pos = off + len;
        }
        CHECK_MSG(bad == 0 && pos == size, "%s: %s: %llu blocks differ, map ends at %llu of %llu",
                  what, m->b.name, (unsigned long long)bad, (unsigned long long)pos,
                  (unsigned long long)size);
        json_decref(j);
}

/* qemu-img info's bitmaps: each of m[0, n) with its granularity and flags. */
static void info_same(const char *path, const struct model *m, unsigned n, bool in_use,
                      const char *what)
{
        json_t *j = t_sh_json("qemu-img info -U --output=json '%s' 2>/dev/null", path);
        json_t *bms = json_object_get(
            json_object_get(json_object_get(j, "format-specific"), "data"), "bitmaps");
        size_t count = json_is_array(bms) ? json_array_size(bms) : 0;

        CHECK_MSG(j != NULL, "%s: qemu-img info", what);
        CHECK_MSG(count == n, "%s: qemu-img info lists %zu bitmaps, expected %u", what, count, n);
        for (unsigned i = 0; i < n && i < count; i++) {
                json_t *e = json_array_get(bms, i), *fl = json_object_get(e, "flags"), *f;
                bool has_auto = false, has_in_use = false;
                size_t k;

                CHECK_MSG(
                    strcmp(json_string_value(json_object_get(e, "name")) ?: "", m[i].b.name) == 0,
                    "%s: bitmap %u named %s", what, i,
                    json_string_value(json_object_get(e, "name")));
                CHECK_EQ(t_jint(e, "granularity"), (long long)m[i].b.granularity);
                json_array_foreach(fl, k, f)
                {
                        const char *s = json_string_value(f);

                        has_auto |= s && strcmp(s, "auto") == 0;
                        has_in_use |= s && strcmp(s, "in-use") == 0;
                }
                CHECK_MSG(has_auto == m[i].b.enabled && has_in_use == in_use,
                          "%s: %s flags auto %d in-use %d", what, m[i].b.name, has_auto,
                          has_in_use);
        }
        json_decref(j);
}

/* ---- the file's own bitmaps extension, for pokes ---- */

struct ext {
        uint64_t ext_off; /* of the extension's data */
        uint32_t nb;
        uint64_t dir_size, dir_off, autoclear;
        uint64_t table0; /* first bitmap's table offset */
        uint32_t tsize0;
};

static bool ext_find(const char *path, struct ext *e)
{
        uint8_t h[65536];
        int fd = open(path, O_RDONLY);
        ssize_t got;
        uint32_t hl, cb;
        uint64_t off, end;

        memset(e, 0, sizeof(*e));
        REQUIRE(fd >= 0);
        got = pread(fd, h, sizeof(h), 0);
        REQUIRE(got >= 112);
        cb = vbd_get_be32(h + 20);
        hl = vbd_get_be32(h + 100);
        e->autoclear = vbd_get_be64(h + 88);
        end = vbd_get_be64(h + 8) ? vbd_get_be64(h + 8) : (1ull << cb);
        if (end > (uint64_t)got)
                end = (uint64_t)got;
        for (off = hl; off + 8 <= end;) {
                uint32_t type = vbd_get_be32(h + off), len = vbd_get_be32(h + off + 4);

                if (type == 0)
                        break;
                if (type == 0x23852875u) {
                        uint8_t d[24];

                        e->ext_off = off + 8;
                        e->nb = vbd_get_be32(h + off + 8);
                        e->dir_size = vbd_get_be64(h + off + 16);
                        e->dir_off = vbd_get_be64(h + off + 24);
                        REQUIRE(pread(fd, d, 24, (off_t)e->dir_off) == 24);
                        e->table0 = vbd_get_be64(d);
                        e->tsize0 = vbd_get_be32(d + 8);
                        close(fd);
                        return true;
                }
                off += 8 + ((len + 7ull) & ~7ull);
        }
        close(fd);
        return false;
}

static void poke(const char *path, uint64_t off, unsigned size, uint64_t v)
{
        uint8_t b[8];
        int fd = open(path, O_WRONLY);

        REQUIRE(fd >= 0);
        for (unsigned i = 0; i < size; i++)
                b[i] = (uint8_t)(v >> (8 * (size - 1 - i)));
        REQUIRE(pwrite(fd, b, size, (off_t)off) == (ssize_t)size);
        close(fd);
}

static uint64_t peek64(const char *path, uint64_t off)
{
        uint8_t b[8];
        int fd = open(path, O_RDONLY);

        REQUIRE(fd >= 0);
        REQUIRE(pread(fd, b, 8, (off_t)off) == 8);
        close(fd);
        return vbd_get_be64(b);
}

/* ---- scenarios ---- */

#define NB 4

/* The four bitmaps of the put tests over an image of size bytes. */
static void models_make(struct model *m, uint64_t size, uint64_t cs)
{
        uint64_t ones;

        /* A: 64 KiB blocks, first, last (partial when size is odd), a stripe. */
        model_init(&m[0], "vbd.a", 64 * KB, size, true);
        model_set(&m[0], 0, 1);
        model_set(&m[0], m[0].b.nbits - 1, m[0].b.nbits);
        for (uint64_t b = 100; b < 400; b += 7)
                model_set(&m[0], b, b + 1 + b % 3);
        /* B: 512 B blocks, ones over two clusters of bitmap data when there
         * are that many (a table entry of ones), then scattered bits. */
        model_init(&m[1], "vbd:b-2", 512, size, false);
        ones = 2 * 8 * cs < m[1].b.nbits / 2 ? 2 * 8 * cs : m[1].b.nbits / 2;
        model_set(&m[1], 0, ones);
        for (uint64_t b = ones + 5; b < m[1].b.nbits; b += m[1].b.nbits / 37 + 1)
                model_set(&m[1], b, b + 1);
        model_set(&m[1], m[1].b.nbits - 1, m[1].b.nbits);
        /* C: empty.  D: every bit, 4 KiB blocks (tables of ones only). */
        model_init(&m[2], "empty", 1 * MB, size, true);
        model_init(&m[3], "all_ones", 4 * KB, size, true);
        model_set(&m[3], 0, m[3].b.nbits);
}

/* Data clusters in the bitmap table at table (tsize entries). */
static unsigned data_clusters(const char *path, uint64_t table, uint32_t tsize)
{
        unsigned n = 0;

        for (uint32_t i = 0; i < tsize; i++)
                if (peek64(path, table + i * 8ull) & 0x00fffffffffffe00ull)
                        n++;
        return n;
}

static void test_put(uint32_t cs, bool backing)
{
        uint64_t size = 300 * MB + 1536;
        const char *img = t_path(dir, "put.qcow2"), *base = t_path(dir, "put-base.qcow2");
        struct model m[NB];
        uint64_t size0, set_bytes;
        char what[128];
        struct vbd_image *h;
        struct ext e;

        snprintf(what, sizeof(what), "put cs %u%s", cs, backing ? " backing" : "");
        (void)t_sh("rm -f '%s' '%s'", img, base);
        if (backing) {
                REQUIRE(t_sh("qemu-img create -q -f qcow2 -o cluster_size=%u '%s' %llu", cs, base,
                             (unsigned long long)size) == 0);
                REQUIRE(t_sh("qemu-io -f qcow2 -c 'write -P 7 0 1M' '%s' >/dev/null", base) == 0);
                REQUIRE(t_sh("qemu-img create -q -f qcow2 -o cluster_size=%u -b '%s' -F qcow2 '%s'",
                             cs, base, img) == 0);
        } else {
                REQUIRE(t_sh("qemu-img create -q -f qcow2 -o cluster_size=%u '%s' %llu", cs, img,
                             (unsigned long long)size) == 0);
        }
        /* Some data, so that bitmap clusters land among L2 tables and data. */
        REQUIRE(t_sh("qemu-io -f qcow2 -c 'write -P 9 2M 300k' -c 'write -P 3 100M 64k' '%s' "
                     ">/dev/null",
                     img) == 0);
        models_make(m, size, cs);

        size0 = file_size(img);
        h = img_open(img, false);
        if (!h)
                return;
        PUT_OK(h, m, NB);
        for (unsigned i = 0; i < NB; i++)
                get_same(h, &m[i], false, what);
        t_image_close(loop, h);
        set_bytes = file_size(img) - size0; /* about what one set takes */

        info_same(img, m, NB, false, what);
        check_img(img, false, what);
        if (backing) {
                json_t *j = t_sh_json("qemu-img info --output=json '%s'", img);
                const char *bf = json_string_value(json_object_get(j, "backing-filename"));

                CHECK_MSG(bf && strcmp(bf, base) == 0, "%s: backing file %s", what, bf);
                json_decref(j);
                CHECK_EQ(t_sh("qemu-img compare -q '%s' '%s'", base, img), 1); /* data differs */
        }
        for (unsigned i = 0; i < NB; i++)
                nbd_same(img, &m[i], size, what);
        /* qemu-img convert --bitmaps copies them: the copy exports the same bits. */
        {
                const char *cp = t_path(dir, "put-copy.qcow2");

                (void)t_sh("rm -f '%s'", cp);
                CHECK_EQ(t_sh("qemu-img convert -q --bitmaps -O qcow2 '%s' '%s'", img, cp), 0);
                nbd_same(cp, &m[0], size, "convert --bitmaps");
                nbd_same(cp, &m[1], size, "convert --bitmaps");
                (void)t_sh("rm -f '%s'", cp);
        }
        /* The empty and the all-ones bitmaps (third and fourth in the
         * directory) have no data cluster. */
        REQUIRE(ext_find(img, &e));
        CHECK_EQ(e.nb, NB);
        CHECK_MSG(e.autoclear & 1, "%s: autoclear bit 0", what);
        {
                uint64_t off = e.dir_off;

                for (unsigned i = 0; i < NB; i++) {
                        uint64_t t = peek64(img, off);
                        uint32_t ts = (uint32_t)(peek64(img, off + 8) >> 32);
                        uint32_t nl = (uint32_t)(peek64(img, off + 16) >> 32) & 0xffff;

                        if (i == 2 || i == 3)
                                CHECK_MSG(data_clusters(img, t, ts) == 0,
                                          "%s: bitmap %u has data clusters", what, i);
                        off += (24 + nl + 7) & ~7ull;
                }
        }

        /* Read-only: get as put. */
        h = img_open(img, true);
        for (unsigned i = 0; h && i < NB; i++)
                get_same(h, &m[i], false, "ro reopen");
        CHECK_ERR(get_err(h, "nope", NULL, 0), -ENOENT);
        CHECK_ERR(put(h, m, 1, NULL, 0), -EROFS);
        t_image_close(loop, h);

        /* Read-write without a put: in use in the file, flags as found for get. */
        h = img_open(img, false);
        for (unsigned i = 0; h && i < NB; i++)
                get_same(h, &m[i], false, "rw open");
        t_image_close(loop, h);
        info_same(img, m, NB, true, "after a rw open");
        check_img(img, false, "after a rw open");
        h = img_open(img, true);
        for (unsigned i = 0; h && i < NB; i++)
                get_same(h, &m[i], true, "after a rw open");
        t_image_close(loop, h);
        CHECK_MSG(ext_find(img, &e) && (e.autoclear & 1), "rw open keeps autoclear bit 0");

        /* Replace 20 times: fewer, more, other patterns; the file stops growing. */
        {
                uint64_t size1 = 0;

                for (unsigned round = 0; round < 20; round++) {
                        unsigned n = 1 + round % NB;
                        struct model r[NB];

                        models_make(r, size, cs);
                        for (unsigned i = 0; i < NB; i++) {
                                snprintf(r[i].b.name, sizeof(r[i].b.name), "r%u.%u", round % 3, i);
                                for (unsigned k = 0; k < 8; k++) {
                                        uint64_t b = rnd() % r[i].b.nbits;

                                        model_set(&r[i], b, b + rnd() % 5000);
                                }
                        }
                        h = img_open(img, false);
                        if (!h)
                                break;
                        PUT_OK(h, r, n);
                        t_image_close(loop, h);
                        if (round == 1)
                                size1 = file_size(img);
                        if (round % 5 == 4 || round == 19) {
                                snprintf(what, sizeof(what), "replace round %u cs %u", round, cs);
                                check_img(img, false, what);
                                info_same(img, r, n, false, what);
                                nbd_same(img, &r[n - 1], size, what);
                                h = img_open(img, true);
                                for (unsigned i = 0; h && i < n; i++)
                                        get_same(h, &r[i], false, what);
                                t_image_close(loop, h);
                        }
                        for (unsigned i = 0; i < NB; i++)
                                model_free(&r[i]);
                }
                /* Old and new sets both live during a put; never more. */
                CHECK_MSG(file_size(img) <= size1 + 2 * set_bytes + 16 * (uint64_t)cs,
                          "cs %u: the file grew from %llu to %llu over 20 replacements", cs,
                          (unsigned long long)size1, (unsigned long long)file_size(img));
        }

        /* n = 0: no extension, autoclear bit 0 clear, nothing leaked. */
        h = img_open(img, false);
        if (h) {
                PUT_OK(h, NULL, 0);
                CHECK_ERR(get_err(h, "r0.0", NULL, 0), -ENOENT);
                t_image_close(loop, h);
        }
        CHECK_MSG(!ext_find(img, &e), "n = 0 leaves a bitmaps extension");
        CHECK_MSG(!(e.autoclear & 1), "n = 0 leaves autoclear bit 0");
        info_same(img, m, 0, false, "n = 0");
        check_img(img, false, "n = 0");
        /* The data is untouched: the backing file's and the image's own. */
        CHECK_EQ(t_sh("qemu-io -r -f qcow2 -c 'read -P %d 0 1M' -c 'read -P 9 2M 300k' "
                      "-c 'read -P 3 100M 64k' '%s' | grep -q 'verification failed'",
                      backing ? 7 : 0, img),
                 1);
        for (unsigned i = 0; i < NB; i++)
                model_free(&m[i]);
}

/* QEMU writes, we read. */
static void test_from_qemu(void)
{
        const char *img = t_path(dir, "qemu.qcow2");
        uint64_t size = 64 * MB + 512;
        struct model b1, b2, both[2];
        struct vbd_image *h;
        char msg[512];

        (void)t_sh("rm -f '%s'", img);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 '%s' %llu", img, (unsigned long long)size) == 0);
        REQUIRE(t_sh("qemu-img bitmap --add '%s' b1 -g 64K", img) == 0);
        REQUIRE(t_sh("qemu-img bitmap --add --disable '%s' b2 -g 1M", img) == 0);
        REQUIRE(t_sh("qemu-io -f qcow2 -c 'write 0 4k' -c 'write 1M 130k' -c 'write 40M 1M' "
                     "-c 'write %llu 512' '%s' >/dev/null",
                     (unsigned long long)size - 512, img) == 0);
        model_init(&b1, "b1", 64 * KB, size, true);
        model_set(&b1, 0, 1);
        model_set(&b1, 16, 19);
        model_set(&b1, 640, 656);
        model_set(&b1, b1.b.nbits - 1, b1.b.nbits);
        model_init(&b2, "b2", MB, size, false); /* disabled: nothing recorded */

        h = img_open(img, true);
        if (h) {
                get_same(h, &b1, false, "from qemu");
                get_same(h, &b2, false, "from qemu");
                CHECK_ERR(get_err(h, "b3", NULL, 0), -ENOENT);
                t_image_close(loop, h);
        }
        /* Our rw open leaves them in use; qemu then sees them inconsistent. */
        h = img_open(img, false);
        if (h) {
                get_same(h, &b1, false, "from qemu, rw");
                t_image_close(loop, h);
        }
        both[0] = b1;
        both[1] = b2;
        info_same(img, both, 2, true, "from qemu after our rw open");
        check_img(img, false, "from qemu after our rw open");
        /* Give them back, consistent: qemu-img bitmap can merge from ours. */
        h = img_open(img, false);
        if (h) {
                PUT_OK(h, both, 2);
                t_image_close(loop, h);
        }
        info_same(img, both, 2, false, "given back");
        CHECK_EQ(t_sh("qemu-img bitmap --add '%s' b3 -g 64K && "
                      "qemu-img bitmap --merge b1 '%s' b3",
                      img, img),
                 0);
        b1.b.enabled = true;
        snprintf(b1.b.name, sizeof(b1.b.name), "b3");
        nbd_same(img, &b1, size, "qemu-img bitmap --merge of ours");
        check_img(img, false, "given back");

        /* A program without bitmap support clears autoclear bit 0: stale. */
        {
                struct ext e;

                REQUIRE(ext_find(img, &e));
                poke(img, 88, 8, e.autoclear & ~1ull);
        }
        h = img_open(img, true);
        if (h) {
                CHECK_ERR(get_err(h, "b1", msg, sizeof(msg)), -ESTALE);
                CHECK_MSG(*msg, "-ESTALE without a message");
                t_image_close(loop, h);
        }
        /* A put over stale bitmaps replaces them (the old clusters leak). */
        h = img_open(img, false);
        if (h) {
                CHECK_ERR(get_err(h, "b1", NULL, 0), -ESTALE);
                snprintf(b1.b.name, sizeof(b1.b.name), "b1");
                PUT_OK(h, &b1, 1);
                get_same(h, &b1, false, "put over stale");
                t_image_close(loop, h);
        }
        info_same(img, &b1, 1, false, "put over stale");
        check_img(img, true, "put over stale");
        model_free(&b1);
        model_free(&b2);
}

static void test_refusals(void)
{
        const char *img = t_path(dir, "refuse.qcow2"), *base = t_path(dir, "refuse-base.qcow2");
        uint64_t size = 8 * MB;
        struct model m[2];
        struct vbd_image *h;
        char msg[512], longname[400], back[1024];

        (void)t_sh("rm -f '%s'", img);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 '%s' %llu", img, (unsigned long long)size) == 0);
        model_init(&m[0], "x", 64 * KB, size, true);
        model_init(&m[1], "x", 64 * KB, size, true);
        model_set(&m[0], 3, 9);
        h = img_open(img, false);
        if (!h)
                return;
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL); /* duplicate names */
        snprintf(m[1].b.name, sizeof(m[1].b.name), "y");
        m[1].b.granularity = 256;
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL);
        m[1].b.granularity = 96 * KB;
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL);
        m[1].b.granularity = 64 * KB;
        m[1].b.nbits++;
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL);
        m[1].b.nbits--;
        memset(m[1].b.name, 'n', sizeof(m[1].b.name)); /* not terminated */
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL);
        m[1].b.name[0] = '\0';
        CHECK_ERR(put(h, m, 2, NULL, 0), -EINVAL);
        memset(m[1].b.name, 'n', 1023);
        m[1].b.name[1023] = '\0'; /* the longest name QEMU takes */
        PUT_OK(h, m, 2);
        t_image_close(loop, h);
        check_img(img, false, "longest name");
        h = img_open(img, true);
        if (h) {
                get_same(h, &m[1], false, "longest name");
                t_image_close(loop, h);
        }
        CHECK_EQ(t_sh("qemu-img info '%s' | grep -q nnnnnnnnnnnnnnnnnnnn", img), 0);

        /* 512 B clusters, a long backing file name: the extension does not fit. */
        memset(longname, 'l', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = '\0';
        /* qemu-img writes no feature table with 512 B clusters: the header
         * and the backing format extension take 136 bytes, ours 32 more, so
         * a backing file name of 360 bytes fits alone but not with ours. */
        {
                int rest = 360 - (int)strlen(dir) - 2, a = rest / 2;

                REQUIRE(rest > 2 && a < 250 && rest - a < 250);
                snprintf(back, sizeof(back), "%s/%.*s", dir, a, longname);
                REQUIRE(mkdir(back, 0755) == 0 || errno == EEXIST);
                snprintf(back, sizeof(back), "%s/%.*s/%.*s", dir, a, longname, rest - a, longname);
                REQUIRE(strlen(back) == 360);
        }
        (void)t_sh("rm -f '%s' '%s'", img, base);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' %llu", back,
                     (unsigned long long)size) == 0);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 -o cluster_size=512 -b '%s' -F qcow2 '%s'", back,
                     img) == 0);
        {
                uint8_t before[512], after[512];
                int fd = open(img, O_RDONLY);

                REQUIRE(fd >= 0 && pread(fd, before, 512, 0) == 512);
                close(fd);
                h = img_open(img, false);
                if (h) {
                        CHECK_ERR(put(h, m, 1, msg, sizeof(msg)), -ENOSPC);
                        CHECK_MSG(strstr(msg, "first cluster"), "ENOSPC message: %s", msg);
                        t_image_close(loop, h);
                }
                fd = open(img, O_RDONLY);
                REQUIRE(fd >= 0 && pread(fd, after, 512, 0) == 512);
                close(fd);
                CHECK_MSG(memcmp(before, after, 512) == 0, "a refused put changed the header");
                check_img(img, false, "no room in the first cluster");
        }
        (void)t_sh("rm -f '%s'", back);
        model_free(&m[0]);
        model_free(&m[1]);
}

/* Hostile directories: open works, the data reads, get fails with a reason. */
static void test_hostile(void)
{
        static const char *const what[] = {
            "directory past the end", "directory unaligned",      "table size + 1",
            "name size 65535",        "granularity 40",           "nb_bitmaps + 1",
            "nb_bitmaps 0",           "table entry past the end", "table entry unaligned",
            "directory size huge",    "table at the L1 table",    "extension length 16",
            "reserved field set"};
        const char *good = t_path(dir, "good.qcow2"), *img = t_path(dir, "bad.qcow2");
        uint64_t size = 16 * MB;
        struct model m[2];
        struct vbd_image *h;
        struct ext e;
        char msg[512];

        (void)t_sh("rm -f '%s'", good);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 '%s' %llu", good, (unsigned long long)size) == 0);
        REQUIRE(t_sh("qemu-io -f qcow2 -c 'write -P 5 0 64k' '%s' >/dev/null", good) == 0);
        model_init(&m[0], "h0", 512, size, true);
        model_init(&m[1], "h1", 64 * KB, size, true);
        model_set(&m[0], 0, 100);
        model_set(&m[0], 5000, 9000);
        model_set(&m[1], 7, 8);
        h = img_open(good, false);
        if (!h)
                return;
        PUT_OK(h, m, 2);
        t_image_close(loop, h);
        REQUIRE(ext_find(good, &e));

        for (int c = 0; c < (int)VBD_ARRAY_SIZE(what); c++) {
                uint64_t fsz = file_size(good);
                void *buf = aligned_alloc(4096, 64 * KB);
                int r;

                REQUIRE(t_sh("cp '%s' '%s'", good, img) == 0);
                switch (c) {
                case 0:
                        poke(img, e.ext_off + 16, 8, (fsz + 64 * KB) & ~(64 * KB - 1));
                        break;
                case 1:
                        poke(img, e.ext_off + 16, 8, e.dir_off + 8);
                        break;
                case 2:
                        poke(img, e.dir_off + 8, 4, e.tsize0 + 1);
                        break;
                case 3:
                        poke(img, e.dir_off + 18, 2, 0xffff);
                        break;
                case 4:
                        poke(img, e.dir_off + 17, 1, 40);
                        break;
                case 5:
                        poke(img, e.ext_off, 4, e.nb + 1);
                        break;
                case 6:
                        poke(img, e.ext_off, 4, 0);
                        break;
                case 7:
                        poke(img, e.table0, 8, (fsz + 10 * MB) & ~(64 * KB - 1));
                        break;
                case 8:
                        poke(img, e.table0, 8, (peek64(img, e.table0) | 0x1000) & ~1ull);
                        break;
                case 9:
                        poke(img, e.ext_off + 8, 8, 1ull << 40);
                        break;
                case 10:
                        poke(img, e.dir_off, 8, peek64(img, 40));
                        break;
                case 11:
                        poke(img, e.ext_off - 4, 4, 16);
                        break;
                case 12:
                        poke(img, e.ext_off + 4, 4, 1);
                        break;
                }
                for (int rw = 0; rw < 2; rw++) {
                        h = img_open(img, !rw);
                        if (!h)
                                continue;
                        r = do_read(h, 0, buf, 64 * KB);
                        CHECK_MSG(r == 0 && ((uint8_t *)buf)[100] == 5, "%s: the data reads",
                                  what[c]);
                        msg[0] = '\0';
                        r = get_err(h, "h0", msg, sizeof(msg));
                        CHECK_MSG(r == -EIO && *msg, "%s (%s): get h0 gives %d: %s", what[c],
                                  rw ? "rw" : "ro", r, msg);
                        if (rw)
                                fprintf(stderr, "%s: %s\n", what[c], msg);
                        t_image_close(loop, h);
                }
                /* A put replaces the lot; qemu then finds it clean (bar leaks). */
                h = img_open(img, false);
                if (h) {
                        PUT_OK(h, m, 2);
                        get_same(h, &m[0], false, what[c]);
                        t_image_close(loop, h);
                        check_img(img, true, what[c]);
                        info_same(img, m, 2, false, what[c]);
                        nbd_same(img, &m[0], size, what[c]);
                }
                free(buf);
        }
        (void)t_sh("rm -f '%s' '%s'", good, img);
        model_free(&m[0]);
        model_free(&m[1]);
}

/* Sets for the crash test: 0 the initial one, 1 and 2 what the child puts. */
static unsigned crash_set(struct model *m, unsigned which, uint64_t size)
{
        static const char *names[3][3] = {{"i0"}, {"a0", "a1"}, {"b0", "b1", "b2"}};
        unsigned n = which + 1;

        for (unsigned i = 0; i < n; i++) {
                model_init(&m[i], names[which][i], i == 1 ? 512 : 64 * KB, size, i != 2);
                for (uint64_t b = which + i; b < m[i].b.nbits; b += 3 + which * 5 + i)
                        model_set(&m[i], b, b + 1 + i);
        }
        return n;
}

static void crash_child(const char *path, int wfd, uint64_t size)
{
        struct model m[2][3];
        unsigned n[2];
        struct vbd_image *h;

        loop = ev_loop_new(EVFLAG_AUTO); /* the parent's io_context does not survive fork */
        aio = loop ? vbd_aio_new(loop, 64) : NULL;
        h = aio ? img_open(path, false) : NULL;
        if (!h)
                _exit(2);
        n[0] = crash_set(m[0], 1, size);
        n[1] = crash_set(m[1], 2, size);
        for (uint32_t k = 0;; k++) {
                if (put(h, m[k % 2], n[k % 2], NULL, 0) < 0)
                        _exit(3);
                if (write(wfd, &k, sizeof(k)) != sizeof(k))
                        _exit(4);
        }
}

/* Killed in the middle of puts: the old set or the new, leaks at most. */
static void test_crash(void)
{
        const char *img = t_path(dir, "crash.qcow2");
        uint64_t size = 64 * MB;
        struct model sets[3][3];
        unsigned nsets[3];
        struct vbd_image *h;
        unsigned seen[3] = {0};

        (void)t_sh("rm -f '%s'", img);
        REQUIRE(t_sh("qemu-img create -q -f qcow2 '%s' %llu", img, (unsigned long long)size) == 0);
        for (unsigned w = 0; w < 3; w++)
                nsets[w] = crash_set(sets[w], w, size);
        h = img_open(img, false);
        if (!h)
                return;
        PUT_OK(h, sets[0], nsets[0]);
        t_image_close(loop, h);
        for (unsigned round = 0; round < 8; round++) {
                json_t *j, *bms;
                uint32_t k, puts = 0;
                int p[2], st;
                unsigned w;
                pid_t pid;

                REQUIRE(pipe(p) == 0);
                pid = fork();
                REQUIRE(pid >= 0);
                if (pid == 0) {
                        close(p[0]);
                        crash_child(img, p[1], size);
                        _exit(0);
                }
                close(p[1]);
                usleep(30000 + (useconds_t)(rnd() % 500000));
                kill(pid, SIGKILL);
                while (read(p[0], &k, sizeof(k)) == sizeof(k))
                        puts = k + 1;
                close(p[0]);
                waitpid(pid, &st, 0);
                CHECK_MSG(WIFSIGNALED(st), "crash child exited with %d",
                          WIFEXITED(st) ? WEXITSTATUS(st) : -1);
                check_img(img, true, "after a kill in a put");
                j = t_sh_json("qemu-img info --output=json '%s' 2>/dev/null", img);
                bms = json_object_get(
                    json_object_get(json_object_get(j, "format-specific"), "data"), "bitmaps");
                w = json_array_size(bms) ? (unsigned)json_array_size(bms) - 1 : 3;
                CHECK_MSG(w < 3, "round %u: %zu bitmaps after the kill", round,
                          json_array_size(bms));
                json_decref(j);
                if (w >= 3)
                        break;
                seen[w]++;
                h = img_open(img, true);
                for (unsigned i = 0; h && i < nsets[w]; i++)
                        get_same(h, &sets[w][i], -1, "after a kill"); /* in use: marked at open */
                t_image_close(loop, h);
                CHECK_MSG(puts || round || w == 0, "round %u: a set never put", round);
        }
        fprintf(stderr, "crash rounds: initial set %u, first %u, second %u\n", seen[0], seen[1],
                seen[2]);
        for (unsigned w = 0; w < 3; w++)
                for (unsigned i = 0; i < nsets[w]; i++)
                        model_free(&sets[w][i]);
}

int main(void)
{
        const char *tmp = getenv("TMPDIR");

        if (system("qemu-img --version >/dev/null 2>&1") != 0 ||
            system("qemu-io --version >/dev/null 2>&1") != 0 ||
            system("qemu-nbd --version >/dev/null 2>&1") != 0 ||
            system("nbdinfo --version >/dev/null 2>&1") != 0) {
                fprintf(stderr, "qemu-img, qemu-io, qemu-nbd or nbdinfo not found: skipped\n");
                return 77;
        }
        snprintf(dir, sizeof(dir), "%s/qcow2-bitmaps.XXXXXX", tmp ? tmp : "/var/tmp");
        if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
        }
        umask(022);
        signal(SIGPIPE, SIG_IGN);
        loop = ev_default_loop(0);
        aio = vbd_aio_new(loop, 64);
        if (!aio) {
                perror("vbd_aio_new");
                return 1;
        }
        test_put(65536, false);
        test_put(65536, true);
        test_put(512, false);
        test_put(2 * MB, false);
        test_from_qemu();
        test_refusals();
        test_hostile();
        test_crash();

        vbd_aio_free(aio);
        if (!check_failures)
                (void)t_sh("rm -rf '%s'", dir);
        return check_result("test-qcow2-bitmaps");
}
