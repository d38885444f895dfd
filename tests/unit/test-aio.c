/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * aio.c against real files (and pipes) in a scratch directory: data is
 * checked byte for byte, every op must complete exactly once, never inline,
 * and the loop must neither hang nor lose an op.  Everything runs twice:
 * completions read from the kernel's completion ring, then with
 * io_getevents().
 */
#include <ev.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "aio.h"
#include "unit-test.h"

struct rec {
        struct vbd_aio_op op;
        int calls;
        ssize_t res;
};

static void rec_done(struct vbd_aio_op *op, ssize_t res)
{
        struct rec *r = (struct rec *)op;

        r->calls++;
        r->res = res;
}

static struct ev_loop *loop;
static bool watchdog_fired;

static void watchdog_cb(struct ev_loop *l, ev_timer *w, int revents)
{
        watchdog_fired = true;
        ev_break(l, EVBREAK_ALL);
}

/* Run until nothing keeps the loop alive; fail instead of hanging. */
static void run_loop(void)
{
        ev_timer wd;

        watchdog_fired = false;
        ev_timer_init(&wd, watchdog_cb, 10., 0.);
        ev_timer_start(loop, &wd);
        ev_unref(loop);
        ev_run(loop, 0);
        ev_ref(loop);
        ev_timer_stop(loop, &wd);
        CHECK(!watchdog_fired);
}

static bool use_kring; /* completions from the mapped ring (else io_getevents) */

static struct vbd_aio *aio_new(unsigned max_inflight)
{
        struct vbd_aio *aio = vbd_aio_new(loop, max_inflight);

        REQUIRE(aio);
        if (use_kring)
                CHECK(vbd_aio_kernel_ring(aio)); /* Linux always maps it */
        else
                vbd_aio_no_kernel_ring(aio);
        return aio;
}

static void rec_init(struct rec *r)
{
        memset(r, 0, sizeof(*r));
        r->op.done = rec_done;
        r->res = 12345;
}

static void test_read_write_flush(bool direct)
{
        char path[600];
        struct vbd_aio *aio;
        unsigned char *buf, *chk;
        struct iovec iov[3];
        struct rec r;
        int fd;

        unit_path(path, sizeof(path), direct ? "rw-direct" : "rw-buffered");
        unit_make_file(path, 65536, 1);
        fd = open(path, O_RDWR | O_CLOEXEC | (direct ? O_DIRECT : 0));
        REQUIRE(fd >= 0);
        REQUIRE(posix_memalign((void **)&buf, 4096, 16384) == 0);
        chk = malloc(16384);
        REQUIRE(chk);
        aio = aio_new(8);
        REQUIRE(aio);

        /* Read 16K at 8K into three segments. */
        memset(buf, 0xee, 16384);
        iov[0] = (struct iovec){buf, 4096};
        iov[1] = (struct iovec){buf + 4096, 8192};
        iov[2] = (struct iovec){buf + 12288, 4096};
        rec_init(&r);
        vbd_aio_preadv(aio, &r.op, fd, iov, 3, 8192);
        CHECK_EQ(r.calls, 0); /* never inline */
        CHECK_EQ(vbd_aio_inflight(aio), 1);
        run_loop();
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(r.res, 16384);
        CHECK(unit_check_pattern(buf, 16384, 1, 8192));
        CHECK_EQ(vbd_aio_inflight(aio), 0);

        /* Write 12K at 4K from two segments, check with pread. */
        unit_fill(buf, 12288, 2, 4096);
        iov[0] = (struct iovec){buf, 8192};
        iov[1] = (struct iovec){buf + 8192, 4096};
        rec_init(&r);
        vbd_aio_pwritev(aio, &r.op, fd, iov, 2, 4096);
        CHECK_EQ(r.calls, 0);
        run_loop();
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(r.res, 12288);
        {
                int bfd = open(path, O_RDONLY | O_CLOEXEC);

                REQUIRE(bfd >= 0);
                CHECK_EQ(pread(bfd, chk, 16384, 0), 16384);
                CHECK(unit_check_pattern(chk, 4096, 1, 0));
                CHECK(unit_check_pattern(chk + 4096, 12288, 2, 4096));
                close(bfd);
        }

        /* fdatasync through IOCB_CMD_FDSYNC. */
        rec_init(&r);
        vbd_aio_fdatasync(aio, &r.op, fd);
        CHECK_EQ(r.calls, 0);
        run_loop();
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(r.res, 0);
        CHECK(!vbd_aio_fdsync_threaded(aio));

        vbd_aio_free(aio);
        close(fd);
        free(buf);
        free(chk);
}

/* Reads past the end of a file (or of a file that shrank) fail with -EIO. */
/*
 * The op as drivers see it (vbd/aio.h): done and opaque are theirs, priv is
 * the engine's.  Garbage left in priv (a reused scratch buffer) must not
 * matter, and an op embedded at an odd place in a struct works.
 */
static void test_opaque_op(void)
{
        struct {
                char pad[3];
                struct rec r;
        } holder;
        char path[600];
        struct vbd_aio *aio;
        unsigned char *buf;
        struct iovec iov;
        int fd;

        CHECK(sizeof(holder.r.op.priv) >= 152); /* what aio.c static_asserts it needs */
        CHECK(_Alignof(struct vbd_aio_op) >= _Alignof(uint64_t));
        unit_path(path, sizeof(path), "opaque");
        unit_make_file(path, 8192, 5);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(posix_memalign((void **)&buf, 4096, 8192) == 0);
        aio = aio_new(4);
        REQUIRE(aio);
        for (int round = 0; round < 2; round++) {
                rec_init(&holder.r);
                memset(&holder.r.op.priv, round ? 0xff : 0xa5, sizeof(holder.r.op.priv));
                iov = (struct iovec){buf, 4096};
                memset(buf, 0, 8192);
                vbd_aio_preadv(aio, &holder.r.op, fd, &iov, 1, 4096);
                run_loop();
                CHECK_EQ(holder.r.calls, 1);
                CHECK_EQ(holder.r.res, 4096);
                CHECK(unit_check_pattern(buf, 4096, 5, 4096));
                CHECK(holder.r.op.done == rec_done); /* the driver's fields are left alone */
        }
        vbd_aio_free(aio);
        close(fd);
        free(buf);
}

static void test_short_read_eof(void)
{
        static const struct {
                const char *what;
                uint64_t offset, len;
                ssize_t expect;
        } cases[] = {
            {"inside", 0, 6000, 6000},
            {"straddles eof", 4096, 8192, -EIO},
            {"past eof", 16384, 4096, -EIO},
            {"ends at eof", 4000, 2000, 2000},
        };
        char path[600];
        struct vbd_aio *aio;
        unsigned char buf[8192];
        struct iovec iov[2];
        struct rec r;
        int fd;

        unit_path(path, sizeof(path), "shrinks");
        unit_make_file(path, 16384, 3);
        fd = open(path, O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(ftruncate(fd, 6000) == 0); /* the file shrank under us */
        aio = aio_new(4);
        REQUIRE(aio);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                size_t half = (size_t)cases[i].len / 2;

                iov[0] = (struct iovec){buf, half};
                iov[1] = (struct iovec){buf + half, (size_t)cases[i].len - half};
                rec_init(&r);
                vbd_aio_preadv(aio, &r.op, fd, iov, 2, cases[i].offset);
                run_loop();
                if (r.calls != 1 || r.res != cases[i].expect)
                        fprintf(stderr, "case %s: calls %d res %zd\n", cases[i].what, r.calls,
                                r.res);
                CHECK_EQ(r.calls, 1);
                CHECK_EQ(r.res, cases[i].expect);
                if (cases[i].expect > 0)
                        CHECK(unit_check_pattern(buf, (size_t)cases[i].len, 3, cases[i].offset));
        }
        vbd_aio_free(aio);
        close(fd);
}

/*
 * A short read that later completes: a pipe holds 100 bytes when the read of
 * 300 is submitted; a thread adds the other 200 later.  The remainder starts
 * in the middle of the second segment, so the op must continue from its private rest
 * and then from the untouched third segment.
 */
static int pipe_wr;

static void *pipe_writer(void *arg)
{
        unsigned char b[200];

        usleep(100 * 1000);
        unit_fill(b, sizeof(b), 4, 100);
        if (write(pipe_wr, b, sizeof(b)) != (ssize_t)sizeof(b))
                abort();
        return NULL;
}

static void test_short_read_resubmit(void)
{
        unsigned char buf[300], first[100];
        struct iovec iov[3] = {{buf, 50}, {buf + 50, 150}, {buf + 200, 100}};
        struct iovec saved[3];
        struct vbd_aio *aio;
        pthread_t t;
        struct rec r;
        int p[2];

        REQUIRE(pipe2(p, O_CLOEXEC) == 0);
        pipe_wr = p[1];
        unit_fill(first, sizeof(first), 4, 0);
        REQUIRE(write(p[1], first, sizeof(first)) == (ssize_t)sizeof(first));
        memcpy(saved, iov, sizeof(iov));
        memset(buf, 0, sizeof(buf));
        aio = aio_new(4);
        REQUIRE(aio);
        REQUIRE(pthread_create(&t, NULL, pipe_writer, NULL) == 0);
        rec_init(&r);
        vbd_aio_preadv(aio, &r.op, p[0], iov, 3, 0);
        run_loop();
        pthread_join(t, NULL);
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(r.res, 300);
        CHECK(unit_check_pattern(buf, 300, 4, 0));
        CHECK(memcmp(saved, iov, sizeof(iov)) == 0); /* the caller's iovec is untouched */
        vbd_aio_free(aio);
        close(p[0]);
        close(p[1]);
}

/* A short write (RLIMIT_FSIZE) is resubmitted; the remainder's error is reported. */
static void test_short_write(void)
{
        struct rlimit old, lim;
        unsigned char buf[12288];
        struct iovec iov = {buf, sizeof(buf)};
        char path[600];
        struct vbd_aio *aio;
        struct stat st;
        struct rec r;
        int fd;

        unit_path(path, sizeof(path), "fsize");
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        unit_fill(buf, sizeof(buf), 5, 0);
        aio = aio_new(4);
        REQUIRE(aio);
        REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
        lim = (struct rlimit){8192, old.rlim_max}; /* soft limit only: restorable */
        signal(SIGXFSZ, SIG_IGN);
        REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0);
        rec_init(&r);
        vbd_aio_pwritev(aio, &r.op, fd, &iov, 1, 0);
        run_loop();
        REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
        CHECK_EQ(r.calls, 1);
        CHECK_EQ(r.res, -EFBIG);
        CHECK(fstat(fd, &st) == 0 && st.st_size == 8192); /* the first, short part landed */
        vbd_aio_free(aio);
        close(fd);
}

/* Far more ops than max_inflight: all complete exactly once, with the right data. */
#define MANY 300
static struct rec many[MANY];

static void test_many(void)
{
        char path[600];
        struct vbd_aio *aio;
        unsigned char *bufs, *chk;
        struct iovec iov[MANY];
        int fd, bfd;

        unit_path(path, sizeof(path), "many");
        unit_make_file(path, MANY * 4096, 6);
        fd = open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
        if (fd < 0)
                fd = open(path, O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(posix_memalign((void **)&bufs, 4096, MANY * 4096) == 0);
        aio = aio_new(4);
        REQUIRE(aio);

        for (int i = 0; i < MANY; i++) {
                /* Reverse order, so completion order differs from file order. */
                int blk = MANY - 1 - i;

                iov[i] = (struct iovec){bufs + (size_t)blk * 4096, 4096};
                rec_init(&many[i]);
                vbd_aio_preadv(aio, &many[i].op, fd, &iov[i], 1, (uint64_t)blk * 4096);
        }
        CHECK_EQ(vbd_aio_inflight(aio), MANY);
        run_loop();
        CHECK_EQ(vbd_aio_inflight(aio), 0);
        for (int i = 0; i < MANY; i++) {
                CHECK_EQ(many[i].calls, 1);
                CHECK_EQ(many[i].res, 4096);
        }
        CHECK(unit_check_pattern(bufs, MANY * 4096, 6, 0));
        /* The ring was read past its end; io_getevents goes on from where we left it. */
        vbd_aio_no_kernel_ring(aio);
        CHECK(!vbd_aio_kernel_ring(aio));

        /* And as many writes, mixed with flushes. */
        unit_fill(bufs, MANY * 4096, 7, 0);
        for (int i = 0; i < MANY; i++) {
                rec_init(&many[i]);
                if (i % 50 == 49) {
                        vbd_aio_fdatasync(aio, &many[i].op, fd);
                        continue;
                }
                iov[i] = (struct iovec){bufs + (size_t)i * 4096, 4096};
                vbd_aio_pwritev(aio, &many[i].op, fd, &iov[i], 1, (uint64_t)i * 4096);
        }
        run_loop();
        for (int i = 0; i < MANY; i++) {
                CHECK_EQ(many[i].calls, 1);
                CHECK_EQ(many[i].res, i % 50 == 49 ? 0 : 4096);
        }
        chk = malloc(MANY * 4096);
        bfd = open(path, O_RDONLY | O_CLOEXEC);
        REQUIRE(chk && bfd >= 0);
        CHECK_EQ(pread(bfd, chk, MANY * 4096, 0), MANY * 4096);
        for (int i = 0; i < MANY; i++)
                if (i % 50 != 49)
                        CHECK(unit_check_pattern(chk + (size_t)i * 4096, 4096, 7,
                                                 (unsigned long long)i * 4096));
        close(bfd);
        free(chk);
        vbd_aio_free(aio);
        close(fd);
        free(bufs);
}

/* An iocb io_submit refuses completes alone with the error; its neighbours succeed. */
static void test_submit_errors(void)
{
        char path[600];
        struct vbd_aio *aio;
        unsigned char b[4][512];
        struct iovec iov[4] = {{b[0], 512}, {b[1], 512}, {b[2], 512}, {b[3], 512}};
        struct rec r[6];
        int fd, wfd, closed;

        unit_path(path, sizeof(path), "errors");
        unit_make_file(path, 4096, 8);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        wfd = open(path, O_WRONLY | O_CLOEXEC);
        closed = 987; /* a descriptor that is not open */
        REQUIRE(fd >= 0 && wfd >= 0 && fcntl(closed, F_GETFD) < 0);
        aio = aio_new(8);
        REQUIRE(aio);
        for (int i = 0; i < 6; i++)
                rec_init(&r[i]);
        vbd_aio_preadv(aio, &r[0].op, fd, &iov[0], 1, 0);
        vbd_aio_preadv(aio, &r[1].op, closed, &iov[1], 1, 0); /* EBADF */
        vbd_aio_preadv(aio, &r[2].op, fd, &iov[2], 1, 512);
        vbd_aio_preadv(aio, &r[3].op, wfd, &iov[3], 1, 0); /* not open for reading */
        vbd_aio_preadv(aio, &r[4].op, fd, iov, -1, 0);     /* bad iovcnt */
        vbd_aio_pwritev(aio, &r[5].op, fd, &iov[0], 0, 0); /* nothing to do */
        for (int i = 0; i < 6; i++)
                CHECK_EQ(r[i].calls, 0); /* errors are not reported inline either */
        CHECK_EQ(vbd_aio_inflight(aio), 6);
        run_loop();
        for (int i = 0; i < 6; i++)
                CHECK_EQ(r[i].calls, 1);
        CHECK_EQ(r[0].res, 512);
        CHECK_EQ(r[1].res, -EBADF);
        CHECK_EQ(r[2].res, 512);
        CHECK_EQ(r[3].res, -EBADF);
        CHECK_EQ(r[4].res, -EINVAL);
        CHECK_EQ(r[5].res, 0);
        CHECK(unit_check_pattern(b[0], 512, 8, 0));
        CHECK(unit_check_pattern(b[2], 512, 8, 512));
        vbd_aio_free(aio);
        close(fd);
        close(wfd);
}

/* FDSYNC refused (a pipe has no fsync): the worker thread takes over, for good. */
static void test_fdsync_fallback(void)
{
        char path[600];
        struct vbd_aio *aio;
        struct rec r[3];
        int p[2], fd;

        REQUIRE(pipe2(p, O_CLOEXEC) == 0);
        unit_path(path, sizeof(path), "fallback");
        unit_make_file(path, 4096, 9);
        fd = open(path, O_RDWR | O_CLOEXEC);
        REQUIRE(fd >= 0);
        aio = aio_new(4);
        REQUIRE(aio);
        for (int i = 0; i < 3; i++)
                rec_init(&r[i]);
        vbd_aio_fdatasync(aio, &r[0].op, p[1]);
        run_loop();
        CHECK_EQ(r[0].calls, 1);
        CHECK_EQ(r[0].res, -EINVAL); /* fdatasync(2) on a pipe says EINVAL too */
        CHECK(vbd_aio_fdsync_threaded(aio));

        vbd_aio_fdatasync(aio, &r[1].op, fd);
        vbd_aio_fdatasync(aio, &r[2].op, fd);
        CHECK_EQ(r[1].calls + r[2].calls, 0);
        CHECK_EQ(vbd_aio_inflight(aio), 2);
        run_loop();
        CHECK_EQ(r[1].calls, 1);
        CHECK_EQ(r[1].res, 0);
        CHECK_EQ(r[2].calls, 1);
        CHECK_EQ(r[2].res, 0);
        CHECK_EQ(vbd_aio_inflight(aio), 0);
        vbd_aio_free(aio);
        close(fd);
        close(p[0]);
        close(p[1]);
}

/* An op reused from inside its own done callback (a chain of reads). */
struct chain {
        struct vbd_aio_op op;
        struct vbd_aio *aio;
        int fd, left, calls;
        ssize_t last;
        unsigned char buf[512];
        struct iovec iov;
};

static void chain_done(struct vbd_aio_op *op, ssize_t res)
{
        struct chain *c = (struct chain *)op;

        c->calls++;
        c->last = res;
        if (res == 512 && --c->left > 0)
                vbd_aio_preadv(c->aio, op, c->fd, &c->iov, 1, (uint64_t)(c->left - 1) * 512);
}

static void test_chain(void)
{
        char path[600];
        struct chain c = {0};

        unit_path(path, sizeof(path), "chain");
        unit_make_file(path, 64 * 512, 10);
        c.fd = open(path, O_RDONLY | O_CLOEXEC);
        REQUIRE(c.fd >= 0);
        c.aio = aio_new(2);
        REQUIRE(c.aio);
        c.left = 64;
        c.iov = (struct iovec){c.buf, 512};
        c.op.done = chain_done;
        vbd_aio_preadv(c.aio, &c.op, c.fd, &c.iov, 1, 64 * 512 - 512);
        run_loop();
        CHECK_EQ(c.calls, 64);
        CHECK_EQ(c.last, 512);
        CHECK(unit_check_pattern(c.buf, 512, 10, 0)); /* the last read was block 0 */
        vbd_aio_free(c.aio);
        close(c.fd);
}

/*
 * Submitting from an ev_prepare watcher that runs after the engine's (lower
 * priority): the op must still be sent before the loop blocks.
 */
static struct {
        struct vbd_aio *aio;
        struct rec r;
        int fd;
        unsigned char buf[512];
        struct iovec iov;
        bool submitted;
} late;

static void late_prepare_cb(struct ev_loop *l, ev_prepare *w, int revents)
{
        if (late.submitted)
                return;
        late.submitted = true;
        vbd_aio_preadv(late.aio, &late.r.op, late.fd, &late.iov, 1, 512);
}

static void test_late_prepare(void)
{
        char path[600];
        ev_prepare p;

        unit_path(path, sizeof(path), "late");
        unit_make_file(path, 4096, 11);
        late.fd = open(path, O_RDONLY | O_CLOEXEC);
        REQUIRE(late.fd >= 0);
        late.aio = aio_new(2);
        REQUIRE(late.aio);
        late.iov = (struct iovec){late.buf, 512};
        late.submitted = false;
        rec_init(&late.r);
        ev_prepare_init(&p, late_prepare_cb);
        ev_set_priority(&p, EV_MINPRI);
        ev_prepare_start(loop, &p);
        ev_unref(loop);
        /* The op is queued after the engine's prepare ran: without the idle
         * kick the loop would block in poll until the watchdog fires. */
        run_loop();
        CHECK(late.submitted);
        ev_ref(loop);
        ev_prepare_stop(loop, &p);
        CHECK_EQ(late.r.calls, 1);
        CHECK_EQ(late.r.res, 512);
        CHECK(unit_check_pattern(late.buf, 512, 11, 512));
        vbd_aio_free(late.aio);
        close(late.fd);
}

int main(void)
{
        loop = ev_loop_new(EVFLAG_AUTO);
        REQUIRE(loop);
        REQUIRE(vbd_aio_new(loop, 0) == NULL && errno == EINVAL);

        for (int pass = 0; pass < 2; pass++) {
                use_kring = pass == 0;
                test_read_write_flush(false);
                test_read_write_flush(true);
                test_opaque_op();
                test_short_read_eof();
                test_short_read_resubmit();
                test_short_write();
                test_many();
                test_submit_errors();
                test_fdsync_fallback();
                test_chain();
                test_late_prepare();
        }

        ev_loop_destroy(loop);
        return check_result("test-aio");
}
