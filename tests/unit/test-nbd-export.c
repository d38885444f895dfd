/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * nbd-export.c's pure parts: endpoint parsing, the request checker (every
 * command, flag, range and alignment rule, read-only and not), the errno
 * mapping; and vbd_image_block_status through the null driver, the raw
 * driver on a sparse file, and a mock driver that answers badly.  And the
 * export itself, over a unix socket with a client written here: pause
 * waits for the request in the image, a request sent while paused is
 * answered only after resume, from the image set meanwhile.
 */
#include <ev.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "vbd/endian.h"

#include "aio.h"
#include "image.h"
#include "nbd-export.h"
#include "unit-test.h"

enum { READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZERO, BS };
#define FUA     1
#define NO_HOLE 2
#define DF      4
#define REQ_ONE 8

static void test_endpoints(void)
{
        struct vbd_nbd_addr a;
        static const char *const bad[] = {
            "",
            "unix:",
            "tcp:",
            "tcp::10809",
            "tcp:127.0.0.1",
            "tcp:1.2.3.4:",
            "tcp:1.2.3.4:0",
            "tcp:1.2.3.4:65536",
            "tcp:1.2.3.4:-1",
            "tcp:1.2.3.4:12a",
            "tcp:::1:10809",
            "tcp:[]:1",
            "tcp:[::1:1",
            "udp:x",
            "unix",
            "tcp:1.2.3.4:123456",
        };
        char longpath[200];

        CHECK_EQ(vbd_nbd_parse_endpoint("unix:/run/x.sock", &a), 0);
        CHECK(a.unix_socket && strcmp(a.path, "/run/x.sock") == 0);
        CHECK_EQ(vbd_nbd_parse_endpoint("tcp:127.0.0.1:10809", &a), 0);
        CHECK(!a.unix_socket && strcmp(a.host, "127.0.0.1") == 0 && a.port == 10809);
        CHECK_EQ(vbd_nbd_parse_endpoint("tcp:[::1]:1", &a), 0);
        CHECK(strcmp(a.host, "::1") == 0 && a.port == 1);
        CHECK_EQ(vbd_nbd_parse_endpoint("tcp:localhost:65535", &a), 0);
        CHECK(a.port == 65535);
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                if (vbd_nbd_parse_endpoint(bad[i], &a) != -EINVAL) {
                        fprintf(stderr, "accepted '%s'\n", bad[i]);
                        check_failures++;
                }
        memset(longpath, 'a', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = '\0';
        memcpy(longpath, "unix:", 5);
        CHECK_EQ(vbd_nbd_parse_endpoint(longpath, &a), -EINVAL);
        CHECK_EQ(vbd_nbd_parse_endpoint(NULL, &a), -EINVAL);
}

/* Which TCP addresses may serve without TLS. */
static void test_loopback(void)
{
        static const struct {
                const char *host;
                bool loopback;
        } t[] = {
            {"127.0.0.1", true},
            {"127.255.3.4", true},
            {"::1", true},
            {"::ffff:127.0.0.1", true},
            {"0.0.0.0", false},
            {"::", false},
            {"10.1.2.3", false},
            {"128.0.0.1", false},
            {"126.255.255.255", false},
            {"::2", false},
            {"::ffff:10.0.0.1", false},
            {"", false},
            {"no such host.invalid", false},
        };

        for (unsigned i = 0; i < sizeof(t) / sizeof(t[0]); i++)
                if (vbd_nbd_host_is_loopback(t[i].host) != t[i].loopback) {
                        fprintf(stderr, "'%s': loopback should be %d\n", t[i].host, t[i].loopback);
                        check_failures++;
                }
        CHECK(!vbd_nbd_host_is_loopback(NULL));
}

static void test_check(void)
{
        const uint64_t size = 1 << 20;
        struct vbd_nbd_limits rw = {
            .size = size,
            .min_block = 512,
            .max_block = 32 << 20,
            .eflags = 1 | 4 | 8 | 32 | 64 | 128, /* flags, flush, fua, trim, zeroes, df */
            .structured = true,
            .meta_alloc = true,
        };
        struct vbd_nbd_limits ro = rw;
        struct vbd_nbd_limits simple = rw;

        ro.eflags = 1 | 2 | 4; /* read-only, flush */
        simple.structured = false;
        simple.meta_alloc = false;
        simple.eflags = 1 | 4 | 8 | 32 | 64;

        /* READ */
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, 0, 4096), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, size - 512, 512), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, size - 512, 1024), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, size, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, UINT64_MAX - 511, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, 0, 0), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, 1, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, 0, 100), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, READ, 0, (32 << 20) + 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, DF, READ, 0, 512), 0);
        CHECK_EQ(vbd_nbd_check_request(&simple, DF, READ, 0, 512), 22); /* DF not offered */
        CHECK_EQ(vbd_nbd_check_request(&rw, FUA, READ, 0, 512), 0);     /* FUA: any command */
        CHECK_EQ(vbd_nbd_check_request(&ro, FUA, READ, 0, 512), 22);    /* ... when offered */
        CHECK_EQ(vbd_nbd_check_request(&rw, NO_HOLE, READ, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0x8000, READ, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, READ, 0, 512), 0);
        /* WRITE */
        CHECK_EQ(vbd_nbd_check_request(&rw, FUA, WRITE, 512, 512), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, WRITE, size - 512, 1024), 28);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, WRITE, UINT64_MAX, 512), 22); /* unaligned */
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, WRITE, UINT64_MAX - 511, 512), 28);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, WRITE, 0, 0), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, WRITE, 3, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, NO_HOLE, WRITE, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, WRITE, 0, 512), 1);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, WRITE, size, 512), 1); /* EPERM first */
        /* FLUSH */
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, FLUSH, 0, 0), 0);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, FLUSH, 0, 0), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, FLUSH, 512, 0), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, FLUSH, 0, 512), 22);
        /* TRIM: any alignment */
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, TRIM, 1, 100), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, FUA, TRIM, 0, size), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, TRIM, 0, size + 1), 28);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, TRIM, 0, 512), 1);
        /* WRITE_ZEROES: no length limit but the size */
        CHECK_EQ(vbd_nbd_check_request(&rw, NO_HOLE | FUA, ZERO, 0, size), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, ZERO, 0, 511), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, ZERO, size, 512), 28);
        CHECK_EQ(vbd_nbd_check_request(&rw, REQ_ONE, ZERO, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&ro, 0, ZERO, 0, 512), 1);
        /* BLOCK_STATUS */
        CHECK_EQ(vbd_nbd_check_request(&rw, REQ_ONE, BS, 0, size), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, BS, 0, 0), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, BS, size - 512, 1024), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, BS, 256, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&simple, 0, BS, 0, 512), 22); /* no context */
        /* DISC is never refused; CACHE and unknown commands are */
        CHECK_EQ(vbd_nbd_check_request(&rw, 0xffff, DISC, 1, 1), 0);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, CACHE, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, 8, 0, 512), 22);
        CHECK_EQ(vbd_nbd_check_request(&rw, 0, 0xffff, 0, 512), 22);

        CHECK_EQ(vbd_nbd_errno(0), 0);
        CHECK_EQ(vbd_nbd_errno(-EROFS), 1);
        CHECK_EQ(vbd_nbd_errno(-EPERM), 1);
        CHECK_EQ(vbd_nbd_errno(-EIO), 5);
        CHECK_EQ(vbd_nbd_errno(-ENOMEM), 12);
        CHECK_EQ(vbd_nbd_errno(-EINVAL), 22);
        CHECK_EQ(vbd_nbd_errno(-EOPNOTSUPP), 22);
        CHECK_EQ(vbd_nbd_errno(-ENOSPC), 28);
        CHECK_EQ(vbd_nbd_errno(-EDQUOT), 28);
        CHECK_EQ(vbd_nbd_errno(-EFBIG), 28);
        CHECK_EQ(vbd_nbd_errno(-EOVERFLOW), 75);
        CHECK_EQ(vbd_nbd_errno(-ESHUTDOWN), 108);
        CHECK_EQ(vbd_nbd_errno(-ENXIO), 5);
}

/* ---- block status ---- */

static int bad_answer;

static int mock_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        return 0;
}

static int mock_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        *ret = (struct vbd_info){.size = 1 << 20, .logical_block = 512};
        return 0;
}

static void mock_submit(struct vbd_image *img, struct vbd_io *io)
{
        vbd_io_complete(io, -EIO);
}

static void mock_close(struct vbd_image *img)
{
}

static int mock_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                             struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        switch (bad_answer) {
        case 0: /* fine: two extents */
                ret[0] = (struct vbd_extent){.len = 512, .flags = VBD_EXTENT_HOLE};
                ret[1] = (struct vbd_extent){.len = len - 512, .flags = 0};
                *ret_n = max < 2 ? 1 : 2;
                return 0;
        case 1: /* no extent */
                *ret_n = 0;
                return 0;
        case 2: /* past len */
                ret[0] = (struct vbd_extent){.len = len + 512};
                *ret_n = 1;
                return 0;
        case 3: /* empty extent */
                ret[0] = (struct vbd_extent){.len = 0};
                *ret_n = 1;
                return 0;
        case 4: /* unknown flag */
                ret[0] = (struct vbd_extent){.len = len, .flags = 0x80};
                *ret_n = 1;
                return 0;
        case 5: /* more than max */
                *ret_n = max + 1;
                return 0;
        default:
                return -ENOTSUP;
        }
}

static const struct vbd_driver mock_driver = {
    .abi = VBD_DRIVER_ABI,
    .name = "mock",
    .description = "mock",
    .open = mock_open,
    .get_info = mock_get_info,
    .submit = mock_submit,
    .close = mock_close,
    .block_status = mock_block_status,
};

static void test_block_status(void)
{
        struct vbd_extent e[8];
        unsigned n = 99;
        struct vbd_err err;
        struct vbd_image *img;
        struct ev_loop *loop = ev_default_loop(0);
        struct vbd_aio *aio = vbd_aio_new(loop, 64);
        char path[600], spec[700];
        int fd;

        /* null: one hole that reads as zeroes */
        img = vbd_image_open("null:1M", true, NULL, NULL, &err);
        REQUIRE(img);
        CHECK_EQ(vbd_image_block_status(img, 4096, 8192, e, 8, &n), 0);
        CHECK(n == 1 && e[0].len == 8192 && e[0].flags == (VBD_EXTENT_HOLE | VBD_EXTENT_ZERO));
        CHECK_EQ(vbd_image_block_status(img, 0, 0, e, 8, &n), -EINVAL);
        CHECK_EQ(vbd_image_block_status(img, 0, 512, e, 0, &n), -EINVAL);
        CHECK_EQ(vbd_image_block_status(img, (1 << 20) - 512, 1024, e, 8, &n), -EINVAL);
        CHECK_EQ(vbd_image_block_status(img, UINT64_MAX - 511, 512, e, 8, &n), -EINVAL);
        vbd_image_close(img);

        /* raw: a sparse file with data at [64K, 128K) and [1M - 4K, 1M) */
        REQUIRE(aio);
        unit_path(path, sizeof(path), "sparse.img");
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(ftruncate(fd, 1 << 20) == 0);
        {
                unsigned char buf[65536];

                memset(buf, 0xab, sizeof(buf));
                REQUIRE(pwrite(fd, buf, 65536, 65536) == 65536);
                REQUIRE(pwrite(fd, buf, 4096, (1 << 20) - 4096) == 4096);
        }
        REQUIRE(fsync(fd) == 0);
        close(fd);
        snprintf(spec, sizeof(spec), "raw:%s", path);
        img = vbd_image_open(spec, true, aio, NULL, &err);
        REQUIRE(img);
        CHECK_EQ(vbd_image_block_status(img, 0, 1 << 20, e, 8, &n), 0);
        if (n == 1 && e[0].flags == 0) {
                printf("SEEK_DATA not supported in %s: raw block status not checked\n", path);
        } else {
                CHECK_EQ(n, 4);
                CHECK(e[0].len == 65536 && e[0].flags == (VBD_EXTENT_HOLE | VBD_EXTENT_ZERO));
                CHECK(e[1].len == 65536 && e[1].flags == 0);
                CHECK(e[2].len == (1 << 20) - 131072 - 4096 && e[2].flags == 3);
                CHECK(e[3].len == 4096 && e[3].flags == 0);
                /* max 2: stops early, covering less */
                CHECK_EQ(vbd_image_block_status(img, 0, 1 << 20, e, 2, &n), 0);
                CHECK(n == 2 && e[0].len + e[1].len == 131072);
                /* a range inside the data */
                CHECK_EQ(vbd_image_block_status(img, 70000 - 70000 % 512, 4096, e, 8, &n), 0);
                CHECK(n == 1 && e[0].len == 4096 && e[0].flags == 0);
                /* a range inside the hole */
                CHECK_EQ(vbd_image_block_status(img, 512, 1024, e, 8, &n), 0);
                CHECK(n == 1 && e[0].len == 1024 && e[0].flags == 3);
        }
        vbd_image_close(img);

        /* the core checks what a driver answers */
        for (bad_answer = 0; bad_answer <= 6; bad_answer++) {
                img = vbd_image_open_driver(&mock_driver, "mock:x", true, NULL, NULL, &err);
                REQUIRE(img);
                int r = vbd_image_block_status(img, 0, 4096, e, 4, &n);

                if (bad_answer == 0)
                        CHECK(r == 0 && n == 2 && e[1].len == 4096 - 512);
                else if (bad_answer == 6)
                        CHECK_EQ(r, -ENOTSUP);
                else
                        CHECK_EQ(r, -EIO);
                vbd_image_close(img);
        }
        vbd_aio_free(aio);
}

/* ---- pause, set_image, resume ---- */

/* Two images told apart by what they read; A can hold its requests. */
static struct vbd_io *held;
static bool hold;
static unsigned submits_a, submits_b;

static int pause_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        *ret = (struct vbd_info){.size = 1 << 20, .logical_block = 512, .caps = VBD_CAP_FLUSH};
        return 0;
}

static int small_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        *ret = (struct vbd_info){.size = 1 << 19, .logical_block = 512};
        return 0;
}

static int big_block_get_info(struct vbd_image *img, struct vbd_info *ret)
{
        *ret = (struct vbd_info){.size = 1 << 20, .logical_block = 4096};
        return 0;
}

static void fill_read(struct vbd_io *io, int byte)
{
        for (unsigned i = 0; i < io->iovcnt; i++)
                memset(io->iov[i].iov_base, byte, io->iov[i].iov_len);
}

static void submit_a(struct vbd_image *img, struct vbd_io *io)
{
        submits_a++;
        if (io->op == VBD_OP_READ)
                fill_read(io, 0xaa);
        if (hold) {
                held = io;
                return;
        }
        vbd_io_complete(io, 0);
}

static void submit_b(struct vbd_image *img, struct vbd_io *io)
{
        submits_b++;
        memset(io->scratch, 0x5a, 64); /* B needs scratch, A none: set_image gave it */
        if (io->op == VBD_OP_READ)
                fill_read(io, 0xbb);
        vbd_io_complete(io, 0);
}

static const struct vbd_driver drv_a = {.abi = VBD_DRIVER_ABI,
                                        .name = "mock",
                                        .description = "A",
                                        .open = mock_open,
                                        .get_info = pause_get_info,
                                        .submit = submit_a,
                                        .close = mock_close};
static const struct vbd_driver drv_b = {.abi = VBD_DRIVER_ABI,
                                        .name = "mock",
                                        .description = "B",
                                        .io_scratch_size = 64,
                                        .open = mock_open,
                                        .get_info = pause_get_info,
                                        .submit = submit_b,
                                        .close = mock_close};
static const struct vbd_driver drv_small = {.abi = VBD_DRIVER_ABI,
                                            .name = "mock",
                                            .description = "small",
                                            .open = mock_open,
                                            .get_info = small_get_info,
                                            .submit = submit_b,
                                            .close = mock_close};
static const struct vbd_driver drv_big_block = {.abi = VBD_DRIVER_ABI,
                                                .name = "mock",
                                                .description = "4K",
                                                .open = mock_open,
                                                .get_info = big_block_get_info,
                                                .submit = submit_b,
                                                .close = mock_close};

static void pump(struct ev_loop *loop)
{
        for (int i = 0; i < 20; i++) {
                ev_run(loop, EVRUN_NOWAIT);
                usleep(500);
        }
}

/* Read exactly n bytes, running the export's loop meanwhile. */
static void client_recv(struct ev_loop *loop, int fd, void *buf, size_t n)
{
        size_t got = 0;

        for (int tries = 0; got < n && tries < 2000; tries++) {
                ssize_t r;

                ev_run(loop, EVRUN_NOWAIT);
                r = recv(fd, (char *)buf + got, n - got, MSG_DONTWAIT);
                if (r > 0)
                        got += (size_t)r;
                else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                        break;
                else
                        usleep(1000);
        }
        REQUIRE(got == n);
}

static bool client_nothing_to_read(struct ev_loop *loop, int fd)
{
        char b;

        pump(loop);
        return recv(fd, &b, 1, MSG_DONTWAIT | MSG_PEEK) < 0 && errno == EAGAIN;
}

static void client_send(int fd, const void *buf, size_t n)
{
        REQUIRE(send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n);
}

static void client_read_req(int fd, uint64_t cookie, uint64_t offset, uint32_t len)
{
        uint8_t h[28];

        vbd_put_be32(h, 0x25609513);
        vbd_put_be16(h + 4, 0);
        vbd_put_be16(h + 6, READ);
        vbd_put_be64(h + 8, cookie);
        vbd_put_be64(h + 16, offset);
        vbd_put_be32(h + 24, len);
        client_send(fd, h, sizeof(h));
}

/* A simple reply to a READ of len bytes: cookie, error 0, every byte == byte. */
static void client_check_read(struct ev_loop *loop, int fd, uint64_t cookie, uint32_t len, int byte)
{
        uint8_t h[16], data[4096];
        bool same = true;

        REQUIRE(len <= sizeof(data));
        client_recv(loop, fd, h, sizeof(h));
        CHECK_EQ(vbd_get_be32(h), 0x67446698);
        CHECK_EQ(vbd_get_be32(h + 4), 0);
        CHECK_EQ(vbd_get_be64(h + 8), cookie);
        client_recv(loop, fd, data, len);
        for (uint32_t i = 0; i < len; i++)
                same &= data[i] == byte;
        CHECK(same);
}

static int client_connect(struct ev_loop *loop, const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        uint8_t g[18], f[4], o[16], e[10];
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        REQUIRE(fd >= 0 && strlen(path) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, path, strlen(path) + 1);
        REQUIRE(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        client_recv(loop, fd, g, sizeof(g));
        CHECK_EQ(vbd_get_be64(g), 0x4e42444d41474943ULL);
        vbd_put_be32(f, 3); /* FIXED_NEWSTYLE | NO_ZEROES */
        client_send(fd, f, sizeof(f));
        vbd_put_be64(o, 0x49484156454f5054ULL);
        vbd_put_be32(o + 8, 1); /* EXPORT_NAME "" */
        vbd_put_be32(o + 12, 0);
        client_send(fd, o, sizeof(o));
        client_recv(loop, fd, e, sizeof(e));
        CHECK_EQ(vbd_get_be64(e), 1 << 20);
        return fd;
}

static unsigned pause_calls;

static void paused_cb(void *opaque)
{
        pause_calls++;
        CHECK(opaque == &pause_calls);
}

static void test_pause(void)
{
        struct ev_loop *loop = ev_default_loop(0);
        struct vbd_err err;
        struct vbd_image *a, *b, *small, *big_block;
        char path[600], ep[700];
        struct vbd_nbd *n;
        int fd;

        a = vbd_image_open_driver(&drv_a, "mock:a", true, NULL, NULL, &err);
        b = vbd_image_open_driver(&drv_b, "mock:b", true, NULL, NULL, &err);
        small = vbd_image_open_driver(&drv_small, "mock:small", true, NULL, NULL, &err);
        big_block = vbd_image_open_driver(&drv_big_block, "mock:4k", true, NULL, NULL, &err);
        REQUIRE(a && b && small && big_block);
        unit_path(path, sizeof(path), "nbd.sock");
        snprintf(ep, sizeof(ep), "unix:%s", path);
        n = vbd_nbd_new(loop, a, &(struct vbd_nbd_config){.endpoint = ep});
        REQUIRE(n);
        fd = client_connect(loop, path);
        CHECK_EQ(vbd_nbd_clients(n), 1);

        /* Not paused: set_image refuses. */
        CHECK_EQ(vbd_nbd_set_image(n, b), -EBUSY);

        /* A request in the image: pause waits for it. */
        hold = true;
        client_read_req(fd, 1, 0, 4096);
        pump(loop);
        REQUIRE(held);
        CHECK_EQ(vbd_nbd_inflight(n), 1);
        vbd_nbd_pause(n, paused_cb, &pause_calls);
        pump(loop);
        CHECK_EQ(pause_calls, 0);
        CHECK_EQ(vbd_nbd_set_image(n, b), -EBUSY);
        vbd_nbd_pause(n, paused_cb, &pause_calls); /* twice: ignored */
        hold = false;
        vbd_io_complete(held, 0);
        held = NULL;
        pump(loop);
        CHECK_EQ(pause_calls, 1);
        client_check_read(loop, fd, 1, 4096, 0xaa); /* replies go out while paused */

        /* Requests sent while paused wait in the socket. */
        client_read_req(fd, 2, 4096, 4096);
        client_read_req(fd, 3, 8192, 512);
        CHECK(client_nothing_to_read(loop, fd));
        CHECK_EQ(submits_a, 1);
        CHECK_EQ(vbd_nbd_inflight(n), 0);

        /* The new image must have the geometry the client negotiated. */
        CHECK_EQ(vbd_nbd_set_image(n, small), -EINVAL);
        CHECK_EQ(vbd_nbd_set_image(n, big_block), -EINVAL);
        CHECK_EQ(vbd_nbd_set_image(n, b), 0);
        CHECK(client_nothing_to_read(loop, fd));
        CHECK_EQ(submits_b, 0);

        /* Resume: answered, from the new image. */
        vbd_nbd_resume(n);
        client_check_read(loop, fd, 2, 4096, 0xbb);
        client_check_read(loop, fd, 3, 512, 0xbb);
        CHECK_EQ(submits_a, 1);
        CHECK_EQ(submits_b, 2);

        /* An idle export pauses at once (inline), and a new client reads B. */
        vbd_nbd_pause(n, paused_cb, &pause_calls);
        CHECK_EQ(pause_calls, 2);
        {
                int fd2 = client_connect(loop, path); /* the handshake goes on while paused */

                client_read_req(fd2, 4, 0, 512);
                CHECK(client_nothing_to_read(loop, fd2));
                CHECK_EQ(vbd_nbd_set_image(n, a), 0);
                vbd_nbd_resume(n);
                client_check_read(loop, fd2, 4, 512, 0xaa);
                close(fd2);
        }

        /* A pause called off by resume before it drained: done never comes. */
        hold = true;
        client_read_req(fd, 5, 0, 512);
        pump(loop);
        REQUIRE(held);
        vbd_nbd_pause(n, paused_cb, &pause_calls);
        vbd_nbd_resume(n);
        hold = false;
        vbd_io_complete(held, 0);
        held = NULL;
        client_check_read(loop, fd, 5, 512, 0xaa);
        pump(loop);
        CHECK_EQ(pause_calls, 2);

        close(fd);
        pump(loop);
        CHECK_EQ(vbd_nbd_clients(n), 0);
        vbd_nbd_free(n);
        vbd_image_close(a);
        vbd_image_close(b);
        vbd_image_close(small);
        vbd_image_close(big_block);
}

int main(void)
{
        test_endpoints();
        test_loopback();
        test_check();
        test_block_status();
        test_pause();
        return check_result("test-nbd-export");
}
