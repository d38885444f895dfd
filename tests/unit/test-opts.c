/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The typed option tables (src/opts.c): every type, bounds, flags, defaults, errors. */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "vbd/driver.h"
#include "vbd/macro.h"
#include "vbd/opts.h"

enum { T_NAME, T_FLAG, T_DIRECT, T_CACHE, T_DEPTH, T_MODE, T_REGION, T_TO, T_N };
static const char *const modes[] = {"pasm", "precopy", NULL};
static const struct vbd_opt_desc desc[T_N] = {
    [T_NAME] = VBD_OPT_STRING_DEF("name", "dflt", "a name"),
    [T_FLAG] = VBD_OPT_BOOL_DEF("flag", NULL, "a boolean"),
    [T_DIRECT] = VBD_OPT_TRISTATE_DEF("direct", "auto", "T_DIRECT"),
    [T_CACHE] = VBD_OPT_SIZE_DEF("cache", 0, 1ull << 30, "1M", "a size"),
    [T_DEPTH] = VBD_OPT_UINT_DEF("depth", 1, 64, "4", "a count"),
    [T_MODE] = VBD_OPT_ENUM_DEF("mode", modes, "pasm", "a mode"),
    [T_REGION] = {.name = "region",
                  .type = VBD_OPT_SIZE,
                  .flags = VBD_OPT_POW2,
                  .min = 64 << 10,
                  .max = 64 << 20,
                  .def = "1M"},
    [T_TO] = {.name = "to", .type = VBD_OPT_STRING, .flags = VBD_OPT_REQUIRED | VBD_OPT_NONEMPTY},
};

static int parse(struct vbd_opt_value *v, const char *key, const char *text, struct vbd_err *err)
{
        memset(err, 0, sizeof(*err));
        return vbd_opts_parse(desc, T_N, key, text, v, err);
}

static void test_values(void)
{
        struct vbd_opt_value v[T_N] = {{0}};
        struct vbd_err err;

        CHECK_EQ(parse(v, "to", "nbd://x", &err), 0);
        CHECK_EQ(parse(v, "flag", "yes", &err), 0);
        CHECK_EQ(parse(v, "direct", "off", &err), 0);
        CHECK_EQ(parse(v, "cache", "2M", &err), 0);
        CHECK_EQ(parse(v, "depth", "64", &err), 0);
        CHECK_EQ(parse(v, "mode", "precopy", &err), 0);
        CHECK_EQ(vbd_opts_finish(desc, T_N, v, &err), 0);
        CHECK(!strcmp(v[T_TO].s, "nbd://x"));
        CHECK(!strcmp(v[T_NAME].s, "dflt") && v[T_NAME].set);
        CHECK(v[T_FLAG].b);
        CHECK_EQ(v[T_DIRECT].t, VBD_OFF);
        CHECK_EQ(v[T_CACHE].u, 2 << 20);
        CHECK_EQ(v[T_DEPTH].u, 64);
        CHECK_EQ(v[T_MODE].e, 1);
        CHECK_EQ(v[T_REGION].u, 1 << 20);
}

static void test_defaults(void)
{
        struct vbd_opt_value v[T_N] = {{0}};
        struct vbd_err err = {0};

        /* "to" is required. */
        CHECK_EQ(vbd_opts_finish(desc, T_N, v, &err), -EINVAL);
        CHECK(strstr(err.msg, "to") != NULL);
        memset(v, 0, sizeof(v));
        CHECK_EQ(parse(v, "to", "x", &err), 0);
        CHECK_EQ(vbd_opts_finish(desc, T_N, v, &err), 0);
        CHECK(!v[T_FLAG].set && !v[T_FLAG].b); /* no default: unset, false */
        CHECK_EQ(v[T_DIRECT].t, VBD_AUTO);
        CHECK_EQ(v[T_DEPTH].u, 4);
        CHECK_EQ(v[T_MODE].e, 0);
}

static void test_errors(void)
{
        static const struct {
                const char *key, *text;
                int code;
                const char *says;
        } bad[] = {
            {"nope", "1", -ENOENT, "nope"},
            {"to", "", -EINVAL, "empty"},
            {"flag", "maybe", -EINVAL, "on or off"},
            {"flag", "auto", -EINVAL, "on or off"},
            {"direct", "sometimes", -EINVAL, "auto"},
            {"cache", "1MB", -EINVAL, "size"},
            {"cache", "2G", -ERANGE, "1073741824"},
            {"cache", "-1", -EINVAL, "size"},
            {"depth", "0", -ERANGE, "from 1 to 64"},
            {"depth", "65", -ERANGE, "from 1 to 64"},
            {"depth", "4k", -EINVAL, "integer"},
            {"depth", "99999999999999999999999", -ERANGE, "integer"},
            {"mode", "fast", -EINVAL, "pasm|precopy"},
            {"region", "96K", -EINVAL, "power of two"},
            {"region", "32K", -ERANGE, "power of two"},
            {"region", "128M", -ERANGE, "67108864"},
            {"depth", NULL, -EINVAL, "value"},
        };

        for (size_t i = 0; i < VBD_ARRAY_SIZE(bad); i++) {
                struct vbd_opt_value v[T_N] = {{0}};
                struct vbd_err err;
                int r = parse(v, bad[i].key, bad[i].text, &err);

                if (r != bad[i].code || !strstr(err.msg, bad[i].says) || err.code != r) {
                        fprintf(stderr, "case %zu %s=%s: %d \"%s\"\n", i, bad[i].key,
                                bad[i].text ? bad[i].text : "(null)", r, err.msg);
                        check_failures++;
                }
        }
}

static void test_twice(void)
{
        struct vbd_opt_value v[T_N] = {{0}};
        struct vbd_err err;

        CHECK_EQ(parse(v, "depth", "2", &err), 0);
        CHECK_EQ(parse(v, "depth", "3", &err), -EEXIST);
        CHECK_EQ(v[T_DEPTH].u, 2); /* the first value stands */
        /* A failed parse leaves the slot unset, so the default applies. */
        CHECK_EQ(parse(v, "cache", "x", &err), -EINVAL);
        CHECK(!v[T_CACHE].set);
}

static void test_bad_default(void)
{
        static const struct vbd_opt_desc broken[] = {VBD_OPT_UINT_DEF("n", 1, 2, "3", "")};
        struct vbd_opt_value v[1] = {{0}};
        struct vbd_err err = {0};

        CHECK_EQ(vbd_opts_finish(broken, 1, v, &err), -ERANGE);
        CHECK(strstr(err.msg, "bad default") != NULL);
}

int main(void)
{
        test_values();
        test_defaults();
        test_errors();
        test_twice();
        test_bad_default();
        return check_result("opts");
}
