/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbdbench: tiny block-device benchmark for the test domU (built with
 * gcc -static on the host and put in the domU's busybox initramfs).
 *
 *   vbdbench seqwrite DEV MIB [SECS]      1 MiB O_DIRECT writes from offset 0
 *   vbdbench seqread  DEV MIB [SECS]      1 MiB O_DIRECT reads from offset 0
 *   vbdbench randread DEV SECS [JOBS [SPAN_MIB]]
 *                                         4 KiB O_DIRECT reads at random
 *                                         aligned offsets, JOBS threads (QD)
 *   vbdbench syncwrite DEV SRC OFF BS dsync|fsync
 *                                         copy file SRC to DEV at byte offset
 *                                         OFF in BS-byte buffered writes, each
 *                                         made durable (O_DSYNC, or fsync()
 *                                         after each write): a flush storm
 *   vbdbench xswrite PATH VALUE           write one xenstore node through
 *                                         /dev/xen/xenbus (the guest's own
 *                                         frontend directory)
 *   vbdbench xsread PATH                  print one xenstore node's value
 *   vbdbench xswait PATH SECS             wait (polling) until the node can
 *                                         be read, print its value; exit 1
 *                                         after SECS seconds (domu-init's
 *                                         hold: dom0 releases the guest)
 *   vbdbench churn DEV SPAN_MIB STOP SECS verified writes: 4 KiB O_DIRECT
 *                                         writes at random blocks of the
 *                                         first SPAN_MIB, each stamped with
 *                                         its block and a serial, each
 *                                         followed by a read of another
 *                                         written block that must hold its
 *                                         last stamp; fdatasync every 64
 *                                         writes; a progress line every 2 s;
 *                                         until xenstore node STOP can be
 *                                         read (or SECS), then every written
 *                                         block is read back and checked
 *
 * The benchmark ops print one line:
 *   VBDBENCH op=<op> jobs=<n> ios=<n> bytes=<n> secs=<s> MBps=<x> iops=<y>
 * Exit status 0 on success, 1 on any I/O error (which is also printed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <xen/io/xs_wire.h>

#define BIG      (1024 * 1024)
#define SMALL    4096
#define MAX_JOBS 16
#ifndef VBDBENCH_XENBUS
#define VBDBENCH_XENBUS "/dev/xen/xenbus" /* a -D for testing against a fake */
#endif

struct vbdbench_job {
        int fd;
        uint64_t span_blocks;
        double deadline;
        uint64_t seed;
        uint64_t ios;
        int err;
};

static double vbdbench_now(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t vbdbench_rand(uint64_t *s)
{
        /* xorshift64* */
        uint64_t x = *s;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *s = x;
        return x * 0x2545F4914F6CDD1DULL;
}

static void vbdbench_report(const char *op, int jobs, uint64_t ios, uint64_t bytes, double secs)
{
        if (secs <= 0)
                secs = 1e-9;
        printf("VBDBENCH op=%s jobs=%d ios=%llu bytes=%llu secs=%.3f MBps=%.2f iops=%.1f\n", op,
               jobs, (unsigned long long)ios, (unsigned long long)bytes, secs, bytes / secs / 1e6,
               ios / secs);
        fflush(stdout);
}

static int vbdbench_seq(const char *op, const char *dev, long mib, double max_secs)
{
        int writing = strcmp(op, "seqwrite") == 0;
        void *buf;
        uint64_t ios = 0;
        double t0, t1;
        int fd;

        fd = open(dev, (writing ? O_WRONLY : O_RDONLY) | O_DIRECT);
        if (fd < 0) {
                printf("VBDBENCH-ERROR open %s: %s\n", dev, strerror(errno));
                return 1;
        }
        if (posix_memalign(&buf, SMALL, BIG)) {
                printf("VBDBENCH-ERROR no memory\n");
                return 1;
        }
        for (size_t i = 0; i < BIG; i++)
                ((unsigned char *)buf)[i] = (unsigned char)(i * 7 + 3);
        t0 = vbdbench_now();
        t1 = t0;
        for (long i = 0; i < mib; i++) {
                ssize_t n = writing ? pwrite(fd, buf, BIG, (off_t)i * BIG)
                                    : pread(fd, buf, BIG, (off_t)i * BIG);

                if (n != BIG) {
                        printf("VBDBENCH-ERROR %s at %ld MiB: %s\n", op, i,
                               n < 0 ? strerror(errno) : "short");
                        return 1;
                }
                ios++;
                t1 = vbdbench_now();
                if (max_secs > 0 && t1 - t0 > max_secs)
                        break;
        }
        if (writing && fdatasync(fd)) {
                printf("VBDBENCH-ERROR fdatasync: %s\n", strerror(errno));
                return 1;
        }
        t1 = vbdbench_now();
        vbdbench_report(op, 1, ios, ios * BIG, t1 - t0);
        close(fd);
        free(buf);
        return 0;
}

static void *vbdbench_randjob(void *arg)
{
        struct vbdbench_job *j = arg;
        void *buf;

        if (posix_memalign(&buf, SMALL, SMALL)) {
                j->err = ENOMEM;
                return NULL;
        }
        while (vbdbench_now() < j->deadline) {
                for (int k = 0; k < 16; k++) {
                        off_t off = (off_t)(vbdbench_rand(&j->seed) % j->span_blocks) * SMALL;

                        if (pread(j->fd, buf, SMALL, off) != SMALL) {
                                j->err = errno ? errno : EIO;
                                free(buf);
                                return NULL;
                        }
                        j->ios++;
                }
        }
        free(buf);
        return NULL;
}

static int vbdbench_randread(const char *dev, double secs, int jobs, long span_mib)
{
        struct vbdbench_job job[MAX_JOBS];
        pthread_t tid[MAX_JOBS];
        uint64_t size = 0, ios = 0;
        struct stat st;
        double t0, t1;
        int fd, rc = 0;

        fd = open(dev, O_RDONLY | O_DIRECT);
        if (fd < 0 || fstat(fd, &st) < 0) {
                printf("VBDBENCH-ERROR open %s: %s\n", dev, strerror(errno));
                return 1;
        }
        size = (uint64_t)st.st_size;
        if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) < 0) {
                printf("VBDBENCH-ERROR size of %s: %s\n", dev, strerror(errno));
                return 1;
        }
        if (span_mib > 0 && (uint64_t)span_mib * BIG < size)
                size = (uint64_t)span_mib * BIG;
        if (size < SMALL) {
                printf("VBDBENCH-ERROR device too small\n");
                return 1;
        }
        t0 = vbdbench_now();
        for (int i = 0; i < jobs; i++) {
                job[i] = (struct vbdbench_job){.fd = fd,
                                               .span_blocks = size / SMALL,
                                               .deadline = t0 + secs,
                                               .seed = 0x9E3779B97F4A7C15ULL * (i + 1)};
                if (pthread_create(&tid[i], NULL, vbdbench_randjob, &job[i])) {
                        printf("VBDBENCH-ERROR pthread_create\n");
                        return 1;
                }
        }
        for (int i = 0; i < jobs; i++) {
                pthread_join(tid[i], NULL);
                ios += job[i].ios;
                if (job[i].err) {
                        printf("VBDBENCH-ERROR randread: %s\n", strerror(job[i].err));
                        rc = 1;
                }
        }
        t1 = vbdbench_now();
        if (!rc)
                vbdbench_report("randread", jobs, ios, ios * SMALL, t1 - t0);
        close(fd);
        return rc;
}

static int vbdbench_syncwrite(const char *dev, const char *src, long long off, long bs,
                              const char *how)
{
        int dsync = strcmp(how, "dsync") == 0;
        uint64_t ios = 0, bytes = 0;
        double t0;
        char *buf;
        int in, fd;

        if (bs <= 0 || bs > BIG || off < 0) {
                printf("VBDBENCH-ERROR bad syncwrite arguments\n");
                return 1;
        }
        in = open(src, O_RDONLY);
        fd = open(dev, O_WRONLY | (dsync ? O_DSYNC : 0));
        buf = malloc(bs);
        if (in < 0 || fd < 0 || !buf) {
                printf("VBDBENCH-ERROR open %s/%s: %s\n", src, dev, strerror(errno));
                return 1;
        }
        t0 = vbdbench_now();
        for (;;) {
                ssize_t n = read(in, buf, bs);

                if (n < 0) {
                        printf("VBDBENCH-ERROR read %s: %s\n", src, strerror(errno));
                        return 1;
                }
                if (n == 0)
                        break;
                if (pwrite(fd, buf, n, off + bytes) != n) {
                        printf("VBDBENCH-ERROR syncwrite at %llu: %s\n",
                               (unsigned long long)(off + bytes), strerror(errno));
                        return 1;
                }
                if (!dsync && fsync(fd)) {
                        printf("VBDBENCH-ERROR fsync: %s\n", strerror(errno));
                        return 1;
                }
                bytes += n;
                ios++;
        }
        vbdbench_report(dsync ? "dsyncwrite" : "fsyncwrite", 1, ios, bytes, vbdbench_now() - t0);
        close(fd);
        close(in);
        free(buf);
        return 0;
}

/* read exactly len bytes from the xenbus device (it may split a reply) */
static int vbdbench_read_full(int fd, void *buf, size_t len)
{
        size_t got = 0;

        while (got < len) {
                ssize_t n = read(fd, (char *)buf + got, len - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                got += n;
        }
        return 0;
}

/*
 * One xenstore request through the guest's /dev/xen/xenbus: PATH (with its
 * NUL) then VALUE (without). The reply's payload, NUL-terminated, goes into
 * reply (XENSTORE_PAYLOAD_MAX + 1 bytes). Returns the reply's type (XS_ERROR:
 * reply holds the errno name, e.g. "ENOENT"), or -1 after printing why.
 * A relative PATH is relative to the guest's /local/domain/<domid>.
 */
static int vbdbench_xs_talk(int fd, uint32_t type, const char *path, const char *value,
                            char *reply)
{
        static uint32_t req_id;
        struct xsd_sockmsg m = {.type = type, .req_id = ++req_id};
        char buf[sizeof(m) + XENSTORE_PAYLOAD_MAX];
        size_t pl = strlen(path) + 1, vl = value ? strlen(value) : 0;

        if (pl + vl > XENSTORE_PAYLOAD_MAX) {
                printf("VBDBENCH-ERROR xenstore %s: request too long\n", path);
                return -1;
        }
        m.len = pl + vl;
        memcpy(buf, &m, sizeof(m));
        memcpy(buf + sizeof(m), path, pl);
        if (vl)
                memcpy(buf + sizeof(m) + pl, value, vl);
        if (write(fd, buf, sizeof(m) + m.len) != (ssize_t)(sizeof(m) + m.len)) {
                printf("VBDBENCH-ERROR xenstore %s: write: %s\n", path, strerror(errno));
                return -1;
        }
        if (vbdbench_read_full(fd, &m, sizeof(m)) < 0 || m.len > XENSTORE_PAYLOAD_MAX ||
            vbdbench_read_full(fd, reply, m.len) < 0) {
                printf("VBDBENCH-ERROR xenstore %s: bad or short reply\n", path);
                return -1;
        }
        reply[m.len] = 0;
        return (int)m.type;
}

static int vbdbench_xs_open(void)
{
        int fd = open(VBDBENCH_XENBUS, O_RDWR);

        if (fd < 0)
                printf("VBDBENCH-ERROR open %s: %s\n", VBDBENCH_XENBUS, strerror(errno));
        return fd;
}

static int vbdbench_xswrite(const char *path, const char *value)
{
        char reply[XENSTORE_PAYLOAD_MAX + 1];
        int fd, t;

        fd = vbdbench_xs_open();
        if (fd < 0)
                return 1;
        t = vbdbench_xs_talk(fd, XS_WRITE, path, value, reply);
        close(fd);
        if (t == XS_WRITE)
                return 0;
        if (t >= 0)
                printf("VBDBENCH-ERROR xswrite %s: %s\n", path, reply);
        return 1;
}

/*
 * xsread PATH: print the node's value. xswait PATH SECS: poll every 100 ms
 * until the node exists and is readable (any XS_ERROR, e.g. ENOENT or
 * EACCES, means "not yet"), then print its value; after SECS seconds give
 * up with exit status 1 and the last error. SECS 0 is one read (xsread).
 */
static int vbdbench_xswait(const char *path, double secs)
{
        char reply[XENSTORE_PAYLOAD_MAX + 1];
        double deadline = vbdbench_now() + secs;
        int fd, t;

        fd = vbdbench_xs_open();
        if (fd < 0)
                return 1;
        for (;;) {
                t = vbdbench_xs_talk(fd, XS_READ, path, NULL, reply);
                if (t < 0)
                        break;
                if (t == XS_READ) {
                        printf("%s\n", reply);
                        close(fd);
                        return 0;
                }
                if (vbdbench_now() >= deadline) {
                        if (secs > 0)
                                printf("VBDBENCH-ERROR xswait %s: still %s after %g s\n", path,
                                       t == XS_ERROR ? reply : "unreadable", secs);
                        else
                                printf("VBDBENCH-ERROR xsread %s: %s\n", path,
                                       t == XS_ERROR ? reply : "unexpected reply");
                        break;
                }
                usleep(100 * 1000);
        }
        close(fd);
        return 1;
}

/*
 * churn: a guest that writes and verifies through a migration.  Block b's
 * stamp is words (serial << 32 | b << 9 | word index): a block read back
 * with another block's data, an older write's, a torn or a shifted one
 * differs.  Only blocks this run wrote are checked (the rest hold whatever
 * dom0 put there).
 */
static void churn_fill(uint64_t *w, uint32_t b, uint32_t serial)
{
        for (uint32_t i = 0; i < SMALL / 8; i++)
                w[i] = (uint64_t)serial << 32 | (uint64_t)b << 9 | i;
}

static int churn_check(int fd, uint64_t *buf, uint64_t *want, uint32_t b, uint32_t serial,
                       const char *when)
{
        ssize_t n = pread(fd, buf, SMALL, (off_t)b * SMALL);

        if (n != SMALL) {
                printf("VBDBENCH-ERROR churn %s read of block %u: %s\n", when, b,
                       n < 0 ? strerror(errno) : "short");
                return -1;
        }
        churn_fill(want, b, serial);
        if (memcmp(buf, want, SMALL) != 0) {
                static unsigned shown;

                if (shown++ >= 10)
                        return 1; /* the console is slow: the count says the rest */
                printf("VBDBENCH-ERROR churn %s mismatch at block %u: want serial %u, "
                       "read word0 %#llx\n",
                       when, b, serial, (unsigned long long)buf[0]);
                return 1;
        }
        return 0;
}

static int vbdbench_churn(const char *dev, long span_mib, const char *stop, double max_secs)
{
        uint32_t blocks = (uint32_t)(span_mib * (BIG / SMALL)), *last = NULL, serial = 0;
        uint64_t writes = 0, reads = 0, syncs = 0, errors = 0, mismatches = 0, seed = 88172645;
        double t0 = vbdbench_now(), next_poll = t0, next_report = t0 + 2, now;
        uint64_t *buf = NULL, *want = NULL;
        char reply[XENSTORE_PAYLOAD_MAX + 1];
        int fd, xs, r;

        if (span_mib < 1 || span_mib > 4096) {
                printf("VBDBENCH-ERROR churn: span 1..4096 MiB\n");
                return 2;
        }
        fd = open(dev, O_RDWR | O_DIRECT);
        xs = vbdbench_xs_open();
        last = calloc(blocks, sizeof(*last)); /* 0: not written by us */
        if (fd < 0 || xs < 0 || !last || posix_memalign((void **)&buf, SMALL, SMALL) ||
            posix_memalign((void **)&want, SMALL, SMALL)) {
                printf("VBDBENCH-ERROR churn: open %s: %s\n", dev, strerror(errno));
                return 1;
        }
        for (;;) {
                uint32_t b = (uint32_t)(vbdbench_rand(&seed) % blocks), o;
                ssize_t n;

                churn_fill(buf, b, ++serial);
                n = pwrite(fd, buf, SMALL, (off_t)b * SMALL);
                if (n != SMALL) {
                        printf("VBDBENCH-ERROR churn write of block %u: %s\n", b,
                               n < 0 ? strerror(errno) : "short");
                        errors++;
                } else {
                        last[b] = serial;
                        writes++;
                }
                /* read back a block written before (maybe this one) */
                o = (uint32_t)(vbdbench_rand(&seed) % blocks);
                if (last[o]) {
                        r = churn_check(fd, buf, want, o, last[o], "live");
                        reads++;
                        errors += r < 0;
                        mismatches += r > 0;
                }
                if (writes % 64 == 0) {
                        if (fdatasync(fd)) {
                                printf("VBDBENCH-ERROR churn fdatasync: %s\n", strerror(errno));
                                errors++;
                        }
                        syncs++;
                }
                now = vbdbench_now();
                if (now >= next_report) {
                        printf("VBDBENCH churn t=%.1f writes=%llu reads=%llu errors=%llu "
                               "mismatches=%llu\n",
                               now - t0, (unsigned long long)writes, (unsigned long long)reads,
                               (unsigned long long)errors, (unsigned long long)mismatches);
                        fflush(stdout);
                        next_report = now + 2;
                }
                if (now >= next_poll) {
                        if (vbdbench_xs_talk(xs, XS_READ, stop, NULL, reply) == XS_READ)
                                break;
                        next_poll = now + 0.2;
                }
                if (max_secs > 0 && now - t0 > max_secs) {
                        printf("VBDBENCH-ERROR churn: %s not written within %g s\n", stop,
                               max_secs);
                        errors++;
                        break;
                }
        }
        if (fdatasync(fd)) {
                printf("VBDBENCH-ERROR churn final fdatasync: %s\n", strerror(errno));
                errors++;
        }
        uint64_t verified = 0;
        for (uint32_t b = 0; b < blocks; b++) {
                if (!last[b])
                        continue;
                r = churn_check(fd, buf, want, b, last[b], "final");
                errors += r < 0;
                mismatches += r > 0;
                verified++;
        }
        printf("VBDBENCH churn done writes=%llu reads=%llu syncs=%llu verified=%llu "
               "errors=%llu mismatches=%llu secs=%.1f\n",
               (unsigned long long)writes, (unsigned long long)reads, (unsigned long long)syncs,
               (unsigned long long)verified, (unsigned long long)errors,
               (unsigned long long)mismatches, vbdbench_now() - t0);
        fflush(stdout);
        close(xs);
        close(fd);
        free(last);
        free(buf);
        free(want);
        return errors || mismatches ? 1 : 0;
}

int main(int argc, char **argv)
{
        if (argc >= 4 && (!strcmp(argv[1], "seqwrite") || !strcmp(argv[1], "seqread")))
                return vbdbench_seq(argv[1], argv[2], atol(argv[3]), argc > 4 ? atof(argv[4]) : 0);
        if (argc >= 4 && !strcmp(argv[1], "randread")) {
                int jobs = argc > 4 ? atoi(argv[4]) : 1;

                if (jobs < 1 || jobs > MAX_JOBS)
                        jobs = 1;
                return vbdbench_randread(argv[2], atof(argv[3]), jobs,
                                         argc > 5 ? atol(argv[5]) : 0);
        }
        if (argc >= 7 && !strcmp(argv[1], "syncwrite"))
                return vbdbench_syncwrite(argv[2], argv[3], atoll(argv[4]), atol(argv[5]), argv[6]);
        if (argc == 4 && !strcmp(argv[1], "xswrite"))
                return vbdbench_xswrite(argv[2], argv[3]);
        if (argc == 3 && !strcmp(argv[1], "xsread"))
                return vbdbench_xswait(argv[2], 0);
        if (argc == 4 && !strcmp(argv[1], "xswait"))
                return vbdbench_xswait(argv[2], atof(argv[3]));
        if (argc == 6 && !strcmp(argv[1], "churn"))
                return vbdbench_churn(argv[2], atol(argv[3]), argv[4], atof(argv[5]));
        fprintf(stderr, "usage: vbdbench seqwrite|seqread DEV MIB [SECS]\n"
                        "       vbdbench randread DEV SECS [JOBS [SPAN_MIB]]\n"
                        "       vbdbench syncwrite DEV SRC OFF BS dsync|fsync\n"
                        "       vbdbench xswrite PATH VALUE\n"
                        "       vbdbench xsread PATH\n"
                        "       vbdbench xswait PATH SECS\n"
                        "       vbdbench churn DEV SPAN_MIB STOP_NODE SECS\n");
        return 2;
}
