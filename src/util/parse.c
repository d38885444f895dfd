/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>

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
