/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Typed option tables (include/vbd/opts.h): one parser for every driver's
 * spec options and every job's control arguments, so sizes, booleans and
 * on/off/auto are spelled the same everywhere.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "util/parse.h"
#include "vbd/driver.h"
#include "vbd/macro.h"
#include "vbd/opts.h"

static const char *const bool_true[] = {"on", "yes", "true", "1"};
static const char *const bool_false[] = {"off", "no", "false", "0"};

static int in_list(const char *s, const char *const *list, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (!strcmp(s, list[i]))
                        return 1;
        return 0;
}

static const char *type_help(const struct vbd_opt_desc *d)
{
        switch (d->type) {
        case VBD_OPT_BOOL:
                return "on or off";
        case VBD_OPT_TRISTATE:
                return "on, off or auto";
        case VBD_OPT_SIZE:
                return "a size (K, M, G, T suffixes)";
        case VBD_OPT_UINT:
                return "an unsigned integer";
        case VBD_OPT_ENUM:
                return "one of the listed words";
        case VBD_OPT_STRING:
                break;
        }
        return "a string";
}

static int bad(const struct vbd_opt_desc *d, const char *text, int code, struct vbd_err *err)
{
        if (d->type == VBD_OPT_ENUM && d->choices) {
                char list[160] = "";
                size_t len = 0;

                for (unsigned i = 0; d->choices[i] && len < sizeof(list); i++)
                        len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s",
                                                i ? "|" : "", d->choices[i]);
                return vbd_err_set(err, code, "%s=%s: must be %s", d->name, text, list);
        }
        if ((d->type == VBD_OPT_SIZE || d->type == VBD_OPT_UINT) && (d->min || d->max))
                return vbd_err_set(err, code, "%s=%s: must be %s from %" PRIu64 " to %" PRIu64 "%s",
                                   d->name, text, type_help(d), d->min,
                                   d->max ? d->max : UINT64_MAX,
                                   d->flags & VBD_OPT_POW2 ? ", a power of two" : "");
        return vbd_err_set(err, code, "%s=%s: must be %s%s", d->name, text, type_help(d),
                           d->flags & VBD_OPT_POW2 ? ", a power of two" : "");
}

/* Parse text for d into v; no bookkeeping of set/duplicates. */
static int parse_one(const struct vbd_opt_desc *d, const char *text, struct vbd_opt_value *v,
                     struct vbd_err *err)
{
        unsigned long long n;
        uint64_t u;
        int r;

        switch (d->type) {
        case VBD_OPT_STRING:
                if ((d->flags & VBD_OPT_NONEMPTY) && !*text)
                        return vbd_err_set(err, -EINVAL, "%s: must not be empty", d->name);
                v->s = text;
                return 0;
        case VBD_OPT_BOOL:
        case VBD_OPT_TRISTATE:
                if (in_list(text, bool_true, VBD_ARRAY_SIZE(bool_true))) {
                        if (d->type == VBD_OPT_BOOL)
                                v->b = true;
                        else
                                v->t = VBD_ON;
                } else if (in_list(text, bool_false, VBD_ARRAY_SIZE(bool_false))) {
                        if (d->type == VBD_OPT_BOOL)
                                v->b = false;
                        else
                                v->t = VBD_OFF;
                } else if (d->type == VBD_OPT_TRISTATE && !strcmp(text, "auto")) {
                        v->t = VBD_AUTO;
                } else {
                        return bad(d, text, -EINVAL, err);
                }
                return 0;
        case VBD_OPT_SIZE:
        case VBD_OPT_UINT:
                if (d->type == VBD_OPT_SIZE) {
                        r = vbd_parse_size(text, &u);
                } else {
                        r = vbd_parse_uint(text, UINT64_MAX, &n);
                        u = n;
                }
                if (r < 0)
                        return bad(d, text, r, err);
                if (u < d->min || (d->max && u > d->max))
                        return bad(d, text, -ERANGE, err);
                if ((d->flags & VBD_OPT_POW2) && !vbd_is_pow2(u))
                        return bad(d, text, -EINVAL, err);
                v->u = u;
                return 0;
        case VBD_OPT_ENUM:
                for (unsigned i = 0; d->choices && d->choices[i]; i++)
                        if (!strcmp(text, d->choices[i])) {
                                v->e = i;
                                return 0;
                        }
                return bad(d, text, -EINVAL, err);
        }
        return vbd_err_set(err, -EINVAL, "%s: unknown option type", d->name);
}

int vbd_opts_parse(const struct vbd_opt_desc *desc, unsigned n, const char *key, const char *text,
                   struct vbd_opt_value *values, struct vbd_err *err)
{
        for (unsigned i = 0; i < n; i++) {
                struct vbd_opt_value v = {0};
                int r;

                if (strcmp(desc[i].name, key))
                        continue;
                if (values[i].set)
                        return vbd_err_set(err, -EEXIST, "%s given twice", key);
                if (!text)
                        return vbd_err_set(err, -EINVAL, "%s: needs a value", key);
                r = parse_one(&desc[i], text, &v, err);
                if (r < 0)
                        return r;
                v.set = true;
                values[i] = v;
                return 0;
        }
        return vbd_err_set(err, -ENOENT, "unknown option \"%s\"", key);
}

int vbd_opts_finish(const struct vbd_opt_desc *desc, unsigned n, struct vbd_opt_value *values,
                    struct vbd_err *err)
{
        for (unsigned i = 0; i < n; i++) {
                int r;

                if (values[i].set)
                        continue;
                if (desc[i].flags & VBD_OPT_REQUIRED)
                        return vbd_err_set(err, -EINVAL, "%s is required", desc[i].name);
                if (!desc[i].def)
                        continue;
                r = parse_one(&desc[i], desc[i].def, &values[i], err);
                if (r < 0) /* a bad default is the table's bug: say so */
                        return vbd_err_set(err, r, "%s: bad default \"%s\"", desc[i].name,
                                           desc[i].def);
                values[i].set = true;
        }
        return 0;
}
