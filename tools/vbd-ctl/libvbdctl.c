/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "libvbdctl.h"
#include "vbd/time.h"

#define PROTOCOL 1

int vbdctl_socket_path(const char *dir, uint32_t domid, uint32_t devid, char *buf, size_t size)
{
        int n = snprintf(buf, size, "%s/vbdd-%" PRIu32 "-%" PRIu32 ".sock", dir, domid, devid);

        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int vbdctl_connect(const char *path)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;

                close(fd);
                return r;
        }
        return fd;
}

static int set_msg(struct vbd_err *err, int code, const char *msg)
{
        err->code = code;
        snprintf(err->msg, sizeof(err->msg), "%s", msg);
        return code;
}

static int wait_fd(int fd, short events, uint64_t deadline)
{
        struct pollfd p = {.fd = fd, .events = events};
        int t = -1, r;

        if (deadline) {
                uint64_t now = vbd_now_ms();

                t = now >= deadline ? 0 : (int)(deadline - now);
        }
        do {
                r = poll(&p, 1, t);
        } while (r < 0 && errno == EINTR);
        if (r < 0)
                return -errno;
        return r == 0 ? -ETIMEDOUT : 0;
}

int vbdctl_call_fd(int fd, const char *cmd, json_t *args, int timeout_ms, json_t **ret_result,
                   struct vbd_err *err)
{
        uint64_t deadline = timeout_ms < 0 ? 0 : vbd_now_ms() + (uint64_t)timeout_ms;
        json_t *req = json_pack("{s:i,s:s}", "v", PROTOCOL, "cmd", cmd), *reply, *ok;
        char *line, *buf = NULL;
        size_t len = 0, size = 0, off = 0;
        json_error_t jerr;
        int r;

        *ret_result = NULL;
        if (args)
                json_object_set_new(req, "args", args);
        line = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (!line)
                return set_msg(err, -ENOMEM, "out of memory");
        len = strlen(line);
        line[len++] = '\n'; /* json_dumps' NUL becomes the newline */
        while (off < len) {
                ssize_t n = send(fd, line + off, len - off, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        break; /* the daemon may have said why before hanging up: read */
                off += (size_t)n;
        }
        free(line);

        /* Read one line. */
        len = 0;
        for (;;) {
                char *nl;
                ssize_t n;

                if (len + 4096 + 1 > size) {
                        char *p;

                        size = size ? size * 2 : 8192;
                        if (size > VBDCTL_REPLY_MAX) {
                                free(buf);
                                return set_msg(err, -EPROTO, "reply too long");
                        }
                        p = realloc(buf, size);
                        if (!p) {
                                free(buf);
                                return set_msg(err, -ENOMEM, "out of memory");
                        }
                        buf = p;
                }
                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0) {
                        free(buf);
                        return set_msg(err, r, r == -ETIMEDOUT ? "no reply in time" : strerror(-r));
                }
                n = read(fd, buf + len, size - len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -ECONNRESET;
                        free(buf);
                        return set_msg(err, r, "connection closed before the reply");
                }
                nl = memchr(buf + len, '\n', (size_t)n);
                len += (size_t)n;
                if (nl) {
                        len = (size_t)(nl - buf);
                        break;
                }
        }
        reply = json_loadb(buf, len, 0, &jerr);
        free(buf);
        if (!reply || !json_is_object(reply) ||
            !json_is_boolean(ok = json_object_get(reply, "ok"))) {
                json_decref(reply);
                return set_msg(err, -EPROTO, "malformed reply");
        }
        if (json_is_true(ok)) {
                json_t *res = json_object_get(reply, "result");

                *ret_result = res && json_is_object(res) ? json_incref(res) : json_object();
                json_decref(reply);
                return 0;
        } else {
                json_t *e = json_object_get(reply, "error");
                json_int_t code = json_integer_value(json_object_get(e, "errno"));
                const char *msg = json_string_value(json_object_get(e, "message"));

                err->code = code > 0 && code < 4096 ? -(int)code : -EIO;
                snprintf(err->msg, sizeof(err->msg), "%s", msg ? msg : strerror(-err->code));
                json_decref(reply);
                return 1;
        }
}

int vbdctl_call(const char *path, const char *cmd, json_t *args, int timeout_ms,
                json_t **ret_result, struct vbd_err *err)
{
        int fd = vbdctl_connect(path), r;

        *ret_result = NULL;
        if (fd < 0) {
                json_decref(args);
                err->code = fd;
                if (fd == -ENOENT || fd == -ECONNREFUSED)
                        snprintf(err->msg, sizeof(err->msg), "no vbdd serves %s (%s)", path,
                                 fd == -ENOENT ? "no socket" : "stale socket");
                else
                        snprintf(err->msg, sizeof(err->msg), "%s: %s", path, strerror(-fd));
                return fd;
        }
        r = vbdctl_call_fd(fd, cmd, args, timeout_ms, ret_result, err);
        close(fd);
        return r;
}

int vbdctl_wait_eof(int fd, int timeout_ms)
{
        uint64_t deadline = timeout_ms < 0 ? 0 : vbd_now_ms() + (uint64_t)timeout_ms;
        char buf[4096];

        for (;;) {
                int r = wait_fd(fd, POLLIN, deadline);
                ssize_t n;

                if (r < 0)
                        return r;
                n = read(fd, buf, sizeof(buf));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return 0;
        }
}

static int entry_cmp(const void *a, const void *b)
{
        const struct vbdctl_entry *x = a, *y = b;

        if (x->domid != y->domid)
                return x->domid < y->domid ? -1 : 1;
        return x->devid < y->devid ? -1 : x->devid > y->devid;
}

int vbdctl_scan(const char *dir, struct vbdctl_entry **ret, size_t *ret_n)
{
        struct vbdctl_entry *v = NULL;
        size_t n = 0, cap = 0;
        struct dirent *de;
        DIR *d = opendir(dir);

        *ret = NULL;
        *ret_n = 0;
        if (!d)
                return errno == ENOENT ? 0 : -errno;
        while ((de = readdir(d))) {
                unsigned long domid, devid;
                char tail[8];

                if (sscanf(de->d_name, "vbdd-%lu-%lu.%7s", &domid, &devid, tail) != 3 ||
                    strcmp(tail, "sock") || domid > 0x7fef || devid > UINT32_MAX)
                        continue;
                if (n == cap) {
                        struct vbdctl_entry *p;

                        cap = cap ? cap * 2 : 16;
                        p = realloc(v, cap * sizeof(*v));
                        if (!p) {
                                free(v);
                                closedir(d);
                                return -ENOMEM;
                        }
                        v = p;
                }
                v[n].domid = (uint32_t)domid;
                v[n].devid = (uint32_t)devid;
                if (vbdctl_socket_path(dir, v[n].domid, v[n].devid, v[n].path, sizeof(v[n].path)) <
                    0)
                        continue;
                n++;
        }
        closedir(d);
        if (n)
                qsort(v, n, sizeof(*v), entry_cmp);
        *ret = v;
        *ret_n = n;
        return 0;
}

int vbdctl_exit_code(int err)
{
        switch (err < 0 ? -err : err) {
        case 0:
                return VBDCTL_EXIT_OK;
        case ENOENT:
        case ECONNREFUSED:
                return VBDCTL_EXIT_NOT_FOUND;
        case EACCES:
        case EPERM:
                return VBDCTL_EXIT_PERM;
        case ETIMEDOUT:
                return VBDCTL_EXIT_TIMEOUT;
        case EPROTO:
        case ECONNRESET:
        case EPIPE:
                return VBDCTL_EXIT_PROTO;
        default:
                return VBDCTL_EXIT_FAILED;
        }
}
