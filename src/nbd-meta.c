/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Meta contexts of the NBD export (doc/proto.md, "Metadata querying"): the
 * table of contexts we offer, their negotiation (NBD_OPT_LIST_META_CONTEXT,
 * NBD_OPT_SET_META_CONTEXT) and their part of NBD_CMD_BLOCK_STATUS.
 *
 * The table has base:allocation, qemu:allocation-depth (QEMU's: which
 * layer of the backing chain a block comes from) and qemu:dirty-bitmap:NAME,
 * QEMU's name for a dirty bitmap (here: the changes since a change tracker's
 * checkpoint NAME; flag 1 = changed).  Another context is one more entry: a name, whether this
 * export offers it, and a function that writes its descriptors for a range.  An entry whose name is
 * a prefix stands for one context per bitmap of the image: LIST names them all, SET selects one of
 * them per client (the first asked for).  Negotiation, ids, and the reply (one chunk per selected
 * context, the last flagged DONE) are common.
 */
#define VBD_LOG_TOPIC "nbd"
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "nbd-internal.h"

/* Append descriptor (len, flags) at out[*cnt], merged into the previous one
 * when the flags are the same.  Extents lie inside the request: each fits in
 * 32 bits. */
static void put_extent(uint8_t *out, unsigned *cnt, uint64_t len, uint32_t flags)
{
        if (*cnt && vbd_get_be32(out + 8 * (*cnt - 1) + 4) == flags) {
                uint8_t *l = out + 8 * (*cnt - 1);

                vbd_put_be32(l, vbd_get_be32(l) + (uint32_t)len);
                return;
        }
        vbd_put_be32(out + 8 * *cnt, (uint32_t)len);
        vbd_put_be32(out + 8 * *cnt + 4, flags);
        (*cnt)++;
}

/*
 * The block status of the request's range from the image (bitmap NULL) or
 * from one of its bitmaps, each extent's flags mapped by flags_of into the
 * context's: the number of descriptors written, or -errno.
 */
static int image_status(struct nbd_req *r, const char *bitmap, uint8_t *out, unsigned max,
                        uint32_t (*flags_of)(const struct vbd_extent *))
{
        struct nbd_client *cl = r->cl;
        struct vbd_image *img = nbd_image(cl->srv);
        unsigned n = 0, cnt = 0;
        int rc;

        if (max > NBD_EXTENTS_MAX)
                max = NBD_EXTENTS_MAX;
        if (bitmap)
                rc = vbd_image_bitmap_status(img, bitmap, r->offset, r->len, cl->ext, max, &n);
        else
                rc = vbd_image_block_status(img, r->offset, r->len, cl->ext, max, &n);
        if (rc < 0)
                return rc;
        for (unsigned i = 0; i < n; i++)
                put_extent(out, &cnt, cl->ext[i].len, flags_of(&cl->ext[i]));
        return (int)cnt;
}

/* ---- base:allocation ---- */

static uint32_t allocation_flags(const struct vbd_extent *e)
{
        return (e->flags & VBD_EXTENT_HOLE ? NBD_STATE_HOLE : 0) |
               (e->flags & VBD_EXTENT_ZERO ? NBD_STATE_ZERO : 0);
}

static int base_allocation(struct nbd_req *r, uint8_t *out, unsigned max)
{
        return image_status(r, NULL, out, max, allocation_flags);
}

/* ---- qemu:allocation-depth ---- */

/* QEMU's: 0 where no layer of the backing chain has the block, else the
 * layer that has it, 1 for the image itself, 2 for its backing file, ...
 * (vbd_extent.depth + 1). */
static uint32_t depth_flags(const struct vbd_extent *e)
{
        return e->depth == VBD_EXTENT_DEPTH_NONE ? 0 : (uint32_t)e->depth + 1;
}

static int allocation_depth(struct nbd_req *r, uint8_t *out, unsigned max)
{
        return image_status(r, NULL, out, max, depth_flags);
}

/* ---- qemu:dirty-bitmap:NAME ---- */

#define NBD_STATE_DIRTY (1u << 0)

static uint32_t dirty_flags(const struct vbd_extent *e)
{
        return e->flags & VBD_EXTENT_DIRTY ? NBD_STATE_DIRTY : 0;
}

static int dirty_bitmap(struct nbd_req *r, uint8_t *out, unsigned max)
{
        int rc = image_status(r, r->cl->bitmap, out, max, dirty_flags);

        return rc == -ENOENT ? -EINVAL : rc; /* the checkpoint went away */
}

/* ---- the table ---- */

const struct nbd_meta_context nbd_meta_contexts[] = {
    {.name = "base:allocation", .block_status = base_allocation},
    {.name = "qemu:allocation-depth", .block_status = allocation_depth},
    {.name = "qemu:dirty-bitmap:", .prefix = true, .block_status = dirty_bitmap},
};
const unsigned nbd_meta_count = VBD_ARRAY_SIZE(nbd_meta_contexts);

_Static_assert(VBD_ARRAY_SIZE(nbd_meta_contexts) <= NBD_META_MAX, "raise NBD_META_MAX");

static bool ctx_available(struct vbd_nbd *s, unsigned i)
{
        return !nbd_meta_contexts[i].available || nbd_meta_contexts[i].available(s);
}

/* Is leaf (len bytes) the name of one of the image's bitmaps? */
static bool bitmap_exists(struct vbd_nbd *s, const char *leaf, size_t len)
{
        const char *name;

        for (unsigned i = 0; (name = vbd_image_bitmap_name(nbd_image(s), i)); i++)
                if (strlen(name) == len && memcmp(name, leaf, len) == 0)
                        return true;
        return false;
}

/*
 * A prefix entry i and query q: 1 when q names one bitmap (its name at
 * *leaf, *leaf_len bytes), 2 when it asks for all of them (LIST with the
 * namespace or the bare prefix), 0 otherwise.
 */
static int prefix_selects(struct vbd_nbd *s, unsigned i, const char *q, uint32_t ql, bool list,
                          const char **leaf, size_t *leaf_len)
{
        const char *name = nbd_meta_contexts[i].name;
        const char *colon = strchr(name, ':');
        size_t pl = strlen(name), ns = (size_t)(colon - name) + 1;

        if (list && (ql == pl || ql == ns) && memcmp(q, name, ql) == 0)
                return 2;
        if (ql <= pl || memcmp(q, name, pl) != 0 || !bitmap_exists(s, q + pl, ql - pl))
                return 0;
        *leaf = q + pl;
        *leaf_len = ql - pl;
        return 1;
}

/* Reply NBD_REP_META_CONTEXT for context c (id, or 0 for LIST), name + leaf. */
static void reply_context(struct nbd_client *cl, uint32_t id, unsigned c, const char *leaf,
                          size_t leaf_len)
{
        const char *name = nbd_meta_contexts[c].name;
        uint8_t rep[4 + VBD_NBD_NAME_MAX + 64];
        size_t l = strlen(name);

        if (l + leaf_len > VBD_NBD_NAME_MAX + 64)
                return;
        vbd_put_be32(rep, id);
        memcpy(rep + 4, name, l);
        memcpy(rep + 4 + l, leaf, leaf_len);
        nbd_opt_reply(cl, NBD_REP_META_CONTEXT, rep, (uint32_t)(4 + l + leaf_len));
}

/* LIST: every bitmap of the prefix entry c. */
static void reply_all_bitmaps(struct nbd_client *cl, unsigned c)
{
        const char *name;

        for (unsigned i = 0; (name = vbd_image_bitmap_name(nbd_image(cl->srv), i)); i++)
                reply_context(cl, 0, c, name, strlen(name));
}

/* Does query q (ql bytes) select context i?  LIST also takes a namespace ("base:"). */
static bool query_selects(unsigned i, const char *q, uint32_t ql, bool list)
{
        const char *name = nbd_meta_contexts[i].name;
        const char *colon = strchr(name, ':');
        size_t ns = colon ? (size_t)(colon - name) + 1 : 0;

        if (ql == strlen(name) && memcmp(q, name, ql) == 0)
                return true;
        return list && ns && ql == ns && memcmp(q, name, ns) == 0;
}

/* ---- negotiation ---- */

void nbd_meta_option(struct nbd_client *cl)
{
        struct vbd_nbd *s = cl->srv;
        const uint8_t *d = cl->opt;
        uint32_t len = cl->opt_len, nlen, nq, pos, found = 0;
        bool set = cl->opt_code == NBD_OPT_SET_META_CONTEXT;

        if (set)
                cl->meta = 0; /* replaced even when this fails */
        if (!cl->structured) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "negotiate structured replies first");
                return;
        }
        if (len < 8 || (nlen = vbd_get_be32(d)) > len - 8 || nlen > VBD_NBD_NAME_MAX) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "malformed option");
                return;
        }
        nq = vbd_get_be32(d + 4 + nlen);
        pos = 8 + nlen;
        /* Check the whole option before answering anything. */
        for (uint32_t i = 0; i < nq; i++) {
                uint32_t ql;

                if (len - pos < 4 || (ql = vbd_get_be32(d + pos)) > len - pos - 4 ||
                    ql > VBD_NBD_NAME_MAX) {
                        nbd_opt_error(cl, NBD_REP_ERR_INVALID, "malformed query");
                        return;
                }
                pos += 4 + ql;
        }
        if (pos != len) {
                nbd_opt_error(cl, NBD_REP_ERR_INVALID, "malformed option: trailing data");
                return;
        }
        if (!nbd_name_is_ours(s, d + 4, nlen)) {
                nbd_opt_error(cl, NBD_REP_ERR_UNKNOWN, "no such export");
                return;
        }
        pos = 8 + nlen;
        if (set)
                cl->bitmap[0] = '\0';
        for (uint32_t i = 0; i < nq; i++) {
                uint32_t ql = vbd_get_be32(d + pos);
                const char *q = (const char *)d + pos + 4;

                pos += 4 + ql;
                for (unsigned c = 0; c < nbd_meta_count; c++) {
                        const char *leaf;
                        size_t leaf_len;
                        int k;

                        if (!ctx_available(s, c))
                                continue;
                        if (!nbd_meta_contexts[c].prefix) {
                                if (query_selects(c, q, ql, !set))
                                        found |= 1u << c;
                                continue;
                        }
                        k = prefix_selects(s, c, q, ql, !set, &leaf, &leaf_len);
                        if (k == 2)
                                reply_all_bitmaps(cl, c);
                        else if (k == 1 && !set)
                                reply_context(cl, 0, c, leaf, leaf_len);
                        else if (k == 1 && !(found & (1u << c)) && leaf_len < sizeof(cl->bitmap)) {
                                /* one bitmap per client: the first asked for */
                                memcpy(cl->bitmap, leaf, leaf_len);
                                cl->bitmap[leaf_len] = '\0';
                                found |= 1u << c;
                        }
                }
        }
        if (!set && nq == 0) /* LIST without queries: everything */
                for (unsigned c = 0; c < nbd_meta_count; c++) {
                        if (!ctx_available(s, c))
                                continue;
                        if (nbd_meta_contexts[c].prefix)
                                reply_all_bitmaps(cl, c);
                        else
                                found |= 1u << c;
                }
        for (unsigned c = 0; c < nbd_meta_count; c++) {
                if (!(found & (1u << c)))
                        continue;
                if (nbd_meta_contexts[c].prefix)
                        reply_context(cl, c + 1, c, cl->bitmap, strlen(cl->bitmap));
                else
                        reply_context(cl, set ? c + 1 : 0, c, "", 0);
        }
        if (set)
                cl->meta = found;
        nbd_opt_reply(cl, NBD_REP_ACK, NULL, 0);
}

void nbd_meta_describe(const struct nbd_client *cl, char *buf, size_t size)
{
        size_t off = 0;

        buf[0] = '\0';
        for (unsigned c = 0; c < nbd_meta_count && off < size; c++)
                if (cl->meta & (1u << c))
                        off += (size_t)snprintf(buf + off, size - off, ", %s%s",
                                                nbd_meta_contexts[c].name,
                                                nbd_meta_contexts[c].prefix ? cl->bitmap : "");
}

/* ---- BLOCK_STATUS ---- */

int nbd_meta_block_status(struct nbd_req *r, uint8_t *out, size_t size)
{
        struct nbd_client *cl = r->cl;
        unsigned max = (r->flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : NBD_EXTENTS_MAX, last = 0;
        size_t off = 0;

        for (unsigned c = 0; c < nbd_meta_count; c++)
                if (cl->meta & (1u << c))
                        last = c;
        for (unsigned c = 0; c < nbd_meta_count; c++) {
                uint8_t *h = out + off;
                int n;

                if (!(cl->meta & (1u << c)))
                        continue;
                if (size - off < NBD_BS_CHUNK_MAX)
                        return -ENOBUFS; /* the buffer is sized for the table */
                n = nbd_meta_contexts[c].block_status(r, h + 24, max);
                if (n < 0)
                        return n;
                vbd_put_be32(h, NBD_STRUCTURED_REPLY_MAGIC);
                vbd_put_be16(h + 4, c == last ? NBD_REPLY_FLAG_DONE : 0);
                vbd_put_be16(h + 6, NBD_REPLY_TYPE_BLOCK_STATUS);
                vbd_put_be64(h + 8, r->cookie);
                vbd_put_be32(h + 16, 4 + 8 * (uint32_t)n);
                vbd_put_be32(h + 20, c + 1);
                off += 24 + 8 * (size_t)n;
        }
        return (int)off;
}
