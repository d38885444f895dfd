/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The raw driver through vbd_image_submit() with a real AIO engine on files
 * in a scratch directory: O_DIRECT and buffered paths (checked in
 * /proc/self/fdinfo), unaligned requests routed to the buffered descriptor,
 * read-only images, discard (st_blocks shrinks), write-zeroes, FUA, flush,
 * odd sizes and bad paths; create (a sparse file of the size, mode 0644
 * less the umask, an existing path refused and left alone, bad arguments
 * and failures leaving nothing behind).  When the test may create loop devices (root,
 * /dev/loop-control), the block device path too, with 4096-byte sectors.
 */
#include <dirent.h>
#include <ev.h>
#include <linux/loop.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include "aio.h"
#include "image.h"
#include "unit-test.h"
#include "vbd/macro.h"

#define KB 1024ULL
#define MB (1024ULL * 1024)

static struct ev_loop *loop;
static struct vbd_aio *aio;
static bool have_direct; /* the scratch file system takes O_DIRECT */

static void watchdog_cb(struct ev_loop *l, ev_timer *w, int revents)
{
        CHECK(!"watchdog: the loop hung");
        ev_break(l, EVBREAK_ALL);
}

static void run_loop(void)
{
        ev_timer wd;

        ev_timer_init(&wd, watchdog_cb, 10., 0.);
        ev_timer_start(loop, &wd);
        ev_unref(loop);
        ev_run(loop, 0);
        ev_ref(loop);
        ev_timer_stop(loop, &wd);
}

static void drained_cb(void *opaque)
{
        *(bool *)opaque = true;
}

/* vbd_image_drain, then close (filters have a drain). */
static void drain_close(struct vbd_image *img)
{
        bool drained = false;

        vbd_image_drain(img, drained_cb, &drained);
        while (!drained)
                ev_run(loop, EVRUN_ONCE);
        vbd_image_close(img);
}

struct req {
        struct vbd_io io;
        int calls, status;
        _Alignas(16) unsigned char scratch[512];
};

static void req_done(struct vbd_io *io, int status)
{
        struct req *r = io->opaque;

        r->calls++;
        r->status = status;
}

/* Submit one io and wait for it; returns its status. */
static int do_io(struct vbd_image *img, enum vbd_op op, uint32_t flags, uint64_t offset,
                 uint64_t len, struct iovec *iov, unsigned iovcnt)
{
        struct req r = {
            .io = {.op = op,
                   .flags = flags,
                   .offset = offset,
                   .len = len,
                   .iov = iov,
                   .iovcnt = iovcnt,
                   .done = req_done},
        };

        REQUIRE(vbd_image_io_scratch_size(img) <= sizeof(r.scratch));
        r.io.opaque = &r;
        r.io.scratch = r.scratch;
        vbd_image_submit(img, &r.io);
        run_loop();
        CHECK_EQ(r.calls, 1);
        return r.calls == 1 ? r.status : -9999;
}

static int do_rw(struct vbd_image *img, enum vbd_op op, uint32_t flags, uint64_t offset, void *buf,
                 size_t len)
{
        struct iovec iov = {buf, len};

        return do_io(img, op, flags, offset, len, &iov, 1);
}

/* The descriptors this process has open on path: how many, how many O_DIRECT, any writable. */
struct fds {
        int n, direct, writable;
};

static struct fds fds_of(const char *path)
{
        struct fds f = {0};
        char real[PATH_MAX], link[PATH_MAX], p[300];
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;

        REQUIRE(d && realpath(path, real));
        while ((e = readdir(d))) {
                ssize_t n;
                FILE *fi;
                char line[128];

                if (e->d_name[0] == '.')
                        continue;
                snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
                n = readlink(p, link, sizeof(link) - 1);
                if (n < 0)
                        continue;
                link[n] = '\0';
                if (strcmp(link, real) != 0)
                        continue;
                snprintf(p, sizeof(p), "/proc/self/fdinfo/%s", e->d_name);
                fi = fopen(p, "re");
                if (!fi)
                        continue;
                while (fgets(line, sizeof(line), fi)) {
                        unsigned long flags;

                        if (sscanf(line, "flags: %lo", &flags) == 1) {
                                f.n++;
                                f.direct += (flags & O_DIRECT) != 0;
                                f.writable += (flags & O_ACCMODE) != O_RDONLY;
                        }
                }
                fclose(fi);
        }
        closedir(d);
        return f;
}

static struct vbd_image *open_image(const char *fmt, const char *path, bool readonly)
{
        struct vbd_err err = {0};
        struct vbd_image *img;
        char spec[700];

        snprintf(spec, sizeof(spec), fmt, path);
        img = vbd_image_open(spec, readonly, aio, loop, &err);
        if (!img)
                fprintf(stderr, "open '%s': %s\n", spec, err.msg);
        return img;
}

static bool pread_check(const char *path, uint64_t off, size_t len, unsigned seed)
{
        unsigned char *b = malloc(len);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        bool ok;

        REQUIRE(b && fd >= 0);
        ok = pread(fd, b, len, (off_t)off) == (ssize_t)len && unit_check_pattern(b, len, seed, off);
        close(fd);
        free(b);
        return ok;
}

static bool pread_zero(const char *path, uint64_t off, size_t len)
{
        unsigned char *b = malloc(len);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        bool ok;

        REQUIRE(b && fd >= 0);
        ok = pread(fd, b, len, (off_t)off) == (ssize_t)len;
        for (size_t i = 0; ok && i < len; i++)
                ok = b[i] == 0;
        close(fd);
        free(b);
        return ok;
}

/* Read-write paths in each direct mode. */
static void test_modes(void)
{
        static const struct {
                const char *spec;
                int expect_fds, expect_direct;
        } modes[] = {
            {"raw:%s", 2, 1},
            {"raw:%s,direct=auto", 2, 1},
            {"raw:%s,direct=on", 2, 1},
            {"raw:%s,direct=off", 1, 0},
            /* the option table's other spellings, and the driver's name as a prefix */
            {"raw:%s,direct=yes", 2, 1},
            {"raw:%s,raw.direct=0", 1, 0},
            /* filters over raw: the same data, the same descriptors */
            {"passthrough:raw:%s", 2, 1},
            {"passthrough:passthrough:raw:%s,direct=off,passthrough.trace=on", 1, 0},
        };
        char path[600];
        unsigned char *buf;

        REQUIRE(posix_memalign((void **)&buf, 4096, 256 * KB + 4096) == 0);
        unit_path(path, sizeof(path), "modes.img");
        for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
                bool direct = modes[m].expect_direct && have_direct;
                struct vbd_image *img;
                const struct vbd_info *info;
                struct fds f;

                if (!strncmp(modes[m].spec, "passthrough:", 12) &&
                    !vbd_image_find_driver("passthrough"))
                        continue;
                unit_make_file(path, MB, 1);
                img = open_image(modes[m].spec, path, false);
                if (!have_direct && strstr(modes[m].spec, "direct=on")) {
                        CHECK(img == NULL); /* O_DIRECT required but refused */
                        continue;
                }
                REQUIRE(img);
                f = fds_of(path);
                CHECK_EQ(f.n, direct ? 2 : 1);
                CHECK_EQ(f.direct, direct ? 1 : 0);
                CHECK_EQ(f.writable, f.n);

                info = vbd_image_info(img);
                CHECK(info->size == MB);
                CHECK_EQ(info->logical_block, 512);
                CHECK_EQ(info->caps, VBD_CAP_WRITE | VBD_CAP_FLUSH | VBD_CAP_FUA | VBD_CAP_DISCARD |
                                         VBD_CAP_WRITE_ZEROES);
                CHECK(info->mem_align >= 512 && info->mem_align % 512 == 0);

                /* Aligned read, two segments. */
                {
                        struct iovec iov[2] = {{buf, 4096}, {buf + 4096, 60 * KB}};

                        memset(buf, 0, 64 * KB);
                        CHECK_EQ(do_io(img, VBD_OP_READ, 0, 128 * KB, 64 * KB, iov, 2), 0);
                        CHECK(unit_check_pattern(buf, 64 * KB, 1, 128 * KB));
                }
                /* Aligned write; FUA write; flush. */
                unit_fill(buf, 64 * KB, 2, 256 * KB);
                CHECK_EQ(do_rw(img, VBD_OP_WRITE, 0, 256 * KB, buf, 64 * KB), 0);
                CHECK(pread_check(path, 256 * KB, 64 * KB, 2));
                unit_fill(buf, 8 * KB, 3, 512 * KB);
                CHECK_EQ(do_rw(img, VBD_OP_WRITE, VBD_IO_FUA, 512 * KB, buf, 8 * KB), 0);
                CHECK(pread_check(path, 512 * KB, 8 * KB, 3));
                CHECK_EQ(do_io(img, VBD_OP_FLUSH, 0, 0, 0, NULL, 0), 0);

                /*
                 * Buffers off by a few bytes: O_DIRECT would refuse them with
                 * EINVAL, so success proves they went to the buffered fd.
                 */
                memset(buf, 0, 8 * KB);
                CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 4 * KB, buf + 1, 4 * KB), 0);
                CHECK(unit_check_pattern(buf + 1, 4 * KB, 1, 4 * KB));
                unit_fill(buf + 3, 1536, 4, 3584);
                CHECK_EQ(do_rw(img, VBD_OP_WRITE, VBD_IO_FUA, 3584, buf + 3, 1536), 0);
                CHECK(pread_check(path, 3584, 1536, 4));
                CHECK(pread_check(path, 0, 3584, 1));
                /* Offset/length aligned to 512 only, buffer aligned: */
                memset(buf, 0, 4096);
                CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 1536, buf, 1024), 0);
                CHECK(unit_check_pattern(buf, 1024, 1, 1536));
                /* Segments whose lengths are not block multiples. */
                {
                        struct iovec iov[3] = {{buf, 100}, {buf + 200, 824}, {buf + 2048, 100}};

                        CHECK_EQ(do_io(img, VBD_OP_READ, 0, 0, 1024, iov, 3), 0);
                        CHECK(unit_check_pattern(buf, 100, 1, 0));
                        CHECK(unit_check_pattern(buf + 200, 824, 1, 100));
                        CHECK(unit_check_pattern(buf + 2048, 100, 1, 924));
                }
                /* The end of the image and one block past it. */
                CHECK_EQ(do_rw(img, VBD_OP_READ, 0, MB - 4096, buf, 4096), 0);
                CHECK(unit_check_pattern(buf, 4096, 1, MB - 4096));
                CHECK_EQ(do_rw(img, VBD_OP_READ, 0, MB, buf, 512), -EINVAL);
                drain_close(img);
                CHECK_EQ(fds_of(path).n, 0); /* close closes both */
                CHECK_EQ(vbd_aio_inflight(aio), 0);
        }
        free(buf);
}

/* Many ios at once through the driver: scratch per io, all complete once. */
static void test_concurrent(void)
{
        enum { N = 96 };
        static struct req reqs[N];
        static struct iovec iov[N];
        char path[600];
        unsigned char *buf;
        struct vbd_image *img;

        unit_path(path, sizeof(path), "concurrent.img");
        unit_make_file(path, N * 8 * KB, 5);
        REQUIRE(posix_memalign((void **)&buf, 4096, N * 8 * KB) == 0);
        img = open_image("raw:%s", path, false);
        REQUIRE(img);
        unit_fill(buf, N * 8 * KB, 6, 0);
        for (int i = 0; i < N; i++) {
                /* Every third one unaligned in memory, so both fds are busy. */
                size_t shift = i % 3 == 0 ? 8 : 0;

                if (shift)
                        memmove(buf + (size_t)i * 8 * KB + shift, buf + (size_t)i * 8 * KB, 4 * KB);
                iov[i] = (struct iovec){buf + (size_t)i * 8 * KB + shift, 4 * KB};
                reqs[i] = (struct req){.io = {.op = VBD_OP_WRITE,
                                              .offset = (uint64_t)i * 8 * KB,
                                              .len = 4 * KB,
                                              .iov = &iov[i],
                                              .iovcnt = 1,
                                              .done = req_done}};
                reqs[i].io.opaque = &reqs[i];
                reqs[i].io.scratch = reqs[i].scratch;
                vbd_image_submit(img, &reqs[i].io);
        }
        run_loop();
        for (int i = 0; i < N; i++) {
                CHECK_EQ(reqs[i].calls, 1);
                CHECK_EQ(reqs[i].status, 0);
                CHECK(pread_check(path, (uint64_t)i * 8 * KB, 4 * KB, 6));
                CHECK(pread_check(path, (uint64_t)i * 8 * KB + 4 * KB, 4 * KB, 5));
        }
        vbd_image_close(img);
        free(buf);
}

static void test_readonly(void)
{
        char path[600];
        unsigned char *buf;
        struct vbd_image *img;
        struct fds f;

        REQUIRE(posix_memalign((void **)&buf, 4096, 8192) == 0);
        unit_path(path, sizeof(path), "ro.img");
        unit_make_file(path, 64 * KB, 7);
        REQUIRE(chmod(path, 0444) == 0);
        img = open_image("raw:%s", path, true);
        REQUIRE(img);
        f = fds_of(path);
        CHECK(f.n >= 1);
        CHECK_EQ(f.writable, 0);
        CHECK_EQ(vbd_image_info(img)->caps, VBD_CAP_FLUSH);
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 8192, buf, 8192), 0);
        CHECK(unit_check_pattern(buf, 8192, 7, 8192));
        CHECK_EQ(do_rw(img, VBD_OP_WRITE, 0, 0, buf, 4096), -EROFS);
        CHECK_EQ(do_io(img, VBD_OP_DISCARD, 0, 0, 4096, NULL, 0), -EROFS);
        CHECK_EQ(do_io(img, VBD_OP_WRITE_ZEROES, 0, 0, 4096, NULL, 0), -EROFS);
        CHECK_EQ(do_io(img, VBD_OP_FLUSH, 0, 0, 0, NULL, 0), 0);
        CHECK(pread_check(path, 0, 64 * KB, 7)); /* untouched */
        vbd_image_close(img);
        free(buf);
}

static long long blocks_of(const char *path)
{
        struct stat st;

        REQUIRE(stat(path, &st) == 0);
        return (long long)st.st_blocks;
}

static void test_discard_zeroes(void)
{
        char path[600];
        struct vbd_image *img;
        long long b0, b1;
        int r;

        unit_path(path, sizeof(path), "discard.img");
        unit_make_file(path, 2 * MB, 8);
        img = open_image("raw:%s", path, false);
        REQUIRE(img);

        /* Discard 512K: a hole, so fewer blocks, zeroes in the range, neighbours intact. */
        b0 = blocks_of(path);
        r = do_io(img, VBD_OP_DISCARD, 0, 256 * KB, 512 * KB, NULL, 0);
        if (r == -EOPNOTSUPP) {
                fprintf(stderr, "test-raw: hole punching not supported here, skipping\n");
        } else {
                CHECK_EQ(r, 0);
                b1 = blocks_of(path);
                CHECK(b0 - b1 >= (long long)(512 * KB / 512));
                CHECK(pread_zero(path, 256 * KB, 512 * KB));
                CHECK(pread_check(path, 0, 256 * KB, 8));
                CHECK(pread_check(path, 768 * KB, 256 * KB, 8));
        }

        /* Write zeroes without unmap: zeroes, allocation kept. */
        b0 = blocks_of(path);
        CHECK_EQ(do_io(img, VBD_OP_WRITE_ZEROES, 0, MB, 128 * KB, NULL, 0), 0);
        CHECK(pread_zero(path, MB, 128 * KB));
        CHECK(pread_check(path, MB - 4096, 4096, 8));
        CHECK(pread_check(path, MB + 128 * KB, 4096, 8));
        CHECK(blocks_of(path) >= b0);

        /* Write zeroes with unmap: zeroes, and it may (here: does) deallocate. */
        b0 = blocks_of(path);
        CHECK_EQ(do_io(img, VBD_OP_WRITE_ZEROES, VBD_IO_MAY_UNMAP, 1536 * KB, 256 * KB, NULL, 0),
                 0);
        CHECK(pread_zero(path, 1536 * KB, 256 * KB));
        CHECK(pread_check(path, 1536 * KB + 256 * KB, 256 * KB, 8));
        if (r == 0)
                CHECK(blocks_of(path) < b0);

        /* Read back through the image (the O_DIRECT path) too. */
        {
                unsigned char *buf;

                REQUIRE(posix_memalign((void **)&buf, 4096, 64 * KB) == 0);
                memset(buf, 0xff, 64 * KB);
                CHECK_EQ(do_rw(img, VBD_OP_READ, 0, MB, buf, 64 * KB), 0);
                for (size_t i = 0; i < 64 * KB; i++)
                        if (buf[i]) {
                                CHECK(!"write-zeroes range not zero through the image");
                                break;
                        }
                free(buf);
        }
        vbd_image_close(img);
}

static void test_sizes_and_errors(void)
{
        static const struct {
                const char *name;
                size_t size;
                uint64_t expect;
        } sizes[] = {
            {"odd.img", 1000, 512},
            {"tiny.img", 511, 0},
            {"exact.img", 4096, 4096},
            {"big-odd.img", 3 * MB + 17, 3 * MB},
        };
        struct vbd_err err = {0};
        char path[600], spec[700];
        int devnull_fds = fds_of("/dev/null").n; /* stdin may be /dev/null */

        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
                struct vbd_image *img;

                unit_path(path, sizeof(path), sizes[i].name);
                unit_make_file(path, sizes[i].size, 9);
                img = open_image("raw:%s", path, false);
                CHECK(img != NULL);
                if (img)
                        CHECK(vbd_image_info(img)->size == sizes[i].expect);
                vbd_image_close(img);
        }

        unit_path(path, sizeof(path), "does-not-exist");
        snprintf(spec, sizeof(spec), "raw:%s", path);
        CHECK(vbd_image_open(spec, false, aio, loop, &err) == NULL);
        CHECK_EQ(err.code, -ENOENT);
        CHECK(strstr(err.msg, "cannot open") && strstr(err.msg, "No such file"));

        snprintf(spec, sizeof(spec), "raw:%s", unit_tmpdir());
        CHECK(vbd_image_open(spec, true, aio, loop, &err) == NULL); /* a directory */
        CHECK_EQ(err.code, -EINVAL);
        CHECK(strstr(err.msg, "not a regular file or block device") != NULL);
        CHECK(vbd_image_open("raw:/dev/null", false, aio, loop, &err) == NULL);
        CHECK(strstr(err.msg, "not a regular file or block device") != NULL);
        CHECK(vbd_image_open("raw:/dev/null,direct=bogus", false, aio, loop, &err) == NULL);
        CHECK(strstr(err.msg, "direct=bogus") != NULL);
        CHECK_EQ(fds_of("/dev/null").n, devnull_fds); /* nothing leaked */
}

static bool exists(const char *path)
{
        struct stat st;

        return lstat(path, &st) == 0;
}

/* create: vbd_image_create("raw", ...). */
static void test_create(void)
{
        struct vbd_err err = {0};
        char path[600], other[600], spec[700];
        struct vbd_create c = {.path = path};
        struct vbd_image *img;
        unsigned char *buf;
        struct stat st, before;
        mode_t mask = umask(022);

        umask(mask);
        REQUIRE(posix_memalign((void **)&buf, 4096, 64 * KB) == 0);

        /* Sizes: the file is exactly that long, sparse, 0644 less the umask. */
        static const uint64_t sizes[] = {512, MB, 3 * MB + 512, 64ULL << 30, 3ULL << 40};
        for (size_t i = 0; i < VBD_ARRAY_SIZE(sizes); i++) {
                unit_path(path, sizeof(path), "new.img");
                c.size = sizes[i];
                CHECK_R(vbd_image_create("raw", &c, &err), err.msg);
                REQUIRE(stat(path, &st) == 0);
                CHECK_EQ(st.st_size, sizes[i]);
                CHECK_EQ(st.st_blocks, 0);
                CHECK(S_ISREG(st.st_mode));
                CHECK_EQ(st.st_mode & 07777, 0644 & ~mask);
                img = open_image("raw:%s", path, false);
                CHECK(img != NULL);
                if (img) {
                        CHECK_EQ(vbd_image_info(img)->size, sizes[i]);
                        /* reads as zeroes; writes land (at the end too) */
                        memset(buf, 0xaa, 4096);
                        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, sizes[i] - 512, buf, 512), 0);
                        CHECK(buf[0] == 0 && buf[511] == 0);
                        unit_fill(buf, 512, 21, sizes[i] - 512);
                        CHECK_EQ(do_rw(img, VBD_OP_WRITE, 0, sizes[i] - 512, buf, 512), 0);
                        vbd_image_close(img);
                        CHECK(pread_check(path, sizes[i] - 512, 512, 21));
                }
                REQUIRE(unlink(path) == 0);
        }

        /* An existing path: -EEXIST, the file untouched (content, size, inode, times). */
        unit_path(path, sizeof(path), "exists.img");
        unit_make_file(path, 64 * KB, 22);
        REQUIRE(stat(path, &before) == 0);
        c.size = MB;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EEXIST);
        CHECK(strstr(err.msg, "exists") && strstr(err.msg, path));
        REQUIRE(stat(path, &st) == 0);
        CHECK_EQ(st.st_size, 64 * KB);
        CHECK_EQ(st.st_ino, before.st_ino);
        CHECK(st.st_mtim.tv_sec == before.st_mtim.tv_sec &&
              st.st_mtim.tv_nsec == before.st_mtim.tv_nsec);
        CHECK(pread_check(path, 0, 64 * KB, 22));
        /* ... also through a symbolic link, dangling or not (O_EXCL does not follow it) */
        unit_path(other, sizeof(other), "link.img");
        REQUIRE(symlink(path, other) == 0);
        c.path = other;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EEXIST);
        REQUIRE(unlink(other) == 0);
        unit_path(spec, sizeof(spec), "nowhere.img");
        REQUIRE(symlink(spec, other) == 0);
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EEXIST);
        CHECK(!exists(spec));
        REQUIRE(unlink(other) == 0);
        c.path = path;

        /* A missing directory: -ENOENT naming the path, nothing made. */
        unit_path(path, sizeof(path), "no-such-dir/new.img");
        CHECK_ERR(vbd_image_create("raw", &c, &err), -ENOENT);
        CHECK(strstr(err.msg, path) && strstr(err.msg, "No such file or directory"));
        unit_path(other, sizeof(other), "no-such-dir");
        CHECK(!exists(other));

        /* Bad arguments: refused before anything is made. */
        unit_path(path, sizeof(path), "bad.img");
        c.size = 1000;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        CHECK(strstr(err.msg, "multiple of 512") != NULL);
        c.size = 0;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        c.size = 1ULL << 63;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EFBIG);
        c.size = MB;
        c.backing = "base.img";
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        CHECK(strstr(err.msg, "no backing file") != NULL);
        c.backing = NULL;
        c.backing_fmt = "raw";
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        c.backing_fmt = NULL;
        c.cluster_size = 65536;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        CHECK(strstr(err.msg, "cluster size") != NULL);
        c.cluster_size = 0;
        CHECK(!exists(path));
        unit_path(other, sizeof(other), "a,b.img");
        c.path = other;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EINVAL);
        CHECK(strstr(err.msg, "','") != NULL);
        CHECK(!exists(other));
        c.path = path;

        /* A failure after the file was made (larger than the file system allows):
         * the file is removed again. */
        c.size = 1ULL << 62;
        CHECK_ERR(vbd_image_create("raw", &c, &err), -EFBIG);
        CHECK(strstr(err.msg, "cannot make") != NULL);
        CHECK(!exists(path));

        /* Drivers without create, and unknown ones. */
        c.size = MB;
        CHECK_ERR(vbd_image_create("null", &c, &err), -EOPNOTSUPP);
        CHECK_ERR(vbd_image_create("nosuch", &c, &err), -ENOENT);
        CHECK(!exists(path));
        free(buf);
}

/*
 * A loop device over a scratch file, with 4096-byte logical blocks.  It is
 * set to clear itself when its last descriptor closes, so a crash leaks
 * nothing.  false when loop devices are not available here.
 */
static int loop_fd = -1;

static bool loop_attach(const char *file, char *dev, size_t size)
{
        struct loop_info64 info = {.lo_flags = LO_FLAGS_AUTOCLEAR};
        int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
        bool ok = false;

        if (ctl < 0)
                return false;
        for (int tries = 0; tries < 8 && !ok; tries++) {
                int n = ioctl(ctl, LOOP_CTL_GET_FREE), lfd, ffd;

                if (n < 0)
                        break;
                snprintf(dev, size, "/dev/loop%d", n);
                lfd = open(dev, O_RDWR | O_CLOEXEC);
                if (lfd < 0)
                        break;
                ffd = open(file, O_RDWR | O_CLOEXEC);
                REQUIRE(ffd >= 0);
                if (ioctl(lfd, LOOP_SET_FD, ffd) == 0) {
                        ok = ioctl(lfd, LOOP_SET_STATUS64, &info) == 0 &&
                             ioctl(lfd, LOOP_SET_BLOCK_SIZE, 4096UL) == 0;
                        if (ok)
                                loop_fd = lfd;
                        else
                                (void)ioctl(lfd, LOOP_CLR_FD, 0);
                } else if (errno != EBUSY) {
                        close(ffd);
                        close(lfd);
                        break;
                }
                close(ffd);
                if (!ok)
                        close(lfd);
        }
        close(ctl);
        return ok;
}

static void test_blockdev(void)
{
        char file[600], dev[64];
        unsigned char *buf;
        struct vbd_image *img;
        const struct vbd_info *info;
        struct fds f;
        int r;

        unit_path(file, sizeof(file), "loop-backing.img");
        unit_make_file(file, 4 * MB, 12);
        if (!loop_attach(file, dev, sizeof(dev))) {
                fprintf(stderr, "test-raw: no loop devices here, block device path not tested\n");
                return;
        }
        REQUIRE(posix_memalign((void **)&buf, 4096, 64 * KB) == 0);
        img = open_image("raw:%s", dev, false);
        REQUIRE(img);
        info = vbd_image_info(img);
        CHECK(info->size == 4 * MB);
        CHECK_EQ(info->logical_block, 4096); /* BLKSSZGET */
        CHECK(info->physical_block >= 4096);
        f = fds_of(dev);
        CHECK_EQ(f.n, 3); /* ours: O_DIRECT + buffered; the test's loop_fd */
        CHECK_EQ(f.direct, 1);

        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 8 * KB, buf, 16 * KB), 0);
        CHECK(unit_check_pattern(buf, 16 * KB, 12, 8 * KB));
        /* 512-byte granularity is below this device's block: the dispatcher says no. */
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 512, buf, 4096), -EINVAL);
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 0, buf, 512), -EINVAL);
        /* Misaligned memory goes to the buffered descriptor. */
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 4096, buf + 8, 4096), 0);
        CHECK(unit_check_pattern(buf + 8, 4096, 12, 4096));

        unit_fill(buf, 32 * KB, 13, MB);
        CHECK_EQ(do_rw(img, VBD_OP_WRITE, VBD_IO_FUA, MB, buf, 32 * KB), 0);
        CHECK_EQ(do_io(img, VBD_OP_FLUSH, 0, 0, 0, NULL, 0), 0);
        CHECK(pread_check(file, MB, 32 * KB, 13));

        CHECK_EQ(do_io(img, VBD_OP_WRITE_ZEROES, 0, MB, 16 * KB, NULL, 0), 0); /* BLKZEROOUT */
        memset(buf, 0xff, 32 * KB);
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, MB, buf, 32 * KB), 0);
        for (size_t i = 0; i < 16 * KB; i++)
                if (buf[i]) {
                        CHECK(!"BLKZEROOUT range not zero");
                        break;
                }
        CHECK(unit_check_pattern(buf + 16 * KB, 16 * KB, 13, MB + 16 * KB));

        r = do_io(img, VBD_OP_DISCARD, 0, 2 * MB, 64 * KB, NULL, 0); /* BLKDISCARD */
        CHECK(r == 0 || r == -EOPNOTSUPP);
        vbd_image_close(img);

        img = open_image("raw:%s", dev, true);
        REQUIRE(img);
        CHECK_EQ(fds_of(dev).writable, 1); /* only the test's own */
        CHECK_EQ(do_rw(img, VBD_OP_WRITE, 0, 0, buf, 4096), -EROFS);
        CHECK_EQ(do_rw(img, VBD_OP_READ, 0, 3 * MB, buf, 4096), 0);
        CHECK(unit_check_pattern(buf, 4096, 12, 3 * MB));
        vbd_image_close(img);

        close(loop_fd); /* autoclear detaches it */
        loop_fd = -1;
        free(buf);
}

int main(void)
{
        char path[600];
        int fd;

        loop = ev_loop_new(EVFLAG_AUTO);
        REQUIRE(loop);
        aio = vbd_aio_new(loop, 16);
        REQUIRE(aio);

        unit_path(path, sizeof(path), "probe");
        unit_make_file(path, 4096, 0);
        fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
        have_direct = fd >= 0;
        if (fd >= 0)
                close(fd);
        if (!have_direct)
                fprintf(stderr, "test-raw: O_DIRECT not supported in %s, testing buffered only\n",
                        unit_tmpdir());

        test_modes();
        test_concurrent();
        test_readonly();
        test_discard_zeroes();
        test_sizes_and_errors();
        test_create();
        test_blockdev();

        vbd_aio_free(aio);
        ev_loop_destroy(loop);
        return check_result("test-raw");
}
