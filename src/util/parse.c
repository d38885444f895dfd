/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "util/parse.h"

int vbd_parse_uint(const char *s, unsigned long long max, unsigned long long *ret)
{
        unsigned long long n = 0;
        const char *p = s;

        if (!s || !*s)
                return -EINVAL;
        for (; *p; p++) {
                unsigned d;

                if (*p < '0' || *p > '9')
                        return -EINVAL;
                d = (unsigned)(*p - '0');
                if (d > max || n > (max - d) / 10) {
                        /* Still a number: finish checking the syntax first. */
                        while (*++p)
                                if (*p < '0' || *p > '9')
                                        return -EINVAL;
                        return -ERANGE;
                }
                n = n * 10 + d;
        }
        *ret = n;
        return 0;
}

int vbd_parse_u32(const char *s, uint32_t max, uint32_t *ret)
{
        unsigned long long n;
        int r = vbd_parse_uint(s, max, &n);

        if (r == 0)
                *ret = (uint32_t)n;
        return r;
}

int vbd_parse_size(const char *s, uint64_t *ret)
{
        uint64_t v = 0;
        unsigned shift = 0;
        const char *p = s;

        if (!s || !isdigit((unsigned char)*p))
                return -EINVAL;
        for (; isdigit((unsigned char)*p); p++) {
                unsigned d = (unsigned)(*p - '0');

                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        switch (*p) {
        case '\0':
                break;
        case 'k':
        case 'K':
                shift = 10;
                break;
        case 'm':
        case 'M':
                shift = 20;
                break;
        case 'g':
        case 'G':
                shift = 30;
                break;
        case 't':
        case 'T':
                shift = 40;
                break;
        default:
                return -EINVAL;
        }
        if (shift && p[1] != '\0' && strcmp(p + 1, "iB") != 0)
                return -EINVAL;
        if (shift && v > (UINT64_MAX >> shift))
                return -ERANGE;
        *ret = v << shift;
        return 0;
}
