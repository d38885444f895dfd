/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The change tracker's map file (format in vbd-driver-cbt(7)):
 *
 *   0       header slot 0 (4 KiB)
 *   4096    header slot 1 (4 KiB): the valid one with the higher seq wins
 *   8192    the active bitmap (bitmap_bytes)
 *   8192 + (1 + i) * bitmap_bytes   delta slot i, i < 16
 *
 * Every update is ordered so that a crash at any point leaves a map that
 * marks at least every block written since each checkpoint: bitmaps only gain
 * bits until the header that drops them is durable, and a header is written
 * to the slot not in use, so a torn header write leaves the other one.
 */
#define VBD_LOG_TOPIC "drv.cbt"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "cbt.h"
#include "vbd/endian.h"
#include "vbd/file.h"
#include "vbd/log.h"
#include "vbd/macro.h"

#define CBT_MAGIC    "VBD-CBT1"
#define CBT_VERSION  1
#define CBT_F_LOST   (1u << 0)
#define CBT_F_STORED (1u << 1) /* the checkpoints were published in the image (cbt-stored.c) */

/* Header layout (little endian). */
enum {
        H_MAGIC = 0,
        H_VERSION = 8,
        H_CRC = 12,
        H_SEQ = 16,
        H_SIZE = 24,
        H_GRAN = 32,
        H_NCP = 36,
        H_FLAGS = 40,
        H_BITMAP_BYTES = 48,
        H_ID = 56,
        H_PATH = 72,
        H_REASON = H_PATH + CBT_PATH_MAX,
        H_CP = H_REASON + CBT_REASON_MAX,
        CP_NAME = 0,
        CP_CREATED = CBT_NAME_MAX,
        CP_SLOT = CBT_NAME_MAX + 8,
        CP_BYTES = CBT_NAME_MAX + 16,
};
_Static_assert(H_CP + CBT_MAX_CHECKPOINTS * CP_BYTES <= CBT_PAGE, "header fits a page");

uint64_t cbt_map_active_offset(const struct cbt_state *s)
{
        (void)s;
        return CBT_HEADER_BYTES;
}

static uint64_t slot_offset(const struct cbt_state *s, uint32_t slot)
{
        return CBT_HEADER_BYTES + s->bitmap_bytes * (1 + (uint64_t)slot);
}

bool cbt_name_ok(const char *name)
{
        size_t n = strlen(name);

        if (n == 0 || n >= CBT_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = name[i];

                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '_' || c == '-'))
                        return false;
        }
        return true;
}

int cbt_find(const struct cbt_state *s, const char *name)
{
        for (unsigned i = 0; i < s->ncp; i++)
                if (strcmp(s->cp[i].name, name) == 0)
                        return (int)i;
        return -1;
}

static int sync_fd(int fd)
{
        return fdatasync(fd) < 0 ? -errno : 0;
}

/* ---- the header ---- */

static void header_encode(const struct cbt_state *s, uint64_t seq, uint32_t flags, uint8_t *h)
{
        memset(h, 0, CBT_PAGE);
        memcpy(h + H_MAGIC, CBT_MAGIC, 8);
        vbd_put_le32(h + H_VERSION, CBT_VERSION);
        vbd_put_le64(h + H_SEQ, seq);
        vbd_put_le64(h + H_SIZE, s->size);
        vbd_put_le32(h + H_GRAN, s->gran);
        vbd_put_le32(h + H_NCP, s->ncp);
        vbd_put_le32(h + H_FLAGS, flags);
        vbd_put_le64(h + H_BITMAP_BYTES, s->bitmap_bytes);
        memcpy(h + H_ID, s->image_id, sizeof(s->image_id));
        memcpy(h + H_PATH, s->image_path, strnlen(s->image_path, CBT_PATH_MAX - 1));
        memcpy(h + H_REASON, s->reason, strnlen(s->reason, CBT_REASON_MAX - 1));
        for (unsigned i = 0; i < s->ncp; i++) {
                uint8_t *c = h + H_CP + i * CP_BYTES;

                memcpy(c + CP_NAME, s->cp[i].name, strlen(s->cp[i].name));
                vbd_put_le64(c + CP_CREATED, s->cp[i].created);
                vbd_put_le32(c + CP_SLOT, s->cp[i].slot);
        }
        vbd_put_le32(h + H_CRC, (uint32_t)crc32(0, h, CBT_PAGE));
}

static int write_header_flags(struct cbt_state *s, uint32_t flags)
{
        uint8_t *h = malloc(CBT_PAGE);
        unsigned slot = s->hdr_slot ^ 1;
        int r;

        if (!h)
                return -ENOMEM;
        header_encode(s, s->seq + 1, flags, h);
        r = vbd_pwrite_all(s->fd, h, CBT_PAGE, (uint64_t)slot * CBT_PAGE);
        free(h);
        if (r == 0)
                r = sync_fd(s->fd);
        if (r < 0)
                return r;
        s->seq++;
        s->hdr_slot = slot;
        return 0;
}

int cbt_map_write_header(struct cbt_state *s)
{
        return write_header_flags(s, s->published ? CBT_F_STORED : 0);
}

int cbt_map_mark_lost(struct cbt_state *s, const char *why)
{
        snprintf(s->reason, sizeof(s->reason), "tracking was lost: %s", why);
        return write_header_flags(s, CBT_F_LOST);
}

/* Is this header page valid?  Its seq in *seq. */
static bool header_valid(const uint8_t *h, uint64_t *seq)
{
        uint8_t tmp[CBT_PAGE];
        uint32_t crc = vbd_get_le32(h + H_CRC);

        if (memcmp(h + H_MAGIC, CBT_MAGIC, 8) != 0 || vbd_get_le32(h + H_VERSION) != CBT_VERSION)
                return false;
        memcpy(tmp, h, CBT_PAGE);
        vbd_put_le32(tmp + H_CRC, 0);
        if ((uint32_t)crc32(0, tmp, CBT_PAGE) != crc)
                return false;
        *seq = vbd_get_le64(h + H_SEQ);
        return true;
}

/* Decode a valid header into s, checking it against s's geometry: 0, or
 * -EINVAL with why (the map is then not used). */
static int header_decode(struct cbt_state *s, const uint8_t *h, char *why, size_t wsize)
{
        uint32_t ncp = vbd_get_le32(h + H_NCP), used = 0;
        char path[CBT_PATH_MAX];

        s->ncp = 0;
        memcpy(path, h + H_PATH, CBT_PATH_MAX);
        path[CBT_PATH_MAX - 1] = '\0';
        if (strcmp(path, s->image_path) != 0) {
                snprintf(why, wsize, "it was made for another image (%.150s)", path);
                return -EINVAL;
        }
        if (vbd_get_le64(h + H_SIZE) != s->size) {
                snprintf(why, wsize, "it was made for an image of another size (%llu bytes)",
                         (unsigned long long)vbd_get_le64(h + H_SIZE));
                return -EINVAL;
        }
        if (vbd_get_le32(h + H_GRAN) != s->gran) {
                snprintf(why, wsize, "its granularity is %u, not %u", vbd_get_le32(h + H_GRAN),
                         s->gran);
                return -EINVAL;
        }
        if (vbd_get_le64(h + H_BITMAP_BYTES) != s->bitmap_bytes || ncp > CBT_MAX_CHECKPOINTS) {
                snprintf(why, wsize, "it is corrupt (bad geometry)");
                return -EINVAL;
        }
        if (vbd_get_le32(h + H_FLAGS) & CBT_F_LOST) {
                char old[CBT_REASON_MAX];

                memcpy(old, h + H_REASON, CBT_REASON_MAX);
                old[CBT_REASON_MAX - 1] = '\0';
                snprintf(why, wsize, "%.180s", old[0] ? old : "tracking was lost");
                return -EINVAL;
        }
        for (uint32_t i = 0; i < ncp; i++) {
                const uint8_t *c = h + H_CP + i * CP_BYTES;
                struct cbt_checkpoint *cp = &s->cp[i];
                uint32_t slot = vbd_get_le32(c + CP_SLOT);

                memcpy(cp->name, c + CP_NAME, CBT_NAME_MAX);
                if (cp->name[CBT_NAME_MAX - 1] != '\0' || !cbt_name_ok(cp->name) ||
                    cbt_find(s, cp->name) >= 0) { /* among the first i */
                        snprintf(why, wsize, "it is corrupt (checkpoint %u has a bad name)", i);
                        return -EINVAL;
                }
                cp->created = vbd_get_le64(c + CP_CREATED);
                /* every checkpoint but the newest owns a distinct slot */
                if (i + 1 < ncp ? slot >= CBT_MAX_CHECKPOINTS || (used & (1u << slot))
                                : slot != CBT_NO_SLOT) {
                        snprintf(why, wsize, "it is corrupt (checkpoint %s has a bad slot)",
                                 cp->name);
                        return -EINVAL;
                }
                if (slot != CBT_NO_SLOT)
                        used |= 1u << slot;
                cp->slot = slot;
                cp->delta = NULL;
                s->ncp = i + 1;
        }
        s->ncp = ncp;
        s->published = vbd_get_le32(h + H_FLAGS) & CBT_F_STORED;
        memcpy(s->image_id, h + H_ID, sizeof(s->image_id));
        memcpy(s->reason, h + H_REASON, CBT_REASON_MAX);
        s->reason[CBT_REASON_MAX - 1] = '\0';
        return 0;
}

/* A bitmap read from the file has no bit past the last block. */
static bool tail_clear(const struct cbt_state *s, const uint64_t *bm)
{
        uint64_t words = s->bitmap_bytes / 8;

        for (uint64_t b = s->nblocks; b < words * 64; b++) {
                if ((b & 63) == 0) {
                        for (uint64_t w = b >> 6; w < words; w++)
                                if (bm[w])
                                        return false;
                        return true;
                }
                if (cbt_test(bm, b))
                        return false;
        }
        return true;
}

static void free_deltas(struct cbt_state *s)
{
        for (unsigned i = 0; i < CBT_MAX_CHECKPOINTS; i++) {
                free(s->cp[i].delta);
                s->cp[i].delta = NULL;
        }
}

static bool all_zero(const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (p[i])
                        return false;
        return true;
}

/* Load the map from s->fd: 0, -EINVAL with why (not usable), or -errno. */
static int map_load(struct cbt_state *s, char *why, size_t wsize)
{
        uint8_t *h = malloc(CBT_HEADER_BYTES);
        uint64_t seq[2] = {0, 0};
        bool ok[2];
        int r, best;

        if (!h)
                return -ENOMEM;
        r = vbd_pread_all(s->fd, h, CBT_HEADER_BYTES, 0);
        if (r == -ENODATA) {
                snprintf(why, wsize, "it is corrupt (too short)");
                r = -EINVAL;
        }
        if (r < 0)
                goto out;
        ok[0] = header_valid(h, &seq[0]);
        ok[1] = header_valid(h + CBT_PAGE, &seq[1]);
        if (!ok[0] && !ok[1]) {
                snprintf(why, wsize, "it is corrupt (no valid header)");
                r = -EINVAL;
                goto out;
        }
        /* One slot damaged (not merely never written): the other, older or not,
         * cannot be trusted to cover every change (an older header's newest
         * checkpoint may have lost its bits to the active bitmap's clearing). */
        for (int i = 0; i < 2; i++) {
                if (!ok[i] && !all_zero(h + i * CBT_PAGE, CBT_PAGE)) {
                        snprintf(why, wsize, "it is corrupt (header %d is damaged)", i);
                        r = -EINVAL;
                        goto out;
                }
        }
        best = ok[0] && ok[1] ? (seq[1] > seq[0]) : ok[1];
        /* When the newer header is valid but unusable, the older one is no help
         * either: it may miss the newest checkpoints' changes. */
        r = header_decode(s, h + best * CBT_PAGE, why, wsize);
        if (r < 0)
                goto out;
        s->seq = seq[best];
        s->hdr_slot = (unsigned)best;
        r = vbd_pread_all(s->fd, s->active, s->bitmap_bytes, cbt_map_active_offset(s));
        if (r == -ENODATA || (r == 0 && !tail_clear(s, s->active))) {
                snprintf(why, wsize, "it is corrupt (bad active bitmap)");
                r = -EINVAL;
        }
out:
        free(h);
        return r;
}

/* A new empty map in s->fd (truncated): 0 or -errno. */
static int map_create(struct cbt_state *s)
{
        uint64_t len = CBT_HEADER_BYTES + s->bitmap_bytes * (1 + CBT_MAX_CHECKPOINTS);
        int r;

        s->ncp = 0;
        s->seq = 0;
        s->hdr_slot = 1; /* the first header goes to slot 0 */
        memset(s->active, 0, s->bitmap_bytes);
        if (getrandom(s->image_id, sizeof(s->image_id), 0) != (ssize_t)sizeof(s->image_id))
                return errno ? -errno : -EIO;
        if (ftruncate(s->fd, 0) < 0 || ftruncate(s->fd, (off_t)len) < 0)
                return -errno;
        r = cbt_map_write_header(s);
        if (r < 0)
                return r;
        return vbd_fsync_dir_of(s->map_path);
}

int cbt_map_restart(struct cbt_state *s, const char *why)
{
        free_deltas(s);
        s->published = false;
        snprintf(s->reason, sizeof(s->reason), "%s", why);
        return map_create(s);
}

static int lock_map(struct cbt_state *s, struct vbd_err *err)
{
        struct flock fl = {.l_type = s->readonly ? F_RDLCK : F_WRLCK, .l_whence = SEEK_SET};

        if (fcntl(s->fd, F_OFD_SETLK, &fl) == 0)
                return 0;
        if (errno == EAGAIN || errno == EACCES)
                return vbd_err_set(err, -EBUSY, "%s: the change map is in use by another process",
                                   s->map_path);
        if (errno == EINVAL || errno == ENOLCK || errno == EOPNOTSUPP)
                return 0; /* the file system has no OFD locks: go on without */
        return vbd_err_set(err, -errno, "%s: lock: %s", s->map_path, strerror(errno));
}

int cbt_map_open(struct cbt_state *s, struct vbd_err *err)
{
        char why[CBT_REASON_MAX - 64] = "";
        struct stat st;
        int r;

        s->active = calloc(1, s->bitmap_bytes);
        s->page_state = calloc(s->npages ? s->npages : 1, 1);
        s->dirty = calloc(s->npages ? s->npages : 1, sizeof(*s->dirty));
        if (!s->active || !s->page_state || !s->dirty)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        s->fd = open(s->map_path, (s->readonly ? O_RDONLY : O_RDWR | O_CREAT) | O_CLOEXEC, 0600);
        if (s->fd < 0 && s->readonly && errno == ENOENT) {
                snprintf(s->reason, sizeof(s->reason), "no change map");
                return 0; /* nothing to report, nothing to track */
        }
        if (s->fd < 0)
                return vbd_err_set(err, -errno, "%s: %s", s->map_path, strerror(errno));
        r = lock_map(s, err);
        if (r < 0)
                return r;
        if (fstat(s->fd, &st) < 0)
                return vbd_err_set(err, -errno, "%s: %s", s->map_path, strerror(errno));
        if (st.st_size == 0) {
                if (s->readonly) {
                        snprintf(s->reason, sizeof(s->reason), "the change map is empty");
                        return 0;
                }
                snprintf(s->reason, sizeof(s->reason), "the change map is new");
                r = map_create(s);
                if (r < 0)
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                vbd_info("%s: new change map, granularity %u", s->map_path, s->gran);
                return 0;
        }
        r = map_load(s, why, sizeof(why));
        if (r == 0)
                return 0;
        if (r != -EINVAL)
                return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
        /* Refused: keep it for a look (PATH.bad), start afresh, say why. */
        s->ncp = 0;
        free_deltas(s);
        vbd_warn("%s: change map refused: %s; starting a new one (the next backup is full)",
                 s->map_path, why);
        if (s->readonly) {
                snprintf(s->reason, sizeof(s->reason), "the change map was refused: %s", why);
                memset(s->active, 0, s->bitmap_bytes);
                return 0;
        }
        {
                char bad[sizeof(s->map_path) + 8];

                snprintf(bad, sizeof(bad), "%s.bad", s->map_path);
                if (rename(s->map_path, bad) < 0)
                        vbd_warn("%s: keeping a copy as %s: %s", s->map_path, bad, strerror(errno));
                /* The open descriptor (and its lock) follows the renamed file: make
                 * a new one. */
                close(s->fd);
                s->fd = open(s->map_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
                if (s->fd < 0)
                        return vbd_err_set(err, -errno, "%s: %s", s->map_path, strerror(errno));
                r = lock_map(s, err);
                if (r < 0)
                        return r;
        }
        snprintf(s->reason, sizeof(s->reason), "the change map was refused: %s", why);
        r = map_create(s);
        if (r < 0)
                return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
        return 0;
}

void cbt_map_close(struct cbt_state *s)
{
        free_deltas(s);
        if (s->fd >= 0)
                close(s->fd);
        s->fd = -1;
        free(s->active);
        free(s->page_state);
        free(s->dirty);
        s->active = NULL;
        s->page_state = NULL;
        s->dirty = NULL;
}

/* ---- checkpoints ---- */

int cbt_load_delta(struct cbt_state *s, unsigned i)
{
        struct cbt_checkpoint *cp = &s->cp[i];
        int r;

        if (cp->delta)
                return 0;
        if (cp->slot == CBT_NO_SLOT || s->fd < 0)
                return -EINVAL;
        cp->delta = malloc(s->bitmap_bytes);
        if (!cp->delta)
                return -ENOMEM;
        r = vbd_pread_all(s->fd, cp->delta, s->bitmap_bytes, slot_offset(s, cp->slot));
        if (r == 0 && !tail_clear(s, cp->delta))
                r = -EIO;
        if (r < 0) {
                vbd_err("%s: reading checkpoint %s: %s", s->map_path, cp->name,
                        r == -ENODATA ? "short file" : strerror(-r));
                free(cp->delta);
                cp->delta = NULL;
                return r == -ENODATA ? -EIO : r;
        }
        return 0;
}

static uint32_t free_slot(const struct cbt_state *s)
{
        uint32_t used = 0;

        for (unsigned i = 0; i < s->ncp; i++)
                if (s->cp[i].slot != CBT_NO_SLOT)
                        used |= 1u << s->cp[i].slot;
        for (uint32_t k = 0; k < CBT_MAX_CHECKPOINTS; k++)
                if (!(used & (1u << k)))
                        return k;
        return CBT_NO_SLOT;
}

static void pages_clean(struct cbt_state *s)
{
        memset(s->page_state, CBT_PAGE_CLEAN, s->npages);
        s->ndirty = 0;
}

int cbt_checkpoint_create(struct cbt_state *s, const char *name, struct vbd_err *err)
{
        struct cbt_state old;
        uint64_t *fresh;
        uint32_t slot = CBT_NO_SLOT;
        int r;

        if (s->readonly || s->fd < 0)
                return vbd_err_set(err, -EROFS, "the image is read-only: nothing to track");
        if (s->lost)
                return vbd_err_set(err, -EIO, "%s", s->reason);
        if (s->committing || s->wait_head)
                return vbd_err_set(err, -EBUSY, "writes are in flight (pause first)");
        if (!cbt_name_ok(name))
                return vbd_err_set(err, -EINVAL,
                                   "bad checkpoint name \"%s\" (1 to 63 of A-Z a-z 0-9 . _ -)",
                                   name);
        if (cbt_find(s, name) >= 0)
                return vbd_err_set(err, -EEXIST, "checkpoint %s exists", name);
        if (s->ncp == CBT_MAX_CHECKPOINTS)
                return vbd_err_set(err, -ENOSPC, "%u checkpoints already: remove the oldest",
                                   CBT_MAX_CHECKPOINTS);
        fresh = calloc(1, s->bitmap_bytes);
        if (!fresh)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        if (s->ncp > 0) {
                /* 1. The active bitmap becomes the newest checkpoint's delta. */
                slot = free_slot(s);
                r = vbd_pwrite_all(s->fd, s->active, s->bitmap_bytes, slot_offset(s, slot));
                if (r == 0)
                        r = sync_fd(s->fd);
                if (r < 0)
                        goto fail;
        }
        /* 2. The header that says so. */
        old = *s;
        if (s->ncp > 0)
                s->cp[s->ncp - 1].slot = slot;
        memset(&s->cp[s->ncp], 0, sizeof(s->cp[s->ncp]));
        snprintf(s->cp[s->ncp].name, sizeof(s->cp[s->ncp].name), "%s", name);
        s->cp[s->ncp].created = (uint64_t)time(NULL);
        s->cp[s->ncp].slot = CBT_NO_SLOT;
        s->ncp++;
        s->reason[0] = '\0';
        r = cbt_map_write_header(s);
        if (r < 0) {
                memcpy(s->cp, old.cp, sizeof(s->cp));
                s->ncp = old.ncp;
                memcpy(s->reason, old.reason, sizeof(s->reason));
                goto fail;
        }
        /* 3. A new, empty active bitmap.  Until it is on disk the old bits are
         * (a superset, harmless). */
        if (s->ncp > 1)
                s->cp[s->ncp - 2].delta = s->active;
        else
                free(s->active);
        s->active = fresh;
        pages_clean(s);
        r = vbd_pwrite_all(s->fd, s->active, s->bitmap_bytes, cbt_map_active_offset(s));
        if (r == 0)
                r = sync_fd(s->fd);
        if (r < 0)
                vbd_warn("%s: clearing the active bitmap: %s (changes are overstated until the "
                         "next checkpoint)",
                         s->map_path, strerror(-r));
        vbd_info("%s: checkpoint %s", s->map_path, name);
        cbt_stored_publish(s, true);
        return 0;
fail:
        free(fresh);
        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
}

static void or_into(uint64_t *dst, const uint64_t *src, uint64_t bytes)
{
        for (uint64_t w = 0; w < bytes / 8; w++)
                dst[w] |= src[w];
}

int cbt_checkpoint_remove(struct cbt_state *s, const char *name, struct vbd_err *err)
{
        int k = cbt_find(s, name), r;
        unsigned n = s->ncp;

        if (s->readonly || s->fd < 0)
                return vbd_err_set(err, -EROFS, "the image is read-only");
        if (k < 0)
                return vbd_err_set(err, -ENOENT, "no checkpoint %s", name);
        if (s->committing || s->wait_head)
                return vbd_err_set(err, -EBUSY, "writes are in flight (pause first)");
        /* The changes it separated go to its predecessor: OR them in place first
         * (a torn write only adds bits), then the header drops it. */
        if (k > 0) {
                struct cbt_checkpoint *prev = &s->cp[k - 1];
                uint64_t *into, off;
                const uint64_t *from;

                if ((r = cbt_load_delta(s, (unsigned)k - 1)) < 0 ||
                    ((unsigned)k + 1 < n && (r = cbt_load_delta(s, (unsigned)k)) < 0))
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                if ((unsigned)k + 1 == n) { /* the newest: its changes are the active ones */
                        into = s->active;
                        from = prev->delta;
                        off = cbt_map_active_offset(s);
                } else {
                        into = prev->delta;
                        from = s->cp[k].delta;
                        off = slot_offset(s, prev->slot);
                }
                or_into(into, from, s->bitmap_bytes);
                r = vbd_pwrite_all(s->fd, into, s->bitmap_bytes, off);
                if (r == 0)
                        r = sync_fd(s->fd);
                if (r < 0)
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                if (into == s->active)
                        pages_clean(s);
        }
        {
                struct cbt_checkpoint gone = s->cp[k];
                uint64_t *prev_delta = k > 0 ? s->cp[k - 1].delta : NULL;
                uint32_t prev_slot = k > 0 ? s->cp[k - 1].slot : CBT_NO_SLOT;

                if (k > 0 && (unsigned)k + 1 == n) {
                        s->cp[k - 1].slot = CBT_NO_SLOT;
                        s->cp[k - 1].delta = NULL;
                }
                memmove(&s->cp[k], &s->cp[k + 1], (n - (unsigned)k - 1) * sizeof(s->cp[0]));
                s->ncp--;
                r = cbt_map_write_header(s);
                if (r < 0) {
                        memmove(&s->cp[k + 1], &s->cp[k], (n - (unsigned)k - 1) * sizeof(s->cp[0]));
                        s->cp[k] = gone;
                        if (k > 0) {
                                s->cp[k - 1].slot = prev_slot;
                                s->cp[k - 1].delta = prev_delta;
                        }
                        s->ncp = n;
                        return vbd_err_set(err, r, "%s: %s", s->map_path, strerror(-r));
                }
                free(gone.delta);
                if (k > 0 && (unsigned)k + 1 == n)
                        free(prev_delta);
        }
        vbd_info("%s: checkpoint %s removed", s->map_path, name);
        cbt_stored_publish(s, true);
        return 0;
}
