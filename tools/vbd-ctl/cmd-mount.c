/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-ctl mount, vbd-ctl umount: a disk image (raw, or qcow2 with its
 * backing chain) mounted in dom0, no guest running.
 *
 * An export-only vbdd serves the image on a unix NBD socket; the kernel
 * reaches it through its NBD client where the nbd module is loaded
 * (nbd-client), and otherwise through nbdfuse (the export as a file) and a
 * loop device on that file.  The partition (MBR or GPT, as the kernel reads
 * them) or the whole disk is then mounted.  Each mount keeps its state in
 * <run>/mounts/<id>.json (run: $VBD_RUN_DIR, else /run/vbd) and its sockets
 * and logs in <run>/mounts/<id>/; umount undoes it in the reverse order,
 * and so does a mount that fails half way.
 *
 * An image that a running vbdd serves writable (a guest's disk: found by
 * the files the daemons in the control dir have open for writing) cannot
 * get an export-only vbdd of its own (the daemon holds its write lock, and
 * the guest would change the blocks under the mount).  A read-only mount
 * of it goes through that daemon's snapshot job instead (cmd-snapshot.c):
 * an NBD export of the disk as it was when the mount started, on
 * <work>/snap.sock, with its store beside the image
 * (<imagedir>/.vbd-snapshot-<id>, unlinked by the daemon as soon as it is
 * open); umount stops the job.  A read-write mount of it is refused,
 * naming the daemon.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util/parse.h"
#include "vbd-ctl.h"

#define MAX_PARTS 128

struct mnt {
        char id[16];
        char run[1024], work[1100], state[1200];
        char image[PATH_MAX], spec[PATH_MAX + 8], dir[PATH_MAX];
        char fuse_dir[1200], fuse_file[1300];
        char disk[64], dev[80], fstype[32];
        const char *via;    /* "fuse+loop" or "nbd" */
        unsigned partition; /* 0: the whole disk */
        bool rw, mounted;
        pid_t fuse_pid;
        struct vbdctl_export ex;
        /* a snapshot of a running VBD instead of an export-only vbdd */
        bool snap;
        uint32_t snap_domid, snap_devid;
        pid_t snap_pid;
        char snap_ctl[PATH_MAX], snap_sock[1200], store[PATH_MAX + 64];
        /* when each step ended (ms from the start): the figures of a mount */
        long long t0, t_export, t_attach, t_probe, t_mount;
};

static long long now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void run_dir(char *buf, size_t size)
{
        const char *env = getenv("VBD_RUN_DIR");

        snprintf(buf, size, "%s/mounts", env && *env ? env : "/run/vbd");
}

/*
 * Run argv; its stdout (trimmed) in out, its stderr's first line in err.
 * Returns its exit status, or -errno.
 */
static int run(const char *const *argv, char *out, size_t out_size, char *err, size_t err_size)
{
        int po[2], pe[2], status;
        size_t no = 0, ne = 0;
        char drop[256];
        pid_t pid;

        if (pipe2(po, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(pe, O_CLOEXEC) < 0) {
                close(po[0]);
                close(po[1]);
                return -errno;
        }
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int null = open("/dev/null", O_RDONLY);

                if (null >= 0)
                        dup2(null, 0);
                dup2(po[1], 1);
                dup2(pe[1], 2);
                execvp(argv[0], (char *const *)argv);
                fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        close(po[1]);
        close(pe[1]);
        /* small outputs: stdout first, then stderr (nothing here writes much) */
        for (ssize_t k; (k = read(po[0], no + 1 < out_size ? out + no : drop,
                                  no + 1 < out_size ? out_size - 1 - no : sizeof(drop))) > 0;)
                if (no + 1 < out_size)
                        no += (size_t)k;
        for (ssize_t k; (k = read(pe[0], ne + 1 < err_size ? err + ne : drop,
                                  ne + 1 < err_size ? err_size - 1 - ne : sizeof(drop))) > 0;)
                if (ne + 1 < err_size)
                        ne += (size_t)k;
        close(po[0]);
        close(pe[0]);
        if (out_size)
                out[no] = '\0';
        if (err_size)
                err[ne] = '\0';
        while (no && isspace((unsigned char)out[no - 1]))
                out[--no] = '\0';
        if (err_size)
                err[strcspn(err, "\n")] = '\0';
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static bool have_program(const char *name)
{
        const char *path = getenv("PATH");
        char buf[PATH_MAX];

        for (const char *p = path ? path : "/usr/sbin:/usr/bin:/sbin:/bin"; *p;) {
                size_t n = strcspn(p, ":");

                snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, p, name);
                if (access(buf, X_OK) == 0)
                        return true;
                p += n + (p[n] == ':');
        }
        return false;
}

/* Can the kernel (or a mount.T helper) mount type?  mount(8) itself, given
 * a type it does not know, probes and mounts what it finds instead. */
static bool known_fstype(const char *type)
{
        FILE *f = fopen("/proc/filesystems", "re");
        char line[128], helper[64], path[PATH_MAX];
        struct utsname u;
        bool found = false;

        while (f && !found && fgets(line, sizeof(line), f)) {
                char *t = strrchr(line, '\t');

                t = t ? t + 1 : line;
                t[strcspn(t, "\n")] = '\0';
                found = !strcmp(t, type);
        }
        if (f)
                fclose(f);
        snprintf(helper, sizeof(helper), "mount.%s", type);
        if (found || have_program(helper))
                return true;
        if (uname(&u) < 0) /* a module the kernel would load */
                return false;
        snprintf(path, sizeof(path), "/lib/modules/%s/kernel/fs/%s", u.release, type);
        return access(path, F_OK) == 0;
}

/* Is path (a realpath) a mount point?  From /proc/self/mountinfo. */
static bool is_mounted(const char *path)
{
        FILE *f = fopen("/proc/self/mountinfo", "re");
        char line[4096], mp[PATH_MAX];
        bool found = false;

        if (!f)
                return false;
        while (!found && fgets(line, sizeof(line), f)) {
                char *s;
                size_t n = 0;

                /* ID PARENT MAJ:MIN ROOT MOUNTPOINT ... with octal escapes */
                if (sscanf(line, "%*s %*s %*s %*s %4095s", line) != 1)
                        continue;
                for (s = line; *s && n + 1 < sizeof(mp); s++) {
                        if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] && s[3]) {
                                mp[n++] = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + s[3] - '0');
                                s += 3;
                        } else
                                mp[n++] = *s;
                }
                mp[n] = '\0';
                found = !strcmp(mp, path);
        }
        fclose(f);
        return found;
}

/* "pid 123 (bash), pid 456 (less)": who keeps files or a cwd under dir. */
static void holders(const char *dir, char *buf, size_t size)
{
        DIR *proc = opendir("/proc");
        struct dirent *de;
        size_t len = strlen(dir), n = 0;
        unsigned found = 0;

        buf[0] = '\0';
        while (proc && (de = readdir(proc)) && found < 8) {
                char path[PATH_MAX], link[PATH_MAX], comm[64] = "?";
                const char *what[] = {"cwd", "root", NULL};
                bool hit = false;
                DIR *fds;
                FILE *f;
                ssize_t k;

                if (!isdigit((unsigned char)de->d_name[0]) || atoi(de->d_name) == getpid())
                        continue; /* (we have what our caller has open) */
                for (unsigned i = 0; what[i] && !hit; i++) {
                        snprintf(path, sizeof(path), "/proc/%s/%s", de->d_name, what[i]);
                        k = readlink(path, link, sizeof(link) - 1);
                        if (k > 0) {
                                link[k] = '\0';
                                hit = !strncmp(link, dir, len) &&
                                      (link[len] == '/' || link[len] == '\0');
                        }
                }
                snprintf(path, sizeof(path), "/proc/%s/fd", de->d_name);
                fds = hit ? NULL : opendir(path);
                for (struct dirent *fe; fds && !hit && (fe = readdir(fds));) {
                        snprintf(path, sizeof(path), "/proc/%s/fd/%s", de->d_name, fe->d_name);
                        k = readlink(path, link, sizeof(link) - 1);
                        if (k > 0) {
                                link[k] = '\0';
                                hit = !strncmp(link, dir, len) &&
                                      (link[len] == '/' || link[len] == '\0');
                        }
                }
                if (fds)
                        closedir(fds);
                if (!hit)
                        continue;
                snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
                if ((f = fopen(path, "re"))) {
                        if (fgets(comm, sizeof(comm), f))
                                comm[strcspn(comm, "\n")] = '\0';
                        fclose(f);
                }
                n += (size_t)snprintf(buf + n, n < size ? size - n : 0, "%spid %s (%s)",
                                      found ? ", " : "", de->d_name, comm);
                found++;
        }
        if (proc)
                closedir(proc);
}

/* ---- the disk and its partitions ---- */

/* Partition numbers of disk (/dev/NAME), from /sys/block/NAME/NAMEpM. */
static unsigned partitions(const char *disk, unsigned *parts)
{
        const char *name = strrchr(disk, '/') + 1;
        char path[PATH_MAX];
        struct dirent *de;
        unsigned n = 0;
        size_t len = strlen(name);
        DIR *d;

        snprintf(path, sizeof(path), "/sys/block/%s", name);
        if (!(d = opendir(path)))
                return 0;
        while ((de = readdir(d)) && n < MAX_PARTS) {
                char *end;
                unsigned long v;

                if (strncmp(de->d_name, name, len) || de->d_name[len] != 'p')
                        continue;
                v = strtoul(de->d_name + len + 1, &end, 10);
                if (*end || !v || v > 4096)
                        continue;
                parts[n++] = (unsigned)v;
        }
        closedir(d);
        for (unsigned i = 1; i < n; i++) /* sort */
                for (unsigned j = i; j && parts[j - 1] > parts[j]; j--) {
                        unsigned t = parts[j];

                        parts[j] = parts[j - 1];
                        parts[j - 1] = t;
                }
        return n;
}

/* /dev/NAMEpM exists (devtmpfs makes it; without it, from sysfs): 0 or -errno. */
static int part_node(const char *disk, unsigned p, char *dev, size_t size)
{
        const char *name = strrchr(disk, '/') + 1;
        char path[PATH_MAX], buf[32];
        unsigned maj, min;
        FILE *f;

        snprintf(dev, size, "%sp%u", disk, p);
        for (int i = 0; i < 100; i++) {
                if (access(dev, F_OK) == 0)
                        return 0;
                usleep(10 * 1000);
        }
        snprintf(path, sizeof(path), "/sys/block/%s/%sp%u/dev", name, name, p);
        if (!(f = fopen(path, "re")))
                return -ENOENT;
        if (!fgets(buf, sizeof(buf), f) || sscanf(buf, "%u:%u", &maj, &min) != 2) {
                fclose(f);
                return -EIO;
        }
        fclose(f);
        return mknod(dev, S_IFBLK | 0600, makedev(maj, min)) < 0 ? -errno : 0;
}

/* The filesystem blkid finds on dev ("" for none). */
static void probe_fs(const char *dev, char *buf, size_t size)
{
        const char *argv[] = {"blkid", "-p", "-o", "value", "-s", "TYPE", dev, NULL};
        char err[256];

        if (run(argv, buf, size, err, sizeof(err)) != 0)
                buf[0] = '\0';
}

static void human(unsigned long long bytes, char *buf, size_t size)
{
        static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
        double v = (double)bytes;
        unsigned u = 0;

        while (v >= 1024 && u < 4) {
                v /= 1024;
                u++;
        }
        snprintf(buf, size, "%.*f %s", u ? 1 : 0, v, unit[u]);
}

/* "1 (20.0 MiB, ext4), 2 (42.0 MiB, vfat)" */
static void list_partitions(const char *disk, const unsigned *parts, unsigned n, char *buf,
                            size_t size)
{
        const char *name = strrchr(disk, '/') + 1;
        size_t len = 0;

        buf[0] = '\0';
        for (unsigned i = 0; i < n; i++) {
                char path[PATH_MAX], dev[80], fs[64] = "", sz[32] = "?";
                unsigned long long sectors = 0;
                FILE *f;

                snprintf(path, sizeof(path), "/sys/block/%s/%sp%u/size", name, name, parts[i]);
                if ((f = fopen(path, "re"))) {
                        if (fscanf(f, "%llu", &sectors) == 1)
                                human(sectors * 512, sz, sizeof(sz));
                        fclose(f);
                }
                if (part_node(disk, parts[i], dev, sizeof(dev)) == 0)
                        probe_fs(dev, fs, sizeof(fs));
                len +=
                    (size_t)snprintf(buf + len, len < size ? size - len : 0, "%s%u (%s, %s)",
                                     i ? ", " : "", parts[i], sz, *fs ? fs : "no filesystem found");
        }
}

/* ---- state ---- */

static int state_save(struct mnt *m, long long ms)
{
        char tmp[PATH_MAX + 8];
        json_t *j =
            json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:s,s:b,s:I,s:I,s:I,s:s,s:I,s:I}", "id",
                      m->id, "image", m->image, "spec", m->spec, "dir", m->dir, "via", m->via,
                      "disk", m->disk, "device", m->dev, "partition", (int)m->partition, "fstype",
                      m->fstype, "rw", m->rw, "vbdd_pid", (json_int_t)m->ex.pid, "vbdd_devid",
                      (json_int_t)m->ex.devid, "nbdfuse_pid", (json_int_t)m->fuse_pid, "work",
                      m->work, "mounted_at", (json_int_t)time(NULL), "elapsed_ms", (json_int_t)ms);
        int r;

        if (!j)
                return -ENOMEM;
        /* the time at the end of each step */
        json_object_set_new(j, "steps_ms",
                            json_pack("{s:I,s:I,s:I,s:I}", "export", (json_int_t)m->t_export,
                                      "attach", (json_int_t)m->t_attach, "probe",
                                      (json_int_t)m->t_probe, "mount", (json_int_t)m->t_mount));
        if (m->snap)
                json_object_set_new(
                    j, "snapshot",
                    json_pack("{s:I,s:I,s:I,s:s,s:s,s:s}", "domid", (json_int_t)m->snap_domid,
                              "devid", (json_int_t)m->snap_devid, "pid", (json_int_t)m->snap_pid,
                              "control", m->snap_ctl, "socket", m->snap_sock, "store", m->store));
        snprintf(tmp, sizeof(tmp), "%s.tmp", m->state);
        r = json_dump_file(j, tmp, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(j);
        if (r < 0 || rename(tmp, m->state) < 0) {
                unlink(tmp);
                return -EIO;
        }
        return 0;
}

static const char *jstr(json_t *j, const char *key)
{
        const char *s = json_string_value(json_object_get(j, key));

        return s ? s : "";
}

/* A state file back into m (what umount needs): 0, or -EINVAL. */
static int state_load(json_t *j, struct mnt *m)
{
        memset(m, 0, sizeof(*m));
        snprintf(m->id, sizeof(m->id), "%s", jstr(j, "id"));
        snprintf(m->work, sizeof(m->work), "%s", jstr(j, "work"));
        snprintf(m->image, sizeof(m->image), "%s", jstr(j, "image"));
        snprintf(m->dir, sizeof(m->dir), "%s", jstr(j, "dir"));
        snprintf(m->disk, sizeof(m->disk), "%s", jstr(j, "disk"));
        snprintf(m->dev, sizeof(m->dev), "%s", jstr(j, "device"));
        m->via = !strcmp(jstr(j, "via"), "nbd") ? "nbd" : "fuse+loop";
        m->fuse_pid = (pid_t)json_integer_value(json_object_get(j, "nbdfuse_pid"));
        m->ex.pid = (pid_t)json_integer_value(json_object_get(j, "vbdd_pid"));
        m->ex.domid = 32000;
        m->ex.devid = (uint32_t)json_integer_value(json_object_get(j, "vbdd_devid"));
        if (json_is_object(json_object_get(j, "snapshot"))) {
                json_t *sn = json_object_get(j, "snapshot");

                m->snap = true;
                m->snap_domid = (uint32_t)json_integer_value(json_object_get(sn, "domid"));
                m->snap_devid = (uint32_t)json_integer_value(json_object_get(sn, "devid"));
                m->snap_pid = (pid_t)json_integer_value(json_object_get(sn, "pid"));
                snprintf(m->snap_ctl, sizeof(m->snap_ctl), "%s", jstr(sn, "control"));
                snprintf(m->snap_sock, sizeof(m->snap_sock), "%s", jstr(sn, "socket"));
                snprintf(m->store, sizeof(m->store), "%s", jstr(sn, "store"));
                if (!*m->snap_ctl || !*m->snap_sock)
                        return -EINVAL;
        }
        if (!*m->id || !*m->work || m->work[0] != '/' || !*m->dir || strstr(m->id, "/"))
                return -EINVAL;
        snprintf(m->fuse_dir, sizeof(m->fuse_dir), "%s/fuse", m->work);
        snprintf(m->fuse_file, sizeof(m->fuse_file), "%s/disk", m->fuse_dir);
        snprintf(m->ex.dir, sizeof(m->ex.dir), "%s", m->work);
        snprintf(m->ex.nbd, sizeof(m->ex.nbd), "%s", m->snap ? m->snap_sock : "");
        if (!m->snap) {
                snprintf(m->ex.nbd, sizeof(m->ex.nbd), "%s/nbd.sock", m->work);
                snprintf(m->ex.log, sizeof(m->ex.log), "%s/vbdd.log", m->work);
                vbdctl_socket_path(m->work, m->ex.domid, m->ex.devid, m->ex.ctl, sizeof(m->ex.ctl));
        }
        /* only the processes that are still the ones we started */
        if (!vbdctl_pid_mentions(m->ex.pid, m->work))
                m->ex.pid = 0;
        if (!vbdctl_pid_mentions(m->fuse_pid, m->work))
                m->fuse_pid = 0;
        return 0;
}

/* The state files, as JSON objects (the caller decrefs the array). */
static json_t *state_all(const char *run)
{
        json_t *all = json_array();
        DIR *d = opendir(run);
        struct dirent *de;

        while (d && (de = readdir(d))) {
                size_t n = strlen(de->d_name);
                char path[PATH_MAX];
                json_t *j;

                if (n < 6 || strcmp(de->d_name + n - 5, ".json"))
                        continue;
                snprintf(path, sizeof(path), "%s/%s", run, de->d_name);
                if ((j = json_load_file(path, 0, NULL)) && json_is_object(j))
                        json_array_append_new(all, j);
                else
                        json_decref(j);
        }
        if (d)
                closedir(d);
        return all;
}

/* ---- a running VBD's snapshot ---- */

/* A vbdd serving the image writable. */
struct server {
        uint32_t domid, devid;
        pid_t pid;
        char ctl[PATH_MAX], comm[64];
};

/* Has pid the file st open for writing?  (/proc/PID/fd and fdinfo) */
static bool holds_for_writing(pid_t pid, const struct stat *st)
{
        char path[PATH_MAX], line[128];
        struct dirent *de;
        bool found = false;
        DIR *d;

        snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
        if (!(d = opendir(path)))
                return false;
        while (!found && (de = readdir(d))) {
                struct stat fs;
                unsigned long flags = 0;
                FILE *f;

                if (!isdigit((unsigned char)de->d_name[0]))
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int)pid, de->d_name);
                if (stat(path, &fs) < 0 || fs.st_dev != st->st_dev || fs.st_ino != st->st_ino)
                        continue;
                snprintf(path, sizeof(path), "/proc/%d/fdinfo/%s", (int)pid, de->d_name);
                if (!(f = fopen(path, "re")))
                        continue;
                while (fgets(line, sizeof(line), f))
                        if (sscanf(line, "flags: %lo", &flags) == 1)
                                break;
                fclose(f);
                found = (flags & O_ACCMODE) != O_RDONLY;
        }
        closedir(d);
        return found;
}

/* The daemon in the control dir that has image st open for writing: 1 (in
 * sv), or 0. */
static int find_server(struct vbdctl *o, const struct stat *st, struct server *sv)
{
        struct vbdctl_entry *e = NULL;
        size_t n = 0;
        int found = 0;

        if (vbdctl_scan(o->dir, &e, &n) < 0)
                return 0;
        for (size_t i = 0; i < n && !found; i++) {
                struct vbd_err err = {0};
                json_t *res = NULL;
                pid_t pid;

                if (vbdctl_call(e[i].path, "info", NULL, 3000, &res, &err) != 0)
                        continue;
                pid = (pid_t)json_integer_value(json_object_get(res, "pid"));
                json_decref(res);
                if (pid <= 0 || !holds_for_writing(pid, st))
                        continue;
                memset(sv, 0, sizeof(*sv));
                sv->domid = e[i].domid;
                sv->devid = e[i].devid;
                sv->pid = pid;
                snprintf(sv->ctl, sizeof(sv->ctl), "%s", e[i].path);
                {
                        char path[64];
                        FILE *f;

                        snprintf(sv->comm, sizeof(sv->comm), "?");
                        snprintf(path, sizeof(path), "/proc/%d/comm", (int)pid);
                        if ((f = fopen(path, "re"))) {
                                if (fgets(sv->comm, sizeof(sv->comm), f))
                                        sv->comm[strcspn(sv->comm, "\n")] = '\0';
                                fclose(f);
                        }
                }
                found = 1;
        }
        free(e);
        return found;
}

/* Is the daemon on m's control socket still the one that runs our job?
 * 1 yes, 0 it is gone (or another daemon, or another job). */
static int snap_ours(struct mnt *m)
{
        char ep[sizeof(m->snap_sock) + 8];
        struct vbd_err err = {0};
        json_t *res = NULL;
        int ours;

        if (vbdctl_call(m->snap_ctl, "info", NULL, 5000, &res, &err) != 0)
                return 0;
        ours = (pid_t)json_integer_value(json_object_get(res, "pid")) == m->snap_pid;
        json_decref(res);
        if (!ours || vbdctl_call(m->snap_ctl, "snapshot-status", NULL, 5000, &res, &err) != 0)
                return 0;
        snprintf(ep, sizeof(ep), "unix:%s", m->snap_sock);
        ours = !strcmp(jstr(res, "endpoint"), ep);
        json_decref(res);
        return ours;
}

/* Stop our snapshot job (if its daemon still runs it) and remove what it
 * may have left: 0, or -errno with msg (the daemon refused the stop). */
static int snap_stop(struct mnt *m, char *msg, size_t size)
{
        int r = 0;

        if (!m->snap)
                return 0;
        if (snap_ours(m)) {
                struct vbd_err err = {0};
                json_t *res = NULL;

                if (vbdctl_call(m->snap_ctl, "snapshot-cancel", NULL, 60000, &res, &err) != 0 &&
                    err.code != -ENOENT) {
                        snprintf(msg, size,
                                 "snapshot-cancel on %s: %s (vbd-ctl snapshot -d %u -n %u --stop "
                                 "ends it)",
                                 vbdctl_name(m->snap_domid, m->snap_devid), err.msg,
                                 (unsigned)m->snap_domid, (unsigned)m->snap_devid);
                        r = -EIO;
                }
                json_decref(res);
        }
        /* the daemon removes both; after a crash (its or ours) we do */
        unlink(m->snap_sock);
        if (*m->store)
                unlink(m->store);
        m->snap = false;
        return r;
}

/*
 * Ask sv for a snapshot of the image, exported on <work>/snap.sock with its
 * store beside the image: 0, or -errno with msg and nothing left behind.
 */
static int snap_start(struct mnt *m, const struct server *sv, char *msg, size_t size)
{
        char dir[PATH_MAX], ep[sizeof(m->snap_sock) + 8];
        struct vbd_err err = {0};
        json_t *res = NULL;
        char *slash;
        int r;

        snprintf(dir, sizeof(dir), "%s", m->image);
        slash = strrchr(dir, '/');
        *(slash == dir ? slash + 1 : slash) = '\0';
        if (snprintf(m->store, sizeof(m->store), "%s/.vbd-snapshot-%s", strcmp(dir, "/") ? dir : "",
                     m->id) >= (int)sizeof(m->store) ||
            snprintf(m->snap_sock, sizeof(m->snap_sock), "%s/snap.sock", m->work) >=
                (int)sizeof(m->snap_sock) ||
            strlen(m->snap_sock) >= 108) {
                snprintf(msg, size, "%s: path too long for a socket", m->work);
                return -ENAMETOOLONG;
        }
        snprintf(ep, sizeof(ep), "unix:%s", m->snap_sock);
        m->snap = true;
        m->snap_domid = sv->domid;
        m->snap_devid = sv->devid;
        m->snap_pid = sv->pid;
        snprintf(m->snap_ctl, sizeof(m->snap_ctl), "%s", sv->ctl);
        r = vbdctl_call(sv->ctl, "snapshot-start",
                        json_pack("{s:s,s:s,s:b}", "endpoint", ep, "store", m->store, "scratch", 1),
                        60000, &res, &err);
        json_decref(res);
        if (r != 0) {
                snprintf(msg, size,
                         "%s is served writable by pid %d (%s), VBD %s, and its snapshot "
                         "failed: %s",
                         m->image, (int)sv->pid, sv->comm, vbdctl_name(sv->domid, sv->devid),
                         err.msg);
                if (r == 1) { /* a job that started after all must not stay */
                        char ignore[512];

                        snap_stop(m, ignore, sizeof(ignore));
                } else {
                        unlink(m->snap_sock);
                        unlink(m->store);
                }
                m->snap = false;
                return r < 0 ? r : err.code ? err.code : -EIO;
        }
        /* it answers once the export listens; be patient with a slow socket */
        for (int i = 0; i < 500 && access(m->snap_sock, F_OK) < 0; i++)
                usleep(10 * 1000);
        if (access(m->snap_sock, F_OK) < 0) {
                char ignore[512];

                snprintf(msg, size, "the snapshot of VBD %s did not listen on %s",
                         vbdctl_name(sv->domid, sv->devid), m->snap_sock);
                snap_stop(m, ignore, sizeof(ignore));
                return -ETIMEDOUT;
        }
        snprintf(m->ex.nbd, sizeof(m->ex.nbd), "%s", m->snap_sock);
        return 0;
}

/* ---- set up and tear down ---- */

/* Undo what m says is set up, last first.  Stops at a busy mount point
 * (-EBUSY, everything left as it was). */
static int teardown(struct mnt *m, char *msg, size_t size)
{
        int r = 0;

        if (m->mounted && umount2(m->dir, 0) < 0 && errno != EINVAL) {
                char who[512];

                r = -errno;
                if (r == -EBUSY) {
                        holders(m->dir, who, sizeof(who));
                        snprintf(msg, size, "%s is busy%s%s: nothing was unmounted", m->dir,
                                 *who ? ": in use by " : " (see fuser -vm)", who);
                } else
                        snprintf(msg, size, "umount %s: %s", m->dir, strerror(-r));
                return r;
        }
        m->mounted = false;
        if (*m->disk) {
                int fd = open(m->disk, O_RDONLY | O_CLOEXEC);
                char out[64], err[256];

                if (fd >= 0) { /* down to the export: loop, FUSE, NBD, vbdd */
                        fsync(fd);
                        close(fd);
                }
                if (!strcmp(m->via, "nbd")) {
                        const char *argv[] = {"nbd-client", "-d", m->disk, NULL};

                        run(argv, out, sizeof(out), err, sizeof(err));
                } else {
                        const char *argv[] = {"losetup", "-d", m->disk, NULL};
                        char bf[PATH_MAX];

                        run(argv, out, sizeof(out), err, sizeof(err));
                        /* released once nothing has it open */
                        snprintf(bf, sizeof(bf), "/sys/block/%s/loop/backing_file",
                                 strrchr(m->disk, '/') + 1);
                        for (int i = 0; i < 300 && access(bf, F_OK) == 0; i++)
                                usleep(10 * 1000);
                }
                m->disk[0] = '\0';
        }
        if (m->fuse_pid > 0 || is_mounted(m->fuse_dir)) {
                for (int i = 0; i < 100 && umount2(m->fuse_dir, 0) < 0 && errno == EBUSY; i++)
                        usleep(20 * 1000);
                if (is_mounted(m->fuse_dir))
                        umount2(m->fuse_dir, MNT_DETACH);
                if (m->fuse_pid > 0 && vbdctl_wait_gone(m->fuse_pid, 10000, NULL) < 0) {
                        kill(m->fuse_pid, SIGTERM);
                        vbdctl_wait_gone(m->fuse_pid, 5000, NULL);
                }
                m->fuse_pid = 0;
        }
        if (m->snap) {
                if (snap_stop(m, msg, size) < 0 && !r)
                        r = -EIO;
        } else if (vbdctl_export_stop(&m->ex, 60000) < 0 && !r) {
                snprintf(msg, size, "vbdd did not exit in time: killed");
                r = -ETIMEDOUT;
        }
        if (*m->work) {
                char path[PATH_MAX + 32];
                size_t wl = strlen(m->work);

                rmdir(m->fuse_dir);
                if (!strncmp(m->dir, m->work, wl) && m->dir[wl] == '/')
                        rmdir(m->dir); /* a private mount point (layer create) */
                snprintf(path, sizeof(path), "%s/nbdfuse.pid", m->work);
                unlink(path);
                snprintf(path, sizeof(path), "%s/nbdfuse.log", m->work);
                unlink(path);
                rmdir(m->work);
        }
        if (*m->state)
                unlink(m->state);
        return r;
}

/* The block device takes writes: a read-write mount, or a snapshot's, whose
 * writes (a journal's replay) go to the snapshot's thrown-away overlay. */
static bool dev_writable(const struct mnt *m)
{
        return m->rw || m->snap;
}

static int start_fuse(struct mnt *m, char *msg, size_t size)
{
        char pidfile[PATH_MAX + 16], log[PATH_MAX + 16];
        long long deadline = now_ms() + 10000;
        int status;

        snprintf(m->fuse_dir, sizeof(m->fuse_dir), "%s/fuse", m->work);
        snprintf(m->fuse_file, sizeof(m->fuse_file), "%s/disk", m->fuse_dir);
        snprintf(pidfile, sizeof(pidfile), "%s/nbdfuse.pid", m->work);
        snprintf(log, sizeof(log), "%s/nbdfuse.log", m->work);
        if (mkdir(m->fuse_dir, 0700) < 0) {
                snprintf(msg, size, "%s: %s", m->fuse_dir, strerror(errno));
                return -errno;
        }
        m->fuse_pid = fork();
        if (m->fuse_pid < 0) {
                snprintf(msg, size, "fork: %s", strerror(errno));
                m->fuse_pid = 0;
                return -EIO;
        }
        if (m->fuse_pid == 0) {
                int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                setsid();
                if (dev_writable(m))
                        execlp("nbdfuse", "nbdfuse", "-P", pidfile, m->fuse_file, "--unix",
                               m->ex.nbd, (char *)NULL);
                else
                        execlp("nbdfuse", "nbdfuse", "-r", "-P", pidfile, m->fuse_file, "--unix",
                               m->ex.nbd, (char *)NULL);
                fprintf(stderr, "cannot run nbdfuse: %s\n", strerror(errno));
                _exit(127);
        }
        for (struct stat st; stat(pidfile, &st) < 0 || st.st_size == 0;) {
                if (waitpid(m->fuse_pid, &status, WNOHANG) == m->fuse_pid) {
                        char line[512];

                        vbdctl_first_line(log, line, sizeof(line));
                        snprintf(msg, size, "nbdfuse failed: %s", line);
                        m->fuse_pid = 0;
                        return -EIO;
                }
                if (now_ms() > deadline) {
                        snprintf(msg, size, "nbdfuse did not start in time");
                        return -ETIMEDOUT;
                }
                usleep(2 * 1000);
        }
        return 0;
}

static int attach_loop(struct mnt *m, char *msg, size_t size)
{
        const char *rw[] = {"losetup", "--find", "--show", "--partscan", m->fuse_file, NULL};
        const char *ro[] = {"losetup",     "--find",     "--show", "--partscan",
                            "--read-only", m->fuse_file, NULL};
        char out[64], err[512];
        int r = run(dev_writable(m) ? rw : ro, out, sizeof(out), err, sizeof(err));

        if (r || strncmp(out, "/dev/loop", 9)) {
                snprintf(msg, size, "losetup: %s", *err ? err : "no loop device");
                return -EIO;
        }
        snprintf(m->disk, sizeof(m->disk), "%s", out);
        return 0;
}

/* The nbd module's max_part (partitions per device; with 0 an older
 * kernel shows none, 6.1 still adds them), -1 when it cannot be read. */
static int nbd_max_part(void)
{
        return vbdctl_read_int("/sys/module/nbd/parameters/max_part", -1);
}

/* The kernel's NBD client: the first free /dev/nbdN (tests/xen's mount
 * test runs this in a Debian dom0: nbd-client 3.24, netlink, kernel 6.1). */
static int attach_nbd(struct mnt *m, char *msg, size_t size)
{
        for (unsigned i = 0; i < 128; i++) {
                char path[64], dev[32], out[64], err[512];
                const char *argv[] = {
                    "nbd-client", "-unix", m->ex.nbd, dev, dev_writable(m) ? NULL : "-readonly",
                    NULL};

                snprintf(path, sizeof(path), "/sys/block/nbd%u", i);
                if (access(path, F_OK) < 0)
                        break;
                snprintf(path, sizeof(path), "/sys/block/nbd%u/pid", i);
                if (access(path, F_OK) == 0)
                        continue; /* connected */
                snprintf(dev, sizeof(dev), "/dev/nbd%u", i);
                if (run(argv, out, sizeof(out), err, sizeof(err)) == 0) {
                        snprintf(m->disk, sizeof(m->disk), "%s", dev);
                        return 0;
                }
                snprintf(msg, size, "nbd-client: %s", err);
                return -EIO;
        }
        snprintf(msg, size, "no free /dev/nbdN");
        return -EBUSY;
}

/* Pick the partition (or the whole disk) and mount it. */
static int mount_fs(struct mnt *m, unsigned want, const char *fstype, char *msg, size_t size)
{
        unsigned parts[MAX_PARTS], n = partitions(m->disk, parts);
        char fs[64] = "", list[2048], out[256], err[512];
        const char *argv[10];
        unsigned k = 0;
        int r;

        if (!n) { /* the kernel did not scan it (or there is no table) */
                const char *px[] = {"partx", "-a", m->disk, NULL};

                run(px, out, sizeof(out), err, sizeof(err));
                n = partitions(m->disk, parts);
        }
        if (!n && !strcmp(m->via, "nbd") && nbd_max_part() == 0) {
                const char *bk[] = {"blkid", "-p", "-o", "value", "-s", "PTTYPE", m->disk, NULL};
                char pt[64];

                if (run(bk, pt, sizeof(pt), err, sizeof(err)) == 0 && *pt) {
                        snprintf(msg, size,
                                 "%s has a partition table (%s) the kernel cannot show on %s: "
                                 "the nbd module was loaded with max_part=0 (reload it with "
                                 "max_part=16, or use VBD_MOUNT_VIA=fuse)",
                                 m->image, pt, m->disk);
                        return -EINVAL;
                }
        }
        if (want) {
                bool found = false;

                for (unsigned i = 0; i < n; i++)
                        found |= parts[i] == want;
                if (!n) {
                        snprintf(msg, size,
                                 "%s has no partition table: mount it without --partition",
                                 m->image);
                        return -ENOENT;
                }
                if (!found) {
                        list_partitions(m->disk, parts, n, list, sizeof(list));
                        snprintf(msg, size, "%s has no partition %u; it has %s", m->image, want,
                                 list);
                        return -ENOENT;
                }
                m->partition = want;
        } else if (n == 1)
                m->partition = parts[0];
        else if (n > 1) {
                list_partitions(m->disk, parts, n, list, sizeof(list));
                snprintf(msg, size, "%s has %u partitions: %s; choose one with --partition N",
                         m->image, n, list);
                return -EINVAL;
        }
        if (m->partition) {
                if ((r = part_node(m->disk, m->partition, m->dev, sizeof(m->dev))) < 0) {
                        snprintf(msg, size, "%sp%u: %s", m->disk, m->partition, strerror(-r));
                        return r;
                }
        } else
                snprintf(m->dev, sizeof(m->dev), "%s", m->disk);
        m->t_attach = now_ms() - m->t0;
        probe_fs(m->dev, fs, sizeof(fs));
        m->t_probe = now_ms() - m->t0;
        if (!*fs && !fstype) {
                if (m->partition)
                        snprintf(msg, size, "partition %u of %s: no filesystem found", m->partition,
                                 m->image);
                else
                        snprintf(msg, size, "%s: no partition table and no filesystem found",
                                 m->image);
                return -EINVAL;
        }
        snprintf(m->fstype, sizeof(m->fstype), "%s", fstype ? fstype : fs);
        argv[k++] = "mount";
        if (!m->rw) {
                argv[k++] = "-o";
                argv[k++] = "ro";
        }
        argv[k++] = "-t";
        argv[k++] = m->fstype;
        argv[k++] = m->dev;
        argv[k++] = m->dir;
        argv[k] = NULL;
        if ((r = run(argv, out, sizeof(out), err, sizeof(err))) != 0) {
                snprintf(msg, size, "%s",
                         !*err                         ? "mount failed"
                         : !strncmp(err, "mount: ", 7) ? err + 7
                                                       : err);
                return -EIO;
        }
        m->mounted = true;
        m->t_mount = now_ms() - m->t0;
        return 0;
}

/* ---- the verbs ---- */

struct args {
        const char *pos[3];
        unsigned npos, partition;
        const char *fstype;
        bool rw, list;
};

bool vbdctl_fstype_ok(const char *t)
{
        for (const char *s = t; *s; s++)
                if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_')
                        return false;
        return *t && strlen(t) <= 31;
}

static int opt(struct vbdctl *o, int c, const char *arg, void *data)
{
        struct args *a = data;
        uint32_t v;

        switch (c) {
        case 'p':
                if (vbd_parse_u32(arg, 4096, &v) < 0 || !v)
                        return vbdctl_usage_error(o, "--partition: a number from 1: %s", arg);
                a->partition = v;
                break;
        case 'w':
                a->rw = true;
                break;
        case 'T':
                if (!vbdctl_fstype_ok(arg))
                        return vbdctl_usage_error(o, "--fstype: a filesystem type: %s", arg);
                a->fstype = arg;
                break;
        case 'l':
                a->list = true;
                break;
        }
        return 0;
}

/* Take the positional arguments out of argv (getopt would reject them);
 * takes_arg: the long options (and -d -n -t) that take a value. */
static int take_positional(int argc, char **argv, struct args *a, const char *const *takes_arg)
{
        int k = 1;

        for (int i = 1; i < argc; i++) {
                bool value = false;

                if (!strcmp(argv[i], "--")) {
                        while (++i < argc && a->npos < 3)
                                a->pos[a->npos++] = argv[i];
                        break;
                }
                if (argv[i][0] != '-' || !argv[i][1]) {
                        if (a->npos == 3)
                                return -1;
                        a->pos[a->npos++] = argv[i];
                        continue;
                }
                argv[k++] = argv[i];
                for (unsigned j = 0; takes_arg[j]; j++)
                        value |= !strcmp(argv[i], takes_arg[j]);
                if (value && i + 1 < argc)
                        argv[k++] = argv[++i];
        }
        argv[k] = NULL;
        return k;
}

static const char *const takes_arg[] = {"-d",       "-n",        "-t",        "--domid",
                                        "--devid",  "--timeout", "--ctl-dir", "--partition",
                                        "--fstype", NULL};

static int mount_list(struct vbdctl *o)
{
        char run_path[1024];
        json_t *all, *j;
        size_t i;

        run_dir(run_path, sizeof(run_path));
        all = state_all(run_path);
        json_array_foreach(all, i, j)
        {
                struct mnt m;
                bool stale = state_load(j, &m) < 0 ||
                             (m.snap ? m.snap_pid <= 0 || kill(m.snap_pid, 0) < 0 : !m.ex.pid) ||
                             !is_mounted(m.dir) || (!strcmp(m.via, "fuse+loop") && !m.fuse_pid);

                json_object_set_new(j, "stale", json_boolean(stale));
        }
        if (o->json) {
                vbdctl_print_json(all);
                return 0;
        }
        if (json_array_size(all))
                printf("%-24s %-32s %-14s %-9s %-3s %s\n", "DIR", "IMAGE", "DEVICE", "VIA", "RW",
                       "STATE");
        json_array_foreach(all, i, j)
        {
                json_t *sn = json_object_get(j, "snapshot");
                char of[96] = "";

                if (json_is_object(sn))
                        snprintf(of, sizeof(of), ", snapshot of %s (pid %lld)",
                                 vbdctl_name((uint32_t)vbdctl_jint(sn, "domid"),
                                             (uint32_t)vbdctl_jint(sn, "devid")),
                                 vbdctl_jint(sn, "pid"));
                printf("%-24s %-32s %-14s %-9s %-3s %s%s\n", jstr(j, "dir"), jstr(j, "image"),
                       jstr(j, "device"), jstr(j, "via"),
                       json_is_true(json_object_get(j, "rw")) ? "rw" : "ro",
                       json_is_true(json_object_get(j, "stale"))
                           ? "stale (vbd-ctl umount DIR cleans up)"
                           : "mounted",
                       of);
        }
        json_decref(all);
        return 0;
}

/*
 * Set up the mount m of image on dir (NULL: a private mount point,
 * <work>/root, that teardown removes): 0, or -errno with msg saying why and
 * nothing left behind.
 */
static int mount_setup(struct vbdctl *o, struct mnt *m, const char *image, const char *dir, bool rw,
                       unsigned partition, const char *fstype, char *msg, size_t size)
{
        const char *via = getenv("VBD_MOUNT_VIA");
        char tmp[PATH_MAX + 16];
        struct stat st, ist;
        struct server sv;
        bool served;
        int r;

        memset(m, 0, sizeof(*m));
        m->via = "fuse+loop";
        m->t0 = now_ms();
        if (geteuid() != 0) {
                snprintf(msg, size, "mounting needs root");
                return -EPERM;
        }
        if (!realpath(image, m->image) || stat(m->image, &ist) < 0) {
                snprintf(msg, size, "%s: %s", image, strerror(errno));
                return -EIO;
        }
        if (dir) {
                errno = 0;
                if (!realpath(dir, m->dir) || stat(m->dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
                        snprintf(msg, size, "%s: %s", dir,
                                 errno ? strerror(errno) : "not a directory");
                        return -EIO;
                }
                if (is_mounted(m->dir)) {
                        snprintf(msg, size, "%s is already a mount point", m->dir);
                        return -EBUSY;
                }
        }
        if (fstype && !known_fstype(fstype)) {
                snprintf(msg, size,
                         "unknown filesystem type '%s' (not in /proc/filesystems, no mount.%s)",
                         fstype, fstype);
                return -EINVAL;
        }
        if ((r = vbdctl_image_spec(m->image, m->spec, sizeof(m->spec))) < 0) {
                snprintf(msg, size, "%s: %s", m->image, strerror(-r));
                return r;
        }
        m->rw = rw;
        if (access("/sys/block/nbd0", F_OK) == 0 && have_program("nbd-client") &&
            !(via && !strcmp(via, "fuse")))
                m->via = "nbd";
        else if (!have_program("nbdfuse") || !have_program("losetup")) {
                snprintf(msg, size,
                         "no way to mount: no nbd module (with nbd-client), and no nbdfuse and "
                         "losetup");
                return -EIO;
        }
        /* a guest's disk: through its daemon's snapshot, read-only only */
        served = find_server(o, &ist, &sv) == 1;
        if (served && rw) {
                snprintf(msg, size,
                         "%s is in use: served writable by pid %d (%s), VBD %s: a read-write "
                         "mount would change its guest's disk under it (a read-only mount goes "
                         "through a snapshot)",
                         m->image, (int)sv.pid, sv.comm, vbdctl_name(sv.domid, sv.devid));
                return -EBUSY;
        }
        run_dir(m->run, sizeof(m->run));
        if (strlen(m->run) > 900) {
                snprintf(msg, size, "VBD_RUN_DIR is too long");
                return -ENAMETOOLONG;
        }
        if (dir) {
                json_t *all = state_all(m->run), *j;
                size_t i;
                bool stale = false;

                json_array_foreach(all, i, j) stale |= !strcmp(jstr(j, "dir"), m->dir);
                json_decref(all);
                if (stale) {
                        snprintf(msg, size,
                                 "%s has a vbd mount that is gone: 'vbd-ctl umount %s' cleans it "
                                 "up first",
                                 m->dir, m->dir);
                        return -EBUSY;
                }
        }
        snprintf(tmp, sizeof(tmp), "%s", m->run);
        for (char *s = tmp + 1; *s; s++) /* mkdir -p */
                if (*s == '/') {
                        *s = '\0';
                        mkdir(tmp, 0755);
                        *s = '/';
                }
        if (mkdir(m->run, 0700) < 0 && errno != EEXIST) {
                snprintf(msg, size, "%s: %s", m->run, strerror(errno));
                return -EIO;
        }
        snprintf(m->work, sizeof(m->work), "%s/m-XXXXXX", m->run);
        if (!mkdtemp(m->work)) {
                snprintf(msg, size, "%s: %s", m->run, strerror(errno));
                return -EIO;
        }
        snprintf(m->id, sizeof(m->id), "%s", strrchr(m->work, '/') + 1);
        if (!dir) {
                snprintf(m->dir, sizeof(m->dir), "%s/root", m->work);
                if (mkdir(m->dir, 0755) < 0) {
                        snprintf(msg, size, "%s: %s", m->dir, strerror(errno));
                        rmdir(m->work);
                        return -EIO;
                }
        }
        if ((r = served ? snap_start(m, &sv, msg, size)
                        : vbdctl_export_start(o, m->work, m->spec, m->rw, true, &m->ex, msg,
                                              size)) < 0 ||
            (m->t_export = now_ms() - m->t0, 0) ||
            (r = !strcmp(m->via, "nbd") ? attach_nbd(m, msg, size) : start_fuse(m, msg, size)) <
                0 ||
            (!strcmp(m->via, "fuse+loop") && (r = attach_loop(m, msg, size)) < 0) ||
            (r = mount_fs(m, partition, fstype, msg, size)) < 0) {
                char ignore[8192];

                teardown(m, ignore, sizeof(ignore));
                return -EIO;
        }
        snprintf(m->state, sizeof(m->state), "%s/%s.json", m->run, m->id);
        if (state_save(m, now_ms() - m->t0) < 0) {
                char ignore[8192];

                teardown(m, ignore, sizeof(ignore));
                snprintf(msg, size, "%s: cannot write the state", m->state);
                return -EIO;
        }
        return 0;
}

struct vbdctl_mount {
        struct mnt m;
};

int vbdctl_mount_start(struct vbdctl *o, const char *image, bool rw, unsigned partition,
                       const char *fstype, struct vbdctl_mount **ret, char *msg, size_t size)
{
        struct vbdctl_mount *vm = calloc(1, sizeof(*vm));
        int r;

        *ret = NULL;
        if (!vm) {
                snprintf(msg, size, "out of memory");
                return -ENOMEM;
        }
        if ((r = mount_setup(o, &vm->m, image, NULL, rw, partition, fstype, msg, size)) < 0) {
                free(vm);
                return r;
        }
        *ret = vm;
        return 0;
}

const char *vbdctl_mount_dir(const struct vbdctl_mount *vm)
{
        return vm->m.dir;
}

const char *vbdctl_mount_fstype(const struct vbdctl_mount *vm)
{
        return vm->m.fstype;
}

int vbdctl_mount_stop(struct vbdctl_mount *vm, char *msg, size_t size)
{
        int r = teardown(&vm->m, msg, size);

        if (r == 0 && vm->m.ex.status > 0 &&
            (!WIFEXITED(vm->m.ex.status) || WEXITSTATUS(vm->m.ex.status) != 0)) {
                snprintf(msg, size, "vbdd %s %d as it flushed the image",
                         WIFEXITED(vm->m.ex.status) ? "exited with status" : "was killed by signal",
                         WIFEXITED(vm->m.ex.status) ? WEXITSTATUS(vm->m.ex.status)
                                                    : WTERMSIG(vm->m.ex.status));
                r = -EIO;
        }
        return r;
}

static int run_mount(struct vbdctl *o, int argc, char **argv)
{
        static const struct option extra[] = {
            {"partition", required_argument, NULL, 'p'},
            {"rw", no_argument, NULL, 'w'},
            {"fstype", required_argument, NULL, 'T'},
            {"list", no_argument, NULL, 'l'},
            {},
        };
        struct args a = {0};
        struct mnt m;
        char msg[16384] = "";
        int r;

        if ((argc = take_positional(argc, argv, &a, takes_arg)) < 0)
                return vbdctl_usage_error(o, "too many arguments");
        if ((r = vbdctl_parse(o, argc, argv, extra, opt, &a)))
                return r;
        if (a.list) {
                if (a.npos || a.rw || a.partition || a.fstype)
                        return vbdctl_usage_error(o, "--list, alone");
                return mount_list(o);
        }
        if (a.npos != 2)
                return vbdctl_usage_error(o, "mount IMAGE DIR [--partition N] [--rw] [--fstype T]");
        if ((r = mount_setup(o, &m, a.pos[0], a.pos[1], a.rw, a.partition, a.fstype, msg,
                             sizeof(msg))) < 0)
                return vbdctl_fail(o, r, false, "%s", msg);
        if (o->json)
                vbdctl_print_json(json_load_file(m.state, 0, NULL));
        else {
                char where[32] = "the whole disk", of[96] = "";

                if (m.partition)
                        snprintf(where, sizeof(where), "partition %u", m.partition);
                if (m.snap)
                        snprintf(of, sizeof(of), ", a snapshot of running VBD %s (pid %d)",
                                 vbdctl_name(m.snap_domid, m.snap_devid), (int)m.snap_pid);
                printf("mounted %s (%s, %s) on %s %s through %s (%s)%s in %lld ms\n", m.image,
                       where, m.fstype, m.dir, m.rw ? "read-write" : "read-only", m.via, m.dev, of,
                       now_ms() - m.t0);
        }
        return 0;
}

static int run_umount(struct vbdctl *o, int argc, char **argv)
{
        struct args a = {0};
        char dir[PATH_MAX], run_path[1024], msg[8192] = "";
        json_t *all, *j, *found = NULL;
        struct mnt m;
        size_t i;
        int r;

        if ((argc = take_positional(argc, argv, &a, takes_arg)) < 0)
                return vbdctl_usage_error(o, "too many arguments");
        if ((r = vbdctl_parse(o, argc, argv, NULL, NULL, NULL)))
                return r;
        if (a.npos != 1)
                return vbdctl_usage_error(o, "umount DIR");
        if (!realpath(a.pos[0], dir))
                snprintf(dir, sizeof(dir), "%s", a.pos[0]);
        run_dir(run_path, sizeof(run_path));
        all = state_all(run_path);
        json_array_foreach(all, i, j) if (!strcmp(jstr(j, "dir"), dir)) found = j;
        if (!found) {
                json_decref(all);
                return vbdctl_fail(o, -EIO, false,
                                   "%s: not mounted by vbd-ctl mount (no state in %s)", dir,
                                   run_path);
        }
        if (state_load(found, &m) < 0) {
                json_decref(all);
                return vbdctl_fail(o, -EIO, false, "%s: bad state file in %s", dir, run_path);
        }
        snprintf(m.run, sizeof(m.run), "%s", run_path);
        snprintf(m.state, sizeof(m.state), "%s/%s.json", run_path, m.id);
        json_decref(all);
        m.mounted = is_mounted(m.dir);
        if ((r = teardown(&m, msg, sizeof(msg))) < 0)
                return vbdctl_fail(o, r, false, "%s", msg);
        if (o->json)
                vbdctl_print_json(json_pack("{s:s,s:s}", "dir", m.dir, "image", m.image));
        else
                printf("unmounted %s (%s)\n", m.dir, m.image);
        return 0;
}

const struct vbdctl_verb vbdctl_verb_mount = {
    .name = "mount",
    .run = run_mount,
    .args = "IMAGE DIR [--partition N] [--rw] [--fstype T] | --list",
    .summary = "mount a raw or qcow2 image (a partition or the whole disk) in dom0",
};

const struct vbdctl_verb vbdctl_verb_umount = {
    .name = "umount",
    .run = run_umount,
    .args = "DIR",
    .summary = "unmount what vbd-ctl mount mounted on DIR, flushing the image",
};
