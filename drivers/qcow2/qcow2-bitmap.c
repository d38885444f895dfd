/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Stored bitmaps: qcow2's bitmaps extension (QEMU docs/interop/qcow2.txt,
 * "Bitmaps"), so that a change tracker's bitmaps live in the image where
 * qemu-img, qemu-nbd and QEMU see them.
 *
 * Layout: the header extension (nb_bitmaps, directory size and offset)
 * names a directory of variable-length entries; each entry names a bitmap
 * table (one entry per cluster of bitmap data: a host cluster, or 0 for a
 * cluster of zeros, or 1 for a cluster of ones); bit b of the data covers
 * guest bytes [b * granularity, (b + 1) * granularity), at byte b / 8, bit
 * b % 8 (least significant first).  The extension is valid only while
 * autoclear bit 0 is set: a program that does not know it clears the bit
 * when it opens the image read-write, and the bitmaps are then stale.
 *
 * At open the directory and every table are read and checked (the image is
 * hostile input); a bad directory leaves the bitmaps unreadable (get fails
 * with the reason) but the image usable.  Every cluster the bitmaps use is
 * registered for qcow2_is_meta(), so it is never written as guest data.
 * A read-write open marks every bitmap in use in the file before any write
 * (what QEMU does: the copy in the file is no longer current) and keeps
 * autoclear bit 0; get still reports the flags as found.
 *
 * put writes a whole new set: data clusters, tables and the directory in
 * fresh clusters (refcount 1, durable), then the header extension area of
 * cluster 0, then frees the old set.  A crash leaves the old set or the new
 * one, and at most leaked clusters.
 */
#define VBD_LOG_TOPIC "drv.qcow2"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"
#include "vbd/log.h"

/* Bytes of bitmap tables read at open, over all bitmaps. */
#define BM_MAX_TABLES_TOTAL (64ull << 20)
/* Allocation attempts for one contiguous run (each crossing of a refcount
 * block boundary without a block may break a run once). */
#define BM_ALLOC_TRIES 4096

struct cl_vec {
        uint64_t *v;
        size_t n, cap;
};

static int vec_push(struct cl_vec *c, uint64_t off)
{
        if (c->n == c->cap) {
                size_t cap = c->cap ? c->cap * 2 : 64;
                uint64_t *v = realloc(c->v, cap * sizeof(*v));

                if (!v)
                        return -ENOMEM;
                c->v = v;
                c->cap = cap;
        }
        c->v[c->n++] = off;
        return 0;
}

static int vec_push_range(struct qcow2_state *s, struct cl_vec *c, uint64_t off, uint64_t len)
{
        for (uint64_t o = off; o < off + len; o += s->cs) {
                int r = vec_push(c, o);

                if (r < 0)
                        return r;
        }
        return 0;
}

static int u64_cmp(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

        return x < y ? -1 : x > y;
}

static void bm_clear(struct qcow2_state *s)
{
        qcow2_bm_free(s->bms, s->nbms);
        s->bms = NULL;
        s->nbms = 0;
        free(s->bm_cl);
        s->bm_cl = NULL;
        s->nbm_cl = 0;
}

static void bm_bad(struct qcow2_state *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bm_bad(struct qcow2_state *s, const char *fmt, ...)
{
        va_list ap;

        bm_clear(s);
        s->bm_state = QCOW2_BMS_BAD;
        va_start(ap, fmt);
        vsnprintf(s->bm_why, sizeof(s->bm_why), fmt, ap);
        va_end(ap);
        vbd_warn("'%s': the stored bitmaps cannot be used: %s", s->path ? s->path : "?", s->bm_why);
}

void qcow2_bitmaps_close(struct qcow2_state *s)
{
        bm_clear(s);
        s->bm_state = QCOW2_BMS_NONE;
}

uint64_t qcow2_bitmaps_autoclear_keep(const struct qcow2_state *s)
{
        return s->bm_state == QCOW2_BMS_OK ? QCOW2_AUTOCLEAR_BITMAPS : 0;
}

/* Read bitmap m's table (host order) into *ret, checking every entry; a bad
 * entry is left 0 and its reason in *why (the first one). */
static int table_read(struct qcow2_state *s, const struct qcow2_bm *m, uint64_t **ret,
                      const char **why)
{
        size_t bytes = (size_t)m->table_size * 8;
        uint64_t *t = malloc(bytes);
        int r;

        *why = NULL;
        if (!t)
                return -ENOMEM;
        r = qcow2_pread(s, t, bytes, m->table_offset);
        if (r < 0) {
                free(t);
                return r;
        }
        for (uint32_t i = 0; i < m->table_size; i++) {
                const char *w;

                t[i] = vbd_get_be64(&t[i]);
                if (qcow2_bitmap_entry_check(t[i], s->cs, s->file_size, &w) < 0) {
                        if (!*why)
                                *why = w;
                        t[i] = 0;
                }
        }
        *ret = t;
        return 0;
}

/* Mark every bitmap in use in the directory dir (len bytes, at dir_off). */
static int mark_in_use(struct qcow2_state *s, uint8_t *dir, size_t len, uint64_t dir_off)
{
        bool change = false;
        size_t off = 0;
        int r;

        for (uint32_t i = 0; i < s->nbms && off + 24 <= len; i++) {
                uint32_t f = vbd_get_be32(dir + off + 12);

                if (!(f & QCOW2_BME_IN_USE)) {
                        vbd_put_be32(dir + off + 12, f | QCOW2_BME_IN_USE);
                        change = true;
                }
                off += qcow2_bitmap_dir_entry_size((uint32_t)dir[off + 18] << 8 | dir[off + 19],
                                                   vbd_get_be32(dir + off + 20));
        }
        if (!change)
                return 0;
        /* In place: the flags words are 8-byte aligned halves, never torn
         * across sectors; a crash leaves each old or new. */
        r = qcow2_pwrite(s, dir, len, dir_off);
        if (r == 0)
                r = qcow2_sync(s);
        return r;
}

int qcow2_bitmaps_open(struct qcow2_state *s, struct vbd_err *err)
{
        struct qcow2_header *h = &s->h;
        struct cl_vec cl = {0};
        uint64_t tables_total = 0;
        uint8_t *dir = NULL;
        char why[sizeof(s->bm_why)];
        int r;

        s->bm_state = QCOW2_BMS_NONE;
        if (!h->has_bitmaps)
                return 0;
        if (h->version < 3) {
                bm_bad(s, "a bitmaps extension in a version 2 image");
                return 0;
        }
        if (!(h->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
                s->bm_state = QCOW2_BMS_STALE;
                vbd_info("'%s': the stored bitmaps are stale (written by a program that "
                         "does not keep them)",
                         s->path ? s->path : "?");
                return 0;
        }
        if (h->bitmaps_ext_len != 24 || h->bitmaps_reserved) {
                bm_bad(s, "bitmaps extension of %u bytes, reserved field %#x", h->bitmaps_ext_len,
                       h->bitmaps_reserved);
                return 0;
        }
        if (h->bitmap_dir_size == 0 || h->bitmap_dir_size > QCOW2_MAX_BITMAP_DIR ||
            h->bitmap_dir_offset % s->cs || h->bitmap_dir_offset < s->cs ||
            h->bitmap_dir_offset > s->file_size ||
            h->bitmap_dir_size > s->file_size - h->bitmap_dir_offset) {
                bm_bad(s,
                       "bitmap directory at %llu (%llu bytes) is misaligned, too large or "
                       "outside the file",
                       (unsigned long long)h->bitmap_dir_offset,
                       (unsigned long long)h->bitmap_dir_size);
                return 0;
        }
        dir = malloc(h->bitmap_dir_size);
        if (!dir)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory for the bitmap directory");
        r = qcow2_pread(s, dir, h->bitmap_dir_size, h->bitmap_dir_offset);
        if (r < 0) {
                bm_bad(s, "cannot read the bitmap directory: %s", strerror(-r));
                goto out;
        }
        r = qcow2_bitmap_dir_parse(dir, h->bitmap_dir_size, h->nb_bitmaps, s->cs, s->size,
                                   s->file_size, &s->bms, &s->nbms, why, sizeof(why));
        if (r == -ENOMEM) {
                r = vbd_err_set(err, r, "qcow2: out of memory for the bitmap directory");
                goto out;
        }
        if (r < 0) {
                bm_bad(s, "%s", why);
                goto out;
        }

        /* Every cluster of the set: directory, tables, data. */
        r = vec_push_range(s, &cl, h->bitmap_dir_offset, h->bitmap_dir_size);
        for (uint32_t i = 0; r == 0 && i < s->nbms; i++) {
                struct qcow2_bm *m = &s->bms[i];
                const char *w;
                uint64_t *t;

                tables_total += (uint64_t)m->table_size * 8;
                if (tables_total > BM_MAX_TABLES_TOTAL) {
                        bm_bad(s, "bitmap tables of more than %llu bytes",
                               (unsigned long long)BM_MAX_TABLES_TOTAL);
                        goto out;
                }
                r = vec_push_range(s, &cl, m->table_offset, (uint64_t)m->table_size * 8);
                if (r < 0)
                        break;
                r = table_read(s, m, &t, &w);
                if (r == -ENOMEM)
                        break;
                if (r < 0) {
                        bm_bad(s, "cannot read the table of bitmap '%.64s': %s", m->name,
                               strerror(-r));
                        goto out;
                }
                if (w && !m->bad)
                        m->bad = w;
                for (uint32_t k = 0; r == 0 && k < m->table_size; k++)
                        if (t[k] & QCOW2_OFFSET_MASK)
                                r = vec_push(&cl, t[k] & QCOW2_OFFSET_MASK);
                free(t);
        }
        if (r < 0) {
                r = vbd_err_set(err, r, "qcow2: out of memory for the bitmaps");
                goto out;
        }
        qsort(cl.v, cl.n, sizeof(*cl.v), u64_cmp);
        for (size_t i = 0; i < cl.n; i++) {
                if (i && cl.v[i] == cl.v[i - 1]) {
                        bm_bad(s, "bitmap clusters used twice (at %llu)",
                               (unsigned long long)cl.v[i]);
                        goto out;
                }
                if (qcow2_is_meta(s, cl.v[i], s->cs)) {
                        bm_bad(s, "a bitmap cluster overlaps other metadata (at %llu)",
                               (unsigned long long)cl.v[i]);
                        goto out;
                }
        }
        s->bm_cl = cl.v;
        s->nbm_cl = cl.n;
        cl.v = NULL;
        s->bm_state = QCOW2_BMS_OK;
        r = 0;
        if (!s->readonly) {
                r = mark_in_use(s, dir, h->bitmap_dir_size, h->bitmap_dir_offset);
                if (r < 0)
                        r = vbd_err_set(err, r, "qcow2: cannot mark the bitmaps in use: %s",
                                        strerror(-r));
        }
out:
        free(cl.v);
        free(dir);
        return r < 0 && s->bm_state != QCOW2_BMS_BAD ? r : 0;
}

/* ---- get ---- */

static void set_ones(uint64_t *w, uint64_t from, uint64_t to)
{
        for (uint64_t b = from; b < to;) {
                if (b % 64 == 0 && to - b >= 64) {
                        w[b / 64] = UINT64_MAX;
                        b += 64;
                } else {
                        w[b / 64] |= 1ull << (b % 64);
                        b++;
                }
        }
}

int qcow2_bitmap_get(struct qcow2_state *s, const char *name, struct vbd_stored_bitmap *ret,
                     struct vbd_err *err)
{
        const struct qcow2_bm *m = NULL;
        uint64_t gran, nbits, nbytes, nwords, *t = NULL, *bits = NULL;
        uint8_t *buf = NULL;
        const char *w;
        int r;

        switch (s->bm_state) {
        case QCOW2_BMS_NONE:
                return vbd_err_set(err, -ENOENT, "qcow2: no bitmap '%s' (the image has none)",
                                   name);
        case QCOW2_BMS_STALE:
                return vbd_err_set(err, -ESTALE,
                                   "qcow2: the image's bitmaps are stale: a program that does "
                                   "not keep them wrote the image");
        case QCOW2_BMS_BAD:
                return vbd_err_set(err, -EIO, "qcow2: corrupt bitmaps: %s", s->bm_why);
        case QCOW2_BMS_OK:
                break;
        }
        for (uint32_t i = 0; i < s->nbms; i++)
                if (strcmp(s->bms[i].name, name) == 0)
                        m = &s->bms[i];
        if (!m)
                return vbd_err_set(err, -ENOENT, "qcow2: no bitmap '%s'", name);
        if (m->bad)
                return vbd_err_set(err, -EIO, "qcow2: bitmap '%s' cannot be read: %s", name,
                                   m->bad);
        gran = 1ull << m->gran_bits;
        nbits = (s->size + gran - 1) >> m->gran_bits;
        nbytes = (nbits + 7) / 8;
        nwords = (nbits + 63) / 64;
        if (qcow2_bitmap_table_size(nbits, s->cs) != m->table_size) /* checked at open */
                return vbd_err_set(err, -EIO, "qcow2: bitmap '%s': table size mismatch", name);
        r = table_read(s, m, &t, &w);
        if (r < 0)
                return vbd_err_set(err, r, "qcow2: cannot read the table of bitmap '%s': %s", name,
                                   strerror(-r));
        if (w) {
                r = vbd_err_set(err, -EIO, "qcow2: bitmap '%s': %s", name, w);
                goto out;
        }
        bits = calloc(nwords ? nwords : 1, 8);
        buf = malloc(s->cs);
        if (!bits || !buf) {
                r = vbd_err_set(err, -ENOMEM, "qcow2: out of memory for bitmap '%s'", name);
                goto out;
        }
        for (uint32_t i = 0; i < m->table_size; i++) {
                uint64_t first = (uint64_t)i * s->cs, chunk = nbytes - first;
                uint64_t off = t[i] & QCOW2_OFFSET_MASK;

                if (chunk > s->cs)
                        chunk = s->cs;
                if (!off) {
                        if (t[i] & QCOW2_BMT_ALL_ONES)
                                set_ones(bits, first * 8,
                                         (first + chunk) * 8 < nbits ? (first + chunk) * 8 : nbits);
                        continue;
                }
                r = qcow2_pread(s, buf, chunk, off);
                if (r < 0) {
                        r = vbd_err_set(err, r, "qcow2: cannot read bitmap '%s': %s", name,
                                        strerror(-r));
                        goto out;
                }
                for (uint64_t k = 0; k < chunk; k++)
                        bits[(first + k) / 8] |= (uint64_t)buf[k] << (8 * ((first + k) % 8));
        }
        if (nbits % 64)
                bits[nwords - 1] &= (1ull << (nbits % 64)) - 1; /* tail bits must be 0 */
        memset(ret, 0, sizeof(*ret));
        snprintf(ret->name, sizeof(ret->name), "%s", m->name);
        ret->granularity = (uint32_t)gran;
        ret->in_use = m->flags & QCOW2_BME_IN_USE;
        ret->enabled = m->flags & QCOW2_BME_AUTO;
        ret->nbits = nbits;
        ret->bits = bits;
        bits = NULL;
        r = 0;
out:
        free(t);
        free(buf);
        free(bits);
        return r;
}

/* ---- put ---- */

static int name_idx_cmp(const void *a, const void *b)
{
        const struct vbd_stored_bitmap *x = *(const struct vbd_stored_bitmap *const *)a;
        const struct vbd_stored_bitmap *y = *(const struct vbd_stored_bitmap *const *)b;

        return strcmp(x->name, y->name);
}

static int check_input(struct qcow2_state *s, const struct vbd_stored_bitmap *b, unsigned n,
                       uint64_t *ret_dir, struct vbd_err *err)
{
        const struct vbd_stored_bitmap **sorted;
        uint64_t dir = 0;

        if (n > QCOW2_MAX_BITMAPS)
                return vbd_err_set(err, -EINVAL, "qcow2: %u bitmaps (at most %u)", n,
                                   QCOW2_MAX_BITMAPS);
        if (n && !b)
                return vbd_err_set(err, -EINVAL, "qcow2: no bitmaps given");
        if (n && s->size == 0)
                return vbd_err_set(err, -EINVAL, "qcow2: an image of 0 bytes keeps no bitmaps");
        for (unsigned i = 0; i < n; i++) {
                const struct vbd_stored_bitmap *x = &b[i];
                size_t len = strnlen(x->name, sizeof(x->name));
                uint64_t g = x->granularity, bytes;

                if (len == 0 || len > QCOW2_BITMAP_NAME_MAX)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: bitmap %u: name of %zu bytes "
                                           "(1..%u)",
                                           i, len, QCOW2_BITMAP_NAME_MAX);
                if (g < (1ull << QCOW2_BITMAP_MIN_GRAN_BITS) ||
                    g > (1ull << QCOW2_BITMAP_MAX_GRAN_BITS) || (g & (g - 1)))
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: bitmap '%s': granularity %llu (a power of two, "
                                           "512 B .. 2 GiB)",
                                           x->name, (unsigned long long)g);
                if (x->nbits != (s->size + g - 1) / g)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: bitmap '%s': %llu bits, the image needs %llu",
                                           x->name, (unsigned long long)x->nbits,
                                           (unsigned long long)((s->size + g - 1) / g));
                if (!x->bits)
                        return vbd_err_set(err, -EINVAL, "qcow2: bitmap '%s' has no bits", x->name);
                bytes = qcow2_bitmap_table_size(x->nbits, s->cs) * s->cs;
                if (bytes > QCOW2_MAX_BITMAP_BYTES)
                        return vbd_err_set(err, -EFBIG,
                                           "qcow2: bitmap '%s' would take more than 512 MiB; "
                                           "use a larger granularity",
                                           x->name);
                dir += qcow2_bitmap_dir_entry_size(len, 0);
        }
        if (dir > QCOW2_MAX_BITMAP_DIR)
                return vbd_err_set(err, -EFBIG,
                                   "qcow2: bitmap directory of %llu bytes (at most "
                                   "%llu)",
                                   (unsigned long long)dir,
                                   (unsigned long long)QCOW2_MAX_BITMAP_DIR);
        sorted = malloc((n ? n : 1) * sizeof(*sorted));
        if (!sorted)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
        for (unsigned i = 0; i < n; i++)
                sorted[i] = &b[i];
        qsort(sorted, n, sizeof(*sorted), name_idx_cmp);
        for (unsigned i = 1; i < n; i++)
                if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
                        vbd_err_set(err, -EINVAL, "qcow2: two bitmaps named '%s'", sorted[i]->name);
                        free(sorted);
                        return -EINVAL;
                }
        free(sorted);
        *ret_dir = dir;
        return 0;
}

/* want contiguous clusters at *ret (refcount 1), registered in new; pieces
 * that could not be joined go to junk (freed by the caller). */
static int alloc_run(struct qcow2_state *s, uint64_t want, uint64_t *ret, struct cl_vec *new,
                     struct cl_vec *junk)
{
        uint64_t start = 0, have = 0, host, got;
        bool fresh;
        int r;

        for (unsigned tries = 0; tries < BM_ALLOC_TRIES; tries++) {
                r = qcow2_alloc(s, want - have, &host, &got, &fresh);
                if (r < 0)
                        break;
                if (have && host == start + have * s->cs) {
                        have += got;
                } else {
                        if (have && (r = vec_push_range(s, junk, start, have * s->cs)) < 0) {
                                (void)qcow2_free_now(s, host, got * s->cs);
                                break;
                        }
                        start = host;
                        have = got;
                }
                if (have == want) {
                        r = vec_push_range(s, new, start, have * s->cs);
                        if (r < 0)
                                break;
                        *ret = start;
                        return 0;
                }
        }
        if (have)
                (void)qcow2_free_now(s, start, have * s->cs);
        return r < 0 ? r : -ENOSPC;
}

/* Bytes [first, first + len) of the bitmap x (from its host-order words). */
static void pack_bytes(const struct vbd_stored_bitmap *x, uint64_t first, uint64_t len,
                       uint8_t *out)
{
        for (uint64_t k = 0; k < len; k++) {
                uint64_t byte = first + k;

                out[k] = (uint8_t)(x->bits[byte / 8] >> (8 * (byte % 8)));
        }
        /* Bits past nbits are 0 in the file. */
        if (first + len == (x->nbits + 7) / 8 && x->nbits % 8)
                out[len - 1] &= (uint8_t)((1u << (x->nbits % 8)) - 1);
}

/* The table entry for a cluster of bitmap bytes in buf[0, len): 0 for zeros,
 * 1 for ones (every bit in the bitmap set), else -1 (a data cluster). */
static int64_t trivial_entry(const uint8_t *buf, uint64_t len, uint64_t nbits_here)
{
        bool zero = true, ones = true;

        for (uint64_t k = 0; k < len; k++) {
                uint8_t full =
                    k == len - 1 && nbits_here % 8 ? (uint8_t)((1u << (nbits_here % 8)) - 1) : 0xff;

                if (buf[k])
                        zero = false;
                if (buf[k] != full)
                        ones = false;
                if (!zero && !ones)
                        return -1;
        }
        return zero ? 0 : 1;
}

/* Write bitmap x's data and table; its table at *ret_table. */
static int write_bitmap(struct qcow2_state *s, const struct vbd_stored_bitmap *x, uint8_t *buf,
                        uint64_t *ret_table, uint32_t *ret_tsize, struct cl_vec *new,
                        struct cl_vec *junk)
{
        uint64_t tsize = qcow2_bitmap_table_size(x->nbits, s->cs), nbytes = (x->nbits + 7) / 8;
        uint64_t tbytes = (tsize * 8 + s->cs - 1) / s->cs * s->cs, host, got;
        uint8_t *table = calloc(1, tbytes);
        bool fresh;
        int r = 0;

        if (!table)
                return -ENOMEM;
        for (uint64_t i = 0; i < tsize; i++) {
                uint64_t first = i * s->cs, len = nbytes - first < s->cs ? nbytes - first : s->cs;
                uint64_t nb = x->nbits - first * 8 < len * 8 ? x->nbits - first * 8 : len * 8;
                int64_t e;

                pack_bytes(x, first, len, buf);
                e = trivial_entry(buf, len, nb);
                if (e >= 0) {
                        vbd_put_be64(table + i * 8, (uint64_t)e);
                        continue;
                }
                memset(buf + len, 0, s->cs - len);
                r = qcow2_alloc(s, 1, &host, &got, &fresh);
                if (r < 0)
                        break;
                r = vec_push(new, host);
                if (r < 0) {
                        (void)qcow2_free_now(s, host, s->cs);
                        break;
                }
                r = qcow2_pwrite(s, buf, s->cs, host);
                if (r < 0)
                        break;
                vbd_put_be64(table + i * 8, host);
        }
        if (r == 0)
                r = alloc_run(s, tbytes / s->cs, &host, new, junk);
        if (r == 0)
                r = qcow2_pwrite(s, table, tbytes, host);
        if (r == 0) {
                *ret_table = host;
                *ret_tsize = (uint32_t)tsize;
        }
        free(table);
        return r;
}

static void free_clusters(struct qcow2_state *s, const uint64_t *v, size_t n)
{
        for (size_t i = 0; i < n; i++)
                (void)qcow2_free_now(s, v[i], s->cs);
}

int qcow2_bitmaps_put(struct qcow2_state *s, const struct vbd_stored_bitmap *b, unsigned n,
                      struct vbd_err *err)
{
        struct cl_vec new = {0}, junk = {0};
        struct qcow2_bm *bms = NULL;
        uint8_t *hdr = NULL, *out = NULL, *dir = NULL, *buf = NULL, ext[24];
        uint64_t dir_size = 0, dir_bytes = 0, dir_off = 0, autoclear;
        size_t hlen, off;
        bool header_tried = false;
        int r;

        if (s->readonly)
                return vbd_err_set(err, -EROFS, "qcow2: the image is open read-only");
        if (s->h.version < 3)
                return vbd_err_set(err, -ENOTSUP, "qcow2: bitmaps need a version 3 image");
        r = check_input(s, b, n, &dir_size, err);
        if (r < 0)
                return r;

        /* The new header area first: refuse before allocating when it cannot fit. */
        hdr = calloc(1, s->cs);
        out = malloc(s->cs);
        buf = malloc(s->cs);
        bms = calloc(n ? n : 1, sizeof(*bms));
        if (!hdr || !out || !buf || !bms) {
                r = vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
                goto out;
        }
        r = qcow2_pread(s, hdr, s->file_size < s->cs ? s->file_size : s->cs, 0);
        if (r < 0) {
                r = vbd_err_set(err, r, "qcow2: cannot read the header: %s", strerror(-r));
                goto out;
        }
        memset(ext, 0, sizeof(ext));
        autoclear = n ? s->h.autoclear | QCOW2_AUTOCLEAR_BITMAPS
                      : s->h.autoclear & ~QCOW2_AUTOCLEAR_BITMAPS;
        r = qcow2_header_rebuild(hdr, s->cs, &s->h, n ? ext : NULL, autoclear, out, &hlen, err);
        if (r < 0)
                goto out;

        /* Data and tables, then the directory: fresh clusters. */
        if (n) {
                dir_bytes = (dir_size + s->cs - 1) / s->cs * s->cs;
                dir = calloc(1, dir_bytes);
                if (!dir) {
                        r = vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
                        goto out;
                }
        }
        off = 0;
        for (unsigned i = 0; i < n; i++) {
                const struct vbd_stored_bitmap *x = &b[i];
                size_t len = strlen(x->name);
                unsigned gbits = (unsigned)__builtin_ctz(x->granularity);
                uint32_t flags =
                    (x->in_use ? QCOW2_BME_IN_USE : 0) | (x->enabled ? QCOW2_BME_AUTO : 0);

                bms[i].name = strdup(x->name);
                if (!bms[i].name) {
                        r = vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
                        goto fail;
                }
                r = write_bitmap(s, x, buf, &bms[i].table_offset, &bms[i].table_size, &new, &junk);
                if (r < 0) {
                        vbd_err_set(err, r, "qcow2: cannot write bitmap '%s': %s", x->name,
                                    strerror(-r));
                        goto fail;
                }
                bms[i].flags = flags;
                bms[i].gran_bits = (uint8_t)gbits;
                vbd_put_be64(dir + off, bms[i].table_offset);
                vbd_put_be32(dir + off + 8, bms[i].table_size);
                vbd_put_be32(dir + off + 12, flags);
                dir[off + 16] = 1; /* dirty tracking */
                dir[off + 17] = (uint8_t)gbits;
                dir[off + 18] = (uint8_t)(len >> 8);
                dir[off + 19] = (uint8_t)len;
                memcpy(dir + off + 24, x->name, len);
                off += qcow2_bitmap_dir_entry_size(len, 0);
        }
        if (n) {
                r = alloc_run(s, dir_bytes / s->cs, &dir_off, &new, &junk);
                if (r == 0)
                        r = qcow2_pwrite(s, dir, dir_bytes, dir_off);
                if (r < 0) {
                        vbd_err_set(err, r, "qcow2: cannot write the bitmap directory: %s",
                                    strerror(-r));
                        goto fail;
                }
        }
        free_clusters(s, junk.v, junk.n);
        junk.n = 0;
        /* Refcounts and everything written durable before the header names them. */
        r = qcow2_flush_sync(s);
        if (r < 0) {
                vbd_err_set(err, r, "qcow2: cannot write the bitmaps: %s", strerror(-r));
                goto fail;
        }

        if (n) {
                vbd_put_be32(ext, n);
                vbd_put_be64(ext + 8, dir_size);
                vbd_put_be64(ext + 16, dir_off);
        }
        /* Cluster 0 again: the flush may have set the dirty bit (lazy refcounts). */
        r = qcow2_pread(s, hdr, s->file_size < s->cs ? s->file_size : s->cs, 0);
        if (r < 0) {
                vbd_err_set(err, r, "qcow2: cannot read the header: %s", strerror(-r));
                goto fail;
        }
        r = qcow2_header_rebuild(hdr, s->cs, &s->h, n ? ext : NULL, autoclear, out, &hlen, err);
        if (r < 0)
                goto fail;
        header_tried = true;
        r = qcow2_pwrite(s, out, hlen, 0);
        if (r == 0)
                r = qcow2_sync(s);
        if (r < 0) {
                vbd_err_set(err, r, "qcow2: cannot update the header: %s", strerror(-r));
                goto fail;
        }

        /* The new set is in the file.  Remember it, then free the old one. */
        s->h.autoclear = autoclear;
        s->h.has_bitmaps = n != 0;
        s->h.nb_bitmaps = n;
        s->h.bitmaps_reserved = 0;
        s->h.bitmaps_ext_len = n ? 24 : 0;
        s->h.bitmap_dir_offset = dir_off;
        s->h.bitmap_dir_size = dir_size;
        s->h.backing_offset = vbd_get_be64(out + 8);
        {
                enum qcow2_bm_state old_state = s->bm_state;
                uint64_t *old_cl = s->bm_cl;
                size_t old_n = s->nbm_cl;

                qcow2_bm_free(s->bms, s->nbms);
                s->bms = bms;
                s->nbms = n;
                bms = NULL;
                if (new.n)
                        qsort(new.v, new.n, sizeof(*new.v), u64_cmp);
                s->bm_cl = new.v;
                s->nbm_cl = new.n;
                new.v = NULL;
                new.n = 0;
                s->bm_state = n ? QCOW2_BMS_OK : QCOW2_BMS_NONE;
                s->bm_why[0] = '\0';
                /* Only a set that was valid is ours to free: a stale or corrupt
                 * one may name clusters that are someone else's now (leaked). */
                if (old_state == QCOW2_BMS_OK)
                        free_clusters(s, old_cl, old_n);
                else if (old_state != QCOW2_BMS_NONE)
                        vbd_info("'%s': the old bitmaps' clusters are leaked "
                                 "('qemu-img check -r leaks' reclaims them)",
                                 s->path ? s->path : "?");
                free(old_cl);
        }
        r = qcow2_flush_sync(s);
        if (r < 0)
                vbd_warn("'%s': cannot write the freed bitmap clusters back: %s (leaked)",
                         s->path ? s->path : "?", strerror(-r));
        r = 0;
        goto out;

fail:
        if (header_tried) {
                /* The header may name the new set or the old: keep both. */
                size_t total = s->nbm_cl + new.n;
                uint64_t *v = realloc(s->bm_cl, (total ? total : 1) * sizeof(*v));

                if (v) {
                        if (new.n)
                                memcpy(v + s->nbm_cl, new.v, new.n * sizeof(*v));
                        qsort(v, total, sizeof(*v), u64_cmp);
                        s->bm_cl = v;
                        s->nbm_cl = total;
                }
                qcow2_bm_free(s->bms, s->nbms);
                s->bms = NULL;
                s->nbms = 0;
                s->bm_state = QCOW2_BMS_BAD;
                snprintf(s->bm_why, sizeof(s->bm_why), "the header update failed");
        } else {
                free_clusters(s, new.v, new.n);
        }
        free_clusters(s, junk.v, junk.n);
out:
        qcow2_bm_free(bms, n);
        free(new.v);
        free(junk.v);
        free(hdr);
        free(out);
        free(dir);
        free(buf);
        return r;
}
