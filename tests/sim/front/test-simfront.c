/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * End-to-end tests of vbdd-sim through the simulated blkfront: handshake
 * values, data against a model (the image file itself), flush/barrier,
 * multi-page rings, read-only VBDs, guest reboot, toolstack detach and
 * domain destruction.
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
#include <sys/wait.h>
#include <unistd.h>

#include "simfront.h"

#define DOMID    3
#define DEVID    51712
#define IMG_SIZE (8u << 20)

static const char *cur_test = "";
static struct simfront_vbd *cur_vbd;

static void fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "FAIL %s (%s:%d): %s%s%s", cur_test, file, line, cond ? "check '" : "",
                cond ? cond : "", cond ? "' failed: " : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        if (cur_vbd) {
                char *log = simfront_vbd_read_log(cur_vbd);

                fprintf(stderr, "--- vbdd log ---\n%s--- end ---\n", log ? log : "(none)");
                free(log);
        }
        exit(1);
}

#define CHECK(cond, ...)                                                                           \
        do {                                                                                       \
                if (!(cond))                                                                       \
                        fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                              \
        } while (0)
#define CHECK_R(expr, obj_msg)                                                                     \
        do {                                                                                       \
                int r_ = (expr);                                                                   \
                if (r_ < 0)                                                                        \
                        fail(__FILE__, __LINE__, NULL, "%s = %d (%s): %s", #expr, r_,              \
                             strerror(-r_), obj_msg);                                              \
        } while (0)

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

        CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
        for (uint64_t off = 0; off < size; off += sizeof(buf)) {
                for (size_t i = 0; i < sizeof(buf); i++)
                        buf[i] = (char)((off + i) * 7 + seed + (off + i) / 4093);
                CHECK(pwrite(fd, buf, sizeof(buf), (off_t)off) == (ssize_t)sizeof(buf), "pwrite");
        }
        close(fd);
}

static void file_read(const char *path, uint64_t off, void *buf, size_t len)
{
        int fd = open(path, O_RDONLY);

        CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
        CHECK(pread(fd, buf, len, (off_t)off) == (ssize_t)len, "pread %s", path);
        close(fd);
}

/* env + domain + image + vbd (+ fe connected if connect). */
static void setup(struct t *t, const char *mode, unsigned ring_order, bool connect,
                  const char *image_override)
{
        struct simfront_vbd_opts vo = {.domid = DOMID, .devid = DEVID, .mode = mode};
        struct simfront_opts fo = {.domid = DOMID, .devid = DEVID, .ring_order = ring_order};
        char spec[4200];

        memset(t, 0, sizeof(*t));
        t->env = simfront_env_new(NULL);
        CHECK(t->env, "simfront_env_new: %s", strerror(errno));
        CHECK_R(simfront_env_domain_create(t->env, DOMID), simfront_env_errmsg(t->env));
        snprintf(t->img, sizeof(t->img), "%s/disk.img", simfront_env_dir(t->env));
        make_image(t->img, IMG_SIZE, 1);
        snprintf(spec, sizeof(spec), "raw:%s", t->img);
        vo.image = image_override ? image_override : spec;
        CHECK_R(simfront_vbd_add(t->env, &vo, &t->vbd), simfront_env_errmsg(t->env));
        cur_vbd = t->vbd;
        t->fe = simfront_new(t->env, &fo);
        CHECK(t->fe, "simfront_new: %s", strerror(errno));
        simfront_set_check(t->fe, alive, t->vbd);
        if (connect)
                CHECK_R(simfront_connect(t->fe), simfront_errmsg(t->fe));
}

static void expect_exit0(struct t *t, int timeout_ms)
{
        int st = -1;

        CHECK_R(simfront_vbd_wait(t->vbd, timeout_ms, &st), "vbdd did not exit");
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "vbdd exit status %#x", st);
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
        CHECK(!memcmp(w, r, len), "read-back differs at off %" PRIu64 " len %zu", off, len);
        file_read(t->img, off, f, len);
        CHECK(!memcmp(w, f, len), "image file differs at off %" PRIu64 " len %zu", off, len);
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
        CHECK(d->sectors == IMG_SIZE / 512, "sectors %" PRIu64, d->sectors);
        CHECK(d->sector_size == 512, "sector-size %u", d->sector_size);
        CHECK(!(d->info & VDISK_READONLY), "info %#x", d->info);
        CHECK(d->flush && d->barrier, "features flush %d barrier %d", d->flush, d->barrier);
        CHECK(d->max_ring_page_order == 4, "max-ring-page-order %d", d->max_ring_page_order);
        CHECK(!strcmp(d->mode, "w"), "mode '%s'", d->mode);
        v = simfront_xs_read_backend(t.fe, "physical-sector-size");
        CHECK(v && atoi(v) >= 512, "physical-sector-size '%s'", v ? v : "(none)");
        free(v);
        CHECK(simfront_pregranted(t.fe), "1-page ring should fit pre-granted pages");
        v = simfront_xs_read_backend(t.fe, "hotplug-status");
        CHECK(v && !strcmp(v, "connected"), "hotplug-status '%s'", v ? v : "(none)");
        free(v);
        CHECK_R(simfront_vbd_read_backend(t.vbd, "state", &st), "backend state");
        CHECK(st == 4, "backend state %lld", st);
        CHECK(simfront_ring_size(t.fe) == 32, "ring size %u", simfront_ring_size(t.fe));

        /* Initial content is what the image file holds. */
        CHECK_R(simfront_read(t.fe, 12345, buf, sizeof(buf)), simfront_errmsg(t.fe));
        file_read(t.img, 12345, fbuf, sizeof(fbuf));
        CHECK(!memcmp(buf, fbuf, sizeof(buf)), "initial content differs");

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
        CHECK(simfront_read(t.fe, IMG_SIZE - 512, buf, 1024) == -EIO, "read past end");
        CHECK(simfront_write(t.fe, IMG_SIZE, buf, 512) == -EIO, "write past end");
        check_rw(&t, 8192, 512, 9);

        /* Guest reboot: close, then Initialising again, same data. */
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_vbd_read_backend(t.vbd, "state", &st), "backend state");
        CHECK(st == 6, "backend state after frontend close %lld", st);
        CHECK(simfront_vbd_running(t.vbd) == 1, "vbdd exited on frontend close with online=1");
        CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_read(t.fe, 4096, buf, 4096), simfront_errmsg(t.fe));
        file_read(t.img, 4096, fbuf, 4096);
        CHECK(!memcmp(buf, fbuf, 4096), "content after reconnect");
        check_rw(&t, 77777, 9999, 10);
        /* And a second reboot, with a multi-page ring this time. */
        CHECK_R(simfront_disconnect(t.fe), simfront_errmsg(t.fe));
        simfront_free(t.fe);
        {
                struct simfront_opts fo = {.domid = DOMID, .devid = DEVID, .ring_order = 3};

                t.fe = simfront_new(t.env, &fo);
                CHECK(t.fe, "simfront_new: %s", strerror(errno));
                simfront_set_check(t.fe, alive, t.vbd);
                CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
                CHECK(simfront_ring_size(t.fe) == 256, "ring size %u", simfront_ring_size(t.fe));
                /* 256 slots x 11 pages x 2 grants do not fit: per-request grants. */
                CHECK(!simfront_pregranted(t.fe), "order 3 pre-granted");
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
        CHECK(simfront_ring_size(t.fe) == 128, "ring size %u", simfront_ring_size(t.fe));
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

                        CHECK(io, "no free io with %u in flight", simfront_inflight(t.fe));
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
        CHECK(m.completed == submitted && !m.errors, "completed %u of %u, %u errors", m.completed,
              submitted, m.errors);
        {
                uint8_t *img = malloc(IMG_SIZE), *rd = malloc(IMG_SIZE);

                file_read(t.img, 0, img, IMG_SIZE);
                CHECK(!memcmp(img, disk, IMG_SIZE), "image differs from the model");
                CHECK_R(simfront_read(t.fe, 0, rd, IMG_SIZE), simfront_errmsg(t.fe));
                CHECK(!memcmp(rd, disk, IMG_SIZE), "read-back differs from the model");
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
        struct simfront_opts fo = {.domid = DOMID, .devid = DEVID, .grant_per_request = true};
        struct simfront_stats st;
        struct t t;

        cur_test = "grant-per-request";
        setup(&t, "w", 0, false, NULL);
        t.fe = (simfront_free(t.fe), simfront_new(t.env, &fo));
        CHECK(t.fe, "simfront_new: %s", strerror(errno));
        simfront_set_check(t.fe, alive, t.vbd);
        CHECK_R(simfront_connect(t.fe), simfront_errmsg(t.fe));
        CHECK(!simfront_pregranted(t.fe), "pre-granted");
        check_rw(&t, 0, 4096, 1);
        check_rw(&t, 1000, 100000, 2);
        check_rw(&t, 5 << 20, 2 << 20, 3);
        simfront_get_stats(t.fe, &st);
        CHECK(st.grants >= (2u << 20) / 4096, "%" PRIu64 " grant operations", st.grants);
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

        CHECK_R(simfront_raw_put(t->fe, req, sizeof(*req)), simfront_errmsg(t->fe));
        simfront_raw_push(t->fe);
        CHECK_R(simfront_raw_notify(t->fe), simfront_errmsg(t->fe));
        CHECK(simfront_raw_get_response(t->fe, &rsp, 5000) == 1, "no response to id %" PRIu64,
              req->id);
        CHECK(rsp.id == req->id, "response id %" PRIu64 " for request %" PRIu64, rsp.id, req->id);
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
        CHECK(st == BLKIF_RSP_OKAY, "good raw read: %d", st);
        {
                char f[4096];

                file_read(t.img, 4096, f, sizeof(f));
                CHECK(!memcmp(page, f, sizeof(f)), "raw read data");
        }
        req.id++;
        req.seg[0].gref = gref_ro; /* the backend would have to write a read-only page */
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "read into a read-only grant: %d",
              st);
        req.id++;
        req.seg[0].gref = gref_ended;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "ended grant: %d", st);
        req.id++;
        req.seg[0].gref = gref_other;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "grant to dom7: %d", st);
        req.id++;
        req.seg[0].gref = gref_ok;
        req.nr_segments = 12;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "12 segments: %d", st);
        req.id++;
        req.nr_segments = 0;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "0 segments: %d", st);
        req.id++;
        req.nr_segments = 1;
        req.seg[0].first_sect = 5;
        req.seg[0].last_sect = 4;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "first_sect > last_sect: %d", st);
        req.id++;
        req.seg[0].first_sect = 0;
        req.seg[0].last_sect = 8;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "last_sect 8: %d", st);
        req.id++;
        req.seg[0].last_sect = 7;
        req.sector_number = IMG_SIZE / 512 - 4;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "past the end: %d", st);
        req.id++;
        req.sector_number = UINT64_MAX - 2;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_ERROR, "sector overflow: %d", st);
        req.id++;
        req.operation = 99;
        req.sector_number = 0;
        CHECK((st = raw_status(&t, &req)) == BLKIF_RSP_EOPNOTSUPP, "unknown op: %d", st);
        /* Still serving. */
        check_rw(&t, 0, 8192, 1);
        CHECK(simfront_backend_state(t.fe) == SIMFRONT_XB_CONNECTED, "backend state %d",
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
        CHECK(simfront_disk(t.fe)->info & VDISK_READONLY, "info %#x", simfront_disk(t.fe)->info);
        CHECK(!strcmp(simfront_disk(t.fe)->mode, "r"), "mode '%s'", simfront_disk(t.fe)->mode);
        CHECK_R(simfront_read(t.fe, 0, buf, sizeof(buf)), simfront_errmsg(t.fe));
        file_read(t.img, 0, fbuf, sizeof(fbuf));
        CHECK(!memcmp(buf, fbuf, sizeof(buf)), "read");
        CHECK(simfront_write(t.fe, 0, zero, sizeof(zero)) == -EIO, "write to mode r accepted");
        /* The raw status: BLKIF_RSP_ERROR, echoing id and op. */
        io = simfront_io_get(t.fe);
        io->op = BLKIF_OP_WRITE;
        io->offset = 4096;
        io->len = 4096;
        simfront_io_copy_in(io, 0, zero, 4096);
        CHECK_R(simfront_io_queue(t.fe, io), simfront_errmsg(t.fe));
        CHECK_R(simfront_push(t.fe), simfront_errmsg(t.fe));
        CHECK_R(simfront_drain(t.fe, 5000), simfront_errmsg(t.fe));
        CHECK(io->status == BLKIF_RSP_ERROR, "status %d", io->status);
        file_read(t.img, 0, fbuf, sizeof(fbuf));
        CHECK(!memcmp(buf, fbuf, sizeof(buf)), "image changed by a write to mode r");
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

                CHECK(r == 0 || simfront_backend_state(t.fe) == SIMFRONT_XB_CLOSED,
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
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status %#x, want exit 1", st);
        log = simfront_vbd_read_log(t.vbd);
        CHECK(log && strstr(log, "/nonexistent/vbd-sim-test.img"),
              "log does not name the image: '%s'", log ? log : "");
        free(log);
        teardown(&t);
}

int main(int argc, char **argv)
{
        const char *only = argc > 1 ? argv[1] : NULL;
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
        };

        if (!getenv("VBD_SIM_VBDD") && !only) {
                char *p = simfront_find_vbdd(NULL);

                if (!p) {
                        fprintf(stderr, "SKIP: set VBD_SIM_VBDD to the vbdd-sim binary\n");
                        return 77;
                }
                free(p);
        }
        signal(SIGPIPE, SIG_IGN);
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
                if (only && strcmp(only, tests[i].name))
                        continue;
                printf("# %s\n", tests[i].name);
                fflush(stdout);
                tests[i].fn();
                printf("ok %s\n", tests[i].name);
        }
        return 0;
}
