/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Image locks on QEMU's lock bytes (the scheme: vbd/lock.h), with OFD locks.
 * OFD locks report no owner (F_OFD_GETLK's l_pid is -1, and so is
 * /proc/locks' pid column), so on a conflict the holder is looked for in
 * /proc/PID/fdinfo/FD, whose "lock:" lines list the locks of that open file.
 */
#define VBD_LOG_TOPIC "lock"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "lock.h"
#include "vbd/err.h"
#include "vbd/log.h"

/* qemu's names (bdrv_perm_names), for messages users will search for. */
static const char *const perm_names[] = {
    "consistent read", "write", "write unchanged", "resize", "change children",
};

static int lock_byte(int fd, int off, short type)
{
        struct flock fl = {
            .l_type = type,
            .l_whence = SEEK_SET,
            .l_start = off,
            .l_len = 1,
        };

        return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* Would an exclusive lock of byte off conflict?  1 (fl says with what), 0, -errno. */
static int test_byte(int fd, int off, struct flock *fl)
{
        *fl = (struct flock){
            .l_type = F_WRLCK,
            .l_whence = SEEK_SET,
            .l_start = off,
            .l_len = 1,
        };
        if (fcntl(fd, F_OFD_GETLK, fl) < 0)
                return -errno;
        return fl->l_type != F_UNLCK;
}

static void read_comm(pid_t pid, char *buf, size_t size)
{
        char path[64];
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
        f = fopen(path, "re");
        if (!f || !fgets(buf, (int)size, f))
                snprintf(buf, size, "?");
        if (f)
                fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
}

/* Does one "lock:" line of an fdinfo file cover byte off of dev:ino? */
static bool lock_line_covers(const char *line, dev_t dev, ino_t ino, int off)
{
        char class[16], mode[16], type[16], end[32];
        unsigned maj, min;
        unsigned long long inode, start;
        int pid;

        if (strstr(line, "->")) /* a blocked waiter, not a holder */
                return false;
        if (sscanf(line, "lock: %*d: %15s %15s %15s %d %x:%x:%llu %llu %31s", class, mode, type,
                   &pid, &maj, &min, &inode, &start, end) != 9)
                return false;
        if (maj != major(dev) || min != minor(dev) || inode != (unsigned long long)ino)
                return false;
        if (start > (unsigned long long)off)
                return false;
        return strcmp(end, "EOF") == 0 || strtoull(end, NULL, 10) >= (unsigned long long)off;
}

static bool fdinfo_has_lock(int dirfd, const char *name, dev_t dev, ino_t ino, int off)
{
        char line[256];
        bool found = false;
        int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
        FILE *f;

        if (fd < 0)
                return false;
        f = fdopen(fd, "re");
        if (!f) {
                close(fd);
                return false;
        }
        while (!found && fgets(line, sizeof(line), f))
                found = strncmp(line, "lock:", 5) == 0 && lock_line_covers(line, dev, ino, off);
        fclose(f);
        return found;
}

static bool is_number(const char *s)
{
        if (!*s)
                return false;
        for (; *s; s++)
                if (!isdigit((unsigned char)*s))
                        return false;
        return true;
}

static void describe_pid(pid_t pid, char *buf, size_t size)
{
        char comm[32];

        read_comm(pid, comm, sizeof(comm));
        snprintf(buf, size, "pid %d (%s%s)", (int)pid, comm,
                 pid == getpid() ? ", this process" : "");
}

bool vbd_lock_holder(int fd, int off, char *buf, size_t size)
{
        pid_t self = getpid();
        struct stat st;
        struct dirent *p;
        bool found = false;
        DIR *proc;

        if (fstat(fd, &st) < 0 || !(proc = opendir("/proc")))
                return false;
        while (!found && (p = readdir(proc))) {
                char path[300];
                struct dirent *e;
                DIR *fds;
                pid_t pid;

                if (!is_number(p->d_name))
                        continue;
                pid = (pid_t)atoi(p->d_name);
                snprintf(path, sizeof(path), "/proc/%s/fdinfo", p->d_name);
                fds = opendir(path);
                if (!fds)
                        continue; /* gone, or not ours to look at */
                while (!found && (e = readdir(fds))) {
                        if (!is_number(e->d_name) || (pid == self && atoi(e->d_name) == fd))
                                continue;
                        found = fdinfo_has_lock(dirfd(fds), e->d_name, st.st_dev, st.st_ino, off);
                }
                closedir(fds);
                if (found)
                        describe_pid(pid, buf, size);
        }
        closedir(proc);
        return found;
}

/* Take back every byte marked in l (errors ignored: unlocking cannot conflict). */
static void unmark(struct vbd_lock *l)
{
        for (int i = 0; (1u << i) <= VBD_LOCK_PERM_ALL; i++) {
                if (l->locked_perm & (1u << i))
                        (void)lock_byte(l->fd, VBD_LOCK_PERM_BASE + i, F_UNLCK);
                if (l->locked_unshared & (1u << i))
                        (void)lock_byte(l->fd, VBD_LOCK_SHARED_BASE + i, F_UNLCK);
        }
        l->locked_perm = l->locked_unshared = 0;
}

/* Mark the bytes of l->perm and l->unshared.  0, or -errno and the byte in *ret_off. */
static int mark(struct vbd_lock *l, int *ret_off)
{
        for (int i = 0; (1u << i) <= VBD_LOCK_PERM_ALL; i++) {
                uint32_t bit = 1u << i;
                int r;

                if ((l->perm & bit) && !(l->locked_perm & bit)) {
                        *ret_off = VBD_LOCK_PERM_BASE + i;
                        r = lock_byte(l->fd, *ret_off, F_RDLCK);
                        if (r < 0)
                                return r;
                        l->locked_perm |= bit;
                }
                if ((l->unshared & bit) && !(l->locked_unshared & bit)) {
                        *ret_off = VBD_LOCK_SHARED_BASE + i;
                        r = lock_byte(l->fd, *ret_off, F_RDLCK);
                        if (r < 0)
                                return r;
                        l->locked_unshared |= bit;
                }
        }
        return 0;
}

static void describe_holder(struct vbd_lock *l, int off, const struct flock *fl, char *buf,
                            size_t size)
{
        if (fl && fl->l_pid > 0) /* a POSIX (process) lock says who */
                describe_pid(fl->l_pid, buf, size);
        else if (!vbd_lock_holder(l->fd, off, buf, size))
                snprintf(buf, size, "another process");
}

static int conflict(struct vbd_lock *l, int off, const struct flock *fl, struct vbd_err *err)
{
        char who[96];
        int bit = off % 100;
        bool shared = off < VBD_LOCK_SHARED_BASE; /* we do not share it, somebody holds it */

        describe_holder(l, off, fl, who, sizeof(who));
        unmark(l);
        return vbd_err_set(
            err, -EBUSY,
            "'%s' is in use: failed to get %s\"%s\" lock: %s %s it (locking=off overrides)",
            l->path, shared ? "shared " : "", perm_names[bit], who,
            shared ? "holds" : "does not share");
}

/* Mark, then check: the bytes of others against ours. */
static int apply(struct vbd_lock *l, struct vbd_err *err)
{
        struct flock fl;
        int off = 0, r = mark(l, &off);

        if (r == -EAGAIN || r == -EACCES) /* an exclusive lock on the byte: not qemu's */
                return conflict(l, off, NULL, err);
        if (r < 0) {
                unmark(l);
                return vbd_err_set(err, r, "'%s': cannot lock byte %d: %s", l->path, off,
                                   strerror(-r));
        }
        for (int i = 0; (1u << i) <= VBD_LOCK_PERM_ALL; i++) {
                uint32_t bit = 1u << i;

                if (l->perm & bit) {
                        off = VBD_LOCK_SHARED_BASE + i;
                        r = test_byte(l->fd, off, &fl);
                        if (r > 0)
                                return conflict(l, off, &fl, err);
                        if (r < 0)
                                break;
                }
                if (l->unshared & bit) {
                        off = VBD_LOCK_PERM_BASE + i;
                        r = test_byte(l->fd, off, &fl);
                        if (r > 0)
                                return conflict(l, off, &fl, err);
                        if (r < 0)
                                break;
                }
        }
        if (r < 0) {
                unmark(l);
                return vbd_err_set(err, r, "'%s': cannot test lock byte %d: %s", l->path, off,
                                   strerror(-r));
        }
        return 0;
}

int vbd_lock_take(struct vbd_lock *l, int fd, const char *path, enum vbd_tristate mode,
                  uint32_t perm, uint32_t unshared, struct vbd_err *err)
{
        int r;

        if (l->fd >= 0)
                return vbd_err_set(err, -EEXIST, "'%s': already locked", path);
        if ((perm | unshared) & ~(uint32_t)VBD_LOCK_PERM_ALL)
                return vbd_err_set(err, -EINVAL, "'%s': unknown lock permissions %#x", path,
                                   (perm | unshared) & ~(uint32_t)VBD_LOCK_PERM_ALL);
        if (mode == VBD_OFF) {
                vbd_debug("'%s': locking=off", path);
                return 0;
        }
        l->path = strdup(path);
        if (!l->path)
                return vbd_err_set(err, -ENOMEM, "out of memory");
        l->fd = fd;
        l->perm = perm;
        l->unshared = unshared;
        l->locked_perm = l->locked_unshared = 0;
        r = apply(l, err);
        /* No OFD locks on this file system (NFS without lockd: ENOLCK; FUSE,
         * some network file systems: EOPNOTSUPP; kernels before 3.15: EINVAL). */
        if ((r == -EOPNOTSUPP || r == -ENOLCK || r == -EINVAL) && mode == VBD_AUTO) {
                vbd_info("'%s': the file system takes no OFD locks (%s), not locking", path,
                         strerror(-r));
                if (err)
                        err->code = 0, err->msg[0] = '\0';
                r = 0;
                vbd_lock_forget(l);
        } else if (r < 0) {
                vbd_lock_forget(l);
        } else {
                vbd_debug("'%s': locked, holding %#x, not sharing %#x", path, perm, unshared);
        }
        return r;
}

void vbd_lock_release(struct vbd_lock *l)
{
        if (l && l->fd >= 0)
                unmark(l);
}

int vbd_lock_retake(struct vbd_lock *l, struct vbd_err *err)
{
        if (!l || l->fd < 0)
                return 0;
        return apply(l, err);
}

void vbd_lock_forget(struct vbd_lock *l)
{
        free(l->path);
        *l = (struct vbd_lock)VBD_LOCK_INIT;
}
