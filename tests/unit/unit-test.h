/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Helpers shared by the storage unit tests (test-aio, test-image, test-raw,
 * test-nbd-export): a scratch directory under $TMPDIR removed at exit and
 * files of deterministic content.  The checks are tests/lib/check.h's.
 */
#pragma once

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char unit_dir[512];

static inline void unit_rmdir(void)
{
        DIR *d = opendir(unit_dir);
        struct dirent *e;
        char p[1024];

        if (!d)
                return;
        while ((e = readdir(d))) {
                if (e->d_name[0] == '.')
                        continue;
                snprintf(p, sizeof(p), "%s/%s", unit_dir, e->d_name);
                (void)unlink(p);
        }
        closedir(d);
        (void)rmdir(unit_dir);
}

/* A fresh scratch directory, removed at exit. */
static inline const char *unit_tmpdir(void)
{
        const char *base = getenv("TMPDIR");

        if (unit_dir[0])
                return unit_dir;
        snprintf(unit_dir, sizeof(unit_dir), "%s/vbd-unit-XXXXXX", base && *base ? base : "/tmp");
        REQUIRE(mkdtemp(unit_dir));
        atexit(unit_rmdir);
        return unit_dir;
}

/* Path of name in the scratch directory (static buffer per call site is the caller's). */
static inline void unit_path(char *buf, size_t size, const char *name)
{
        snprintf(buf, size, "%s/%s", unit_tmpdir(), name);
}

/* Deterministic content: byte at file offset off for seed. */
static inline unsigned char unit_pattern(unsigned seed, unsigned long long off)
{
        unsigned long long x = off * 2654435761ULL + seed * 40503ULL + (off >> 9);

        return (unsigned char)(x ^ (x >> 13) ^ (x >> 29));
}

static inline void unit_fill(unsigned char *buf, size_t len, unsigned seed, unsigned long long off)
{
        for (size_t i = 0; i < len; i++)
                buf[i] = unit_pattern(seed, off + i);
}

static inline int unit_check_pattern(const unsigned char *buf, size_t len, unsigned seed,
                                     unsigned long long off)
{
        for (size_t i = 0; i < len; i++)
                if (buf[i] != unit_pattern(seed, off + i))
                        return 0;
        return 1;
}

/* Create path with len bytes of pattern seed. */
static inline void unit_make_file(const char *path, size_t len, unsigned seed)
{
        unsigned char *buf = malloc(len ? len : 1);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        REQUIRE(buf && fd >= 0);
        unit_fill(buf, len, seed, 0);
        REQUIRE(pwrite(fd, buf, len, 0) == (ssize_t)len);
        REQUIRE(fsync(fd) == 0);
        close(fd);
        free(buf);
}
