/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * src/lock.c: QEMU's lock bytes with OFD locks, two open file descriptions
 * of one file in this process standing for two users (OFD locks of
 * different descriptions conflict even in one process):
 *   the bytes a read-write and a read-only user mark (checked with
 *   F_OFD_GETLK from a third description); rw vs rw, ro vs rw, rw vs ro
 *   refused with -EBUSY and qemu's words, naming this process; ro vs ro
 *   allowed; a refused user leaves no byte behind; release lets another
 *   user in, retake then conflicts; off takes nothing; unknown bits and a
 *   second lock refused; the holder found through /proc/PID/fdinfo.
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "lock.h"
#include "vbd/err.h"

#define RW_PERM    (VBD_LOCK_CONSISTENT_READ | VBD_LOCK_WRITE)
#define RO_PERM    VBD_LOCK_CONSISTENT_READ
#define NOT_SHARED (VBD_LOCK_WRITE | VBD_LOCK_RESIZE)
#define MARKED_BYTES                                                                               \
        {                                                                                          \
                100, 101, 102, 103, 104, 200, 201, 202, 203, 204                                   \
        }

static char path[512];

static int open_img(void)
{
        int fd = open(path, O_RDWR | O_CLOEXEC);

        REQUIRE(fd >= 0);
        return fd;
}

/* Is byte off marked by somebody (not by a fresh description)? */
static bool marked(int off)
{
        int fd = open_img();
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

        REQUIRE(fcntl(fd, F_OFD_GETLK, &fl) == 0);
        close(fd);
        return fl.l_type != F_UNLCK;
}

/* The marked bytes as a bit mask over MARKED_BYTES' order. */
static unsigned marked_mask(void)
{
        static const int bytes[] = MARKED_BYTES;
        unsigned m = 0;

        for (unsigned i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++)
                if (marked(bytes[i]))
                        m |= 1u << i;
        return m;
}

static int take(struct vbd_lock *l, int fd, bool rw, struct vbd_err *err)
{
        *l = (struct vbd_lock)VBD_LOCK_INIT;
        *err = (struct vbd_err){0};
        return vbd_lock_take(l, fd, path, VBD_ON, rw ? RW_PERM : RO_PERM, NOT_SHARED, err);
}

static void test_bytes(void)
{
        struct vbd_lock l;
        struct vbd_err err;
        int fd = open_img();

        CHECK_R(take(&l, fd, true, &err), err.msg);
        /* 100 consistent read, 101 write; 201 write, 203 resize not shared */
        CHECK_EQ(marked_mask(), (1u << 0) | (1u << 1) | (1u << 6) | (1u << 8));
        vbd_lock_release(&l);
        CHECK_EQ(marked_mask(), 0);
        CHECK_R(vbd_lock_retake(&l, &err), err.msg);
        CHECK_EQ(marked_mask(), (1u << 0) | (1u << 1) | (1u << 6) | (1u << 8));
        close(fd);
        vbd_lock_forget(&l);
        CHECK_EQ(marked_mask(), 0); /* closing the descriptor dropped them */

        fd = open_img();
        CHECK_R(take(&l, fd, false, &err), err.msg);
        CHECK_EQ(marked_mask(), (1u << 0) | (1u << 6) | (1u << 8));
        close(fd);
        vbd_lock_forget(&l);
}

/* first (rw?) holds the file; then second (rw?): want 0 or -EBUSY + words. */
static void pair(bool first_rw, bool second_rw, int want, const char *words)
{
        struct vbd_lock a, b;
        struct vbd_err err;
        int fa = open_img(), fb = open_img();
        unsigned before;
        char self[64];

        CHECK_R(take(&a, fa, first_rw, &err), err.msg);
        before = marked_mask();
        CHECK_ERR(take(&b, fb, second_rw, &err), want);
        if (want) {
                CHECK_MSG(strstr(err.msg, words), "%s after %s: %s", second_rw ? "rw" : "ro",
                          first_rw ? "rw" : "ro", err.msg);
                CHECK_MSG(strstr(err.msg, path) && strstr(err.msg, "locking=off"), "%s", err.msg);
                snprintf(self, sizeof(self), "pid %d (", (int)getpid());
                CHECK_MSG(strstr(err.msg, self) && strstr(err.msg, "this process"), "%s", err.msg);
                CHECK_EQ(b.fd, -1);
                CHECK_EQ(marked_mask(), before); /* nothing of b's left behind */
                /* a lets go: b gets in; a cannot come back */
                vbd_lock_release(&a);
                CHECK_R(take(&b, fb, second_rw, &err), err.msg);
                CHECK_ERR(vbd_lock_retake(&a, &err), -EBUSY);
                vbd_lock_release(&b);
        } else {
                vbd_lock_release(&b);
                vbd_lock_forget(&b);
        }
        close(fa);
        close(fb);
        vbd_lock_forget(&a);
        vbd_lock_forget(&b);
}

static void test_conflicts(void)
{
        pair(true, true, -EBUSY, "failed to get \"write\" lock");
        pair(true, false, -EBUSY, "failed to get shared \"write\" lock");
        pair(false, true, -EBUSY, "failed to get \"write\" lock");
        pair(false, false, 0, NULL);
}

static void test_off_and_errors(void)
{
        struct vbd_lock a = VBD_LOCK_INIT, b = VBD_LOCK_INIT;
        struct vbd_err err = {0};
        int fa = open_img(), fb = open_img();
        char who[64], want[64];

        CHECK_R(take(&a, fa, true, &err), err.msg);
        CHECK_R(vbd_lock_take(&b, fb, path, VBD_OFF, RW_PERM, NOT_SHARED, &err), err.msg);
        CHECK_EQ(b.fd, -1); /* off: nothing taken, nothing checked */
        CHECK_ERR(vbd_lock_take(&b, fb, path, VBD_ON, 1u << 5, 0, &err), -EINVAL);
        CHECK_ERR(vbd_lock_take(&a, fa, path, VBD_ON, RO_PERM, 0, &err), -EEXIST);

        /* The holder of byte 101, seen from fb: this process, fa's description. */
        snprintf(want, sizeof(want), "pid %d (", (int)getpid());
        CHECK(vbd_lock_holder(fb, 101, who, sizeof(who)));
        CHECK_MSG(strncmp(who, want, strlen(want)) == 0, "holder: %s", who);
        /* fa asking about its own byte: nobody else. */
        CHECK(!vbd_lock_holder(fa, 101, who, sizeof(who)));
        close(fa);
        close(fb);
        vbd_lock_forget(&a);
}

int main(void)
{
        const char *dir = getenv("TMPDIR");
        int fd;

        snprintf(path, sizeof(path), "%s/vbd-lock-%d.img", dir ? dir : "/tmp", (int)getpid());
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        close(fd);
        test_bytes();
        test_conflicts();
        test_off_and_errors();
        unlink(path);
        return check_result("lock");
}
