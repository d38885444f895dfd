/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2 on-disk structures: header and header extensions, L2 entries and
 * refcount entries.  Pure functions on buffers, no I/O: the fuzz harness and
 * the unit tests call them directly.
 */
#define VBD_LOG_TOPIC "drv.qcow2"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2.h"

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
        return alen && blen && a < b + blen && b < a + alen;
}

/* Name an unknown incompatible feature from the feature name table, if any. */
static void feature_names(const uint8_t *tab, size_t len, uint64_t bits, char *out, size_t size)
{
        size_t n = 0;

        out[0] = '\0';
        for (unsigned bit = 0; bit < 64; bit++) {
                const char *name = NULL;
                char nb[48];

                if (!(bits & (1ull << bit)))
                        continue;
                for (size_t i = 0; tab && i + 48 <= len; i += 48)
                        if (tab[i] == 0 && tab[i + 1] == bit) {
                                memcpy(nb, tab + i + 2, 46);
                                nb[46] = '\0';
                                for (char *c = nb; *c; c++)
                                        if (*c < 0x20 || *c > 0x7e)
                                                *c = '?';
                                name = nb;
                        }
                if (n < size)
                        n += (size_t)snprintf(out + n, size - n, "%s%u%s%s%s", n ? ", " : "", bit,
                                              name ? " (" : "", name ? name : "", name ? ")" : "");
        }
}

static int parse_extensions(const uint8_t *buf, size_t end, struct qcow2_header *h,
                            const uint8_t **ret_ftab, size_t *ret_flen, struct vbd_err *err)
{
        size_t off = h->header_length;
        bool seen_fmt = false, seen_ftab = false, seen_bitmaps = false;

        while (off + 8 <= end) {
                uint32_t type = vbd_get_be32(buf + off), len = vbd_get_be32(buf + off + 4);
                const uint8_t *data = buf + off + 8;

                if (type == QCOW2_EXT_END)
                        return 0;
                if (len > end - off - 8)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: header extension %#x at %zu (%u bytes) runs "
                                           "past the header area",
                                           type, off, len);
                switch (type) {
                case QCOW2_EXT_BACKING_FMT:
                        if (seen_fmt || len == 0 || len >= sizeof(h->backing_fmt))
                                return vbd_err_set(err, -EINVAL,
                                                   "qcow2: bad backing format extension");
                        memcpy(h->backing_fmt, data, len);
                        h->backing_fmt[len] = '\0';
                        if (strlen(h->backing_fmt) != len)
                                return vbd_err_set(err, -EINVAL,
                                                   "qcow2: backing format name contains NUL");
                        seen_fmt = true;
                        break;
                case QCOW2_EXT_FEATURES:
                        if (seen_ftab)
                                return vbd_err_set(err, -EINVAL, "qcow2: two feature name tables");
                        *ret_ftab = data;
                        *ret_flen = len;
                        seen_ftab = true;
                        break;
                case QCOW2_EXT_BITMAPS:
                        if (seen_bitmaps)
                                return vbd_err_set(err, -EINVAL, "qcow2: two bitmaps extensions");
                        /* Checked by qcow2_bitmaps_open(): a bad one costs the
                         * bitmaps, not the image. */
                        h->has_bitmaps = true;
                        h->bitmaps_ext_len = len;
                        if (len >= 24) {
                                h->nb_bitmaps = vbd_get_be32(data);
                                h->bitmaps_reserved = vbd_get_be32(data + 4);
                                h->bitmap_dir_size = vbd_get_be64(data + 8);
                                h->bitmap_dir_offset = vbd_get_be64(data + 16);
                        }
                        seen_bitmaps = true;
                        break;
                default:
                        break; /* unknown extensions are ignored (crypto, data file refused by bits)
                                */
                }
                off += 8 + (((size_t)len + 7) & ~(size_t)7);
        }
        return 0;
}

int qcow2_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, struct qcow2_header *h,
                       struct vbd_err *err)
{
        const uint8_t *ftab = NULL;
        size_t flen = 0, ext_end;
        uint64_t cs, l2_entries, need_l1, l1_bytes;
        char names[160];
        int r;

        memset(h, 0, sizeof(*h));
        if (len < QCOW2_V2_HEADER_LEN)
                return vbd_err_set(err, -EINVAL, "qcow2: file too small for a qcow2 header");
        if (vbd_get_be32(buf) != QCOW2_MAGIC)
                return vbd_err_set(err, -EINVAL, "qcow2: not a qcow2 image (bad magic)");
        h->version = vbd_get_be32(buf + 4);
        if (h->version != 2 && h->version != 3)
                return vbd_err_set(err, -ENOTSUP, "qcow2: version %u not supported (2 or 3)",
                                   h->version);
        h->backing_offset = vbd_get_be64(buf + 8);
        h->backing_size = vbd_get_be32(buf + 16);
        h->cluster_bits = vbd_get_be32(buf + 20);
        h->size = vbd_get_be64(buf + 24);
        h->crypt_method = vbd_get_be32(buf + 32);
        h->l1_size = vbd_get_be32(buf + 36);
        h->l1_offset = vbd_get_be64(buf + 40);
        h->rt_offset = vbd_get_be64(buf + 48);
        h->rt_clusters = vbd_get_be32(buf + 56);
        h->nb_snapshots = vbd_get_be32(buf + 60);
        h->snapshots_offset = vbd_get_be64(buf + 64);
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LEN;

        if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: cluster_bits %u not supported (%u..%u: 512 B..2 MiB)",
                                   h->cluster_bits, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
        cs = 1ull << h->cluster_bits;
        if (len > cs)
                len = (size_t)cs;

        if (h->version == 3) {
                if (len < QCOW2_V3_HEADER_LEN)
                        return vbd_err_set(err, -EINVAL, "qcow2: v3 header truncated");
                h->incompat = vbd_get_be64(buf + 72);
                h->compat = vbd_get_be64(buf + 80);
                h->autoclear = vbd_get_be64(buf + 88);
                h->refcount_order = vbd_get_be32(buf + 96);
                h->header_length = vbd_get_be32(buf + 100);
                if (h->header_length < QCOW2_V3_HEADER_LEN || h->header_length % 8 ||
                    h->header_length > len)
                        return vbd_err_set(err, -EINVAL, "qcow2: bad header_length %u",
                                           h->header_length);
                if (h->header_length > 104)
                        h->compression_type = buf[104];
        }

        /* The header area for extensions ends at the backing file name. */
        ext_end = len;
        if (h->backing_offset) {
                if (h->backing_size == 0 || h->backing_size > QCOW2_MAX_BACKING_NAME)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: backing file name length %u (1..%u)",
                                           h->backing_size, QCOW2_MAX_BACKING_NAME);
                if (h->backing_offset < h->header_length || h->backing_offset >= len ||
                    h->backing_size > len - h->backing_offset)
                        return vbd_err_set(err, -EINVAL,
                                           "qcow2: backing file name at %llu (%u bytes) is "
                                           "outside the first cluster",
                                           (unsigned long long)h->backing_offset, h->backing_size);
                memcpy(h->backing_file, buf + h->backing_offset, h->backing_size);
                h->backing_file[h->backing_size] = '\0';
                if (strlen(h->backing_file) != h->backing_size)
                        return vbd_err_set(err, -EINVAL, "qcow2: backing file name contains NUL");
                ext_end = (size_t)h->backing_offset;
        }
        r = parse_extensions(buf, ext_end, h, &ftab, &flen, err);
        if (r < 0)
                return r;

        /* Features. */
        if (h->incompat & ~QCOW2_INCOMPAT_KNOWN) {
                feature_names(ftab, flen, h->incompat & ~QCOW2_INCOMPAT_KNOWN, names,
                              sizeof(names));
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: unknown incompatible feature bit(s) %s; refusing",
                                   names);
        }
        if (h->crypt_method)
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: encrypted images (crypt_method %u) are not supported",
                                   h->crypt_method);
        if (h->incompat & QCOW2_INCOMPAT_DATA_FILE)
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: images with an external data file are not supported");
        if (h->incompat & QCOW2_INCOMPAT_EXTL2)
                return vbd_err_set(err, -ENOTSUP,
                                   "qcow2: extended L2 entries (subclusters) are not supported");
        if (h->incompat & QCOW2_INCOMPAT_COMPRESSION) {
                if (h->compression_type == 1)
                        return vbd_err_set(err, -ENOTSUP,
                                           "qcow2: zstd compression is not supported (zlib only)");
                return vbd_err_set(err, -ENOTSUP, "qcow2: compression type %u not supported",
                                   h->compression_type);
        }
        if (h->compression_type)
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: compression type %u without its feature bit",
                                   h->compression_type);
        if (h->refcount_order > 6)
                return vbd_err_set(err, -EINVAL, "qcow2: refcount_order %u (at most 6)",
                                   h->refcount_order);

        /* Size and tables. */
        if (h->size > QCOW2_MAX_VIRTUAL_SIZE)
                return vbd_err_set(err, -EFBIG, "qcow2: virtual size %llu too large",
                                   (unsigned long long)h->size);
        l2_entries = cs / 8;
        need_l1 = (h->size + cs * l2_entries - 1) / (cs * l2_entries);
        if (h->l1_size < need_l1)
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: L1 table has %u entries, the size needs %llu",
                                   h->l1_size, (unsigned long long)need_l1);
        l1_bytes = (uint64_t)h->l1_size * 8;
        if (l1_bytes > QCOW2_MAX_L1_BYTES)
                return vbd_err_set(err, -EFBIG, "qcow2: L1 table of %u entries too large",
                                   h->l1_size);
        if (h->l1_size && (h->l1_offset % cs || h->l1_offset < cs || h->l1_offset > file_size ||
                           l1_bytes > file_size - h->l1_offset))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: L1 table offset %llu (%llu bytes) is misaligned or "
                                   "outside the file (%llu bytes)",
                                   (unsigned long long)h->l1_offset, (unsigned long long)l1_bytes,
                                   (unsigned long long)file_size);
        if (h->rt_clusters == 0 || (uint64_t)h->rt_clusters * cs > QCOW2_MAX_RT_BYTES)
                return vbd_err_set(err, -EINVAL, "qcow2: refcount table of %u clusters",
                                   h->rt_clusters);
        if (h->rt_offset % cs || h->rt_offset < cs || h->rt_offset > file_size ||
            (uint64_t)h->rt_clusters * cs > file_size - h->rt_offset)
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: refcount table offset %llu is misaligned or outside "
                                   "the file",
                                   (unsigned long long)h->rt_offset);
        if (ranges_overlap(h->l1_offset, l1_bytes, h->rt_offset, (uint64_t)h->rt_clusters * cs))
                return vbd_err_set(err, -EINVAL, "qcow2: L1 table overlaps the refcount table");
        if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
                return vbd_err_set(err, -EINVAL, "qcow2: %u snapshots (at most %u)",
                                   h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
        if (h->nb_snapshots && (h->snapshots_offset % cs || h->snapshots_offset < cs ||
                                h->snapshots_offset >= file_size))
                return vbd_err_set(err, -EINVAL,
                                   "qcow2: snapshot table offset %llu is misaligned or outside "
                                   "the file",
                                   (unsigned long long)h->snapshots_offset);
        /* The bitmaps extension's fields are checked by qcow2_bitmaps_open(): a
         * bad directory leaves the bitmaps unreadable, not the image. */
        return 0;
}

int qcow2_l2_decode(const struct qcow2_state *s, uint64_t e, struct qcow2_map *m, const char **why)
{
        memset(m, 0, sizeof(*m));
        if (e & QCOW2_OFLAG_COMPRESSED) {
                unsigned x = 62 - (s->cluster_bits - 8);
                uint64_t off = e & ((1ull << x) - 1);
                uint64_t nsect = (e >> x) & ((1ull << (s->cluster_bits - 8)) - 1);

                m->kind = QCOW2_COMPRESSED;
                m->host = off;
                m->clen = (nsect + 1) * 512 - (off & 511);
                if (off >= QCOW2_MAX_HOST_OFFSET || off < s->cs) {
                        *why = "compressed cluster offset out of range";
                        return -EIO;
                }
                if (off >= s->file_size) {
                        *why = "compressed cluster past the end of the file";
                        return -EIO;
                }
                return 0;
        }
        if (e & QCOW2_L2_RESERVED) {
                *why = "reserved bits set in L2 entry";
                return -EIO;
        }
        m->host = e & QCOW2_OFFSET_MASK;
        m->copied = (e & QCOW2_OFLAG_COPIED) != 0;
        if (e & QCOW2_OFLAG_ZERO) {
                if (s->h.version < 3) {
                        *why = "zero flag in a version 2 image";
                        return -EIO;
                }
                m->kind = QCOW2_ZERO;
        } else if (m->host) {
                m->kind = QCOW2_DATA;
        } else {
                if (m->copied) {
                        *why = "L2 entry with offset 0 and the COPIED flag";
                        return -EIO;
                }
                m->kind = QCOW2_UNALLOC;
                return 0;
        }
        if (m->host) {
                if (m->host & (s->cs - 1)) {
                        *why = "unaligned cluster offset in L2 entry";
                        return -EIO;
                }
                if (m->host > s->file_size || s->cs > s->file_size - m->host) {
                        *why = "L2 entry points past the end of the file";
                        return -EIO;
                }
        }
        return 0;
}

uint64_t qcow2_rc_get_entry(const void *block, unsigned order, uint64_t idx)
{
        const uint8_t *b = block;
        unsigned w = 1u << order;

        switch (order) {
        case 3:
                return b[idx];
        case 4:
                return (uint64_t)b[idx * 2] << 8 | b[idx * 2 + 1];
        case 5:
                return vbd_get_be32(b + idx * 4);
        case 6:
                return vbd_get_be64(b + idx * 8);
        default: { /* 1, 2 or 4 bits, bit 0 the least significant */
                uint64_t bit = idx * w;

                return (b[bit / 8] >> (bit % 8)) & ((1u << w) - 1);
        }
        }
}

void qcow2_rc_set_entry(void *block, unsigned order, uint64_t idx, uint64_t v)
{
        uint8_t *b = block;
        unsigned w = 1u << order;

        switch (order) {
        case 3:
                b[idx] = (uint8_t)v;
                return;
        case 4:
                b[idx * 2] = (uint8_t)(v >> 8);
                b[idx * 2 + 1] = (uint8_t)v;
                return;
        case 5:
                for (int i = 3; i >= 0; i--, v >>= 8)
                        b[idx * 4 + (unsigned)i] = (uint8_t)v;
                return;
        case 6:
                vbd_put_be64(b + idx * 8, v);
                return;
        default: {
                uint64_t bit = idx * w;
                uint8_t mask = (uint8_t)(((1u << w) - 1) << (bit % 8));

                b[bit / 8] = (uint8_t)((b[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
                return;
        }
        }
}

/* ---- bitmaps extension ---- */

size_t qcow2_bitmap_dir_entry_size(size_t name_len, uint32_t extra)
{
        return (24 + name_len + extra + 7) & ~(size_t)7;
}

uint64_t qcow2_bitmap_table_size(uint64_t nbits, uint64_t cs)
{
        uint64_t bytes = (nbits + 7) / 8;

        return (bytes + cs - 1) / cs;
}

int qcow2_bitmap_entry_check(uint64_t e, uint64_t cs, uint64_t file_size, const char **why)
{
        uint64_t off = e & QCOW2_OFFSET_MASK;

        if (e & QCOW2_BMT_RESERVED) {
                *why = "reserved bits set in a bitmap table entry";
                return -EIO;
        }
        if (!off)
                return 0;
        if (e & QCOW2_BMT_ALL_ONES) {
                *why = "bitmap table entry with an offset and the all-ones bit";
                return -EIO;
        }
        if (off % cs || off < cs) {
                *why = "unaligned bitmap data cluster";
                return -EIO;
        }
        if (off > file_size || cs > file_size - off) {
                *why = "bitmap data cluster past the end of the file";
                return -EIO;
        }
        return 0;
}

void qcow2_bm_free(struct qcow2_bm *b, uint32_t n)
{
        for (uint32_t i = 0; b && i < n; i++)
                free(b[i].name);
        free(b);
}

static int bm_name_cmp(const void *a, const void *b)
{
        const struct qcow2_bm *x = *(const struct qcow2_bm *const *)a;
        const struct qcow2_bm *y = *(const struct qcow2_bm *const *)b;

        return strcmp(x->name, y->name);
}

int qcow2_bitmap_dir_parse(const uint8_t *buf, size_t len, uint32_t nb, uint64_t cs, uint64_t vsize,
                           uint64_t file_size, struct qcow2_bm **ret, uint32_t *ret_n, char *why,
                           size_t why_len)
{
        struct qcow2_bm *b = NULL, **sorted = NULL;
        size_t off = 0;
        uint32_t n = 0;
        int r = -EIO;

        *ret = NULL;
        *ret_n = 0;
        if (nb == 0 || nb > QCOW2_MAX_BITMAPS) {
                snprintf(why, why_len, "%u bitmaps in the extension (1..%u)", nb,
                         QCOW2_MAX_BITMAPS);
                return -EIO;
        }
        if (len == 0 || len > QCOW2_MAX_BITMAP_DIR) {
                snprintf(why, why_len, "bitmap directory of %zu bytes (1..%llu)", len,
                         (unsigned long long)QCOW2_MAX_BITMAP_DIR);
                return -EIO;
        }
        b = calloc(nb, sizeof(*b));
        if (!b) {
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
        }
        while (off < len) {
                const uint8_t *e = buf + off;
                struct qcow2_bm *m;
                uint32_t name_size;
                size_t esize;
                uint8_t type;

                if (len - off < 24) {
                        snprintf(why, why_len, "bitmap directory entry %u truncated", n);
                        goto fail;
                }
                if (n == nb) {
                        snprintf(why, why_len,
                                 "more bitmaps in the directory than the %u "
                                 "the extension counts",
                                 nb);
                        goto fail;
                }
                m = &b[n];
                m->table_offset = vbd_get_be64(e);
                m->table_size = vbd_get_be32(e + 8);
                m->flags = vbd_get_be32(e + 12);
                type = e[16];
                m->gran_bits = e[17];
                name_size = (uint32_t)e[18] << 8 | e[19];
                m->extra_size = vbd_get_be32(e + 20);
                if (name_size == 0 || name_size > QCOW2_BITMAP_NAME_MAX) {
                        snprintf(why, why_len, "bitmap %u: name of %u bytes (1..%u)", n, name_size,
                                 QCOW2_BITMAP_NAME_MAX);
                        goto fail;
                }
                if (m->extra_size > len) {
                        snprintf(why, why_len, "bitmap %u: %u bytes of extra data", n,
                                 m->extra_size);
                        goto fail;
                }
                esize = qcow2_bitmap_dir_entry_size(name_size, m->extra_size);
                if (esize > len - off) {
                        snprintf(why, why_len,
                                 "bitmap directory entry %u runs past the "
                                 "directory",
                                 n);
                        goto fail;
                }
                m->name = malloc(name_size + 1);
                if (!m->name) {
                        snprintf(why, why_len, "out of memory");
                        r = -ENOMEM;
                        goto fail;
                }
                memcpy(m->name, e + 24 + m->extra_size, name_size);
                m->name[name_size] = '\0';
                n++;
                if (strlen(m->name) != name_size) {
                        snprintf(why, why_len, "bitmap %u: name contains NUL", n - 1);
                        goto fail;
                }
                if (type != 1) {
                        snprintf(why, why_len, "bitmap '%.64s': type %u (1: dirty tracking)",
                                 m->name, type);
                        goto fail;
                }
                if (m->flags & QCOW2_BME_RESERVED) {
                        snprintf(why, why_len, "bitmap '%.64s': reserved flags %#x", m->name,
                                 m->flags & QCOW2_BME_RESERVED);
                        goto fail;
                }
                if (m->gran_bits < QCOW2_BITMAP_MIN_GRAN_BITS ||
                    m->gran_bits > QCOW2_BITMAP_MAX_GRAN_BITS) {
                        snprintf(why, why_len, "bitmap '%.64s': granularity bits %u (%u..%u)",
                                 m->name, m->gran_bits, QCOW2_BITMAP_MIN_GRAN_BITS,
                                 QCOW2_BITMAP_MAX_GRAN_BITS);
                        goto fail;
                }
                if (m->table_size == 0 || m->table_size > QCOW2_MAX_BITMAP_TABLE) {
                        snprintf(why, why_len, "bitmap '%.64s': table of %u entries (1..%u)",
                                 m->name, m->table_size, QCOW2_MAX_BITMAP_TABLE);
                        goto fail;
                }
                if (m->table_offset % cs || m->table_offset < cs || m->table_offset > file_size ||
                    (uint64_t)m->table_size * 8 > file_size - m->table_offset) {
                        snprintf(why, why_len,
                                 "bitmap '%.64s': table at %llu (%u entries) is misaligned "
                                 "or outside the file",
                                 m->name, (unsigned long long)m->table_offset, m->table_size);
                        goto fail;
                }
                /* Faults of this bitmap alone. */
                if (m->extra_size && !(m->flags & QCOW2_BME_EXTRA_COMPAT))
                        m->bad = "it has extra data of an unknown kind";
                else if ((uint64_t)m->table_size * cs > QCOW2_MAX_BITMAP_BYTES)
                        m->bad = "its data is larger than 512 MiB";
                else if (m->table_size !=
                         qcow2_bitmap_table_size(
                             (vsize + (1ull << m->gran_bits) - 1) >> m->gran_bits, cs))
                        m->bad = "its table size does not match the virtual size";
                off += esize;
        }
        if (n != nb) {
                snprintf(why, why_len, "%u bitmaps in the directory, the extension counts %u", n,
                         nb);
                goto fail;
        }
        sorted = malloc(n * sizeof(*sorted));
        if (!sorted) {
                snprintf(why, why_len, "out of memory");
                r = -ENOMEM;
                goto fail;
        }
        for (uint32_t i = 0; i < n; i++)
                sorted[i] = &b[i];
        qsort(sorted, n, sizeof(*sorted), bm_name_cmp);
        for (uint32_t i = 1; i < n; i++)
                if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
                        snprintf(why, why_len, "two bitmaps named '%.64s'", sorted[i]->name);
                        goto fail;
                }
        free(sorted);
        *ret = b;
        *ret_n = n;
        return 0;

fail:
        free(sorted);
        qcow2_bm_free(b, n);
        return r;
}

int qcow2_header_rebuild(const uint8_t *old, size_t cs, const struct qcow2_header *h,
                         const uint8_t *bmext, uint64_t autoclear, uint8_t *out, size_t *ret_len,
                         struct vbd_err *err)
{
        size_t in = h->header_length, pos = h->header_length, ext_end = cs, old_end;

        if (h->version < 3 || h->header_length < QCOW2_V3_HEADER_LEN || h->header_length > cs)
                return vbd_err_set(err, -ENOTSUP, "qcow2: bitmaps need a version 3 image");
        if (h->backing_offset) {
                if (h->backing_offset < h->header_length || h->backing_offset > cs ||
                    h->backing_size > cs - h->backing_offset)
                        return vbd_err_set(err, -EIO,
                                           "qcow2: backing file name outside the "
                                           "first cluster");
                ext_end = (size_t)h->backing_offset;
        }
        memcpy(out, old, cs);
        /* Keep every extension but the bitmaps one. */
        while (in + 8 <= ext_end) {
                uint32_t type = vbd_get_be32(old + in), len = vbd_get_be32(old + in + 4);
                size_t step;

                if (type == QCOW2_EXT_END)
                        break;
                if (len > ext_end - in - 8)
                        return vbd_err_set(err, -EIO,
                                           "qcow2: header extension %#x runs past "
                                           "the header area",
                                           type);
                step = 8 + (((size_t)len + 7) & ~(size_t)7);
                if (step > ext_end - in)
                        step = ext_end - in;
                if (type != QCOW2_EXT_BITMAPS) {
                        memmove(out + pos, old + in, step);
                        pos += step;
                }
                in += step;
        }
        old_end = in + 8 <= ext_end ? in + 8 : ext_end;
        if (h->backing_offset && h->backing_offset + h->backing_size > old_end)
                old_end = (size_t)(h->backing_offset + h->backing_size);
        if (bmext) {
                if (cs - pos < 8 + 24)
                        goto nospace;
                vbd_put_be32(out + pos, QCOW2_EXT_BITMAPS);
                vbd_put_be32(out + pos + 4, 24);
                memcpy(out + pos + 8, bmext, 24);
                pos += 8 + 24;
        }
        if (cs - pos < 8)
                goto nospace;
        memset(out + pos, 0, 8);
        pos += 8;
        if (h->backing_offset) {
                if (cs - pos < h->backing_size)
                        goto nospace;
                memcpy(out + pos, old + h->backing_offset, h->backing_size);
                vbd_put_be64(out + 8, pos);
                pos += h->backing_size;
        }
        if (old_end > pos)
                memset(out + pos, 0, old_end - pos);
        vbd_put_be64(out + QCOW2_HDR_AUTOCLEAR, autoclear);
        *ret_len = pos > old_end ? pos : old_end;
        return 0;

nospace:
        return vbd_err_set(err, -ENOSPC,
                           "qcow2: the header extensions and the backing file name do not "
                           "fit in the first cluster (%zu bytes) with a bitmaps extension",
                           cs);
}
