/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdint.h>

struct simfront_env;

int simfront_env_seterr(struct simfront_env *env, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void simfront_sleep_ms(int ms);
