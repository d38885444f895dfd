/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vbd-sim: drive a real vbdd-sim from a simulated guest.
 *
 *   vbd-sim dd --image SPEC --if FILE [--seek BYTES]
 *   vbd-sim dd --image SPEC --of FILE [--skip BYTES] [--count BYTES]
 *   vbd-sim bench --image SPEC --rw MODE [--bs N] [--iodepth N] [--runtime S] ...
 *
 * Each run builds a simulation (temp dir, hypervisor, xenstore), attaches
 * the image to domain 1 as devid 51712 with vbdd-sim, connects a blkfront,
 * does the job through the ring, disconnects, detaches and checks that the
 * daemon exits 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "simfront.h"
#include "util/parse.h"
#include "vbd/time.h"

#define DOMID 1
#define DEVID 51712

static const char *prog = "vbd-sim";
static int verbose;
static unsigned stall_timeout_s = 10; /* bench: --stall-timeout */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
        interrupted = sig;
}

static void usage(FILE *f)
{
        fprintf(f, "Usage: vbd-sim [OPTIONS] COMMAND [COMMAND OPTIONS]\n"
                   "\n"
                   "Attach an image to a simulated guest with vbdd-sim and drive it through\n"
                   "the blkif ring, like a guest's blkfront would.\n"
                   "\n"
                   "Commands:\n"
                   "  dd --image SPEC --if FILE [--seek BYTES]\n"
                   "        copy FILE ('-' for stdin) into the disk at byte offset --seek\n"
                   "  dd --image SPEC --of FILE [--skip BYTES] [--count BYTES]\n"
                   "        copy --count bytes (default: to the end) from byte offset --skip\n"
                   "        of the disk into FILE ('-' for stdout)\n"
                   "  bench --image SPEC --rw MODE [--bs N] [--iodepth N] [--runtime S]\n"
                   "        [--verify] [--json] [--size BYTES] [--seed N]\n"
                   "        MODE: read, write, randread, randwrite, randrw (50%% reads).\n"
                   "        Defaults: --bs 4096, --iodepth 32, --runtime 5.  --size limits the\n"
                   "        region used (and creates a raw image that does not exist yet).\n"
                   "        --verify: writes carry a header (offset, generation, seed) and a\n"
                   "        pattern; reads are checked against the last write (or zeros).\n"
                   "        --bs up to 1M; above 44K (11 pages) needs indirect segments.\n"
                   "        Reports the backend's CPU use (utime + stime of vbdd-sim over the\n"
                   "        measured period) as backend_cpu_pct and backend_cpu_ns_per_io, and\n"
                   "        (--json) the simulated guest's own (getrusage of vbd-sim) as\n"
                   "        front_cpu_pct, front_cpu_s and front_cpu_ns_per_io.\n"
                   "\n"
                   "SPEC: any vbdd image spec: raw:/path[,direct=on|off|auto], null:SIZE (e.g.\n"
                   "null:1G), qcow2:/path[,...] (see vbdd --help).\n"
                   "Sizes accept K, M, G, T suffixes (powers of 1024).\n"
                   "\n"
                   "Options:\n"
                   "  --vbdd PATH       vbdd-sim to run (default: $VBD_SIM_VBDD, or vbdd-sim\n"
                   "                    next to this program)\n"
                   "  --mode r|w        attach read-only or read-write (default w)\n"
                   "  --ring-order K    use a ring of 2^K pages (0..4, default 0), per queue\n"
                   "  --queues N        blkif multi-queue: N rings (1..16, default 1), ios\n"
                   "                    spread over them in turn; vbdd-sim gets --max-queues N\n"
                   "  --protocol P      x86_64-abi or x86_32-abi: the ring layout (written to\n"
                   "                    xenstore; default: none written, native x86_64)\n"
                   "  --max-segments N  data pages per request, 1..256 (default: dd 11, bench\n"
                   "                    --bs / 4096); above 11 uses BLKIF_OP_INDIRECT, which\n"
                   "                    the backend must offer (feature-max-indirect-segments)\n"
                   "  --indirect-always send every read/write as BLKIF_OP_INDIRECT\n"
                   "  --events-only     look for responses only after an event-channel event,\n"
                   "                    as blkfront does: a notification the backend fails\n"
                   "                    to send stalls the run (see --stall-timeout)\n"
                   "  --stall-timeout S bench, dd: fail when no request is answered for S seconds\n"
                   "                    (1..3600, default 10)\n"
                   "  --keep            keep the simulation directory (logs, xen.shm)\n"
                   "  -v, --verbose     say what happens; pass -v to vbdd-sim\n"
                   "  -h, --help        this help\n"
                   "\n"
                   "Exit status: 0 success, 1 failure (I/O error, verify mismatch, daemon\n"
                   "error), 2 usage error.\n");
}

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_usage(const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "%s: ", prog);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry '%s --help'.\n", prog);
        exit(2);
}

static void err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void err(const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "%s: ", prog);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static void info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void info(const char *fmt, ...)
{
        va_list ap;

        if (!verbose)
                return;
        fprintf(stderr, "%s: ", prog);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static uint64_t opt_size(const char *name, const char *v)
{
        uint64_t x;

        if (vbd_parse_size(v, &x) < 0)
                die_usage("%s: '%s' is not a size (e.g. 4096, 64K, 1G)", name, v);
        return x;
}

/* ------------------------------------------------------------------------ */
/* Session: environment + VBD + connected frontend */

struct gopts {
        const char *image, *vbdd, *mode, *protocol;
        unsigned ring_order, max_segments; /* 0: the command's default */
        unsigned queues;                   /* 0: one, no --max-queues for vbdd-sim */
        bool keep, indirect_always, events_only;
};

struct session {
        struct simfront_env *env;
        struct simfront_vbd *vbd;
        struct simfront *fe;
        bool log_shown, keep;
};

static int vbd_alive(void *opaque)
{
        struct simfront_vbd *vbd = opaque;

        return simfront_vbd_running(vbd) == 1 ? 0 : -ECHILD;
}

static void show_log(struct session *s)
{
        char *log;
        size_t n;

        if (!s->vbd || s->log_shown)
                return;
        s->log_shown = true;
        log = simfront_vbd_read_log(s->vbd);
        if (!log)
                return;
        n = strlen(log);
        fprintf(stderr, "--- vbdd-sim log (%s) ---\n%s%s--- end of log ---\n",
                simfront_vbd_log_path(s->vbd), log, n && log[n - 1] != '\n' ? "\n" : "");
        free(log);
}

static void describe_exit(struct session *s)
{
        int st;

        if (simfront_vbd_running(s->vbd) != 0)
                return;
        if (simfront_vbd_wait(s->vbd, 0, &st) < 0)
                return;
        if (WIFEXITED(st))
                err("vbdd-sim exited with status %d", WEXITSTATUS(st));
        else if (WIFSIGNALED(st))
                err("vbdd-sim was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
}

static void session_abort(struct session *s)
{
        if (s->fe) {
                simfront_free(s->fe);
                s->fe = NULL;
        }
        if (s->vbd) {
                describe_exit(s);
                show_log(s);
        }
        if (s->env && s->keep)
                err("kept the simulation dir %s", simfront_env_dir(s->env));
        simfront_env_free(s->env);
        s->env = NULL;
        s->vbd = NULL;
}

static int session_start(struct session *s, const struct gopts *g, unsigned max_segments)
{
        struct simfront_env_opts eo = {.keep = g->keep, .nr_pages = 16384};
        const char *extra[4] = {NULL};
        char nq[16];
        unsigned ne = 0;
        struct simfront_vbd_opts vo = {
            .domid = DOMID,
            .devid = DEVID,
            .image = g->image,
            .mode = g->mode,
            .vbdd = g->vbdd,
            .extra_args = extra,
        };
        struct simfront_opts fo = {
            .domid = DOMID,
            .devid = DEVID,
            .ring_order = g->ring_order,
            .max_segments = max_segments,
            .protocol = g->protocol,
            .indirect_always = g->indirect_always,
            .events_only = g->events_only,
            .queues = g->queues,
            /* the synchronous requests (dd) wait as long as bench does */
            .timeout_ms = (int)stall_timeout_s * 1000,
        };
        char *vbdd;
        int r;

        if (verbose)
                extra[ne++] = "-v";
        if (g->queues) {
                snprintf(nq, sizeof(nq), "%u", g->queues);
                extra[ne++] = "--max-queues";
                extra[ne++] = nq;
        }
        memset(s, 0, sizeof(*s));
        s->keep = g->keep;
        vbdd = simfront_find_vbdd(g->vbdd);
        if (!vbdd) {
                err("cannot find vbdd-sim: give --vbdd PATH or set VBD_SIM_VBDD");
                return -ENOENT;
        }
        if (access(vbdd, X_OK) < 0) {
                err("vbdd-sim '%s': %s", vbdd, strerror(errno));
                free(vbdd);
                return -ENOENT;
        }
        free(vbdd);
        /* Enough guest memory for the ring and every slot's data pages. */
        eo.nr_pages = (32u << g->ring_order) * (max_segments + 1) * (g->queues ? g->queues : 1);
        if (eo.nr_pages > SIMFRONT_DEFAULT_DATA_PAGES)
                eo.nr_pages = SIMFRONT_DEFAULT_DATA_PAGES; /* the frontend's cap */
        eo.nr_pages += 1024;
        if (eo.nr_pages < 16384)
                eo.nr_pages = 16384;
        s->env = simfront_env_new(&eo);
        if (!s->env) {
                err("cannot create the simulation: %s", strerror(errno));
                return -errno;
        }
        info("simulation in %s", simfront_env_dir(s->env));
        r = simfront_env_domain_create(s->env, DOMID);
        if (r < 0) {
                err("creating domain %d: %s", DOMID, simfront_env_errmsg(s->env));
                goto fail;
        }
        r = simfront_vbd_add(s->env, &vo, &s->vbd);
        if (r < 0) {
                err("attaching %s: %s", g->image, simfront_env_errmsg(s->env));
                goto fail;
        }
        info("vbdd-sim pid %d, log %s", (int)simfront_vbd_pid(s->vbd),
             simfront_vbd_log_path(s->vbd));
        s->fe = simfront_new(s->env, &fo);
        if (!s->fe) {
                r = -errno;
                err("creating the frontend: %s", strerror(errno));
                goto fail;
        }
        simfront_set_check(s->fe, vbd_alive, s->vbd);
        r = simfront_connect(s->fe);
        if (r < 0) {
                err("connecting to the backend: %s", simfront_errmsg(s->fe));
                goto fail;
        }
        {
                const struct simfront_disk *d = simfront_disk(s->fe);

                info("connected: %" PRIu64 " sectors (%" PRIu64
                     " bytes), sector-size %u, info %#x, mode %s, %u queue(s) of %u slots (%s), "
                     "%u ios of "
                     "%u segments%s, backend max-indirect-segments %u, discard %d",
                     d->sectors, simfront_size(s->fe), d->sector_size, d->info, d->mode,
                     simfront_queues(s->fe), simfront_ring_size(s->fe),
                     simfront_abi(s->fe) == SIMFRONT_ABI_X86_32 ? "x86_32" : "x86_64",
                     simfront_queue_depth(s->fe), simfront_max_segments(s->fe),
                     simfront_indirect(s->fe) ? " (indirect)" : "", d->max_indirect_segments,
                     d->discard);
                if (*simfront_notice(s->fe))
                        err("note: %s", simfront_notice(s->fe));
        }
        return 0;
fail:
        session_abort(s);
        return r < 0 ? r : -EIO;
}

/* Disconnect, detach, and check that vbdd exits 0. */
static int session_end(struct session *s)
{
        int r, st, ret = 0;

        r = simfront_disconnect(s->fe);
        if (r < 0) {
                err("disconnecting: %s", simfront_errmsg(s->fe));
                ret = r;
        }
        simfront_free(s->fe);
        s->fe = NULL;
        r = simfront_vbd_detach(s->vbd, SIMFRONT_DETACH_OFFLINE);
        if (r < 0) {
                err("detaching: %s", simfront_env_errmsg(s->env));
                ret = ret ? ret : r;
        }
        r = simfront_vbd_wait(s->vbd, 10000, &st);
        if (r == -ETIMEDOUT) {
                err("vbdd-sim did not exit within 10 s of the detach");
                (void)simfront_vbd_kill(s->vbd, SIGKILL);
                (void)simfront_vbd_wait(s->vbd, -1, &st);
                ret = ret ? ret : r;
        } else if (r < 0) {
                err("waiting for vbdd-sim: %s", strerror(-r));
                ret = ret ? ret : r;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                describe_exit(s);
                ret = ret ? ret : -EIO;
        } else {
                info("vbdd-sim exited 0");
        }
        if (ret < 0)
                show_log(s);
        if (s->keep)
                err("kept the simulation dir %s", simfront_env_dir(s->env));
        simfront_env_free(s->env);
        s->env = NULL;
        s->vbd = NULL;
        return ret;
}

/* ------------------------------------------------------------------------ */
/* dd */

struct dd_opts {
        const char *in, *out;
        uint64_t seek, skip, count;
        bool have_count, have_seek, have_skip;
};

static int cmd_dd(const struct gopts *g, const struct dd_opts *o)
{
        const size_t chunk = 4u << 20;
        struct session s;
        uint64_t size, done = 0;
        char *buf = NULL;
        int fd = -1, r, ret = 0;
        bool in = o->in != NULL;

        if (!!o->in == !!o->out)
                die_usage("dd: give exactly one of --if FILE (copy into the disk) or --of FILE "
                          "(copy out of it)");
        if (in && (o->have_skip || o->have_count))
                die_usage("dd: --skip and --count go with --of; use --seek with --if");
        if (!in && o->have_seek)
                die_usage("dd: --seek goes with --if; use --skip with --of");

        if (in) {
                fd = strcmp(o->in, "-") ? open(o->in, O_RDONLY | O_CLOEXEC) : 0;
                if (fd < 0) {
                        err("dd: cannot open '%s': %s", o->in, strerror(errno));
                        return 1;
                }
        }
        buf = malloc(chunk);
        if (!buf) {
                err("out of memory");
                return 1;
        }
        r = session_start(&s, g, g->max_segments ? g->max_segments : SIMFRONT_MAX_SEG);
        if (r < 0) {
                free(buf);
                if (fd > 0)
                        close(fd);
                return 1;
        }
        size = simfront_size(s.fe);

        if (in) {
                struct stat st;

                if (fd != 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                    (o->seek > size || (uint64_t)st.st_size > size - o->seek)) {
                        err("dd: '%s' (%" PRIu64 " bytes) at --seek %" PRIu64
                            " does not fit the disk (%" PRIu64 " bytes)",
                            o->in, (uint64_t)st.st_size, o->seek, size);
                        ret = -EFBIG;
                        goto out;
                }
                for (;;) {
                        ssize_t n = 0, m;

                        while ((size_t)n < chunk) {
                                m = read(fd, buf + n, chunk - (size_t)n);
                                if (m < 0 && errno == EINTR)
                                        continue;
                                if (m < 0) {
                                        err("dd: reading '%s': %s", o->in, strerror(errno));
                                        ret = -errno;
                                        goto out;
                                }
                                if (m == 0)
                                        break;
                                n += m;
                        }
                        if (n == 0)
                                break;
                        if (interrupted) {
                                err("dd: interrupted after %" PRIu64 " bytes", done);
                                ret = -EINTR;
                                goto out;
                        }
                        if (o->seek + done + (uint64_t)n > size) {
                                err("dd: input does not fit the disk (%" PRIu64
                                    " bytes) at --seek %" PRIu64,
                                    size, o->seek);
                                ret = -EFBIG;
                                goto out;
                        }
                        r = simfront_write(s.fe, o->seek + done, buf, (size_t)n);
                        if (r < 0) {
                                err("dd: %s", simfront_errmsg(s.fe));
                                ret = r;
                                goto out;
                        }
                        done += (uint64_t)n;
                }
                if (simfront_disk(s.fe)->flush) {
                        r = simfront_flush(s.fe);
                        if (r < 0) {
                                err("dd: %s", simfront_errmsg(s.fe));
                                ret = r;
                                goto out;
                        }
                }
                info("dd: wrote %" PRIu64 " bytes at offset %" PRIu64, done, o->seek);
        } else {
                uint64_t count = o->have_count ? o->count : (o->skip <= size ? size - o->skip : 0);

                if (o->skip > size || count > size - o->skip) {
                        err("dd: --skip %" PRIu64 " --count %" PRIu64
                            " goes past the end of the disk (%" PRIu64 " bytes)",
                            o->skip, count, size);
                        ret = -EINVAL;
                        goto out;
                }
                fd = strcmp(o->out, "-")
                         ? open(o->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
                         : 1;
                if (fd < 0) {
                        err("dd: cannot create '%s': %s", o->out, strerror(errno));
                        ret = -errno;
                        goto out;
                }
                while (done < count) {
                        size_t n = count - done < chunk ? (size_t)(count - done) : chunk;
                        size_t w = 0;

                        if (interrupted) {
                                err("dd: interrupted after %" PRIu64 " bytes", done);
                                ret = -EINTR;
                                goto out;
                        }
                        r = simfront_read(s.fe, o->skip + done, buf, n);
                        if (r < 0) {
                                err("dd: %s", simfront_errmsg(s.fe));
                                ret = r;
                                goto out;
                        }
                        while (w < n) {
                                ssize_t m = write(fd, buf + w, n - w);

                                if (m < 0 && errno == EINTR)
                                        continue;
                                if (m < 0) {
                                        err("dd: writing '%s': %s", o->out, strerror(errno));
                                        ret = -errno;
                                        goto out;
                                }
                                w += (size_t)m;
                        }
                        done += n;
                }
                if (fd != 1 && fsync(fd) < 0 && errno != EINVAL) {
                        err("dd: fsync '%s': %s", o->out, strerror(errno));
                        ret = -errno;
                        goto out;
                }
                info("dd: read %" PRIu64 " bytes from offset %" PRIu64, done, o->skip);
        }
out:
        r = session_end(&s);
        if (!ret)
                ret = r;
        if (fd > 1)
                close(fd);
        free(buf);
        return ret < 0 ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* bench */

enum rw { RW_READ, RW_WRITE, RW_RANDREAD, RW_RANDWRITE, RW_RANDRW };
static const char *const rw_names[] = {"read", "write", "randread", "randwrite", "randrw"};

struct bench_opts {
        int rw;
        uint64_t bs, size, seed;
        unsigned iodepth;
        double runtime;
        bool verify, json, have_size;
};

/* Log-linear latency histogram: 32 sub-buckets per power of two (~3 %). */
#define HIST_SUB     5
#define HIST_BUCKETS ((64 - HIST_SUB) * (1u << HIST_SUB))

struct hist {
        uint64_t n[HIST_BUCKETS];
        uint64_t count, max, sum;
};

static inline unsigned hist_index(uint64_t v)
{
        unsigned msb, shift;

        if (v < (2u << HIST_SUB))
                return (unsigned)v;
        msb = 63u - (unsigned)__builtin_clzll(v);
        shift = msb - HIST_SUB;
        return (shift + 1) * (1u << HIST_SUB) + (unsigned)(v >> shift) - (1u << HIST_SUB);
}

static uint64_t hist_value(unsigned idx)
{
        unsigned shift;

        if (idx < (2u << HIST_SUB))
                return idx;
        shift = idx / (1u << HIST_SUB) - 1;
        /* middle of the bucket */
        return (((uint64_t)(idx % (1u << HIST_SUB)) + (1u << HIST_SUB)) << shift) +
               ((1ull << shift) >> 1);
}

static inline void hist_add(struct hist *h, uint64_t v)
{
        h->n[hist_index(v)]++;
        h->count++;
        h->sum += v;
        if (v > h->max)
                h->max = v;
}

/* The value below which permille/1000 of the samples are. */
static uint64_t hist_pct(const struct hist *h, unsigned permille)
{
        uint64_t want, seen = 0;
        unsigned i;

        if (!h->count)
                return 0;
        want = (h->count * permille + 999) / 1000;
        if (want == 0)
                want = 1;
        for (i = 0; i < HIST_BUCKETS; i++) {
                seen += h->n[i];
                if (seen >= want) {
                        uint64_t v = hist_value(i);

                        return v > h->max ? h->max : v;
                }
        }
        return h->max;
}

/* Verify format: every 512-byte sector of a written block starts with this
 * header; the rest is a pattern derived from it. */
#define VERIFY_MAGIC 0x3156534442564456ull /* "VDVBDSV1" */
struct vhdr {
        uint64_t magic;
        uint64_t offset; /* byte offset of this sector */
        uint64_t seed;
        uint32_t gen;
        uint32_t sum; /* of the fields above */
};

#define GEN_BUSY    0x80000000u
#define GEN_UNKNOWN 0x7fffffffu /* content not known (failed write, old image) */
#define GEN_FILE    0x7ffffffeu /* the image file's content (read-only VBD) */

struct pend {
        uint64_t block;
        uint64_t t0;
        uint32_t gen; /* written, for writes */
};

struct bench {
        const struct bench_opts *o;
        struct simfront *fe;
        uint64_t blocks, seq_next, rng;
        uint32_t *gen; /* per block, --verify only */
        uint32_t next_gen;
        bool zero_backend; /* null: reads are always zeros, writes vanish */
        int img_fd;        /* GEN_FILE blocks are compared with this file */
        char *scratch;     /* bs bytes */
        struct pend *pend; /* per slot */
        struct hist hist;
        uint64_t now; /* batch timestamp, 0 = stale */
        uint64_t reads, writes, bytes, errors, checked, unverified, mismatches;
        int first_error_status;
        uint64_t first_error_offset;
        char first_mismatch[512];
        bool counting; /* false during the prefill */
};

static inline uint64_t xorshift(uint64_t *s)
{
        uint64_t x = *s;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *s = x;
        return x * 0x2545F4914F6CDD1Dull;
}

static inline uint64_t mix(uint64_t x)
{
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9ull;
        x ^= x >> 27;
        x *= 0x94d049bb133111ebull;
        x ^= x >> 31;
        return x;
}

static uint32_t vhdr_sum(const struct vhdr *h)
{
        return (uint32_t)mix(h->magic ^ mix(h->offset) ^ mix(h->seed + h->gen));
}

static void pattern_fill(struct simfront_io *io, uint64_t seed, uint32_t gen)
{
        for (uint32_t at = 0; at < io->len; at += SIMFRONT_SECTOR) {
                uint64_t *p =
                    (uint64_t *)((char *)io->page[at / SIMFRONT_PAGE] + at % SIMFRONT_PAGE);
                struct vhdr *h = (struct vhdr *)p;
                uint64_t x;

                h->magic = VERIFY_MAGIC;
                h->offset = io->offset + at;
                h->seed = seed;
                h->gen = gen;
                h->sum = vhdr_sum(h);
                x = mix(h->offset ^ seed ^ ((uint64_t)gen << 32));
                for (unsigned i = sizeof(*h) / 8; i < SIMFRONT_SECTOR / 8; i++)
                        p[i] = x + i * 0x9e3779b97f4a7c15ull;
        }
}

/* 0 if the io's data is what block gen `gen` (0 = zeros) holds; else
 * describes the first mismatch into b->first_mismatch. */
static int pattern_check(struct bench *b, struct simfront_io *io, uint32_t gen)
{
        for (uint32_t at = 0; at < io->len; at += SIMFRONT_SECTOR) {
                const uint64_t *p = (const uint64_t *)((const char *)io->page[at / SIMFRONT_PAGE] +
                                                       at % SIMFRONT_PAGE);
                const struct vhdr *h = (const struct vhdr *)p;
                uint64_t off = io->offset + at, x;
                unsigned i;

                if (gen == 0) {
                        for (i = 0; i < SIMFRONT_SECTOR / 8; i++)
                                if (p[i])
                                        break;
                        if (i == SIMFRONT_SECTOR / 8)
                                continue;
                        if (!b->mismatches)
                                snprintf(b->first_mismatch, sizeof(b->first_mismatch),
                                         "offset %" PRIu64 " (byte %u of the sector): expected "
                                         "zeros (never written), found %#018" PRIx64
                                         " (header: magic %#" PRIx64 " offset %" PRIu64 " gen %u)",
                                         off, i * 8, p[i], h->magic, h->offset, h->gen);
                        return -1;
                }
                if (h->magic != VERIFY_MAGIC || h->offset != off || h->seed != b->o->seed ||
                    h->gen != gen || h->sum != vhdr_sum(h)) {
                        if (!b->mismatches)
                                snprintf(b->first_mismatch, sizeof(b->first_mismatch),
                                         "offset %" PRIu64 ": expected header (offset %" PRIu64
                                         ", gen %u, seed %" PRIu64 "), found magic %#" PRIx64
                                         " offset %" PRIu64 " gen %u seed %" PRIu64 " sum %s",
                                         off, off, gen, b->o->seed, h->magic, h->offset, h->gen,
                                         h->seed, h->sum == vhdr_sum(h) ? "ok" : "bad");
                        return -1;
                }
                x = mix(off ^ b->o->seed ^ ((uint64_t)gen << 32));
                for (i = sizeof(*h) / 8; i < SIMFRONT_SECTOR / 8; i++)
                        if (p[i] != x + i * 0x9e3779b97f4a7c15ull) {
                                if (!b->mismatches)
                                        snprintf(b->first_mismatch, sizeof(b->first_mismatch),
                                                 "offset %" PRIu64 " (gen %u): header ok, "
                                                 "pattern differs at byte %u: expected %#018" PRIx64
                                                 ", found %#018" PRIx64,
                                                 off, gen, i * 8,
                                                 (uint64_t)(x + i * 0x9e3779b97f4a7c15ull), p[i]);
                                return -1;
                        }
        }
        return 0;
}

/* Compare a read with the image file itself (initial content). */
static void file_check(struct bench *b, struct simfront_io *io)
{
        ssize_t n = pread(b->img_fd, b->scratch, io->len, (off_t)io->offset);

        if (n != (ssize_t)io->len) {
                if (!b->mismatches)
                        snprintf(b->first_mismatch, sizeof(b->first_mismatch),
                                 "offset %" PRIu64 ": cannot read the image file to compare: %s",
                                 io->offset, n < 0 ? strerror(errno) : "short read");
                b->mismatches++;
                return;
        }
        for (uint32_t at = 0; at < io->len; at += SIMFRONT_PAGE) {
                uint32_t len = io->len - at < SIMFRONT_PAGE ? io->len - at : SIMFRONT_PAGE;
                const char *p = io->page[at / SIMFRONT_PAGE];

                if (memcmp(p, b->scratch + at, len)) {
                        uint32_t i = 0;

                        while (p[i] == b->scratch[at + i])
                                i++;
                        if (!b->mismatches)
                                snprintf(b->first_mismatch, sizeof(b->first_mismatch),
                                         "offset %" PRIu64 ": read %#04x, the image file has "
                                         "%#04x",
                                         io->offset + at + i, (unsigned char)p[i],
                                         (unsigned char)b->scratch[at + i]);
                        b->mismatches++;
                        return;
                }
        }
        b->checked++;
}

static void bench_done(struct simfront *fe, struct simfront_io *io)
{
        struct bench *b = io->opaque;
        struct pend *pd = &b->pend[io->slot];
        bool write = io->op == BLKIF_OP_WRITE;

        if (!b->now)
                b->now = vbd_now_ns();
        if (b->counting) {
                hist_add(&b->hist, b->now - pd->t0);
                if (write)
                        b->writes++;
                else
                        b->reads++;
                b->bytes += io->len;
        }
        if (io->status != BLKIF_RSP_OKAY) {
                if (!b->errors) {
                        b->first_error_status = io->status;
                        b->first_error_offset = io->offset;
                }
                b->errors++;
                if (b->gen)
                        b->gen[pd->block] = write ? GEN_UNKNOWN : (b->gen[pd->block] & ~GEN_BUSY);
                return;
        }
        if (!b->gen)
                return;
        if (write) {
                b->gen[pd->block] = b->zero_backend ? 0 : pd->gen;
                return;
        }
        {
                uint32_t g = b->gen[pd->block] & ~GEN_BUSY;

                b->gen[pd->block] = g;
                if (g == GEN_UNKNOWN) {
                        b->unverified++;
                        return;
                }
                if (g == GEN_FILE) {
                        file_check(b, io);
                        return;
                }
                if (pattern_check(b, io, g) < 0)
                        b->mismatches++;
                else
                        b->checked++;
        }
}

/* Pick the next op and block; false if none can go now (verify: busy). */
static bool bench_pick(struct bench *b, int rw, bool *ret_write, uint64_t *ret_block)
{
        bool rnd = rw == RW_RANDREAD || rw == RW_RANDWRITE || rw == RW_RANDRW;
        bool write =
            rw == RW_WRITE || rw == RW_RANDWRITE || (rw == RW_RANDRW && (xorshift(&b->rng) & 1));
        uint64_t blk;

        for (int tries = 0; tries < 8; tries++) {
                if (rnd)
                        blk = xorshift(&b->rng) % b->blocks;
                else
                        blk = b->seq_next;
                if (b->gen && (b->gen[blk] & GEN_BUSY)) {
                        if (!rnd)
                                return false;
                        continue;
                }
                if (!rnd)
                        b->seq_next = (b->seq_next + 1) % b->blocks;
                *ret_write = write;
                *ret_block = blk;
                return true;
        }
        return false;
}

/* Run rw for runtime_ns (or until max_ios were submitted, if non-zero). */
static int bench_run(struct bench *b, int rw, uint64_t runtime_ns, uint64_t max_ios)
{
        struct simfront *fe = b->fe;
        uint64_t start = vbd_now_ns(), t = start, submitted = 0;
        int r;

        for (;;) {
                bool more =
                    !interrupted && (max_ios ? submitted < max_ios : t - start < runtime_ns);
                bool queued = false;

                while (more && simfront_inflight(fe) < b->o->iodepth) {
                        struct simfront_io *io;
                        struct pend *pd;
                        uint64_t blk;
                        bool write;

                        if (!bench_pick(b, rw, &write, &blk))
                                break;
                        io = simfront_io_get(fe);
                        if (!io)
                                break;
                        pd = &b->pend[io->slot];
                        io->op = write ? BLKIF_OP_WRITE : BLKIF_OP_READ;
                        io->offset = blk * b->o->bs;
                        io->len = (uint32_t)b->o->bs;
                        io->done = bench_done;
                        io->opaque = b;
                        pd->block = blk;
                        pd->t0 = t;
                        if (b->gen) {
                                if (write) {
                                        if (++b->next_gen >= GEN_UNKNOWN)
                                                b->next_gen = 1;
                                        pd->gen = b->next_gen;
                                        pattern_fill(io, b->o->seed, pd->gen);
                                }
                                b->gen[blk] |= GEN_BUSY;
                        }
                        r = simfront_io_queue(fe, io);
                        if (r == -ENOSPC && simfront_inflight(fe)) {
                                /* grant table full: complete some first */
                                if (b->gen)
                                        b->gen[blk] &= ~GEN_BUSY;
                                simfront_io_put(fe, io);
                                break;
                        }
                        if (r < 0) {
                                err("bench: %s", simfront_errmsg(fe));
                                return r;
                        }
                        submitted++;
                        queued = true;
                        if (max_ios && submitted >= max_ios)
                                break;
                }
                if (queued) {
                        r = simfront_push(fe);
                        if (r < 0) {
                                err("bench: %s", simfront_errmsg(fe));
                                return r;
                        }
                }
                if (!simfront_inflight(fe)) {
                        if (!more || (max_ios && submitted >= max_ios))
                                break;
                        t = vbd_now_ns();
                        continue;
                }
                b->now = 0;
                r = simfront_poll(fe, (int)stall_timeout_s * 1000);
                if (r < 0) {
                        err("bench: %s", simfront_errmsg(fe));
                        return r;
                }
                if (r == 0) {
                        err("bench: %u requests unanswered for %u s", simfront_inflight(fe),
                            stall_timeout_s);
                        return -ETIMEDOUT;
                }
                t = b->now ? b->now : vbd_now_ns();
        }
        return 0;
}

static void us(char *buf, size_t len, uint64_t ns)
{
        snprintf(buf, len, "%.1f", (double)ns / 1000.0);
}

static int cmd_bench(struct gopts *g, struct bench_opts *o)
{
        struct bench b = {.o = o, .img_fd = -1};
        char img_path[4096] = "";
        struct rusage ru0, ru1;
        uint64_t be0 = 0, be1 = 0;
        bool be_ok;
        struct session s;
        uint64_t disk, t0, elapsed;
        bool fresh = false, reads;
        unsigned segs;
        int r, ret = 0;

        if (o->rw < 0)
                die_usage("bench: --rw MODE is required (read, write, randread, randwrite, "
                          "randrw)");
        if (o->bs < SIMFRONT_SECTOR || o->bs % SIMFRONT_SECTOR || o->bs > SIMFRONT_MAX_INDIRECT_IO)
                die_usage("bench: --bs %" PRIu64 " must be a multiple of 512 in 512..%u", o->bs,
                          SIMFRONT_MAX_INDIRECT_IO);
        if (g->max_segments && o->bs > (uint64_t)g->max_segments * SIMFRONT_PAGE)
                die_usage("bench: --bs %" PRIu64 " does not fit --max-segments %u (%u bytes)",
                          o->bs, g->max_segments, g->max_segments * SIMFRONT_PAGE);
        if (!o->iodepth)
                die_usage("bench: --iodepth must be at least 1");
        if (!(o->runtime > 0))
                die_usage("bench: --runtime must be positive");
        reads = o->rw != RW_WRITE && o->rw != RW_RANDWRITE;
        if (!strncmp(g->image, "raw:", 4)) {
                char path[4096];
                const char *p = g->image + 4, *comma = strchr(p, ',');
                size_t n = comma ? (size_t)(comma - p) : strlen(p);
                struct stat st;

                if (n >= sizeof(path))
                        die_usage("bench: image path too long");
                memcpy(path, p, n);
                path[n] = 0;
                strcpy(img_path, path);
                if (stat(path, &st) < 0 && errno == ENOENT) {
                        int fd;

                        if (!o->have_size) {
                                err("bench: image '%s' does not exist; give --size to create it",
                                    path);
                                return 1;
                        }
                        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                        if (fd < 0 || ftruncate(fd, (off_t)o->size) < 0) {
                                err("bench: cannot create '%s': %s", path, strerror(errno));
                                if (fd >= 0)
                                        close(fd);
                                return 1;
                        }
                        close(fd);
                        fresh = true;
                        info("bench: created %s (%" PRIu64 " bytes, zeros)", path, o->size);
                }
        } else if (!strncmp(g->image, "null:", 5)) {
                b.zero_backend = true;
        }

        segs = g->max_segments ? g->max_segments
                               : (unsigned)((o->bs + SIMFRONT_PAGE - 1) / SIMFRONT_PAGE);
        r = session_start(&s, g, segs);
        if (r < 0)
                return 1;
        b.fe = s.fe;
        disk = simfront_size(s.fe);
        if (!o->have_size)
                o->size = disk;
        if (o->size > disk) {
                err("bench: --size %" PRIu64 " is larger than the disk (%" PRIu64 " bytes)",
                    o->size, disk);
                ret = -EINVAL;
                goto out;
        }
        b.blocks = o->size / o->bs;
        if (!b.blocks) {
                err("bench: the region (%" PRIu64 " bytes) is smaller than --bs %" PRIu64, o->size,
                    o->bs);
                ret = -EINVAL;
                goto out;
        }
        if (o->bs > (uint64_t)simfront_max_segments(s.fe) * SIMFRONT_PAGE) {
                err("bench: --bs %" PRIu64 " needs %u segments per request; the frontend uses "
                    "%u: the backend offers %s%u",
                    o->bs, (unsigned)((o->bs + SIMFRONT_PAGE - 1) / SIMFRONT_PAGE),
                    simfront_max_segments(s.fe),
                    simfront_disk(s.fe)->max_indirect_segments ? "feature-max-indirect-segments "
                                                               : "no indirect segments, max ",
                    simfront_disk(s.fe)->max_indirect_segments
                        ? simfront_disk(s.fe)->max_indirect_segments
                        : SIMFRONT_MAX_SEG);
                ret = -EINVAL;
                goto out;
        }
        if (o->iodepth > simfront_ring_size(s.fe) * simfront_queues(s.fe)) {
                err("bench: --iodepth %u exceeds the %u slots of %u ring(s) (use --ring-order)",
                    o->iodepth, simfront_ring_size(s.fe) * simfront_queues(s.fe),
                    simfront_queues(s.fe));
                ret = -EINVAL;
                goto out;
        }
        if (o->iodepth > simfront_queue_depth(s.fe)) {
                err("bench: --iodepth %u exceeds the %u requests of %u pages the frontend's "
                    "data pages hold (lower --max-segments or --bs)",
                    o->iodepth, simfront_queue_depth(s.fe), simfront_max_segments(s.fe));
                ret = -EINVAL;
                goto out;
        }
        b.pend = calloc(simfront_queue_depth(s.fe), sizeof(*b.pend));
        b.rng = o->seed * 0x9e3779b97f4a7c15ull + 1;
        if (!b.pend) {
                err("out of memory");
                ret = -ENOMEM;
                goto out;
        }
        if (o->verify) {
                b.gen = calloc(b.blocks, sizeof(*b.gen));
                if (!b.gen) {
                        err("bench: out of memory for %" PRIu64 " blocks", b.blocks);
                        ret = -ENOMEM;
                        goto out;
                }
                if (!fresh && !b.zero_backend && !strcmp(g->mode, "r")) {
                        /* Read-only: compare with the file, which cannot change. */
                        if (!img_path[0]) {
                                err("bench: --verify on a read-only disk compares with the "
                                    "image file, so it needs a raw: image");
                                ret = -EINVAL;
                                goto out;
                        }
                        b.img_fd = open(img_path, O_RDONLY | O_CLOEXEC);
                        b.scratch = malloc(o->bs);
                        if (b.img_fd < 0 || !b.scratch) {
                                err("bench: verify: cannot open '%s' to compare: %s", img_path,
                                    strerror(errno));
                                ret = -errno;
                                goto out;
                        }
                        for (uint64_t i = 0; i < b.blocks; i++)
                                b.gen[i] = GEN_FILE;
                } else if (!fresh && !b.zero_backend) {
                        /* Unknown initial content. */
                        for (uint64_t i = 0; i < b.blocks; i++)
                                b.gen[i] = GEN_UNKNOWN;
                        if (reads) {
                                info("bench: verify: writing a pattern over %" PRIu64
                                     " blocks first",
                                     b.blocks);
                                r = bench_run(&b, RW_WRITE, 0, b.blocks);
                                if (r < 0) {
                                        ret = r;
                                        goto out;
                                }
                                if (b.errors) {
                                        err("bench: verify prefill: %" PRIu64
                                            " writes failed (first at offset %" PRIu64
                                            ": status %d)",
                                            b.errors, b.first_error_offset, b.first_error_status);
                                        ret = -EIO;
                                        goto out;
                                }
                        }
                }
        }
        b.counting = true;
        b.seq_next = 0;
        be_ok = simfront_vbd_cpu_ns(s.vbd, &be0) == 0;
        t0 = vbd_now_ns();
        getrusage(RUSAGE_SELF, &ru0);
        r = bench_run(&b, o->rw, (uint64_t)(o->runtime * 1e9), 0);
        getrusage(RUSAGE_SELF, &ru1);
        elapsed = vbd_now_ns() - t0;
        be_ok = be_ok && simfront_vbd_cpu_ns(s.vbd, &be1) == 0;
        if (r < 0) {
                ret = r;
                goto out;
        }

        {
                struct simfront_stats st;
                double secs = (double)elapsed / 1e9, ios = (double)(b.reads + b.writes);
                double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                             (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                             (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                             (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
                char p50[32], p90[32], p99[32], p999[32], mx[32], qreq[16 * 21];
                double be_cpu = be_ok ? (double)(be1 - be0) / 1e9 : -1;
                double be_pct = be_ok ? 100.0 * be_cpu / secs : -1;
                double be_ns_io = be_ok && ios > 0 ? (double)(be1 - be0) / ios : -1;

                simfront_get_stats(s.fe, &st);
                qreq[0] = 0;
                for (unsigned k = 0, l = 0; k < simfront_queues(s.fe); k++)
                        l += (unsigned)snprintf(qreq + l, sizeof(qreq) - l, "%s%" PRIu64,
                                                k ? "," : "", st.queue_requests[k]);
                us(p50, sizeof(p50), hist_pct(&b.hist, 500));
                us(p90, sizeof(p90), hist_pct(&b.hist, 900));
                us(p99, sizeof(p99), hist_pct(&b.hist, 990));
                us(p999, sizeof(p999), hist_pct(&b.hist, 999));
                us(mx, sizeof(mx), b.hist.max);
                if (o->json) {
                        printf(
                            "{\"rw\":\"%s\",\"bs\":%" PRIu64 ",\"iodepth\":%u,"
                            "\"ring_order\":%u,\"runtime_s\":%.3f,\"image\":\"%s\","
                            "\"ios\":%" PRIu64 ",\"reads\":%" PRIu64 ",\"writes\":%" PRIu64
                            ",\"bytes\":%" PRIu64 ",\"iops\":%.0f,\"mb_s\":%.1f,"
                            "\"lat_us\":{\"mean\":%.1f,\"p50\":%s,\"p90\":%s,\"p99\":%s,"
                            "\"p99.9\":%s,\"max\":%s},\"errors\":%" PRIu64 ","
                            "\"verify\":%s,\"verified\":%" PRIu64 ",\"unverified\":%" PRIu64
                            ",\"mismatches\":%" PRIu64 ",\"notifies\":%" PRIu64
                            ",\"polls\":%" PRIu64 ",\"pushes\":%" PRIu64
                            ",\"front_cpu_pct\":%.0f,\"front_cpu_s\":%.3f,"
                            "\"front_cpu_ns_per_io\":%.0f,\"protocol\":\"%s\",\"max_segments\":%u,"
                            "\"indirect\":%s,\"indirect_requests\":%" PRIu64
                            ",\"queue_depth\":%u,\"backend_cpu_s\":%.3f,"
                            "\"backend_cpu_pct\":%.1f,\"backend_cpu_ns_per_io\":%.0f,"
                            "\"queues\":%u,\"queue_requests\":[%s]}\n",
                            rw_names[o->rw], o->bs, o->iodepth, g->ring_order, secs, g->image,
                            b.reads + b.writes, b.reads, b.writes, b.bytes, ios / secs,
                            (double)b.bytes / secs / 1e6,
                            b.hist.count ? (double)b.hist.sum / (double)b.hist.count / 1000.0 : 0.0,
                            p50, p90, p99, p999, mx, b.errors, o->verify ? "true" : "false",
                            b.checked, b.unverified, b.mismatches, st.notifies, st.polls, st.pushes,
                            100.0 * cpu / secs, cpu, ios > 0 ? cpu * 1e9 / ios : -1.0,
                            simfront_abi(s.fe) == SIMFRONT_ABI_X86_32 ? "x86_32-abi" : "x86_64-abi",
                            simfront_max_segments(s.fe), simfront_indirect(s.fe) ? "true" : "false",
                            st.indirect, simfront_queue_depth(s.fe), be_cpu, be_pct, be_ns_io,
                            simfront_queues(s.fe), qreq);
                } else {
                        printf("%s bs=%" PRIu64 " iodepth=%u ring-order=%u queues=%u: %.0f IOPS, "
                               "%.1f MB/s"
                               " in %.2f s; lat us p50 %s p90 %s p99 %s p99.9 %s max %s; "
                               "%" PRIu64 " reads %" PRIu64 " writes %" PRIu64 " errors",
                               rw_names[o->rw], o->bs, o->iodepth, g->ring_order,
                               simfront_queues(s.fe), ios / secs, (double)b.bytes / secs / 1e6,
                               secs, p50, p90, p99, p999, mx, b.reads, b.writes, b.errors);
                        if (be_ok)
                                printf("; backend CPU %.1f%% (%.0f ns/IO)", be_pct, be_ns_io);
                        else
                                printf("; backend CPU unknown");
                        if (o->verify)
                                printf("; verify: %" PRIu64 " reads checked, %" PRIu64
                                       " mismatches",
                                       b.checked, b.mismatches);
                        printf("\n");
                        info("bench: %" PRIu64 " pushes, %" PRIu64 " notifies, %" PRIu64
                             " polls, %" PRIu64 " wakeups; frontend CPU %.0f%%",
                             st.pushes, st.notifies, st.polls, st.wakeups, 100.0 * cpu / secs);
                }
                fflush(stdout);
        }
        if (b.errors) {
                err("bench: %" PRIu64 " requests failed; first at offset %" PRIu64
                    ": backend answered %d%s",
                    b.errors, b.first_error_offset, b.first_error_status,
                    simfront_disk(s.fe)->info & VDISK_READONLY ? " (the disk is read-only)" : "");
                ret = -EIO;
        }
        if (b.mismatches) {
                err("bench: verify: %" PRIu64 " mismatches; first: %s", b.mismatches,
                    b.first_mismatch);
                ret = -EIO;
        }
out:
        r = session_end(&s);
        if (!ret)
                ret = r;
        free(b.gen);
        free(b.pend);
        free(b.scratch);
        if (b.img_fd >= 0)
                close(b.img_fd);
        return ret < 0 ? 1 : 0;
}

/* ------------------------------------------------------------------------ */

enum {
        OPT_IMAGE = 256,
        OPT_IF,
        OPT_OF,
        OPT_SEEK,
        OPT_SKIP,
        OPT_COUNT,
        OPT_RW,
        OPT_BS,
        OPT_IODEPTH,
        OPT_RUNTIME,
        OPT_VERIFY,
        OPT_JSON,
        OPT_SIZE,
        OPT_SEED,
        OPT_RING_ORDER,
        OPT_QUEUES,
        OPT_VBDD,
        OPT_MODE,
        OPT_KEEP,
        OPT_PROTOCOL,
        OPT_MAX_SEGMENTS,
        OPT_INDIRECT_ALWAYS,
        OPT_EVENTS_ONLY,
        OPT_STALL_TIMEOUT,
};

static const struct option long_opts[] = {
    {"image", required_argument, NULL, OPT_IMAGE},
    {"if", required_argument, NULL, OPT_IF},
    {"of", required_argument, NULL, OPT_OF},
    {"seek", required_argument, NULL, OPT_SEEK},
    {"skip", required_argument, NULL, OPT_SKIP},
    {"count", required_argument, NULL, OPT_COUNT},
    {"rw", required_argument, NULL, OPT_RW},
    {"bs", required_argument, NULL, OPT_BS},
    {"iodepth", required_argument, NULL, OPT_IODEPTH},
    {"runtime", required_argument, NULL, OPT_RUNTIME},
    {"verify", no_argument, NULL, OPT_VERIFY},
    {"json", no_argument, NULL, OPT_JSON},
    {"size", required_argument, NULL, OPT_SIZE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"ring-order", required_argument, NULL, OPT_RING_ORDER},
    {"queues", required_argument, NULL, OPT_QUEUES},
    {"vbdd", required_argument, NULL, OPT_VBDD},
    {"mode", required_argument, NULL, OPT_MODE},
    {"keep", no_argument, NULL, OPT_KEEP},
    {"protocol", required_argument, NULL, OPT_PROTOCOL},
    {"max-segments", required_argument, NULL, OPT_MAX_SEGMENTS},
    {"indirect-always", no_argument, NULL, OPT_INDIRECT_ALWAYS},
    {"events-only", no_argument, NULL, OPT_EVENTS_ONLY},
    {"stall-timeout", required_argument, NULL, OPT_STALL_TIMEOUT},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int main(int argc, char **argv)
{
        struct gopts g = {.mode = "w"};
        struct dd_opts dd = {0};
        struct bench_opts bo = {.rw = -1, .bs = 4096, .iodepth = 32, .runtime = 5, .seed = 1};
        const char *cmd;
        bool dd_only = false, bench_only = false;
        char *end;
        int c;

        while ((c = getopt_long(argc, argv, "vh", long_opts, NULL)) != -1) {
                switch (c) {
                case OPT_IMAGE:
                        g.image = optarg;
                        break;
                case OPT_IF:
                        dd.in = optarg;
                        dd_only = true;
                        break;
                case OPT_OF:
                        dd.out = optarg;
                        dd_only = true;
                        break;
                case OPT_SEEK:
                        dd.seek = opt_size("--seek", optarg);
                        dd.have_seek = dd_only = true;
                        break;
                case OPT_SKIP:
                        dd.skip = opt_size("--skip", optarg);
                        dd.have_skip = dd_only = true;
                        break;
                case OPT_COUNT:
                        dd.count = opt_size("--count", optarg);
                        dd.have_count = dd_only = true;
                        break;
                case OPT_RW:
                        bench_only = true;
                        bo.rw = -2;
                        for (int i = 0; i < 5; i++)
                                if (!strcmp(optarg, rw_names[i]))
                                        bo.rw = i;
                        if (bo.rw < 0)
                                die_usage("--rw '%s': use read, write, randread, randwrite or "
                                          "randrw",
                                          optarg);
                        break;
                case OPT_BS:
                        bo.bs = opt_size("--bs", optarg);
                        bench_only = true;
                        break;
                case OPT_IODEPTH:
                        errno = 0;
                        bo.iodepth = (unsigned)strtoul(optarg, &end, 10);
                        if (errno || *end || !*optarg || *optarg == '-' || bo.iodepth > 4096)
                                die_usage("--iodepth '%s': give a number 1..4096", optarg);
                        bench_only = true;
                        break;
                case OPT_RUNTIME:
                        errno = 0;
                        bo.runtime = strtod(optarg, &end);
                        if (errno || *end || !(bo.runtime > 0) || bo.runtime > 1e6)
                                die_usage("--runtime '%s': give seconds > 0", optarg);
                        bench_only = true;
                        break;
                case OPT_VERIFY:
                        bo.verify = bench_only = true;
                        break;
                case OPT_JSON:
                        bo.json = bench_only = true;
                        break;
                case OPT_SIZE:
                        bo.size = opt_size("--size", optarg);
                        bo.have_size = bench_only = true;
                        break;
                case OPT_SEED:
                        errno = 0;
                        bo.seed = strtoull(optarg, &end, 0);
                        if (errno || *end || !*optarg)
                                die_usage("--seed '%s': give a number", optarg);
                        bench_only = true;
                        break;
                case OPT_RING_ORDER:
                        errno = 0;
                        g.ring_order = (unsigned)strtoul(optarg, &end, 10);
                        if (errno || *end || !*optarg || *optarg == '-' || g.ring_order > 4)
                                die_usage("--ring-order '%s': give 0..4", optarg);
                        break;
                case OPT_QUEUES:
                        errno = 0;
                        g.queues = (unsigned)strtoul(optarg, &end, 10);
                        if (errno || *end || !*optarg || *optarg == '-' || g.queues < 1 ||
                            g.queues > SIMFRONT_MAX_QUEUES)
                                die_usage("--queues '%s': give 1..%u", optarg, SIMFRONT_MAX_QUEUES);
                        break;
                case OPT_VBDD:
                        g.vbdd = optarg;
                        break;
                case OPT_MODE:
                        if (strcmp(optarg, "r") && strcmp(optarg, "w"))
                                die_usage("--mode '%s': give r or w", optarg);
                        g.mode = optarg;
                        break;
                case OPT_KEEP:
                        g.keep = true;
                        break;
                case OPT_PROTOCOL:
                        if (strcmp(optarg, "x86_64-abi") && strcmp(optarg, "x86_32-abi"))
                                die_usage("--protocol '%s': give x86_64-abi or x86_32-abi", optarg);
                        g.protocol = optarg;
                        break;
                case OPT_MAX_SEGMENTS:
                        errno = 0;
                        g.max_segments = (unsigned)strtoul(optarg, &end, 10);
                        if (errno || *end || !*optarg || *optarg == '-' || !g.max_segments ||
                            g.max_segments > SIMFRONT_MAX_INDIRECT_SEG)
                                die_usage("--max-segments '%s': give 1..%u", optarg,
                                          SIMFRONT_MAX_INDIRECT_SEG);
                        break;
                case OPT_EVENTS_ONLY:
                        g.events_only = true;
                        break;
                case OPT_INDIRECT_ALWAYS:
                        g.indirect_always = true;
                        break;
                case OPT_STALL_TIMEOUT: {
                        unsigned long v = strtoul(optarg, &end, 10);

                        if (!*optarg || *end || v < 1 || v > 3600)
                                die_usage("--stall-timeout '%s': seconds, 1..3600", optarg);
                        stall_timeout_s = (unsigned)v;
                        break;
                }
                case 'v':
                        verbose++;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        fprintf(stderr, "Try '%s --help'.\n", prog);
                        return 2;
                }
        }
        if (optind >= argc)
                die_usage("no command given (dd or bench)");
        if (optind + 1 < argc)
                die_usage("unexpected argument '%s'", argv[optind + 1]);
        cmd = argv[optind];
        if (strcmp(cmd, "dd") && strcmp(cmd, "bench"))
                die_usage("unknown command '%s' (dd or bench)", cmd);
        if (!g.image)
                die_usage("%s: --image SPEC is required (raw:/path or null:SIZE)", cmd);
        if (!strchr(g.image, ':') || g.image[0] == ':')
                die_usage("--image '%s': use DRIVER:ARG, e.g. raw:/path, qcow2:/path or null:SIZE",
                          g.image);
        {
                /* Stop cleanly (disconnect, detach, remove the sim dir). */
                struct sigaction sa = {.sa_handler = on_signal};

                sigemptyset(&sa.sa_mask);
                sigaction(SIGINT, &sa, NULL);
                sigaction(SIGTERM, &sa, NULL);
                signal(SIGPIPE, SIG_IGN);
        }
        if (!strcmp(cmd, "dd")) {
                if (bench_only)
                        die_usage("dd: --rw, --bs, --iodepth, --runtime, --verify, --json, --size "
                                  "and --seed are bench options");
                return cmd_dd(&g, &dd);
        }
        if (dd_only)
                die_usage("bench: --if, --of, --seek, --skip and --count are dd options");
        return cmd_bench(&g, &bo);
}
