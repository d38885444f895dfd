/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Logging.  Each file defines VBD_LOG_TOPIC ("ring", "drv.raw", ...) before
 * including this header.  Messages go to stderr (or the journal when stderr
 * is connected to it) prefixed with the VBD id and the topic:
 *     vbd[5/51712] ring: bad request ...
 * Debug messages are printed only for topics enabled with vbd_log_enable()
 * (vbdd -D ring,drv.qcow2, or -D all).
 */
#pragma once

#include <errno.h>
#include <stdbool.h>

#ifndef VBD_LOG_TOPIC
#define VBD_LOG_TOPIC "vbd"
#endif

enum vbd_log_level { VBD_LOG_ERR = 3, VBD_LOG_WARNING = 4, VBD_LOG_INFO = 6, VBD_LOG_DEBUG = 7 };

void vbd_log_set_id(const char *id);
void vbd_log_set_level(enum vbd_log_level level);
int vbd_log_enable(const char *topics); /* comma-separated, "all" */
bool vbd_log_debug_enabled(const char *topic);

/* Returns -abs(err) so that callers can "return vbd_log_errno(r, ...)". %m prints err. */
int vbd_log_internal(enum vbd_log_level level, int err, const char *topic, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define vbd_log_errno(err, ...) vbd_log_internal(VBD_LOG_ERR, (err), VBD_LOG_TOPIC, __VA_ARGS__)
#define vbd_err(...)            (void)vbd_log_internal(VBD_LOG_ERR, 0, VBD_LOG_TOPIC, __VA_ARGS__)
#define vbd_warn(...)           (void)vbd_log_internal(VBD_LOG_WARNING, 0, VBD_LOG_TOPIC, __VA_ARGS__)
#define vbd_info(...)           (void)vbd_log_internal(VBD_LOG_INFO, 0, VBD_LOG_TOPIC, __VA_ARGS__)
#define vbd_debug(...)                                                                             \
        do {                                                                                       \
                if (vbd_log_debug_enabled(VBD_LOG_TOPIC))                                          \
                        (void)vbd_log_internal(VBD_LOG_DEBUG, 0, VBD_LOG_TOPIC, __VA_ARGS__);      \
        } while (0)

/* Rate limit for guest-triggerable messages: at most burst per interval. */
struct vbd_ratelimit {
        unsigned interval_ms, burst;
        unsigned long long begin_ms;
        unsigned count, suppressed;
};
#define VBD_RATELIMIT_INIT(ms, n)                                                                  \
        {                                                                                          \
                .interval_ms = (ms), .burst = (n)                                                  \
        }
bool vbd_ratelimit_ok(struct vbd_ratelimit *rl);
