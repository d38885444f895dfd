/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Typed option tables.  A driver, filter or job describes its options once;
 * the core parses them (from a spec's ",key=value" list, or from a control
 * command's JSON arguments) and hands over checked values, so every option
 * of every driver spells sizes, booleans and on/off/auto the same way.
 *
 *   enum { OPT_DIRECT, OPT_CACHE_SIZE };
 *   static const struct vbd_opt_desc opts[] = {
 *           [OPT_DIRECT] = VBD_OPT_TRISTATE_DEF("direct", VBD_AUTO, "O_DIRECT"),
 *           [OPT_CACHE_SIZE] = VBD_OPT_SIZE_DEF("cache-size", 0, 1ull << 30, "1M", "..."),
 *   };
 *   ... o->values[OPT_DIRECT].t, o->values[OPT_CACHE_SIZE].u
 *
 * Spellings accepted by the parser:
 *   BOOL      on|off|yes|no|true|false|1|0 (JSON: true/false)
 *   TRISTATE  the BOOL spellings and auto
 *   SIZE      an integer with an optional K, M, G, T suffix (powers of 1024;
 *             JSON: an integer)
 *   UINT      a decimal integer (JSON: an integer)
 *   ENUM      one of choices[] (its index in .e)
 *   STRING    any text without NUL; the parsed value points into the input
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

struct vbd_err;

enum vbd_opt_type {
        VBD_OPT_STRING,
        VBD_OPT_BOOL,
        VBD_OPT_TRISTATE,
        VBD_OPT_SIZE,
        VBD_OPT_UINT,
        VBD_OPT_ENUM,
};

enum vbd_tristate { VBD_AUTO = -1, VBD_OFF = 0, VBD_ON = 1 };

enum vbd_opt_flag {
        VBD_OPT_REQUIRED = 1 << 0, /* no default: the option must be given */
        VBD_OPT_NONEMPTY = 1 << 1, /* STRING: not "" */
        VBD_OPT_POW2 = 1 << 2,     /* SIZE, UINT: a power of two */
};

struct vbd_opt_desc {
        const char *name; /* [a-z0-9-]+ */
        enum vbd_opt_type type;
        unsigned flags;             /* enum vbd_opt_flag */
        uint64_t min, max;          /* SIZE, UINT: inclusive bounds (max 0: no bound) */
        const char *const *choices; /* ENUM: NULL-terminated */
        const char *def;            /* the default, spelled as a value; NULL: unset */
        const char *help;           /* one line for --help and the man pages */
};

struct vbd_opt_value {
        bool set; /* given, or a default applied */
        union {
                const char *s;       /* STRING */
                bool b;              /* BOOL */
                enum vbd_tristate t; /* TRISTATE */
                uint64_t u;          /* SIZE, UINT */
                unsigned e;          /* ENUM: index into choices */
        };
};

#define VBD_OPT_STRING_DEF(n, d, h)                                                                \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_STRING, .def = (d), .help = (h)                       \
        }
#define VBD_OPT_BOOL_DEF(n, d, h)                                                                  \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_BOOL, .def = (d), .help = (h)                         \
        }
#define VBD_OPT_TRISTATE_DEF(n, d, h)                                                              \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_TRISTATE, .def = (d), .help = (h)                     \
        }
#define VBD_OPT_SIZE_DEF(n, lo, hi, d, h)                                                          \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_SIZE, .min = (lo), .max = (hi), .def = (d),           \
                .help = (h)                                                                        \
        }
#define VBD_OPT_UINT_DEF(n, lo, hi, d, h)                                                          \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_UINT, .min = (lo), .max = (hi), .def = (d),           \
                .help = (h)                                                                        \
        }
#define VBD_OPT_ENUM_DEF(n, c, d, h)                                                               \
        {                                                                                          \
                .name = (n), .type = VBD_OPT_ENUM, .choices = (c), .def = (d), .help = (h)         \
        }

/*
 * Parse text as the value of desc[i] where desc[i].name == key (n entries).
 * 0; -ENOENT for an unknown key, -EEXIST for a key given twice, -EINVAL or
 * -ERANGE for a bad value; err says which option and what it accepts.
 */
int vbd_opts_parse(const struct vbd_opt_desc *desc, unsigned n, const char *key, const char *text,
                   struct vbd_opt_value *values, struct vbd_err *err);
/* After the last vbd_opts_parse: apply defaults, check REQUIRED.  0 or -EINVAL + err. */
int vbd_opts_finish(const struct vbd_opt_desc *desc, unsigned n, struct vbd_opt_value *values,
                    struct vbd_err *err);
/* Size with an optional K/M/G/T suffix (powers of 1024): 0, -EINVAL, -ERANGE. */
int vbd_parse_size(const char *s, uint64_t *ret);
