/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2 metadata: opening (header, L1 table, refcount table, snapshot
 * table, every entry checked), the L2 and refcount block caches, cluster
 * allocation and freeing, and the pieces of a flush.  All I/O here is
 * synchronous pread/pwrite on the buffered descriptor, on the loop thread.
 *
 * Caches are write-back.  Ordering rules (see qcow2.h) are kept with a
 * refcount generation: every refcount increment bumps s->rc_gen; an L2
 * table records the generation it depends on (rc_dep) when it changes;
 * qcow2_write_rbs() remembers the generation it wrote (rc_written) and,
 * after the following fdatasync, rc_durable = rc_written.  An L2 table is
 * written only when rc_dep <= rc_durable (else the refcount blocks are
 * written and synced first), and the L1 entry of a new L2 table only after
 * that table is durable.  References dropped from L2/L1 are freed only after
 * the metadata without them is durable (s->frees).
 *
 * Lazy refcounts (v3 compatible bit 0): the dirty bit is set before the first
 * change and cleared on a clean close; refcount blocks then need no fdatasync
 * of their own before L2 tables are written.
 */
#define VBD_LOG_TOPIC "drv.qcow2"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2.h"
#include "vbd/file.h"
#include "vbd/log.h"

#define FIXED_HEADER 0
#define FIXED_L1     1
#define FIXED_RT     2

#define DEFAULT_L2_CACHE_MAX (32ull << 20)
#define DEFAULT_RB_CACHE     (256ull << 10)
#define MIN_CACHE_TABLES     4u
#define SLOT_RESERVED        UINT64_MAX

static uint64_t round_up(uint64_t v, uint64_t a)
{
        return (v + a - 1) / a * a;
}

void qcow2_log_corrupt(struct qcow2_state *s, const char *fmt, ...)
{
        char msg[256];
        va_list ap;

        if (!vbd_ratelimit_ok(&s->corrupt_rl))
                return;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        vbd_err("'%s': corrupt image: %s", s->path ? s->path : "?", msg);
}

/* 0 or -errno; a file that ends first is -EIO here (metadata past the end). */
static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
        int r = vbd_pread_all(fd, buf, len, off);

        return r == -ENODATA ? -EIO : r;
}

static int pwrite_full(struct qcow2_state *s, const void *buf, size_t len, uint64_t off)
{
        int r;

        if (s->readonly)
                return -EROFS;
        if ((r = vbd_pwrite_all(s->mfd, buf, len, off)) < 0)
                return r;
        if (off + len > s->file_size)
                s->file_size = off + len;
        return 0;
}

int qcow2_pread(struct qcow2_state *s, void *buf, size_t len, uint64_t off)
{
        return pread_full(s->mfd, buf, len, off);
}

int qcow2_pwrite(struct qcow2_state *s, const void *buf, size_t len, uint64_t off)
{
        return pwrite_full(s, buf, len, off);
}

int qcow2_sync(struct qcow2_state *s)
{
        if (s->readonly)
                return 0;
        return fdatasync(s->mfd) < 0 ? -errno : 0;
}

/* ---- metadata location set ---- */

/* The first index of the sorted a[0, n) whose value is >= off. */
static size_t sorted_lower(const uint64_t *a, size_t n, uint64_t off)
{
        size_t lo = 0, hi = n;

        while (lo < hi) {
                size_t mid = (lo + hi) / 2;

                if (a[mid] < off)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static size_t meta_lower(const struct qcow2_state *s, uint64_t off)
{
        return sorted_lower(s->meta, s->nmeta, off);
}

static int meta_insert(struct qcow2_state *s, uint64_t off)
{
        size_t i = meta_lower(s, off);

        if (i < s->nmeta && s->meta[i] == off)
                return 0;
        if (s->nmeta == s->meta_cap) {
                size_t cap = s->meta_cap ? s->meta_cap * 2 : 64;
                uint64_t *m = realloc(s->meta, cap * sizeof(*m));

                if (!m)
                        return -ENOMEM;
                s->meta = m;
                s->meta_cap = cap;
        }
        memmove(s->meta + i + 1, s->meta + i, (s->nmeta - i) * sizeof(*s->meta));
        s->meta[i] = off;
        s->nmeta++;
        return 0;
}

static void meta_remove(struct qcow2_state *s, uint64_t off)
{
        size_t i = meta_lower(s, off);

        if (i < s->nmeta && s->meta[i] == off) {
                memmove(s->meta + i, s->meta + i + 1, (s->nmeta - i - 1) * sizeof(*s->meta));
                s->nmeta--;
        }
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
        return alen && blen && a < b + blen && b < a + alen;
}

bool qcow2_is_meta(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
        size_t i;

        for (unsigned k = 0; k < s->nfixed; k++)
                if (overlaps(off, len, s->fixed[k].start, s->fixed[k].end - s->fixed[k].start))
                        return true;
        for (unsigned k = 0; k < s->nsnap_l1; k++)
                if (overlaps(off, len, s->snap_l1[k].start,
                             s->snap_l1[k].end - s->snap_l1[k].start))
                        return true;
        /* Tables and bitmap clusters are one cluster at a cluster boundary. */
        i = meta_lower(s, off >= s->cs ? off - s->cs + 1 : 0);
        if (i < s->nmeta && s->meta[i] < off + len)
                return true;
        i = sorted_lower(s->bm_cl, s->nbm_cl, off >= s->cs ? off - s->cs + 1 : 0);
        return i < s->nbm_cl && s->bm_cl[i] < off + len;
}

/* ---- caches ---- */

static void lru_unlink(struct qcow2_table *t)
{
        t->prev->next = t->next;
        t->next->prev = t->prev;
        t->prev = t->next = t;
}

static void lru_front(struct qcow2_cache *c, struct qcow2_table *t)
{
        t->next = c->lru.next;
        t->prev = &c->lru;
        c->lru.next->prev = t;
        c->lru.next = t;
}

static unsigned hash_of(const struct qcow2_state *s, const struct qcow2_cache *c, uint64_t off)
{
        uint64_t k = off >> s->cluster_bits;

        return (unsigned)((k * 0x9e3779b97f4a7c15ull) >> 32) & c->hmask;
}

static int cache_init(struct qcow2_cache *c, unsigned nslots, bool is_l2)
{
        unsigned hsize = 1;

        while (hsize < nslots * 2)
                hsize <<= 1;
        c->slots = calloc(nslots, sizeof(*c->slots));
        c->hash = calloc(hsize, sizeof(*c->hash));
        if (!c->slots || !c->hash)
                return -ENOMEM;
        c->nslots = nslots;
        c->hmask = hsize - 1;
        c->lru.next = c->lru.prev = &c->lru;
        c->is_l2 = is_l2;
        for (unsigned i = 0; i < nslots; i++)
                c->slots[i].prev = c->slots[i].next = &c->slots[i];
        return 0;
}

static void cache_free(struct qcow2_cache *c)
{
        for (unsigned i = 0; c->slots && i < c->nslots; i++)
                free(c->slots[i].data);
        free(c->slots);
        free(c->hash);
        memset(c, 0, sizeof(*c));
}

static struct qcow2_table *cache_find(struct qcow2_state *s, struct qcow2_cache *c, uint64_t off)
{
        for (struct qcow2_table *t = c->hash[hash_of(s, c, off)]; t; t = t->hnext)
                if (t->offset == off) {
                        if (c->lru.next != t) {
                                lru_unlink(t);
                                lru_front(c, t);
                        }
                        return t;
                }
        return NULL;
}

static void cache_unhash(struct qcow2_state *s, struct qcow2_cache *c, struct qcow2_table *t)
{
        struct qcow2_table **pp = &c->hash[hash_of(s, c, t->offset)];

        while (*pp && *pp != t)
                pp = &(*pp)->hnext;
        if (*pp)
                *pp = t->hnext;
        t->hnext = NULL;
}

static void cache_insert(struct qcow2_state *s, struct qcow2_cache *c, struct qcow2_table *t,
                         uint64_t off)
{
        unsigned h = hash_of(s, c, off);

        t->offset = off;
        t->hnext = c->hash[h];
        c->hash[h] = t;
        lru_front(c, t);
}

static int l2_writeback(struct qcow2_state *s, struct qcow2_table *t);

static int table_write(struct qcow2_state *s, struct qcow2_table *t)
{
        int r = pwrite_full(s, t->data, s->cs, t->offset);

        if (r == 0)
                t->dirty = false;
        return r;
}

/*
 * A detached slot with a buffer, for a table about to be loaded or created:
 * a free one, or the least recently used, written back first when dirty.
 */
static int cache_slot(struct qcow2_state *s, struct qcow2_cache *c, struct qcow2_table **ret)
{
        struct qcow2_table *t = NULL;
        int r;

        if (c->used < c->nslots) {
                for (unsigned i = 0; i < c->nslots; i++)
                        if (!c->slots[i].offset && c->slots[i].next == &c->slots[i]) {
                                t = &c->slots[i];
                                break;
                        }
        }
        if (t) {
                c->used++;
        } else {
                t = c->lru.prev;
                if (t == &c->lru)
                        return -ENOBUFS;
                if (t->dirty) {
                        r = c->is_l2 ? l2_writeback(s, t) : table_write(s, t);
                        if (r < 0)
                                return r;
                }
                cache_unhash(s, c, t);
                lru_unlink(t);
                t->offset = 0;
        }
        if (!t->data) {
                void *p;

                if (posix_memalign(&p, 4096, s->cs)) {
                        c->used--;
                        return -ENOMEM;
                }
                t->data = p;
        }
        t->dirty = t->l1_pending = false;
        t->rc_dep = 0;
        t->offset = SLOT_RESERVED; /* detached: not free, not in the cache yet */
        *ret = t;
        return 0;
}

static void cache_release(struct qcow2_cache *c, struct qcow2_table *t)
{
        t->offset = 0;
        t->prev = t->next = t;
        c->used--;
}

static int table_load(struct qcow2_state *s, struct qcow2_cache *c, uint64_t off,
                      struct qcow2_table **ret)
{
        struct qcow2_table *t = cache_find(s, c, off);
        int r;

        if (t) {
                *ret = t;
                return 0;
        }
        if (off < s->cs || off % s->cs || off > s->file_size || s->cs > s->file_size - off) {
                qcow2_log_corrupt(s, "table at %llu is outside the file", (unsigned long long)off);
                return -EIO;
        }
        r = cache_slot(s, c, &t);
        if (r < 0)
                return r;
        r = pread_full(s->mfd, t->data, s->cs, off);
        if (r < 0) {
                cache_release(c, t);
                return r;
        }
        cache_insert(s, c, t, off);
        *ret = t;
        return 0;
}

/* ---- refcounts ---- */

static int rb_load(struct qcow2_state *s, uint64_t ri, struct qcow2_table **ret)
{
        if (ri >= s->rt_entries || !s->rt[ri]) {
                *ret = NULL;
                return 0;
        }
        return table_load(s, &s->rbc, s->rt[ri], ret);
}

static int rc_get(struct qcow2_state *s, uint64_t c, uint64_t *ret)
{
        struct qcow2_table *t;
        int r = rb_load(s, c >> s->rb_bits, &t);

        if (r < 0)
                return r;
        *ret = t ? qcow2_rc_get_entry(t->data, s->h.refcount_order, c & ((1ull << s->rb_bits) - 1))
                 : 0;
        return 0;
}

static int rc_set(struct qcow2_state *s, uint64_t c, uint64_t v)
{
        struct qcow2_table *t;
        int r = rb_load(s, c >> s->rb_bits, &t);

        if (r < 0)
                return r;
        if (!t)
                return -EIO;
        qcow2_rc_set_entry(t->data, s->h.refcount_order, c & ((1ull << s->rb_bits) - 1), v);
        t->dirty = true;
        return 0;
}

int qcow2_mark_dirty(struct qcow2_state *s)
{
        uint8_t b[8];
        int r;

        if (!s->lazy || s->dirty_set)
                return 0;
        vbd_put_be64(b, s->h.incompat | QCOW2_INCOMPAT_DIRTY);
        r = pwrite_full(s, b, 8, QCOW2_HDR_INCOMPAT);
        if (r == 0)
                r = qcow2_sync(s);
        if (r < 0)
                return r;
        s->h.incompat |= QCOW2_INCOMPAT_DIRTY;
        s->dirty_set = true;
        return 0;
}

/* Make the file at least end bytes long (in steps, trimmed on close). */
static int extend_file(struct qcow2_state *s, uint64_t end)
{
        uint64_t step, target;

        if (end <= s->file_size)
                return 0;
        if (s->blockdev)
                return -ENOSPC;
        step = end / 8;
        if (step < (1ull << 20))
                step = 1ull << 20;
        if (step > (64ull << 20))
                step = 64ull << 20;
        target = round_up(end + step, s->cs);
        /* Allocated (unwritten) extents: O_DIRECT writes into holes would
         * allocate blocks one at a time, serialised by the file system. */
        if (fallocate(s->mfd, 0, (off_t)s->file_size, (off_t)(target - s->file_size)) < 0 &&
            ftruncate(s->mfd, (off_t)target) < 0)
                return -errno;
        s->file_size = target;
        s->extended = true;
        return 0;
}

static void note_allocated(struct qcow2_state *s, uint64_t end)
{
        if (end > s->alloc_end)
                s->alloc_end = end;
        if (end > s->zero_from)
                s->zero_from = end;
}

/* A new refcount block for range ri, placed at cluster c (in that range) and
 * describing itself. */
static int new_rb(struct qcow2_state *s, uint64_t ri, uint64_t c)
{
        struct qcow2_table *t;
        uint8_t b[8];
        uint64_t off = c << s->cluster_bits;
        int r;

        r = cache_slot(s, &s->rbc, &t);
        if (r < 0)
                return r;
        memset(t->data, 0, s->cs);
        qcow2_rc_set_entry(t->data, s->h.refcount_order, c & ((1ull << s->rb_bits) - 1), 1);
        r = pwrite_full(s, t->data, s->cs, off);
        if (r == 0)
                r = qcow2_sync(s);
        if (r == 0) {
                vbd_put_be64(b, off);
                r = pwrite_full(s, b, 8, s->h.rt_offset + ri * 8);
        }
        if (r == 0)
                r = meta_insert(s, off);
        if (r < 0) {
                cache_release(&s->rbc, t);
                return r;
        }
        s->rt[ri] = off;
        cache_insert(s, &s->rbc, t, off);
        note_allocated(s, off + s->cs);
        s->rc_gen++;
        return 0;
}

/*
 * Grow the refcount table so that it has entry need: a new, larger table at
 * the end of the allocated area, followed by the refcount blocks needed to
 * describe the new clusters; then the header is switched to it and the old
 * table freed.
 */
static int grow_rt(struct qcow2_state *s, uint64_t need)
{
        uint64_t per = s->cs / 8, old_entries = s->rt_entries, new_entries, m, nb, F;
        uint64_t first_r, last_r, *newt = NULL, *rbs = NULL;
        uint8_t *blocks = NULL, hdr[12];
        uint64_t old_off = s->h.rt_offset, old_clusters = s->h.rt_clusters;
        int r;

        new_entries = round_up((need + 1 > old_entries * 2 ? need + 1 : old_entries * 2), per);
        F = s->alloc_end >> s->cluster_bits;
        for (;;) {
                m = new_entries / per;
                nb = 0;
                for (;;) {
                        uint64_t cnt = 0;

                        first_r = F >> s->rb_bits;
                        last_r = (F + m + nb - 1) >> s->rb_bits;
                        for (uint64_t ri = first_r; ri <= last_r; ri++)
                                if (ri >= old_entries || !s->rt[ri])
                                        cnt++;
                        if (cnt == nb)
                                break;
                        nb = cnt;
                }
                if (last_r < new_entries && need < new_entries)
                        break;
                new_entries = round_up(last_r + 1 > need + 1 ? last_r + 1 : need + 1, per);
        }
        if (new_entries * 8 > QCOW2_MAX_RT_BYTES)
                return -ENOSPC;
        if (((F + m + nb) << s->cluster_bits) > QCOW2_MAX_HOST_OFFSET)
                return -ENOSPC;

        newt = calloc(new_entries, 8);
        rbs = calloc(nb ? nb : 1, sizeof(*rbs));
        blocks = calloc(nb ? nb : 1, s->cs);
        if (!newt || !rbs || !blocks) {
                r = -ENOMEM;
                goto out;
        }
        memcpy(newt, s->rt, old_entries * 8);
        {
                uint64_t k = 0;

                for (uint64_t ri = first_r; ri <= last_r; ri++)
                        if (ri >= old_entries || !s->rt[ri]) {
                                rbs[k] = (F + m + k) << s->cluster_bits;
                                newt[ri] = rbs[k];
                                k++;
                        }
        }
        r = extend_file(s, (F + m + nb) << s->cluster_bits);
        if (r < 0)
                goto out;
        /* Refcounts of the new clusters. */
        for (uint64_t x = F; x < F + m + nb; x++) {
                uint64_t ri = x >> s->rb_bits, idx = x & ((1ull << s->rb_bits) - 1);

                if (ri < old_entries && s->rt[ri]) {
                        r = rc_set(s, x, 1);
                        if (r < 0)
                                goto out;
                        continue;
                }
                for (uint64_t k = 0; k < nb; k++)
                        if (rbs[k] == newt[ri])
                                qcow2_rc_set_entry(blocks + k * s->cs, s->h.refcount_order, idx, 1);
        }
        for (uint64_t k = 0; k < nb; k++) {
                r = pwrite_full(s, blocks + k * s->cs, s->cs, rbs[k]);
                if (r < 0)
                        goto out;
        }
        /* The new table, one cluster at a time, in on-disk byte order. */
        for (uint64_t i = 0; i < new_entries; i += per) {
                for (uint64_t j = 0; j < per; j++)
                        vbd_put_be64(s->cbuf + j * 8, newt[i + j]);
                r = pwrite_full(s, s->cbuf, s->cs, (F << s->cluster_bits) + i * 8);
                if (r < 0)
                        goto out;
        }
        r = qcow2_write_rbs(s);
        if (r == 0)
                r = qcow2_sync(s);
        if (r < 0)
                goto out;
        vbd_put_be64(hdr, F << s->cluster_bits);
        hdr[8] = (uint8_t)(m >> 24);
        hdr[9] = (uint8_t)(m >> 16);
        hdr[10] = (uint8_t)(m >> 8);
        hdr[11] = (uint8_t)m;
        r = pwrite_full(s, hdr, sizeof(hdr), QCOW2_HDR_RT_OFFSET);
        if (r == 0)
                r = qcow2_sync(s);
        if (r < 0)
                goto out;
        s->rc_durable = s->rc_written;
        free(s->rt);
        s->rt = newt;
        newt = NULL;
        s->rt_entries = new_entries;
        s->h.rt_offset = F << s->cluster_bits;
        s->h.rt_clusters = (uint32_t)m;
        s->fixed[FIXED_RT].start = s->h.rt_offset;
        s->fixed[FIXED_RT].end = s->h.rt_offset + m * s->cs;
        for (uint64_t k = 0; k < nb; k++)
                (void)meta_insert(s, rbs[k]);
        note_allocated(s, (F + m + nb) << s->cluster_bits);
        s->rc_gen++;
        vbd_info("'%s': refcount table grown to %llu entries", s->path,
                 (unsigned long long)new_entries);
        r = qcow2_free_now(s, old_off, old_clusters * s->cs);
out:
        free(newt);
        free(rbs);
        free(blocks);
        return r;
}

int qcow2_alloc(struct qcow2_state *s, uint64_t want, uint64_t *ret_host, uint64_t *ret_n,
                bool *ret_fresh)
{
        uint64_t c = s->free_hint ? s->free_hint : 1, v, n, host;
        int r;

        if (s->readonly)
                return -EROFS;
        r = qcow2_mark_dirty(s);
        if (r < 0)
                return r;
        for (;;) {
                uint64_t end_c = s->alloc_end >> s->cluster_bits, ri;

                while (c < end_c) {
                        r = rc_get(s, c, &v);
                        if (r < 0)
                                return r;
                        if (v == 0 && !qcow2_is_meta(s, c << s->cluster_bits, s->cs))
                                break;
                        c++;
                }
                if ((c + 1) << s->cluster_bits > QCOW2_MAX_HOST_OFFSET)
                        return -ENOSPC;
                ri = c >> s->rb_bits;
                if (ri >= s->rt_entries) {
                        r = grow_rt(s, ri);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (!s->rt[ri]) {
                        r = new_rb(s, ri, c);
                        if (r < 0)
                                return r;
                        c++;
                        continue;
                }
                break;
        }
        n = 1;
        while (n < want && ((c + n) >> s->rb_bits) == (c >> s->rb_bits)) {
                if (c + n < (s->alloc_end >> s->cluster_bits)) {
                        r = rc_get(s, c + n, &v);
                        if (r < 0)
                                return r;
                        if (v || qcow2_is_meta(s, (c + n) << s->cluster_bits, s->cs))
                                break;
                }
                n++;
        }
        host = c << s->cluster_bits;
        r = extend_file(s, host + n * s->cs);
        if (r < 0)
                return r;
        for (uint64_t i = 0; i < n; i++) {
                r = rc_set(s, c + i, 1);
                if (r < 0)
                        return r;
        }
        s->rc_gen++;
        *ret_fresh = host >= s->zero_from;
        note_allocated(s, host + n * s->cs);
        s->free_hint = c + n;
        *ret_host = host;
        *ret_n = n;
        return 0;
}

int qcow2_free_now(struct qcow2_state *s, uint64_t off, uint64_t len)
{
        uint64_t first, last, v;
        int r;

        if (!len)
                return 0;
        first = off >> s->cluster_bits;
        last = (off + len - 1) >> s->cluster_bits;
        for (uint64_t c = first; c <= last; c++) {
                r = rc_get(s, c, &v);
                if (r < 0)
                        return r;
                if (v == 0) {
                        qcow2_log_corrupt(s, "freeing cluster %llu whose refcount is 0",
                                          (unsigned long long)c);
                        continue;
                }
                r = rc_set(s, c, v - 1);
                if (r < 0)
                        return r;
                if (v == 1) {
                        if (c < s->free_hint)
                                s->free_hint = c;
                        meta_remove(s, c << s->cluster_bits);
                        if (s->dbuf_host && (s->dbuf_host >> s->cluster_bits) <= c &&
                            ((s->dbuf_host + s->dbuf_clen - 1) >> s->cluster_bits) >= c)
                                s->dbuf_host = 0;
                }
        }
        return 0;
}

int qcow2_free_later(struct qcow2_state *s, uint64_t off, uint64_t len)
{
        if (s->nfrees == s->frees_cap) {
                size_t cap = s->frees_cap ? s->frees_cap * 2 : 64;
                struct qcow2_range *f = realloc(s->frees, cap * sizeof(*f));

                if (!f)
                        return -ENOMEM;
                s->frees = f;
                s->frees_cap = cap;
        }
        s->frees[s->nfrees++] = (struct qcow2_range){off, off + len};
        return 0;
}

int qcow2_release_entry(struct qcow2_state *s, uint64_t e)
{
        struct qcow2_map m;
        const char *why;

        if (qcow2_l2_decode(s, e, &m, &why) < 0)
                return 0; /* garbage is not ours to free */
        switch (m.kind) {
        case QCOW2_DATA:
        case QCOW2_ZERO:
                return m.host ? qcow2_free_later(s, m.host, s->cs) : 0;
        case QCOW2_COMPRESSED: {
                uint64_t start = m.host & ~511ull;

                return qcow2_free_later(s, start, m.host + m.clen - start);
        }
        default:
                return 0;
        }
}

void qcow2_apply_frees(struct qcow2_state *s, size_t count)
{
        if (count > s->nfrees)
                count = s->nfrees;
        for (size_t i = 0; i < count; i++) {
                int r = qcow2_free_now(s, s->frees[i].start, s->frees[i].end - s->frees[i].start);

                if (r < 0)
                        vbd_warn("'%s': cannot free clusters at %llu: %s (leaked)", s->path,
                                 (unsigned long long)s->frees[i].start, strerror(-r));
        }
        if (!count)
                return;
        memmove(s->frees, s->frees + count, (s->nfrees - count) * sizeof(*s->frees));
        s->nfrees -= count;
}

/* ---- L2 ---- */

int qcow2_l2_get(struct qcow2_state *s, uint64_t gc, uint64_t *ret)
{
        uint64_t l1i = gc >> s->l2_bits, off;
        struct qcow2_table *t;
        int r;

        if (l1i >= s->l1_size)
                return -EIO;
        off = s->l1[l1i] & QCOW2_OFFSET_MASK;
        if (!off) {
                *ret = 0;
                return 0;
        }
        r = table_load(s, &s->l2c, off, &t);
        if (r < 0)
                return r;
        *ret = vbd_get_be64(&t->data[gc & ((1ull << s->l2_bits) - 1)]);
        return 0;
}

int qcow2_lookup(struct qcow2_state *s, uint64_t gc, struct qcow2_map *m)
{
        const char *why;
        uint64_t e;
        int r = qcow2_l2_get(s, gc, &e);

        if (r < 0)
                return r;
        r = qcow2_l2_decode(s, e, m, &why);
        if (r < 0)
                qcow2_log_corrupt(s, "guest offset %llu: %s (entry %#llx)",
                                  (unsigned long long)(gc << s->cluster_bits), why,
                                  (unsigned long long)e);
        return r;
}

static enum qcow2_status status_of(const struct qcow2_map *m)
{
        switch (m->kind) {
        case QCOW2_UNALLOC:
                return QCOW2_ST_UNALLOC;
        case QCOW2_ZERO:
                return m->host ? QCOW2_ST_ZERO_ALLOC : QCOW2_ST_ZERO;
        default:
                return QCOW2_ST_DATA;
        }
}

/*
 * For block status (synchronous by contract, so the pread of an uncached L2
 * table in table_load() is allowed here, as for reads).  The in-memory L1
 * table and cached L2 tables are the current state, dirty or not.
 */
int qcow2_status_run(struct qcow2_state *s, uint64_t gc, uint64_t max, unsigned *loads,
                     enum qcow2_status *ret_st, uint64_t *ret_n)
{
        uint64_t per = 1ull << s->l2_bits, n = 0;
        enum qcow2_status st = QCOW2_ST_UNALLOC;

        while (n < max) {
                uint64_t g = gc + n, l1i = g >> s->l2_bits, idx = g & (per - 1);
                uint64_t span = per - idx < max - n ? per - idx : max - n, off;
                struct qcow2_table *t;
                int r;

                if (l1i >= s->l1_size) {
                        if (n)
                                break;
                        return -EIO;
                }
                off = s->l1[l1i] & QCOW2_OFFSET_MASK;
                if (!off) {
                        if (n && st != QCOW2_ST_UNALLOC)
                                break;
                        st = QCOW2_ST_UNALLOC;
                        n += span;
                        continue;
                }
                t = cache_find(s, &s->l2c, off);
                if (!t) {
                        if (!*loads)
                                break;
                        r = table_load(s, &s->l2c, off, &t);
                        if (r < 0) {
                                if (n)
                                        break;
                                return r;
                        }
                        (*loads)--;
                }
                for (uint64_t k = 0; k < span; k++) {
                        uint64_t e = vbd_get_be64(&t->data[idx + k]);
                        struct qcow2_map m;
                        enum qcow2_status cur;
                        const char *why;

                        if (qcow2_l2_decode(s, e, &m, &why) < 0) {
                                if (n)
                                        goto out;
                                qcow2_log_corrupt(s, "guest offset %llu: %s (entry %#llx)",
                                                  (unsigned long long)((gc + n) << s->cluster_bits),
                                                  why, (unsigned long long)e);
                                return -EIO;
                        }
                        cur = status_of(&m);
                        if (n && cur != st)
                                goto out;
                        st = cur;
                        n++;
                }
        }
out:
        *ret_st = st;
        *ret_n = n;
        return 0;
}

int qcow2_l2_set(struct qcow2_state *s, uint64_t gc, uint64_t entry)
{
        uint64_t l1i = gc >> s->l2_bits, l1e, old, host, n;
        struct qcow2_table *t, *o;
        bool fresh;
        int r;

        if (l1i >= s->l1_size)
                return -EIO;
        r = qcow2_mark_dirty(s);
        if (r < 0)
                return r;
        l1e = s->l1[l1i];
        old = l1e & QCOW2_OFFSET_MASK;
        if (!old || !(l1e & QCOW2_OFLAG_COPIED)) {
                /* A new L2 table, or a private copy of a shared one. */
                r = qcow2_alloc(s, 1, &host, &n, &fresh);
                if (r < 0)
                        return r;
                r = cache_slot(s, &s->l2c, &t);
                if (r < 0)
                        goto fail_alloc;
                if (old) {
                        r = table_load(s, &s->l2c, old, &o);
                        if (r < 0) {
                                cache_release(&s->l2c, t);
                                goto fail_alloc;
                        }
                        memcpy(t->data, o->data, s->cs);
                } else {
                        memset(t->data, 0, s->cs);
                }
                r = meta_insert(s, host);
                if (r < 0) {
                        cache_release(&s->l2c, t);
                        goto fail_alloc;
                }
                if (old)
                        (void)qcow2_free_later(s, old, s->cs);
                cache_insert(s, &s->l2c, t, host);
                t->dirty = true;
                t->l1_pending = true;
                t->l1_index = (uint32_t)l1i;
                t->rc_dep = s->rc_gen;
                s->l1[l1i] = host | QCOW2_OFLAG_COPIED;
        } else {
                r = table_load(s, &s->l2c, old, &t);
                if (r < 0)
                        return r;
        }
        vbd_put_be64(&t->data[gc & ((1ull << s->l2_bits) - 1)], entry);
        t->dirty = true;
        if (t->rc_dep < s->rc_gen)
                t->rc_dep = s->rc_gen;
        return 0;

fail_alloc:
        (void)qcow2_free_now(s, host, s->cs);
        return r;
}

/* ---- flush pieces ---- */

int qcow2_write_rbs(struct qcow2_state *s)
{
        uint64_t gen = s->rc_gen;

        for (unsigned i = 0; i < s->rbc.nslots; i++) {
                struct qcow2_table *t = &s->rbc.slots[i];

                if (t->offset && t->offset != SLOT_RESERVED && t->dirty) {
                        int r = table_write(s, t);

                        if (r < 0)
                                return r;
                }
        }
        s->rc_written = gen;
        return 0;
}

static int rc_make_durable(struct qcow2_state *s, uint64_t dep)
{
        int r;

        if (s->lazy || dep <= s->rc_durable)
                return 0;
        r = qcow2_write_rbs(s);
        if (r == 0)
                r = qcow2_sync(s);
        if (r == 0)
                s->rc_durable = s->rc_written;
        return r;
}

static int l1_write_entry(struct qcow2_state *s, uint32_t idx)
{
        uint8_t b[8];

        vbd_put_be64(b, s->l1[idx]);
        return pwrite_full(s, b, 8, s->h.l1_offset + (uint64_t)idx * 8);
}

/* Evicting a dirty L2 table: everything it depends on first. */
static int l2_writeback(struct qcow2_state *s, struct qcow2_table *t)
{
        int r = rc_make_durable(s, t->rc_dep);

        if (r == 0)
                r = table_write(s, t);
        if (r == 0 && t->l1_pending) {
                r = qcow2_sync(s);
                if (r == 0)
                        r = l1_write_entry(s, t->l1_index);
                if (r == 0)
                        t->l1_pending = false;
        }
        return r;
}

int qcow2_write_l2s(struct qcow2_state *s)
{
        for (unsigned i = 0; i < s->l2c.nslots; i++) {
                struct qcow2_table *t = &s->l2c.slots[i];
                int r;

                if (!t->offset || t->offset == SLOT_RESERVED || !t->dirty)
                        continue;
                r = rc_make_durable(s, t->rc_dep);
                if (r == 0)
                        r = table_write(s, t);
                if (r < 0)
                        return r;
                if (t->l1_pending) {
                        if (s->nl1_todo == s->l1_todo_cap) {
                                size_t cap = s->l1_todo_cap ? s->l1_todo_cap * 2 : 16;
                                uint32_t *p = realloc(s->l1_todo, cap * sizeof(*p));

                                if (!p)
                                        return -ENOMEM;
                                s->l1_todo = p;
                                s->l1_todo_cap = cap;
                        }
                        s->l1_todo[s->nl1_todo++] = t->l1_index;
                        t->l1_pending = false;
                }
        }
        return 0;
}

int qcow2_write_l1_todo(struct qcow2_state *s)
{
        for (size_t i = 0; i < s->nl1_todo; i++) {
                int r = l1_write_entry(s, s->l1_todo[i]);

                if (r < 0)
                        return r;
        }
        s->nl1_todo = 0;
        return 0;
}

bool qcow2_meta_dirty(const struct qcow2_state *s)
{
        for (unsigned i = 0; i < s->rbc.nslots; i++)
                if (s->rbc.slots[i].offset && s->rbc.slots[i].dirty)
                        return true;
        for (unsigned i = 0; i < s->l2c.nslots; i++)
                if (s->l2c.slots[i].offset && s->l2c.slots[i].dirty)
                        return true;
        return s->nl1_todo || s->nfrees;
}

int qcow2_flush_sync(struct qcow2_state *s)
{
        size_t nfrees = s->nfrees;
        int r;

        if (s->readonly)
                return 0;
        r = qcow2_write_rbs(s);
        if (r == 0)
                r = qcow2_sync(s);
        if (r < 0)
                return r;
        s->rc_durable = s->rc_written;
        r = qcow2_write_l2s(s);
        if (r == 0)
                r = qcow2_sync(s);
        if (r == 0 && s->nl1_todo) {
                r = qcow2_write_l1_todo(s);
                if (r == 0)
                        r = qcow2_sync(s);
        }
        if (r < 0)
                return r;
        if (nfrees) {
                qcow2_apply_frees(s, nfrees);
                r = qcow2_write_rbs(s);
                if (r == 0)
                        r = qcow2_sync(s);
        }
        return r;
}

int qcow2_meta_shutdown(struct qcow2_state *s)
{
        uint8_t b[8];
        int r;

        if (s->readonly || s->mfd < 0)
                return 0;
        r = qcow2_flush_sync(s);
        if (r < 0)
                return r;
        if (s->dirty_set) {
                vbd_put_be64(b, s->h.incompat & ~QCOW2_INCOMPAT_DIRTY);
                r = pwrite_full(s, b, 8, QCOW2_HDR_INCOMPAT);
                if (r == 0)
                        r = qcow2_sync(s);
                if (r < 0)
                        return r;
                s->h.incompat &= ~QCOW2_INCOMPAT_DIRTY;
                s->dirty_set = false;
        }
        if (s->extended && s->file_size > s->alloc_end) {
                if (ftruncate(s->mfd, (off_t)s->alloc_end) == 0)
                        s->file_size = s->alloc_end;
        }
        return 0;
}

/* ---- decompression ---- */

int qcow2_decompress(struct qcow2_state *s, const struct qcow2_map *m)
{
        uint64_t len = m->clen;
        int r, zr;

        if (s->dbuf_host == m->host && s->dbuf_clen == m->clen)
                return 0;
        s->dbuf_host = 0;
        if (m->host >= s->file_size)
                return -EIO;
        if (len > s->file_size - m->host)
                len = s->file_size - m->host; /* the last sector may be cut short */
        if (len > 2 * s->cs + 512)
                return -EIO;
        r = pread_full(s->mfd, s->cbuf, (size_t)len, m->host);
        if (r < 0)
                return r;
        if (!s->zs_ready) {
                memset(&s->zs, 0, sizeof(s->zs));
                if (inflateInit2(&s->zs, -15) != Z_OK)
                        return -ENOMEM;
                s->zs_ready = true;
        } else if (inflateReset(&s->zs) != Z_OK) {
                return -EIO;
        }
        s->zs.next_in = s->cbuf;
        s->zs.avail_in = (uInt)len;
        s->zs.next_out = s->dbuf;
        s->zs.avail_out = (uInt)s->cs;
        zr = inflate(&s->zs, Z_FINISH);
        if (s->zs.avail_out != 0 || (zr != Z_STREAM_END && zr != Z_OK && zr != Z_BUF_ERROR)) {
                qcow2_log_corrupt(s, "compressed cluster at %llu does not decompress (zlib %d)",
                                  (unsigned long long)m->host, zr);
                return -EIO;
        }
        s->dbuf_host = m->host;
        s->dbuf_clen = m->clen;
        return 0;
}

/* ---- open ---- */

static int add_fixed(struct qcow2_state *s, uint64_t start, uint64_t len)
{
        if (s->nfixed == sizeof(s->fixed) / sizeof(s->fixed[0]))
                return -E2BIG;
        s->fixed[s->nfixed++] = (struct qcow2_range){start, start + round_up(len, s->cs)};
        return 0;
}

static int load_snapshots(struct qcow2_state *s, struct vbd_err *err)
{
        uint64_t off = s->h.snapshots_offset, end = off;
        uint8_t e[40];
        int r;

        if (!s->h.nb_snapshots)
                return 0;
        s->snap_l1 = calloc(s->h.nb_snapshots, sizeof(*s->snap_l1));
        if (!s->snap_l1)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
        for (uint32_t i = 0; i < s->h.nb_snapshots; i++) {
                uint64_t l1off, l1bytes, elen;
                uint32_t extra;

                if (off + sizeof(e) > s->file_size || off - s->h.snapshots_offset > (64ull << 20))
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: snapshot table runs past the "
                                           "end of the file");
                r = pread_full(s->mfd, e, sizeof(e), off);
                if (r < 0)
                        return vbd_err_set(err, r, "qcow2: cannot read the snapshot table: %s",
                                           strerror(-r));
                l1off = vbd_get_be64(e);
                l1bytes = (uint64_t)vbd_get_be32(e + 8) * 8;
                extra = vbd_get_be32(e + 36);
                if (extra > 1024)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: snapshot %u: extra data of %u "
                                           "bytes",
                                           i, extra);
                elen = 40 + (uint64_t)extra + ((uint32_t)e[12] << 8 | e[13]) +
                       ((uint32_t)e[14] << 8 | e[15]);
                end = off + elen; /* the last entry's padding may be past the end of file */
                off += round_up(elen, 8);
                if (l1bytes > QCOW2_MAX_L1_BYTES ||
                    (l1bytes && (l1off % s->cs || l1off < s->cs || l1off > s->file_size ||
                                 l1bytes > s->file_size - l1off)))
                        return vbd_err_set(err, -EINVAL, "qcow2: snapshot %u: bad L1 table", i);
                if (l1bytes)
                        s->snap_l1[s->nsnap_l1++] =
                            (struct qcow2_range){l1off, l1off + round_up(l1bytes, s->cs)};
        }
        if (end > s->file_size)
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: snapshot table runs past the end of "
                                   "the file");
        return add_fixed(s, s->h.snapshots_offset, off - s->h.snapshots_offset) < 0
                   ? vbd_err_set(err, -EINVAL, "qcow2: too many metadata areas")
                   : 0;
}

static int load_l1(struct qcow2_state *s, struct vbd_err *err)
{
        uint64_t bytes = (uint64_t)s->h.l1_size * 8;
        uint8_t *buf;
        int r;

        s->l1_size = s->h.l1_size;
        s->l1 = calloc(s->l1_size ? s->l1_size : 1, 8);
        buf = malloc(bytes ? bytes : 1);
        if (!s->l1 || !buf) {
                free(buf);
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory for the L1 table");
        }
        r = bytes ? pread_full(s->mfd, buf, bytes, s->h.l1_offset) : 0;
        if (r < 0) {
                free(buf);
                return vbd_err_set(err, r, "qcow2: cannot read the L1 table: %s", strerror(-r));
        }
        for (uint32_t i = 0; i < s->l1_size; i++) {
                uint64_t e = vbd_get_be64(buf + (uint64_t)i * 8), off = e & QCOW2_OFFSET_MASK;

                s->l1[i] = e;
                if (!off && !(e & ~QCOW2_OFLAG_COPIED))
                        continue;
                r = -EINVAL;
                if (e & QCOW2_L1_RESERVED)
                        vbd_err_set(err, r, "qcow2: L1 entry %u has reserved bits set (%#llx)", i,
                                    (unsigned long long)e);
                else if (!off || off % s->cs || off > s->file_size || s->cs > s->file_size - off)
                        vbd_err_set(err, r,
                                    "qcow2: L1 entry %u points to %llu, misaligned or past the "
                                    "end of the file",
                                    i, (unsigned long long)off);
                else if (qcow2_is_meta(s, off, s->cs))
                        vbd_err_set(err, r, "qcow2: L1 entry %u points into metadata (%llu)", i,
                                    (unsigned long long)off);
                else
                        r = meta_insert(s, off);
                if (r < 0) {
                        free(buf);
                        return r == -ENOMEM ? vbd_err_set(err, r, "qcow2: out of memory") : r;
                }
        }
        free(buf);
        return 0;
}

static int load_rt(struct qcow2_state *s, struct vbd_err *err)
{
        uint64_t bytes = (uint64_t)s->h.rt_clusters * s->cs;
        uint8_t *buf = malloc(bytes);
        int r;

        s->rt_entries = bytes / 8;
        s->rt = calloc(s->rt_entries, 8);
        if (!buf || !s->rt) {
                free(buf);
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory for the refcount table");
        }
        r = pread_full(s->mfd, buf, bytes, s->h.rt_offset);
        if (r < 0) {
                vbd_err_set(err, r, "qcow2: cannot read the refcount table: %s", strerror(-r));
                goto out;
        }
        for (uint64_t i = 0; i < s->rt_entries; i++) {
                uint64_t off = vbd_get_be64(buf + i * 8);

                if (!off)
                        continue;
                r = -EINVAL;
                if (off & QCOW2_RT_RESERVED || off % s->cs || off > s->file_size ||
                    s->cs > s->file_size - off) {
                        vbd_err_set(err, r,
                                    "qcow2: refcount table entry %llu points to %llu, misaligned "
                                    "or past the end of the file",
                                    (unsigned long long)i, (unsigned long long)off);
                        goto out;
                }
                if (qcow2_is_meta(s, off, s->cs)) {
                        vbd_err_set(err, r,
                                    "qcow2: refcount block %llu at %llu overlaps other metadata",
                                    (unsigned long long)i, (unsigned long long)off);
                        goto out;
                }
                s->rt[i] = off;
                r = meta_insert(s, off);
                if (r < 0) {
                        vbd_err_set(err, r, "qcow2: out of memory");
                        goto out;
                }
        }
        r = 0;
out:
        free(buf);
        return r;
}

/* Tables in a cache of want bytes. */
static uint64_t cache_bytes(uint64_t want, uint64_t cs)
{
        uint64_t n = want / cs;

        if (n < MIN_CACHE_TABLES)
                n = MIN_CACHE_TABLES;
        if (n > (1u << 20))
                n = 1u << 20;
        return n;
}

int qcow2_meta_open(struct qcow2_state *s, int fd, bool readonly, const struct qcow2_meta_opts *mo,
                    struct vbd_err *err)
{
        struct stat st;
        uint8_t *hbuf = NULL;
        size_t hlen;
        uint64_t l2_want, rb_want, nl2;
        off_t end;
        int r;

        s->mfd = fd;
        s->readonly = readonly;
        s->corrupt_rl = (struct vbd_ratelimit)VBD_RATELIMIT_INIT(5000, 5);
        if (fstat(fd, &st) < 0)
                return vbd_err_set(err, -errno, "qcow2: fstat: %s", strerror(errno));
        s->blockdev = S_ISBLK(st.st_mode);
        if (!s->blockdev && !S_ISREG(st.st_mode))
                return vbd_err_set(err, -EINVAL, "qcow2: not a regular file or block device");
        end = lseek(fd, 0, SEEK_END);
        if (end < 0)
                return vbd_err_set(err, -errno, "qcow2: lseek: %s", strerror(errno));
        s->file_size = (uint64_t)end;

        /* The header, then the whole first cluster for the extensions. */
        hlen = s->file_size < (2u << 20) ? (size_t)s->file_size : (2u << 20);
        if (hlen < QCOW2_V2_HEADER_LEN)
                return vbd_err_set(err, -EINVAL, "qcow2: file too small (%llu bytes)",
                                   (unsigned long long)s->file_size);
        hbuf = malloc(hlen);
        if (!hbuf)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
        {
                size_t first = hlen < 4096 ? hlen : 4096;

                r = pread_full(fd, hbuf, first, 0);
                if (r == 0) {
                        uint32_t cb = vbd_get_be32(hbuf + 20);

                        /* Read the first cluster when the header names a valid size. */
                        if (vbd_get_be32(hbuf) == QCOW2_MAGIC && cb >= QCOW2_MIN_CLUSTER_BITS &&
                            cb <= QCOW2_MAX_CLUSTER_BITS && ((size_t)1 << cb) < hlen)
                                hlen = (size_t)1 << cb;
                        else if (vbd_get_be32(hbuf) != QCOW2_MAGIC || cb > QCOW2_MAX_CLUSTER_BITS)
                                hlen = first;
                        if (hlen > first)
                                r = pread_full(fd, hbuf + first, hlen - first, first);
                }
        }
        if (r < 0) {
                free(hbuf);
                return vbd_err_set(err, r, "qcow2: cannot read the header: %s", strerror(-r));
        }
        r = qcow2_header_parse(hbuf, hlen, s->file_size, &s->h, err);
        free(hbuf);
        if (r < 0)
                return r;

        s->cluster_bits = s->h.cluster_bits;
        s->cs = 1ull << s->cluster_bits;
        s->l2_bits = s->cluster_bits - 3;
        s->rc_width = 1u << s->h.refcount_order;
        s->rb_bits = s->cluster_bits + 3 - s->h.refcount_order;
        s->rc_max = s->rc_width == 64 ? UINT64_MAX : (1ull << s->rc_width) - 1;
        s->size = s->h.size & ~511ull;
        s->nb_gcl = (s->size + s->cs - 1) >> s->cluster_bits;

        if (!readonly && (s->h.incompat & QCOW2_INCOMPAT_CORRUPT))
                return vbd_err_set(err, -EROFS,
                                   "qcow2: the image is marked corrupt; open it read-only or "
                                   "repair it with 'qemu-img check -r all'");
        if (!readonly && (s->h.incompat & QCOW2_INCOMPAT_DIRTY))
                return vbd_err_set(err, -EUCLEAN,
                                   "qcow2: the image is dirty (lazy refcounts, not closed "
                                   "cleanly); repair it with 'qemu-img check -r all' first");

        r = add_fixed(s, 0, s->cs);
        if (r == 0)
                r = add_fixed(s, s->h.l1_offset, (uint64_t)s->h.l1_size * 8);
        if (r == 0)
                r = add_fixed(s, s->h.rt_offset, (uint64_t)s->h.rt_clusters * s->cs);
        if (r < 0)
                return vbd_err_set(err, r, "qcow2: too many metadata areas");
        r = load_snapshots(s, err);
        if (r == 0)
                r = load_l1(s, err);
        if (r == 0)
                r = load_rt(s, err);
        if (r < 0)
                return r;

        nl2 = ((s->nb_gcl + (1ull << s->l2_bits) - 1) >> s->l2_bits);
        l2_want = mo && mo->l2_cache ? mo->l2_cache : nl2 * s->cs;
        if (!(mo && mo->l2_cache) && l2_want > DEFAULT_L2_CACHE_MAX)
                l2_want = DEFAULT_L2_CACHE_MAX;
        rb_want = mo && mo->rb_cache ? mo->rb_cache : DEFAULT_RB_CACHE;
        r = cache_init(&s->l2c, (unsigned)cache_bytes(l2_want, s->cs), true);
        if (r == 0)
                r = cache_init(&s->rbc, (unsigned)cache_bytes(rb_want, s->cs), false);
        if (r < 0)
                return vbd_err_set(err, r, "qcow2: out of memory for the caches");

        s->cbuf = malloc(2 * s->cs + 512);
        if (posix_memalign((void **)&s->dbuf, 4096, s->cs))
                s->dbuf = NULL;
        if (posix_memalign((void **)&s->zero_buf, 4096, s->cs))
                s->zero_buf = NULL;
        if (!s->cbuf || !s->dbuf || !s->zero_buf)
                return vbd_err_set(err, -ENOMEM, "qcow2: out of memory");
        memset(s->zero_buf, 0, s->cs);

        s->alloc_end = round_up(s->file_size, s->cs);
        s->zero_from = s->alloc_end;
        s->free_hint = 1;
        /* The bitmaps (read-write: marked in use in the file before any write). */
        r = qcow2_bitmaps_open(s, err);
        if (r < 0)
                return r;
        if (!readonly) {
                uint64_t keep = qcow2_bitmaps_autoclear_keep(s);

                s->lazy = s->h.version >= 3 && (s->h.compat & QCOW2_COMPAT_LAZY);
                if (s->h.autoclear & ~keep) {
                        uint8_t b[8];

                        /* Auto-clear features we do not keep up to date are cleared
                         * before writing: all but valid bitmaps. */
                        vbd_put_be64(b, s->h.autoclear & keep);
                        r = pwrite_full(s, b, 8, QCOW2_HDR_AUTOCLEAR);
                        if (r == 0)
                                r = qcow2_sync(s);
                        if (r < 0)
                                return vbd_err_set(err, r, "qcow2: cannot update the header: %s",
                                                   strerror(-r));
                        s->h.autoclear &= keep;
                }
        }
        return 0;
}

void qcow2_meta_close(struct qcow2_state *s)
{
        qcow2_bitmaps_close(s);
        cache_free(&s->l2c);
        cache_free(&s->rbc);
        free(s->l1);
        free(s->rt);
        free(s->meta);
        free(s->snap_l1);
        free(s->frees);
        free(s->l1_todo);
        free(s->cbuf);
        free(s->dbuf);
        free(s->zero_buf);
        if (s->zs_ready)
                inflateEnd(&s->zs);
        s->l1 = s->rt = s->meta = NULL;
        s->snap_l1 = NULL;
        s->frees = NULL;
        s->l1_todo = NULL;
        s->cbuf = s->dbuf = s->zero_buf = NULL;
        s->zs_ready = false;
        s->nmeta = s->meta_cap = s->nfrees = s->frees_cap = s->nl1_todo = s->l1_todo_cap = 0;
        if (s->mfd >= 0)
                close(s->mfd);
        s->mfd = -1;
}
