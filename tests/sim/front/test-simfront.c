/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * End-to-end tests of vbdd-sim through the simulated blkfront: handshake
 * values, data against a model (the image file itself), flush/barrier,
 * multi-page rings, read-only VBDs, guest reboot, toolstack detach and
 * domain destruction; the ring layout of each ABI and mismatched-ABI
 * requests; indirect segments (64 KiB at QD32, 1 MiB at QD8, against a
 * model) and the fallback when the backend offers fewer; discard.
 *
 *   test-simfront [--protocol x86_32-abi|x86_64-abi] [TEST]
 *
 * Needs VBD_SIM_VBDD=<path of vbdd-sim> (meson sets it).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xenstore.h>

#include "check.h"
#include "simfront.h"
#include "vbd/macro.h"

#define DOMID    3
#define DEVID    51712
#define IMG_SIZE (8u << 20)

static const char *cur_test = "";
static const char *protocol; /* --protocol: NULL (native x86_64) or "x86_32-abi" ... */
static struct simfront_vbd *cur_vbd;

/* After a failed check (check.h; they are fatal here): which test, and the
 * daemon's log. */
static void check_context_vbd(int err)
{
        fprintf(stderr, "FAIL %s\n", cur_test);
        if (cur_vbd) {
                char *log = simfront_vbd_read_log(cur_vbd);

                fprintf(stderr, "--- vbdd log ---\n%s--- end ---\n", log ? log : "(none)");
                free(log);
        }
}

struct t {
        struct simfront_env *env;
        struct simfront_vbd *vbd;
        struct simfront *fe;
        char img[4096];
};

static int alive(void *opaque)
{
        return simfront_vbd_running(opaque) == 1 ? 0 : -ECHILD;
}

static void make_image(const char *path, uint64_t size, unsigned seed)
{
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        char buf[65536];

        CHECK_MSG(fd >= 0, "open %s: %s", path, strerror(errno));
        for (uint64_t off = 0; off < size; off += sizeof(buf)) {
                for (size_t i = 0; i < sizeof(buf); i++)
                        buf[i] = (char)((off + i) * 7 + seed + (off + i) / 4093);
                CHECK_MSG(pwrite(fd, buf, sizeof(buf), (off_t)off) == (ssize_t)sizeof(buf),
                          "pwrite");
        }
        close(fd);
}

static void file_read(const char *path, uint64_t off, void *buf, size_t len)
{
        int fd = open(path, O_RDONLY);

        CHECK_MSG(fd >= 0, "open %s: %s", path, strerror(errno));
        CHECK_MSG(pread(fd, buf, len, (off_t)off) == (ssize_t)len, "pread %s", path);
        close(fd);
}

/* env + domain + image + vbd (+ fe connected if connect). */
static void setup(struct t *t, const char *mode, unsigned ring_order, bool connect,
                  const char *image_override)
{
        struct simfront_vbd_opts vo = {.domid = DOMID, .devid = DEVID, .mode = mode};
        struct simfront_opts fo = {
            .domid = DOMID, .devid = DEVID, .ring_order = ring_order, .protocol = protocol};
        char spec[4200];

        memset(t, 0, sizeof(*t));
        t->env = simfront_env_new(NULL);
        CHECK_MSG(t->env, "simfront_env_new: %s", strerror(errno));
        CHECK_R(simfront_env_domain_create(t->env, DOMID), simfront_env_errmsg(t->env));
        snprintf(t->img, sizeof(t->img), "%s/disk.img", simfront_env_dir(t->env));
        make_image(t->img, IMG_SIZE, 1);
        snprintf(spec, sizeof(spec), "raw:%s", t->img);
        vo.image = image_override ? image_override : spec;
        CHECK_R(simfront_vbd_add(t->env, &vo, &t->vbd), simfront_env_errmsg(t->env));
        cur_vbd = t->vbd;
        t->fe = simfront_new(t->env, &fo);
        CHECK_MSG(t->fe, "simfront_new: %s", strerror(errno));
        simfront_set_check(t->fe, alive, t->vbd);
        if (connect)
                CHECK_R(simfront_connect(t->fe), simfront_errmsg(t->fe));
}

static void expect_exit0(struct t *t, int timeout_ms)
{
        int st = -1;

        CHECK_R(simfront_vbd_wait(t->vbd, timeout_ms, &st), "vbdd did not exit");
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vbdd exit status %#x", st);
}

static void teardown(struct t *t)
{
        simfront_free(t->fe);
        cur_vbd = NULL;
        simfront_env_free(t->env);
        memset(t, 0, sizeof(*t));
}

/* Write through the ring, check the image file and the read-back. */
static void check_rw(struct t *t, uint64_t off, size_t len, unsigned seed)
{
        char *w = malloc(len), *r = malloc(len), *f = malloc(len);

        for (size_t i = 0; i < len; i++)
                w[i] = (char)(i * 31 + seed + (i >> 9));
        CHECK_R(simfront_write(t->fe, off, w, len), simfront_errmsg(t->fe));
        CHECK_R(simfront_read(t->fe, off, r, len), simfront_errmsg(t->fe));
        CHECK_MSG(!memcmp(w, r, len), "read-back differs at off %" PRIu64 " len %zu", off, len);
        file_read(t->img, off, f, len);
        CHECK_MSG(!memcmp(w, f, len), "image file differs at off %" PRIu64 " len %zu", off, len);
        free(w);
        free(r);
        free(f);
}

static void test_basic(void)
{
        struct t t;
        const struct simfront_disk *d;
        char *v, buf[8192], fbuf[8192];
        long long st;

        cur_test = "basic";
        setup(&t, "w", 0, true, NULL);
        d = simfront_disk(t.fe);
        CHECK_MSG(d->sectors == IMG_SIZE / 512, "sectors %" PRIu64, d->sectors);
        CHECK_MSG(d->sector_size == 512, "sector-size %u", d->sector_size);
        CHECK_MSG(!(d->info & VDISK_READONLY), "info %#x", d->info);
        CHECK_MSG(d->flush && d->barrier, "features flush %d barrier %d", d->flush, d->barrier);
        CHECK_MSG(d->max_ring_page_order == 4, "max-ring-page-order %d", d->max_ring_page_order);
        CHECK_MSG(!strcmp(d->mode, "w"), "mode '%s'", d->mode);
        v = simfront_xs_read_backend(t.fe, "physical-sector-size");
        CHECK_MSG(v && atoi(v) >= 512, "physical-sector-size '%s'", v ? v : "(none)");
        free(v);
        CHECK_MSG(simfront_pregranted(t.fe), "1-page ring should fit pre-granted pages");
        v = simfront_xs_read_backend(t.fe, "hotplug-status");
        CHECK_MSG(v && !strcmp(v, "connected"), "hotplug-status '%s'", v ? v : "(none)");
        free(v);
        CHECK_R(simfront_vbd_read_backend(t.vbd, "state", &st), "backend state");
        CHECK_MSG(st == 4, "backend state %lld", st);
        CHECK_MSG(simfront_ring_size(t.fe) == 32, "ring size %u", simfront_ring_size(t.fe));
        CHECK_MSG(simfront_abi(t.fe) == (protocol && !strcmp(protocol, "x86_32-abi")
                                             ? SIMFRONT_ABI_X86_32
                                             : SIMFRONT_ABI_X86_64),
                  "abi %d", simfront_abi(t.fe));
        CHECK_MSG(simfront_raw_slot_size(t.fe) ==
                      (simfront_abi(t.fe) == SIMFRONT_ABI_X86_32 ? 108u : 112u),
                  "slot size %zu", simfront_raw_slot_size(t.fe));

        /* Initial content is what the image file holds. */
        CHECK_R(simfront_read(t.fe, 12345, buf, sizeof(buf)), simfront_errmsg(t.fe));
        file_read(t.img, 12345, fbuf, sizeof(fbuf));
        CHECK_MSG(!memcmp(buf, fbuf, sizeof(buf)), "initial content differs");

        check_rw(&t, 0, 512, 1);
        check_rw(&t, 4096, 4096, 2);
        check_rw(&t, 512 * 3, 11 * 4096, 3);       /* one full request */
        check_rw(&t, 1 << 20, 11 * 4096 + 512, 4); /* two requests */
        check_rw(&t, 100, 1, 5);                   /* RMW inside a sector */
        check_rw(&t, 1000, 5000, 6);               /* RMW both ends */
        check_rw(&t, IMG_SIZE - 700, 700, 7);      /* up to the end */
        check_rw(&t, 2 << 20, 3 << 20, 8);         /* many in flight */
        CHECK_R(simfront_flush(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_barrier(t.fe), simfront_errmsg(t.fe));

        /* Past the end: error, not a crash; the VBD keeps working. */
        CHECK_MSG(simfront_read(t.fe, IMG_SIZE - 512, buf, 1024) == -EIO, "read past end");
        CHECK_MSG(simfront_write(t.fe, IMG_SIZE, buf, 512) == -EIO, "write past end");
        check_rw(&t, 8192, 512, 9);

        /* Guest reboot: close, then Initialising again, same data. */
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_read_backend(t.vbd, "state", &st), "backend state");
        CHECK_MSG(st == 6, "backend state after frontend close %lld", st);
        CHECK_MSG(simfront_vbd_running(t.vbd) == 1, "vbdd exited on frontend close with online=1");
        CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_read(t.fe, 4096, buf, 4096), simfront_errmsg(t.fe));
        file_read(t.img, 4096, fbuf, 4096);
        CHECK_MSG(!memcmp(buf, fbuf, 4096), "content after reconnect");
        check_rw(&t, 77777, 9999, 10);
        /* And a second reboot, with a multi-page ring this time. */
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        simfront_free(t.fe);
        {
                struct simfront_opts fo = {
                    .domid = DOMID, .devid = DEVID, .ring_order = 3, .protocol = protocol};

                t.fe = simfront_new(t.env, &fo);
                CHECK_MSG(t.fe, "simfront_new: %s", strerror(errno));
                simfront_set_check(t.fe, alive, t.vbd);
                CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
                CHECK_MSG(simfront_ring_size(t.fe) == 256, "ring size %u",
                          simfront_ring_size(t.fe));
                /* 256 slots x 11 pages x 2 grants do not fit: per-request grants. */
                CHECK_MSG(!simfront_pregranted(t.fe), "order 3 pre-granted");
                check_rw(&t, 3 << 20, 4 << 20, 11);
        }

        /* Toolstack detach after the frontend closed: exit 0. */
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

/* Many requests in flight at once over a 4-page ring, random offsets and
 * sizes, checked against a model of the disk. */
struct model_io {
        uint8_t *model;
        unsigned completed, errors;
};

static void model_done(struct simfront *fe, struct simfront_io *io)
{
        struct model_io *m = io->opaque;

        m->completed++;
        if (io->status != BLKIF_RSP_OKAY)
                m->errors++;
}

static void test_ring_order2(void)
{
        struct model_io m = {0};
        struct t t;
        uint64_t rng = 88172645463325252ull;
        uint8_t *disk;
        unsigned submitted = 0;

        cur_test = "ring-order-2";
        setup(&t, "w", 2, true, NULL);
        CHECK_MSG(simfront_ring_size(t.fe) == 128, "ring size %u", simfront_ring_size(t.fe));
        disk = malloc(IMG_SIZE);
        file_read(t.img, 0, disk, IMG_SIZE);
        m.model = disk;
        /* Non-overlapping regions per batch, so completion order is moot. */
        for (int round = 0; round < 20; round++) {
                unsigned n = 0;

                while (n < 120) {
                        struct simfront_io *io = simfront_io_get(t.fe);
                        uint64_t region = IMG_SIZE / 128;
                        uint32_t len;

                        CHECK_MSG(io, "no free io with %u in flight", simfront_inflight(t.fe));
                        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                        len = (uint32_t)(1 + rng % 88) * 512;
                        io->op = BLKIF_OP_WRITE;
                        io->offset = n * region + ((rng >> 20) % ((region - len) / 512)) * 512;
                        io->len = len;
                        io->done = model_done;
                        io->opaque = &m;
                        for (uint32_t i = 0; i < len; i++)
                                disk[io->offset + i] = (uint8_t)(rng >> (i % 56)) + (uint8_t)i;
                        simfront_io_copy_in(io, 0, disk + io->offset, len);
                        CHECK_R(simfront_io_queue(t.fe, io), simfront_errmsg(t.fe));
                        n++;
                        submitted++;
                        if (n % 40 == 0)
                                CHECK_R(simfront_push(t.fe), simfront_errmsg(t.fe));
                }
                CHECK_R(simfront_drain(t.fe, 10000), simfront_errmsg(t.fe));
        }
        CHECK_MSG(m.completed == submitted && !m.errors, "completed %u of %u, %u errors",
                  m.completed, submitted, m.errors);
        {
                uint8_t *img = malloc(IMG_SIZE), *rd = malloc(IMG_SIZE);

                file_read(t.img, 0, img, IMG_SIZE);
                CHECK_MSG(!memcmp(img, disk, IMG_SIZE), "image differs from the model");
                CHECK_R(simfront_read(t.fe, 0, rd, IMG_SIZE), simfront_errmsg(t.fe));
                CHECK_MSG(!memcmp(rd, disk, IMG_SIZE), "read-back differs from the model");
                free(img);
                free(rd);
        }
        free(disk);
        /* Detach by removing the backend dir while connected and idle. */
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_REMOVE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static void test_grant_per_request(void)
{
        struct simfront_opts fo = {
            .domid = DOMID, .devid = DEVID, .grant_per_request = true, .protocol = protocol};
        struct simfront_stats st;
        struct t t;

        cur_test = "grant-per-request";
        setup(&t, "w", 0, false, NULL);
        t.fe = (simfront_free(t.fe), simfront_new(t.env, &fo));
        CHECK_MSG(t.fe, "simfront_new: %s", strerror(errno));
        simfront_set_check(t.fe, alive, t.vbd);
        CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
        CHECK_MSG(!simfront_pregranted(t.fe), "pre-granted");
        check_rw(&t, 0, 4096, 1);
        check_rw(&t, 1000, 100000, 2);
        check_rw(&t, 5 << 20, 2 << 20, 3);
        simfront_get_stats(t.fe, &st);
        CHECK_MSG(st.grants >= (2u << 20) / 4096, "%" PRIu64 " grant operations", st.grants);
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

/* The raw API: requests the normal path never makes get the contract's
 * answers, and the VBD keeps working. */
static int16_t raw_status(struct t *t, const blkif_request_t *req)
{
        blkif_response_t rsp;
        union simfront_req u;

        memcpy(&u.rw, req, sizeof(*req));
        CHECK_R(simfront_raw_put_req(t->fe, &u), simfront_errmsg(t->fe));
        simfront_raw_push(t->fe);
        CHECK_R(simfront_raw_notify(t->fe), simfront_errmsg(t->fe));
        CHECK_MSG(simfront_raw_get_response(t->fe, &rsp, 5000) == 1, "no response to id %" PRIu64,
                  req->id);
        CHECK_MSG(rsp.id == req->id, "response id %" PRIu64 " for request %" PRIu64, rsp.id,
                  req->id);
        return rsp.status;
}

static void test_raw(void)
{
        blkif_request_t req;
        uint32_t gref_ro, gref_ended, gref_other, gref_ok;
        void *page;
        struct t t;
        int16_t st;

        cur_test = "raw";
        setup(&t, "w", 0, true, NULL);
        CHECK_R(simfront_raw_grant(t.fe, 0, false, false, &gref_ok, &page), simfront_errmsg(t.fe));
        CHECK_R(simfront_raw_grant(t.fe, 0, true, false, &gref_ro, NULL), simfront_errmsg(t.fe));
        CHECK_R(simfront_raw_grant(t.fe, 0, false, true, &gref_ended, NULL), simfront_errmsg(t.fe));
        CHECK_R(simfront_raw_grant(t.fe, 7, false, false, &gref_other, NULL),
                simfront_errmsg(t.fe));

        memset(&req, 0, sizeof(req));
        req.operation = BLKIF_OP_READ;
        req.nr_segments = 1;
        req.handle = (blkif_vdev_t)DEVID;
        req.id = 1000;
        req.sector_number = 8;
        req.seg[0].gref = gref_ok;
        req.seg[0].last_sect = 7;
        st = raw_status(&t, &req);
        CHECK_MSG(st == BLKIF_RSP_OKAY, "good raw read: %d", st);
        {
                char f[4096];

                file_read(t.img, 4096, f, sizeof(f));
                CHECK_MSG(!memcmp(page, f, sizeof(f)), "raw read data");
        }
        req.id++;
        req.seg[0].gref = gref_ro; /* the backend would have to write a read-only page */
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "read into a read-only grant: %d",
                  st);
        req.id++;
        req.seg[0].gref = gref_ended;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "ended grant: %d", st);
        req.id++;
        req.seg[0].gref = gref_other;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "grant to dom7: %d", st);
        req.id++;
        req.seg[0].gref = gref_ok;
        req.nr_segments = 12;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "12 segments: %d", st);
        req.id++;
        req.nr_segments = 0;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "0 segments: %d", st);
        req.id++;
        req.nr_segments = 1;
        req.seg[0].first_sect = 5;
        req.seg[0].last_sect = 4;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "first_sect > last_sect: %d", st);
        req.id++;
        req.seg[0].first_sect = 0;
        req.seg[0].last_sect = 8;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "last_sect 8: %d", st);
        req.id++;
        req.seg[0].last_sect = 7;
        req.sector_number = IMG_SIZE / 512 - 4;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "past the end: %d", st);
        req.id++;
        req.sector_number = UINT64_MAX - 2;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "sector overflow: %d", st);
        req.id++;
        req.operation = 99;
        req.sector_number = 0;
        CHECK_MSG((st = raw_status(&t, &req)) == BLKIF_RSP_EOPNOTSUPP, "unknown op: %d", st);
        /* Still serving. */
        check_rw(&t, 0, 8192, 1);
        CHECK_MSG(simfront_backend_state(t.fe) == SIMFRONT_XB_CONNECTED, "backend state %d",
                  simfront_backend_state(t.fe));
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static void test_readonly(void)
{
        struct t t;
        char buf[4096], fbuf[4096], zero[4096] = {0};
        struct simfront_io *io;

        cur_test = "mode-r";
        setup(&t, "r", 0, true, NULL);
        CHECK_MSG(simfront_disk(t.fe)->info & VDISK_READONLY, "info %#x",
                  simfront_disk(t.fe)->info);
        CHECK_MSG(!strcmp(simfront_disk(t.fe)->mode, "r"), "mode '%s'", simfront_disk(t.fe)->mode);
        CHECK_R(simfront_read(t.fe, 0, buf, sizeof(buf)), simfront_errmsg(t.fe));
        file_read(t.img, 0, fbuf, sizeof(fbuf));
        CHECK_MSG(!memcmp(buf, fbuf, sizeof(buf)), "read");
        CHECK_MSG(simfront_write(t.fe, 0, zero, sizeof(zero)) == -EIO, "write to mode r accepted");
        /* The raw status: BLKIF_RSP_ERROR, echoing id and op. */
        io = simfront_io_get(t.fe);
        io->op = BLKIF_OP_WRITE;
        io->offset = 4096;
        io->len = 4096;
        simfront_io_copy_in(io, 0, zero, 4096);
        CHECK_R(simfront_io_queue(t.fe, io), simfront_errmsg(t.fe));
        CHECK_R(simfront_push(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_drain(t.fe, 5000), simfront_errmsg(t.fe));
        CHECK_MSG(io->status == BLKIF_RSP_ERROR, "status %d", io->status);
        file_read(t.img, 0, fbuf, sizeof(fbuf));
        CHECK_MSG(!memcmp(buf, fbuf, sizeof(buf)), "image changed by a write to mode r");
        CHECK_R(simfront_read(t.fe, 0, buf, sizeof(buf)), simfront_errmsg(t.fe));
        /* Detach with online=0: the backend closes, the frontend follows. */
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        CHECK_R(simfront_wait_backend_state(t.fe, SIMFRONT_XB_CLOSING, 5000) == 0 ||
                        simfront_backend_state(t.fe) == SIMFRONT_XB_CLOSED
                    ? 0
                    : -ETIMEDOUT,
                "backend did not start closing");
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static void test_detach_idle(void)
{
        struct t t;

        /* Never connected: online=0 with the frontend in Initialising. */
        cur_test = "detach-idle-unconnected";
        setup(&t, "w", 0, false, NULL);
        CHECK_R(simfront_vbd_wait_state(t.vbd, SIMFRONT_XB_INITWAIT, 10000),
                simfront_env_errmsg(t.env));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_REMOVE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);

        /* Connected and idle; the frontend closes once the backend asks. */
        cur_test = "detach-idle-connected";
        setup(&t, "w", 0, true, NULL);
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        {
                int r = simfront_wait_backend_state(t.fe, SIMFRONT_XB_CLOSING, 5000);

                CHECK_MSG(r == 0 || simfront_backend_state(t.fe) == SIMFRONT_XB_CLOSED,
                          "backend state %d after online=0", simfront_backend_state(t.fe));
        }
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static void test_domain_destroy(void)
{
        struct t t;
        char buf[4096];

        cur_test = "domain-destroy";
        setup(&t, "w", 1, true, NULL);
        CHECK_R(simfront_read(t.fe, 0, buf, sizeof(buf)), simfront_errmsg(t.fe));
        CHECK_R(simfront_env_domain_destroy(t.env, DOMID), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        {
                /* The toolstack (libxl) runs its remove script on Closed. */
                char *st = simfront_xs_read_backend(t.fe, "state");

                CHECK_MSG(st && strcmp(st, "6") == 0, "backend state '%s' after the domain died",
                          st ? st : "(none)");
                free(st);
        }
        teardown(&t);

        cur_test = "domain-destroy-unconnected";
        setup(&t, "w", 0, false, NULL);
        CHECK_R(simfront_vbd_wait_state(t.vbd, SIMFRONT_XB_INITWAIT, 10000),
                simfront_env_errmsg(t.env));
        CHECK_R(simfront_env_domain_destroy(t.env, DOMID), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static void test_startup_error(void)
{
        struct t t;
        int st = 0;
        char *log;

        cur_test = "startup-error";
        setup(&t, "w", 0, false, "raw:/nonexistent/vbd-sim-test.img");
        CHECK_R(simfront_vbd_wait(t.vbd, 10000, &st), "vbdd did not exit");
        CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %#x, want exit 1", st);
        log = simfront_vbd_read_log(t.vbd);
        CHECK_MSG(log && strstr(log, "/nonexistent/vbd-sim-test.img"),
                  "log does not name the image: '%s'", log ? log : "");
        free(log);
        teardown(&t);
}

/* Recreate t->fe with fo (t->vbd stays) and connect. */
static void reconnect(struct t *t, struct simfront_opts *fo)
{
        if (t->fe) {
                if (simfront_connected(t->fe))
                        CHECK_R(simfront_disconnect(t->fe), simfront_errmsg(t->fe));
                simfront_free(t->fe);
        }
        fo->domid = DOMID;
        fo->devid = DEVID;
        fo->protocol = protocol;
        t->fe = simfront_new(t->env, fo);
        CHECK_MSG(t->fe, "simfront_new: %s", strerror(errno));
        simfront_set_check(t->fe, alive, t->vbd);
        CHECK_R(simfront_connect(t->fe), simfront_errmsg(t->fe));
}

/* Rounds of non-overlapping random writes of bs bytes (some shorter, to
 * make partial last segments), qd in flight, against a model; then the
 * whole disk is read back through the ring and compared with the model and
 * the image file. */
static void model_rounds(struct t *t, uint8_t *disk, uint32_t bs, unsigned qd, int rounds,
                         uint64_t seed)
{
        struct model_io m = {0};
        uint64_t rng = seed | 1, region = IMG_SIZE / qd;
        unsigned submitted = 0;

        CHECK_MSG(region >= bs, "region %" PRIu64 " < bs %u", region, bs);
        for (int round = 0; round < rounds; round++) {
                for (unsigned n = 0; n < qd; n++) {
                        struct simfront_io *io = simfront_io_get(t->fe);
                        uint32_t len = bs;

                        CHECK_MSG(io, "no free io with %u in flight", simfront_inflight(t->fe));
                        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                        if (rng % 4 == 0)
                                len = bs - (uint32_t)(1 + (rng >> 8) % 7) * 512;
                        io->op = rng % 3 == 1 ? BLKIF_OP_READ : BLKIF_OP_WRITE;
                        io->offset = n * region + ((rng >> 20) % ((region - len) / 512 + 1)) * 512;
                        io->len = len;
                        io->done = model_done;
                        io->opaque = &m;
                        if (io->op == BLKIF_OP_WRITE) {
                                for (uint32_t i = 0; i < len; i++)
                                        disk[io->offset + i] =
                                            (uint8_t)(rng >> (i % 53)) + (uint8_t)(i >> 9);
                                simfront_io_copy_in(io, 0, disk + io->offset, len);
                        } else {
                                /* reads land in the io; checked on the final pass */
                                simfront_io_copy_in(io, 0, disk, 512);
                        }
                        CHECK_R(simfront_io_queue(t->fe, io), simfront_errmsg(t->fe));
                        submitted++;
                }
                CHECK_R(simfront_push(t->fe), simfront_errmsg(t->fe));
                CHECK_R(simfront_drain(t->fe, 20000), simfront_errmsg(t->fe));
        }
        CHECK_MSG(m.completed == submitted && !m.errors, "completed %u of %u, %u errors",
                  m.completed, submitted, m.errors);
        {
                uint8_t *img = malloc(IMG_SIZE), *rd = malloc(IMG_SIZE);

                file_read(t->img, 0, img, IMG_SIZE);
                CHECK_MSG(!memcmp(img, disk, IMG_SIZE), "image differs from the model (bs %u)", bs);
                memset(rd, 0xa5, IMG_SIZE);
                CHECK_R(simfront_read(t->fe, 0, rd, IMG_SIZE), simfront_errmsg(t->fe));
                CHECK_MSG(!memcmp(rd, disk, IMG_SIZE), "read-back differs from the model (bs %u)",
                          bs);
                free(img);
                free(rd);
        }
}

static bool backend_offers_indirect(struct t *t, unsigned want)
{
        unsigned offer = simfront_disk(t->fe)->max_indirect_segments;

        if (offer >= want)
                return true;
        printf("SKIP %s: the backend offers feature-max-indirect-segments %u, need %u\n", cur_test,
               offer, want);
        return false;
}

static void test_indirect(void)
{
        struct simfront_opts fo = {0};
        struct simfront_stats st;
        struct t t;
        uint8_t *disk;

        cur_test = "indirect";
        setup(&t, "w", 0, true, NULL);
        if (!backend_offers_indirect(&t, 256)) {
                teardown(&t);
                return;
        }
        CHECK_MSG(!simfront_indirect(t.fe) && simfront_max_segments(t.fe) == 11,
                  "default: indirect %d, %u segments", simfront_indirect(t.fe),
                  simfront_max_segments(t.fe));
        disk = malloc(IMG_SIZE);
        file_read(t.img, 0, disk, IMG_SIZE);

        /* 64 KiB (16 segments) at QD32 on a one-page ring: pre-granted. */
        fo.max_segments = 16;
        reconnect(&t, &fo);
        CHECK_MSG(simfront_indirect(t.fe) && simfront_max_segments(t.fe) == 16,
                  "16: indirect %d, %u", simfront_indirect(t.fe), simfront_max_segments(t.fe));
        CHECK_MSG(simfront_queue_depth(t.fe) == 32, "queue depth %u", simfront_queue_depth(t.fe));
        CHECK_MSG(simfront_pregranted(t.fe), "16 segments x 32 should be pre-granted");
        CHECK_MSG(!*simfront_notice(t.fe), "notice '%s'", simfront_notice(t.fe));
        model_rounds(&t, disk, 65536, 32, 8, 11);
        simfront_get_stats(t.fe, &st);
        CHECK_MSG(st.indirect >= 8 * 32, "%" PRIu64 " indirect requests", st.indirect);
        CHECK_MSG(st.indirect_rsp_op_indirect == 0,
                  "%" PRIu64 " responses to indirect requests carried BLKIF_OP_INDIRECT instead of "
                  "the inner operation",
                  st.indirect_rsp_op_indirect);
        check_rw(&t, 1000, 300000, 21); /* RMW ends, 64 KiB requests */

        /* 1 MiB (256 segments) at QD8: per-request grants. */
        fo.max_segments = 256;
        reconnect(&t, &fo);
        CHECK_MSG(simfront_max_segments(t.fe) == 256, "%u segments", simfront_max_segments(t.fe));
        CHECK_MSG(simfront_queue_depth(t.fe) >= 8, "queue depth %u", simfront_queue_depth(t.fe));
        CHECK_MSG(!simfront_pregranted(t.fe), "256 x 32 pages cannot be pre-granted");
        model_rounds(&t, disk, 1u << 20, 8, 6, 22);
        check_rw(&t, 777, (3u << 20) + 5000, 23);
        simfront_get_stats(t.fe, &st);
        CHECK_MSG(st.indirect >= 6 * 8 && st.grants >= 6 * 8 * 200,
                  "%" PRIu64 " indirect, %" PRIu64 " grants", st.indirect, st.grants);
        file_read(t.img, 0, disk, IMG_SIZE);

        /* 1 MiB on a 16-page ring: fewer ios than slots, still QD8+. */
        fo.ring_order = 4;
        reconnect(&t, &fo);
        CHECK_MSG(simfront_ring_size(t.fe) == 512 && simfront_queue_depth(t.fe) >= 8 &&
                      simfront_queue_depth(t.fe) < 512,
                  "ring %u, queue depth %u", simfront_ring_size(t.fe), simfront_queue_depth(t.fe));
        CHECK_MSG(strstr(simfront_notice(t.fe), "max_data_pages"), "notice '%s'",
                  simfront_notice(t.fe));
        model_rounds(&t, disk, 1u << 20, 8, 2, 24);

        /* Every request indirect, even 4 KiB ones. */
        fo.ring_order = 0;
        fo.max_segments = 32;
        fo.indirect_always = true;
        reconnect(&t, &fo);
        model_rounds(&t, disk, 4096, 32, 4, 25);
        simfront_get_stats(t.fe, &st);
        CHECK_MSG(st.indirect >= st.requests - 4, "%" PRIu64 " of %" PRIu64 " requests indirect",
                  st.indirect, st.requests);
        free(disk);
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

/* The frontend falls back when the backend offers fewer segments: the
 * backend's node is rewritten by the toolstack before the frontend reads it. */
static void test_indirect_fallback(void)
{
        struct simfront_opts fo = {.domid = DOMID, .devid = DEVID, .max_segments = 64};
        struct t t;
        char path[512];

        cur_test = "indirect-fallback";
        setup(&t, "w", 0, false, NULL);
        CHECK_R(simfront_vbd_wait_state(t.vbd, SIMFRONT_XB_INITWAIT, 10000),
                simfront_env_errmsg(t.env));
        snprintf(path, sizeof(path), "%s/feature-max-indirect-segments",
                 simfront_vbd_backend_path(t.vbd));
        CHECK_MSG(xs_rm(simfront_env_xs(t.env), XBT_NULL, path) || errno == ENOENT, "rm %s: %s",
                  path, strerror(errno));
        simfront_free(t.fe);
        t.fe = NULL;
        reconnect(&t, &fo);
        CHECK_MSG(simfront_max_segments(t.fe) == 11 && !simfront_indirect(t.fe),
                  "no feature: %u segments, indirect %d", simfront_max_segments(t.fe),
                  simfront_indirect(t.fe));
        CHECK_MSG(strstr(simfront_notice(t.fe), "clamped to 11"), "notice '%s'",
                  simfront_notice(t.fe));
        check_rw(&t, 4096, 1 << 20, 31);
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));

        /* The backend offers 32: 64 is clamped to 32, indirect used. */
        CHECK_MSG(xs_write(simfront_env_xs(t.env), XBT_NULL, path, "32", 2), "write %s: %s", path,
                  strerror(errno));
        reconnect(&t, &fo);
        CHECK_MSG(simfront_max_segments(t.fe) == 32 && simfront_indirect(t.fe),
                  "offer 32: %u segments, indirect %d", simfront_max_segments(t.fe),
                  simfront_indirect(t.fe));
        CHECK_MSG(strstr(simfront_notice(t.fe), "clamped to 32"), "notice '%s'",
                  simfront_notice(t.fe));
        check_rw(&t, 4096, 1 << 20, 32);
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);
}

static uint64_t file_blocks(const char *path)
{
        struct stat st;

        CHECK_MSG(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
        return (uint64_t)st.st_blocks;
}

static void test_discard(void)
{
        struct t t;
        struct simfront_io *io;
        const struct simfront_disk *d;
        char *buf = malloc(2u << 20), *zero = calloc(1, 2u << 20);
        uint64_t before, after;

        cur_test = "discard";
        setup(&t, "w", 0, true, NULL);
        d = simfront_disk(t.fe);
        if (!d->discard) {
                printf("SKIP %s: the backend offers no feature-discard\n", cur_test);
                CHECK_MSG(simfront_discard(t.fe, 0, 4096) == -EOPNOTSUPP,
                          "discard without feature");
                teardown(&t);
                free(buf);
                free(zero);
                return;
        }
        CHECK_MSG(d->discard_granularity >= 512 && !(d->discard_granularity & 511),
                  "discard-granularity %u", d->discard_granularity);
        CHECK_MSG(d->discard_alignment == 0, "discard-alignment %u", d->discard_alignment);
        CHECK_MSG(!d->discard_secure, "discard-secure");
        before = file_blocks(t.img);
        CHECK_R(simfront_discard(t.fe, 1u << 20, 2u << 20), simfront_errmsg(t.fe));
        after = file_blocks(t.img);
        CHECK_MSG(after + (1u << 20) / 512 <= before,
                  "st_blocks %" PRIu64 " -> %" PRIu64 " after discarding 2 MiB", before, after);
        CHECK_R(simfront_read(t.fe, 1u << 20, buf, 2u << 20), simfront_errmsg(t.fe));
        CHECK_MSG(!memcmp(buf, zero, 2u << 20), "discarded range does not read back as zeros");
        file_read(t.img, 1u << 20, buf, 2u << 20);
        CHECK_MSG(!memcmp(buf, zero, 2u << 20), "discarded range in the image is not zeros");
        /* The neighbours are untouched. */
        {
                char a[4096], b[4096];

                CHECK_R(simfront_read(t.fe, (1u << 20) - 4096, a, 4096), simfront_errmsg(t.fe));
                file_read(t.img, (1u << 20) - 4096, b, 4096);
                CHECK_MSG(!memcmp(a, b, 4096) && memcmp(a, zero, 4096), "before the discard");
                CHECK_R(simfront_read(t.fe, 3u << 20, a, 4096), simfront_errmsg(t.fe));
                file_read(t.img, 3u << 20, b, 4096);
                CHECK_MSG(!memcmp(a, b, 4096) && memcmp(a, zero, 4096), "after the discard");
        }
        /* Sector-sized discard inside a block, then written again. */
        CHECK_R(simfront_discard(t.fe, 5u << 20, 512), simfront_errmsg(t.fe));
        CHECK_R(simfront_read(t.fe, 5u << 20, buf, 512), simfront_errmsg(t.fe));
        CHECK_MSG(!memcmp(buf, zero, 512), "discarded sector");
        check_rw(&t, 1u << 20, 8192, 41);
        /* Errors. */
        CHECK_MSG(simfront_discard(t.fe, 100, 512) == -EINVAL, "unaligned discard");
        CHECK_MSG(simfront_discard(t.fe, IMG_SIZE - 512, 1024) == -EIO, "discard past the end");
        io = simfront_io_get(t.fe);
        io->op = BLKIF_OP_DISCARD;
        io->flags = SIMFRONT_IO_DISCARD_SECURE;
        io->offset = 0;
        io->len = 4096;
        CHECK_R(simfront_io_queue(t.fe, io), simfront_errmsg(t.fe));
        CHECK_R(simfront_push(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_drain(t.fe, 5000), simfront_errmsg(t.fe));
        CHECK_MSG(io->status == BLKIF_RSP_EOPNOTSUPP, "secure discard with discard-secure=0: %d",
                  io->status);
        file_read(t.img, 0, buf, 4096);
        CHECK_MSG(memcmp(buf, zero, 4096), "a refused secure discard zeroed the data");
        /* Whole disk in one go. */
        CHECK_R(simfront_discard(t.fe, 0, IMG_SIZE), simfront_errmsg(t.fe));
        CHECK_MSG(file_blocks(t.img) < 1024, "st_blocks %" PRIu64 " after discarding all",
                  file_blocks(t.img));
        CHECK_R(simfront_read(t.fe, 0, buf, 2u << 20), simfront_errmsg(t.fe));
        CHECK_MSG(!memcmp(buf, zero, 2u << 20), "whole-disk discard");
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_detach(t.vbd, SIMFRONT_DETACH_OFFLINE), simfront_env_errmsg(t.env));
        expect_exit0(&t, 10000);
        teardown(&t);

        /* Read-only: no feature-discard, nothing sent. */
        cur_test = "discard-mode-r";
        setup(&t, "r", 0, true, NULL);
        CHECK_MSG(!simfront_disk(t.fe)->discard, "feature-discard on a read-only VBD");
        CHECK_MSG(simfront_discard(t.fe, 0, 4096) == -EOPNOTSUPP, "discard on mode r");
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        teardown(&t);
        free(buf);
        free(zero);
}

/* The wire layout is the negotiated ABI's, and a request in the other
 * ABI's layout is misread the way the layouts predict: the backend sees
 * the id and sector shifted by 4 bytes, answers an error for a sector far
 * past the end, and keeps serving. */
static void test_abi(void)
{
        union simfront_req u;
        blkif_response_t rsp;
        uint32_t gref;
        uint8_t *slot;
        bool i386 = protocol && !strcmp(protocol, "x86_32-abi");
        uint64_t want_id;
        struct t t;

        cur_test = "abi";
        setup(&t, "w", 0, true, NULL);
        CHECK_R(simfront_raw_grant(t.fe, 0, false, false, &gref, NULL), simfront_errmsg(t.fe));
        memset(&u, 0, sizeof(u));
        u.rw.operation = BLKIF_OP_READ;
        u.rw.nr_segments = 1;
        u.rw.handle = (blkif_vdev_t)DEVID;
        u.rw.id = 0x1122334455667788ull;
        u.rw.sector_number = 8;
        u.rw.seg[0].gref = gref;
        u.rw.seg[0].last_sect = 7;
        CHECK_R(simfront_raw_put_req(t.fe, &u), simfront_errmsg(t.fe));
        slot = simfront_raw_slot(t.fe, simfront_raw_ring(t.fe)->req_prod_pvt - 1);
        {
                uint64_t id, sector;
                uint32_t g;

                memcpy(&id, slot + (i386 ? 4 : 8), 8);
                memcpy(&sector, slot + (i386 ? 12 : 16), 8);
                memcpy(&g, slot + (i386 ? 20 : 24), 4);
                CHECK_MSG(id == u.rw.id && sector == 8 && g == gref,
                          "layout: id %#" PRIx64 " sector %" PRIu64 " gref %u", id, sector, g);
        }
        simfront_raw_push(t.fe);
        CHECK_R(simfront_raw_notify(t.fe), simfront_errmsg(t.fe));
        CHECK_MSG(simfront_raw_get_response(t.fe, &rsp, 5000) == 1, "no response");
        CHECK_MSG(rsp.id == u.rw.id && rsp.status == BLKIF_RSP_OKAY &&
                      rsp.operation == BLKIF_OP_READ,
                  "response id %#" PRIx64 " status %d op %u", rsp.id, rsp.status, rsp.operation);

        /* The other ABI's layout. */
        u.rw.id = 1000;
        CHECK_R(simfront_raw_put_req_as(t.fe, &u, i386 ? SIMFRONT_ABI_X86_64 : SIMFRONT_ABI_X86_32),
                simfront_errmsg(t.fe));
        simfront_raw_push(t.fe);
        CHECK_R(simfront_raw_notify(t.fe), simfront_errmsg(t.fe));
        CHECK_MSG(simfront_raw_get_response(t.fe, &rsp, 5000) == 1,
                  "no response to a mismatched request");
        /* i386 ring, x86_64 bytes: id = pad + low half of id -> id << 32.
         * x86_64 ring, i386 bytes: id = high half of id + low half of sector. */
        want_id = i386 ? (uint64_t)1000 << 32 : (uint64_t)8 << 32;
        CHECK_MSG(rsp.id == want_id && rsp.status == BLKIF_RSP_ERROR,
                  "mismatched: response id %#" PRIx64 " (want %#" PRIx64 ") status %d", rsp.id,
                  want_id, rsp.status);
        /* Raw discard and indirect through the encoders, if offered. */
        if (simfront_disk(t.fe)->discard) {
                CHECK_R(simfront_raw_put_discard(t.fe, 77, 16, 8, 0), simfront_errmsg(t.fe));
                simfront_raw_push(t.fe);
                CHECK_R(simfront_raw_notify(t.fe), simfront_errmsg(t.fe));
                CHECK_MSG(simfront_raw_get_response(t.fe, &rsp, 5000) == 1, "no discard response");
                CHECK_MSG(rsp.id == 77 && rsp.status == BLKIF_RSP_OKAY &&
                              rsp.operation == BLKIF_OP_DISCARD,
                          "raw discard: id %" PRIu64 " status %d op %u", rsp.id, rsp.status,
                          rsp.operation);
        }
        if (simfront_disk(t.fe)->max_indirect_segments >= 20) {
                struct simfront_raw_indirect ri;
                char f[4096];

                CHECK_R(simfront_raw_indirect(t.fe, BLKIF_OP_READ, 20, 1, 20, &ri),
                        simfront_errmsg(t.fe));
                ri.req.indirect.id = 4242;
                ri.req.indirect.sector_number = 64;
                CHECK_R(simfront_raw_put_req(t.fe, &ri.req), simfront_errmsg(t.fe));
                simfront_raw_push(t.fe);
                CHECK_R(simfront_raw_notify(t.fe), simfront_errmsg(t.fe));
                CHECK_MSG(simfront_raw_get_response(t.fe, &rsp, 5000) == 1, "no indirect response");
                CHECK_MSG(rsp.id == 4242 && rsp.status == BLKIF_RSP_OKAY, "raw indirect: status %d",
                          rsp.status);
                file_read(t.img, 64 * 512 + 19 * 4096, f, sizeof(f));
                CHECK_MSG(!memcmp(ri.data[19], f, sizeof(f)), "raw indirect read data");
                /* Refused: 257 segments (more than offered), and 0. */
                for (unsigned k = 0; k < 2; k++) {
                        CHECK_R(simfront_raw_indirect(t.fe, BLKIF_OP_READ, k ? 0 : 257, 1, 1, &ri),
                                simfront_errmsg(t.fe));
                        ri.req.indirect.id = 4243 + k;
                        CHECK_R(simfront_raw_put_req(t.fe, &ri.req), simfront_errmsg(t.fe));
                        simfront_raw_push(t.fe);
                        CHECK_R(simfront_raw_notify(t.fe), simfront_errmsg(t.fe));
                        CHECK_MSG(simfront_raw_get_response(t.fe, &rsp, 5000) == 1,
                                  "no response to a bad indirect request");
                        CHECK_MSG(rsp.id == 4243 + k && rsp.status == BLKIF_RSP_ERROR &&
                                      (rsp.operation == BLKIF_OP_READ ||
                                       rsp.operation == BLKIF_OP_INDIRECT),
                                  "bad indirect: id %" PRIu64 " status %d op %u", rsp.id,
                                  rsp.status, rsp.operation);
                        printf("# indirect with %u segments refused, response operation %u\n",
                               k ? 0 : 257, rsp.operation);
                }
        }
        check_rw(&t, 0, 100000, 51);
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        teardown(&t);
}

int main(int argc, char **argv)
{
        const char *only = NULL;
        static const struct {
                const char *name;
                void (*fn)(void);
        } tests[] = {
            {"basic", test_basic},
            {"ring-order-2", test_ring_order2},
            {"grant-per-request", test_grant_per_request},
            {"mode-r", test_readonly},
            {"raw", test_raw},
            {"detach-idle", test_detach_idle},
            {"domain-destroy", test_domain_destroy},
            {"startup-error", test_startup_error},
            {"abi", test_abi},
            {"indirect", test_indirect},
            {"indirect-fallback", test_indirect_fallback},
            {"discard", test_discard},
        };

        check_fatal = true;
        check_context = check_context_vbd;
        for (int i = 1; i < argc; i++) {
                if (!strcmp(argv[i], "--protocol") && i + 1 < argc)
                        protocol = argv[++i];
                else if (argv[i][0] != '-' && !only)
                        only = argv[i];
                else {
                        fprintf(stderr, "usage: %s [--protocol P] [TEST]\n", argv[0]);
                        return 2;
                }
        }
        if (protocol)
                printf("# protocol %s\n", protocol);

        if (!getenv("VBD_SIM_VBDD") && !only) {
                char *p = simfront_find_vbdd(NULL);

                if (!p) {
                        fprintf(stderr, "SKIP: set VBD_SIM_VBDD to the vbdd-sim binary\n");
                        return 77;
                }
                free(p);
        }
        signal(SIGPIPE, SIG_IGN);
        for (size_t i = 0; i < VBD_ARRAY_SIZE(tests); i++) {
                if (only && strcmp(only, tests[i].name))
                        continue;
                printf("# %s\n", tests[i].name);
                fflush(stdout);
                tests[i].fn();
                printf("ok %s\n", tests[i].name);
        }
        return 0;
}
