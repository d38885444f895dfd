/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The config file: [daemon] and [ctl] sections of key = value lines, read
 * with inih.  Every key is known and every value checked; the first problem
 * stops the parse with a message that names the file and line.
 */
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/parse.h"
#include "config.h"
#include "vbd/log.h"
#include "vbd/macro.h"

static const char *const level_names[] = {
    [VBD_LOG_ERR] = "err",
    [VBD_LOG_WARNING] = "warning",
    [VBD_LOG_INFO] = "info",
    [VBD_LOG_DEBUG] = "debug",
};

int vbd_config_parse_log_level(const char *s)
{
        for (unsigned i = 0; i < VBD_ARRAY_SIZE(level_names); i++)
                if (level_names[i] && strcmp(s, level_names[i]) == 0)
                        return (int)i;
        if (strcmp(s, "error") == 0)
                return VBD_LOG_ERR;
        if (strcmp(s, "warn") == 0)
                return VBD_LOG_WARNING;
        return -EINVAL;
}

const char *vbd_config_log_level_name(int level)
{
        if (level < 0 || (size_t)level >= VBD_ARRAY_SIZE(level_names) || !level_names[level])
                return "unknown";
        return level_names[level];
}

void vbd_config_init(struct vbd_config *c)
{
        memset(c, 0, sizeof(*c));
        snprintf(c->runtime_dir, sizeof(c->runtime_dir), "%s", VBD_RUNTIME_DIR_DEFAULT);
        c->log_level = VBD_LOG_INFO;
        snprintf(c->backend_type, sizeof(c->backend_type), "vbd3");
        c->aio_depth = 1024;
        c->ctl_max_clients = 16;
        snprintf(c->vbdd, sizeof(c->vbdd), "%s/vbdd", VBD_SBINDIR);
        c->spawn_timeout_s = 10;
}

struct parse_ctx {
        struct vbd_config *c;
        char msg[200];
};

static int set_msg(struct parse_ctx *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int set_msg(struct parse_ctx *p, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
        va_end(ap);
        return 0; /* inih: stop with an error */
}

static int set_uint(struct parse_ctx *p, const char *name, const char *value, unsigned min,
                    unsigned max, unsigned *ret)
{
        unsigned long long n;
        int r = vbd_parse_uint(value, max, &n);

        if (r == -EINVAL)
                return set_msg(p, "%s: '%s' is not a number", name, value);
        if (r < 0 || n < min)
                return set_msg(p, "%s: '%s' is not in %u..%u", name, value, min, max);
        *ret = (unsigned)n;
        return 1;
}

static int set_str(struct parse_ctx *p, const char *name, const char *value, char *buf, size_t size)
{
        if (strlen(value) >= size)
                return set_msg(p, "%s: value longer than %zu bytes", name, size - 1);
        memcpy(buf, value, strlen(value) + 1);
        return 1;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
        struct parse_ctx *p = user;
        struct vbd_config *c = p->c;

        if (strcmp(section, "daemon") == 0) {
                if (strcmp(name, "runtime-dir") == 0) {
                        if (value[0] != '/')
                                return set_msg(p, "runtime-dir: '%s' is not absolute", value);
                        return set_str(p, name, value, c->runtime_dir, sizeof(c->runtime_dir));
                }
                if (strcmp(name, "log-level") == 0) {
                        int l = vbd_config_parse_log_level(value);

                        if (l < 0)
                                return set_msg(p,
                                               "log-level: '%s' is not err, warning, info "
                                               "or debug",
                                               value);
                        c->log_level = l;
                        return 1;
                }
                if (strcmp(name, "debug") == 0)
                        return set_str(p, name, value, c->debug, sizeof(c->debug));
                if (strcmp(name, "backend-type") == 0) {
                        if (!value[0] || strchr(value, '/'))
                                return set_msg(p, "backend-type: bad name '%s'", value);
                        return set_str(p, name, value, c->backend_type, sizeof(c->backend_type));
                }
                if (strcmp(name, "backend-domid") == 0)
                        return set_uint(p, name, value, 0, 0x7fef, &c->backend_domid);
                if (strcmp(name, "aio-depth") == 0)
                        return set_uint(p, name, value, 16, 65536, &c->aio_depth);
                if (strcmp(name, "ctl-max-clients") == 0)
                        return set_uint(p, name, value, 1, 1024, &c->ctl_max_clients);
                if (strcmp(name, "max-queues") == 0) {
                        if (strcmp(value, "auto") == 0) {
                                c->max_queues = 0;
                                return 1;
                        }
                        return set_uint(p, name, value, 1, VBD_CONFIG_MAX_QUEUES, &c->max_queues);
                }
        } else if (strcmp(section, "ctl") == 0) {
                if (strcmp(name, "vbdd") == 0) {
                        if (value[0] != '/')
                                return set_msg(p, "vbdd: '%s' is not absolute", value);
                        return set_str(p, name, value, c->vbdd, sizeof(c->vbdd));
                }
                if (strcmp(name, "spawn") == 0) {
                        if (strcmp(value, "direct") == 0)
                                c->spawn_systemd = false;
                        else if (strcmp(value, "systemd") == 0)
                                c->spawn_systemd = true;
                        else
                                return set_msg(p, "spawn: '%s' is not direct or systemd", value);
                        return 1;
                }
                if (strcmp(name, "spawn-timeout") == 0)
                        return set_uint(p, name, value, 1, 3600, &c->spawn_timeout_s);
        } else {
                return set_msg(p, "unknown section [%s]", section);
        }
        return set_msg(p, "unknown key '%s' in [%s]", name, section);
}

int vbd_config_load(struct vbd_config *c, const char *path, bool must_exist, struct vbd_err *err)
{
        struct parse_ctx p = {.c = c};
        struct vbd_config tmp = *c;
        int r;

        if (access(path, F_OK) < 0 && errno == ENOENT && !must_exist)
                return 0;
        p.c = &tmp;
        r = ini_parse(path, handler, &p);
        if (r == 0) {
                *c = tmp;
                return 0;
        }
        err->code = r == -1 ? -errno : -EINVAL;
        if (r == -1)
                snprintf(err->msg, sizeof(err->msg), "%s: %s", path, strerror(errno));
        else if (r == -2)
                snprintf(err->msg, sizeof(err->msg), "%s: out of memory", path);
        else
                snprintf(err->msg, sizeof(err->msg), "%s:%d: %s", path, r,
                         p.msg[0] ? p.msg : "syntax error");
        if (err->code == 0)
                err->code = -EIO;
        return err->code;
}
