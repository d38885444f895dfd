/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The monotonic clock, the one time base of vbd (latencies, timeouts, rates). */
#pragma once

#include <stdint.h>
#include <time.h>

static inline uint64_t vbd_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t vbd_now_ms(void)
{
        return vbd_now_ns() / 1000000u;
}
