/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * image.c: spec parsing (good and bad specs, through the real registry and
 * through a mock driver that records what it was given), filters (FILTER.key,
 * scratch layout, close order), backing images (ownership, close order),
 * drain order, the dispatcher's rejection rules one by one, the null driver
 * and passthrough over it.
 */
#include <limits.h>
#include <stdint.h>

#include "image.h"
#include "unit-test.h"

/* ---- a mock driver --------------------------------------------------- */

#define MOCK_NOPTS 18
#define K(n)       VBD_OPT_STRING_DEF("k" #n, NULL, "test")
static const struct vbd_opt_desc mock_opts[MOCK_NOPTS] = {
    K(0), K(1),  K(2),  K(3),  K(4),  K(5),  K(6),  K(7),  K(8),
    K(9), K(10), K(11), K(12), K(13), K(14), K(15), K(16), K(17),
};

static struct {
        struct vbd_info info; /* what get_info reports */
        int open_ret;
        /* what open saw */
        char arg[256];
        bool readonly;
        unsigned nkeys;              /* options set */
        char values[MOCK_NOPTS][32]; /* by option index */
        bool set[MOCK_NOPTS];
        int submits, closes;
        struct vbd_io *last;
} mock;

static int mock_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        snprintf(mock.arg, sizeof(mock.arg), "%s", o->arg);
        mock.readonly = o->readonly;
        mock.nkeys = 0;
        for (unsigned i = 0; i < MOCK_NOPTS; i++) {
                mock.set[i] = o->values[i].set;
                if (o->values[i].set) {
                        mock.nkeys++;
                        snprintf(mock.values[i], sizeof(mock.values[i]), "%s", o->values[i].s);
                }
        }
        if (mock.open_ret < 0)
                return vbd_err_set(err, mock.open_ret, "mock: refused");
        return 0;
}

static int mock_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        *ret_info = mock.info;
        return 0;
}

static void mock_submit(struct vbd_image *img, struct vbd_io *io)
{
        mock.submits++;
        mock.last = io;
        vbd_io_complete(io, 0);
}

static void mock_close(struct vbd_image *img)
{
        mock.closes++;
}

static const struct vbd_driver mock_driver = {
    .abi = VBD_DRIVER_ABI,
    .name = "mock",
    .description = "test double",
    .state_size = 64,
    .io_scratch_size = 32,
    .open = mock_open,
    .get_info = mock_get_info,
    .submit = mock_submit,
    .close = mock_close,
    .opts = mock_opts,
    .nopts = MOCK_NOPTS,
};

#define MB (1024ULL * 1024)

static void mock_reset(void)
{
        memset(&mock, 0, sizeof(mock));
        mock.info = (struct vbd_info){
            .size = MB,
            .caps = VBD_CAP_WRITE | VBD_CAP_FLUSH | VBD_CAP_FUA | VBD_CAP_DISCARD |
                    VBD_CAP_WRITE_ZEROES,
            .logical_block = 4096,
            .physical_block = 4096,
            .mem_align = 512,
            .max_io = 65536,
        };
}

/* ---- specs ----------------------------------------------------------- */

static void test_parse_size(void)
{
        static const struct {
                const char *s;
                int ret;
                uint64_t v;
        } cases[] = {
            {"0", 0, 0},
            {"512", 0, 512},
            {"1k", 0, 1024},
            {"1K", 0, 1024},
            {"3M", 0, 3 * MB},
            {"10G", 0, 10ULL << 30},
            {"2t", 0, 2ULL << 40},
            {"18446744073709551615", 0, UINT64_MAX},
            {"18446744073709551616", -ERANGE, 0},
            {"16777216T", -ERANGE, 0},
            {"16777215T", 0, 16777215ULL << 40},
            {"", -EINVAL, 0},
            {"M", -EINVAL, 0},
            {"-1", -EINVAL, 0},
            {" 1", -EINVAL, 0},
            {"1 ", -EINVAL, 0},
            {"1MB", -EINVAL, 0},
            {"1MiB", 0, MB},
            {"1iB", -EINVAL, 0},
            {"1MiBs", -EINVAL, 0},
            {"1X", -EINVAL, 0},
            {"0x10", -EINVAL, 0},
            {"1.5G", -EINVAL, 0},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                uint64_t v = 777;
                int r = vbd_parse_size(cases[i].s, &v);

                if (r != cases[i].ret)
                        fprintf(stderr, "parse_size('%s') = %d\n", cases[i].s, r);
                CHECK_EQ(r, cases[i].ret);
                if (r == 0)
                        CHECK(v == cases[i].v);
                else
                        CHECK_EQ(v, 777); /* untouched on error */
        }
        CHECK_EQ(vbd_parse_size(NULL, &(uint64_t){0}), -EINVAL);
}

static void test_bad_specs(void)
{
        static char overlong[VBD_IMAGE_SPEC_MAX + 100];
        static const struct {
                const char *spec;
                bool mock;
                int code;
                const char *msg; /* substring of err.msg */
        } cases[] = {
            {"", false, -EINVAL, "empty image spec"},
            {"null", false, -EINVAL, "expected DRIVER:ARG"},
            {":1M", false, -EINVAL, "missing driver name"},
            {"nosuch:1", false, -ENOENT, "unknown image driver 'nosuch'"},
            {"nosuch:1", false, -ENOENT, "compiled in: "},
            {"Null:1M", false, -EINVAL, "bad driver name"},
            {"nu ll:1M", false, -EINVAL, "bad driver name"},
            {"null:1M,foo=bar", false, -EINVAL, "null: unknown option 'foo' (options: none)"},
            {"null:1M,", false, -EINVAL, "empty option"},
            {"null:1M,,", false, -EINVAL, "empty option"},
            {"null:1M,direct", false, -EINVAL, "'direct' needs a value"},
            {"null:1M,=x", false, -EINVAL, "option without a name"},
            {"null:", false, -EINVAL, "null: missing size"},
            {"null:1X", false, -EINVAL, "null: bad size '1X'"},
            {"null:100", false, -EINVAL, "not a positive multiple of 512"},
            {"null:0", false, -EINVAL, "not a positive multiple of 512"},
            {"null:99999999999999999999", false, -ERANGE, "bad size"},
            {"null:8388608T", false, -EFBIG, "too large"},
            {"raw:", false, -EINVAL, "raw: missing path"},
            {"raw:/nonexistent,direct=maybe", false, -EINVAL,
             "raw: direct=maybe: must be on, off or auto"},
            {"raw:/x,direct=", false, -EINVAL, "raw: direct=: must be on, off or auto"},
            {"raw:/x,raw.direct=on,direct=off", false, -EINVAL, "option 'direct' given twice"},
            {"raw:/x,nosuch.direct=on", false, -EINVAL, "no layer 'nosuch'"},
            {"raw:/x,.direct=on", false, -EINVAL, "option without a name"},
            {"passthrough:", false, -EINVAL, "expected FILTER:DRIVER:ARG"},
            {"passthrough:nosuch:1", false, -ENOENT, "unknown image driver 'nosuch'"},
            {"passthrough:null:1M,passthrough.trace=maybe", false, -EINVAL,
             "passthrough: trace=maybe: must be on or off"},
            {"passthrough:null:1M,passthrough.direct=on", false, -EINVAL,
             "passthrough: unknown option 'direct' (options: trace)"},
            {"passthrough:null:1M,trace=on", false, -EINVAL,
             "null: unknown option 'trace' (options: none)"},
            {"passthrough:null:1M,passthrough.trace=on,passthrough.trace=off", false, -EINVAL,
             "passthrough: option 'trace' given twice"},
            {"passthrough:passthrough:passthrough:passthrough:passthrough:passthrough:"
             "passthrough:passthrough:null:1M",
             false, -E2BIG, "more than 8 layers"},
            {"raw:/x,direct=on,direct=off", false, -EINVAL, "option 'direct' given twice"},
            {"raw:/x,size=1", false, -EINVAL, "unknown option 'size' (options: direct, locking)"},
            {"raw:/x", false, -EINVAL, "raw: no AIO engine"},
            {"null:1M", true, -EINVAL, "is not for driver 'mock'"},
            {"mock:a,k1=1,k1=2", true, -EINVAL, "option 'k1' given twice"},
            {"mock:a,k0=0,k1=1,k2=2,k3=3,k4=4,k5=5,k6=6,k7=7,k8=8,k9=9,k10=10,k11=11,"
             "k12=12,k13=13,k14=14,k15=15,k16=16",
             true, -E2BIG, "more than 16 options"},
            {overlong, false, -ENAMETOOLONG, "longer than 4096"},
        };

        memset(overlong, 'a', sizeof(overlong) - 1);
        memcpy(overlong, "null:", 5);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vbd_err err = {0};
                struct vbd_image *img;

                if (strncmp(cases[i].spec, "passthrough:", 12) == 0 &&
                    !vbd_image_find_driver("passthrough"))
                        continue; /* -Ddrivers without it */
                mock_reset();
                errno = 0;
                if (cases[i].mock)
                        img = vbd_image_open_driver(&mock_driver, cases[i].spec, false, NULL, NULL,
                                                    &err);
                else
                        img = vbd_image_open(cases[i].spec, false, NULL, NULL, &err);
                if (img || err.code != cases[i].code || !strstr(err.msg, cases[i].msg))
                        fprintf(stderr, "spec '%.40s': code %d msg '%s'\n", cases[i].spec, err.code,
                                err.msg);
                CHECK(img == NULL);
                CHECK_EQ(err.code, cases[i].code);
                CHECK_EQ(errno, -cases[i].code);
                CHECK(strstr(err.msg, cases[i].msg) != NULL);
                CHECK_EQ(mock.closes, 0);
                vbd_image_close(img);
        }
}

static void test_good_specs(void)
{
        static const struct {
                const char *spec;
                const char *arg;
                unsigned nkeys;
                const char *kv[3][2];
        } cases[] = {
            {"mock:x", "x", 0, {{0}}},
            {"mock:", "", 0, {{0}}},
            {"mock:/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
             "/dev/disk/by-path/pci-0000:00:1f.2-ata-1",
             0,
             {{0}}},
            {"mock:a:b:c,k1=v1", "a:b:c", 1, {{"k1", "v1"}}},
            {"mock:x,k2=v=2,k1=,k3=:", "x", 3, {{"k2", "v=2"}, {"k1", ""}, {"k3", ":"}}},
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vbd_err err = {0};
                struct vbd_image *img;

                mock_reset();
                img = vbd_image_open_driver(&mock_driver, cases[i].spec, true, NULL, NULL, &err);
                if (!img)
                        fprintf(stderr, "spec '%s': %s\n", cases[i].spec, err.msg);
                CHECK(img != NULL);
                CHECK_EQ(err.code, 0);
                CHECK(strcmp(mock.arg, cases[i].arg) == 0);
                CHECK(mock.readonly);
                CHECK_EQ(mock.nkeys, cases[i].nkeys);
                for (unsigned k = 0; k < cases[i].nkeys && k < 3; k++) {
                        unsigned idx = (unsigned)atoi(cases[i].kv[k][0] + 1);

                        CHECK(mock.set[idx]);
                        CHECK(strcmp(mock.values[idx], cases[i].kv[k][1]) == 0);
                }
                if (img) {
                        CHECK(strcmp(vbd_image_name(img), cases[i].spec) == 0);
                        CHECK(vbd_image_readonly(img));
                        /* read-only masks the write-side caps whatever the driver says */
                        CHECK_EQ(vbd_image_info(img)->caps, VBD_CAP_FLUSH);
                        CHECK_EQ(vbd_image_io_scratch_size(img), 32);
                        CHECK(vbd_image_state(img) != NULL);
                        CHECK(vbd_image_aio(img) == NULL);
                }
                vbd_image_close(img);
                CHECK_EQ(mock.closes, img ? 1 : 0);
        }

        /* A driver whose open fails: its message is kept, close is not called. */
        struct vbd_err err = {0};
        mock_reset();
        mock.open_ret = -EACCES;
        CHECK(vbd_image_open_driver(&mock_driver, "mock:x", false, NULL, NULL, &err) == NULL);
        CHECK_EQ(err.code, -EACCES);
        CHECK(strcmp(err.msg, "mock: refused") == 0);
        CHECK_EQ(mock.closes, 0);

        /* Bad info from a driver is caught, and the image closed. */
        mock_reset();
        mock.info.logical_block = 1000;
        CHECK(vbd_image_open_driver(&mock_driver, "mock:x", false, NULL, NULL, &err) == NULL);
        CHECK(strstr(err.msg, "bad logical block size 1000") != NULL);
        CHECK_EQ(mock.closes, 1);
        mock_reset();
        mock.info.size = MB + 512;
        CHECK(vbd_image_open_driver(&mock_driver, "mock:x", false, NULL, NULL, &err) == NULL);
        CHECK(strstr(err.msg, "not a multiple of the block size") != NULL);
        CHECK_EQ(mock.closes, 1);

        /* Real registry, real drivers. */
        struct vbd_image *img = vbd_image_open("null:10G", false, NULL, NULL, &err);
        CHECK(img != NULL);
        if (img) {
                const struct vbd_info *info = vbd_image_info(img);

                CHECK(info->size == 10ULL << 30);
                CHECK_EQ(info->logical_block, 512);
                CHECK_EQ(info->caps, VBD_CAP_WRITE | VBD_CAP_FLUSH | VBD_CAP_FUA | VBD_CAP_DISCARD |
                                         VBD_CAP_WRITE_ZEROES);
        }
        vbd_image_close(img);
        vbd_image_close(NULL);
        CHECK(vbd_image_find_driver("null") != NULL);
        CHECK(vbd_image_find_driver("raw") != NULL);
        CHECK(vbd_image_find_driver("mock") == NULL);
}

/* ---- the dispatcher -------------------------------------------------- */

struct done_rec {
        int calls, status;
};

static void rec_done(struct vbd_io *io, int status)
{
        struct done_rec *d = io->opaque;

        d->calls++;
        d->status = status;
}

static void test_dispatcher(void)
{
        enum { IOV_OK, IOV_NONE, IOV_NULL, IOV_SHORT, IOV_LONG, IOV_TOO_MANY, IOV_SPLIT };
        static const struct {
                const char *what;
                bool readonly;
                uint32_t drop_caps;
                int op;
                uint32_t flags;
                uint64_t offset, len;
                int iov;
                int expect; /* 1: reaches the driver (which returns 0) */
        } cases[] = {
            {"read", false, 0, VBD_OP_READ, 0, 0, 4096, IOV_OK, 1},
            {"read last block", false, 0, VBD_OP_READ, 0, MB - 4096, 4096, IOV_OK, 1},
            {"read max_io, 3 segments", false, 0, VBD_OP_READ, 0, 0, 65536, IOV_SPLIT, 1},
            {"write fua", false, 0, VBD_OP_WRITE, VBD_IO_FUA, 4096, 8192, IOV_OK, 1},
            {"flush", false, 0, VBD_OP_FLUSH, 0, 0, 0, IOV_NONE, 1},
            {"flush read-only", true, 0, VBD_OP_FLUSH, 0, 0, 0, IOV_NONE, 1},
            {"read read-only", true, 0, VBD_OP_READ, 0, 0, 4096, IOV_OK, 1},
            {"discard", false, 0, VBD_OP_DISCARD, 0, 0, MB, IOV_NONE, 1},
            {"write-zeroes unmap", false, 0, VBD_OP_WRITE_ZEROES, VBD_IO_MAY_UNMAP, 8192, 4096,
             IOV_NONE, 1},
            {"discard len 0", false, 0, VBD_OP_DISCARD, 0, 4096, 0, IOV_NONE, 0},
            {"write-zeroes len 0", false, 0, VBD_OP_WRITE_ZEROES, 0, 0, 0, IOV_NONE, 0},

            {"bad op", false, 0, 99, 0, 0, 4096, IOV_OK, -EINVAL},
            {"negative op", false, 0, -1, 0, 0, 4096, IOV_OK, -EINVAL},
            {"unknown flag", false, 0, VBD_OP_WRITE, 1 << 7, 0, 4096, IOV_OK, -EINVAL},
            {"fua on read", false, 0, VBD_OP_READ, VBD_IO_FUA, 0, 4096, IOV_OK, -EINVAL},
            {"unmap on write", false, 0, VBD_OP_WRITE, VBD_IO_MAY_UNMAP, 0, 4096, IOV_OK, -EINVAL},
            {"write read-only", true, 0, VBD_OP_WRITE, 0, 0, 4096, IOV_OK, -EROFS},
            {"discard read-only", true, 0, VBD_OP_DISCARD, 0, 0, 4096, IOV_NONE, -EROFS},
            {"zeroes read-only", true, 0, VBD_OP_WRITE_ZEROES, 0, 0, 4096, IOV_NONE, -EROFS},
            {"write no cap", false, VBD_CAP_WRITE, VBD_OP_WRITE, 0, 0, 4096, IOV_OK, -EOPNOTSUPP},
            {"flush no cap", false, VBD_CAP_FLUSH, VBD_OP_FLUSH, 0, 0, 0, IOV_NONE, -EOPNOTSUPP},
            {"discard no cap", false, VBD_CAP_DISCARD, VBD_OP_DISCARD, 0, 0, 4096, IOV_NONE,
             -EOPNOTSUPP},
            {"zeroes no cap", false, VBD_CAP_WRITE_ZEROES, VBD_OP_WRITE_ZEROES, 0, 0, 4096,
             IOV_NONE, -EOPNOTSUPP},
            {"fua no cap", false, VBD_CAP_FUA, VBD_OP_WRITE, VBD_IO_FUA, 0, 4096, IOV_OK,
             -EOPNOTSUPP},
            {"flush with len", false, 0, VBD_OP_FLUSH, 0, 0, 4096, IOV_NONE, -EINVAL},
            {"flush with offset", false, 0, VBD_OP_FLUSH, 0, 4096, 0, IOV_NONE, -EINVAL},
            {"flush with iov", false, 0, VBD_OP_FLUSH, 0, 0, 0, IOV_OK, -EINVAL},
            {"past end", false, 0, VBD_OP_READ, 0, MB, 4096, IOV_OK, -EINVAL},
            {"straddles end", false, 0, VBD_OP_READ, 0, MB - 4096, 8192, IOV_OK, -EINVAL},
            {"offset overflow", false, 0, VBD_OP_READ, 0, UINT64_MAX - 4095, 8192, IOV_OK, -EINVAL},
            {"discard overflow", false, 0, VBD_OP_DISCARD, 0, 4096, UINT64_MAX - 4095, IOV_NONE,
             -EINVAL},
            {"len > size", false, 0, VBD_OP_DISCARD, 0, 0, 2 * MB, IOV_NONE, -EINVAL},
            {"offset unaligned", false, 0, VBD_OP_READ, 0, 512, 4096, IOV_OK, -EINVAL},
            {"len unaligned", false, 0, VBD_OP_WRITE, 0, 0, 4096 + 512, IOV_OK, -EINVAL},
            {"discard unaligned", false, 0, VBD_OP_DISCARD, 0, 0, 512, IOV_NONE, -EINVAL},
            {"read len 0", false, 0, VBD_OP_READ, 0, 0, 0, IOV_NONE, -EINVAL},
            {"write len 0", false, 0, VBD_OP_WRITE, 0, 0, 0, IOV_NONE, -EINVAL},
            {"len > max_io", false, 0, VBD_OP_READ, 0, 0, 65536 + 4096, IOV_OK, -EINVAL},
            {"iov short", false, 0, VBD_OP_WRITE, 0, 0, 8192, IOV_SHORT, -EINVAL},
            {"iov long", false, 0, VBD_OP_READ, 0, 0, 8192, IOV_LONG, -EINVAL},
            {"iov missing", false, 0, VBD_OP_READ, 0, 0, 4096, IOV_NONE, -EINVAL},
            {"iov NULL", false, 0, VBD_OP_READ, 0, 0, 4096, IOV_NULL, -EINVAL},
            {"iovcnt > IOV_MAX", false, 0, VBD_OP_READ, 0, 0, 4096, IOV_TOO_MANY, -EINVAL},
            {"discard with iov", false, 0, VBD_OP_DISCARD, 0, 0, 4096, IOV_OK, -EINVAL},
        };
        static unsigned char buf[2 * 65536];
        static struct iovec many[IOV_MAX + 1];
        unsigned char scratch[32];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct vbd_err err = {0};
                struct done_rec d = {0};
                struct vbd_image *img;
                struct iovec iov[3];
                struct vbd_io io = {
                    .op = (enum vbd_op)cases[i].op,
                    .flags = cases[i].flags,
                    .offset = cases[i].offset,
                    .len = cases[i].len,
                    .done = rec_done,
                    .opaque = &d,
                    .scratch = scratch,
                };

                mock_reset();
                mock.info.caps &= ~cases[i].drop_caps;
                img = vbd_image_open_driver(&mock_driver, "mock:x", cases[i].readonly, NULL, NULL,
                                            &err);
                REQUIRE(img);
                switch (cases[i].iov) {
                case IOV_OK:
                        iov[0] = (struct iovec){buf, (size_t)cases[i].len};
                        io.iov = iov;
                        io.iovcnt = 1;
                        break;
                case IOV_NONE:
                        break;
                case IOV_NULL:
                        io.iovcnt = 1;
                        break;
                case IOV_SHORT:
                case IOV_LONG:
                        iov[0] = (struct iovec){buf, 4096};
                        iov[1] =
                            (struct iovec){buf + 4096, cases[i].iov == IOV_SHORT ? 2048 : 8192};
                        io.iov = iov;
                        io.iovcnt = 2;
                        break;
                case IOV_TOO_MANY:
                        for (int k = 0; k <= IOV_MAX; k++)
                                many[k] = (struct iovec){buf, k == 0 ? 4096 : 0};
                        io.iov = many;
                        io.iovcnt = IOV_MAX + 1;
                        break;
                case IOV_SPLIT:
                        iov[0] = (struct iovec){buf, 512};
                        iov[1] = (struct iovec){buf + 512, 65536 - 1024};
                        iov[2] = (struct iovec){buf + 65536 - 512, 512};
                        io.iov = iov;
                        io.iovcnt = 3;
                        break;
                }
                vbd_image_submit(img, &io);
                if (d.calls != 1 || (cases[i].expect <= 0 && d.status != cases[i].expect) ||
                    mock.submits != (cases[i].expect == 1))
                        fprintf(stderr, "case '%s': calls %d status %d submits %d\n", cases[i].what,
                                d.calls, d.status, mock.submits);
                CHECK_EQ(d.calls, 1); /* exactly once, inline */
                CHECK_EQ(mock.submits, cases[i].expect == 1 ? 1 : 0);
                CHECK_EQ(d.status, cases[i].expect == 1 ? 0 : cases[i].expect);
                if (cases[i].expect == 1)
                        CHECK(mock.last == &io);
                vbd_image_close(img);
        }
}

/* ---- the null driver and the rest ------------------------------------ */

static void test_null(void)
{
        static unsigned char buf[65536];
        struct iovec iov[2] = {{buf, 4096}, {buf + 4096, 65536 - 4096}};
        struct vbd_err err = {0};
        struct done_rec d = {0};
        struct vbd_io io = {.done = rec_done, .opaque = &d};
        struct vbd_image *img;

        img = vbd_image_open("null:1M", false, NULL, NULL, &err);
        REQUIRE(img);
        memset(buf, 0xaa, sizeof(buf));
        io.op = VBD_OP_READ;
        io.offset = MB - 65536;
        io.len = 65536;
        io.iov = iov;
        io.iovcnt = 2;
        vbd_image_submit(img, &io);
        CHECK_EQ(d.calls, 1);
        CHECK_EQ(d.status, 0);
        for (size_t i = 0; i < sizeof(buf); i++)
                if (buf[i]) {
                        CHECK(!"null read returned non-zero data");
                        break;
                }
        memset(buf, 0x55, sizeof(buf));
        io.op = VBD_OP_WRITE;
        io.flags = VBD_IO_FUA;
        vbd_image_submit(img, &io);
        CHECK_EQ(d.calls, 2);
        CHECK_EQ(d.status, 0);
        CHECK_EQ(buf[0], 0x55); /* writes leave the buffer alone */
        vbd_image_close(img);

        img = vbd_image_open("null:1M", true, NULL, NULL, &err);
        REQUIRE(img);
        CHECK_EQ(vbd_image_info(img)->caps, VBD_CAP_FLUSH);
        io.flags = 0;
        vbd_image_submit(img, &io);
        CHECK_EQ(d.calls, 3);
        CHECK_EQ(d.status, -EROFS);
        vbd_image_close(img);
}

/* ---- filters, backing images, drain ------------------------------------ */

/* Events in order, one letter each, to check who ran when. */
static char events[64];
static void ev_add(char c)
{
        size_t n = strlen(events);

        if (n + 1 < sizeof(events))
                events[n] = c, events[n + 1] = '\0';
}

/* mockf: a filter recording its option and its child; drain is deferred
 * until test code calls vbd_image_drained() on mockf_pending. */
static struct {
        char key[32];
        bool key_set;
        int opens, closes;
        bool defer_drain;
        struct vbd_image *pending;
        struct vbd_image *child_at_open, *child_at_close;
} mf;

static const struct vbd_opt_desc mockf_opts[] = {
    VBD_OPT_STRING_DEF("key", "dflt", "test"),
};

static int mockf_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        mf.opens++;
        mf.child_at_open = vbd_image_child(img);
        mf.key_set = o->values[0].set;
        snprintf(mf.key, sizeof(mf.key), "%s", o->values[0].s);
        ev_add('o');
        CHECK(strcmp(o->arg, "") == 0);
        return 0;
}

static int mockf_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        *ret_info = *vbd_image_info(vbd_image_child(img));
        return 0;
}

static void mockf_submit(struct vbd_image *img, struct vbd_io *io)
{
        memset(io->scratch, 0xfe, 8); /* its own part: must not overlap the child's */
        vbd_io_complete(io, 0);
}

static void mockf_drain(struct vbd_image *img)
{
        /* 'F' for a filter over a filter, 'f' for one over a driver */
        ev_add(vbd_image_child(vbd_image_child(img)) ? 'F' : 'f');
        if (mf.defer_drain)
                mf.pending = img;
        else
                vbd_image_drained(img);
}

static void mockf_close(struct vbd_image *img)
{
        mf.closes++;
        mf.child_at_close = vbd_image_child(img);
        /* the child is still open: the core closes it after this */
        CHECK(vbd_image_info(vbd_image_child(img))->size > 0);
        ev_add('c');
}

static const struct vbd_driver mockf_driver = {
    .abi = VBD_DRIVER_ABI,
    .flags = VBD_DRIVER_FILTER,
    .name = "mockf",
    .description = "test filter",
    .opts = mockf_opts,
    .nopts = 1,
    .state_size = 8,
    .io_scratch_size = 20,
    .open = mockf_open,
    .get_info = mockf_get_info,
    .submit = mockf_submit,
    .drain = mockf_drain,
    .close = mockf_close,
};

/* mockb: a driver with a backing image (arg: its spec) and a drain. */
static struct {
        int r_backing, r_second;
        bool fail_after; /* open fails after opening the backing image */
        struct vbd_image *backing;
        bool backing_open_at_close;
        uint32_t depth; /* block_status answers this depth */
} mb;

static int mockb_open(struct vbd_image *img, const struct vbd_opts *o, struct vbd_err *err)
{
        mb.backing = vbd_image_open_backing(img, o->arg, err);
        if (!mb.backing)
                return err->code;
        mb.r_second = vbd_image_open_backing(img, o->arg, &(struct vbd_err){0}) ? 0 : -errno;
        if (mb.fail_after)
                return vbd_err_set(err, -EIO, "mockb: failing after the backing image");
        ev_add('b');
        return 0;
}

static int mockb_get_info(struct vbd_image *img, struct vbd_info *ret_info)
{
        *ret_info = *vbd_image_info(vbd_image_backing(img));
        ret_info->caps |= VBD_CAP_WRITE;
        return 0;
}

static void mockb_drain(struct vbd_image *img)
{
        ev_add('B');
        vbd_image_drained(img);
}

static void mockb_close(struct vbd_image *img)
{
        mb.backing_open_at_close =
            vbd_image_backing(img) == mb.backing && vbd_image_info(mb.backing)->size == MB;
        ev_add('x');
}

/* One extent of the whole range, from the layer mb.depth says. */
static int mockb_block_status(struct vbd_image *img, uint64_t offset, uint64_t len,
                              struct vbd_extent *ret, unsigned max, unsigned *ret_n)
{
        ret[0] = (struct vbd_extent){.len = len, .depth = mb.depth};
        *ret_n = 1;
        return 0;
}

static const struct vbd_driver mockb_driver = {
    .abi = VBD_DRIVER_ABI,
    .name = "mockb",
    .block_status = mockb_block_status,
    .description = "test driver with a backing image",
    .state_size = 8,
    .io_scratch_size = 16,
    .open = mockb_open,
    .get_info = mockb_get_info,
    .submit = mock_submit,
    .drain = mockb_drain,
    .close = mockb_close,
};

static const struct vbd_driver *const test_drivers[] = {&mock_driver, &mockf_driver, &mockb_driver,
                                                        NULL};

static void drained_cb(void *opaque)
{
        ev_add('D');
        (*(int *)opaque)++;
}

static void test_filters(void)
{
        struct vbd_err err = {0};
        struct vbd_image *img, *child;
        int done = 0;

        /* FILTER.key goes to the filter, plain keys to the bottom driver. */
        mock_reset();
        memset(&mf, 0, sizeof(mf));
        events[0] = '\0';
        img = vbd_image_open_drivers(test_drivers, "mockf:mock:a:b,k1=one,mockf.key=v,k2=two",
                                     false, NULL, NULL, &err);
        if (!img)
                fprintf(stderr, "filter spec: %s\n", err.msg);
        REQUIRE(img);
        CHECK(strcmp(mock.arg, "a:b") == 0);
        CHECK_EQ(mock.nkeys, 2);
        CHECK(strcmp(mock.values[1], "one") == 0 && strcmp(mock.values[2], "two") == 0);
        CHECK(mf.key_set && strcmp(mf.key, "v") == 0);
        child = vbd_image_child(img);
        CHECK(child != NULL && mf.child_at_open == child);
        CHECK(vbd_image_driver(child) == &mock_driver);
        CHECK(vbd_image_child(child) == NULL);
        CHECK(strcmp(vbd_image_name(img), "mockf:mock:a:b,k1=one,mockf.key=v,k2=two") == 0);
        CHECK(strcmp(vbd_image_name(child), "mock:a:b,k1=one,mockf.key=v,k2=two") == 0);
        /* io scratch: the filter's part (16-aligned), then the child's */
        CHECK_EQ(vbd_image_io_scratch_size(img), 32 + 32);
        {
                char scratch[64];

                CHECK((char *)vbd_image_child_scratch(img, scratch) == scratch + 32);
        }
        CHECK(vbd_image_find_layer(img, "mockf") == img);
        CHECK(vbd_image_find_layer(img, "mock") == child);
        CHECK(vbd_image_find_layer(img, "raw") == NULL);
        CHECK(vbd_image_info(img)->size == MB);
        CHECK(strcmp(events, "o") == 0);
        /* drain runs the filter's drain first; the image is drained when it reports */
        mf.defer_drain = true;
        vbd_image_drain(img, drained_cb, &done);
        CHECK_EQ(done, 0);
        CHECK(!vbd_image_is_drained(img));
        REQUIRE(mf.pending == img);
        vbd_image_drained(img);
        CHECK_EQ(done, 1);
        CHECK(vbd_image_is_drained(img));
        vbd_image_close(img);
        CHECK_EQ(mf.closes, 1);
        CHECK_EQ(mock.closes, 1); /* the core closed the child, after the filter */
        CHECK(mf.child_at_close == child);
        CHECK(strcmp(events, "ofDc") == 0);

        /* Default options; a filter over a filter gets the key in both layers. */
        memset(&mf, 0, sizeof(mf));
        img = vbd_image_open_drivers(test_drivers, "mockf:mock:x", false, NULL, NULL, &err);
        REQUIRE(img);
        CHECK(mf.key_set && strcmp(mf.key, "dflt") == 0);
        vbd_image_drain_close(img); /* inline: nothing deferred */
        CHECK_EQ(mf.closes, 1);
        memset(&mf, 0, sizeof(mf));
        img = vbd_image_open_drivers(test_drivers, "mockf:mockf:mock:x,mockf.key=both", false, NULL,
                                     NULL, &err);
        REQUIRE(img);
        CHECK_EQ(mf.opens, 2);
        CHECK(strcmp(mf.key, "both") == 0);
        CHECK_EQ(vbd_image_io_scratch_size(img), 32 + 32 + 32);
        events[0] = '\0';
        done = 0;
        vbd_image_drain(img, drained_cb, &done);
        CHECK(strcmp(events, "FfD") == 0); /* top first, then the one below */
        vbd_image_close(img);
        CHECK_EQ(mf.closes, 2);

        /* A failing lower layer leaves nothing open; a filter's open is not called. */
        memset(&mf, 0, sizeof(mf));
        mock_reset();
        mock.open_ret = -EACCES;
        CHECK(vbd_image_open_drivers(test_drivers, "mockf:mock:x", false, NULL, NULL, &err) ==
              NULL);
        CHECK_EQ(err.code, -EACCES);
        CHECK_EQ(mf.opens, 0);
        /* A filter given as a bottom driver needs a child spec. */
        CHECK(vbd_image_open_drivers(test_drivers, "mockf:x", false, NULL, NULL, &err) == NULL);
        CHECK(strstr(err.msg, "expected FILTER:DRIVER:ARG") != NULL);

        /* vbd_image_open_filter: stacking over an open image, and unwrapping it. */
        mock_reset();
        memset(&mf, 0, sizeof(mf));
        child = vbd_image_open_drivers(test_drivers, "mock:y", true, NULL, NULL, &err);
        REQUIRE(child);
        CHECK(vbd_image_open_filter("null", child, &err) == NULL);
        CHECK_EQ(err.code, -EINVAL);
        CHECK(vbd_image_open_filter("nosuch", child, &err) == NULL);
        CHECK_EQ(err.code, -ENOENT);
        if (vbd_image_find_driver("passthrough")) {
                img = vbd_image_open_filter("passthrough", child, &err);
                REQUIRE(img);
                CHECK(vbd_image_child(img) == child);
                CHECK(vbd_image_readonly(img));
                CHECK(strcmp(vbd_image_name(img), "passthrough:mock:y") == 0);
                done = 0;
                vbd_image_drain(img, drained_cb, &done);
                CHECK_EQ(done, 1);
                CHECK(vbd_image_unwrap(img) == child);
                CHECK_EQ(mock.closes, 0);
        }
        vbd_image_close(child);
        CHECK_EQ(mock.closes, 1);
}

static void test_backing(void)
{
        struct vbd_err err = {0};
        struct vbd_image *img;
        int done = 0;

        memset(&mb, 0, sizeof(mb));
        events[0] = '\0';
        img = vbd_image_open_drivers(test_drivers, "mockb:null:1M", false, NULL, NULL, &err);
        if (!img)
                fprintf(stderr, "backing: %s\n", err.msg);
        REQUIRE(img);
        CHECK(vbd_image_backing(img) == mb.backing);
        CHECK(vbd_image_readonly(mb.backing)); /* always read-only */
        CHECK(!vbd_image_readonly(img));
        CHECK_EQ(mb.r_second, -EEXIST); /* at most one */
        CHECK(vbd_image_child(img) == NULL);
        CHECK(vbd_image_find_layer(img, "null") == NULL); /* not a layer of the stack */
        /* mockb's drain, then the backing image's (null: none), then done */
        vbd_image_drain(img, drained_cb, &done);
        CHECK_EQ(done, 1);
        vbd_image_close(img); /* closes the backing image too (ASan: no leak) */
        CHECK(mb.backing_open_at_close);
        CHECK(strcmp(events, "bBDx") == 0);

        /* A filter over a driver with a backing image: the filter drains
         * first, then the driver, then (null: no drain) its backing image. */
        memset(&mb, 0, sizeof(mb));
        memset(&mf, 0, sizeof(mf));
        img = vbd_image_open_drivers(test_drivers, "mockf:mockb:null:1M", false, NULL, NULL, &err);
        REQUIRE(img);
        CHECK(vbd_image_backing(vbd_image_child(img)) == mb.backing);
        CHECK(vbd_image_backing(img) == NULL);
        events[0] = '\0';
        done = 0;
        mf.defer_drain = true;
        vbd_image_drain(img, drained_cb, &done);
        CHECK(strcmp(events, "f") == 0); /* nothing below drains before the top reported */
        vbd_image_drained(mf.pending);
        CHECK_EQ(done, 1);
        vbd_image_close(img);
        CHECK(mb.backing_open_at_close);
        CHECK(strcmp(events, "fBDcx") == 0); /* drain top down; close the filter, then mockb */

        /* Extent depths: within the chain (one backing file here) or none;
         * deeper is malformed; a filter passes them on. */
        memset(&mb, 0, sizeof(mb));
        memset(&mf, 0, sizeof(mf));
        img = vbd_image_open_drivers(test_drivers, "mockf:mockb:null:1M", false, NULL, NULL, &err);
        REQUIRE(img);
        {
                struct vbd_extent ext[2];
                unsigned n = 0;

                for (uint32_t d = 0; d < 3; d++) {
                        mb.depth = d == 2 ? VBD_EXTENT_DEPTH_NONE : d;
                        CHECK_EQ(vbd_image_block_status(img, 0, MB, ext, 2, &n), 0);
                        CHECK(n == 1 && ext[0].len == MB && ext[0].depth == mb.depth);
                }
                mb.depth = 2;
                CHECK_EQ(vbd_image_block_status(img, 0, MB, ext, 2, &n), -EIO);
                /* null below: no block_status, depth 0 (itself) */
                CHECK_EQ(vbd_image_block_status(mb.backing, 0, MB, ext, 2, &n), 0);
                CHECK(n == 1 && ext[0].depth == 0);
        }
        done = 0;
        vbd_image_drain(img, drained_cb, &done);
        CHECK_EQ(done, 1);
        vbd_image_close(img);

        /* The backing image's errors come back; an open failing after it got one
         * leaves nothing open. */
        memset(&mb, 0, sizeof(mb));
        CHECK(vbd_image_open_drivers(test_drivers, "mockb:null:7", false, NULL, NULL, &err) ==
              NULL);
        CHECK(strstr(err.msg, "not a positive multiple of 512") != NULL);
        mb.fail_after = true;
        CHECK(vbd_image_open_drivers(test_drivers, "mockb:null:1M", false, NULL, NULL, &err) ==
              NULL);
        CHECK_EQ(err.code, -EIO);
}

/* passthrough over null and over itself: data and info are the child's. */
static void test_passthrough_null(void)
{
        static unsigned char buf[8192];
        struct iovec iov = {buf, sizeof(buf)};
        struct vbd_err err = {0};
        struct done_rec d = {0};
        struct vbd_io io = {.op = VBD_OP_READ,
                            .offset = 4096,
                            .len = sizeof(buf),
                            .iov = &iov,
                            .iovcnt = 1,
                            .done = rec_done,
                            .opaque = &d};
        struct vbd_extent ext[4];
        struct vbd_image *img;
        unsigned n = 0;
        void *scratch;
        int done = 0;

        if (!vbd_image_find_driver("passthrough"))
                return;
        img = vbd_image_open("passthrough:passthrough:null:1G,passthrough.trace=on", false, NULL,
                             NULL, &err);
        if (!img)
                fprintf(stderr, "passthrough: %s\n", err.msg);
        REQUIRE(img);
        CHECK(vbd_image_info(img)->size == 1ULL << 30);
        CHECK(vbd_image_find_layer(img, "passthrough") == img);
        CHECK(vbd_image_find_layer(vbd_image_child(img), "passthrough") == vbd_image_child(img));
        scratch = calloc(1, vbd_image_io_scratch_size(img));
        REQUIRE(scratch);
        io.scratch = scratch;
        memset(buf, 0xaa, sizeof(buf));
        vbd_image_submit(img, &io);
        CHECK_EQ(d.calls, 1);
        CHECK_EQ(d.status, 0);
        CHECK(buf[0] == 0 && buf[sizeof(buf) - 1] == 0);
        CHECK(io.done == rec_done && io.opaque == &d); /* ours, untouched */
        io.op = VBD_OP_FLUSH;
        io.offset = io.len = 0;
        io.iov = NULL;
        io.iovcnt = 0;
        vbd_image_submit(img, &io);
        CHECK_EQ(d.calls, 2);
        CHECK_EQ(d.status, 0);
        CHECK_EQ(vbd_image_block_status(img, 0, 1 << 20, ext, 4, &n), 0);
        CHECK_EQ(n, 1);
        CHECK_EQ(ext[0].flags, VBD_EXTENT_HOLE | VBD_EXTENT_ZERO);
        vbd_image_drain(img, drained_cb, &done);
        CHECK_EQ(done, 1);
        vbd_image_close(img);
        free(scratch);
}

static void test_misc(void)
{
        static const struct {
                int op;
                const char *name;
        } names[] = {
            {VBD_OP_READ, "read"},
            {VBD_OP_WRITE, "write"},
            {VBD_OP_FLUSH, "flush"},
            {VBD_OP_DISCARD, "discard"},
            {VBD_OP_WRITE_ZEROES, "write-zeroes"},
            {_VBD_OP_MAX, "unknown"},
            {-3, "unknown"},
        };
        struct vbd_err err = {0};
        char *text = NULL;
        size_t size = 0;
        FILE *f;

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                CHECK(strcmp(vbd_op_name((enum vbd_op)names[i].op), names[i].name) == 0);

        CHECK_EQ(vbd_err_set(&err, EIO, "x %d", 5), -EIO); /* positive codes are negated */
        CHECK_EQ(err.code, -EIO);
        CHECK(strcmp(err.msg, "x 5") == 0);
        CHECK_EQ(vbd_err_set(NULL, -ENOENT, "nothing"), -ENOENT);

        f = open_memstream(&text, &size);
        REQUIRE(f);
        vbd_image_list_drivers(f);
        fclose(f);
        CHECK(strstr(text, "raw") && strstr(text, "raw:PATH[,direct=on|off|auto]"));
        CHECK(strstr(text, "null") && strstr(text, "reads zeroes"));
        free(text);
}

int main(void)
{
        test_parse_size();
        test_bad_specs();
        test_good_specs();
        test_dispatcher();
        test_null();
        test_filters();
        test_backing();
        test_passthrough_null();
        test_misc();
        return check_result("test-image");
}
