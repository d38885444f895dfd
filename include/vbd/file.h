/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Whole-buffer file I/O and directory syncs for drivers that keep metadata
 * files of their own (a change map, a new image's header): inline, no
 * state.  All return 0 or -errno.
 */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* pwrite(2) all of buf at off (EINTR retried, short writes continued). */
static inline int vbd_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
        const uint8_t *p = buf;

        while (len) {
                ssize_t n = pwrite(fd, p, len, (off_t)off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EIO;
                p += n;
                len -= (size_t)n;
                off += (uint64_t)n;
        }
        return 0;
}

/* pread(2) all of buf at off; -ENODATA when the file ends first. */
static inline int vbd_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
        uint8_t *p = buf;

        while (len) {
                ssize_t n = pread(fd, p, len, (off_t)off);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -ENODATA;
                p += n;
                len -= (size_t)n;
                off += (uint64_t)n;
        }
        return 0;
}

/* fsync(2) the directory that holds path (a file just created, renamed or
 * removed there is durable afterwards). */
static inline int vbd_fsync_dir_of(const char *path)
{
        char dir[4096];
        char *slash;
        int fd, r = 0;

        if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
                return -ENAMETOOLONG;
        slash = strrchr(dir, '/');
        if (!slash)
                snprintf(dir, sizeof(dir), ".");
        else if (slash == dir)
                dir[1] = '\0';
        else
                *slash = '\0';
        fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                r = -errno;
        close(fd);
        return r;
}
