/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzzes the qcow2 driver's metadata code: the input is a whole image file
 * (in a memfd).  The harness parses the header (qcow2_header_parse), opens
 * the metadata read-write (header extensions, snapshot table, L1 and
 * refcount tables, all checked), maps guest clusters through the L2 cache,
 * decompresses compressed clusters, walks block status runs
 * (qcow2_status_run), then allocates clusters and rewrites L2 entries for a
 * few of them, flushes and closes (the refcount and L2 paths, eviction with
 * tiny caches, refcount table growth).  Stored bitmaps: the directory is
 * checked at open; each is read, then a new set is put.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../drivers/qcow2/qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static struct qcow2_state s;
        struct qcow2_meta_opts mo = {.l2_cache = 1, .rb_cache = 1}; /* minimum: 4 tables */
        struct qcow2_header h;
        struct vbd_err err;
        int fd, r;

        (void)qcow2_header_parse(data, size, size, &h, &err);

        fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
        if (fd < 0)
                return 0;
        if (write(fd, data, size) != (ssize_t)size) {
                close(fd);
                return 0;
        }
        memset(&s, 0, sizeof(s));
        r = qcow2_meta_open(&s, fd, false, &mo, &err);
        if (r == 0) {
                uint64_t n = s.nb_gcl < 64 ? s.nb_gcl : 64;

                for (uint64_t gc = 0; gc < n; gc++) {
                        struct qcow2_map m;

                        if (qcow2_lookup(&s, gc, &m) == 0 && m.kind == QCOW2_COMPRESSED)
                                (void)qcow2_decompress(&s, &m);
                }
                /* Block status runs from the start, with a bound on table reads. */
                for (uint64_t gc = 0, i = 0; gc < s.nb_gcl && i < 64; i++) {
                        uint64_t got, want = s.nb_gcl - gc < 4096 ? s.nb_gcl - gc : 4096;
                        enum qcow2_status st = QCOW2_ST_UNALLOC;
                        unsigned loads = 2;

                        if (qcow2_status_run(&s, gc, want, &loads, &st, &got) < 0)
                                got = 1; /* a corrupt entry: go on after it */
                        if (!got || st > QCOW2_ST_DATA || got > want)
                                abort();
                        gc += got;
                }
                /* Stored bitmaps: read each (checked at open), then replace the set. */
                for (uint32_t i = 0; i < s.nbms && i < 8; i++) {
                        struct vbd_stored_bitmap bm;

                        if (qcow2_bitmap_get(&s, s.bms[i].name, &bm, &err) == 0)
                                free(bm.bits);
                }
                if (s.size && s.size <= (1ull << 32)) {
                        static struct vbd_stored_bitmap one = {.name = "f", .granularity = 65536};

                        one.nbits = (s.size + 65535) / 65536;
                        one.bits = calloc((one.nbits + 63) / 64, 8);
                        if (one.bits) {
                                one.bits[0] = 5;
                                one.enabled = true;
                                (void)qcow2_bitmaps_put(&s, &one, 1, &err);
                                free(one.bits);
                        }
                }
                /* Allocating writes' metadata part on a few clusters, then a flush. */
                for (uint64_t gc = 0; gc < n && gc < 8; gc++) {
                        uint64_t old, host, got;
                        bool fresh;

                        if (qcow2_l2_get(&s, gc, &old) < 0)
                                continue;
                        if (qcow2_alloc(&s, 1 + gc % 3, &host, &got, &fresh) < 0)
                                break;
                        if (qcow2_l2_set(&s, gc, host | QCOW2_OFLAG_COPIED) < 0) {
                                (void)qcow2_free_now(&s, host, got << s.cluster_bits);
                                break;
                        }
                        if (got > 1)
                                (void)qcow2_free_now(&s, host + s.cs, (got - 1) << s.cluster_bits);
                        (void)qcow2_release_entry(&s, old);
                }
                (void)qcow2_meta_shutdown(&s);
        }
        qcow2_meta_close(&s); /* closes fd */
        return 0;
}
