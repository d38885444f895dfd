/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2 driver internals, shared by qcow2.c (the driver: requests, flush
 * rounds, backing files), qcow2-meta.c (metadata: header, L1/L2, refcounts,
 * caches, allocation; synchronous pread/pwrite on the loop thread) and
 * qcow2-format.c (pure parsing and validation of on-disk structures),
 * qcow2-bitmap.c (the bitmaps extension: stored bitmaps) and qcow2-create.c
 * (new images).
 *
 * Written from the qcow2 specification (QEMU docs/interop/qcow2.txt).
 * Everything read from an image is hostile input: it is validated before it
 * is used, and no metadata cluster is ever written as data.
 *
 * Crash consistency (see qcow2-meta.c for the mechanics):
 *   - a cluster's refcount is durable (written + fdatasync) before any L2
 *     or L1 entry pointing to it is written;
 *   - an L2 entry is changed in memory only after its data (and COW) write
 *     completed, and written to disk only later (flush round or eviction);
 *   - an L1 entry for a new L2 table is written only after the table is
 *     durable;
 *   - a cluster that loses a reference is released only after the
 *     metadata that no longer points to it is durable (deferred frees).
 * A crash at any point therefore leaves at most leaked clusters.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <zlib.h>

#include "vbd/aio.h"
#include "vbd/driver.h"
#include "vbd/endian.h"
#include "vbd/log.h"

#define QCOW2_MAGIC             0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER_LEN     72
#define QCOW2_V3_HEADER_LEN     104
#define QCOW2_MIN_CLUSTER_BITS  9
#define QCOW2_MAX_CLUSTER_BITS  21
#define QCOW2_MAX_L1_BYTES      (32u << 20)
#define QCOW2_MAX_RT_BYTES      (8u << 20)
#define QCOW2_MAX_BACKING_NAME  1023
#define QCOW2_MAX_SNAPSHOTS     65536
#define QCOW2_MAX_HOST_OFFSET   (1ull << 56)
#define QCOW2_MAX_VIRTUAL_SIZE  (1ull << 61)
#define QCOW2_MAX_BACKING_DEPTH 64

/* Bitmaps extension limits (QEMU's, which refuses images past them). */
#define QCOW2_MAX_BITMAPS          65535
#define QCOW2_MAX_BITMAP_DIR       (1024ull * QCOW2_MAX_BITMAPS) /* directory bytes */
#define QCOW2_MAX_BITMAP_TABLE     0x8000000u                    /* table entries */
#define QCOW2_MAX_BITMAP_BYTES     0x20000000ull /* bitmap data bytes (table * cluster) */
#define QCOW2_BITMAP_MIN_GRAN_BITS 9
#define QCOW2_BITMAP_MAX_GRAN_BITS 31
#define QCOW2_BITMAP_NAME_MAX      1023
#define QCOW2_BME_IN_USE           (1u << 0)
#define QCOW2_BME_AUTO             (1u << 1)
#define QCOW2_BME_EXTRA_COMPAT     (1u << 2)
#define QCOW2_BME_RESERVED         0xfffffff8u
#define QCOW2_BMT_ALL_ONES         1ull
#define QCOW2_BMT_RESERVED         0xff000000000001feull /* bits 1..8, 56..63 */
#define QCOW2_AUTOCLEAR_BITMAPS    (1ull << 0)

#define QCOW2_INCOMPAT_DIRTY       (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT     (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE   (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2       (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN       0x1full
#define QCOW2_COMPAT_LAZY          (1ull << 0)

#define QCOW2_EXT_END         0x00000000u
#define QCOW2_EXT_BACKING_FMT 0xe2792acau
#define QCOW2_EXT_FEATURES    0x6803f857u
#define QCOW2_EXT_BITMAPS     0x23852875u
#define QCOW2_EXT_CRYPTO      0x0537be77u
#define QCOW2_EXT_DATA_FILE   0x44415441u

/* Header field offsets we rewrite. */
#define QCOW2_HDR_RT_OFFSET 48
#define QCOW2_HDR_INCOMPAT  72
#define QCOW2_HDR_AUTOCLEAR 88

#define QCOW2_OFLAG_COPIED     (1ull << 63)
#define QCOW2_OFLAG_COMPRESSED (1ull << 62)
#define QCOW2_OFLAG_ZERO       1ull
#define QCOW2_OFFSET_MASK      0x00fffffffffffe00ull /* bits 9..55 */
#define QCOW2_L1_RESERVED      0x7f000000000001ffull /* bits 0..8, 56..62 */
#define QCOW2_L2_RESERVED      0x3f000000000001feull /* bits 1..8, 56..61 */
#define QCOW2_RT_RESERVED      0x1ffull              /* bits 0..8 */

struct qcow2_header {
        uint32_t version;
        uint32_t cluster_bits;
        uint64_t size;
        uint32_t crypt_method;
        uint32_t l1_size;
        uint64_t l1_offset;
        uint64_t rt_offset;
        uint32_t rt_clusters;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        uint64_t incompat, compat, autoclear;
        uint32_t refcount_order;
        uint32_t header_length;
        uint8_t compression_type;
        uint64_t backing_offset;
        uint32_t backing_size;
        /* From the header extensions. */
        char backing_file[QCOW2_MAX_BACKING_NAME + 1];
        char backing_fmt[32];
        bool has_bitmaps; /* a bitmaps extension (its fields unchecked) */
        uint32_t nb_bitmaps, bitmaps_reserved, bitmaps_ext_len;
        uint64_t bitmap_dir_offset, bitmap_dir_size;
};

/* One bitmap directory entry (qcow2-format.c parses, qcow2-bitmap.c uses). */
struct qcow2_bm {
        char *name;
        uint64_t table_offset;
        uint32_t table_size; /* entries */
        uint32_t flags;      /* QCOW2_BME_* as found */
        uint8_t gran_bits;
        uint32_t extra_size;
        const char *bad; /* this bitmap cannot be read: why (NULL: fine) */
};

/* What the file's bitmaps extension is worth (qcow2-bitmap.c). */
enum qcow2_bm_state {
        QCOW2_BMS_NONE,  /* no bitmaps extension */
        QCOW2_BMS_OK,    /* valid: s->bms */
        QCOW2_BMS_STALE, /* present, autoclear bit 0 clear at open */
        QCOW2_BMS_BAD,   /* corrupt: s->bm_why */
};

/* What a guest cluster maps to. */
enum qcow2_kind {
        QCOW2_UNALLOC,    /* read from the backing file (or zeros) */
        QCOW2_ZERO,       /* reads as zeros; host may hold a preallocation */
        QCOW2_DATA,       /* a standard cluster at host */
        QCOW2_COMPRESSED, /* compressed bytes at [host, host + clen) */
};

struct qcow2_map {
        enum qcow2_kind kind;
        bool copied; /* DATA: refcount is exactly one, may be written in place */
        uint64_t host;
        uint64_t clen; /* COMPRESSED: bytes from host (up to the last sector) */
};

/* A metadata table in a cache (L2 table or refcount block), keyed by host offset. */
struct qcow2_table {
        uint64_t offset; /* 0: slot unused */
        uint64_t *data;  /* cluster_size bytes, on-disk (big-endian) format */
        struct qcow2_table *prev, *next, *hnext;
        uint64_t rc_dep;   /* L2: refcount generation this content needs durable */
        uint32_t l1_index; /* L2: which L1 entry points here */
        bool dirty;
        bool l1_pending; /* L2: new table, its L1 entry not yet on disk */
};

struct qcow2_cache {
        struct qcow2_table *slots;
        unsigned nslots, used;
        struct qcow2_table **hash;
        unsigned hmask;
        struct qcow2_table lru; /* lru.next: most recently used */
        bool is_l2;
};

struct qcow2_range {
        uint64_t start, end; /* bytes, [start, end) */
};

struct qcow2_io;
struct qcow2_child;
struct vbd_image;

struct qcow2_state {
        struct vbd_image *img;
        /* File. */
        char *path;
        int mfd; /* buffered: metadata, COW and unaligned I/O */
        int dfd; /* O_DIRECT data descriptor, or == mfd */
        bool readonly, direct;
        int locking; /* enum vbd_tristate: the locking option, for the backing chain too */
        uint32_t dio_align, dio_mem_align;
        struct vbd_aio *aio;

        /* Geometry. */
        struct qcow2_header h;
        unsigned cluster_bits, l2_bits, rb_bits, rc_width;
        uint64_t cs;     /* cluster size */
        uint64_t rc_max; /* largest refcount */
        uint64_t size;   /* virtual size exposed (multiple of 512) */
        uint64_t nb_gcl; /* guest clusters */
        bool lazy;       /* lazy refcounts in use: dirty bit set while open */
        bool dirty_set;  /* we set the dirty bit */

        /* Tables. */
        uint64_t *l1; /* host byte order */
        uint32_t l1_size;
        uint64_t *rt; /* host byte order */
        uint64_t rt_entries;
        struct qcow2_cache l2c, rbc;

        /* Where metadata lives (never written as data). */
        struct qcow2_range fixed[8 + 16];
        unsigned nfixed;
        struct qcow2_range *snap_l1; /* snapshot L1 tables */
        unsigned nsnap_l1;
        uint64_t *meta; /* sorted host offsets of L2 tables and refcount blocks */
        size_t nmeta, meta_cap;

        /* Space. */
        uint64_t file_size; /* current size of the file */
        uint64_t alloc_end; /* end of the highest allocation or the size at open */
        uint64_t zero_from; /* the file reads as zeros from here */
        uint64_t free_hint; /* lowest cluster index that may be free */
        uint64_t rc_gen, rc_written, rc_durable;
        bool blockdev, extended;

        /* Deferred frees: released once the metadata not pointing there is durable. */
        struct qcow2_range *frees;
        size_t nfrees, frees_cap;

        /* Compressed clusters. */
        z_stream zs;
        bool zs_ready;
        uint8_t *cbuf;      /* compressed input, up to 2 clusters + a sector */
        uint8_t *dbuf;      /* one decompressed cluster */
        uint64_t dbuf_host; /* host offset of the cluster in dbuf (0: none) */
        uint64_t dbuf_clen;

        uint8_t *zero_buf; /* one cluster of zeroes, aligned */

        /* Stored bitmaps (qcow2-bitmap.c): the directory as found at open (or
         * as last put), and every cluster it uses (directory, tables, data),
         * sorted, which qcow2_is_meta() protects. */
        enum qcow2_bm_state bm_state;
        char bm_why[192];
        struct qcow2_bm *bms;
        uint32_t nbms;
        uint64_t *bm_cl;
        size_t nbm_cl;
        struct vbd_ratelimit corrupt_rl;

        /* Data path (qcow2.c). */
        struct vbd_image *backing;
        uint64_t backing_size;
        size_t backing_scratch;
        struct qcow2_child *child_free;
        struct qcow2_cowbuf *cow_free;
        struct qcow2_io *allocs;  /* in-flight allocating writes */
        struct qcow2_io *waiters; /* waiting for an allocation or a flush stage */
        unsigned gen;             /* flush generation of new requests */
        unsigned inflight[2];     /* requests per generation parity */
        bool alloc_blocked;       /* a flush round holds new allocations */
        struct qcow2_io *flush_cur, *flush_next;
        int flush_stage;
        int flush_status;
        size_t flush_frees;
        uint32_t *l1_todo;
        size_t nl1_todo, l1_todo_cap;
        struct vbd_aio_op flush_op;
        bool flush_busy;
        bool draining; /* drain() called: report once no flush round runs */
        bool cor;      /* copy-on-read */
};

/* qcow2-format.c: pure functions on buffers. */
/* Parse and check the header in buf (the first cluster, or the whole file when
 * shorter).  file_size bounds the tables.  0 or -errno with err set. */
int qcow2_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, struct qcow2_header *h,
                       struct vbd_err *err);
/* Decode an L2 entry into m; -EIO (corrupt) with a reason in *why. */
int qcow2_l2_decode(const struct qcow2_state *s, uint64_t e, struct qcow2_map *m, const char **why);
uint64_t qcow2_rc_get_entry(const void *block, unsigned order, uint64_t idx);
void qcow2_rc_set_entry(void *block, unsigned order, uint64_t idx, uint64_t v);

/* The bitmaps directory in buf (len bytes, the header's nb entries) into
 * *ret (calloc()ed, names malloc()ed; qcow2_bm_free), *ret_n entries.
 * Whole-directory faults: -EIO with a reason in why.  Faults of one bitmap
 * (its size against the virtual size vsize, extra data) set its bad. */
int qcow2_bitmap_dir_parse(const uint8_t *buf, size_t len, uint32_t nb, uint64_t cs, uint64_t vsize,
                           uint64_t file_size, struct qcow2_bm **ret, uint32_t *ret_n, char *why,
                           size_t why_len);
void qcow2_bm_free(struct qcow2_bm *b, uint32_t n);
/* A bitmap table entry: 0 or -EIO with a reason. */
int qcow2_bitmap_entry_check(uint64_t e, uint64_t cs, uint64_t file_size, const char **why);
/* Entries of a bitmap table for nbits bits. */
uint64_t qcow2_bitmap_table_size(uint64_t nbits, uint64_t cs);
/* Bytes of a directory entry for a name of name_len bytes. */
size_t qcow2_bitmap_dir_entry_size(size_t name_len, uint32_t extra);
/*
 * Rewrite the header extension area of cluster 0 (old, cs bytes, parsed as
 * h): every extension but the bitmaps one kept in order, bmext (24 bytes of
 * extension data) appended when not NULL, the end marker, then the backing
 * file name (backing_file_offset updated), autoclear set.  The new cluster
 * in out (cs bytes); *ret_len: how many bytes from 0 differ from the file's
 * (to write).  -ENOSPC when it does not fit in the cluster.
 */
int qcow2_header_rebuild(const uint8_t *old, size_t cs, const struct qcow2_header *h,
                         const uint8_t *bmext, uint64_t autoclear, uint8_t *out, size_t *ret_len,
                         struct vbd_err *err);

/* qcow2-bitmap.c: stored bitmaps. */
/* At open, after the tables: load and check the directory (never fails for
 * a corrupt one); read-write: mark every bitmap in use in the file. */
int qcow2_bitmaps_open(struct qcow2_state *s, struct vbd_err *err);
/* The autoclear bits a read-write open keeps. */
uint64_t qcow2_bitmaps_autoclear_keep(const struct qcow2_state *s);
int qcow2_bitmaps_put(struct qcow2_state *s, const struct vbd_stored_bitmap *b, unsigned n,
                      struct vbd_err *err);
int qcow2_bitmap_get(struct qcow2_state *s, const char *name, struct vbd_stored_bitmap *ret,
                     struct vbd_err *err);
void qcow2_bitmaps_close(struct qcow2_state *s);

/* qcow2-meta.c: metadata, synchronous I/O on s->mfd. */
/* Whole reads and writes on s->mfd (past the end of file: -EIO). */
int qcow2_pread(struct qcow2_state *s, void *buf, size_t len, uint64_t off);
int qcow2_pwrite(struct qcow2_state *s, const void *buf, size_t len, uint64_t off);
struct qcow2_meta_opts {
        uint64_t l2_cache, rb_cache; /* bytes, 0 = default */
};
int qcow2_meta_open(struct qcow2_state *s, int fd, bool readonly, const struct qcow2_meta_opts *mo,
                    struct vbd_err *err);
void qcow2_meta_close(struct qcow2_state *s);
/* Map guest cluster gc. */
int qcow2_lookup(struct qcow2_state *s, uint64_t gc, struct qcow2_map *m);
/* Raw L2 entry of gc (0 when its L2 table is unallocated). */
int qcow2_l2_get(struct qcow2_state *s, uint64_t gc, uint64_t *ret);
/* What block status reports for a guest cluster. */
enum qcow2_status {
        QCOW2_ST_UNALLOC,    /* not in this image: the backing file, or zeros */
        QCOW2_ST_ZERO,       /* zero flag, no host cluster */
        QCOW2_ST_ZERO_ALLOC, /* zero flag, a host cluster kept (preallocated) */
        QCOW2_ST_DATA,       /* standard or compressed */
};
/*
 * The status of guest cluster gc in *ret_st, and in *ret_n how many clusters
 * from gc on (at most max) share it.  Walks the L1 table and the L2 tables
 * (through the cache; an uncached table is read synchronously and *loads,
 * the number of such reads still allowed, is decremented; at 0 the run stops
 * before an uncached table, so *ret_n may be 0).  A corrupt L2 entry ends the
 * run before it, or fails with -EIO when it is the first.
 */
int qcow2_status_run(struct qcow2_state *s, uint64_t gc, uint64_t max, unsigned *loads,
                     enum qcow2_status *ret_st, uint64_t *ret_n);
/* Set the L2 entry of gc, allocating or copying its L2 table as needed. */
int qcow2_l2_set(struct qcow2_state *s, uint64_t gc, uint64_t entry);
/* Allocate up to want contiguous clusters (at least one); refcounts set to 1.
 * ret_fresh: the clusters read as zeros (never written). */
int qcow2_alloc(struct qcow2_state *s, uint64_t want, uint64_t *ret_host, uint64_t *ret_n,
                bool *ret_fresh);
/* Drop one reference from each cluster of [off, off + len) now. */
int qcow2_free_now(struct qcow2_state *s, uint64_t off, uint64_t len);
/* Drop them once the metadata not pointing there any more is durable. */
int qcow2_free_later(struct qcow2_state *s, uint64_t off, uint64_t len);
/* Release what an old L2 entry held (free_later). */
int qcow2_release_entry(struct qcow2_state *s, uint64_t old_entry);
void qcow2_apply_frees(struct qcow2_state *s, size_t count);
bool qcow2_is_meta(const struct qcow2_state *s, uint64_t off, uint64_t len);
/* Decompress the cluster of m into s->dbuf. */
int qcow2_decompress(struct qcow2_state *s, const struct qcow2_map *m);
/* Before the first metadata change: set the dirty bit (lazy refcounts). */
int qcow2_mark_dirty(struct qcow2_state *s);
/* Flush pieces (see qcow2.c's flush round). */
int qcow2_write_rbs(struct qcow2_state *s);         /* write dirty refcount blocks */
int qcow2_write_l2s(struct qcow2_state *s);         /* write dirty L2 tables (deps met) */
int qcow2_write_l1_todo(struct qcow2_state *s);     /* L1 entries of new tables written */
bool qcow2_meta_dirty(const struct qcow2_state *s); /* anything to write */
int qcow2_sync(struct qcow2_state *s);              /* fdatasync(2) */
/* Everything to disk, synchronously (close, tests). */
int qcow2_flush_sync(struct qcow2_state *s);
/* Clean close: flush, clear the dirty bit, trim the file. */
int qcow2_meta_shutdown(struct qcow2_state *s);

/* qcow2-create.c: the driver's create() (see there for the layout). */
int qcow2_create(const struct vbd_create *c, struct vbd_err *err);

void qcow2_log_corrupt(struct qcow2_state *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
