/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cbt: the checkpoints as stored bitmaps of the image below (qcow2 keeps them
 * in QEMU's bitmaps extension), so that qemu-img, qemu-nbd and QEMU see them.
 *
 * The map file stays the truth: it survives a crash, the copy in the image
 * does not (it is flagged in use while vbdd writes).  The copy is published
 * when the image is opened read-write (in use), after each checkpoint change
 * (in use) and at a clean close (not in use, current).  Bitmap k is "changed
 * since checkpoint k", enabled, so a QEMU that writes the image while vbdd is
 * away records its writes there; at the next open those writes are counted
 * again (import).  A bitmaps extension that a program without bitmap support
 * invalidated (QEMU then drops it: once published, none of the checkpoints'
 * bitmaps left in the image means the same) means writes nobody tracked:
 * the map starts afresh and the next backup is full, with that reason.
 *
 * Not seen: a program that writes the image while its bitmaps are still
 * flagged in use (after vbdd was killed) without tracking them; QEMU keeps
 * such bitmaps as they are, inconsistent, and so does nothing tell us.
 */
#define VBD_LOG_TOPIC "drv.cbt"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cbt.h"
#include "vbd/file.h"
#include "vbd/log.h"

/* Changed since checkpoint k, as ceil(nblocks / 64) words (tail bits clear). */
static uint64_t *since_words(struct cbt_state *s, unsigned k)
{
        size_t nw = (size_t)((s->nblocks + 63) / 64);
        uint64_t *w = calloc(nw ? nw : 1, sizeof(*w));

        if (!w)
                return NULL;
        if (cbt_load_since(s, k) < 0) {
                free(w);
                return NULL;
        }
        for (size_t j = 0; j < nw; j++)
                w[j] = cbt_since_word(s, k, j);
        if (s->nblocks % 64)
                w[nw - 1] &= (UINT64_C(1) << (s->nblocks % 64)) - 1;
        return w;
}

int cbt_stored_publish(struct cbt_state *s, bool in_use)
{
        struct vbd_stored_bitmap *b;
        struct vbd_err err = {0};
        int r = 0;

        if (s->readonly || s->fd < 0 || !s->has_stored)
                return 0;
        b = calloc(s->ncp ? s->ncp : 1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        for (unsigned k = 0; k < s->ncp; k++) {
                snprintf(b[k].name, sizeof(b[k].name), "%s", s->cp[k].name);
                b[k].granularity = s->gran;
                b[k].in_use = in_use;
                b[k].enabled = true;
                b[k].nbits = s->nblocks;
                b[k].bits = since_words(s, k);
                if (!b[k].bits) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        r = vbd_image_stored_bitmaps_put(s->child, b, s->ncp, &err);
        if (r == -EOPNOTSUPP) {
                s->has_stored = false;
                r = 0;
        } else if (r == 0 && s->ncp && !s->published) {
                /* from now on, a bitmap missing from the image means trouble */
                s->published = true;
                if ((r = cbt_map_write_header(s)) < 0) {
                        s->published = false;
                        vbd_warn("%s: %s", s->map_path, strerror(-r));
                }
        } else if (r < 0) {
                vbd_warn("%s: the image's copy of the checkpoints not updated: %s (the change "
                         "map still has them)",
                         s->map_path, err.msg);
        }
out:
        for (unsigned k = 0; k < s->ncp; k++)
                free(b[k].bits);
        free(b);
        return r;
}

/* Set our blocks covering the stored bitmap's set bits that are not already
 * changed since checkpoint k; the count of blocks newly set. */
static uint64_t merge(struct cbt_state *s, unsigned k, const struct vbd_stored_bitmap *b)
{
        uint64_t n = 0;

        for (uint64_t i = 0; i < b->nbits; i++) {
                uint64_t start, end;

                if (!(b->bits[i / 64] & (UINT64_C(1) << (i % 64))))
                        continue;
                start = i * b->granularity;
                if (start >= s->size)
                        break;
                end = start + b->granularity;
                if (end > s->size)
                        end = s->size;
                for (uint64_t blk = start >> s->gran_shift; blk <= (end - 1) >> s->gran_shift;
                     blk++)
                        if (!cbt_changed_since(s, k, blk)) {
                                cbt_set(s->active, blk);
                                n++;
                        }
        }
        return n;
}

int cbt_stored_import(struct cbt_state *s, struct vbd_err *err)
{
        uint64_t added = 0;
        bool stale = false;
        unsigned found = 0;

        if (s->readonly || s->fd < 0 || s->lost)
                return 0;
        s->has_stored = true;
        for (unsigned k = 0; k < s->ncp && !stale; k++) {
                struct vbd_stored_bitmap b = {0};
                struct vbd_err e = {0};
                int r;

                for (unsigned i = k; i + 1 < s->ncp; i++)
                        if ((r = cbt_load_delta(s, i)) < 0)
                                return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                r = vbd_image_stored_bitmap_get(s->child, s->cp[k].name, &b, &e);
                if (r == -EOPNOTSUPP) {
                        s->has_stored = false;
                        return 0;
                }
                if (r != -ENOENT && r != -ESTALE)
                        found++;
                if (r == -ESTALE) {
                        stale = true;
                } else if (r == -ENOENT) {
                        /* not published yet (vbdd stopped in between), or removed */
                } else if (r < 0) {
                        vbd_warn("%s: the image's bitmap %s is unreadable: %s (ignored)",
                                 s->map_path, s->cp[k].name, e.msg);
                } else if (b.in_use) {
                        /* ours, from a vbdd that did not close: the map is the truth */
                } else if (!b.granularity ||
                           b.nbits != (s->size + b.granularity - 1) / b.granularity) {
                        vbd_warn("%s: the image's bitmap %s does not cover the image (ignored)",
                                 s->map_path, s->cp[k].name);
                } else {
                        uint64_t n = merge(s, k, &b);

                        if (n)
                                vbd_info("%s: checkpoint %s: %llu block(s) written by another "
                                         "program since, from the image's bitmap",
                                         s->map_path, s->cp[k].name, (unsigned long long)n);
                        added += n;
                }
                free(b.bits);
        }
        if (!stale && s->published && s->ncp && !found) {
                /* QEMU drops the extension when it finds it invalidated */
                vbd_warn("%s: the image lost the checkpoints' bitmaps", s->map_path);
                stale = true;
        }
        if (stale && s->ncp) {
                static const char why[] = "the image was written by a program that does not "
                                          "keep its bitmaps";
                int r;

                vbd_warn("%s: %s; starting the change map afresh (the next backup is full)",
                         s->map_path, why);
                if ((r = cbt_map_restart(s, why)) < 0)
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                return 0;
        }
        if (added) {
                int r = vbd_pwrite_all(s->fd, s->active, s->bitmap_bytes, cbt_map_active_offset(s));

                if (r == 0 && fdatasync(s->fd) < 0)
                        r = -errno;
                if (r < 0)
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
        }
        return 0;
}
