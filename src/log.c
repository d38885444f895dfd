/* SPDX-License-Identifier: LGPL-2.1-or-later */
#define VBD_LOG_TOPIC "log"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vbd/log.h"
#include "vbd/time.h"

static char log_id[64] = "vbd";
static enum vbd_log_level log_level = VBD_LOG_INFO;
static char debug_topics[256];
static bool debug_all;

void vbd_log_set_id(const char *id)
{
        snprintf(log_id, sizeof(log_id), "%s", id);
}

void vbd_log_set_level(enum vbd_log_level level)
{
        log_level = level;
}

int vbd_log_enable(const char *topics)
{
        if (strlen(topics) + 3 > sizeof(debug_topics))
                return -EINVAL;
        if (strcmp(topics, "all") == 0)
                debug_all = true;
        snprintf(debug_topics, sizeof(debug_topics), ",%s,", topics);
        return 0;
}

bool vbd_log_debug_enabled(const char *topic)
{
        char key[80];

        if (debug_all || log_level >= VBD_LOG_DEBUG)
                return true;
        if (!debug_topics[0])
                return false;
        snprintf(key, sizeof(key), ",%s,", topic);
        return strstr(debug_topics, key) != NULL;
}

int vbd_log_internal(enum vbd_log_level level, int err, const char *topic, const char *fmt, ...)
{
        char buf[1024], *p;
        size_t n;
        va_list ap;

        err = err < 0 ? -err : err;
        if (level > log_level && !(level == VBD_LOG_DEBUG && vbd_log_debug_enabled(topic)))
                return -err;

        /* Expand %m ourselves so that it prints err, not errno. */
        n = 0;
        for (const char *f = fmt; *f && n < sizeof(buf) - 1; f++) {
                if (f[0] == '%' && f[1] == 'm') {
                        n += snprintf(buf + n, sizeof(buf) - n, "%s", strerror(err));
                        if (n >= sizeof(buf))
                                n = sizeof(buf) - 1;
                        f++;
                } else if (f[0] == '%' && f[1] == '%') {
                        buf[n++] = *f++;
                        if (n < sizeof(buf) - 1)
                                buf[n++] = *f;
                } else {
                        buf[n++] = *f;
                }
        }
        buf[n] = '\0';

        char msg[2048];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), buf, ap);
        va_end(ap);
        p = msg + strlen(msg);
        while (p > msg && p[-1] == '\n')
                *--p = '\0';

        /* <N> prefix is understood by journald when stderr is the journal. */
        if (getenv("JOURNAL_STREAM"))
                fprintf(stderr, "<%d>%s %s: %s\n", (int)level, log_id, topic, msg);
        else
                fprintf(stderr, "%s %s: %s\n", log_id, topic, msg);
        return -err;
}

bool vbd_ratelimit_ok(struct vbd_ratelimit *rl)
{
        unsigned long long t = vbd_now_ms();

        if (rl->begin_ms == 0 || t - rl->begin_ms >= rl->interval_ms) {
                if (rl->suppressed)
                        fprintf(stderr, "%s log: %u messages suppressed\n", log_id, rl->suppressed);
                rl->begin_ms = t;
                rl->count = 0;
                rl->suppressed = 0;
        }
        if (rl->count < rl->burst) {
                rl->count++;
                return true;
        }
        rl->suppressed++;
        return false;
}
